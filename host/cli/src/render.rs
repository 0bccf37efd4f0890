//! `wasmpipe render k8s`: the next step of a pipeline as Kubernetes Indexed
//! Jobs, one per round of tasks, each pod a `wasmpipe task` whose partition
//! is its `JOB_COMPLETION_INDEX`.
//!
//! Kubernetes cannot know a round's size before the rounds before it have
//! run (a stage's partitions are its upstream's parts), so rendering is a
//! loop: render the next step of the first stage not yet committed (a fit
//! pass: its fit, combine and merge Jobs; or its transform and commit
//! Jobs), apply its Jobs in order, wait for each, and render again, until
//! nothing is left. Every pod is idempotent (the task contract), so a Job
//! applied twice or a pod retried does no harm.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::{Value, json};
use wasmpipe_executor::{Executor, LockedPipeline, StageTasks};
use wasmpipe_storage::Storage;

/// Render the next step of a pipeline as Kubernetes Jobs.
#[derive(clap::Args)]
pub struct RenderArgs {
    /// What to render for: `k8s`.
    #[arg(value_parser = ["k8s"])]
    pub target_kind: String,
    /// The deployed pipeline, `NAME` or `NAME@VERSION`.
    pub pipeline: String,
    /// The deployment root (as given to `wasmpipe deploy --to`).
    #[arg(long, env = "WASMPIPE_FROM")]
    pub from: String,
    /// The container image with `wasmpipe` on its PATH.
    #[arg(long)]
    pub image: String,
    /// Where outputs go (default `ROOT/data`); pods must reach it.
    #[arg(long)]
    pub store: Option<String>,
    /// The namespace of the Jobs.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// A Secret whose keys become the pods' environment (store
    /// credentials: `AWS_ACCESS_KEY_ID`, ...).
    #[arg(long, value_name = "NAME")]
    pub secret: Option<String>,
    /// The run's id: its tasks keep their attempts under
    /// `STORE/_runs/RUN_ID/tasks/` and its commits name it, so `wasmpipe
    /// record --collect RUN_ID` can keep the run's record (give the same id
    /// to every render of one run; engines/k8s/apply.sh does).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Write one file per Job here (`NN-NAME.json`, in the order to apply
    /// them) and print their paths; print nothing when the pipeline is done.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// A Kubernetes name: lowercase letters, digits and `-`, at most 63. The
/// `parts` are cut to fit; the `tags` that tell names apart (the plan's
/// hash, the run's) are kept whole at the end.
fn dns_name(parts: &[&str], tags: &[&str]) -> String {
    let clean = |s: String| -> String {
        s.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
    };
    let tags = clean(tags.iter().filter(|t| !t.is_empty()).copied().collect::<Vec<_>>().join("-"));
    let mut name = clean(parts.join("-"));
    name.truncate(63 - tags.len().min(62) - 1);
    let name = format!("{}-{tags}", name.trim_matches('-'));
    name.trim_matches('-').to_string()
}

/// A short tag of the run in its Jobs' names (the first 6 hex digits of
/// its id's SHA-256), so that two runs of one plan render Jobs of their
/// own: a Job's pod template cannot change once applied.
fn run_tag(args: &RenderArgs) -> String {
    use sha2::Digest;
    args.run_id
        .as_deref()
        .map(|id| hex::encode(sha2::Sha256::digest(id.as_bytes()))[..6].to_string())
        .unwrap_or_default()
}

/// One round of a stage as an Indexed Job: `completions` pods, pod `i`
/// running `command` with `$(JOB_COMPLETION_INDEX)` = `i`.
struct Round {
    /// Short name of the round: `fit-p0`, `combine-p0-l1`, `merge-p0`, ...
    name: String,
    completions: usize,
    command: Vec<String>,
}

/// Memory a pod asks for: the instance's linear memory and host budget,
/// the batch in flight, and the process.
fn pod_memory_mib(plan: &LockedPipeline, stage: &str) -> u64 {
    let limits = &plan.stages.iter().find(|s| s.name == stage).expect("the stage is in the plan").limits;
    limits.memory_mib + limits.host_memory_mib + 256
}

fn job(args: &RenderArgs, plan: &LockedPipeline, tasks: &StageTasks, round: &Round) -> Value {
    let hash = plan.hash();
    let labels = json!({
        "app.kubernetes.io/name": "wasmpipe",
        "wasmpipe.io/pipeline": plan.pipeline,
        "wasmpipe.io/stage": tasks.stage,
        "wasmpipe.io/plan": &hash[..12],
    });
    let memory = format!("{}Mi", pod_memory_mib(plan, &tasks.stage));
    let mut container = json!({
        "name": "task",
        "image": args.image,
        "command": round.command,
        "resources": {
            "requests": { "cpu": "1", "memory": memory },
            "limits": { "memory": memory },
        },
    });
    if let Some(secret) = &args.secret {
        container["envFrom"] = json!([{ "secretRef": { "name": secret } }]);
    }
    let parallelism = tasks.parallelism.map_or(round.completions, |p| (p as usize).min(round.completions));
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": dns_name(&["wp", &plan.pipeline, &tasks.stage, &round.name], &[&hash[..8], &run_tag(args)]),
            "namespace": args.namespace,
            "labels": labels,
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": round.completions,
            "parallelism": parallelism.max(1),
            // Transient failures (exit 75, a lost node) retry the index;
            // a deterministic one (exit 65) fails it at once, and any
            // failed index fails the Job.
            "backoffLimitPerIndex": 3,
            "maxFailedIndexes": 0,
            "podFailurePolicy": {
                "rules": [
                    { "action": "FailIndex", "onExitCodes": { "containerName": "task", "operator": "In", "values": [65, 70] } },
                    { "action": "Ignore", "onPodConditions": [{ "type": "DisruptionTarget" }] },
                ],
            },
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": { "labels": labels },
                "spec": { "restartPolicy": "Never", "containers": [container] },
            },
        },
    })
}

/// The rounds of the next step of `tasks`' stage.
fn rounds(plan_url: &str, plan_sha: &str, store: &str, run_id: Option<&str>, tasks: &StageTasks) -> Vec<Round> {
    let run: Vec<&str> = run_id.map(|id| vec!["--run-id", id]).unwrap_or_default();
    let task = |kind: String, pass: u32| -> Vec<String> {
        [
            "wasmpipe",
            "task",
            "--plan",
            plan_url,
            "--plan-sha256",
            plan_sha,
            "--stage",
            &tasks.stage,
            "--task",
            &kind,
            "--pass",
            &pass.to_string(),
            "--store",
            store,
        ]
        .iter()
        .chain(&run)
        .map(|s| s.to_string())
        .collect()
    };
    let index = "$(JOB_COMPLETION_INDEX)";
    let mut rounds = Vec::new();
    if tasks.fit_tasks > 0 && !tasks.fit_finished {
        let p = tasks.passes_done;
        rounds.push(Round {
            name: format!("fit-p{p}"),
            completions: tasks.fit_tasks,
            command: task(format!("fit:{index}"), p),
        });
        for (level, &groups) in tasks.combine_levels.iter().enumerate() {
            let level = level + 1;
            rounds.push(Round {
                name: format!("combine-p{p}-l{level}"),
                completions: groups,
                command: task(format!("combine:{level}:{index}"), p),
            });
        }
        rounds.push(Round { name: format!("merge-p{p}"), completions: 1, command: task("merge".into(), p) });
        return rounds;
    }
    if tasks.transform_tasks > 0 {
        rounds.push(Round {
            name: "transform".into(),
            completions: tasks.transform_tasks,
            command: task(format!("transform:{index}"), 0),
        });
    }
    let commit = ["wasmpipe", "commit", "--plan", plan_url, "--stage", &tasks.stage, "--store", store];
    rounds.push(Round {
        name: "commit".into(),
        completions: 1,
        command: commit.iter().chain(&run).map(|s| s.to_string()).collect(),
    });
    rounds
}

/// Render the next step into `args.out`; the files written, in order.
pub fn render(
    executor: &Executor,
    plan: &LockedPipeline,
    store: &str,
    args: &RenderArgs,
) -> anyhow::Result<Vec<PathBuf>> {
    if let Some(run_id) = &args.run_id {
        wasmpipe_executor::record::check_run_id(run_id).map_err(anyhow::Error::msg)?;
        // A run id names one run: of one plan.
        let runs = Storage::new(".").resolve(store)?;
        let io = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        if let Some(kept) = io.block_on(wasmpipe_executor::record::find_exact(&runs, run_id))?
            && kept.plan_sha256 != plan.hash()
        {
            anyhow::bail!(
                "run {run_id} is recorded already, for plan {} (pipeline {}), not this one ({})\n  hint: give this run its own id",
                kept.plan_sha256,
                kept.pipeline,
                plan.hash()
            );
        }
    }
    let plan_url = executor.publish_plan(plan, &Storage::new("."), store)?;
    let plan_sha = plan.hash();
    if args.out.exists() {
        for entry in std::fs::read_dir(&args.out).with_context(|| format!("reading {}", args.out.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    for stage in &plan.stages {
        let tasks = executor.prepare_stage(&plan_url, &stage.name)?;
        if tasks.committed {
            continue;
        }
        let mut written = Vec::new();
        for (i, round) in rounds(&plan_url, &plan_sha, store, args.run_id.as_deref(), &tasks).iter().enumerate() {
            let doc = job(args, plan, &tasks, round);
            let name = doc["metadata"]["name"].as_str().expect("named").to_string();
            let path = args.out.join(format!("{:02}-{name}.json", i + 1));
            std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)
                .with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
        }
        return Ok(written);
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::dns_name;

    #[test]
    fn a_long_name_is_cut_but_keeps_the_tags_that_tell_runs_apart() {
        assert_eq!(
            dns_name(&["wp", "Diabetes", "fit_train", "fit-p0"], &["389058", "ab12cd"]),
            "wp-diabetes-fit-train-fit-p0-389058-ab12cd"
        );
        assert_eq!(dns_name(&["wp", "p", "s"], &["389058", ""]), "wp-p-s-389058");
        let long = "x".repeat(100);
        let name = dns_name(&["wp", &long, "combine-p12-l3"], &["38905819", "ab12cd"]);
        assert_eq!(name.len(), 63, "{name}");
        assert!(name.ends_with("x-38905819-ab12cd"), "{name}");
    }
}
