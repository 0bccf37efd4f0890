//! Golden tests of the resolved plan: each demo manifest's plan beside
//! `plans/NAME.json` (paths relative to the repository; component hashes
//! and sizes, which depend on the toolchain that built them, blanked), and
//! the error each unresolvable reference gives, in `plans/errors.txt`, and
//! the error of each stage that rejects its configuration or input, found
//! before any data moves, in `plans/checks.txt`. Run with `BLESS=1` to rewrite them after an intended change.

use std::path::Path;

use wasmpipe_executor::LockedPipeline;
use wasmpipe_manifest::Manifest;
use wasmpipe_storage::Storage;
use wasmpipe_tests::{component, executor, repo, toml_path};

fn resolve(text: &str, dir: &Path) -> Result<LockedPipeline, String> {
    let (exec, _) = executor(&dir.join("store"), 1);
    let manifest = Manifest::parse(text).map_err(|e| e.to_string())?;
    exec.resolve(&manifest, &Storage::new(dir), Some(dir)).map_err(|e| e.to_string())
}

/// The plan as golden text: the repository's path as `<repo>`, each
/// component by file name only.
fn golden(plan: &LockedPipeline) -> String {
    let mut doc: serde_json::Value = serde_json::from_slice(&plan.to_json()).unwrap();
    for stage in doc["stages"].as_array_mut().unwrap() {
        let c = &mut stage["component"];
        let file = c["url"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
        assert_eq!(c["sha256"].as_str().unwrap().len(), 64);
        assert!(c["bytes"].as_u64().unwrap() > 0);
        *c = serde_json::json!({ "sha256": "<sha256>", "url": format!("<built>/{file}"), "bytes": "<bytes>" });
    }
    let repo = repo().canonicalize().unwrap().display().to_string();
    serde_json::to_string_pretty(&doc).unwrap().replace(&repo, "<repo>") + "\n"
}

fn check(name: &str, actual: &str, failures: &mut Vec<String>) {
    let path = repo().join("tests/plans").join(name);
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("missing {}; run with BLESS=1", path.display()));
    if expected != actual {
        failures.push(format!("{}:\n--- expected\n{expected}\n--- actual\n{actual}", path.display()));
    }
}

#[test]
fn each_demo_resolves_to_its_golden_plan() {
    let mut failures = Vec::new();
    for demo in ["diabetes", "breast_cancer", "wine"] {
        let dir = repo().join("examples").join(demo).canonicalize().unwrap();
        let text = std::fs::read_to_string(dir.join("wasmpipe.toml")).unwrap();
        let plan = resolve(&text, &dir).unwrap_or_else(|e| panic!("{demo}: {e}"));
        // The hash is of the content: the same manifest, the same plan.
        let again = resolve(&text, &dir).unwrap();
        assert_eq!(plan.hash(), again.hash(), "{demo}: resolving is deterministic");
        let round_trip = LockedPipeline::from_json(&plan.to_json(), demo).unwrap();
        assert_eq!(round_trip, plan, "{demo}: the JSON form reads back");
        check(&format!("{demo}.json"), &golden(&plan), &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn each_unresolvable_reference_fails_before_any_data_moves() {
    let dir = tempfile::tempdir().unwrap();
    let passthrough = toml_path(&component("passthrough"));
    let linreg = toml_path(&component("linreg"));
    let evaluate = toml_path(&component("evaluate"));
    let head = "version = 1\nname = \"p\"\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "an input naming no stage",
            format!("{head}[stage.a]\ncomponent = {passthrough}\ninputs = [\"stage:nope\"]\n"),
        ),
        (
            "a model naming no stage",
            format!("{head}[stage.a]\ncomponent = {linreg}\ninputs = [\"x.csv\"]\nmodel = \"stage:nope\"\n"),
        ),
        (
            "a transformer applying a model",
            format!(
                "{head}[stage.fit]\ncomponent = {linreg}\ninputs = [\"x.csv\"]\n[stage.a]\ncomponent = {passthrough}\ninputs = [\"x.csv\"]\nmodel = \"stage:fit\"\n"
            ),
        ),
        (
            "a model from a stage that fits none",
            format!(
                "{head}[stage.t]\ncomponent = {passthrough}\ninputs = [\"x.csv\"]\n[stage.a]\ncomponent = {linreg}\ninputs = [\"x.csv\"]\nmodel = \"stage:t\"\n"
            ),
        ),
        (
            "a model from an aggregator",
            format!(
                "{head}[stage.e]\ncomponent = {evaluate}\ninputs = [\"x.csv\"]\n[stage.a]\ncomponent = {linreg}\ninputs = [\"x.csv\"]\nmodel = \"stage:e\"\n"
            ),
        ),
        (
            "a component that is not there",
            format!("{head}[stage.a]\ncomponent = \"missing.wasm\"\ninputs = [\"x.csv\"]\n"),
        ),
        (
            "a malformed model reference",
            format!("{head}[stage.a]\ncomponent = {linreg}\ninputs = [\"x.csv\"]\nmodel = \"stag:fit\"\n"),
        ),
    ];
    let tmp = dir.path().canonicalize().unwrap().display().to_string();
    let mut actual = String::new();
    for (what, text) in cases {
        let err = match resolve(&text, dir.path()) {
            Ok(_) => panic!("{what}: resolved"),
            Err(e) => e,
        };
        actual.push_str(&format!("## {what}\n{}\n\n", err.replace(&tmp, "<dir>")));
    }
    let built = component("passthrough").parent().unwrap().display().to_string();
    let mut failures = Vec::new();
    check("errors.txt", &actual.replace(&built, "<built>"), &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The breast-cancer demo's manifest with each `(from, to)` replaced once.
fn breast_cancer_with(edits: &[(&str, &str)]) -> String {
    let path = repo().join("examples/breast_cancer/wasmpipe.toml");
    let mut text = std::fs::read_to_string(path).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "the demo manifest has no {from:?}");
        text = text.replacen(from, to, 1);
    }
    text
}

#[test]
fn each_stage_that_rejects_its_config_or_input_fails_the_check_before_any_data_moves() {
    let demo = repo().join("examples/breast_cancer").canonicalize().unwrap();
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("a misspelt config key", vec![(", c = 1.0 }", ", cc = 1.0 }")]),
        ("a column its input lacks", vec![("stratify = \"target\"", "stratify = \"targt\"")]),
        (
            "a selector that selects nothing",
            vec![("exclude = [\"target\"] } }", "glob = \"mean_*\", regex = \"^worst_\" } }")],
        ),
        (
            "a projection naming a column the input lacks",
            vec![(
                "inputs = [\"breast_cancer.csv\"]",
                "inputs = [\"breast_cancer.csv\"]\ncolumns = [\"mean_radius\", \"mean_radios\"]",
            )],
        ),
        (
            "a declared column the file lacks",
            vec![(
                "inputs = [\"breast_cancer.csv\"]",
                "inputs = [\"breast_cancer.csv\"]\nschema = { mean_radios = \"float64\" }",
            )],
        ),
        (
            "a column of a type the stage does not take",
            vec![(
                "inputs = [\"breast_cancer.csv\"]",
                "inputs = [\"breast_cancer.csv\"]\nschema = { target = \"utf8\" }",
            )],
        ),
        ("an iteration count above the stage's max_passes", vec![(", c = 1.0 }", ", c = 1.0, max_iter = 150 }")]),
        ("a missing input", vec![("inputs = [\"breast_cancer.csv\"]", "inputs = [\"breast_cancer.cvs\"]")]),
        ("a prediction that would overwrite the target", vec![(", c = 1.0 }", ", c = 1.0, prediction = \"target\" }")]),
        (
            "a declared schema over Parquet",
            vec![("inputs = [\"stage:ingest\"]", "inputs = [\"stage:ingest\"]\nschema = { target = \"utf8\" }")],
        ),
        (
            "two stages at once",
            vec![
                ("stratify = \"target\"", "stratify = \"targt\""),
                ("config = { target = \"target\" }", "config = { taget = \"target\" }"),
            ],
        ),
    ];
    let mut actual = String::new();
    for (what, edits) in cases {
        let store = tempfile::tempdir().unwrap();
        let (exec, _) = executor(store.path(), 1);
        let manifest = Manifest::parse(&breast_cancer_with(&edits)).unwrap();
        let err = match exec.check(&manifest, &Storage::new(&demo), Some(&demo)) {
            Ok(_) => panic!("{what}: checked"),
            Err(e) => e.to_string(),
        };
        // Nothing ran: the store holds no output.
        let wrote: Vec<_> = std::fs::read_dir(store.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(wrote.is_empty(), "{what}: the check wrote {wrote:?}");
        actual.push_str(&format!("## {what}\n{}\n\n", err.replace(&demo.display().to_string(), "<demo>")));
    }
    let mut failures = Vec::new();
    check("checks.txt", &actual, &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
