//! The demo pipeline end to end: real components on the diabetes data,
//! checked against numpy, pyarrow and DuckDB. (The `wasmpipe` binary's own
//! tests are in `host/cli/tests/`.)

use wasmpipe_manifest::Manifest;
use wasmpipe_tests::*;

fn demo_manifest() -> (Manifest, std::path::PathBuf) {
    let dir = repo().join("examples/diabetes");
    (Manifest::load(&dir.join("wasmpipe.toml")).expect("demo manifest parses"), dir)
}

#[test]
fn demo_matches_numpy_least_squares() {
    let store = tempfile::tempdir().unwrap();
    let (exec, logs) = executor(store.path(), 3);
    let (manifest, dir) = demo_manifest();
    let report = exec.run(&manifest, &dir).expect("demo runs");

    // 442 rows in row groups of 64: every stage after ingest runs 7 tasks.
    let clean = report.stages.iter().find(|s| s.name == "clean").unwrap();
    assert_eq!(clean.tasks, 7);
    assert_eq!((clean.rows_in, clean.rows_out), (442, 442));

    let fit_dir = store.path().join("diabetes/fit");
    let eval_dir = store.path().join("diabetes/evaluate");
    let reference = python_json(
        "reference.py",
        &[dir.join("diabetes.csv").to_str().unwrap(), fit_dir.to_str().unwrap(), eval_dir.to_str().unwrap()],
    );
    let ours = result(&report, "evaluate");
    // The metrics are also the stage's report: JSON, and Parquet rows
    // that DuckDB reads.
    // (less the sample of rows the run report plots).
    assert_eq!(report_metrics(&reference["report_json"]), ours);
    assert_eq!(reference["report_json"]["sample"]["actual"].as_array().unwrap().len(), 442);
    let evaluate = report.stages.iter().find(|s| s.name == "evaluate").unwrap();
    assert_eq!(report_metrics(&serde_json::from_str(evaluate.report.as_ref().unwrap()).unwrap()), ours);
    for metric in ["rows", "r2", "rmse", "mae"] {
        assert_eq!(reference["report_table"][metric].as_f64(), ours[metric].as_f64(), "{metric}");
    }
    let r2 = ours["r2"].as_f64().unwrap();
    assert!((reference["numpy_r2"].as_f64().unwrap() - 0.5177).abs() < 5e-5, "{reference}");
    assert!((r2 - reference["numpy_r2"].as_f64().unwrap()).abs() < 1e-9, "wasmpipe r2 {r2} vs {reference}");
    assert_eq!(ours["rows"], 442);
    assert_eq!(reference["rows"], 442);
    assert_eq!(reference["targets_in_order"], true, "parts keep the CSV's row order");
    assert!(reference["max_abs_prediction_diff"].as_f64().unwrap() < 1e-8, "{reference}");
    assert_eq!(reference["duckdb_rows"], 442);
    assert!(reference["duckdb_sum_diff"].as_f64().unwrap() < 1e-6, "{reference}");

    // The stages' logs arrive tagged with stage and partition.
    let logs = logs.lock().unwrap();
    assert!(logs.iter().any(|(label, r)| label == "evaluate[merge]" && r.message == format!("r2 = {r2:.4}")));
    assert_eq!(
        logs.iter().filter(|(label, r)| label.starts_with("clean[") && r.message.starts_with("kept")).count(),
        7
    );
}

#[test]
fn results_do_not_depend_on_partitioning_or_parallelism() {
    let (manifest, dir) = demo_manifest();
    let mut coefficients = Vec::new();
    // One fit task per partition (`fit_task_mib = 0`), then the default,
    // which packs the 26 small partitions of the last into one fit task.
    for (rows, parallelism, fit_task_mib) in [(442, 1, 0), (64, 3, 0), (17, 8, 0), (17, 2, 8)] {
        let mut m = manifest.clone();
        m.defaults.batch_rows = Some(rows);
        m.defaults.row_group_rows = Some(rows);
        m.defaults.fit_task_mib = Some(fit_task_mib);
        let store = tempfile::tempdir().unwrap();
        let (exec, _) = executor(store.path(), parallelism);
        let report = exec.run(&m, &dir).expect("demo runs");
        let fit = report.stages.iter().find(|s| s.name == "fit").unwrap();
        let n = 442usize.div_ceil(rows);
        let fits = if fit_task_mib == 0 { n } else { 1 };
        let fan_in = wasmpipe_executor::MERGE_FAN_IN;
        let combines = if fits > fan_in { fits.div_ceil(fan_in) } else { 0 };
        assert_eq!(
            fit.tasks,
            fits + n + combines + 1,
            "fit tasks, transform tasks, the merge tree's combines, one merge"
        );
        let model = result(&report, "fit");
        let mut c: Vec<f64> = model["coefficients"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        c.push(model["intercept"].as_f64().unwrap());
        coefficients.push(c);
    }
    for other in &coefficients[1..] {
        for (a, b) in coefficients[0].iter().zip(other) {
            assert!((a - b).abs() <= 1e-9 * a.abs().max(1.0), "{:?} vs {:?}", coefficients[0], other);
        }
    }
}

#[test]
fn rerun_commits_anew_and_removes_what_the_new_commit_does_not_list() {
    let (manifest, dir) = demo_manifest();
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let first = exec.run(&manifest, &dir).expect("first run");
    let mut coarser = manifest.clone();
    coarser.defaults.row_group_rows = Some(200);
    coarser.defaults.batch_rows = Some(200);
    let second = exec.run(&coarser, &dir).expect("second run");
    assert_ne!(first.run_id, second.run_id);

    let clean = store.path().join("diabetes/clean");
    let commit: serde_json::Value =
        serde_json::from_slice(&std::fs::read(clean.join("_wasmpipe_commit.json")).unwrap()).unwrap();
    assert_eq!(commit["run_id"], second.run_id.as_str());
    let listed: Vec<String> =
        commit["parts"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().into()).collect();
    assert_eq!(listed.len(), 3, "442 rows in row groups of 200");
    let mut on_disk: Vec<String> =
        std::fs::read_dir(&clean).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    on_disk.sort();
    let mut expected = listed.clone();
    expected.push("_wasmpipe_commit.json".into());
    expected.sort();
    assert_eq!(on_disk, expected, "only committed parts remain");
    let rows: usize = read_committed(&clean).iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 442);
    // Lineage: the commit names its input's commit (by identity) and the
    // component. batch_rows changed, so validate was committed anew too.
    let validate = commit_record(&store.path().join("diabetes/validate"));
    assert_eq!(validate["run_id"], second.run_id.as_str());
    let identity = validate["identity"].as_str().unwrap();
    assert_eq!(identity.len(), 64);
    assert!(commit["inputs"][0].as_str().unwrap().ends_with(&format!("diabetes/validate@{identity}")));
    assert_eq!(commit["component"].as_str().unwrap().len(), 64);
}

#[test]
fn an_identical_rerun_skips_committed_stages_and_resumes_completed_tasks() {
    let (manifest, dir) = demo_manifest();
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let first = exec.run(&manifest, &dir).expect("first run");
    assert!(first.stages.iter().all(|s| s.committed_before.is_none() && s.tasks_skipped == 0));
    let clean = store.path().join("diabetes/clean");
    let parts_before = committed_files(&clean);

    // Identical rerun: every stage is already committed; nothing runs.
    let again = exec.run(&manifest, &dir).expect("identical rerun");
    for s in &again.stages {
        assert_eq!(s.committed_before.as_deref(), Some(first.run_id.as_str()), "stage {}", s.name);
    }
    assert_eq!(result(&again, "evaluate"), result(&first, "evaluate"));

    // A run that died in `clean` after its tasks completed but before it
    // committed leaves what this recreates: its journal (naming the parts it
    // was about to write), every task's record and part, and no commit. One
    // part has gone missing as well.
    let commit: serde_json::Value =
        serde_json::from_slice(&std::fs::read(clean.join("_wasmpipe_commit.json")).unwrap()).unwrap();
    std::fs::create_dir_all(clean.join("_wasmpipe_tasks")).unwrap();
    let names: Vec<&str> = commit["parts"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    let journal = serde_json::json!({"run_id": "died", "objects": names});
    std::fs::write(clean.join("_wasmpipe_tasks/journal-died.json"), journal.to_string()).unwrap();
    for part in commit["parts"].as_array().unwrap() {
        // A task record: its JSON header line (storage::commit::TaskRecord),
        // then no payload.
        let record = serde_json::json!({"kind": "transform", "part": part, "quarantine": null, "rows_in": part["rows"], "schema": null});
        std::fs::write(clean.join("_wasmpipe_tasks").join(part["task"].as_str().unwrap()), format!("{record}\n"))
            .unwrap();
    }
    std::fs::remove_file(clean.join("_wasmpipe_commit.json")).unwrap();
    std::fs::remove_file(clean.join(&parts_before[0])).unwrap();
    let resumed = exec.run(&manifest, &dir).expect("resumed run");
    let stage =
        |r: &wasmpipe_executor::RunReport, name: &str| r.stages.iter().find(|s| s.name == name).unwrap().clone();
    assert_eq!(stage(&resumed, "ingest").committed_before.as_deref(), Some(first.run_id.as_str()));
    let c = stage(&resumed, "clean");
    assert!(c.committed_before.is_none(), "clean had no commit, so it ran");
    assert_eq!(c.tasks, 7);
    assert_eq!(c.tasks_skipped, 6, "six tasks had records and parts; the one whose part is gone ran again");
    assert_eq!(committed_files(&clean), parts_before, "the same part names: nothing duplicated");
    // Downstream stages read the same parts, so their identities match
    // their commits and they are skipped.
    for name in ["scale", "fit", "evaluate"] {
        assert!(stage(&resumed, name).committed_before.is_some(), "{name} is unchanged");
    }
    assert_eq!(result(&resumed, "evaluate"), result(&first, "evaluate"));
    let mut on_disk: Vec<String> =
        std::fs::read_dir(&clean).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    on_disk.sort();
    let mut expected = parts_before.clone();
    expected.push("_wasmpipe_commit.json".into());
    expected.sort();
    assert_eq!(on_disk, expected, "no task records or stray parts remain");
}

/// The part names a commit lists, in order.
fn committed_files(output: &std::path::Path) -> Vec<String> {
    let commit: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output.join("_wasmpipe_commit.json")).unwrap()).unwrap();
    commit["parts"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
}

/// Diabetes with a held-out test split: `linreg` fits on the train branch
/// and the same component applies that model (`model = "stage:fit"`) to the
/// test branch, which `evaluate` scores.
fn held_out_text() -> String {
    let csv = repo().join("examples/diabetes/diabetes.csv");
    format!(
        r#"version = 1
name = "heldout"
[defaults]
batch_rows = 64
row_group_rows = 64
[stage.ingest]
component = {pass}
inputs = [{csv}]
[stage.train]
component = {split}
inputs = ["stage:ingest"]
config = {{ fractions = {{ train = 0.75, test = 0.25 }}, seed = 3, keep = "train" }}
[stage.test]
component = {split}
inputs = ["stage:ingest"]
config = {{ fractions = {{ train = 0.75, test = 0.25 }}, seed = 3, keep = "test" }}
[stage.fit]
component = {linreg}
inputs = ["stage:train"]
config = {{ features = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"], target = "target" }}
[stage.predict]
component = {linreg}
inputs = ["stage:test"]
model = "stage:fit"
config = {{ features = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"], target = "target" }}
[stage.evaluate]
component = {evaluate}
inputs = ["stage:predict"]
config = {{ target = "target" }}
"#,
        pass = toml_path(&component("passthrough")),
        csv = toml_path(&csv),
        split = toml_path(&component("split")),
        linreg = toml_path(&component("linreg")),
        evaluate = toml_path(&component("evaluate")),
    )
}

#[test]
fn a_model_fitted_on_the_train_split_is_applied_to_the_test_split() {
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let report = run_text(&exec, &held_out_text(), store.path()).expect("held-out pipeline runs");
    let stage = |name: &str| report.stages.iter().find(|s| s.name == name).unwrap();
    let (train, test) = (stage("train").rows_out, stage("test").rows_out);
    assert_eq!(train + test, 442);
    assert!((80..=140).contains(&test), "about a quarter held out: {test}");
    assert_eq!(stage("predict").passes, 0, "the predict stage fits nothing");
    assert_eq!(stage("predict").rows_out, test);

    // The predictions are the fitted model applied to the test rows.
    let model = result(&report, "fit");
    let coefficients: Vec<f64> =
        model["coefficients"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let intercept = model["intercept"].as_f64().unwrap();
    let features = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"];
    let (mut sse, mut targets) = (0.0, Vec::new());
    for batch in read_committed(&store.path().join("heldout/predict")) {
        let col = |name: &str| {
            let c = batch.column_by_name(name).unwrap();
            arrow::compute::cast(c, &arrow::datatypes::DataType::Float64).unwrap()
        };
        let prediction = col("prediction");
        let prediction = prediction.as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
        let target = col("target");
        let target = target.as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
        let xs: Vec<_> = features.iter().map(|f| col(f)).collect();
        for i in 0..batch.num_rows() {
            let want = intercept
                + xs.iter()
                    .zip(&coefficients)
                    .map(|(x, c)| c * x.as_any().downcast_ref::<arrow::array::Float64Array>().unwrap().value(i))
                    .sum::<f64>();
            assert!((prediction.value(i) - want).abs() < 1e-9 * want.abs().max(1.0), "row {i}");
            sse += (target.value(i) - want).powi(2);
            targets.push(target.value(i));
        }
    }
    let mean = targets.iter().sum::<f64>() / targets.len() as f64;
    let sst: f64 = targets.iter().map(|t| (t - mean).powi(2)).sum();
    let r2 = result(&report, "evaluate")["r2"].as_f64().unwrap();
    assert!((r2 - (1.0 - sse / sst)).abs() < 1e-9, "held-out r2 {r2}");
    let commit: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.path().join("heldout/predict/_wasmpipe_commit.json")).unwrap())
            .unwrap();
    let model_sha = report.stages.iter().find(|s| s.name == "fit").unwrap().model.as_ref().unwrap().sha256.clone();
    assert!(
        commit["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i.as_str().unwrap().ends_with(&format!("heldout/fit@{model_sha}"))),
        "lineage names the applied model: {commit}"
    );
}

#[test]
fn applying_a_model_that_is_not_there_is_a_clear_error() {
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let text = held_out_text().replace("model = \"stage:fit\"", "model = \"stage:ingest\"");
    let err = run_text(&exec, &text, store.path()).unwrap_err().to_string();
    assert!(err.contains("stage \"ingest\" is a transformer, so it commits no model"), "{err}");
    // A transformer has no transform-with-a-model.
    let text = format!(
        "{}[stage.copy]\ncomponent = {}\ninputs = [\"stage:test\"]\nmodel = \"stage:fit\"\n",
        held_out_text(),
        toml_path(&component("passthrough"))
    );
    let err = run_text(&exec, &text, store.path()).unwrap_err().to_string();
    assert!(err.contains("stage \"copy\"") && err.contains("must be an estimator"), "{err}");
}

/// The classification demos (`examples/breast_cancer`, `examples/wine`,
/// `examples/iris`):
/// held-out metrics from a model fitted on the stratified train split.
fn classification_demo(name: &str) -> (serde_json::Value, wasmpipe_executor::RunReport) {
    let dir = repo().join("examples").join(name);
    let manifest = Manifest::load(&dir.join("wasmpipe.toml")).expect("demo manifest parses");
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let report = exec.run(&manifest, &dir).expect("demo runs");
    (result(&report, "evaluate"), report)
}

#[test]
fn the_breast_cancer_demo_classifies_held_out_rows() {
    let (metrics, report) = classification_demo("breast_cancer");
    let rows = |s: &str| report.stages.iter().find(|r| r.name == s).unwrap().rows_out;
    // One split stage, read as its two named outputs: every row on one side.
    assert_eq!(rows("split"), 569);
    let (train, test) = (rows("scale"), rows("scale_test"));
    assert_eq!(train + test, 569);
    assert_eq!(metrics["rows"], test);
    // Stratified: the test split keeps the classes' proportions (212 / 357).
    let support: Vec<u64> = metrics["support"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(support.iter().sum::<u64>(), test);
    assert!((support[0] as f64 / test as f64 - 212.0 / 569.0).abs() < 0.01, "{support:?}");
    assert!(metrics["accuracy"].as_f64().unwrap() > 0.95, "{metrics}");
    assert!(metrics["roc_auc"].as_f64().unwrap() > 0.98, "{metrics}");
}

#[test]
fn the_wine_demo_classifies_three_cultivars() {
    let (metrics, _) = classification_demo("wine");
    assert_eq!(metrics["classes"], serde_json::json!([0, 1, 2]));
    assert!(metrics["accuracy"].as_f64().unwrap() > 0.9, "{metrics}");
    assert!(metrics["log_loss"].as_f64().unwrap() < 0.3, "{metrics}");
}

#[test]
fn the_iris_demo_mixes_rust_and_python_stages() {
    let (metrics, report) = classification_demo("iris");
    let rows = |s: &str| report.stages.iter().find(|r| r.name == s).unwrap().rows_out;
    assert_eq!(rows("split"), 150);
    assert_eq!(rows("scale") + rows("scale_test"), 150, "the Python scaler applied its model to every row");
    assert_eq!(metrics["classes"], serde_json::json!([0, 1, 2]));
    assert!(metrics["accuracy"].as_f64().unwrap() > 0.9, "{metrics}");
    // The scaler is the Python component (it carries CPython: megabytes).
    let scale = report.stages.iter().find(|r| r.name == "scale").unwrap();
    assert!(scale.component_bytes > 10 << 20, "{} bytes", scale.component_bytes);
    assert_eq!(scale.passes, 1);
}

#[test]
fn classify_eval_can_skip_the_exact_roc_auc() {
    let dir = repo().join("examples/breast_cancer");
    let text = std::fs::read_to_string(dir.join("wasmpipe.toml")).unwrap();
    let without =
        text.replace(r#"config = { target = "target" }"#, r#"config = { target = "target", roc_auc = false }"#);
    assert_ne!(without, text);
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let report = exec.run(&Manifest::parse(&without).unwrap(), &dir).expect("demo runs");
    let metrics = result(&report, "evaluate");
    assert!(metrics.get("roc_auc").is_none_or(|v| v.is_null()), "{metrics}");
    let (full, _) = classification_demo("breast_cancer");
    for key in ["accuracy", "log_loss", "confusion_matrix", "f1"] {
        assert_eq!(metrics[key], full[key], "{key}");
    }
}

/// Every run leaves `<store>/_runs/<run id>/run.json`: its stages with
/// their tasks and reports; a failed run's says which stage failed and why.
#[test]
fn every_run_leaves_a_run_record_a_failed_one_too() {
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let (manifest, dir) = demo_manifest();
    let report = exec.run(&manifest, &dir).expect("demo runs");
    let read = |run_id: &str| -> serde_json::Value {
        let path = store.path().join("_runs").join(run_id).join("run.json");
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
    };
    let run = read(&report.run_id);
    assert_eq!(run["format"], 1);
    assert_eq!((run["status"].as_str(), run["pipeline"].as_str()), (Some("succeeded"), Some("diabetes")));
    assert!(run.get("error").is_none(), "{run}");
    let stages = run["stages"].as_array().unwrap();
    assert_eq!(stages.len(), report.stages.len());
    for (s, r) in stages.iter().zip(&report.stages) {
        assert_eq!(s["name"], r.name.as_str());
        assert_eq!(s["status"], "ran");
        assert_eq!(s["rows_out"], r.rows_out);
        let tasks = s["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), r.tasks, "{}: a record per task", r.name);
        for t in tasks {
            assert!(t["started_ms"].as_u64().unwrap() > 1_700_000_000_000, "{t}");
            let name = t["task"].as_str().unwrap();
            if let Some(p) = name.strip_prefix("transform:") {
                assert_eq!(t["partition"].as_u64(), Some(p.parse().unwrap()), "{t}");
            }
        }
    }
    let evaluate = stages.iter().find(|s| s["name"] == "evaluate").unwrap();
    assert!((evaluate["report"]["r2"].as_f64().unwrap() - 0.5177).abs() < 5e-5, "{evaluate}");
    let fit = stages.iter().find(|s| s["name"] == "fit").unwrap();
    assert_eq!(fit["model"], report.stages.iter().find(|s| s.name == "fit").unwrap().model.as_ref().unwrap().sha256);

    // The same pipeline with a validation rule its data breaks: found when
    // the stage has read its rows.
    let text = std::fs::read_to_string(dir.join("wasmpipe.toml")).unwrap();
    assert!(text.contains("check = \"row_count\", min = 400,"));
    let broken =
        Manifest::parse(&text.replace("check = \"row_count\", min = 400,", "check = \"row_count\", min = 4000,"))
            .unwrap();
    let err = exec.run(&broken, &dir).expect_err("the validate stage fails the run").to_string();
    let runs: Vec<_> = std::fs::read_dir(store.path().join("_runs")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let failed =
        runs.iter().map(|id| read(id.to_str().unwrap())).find(|r| r["status"] == "failed").expect("a failed run");
    assert!(failed["error"].as_str().unwrap().contains("4000"), "{failed}\n{err}");
    let last = failed["stages"].as_array().unwrap().last().unwrap();
    assert_eq!((last["name"].as_str(), last["status"].as_str()), (Some("validate"), Some("failed")), "{failed}");

    // A projection naming a column the data lacks fails before any data
    // moves: no stage ran, and no run was recorded.
    let mut broken = manifest.clone();
    broken.stages.get_mut("clean").expect("a clean stage").columns = Some(vec!["no_such_column".into()]);
    let err = exec.run(&broken, &dir).expect_err("the clean stage cannot read its column").to_string();
    assert!(err.contains("stage \"clean\": columns: reads column \"no_such_column\", which `stage:validate` does not have (its columns: age, sex, bmi"), "{err}");
    assert_eq!(std::fs::read_dir(store.path().join("_runs")).unwrap().count(), 2);
}

#[test]
fn the_leakage_guard_warns_when_an_evaluation_may_score_training_rows() {
    let warned = |text: &str| -> Vec<String> {
        let store = tempfile::tempdir().unwrap();
        let (exec, logs) = executor(store.path(), 2);
        run_text(&exec, text, store.path()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let said: Vec<String> = logs
            .lock()
            .unwrap()
            .iter()
            .filter(|(label, r)| label == "evaluate" && r.level == wasmpipe_runtime::Level::Warn)
            .map(|(_, r)| r.message.clone())
            .collect();
        // The run record keeps what it said.
        let runs = std::fs::read_dir(store.path().join("_runs")).unwrap().next().unwrap().unwrap().path();
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(runs.join("run.json")).unwrap()).unwrap();
        let kept = record["warnings"].as_array().unwrap();
        assert_eq!(kept.iter().filter(|w| w["label"] == "evaluate").count(), said.len(), "{record}");
        said
    };
    // Two split stages, each keeping one side: they may overlap (with
    // seeds 7 and 8 most test rows would be training rows), and the plan
    // cannot tell.
    let two_splits = held_out_text();
    let said = warned(&two_splits);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains("stage \"evaluate\" scores the model of stage \"fit\" on rows that may overlap"),
        "{said:?}"
    );
    assert!(said[0].contains("both come from \"ingest\", through different stages (test and train)"), "{said:?}");
    assert!(said[0].contains("hint: split once, in one stage with named outputs"));

    // One split, read as its two named outputs: held out, nothing to say.
    let one_split = two_splits
        .replacen("[stage.train]", "[stage.split]", 1)
        .replacen(", keep = \"train\"", " ", 1)
        .replacen("seed = 3 ", "seed = 3 }\noutputs = [\"train\", \"test\"]\nroute = \"split\"\n#", 1);
    let one_split = cut_stage(&one_split, "test")
        .replace("inputs = [\"stage:train\"]", "inputs = [\"stage:split.train\"]")
        .replace("inputs = [\"stage:test\"]", "inputs = [\"stage:split.test\"]");
    assert_eq!(warned(&one_split), Vec::<String>::new(), "{one_split}");

    // Scoring the fitted rows themselves: in sample, said, unless marked.
    let in_sample = one_split.replace("inputs = [\"stage:predict\"]", "inputs = [\"stage:fit\"]");
    let said = warned(&in_sample);
    assert!(said.len() == 1 && said[0].contains("on the rows it was fitted on (in sample)"), "{said:?}");
    let marked = in_sample.replace("[stage.evaluate]\n", "[stage.evaluate]\nin_sample = true\n");
    assert_eq!(warned(&marked), Vec::<String>::new());
}

/// `text` without the table `[stage.NAME]`.
fn cut_stage(text: &str, name: &str) -> String {
    let start = text.find(&format!("[stage.{name}]\n")).unwrap();
    let end = text[start + 1..].find("\n[stage.").map_or(text.len(), |e| start + 2 + e);
    format!("{}{}", &text[..start], &text[end..])
}

/// Names and types, in order (nullability aside: a column is nullable in
/// a batch only when it holds a null).
fn columns_of(schema: &arrow::datatypes::Schema) -> Vec<(String, arrow::datatypes::DataType)> {
    schema.fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect()
}

#[test]
fn every_demo_stage_is_checked_before_its_run_against_the_schema_it_reads() {
    for name in ["diabetes", "breast_cancer", "wine", "iris"] {
        let dir = repo().join("examples").join(name);
        let manifest = Manifest::load(&dir.join("wasmpipe.toml")).expect("demo manifest parses");
        let store = tempfile::tempdir().unwrap();
        let (exec, _) = executor(store.path(), 2);
        let storage = wasmpipe_storage::Storage::new(&dir).with_options(manifest.storage.clone());
        let (_, checked) = exec.check(&manifest, &storage, Some(&dir)).expect("demo checks");
        // The Rust estimators say what they write (`describe`): only the
        // stages after logistic regression (a probability column per class
        // it learns) or after iris's Python scaler (a Python estimator does
        // not say) wait for their columns.
        let waiting: &[&str] = match name {
            "diabetes" => &[],
            "iris" => &["scale_test", "fit", "predict", "evaluate"],
            _ => &["evaluate"],
        };
        for (stage, how) in &checked.stages {
            let columns = matches!(how, wasmpipe_executor::Checked::Columns(_));
            assert_eq!(columns, !waiting.contains(&stage.as_str()), "{name}.{stage}: {how}");
        }
        // What the checks found each stage will write is what it wrote.
        exec.run(&manifest, &dir).expect("demo runs");
        for (stage, predicted) in &checked.writes {
            let batches = read_committed(&store.path().join(name).join(stage));
            let Some(first) = batches.first() else { continue };
            assert_eq!(columns_of(predicted), columns_of(&first.schema()), "{name}.{stage}");
        }
        let found = checked.writes.len();
        assert!(found >= if name == "iris" { 2 } else { 5 }, "{name}: {:?}", checked.writes.keys());
    }
}
