//! libFuzzer entry point; see `wasmpipe_fuzz::kernels`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmpipe_fuzz::kernels(data));
