//! Writing a task's output as one Parquet part.

use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use sha2::{Digest, Sha256};

use crate::commit::Part;
use crate::{Location, StorageError};

/// Parts of a multipart upload in flight per writer.
const UPLOADS_IN_FLIGHT: usize = 2;

/// Bytes a writer buffers before it uploads them as one part: object
/// stores want large parts (S3's smallest is 5 MiB), a local file does not,
/// so that there a task holds about the same whatever the size of its part.
const UPLOAD_PART: usize = 10 << 20;
const LOCAL_PART: usize = 1 << 20;

/// The deterministic object name of a task's part: its index (so parts
/// sort in task order) and its identity (so a retried task rewrites the
/// same object and a changed task writes a new one).
pub fn part_name(task_index: usize, task_id: &str) -> String {
    format!("part-{task_index:05}-{}.parquet", &task_id[..task_id.len().min(16)])
}

/// Writes one part; the file is created at the first batch, so a task
/// that emits no rows writes nothing.
pub struct PartWriter {
    output: Location,
    name: String,
    task_id: String,
    row_group_rows: usize,
    writer: Option<AsyncArrowWriter<HashingSink>>,
    /// The SHA-256 of the bytes written so far.
    hash: Arc<Mutex<Sha256>>,
    schema: Option<arrow::datatypes::SchemaRef>,
    rows: u64,
}

impl PartWriter {
    /// Prepare to write `name` under `output`.
    pub fn new(output: &Location, name: String, task_id: String, row_group_rows: usize) -> Self {
        PartWriter {
            output: output.clone(),
            name,
            task_id,
            row_group_rows,
            writer: None,
            hash: Arc::default(),
            schema: None,
            rows: 0,
        }
    }

    fn err(&self, source: parquet::errors::ParquetError) -> StorageError {
        StorageError::Parquet { url: self.output.child(&self.name).url().into(), source }
    }

    /// Append a batch. Every batch must have the schema of the first.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), StorageError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.writer.is_none() {
            let mut props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                // A wide table gets shorter row groups: the writer buffers
                // a row group's pages in memory.
                .set_max_row_group_row_count(Some(crate::rows_for_width(self.row_group_rows, batch.num_columns())))
                .set_created_by(format!("wasmpipe {}", env!("CARGO_PKG_VERSION")));
            // Floating-point columns rarely repeat values: building their
            // dictionary cost 2.4x the write time of plain encoding and the
            // files came out 17% larger (1M rows x 10 f64, measured).
            for field in batch.schema().fields() {
                if field.data_type().is_floating() {
                    props = props.set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), false);
                }
            }
            let props = props.build();
            let at = self.output.child(&self.name);
            // Buffered: small parts are one put, large ones a multipart
            // upload with at most UPLOADS_IN_FLIGHT parts in flight, so
            // that a writer that outruns its store holds a bounded number
            // of them (object_store's default of 8 held 80 MiB per task).
            let part = if at.local_file().is_some() { LOCAL_PART } else { UPLOAD_PART };
            let inner = BufWriter::with_capacity(at.store().clone(), at.path().clone(), part)
                .with_max_concurrency(UPLOADS_IN_FLIGHT);
            let sink = HashingSink { inner, hash: self.hash.clone() };
            let w = AsyncArrowWriter::try_new(sink, batch.schema(), Some(props)).map_err(|e| self.err(e))?;
            self.writer = Some(w);
            self.schema = Some(batch.schema());
        }
        let first = self.schema.as_ref().expect("set with the writer");
        if schema_differs(first, &batch.schema()) {
            let detail = format!("expected {:?}, got {:?}", first.fields(), batch.schema().fields());
            return Err(StorageError::SchemaMismatch { url: self.output.child(&self.name).url().into(), detail });
        }
        let writer = self.writer.as_mut().expect("created above");
        let result = writer.write(batch).await;
        result.map_err(|e| self.err(e))?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// The schema of what was written, once anything was.
    pub fn schema(&self) -> Option<&arrow::datatypes::SchemaRef> {
        self.schema.as_ref()
    }

    /// Finish the file. `None` when no rows were written.
    pub async fn finish(mut self) -> Result<Option<Part>, StorageError> {
        let Some(writer) = self.writer.take() else {
            return Ok(None);
        };
        let result = writer.close().await;
        let _metadata = result.map_err(|e| self.err(e))?;
        let at = self.output.child(&self.name);
        use object_store::ObjectStoreExt;
        let bytes = at
            .store()
            .head(at.path())
            .await
            .map_err(|source| StorageError::Store { url: at.url().into(), source })?
            .size;
        let sha256 = hex::encode(std::mem::take(&mut *self.hash.lock().expect("no panics while held")).finalize());
        Ok(Some(Part {
            name: self.name,
            rows: self.rows,
            bytes,
            task: self.task_id,
            sha256: Some(sha256),
            outputs: Default::default(),
        }))
    }
}

fn schema_differs(a: &arrow::datatypes::SchemaRef, b: &arrow::datatypes::SchemaRef) -> bool {
    a.fields().len() != b.fields().len()
        || a.fields().iter().zip(b.fields()).any(|(x, y)| x.name() != y.name() || x.data_type() != y.data_type())
}

/// The object store writer, hashing what goes through it: a part's
/// checksum costs no second read.
struct HashingSink {
    inner: BufWriter,
    hash: Arc<Mutex<Sha256>>,
}

impl AsyncFileWriter for HashingSink {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        self.hash.lock().expect("no panics while held").update(&bs);
        AsyncFileWriter::write(&mut self.inner, bs)
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        AsyncFileWriter::complete(&mut self.inner)
    }
}
