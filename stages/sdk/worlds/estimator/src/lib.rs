//! Export glue for the `described-estimator` world (an `estimator` that
//! says what it writes before it runs). Stage authors use
//! `wasmpipe_sdk::export_estimator!` instead of anything here.

#![doc(hidden)]

use wasmpipe_sdk_core::glue::{TaskInfo, estimator_fit_passes, predictor_open, predictor_output_schema};
use wasmpipe_sdk_core::{Batch, Estimator, Predictor, Result, Schema, take_state, with_state};

/// Generated bindings of the world, sharing the core crate's imports.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../../../wit",
        world: "described-estimator",
        with: {
            "wasmpipe:stage/types@0.1.0": wasmpipe_sdk_core::bindings::imports::wasmpipe::stage::types,
            "wasmpipe:stage/host@0.1.0": wasmpipe_sdk_core::bindings::imports::wasmpipe::stage::host,
            "wasmpipe:stage/kernels@0.1.0": wasmpipe_sdk_core::bindings::imports::wasmpipe::stage::kernels,
        },
        default_bindings_module: "wasmpipe_sdk_estimator::bindings",
        pub_export_macro: true,
        export_macro_name: "export_estimator_world",
    });
}

/// Adapts an [`Estimator`] (fit) and its [`Predictor`] (transform).
pub struct Adapter<E, P>(std::marker::PhantomData<(E, P)>);

wasmpipe_sdk_core::__impl_fit_guest!([E: Estimator, P: Predictor<Model = E::Model>] Adapter<E, P>, bindings::exports::wasmpipe::stage::fit);

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

impl<E: Estimator, P: Predictor<Model = E::Model>> bindings::exports::wasmpipe::stage::describe::Guest
    for Adapter<E, P>
{
    fn output_schema(task: TaskInfo, input: Schema) -> Result<Option<Schema>> {
        predictor_output_schema::<P>(task, input)
    }
    fn fit_passes(task: TaskInfo) -> Result<Option<u32>> {
        estimator_fit_passes::<E>(task)
    }
}
