//! Storage throughput, end to end: the `passthrough` and `scaler`
//! pipelines, and the scaler's fit alone (`scaler_fit`: it reads every
//! byte once and writes only its model, so it measures the read path) on
//! one Parquet file (10M rows x 10 f64 columns by default;
//! `WASMPIPE_BENCH_ROWS` overrides), read from and written to Garage on
//! loopback (the test harness's single-node server) and the local
//! filesystem, beside a raw GET of the same object from Garage (the
//! ceiling for reading it there: single-stream and ranged-parallel) and a
//! raw read of the local file.
//!
//! The input is written once, uncompressed, with row groups of 1M rows (so
//! a run has several partitions to spread over the cores), and uploaded
//! once. Every case runs `WASMPIPE_BENCH_RUNS` times (default 3), the
//! cases interleaved, and reports the median; every pipeline run writes to
//! a fresh output, so the identical-rerun skip never applies (checked).
//!
//! Ends with a summary (`ratio passthrough s3/fs = ...`) and writes it,
//! with date and machine, to its own section of `benches/RESULTS.md`
//! (between `<!-- storage -->` and `<!-- /storage -->`). Not criterion:
//! these are multi-second runs; any arguments (`--bench`) are ignored.

mod results;

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tokio::io::AsyncWriteExt;
use wasmpipe_executor::{Executor, ExecutorConfig};
use wasmpipe_manifest::Manifest;
use wasmpipe_storage::Storage;
use wasmpipe_tests::component;
use wasmpipe_tests::s3::{garage, unique_prefix};

const COLUMNS: usize = 10;
/// The pipelines, each run on the local filesystem and on Garage.
const STAGES: [&str; 3] = ["passthrough", "scaler", "scaler_fit"];
/// Rows per row group of the input: one partition each.
const ROW_GROUP: usize = 1_000_000;
/// Rows per batch, when generating and in the pipelines.
const BATCH: usize = 65_536;
/// Ranged GETs: chunk size and most in flight.
const CHUNK: u64 = 8 << 20;
const CONCURRENCY: usize = 8;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Write `rows` rows of x0..x9 (uniform, scaled by column) to `path`:
/// uncompressed, no dictionary, row groups of [`ROW_GROUP`] rows.
fn write_input(path: &Path, rows: usize) {
    let fields: Vec<Field> = (0..COLUMNS).map(|c| Field::new(format!("x{c}"), DataType::Float64, false)).collect();
    let schema = Arc::new(Schema::new(fields));
    let props = WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .set_max_row_group_row_count(Some(ROW_GROUP))
        .build();
    let file = std::io::BufWriter::new(std::fs::File::create(path).expect("create the input file"));
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).expect("Parquet writer");
    let mut seed = 42u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut start = 0;
    while start < rows {
        let n = BATCH.min(rows - start);
        let cols: Vec<ArrayRef> = (0..COLUMNS)
            .map(|c| Arc::new(Float64Array::from_iter_values((0..n).map(|_| next() * (c + 1) as f64))) as ArrayRef)
            .collect();
        writer.write(&RecordBatch::try_new(schema.clone(), cols).unwrap()).expect("write a batch");
        start += n;
    }
    writer.close().expect("finish the input file");
}

/// Upload `file` to `path` as a multipart upload, 8 MiB at a time.
async fn upload(store: Arc<dyn ObjectStore>, path: ObjectPath, file: &Path) {
    let mut sink = BufWriter::with_capacity(store, path, 16 << 20).with_max_concurrency(CONCURRENCY);
    let mut f = std::fs::File::open(file).expect("open the input file");
    loop {
        let mut buf = vec![0u8; CHUNK as usize];
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]).expect("read the input file") {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        buf.truncate(n);
        sink.put(Bytes::from(buf)).await.expect("upload a part");
    }
    sink.shutdown().await.expect("complete the upload");
}

/// Read the whole file through one reused buffer (the GETs do not keep
/// the object either), counting the bytes.
fn read_local(file: &Path) -> u64 {
    let mut f = std::fs::File::open(file).expect("open the input file");
    let mut buf = vec![0u8; CHUNK as usize];
    let mut n = 0;
    loop {
        match f.read(&mut buf).expect("read the input file") {
            0 => return n,
            k => n += std::hint::black_box(&buf[..k]).len() as u64,
        }
    }
}

/// GET the whole object in one request, counting the bytes as they stream in.
async fn get_single(store: &Arc<dyn ObjectStore>, path: &ObjectPath) -> u64 {
    let mut stream = store.get(path).await.expect("GET").into_stream();
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        n += chunk.expect("GET body").len() as u64;
    }
    n
}

/// GET the object as [`CHUNK`]-sized ranges, [`CONCURRENCY`] at a time.
async fn get_ranged(store: &Arc<dyn ObjectStore>, path: &ObjectPath, size: u64) -> u64 {
    let ranges: Vec<Range<u64>> = (0..size).step_by(CHUNK as usize).map(|s| s..(s + CHUNK).min(size)).collect();
    futures::stream::iter(ranges)
        .map(|r| async move { store.get_range(path, r).await.expect("ranged GET").len() as u64 })
        .buffer_unordered(CONCURRENCY)
        .fold(0, |total, n| async move { total + n })
        .await
}

/// Delete every object below `prefix`.
async fn delete_prefix(store: &Arc<dyn ObjectStore>, prefix: &ObjectPath) {
    let paths = store.list(Some(prefix)).map_ok(|m| m.location).boxed();
    store.delete_stream(paths).try_collect::<Vec<_>>().await.expect("delete a bench output");
}

/// A one-stage pipeline running `wasm` on `input`, writing to `output`,
/// with `settings` (TOML lines) on the stage.
fn manifest(wasm: &Path, settings: &str, config: &str, input: &str, output: &str) -> Manifest {
    let text = format!(
        "version = 1\nname = \"storage-bench\"\n\n[defaults]\nbatch_rows = {BATCH}\n\n[stage.s]\n\
         component = {wasm:?}\ninputs = [{input:?}]\noutput = {output:?}\n{settings}\n\n[stage.s.config]\n{config}\n",
        wasm = wasm.display().to_string(),
    );
    Manifest::parse(&text).unwrap_or_else(|e| panic!("bench manifest is invalid: {e}\n{text}"))
}

/// Where a case reads and writes.
#[derive(Clone, Copy, PartialEq)]
enum Store {
    Fs,
    S3,
}

/// One run of a case: wall time, and CPU seconds (user + system) spent
/// by this process (the executor, its I/O runtime, the bench's client),
/// by the Garage server, and by everything else on the machine (another
/// build or test run: contention).
#[derive(Clone, Copy)]
struct Sample {
    wall: f64,
    host_cpu: f64,
    garage_cpu: f64,
    other_cpu: f64,
}

/// The median run by wall time.
fn median(samples: &[Sample]) -> Sample {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.wall.total_cmp(&b.wall));
    s[s.len() / 2]
}

/// Clock ticks per second, the unit of `/proc/PID/stat` CPU times.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds process `pid` (`self` for this one) has used so far; 0
/// when it cannot be read.
fn cpu_seconds(pid: &str, ticks: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // utime and stime are fields 14 and 15; the command name (field 2) is
    // parenthesized and may hold spaces, so count from its end.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / ticks
}

/// CPU seconds the whole machine has been busy so far (`/proc/stat`).
fn machine_cpu_seconds(ticks: f64) -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0.0)).collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    [0, 1, 2, 5, 6, 7].iter().map(|&i| fields.get(i).copied().unwrap_or(0.0)).sum::<f64>() / ticks
}

/// The pid of the Garage server whose working directory is `dir`.
fn garage_pid(dir: &Path) -> Option<String> {
    let dir = dir.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.to_string();
        pid.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.contains(&dir) && cmdline.contains("server")).then_some(pid)
    })
}

fn describe(s: &Sample) -> String {
    format!(
        "{:.3} s (cpu {:.2} s bench process + {:.2} s garage + {:.2} s other processes)",
        s.wall, s.host_cpu, s.garage_cpu, s.other_cpu
    )
}

/// Time `f`, with the CPU it and Garage used meanwhile.
fn measure<T>(garage: Option<&str>, ticks: f64, f: impl FnOnce() -> T) -> (Sample, T) {
    let garage_cpu = || garage.map_or(0.0, |pid| cpu_seconds(pid, ticks));
    let (host0, garage0, all0) = (cpu_seconds("self", ticks), garage_cpu(), machine_cpu_seconds(ticks));
    let t = Instant::now();
    let out = f();
    let wall = t.elapsed().as_secs_f64();
    let host_cpu = cpu_seconds("self", ticks) - host0;
    let garage_cpu = garage_cpu() - garage0;
    let other_cpu = (machine_cpu_seconds(ticks) - all0 - host_cpu - garage_cpu).max(0.0);
    (Sample { wall, host_cpu, garage_cpu, other_cpu }, out)
}

fn main() {
    let rows = env_usize("WASMPIPE_BENCH_ROWS", 10_000_000);
    let runs = env_usize("WASMPIPE_BENCH_RUNS", 3).max(1);
    let tmp = tempfile::Builder::new().prefix("wasmpipe-storage-bench-").tempdir().expect("temp dir");
    let input_file = tmp.path().join("input.parquet");
    eprintln!("generating {rows} rows x {COLUMNS} f64 columns into {}...", input_file.display());
    write_input(&input_file, rows);
    let size = std::fs::metadata(&input_file).expect("input file").len();
    let groups = rows.div_ceil(ROW_GROUP);

    eprintln!("building the stages and starting Garage...");
    let passthrough = component("passthrough");
    let scaler = component("scaler");
    let server = garage();
    let garage_pid = garage_pid(&server.dir);
    if garage_pid.is_none() {
        eprintln!("(Garage's process not found: its CPU time is not reported)");
    }
    let ticks = clock_ticks();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    // Two clients configured alike: one for the bench's own requests (on
    // `rt`), one for the pipelines (on the executor's I/O runtime).
    let raw = Storage::new(tmp.path()).with_options(server.options());
    let storage = Storage::new(tmp.path()).with_options(server.options());
    let root = server.url(&unique_prefix("storage-bench"));
    let input_url = format!("{root}/input.parquet");
    let input_at = raw.resolve(&input_url).expect("input URL");
    let store = input_at.store().clone();

    eprintln!("uploading {size} bytes to {input_url}...");
    let (upload_sample, ()) = measure(garage_pid.as_deref(), ticks, || {
        rt.block_on(upload(store.clone(), input_at.path().clone(), &input_file))
    });
    eprintln!("upload {}", describe(&upload_sample));
    let stored = rt.block_on(store.head(input_at.path())).expect("uploaded object").size;
    assert_eq!(stored, size, "the uploaded object has the local file's size");

    let mut exec =
        Executor::new(ExecutorConfig::new(tmp.path().join("store").display().to_string())).expect("executor");
    // The pipelines read and write on Garage, outside the run's store.
    exec.allow(vec![root.clone()], vec![root.clone()]);
    let cols: Vec<String> = (0..COLUMNS).map(|c| format!("\"x{c}\"")).collect();
    let scaler_cfg = format!("columns = [{}]", cols.join(", "));
    let local_input = input_file.display().to_string();

    // The cases, interleaved run by run so background load spreads evenly.
    let cases = ["raw_get single", "raw_get ranged", "raw_read fs"];
    let pipelines = STAGES.iter().flat_map(|&stage| [(stage, Store::Fs), (stage, Store::S3)]);
    let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    let garage = garage_pid.as_deref();
    for run in 1..=runs {
        for case in cases {
            let (sample, n) = measure(garage, ticks, || match case {
                "raw_get single" => rt.block_on(get_single(&store, input_at.path())),
                "raw_get ranged" => rt.block_on(get_ranged(&store, input_at.path(), size)),
                _ => read_local(&input_file),
            });
            assert_eq!(n, size, "{case} read every byte");
            eprintln!("run {run}/{runs}: {case} {}", describe(&sample));
            samples.entry(case.to_string()).or_default().push(sample);
        }
        for (stage, at) in pipelines.clone() {
            let (wasm, settings, config) = match stage {
                "passthrough" => (&passthrough, "", ""),
                "scaler" => (&scaler, "", scaler_cfg.as_str()),
                _ => (&scaler, "emit_rows = false", scaler_cfg.as_str()),
            };
            let prefix = unique_prefix(stage);
            let (input, output) = match at {
                Store::Fs => (local_input.clone(), tmp.path().join(&prefix).display().to_string()),
                Store::S3 => (input_url.clone(), format!("{root}/{prefix}")),
            };
            let m = manifest(wasm, settings, config, &input, &output);
            let (sample, report) = measure(garage, ticks, || exec.run_in(&m, &storage, Some(tmp.path())));
            let report = report.unwrap_or_else(|e| panic!("{stage} on {output}: {e}"));
            let s = &report.stages[0];
            assert!(s.committed_before.is_none(), "{stage}: skipped as an identical rerun of {:?}", s.committed_before);
            let rows_out = if settings.is_empty() { rows as u64 } else { 0 };
            assert_eq!(s.rows_out, rows_out, "{stage}: every row out, or none from a fit alone");
            let name = format!("{stage} {}", if at == Store::Fs { "fs" } else { "s3" });
            eprintln!(
                "run {run}/{runs}: {name} {} ({} tasks, {} bytes read, {} bytes written)",
                describe(&sample),
                s.tasks,
                s.bytes_read,
                s.bytes_written
            );
            samples.entry(name).or_default().push(sample);
            // Clean up untimed, so outputs do not pile up on disk.
            match at {
                Store::Fs => std::fs::remove_dir_all(&output).expect("remove a bench output"),
                Store::S3 => rt.block_on(delete_prefix(&store, raw.resolve(&output).unwrap().path())),
            }
        }
    }
    rt.block_on(delete_prefix(&store, raw.resolve(&root).unwrap().path()));

    let secs = |name: &str| median(&samples[name]).wall;
    let gbps = |name: &str| size as f64 / secs(name) / 1e9;
    let ceiling = gbps("raw_get single").max(gbps("raw_get ranged"));
    let mut lines = Vec::new();
    let up = upload_sample.wall;
    lines.push(format!("storage upload s3 = {up:.2} s ({:.2} GB/s, once)", size as f64 / up / 1e9));
    for name in ["raw_get single", "raw_get ranged", "raw_read fs"] {
        lines.push(format!("storage {name} = {:.2} s ({:.2} GB/s)", secs(name), gbps(name)));
    }
    for stage in STAGES {
        for at in ["fs", "s3"] {
            let name = format!("{stage} {at}");
            lines.push(format!("storage {name} = {:.2} s ({:.2} GB/s)", secs(&name), gbps(&name)));
        }
    }
    for stage in STAGES {
        let (fs, s3) = (format!("{stage} fs"), format!("{stage} s3"));
        lines.push(format!("ratio {stage} s3/fs = {:.2}", secs(&s3) / secs(&fs)));
    }
    for stage in STAGES {
        lines.push(format!("ratio {stage} s3/raw_get = {:.2}", gbps(&format!("{stage} s3")) / ceiling));
    }
    // Where the time goes: CPU seconds of the median run, and how many of
    // the cores that kept busy on average.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cpu = vec![("upload s3".to_string(), upload_sample)];
    cpu.extend(["raw_get single", "raw_get ranged", "raw_read fs"].map(|n| (n.to_string(), median(&samples[n]))));
    for stage in STAGES {
        for at in ["fs", "s3"] {
            let name = format!("{stage} {at}");
            let m = median(&samples[&name]);
            cpu.push((name, m));
        }
    }
    // A pipeline on S3 that writes as much as it reads uploads it too:
    // Garage's CPU for the upload (measured once, above) comes on top of
    // the read's on these cores.
    lines.push(format!(
        "bound passthrough s3 = raw_get ranged + upload = {:.2} s (measured {:.2} s; bound/measured = {:.2})",
        secs("raw_get ranged") + up,
        secs("passthrough s3"),
        (secs("raw_get ranged") + up) / secs("passthrough s3")
    ));
    for (name, m) in cpu {
        lines.push(format!(
            "cpu {name} = {:.2} s wasmpipe + {:.2} s garage + {:.2} s other ({:.1} of {cores} cores busy)",
            m.host_cpu,
            m.garage_cpu,
            m.other_cpu,
            (m.host_cpu + m.garage_cpu + m.other_cpu) / m.wall
        ));
    }
    // Contention: what other processes used over every timed run.
    let all: Vec<&Sample> = samples.values().flatten().collect();
    let (wall, other) = (all.iter().map(|s| s.wall).sum::<f64>(), all.iter().map(|s| s.other_cpu).sum::<f64>());
    let contention = format!(
        "other processes used {other:.1} CPU s over {wall:.1} s of timed runs ({:.0}% of the machine)",
        100.0 * other / (wall * cores as f64)
    );
    println!("\n== summary ({rows} rows x {COLUMNS} f64, {size} bytes, {groups} row groups, median of {runs}) ==");
    for l in &lines {
        println!("{l}");
    }
    println!("({contention})");
    write_results(rows, size, groups, runs, &contention, &lines);
}

/// Replace the storage section of RESULTS.md (or append it).
fn write_results(rows: usize, size: u64, groups: usize, runs: usize, contention: &str, lines: &[String]) {
    let (date, machine) = (results::date(), results::machine());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let section = format!(
        "## Storage: Garage on loopback vs the local filesystem\n\n\
         Written by `benches/storage.rs` (`make bench`); each run replaces this section.\n\n\
         - date: {date}\n\
         - machine: {machine}; {contention}\n\
         - data: one Parquet file, {rows} rows x {COLUMNS} f64 columns, uncompressed, {size} bytes, \
         {groups} row groups (partitions); the stages write zstd Parquet; batches of {BATCH} rows; \
         {cores} tasks at once\n\
         - s3 = input and output on a single-node Garage on loopback (`tests/support/s3.rs`); \
         fs = the local filesystem (page cache warm)\n\
         - raw_get = the object read with object_store: one streaming GET (single), or {} MiB ranges, \
         {CONCURRENCY} in flight (ranged); raw_read fs = the file read through one reused {} MiB buffer\n\
         - times are medians of {runs} runs; GB/s = input file bytes / wall time (the scaler reads its \
         input twice: fit, then transform; scaler_fit once, writing only its model); ratio s3/fs = wall time on Garage / on the filesystem; \
         ratio s3/raw_get = pipeline input GB/s on Garage / the faster raw GET's GB/s\n\
         - cpu = CPU seconds (user + system) during the median run: this process (executor, stage \
         instances, object_store clients), the Garage server, other processes (contention); \
         cores busy = their sum / wall time\n\n\
         ```\n{}\n```",
        CHUNK >> 20,
        CHUNK >> 20,
        lines.join("\n"),
    );
    results::write_section("storage", &section);
}
