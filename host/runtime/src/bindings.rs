//! The one place host bindings are generated from `wit/`.
//!
//! Bindings are generated for the `described-estimator` world because it
//! exports every stage interface; a component of another world is driven
//! through the per-interface `GuestIndices` of just the interfaces it
//! exports (see [`crate::instance`]). Imports are the same in every world.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "described-estimator",
    with: {
        "wasmpipe:stage/types.column": crate::host::ColumnHandle,
        "wasmpipe:stage/types.batch": crate::host::BatchHandle,
    },
    // Resource-table failures (a dead handle) trap; ordinary failures are
    // returned to the guest as the WIT `error`.
    imports: { default: trappable },
    additional_derives: [PartialEq],
});

pub use exports::wasmpipe::stage::fit::FitOutcome;
pub use wasmpipe::stage::host::{Level, TaskInfo};
pub use wasmpipe::stage::types::{DataType, Error as WitError, Field, TimeUnit};

impl Level {
    /// Every level, least severe first.
    const ALL: [Level; 5] = [Level::Trace, Level::Debug, Level::Info, Level::Warn, Level::Error];

    /// The level's name in logs: `trace`, `debug`, `info`, `warn`, `error`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    /// The level [`Level::name`] calls `name`.
    pub fn from_name(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == name)
    }

    /// How severe: 0 for `trace` up to 4 for `error`.
    pub fn rank(self) -> u8 {
        Level::ALL.iter().position(|l| *l == self).unwrap_or(0) as u8
    }
}

/// Fully qualified names of the exported interfaces, as they appear in a
/// component's type.
pub const TRANSFORM_INTERFACE: &str = "wasmpipe:stage/transform@0.1.0";
/// See [`TRANSFORM_INTERFACE`].
pub const FIT_INTERFACE: &str = "wasmpipe:stage/fit@0.1.0";
/// See [`TRANSFORM_INTERFACE`]; optional (an estimator that says what it
/// writes before it runs).
pub const DESCRIBE_INTERFACE: &str = "wasmpipe:stage/describe@0.1.0";
