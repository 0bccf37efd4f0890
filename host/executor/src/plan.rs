//! The resolved plan: a manifest turned, before any data moves, into
//! exactly what will run (like Spin's locked app).
//!
//! Resolving builds or fetches every component and names it by SHA-256,
//! applies every default once, turns `stage:` references, outputs and
//! model sources into typed locations, and checks what can be checked
//! without data: that a stage applying a model is an estimator, that the
//! stage it names fits one. The result, a [`LockedPipeline`], is plain
//! data (serde JSON, `format = 1`) with a stable hash; engines run it, and
//! `wasmpipe task` runs one task of it in another process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmpipe_manifest::{ColumnType, ComponentSource, Format, Input, Manifest, ModelSource, Settings, defaults};
use wasmpipe_runtime::{StageComponent, StageKind};
use wasmpipe_storage::{Storage, StorageError};
use wasmpipe_toolchain::Toolchain;

use crate::authority::Authority;
use crate::probe::ConfigCheck;
use crate::{Executor, RunError};

/// The version of the plan document.
pub const PLAN_FORMAT: u32 = 1;

/// Where plans are kept under a store, by hash, for the processes that
/// run their tasks.
pub const PLANS_DIR: &str = "_plans";

/// A pipeline resolved into what will run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPipeline {
    /// Always [`PLAN_FORMAT`].
    pub format: u32,
    /// The pipeline's name.
    pub pipeline: String,
    /// The deployment root, for a pipeline resolved from a deployment: its
    /// inputs under `ROOT/inputs/SHA256/` are checked against their hash
    /// as they are read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// The stages, in the order they run (every stage after those it
    /// reads).
    pub stages: Vec<LockedStage>,
}

/// One stage, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedStage {
    /// The stage's name.
    pub name: String,
    /// What its component exports.
    pub kind: StageKind,
    /// Its component.
    pub component: ComponentRef,
    /// Its configuration, as the JSON document the stage receives.
    pub config: String,
    /// Its limits, every default applied.
    pub limits: Limits,
    /// What it reads.
    pub inputs: Vec<InputRef>,
    /// The format its inputs are read as, when the manifest forces one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// The columns it reads (all when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// The declared types of its text inputs' columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<IndexMap<String, ColumnType>>,
    /// The fitted model it applies instead of fitting one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRef>,
    /// False for an estimator that only fits (`emit_rows = false`): no
    /// transform tasks, no rows committed.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub emit_rows: bool,
    /// Its named outputs, and the column that routes each row to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Outputs>,
    /// An evaluation that scores in sample on purpose (no leakage warning).
    #[serde(default, skip_serializing_if = "is_no")]
    pub in_sample: bool,
    /// Where it writes.
    pub output: OutputRef,
}

/// A stage's named outputs: each row of its output belongs to the one its
/// `route` column names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    /// Their names.
    pub names: Vec<String>,
    /// The routing column.
    pub route: String,
}

fn is_no(b: &bool) -> bool {
    !b
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

/// A component, by content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentRef {
    /// SHA-256 of the component's bytes (as loaded: a core module is
    /// named by the component made from it).
    pub sha256: String,
    /// Where its bytes are: a `file://` URL of a built or given `.wasm`,
    /// or the pinned copy under a deployment root.
    pub url: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// A stage's limits, every default applied (see `wasmpipe_manifest::Settings`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most of its tasks at once (none: the run's parallelism).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// Linear memory of each instance, MiB.
    pub memory_mib: u64,
    /// Host memory each instance may hold, MiB.
    pub host_memory_mib: u64,
    /// Time each instance may spend in its calls, seconds.
    pub timeout_s: f64,
    /// Wall-clock backstop of each task, seconds.
    pub wall_timeout_s: f64,
    /// Rows per batch handed to the stage.
    pub batch_rows: usize,
    /// Rows per row group of the Parquet it writes.
    pub row_group_rows: usize,
    /// Input each fit task folds, MiB as stored (0: one task per
    /// partition).
    #[serde(default = "default_fit_task_mib")]
    pub fit_task_mib: u64,
    /// Most fit passes.
    pub max_passes: u32,
}

fn default_fit_task_mib() -> u64 {
    defaults::FIT_TASK_MIB
}

impl Limits {
    /// What an instance of the stage may use.
    pub(crate) fn instance(&self) -> wasmpipe_runtime::InstanceLimits {
        wasmpipe_runtime::InstanceLimits {
            memory_bytes: self.memory_bytes(),
            host_memory_bytes: self.host_memory_bytes(),
            cpu: self.cpu(),
        }
    }

    /// `settings` with every default applied.
    pub fn of(settings: &Settings) -> Limits {
        let memory_mib = settings.memory_mib.unwrap_or(defaults::MEMORY_MIB);
        let timeout_s = settings.timeout_s.unwrap_or(defaults::TIMEOUT_S);
        let batch_rows = settings.batch_rows.unwrap_or(defaults::BATCH_ROWS);
        Limits {
            parallelism: settings.parallelism,
            memory_mib,
            host_memory_mib: settings.host_memory_mib.unwrap_or(memory_mib),
            timeout_s,
            wall_timeout_s: settings.wall_timeout_s.unwrap_or(timeout_s * 4.0 + 60.0),
            batch_rows,
            row_group_rows: settings.row_group_rows.unwrap_or(batch_rows),
            fit_task_mib: settings.fit_task_mib.unwrap_or(defaults::FIT_TASK_MIB),
            max_passes: settings.max_passes.unwrap_or(defaults::MAX_PASSES),
        }
    }

    pub(crate) fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }

    pub(crate) fn host_memory_bytes(&self) -> u64 {
        self.host_memory_mib << 20
    }

    pub(crate) fn cpu(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_s)
    }

    pub(crate) fn wall(&self) -> Duration {
        Duration::from_secs_f64(self.wall_timeout_s)
    }
}

/// One input of a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "lowercase", deny_unknown_fields)]
pub enum InputRef {
    /// The committed output of an earlier stage of the pipeline.
    Stage {
        /// Its name.
        stage: String,
        /// One of its named outputs, or (none) all its rows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
    },
    /// A file or prefix.
    Location {
        /// Its URL.
        url: String,
    },
}

impl std::fmt::Display for InputRef {
    /// As a manifest writes it: `stage:NAME`, `stage:NAME.OUTPUT`, or the URL.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputRef::Stage { stage, output: None } => write!(f, "stage:{stage}"),
            InputRef::Stage { stage, output: Some(output) } => write!(f, "stage:{stage}.{output}"),
            InputRef::Location { url } => f.write_str(url),
        }
    }
}

/// Where a stage writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "at", rename_all = "lowercase", deny_unknown_fields)]
pub enum OutputRef {
    /// Below the store the plan runs with: `STORE/PATH`.
    Store {
        /// `PIPELINE/STAGE`.
        path: String,
    },
    /// A location of its own (`output = ...`).
    Location {
        /// Its URL.
        url: String,
    },
}

impl OutputRef {
    /// The URL of the output under `store`.
    pub fn url(&self, store: &str) -> String {
        match self {
            OutputRef::Store { path } => format!("{}/{path}", store.trim_end_matches('/')),
            OutputRef::Location { url } => url.clone(),
        }
    }
}

/// The fitted model a stage applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "lowercase", deny_unknown_fields)]
pub enum ModelRef {
    /// The model an estimator stage of this pipeline fits.
    Stage {
        /// Its name.
        stage: String,
    },
    /// A model in the store's registry.
    Registry {
        /// Its SHA-256.
        sha256: String,
    },
    /// The model committed at a stage output: another pipeline's stage
    /// (`pipeline:NAME/STAGE`), or a location.
    Output {
        /// The output.
        output: OutputRef,
        /// The source as the manifest wrote it.
        written: String,
    },
}

impl LockedPipeline {
    /// The SHA-256 of the plan's JSON: two plans with one hash run alike.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.to_json()))
    }

    /// The plan as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("plans serialize")
    }

    /// Read a plan from JSON.
    pub fn from_json(bytes: &[u8], url: &str) -> Result<LockedPipeline, RunError> {
        let plan: LockedPipeline = serde_json::from_slice(bytes)
            .map_err(|e| RunError::Plan { url: url.into(), reason: format!("not a wasmpipe plan: {e}") })?;
        plan.check_form(url)?;
        if plan.format != PLAN_FORMAT {
            return Err(RunError::Plan {
                url: url.into(),
                reason: format!(
                    "plan format {}, but this wasmpipe reads format {PLAN_FORMAT}\n  hint: resolve it again with this version (`wasmpipe plan`)",
                    plan.format
                ),
            });
        }
        Ok(plan)
    }

    /// Refuse a plan whose locations are not plain absolute URLs (a
    /// relative one, or one with `.` or `..` segments, means one thing where
    /// it is checked and another where it is used) or whose store paths are
    /// not `PIPELINE/STAGE` names.
    fn check_form(&self, url: &str) -> Result<(), RunError> {
        let bad = |what: &str, reason: &str| RunError::Plan { url: url.into(), reason: format!("{what}: {reason}") };
        let plain_name =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let check_url = |u: &str| -> Result<(), RunError> {
            if !u.contains("://") {
                return Err(bad(u, "not an absolute URL"));
            }
            let lower = u.to_ascii_lowercase();
            let path = lower.split_once("://").map_or("", |(_, p)| p);
            if path.split('/').any(|seg| seg == "." || seg == "..") || lower.contains("%2e") {
                return Err(bad(u, "a URL in a plan has no `.` or `..` segments"));
            }
            Ok(())
        };
        let check_output = |o: &OutputRef| match o {
            OutputRef::Store { path } => match path.split_once('/') {
                Some((p, s)) if plain_name(p) && plain_name(s) => Ok(()),
                _ => Err(bad(path, "a store path is PIPELINE/STAGE")),
            },
            OutputRef::Location { url } => check_url(url),
        };
        if let Some(root) = &self.root {
            check_url(root)?;
        }
        for stage in &self.stages {
            check_url(&stage.component.url)?;
            check_output(&stage.output)?;
            for input in &stage.inputs {
                if let InputRef::Location { url } = input {
                    check_url(url)?;
                }
            }
            if let Some(ModelRef::Output { output, .. }) = &stage.model {
                check_output(output)?;
            }
        }
        Ok(())
    }

    /// The evaluations that may score a model on rows it was fitted on:
    /// `(stage, what to tell its operator)` (see `leakage`).
    pub fn leakage(&self) -> Vec<(String, String)> {
        crate::leakage::warnings(self)
    }

    /// The stage named `name`.
    pub fn stage(&self, name: &str) -> Result<&LockedStage, RunError> {
        self.stages.iter().find(|s| s.name == name).ok_or_else(|| RunError::Plan {
            url: self.pipeline.clone(),
            reason: format!(
                "no stage {name:?}; its stages are {}",
                self.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// The stages `stage` reads from: its inputs' and its model's.
    pub fn upstream<'a>(&'a self, stage: &'a LockedStage) -> impl Iterator<Item = &'a str> + 'a {
        let inputs = stage.inputs.iter().filter_map(|i| match i {
            InputRef::Stage { stage, .. } => Some(stage.as_str()),
            InputRef::Location { .. } => None,
        });
        let model = stage.model.iter().filter_map(|m| match m {
            ModelRef::Stage { stage } => Some(stage.as_str()),
            _ => None,
        });
        inputs.chain(model)
    }

    /// Refuse a plan that reads or writes outside `authority`, before any
    /// of it runs.
    pub(crate) fn check(&self, authority: &Authority, store: &str) -> Result<(), RunError> {
        let storage = Storage::new(".");
        let at = |stage: &str, url: &str| {
            storage.resolve(url).map_err(|source| RunError::Storage { stage: stage.into(), source })
        };
        for stage in &self.stages {
            for input in &stage.inputs {
                if let InputRef::Location { url } = input {
                    authority.check_input(&stage.name, &at(&stage.name, url)?)?;
                }
            }
            if let Some(ModelRef::Output { output: OutputRef::Location { url }, .. }) = &stage.model {
                authority.check_input(&stage.name, &at(&stage.name, url)?)?;
            }
            authority.check_output(&stage.name, &at(&stage.name, &stage.output.url(store))?)?;
            if let Some(ModelRef::Output { output: output @ OutputRef::Store { .. }, .. }) = &stage.model {
                authority.check_input(&stage.name, &at(&stage.name, &output.url(store))?)?;
            }
            // A deployed stage runs its pinned component, from exactly where
            // deploy put it.
            if let Some(root) = authority.deployed_root() {
                let pinned =
                    format!("{root}/{}", wasmpipe_storage::deployments::component_key(&stage.component.sha256));
                if stage.component.url != pinned {
                    return Err(RunError::Unpinned {
                        stage: stage.name.clone(),
                        component: stage.component.url.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A location's URL from the path or URL a component was read from.
fn origin_url(origin: &Path) -> String {
    let text = origin.display().to_string();
    if text.contains("://") {
        return text;
    }
    match Storage::new(".").resolve(&text) {
        Ok(at) => at.url().to_string(),
        Err(_) => text,
    }
}

impl Executor {
    /// Resolve `manifest` into its plan; relative locations resolve
    /// through `storage` (the manifest's directory `local_dir`, or a
    /// deployment's root). Builds stage crates and loads every component,
    /// so a stage that cannot load fails here, before any data moves.
    pub fn resolve(
        &self,
        manifest: &Manifest,
        storage: &Storage,
        local_dir: Option<&Path>,
    ) -> Result<LockedPipeline, RunError> {
        Ok(self.resolve_loaded(manifest, storage, local_dir)?.0)
    }

    /// Resolve `manifest` (as [`Executor::resolve`]) and check it as a run
    /// would before any data moves: what it may read and write, and every
    /// stage's configuration and columns ([`Executor::check_configs`]).
    pub fn check(
        &self,
        manifest: &Manifest,
        storage: &Storage,
        local_dir: Option<&Path>,
    ) -> Result<(LockedPipeline, ConfigCheck), RunError> {
        let (plan, components) = self.resolve_loaded(manifest, storage, local_dir)?;
        self.check_plan(&plan, local_dir)?;
        let checked = self.check_configs(&plan, &components, storage)?;
        Ok((plan, checked))
    }

    /// [`Executor::check`] for a resolved plan (one from a local manifest
    /// in `local_dir`, or a deployed one).
    pub fn check_resolved(&self, plan: &LockedPipeline, local_dir: Option<&Path>) -> Result<ConfigCheck, RunError> {
        self.check_plan(plan, local_dir)?;
        // Every location in a plan is absolute (see `Executor::run_plan`).
        self.check_configs(plan, &self.load_components(plan)?, &Storage::new("."))
    }

    /// [`Executor::resolve`], also returning the loaded components.
    pub(crate) fn resolve_loaded(
        &self,
        manifest: &Manifest,
        storage: &Storage,
        local_dir: Option<&Path>,
    ) -> Result<(LockedPipeline, Vec<StageComponent>), RunError> {
        let mut toolchain: Option<Toolchain> = None;
        let mut stages = Vec::new();
        let mut components = Vec::new();
        for name in manifest.order() {
            let spec = &manifest.stages[name];
            let storage_err = |source| RunError::Storage { stage: name.into(), source };
            let (bytes, origin) = component_bytes(self, storage, local_dir, name, &spec.component, &mut toolchain)?;
            let component =
                self.runtime.load(&bytes, &origin).map_err(|source| RunError::Load { stage: name.into(), source })?;
            let inputs = spec
                .inputs
                .iter()
                .map(|input| match input {
                    Input::Stage { stage: up, output } => {
                        Ok(InputRef::Stage { stage: up.clone(), output: output.clone() })
                    }
                    Input::Location(l) => Ok(InputRef::Location { url: storage.resolve(l)?.url().to_string() }),
                })
                .collect::<Result<_, StorageError>>()
                .map_err(storage_err)?;
            let output = match &spec.output {
                Some(o) => OutputRef::Location { url: storage.resolve(o).map_err(storage_err)?.url().to_string() },
                None => OutputRef::Store { path: format!("{}/{name}", manifest.name) },
            };
            let model = match &spec.model {
                None => None,
                Some(ModelSource::Stage(up)) => Some(ModelRef::Stage { stage: up.clone() }),
                Some(ModelSource::Registry(sha)) => Some(ModelRef::Registry { sha256: sha.clone() }),
                Some(source @ ModelSource::Pipeline { pipeline, stage }) => Some(ModelRef::Output {
                    output: OutputRef::Store { path: format!("{pipeline}/{stage}") },
                    written: source.to_string(),
                }),
                Some(source @ ModelSource::Location(l)) => Some(ModelRef::Output {
                    output: OutputRef::Location { url: storage.resolve(l).map_err(storage_err)?.url().to_string() },
                    written: source.to_string(),
                }),
            };
            stages.push(LockedStage {
                name: name.to_string(),
                kind: component.kind(),
                component: ComponentRef {
                    sha256: component.hash().to_string(),
                    url: origin_url(&origin),
                    bytes: component.size() as u64,
                },
                config: wasmpipe_manifest::config_json(&spec.config),
                limits: Limits::of(&spec.limits.or(&manifest.defaults)),
                inputs,
                format: spec.format,
                columns: spec.columns.clone(),
                schema: spec.schema.clone(),
                model,
                emit_rows: spec.emit_rows,
                outputs: spec.route.as_ref().map(|route| Outputs { names: spec.outputs.clone(), route: route.clone() }),
                in_sample: spec.in_sample,
                output,
            });
            components.push(component);
        }
        let plan = LockedPipeline {
            format: PLAN_FORMAT,
            pipeline: manifest.name.clone(),
            root: if local_dir.is_none() {
                storage.base_url().map(|u| u.trim_end_matches('/').to_string())
            } else {
                None
            },
            stages,
        };
        check_models(&plan)?;
        check_rows(&plan)?;
        check_selectors(&plan)?;
        Ok((plan, components))
    }

    /// Load the components of `plan`, each checked against its hash.
    pub(crate) fn load_components(&self, plan: &LockedPipeline) -> Result<Vec<StageComponent>, RunError> {
        plan.stages.iter().map(|stage| self.load_component(stage)).collect()
    }

    pub(crate) fn load_component(&self, stage: &LockedStage) -> Result<StageComponent, RunError> {
        let storage_err = |source| RunError::Storage { stage: stage.name.clone(), source };
        let at = Storage::new(".").resolve(&stage.component.url).map_err(storage_err)?;
        let (bytes, _) = self
            .io
            .block_on(at.get_opt())
            .map_err(storage_err)?
            .ok_or_else(|| storage_err(StorageError::NotFound { url: at.url().into() }))?;
        let component = self
            .runtime
            .load(&bytes, Path::new(at.url()))
            .map_err(|source| RunError::Load { stage: stage.name.clone(), source })?;
        if component.hash() != stage.component.sha256 {
            return Err(storage_err(StorageError::HashMismatch {
                url: at.url().into(),
                expected: stage.component.sha256.clone(),
                actual: component.hash().to_string(),
            }));
        }
        Ok(component)
    }

    /// Read the plan at `url`. A plan kept under a store's `_plans/` is
    /// named by its hash, which is checked.
    pub fn load_plan(&self, url: &str) -> Result<LockedPipeline, RunError> {
        let at = Storage::new(".").resolve(url).map_err(|source| RunError::Storage { stage: "-".into(), source })?;
        let (bytes, _) = self
            .io
            .block_on(at.get_opt())
            .map_err(|source| RunError::Storage { stage: "-".into(), source })?
            .ok_or_else(|| RunError::Plan {
                url: at.url().into(),
                reason: "no plan there\n  hint: `wasmpipe plan --json` prints one; `wasmpipe run` keeps the plans it runs under STORE/_plans/".into(),
            })?;
        let plan = LockedPipeline::from_json(&bytes, at.url())?;
        if let Some(named) = at.name().strip_suffix(".json")
            && named.len() == 64
            && named.bytes().all(|b| b.is_ascii_hexdigit())
            && plan.hash() != named
        {
            return Err(RunError::Plan {
                url: at.url().into(),
                reason: format!("its content hashes to {}, not to its name: it was changed", plan.hash()),
            });
        }
        Ok(plan)
    }

    /// Keep `plan` under the store `store` (reached through `storage`),
    /// named by its hash, for the processes that run its tasks; returns its
    /// URL.
    pub fn publish_plan(&self, plan: &LockedPipeline, storage: &Storage, store: &str) -> Result<String, RunError> {
        let storage_err = |source| RunError::Storage { stage: "-".into(), source };
        let store = store.trim_end_matches('/');
        let at = storage.resolve(&format!("{store}/{PLANS_DIR}/{}.json", plan.hash())).map_err(storage_err)?;
        self.io.block_on(at.put(plan.to_json())).map_err(storage_err)?;
        Ok(at.url().to_string())
    }
}

/// Refuse a malformed column selector (a bad pattern, an unknown type or
/// key) in any stage's configuration.
fn check_selectors(plan: &LockedPipeline) -> Result<(), RunError> {
    for stage in &plan.stages {
        crate::select::check(&stage.config)
            .map_err(|reason| RunError::Columns { stage: stage.name.clone(), reason })?;
    }
    Ok(())
}

/// A stage applying a model must be an estimator, and a `stage:` model
/// must be one this pipeline's estimator fits.
fn check_models(plan: &LockedPipeline) -> Result<(), RunError> {
    for stage in &plan.stages {
        let Some(model) = &stage.model else { continue };
        let model_err = |reason: String| RunError::Model { stage: stage.name.clone(), reason };
        if stage.kind != StageKind::Estimator {
            return Err(model_err(format!(
                "`model` applies a fitted model with the stage's transform, so the component must be an estimator; this one is a {}",
                stage.kind
            )));
        }
        if let ModelRef::Stage { stage: up } = model {
            let fitter = plan.stages.iter().find(|s| &s.name == up).expect("the manifest checked its references");
            if fitter.kind != StageKind::Estimator || fitter.model.is_some() {
                let what = if fitter.kind == StageKind::Aggregator {
                    "an aggregator".into()
                } else if fitter.kind != StageKind::Estimator {
                    format!("a {}", fitter.kind)
                } else {
                    "an estimator that applies a model instead of fitting one".into()
                };
                return Err(model_err(format!(
                    "`model = \"stage:{up}\"`: stage {up:?} is {what}, so it commits no model\n  hint: name an estimator stage that fits (one without `model`)"
                )));
            }
        }
    }
    Ok(())
}

/// `emit_rows = false` is for an estimator that fits, and a stage that
/// only fits writes no rows for another stage to read.
fn check_rows(plan: &LockedPipeline) -> Result<(), RunError> {
    // Named outputs route rows: an aggregator writes none.
    if let Some(stage) = plan.stages.iter().find(|s| s.outputs.is_some() && s.kind == StageKind::Aggregator) {
        return Err(RunError::Manifest(wasmpipe_manifest::ManifestError::Invalid(format!(
            "stage {:?} has named outputs, but it is an aggregator, which writes a result, not rows to route\n  hint: remove `outputs` and `route`",
            stage.name
        ))));
    }
    for stage in plan.stages.iter().filter(|s| !s.emit_rows) {
        let invalid = |reason: String| {
            RunError::Manifest(wasmpipe_manifest::ManifestError::Invalid(format!("stage {:?}: {reason}", stage.name)))
        };
        if stage.kind != StageKind::Estimator || stage.model.is_some() {
            let what =
                if stage.model.is_some() { "applies a model".to_string() } else { format!("is a {}", stage.kind) };
            return Err(invalid(format!(
                "`emit_rows = false` makes an estimator fit without writing rows, but this stage {what}, so it would do nothing\n  hint: remove `emit_rows`"
            )));
        }
        for reader in &plan.stages {
            if reader.inputs.iter().any(|i| matches!(i, InputRef::Stage { stage: up, .. } if up == &stage.name)) {
                return Err(invalid(format!(
                    "`emit_rows = false`, so it writes no rows, but stage {:?} reads them (`inputs = [\"stage:{}\"]`)\n  hint: remove `emit_rows = false`, or have {:?} read what {:?} reads and apply the model with `model = \"stage:{}\"`",
                    reader.name, stage.name, reader.name, stage.name, stage.name
                )));
            }
        }
    }
    Ok(())
}

/// Fetch a component pinned by hash and check its bytes against the hash.
fn fetch_pinned(exec: &Executor, storage: &Storage, stage: &str, hex: &str) -> Result<(Vec<u8>, PathBuf), RunError> {
    let storage_err = |source| RunError::Storage { stage: stage.into(), source };
    let at = storage.resolve(&wasmpipe_storage::deployments::component_key(hex)).map_err(storage_err)?;
    let bytes = exec.io.block_on(at.get_verified(hex)).map_err(storage_err)?;
    Ok((bytes.to_vec(), PathBuf::from(at.url())))
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
            let build_err = |source| RunError::Build { stage: stage.into(), source };
            if let Some(python) = wasmpipe_toolchain::python::stage(&dir).map_err(build_err)? {
                tracing::debug!(stage, "the Python stage {} (componentize-py, unless built before)", dir.display());
                let built = wasmpipe_toolchain::python::build(&dir, &python, wasmpipe_toolchain::Progress::OnFailure)
                    .map_err(build_err)?;
                return read_component(stage, built.path);
            }
            if toolchain.is_none()
                && let Some(built) = wasmpipe_toolchain::fresh_any(&dir)
            {
                tracing::debug!(stage, "{} is unchanged since it built {}", dir.display(), built.path.display());
                return read_component(stage, built.path);
            }
            let tc = match toolchain {
                Some(tc) => tc.clone(),
                None => {
                    let tc = wasmpipe_toolchain::detect()
                        .map_err(|source| RunError::Build { stage: stage.into(), source })?;
                    *toolchain = Some(tc.clone());
                    tc
                }
            };
            if let Some(built) = wasmpipe_toolchain::fresh(&dir, &tc) {
                tracing::debug!(stage, "{} is unchanged since it built {}", dir.display(), built.path.display());
                return read_component(stage, built.path);
            }
            tracing::info!(stage, "building {}", dir.display());
            wasmpipe_toolchain::build(&dir, &tc, wasmpipe_toolchain::Progress::OnFailure)
                .map_err(|source| RunError::Build { stage: stage.into(), source })?
                .path
        }
    };
    read_component(stage, path)
}

fn read_component(stage: &str, path: PathBuf) -> Result<(Vec<u8>, PathBuf), RunError> {
    let bytes = std::fs::read(&path).map_err(|source| RunError::Load {
        stage: stage.into(),
        source: wasmpipe_runtime::RuntimeError::Read { path: path.clone(), source },
    })?;
    Ok((bytes, path))
}
