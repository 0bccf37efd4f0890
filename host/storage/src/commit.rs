//! The commit record: the one object that makes a stage's output visible.
//!
//! A task writes its part under a deterministic name derived from the
//! task's identity; parts on their own mean nothing. When every task of a
//! stage has succeeded, the executor writes `_wasmpipe_commit.json`, which
//! lists the parts (and the model, for estimators). Readers read only what
//! a commit lists, so a run that dies at any point leaves the previous
//! commit (or none) in force. Parts of earlier commits that the new one no
//! longer lists are deleted after it lands.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
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
    /// SHA-256 of the stage component.
    pub component: String,
    /// SHA-256 of the stage's config JSON.
    pub config: String,
    /// The inputs read: URL and, for committed upstream outputs, their
    /// commit's run id.
    pub inputs: Vec<String>,
    /// The committed parts, in task order.
    pub parts: Vec<Part>,
    /// The model or result, for fit stages.
    pub model: Option<Model>,
    /// Total rows over all parts.
    pub rows: u64,
    /// Seconds since the Unix epoch when committed.
    pub committed_at: u64,
}

/// Read the commit record at `output`, if there is one.
pub async fn read(output: &Location) -> Result<Option<CommitRecord>, StorageError> {
    let at = output.child(COMMIT_FILE);
    let bytes = match output.store().get(at.path()).await {
        Ok(r) => r.bytes().await.map_err(|source| StorageError::Store { url: at.url().into(), source })?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(source) => return Err(StorageError::Store { url: at.url().into(), source }),
    };
    let record: CommitRecord = serde_json::from_slice(&bytes)
        .map_err(|e| StorageError::CorruptCommit { url: at.url().into(), reason: e.to_string() })?;
    if record.format != COMMIT_FORMAT {
        return Err(StorageError::CorruptCommit {
            url: at.url().into(),
            reason: format!("format {:?}, expected {COMMIT_FORMAT:?}", record.format),
        });
    }
    Ok(Some(record))
}

/// Write `record` as the commit of `output` (a single put: atomic on every
/// object store), then delete what it no longer references.
pub async fn write(output: &Location, record: &CommitRecord) -> Result<(), StorageError> {
    let at = output.child(COMMIT_FILE);
    let json = serde_json::to_vec_pretty(record).expect("commit records serialize");
    output
        .store()
        .put(at.path(), PutPayload::from(Bytes::from(json)))
        .await
        .map_err(|source| StorageError::Store { url: at.url().into(), source })?;
    remove_unreferenced(output, record).await
}

/// Delete parts and models under `output` that `record` does not list:
/// leftovers of earlier commits and of runs that died before committing.
pub async fn remove_unreferenced(output: &Location, record: &CommitRecord) -> Result<(), StorageError> {
    let keep: Vec<&str> = record
        .parts
        .iter()
        .map(|p| p.name.as_str())
        .chain(record.model.iter().map(|m| m.name.as_str()))
        .chain([COMMIT_FILE])
        .collect();
    let store = output.store();
    let listed: Vec<_> = store
        .list(Some(output.path()))
        .try_collect()
        .await
        .map_err(|source| StorageError::Store { url: output.url().into(), source })?;
    for meta in listed {
        let Some(rel) = meta
            .location
            .prefix_match(output.path())
            .map(|p| p.map(|s| s.as_ref().to_string()).collect::<Vec<_>>().join("/"))
        else {
            continue;
        };
        let ours = rel.starts_with("part-") || rel.starts_with("_model-");
        if ours && !keep.contains(&rel.as_str()) {
            store
                .delete(&meta.location)
                .await
                .map_err(|source| StorageError::Store { url: output.at(meta.location.clone()).url().into(), source })?;
        }
    }
    Ok(())
}
