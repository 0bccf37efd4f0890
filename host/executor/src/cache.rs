//! Decoded partitions kept between the reads of one stage.
//!
//! A stage that fits reads each partition once per pass, and once more to
//! transform it. Reading means fetching, decompressing and decoding the
//! Parquet (or parsing the text) again, though nothing changed: the plan
//! pins its inputs. So once a fit asks for a second pass, that pass's
//! reads keep what they yielded, the projected, decoded Arrow batches,
//! and the later passes and the transform replay them. (A fit of one
//! pass, such as the scaler's, and its transform stream: keeping its
//! input would make memory follow the data for a 5% gain.) What a run
//! keeps is bounded by one budget shared by its stages (`--cache-mib`); a
//! partition that does not fit in what is left is read again from storage
//! each time, as without a cache. A stage's batches are dropped, and their
//! budget returned, when the stage ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wasmpipe_storage::read::Chunk;

/// Bytes of decoded batches a run may keep.
#[derive(Debug)]
pub(crate) struct Budget {
    left: AtomicU64,
}

impl Budget {
    pub fn new(bytes: u64) -> Arc<Budget> {
        Arc::new(Budget { left: AtomicU64::new(bytes) })
    }

    /// Take `bytes` from the budget, or nothing if less is left.
    fn take(&self, bytes: u64) -> bool {
        self.left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| left.checked_sub(bytes)).is_ok()
    }

    fn give(&self, bytes: u64) {
        self.left.fetch_add(bytes, Ordering::AcqRel);
    }
}

/// One stage's kept partitions.
pub(crate) struct PartitionCache {
    /// None when the stage reads each partition once: nothing to keep.
    budget: Option<Arc<Budget>>,
    kept: Mutex<HashMap<usize, Kept>>,
}

struct Kept {
    chunks: Arc<[Chunk]>,
    bytes: u64,
}

/// A partition's batches being read, kept while the budget allows.
pub(crate) struct Keeping<'a> {
    cache: &'a PartitionCache,
    chunks: Vec<Chunk>,
    bytes: u64,
}

impl PartitionCache {
    /// A cache drawing on `budget`, or none (`None`) for a stage that
    /// reads each partition once.
    pub fn new(budget: Option<Arc<Budget>>) -> PartitionCache {
        PartitionCache { budget, kept: Mutex::new(HashMap::new()) }
    }

    /// Partition `index`'s batches, if an earlier read kept them.
    pub fn get(&self, index: usize) -> Option<Arc<[Chunk]>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).get(&index).map(|k| k.chunks.clone())
    }

    /// Start keeping a partition's batches as they are read; `None` when
    /// this stage keeps nothing.
    pub fn keeping(&self) -> Option<Keeping<'_>> {
        self.budget.as_ref().map(|_| Keeping { cache: self, chunks: Vec::new(), bytes: 0 })
    }
}

impl Keeping<'_> {
    /// Keep `chunk` too; `None` (and everything kept so far given back)
    /// when the budget has no room for it.
    pub fn add(mut self, chunk: &Chunk) -> Option<Self> {
        let budget = self.cache.budget.as_ref()?;
        let batch = match chunk {
            Chunk::Rows(b) | Chunk::Quarantined(b) => b,
        };
        let bytes = batch.get_array_memory_size() as u64;
        if !budget.take(bytes) {
            return None; // dropped: what it held goes back
        }
        self.bytes += bytes;
        self.chunks.push(chunk.clone());
        Some(self)
    }

    /// The partition was read to its end: keep it as partition `index`.
    pub fn finish(mut self, index: usize) {
        let kept = Kept { chunks: std::mem::take(&mut self.chunks).into(), bytes: std::mem::take(&mut self.bytes) };
        let mut map = self.cache.kept.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = map.insert(index, kept)
            && let Some(budget) = &self.cache.budget
        {
            budget.give(old.bytes);
        }
    }
}

impl Drop for Keeping<'_> {
    fn drop(&mut self) {
        if let Some(budget) = &self.cache.budget {
            budget.give(self.bytes);
        }
    }
}

impl Drop for PartitionCache {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            let kept = self.kept.get_mut().unwrap_or_else(|e| e.into_inner());
            budget.give(kept.values().map(|k| k.bytes).sum());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Float64Array;
    use arrow::record_batch::RecordBatch;

    use super::*;

    fn chunk(rows: usize) -> Chunk {
        let values = Float64Array::from(vec![1.0; rows]);
        Chunk::Rows(RecordBatch::try_from_iter([("x", Arc::new(values) as _)]).unwrap())
    }

    fn size(c: &Chunk) -> u64 {
        match c {
            Chunk::Rows(b) | Chunk::Quarantined(b) => b.get_array_memory_size() as u64,
        }
    }

    #[test]
    fn a_partition_is_kept_within_the_budget_and_the_budget_returns_when_the_stage_ends() {
        let one = chunk(1000);
        let budget = Budget::new(3 * size(&one));
        let cache = PartitionCache::new(Some(budget.clone()));
        let keeping = cache.keeping().unwrap().add(&one).unwrap().add(&one).unwrap();
        keeping.finish(0);
        assert_eq!(cache.get(0).unwrap().len(), 2);
        // Two more do not fit in what is left: the partition is not kept
        // and what it had taken goes back.
        assert!(cache.keeping().unwrap().add(&one).unwrap().add(&one).is_none());
        assert!(cache.get(1).is_none());
        assert_eq!(budget.left.load(Ordering::Acquire), size(&one));
        drop(cache);
        assert_eq!(budget.left.load(Ordering::Acquire), 3 * size(&one));
    }

    #[test]
    fn a_stage_that_reads_once_keeps_nothing() {
        let cache = PartitionCache::new(None);
        assert!(cache.keeping().is_none());
        assert!(cache.get(0).is_none());
    }
}
