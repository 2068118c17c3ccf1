//! Fuzzes the selector and query grammar, resolved against a small inventory; see `agent::fuzz_entry::selector`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agent::fuzz_entry::selector(data));
