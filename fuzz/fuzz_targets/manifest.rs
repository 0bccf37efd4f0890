//! libFuzzer entry point; see `wasmpipe_fuzz::manifest`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmpipe_fuzz::manifest(data));
