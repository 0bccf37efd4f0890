//! Text ingest throughput: wasmpipe's record-by-record reader (every record
//! that does not parse goes to the quarantine instead of failing the file)
//! against Arrow's own bulk decoders, which stop at the first bad record,
//! on the same files in the same run.
//!
//! The input is `WASMPIPE_BENCH_ROWS` rows (default 1M) of an int64 id,
//! eight float64 measurements and a short category string, written once as
//! CSV and as JSON Lines into a temporary directory. Every case reads the
//! whole file in batches of 8192 rows from the local filesystem,
//! `WASMPIPE_BENCH_RUNS` times (default 3, interleaved), and reports the
//! median. Schemas are inferred in every case (Arrow's from the first 1000
//! records, as it is usually called; wasmpipe's from the first MiB).
//!
//! Writes its section of `benches/RESULTS.md` (`<!-- ingest -->`). Not
//! criterion: these are multi-second runs; arguments are ignored.

mod results;

use std::io::{BufReader, Seek, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use wasmpipe_storage::Storage;
use wasmpipe_storage::read::{self, Chunk};

const BATCH: usize = 8192;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A seeded, dependency-free generator of the test values.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn write_inputs(dir: &Path, rows: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let (csv, jsonl) = (dir.join("data.csv"), dir.join("data.jsonl"));
    let mut c = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
    let mut j = std::io::BufWriter::new(std::fs::File::create(&jsonl).unwrap());
    writeln!(c, "id,x0,x1,x2,x3,x4,x5,x6,x7,category").unwrap();
    let mut rng = Lcg(7);
    let categories = ["alpha", "beta", "gamma", "delta"];
    for id in 0..rows {
        let xs: Vec<String> = (0..8).map(|k| format!("{:.6}", rng.next() * 10f64.powi(k % 4))).collect();
        let category = categories[(rng.next() * 4.0) as usize % 4];
        writeln!(c, "{id},{},{category}", xs.join(",")).unwrap();
        let fields: Vec<String> = xs.iter().enumerate().map(|(k, x)| format!("\"x{k}\":{x}")).collect();
        writeln!(j, "{{\"id\":{id},{},\"category\":\"{category}\"}}", fields.join(",")).unwrap();
    }
    (csv, jsonl)
}

/// Rows read by Arrow's CSV decoder, schema inferred from 1000 records.
fn arrow_csv(path: &Path) -> usize {
    let mut file = std::fs::File::open(path).unwrap();
    let format = arrow::csv::reader::Format::default().with_header(true);
    let (schema, _) = format.infer_schema(&mut file, Some(1000)).unwrap();
    file.rewind().unwrap();
    let reader =
        arrow::csv::ReaderBuilder::new(Arc::new(schema)).with_header(true).with_batch_size(BATCH).build(file).unwrap();
    reader.map(|b| b.unwrap().num_rows()).sum()
}

/// Rows read by Arrow's JSON decoder, schema inferred from 1000 records.
fn arrow_json(path: &Path) -> usize {
    let mut file = BufReader::new(std::fs::File::open(path).unwrap());
    let (schema, _) = arrow::json::reader::infer_json_schema(&mut file, Some(1000)).unwrap();
    file.rewind().unwrap();
    let reader = arrow::json::ReaderBuilder::new(Arc::new(schema)).with_batch_size(BATCH).build(file).unwrap();
    reader.map(|b| b.unwrap().num_rows()).sum()
}

/// Rows read by wasmpipe's reader (none quarantined here).
fn wasmpipe(rt: &tokio::runtime::Runtime, path: &Path) -> usize {
    rt.block_on(async {
        let storage = Storage::new(path.parent().unwrap());
        let at = storage.resolve(path.file_name().unwrap().to_str().unwrap()).unwrap();
        let listing = read::list(&at, None).await.unwrap();
        let parts = read::partitions(&listing.files).await.unwrap();
        let mut stream = read::open(&parts[0], None, BATCH, None).await.unwrap();
        let mut rows = 0;
        while let Some(chunk) = stream.next().await {
            match chunk.unwrap() {
                Chunk::Rows(b) => rows += b.num_rows(),
                Chunk::Quarantined(q) => panic!("{} records quarantined", q.num_rows()),
            }
        }
        rows
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rows = env_usize("WASMPIPE_BENCH_ROWS", 1_000_000);
    let runs = env_usize("WASMPIPE_BENCH_RUNS", 3).max(1);
    let dir = tempfile::tempdir().unwrap();
    let (csv, jsonl) = write_inputs(dir.path(), rows);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    type Case<'a> = (&'static str, &'a Path, Box<dyn Fn() -> usize + 'a>);
    let cases: Vec<Case> = vec![
        ("arrow csv", &csv, Box::new(|| arrow_csv(&csv))),
        ("wasmpipe csv", &csv, Box::new(|| wasmpipe(&rt, &csv))),
        ("arrow json", &jsonl, Box::new(|| arrow_json(&jsonl))),
        ("wasmpipe jsonl", &jsonl, Box::new(|| wasmpipe(&rt, &jsonl))),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    for _ in 0..runs {
        for (i, (name, _, case)) in cases.iter().enumerate() {
            let started = Instant::now();
            let n = case();
            times[i].push(started.elapsed());
            assert_eq!(n, rows, "{name} read every row");
        }
    }
    let medians: Vec<Duration> = times.into_iter().map(median).collect();
    let mut table = String::from("| case | file | median | MB/s |\n| --- | --- | --- | --- |\n");
    for ((name, path, _), t) in cases.iter().zip(&medians) {
        let mb = size(path) / 1e6;
        table.push_str(&format!(
            "| {name} | {:.1} MB | {:.3} s | {:.1} |\n",
            mb,
            t.as_secs_f64(),
            mb / t.as_secs_f64()
        ));
    }
    let ratio = |a: usize, b: usize| medians[a].as_secs_f64() / medians[b].as_secs_f64();
    let summary = format!(
        "ratio ingest csv wasmpipe/arrow = {:.2}\nratio ingest jsonl wasmpipe/arrow = {:.2}",
        ratio(1, 0),
        ratio(3, 2)
    );
    println!("{table}\n{summary}");
    let section = format!(
        "## Text ingest ({rows} rows, {} runs, median)\n\n{} on {}.\n\n{table}\n```\n{summary}\n```\n",
        runs,
        results::date(),
        results::machine()
    );
    results::write_section("ingest", &section);
}
