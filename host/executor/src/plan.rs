//! Turning the manifest's stages into loaded components with settings.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmpipe_manifest::{ComponentSource, Manifest, Settings, defaults};
use wasmpipe_runtime::StageComponent;
use wasmpipe_storage::Storage;
use wasmpipe_toolchain::Toolchain;

use crate::{Executor, RunError};

/// Where a pinned component lives, relative to the deployment root.
pub(crate) fn pinned_path(hex: &str) -> String {
    format!("components/{hex}.wasm")
}

/// Fetch a component pinned by hash and check its bytes against the hash.
fn fetch_pinned(exec: &Executor, storage: &Storage, stage: &str, hex: &str) -> Result<(Vec<u8>, PathBuf), RunError> {
    let storage_err = |source| RunError::Storage { stage: stage.into(), source };
    let at = storage.resolve(&pinned_path(hex)).map_err(storage_err)?;
    let bytes = exec.io.block_on(at.get_verified(hex)).map_err(storage_err)?;
    Ok((bytes.to_vec(), PathBuf::from(at.url())))
}

/// A stage ready to run.
pub(crate) struct PlannedStage {
    pub name: String,
    pub component: StageComponent,
    pub settings: Settings,
    pub config_json: Arc<str>,
}

impl PlannedStage {
    pub fn memory_bytes(&self) -> u64 {
        self.settings.memory_mib.unwrap_or(defaults::MEMORY_MIB) << 20
    }
    pub fn host_memory_bytes(&self) -> u64 {
        self.settings.host_memory_mib.or(self.settings.memory_mib).unwrap_or(defaults::MEMORY_MIB) << 20
    }
    pub fn cpu(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.settings.timeout_s.unwrap_or(defaults::TIMEOUT_S))
    }
    /// The wall-clock backstop of one task.
    pub fn wall(&self) -> std::time::Duration {
        match self.settings.wall_timeout_s {
            Some(s) => std::time::Duration::from_secs_f64(s),
            None => self.cpu() * 4 + std::time::Duration::from_secs(60),
        }
    }
    pub fn batch_rows(&self) -> usize {
        self.settings.batch_rows.unwrap_or(defaults::BATCH_ROWS)
    }
    pub fn row_group_rows(&self) -> usize {
        self.settings.row_group_rows.unwrap_or(self.batch_rows())
    }
    pub fn max_passes(&self) -> u32 {
        self.settings.max_passes.unwrap_or(defaults::MAX_PASSES)
    }
}

/// Build (where needed) and load every stage before anything runs, so a
/// stage that cannot load fails the run before any data moves.
pub(crate) fn load_stages(
    exec: &Executor,
    manifest: &Manifest,
    storage: &Storage,
    local_dir: Option<&Path>,
) -> Result<Vec<PlannedStage>, RunError> {
    let mut toolchain: Option<Toolchain> = None;
    let mut planned = Vec::new();
    for name in manifest.order() {
        let stage = &manifest.stages[name];
        let (bytes, origin) = component_bytes(exec, storage, local_dir, name, &stage.component, &mut toolchain)?;
        let component =
            exec.runtime.load(&bytes, &origin).map_err(|source| RunError::Load { stage: name.into(), source })?;
        planned.push(PlannedStage {
            name: name.to_string(),
            component,
            settings: stage.limits.or(&manifest.defaults),
            config_json: wasmpipe_manifest::config_json(&stage.config).into(),
        });
    }
    Ok(planned)
}

/// The bytes of a stage's code and where they came from: a `.wasm` file
/// or a stage crate (built here with the detected toolchain) in the
/// manifest's directory `local_dir`, or a pinned component fetched through
/// `storage` and checked against its hash.
pub(crate) fn component_bytes(
    exec: &Executor,
    storage: &Storage,
    local_dir: Option<&Path>,
    stage: &str,
    source: &ComponentSource,
    toolchain: &mut Option<Toolchain>,
) -> Result<(Vec<u8>, PathBuf), RunError> {
    // A pipeline run from a deployment (its locations resolve below a URL)
    // runs pinned components only: a path, absolute or not, would be the
    // runner's file.
    let deployed = storage.base_url().is_some();
    let local = |p: &Path| match local_dir {
        _ if deployed => Err(RunError::Unpinned { stage: stage.into(), component: p.display().to_string() }),
        _ if p.is_absolute() => Ok(p.to_path_buf()),
        Some(dir) => Ok(dir.join(p)),
        None => Err(RunError::Unpinned { stage: stage.into(), component: p.display().to_string() }),
    };
    let path = match source {
        ComponentSource::Pinned(hex) => return fetch_pinned(exec, storage, stage, hex),
        ComponentSource::Wasm(p) => local(p)?,
        ComponentSource::Crate(dir) => {
            let dir = local(dir)?;
            let tc = match toolchain {
                Some(tc) => tc.clone(),
                None => {
                    let tc = wasmpipe_toolchain::detect()
                        .map_err(|source| RunError::Build { stage: stage.into(), source })?;
                    *toolchain = Some(tc.clone());
                    tc
                }
            };
            tracing::info!(stage, "building {}", dir.display());
            wasmpipe_toolchain::build(&dir, &tc, wasmpipe_toolchain::Progress::OnFailure)
                .map_err(|source| RunError::Build { stage: stage.into(), source })?
                .path
        }
    };
    let bytes = std::fs::read(&path).map_err(|source| RunError::Load {
        stage: stage.into(),
        source: wasmpipe_runtime::RuntimeError::Read { path: path.clone(), source },
    })?;
    Ok((bytes, path))
}
