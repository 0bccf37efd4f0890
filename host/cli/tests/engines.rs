//! The task contract end to end: the process engine (every task a
//! `wasmpipe task` child process) against the local engine on every demo,
//! on the local filesystem and on moto; exit codes; duplicate attempts of
//! one task; a task process killed with SIGKILL.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use wasmpipe_tests::s3::{S3Server, fault_proxy, moto, unique_prefix};
use wasmpipe_tests::{component, repo, toml_path};

fn wasmpipe() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wasmpipe"));
    cmd.current_dir(repo()).env_remove("WASMPIPE_STORE").env_remove("WASMPIPE_ENGINE");
    cmd
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn ok(out: Output) -> (String, String) {
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// What a run leaves that must not depend on the engine: every object,
/// byte for byte, except the plans kept for task processes and what
/// names the run or the time (run records, model cards and evaluations);
/// commit records without their run id and time.
fn normalize(rel: &str, bytes: Vec<u8>) -> Option<Vec<u8>> {
    if rel.starts_with("_plans/")
        || rel.starts_with("_runs/")
        || (rel.starts_with("_models/") && (rel.ends_with("card.json") || rel.contains("/evaluations/")))
    {
        return None;
    }
    if rel.ends_with("_wasmpipe_commit.json") {
        let mut record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let map = record.as_object_mut().unwrap();
        map.remove("run_id");
        map.remove("committed_at");
        return Some(serde_json::to_vec_pretty(&record).unwrap());
    }
    Some(bytes)
}

fn snapshot_dir(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                if let Some(bytes) = normalize(&rel, std::fs::read(&path).unwrap()) {
                    out.insert(rel, bytes);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn assert_same(local: &BTreeMap<String, Vec<u8>>, process: &BTreeMap<String, Vec<u8>>, what: &str) {
    let only = |a: &BTreeMap<String, Vec<u8>>, b: &BTreeMap<String, Vec<u8>>| -> Vec<String> {
        a.keys().filter(|k| !b.contains_key(*k)).cloned().collect()
    };
    assert!(
        only(local, process).is_empty() && only(process, local).is_empty(),
        "{what}: objects only the local engine wrote: {:?}; only the process engine: {:?}",
        only(local, process),
        only(process, local)
    );
    let differ: Vec<&String> = local.iter().filter(|(k, v)| process[*k] != **v).map(|(k, _)| k).collect();
    assert!(differ.is_empty(), "{what}: objects whose bytes differ between the engines: {differ:?}");
    assert!(local.keys().any(|k| k.ends_with(".parquet")), "{what}: no parts were compared");
}

/// Run `manifest` into `store` on `engine`; stdout.
fn run(manifest: &str, store: &Path, engine: &str) -> String {
    let out =
        wasmpipe().args(["run", manifest, "-p", "2", "-q", "--engine", engine, "--store"]).arg(store).output().unwrap();
    ok(out).0
}

#[test]
fn every_demo_gives_byte_identical_outputs_on_the_process_engine() {
    for demo in ["diabetes", "breast_cancer", "wine"] {
        let manifest = format!("examples/{demo}/wasmpipe.toml");
        let dir = tempfile::tempdir().unwrap();
        // The same store path for both, so that every location (and so
        // every identity) is the same.
        let store = dir.path().join("store");
        let local_out = run(&manifest, &store, "local");
        let local = snapshot_dir(&store);
        std::fs::remove_dir_all(&store).unwrap();
        let process_out = run(&manifest, &store, "process");
        let process = snapshot_dir(&store);
        assert_same(&local, &process, demo);
        // The summaries agree on every metric.
        let metrics = |s: &str| s.lines().filter(|l| l.contains(" = ")).map(String::from).collect::<Vec<_>>();
        assert_eq!(metrics(&local_out), metrics(&process_out), "{demo}");
        assert!(process.keys().all(|k| !k.contains("_wasmpipe_tasks/")), "{demo}: task records are cleaned up");
    }
}

fn snapshot_s3(server: &S3Server, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = server.store();
    let base = object_store::path::Path::from(prefix);
    rt.block_on(async {
        let listed: Vec<_> = store.list(Some(&base)).try_collect().await.unwrap();
        let mut out = BTreeMap::new();
        for meta in listed {
            let rel = meta.location.as_ref()[base.as_ref().len() + 1..].to_string();
            let bytes = store.get(&meta.location).await.unwrap().bytes().await.unwrap().to_vec();
            if let Some(bytes) = normalize(&rel, bytes) {
                out.insert(rel, bytes);
            }
            store.delete(&meta.location).await.unwrap();
        }
        out
    })
}

#[test]
fn the_process_engine_gives_the_same_outputs_on_moto() {
    let server = moto();
    for demo in ["diabetes", "breast_cancer", "wine"] {
        let prefix = unique_prefix("engines");
        let store = server.url(&prefix);
        let manifest = format!("examples/{demo}/wasmpipe.toml");
        let snapshot = |engine: &str| {
            let out = wasmpipe()
                .envs(server.env())
                .args(["run", &manifest, "-p", "2", "-q", "--engine", engine, "--store", &store])
                .output()
                .unwrap();
            ok(out);
            // (Taking the snapshot empties the prefix for the next run.)
            snapshot_s3(server, &prefix)
        };
        let local = snapshot("local");
        let process = snapshot("process");
        assert_same(&local, &process, &format!("{demo} on moto"));
    }
}

/// A one-stage pipeline of the hostile stage in `mode` over the diabetes
/// CSV, in `dir`; extra lines go into its stage table.
fn hostile(dir: &Path, mode: &str, extra: &str) -> String {
    let csv = repo().join("examples/diabetes/diabetes.csv");
    let manifest = dir.join("wasmpipe.toml");
    std::fs::write(
        &manifest,
        format!(
            "version = 1\nname = \"hostile\"\n[stage.h]\ncomponent = {}\ninputs = [{}]\nconfig = {{ mode = \"{mode}\" }}\n{extra}",
            toml_path(&component("hostile")),
            toml_path(&csv)
        ),
    )
    .unwrap();
    manifest.display().to_string()
}

#[test]
fn exit_codes_say_whether_retrying_can_help() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let cases = [
        ("fail", "", "failed on purpose"),
        ("panic", "", "panicked on purpose"),
        ("hog", "memory_mib = 16\n", "memory"),
        ("spin", "timeout_s = 0.5\n", "time"),
    ];
    for (mode, limits, says) in cases {
        let case = dir.path().join(mode);
        std::fs::create_dir_all(&case).unwrap();
        let manifest = hostile(&case, mode, &format!("[stage.h.limits]\n{limits}"));
        for engine in ["local", "process"] {
            let out =
                wasmpipe().args(["run", &manifest, "-q", "--engine", engine, "--store"]).arg(&store).output().unwrap();
            let (_, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(65), "{mode} on {engine}: a deterministic failure\n{stderr}");
            assert!(stderr.contains(says), "{mode} on {engine}: {stderr}");
        }
    }

    // A missing input object.
    let manifest = dir.path().join("missing.toml");
    std::fs::write(
        &manifest,
        format!(
            "version = 1\nname = \"m\"\n[stage.a]\ncomponent = {}\ninputs = [\"no-such.csv\"]\n",
            toml_path(&component("passthrough"))
        ),
    )
    .unwrap();
    let out =
        wasmpipe().arg("run").arg(&manifest).args(["--engine", "process", "--store"]).arg(&store).output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(stderr.contains("no-such.csv"), "{stderr}");

    // A task that is not there: `wasmpipe task` says so as JSON, code 70.
    let plan = dir.path().join("plan.json");
    let manifest = hostile(dir.path(), "pass", "");
    let (json, _) = ok(wasmpipe().args(["plan", &manifest, "--json"]).output().unwrap());
    std::fs::write(&plan, json).unwrap();
    let out = wasmpipe()
        .args(["task", "--stage", "h", "--task", "transform:99", "--plan"])
        .arg(&plan)
        .arg("--store")
        .arg(&store)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(70), "{stdout}\n{stderr}");
    let said: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(said["exit_code"], 70);
    assert!(said["error"].as_str().unwrap().contains("no task transform:99"), "{said}");
}

#[test]
fn a_store_that_keeps_failing_is_a_transient_failure() {
    let server = moto();
    // Every request answers 503; each is retried once.
    let proxy = fault_proxy(&server.endpoint, 1, 0, Duration::ZERO, 7);
    let dir = tempfile::tempdir().unwrap();
    let manifest = hostile(dir.path(), "pass", "");
    let store = server.url(&unique_prefix("transient"));
    for engine in ["local", "process"] {
        let out = wasmpipe()
            .envs(server.env())
            .env("AWS_ENDPOINT_URL", &proxy.endpoint)
            .env("AWS_ENDPOINT", &proxy.endpoint)
            .env("WASMPIPE_STORE_RETRIES", "1")
            .args(["run", &manifest, "-q", "--engine", engine, "--store", &store])
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(75), "{engine}: a transient failure\n{stderr}");
    }
    assert!(proxy.failed() > 0);
}

/// The outcome `wasmpipe task` printed.
fn outcome(out: Output) -> serde_json::Value {
    let (stdout, _) = ok(out);
    serde_json::from_str(stdout.trim()).unwrap()
}

#[test]
fn duplicate_attempts_of_a_task_leave_one_part_with_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let manifest = hostile(dir.path(), "random", "");
    let (json, _) = ok(wasmpipe().args(["plan", &manifest, "--json"]).output().unwrap());
    let plan = dir.path().join("plan.json");
    std::fs::write(&plan, json).unwrap();
    let task = || {
        let mut cmd = wasmpipe();
        cmd.args(["task", "--stage", "h", "--task", "transform:0", "--plan"])
            .arg(&plan)
            .arg("--store")
            .arg(&store)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    // Two attempts at once.
    let (a, b) = (task().spawn().unwrap(), task().spawn().unwrap());
    let (a, b) = (outcome(a.wait_with_output().unwrap()), outcome(b.wait_with_output().unwrap()));
    assert_eq!(a["task_id"], b["task_id"]);
    assert_eq!(a["objects"], b["objects"], "both attempts wrote the same objects, with the same checksums");
    let output = store.join("hostile/h");
    let parts = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".parquet"))
            .collect();
        v.sort();
        v
    };
    let written = parts(&output);
    assert_eq!(written.len(), 1, "{written:?}");
    let first_bytes = std::fs::read(output.join(&written[0])).unwrap();
    let records = std::fs::read_dir(output.join("_wasmpipe_tasks"))
        .unwrap()
        .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with("journal-"))
        .count();
    assert_eq!(records, 1, "one task record");

    // Again: the record says it is done.
    let again = outcome(task().output().unwrap());
    assert_eq!(again["resumed"], true);
    // Without its record, it runs again and writes the same bytes (the
    // stage draws random numbers, seeded from the task's identity).
    let record = output.join("_wasmpipe_tasks").join(a["task_id"].as_str().unwrap());
    std::fs::remove_file(record).unwrap();
    let rerun = outcome(task().output().unwrap());
    assert_eq!(rerun["resumed"], false);
    assert_eq!(rerun["objects"], a["objects"]);
    assert_eq!(std::fs::read(output.join(&written[0])).unwrap(), first_bytes);

    // The commit lists the part once.
    let (said, _) = ok(wasmpipe()
        .args(["commit", "--stage", "h", "--plan"])
        .arg(&plan)
        .arg("--store")
        .arg(&store)
        .output()
        .unwrap());
    assert!(said.contains("\"rows\":442"), "{said}");
    let commit: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output.join("_wasmpipe_commit.json")).unwrap()).unwrap();
    assert_eq!(commit["parts"].as_array().unwrap().len(), 1, "{commit}");
    assert_eq!(commit["parts"][0]["blake3"], a["objects"][0]["blake3"]);
    assert_eq!(commit["parts"][0]["blake3"].as_str(), Some(blake3::hash(&first_bytes).to_hex().as_str()));
    assert!(!output.join("_wasmpipe_tasks").exists(), "the commit cleans up its working directory");
    // A local run of the same pipeline finds it committed.
    let (stdout, _) = ok(wasmpipe().arg("run").arg(&manifest).arg("--store").arg(&store).output().unwrap());
    assert!(stdout.contains("committed"), "{stdout}");
}

/// Pids of `wasmpipe task` processes writing into `store`.
fn task_processes(store: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.get(1).is_some_and(|a| a == "task") && args.iter().any(|a| a == store) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn a_task_process_killed_with_sigkill_is_retried_and_the_run_equals_a_clean_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let manifest = "examples/diabetes/wasmpipe.toml";
    run(manifest, &store, "local");
    let clean = snapshot_dir(&store);
    std::fs::remove_dir_all(&store).unwrap();

    let mut driver = wasmpipe()
        .args(["run", manifest, "-p", "2", "-q", "--engine", "process", "--store"])
        .arg(&store)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let store_arg = store.display().to_string();
    let started = Instant::now();
    let mut killed = 0;
    while killed < 2 && started.elapsed() < Duration::from_secs(120) {
        if driver.try_wait().unwrap().is_some() {
            break;
        }
        for pid in task_processes(&store_arg).into_iter().take(1) {
            if Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success() {
                killed += 1;
                // Let the engine retry it before killing another.
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
    let out = driver.wait_with_output().unwrap();
    let (_, stderr) = ok(out);
    assert!(killed > 0, "no task process was seen to kill");
    assert!(stderr.contains("retrying"), "{stderr}");
    assert_same(&clean, &snapshot_dir(&store), "a run whose tasks were killed");
}

#[test]
fn task_processes_reach_the_store_through_the_manifests_storage_options() {
    let server = moto();
    let dir = tempfile::tempdir().unwrap();
    let manifest = hostile(dir.path(), "pass", "");
    // Where the server is comes from the manifest alone; the environment
    // holds only the credentials (which a manifest may not).
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text = text.replacen(
        "[stage.h]",
        &format!(
            "[storage.s3]\nendpoint = \"{}\"\nregion = \"{}\"\nallow_http = \"true\"\nvirtual_hosted_style_request = \"false\"\n[stage.h]",
            server.endpoint, server.region
        ),
        1,
    );
    std::fs::write(&manifest, text).unwrap();
    let store = server.url(&unique_prefix("options"));
    let mut cmd = wasmpipe();
    for (key, _) in server.env() {
        cmd.env_remove(key);
    }
    let out = cmd
        .env("AWS_ACCESS_KEY_ID", &server.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &server.secret_key)
        .args(["run", &manifest, "-q", "--engine", "process", "--store", &store])
        .output()
        .unwrap();
    let (stdout, _) = ok(out);
    assert!(stdout.contains("442"), "{stdout}");
}

#[test]
fn a_wide_fit_merges_along_one_tree_on_every_engine() {
    // 442 rows in row groups of 8: 56 partitions, a fit task each
    // (`fit_task_mib = 0`), so each fit pass merges in a tree (combine
    // tasks in groups of 16, then the merge).
    let dir = tempfile::tempdir().unwrap();
    let features = r#"["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]"#;
    let text = format!(
        "version = 1\nname = \"wide\"\n[defaults]\nbatch_rows = 8\nrow_group_rows = 8\nfit_task_mib = 0\n\
         [stage.ingest]\ncomponent = {}\ninputs = [{}]\n\
         [stage.scale]\ncomponent = {}\ninputs = [\"stage:ingest\"]\nconfig = {{ columns = {features} }}\n\
         [stage.fit]\ncomponent = {}\ninputs = [\"stage:scale\"]\nconfig = {{ features = {features}, target = \"target\" }}\n\
         [stage.evaluate]\ncomponent = {}\ninputs = [\"stage:fit\"]\nconfig = {{ target = \"target\" }}\n",
        toml_path(&component("passthrough")),
        toml_path(&repo().join("examples/diabetes/diabetes.csv")),
        toml_path(&component("scaler")),
        toml_path(&component("linreg")),
        toml_path(&component("evaluate")),
    );
    let manifest = dir.path().join("wasmpipe.toml");
    std::fs::write(&manifest, text).unwrap();
    let manifest = manifest.display().to_string();
    let store = dir.path().join("store");
    let local_out = run(&manifest, &store, "local");
    let local = snapshot_dir(&store);
    std::fs::remove_dir_all(&store).unwrap();

    // Stage by stage, as an engine elsewhere would: `prepare` says what
    // to run.
    let (url, _) = ok(wasmpipe().args(["plan", &manifest, "--publish"]).arg(&store).output().unwrap());
    let url = url.trim();
    ok(wasmpipe().args(["run", &manifest, "-q", "--engine", "process", "--store"]).arg(&store).output().unwrap());
    let (tasks, _) = ok(wasmpipe().args(["prepare", "--plan", url, "--stage", "scale"]).output().unwrap());
    let tasks: serde_json::Value = serde_json::from_str(tasks.trim()).unwrap();
    assert_eq!(tasks["partitions"], 56, "{tasks}");
    assert_eq!(tasks["fit_tasks"], 56, "{tasks}");
    assert_eq!(tasks["combine_levels"], serde_json::json!([4]), "{tasks}");
    assert_eq!(tasks["committed"], true, "{tasks}");
    assert_same(&local, &snapshot_dir(&store), "a fit over 56 partitions");
    // The same least-squares fit as the demo's 7 partitions.
    assert!(local_out.lines().any(|l| l == "r2 = 0.5177"), "{local_out}");
}

#[test]
fn a_deployed_plan_runs_from_a_directory_root_and_a_tampered_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    ok(wasmpipe().args(["deploy", "examples/diabetes/wasmpipe.toml", "--to"]).arg(&root).output().unwrap());
    let plan_file = root.join("deployments/diabetes/v1.plan.json");
    let plan = std::fs::read_to_string(&plan_file).unwrap();
    let from = root.display().to_string();
    let run = |engine: &str| {
        wasmpipe().args(["run", "diabetes", "-q", "--engine", engine, "--from", &from]).output().unwrap()
    };
    let (local_out, _) = ok(run("local"));
    assert!(root.join("data/diabetes/evaluate/_wasmpipe_commit.json").is_file(), "outputs go under ROOT/data");
    let local = snapshot_dir(&root.join("data"));
    std::fs::remove_dir_all(root.join("data")).unwrap();
    let (process_out, _) = ok(run("process"));
    assert_same(&local, &snapshot_dir(&root.join("data")), "a deployed pipeline");
    assert_eq!(
        local_out.lines().filter(|l| l.contains(" = ")).collect::<Vec<_>>(),
        process_out.lines().filter(|l| l.contains(" = ")).collect::<Vec<_>>()
    );

    // Whoever can write the root can write the plan: it is checked as a
    // manifest is. A component from elsewhere, an input outside the root
    // (spelt with `..`), an output outside the store: each is refused
    // before anything runs.
    let doc: serde_json::Value = serde_json::from_str(&plan).unwrap();
    let component = doc["stages"][0]["component"]["url"].as_str().unwrap().to_string();
    let input = doc["stages"][0]["inputs"][0]["url"].as_str().unwrap().to_string();
    let outside = dir.path().join("victim.wasm");
    std::fs::copy(root.join(component.trim_start_matches("file://")), &outside).unwrap();
    let tampered = [
        (plan.replace(&component, &format!("file://{}", outside.display())), "pinned by SHA-256"),
        (
            plan.replace(
                &input,
                &format!("{from}/inputs/../../../etc/passwd").replace(&from, &format!("file://{from}")),
            ),
            "`..`",
        ),
        (
            plan.replacen(
                "\"at\": \"store\",\n        \"path\": \"diabetes/ingest\"",
                &format!("\"at\": \"location\",\n        \"url\": \"file://{}/elsewhere\"", dir.path().display()),
                1,
            ),
            "may not write to",
        ),
    ];
    for (text, says) in tampered {
        assert_ne!(text, plan, "the tampering took: {says}");
        std::fs::write(&plan_file, &text).unwrap();
        for engine in ["local", "process"] {
            let out = run(engine);
            let (_, stderr) = text_of(&out);
            assert_eq!(out.status.code(), Some(65), "{says} on {engine}:\n{stderr}");
            assert!(stderr.contains(says), "{says} on {engine}:\n{stderr}");
        }
    }
}

fn text_of(out: &Output) -> (String, String) {
    text(out)
}

/// `kubernetes-validate --strict` (offline schemas) on `files`.
fn kubernetes_validate(files: &[String]) {
    let tool = repo().join(".tools/venv/bin/kubernetes-validate");
    assert!(tool.is_file(), "{} is missing: run scripts/install-test-deps.sh", tool.display());
    let out = Command::new(tool).arg("--strict").args(files).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "kubernetes-validate refused a rendered Job:\n{stdout}\n{stderr}");
}

/// `engines/k8s/apply.sh` on the deployed pipeline `demo` under `root`,
/// with `tests/fake-kubectl` standing in for `kubectl` (it runs each Job's
/// pods here, as the Job controller would); `env` on top.
fn apply_sh(demo: &str, root: &Path, state: &Path, env: &[(&str, &str)]) -> Output {
    let bin = state.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let kubectl = bin.join("kubectl");
    if !kubectl.exists() {
        std::os::unix::fs::symlink(repo().join("host/cli/tests/fake-kubectl"), &kubectl).unwrap();
    }
    let wasmpipe_dir = Path::new(env!("CARGO_BIN_EXE_wasmpipe")).parent().unwrap();
    let path = format!("{}:{}:{}", bin.display(), wasmpipe_dir.display(), std::env::var("PATH").unwrap());
    let mut cmd = Command::new(repo().join("engines/k8s/apply.sh"));
    cmd.args([demo, &root.display().to_string(), "registry.example/wasmpipe:test"])
        .current_dir(repo())
        .env("PATH", path)
        .env("FAKE_K8S_DIR", state)
        .env("WASMPIPE_K8S_POLL", "0")
        .env_remove("WASMPIPE_STORE")
        .env_remove("WASMPIPE_RUN_ID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn kubernetes_jobs_rendered_step_by_step_and_run_as_their_pods_would_equal_a_local_run() {
    for demo in ["diabetes", "wine"] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        ok(wasmpipe().args(["deploy", &format!("examples/{demo}/wasmpipe.toml"), "--to"]).arg(&root).output().unwrap());
        let from = root.display().to_string();
        ok(wasmpipe().args(["run", demo, "-q", "--from", &from]).output().unwrap());
        let local = snapshot_dir(&root.join("data"));
        let local_record = records(&root.join("data")).remove(0);
        std::fs::remove_dir_all(root.join("data")).unwrap();

        // As an operator runs it: render, apply each Job, wait, render again.
        let state = dir.path().join("k8s");
        let (_, stderr) = ok(apply_sh(demo, &root, &state, &[]));
        assert!(stderr.contains("every stage committed"), "{demo}:\n{stderr}");
        let mut applied: Vec<String> = std::fs::read_dir(state.join("applied"))
            .unwrap()
            .map(|e| e.unwrap().path().display().to_string())
            .collect();
        applied.sort();
        kubernetes_validate(&applied);
        let mut pods = 0;
        for file in &applied {
            let job: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
            assert_eq!(job["spec"]["completionMode"], "Indexed");
            assert_eq!(job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"][0], 65);
            let command = &job["spec"]["template"]["spec"]["containers"][0]["command"];
            assert_eq!(command[0], "wasmpipe");
            assert!(command.as_array().unwrap().iter().any(|a| a == "--run-id"), "{file}: every pod names the run");
            pods += job["spec"]["completions"].as_u64().unwrap();
        }
        assert!(pods > 50, "{demo}: {pods} pods");
        assert_same(&local, &snapshot_dir(&root.join("data")), &format!("{demo} as Kubernetes Jobs"));

        // The run is recorded as a local run is: the same stages, tasks,
        // rows and reports, and the page beside it.
        let kept = records(&root.join("data"));
        assert_eq!(kept.len(), 1, "{demo}: one record");
        let k8s = &kept[0];
        assert_eq!((k8s["engine"].as_str(), k8s["status"].as_str()), (Some("k8s"), Some("succeeded")), "{k8s}");
        assert_eq!(k8s["plan_sha256"], local_record["plan_sha256"]);
        let (ours, theirs) = (k8s["stages"].as_array().unwrap(), local_record["stages"].as_array().unwrap());
        assert_eq!(ours.len(), theirs.len());
        for (ours, theirs) in ours.iter().zip(theirs) {
            assert_eq!(stage_said(ours), stage_said(theirs), "{demo}: the stage's record");
        }
        let run_id = k8s["run_id"].as_str().unwrap();
        assert!(run_id.starts_with("k8s-"), "{run_id}");
        let page = root.join("data/_runs").join(run_id).join("report.html");
        let html = std::fs::read_to_string(&page).unwrap();
        assert!(html.contains(run_id) && html.contains("k8s"), "the report names the run and its engine");
    }
}

#[test]
fn a_kubernetes_run_that_fails_is_recorded_with_its_task_s_error_and_resumes_under_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    ok(wasmpipe().args(["deploy", "examples/diabetes/wasmpipe.toml", "--to"]).arg(&root).output().unwrap());
    let state = dir.path().join("k8s");
    let store = root.join("data");
    let run = [("WASMPIPE_RUN_ID", "k8s-nightly")];

    // A task that fails as a bug would (exit 65): its Job fails, apply.sh
    // stops, and the record names the stage, the task and its own error.
    let out = apply_sh("diabetes", &root, &state, &[run[0], ("FAKE_K8S_BREAK", "predict-test-transform")]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let failed = records(&store).remove(0);
    assert_eq!((failed["run_id"].as_str(), failed["status"].as_str()), (Some("k8s-nightly"), Some("failed")));
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with("stage \"predict_test\", transform:0: ") && error.contains("hashes to"),
        "the task's own error comes first: {error}"
    );
    assert!(error.contains("Kubernetes Job wp-diabetes-predict-test-transform-"), "then the engine's: {error}");
    let stages = failed["stages"].as_array().unwrap();
    let last = stages.last().unwrap();
    assert_eq!((last["name"].as_str(), last["status"].as_str()), (Some("predict_test"), Some("failed")));
    assert!(stages[..stages.len() - 1].iter().all(|s| s["status"] == "ran"), "{stages:?}");
    assert!(stages.iter().any(|s| s["name"] == "fit_train" && s["tasks"].as_array().unwrap().len() > 1));

    // The same run id resumes: only what is left runs, and the record is
    // replaced by the whole run's, with the failed attempt as a warning.
    let (_, stderr) = ok(apply_sh("diabetes", &root, &state, &run));
    assert!(stderr.contains("every stage committed (run k8s-nightly)"), "{stderr}");
    let kept = records(&store);
    assert_eq!(kept.len(), 1, "one run, one record");
    assert_eq!(kept[0]["status"], "succeeded", "{}", kept[0]);
    assert!(kept[0].get("error").is_none());
    let warnings = kept[0]["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w["label"] == "predict_test[transform:0 pass 0]"
            && w["message"].as_str().unwrap().contains("failed (exit 65) and was retried")),
        "{warnings:?}"
    );

    // A pod killed before it keeps anything (out of memory): the record
    // says which Job failed, and that the stage's tasks were not done.
    let out = apply_sh("diabetes", &root, &state, &[("WASMPIPE_RUN_ID", "k8s-killed"), ("FAKE_K8S_KILL", "-")]);
    assert_eq!(out.status.code(), Some(0), "every stage was committed already: nothing to apply");
    let again = records(&store).into_iter().find(|r| r["run_id"] == "k8s-killed").unwrap();
    assert_eq!(again["status"], "succeeded");
    assert!(again["stages"].as_array().unwrap().iter().all(|s| s["committed_by"] == "k8s-nightly"), "{again}");
    std::fs::remove_dir_all(&store).unwrap();
    let out =
        apply_sh("diabetes", &root, &state, &[("WASMPIPE_RUN_ID", "k8s-killed"), ("FAKE_K8S_KILL", "validate-fit")]);
    assert_eq!(out.status.code(), Some(1));
    let killed = records(&store).remove(0);
    assert_eq!((killed["run_id"].as_str(), killed["status"].as_str()), (Some("k8s-killed"), Some("failed")));
    let error = killed["error"].as_str().unwrap();
    assert!(error.starts_with("Kubernetes Job wp-diabetes-validate-fit-p0-"), "{error}");
    let stages = killed["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "ingest ran, validate failed: {stages:?}");
    assert_eq!((stages[1]["name"].as_str(), stages[1]["status"].as_str()), (Some("validate"), Some("failed")));
}

/// A task's attempt, kept with `--run-id`, says what went wrong when the
/// task fails; a run id that cannot name a directory is refused.
#[test]
fn a_task_keeps_its_attempt_for_the_run_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let manifest = "examples/diabetes/wasmpipe.toml";
    let (url, _) = ok(wasmpipe().args(["plan", manifest, "--publish"]).arg(&store).output().unwrap());
    let url = url.trim();
    let task = |task: &str, run_id: &str| {
        wasmpipe()
            .args(["task", "--plan", url, "--stage", "ingest", "--task", task, &format!("--run-id={run_id}")])
            .output()
            .unwrap()
    };
    let out = task("transform:999", "r1");
    assert_eq!(out.status.code(), Some(70), "{}", text(&out).1);
    let out = task("transform:0", "r1");
    ok(out);
    let dir_of = store.join("_runs/r1/tasks/ingest");
    let mut kept: Vec<serde_json::Value> = std::fs::read_dir(&dir_of)
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    kept.sort_by_key(|a| a["task"].as_str().unwrap().len());
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!((kept[0]["task"].as_str(), kept[0]["exit_code"].as_u64()), (Some("transform:0"), Some(0)));
    assert_eq!(kept[0]["outcome"]["rows_out"], 442);
    assert_eq!((kept[1]["task"].as_str(), kept[1]["exit_code"].as_u64()), (Some("transform:999"), Some(70)));
    assert!(kept[1]["error"].as_str().unwrap().contains("999"), "{}", kept[1]);
    assert!(kept[1].get("outcome").is_none());

    // The record of a run whose first stage did not commit: the task that
    // failed is why, and the one that was done is kept.
    let collect = |run_id: &str| {
        let (said, _) = ok(wasmpipe()
            .args(["record", "--plan", url, "--collect", run_id, "--engine", "by-hand"])
            .output()
            .unwrap());
        assert!(said.contains(&format!("_runs/{run_id}/run.json")), "{said}");
        records(&store).into_iter().find(|r| r["run_id"] == run_id).unwrap()
    };
    let r1 = collect("r1");
    assert_eq!((r1["engine"].as_str(), r1["status"].as_str()), (Some("by-hand"), Some("failed")));
    assert!(r1["error"].as_str().unwrap().starts_with("stage \"ingest\", transform:999: "), "{r1}");
    assert_eq!(r1["stages"][0]["tasks"].as_array().unwrap().len(), 1, "the task that was done");
    // No task failed, but the stage was not committed: the engine stopped.
    ok(task("transform:0", "r2"));
    let r2 = collect("r2");
    assert!(r2["error"].as_str().unwrap().starts_with("stage \"ingest\" was not committed"), "{r2}");

    // What does not belong to the run is named in its record and left
    // out: an attempt kept under another stage's folder, one of another
    // plan; a run id no task kept anything for is refused.
    let kept_r2: Vec<std::path::PathBuf> =
        std::fs::read_dir(store.join("_runs/r2/tasks/ingest")).unwrap().map(|e| e.unwrap().path()).collect();
    let attempt = std::fs::read_to_string(&kept_r2[0]).unwrap();
    std::fs::create_dir_all(store.join("_runs/r2/tasks/clean")).unwrap();
    std::fs::write(store.join("_runs/r2/tasks/clean/moved.json"), &attempt).unwrap();
    let mut other: serde_json::Value = serde_json::from_str(&attempt).unwrap();
    other["plan_sha256"] = "ab".repeat(32).into();
    std::fs::write(store.join("_runs/r2/tasks/ingest/other.json"), other.to_string()).unwrap();
    let r2 = collect("r2");
    assert_eq!(r2["stages"][0]["tasks"].as_array().unwrap().len(), 1, "{r2}");
    let warnings = r2["warnings"].to_string();
    assert!(
        warnings.contains("moved.json: it names stage \\\"ingest\\\" but is kept under \\\"clean\\\""),
        "{warnings}"
    );
    assert!(warnings.contains("1 attempts kept under run r2 ran another plan"), "{warnings}");
    let out = wasmpipe().args(["record", "--plan", url, "--collect", "ghost"]).output().unwrap();
    assert_eq!(out.status.code(), Some(65));
    assert!(text(&out).1.contains("no task kept an attempt of this plan for run ghost"), "{}", text(&out).1);

    for bad in ["../x", "a/b", "", "-x"] {
        let out = task("transform:0", bad);
        assert_eq!(out.status.code(), Some(65), "{bad:?}: {}", text(&out).1);
        assert!(text(&out).1.contains("is not a run id"), "{bad:?}");
    }
}

/// Drive `stages` of the plan at `url` through `prepare`, `task` and
/// `commit` (with `run_id`), as an engine elsewhere does; each stage's
/// entry of the run log `wasmpipe record` reads.
fn drive_by_hand(url: &str, store: &Path, run_id: &str, stages: &[String]) -> Vec<serde_json::Value> {
    let mut logs = Vec::new();
    for stage in stages {
        let started = Instant::now();
        let (tasks, _) = ok(wasmpipe().args(["prepare", "--plan", url, "--stage", stage]).output().unwrap());
        let tasks: serde_json::Value = serde_json::from_str(tasks.trim()).unwrap();
        let count = |key: &str| tasks[key].as_u64().unwrap();
        let task = |task: &str, pass: u64| {
            let mut cmd = wasmpipe();
            cmd.args(["task", "--plan", url, "--stage", stage, "--task", task, "--pass", &pass.to_string(), "--store"]);
            outcome(cmd.arg(store).output().unwrap())
        };
        let mut outcomes = Vec::new();
        if tasks["committed"] != true && count("fit_tasks") > 0 {
            for pass in 0..count("max_passes") {
                outcomes.extend((0..count("fit_tasks")).map(|i| task(&format!("fit:{i}"), pass)));
                for (level, groups) in tasks["combine_levels"].as_array().unwrap().iter().enumerate() {
                    outcomes.extend(
                        (0..groups.as_u64().unwrap()).map(|g| task(&format!("combine:{}:{g}", level + 1), pass)),
                    );
                }
                let merged = task("merge", pass);
                let done = merged["fit"]["step"] == "done";
                outcomes.push(merged);
                if done {
                    break;
                }
            }
        }
        if tasks["committed"] != true {
            outcomes.extend((0..count("transform_tasks")).map(|i| task(&format!("transform:{i}"), 0)));
        }
        let mut commit = wasmpipe();
        commit.args(["commit", "--plan", url, "--stage", stage, "--run-id", run_id, "--store"]);
        ok(commit.arg(store).output().unwrap());
        logs.push(serde_json::json!({"name": stage, "seconds": started.elapsed().as_secs_f64(), "outcomes": outcomes}));
    }
    logs
}

/// `wasmpipe record` with `log` on stdin.
fn record(url: &str, store: &Path, log: &serde_json::Value) -> Output {
    use std::io::Write;
    let mut child = wasmpipe()
        .args(["record", "--plan", url, "--store"])
        .arg(store)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(log.to_string().as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// The run records kept under `store`, newest first.
fn records(store: &Path) -> Vec<serde_json::Value> {
    let (json, _) = ok(wasmpipe().args(["runs", "--json", "--store"]).arg(store).output().unwrap());
    serde_json::from_str(&json).unwrap()
}

/// What a stage's record says that must not depend on the engine (the
/// bytes read do: a local run's later passes read from its cache).
fn stage_said(stage: &serde_json::Value) -> serde_json::Value {
    let mut said = stage.clone();
    let fields = said.as_object_mut().unwrap();
    for varying in ["seconds", "output", "committed_by", "bytes_read"] {
        fields.remove(varying);
    }
    let tasks = fields.remove("tasks").unwrap();
    fields.insert("tasks".into(), serde_json::json!(tasks.as_array().unwrap().len()));
    said
}

#[test]
fn a_run_another_engine_drove_is_recorded_as_a_local_run_is() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = "examples/diabetes/wasmpipe.toml";
    let local_store = dir.path().join("local");
    run(manifest, &local_store, "local");
    let local = records(&local_store).remove(0);
    let stages: Vec<String> =
        local["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect();

    // Every stage through the task contract, then the record of it.
    let store = dir.path().join("store");
    let (url, _) = ok(wasmpipe().args(["plan", manifest, "--publish"]).arg(&store).output().unwrap());
    let url = url.trim();
    let started_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let logs = drive_by_hand(url, &store, "1800000000-outside", &stages);
    let log = serde_json::json!({"run_id": "1800000000-outside", "engine": "outside", "started_ms": started_ms, "stages": logs});
    let (said, _) = ok(record(url, &store, &log));
    let said: serde_json::Value = serde_json::from_str(said.trim()).unwrap();
    let kept = records(&store);
    assert_eq!(kept.len(), 1, "one record");
    let outside = &kept[0];
    assert_eq!((outside["run_id"].as_str(), outside["engine"].as_str()), (Some("1800000000-outside"), Some("outside")));
    assert_eq!((outside["status"].as_str(), &outside["plan_sha256"]), (Some("succeeded"), &local["plan_sha256"]));
    for (ours, theirs) in outside["stages"].as_array().unwrap().iter().zip(local["stages"].as_array().unwrap()) {
        assert_eq!(stage_said(ours), stage_said(theirs), "the stage's record");
    }
    let page = said["report"].as_str().unwrap().strip_prefix("file://").unwrap().to_string();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("1800000000-outside") && html.contains("r2"), "the report names the run and its metrics");

    // A run that failed in its last stage: that stage is the failed one.
    let mut failed = log.clone();
    failed["run_id"] = "1800000001-outside".into();
    failed["stages"].as_array_mut().unwrap().pop();
    failed["error"] = "stage \"evaluate\", task transform:0 failed: on purpose".into();
    ok(record(url, &store, &failed));
    let kept = records(&store);
    let failed = kept.iter().find(|r| r["run_id"] == "1800000001-outside").unwrap();
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"].as_str().unwrap().contains("on purpose"), "{failed}");
    let last = failed["stages"].as_array().unwrap().last().unwrap();
    assert_eq!(
        (&last["name"], &last["status"]),
        (&serde_json::json!(stages.last().unwrap()), &serde_json::json!("failed"))
    );

    // Logs that cannot be a run of this plan: refused, the records as they were.
    let refused = |bad: serde_json::Value, why: &str| {
        let out = record(url, &store, &bad);
        assert_eq!(out.status.code(), Some(65), "{why}: {:?}", text(&out));
        assert!(text(&out).0.contains(why), "{why}: {:?}", text(&out));
    };
    let mut reversed = log.clone();
    reversed["run_id"] = "1800000002-outside".into();
    reversed["stages"].as_array_mut().unwrap().reverse();
    refused(reversed, "not the plan's first stages in its order");
    let mut short = log.clone();
    short["run_id"] = "1800000003-outside".into();
    short["stages"].as_array_mut().unwrap().pop();
    refused(short, "the log says the run succeeded");
    let mut stray = log.clone();
    stray["run_id"] = "1800000004-outside".into();
    let moved = stray["stages"][1]["outcomes"][0].clone();
    stray["stages"][0]["outcomes"].as_array_mut().unwrap().push(moved);
    refused(stray, "is listed under stage");
    let mut taken = log.clone();
    taken["run_id"] = local["run_id"].clone();
    let out = record(url, &store, &taken);
    assert!(out.status.success(), "another store's run id is free here: {:?}", text(&out));
    taken["engine"] = "other".into();
    refused(taken, "is recorded already, by the outside engine");
    assert_eq!(records(&store).len(), 3, "refused logs keep nothing");

    // A log that calls a stage committed when nothing is: refused, nothing kept.
    let empty = dir.path().join("empty");
    let (url, _) = ok(wasmpipe().args(["plan", manifest, "--publish"]).arg(&empty).output().unwrap());
    let out = record(url.trim(), &empty, &log);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(65), "{stdout}\n{stderr}");
    assert!(stdout.contains("holds no commit of this plan"), "{stdout}");
    assert!(records(&empty).is_empty(), "no record kept");
    // A run id that is not one directory name: refused.
    let mut climbing = log.clone();
    climbing["run_id"] = "../../outside".into();
    let out = record(url.trim(), &empty, &climbing);
    assert_eq!(out.status.code(), Some(65), "{:?}", text(&out));
    assert!(text(&out).0.contains("is not a run id"), "{:?}", text(&out));
    // A malformed log names what it expected.
    let out = record(url.trim(), &empty, &serde_json::json!({"run_id": "x"}));
    assert!(!out.status.success() && text(&out).1.contains("run log"), "{}", text(&out).1);
}
