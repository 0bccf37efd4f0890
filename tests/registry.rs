//! The model registry end to end: a training pipeline fits `linreg` on
//! the diabetes data; its model lands in `<store>/_models/<sha256>/` with a
//! lineage card; a second pipeline scores Parquet with it by hash
//! (`model = "sha256:…"`) and by the training pipeline's latest run
//! (`model = "pipeline:ml/fit"`), and its predictions are the training
//! pipeline's own. The evaluation of a model's predictions is recorded
//! with it.

use std::path::Path;

use arrow::record_batch::RecordBatch;
use serde_json::json;
use sha2::{Digest, Sha256};
use wasmpipe_executor::{CARD_FORMAT, Executor, ModelCard, RunReport};
use wasmpipe_tests::*;

const FEATURES: &str = r#"["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]"#;

/// The stage config of every `linreg` here.
fn linreg_config(alpha: f64) -> String {
    format!("config = {{ features = {FEATURES}, target = \"target\", alpha = {alpha:?} }}\n")
}

/// Pipeline `ml`: the diabetes CSV into 4 partitions, `linreg` fitted
/// on them (ridge `alpha`), and `evaluate` (an aggregator, whose result
/// is no model for the registry).
fn training(alpha: f64) -> String {
    format!(
        "{}\n[stage.fit]\ncomponent = {}\ninputs = [\"stage:ingest\"]\n{}\n[stage.evaluate]\ncomponent = {}\ninputs = [\"stage:fit\"]\nconfig = {{ target = \"target\" }}\n",
        ingest_head(&testdata().join("ml/diabetes.csv"), 442, 4),
        toml_path(&component("linreg")),
        linreg_config(alpha),
        toml_path(&component("evaluate")),
    )
}

/// Pipeline `score`: one `linreg` stage per `(name, model)`, each
/// applying `model` to the training pipeline's committed ingest output.
fn scoring(store: &Path, stages: &[(&str, &str)]) -> String {
    let mut text = "version = 1\nname = \"score\"\n\n[defaults]\nmemory_mib = 64\ntimeout_s = 60\nbatch_rows = 111\nrow_group_rows = 111\n".to_string();
    for (name, model) in stages {
        text += &format!(
            "\n[stage.{name}]\ncomponent = {}\ninputs = [{}]\nmodel = {model:?}\n{}",
            toml_path(&component("linreg")),
            toml_path(&store.join("ml/ingest")),
            linreg_config(0.0),
        );
    }
    text
}

fn model_sha(report: &RunReport, stage: &str) -> String {
    let s = report.stages.iter().find(|s| s.name == stage).expect("stage in report");
    s.model.as_ref().expect("a fitted model").sha256.clone()
}

/// Every committed row of an output, as one batch.
fn rows(output: &Path) -> RecordBatch {
    let batches = read_committed(output);
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn shas(exec: &Executor) -> Vec<String> {
    exec.models().expect("the registry lists").into_iter().map(|c| c.sha256).collect()
}

#[test]
fn fitted_models_are_registered_with_lineage_and_score_other_pipelines_data() {
    let store = tempfile::tempdir().unwrap();
    let dir = store.path();
    let (exec, _) = executor(dir, 4);
    assert!(exec.models().unwrap().is_empty(), "an empty store has an empty registry");

    // Fit: the estimator's model is registered, the aggregator's result not.
    let first = run_text(&exec, &training(0.0), dir).unwrap();
    let sha = model_sha(&first, "fit");
    assert_eq!(shas(&exec), [sha.as_str()], "one model: the fit's (evaluate is an aggregator)");
    let entry = dir.join("_models").join(&sha);
    let bytes = std::fs::read(entry.join("model.bin")).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha, "model.bin hashes to its name");
    assert_eq!(bytes, first.stages.iter().find(|s| s.name == "fit").unwrap().model_bytes.as_deref().unwrap());
    let card: ModelCard = serde_json::from_slice(&std::fs::read(entry.join("card.json")).unwrap()).unwrap();
    let commit = commit_record(&dir.join("ml/fit"));
    assert_eq!(card.format, CARD_FORMAT);
    assert_eq!((card.pipeline.as_str(), card.stage.as_str()), ("ml", "fit"));
    assert_eq!((card.sha256.as_str(), card.bytes), (sha.as_str(), bytes.len() as u64));
    assert_eq!(card.run_id, first.run_id);
    assert_eq!(card.component, commit["component"].as_str().unwrap());
    assert_eq!(card.component, first.stages.iter().find(|s| s.name == "fit").unwrap().component);
    assert_eq!(
        card.config,
        json!({ "features": serde_json::from_str::<serde_json::Value>(FEATURES).unwrap(), "target": "target", "alpha": 0.0 })
    );
    assert_eq!(card.config_sha256, commit["config"].as_str().unwrap());
    assert_eq!(json!(card.inputs), commit["inputs"]);
    assert!(card.inputs[0].contains("/ml/ingest@"), "fitted on the committed ingest output: {:?}", card.inputs);
    assert_eq!(card.created_at, commit["committed_at"].as_u64().unwrap());
    assert_eq!(card.passes, 1);
    assert!(card.output.ends_with("/ml/fit"), "{}", card.output);
    // How it did: the evaluation of its predictions is recorded with it.
    let evaluations = exec.model_evaluations(&sha).unwrap();
    assert_eq!(evaluations.len(), 1);
    let e = &evaluations[0];
    assert_eq!((e.pipeline.as_str(), e.stage.as_str(), e.predictions.as_str()), ("ml", "evaluate", "fit"));
    assert_eq!((e.model.as_str(), e.run_id.as_str()), (sha.as_str(), first.run_id.as_str()));
    assert_eq!(report_metrics(&e.report), result(&first, "evaluate"), "the evaluate stage's metrics");
    // The library finds it by any unique prefix, with or without `sha256:`.
    assert_eq!(exec.model_card(&sha[..8]).unwrap(), card);
    assert_eq!(exec.model_card(&format!("sha256:{sha}")).unwrap(), card);
    let err = exec.model_card("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").unwrap_err();
    assert!(err.to_string().contains("wasmpipe models"), "{err}");

    // Score the training pipeline's Parquet by hash and by pipeline: the
    // predictions are the training pipeline's own.
    let score = |stages: &[(&str, &str)]| run_text(&exec, &scoring(dir, stages), dir);
    let by_hash = format!("sha256:{sha}");
    score(&[("by_hash", &by_hash), ("by_pipeline", "pipeline:ml/fit")]).unwrap();
    let trained = rows(&dir.join("ml/fit"));
    assert!(trained.column_by_name("prediction").is_some());
    assert_eq!(rows(&dir.join("score/by_hash")), trained);
    assert_eq!(rows(&dir.join("score/by_pipeline")), trained);
    let lineage = |stage: &str| commit_record(&dir.join("score").join(stage))["inputs"].clone();
    assert!(
        lineage("by_hash").as_array().unwrap().contains(&json!(format!("model sha256:{sha}"))),
        "{}",
        lineage("by_hash")
    );
    let fit_url = format!("{}/ml/fit@{sha}", exec_store_url(dir));
    assert!(
        lineage("by_pipeline").as_array().unwrap().contains(&json!(format!("model {fit_url}"))),
        "{}",
        lineage("by_pipeline")
    );
    assert_eq!(shas(&exec), [sha.as_str()], "applying a model registers nothing");
    assert_eq!(exec.model_evaluations(&sha).unwrap().len(), 1, "nothing evaluated the scores");

    // Refit with another alpha: a second entry; `pipeline:` follows it,
    // the old hash still names the old model.
    let refit = run_text(&exec, &training(10.0), dir).unwrap();
    let new_sha = model_sha(&refit, "fit");
    assert_ne!(new_sha, sha);
    let mut registered = shas(&exec);
    registered.sort();
    let mut want = vec![sha.clone(), new_sha.clone()];
    want.sort();
    assert_eq!(registered, want);
    let cards = exec.models().unwrap();
    assert!(cards.windows(2).all(|w| w[0].created_at >= w[1].created_at), "newest first");
    assert_eq!(exec.model_card(&new_sha).unwrap().config["alpha"], 10.0);
    let report = score(&[("by_hash", &by_hash), ("by_pipeline", "pipeline:ml/fit")]).unwrap();
    let status = |stage: &str| report.stages.iter().find(|s| s.name == stage).unwrap().committed_before.is_some();
    assert!(status("by_hash"), "the same model on the same data: already committed");
    assert!(!status("by_pipeline"), "a new model: scored again");
    let retrained = rows(&dir.join("ml/fit"));
    assert_ne!(retrained, trained);
    assert_eq!(rows(&dir.join("score/by_pipeline")), retrained);
    assert_eq!(rows(&dir.join("score/by_hash")), trained);
    assert!(lineage("by_pipeline").to_string().contains(&new_sha), "{}", lineage("by_pipeline"));

    // An identical rerun registers nothing; refitting the first config
    // gives the first bytes, whose card (the first fit's) stays.
    let before = exec.models().unwrap();
    let again = run_text(&exec, &training(10.0), dir).unwrap();
    assert!(again.stages.iter().all(|s| s.committed_before.is_some()));
    assert_eq!(exec.models().unwrap(), before);
    let third = run_text(&exec, &training(0.0), dir).unwrap();
    assert_eq!(model_sha(&third, "fit"), sha, "the same data and config fit the same bytes");
    assert_eq!(exec.models().unwrap(), before);
    assert_eq!(exec.model_card(&sha).unwrap().run_id, first.run_id, "the first fit's card stands");

    // A committed model missing from the registry (a store from before it)
    // is registered when the run finds it committed.
    std::fs::remove_dir_all(dir.join("_models")).unwrap();
    run_text(&exec, &training(0.0), dir).unwrap();
    assert_eq!(shas(&exec), [sha.as_str()]);
}

#[test]
fn a_hash_the_registry_does_not_hold_is_a_clear_error() {
    let store = tempfile::tempdir().unwrap();
    let dir = store.path();
    let (exec, _) = executor(dir, 2);
    run_text(&exec, &training(0.0), dir).unwrap();
    let missing = "ab".repeat(32);
    let err =
        run_text(&exec, &scoring(dir, &[("predict", &format!("sha256:{missing}"))]), dir).unwrap_err().to_string();
    // Found before any data moves, as each of these below.
    assert!(err.contains("(checked before any data moved)") && err.contains("stage \"predict\""), "{err}");
    assert!(err.contains(&format!("no model sha256:{missing}")), "{err}");
    assert!(err.contains(&format!("_models/{missing}/model.bin")), "names where it looked: {err}");
    assert!(err.contains("wasmpipe models"), "{err}");

    // A pipeline that has not run has no model to give.
    let err = run_text(&exec, &scoring(dir, &[("predict", "pipeline:other/fit")]), dir).unwrap_err().to_string();
    assert!(err.contains("other/fit holds no committed model") && err.contains("run pipeline \"other\""), "{err}");
    assert!(err.contains("(checked before any data moved)"), "{err}");

    // A model applied to rows that lack one of its features: the stage,
    // opened with the model, says so on no rows.
    let sha = exec.models().unwrap()[0].sha256.clone();
    let text = scoring(dir, &[("predict", &format!("sha256:{sha}"))])
        .replace("\nmodel = ", "\ncolumns = [\"age\", \"target\"]\nmodel = ");
    let err = run_text(&exec, &text, dir).unwrap_err().to_string();
    assert!(err.contains("(checked before any data moved)"), "{err}");
    assert!(err.contains("stage \"predict\": column not found: \"sex\""), "{err}");

    // A damaged registry copy is refused, not applied.
    std::fs::write(dir.join("_models").join(&sha).join("model.bin"), b"{}").unwrap();
    let err = run_text(&exec, &scoring(dir, &[("predict", &format!("sha256:{sha}"))]), dir).unwrap_err().to_string();
    assert!(err.contains("changed or damaged"), "{err}");
}

/// The URL the executor writes `dir` as.
fn exec_store_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}
