//! Engines: what runs a plan's tasks. The driver here walks the plan
//! stage by stage (fit rounds: partial tasks, then their merge, then the
//! next pass; then the transform tasks; then the commit) and hands each
//! round of tasks to an engine:
//!
//! * [`Local`]: rayon threads in this process;
//! * [`Process`]: each task a `wasmpipe task` child process, so that a
//!   stage that crashes its process takes down only its task; it proves
//!   the task contract end to end on one machine.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use wasmpipe_runtime::{Level, LogRecord, StageComponent};
use wasmpipe_storage::{Storage, commit};

use crate::commit::{Committed, commit_stage, committed_files, register_model};
use crate::plan::LockedPipeline;
use crate::stage::{PreparedStage, prepare};
use crate::task::{self, FitStep, TaskKind, TaskOutcome};
use crate::{Executor, Progress, RunError, StageReport, TaskFailure, registry};

/// Which engine runs a plan's tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// Threads in this process (the default).
    #[default]
    Local,
    /// A `wasmpipe task` child process per task, `program` being the
    /// `wasmpipe` binary.
    Process {
        /// The `wasmpipe` binary.
        program: PathBuf,
    },
}

/// Runs rounds of tasks of a prepared stage.
pub(crate) trait Engine: Sync {
    /// Run `tasks` (kind and fit pass) of `stage`, at most the run's (and
    /// the stage's) parallelism at a time; their outcomes, in order. After
    /// the first failure no new task starts.
    fn run_tasks(&self, stage: &PreparedStage, tasks: &[(TaskKind, u32)]) -> Result<Vec<TaskOutcome>, RunError>;
}

/// Tasks on this process's task pool.
pub(crate) struct Local;

impl Engine for Local {
    fn run_tasks(&self, stage: &PreparedStage, tasks: &[(TaskKind, u32)]) -> Result<Vec<TaskOutcome>, RunError> {
        parallel(stage, tasks, |kind, pass| task::run(stage, kind, pass))
    }
}

/// Tasks as `wasmpipe task` child processes.
pub(crate) struct Process {
    pub program: PathBuf,
    pub plan_url: String,
    pub plan_sha256: String,
}

/// Attempts of a task that failed transiently (exit 75) or whose process
/// died (killed, crashed) before it is given up.
const MAX_ATTEMPTS: u32 = 3;

impl Engine for Process {
    fn run_tasks(&self, stage: &PreparedStage, tasks: &[(TaskKind, u32)]) -> Result<Vec<TaskOutcome>, RunError> {
        parallel(stage, tasks, |kind, pass| self.run_one(stage, kind, pass))
    }
}

impl Process {
    fn run_one(&self, stage: &PreparedStage, kind: TaskKind, pass: u32) -> Result<TaskOutcome, TaskFailure> {
        let mut attempt = 1;
        loop {
            let out = Command::new(&self.program)
                .arg("task")
                .args(["--plan", &self.plan_url, "--plan-sha256", &self.plan_sha256])
                .args(["--stage", &stage.stage.name, "--task", &kind.to_string(), "--pass", &pass.to_string()])
                .args(["--attempt", &attempt.to_string(), "--store", &stage.exec.config.store])
                .args(["--log-format", "json"])
                // The manifest's [storage] options, as the stores read them
                // from the environment: never on a command line.
                .envs(stage.storage.options_as_env())
                .stdin(Stdio::null())
                .output()
                .map_err(|e| TaskFailure::Internal(format!("cannot start {}: {e}", self.program.display())))?;
            forward_logs(stage, &String::from_utf8_lossy(&out.stderr));
            if out.status.success() {
                return serde_json::from_slice(&out.stdout)
                    .map_err(|e| TaskFailure::Internal(format!("`wasmpipe task` printed no task outcome ({e})")));
            }
            let failure = TaskFailure::from_process(out.status, &out.stdout);
            if failure.exit_code() != crate::EXIT_TRANSIENT || attempt >= MAX_ATTEMPTS {
                return Err(failure);
            }
            tracing::warn!(stage = %stage.stage.name, "{kind} attempt {attempt} failed ({failure}); retrying");
            std::thread::sleep(Duration::from_millis(200 << attempt));
            attempt += 1;
        }
    }
}

/// Hand a child's log lines (JSON, one per line) to the run's sink.
fn forward_logs(stage: &PreparedStage, stderr: &str) {
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let parsed: Option<(String, LogRecord)> = serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| {
            let level = Level::from_name(v.get("level")?.as_str()?).unwrap_or(Level::Error);
            let label = v.get("label")?.as_str()?.to_string();
            Some((label, LogRecord { level, message: v.get("message")?.as_str()?.to_string() }))
        });
        let (label, record) = parsed
            .unwrap_or_else(|| (stage.stage.name.clone(), LogRecord { level: Level::Warn, message: line.to_string() }));
        (stage.exec.log)(&label, &record);
        if stage.exec.config.sink.is_none() {
            eprintln!("[{label}] {}", record.message);
        }
    }
}

/// How a task is named in errors.
fn describe(stage: &PreparedStage, kind: TaskKind, pass: u32) -> String {
    match kind {
        TaskKind::Fit(i) => stage.describe_fit(&format!("fit pass {pass},"), i),
        TaskKind::Combine { level, group } => format!("combine {level}:{group} of fit pass {pass}"),
        TaskKind::Merge => format!("merge and finalize of fit pass {pass}"),
        TaskKind::Transform(i) => stage.describe("transform", i),
    }
}

/// Run `task` for each of `tasks`, the run's parallelism (or the stage's,
/// when lower) at a time, on the executor's pool. After the first failure
/// no new task starts; the error names the first failed task.
fn parallel(
    stage: &PreparedStage,
    tasks: &[(TaskKind, u32)],
    task: impl Fn(TaskKind, u32) -> Result<TaskOutcome, TaskFailure> + Sync,
) -> Result<Vec<TaskOutcome>, RunError> {
    let exec = stage.exec;
    let name = &stage.stage.name;
    if let Some(&(kind, pass)) = tasks.first() {
        let what = match kind {
            TaskKind::Fit(_) => format!("fit pass {pass}"),
            TaskKind::Combine { .. } => format!("combine, pass {pass}"),
            TaskKind::Merge => format!("merge, pass {pass}"),
            TaskKind::Transform(_) => "transform".to_string(),
        };
        exec.progress(|| Progress::Round { stage: name.clone(), what, tasks: tasks.len() });
    }
    let failed = AtomicBool::new(false);
    let run_one = |&(kind, pass): &(TaskKind, u32)| -> Option<Result<TaskOutcome, TaskFailure>> {
        if failed.load(Ordering::Relaxed) {
            return None;
        }
        exec.progress(|| Progress::TaskStarted { stage: name.clone() });
        let result = catch_unwind(AssertUnwindSafe(|| task(kind, pass)))
            .unwrap_or_else(|p| Err(TaskFailure::Internal(panic_message(p))));
        match &result {
            Ok(o) => exec.progress(|| Progress::TaskDone { stage: name.clone(), rows: o.rows_in, bytes: o.bytes_read }),
            Err(_) => failed.store(true, Ordering::Relaxed),
        }
        Some(result)
    };
    let limit = stage.stage.limits.parallelism.map_or(usize::MAX, |p| p as usize);
    let collect = || tasks.par_iter().with_max_len(1).map(run_one).collect::<Vec<_>>();
    let results = if limit < exec.config.parallelism {
        rayon::ThreadPoolBuilder::new().num_threads(limit).build().expect("task pool").install(collect)
    } else {
        exec.pool.install(collect)
    };
    let mut out = Vec::with_capacity(tasks.len());
    let mut first: Option<(usize, TaskFailure)> = None;
    let mut others = 0;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) if first.is_none() => first = Some((i, e)),
            Some(Err(_)) => others += 1,
            None => {}
        }
    }
    match first {
        None => Ok(out),
        Some((_, TaskFailure::TooManyPasses { passes })) => {
            Err(RunError::TooManyPasses { stage: stage.stage.name.clone(), passes })
        }
        Some((i, cause)) => {
            let (kind, pass) = tasks[i];
            Err(RunError::Task {
                stage: stage.stage.name.clone(),
                task: describe(stage, kind, pass),
                cause: Box::new(cause),
                others,
            })
        }
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// What a run has done so far: the stages that finished, and what the
/// tasks of the stage running now did, round by round.
#[derive(Default)]
pub(crate) struct SoFar {
    pub stages: Vec<StageReport>,
    pub running: Vec<TaskOutcome>,
}

/// Run every stage of `plan` (its components loaded as `components`) in
/// order on `engine`; the reports of the stages run.
pub(crate) fn drive(
    exec: &Executor,
    storage: &Storage,
    plan: &LockedPipeline,
    components: Vec<StageComponent>,
    engine: &dyn Engine,
    run_id: &str,
    so_far: &mut SoFar,
) -> Result<(), RunError> {
    for (locked, component) in plan.stages.iter().zip(components) {
        let started = Instant::now();
        let stage = prepare(exec, storage, plan, locked, component)?;
        // Its column selectors resolved, its configuration is checked now,
        // before its first task.
        if !stage.selected.is_empty()
            && locked.model.is_none()
            && let Err(why) = exec.check_config(plan, locked, &stage.component, &stage.config)
        {
            let selected = stage.selected.iter().map(|(k, c)| format!("{k} = {c:?}")).collect::<Vec<_>>().join("; ");
            return Err(RunError::ConfigAtStart { stage: locked.name.clone(), why, selected });
        }
        exec.progress(|| Progress::Stage { stage: locked.name.clone(), partitions: stage.partitions.len() });
        let report = run_stage(&stage, engine, run_id, started, &mut so_far.running)?;
        exec.progress(|| Progress::StageDone {
            stage: locked.name.clone(),
            rows: report.rows_out,
            committed_before: report.committed_before.is_some(),
        });
        registry::record_evaluation(exec, storage, plan, run_id, &so_far.stages, &report)?;
        so_far.stages.push(report);
    }
    Ok(())
}

/// One stage: skipped when an identical run committed it, else its fit
/// rounds, its transform tasks, its commit.
fn run_stage(
    stage: &PreparedStage,
    engine: &dyn Engine,
    run_id: &str,
    started: Instant,
    outcomes: &mut Vec<TaskOutcome>,
) -> Result<StageReport, RunError> {
    let io = &stage.exec.io;
    let name = &stage.stage.name;
    let storage_err = |source| RunError::Storage { stage: name.clone(), source };
    // The output as the run found it: committed by an identical run, it is
    // done; otherwise the new commit must replace exactly what was seen.
    let previous = io.block_on(commit::read_versioned(&stage.output)).map_err(storage_err)?;
    if let Some((record, _)) = &previous
        && record.identity == stage.output_identity
    {
        // Finish the clean-up a run killed after its commit left undone.
        io.block_on(commit::remove_unreferenced(&stage.output, record)).map_err(storage_err)?;
        let (model_bytes, published) = committed_files(stage, record).map_err(storage_err)?;
        // A model committed before the registry existed enters it now.
        register_model(stage, record, model_bytes.as_deref(), published.as_deref()).map_err(storage_err)?;
        let committed = Committed { record: record.clone(), model_bytes, report: published, fit_rows: 0 };
        return Ok(StageReport::of_commit(stage, committed, run_id, Vec::new(), started.elapsed()));
    }
    io.block_on(commit::check_writable(&stage.output, previous.as_ref().map(|(r, _)| r), &stage.plan.pipeline, name))
        .map_err(storage_err)?;
    let seen = previous.map(|(_, e_tag)| e_tag);

    let fits = stage.fits();
    if fits {
        for pass in 0..stage.stage.limits.max_passes {
            let round: Vec<(TaskKind, u32)> = (0..stage.fit_tasks()).map(|i| (TaskKind::Fit(i), pass)).collect();
            outcomes.extend(engine.run_tasks(stage, &round)?);
            for (level, &groups) in stage.merge_levels().iter().enumerate().skip(1) {
                let round: Vec<(TaskKind, u32)> =
                    (0..groups).map(|group| (TaskKind::Combine { level: level as u32, group }, pass)).collect();
                outcomes.extend(engine.run_tasks(stage, &round)?);
            }
            let merged = engine.run_tasks(stage, &[(TaskKind::Merge, pass)])?;
            let done = merged.iter().any(|o| matches!(o.fit, Some(FitStep::Done { .. })));
            outcomes.extend(merged);
            if done {
                break;
            }
        }
    }
    if stage.transforms() {
        let round: Vec<(TaskKind, u32)> = (0..stage.partitions.len()).map(|i| (TaskKind::Transform(i), 0)).collect();
        outcomes.extend(engine.run_tasks(stage, &round)?);
    }
    let committed = commit_stage(stage, run_id, Some(seen))?;
    let mut report = StageReport::of_commit(stage, committed, run_id, std::mem::take(outcomes), started.elapsed());
    // Its tasks ran: an identical run that committed first made the same bytes.
    report.committed_before = None;
    Ok(report)
}
