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

pub mod commit;
mod error;
mod location;
pub mod quarantine;
pub mod read;
mod text;
pub mod write;

pub use error::StorageError;
pub use location::{Conditional, Location, MAX_REQUESTS_PER_STORE, Storage, StoreOptions};
