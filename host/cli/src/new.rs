//! `wasmpipe new`: a stage to start from, one per kind, in Rust (a crate)
//! or Python (`--python`), that builds with `wasmpipe build`, passes its
//! unit test natively (`cargo test`, `python -m pytest`), and runs with the
//! sample pipeline it comes with.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Start a stage crate: a transformer, estimator or aggregator that builds,
/// passes its unit test and runs its sample pipeline as it is.
#[derive(clap::Args)]
pub struct NewArgs {
    /// What kind of stage: a transformer maps batches, an estimator fits a
    /// model over all rows then applies it, an aggregator computes one
    /// result (metrics) over all rows.
    kind: Kind,
    /// The crate's name, also the stage's name in its sample pipeline:
    /// letters, digits, `_` and `-`, starting with a letter.
    name: String,
    /// Where to make it (the crate goes in DIR/NAME).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// The Rust stage SDK (`stages/sdk` of a wasmpipe checkout); default:
    /// the checkout this wasmpipe was built from.
    #[arg(long, env = "WASMPIPE_SDK")]
    sdk: Option<PathBuf>,
    /// A stage in Python (built by componentize-py) instead of a Rust
    /// crate. It gets a copy of the Python SDK this wasmpipe builds with,
    /// in `.wasmpipe/sdk`, for its unit tests; no checkout is needed.
    #[arg(long)]
    python: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Kind {
    Transformer,
    Estimator,
    Aggregator,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Transformer => "transformer",
            Kind::Estimator => "estimator",
            Kind::Aggregator => "aggregator",
        }
    }

    fn source(self) -> &'static str {
        match self {
            Kind::Transformer => include_str!("../templates/transformer.rs"),
            Kind::Estimator => include_str!("../templates/estimator.rs"),
            Kind::Aggregator => include_str!("../templates/aggregator.rs"),
        }
    }

    /// The Python stage's module and its unit tests.
    fn python(self) -> (&'static str, &'static str) {
        match self {
            Kind::Transformer => (
                include_str!("../templates/python/transformer.py"),
                include_str!("../templates/python/test_transformer.py"),
            ),
            Kind::Estimator => (
                include_str!("../templates/python/estimator.py"),
                include_str!("../templates/python/test_estimator.py"),
            ),
            Kind::Aggregator => (
                include_str!("../templates/python/aggregator.py"),
                include_str!("../templates/python/test_aggregator.py"),
            ),
        }
    }

    /// The sample pipeline's `config` table.
    fn config(self) -> &'static str {
        match self {
            Kind::Transformer => "column = \"x\"\nlo = 0.0\nhi = 1.0",
            Kind::Estimator => "columns = [\"x\", \"y\"]",
            Kind::Aggregator => "column = \"y\"",
        }
    }
}

/// The SDK of the checkout this binary was built from, if it is still there.
fn built_from() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../stages/sdk");
    sdk.join("Cargo.toml").is_file().then(|| sdk.canonicalize().unwrap_or(sdk))
}

/// Where a Python stage keeps its copy of the SDK, for its unit tests
/// (hidden: not part of what a build hashes).
const PYTHON_SDK: &str = ".wasmpipe/sdk";
const PYTHON_SDK_INIT: &str = ".wasmpipe/sdk/wasmpipe_sdk/__init__.py";

/// Names Cargo or rustc refuse for a library crate (Rust's keywords, the
/// standard crates, `test`), and the SDK's own.
const RESERVED: &[&str] = &[
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "abstract",
    "become",
    "box",
    "do",
    "final",
    "macro",
    "override",
    "priv",
    "typeof",
    "unsized",
    "virtual",
    "yield",
    "try",
    "gen",
    "std",
    "core",
    "alloc",
    "proc_macro",
    "test",
    "serde",
    "serde_json",
    "wasmpipe_sdk",
];

/// A stage name: letters, digits, `_` and `-`, starting with a letter (a
/// Python stage's name is only that: its module is `app`).
fn valid_chars(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A Rust stage's name: also a crate name Cargo and rustc accept.
fn valid_name(name: &str) -> bool {
    valid_chars(name) && !RESERVED.contains(&name.replace('-', "_").as_str())
}

/// `text` as a TOML basic string, quotes included.
fn toml_string(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn new(args: NewArgs) -> anyhow::Result<()> {
    let NewArgs { kind, name, dir, sdk, python } = args;
    anyhow::ensure!(
        if python { valid_chars(&name) } else { valid_name(&name) },
        "{name:?} is not a stage name\n  hint: use letters, digits, `_` and `-`, starting with a letter, not a Rust keyword or a standard crate's name (e.g. `clip_outliers`)"
    );
    let sdk = if python {
        // The build's own SDK, copied in.
        PathBuf::from(PYTHON_SDK)
    } else {
        let sdk = match sdk.or_else(built_from) {
            Some(sdk) => sdk,
            None => anyhow::bail!(
                "the stage SDK is not where this wasmpipe was built ({})\n  hint: pass --sdk (or set WASMPIPE_SDK) to the `stages/sdk` directory of a wasmpipe checkout",
                env!("CARGO_MANIFEST_DIR")
            ),
        };
        anyhow::ensure!(
            sdk.join("Cargo.toml").is_file(),
            "{} is not the stage SDK (it has no Cargo.toml)\n  hint: --sdk names the `stages/sdk` directory of a wasmpipe checkout",
            sdk.display()
        );
        sdk.canonicalize().with_context(|| format!("cannot resolve {}", sdk.display()))?
    };
    let root = dir.join(&name);
    anyhow::ensure!(!root.exists(), "{} already exists\n  hint: choose another name or --dir", root.display());

    let sdk_text = sdk.to_str().with_context(|| format!("the SDK's path {} is not UTF-8", sdk.display()))?;
    let fill = |template: &str| {
        template
            .replace("{{name}}", &name)
            .replace("{{kind}}", kind.name())
            .replace("{{sdk_toml}}", &toml_string(sdk_text))
            .replace("{{sdk}}", sdk_text)
            .replace("{{config}}", kind.config())
    };
    let common = [
        ("wasmpipe.toml", fill(include_str!("../templates/wasmpipe.toml.in"))),
        ("data/sample.csv", include_str!("../templates/sample.csv").to_string()),
    ];
    let own: Vec<(&str, String)> = if python {
        let (module, test) = kind.python();
        vec![
            ("pyproject.toml", fill(include_str!("../templates/python/pyproject.toml.in"))),
            ("app.py", fill(module)),
            ("test_app.py", fill(test)),
            ("README.md", fill(include_str!("../templates/python/README.md.in"))),
            (PYTHON_SDK_INIT, wasmpipe_toolchain::python::sdk_text()?),
        ]
    } else {
        vec![
            ("Cargo.toml", fill(include_str!("../templates/Cargo.toml.in"))),
            ("src/lib.rs", fill(kind.source())),
            ("README.md", fill(include_str!("../templates/README.md.in"))),
        ]
    };
    let ignore = if python { "/target\n/wasmpipe-data\n__pycache__/\n" } else { "/target\n/wasmpipe-data\n" };
    let files = common.into_iter().chain(own).chain([(".gitignore", ignore.to_string())]);
    // Written to a temporary directory beside it, then moved into place:
    // no half-made crate is left when a write fails.
    let parent = if dir.as_os_str().is_empty() { Path::new(".") } else { dir.as_path() };
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}-"))
        .tempdir_in(parent)
        .with_context(|| format!("cannot write in {}", parent.display()))?;
    for (path, text) in files {
        let at = staging.path().join(path);
        if let Some(d) = at.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        std::fs::write(&at, &text).with_context(|| format!("cannot write {}", at.display()))?;
    }
    std::fs::rename(staging.path(), &root).with_context(|| format!("cannot create {}", root.display()))?;
    let _ = staging.keep();
    let language = if python { "Python " } else { "" };
    println!("created the {language}{} stage {name} in {}", kind.name(), root.display());
    println!("  cd {}", root.display());
    println!("  wasmpipe build .             # the component");
    if python {
        println!("  python -m pytest             # the unit tests");
    } else {
        println!("  cargo test                   # the unit test");
    }
    println!("  wasmpipe run wasmpipe.toml   # the sample pipeline");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cargo_refuses_are_refused() {
        for ok in ["clip", "clip_outliers", "my-stage2"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "9lives", "_x", "a b", "test", "fn", "std", "wasmpipe-sdk", "serde", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_sdk_path_is_a_toml_string() {
        assert_eq!(toml_string("/a b/sdk"), r#""/a b/sdk""#);
        assert_eq!(toml_string(r#"C:\x"y"#), r#""C:\\x\"y""#);
        assert_eq!(toml_string("a\tb"), r#""a\u0009b""#);
    }
}
