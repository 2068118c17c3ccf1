//! Fuzzes the config checker (`hazel config check`) on arbitrary bytes; see `agent::fuzz_entry::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agent::fuzz_entry::config(data));
