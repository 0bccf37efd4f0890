//! The stage's clocks: time stands still unless the stage waits, and a
//! wait never sleeps.
//!
//! The wall clock reads the Unix epoch, always. The monotonic clock starts
//! at zero and advances only by the waits the stage asks for
//! (`subscribe-duration`, `subscribe-instant`): each is charged against
//! the call's deadline at once (see [`crate::budget`]) and its pollable is
//! ready immediately. A stage that sleeps longer than its deadline allows
//! fails at once with the deadline error, without the host waiting; one
//! that sleeps in a loop sees its clock move and runs to its end or its
//! deadline. Either way the outputs do not depend on real time.

use std::time::Duration;

use wasmtime::Result;
use wasmtime::component::Resource;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use crate::host::StageState;

/// A wait that has already elapsed on the stage's clock.
struct Elapsed;

#[wasmtime_wasi::async_trait]
impl Pollable for Elapsed {
    async fn ready(&mut self) {}
}

impl StageState {
    /// Wait `nanos` on the stage's clock: charged, not slept.
    fn wait(&mut self, nanos: u64) -> Result<Resource<DynPollable>> {
        self.budget.wait(Duration::from_nanos(nanos))?;
        self.clock_ns = self.clock_ns.saturating_add(nanos);
        let elapsed = self.table.push(Elapsed)?;
        subscribe(&mut self.table, elapsed)
    }
}

impl monotonic_clock::Host for StageState {
    fn now(&mut self) -> Result<u64> {
        Ok(self.clock_ns)
    }

    fn resolution(&mut self) -> Result<u64> {
        Ok(1)
    }

    fn subscribe_instant(&mut self, when: u64) -> Result<Resource<DynPollable>> {
        self.wait(when.saturating_sub(self.clock_ns))
    }

    fn subscribe_duration(&mut self, duration: u64) -> Result<Resource<DynPollable>> {
        self.wait(duration)
    }
}
