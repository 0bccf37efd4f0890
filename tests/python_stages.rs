//! Stages written in Python (`stages/sdk-python`, built by componentize-py
//! when a manifest names their directory): `stages/text_features` gives
//! the same counts at any partitioning, and a hostile Python stage gets no
//! files, environment, sockets or real clock, is stopped at its deadline and its memory cap,
//! fails its task with its traceback in the stage log, and has a misspelt
//! configuration key refused before any data moves; the host keeps running.

use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type};
use wasmpipe_executor::{RunError, TaskFailure};
use wasmpipe_runtime::CallError;
use wasmpipe_tests::*;

/// Texts with spaces, tabs, repeated and non-ASCII words, and some empty
/// (null after ingest), as CSV with an `id`.
fn texts(dir: &Path) -> (std::path::PathBuf, Vec<Option<String>>) {
    let texts: Vec<Option<String>> = (0..40)
        .map(|i| match i % 7 {
            3 => None,
            k => Some(format!("word{i}  café\t{}naïve {}", "ab ".repeat(k), if i % 2 == 0 { "Café" } else { "end" })),
        })
        .collect();
    let mut csv = String::from("id,review\n");
    for (i, t) in texts.iter().enumerate() {
        csv.push_str(&format!("{i},{}\n", t.as_deref().map_or(String::new(), |t| format!("\"{t}\""))));
    }
    let path = dir.join("reviews.csv");
    std::fs::write(&path, csv).unwrap();
    (path, texts)
}

#[test]
fn text_features_counts_characters_and_tokens_at_any_partitioning() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, texts) = texts(dir.path());
    let stage = repo().join("stages/text_features");
    for partitions in [1, 3, 8] {
        let store = tempfile::tempdir().unwrap();
        let (exec, _) = executor(store.path(), partitions);
        let text = format!(
            "{}\n[stage.text]\ncomponent = {}\ninputs = [\"stage:ingest\"]\nlimits = {{ memory_mib = 256 }}\nconfig = {{ column = \"review\" }}\n",
            ingest_head(&csv, texts.len(), partitions),
            toml_path(&stage),
        );
        let report = run_text(&exec, &text, store.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.stages[1].tasks, partitions, "a task per partition");
        let batches = read_committed(&store.path().join("ml/text"));
        let column = |name: &str| -> Vec<Option<i64>> {
            batches
                .iter()
                .flat_map(|b| {
                    let c = b.column_by_name(name).unwrap().as_primitive::<Int64Type>().clone();
                    (0..c.len()).map(move |i| c.is_valid(i).then(|| c.value(i)))
                })
                .collect()
        };
        let want_chars: Vec<Option<i64>> = texts.iter().map(|t| t.as_ref().map(|t| t.chars().count() as i64)).collect();
        let want_tokens: Vec<Option<i64>> =
            texts.iter().map(|t| t.as_ref().map(|t| t.split_whitespace().count() as i64)).collect();
        assert_eq!(column("review_chars"), want_chars, "{partitions} partitions: characters");
        assert_eq!(column("review_tokens"), want_tokens, "{partitions} partitions: tokens");
    }
}

/// A Python stage that attacks its host as its `mode` says.
const HOSTILE: &str = r#"
from dataclasses import dataclass
import os
import time

import wasmpipe_sdk as wp

try:
    import socket
except ImportError:
    socket = None


@dataclass
class Config:
    mode: str


class Hostile(wp.Transformer):
    def open(self, task):
        self.mode = wp.config(Config).mode

    def transform(self, batch):
        if self.mode == "raise":
            raise ValueError("raised on purpose")
        if self.mode == "file":
            try:
                secret = open("/etc/passwd").read()
            except OSError as e:
                wp.fail(f"no file: {type(e).__name__}")
            wp.fail(f"read the runner's file: {secret[:20]!r}")
        if self.mode == "env":
            if os.environ.get("HOME") or os.environ.get("PATH"):
                wp.fail(f"saw the runner's environment: {sorted(os.environ)}")
            wp.fail(f"no environment: {len(os.environ)} variables")
        if self.mode == "socket":
            if socket is None:
                wp.fail("no socket module")
            try:
                socket.create_connection(("127.0.0.1", 22), timeout=1)
            except Exception as e:
                wp.fail(f"no socket: {type(e).__name__}")
            wp.fail("connected to the runner's port 22")
        if self.mode == "clock":
            wall, mono = time.time(), time.monotonic()
            sum(range(2_000_000))
            wp.fail(f"clock: wall moved {time.time() - wall}, monotonic moved {time.monotonic() - mono}, wall {wall}")
        if self.mode == "loop":
            while True:
                pass
        if self.mode == "bomb":
            hoard = []
            while True:
                hoard.append(bytearray(8 << 20))
        if self.mode == "kernels":
            x = batch["bmi"]
            s = x.summarize()
            z = x.standardize(s.mean, 2.0)
            positive = x.compare(">", s.mean) & ~x.is_null()
            picked = positive.choose(z, x * 0.0)
            copied = wp.Column.from_floats([v * 2 for v in x.to_list()])
            ratio = 1.0 / ((x - s.min) + 1.0)
            ints = x.cast("int64").to_list()
            wp.info(f"rows {s.count} mean {s.mean} ints {sum(ints)} distinct {x.distinct_count()}")
            out = wp.Batch.from_columns({"bmi": x, "z": z, "picked": picked, "copied": copied, "ratio": ratio})
            return out.filter(positive | ~positive).select(["bmi", "z", "picked", "copied", "ratio"])
        return batch


Transform = wp.export_transformer(Hostile)
"#;

#[test]
fn a_python_stage_is_confined_and_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let stage = dir.path().join("hostile_py");
    std::fs::create_dir_all(&stage).unwrap();
    std::fs::write(stage.join("app.py"), HOSTILE).unwrap();
    let csv = repo().join("examples/diabetes/diabetes.csv");
    let store = tempfile::tempdir().unwrap();
    let (exec, logs) = executor(store.path(), 2);
    let run = |config: &str, limits: &str| {
        let text = format!(
            "version = 1\nname = \"py\"\n[stage.ingest]\ncomponent = {}\ninputs = [{}]\n\
             [stage.h]\ncomponent = {}\ninputs = [\"stage:ingest\"]\nlimits = {{ {limits} }}\nconfig = {{ {config} }}\n",
            toml_path(&component("passthrough")),
            toml_path(&csv),
            toml_path(&stage),
        );
        run_text(&exec, &text, store.path())
    };
    let failure = |err: RunError| -> (String, TaskFailure) {
        let text = err.to_string();
        match err {
            RunError::Task { stage, cause, .. } if stage == "h" => (text, *cause),
            other => panic!("expected stage h's task to fail, got: {other}"),
        }
    };
    const ROOM: &str = "memory_mib = 256, timeout_s = 20";

    let (text, _) = failure(run("mode = \"file\"", ROOM).unwrap_err());
    assert!(text.contains("no file: "), "{text}");
    let (text, _) = failure(run("mode = \"env\"", ROOM).unwrap_err());
    assert!(text.contains("no environment: 0 variables"), "{text}");
    let (text, _) = failure(run("mode = \"socket\"", ROOM).unwrap_err());
    assert!(text.contains("no socket"), "{text}");
    // The wall clock is frozen, and the monotonic clock is the stage's own:
    // it moves only when the stage waits, not while it computes.
    let (text, _) = failure(run("mode = \"clock\"", ROOM).unwrap_err());
    assert!(text.contains("clock: wall moved 0.0, monotonic moved 0.0"), "{text}");

    logs.lock().unwrap().clear();
    let (text, _) = failure(run("mode = \"raise\"", ROOM).unwrap_err());
    let said: String = logs.lock().unwrap().iter().map(|(_, r)| format!("{}\n", r.message)).collect();
    assert!(said.contains("Traceback") && said.contains("ValueError: raised on purpose"), "{text}\n{said}");
    // The failure itself names the exception and where it was raised.
    assert!(text.contains("ValueError: raised on purpose (at ") && text.contains("app.py:"), "{text}");
    assert!(!text.contains("wasm backtrace"), "{text}");

    let (text, cause) = failure(run("mode = \"loop\"", "memory_mib = 256, timeout_s = 2").unwrap_err());
    assert!(matches!(cause, TaskFailure::Stage(CallError::Deadline { limit_ms: 2000 })), "{text}");

    logs.lock().unwrap().clear();
    let (text, cause) = failure(run("mode = \"bomb\"", "memory_mib = 96, timeout_s = 20").unwrap_err());
    let capped = matches!(cause, TaskFailure::Stage(CallError::Memory { cap_mib: 96, .. }));
    let said: String = logs.lock().unwrap().iter().map(|(_, r)| format!("{}\n", r.message)).collect();
    assert!(capped || said.contains("MemoryError"), "the memory cap stops it: {text}\n{said}");

    // A misspelt key: refused before any stage runs, ingest included.
    let err = run("mod = \"raise\"", ROOM).unwrap_err();
    assert!(matches!(&err, RunError::Config { .. }), "{err}");
    assert!(err.to_string().contains("mod: unknown key (this stage takes: mode)"), "{err}");

    // And the host still runs the stage; its kernels give what Rust computes.
    run("mode = \"pass\"", ROOM).unwrap_or_else(|e| panic!("{e}"));
    run("mode = \"kernels\"", ROOM).unwrap_or_else(|e| panic!("{e}"));
    let batches = read_committed(&store.path().join("py/h"));
    let column = |name: &str| -> Vec<f64> {
        batches
            .iter()
            .flat_map(|b| b.column_by_name(name).unwrap().as_primitive::<Float64Type>().values().to_vec())
            .collect()
    };
    let bmi = column("bmi");
    assert_eq!(bmi.len(), 442);
    let mean = bmi.iter().sum::<f64>() / bmi.len() as f64;
    let min = bmi.iter().copied().fold(f64::INFINITY, f64::min);
    for (i, x) in bmi.iter().enumerate() {
        let z = (x - mean) / 2.0;
        assert!((column("z")[i] - z).abs() < 1e-12, "row {i}: z");
        assert_eq!(column("picked")[i], if *x > mean { column("z")[i] } else { 0.0 }, "row {i}: picked");
        assert_eq!(column("copied")[i], x * 2.0, "row {i}: copied");
        assert!((column("ratio")[i] - 1.0 / (x - min + 1.0)).abs() < 1e-12, "row {i}: ratio");
    }
}

/// An iterative Python estimator: pass 0 learns the mean, pass 1 (handed
/// the mean as its carry) the mean absolute deviation around it; the model
/// maps x to (x - mean) / mad.
const TWO_PASS: &str = r#"
from dataclasses import dataclass

import wasmpipe_sdk as wp


@dataclass
class Config:
    column: str


class Mad(wp.Estimator):
    def begin(self, task, carry):
        return {"column": wp.config(Config).column, "mean": carry, "n": 0, "sum": 0.0}

    def update(self, state, batch):
        x = batch[state["column"]]
        if state["mean"] is not None:
            x = (x - state["mean"]).abs()
        s = x.summarize()
        state["n"] += s.count
        state["sum"] += s.sum

    def merge(self, left, right):
        return {**left, "n": left["n"] + right["n"], "sum": left["sum"] + right["sum"]}

    def finalize(self, state, pass_):
        if pass_ == 0:
            return wp.NextPass(state["sum"] / state["n"])
        return wp.Done({"column": state["column"], "mean": state["mean"], "mad": state["sum"] / state["n"], "passes": pass_ + 1})

    def apply(self, model, batch):
        c = model["column"]
        return batch.with_column(c, batch[c].standardize(model["mean"], model["mad"]))


Fit, Transform = wp.export_estimator(Mad)
"#;

#[test]
fn python_estimators_fit_in_parallel_and_merge_as_rust_ones_do() {
    let dir = tempfile::tempdir().unwrap();
    // Wide values, nulls, NaN and a constant column.
    let mut csv = String::from("id,a,b,c\n");
    for i in 0..300u64 {
        let a = ((i * 7919) % 1000) as f64 * 0.37 + 1e6;
        let b = match i % 11 {
            4 => String::new(),
            7 => "NaN".into(),
            _ => format!("{}", (i as f64).sin() * 1e-3),
        };
        csv.push_str(&format!("{i},{a},{b},5\n"));
    }
    let data = dir.path().join("data.csv");
    std::fs::write(&data, csv).unwrap();
    let mad = dir.path().join("mad_py");
    std::fs::create_dir_all(&mad).unwrap();
    std::fs::write(mad.join("app.py"), TWO_PASS).unwrap();
    std::fs::write(mad.join("pyproject.toml"), "[tool.wasmpipe]\nkind = \"estimator\"\n").unwrap();

    let column = |batches: &[arrow::record_batch::RecordBatch], name: &str| -> Vec<Option<f64>> {
        batches
            .iter()
            .flat_map(|b| {
                let c = b.column_by_name(name).unwrap().as_primitive::<Float64Type>().clone();
                (0..c.len()).map(move |i| c.is_valid(i).then(|| c.value(i)))
            })
            .collect()
    };
    let schema = "schema = { id = \"int64\", a = \"float64\", b = \"float64\", c = \"float64\" }";
    let mut first: Option<Vec<Option<f64>>> = None;
    for partitions in [1, 3, 8] {
        let store = tempfile::tempdir().unwrap();
        let (exec, _) = executor(store.path(), partitions);
        let stage = |name: &str, component: &Path, config: &str| {
            format!(
                "[stage.{name}]\ncomponent = {}\ninputs = [\"stage:ingest\"]\nlimits = {{ memory_mib = 256 }}\nconfig = {{ {config} }}\n",
                toml_path(component)
            )
        };
        let columns = "columns = [\"a\", \"b\", \"c\"]";
        let text = format!(
            "{}{schema}\n{}{}{}",
            ingest_head(&data, 300, partitions),
            stage("rust", &component("scaler"), columns),
            stage("py", &repo().join("stages/scaler_py"), columns),
            stage("mad", &mad, "column = \"a\""),
        );
        let report = run_text(&exec, &text, store.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            report.stages[2].tasks,
            2 * partitions + 1,
            "{partitions}: fit and transform tasks per partition, and a merge"
        );
        let (rust, py) = (read_committed(&store.path().join("ml/rust")), read_committed(&store.path().join("ml/py")));
        for name in ["a", "b", "c"] {
            let (r, p) = (column(&rust, name), column(&py, name));
            assert_eq!(r.len(), 300);
            for (i, (r, p)) in r.iter().zip(&p).enumerate() {
                match (r, p) {
                    (Some(r), Some(p)) if r.is_nan() => assert!(p.is_nan(), "{partitions}: {name}[{i}]"),
                    (Some(r), Some(p)) => assert!((r - p).abs() <= 1e-12, "{partitions}: {name}[{i}]: {r} vs {p}"),
                    (r, p) => assert_eq!(r.is_none(), p.is_none(), "{partitions}: {name}[{i}] null"),
                }
            }
        }
        assert!(column(&py, "c").iter().all(|c| *c == Some(0.0)), "a constant column scales by 1");
        // Partitioning changes only the rounding of the merged moments
        // (a is near 1e6, its standard deviation near 100).
        let scaled = column(&py, "a");
        match &first {
            None => first = Some(scaled),
            Some(one) => {
                for (x, y) in one.iter().zip(&scaled) {
                    let (x, y) = (x.unwrap(), y.unwrap());
                    assert!((x - y).abs() <= 1e-9, "{partitions} partitions against 1: {x} vs {y}");
                }
            }
        }
        // The iterative one: two passes, its carry handed to every partition.
        let a: Vec<f64> = column(&read_committed(&store.path().join("ml/ingest")), "a").into_iter().flatten().collect();
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        let mad_value = a.iter().map(|x| (x - mean).abs()).sum::<f64>() / a.len() as f64;
        let fitted = column(&read_committed(&store.path().join("ml/mad")), "a");
        for (x, z) in a.iter().zip(&fitted) {
            assert!((z.unwrap() - (x - mean) / mad_value).abs() < 1e-9, "{partitions}: mad");
        }
        assert_eq!(report.stages[3].passes, 2, "{partitions}: passes");
    }
}
