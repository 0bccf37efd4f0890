//! The quarantine: rows set aside instead of passed on, each with why.
//!
//! Every stage output may have one, under `_quarantine/` beside its parts,
//! written by the same tasks and listed by the same commit record. It has
//! one schema whatever set the rows aside, so it can be read as one table:
//!
//! | column | type | what |
//! | --- | --- | --- |
//! | `source` | utf8 | the file the row was read from |
//! | `line` | int64 | its line in that file, for text inputs (else null) |
//! | `reason` | utf8 | why it was set aside |
//! | `record` | utf8 | the row: the text as read, or a JSON object |

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

/// Where quarantined rows live, within a stage's output prefix.
pub const QUARANTINE_DIR: &str = "_quarantine";

/// The quarantine's schema.
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("source", DataType::Utf8, false),
            Field::new("line", DataType::Int64, true),
            Field::new("reason", DataType::Utf8, false),
            Field::new("record", DataType::Utf8, false),
        ]))
    });
    SCHEMA.clone()
}

/// Quarantine rows from `source`: one line (or null), reason and record each.
pub fn batch(source: &str, lines: Vec<Option<i64>>, reasons: Vec<String>, records: Vec<String>) -> RecordBatch {
    let n = records.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![source; n])),
        Arc::new(Int64Array::from(lines)),
        Arc::new(StringArray::from(reasons)),
        Arc::new(StringArray::from(records)),
    ];
    RecordBatch::try_new(schema(), columns).expect("columns match the schema")
}

/// Quarantine rows a stage set aside: each row rendered as a JSON object
/// (nulls explicit), with its reason (a utf8 array, one per row).
pub fn of_rows(source: &str, rows: &RecordBatch, reasons: &ArrayRef) -> Result<RecordBatch, ArrowError> {
    let reasons = reasons
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| ArrowError::InvalidArgumentError("quarantine reasons must be utf8".into()))?;
    let mut buf = Vec::new();
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
    writer.write(rows)?;
    writer.finish()?;
    drop(writer);
    let text = String::from_utf8(buf).map_err(|e| ArrowError::JsonError(e.to_string()))?;
    let records: Vec<String> = text.lines().map(str::to_string).collect();
    if records.len() != rows.num_rows() {
        return Err(ArrowError::JsonError(format!("{} rows rendered as {} lines", rows.num_rows(), records.len())));
    }
    let reasons = reasons.iter().map(|r| r.unwrap_or_default().to_string()).collect();
    Ok(batch(source, vec![None; records.len()], reasons, records))
}

/// Most distinct quarantine reasons [`reasons`] tells apart.
pub const MAX_DISTINCT_REASONS: usize = 10_000;

/// The rows of the quarantine that `record` commits below `at` (the
/// output), counted by reason: the total, and the reasons, the most
/// frequent first, at most `most` of them and the rest as one entry
/// `(N other reasons)`.
pub async fn reasons(
    at: &crate::Location,
    record: &crate::commit::CommitRecord,
    most: usize,
) -> Result<(u64, Vec<(String, u64)>), crate::StorageError> {
    use arrow::array::{Array, AsArray};
    use futures::StreamExt;

    use crate::read::{self, Chunk, Format};
    let files: Vec<read::InputFile> = record
        .quarantine
        .iter()
        .map(|p| read::InputFile { location: at.child(&p.name), size: p.bytes, version: None, format: Format::Parquet })
        .collect();
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    let mut uncounted = 0u64;
    let reason = ["reason".to_string()];
    for part in read::partitions(&files).await? {
        let mut stream = read::open(&part, Some(&reason), 8192, None).await?;
        while let Some(chunk) = stream.next().await {
            if let Chunk::Rows(batch) = chunk? {
                let Some(strings) = batch.column(0).as_string_opt::<i32>() else {
                    return Err(crate::StorageError::CorruptCommit {
                        url: part.file.location.url().into(),
                        reason: "the quarantine's reason column is not utf8".into(),
                    });
                };
                for i in 0..strings.len() {
                    let r = if strings.is_null(i) { "(none)" } else { strings.value(i) };
                    let full = counts.len() >= MAX_DISTINCT_REASONS;
                    match counts.get_mut(r) {
                        Some(n) => *n += 1,
                        // Reasons often quote the value that failed, so
                        // there may be as many as rows: past
                        // MAX_DISTINCT_REASONS, new ones are only counted.
                        None if full => uncounted += 1,
                        None => {
                            counts.insert(r.to_string(), 1);
                        }
                    }
                }
            }
        }
    }
    let total = counts.values().sum::<u64>() + uncounted;
    let mut by_count: Vec<(String, u64)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if by_count.len() > most || uncounted > 0 {
        let cut = by_count.len().min(most);
        let rest: u64 = by_count[cut..].iter().map(|(_, n)| n).sum::<u64>() + uncounted;
        let others = match uncounted {
            0 => format!("({} other reasons)", by_count.len() - cut),
            _ => format!("(more than {} other reasons)", by_count.len() - cut),
        };
        by_count.truncate(cut);
        by_count.push((others, rest));
    }
    Ok((total, by_count))
}
