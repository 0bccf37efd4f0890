//! Committing a stage: from the records its tasks left, the commit record
//! that makes its output visible (see `wasmpipe_storage::commit`).

use std::sync::Arc;

use wasmpipe_runtime::StageKind;
use wasmpipe_storage::StorageError;
use wasmpipe_storage::commit::{self, COMMIT_FORMAT, CommitRecord, Journal, Model, Seen, TaskRecord};

use crate::stage::{PreparedStage, content_sha256};
use crate::task::{self, transform_id};
use crate::{RunError, TaskFailure};
use wasmpipe_storage::registry::{self, ModelCard};

/// What a commit made visible.
pub(crate) struct Committed {
    pub record: CommitRecord,
    /// The model's bytes, for fit stages.
    pub model_bytes: Option<Arc<[u8]>>,
    /// The report the stage published, as JSON.
    pub report: Option<String>,
    /// Rows the last fit pass folded (an aggregator's rows in); 0 for a
    /// commit read back.
    pub fit_rows: u64,
}

fn not_ready(stage: &PreparedStage, what: String) -> RunError {
    RunError::Task {
        stage: stage.stage.name.clone(),
        task: "commit".into(),
        cause: Box::new(TaskFailure::NotReady(what)),
        others: 0,
    }
}

/// The commit of `stage`'s output that a run of this plan made (the same
/// output identity), with its files; nothing is written.
pub(crate) fn identical(stage: &PreparedStage) -> Result<Option<Committed>, StorageError> {
    match stage.exec.io.block_on(commit::read(&stage.output))? {
        Some(record) if record.identity == stage.output_identity => {
            let (model_bytes, report) = committed_files(stage, &record)?;
            Ok(Some(Committed { record, model_bytes, report, fit_rows: 0 }))
        }
        _ => Ok(None),
    }
}

/// Commit `stage`: every task of its final pass must have left its record.
/// `seen` is the version of the output's commit record the run started
/// from (the commit is conditional on it where the store allows); `None`
/// takes the record there now.
pub(crate) fn commit_stage(stage: &PreparedStage, run_id: &str, seen: Option<Seen>) -> Result<Committed, RunError> {
    let io = &stage.exec.io;
    let storage_err = |source: StorageError| RunError::Storage { stage: stage.stage.name.clone(), source };
    // An identical run committed it (its clean-up took the task records):
    // that commit is this one's. Committing twice is harmless.
    if let Some(committed) = identical(stage).map_err(storage_err)? {
        // Finish the clean-up, in case that run died before it.
        io.block_on(commit::remove_unreferenced(&stage.output, &committed.record)).map_err(storage_err)?;
        return Ok(committed);
    }
    let fits = stage.fits();
    let (mut model, mut report_files, mut report, mut fit_rows) = (None, None, None, 0);
    if fits {
        match task::fit_result(stage).map_err(storage_err)? {
            Some(TaskRecord::Merge { model: Some(m), report: files, report_json, rows, .. }) => {
                model = Some(m);
                report_files = files;
                report = report_json;
                fit_rows = rows;
            }
            _ => return Err(not_ready(stage, "its fit has not finished".into())),
        }
    }
    let model_id =
        stage.applied.as_ref().map(|m| m.sha256.as_str()).or(model.as_ref().map(|m: &Model| m.sha256.as_str()));
    let mut parts = Vec::new();
    let mut quarantined = Vec::new();
    let mut schemas = Vec::new();
    if stage.transforms() {
        for index in 0..stage.partitions.len() {
            let task_id = transform_id(stage, index, model_id.unwrap_or_default());
            let Some(TaskRecord::Transform { part, quarantine, schema, .. }) =
                task::completed_transform(stage, &task_id).map_err(storage_err)?
            else {
                return Err(not_ready(
                    stage,
                    format!("{} has not run, or its part is gone", stage.describe("transform task", index)),
                ));
            };
            parts.extend(part);
            quarantined.extend(quarantine);
            schemas.push(schema);
        }
    }
    check_one_schema(stage, &schemas)?;
    let model_bytes = match &model {
        Some(m) => Some(Arc::from(
            io.block_on(stage.output.child(&m.name).get_verified(&m.sha256)).map_err(storage_err)?.to_vec(),
        )),
        None => None,
    };

    let previous = io.block_on(commit::read_versioned(&stage.output)).map_err(storage_err)?;
    let seen = seen.unwrap_or_else(|| previous.as_ref().map(|(_, e_tag)| e_tag.clone()));
    // What the commit replaces: named in a journal first, so that clean-up
    // finds it even if this process is killed right after committing.
    if let Some((replaced, _)) = &previous {
        let objects = replaced.objects().filter(|o| *o != commit::COMMIT_FILE).map(String::from).collect();
        let journal = Journal { run_id: format!("commit-{}", stage.output_identity), objects };
        io.block_on(commit::write_journal(&stage.output, &journal)).map_err(storage_err)?;
    }
    let record = CommitRecord {
        format: COMMIT_FORMAT.into(),
        pipeline: stage.plan.pipeline.clone(),
        stage: stage.stage.name.clone(),
        run_id: run_id.into(),
        identity: stage.output_identity.clone(),
        component: stage.component.hash().into(),
        config: content_sha256(stage.config.as_bytes()),
        selected: stage.selected.clone(),
        inputs: stage.lineage.clone(),
        rows: parts.iter().map(|p| p.rows).sum(),
        parts,
        model,
        applied_model: stage.applied.as_ref().map(|m| m.sha256.clone()),
        quarantine: quarantined,
        report: report_files,
        committed_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };
    // Into the registry before the commit, so a committed model is always
    // there.
    register_model(stage, &record, model_bytes.as_deref(), report.as_deref()).map_err(storage_err)?;
    io.block_on(commit::write(&stage.output, &record, seen)).map_err(storage_err)?;
    Ok(Committed { record, model_bytes, report, fit_rows })
}

/// Put the model that `record` commits in the registry under the store,
/// with its lineage card, when an estimator fitted it (an estimator that
/// applies a model commits none; an aggregator's is a result).
pub(crate) fn register_model(
    stage: &PreparedStage,
    record: &CommitRecord,
    bytes: Option<&[u8]>,
    report: Option<&str>,
) -> Result<(), StorageError> {
    let (StageKind::Estimator, Some(model), Some(bytes)) = (stage.stage.kind, &record.model, bytes) else {
        return Ok(());
    };
    let card = ModelCard::new(record, model, stage.output.url(), &stage.config, report);
    let root = registry::root(stage.storage, &stage.exec.config.store)?;
    if stage.exec.io.block_on(registry::register(&root, bytes, &card))? {
        tracing::debug!(stage = %stage.stage.name, "registered model {}", model.sha256);
    }
    Ok(())
}

/// Fail when two partitions wrote parts of different schemas: readers
/// see an output as one table.
fn check_one_schema(stage: &PreparedStage, schemas: &[Option<Vec<String>>]) -> Result<(), RunError> {
    let mut written = schemas.iter().enumerate().filter_map(|(i, s)| Some((i, s.as_ref()?)));
    let Some((first, expected)) = written.next() else {
        return Ok(());
    };
    let Some((other, found)) = written.find(|(_, s)| s != &expected) else {
        return Ok(());
    };
    let only = |a: &[String], b: &[String]| -> Vec<String> { a.iter().filter(|f| !b.contains(f)).cloned().collect() };
    let (first_only, other_only) = (only(expected, found), only(found, expected));
    let say = |mine: &[String], them: usize| match (mine.is_empty(), first_only.is_empty() && other_only.is_empty()) {
        (_, true) => "the same columns in another order".to_string(),
        (true, false) => format!("no column partition {them} lacks"),
        (false, false) => mine.join(", "),
    };
    Err(RunError::SchemaMismatch {
        stage: stage.stage.name.clone(),
        output: stage.output.url().into(),
        first,
        first_fields: say(&first_only, other),
        other,
        other_fields: say(&other_only, first),
    })
}

/// A committed model's bytes, and the committed report's JSON.
pub(crate) type CommittedFiles = (Option<Arc<[u8]>>, Option<String>);

/// The model bytes and report of a stage an identical earlier run
/// committed.
pub(crate) fn committed_files(stage: &PreparedStage, record: &CommitRecord) -> Result<CommittedFiles, StorageError> {
    let io = &stage.exec.io;
    let model_bytes = match &record.model {
        Some(m) => Some(Arc::from(io.block_on(stage.output.child(&m.name).get_verified(&m.sha256))?.to_vec())),
        None => None,
    };
    let report = match &record.report {
        Some(files) => {
            let at = stage.output.child(&files.json);
            let bytes = io.block_on(at.get_opt())?.ok_or_else(|| StorageError::NotFound { url: at.url().into() })?.0;
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        None => None,
    };
    Ok((model_bytes, report))
}
