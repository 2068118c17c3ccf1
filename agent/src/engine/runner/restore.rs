//! Restore sets (SPEC §6 "Outage lifecycle"): per policy, the targets its
//! runs changed that nobody has changed back since. A `ledger` selector
//! naming the policy resolves to its restore set, so the inverse of "stop
//! the running low-tier VMs" restarts exactly the VMs that were stopped and
//! are still stopped.
//!
//! The sets live in memory, indexed by target, with the store as the
//! record: closing a run touches only the policies that hold one of the
//! run's changed targets (not a scan of every loaded policy). A run that
//! changes a target removes it from every other policy's set whose action
//! it inverts; a policy whose set empties has its suppression cleared, so
//! the next outage is acted on. A target whose state changed since (read on
//! the snapshot) is dropped with `info engine.changed_since` when an
//! inverse run resolves the set.
//!
//! A run's changes join the set as each of its items is reported, not when
//! the run closes. An inverse decided while the forward's items are still
//! queued or running (the mains back during the shutdown) counts their
//! targets as members too ([`Engine::in_flight`]): its own item waits
//! behind them in the host's queue, and the forward's changes are in the
//! set before the inverse's are folded in.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use inventory::HostInventory;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::guards::desired_statuses;
use super::Engine;
use crate::engine::store::{RestoreEntry, Write};
use drivers::driver::Action;
use drivers::manifest::{Capabilities, ManifestSet};

/// The code of a restore-set target someone else changed since.
pub const CHANGED_SINCE: &str = "engine.changed_since";

/// Every policy's restore set, with an index from target to the policies
/// that hold it.
#[derive(Debug, Default)]
pub(super) struct RestoreSets {
    by_policy: HashMap<Uuid, BTreeMap<(String, String), RestoreEntry>>,
    by_target: HashMap<(String, String), BTreeSet<Uuid>>,
}

impl RestoreSets {
    pub(super) fn load(entries: Vec<RestoreEntry>) -> RestoreSets {
        let mut sets = RestoreSets::default();
        for entry in entries {
            sets.insert(entry);
        }
        sets
    }

    /// The entries of `policy_id`, by host and target.
    pub(super) fn of(&self, policy_id: Uuid) -> impl Iterator<Item = &RestoreEntry> {
        self.by_policy
            .get(&policy_id)
            .into_iter()
            .flat_map(|set| set.values())
    }

    /// Adds `entry` unless its policy already holds the target (the first
    /// "from" is kept). Returns whether it was added.
    fn insert(&mut self, entry: RestoreEntry) -> bool {
        let key = (entry.host.clone(), entry.target.clone());
        let set = self.by_policy.entry(entry.policy_id).or_default();
        if set.contains_key(&key) {
            return false;
        }
        self.by_target
            .entry(key.clone())
            .or_default()
            .insert(entry.policy_id);
        set.insert(key, entry);
        true
    }

    fn remove(&mut self, policy_id: Uuid, host: &str, target: &str) -> Option<RestoreEntry> {
        let key = (host.to_string(), target.to_string());
        let set = self.by_policy.get_mut(&policy_id)?;
        let entry = set.remove(&key)?;
        if set.is_empty() {
            self.by_policy.remove(&policy_id);
        }
        if let Some(holders) = self.by_target.get_mut(&key) {
            holders.remove(&policy_id);
            if holders.is_empty() {
                self.by_target.remove(&key);
            }
        }
        Some(entry)
    }

    fn holders(&self, host: &str, target: &str) -> Vec<Uuid> {
        self.by_target
            .get(&(host.to_string(), target.to_string()))
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default()
    }

    fn is_empty(&self, policy_id: Uuid) -> bool {
        !self.by_policy.contains_key(&policy_id)
    }
}

/// What a `ledger` selector resolves to now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestoreResolution {
    /// Targets of the forward policy's restore set on the host, of the
    /// selector's type, still in the state the forward run left them in
    /// (or not known otherwise), that the snapshot still has.
    pub targets: Vec<String>,
    /// Targets someone else changed since, with the state they are in now.
    pub changed: Vec<(String, String)>,
}

/// Resolves a `ledger` selector over the forward policy's restore set
/// `entries` (SPEC §2, §6): shared by the engine, the policy dry-run and
/// the event dry-run so all read it the same way. Pure.
pub fn restore_targets<'a>(
    manifests: &ManifestSet,
    entries: impl IntoIterator<Item = &'a RestoreEntry>,
    host_id: &str,
    target_type: &str,
    snapshot: Option<&HostInventory>,
) -> RestoreResolution {
    let prefix = format!("{target_type}:");
    let mut out = RestoreResolution::default();
    for entry in entries
        .into_iter()
        .filter(|e| e.host == host_id && e.target.starts_with(&prefix))
    {
        let Some(snapshot) = snapshot else {
            out.targets.push(entry.target.clone());
            continue;
        };
        let Some(found) = snapshot.get(&entry.target) else {
            // Gone from the host (deleted, migrated away): nothing to restore.
            continue;
        };
        let now = found.status.as_deref().filter(|_| !snapshot.stale);
        match now {
            Some(now) if !left_as(manifests, entry, now) => {
                out.changed.push((entry.target.clone(), now.to_string()))
            }
            _ => out.targets.push(entry.target.clone()),
        }
    }
    out
}

/// Whether `status` is what the entry's action left the target in.
fn left_as(manifests: &ManifestSet, entry: &RestoreEntry, status: &str) -> bool {
    if entry.to.as_deref() == Some(status) {
        return true;
    }
    let action = entry_action(entry);
    desired_statuses(manifests, &action).contains(&status)
}

fn entry_action(entry: &RestoreEntry) -> Action {
    Action {
        capability: entry.capability.clone(),
        verb: entry.verb.clone(),
        params: entry.params.as_object().cloned().unwrap_or_default(),
    }
}

/// One target a run (or a reconciliation) changed.
pub(super) struct Change<'a> {
    pub host: &'a str,
    pub target: &'a str,
    pub action: Action,
    pub from: Option<String>,
    pub to: Option<String>,
}

impl Engine {
    /// The restore set of `policy_id` as the engine holds it.
    pub fn restore_set(&self, policy_id: Uuid) -> Vec<RestoreEntry> {
        self.restore.of(policy_id).cloned().collect()
    }

    /// Loads the restore sets from the store (at start).
    pub(super) fn load_restore_sets(&mut self) -> Result<(), super::EngineError> {
        self.restore = RestoreSets::load(self.store.restore_entries()?);
        Ok(())
    }

    /// Folds what `policy_id`'s run `run_id` changed into the restore sets
    /// and returns the writes that record it: each changed target leaves
    /// the sets of the other policies whose action it inverts (a policy
    /// whose set empties gets its suppression cleared) and joins this
    /// policy's set (a target already there keeps its first entry).
    pub(super) fn record_changes(
        &mut self,
        policy_id: Uuid,
        run_id: Uuid,
        at: DateTime<Utc>,
        changes: Vec<Change<'_>>,
    ) -> Vec<Write> {
        let mut writes = Vec::new();
        let mut emptied = BTreeSet::new();
        for change in changes {
            let manifests = self.config.manifests.clone();
            let cap = manifests.find_capability(&change.action.capability);
            for holder in self.restore.holders(change.host, change.target) {
                if holder == policy_id {
                    continue;
                }
                let undoes = self
                    .restore
                    .of(holder)
                    .find(|e| e.host == change.host && e.target == change.target)
                    .is_some_and(|e| {
                        let theirs: Map<String, Value> =
                            e.params.as_object().cloned().unwrap_or_default();
                        e.capability == change.action.capability
                            && cap.is_some_and(|cap| {
                                cap.inverts(
                                    &change.action.verb,
                                    &change.action.params,
                                    &e.verb,
                                    &theirs,
                                )
                            })
                    });
                if undoes
                    && self
                        .restore
                        .remove(holder, change.host, change.target)
                        .is_some()
                {
                    writes.push(Write::RemoveRestore {
                        policy_id: holder,
                        host: change.host.to_string(),
                        target: change.target.to_string(),
                    });
                    emptied.insert(holder);
                }
            }
            let to = change.to.or_else(|| {
                desired_statuses(&self.config.manifests, &change.action)
                    .first()
                    .map(|s| s.to_string())
            });
            let entry = RestoreEntry {
                policy_id,
                host: change.host.to_string(),
                target: change.target.to_string(),
                from: change.from,
                to,
                capability: change.action.capability.clone(),
                verb: change.action.verb.clone(),
                params: Value::Object(change.action.params.clone()),
                run_id,
                at,
            };
            if self.restore.insert(entry.clone()) {
                writes.push(Write::AddRestore(entry));
            }
        }
        for holder in emptied {
            if self.restore.is_empty(holder) {
                writes.push(Write::ClearSuppression { policy_id: holder });
            }
        }
        writes
    }

    /// Targets of `forward`'s items still queued or running on `host`, of
    /// `target_type`: what its restore set will hold once they are
    /// reported. An inverse decided meanwhile (the mains back while the
    /// shutdown still runs) counts them as members; its item is queued
    /// behind theirs on the host (per-host FIFO), so it runs after them.
    pub(super) fn in_flight(&self, forward: Uuid, host: &str, target_type: &str) -> Vec<String> {
        let prefix = format!("{target_type}:");
        let mut out = BTreeSet::new();
        for item in self.pending.values() {
            let intent = &item.intent;
            // An item cancelled because its trigger ended will change nothing.
            if intent.policy_id == forward && intent.host == host && !item.trigger_ended {
                out.extend(
                    intent
                        .targets
                        .iter()
                        .filter(|t| t.starts_with(&prefix))
                        .cloned(),
                );
            }
        }
        out.into_iter().collect()
    }

    /// Drops from `forward`'s restore set the targets someone else changed
    /// since (found while resolving an inverse's `ledger` selector); clears
    /// `forward`'s suppression when its set empties.
    pub(super) fn drop_changed_since(
        &mut self,
        forward: Uuid,
        host: &str,
        targets: &[String],
    ) -> Vec<Write> {
        let mut writes = Vec::new();
        for target in targets {
            if self.restore.remove(forward, host, target).is_some() {
                writes.push(Write::RemoveRestore {
                    policy_id: forward,
                    host: host.to_string(),
                    target: target.clone(),
                });
            }
        }
        if !writes.is_empty() && self.restore.is_empty(forward) {
            writes.push(Write::ClearSuppression { policy_id: forward });
        }
        writes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inventory::Target;

    fn entry(target: &str, to: &str) -> RestoreEntry {
        RestoreEntry {
            policy_id: Uuid::from_u128(1),
            host: "pve-01".into(),
            target: target.into(),
            from: Some("running".into()),
            to: Some(to.into()),
            capability: "proxmox.vm".into(),
            verb: "shutdown".into(),
            params: Value::Null,
            run_id: Uuid::from_u128(2),
            at: DateTime::<Utc>::MIN_UTC,
        }
    }

    fn snapshot(stale: bool, targets: &[(&str, &str)]) -> HostInventory {
        let mut inv = HostInventory::new(
            "pve-01",
            "proxmox.ve",
            targets
                .iter()
                .map(|(id, status)| {
                    let (ty, id) = id.split_once(':').unwrap();
                    Target {
                        target_type: ty.into(),
                        id: id.into(),
                        name: None,
                        status: Some(status.to_string()),
                        labels: Default::default(),
                        attrs: Default::default(),
                    }
                })
                .collect(),
        );
        inv.stale = stale;
        inv
    }

    #[test]
    fn a_ledger_selector_resolves_to_the_targets_still_as_the_forward_run_left_them() {
        let set = [
            entry("vm:101", "stopped"),
            entry("vm:102", "stopped"),
            entry("vm:103", "stopped"),
            entry("ct:200", "stopped"),
        ];
        let snap = snapshot(false, &[("vm:101", "stopped"), ("vm:102", "running")]);
        let r = restore_targets(&ManifestSet::embedded(), &set, "pve-01", "vm", Some(&snap));
        assert_eq!(r.targets, ["vm:101"]);
        assert_eq!(r.changed, [("vm:102".to_string(), "running".to_string())]);
        // Without a snapshot or on a stale one, nothing is judged changed.
        let r = restore_targets(&ManifestSet::embedded(), &set, "pve-01", "vm", None);
        assert_eq!(r.targets, ["vm:101", "vm:102", "vm:103"]);
        let stale = snapshot(true, &[("vm:101", "stopped"), ("vm:102", "running")]);
        let r = restore_targets(&ManifestSet::embedded(), &set, "pve-01", "vm", Some(&stale));
        assert_eq!(r.targets, ["vm:101", "vm:102"]);
        assert!(r.changed.is_empty());
        assert!(
            restore_targets(&ManifestSet::embedded(), &set, "pve-02", "vm", None)
                .targets
                .is_empty()
        );
    }

    #[test]
    fn the_index_follows_inserts_and_removals() {
        let mut sets = RestoreSets::default();
        assert!(sets.insert(entry("vm:101", "stopped")));
        assert!(!sets.insert(entry("vm:101", "paused")));
        assert_eq!(sets.holders("pve-01", "vm:101"), [Uuid::from_u128(1)]);
        assert_eq!(
            sets.of(Uuid::from_u128(1)).next().unwrap().to.as_deref(),
            Some("stopped")
        );
        assert!(sets
            .remove(Uuid::from_u128(1), "pve-01", "vm:101")
            .is_some());
        assert!(sets.holders("pve-01", "vm:101").is_empty());
        assert!(sets.is_empty(Uuid::from_u128(1)));
    }
}
