//! The runtime on its own: loading (components and core modules), kinds,
//! the compiled-component cache, and data crossing the boundary intact.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use arrow::record_batch::RecordBatch;
use wasmpipe_runtime::{InstanceLimits, InstanceSetup, Runtime, RuntimeConfig, RuntimeError, StageKind, TaskInfo};
use wasmpipe_tests::*;

fn runtime(cache: Option<&Path>) -> Runtime {
    Runtime::new(RuntimeConfig { max_instances: 4, max_memory_bytes: 1 << 30, cache_dir: cache.map(Path::to_path_buf) })
        .expect("runtime starts")
}

fn task() -> TaskInfo {
    TaskInfo { pipeline: "t".into(), stage: "s".into(), partition: 0, partitions: 1, pass: 0 }
}

fn setup(config: &str) -> InstanceSetup {
    InstanceSetup { config_json: config.into(), label: "s[0]".into(), sink: None, seed: [0; 32] }
}

fn limits() -> InstanceLimits {
    InstanceLimits { memory_bytes: 64 << 20, host_memory_bytes: 64 << 20, cpu: std::time::Duration::from_secs(10) }
}

#[test]
fn kinds_come_from_the_exports() {
    let rt = runtime(None);
    for (name, kind) in
        [("passthrough", StageKind::Transformer), ("scaler", StageKind::Estimator), ("evaluate", StageKind::Aggregator)]
    {
        assert_eq!(rt.load_file(&component(name)).unwrap().kind(), kind, "{name}");
    }
}

#[test]
fn a_core_module_with_component_metadata_is_componentized_on_load() {
    // Build with a toolchain that emits core modules (the install script
    // guarantees one), whatever `detect` prefers on this machine.
    let toolchain = wasmpipe_toolchain::detect_core_module().expect("a core-module toolchain");
    assert!(toolchain.emits_core_module());
    let built = wasmpipe_toolchain::build(
        &repo().join("stages/passthrough"),
        &toolchain,
        wasmpipe_toolchain::Progress::OnFailure,
    )
    .expect("passthrough builds");
    let core = built.path.with_extension("").with_extension("wasm");
    let bytes = std::fs::read(&core).unwrap();
    assert_eq!(&bytes[4..8], &[1, 0, 0, 0], "{} is a core module", core.display());

    let rt = runtime(None);
    let loaded = rt.load(&bytes, &core).unwrap();
    assert_eq!(loaded.kind(), StageKind::Transformer);
    assert_eq!(loaded.hash(), built.sha256, "componentizing on load gives what `wasmpipe build` wrote");
}

#[test]
fn things_that_are_not_stages_are_rejected_with_their_name() {
    let rt = runtime(None);
    let err = rt.load(b"\0asm\x0d\x00\x01\x00", Path::new("empty.wasm")).unwrap_err();
    assert!(matches!(err, RuntimeError::NotAStage { .. }) && err.to_string().contains("empty.wasm"), "{err}");
    let err = rt.load(b"hello", Path::new("hello.wasm")).unwrap_err();
    assert!(matches!(err, RuntimeError::NotWasm { .. }), "{err}");
    // A core module without wit-bindgen metadata cannot become a stage.
    let err = rt.load(b"\0asm\x01\x00\x00\x00", Path::new("bare.wasm")).unwrap_err();
    assert!(matches!(err, RuntimeError::NotAStage { .. } | RuntimeError::Componentize { .. }), "{err}");
}

#[test]
fn compiled_components_are_cached_on_disk_and_bad_entries_are_replaced() {
    let cache = tempfile::tempdir().unwrap();
    let first = runtime(Some(cache.path())).load_file(&component("passthrough")).unwrap();
    let entries: Vec<_> = std::fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert!(entry.file_name().unwrap().to_string_lossy().starts_with(first.hash()), "keyed by content hash");
    let compiled = std::fs::read(entry).unwrap();

    // A second runtime loads from the cache.
    let second = runtime(Some(cache.path())).load_file(&component("passthrough")).unwrap();
    assert_eq!(second.hash(), first.hash());

    // A damaged entry is ignored and rewritten.
    std::fs::write(entry, b"garbage").unwrap();
    let third = runtime(Some(cache.path())).load_file(&component("passthrough")).unwrap();
    assert_eq!(third.kind(), StageKind::Transformer);
    assert_eq!(std::fs::read(entry).unwrap().len(), compiled.len());
}

#[test]
fn every_supported_type_and_null_crosses_the_boundary_intact() {
    let rt = runtime(None);
    let stage = rt.load_file(&component("passthrough")).unwrap();
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("f", Arc::new(Float64Array::from(vec![Some(1.5), None, Some(f64::NAN)]))),
        ("i", Arc::new(Int64Array::from(vec![Some(i64::MIN), Some(0), None]))),
        ("j", Arc::new(Int32Array::from(vec![None, Some(7), Some(-1)]))),
        ("b", Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)]))),
        ("s", Arc::new(StringArray::from(vec![Some("é"), None, Some("")]))),
        ("t", Arc::new(TimestampMillisecondArray::from(vec![Some(0), Some(1_700_000_000_000), None]))),
    ];
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut inst = rt.instantiate(&stage, &limits(), setup("{}")).unwrap();
    inst.open(&task(), None).unwrap();
    let out = inst.transform(batch.clone()).unwrap().expect("passthrough returns the batch");
    assert_eq!(out, batch);
    assert!(inst.close().unwrap().is_none());
}

#[test]
fn the_clean_stage_filters_through_host_handles() {
    let rt = runtime(None);
    let stage = rt.load_file(&component("clean")).unwrap();
    let batch = RecordBatch::try_from_iter([
        ("x", Arc::new(Float64Array::from(vec![Some(1.0), None, Some(5.0), Some(f64::NAN), Some(2.0)])) as ArrayRef),
        ("y", Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])) as ArrayRef),
    ])
    .unwrap();
    let config = r#"{"ranges": {"x": {"max": 4}}}"#;
    let mut inst = rt.instantiate(&stage, &limits(), setup(config)).unwrap();
    inst.open(&task(), None).unwrap();
    let out = inst.transform(batch).unwrap().unwrap();
    let y = out.column_by_name("y").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(y.values().to_vec(), vec![1, 5], "null, out-of-range and NaN rows dropped");
    inst.close().unwrap();
    let log: Vec<_> = inst.log().iter().map(|r| r.message.clone()).collect();
    assert_eq!(log, vec!["kept 2 of 5 rows; dropped 1 with nulls, 2 out of range".to_string()]);
}
