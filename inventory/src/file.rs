//! The inventory file format, for resolving selectors offline (`hazel
//! validate --inventory`, tests, demos): hosts and their targets in YAML or
//! JSON. Parsing works on a `&str`; reading the file is the caller's job.
//!
//! ```yaml
//! hosts:
//!   - id: pve-01
//!     plugin: proxmox.ve
//!     targets:
//!       - { type: vm, id: "104", name: web-1, status: running, labels: { tier: low } }
//! ```

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::index::{HostInventory, Inventory};
use crate::model::Target;

/// The two spellings of an inventory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Yaml,
}

/// Why an inventory file was refused.
#[derive(Debug, thiserror::Error)]
pub enum InventoryFileError {
    /// Not JSON, or JSON of the wrong shape (unknown field, missing `id`...).
    #[error("invalid inventory json at line {line}, column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        /// The parser's message without its location.
        message: String,
        #[source]
        source: serde_json::Error,
    },
    /// Not YAML, or YAML of the wrong shape.
    #[error("invalid inventory yaml{}: {message}", location(*.line, *.column))]
    Yaml {
        line: Option<usize>,
        column: Option<usize>,
        /// The parser's message without its location.
        message: String,
        #[source]
        source: serde_norway::Error,
    },
    /// Two hosts share an id.
    #[error("duplicate host ids: {}", .hosts.join(", "))]
    DuplicateHosts { hosts: Vec<String> },
    /// One host lists a target twice.
    #[error("host `{host}` lists targets more than once: {}", .ids.join(", "))]
    DuplicateTargets {
        host: String,
        /// Canonical ids (`vm:104`).
        ids: Vec<String>,
    },
    /// A target id carries its type prefix (`vm:104`); ids are written without it.
    #[error("host `{host}`: target id `{id}` is written with its type prefix, write `{fixed}`")]
    TypePrefix {
        host: String,
        id: String,
        fixed: String,
    },
    /// A host or target id is empty.
    #[error("{what} has an empty id")]
    EmptyId {
        /// `a host` or `a vm target on host pve-01`.
        what: String,
    },
}

/// The file's top level.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryFile {
    hosts: Vec<HostEntry>,
}

/// One host of the file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    /// Host id, as registered in the agent (`pve-01`).
    id: String,
    /// Plugin id of the host (`proxmox.ve`).
    plugin: String,
    /// When the snapshot was taken (RFC 3339); optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ts: Option<DateTime<Utc>>,
    /// Marks the snapshot stale; optional, default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    stale: bool,
    /// The host's targets, ids without the type prefix.
    #[serde(default)]
    targets: Vec<Target>,
}

impl Format {
    /// JSON when the text starts with `{` (after whitespace), YAML otherwise.
    pub fn detect(text: &str) -> Format {
        if text
            .trim_start_matches('\u{feff}')
            .trim_start()
            .starts_with('{')
        {
            Format::Json
        } else {
            Format::Yaml
        }
    }

    /// The format a file name's extension implies (`.json`, `.yaml`, `.yml`).
    pub fn from_file_name(name: &str) -> Option<Format> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Yaml => "yaml",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl InventoryFileError {
    /// 1-based line of the problem, when the parser gave one.
    pub fn line(&self) -> Option<usize> {
        match self {
            InventoryFileError::Json { line, .. } => Some(*line),
            InventoryFileError::Yaml { line, .. } => *line,
            _ => None,
        }
    }

    /// 1-based column of the problem, when the parser gave one.
    pub fn column(&self) -> Option<usize> {
        match self {
            InventoryFileError::Json { column, .. } => Some(*column),
            InventoryFileError::Yaml { column, .. } => *column,
            _ => None,
        }
    }
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(" at line {line}, column {column}"),
        (Some(line), None) => format!(" at line {line}"),
        _ => String::new(),
    }
}

/// Drops the parser's own " at line L column C" suffix; the error carries both separately.
fn without_location(message: String, line: usize, column: usize) -> String {
    let suffix = format!(" at line {line} column {column}");
    match message.find(&suffix) {
        Some(at) => format!("{}{}", &message[..at], &message[at + suffix.len()..]),
        None => message,
    }
}

/// Parses an inventory file. `format_hint` wins; without it, text starting
/// with `{` is JSON and anything else YAML. Unknown fields, duplicate host
/// ids, duplicate targets within a host, empty ids and ids written with
/// their type prefix are refused.
pub fn parse_inventory(
    text: &str,
    format_hint: Option<Format>,
) -> Result<Inventory, InventoryFileError> {
    let file: InventoryFile = match format_hint.unwrap_or_else(|| Format::detect(text)) {
        Format::Json => serde_json::from_str(text).map_err(|source| InventoryFileError::Json {
            line: source.line(),
            column: source.column(),
            message: without_location(source.to_string(), source.line(), source.column()),
            source,
        })?,
        Format::Yaml => serde_norway::from_str(text).map_err(|source| {
            let at = source.location().map(|l| (l.line(), l.column()));
            let message = match at {
                Some((line, column)) => without_location(source.to_string(), line, column),
                None => source.to_string(),
            };
            InventoryFileError::Yaml {
                line: at.map(|(line, _)| line),
                column: at.map(|(_, column)| column),
                message,
                source,
            }
        })?,
    };
    check(&file)?;
    let hosts = file.hosts.into_iter().map(|host| {
        let mut inventory = HostInventory::new(host.id, host.plugin, host.targets);
        inventory.ts = host.ts;
        inventory.stale = host.stale;
        inventory
    });
    Ok(hosts.collect())
}

/// Renders an inventory in the file format (the inverse of [`parse_inventory`]).
pub fn render_inventory(inventory: &Inventory, format: Format) -> String {
    let file = InventoryFile {
        hosts: inventory
            .hosts()
            .map(|host| HostEntry {
                id: host.host_id.clone(),
                plugin: host.plugin.clone(),
                ts: host.ts,
                stale: host.stale,
                targets: host.targets().to_vec(),
            })
            .collect(),
    };
    match format {
        Format::Json => serde_json::to_string_pretty(&file).unwrap_or_default(),
        Format::Yaml => serde_norway::to_string(&file).unwrap_or_default(),
    }
}

fn check(file: &InventoryFile) -> Result<(), InventoryFileError> {
    let mut seen_hosts = BTreeSet::new();
    let mut duplicate_hosts = BTreeSet::new();
    for host in &file.hosts {
        if host.id.trim().is_empty() {
            return Err(InventoryFileError::EmptyId {
                what: "a host".to_owned(),
            });
        }
        if !seen_hosts.insert(host.id.as_str()) {
            duplicate_hosts.insert(host.id.clone());
        }
    }
    if !duplicate_hosts.is_empty() {
        return Err(InventoryFileError::DuplicateHosts {
            hosts: duplicate_hosts.into_iter().collect(),
        });
    }
    for host in &file.hosts {
        let mut seen = BTreeSet::new();
        let mut duplicates = Vec::new();
        for target in &host.targets {
            if target.id.trim().is_empty() {
                let what = format!("a {} target on host {}", target.target_type, host.id);
                return Err(InventoryFileError::EmptyId { what });
            }
            if let Some(fixed) = target.id.strip_prefix(&format!("{}:", target.target_type)) {
                return Err(InventoryFileError::TypePrefix {
                    host: host.id.clone(),
                    id: target.id.clone(),
                    fixed: fixed.to_owned(),
                });
            }
            let canonical = target.canonical_id();
            if !seen.insert(canonical.clone()) && !duplicates.contains(&canonical) {
                duplicates.push(canonical);
            }
        }
        if !duplicates.is_empty() {
            return Err(InventoryFileError::DuplicateTargets {
                host: host.id.clone(),
                ids: duplicates,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    /// Parses a file and renders its hosts and canonical ids, or the error
    /// with its location.
    fn check(input: &str, expect: Expect) {
        let actual = match parse_inventory(input, None) {
            Ok(inventory) => inventory
                .hosts()
                .map(|host| {
                    let ids: Vec<String> = host.iter().map(Target::canonical_id).collect();
                    format!(
                        "{} ({}, stale={}): {}",
                        host.host_id,
                        host.plugin,
                        host.stale,
                        ids.join(" ")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(err) => format!(
                "error (line {:?}, column {:?}): {err}",
                err.line(),
                err.column()
            ),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn a_yaml_file_lists_hosts_and_their_targets() {
        check(
            r#"
hosts:
  - id: pve-01
    plugin: proxmox.ve
    ts: 2026-11-22T11:30:00Z
    targets:
      - { type: vm, id: "104", name: web-1, status: running, labels: { tier: low } }
      - { type: vm, id: "105", attrs: { cores: 4 } }
      - { type: ct, id: "104" }
  - id: sw-1
    plugin: aruba.aoss
    stale: true
    targets:
      - { type: poe-port, id: 1/A1 }
"#,
            expect![[r#"
                pve-01 (proxmox.ve, stale=false): vm:104 vm:105 ct:104
                sw-1 (aruba.aoss, stale=true): poe-port:1/A1"#]],
        );
    }

    #[test]
    fn a_json_file_is_detected_by_its_brace() {
        check(
            r#"  {"hosts": [{"id": "web", "plugin": "linux.ssh", "targets": [{"type": "service", "id": "nginx.service"}]}]}"#,
            expect!["web (linux.ssh, stale=false): service:nginx.service"],
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_their_location() {
        check(
            "hosts:\n  - id: pve-01\n    plugin: proxmox.ve\n    targets:\n      - { type: vm, id: '1', nmae: x }\n",
            expect!["error (line Some(5), column Some(30)): invalid inventory yaml at line 5, column 30: hosts[0].targets[0]: unknown field `nmae`, expected one of `type`, `id`, `name`, `status`, `labels`, `attrs`"],
        );
        check(
            "{\"hosts\": [{\"id\": \"a\", \"plugin\": \"p\", \"extra\": 1}]}",
            expect!["error (line Some(1), column Some(45)): invalid inventory json at line 1, column 45: unknown field `extra`, expected one of `id`, `plugin`, `ts`, `stale`, `targets`"],
        );
        check(
            "{\"hosts\": [",
            expect!["error (line Some(1), column Some(11)): invalid inventory json at line 1, column 11: EOF while parsing a list"],
        );
        check("hosts: [", expect!["error (line Some(2), column Some(1)): invalid inventory yaml at line 2, column 1: did not find expected node content, while parsing a flow node"]);
    }

    #[test]
    fn duplicates_are_refused_by_name() {
        check(
            "hosts:\n  - { id: a, plugin: p }\n  - { id: b, plugin: p }\n  - { id: a, plugin: q }\n",
            expect!["error (line None, column None): duplicate host ids: a"],
        );
        check(
            "hosts:\n  - id: a\n    plugin: p\n    targets: [{type: vm, id: '1'}, {type: ct, id: '1'}, {type: vm, id: '1'}, {type: vm, id: '1'}]\n",
            expect!["error (line None, column None): host `a` lists targets more than once: vm:1"],
        );
    }

    #[test]
    fn ids_are_written_without_their_type_prefix() {
        check(
            "hosts: [{id: a, plugin: p, targets: [{type: vm, id: 'vm:104'}]}]",
            expect!["error (line None, column None): host `a`: target id `vm:104` is written with its type prefix, write `104`"],
        );
        check(
            "hosts: [{id: a, plugin: p, targets: [{type: vm, id: ' '}]}]",
            expect!["error (line None, column None): a vm target on host a has an empty id"],
        );
    }

    #[test]
    fn rendering_and_parsing_back_gives_the_same_inventory() {
        let text = "hosts: [{id: a, plugin: p, stale: true, targets: [{type: vm, id: '1', labels: {tier: low}}]}]";
        let inventory = parse_inventory(text, None).unwrap();
        for format in [Format::Json, Format::Yaml] {
            let rendered = render_inventory(&inventory, format);
            let back = parse_inventory(&rendered, Some(format)).unwrap();
            assert_eq!(back.host("a"), inventory.host("a"), "{format}: {rendered}");
        }
    }

    #[test]
    fn formats_follow_file_extensions() {
        assert_eq!(Format::from_file_name("inv.YAML"), Some(Format::Yaml));
        assert_eq!(Format::from_file_name("inv.yml"), Some(Format::Yaml));
        assert_eq!(Format::from_file_name("inv.json"), Some(Format::Json));
        assert_eq!(Format::from_file_name("inv"), None);
    }
}
