//! Skipping cargo for a stage crate that has not changed since its last
//! build.
//!
//! Asking cargo whether a crate is up to date costs about 80 ms a crate
//! (rustup, cargo's start-up, its fingerprints), on every `wasmpipe run`.
//! After each build, wasmpipe records where the component went and the
//! dep-info file cargo wrote beside the artifact, which lists every source
//! file the build read (the crate's, its path dependencies', the WIT files
//! wit-bindgen included, the registry crates'). The next run takes the
//! component as it is when it is still there with the same hash and
//! nothing in that list, nor a `Cargo.toml` or `Cargo.lock` from the crate
//! up to its workspace's root, nor the manifest of a crate a listed source
//! belongs to, changed since that cargo started (which also covers a cargo
//! that found the crate up to date and rewrote nothing). Anything else (a source edited,
//! added to the build, deleted; a record or dep-info file missing or
//! unreadable; another toolchain selected) goes to cargo as before.
//! Not tracked: cargo configuration files, `RUSTFLAGS` and the compiler's
//! version; after changing those, `wasmpipe build` the crate.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{Built, Toolchain};

/// Where the records go: `$WASMPIPE_CACHE_DIR`, `$XDG_CACHE_HOME/wasmpipe`
/// or `~/.cache/wasmpipe`, under `builds/`.
fn records_dir() -> Option<PathBuf> {
    let base = if let Some(dir) = std::env::var_os("WASMPIPE_CACHE_DIR") {
        PathBuf::from(dir)
    } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(dir).join("wasmpipe")
    } else {
        PathBuf::from(std::env::var_os("HOME")?).join(".cache/wasmpipe")
    };
    Some(base.join("builds"))
}

/// The record of the crate at `crate_dir` built with `toolchain`.
fn record_path(crate_dir: &Path, toolchain: &Toolchain) -> Option<PathBuf> {
    let manifest = crate_dir.join("Cargo.toml").canonicalize().ok()?;
    let key = Sha256::digest(format!("{}\n{toolchain:?}", manifest.display()));
    Some(records_dir()?.join(format!("{}.json", hex::encode(&key[..16]))))
}

/// Record that the crate at `crate_dir` built `built` with `toolchain`, in
/// a cargo that started at `started`, its dep-info being `dep_info`. Best
/// effort: without a record, the next run asks cargo.
pub(crate) fn remember(crate_dir: &Path, toolchain: &Toolchain, built: &Built, dep_info: &Path, started: SystemTime) {
    let Some(path) = record_path(crate_dir, toolchain) else { return };
    let Ok(since_epoch) = started.duration_since(SystemTime::UNIX_EPOCH) else { return };
    let record = json!({
        "component": built.path,
        "sha256": built.sha256,
        "size": built.size,
        "dep_info": dep_info,
        "cargo_started_ns": since_epoch.as_nanos().to_string(),
    });
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(path.parent().expect("a records directory"))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, record.to_string())?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        tracing::debug!("cannot record the build of {}: {e}", crate_dir.display());
    }
}

/// The component the crate at `crate_dir` last built with `toolchain`, if
/// nothing it was built from has changed since (see the module docs);
/// `None` means: ask cargo.
pub fn fresh(crate_dir: &Path, toolchain: &Toolchain) -> Option<Built> {
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record_path(crate_dir, toolchain)?).ok()?).ok()?;
    let component = PathBuf::from(record["component"].as_str()?);
    let nanos: u128 = record["cargo_started_ns"].as_str()?.parse().ok()?;
    let built_at = SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(nanos).ok()?);
    let dep_info = std::fs::read_to_string(record["dep_info"].as_str()?).ok()?;
    let sources = dep_info_sources(&dep_info)?;
    // The manifests and lock files from the crate up to the root, and the
    // manifest of each crate a source belongs to (a path dependency's
    // features).
    let crate_dir = crate_dir.canonicalize().ok()?;
    let mut manifests: Vec<PathBuf> = Vec::new();
    for dir in crate_dir.ancestors() {
        manifests.extend([dir.join("Cargo.toml"), dir.join("Cargo.lock")].into_iter().filter(|p| p.exists()));
        if dir.join("Cargo.lock").exists() {
            break; // the workspace's root
        }
    }
    manifests.extend(
        sources.iter().filter_map(|s| s.ancestors().skip(1).map(|d| d.join("Cargo.toml")).find(|m| m.exists())),
    );
    for source in sources.iter().chain(&manifests) {
        if modified(source)? >= built_at {
            return None;
        }
    }
    let bytes = std::fs::read(&component).ok()?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let size = bytes.len() as u64;
    (sha256 == record["sha256"].as_str()?).then_some(Built { path: component, size, sha256 })
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).ok()?.modified().ok()
}

/// The prerequisites of a Makefile-style dep-info file's first rule
/// (`target: a b\ c`): paths, with `\ ` for a space in one.
fn dep_info_sources(text: &str) -> Option<Vec<PathBuf>> {
    let line = text.lines().find(|l| !l.trim().is_empty())?;
    let (_, deps) = line.split_once(": ")?;
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = deps.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => {
                current.push(' ');
                chars.next();
            }
            ' ' => {
                if !current.is_empty() {
                    out.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(PathBuf::from(current));
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_paths_keep_escaped_spaces() {
        let text = "/t/x.wasm: /src/a.rs /src/my\\ dir/b.rs /wit/k.wit\n\n/src/a.rs:\n";
        let want: Vec<PathBuf> = ["/src/a.rs", "/src/my dir/b.rs", "/wit/k.wit"].map(PathBuf::from).to_vec();
        assert_eq!(dep_info_sources(text), Some(want));
        assert_eq!(dep_info_sources("nothing here"), None);
    }

    const TC: Toolchain = Toolchain::Rustup { target: "wasm32-wasip2" };

    /// A crate "built" by hand: its sources, the component, the dep-info.
    #[test]
    fn a_build_is_reused_until_a_source_or_manifest_changes_or_the_component_does() {
        let dir = tempfile::tempdir().unwrap();
        // (The records go under this test's own cache directory.)
        // SAFETY: this test binary's only test that reads the environment
        // variable after setting it; set before any thread reads it.
        unsafe { std::env::set_var("WASMPIPE_CACHE_DIR", dir.path().join("cache")) };
        let krate = dir.path().join("stage");
        std::fs::create_dir_all(krate.join("src")).unwrap();
        std::fs::write(krate.join("Cargo.toml"), "[package]\nname = \"stage\"\n").unwrap();
        let source = krate.join("src/lib.rs");
        std::fs::write(&source, "fn main() {}").unwrap();
        let out = dir.path().join("target/stage.wasm");
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let dep_info = out.with_extension("d");
        std::fs::write(&dep_info, format!("{}: {}\n", out.display(), source.display())).unwrap();
        let build = || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let started = SystemTime::now();
            std::fs::write(&out, b"\0asm component").unwrap();
            let built = Built { path: out.clone(), size: 14, sha256: hex::encode(Sha256::digest(b"\0asm component")) };
            remember(&krate, &TC, &built, &dep_info, started);
            built
        };
        let touch = |p: &Path| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let text = std::fs::read(p).unwrap();
            std::fs::write(p, text).unwrap();
        };

        assert!(fresh(&krate, &TC).is_none(), "never built");
        let built = build();
        assert_eq!(fresh(&krate, &TC), Some(built.clone()));
        touch(&source);
        assert!(fresh(&krate, &TC).is_none(), "a source changed");
        build();
        assert!(fresh(&krate, &TC).is_some());
        touch(&krate.join("Cargo.toml"));
        assert!(fresh(&krate, &TC).is_none(), "its manifest changed");
        build();
        std::fs::write(&out, b"\0asm other bytes").unwrap();
        assert!(fresh(&krate, &TC).is_none(), "the component is not what was built");
        build();
        // A cargo that found nothing to do rewrote nothing: what it saw
        // was current when it started.
        touch(&source);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let built = Built { path: out.clone(), size: 14, sha256: hex::encode(Sha256::digest(b"\0asm component")) };
        remember(&krate, &TC, &built, &dep_info, SystemTime::now());
        assert_eq!(fresh(&krate, &TC), Some(built.clone()));
        // Built with one toolchain, it is not what another would build.
        let unknown = Toolchain::Rustup { target: "wasm32-unknown-unknown" };
        assert!(fresh(&krate, &unknown).is_none());
        // Found without detecting the toolchain: the first of detect()'s
        // rustup targets that built it (none named by WASMPIPE_TOOLCHAIN).
        if std::env::var_os("WASMPIPE_TOOLCHAIN").is_none() {
            assert_eq!(crate::fresh_any(&krate), Some(built.clone()));
            touch(&source);
            assert_eq!(crate::fresh_any(&krate), None, "changed since");
            remember(&krate, &unknown, &built, &dep_info, SystemTime::now());
            assert_eq!(crate::fresh_any(&krate), Some(built), "built since by the other target");
        }
        build();
        std::fs::remove_file(&source).unwrap();
        assert!(fresh(&krate, &TC).is_none(), "a source is gone");
    }
}
