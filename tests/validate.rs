//! The `validate` stage end to end on the diabetes data set
//! (`../shared/testdata/ml/diabetes.csv`) with faults injected: a value out
//! of range, a null, malformed e-mail addresses, a duplicated key, an
//! unknown code and missing values. At 1, 3 and 8 partitions the
//! quarantine must hold exactly the faulty rows with their reasons, the
//! output exactly the other rows, unchanged, and the report the exact
//! counts; `warn` rules log and pass rows on, and `fail` rules fail the run
//! naming the rule.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use serde_json::{Value, json};
use wasmpipe_executor::{RunError, RunReport};
use wasmpipe_runtime::Level;
use wasmpipe_tests::*;

/// Partitions of every pipeline's input (the ingest output's row groups).
const PARTITIONS: [usize; 3] = [1, 3, 8];

/// The rows that the quarantine rules must reject (by `id`; `id` 100 is
/// also the appended duplicate row), and the reason of each.
fn quarantined() -> Vec<(i64, &'static str)> {
    vec![
        (10, "age: range [0, 120] (got 150)"),
        (20, "age: not_null (got null)"),
        (30, "email: regex ^[^@]+@[^@]+$ (got x@)"),
        (40, "age: range [0, 120] (got -3); email: regex ^[^@]+@[^@]+$ (got nope)"),
        (100, "id: unique (got 100)"),
        (100, "id: unique (got 100)"),
    ]
}

/// diabetes.csv with an `id` (the row's number), a `sex_code` (`M`/`F`)
/// and an `email` column, and these faults: age 150 (row 10), no age
/// (row 20), e-mail `x@` (row 30), age -3 and e-mail `nope` (row 40), sex
/// code `X` (row 50), no bmi (rows 60 and 61), and row 100 repeated at the
/// end (443 rows). Returns the file and its number of data rows.
fn faulty_diabetes(dir: &Path) -> (PathBuf, usize) {
    let text = std::fs::read_to_string(testdata().join("ml/diabetes.csv")).unwrap();
    let mut lines = text.lines().filter(|l| !l.is_empty());
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (age, sex, bmi) = (col("age"), col("sex"), col("bmi"));
    let mut out = format!("id,{},sex_code,email\n", header.join(","));
    let mut rows: Vec<String> = Vec::new();
    for (i, line) in lines.enumerate() {
        let mut cells: Vec<String> = line.split(',').map(String::from).collect();
        let code = if cells[sex] == "1.0" { "F" } else { "M" };
        let mut email = format!("patient{i}@example.org");
        match i {
            10 => cells[age] = "150".into(),
            20 => cells[age] = String::new(),
            30 => email = "x@".into(),
            40 => (cells[age], email) = ("-3".into(), "nope".into()),
            60 | 61 => cells[bmi] = String::new(),
            _ => {}
        }
        let code = if i == 50 { "X" } else { code };
        rows.push(format!("{i},{},{code},{email}", cells.join(",")));
    }
    rows.push(rows[100].clone());
    for r in &rows {
        out += r;
        out.push('\n');
    }
    let path = dir.join("diabetes_faulty.csv");
    std::fs::write(&path, out).unwrap();
    (path, rows.len())
}

/// The rules of the main pipeline, in the manifest's inline form.
const RULES: &str = r#"config = { examples = 3, rules = [
  { column = "age", check = "not_null", policy = "quarantine" },
  { column = "age", check = "range", min = 0, max = 120, policy = "quarantine" },
  { column = "email", check = "regex", pattern = "^[^@]+@[^@]+$", policy = "quarantine" },
  { column = "id", check = "unique", policy = "quarantine" },
  { column = "sex_code", check = "allowed", values = ["M", "F"], policy = "warn" },
  { column = "bmi", check = "max_null_fraction", max = 0.001, policy = "warn" },
  { check = "row_count", min = 100, max = 1000000 },
] }"#;

/// The pipeline: the CSV ingested into `partitions` partitions, then stage
/// `check` (validate) with `config` (a TOML `config = ...` line).
fn manifest(csv: &Path, rows: usize, partitions: usize, config: &str) -> String {
    format!(
        "{}\n[stage.check]\ncomponent = {}\ninputs = [\"stage:ingest\"]\n{config}\n",
        ingest_head(csv, rows, partitions),
        toml_path(&component("validate")),
    )
}

struct Run {
    report: RunReport,
    logs: Logs,
    store: tempfile::TempDir,
}

impl Run {
    fn dir(&self, stage: &str) -> PathBuf {
        self.store.path().join("ml").join(stage)
    }

    fn rows(&self, stage: &str) -> RecordBatch {
        let batches = read_committed(&self.dir(stage));
        arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
    }

    /// `(reason, record)` of every quarantined row, in order.
    fn quarantine(&self) -> Vec<(String, Value)> {
        let mut rows = Vec::new();
        for b in read_quarantine(&self.dir("check")) {
            let (reason, record) = (b.column_by_name("reason").unwrap(), b.column_by_name("record").unwrap());
            let (reason, record) = (reason.as_string::<i32>(), record.as_string::<i32>());
            for i in 0..b.num_rows() {
                rows.push((reason.value(i).to_string(), serde_json::from_str(record.value(i)).unwrap()));
            }
        }
        rows
    }

    fn warnings(&self) -> Vec<String> {
        let logs = self.logs.lock().unwrap();
        logs.iter().filter(|(_, r)| r.level == Level::Warn).map(|(_, r)| r.message.clone()).collect()
    }
}

fn try_run(csv: &Path, rows: usize, partitions: usize, config: &str) -> (Result<Run, RunError>, Logs) {
    let text = manifest(csv, rows, partitions, config);
    let store = tempfile::tempdir().unwrap();
    let (exec, logs) = executor(store.path(), partitions);
    match run_text(&exec, &text, store.path()) {
        Ok(report) => (Ok(Run { report, logs: logs.clone(), store }), logs),
        Err(e) => (Err(e), logs),
    }
}

fn run(csv: &Path, rows: usize, partitions: usize, config: &str) -> Run {
    try_run(csv, rows, partitions, config).0.unwrap_or_else(|e| panic!("pipeline fails at {partitions}: {e}"))
}

fn ids(rows: &RecordBatch) -> Vec<i64> {
    rows.column_by_name("id").unwrap().as_primitive::<Int64Type>().values().to_vec()
}

#[test]
fn quarantine_report_and_warnings_are_exact_at_every_partitioning() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, rows) = faulty_diabetes(dir.path());
    let runs: Vec<Run> = PARTITIONS.iter().map(|&p| run(&csv, rows, p, RULES)).collect();
    let want = quarantined();

    for (r, p) in runs.iter().zip(PARTITIONS) {
        // The quarantine: exactly the faulty rows, in data order, each with
        // every reason and the whole row.
        let q = r.quarantine();
        let got: Vec<(i64, &str)> = q.iter().map(|(why, rec)| (rec["id"].as_i64().unwrap(), why.as_str())).collect();
        assert_eq!(got, want, "{p} partitions");
        assert_eq!(q[0].1["age"].as_f64(), Some(150.0), "the record holds the row");
        assert_eq!(q[1].1["age"], Value::Null, "nulls are explicit");
        assert_eq!(q[2].1["email"], "x@");
        assert_eq!(q[4].1, q[5].1, "the duplicated row, twice");

        // The output: every other row, columns and values unchanged.
        let input = r.rows("ingest");
        let out = r.rows("check");
        let bad: BTreeSet<i64> = want.iter().map(|(id, _)| *id).collect();
        let keep = BooleanArray::from(ids(&input).iter().map(|id| !bad.contains(id)).collect::<Vec<_>>());
        assert_eq!(out, arrow::compute::filter_record_batch(&input, &keep).unwrap(), "{p} partitions");
        assert_eq!(out.num_rows(), rows - 6);
        assert!(ids(&out).contains(&50) && ids(&out).contains(&60), "warn rules pass rows on");

        // The run summary agrees.
        let stage = r.report.stages.iter().find(|s| s.name == "check").unwrap();
        assert_eq!((stage.rows_out, stage.rows_quarantined), ((rows - 6) as u64, 6));
        let (doc, table) = read_report(&r.dir("check"));
        assert_eq!(stage.report.as_deref().map(|s| serde_json::from_str::<Value>(s).unwrap()), Some(doc.clone()));

        // Warnings name the rule, its counts and examples.
        let warnings = r.warnings();
        for w in [
            "validation warning: rule \"sex_code: allowed [M, F]\": 1 of 443 rows failed (examples: X)",
            "validation warning: rule \"bmi: max_null_fraction 0.001\": 2 of 443 rows are null, a fraction of 0.0045 (at most 0.001)",
        ] {
            assert!(warnings.iter().any(|m| m == w), "{p} partitions: no warning {w:?} in {warnings:#?}");
        }

        // The report table: one row per rule, as the JSON.
        let table = arrow::compute::concat_batches(&table[0].schema(), &table).unwrap();
        assert_eq!(table.num_rows(), 7);
        let names = table.column_by_name("rule").unwrap().as_string::<i32>();
        let failed = table.column_by_name("rows_failed").unwrap().as_primitive::<Int64Type>();
        let examples = table.column_by_name("examples").unwrap().as_string::<i32>();
        let columns = table.column_by_name("column").unwrap().as_string::<i32>();
        for (i, rule) in doc["rules"].as_array().unwrap().iter().enumerate() {
            assert_eq!(names.value(i), rule["name"]);
            assert_eq!(failed.value(i), rule["rows_failed"].as_i64().unwrap());
            assert_eq!(serde_json::from_str::<Value>(examples.value(i)).unwrap(), rule["examples"]);
        }
        assert!(columns.is_null(6), "row_count has no column");
    }

    // The report, the quarantine and the output do not depend on partitioning.
    let (doc, _) = read_report(&runs[0].dir("check"));
    for r in &runs {
        let stage = r.report.stages.iter().find(|s| s.name == "check").unwrap();
        eprintln!("validate: {} tasks, {} fit passes, {:?}", stage.tasks, stage.passes, stage.wall);
        assert_eq!(stage.passes, 2, "a second pass finds the repeated keys' examples");
    }
    eprintln!("validate: report {doc}");
    for r in &runs[1..] {
        assert_eq!(read_report(&r.dir("check")).0, doc);
        assert_eq!(r.quarantine(), runs[0].quarantine());
        assert_eq!(r.rows("check"), runs[0].rows("check"));
    }
    let rule = |name: &str, column: Value, check: &str, policy: &str, failed: u64, passed: bool, ex: Value| {
        json!({"name": name, "column": column, "check": check, "policy": policy, "rows_checked": 443,
               "rows_failed": failed, "passed": passed, "examples": ex})
    };
    let want = json!({"rows": 443, "passed": false, "rules": [
        rule("age: not_null", json!("age"), "not_null", "quarantine", 1, false, json!(["null"])),
        rule("age: range [0, 120]", json!("age"), "range", "quarantine", 2, false, json!(["150", "-3"])),
        rule("email: regex ^[^@]+@[^@]+$", json!("email"), "regex", "quarantine", 2, false, json!(["x@", "nope"])),
        rule("id: unique", json!("id"), "unique", "quarantine", 2, false, json!(["100", "100"])),
        rule("sex_code: allowed [M, F]", json!("sex_code"), "allowed", "warn", 1, false, json!(["X"])),
        rule("bmi: max_null_fraction 0.001", json!("bmi"), "max_null_fraction", "warn", 2, false, json!([])),
        rule("row_count [100, 1000000]", Value::Null, "row_count", "fail", 0, true, json!([])),
    ]});
    assert_eq!(doc, want);
}

#[test]
fn fail_rules_fail_the_run_naming_rule_counts_and_examples() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, rows) = faulty_diabetes(dir.path());
    let config = r#"config = { rules = [
  { column = "id", check = "unique" },
  { check = "row_count", min = 1000, policy = "fail" },
  { column = "sex_code", check = "allowed", values = ["M", "F"], policy = "warn" },
] }"#;
    for p in PARTITIONS {
        let (result, logs) = try_run(&csv, rows, p, config);
        let err = result.err().unwrap_or_else(|| panic!("{p} partitions: the run passes")).to_string();
        eprintln!("validate, {p} partitions: {err}");
        assert!(
            err.contains(
                "validation failed: rule \"id: unique\": 2 of 443 rows failed (examples: 100, 100); \
                 rule \"row_count >= 1000\": 443 rows, expected at least 1000"
            ),
            "{p} partitions: {err}"
        );
        assert!(!err.contains("sex_code"), "a warn rule does not fail the run: {err}");
        let logs = logs.lock().unwrap();
        assert!(logs.iter().any(|(_, r)| r.level == Level::Warn && r.message.contains("sex_code: allowed [M, F]")));
    }
    // Unique keys and enough rows pass.
    let ok = r#"config = { rules = [{ column = "email", check = "unique", policy = "warn" }, { check = "row_count", min = 400 }] }"#;
    let r = run(&csv, rows, 3, ok);
    let (doc, _) = read_report(&r.dir("check"));
    assert_eq!(doc["rules"][0]["rows_failed"], 2, "the duplicated row's e-mail, twice: {doc}");
    assert_eq!(doc["passed"], false);
}

#[test]
fn rule_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, rows) = faulty_diabetes(dir.path());
    let error = |config: &str| {
        let (result, _) = try_run(&csv, rows, 3, config);
        result.err().unwrap_or_else(|| panic!("{config}: the run passes")).to_string()
    };
    let e = error(r#"config = { rules = [{ name = "mail", column = "email", check = "regex", pattern = "([a-z" }] }"#);
    assert!(e.contains("rule \"mail\": invalid pattern"), "{e}");
    let e = error(r#"config = { rules = [{ column = "weight", check = "range", min = 0 }] }"#);
    assert!(e.contains("rule \"weight: range >= 0\": no column \"weight\""), "{e}");
    let e = error(r#"config = { rules = [{ column = "email", check = "range", max = 1 }] }"#);
    assert!(
        e.contains("rule \"email: range <= 1\": column \"email\" is utf8, and range needs a numeric column"),
        "{e}"
    );
    let e = error(r#"config = { rules = [{ check = "row_count", min = 1, policy = "quarantine" }] }"#);
    assert!(e.contains("does not apply to row_count"), "{e}");
    let e = error(r#"config = { rules = [{ column = "id", check = "unique", polcy = "warn" }] }"#);
    assert!(e.contains("polcy"), "{e}");
}
