//! Scale: logistic regression on synthetic data written by `wasmpipe gen`
//! (20 features, binary), trained by the `logreg` stage through the real
//! `wasmpipe` binary (Newton passes over row-group partitions, then batch
//! prediction and `classify_eval`), at a tenth of the rows and at the full
//! row count (`WASMPIPE_BENCH_ROWS`, default 10M), and the same fit in
//! scikit-learn on the same data in the same run. Reports wall time,
//! passes, accuracy, log loss, the binned ROC AUC with its error bound and
//! peak RSS (per process, from `wait4`), so one can see that wasmpipe's
//! memory grows with the rows only up to the budget of decoded batches a
//! fit keeps between its passes (`--cache-mib`, 1024 by default). The fit
//! alone runs again with `emit_rows = false`, and its ratios to
//! scikit-learn's fit (with and without loading the data) are printed.
//! Results go to the `<!-- scale -->` section of `benches/RESULTS.md`.

mod results;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("benches/ has a parent").to_path_buf()
}

/// Run `cmd` to completion; its stdout, wall seconds and peak RSS (bytes).
fn measured(mut cmd: Command) -> (String, f64, u64) {
    let started = Instant::now();
    #[allow(clippy::zombie_processes, reason = "reaped by wait4 below, which also gives its peak RSS")]
    let child = cmd.stdout(std::process::Stdio::piped()).spawn().expect("start");
    let pid = child.id() as libc::pid_t;
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.expect("piped"), &mut stdout).expect("read stdout");
    let mut status = 0;
    // SAFETY: plain libc call on our own child; `usage` is written by it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{cmd:?} failed:\n{stdout}");
    (stdout, started.elapsed().as_secs_f64(), usage.ru_maxrss as u64 * 1024)
}

fn metric(stdout: &str, key: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in:\n{stdout}"))
        .to_string()
}

fn main() {
    let rows: u64 = std::env::var("WASMPIPE_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    let wasmpipe = repo().join("target/release/wasmpipe");
    assert!(wasmpipe.is_file(), "build the CLI first (make bench does)");
    let python = repo().join(".tools/venv/bin/python");
    let work = tempfile::tempdir().expect("temp dir");
    let mut lines = Vec::new();
    for n in [rows / 10, rows] {
        let data = work.path().join(format!("scale-{n}.parquet"));
        let mut generate = Command::new(&wasmpipe);
        generate
            .args(["gen", "classification", "--features", "20", "--row-group-rows", "500000", "--rows"])
            .arg(n.to_string())
            .arg("--out")
            .arg(&data);
        let (_, gen_s, _) = measured(generate);

        // Training and batch prediction in one run, evaluation in another
        // (over the committed predictions), so each reports its own memory.
        // The binned ROC AUC: its state is O(bins), where the exact one
        // keeps every distinct score, O(rows).
        let features: Vec<String> = (0..20).map(|j| format!("\"f{j}\"")).collect();
        let head = "version = 1\nname = \"scale\"\n[defaults]\nbatch_rows = 65536\nrow_group_rows = 500000\ntimeout_s = 3600\n";
        let fit = format!(
            "{head}memory_mib = 512\n[stage.fit]\ncomponent = {:?}\ninputs = [{:?}]\n[stage.fit.config]\nfeatures = [{}]\ntarget = \"target\"\nc = 1.0\ntol = 1e-8\n",
            repo().join("stages/logreg").display().to_string(),
            data.display().to_string(),
            features.join(", "),
        );
        let store = work.path().join(format!("store-{n}"));
        let evaluate = format!(
            "{head}memory_mib = 1024\n[stage.evaluate]\ncomponent = {:?}\ninputs = [{:?}]\n[stage.evaluate.config]\ntarget = \"target\"\nroc_auc = \"binned\"\n",
            repo().join("stages/classify_eval").display().to_string(),
            store.join("scale/fit").display().to_string(),
        );
        let wasmpipe_run = |name: &str, manifest: &str| {
            let path = work.path().join(format!("{name}-{n}.toml"));
            std::fs::write(&path, manifest).expect("write manifest");
            let mut run = Command::new(&wasmpipe);
            run.args(["run", "-q", "--store"]).arg(&store).arg(&path);
            measured(run)
        };
        let (_, run_s, run_rss) = wasmpipe_run("fit", &fit);
        // The fit alone (`emit_rows = false`: no prediction is written), in
        // a store of its own; its read of the Parquet is part of its time.
        let fit_only_store = work.path().join(format!("fit-only-{n}"));
        let fit_only_manifest = work.path().join(format!("fit-only-{n}.toml"));
        std::fs::write(&fit_only_manifest, fit.replace("[stage.fit.config]", "emit_rows = false\n[stage.fit.config]"))
            .expect("write manifest");
        let mut fit_only = Command::new(&wasmpipe);
        fit_only.args(["run", "-q", "--store"]).arg(&fit_only_store).arg(&fit_only_manifest);
        let (_, fit_s, fit_rss) = measured(fit_only);
        let (stdout, eval_s, eval_rss) = wasmpipe_run("evaluate", &evaluate);
        let commit: serde_json::Value =
            serde_json::from_slice(&std::fs::read(store.join("scale/fit/_wasmpipe_commit.json")).expect("fit commit"))
                .expect("commit JSON");
        let passes = &commit["model"]["passes"];
        // The metrics in full precision, from the evaluation's report.
        let evaluated = store.join("scale/evaluate");
        let evaluate_commit: serde_json::Value =
            serde_json::from_slice(&std::fs::read(evaluated.join("_wasmpipe_commit.json")).expect("evaluate commit"))
                .expect("commit JSON");
        let report = evaluated.join(evaluate_commit["report"]["json"].as_str().expect("evaluate publishes a report"));
        let metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(report).expect("report")).expect("report JSON");
        let (auc, bound) = (&metrics["roc_auc"], &metrics["roc_auc_error_bound"]);

        let mut sk = Command::new(&python);
        sk.arg(repo().join("tests/python/scale_sklearn.py")).arg(&data);
        let (sk_out, sk_s, sk_rss) = measured(sk);
        let sk: serde_json::Value = serde_json::from_str(&sk_out).expect("sklearn JSON");

        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let (sk_load, sk_fit) = (sk["load_s"].as_f64().unwrap(), sk["fit_s"].as_f64().unwrap());
        lines.push(format!(
            "scale rows = {n} (20 features, {} MB of Parquet, gen {gen_s:.1} s)",
            std::fs::metadata(&data).map_or(0, |m| m.len()) / 1_000_000
        ));
        lines.push(format!(
            "scale wasmpipe = {run_s:.1} s fit + prediction ({passes} passes, peak RSS {:.0} MiB), {eval_s:.1} s evaluation (peak RSS {:.0} MiB), accuracy {}, log_loss {}, roc_auc {:.6} (binned, error bound {:.1e})",
            mib(run_rss),
            mib(eval_rss),
            metric(&stdout, "accuracy"),
            metric(&stdout, "log_loss"),
            auc.as_f64().expect("a binned roc_auc"),
            bound.as_f64().expect("a roc_auc_error_bound"),
        ));
        lines.push(format!(
            "scale wasmpipe fit alone = {fit_s:.1} s (reading included, peak RSS {:.0} MiB)",
            mib(fit_rss)
        ));
        lines.push(format!(
            "scale sklearn = {sk_s:.1} s (load {sk_load:.1} s, fit {sk_fit:.1} s, {} iterations), peak RSS {:.0} MiB, accuracy {:.4}, log_loss {:.4}",
            sk["iterations"],
            mib(sk_rss),
            sk["accuracy"].as_f64().unwrap(),
            sk["log_loss"].as_f64().unwrap(),
        ));
        lines.push(format!("ratio logreg_fit_{n} wasmpipe/sklearn_load_fit = {:.2}", fit_s / (sk_load + sk_fit)));
        lines.push(format!("ratio logreg_fit_{n} wasmpipe/sklearn_fit = {:.2}", fit_s / sk_fit));
        for l in &lines[lines.len() - 6..] {
            println!("{l}");
        }
    }

    results::write_section(
        "scale",
        &format!(
            "## Scale: logistic regression, 20 features\n\nWritten by `benches/scale.rs` (`make bench`); each run replaces this section.\n\n- date: {}\n- machine: {}\n- wasmpipe = `wasmpipe run` of logreg (fit, then batch prediction of every row), then a second run of classify_eval (ROC AUC binned in 65536 bins, with its error bound) over the committed predictions; wasmpipe fit alone = a run of the same fit with `emit_rows = false`, its reading of the Parquet included (sklearn_fit excludes sklearn's load, sklearn_load_fit includes it); row groups of 500k rows (the partitions), batches of 64k rows; sklearn = `LogisticRegression(C=1)` (lbfgs, tol 1e-6) on the same file loaded whole, in the same run\n- peak RSS per process, from wait4\n\n```\n{}\n```",
            results::date(),
            results::machine(),
            lines.join("\n")
        ),
    );
}
