//! Export glue for the `aggregator` world. Stage authors use
//! `wasmpipe_sdk::export_aggregator!` instead of anything here.

#![doc(hidden)]

use wasmpipe_sdk_core::glue::*;
#[allow(unused_imports)]
use wasmpipe_sdk_core::*;
use wasmpipe_sdk_core::{Batch, Result};

/// Generated bindings of the world, sharing the core crate's imports.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../../../wit",
        world: "aggregator",
        with: {
            "wasmpipe:stage/types@0.1.0": wasmpipe_sdk_core::bindings::imports::wasmpipe::stage::types,
            "wasmpipe:stage/host@0.1.0": wasmpipe_sdk_core::bindings::imports::wasmpipe::stage::host,
        },
        default_bindings_module: "wasmpipe_sdk_aggregator::bindings",
        pub_export_macro: true,
        export_macro_name: "export_aggregator_world",
    });
}

/// Adapts an [`Estimator`] to the `fit` interface; its model is the result.
pub struct Adapter<E>(std::marker::PhantomData<E>);

impl<E: Estimator> bindings::exports::wasmpipe::stage::fit::Guest for Adapter<E> {
    fn fit_open(task: TaskInfo, carry: Option<Vec<u8>>) -> Result<()> {
        fit_open::<E>(task, carry)
    }
    fn fit_batch(input: Batch) -> Result<()> {
        fit_batch::<E>(input)
    }
    fn fit_close() -> Result<Vec<u8>> {
        fit_close::<E>()
    }
    fn merge(left: Vec<u8>, right: Vec<u8>) -> Result<Vec<u8>> {
        merge::<E>(left, right)
    }
    fn finalize(state: Vec<u8>, pass: u32) -> Result<bindings::exports::wasmpipe::stage::fit::FitOutcome> {
        use bindings::exports::wasmpipe::stage::fit::FitOutcome;
        Ok(match finalize::<E>(state, pass)? {
            Outcome::Done(m) => FitOutcome::Done(m),
            Outcome::NextPass(c) => FitOutcome::NextPass(c),
        })
    }
}
