//! libFuzzer entry point; see `wasmpipe_fuzz::jsonl`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmpipe_fuzz::jsonl(data));
