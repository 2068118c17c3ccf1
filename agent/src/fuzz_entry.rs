//! Entry points for fuzzing the parsers that read untrusted input (SPEC
//! §12): the spec reader, the selector and query grammar, NUT protocol
//! lines and the config checker. Each takes arbitrary bytes, must never
//! panic, and checks that its output stays bounded by its input.
//!
//! The same functions run under `cargo fuzz` (the `fuzz/` crate, which
//! needs a nightly toolchain) and as proptest corpus tests in the normal
//! suite (`agent/tests/fuzz_corpus.rs`), so a crash found by either is a
//! failing test in both. A broken invariant panics, which is what a fuzzer
//! reports.

use std::path::Path;
use std::sync::OnceLock;

use drivers::manifest::ManifestSet;
use drivers::registry::Registry;
use inventory::query::Query;
use inventory::selector::{parse_selector, SelectorMode, MAX_IDS};
use inventory::{HostInventory, Severity, Target};

use crate::compile::CompileContext;
use crate::nut::protocol::{parse_reply, quote, request_line, tokenize, ReplyLine};
use crate::validate::validate_text;

/// Validates `data` as a policy (JSON or YAML; invalid UTF-8 replaced).
/// Checks: `ok` exactly when no blocker was found, and never more than
/// [`MAX_FINDINGS`](crate::validate::MAX_FINDINGS) findings plus the note
/// that says how many were left out. (Not "one finding per byte": since
/// every stage reports at once, two bytes such as `a:` give six findings,
/// an unknown field and five missing ones.)
pub fn spec_reader(data: &[u8]) {
    static MANIFESTS: OnceLock<ManifestSet> = OnceLock::new();
    let manifests = MANIFESTS.get_or_init(ManifestSet::embedded);
    let text = String::from_utf8_lossy(data);
    let report = validate_text(&text, manifests, &CompileContext::default()).report;
    let blocked = report
        .issues
        .iter()
        .any(|i| i.finding.severity == Severity::Blocker);
    assert_eq!(report.ok, !blocked, "ok disagrees with the blockers");
    assert!(
        report.issues.len() <= crate::validate::MAX_FINDINGS + 1,
        "{} findings for {} bytes",
        report.issues.len(),
        text.len()
    );
    if report.ok {
        assert!(report.hash.is_some(), "an accepted spec without a hash");
    }
}

/// Parses `data` as a selector (its first byte picks the mode) and a
/// query, and resolves what parses against a small inventory. Checks: a
/// resolution names only targets of that inventory, at most once each, and
/// never more than [`MAX_IDS`] ids.
pub fn selector(data: &[u8]) {
    static HOST: OnceLock<HostInventory> = OnceLock::new();
    let host = HOST.get_or_init(sample_host);
    let (mode, rest) = match data.split_first() {
        Some((first, rest)) => (
            [
                SelectorMode::List,
                SelectorMode::Range,
                SelectorMode::Query,
                SelectorMode::Ledger,
            ][usize::from(*first % 4)],
            rest,
        ),
        None => (SelectorMode::List, data),
    };
    let text = String::from_utf8_lossy(rest);
    for target_type in ["vm", "poe-port"] {
        let Ok(selector) = parse_selector(mode, &text, target_type) else {
            continue;
        };
        if mode == SelectorMode::Ledger {
            continue;
        }
        if let Ok(resolution) = selector.resolve(host) {
            assert!(resolution.ids.len() <= MAX_IDS, "more ids than the limit");
            let mut seen = std::collections::BTreeSet::new();
            for id in &resolution.ids {
                assert!(seen.insert(id), "{id} resolved twice");
                assert!(
                    host.targets().iter().any(|t| &t.canonical_id() == id),
                    "{id} is not in the inventory"
                );
            }
        }
    }
    if let Ok(query) = Query::parse(&text) {
        for target in host.targets() {
            let _ = query.matches(target);
        }
    }
}

/// Reads `data` as one NUT reply line. Checks: no more words than bytes,
/// and a line the client writes from those words reads back as them.
pub fn nut_line(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    let line = line.split(['\n', '\r']).next().unwrap_or("");
    if let Ok(words) = tokenize(line) {
        assert!(words.len() <= line.len(), "more words than bytes");
        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
        let written = request_line(&refs);
        let again = tokenize(written.trim_end_matches('\n')).expect("a written line reads back");
        assert_eq!(again, words, "quoting does not round-trip");
        for word in &words {
            let _ = quote(word);
        }
    }
    if let Ok(ReplyLine::Words(words)) = parse_reply(line) {
        assert!(words.len() <= line.len(), "more words than bytes");
    }
}

/// Checks `data` as a `hazel.yaml`. Checks: a usable config has no
/// problem, an unusable one has at least one, and no more problems than
/// the text has bytes.
pub fn config(data: &[u8]) {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    let registry = REGISTRY.get_or_init(Registry::builtin);
    let text = String::from_utf8_lossy(data);
    let report = crate::cli::config_check::check_text(&text, Path::new("fuzz.yaml"), registry);
    assert_eq!(
        report.config.is_some(),
        report.problems.is_empty(),
        "a config is usable exactly when it has no problem"
    );
    assert!(
        report.problems.len() + report.warnings.len() <= text.len() + 2,
        "{} problems for {} bytes",
        report.problems.len(),
        text.len()
    );
}

/// Twenty VMs and eight PoE ports to resolve selectors against.
fn sample_host() -> HostInventory {
    let target = |target_type: &str, id: String, tier: &str| Target {
        target_type: target_type.into(),
        id,
        name: Some(format!("t-{tier}")),
        status: Some(if tier == "low" { "running" } else { "stopped" }.into()),
        labels: [("tier".to_string(), tier.to_string())].into(),
        attrs: Default::default(),
    };
    let mut targets: Vec<Target> = (100..120)
        .map(|n| target("vm", n.to_string(), if n % 2 == 0 { "low" } else { "high" }))
        .collect();
    targets.extend((1..=8).map(|n| target("poe-port", format!("A{n}"), "lab")));
    HostInventory::new("h", "fuzz", targets)
}
