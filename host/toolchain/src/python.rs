//! Python stages: a directory with a `pyproject.toml` whose
//! `[tool.wasmpipe]` table names the stage's `kind` (and its `module`,
//! default `app`), or with just an `app.py`, built into a component by
//! componentize-py against wasmpipe's WIT, with the Python SDK
//! (`wasmpipe_sdk`) on its path. The kinds are Rust's: `transformer`,
//! `estimator` and `aggregator` (an `app.py` alone is a transformer).
//!
//! The build is hermetic: the stage's files (its `.py` modules, but tests
//! and those in `target/`, `__pycache__/`, `tests/`, `wasmpipe-data/` and
//! hidden entries, and what `include` in `[tool.wasmpipe]` names, e.g.
//! data its top-level code reads; symbolic links are not followed) are
//! read and hashed, and on a miss they and the SDK are written into a
//! temporary directory, and componentize-py builds from that copy, with
//! no site-packages of its own (an empty
//! `VIRTUAL_ENV`): a stage vendors what it imports. The build is keyed by
//! the SHA-256 of that copy, the WIT and the SDK (both built into this
//! binary), the kind, the module and componentize-py's version, and the
//! component is kept as `target/wasmpipe/python-<key>.wasm` in the stage's
//! directory (earlier builds there are removed), so an unchanged stage is
//! not built again (componentize-py takes ~15 s).
//!
//! componentize-py pre-initializes the stage: the module's top-level code
//! runs at build time, on the copy, as `build.rs` runs for a Rust crate.
//! Build only stages you trust as you would run their build scripts; the
//! sandbox confines the component when it runs.
//!
//! componentize-py is `$WASMPIPE_COMPONENTIZE_PY`, else the one in this
//! checkout's tool venv (`.tools/venv`, where `scripts/install-test-deps.sh`
//! installs it), else `componentize-py` on `PATH`. The SDK is
//! `$WASMPIPE_SDK_PYTHON` when set, else the one built into this binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::{Built, Progress, ToolchainError};

/// The Python SDK this binary was built with.
const SDK: &str = include_str!("../../../stages/sdk-python/wasmpipe_sdk/__init__.py");

/// The contract, as this binary speaks it.
const WIT: [(&str, &str); 3] = [
    ("types.wit", include_str!("../../../wit/types.wit")),
    ("kernels.wit", include_str!("../../../wit/kernels.wit")),
    ("worlds.wit", include_str!("../../../wit/worlds.wit")),
];

/// The componentize-py release the SDK is written against.
pub const COMPONENTIZE_PY: &str = "0.25.1";

/// What a Python stage directory says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonStage {
    /// The world: `transformer`, `estimator` or `aggregator`.
    pub kind: String,
    /// The module that defines the exported class.
    pub module: String,
    /// Files or directories beyond the `.py` files that are part of the
    /// stage (data its top-level code reads at build time), relative.
    pub include: Vec<String>,
}

/// What `[tool.wasmpipe]` may say.
const KEYS: [&str; 3] = ["kind", "module", "include"];

/// What a module of `kind` binds for componentize-py.
fn exports(kind: &str) -> &'static str {
    match kind {
        "estimator" => "`Fit, Transform = wp.export_estimator(MyEstimator)`",
        "aggregator" => "`Fit = wp.export_aggregator(MyAggregator)`",
        _ => "`Transform = wp.export_transformer(MyTransformer)`",
    }
}

/// The Python stage in `dir`, if it is one: `Ok(None)` for a directory
/// that is not (a Rust crate has a `Cargo.toml`).
pub fn stage(dir: &Path) -> Result<Option<PythonStage>, ToolchainError> {
    if dir.join("Cargo.toml").is_file() {
        return Ok(None);
    }
    let app = || {
        dir.join("app.py").is_file().then(|| PythonStage {
            kind: "transformer".into(),
            module: "app".into(),
            include: Vec::new(),
        })
    };
    let pyproject = dir.join("pyproject.toml");
    if !pyproject.is_file() {
        return Ok(app());
    }
    let invalid = |reason: String| ToolchainError::Componentize { path: pyproject.clone(), reason };
    let text =
        std::fs::read_to_string(&pyproject).map_err(|source| ToolchainError::Io { path: pyproject.clone(), source })?;
    let doc: toml::Table = text.parse().map_err(|e| invalid(format!("not TOML: {e}")))?;
    let Some(table) = doc.get("tool").and_then(|t| t.get("wasmpipe")) else {
        return Ok(app());
    };
    if let Some(unknown) = table.as_table().and_then(|t| t.keys().find(|k| !KEYS.contains(&k.as_str()))) {
        return Err(invalid(format!("[tool.wasmpipe] {unknown}: unknown key (the keys are {})", KEYS.join(", "))));
    }
    let field = |key: &str| table.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let kind = field("kind").ok_or_else(|| {
        invalid("[tool.wasmpipe] needs `kind`: \"transformer\", \"estimator\" or \"aggregator\"".into())
    })?;
    if !["transformer", "estimator", "aggregator"].contains(&kind.as_str()) {
        let why = "the kinds are \"transformer\", \"estimator\" and \"aggregator\"";
        return Err(invalid(format!("[tool.wasmpipe] kind = {kind:?}: {why}")));
    }
    let module = field("module").unwrap_or_else(|| "app".into());
    let name_part = |p: &str| {
        p.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if !module.split('.').all(name_part) {
        return Err(invalid(format!("[tool.wasmpipe] module = {module:?} is not a Python module name")));
    }
    let file = module.replace('.', "/");
    if !dir.join(format!("{file}.py")).is_file() && !dir.join(&file).join("__init__.py").is_file() {
        return Err(invalid(format!(
            "[tool.wasmpipe] module = {module:?}: there is no {file}.py (or {file}/__init__.py) in {}",
            dir.display()
        )));
    }
    let include = match table.get("include") {
        None => Vec::new(),
        Some(v) => {
            let paths: Option<Vec<String>> =
                v.as_array().and_then(|a| a.iter().map(|p| p.as_str().map(str::to_string)).collect());
            let paths = paths.ok_or_else(|| invalid("[tool.wasmpipe] include: a list of paths".into()))?;
            for p in &paths {
                let path = Path::new(p);
                if path.is_absolute() || path.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                    return Err(invalid(format!("[tool.wasmpipe] include: {p:?} is not a path inside the stage")));
                }
                if !dir.join(path).exists() {
                    return Err(invalid(format!("[tool.wasmpipe] include: {p:?} is not in {}", dir.display())));
                }
            }
            paths
        }
    };
    Ok(Some(PythonStage { kind, module, include }))
}

/// This checkout (its tool venv holds componentize-py).
fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn componentize_py() -> Result<PathBuf, ToolchainError> {
    if let Some(p) = std::env::var_os("WASMPIPE_COMPONENTIZE_PY") {
        return Ok(PathBuf::from(p));
    }
    let venv = checkout().join(".tools/venv/bin/componentize-py");
    if venv.is_file() {
        return Ok(venv);
    }
    crate::find_in_path("componentize-py").ok_or_else(|| ToolchainError::NotFound {
        tried: format!(
            "componentize-py, for Python stages: WASMPIPE_COMPONENTIZE_PY, {}, PATH; install it with `pip install componentize-py=={COMPONENTIZE_PY}`",
            venv.display()
        ),
    })
}

/// Directories that are never part of a stage: build outputs, Python's
/// caches, tests, and the default store of a pipeline run in the stage's
/// own directory (`wasmpipe new`'s sample pipeline writes there).
const SKIPPED: [&str; 4] = ["target", "__pycache__", "wasmpipe-data", "tests"];

/// Whether a file is one of the stage's modules: a `.py` file that is not
/// a test (`test_*.py`, `*_test.py`, `conftest.py`).
fn is_module(name: &str) -> bool {
    name.ends_with(".py") && !name.starts_with("test_") && !name.ends_with("_test.py") && name != "conftest.py"
}

/// The files that make the stage, relative to `dir`, sorted: its modules
/// (below `dir`, but in [`SKIPPED`] directories and hidden entries), and
/// every file `include` names or holds. Symbolic links are not followed.
/// Manifests, sample data and tests are not part of it: changing them
/// does not rebuild the stage.
fn sources(dir: &Path, include: &[String]) -> Result<Vec<PathBuf>, ToolchainError> {
    fn walk(root: &Path, rel: &Path, all: bool, out: &mut Vec<PathBuf>) -> Result<(), ToolchainError> {
        let at = root.join(rel);
        let entries = std::fs::read_dir(&at).map_err(|source| ToolchainError::Io { path: at.clone(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| ToolchainError::Io { path: at.clone(), source })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type().map_err(|source| ToolchainError::Io { path: entry.path(), source })?;
            if name.starts_with('.') || (!all && kind.is_dir() && SKIPPED.contains(&name.as_str())) {
                continue;
            }
            if kind.is_dir() {
                walk(root, &rel.join(&name), all, out)?;
            } else if kind.is_file() && (all || is_module(&name)) {
                out.push(rel.join(&name));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), false, &mut out)?;
    for p in include {
        let rel = PathBuf::from(p);
        if dir.join(&rel).is_dir() {
            walk(dir, &rel, true, &mut out)?;
        } else if dir.join(&rel).is_file() {
            out.push(rel);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The stage's files, read once and hashed into `h`: what is hashed is
/// what a build copies.
fn read_sources(dir: &Path, include: &[String], h: &mut Sha256) -> Result<Vec<(PathBuf, Vec<u8>)>, ToolchainError> {
    let mut files = Vec::new();
    for rel in sources(dir, include)? {
        let from = dir.join(&rel);
        let bytes = std::fs::read(&from).map_err(|source| ToolchainError::Io { path: from.clone(), source })?;
        h.update(format!("stage {} {}\n", rel.display(), bytes.len()));
        h.update(&bytes);
        files.push((rel, bytes));
    }
    Ok(files)
}

/// Write `files` below `to`.
fn write_sources(files: &[(PathBuf, Vec<u8>)], to: &Path) -> Result<(), ToolchainError> {
    for (rel, bytes) in files {
        let dest = to.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|source| ToolchainError::Io { path: parent.to_owned(), source })?;
        }
        std::fs::write(&dest, bytes).map_err(|source| ToolchainError::Io { path: dest.clone(), source })?;
    }
    Ok(())
}

/// The SDK's text (`wasmpipe_sdk/__init__.py`) that builds use:
/// `$WASMPIPE_SDK_PYTHON`'s, else this binary's.
pub fn sdk_text() -> Result<String, ToolchainError> {
    match std::env::var_os("WASMPIPE_SDK_PYTHON") {
        Some(dir) => {
            let file = PathBuf::from(dir).join("wasmpipe_sdk/__init__.py");
            std::fs::read_to_string(&file).map_err(|source| ToolchainError::Io { path: file, source })
        }
        None => Ok(SDK.to_string()),
    }
}

/// The component of the Python stage in `dir`: the one built before from
/// the same sources, else a new build.
pub fn build(dir: &Path, stage: &PythonStage, progress: Progress) -> Result<Built, ToolchainError> {
    let program = componentize_py()?;
    let spawn = |source| ToolchainError::Spawn { program: program.display().to_string(), source };
    let version = Command::new(&program).arg("--version").output().map_err(spawn)?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ToolchainError::Io { path, source }
    };
    let mut h = Sha256::new();
    h.update(format!("kind {} module {} {version}\n", stage.kind, stage.module));
    for (name, text) in WIT {
        h.update(format!("wit {name} {}\n", text.len()));
        h.update(text);
    }
    let sdk = sdk_text()?;
    h.update(format!("sdk {}\n", sdk.len()));
    h.update(&sdk);
    let files = read_sources(dir, &stage.include, &mut h)?;
    let key = hex::encode(h.finalize());
    let out_dir = dir.join("target/wasmpipe");
    let name = format!("python-{}.wasm", &key[..16]);
    let out = out_dir.join(&name);
    if let Ok(bytes) = std::fs::read(&out) {
        return Ok(Built { size: bytes.len() as u64, sha256: hex::encode(Sha256::digest(&bytes)), path: out });
    }
    // What componentize-py sees: copies of what was hashed.
    std::fs::create_dir_all(&out_dir).map_err(io(&out_dir))?;
    let work = tempfile::Builder::new().prefix(".build-").tempdir_in(&out_dir).map_err(io(&out_dir))?;
    let (stage_copy, sdk_copy, wit, venv) =
        (work.path().join("stage"), work.path().join("sdk"), work.path().join("wit"), work.path().join("venv"));
    write_sources(&files, &stage_copy)?;
    for d in [&wit, &sdk_copy.join("wasmpipe_sdk"), &venv.join("lib/site-packages")] {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    for (name, text) in WIT {
        std::fs::write(wit.join(name), text).map_err(io(&wit.join(name)))?;
    }
    std::fs::write(sdk_copy.join("wasmpipe_sdk/__init__.py"), &sdk).map_err(io(&sdk_copy))?;
    let partial = work.path().join("component.wasm");
    let mut cmd = Command::new(&program);
    cmd.arg("-d")
        .arg(&wit)
        .args(["-w", &stage.kind, "componentize", "-p"])
        .arg(&stage_copy)
        .arg("-p")
        .arg(&sdk_copy)
        .arg(&stage.module)
        .arg("-o")
        .arg(&partial)
        // No site-packages but the copies (and an empty one, found where
        // componentize-py looks): the build depends on nothing else.
        .env("VIRTUAL_ENV", &venv)
        // A Python error is the message; componentize-py's own stack is not.
        .env("RUST_BACKTRACE", "0")
        .env_remove("PYTHONPATH")
        .stdout(Stdio::piped())
        .stderr(match progress {
            Progress::Show => Stdio::inherit(),
            Progress::OnFailure => Stdio::piped(),
        });
    let output = cmd.output().map_err(spawn)?;
    if !output.status.success() {
        let mut said = [String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)].join("\n");
        if ["has no attribute 'Transform'", "has no attribute 'Fit'", "cannot import name"]
            .iter()
            .any(|m| said.contains(m))
        {
            said.push_str(&format!(
                "\n  hint: kind = {:?} (pyproject.toml) needs module {:?} to bind {}",
                stage.kind,
                stage.module,
                exports(&stage.kind)
            ));
        }
        return Err(ToolchainError::Python {
            path: dir.to_owned(),
            status: output.status,
            messages: said.trim().into(),
        });
    }
    // A build of the same sources that finished first made the same component.
    std::fs::rename(&partial, &out).map_err(io(&out))?;
    // Earlier builds of this stage are out of date.
    for entry in std::fs::read_dir(&out_dir).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with("python-") && file.ends_with(".wasm") && file != name {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let bytes = std::fs::read(&out).map_err(io(&out))?;
    Ok(Built { size: bytes.len() as u64, sha256: hex::encode(Sha256::digest(&bytes)), path: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_says_which_stage_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| std::fs::write(dir.path().join("pyproject.toml"), text).unwrap();
        assert_eq!(stage(dir.path()).unwrap(), None, "empty: not a Python stage");
        std::fs::write(dir.path().join("app.py"), "").unwrap();
        let app = PythonStage { kind: "transformer".into(), module: "app".into(), include: vec![] };
        assert_eq!(stage(dir.path()).unwrap(), Some(app.clone()), "an app.py: a transformer");
        write("[tool.wasmpipe]\nkind = \"transformer\"\nmodule = \"stage.main\"\n");
        assert!(stage(dir.path()).unwrap_err().to_string().contains("there is no stage/main.py"));
        std::fs::create_dir_all(dir.path().join("stage")).unwrap();
        std::fs::write(dir.path().join("stage/main.py"), "").unwrap();
        let main = PythonStage { kind: "transformer".into(), module: "stage.main".into(), include: vec![] };
        assert_eq!(stage(dir.path()).unwrap(), Some(main));
        write("[tool.wasmpipe]\nkind = \"transformer\"\nmodul = \"app\"\n");
        assert!(stage(dir.path()).unwrap_err().to_string().contains("modul: unknown key"));
        write("[tool.wasmpipe]\nkind = \"transformer\"\ninclude = [\"../etc\"]\n");
        assert!(stage(dir.path()).unwrap_err().to_string().contains("not a path inside the stage"));
        write("[tool.wasmpipe]\nkind = \"aggregator\"\n");
        let aggregator = PythonStage { kind: "aggregator".into(), module: "app".into(), include: vec![] };
        assert_eq!(stage(dir.path()).unwrap(), Some(aggregator));
        write("[tool.wasmpipe]\nkind = \"mapper\"\n");
        assert!(stage(dir.path()).unwrap_err().to_string().contains("the kinds are"));
        write("[tool.wasmpipe]\nkind = \"transformer\"\nmodule = \"9lives\"\n");
        assert!(stage(dir.path()).unwrap_err().to_string().contains("not a Python module name"));
        write("[project]\nname = \"x\"\n");
        assert_eq!(stage(dir.path()).unwrap(), Some(app), "no [tool.wasmpipe] but an app.py");
        std::fs::write(dir.path().join("Cargo.toml"), "").unwrap();
        assert_eq!(stage(dir.path()).unwrap(), None, "a Rust crate");
    }

    #[test]
    fn the_sources_are_the_modules_and_what_include_names() {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "app.py",
            "lib/util.py",
            "data/vocab.txt",
            "data/sample.csv",
            "wasmpipe.toml",
            "test_app.py",
            "tests/test_more.py",
            "__pycache__/app.pyc",
            "target/wasmpipe/x.wasm",
            ".git/HEAD",
            "wasmpipe-data/s/s/part-0.parquet",
        ] {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x").unwrap();
        }
        std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).unwrap();
        let found = |include: &[&str]| -> Vec<String> {
            let include: Vec<String> = include.iter().map(|s| s.to_string()).collect();
            sources(dir.path(), &include).unwrap().iter().map(|p| p.display().to_string()).collect()
        };
        assert_eq!(found(&[]), ["app.py", "lib/util.py"], "manifests, data and tests are not the stage");
        assert_eq!(found(&["data/vocab.txt"]), ["app.py", "data/vocab.txt", "lib/util.py"]);
        assert_eq!(found(&["data"]), ["app.py", "data/sample.csv", "data/vocab.txt", "lib/util.py"]);
        let include = vec!["data/vocab.txt".to_string()];
        let (mut a, mut b) = (Sha256::new(), Sha256::new());
        let copy = tempfile::tempdir().unwrap();
        write_sources(&read_sources(dir.path(), &include, &mut a).unwrap(), copy.path()).unwrap();
        assert_eq!(std::fs::read_to_string(copy.path().join("data/vocab.txt")).unwrap(), "x");
        std::fs::write(dir.path().join("data/vocab.txt"), "y").unwrap();
        std::fs::write(dir.path().join("wasmpipe.toml"), "y").unwrap();
        read_sources(dir.path(), &include, &mut b).unwrap();
        assert_ne!(a.finalize(), b.finalize(), "an included data file is part of it");
    }
}
