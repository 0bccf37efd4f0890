//! Python stages: a directory with a `pyproject.toml` whose
//! `[tool.wasmpipe]` table names the stage's `kind` (and its `module`,
//! default `app`), or with just an `app.py` (a transformer), built into a
//! component by componentize-py against wasmpipe's WIT, with the Python
//! SDK (`stages/sdk-python`, `wasmpipe_sdk`) on its path.
//!
//! A build is keyed by the SHA-256 of what goes into it: the WIT (built
//! into this binary), the kind and module, and every `.py` and
//! `pyproject.toml` file of the stage and of the SDK. The component is kept
//! as `target/wasmpipe/python-<key>.wasm` in the stage's directory, so an
//! unchanged stage is not built again (componentize-py takes ~15 s).
//!
//! componentize-py is `$WASMPIPE_COMPONENTIZE_PY`, else `componentize-py`
//! on `PATH`, else the one in this checkout's tool venv (`.tools/venv`,
//! where `scripts/install-test-deps.sh` installs it). The SDK is
//! `$WASMPIPE_SDK_PYTHON`, else this checkout's `stages/sdk-python`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::{Built, Progress, ToolchainError};

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
}

/// The Python stage in `dir`, if it is one: `Ok(None)` for a directory
/// that is not (a Rust crate has a `Cargo.toml`).
pub fn stage(dir: &Path) -> Result<Option<PythonStage>, ToolchainError> {
    if dir.join("Cargo.toml").is_file() {
        return Ok(None);
    }
    let pyproject = dir.join("pyproject.toml");
    let invalid = |reason: String| ToolchainError::Componentize { path: pyproject.clone(), reason };
    if pyproject.is_file() {
        let text = std::fs::read_to_string(&pyproject)
            .map_err(|source| ToolchainError::Io { path: pyproject.clone(), source })?;
        let doc: toml::Table = text.parse().map_err(|e| invalid(format!("not TOML: {e}")))?;
        let Some(table) = doc.get("tool").and_then(|t| t.get("wasmpipe")) else {
            return Ok(dir
                .join("app.py")
                .is_file()
                .then(|| PythonStage { kind: "transformer".into(), module: "app".into() }));
        };
        let field = |key: &str| table.get(key).and_then(|v| v.as_str()).map(str::to_string);
        let kind = field("kind").ok_or_else(|| {
            invalid("[tool.wasmpipe] needs `kind = \"transformer\"` (or \"estimator\", \"aggregator\")".into())
        })?;
        if !["transformer", "estimator", "aggregator"].contains(&kind.as_str()) {
            return Err(invalid(format!(
                "[tool.wasmpipe] kind = {kind:?}: one of \"transformer\", \"estimator\", \"aggregator\""
            )));
        }
        let module = field("module").unwrap_or_else(|| "app".into());
        if module.is_empty()
            || !module.split('.').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(invalid(format!("[tool.wasmpipe] module = {module:?} is not a Python module name")));
        }
        return Ok(Some(PythonStage { kind, module }));
    }
    Ok(dir.join("app.py").is_file().then(|| PythonStage { kind: "transformer".into(), module: "app".into() }))
}

/// This checkout (the SDK and the tool venv are found in it).
fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python SDK's directory.
pub fn sdk_dir() -> PathBuf {
    std::env::var_os("WASMPIPE_SDK_PYTHON").map_or_else(|| checkout().join("stages/sdk-python"), PathBuf::from)
}

fn componentize_py() -> Result<PathBuf, ToolchainError> {
    if let Some(p) = std::env::var_os("WASMPIPE_COMPONENTIZE_PY") {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = crate::find_in_path("componentize-py") {
        return Ok(p);
    }
    let venv = checkout().join(".tools/venv/bin/componentize-py");
    if venv.is_file() {
        return Ok(venv);
    }
    Err(ToolchainError::NotFound {
        tried: format!(
            "componentize-py, for Python stages: WASMPIPE_COMPONENTIZE_PY, PATH, {}; install it with `pip install componentize-py=={COMPONENTIZE_PY}`",
            venv.display()
        ),
    })
}

/// The `.py` and `pyproject.toml` files below `dir` (not in hidden
/// directories, `target`, `__pycache__` or `build`), sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !(name.starts_with('.') || ["target", "__pycache__", "build"].contains(&name.as_str())) {
                    walk(&path, out);
                }
            } else if name.ends_with(".py") || name == "pyproject.toml" {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// The build's key: what goes into the component.
fn key(dir: &Path, sdk: &Path, stage: &PythonStage) -> Result<String, ToolchainError> {
    let mut h = Sha256::new();
    for (name, text) in WIT {
        h.update(format!("wit {name} {}\n", text.len()));
        h.update(text);
    }
    h.update(format!("kind {} module {} componentize-py {COMPONENTIZE_PY}\n", stage.kind, stage.module));
    for (root, tag) in [(dir, "stage"), (sdk, "sdk")] {
        for file in sources(root) {
            let bytes = std::fs::read(&file).map_err(|source| ToolchainError::Io { path: file.clone(), source })?;
            let rel = file.strip_prefix(root).unwrap_or(&file);
            h.update(format!("{tag} {} {}\n", rel.display(), bytes.len()));
            h.update(&bytes);
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// The component of the Python stage in `dir`: the one built before from
/// the same sources, else a new build.
pub fn build(dir: &Path, stage: &PythonStage, progress: Progress) -> Result<Built, ToolchainError> {
    let sdk = sdk_dir();
    if !sdk.join("wasmpipe_sdk/__init__.py").is_file() {
        return Err(ToolchainError::NotFound {
            tried: format!(
                "the Python SDK at {} (wasmpipe_sdk); set WASMPIPE_SDK_PYTHON to its directory",
                sdk.display()
            ),
        });
    }
    let key = key(dir, &sdk, stage)?;
    let out_dir = dir.join("target/wasmpipe");
    let out = out_dir.join(format!("python-{}.wasm", &key[..16]));
    if let Ok(bytes) = std::fs::read(&out) {
        return Ok(Built { size: bytes.len() as u64, sha256: hex::encode(Sha256::digest(&bytes)), path: out });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ToolchainError::Io { path, source }
    };
    std::fs::create_dir_all(&out_dir).map_err(io(&out_dir))?;
    // The WIT this binary speaks, beside the build.
    let wit = out_dir.join(format!("wit-{}", &key[..16]));
    std::fs::create_dir_all(&wit).map_err(io(&wit))?;
    for (name, text) in WIT {
        std::fs::write(wit.join(name), text).map_err(io(&wit.join(name)))?;
    }
    let partial = out_dir.join(format!(".python-{}.wasm.partial", &key[..16]));
    let program = componentize_py()?;
    let mut cmd = Command::new(&program);
    cmd.arg("-d")
        .arg(&wit)
        .args(["-w", &stage.kind, "componentize", "-p"])
        .arg(dir)
        .arg("-p")
        .arg(&sdk)
        .arg(&stage.module)
        .arg("-o")
        .arg(&partial)
        .stdout(Stdio::piped())
        .stderr(match progress {
            Progress::Show => Stdio::inherit(),
            Progress::OnFailure => Stdio::piped(),
        });
    let output =
        cmd.output().map_err(|source| ToolchainError::Spawn { program: program.display().to_string(), source })?;
    let _ = std::fs::remove_dir_all(&wit);
    if !output.status.success() {
        let _ = std::fs::remove_file(&partial);
        let messages = [String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)].join("\n");
        return Err(ToolchainError::Python {
            path: dir.to_owned(),
            status: output.status,
            messages: messages.trim().to_string(),
        });
    }
    std::fs::rename(&partial, &out).map_err(io(&out))?;
    let bytes = std::fs::read(&out).map_err(io(&out))?;
    Ok(Built { size: bytes.len() as u64, sha256: hex::encode(Sha256::digest(&bytes)), path: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_says_which_stage_it_is() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(stage(dir.path()).unwrap(), None, "empty: not a Python stage");
        std::fs::write(dir.path().join("app.py"), "").unwrap();
        let app = PythonStage { kind: "transformer".into(), module: "app".into() };
        assert_eq!(stage(dir.path()).unwrap(), Some(app.clone()), "an app.py: a transformer");
        std::fs::write(
            dir.path().join("pyproject.toml"),
            "[tool.wasmpipe]\nkind = \"aggregator\"\nmodule = \"stage.main\"\n",
        )
        .unwrap();
        let agg = PythonStage { kind: "aggregator".into(), module: "stage.main".into() };
        assert_eq!(stage(dir.path()).unwrap(), Some(agg));
        std::fs::write(dir.path().join("pyproject.toml"), "[tool.wasmpipe]\nkind = \"mapper\"\n").unwrap();
        assert!(stage(dir.path()).unwrap_err().to_string().contains("one of"));
        std::fs::write(dir.path().join("pyproject.toml"), "[project]\nname = \"x\"\n").unwrap();
        assert_eq!(stage(dir.path()).unwrap(), Some(app), "no [tool.wasmpipe] but an app.py");
        std::fs::write(dir.path().join("Cargo.toml"), "").unwrap();
        assert_eq!(stage(dir.path()).unwrap(), None, "a Rust crate");
    }

    #[test]
    fn the_key_follows_the_sources_and_nothing_else() {
        let (dir, sdk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let s = PythonStage { kind: "transformer".into(), module: "app".into() };
        std::fs::write(dir.path().join("app.py"), "x = 1\n").unwrap();
        let first = key(dir.path(), sdk.path(), &s).unwrap();
        std::fs::create_dir_all(dir.path().join("__pycache__")).unwrap();
        std::fs::write(dir.path().join("__pycache__/app.cpython-311.pyc"), "junk").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "junk").unwrap();
        assert_eq!(key(dir.path(), sdk.path(), &s).unwrap(), first, "caches and other files do not count");
        std::fs::write(sdk.path().join("helpers.py"), "y = 2\n").unwrap();
        assert_ne!(key(dir.path(), sdk.path(), &s).unwrap(), first, "the SDK counts");
        let agg = PythonStage { kind: "aggregator".into(), ..s.clone() };
        assert_ne!(key(dir.path(), sdk.path(), &agg).unwrap(), key(dir.path(), sdk.path(), &s).unwrap());
    }
}
