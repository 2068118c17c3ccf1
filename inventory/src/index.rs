//! Per-host inventory snapshots and their lookup indexes.
//!
//! A [`HostInventory`] is what one refresh of one host found, indexed so that
//! selector resolution never scans: numeric ids (VMs, containers) sit in a
//! sorted vector so a range is a binary search, switch ports in a hash map and
//! a sorted vector, literal ids in a hash map. Two indexes are built lazily,
//! on first use, so hosts that are never searched or queried do not pay for
//! them: the search index for selector suggestions, and per target type a
//! columnar view (every id, name, status and label value copied into one
//! arena per field) that lets a query read memory in order instead of
//! chasing each target's heap-allocated strings.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::{id_form, IdForm, Target};
use crate::port::Port;

/// One host's snapshot: its child targets, when they were read, and whether
/// that reading can still be trusted.
///
/// Targets keep the order they were given in; a target whose canonical id was
/// already seen is dropped (the first one wins).
#[derive(Debug, Clone)]
pub struct HostInventory {
    /// Id of the registered host (`pve-01`).
    pub host_id: String,
    /// Plugin (driver manifest) id of the host (`proxmox.ve`).
    pub plugin: String,
    /// When the snapshot was taken; `None` for hand-written inventories.
    pub ts: Option<DateTime<Utc>>,
    /// Older than its max age, or the last refresh failed.
    pub stale: bool,
    targets: Vec<Target>,
    canonical: Vec<String>,
    types: HashMap<String, TypeIndex>,
    search: OnceLock<SearchIndex>,
}

/// Every host's snapshot, by host id. Serializes as a list of snapshots.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    hosts: BTreeMap<String, HostInventory>,
}

/// Indexes over the targets of one type on one host.
#[derive(Debug, Clone, Default)]
pub(crate) struct TypeIndex {
    /// Positions in `targets`, in inventory order.
    pub(crate) members: Vec<usize>,
    /// Id (without prefix) -> position.
    by_id: HashMap<String, usize>,
    /// Numeric ids written canonically (`104`, not `0104`), sorted, for types with numeric ids.
    pub(crate) numeric: Vec<(u64, usize)>,
    /// Ports, for types with port ids.
    pub(crate) ports: HashMap<Port, usize>,
    /// The same ports, sorted, to scan a rectangle larger than the host.
    pub(crate) ports_sorted: Vec<(Port, usize)>,
    /// Columnar view of `members` for queries, built on the first query.
    columns: OnceLock<Columns>,
}

/// The fields of one type's targets as columns; row `r` is the target at
/// `members[r]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Columns {
    pub(crate) id: Column,
    pub(crate) name: Column,
    pub(crate) status: Column,
    /// One column per label key; rows without the label are absent.
    pub(crate) labels: HashMap<String, Column>,
}

/// One text field of every row, copied into one contiguous arena so a scan
/// reads memory in order instead of following a pointer per target.
#[derive(Debug, Clone, Default)]
pub(crate) struct Column {
    arena: String,
    /// Byte span of each row's value in `arena`; `None` when absent.
    spans: Vec<Option<(usize, usize)>>,
}

/// Lowercased terms for search: sorted for prefix lookups, per target for
/// substring scans. Terms and haystacks live in two arenas addressed by
/// byte spans, not one `String` each: with 100 000 targets that is about
/// 20 MB instead of 55 (the agent's memory target is 200 MB in all).
#[derive(Debug, Clone, Default)]
struct SearchIndex {
    /// Every target's distinct terms, back to back.
    terms: String,
    /// `(start, end, target position)` of each term in `terms`, sorted by
    /// term, then position.
    sorted_terms: Vec<(u32, u32, u32)>,
    /// Every target's terms joined by [`TERM_SEPARATOR`], back to back.
    haystacks: String,
    /// End of target `i`'s haystack in `haystacks` (it starts where `i - 1` ends).
    haystack_ends: Vec<u32>,
}

/// Separates terms inside a haystack so a substring never spans two of them.
const TERM_SEPARATOR: char = '\u{1f}';

impl HostInventory {
    /// Indexes `targets` for `host_id`, a host driven by `plugin`.
    pub fn new(
        host_id: impl Into<String>,
        plugin: impl Into<String>,
        targets: Vec<Target>,
    ) -> Self {
        let mut inventory = HostInventory {
            host_id: host_id.into(),
            plugin: plugin.into(),
            ts: None,
            stale: false,
            targets: Vec::with_capacity(targets.len()),
            canonical: Vec::with_capacity(targets.len()),
            types: HashMap::new(),
            search: OnceLock::new(),
        };
        for target in targets {
            inventory.push(target);
        }
        for index in inventory.types.values_mut() {
            index.numeric.sort_unstable();
            index.ports_sorted.sort_unstable();
        }
        inventory
    }

    /// Sets `ts` (builder style).
    pub fn with_ts(mut self, ts: DateTime<Utc>) -> Self {
        self.ts = Some(ts);
        self
    }

    /// Sets `stale` (builder style).
    pub fn with_stale(mut self, stale: bool) -> Self {
        self.stale = stale;
        self
    }

    fn push(&mut self, target: Target) {
        let position = self.targets.len();
        let form = id_form(&target.target_type);
        if !self.types.contains_key(&target.target_type) {
            self.types
                .insert(target.target_type.clone(), TypeIndex::default());
        }
        let Some(index) = self.types.get_mut(&target.target_type) else {
            return;
        };
        if index.by_id.contains_key(&target.id) {
            return;
        }
        index.by_id.insert(target.id.clone(), position);
        index.members.push(position);
        match form {
            IdForm::Numeric => {
                if let Ok(n) = target.id.parse::<u64>() {
                    if n.to_string() == target.id {
                        index.numeric.push((n, position));
                    }
                }
            }
            IdForm::Port => {
                if let Ok(port) = target.id.parse::<Port>() {
                    if port.to_string() == target.id {
                        index.ports.insert(port, position);
                        index.ports_sorted.push((port, position));
                    }
                }
            }
            IdForm::Literal => {}
        }
        self.canonical.push(target.canonical_id());
        self.targets.push(target);
    }

    /// The target with this canonical id (`vm:104`).
    pub fn get(&self, canonical_id: &str) -> Option<&Target> {
        self.position(canonical_id).map(|i| &self.targets[i])
    }

    /// True when a target with this canonical id exists.
    pub fn contains(&self, canonical_id: &str) -> bool {
        self.position(canonical_id).is_some()
    }

    /// The target of this type with this id (without prefix).
    pub fn get_by_type(&self, target_type: &str, id: &str) -> Option<&Target> {
        let index = self.types.get(target_type)?;
        index.by_id.get(id).map(|&i| &self.targets[i])
    }

    fn position(&self, canonical_id: &str) -> Option<usize> {
        let (target_type, id) = canonical_id.split_once(':')?;
        self.types.get(target_type)?.by_id.get(id).copied()
    }

    /// The targets of one type, in inventory order.
    pub fn of_type<'a>(&'a self, target_type: &str) -> impl Iterator<Item = &'a Target> + 'a {
        let members: &[usize] = self
            .types
            .get(target_type)
            .map_or(&[], |index| &index.members);
        members.iter().map(move |&i| &self.targets[i])
    }

    /// How many targets of this type the host has.
    pub fn count_of_type(&self, target_type: &str) -> usize {
        self.types
            .get(target_type)
            .map_or(0, |index| index.members.len())
    }

    /// The target types present, sorted.
    pub fn types(&self) -> Vec<&str> {
        let mut types: Vec<&str> = self.types.keys().map(String::as_str).collect();
        types.sort_unstable();
        types
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Every target, in inventory order.
    pub fn iter(&self) -> std::slice::Iter<'_, Target> {
        self.targets.iter()
    }

    /// Every target, in inventory order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Gives the targets back.
    pub fn into_targets(self) -> Vec<Target> {
        self.targets
    }

    /// Prefix and substring search over ids (with and without the type
    /// prefix), names, label keys and label values, case-insensitive, for
    /// selector suggestions. Exact matches come first, then prefix matches
    /// (by matching term), then substring matches (in inventory order); at
    /// most `limit` targets, each once. An empty text lists the first targets.
    pub fn search(&self, text: &str, limit: usize) -> Vec<&Target> {
        self.search_filtered(None, text, limit)
    }

    /// [`search`](Self::search) restricted to one target type.
    pub fn search_type(&self, target_type: &str, text: &str, limit: usize) -> Vec<&Target> {
        self.search_filtered(Some(target_type), text, limit)
    }

    fn search_filtered(&self, target_type: Option<&str>, text: &str, limit: usize) -> Vec<&Target> {
        let wanted = |i: usize| target_type.is_none_or(|t| self.targets[i].target_type == t);
        let needle = text.trim().to_lowercase();
        let mut seen = vec![false; self.targets.len()];
        let mut hits: Vec<usize> = Vec::new();
        let mut take = |i: usize, hits: &mut Vec<usize>| {
            if hits.len() < limit && !seen[i] && wanted(i) {
                seen[i] = true;
                hits.push(i);
            }
        };
        if needle.is_empty() {
            for i in 0..self.targets.len() {
                take(i, &mut hits);
            }
            return hits.into_iter().map(|i| &self.targets[i]).collect();
        }
        let index = self
            .search
            .get_or_init(|| SearchIndex::build(&self.targets, &self.canonical));
        let start = index
            .sorted_terms
            .partition_point(|&entry| index.term(entry) < needle.as_str());
        let prefixed = index.sorted_terms[start..]
            .iter()
            .take_while(|&&entry| index.term(entry).starts_with(&needle));
        // Exact matches sort first among the prefixed terms already (a prefix sorts
        // before its extensions), but several targets may share one exact term.
        for &(_, _, i) in prefixed {
            if hits.len() >= limit {
                break;
            }
            take(i as usize, &mut hits);
        }
        for i in 0..index.haystack_ends.len() {
            if hits.len() >= limit {
                break;
            }
            if index.haystack(i).contains(needle.as_str()) {
                take(i, &mut hits);
            }
        }
        hits.into_iter().map(|i| &self.targets[i]).collect()
    }

    /// The columnar view of one type's targets, built on first use.
    pub(crate) fn columns<'a>(&'a self, index: &'a TypeIndex) -> &'a Columns {
        index
            .columns
            .get_or_init(|| Columns::build(&self.targets, &index.members))
    }

    pub(crate) fn type_index(&self, target_type: &str) -> Option<&TypeIndex> {
        self.types.get(target_type)
    }

    pub(crate) fn position_of(&self, target_type: &str, id: &str) -> Option<usize> {
        self.types.get(target_type)?.by_id.get(id).copied()
    }

    /// The canonical id of the target at `position`, already allocated.
    pub(crate) fn canonical_at(&self, position: usize) -> &str {
        &self.canonical[position]
    }

    pub(crate) fn target_at(&self, position: usize) -> &Target {
        &self.targets[position]
    }
}

impl Columns {
    fn build(targets: &[Target], members: &[usize]) -> Self {
        let rows = members.len();
        let mut columns = Columns {
            id: Column::with_capacity(rows),
            name: Column::with_capacity(rows),
            status: Column::with_capacity(rows),
            labels: HashMap::new(),
        };
        for (row, &position) in members.iter().enumerate() {
            let target = &targets[position];
            columns.id.push(Some(&target.id));
            columns.name.push(target.name.as_deref());
            columns.status.push(target.status.as_deref());
            for (key, value) in &target.labels {
                let column = match columns.labels.get_mut(key) {
                    Some(column) => column,
                    None => columns
                        .labels
                        .entry(key.clone())
                        .or_insert_with(|| Column::absent(rows)),
                };
                column.set(row, value);
            }
        }
        columns
    }
}

impl Column {
    fn with_capacity(rows: usize) -> Self {
        Column {
            arena: String::with_capacity(rows * 8),
            spans: Vec::with_capacity(rows),
        }
    }

    /// A column of `rows` absent values, filled in with [`set`](Self::set).
    fn absent(rows: usize) -> Self {
        Column {
            arena: String::new(),
            spans: vec![None; rows],
        }
    }

    fn push(&mut self, value: Option<&str>) {
        let span = value.map(|value| self.append(value));
        self.spans.push(span);
    }

    fn set(&mut self, row: usize, value: &str) {
        self.spans[row] = Some(self.append(value));
    }

    fn append(&mut self, value: &str) -> (usize, usize) {
        let start = self.arena.len();
        self.arena.push_str(value);
        (start, self.arena.len())
    }

    /// The value of `row`, `None` when absent.
    pub(crate) fn get(&self, row: u32) -> Option<&str> {
        let (start, end) = (*self.spans.get(row as usize)?)?;
        self.arena.get(start..end)
    }
}

impl SearchIndex {
    fn build(targets: &[Target], canonical: &[String]) -> Self {
        let mut index = SearchIndex {
            haystack_ends: Vec::with_capacity(targets.len()),
            ..SearchIndex::default()
        };
        let mut terms: Vec<String> = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            terms.clear();
            terms.push(target.id.to_lowercase());
            terms.push(canonical[i].to_lowercase());
            terms.extend(target.name.as_deref().map(str::to_lowercase));
            for (key, value) in &target.labels {
                terms.push(key.to_lowercase());
                terms.push(value.to_lowercase());
            }
            for term in &terms {
                index.haystacks.push_str(term);
                index.haystacks.push(TERM_SEPARATOR);
            }
            index.haystack_ends.push(offset(&index.haystacks));
            terms.sort_unstable();
            terms.dedup();
            for term in &terms {
                let start = offset(&index.terms);
                index.terms.push_str(term);
                index
                    .sorted_terms
                    .push((start, offset(&index.terms), i as u32));
            }
        }
        let arena = std::mem::take(&mut index.terms);
        let term = |&(start, end, _): &(u32, u32, u32)| &arena[start as usize..end as usize];
        index
            .sorted_terms
            .sort_unstable_by(|a, b| term(a).cmp(term(b)).then(a.2.cmp(&b.2)));
        index.terms = arena;
        index.haystacks.shrink_to_fit();
        index.terms.shrink_to_fit();
        index
    }

    fn term(&self, (start, end, _): (u32, u32, u32)) -> &str {
        &self.terms[start as usize..end as usize]
    }

    fn haystack(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.haystack_ends[i - 1] };
        &self.haystacks[start as usize..self.haystack_ends[i] as usize]
    }
}

/// A byte offset into an arena. Arenas of one host's snapshot stay far
/// below 4 GiB (the selector expansion limit is 100 000 ids).
fn offset(arena: &str) -> u32 {
    u32::try_from(arena.len()).expect("a search arena under 4 GiB")
}

impl PartialEq for HostInventory {
    fn eq(&self, other: &Self) -> bool {
        self.host_id == other.host_id
            && self.plugin == other.plugin
            && self.ts == other.ts
            && self.stale == other.stale
            && self.targets == other.targets
    }
}

impl<'a> IntoIterator for &'a HostInventory {
    type Item = &'a Target;
    type IntoIter = std::slice::Iter<'a, Target>;

    fn into_iter(self) -> Self::IntoIter {
        self.targets.iter()
    }
}

/// The serialized shape of a snapshot: `{host_id, plugin, ts, stale, targets}`.
#[derive(Serialize)]
struct HostInventoryRef<'a> {
    host_id: &'a str,
    plugin: &'a str,
    ts: Option<DateTime<Utc>>,
    stale: bool,
    targets: &'a [Target],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostInventoryOwned {
    host_id: String,
    plugin: String,
    #[serde(default)]
    ts: Option<DateTime<Utc>>,
    #[serde(default)]
    stale: bool,
    #[serde(default)]
    targets: Vec<Target>,
}

impl Serialize for HostInventory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        HostInventoryRef {
            host_id: &self.host_id,
            plugin: &self.plugin,
            ts: self.ts,
            stale: self.stale,
            targets: &self.targets,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for HostInventory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let owned = HostInventoryOwned::deserialize(deserializer)?;
        let mut host = HostInventory::new(owned.host_id, owned.plugin, owned.targets);
        host.ts = owned.ts;
        host.stale = owned.stale;
        Ok(host)
    }
}

impl Inventory {
    pub fn new() -> Self {
        Inventory::default()
    }

    /// Adds or replaces a host's snapshot; returns the one it replaced.
    pub fn insert(&mut self, host: HostInventory) -> Option<HostInventory> {
        self.hosts.insert(host.host_id.clone(), host)
    }

    /// Removes a host's snapshot.
    pub fn remove(&mut self, host_id: &str) -> Option<HostInventory> {
        self.hosts.remove(host_id)
    }

    /// One host's snapshot.
    pub fn host(&self, host_id: &str) -> Option<&HostInventory> {
        self.hosts.get(host_id)
    }

    /// Every host, sorted by id.
    pub fn hosts(&self) -> impl Iterator<Item = &HostInventory> {
        self.hosts.values()
    }

    /// Host ids, sorted.
    pub fn host_ids(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

impl Serialize for Inventory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.hosts.values())
    }
}

impl<'de> Deserialize<'de> for Inventory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Vec::<HostInventory>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

impl FromIterator<HostInventory> for Inventory {
    fn from_iter<I: IntoIterator<Item = HostInventory>>(iter: I) -> Self {
        let mut inventory = Inventory::new();
        for host in iter {
            inventory.insert(host);
        }
        inventory
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn target(target_type: &str, id: &str, name: Option<&str>, labels: &[(&str, &str)]) -> Target {
        Target {
            target_type: target_type.into(),
            id: id.into(),
            name: name.map(Into::into),
            status: None,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            attrs: BTreeMap::new(),
        }
    }

    fn host() -> HostInventory {
        HostInventory::new(
            "pve-01",
            "proxmox.ve",
            vec![
                target("vm", "104", Some("web-1"), &[("tier", "low")]),
                target("vm", "105", Some("db-main"), &[("tier", "high")]),
                target("vm", "204", Some("webmail"), &[]),
                target("ct", "104", Some("proxy"), &[("web", "true")]),
                target("vm", "104", Some("duplicate, dropped"), &[]),
            ],
        )
    }

    /// Runs a search and renders the canonical ids found.
    fn check(text: &str, limit: usize, expect: Expect) {
        let host = host();
        let found: Vec<String> = host
            .search(text, limit)
            .iter()
            .map(|t| t.canonical_id())
            .collect();
        expect.assert_eq(&found.join(" "));
    }

    #[test]
    fn lookups_use_canonical_ids_and_keep_the_first_duplicate() {
        let host = host();
        assert_eq!(host.len(), 4);
        assert_eq!(
            host.get("vm:104").and_then(|t| t.name.as_deref()),
            Some("web-1")
        );
        assert!(host.contains("ct:104"));
        assert!(!host.contains("vm:999"));
        assert!(!host.contains("104"));
        assert_eq!(host.count_of_type("vm"), 3);
        assert_eq!(host.types(), ["ct", "vm"]);
        assert_eq!(host.of_type("ct").count(), 1);
        assert_eq!(host.of_type("poe-port").count(), 0);
    }

    #[test]
    fn search_ranks_prefix_matches_before_substring_matches() {
        check("web", 10, expect!["ct:104 vm:104 vm:204"]);
        check("WEB-", 10, expect!["vm:104"]);
        check("main", 10, expect!["vm:105"]);
        check("10", 10, expect!["vm:104 ct:104 vm:105"]);
        check("vm:2", 10, expect!["vm:204"]);
        check("low", 10, expect!["vm:104"]);
        check("", 2, expect!["vm:104 vm:105"]);
        check("web", 1, expect!["ct:104"]);
        check("nothing", 10, expect![""]);
    }

    #[test]
    fn search_can_be_restricted_to_one_type() {
        let host = host();
        let found: Vec<String> = host
            .search_type("vm", "web", 10)
            .iter()
            .map(|t| t.canonical_id())
            .collect();
        assert_eq!(found, ["vm:104", "vm:204"]);
    }

    #[test]
    fn a_snapshot_round_trips_through_json() {
        let host = host().with_stale(true);
        let json = serde_json::to_string(&host).unwrap();
        let back: HostInventory = serde_json::from_str(&json).unwrap();
        assert_eq!(back, host);
        assert!(back.contains("vm:204"));
    }

    #[test]
    fn an_inventory_finds_hosts_by_id() {
        let inventory: Inventory = [host(), HostInventory::new("sw-1", "aruba.aoss", vec![])]
            .into_iter()
            .collect();
        assert_eq!(inventory.host_ids().collect::<Vec<_>>(), ["pve-01", "sw-1"]);
        assert_eq!(inventory.host("sw-1").map(HostInventory::len), Some(0));
        assert!(inventory.host("nope").is_none());
    }
}
