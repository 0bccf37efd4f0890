//! The wasmpipe stage SDK: everything a stage author needs.
//!
//! A stage is a WebAssembly component that the wasmpipe host runs once per
//! partition of its input. Implement one of the traits and export it with
//! one macro:
//!
//! * [`Transformer`] + [`export_transformer!`]: a parallel map over batches;
//! * [`Estimator`] + [`Predictor`] + [`export_estimator!`]: learn a model from
//!   every partition (partial states, merged exactly), then apply it;
//! * [`Estimator`] + [`export_aggregator!`]: fold the input into one result,
//!   such as evaluation metrics.
//!
//! Data stays in the host: a [`Batch`] and its [`Column`]s are handles.
//! Reading metadata copies nothing; [`Column::read_f64`] and friends copy a
//! column into the guest in one call, and [`Column::from_f64`] hands values
//! back in one call.
//!
//! ```ignore
//! use wasmpipe_sdk::{Batch, Column, Result, Task, Transformer};
//!
//! struct Double;
//! impl Transformer for Double {
//!     fn open(_task: &Task) -> Result<Self> { Ok(Double) }
//!     fn transform(&mut self, batch: Batch) -> Result<Option<Batch>> {
//!         let x: Vec<f64> = batch.f64s("x")?.iter().map(|v| v * 2.0).collect();
//!         Ok(Some(batch.with_f64s("x", &x)?))
//!     }
//! }
//! wasmpipe_sdk::export_transformer!(Double);
//! ```

pub use wasmpipe_sdk_core::*;

#[doc(hidden)]
pub mod __private {
    pub use wasmpipe_sdk_aggregator as aggregator;
    pub use wasmpipe_sdk_estimator as estimator;
    pub use wasmpipe_sdk_transformer as transformer;
}

/// Export a [`Transformer`] as this component's stage.
#[macro_export]
macro_rules! export_transformer {
    ($stage:ty) => {
        type __WasmpipeExport = $crate::__private::transformer::Adapter<$stage>;
        $crate::__private::transformer::bindings::export_transformer_world!(
            __WasmpipeExport with_types_in $crate::__private::transformer::bindings
        );
    };
}

/// Export an [`Estimator`] and the [`Predictor`] that applies its model.
#[macro_export]
macro_rules! export_estimator {
    ($estimator:ty, $predictor:ty) => {
        type __WasmpipeExport = $crate::__private::estimator::Adapter<$estimator, $predictor>;
        $crate::__private::estimator::bindings::export_estimator_world!(
            __WasmpipeExport with_types_in $crate::__private::estimator::bindings
        );
    };
}

/// Export an [`Estimator`] as an aggregator: its model is the stage's result.
#[macro_export]
macro_rules! export_aggregator {
    ($estimator:ty) => {
        type __WasmpipeExport = $crate::__private::aggregator::Adapter<$estimator>;
        $crate::__private::aggregator::bindings::export_aggregator_world!(
            __WasmpipeExport with_types_in $crate::__private::aggregator::bindings
        );
    };
}
