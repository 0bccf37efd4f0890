//! One storage conformance suite, run against every kind of store
//! wasmpipe supports here: the local filesystem, the in-process memory
//! store, and two real S3-compatible servers on loopback (Garage, a
//! production store that ignores conditional headers, and moto, which
//! honours them), commit conflicts included. Then a pipeline on S3
//! through a proxy that fails and delays requests, and the errors users
//! see.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Float64Array, Int64Array};
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use wasmpipe_manifest::Manifest;
use wasmpipe_storage::commit::{self, COMMIT_FORMAT, CommitRecord};
use wasmpipe_storage::quarantine::{self, QUARANTINE_DIR};
use wasmpipe_storage::read;
use wasmpipe_storage::write::{PartWriter, part_name};
use wasmpipe_storage::{Conditional, Location, Storage, StorageError};
use wasmpipe_tests::s3::{S3Server, fault_proxy, garage, moto, unique_prefix};
use wasmpipe_tests::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn batch(from: i64, n: usize) -> RecordBatch {
    let ids: Vec<i64> = (from..from + n as i64).collect();
    let xs: Vec<f64> = ids.iter().map(|i| *i as f64 * 0.5).collect();
    RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids)) as _),
        ("x", Arc::new(Float64Array::from(xs)) as _),
    ])
    .unwrap()
}

fn record(parts: Vec<commit::Part>, run_id: &str) -> CommitRecord {
    CommitRecord {
        format: COMMIT_FORMAT.into(),
        pipeline: "p".into(),
        stage: "s".into(),
        run_id: run_id.into(),
        identity: format!("identity of {run_id}"),
        component: "c".into(),
        config: "k".into(),
        selected: Default::default(),
        inputs: vec![],
        rows: parts.iter().map(|p| p.rows).sum(),
        parts,
        model: None,
        applied_model: None,
        quarantine: vec![],
        report: None,
        committed_at: 0,
    }
}

/// Every storage behaviour wasmpipe relies on, at `root` (an empty
/// prefix), on a store expected to honour `expect`.
async fn conformance(root: Location, expect: Conditional) {
    let url = root.url().to_string();
    // Whole objects.
    let obj = root.child("dir/a.bin");
    assert!(obj.get_opt().await.unwrap().is_none(), "{url}: a missing object reads as None");
    obj.put(b"hello".to_vec()).await.unwrap();
    assert_eq!(&obj.get_opt().await.unwrap().unwrap().0[..], b"hello");

    // What the store honours is probed, not assumed.
    assert_eq!(root.conditional().await, expect, "{url}: conditional writes");
    let fresh = root.child("dir/fresh.bin");
    assert!(fresh.put_if(b"one".to_vec(), None).await.unwrap(), "{url}: creating a new object succeeds");
    let second = fresh.put_if(b"two".to_vec(), None).await.unwrap();
    assert_eq!(!second, expect.create, "{url}: a second create fails exactly where creates are conditional");
    let want: &[u8] = if expect.create { b"one" } else { b"two" };
    assert_eq!(&fresh.get_opt().await.unwrap().unwrap().0[..], want);

    // Parts, written in row groups, listed through their commit, read
    // back by ranged reads one row group at a time.
    let out = root.child("out");
    let mut parts = Vec::new();
    for (i, task) in ["a".repeat(64), "b".repeat(64)].into_iter().enumerate() {
        let mut w = PartWriter::new(&out, part_name(i, &task), task.clone(), 1000);
        w.write(&batch(i as i64 * 2500, 2500)).await.unwrap();
        let part = w.finish().await.unwrap().expect("rows were written");
        assert_eq!(part.rows, 2500);
        let record = commit::TaskRecord::Transform {
            part: Some(part.clone()),
            quarantine: None,
            rows_in: 2500,
            schema: Some(vec!["x: Int64".into()]),
        };
        commit::write_task(&out, &task, &record, b"payload").await.unwrap();
        let (read, payload) = commit::read_task(&out, &task).await.unwrap().expect("the record is there");
        assert_eq!((read, &payload[..]), (record, &b"payload"[..]), "{url}: task records round-trip");
        parts.push(part);
    }
    // A stray part of a run that died, beside them, and quarantine parts:
    // one the commit lists, one it does not. That run had journaled them
    // before writing, as every run does; a foreign object (no journal
    // names it) stays whatever its name.
    let journal = commit::Journal {
        run_id: "died".into(),
        objects: vec![part_name(9, &"c".repeat(64)), format!("{QUARANTINE_DIR}/{}", part_name(0, &"c".repeat(64)))],
    };
    commit::write_journal(&out, &journal).await.unwrap();
    out.child("part-00008-ffffffffffffffff.parquet").put(b"someone else's".to_vec()).await.unwrap();
    let mut stray = PartWriter::new(&out, part_name(9, &"c".repeat(64)), "c".repeat(64), 1000);
    stray.write(&batch(0, 10)).await.unwrap();
    stray.finish().await.unwrap();
    let mut quarantined = Vec::new();
    for task in ["a".repeat(64), "c".repeat(64)] {
        let mut q = PartWriter::new(&out, format!("{QUARANTINE_DIR}/{}", part_name(0, &task)), task, 1000);
        q.write(&quarantine::batch("file:///x.csv", vec![Some(3)], vec!["why".into()], vec!["1,2".into()]))
            .await
            .unwrap();
        quarantined.push(q.finish().await.unwrap().expect("a row was written"));
    }

    // Before any commit, a listing sees the parts (a plain prefix of files).
    let before = read::list(&out, None).await.unwrap();
    assert!(before.commit.is_none());
    assert_eq!(before.files.len(), 4, "{url}: names starting with _ are not data");

    let committed = CommitRecord { quarantine: vec![quarantined[0].clone()], ..record(parts.clone(), "run-1") };
    commit::write(&out, &committed, None).await.unwrap();
    let listing = read::list(&out, None).await.unwrap();
    assert_eq!(listing.commit.as_ref().unwrap().run_id, "run-1");
    let names: Vec<String> = listing.files.iter().map(|f| f.location.name()).collect();
    assert_eq!(names, parts.iter().map(|p| p.name.clone()).collect::<Vec<_>>(), "{url}: only committed parts");
    let partitions = read::partitions(&listing.files).await.unwrap();
    assert_eq!(partitions.len(), 6, "{url}: 2 parts x 3 row groups");
    let mut ids = Vec::new();
    for p in &partitions {
        let mut stream = read::open(p, Some(&["id".to_string()]), 300, None).await.unwrap();
        while let Some(b) = stream.next().await {
            let read::Chunk::Rows(b) = b.unwrap() else { panic!("{url}: Parquet has no quarantine") };
            assert_eq!(b.num_columns(), 1, "projection");
            ids.extend(b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().iter().copied());
        }
    }
    assert_eq!(ids, (0..5000).collect::<Vec<i64>>(), "{url}: every row once, in order");

    // After the commit: the stray parts and every task record are gone.
    let mut left: Vec<String> = {
        use futures::TryStreamExt;
        out.store()
            .list(Some(out.path()))
            .map_ok(|m| {
                m.location.as_ref().strip_prefix(out.path().as_ref()).unwrap().trim_start_matches('/').to_string()
            })
            .try_collect()
            .await
            .unwrap()
    };
    left.sort();
    let mut want: Vec<String> = parts
        .iter()
        .chain(&quarantined[..1])
        .map(|p| p.name.clone())
        .chain(["_wasmpipe_commit.json".into(), "part-00008-ffffffffffffffff.parquet".into()])
        .collect();
    want.sort();
    assert_eq!(left, want, "{url}: nothing but the commit, its parts, its quarantine and what wasmpipe did not write");

    // Two runs racing on one output: the second, which read the output
    // before the first committed, must not land where the store can check.
    let (_, seen) = commit::read_versioned(&out).await.unwrap().unwrap();
    commit::write(&out, &record(parts.clone(), "run-2"), Some(seen.clone())).await.unwrap();
    let late = commit::write(&out, &record(parts.clone(), "run-3"), Some(seen)).await;
    let winner = commit::read(&out).await.unwrap().unwrap().run_id;
    if expect.update {
        match late {
            Err(StorageError::CommitConflict { other, .. }) => assert_eq!(other, "run run-2"),
            other => panic!("{url}: expected a commit conflict, got {other:?}"),
        }
        assert_eq!(winner, "run-2");
    } else {
        late.unwrap();
        assert_eq!(winner, "run-3", "{url}: without conditional updates the last writer wins");
    }

    // A part larger than the encoder's chunks (1 MiB) and than an upload's
    // part (10 MiB on object stores): read back whole, and its BLAKE3 is
    // that of its bytes.
    let rows = 1_400_000;
    let noise: Vec<f64> = (0..rows as u64).map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64).collect();
    let wide = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from_iter_values(0..rows as i64)) as _),
        ("x", Arc::new(Float64Array::from(noise.clone())) as _),
    ])
    .unwrap();
    // Row groups of 250k rows from batches of 100k: batches split across them.
    let mut w = PartWriter::new(&root.child("big"), part_name(0, &"d".repeat(64)), "d".repeat(64), 250_000);
    for from in (0..rows).step_by(100_000) {
        w.write(&wide.slice(from, 100_000)).await.unwrap();
    }
    let part = w.finish().await.unwrap().unwrap();
    let bytes = root.child("big").child(&part.name).get_opt().await.unwrap().unwrap().0;
    assert!(bytes.len() > 11 << 20, "{url}: {} bytes is more than an upload part", bytes.len());
    assert_eq!(part.bytes, bytes.len() as u64);
    assert_eq!(part.blake3.as_deref(), Some(blake3::hash(&bytes).to_hex().as_str()), "{url}: the part's checksum");
    let back = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(bytes.clone(), 1 << 20).unwrap();
    let xs: Vec<f64> = back
        .flat_map(|b| b.unwrap().column(1).as_any().downcast_ref::<Float64Array>().unwrap().values().to_vec())
        .collect();
    assert_eq!(xs, noise, "{url}: every value of the large part, in order");
    let footer = parquet::file::reader::SerializedFileReader::new(bytes).unwrap();
    let groups: Vec<i64> =
        parquet::file::reader::FileReader::metadata(&footer).row_groups().iter().map(|g| g.num_rows()).collect();
    assert_eq!(groups, [250_000, 250_000, 250_000, 250_000, 250_000, 150_000], "{url}: row groups");

    // A record that is not a commit is a clear error naming it.
    root.child("bad/_wasmpipe_commit.json").put(b"{not json".to_vec()).await.unwrap();
    let err = read::list(&root.child("bad"), None).await.unwrap_err().to_string();
    assert!(err.contains("bad/_wasmpipe_commit.json") && err.contains("corrupt commit record"), "{err}");
}

#[test]
fn conformance_local_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let root = Storage::new(dir.path()).resolve("root").unwrap();
    rt().block_on(conformance(root, Conditional { create: true, update: false }));
}

#[test]
fn conformance_memory() {
    let root = Storage::new(".").resolve(&format!("memory://{}/root", unique_prefix("conf"))).unwrap();
    rt().block_on(conformance(root, Conditional { create: true, update: true }));
}

fn s3_root(server: &S3Server, tag: &str) -> Location {
    Storage::new(".").with_options(server.options()).resolve(&server.url(&unique_prefix(tag))).unwrap()
}

#[test]
fn conformance_s3_garage() {
    // Garage accepts If-None-Match and If-Match and ignores both.
    rt().block_on(conformance(s3_root(garage(), "conf"), Conditional { create: false, update: false }));
}

#[test]
fn conformance_s3_moto() {
    rt().block_on(conformance(s3_root(moto(), "conf"), Conditional { create: true, update: true }));
}

/// The demo pipeline with its components built here and its input at
/// `input`, writing below the executor's store.
fn demo_text(input: &str) -> String {
    let text = std::fs::read_to_string(repo().join("examples/diabetes/wasmpipe.toml")).unwrap();
    let mut text = text.replace("inputs = [\"diabetes.csv\"]", &format!("inputs = [{input:?}]"));
    while let Some(at) = text.find("\"../../stages/") {
        let name_len = text[at + 14..].find('"').expect("a closing quote");
        let stage = text[at + 14..at + 14 + name_len].to_string();
        text.replace_range(at..at + 15 + name_len, &toml_path(&component(&stage)));
    }
    text
}

/// Committed parts of every stage of a finished demo run under `store`:
/// `(stage, part, rows, bytes)`, parts named by task index (their names
/// also hold the task identity, which covers the input's location) and
/// models by content.
fn committed(storage: &Storage, store: &str) -> Vec<(String, String, u64, u64)> {
    let mut out = Vec::new();
    let manifest = Manifest::parse(&std::fs::read_to_string(repo().join("examples/diabetes/wasmpipe.toml")).unwrap())
        .expect("the demo manifest parses");
    for stage in manifest.stages.keys() {
        let at = storage.resolve(&format!("{store}/diabetes/{stage}")).unwrap();
        let record = rt().block_on(commit::read(&at)).unwrap().unwrap_or_else(|| panic!("{stage} committed"));
        for p in record.parts {
            out.push((stage.to_string(), p.name[..10].to_string(), p.rows, p.bytes));
        }
        if let Some(m) = record.model {
            out.push((stage.to_string(), m.name, 0, m.bytes));
        }
        for q in record.quarantine {
            out.push((stage.to_string(), q.name, q.rows, q.bytes));
        }
    }
    out
}

#[test]
fn a_pipeline_on_s3_rides_out_failed_and_delayed_requests() {
    let server = garage();
    let root = server.url(&unique_prefix("faults"));
    let input = format!("{root}/in/diabetes.csv");
    let direct = Storage::new(".").with_options(server.options());
    rt().block_on(
        direct.resolve(&input).unwrap().put(std::fs::read(repo().join("examples/diabetes/diabetes.csv")).unwrap()),
    )
    .unwrap();
    let manifest = Manifest::parse(&demo_text(&input)).unwrap();

    // A clean run, straight to the server.
    let clean_store = format!("{root}/clean");
    let (exec, _) = executor(std::path::Path::new(&clean_store), 3);
    let clean = exec.run_in(&manifest, &direct, None).expect("clean run");

    // The same run through a proxy that fails one request in ten with
    // 503 SlowDown and delays another one in ten.
    let proxy = fault_proxy(&server.endpoint, 10, 10, Duration::from_millis(30), 0xFA17);
    let faulty = Storage::new(".").with_options(server.options_at(&proxy.endpoint));
    let faulty_store = format!("{root}/faulty");
    let (exec, _) = executor(std::path::Path::new(&faulty_store), 3);
    let report = exec.run_in(&manifest, &faulty, None).expect("the run succeeds: failed requests are retried");
    eprintln!(
        "fault proxy: {} requests, {} failed (503), {} delayed",
        proxy.requests(),
        proxy.failed(),
        proxy.delayed()
    );
    assert!(proxy.failed() >= 5, "faults were injected: {} of {} requests failed", proxy.failed(), proxy.requests());
    assert!(proxy.delayed() >= 5);

    let r2 = |r: &wasmpipe_executor::RunReport| {
        let s = r.stages.iter().find(|s| s.name == "evaluate").unwrap();
        serde_json::from_slice::<serde_json::Value>(s.model_bytes.as_ref().unwrap()).unwrap()["r2"].as_f64().unwrap()
    };
    assert_eq!(r2(&report), r2(&clean));
    assert!((r2(&clean) - 0.5177).abs() < 5e-5);
    assert_eq!(committed(&direct, &faulty_store), committed(&direct, &clean_store), "same parts, same bytes");
}

#[test]
fn storage_errors_name_the_url_and_the_fix() {
    let server = garage();
    let missing_bucket = Storage::new(".").with_options(server.options()).resolve("s3://no-such-bucket/x").unwrap();
    let err = rt().block_on(read::list(&missing_bucket, None)).unwrap_err().to_string();
    assert!(err.contains("s3://no-such-bucket/x"), "{err}");

    let mut bad = server.options();
    bad.get_mut("s3").unwrap().insert("secret_access_key".into(), "wrong".into());
    let denied = Storage::new(".").with_options(bad).resolve(&server.url("x/y.parquet")).unwrap();
    let err = rt().block_on(read::list(&denied, None)).unwrap_err().to_string();
    assert!(err.contains(&server.url("x/y.parquet")), "{err}");

    let missing = s3_root(server, "missing").child("nothing/here.parquet");
    let (exec, _) = executor(std::path::Path::new(&server.url("unused")), 1);
    let manifest = Manifest::parse(&demo_text(missing.url())).unwrap();
    let err = exec.run_in(&manifest, &Storage::new(".").with_options(server.options()), None).unwrap_err().to_string();
    assert!(err.contains(missing.url()), "{err}");

    let err = Storage::new(".").resolve("ftp://host/x").unwrap_err().to_string();
    assert!(err.contains("ftp://") && err.contains("s3://"), "{err}");
    let err = Storage::new(".").resolve("s3:///x").unwrap_err().to_string();
    assert!(err.contains("no bucket"), "{err}");
}
