//! Errors of the runtime.

use std::path::PathBuf;

/// Why a stage failed to load or a call into it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The engine could not be configured.
    #[error("cannot start the WebAssembly engine: {0}")]
    Engine(String),
    /// The bytes are neither a component nor a core module.
    #[error("{path}: not a WebAssembly component or module")]
    NotWasm {
        /// Where the bytes came from.
        path: PathBuf,
    },
    /// A core module could not be turned into a component.
    #[error(
        "{path}: cannot make a component of this core module: {reason}\n  hint: build stages with wasmpipe-sdk (wit-bindgen), e.g. `wasmpipe build <crate dir>`"
    )]
    Componentize {
        /// Where the module came from.
        path: PathBuf,
        /// The encoder's complaint.
        reason: String,
    },
    /// Compilation or validation failed.
    #[error("{path}: invalid component: {reason}")]
    Compile {
        /// Where the component came from.
        path: PathBuf,
        /// Cranelift's or the validator's complaint.
        reason: String,
    },
    /// The component exports neither stage interface.
    #[error(
        "{path}: not a wasmpipe stage: it exports neither wasmpipe:stage/transform@0.1.0 nor wasmpipe:stage/fit@0.1.0 (it exports: {exports})"
    )]
    NotAStage {
        /// Where the component came from.
        path: PathBuf,
        /// What it does export.
        exports: String,
    },
    /// The component needs imports the host does not provide.
    #[error(
        "{path}: cannot link: {reason}\n  hint: stages may import only wasmpipe:stage (types, host) and WASI 0.2, which wasmpipe denies"
    )]
    Link {
        /// Where the component came from.
        path: PathBuf,
        /// The linker's complaint.
        reason: String,
    },
    /// The component file could not be read.
    #[error(
        "cannot read component {path}: {source}\n  hint: check `component` in the manifest (relative paths are relative to the manifest)"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Why one call into a running stage failed. The executor adds the stage and
/// partition to the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The stage returned its WIT `error`.
    #[error("{0}")]
    Stage(String),
    /// The stage rejected its configuration (its WIT `invalid-config`
    /// error).
    #[error("invalid config: {0}\n  hint: fix the stage's [stage.NAME.config] table in the manifest")]
    Config(String),
    /// The stage found a column it needs missing, or of a type it does not
    /// take (its WIT `column-not-found` or `type-mismatch` error, most
    /// often the host's own answer passed on).
    #[error("{0}")]
    Columns(String),
    /// The stage ran past its CPU deadline.
    #[error(
        "exceeded its CPU deadline of {limit_ms} ms and was stopped (its own code, the host's work for it and its waits all count)\n  hint: raise `timeout_s` in the stage's [limits]"
    )]
    Deadline {
        /// The deadline.
        limit_ms: u64,
    },
    /// The stage asked for more memory than its cap.
    #[error(
        "hit its memory cap of {cap_mib} MiB (it asked for {asked_mib} MiB) and was stopped\n  hint: raise `memory_mib` in the stage's [limits], or have the stage hold less at once"
    )]
    Memory {
        /// The cap.
        cap_mib: u64,
        /// What it asked for.
        asked_mib: u64,
    },
    /// The host memory held for the stage (its arrays, kernel outputs,
    /// quarantined rows, report, log) would have exceeded its budget.
    #[error(
        "exceeded its host memory budget of {budget_mib} MiB (a request for {asked_mib} MiB more was refused) and was stopped\n  hint: raise `host_memory_mib` in the stage's [limits], or have the stage keep fewer or smaller columns at once"
    )]
    HostMemory {
        /// The budget.
        budget_mib: u64,
        /// What the refused request asked for.
        asked_mib: u64,
    },
    /// The stage trapped (panicked, hit `unreachable`, accessed memory out of
    /// bounds...). `detail` carries the last error it logged (e.g. a panic
    /// message) and the wasm backtrace.
    #[error("trapped: {detail}")]
    Trap {
        /// What is known about the trap.
        detail: String,
    },
    /// The instance is unusable after an earlier failure.
    #[error("instance is unusable after an earlier failure")]
    Poisoned,
}
