//! Bad input ends in one clear error that names the thing and the fix:
//! no panic, no partial output.

use wasmpipe_executor::RunError;
use wasmpipe_tests::*;

fn pipeline(component: &str, input: &str, extra: &str) -> String {
    format!(
        r#"
        version = 1
        name = "bad"
        [stage.copy]
        component = {component}
        inputs = [{input}]
        {extra}
        "#
    )
}

fn passthrough() -> String {
    toml_path(&component("passthrough"))
}

#[test]
fn a_missing_input_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, _) = executor(dir.path(), 1);
    let err = run_text(&exec, &pipeline(&passthrough(), "\"no/such/data.csv\"", ""), dir.path()).unwrap_err();
    let text = err.to_string();
    // Found before any data moves, as a failure that will not pass on a
    // retry (a store that does not answer fails the run as it would).
    assert!(matches!(err, RunError::Config { .. }) && err.exit_code() == 65, "{text}");
    assert!(text.contains("no/such/data.csv") && text.contains("no such file"), "{text}");
    assert!(!dir.path().join("bad").exists(), "nothing written");
}

#[test]
fn a_corrupt_parquet_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.parquet"), b"PAR1 this is not really parquet PAR1").unwrap();
    let (exec, _) = executor(dir.path(), 1);
    let err = run_text(&exec, &pipeline(&passthrough(), "\"broken.parquet\"", ""), dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("broken.parquet") && text.contains("Parquet"), "{text}");
}

#[test]
fn an_empty_csv_names_the_file() {
    // (A ragged line is quarantined, not an error: see tests/ingest.rs.)
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.csv"), "").unwrap();
    let (exec, _) = executor(dir.path(), 1);
    let err = run_text(&exec, &pipeline(&passthrough(), "\"empty.csv\"", ""), dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("empty.csv") && text.contains("header"), "{text}");
}

#[test]
fn an_unknown_format_asks_for_format() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.txt"), "a\n1\n").unwrap();
    let (exec, _) = executor(dir.path(), 1);
    let err = run_text(&exec, &pipeline(&passthrough(), "\"data.txt\"", ""), dir.path()).unwrap_err();
    assert!(err.to_string().contains("format = \"parquet\""), "{err}");
    // ...and with the format given, it reads.
    run_text(&exec, &pipeline(&passthrough(), "\"data.txt\"", "format = \"csv\""), dir.path()).expect("csv by config");
}

#[test]
fn a_missing_projected_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, _) = executor(dir.path(), 1);
    let iris = toml_path(&testdata().join("ml/iris.csv"));
    let err =
        run_text(&exec, &pipeline(&passthrough(), &iris, "columns = [\"petal_lenght\"]"), dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("petal_lenght") && text.contains("columns"), "{text}");
}

#[test]
fn a_missing_or_bogus_component_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, _) = executor(dir.path(), 1);
    let iris = toml_path(&testdata().join("ml/iris.csv"));

    let err = run_text(&exec, &pipeline("\"gone.wasm\"", &iris, ""), dir.path()).unwrap_err();
    assert!(matches!(err, RunError::Load { .. }) && err.to_string().contains("gone.wasm"), "{err}");

    std::fs::write(dir.path().join("text.wasm"), "not wasm").unwrap();
    let err = run_text(&exec, &pipeline("\"text.wasm\"", &iris, ""), dir.path()).unwrap_err();
    assert!(err.to_string().contains("text.wasm: not a WebAssembly component or module"), "{err}");

    let err = run_text(&exec, &pipeline("\"no/such/crate\"", &iris, ""), dir.path()).unwrap_err();
    assert!(matches!(err, RunError::Build { .. }) && err.to_string().contains("no/such/crate"), "{err}");
}
