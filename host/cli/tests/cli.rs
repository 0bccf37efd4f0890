//! The `wasmpipe` binary, driven as a user would: `run` on the demo,
//! `build` on a stage crate, and a bad manifest.

use std::process::Command;

use wasmpipe_tests::repo;

fn wasmpipe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wasmpipe"))
}

#[test]
fn the_binary_runs_the_demo_and_prints_the_summary() {
    let store = tempfile::tempdir().unwrap();
    let out = wasmpipe()
        .args(["run", "examples/diabetes/wasmpipe.toml", "--parallelism", "2", "--store"])
        .arg(store.path())
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.lines().any(|l| l == "r2 = 0.5177"), "{stdout}");
    for header in ["stage", "tasks", "rows in", "rows out", "read", "written", "time"] {
        assert!(stdout.contains(header), "summary lacks {header:?}:\n{stdout}");
    }
    assert!(stderr.contains("[clean[0]] kept 64 of 64 rows"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "no colour codes into a pipe:\n{stderr:?}");
    assert!(store.path().join("diabetes/evaluate/_wasmpipe_commit.json").is_file());

    // The run is recorded, and `wasmpipe runs` lists and shows it.
    let run_id = stdout.lines().find_map(|l| l.strip_prefix("run ")?.split(' ').next()).unwrap().to_string();
    let runs = wasmpipe().args(["runs", "--store"]).arg(store.path()).output().unwrap();
    let listed = String::from_utf8_lossy(&runs.stdout);
    assert!(runs.status.success() && listed.contains(&run_id) && listed.contains("succeeded"), "{listed}");
    let one = wasmpipe().args(["runs", &run_id[..8], "--store"]).arg(store.path()).output().unwrap();
    let shown = String::from_utf8_lossy(&one.stdout);
    assert!(one.status.success() && shown.contains(&format!("run      {run_id}")), "{shown}");
    for stage in ["ingest", "validate", "clean", "fit", "evaluate"] {
        assert!(shown.contains(stage), "{stage} missing from\n{shown}");
    }
    let missing = wasmpipe().args(["runs", "nope", "--store"]).arg(store.path()).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no run \"nope\""));
}

#[test]
fn wasmpipe_build_prints_path_size_and_hash_of_a_component() {
    let out = wasmpipe().args(["build", "stages/passthrough"]).current_dir(repo()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let mut lines = stdout.lines();
    let path = std::path::PathBuf::from(lines.next().unwrap());
    let bytes = std::fs::read(&path).unwrap();
    assert!(wasmparser_is_component(&bytes), "{} is not a component", path.display());
    assert_eq!(lines.next().unwrap(), format!("size   {} bytes", bytes.len()));
    let hash = lines.next().unwrap().strip_prefix("sha256 ").unwrap();
    assert_eq!(hash.len(), 64);
}

/// A component's preamble: magic, then version 0x0d with layer 1.
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() > 8 && &bytes[0..4] == b"\0asm" && bytes[4..8] == [0x0d, 0x00, 0x01, 0x00]
}
#[test]
fn the_binary_reports_a_bad_manifest_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("wasmpipe.toml");
    std::fs::write(&manifest, "version = 1\nname = \"x\"\n[stage.a]\ncomponent = \"a.wasm\"\ninput = [\"x.csv\"]\n")
        .unwrap();
    let out = wasmpipe().arg("run").arg(&manifest).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("wasmpipe.toml") && stderr.contains("unknown field `input`"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = wasmpipe().args(["run", "/no/such/wasmpipe.toml"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot read manifest /no/such/wasmpipe.toml"), "{stderr}");
}

#[test]
fn wasmpipe_gen_writes_the_same_data_for_the_same_seed() {
    let dir = tempfile::tempdir().unwrap();
    let generate = |name: &str, seed: &str| {
        let out = wasmpipe()
            .args(["gen", "classification", "--rows", "70000", "--features", "3", "--classes", "3"])
            .args(["--row-group-rows", "20000", "--seed", seed, "--out"])
            .arg(dir.path().join(name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read(dir.path().join(name)).unwrap()
    };
    let (a, b, c) = (generate("a.parquet", "7"), generate("b.parquet", "7"), generate("c.parquet", "8"));
    assert_eq!(a, b, "same seed, same bytes");
    assert_ne!(a, c, "another seed, other data");
    let reader =
        parquet::file::reader::SerializedFileReader::new(std::fs::File::open(dir.path().join("a.parquet")).unwrap())
            .unwrap();
    use parquet::file::reader::FileReader;
    let meta = reader.metadata();
    assert_eq!(meta.file_metadata().num_rows(), 70_000);
    assert_eq!(meta.num_row_groups(), 4, "row groups of 20000: the partitions");
    let names: Vec<&str> = meta.file_metadata().schema_descr().columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["f0", "f1", "f2", "target"]);
}

#[test]
fn completions_and_man_pages_are_generated_for_every_command() {
    let commands = ["run", "plan", "prepare", "task", "commit", "render", "build", "deploy", "models", "gen"];
    let text = |args: &[&str]| {
        let out = wasmpipe().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = text(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("wasmpipe.bash");
    std::fs::write(&script, &bash).unwrap();
    let check = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(check.status.success(), "bash rejects the script: {}", String::from_utf8_lossy(&check.stderr));
    // Sourced, it completes the commands, and the options of `run`.
    let complete = |words: &str, cword: usize, cur: &str, prev: &str| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; _wasmpipe wasmpipe '{cur}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                script.display()
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect::<Vec<_>>()
    };
    let replies = complete("wasmpipe run --log", 2, "--log", "run");
    assert!(replies.iter().any(|l| l == "--log-format"), "completing `run --log`: {replies:?}");
    let replies = complete("wasmpipe ''", 1, "", "wasmpipe");
    for c in commands {
        assert!(replies.iter().any(|l| l == c), "completing `wasmpipe `: no {c} in {replies:?}");
    }
    assert!(text(&["completions", "zsh"]).starts_with("#compdef wasmpipe"));
    let fish = text(&["completions", "fish"]);
    assert!(fish.contains("complete -c wasmpipe") && fish.contains("-l log-format"), "{fish}");

    let man = text(&["man"]);
    assert!(man.contains(".TH wasmpipe 1") && man.contains(".SH NAME") && man.contains(".SH SUBCOMMANDS"), "{man}");
    for c in commands {
        assert!(man.contains(&format!("wasmpipe\\-{c}(1)")), "the page lacks {c}");
    }
    let pages = dir.path().join("man");
    text(&["man", "--dir", pages.to_str().unwrap()]);
    for c in commands {
        let page = std::fs::read_to_string(pages.join(format!("wasmpipe-{c}.1"))).unwrap();
        assert!(page.contains(&format!(".TH wasmpipe-{c} 1")), "{page}");
    }
}

#[test]
fn logs_are_json_lines_with_log_format_json_and_colour_follows_color() {
    let store = tempfile::tempdir().unwrap();
    let out = wasmpipe()
        .args(["run", "examples/diabetes/wasmpipe.toml", "--parallelism", "2", "--log-format", "json", "--store"])
        .arg(store.path())
        .current_dir(repo())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect();
    for line in &lines {
        assert!(line["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
        assert!(["debug", "info", "warn", "error"].contains(&line["level"].as_str().unwrap()), "{line}");
        assert!(line["message"].is_string(), "{line}");
    }
    let kept = lines
        .iter()
        .find(|l| l["stage"] == "clean" && l["message"].as_str().unwrap().starts_with("kept"))
        .expect("the clean stage's log");
    assert_eq!(kept["task"], format!("transform:{}", kept["partition"]), "{kept}");
    assert!(lines.iter().any(|l| l["task"] == "merge" && l["message"] == "r2 = 0.5177"), "{stderr}");

    // A failed run's error is a JSON line too, whatever WASMPIPE_LOG filters.
    let out = wasmpipe()
        .args(["run", "--log-format", "json", "no-such-manifest.toml"])
        .env("WASMPIPE_LOG", "off")
        .output()
        .unwrap();
    let err: serde_json::Value = serde_json::from_slice(out.stderr.trim_ascii()).unwrap();
    assert_eq!(err["level"], "error");
    assert!(err["message"].as_str().unwrap().contains("no-such-manifest.toml"), "{err}");

    for (choice, colored) in [("always", true), ("never", false)] {
        let store = tempfile::tempdir().unwrap();
        let out = wasmpipe()
            .args(["--color", choice, "run", "examples/diabetes/wasmpipe.toml", "--store"])
            .arg(store.path())
            .current_dir(repo())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(stderr.contains('\x1b'), colored, "--color {choice}: {stderr:?}");
    }
}

#[test]
fn off_a_terminal_progress_is_a_status_line_now_and_then_and_quiet_hides_it() {
    let run = |extra: &[&str], interval: &str| {
        let store = tempfile::tempdir().unwrap();
        let out = wasmpipe()
            .args(["run", "examples/diabetes/wasmpipe.toml", "--parallelism", "2"])
            .args(extra)
            .arg("--store")
            .arg(store.path())
            .env("WASMPIPE_PROGRESS_INTERVAL_S", interval)
            .current_dir(repo())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        stderr.lines().filter(|l| l.starts_with("progress: ")).map(str::to_string).collect::<Vec<_>>()
    };
    // Every task, with an interval of 0: the stage, its round, tasks done
    // of the round, and the rates.
    let lines = run(&[], "0");
    assert!(lines.iter().any(|l| l.starts_with("progress: clean transform: 7/7 tasks, ")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.starts_with("progress: fit fit pass 0: 1/1 tasks, ")), "{lines:#?}");
    assert!(lines.iter().all(|l| l.contains(" rows/s, ") && l.ends_with("/s")), "{lines:#?}");
    // A short run under the default interval prints none; -q none at all.
    assert!(run(&[], "10").is_empty());
    assert!(run(&["-q"], "0").is_empty());
}

#[test]
fn on_a_terminal_a_run_draws_a_bar_per_stage_with_the_logs_above_it() {
    // `script` (util-linux) runs the binary on a pseudo-terminal.
    let store = tempfile::tempdir().unwrap();
    let command = format!(
        "{} run examples/diabetes/wasmpipe.toml --parallelism 2 --store {}",
        env!("CARGO_BIN_EXE_wasmpipe"),
        store.path().display()
    );
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .current_dir(repo())
        .output()
        .expect("script (util-linux) runs");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    // (The logs are coloured on a terminal: `\x1b[2m[clean[0]]\x1b[0m kept ...`.)
    for drawn in ["tasks · fit pass 0 · ", "tasks · transform · ", " rows/s, ", "[clean[0]]\x1b[0m kept 64 of 64 rows"]
    {
        assert!(screen.contains(drawn), "the terminal shows no {drawn:?}:\n{screen}");
    }
    assert!(screen.contains("r2 = 0.5177"), "{screen}");
}

#[test]
fn wasmpipe_show_prints_schema_rows_lineage_quarantine_and_the_first_rows() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.csv"), "a,b\n1,2\n3,x\n5,6\n7,8\n").unwrap();
    let manifest = dir.path().join("wasmpipe.toml");
    std::fs::write(
        &manifest,
        format!(
            "version = 1\nname = \"t\"\n[stage.ingest]\ncomponent = {:?}\ninputs = [\"data.csv\"]\nschema = {{ a = \"int64\", b = \"int64\" }}\n",
            repo().join("stages/passthrough").display().to_string()
        ),
    )
    .unwrap();
    let store = dir.path().join("store");
    let out = wasmpipe().arg("run").arg(&manifest).arg("--store").arg(&store).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let output = store.join("t/ingest");

    let out = wasmpipe().arg("show").arg(&output).args(["--rows", "2"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("  rows 3 in 1 file(s), 1 partition(s)"), "{text}");
    assert!(text.contains("of pipeline \"t\", stage \"ingest\""), "{text}");
    assert!(text.contains("input file://") && text.contains("data.csv"), "{text}");
    assert!(text.contains("quarantined 1 rows"), "{text}");
    assert!(text.lines().any(|l| l.trim_start().starts_with("1  ") && l.contains("b")), "a reason line:\n{text}");
    assert!(text.contains("  a                        Int64"), "{text}");
    assert!(text.contains("first 2 rows:") && text.contains("| 1 | 2 |") && text.contains("| 5 | 6 |"), "{text}");
    assert!(!text.contains("| 7 | 8 |"), "{text}");

    let out = wasmpipe().arg("show").arg(&output).arg("--json").output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["rows"], 3);
    assert_eq!(doc["quarantine"]["rows"], 1);
    assert_eq!(doc["head"].as_array().unwrap().len(), 3, "{doc}");
    assert_eq!(doc["head"][2], serde_json::json!({"a": 7, "b": 8}));
    assert_eq!(doc["schema"][1]["name"], "b");
    assert_eq!(doc["commit"]["stage"], "ingest");

    // An aggregator's output: its report.
    let demo = tempfile::tempdir().unwrap();
    let out = wasmpipe()
        .args(["run", "-q", "examples/diabetes/wasmpipe.toml", "--store"])
        .arg(demo.path())
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = wasmpipe().arg("show").arg(demo.path().join("diabetes/evaluate")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("report:") && text.contains("\"r2\": 0.5177"), "{text}");
    // The column selector of the demo's fit, resolved and recorded.
    let out = wasmpipe().arg("show").arg(demo.path().join("diabetes/fit")).args(["--rows", "0"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("config features selected 10 column(s): age, sex, bmi, bp, s1, s2, s3, s4, s5, s6\n"),
        "{text}"
    );
    // Whatever reads `show` may stop reading (`| head`): it ends quietly.
    let mut child = wasmpipe()
        .arg("show")
        .arg(demo.path().join("diabetes/fit"))
        .args(["--rows", "400"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");

    let out = wasmpipe().arg("show").arg(store.join("t/nothing")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("t/nothing") && err.contains("no such file or object"), "{err}");
}

#[test]
fn wasmpipe_new_scaffolds_each_kind_of_stage_that_builds_tests_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    // One target directory for the three crates (and their tests), so the
    // SDK is compiled once per architecture.
    let target = dir.path().join("target");
    let expected = [
        ("transformer", "clip", "clip[0]"),
        ("estimator", "center", "means: ["),
        ("aggregator", "summary", "y: 40 rows, mean"),
    ];
    for (kind, name, logged) in expected {
        let out = wasmpipe().args(["new", kind, name, "--dir"]).arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let root = dir.path().join(name);
        for file in ["Cargo.toml", "src/lib.rs", "wasmpipe.toml", "README.md", "data/sample.csv"] {
            assert!(root.join(file).is_file(), "{kind}: no {file}");
        }
        // The sample pipeline builds the crate and runs it.
        let store = dir.path().join(format!("store-{name}"));
        let out = wasmpipe()
            .args(["run", "-v", "wasmpipe.toml", "--store"])
            .arg(&store)
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(&root)
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{kind}: {stdout}\n{stderr}");
        assert!(stderr.contains(logged) || stdout.contains(logged), "{kind}: no {logged:?} in\n{stdout}\n{stderr}");
        let committed = store.join(name).join(name).join("_wasmpipe_commit.json");
        assert!(committed.is_file(), "{kind}: nothing committed");
        // Its unit test passes, natively.
        let test = Command::new("cargo")
            .args(["test", "--quiet", "--manifest-path"])
            .arg(root.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(test.status.success(), "{kind}: cargo test failed:\n{}", String::from_utf8_lossy(&test.stderr));
        assert!(String::from_utf8_lossy(&test.stdout).contains("test result: ok"), "{kind}: no tests ran");
    }
    // The transformer clipped x into [0, 1]; the estimator centred x and y.
    let out = wasmpipe()
        .arg("show")
        .arg(dir.path().join("store-clip/clip/clip"))
        .args(["--json", "--rows", "40"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let xs: Vec<f64> = doc["head"].as_array().unwrap().iter().map(|r| r["x"].as_f64().unwrap()).collect();
    assert_eq!(xs.len(), 40);
    assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)) && xs.contains(&0.0) && xs.contains(&1.0), "{xs:?}");
    let out = wasmpipe()
        .arg("show")
        .arg(dir.path().join("store-center/center/center"))
        .args(["--json", "--rows", "40"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mean: f64 = doc["head"].as_array().unwrap().iter().map(|r| r["y"].as_f64().unwrap()).sum::<f64>() / 40.0;
    assert!(mean.abs() < 1e-12, "centred y has mean {mean}");

    // A name taken, a bad name, and an SDK that is not one are errors.
    let again = wasmpipe().args(["new", "transformer", "clip", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let bad = wasmpipe().args(["new", "transformer", "9lives", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("not a stage name"));
    let nosdk = wasmpipe()
        .args(["new", "aggregator", "other", "--dir"])
        .arg(dir.path())
        .arg("--sdk")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!nosdk.status.success() && String::from_utf8_lossy(&nosdk.stderr).contains("is not the stage SDK"));
    assert!(!dir.path().join("other").exists());
}

#[test]
fn wasmpipe_new_python_scaffolds_each_kind_that_builds_tests_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let expected = [
        ("transformer", "clip", "clipping 'x' into [0.0, 1.0]"),
        ("estimator", "center", "means: ["),
        ("aggregator", "summary", "y: 40 rows, mean"),
    ];
    // The three kinds build (componentize-py, then Cranelift) side by side.
    std::thread::scope(|scope| {
        for (kind, name, logged) in expected {
            let dir = dir.path();
            scope.spawn(move || {
                let out = wasmpipe().args(["new", "--python", kind, name, "--dir"]).arg(dir).output().unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                let root = dir.join(name);
                for file in ["pyproject.toml", "app.py", "test_app.py", "wasmpipe.toml", "README.md", "data/sample.csv"]
                {
                    assert!(root.join(file).is_file(), "{kind}: no {file}");
                }
                // The sample pipeline builds the stage (componentize-py) and runs it.
                let store = dir.join(format!("store-{name}"));
                let out = wasmpipe()
                    .args(["run", "-v", "wasmpipe.toml", "--store"])
                    .arg(&store)
                    .current_dir(&root)
                    .output()
                    .unwrap();
                let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                assert!(out.status.success(), "{kind}: {stdout}\n{stderr}");
                assert!(
                    stderr.contains(logged) || stdout.contains(logged),
                    "{kind}: no {logged:?} in\n{stdout}\n{stderr}"
                );
                assert!(
                    store.join(name).join(name).join("_wasmpipe_commit.json").is_file(),
                    "{kind}: nothing committed"
                );
                // Its unit tests pass natively, under CPython, with the checkout's SDK.
                let test = Command::new(repo().join(".tools/venv/bin/python"))
                    .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
                    .current_dir(&root)
                    .output()
                    .unwrap();
                let said = String::from_utf8_lossy(&test.stdout);
                assert!(test.status.success() && said.contains(" passed"), "{kind}: pytest failed:\n{said}");
            });
        }
    });
    let show = |name: &str| -> serde_json::Value {
        let out = wasmpipe()
            .arg("show")
            .arg(dir.path().join(format!("store-{name}/{name}/{name}")))
            .args(["--json", "--rows", "40"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let values = |doc: &serde_json::Value, c: &str| -> Vec<f64> {
        doc["head"].as_array().unwrap().iter().map(|r| r[c].as_f64().unwrap()).collect()
    };
    let xs = values(&show("clip"), "x");
    assert_eq!(xs.len(), 40);
    assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)) && xs.contains(&0.0) && xs.contains(&1.0), "{xs:?}");
    let mean = values(&show("center"), "y").iter().sum::<f64>() / 40.0;
    assert!(mean.abs() < 1e-12, "centred y has mean {mean}");
    let summary = show("summary");
    assert_eq!(summary["report"]["rows"], 40, "{summary}");
    assert!(summary["report"]["min"].as_f64().unwrap() <= summary["report"]["mean"].as_f64().unwrap());

    // The unit tests import the copy of the SDK the build uses; running the
    // sample pipeline in the stage's directory (its default store is
    // there) leaves the build as it was.
    let clip = dir.path().join("clip");
    let sdk = std::fs::read_to_string(clip.join(".wasmpipe/sdk/wasmpipe_sdk/__init__.py")).unwrap();
    assert_eq!(sdk, std::fs::read_to_string(repo().join("stages/sdk-python/wasmpipe_sdk/__init__.py")).unwrap());
    let built = || {
        let out = wasmpipe().args(["build", "."]).current_dir(&clip).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = built();
    let out = wasmpipe().args(["run", "-q", "wasmpipe.toml"]).current_dir(&clip).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(clip.join("wasmpipe-data/clip/clip/_wasmpipe_commit.json").is_file());
    assert_eq!(built(), before, "the run's outputs are not part of the stage");
}

#[test]
fn a_config_a_stage_rejects_fails_check_and_run_before_any_data_moves() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.csv"), "a,b\n1,2\n3,4\n").unwrap();
    let stage = |name: &str, component: &str, rest: &str| {
        format!(
            "[stage.{name}]\ncomponent = {:?}\n{rest}\n",
            repo().join("stages").join(component).display().to_string()
        )
    };
    let manifest = dir.path().join("wasmpipe.toml");
    std::fs::write(
        &manifest,
        format!(
            "version = 1\nname = \"t\"\n{}{}{}",
            stage("ingest", "passthrough", "inputs = [\"data.csv\"]\nschema = { a = \"int64\", b = \"int64\" }"),
            stage("fit", "linreg", "inputs = [\"stage:ingest\"]\nconfig = { features = [\"a\"], targett = \"b\" }"),
            stage("score", "evaluate", "inputs = [\"stage:fit\"]\nconfig = { target = \"b\", predictionn = \"p\" }"),
        ),
    )
    .unwrap();
    let store = dir.path().join("store");
    for command in ["check", "run"] {
        let out = wasmpipe().arg(command).arg(&manifest).arg("--store").arg(&store).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(65), "{command}: {err}");
        assert!(
            err.contains("2 stages reject their configuration or input (checked before any data moved)"),
            "{command}: {err}"
        );
        assert!(err.contains("stage \"fit\": invalid config: unknown field `targett`"), "{command}: {err}");
        assert!(err.contains("stage \"score\": invalid config: unknown field `predictionn`"), "{command}: {err}");
        // Nothing ran: not even the ingest stage before them, and no run
        // was recorded.
        assert!(!store.exists(), "{command} wrote {}", store.display());
    }
    // A column the input lacks, in a stage that reads a transformer's
    // output (its schema known before the run), fails the same way.
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("targett = \"b\"", "target = \"bb\"")
            .replace("predictionn = \"p\"", "prediction = \"prediction\""),
    )
    .unwrap();
    let out = wasmpipe().arg("check").arg(&manifest).arg("--store").arg(&store).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains("a stage rejects its configuration or input (checked before any data moved)"), "{err}");
    assert!(
        err.contains(
            "stage \"fit\": column not found: \"bb\" (the batch has a, b) (checked against the schema it will read)"
        ),
        "{err}"
    );
    std::fs::write(&manifest, &text).unwrap();
    // Publishing the plan for another engine (Ray) checks it the same way.
    let out = wasmpipe().arg("plan").arg(&manifest).arg("--publish").arg(&store).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains("unknown field `targett`") && !store.exists(), "{err}");
    let out = wasmpipe().args(["check", "examples/breast_cancer/wasmpipe.toml"]).current_dir(repo()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("8 stages resolve") && text.contains("no stage rejects what it was given"), "{text}");
    assert!(
        text.contains("checked before any data moves: 7 against the columns they will read, 1 their configuration only; 0 when they start"),
        "{text}"
    );
    assert!(text.contains("  ingest      config and columns checked against the 31 columns it will read"), "{text}");
    assert!(text.contains("  scale_test  config and columns checked against the 31 columns it will read"), "{text}");
    assert!(
        text.contains("  evaluate    config checked; its columns when its tasks read them (what stage \"predict\" writes is known once it has run)"),
        "{text}"
    );
    assert!(!repo().join("examples/breast_cancer/wasmpipe-data").exists());
}
