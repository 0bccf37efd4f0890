//! The model registry: every model an estimator stage fits, stored by
//! content under the store root with its lineage, so that any pipeline can
//! apply it later (`model = "sha256:…"`).
//!
//! ```text
//! <store>/_models/<sha256>/model.bin    the model's bytes
//! <store>/_models/<sha256>/card.json    its lineage card (ModelCard)
//! <store>/_models/<sha256>/evaluations/<pipeline>--<stage>.json
//!                                       how it did: the latest report of
//!                                       each evaluation stage that scored
//!                                       its predictions (Evaluation)
//! ```
//!
//! An entry is written before the commit that lists its model, so every
//! committed model is in the registry. Entries are never rewritten: the
//! card describes the first fit that produced those bytes (a create-only
//! put where the store honours it, a look first everywhere). Nothing
//! deletes them: a commit's clean-up touches only its own output prefix.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::commit::{CommitRecord, Model};
use crate::{Location, Storage, StorageError};

/// Where the registry lives under a store.
pub const DIR: &str = "_models";

/// Identifies the card format.
pub const CARD_FORMAT: &str = "wasmpipe-model/1";

/// Cards read at once when listing (a listing of many models is many
/// small GETs; the store's own limit caps the total).
const CARDS_AT_ONCE: usize = 16;

/// A registered model's lineage: what fitted it, on what, with which
/// settings, and how it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Always [`CARD_FORMAT`].
    pub format: String,
    /// SHA-256 of the model's bytes, hex: its name in the registry.
    pub sha256: String,
    /// Size of the model in bytes.
    pub bytes: u64,
    /// The pipeline that fitted it.
    pub pipeline: String,
    /// The estimator stage that fitted it.
    pub stage: String,
    /// The run that fitted it.
    pub run_id: String,
    /// Seconds since the Unix epoch when it was committed.
    pub created_at: u64,
    /// The output the fit committed (URL).
    pub output: String,
    /// SHA-256 of the stage component.
    pub component: String,
    /// The stage's config, as handed to it.
    pub config: serde_json::Value,
    /// SHA-256 of the config JSON (the commit record's `config`).
    pub config_sha256: String,
    /// The inputs it was fitted on: the commit record's lineage.
    pub inputs: Vec<String>,
    /// Fit passes it took.
    pub passes: u32,
    /// The report the stage published with it (a JSON document), if any.
    pub report: Option<serde_json::Value>,
}

impl ModelCard {
    /// The card of `model`, committed by `record` at `output` by a stage
    /// with config `config_json` that published `report`.
    pub fn new(
        record: &CommitRecord,
        model: &Model,
        output: &str,
        config_json: &str,
        report: Option<&str>,
    ) -> ModelCard {
        let json =
            |text: &str| serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()));
        ModelCard {
            format: CARD_FORMAT.into(),
            sha256: model.sha256.clone(),
            bytes: model.bytes,
            pipeline: record.pipeline.clone(),
            stage: record.stage.clone(),
            run_id: record.run_id.clone(),
            created_at: record.committed_at,
            output: output.into(),
            component: record.component.clone(),
            config: json(config_json),
            config_sha256: record.config.clone(),
            inputs: record.inputs.clone(),
            passes: model.passes,
            report: report.map(json),
        }
    }
}

/// How a model did: the report of a stage that evaluated its predictions
/// (an aggregator downstream of the stage that fitted or applied it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The model, SHA-256 hex.
    pub model: String,
    /// The pipeline of the evaluation stage.
    pub pipeline: String,
    /// The evaluation stage.
    pub stage: String,
    /// The stage whose predictions it evaluated (which fitted or applied
    /// the model).
    pub predictions: String,
    /// The run that committed the evaluation.
    pub run_id: String,
    /// The evaluation stage's output (URL).
    pub output: String,
    /// Its report: the metrics.
    pub report: serde_json::Value,
}

/// Where a model's evaluations are, within its registry entry.
const EVALUATIONS_DIR: &str = "evaluations";

/// The evaluations recorded for model `sha256`, by pipeline and stage.
pub async fn evaluations(root: &Location, sha256: &str) -> Result<Vec<Evaluation>, StorageError> {
    let dir = root.child(&format!("{sha256}/{EVALUATIONS_DIR}"));
    let mut listed: Vec<_> = dir.store().list(Some(dir.path())).try_collect().await.map_err(|e| dir.error(e))?;
    listed.sort_by(|a, b| a.location.cmp(&b.location));
    let mut out = Vec::with_capacity(listed.len());
    for meta in listed {
        let at = dir.at(meta.location);
        let Some((bytes, _)) = at.get_opt().await? else { continue };
        let evaluation = serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::Text { url: at.url().into(), reason: format!("not an evaluation: {e}") })?;
        out.push(evaluation);
    }
    Ok(out)
}

/// The registry under the store `store` (a URL or an absolute path),
/// reached through `storage`.
pub fn root(storage: &Storage, store: &str) -> Result<Location, StorageError> {
    storage.resolve(&format!("{}/{DIR}", store.trim_end_matches('/')))
}

/// The card of the registered model whose SHA-256 is `wanted` or starts
/// with it (hex, optionally after `sha256:`): `Err` with the SHA-256s that
/// match when none or more than one does.
pub async fn find(root: &Location, wanted: &str) -> Result<Result<ModelCard, Vec<String>>, StorageError> {
    let prefix = wanted.strip_prefix("sha256:").unwrap_or(wanted).to_ascii_lowercase();
    if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Err(Vec::new()));
    }
    if prefix.len() == 64 {
        return Ok(card(root, &prefix).await?.ok_or_else(Vec::new));
    }
    let mut found: Vec<ModelCard> = list(root).await?.into_iter().filter(|c| c.sha256.starts_with(&prefix)).collect();
    Ok(match found.len() {
        1 => Ok(found.remove(0)),
        _ => Err(found.into_iter().map(|c| c.sha256).collect()),
    })
}

/// Record `evaluation` of model `sha256` under `root`, replacing the
/// previous one of the same pipeline and stage.
pub async fn record_evaluation(root: &Location, evaluation: &Evaluation) -> Result<(), StorageError> {
    let at = root
        .child(&format!("{}/{EVALUATIONS_DIR}/{}--{}.json", evaluation.model, evaluation.pipeline, evaluation.stage));
    at.put(serde_json::to_vec_pretty(evaluation).expect("evaluations serialize")).await
}

/// Where model `sha256`'s bytes are.
pub fn model_location(root: &Location, sha256: &str) -> Location {
    root.child(&format!("{sha256}/model.bin"))
}

fn card_location(root: &Location, sha256: &str) -> Location {
    root.child(&format!("{sha256}/card.json"))
}

/// The size of the object at `at`, or `None` when there is none.
async fn size(at: &Location) -> Result<Option<u64>, StorageError> {
    match at.store().head(at.path()).await {
        Ok(meta) => Ok(Some(meta.size)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(at.error(e)),
    }
}

/// Put a model and its card in the registry unless its card is there;
/// true when this call registered it. The bytes go first, so a card never
/// names a model that is not there.
pub async fn register(root: &Location, bytes: &[u8], card: &ModelCard) -> Result<bool, StorageError> {
    let card_at = card_location(root, &card.sha256);
    if size(&card_at).await?.is_some() {
        return Ok(false);
    }
    let model_at = model_location(root, &card.sha256);
    if size(&model_at).await? != Some(bytes.len() as u64) {
        model_at.put(bytes.to_vec()).await?;
    }
    let json = serde_json::to_vec_pretty(card).expect("model cards serialize");
    // Create only: of two first fits of the same bytes at once, one card
    // stands (where the store honours it; elsewhere the look above).
    card_at.put_if(json, None).await
}

/// Model `sha256`'s bytes, checked against the hash; `None` when the
/// registry does not hold it.
pub async fn fetch(root: &Location, sha256: &str) -> Result<Option<Bytes>, StorageError> {
    match model_location(root, sha256).get_verified(sha256).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Model `sha256`'s card, or `None` when the registry does not hold it.
pub async fn card(root: &Location, sha256: &str) -> Result<Option<ModelCard>, StorageError> {
    let at = card_location(root, sha256);
    let Some((bytes, _)) = at.get_opt().await? else {
        return Ok(None);
    };
    let unreadable = |reason: String| StorageError::Text { url: at.url().into(), reason };
    let card: ModelCard =
        serde_json::from_slice(&bytes).map_err(|e| unreadable(format!("not a wasmpipe model card: {e}")))?;
    if card.format != CARD_FORMAT || card.sha256 != sha256 {
        return Err(unreadable(format!(
            "a card of format {:?} for model {}, expected {CARD_FORMAT:?} for {sha256}",
            card.format, card.sha256
        )));
    }
    Ok(Some(card))
}

/// Every model in the registry, newest first.
pub async fn list(root: &Location) -> Result<Vec<ModelCard>, StorageError> {
    let listed: Vec<_> = root.store().list(Some(root.path())).try_collect().await.map_err(|e| root.error(e))?;
    let shas: Vec<String> = listed
        .iter()
        .filter_map(|meta| {
            let mut parts = meta.location.prefix_match(root.path())?;
            let (sha, file) = (parts.next()?, parts.next()?);
            let entry = parts.next().is_none() && file.as_ref() == "card.json" && is_sha256(sha.as_ref());
            entry.then(|| sha.as_ref().to_string())
        })
        .collect();
    let mut cards: Vec<ModelCard> = futures::stream::iter(shas)
        .map(|sha| async move { card(root, &sha).await })
        .buffer_unordered(CARDS_AT_ONCE)
        .try_filter_map(|c| async move { Ok(c) })
        .try_collect()
        .await?;
    cards.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.sha256.cmp(&b.sha256)));
    Ok(cards)
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
