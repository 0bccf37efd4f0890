//! Export glue for the `transformer` world. Stage authors use
//! `wasmpipe_sdk::export_transformer!` instead of anything here.

#![doc(hidden)]

use wasmpipe_sdk_core::glue::{TaskInfo, transformer_open};
use wasmpipe_sdk_core::{Batch, Result, Transformer, take_state, with_state};

/// Generated bindings of the world, sharing the core crate's imports.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../../../wit",
        world: "transformer",
        with: {
            "wasmpipe:stage/types@0.1.0": wasmpipe_sdk_core::bindings::imports::wasmpipe::stage::types,
            "wasmpipe:stage/host@0.1.0": wasmpipe_sdk_core::bindings::imports::wasmpipe::stage::host,
            "wasmpipe:stage/kernels@0.1.0": wasmpipe_sdk_core::bindings::imports::wasmpipe::stage::kernels,
        },
        default_bindings_module: "wasmpipe_sdk_transformer::bindings",
        pub_export_macro: true,
        export_macro_name: "export_transformer_world",
    });
}

/// Adapts a [`Transformer`] to the `transform` interface.
pub struct Adapter<T>(std::marker::PhantomData<T>);

impl<T: Transformer> bindings::exports::wasmpipe::stage::transform::Guest for Adapter<T> {
    fn open(task: TaskInfo, _model: Option<Vec<u8>>) -> Result<()> {
        transformer_open::<T>(task)
    }
    fn transform(input: Batch) -> Result<Option<Batch>> {
        with_state::<T, _>(|t| t.transform(input))
    }
    fn close() -> Result<Option<Batch>> {
        take_state::<T>()?.close()
    }
}
