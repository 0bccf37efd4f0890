//! Helpers the benches share: building and loading a shipped stage, the
//! per-instance inputs of a benchmark task, and the generated data.

#![allow(dead_code, reason = "each bench uses some of these")]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array};
use arrow::record_batch::RecordBatch;
use wasmpipe_runtime::{FitOutcome, InstanceLimits, InstanceSetup, Runtime, StageComponent, TaskInfo};

/// Build `stages/<name>` and load it.
pub fn stage(runtime: &Runtime, name: &str) -> StageComponent {
    stage_at(runtime, &Path::new(env!("CARGO_MANIFEST_DIR")).join("../stages").join(name))
}

/// Build the stage in `dir` (a Rust crate with the detected toolchain, or
/// a Python stage with componentize-py) and load it.
pub fn stage_at(runtime: &Runtime, dir: &Path) -> StageComponent {
    use wasmpipe_toolchain::{Progress, python};
    let built = match python::stage(dir).expect("a stage directory") {
        Some(py) => python::build(dir, &py, Progress::OnFailure),
        None => wasmpipe_toolchain::build(
            dir,
            &wasmpipe_toolchain::detect().expect("a wasm32 toolchain"),
            Progress::OnFailure,
        ),
    };
    runtime.load_file(&built.expect("stage builds").path).expect("stage loads")
}

/// The one task of a benchmark.
pub fn task() -> TaskInfo {
    TaskInfo { pipeline: "bench".into(), stage: "s".into(), partition: 0, partitions: 1, pass: 0 }
}

/// A memory cap of `memory_mib` and no practical CPU deadline.
pub fn limits(memory_mib: u64) -> InstanceLimits {
    InstanceLimits { memory_bytes: memory_mib << 20, host_memory_bytes: 4 << 30, cpu: Duration::from_secs(3600) }
}

/// A benchmark instance with `config` as its stage config.
pub fn setup(config: &str) -> InstanceSetup {
    InstanceSetup { config_json: config.into(), label: "bench".into(), sink: None, seed: [0; 32] }
}

pub const COLUMNS: usize = 10;
/// Rows per batch handed to a stage: large enough that per-call overhead
/// is amortized, as a pipeline would configure for numeric work.
pub const BATCH: usize = 65_536;

pub fn rows() -> usize {
    std::env::var("WASMPIPE_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000)
}

pub fn names() -> Vec<String> {
    (0..COLUMNS).map(|c| format!("x{c}")).collect()
}

/// Batches of x0..x9 and a target that depends on them linearly, plus noise.
pub fn data(rows: usize) -> Vec<RecordBatch> {
    let mut seed = 42u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut batches = Vec::new();
    let mut start = 0;
    while start < rows {
        let n = BATCH.min(rows - start);
        let cols: Vec<Vec<f64>> = (0..COLUMNS).map(|c| (0..n).map(|_| next() * (c + 1) as f64).collect()).collect();
        let y: Vec<f64> =
            (0..n).map(|i| cols.iter().enumerate().map(|(j, c)| c[i] * j as f64).sum::<f64>() + next()).collect();
        let mut fields: Vec<(String, ArrayRef)> = cols
            .into_iter()
            .enumerate()
            .map(|(c, v)| (format!("x{c}"), Arc::new(Float64Array::from(v)) as ArrayRef))
            .collect();
        fields.push(("target".into(), Arc::new(Float64Array::from(y))));
        batches.push(RecordBatch::try_from_iter(fields).unwrap());
        start += n;
    }
    batches
}

/// Fit a wasm estimator over every batch; returns the model bytes.
pub fn wasm_fit(rt: &Runtime, stage: &StageComponent, config: &str, batches: &[RecordBatch]) -> Vec<u8> {
    let mut inst = rt.instantiate(stage, &limits(512), setup(config)).unwrap();
    inst.fit_open(&task(), None).unwrap();
    for b in batches {
        inst.fit_batch(b.clone()).unwrap();
    }
    let state = inst.fit_close().unwrap();
    let mut fin = rt.instantiate(stage, &limits(512), setup(config)).unwrap();
    match fin.finalize(&state, 0).unwrap() {
        FitOutcome::Done(model) => model,
        FitOutcome::NextPass(_) => panic!("single-pass estimator asked for another pass"),
    }
}

/// Fit, then transform every batch with the model.
pub fn wasm_fit_transform(
    rt: &Runtime,
    stage: &StageComponent,
    config: &str,
    batches: &[RecordBatch],
) -> Vec<RecordBatch> {
    let model = wasm_fit(rt, stage, config, batches);
    let mut inst = rt.instantiate(stage, &limits(512), setup(config)).unwrap();
    inst.open(&task(), Some(&model)).unwrap();
    batches.iter().map(|b| inst.transform(b.clone()).unwrap().unwrap()).collect()
}

/// The wall times of `runs` calls, shortest first.
pub fn sorted_times(runs: usize, mut f: impl FnMut()) -> Vec<Duration> {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times
}

/// Median wall time of `runs` calls.
pub fn median(runs: usize, f: impl FnMut()) -> Duration {
    sorted_times(runs, f)[runs / 2]
}
