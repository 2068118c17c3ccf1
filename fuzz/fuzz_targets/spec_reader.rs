//! Fuzzes the spec reader (`validate_text`) on arbitrary bytes; see `agent::fuzz_entry::spec_reader`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agent::fuzz_entry::spec_reader(data));
