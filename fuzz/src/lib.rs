//! Fuzz targets: what wasmpipe reads from people it does not trust. Each
//! takes arbitrary bytes and must return, never panic, abort or hold more
//! memory than its limits; errors are the expected outcome.
//!
//! * [`manifest`]: a pipeline manifest (a deployer's);
//! * [`records`]: commit records and journals (anyone who can write to a
//!   store);
//! * [`csv`], [`jsonl`], [`parquet`]: input files (a data supplier's),
//!   listed, partitioned and read to the end as a stage would be fed;
//! * [`kernels`]: kernel calls with arbitrary arguments (a stage author's).
//!
//! `make fuzz` runs each under libFuzzer (cargo-fuzz) for a set time;
//! `make test` replays every input saved under `fuzz/corpus/TARGET/`
//! (`tests/replay.rs`).

use std::sync::OnceLock;

use futures::StreamExt;
use wasmpipe_storage::Storage;
use wasmpipe_storage::read::{self, Format};

/// Parse `data` as a manifest.
pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = wasmpipe_manifest::Manifest::parse(text);
    }
}

/// Parse `data` as a commit record and as a journal.
pub fn records(data: &[u8]) {
    let _ = serde_json::from_slice::<wasmpipe_storage::commit::CommitRecord>(data);
    let _ = serde_json::from_slice::<wasmpipe_storage::commit::Journal>(data);
}

/// Read `data` as a CSV file.
pub fn csv(data: &[u8]) {
    read_all(data, "input.csv", Format::Csv);
}

/// Read `data` as a JSON Lines file.
pub fn jsonl(data: &[u8]) {
    read_all(data, "input.jsonl", Format::Jsonl);
}

/// Read `data` as a Parquet file.
///
/// parquet-rs asserts (panics) on some malformed pages; wasmpipe's reader
/// catches those and fails with an error naming the file. libFuzzer's panic
/// hook would abort on the caught panic, so this target puts the default
/// hook back: what it checks is that no panic escapes the reader.
pub fn parquet(data: &[u8]) {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| drop(std::panic::take_hook()));
    read_all(data, "input.parquet", Format::Parquet);
}

/// Make the kernel calls `data` describes (see
/// `wasmpipe_runtime::fuzzing`).
pub fn kernels(data: &[u8]) {
    wasmpipe_runtime::fuzzing::kernels(data);
}

fn io() -> &'static tokio::runtime::Runtime {
    static IO: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    IO.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime"))
}

/// Put `data` in an in-memory store and read it as a stage's input: list,
/// partition, stream every partition to its end.
fn read_all(data: &[u8], name: &str, format: Format) {
    io().block_on(async {
        let storage = Storage::new(".");
        let at = storage.resolve(&format!("memory://fuzz/{name}")).expect("a memory location");
        at.put(data.to_vec()).await.expect("the memory store takes it");
        let Ok(listing) = read::list(&at, Some(format)).await else {
            return;
        };
        let Ok(partitions) = read::partitions(&listing.files).await else {
            return;
        };
        for p in &partitions {
            let Ok(mut stream) = read::open(p, None, 1024, None).await else {
                continue;
            };
            while let Some(chunk) = stream.next().await {
                if chunk.is_err() {
                    break;
                }
            }
        }
    });
}
