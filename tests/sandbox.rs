//! The sandbox: hostile stages are stopped, capped and denied; each failure
//! names the stage, the partition and the cause; the host survives and the
//! next run in the same process works; nothing partial becomes visible.

use std::path::Path;

use wasmpipe_executor::{RunError, TaskFailure};
use wasmpipe_runtime::CallError;
use wasmpipe_tests::*;

/// Iris as 5 Parquet row groups (30 rows each) under `store/iris/ingest`.
fn ingest_iris(exec: &wasmpipe_executor::Executor, store: &Path) -> String {
    let text = format!(
        r#"
        version = 1
        name = "iris"
        [defaults]
        row_group_rows = 30
        batch_rows = 30
        [stage.ingest]
        component = {}
        inputs = [{}]
        "#,
        toml_path(&component("passthrough")),
        toml_path(&testdata().join("ml/iris.csv")),
    );
    run_text(exec, &text, store).expect("ingest iris");
    store.join("iris/ingest").display().to_string()
}

fn hostile(
    exec: &wasmpipe_executor::Executor,
    input: &str,
    store: &Path,
    config: &str,
    limits: &str,
) -> Result<(), RunError> {
    let text = format!(
        r#"
        version = 1
        name = "hostile"
        [stage.hostile]
        component = {}
        inputs = [{input:?}]
        [stage.hostile.limits]
        {limits}
        [stage.hostile.config]
        {config}
        "#,
        toml_path(&component("hostile")),
    );
    run_text(exec, &text, store).map(|_| ())
}

/// The host still runs a good pipeline after a failure.
fn still_works(exec: &wasmpipe_executor::Executor, input: &str, store: &Path) {
    let r = hostile(exec, input, store, r#"mode = "pass""#, "").map_err(|e| e.to_string());
    assert_eq!(r, Ok(()), "a later run in the same process works");
}

fn task_failure(err: RunError) -> (String, String, TaskFailure) {
    let text = err.to_string();
    match err {
        RunError::Task { stage, task, cause, .. } => {
            assert_eq!(stage, "hostile", "{text}");
            (task, text, *cause)
        }
        other => panic!("expected a task failure, got: {other}"),
    }
}

#[test]
fn an_endless_loop_is_stopped_at_its_deadline() {
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let input = ingest_iris(&exec, store.path());
    let err = hostile(&exec, &input, store.path(), r#"mode = "spin""#, "timeout_s = 0.5").unwrap_err();
    let (task, text, cause) = task_failure(err);
    assert!(matches!(cause, TaskFailure::Stage(CallError::Deadline { limit_ms: 500 })), "{text}");
    assert!(task.starts_with("transform partition "), "{text}");
    assert!(text.contains("CPU deadline of 500 ms") && text.contains("timeout_s"), "{text}");
    still_works(&exec, &input, store.path());
}

#[test]
fn unbounded_allocation_hits_the_memory_cap() {
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let input = ingest_iris(&exec, store.path());
    let err = hostile(&exec, &input, store.path(), r#"mode = "hog""#, "memory_mib = 16").unwrap_err();
    let (_, text, cause) = task_failure(err);
    assert!(matches!(cause, TaskFailure::Stage(CallError::Memory { cap_mib: 16, .. })), "{text}");
    assert!(text.contains("memory cap of 16 MiB"), "{text}");
    still_works(&exec, &input, store.path());
}

#[test]
fn files_environment_and_network_give_nothing() {
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let input = ingest_iris(&exec, store.path());
    hostile(&exec, &input, store.path(), r#"mode = "snoop""#, "").expect("snooping is not a failure");
    let batches = read_committed(&store.path().join("hostile/hostile"));
    assert_eq!(batches.len(), 5, "one report row per partition");
    for batch in &batches {
        for name in ["file", "env", "net"] {
            let col = batch.column_by_name(name).unwrap();
            let col = col.as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
            assert!(col.value(0).starts_with("denied"), "{name}: {}", col.value(0));
        }
    }
}

#[test]
fn a_panic_names_the_stage_partition_and_message() {
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let input = ingest_iris(&exec, store.path());
    let err = hostile(&exec, &input, store.path(), "mode = \"panic\"\npartition = 3", "").unwrap_err();
    let (task, text, cause) = task_failure(err);
    assert!(matches!(cause, TaskFailure::Stage(CallError::Trap { .. })), "{text}");
    assert!(task.starts_with("transform partition 3 of 5"), "{text}");
    assert!(text.contains("hostile stage panicked on purpose"), "{text}");
    still_works(&exec, &input, store.path());
}

#[test]
fn a_stage_error_fails_the_run_and_leaves_the_previous_commit_in_force() {
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let input = ingest_iris(&exec, store.path());
    still_works(&exec, &input, store.path());
    let out = store.path().join("hostile/hostile");
    let before = std::fs::read(out.join("_wasmpipe_commit.json")).unwrap();

    let err = hostile(&exec, &input, store.path(), "mode = \"fail\"\npartition = 1", "").unwrap_err();
    let (task, text, cause) = task_failure(err);
    assert!(
        matches!(cause, TaskFailure::Stage(CallError::Stage(ref m)) if m == "hostile stage failed on purpose"),
        "{text}"
    );
    assert!(task.starts_with("transform partition 1 of 5"), "{text}");

    assert_eq!(std::fs::read(out.join("_wasmpipe_commit.json")).unwrap(), before, "the failed run committed nothing");
    let rows: usize = read_committed(&out).iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 150, "readers still see the earlier, complete output");
}

#[test]
fn an_unknown_config_key_is_an_error_naming_it() {
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 1);
    let input = ingest_iris(&exec, store.path());
    let err = hostile(&exec, &input, store.path(), "mode = \"pass\"\nmdoe = 1", "").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("invalid config") && text.contains("mdoe"), "{text}");
}
