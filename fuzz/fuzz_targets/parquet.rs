//! libFuzzer entry point; see `wasmpipe_fuzz::parquet`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmpipe_fuzz::parquet(data));
