//! The wasmpipe executor: plans a pipeline from its manifest and runs it.
//!
//! Stages run in dependency order. Each stage's input is split into
//! partitions (Parquet row groups, CSV files), and a fresh sandboxed
//! instance of the stage runs each partition, `parallelism` at a time on a
//! rayon pool; I/O is async (`object_store`) and driven from those threads.
//!
//! * a transformer maps each partition to one Parquet part;
//! * an estimator folds every partition into a partial state (in parallel),
//!   merges the states, finalizes them into a model (repeating passes while
//!   it asks for more), stores the model, then transforms each partition
//!   with it;
//! * an aggregator does the fitting half only: its "model" is its result.
//!
//! Every model an estimator fits also goes to the model registry under the
//! store (`<store>/_models/<sha256>/`, with a lineage card), from where any
//! pipeline can apply it by hash (see [`ModelCard`]).
//!
//! A stage's outputs become visible only through its commit record, written
//! after every task succeeded (see `wasmpipe_storage::commit`).
//!
//! The data path: a manifest is resolved into a plan ([`LockedPipeline`],
//! `plan`), each stage of the plan is prepared against the store (`stage`),
//! its tasks ([`TaskSpec`], `task`) run on an engine (`engine`: threads
//! here, or a `wasmpipe task` process each), and the stage commits
//! (`commit`).

mod authority;
mod cache;
mod commit;
mod deploy;
mod engine;
mod error;
mod leakage;
mod plan;
mod probe;
pub mod record;
mod registry;
mod select;
mod stage;
mod task;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmpipe_manifest::Manifest;
use wasmpipe_runtime::{LogSink, Runtime, RuntimeConfig, StageKind};
use wasmpipe_storage::commit::Model;
use wasmpipe_storage::{Location, Storage};

pub use deploy::Deployment;
pub use engine::EngineKind;
pub use error::{EXIT_DETERMINISTIC, EXIT_INTERNAL, EXIT_OK, EXIT_TRANSIENT, RunError, TaskFailure};
pub use plan::{
    ComponentRef, InputRef, Limits, LockedPipeline, LockedStage, ModelRef, OutputRef, Outputs, PLAN_FORMAT, PLANS_DIR,
};
pub use probe::{Checked, ConfigCheck};
pub use record::{LogLine, RUN_FORMAT, RUNS_DIR, RunLog, RunRecord, StageLog, StageRecord, TaskEntry};
pub use task::{FitStep, MERGE_FAN_IN, StageTasks, TASK_FORMAT, TaskKind, TaskOutcome, TaskSpec, WrittenObject};
pub use wasmpipe_storage::deployments::DeployedPipeline;
pub use wasmpipe_storage::registry::{CARD_FORMAT, Evaluation, ModelCard};

/// The default of [`ExecutorConfig::cache_bytes`], in MiB.
pub const DEFAULT_CACHE_MIB: u64 = 1024;

/// How to run.
#[derive(Clone)]
pub struct ExecutorConfig {
    /// Most tasks at once, for every stage (a stage's own `parallelism`
    /// may lower it).
    pub parallelism: usize,
    /// Where stages without an `output` write: `<store>/<pipeline>/<stage>`.
    /// A URL or an absolute path.
    pub store: String,
    /// Receives every log line of every task as it happens.
    pub sink: Option<LogSink>,
    /// Prefixes (URLs or paths) a run from a deployment may read besides
    /// its root (`--allow-input`).
    pub allow_input: Vec<String>,
    /// Prefixes outputs may go to besides the store (and, for a local run,
    /// the manifest's directory) (`--allow-output`).
    pub allow_output: Vec<String>,
    /// What runs the tasks.
    pub engine: EngineKind,
    /// Bytes of decoded input a run keeps in memory for fits of several
    /// passes (from their second pass), so that later passes and the
    /// transform replay them instead of decoding the files again
    /// (`--cache-mib`; 0 turns it off).
    pub cache_bytes: u64,
    /// Receives what the run is doing as it happens (stages, rounds,
    /// tasks), for a live display.
    pub progress: Option<ProgressSink>,
    /// Called with the store and the run record once the record is
    /// written (the CLI writes the run's HTML report beside it).
    pub recorded: Option<RecordSink>,
}

/// What a run is doing, as it happens.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A stage begins.
    Stage {
        /// Its name.
        stage: String,
        /// Its input partitions.
        partitions: usize,
    },
    /// A round of a stage's tasks begins.
    Round {
        /// The stage.
        stage: String,
        /// What the round does: `fit pass 3`, `combine, pass 3`, `merge,
        /// pass 3`, `transform`.
        what: String,
        /// Its tasks.
        tasks: usize,
    },
    /// A task began.
    TaskStarted {
        /// Its stage.
        stage: String,
    },
    /// A task ended well.
    TaskDone {
        /// Its stage.
        stage: String,
        /// Rows it read.
        rows: u64,
        /// Bytes it read from storage.
        bytes: u64,
    },
    /// A stage ended: committed, or found committed by an identical run.
    StageDone {
        /// Its name.
        stage: String,
        /// Rows it committed.
        rows: u64,
        /// Whether an identical run had committed it (nothing ran).
        committed_before: bool,
    },
}

/// Where [`Progress`] goes.
pub type ProgressSink = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Receives a run's record once it is written: the run's storage, the
/// store the record is below, the record, and the runtime storage calls
/// run on.
pub type RecordSink = Arc<dyn Fn(&Storage, &Location, &RunRecord, &tokio::runtime::Runtime) + Send + Sync>;

impl ExecutorConfig {
    /// Defaults: one task per core, store `./wasmpipe-data`.
    pub fn new(store: impl Into<String>) -> Self {
        ExecutorConfig {
            parallelism: std::thread::available_parallelism().map_or(1, |n| n.get()),
            store: store.into(),
            sink: None,
            allow_input: Vec::new(),
            allow_output: Vec::new(),
            engine: EngineKind::Local,
            cache_bytes: DEFAULT_CACHE_MIB << 20,
            progress: None,
            recorded: None,
        }
    }
}

/// What one stage did.
#[derive(Debug, Clone)]
pub struct StageReport {
    /// Stage name.
    pub name: String,
    /// Its kind.
    pub kind: StageKind,
    /// SHA-256 of its component.
    pub component: String,
    /// Component size in bytes.
    pub component_bytes: usize,
    /// Tasks run (fit and transform tasks together), skipped ones included.
    pub tasks: usize,
    /// Tasks skipped because an earlier run of the same stage had completed
    /// them (their records were found; see `wasmpipe_storage::commit`).
    pub tasks_skipped: usize,
    /// Fit passes (0 for transformers).
    pub passes: u32,
    /// Rows read by transform tasks (or by the last fit pass for aggregators).
    pub rows_in: u64,
    /// Rows committed.
    pub rows_out: u64,
    /// Bytes read from storage.
    pub bytes_read: u64,
    /// Bytes of committed parts.
    pub bytes_written: u64,
    /// Wall time of the stage.
    pub wall: Duration,
    /// Where the output is.
    pub output: String,
    /// The model or result, for fit stages.
    pub model: Option<Model>,
    /// The model or result bytes, for fit stages.
    pub model_bytes: Option<Arc<[u8]>>,
    /// The report the stage published (a JSON document), if any.
    pub report: Option<String>,
    /// SHA-256 of the model the stage applied (`model = ...`) instead of
    /// fitting one.
    pub applied_model: Option<String>,
    /// Rows set aside in the quarantine: text records that did not parse,
    /// and rows the stage quarantined.
    pub rows_quarantined: u64,
    /// Set when the output was already committed by an identical earlier
    /// run (that run's id), so the stage did not run at all.
    pub committed_before: Option<String>,
    /// SHA-256 of the configuration its instances received (column
    /// selectors resolved), as its commit records it.
    pub config_sha256: String,
    /// What each column selector of its configuration selected, by key.
    pub selected: std::collections::BTreeMap<String, Vec<String>>,
    /// Rows per named output, for a stage that has them.
    pub outputs: std::collections::BTreeMap<String, u64>,
    /// What each of its tasks did, round by round.
    pub outcomes: Vec<TaskOutcome>,
}

impl StageReport {
    /// What `stage` did, from its commit and the tasks that led to it
    /// (none when an identical run had committed it) in run `run_id`.
    pub(crate) fn of_commit(
        stage: &stage::PreparedStage,
        committed: commit::Committed,
        run_id: &str,
        outcomes: Vec<TaskOutcome>,
        wall: Duration,
    ) -> StageReport {
        let record = committed.record;
        // Rows in: what the transform tasks read, else what the last fit pass did.
        let rows_in = if stage.transforms() && !outcomes.is_empty() {
            let transformed = outcomes.iter().filter(|o| matches!(o.task, TaskKind::Transform(_)));
            transformed.fold(0u64, |n, o| n.saturating_add(o.rows_in))
        } else {
            outcomes.iter().rev().find(|o| o.task == TaskKind::Merge).map_or(committed.fit_rows, |o| o.rows_in)
        };
        StageReport {
            name: stage.stage.name.clone(),
            kind: stage.stage.kind,
            component: stage.component.hash().to_string(),
            component_bytes: stage.component.size(),
            tasks: outcomes.len(),
            tasks_skipped: outcomes.iter().filter(|o| o.resumed).count(),
            passes: record.model.as_ref().map_or(0, |m| m.passes),
            rows_in,
            rows_out: record.rows,
            bytes_read: outcomes.iter().fold(0u64, |n, o| n.saturating_add(o.bytes_read)),
            bytes_written: outcomes.iter().fold(0u64, |n, o| n.saturating_add(o.bytes_written)),
            wall,
            output: stage.output.url().to_string(),
            model: record.model.clone(),
            model_bytes: committed.model_bytes,
            report: committed.report,
            applied_model: record.applied_model.clone().or_else(|| stage.applied.as_ref().map(|m| m.sha256.clone())),
            rows_quarantined: record.quarantine.iter().map(|p| p.rows).sum(),
            committed_before: (record.run_id != run_id).then(|| record.run_id.clone()),
            config_sha256: record.config.clone(),
            selected: record.selected.clone(),
            outputs: record.outputs(),
            outcomes,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Identity of this run, recorded in every commit.
    pub run_id: String,
    /// One report per stage, in the order run.
    pub stages: Vec<StageReport>,
    /// Wall time of the run.
    pub wall: Duration,
}

/// Runs pipelines. Holds the one engine of the process, so create it once
/// and run as many pipelines as needed.
pub struct Executor {
    runtime: Arc<Runtime>,
    cache: Arc<cache::Budget>,
    io: tokio::runtime::Runtime,
    pool: rayon::ThreadPool,
    /// Warnings and errors stages logged since the current run began.
    warnings: Arc<Mutex<Vec<LogLine>>>,
    /// Where stage logs go: kept in `warnings` when they warn, then on to
    /// the configured sink.
    log: LogSink,
    config: ExecutorConfig,
}

impl Executor {
    /// Tell the progress sink, if any.
    pub(crate) fn progress(&self, event: impl FnOnce() -> Progress) {
        if let Some(sink) = &self.config.progress {
            sink(&event());
        }
    }

    /// Start the engine, the I/O runtime and the task pool.
    pub fn new(config: ExecutorConfig) -> Result<Self, RunError> {
        let parallelism = config.parallelism.max(1);
        let runtime = Runtime::new(RuntimeConfig {
            // Tasks plus one merge instance, with room to spare.
            max_instances: parallelism as u32 + 2,
            ..RuntimeConfig::default()
        })
        .map_err(RunError::Runtime)?;
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wasmpipe-io")
            .enable_all()
            .build()
            .expect("start the I/O runtime");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(parallelism)
            .thread_name(|i| format!("wasmpipe-task-{i}"))
            .build()
            .expect("start the task pool");
        // Warnings and errors the stages log are kept for the run record,
        // on their way to the configured sink.
        let warnings: Arc<Mutex<Vec<LogLine>>> = Arc::default();
        let kept = warnings.clone();
        let next = config.sink.clone();
        let sink: LogSink = Arc::new(move |label: &str, record: &wasmpipe_runtime::LogRecord| {
            if record.level.rank() >= wasmpipe_runtime::Level::Warn.rank() {
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() < record::MAX_WARNINGS {
                    let level = record.level.name().into();
                    kept.push(LogLine { level, label: label.into(), message: record.message.clone() });
                }
            }
            if let Some(next) = &next {
                next(label, record);
            }
        });
        Ok(Executor {
            runtime: Arc::new(runtime),
            cache: cache::Budget::new(config.cache_bytes),
            io,
            pool,
            warnings,
            log: sink,
            config: ExecutorConfig { parallelism, ..config },
        })
    }

    /// Widen what runs may read (from a deployment) and write: see
    /// [`ExecutorConfig::allow_input`] and [`ExecutorConfig::allow_output`].
    pub fn allow(&mut self, input: Vec<String>, output: Vec<String>) {
        self.config.allow_input = input;
        self.config.allow_output = output;
    }

    /// The engine.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Run `manifest`; relative paths in it are relative to `base_dir`.
    pub fn run(&self, manifest: &Manifest, base_dir: &Path) -> Result<RunReport, RunError> {
        let storage = Storage::new(base_dir).with_options(manifest.storage.clone());
        self.run_in(manifest, &storage, Some(base_dir))
    }

    /// Run `manifest` with its locations resolved by `storage` (for a
    /// deployed pipeline, relative to the deployment's root). Stage crates
    /// and `.wasm` paths need the manifest's local directory `local_dir`;
    /// pinned components (`sha256:…`) are fetched through `storage`.
    pub fn run_in(
        &self,
        manifest: &Manifest,
        storage: &Storage,
        local_dir: Option<&Path>,
    ) -> Result<RunReport, RunError> {
        let (plan, components) = self.resolve_loaded(manifest, storage, local_dir)?;
        let authority = self.authority(storage, local_dir)?;
        self.run_loaded(&plan, components, &authority, storage)
    }

    /// Run a resolved plan. A plan resolved from a deployment (it names
    /// its root) may read only inside its root; any plan writes only under
    /// the store and what [`Executor::allow`] widened.
    pub fn run_plan(&self, plan: &LockedPipeline) -> Result<RunReport, RunError> {
        // Every location in a plan is absolute: resolved as it is, the same
        // here as in any process that runs its tasks.
        let storage = Storage::new(".");
        let components = self.load_components(plan)?;
        self.run_loaded(plan, components, &self.plan_authority(plan, None)?, &storage)
    }

    /// Refuse a plan that reads or writes outside what this executor may
    /// (see [`Executor::run_plan`]; a plan resolved from a local manifest
    /// in `local_dir` may also write beside it), before any of it runs.
    pub fn check_plan(&self, plan: &LockedPipeline, local_dir: Option<&Path>) -> Result<(), RunError> {
        plan.check(&self.plan_authority(plan, local_dir)?, &self.config.store)
    }

    fn plan_authority(
        &self,
        plan: &LockedPipeline,
        local_dir: Option<&Path>,
    ) -> Result<authority::Authority, RunError> {
        match local_dir {
            Some(dir) => self.authority(&Storage::new(dir), Some(dir)),
            None => authority::Authority::of_plan(
                plan.root.as_deref(),
                &self.config.store,
                &self.config.allow_input,
                &self.config.allow_output,
            ),
        }
    }

    fn authority(&self, storage: &Storage, local_dir: Option<&Path>) -> Result<authority::Authority, RunError> {
        authority::Authority::new(
            storage,
            &self.config.store,
            local_dir,
            &self.config.allow_input,
            &self.config.allow_output,
        )
    }

    fn run_loaded(
        &self,
        plan: &LockedPipeline,
        components: Vec<wasmpipe_runtime::StageComponent>,
        authority: &authority::Authority,
        storage: &Storage,
    ) -> Result<RunReport, RunError> {
        let started = Instant::now();
        plan.check(authority, &self.config.store)?;
        self.check_configs(plan, &components, storage)?;
        let run_id = new_run_id();
        let started_at = std::time::SystemTime::now();
        self.warnings.lock().unwrap_or_else(|e| e.into_inner()).clear();
        for (stage, message) in plan.leakage() {
            (self.log)(&stage, &wasmpipe_runtime::LogRecord { level: wasmpipe_runtime::Level::Warn, message });
        }
        let mut so_far = engine::SoFar::default();
        let result = self.drive(plan, components, storage, &run_id, &mut so_far);
        let warnings = std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()));
        let engine = match &self.config.engine {
            EngineKind::Local => "local",
            EngineKind::Process { .. } => "process",
        };
        let run = (run_id.as_str(), engine, self.config.store.as_str());
        let error = result.as_ref().err().map(ToString::to_string);
        let times = (started_at, std::time::SystemTime::now());
        let record = record::of_run(run, plan, times, (&so_far.stages, &so_far.running), warnings, error);
        // The record is for the operator: a store that cannot take it does
        // not fail a run that did its work.
        match storage.resolve(&self.config.store) {
            Ok(store) => match self.io.block_on(record::write(&store, &record)) {
                Ok(()) => {
                    if let Some(recorded) = &self.config.recorded {
                        recorded(storage, &store, &record, &self.io);
                    }
                }
                Err(e) => tracing::warn!("the run record was not written: {e}"),
            },
            Err(e) => tracing::warn!("the run record was not written: {e}"),
        }
        result?;
        Ok(RunReport { run_id, stages: so_far.stages, wall: started.elapsed() })
    }

    /// Run the stages of `plan` on the configured engine, adding each
    /// stage's report to `stages` as it finishes; `running` holds what the
    /// tasks of the stage running now did, round by round.
    fn drive(
        &self,
        plan: &LockedPipeline,
        components: Vec<wasmpipe_runtime::StageComponent>,
        storage: &Storage,
        run_id: &str,
        so_far: &mut engine::SoFar,
    ) -> Result<(), RunError> {
        match &self.config.engine {
            EngineKind::Local => engine::drive(self, storage, plan, components, &engine::Local, run_id, so_far),
            EngineKind::Process { program } => {
                if self.config.store.starts_with("memory://") {
                    return Err(RunError::Plan {
                        url: self.config.store.clone(),
                        reason: "the process engine runs tasks in other processes, which cannot see this process's memory:// store\n  hint: use a directory or an object store".into(),
                    });
                }
                let process = engine::Process {
                    program: program.clone(),
                    plan_url: self.publish_plan(plan, storage, &self.config.store)?,
                    plan_sha256: plan.hash(),
                };
                engine::drive(self, storage, plan, components, &process, run_id, so_far)
            }
        }
    }

    /// Run one task of the plan at `spec.plan` in this process (what
    /// `wasmpipe task` does), writing under this executor's store.
    pub fn run_task(&self, spec: &TaskSpec) -> Result<TaskOutcome, RunError> {
        let Some(run_id) = &spec.run_id else {
            return self.run_one_task(spec);
        };
        let refuse = |reason: String| RunError::Plan { url: spec.plan.clone(), reason };
        record::check_run_id(run_id).map_err(refuse)?;
        self.warnings.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let started_ms = unix_ms(std::time::SystemTime::now());
        let result = self.run_one_task(spec);
        let mut warnings = std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()));
        for w in &mut warnings {
            w.message = record::cut(std::mem::take(&mut w.message));
        }
        let attempt = record::TaskAttempt {
            format: record::ATTEMPT_FORMAT,
            plan_sha256: self.load_plan(&spec.plan).map(|p| p.hash()).unwrap_or_default(),
            stage: spec.stage.clone(),
            task: spec.task.to_string(),
            pass: spec.pass,
            started_ms,
            ended_ms: unix_ms(std::time::SystemTime::now()),
            outcome: result.as_ref().ok().cloned(),
            error: result.as_ref().err().map(|e| record::cut(e.to_string())),
            exit_code: result.as_ref().map_or_else(RunError::exit_code, |_| EXIT_OK),
            warnings,
        };
        let nonce = new_run_id();
        let unkept = |source| RunError::Storage { stage: spec.stage.clone(), source };
        let kept = Storage::new(".")
            .resolve(&self.config.store)
            .and_then(|store| self.io.block_on(record::write_attempt(&store, run_id, &attempt, &nonce)));
        match (result, kept) {
            // A task whose attempt is not kept would be missing from the
            // run's record: fail it as transient, and its retry resumes.
            (Ok(_), Err(e)) => Err(unkept(e)),
            (Err(task), Err(e)) => {
                tracing::warn!("the attempt of task {} was not kept for run {run_id}: {e}", spec.task);
                Err(task)
            }
            (result, Ok(())) => result,
        }
    }

    fn run_one_task(&self, spec: &TaskSpec) -> Result<TaskOutcome, RunError> {
        let plan = self.load_plan(&spec.plan)?;
        task::check_spec_plan(spec, &plan.hash())?;
        let locked = plan.stage(&spec.stage)?;
        let storage = Storage::new(".");
        let stage = stage::prepare(self, &storage, &plan, locked, self.load_component(locked)?)?;
        task::run(&stage, spec.task, spec.pass).map_err(|cause| RunError::Task {
            stage: spec.stage.clone(),
            task: spec.task.to_string(),
            cause: Box::new(cause),
            others: 0,
        })
    }

    /// Prepare stage `stage` of the plan at `plan_url` for an engine (what
    /// `wasmpipe prepare` does): its tasks; an output an identical run
    /// committed is reported as such (and its clean-up finished), an
    /// output holding objects wasmpipe did not write is refused.
    pub fn prepare_stage(&self, plan_url: &str, stage: &str) -> Result<StageTasks, RunError> {
        let plan = self.load_plan(plan_url)?;
        let locked = plan.stage(stage)?;
        let storage = Storage::new(".");
        let prepared = stage::prepare(self, &storage, &plan, locked, self.load_component(locked)?)?;
        let storage_err = |source| RunError::Storage { stage: stage.to_string(), source };
        let previous = self.io.block_on(wasmpipe_storage::commit::read(&prepared.output)).map_err(storage_err)?;
        let committed = match &previous {
            Some(record) if record.identity == prepared.output_identity => {
                self.io
                    .block_on(wasmpipe_storage::commit::remove_unreferenced(&prepared.output, record))
                    .map_err(storage_err)?;
                true
            }
            _ => {
                self.io
                    .block_on(wasmpipe_storage::commit::check_writable(
                        &prepared.output,
                        previous.as_ref(),
                        &plan.pipeline,
                        stage,
                    ))
                    .map_err(storage_err)?;
                false
            }
        };
        let (fits, transforms) = (prepared.fits(), prepared.transforms());
        // How far the fit got: the merges that ran, pass by pass.
        let (mut passes_done, mut fit_finished) = (0, false);
        while fits && !committed && !fit_finished && passes_done < locked.limits.max_passes {
            let merge = prepared.merge_id(passes_done);
            match self
                .io
                .block_on(wasmpipe_storage::commit::read_task(&prepared.output, &merge))
                .map_err(storage_err)?
            {
                Some((wasmpipe_storage::commit::TaskRecord::Merge { model, .. }, _)) => {
                    passes_done += 1;
                    fit_finished = model.is_some();
                }
                _ => break,
            }
        }
        Ok(StageTasks {
            format: TASK_FORMAT,
            stage: stage.to_string(),
            kind: locked.kind,
            output: prepared.output.url().to_string(),
            committed,
            partitions: prepared.partitions.len(),
            fit_tasks: if fits { prepared.fit_tasks() } else { 0 },
            combine_levels: if fits { prepared.merge_levels()[1..].to_vec() } else { Vec::new() },
            max_passes: locked.limits.max_passes,
            passes_done,
            fit_finished,
            transform_tasks: if transforms { prepared.partitions.len() } else { 0 },
            parallelism: locked.limits.parallelism,
        })
    }

    /// Commit stage `stage` of the plan at `plan_url` from the records its
    /// tasks left (what `wasmpipe commit` does), as run `run_id`.
    pub fn commit_stage(&self, plan_url: &str, stage: &str, run_id: Option<&str>) -> Result<StageReport, RunError> {
        let started = Instant::now();
        let plan = self.load_plan(plan_url)?;
        let locked = plan.stage(stage)?;
        let storage = Storage::new(".");
        let prepared = stage::prepare(self, &storage, &plan, locked, self.load_component(locked)?)?;
        let run_id = run_id.map_or_else(new_run_id, str::to_string);
        record::check_run_id(&run_id).map_err(|reason| RunError::Plan { url: plan_url.to_string(), reason })?;
        // (A stage an identical run committed is reported as it is.)
        let committed = commit::commit_stage(&prepared, &run_id, None)?;
        Ok(StageReport::of_commit(&prepared, committed, &run_id, Vec::new(), started.elapsed()))
    }

    /// Keep the record of a run an outside engine drove (the Ray driver,
    /// through `wasmpipe record`), as a local run keeps its own: each stage
    /// `log` says was committed, read back from its commit, with the tasks
    /// the engine ran for it; then the stage that failed, with its tasks,
    /// and the error. Nothing but the record is written. Returns where it
    /// is kept, and the record.
    pub fn record_run(&self, plan_url: &str, log: RunLog) -> Result<(Location, RunRecord), RunError> {
        let plan = self.load_plan(plan_url)?;
        let refuse = |reason: String| RunError::Plan { url: plan_url.to_string(), reason };
        check_log(&plan, &log).map_err(refuse)?;
        let storage = Storage::new(".");
        let unkept = |source| RunError::Storage { stage: "(the run record)".into(), source };
        let store = storage.resolve(&self.config.store).map_err(unkept)?;
        // A record is the run's own: another engine's or plan's is not replaced.
        if let Some(kept) = self.io.block_on(record::find_exact(&store, &log.run_id)).map_err(unkept)?
            && (kept.engine != log.engine || kept.plan_sha256 != plan.hash())
        {
            return Err(refuse(format!(
                "run {} is recorded already, by the {} engine for plan {}; a run id names one run\n  hint: give this run its own id",
                log.run_id, kept.engine, kept.plan_sha256
            )));
        }
        let mut stages = Vec::new();
        for logged in log.stages {
            let locked = plan.stage(&logged.name)?;
            let prepared = stage::prepare(self, &storage, &plan, locked, self.load_component(locked)?)?;
            let storage_err = |source| RunError::Storage { stage: logged.name.clone(), source };
            let Some(committed) = commit::identical(&prepared).map_err(storage_err)? else {
                return Err(refuse(format!(
                    "the run log says stage \"{}\" was committed, but its output {} holds no commit of this plan\n  hint: `wasmpipe commit` the stage first, or leave it out of the log",
                    logged.name,
                    prepared.output.url()
                )));
            };
            let wall = Duration::from_secs_f64(logged.seconds);
            stages.push(StageReport::of_commit(&prepared, committed, &log.run_id, logged.outcomes, wall));
        }
        let started = std::time::UNIX_EPOCH + Duration::from_millis(log.started_ms);
        let ended = log
            .ended_ms
            .map_or_else(std::time::SystemTime::now, |ms| std::time::UNIX_EPOCH + Duration::from_millis(ms));
        let run = (log.run_id.as_str(), log.engine.as_str(), self.config.store.as_str());
        let warnings = log.warnings.into_iter().take(record::MAX_WARNINGS).collect();
        let record = record::of_run(run, &plan, (started, ended), (&stages, &log.running), warnings, log.error);
        self.io.block_on(record::write(&store, &record)).map_err(unkept)?;
        Ok((store, record))
    }
}

impl Executor {
    /// The log of run `run_id` of the plan at `plan_url` from the task
    /// attempts `wasmpipe task --run-id` kept in the store (what `wasmpipe
    /// record --collect` keeps as the run's record, for engines without a
    /// driver process: Kubernetes). The run's stages are the plan's first
    /// ones that are committed; the first one that is not failed, with the
    /// first of its tasks whose every attempt failed as the cause, or
    /// `error` (what the engine saw: a Job failed) when none did.
    pub fn collect_run(
        &self,
        plan_url: &str,
        run_id: &str,
        engine: &str,
        mut error: Option<String>,
    ) -> Result<RunLog, RunError> {
        let refuse = |reason: String| RunError::Plan { url: plan_url.to_string(), reason };
        record::check_run_id(run_id).map_err(refuse)?;
        let plan = self.load_plan(plan_url)?;
        let storage = Storage::new(".");
        let unread = |source| RunError::Storage { stage: "(the run's task attempts)".into(), source };
        let store = storage.resolve(&self.config.store).map_err(unread)?;
        let (attempts, mut unreadable) = self.io.block_on(record::attempts(&store, run_id)).map_err(unread)?;
        let hash = plan.hash();
        let (attempts, others): (Vec<_>, Vec<_>) = attempts.into_iter().partition(|a| a.plan_sha256 == hash);
        if let Some(other) = others.first() {
            unreadable.push(format!(
                "{} attempts kept under run {run_id} ran another plan ({}), not this one ({hash}); left out of the record\n  hint: give each run its own id",
                others.len(),
                other.plan_sha256
            ));
        }
        // A run none of whose tasks kept an attempt is recorded only when
        // it found every stage committed (nothing left to run), and never
        // over a record kept already (a local run's, say).
        let none_kept = format!(
            "no task kept an attempt of this plan for run {run_id} under {}\n  hint: check the run id (`wasmpipe runs` lists the runs recorded); only tasks given `--run-id` keep attempts",
            store.child(RUNS_DIR).child(run_id).child("tasks").url()
        );
        if attempts.is_empty() && self.io.block_on(record::find_exact(&store, run_id)).map_err(unread)?.is_some() {
            return Err(refuse(format!("run {run_id} is recorded already; {none_kept}")));
        }
        let mut warnings: Vec<LogLine> = Vec::new();
        let mut log = RunLog {
            run_id: run_id.to_string(),
            engine: engine.to_string(),
            started_ms: attempts
                .iter()
                .map(|a| a.started_ms)
                .min()
                .unwrap_or_else(|| unix_ms(std::time::SystemTime::now())),
            ended_ms: attempts.iter().map(|a| a.ended_ms).max(),
            stages: Vec::new(),
            running: Vec::new(),
            warnings: Vec::new(),
            error: None,
        };
        for line in unreadable {
            warnings.push(LogLine { level: "warn".into(), label: "(record)".into(), message: line });
        }
        for locked in &plan.stages {
            let mine: Vec<&record::TaskAttempt> = attempts.iter().filter(|a| a.stage == locked.name).collect();
            // A task's outcome is its first attempt that did the work (the
            // others resumed it); failed attempts of a task that later
            // succeeded were retried, and say so.
            let mut outcomes: Vec<TaskOutcome> = Vec::new();
            for a in &mine {
                warnings.extend(a.warnings.iter().cloned());
                let Some(o) = &a.outcome else { continue };
                match outcomes.iter_mut().find(|k| k.task == o.task && k.pass == o.pass) {
                    Some(kept) if kept.resumed && !o.resumed => *kept = o.clone(),
                    Some(_) => {}
                    None => outcomes.push(o.clone()),
                }
            }
            let succeeded =
                |a: &record::TaskAttempt| outcomes.iter().any(|o| o.task.to_string() == a.task && o.pass == a.pass);
            let prepared = stage::prepare(self, &storage, &plan, locked, self.load_component(locked)?)?;
            let committed = commit::identical(&prepared)
                .map_err(|source| RunError::Storage { stage: locked.name.clone(), source })?
                .is_some();
            let mut failed = None;
            for a in mine.iter().filter(|a| a.error.is_some()) {
                let why = a.error.as_deref().unwrap_or_default();
                if !committed && !succeeded(a) && failed.is_none() {
                    // Name the task, as a task's own failure does.
                    let named = format!("stage {:?}, {}", a.stage, a.task);
                    failed = Some(if why.starts_with(&named) { why.to_string() } else { format!("{named}: {why}") });
                    continue;
                }
                let label = format!("{}[{} pass {}]", a.stage, a.task, a.pass);
                let then = if succeeded(a) { "and was retried" } else { "and the stage committed without it" };
                let message = format!("an attempt failed (exit {}) {then}: {why}", a.exit_code);
                warnings.push(LogLine { level: "warn".into(), label, message });
            }
            if committed {
                let begun = outcomes.iter().map(|o| o.started_ms).min().unwrap_or_default();
                let ended = outcomes.iter().map(|o| o.started_ms + (o.seconds * 1000.0) as u64).max().unwrap_or(begun);
                let seconds = ended.saturating_sub(begun) as f64 / 1000.0;
                log.stages.push(StageLog { name: locked.name.clone(), seconds, outcomes });
                continue;
            }
            if attempts.is_empty() {
                return Err(refuse(none_kept));
            }
            log.running = outcomes;
            log.error = Some(match (failed, error.take()) {
                (Some(task), Some(engine)) => format!("{task}\n  ({engine})"),
                (Some(task), None) => task,
                (None, Some(engine)) => engine,
                (None, None) => format!(
                    "stage \"{}\" was not committed: the engine stopped before its tasks were done ({} recorded)\n  hint: run it again; what was done is kept",
                    locked.name,
                    log.running.len()
                ),
            });
            break;
        }
        // Every stage committed: what the engine said (it stopped after the
        // last commit) is a warning, not the run's failure.
        if let Some(said) = error.filter(|_| log.error.is_none()) {
            warnings.push(LogLine { level: "warn".into(), label: format!("({engine})"), message: record::cut(said) });
        }
        log.warnings = warnings.into_iter().take(record::MAX_WARNINGS).collect();
        Ok(log)
    }
}

/// Why `log` cannot be the log of a run of `plan`: its stages must be the
/// plan's first ones, in order (all of them when it did not fail), each
/// task outcome its own stage's, and its numbers what a run can have.
fn check_log(plan: &LockedPipeline, log: &RunLog) -> Result<(), String> {
    record::check_run_id(&log.run_id)?;
    if log.engine.is_empty()
        || log.engine.len() > 32
        || !log.engine.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(format!("engine {:?}: name the engine in 1 to 32 ASCII letters, digits and '-'", log.engine));
    }
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    if u128::from(log.started_ms) > now_ms + 24 * 3_600_000 {
        return Err(format!("started_ms {} is in the future; give milliseconds since the Unix epoch", log.started_ms));
    }
    if let Some(ended) = log.ended_ms.filter(|&e| e < log.started_ms || u128::from(e) > now_ms + 24 * 3_600_000) {
        return Err(format!(
            "ended_ms {ended} is before started_ms or in the future; give milliseconds since the Unix epoch"
        ));
    }
    let planned: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
    let logged: Vec<&str> = log.stages.iter().map(|s| s.name.as_str()).collect();
    if !planned.starts_with(&logged) {
        return Err(format!(
            "the log's stages {logged:?} are not the plan's first stages in its order ({planned:?}); a run commits its stages in the plan's order"
        ));
    }
    if log.error.is_none() && logged.len() < planned.len() {
        return Err(format!(
            "the log says the run succeeded, but stage \"{}\" is not among its stages\n  hint: give `error` when the run failed",
            planned[logged.len()]
        ));
    }
    let failed = planned.get(logged.len()).copied().unwrap_or_default();
    let tasks = log.stages.iter().flat_map(|s| s.outcomes.iter().map(move |o| (s.name.as_str(), o)));
    for (stage, outcome) in tasks.chain(log.running.iter().map(|o| (failed, o))) {
        if outcome.stage != stage {
            return Err(format!("a task outcome of stage \"{}\" is listed under stage \"{stage}\"", outcome.stage));
        }
    }
    if let Some(s) = log.stages.iter().find(|s| !(s.seconds.is_finite() && (0.0..1e9).contains(&s.seconds))) {
        return Err(format!("stage \"{}\": seconds {} is not a wall time", s.name, s.seconds));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn new_run_id() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}-{:08x}", now.as_secs(), (now.subsec_nanos() ^ std::process::id().rotate_left(16)))
}
