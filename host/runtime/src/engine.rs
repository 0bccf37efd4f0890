//! The process-wide engine: configuration, the epoch ticker that enforces
//! CPU deadlines, the linker with the host imports, and component loading
//! (componentize core modules, compile once, cache on disk).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::{DESCRIBE_INTERFACE, DescribedEstimator, FIT_INTERFACE, TRANSFORM_INTERFACE};
use crate::error::RuntimeError;
use crate::host::StageState;
use crate::instance::StageComponent;

/// How often the epoch advances. A deadline is a whole number of ticks, so
/// this is the deadline's resolution; 10 ms costs nothing measurable.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What of an instance's linear memory stays mapped for the next instance
/// in its slot (only the pages it touched, where PAGEMAP_SCAN is there).
const KEEP_RESIDENT: usize = 32 << 20;

/// Settings fixed for the life of a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Most stage instances alive at once (the pooling allocator's slots).
    /// The executor never runs more tasks at once than this.
    pub max_instances: u32,
    /// Largest linear memory any instance may have, in bytes. Each stage's
    /// own cap is at most this.
    pub max_memory_bytes: u64,
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { max_instances: 64, max_memory_bytes: 4 << 30, cache_dir: default_cache_dir() }
    }
}

/// `$WASMPIPE_CACHE_DIR`, else `$XDG_CACHE_HOME/wasmpipe`, else
/// `~/.cache/wasmpipe`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WASMPIPE_CACHE_DIR") {
        return Some(dir.into());
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("wasmpipe"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/wasmpipe"))
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wasmpipe-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch thread");
        EpochTicker { stop, thread: Some(thread) }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The engine, linker and component cache shared by every stage of a run.
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StageState>,
    pub(crate) config: RuntimeConfig,
    _ticker: EpochTicker,
}

impl Runtime {
    /// Build the engine: Cranelift, component model, pooling allocator sized
    /// by `config`, epoch interruption for deadlines.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let n = config.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            // A Rust stage from wit-component holds the stage module plus a
            // few small shim modules; a Python stage from componentize-py
            // links 14 core modules (libc, libpython, the bindings, shims)
            // around one memory and 2 tables. 24 core instances and 4
            // tables each leave room for both (a core instance slot is a
            // count; tables are reserved address space, not memory).
            .total_core_instances(n * 24)
            .total_memories(n * 2)
            .total_tables(n * 4)
            .max_memory_size(config.max_memory_bytes as usize)
            // Instances come and go per task. When one ends, the pages it
            // touched are found with Linux's PAGEMAP_SCAN (6.7 and later;
            // elsewhere the lowest pages are reset) and reset in place, up
            // to these sizes, instead of being unmapped: the next instance
            // in the slot starts without page faults. A Python stage
            // touches ~8 MiB of CPython's heap before its first batch.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(1 << 20);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        // `WASMPIPE_PERF_MAP=1`: name the stages' compiled functions in
        // /tmp/perf-PID.map, so `perf record`/`perf report` profile a
        // stage's own code (compiled code cached without it is reused).
        if std::env::var_os("WASMPIPE_PERF_MAP").is_some_and(|v| v == "1") {
            wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&wasm).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        DescribedEstimator::add_to_linker::<_, HasSelf<StageState>>(&mut linker, |s| s)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        // Components built for wasm32-wasip2 import WASI; they get a context
        // that denies everything (see `instance::deny_all_wasi`).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        // ...except for the monotonic clock, which is the stage's own: it
        // moves only when the stage waits, and waits are charged, never
        // slept (see `crate::clock`).
        linker.allow_shadowing(true);
        wasmtime_wasi::p2::bindings::clocks::monotonic_clock::add_to_linker::<_, HasSelf<StageState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        linker.allow_shadowing(false);

        let ticker = EpochTicker::start(engine.clone());
        Ok(Runtime { engine, linker, config, _ticker: ticker })
    }

    /// The settings this runtime was built with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Load a stage from a file: a component, or a core module carrying
    /// wit-bindgen's component metadata (componentized here).
    pub fn load_file(&self, path: &Path) -> Result<StageComponent, RuntimeError> {
        let bytes = std::fs::read(path).map_err(|source| RuntimeError::Read { path: path.to_owned(), source })?;
        self.load(&bytes, path)
    }

    /// Load a stage from bytes; `origin` names it in errors.
    pub fn load(&self, bytes: &[u8], origin: &Path) -> Result<StageComponent, RuntimeError> {
        let component_bytes = to_component(bytes, origin)?;
        let hash = hex::encode(Sha256::digest(&component_bytes));
        let component = self.compile_cached(&component_bytes, &hash, origin)?;

        let exports: Vec<String> =
            component.component_type().exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let transform = exports.iter().any(|e| e == TRANSFORM_INTERFACE);
        let fit = exports.iter().any(|e| e == FIT_INTERFACE);
        let describe = exports.iter().any(|e| e == DESCRIBE_INTERFACE);
        if !transform && !fit {
            return Err(RuntimeError::NotAStage { path: origin.to_owned(), exports: exports.join(", ") });
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| RuntimeError::Link { path: origin.to_owned(), reason: format!("{e:#}") })?;
        StageComponent::new(pre, hash, component_bytes.len(), [transform, fit, describe], origin)
    }

    fn compile_cached(&self, bytes: &[u8], hash: &str, origin: &Path) -> Result<Component, RuntimeError> {
        let compile = || {
            Component::new(&self.engine, bytes)
                .map_err(|e| RuntimeError::Compile { path: origin.to_owned(), reason: format!("{e:#}") })
        };
        let Some(dir) = &self.config.cache_dir else {
            return compile();
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let file = dir.join(format!("{hash}-{:016x}.cwasm", h.finish()));
        // Read the entry into memory rather than mapping it: a mapped file
        // truncated by another process would crash this one (SIGBUS).
        if let Ok(cached) = std::fs::read(&file) {
            // SAFETY: the entry was written by `Engine::precompile_component`
            // of an engine with the same compatibility hash (it is in the
            // name); wasmtime checks its header again, and a damaged entry
            // fails that check and is replaced below.
            match unsafe { Component::deserialize(&self.engine, &cached) } {
                Ok(c) => return Ok(c),
                Err(e) => tracing::warn!("replacing unreadable cache entry {}: {e:#}", file.display()),
            }
        }
        let serialized = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| RuntimeError::Compile { path: origin.to_owned(), reason: format!("{e:#}") })?;
        // The cache only saves time: failing to write it is not an error.
        if let Err(e) = write_atomically(dir, &file, &serialized) {
            tracing::warn!("cannot cache the compiled component at {}: {e}", file.display());
        }
        // SAFETY: produced just above by this engine.
        unsafe { Component::deserialize(&self.engine, &serialized) }
            .map_err(|e| RuntimeError::Compile { path: origin.to_owned(), reason: format!("{e:#}") })
    }
}

/// Write to a unique temporary file beside `file`, then rename: readers,
/// and concurrent writers of the same entry, never see half a file.
fn write_atomically(dir: &Path, file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

/// Return component bytes: as they are for a component, encoded with
/// wit-component for a core module with component-type metadata.
pub fn to_component(bytes: &[u8], origin: &Path) -> Result<Vec<u8>, RuntimeError> {
    if wasmparser::Parser::is_component(bytes) {
        return Ok(bytes.to_vec());
    }
    if !wasmparser::Parser::is_core_wasm(bytes) {
        return Err(RuntimeError::NotWasm { path: origin.to_owned() });
    }
    wasmpipe_toolchain::componentize(bytes)
        .map_err(|reason| RuntimeError::Componentize { path: origin.to_owned(), reason })
}
