//! Apache's parquet-testing corpus through a passthrough stage: every valid
//! file comes out with the same rows and values (or fails with a clear
//! error naming the file and the unsupported feature); every malformed
//! file ends in a clear error naming it: never a panic, never a hang.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use wasmpipe_executor::{RunError, TaskFailure};
use wasmpipe_tests::*;

/// No single file may take longer than this; a hang fails the test.
const WATCHDOG: Duration = Duration::from_secs(120);

fn files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(testdata().join("parquet-testing").join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    v.sort();
    v
}

/// Run one file through passthrough in its own store, under the watchdog.
fn passthrough(file: &Path) -> (Result<(), String>, tempfile::TempDir, bool) {
    let store = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
        version = 1
        name = "corpus"
        [stage.copy]
        component = {}
        inputs = [{}]
        "#,
        toml_path(&component("passthrough")),
        toml_path(file),
    );
    let root = store.path().to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (exec, _) = executor(&root, 2);
        let result = run_text(&exec, &text, &root);
        let internal =
            matches!(&result, Err(RunError::Task { cause, .. }) if matches!(**cause, TaskFailure::Internal(_)));
        let _ = tx.send((result.map(|_| ()).map_err(|e| e.to_string()), internal));
    });
    let (result, internal) =
        rx.recv_timeout(WATCHDOG).unwrap_or_else(|_| panic!("{} hung for over {WATCHDOG:?}", file.display()));
    (result, store, internal)
}

/// Read a file directly with parquet-rs, the reference for its contents.
fn read_direct(file: &Path) -> Result<Vec<RecordBatch>, String> {
    let f = std::fs::File::open(file).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| e.to_string())?
        .build()
        .map_err(|e| e.to_string())?;
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
}

fn column(batches: &[RecordBatch], i: usize) -> ArrayRef {
    let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
    arrow::compute::concat(&parts).unwrap()
}

/// Same values, row by row; NaN equals NaN.
fn same_values(a: &ArrayRef, b: &ArrayRef) -> bool {
    if a.to_data() == b.to_data() {
        return true;
    }
    if a.len() != b.len() || a.data_type() != b.data_type() {
        return false;
    }
    let opts = FormatOptions::default().with_null("<null>");
    let (fa, fb) = (ArrayFormatter::try_new(a, &opts).unwrap(), ArrayFormatter::try_new(b, &opts).unwrap());
    (0..a.len()).all(|i| fa.value(i).to_string() == fb.value(i).to_string())
}

/// What happened to one file.
enum Outcome {
    /// Same rows and values came out.
    Passed(usize),
    /// A clear error naming the file.
    Failed(String),
}

/// Run `file` through passthrough and judge the result against a direct
/// read; `Err` describes a problem.
fn check(file: &Path) -> Result<Outcome, String> {
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    let direct = std::panic::catch_unwind(|| read_direct(file)).unwrap_or_else(|_| Err("reader panicked".into()));
    let (result, store, internal) = passthrough(file);
    if internal {
        return Err(format!("{name}: a panic reached the task boundary: {result:?}"));
    }
    match (result, direct) {
        (Ok(()), Ok(expected)) => {
            let got = read_committed(&store.path().join("corpus/copy"));
            let rows: usize = expected.iter().map(|b| b.num_rows()).sum();
            let got_rows: usize = got.iter().map(|b| b.num_rows()).sum();
            if rows != got_rows {
                return Err(format!("{name}: {rows} rows in, {got_rows} out"));
            }
            if rows > 0 {
                for (i, field) in expected[0].schema().fields().iter().enumerate() {
                    let j = got[0].schema().index_of(field.name()).unwrap();
                    if !same_values(&column(&expected, i), &column(&got, j)) {
                        return Err(format!("{name}: column {} differs", field.name()));
                    }
                }
            }
            Ok(Outcome::Passed(rows))
        }
        (Ok(()), Err(e)) => Err(format!("{name}: wasmpipe read a file parquet-rs rejects ({e})")),
        (Err(e), _) if !e.contains(&name) => Err(format!("{name}: the error does not name the file: {e}")),
        (Err(e), _) => Ok(Outcome::Failed(e)),
    }
}

/// Check every file of `dir`; print what happened; return (passed, failed).
fn check_all(dir: &str) -> (usize, usize) {
    let (mut passed, mut failed) = (0, 0);
    let mut problems = Vec::new();
    for file in files(dir) {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        match check(&file) {
            Ok(Outcome::Passed(rows)) => {
                passed += 1;
                println!("ok    {name} ({rows} rows)");
            }
            Ok(Outcome::Failed(e)) => {
                failed += 1;
                println!("error {name}: {}", e.lines().next().unwrap_or(""));
            }
            Err(problem) => problems.push(problem),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    (passed, failed)
}

#[test]
fn every_valid_file_passes_through_unchanged_or_fails_clearly() {
    let (passed, failed) = check_all("data");
    assert!(passed >= 40, "only {passed} files passed through ({failed} failed)");
}

#[test]
fn every_malformed_file_ends_in_a_clear_error_or_reads_correctly() {
    // Some of these crashed other readers but are readable; the rest must
    // fail cleanly (pyarrow rejects three of the four, and so must we).
    let (_, failed) = check_all("bad_data");
    assert!(failed >= 3, "only {failed} malformed files were rejected");
}
