//! Whole-stage cost and kernel throughput, side by side in one run on the
//! same generated data (10M rows x 10 f64 columns by default;
//! `WASMPIPE_BENCH_ROWS` overrides):
//!
//! * the standard scaler (fit + transform) and the linear-regression fit,
//!   each as (a) plain native Rust on Arrow arrays, the floor; (b) the
//!   wasm stage on native kernels (`stages/scaler`, `stages/linreg`); (c)
//!   the same logic in wasm copying every column into the guest
//!   (`stages/baseline`);
//! * the kernels' throughput beside a plain single-core read of the same
//!   bytes (this machine's memory-bandwidth ceiling);
//! * the cost of one trivial hostcall.
//!
//! Ends with a summary (`ratio scaler wasm_kernels/native = ...`) and
//! writes it, with date and machine, to `benches/RESULTS.md`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Float64Array};
use arrow::record_batch::RecordBatch;
use criterion::{Criterion, Throughput};
use wasmpipe_runtime::kernels::{moments, simd};
use wasmpipe_runtime::{Runtime, RuntimeConfig};

mod common;
mod results;
use common::{BATCH, COLUMNS, data, limits, median, names, rows, setup, stage, task, wasm_fit, wasm_fit_transform};

fn f64s(batch: &RecordBatch, i: usize) -> &[f64] {
    batch.column(i).as_any().downcast_ref::<Float64Array>().unwrap().values()
}

/// (a) The scaler as plain native Rust: mean and variance per column, then
/// a new standardized array per column and batch.
fn scaler_native(batches: &[RecordBatch]) -> Vec<ArrayRef> {
    let mut stats = vec![(0u64, 0.0f64, 0.0f64); COLUMNS];
    for b in batches {
        for (c, s) in stats.iter_mut().enumerate() {
            let x = f64s(b, c);
            let n = x.len() as u64;
            let mean = x.iter().sum::<f64>() / n as f64;
            let m2: f64 = x.iter().map(|v| (v - mean) * (v - mean)).sum();
            let total = s.0 + n;
            let delta = mean - s.1;
            *s = (
                total,
                s.1 + delta * n as f64 / total as f64,
                s.2 + m2 + delta * delta * (s.0 as f64 * n as f64 / total as f64),
            );
        }
    }
    let mut out = Vec::new();
    for b in batches {
        for (c, &(n, mean, m2)) in stats.iter().enumerate() {
            let std = (m2 / n as f64).sqrt();
            out.push(Arc::new(Float64Array::from_iter_values(f64s(b, c).iter().map(|x| (x - mean) / std))) as ArrayRef);
        }
    }
    out
}

/// (a) The linear-regression fit as plain native Rust: X^T X and X^T y
/// accumulated row by row.
fn linreg_native(batches: &[RecordBatch]) -> Vec<f64> {
    let k = COLUMNS + 1;
    let (mut xtx, mut xty) = (vec![0.0; k * k], vec![0.0; k]);
    let mut row = vec![1.0; k];
    for b in batches {
        let cols: Vec<&[f64]> = (0..COLUMNS).map(|c| f64s(b, c)).collect();
        let y = f64s(b, COLUMNS);
        for i in 0..y.len() {
            for (j, c) in cols.iter().enumerate() {
                row[j + 1] = c[i];
            }
            for a in 0..k {
                xty[a] += row[a] * y[i];
                for bb in a..k {
                    xtx[a * k + bb] += row[a] * row[bb];
                }
            }
        }
    }
    xtx.extend(xty);
    xtx
}

/// A plain single-core read of `a`: eight integer lanes, nothing else.
fn read_all(a: &[f64]) -> u64 {
    let mut acc = [0u64; 8];
    for c in a.chunks_exact(8) {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i].to_bits());
        }
    }
    acc.iter().fold(0, |x, y| x.wrapping_add(*y))
}

fn main() {
    let mut criterion =
        Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5)).configure_from_args();
    let rows = rows();
    eprintln!("generating {rows} rows x {COLUMNS} f64 columns...");
    let batches = data(rows);
    let rt = Runtime::new(RuntimeConfig { max_instances: 4, cache_dir: None, ..RuntimeConfig::default() }).unwrap();
    let (scaler, linreg, baseline) = (stage(&rt, "scaler"), stage(&rt, "linreg"), stage(&rt, "baseline"));
    let quoted: Vec<String> = names().iter().map(|n| format!("{n:?}")).collect();
    let cols = quoted.join(",");
    let scaler_cfg = format!(r#"{{"columns":[{cols}]}}"#);
    let linreg_cfg = format!(r#"{{"features":[{cols}],"target":"target"}}"#);
    let copy_scaler_cfg = format!(r#"{{"mode":"scaler","columns":[{cols}]}}"#);
    let copy_linreg_cfg = format!(r#"{{"mode":"linreg","columns":[{cols}],"target":"target"}}"#);
    let bytes = (rows * COLUMNS * 8) as u64;

    // Criterion's own report of every variant.
    let mut group = criterion.benchmark_group(format!("stage cost, {rows} rows x {COLUMNS} f64"));
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("scaler/native", |b| b.iter(|| black_box(scaler_native(&batches))));
    group.bench_function("scaler/wasm_kernels", |b| {
        b.iter(|| black_box(wasm_fit_transform(&rt, &scaler, &scaler_cfg, &batches)))
    });
    group.bench_function("scaler/wasm_copy", |b| {
        b.iter(|| black_box(wasm_fit_transform(&rt, &baseline, &copy_scaler_cfg, &batches)))
    });
    group.bench_function("linreg/native", |b| b.iter(|| black_box(linreg_native(&batches))));
    group
        .bench_function("linreg/wasm_kernels", |b| b.iter(|| black_box(wasm_fit(&rt, &linreg, &linreg_cfg, &batches))));
    group.bench_function("linreg/wasm_copy", |b| {
        b.iter(|| black_box(wasm_fit(&rt, &baseline, &copy_linreg_cfg, &batches)))
    });
    group.finish();

    let column: Vec<f64> = (0..rows).map(|i| (i % 1000) as f64 * 0.5).collect();
    let other: Vec<f64> = column.iter().map(|v| v + 1.0).collect();
    let column_arr = Float64Array::from(column.clone());
    let gram_cols: Vec<Vec<f64>> = (0..COLUMNS).map(|c| column.iter().map(|v| v * (c + 1) as f64).collect()).collect();
    let gram_refs: Vec<&[f64]> = gram_cols.iter().map(Vec::as_slice).collect();
    let mut kernels = criterion.benchmark_group(format!("kernels, {rows} f64"));
    kernels.throughput(Throughput::Bytes((rows * 8) as u64));
    kernels.bench_function("read (bandwidth ceiling)", |b| b.iter(|| black_box(read_all(&column))));
    kernels.bench_function("sum", |b| b.iter(|| black_box(simd::sum(&column))));
    kernels.bench_function("moments", |b| b.iter(|| black_box(moments(&column_arr))));
    kernels.throughput(Throughput::Bytes((rows * 16) as u64));
    kernels.bench_function("dot", |b| b.iter(|| black_box(simd::dot(&column, &other))));
    kernels.throughput(Throughput::Bytes((rows * 8 * (COLUMNS + 1)) as u64));
    kernels
        .bench_function("gram (10 columns + target)", |b| b.iter(|| black_box(simd::gram(&gram_refs, &other, true))));
    kernels.finish();

    // The summary: medians of the same variants, measured again side by side.
    let mut t: BTreeMap<&str, Duration> = BTreeMap::new();
    t.insert("scaler/native", median(3, || drop(black_box(scaler_native(&batches)))));
    t.insert(
        "scaler/wasm_kernels",
        median(3, || drop(black_box(wasm_fit_transform(&rt, &scaler, &scaler_cfg, &batches)))),
    );
    t.insert(
        "scaler/wasm_copy",
        median(3, || drop(black_box(wasm_fit_transform(&rt, &baseline, &copy_scaler_cfg, &batches)))),
    );
    t.insert("linreg/native", median(3, || drop(black_box(linreg_native(&batches)))));
    t.insert("linreg/wasm_kernels", median(3, || drop(black_box(wasm_fit(&rt, &linreg, &linreg_cfg, &batches)))));
    t.insert("linreg/wasm_copy", median(3, || drop(black_box(wasm_fit(&rt, &baseline, &copy_linreg_cfg, &batches)))));
    let gbps = |bytes: usize, d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
    let read = gbps(
        rows * 8,
        median(5, || {
            black_box(read_all(&column));
        }),
    );
    let sum = gbps(
        rows * 8,
        median(5, || {
            black_box(simd::sum(&column));
        }),
    );
    let mom = gbps(
        rows * 8,
        median(5, || {
            black_box(moments(&column_arr));
        }),
    );
    let dot = gbps(
        rows * 16,
        median(5, || {
            black_box(simd::dot(&column, &other));
        }),
    );
    let gram = gbps(rows * 8 * (COLUMNS + 1), median(3, || drop(black_box(simd::gram(&gram_refs, &other, true)))));

    const CALLS: u64 = 1_000_000;
    let calls_cfg = format!(r#"{{"mode":"hostcalls","calls":{CALLS}}}"#);
    let probe = RecordBatch::try_from_iter([("x", Arc::new(Float64Array::from(vec![1.0])) as ArrayRef)]).unwrap();
    let mut inst = rt.instantiate(&baseline, &limits(512), setup(&calls_cfg)).unwrap();
    inst.fit_open(&task(), None).unwrap();
    let per_call = median(5, || inst.fit_batch(probe.clone()).unwrap()).as_nanos() as f64 / CALLS as f64;

    let ratio = |a: &str, b: &str| t[a].as_secs_f64() / t[b].as_secs_f64();
    let mut lines = Vec::new();
    for stage in ["scaler", "linreg"] {
        for variant in ["wasm_kernels", "wasm_copy"] {
            let r = ratio(&format!("{stage}/{variant}"), &format!("{stage}/native"));
            lines.push(format!("ratio {stage} {variant}/native = {r:.2}"));
        }
    }
    for (name, d) in &t {
        lines.push(format!("time {name} = {:.3} s", d.as_secs_f64()));
    }
    lines.push(format!("bandwidth read = {read:.2} GB/s"));
    for (name, v) in [("sum", sum), ("moments", mom), ("dot", dot), ("gram", gram)] {
        lines.push(format!("kernel {name} = {v:.2} GB/s ({:.0}% of read)", 100.0 * v / read));
    }
    lines.push(format!("hostcall = {per_call:.1} ns"));
    println!("\n== summary ({rows} rows x {COLUMNS} f64, batches of {BATCH}) ==");
    for l in &lines {
        println!("{l}");
    }
    write_results(rows, &lines);
}

fn write_results(rows: usize, lines: &[String]) {
    let simd = if cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("avx512f") {
        "AVX-512"
    } else if cfg!(target_arch = "x86_64")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        "AVX2+FMA"
    } else if cfg!(target_arch = "aarch64") {
        "NEON"
    } else {
        "portable"
    };
    let text = format!(
        "# Benchmark results\n\nWritten by `make bench` (`benches/pipeline.rs`); each run replaces this part; the other benches write the sections below.\n\n- date: {}\n- machine: {}, SIMD path {simd}\n- data: {rows} rows x {COLUMNS} f64 columns (+ target), batches of {BATCH} rows\n- native = plain Rust on Arrow arrays; wasm_kernels = the shipped stage on host kernels; wasm_copy = the same logic copying columns into the guest (`stages/baseline`)\n\n```\n{}\n```\n",
        results::date(),
        results::machine(),
        lines.join("\n")
    );
    results::write_head(&text);
}
