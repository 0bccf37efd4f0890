//! Turning the manifest's stages into loaded components with settings.

use std::path::Path;
use std::sync::Arc;

use wasmpipe_manifest::{ComponentSource, Manifest, Settings, defaults};
use wasmpipe_runtime::{Runtime, StageComponent};
use wasmpipe_toolchain::Toolchain;

use crate::RunError;

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
    pub fn cpu(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.settings.timeout_s.unwrap_or(defaults::TIMEOUT_S))
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
    runtime: &Runtime,
    manifest: &Manifest,
    base_dir: &Path,
) -> Result<Vec<PlannedStage>, RunError> {
    let mut toolchain: Option<Toolchain> = None;
    let mut planned = Vec::new();
    for name in manifest.order() {
        let stage = &manifest.stages[name];
        let path = match &stage.component {
            ComponentSource::Wasm(p) => base_dir.join(p),
            ComponentSource::Crate(dir) => {
                let tc = match &toolchain {
                    Some(tc) => tc.clone(),
                    None => {
                        let tc = wasmpipe_toolchain::detect()
                            .map_err(|source| RunError::Build { stage: name.into(), source })?;
                        toolchain = Some(tc.clone());
                        tc
                    }
                };
                tracing::info!(stage = name, "building {}", dir.display());
                wasmpipe_toolchain::build(&base_dir.join(dir), &tc, wasmpipe_toolchain::Progress::OnFailure)
                    .map_err(|source| RunError::Build { stage: name.into(), source })?
                    .path
            }
        };
        let component = runtime.load_file(&path).map_err(|source| RunError::Load { stage: name.into(), source })?;
        planned.push(PlannedStage {
            name: name.to_string(),
            component,
            settings: stage.limits.or(&manifest.defaults),
            config_json: wasmpipe_manifest::config_json(&stage.config).into(),
        });
    }
    Ok(planned)
}
