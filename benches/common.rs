//! Helpers both benches share: building and loading a shipped stage, and
//! the per-instance inputs of a benchmark task.

use std::path::Path;
use std::time::Duration;

use wasmpipe_runtime::{InstanceLimits, InstanceSetup, Runtime, StageComponent, TaskInfo};

/// Build `stages/<name>` with the detected toolchain and load it.
pub fn stage(runtime: &Runtime, name: &str) -> StageComponent {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../stages").join(name);
    let toolchain = wasmpipe_toolchain::detect().expect("a wasm32 toolchain");
    let built =
        wasmpipe_toolchain::build(&dir, &toolchain, wasmpipe_toolchain::Progress::OnFailure).expect("stage builds");
    runtime.load_file(&built.path).expect("stage loads")
}

/// The one task of a benchmark.
pub fn task() -> TaskInfo {
    TaskInfo { pipeline: "bench".into(), stage: "s".into(), partition: 0, partitions: 1, pass: 0 }
}

/// A memory cap of `memory_mib` and no practical CPU deadline.
pub fn limits(memory_mib: u64) -> InstanceLimits {
    InstanceLimits { memory_bytes: memory_mib << 20, host_memory_bytes: 4 << 30, cpu: Duration::from_secs(3600) }
}

/// A benchmark instance with `config` as its stage config.
pub fn setup(config: &str) -> InstanceSetup {
    InstanceSetup { config_json: config.into(), label: "bench".into(), sink: None, seed: [0; 32] }
}
