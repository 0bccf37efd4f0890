//! Export glue for the `estimator` world. Stage authors use
//! `wasmpipe_sdk::export_estimator!` instead of anything here.

#![doc(hidden)]

use wasmpipe_sdk_core::glue::*;
#[allow(unused_imports)]
use wasmpipe_sdk_core::*;
use wasmpipe_sdk_core::{Batch, Result};

/// Generated bindings of the world, sharing the core crate's imports.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../../../wit",
        world: "estimator",
        with: {
            "wasmpipe:stage/types@0.1.0": wasmpipe_sdk_core::bindings::imports::wasmpipe::stage::types,
            "wasmpipe:stage/host@0.1.0": wasmpipe_sdk_core::bindings::imports::wasmpipe::stage::host,
        },
        default_bindings_module: "wasmpipe_sdk_estimator::bindings",
        pub_export_macro: true,
        export_macro_name: "export_estimator_world",
    });
}

/// Adapts an [`Estimator`] (fit) and its [`Predictor`] (transform).
pub struct Adapter<E, P>(std::marker::PhantomData<(E, P)>);

impl<E: Estimator, P: Predictor<Model = E::Model>> bindings::exports::wasmpipe::stage::fit::Guest for Adapter<E, P> {
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

impl<E: Estimator, P: Predictor<Model = E::Model>> bindings::exports::wasmpipe::stage::transform::Guest
    for Adapter<E, P>
{
    fn open(task: TaskInfo, model: Option<Vec<u8>>) -> Result<()> {
        predictor_open::<P>(task, model)
    }
    fn transform(input: Batch) -> Result<Option<Batch>> {
        with_state::<P, _>(|p| p.transform(input))
    }
    fn close() -> Result<Option<Batch>> {
        take_state::<P>()?;
        Ok(None)
    }
}
