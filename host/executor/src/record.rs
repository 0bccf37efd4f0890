//! The run record: what a run did, kept in the store at
//! `<store>/_runs/<run id>/run.json` after every run, a failed one
//! included. Versioned (`format`); documented in docs/run-record.md.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use wasmpipe_storage::{Location, StorageError};

use crate::{LockedPipeline, StageReport, TaskKind, TaskOutcome};

/// The version of [`RunRecord`]'s layout.
pub const RUN_FORMAT: u32 = 1;

/// Where run records are kept, below the store.
pub const RUNS_DIR: &str = "_runs";

/// Most warning lines a record keeps.
pub(crate) const MAX_WARNINGS: usize = 200;

/// What a run did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Always [`RUN_FORMAT`].
    pub format: u32,
    /// The run's id (also in every commit it made).
    pub run_id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// The SHA-256 of the plan it ran.
    pub plan_sha256: String,
    /// `local`, `process`...
    pub engine: String,
    /// Where stages without an `output` wrote.
    pub store: String,
    /// RFC 3339, UTC.
    pub started: String,
    /// RFC 3339, UTC.
    pub ended: String,
    /// Wall time.
    pub seconds: f64,
    /// `succeeded` or `failed`.
    pub status: String,
    /// The stages that ran, in order, and the one that failed.
    pub stages: Vec<StageRecord>,
    /// Warnings and errors the stages logged, in order (at most 200).
    pub warnings: Vec<LogLine>,
    /// Why the run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One stage of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    /// The stage's name.
    pub name: String,
    /// `transformer`, `estimator` or `aggregator`.
    pub kind: String,
    /// `ran`, `committed_before` (an identical run had committed it; that
    /// run's id in `committed_by`) or `failed`.
    pub status: String,
    /// The run that committed it, when an identical one had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_by: Option<String>,
    /// SHA-256 of its component.
    pub component: String,
    /// SHA-256 of its configuration (the JSON document the stage receives,
    /// column selectors resolved).
    #[serde(default)]
    pub config_sha256: String,
    /// What each column selector of its configuration selected, by key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selected: BTreeMap<String, Vec<String>>,
    /// Rows per named output, for a stage that has them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, u64>,
    /// What it read: `stage:NAME` for an earlier stage's output, else the
    /// location's URL.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Fit passes (0 when it does not fit).
    pub passes: u32,
    /// Rows read by its transform tasks (or its last fit pass).
    pub rows_in: u64,
    /// Rows committed.
    pub rows_out: u64,
    /// Rows set aside in its quarantine.
    pub rows_quarantined: u64,
    /// Bytes read from storage.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Wall time.
    pub seconds: f64,
    /// Its output location.
    pub output: String,
    /// SHA-256 of the model (or result) it fitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// SHA-256 of the model it applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_model: Option<String>,
    /// The report it published (metrics, validation results...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
    /// Its tasks, in the order they finished round by round.
    pub tasks: Vec<TaskEntry>,
}

/// One task of a stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskEntry {
    /// As `wasmpipe task --task` names it: `fit:3`, `merge`, `transform:3`...
    pub task: String,
    /// Its fit pass (0 outside fitting).
    pub pass: u32,
    /// The partition, for a transform task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<usize>,
    /// When it started, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// Wall time.
    pub seconds: f64,
    /// Rows read.
    pub rows_in: u64,
    /// Rows written to its part.
    pub rows_out: u64,
    /// Rows written to its quarantine part.
    pub rows_quarantined: u64,
    /// Bytes read from storage.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// `done`, or `resumed` (an earlier attempt had done it).
    pub outcome: String,
}

/// What an outside engine (the Ray driver) saw of a run it drove, for
/// `wasmpipe record` to keep as the run's record
/// ([`crate::Executor::record_run`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunLog {
    /// The run's id, as the engine gave it to `wasmpipe commit`.
    pub run_id: String,
    /// The engine, e.g. `ray`.
    pub engine: String,
    /// When the run started, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// When it ended (default: when `wasmpipe record` runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    /// The stages committed, in the plan's order.
    pub stages: Vec<StageLog>,
    /// What the tasks of the stage that failed did (the stage after the
    /// last committed one).
    #[serde(default)]
    pub running: Vec<TaskOutcome>,
    /// Warnings and errors the stages logged.
    #[serde(default)]
    pub warnings: Vec<LogLine>,
    /// Why the run failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// One committed stage of a [`RunLog`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageLog {
    /// The stage.
    pub name: String,
    /// Its wall time, seconds.
    pub seconds: f64,
    /// What `wasmpipe task` printed for each of its tasks, round by round.
    #[serde(default)]
    pub outcomes: Vec<TaskOutcome>,
}

/// One attempt at one task of a run, kept by `wasmpipe task --run-id` under
/// `<store>/_runs/<run id>/tasks/<stage>/` for engines without a driver
/// process to see what each task did (Kubernetes): `wasmpipe record
/// --collect` turns a run's attempts into its record
/// ([`crate::Executor::collect_run`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskAttempt {
    /// Always [`ATTEMPT_FORMAT`].
    pub format: u32,
    /// The SHA-256 of the plan it ran: attempts of another plan kept under
    /// the same run id are not this run's.
    pub plan_sha256: String,
    /// The stage.
    pub stage: String,
    /// The task, as `wasmpipe task --task` names it.
    pub task: String,
    /// Its fit pass.
    pub pass: u32,
    /// When the attempt started, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// When it ended.
    pub ended_ms: u64,
    /// What it did, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<TaskOutcome>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The exit code `wasmpipe task` gave (0 when it succeeded).
    pub exit_code: u8,
    /// Warnings and errors the stage logged during the attempt.
    #[serde(default)]
    pub warnings: Vec<LogLine>,
}

/// The version of [`TaskAttempt`]'s layout.
pub const ATTEMPT_FORMAT: u32 = 1;

/// Where a run's task attempts are kept, below its directory.
const ATTEMPTS_DIR: &str = "tasks";

/// Most bytes of an attempt read back (its error and warnings are cut to
/// [`MAX_MESSAGE`] when kept); a larger object is named, not read.
const MAX_ATTEMPT_BYTES: u64 = 1 << 20;

/// Most bytes of one message (an error, a warning) an attempt keeps.
pub(crate) const MAX_MESSAGE: usize = 4096;

/// `text` cut to at most [`MAX_MESSAGE`] bytes, on a character boundary.
pub(crate) fn cut(text: String) -> String {
    if text.len() > MAX_MESSAGE { wasmpipe_runtime::cut(&text, MAX_MESSAGE) } else { text }
}

/// Why `attempt`, kept at `<stage folder>/...`, cannot be an attempt of a
/// run that started no earlier than 2020: its folder, its outcome and
/// itself must name one stage, and its times and counts be ones a task can
/// have.
fn implausible(attempt: &TaskAttempt, folder: &str) -> Option<String> {
    const EARLIEST_MS: u64 = 1_577_836_800_000; // 2020-01-01
    const MAX_COUNT: u64 = 1 << 53;
    let now_ms = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    if attempt.stage != folder {
        return Some(format!("it names stage {:?} but is kept under {folder:?}", attempt.stage));
    }
    let day = 24 * 3_600_000;
    if !(EARLIEST_MS..=now_ms + day).contains(&attempt.started_ms) || attempt.ended_ms < attempt.started_ms {
        return Some(format!(
            "its times ({} to {} ms since the Unix epoch) are not ones a task of this run can have",
            attempt.started_ms, attempt.ended_ms
        ));
    }
    if let Some(o) = &attempt.outcome {
        let counts = [o.rows_in, o.rows_out, o.rows_quarantined, o.bytes_read, o.bytes_written];
        if o.stage != attempt.stage || o.task.to_string() != attempt.task || o.pass != attempt.pass {
            return Some(format!("its outcome is of {} {} pass {}, not its own task", o.stage, o.task, o.pass));
        }
        if !(o.seconds.is_finite() && (0.0..1e6).contains(&o.seconds)) || counts.iter().any(|&c| c > MAX_COUNT) {
            return Some("its outcome's time or counts are not ones a task can have".into());
        }
    }
    None
}

/// Keep `attempt` of run `run_id` below the store `store`; `nonce` tells
/// attempts of one task apart.
pub(crate) async fn write_attempt(
    store: &Location,
    run_id: &str,
    attempt: &TaskAttempt,
    nonce: &str,
) -> Result<(), StorageError> {
    let name = format!("{}.{}.{}-{nonce}.json", attempt.pass, attempt.task.replace(':', "."), attempt.started_ms);
    let at = store.child(RUNS_DIR).child(run_id).child(ATTEMPTS_DIR).child(&attempt.stage).child(&name);
    let json = serde_json::to_vec_pretty(attempt).expect("a task attempt serializes");
    at.put(bytes::Bytes::from(json)).await
}

/// The task attempts kept for run `run_id` below the store `store`, in the
/// order they started, and what was found there that is not an attempt
/// (its URL and why), to be named in the record rather than dropped.
pub(crate) async fn attempts(store: &Location, run_id: &str) -> Result<(Vec<TaskAttempt>, Vec<String>), StorageError> {
    use futures::TryStreamExt;
    let dir = store.child(RUNS_DIR).child(run_id).child(ATTEMPTS_DIR);
    let metas: Vec<_> = match dir.store().list(Some(dir.path())).try_collect().await {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(dir.error(e)),
    };
    let (mut kept, mut unreadable) = (Vec::new(), Vec::new());
    for meta in metas {
        // `<stage>/<file>` below the run's attempts.
        let folder = meta.location.parts().nth(dir.path().parts().count()).map(|p| p.as_ref().to_string());
        let size = meta.size;
        let at = dir.at(meta.location);
        if size > MAX_ATTEMPT_BYTES {
            unreadable
                .push(format!("{} is {size} bytes, larger than any task attempt; left out of the record", at.url()));
            continue;
        }
        if let Some((bytes, _)) = at.get_opt().await? {
            match serde_json::from_slice::<TaskAttempt>(&bytes) {
                Ok(attempt) => match implausible(&attempt, folder.as_deref().unwrap_or_default()) {
                    None => kept.push(attempt),
                    Some(why) => unreadable.push(format!("{}: {why}; left out of the record", at.url())),
                },
                Err(e) => unreadable.push(format!("{} is not a task attempt ({e}); left out of the record", at.url())),
            }
        }
    }
    kept.sort_by(|a, b| a.started_ms.cmp(&b.started_ms).then_with(|| a.task.cmp(&b.task)));
    Ok((kept, unreadable))
}

/// A warning or error a stage logged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    /// `warn` or `error`.
    pub level: String,
    /// The stage and task (`fit[merge]`).
    pub label: String,
    /// What it said.
    pub message: String,
}

impl TaskEntry {
    fn of(o: &TaskOutcome) -> TaskEntry {
        TaskEntry {
            task: o.task.to_string(),
            pass: o.pass,
            partition: match o.task {
                TaskKind::Transform(p) => Some(p),
                _ => None,
            },
            started_ms: o.started_ms,
            seconds: o.seconds,
            rows_in: o.rows_in,
            rows_out: o.rows_out,
            rows_quarantined: o.rows_quarantined,
            bytes_read: o.bytes_read,
            bytes_written: o.bytes_written,
            outcome: if o.resumed { "resumed" } else { "done" }.into(),
        }
    }
}

impl StageRecord {
    fn of(r: &StageReport, plan: &LockedPipeline) -> StageRecord {
        let planned = plan.stages.iter().find(|s| s.name == r.name);
        StageRecord {
            name: r.name.clone(),
            kind: r.kind.to_string(),
            status: if r.committed_before.is_some() { "committed_before" } else { "ran" }.into(),
            committed_by: r.committed_before.clone(),
            component: r.component.clone(),
            config_sha256: r.config_sha256.clone(),
            selected: r.selected.clone(),
            outputs: r.outputs.clone(),
            inputs: planned.map(|s| inputs(&s.inputs)).unwrap_or_default(),
            passes: r.passes,
            rows_in: r.rows_in,
            rows_out: r.rows_out,
            rows_quarantined: r.rows_quarantined,
            bytes_read: r.bytes_read,
            bytes_written: r.bytes_written,
            seconds: r.wall.as_secs_f64(),
            output: r.output.clone(),
            model: r.model.as_ref().map(|m| m.sha256.clone()),
            applied_model: r.applied_model.clone(),
            report: r.report.as_deref().and_then(|j| serde_json::from_str(j).ok()),
            tasks: r.outcomes.iter().map(TaskEntry::of).collect(),
        }
    }
}

/// The SHA-256 of a stage's configuration, as its commit records it.
fn config_sha256(config: &str) -> String {
    crate::stage::content_sha256(config.as_bytes())
}

/// A stage's inputs as the record names them.
fn inputs(inputs: &[crate::InputRef]) -> Vec<String> {
    inputs.iter().map(ToString::to_string).collect()
}

/// RFC 3339 (UTC, milliseconds).
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// What the run whose stages reported `stages.0` did; `error` says how it
/// failed: the stage of `plan` after the last that reported is the one
/// that failed, and `stages.1` what its tasks had done, round by round.
pub(crate) fn of_run(
    run: (&str, &str, &str),
    plan: &LockedPipeline,
    times: (SystemTime, SystemTime),
    stages: (&[StageReport], &[TaskOutcome]),
    warnings: Vec<LogLine>,
    error: Option<String>,
) -> RunRecord {
    let (stages, running) = stages;
    let (run_id, engine, store) = run;
    let (started, ended) = times;
    let mut records: Vec<StageRecord> = stages.iter().map(|s| StageRecord::of(s, plan)).collect();
    if error.is_some()
        && let Some(failed) = plan.stages.get(stages.len())
    {
        records.push(StageRecord {
            name: failed.name.clone(),
            kind: failed.kind.to_string(),
            status: "failed".into(),
            committed_by: None,
            component: failed.component.sha256.clone(),
            config_sha256: config_sha256(&failed.config),
            selected: BTreeMap::new(),
            outputs: BTreeMap::new(),
            inputs: inputs(&failed.inputs),
            passes: 0,
            rows_in: 0,
            rows_out: 0,
            rows_quarantined: 0,
            bytes_read: 0,
            bytes_written: 0,
            seconds: 0.0,
            output: failed.output.url(store),
            model: None,
            applied_model: None,
            report: None,
            tasks: running.iter().map(TaskEntry::of).collect(),
        });
    }
    RunRecord {
        format: RUN_FORMAT,
        run_id: run_id.to_string(),
        pipeline: plan.pipeline.clone(),
        plan_sha256: plan.hash(),
        engine: engine.to_string(),
        store: store.to_string(),
        started: rfc3339(started),
        ended: rfc3339(ended),
        seconds: ended.duration_since(started).unwrap_or_default().as_secs_f64(),
        status: if error.is_some() { "failed" } else { "succeeded" }.into(),
        stages: records,
        warnings,
        error,
    }
}

/// Why `run_id` cannot name a run: a run id names a directory of the
/// store and is written into commits, so it is 1 to 128 ASCII letters,
/// digits, `-`, `_` and `.`, not starting with `.`.
pub fn check_run_id(run_id: &str) -> Result<(), String> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let first_fine = run_id.starts_with(|c: char| c.is_ascii_alphanumeric());
    if run_id.len() > 128 || !first_fine || !run_id.chars().all(fine) {
        return Err(format!(
            "{run_id:?} is not a run id: use 1 to 128 ASCII letters, digits, '-', '_' and '.', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Where the record of run `run_id` is kept below the store `store`.
pub fn location(store: &Location, run_id: &str) -> Location {
    store.child(RUNS_DIR).child(run_id).child("run.json")
}

/// Write `record` below the store `store`.
pub(crate) async fn write(store: &Location, record: &RunRecord) -> Result<(), StorageError> {
    let at = location(store, &record.run_id);
    let json = serde_json::to_vec_pretty(record).expect("a run record serializes");
    at.put(bytes::Bytes::from(json)).await
}

/// The run records below the store `store`, newest first. Records that do
/// not parse are skipped.
pub async fn list(store: &Location) -> Result<Vec<RunRecord>, StorageError> {
    use futures::TryStreamExt;
    let dir = store.child(RUNS_DIR);
    let metas: Vec<_> = match dir.store().list(Some(dir.path())).try_collect().await {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(dir.error(e)),
    };
    let mut runs = Vec::new();
    for meta in metas.into_iter().filter(|m| m.location.filename() == Some("run.json")) {
        if let Some((bytes, _)) = dir.at(meta.location).get_opt().await?
            && let Ok(record) = serde_json::from_slice::<RunRecord>(&bytes)
        {
            runs.push(record);
        }
    }
    runs.sort_by(|a, b| b.started.cmp(&a.started).then_with(|| b.run_id.cmp(&a.run_id)));
    Ok(runs)
}

/// The record of run `run_id` itself, if one is kept.
pub async fn find_exact(store: &Location, run_id: &str) -> Result<Option<RunRecord>, StorageError> {
    let at = location(store, run_id);
    match at.get_opt().await? {
        Some((bytes, _)) => serde_json::from_slice(&bytes).map(Some).map_err(|e| StorageError::CorruptCommit {
            url: at.url().into(),
            reason: format!("not a run record: {e}"),
        }),
        None => Ok(None),
    }
}

/// The record of run `run_id` (or of the one run whose id starts with it).
pub async fn find(store: &Location, run_id: &str) -> Result<Option<RunRecord>, StorageError> {
    if let Some(record) = find_exact(store, run_id).await? {
        return Ok(Some(record));
    }
    let mut matching: Vec<RunRecord> =
        list(store).await?.into_iter().filter(|r| r.run_id.starts_with(run_id)).collect();
    Ok(if matching.len() == 1 { matching.pop() } else { None })
}

#[cfg(test)]
mod tests {
    use super::check_run_id;

    #[test]
    fn run_ids_name_one_directory() {
        for fine in ["1764000000-1a2b3c4d", "nightly.2026-12-02", "a_b"] {
            assert_eq!(check_run_id(fine), Ok(()), "{fine}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "a b", "é", "-x", "_x", &"x".repeat(129)] {
            assert!(check_run_id(bad).is_err(), "{bad:?}");
        }
    }
}
