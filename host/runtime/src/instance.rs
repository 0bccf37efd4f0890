//! Loaded stages and running instances: one [`StageInstance`] per task,
//! created from the stage's `InstancePre`, with its own memory cap, CPU
//! budget, resource table and deny-all WASI context.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Field as ArrowField, Schema};
use arrow::record_batch::RecordBatch;
use rand::SeedableRng;
use wasmtime::component::InstancePre;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtxBuilder};

use crate::bindings::exports::wasmpipe::stage::{describe, fit, transform};
use crate::bindings::{Field, FitOutcome, Level, TaskInfo, WitError};
use crate::budget::{HostBudget, HostLimit};
use crate::engine::Runtime;
use crate::error::{CallError, RuntimeError};
use crate::host::{LogRecord, LogSink, MemoryCap, Phase, Quarantined, Report, StageState, arrow_type, data_type};

/// What a stage component can do, read from its exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    /// Exports `transform` only.
    Transformer,
    /// Exports `fit` and `transform`.
    Estimator,
    /// Exports `fit` only.
    Aggregator,
}

impl std::fmt::Display for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StageKind::Transformer => "transformer",
            StageKind::Estimator => "estimator",
            StageKind::Aggregator => "aggregator",
        })
    }
}

/// A compiled, linked stage, ready to instantiate once per task.
#[derive(Clone)]
pub struct StageComponent {
    pre: InstancePre<StageState>,
    transform: Option<transform::GuestIndices>,
    fit: Option<fit::GuestIndices>,
    describe: Option<describe::GuestIndices>,
    kind: StageKind,
    hash: String,
    size: usize,
    origin: PathBuf,
}

impl std::fmt::Debug for StageComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageComponent")
            .field("kind", &self.kind)
            .field("hash", &self.hash)
            .field("size", &self.size)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl StageComponent {
    pub(crate) fn new(
        pre: InstancePre<StageState>,
        hash: String,
        size: usize,
        [transform, fit, describe]: [bool; 3],
        origin: &Path,
    ) -> Result<Self, RuntimeError> {
        let link = |e: wasmtime::Error| RuntimeError::Link { path: origin.to_owned(), reason: format!("{e:#}") };
        let transform = transform.then(|| transform::GuestIndices::new(&pre)).transpose().map_err(link)?;
        let fit = fit.then(|| fit::GuestIndices::new(&pre)).transpose().map_err(link)?;
        let describe = describe.then(|| describe::GuestIndices::new(&pre)).transpose().map_err(link)?;
        let kind = match (transform.is_some(), fit.is_some()) {
            (true, true) => StageKind::Estimator,
            (true, false) => StageKind::Transformer,
            _ => StageKind::Aggregator,
        };
        Ok(StageComponent { pre, transform, fit, describe, kind, hash, size, origin: origin.to_owned() })
    }

    /// Whether it says what it writes before its model exists (it exports
    /// `describe`).
    pub fn describes(&self) -> bool {
        self.describe.is_some()
    }

    /// Transformer, estimator or aggregator.
    pub fn kind(&self) -> StageKind {
        self.kind
    }

    /// SHA-256 of the component's bytes, hex: the stage's code identity.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Size of the component in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Where the component was loaded from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }
}

/// Per-instance settings.
#[derive(Clone)]
pub struct InstanceLimits {
    /// Linear memory cap in bytes.
    pub memory_bytes: u64,
    /// Host memory the instance may hold through the host (arrays behind
    /// its handles, kernel outputs and scratch, rows it quarantined, its
    /// report, kept log lines), in bytes; the batch being handed to it is
    /// allowed on top (see [`crate::budget`]).
    pub host_memory_bytes: u64,
    /// Time the instance may spend in guest calls, over its whole life:
    /// its own code, the host's work on its behalf, and its (virtual)
    /// waits.
    pub cpu: Duration,
}

/// The per-task inputs of an instance besides its limits.
#[derive(Clone)]
pub struct InstanceSetup {
    /// The stage's config as a JSON object.
    pub config_json: Arc<str>,
    /// Tag for log lines, e.g. `clean[3]`.
    pub label: String,
    /// Receives log lines as they happen.
    pub sink: Option<LogSink>,
    /// Seeds the stage's WASI random numbers, so that every attempt of a
    /// task draws the same ones and writes the same bytes (derive it from
    /// the task's identity).
    pub seed: [u8; 32],
}

/// A stopped clock: stages get no time unless the host grants it, and
/// outputs stay reproducible.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Captured WASI stdout/stderr, folded into the log after each call.
struct Stdio {
    out: MemoryOutputPipe,
    err: MemoryOutputPipe,
    seen_out: usize,
    seen_err: usize,
}

/// Bytes of stdout or stderr kept per instance.
const STDIO_CAPACITY: usize = 1 << 20;

/// One live instance of a stage, running one task.
pub struct StageInstance {
    store: Store<StageState>,
    transform: Option<transform::Guest>,
    fit: Option<fit::Guest>,
    describe: Option<describe::Guest>,
    cpu_left: Duration,
    cpu_limit: Duration,
    memory_cap: u64,
    stdio: Stdio,
    poisoned: bool,
}

impl Runtime {
    /// Instantiate `stage` for one task.
    pub fn instantiate(
        &self,
        stage: &StageComponent,
        limits: &InstanceLimits,
        setup: InstanceSetup,
    ) -> Result<StageInstance, CallError> {
        let out = MemoryOutputPipe::new(STDIO_CAPACITY);
        let err = MemoryOutputPipe::new(STDIO_CAPACITY);
        // Random numbers from the task's seed: the same in every attempt.
        let stream = |salt: u8| {
            let mut seed = setup.seed;
            seed[0] ^= salt;
            rand::rngs::StdRng::from_seed(seed)
        };
        let insecure_seed = u128::from_le_bytes(setup.seed[16..].try_into().expect("16 bytes"));
        // No preopened directories, no environment, no arguments, no
        // network, a frozen wall clock (the monotonic clock is the stage's
        // own, see `crate::clock`): a stage that imports WASI gets nothing.
        let wasi = WasiCtxBuilder::new()
            .stdout(out.clone())
            .stderr(err.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(stream(1))
            .insecure_random(stream(2))
            .insecure_random_seed(insecure_seed)
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        let cap = limits.memory_bytes.min(self.config.max_memory_bytes);
        let memory = MemoryCap { cap: cap as usize, refused: None };
        let budget = HostBudget::new(usize::try_from(limits.host_memory_bytes).unwrap_or(usize::MAX));
        let state = StageState::new(memory, budget, wasi, setup.config_json, setup.label, setup.sink);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // What one call may copy between guest and host (wasmtime's
        // hostcall fuel: each string and list lifted counts its bytes) is
        // the host budget too, so a list of a million views of one long
        // string cannot make the host copy it a million times.
        store.set_hostcall_fuel(usize::try_from(limits.host_memory_bytes).unwrap_or(usize::MAX));
        // Every epoch tick, a running call checks its deadline, which the
        // host's work and the stage's waits have moved closer.
        store.epoch_deadline_callback(|mut ctx| {
            let budget = &mut ctx.data_mut().budget;
            if budget.past_deadline() {
                budget.exceeded.get_or_insert(HostLimit::Deadline);
                return Err(Trap::Interrupt.into());
            }
            Ok(UpdateDeadline::Continue(1))
        });
        let mut instance = StageInstance {
            store,
            transform: None,
            fit: None,
            describe: None,
            cpu_left: limits.cpu,
            cpu_limit: limits.cpu,
            memory_cap: cap,
            stdio: Stdio { out, err, seen_out: 0, seen_err: 0 },
            poisoned: false,
        };
        let inst = instance.guarded(|store| stage.pre.instantiate(store))?;
        let store = &mut instance.store;
        instance.transform = match &stage.transform {
            Some(idx) => Some(idx.load(&mut *store, &inst).map_err(|e| CallError::Trap { detail: format!("{e:#}") })?),
            None => None,
        };
        instance.fit = match &stage.fit {
            Some(idx) => Some(idx.load(&mut *store, &inst).map_err(|e| CallError::Trap { detail: format!("{e:#}") })?),
            None => None,
        };
        instance.describe = match &stage.describe {
            Some(idx) => Some(idx.load(&mut *store, &inst).map_err(|e| CallError::Trap { detail: format!("{e:#}") })?),
            None => None,
        };
        Ok(instance)
    }
}

/// The stage's own error, in words.
fn stage_error(e: WitError) -> CallError {
    CallError::Stage(match e {
        WitError::InvalidConfig(m) => return CallError::Config(cut_message(m)),
        WitError::ColumnNotFound(m) => return CallError::Columns(format!("column not found: {}", cut_message(m))),
        WitError::TypeMismatch(m) => return CallError::Columns(format!("type mismatch: {}", cut_message(m))),
        WitError::LengthMismatch(m) => format!("length mismatch: {}", cut_message(m)),
        WitError::InvalidArgument(m) => format!("invalid argument: {}", cut_message(m)),
        WitError::StageFailed(m) => cut_message(m),
    })
}

/// Longest error message of a stage kept, in bytes: an error travels into
/// run records, terminals and reports.
pub const MESSAGE_BYTES: usize = 4 << 10;

fn cut_message(m: String) -> String {
    if m.len() > MESSAGE_BYTES { crate::host::cut(&m, MESSAGE_BYTES) } else { m }
}

impl StageInstance {
    /// Run one guest call with the remaining CPU budget, then classify a
    /// failure as deadline, memory cap or trap. Any failure poisons the
    /// instance: a trapped instance must not be entered again.
    fn guarded<R>(&mut self, call: impl FnOnce(&mut Store<StageState>) -> wasmtime::Result<R>) -> Result<R, CallError> {
        if self.poisoned {
            return Err(CallError::Poisoned);
        }
        self.store.data_mut().budget.start_call(self.cpu_left);
        self.store.set_epoch_deadline(1);
        let result = call(&mut self.store);
        self.cpu_left = self.store.data().budget.time_left();
        self.drain_stdio();
        result.map_err(|e| {
            self.poisoned = true;
            self.classify(e)
        })
    }

    fn classify(&mut self, e: wasmtime::Error) -> CallError {
        match self.store.data().budget.exceeded {
            Some(HostLimit::Memory { budget_mib, asked_mib }) => {
                return CallError::HostMemory { budget_mib, asked_mib };
            }
            Some(HostLimit::Deadline) => return CallError::Deadline { limit_ms: self.cpu_limit.as_millis() as u64 },
            None => {}
        }
        if let Some(asked) = self.store.data().limits.refused {
            return CallError::Memory { cap_mib: self.memory_cap >> 20, asked_mib: (asked as u64) >> 20 };
        }
        if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
            return CallError::Deadline { limit_ms: self.cpu_limit.as_millis() as u64 };
        }
        let last_error =
            self.store.data().log.iter().rev().find(|r| r.level == Level::Error).map(|r| r.message.clone());
        let detail = match last_error {
            Some(msg) => format!("{msg}\n  {e:#}"),
            None => format!("{e:#}"),
        };
        CallError::Trap { detail }
    }

    fn drain_stdio(&mut self) {
        let out = self.stdio.out.contents();
        let err = self.stdio.err.contents();
        let state = self.store.data_mut();
        state.capture_stdio(Level::Info, &out[self.stdio.seen_out..]);
        state.capture_stdio(Level::Warn, &err[self.stdio.seen_err..]);
        self.stdio.seen_out = out.len();
        self.stdio.seen_err = err.len();
    }

    fn transform_guest(&self) -> Result<transform::Guest, CallError> {
        self.transform.clone().ok_or_else(|| CallError::Stage("this stage does not export transform".into()))
    }

    fn fit_guest(&self) -> Result<fit::Guest, CallError> {
        self.fit.clone().ok_or_else(|| CallError::Stage("this stage does not export fit".into()))
    }

    /// The log lines this instance has kept (the last [`crate::LOG_KEEP_BYTES`]
    /// of them; the sink saw every one).
    pub fn log(&self) -> Vec<LogRecord> {
        self.store.data().log.iter().cloned().collect()
    }

    /// CPU time spent in guest calls so far.
    pub fn cpu_used(&self) -> Duration {
        self.cpu_limit.saturating_sub(self.cpu_left)
    }

    /// Charge `spent`, time the host worked for the stage outside a call
    /// (writing the rows it quarantined, say), to its time budget; past
    /// the deadline the instance fails as a call would.
    pub fn charge(&mut self, spent: Duration) -> Result<(), CallError> {
        if self.poisoned {
            return Err(CallError::Poisoned);
        }
        if spent >= self.cpu_left {
            self.cpu_left = Duration::ZERO;
            self.poisoned = true;
            return Err(CallError::Deadline { limit_ms: self.cpu_limit.as_millis() as u64 });
        }
        self.cpu_left -= spent;
        Ok(())
    }

    /// Host memory the instance holds now, and its budget, in bytes.
    pub fn host_memory(&self) -> (usize, usize) {
        let budget = &self.store.data().budget;
        (budget.used(), budget.limit())
    }

    /// `transform.open`.
    pub fn open(&mut self, task: &TaskInfo, model: Option<&[u8]>) -> Result<(), CallError> {
        let g = self.transform_guest()?;
        self.store.data_mut().phase = Phase::Transform;
        self.guarded(|s| g.call_open(s, task, model))?.map_err(stage_error)
    }

    /// The rows the stage quarantined since the last call, with their
    /// reasons (see `host.quarantine`).
    pub fn take_quarantined(&mut self) -> Vec<Quarantined> {
        std::mem::take(&mut self.store.data_mut().quarantined)
    }

    /// The report the stage published from `finalize`, if any.
    pub fn take_report(&mut self) -> Option<Report> {
        let state = self.store.data_mut();
        let report = state.report.take()?;
        state.budget.release(report.json.len());
        Some(report)
    }

    /// `transform.transform`: hands `batch` to the guest, returns its output.
    pub fn transform(&mut self, batch: RecordBatch) -> Result<Option<RecordBatch>, CallError> {
        let g = self.transform_guest()?;
        let out = self.guarded(|s| {
            let handle = s.data_mut().push_batch(batch)?;
            g.call_transform(s, handle)
        })?;
        self.take_output(out)
    }

    /// `transform.close`.
    pub fn close(&mut self) -> Result<Option<RecordBatch>, CallError> {
        let g = self.transform_guest()?;
        let out = self.guarded(|s| g.call_close(s))?;
        self.take_output(out)
    }

    fn take_output(
        &mut self,
        out: Result<Option<wasmtime::component::Resource<crate::host::BatchHandle>>, WitError>,
    ) -> Result<Option<RecordBatch>, CallError> {
        match out.map_err(stage_error)? {
            None => Ok(None),
            Some(handle) => {
                // The host writes the batch: each column is encoded in turn,
                // so columns that repeat one array cost again.
                let batch = self.guarded(|s| {
                    let batch = s.data_mut().take_batch(handle)?;
                    s.data_mut().budget.reserve(crate::host::repeated_bytes(&batch))?;
                    Ok(batch)
                })?;
                Ok(Some(batch))
            }
        }
    }

    /// `fit.fit-open`.
    pub fn fit_open(&mut self, task: &TaskInfo, carry: Option<&[u8]>) -> Result<(), CallError> {
        let g = self.fit_guest()?;
        self.guarded(|s| g.call_fit_open(s, task, carry))?.map_err(stage_error)
    }

    /// `fit.fit-batch`.
    pub fn fit_batch(&mut self, batch: RecordBatch) -> Result<(), CallError> {
        let g = self.fit_guest()?;
        self.guarded(|s| {
            let handle = s.data_mut().push_batch(batch)?;
            g.call_fit_batch(s, handle)
        })?
        .map_err(stage_error)
    }

    /// `fit.fit-close`: the partition's partial state.
    pub fn fit_close(&mut self) -> Result<Vec<u8>, CallError> {
        let g = self.fit_guest()?;
        self.guarded(|s| g.call_fit_close(s))?.map_err(stage_error)
    }

    /// `fit.merge`.
    pub fn merge(&mut self, left: &[u8], right: &[u8]) -> Result<Vec<u8>, CallError> {
        let g = self.fit_guest()?;
        self.guarded(|s| g.call_merge(s, left, right))?.map_err(stage_error)
    }

    /// `fit.finalize`.
    pub fn finalize(&mut self, state: &[u8], pass: u32) -> Result<FitOutcome, CallError> {
        let g = self.fit_guest()?;
        self.store.data_mut().phase = Phase::Finalize;
        let outcome = self.guarded(|s| g.call_finalize(s, state, pass));
        self.store.data_mut().phase = Phase::Other;
        outcome?.map_err(stage_error)
    }

    /// `describe.output-schema`: the schema the stage writes for rows of
    /// `input`, said before its model exists. `None` when it does not say:
    /// it does not export `describe`, answers that it depends on the data,
    /// or names a column of a type the host cannot make without data.
    pub fn output_schema(&mut self, task: &TaskInfo, input: &Schema) -> Result<Option<Schema>, CallError> {
        let Some(g) = self.describe.clone() else { return Ok(None) };
        let fields: Vec<Field> = input
            .fields()
            .iter()
            .map(|f| Field { name: f.name().clone(), data_type: data_type(f.data_type()), nullable: f.is_nullable() })
            .collect();
        let Some(said) = self.guarded(|s| g.call_output_schema(s, task, &fields))?.map_err(stage_error)? else {
            return Ok(None);
        };
        // What it says is held and checked by the host: as wide as a batch
        // may be, with names as long as a batch's.
        if said.len() > crate::host::MAX_BATCH_COLUMNS
            || said.iter().any(|f| f.name.len() > crate::host::MAX_NAME_BYTES)
        {
            return Err(CallError::Stage(format!(
                "describe.output-schema gave {} columns; at most {} are allowed, with names of at most {} bytes",
                said.len(),
                crate::host::MAX_BATCH_COLUMNS,
                crate::host::MAX_NAME_BYTES
            )));
        }
        // A column it passes on keeps its Arrow type (a time zone, a type
        // the WIT names only as `other`); a new one is made from its type.
        let field = |f: Field| -> Option<ArrowField> {
            match input.field_with_name(&f.name) {
                Ok(same) if data_type(same.data_type()) == f.data_type => Some(same.clone()),
                _ => Some(ArrowField::new(&f.name, arrow_type(&f.data_type)?, f.nullable)),
            }
        };
        Ok(said.into_iter().map(field).collect::<Option<Vec<_>>>().map(Schema::new))
    }

    /// `describe.fit-passes`: the most fit passes the stage's configuration
    /// may take, the first included. `None` when it does not say: it does
    /// not export `describe`, or its passes are not bounded by its
    /// configuration.
    pub fn fit_passes(&mut self, task: &TaskInfo) -> Result<Option<u32>, CallError> {
        let Some(g) = self.describe.clone() else { return Ok(None) };
        self.guarded(|s| g.call_fit_passes(s, task))?.map_err(stage_error)
    }
}
