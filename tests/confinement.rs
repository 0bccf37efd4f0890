//! What a hostile deployer or data supplier can do, and cannot: a deployed
//! pipeline has the authority of its root (pinned components, inputs inside
//! the root and checked against their hashes, outputs inside the store); a
//! local run writes under its store or beside its manifest; wasmpipe never
//! deletes what it did not write; readers refuse input that would make
//! them hold more than their limits.

use std::path::Path;

use wasmpipe_executor::{Executor, ExecutorConfig, RunError};
use wasmpipe_manifest::Manifest;
use wasmpipe_storage::Storage;
use wasmpipe_tests::*;

/// A deployment root (a local directory, as a URL) holding the passthrough
/// component and a pinned manifest whose stage reads `input` and writes
/// `output` (when given).
fn deployment(root: &Path, input: &str, output: Option<&str>) -> String {
    let url = format!("file://{}", root.display());
    let bytes = std::fs::read(component("passthrough")).unwrap();
    let component = wasmpipe_runtime::to_component(&bytes, Path::new("passthrough.wasm")).unwrap();
    let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&component));
    std::fs::create_dir_all(root.join("components")).unwrap();
    std::fs::write(root.join(format!("components/{hex}.wasm")), component).unwrap();
    std::fs::create_dir_all(root.join("deployments/evil")).unwrap();
    let output = output.map_or(String::new(), |o| format!("output = {o:?}"));
    let manifest = format!(
        "version = 1\nname = \"evil\"\n[stage.copy]\ncomponent = \"sha256:{hex}\"\ninputs = [{input:?}]\n{output}\n"
    );
    std::fs::write(root.join("deployments/evil/v1.toml"), manifest).unwrap();
    url
}

/// Run the deployed pipeline `evil` from `root` as `wasmpipe run evil
/// --from ROOT` does, with `allow` prefixes for inputs and outputs.
fn run_deployed(root: &str, allow_input: &[&str], allow_output: &[&str]) -> Result<(), RunError> {
    let mut config = ExecutorConfig::new(format!("{root}/data"));
    config.parallelism = 2;
    config.allow_input = allow_input.iter().map(|s| s.to_string()).collect();
    config.allow_output = allow_output.iter().map(|s| s.to_string()).collect();
    let exec = Executor::new(config).unwrap();
    let (_, manifest, _) = exec.deployed_manifest(root, "evil", None)?;
    exec.run_in(&manifest, &Storage::at_url(root), None).map(drop)
}

#[test]
fn a_deployed_pipeline_cannot_read_the_runners_files() {
    let root = tempfile::tempdir().unwrap();
    let url = deployment(root.path(), "file:///etc/passwd", None);
    let err = run_deployed(&url, &[], &[]).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RunError::Confined { .. }), "{text}");
    assert!(text.contains("may not read file:///etc/passwd") && text.contains("--allow-input"), "{text}");
    assert!(!root.path().join("data").exists(), "nothing was written");

    // The runner may allow a prefix it trusts the pipeline with.
    let iris = testdata().join("ml/iris.csv");
    let url = deployment(root.path(), &format!("file://{}", iris.display()), None);
    let allowed = format!("file://{}", testdata().join("ml").display());
    run_deployed(&url, &[&allowed], &[]).expect("an allowed input is read");
    let rows: usize = read_committed(&root.path().join("data/evil/copy")).iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 150);
}

#[test]
fn a_deployed_pipeline_runs_pinned_components_only() {
    let root = tempfile::tempdir().unwrap();
    let url = deployment(root.path(), "inputs/x.csv", None);
    let manifest = root.path().join("deployments/evil/v1.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let path = component("passthrough");
    let unpinned = text
        .lines()
        .map(|l| {
            if l.starts_with("component") {
                format!("component = {:?}", path.display().to_string())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&manifest, unpinned).unwrap();
    let err = run_deployed(&url, &[], &[]).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RunError::Unpinned { .. }), "{text}");
    assert!(text.contains("pinned by SHA-256"), "{text}");
}

#[test]
fn a_deployed_pipeline_writes_only_inside_its_store() {
    let root = tempfile::tempdir().unwrap();
    let victim = tempfile::tempdir().unwrap();
    std::fs::write(victim.path().join("part-00000-mine.parquet"), b"the user's file").unwrap();
    let iris = testdata().join("ml/iris.csv");
    std::fs::create_dir_all(root.path().join("inputs")).unwrap();
    std::fs::copy(&iris, root.path().join("inputs/iris.csv")).unwrap();
    for output in [format!("file://{}", victim.path().display()), "../../victim".to_string()] {
        let url = deployment(root.path(), "inputs/iris.csv", Some(&output));
        let err = run_deployed(&url, &[], &[]).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, RunError::Confined { .. } | RunError::Storage { .. }), "{output}: {text}");
        assert!(text.contains("may not write to") || text.contains("invalid location"), "{output}: {text}");
    }
    assert_eq!(std::fs::read(victim.path().join("part-00000-mine.parquet")).unwrap(), b"the user's file");
}

#[test]
fn a_replaced_deployed_input_is_caught_by_its_hash() {
    let root = tempfile::tempdir().unwrap();
    let iris = std::fs::read(testdata().join("ml/iris.csv")).unwrap();
    let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&iris));
    let dir = root.path().join(format!("inputs/{hex}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("iris.csv"), &iris).unwrap();
    let url = deployment(root.path(), &format!("inputs/{hex}/iris.csv"), None);
    run_deployed(&url, &[], &[]).expect("the deployed input as deployed");

    let mut changed = iris.clone();
    changed.extend_from_slice(b"9.9,9.9,9.9,9.9,Iris-virginica\n");
    std::fs::write(dir.join("iris.csv"), &changed).unwrap();
    let err = run_deployed(&url, &[], &[]).unwrap_err().to_string();
    assert!(err.contains(&hex) && err.contains("stored under"), "{err}");
}

/// A local manifest in `dir` whose one stage writes to `output`.
fn local_run(exec: &Executor, dir: &Path, output: &str) -> Result<(), RunError> {
    let text = format!(
        "version = 1\nname = \"local\"\n[stage.copy]\ncomponent = {}\ninputs = [{}]\noutput = {output:?}\n",
        toml_path(&component("passthrough")),
        toml_path(&testdata().join("ml/iris.csv")),
    );
    exec.run(&Manifest::parse(&text).unwrap(), dir).map(drop)
}

#[test]
fn a_local_output_outside_the_store_and_the_manifest_needs_allowing_and_foreign_data_is_never_touched() {
    let home = tempfile::tempdir().unwrap();
    let project = home.path().join("project");
    let victim = home.path().join("victim");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::create_dir_all(&victim).unwrap();
    let mine = ["part-00000-0123456789abcdef.parquet", "_model-0123456789abcdef.bin", "_report-x.json", "notes.txt"];
    for name in mine {
        std::fs::write(victim.join(name), name).unwrap();
    }
    let mut config = ExecutorConfig::new(project.join("wasmpipe-data").display().to_string());
    config.parallelism = 2;
    let exec = Executor::new(config.clone()).unwrap();
    let err = local_run(&exec, &project, "../victim").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RunError::Confined { .. }) && text.contains("--allow-output"), "{text}");

    // Allowed, the prefix still holds someone else's objects and no commit.
    config.allow_output = vec![victim.display().to_string()];
    let exec = Executor::new(config).unwrap();
    let err = local_run(&exec, &project, "../victim").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("did not write") && text.contains("4 object(s)"), "{text}");
    for name in mine {
        assert_eq!(std::fs::read_to_string(victim.join(name)).unwrap(), name, "{name} untouched");
    }
    // Beside the manifest, no flag is needed.
    local_run(&exec, &project, "out").expect("an output beside the manifest");
}

#[test]
fn clean_up_deletes_only_what_wasmpipe_wrote() {
    let project = tempfile::tempdir().unwrap();
    let (exec, _) = executor(&project.path().join("wasmpipe-data"), 2);
    local_run(&exec, project.path(), "out").unwrap();
    let out = project.path().join("out");
    let first: Vec<String> =
        commit_record(&out)["parts"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().into()).collect();
    // The user adds files to the committed output, named like wasmpipe's.
    let theirs = ["part-99999-ffffffffffffffff.parquet", "_model-ffffffffffffffff.bin", "README.md"];
    for name in theirs {
        std::fs::write(out.join(name), name).unwrap();
    }
    // A changed stage replaces the commit; its old parts go, theirs stay.
    let text = format!(
        "version = 1\nname = \"local\"\n[defaults]\nrow_group_rows = 50\n[stage.copy]\ncomponent = {}\ninputs = [{}]\noutput = \"out\"\n",
        toml_path(&component("passthrough")),
        toml_path(&testdata().join("ml/iris.csv")),
    );
    exec.run(&Manifest::parse(&text).unwrap(), project.path()).unwrap();
    for name in &first {
        assert!(!out.join(name).exists(), "{name}, replaced, is deleted");
    }
    for name in theirs {
        assert_eq!(std::fs::read_to_string(out.join(name)).unwrap(), name, "{name} untouched");
    }
    assert!(!out.join("_wasmpipe_tasks").exists(), "no working files are left");
}

/// The error of a pipeline in `dir` that copies `file` through passthrough.
fn copy_error(dir: &Path, file: &Path) -> String {
    let (exec, _) = executor(&dir.join("store"), 2);
    let text = format!(
        "version = 1\nname = \"read\"\n[stage.copy]\ncomponent = {}\ninputs = [{}]\n",
        toml_path(&component("passthrough")),
        toml_path(file)
    );
    exec.run(&Manifest::parse(&text).unwrap(), dir).unwrap_err().to_string()
}

#[test]
fn readers_refuse_files_that_would_make_them_hold_too_much() {
    let dir = tempfile::tempdir().unwrap();
    let run = |file: &Path| copy_error(dir.path(), file);

    // 200,000 columns in a 1.3 MB CSV.
    let wide = dir.path().join("wide.csv");
    let header: Vec<String> = (0..200_000).map(|i| format!("c{i}")).collect();
    std::fs::write(&wide, format!("{}\n{}\n", header.join(","), vec!["1"; 200_000].join(","))).unwrap();
    let err = run(&wide);
    assert!(err.contains("200000 columns, more than the 10000"), "{err}");

    // A record with no end.
    let long = dir.path().join("long.csv");
    std::fs::write(&long, format!("a,b\n1,{}", "x".repeat(20 << 20))).unwrap();
    let err = run(&long);
    assert!(err.contains("longer than 16 MiB"), "{err}");

    // A JSON line with no end.
    let long = dir.path().join("long.jsonl");
    std::fs::write(&long, format!("{{\"a\": \"{}", "x".repeat(20 << 20))).unwrap();
    let err = run(&long);
    assert!(err.contains("longer than 16 MiB"), "{err}");
}

#[test]
fn a_parquet_chunk_that_inflates_beyond_the_limit_is_refused_before_reading() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    // 80 Mi int8 zeros: stored as int32 (320 MiB) PLAIN, zstd: a small file.
    let file = dir.path().join("bomb.parquet");
    let values = arrow::array::Int8Array::from(vec![0i8; 80 << 20]);
    let batch =
        arrow::record_batch::RecordBatch::try_from_iter([("z", Arc::new(values) as arrow::array::ArrayRef)]).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_encoding(parquet::basic::Encoding::PLAIN)
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .set_data_page_size_limit(1 << 30)
        .set_max_row_group_row_count(Some(usize::MAX))
        .build();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&file).unwrap(), batch.schema(), Some(props))
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    drop(batch);
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size < 2 << 20, "the bomb is small: {size} bytes");

    let err = copy_error(dir.path(), &file);
    assert!(err.contains("decodes to 320 MiB, more than the 256 MiB"), "{err}");
}

/// `file` with its footer rewritten by `edit`: the data pages as written,
/// the metadata as a liar would have it.
fn rewrite_footer(
    file: &Path,
    edit: impl FnOnce(parquet::file::metadata::ParquetMetaData) -> parquet::file::metadata::ParquetMetaData,
) {
    use parquet::file::metadata::{ParquetMetaDataReader, ParquetMetaDataWriter};
    let bytes = std::fs::read(file).unwrap();
    let footer_len = u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap()) as usize;
    let data_end = bytes.len() - 8 - footer_len;
    let metadata =
        ParquetMetaDataReader::new().parse_and_finish(&std::fs::File::open(file).unwrap()).expect("a valid footer");
    let mut out = bytes[..data_end].to_vec();
    ParquetMetaDataWriter::new(&mut out, &edit(metadata)).finish().unwrap();
    std::fs::write(file, out).unwrap();
}

#[test]
fn a_parquet_footer_whose_row_counts_cannot_be_true_is_refused() {
    use parquet::file::metadata::ParquetMetaData;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("liar.parquet");
    let batch = arrow::record_batch::RecordBatch::try_from_iter([(
        "x",
        std::sync::Arc::new(arrow::array::Float64Array::from(vec![1.0, 2.0, 3.0])) as arrow::array::ArrayRef,
    )])
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&file).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    // The row group (and so the file) claims 10^15 rows; its column holds 3.
    rewrite_footer(&file, |m| {
        let groups = m
            .row_groups()
            .iter()
            .map(|g| g.clone().into_builder().set_num_rows(1_000_000_000_000_000).build().unwrap());
        ParquetMetaData::new(m.file_metadata().clone(), groups.collect())
    });
    let err = copy_error(dir.path(), &file);
    assert!(
        err.contains("liar.parquet")
            && err.contains("claims 1000000000000000 rows but its column \"x\" holds 3 values"),
        "{err}"
    );
}

#[test]
fn wide_json_objects_are_read_by_name_whatever_their_member_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wide.jsonl");
    let line = |order: &mut dyn Iterator<Item = usize>, row: usize| {
        let members: Vec<String> = order.map(|i| format!("\"c{i}\": {}", row * 100 + i)).collect();
        format!("{{{}}}", members.join(", "))
    };
    let text = [line(&mut (0..40), 0), line(&mut (0..40).rev(), 1), line(&mut (0..40).step_by(2), 2)].join("\n");
    std::fs::write(&file, text).unwrap();
    let (exec, _) = executor(&dir.path().join("store"), 2);
    let manifest = format!(
        "version = 1\nname = \"read\"\n[stage.copy]\ncomponent = {}\ninputs = [{}]\n",
        toml_path(&component("passthrough")),
        toml_path(&file)
    );
    exec.run(&Manifest::parse(&manifest).unwrap(), dir.path()).unwrap();
    let batches = read_committed(&dir.path().join("store/read/copy"));
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let value = |col: &str, row: usize| {
        let c = batch.column_by_name(col).unwrap();
        let c = c.as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
        arrow::array::Array::is_valid(c, row).then(|| c.value(row))
    };
    assert_eq!(batch.num_rows(), 3);
    for i in 0..40 {
        let name = format!("c{i}");
        assert_eq!(value(&name, 0), Some(i as i64));
        assert_eq!(value(&name, 1), Some(100 + i as i64), "reversed members, {name}");
        assert_eq!(value(&name, 2), (i % 2 == 0).then_some(200 + i as i64), "missing members are null, {name}");
    }
}
