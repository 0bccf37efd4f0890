//! The commit protocol: how a stage's output becomes visible exactly once.
//!
//! * A task writes its part under a deterministic name derived from the
//!   task's identity (see `write::part_name`), so a retried or duplicated
//!   task rewrites the same object with the same bytes: never a duplicate.
//! * After its part is complete, the task writes a task record
//!   (`_wasmpipe_tasks/TASK.json`; fit tasks keep their partial state
//!   there). A rerun skips every task whose record exists and whose part is
//!   still there.
//! * When every task of a stage has succeeded, the executor writes
//!   `_wasmpipe_commit.json`, listing the parts (and the model, for
//!   estimators), with the identity of everything the output depends on.
//!   Readers read only what a commit lists, so a run that dies at any point
//!   leaves the previous commit (or none) in force; a rerun whose identity
//!   matches the commit skips the stage.
//! * Where the store honours conditional writes, the commit is written only
//!   if the record is unchanged since the run read it (`If-Match`, or
//!   `If-None-Match` when there was none), so of two different runs racing
//!   on one output, one fails cleanly instead of both landing. On stores
//!   that ignore the conditions (Garage), the protocol still holds for any
//!   number of identical runs; runs of different versions of a stage must
//!   not write one output at the same time (see `docs/commit-protocol.md`).
//! * After the commit lands, parts, quarantine parts, models and reports it
//!   does not list, and all task records, are deleted.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::{Location, StorageError};

/// Name of the commit record within a stage's output prefix.
pub const COMMIT_FILE: &str = "_wasmpipe_commit.json";

/// Identifies the record format.
pub const COMMIT_FORMAT: &str = "wasmpipe-commit/1";

/// One committed Parquet part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Object name relative to the output prefix.
    pub name: String,
    /// Rows in the part.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Identity of the task that wrote it.
    pub task: String,
}

/// The finalized bytes of a fit stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    /// Object name relative to the output prefix.
    pub name: String,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Fit passes it took.
    pub passes: u32,
}

/// The files of a stage's published report, relative to the output prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportFiles {
    /// The JSON document (`_report-HASH.json`).
    pub json: String,
    /// The report as rows (`_report-HASH.parquet`), when the stage gave them.
    pub table: Option<String>,
}

/// What a stage's output holds and where it came from (lineage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// Always [`COMMIT_FORMAT`].
    pub format: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Stage name.
    pub stage: String,
    /// The run that wrote it.
    pub run_id: String,
    /// SHA-256 of everything the output depends on: the component, its
    /// config and settings, and the identity of every input partition.
    #[serde(default)]
    pub identity: String,
    /// SHA-256 of the stage component.
    pub component: String,
    /// SHA-256 of the stage's config JSON.
    pub config: String,
    /// The inputs read: URL and, for committed upstream outputs, their
    /// commit's identity.
    pub inputs: Vec<String>,
    /// The committed parts, in task order.
    pub parts: Vec<Part>,
    /// The model or result, for fit stages.
    pub model: Option<Model>,
    /// SHA-256 of the model the stage applied instead of fitting one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_model: Option<String>,
    /// The quarantined rows' parts (under `_quarantine/`), in task order.
    #[serde(default)]
    pub quarantine: Vec<Part>,
    /// The stage's report, when it published one.
    #[serde(default)]
    pub report: Option<ReportFiles>,
    /// Total rows over all parts.
    pub rows: u64,
    /// Seconds since the Unix epoch when committed.
    pub committed_at: u64,
}

/// How report files' names start, within a stage's output prefix.
pub const REPORT_PREFIX: &str = "_report-";

/// Where task records live, within a stage's output prefix.
pub const TASKS_DIR: &str = "_wasmpipe_tasks";

/// Read the commit record at `output`, if there is one.
pub async fn read(output: &Location) -> Result<Option<CommitRecord>, StorageError> {
    Ok(read_versioned(output).await?.map(|(record, _)| record))
}

/// The commit record at `output` with its version (entity tag), to commit
/// over it conditionally.
pub async fn read_versioned(output: &Location) -> Result<Option<(CommitRecord, Option<String>)>, StorageError> {
    let at = output.child(COMMIT_FILE);
    let Some((bytes, e_tag)) = at.get_opt().await? else {
        return Ok(None);
    };
    let record: CommitRecord = serde_json::from_slice(&bytes)
        .map_err(|e| StorageError::CorruptCommit { url: at.url().into(), reason: e.to_string() })?;
    if record.format != COMMIT_FORMAT {
        return Err(StorageError::CorruptCommit {
            url: at.url().into(),
            reason: format!("format {:?}, expected {COMMIT_FORMAT:?}", record.format),
        });
    }
    Ok(Some((record, e_tag)))
}

/// What the output held when the run started: no commit (`None`), or the
/// version of the record it read.
pub type Seen = Option<Option<String>>;

/// Write `record` as the commit of `output` (a single put: atomic on every
/// object store), conditional on the output still holding what the run
/// `seen` where the store can check it; then delete what the record does
/// not reference.
pub async fn write(output: &Location, record: &CommitRecord, seen: Seen) -> Result<(), StorageError> {
    let at = output.child(COMMIT_FILE);
    let json = serde_json::to_vec_pretty(record).expect("commit records serialize");
    let e_tag = match seen {
        None => None,
        // A record without a version cannot be checked: overwrite it.
        Some(None) => return finish(output, record, at.put(json).await).await,
        Some(Some(e_tag)) => Some(e_tag),
    };
    if !at.put_if(json, e_tag).await? {
        let other =
            read(output).await.ok().flatten().map_or_else(|| "another run".into(), |r| format!("run {}", r.run_id));
        return Err(StorageError::CommitConflict { url: at.url().into(), other });
    }
    remove_unreferenced(output, record).await
}

async fn finish(output: &Location, record: &CommitRecord, put: Result<(), StorageError>) -> Result<(), StorageError> {
    put?;
    remove_unreferenced(output, record).await
}

/// The record of task `task_id` under `output`, if it completed.
pub async fn read_task(output: &Location, task_id: &str) -> Result<Option<Bytes>, StorageError> {
    Ok(output.child(&format!("{TASKS_DIR}/{task_id}")).get_opt().await?.map(|(b, _)| b))
}

/// Record that task `task_id` completed, with what a rerun needs to skip
/// it (its part, or its fit state).
pub async fn write_task(output: &Location, task_id: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
    output.child(&format!("{TASKS_DIR}/{task_id}")).put(bytes).await
}

/// Delete parts and models under `output` that `record` does not list
/// (leftovers of earlier commits and of runs that died before committing),
/// every task record, and leftover probe objects.
pub async fn remove_unreferenced(output: &Location, record: &CommitRecord) -> Result<(), StorageError> {
    let keep: Vec<&str> = record
        .parts
        .iter()
        .map(|p| p.name.as_str())
        .chain(record.model.iter().map(|m| m.name.as_str()))
        .chain(record.quarantine.iter().map(|p| p.name.as_str()))
        .chain(record.report.iter().flat_map(|r| std::iter::once(r.json.as_str()).chain(r.table.as_deref())))
        .chain([COMMIT_FILE])
        .collect();
    let store = output.store();
    let listed: Vec<_> = store.list(Some(output.path())).try_collect().await.map_err(|e| output.error(e))?;
    for meta in listed {
        let Some(rel) = meta
            .location
            .prefix_match(output.path())
            .map(|p| p.map(|s| s.as_ref().to_string()).collect::<Vec<_>>().join("/"))
        else {
            continue;
        };
        // Parts, quarantine, models, reports, task records, and the scratch
        // object of a conditional-write probe that a killed run left behind.
        let ours = rel.starts_with("part-")
            || rel.starts_with(crate::quarantine::QUARANTINE_DIR)
            || rel.starts_with("_model-")
            || rel.starts_with(REPORT_PREFIX)
            || rel.starts_with(TASKS_DIR)
            || rel.starts_with(crate::location::PROBE_PREFIX);
        if ours && !keep.contains(&rel.as_str()) {
            match store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(output.at(meta.location.clone()).error(e)),
            }
        }
    }
    Ok(())
}
