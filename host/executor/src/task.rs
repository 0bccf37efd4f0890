//! The task contract: the unit of work any engine runs, and running one.
//!
//! A task is one of a stage's fit tasks (fold one partition into a partial
//! state, for one pass), its merge (merge a pass's states and finalize
//! them: a model, or the state the next pass starts from), or one of its
//! transform tasks (one partition through the stage into one part). A
//! [`TaskSpec`] names it, a [`TaskOutcome`] says what it did; both are
//! plain JSON, for engines in other processes (`wasmpipe task`).
//!
//! Every task is idempotent: what it writes is named by its identity and
//! its bytes are determined by it (the stage's randomness is seeded from
//! it too), so a retried or duplicated attempt rewrites the same objects
//! with the same bytes. A task whose record is already in the store is not
//! run again.

use std::str::FromStr;
use std::time::Instant;

use arrow::array::AsArray;
use arrow::compute::BatchCoalescer;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use wasmpipe_runtime::{FitOutcome, StageInstance, StageKind};
use wasmpipe_storage::StorageError;
use wasmpipe_storage::commit::{self, Journal, Model, OutputLayout, Part, ReportFiles, TaskRecord};
use wasmpipe_storage::quarantine;
use wasmpipe_storage::read::Chunk;
use wasmpipe_storage::write::PartWriter;

use crate::stage::{PreparedStage, content_sha256};
use crate::{RunError, TaskFailure};

/// The version of the task contract's JSON documents.
pub const TASK_FORMAT: u32 = 1;

/// Most partial states one task merges: a pass's fit states are merged in
/// a tree of this fan-in (`combine` tasks, level by level, then the final
/// `merge`), so that no task reads every state of a wide fit. Every engine
/// merges along the same tree, so results do not depend on the engine.
pub const MERGE_FAN_IN: usize = 16;

/// Which task of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// Fold partition N into a partial state (`fit:N`).
    Fit(usize),
    /// Merge group G of level L of a pass's merge tree (`combine:L:G`).
    Combine {
        /// The level (1: groups of fit states; L: groups of level L-1).
        level: u32,
        /// The group within the level.
        group: usize,
    },
    /// Merge a pass's partial states and finalize them (`merge`).
    Merge,
    /// Partition N through the stage into one part (`transform:N`).
    Transform(usize),
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskKind::Fit(i) => write!(f, "fit:{i}"),
            TaskKind::Combine { level, group } => write!(f, "combine:{level}:{group}"),
            TaskKind::Merge => f.write_str("merge"),
            TaskKind::Transform(i) => write!(f, "transform:{i}"),
        }
    }
}

impl FromStr for TaskKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let index = |n: &str| n.parse::<usize>().map_err(|_| format!("{s:?}: the partition after `:` is a number"));
        match s.split_once(':') {
            None if s == "merge" => Ok(TaskKind::Merge),
            Some(("fit", n)) => Ok(TaskKind::Fit(index(n)?)),
            Some(("transform", n)) => Ok(TaskKind::Transform(index(n)?)),
            Some(("combine", rest)) => match rest.split_once(':') {
                Some((level, group)) => Ok(TaskKind::Combine {
                    level: level.parse().map_err(|_| format!("{s:?}: the level is a number"))?,
                    group: index(group)?,
                }),
                None => Err(format!("{s:?}: write `combine:LEVEL:GROUP`")),
            },
            _ => Err(format!("{s:?} is not a task: write `fit:N`, `combine:L:G`, `merge` or `transform:N`")),
        }
    }
}

impl Serialize for TaskKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TaskKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What a stage's tasks are, as `wasmpipe prepare` tells an engine before
/// it runs them (see `docs/commit-protocol.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTasks {
    /// Always [`TASK_FORMAT`].
    pub format: u32,
    /// The stage.
    pub stage: String,
    /// Its kind.
    pub kind: StageKind,
    /// Its output (URL).
    pub output: String,
    /// True when the output is already committed with this stage's
    /// identity: there is nothing to run.
    pub committed: bool,
    /// Input partitions.
    pub partitions: usize,
    /// Fit tasks per pass (`fit:0` ..), 0 when the stage does not fit.
    pub fit_tasks: usize,
    /// Combine groups per level of the merge tree, from level 1 (`combine:1:0` ..).
    pub combine_levels: Vec<usize>,
    /// Most fit passes.
    pub max_passes: u32,
    /// Fit passes whose merge has run (a stage that fits).
    pub passes_done: u32,
    /// Whether the fit is finished (its last merge produced the model).
    pub fit_finished: bool,
    /// Transform tasks (`transform:0` ..), 0 when the stage does not transform.
    pub transform_tasks: usize,
    /// Most of its tasks at once, when the stage limits it.
    pub parallelism: Option<u32>,
}

/// One task of a plan, as an engine hands it to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Where the plan is (a URL; `STORE/_plans/SHA256.json`).
    pub plan: String,
    /// The plan's hash: a worker refuses a plan that differs.
    pub plan_sha256: String,
    /// The stage.
    pub stage: String,
    /// Which of its tasks.
    pub task: TaskKind,
    /// The fit pass (0 for transform tasks).
    #[serde(default)]
    pub pass: u32,
    /// The engine's name for this attempt, for its logs; attempts of one
    /// task write the same bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<String>,
    /// The run the task belongs to, when the engine has no driver process
    /// to keep its outcome (Kubernetes): the attempt, failed or not, is
    /// kept under `<store>/_runs/<run id>/tasks/` for `wasmpipe record
    /// --collect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// An object a task wrote, relative to the stage's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenObject {
    /// Its name under the output prefix.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// BLAKE3 of its bytes (a Parquet part's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// SHA-256 of its bytes (a model's or a report's; a part's in
    /// outcomes of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl WrittenObject {
    fn of(part: &Part) -> WrittenObject {
        WrittenObject {
            name: part.name.clone(),
            bytes: part.bytes,
            blake3: part.blake3.clone(),
            sha256: part.sha256.clone(),
        }
    }
}

/// What a merge decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum FitStep {
    /// The estimator asked for another pass.
    NextPass,
    /// The fit is finished: its model or result.
    Done {
        /// SHA-256 of the model's bytes.
        model: String,
    },
}

/// What one task did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskOutcome {
    /// Always [`TASK_FORMAT`].
    pub format: u32,
    /// The stage.
    pub stage: String,
    /// The task.
    pub task: TaskKind,
    /// Its fit pass.
    pub pass: u32,
    /// Its identity: what it wrote is named by it.
    pub task_id: String,
    /// True when an earlier attempt had completed it: nothing ran.
    pub resumed: bool,
    /// The objects its output consists of (parts, quarantine parts; a
    /// merge's model and report), whether this attempt wrote them or an
    /// earlier one did; not its task record.
    pub objects: Vec<WrittenObject>,
    /// Rows read.
    pub rows_in: u64,
    /// Rows written to its part.
    pub rows_out: u64,
    /// Rows written to its quarantine part.
    pub rows_quarantined: u64,
    /// Bytes read from storage.
    pub bytes_read: u64,
    /// Bytes this attempt wrote (0 when it resumed).
    pub bytes_written: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Where its task record is: for a fit task, its partial state; for a
    /// merge, the state the next pass starts from or the finished fit.
    pub record: String,
    /// For a merge: what it decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit: Option<FitStep>,
    /// When it started, milliseconds since the Unix epoch.
    #[serde(default)]
    pub started_ms: u64,
}

impl TaskOutcome {
    fn new(stage: &PreparedStage, task: TaskKind, pass: u32, task_id: &str) -> TaskOutcome {
        TaskOutcome {
            format: TASK_FORMAT,
            stage: stage.stage.name.clone(),
            task,
            pass,
            task_id: task_id.to_string(),
            resumed: false,
            objects: Vec::new(),
            rows_in: 0,
            rows_out: 0,
            rows_quarantined: 0,
            bytes_read: 0,
            bytes_written: 0,
            seconds: 0.0,
            record: stage.output.task_record(task_id).url().to_string(),
            fit: None,
            started_ms: 0,
        }
    }

    fn wrote(&mut self, part: &Part) {
        self.objects.push(WrittenObject::of(part));
        self.bytes_written += part.bytes;
    }
}

/// Run `task` of `stage` for fit pass `pass`.
pub(crate) fn run(stage: &PreparedStage, task: TaskKind, pass: u32) -> Result<TaskOutcome, TaskFailure> {
    let started = Instant::now();
    let started_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let (fits, transforms) = (stage.fits(), stage.transforms());
    let ran = match task {
        TaskKind::Fit(i) if fits && i < stage.fit_tasks() => fit_task(stage, i, pass),
        TaskKind::Combine { level, group }
            if fits
                && level >= 1
                && (level as usize) < stage.merge_levels().len()
                && group < stage.merge_levels()[level as usize] =>
        {
            combine_task(stage, pass, level, group)
        }
        TaskKind::Merge if fits => merge_task(stage, pass),
        TaskKind::Transform(i) if transforms && i < stage.partitions.len() => transform_task(stage, i),
        _ => {
            return Err(TaskFailure::NoSuchTask(format!(
                "stage {:?} ({}{}, {} partitions) has no task {task}",
                stage.stage.name,
                stage.stage.kind,
                if stage.applied.is_some() { ", applying a model" } else { "" },
                stage.partitions.len()
            )));
        }
    };
    let mut outcome = match ran {
        // The records it needs were cleaned up because an identical run (or
        // another attempt of this one) committed the stage: a late attempt,
        // with nothing left to do.
        Err(TaskFailure::NotReady(_)) if stage.committed()? => {
            let mut outcome = TaskOutcome::new(stage, task, pass, "");
            outcome.resumed = true;
            outcome
        }
        other => other?,
    };
    outcome.seconds = started.elapsed().as_secs_f64();
    outcome.started_ms = started_ms;
    Ok(outcome)
}

/// Record that task `task_id` completed, unless its stage is committed
/// already (a late attempt, e.g. one stopped and resumed after its backup
/// won): then it leaves nothing behind that the commit's clean-up, done
/// already, would not find.
fn write_record(
    stage: &PreparedStage,
    deadline: &crate::stage::Deadline,
    task_id: &str,
    record: &TaskRecord,
    payload: &[u8],
) -> Result<(), TaskFailure> {
    if stage.committed()? {
        return Ok(());
    }
    stage.block(deadline, commit::write_task(&stage.output, task_id, record, payload))
}

/// The state fit pass `pass` starts from: none for the first pass, else
/// what the previous pass's merge carried.
fn carry(stage: &PreparedStage, pass: u32) -> Result<Option<bytes::Bytes>, TaskFailure> {
    if pass == 0 {
        return Ok(None);
    }
    match stage.exec.io.block_on(commit::read_task(&stage.output, &stage.merge_id(pass - 1)))? {
        Some((TaskRecord::Merge { model: None, .. }, carried)) => Ok(Some(carried)),
        Some(_) => Err(TaskFailure::NoSuchTask(format!(
            "fit pass {pass} of stage {:?}: pass {} finished the fit, so there is no pass {pass}",
            stage.stage.name,
            pass - 1
        ))),
        None => Err(TaskFailure::NotReady(format!(
            "fit pass {pass} of stage {:?} starts from the merge of pass {}, which has not run",
            stage.stage.name,
            pass - 1
        ))),
    }
}

/// Fold the partitions of fit task `group` into a partial state for `pass`.
fn fit_task(stage: &PreparedStage, group: usize, pass: u32) -> Result<TaskOutcome, TaskFailure> {
    let carry = carry(stage, pass)?;
    let task_id = stage.fit_id(group, pass, &PreparedStage::carry_id(carry.as_deref()));
    let mut outcome = TaskOutcome::new(stage, TaskKind::Fit(group), pass, &task_id);
    let io = &stage.exec.io;
    if let Some((TaskRecord::Fit { rows, .. }, _)) = io.block_on(commit::read_task(&stage.output, &task_id))? {
        outcome.resumed = true;
        outcome.rows_in = rows;
        return Ok(outcome);
    }
    let deadline = stage.wall_deadline();
    let mut inst = stage.instantiate(format!("{}[fit {group}]", stage.stage.name), &task_id)?;
    inst.fit_open(&stage.fit_task_info(group, pass), carry.as_deref())?;
    // Records that do not parse go to the quarantine of the transform
    // tasks; a stage without them (an aggregator, a fit-only estimator)
    // must not lose them.
    let quarantines = stage.transforms();
    // From the second pass on, a fit that reads its input again is likely
    // to go on reading it: keep it. A fit of one pass, and the transform
    // after it, stream.
    let (mut rows, mut bytes) = (0, 0);
    let mut joined = Joiner::new(stage.stage.limits.batch_rows);
    for index in stage.fit_group(group) {
        let read = stage.each_batch(index, pass >= 1, &deadline, |chunk| match chunk {
            Chunk::Rows(batch) => joined.push(batch, |b| Ok(inst.fit_batch(b)?)),
            Chunk::Quarantined(rows) if !quarantines => Err(TaskFailure::Storage(StorageError::Text {
                url: stage.source(index),
                reason: format!(
                    "{} records do not parse, and stage {:?} writes no rows, so no quarantine\n  hint: read the file with a transformer stage (e.g. passthrough) and fit on its output",
                    rows.num_rows(),
                    stage.stage.name
                ),
            })),
            Chunk::Quarantined(_) => Ok(()),
        })?;
        rows += read.rows;
        bytes += read.bytes;
    }
    joined.flush(|b| Ok(inst.fit_batch(b)?))?;
    let state = inst.fit_close()?;
    write_record(stage, &deadline, &task_id, &TaskRecord::Fit { pass, rows }, &state)?;
    outcome.rows_in = rows;
    outcome.bytes_read = bytes;
    Ok(outcome)
}

/// The batches of a fit task's partitions joined into batches of up to
/// `batch_rows` rows (fewer for a wide table, as read), so that a fit's
/// calls, and the kernels they make, do not follow the row-group size: 29
/// row groups of 62 rows are one call, not 29. Batches of at least half
/// that size pass as they are; a batch whose schema differs from the
/// rows held (another file) ends the joined batch first.
struct Joiner {
    batch_rows: usize,
    held: Option<BatchCoalescer>,
}

impl Joiner {
    fn new(batch_rows: usize) -> Self {
        Joiner { batch_rows, held: None }
    }

    fn push(
        &mut self,
        batch: RecordBatch,
        mut each: impl FnMut(RecordBatch) -> Result<(), TaskFailure>,
    ) -> Result<(), TaskFailure> {
        if self.held.as_ref().is_some_and(|h| h.schema() != batch.schema()) {
            self.flush(&mut each)?;
        }
        // (Counted in leaf columns, as the reader counts them.)
        let leaves = batch.schema().fields().iter().map(|f| leaf_columns(f.data_type())).sum();
        let rows = wasmpipe_storage::rows_for_width(self.batch_rows, leaves);
        let held = self.held.get_or_insert_with(|| {
            BatchCoalescer::new(batch.schema(), rows).with_biggest_coalesce_batch_size(Some(rows / 2))
        });
        held.push_batch(batch).map_err(|e| TaskFailure::Internal(format!("joining batches: {e}")))?;
        while let Some(b) = held.next_completed_batch() {
            each(b)?;
        }
        Ok(())
    }

    fn flush(&mut self, mut each: impl FnMut(RecordBatch) -> Result<(), TaskFailure>) -> Result<(), TaskFailure> {
        if let Some(mut held) = self.held.take() {
            held.finish_buffered_batch().map_err(|e| TaskFailure::Internal(format!("joining batches: {e}")))?;
            while let Some(b) = held.next_completed_batch() {
                each(b)?;
            }
        }
        Ok(())
    }
}

/// The leaf columns a value of `t` is stored as.
fn leaf_columns(t: &arrow::datatypes::DataType) -> usize {
    use arrow::datatypes::DataType;
    match t {
        DataType::Struct(fields) => fields.iter().map(|f| leaf_columns(f.data_type())).sum::<usize>().max(1),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) | DataType::Map(f, _) => {
            leaf_columns(f.data_type())
        }
        _ => 1,
    }
}

/// Merge the partial states of `pass` in partition order and finalize
/// them: the model (written, with the report, beside the output) or the
/// state the next pass starts from.
fn merge_task(stage: &PreparedStage, pass: u32) -> Result<TaskOutcome, TaskFailure> {
    let task_id = stage.merge_id(pass);
    let mut outcome = TaskOutcome::new(stage, TaskKind::Merge, pass, &task_id);
    let io = &stage.exec.io;
    if let Some((TaskRecord::Merge { rows, model, .. }, _)) = io.block_on(commit::read_task(&stage.output, &task_id))? {
        outcome.resumed = true;
        outcome.rows_in = rows;
        outcome.fit = Some(model.map_or(FitStep::NextPass, |m| FitStep::Done { model: m.sha256 }));
        return Ok(outcome);
    }
    let carry = carry(stage, pass)?;
    let carry_id = PreparedStage::carry_id(carry.as_deref());
    let top = stage.merge_levels().len() as u32 - 1;
    let deadline = stage.wall_deadline();
    let mut inst = stage.instantiate(format!("{}[merge]", stage.stage.name), &task_id)?;
    let items = 0..stage.merge_levels()[top as usize];
    let (state, rows) = fold_states(stage, &mut inst, pass, &carry_id, top, items, "the merge")?;
    outcome.rows_in = rows;
    let finished = inst.finalize(&state, pass)?;
    let record = match finished {
        FitOutcome::NextPass(next) => {
            if pass + 1 >= stage.stage.limits.max_passes {
                return Err(TaskFailure::TooManyPasses { passes: stage.stage.limits.max_passes });
            }
            outcome.fit = Some(FitStep::NextPass);
            let record = TaskRecord::Merge { pass, rows, model: None, report: None, report_json: None };
            write_record(stage, &deadline, &task_id, &record, &next)?;
            return Ok(outcome);
        }
        FitOutcome::Done(bytes) => {
            let sha = content_sha256(&bytes);
            let model = Model {
                name: OutputLayout::model(&sha),
                sha256: sha.clone(),
                bytes: bytes.len() as u64,
                passes: pass + 1,
            };
            let published = inst.take_report();
            let mut objects = vec![model.name.clone()];
            if let Some(p) = &published {
                let (json, table) = OutputLayout::report(&p.json);
                objects.extend([json, table]);
            }
            let journal = Journal { run_id: task_id.clone(), objects };
            stage.block(&deadline, commit::write_journal(&stage.output, &journal))?;
            let report = match &published {
                Some(p) => {
                    let (files, written) = stage.block(&deadline, write_report(&stage.output, p))?;
                    outcome.objects.extend(written.iter().cloned());
                    outcome.bytes_written += written.iter().map(|o| o.bytes).sum::<u64>();
                    Some(files)
                }
                None => None,
            };
            stage.block(&deadline, stage.output.child(&model.name).put(bytes))?;
            outcome.objects.push(WrittenObject {
                name: model.name.clone(),
                bytes: model.bytes,
                blake3: None,
                sha256: Some(sha.clone()),
            });
            outcome.bytes_written += model.bytes;
            outcome.fit = Some(FitStep::Done { model: sha });
            TaskRecord::Merge { pass, rows, model: Some(model), report, report_json: published.map(|p| p.json) }
        }
    };
    // The finished fit, where transform tasks and the commit find it.
    write_record(stage, &deadline, &stage.fit_result_id(), &record, &[])?;
    write_record(stage, &deadline, &task_id, &record, &[])?;
    Ok(outcome)
}

/// Merge the partial states `items` of `level` of pass `pass`'s merge
/// tree (level 0: the fit tasks' states) in order, pairwise from the left,
/// with the rows they folded. Each state is read when its turn comes, so
/// the host holds one besides the merged one, however large a stage makes
/// its states. `who` names the task that needs them, in the error when one
/// is missing.
fn fold_states(
    stage: &PreparedStage,
    inst: &mut StageInstance,
    pass: u32,
    carry_id: &str,
    level: u32,
    items: std::ops::Range<usize>,
    who: &str,
) -> Result<(Vec<u8>, u64), TaskFailure> {
    let io = &stage.exec.io;
    let mut merged: Option<Vec<u8>> = None;
    let mut rows = 0;
    for index in items {
        let id = match level {
            0 => stage.fit_id(index, pass, carry_id),
            _ => stage.combine_id(pass, carry_id, level, index),
        };
        match io.block_on(commit::read_task(&stage.output, &id))? {
            Some((TaskRecord::Fit { rows: r, .. } | TaskRecord::Combine { rows: r, .. }, state)) => {
                rows += r;
                merged = Some(match merged {
                    None => state.to_vec(),
                    Some(left) => inst.merge(&left, &state)?,
                });
            }
            _ => {
                let task = if level == 0 { format!("fit:{index}") } else { format!("combine:{level}:{index}") };
                return Err(TaskFailure::NotReady(format!(
                    "{who} of fit pass {pass} of stage {:?} needs task {task} of that pass, which has not run",
                    stage.stage.name
                )));
            }
        }
    }
    Ok((merged.expect("a merge has at least one state"), rows))
}

/// Merge group `group` of level `level` of pass `pass`'s merge tree: the
/// states `group * MERGE_FAN_IN ..` of the level below.
fn combine_task(stage: &PreparedStage, pass: u32, level: u32, group: usize) -> Result<TaskOutcome, TaskFailure> {
    let carry = carry(stage, pass)?;
    let carry_id = PreparedStage::carry_id(carry.as_deref());
    let task_id = stage.combine_id(pass, &carry_id, level, group);
    let mut outcome = TaskOutcome::new(stage, TaskKind::Combine { level, group }, pass, &task_id);
    let io = &stage.exec.io;
    if let Some((TaskRecord::Combine { rows, .. }, _)) = io.block_on(commit::read_task(&stage.output, &task_id))? {
        outcome.resumed = true;
        outcome.rows_in = rows;
        return Ok(outcome);
    }
    let below = stage.merge_levels()[level as usize - 1];
    let items = group * MERGE_FAN_IN..((group + 1) * MERGE_FAN_IN).min(below);
    let deadline = stage.wall_deadline();
    let mut inst = stage.instantiate(format!("{}[combine {level}:{group}]", stage.stage.name), &task_id)?;
    let (state, rows) = fold_states(stage, &mut inst, pass, &carry_id, level - 1, items, "a combine")?;
    let record = TaskRecord::Combine { pass, level, rows };
    write_record(stage, &deadline, &task_id, &record, &state)?;
    outcome.rows_in = rows;
    Ok(outcome)
}

/// The finished fit of `stage`: its merge record.
pub(crate) fn fit_result(stage: &PreparedStage) -> Result<Option<TaskRecord>, StorageError> {
    Ok(stage.exec.io.block_on(commit::read_task(&stage.output, &stage.fit_result_id()))?.map(|(r, _)| r))
}

/// The model `stage`'s transform tasks apply, with its hash: the one it
/// applies, the one it fitted, or none (a transformer).
fn model_of(stage: &PreparedStage) -> Result<(Option<Vec<u8>>, String), TaskFailure> {
    if let Some(applied) = &stage.applied {
        return Ok((Some(applied.bytes.clone()), applied.sha256.clone()));
    }
    if stage.stage.kind != StageKind::Estimator {
        return Ok((None, String::new()));
    }
    let Some(TaskRecord::Merge { model: Some(model), .. }) = fit_result(stage)? else {
        return Err(TaskFailure::NotReady(format!(
            "the transform tasks of stage {:?} apply the model its fit finishes, and the fit has not finished",
            stage.stage.name
        )));
    };
    let bytes = stage.exec.io.block_on(stage.output.child(&model.name).get_verified(&model.sha256))?;
    Ok((Some(bytes.to_vec()), model.sha256))
}

/// The identity of transform task `index` applying the model `model_id`.
pub(crate) fn transform_id(stage: &PreparedStage, index: usize, model_id: &str) -> String {
    stage.task_id(index, model_id)
}

/// Partition `index` through the stage into its part and quarantine part.
fn transform_task(stage: &PreparedStage, index: usize) -> Result<TaskOutcome, TaskFailure> {
    let (model, model_id) = model_of(stage)?;
    let task_id = transform_id(stage, index, &model_id);
    let mut outcome = TaskOutcome::new(stage, TaskKind::Transform(index), 0, &task_id);
    if let Some(TaskRecord::Transform { part, quarantine, rows_in, .. }) = completed_transform(stage, &task_id)? {
        outcome.resumed = true;
        outcome.rows_in = rows_in;
        outcome.objects = part.iter().chain(&quarantine).map(WrittenObject::of).collect();
        outcome.rows_out = part.as_ref().map_or(0, |p| p.rows);
        outcome.rows_quarantined = quarantine.as_ref().map_or(0, |p| p.rows);
        return Ok(outcome);
    }
    let deadline = stage.wall_deadline();
    let name = OutputLayout::part(index, &task_id);
    let quarantine_name = OutputLayout::quarantine_part(index, &task_id);
    if stage.committed()? {
        // A late attempt: the stage committed without it.
        outcome.resumed = true;
        return Ok(outcome);
    }
    let journal = Journal { run_id: task_id.clone(), objects: vec![quarantine_name.clone(), name.clone()] };
    stage.block(&deadline, commit::write_journal(&stage.output, &journal))?;
    let mut inst = stage.instantiate(format!("{}[{index}]", stage.stage.name), &task_id)?;
    inst.open(&stage.task_info(index, 0), model.as_deref())?;
    let row_group_rows = stage.stage.limits.row_group_rows;
    let mut writer = PartWriter::new(&stage.output, name, task_id.clone(), row_group_rows);
    // Rows per named output, for a stage that has them.
    let mut routed = std::collections::BTreeMap::new();
    let mut rejected = PartWriter::new(&stage.output, quarantine_name, task_id.clone(), row_group_rows);
    let source = stage.source(index);
    // Rows the stage set aside during its last call: rendering and
    // writing them is work done for the stage, charged to its time.
    let set_aside = |inst: &mut StageInstance, rejected: &mut PartWriter| -> Result<(), TaskFailure> {
        for q in inst.take_quarantined() {
            let started = Instant::now();
            let rows = quarantine::of_rows(&source, &q.rows, &q.reasons)
                .map_err(|e| TaskFailure::Internal(format!("rendering quarantined rows: {e}")))?;
            // (Rendering is the stage's; the store's latency is not.)
            inst.charge(started.elapsed())?;
            stage.block(&deadline, rejected.write(&rows))?;
        }
        Ok(())
    };
    let read = stage.each_batch(index, false, &deadline, |chunk| {
        match chunk {
            Chunk::Rows(batch) => {
                let out = inst.transform(batch)?;
                set_aside(&mut inst, &mut rejected)?;
                if let Some(out) = out {
                    check_routes(stage, &out, &mut routed)?;
                    stage.block(&deadline, writer.write(&out))?;
                }
            }
            Chunk::Quarantined(rows) => stage.block(&deadline, rejected.write(&rows))?,
        }
        Ok(())
    })?;
    let out = inst.close()?;
    set_aside(&mut inst, &mut rejected)?;
    if let Some(out) = out {
        check_routes(stage, &out, &mut routed)?;
        stage.block(&deadline, writer.write(&out))?;
    }
    let schema =
        writer.schema().map(|s| s.fields().iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect());
    let mut part = stage.block(&deadline, writer.finish())?;
    if let Some(p) = &mut part {
        p.outputs = routed;
    }
    let quarantine = stage.block(&deadline, rejected.finish())?;
    for p in part.iter().chain(&quarantine) {
        outcome.wrote(p);
    }
    let rows_in = read.rows;
    outcome.rows_in = rows_in;
    outcome.bytes_read = read.bytes;
    outcome.rows_out = part.as_ref().map_or(0, |p| p.rows);
    outcome.rows_quarantined = quarantine.as_ref().map_or(0, |p| p.rows);
    let record = TaskRecord::Transform { part, quarantine, rows_in, schema };
    write_record(stage, &deadline, &task_id, &record, &[])?;
    Ok(outcome)
}

/// A stage with named outputs routes every row it writes to one of them:
/// its route column names one on every row. Counts them into `routed`.
fn check_routes(
    stage: &PreparedStage,
    batch: &RecordBatch,
    routed: &mut std::collections::BTreeMap<String, u64>,
) -> Result<(), TaskFailure> {
    let Some(outputs) = &stage.stage.outputs else { return Ok(()) };
    let Some(column) = batch.column_by_name(&outputs.route) else {
        return Err(TaskFailure::Route(format!(
            "has named outputs routed by column {:?}, but writes no such column",
            outputs.route
        )));
    };
    // Text only: casting another type to text would be host work (and
    // memory, 9 bytes a boolean) the stage chose without paying for it.
    use arrow::datatypes::DataType::{LargeUtf8, Utf8, Utf8View};
    if !matches!(column.data_type(), Utf8 | LargeUtf8 | Utf8View) {
        return Err(TaskFailure::Route(format!(
            "its route column {:?} is {}, not text",
            outputs.route,
            column.data_type()
        )));
    }
    let values = arrow::compute::cast(column, &Utf8)
        .map_err(|e| TaskFailure::Route(format!("its route column {:?} is not text ({e})", outputs.route)))?;
    let mut counts = vec![0u64; outputs.names.len()];
    let stray =
        values.as_string::<i32>().iter().find(|v| match v.and_then(|v| outputs.names.iter().position(|n| n == v)) {
            Some(i) => {
                counts[i] += 1;
                false
            }
            None => true,
        });
    match stray {
        None => {
            for (name, n) in outputs.names.iter().zip(counts) {
                *routed.entry(name.clone()).or_insert(0) += n;
            }
            Ok(())
        }
        Some(value) => Err(TaskFailure::Route(format!(
            "routes a row to {}, which is not one of its outputs ({})",
            value.map_or("no output (a null)".into(), |v| format!("output {v:?}")),
            outputs.names.join(", ")
        ))),
    }
}

/// The record of a transform task an earlier attempt completed, if its
/// record and its parts are all still there.
pub(crate) fn completed_transform(stage: &PreparedStage, task_id: &str) -> Result<Option<TaskRecord>, StorageError> {
    use object_store::ObjectStoreExt;
    let io = &stage.exec.io;
    let Some((record @ TaskRecord::Transform { .. }, _)) = io.block_on(commit::read_task(&stage.output, task_id))?
    else {
        return Ok(None);
    };
    let TaskRecord::Transform { part, quarantine, .. } = &record else { unreachable!() };
    for part in part.iter().chain(quarantine) {
        let at = stage.output.child(&part.name);
        match io.block_on(at.store().head(at.path())) {
            Ok(meta) if meta.size == part.bytes => {}
            _ => return Ok(None),
        }
    }
    Ok(Some(record))
}

/// Write a stage's published report beside its output, named by the hash
/// of its JSON; returns the files and what was written.
async fn write_report(
    output: &wasmpipe_storage::Location,
    published: &wasmpipe_runtime::Report,
) -> Result<(ReportFiles, Vec<WrittenObject>), StorageError> {
    let (json, table_name) = OutputLayout::report(&published.json);
    output.child(&json).put(published.json.clone().into_bytes()).await?;
    let mut written = vec![WrittenObject {
        name: json.clone(),
        bytes: published.json.len() as u64,
        blake3: None,
        sha256: Some(content_sha256(published.json.as_bytes())),
    }];
    let mut table = None;
    if let Some(rows) = &published.table {
        let mut writer = PartWriter::new(output, table_name.clone(), String::new(), rows.num_rows().max(1));
        writer.write(rows).await?;
        if let Some(part) = writer.finish().await? {
            written.push(WrittenObject::of(&part));
            table = Some(table_name);
        }
    }
    Ok((ReportFiles { json, table }, written))
}

/// Refuse a spec whose plan is not the one loaded.
pub(crate) fn check_spec_plan(spec: &TaskSpec, hash: &str) -> Result<(), RunError> {
    if !spec.plan_sha256.is_empty() && spec.plan_sha256 != hash {
        return Err(RunError::Plan {
            url: spec.plan.clone(),
            reason: format!("the task names plan {}, but the plan there hashes to {hash}", spec.plan_sha256),
        });
    }
    Ok(())
}
