//! Fresh state at fire time (SPEC §6 steps 5 and 7): once a policy's
//! trigger and conditions matched and its suppression window let it
//! through, its host's inventory is refreshed on the fast path within the
//! host's refresh SLA (`defaults.dry_run_refresh_sla_s` of its manifest),
//! and re-resolution and the guards read that refreshed snapshot. A VM
//! started outside Hazel since the last discovery is then selected by
//! `status = running` and is not taken as `engine.already_desired` by a
//! policy naming it by id.
//!
//! One refresh per host per event ([`FireTime`] keeps them), and only for
//! the hosts of policies that fired: an event that fires nothing refreshes
//! nothing. A refresh that fails or outlasts the SLA leaves the last
//! snapshot, marked stale: the decision says `warn inventory.stale` and the
//! already-desired guard, which never trusts a stale snapshot, skips
//! nothing. The event dry-run refreshes the same hosts the same way
//! ([`Engine::dry_run_event`], [`super::DryRunPlan::fire_hosts`]), so it
//! answers from the same truth as the live decision.
//!
//! The refresh is awaited on the engine's task under a timeout: nothing
//! blocks the runtime, but the event's later policies wait for it, as the
//! SPEC's order of operations requires (they may read the same host).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use inventory::{HostInventory, Severity};
use serde_json::Value;
use tracing::warn;

use super::{Engine, PolicyDecision, Snapshots, NOT_MATCHED, SUPPRESSED_WINDOW};

/// `warn`: the fire-time refresh failed or outlasted the SLA; the decision
/// read the last snapshot (SPEC §6 step 5).
pub const INVENTORY_STALE: &str = "inventory.stale";

/// The refresh SLA of a host whose manifest sets none (SPEC §5: 5 s).
pub const DEFAULT_FIRE_TIME_SLA: Duration = Duration::from_secs(5);

/// What [`Snapshots::refresh`] returns.
pub type RefreshFuture<'a> = Pin<Box<dyn Future<Output = HostRefresh> + Send + 'a>>;

/// What a fire-time refresh of one host gave the engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostRefresh {
    /// The snapshot to resolve and guard on: the refreshed one, or the last
    /// one (flagged stale) when the refresh did not succeed; `None` when
    /// the host was never discovered.
    pub snapshot: Option<Arc<HostInventory>>,
    /// Why the snapshot is not fresh (the refresh failed, was refused by
    /// the host's breaker or outlasted the SLA); `None` when refreshed.
    pub stale: Option<String>,
}

impl HostRefresh {
    /// A refresh that succeeded (or a source that is always current).
    pub fn fresh(snapshot: Option<Arc<HostInventory>>) -> Self {
        HostRefresh {
            snapshot,
            stale: None,
        }
    }

    /// A refresh that did not succeed: `last` is used, flagged stale so the
    /// already-desired guard never skips on it.
    pub fn stale(last: Option<Arc<HostInventory>>, why: impl Into<String>) -> Self {
        let snapshot = last.map(|s| {
            if s.stale {
                s
            } else {
                Arc::new(HostInventory::clone(&s).with_stale(true))
            }
        });
        HostRefresh {
            snapshot,
            stale: Some(why.into()),
        }
    }

    /// Why a decision on this refresh reads old state, if it does: the
    /// refresh failed, or the source handed back a snapshot it flags stale.
    pub fn stale_reason(&self) -> Option<String> {
        if let Some(why) = &self.stale {
            return Some(why.clone());
        }
        self.snapshot
            .as_ref()
            .filter(|s| s.stale)
            .map(|_| "the snapshot is stale (its last refresh failed or it is too old)".into())
    }
}

/// The fire-time refreshes of one event (or one event dry-run), by host:
/// at most one refresh per host.
#[derive(Debug, Clone, Default)]
pub struct FireTime {
    hosts: HashMap<String, HostRefresh>,
}

impl FireTime {
    /// The refresh of `host`, if this event refreshed it.
    pub fn get(&self, host: &str) -> Option<&HostRefresh> {
        self.hosts.get(host)
    }

    /// Whether `host` was refreshed for this event.
    pub fn contains(&self, host: &str) -> bool {
        self.hosts.contains_key(host)
    }

    /// How many hosts were refreshed.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether no host was refreshed.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Refreshes `host` unless this event already did.
    pub(super) async fn refresh(
        &mut self,
        snapshots: &Arc<dyn Snapshots>,
        host: &str,
        sla: Duration,
    ) {
        if self.hosts.contains_key(host) {
            return;
        }
        let refresh = refresh_host(snapshots, host, sla).await;
        self.hosts.insert(host.to_string(), refresh);
    }
}

/// Refreshes `host` through `snapshots` within `sla`; a refresh that
/// outlasts it is dropped and the last snapshot used, stale.
async fn refresh_host(snapshots: &Arc<dyn Snapshots>, host: &str, sla: Duration) -> HostRefresh {
    let refresh = match tokio::time::timeout(sla, snapshots.refresh(host, sla)).await {
        Ok(refresh) => refresh,
        Err(_) => HostRefresh::stale(
            snapshots.host(host).map(Arc::new),
            format!(
                "the refresh of host {host} outlasted its SLA of {}s",
                sla.as_secs_f64()
            ),
        ),
    };
    if let Some(why) = &refresh.stale {
        warn!(host, code = INVENTORY_STALE, reason = %why, "fire-time refresh failed; deciding on the last snapshot");
    }
    refresh
}

/// The fire-time refreshes of `hosts` (each with its SLA), detached from
/// the engine: the service loop awaits it in a task of its own before an
/// event dry-run is planned, so live events do not wait for it.
pub async fn refresh_hosts(
    snapshots: Arc<dyn Snapshots>,
    hosts: Vec<(String, Duration)>,
) -> FireTime {
    let mut fire = FireTime::default();
    for (host, sla) in hosts {
        fire.refresh(&snapshots, &host, sla).await;
    }
    fire
}

impl Engine {
    /// The fast-refresh SLA of `host`: its manifest's
    /// `defaults.dry_run_refresh_sla_s` from the configured manifests,
    /// [`DEFAULT_FIRE_TIME_SLA`] when the host or its manifest is unknown.
    pub fn refresh_sla(&self, host: &str) -> Duration {
        self.drivers
            .get(host)
            .and_then(|d| self.config.manifests.get(d.plugin_id()))
            .map(|m| m.refresh_sla())
            .filter(|sla| !sla.is_zero())
            .unwrap_or(DEFAULT_FIRE_TIME_SLA)
    }

    /// Refreshes `host` for the event `fire` belongs to, unless done.
    pub(super) async fn refresh_at_fire(&self, fire: &mut FireTime, host: &str) {
        if fire.contains(host) {
            return;
        }
        let sla = self.refresh_sla(host);
        fire.refresh(&self.snapshots, host, sla).await;
    }

    /// The refreshes of `hosts` for an event dry-run, with their SLAs,
    /// runnable apart from the engine ([`refresh_hosts`]).
    pub fn fire_time_refresh(
        &self,
        hosts: Vec<String>,
    ) -> impl Future<Output = FireTime> + Send + 'static {
        let hosts = hosts
            .into_iter()
            .map(|h| {
                let sla = self.refresh_sla(&h);
                (h, sla)
            })
            .collect();
        refresh_hosts(self.snapshots.clone(), hosts)
    }
}

/// Says in `decision` that it read a stale snapshot (`warn
/// inventory.stale`), when `refresh` was not fresh and the decision got
/// past step 4 (a policy that did not fire or was suppressed read nothing).
pub(super) fn note_stale(decision: &mut PolicyDecision, refresh: Option<&HostRefresh>) {
    let Some(why) = refresh.and_then(HostRefresh::stale_reason) else {
        return;
    };
    if decision.code == NOT_MATCHED || decision.code == SUPPRESSED_WINDOW {
        return;
    }
    let taken = refresh
        .and_then(|r| r.snapshot.as_ref())
        .and_then(|s| s.ts)
        .map_or_else(|| "never".to_string(), |ts| ts.to_rfc3339());
    let text = format!(
        "{INVENTORY_STALE}: {why}; decided on the last snapshot (taken {taken}), nothing skipped as already desired"
    );
    if let Value::Object(explain) = &mut decision.explain {
        explain.insert("inventory".into(), Value::String(text));
    }
    decision.severity = decision.severity.max(Severity::Warn);
}

/// The least severity of a run whose decision read a stale snapshot
/// ([`note_stale`] wrote it into the explain): `warn`, else `info`.
pub(super) fn stale_floor(explain: &Value) -> Severity {
    let stale = explain
        .get("inventory")
        .and_then(Value::as_str)
        .is_some_and(|s| s.starts_with(INVENTORY_STALE));
    if stale {
        Severity::Warn
    } else {
        Severity::Info
    }
}
