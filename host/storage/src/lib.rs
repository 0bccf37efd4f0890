//! Storage and Parquet I/O for wasmpipe, over the `object_store` crate.
//!
//! * [`Storage`] resolves the locations a manifest names (plain paths,
//!   `file://` URLs, `memory://` for tests) to an object store and a prefix.
//! * [`read`] lists a stage's input objects (trusting only the parts a
//!   commit record lists when one exists), splits them into partitions
//!   (one per Parquet row group, one per CSV or JSON Lines file), and
//!   streams each partition as record batches with column projection, so
//!   memory stays bounded by batch size, never by dataset size. Text
//!   records that do not parse go to the [`quarantine`], never dropped.
//! * [`write`] writes one Parquet part per task under a deterministic name.
//! * [`commit`] is the commit record written last, listing the parts:
//!   readers trust nothing else, so a run that dies leaves nothing visible.
//!   Beside it, the typed task records every task leaves.
//! * [`registry`] keeps every fitted model by content, with its lineage;
//!   [`deployments`] names and reads pipelines published under a root.

pub mod commit;
pub mod deployments;
mod error;
mod location;
pub mod quarantine;
pub mod read;
pub mod registry;
mod text;
pub mod write;

pub use error::StorageError;

/// Most columns wasmpipe reads from one file. Real tables have hundreds,
/// wide ones thousands; a file of a million empty columns is an attack on
/// the reader's memory (a builder, a writer and a page buffer each).
pub const MAX_COLUMNS: usize = 10_000;

/// Most values (rows x columns) in one batch read or one row group
/// written: 4 Mi values, 32 MiB of float64. A batch of a wide table has
/// fewer rows than `batch_rows`, so that memory follows the batch budget,
/// not the file's width.
pub const MAX_BATCH_VALUES: usize = 1 << 22;

/// Longest text record (a CSV row or a JSON line), in bytes. A record is
/// buffered whole before it is split into values.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// Most text (CSV or JSON Lines records) gathered into one batch, in
/// bytes: 8,192 records of 16 MiB would be 128 GiB.
pub const MAX_BATCH_TEXT_BYTES: usize = 64 << 20;

/// Largest column chunk of a Parquet row group, decoded, in bytes. A
/// chunk's pages are decompressed one at a time, so this bounds the
/// memory one page takes; a small file whose page inflates to gigabytes
/// is refused before reading.
pub const MAX_CHUNK_BYTES: i64 = 256 << 20;

/// Rows per batch (or row group) for a table of `columns` columns, given
/// the stage's `batch_rows`: at most [`MAX_BATCH_VALUES`] values.
pub fn rows_for_width(batch_rows: usize, columns: usize) -> usize {
    batch_rows.min(MAX_BATCH_VALUES / columns.max(1)).max(1)
}
pub use location::{Conditional, Location, MAX_REQUESTS_PER_STORE, Storage, StoreOptions};
