//! Text inputs, CSV and JSON Lines, read record by record.
//!
//! Every record that parses becomes a row. One that does not (a ragged
//! CSV line, a line that is not a JSON object, a value that is not of its
//! column's type) is quarantined with the reason, its line number and its
//! text: never dropped, and never failing the whole file.
//!
//! Columns and types come from the stage's declared schema, or are inferred
//! from the first MiB of the file: integers, floats, booleans (`true` /
//! `false`), else text; JSON strings, arrays and objects are text. A value
//! later in the file that does not fit the inferred type is quarantined
//! like any other; declare the schema to be certain.
//!
//! Values are converted column by column with Arrow's cast kernels (the
//! same parsing as Arrow's own CSV reader); a non-empty value the cast
//! turns into a null is a value that does not parse.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, StringBuilder};
use arrow::compute::{CastOptions, cast_with_options, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::StorageError;
use crate::quarantine;
use crate::read::{BatchStream, Chunk};

/// The text formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextFormat {
    /// CSV with a header row (RFC 4180 quoting).
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// Bytes read before inferring a schema.
const INFER_BYTES: usize = 1 << 20;

/// One value as read, before conversion to its column's type.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    /// A CSV field: its type is whatever its text parses as.
    Field(String),
    /// A JSON string: text, whatever it looks like.
    Str(String),
    /// A JSON number, as written; `true` when it is an integer.
    Num(String, bool),
    Bool(bool),
    /// A JSON array or object, as JSON text.
    Nested(String),
}

impl Cell {
    fn text(&self) -> Option<String> {
        match self {
            Cell::Null => None,
            Cell::Field(s) | Cell::Str(s) | Cell::Num(s, _) | Cell::Nested(s) => Some(s.clone()),
            Cell::Bool(b) => Some(b.to_string()),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Cell::Null => Kind::Null,
            Cell::Str(_) | Cell::Nested(_) => Kind::Text,
            Cell::Num(_, true) => Kind::Int,
            Cell::Num(_, false) => Kind::Float,
            Cell::Bool(_) => Kind::Bool,
            Cell::Field(s) => {
                if s.parse::<i64>().is_ok() {
                    Kind::Int
                } else if s.parse::<f64>().is_ok() {
                    Kind::Float
                } else if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") {
                    Kind::Bool
                } else {
                    Kind::Text
                }
            }
        }
    }

    fn from_json(v: serde_json::Value) -> Cell {
        use serde_json::Value;
        match v {
            Value::Null => Cell::Null,
            Value::Bool(b) => Cell::Bool(b),
            Value::Number(n) => Cell::Num(n.to_string(), n.is_i64() || n.is_u64()),
            Value::String(s) => Cell::Str(s),
            nested => Cell::Nested(nested.to_string()),
        }
    }
}

/// What inference has seen of a column: the narrowest type that holds
/// every value so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Int,
    Float,
    Text,
}

impl Kind {
    fn join(self, other: Kind) -> Kind {
        use Kind::*;
        match (self, other) {
            (a, b) if a == b => a,
            (Null, x) | (x, Null) => x,
            (Int, Float) | (Float, Int) => Float,
            _ => Text,
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Kind::Bool => DataType::Boolean,
            Kind::Int => DataType::Int64,
            Kind::Float => DataType::Float64,
            Kind::Null | Kind::Text => DataType::Utf8,
        }
    }
}

/// One record of the file: where it starts, its text, and its values (by
/// CSV header position, or JSON key) or why it cannot be read.
struct Record {
    line: u64,
    raw: Vec<u8>,
    values: Result<Values, String>,
}

enum Values {
    Fields(Vec<Cell>),
    /// Keys in the order written.
    Object(indexmap::IndexMap<String, serde_json::Value>),
}

/// Cuts a byte stream into records: lines, except that a CSV newline
/// inside double quotes belongs to its field.
struct Splitter {
    buf: Vec<u8>,
    start: usize,
    scan: usize,
    in_quotes: bool,
    quotes: bool,
    line: u64,
}

impl Splitter {
    fn new(format: TextFormat) -> Self {
        Splitter { buf: Vec::new(), start: 0, scan: 0, in_quotes: false, quotes: format == TextFormat::Csv, line: 1 }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.scan -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        if self.line == 1 && self.buf.starts_with(b"\xEF\xBB\xBF") && self.start == 0 {
            // A UTF-8 byte order mark is not part of the first field.
            self.buf.drain(..3);
            self.scan = self.scan.saturating_sub(3);
        }
    }

    /// The next complete record (its first line and bytes, without the line
    /// terminator); at `eof`, the unterminated rest too. Blank lines are
    /// skipped.
    fn next(&mut self, eof: bool) -> Option<(u64, Vec<u8>)> {
        loop {
            let mut end = None;
            while self.scan < self.buf.len() {
                let b = self.buf[self.scan];
                self.scan += 1;
                if self.quotes && b == b'"' {
                    self.in_quotes = !self.in_quotes;
                } else if b == b'\n' && !self.in_quotes {
                    end = Some(self.scan - 1);
                    break;
                }
            }
            let end = match end {
                Some(e) => e,
                None if eof && self.start < self.buf.len() => self.buf.len(),
                None => return None,
            };
            let mut raw = self.buf[self.start..end].to_vec();
            self.start = self.scan;
            let line = self.line;
            self.line += 1 + raw.iter().filter(|b| **b == b'\n').count() as u64;
            if raw.last() == Some(&b'\r') {
                raw.pop();
            }
            if !raw.iter().all(u8::is_ascii_whitespace) {
                return Some((line, raw));
            }
        }
    }
}

/// Split one CSV record into its fields (RFC 4180).
fn csv_fields(reader: &mut csv_core::Reader, raw: &[u8]) -> Result<Vec<String>, String> {
    reader.reset();
    let mut out = vec![0u8; raw.len() + 1];
    let mut ends = vec![0usize; raw.iter().filter(|b| **b == b',').count() + 1];
    let (mut nin, mut nout, mut nend) = (0, 0, 0);
    loop {
        let input = if nin < raw.len() { &raw[nin..] } else { &[][..] };
        let (result, i, o, e) = reader.read_record(input, &mut out[nout..], &mut ends[nend..]);
        nin += i;
        nout += o;
        nend += e;
        match result {
            csv_core::ReadRecordResult::InputEmpty => continue,
            csv_core::ReadRecordResult::OutputFull => out.resize(out.len() * 2, 0),
            csv_core::ReadRecordResult::OutputEndsFull => ends.resize(ends.len() * 2, 0),
            csv_core::ReadRecordResult::Record | csv_core::ReadRecordResult::End => break,
        }
    }
    let mut fields = Vec::with_capacity(nend);
    let mut from = 0;
    for &end in &ends[..nend] {
        let field = std::str::from_utf8(&out[from..end]).map_err(|_| "not valid UTF-8".to_string())?;
        fields.push(field.to_string());
        from = end;
    }
    Ok(fields)
}

/// Reads one file's records and turns them into batches and quarantine.
struct TextReader {
    format: TextFormat,
    url: String,
    csv: csv_core::Reader,
    /// CSV column names, from the header.
    header: Vec<String>,
}

impl TextReader {
    fn parse(&mut self, line: u64, raw: Vec<u8>) -> Record {
        let values = match self.format {
            TextFormat::Csv => csv_fields(&mut self.csv, &raw).and_then(|fields| {
                if fields.len() != self.header.len() {
                    return Err(format!("has {} fields, the header has {}", fields.len(), self.header.len()));
                }
                Ok(Values::Fields(
                    fields.into_iter().map(|f| if f.is_empty() { Cell::Null } else { Cell::Field(f) }).collect(),
                ))
            }),
            TextFormat::Jsonl => match serde_json::from_slice::<indexmap::IndexMap<String, serde_json::Value>>(&raw) {
                Ok(map) => Ok(Values::Object(map)),
                Err(e) if e.is_data() => Err("not a JSON object".to_string()),
                Err(e) => Err(format!("not valid JSON: {e}")),
            },
        };
        Record { line, raw, values }
    }

    /// The value of `column` in a record.
    fn cell(&self, values: &Values, column: &str) -> Cell {
        match values {
            Values::Fields(cells) => {
                self.header.iter().position(|h| h == column).map_or(Cell::Null, |i| cells[i].clone())
            }
            Values::Object(map) => map.get(column).cloned().map_or(Cell::Null, Cell::from_json),
        }
    }

    /// The schema the records imply: CSV columns in header order, JSON keys
    /// in order of first appearance; records that do not parse are ignored.
    fn infer(&self, records: &VecDeque<Record>) -> Schema {
        let mut columns: Vec<(String, Kind)> = self.header.iter().map(|h| (h.clone(), Kind::Null)).collect();
        for record in records {
            match &record.values {
                Ok(Values::Fields(cells)) => {
                    for (col, cell) in columns.iter_mut().zip(cells) {
                        col.1 = col.1.join(cell.kind());
                    }
                }
                Ok(Values::Object(map)) => {
                    for (key, value) in map {
                        let kind = Cell::from_json(value.clone()).kind();
                        match columns.iter_mut().find(|(name, _)| name == key) {
                            Some(col) => col.1 = col.1.join(kind),
                            None => columns.push((key.clone(), kind)),
                        }
                    }
                }
                Err(_) => {}
            }
        }
        Schema::new(
            columns.into_iter().map(|(name, kind)| Field::new(name, kind.data_type(), true)).collect::<Vec<_>>(),
        )
    }

    /// Convert records to a batch of `schema`, and those that do not fit to
    /// quarantine rows.
    fn convert(
        &self,
        records: Vec<Record>,
        schema: &SchemaRef,
    ) -> Result<(Option<RecordBatch>, Option<RecordBatch>), StorageError> {
        let arrow_err =
            |e: arrow::error::ArrowError| StorageError::Text { url: self.url.clone(), reason: e.to_string() };
        let mut reasons: Vec<Option<String>> = records.iter().map(|r| r.values.as_ref().err().cloned()).collect();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let mut text = StringBuilder::new();
            for record in &records {
                match &record.values {
                    Ok(values) => text.append_option(self.cell(values, field.name()).text()),
                    Err(_) => text.append_null(),
                }
            }
            let text = text.finish();
            let options = CastOptions { safe: true, ..Default::default() };
            let typed = cast_with_options(&text, field.data_type(), &options).map_err(arrow_err)?;
            for (i, reason) in reasons.iter_mut().enumerate() {
                if reason.is_none() && text.is_valid(i) && typed.is_null(i) {
                    *reason = Some(format!(
                        "column {:?}: {:?} is not a valid {}",
                        field.name(),
                        text.value(i),
                        field.data_type()
                    ));
                }
            }
            columns.push(typed);
        }
        let keep = BooleanArray::from(reasons.iter().map(|r| r.is_none()).collect::<Vec<_>>());
        let all = RecordBatch::try_new(schema.clone(), columns).map_err(arrow_err)?;
        let rows = filter_record_batch(&all, &keep).map_err(arrow_err)?;
        let rejected: Vec<(u64, String, String)> = records
            .iter()
            .zip(reasons)
            .filter_map(|(r, reason)| reason.map(|why| (r.line, why, String::from_utf8_lossy(&r.raw).into_owned())))
            .collect();
        let quarantined = (!rejected.is_empty()).then(|| {
            let (lines, rest): (Vec<_>, Vec<_>) =
                rejected.into_iter().map(|(l, why, raw)| (Some(l as i64), (why, raw))).unzip();
            let (reasons, raws): (Vec<_>, Vec<_>) = rest.into_iter().unzip();
            quarantine::batch(&self.url, lines, reasons, raws)
        });
        Ok(((rows.num_rows() > 0).then_some(rows), quarantined))
    }
}

/// Stream a text file as batches of at most `batch_rows` rows, and
/// quarantine rows. `declared` is the schema to read (else inferred);
/// `columns` a projection of it.
pub(crate) async fn open(
    format: TextFormat,
    url: String,
    chunks: BoxStream<'static, Result<Bytes, StorageError>>,
    declared: Option<SchemaRef>,
    columns: Option<&[String]>,
    batch_rows: usize,
) -> Result<BatchStream, StorageError> {
    let mut chunks = chunks;
    let mut splitter = Splitter::new(format);
    let mut reader = TextReader { format, url: url.clone(), csv: csv_core::Reader::new(), header: Vec::new() };

    // Read the head: enough to infer a schema from.
    let mut eof = false;
    let mut read = 0;
    while read < INFER_BYTES {
        match chunks.next().await {
            Some(chunk) => {
                let chunk = chunk?;
                read += chunk.len();
                splitter.push(&chunk);
            }
            None => {
                eof = true;
                break;
            }
        }
    }
    if format == TextFormat::Csv {
        let Some((_, raw)) = splitter.next(eof) else {
            return Err(StorageError::Text {
                url,
                reason: "the file is empty: a CSV file starts with a header".into(),
            });
        };
        reader.header = csv_fields(&mut reader.csv, &raw)
            .map_err(|why| StorageError::Text { url: url.clone(), reason: format!("the header row is {why}") })?;
    }
    let mut head = VecDeque::new();
    while let Some((line, raw)) = splitter.next(eof) {
        head.push_back(reader.parse(line, raw));
    }
    let schema = match declared {
        Some(schema) => {
            if format == TextFormat::Csv
                && let Some(missing) = schema.fields().iter().find(|f| !reader.header.contains(f.name()))
            {
                return Err(StorageError::MissingColumn {
                    url,
                    column: missing.name().clone(),
                    available: reader.header.join(", "),
                });
            }
            schema
        }
        None => Arc::new(reader.infer(&head)),
    };
    let schema = match columns {
        Some(cols) => Arc::new(schema.project(&crate::read::project(&schema, cols, &url)?).expect("indices in range")),
        None => schema,
    };

    struct State {
        reader: TextReader,
        splitter: Splitter,
        chunks: BoxStream<'static, Result<Bytes, StorageError>>,
        ready: VecDeque<Record>,
        out: VecDeque<Chunk>,
        eof: bool,
        schema: SchemaRef,
        batch_rows: usize,
    }
    let state = State { reader, splitter, chunks, ready: head, out: VecDeque::new(), eof, schema, batch_rows };
    let stream = futures::stream::try_unfold(state, |mut s| async move {
        loop {
            if let Some(chunk) = s.out.pop_front() {
                return Ok(Some((chunk, s)));
            }
            // Fill a batch's worth of records, reading on as needed.
            while s.ready.len() < s.batch_rows {
                if let Some((line, raw)) = s.splitter.next(s.eof) {
                    let record = s.reader.parse(line, raw);
                    s.ready.push_back(record);
                    continue;
                }
                if s.eof {
                    break;
                }
                match s.chunks.next().await {
                    Some(chunk) => s.splitter.push(&chunk?),
                    None => s.eof = true,
                }
            }
            if s.ready.is_empty() {
                return Ok(None);
            }
            let n = s.ready.len().min(s.batch_rows);
            let records: Vec<Record> = s.ready.drain(..n).collect();
            let (rows, quarantined) = s.reader.convert(records, &s.schema)?;
            s.out.extend(rows.map(Chunk::Rows));
            s.out.extend(quarantined.map(Chunk::Quarantined));
        }
    });
    Ok(stream.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(format: TextFormat, text: &str, chunk: usize) -> Vec<(u64, String)> {
        let mut s = Splitter::new(format);
        let mut out = Vec::new();
        for piece in text.as_bytes().chunks(chunk) {
            s.push(piece);
            while let Some((l, r)) = s.next(false) {
                out.push((l, String::from_utf8(r).unwrap()));
            }
        }
        while let Some((l, r)) = s.next(true) {
            out.push((l, String::from_utf8(r).unwrap()));
        }
        out
    }

    #[test]
    fn splitter_keeps_quoted_newlines_and_counts_lines_at_any_chunking() {
        let text = "\u{feff}a,b\r\n1,\"x\ny\"\n\n2,\"say \"\"hi\"\"\"\n3,z";
        for chunk in [1, 2, 3, 7, 100] {
            assert_eq!(
                records(TextFormat::Csv, text, chunk),
                vec![
                    (1, "a,b".to_string()),
                    (2, "1,\"x\ny\"".to_string()),
                    (5, "2,\"say \"\"hi\"\"\"".to_string()),
                    (6, "3,z".to_string())
                ],
                "chunk {chunk}"
            );
        }
        // JSON Lines split on every newline, quotes or not.
        assert_eq!(records(TextFormat::Jsonl, "{\"a\":\"\\\"\"}\n{}\n", 3).len(), 2);
    }

    #[test]
    fn csv_fields_unquote() {
        let mut r = csv_core::Reader::new();
        assert_eq!(csv_fields(&mut r, b"1,\"a,b\",,\"say \"\"hi\"\"\"").unwrap(), ["1", "a,b", "", "say \"hi\""]);
        assert_eq!(csv_fields(&mut r, b"x").unwrap(), ["x"]);
    }

    #[test]
    fn kinds_widen_as_values_are_seen() {
        let k = |s: &str| Cell::Field(s.into()).kind();
        assert_eq!(k("12"), Kind::Int);
        assert_eq!(k("1.5e3"), Kind::Float);
        assert_eq!(k("TRUE"), Kind::Bool);
        assert_eq!(k("abc"), Kind::Text);
        assert_eq!(Kind::Int.join(Kind::Float), Kind::Float);
        assert_eq!(Kind::Null.join(Kind::Bool), Kind::Bool);
        assert_eq!(Kind::Int.join(Kind::Bool), Kind::Text);
        assert_eq!(Cell::from_json(serde_json::json!("12")).kind(), Kind::Text);
        assert_eq!(Cell::from_json(serde_json::json!([1])).kind(), Kind::Text);
        assert_eq!(Cell::from_json(serde_json::json!(3)).kind(), Kind::Int);
    }
}
