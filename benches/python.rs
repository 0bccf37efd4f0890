//! Python stages against Rust ones, side by side in one run:
//!
//! * the standard scaler, fit + transform over the generated data (10M
//!   rows x 10 f64 by default; `WASMPIPE_BENCH_ROWS` overrides): Rust on
//!   host kernels (`stages/scaler`), Python on host kernels
//!   (`stages/scaler_py`), and the same Python logic copying every value
//!   into the interpreter (`benches/python_copy_scaler`);
//! * what a task pays before its first batch: instantiating the component,
//!   and instantiating it and opening the fit (which reads the config), p50
//!   and p90 over 200 tasks, Python against Rust;
//! * the resident memory each live, opened instance adds;
//! * the first build (componentize-py), compiling the component without
//!   the compile cache, and loading it from the cache.
//!
//! Writes the summary to the `python` section of `benches/RESULTS.md`.

use std::path::Path;
use std::time::{Duration, Instant};

use wasmpipe_runtime::{Runtime, RuntimeConfig, StageComponent};

mod common;
mod results;
use common::{
    COLUMNS, data, limits, median, names, rows, setup, sorted_times, stage, stage_at, task, wasm_fit_transform,
};

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Minor page faults of this process so far.
fn minor_faults() -> i64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_minflt
}

/// p50 and p90 of `n` runs of `f`.
fn percentiles(n: usize, f: impl FnMut()) -> (Duration, Duration) {
    let times = sorted_times(n, f);
    (times[n / 2], times[n * 9 / 10])
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let rows = rows();
    let quoted: Vec<String> = names().iter().map(|n| format!("{n:?}")).collect();
    let config = format!(r#"{{"columns":[{}]}}"#, quoted.join(","));
    let bench_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut lines = Vec::new();

    // Build and compile times first, from a copy nothing was built from.
    let copy = tempfile::tempdir().unwrap();
    for file in ["app.py", "pyproject.toml"] {
        std::fs::copy(bench_dir.join("../stages/scaler_py").join(file), copy.path().join(file)).unwrap();
    }
    let py = wasmpipe_toolchain::python::stage(copy.path()).unwrap().unwrap();
    let t = Instant::now();
    let built = wasmpipe_toolchain::python::build(copy.path(), &py, wasmpipe_toolchain::Progress::OnFailure).unwrap();
    lines.push(format!(
        "python build (componentize-py, first) = {:.1} s, {:.1} MB",
        t.elapsed().as_secs_f64(),
        built.size as f64 / 1e6
    ));
    let cache = tempfile::tempdir().unwrap();
    let cached = |dir: Option<&Path>| {
        Runtime::new(RuntimeConfig {
            max_instances: 4,
            cache_dir: dir.map(Path::to_path_buf),
            ..RuntimeConfig::default()
        })
        .unwrap()
    };
    let t = Instant::now();
    drop(cached(None).load_file(&built.path).unwrap());
    lines.push(format!("python compile (no cache) = {:.2} s", t.elapsed().as_secs_f64()));
    drop(cached(Some(cache.path())).load_file(&built.path).unwrap());
    let t = Instant::now();
    drop(cached(Some(cache.path())).load_file(&built.path).unwrap());
    lines.push(format!("python load (compile cache) = {}", ms(t.elapsed())));

    // Per task, before the first batch.
    const LIVE: usize = 16;
    let rt =
        Runtime::new(RuntimeConfig { max_instances: LIVE as u32 + 2, cache_dir: None, ..RuntimeConfig::default() })
            .unwrap();
    let (rust, python) = (stage(&rt, "scaler"), stage(&rt, "scaler_py"));
    let copying = stage_at(&rt, &bench_dir.join("python_copy_scaler"));
    let start = |s: &StageComponent, open: bool| {
        let mut inst = rt.instantiate(s, &limits(256), setup(&config)).unwrap();
        if open {
            inst.fit_open(&task(), None).unwrap();
        }
        inst
    };
    for (name, s) in [("rust", &rust), ("python", &python)] {
        let _warm = start(s, true);
        let (p50, p90) = percentiles(200, || drop(start(s, false)));
        lines.push(format!("task instantiate {name} = p50 {}, p90 {}", ms(p50), ms(p90)));
        let faults = minor_faults();
        let (p50, p90) = percentiles(200, || drop(start(s, true)));
        let faults = (minor_faults() - faults) as f64 / 200.0;
        lines.push(format!(
            "task instantiate + fit_open {name} = p50 {}, p90 {}, {faults:.0} page faults",
            ms(p50),
            ms(p90)
        ));
    }
    for (name, s) in [("rust", &rust), ("python", &python)] {
        let before = rss();
        let live: Vec<_> = (0..LIVE).map(|_| start(s, true)).collect();
        let per = (rss().saturating_sub(before)) as f64 / LIVE as f64 / (1 << 20) as f64;
        drop(live);
        lines.push(format!("resident memory per opened instance {name} = {per:.1} MiB ({LIVE} live)"));
    }

    // The scaler, fit + transform, side by side.
    eprintln!("generating {rows} rows x {COLUMNS} f64 columns...");
    let batches = data(rows);
    let rust_t = median(3, || drop(wasm_fit_transform(&rt, &rust, &config, &batches)));
    let python_t = median(3, || drop(wasm_fit_transform(&rt, &python, &config, &batches)));
    let copy_t = median(1, || drop(wasm_fit_transform(&rt, &copying, &config, &batches)));
    let ratio = |a: Duration| a.as_secs_f64() / rust_t.as_secs_f64();
    lines.push(format!("ratio scaler python_kernels/rust_kernels = {:.2}", ratio(python_t)));
    lines.push(format!("ratio scaler python_copy/rust_kernels = {:.1}", ratio(copy_t)));
    for (name, d) in [("rust_kernels", rust_t), ("python_kernels", python_t), ("python_copy", copy_t)] {
        lines.push(format!("time scaler/{name} = {:.3} s", d.as_secs_f64()));
    }

    println!("\n== python stages ({rows} rows x {COLUMNS} f64) ==");
    for l in &lines {
        println!("{l}");
    }
    let body = format!(
        "## Python stages against Rust ones\n\nWritten by `benches/python.rs` (`make bench`); each run replaces this section.\n\n- date: {}\n- machine: {}\n- data: {rows} rows x {COLUMNS} f64 columns, batches of {} rows, one instance fitting then transforming them all (medians of 3 runs; python_copy: 1 run)\n- rust_kernels = `stages/scaler`; python_kernels = `stages/scaler_py` (the same arithmetic, on the same host kernels); python_copy = the same logic with every value copied into the interpreter (`benches/python_copy_scaler`)\n- per task: instantiating the component, and instantiating it and calling `fit-open` (which reads and checks the config), over 200 tasks; memory: RSS added per opened instance with {LIVE} alive\n\n```\n{}\n```\n",
        results::date(),
        results::machine(),
        common::BATCH,
        lines.join("\n")
    );
    results::write_section("python", &body);
}
