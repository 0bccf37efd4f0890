//! Writing a task's output as one Parquet part.

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use object_store::buffered::BufWriter;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::commit::Part;
use crate::{Location, StorageError};

/// Parts of a multipart upload in flight per writer.
const UPLOADS_IN_FLIGHT: usize = 2;

/// Bytes a writer buffers before it uploads them as one part: object
/// stores want large parts (S3's smallest is 5 MiB), a local file does not,
/// so that there a task holds about the same whatever the size of its part.
const UPLOAD_PART: usize = 10 << 20;
const LOCAL_PART: usize = 1 << 20;

/// The encoder hands its bytes on in chunks of this size. A row group is
/// serialized whole when it closes; into one growing buffer (as parquet's
/// `AsyncArrowWriter` does) that cost a copy per doubling and fresh, zeroed
/// pages every row group: the scaler on 2M rows in 500k-row groups took
/// 14% more CPU and 150 MiB more peak memory.
const CHUNK: usize = 1 << 20;

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
    writer: Option<Encoder>,
    schema: Option<arrow::datatypes::SchemaRef>,
    rows: u64,
}

impl PartWriter {
    /// Prepare to write `name` under `output`.
    pub fn new(output: &Location, name: String, task_id: String, row_group_rows: usize) -> Self {
        PartWriter { output: output.clone(), name, task_id, row_group_rows, writer: None, schema: None, rows: 0 }
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
            let parquet =
                ArrowWriter::try_new(Chunks::default(), batch.schema(), Some(props)).map_err(|e| self.err(e))?;
            self.writer = Some(Encoder { parquet, upload: inner, hash: blake3::Hasher::new() });
            self.schema = Some(batch.schema());
        }
        let first = self.schema.as_ref().expect("set with the writer");
        if schema_differs(first, &batch.schema()) {
            let detail = format!("expected {:?}, got {:?}", first.fields(), batch.schema().fields());
            return Err(StorageError::SchemaMismatch { url: self.output.child(&self.name).url().into(), detail });
        }
        let writer = self.writer.as_mut().expect("created above");
        let result = match writer.parquet.write(batch) {
            Ok(()) => writer.upload(false).await,
            Err(e) => Err(e),
        };
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
        let Some(mut writer) = self.writer.take() else {
            return Ok(None);
        };
        writer.parquet.finish().map_err(|e| self.err(e))?;
        writer.upload(true).await.map_err(|e| self.err(e))?;
        tokio::io::AsyncWriteExt::shutdown(&mut writer.upload).await.map_err(|e| self.err(e.into()))?;
        let at = self.output.child(&self.name);
        use object_store::ObjectStoreExt;
        let bytes = at
            .store()
            .head(at.path())
            .await
            .map_err(|source| StorageError::Store { url: at.url().into(), source })?
            .size;
        let blake3 = writer.hash.finalize().to_hex().to_string();
        Ok(Some(Part {
            name: self.name,
            rows: self.rows,
            bytes,
            task: self.task_id,
            blake3: Some(blake3),
            sha256: None,
            outputs: Default::default(),
        }))
    }
}

fn schema_differs(a: &arrow::datatypes::SchemaRef, b: &arrow::datatypes::SchemaRef) -> bool {
    a.fields().len() != b.fields().len()
        || a.fields().iter().zip(b.fields()).any(|(x, y)| x.name() != y.name() || x.data_type() != y.data_type())
}

/// The Parquet encoder and the upload it feeds, hashing what goes
/// through: a part's checksum costs no second read.
struct Encoder {
    parquet: ArrowWriter<Chunks>,
    upload: BufWriter,
    hash: blake3::Hasher,
}

impl Encoder {
    /// Hand the encoded chunks on to the upload: the full ones, or all
    /// when `all`.
    async fn upload(&mut self, all: bool) -> parquet::errors::Result<()> {
        let chunks = self.parquet.inner_mut();
        if all {
            chunks.seal();
        }
        for chunk in chunks.full.drain(..) {
            self.hash.update(&chunk);
            self.upload.put(chunk).await.map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
        }
        Ok(())
    }
}

/// Encoded bytes in chunks of `CHUNK`, none of which is ever grown.
#[derive(Default)]
struct Chunks {
    full: Vec<Bytes>,
    filling: Vec<u8>,
}

impl Chunks {
    fn seal(&mut self) {
        if !self.filling.is_empty() {
            self.full.push(std::mem::take(&mut self.filling).into());
        }
    }
}

impl std::io::Write for Chunks {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            if self.filling.capacity() == 0 {
                self.filling = Vec::with_capacity(CHUNK);
            }
            let take = buf.len().min(CHUNK - self.filling.len());
            self.filling.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.filling.len() == CHUNK {
                self.seal();
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
