//! Building stage crates into components: `wasmpipe build`.
//!
//! wasmpipe finds a wasm32 Rust toolchain on its own, in this order:
//!
//! 1. rustup with the `wasm32-wasip2` target: cargo emits a component;
//! 2. rustup with the `wasm32-unknown-unknown` target: cargo emits a core
//!    module, which is componentized with `wit-component`;
//! 3. Debian's packaged Rust (`rustc-web`, `cargo-web`, `rust-web-src`,
//!    `lld-16`), which ships no prebuilt wasm32 standard library: std is
//!    built from source with `-Zbuild-std`, then componentized as in 2.
//!
//! `WASMPIPE_TOOLCHAIN` (`wasip2`, `unknown`, `build-std`) forces one.
//! `scripts/install-wasm-toolchain.sh` installs one where none exists.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

mod fresh;
pub mod python;

/// How stage crates get compiled on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Toolchain {
    /// rustup's cargo with an installed wasm32 target.
    Rustup {
        /// `wasm32-wasip2` or `wasm32-unknown-unknown`.
        target: &'static str,
    },
    /// Debian's Rust with std built from source.
    BuildStd {
        /// Debian's cargo.
        cargo: PathBuf,
        /// Debian's rustc.
        rustc: PathBuf,
        /// The wasm linker (`wasm-ld-16` or `wasm-ld`).
        linker: PathBuf,
    },
}

impl std::fmt::Display for Toolchain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Toolchain::Rustup { target } => write!(f, "rustup, target {target}"),
            Toolchain::BuildStd { rustc, .. } => {
                write!(f, "{} with -Zbuild-std, target wasm32-unknown-unknown", rustc.display())
            }
        }
    }
}

/// Why a stage could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolchainError {
    /// No wasm32 toolchain on this machine.
    #[error(
        "no wasm32 Rust toolchain found ({tried})\n  hint: run scripts/install-wasm-toolchain.sh, or `rustup target add wasm32-unknown-unknown`"
    )]
    NotFound {
        /// What was looked for.
        tried: String,
    },
    /// The directory is not a stage crate.
    #[error(
        "{path}: not a stage crate (no Cargo.toml) nor a Python stage (no pyproject.toml with [tool.wasmpipe], no app.py)\n  hint: give the directory of a crate that depends on wasmpipe-sdk, of a Python stage, or a .wasm file"
    )]
    NotACrate {
        /// The directory.
        path: PathBuf,
    },
    /// cargo could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// cargo failed.
    #[error("building {path} failed (cargo exited with {status})\n{messages}")]
    Cargo {
        /// The crate.
        path: PathBuf,
        /// cargo's exit status.
        status: std::process::ExitStatus,
        /// cargo's diagnostics, when they were kept rather than shown live.
        messages: String,
    },
    /// componentize-py failed on a Python stage.
    #[error("building the Python stage {path} failed (componentize-py exited with {status})\n{messages}")]
    Python {
        /// The stage's directory.
        path: PathBuf,
        /// componentize-py's exit status.
        status: std::process::ExitStatus,
        /// What it said.
        messages: String,
    },
    /// cargo succeeded but produced no `.wasm` (not a cdylib?).
    #[error("{path}: cargo built no .wasm\n  hint: the stage crate needs `[lib] crate-type = [\"cdylib\"]`")]
    NoArtifact {
        /// The crate.
        path: PathBuf,
    },
    /// The core module could not be componentized.
    #[error("{path}: {reason}")]
    Componentize {
        /// The module.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading or writing the artifact failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A built stage component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The component file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
}

fn rustup_targets() -> Vec<String> {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn debian_build_std() -> Option<Toolchain> {
    let cargo = PathBuf::from("/usr/bin/cargo");
    let rustc = PathBuf::from("/usr/bin/rustc");
    if !cargo.is_file() || !rustc.is_file() {
        return None;
    }
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output().ok()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib/src/rust/library/Cargo.lock").is_file() {
        return None;
    }
    let linker = find_in_path("wasm-ld-16").or_else(|| find_in_path("wasm-ld"))?;
    Some(Toolchain::BuildStd { cargo, rustc, linker })
}

/// Find a wasm32 toolchain (see the crate docs for the order).
pub fn detect() -> Result<Toolchain, ToolchainError> {
    let forced = std::env::var("WASMPIPE_TOOLCHAIN").ok();
    let targets = rustup_targets();
    let rustup = rustup_preference(forced.as_deref())
        .iter()
        .find(|&&t| targets.iter().any(|x| x == t))
        .map(|&target| Toolchain::Rustup { target });
    let choice = match forced.as_deref() {
        Some("wasip2" | "unknown") => rustup,
        _ => rustup.or_else(debian_build_std),
    };
    choice.ok_or_else(|| ToolchainError::NotFound {
        tried: match forced {
            Some(f) => format!("WASMPIPE_TOOLCHAIN={f} is not available"),
            None => "rustup targets wasm32-wasip2 and wasm32-unknown-unknown; Debian rustc-web with rust-web-src and wasm-ld".into(),
        },
    })
}

/// The rustup targets [`detect`] tries, in its order: the one
/// `WASMPIPE_TOOLCHAIN` names, none when it names Debian's build-std,
/// both otherwise.
fn rustup_preference(forced: Option<&str>) -> &'static [&'static str] {
    match forced {
        Some("wasip2") => &["wasm32-wasip2"],
        Some("unknown") => &["wasm32-unknown-unknown"],
        Some("build-std") => &[],
        _ => &["wasm32-wasip2", "wasm32-unknown-unknown"],
    }
}

/// The component of the crate at `crate_dir` as the toolchain [`detect`]
/// would pick built it before, if nothing changed since, found without
/// asking rustup which targets it has (about 40 ms, on every run): the
/// rustup targets are tried in `detect`'s order, or the one
/// `WASMPIPE_TOOLCHAIN` names. (A component built by a target that has
/// since been removed is still the crate's component.) `None`: detect the
/// toolchain and ask [`fresh`] or build.
pub fn fresh_any(crate_dir: &Path) -> Option<Built> {
    let forced = std::env::var("WASMPIPE_TOOLCHAIN").ok();
    rustup_preference(forced.as_deref()).iter().find_map(|&target| fresh(crate_dir, &Toolchain::Rustup { target }))
}

/// Find a toolchain that emits core modules (rustup's
/// `wasm32-unknown-unknown`, else Debian's build-std route): the form that
/// needs componentizing, as opposed to `wasm32-wasip2`'s components.
pub fn detect_core_module() -> Result<Toolchain, ToolchainError> {
    if rustup_targets().iter().any(|t| t == "wasm32-unknown-unknown") {
        return Ok(Toolchain::Rustup { target: "wasm32-unknown-unknown" });
    }
    debian_build_std().ok_or_else(|| ToolchainError::NotFound {
        tried: "rustup target wasm32-unknown-unknown; Debian rustc-web with rust-web-src and wasm-ld".into(),
    })
}

impl Toolchain {
    /// Whether cargo emits a core module that must be componentized.
    pub fn emits_core_module(&self) -> bool {
        self.target() != "wasm32-wasip2"
    }

    fn target(&self) -> &'static str {
        match self {
            Toolchain::Rustup { target } => target,
            Toolchain::BuildStd { .. } => "wasm32-unknown-unknown",
        }
    }

    fn command(&self) -> Command {
        match self {
            Toolchain::Rustup { target } => {
                let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
                c.args(["build", "--release", "--target", target]);
                c
            }
            Toolchain::BuildStd { cargo, rustc, linker } => {
                let mut c = Command::new(cargo);
                c.args(["build", "--release", "--target", "wasm32-unknown-unknown", "-Zbuild-std=std,panic_abort"])
                    // build-std is a nightly feature; Debian's stable rustc
                    // allows it with the bootstrap switch.
                    .env("RUSTC_BOOTSTRAP", "1")
                    .env("RUSTC", rustc)
                    .env_remove("RUSTC_WRAPPER")
                    .env_remove("RUSTUP_TOOLCHAIN")
                    .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", linker);
                c
            }
        }
    }
}

/// Where cargo's progress and diagnostics go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Shown live on stderr (`wasmpipe build`).
    Show,
    /// Kept, and shown only in the error when the build fails
    /// (`wasmpipe run`, tests).
    OnFailure,
}

pub use fresh::fresh;

/// Compile the stage crate in `crate_dir` and return its component.
pub fn build(crate_dir: &Path, toolchain: &Toolchain, progress: Progress) -> Result<Built, ToolchainError> {
    let manifest = crate_dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(ToolchainError::NotACrate { path: crate_dir.to_owned() });
    }
    let mut cmd = toolchain.command();
    cmd.arg("--manifest-path")
        .arg(&manifest)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(match progress {
            Progress::Show => Stdio::inherit(),
            Progress::OnFailure => Stdio::piped(),
        });
    let program = format!("{:?}", cmd.get_program());
    // What cargo saw is what was on disk before it started.
    let started = std::time::SystemTime::now();
    let output = cmd.output().map_err(|source| ToolchainError::Spawn { program, source })?;
    if !output.status.success() {
        let messages = String::from_utf8_lossy(&output.stderr).trim_end().to_string();
        return Err(ToolchainError::Cargo { path: crate_dir.to_owned(), status: output.status, messages });
    }
    let canonical = manifest.canonicalize().unwrap_or(manifest.clone());
    let artifact = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| m["manifest_path"].as_str().is_some_and(|p| Path::new(p) == canonical))
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
        .ok_or_else(|| ToolchainError::NoArtifact { path: crate_dir.to_owned() })?;

    let bytes = std::fs::read(&artifact).map_err(|source| ToolchainError::Io { path: artifact.clone(), source })?;
    let (path, bytes) = if !toolchain.emits_core_module() {
        (artifact.clone(), bytes)
    } else {
        let component =
            componentize(&bytes).map_err(|reason| ToolchainError::Componentize { path: artifact.clone(), reason })?;
        let out = artifact.with_extension("component.wasm");
        std::fs::write(&out, &component).map_err(|source| ToolchainError::Io { path: out.clone(), source })?;
        (out, component)
    };
    let built = Built { size: bytes.len() as u64, sha256: hex::encode(Sha256::digest(&bytes)), path };
    // cargo's dep-info beside the artifact lists every source file it read.
    fresh::remember(crate_dir, toolchain, &built, &artifact.with_extension("d"), started);
    Ok(built)
}

/// Encode a core module with wit-bindgen metadata as a component.
pub fn componentize(module: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default()
        .module(module)
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| format!("{e:#}"))
}
