//! What a stage may spend of the host: the memory the host holds for it
//! and the time the host works for it.
//!
//! A stage's linear memory is capped by wasmtime's resource limiter, and
//! its own code by the epoch deadline. But most of a stage's work happens
//! in the host: kernel outputs, columns it built, rows it quarantined, the
//! host's loops over its columns. [`HostBudget`] charges all of that to the
//! instance:
//!
//! * **Memory.** Every Arrow array that enters the instance's resource
//!   table is claimed by the instance's [`TrackingMemoryPool`]: the pool
//!   counts each underlying allocation once, however many handles, slices
//!   or batches share it, and for as long as anything keeps it alive. A
//!   kernel checks the size of its output (and scratch space) against what
//!   is left *before* it allocates, so no request can make the host abort.
//!   The batch the host is handing the stage right now is the host's own
//!   doing and is allowed on top of the budget; batches the stage keeps
//!   past their call are its own.
//! * **Time.** Each guest call has a deadline (the instance's CPU time
//!   left). Wasm code is stopped there by the epoch callback; host calls
//!   check it on entry and every few thousand rows of a long loop; virtual
//!   waits (WASI clocks) are charged against it instead of slept.
//!
//! Either limit, once hit, fails the call with a [`HostLimit`] error; the
//! instance is poisoned and the task fails, the process goes on.

use std::time::{Duration, Instant};

use arrow::array::Array;
use arrow_buffer::{MemoryPool, TrackingMemoryPool};

/// Which host limit a call hit. Returned (as a trap) from host calls, and
/// kept in the budget so the failure is reported as what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostLimit {
    /// The stage's host memory would exceed its budget.
    #[error("exceeded its host memory budget of {budget_mib} MiB (it asked for {asked_mib} MiB more)")]
    Memory {
        /// The budget.
        budget_mib: u64,
        /// What the refused request would have added.
        asked_mib: u64,
    },
    /// The call ran past the instance's deadline, in the host or waiting.
    #[error("ran past its deadline")]
    Deadline,
}

/// Rows a long host loop processes between two deadline checks: small
/// enough to stop within a millisecond or so, large enough that the check
/// (one clock read) costs nothing measurable.
pub const CHECK_EVERY_ROWS: usize = 1 << 14;

/// The host memory and time an instance may use.
#[derive(Debug)]
pub struct HostBudget {
    pool: TrackingMemoryPool,
    limit: usize,
    /// Bytes of the batch the host is handing the stage in this call.
    allowance: usize,
    /// Bytes the host keeps for the stage outside Arrow arrays (log lines,
    /// a report's JSON).
    other: usize,
    /// When the current guest call must end.
    deadline: Instant,
    /// The first limit hit; the instance is unusable after it.
    pub(crate) exceeded: Option<HostLimit>,
}

impl HostBudget {
    /// A budget of `limit` bytes of host memory.
    pub fn new(limit: usize) -> Self {
        HostBudget {
            pool: TrackingMemoryPool::default(),
            limit,
            allowance: 0,
            other: 0,
            deadline: Instant::now(),
            exceeded: None,
        }
    }

    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes of host memory charged now.
    pub fn used(&self) -> usize {
        self.pool.used() + self.other
    }

    /// Start a guest call that may run for `left`.
    pub(crate) fn start_call(&mut self, left: Duration) {
        let now = Instant::now();
        self.deadline = now.checked_add(left).unwrap_or(now + Duration::from_secs(86_400 * 365));
    }

    /// Time left before the current call's deadline.
    pub(crate) fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// When the current call must end, for loops that check it themselves.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The error for a loop that stopped at the deadline.
    pub(crate) fn overdue(&mut self) -> wasmtime::Error {
        self.fail(HostLimit::Deadline)
    }

    /// The error for an allocation of `bytes` that failed or would not fit.
    pub(crate) fn refuse(&mut self, bytes: usize) -> wasmtime::Error {
        let budget_mib = (self.limit >> 20) as u64;
        self.fail(HostLimit::Memory { budget_mib, asked_mib: (bytes as u64).div_ceil(1 << 20) })
    }

    /// Whether the current call is past its deadline.
    pub(crate) fn past_deadline(&self) -> bool {
        Instant::now() >= self.deadline
    }

    fn fail(&mut self, limit: HostLimit) -> wasmtime::Error {
        self.exceeded.get_or_insert(limit);
        wasmtime::Error::new(limit)
    }

    /// Fail when the current call is past its deadline.
    pub fn check_time(&mut self) -> wasmtime::Result<()> {
        if self.past_deadline() {
            return Err(self.fail(HostLimit::Deadline));
        }
        Ok(())
    }

    /// Charge a wait of `d` (a WASI sleep, say) against the deadline
    /// without sleeping; fails when the wait reaches past it.
    pub(crate) fn wait(&mut self, d: Duration) -> wasmtime::Result<()> {
        if d >= self.time_left() {
            self.deadline = Instant::now();
            return Err(self.fail(HostLimit::Deadline));
        }
        self.deadline -= d;
        Ok(())
    }

    /// Make sure `bytes` more can be held, before allocating them.
    pub fn reserve(&mut self, bytes: usize) -> wasmtime::Result<()> {
        let allowed = self.limit.saturating_add(self.allowance);
        if self.used().saturating_add(bytes) > allowed {
            return Err(self.refuse(bytes));
        }
        Ok(())
    }

    /// Charge the memory behind `array` (each allocation once, while it
    /// lives), then check the total.
    pub fn claim(&mut self, array: &dyn Array) -> wasmtime::Result<()> {
        array.claim(&self.pool);
        self.reserve(0)
    }

    /// Claim the batch the host hands the stage now; its bytes are allowed
    /// on top of the budget for as long as it is the current batch.
    pub(crate) fn claim_input(&mut self, batch: &arrow::record_batch::RecordBatch) -> wasmtime::Result<()> {
        let before = self.pool.used();
        for c in batch.columns() {
            c.claim(&self.pool);
        }
        self.allowance = self.pool.used().saturating_sub(before);
        self.reserve(0)
    }

    /// Charge `bytes` held outside Arrow arrays; fails, holding nothing,
    /// when they do not fit.
    pub(crate) fn hold(&mut self, bytes: usize) -> wasmtime::Result<()> {
        self.reserve(bytes)?;
        self.other += bytes;
        Ok(())
    }

    /// Release bytes charged with [`HostBudget::hold`].
    pub(crate) fn release(&mut self, bytes: usize) {
        self.other = self.other.saturating_sub(bytes);
    }
}

/// Checks a deadline every [`CHECK_EVERY_ROWS`] rows of a host loop.
pub(crate) struct Ticker<'a> {
    budget: &'a mut HostBudget,
    rows: usize,
}

impl<'a> Ticker<'a> {
    pub(crate) fn new(budget: &'a mut HostBudget) -> Self {
        Ticker { budget, rows: 0 }
    }

    /// Count `rows` of work; fails once past the deadline.
    pub(crate) fn tick(&mut self, rows: usize) -> wasmtime::Result<()> {
        self.rows += rows;
        if self.rows >= CHECK_EVERY_ROWS {
            self.rows = 0;
            self.budget.check_time()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array};

    use super::*;

    #[test]
    fn shared_buffers_count_once_and_are_released_with_their_last_owner() {
        let mut b = HostBudget::new(1 << 20);
        let a: ArrayRef = Arc::new(Float64Array::from(vec![1.0; 10_000]));
        b.claim(a.as_ref()).unwrap();
        let once = b.used();
        assert!((80_000..90_000).contains(&once), "{once}");
        let slice = a.slice(10, 5);
        b.claim(slice.as_ref()).unwrap();
        assert_eq!(b.used(), once, "a slice shares its parent's allocation");
        drop(a);
        assert_eq!(b.used(), once, "the slice keeps the allocation alive");
        drop(slice);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_request_over_the_budget_is_refused_before_allocating() {
        let mut b = HostBudget::new(1 << 20);
        b.reserve(1 << 19).unwrap();
        let err = b.reserve(2 << 20).unwrap_err();
        assert_eq!(err.downcast_ref::<HostLimit>(), Some(&HostLimit::Memory { budget_mib: 1, asked_mib: 2 }));
        assert_eq!(b.exceeded, Some(HostLimit::Memory { budget_mib: 1, asked_mib: 2 }));
    }

    #[test]
    fn waits_are_charged_against_the_deadline_without_sleeping() {
        let mut b = HostBudget::new(1 << 20);
        b.start_call(Duration::from_secs(10));
        let started = Instant::now();
        b.wait(Duration::from_secs(4)).unwrap();
        assert!(b.time_left() <= Duration::from_secs(6));
        assert!(b.wait(Duration::from_secs(30)).is_err());
        assert!(started.elapsed() < Duration::from_secs(1), "no real sleep");
        assert_eq!(b.exceeded, Some(HostLimit::Deadline));
    }
}
