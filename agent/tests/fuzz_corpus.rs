//! The fuzz targets of `fuzz/` as proptest corpus tests (SPEC §12): the
//! same entry points (`agent::fuzz_entry`) fed random bytes, random text
//! shaped like each grammar, and the committed seed corpus under
//! `fuzz/corpus/`, so the normal suite on a stable toolchain catches what
//! `cargo fuzz` would. Each entry point panics on a broken invariant.

use std::path::PathBuf;

use agent::fuzz_entry;
use proptest::prelude::*;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the seed corpus {} is readable: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert!(!seeds.is_empty(), "{} has no seeds", dir.display());
    seeds.sort();
    seeds
}

#[test]
fn every_seed_of_the_corpus_passes_its_target() {
    for seed in corpus("spec_reader") {
        fuzz_entry::spec_reader(&seed);
    }
    for seed in corpus("selector") {
        fuzz_entry::selector(&seed);
    }
    for seed in corpus("nut_line") {
        fuzz_entry::nut_line(&seed);
    }
    for seed in corpus("config") {
        fuzz_entry::config(&seed);
    }
}

/// Text built from the characters a policy's YAML and JSON are made of.
fn yamlish() -> impl Strategy<Value = String> {
    "[a-z_0-9 :\\-\\[\\]{},&*!|>'\"#\n.]{0,300}"
}

/// Found by the proptest below in CI: two bytes, six findings (an unknown
/// field and the five required ones missing), once wrongly refused by a
/// "one finding per byte" check.
#[test]
fn a_two_byte_spec_gets_every_finding_at_once() {
    fuzz_entry::spec_reader(b"a:");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_spec_reader_takes_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz_entry::spec_reader(&data);
    }

    #[test]
    fn the_spec_reader_takes_any_yaml_shaped_text(text in yamlish()) {
        fuzz_entry::spec_reader(text.as_bytes());
    }

    #[test]
    fn the_spec_reader_takes_a_valid_spec_with_any_tail(tail in yamlish()) {
        let mut text = String::from(include_str!("../../examples/06-webhook-deploy.yaml"));
        text.push_str(&tail);
        fuzz_entry::spec_reader(text.as_bytes());
    }

    #[test]
    fn the_selector_grammar_takes_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        fuzz_entry::selector(&data);
    }

    #[test]
    fn the_selector_grammar_takes_any_selector_shaped_text(
        mode in 0u8..4,
        text in "[a-zA-Z0-9 .:,=~*!<>/_\\-]{0,120}|(labels\\.tier|status|name) (=|!=|~) [a-z*]{0,8}( and (status|name) (=|~) [a-z*]{1,6}){0,4}",
    ) {
        let mut data = vec![mode];
        data.extend_from_slice(text.as_bytes());
        fuzz_entry::selector(&data);
    }

    #[test]
    fn nut_lines_take_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        fuzz_entry::nut_line(&data);
    }

    #[test]
    fn nut_lines_take_any_reply_shaped_text(text in "(VAR|ERR|OK|BEGIN|END|LIST) [a-z.0-9\"\\\\ ]{0,80}") {
        fuzz_entry::nut_line(text.as_bytes());
    }

    #[test]
    fn the_config_checker_takes_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz_entry::config(&data);
    }

    #[test]
    fn the_config_checker_takes_any_config_shaped_text(
        key in "(listen|data_dir|api|webhooks|hosts|nut|timezone|concurrency|auth)",
        value in yamlish(),
    ) {
        fuzz_entry::config(format!("{key}: {value}\n").as_bytes());
    }
}
