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

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, StringBuilder};
use arrow::compute::{CastOptions, cast_with_options, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::value::RawValue;

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
enum Value<'a> {
    Null,
    /// A CSV field: its type is whatever its text parses as.
    Field(&'a str),
    /// A JSON string: text, whatever it looks like.
    Str(Cow<'a, str>),
    /// A JSON number, as written; `true` when it is an integer.
    Num(&'a str, bool),
    Bool(bool),
    /// A JSON array or object, as JSON text.
    Nested(&'a str),
}

impl Value<'_> {
    fn text(&self) -> Option<&str> {
        match self {
            Value::Null => None,
            Value::Field(s) | Value::Num(s, _) | Value::Nested(s) => Some(s),
            Value::Str(s) => Some(s),
            Value::Bool(true) => Some("true"),
            Value::Bool(false) => Some("false"),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Value::Null => Kind::Null,
            Value::Str(_) | Value::Nested(_) => Kind::Text,
            Value::Num(_, true) => Kind::Int,
            Value::Num(_, false) => Kind::Float,
            Value::Bool(_) => Kind::Bool,
            Value::Field(s) => {
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

    /// A JSON value from its raw text, borrowing it where it can.
    fn from_json(raw: &RawValue) -> Result<Value<'_>, String> {
        let text = raw.get();
        Ok(match text.as_bytes()[0] {
            b'n' => Value::Null,
            b't' => Value::Bool(true),
            b'f' => Value::Bool(false),
            b'{' | b'[' => Value::Nested(text),
            b'"' if !text.contains('\\') => Value::Str(Cow::Borrowed(&text[1..text.len() - 1])),
            b'"' => Value::Str(Cow::Owned(serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?)),
            _ => Value::Num(text, !text.contains(['.', 'e', 'E'])),
        })
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

/// A JSON object's members in the order written, keys and values borrowed
/// from the line where they can be.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key;
        impl<'de> serde::de::DeserializeSeed<'de> for Key {
            type Value = Cow<'de, str>;
            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_str(self)
            }
        }
        impl<'de> serde::de::Visitor<'de> for Key {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_string()))
            }
        }
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key_seed(Key)? {
                    members.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Object)
    }
}

/// One record's values, borrowed from the record or the reader's buffers.
enum Record<'a> {
    /// CSV: the unescaped fields, end offsets into `text`.
    Fields { text: &'a str, ends: &'a [usize] },
    /// JSON Lines: the object's members.
    Object(Members<'a>),
}

impl Record<'_> {
    /// The value of the column at `header` position (CSV) or named `name`
    /// (JSON, where it is usually the member at position `hint`).
    fn get(&self, header: Option<usize>, hint: usize, name: &str) -> Result<Value<'_>, String> {
        match self {
            Record::Fields { text, ends } => Ok(match header {
                Some(i) => {
                    let start = if i == 0 { 0 } else { ends[i - 1] };
                    let field = &text[start..ends[i]];
                    if field.is_empty() { Value::Null } else { Value::Field(field) }
                }
                None => Value::Null,
            }),
            Record::Object(m) => {
                match m.0.get(hint).filter(|(k, _)| k == name).or_else(|| m.0.iter().find(|(k, _)| k == name)) {
                    Some((_, v)) => Value::from_json(v),
                    None => Ok(Value::Null),
                }
            }
        }
    }
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

    /// Bytes of the record being read that have no end yet.
    fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The error for a record that grew past [`crate::MAX_RECORD_BYTES`].
    fn too_long(&self, url: &str) -> StorageError {
        StorageError::Text {
            url: url.into(),
            reason: format!(
                "the record at line {} is longer than {} MiB (no line end found)\n  hint: check that this is a {} file with one record per line",
                self.line,
                crate::MAX_RECORD_BYTES >> 20,
                if self.quotes { "CSV" } else { "JSON Lines" }
            ),
        }
    }

    /// Where the next record starts, to split again from there.
    fn mark(&self) -> (usize, u64) {
        (self.start, self.line)
    }

    /// Split again from `mark` (no bytes pushed since): the records after
    /// it come again.
    fn rewind(&mut self, (start, line): (usize, u64)) {
        (self.start, self.scan, self.line, self.in_quotes) = (start, start, line, false);
    }

    /// The next complete record (its first line and the range of its
    /// bytes in `buf`, without the line terminator); at `eof`, the
    /// unterminated rest too. Blank lines are skipped.
    fn next(&mut self, eof: bool) -> Option<(u64, std::ops::Range<usize>)> {
        loop {
            let mut end = None;
            if self.quotes {
                while self.scan < self.buf.len() {
                    let b = self.buf[self.scan];
                    self.scan += 1;
                    if b == b'"' {
                        self.in_quotes = !self.in_quotes;
                    } else if b == b'\n' && !self.in_quotes {
                        end = Some(self.scan - 1);
                        break;
                    }
                }
            } else if let Some(i) = self.buf[self.scan..].iter().position(|b| *b == b'\n') {
                end = Some(self.scan + i);
                self.scan += i + 1;
            } else {
                self.scan = self.buf.len();
            }
            let end = match end {
                Some(e) => e,
                None if eof && self.start < self.buf.len() => self.buf.len(),
                None => return None,
            };
            let mut range = self.start..end;
            self.start = self.scan.max(end);
            let line = self.line;
            self.line += 1 + self.buf[range.clone()].iter().filter(|b| **b == b'\n').count() as u64;
            if range.end > range.start && self.buf[range.end - 1] == b'\r' {
                range.end -= 1;
            }
            if !self.buf[range.clone()].iter().all(u8::is_ascii_whitespace) {
                return Some((line, range));
            }
        }
    }
}

/// Reads one file's records and gathers them into batches and quarantine.
struct TextReader {
    format: TextFormat,
    url: String,
    csv: csv_core::Reader,
    /// CSV column names, from the header.
    header: Vec<String>,
    /// Reused buffers of the CSV field splitter.
    out: Vec<u8>,
    ends: Vec<usize>,
}

impl TextReader {
    fn new(format: TextFormat, url: String) -> Self {
        TextReader { format, url, csv: csv_core::Reader::new(), header: Vec::new(), out: Vec::new(), ends: Vec::new() }
    }

    /// Split one record into its values, or say why it cannot be.
    fn parse<'a>(&'a mut self, raw: &'a [u8]) -> Result<Record<'a>, String> {
        match self.format {
            TextFormat::Csv => {
                let n = csv_fields(&mut self.csv, raw, &mut self.out, &mut self.ends);
                if !self.header.is_empty() && n != self.header.len() {
                    return Err(format!("has {n} fields, the header has {}", self.header.len()));
                }
                let end = self.ends[..n].last().copied().unwrap_or(0);
                let text = std::str::from_utf8(&self.out[..end]).map_err(|_| "not valid UTF-8".to_string())?;
                // Each field on its own: two invalid halves of a character
                // on either side of a comma join into a valid whole.
                if !self.ends[..n].iter().all(|&e| text.is_char_boundary(e)) {
                    return Err("not valid UTF-8".to_string());
                }
                Ok(Record::Fields { text, ends: &self.ends[..n] })
            }
            TextFormat::Jsonl => match serde_json::from_slice::<Members>(raw) {
                Ok(m) => Ok(Record::Object(m)),
                Err(e) if e.is_data() => Err("not a JSON object".to_string()),
                Err(e) => Err(format!("not valid JSON: {e}")),
            },
        }
    }

    /// The schema the head's records imply: CSV columns in header order,
    /// JSON keys in order of first appearance; records that do not parse
    /// are ignored.
    fn infer(&mut self, head: &[u8], records: &[(u64, std::ops::Range<usize>)]) -> Schema {
        let mut columns: Vec<(String, Kind)> = self.header.iter().map(|h| (h.clone(), Kind::Null)).collect();
        // By name, for JSON members: a linear search per member would cost
        // columns^2 on a wide head.
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (_, range) in records {
            if columns.len() > crate::MAX_COLUMNS {
                break; // refused by the caller
            }
            match self.parse(&head[range.clone()]) {
                Ok(record @ Record::Fields { .. }) => {
                    for (i, col) in columns.iter_mut().enumerate() {
                        let kind = record.get(Some(i), i, &col.0).map_or(Kind::Text, |v| v.kind());
                        col.1 = col.1.join(kind);
                    }
                }
                Ok(Record::Object(members)) => {
                    for (key, raw) in &members.0 {
                        let kind = Value::from_json(raw).map_or(Kind::Text, |v| v.kind());
                        match index.get(key.as_ref()) {
                            Some(&i) => columns[i].1 = columns[i].1.join(kind),
                            None => {
                                index.insert(key.to_string(), columns.len());
                                columns.push((key.to_string(), kind));
                            }
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
}

/// Split one CSV record into its unescaped fields (RFC 4180): their text in
/// `out`, the end of each in `ends`; returns the number of fields.
fn csv_fields(reader: &mut csv_core::Reader, raw: &[u8], out: &mut Vec<u8>, ends: &mut Vec<usize>) -> usize {
    reader.reset();
    if out.len() < raw.len() + 1 {
        out.resize(raw.len() + 1, 0);
    }
    if ends.is_empty() {
        ends.resize(16, 0);
    }
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
            csv_core::ReadRecordResult::Record | csv_core::ReadRecordResult::End => return nend,
        }
    }
}

/// A batch's worth of records, gathered column by column as text.
struct Gather {
    schema: SchemaRef,
    /// Each schema column's position in the CSV header.
    header_index: Vec<Option<usize>>,
    columns: Vec<StringBuilder>,
    /// Every record's text, one after another, and where each ends.
    raw: Vec<u8>,
    raw_ends: Vec<usize>,
    lines: Vec<u64>,
    /// Why a record cannot be read (its columns hold nulls).
    reasons: Vec<Option<String>>,
}

impl Gather {
    fn new(schema: SchemaRef, header: &[String]) -> Self {
        let header_index = schema.fields().iter().map(|f| header.iter().position(|h| h == f.name())).collect();
        let columns = schema.fields().iter().map(|_| StringBuilder::new()).collect();
        Gather {
            schema,
            header_index,
            columns,
            raw: Vec::new(),
            raw_ends: Vec::new(),
            lines: Vec::new(),
            reasons: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.lines.len()
    }

    /// Add one record: one value (or a null) to every column, and the
    /// reason when it cannot be read (its row is then filtered out).
    fn push(&mut self, reader: &mut TextReader, line: u64, raw: &[u8]) {
        self.raw.extend_from_slice(raw);
        self.raw_ends.push(self.raw.len());
        self.lines.push(line);
        let Gather { schema, header_index, columns, .. } = self;
        let failed = match reader.parse(raw) {
            Ok(record) => {
                let mut failed = None;
                // An object with many members is looked up by name: a scan
                // per column would cost columns x members.
                let index: Option<std::collections::HashMap<&str, usize>> = match &record {
                    Record::Object(m) if m.0.len() > 32 => {
                        let mut index = std::collections::HashMap::with_capacity(m.0.len());
                        for (i, (key, _)) in m.0.iter().enumerate() {
                            index.entry(key.as_ref()).or_insert(i);
                        }
                        Some(index)
                    }
                    _ => None,
                };
                for (j, (column, (field, header))) in
                    columns.iter_mut().zip(schema.fields().iter().zip(header_index.iter())).enumerate()
                {
                    let value = match (&record, &index) {
                        (Record::Object(m), Some(index)) => match index.get(field.name().as_str()) {
                            Some(&i) => Value::from_json(m.0[i].1),
                            None => Ok(Value::Null),
                        },
                        _ => record.get(*header, j, field.name()),
                    };
                    match value {
                        Ok(value) => column.append_option(value.text()),
                        Err(why) => {
                            column.append_null();
                            failed.get_or_insert(why);
                        }
                    }
                }
                failed
            }
            Err(why) => {
                for column in columns.iter_mut() {
                    column.append_null();
                }
                Some(why)
            }
        };
        self.reasons.push(failed);
    }

    /// Convert the gathered records to a batch of the schema, and those
    /// that do not fit to quarantine rows; start afresh.
    fn finish(&mut self, url: &str) -> Result<(Option<RecordBatch>, Option<RecordBatch>), StorageError> {
        let arrow_err =
            |e: arrow::error::ArrowError| StorageError::Text { url: url.to_string(), reason: e.to_string() };
        let mut reasons = std::mem::take(&mut self.reasons);
        let mut typed: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (field, builder) in self.schema.fields().iter().zip(&mut self.columns) {
            let text = builder.finish();
            let options = CastOptions { safe: true, ..Default::default() };
            let values = cast_with_options(&text, field.data_type(), &options).map_err(arrow_err)?;
            if values.null_count() > text.null_count() {
                for (i, reason) in reasons.iter_mut().enumerate() {
                    if reason.is_none() && text.is_valid(i) && values.is_null(i) {
                        *reason = Some(format!(
                            "column {:?}: {:?} is not a valid {}",
                            field.name(),
                            text.value(i),
                            field.data_type()
                        ));
                    }
                }
            }
            typed.push(values);
        }
        let all = RecordBatch::try_new(self.schema.clone(), typed).map_err(arrow_err)?;
        let (raw, ends, lines) =
            (std::mem::take(&mut self.raw), std::mem::take(&mut self.raw_ends), std::mem::take(&mut self.lines));
        if reasons.iter().all(Option::is_none) {
            return Ok(((all.num_rows() > 0).then_some(all), None));
        }
        let keep = BooleanArray::from(reasons.iter().map(|r| r.is_none()).collect::<Vec<_>>());
        let rows = filter_record_batch(&all, &keep).map_err(arrow_err)?;
        let (mut q_lines, mut q_reasons, mut q_records) = (Vec::new(), Vec::new(), Vec::new());
        for (i, reason) in reasons.into_iter().enumerate() {
            if let Some(why) = reason {
                let start = if i == 0 { 0 } else { ends[i - 1] };
                q_lines.push(Some(lines[i] as i64));
                q_reasons.push(why);
                q_records.push(String::from_utf8_lossy(&raw[start..ends[i]]).into_owned());
            }
        }
        let quarantined = quarantine::batch(url, q_lines, q_reasons, q_records);
        Ok(((rows.num_rows() > 0).then_some(rows), Some(quarantined)))
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
    let mut reader = TextReader::new(format, url.clone());

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
        // The header, however long the head had to be to hold it.
        let range = loop {
            if let Some((_, range)) = splitter.next(eof) {
                break range;
            }
            if eof {
                return Err(StorageError::Text {
                    url,
                    reason: "the file is empty: a CSV file starts with a header".into(),
                });
            }
            if splitter.pending() > crate::MAX_RECORD_BYTES {
                return Err(splitter.too_long(&url));
            }
            match chunks.next().await {
                Some(chunk) => splitter.push(&chunk?),
                None => eof = true,
            }
        };
        let raw = splitter.buf[range].to_vec();
        reader.header = match reader.parse(&raw) {
            Ok(Record::Fields { text, ends }) => {
                let mut start = 0;
                ends.iter()
                    .map(|&end| {
                        let name = text[start..end].to_string();
                        start = end;
                        name
                    })
                    .collect()
            }
            Ok(Record::Object(_)) => unreachable!("CSV records are fields"),
            Err(why) => return Err(StorageError::Text { url, reason: format!("the header row is {why}") }),
        };
    }
    let too_wide = |n: usize| StorageError::Text {
        url: url.clone(),
        reason: format!(
            "{n} columns, more than the {} wasmpipe reads from one file\n  hint: split the table into narrower files, or read fewer columns with a declared `schema`",
            crate::MAX_COLUMNS
        ),
    };
    if declared.is_none() && reader.header.len() > crate::MAX_COLUMNS {
        return Err(too_wide(reader.header.len()));
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
        None => {
            // Infer from the head's records, then split them again to read.
            let mark = splitter.mark();
            let mut head = Vec::new();
            while let Some(record) = splitter.next(eof) {
                head.push(record);
            }
            let schema = reader.infer(&splitter.buf, &head);
            splitter.rewind(mark);
            Arc::new(schema)
        }
    };
    let schema = match columns {
        Some(cols) => Arc::new(schema.project(&crate::read::project(&schema, cols, &url)?).expect("indices in range")),
        None => schema,
    };
    if schema.fields().len() > crate::MAX_COLUMNS {
        return Err(too_wide(schema.fields().len()));
    }
    let batch_rows = crate::rows_for_width(batch_rows, schema.fields().len());
    let gather = Gather::new(schema, &reader.header);

    struct State {
        reader: TextReader,
        splitter: Splitter,
        chunks: BoxStream<'static, Result<Bytes, StorageError>>,
        gather: Gather,
        out: VecDeque<Chunk>,
        eof: bool,
        batch_rows: usize,
    }
    let state = State { reader, splitter, chunks, gather, out: VecDeque::new(), eof, batch_rows };
    let stream = futures::stream::try_unfold(state, |mut s| async move {
        loop {
            if let Some(chunk) = s.out.pop_front() {
                return Ok(Some((chunk, s)));
            }
            // Gather a batch's worth of records, reading on as needed.
            // A batch ends at `batch_rows` records or at a batch's worth
            // of text, whichever comes first: long records make short
            // batches, not large ones.
            while s.gather.len() < s.batch_rows && s.gather.raw.len() < crate::MAX_BATCH_TEXT_BYTES {
                if let Some((line, range)) = s.splitter.next(s.eof) {
                    s.gather.push(&mut s.reader, line, &s.splitter.buf[range]);
                    continue;
                }
                if s.eof {
                    break;
                }
                if s.splitter.pending() > crate::MAX_RECORD_BYTES {
                    return Err(s.splitter.too_long(&s.reader.url));
                }
                match s.chunks.next().await {
                    Some(chunk) => s.splitter.push(&chunk?),
                    None => s.eof = true,
                }
            }
            if s.gather.len() == 0 {
                return Ok(None);
            }
            let (rows, quarantined) = s.gather.finish(&s.reader.url)?;
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
        let mut take = |s: &mut Splitter, eof| {
            while let Some((l, r)) = s.next(eof) {
                out.push((l, String::from_utf8(s.buf[r].to_vec()).unwrap()));
            }
        };
        for piece in text.as_bytes().chunks(chunk) {
            s.push(piece);
            take(&mut s, false);
        }
        take(&mut s, true);
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

    fn values(format: TextFormat, header: &[&str], raw: &str) -> Result<Vec<Option<String>>, String> {
        let mut reader = TextReader::new(format, "test".into());
        reader.header = header.iter().map(|h| h.to_string()).collect();
        let record = reader.parse(raw.as_bytes())?;
        header
            .iter()
            .enumerate()
            .map(|(i, name)| record.get(Some(i), i, name).map(|v| v.text().map(str::to_string)))
            .collect()
    }

    #[test]
    fn records_split_into_values() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            values(TextFormat::Csv, &["a", "b", "c", "d"], "1,\"a,b\",,\"say \"\"hi\"\"\""),
            Ok(vec![some("1"), some("a,b"), None, some("say \"hi\"")])
        );
        assert_eq!(values(TextFormat::Csv, &["a", "b"], "1"), Err("has 1 fields, the header has 2".into()));
        assert_eq!(
            values(
                TextFormat::Jsonl,
                &["a", "b", "c", "d", "e"],
                r#"{"e": [1, {"x": 2}], "a": 1.5, "b": "q\"\u00e9", "c": null, "z": true}"#
            ),
            Ok(vec![some("1.5"), some("q\"é"), None, None, some("[1, {\"x\": 2}]")])
        );
        // Found by fuzzing: the halves of one character on either side of
        // a comma make valid UTF-8 only together.
        let halves = [0xef, 0xab, b',', 0xbf];
        let mut reader = TextReader::new(TextFormat::Csv, "x.csv".into());
        assert!(matches!(reader.parse(&halves), Err(why) if why == "not valid UTF-8"));
        assert_eq!(values(TextFormat::Jsonl, &["a"], "[1]"), Err("not a JSON object".into()));
        assert!(values(TextFormat::Jsonl, &["a"], "{\"a\": ").unwrap_err().starts_with("not valid JSON"));
    }

    #[test]
    fn kinds_widen_as_values_are_seen() {
        let k = |s: &str| Value::Field(s).kind();
        assert_eq!(k("12"), Kind::Int);
        assert_eq!(k("1.5e3"), Kind::Float);
        assert_eq!(k("TRUE"), Kind::Bool);
        assert_eq!(k("abc"), Kind::Text);
        assert_eq!(Kind::Int.join(Kind::Float), Kind::Float);
        assert_eq!(Kind::Null.join(Kind::Bool), Kind::Bool);
        assert_eq!(Kind::Int.join(Kind::Bool), Kind::Text);
        let json = |s: &str| Value::from_json(&serde_json::from_str::<Box<RawValue>>(s).unwrap()).unwrap().kind();
        assert_eq!(json("\"12\""), Kind::Text);
        assert_eq!(json("[1]"), Kind::Text);
        assert_eq!(json("3"), Kind::Int);
        assert_eq!(json("3e2"), Kind::Float);
    }
}
