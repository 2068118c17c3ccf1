//! Every ```yaml block of `docs/*.md`, and `deploy/hazel.yaml`, is checked
//! as what it shows, so the docs cannot drift from the code (SPEC §12): a
//! config (top-level fields all config fields) must pass `hazel config
//! check`, a policy (it has `actions:`, `trigger_group:` or `match:`) must
//! pass `validate` without a blocker, a manifest fragment must be YAML.
//!
//! Markers on the line before a block (blank lines allowed between):
//! `<!-- invalid -->` for a block that shows a mistake (its check must
//! then FAIL), `<!-- fragment -->` for part of a policy that cannot be
//! checked alone (it must still be YAML). An unmarked block that is none
//! of the kinds above fails the test, asking for a marker.

use std::path::{Path, PathBuf};

use agent::cli::config_check::{check_text, CONFIG_FIELDS};
use agent::compile::CompileContext;
use agent::validate::validate_text;
use drivers::manifest::shipped;
use drivers::registry::Registry;

const MANIFEST_FIELDS: &[&str] = &[
    "id",
    "name",
    "version",
    "category",
    "description",
    "schema",
    "defaults",
    "capabilities",
    "discovery",
    "invertible",
    "results",
    "repeatable",
    "connection",
    "require_one_of",
];
const POLICY_MARKS: &[&str] = &["actions", "trigger_group", "match"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    None,
    Invalid,
    Fragment,
}

struct Block {
    at: String,
    text: String,
    marker: Marker,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The ```yaml blocks of a markdown text, with the marker before each.
fn yaml_blocks(file: &str, markdown: &str) -> Vec<Block> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim();
        if fence == "```yaml" || fence == "```yml" {
            let marker = lines[..i]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| match l.trim() {
                    "<!-- invalid -->" => Marker::Invalid,
                    "<!-- fragment -->" => Marker::Fragment,
                    _ => Marker::None,
                })
                .unwrap_or(Marker::None);
            let start = i + 1;
            let mut end = start;
            while end < lines.len() && lines[end].trim() != "```" {
                end += 1;
            }
            blocks.push(Block {
                at: format!("{file}:{}", i + 1),
                text: lines[start..end].join("\n") + "\n",
                marker,
            });
            i = end;
        }
        i += 1;
    }
    blocks
}

/// `Ok` when the block passes the check of its kind, `Err(why)` when not.
fn check(block: &Block) -> Result<(), String> {
    let tree: serde_norway::Value =
        serde_norway::from_str(&block.text).map_err(|e| format!("not YAML: {e}"))?;
    let keys: Vec<&str> = tree
        .as_mapping()
        .map(|m| m.keys().filter_map(|k| k.as_str()).collect())
        .unwrap_or_default();
    if block.marker == Marker::Fragment {
        return Ok(());
    }
    if !keys.is_empty() && keys.iter().all(|k| CONFIG_FIELDS.contains(k)) {
        let report = check_text(&block.text, Path::new(&block.at), &Registry::builtin());
        return if report.is_usable() {
            Ok(())
        } else {
            Err(agent::cli::config_check::render_text(&report))
        };
    }
    if keys.iter().any(|k| POLICY_MARKS.contains(k)) {
        let validated = validate_text(&block.text, shipped(), &CompileContext::default());
        return if validated.report.ok {
            Ok(())
        } else {
            Err(format!("{:#?}", validated.report.issues))
        };
    }
    if !keys.is_empty() && keys.iter().all(|k| MANIFEST_FIELDS.contains(k)) {
        return Ok(());
    }
    Err(format!(
        "neither a config, a policy nor a manifest (top-level {keys:?}): \
         mark it `<!-- fragment -->` or `<!-- invalid -->`"
    ))
}

fn doc_blocks() -> Vec<Block> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    let mut blocks = Vec::new();
    for path in files {
        let name = format!("docs/{}", path.file_name().unwrap().to_string_lossy());
        blocks.extend(yaml_blocks(&name, &std::fs::read_to_string(&path).unwrap()));
    }
    blocks.push(Block {
        at: "deploy/hazel.yaml".into(),
        text: std::fs::read_to_string(repo().join("deploy/hazel.yaml")).unwrap(),
        marker: Marker::None,
    });
    blocks
}

#[test]
fn every_yaml_block_of_the_docs_passes_the_check_of_its_kind() {
    let blocks = doc_blocks();
    assert!(blocks.len() >= 10, "found only {} blocks", blocks.len());
    let mut failures = Vec::new();
    for block in &blocks {
        match (check(block), block.marker) {
            (Ok(()), Marker::Invalid) => {
                failures.push(format!("{}: marked invalid but passes its check", block.at))
            }
            (Err(why), Marker::None | Marker::Fragment) => {
                failures.push(format!("{}: {why}", block.at))
            }
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_configuration_reference_shows_a_config_with_two_hosts_that_passes() {
    let blocks = doc_blocks();
    let reference = blocks
        .iter()
        .find(|b| b.at.starts_with("docs/configuration.md") && b.text.contains("hosts:"))
        .expect("docs/configuration.md has a config example");
    let report = check_text(&reference.text, Path::new("x.yaml"), &Registry::builtin());
    let config = report.config.expect("the example is usable");
    assert_eq!(config.hosts.len(), 2);
}

#[test]
fn the_checker_tells_kinds_apart_and_honours_markers() {
    let block = |text: &str, marker| Block {
        at: "t.md:1".into(),
        text: text.into(),
        marker,
    };
    // A config with an old field name fails; a good one passes.
    assert!(check(&block(
        "listen: 127.0.0.1:8088\nconcurency: 4\n",
        Marker::None
    ))
    .is_err());
    assert!(check(&block("listen: 127.0.0.1:8088\n", Marker::None)).is_ok());
    // A host with the manifest's fields passes, the old documented ones fail.
    let old = "hosts:\n  - id: pve-01\n    plugin: proxmox.ve\n    connection: { base_url: https://x:8006 }\n";
    assert!(check(&block(old, Marker::None)).is_err());
    // A policy with an unknown verb fails validate.
    let policy = "version: 1\nname: bad verb\ntrigger_group:\n  triggers:\n    - { type: ups.state, equals: on_battery }\n\
                  targets: { host_id: pve-01, target_type: vm, selector: { mode: list, value: '101' } }\n\
                  actions:\n  - { capability_id: proxmox.vm, verb: explode }\n";
    assert!(check(&block(policy, Marker::None)).is_err());
    // A fragment is only parsed; an unclassified block asks for a marker.
    assert!(check(&block("conditions: { all: [] }\n", Marker::Fragment)).is_ok());
    let why = check(&block("conditions: { all: [] }\n", Marker::None)).unwrap_err();
    assert!(why.contains("<!-- fragment -->"), "{why}");
    // The markers are read from the line before the fence.
    let md =
        "text\n<!-- invalid -->\n\n```yaml\nlisten: x\n```\n```yaml\nlisten: 127.0.0.1:1\n```\n";
    let blocks = yaml_blocks("t.md", md);
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].marker, Marker::Invalid);
    assert_eq!(blocks[0].text, "listen: x\n");
    assert_eq!(blocks[1].marker, Marker::None);
}
