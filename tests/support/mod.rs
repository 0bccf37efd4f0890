//! Shared helpers for the end-to-end tests: repository paths, stage
//! components built once per test binary, executors with captured logs,
//! and the Python interpreter that runs the independent reference checks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use wasmpipe_executor::{Executor, ExecutorConfig, RunError, RunReport};
use wasmpipe_manifest::Manifest;
use wasmpipe_runtime::LogRecord;

pub mod s3;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// `../shared/testdata`, beside the repository.
pub fn testdata() -> PathBuf {
    let dir = repo().join("../shared/testdata");
    assert!(dir.is_dir(), "{} is missing: the shared test data must sit beside the checkout", dir.display());
    dir
}

/// Build the stage crate `stages/<name>` (once per test binary) and
/// return its component.
pub fn component(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let toolchain = wasmpipe_toolchain::detect().expect("a wasm32 toolchain (run scripts/install-wasm-toolchain.sh)");
    let out = wasmpipe_toolchain::build(
        &repo().join("stages").join(name),
        &toolchain,
        wasmpipe_toolchain::Progress::OnFailure,
    )
    .unwrap_or_else(|e| panic!("building stage {name}: {e}"));
    built.insert(name.into(), out.path.clone());
    out.path
}

/// Log lines captured from a run: `(label, record)`.
pub type Logs = Arc<Mutex<Vec<(String, LogRecord)>>>;

/// An executor writing under `store`, capturing every log line.
pub fn executor(store: &Path, parallelism: usize) -> (Executor, Logs) {
    executor_with(store, parallelism, |_| {})
}

/// [`executor`], its configuration changed by `configure` first.
pub fn executor_with(
    store: &Path,
    parallelism: usize,
    configure: impl FnOnce(&mut ExecutorConfig),
) -> (Executor, Logs) {
    let logs: Logs = Default::default();
    let sink = logs.clone();
    let mut config = ExecutorConfig::new(store.display().to_string());
    config.parallelism = parallelism;
    configure(&mut config);
    config.sink = Some(Arc::new(move |label: &str, r: &LogRecord| {
        sink.lock().unwrap().push((label.to_string(), r.clone()));
    }));
    (Executor::new(config).expect("executor starts"), logs)
}

/// Parse `text` as a manifest and run it with paths relative to `base`.
pub fn run_text(exec: &Executor, text: &str, base: &Path) -> Result<RunReport, RunError> {
    let manifest = Manifest::parse(text).unwrap_or_else(|e| panic!("test manifest is invalid: {e}\n{text}"));
    exec.run(&manifest, base)
}

/// TOML string literal for a path.
pub fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The Python with pyarrow, DuckDB, numpy and scikit-learn that
/// `scripts/install-test-deps.sh` sets up.
pub fn python() -> PathBuf {
    let py = repo().join(".tools/venv/bin/python");
    assert!(py.is_file(), "{} is missing: run scripts/install-test-deps.sh (make test does)", py.display());
    py
}

/// Run `tests/python/<script>` with `args`; return its stdout as JSON.
pub fn python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let out =
        Command::new(python()).arg(repo().join("tests/python").join(script)).args(args).output().expect("start python");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// The commit record of a stage output on the local filesystem.
pub fn commit_record(output_dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(output_dir.join("_wasmpipe_commit.json")).expect("commit record"))
        .expect("commit JSON")
}

fn read_parquet(file: &Path) -> Vec<arrow::record_batch::RecordBatch> {
    let file = std::fs::File::open(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("a Parquet file")
        .build()
        .expect("reader");
    reader.map(|b| b.expect("batch")).collect()
}

/// Read the parts a commit lists under `list` (`parts` or `quarantine`).
fn read_listed(output_dir: &Path, list: &str) -> Vec<arrow::record_batch::RecordBatch> {
    let commit = commit_record(output_dir);
    let parts = commit[list].as_array().unwrap_or_else(|| panic!("commit lists no {list}"));
    parts.iter().flat_map(|part| read_parquet(&output_dir.join(part["name"].as_str().unwrap()))).collect()
}

/// Read every row of a committed stage output, in commit order.
pub fn read_committed(output_dir: &Path) -> Vec<arrow::record_batch::RecordBatch> {
    read_listed(output_dir, "parts")
}

/// Read every quarantined row of a committed stage output, in task order.
pub fn read_quarantine(output_dir: &Path) -> Vec<arrow::record_batch::RecordBatch> {
    read_listed(output_dir, "quarantine")
}

/// The committed report of a stage output: its JSON, and its table.
pub fn read_report(output_dir: &Path) -> (serde_json::Value, Vec<arrow::record_batch::RecordBatch>) {
    let commit = commit_record(output_dir);
    let files = &commit["report"];
    let json = std::fs::read(output_dir.join(files["json"].as_str().expect("a committed report"))).unwrap();
    let table = files["table"].as_str().map(|t| read_parquet(&output_dir.join(t))).unwrap_or_default();
    (serde_json::from_slice(&json).expect("report JSON"), table)
}

/// A stage's report without what it publishes only for the run report's
/// plots (an evaluation's `sample`, a classifier's `curve` and
/// `average_precision`): the metrics, as its result has them.
pub fn report_metrics(report: &serde_json::Value) -> serde_json::Value {
    let mut report = report.clone();
    if let Some(map) = report.as_object_mut() {
        for key in ["sample", "curve", "average_precision"] {
            map.remove(key);
        }
    }
    report
}

/// A fit or aggregator stage's model or result, as JSON.
pub fn result(report: &RunReport, stage: &str) -> serde_json::Value {
    let s = report.stages.iter().find(|s| s.name == stage).expect("stage in report");
    serde_json::from_slice(s.model_bytes.as_ref().expect("fit stages keep their result")).expect("JSON result")
}

/// Assert that `ours` has every field of `want`, equal, with numbers
/// within `tol` relative to `max(1, |want|)`.
pub fn assert_close(ours: &serde_json::Value, want: &serde_json::Value, tol: f64, path: &str) {
    use serde_json::Value;
    match (ours, want) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                let a = a.get(k).unwrap_or_else(|| panic!("{path}.{k} is missing"));
                assert_close(a, v, tol, &format!("{path}.{k}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: {ours} vs {want}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_close(x, y, tol, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() <= tol * b.abs().max(1.0), "{path}: {a} vs {b}");
        }
        _ => assert_eq!(ours, want, "{path}"),
    }
}

/// The head of a test pipeline `ml`: `csv` (of `rows` data rows) ingested
/// by `passthrough` into row groups that make `partitions` partitions,
/// as stage `ingest`; the caller appends stages reading `stage:ingest`.
/// Fits run one task per partition (`fit_task_mib = 0`), so that every
/// partitioning merges that many partial states.
pub fn ingest_head(csv: &Path, rows: usize, partitions: usize) -> String {
    let group = rows.div_ceil(partitions);
    format!(
        "version = 1\nname = \"ml\"\n\n[defaults]\nbatch_rows = {group}\nrow_group_rows = {group}\nfit_task_mib = 0\nmemory_mib = 64\ntimeout_s = 60\n\n[stage.ingest]\ncomponent = {}\ninputs = [{}]\n",
        toml_path(&component("passthrough")),
        toml_path(csv),
    )
}
