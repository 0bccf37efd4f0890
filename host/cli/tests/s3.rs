//! The `wasmpipe` binary against a real S3-compatible server (Garage on
//! loopback, started by the test harness): deploy, list and run a deployed
//! pipeline from the bucket, read its outputs back with pyarrow, and kill
//! runs at random points to check that reruns resume to exactly the output
//! of a clean run.

use std::process::{Command, Output};
use std::time::Instant;

use wasmpipe_storage::Storage;
use wasmpipe_storage::commit;
use wasmpipe_tests::repo;
use wasmpipe_tests::s3::{S3Server, garage, unique_prefix};

fn wasmpipe(server: &S3Server) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wasmpipe"));
    cmd.envs(server.env()).current_dir(repo());
    cmd
}

fn ok(out: Output) -> (String, String) {
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

fn deploy(server: &S3Server, manifest: &str, root: &str) -> (String, String) {
    ok(wasmpipe(server).args(["deploy", manifest, "--to", root]).output().unwrap())
}

#[test]
fn deploy_then_run_from_the_bucket_and_read_the_outputs_with_pyarrow() {
    let server = garage();
    let root = server.url(&unique_prefix("deploy"));

    let (stdout, stderr) = deploy(server, "examples/diabetes/wasmpipe.toml", &root);
    assert!(stdout.contains("deployed diabetes version 1"), "{stdout}");
    let uploads = stderr.lines().filter(|l| l.starts_with("uploaded ")).count();
    assert_eq!(uploads, 7 + 1 + 1 + 1, "seven components, the CSV, the manifest and its plan:\n{stderr}");
    assert!(stderr.contains("deployments/diabetes/v1.plan.json"), "{stderr}");

    // Deploying the same content again uploads nothing.
    let (stdout, stderr) = deploy(server, "examples/diabetes/wasmpipe.toml", &root);
    assert!(stdout.contains("diabetes version 1 is unchanged"), "{stdout}");
    assert!(!stderr.contains("uploaded"), "{stderr}");

    let (stdout, _) = ok(wasmpipe(server).args(["deployments", &root]).output().unwrap());
    assert!(stdout.contains("diabetes") && stdout.contains("latest v1"), "{stdout}");
    let (pinned, _) = ok(wasmpipe(server).args(["deployments", &root, "diabetes@1"]).output().unwrap());
    assert_eq!(pinned.matches("component = \"sha256:").count(), 10, "one per stage:\n{pinned}");
    assert!(pinned.contains("inputs = [\"inputs/"), "the CSV is pinned by content too:\n{pinned}");

    // Run it from the bucket, from a directory that holds nothing of it.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = wasmpipe(server)
        .args(["run", "diabetes", "--from", &root, "-p", "2"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let (stdout, stderr) = ok(out);
    assert!(stdout.lines().any(|l| l == "r2 = 0.5177"), "{stdout}\n{stderr}");
    assert!(stderr.contains("version 1 from"), "{stderr}");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0, "nothing was written locally");

    // pyarrow's own S3 client reads the committed predictions.
    let fit = format!("{root}/data/diabetes/fit");
    let mut py = Command::new(wasmpipe_tests::python());
    py.envs(server.env()).arg(repo().join("tests/python/read_s3.py")).arg(&fit);
    let out = py.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["rows"], 442);
    assert!(seen["columns"].as_array().unwrap().iter().any(|c| c == "prediction"), "{seen}");
    let mut expected: Vec<serde_json::Value> = seen["parts"].as_array().unwrap().clone();
    expected.push("_wasmpipe_commit.json".into());
    expected.push(serde_json::Value::String(
        seen["listed"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n.as_str().unwrap().starts_with("_model-"))
            .unwrap()
            .as_str()
            .unwrap()
            .into(),
    ));
    let mut listed = seen["listed"].as_array().unwrap().clone();
    listed.sort_by_key(|v| v.to_string());
    expected.sort_by_key(|v| v.to_string());
    assert_eq!(listed, expected, "nothing under the output but the commit, its parts and its model");
    // Predictions sum to the targets' sum (least squares with an intercept).
    let sums = &seen["sums"];
    assert!((sums["prediction"].as_f64().unwrap() - sums["target"].as_f64().unwrap()).abs() < 1e-6, "{sums}");

    // A changed manifest is a new version; the unchanged components and
    // input are not uploaded again.
    let changed = elsewhere.path().join("wasmpipe.toml");
    let text = std::fs::read_to_string(repo().join("examples/diabetes/wasmpipe.toml")).unwrap();
    let text = text.replace("../../stages/", &format!("{}/stages/", repo().display())).replace(
        "inputs = [\"diabetes.csv\"]",
        &format!("inputs = [{:?}]", repo().join("examples/diabetes/diabetes.csv").display().to_string()),
    );
    std::fs::write(&changed, text.replace("row_group_rows = 64", "row_group_rows = 100")).unwrap();
    let (stdout, stderr) = deploy(server, changed.to_str().unwrap(), &root);
    assert!(stdout.contains("deployed diabetes version 2"), "{stdout}");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("uploaded ")).count(),
        2,
        "only the manifest and its plan:\n{stderr}"
    );
    let (stdout, _) = ok(wasmpipe(server).args(["deployments", &root]).output().unwrap());
    assert!(stdout.contains("latest v2") && stdout.contains("v1 v2"), "{stdout}");
}

/// A stage's committed objects: (part by task index, or model, quarantine
/// part or report by name; rows; bytes).
type Committed = Vec<(String, u64, u64)>;

/// Every stage's committed objects under `store`; `None` for a stage with
/// no commit.
fn committed(storage: &Storage, store: &str) -> Vec<(String, Option<Committed>)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let stages = ["ingest", "validate", "clean", "scale", "fit", "evaluate"];
    let held_out = ["split", "fit_train", "predict_test", "evaluate_test"];
    stages
        .iter()
        .chain(&held_out)
        .map(|stage| {
            let at = storage.resolve(&format!("{store}/diabetes/{stage}")).unwrap();
            let record = rt.block_on(commit::read(&at)).unwrap();
            let parts = record.map(|r| {
                let mut v: Committed = r.parts.iter().map(|p| (p.name[..10].to_string(), p.rows, p.bytes)).collect();
                v.extend(r.model.iter().map(|m| (m.name.clone(), 0, m.bytes)));
                v.extend(r.quarantine.iter().map(|p| (p.name.clone(), p.rows, p.bytes)));
                v.extend(
                    r.report.iter().flat_map(|f| std::iter::once(&f.json).chain(&f.table)).map(|n| (n.clone(), 0, 0)),
                );
                v
            });
            (stage.to_string(), parts)
        })
        .collect()
}

/// Every object under `prefix`, relative to it.
fn listing(storage: &Storage, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let at = storage.resolve(prefix).unwrap();
    let mut names: Vec<String> = rt
        .block_on(at.store().list(Some(at.path())).map_ok(|m| m.location.to_string()).try_collect::<Vec<_>>())
        .unwrap();
    for n in &mut names {
        *n = n[at.path().as_ref().len() + 1..].to_string();
    }
    names.sort();
    names
}

#[test]
fn runs_killed_at_random_points_then_rerun_give_exactly_a_clean_runs_output() {
    let server = garage();
    let root = server.url(&unique_prefix("kill"));
    deploy(server, "examples/diabetes/wasmpipe.toml", &root);
    let storage = Storage::new(".").with_options(server.options());
    let run = |store: &str| {
        let mut cmd = wasmpipe(server);
        cmd.args(["run", "diabetes", "--from", &root, "-p", "2", "-q", "--store", store]);
        cmd
    };

    let clean_store = format!("{root}/clean");
    let (clean_stdout, _) = ok(run(&clean_store).output().unwrap());
    let clean = committed(&storage, &clean_store);
    assert!(clean.iter().all(|(_, parts)| parts.is_some()));
    // A second clean run (components now compiled and cached) times the
    // window the kills aim at.
    let started = Instant::now();
    ok(run(&format!("{root}/warm")).output().unwrap());
    let window = started.elapsed();

    // KILLS times: start a run, kill it (SIGKILL) at a pseudo-random point of
    // that window, check that every output is either not committed or
    // committed whole, then rerun it to the end and check that the result
    // is exactly the clean run's, with nothing else left in the store.
    let metric = |s: &str| s.lines().filter(|l| l.contains(" = ")).map(String::from).collect::<Vec<_>>();
    let mut seed: u64 = 0x05EE_D0FC_10CC;
    let (mut mid_run, mut resumed) = (0, 0);
    const KILLS: usize = 16;
    for kill in 0..KILLS {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = window.mul_f64(0.02 + 0.96 * ((seed >> 11) as f64 / (1u64 << 53) as f64));
        let store = format!("{root}/killed-{kill}");
        let mut child =
            run(&store).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL: no chance to clean up
        child.wait().unwrap();

        let after_kill = committed(&storage, &store);
        for ((stage, got), (_, want)) in after_kill.iter().zip(&clean) {
            if let Some(got) = got {
                assert_eq!(Some(got), want.as_ref(), "kill {kill} at {delay:?}: {stage} committed partially");
            }
        }
        let done = after_kill.iter().filter(|(_, p)| p.is_some()).count();
        if done < clean.len() {
            mid_run += 1;
        }

        let (stdout, _) = ok(run(&store).output().unwrap());
        if done > 0 && done < clean.len() || stdout.contains("resumed") {
            resumed += 1;
        }
        assert_eq!(metric(&stdout), metric(&clean_stdout), "kill {kill} at {delay:?}");
        assert_eq!(committed(&storage, &store), clean, "kill {kill} at {delay:?}");
        // The model registry beside the outputs holds content-addressed
        // models, their cards and their evaluations, whole or not at all.
        // Beside them, a record of every run that got to its end (and its
        // report), the killed ones included.
        let (runs, objects): (Vec<String>, Vec<String>) =
            listing(&storage, &store).into_iter().partition(|n| n.starts_with("_runs/"));
        assert!(runs.iter().all(|n| n.ends_with("/run.json") || n.ends_with("/report.html")), "kill {kill}: {runs:#?}");
        let (registry, left): (Vec<String>, Vec<String>) = objects.into_iter().partition(|n| n.starts_with("_models/"));
        assert!(
            registry.iter().all(|n| n.ends_with("/model.bin")
                || n.ends_with("/card.json")
                || n.contains("/evaluations/diabetes--evaluate")),
            "kill {kill}: {registry:#?}"
        );
        let expected: usize = clean.iter().map(|(_, p)| p.as_ref().unwrap().len() + 1).sum();
        assert_eq!(left.len(), expected, "kill {kill}: only commits, parts, models and reports remain:\n{left:#?}");
        assert!(
            left.iter().all(|n| n.ends_with("_wasmpipe_commit.json")
                || n.contains("/part-")
                || n.contains("/_model-")
                || n.contains("/_report-")),
            "kill {kill}: {left:#?}"
        );
    }
    eprintln!(
        "window {window:?}; {KILLS} kills: {mid_run} before the run finished, {resumed} reruns built on earlier work"
    );
    assert!(mid_run >= KILLS / 2, "most kills land mid-run ({mid_run} of {KILLS})");
    assert!(resumed >= 1, "some reruns resumed from what a killed run committed");
}
