//! What a stage costs around its own work: instantiating an instance per
//! task, handing a batch across the boundary, and a scaler fit on host
//! kernels beside the same fit copying columns into the guest. Run with
//! `make bench` (which builds the stages first).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Float64Array};
use arrow::record_batch::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wasmpipe_runtime::{Runtime, RuntimeConfig};

mod common;
use common::{limits, setup, stage, task};

const ROWS: usize = 8192;
const COLUMNS: usize = 10;

fn batch() -> RecordBatch {
    let columns = (0..COLUMNS).map(|c| {
        let values: Vec<f64> = (0..ROWS).map(|r| (r * (c + 1)) as f64 * 0.5).collect();
        (format!("x{c}"), Arc::new(Float64Array::from(values)) as ArrayRef)
    });
    RecordBatch::try_from_iter(columns).unwrap()
}

fn benches(c: &mut Criterion) {
    let runtime = Runtime::new(RuntimeConfig { max_instances: 4, ..RuntimeConfig::default() }).unwrap();
    let passthrough = stage(&runtime, "passthrough");
    let scaler = stage(&runtime, "scaler");
    let baseline = stage(&runtime, "baseline");
    let batch = batch();
    let bytes = (ROWS * COLUMNS * 8) as u64;

    c.bench_function("instantiate and open a stage (per-task overhead)", |b| {
        b.iter(|| {
            let mut inst = runtime.instantiate(&passthrough, &limits(256), setup("{}")).unwrap();
            inst.open(&task(), None).unwrap();
            black_box(inst)
        })
    });

    let mut group = c.benchmark_group("batch of 8192 rows x 10 f64");
    group.throughput(Throughput::Bytes(bytes));
    let mut inst = runtime.instantiate(&passthrough, &limits(256), setup("{}")).unwrap();
    inst.open(&task(), None).unwrap();
    group.bench_function("passthrough: handle in, handle out", |b| {
        b.iter(|| black_box(inst.transform(batch.clone()).unwrap()))
    });
    let columns: Vec<String> = (0..COLUMNS).map(|c| format!("\"x{c}\"")).collect();
    let config = format!("{{\"columns\": [{}]}}", columns.join(","));
    let mut fit = runtime.instantiate(&scaler, &limits(256), setup(&config)).unwrap();
    fit.fit_open(&task(), None).unwrap();
    group.bench_function("scaler fit: columns summarized by host kernels", |b| {
        b.iter(|| fit.fit_batch(batch.clone()).unwrap())
    });
    let config = format!("{{\"mode\": \"scaler\", \"columns\": [{}]}}", columns.join(","));
    let mut copy = runtime.instantiate(&baseline, &limits(256), setup(&config)).unwrap();
    copy.fit_open(&task(), None).unwrap();
    group.bench_function("scaler fit: every column copied into the guest", |b| {
        b.iter(|| copy.fit_batch(batch.clone()).unwrap())
    });
    group.finish();
}

criterion_group!(name = stage_benches; config = Criterion::default().measurement_time(Duration::from_secs(3)); targets = benches);
criterion_main!(stage_benches);
