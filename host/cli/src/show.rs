//! `wasmpipe show`: what a committed output (or any Parquet, CSV or JSON
//! Lines location) holds: its schema, rows and parts, the commit's
//! lineage and report, the quarantine's counts by reason, and the first
//! rows.

use anyhow::Context;
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use wasmpipe_storage::Storage;
use wasmpipe_storage::read::{self, Chunk, Format};

/// Show what an output or a data location holds.
#[derive(clap::Args)]
pub struct ShowArgs {
    /// The location: a stage's output (`wasmpipe-data/diabetes/clean`,
    /// `s3://bucket/data/diabetes/clean`), a Parquet, CSV or JSON Lines
    /// file, or a prefix of them.
    location: String,
    /// How many of the first rows to print.
    #[arg(long, default_value_t = 10)]
    rows: usize,
    /// Print everything as one JSON document.
    #[arg(long)]
    json: bool,
}

/// Most distinct quarantine reasons listed.
const MAX_REASONS: usize = 20;

pub fn show(args: ShowArgs, io: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let location = crate::absolute_location(&args.location)?;
    let at = Storage::new(".").resolve(&location)?;
    let listing = io.block_on(read::list(&at, None))?;
    let parts = io.block_on(read::partitions(&listing.files))?;
    let rows: Option<u64> = parts.iter().map(|p| p.rows).sum();
    let bytes: u64 = listing.files.iter().map(|f| f.size).sum();

    // The first rows, and the schema (from the footer when there are none).
    let mut head: Vec<RecordBatch> = Vec::new();
    let mut taken = 0;
    'parts: for part in &parts {
        if taken >= args.rows && !head.is_empty() {
            break;
        }
        let mut stream = io.block_on(read::open(part, None, args.rows.clamp(1, 8192), None))?;
        while let Some(chunk) = io.block_on(stream.next()) {
            if let Chunk::Rows(batch) = chunk? {
                let n = batch.num_rows().min(args.rows - taken.min(args.rows));
                head.push(batch.slice(0, n));
                taken += n;
                if taken >= args.rows {
                    break 'parts;
                }
            }
        }
    }
    let schema = match (head.first(), listing.files.iter().find(|f| f.format == Format::Parquet)) {
        (Some(b), _) => Some(b.schema()),
        (None, Some(file)) => Some(io.block_on(read::parquet_schema(file))?),
        (None, None) => None,
    };
    let quarantine = match &listing.commit {
        Some(record) if !record.quarantine.is_empty() => {
            Some(io.block_on(wasmpipe_storage::quarantine::reasons(&at, record, MAX_REASONS))?)
        }
        _ => None,
    };

    // The stage's report, when it published one.
    let mut report: Option<serde_json::Value> = None;
    if let Some(files) = listing.commit.as_ref().and_then(|r| r.report.as_ref())
        && let Some((bytes, _)) = io.block_on(at.child(&files.json).get_opt())?
    {
        let url = at.child(&files.json).url().to_string();
        report = Some(serde_json::from_slice(&bytes).with_context(|| format!("{url}: not JSON"))?);
    }

    if args.json {
        let mut head_json = Vec::new();
        for batch in &head {
            let mut w = arrow::json::ArrayWriter::new(Vec::new());
            w.write(batch)?;
            w.finish()?;
            let text = w.into_inner();
            if !text.is_empty() {
                let rows: Vec<serde_json::Value> = serde_json::from_slice(&text)?;
                head_json.extend(rows);
            }
        }
        let doc = serde_json::json!({
            "location": at.url(),
            "rows": rows,
            "bytes": bytes,
            "files": listing.files.iter().map(|f| f.location.url()).collect::<Vec<_>>(),
            "partitions": parts.len(),
            "schema": schema.as_ref().map(|s| s.fields().iter().map(|f| serde_json::json!({
                "name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable()
            })).collect::<Vec<_>>()),
            "commit": listing.commit,
            "quarantine": quarantine.as_ref().map(|(n, reasons)| serde_json::json!({"rows": n, "reasons": reasons})),
            "report": report,
            "head": head_json,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }

    println!("{}", at.url());
    let rows_text = rows.map_or("unknown (text files are counted by reading them)".into(), |r| r.to_string());
    println!(
        "  rows {rows_text} in {} file(s), {} partition(s), {}",
        listing.files.len(),
        parts.len(),
        crate::human_bytes(bytes)
    );
    if let Some(record) = &listing.commit {
        println!(
            "  committed by run {} of pipeline {:?}, stage {:?}, at {}",
            record.run_id,
            record.pipeline,
            record.stage,
            crate::utc(record.committed_at)
        );
        println!("  component sha256:{}  config sha256:{}", record.component, record.config);
        let outputs = record.outputs();
        if !outputs.is_empty() {
            let each: Vec<String> = outputs.iter().map(|(o, n)| format!("{o} {n} rows")).collect();
            println!("  named outputs: {} (read as stage:{}.OUTPUT)", each.join(", "), record.stage);
        }
        for (key, columns) in &record.selected {
            println!("  config {key} selected {} column(s): {}", columns.len(), columns.join(", "));
        }
        for input in &record.inputs {
            println!("  input {input}");
        }
        if let Some(m) = &record.model {
            println!("  model sha256:{} ({}, {} passes)", m.sha256, crate::human_bytes(m.bytes), m.passes);
        }
        if let Some(m) = &record.applied_model {
            println!("  applied model sha256:{m}");
        }
    }
    if let Some(doc) = &report {
        println!("report:");
        for line in serde_json::to_string_pretty(&crate::short_report(doc))?.lines() {
            println!("  {line}");
        }
    }
    if let Some((n, reasons)) = &quarantine {
        println!("  quarantined {n} rows (in {}/_quarantine), by reason:", at.url());
        for (reason, count) in reasons {
            println!("    {count:>8}  {reason}");
        }
    }
    if let Some(schema) = &schema {
        println!("schema:");
        for f in schema.fields() {
            println!("  {:<24} {}{}", f.name(), f.data_type(), if f.is_nullable() { "" } else { " not null" });
        }
    }
    if !head.is_empty() && args.rows > 0 {
        println!("first {taken} rows:");
        println!("{}", arrow::util::pretty::pretty_format_batches(&head)?);
    }
    Ok(())
}
