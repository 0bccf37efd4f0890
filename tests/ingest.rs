//! Ingest: CSV and JSON Lines on real data, with inferred and declared
//! schemas; records that do not parse go to the quarantine with their
//! line and reason, are counted, and are never dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use arrow::record_batch::RecordBatch;
use wasmpipe_executor::RunReport;
use wasmpipe_tests::*;

fn iris() -> PathBuf {
    testdata().join("ml/iris.csv")
}

/// The iris rows as Arrow's own CSV reader reads them: the reference.
fn arrow_csv(path: &Path) -> RecordBatch {
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("sepal_length", DataType::Float64, true),
        arrow::datatypes::Field::new("sepal_width", DataType::Float64, true),
        arrow::datatypes::Field::new("petal_length", DataType::Float64, true),
        arrow::datatypes::Field::new("petal_width", DataType::Float64, true),
        arrow::datatypes::Field::new("target", DataType::Int64, true),
    ]));
    let reader = arrow::csv::ReaderBuilder::new(schema.clone())
        .with_header(true)
        .build(std::fs::File::open(path).unwrap())
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

fn concat(batches: &[RecordBatch]) -> RecordBatch {
    arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap()
}

/// One `passthrough` stage `ingest` reading `input`, with `extra` TOML.
fn ingest(dir: &Path, input: &Path, extra: &str) -> Result<RunReport, wasmpipe_executor::RunError> {
    let text = format!(
        "version = 1\nname = \"ingest\"\n[defaults]\nbatch_rows = 16\nmemory_mib = 64\n[stage.ingest]\ncomponent = {}\ninputs = [{}]\n{extra}\n",
        toml_path(&component("passthrough")),
        toml_path(input),
    );
    let (exec, _) = executor(&dir.join("data"), 2);
    run_text(&exec, &text, dir)
}

fn output(dir: &Path) -> PathBuf {
    dir.join("data/ingest/ingest")
}

/// Iris as JSON Lines, one object per row, numbers as numbers.
fn iris_jsonl(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(iris()).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let mut out = String::new();
    for line in lines {
        let fields = header.iter().zip(line.split(',')).map(|(h, v)| format!("\"{h}\": {v}"));
        out.push_str(&format!("{{{}}}\n", fields.collect::<Vec<_>>().join(", ")));
    }
    let path = dir.join("iris.jsonl");
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn csv_and_json_lines_read_as_arrows_csv_reader_does() {
    let want = arrow_csv(&iris());
    for input in ["csv", "jsonl"] {
        let dir = tempfile::tempdir().unwrap();
        let path = if input == "csv" { iris() } else { iris_jsonl(dir.path()) };
        let report = ingest(dir.path(), &path, "").unwrap();
        assert_eq!(report.stages[0].rows_in, 150, "{input}");
        assert_eq!(report.stages[0].rows_quarantined, 0, "{input}");
        let got = concat(&read_committed(&output(dir.path())));
        // Inferred: measurements as float64, the class as int64.
        assert_eq!(got.schema().fields(), want.schema().fields(), "{input}");
        assert_eq!(got.columns(), want.columns(), "{input}: the same values");
        assert!(commit_record(&output(dir.path()))["quarantine"].as_array().unwrap().is_empty());
    }
}

#[test]
fn records_that_do_not_parse_are_quarantined_with_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    // Iris with three broken records: a ragged line, a word in a number
    // column, and a quoted field with a newline inside (one record, two
    // lines) that is fine.
    let text = std::fs::read_to_string(iris()).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.insert(11, "5.0,3.3,1.4".into()); // line 12
    lines.insert(41, "5.1,three,1.5,0.2,0".into()); // line 42
    lines.push("6.0,2.2,5.0,1.5,\"2\nx\"".into()); // lines 154-155: "2\nx" is not an integer
    let csv = dir.path().join("iris_broken.csv");
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();

    // Inferred, `sepal_width` and `target` would be text, since "three" and
    // "2\nx" are in the head of the file; declared, they must be numbers.
    let inferred = ingest(dir.path(), &csv, "").unwrap();
    assert_eq!(inferred.stages[0].rows_quarantined, 1, "only the ragged line");
    let schema = "schema = { sepal_length = \"float64\", sepal_width = \"float64\", petal_length = \"float64\", petal_width = \"float64\", target = \"int64\" }";
    let report = ingest(dir.path(), &csv, schema).unwrap();
    let s = &report.stages[0];
    assert_eq!((s.rows_in, s.rows_out, s.rows_quarantined), (153, 150, 3));
    let q = concat(&read_quarantine(&output(dir.path())));
    let col = |name: &str| q.column_by_name(name).unwrap().as_string::<i32>().iter().map(|v| v.unwrap().to_string());
    let lines_of: Vec<i64> = q.column_by_name("line").unwrap().as_primitive::<Int64Type>().values().to_vec();
    assert_eq!(lines_of, vec![12, 42, 154]);
    let reasons: Vec<String> = col("reason").collect();
    assert_eq!(reasons[0], "has 3 fields, the header has 5");
    assert!(reasons[1].contains("\"sepal_width\"") && reasons[1].contains("\"three\""), "{}", reasons[1]);
    assert!(reasons[2].contains("\"target\""), "{}", reasons[2]);
    let records: Vec<String> = col("record").collect();
    assert_eq!(records, vec!["5.0,3.3,1.4", "5.1,three,1.5,0.2,0", "6.0,2.2,5.0,1.5,\"2\nx\""]);
    assert!(col("source").all(|s| s.ends_with("iris_broken.csv")));
    // Every good row is there, in order, exactly as in the clean file.
    let got = concat(&read_committed(&output(dir.path())));
    assert_eq!(got.columns(), arrow_csv(&iris()).columns());

    // JSON Lines: a line that is not JSON, one that is not an object, and a
    // value of the wrong type; blank lines are not records.
    let jsonl = iris_jsonl(dir.path());
    let mut text = std::fs::read_to_string(&jsonl).unwrap();
    text.push_str("{\"sepal_length\": 5.0, \"sepal_width\": \n[1, 2]\n\n{\"sepal_length\": \"long\", \"target\": 1}\n");
    std::fs::write(&jsonl, text).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let report = ingest(dir2.path(), &jsonl, schema).unwrap();
    assert_eq!(report.stages[0].rows_quarantined, 3);
    let q = concat(&read_quarantine(&output(dir2.path())));
    let lines_of: Vec<i64> = q.column_by_name("line").unwrap().as_primitive::<Int64Type>().values().to_vec();
    assert_eq!(lines_of, vec![151, 152, 154]);
    let reasons: Vec<&str> =
        q.column_by_name("reason").unwrap().as_string::<i32>().iter().map(Option::unwrap).collect();
    assert!(reasons[0].starts_with("not valid JSON"), "{}", reasons[0]);
    assert_eq!(reasons[1], "not a JSON object");
    assert!(reasons[2].contains("\"sepal_length\"") && reasons[2].contains("\"long\""), "{}", reasons[2]);

    // A rerun of the same input is a no-op that still reports the quarantine.
    let again = ingest(dir2.path(), &jsonl, schema).unwrap();
    assert!(again.stages[0].committed_before.is_some());
    assert_eq!(again.stages[0].rows_quarantined, 3);
}

#[test]
fn a_declared_schema_selects_and_types_columns() {
    let dir = tempfile::tempdir().unwrap();
    let report = ingest(
        dir.path(),
        &iris(),
        "schema = { target = \"utf8\", petal_length = \"float32\", sepal_width = \"float64\" }",
    )
    .unwrap();
    assert_eq!(report.stages[0].rows_quarantined, 0);
    let got = concat(&read_committed(&output(dir.path())));
    let fields: Vec<(String, DataType)> =
        got.schema().fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect();
    assert_eq!(
        fields,
        vec![
            ("target".into(), DataType::Utf8),
            ("petal_length".into(), DataType::Float32),
            ("sepal_width".into(), DataType::Float64)
        ]
    );
    let want = arrow_csv(&iris());
    assert_eq!(got.column(2).as_primitive::<Float64Type>(), want.column(1).as_primitive::<Float64Type>());
    assert_eq!(got.column(0).as_string::<i32>().value(149), "2");

    // Declared integers: the measurements are not, and go to quarantine.
    let dir = tempfile::tempdir().unwrap();
    let report = ingest(dir.path(), &iris(), "schema = { sepal_length = \"int64\" }").unwrap();
    assert_eq!(report.stages[0].rows_out, 0);
    assert_eq!(report.stages[0].rows_quarantined, 150);
    let q = concat(&read_quarantine(&output(dir.path())));
    let reason = q.column_by_name("reason").unwrap().as_string::<i32>().value(0).to_string();
    assert_eq!(reason, "column \"sepal_length\": \"5.1\" is not a valid Int64");

    // A declared column the header lacks fails the file, naming both.
    let dir = tempfile::tempdir().unwrap();
    let err = ingest(dir.path(), &iris(), "schema = { sepal = \"float64\" }").unwrap_err().to_string();
    assert!(err.contains("iris.csv") && err.contains("\"sepal\"") && err.contains("sepal_length"), "{err}");
    assert!(!output(dir.path()).join("_wasmpipe_commit.json").exists());

    // Parquet carries its own schema.
    let dir = tempfile::tempdir().unwrap();
    let parquet = testdata().join("parquet-testing/data/alltypes_plain.parquet");
    let err = ingest(dir.path(), &parquet, "schema = { id = \"int64\" }").unwrap_err().to_string();
    assert!(err.contains("alltypes_plain.parquet") && err.contains("`schema`"), "{err}");
}

#[test]
fn an_aggregator_refuses_records_it_cannot_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("d.csv");
    std::fs::write(&csv, "target,prediction\n1.0,1.5\n2.0,oops\n3.0,2.5\n").unwrap();
    let text = format!(
        "version = 1\nname = \"agg\"\n[stage.evaluate]\ncomponent = {}\ninputs = [{}]\nconfig = {{ target = \"target\" }}\nschema = {{ target = \"float64\", prediction = \"float64\" }}\n",
        toml_path(&component("evaluate")),
        toml_path(&csv),
    );
    let (exec, _) = executor(&dir.path().join("data"), 1);
    let err = run_text(&exec, &text, dir.path()).unwrap_err().to_string();
    assert!(err.contains("d.csv") && err.contains("1 records do not parse") && err.contains("transformer"), "{err}");
}

#[test]
fn quarantined_rows_have_the_documented_schema() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("d.csv");
    std::fs::write(&csv, "a,b\n1,2\n3\n").unwrap();
    ingest(dir.path(), &csv, "").unwrap();
    let q = concat(&read_quarantine(&output(dir.path())));
    let fields: Vec<(&str, &DataType, bool)> =
        q.schema_ref().fields().iter().map(|f| (f.name().as_str(), f.data_type(), f.is_nullable())).collect();
    assert_eq!(
        fields,
        vec![
            ("source", &DataType::Utf8, false),
            ("line", &DataType::Int64, true),
            ("reason", &DataType::Utf8, false),
            ("record", &DataType::Utf8, false)
        ]
    );
    assert_eq!(q.num_rows(), 1);
    assert!(q.column(1).is_valid(0));
}
