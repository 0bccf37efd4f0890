//! Recording evaluations in the model registry (`wasmpipe_storage::registry`),
//! and reading it for the CLI.

use wasmpipe_runtime::StageKind;
use wasmpipe_storage::registry::{self, Evaluation, ModelCard};
use wasmpipe_storage::{Location, StorageError};

use crate::plan::LockedPipeline;
use crate::{Executor, RunError, StageReport};

/// Record, for each model whose predictions evaluation stage `report`
/// scored, that stage's report beside the model in the registry. The
/// models are the nearest upstream of the stage: walking up its inputs,
/// the first stage on each path that fitted (estimators) or applied a
/// model. A stage that is not an aggregator with a report records nothing.
pub(crate) fn record_evaluation(
    exec: &Executor,
    storage: &wasmpipe_storage::Storage,
    plan: &LockedPipeline,
    run_id: &str,
    done: &[StageReport],
    report: &StageReport,
) -> Result<(), RunError> {
    let (StageKind::Aggregator, Some(json)) = (report.kind, &report.report) else {
        return Ok(());
    };
    let mut models: Vec<(String, String)> = Vec::new();
    let mut todo: Vec<&str> = plan.upstream(plan.stage(&report.name)?).collect();
    let mut seen: Vec<&str> = Vec::new();
    while let Some(name) = todo.pop() {
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        let Some(up) = done.iter().find(|r| r.name == name) else { continue };
        let fitted = up.model.as_ref().filter(|_| up.kind == StageKind::Estimator).map(|m| m.sha256.clone());
        match fitted.or_else(|| up.applied_model.clone()) {
            Some(sha) => models.push((sha, up.name.clone())),
            None => todo.extend(plan.upstream(plan.stage(name)?)),
        }
    }
    let root = registry::root(storage, &exec.config.store).map_err(registry_err)?;
    let report_json: serde_json::Value = serde_json::from_str(json).unwrap_or(serde_json::Value::Null);
    for (sha, predictions) in models {
        let evaluation = Evaluation {
            model: sha.clone(),
            pipeline: plan.pipeline.clone(),
            stage: report.name.clone(),
            predictions,
            run_id: report.committed_before.clone().unwrap_or_else(|| run_id.to_string()),
            output: report.output.clone(),
            report: report_json.clone(),
        };
        exec.io.block_on(registry::record_evaluation(&root, &evaluation)).map_err(registry_err)?;
    }
    Ok(())
}

fn registry_err(source: StorageError) -> RunError {
    RunError::Registry { source: Box::new(source) }
}

impl Executor {
    /// The registry under this executor's store.
    fn registry(&self) -> Result<Location, RunError> {
        registry::root(&wasmpipe_storage::Storage::new("."), &self.config.store).map_err(registry_err)
    }

    /// The models in the registry under this executor's store, newest
    /// first.
    pub fn models(&self) -> Result<Vec<ModelCard>, RunError> {
        let root = self.registry()?;
        self.io.block_on(registry::list(&root)).map_err(registry_err)
    }

    /// The evaluations recorded for the registered model `sha256`.
    pub fn model_evaluations(&self, sha256: &str) -> Result<Vec<Evaluation>, RunError> {
        let root = self.registry()?;
        self.io.block_on(registry::evaluations(&root, sha256)).map_err(registry_err)
    }

    /// The card of the registered model whose SHA-256 is `wanted` or
    /// starts with it (hex, optionally after `sha256:`); an error when no
    /// model or more than one matches.
    pub fn model_card(&self, wanted: &str) -> Result<ModelCard, RunError> {
        let root = self.registry()?;
        self.io
            .block_on(registry::find(&root, wanted))
            .map_err(registry_err)?
            .map_err(|matches| RunError::NoSuchModel { registry: root.url().into(), wanted: wanted.into(), matches })
    }
}
