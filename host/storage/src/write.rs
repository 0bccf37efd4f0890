//! Writing a task's output as one Parquet part.

use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use object_store::buffered::BufWriter;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
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

/// The encoder hands its bytes on in chunks of this size, uploaded column
/// by column as a row group closes. Serialized whole into one growing
/// buffer (as parquet's `AsyncArrowWriter` does), a row group cost a copy
/// per doubling, fresh zeroed pages every time, and its size again in
/// memory: the scaler on 2M rows in 500k-row groups took 14% more CPU and
/// 150 MiB more peak memory.
const CHUNK: usize = 1 << 20;

/// A row group closes once its encoded pages take this much memory, however
/// few its rows: a stage emitting large values cannot make a writer hold
/// more (and every column chunk stays under what the reader accepts,
/// [`crate::MAX_CHUNK_BYTES`]).
pub const MAX_ROW_GROUP_BYTES: usize = 128 << 20;

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
    rows: u64,
}

impl PartWriter {
    /// Prepare to write `name` under `output`.
    pub fn new(output: &Location, name: String, task_id: String, row_group_rows: usize) -> Self {
        PartWriter { output: output.clone(), name, task_id, row_group_rows, writer: None, rows: 0 }
    }

    fn err(&self, source: parquet::errors::ParquetError) -> StorageError {
        StorageError::Parquet { url: self.output.child(&self.name).url().into(), source }
    }

    /// Append a batch. Every batch must have the schema of the first.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), StorageError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if batch.num_columns() == 0 {
            let url = self.output.child(&self.name).url().into();
            return Err(StorageError::NoColumns { url, rows: batch.num_rows() });
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
            // Row groups are cut by rows alone: the byte limit and
            // content-defined chunking live in `ArrowWriter::write`, which
            // this writer does not use.
            debug_assert!(props.max_row_group_bytes().is_none() && props.content_defined_chunking().is_none());
            let max_rows = props.max_row_group_row_count().unwrap_or(usize::MAX).max(1);
            let chunks = Arc::new(Mutex::new(Chunks::default()));
            // The writer adds the Arrow schema to the file's metadata; the
            // row groups are then encoded here, so that each column chunk
            // goes to the upload as soon as it is serialized.
            let (file, factory) = ArrowWriter::try_new(Shared(chunks.clone()), batch.schema(), Some(props))
                .and_then(ArrowWriter::into_serialized_writer)
                .map_err(|e| self.err(e))?;
            self.writer = Some(Encoder {
                file,
                factory,
                schema: batch.schema(),
                columns: Vec::new(),
                buffered: 0,
                max_rows,
                chunks,
                upload: inner,
                hash: blake3::Hasher::new(),
            });
        }
        let first = &self.writer.as_ref().expect("created above").schema;
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
        self.writer.as_ref().map(|w| &w.schema)
    }

    /// Finish the file. `None` when no rows were written.
    pub async fn finish(mut self) -> Result<Option<Part>, StorageError> {
        let Some(mut writer) = self.writer.take() else {
            return Ok(None);
        };
        let result = writer.finish().await;
        result.map_err(|e| self.err(e))?;
        let blake3 = writer.hash.finalize().to_hex().to_string();
        drop(writer);
        let at = self.output.child(&self.name);
        use object_store::ObjectStoreExt;
        let bytes = at
            .store()
            .head(at.path())
            .await
            .map_err(|source| StorageError::Store { url: at.url().into(), source })?
            .size;
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
    file: SerializedFileWriter<Shared>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// The open row group's column writers (none open: empty).
    columns: Vec<ArrowColumnWriter>,
    buffered: usize,
    max_rows: usize,
    /// What `file` wrote and the upload has not taken yet.
    chunks: Arc<Mutex<Chunks>>,
    upload: BufWriter,
    hash: blake3::Hasher,
}

impl Encoder {
    async fn write(&mut self, batch: &RecordBatch) -> parquet::errors::Result<()> {
        let mut at = 0;
        while at < batch.num_rows() {
            if self.columns.is_empty() {
                self.columns = self.factory.create_column_writers(self.file.flushed_row_groups().len())?;
            }
            let n = (self.max_rows - self.buffered).min(batch.num_rows() - at);
            let piece = batch.slice(at, n);
            let mut writers = self.columns.iter_mut();
            for (field, column) in self.schema.fields().iter().zip(piece.columns()) {
                for leaf in compute_leaves(field, column)? {
                    writers.next().expect("a writer per leaf").write(&leaf)?;
                }
            }
            (self.buffered, at) = (self.buffered + n, at + n);
            let held: usize = self.columns.iter().map(ArrowColumnWriter::memory_size).sum();
            if self.buffered == self.max_rows || held >= MAX_ROW_GROUP_BYTES {
                self.close_row_group().await?;
            }
        }
        Ok(())
    }

    /// Serialize the open row group, uploading each column chunk as soon
    /// as it is written.
    async fn close_row_group(&mut self) -> parquet::errors::Result<()> {
        if self.columns.is_empty() {
            return Ok(());
        }
        let mut group = self.file.next_row_group()?;
        for column in std::mem::take(&mut self.columns) {
            column.close()?.append_to_row_group(&mut group)?;
            upload(&self.chunks, &mut self.upload, &mut self.hash, false).await?;
        }
        group.close()?;
        self.buffered = 0;
        Ok(())
    }

    async fn finish(&mut self) -> parquet::errors::Result<()> {
        self.close_row_group().await?;
        self.file.finish()?;
        upload(&self.chunks, &mut self.upload, &mut self.hash, true).await?;
        tokio::io::AsyncWriteExt::shutdown(&mut self.upload).await?;
        Ok(())
    }
}

/// Hand the encoded chunks on to the upload: the full ones, or all when
/// `all`.
async fn upload(
    chunks: &Mutex<Chunks>,
    upload: &mut BufWriter,
    hash: &mut blake3::Hasher,
    all: bool,
) -> parquet::errors::Result<()> {
    let full = {
        let mut chunks = chunks.lock().unwrap_or_else(|e| e.into_inner());
        if all {
            chunks.seal();
        }
        std::mem::take(&mut chunks.full)
    };
    for chunk in full {
        hash.update(&chunk);
        upload.put(chunk).await.map_err(|e| ParquetError::External(Box::new(e)))?;
    }
    Ok(())
}

/// Encoded bytes in chunks of `CHUNK`, none of which is ever grown.
#[derive(Default)]
struct Chunks {
    full: Vec<Bytes>,
    filling: Vec<u8>,
}

impl Chunks {
    fn seal(&mut self) {
        if self.filling.len() >= CHUNK / 4 {
            self.full.push(std::mem::take(&mut self.filling).into());
        } else if !self.filling.is_empty() {
            // A small tail (a footer, a small part) is copied: its chunk's
            // whole megabyte would otherwise go with it to the store.
            self.full.push(Bytes::copy_from_slice(&self.filling));
            self.filling.clear();
        }
    }
}

/// The Parquet file writer's end of the chunks.
struct Shared(Arc<Mutex<Chunks>>);

impl std::io::Write for Shared {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        let mut chunks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while !buf.is_empty() {
            if chunks.filling.capacity() == 0 {
                chunks.filling = Vec::with_capacity(CHUNK);
            }
            let take = buf.len().min(CHUNK - chunks.filling.len());
            chunks.filling.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if chunks.filling.len() == CHUNK {
                chunks.seal();
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
