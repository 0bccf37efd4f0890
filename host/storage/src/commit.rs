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
//! * Before a stage writes anything beside its task records, it writes a
//!   journal (`_wasmpipe_tasks/journal-….json`) naming every object it is
//!   about to write and every object of the commit it will replace.
//! * After the commit lands, the objects the journals and the replaced
//!   commit name that the new commit does not list are deleted, then the
//!   journals, task records and probe objects under `_wasmpipe_tasks/`.
//!   Nothing else is ever deleted: an object in the output prefix that no
//!   wasmpipe record names is not wasmpipe's, and is left alone.
//! * A stage refuses to write into a prefix that holds objects no wasmpipe
//!   record names and no commit: that is someone else's data.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use sha2::Digest;

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
    /// BLAKE3 of its bytes, hex (absent in records of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// SHA-256 of its bytes, hex: what earlier versions recorded
    /// (BLAKE3 hashes the same bytes four times as fast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// For a stage with named outputs: its rows per output.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, u64>,
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
    /// SHA-256 of the stage's config JSON, its column selectors resolved.
    pub config: String,
    /// What each column selector of the stage's config selected, by key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selected: BTreeMap<String, Vec<String>>,
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

impl CommitRecord {
    /// Rows per named output, over every part (empty for a stage without
    /// named outputs).
    pub fn outputs(&self) -> BTreeMap<String, u64> {
        let mut total = BTreeMap::new();
        for (output, rows) in self.parts.iter().flat_map(|p| &p.outputs) {
            *total.entry(output.clone()).or_insert(0) += rows;
        }
        total
    }
}

/// How report files' names start, within a stage's output prefix.
pub const REPORT_PREFIX: &str = "_report-";

/// Where task records live, within a stage's output prefix: wasmpipe's
/// working directory, every object of which wasmpipe wrote.
pub const TASKS_DIR: &str = "_wasmpipe_tasks";

/// How journal names start, within [`TASKS_DIR`].
pub const JOURNAL_PREFIX: &str = "journal-";

/// What a writer (a task, or a commit) is about to write into a stage's
/// output, recorded before it writes, so that clean-up deletes exactly what
/// wasmpipe wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The writer: a task's identity, or `commit-IDENTITY`. (The field
    /// kept its name from when a run wrote one journal per stage.)
    pub run_id: String,
    /// Objects it will write (relative to the output prefix), and the
    /// objects of the commit it will replace.
    pub objects: Vec<String>,
}

impl CommitRecord {
    /// Every object the record lists, relative to the output prefix (the
    /// record itself included).
    pub fn objects(&self) -> impl Iterator<Item = &str> {
        self.parts
            .iter()
            .map(|p| p.name.as_str())
            .chain(self.model.iter().map(|m| m.name.as_str()))
            .chain(self.quarantine.iter().map(|p| p.name.as_str()))
            .chain(self.report.iter().flat_map(|r| std::iter::once(r.json.as_str()).chain(r.table.as_deref())))
            .chain([COMMIT_FILE])
    }
}

/// Record `journal` under `output` before writing what it names.
pub async fn write_journal(output: &Location, journal: &Journal) -> Result<(), StorageError> {
    let json = serde_json::to_vec(journal).expect("journals serialize");
    OutputLayout::new(output.clone()).journal(&journal.run_id).put(json).await
}

/// The objects under `output`, relative to it.
async fn list_relative(output: &Location) -> Result<Vec<String>, StorageError> {
    let store = output.store();
    let listed: Vec<_> = store.list(Some(output.path())).try_collect().await.map_err(|e| output.error(e))?;
    Ok(listed
        .into_iter()
        .filter_map(|meta| {
            let rel = meta.location.prefix_match(output.path())?;
            Some(rel.map(|s| s.as_ref().to_string()).collect::<Vec<_>>().join("/"))
        })
        .collect())
}

/// Whether `rel` lies in wasmpipe's working directory.
fn in_tasks_dir(rel: &str) -> bool {
    rel.strip_prefix(TASKS_DIR).is_some_and(|r| r.starts_with('/'))
}

/// Every object the journals under `output` name.
async fn journaled(output: &Location, listed: &[String]) -> Result<Vec<String>, StorageError> {
    let mut named = Vec::new();
    for rel in listed.iter().filter(|r| in_tasks_dir(r)) {
        let file = &rel[TASKS_DIR.len() + 1..];
        if !(file.starts_with(JOURNAL_PREFIX) && file.ends_with(".json")) {
            continue;
        }
        let Some((bytes, _)) = output.child(rel).get_opt().await? else {
            continue;
        };
        // A journal cut short by a kill names nothing it can prove.
        if let Ok(journal) = serde_json::from_slice::<Journal>(&bytes) {
            named.extend(journal.objects);
        }
    }
    Ok(named)
}

/// Refuse to write into `output` for stage `stage` of pipeline `pipeline`
/// when it holds objects that no wasmpipe record names and no commit
/// (someone else's data, which wasmpipe must neither mix its parts into nor
/// ever clean up), or the commit of another pipeline's stage (whose parts
/// a new commit would delete). A committed output may hold foreign
/// objects; they are left alone.
pub async fn check_writable(
    output: &Location,
    committed: Option<&CommitRecord>,
    pipeline: &str,
    stage: &str,
) -> Result<(), StorageError> {
    if let Some(record) = committed {
        if record.pipeline != pipeline || record.stage != stage {
            return Err(StorageError::OtherOwner {
                url: output.url().into(),
                pipeline: record.pipeline.clone(),
                stage: record.stage.clone(),
            });
        }
        return Ok(());
    }
    let listed = list_relative(output).await?;
    let named: HashSet<String> = journaled(output, &listed).await?.into_iter().collect();
    let foreign: Vec<&String> =
        listed.iter().filter(|r| !in_tasks_dir(r) && r.as_str() != COMMIT_FILE && !named.contains(*r)).collect();
    if let Some(first) = foreign.first() {
        return Err(StorageError::ForeignObjects {
            url: output.url().into(),
            count: foreign.len(),
            example: (*first).clone(),
        });
    }
    Ok(())
}

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
        Some(None) => {
            at.put(json).await?;
            return remove_unreferenced(output, record).await;
        }
        Some(Some(e_tag)) => Some(e_tag),
    };
    if !at.put_if(json, e_tag).await? {
        let other =
            read(output).await.ok().flatten().map_or_else(|| "another run".into(), |r| format!("run {}", r.run_id));
        return Err(StorageError::CommitConflict { url: at.url().into(), other });
    }
    remove_unreferenced(output, record).await
}

/// An identity: the SHA-256 (hex) of `parts`, each prefixed with its
/// length so that no two different lists of parts hash alike. Stage, task
/// and output identities are all made here (see `docs/commit-protocol.md`).
pub fn identity(parts: &[&[u8]]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// Names every object under a stage's output prefix (and derefs to the
/// prefix's [`Location`]):
///
/// ```text
/// part-INDEX-TASK.parquet              a transform task's part
/// _quarantine/part-INDEX-TASK.parquet  its quarantined rows
/// _model-SHA256.bin                    a fit stage's model or result
/// _report-SHA256.json, .parquet        the report the stage published
/// _wasmpipe_tasks/TASK                 a task's record (TaskRecord)
/// _wasmpipe_tasks/journal-WRITER.json  what a writer is about to write
/// _wasmpipe_commit.json                the commit record
/// ```
///
/// (`TASK` and `SHA256` are the first 16 hex digits in part, model and
/// report names, the whole identity in task records.)
#[derive(Debug, Clone)]
pub struct OutputLayout {
    output: Location,
}

impl std::ops::Deref for OutputLayout {
    type Target = Location;
    fn deref(&self) -> &Location {
        &self.output
    }
}

impl OutputLayout {
    /// The layout of the output prefix `output`.
    pub fn new(output: Location) -> OutputLayout {
        OutputLayout { output }
    }

    /// The part transform task `index` (identity `task_id`) writes.
    pub fn part(index: usize, task_id: &str) -> String {
        crate::write::part_name(index, task_id)
    }

    /// The quarantine part of transform task `index`.
    pub fn quarantine_part(index: usize, task_id: &str) -> String {
        format!("{}/{}", crate::quarantine::QUARANTINE_DIR, Self::part(index, task_id))
    }

    /// A fit stage's model object, by the model's hash.
    pub fn model(sha256: &str) -> String {
        format!("_model-{}.bin", &sha256[..sha256.len().min(16)])
    }

    /// A published report's JSON and Parquet files, by the hash of its
    /// JSON.
    pub fn report(json: &str) -> (String, String) {
        let sha = hex::encode(sha2::Sha256::digest(json.as_bytes()));
        let stem = format!("{REPORT_PREFIX}{}", &sha[..16]);
        (format!("{stem}.json"), format!("{stem}.parquet"))
    }

    /// Task `task_id`'s record.
    pub fn task_record(&self, task_id: &str) -> Location {
        self.output.child(&format!("{TASKS_DIR}/{task_id}"))
    }

    /// The journal of `writer`.
    pub fn journal(&self, writer: &str) -> Location {
        self.output.child(&format!("{TASKS_DIR}/{JOURNAL_PREFIX}{writer}.json"))
    }

    /// The commit record.
    pub fn commit(&self) -> Location {
        self.output.child(COMMIT_FILE)
    }
}

/// What a completed task left behind: what a rerun needs to skip it, and
/// what the commit lists. Stored under `_wasmpipe_tasks/TASK` as a
/// header line of JSON (this type) followed by the task's payload bytes:
/// a fit task's partial state, or the state a merge carries into the next
/// pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskRecord {
    /// A transform task: its part and quarantine part, and rows read.
    Transform {
        /// The part (none when the task emitted no rows).
        part: Option<Part>,
        /// The quarantine part.
        quarantine: Option<Part>,
        /// Rows read, quarantined records included.
        rows_in: u64,
        /// The part's columns, `name: type`.
        schema: Option<Vec<String>>,
    },
    /// A fit task of one pass; the payload is its partial state.
    Fit {
        /// The pass.
        pass: u32,
        /// Rows folded.
        rows: u64,
    },
    /// A combine task of one pass: a group of partial states merged into
    /// one (a level of the merge tree); the payload is the merged state.
    Combine {
        /// The pass.
        pass: u32,
        /// The level in the merge tree (1: groups of fit states).
        level: u32,
        /// Rows the states it merged folded.
        rows: u64,
    },
    /// The merge and finalize of one pass; the payload is the state the
    /// next pass starts from (when `model` is none).
    Merge {
        /// The pass.
        pass: u32,
        /// Rows the pass folded.
        rows: u64,
        /// The finished model or result, when this pass ended the fit.
        model: Option<Model>,
        /// The report the stage published when it finished.
        report: Option<ReportFiles>,
        /// That report's JSON.
        report_json: Option<String>,
    },
}

/// The record of task `task_id` under `output` and its payload, if the
/// task completed. A record that does not decode (cut short by a kill, or
/// written by another version) counts as absent: the task runs again.
pub async fn read_task(output: &Location, task_id: &str) -> Result<Option<(TaskRecord, Bytes)>, StorageError> {
    let Some((bytes, _)) = OutputLayout::new(output.clone()).task_record(task_id).get_opt().await? else {
        return Ok(None);
    };
    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    Ok(serde_json::from_slice(&bytes[..end]).ok().map(|record| (record, bytes.slice(end + 1..))))
}

/// Record that task `task_id` completed (see [`TaskRecord`]).
pub async fn write_task(
    output: &Location,
    task_id: &str,
    record: &TaskRecord,
    payload: &[u8],
) -> Result<(), StorageError> {
    let mut bytes = serde_json::to_vec(record).expect("task records serialize");
    bytes.push(b'\n');
    bytes.extend_from_slice(payload);
    OutputLayout::new(output.clone()).task_record(task_id).put(bytes).await
}

/// Delete what wasmpipe wrote under `output` that `record` does not list:
/// the objects the journals name (leftovers of the commit it replaced and
/// of runs that died before committing), then everything in wasmpipe's
/// working directory (journals, task records, probe objects). An object
/// no wasmpipe record names is never deleted.
pub async fn remove_unreferenced(output: &Location, record: &CommitRecord) -> Result<(), StorageError> {
    let keep: HashSet<&str> = record.objects().collect();
    let listed = list_relative(output).await?;
    let present: HashSet<&str> = listed.iter().map(String::as_str).collect();
    let mut named = journaled(output, &listed).await?;
    named.sort();
    named.dedup();
    let doomed = named
        .iter()
        .filter(|r| !in_tasks_dir(r) && !keep.contains(r.as_str()) && present.contains(r.as_str()))
        .chain(listed.iter().filter(|r| in_tasks_dir(r) && !is_journal(r)))
        // Journals last: until the end, they say what is left to delete.
        .chain(listed.iter().filter(|r| is_journal(r)));
    for rel in doomed {
        let at = output.child(rel);
        match at.store().delete(at.path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(at.error(e)),
        }
    }
    Ok(())
}

fn is_journal(rel: &str) -> bool {
    in_tasks_dir(rel) && rel[TASKS_DIR.len() + 1..].starts_with(JOURNAL_PREFIX)
}
