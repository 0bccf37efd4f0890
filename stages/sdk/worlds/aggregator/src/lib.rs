//! Export glue for the `aggregator` world. Stage authors use
//! `wasmpipe_sdk::export_aggregator!` instead of anything here.

#![doc(hidden)]

use wasmpipe_sdk_core::Estimator;

/// Generated bindings of the world, sharing the core crate's imports.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../../../wit",
        world: "aggregator",
        with: {
            "wasmpipe:stage/types@0.1.0": wasmpipe_sdk_core::bindings::imports::wasmpipe::stage::types,
            "wasmpipe:stage/host@0.1.0": wasmpipe_sdk_core::bindings::imports::wasmpipe::stage::host,
            "wasmpipe:stage/kernels@0.1.0": wasmpipe_sdk_core::bindings::imports::wasmpipe::stage::kernels,
        },
        default_bindings_module: "wasmpipe_sdk_aggregator::bindings",
        pub_export_macro: true,
        export_macro_name: "export_aggregator_world",
    });
}

/// Adapts an [`Estimator`] to the `fit` interface; its model is the result.
pub struct Adapter<E>(std::marker::PhantomData<E>);

wasmpipe_sdk_core::__impl_fit_guest!([E: Estimator] Adapter<E>, bindings::exports::wasmpipe::stage::fit);
