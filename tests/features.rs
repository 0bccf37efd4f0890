//! The feature stages end to end on the shared data sets
//! (`../shared/testdata/ml`): CSV ingest, then one feature stage, at 1, 3
//! and 8 partitions. Every partitioning must give the same model (to 1e-9)
//! and the same output rows (assignments exactly), and the estimators and
//! `poly` must match scikit-learn (`tests/python/features_reference.py`).

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type};
use arrow::record_batch::RecordBatch;
use serde_json::{Value, json};
use wasmpipe_executor::RunReport;
use wasmpipe_tests::*;

/// Partitions of every pipeline's input (the ingest output's row groups).
const PARTITIONS: [usize; 3] = [1, 3, 8];

fn data(name: &str) -> PathBuf {
    testdata().join("ml").join(name)
}

/// The header and the data lines of a CSV file.
fn csv_lines(csv: &Path) -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(csv).unwrap_or_else(|e| panic!("{}: {e}", csv.display()));
    let mut lines = text.lines().filter(|l| !l.is_empty()).map(String::from);
    let header = lines.next().expect("a header").split(',').map(String::from).collect();
    (header, lines.collect())
}

/// A pipeline: `csv` ingested into row groups making `partitions`
/// partitions, then stage `feat` (`component`, `config` TOML lines).
fn manifest(csv: &Path, partitions: usize, component_name: &str, config: &str) -> String {
    format!(
        "{}\n[stage.feat]\ncomponent = {}\ninputs = [\"stage:ingest\"]\n\n[stage.feat.config]\n{config}\n",
        ingest_head(csv, csv_lines(csv).1.len(), partitions),
        toml_path(&component(component_name)),
    )
}

/// One run: the report, the store and the stage's output rows.
struct Run {
    report: RunReport,
    store: tempfile::TempDir,
    rows: RecordBatch,
}

impl Run {
    fn model(&self) -> Value {
        let s = self.report.stages.iter().find(|s| s.name == "feat").expect("stage in report");
        serde_json::from_slice(s.model_bytes.as_ref().expect("fit stages keep their model")).expect("JSON model")
    }

    fn out_dir(&self) -> PathBuf {
        self.store.path().join("ml/feat")
    }

    fn f64s(&self, name: &str) -> Vec<Option<f64>> {
        let c = self.rows.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
        c.as_primitive::<Float64Type>().iter().collect()
    }
}

fn run(csv: &Path, partitions: usize, component_name: &str, config: &str) -> Run {
    let text = manifest(csv, partitions, component_name, config);
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), partitions);
    let report = run_text(&exec, &text, store.path()).unwrap_or_else(|e| panic!("pipeline fails: {e}\n{text}"));
    let batches = read_committed(&store.path().join("ml/feat"));
    let rows = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    Run { report, store, rows }
}

/// Run at every partitioning; assert the models (if any) agree to 1e-9 and
/// the output rows are identical. Returns the runs.
fn run_all(csv: &Path, component_name: &str, config: &str, estimator: bool) -> Vec<Run> {
    let runs: Vec<Run> = PARTITIONS
        .iter()
        .map(|&p| {
            let started = std::time::Instant::now();
            let r = run(csv, p, component_name, config);
            eprintln!("{component_name} on {}: {p} partitions, {:?}", csv.display(), started.elapsed());
            r
        })
        .collect();
    for r in &runs[1..] {
        if estimator {
            assert_close(&r.model(), &runs[0].model(), 1e-9, "model");
            assert_close(&runs[0].model(), &r.model(), 1e-9, "model");
        }
        assert_eq!(r.rows.schema(), runs[0].rows.schema());
        for (i, (a, b)) in r.rows.columns().iter().zip(runs[0].rows.columns()).enumerate() {
            if let (Some(a), Some(b)) = (a.as_primitive_opt::<Float64Type>(), b.as_primitive_opt::<Float64Type>()) {
                for (x, y) in a.iter().zip(b.iter()) {
                    match (x, y) {
                        (Some(x), Some(y)) => assert!(
                            (x - y).abs() <= 1e-9 * y.abs().max(1.0) || (x.is_nan() && y.is_nan()),
                            "column {i}: {x} vs {y}"
                        ),
                        (x, y) => assert_eq!(x.is_none(), y.is_none(), "column {i}: nulls differ"),
                    }
                }
            } else {
                assert_eq!(a.to_data(), b.to_data(), "column {} differs", r.rows.schema().field(i).name());
            }
        }
    }
    runs
}

/// scikit-learn's counterpart on `csv`, compared with the 8-partition run.
fn reference(task: &str, csv: &Path, columns: &[&str], last: &Run, extra: Value) -> Value {
    let mut args = json!({"task": task, "csv": csv, "columns": columns, "out_dir": last.out_dir()});
    args.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let r = python_json("features_reference.py", &[&args.to_string()]);
    eprintln!("{task} on {}: scikit-learn says {r}", csv.display());
    r
}

fn strings(items: &[&str]) -> String {
    serde_json::to_string(items).unwrap()
}

#[test]
fn minmax_matches_scikit_learn() {
    let csv = data("wine.csv");
    let columns = ["alcohol", "malic_acid", "magnesium", "proline", "hue"];
    let config = format!("columns = {}\nfeature_range = [-1.0, 2.0]", strings(&columns));
    let runs = run_all(&csv, "minmax", &config, true);
    let last = runs.last().unwrap();
    let r = reference("minmax", &csv, &columns, last, json!({"feature_range": [-1.0, 2.0]}));
    let model = last.model();
    for key in ["data_min", "data_max", "scale", "offset"] {
        assert_close(&model[key], &r[key], 1e-15, key);
    }
    assert!(r["max_abs_diff"].as_f64().unwrap() <= 1e-12, "{r}");
}

/// `csv` with a deterministic sample of cells of `columns` blanked: row i
/// loses column j when `(7 i + 3 j) % 11 == 0`.
fn with_holes(csv: &Path, columns: &[&str], dir: &Path) -> PathBuf {
    let (header, lines) = csv_lines(csv);
    let holes: Vec<usize> = columns.iter().map(|c| header.iter().position(|h| h == c).unwrap()).collect();
    let mut out = header.join(",") + "\n";
    for (i, line) in lines.iter().enumerate() {
        let mut cells: Vec<&str> = line.split(',').collect();
        for (j, &c) in holes.iter().enumerate() {
            if (7 * i + 3 * j) % 11 == 0 {
                cells[c] = "";
            }
        }
        out += &(cells.join(",") + "\n");
    }
    let path = dir.join(csv.file_name().unwrap());
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn imputer_matches_scikit_learn_for_every_strategy() {
    let dir = tempfile::tempdir().unwrap();
    let columns = ["age", "bmi", "bp", "s4", "s5", "sex"];
    let csv = with_holes(&data("diabetes.csv"), &columns, dir.path());
    for strategy in ["mean", "median", "most_frequent"] {
        let config = format!("columns = {}\nstrategy = \"{strategy}\"", strings(&columns));
        let runs = run_all(&csv, "imputer", &config, true);
        let last = runs.last().unwrap();
        let model = last.model();
        let r = reference("imputer", &csv, &columns, last, json!({"strategy": strategy}));
        let tol = if strategy == "mean" { 1e-12 } else { 0.0 };
        assert_close(&model["statistics"], &r["statistics"], tol, strategy);
        assert!(r["max_abs_diff"].as_f64().unwrap() <= tol * 1000.0, "{strategy}: {r}");
        for c in columns {
            assert!(last.f64s(c).iter().all(|v| v.is_some_and(f64::is_finite)), "{strategy}: {c} has holes");
        }
        let fit = last.report.stages.iter().find(|s| s.name == "feat").unwrap();
        eprintln!("imputer {strategy}: {} fit passes, statistics {}", fit.passes, model["statistics"]);
    }
}

fn check_bucketizer(csv: &Path, columns: &[&str], n_buckets: u32, method: &str) {
    let config = format!("columns = {}\nn_buckets = {n_buckets}\nquantile_method = \"{method}\"", strings(columns));
    let runs = run_all(csv, "bucketizer", &config, true);
    let last = runs.last().unwrap();
    let r = reference("bucketizer", csv, columns, last, json!({"n_buckets": n_buckets, "quantile_method": method}));
    assert_close(&last.model()["edges"], &r["edges"], 1e-12, "edges");
    // Exact order statistics: every row in scikit-learn's bucket.
    assert_eq!(r["agreement"], 1.0, "{r}");
    let bucket = last.rows.column_by_name(&format!("{}_bucket", columns[0])).unwrap();
    assert!(bucket.as_primitive::<Int64Type>().iter().all(|b| b.is_some_and(|b| (0..n_buckets as i64).contains(&b))));
}

#[test]
fn bucketizer_matches_scikit_learn() {
    check_bucketizer(&data("diabetes.csv"), &["bmi", "s5", "bp", "age", "s4"], 5, "averaged_inverted_cdf");
    check_bucketizer(&data("breast_cancer.csv"), &["mean_radius", "worst_area", "mean_concavity"], 7, "linear");
}

#[test]
fn poly_matches_scikit_learn() {
    let csv = data("iris.csv");
    let columns = ["sepal_length", "sepal_width", "petal_length"];
    for (degree, interaction_only) in [(2, false), (3, true), (3, false)] {
        let config =
            format!("columns = {}\ndegree = {degree}\ninteraction_only = {interaction_only}", strings(&columns));
        let runs = run_all(&csv, "poly", &config, false);
        let last = runs.last().unwrap();
        let r =
            reference("poly", &csv, &columns, last, json!({"degree": degree, "interaction_only": interaction_only}));
        let ours: Vec<String> =
            last.rows.schema().fields().iter().map(|f| f.name().clone()).skip(5).collect::<Vec<_>>();
        assert_eq!(json!(ours), r["names"]);
        assert!(r["max_rel_diff"].as_f64().unwrap() <= 1e-12, "{r}");
    }
}

/// `csv` with a leading `id` column (the row's number).
fn with_ids(csv: &Path, dir: &Path) -> PathBuf {
    let (header, lines) = csv_lines(csv);
    let mut out = format!("id,{}\n", header.join(","));
    for (i, line) in lines.iter().enumerate() {
        out += &format!("{i},{line}\n");
    }
    let path = dir.join(csv.file_name().unwrap());
    std::fs::write(&path, out).unwrap();
    path
}

/// `(id, split)` of every output row.
fn assignments(run: &Run, split: Option<&str>) -> Vec<(i64, String)> {
    let ids = run.rows.column_by_name("id").unwrap().as_primitive::<Int64Type>().clone();
    (0..run.rows.num_rows())
        .map(|i| {
            let s = match split {
                Some(s) => s.to_string(),
                None => run.rows.column_by_name("split").unwrap().as_string::<i32>().value(i).to_string(),
            };
            (ids.value(i), s)
        })
        .collect()
}

#[test]
fn split_is_deterministic_stratified_and_keeps_branches_disjoint() {
    let dir = tempfile::tempdir().unwrap();
    let csv = with_ids(&data("breast_cancer.csv"), dir.path());
    let rows = csv_lines(&csv).1.len();

    // Unstratified, hashing whole rows: proportions in expectation.
    let runs = run_all(&csv, "split", "fractions = { train = 0.8, test = 0.2 }\nseed = 7", true);
    let all = assignments(runs.last().unwrap(), None);
    let train = all.iter().filter(|(_, s)| s == "train").count() as f64 / rows as f64;
    eprintln!("split: unstratified train fraction {train:.4} of {rows}");
    assert!((train - 0.8).abs() < 0.06, "train fraction {train}");
    let other = run(&csv, 3, "split", "fractions = { train = 0.8, test = 0.2 }\nseed = 8");
    assert_ne!(assignments(&other, None), all, "another seed, another split");

    // Stratified by target on a unique key: exact counts per class.
    let config = "fractions = { train = 0.6, validation = 0.2, test = 0.2 }\nkey = \"id\"\nstratify = \"target\"";
    let runs = run_all(&csv, "split", config, true);
    let all = assignments(runs.last().unwrap(), None);
    let target = runs[0].rows.column_by_name("target").unwrap().as_primitive::<Int64Type>().clone();
    for class in [0, 1] {
        let n = target.iter().filter(|t| *t == Some(class)).count() as f64;
        let count = |s: &str| (0..rows).filter(|&i| target.value(i) == class && all[i].1 == s).count() as f64;
        let (tr, va, te) = (count("train"), count("validation"), count("test"));
        eprintln!("split: class {class} of {n}: train {tr}, validation {va}, test {te}");
        assert_eq!(tr, (0.6 * n).round());
        assert_eq!(tr + va, (0.8 * n).round());
        assert_eq!(tr + va + te, n);
    }

    // Two branches with `keep`: disjoint, together every row, each as the `split` column says.
    let keep = |which: &str| {
        let mut got = Vec::new();
        for p in PARTITIONS {
            let r = run(&csv, p, "split", &format!("{config}\nkeep = \"{which}\""));
            assert!(r.rows.column_by_name("split").is_none());
            got.push(assignments(&r, Some(which)));
        }
        assert!(got.iter().all(|g| *g == got[0]), "{which}: same rows at every partitioning");
        got.remove(0)
    };
    let (train, validation, test) = (keep("train"), keep("validation"), keep("test"));
    let mut union: Vec<(i64, String)> = [train, validation, test].concat();
    union.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(union, want, "the branches partition the rows as the split column does");
}

#[test]
fn named_outputs_route_every_row_of_one_split_to_exactly_one_reader() {
    let dir = tempfile::tempdir().unwrap();
    let csv = with_ids(&data("breast_cancer.csv"), dir.path());
    let rows = csv_lines(&csv).1.len();
    let split =
        "config = { fractions = { train = 0.6, validation = 0.2, test = 0.2 }, key = \"id\", stratify = \"target\" }";
    let pipeline = |outputs: &str, readers: &[&str]| {
        let mut text = format!(
            "{}\n[stage.split]\ncomponent = {}\ninputs = [\"stage:ingest\"]\n{outputs}\nroute = \"split\"\n{split}\n",
            ingest_head(&csv, rows, 3),
            toml_path(&component("split")),
        );
        for (i, input) in readers.iter().enumerate() {
            text += &format!(
                "\n[stage.read{i}]\ncomponent = {}\ninputs = [\"{input}\"]\n",
                toml_path(&component("passthrough"))
            );
        }
        text
    };
    let readers = ["stage:split.train", "stage:split.validation", "stage:split.test", "stage:split"];
    let text = pipeline("outputs = [\"train\", \"validation\", \"test\"]", &readers);
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let report = run_text(&exec, &text, store.path()).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let ids = |batches: Vec<RecordBatch>| -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| b.column_by_name("id").unwrap().as_primitive::<Int64Type>().values().to_vec())
            .collect()
    };
    // `stage:split` reads every row, with the `split` column that routes it.
    let all = read_committed(&store.path().join("ml/read3"));
    let mut sides: Vec<(i64, String)> = Vec::new();
    for b in &all {
        let (id, side) =
            (b.column_by_name("id").unwrap().as_primitive::<Int64Type>(), b.column_by_name("split").unwrap());
        let side = side.as_string::<i32>();
        sides.extend((0..b.num_rows()).map(|i| (id.value(i), side.value(i).to_string())));
    }
    assert_eq!(sides.len(), rows);
    for (i, output) in ["train", "validation", "test"].iter().enumerate() {
        let dir = store.path().join(format!("ml/read{i}"));
        let got = read_committed(&dir);
        assert!(got.iter().all(|b| b.column_by_name("split").is_none()), "{output}: the routing column is dropped");
        // Exactly the rows the split column sends there, in order.
        let want: Vec<i64> = sides.iter().filter(|(_, s)| s == output).map(|(id, _)| *id).collect();
        assert!(!want.is_empty());
        assert_eq!(ids(got), want, "{output}");
        let commit = commit_record(&dir);
        let input = commit["inputs"][0].as_str().unwrap();
        assert!(
            input.contains("/ml/split@") && input.ends_with(&format!("#{output}")),
            "lineage names the output: {input}"
        );
        let stage = report.stages.iter().find(|s| s.name == format!("read{i}")).unwrap();
        assert_eq!(stage.rows_out as usize, want.len());
    }

    // The split's commit counts each part's rows per output.
    let split = report.stages.iter().find(|s| s.name == "split").unwrap();
    for output in ["train", "validation", "test"] {
        let n = sides.iter().filter(|(_, s)| s == output).count() as u64;
        assert_eq!(split.outputs[output], n, "{output}");
    }

    // A declared output no row goes to: its readers read nothing (no part
    // holds its rows), and a column selector there has nothing to select.
    let no_validation = text
        .replace("validation = 0.2, test = 0.2", "test = 0.4")
        .replace("[stage.read3]", "[stage.scaled]\ncomponent = SCALER\ninputs = [\"stage:split.validation\"]\nconfig = { columns = { select = \"float\" } }\n\n[stage.read3]")
        .replace("SCALER", &toml_path(&component("scaler")));
    let store2 = tempfile::tempdir().unwrap();
    let (exec2, _) = executor(store2.path(), 2);
    let err = run_text(&exec2, &no_validation, store2.path()).unwrap_err().to_string();
    assert!(err.contains("stage \"scaled\": `columns` selects columns of an input that has no rows"), "{err}");
    assert_eq!(commit_record(&store2.path().join("ml/read1"))["rows"], 0, "validation: no rows");
    let parts = commit_record(&store2.path().join("ml/split"))["parts"].as_array().unwrap().clone();
    assert!(parts.iter().all(|p| p["outputs"]["validation"] == 0 && p["outputs"]["train"].as_u64().unwrap() > 0));

    // A row routed to an output the stage does not name fails the split,
    // and nothing downstream runs.
    let text = pipeline("outputs = [\"train\", \"test\"]", &["stage:split.train"]);
    let err = run_text(&exec, &text, store.path()).unwrap_err().to_string();
    assert!(
        err.starts_with("stage \"split\", transform partition")
            && err.contains("routes a row to output \"validation\", which is not one of its outputs (train, test)"),
        "{err}"
    );
    // (The same store: the split committed above is not this one.)
    let commit = commit_record(&store.path().join("ml/split"));
    assert_eq!(commit["run_id"].as_str(), Some(report.run_id.as_str()), "the earlier commit stays");
}

#[test]
fn hasher_is_deterministic_in_range_and_consistent_across_partitions() {
    // iris with its species named (strings) and an int column to hash.
    let dir = tempfile::tempdir().unwrap();
    let (header, lines) = csv_lines(&data("iris.csv"));
    let mut text = header.join(",").replace("target", "species") + "\n";
    for line in &lines {
        let (values, class) = line.rsplit_once(',').unwrap();
        text += &format!("{values},{}\n", ["setosa", "versicolor", "virginica"][class.parse::<usize>().unwrap()]);
    }
    let csv = dir.path().join("iris_named.csv");
    std::fs::write(&csv, text).unwrap();
    let n = 8;
    let runs =
        run_all(&csv, "hasher", &format!("columns = [\"species\"]\nn_features = {n}\nkeep_original = true"), false);
    let r = runs.last().unwrap();
    let species = r.rows.column_by_name("species").unwrap().as_string::<i32>().clone();
    let features: Vec<Vec<Option<f64>>> = (0..n).map(|i| r.f64s(&format!("hash_{i}"))).collect();
    let mut seen: std::collections::HashMap<String, Vec<f64>> = Default::default();
    for row in 0..r.rows.num_rows() {
        let v: Vec<f64> = features.iter().map(|f| f[row].unwrap()).collect();
        // One value, one bucket, with sign +1 or -1.
        assert_eq!(v.iter().filter(|x| **x != 0.0).count(), 1, "row {row}: {v:?}");
        assert!(v.iter().all(|x| [0.0, 1.0, -1.0].contains(x)));
        let prev = seen.entry(species.value(row).to_string()).or_insert(v.clone());
        assert_eq!(*prev, v, "the same value, the same bucket");
    }
    assert_eq!(seen.len(), 3);
    assert!(r.rows.column_by_name("hash_8").is_none(), "exactly n_features columns");
}

/// iris with a `species` string column beside the integer `target`; the
/// species of every 13th row (from row 5) is blank, i.e. null.
fn iris_named_with_holes(dir: &Path) -> PathBuf {
    let (header, lines) = csv_lines(&data("iris.csv"));
    let mut text = format!("{},species\n", header.join(","));
    for (i, line) in lines.iter().enumerate() {
        let class = line.rsplit_once(',').unwrap().1.parse::<usize>().unwrap();
        let species = if i % 13 == 5 { "" } else { ["setosa", "versicolor", "virginica"][class] };
        text += &format!("{line},{species}\n");
    }
    let csv = dir.join("iris_named.csv");
    std::fs::write(&csv, text).unwrap();
    csv
}

#[test]
fn onehot_matches_scikit_learn() {
    let dir = tempfile::tempdir().unwrap();
    let csv = iris_named_with_holes(dir.path());
    let columns = ["species", "target"];
    let config = format!("columns = {}\nhandle_unknown = \"ignore\"", strings(&columns));
    let runs = run_all(&csv, "onehot", &config, true);
    let last = runs.last().unwrap();
    let r = reference("onehot", &csv, &columns, last, json!({}));
    // The encoded columns are dropped; the indicators follow the other columns.
    let ours: Vec<String> = last.rows.schema().fields().iter().map(|f| f.name().clone()).skip(4).collect();
    assert_eq!(json!(ours), r["names"]);
    assert_eq!(
        r["names"],
        json!([
            "species_setosa",
            "species_versicolor",
            "species_virginica",
            "species_null",
            "target_0",
            "target_1",
            "target_2"
        ])
    );
    let model = last.model();
    assert_eq!(model["categories"], json!([{"str": r["categories"][0]}, {"int": r["categories"][1]}]));
    assert_eq!(model["nulls"], json!([true, false]));
    assert_eq!(r["agreement"], 1.0, "{r}");
    assert_eq!(r["rows"], 150);

    // "error" with every value seen in the fit (this pipeline transforms
    // the rows it fitted; `onehot_meets_unseen_categories_as_scikit_learn_does`
    // applies the model to other rows), the originals kept, nulls not a
    // category: null rows are all zeros.
    let config = format!("columns = {}\nkeep_original = true\nnull_category = false", strings(&columns));
    let r = run(&csv, 3, "onehot", &config);
    assert!(r.rows.column_by_name("species_null").is_none());
    let species = r.rows.column_by_name("species").expect("kept").as_string::<i32>().clone();
    let block: Vec<Vec<Option<f64>>> =
        ["setosa", "versicolor", "virginica"].iter().map(|s| r.f64s(&format!("species_{s}"))).collect();
    for row in 0..r.rows.num_rows() {
        let ones: f64 = block.iter().map(|c| c[row].unwrap()).sum();
        assert_eq!(ones, if species.is_null(row) { 0.0 } else { 1.0 }, "row {row}");
    }
    assert_eq!(species.null_count(), 12);
}

/// A pipeline whose one-hot encoder meets values its fit never saw: iris
/// with named species (some blank) split 70/30, stratified by target
/// (`train`, `test`); the fit sees only the train rows of setosa and
/// versicolor (`seen`: `clean` drops target 2, keeping blank species), and
/// `apply` encodes the test rows, virginica among them, with the fitted
/// model (`model = "stage:fit"`), keeping the original columns.
fn unseen_manifest(csv: &Path, partitions: usize, handle_unknown: &str) -> String {
    let split = |keep: &str| {
        format!(
            "component = {}\ninputs = [\"stage:ingest\"]\nconfig = {{ fractions = {{ train = 0.7, test = 0.3 }}, \
             stratify = \"target\", seed = 7, keep = \"{keep}\" }}\n",
            toml_path(&component("split"))
        )
    };
    let onehot = format!(
        "component = {}\nconfig = {{ columns = [\"species\", \"target\"], handle_unknown = \"{handle_unknown}\", \
         keep_original = true }}\n",
        toml_path(&component("onehot"))
    );
    format!(
        "{}\n[stage.train]\n{}\n[stage.test]\n{}\n[stage.seen]\ncomponent = {}\ninputs = [\"stage:train\"]\n\
         config = {{ not_null = [], ranges = {{ target = {{ max = 1 }} }} }}\n\n\
         [stage.fit]\ninputs = [\"stage:seen\"]\n{onehot}\n\
         [stage.apply]\ninputs = [\"stage:test\"]\nmodel = \"stage:fit\"\n{onehot}",
        ingest_head(csv, csv_lines(csv).1.len(), partitions),
        split("train"),
        split("test"),
        toml_path(&component("clean")),
    )
}

#[test]
fn onehot_meets_unseen_categories_as_scikit_learn_does() {
    let dir = tempfile::tempdir().unwrap();
    let csv = iris_named_with_holes(dir.path());
    let columns = ["species", "target"];

    // "ignore": a row's block is all zeros where its value is unseen, as
    // OneHotEncoder(handle_unknown="ignore") gives; the same rows at every partitioning.
    let mut outputs: Vec<RecordBatch> = Vec::new();
    let mut last = None;
    for partitions in PARTITIONS {
        let text = unseen_manifest(&csv, partitions, "ignore");
        let store = tempfile::tempdir().unwrap();
        let (exec, _) = executor(store.path(), partitions);
        let report = run_text(&exec, &text, store.path()).unwrap_or_else(|e| panic!("pipeline fails: {e}\n{text}"));
        let model = result(&report, "fit");
        assert_eq!(model["categories"], json!([{"str": ["setosa", "versicolor"]}, {"int": [0, 1]}]), "{model}");
        let apply = store.path().join("ml/apply");
        let batches = read_committed(&apply);
        let rows = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
        let args = json!({
            "task": "onehot_unseen", "columns": columns, "handle_unknown": "ignore",
            "fit_dir": store.path().join("ml/seen"), "apply_dir": apply, "out_dir": apply,
        });
        let r = python_json("features_reference.py", &[&args.to_string()]);
        eprintln!("onehot, unseen values ignored, {partitions} partitions: model {model}; scikit-learn says {r}");
        let ours: Vec<String> = rows.schema().fields().iter().map(|f| f.name().clone()).skip(6).collect();
        assert_eq!(json!(ours), r["names"]);
        assert_eq!(r["agreement"], 1.0, "{r}");
        assert_eq!(r["rows"].as_u64(), Some(rows.num_rows() as u64));

        // Every virginica row (target 2, species named or blank) is unseen in
        // the target block, and in the species block unless its species is blank.
        let target = rows.column_by_name("target").unwrap().as_primitive::<Int64Type>().clone();
        let species = rows.column_by_name("species").unwrap().as_string::<i32>().clone();
        let f64s = |name: &str| -> Vec<f64> {
            let c = rows.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
            c.as_primitive::<Float64Type>().values().to_vec()
        };
        let (t0, t1, setosa, versicolor) =
            (f64s("target_0"), f64s("target_1"), f64s("species_setosa"), f64s("species_versicolor"));
        let virginica = (0..rows.num_rows()).filter(|&i| target.value(i) == 2).count();
        assert!(virginica >= 10, "the test rows hold virginica: {virginica}");
        assert_eq!(r["unseen_rows"].as_u64(), Some(virginica as u64), "{r}");
        for i in 0..rows.num_rows() {
            let unseen = target.value(i) == 2;
            assert_eq!(t0[i] + t1[i], if unseen { 0.0 } else { 1.0 }, "row {i}: target block");
            if unseen && !species.is_null(i) {
                assert_eq!(setosa[i] + versicolor[i], 0.0, "row {i}: species block");
            }
        }
        if let Some(first) = outputs.first() {
            assert_eq!(&rows, first, "{partitions} partitions: other rows than at 1");
        }
        outputs.push(rows);
        last = Some(store);
    }

    // "error": the fit succeeds and applying it fails, naming the stage, the
    // column and the value, where scikit-learn's transform raises on the same rows.
    for partitions in PARTITIONS {
        let text = unseen_manifest(&csv, partitions, "error");
        let store = tempfile::tempdir().unwrap();
        let (exec, _) = executor(store.path(), partitions);
        let error =
            run_text(&exec, &text, store.path()).expect_err("an unseen value fails under \"error\"").to_string();
        eprintln!("onehot, unseen values an error, {partitions} partitions: {error}");
        assert!(error.contains("\"apply\""), "{error}");
        assert!(error.contains("column \"species\": unknown category \"virginica\""), "{error}");
    }
    let last = last.unwrap();
    let args = json!({
        "task": "onehot_unseen", "columns": columns, "handle_unknown": "error",
        "fit_dir": last.path().join("ml/seen"), "apply_dir": last.path().join("ml/test"),
    });
    let r = python_json("features_reference.py", &[&args.to_string()]);
    eprintln!("onehot, unseen values an error: scikit-learn says {r}");
    let message = r["error"].as_str().unwrap_or_else(|| panic!("scikit-learn raises too: {r}"));
    assert!(message.contains("unknown categories") && message.contains("virginica"), "{message}");
}

#[test]
fn column_selectors_resolve_against_the_input_and_equal_the_lists_they_stand_for() {
    let csv = data("breast_cancer.csv");
    let (header, _) = csv_lines(&csv);
    let means: Vec<&str> = header.iter().map(String::as_str).filter(|c| c.starts_with("mean_")).collect();
    for partitions in [1, 3] {
        // A glob, and a type with an exclusion, each against its list.
        for (selector, listed) in [
            ("{ select = \"all\", glob = \"mean_*\" }".to_string(), means.clone()),
            (
                "{ select = \"numeric\", exclude = [\"target\"] }".to_string(),
                header.iter().map(String::as_str).filter(|c| *c != "target").collect(),
            ),
            (
                "{ select = \"float\", regex = \"^worst_(radius|area)$\" }".to_string(),
                vec!["worst_radius", "worst_area"],
            ),
        ] {
            let selected = run(&csv, partitions, "scaler", &format!("columns = {selector}"));
            let spelt = run(&csv, partitions, "scaler", &format!("columns = {}", strings(&listed)));
            assert_eq!(selected.model(), spelt.model(), "{selector}");
            assert_eq!(selected.rows, spelt.rows, "{selector}");
            let (a, b) = (commit_record(&selected.out_dir()), commit_record(&spelt.out_dir()));
            assert_eq!(a["selected"]["columns"], json!(listed), "{selector}: the commit records what it selected");
            assert!(b.get("selected").is_none(), "a list is no selector");
            // The stage received exactly the list: the same configuration.
            assert_eq!(a["config"], b["config"], "{selector}");
            let stage = selected.report.stages.iter().find(|s| s.name == "feat").unwrap();
            assert_eq!(stage.selected["columns"], listed);
        }
    }
}

#[test]
fn a_column_selector_or_config_that_does_not_fit_the_input_fails_before_data_moves_or_when_its_stage_starts() {
    let csv = data("iris.csv");
    // `after_estimator`: the stage reads the output of an estimator whose
    // schema is known only once it has run (logistic regression: a
    // probability column per class it learns).
    let try_run = |stage: &str, config: &str, after_estimator: bool| {
        let mut text = manifest(&csv, 2, stage, config);
        if after_estimator {
            text = text.replace("inputs = [\"stage:ingest\"]", "inputs = [\"stage:mid\"]");
            text.push_str(&format!(
                "\n[stage.mid]\ncomponent = {}\ninputs = [\"stage:ingest\"]\nconfig = {{ features = [\"sepal_length\"], target = \"target\" }}\n",
                toml_path(&component("logreg"))
            ));
        }
        let store = tempfile::tempdir().unwrap();
        let (exec, _) = executor(store.path(), 2);
        let err = run_text(&exec, &text, store.path()).expect_err(config).to_string();
        let ingested = store.path().join("ml/ingest/_wasmpipe_commit.json").is_file();
        assert!(!store.path().join("ml/feat/_wasmpipe_commit.json").exists(), "{config}: committed");
        (err, ingested)
    };
    // Malformed: refused with the plan, before ingest runs.
    for (config, says) in [
        ("columns = { select = \"all\", glob = \"[sepal\" }", "stage \"feat\": `columns`: glob \"[sepal\""),
        ("columns = { select = \"numbers\" }", "`select = \"numbers\"`: no such type of column (the types: all,"),
        ("columns = { select = \"all\", exlude = [\"target\"] }", "a column selector takes no key `exlude`"),
    ] {
        let (err, ingested) = try_run("scaler", config, false);
        assert!(err.contains(says) && err.contains("hint: fix the column selector"), "{config}: {err}");
        assert!(!ingested, "{config}: ingest ran before the selector was refused");
    }
    // Well formed, but not for this input, or a config the stage rejects
    // once its columns are known; a column list naming a column the input
    // lacks, or one of a type the stage does not take. Where the input's
    // schema is known before the run (ingest, a transformer, reads a CSV),
    // the run fails before ingest runs; after an estimator, when the stage
    // starts or its first task reads.
    for (stage, config, says) in [
        (
            "scaler",
            "columns = { select = \"all\", glob = \"pixel_*\" }",
            "`columns` selects no column of the input (its columns: sepal_length ",
        ),
        (
            "scaler",
            "columns = { select = \"numeric\", exclude = [\"tagret\"] }",
            "excludes column \"tagret\", which the input",
        ),
        (
            "scaler",
            "columns = { select = \"numeric\", exclude = [\"target\"] }\nclip = 3",
            "invalid config: unknown field `clip`",
        ),
        (
            "kmeans",
            "features = { select = \"float\" }\nk = 2\ncentroids = [[1.0, 2.0], [3.0, 4.0]]",
            "invalid config: centroids: [1.0, 2.0] is not 4 finite numbers",
        ),
        ("scaler", "columns = [\"sepal_length\", \"sepal_lenght\"]", "column not found: \"sepal_lenght\""),
        ("linreg", "features = [\"petal_width\"]\ntarget = \"sepal_widht\"", "column not found: \"sepal_widht\""),
    ] {
        let (err, ingested) = try_run(stage, config, false);
        assert!(err.contains(says) && err.contains("stage \"feat\"") && err.contains("hint:"), "{config}: {err}");
        assert!(err.contains("checked before any data moved"), "{config}: {err}");
        assert!(!ingested, "{config}: ingest ran before the stage was checked");
        let (late, ingested) = try_run(stage, config, true);
        // (Its selector then selects the regression's columns too.)
        let says = says.replace("is not 4 finite", "is not 7 finite");
        assert!(late.contains(&says) && late.contains("stage \"feat\""), "{config}: {late}");
        assert!(ingested, "{config}: after an estimator, checked when it runs");
    }
    // A config error is found before the run after an estimator too, and
    // with the other stages' errors.
    let (err, ingested) = try_run("scaler", "columns = [\"sepal_length\"]\nclip = 3", true);
    assert!(err.contains("stage \"feat\": invalid config: unknown field `clip`") && !ingested, "{err}");
    // Counted against the columns it selects, not a stand-in: the same
    // kmeans config with 4 coordinates per centroid runs.
    let run = run(
        &csv,
        2,
        "kmeans",
        "features = { select = \"float\" }\nk = 2\ncentroids = [[5.0, 3.4, 1.5, 0.2], [6.5, 3.0, 5.5, 2.0]]",
    );
    assert_eq!(run.report.stages.last().unwrap().selected["features"].len(), 4);
}

#[test]
fn a_column_selector_reads_the_schema_the_stage_sees() {
    let dir = tempfile::tempdir().unwrap();
    let csv = data("iris.csv");
    // After the stage's projection, in the order the stage reads.
    let text = format!(
        "{}\n[stage.feat]\ncomponent = {}\ninputs = [\"stage:ingest\"]\ncolumns = [\"target\", \"petal_width\", \"sepal_length\"]\nconfig = {{ columns = {{ select = \"numeric\", exclude = [\"target\"] }} }}\n",
        ingest_head(&csv, 150, 2),
        toml_path(&component("scaler")),
    );
    let (exec, _) = executor(dir.path(), 2);
    let report = run_text(&exec, &text, dir.path()).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // (Parquet is read in the file's column order.)
    assert_eq!(report.stages[1].selected["columns"], ["sepal_length", "petal_width"]);

    // A CSV read directly: its header and inferred types; one with no
    // rows has no schema to select from.
    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "a,b,target\n").unwrap();
    let one = dir.path().join("one.csv");
    std::fs::write(&one, "a,b,target\n1.5,x,0\n2.5,y,1\n").unwrap();
    let direct = |input: &Path| {
        format!(
            "version = 1\nname = \"d\"\n[stage.feat]\ncomponent = {}\ninputs = [{}]\nconfig = {{ columns = {{ select = \"numeric\", exclude = [\"target\"] }} }}\n",
            toml_path(&component("scaler")),
            toml_path(input)
        )
    };
    let store = tempfile::tempdir().unwrap();
    let report = run_text(&exec, &direct(&one), store.path()).unwrap();
    assert_eq!(report.stages[0].selected["columns"], ["a"]);
    let err = run_text(&exec, &direct(&empty), store.path()).unwrap_err().to_string();
    assert!(err.contains("`columns` selects columns of an input that has no rows"), "{err}");
    // Several text files each infer their own types: a declared schema
    // is asked for.
    let many = dir.path().join("many");
    std::fs::create_dir(&many).unwrap();
    std::fs::copy(&one, many.join("1.csv")).unwrap();
    std::fs::copy(&one, many.join("2.csv")).unwrap();
    let err = run_text(&exec, &direct(&many), store.path()).unwrap_err().to_string();
    assert!(err.contains("a text input of 2 files") && err.contains("declare the input's `schema`"), "{err}");
}

#[test]
fn an_iterative_fit_that_may_take_more_passes_than_its_limit_is_refused_before_data_moves() {
    let csv = data("iris.csv");
    let features = "[\"sepal_length\", \"petal_width\"]";
    // (stage, config, the most passes it says its fit may take)
    for (stage, config, passes) in [
        ("logreg", format!("features = {features}\ntarget = \"target\"\nmax_iter = 3"), 3),
        // The first k distinct rows: one pass, then Lloyd's.
        ("kmeans", format!("features = {features}\nk = 3\nmax_iter = 1"), 2),
        // k-means++: k + 1 seeding passes (k with one trial), then Lloyd's.
        ("kmeans", format!("features = {features}\nk = 3\ninit = \"k-means++\"\nmax_iter = 1"), 5),
        ("kmeans", format!("features = {features}\nk = 3\ninit = \"k-means++\"\nlocal_trials = 1\nmax_iter = 1"), 4),
        ("kmeans", format!("features = {features}\ncentroids = [[5.0, 0.2], [6.5, 1.8]]\nmax_iter = 4"), 4),
    ] {
        let limited =
            |n: u32| format!("{}\n[stage.feat.limits]\nmax_passes = {n}\n", manifest(&csv, 2, stage, &config));
        // Within its limit it runs, and takes no more passes than it said
        // (exactly those when `max_iter` stops it at its first Lloyd pass).
        let store = tempfile::tempdir().unwrap();
        let (exec, _) = executor(store.path(), 2);
        let report = run_text(&exec, &limited(passes), store.path()).unwrap_or_else(|e| panic!("{config}: {e}"));
        if let Some(took) = result(&report, "feat").get("passes") {
            let took = took.as_u64().unwrap();
            assert!(took <= passes as u64, "{config}: took {took} passes, said at most {passes}");
            if config.ends_with("max_iter = 1") {
                assert_eq!(took, passes as u64, "{config}");
            }
        }
        // Below it, it is refused before any data moves.
        let store = tempfile::tempdir().unwrap();
        let (exec, _) = executor(store.path(), 2);
        let err = run_text(&exec, &limited(passes - 1), store.path()).unwrap_err().to_string();
        let said = format!(
            "stage \"feat\": invalid config: its fit may take up to {passes} passes, more than its `max_passes` limit of {}",
            passes - 1
        );
        assert!(err.contains(&said) && err.contains("raise `max_passes` in [stage.feat.limits]"), "{config}: {err}");
        assert!(!store.path().join("ml/ingest").exists(), "{config}: {err}");
    }
    // A count past what 32 bits hold is not wrapped round to a small one.
    let config = format!("features = {features}\nk = 4294967295\ninit = \"k-means++\"\nlocal_trials = 2\nmax_iter = 2");
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let err = run_text(&exec, &manifest(&csv, 2, "kmeans", &config), store.path()).unwrap_err().to_string();
    assert!(err.contains("its fit may take up to 4294967295 passes, more than its `max_passes` limit of 100"), "{err}");
}

#[test]
fn each_estimator_says_before_the_run_the_schema_it_writes() {
    let csv = data("iris.csv");
    let features = "[\"sepal_length\", \"petal_width\", \"target\"]";
    for (stage, config) in [
        ("scaler", format!("columns = {features}")),
        ("minmax", format!("columns = {features}")),
        ("imputer", format!("columns = {features}")),
        ("bucketizer", "columns = [\"sepal_length\", \"target\"]\nn_buckets = 3".to_string()),
        ("kmeans", format!("features = {features}\nk = 3")),
        ("linreg", "features = [\"sepal_length\", \"target\"]\ntarget = \"petal_width\"".to_string()),
        ("split", "fractions = { train = 0.7, test = 0.3 }\nseed = 1".to_string()),
        ("split", "fractions = { train = 0.7, test = 0.3 }\nseed = 1\nkeep = \"test\"".to_string()),
        ("validate", "rules = [{ column = \"target\", check = \"allowed\", values = [0, 1, 2] }]".to_string()),
        ("baseline", format!("mode = \"scaler\"\ncolumns = {features}")),
    ] {
        let text = manifest(&csv, 2, stage, &config);
        let store = tempfile::tempdir().unwrap();
        let (exec, _) = executor(store.path(), 2);
        let parsed = wasmpipe_manifest::Manifest::parse(&text).unwrap();
        let storage = wasmpipe_storage::Storage::new(store.path());
        let (_, checked) = exec.check(&parsed, &storage, Some(store.path())).unwrap_or_else(|e| panic!("{e}"));
        let said = checked.writes.get("feat").unwrap_or_else(|| panic!("{stage} says nothing: {checked:?}"));
        run_text(&exec, &text, store.path()).unwrap_or_else(|e| panic!("{stage}: {e}"));
        let wrote = read_committed(&store.path().join("ml/feat"))[0].schema();
        let columns = |s: &arrow::datatypes::Schema| {
            s.fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect::<Vec<_>>()
        };
        assert_eq!(columns(said), columns(&wrote), "{stage}: {config}");
    }
    // What they say is checked: a column of the wrong type, or missing.
    let text = format!(
        "{}\n[stage.names]\ncomponent = {}\ninputs = [\"stage:ingest\"]\nconfig = {{ columns = [\"target\"], n_buckets = 2 }}\n[stage.feat]\ncomponent = {}\ninputs = [\"stage:names\"]\nconfig = {{ features = [\"target_bucket\", \"sepal_lenght\"], target = \"petal_width\" }}\n",
        ingest_head(&csv, 150, 2),
        toml_path(&component("bucketizer")),
        toml_path(&component("linreg")),
    );
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let err = run_text(&exec, &text, store.path()).unwrap_err().to_string();
    assert!(err.contains("stage \"feat\": column not found: \"sepal_lenght\""), "{err}");
    assert!(err.contains("target_bucket") && err.contains("(checked against the schema it will read)"), "{err}");
    assert!(!store.path().join("ml/ingest").exists(), "{err}");
}

#[test]
fn the_checks_before_a_run_read_inputs_projections_and_models_as_the_run_would() {
    let csv = data("iris.csv");
    let stage = |name: &str, component_name: &str, rest: &str| {
        format!("\n[stage.{name}]\ncomponent = {}\n{rest}\n", toml_path(&component(component_name)))
    };
    let refused = |text: &str, says: &str| {
        let store = tempfile::tempdir().unwrap();
        let (exec, _) = executor(store.path(), 2);
        let err = run_text(&exec, text, store.path()).expect_err(says).to_string();
        assert!(err.contains("(checked before any data moved)") && err.contains(says), "{says}\n{err}");
        assert!(std::fs::read_dir(store.path()).unwrap().next().is_none(), "{says}: something ran");
    };
    let head = "version = 1\nname = \"ml\"\n[defaults]\nbatch_rows = 64\nrow_group_rows = 64\n";
    // An input that is not there.
    refused(
        &format!("{head}{}", stage("ingest", "passthrough", "inputs = [\"/no/such/file.csv\"]")),
        "file:///no/such/file.csv: no such file or object",
    );
    // A declared schema naming a column the CSV file's header lacks.
    refused(
        &format!(
            "{head}{}",
            stage(
                "ingest",
                "passthrough",
                &format!("inputs = [{}]\nschema = {{ sepal_lenght = \"float64\" }}", toml_path(&csv))
            )
        ),
        "stage \"ingest\": schema: declares column \"sepal_lenght\", which file://",
    );
    // A projection naming the routing column of a named output.
    let split = format!(
        "{}{}",
        stage("ingest", "passthrough", &format!("inputs = [{}]", toml_path(&csv))),
        stage(
            "split",
            "split",
            "inputs = [\"stage:ingest\"]\noutputs = [\"train\", \"test\"]\nroute = \"split\"\nconfig = { fractions = { train = 0.8, test = 0.2 } }"
        ),
    );
    refused(
        &format!(
            "{head}{split}{}",
            stage("z", "passthrough", "inputs = [\"stage:split.train\"]\ncolumns = [\"split\", \"sepal_length\"]")
        ),
        "stage \"z\": columns: reads column \"split\", which `stage:split.train` does not have (its columns: sepal_length,",
    );
    // A model applied with another configuration than it was fitted with
    // writes what the fit's configuration says (linreg's `prediction`):
    // not said for it, so checked when it starts, and the run reads `yhat`.
    let text = format!(
        "{head}{split}{}{}{}",
        stage(
            "fit",
            "linreg",
            "inputs = [\"stage:split.train\"]\nconfig = { features = [\"sepal_length\"], target = \"petal_width\", prediction = \"yhat\" }"
        ),
        stage(
            "predict",
            "linreg",
            "inputs = [\"stage:split.test\"]\nmodel = \"stage:fit\"\nconfig = { features = [\"sepal_length\"], target = \"petal_width\" }"
        ),
        stage(
            "score",
            "evaluate",
            "inputs = [\"stage:predict\"]\nconfig = { target = \"petal_width\", prediction = \"yhat\" }"
        ),
    );
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let parsed = wasmpipe_manifest::Manifest::parse(&text).unwrap();
    let (_, checked) = exec.check(&parsed, &wasmpipe_storage::Storage::new(store.path()), Some(store.path())).unwrap();
    let how = |name: &str| checked.stages.iter().find(|(s, _)| s == name).unwrap().1.to_string();
    assert!(how("predict").starts_with("checked when it starts (it applies a model that another stage"), "{checked:?}");
    assert!(how("fit").starts_with("config and columns checked"), "{checked:?}");
    run_text(&exec, &text, store.path()).unwrap_or_else(|e| panic!("{e}"));
    // A model stage's selectors stand for the features the model is fitted
    // on, whatever it reads: rows lacking one are refused before the run,
    // and rows without the target are predicted (a batch prediction).
    let fit = |apply_to: &str, features: &str| {
        let config = format!("config = {{ features = {features}, target = \"target\" }}");
        format!(
            "{head}{split}{}{}",
            stage("fit", "logreg", &format!("inputs = [\"stage:split.train\"]\n{config}")),
            stage(
                "predict",
                "logreg",
                &format!("inputs = [\"stage:split.test\"]\nmodel = \"stage:fit\"\ncolumns = {apply_to}\n{config}")
            ),
        )
    };
    refused(
        &fit("[\"sepal_length\", \"sepal_width\", \"target\"]", "{ select = \"numeric\", exclude = [\"target\"] }"),
        "stage \"predict\": column not found: \"petal_length\"",
    );
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let features = "[\"sepal_length\", \"sepal_width\", \"petal_length\", \"petal_width\"]";
    let unlabelled = fit(features, features);
    let report = run_text(&exec, &unlabelled, store.path()).unwrap_or_else(|e| panic!("{e}"));
    let predicted = report.stages.iter().find(|s| s.name == "predict").unwrap();
    assert!(predicted.rows_out > 0, "{predicted:?}");
    let rows = read_committed(&store.path().join("ml/predict"));
    assert!(
        rows[0].schema().field_with_name("prediction").is_ok() && rows[0].schema().field_with_name("target").is_err()
    );
    // A declared schema types text; over Parquet it is refused.
    refused(
        &format!(
            "{head}{}{}",
            stage("ingest", "passthrough", &format!("inputs = [{}]", toml_path(&csv))),
            stage("typed", "passthrough", "inputs = [\"stage:ingest\"]\nschema = { target = \"utf8\" }"),
        ),
        "stage \"typed\": schema: declares a schema, which types text inputs (CSV, JSON Lines), but reads `stage:ingest`",
    );
    // A stage whose dry run fails otherwise than by rejecting its config
    // or columns is left to its tasks, and the check says so.
    let text = format!(
        "{head}{}{}",
        stage("ingest", "passthrough", &format!("inputs = [{}]", toml_path(&csv))),
        stage("bad", "hostile", "inputs = [\"stage:ingest\"]\nconfig = { mode = \"fail\" }"),
    );
    let parsed = wasmpipe_manifest::Manifest::parse(&text).unwrap();
    let (_, checked) = exec.check(&parsed, &wasmpipe_storage::Storage::new(store.path()), Some(store.path())).unwrap();
    let said = checked.stages[1].1.to_string();
    assert!(
        said.contains("its dry run on no rows failed (hostile stage failed on purpose), so its columns are checked when its tasks read them"),
        "{said}"
    );
}
