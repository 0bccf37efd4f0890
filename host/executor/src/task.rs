//! Running one stage: its tasks in parallel, the fit passes, the commit.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use wasmpipe_manifest::{ColumnType, Format as ManifestFormat, Input, Manifest, ModelSource};
use wasmpipe_runtime::{
    CallError, FitOutcome, InstanceLimits, InstanceSetup, Report, StageInstance, StageKind, TaskInfo,
};
use wasmpipe_storage::commit::{self, COMMIT_FORMAT, CommitRecord, Journal, Model, Part, REPORT_PREFIX, ReportFiles};
use wasmpipe_storage::quarantine::{self, QUARANTINE_DIR};
use wasmpipe_storage::read::{self, Chunk, Format, InputFile, Partition};
use wasmpipe_storage::write::{PartWriter, part_name};
use wasmpipe_storage::{Location, Storage, StorageError};

use crate::authority::Authority;
use crate::plan::PlannedStage;
use crate::registry::{self, ModelCard};
use crate::{Executor, RunError, StageReport, TaskFailure};

/// An identity: the SHA-256 of `parts`, each prefixed with its length so
/// that no two different lists of parts hash alike.
fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The SHA-256 of `bytes`, hex: the hash a content-addressed object (a
/// model) is stored and checked under, and that records report.
fn content_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// When a task must end, by the wall clock, and the limit that set it.
struct Deadline {
    at: Instant,
    limit_s: f64,
}

/// Everything a stage's tasks share.
struct StageRun<'a> {
    exec: &'a Executor,
    pipeline: &'a str,
    stage: &'a PlannedStage,
    columns: Option<&'a [String]>,
    /// The declared schema of text inputs.
    schema: Option<SchemaRef>,
    partitions: Vec<Partition>,
    output: Location,
    /// Hash of what determines every task's output besides its partition.
    identity: String,
}

/// What a transform task did (as recorded for reruns): its part, its
/// quarantine part, and the rows it read.
#[derive(serde::Serialize, serde::Deserialize)]
struct TransformOutcome {
    part: Option<Part>,
    #[serde(default)]
    quarantine: Option<Part>,
    rows_in: u64,
    /// The part's columns, `name: type` (records of older versions lack
    /// them).
    #[serde(default)]
    schema: Option<Vec<String>>,
}

/// The Arrow schema a stage's declared `schema` reads text inputs as.
fn declared_schema(columns: &indexmap::IndexMap<String, ColumnType>) -> SchemaRef {
    let field = |(name, t): (&String, &ColumnType)| {
        let data_type = match t {
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float32 => DataType::Float32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        };
        Field::new(name, data_type, true)
    };
    Arc::new(Schema::new(columns.iter().map(field).collect::<Vec<_>>()))
}

pub(crate) fn run_stage(
    exec: &Executor,
    storage: &Storage,
    manifest: &Manifest,
    stage: &PlannedStage,
    run_id: &str,
    done: &[StageReport],
    authority: &Authority,
) -> Result<StageReport, RunError> {
    let started = Instant::now();
    let spec = &manifest.stages[&stage.name];
    let storage_err = |source: StorageError| RunError::Storage { stage: stage.name.clone(), source };

    let output_url = match &spec.output {
        Some(o) => o.clone(),
        None => format!("{}/{}/{}", exec.config.store.trim_end_matches('/'), manifest.name, stage.name),
    };
    let output = storage.resolve(&output_url).map_err(storage_err)?;
    authority.check_output(&stage.name, &output)?;

    // Inputs, with their lineage.
    let format = spec.format.map(|f| match f {
        ManifestFormat::Parquet => Format::Parquet,
        ManifestFormat::Csv => Format::Csv,
        ManifestFormat::Jsonl => Format::Jsonl,
    });
    let mut files: Vec<InputFile> = Vec::new();
    let mut lineage = Vec::new();
    for input in &spec.inputs {
        let (location, upstream) = match input {
            Input::Stage(up) => {
                let report = done.iter().find(|r| &r.name == up).expect("stages run in dependency order");
                (storage.resolve(&report.output).map_err(storage_err)?, Some(up))
            }
            Input::Location(l) => {
                let location = storage.resolve(l).map_err(storage_err)?;
                authority.check_input(&stage.name, &location)?;
                (location, None)
            }
        };
        let listing = exec.io.block_on(read::list(&location, format)).map_err(storage_err)?;
        for file in &listing.files {
            exec.io.block_on(authority.verify_deployed_input(&file.location)).map_err(storage_err)?;
        }
        match (&listing.commit, upstream) {
            (Some(c), _) => lineage.push(format!("{}@{}", location.url(), c.identity)),
            (None, Some(up)) => {
                return Err(storage_err(StorageError::CorruptCommit {
                    url: location.url().into(),
                    reason: format!("stage {up:?} committed no output"),
                }));
            }
            (None, None) => lineage.push(location.url().to_string()),
        }
        files.extend(listing.files);
    }
    if spec.schema.is_some()
        && let Some(f) = files.iter().find(|f| f.format == Format::Parquet)
    {
        return Err(RunError::Manifest(wasmpipe_manifest::ManifestError::Invalid(format!(
            "stage {:?} declares a `schema`, which types text inputs (CSV, JSON Lines), but reads {}, a Parquet file that carries its own schema\n  hint: remove `schema`, or read the text files in a stage of their own",
            stage.name,
            f.location.url()
        ))));
    }
    let partitions = exec.io.block_on(read::partitions(&files)).map_err(storage_err)?;

    let identity = sha256_hex(&[
        stage.component.hash().as_bytes(),
        stage.config_json.as_bytes(),
        &(stage.batch_rows() as u64).to_le_bytes(),
        &(stage.row_group_rows() as u64).to_le_bytes(),
        format!("{:?} {:?}", spec.columns, spec.schema).as_bytes(),
    ]);
    let applied = match &spec.model {
        Some(source) => Some(applied_model(exec, storage, stage, source, done, &mut lineage, authority)?),
        None => None,
    };
    // What the output depends on: the stage, every partition it reads, and
    // the model it applies.
    let output_identity = {
        let mut parts: Vec<String> = vec![identity.clone()];
        parts.extend(partitions.iter().map(Partition::identity));
        parts.extend(applied.iter().map(|(_, sha)| sha.clone()));
        sha256_hex(&parts.iter().map(String::as_bytes).collect::<Vec<_>>())
    };
    let run = StageRun {
        exec,
        pipeline: &manifest.name,
        stage,
        columns: spec.columns.as_deref(),
        schema: spec.schema.as_ref().map(declared_schema),
        partitions,
        output,
        identity,
    };

    // The output as the run found it: committed by an identical run, it is
    // done; otherwise the new commit must replace exactly what was seen.
    let previous = exec.io.block_on(commit::read_versioned(&run.output)).map_err(storage_err)?;
    if let Some((record, _)) = &previous
        && record.identity == output_identity
    {
        // Finish the clean-up a run killed after its commit left undone.
        exec.io.block_on(commit::remove_unreferenced(&run.output, record)).map_err(storage_err)?;
        let report = run.already_committed(record, started).map_err(storage_err)?;
        // A model committed before the registry existed enters it now.
        register_model(exec, storage, stage, &report, record, report.model_bytes.as_deref()).map_err(storage_err)?;
        return Ok(report);
    }
    let committed = previous.as_ref().map(|(r, _)| r);
    exec.io
        .block_on(commit::check_writable(&run.output, committed, &manifest.name, &stage.name))
        .map_err(storage_err)?;
    // What the new commit will replace: named in the journal, so that
    // clean-up finds it even if this run is killed right after committing.
    let replaced: Vec<String> = previous
        .as_ref()
        .map(|(r, _)| r.objects().filter(|o| *o != commit::COMMIT_FILE).map(String::from).collect())
        .unwrap_or_default();
    let seen = previous.map(|(_, e_tag)| e_tag);

    let bytes_per_pass: u64 = run.partitions.iter().map(|p| p.bytes).sum();
    let mut report = StageReport {
        name: stage.name.clone(),
        kind: stage.component.kind(),
        component: stage.component.hash().to_string(),
        component_bytes: stage.component.size(),
        tasks: 0,
        passes: 0,
        rows_in: 0,
        tasks_skipped: 0,
        rows_out: 0,
        bytes_read: 0,
        bytes_written: 0,
        wall: Default::default(),
        output: run.output.url().to_string(),
        model: None,
        model_bytes: None,
        report: None,
        rows_quarantined: 0,
        applied_model: applied.as_ref().map(|(_, sha)| sha.clone()),
        committed_before: None,
    };
    let skipped = AtomicUsize::new(0);

    // Fit, for estimators and aggregators (unless a model is applied).
    let mut model_bytes: Option<Vec<u8>> = None;
    let mut model_id = String::new();
    let mut report_files = None;
    if let Some((bytes, sha)) = applied {
        model_bytes = Some(bytes);
        model_id = sha;
    } else if matches!(report.kind, StageKind::Estimator | StageKind::Aggregator) {
        let (bytes, passes, rows, published) = run.fit(&skipped)?;
        let sha = content_sha256(&bytes);
        let name = format!("_model-{}.bin", &sha[..16]);
        let mut planned = replaced.clone();
        planned.push(name.clone());
        planned.extend(published.iter().flat_map(|p| {
            let (json, table) = report_names(p);
            [json, table]
        }));
        planned.extend(run.transform_objects(&sha, report.kind));
        let journal = Journal { run_id: run_id.into(), objects: planned };
        exec.io.block_on(commit::write_journal(&run.output, &journal)).map_err(storage_err)?;
        if let Some(published) = published {
            let (files, written) = exec.io.block_on(write_report(&run.output, &published)).map_err(storage_err)?;
            report.bytes_written += written;
            report.report = Some(published.json);
            report_files = Some(files);
        }
        report.passes = passes;
        report.tasks += passes as usize * run.partitions.len().max(1) + passes as usize;
        report.bytes_read += bytes_per_pass * passes as u64;
        if report.kind == StageKind::Aggregator {
            report.rows_in = rows;
        }
        let at = run.output.child(&name);
        exec.io.block_on(at.put(bytes.clone())).map_err(storage_err)?;
        report.model = Some(Model { name, sha256: sha.clone(), bytes: bytes.len() as u64, passes });
        model_bytes = Some(bytes);
        model_id = sha;
    }

    // Transform, for transformers and estimators.
    let mut parts = Vec::new();
    let mut quarantined = Vec::new();
    if matches!(report.kind, StageKind::Transformer | StageKind::Estimator) {
        if model_bytes.is_none() || report.applied_model.is_some() {
            // No fit wrote a journal: this is the stage's first write.
            let mut planned = replaced;
            planned.extend(run.transform_objects(&model_id, report.kind));
            let journal = Journal { run_id: run_id.into(), objects: planned };
            exec.io.block_on(commit::write_journal(&run.output, &journal)).map_err(storage_err)?;
        }
        let outcomes =
            run.parallel("transform", |i| run.transform_task(i, model_bytes.as_deref(), &model_id, &skipped))?;
        report.tasks += run.partitions.len();
        report.bytes_read += bytes_per_pass;
        run.check_one_schema(&outcomes)?;
        for o in outcomes {
            report.rows_in += o.rows_in;
            parts.extend(o.part);
            quarantined.extend(o.quarantine);
        }
    }

    report.rows_out = parts.iter().map(|p| p.rows).sum();
    report.rows_quarantined = quarantined.iter().map(|p| p.rows).sum();
    report.bytes_written +=
        parts.iter().chain(&quarantined).map(|p| p.bytes).sum::<u64>() + report.model.as_ref().map_or(0, |m| m.bytes);
    let record = CommitRecord {
        format: COMMIT_FORMAT.into(),
        pipeline: manifest.name.clone(),
        stage: stage.name.clone(),
        run_id: run_id.into(),
        identity: output_identity,
        component: stage.component.hash().into(),
        config: content_sha256(stage.config_json.as_bytes()),
        inputs: lineage,
        rows: report.rows_out,
        parts,
        model: report.model.clone(),
        applied_model: report.applied_model.clone(),
        quarantine: quarantined,
        report: report_files,
        committed_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };
    // Into the registry before the commit, so a committed model is always
    // there.
    register_model(exec, storage, stage, &report, &record, model_bytes.as_deref()).map_err(storage_err)?;
    exec.io.block_on(commit::write(&run.output, &record, seen)).map_err(storage_err)?;
    report.tasks_skipped = skipped.into_inner();
    report.model_bytes = model_bytes.map(Arc::from);
    report.wall = started.elapsed();
    Ok(report)
}

/// Put the model that `record` commits in the registry under the store,
/// with its lineage card, when an estimator fitted it (an estimator that
/// applies a model commits none; an aggregator's is a result).
fn register_model(
    exec: &Executor,
    storage: &Storage,
    stage: &PlannedStage,
    report: &StageReport,
    record: &CommitRecord,
    bytes: Option<&[u8]>,
) -> Result<(), StorageError> {
    let (StageKind::Estimator, Some(model), Some(bytes)) = (report.kind, &record.model, bytes) else {
        return Ok(());
    };
    let card = ModelCard::new(record, model, &report.output, &stage.config_json, report.report.as_deref());
    let root = registry::root(storage, &exec.config.store)?;
    if exec.io.block_on(registry::register(&root, bytes, &card))? {
        tracing::debug!(stage = %report.name, "registered model {}", model.sha256);
    }
    Ok(())
}

/// The model (bytes and hash) that `source` names, for a stage that
/// applies a model fitted elsewhere instead of fitting one; its lineage
/// entry is added to `lineage`.
fn applied_model(
    exec: &Executor,
    storage: &Storage,
    stage: &PlannedStage,
    source: &ModelSource,
    done: &[StageReport],
    lineage: &mut Vec<String>,
    authority: &Authority,
) -> Result<(Vec<u8>, String), RunError> {
    let storage_err = |source: StorageError| RunError::Storage { stage: stage.name.clone(), source };
    let model_err = |reason: String| RunError::Model { stage: stage.name.clone(), reason };
    if stage.component.kind() != StageKind::Estimator {
        return Err(model_err(format!(
            "`model` applies a fitted model with the stage's transform, so the component must be an estimator; this one is a {}",
            stage.component.kind()
        )));
    }
    let store = exec.config.store.trim_end_matches('/');
    let location = match source {
        ModelSource::Registry(sha) => return registry_model(exec, storage, stage, sha, lineage),
        ModelSource::Stage(up) => {
            let report = done.iter().find(|r| &r.name == up).expect("stages run in dependency order");
            storage.resolve(&report.output).map_err(storage_err)?
        }
        ModelSource::Pipeline { pipeline, stage: fitted } => {
            storage.resolve(&format!("{store}/{pipeline}/{fitted}")).map_err(storage_err)?
        }
        ModelSource::Location(l) => {
            let location = storage.resolve(l).map_err(storage_err)?;
            authority.check_input(&stage.name, &location)?;
            location
        }
    };
    let record = exec.io.block_on(commit::read(&location)).map_err(storage_err)?;
    let Some(model) = record.and_then(|r| r.model) else {
        return Err(model_err(match source {
            ModelSource::Pipeline { pipeline, stage: fitted } => format!(
                "`model = \"{source}\"`: {} holds no committed model\n  hint: run pipeline {pipeline:?} with this store first (its estimator stage {fitted:?} commits its model there); `pipeline:` reads a stage's default output <store>/{pipeline}/{fitted}, so for a stage with its own `output`, name that location instead",
                location.url()
            ),
            _ => format!(
                "{} holds no committed model; `model` must name the output of an estimator stage that has run",
                location.url()
            ),
        }));
    };
    let bytes = exec.io.block_on(location.child(&model.name).get_verified(&model.sha256)).map_err(storage_err)?;
    lineage.push(format!("model {}@{}", location.url(), model.sha256));
    Ok((bytes.to_vec(), model.sha256))
}

/// The registry's model `sha` (`model = "sha256:…"`), checked against its
/// hash.
fn registry_model(
    exec: &Executor,
    storage: &Storage,
    stage: &PlannedStage,
    sha: &str,
    lineage: &mut Vec<String>,
) -> Result<(Vec<u8>, String), RunError> {
    let storage_err = |source: StorageError| RunError::Storage { stage: stage.name.clone(), source };
    let model_err = |reason: String| RunError::Model { stage: stage.name.clone(), reason };
    let root = registry::root(storage, &exec.config.store).map_err(storage_err)?;
    let at = registry::model_location(&root, sha);
    match exec.io.block_on(registry::fetch(&root, sha)) {
        Ok(Some(bytes)) => {
            lineage.push(format!("model sha256:{sha}"));
            Ok((bytes.to_vec(), sha.to_string()))
        }
        Ok(None) => Err(model_err(format!(
            "no model sha256:{sha} in the model registry: {} does not exist\n  hint: `wasmpipe models --store {}` lists the models there; a model enters the registry when an estimator stage fits it with this store",
            at.url(),
            exec.config.store
        ))),
        Err(StorageError::HashMismatch { actual, .. }) => Err(model_err(format!(
            "{} hashes to {actual}, not {sha}: the registry's copy was changed or damaged\n  hint: delete {} and rerun the pipeline that fitted the model",
            at.url(),
            root.child(sha).url()
        ))),
        Err(e) => Err(storage_err(e)),
    }
}

/// The names of a published report's JSON and Parquet files, by the hash
/// of its JSON.
fn report_names(published: &Report) -> (String, String) {
    let stem = format!("{REPORT_PREFIX}{}", &content_sha256(published.json.as_bytes())[..16]);
    (format!("{stem}.json"), format!("{stem}.parquet"))
}

/// Write a stage's published report beside its output, named by the hash
/// of its JSON; returns the files and the bytes written.
async fn write_report(output: &Location, published: &Report) -> Result<(ReportFiles, u64), StorageError> {
    let (json, table_name) = report_names(published);
    output.child(&json).put(published.json.clone().into_bytes()).await?;
    let mut written = published.json.len() as u64;
    let mut table = None;
    if let Some(rows) = &published.table {
        let name = table_name;
        let mut writer = PartWriter::new(output, name.clone(), String::new(), rows.num_rows().max(1));
        writer.write(rows).await?;
        if let Some(part) = writer.finish().await? {
            written += part.bytes;
            table = Some(name);
        }
    }
    Ok((ReportFiles { json, table }, written))
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

impl StageRun<'_> {
    /// The objects the transform tasks will write (their parts and
    /// quarantine parts), applying the model `model_id`.
    fn transform_objects(&self, model_id: &str, kind: StageKind) -> Vec<String> {
        if !matches!(kind, StageKind::Transformer | StageKind::Estimator) {
            return Vec::new();
        }
        (0..self.partitions.len())
            .flat_map(|i| {
                let name = part_name(i, &self.task_id(i, model_id));
                [format!("{QUARANTINE_DIR}/{name}"), name]
            })
            .collect()
    }

    /// Fail when two partitions wrote parts of different schemas: readers
    /// see an output as one table.
    fn check_one_schema(&self, outcomes: &[TransformOutcome]) -> Result<(), RunError> {
        let mut written = outcomes.iter().enumerate().filter_map(|(i, o)| Some((i, o.schema.as_ref()?)));
        let Some((first, expected)) = written.next() else {
            return Ok(());
        };
        let Some((other, found)) = written.find(|(_, s)| s != &expected) else {
            return Ok(());
        };
        let only = |a: &[String], b: &[String]| {
            let differing: Vec<&str> = a.iter().filter(|f| !b.contains(f)).map(String::as_str).collect();
            if differing.is_empty() { "the same columns in another order".to_string() } else { differing.join(", ") }
        };
        Err(RunError::SchemaMismatch {
            stage: self.stage.name.clone(),
            output: self.output.url().into(),
            first,
            first_fields: only(expected, found),
            other,
            other_fields: only(found, expected),
        })
    }

    fn task_id(&self, index: usize, salt: &str) -> String {
        let part = self.partitions.get(index).map(Partition::identity).unwrap_or_default();
        sha256_hex(&[self.identity.as_bytes(), part.as_bytes(), salt.as_bytes()])
    }

    fn describe(&self, phase: &str, index: usize) -> String {
        let n = self.partitions.len();
        match self.partitions.get(index) {
            Some(p) => {
                let what = match p.row_group {
                    Some(rg) => format!("{} row group {rg}", p.file.location.url()),
                    None => p.file.location.url().to_string(),
                };
                format!("{phase} partition {index} of {n} ({what})")
            }
            None => format!("{phase} (no input partitions)"),
        }
    }

    /// An instance for the task `task_id`: its random numbers are seeded
    /// from the task's identity, so every attempt writes the same bytes.
    fn instantiate(&self, label: String, task_id: &str) -> Result<StageInstance, CallError> {
        let limits = InstanceLimits {
            memory_bytes: self.stage.memory_bytes(),
            host_memory_bytes: self.stage.host_memory_bytes(),
            cpu: self.stage.cpu(),
        };
        let setup = InstanceSetup {
            config_json: self.stage.config_json.clone(),
            label,
            sink: self.exec.config.sink.clone(),
            seed: Sha256::digest(task_id.as_bytes()).into(),
        };
        self.exec.runtime.instantiate(&self.stage.component, &limits, setup)
    }

    /// The wall-clock backstop of a task that starts now.
    fn wall_deadline(&self) -> Deadline {
        Deadline { at: Instant::now() + self.stage.wall(), limit_s: self.stage.wall().as_secs_f64() }
    }

    /// Drive `io` to its end on the I/O runtime, unless the task's wall
    /// clock runs out first.
    fn block<T, E: Into<TaskFailure>>(
        &self,
        deadline: &Deadline,
        io: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, TaskFailure> {
        let left = deadline.at.saturating_duration_since(Instant::now());
        // (The timer is made inside the runtime, whose clock it needs.)
        match self.exec.io.block_on(async { tokio::time::timeout(left, io).await }) {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(TaskFailure::WallClock { limit_s: deadline.limit_s }),
        }
    }

    fn task_info(&self, index: usize, pass: u32) -> TaskInfo {
        TaskInfo {
            pipeline: self.pipeline.to_string(),
            stage: self.stage.name.clone(),
            partition: index as u32,
            partitions: self.partitions.len() as u32,
            pass,
        }
    }

    /// Run `task` for every partition (at least one task, for empty inputs
    /// of fit phases), `parallelism` at a time. After the first failure no
    /// new task starts; the error names the first failed partition.
    fn parallel<T: Send>(
        &self,
        phase: &str,
        task: impl Fn(usize) -> Result<T, TaskFailure> + Sync,
    ) -> Result<Vec<T>, RunError> {
        self.parallel_n(self.partitions.len(), |i| self.describe(phase, i), task)
    }

    /// Run `task` for `0..n`; a failure of task `i` is described as
    /// `describe(i)`.
    fn parallel_n<T: Send>(
        &self,
        n: usize,
        describe: impl Fn(usize) -> String,
        task: impl Fn(usize) -> Result<T, TaskFailure> + Sync,
    ) -> Result<Vec<T>, RunError> {
        let failed = AtomicBool::new(false);
        let run_one = |i: usize| -> Option<Result<T, TaskFailure>> {
            if failed.load(Ordering::Relaxed) {
                return None;
            }
            let result = catch_unwind(AssertUnwindSafe(|| task(i)))
                .unwrap_or_else(|p| Err(TaskFailure::Internal(panic_message(p))));
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            Some(result)
        };
        let limit = self.stage.settings.parallelism.map_or(usize::MAX, |p| p as usize);
        let collect = || (0..n).into_par_iter().with_max_len(1).map(run_one).collect::<Vec<_>>();
        let results = if limit < self.exec.config.parallelism {
            rayon::ThreadPoolBuilder::new().num_threads(limit).build().expect("task pool").install(collect)
        } else {
            self.exec.pool.install(collect)
        };
        let mut out = Vec::with_capacity(n);
        let mut first: Option<(usize, TaskFailure)> = None;
        let mut others = 0;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Some(Ok(v)) => out.push(v),
                Some(Err(e)) if first.is_none() => first = Some((i, e)),
                Some(Err(_)) => others += 1,
                None => {}
            }
        }
        match first {
            None => Ok(out),
            Some((i, cause)) => Err(RunError::Task {
                stage: self.stage.name.clone(),
                task: describe(i),
                cause: Box::new(cause),
                others,
            }),
        }
    }

    /// Stream partition `index` through `each`: rows, and text records
    /// that do not parse (as quarantine rows); returns the rows read, both
    /// kinds. I/O is driven on the I/O runtime one batch at a time; `each`
    /// (guest code) runs outside any async context, since WASI's
    /// synchronous host calls block on their own.
    fn each_batch(
        &self,
        index: usize,
        deadline: &Deadline,
        mut each: impl FnMut(Chunk) -> Result<(), TaskFailure>,
    ) -> Result<u64, TaskFailure> {
        let Some(part) = self.partitions.get(index) else {
            return Ok(0);
        };
        let mut stream =
            self.block(deadline, read::open(part, self.columns, self.stage.batch_rows(), self.schema.clone()))?;
        let mut rows = 0;
        while let Some(chunk) = self.block(deadline, async { Ok::<_, StorageError>(stream.next().await) })? {
            let chunk = chunk?;
            rows += match &chunk {
                Chunk::Rows(b) | Chunk::Quarantined(b) => b.num_rows() as u64,
            };
            each(chunk)?;
        }
        Ok(rows)
    }

    /// Where partition `index` was read from, as quarantine rows name it.
    fn source(&self, index: usize) -> String {
        self.partitions.get(index).map_or_else(String::new, |p| match p.row_group {
            Some(rg) => format!("{}#rg{rg}", p.file.location.url()),
            None => p.file.location.url().to_string(),
        })
    }

    fn transform_task(
        &self,
        index: usize,
        model: Option<&[u8]>,
        model_id: &str,
        skipped: &AtomicUsize,
    ) -> Result<TransformOutcome, TaskFailure> {
        let task_id = self.task_id(index, model_id);
        if let Some(done) = self.completed_transform(&task_id)? {
            skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(done);
        }
        let deadline = self.wall_deadline();
        let mut inst = self.instantiate(format!("{}[{index}]", self.stage.name), &task_id)?;
        inst.open(&self.task_info(index, 0), model)?;
        let name = part_name(index, &task_id);
        let row_group_rows = self.stage.row_group_rows();
        let mut writer = PartWriter::new(&self.output, name.clone(), task_id.clone(), row_group_rows);
        let mut rejected =
            PartWriter::new(&self.output, format!("{QUARANTINE_DIR}/{name}"), task_id.clone(), row_group_rows);
        let source = self.source(index);
        // Rows the stage set aside during its last call: rendering and
        // writing them is work done for the stage, charged to its time.
        let set_aside = |inst: &mut StageInstance, rejected: &mut PartWriter| -> Result<(), TaskFailure> {
            for q in inst.take_quarantined() {
                let started = Instant::now();
                let rows = quarantine::of_rows(&source, &q.rows, &q.reasons)
                    .map_err(|e| TaskFailure::Internal(format!("rendering quarantined rows: {e}")))?;
                self.block(&deadline, rejected.write(&rows))?;
                inst.charge(started.elapsed())?;
            }
            Ok(())
        };
        let rows_in = self.each_batch(index, &deadline, |chunk| {
            match chunk {
                Chunk::Rows(batch) => {
                    let out = inst.transform(batch)?;
                    set_aside(&mut inst, &mut rejected)?;
                    if let Some(out) = out {
                        self.block(&deadline, writer.write(&out))?;
                    }
                }
                Chunk::Quarantined(rows) => self.block(&deadline, rejected.write(&rows))?,
            }
            Ok(())
        })?;
        let out = inst.close()?;
        set_aside(&mut inst, &mut rejected)?;
        if let Some(out) = out {
            self.block(&deadline, writer.write(&out))?;
        }
        let schema =
            writer.schema().map(|s| s.fields().iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect());
        let outcome = TransformOutcome {
            schema,
            part: self.block(&deadline, writer.finish())?,
            quarantine: self.block(&deadline, rejected.finish())?,
            rows_in,
        };
        let record = serde_json::to_vec(&outcome).expect("serializes");
        self.block(&deadline, commit::write_task(&self.output, &task_id, record))?;
        Ok(outcome)
    }

    /// The outcome of a transform task an earlier run completed, if its
    /// record and its part are both still there.
    fn completed_transform(&self, task_id: &str) -> Result<Option<TransformOutcome>, TaskFailure> {
        let io = &self.exec.io;
        let Some(bytes) = io.block_on(commit::read_task(&self.output, task_id))? else {
            return Ok(None);
        };
        let Ok(record) = serde_json::from_slice::<TransformOutcome>(&bytes) else {
            return Ok(None);
        };
        for part in record.part.iter().chain(&record.quarantine) {
            let at = self.output.child(&part.name);
            match io.block_on(at.store().head(at.path())) {
                Ok(meta) if meta.size == part.bytes => {}
                _ => return Ok(None),
            }
        }
        Ok(Some(record))
    }

    /// The report of a stage an identical earlier run committed.
    fn already_committed(&self, record: &CommitRecord, started: Instant) -> Result<StageReport, StorageError> {
        let io = &self.exec.io;
        let model_bytes = match &record.model {
            Some(m) => Some(Arc::from(io.block_on(self.output.child(&m.name).get_verified(&m.sha256))?.to_vec())),
            None => None,
        };
        let report = match &record.report {
            Some(files) => {
                let at = self.output.child(&files.json);
                let bytes =
                    io.block_on(at.get_opt())?.ok_or_else(|| StorageError::NotFound { url: at.url().into() })?.0;
                Some(String::from_utf8_lossy(&bytes).into_owned())
            }
            None => None,
        };
        Ok(StageReport {
            name: self.stage.name.clone(),
            kind: self.stage.component.kind(),
            component: self.stage.component.hash().to_string(),
            component_bytes: self.stage.component.size(),
            tasks: 0,
            tasks_skipped: 0,
            passes: record.model.as_ref().map_or(0, |m| m.passes),
            rows_in: 0,
            rows_out: record.rows,
            bytes_read: 0,
            bytes_written: 0,
            wall: started.elapsed(),
            output: self.output.url().to_string(),
            model: record.model.clone(),
            model_bytes,
            report,
            rows_quarantined: record.quarantine.iter().map(|p| p.rows).sum(),
            // (Records of older versions name it only in their lineage:
            // `model sha256:HEX` or `model URL@HEX`.)
            applied_model: record.applied_model.clone().or_else(|| {
                let entry = record.inputs.iter().find_map(|i| i.strip_prefix("model "))?;
                entry.rsplit(['@', ':']).next().map(str::to_string)
            }),
            committed_before: Some(record.run_id.clone()),
        })
    }

    /// Fold partition `index` into a fit state for `pass`; a state an
    /// earlier run recorded for the same pass and carry is reused.
    fn fit_task(
        &self,
        index: usize,
        pass: u32,
        carry: Option<&[u8]>,
        skipped: &AtomicUsize,
    ) -> Result<(Vec<u8>, u64), TaskFailure> {
        let carry_id = sha256_hex(&[carry.unwrap_or_default()]);
        let task_id = self.task_id(index, &format!("fit pass {pass} carry {carry_id}"));
        let io = &self.exec.io;
        if let Some(bytes) = io.block_on(commit::read_task(&self.output, &task_id))?
            && bytes.len() >= 8
        {
            skipped.fetch_add(1, Ordering::Relaxed);
            let rows = u64::from_le_bytes(bytes[..8].try_into().expect("eight bytes"));
            return Ok((bytes[8..].to_vec(), rows));
        }
        let deadline = self.wall_deadline();
        let mut inst = self.instantiate(format!("{}[fit {index}]", self.stage.name), &task_id)?;
        inst.fit_open(&self.task_info(index, pass), carry)?;
        let rows = self.each_batch(index, &deadline, |chunk| match chunk {
            Chunk::Rows(batch) => Ok(inst.fit_batch(batch)?),
            // An estimator's transform tasks quarantine these; an aggregator
            // has none, and must not lose them.
            Chunk::Quarantined(rows) if self.stage.component.kind() == StageKind::Aggregator => {
                Err(TaskFailure::Storage(StorageError::Text {
                    url: self.source(index),
                    reason: format!(
                        "{} records do not parse, and an aggregator writes no quarantine\n  hint: read the file with a transformer stage (e.g. passthrough) and aggregate its output",
                        rows.num_rows()
                    ),
                }))
            }
            Chunk::Quarantined(_) => Ok(()),
        })?;
        let state = inst.fit_close()?;
        let mut record = rows.to_le_bytes().to_vec();
        record.extend_from_slice(&state);
        self.block(&deadline, commit::write_task(&self.output, &task_id, record))?;
        Ok((state, rows))
    }

    /// All passes of the fit; returns the finished bytes, the passes, the
    /// rows of the last pass, and the report the stage published.
    fn fit(&self, skipped: &AtomicUsize) -> Result<(Vec<u8>, u32, u64, Option<Report>), RunError> {
        let mut carry: Option<Vec<u8>> = None;
        for pass in 0..self.stage.max_passes() {
            let tasks = self.partitions.len().max(1);
            let phase = format!("fit pass {pass},");
            let describe = |i| self.describe(&phase, i);
            let states = self.parallel_n(tasks, describe, |i| self.fit_task(i, pass, carry.as_deref(), skipped))?;
            let rows = states.iter().map(|(_, r)| r).sum();
            let describe = |_| format!("merge and finalize of fit pass {pass}");
            let merged = self.parallel_n(1, describe, |_| {
                let merge_id = self.task_id(usize::MAX, &format!("merge pass {pass}"));
                let mut inst = self.instantiate(format!("{}[merge]", self.stage.name), &merge_id)?;
                let mut states = states.iter().map(|(s, _)| s);
                let first = states.next().expect("at least one fit task").clone();
                let state = states.try_fold(first, |acc, s| inst.merge(&acc, s))?;
                let outcome = inst.finalize(&state, pass)?;
                Ok((outcome, inst.take_report()))
            })?;
            match merged.into_iter().next().expect("one merge task") {
                (FitOutcome::Done(bytes), report) => return Ok((bytes, pass + 1, rows, report)),
                (FitOutcome::NextPass(next), _) => carry = Some(next),
            }
        }
        Err(RunError::TooManyPasses { stage: self.stage.name.clone(), passes: self.stage.max_passes() })
    }
}
