//! `wasmpipe`: run pipelines of sandboxed WebAssembly stages over Parquet
//! in object storage, and build stage crates into components.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wasmpipe_executor::{Executor, ExecutorConfig, RunReport};
use wasmpipe_manifest::Manifest;
use wasmpipe_runtime::{Level, LogRecord};

/// Run ML and data pipelines whose stages are sandboxed WebAssembly
/// components reading and writing Parquet.
#[derive(Parser)]
#[command(name = "wasmpipe", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(RunArgs),
    Build(BuildArgs),
}

/// Run a pipeline from its manifest.
#[derive(clap::Args)]
struct RunArgs {
    /// The manifest (wasmpipe.toml).
    manifest: PathBuf,
    /// Most stage instances running at once (default: the number of cores).
    #[arg(long, short = 'p', env = "WASMPIPE_PARALLELISM")]
    parallelism: Option<usize>,
    /// Where stages without an `output` write: a directory or URL.
    #[arg(long, env = "WASMPIPE_STORE", default_value = "wasmpipe-data")]
    store: String,
    /// Show debug-level stage logs too.
    #[arg(long, short)]
    verbose: bool,
    /// Show no stage logs (warnings and errors still show).
    #[arg(long, short, conflicts_with = "verbose")]
    quiet: bool,
}

/// Build a stage crate into a component (prints its path, size and hash).
#[derive(clap::Args)]
struct BuildArgs {
    /// Directory of the stage crate.
    crate_dir: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WASMPIPE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,wasmpipe=info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Build(args) => build(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            print_error(&err);
            ExitCode::FAILURE
        }
    }
}

/// Print the error and each cause that its message does not already hold.
fn print_error(err: &anyhow::Error) {
    let mut shown = format!("{err}");
    eprintln!("error: {shown}");
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !shown.contains(&text) {
            eprintln!("  caused by: {text}");
            shown.push_str(&text);
        }
    }
}

fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let toolchain = wasmpipe_toolchain::detect()?;
    eprintln!("building {} with {toolchain}", args.crate_dir.display());
    let built = wasmpipe_toolchain::build(&args.crate_dir, &toolchain, wasmpipe_toolchain::Progress::Show)?;
    println!("{}", built.path.display());
    println!("size   {} bytes", built.size);
    println!("sha256 {}", built.sha256);
    Ok(ExitCode::SUCCESS)
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::load(&args.manifest)?;
    let base_dir = args
        .manifest
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let base_dir = base_dir.canonicalize().with_context(|| format!("cannot resolve {}", base_dir.display()))?;
    let store = if args.store.contains("://") {
        args.store.clone()
    } else {
        std::path::absolute(&args.store).context("cannot resolve --store")?.display().to_string()
    };

    let min_level = if args.verbose {
        Level::Debug
    } else if args.quiet {
        Level::Warn
    } else {
        Level::Info
    };
    let color = std::io::stderr().is_terminal();
    let mut config = ExecutorConfig::new(store);
    if let Some(p) = args.parallelism {
        anyhow::ensure!(p > 0, "--parallelism must be at least 1");
        config.parallelism = p;
    }
    config.sink = Some(Arc::new(move |label: &str, record: &LogRecord| {
        if rank(record.level) >= rank(min_level) {
            let tag = match record.level {
                Level::Error => "error ",
                Level::Warn => "warn ",
                _ => "",
            };
            if color {
                eprintln!("\x1b[2m[{label}]\x1b[0m {tag}{}", record.message);
            } else {
                eprintln!("[{label}] {tag}{}", record.message);
            }
        }
    }));
    let executor = Executor::new(config)?;
    eprintln!("running pipeline {:?} ({} stages)", manifest.name, manifest.stages.len());
    let report = executor.run(&manifest, &base_dir)?;
    print_report(&report);
    Ok(ExitCode::SUCCESS)
}

fn rank(level: Level) -> u8 {
    match level {
        Level::Trace => 0,
        Level::Debug => 1,
        Level::Info => 2,
        Level::Warn => 3,
        Level::Error => 4,
    }
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

fn print_report(report: &RunReport) {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::UTF8_BORDERS_ONLY)
        .set_header(["stage", "kind", "tasks", "passes", "rows in", "rows out", "read", "written", "time"]);
    for s in &report.stages {
        table.add_row([
            s.name.clone(),
            s.kind.to_string(),
            s.tasks.to_string(),
            if s.passes == 0 { "-".into() } else { s.passes.to_string() },
            s.rows_in.to_string(),
            s.rows_out.to_string(),
            human_bytes(s.bytes_read),
            human_bytes(s.bytes_written),
            format!("{:.2}s", s.wall.as_secs_f64()),
        ]);
    }
    println!("{table}");
    println!("run {} finished in {:.2}s", report.run_id, report.wall.as_secs_f64());
    println!("outputs:");
    for s in &report.stages {
        println!("  {:<12} {}", s.name, s.output);
    }
    for s in report.stages.iter().filter(|s| s.kind == wasmpipe_runtime::StageKind::Aggregator) {
        let Some(bytes) = &s.model_bytes else { continue };
        println!("result of {}:", s.name);
        match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes) {
            Ok(map) => {
                for (k, v) in map {
                    match v.as_f64() {
                        Some(f) if !v.is_u64() && !v.is_i64() => println!("{k} = {f:.4}"),
                        _ => println!("{k} = {v}"),
                    }
                }
            }
            Err(_) => println!("  ({} bytes, not a JSON object)", bytes.len()),
        }
    }
}
