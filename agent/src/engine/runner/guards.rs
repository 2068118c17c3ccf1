//! The engine's preflight guards (SPEC §6 step 7): the driver offers the
//! action, the host is reachable and its breaker closed, and a target not
//! already in the state the action leads to. [`Engine::decide_with`] applies
//! them at decision time; [`recheck_held`] again to an item the kill switch
//! held, when it is released.

use std::sync::{Arc, RwLock};

use drivers::breaker::Breakers;
use drivers::driver::Action;
use drivers::manifest::{Capabilities, ManifestSet};
use inventory::HostInventory;

use super::{
    ActionWork, Engine, Policy, Snapshots, ALREADY_DESIRED, CAPABILITY_MISSING, HOST_UNREACHABLE,
};
use crate::engine::conditions::{Facts, FactsSnapshot};
use crate::engine::scheduler::{QueueItem, Recheck};

/// The state step 7 reads when the scheduler re-checks a held item: the
/// facts as of the last [`Engine::resume`], the snapshots and the breakers.
pub(super) struct GuardView {
    pub(super) facts: RwLock<FactsSnapshot>,
    pub(super) snapshots: Arc<dyn Snapshots>,
    pub(super) breakers: Arc<Breakers>,
    /// The configured manifests ([`super::EngineConfig::manifests`]).
    pub(super) manifests: Arc<ManifestSet>,
}

/// Step 7's verdict for one planned host.
pub(super) enum Guard {
    Pass,
    Fail(&'static str, String),
}

impl Engine {
    /// Step 7's host-wide guards: the driver offers every action, the host
    /// is reachable and its breaker lets calls through.
    pub(super) fn host_guard(&self, policy: &Policy, facts: &FactsSnapshot) -> Guard {
        let host = &policy.ir.targets.host_id;
        let Some(driver) = self.drivers.get(host) else {
            return Guard::Fail(
                CAPABILITY_MISSING,
                format!("no driver is registered for host {host}; re-validate the policy"),
            );
        };
        for step in &policy.ir.plan {
            let offered = self
                .config
                .manifests
                .get(driver.plugin_id())
                .and_then(|m| m.capability(&step.capability))
                .is_some_and(|c| c.has_verb(&step.verb));
            if !offered {
                return Guard::Fail(
                    CAPABILITY_MISSING,
                    format!(
                        "host {host} ({}) does not offer {} {}; re-validate the policy",
                        driver.plugin_id(),
                        step.capability,
                        step.verb
                    ),
                );
            }
        }
        if facts.host_reachable(host) == Some(false) {
            return Guard::Fail(HOST_UNREACHABLE, format!("host {host} is unreachable"));
        }
        if !self.breakers.for_host(host).would_allow() {
            return Guard::Fail(
                HOST_UNREACHABLE,
                format!("the circuit breaker of host {host} is open"),
            );
        }
        Guard::Pass
    }
}

/// Step 7 for an item held by the kill switch, at release: the driver
/// still offers the action, the host is reachable and its breaker closed,
/// and not every target is already in the desired state. A drop reason
/// starts with the finding code (`engine.already_desired: ...`).
pub(super) fn recheck_held(view: &GuardView, item: &QueueItem<ActionWork>) -> Recheck {
    let work = &item.work;
    let host = &item.host;
    let offered = view
        .manifests
        .get(work.driver.plugin_id())
        .and_then(|m| m.capability(&work.action.capability))
        .is_some_and(|c| c.has_verb(&work.action.verb));
    if !offered {
        return Recheck::Drop(format!(
            "{CAPABILITY_MISSING}: host {host} does not offer {} {}; re-validate the policy",
            work.action.capability, work.action.verb
        ));
    }
    let reachable = view
        .facts
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .host_reachable(host);
    if reachable == Some(false) {
        return Recheck::Drop(format!("{HOST_UNREACHABLE}: host {host} is unreachable"));
    }
    if !view.breakers.for_host(host).would_allow() {
        return Recheck::Drop(format!(
            "{HOST_UNREACHABLE}: the circuit breaker of host {host} is open"
        ));
    }
    let snapshot = view.snapshots.host(host);
    let statuses: Option<Vec<String>> = work
        .targets
        .iter()
        .map(|t| {
            already_desired(&view.manifests, &work.action, snapshot.as_ref(), t)
                .map(|s| format!("{t} is {s}"))
        })
        .collect();
    match statuses {
        Some(list) if !list.is_empty() => {
            Recheck::Drop(format!("{ALREADY_DESIRED}: {}", list.join(", ")))
        }
        _ => Recheck::Keep,
    }
}

/// The target statuses in which an action has nothing left to do, for the
/// engine's already-desired guard (SPEC §6 step 7) and the reconciliation
/// of interrupted intents: what the configured manifest declares the verb
/// leads to (`results`, see docs/manifest-format.md). An action whose verb
/// declares none (reset, reboot, cycle, post, ...) is never skipped.
pub fn desired_statuses<'a>(manifests: &'a ManifestSet, action: &'a Action) -> Vec<&'a str> {
    manifests
        .find_capability(&action.capability)
        .map(|cap| cap.desired_statuses(&action.verb, &action.params))
        .unwrap_or_default()
}

/// The target's status when it already is what `action` leads to.
///
/// Only a fresh snapshot may skip an action: a stale one (its refresh
/// failed or it is older than its max age) may show a VM stopped that has
/// been started since, and skipping then would be a missed shutdown. With a
/// stale snapshot the item runs and the driver's idempotent `execute` reads
/// the live state (a target already there is a no-op).
pub(super) fn already_desired(
    manifests: &ManifestSet,
    action: &Action,
    snapshot: Option<&HostInventory>,
    target: &str,
) -> Option<String> {
    let snapshot = snapshot.filter(|s| !s.stale)?;
    let status = snapshot.get(target)?.status.as_deref()?;
    desired_statuses(manifests, action)
        .contains(&status)
        .then(|| status.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::runner::tests::action;

    #[test]
    fn desired_statuses_follow_the_configured_manifest() {
        let shipped = ManifestSet::embedded();
        let shutdown = action("proxmox.vm", "shutdown", json!({}));
        let off = action("aoss.poe.port", "set", json!({"state": "off"}));
        let cycle = action("aoss.poe.port", "set", json!({"state": "cycle"}));
        assert_eq!(desired_statuses(&shipped, &shutdown), ["stopped"]);
        assert_eq!(desired_statuses(&shipped, &off), ["off"]);
        assert!(desired_statuses(&shipped, &cycle).is_empty());
        assert!(desired_statuses(&shipped, &action("proxmox.vm", "reset", json!({}))).is_empty());
        // A set that does not know the capability skips nothing.
        assert!(desired_statuses(&ManifestSet::new(), &shutdown).is_empty());
    }
}
