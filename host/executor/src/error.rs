//! Run errors: each names the stage (and partition) it happened in.

use wasmpipe_runtime::{CallError, RuntimeError};
use wasmpipe_storage::StorageError;
use wasmpipe_toolchain::ToolchainError;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The engine could not start.
    #[error(transparent)]
    Runtime(RuntimeError),
    /// A stage crate did not build.
    #[error("stage {stage:?}: {source}")]
    Build {
        /// The stage.
        stage: String,
        /// What went wrong.
        source: ToolchainError,
    },
    /// A stage component did not load.
    #[error("stage {stage:?}: {source}")]
    Load {
        /// The stage.
        stage: String,
        /// What went wrong.
        source: RuntimeError,
    },
    /// Storage failed outside a task (listing inputs, committing).
    #[error("stage {stage:?}: {source}")]
    Storage {
        /// The stage.
        stage: String,
        /// What went wrong.
        source: StorageError,
    },
    /// A task failed.
    #[error("stage {stage:?}, {task}: {cause}{more}", more = more_failures(*.others))]
    Task {
        /// The stage.
        stage: String,
        /// Which task: `partition 3 of 8 (file:///...#rg3)`, `merge`...
        task: String,
        /// What went wrong (boxed: it is large, and rare).
        cause: Box<TaskFailure>,
        /// How many other tasks of the stage failed too.
        others: usize,
    },
    /// An iterative estimator kept asking for passes.
    #[error(
        "stage {stage:?}: did not finish fitting within {passes} passes\n  hint: raise `max_passes` in the stage's [limits], or check the estimator's convergence test"
    )]
    TooManyPasses {
        /// The stage.
        stage: String,
        /// The limit.
        passes: u32,
    },
    /// A deployed pipeline names a component by a relative path, which
    /// means nothing in the store it runs from.
    #[error(
        "stage {stage:?}: component {component:?} is a path, but this pipeline runs from a deployment, which runs only components pinned by SHA-256 (`sha256:...`)\n  hint: deploy the manifest with `wasmpipe deploy`, which pins every component"
    )]
    Unpinned {
        /// The stage.
        stage: String,
        /// The path as written.
        component: String,
    },
    /// A stage names a location outside what the run may touch.
    #[error(
        "stage {stage:?}: may not {what} {url}: it is outside {}\n  hint: if you trust this pipeline with it, allow it with `{flag} PREFIX`",
        allowed.join(", ")
    )]
    Confined {
        /// The stage.
        stage: String,
        /// `read` or `write to`.
        what: &'static str,
        /// The location.
        url: String,
        /// The prefixes the run may use.
        allowed: Vec<String>,
        /// The flag that widens them.
        flag: &'static str,
    },
    /// The parts of a stage's output disagree on the schema.
    #[error(
        "stage {stage:?}: its partitions wrote different schemas to {output}: partition {first} wrote {first_fields}, partition {other} wrote {other_fields}; an output has one schema\n  hint: make the stage emit the same columns and types for every partition (cast, or fill missing columns)"
    )]
    SchemaMismatch {
        /// The stage.
        stage: String,
        /// Its output.
        output: String,
        /// A partition, and its fields that differ.
        first: usize,
        /// Those fields.
        first_fields: String,
        /// Another partition that disagrees.
        other: usize,
        /// Its fields.
        other_fields: String,
    },
    /// A stage whose column selectors have just resolved rejects its
    /// configuration (checked when it started, before its first task).
    #[error(
        "stage {stage:?}: {why}\n  (checked when the stage started, its column selectors resolved: {selected})\n  hint: fix [stage.{stage}.config] in the manifest"
    )]
    ConfigAtStart {
        /// The stage.
        stage: String,
        /// What it said.
        why: String,
        /// What each selector selected, for people.
        selected: String,
    },
    /// A column selector of a stage's configuration is malformed, selects
    /// nothing, or excludes a column the stage's input does not have.
    #[error(
        "stage {stage:?}: {reason}\n  hint: fix the column selector in [stage.{stage}.config]; `wasmpipe show` lists an output's columns"
    )]
    Columns {
        /// The stage.
        stage: String,
        /// Why.
        reason: String,
    },
    /// A stage's `model` cannot be applied.
    #[error("stage {stage:?}: {reason}")]
    Model {
        /// The stage.
        stage: String,
        /// Why.
        reason: String,
    },
    /// The model registry could not be read.
    #[error("model registry: {source}")]
    Registry {
        /// What went wrong.
        source: Box<StorageError>,
    },
    /// The model registry holds no model, or more than one, that matches
    /// what was asked for.
    #[error("{}", no_such_model(registry, wanted, matches))]
    NoSuchModel {
        /// The registry's URL.
        registry: String,
        /// The SHA-256 or prefix asked for.
        wanted: String,
        /// The models that match, when more than one does.
        matches: Vec<String>,
    },
    /// Stages rejected their configuration when the run checked them,
    /// before any data moved: each stage's name and what it said.
    #[error("{}", rejected_configs(.rejected, .unchecked))]
    Config {
        /// `(stage, why)`, in the plan's order.
        rejected: Vec<(String, String)>,
        /// The stages downstream of a rejected one, which could not be
        /// checked in full.
        unchecked: Vec<String>,
    },
    /// A plan cannot be read or does not fit what was asked of it.
    #[error("plan {url}: {reason}")]
    Plan {
        /// Where the plan is (or its pipeline).
        url: String,
        /// Why.
        reason: String,
    },
    /// The manifest is unreadable or invalid.
    #[error(transparent)]
    Manifest(#[from] wasmpipe_manifest::ManifestError),
    /// Deploying, or reading a deployment, failed.
    #[error("deploy: {source}")]
    Deploy {
        /// The object or input involved.
        what: String,
        /// What went wrong.
        source: Box<StorageError>,
    },
}

fn no_such_model(registry: &str, wanted: &str, matches: &[String]) -> String {
    if matches.is_empty() {
        format!(
            "no model {wanted:?} in the model registry {registry}\n  hint: `wasmpipe models` lists the models there, by SHA-256 (any unique prefix of one names it)"
        )
    } else {
        format!(
            "{wanted:?} matches {} models in the model registry {registry}: {}\n  hint: give more digits of the SHA-256",
            matches.len(),
            matches.join(", ")
        )
    }
}

fn rejected_configs(rejected: &[(String, String)], unchecked: &[String]) -> String {
    let mut text = match rejected.len() {
        1 => "a stage rejects its configuration or input (checked before any data moved):".to_string(),
        n => format!("{n} stages reject their configuration or input (checked before any data moved):"),
    };
    // Each stage's hint under it: its own, or where its configuration is.
    for (stage, why) in rejected {
        let why = why.replace("\n  hint:", "\n    hint:");
        text.push_str(&format!("\n  stage {stage:?}: {why}"));
        if !why.contains("hint:") {
            text.push_str(&format!("\n    hint: fix [stage.{stage}.config] in the manifest"));
        }
    }
    match unchecked {
        [] => {}
        [one] => text.push_str(&format!(
            "\n  (stage {one:?} reads what a rejected stage writes, and is checked in full once that is fixed)"
        )),
        many => text.push_str(&format!(
            "\n  (stages {} read what a rejected stage writes, and are checked in full once that is fixed)",
            many.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
        )),
    }
    text
}

fn more_failures(others: usize) -> String {
    match others {
        0 => String::new(),
        1 => "\n  (1 more task of this stage failed)".into(),
        n => format!("\n  ({n} more tasks of this stage failed)"),
    }
}

/// What went wrong inside a task.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskFailure {
    /// The stage failed, trapped or hit a limit.
    #[error(transparent)]
    Stage(#[from] CallError),
    /// Reading input or writing output failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The task ran past its wall-clock backstop (stuck reading or
    /// writing, or in the host).
    #[error(
        "ran past its wall-clock limit of {limit_s} s and was stopped\n  hint: raise `wall_timeout_s` in the stage's [limits], or check that its storage answers"
    )]
    WallClock {
        /// The limit, in seconds.
        limit_s: f64,
    },
    /// A bug in wasmpipe or a library it uses (a panic), caught so that
    /// only this task fails.
    #[error("internal error: {0}\n  hint: this is a wasmpipe bug; please report it with the input that caused it")]
    Internal(String),
    /// A stage with named outputs wrote a row that its route column sends
    /// to none of them.
    #[error(
        "{0}\n  hint: every row a stage with `outputs` writes needs its `route` column set to one of those outputs"
    )]
    Route(String),
    /// An iterative estimator asked for a pass beyond `max_passes`.
    #[error(
        "did not finish fitting within {passes} passes\n  hint: raise `max_passes` in the stage's [limits], or check the estimator's convergence test"
    )]
    TooManyPasses {
        /// The limit.
        passes: u32,
    },
    /// The stage has no such task (an engine asked for one that is not
    /// there).
    #[error("{0}")]
    NoSuchTask(String),
    /// A task that needs another task's record ran before it.
    #[error(
        "{0}\n  hint: an engine runs a stage's fit tasks, then their merge, then its transform tasks, then the commit"
    )]
    NotReady(String),
    /// A task's process ended without an outcome.
    #[error("{message}")]
    Process {
        /// Its exit code (none when a signal ended it).
        code: Option<i32>,
        /// What it said, or how it ended.
        message: String,
    },
}

/// Exit code: done.
pub const EXIT_OK: u8 = 0;
/// Exit code: a deterministic failure (the stage failed, trapped, or hit a
/// limit; the input is bad): retrying cannot help.
pub const EXIT_DETERMINISTIC: u8 = 65;
/// Exit code: an internal error (a wasmpipe bug, or an engine that ran
/// tasks out of order).
pub const EXIT_INTERNAL: u8 = 70;
/// Exit code: a transient failure (storage unavailable, throttled or timed
/// out, a lost race, a lost process): worth retrying.
pub const EXIT_TRANSIENT: u8 = 75;

impl TaskFailure {
    /// What an engine should do about it, as an exit code (see
    /// `docs/commit-protocol.md`).
    pub fn exit_code(&self) -> u8 {
        match self {
            TaskFailure::Stage(_) | TaskFailure::TooManyPasses { .. } | TaskFailure::Route(_) => EXIT_DETERMINISTIC,
            TaskFailure::Storage(e) => storage_exit_code(e),
            TaskFailure::WallClock { .. } => EXIT_TRANSIENT,
            TaskFailure::Internal(_) | TaskFailure::NoSuchTask(_) | TaskFailure::NotReady(_) => EXIT_INTERNAL,
            TaskFailure::Process { code: Some(c), .. } => u8::try_from(*c).unwrap_or(EXIT_INTERNAL),
            TaskFailure::Process { code: None, .. } => EXIT_TRANSIENT,
        }
    }

    /// The failure a `wasmpipe task` process reported (its stdout holds
    /// `{"error": MESSAGE, "exit_code": N}`), or how it died.
    pub fn from_process(status: std::process::ExitStatus, stdout: &[u8]) -> TaskFailure {
        let said = serde_json::from_slice::<serde_json::Value>(stdout).ok();
        let message = said.as_ref().and_then(|v| Some(v.get("error")?.as_str()?.to_string()));
        match (status.code(), message) {
            (code, Some(message)) => TaskFailure::Process { code, message },
            (Some(code), None) => TaskFailure::Process {
                code: Some(code),
                message: format!("the task process exited with code {code} without saying why"),
            },
            (None, None) => {
                #[cfg(unix)]
                let how = {
                    use std::os::unix::process::ExitStatusExt;
                    status.signal().map_or_else(|| "by a signal".into(), |s| format!("by signal {s}"))
                };
                #[cfg(not(unix))]
                let how = "abnormally".to_string();
                TaskFailure::Process { code: None, message: format!("the task process was ended {how}") }
            }
        }
    }
}

/// Transient when the store could not be reached or answered with an
/// error worth retrying; deterministic when the data is bad or missing.
/// Whether `e` may pass on a retry (a store that did not answer, a
/// conflicting commit), as opposed to one that will fail again.
pub(crate) fn is_transient(e: &StorageError) -> bool {
    storage_exit_code(e) == EXIT_TRANSIENT
}

fn storage_exit_code(e: &StorageError) -> u8 {
    let transient_source = |source: &object_store::Error| {
        !matches!(
            source,
            object_store::Error::NotFound { .. }
                | object_store::Error::InvalidPath { .. }
                | object_store::Error::NotSupported { .. }
                | object_store::Error::NotImplemented { .. }
                | object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
                | object_store::Error::UnknownConfigurationKey { .. }
        )
    };
    match e {
        StorageError::Store { source, .. } if transient_source(source) => EXIT_TRANSIENT,
        StorageError::CommitConflict { .. } => EXIT_TRANSIENT,
        // A store error while writing a part reaches us through parquet,
        // often wrapped in an io::Error by the writer's AsyncWrite.
        StorageError::Parquet { source: parquet::errors::ParquetError::External(inner), .. } => {
            let store = inner
                .downcast_ref::<object_store::Error>()
                .or_else(|| inner.downcast_ref::<std::io::Error>()?.get_ref()?.downcast_ref::<object_store::Error>());
            match store {
                Some(source) if !transient_source(source) => EXIT_DETERMINISTIC,
                Some(_) => EXIT_TRANSIENT,
                None if inner.downcast_ref::<std::io::Error>().is_some() => EXIT_TRANSIENT,
                None => EXIT_DETERMINISTIC,
            }
        }
        _ => EXIT_DETERMINISTIC,
    }
}

impl RunError {
    /// What an engine (or a shell script) should do about it, as an exit
    /// code: 65 deterministic, 75 transient, 70 internal.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Runtime(_) => EXIT_INTERNAL,
            RunError::Storage { source, .. } => storage_exit_code(source),
            RunError::Registry { source } | RunError::Deploy { source, .. } => storage_exit_code(source),
            RunError::Task { cause, .. } => cause.exit_code(),
            _ => EXIT_DETERMINISTIC,
        }
    }
}
