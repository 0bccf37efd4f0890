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

// ---------------------------------------------------------------------------
// Attacks through the host's own work: each is stopped by the stage's host
// memory budget or its deadline, the process's peak memory stays bounded,
// and the next run in the same process works.

/// Serializes the attacks of this binary, so that each one's peak memory
/// is its own.
static ATTACKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Resident set size now and its peak since the last reset, in MiB, from
/// the kernel's accounting of this process.
fn rss_mib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in status"));
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Reset the peak resident set size to the current one.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM (Linux)");
}

/// What an attack did: its error (if any), the growth of the process's
/// peak RSS over its RSS before, in MiB, and how long it took.
struct Attack {
    result: Result<(), RunError>,
    peak_growth_mib: u64,
    took: std::time::Duration,
}

/// Run the hostile stage in `mode` in partition 0 of iris, with `limits`.
fn attack(mode: &str, n: u64, limits: &str) -> Attack {
    let _one = ATTACKS.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let input = ingest_iris(&exec, store.path());
    let config = format!("mode = {mode:?}\npartition = 0\nn = {n}");
    reset_peak();
    let (before, _) = rss_mib();
    let started = std::time::Instant::now();
    let result = hostile(&exec, &input, store.path(), &config, limits);
    let took = started.elapsed();
    let (_, peak) = rss_mib();
    still_works(&exec, &input, store.path());
    eprintln!("attack {mode} n={n}: peak RSS +{} MiB, {took:?}", peak.saturating_sub(before));
    Attack { result, peak_growth_mib: peak.saturating_sub(before), took }
}

/// Most the process's peak RSS may grow in an attack on a stage whose
/// budgets are 64 MiB: the stage's own memory, its host budget, the
/// current batch and the runtime's working set, with room to spare.
const PEAK_GROWTH_MIB: u64 = 400;

const SMALL: &str = "memory_mib = 64\nhost_memory_mib = 64\ntimeout_s = 20";

fn host_memory_failure(a: &Attack) {
    let err = a.result.as_ref().expect_err("the attack must fail its task");
    let text = err.to_string();
    assert!(text.contains("host memory budget of 64 MiB") && text.contains("host_memory_mib"), "{text}");
    assert!(text.contains("transform partition 0 of 5"), "{text}");
    assert!(a.peak_growth_mib < PEAK_GROWTH_MIB, "peak RSS grew {} MiB", a.peak_growth_mib);
}

fn deadline_failure(a: &Attack, limit_ms: u64) {
    let err = a.result.as_ref().expect_err("the attack must fail its task");
    let text = err.to_string();
    assert!(text.contains(&format!("CPU deadline of {limit_ms} ms")), "{text}");
    assert!(a.peak_growth_mib < 1024, "peak RSS grew {} MiB", a.peak_growth_mib);
}

#[test]
fn a_histogram_of_four_billion_bins_is_refused_before_allocating() {
    host_memory_failure(&attack("histogram", u32::MAX as u64, SMALL));
}

#[test]
fn concatenating_a_column_with_itself_hits_the_host_budget() {
    host_memory_failure(&attack("concat", 30, SMALL));
}

#[test]
fn hoarding_column_handles_hits_the_host_budget() {
    host_memory_failure(&attack("hoard", 400, SMALL));
}

#[test]
fn small_views_pin_their_parents_and_count_as_such() {
    host_memory_failure(&attack("views", 400, SMALL));
}

#[test]
fn taking_one_long_string_many_times_is_refused() {
    host_memory_failure(&attack("take", 1_000_000, SMALL));
}

#[test]
fn a_distinct_count_over_more_than_the_budget_is_refused() {
    host_memory_failure(&attack("distinct", 4_000_000, "memory_mib = 512\nhost_memory_mib = 64"));
}

#[test]
fn a_batch_repeating_one_column_thousands_of_times_is_charged_per_copy() {
    host_memory_failure(&attack("alias", 5000, SMALL));
}

#[test]
fn a_batch_of_more_columns_than_any_file_may_have_is_refused() {
    let a = attack("wide", 20_000, SMALL);
    let text = a.result.expect_err("refused").to_string();
    assert!(text.contains("a batch of 20000 columns; at most 10000"), "{text}");
    assert!(a.peak_growth_mib < PEAK_GROWTH_MIB, "peak RSS grew {} MiB", a.peak_growth_mib);
}

#[test]
fn huge_log_lines_are_cut_and_the_kept_log_is_bounded() {
    let store = tempfile::tempdir().unwrap();
    let _one = ATTACKS.lock().unwrap_or_else(|e| e.into_inner());
    let (exec, logs) = executor(store.path(), 2);
    let input = ingest_iris(&exec, store.path());
    reset_peak();
    let (before, _) = rss_mib();
    hostile(&exec, &input, store.path(), "mode = \"log\"\npartition = 0\nn = 300", "memory_mib = 128")
        .expect("logging is not a failure");
    let (_, peak) = rss_mib();
    eprintln!("attack log n=300: peak RSS +{} MiB", peak.saturating_sub(before));
    let logs = logs.lock().unwrap();
    let lines: Vec<_> = logs.iter().filter(|(label, _)| label.starts_with("hostile[0]")).collect();
    assert_eq!(lines.len(), 300, "the sink sees every line");
    for (_, record) in &lines {
        assert!(record.message.len() < wasmpipe_runtime::LOG_LINE_BYTES + 64, "{}", record.message.len());
        assert!(record.message.ends_with("more bytes cut)"), "{}", &record.message[record.message.len() - 40..]);
    }
    assert!(peak.saturating_sub(before) < PEAK_GROWTH_MIB, "peak RSS grew {} MiB", peak.saturating_sub(before));
}

#[test]
fn a_gram_matrix_of_a_thousand_views_stops_at_the_deadline() {
    let a = attack("gram", 1000, "memory_mib = 64\nhost_memory_mib = 1024\ntimeout_s = 1");
    deadline_failure(&a, 1000);
    assert!(a.took < std::time::Duration::from_secs(60), "unstopped, it takes minutes: {:?}", a.took);
}

#[test]
fn matvec_and_row_hashes_over_many_views_stop_at_the_deadline() {
    for mode in ["matvec", "hash"] {
        let a = attack(mode, 20_000, "memory_mib = 64\nhost_memory_mib = 1024\ntimeout_s = 1");
        deadline_failure(&a, 1000);
    }
}

#[test]
fn logistic_newton_steps_over_many_views_or_classes_stop_at_the_deadline() {
    let a = attack("logistic", 1000, "memory_mib = 64\nhost_memory_mib = 1024\ntimeout_s = 1");
    deadline_failure(&a, 1000);
    // 3,000 classes: a 6,000-square Hessian (288 MB) fits this budget,
    // and its 4.5 million blocks per block of rows do not fit the time.
    let a = attack("logistic_classes", 3000, "memory_mib = 64\nhost_memory_mib = 1024\ntimeout_s = 1");
    deadline_failure(&a, 1000);
}

#[test]
fn a_logistic_newton_step_whose_hessian_does_not_fit_is_refused() {
    host_memory_failure(&attack("logistic_classes", 3000, SMALL));
}

#[test]
fn solving_a_large_system_on_the_host_stops_at_the_deadline() {
    // 5,000 unknowns: 200 MB of matrix in the stage, 4e10 flops to factor.
    let a = attack("solve", 5000, "memory_mib = 512\nhost_memory_mib = 1024\ntimeout_s = 1");
    deadline_failure(&a, 1000);
}

#[test]
fn a_distinct_count_that_fits_stops_at_the_deadline() {
    let a = attack("distinct", 12_000_000, "memory_mib = 512\nhost_memory_mib = 2048\ntimeout_s = 0.5");
    deadline_failure(&a, 500);
}

#[test]
fn quarantining_with_huge_reasons_is_charged_to_the_deadline() {
    let a = attack("quarantine", 2000, "memory_mib = 128\nhost_memory_mib = 256\ntimeout_s = 1");
    deadline_failure(&a, 1000);
}

#[test]
fn quarantined_rows_are_charged_for_the_names_they_are_rendered_with() {
    // 6 MiB of booleans, but 50 GB of JSON once every row carries 1,000
    // names of 1 KiB.
    host_memory_failure(&attack("quarantine_names", 50_000, SMALL));
}

#[test]
fn a_long_wasi_sleep_fails_at_once_without_waiting() {
    let a = attack("sleep", 30, "timeout_s = 1");
    deadline_failure(&a, 1000);
    assert!(a.took < std::time::Duration::from_secs(20), "slept for real: {:?}", a.took);
}

#[test]
fn a_wait_for_the_end_of_time_fails_at_once() {
    let a = attack("sleep_forever", 0, "timeout_s = 1");
    deadline_failure(&a, 1000);
}

#[test]
fn partitions_that_write_different_schemas_fail_at_commit() {
    let _one = ATTACKS.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let input = ingest_iris(&exec, store.path());
    let err = hostile(&exec, &input, store.path(), "mode = \"schema\"", "").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RunError::SchemaMismatch { .. }), "{text}");
    assert!(text.contains("partition 0 wrote mixed: Float64") && text.contains("mixed: Utf8"), "{text}");
    assert!(!store.path().join("hostile/hostile/_wasmpipe_commit.json").exists(), "nothing was committed");
}

#[test]
fn a_stage_that_emits_rows_without_columns_fails_with_the_reason() {
    let _one = ATTACKS.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let input = ingest_iris(&exec, store.path());
    // (A part writer without columns once looped for good once a row
    // group's worth of rows had come.)
    let err = hostile(&exec, &input, store.path(), "mode = \"no_columns\"", "").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("rows with no columns") && text.contains("hostile"), "{text}");
    assert!(!store.path().join("hostile/hostile/_wasmpipe_commit.json").exists(), "nothing was committed");
}

#[test]
fn a_stage_emitting_huge_rows_cannot_make_the_writer_hold_a_row_group_of_them() {
    let _one = ATTACKS.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    // Iris as one partition, handed over a row at a time; each row comes
    // back as 2 MiB of text zstd keeps at 3/4: 225 MB of pages in what
    // would be one row group of 150 rows.
    let text = format!(
        r#"
        version = 1
        name = "fat"
        [stage.ingest]
        component = {}
        inputs = [{}]
        limits = {{ row_group_rows = 150 }}
        [stage.hostile]
        component = {}
        inputs = ["stage:ingest"]
        limits = {{ batch_rows = 1, row_group_rows = 150 }}
        config = {{ mode = "fat_rows", n = 2097152 }}
        "#,
        toml_path(&component("passthrough")),
        toml_path(&testdata().join("ml/iris.csv")),
        toml_path(&component("hostile")),
    );
    run_text(&exec, &text, store.path()).unwrap();
    let out = store.path().join("fat/hostile");
    let commit: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_wasmpipe_commit.json")).unwrap()).unwrap();
    let part = std::fs::File::open(out.join(commit["parts"][0]["name"].as_str().unwrap())).unwrap();
    let footer = parquet::file::reader::SerializedFileReader::new(part).unwrap();
    let groups = parquet::file::reader::FileReader::metadata(&footer).row_groups().to_vec();
    let rows: i64 = groups.iter().map(|g| g.num_rows()).sum();
    assert_eq!(rows, 150);
    assert!(groups.len() >= 2, "the row group was cut by its size: {} row groups", groups.len());
    let cap = wasmpipe_storage::write::MAX_ROW_GROUP_BYTES as i64;
    for g in &groups {
        assert!(g.compressed_size() <= cap + (2 << 20), "a row group of {} bytes", g.compressed_size());
    }
}

#[test]
fn long_column_names_and_long_error_messages_are_bounded() {
    let _one = ATTACKS.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let input = ingest_iris(&exec, store.path());
    // A megabyte name would be copied into every batch, footer and record.
    let err = hostile(&exec, &input, store.path(), "mode = \"long_name\"\nn = 1048576", "").unwrap_err().to_string();
    assert!(
        err.contains("a column name of 1048576 bytes") && err.contains("at most 1024"),
        "{}",
        &err[..err.len().min(2000)]
    );
    assert!(err.len() < 8 << 10, "the error names the name without repeating it: {} bytes", err.len());
    // A 64 MiB message is cut where the host keeps it.
    let err = hostile(&exec, &input, store.path(), "mode = \"long_error\"\nn = 67108864", "").unwrap_err().to_string();
    assert!(err.contains(&format!("({} more bytes cut)", 67108864 - 4096)), "{}", &err[..err.len().min(2000)]);
    assert!(err.len() < 16 << 10, "{} bytes of error", err.len());
    still_works(&exec, &input, store.path());
}

#[test]
fn wasi_random_numbers_are_the_same_in_every_attempt_of_a_task() {
    let _one = ATTACKS.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir().unwrap();
    let (exec, _) = executor(store.path(), 2);
    let input = ingest_iris(&exec, store.path());
    let out = store.path().join("hostile/hostile");
    let attempt = || -> (Vec<f64>, Vec<Vec<u8>>) {
        hostile(&exec, &input, store.path(), "mode = \"random\"", "").unwrap();
        let draws = read_committed(&out)
            .iter()
            .map(|b| {
                let c = b.column_by_name("random").unwrap();
                c.as_any().downcast_ref::<arrow::array::Float64Array>().unwrap().value(0)
            })
            .collect();
        let record = commit_record(&out);
        let parts = record["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| std::fs::read(out.join(p["name"].as_str().unwrap())).unwrap())
            .collect();
        (draws, parts)
    };
    let (first, first_parts) = attempt();
    // Every task again, from nothing.
    std::fs::remove_dir_all(&out).unwrap();
    let (second, second_parts) = attempt();
    assert_eq!(first.len(), 5);
    assert_eq!(first, second, "a task draws the same numbers in every attempt");
    assert!(first_parts == second_parts, "and writes the same bytes");
    let mut distinct = first.clone();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    assert_eq!(distinct.len(), 5, "each task has a seed of its own: {first:?}");
}
