//! Finding, partitioning and streaming a stage's input.

use std::pin::Pin;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::reader::ChunkReader;

use crate::commit::{self, CommitRecord};
use crate::text::{self, TextFormat};
use crate::{Location, StorageError};

/// Formats wasmpipe reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet.
    Parquet,
    /// CSV with a header row.
    Csv,
    /// JSON Lines: one JSON object per line.
    Jsonl,
}

impl Format {
    /// The format a name's extension implies.
    pub fn from_name(name: &str) -> Option<Format> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".parquet") || lower.ends_with(".parq") || lower.ends_with(".pq") {
            Some(Format::Parquet)
        } else if lower.ends_with(".csv") {
            Some(Format::Csv)
        } else if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") || lower.ends_with(".json") {
            Some(Format::Jsonl)
        } else {
            None
        }
    }
}

/// One input object.
#[derive(Debug, Clone)]
pub struct InputFile {
    /// Where it is.
    pub location: Location,
    /// Its size in bytes.
    pub size: u64,
    /// The store's version of it (entity tag), where known: part of the
    /// identity of the tasks that read it, so a changed file is reread.
    pub version: Option<String>,
    /// How to read it.
    pub format: Format,
}

/// What an input location holds.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The files to read, in name order.
    pub files: Vec<InputFile>,
    /// The commit record, when the location is a committed stage output.
    pub commit: Option<CommitRecord>,
}

fn store_err(loc: &Location) -> impl Fn(object_store::Error) -> StorageError + '_ {
    move |source| match source {
        object_store::Error::NotFound { .. } => StorageError::NotFound { url: loc.url().into() },
        source => StorageError::Store { url: loc.url().into(), source },
    }
}

/// List what `location` holds. A single object yields itself; a committed
/// stage output yields exactly the parts its commit lists; a prefix yields
/// every object below it whose name does not start with `_` or `.`.
/// `format` overrides the format implied by file names.
pub async fn list(location: &Location, format: Option<Format>) -> Result<Listing, StorageError> {
    let format_of = |loc: &Location| {
        format
            .or_else(|| Format::from_name(&loc.name()))
            .ok_or_else(|| StorageError::UnknownFormat { url: loc.url().into() })
    };
    match location.store().head(location.path()).await {
        Ok(meta) => {
            return Ok(Listing {
                files: vec![InputFile {
                    format: format_of(location)?,
                    size: meta.size,
                    version: meta.e_tag,
                    location: location.clone(),
                }],
                commit: None,
            });
        }
        Err(object_store::Error::NotFound { .. }) => {}
        // A directory on the local store reports itself as not a file.
        Err(_) if !location.path().as_ref().is_empty() => {}
        Err(e) => return Err(store_err(location)(e)),
    }
    if let Some(record) = commit::read(location).await? {
        let mut files = Vec::with_capacity(record.parts.len());
        for part in &record.parts {
            let loc = location.child(&part.name);
            files.push(InputFile { size: part.bytes, version: None, format: Format::Parquet, location: loc });
        }
        return Ok(Listing { files, commit: Some(record) });
    }
    let mut metas: Vec<_> =
        location.store().list(Some(location.path())).try_collect().await.map_err(store_err(location))?;
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    let mut files = Vec::new();
    for meta in metas {
        let rel: Vec<String> = match meta.location.prefix_match(location.path()) {
            Some(parts) => parts.map(|p| p.as_ref().to_string()).collect(),
            None => continue,
        };
        if rel.iter().any(|p| p.starts_with('_') || p.starts_with('.')) {
            continue;
        }
        let loc = location.at(meta.location.clone());
        files.push(InputFile { format: format_of(&loc)?, size: meta.size, version: meta.e_tag, location: loc });
    }
    if files.is_empty() {
        return Err(StorageError::NotFound { url: location.url().into() });
    }
    Ok(Listing { files, commit: None })
}

/// A unit of parallel work: one Parquet row group, or one whole text file.
#[derive(Debug, Clone)]
pub struct Partition {
    /// The file.
    pub file: InputFile,
    /// The row group, for Parquet.
    pub row_group: Option<usize>,
    /// Rows, when known before reading.
    pub rows: Option<u64>,
    /// Bytes the partition reads from storage (compressed row group size,
    /// or the whole file).
    pub bytes: u64,
    metadata: Option<ArrowReaderMetadata>,
}

impl Partition {
    /// The Arrow schema of a Parquet partition, from its file's footer
    /// (none for a text file, whose schema is declared or inferred).
    pub fn schema(&self) -> Option<SchemaRef> {
        self.metadata.as_ref().map(|m| m.schema().clone())
    }

    /// A stable description of what the partition covers, for task identity.
    pub fn identity(&self) -> String {
        let f = &self.file;
        let version = f.version.as_deref().unwrap_or("");
        match self.row_group {
            Some(rg) => format!("{}#rg{rg}@{}:{version}", f.location.url(), f.size),
            None => format!("{}@{}:{version}", f.location.url(), f.size),
        }
    }
}

/// How Parquet is read: by its Parquet schema alone, ignoring an embedded
/// Arrow schema, so that columns come as the plain types stages see
/// (`utf8`, not a dictionary, a view or a large string whose values one
/// page could make the reader repeat row by row).
fn reader_options() -> ArrowReaderOptions {
    ArrowReaderOptions::new().with_skip_arrow_metadata(true)
}

fn parquet_reader(file: &InputFile) -> ObjectReader {
    ObjectReader { location: file.location.clone(), size: file.size }
}

/// Parquet's view of an object: ranged reads only, so reading a footer or
/// one row group never downloads the whole file.
struct ObjectReader {
    location: Location,
    size: u64,
}

/// Bytes fetched from the end of a file in the first footer read; most
/// footers fit, sparing a second request.
const FOOTER_PREFETCH: usize = 64 * 1024;

/// Most bytes one GET of column chunks asks for, and how many such GETs
/// are in flight for a row group: an object store serves several ranged
/// GETs at once faster than one long one (benches/storage.rs, `raw_get
/// ranged` against `single`).
const GET_PIECE: u64 = 8 << 20;
const GETS_IN_FLIGHT: usize = 8;

/// The GETs that fetch `ranges`: ranges less than `gap` apart are read
/// together (fewer requests for small column chunks), cut where a range
/// starts or ends when that keeps pieces under `piece` bytes (so a range
/// usually comes whole from one GET, without a copy), and anything longer
/// is cut in pieces of at most `piece`. Sorted, disjoint, covering every
/// range.
fn pieces(ranges: &[std::ops::Range<u64>], piece: u64, gap: u64) -> Vec<std::ops::Range<u64>> {
    let mut sorted: Vec<std::ops::Range<u64>> = ranges.iter().filter(|r| r.start < r.end).cloned().collect();
    sorted.sort_by_key(|r| (r.start, r.end));
    // Spans of ranges close enough to read together, and the points where
    // a range starts or ends inside each.
    let mut spans: Vec<(std::ops::Range<u64>, Vec<u64>)> = Vec::new();
    for r in sorted {
        match spans.last_mut() {
            Some((span, cuts)) if r.start <= span.end.saturating_add(gap) => {
                cuts.extend([r.start, r.end]);
                span.end = span.end.max(r.end);
            }
            _ => spans.push((r.clone(), vec![r.start, r.end])),
        }
    }
    let mut out = Vec::new();
    for (span, mut cuts) in spans {
        cuts.retain(|c| (span.start..=span.end).contains(c));
        cuts.sort_unstable();
        cuts.dedup();
        // Greedy: grow a piece cut by cut while it stays under `piece`;
        // a stretch between two cuts longer than that is split evenly.
        let mut start = span.start;
        let mut end = start;
        for &cut in &cuts[1..] {
            if cut - start <= piece {
                end = cut;
                continue;
            }
            if end > start {
                out.push(start..end);
                start = end;
            }
            if cut - start > piece {
                let n = (cut - start).div_ceil(piece);
                let step = (cut - start).div_ceil(n);
                let mut at = start;
                while at < cut {
                    out.push(at..(at + step).min(cut));
                    at += step;
                }
                start = cut;
            }
            end = cut;
        }
        if end > start {
            out.push(start..end);
        }
    }
    out
}

/// The bytes of `range` from the `pieces` fetched as `fetched`: a slice of
/// one when it lies within one, else the pieces it spans joined.
fn assemble(range: &std::ops::Range<u64>, pieces: &[std::ops::Range<u64>], fetched: &[Bytes]) -> Bytes {
    let first = pieces.partition_point(|p| p.end <= range.start);
    let within = |i: usize| (range.start - pieces[i].start) as usize..(range.end - pieces[i].start) as usize;
    if range.is_empty() {
        return Bytes::new();
    }
    if range.end <= pieces[first].end {
        return fetched[first].slice(within(first));
    }
    let mut joined = bytes::BytesMut::with_capacity((range.end - range.start) as usize);
    for (p, bytes) in pieces[first..].iter().zip(&fetched[first..]) {
        if p.start >= range.end {
            break;
        }
        let from = range.start.max(p.start) - p.start;
        let to = range.end.min(p.end) - p.start;
        joined.extend_from_slice(&bytes[from as usize..to as usize]);
    }
    joined.freeze()
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.location
                .store()
                .get_range(self.location.path(), range)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    /// A row group's column chunks: GETs of at most [`GET_PIECE`] bytes,
    /// [`GETS_IN_FLIGHT`] at once (object_store's own `get_ranges` merges
    /// a row group's adjacent chunks into one GET of the whole group, a
    /// single stream).
    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            let pieces = pieces(&ranges, GET_PIECE, object_store::OBJECT_STORE_COALESCE_DEFAULT);
            let (store, path) = (self.location.store(), self.location.path());
            let fetched: Vec<Bytes> = futures::stream::iter(pieces.iter().cloned())
                .map(|piece| store.get_range(path, piece))
                .buffered(GETS_IN_FLIGHT)
                .try_collect()
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
            Ok(ranges.iter().map(|r| assemble(r, &pieces, &fetched)).collect())
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let size = self.size;
        async move {
            let metadata = ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(FOOTER_PREFETCH))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// A local file as the sync Parquet reader reads it (page by page), keeping
/// the I/O error behind a failed read, which the reader passes on only as
/// text.
struct LocalFile {
    file: std::fs::File,
    io_error: Arc<std::sync::Mutex<Option<std::io::Error>>>,
}

impl LocalFile {
    fn keep<T>(&self, r: parquet::errors::Result<T>) -> parquet::errors::Result<T> {
        r.inspect_err(|e| {
            if let ParquetError::External(inner) = e
                && let Some(io) = inner.downcast_ref::<std::io::Error>()
            {
                let kept = std::io::Error::new(io.kind(), io.to_string());
                *self.io_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(kept);
            }
        })
    }
}

impl parquet::file::reader::Length for LocalFile {
    fn len(&self) -> u64 {
        parquet::file::reader::Length::len(&self.file)
    }
}

impl ChunkReader for LocalFile {
    type T = <std::fs::File as ChunkReader>::T;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        self.keep(self.file.get_read(start))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.keep(self.file.get_bytes(start, length))
    }
}

/// Split files into partitions, reading only Parquet footers.
pub async fn partitions(files: &[InputFile]) -> Result<Vec<Partition>, StorageError> {
    let mut out = Vec::new();
    for file in files {
        match file.format {
            Format::Csv | Format::Jsonl => out.push(Partition {
                file: file.clone(),
                row_group: None,
                rows: None,
                bytes: file.size,
                metadata: None,
            }),
            Format::Parquet => {
                let mut reader = parquet_reader(file);
                let metadata = load_metadata(file, &mut reader).await?;
                check_footer(file, metadata.metadata())?;
                for (i, rg) in metadata.metadata().row_groups().iter().enumerate() {
                    out.push(Partition {
                        file: file.clone(),
                        row_group: Some(i),
                        rows: Some(rg.num_rows().max(0) as u64),
                        bytes: rg.compressed_size().max(0) as u64,
                        metadata: Some(metadata.clone()),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The Arrow schema of a Parquet file, from its footer (as partitions
/// stream it: see [`reader_options`]).
pub async fn parquet_schema(file: &InputFile) -> Result<SchemaRef, StorageError> {
    Ok(load_metadata(file, &mut parquet_reader(file)).await?.schema().clone())
}

/// A Parquet file's footer, as Arrow reads it; a panic in the parser is a
/// malformed file too.
async fn load_metadata(file: &InputFile, reader: &mut ObjectReader) -> Result<ArrowReaderMetadata, StorageError> {
    let url = file.location.url();
    match std::panic::AssertUnwindSafe(ArrowReaderMetadata::load_async(reader, reader_options())).catch_unwind().await {
        Ok(Ok(metadata)) => Ok(metadata),
        Ok(Err(source)) => Err(StorageError::Parquet { url: url.into(), source }),
        Err(panic) => Err(malformed(url, panic)),
    }
}

/// The error for a Parquet file whose decoding panicked.
fn malformed(url: &str, panic: Box<dyn std::any::Any + Send>) -> StorageError {
    let why = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the decoder failed".into());
    StorageError::Text { url: url.into(), reason: format!("malformed Parquet data ({why})") }
}

/// Refuse a footer that cannot be true, or that would make the reader
/// hold more than its limits allow: too many columns, row counts that do
/// not add up, column chunks outside the file, or a chunk that decodes to
/// more than [`crate::MAX_CHUNK_BYTES`].
fn check_footer(file: &InputFile, metadata: &ParquetMetaData) -> Result<(), StorageError> {
    let bad = |reason: String| StorageError::Text { url: file.location.url().into(), reason };
    let columns = metadata.file_metadata().schema_descr().num_columns();
    if columns > crate::MAX_COLUMNS {
        return Err(bad(format!(
            "{columns} columns, more than the {} wasmpipe reads from one file\n  hint: split the table into narrower files",
            crate::MAX_COLUMNS
        )));
    }
    let claimed = metadata.file_metadata().num_rows();
    let mut total: i64 = 0;
    for (i, rg) in metadata.row_groups().iter().enumerate() {
        if rg.num_rows() < 0 {
            return Err(bad(format!("corrupt footer: row group {i} claims {} rows", rg.num_rows())));
        }
        total = total.saturating_add(rg.num_rows());
        for c in rg.columns() {
            // (Not `byte_range`, which panics on a negative offset.)
            let start = c.dictionary_page_offset().unwrap_or_else(|| c.data_page_offset());
            let len = c.compressed_size();
            let inside = u64::try_from(start)
                .ok()
                .zip(u64::try_from(len).ok())
                .and_then(|(s, l)| s.checked_add(l))
                .is_some_and(|end| end <= file.size);
            if !inside || c.uncompressed_size() < 0 {
                return Err(bad(format!(
                    "corrupt footer: column {} of row group {i} claims bytes {start}..{} of a {}-byte file",
                    c.column_path(),
                    start.saturating_add(len),
                    file.size
                )));
            }
            // Every row has at least one value (or level) in every column,
            // exactly one in a column that does not repeat.
            let repeated = c.column_descr().max_rep_level() > 0;
            if c.num_values() < rg.num_rows() || (!repeated && c.num_values() != rg.num_rows()) {
                return Err(bad(format!(
                    "corrupt footer: row group {i} claims {} rows but its column {} holds {} values",
                    rg.num_rows(),
                    c.column_path(),
                    c.num_values()
                )));
            }
            if c.uncompressed_size() > crate::MAX_CHUNK_BYTES {
                return Err(bad(format!(
                    "column {} of row group {i} decodes to {} MiB, more than the {} MiB wasmpipe decodes at once\n  hint: rewrite the file with smaller row groups (e.g. pyarrow's row_group_size)",
                    c.column_path(),
                    c.uncompressed_size() >> 20,
                    crate::MAX_CHUNK_BYTES >> 20
                )));
            }
        }
    }
    if total != claimed {
        return Err(bad(format!("corrupt footer: the file claims {claimed} rows but its row groups hold {total}")));
    }
    Ok(())
}

/// What reading a partition yields.
#[derive(Debug, Clone)]
pub enum Chunk {
    /// Rows to process.
    Rows(RecordBatch),
    /// Records of a text file that do not parse, as quarantine rows (see
    /// [`crate::quarantine`]).
    Quarantined(RecordBatch),
}

/// A stream of record batches.
pub type BatchStream = Pin<Box<dyn Stream<Item = Result<Chunk, StorageError>> + Send>>;

pub(crate) fn project(schema: &SchemaRef, columns: &[String], url: &str) -> Result<Vec<usize>, StorageError> {
    columns
        .iter()
        .map(|c| {
            schema.index_of(c).map_err(|_| StorageError::MissingColumn {
                url: url.into(),
                column: c.clone(),
                available: schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "),
            })
        })
        .collect()
}

/// Bytes per read of a text file.
const TEXT_CHUNK: u64 = 4 << 20;

/// Stream a partition's rows in batches of at most `batch_rows`, reading
/// only `columns` when given. Text files are read as `schema` when given
/// (else their schema is inferred); records that do not parse come as
/// [`Chunk::Quarantined`].
pub async fn open(
    part: &Partition,
    columns: Option<&[String]>,
    batch_rows: usize,
    schema: Option<SchemaRef>,
) -> Result<BatchStream, StorageError> {
    let url: Arc<str> = part.file.location.url().into();
    match part.file.format {
        Format::Parquet => {
            let metadata = match &part.metadata {
                Some(m) => m.clone(),
                None => load_metadata(&part.file, &mut parquet_reader(&part.file)).await?,
            };
            let width = columns.map_or(metadata.parquet_schema().num_columns(), <[String]>::len);
            let projection = match columns {
                Some(cols) => ProjectionMask::roots(metadata.parquet_schema(), project(metadata.schema(), cols, &url)?),
                None => ProjectionMask::all(),
            };
            let row_groups = part.row_group.map(|rg| vec![rg]);
            let batch_size = crate::rows_for_width(batch_rows, width);
            let parquet_err = |url: &str, source| StorageError::Parquet { url: url.to_string(), source };
            // A local file is read page by page as the decoder asks for
            // each (a page per column at a time); any other store with
            // ranged GETs of the row group's column chunks, fetched whole.
            if let Some(path) = part.file.location.local_file() {
                let file = std::fs::File::open(&path).map_err(|source| match source.kind() {
                    std::io::ErrorKind::NotFound => StorageError::NotFound { url: url.to_string() },
                    _ => StorageError::Store {
                        url: url.to_string(),
                        source: object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(source) },
                    },
                })?;
                let file = LocalFile { file, io_error: Arc::default() };
                let io_error = file.io_error.clone();
                let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata)
                    .with_batch_size(batch_size)
                    .with_projection(projection);
                if let Some(rgs) = row_groups {
                    builder = builder.with_row_groups(rgs);
                }
                let mut reader = builder.build().map_err(|e| parquet_err(&url, e))?;
                let mut ended = false;
                let batches = std::iter::from_fn(move || {
                    if ended {
                        return None;
                    }
                    // parquet-rs asserts on some malformed pages instead of
                    // failing (fuzzing found one in its definition levels):
                    // such a file ends in an error naming it, like any other
                    // corrupt file.
                    let next = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.next())) {
                        Ok(None) => None,
                        Ok(Some(Ok(b))) => return Some(Ok(Chunk::Rows(b))),
                        // The reader's errors reach us as text; an I/O error
                        // is kept as it was, so that it stays transient.
                        Ok(Some(Err(e))) => {
                            Some(Err(match io_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
                                Some(io) => parquet_err(&url, ParquetError::External(Box::new(io))),
                                None => parquet_err(&url, ParquetError::ArrowError(e.to_string())),
                            }))
                        }
                        Err(panic) => Some(Err(malformed(&url, panic))),
                    };
                    ended = true;
                    next
                });
                return Ok(futures::stream::iter(batches).boxed());
            }
            let mut builder =
                ParquetRecordBatchStreamBuilder::new_with_metadata(parquet_reader(&part.file), metadata.clone())
                    .with_batch_size(batch_size)
                    .with_projection(projection);
            if let Some(rgs) = row_groups {
                builder = builder.with_row_groups(rgs);
            }
            let stream = builder.build().map_err(|e| parquet_err(&url, e))?;
            Ok(std::panic::AssertUnwindSafe(stream)
                .catch_unwind()
                .map(move |b| match b {
                    Ok(Ok(b)) => Ok(Chunk::Rows(b)),
                    Ok(Err(source)) => Err(parquet_err(&url, source)),
                    Err(panic) => Err(malformed(&url, panic)),
                })
                .boxed())
        }
        Format::Csv | Format::Jsonl => {
            let format = if part.file.format == Format::Csv { TextFormat::Csv } else { TextFormat::Jsonl };
            // Ranged reads of a few MiB, one ahead: few requests, and few
            // wake-ups of the I/O threads on a local file.
            let at = part.file.location.clone();
            let size = part.file.size;
            let chunks = futures::stream::iter((0..size).step_by(TEXT_CHUNK as usize))
                .map(move |start| {
                    let at = at.clone();
                    async move {
                        let range = start..(start + TEXT_CHUNK).min(size);
                        at.store().get_range(at.path(), range).await.map_err(store_err(&at))
                    }
                })
                .buffered(2);
            text::open(format, url.to_string(), chunks.boxed(), schema, columns, batch_rows).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{assemble, pieces};
    use bytes::Bytes;
    use std::ops::Range;

    /// Every set of ranges is fetched by sorted, disjoint GETs of at most
    /// `piece` bytes that cover it, and each range reassembles to its bytes.
    #[test]
    fn column_chunks_are_fetched_in_bounded_pieces_and_come_back_whole() {
        let object: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut cases: Vec<Vec<Range<u64>>> = vec![
            vec![],
            vec![0..10_000],
            vec![0..1000, 1000..2000, 2000..2500],
            vec![5..5, 9..10],
            vec![0..4000, 100..200, 3000..9000],
        ];
        for _ in 0..300 {
            let n = 1 + next(12);
            cases.push(
                (0..n)
                    .map(|_| {
                        let start = next(10_000);
                        start..(start + next(3000)).min(10_000)
                    })
                    .collect(),
            );
        }
        for ranges in cases {
            for (piece, gap) in [(1000, 100), (256, 0), (4096, 2000), (1, 0)] {
                let got = pieces(&ranges, piece, gap);
                for w in got.windows(2) {
                    assert!(w[0].end <= w[1].start, "{ranges:?}: sorted and disjoint: {got:?}");
                }
                for p in &got {
                    assert!(p.start < p.end && p.end - p.start <= piece, "{ranges:?}: piece {p:?} over {piece}");
                }
                let fetched: Vec<Bytes> =
                    got.iter().map(|p| Bytes::copy_from_slice(&object[p.start as usize..p.end as usize])).collect();
                for r in &ranges {
                    let bytes = assemble(r, &got, &fetched);
                    assert_eq!(&bytes[..], &object[r.start as usize..r.end as usize], "{ranges:?}: {r:?} from {got:?}");
                }
            }
        }
        // Chunks just under a piece come one GET each, sliced without a copy.
        let chunks: Vec<Range<u64>> = (0..10).map(|i| i * 900..(i + 1) * 900).collect();
        assert_eq!(pieces(&chunks, 1000, 100), chunks);
    }
}
