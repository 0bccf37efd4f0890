//! `wasmpipe`: run pipelines of sandboxed WebAssembly stages over Parquet
//! in object storage, and build stage crates into components.

mod generate;
mod new;
mod output;
mod progress;
mod render;
mod show;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use output::{ColorChoice, LogFormat};
use wasmpipe_executor::{EngineKind, Executor, ExecutorConfig, LockedPipeline, RunError, RunReport, TaskSpec};
use wasmpipe_manifest::Manifest;
use wasmpipe_runtime::Level;
use wasmpipe_storage::Storage;

/// Run ML and data pipelines whose stages are sandboxed WebAssembly
/// components reading and writing Parquet.
#[derive(Parser)]
#[command(name = "wasmpipe", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Colour on stderr: `auto` (on a terminal, unless NO_COLOR is set),
    /// `always` or `never`.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
}

#[derive(Subcommand)]
enum Command {
    Run(RunArgs),
    Check(CheckArgs),
    Plan(PlanArgs),
    Prepare(PrepareArgs),
    Task(TaskArgs),
    Commit(CommitArgs),
    Record(RecordArgs),
    Render(render::RenderArgs),
    Build(BuildArgs),
    Deploy(DeployArgs),
    Deployments(DeploymentsArgs),
    Models(ModelsArgs),
    Gen(generate::GenArgs),
    New(new::NewArgs),
    Runs(RunsArgs),
    Report(ReportArgs),
    Show(show::ShowArgs),
    Completions(CompletionsArgs),
    Man(ManArgs),
}

/// List the runs recorded under a store, newest first, or show one: every
/// run writes `<store>/_runs/<run id>/run.json` (its stages, tasks,
/// metrics, warnings, and what failed).
#[derive(clap::Args)]
struct RunsArgs {
    /// Show this run: its id, or a unique prefix of it.
    run: Option<String>,
    /// The store, as given to `wasmpipe run --store` (default
    /// `wasmpipe-data`; runs with `--from ROOT` store under `ROOT/data`).
    #[arg(long, env = "WASMPIPE_STORE", default_value = "wasmpipe-data")]
    store: String,
    /// Print the record (or, listing, every record) as JSON.
    #[arg(long)]
    json: bool,
}

/// Write a run's HTML report (`report.html` beside its `run.json`; every
/// `wasmpipe run` writes one): the pipeline's graph, a timeline of its
/// tasks, the stage table, validation and quarantine, metrics with their
/// plots, lineage. One self-contained file: open it in a browser.
#[derive(clap::Args)]
struct ReportArgs {
    /// The run: its id, or a unique prefix of it (default: the newest).
    run: Option<String>,
    /// The store, as given to `wasmpipe run --store` (default
    /// `wasmpipe-data`; runs with `--from ROOT` store under `ROOT/data`).
    #[arg(long, env = "WASMPIPE_STORE", default_value = "wasmpipe-data")]
    store: String,
    /// Write the page to this file instead of beside the record.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Print a shell completion script: `wasmpipe completions bash >
/// /etc/bash_completion.d/wasmpipe` (or `zsh`, `fish`, `elvish`,
/// `powershell`).
#[derive(clap::Args)]
struct CompletionsArgs {
    /// The shell.
    shell: clap_complete::Shell,
}

/// Print the manual page (roff): `wasmpipe man > wasmpipe.1; man ./wasmpipe.1`.
/// With `--dir`, write one page per command there instead
/// (`wasmpipe.1`, `wasmpipe-run.1`, ...).
#[derive(clap::Args)]
struct ManArgs {
    /// Write every command's page into this directory.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Run a pipeline: a local manifest, or a deployed pipeline (`--from`).
#[derive(clap::Args)]
struct RunArgs {
    /// The manifest (wasmpipe.toml); with `--from`, the deployed pipeline's
    /// name, optionally with a version: `NAME`, `NAME@3` (default: latest).
    target: String,
    /// The deployment root to run from, e.g. `s3://bucket/prefix` (as given
    /// to `wasmpipe deploy --to`). Outputs then go under `ROOT/data`.
    #[arg(long, env = "WASMPIPE_FROM")]
    from: Option<String>,
    /// Most stage instances running at once (default: the number of cores).
    #[arg(long, short = 'p', env = "WASMPIPE_PARALLELISM")]
    parallelism: Option<usize>,
    /// MiB of decoded input kept in memory for fits of several passes
    /// (from their second pass, for the passes after it and the
    /// transform), so that later reads skip fetching and decoding; 0
    /// turns it off.
    #[arg(long, value_name = "MIB", env = "WASMPIPE_CACHE_MIB", default_value_t = wasmpipe_executor::DEFAULT_CACHE_MIB)]
    cache_mib: u64,
    /// Where stages without an `output` write: a directory or URL
    /// (default: `wasmpipe-data`, or `ROOT/data` with `--from`).
    #[arg(long, env = "WASMPIPE_STORE")]
    store: Option<String>,
    /// Show debug-level stage logs too.
    #[arg(long, short)]
    verbose: bool,
    /// Show no stage logs (warnings and errors still show).
    #[arg(long, short, conflicts_with = "verbose")]
    quiet: bool,
    /// Let a pipeline run `--from` a deployment also read below this
    /// prefix (a URL or a path; repeatable). By default it reads only
    /// inside its root: never the runner's files.
    #[arg(long, value_name = "PREFIX")]
    allow_input: Vec<String>,
    /// Let stages write below this prefix (a URL or a path; repeatable).
    /// By default outputs go only under the store (and, for a local
    /// manifest, its directory).
    #[arg(long, value_name = "PREFIX")]
    allow_output: Vec<String>,
    /// What runs the tasks: `local` (threads in this process), `process`
    /// (a `wasmpipe task` child process per task) or `ray` (a Ray cluster:
    /// hands over to the `wasmpipe_ray` Python package).
    #[arg(long, value_enum, default_value = "local", env = "WASMPIPE_ENGINE")]
    engine: EngineArg,
    /// The Ray cluster for `--engine ray` (default: `RAY_ADDRESS`, or a
    /// cluster started here).
    #[arg(long, value_name = "HOST:PORT")]
    ray_address: Option<String>,
    /// With `--engine ray` and a cluster on other machines: the local
    /// store path is mounted on every node.
    #[arg(long)]
    store_is_shared: bool,
    /// Logs on stderr as text, or as one JSON object per line (`time`,
    /// `level`, `stage`, `task`, `partition`, `message`) for log
    /// collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EngineArg {
    Local,
    Process,
    Ray,
}

/// Check a pipeline without running it: everything a run checks before
/// data moves. The manifest resolves (stage crates build, components load,
/// references and inputs exist), the run may read and write where it
/// would, and no stage rejects its configuration or the columns it will
/// read (each is opened, with no data, as its first task would be; see
/// the lines it prints for how far each was checked).
#[derive(clap::Args)]
struct CheckArgs {
    /// The manifest (wasmpipe.toml); with `--from`, the deployed pipeline:
    /// `NAME` or `NAME@VERSION`.
    target: String,
    /// The deployment root to read the deployed plan from.
    #[arg(long, env = "WASMPIPE_FROM")]
    from: Option<String>,
    /// The store the run would write to (as `wasmpipe run --store`).
    #[arg(long, env = "WASMPIPE_STORE")]
    store: Option<String>,
    /// Let the run also read below this prefix (as `wasmpipe run`).
    #[arg(long, value_name = "PREFIX")]
    allow_input: Vec<String>,
    /// Let the run also write below this prefix (as `wasmpipe run`).
    #[arg(long, value_name = "PREFIX")]
    allow_output: Vec<String>,
}

/// Resolve a pipeline into its plan and print it: components by SHA-256,
/// every default applied, references turned into locations.
#[derive(clap::Args)]
struct PlanArgs {
    /// The manifest (wasmpipe.toml); with `--from`, the deployed pipeline:
    /// `NAME` or `NAME@VERSION`.
    target: String,
    /// The deployment root to read the deployed plan from.
    #[arg(long, env = "WASMPIPE_FROM")]
    from: Option<String>,
    /// Print the plan document (JSON) instead of a summary.
    #[arg(long)]
    json: bool,
    /// Keep the plan under this store (`STORE/_plans/SHA256.json`, for
    /// engines whose tasks run elsewhere) and print its URL (with `--json`:
    /// `{"url": URL, "plan": PLAN}`). The plan is checked first as
    /// `wasmpipe run` checks it: what it may read and write, and every
    /// stage's configuration.
    #[arg(long, value_name = "STORE")]
    publish: Option<String>,
    /// With `--publish`: let the plan also read below this prefix.
    #[arg(long, value_name = "PREFIX")]
    allow_input: Vec<String>,
    /// With `--publish`: let the plan also write below this prefix.
    #[arg(long, value_name = "PREFIX")]
    allow_output: Vec<String>,
}

/// Prepare a stage of a plan for an engine: print its tasks as JSON
/// (partitions, fit tasks, merge tree, transform tasks) and whether an
/// identical run already committed it. Exit codes as for `wasmpipe task`.
#[derive(clap::Args)]
struct PrepareArgs {
    /// The plan's URL or path.
    #[arg(long)]
    plan: String,
    /// The stage.
    #[arg(long)]
    stage: String,
    /// The store (default: the one the plan is kept in).
    #[arg(long, env = "WASMPIPE_STORE")]
    store: Option<String>,
}

/// Run one task of a plan and print its outcome as JSON (the task
/// contract engines use; see docs/commit-protocol.md). Exit codes: 0 done,
/// 65 deterministic failure, 75 transient failure, 70 internal error.
#[derive(clap::Args)]
struct TaskArgs {
    /// The plan's URL or path (`STORE/_plans/SHA256.json`).
    #[arg(long)]
    plan: String,
    /// Refuse the plan unless it hashes to this.
    #[arg(long)]
    plan_sha256: Option<String>,
    /// The stage.
    #[arg(long)]
    stage: String,
    /// The task: `fit:N`, `merge` or `transform:N`.
    #[arg(long)]
    task: String,
    /// The fit pass.
    #[arg(long, default_value_t = 0)]
    pass: u32,
    /// The engine's name for this attempt (for logs).
    #[arg(long)]
    attempt: Option<String>,
    /// The store (default: the one the plan is kept in, else
    /// `wasmpipe-data`).
    #[arg(long, env = "WASMPIPE_STORE")]
    store: Option<String>,
    /// Stage logs on stderr as text, or as one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Keep this attempt (its outcome or error, and the warnings the stage
    /// logged) under `<store>/_runs/RUN_ID/tasks/`, for `wasmpipe record
    /// --collect` (engines without a driver process: Kubernetes).
    #[arg(long)]
    run_id: Option<String>,
}

/// Commit a stage of a plan from the records its tasks left: checks that
/// every task of its final pass completed, then writes the commit record.
/// Exit codes as for `wasmpipe task`.
#[derive(clap::Args)]
struct CommitArgs {
    /// The plan's URL or path.
    #[arg(long)]
    plan: String,
    /// The stage.
    #[arg(long)]
    stage: String,
    /// The store (default: the one the plan is kept in).
    #[arg(long, env = "WASMPIPE_STORE")]
    store: Option<String>,
    /// The run id to record (default: a new one): 1 to 128 ASCII letters,
    /// digits, `-`, `_` and `.`, starting with a letter or digit (it names the run's
    /// directory under `_runs/`).
    #[arg(long)]
    run_id: Option<String>,
}

/// Keep the record and the HTML report of a run another engine drove (the
/// Ray driver calls it when its run ends): reads the run's log as JSON on
/// stdin (its id, engine, start, the stages committed with their tasks'
/// outcomes, the failed stage's tasks, warnings, the error; see
/// docs/run-record.md), or with `--collect` gathers it from the task
/// attempts kept in the store, and writes `<store>/_runs/<run id>/run.json`
/// and `report.html`, as `wasmpipe run` does. Prints where, as JSON.
#[derive(clap::Args)]
struct RecordArgs {
    /// The plan's URL or path.
    #[arg(long)]
    plan: String,
    /// The store (default: the one the plan is kept in).
    #[arg(long, env = "WASMPIPE_STORE")]
    store: Option<String>,
    /// Gather the log of this run from the attempts its tasks kept in the
    /// store (`wasmpipe task --run-id`, as `wasmpipe render k8s --run-id`
    /// renders them) instead of reading it on stdin.
    #[arg(long, value_name = "RUN_ID")]
    collect: Option<String>,
    /// With `--collect`: the engine that drove the run.
    #[arg(long, default_value = "k8s", requires = "collect")]
    engine: String,
    /// With `--collect`: why the engine says the run failed (e.g. which
    /// Job failed); a failed task's own error comes first.
    #[arg(long, requires = "collect")]
    error: Option<String>,
}

/// Build a stage crate, or a Python stage (a `pyproject.toml` with
/// `[tool.wasmpipe]`, or an `app.py`), into a component (prints its path,
/// size and hash).
#[derive(clap::Args)]
struct BuildArgs {
    /// Directory of the stage crate.
    crate_dir: PathBuf,
}

/// Publish a pipeline to an object store: components and local inputs
/// uploaded by content (SHA-256), the manifest pinned to them and stored as
/// a new version (nothing is uploaded when nothing changed).
#[derive(clap::Args)]
struct DeployArgs {
    /// The manifest (wasmpipe.toml).
    manifest: PathBuf,
    /// The deployment root, e.g. `s3://bucket/prefix` (or a directory).
    #[arg(long)]
    to: String,
}

/// List the pipelines deployed under a root, or show one's manifest.
#[derive(clap::Args)]
struct DeploymentsArgs {
    /// The deployment root, e.g. `s3://bucket/prefix`.
    root: String,
    /// Show this pipeline's pinned manifest: `NAME` or `NAME@VERSION`.
    show: Option<String>,
}

/// List the model registry under a store, newest first, or show one
/// model's lineage card. Every model an estimator stage fits is registered
/// there by SHA-256; a stage applies one with `model = "sha256:…"`.
#[derive(clap::Args)]
struct ModelsArgs {
    /// Show this model's card: its SHA-256, or a unique prefix of it.
    model: Option<String>,
    /// The store whose registry to read, as given to `wasmpipe run
    /// --store` (default `wasmpipe-data`; runs with `--from ROOT` store
    /// under `ROOT/data`).
    #[arg(long, env = "WASMPIPE_STORE", default_value = "wasmpipe-data")]
    store: String,
}

/// mimalloc, not glibc's malloc: decoding and writing Parquet allocate
/// and free megabyte buffers batch after batch, which glibc serves with
/// fresh mmaps (a page fault per 4 KiB, zeroed, then unmapped); mimalloc
/// reuses them. Measured on the scaler over 2M and 8M rows x 10 f64: 0.68x
/// and 0.88x the wall time, peak RSS ~160 MiB higher (not growing with the
/// rows: freed pages are kept for 10 ms).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that only print end quietly, as other Unix tools do, when
    // whatever reads their output stops (`wasmpipe show URL | head`).
    // Commands that write to a store are left to finish what they do.
    #[cfg(unix)]
    if matches!(
        cli.command,
        Command::Show(_)
            | Command::Runs(_)
            | Command::Deployments(_)
            | Command::Models(_)
            | Command::Completions(_)
            | Command::Man(_)
            | Command::Plan(_)
    ) {
        // SAFETY: at start-up, before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let log_format = match &cli.command {
        Command::Run(args) => args.log_format,
        Command::Task(args) => args.log_format,
        _ => LogFormat::Text,
    };
    let color = cli.color.enabled();
    // A run shows its progress, live on a terminal, unless it is quiet or
    // its logs go to a collector.
    let display = match &cli.command {
        Command::Run(args) if !args.quiet && log_format == LogFormat::Text => {
            let terminal = std::io::stderr().is_terminal() && std::env::var("TERM").is_ok_and(|t| t != "dumb");
            progress::Display::new(terminal, true)
        }
        _ => progress::Display::plain(),
    };
    output::init_tracing(color, log_format, display.clone());
    let result = match cli.command {
        Command::Run(args) => run(args, color, display.clone()),
        Command::Check(args) => check(args),
        Command::Plan(args) => plan(args),
        Command::Prepare(args) => prepare(args),
        Command::Task(args) => task(args),
        Command::Commit(args) => commit(args),
        Command::Record(args) => record(args),
        Command::Render(args) => render_jobs(args),
        Command::Build(args) => build(args),
        Command::Deploy(args) => deploy(args),
        Command::Deployments(args) => deployments(args),
        Command::Models(args) => models(args),
        Command::Gen(args) => generate::generate(args).map(|()| ExitCode::SUCCESS),
        Command::New(args) => new::new(args).map(|()| ExitCode::SUCCESS),
        Command::Runs(args) => runs(args),
        Command::Report(args) => report(args),
        Command::Show(args) => io().and_then(|io| show::show(args, &io)).map(|()| ExitCode::SUCCESS),
        Command::Completions(args) => completions(args),
        Command::Man(args) => man(args),
    };
    match result {
        Ok(code) => code,
        Err(err) if log_format == LogFormat::Json => {
            output::json_line("error", &error_text(&err));
            match err.downcast_ref::<RunError>() {
                Some(e) => ExitCode::from(e.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
        Err(err) => {
            // (A failed run's bar goes, so that the error is the last line.)
            display.clear();
            print_error(&err);
            match err.downcast_ref::<RunError>() {
                Some(e) => ExitCode::from(e.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Print the error and each cause that its message does not already hold.
fn print_error(err: &anyhow::Error) {
    eprintln!("error: {}", error_text(err));
}

/// The error and each cause that its message does not already hold, a
/// cause per line.
fn error_text(err: &anyhow::Error) -> String {
    let mut text = format!("{err}");
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(&format!("\n  caused by: {cause}"));
        }
    }
    text
}

fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    use wasmpipe_toolchain::{Progress, python};
    let built = match python::stage(&args.crate_dir)? {
        Some(stage) => {
            eprintln!("building the Python {} {} with componentize-py", stage.kind, args.crate_dir.display());
            python::build(&args.crate_dir, &stage, Progress::Show)?
        }
        None => {
            let toolchain = wasmpipe_toolchain::detect()?;
            if args.crate_dir.join("Cargo.toml").is_file() {
                eprintln!("building {} with {toolchain}", args.crate_dir.display());
            }
            wasmpipe_toolchain::build(&args.crate_dir, &toolchain, Progress::Show)?
        }
    };
    println!("{}", built.path.display());
    println!("size   {} bytes", built.size);
    println!("sha256 {}", built.sha256);
    Ok(ExitCode::SUCCESS)
}

/// `NAME` or `NAME@VERSION` (`@v3` and `@3` alike; `@latest` for none).
fn name_version(target: &str) -> anyhow::Result<(&str, Option<u32>)> {
    match target.split_once('@') {
        None => Ok((target, None)),
        Some((name, "latest")) => Ok((name, None)),
        Some((name, v)) => {
            let v =
                v.trim_start_matches('v').parse().with_context(|| format!("{target:?}: the version is a number"))?;
            Ok((name, Some(v)))
        }
    }
}

/// An absolute form of a store location given on the command line.
fn absolute_location(location: &str) -> anyhow::Result<String> {
    if location.contains("://") {
        return Ok(location.to_string());
    }
    Ok(std::path::absolute(location).with_context(|| format!("cannot resolve {location}"))?.display().to_string())
}

/// `--allow-*` prefixes in absolute form.
fn allowed(prefixes: &[String]) -> anyhow::Result<Vec<String>> {
    prefixes.iter().map(|p| absolute_location(p)).collect()
}

/// Hand a run over to the Ray driver (`python -m wasmpipe_ray`, with
/// `WASMPIPE_PYTHON` or `python3`), this binary as the nodes' `wasmpipe`.
fn run_on_ray(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let python = std::env::var("WASMPIPE_PYTHON").unwrap_or_else(|_| "python3".into());
    let program = std::env::current_exe().context("finding the wasmpipe binary for the Ray nodes")?;
    let mut cmd = std::process::Command::new(&python);
    cmd.args(["-m", "wasmpipe_ray", "run", &args.target, "--binary"]).arg(&program);
    if let Some(root) = &args.from {
        cmd.arg("--from").arg(absolute_location(root)?);
    }
    if let Some(store) = &args.store {
        cmd.arg("--store").arg(absolute_location(store)?);
    }
    if let Some(address) = &args.ray_address {
        cmd.args(["--address", address]);
    }
    if args.store_is_shared {
        cmd.arg("--store-is-shared");
    }
    for prefix in allowed(&args.allow_input)? {
        cmd.arg("--allow-input").arg(prefix);
    }
    for prefix in allowed(&args.allow_output)? {
        cmd.arg("--allow-output").arg(prefix);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = cmd.exec();
        anyhow::bail!(
            "cannot start the Ray driver with {python}: {err}\n  hint: pip install engines/ray (the wasmpipe_ray package) and ray, or set WASMPIPE_PYTHON to a Python that has them"
        )
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status().with_context(|| format!("starting the Ray driver with {python}"))?;
        Ok(ExitCode::from(status.code().unwrap_or(70) as u8))
    }
}

fn engine(arg: EngineArg) -> anyhow::Result<EngineKind> {
    Ok(match arg {
        EngineArg::Ray => unreachable!("a Ray run is handed over before an executor starts"),
        EngineArg::Local => EngineKind::Local,
        EngineArg::Process => EngineKind::Process {
            program: std::env::current_exe().context("finding the wasmpipe binary for the process engine")?,
        },
    })
}

/// How an executor reports: stage logs at `.0` and above, coloured or
/// not, in a format, through a display (with its progress, for a run).
type Logs = (Level, bool, LogFormat, Arc<progress::Display>);

/// Logs for commands that only print warnings, plainly.
fn quiet_logs() -> Logs {
    (Level::Warn, false, LogFormat::Text, progress::Display::plain())
}

/// An executor whose stage logs go to stderr as `logs` says (see
/// [`output`]); `cache_mib`: see `--cache-mib`.
fn executor(
    parallelism: Option<usize>,
    store: String,
    logs: Logs,
    engine: EngineKind,
    cache_mib: u64,
) -> anyhow::Result<Executor> {
    let (min_level, color, format, display) = logs;
    let mut config = ExecutorConfig::new(store);
    config.engine = engine;
    config.cache_bytes = cache_mib.saturating_mul(1 << 20);
    if let Some(p) = parallelism {
        anyhow::ensure!(p > 0, "--parallelism must be at least 1");
        config.parallelism = p;
    }
    config.sink = Some(output::stage_log_sink(min_level, color, format, display.clone()));
    config.progress = Some(Arc::new(move |event| display.on(event)));
    config.recorded = Some(Arc::new(|storage, store, record, io| {
        match io.block_on(wasmpipe_report::write(storage, store, record)) {
            Ok(at) => tracing::info!("run report: {}", at.url()),
            Err(e) => tracing::warn!("the run report was not written: {e}"),
        }
    }));
    Ok(Executor::new(config)?)
}

/// Shell completions (clap_complete), generated from the same definition
/// as the parser.
fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory;
    clap_complete::generate(args.shell, &mut Cli::command(), "wasmpipe", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// The manual page (clap_mangen), generated from the parser's definition.
fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory;
    let command = Cli::command();
    match args.dir {
        None => clap_mangen::Man::new(command).render(&mut std::io::stdout())?,
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir).with_context(|| format!("writing pages into {}", dir.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run(args: RunArgs, color: bool, display: Arc<progress::Display>) -> anyhow::Result<ExitCode> {
    if args.engine == EngineArg::Ray {
        return run_on_ray(&args);
    }
    let min_level = if args.verbose {
        Level::Debug
    } else if args.quiet {
        Level::Warn
    } else {
        Level::Info
    };
    let report = match &args.from {
        Some(root) => {
            let root = absolute_location(root)?;
            let store = match &args.store {
                Some(s) => absolute_location(s)?,
                None => format!("{}/data", root.trim_end_matches('/')),
            };
            let logs = (min_level, color, args.log_format, display.clone());
            let mut executor = executor(args.parallelism, store, logs, engine(args.engine)?, args.cache_mib)?;
            executor.allow(allowed(&args.allow_input)?, allowed(&args.allow_output)?);
            let (name, version) = name_version(&args.target)?;
            let (_, manifest, version) = executor.deployed_manifest(&root, name, version)?;
            let (plan, _) = executor.deployed_plan(&root, name, Some(version))?;
            output::announce(
                args.log_format,
                &format!(
                    "running pipeline {name:?} version {version} from {root} ({} stages, plan {})",
                    plan.stages.len(),
                    &plan.hash()[..12]
                ),
            );
            // The runner's store configuration (its environment), not the
            // deployer's: a deployed `[storage]` could send the runner's
            // signed requests to a server of the deployer's choosing.
            if !manifest.storage.is_empty() {
                tracing::warn!(
                    "ignoring the deployed manifest's [storage] options; a run from a deployment uses this machine's store settings (AWS_ENDPOINT_URL, ...)"
                );
            }
            executor.run_plan(&plan)?
        }
        None => {
            let path = Path::new(&args.target);
            let manifest = Manifest::load(path)?;
            let base_dir = manifest_dir(path)?;
            let store = absolute_location(args.store.as_deref().unwrap_or("wasmpipe-data"))?;
            let logs = (min_level, color, args.log_format, display.clone());
            let mut executor = executor(args.parallelism, store, logs, engine(args.engine)?, args.cache_mib)?;
            executor.allow(allowed(&args.allow_input)?, allowed(&args.allow_output)?);
            output::announce(
                args.log_format,
                &format!("running pipeline {:?} ({} stages)", manifest.name, manifest.stages.len()),
            );
            executor.run(&manifest, &base_dir)?
        }
    };
    print_report(&report);
    Ok(ExitCode::SUCCESS)
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let (plan, checked) = match &args.from {
        Some(root) => {
            let root = absolute_location(root)?;
            let store = match &args.store {
                Some(s) => absolute_location(s)?,
                None => format!("{}/data", root.trim_end_matches('/')),
            };
            let mut executor = executor(Some(1), store, quiet_logs(), EngineKind::Local, 0)?;
            executor.allow(allowed(&args.allow_input)?, allowed(&args.allow_output)?);
            let (name, version) = name_version(&args.target)?;
            let (plan, _) = executor.deployed_plan(&root, name, version)?;
            let checked = executor.check_resolved(&plan, None)?;
            (plan, checked)
        }
        None => {
            let store = absolute_location(args.store.as_deref().unwrap_or("wasmpipe-data"))?;
            let mut executor = executor(Some(1), store, quiet_logs(), EngineKind::Local, 0)?;
            executor.allow(allowed(&args.allow_input)?, allowed(&args.allow_output)?);
            let path = Path::new(&args.target);
            let manifest = Manifest::load(path)?;
            let base_dir = manifest_dir(path)?;
            let storage = Storage::new(&base_dir).with_options(manifest.storage.clone());
            executor.check(&manifest, &storage, Some(&base_dir))?
        }
    };
    for (_, message) in plan.leakage() {
        eprintln!("warning: {message}");
    }
    let (columns, config, at_start) = checked.counts();
    println!(
        "pipeline {:?} (plan {}): {}, their inputs and outputs are allowed, and no stage rejects what it was given",
        plan.pipeline,
        &plan.hash()[..12],
        match plan.stages.len() {
            1 => "1 stage resolves".to_string(),
            n => format!("{n} stages resolve"),
        },
    );
    println!(
        "  checked before any data moves: {columns} against the columns they will read, {config} their configuration only; {at_start} when they start"
    );
    let width = checked.stages.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (name, how) in &checked.stages {
        println!("  {name:width$}  {how}");
    }
    Ok(ExitCode::SUCCESS)
}

fn plan(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let store = absolute_location(args.publish.as_deref().unwrap_or("wasmpipe-data"))?;
    let mut executor = executor(Some(1), store.clone(), quiet_logs(), EngineKind::Local, 0)?;
    executor.allow(allowed(&args.allow_input)?, allowed(&args.allow_output)?);
    let (plan, local_dir) = match &args.from {
        Some(root) => {
            let (name, version) = name_version(&args.target)?;
            (executor.deployed_plan(&absolute_location(root)?, name, version)?.0, None)
        }
        None => {
            let path = Path::new(&args.target);
            let manifest = Manifest::load(path)?;
            let base_dir = manifest_dir(path)?;
            let storage = Storage::new(&base_dir).with_options(manifest.storage.clone());
            (executor.resolve(&manifest, &storage, Some(&base_dir))?, Some(base_dir))
        }
    };
    if args.publish.is_some() {
        // What other engines (Ray) run: checked as `wasmpipe run` checks.
        executor.check_resolved(&plan, local_dir.as_deref())?;
        let url = executor.publish_plan(&plan, &Storage::new("."), &store)?;
        if args.json {
            println!("{}", serde_json::json!({ "url": url, "plan": plan }));
        } else {
            println!("{url}");
        }
    } else if args.json {
        println!("{}", String::from_utf8_lossy(&plan.to_json()));
    } else {
        print_plan(&plan);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_plan(plan: &LockedPipeline) {
    println!(
        "pipeline {:?}: plan {} (format {}, {} stages)",
        plan.pipeline,
        plan.hash(),
        plan.format,
        plan.stages.len()
    );
    if let Some(root) = &plan.root {
        println!("deployed under {root}");
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY).set_header([
        "stage",
        "kind",
        "component",
        "reads",
        "model",
        "writes",
        "limits",
    ]);
    for s in &plan.stages {
        let reads: Vec<String> = s.inputs.iter().map(ToString::to_string).collect();
        let model = match &s.model {
            None => "-".to_string(),
            Some(wasmpipe_executor::ModelRef::Stage { stage }) => format!("stage:{stage}"),
            Some(wasmpipe_executor::ModelRef::Registry { sha256 }) => format!("sha256:{}", &sha256[..12]),
            Some(wasmpipe_executor::ModelRef::Output { written, .. }) => written.clone(),
        };
        let writes = match &s.output {
            wasmpipe_executor::OutputRef::Store { path } => format!("STORE/{path}"),
            wasmpipe_executor::OutputRef::Location { url } => url.clone(),
        };
        let l = &s.limits;
        table.add_row([
            s.name.clone(),
            s.kind.to_string(),
            format!("{} ({})", &s.component.sha256[..12], human_bytes(s.component.bytes)),
            reads.join("\n"),
            model,
            writes,
            format!(
                "{} MiB, {} s, {} rows/batch{}",
                l.memory_mib,
                l.timeout_s,
                l.batch_rows,
                if l.max_passes != wasmpipe_manifest::defaults::MAX_PASSES {
                    format!(", {} passes", l.max_passes)
                } else {
                    String::new()
                }
            ),
        ]);
    }
    println!("{table}");
}

/// The store a plan kept at `STORE/_plans/SHA256.json` belongs to.
fn store_of_plan(plan: &str) -> Option<String> {
    let (store, _) = plan.rsplit_once(&format!("/{}/", wasmpipe_executor::PLANS_DIR))?;
    Some(store.to_string())
}

fn task_executor(plan: &str, store: Option<&str>, log_format: LogFormat) -> anyhow::Result<Executor> {
    let store = match store.map(str::to_string).or_else(|| store_of_plan(plan)) {
        Some(s) => absolute_location(&s)?,
        None => absolute_location("wasmpipe-data")?,
    };
    let mut config = ExecutorConfig::new(store);
    config.parallelism = 1;
    // One task reads its partition once.
    config.cache_bytes = 0;
    config.sink = Some(output::stage_log_sink(Level::Trace, false, log_format, progress::Display::plain()));
    Ok(Executor::new(config)?)
}

/// Print a contract failure as JSON on stdout (for the engine) and as text
/// on stderr; exit with its code.
fn contract_failure(err: RunError) -> ExitCode {
    let code = err.exit_code();
    println!("{}", serde_json::json!({ "error": err.to_string(), "exit_code": code }));
    print_error(&anyhow::Error::new(err));
    ExitCode::from(code)
}

fn task(args: TaskArgs) -> anyhow::Result<ExitCode> {
    let plan = absolute_location(&args.plan)?;
    let task = match args.task.parse() {
        Ok(t) => t,
        Err(reason) => return Ok(contract_failure(RunError::Plan { url: plan, reason })),
    };
    let executor = task_executor(&plan, args.store.as_deref(), args.log_format)?;
    let spec = TaskSpec {
        plan,
        plan_sha256: args.plan_sha256.unwrap_or_default(),
        stage: args.stage,
        task,
        pass: args.pass,
        attempt: args.attempt,
        run_id: args.run_id,
    };
    match executor.run_task(&spec) {
        Ok(outcome) => {
            println!("{}", serde_json::to_string(&outcome).context("rendering the task outcome")?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(contract_failure(e)),
    }
}

fn prepare(args: PrepareArgs) -> anyhow::Result<ExitCode> {
    let plan = absolute_location(&args.plan)?;
    let executor = task_executor(&plan, args.store.as_deref(), LogFormat::Text)?;
    match executor.prepare_stage(&plan, &args.stage) {
        Ok(tasks) => {
            println!("{}", serde_json::to_string(&tasks).context("rendering the stage's tasks")?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(contract_failure(e)),
    }
}

fn render_jobs(args: render::RenderArgs) -> anyhow::Result<ExitCode> {
    let root = absolute_location(&args.from)?;
    let store = match &args.store {
        Some(s) => absolute_location(s)?,
        None => format!("{}/data", root.trim_end_matches('/')),
    };
    let executor = executor(Some(1), store.clone(), quiet_logs(), EngineKind::Local, 0)?;
    let (name, version) = name_version(&args.pipeline)?;
    let (plan, _) = executor.deployed_plan(&root, name, version)?;
    executor.check_plan(&plan, None)?;
    for path in render::render(&executor, &plan, &store, &args)? {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn commit(args: CommitArgs) -> anyhow::Result<ExitCode> {
    let plan = absolute_location(&args.plan)?;
    let executor = task_executor(&plan, args.store.as_deref(), LogFormat::Text)?;
    match executor.commit_stage(&plan, &args.stage, args.run_id.as_deref()) {
        Ok(report) => {
            let json = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).ok();
            // An aggregator's result is its model, when it published no report.
            let result = match (&report.report, &report.model_bytes) {
                (None, Some(bytes)) if report.kind == wasmpipe_runtime::StageKind::Aggregator => json(bytes),
                _ => None,
            };
            let record = serde_json::json!({
                "stage": report.name,
                "kind": report.kind,
                "output": report.output,
                "rows": report.rows_out,
                "rows_in": report.rows_in,
                "quarantined": report.rows_quarantined,
                "passes": report.passes,
                "model": report.model.as_ref().map(|m| &m.sha256),
                "report": report.report.as_deref().and_then(|r| json(r.as_bytes())),
                "result": result,
                "committed_before": report.committed_before,
            });
            println!("{record}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(contract_failure(e)),
    }
}

fn record(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let plan = absolute_location(&args.plan)?;
    let executor = task_executor(&plan, args.store.as_deref(), LogFormat::Text)?;
    let log: wasmpipe_executor::RunLog = match &args.collect {
        Some(run_id) => match executor.collect_run(&plan, run_id, &args.engine, args.error.clone()) {
            Ok(log) => log,
            Err(e) => return Ok(contract_failure(e)),
        },
        None => serde_json::from_reader(std::io::stdin().lock())
            .context("reading the run log (JSON on stdin; docs/run-record.md says what it holds)")?,
    };
    match executor.record_run(&plan, log) {
        Ok((store, record)) => {
            let kept = wasmpipe_executor::record::location(&store, &record.run_id);
            // The page is for people: the record stands without it.
            let report = match io()?.block_on(wasmpipe_report::write(&Storage::new("."), &store, &record)) {
                Ok(at) => Some(at.url().to_string()),
                Err(e) => {
                    tracing::warn!("the run report was not written: {e}");
                    None
                }
            };
            println!("{}", serde_json::json!({ "record": kept.url(), "report": report }));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(contract_failure(e)),
    }
}

/// The directory a manifest's relative locations resolve against.
fn manifest_dir(path: &Path) -> anyhow::Result<PathBuf> {
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    base_dir.canonicalize().with_context(|| format!("cannot resolve {}", base_dir.display()))
}

fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let to = absolute_location(&args.to)?;
    let executor = executor(None, to.clone(), quiet_logs(), EngineKind::Local, 0)?;
    let d = executor.deploy(&args.manifest, &to)?;
    for url in &d.uploaded {
        eprintln!("uploaded {url}");
    }
    if d.unchanged {
        println!("{} version {} is unchanged ({})", d.name, d.version, d.manifest_url);
    } else {
        println!("deployed {} version {} ({})", d.name, d.version, d.manifest_url);
    }
    println!("run it with: wasmpipe run {}@{} --from {to}", d.name, d.version);
    Ok(ExitCode::SUCCESS)
}

/// A runtime for the I/O of commands that only read the store (no
/// engine, no task pool).
fn io() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn deployments(args: DeploymentsArgs) -> anyhow::Result<ExitCode> {
    use wasmpipe_storage::deployments;
    let root = absolute_location(&args.root)?;
    let root_at = deployments::root(&root)?;
    let io = io()?;
    match &args.show {
        Some(target) => {
            let (name, version) = name_version(target)?;
            let (text, version) = io.block_on(deployments::manifest(&root_at, name, version))?;
            eprintln!("{name} version {version}:");
            print!("{text}");
        }
        None => {
            let pipelines = io.block_on(deployments::list(&root_at))?;
            if pipelines.is_empty() {
                println!("no pipelines are deployed under {root}");
            }
            for p in pipelines {
                let versions: Vec<String> = p.versions.iter().map(|v| format!("v{v}")).collect();
                println!(
                    "{:<24} latest v{}  ({})",
                    p.name,
                    p.versions.last().copied().unwrap_or(0),
                    versions.join(" ")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn models(args: ModelsArgs) -> anyhow::Result<ExitCode> {
    use wasmpipe_storage::registry;
    let store = absolute_location(&args.store)?;
    let root = registry::root(&Storage::new("."), &store)?;
    let io = io()?;
    if let Some(wanted) = &args.model {
        let card = io.block_on(registry::find(&root, wanted))?.map_err(|matches| RunError::NoSuchModel {
            registry: root.url().into(),
            wanted: wanted.clone(),
            matches,
        })?;
        println!("{}", serde_json::to_string_pretty(&card).context("rendering the model card")?);
        for e in io.block_on(registry::evaluations(&root, &card.sha256))? {
            println!(
                "evaluated by {}/{} (run {}) on the predictions of {}:",
                e.pipeline, e.stage, e.run_id, e.predictions
            );
            println!("{}", serde_json::to_string_pretty(&e.report).context("rendering an evaluation")?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let cards = io.block_on(registry::list(&root))?;
    if cards.is_empty() {
        println!("no models are registered under {store}");
        return Ok(ExitCode::SUCCESS);
    }
    let fitted_by: Vec<String> = cards.iter().map(|c| format!("{}/{}", c.pipeline, c.stage)).collect();
    let width = fitted_by.iter().map(String::len).max().unwrap_or(0).max("PIPELINE/STAGE".len());
    let run_width = cards.iter().map(|c| c.run_id.len()).max().unwrap_or(0).max("RUN".len());
    println!(
        "{:<12}  {:<width$}  {:<20}  {:<run_width$}  {:>10}  SHA256",
        "MODEL", "PIPELINE/STAGE", "CREATED", "RUN", "BYTES"
    );
    for (card, by) in cards.iter().zip(&fitted_by) {
        println!(
            "{:<12}  {by:<width$}  {:<20}  {:<run_width$}  {:>10}  {}",
            &card.sha256[..12.min(card.sha256.len())],
            utc(card.created_at),
            card.run_id,
            human_bytes(card.bytes),
            card.sha256
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn runs(args: RunsArgs) -> anyhow::Result<ExitCode> {
    use wasmpipe_executor::record;
    let store = absolute_location(&args.store)?;
    let at = Storage::new(".").resolve(&store)?;
    let io = io()?;
    if let Some(wanted) = &args.run {
        let Some(run) = io.block_on(record::find(&at, wanted))? else {
            anyhow::bail!(
                "no run {wanted:?} is recorded under {}/{}\n  hint: `wasmpipe runs --store {store}` lists the runs there (a prefix must match one run)",
                at.url(),
                wasmpipe_executor::RUNS_DIR
            );
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&run)?);
        } else {
            print_run(&run);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let runs = io.block_on(record::list(&at))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        println!("no runs are recorded under {store}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(["RUN", "PIPELINE", "STATUS", "STARTED", "TIME", "STAGES"]);
    for run in &runs {
        let stages = match run.stages.iter().find(|s| s.status == "failed") {
            Some(failed) => format!("{} (failed at {})", run.stages.len(), failed.name),
            None => run.stages.len().to_string(),
        };
        table.add_row([
            run.run_id.clone(),
            run.pipeline.clone(),
            run.status.clone(),
            run.started.clone(),
            format!("{:.2}s", run.seconds),
            stages,
        ]);
    }
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    use wasmpipe_executor::record;
    let store = absolute_location(&args.store)?;
    let storage = Storage::new(".");
    let at = storage.resolve(&store)?;
    let io = io()?;
    let run = match &args.run {
        Some(wanted) => io.block_on(record::find(&at, wanted))?,
        None => io.block_on(record::list(&at))?.into_iter().next(),
    };
    let Some(run) = run else {
        anyhow::bail!(
            "no run {}is recorded under {}/{}\n  hint: `wasmpipe runs --store {store}` lists the runs there (a prefix must match one run)",
            args.run.as_ref().map_or(String::new(), |r| format!("{r:?} ")),
            at.url(),
            wasmpipe_executor::RUNS_DIR
        );
    };
    match &args.out {
        Some(path) => {
            let details = io.block_on(wasmpipe_report::gather(&storage, &run));
            let page = wasmpipe_report::render(&run, &details);
            std::fs::write(path, page).with_context(|| format!("cannot write {}", path.display()))?;
            println!("{}", path.display());
        }
        None => println!("{}", io.block_on(wasmpipe_report::write(&storage, &at, &run))?.url()),
    }
    Ok(ExitCode::SUCCESS)
}

/// One run record, for people.
fn print_run(run: &wasmpipe_executor::RunRecord) {
    println!("run      {}", run.run_id);
    println!("pipeline {} (plan {})", run.pipeline, &run.plan_sha256[..12.min(run.plan_sha256.len())]);
    println!("status   {}", run.status);
    println!("engine   {}, store {}", run.engine, run.store);
    println!("started  {}, ended {} ({:.2}s)", run.started, run.ended, run.seconds);
    let rows = run.stages.iter().map(|s| StageRow {
        name: s.name.clone(),
        kind: s.kind.clone(),
        tasks: match s.status.as_str() {
            "committed_before" => "committed".to_string(),
            "failed" => format!("failed after {}", s.tasks.len()),
            _ => s.tasks.len().to_string(),
        },
        passes: s.passes,
        rows: (s.rows_in, s.rows_out, s.rows_quarantined),
        bytes: (s.bytes_read, s.bytes_written),
        seconds: s.seconds,
    });
    let table = stage_table(rows);
    println!("{table}");
    for w in &run.warnings {
        println!("{} [{}] {}", w.level, w.label, w.message);
    }
    if let Some(e) = &run.error {
        println!("error: {e}");
    }
}

/// Seconds since the Unix epoch as an RFC 3339 date and time, UTC.
fn utc(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// One stage's line in the stage table.
struct StageRow {
    name: String,
    kind: String,
    tasks: String,
    passes: u32,
    /// In, out, quarantined.
    rows: (u64, u64, u64),
    /// Read, written.
    bytes: (u64, u64),
    seconds: f64,
}

/// The stage table a run's summary and `wasmpipe runs RUN_ID` print.
fn stage_table(rows: impl Iterator<Item = StageRow>) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY).set_header([
        "stage",
        "kind",
        "tasks",
        "passes",
        "rows in",
        "rows out",
        "quarantined",
        "read",
        "written",
        "time",
    ]);
    for r in rows {
        table.add_row([
            r.name,
            r.kind,
            r.tasks,
            if r.passes == 0 { "-".into() } else { r.passes.to_string() },
            r.rows.0.to_string(),
            r.rows.1.to_string(),
            if r.rows.2 == 0 { "-".into() } else { r.rows.2.to_string() },
            human_bytes(r.bytes.0),
            human_bytes(r.bytes.1),
            format!("{:.2}s", r.seconds),
        ]);
    }
    table
}

/// The longest report value the run summary prints.
const MAX_REPORT_VALUE: usize = 200;

/// A report's value for a terminal, when it is longer than
/// [`MAX_REPORT_VALUE`] (what the run report plots: curves, samples): how
/// many values it holds.
fn short_value(v: &serde_json::Value) -> Option<String> {
    (v.to_string().len() > MAX_REPORT_VALUE).then(|| format!("({} values; plotted in the run report)", values(v)))
}

/// A report with each long top-level value shortened ([`short_value`]).
fn short_report(doc: &serde_json::Value) -> serde_json::Value {
    match doc {
        serde_json::Value::Object(map) => {
            map.iter().map(|(k, v)| (k.clone(), short_value(v).map_or_else(|| v.clone(), Into::into))).collect()
        }
        other => short_value(other).map_or_else(|| other.clone(), Into::into),
    }
}

/// How many numbers, strings and booleans `v` holds.
fn values(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(items) => items.iter().map(values).sum(),
        serde_json::Value::Object(map) => map.values().map(values).sum(),
        _ => 1,
    }
}

fn print_report(report: &RunReport) {
    let rows = report.stages.iter().map(|s| StageRow {
        name: s.name.clone(),
        kind: s.kind.to_string(),
        tasks: match (&s.committed_before, s.tasks_skipped) {
            (Some(_), _) => "committed".to_string(),
            (None, 0) => s.tasks.to_string(),
            (None, k) => format!("{} ({k} resumed)", s.tasks),
        },
        passes: s.passes,
        rows: (s.rows_in, s.rows_out, s.rows_quarantined),
        bytes: (s.bytes_read, s.bytes_written),
        seconds: s.wall.as_secs_f64(),
    });
    let table = stage_table(rows);
    println!("{table}");
    println!("run {} finished in {:.2}s", report.run_id, report.wall.as_secs_f64());
    println!("outputs:");
    let width = report.stages.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &report.stages {
        println!("  {:<width$} {}", s.name, s.output);
        if s.rows_quarantined > 0 {
            println!("  {:<width$} {} rows quarantined in {}/_quarantine", "", s.rows_quarantined, s.output);
        }
    }
    // Each stage's report, or an aggregator's result when it published none.
    for s in &report.stages {
        let text = match (&s.report, &s.model_bytes) {
            (Some(json), _) => json.as_bytes(),
            (None, Some(bytes)) if s.kind == wasmpipe_runtime::StageKind::Aggregator => bytes,
            _ => continue,
        };
        println!("{} of {}:", if s.report.is_some() { "report" } else { "result" }, s.name);
        match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(text) {
            Ok(map) => {
                for (k, v) in map {
                    match (&v, v.as_f64()) {
                        // Four decimals, or significant digits for what they would round to 0.
                        (_, Some(f)) if !v.is_u64() && !v.is_i64() => match f.abs() {
                            a if a > 0.0 && a < 5e-5 => println!("{k} = {f:.3e}"),
                            _ => println!("{k} = {f:.4}"),
                        },
                        // A list of records (a validation report's rules): one per line.
                        (serde_json::Value::Array(items), _) if items.iter().any(|i| i.is_object()) => {
                            println!("{k} =");
                            for item in items {
                                println!("  {item}");
                            }
                        }
                        // What the run report plots (curves, samples) is too
                        // long for a terminal.
                        _ => match short_value(&v) {
                            Some(summary) => println!("{k} = {summary}"),
                            None => println!("{k} = {v}"),
                        },
                    }
                }
            }
            Err(_) => println!("  ({} bytes, not a JSON object)", text.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_renders_calendar_dates() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(951_825_600), "2000-02-29T12:00:00Z");
        assert_eq!(super::utc(1_735_689_599), "2024-12-31T23:59:59Z");
    }
}
