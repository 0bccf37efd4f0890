//! Reading a partition holds a batch and a page per column, not its row
//! group: a task's memory follows `batch_rows`, whatever size of row group
//! the file was written with. The allocator of this test binary counts
//! every byte the process holds, and the reads below must stay far under
//! the size of the row group they stream.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{ArrayRef, Float64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use wasmpipe_storage::{Storage, read};

struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = HELD.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call goes to the system allocator unchanged; the counters
// only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            HELD.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ROWS: usize = 1_000_000;
const COLUMNS: usize = 8;

/// One file, one row group of a million rows of eight pseudo-random f64
/// columns (zstd barely shrinks them: the row group is ~60 MB on disk and
/// 64 MB decoded).
fn write_one_row_group(path: &std::path::Path) {
    let fields: Vec<Field> = (0..COLUMNS).map(|c| Field::new(format!("x{c}"), DataType::Float64, false)).collect();
    let schema = Arc::new(Schema::new(fields));
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap()))
        .set_max_row_group_row_count(Some(ROWS))
        .set_dictionary_enabled(false)
        .build();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema.clone(), Some(props)).unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for start in (0..ROWS).step_by(100_000) {
        let columns: Vec<ArrayRef> = (0..COLUMNS)
            .map(|_| {
                let values = (start..start + 100_000).map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 11) as f64 / (1u64 << 53) as f64
                });
                Arc::new(Float64Array::from_iter_values(values)) as ArrayRef
            })
            .collect();
        writer.write(&RecordBatch::try_new(schema.clone(), columns).unwrap()).unwrap();
    }
    writer.close().unwrap();
}

/// Stream every batch of `location`'s partitions (reading `columns`) and
/// return the rows read and the most bytes the process held above what it
/// held before the read began.
async fn peak_while_reading(storage: &Storage, location: &str, columns: Option<&[String]>) -> (usize, usize) {
    let at = storage.resolve(location).unwrap();
    let listing = read::list(&at, None).await.unwrap();
    let parts = read::partitions(&listing.files).await.unwrap();
    assert_eq!(parts.len(), 1, "one row group, one partition");
    let before = HELD.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let mut rows = 0;
    let mut stream = read::open(&parts[0], columns, 8192, None).await.unwrap();
    while let Some(chunk) = stream.next().await {
        match chunk.unwrap() {
            read::Chunk::Rows(b) => rows += b.num_rows(),
            read::Chunk::Quarantined(_) => panic!("Parquet rows are never quarantined"),
        }
    }
    drop(stream);
    (rows, PEAK.load(Ordering::Relaxed).saturating_sub(before))
}

#[tokio::test(flavor = "current_thread")]
async fn reading_a_large_row_group_holds_pages_not_the_row_group() {
    let dir = std::env::temp_dir().join(format!("wasmpipe-read-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("one.parquet");
    write_one_row_group(&path);
    let on_disk = std::fs::metadata(&path).unwrap().len() as usize;
    assert!(on_disk > 50 << 20, "the row group is large: {on_disk} bytes");
    let storage = Storage::new(&dir);

    let (rows, peak) = peak_while_reading(&storage, "one.parquet", None).await;
    assert_eq!(rows, ROWS);
    assert!(peak < 8 << 20, "reading every column held {} MiB of a {} MiB row group", peak >> 20, on_disk >> 20);

    let two = ["x1".to_string(), "x6".to_string()];
    let (rows, peak) = peak_while_reading(&storage, "one.parquet", Some(&two)).await;
    assert_eq!(rows, ROWS);
    assert!(peak < 3 << 20, "reading two columns held {} MiB", peak >> 20);

    std::fs::remove_dir_all(&dir).unwrap();
}
