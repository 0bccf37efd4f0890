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
}
