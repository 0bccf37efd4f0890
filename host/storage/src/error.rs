//! Storage errors; each names the object or URL involved.

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The location is not a URL or path wasmpipe can use.
    #[error("invalid location {url:?}: {reason}")]
    InvalidLocation {
        /// As written.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Nothing exists at the location.
    #[error(
        "{url}: no such file or object\n  hint: check the path in the manifest (relative paths are relative to the manifest's directory)"
    )]
    NotFound {
        /// The location.
        url: String,
    },
    /// The object store failed.
    #[error("{url}: {source}")]
    Store {
        /// The location.
        url: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// A Parquet file could not be read or written.
    #[error("{url}: Parquet: {source}")]
    Parquet {
        /// The file.
        url: String,
        /// The decoder's error.
        source: parquet::errors::ParquetError,
    },
    /// A text file (CSV, JSON Lines) cannot be read at all (a record that
    /// does not parse is quarantined instead).
    #[error("{url}: {reason}")]
    Text {
        /// The file.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The format of an input cannot be told from its name.
    #[error(
        "{url}: cannot tell the format from the name\n  hint: set `format = \"parquet\"`, `\"csv\"` or `\"jsonl\"` on the stage"
    )]
    UnknownFormat {
        /// The file.
        url: String,
    },
    /// A commit record is unreadable.
    #[error("{url}: corrupt commit record: {reason}\n  hint: rerun the stage that writes it")]
    CorruptCommit {
        /// The record.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A content-addressed object does not hash to its name.
    #[error(
        "{url}: its SHA-256 is {actual}, not the {expected} it is stored under\n  hint: the object was changed or damaged in the store; write it again from its source (`wasmpipe deploy` for a deployed component or input, a rerun of the stage that fitted a model)"
    )]
    HashMismatch {
        /// The object.
        url: String,
        /// The hash it should have.
        expected: String,
        /// The hash it has.
        actual: String,
    },
    /// Another run committed the output while this one ran.
    #[error(
        "{url}: {other} committed this output while this run was running; nothing of this run was committed\n  hint: run again to build on the new commit, and make sure only one run writes an output at a time"
    )]
    CommitConflict {
        /// The commit record.
        url: String,
        /// Who committed, as far as known.
        other: String,
    },
    /// A projected column is not in the file.
    #[error("{url}: no column {column:?} (it has: {available})\n  hint: fix `columns` in the stage")]
    MissingColumn {
        /// The file.
        url: String,
        /// The missing name.
        column: String,
        /// The columns the file has.
        available: String,
    },
    /// A task's output has rows but no columns: Parquet cannot hold them.
    #[error(
        "{url}: the stage emitted {rows} rows with no columns\n  hint: a Parquet part needs at least one column; keep a column, or emit no rows"
    )]
    NoColumns {
        /// The part being written.
        url: String,
        /// The rows of the batch.
        rows: usize,
    },
    /// A task's output batches do not share one schema.
    #[error(
        "{url}: the stage's output schema changed between batches: {detail}\n  hint: every batch a stage emits must have the same columns and types"
    )]
    SchemaMismatch {
        /// The part being written.
        url: String,
        /// The difference.
        detail: String,
    },
    /// An output prefix holds the commit of another pipeline's stage.
    #[error(
        "{url} holds the output of stage {stage:?} of pipeline {pipeline:?}; a stage replaces only its own commit\n  hint: give this stage its own `output`, or delete that output first if it is no longer needed"
    )]
    OtherOwner {
        /// The output prefix.
        url: String,
        /// The pipeline whose commit is there.
        pipeline: String,
        /// Its stage.
        stage: String,
    },
    /// An output prefix holds objects that no wasmpipe record names, and
    /// no commit: someone else's data.
    #[error(
        "{url} holds {count} object(s) that wasmpipe did not write (e.g. {example:?}) and no wasmpipe commit; wasmpipe writes only into an empty prefix or one it committed to, and never deletes what it did not write\n  hint: choose another `output` (or `--store`), or move those objects away"
    )]
    ForeignObjects {
        /// The output prefix.
        url: String,
        /// How many foreign objects.
        count: usize,
        /// One of them, relative to the prefix.
        example: String,
    },
}
