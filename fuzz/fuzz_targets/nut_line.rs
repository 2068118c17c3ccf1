//! Fuzzes one NUT protocol reply line; see `agent::fuzz_entry::nut_line`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agent::fuzz_entry::nut_line(data));
