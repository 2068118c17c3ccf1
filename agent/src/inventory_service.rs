//! The inventory service: the IO side of the inventory. It keeps each
//! host's latest snapshot (a pure [`inventory::HostInventory`]), refreshes it
//! through the host's driver, on demand within the refresh SLA (the fast
//! path a dry-run uses) and in the background on the host's discovery
//! interval, and answers searches and selector resolutions from what it holds.
//!
//! Fast refreshes of a host coalesce: concurrent requests wait for the fast
//! call in flight and share its outcome, so a burst of dry-runs costs the
//! device one discovery. They never wait behind a full discovery, which may
//! take far longer than the SLA: a fast refresh runs while a full one is in
//! flight, and whichever *started* later wins, so a slow full discovery that
//! read the device before a fast refresh did cannot overwrite fresher state.
//! A snapshot is whatever the device said last: a fast refresh replaces the
//! targets outright, so a tag removed on the device stops matching at once.
//! A refresh that fails, times out or is refused by the host's open circuit
//! breaker leaves the last snapshot in place, marked stale, and says why.
//!
//! The service also keeps what is known of each host's reachability and
//! publishes every change as a `host.state` event (SPEC §1) on the bus given
//! to [`InventoryService::publish_host_states`]: a refresh that got an
//! answer, or the host's breaker closing after a good trial call, makes it
//! reachable; a refresh that failed for a reason that blames the host
//! (network, TLS, timeout, server error: [`ErrorKind::counts_for_breaker`]),
//! was refused by the open breaker, or the breaker tripping, makes it
//! unreachable. Errors that blame the request or the agent's own settings
//! (`auth_error`, `config_error`, `not_found`, ...) say nothing about the
//! network and change nothing. Only changes are published; until the first
//! refresh or breaker change a host's reachability is unknown.

use std::collections::{BTreeMap, HashMap};

use crate::service::metrics::RefreshStats;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use drivers::breaker::{Breaker, BreakerError, BreakerState, Breakers};
use drivers::driver::{Driver, DriverError, ErrorKind, RefreshMode};
use drivers::manifest::Manifest;
use drivers::ratelimit::{Backoff, Retry};
use inventory::{HostInventory, Inventory, Resolution, Selector, SelectorError, Target};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::engine::bus::Publisher;
use crate::engine::event::{Event, EventKind, Subject, SubjectKind};
use crate::engine::runner::{HostRefresh, RefreshFuture, Snapshots};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

/// The fast-refresh SLA when a manifest sets none (SPEC §5).
pub const DEFAULT_REFRESH_SLA: Duration = Duration::from_secs(5);
/// The full-discovery period when a manifest sets none.
pub const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_secs(600);
/// The longest a full discovery may take unless `full_timeout` says otherwise.
pub const MAX_FULL_TIMEOUT: Duration = Duration::from_secs(60);

/// How one host is refreshed. Runtime values, compiled from the host's
/// manifest (`defaults.dry_run_refresh_sla_s`, `discovery.interval_s`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshSettings {
    /// Time a fast refresh may take, waits and retries included.
    pub sla: Duration,
    /// Period of the background full discovery.
    pub discovery_interval: Duration,
    /// Age after which a snapshot is stale; `None` means twice `discovery_interval`.
    pub max_age: Option<Duration>,
    /// Extra attempts a fast refresh may make after a transient failure,
    /// each only if it can finish inside what is left of the SLA.
    pub fast_retries: u32,
    /// Pause before a fast-refresh retry (counted against the SLA).
    pub fast_retry_delay: Duration,
    /// Time one full discovery may take; `None` means the shorter of
    /// `discovery_interval` and [`MAX_FULL_TIMEOUT`]. Never more than
    /// `discovery_interval`, so runs do not overlap.
    pub full_timeout: Option<Duration>,
}

impl Default for RefreshSettings {
    fn default() -> Self {
        RefreshSettings {
            sla: DEFAULT_REFRESH_SLA,
            discovery_interval: DEFAULT_DISCOVERY_INTERVAL,
            max_age: None,
            fast_retries: 2,
            fast_retry_delay: Duration::from_millis(100),
            full_timeout: None,
        }
    }
}

impl RefreshSettings {
    /// Settings from a host's manifest (`defaults.dry_run_refresh_sla_s`,
    /// `discovery.interval_s`), everything else default.
    pub fn from_manifest(manifest: &Manifest) -> Self {
        let mut settings = RefreshSettings::default();
        if !manifest.refresh_sla().is_zero() {
            settings.sla = manifest.refresh_sla();
        }
        if manifest.discovery.interval_s > 0 {
            settings.discovery_interval = Duration::from_secs(manifest.discovery.interval_s);
        }
        settings
    }

    /// The age after which a snapshot is stale.
    pub fn max_age(&self) -> Duration {
        self.max_age.unwrap_or(self.discovery_interval * 2)
    }

    /// The time one full discovery may take (see [`RefreshSettings::full_timeout`]).
    pub fn full_timeout(&self) -> Duration {
        self.full_timeout
            .unwrap_or(MAX_FULL_TIMEOUT)
            .min(self.discovery_interval)
    }
}

/// What a refresh did, in the shape a dry-run transcript reports as
/// `used_inventory` (SPEC §5). `refreshed: false` always comes with
/// `stale: true`: the caller asked for a fresh view and did not get one.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshOutcome {
    /// Whether the snapshot now reflects a discovery that finished for this
    /// request, or one that started after it (which superseded its result).
    pub refreshed: bool,
    /// When the snapshot in use was taken; `None` if the host was never discovered.
    pub ts: Option<DateTime<Utc>>,
    /// Whether the snapshot in use is stale.
    pub stale: bool,
    /// Why the refresh did not happen or failed.
    pub error: Option<RefreshError>,
    /// Driver calls this refresh made (0 when it joined another refresh or was refused).
    pub attempts: u32,
}

/// Why a refresh left the snapshot as it was.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RefreshError {
    /// The driver answered with an error (the message never holds a secret).
    #[error("{kind}: {message}")]
    Driver {
        /// The §7 error kind.
        kind: ErrorKind,
        /// The driver's message.
        message: String,
    },
    /// No discovery finished inside the budget (the SLA for a fast refresh).
    #[error("no discovery finished within {}s", budget.as_secs_f64())]
    Timeout {
        /// The budget that ran out.
        budget: Duration,
    },
    /// The host's circuit breaker refused the call; the device was not asked.
    #[error(transparent)]
    BreakerOpen(BreakerError),
}

impl RefreshError {
    /// The dotted code for findings (`driver.network_error`, `inventory.timeout`,
    /// `inventory.breaker_open`).
    pub fn code(&self) -> String {
        match self {
            RefreshError::Driver { kind, .. } => format!("driver.{kind}"),
            RefreshError::Timeout { .. } => "inventory.timeout".to_string(),
            RefreshError::BreakerOpen(_) => "inventory.breaker_open".to_string(),
        }
    }

    /// Whether the failure says the host cannot be reached now (SPEC §1
    /// `host.state`): a timeout, the open breaker, or a driver error that
    /// counts for the breaker. An `auth_error` or `config_error` blames the
    /// request or the agent's settings, not the network.
    pub fn blames_host(&self) -> bool {
        match self {
            RefreshError::Driver { kind, .. } => kind.counts_for_breaker(),
            RefreshError::Timeout { .. } | RefreshError::BreakerOpen(_) => true,
        }
    }

    fn from_driver(e: &DriverError) -> Self {
        RefreshError::Driver {
            kind: e.kind,
            message: e.message.clone(),
        }
    }
}

/// A failure of a service call itself (not of a refresh).
#[derive(Debug, thiserror::Error)]
pub enum InventoryServiceError {
    /// No host with this id is registered.
    #[error("unknown host {host}")]
    UnknownHost {
        /// The id asked for.
        host: String,
    },
    /// The host has never been discovered, so there is nothing to resolve against.
    #[error("host {host} has no inventory yet")]
    NoSnapshot {
        /// The host.
        host: String,
    },
    /// The selector could not be resolved against the host's inventory.
    #[error("host {host}: {source}")]
    Selector {
        /// The host.
        host: String,
        /// What the selector grammar reported.
        #[source]
        source: Box<SelectorError>,
    },
}

/// One host's refresh state, for the API and the dry-run transcript.
#[derive(Debug, Clone, PartialEq)]
pub struct HostStatus {
    /// The host id.
    pub host_id: String,
    /// When the snapshot was taken; `None` if the host was never discovered.
    pub ts: Option<DateTime<Utc>>,
    /// Older than the max age, or the last refresh failed.
    pub stale: bool,
    /// Why the last refresh failed, if it did.
    pub last_error: Option<RefreshError>,
    /// Number of targets in the snapshot.
    pub targets: usize,
    /// How many of them are of each type (`vm`, `node`, ...).
    pub by_type: BTreeMap<String, usize>,
    /// What the last successful discovery could not read, in the driver's
    /// words (SPEC §4: a partial refresh is a warning); empty when it read
    /// everything.
    pub partial: Vec<String>,
    /// The host's circuit breaker as the next call would see it.
    pub breaker: BreakerState,
    /// What is known of the host's reachability; `None` before the first
    /// refresh or breaker change (see the module docs).
    pub reachable: Option<bool>,
}

/// One search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    /// The host the target belongs to.
    pub host_id: String,
    /// The target as the snapshot holds it.
    pub target: Target,
}

/// Keeps every host's snapshot fresh; see the module docs. Cheap to clone
/// (all clones share one state).
#[derive(Clone, Default)]
pub struct InventoryService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InventoryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<String> = self.read_hosts().keys().cloned().collect();
        f.debug_struct("InventoryService")
            .field("hosts", &hosts)
            .finish_non_exhaustive()
    }
}

struct Inner {
    hosts: RwLock<BTreeMap<String, Arc<HostState>>>,
    discovery: Mutex<Option<Discovery>>,
    /// Per-host breakers, shared with the engine when it passes its own.
    breakers: Arc<Breakers>,
    /// What is known of each host's reachability; shared with every host
    /// and the breakers' observer.
    reach: Arc<Reachability>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner::new(Arc::default())
    }
}

impl Inner {
    /// Installs the reachability observer on `breakers` (SPEC §1: the
    /// breaker opening or closing changes what is known of a host).
    fn new(breakers: Arc<Breakers>) -> Self {
        let reach = Arc::new(Reachability::default());
        let observer = Arc::clone(&reach);
        breakers.on_change(Arc::new(move |host, state| match state {
            BreakerState::Open => observer.set(host, false, "breaker.open"),
            BreakerState::Closed => observer.set(host, true, "breaker.closed"),
            BreakerState::HalfOpen => {}
        }));
        Inner {
            hosts: RwLock::default(),
            discovery: Mutex::default(),
            breakers,
            reach,
        }
    }
}

/// What the service knows of each registered host's reachability, and
/// where it publishes changes (`host.state`, SPEC §1).
#[derive(Default)]
struct Reachability {
    /// Registered hosts; `None` until a refresh or the breaker says.
    known: Mutex<BTreeMap<String, Option<bool>>>,
    /// Feeds the task that publishes on the engine's bus, in order.
    events: Mutex<Option<mpsc::UnboundedSender<Event>>>,
}

impl Reachability {
    /// Records that `host` is (un)reachable because of `reason` (a code:
    /// `refresh.ok`, `driver.network_error`, `breaker.open`, ...) and
    /// publishes it if that is a change. Hosts not registered are ignored
    /// (a breaker of a removed host). Runs under a breaker's lock when the
    /// breaker calls it: it takes only its own locks and never waits.
    fn set(&self, host: &str, reachable: bool, reason: &str) {
        let mut known = lock(&self.known);
        let Some(entry) = known.get_mut(host) else {
            return;
        };
        if *entry == Some(reachable) {
            return;
        }
        *entry = Some(reachable);
        tracing::info!(host, reachable, reason, "host reachability changed");
        // Sent while `known` is held, so events leave in the order of the changes.
        if let Some(events) = lock(&self.events).as_ref() {
            let _ = events.send(host_state(host, reachable, reason));
        }
    }

    fn get(&self, host: &str) -> Option<bool> {
        lock(&self.known).get(host).copied().flatten()
    }

    fn register(&self, host: &str) {
        lock(&self.known).entry(host.to_string()).or_default();
    }

    fn unregister(&self, host: &str) {
        lock(&self.known).remove(host);
    }

    /// Publishes from now on through `publisher`, starting with what is
    /// already known (so a late subscriber is seeded).
    fn publish_to(&self, publisher: Publisher) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let known = lock(&self.known);
        for (host, reachable) in known.iter() {
            if let Some(reachable) = reachable {
                let _ = tx.send(host_state(host, *reachable, "known"));
            }
        }
        *lock(&self.events) = Some(tx);
        drop(known);
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if publisher.publish(event).await.is_err() {
                    tracing::debug!("event bus closed, host.state events no longer published");
                    return;
                }
            }
        });
    }
}

/// A `host.state` event (SPEC §1): `attrs.reachable`, and the code of what
/// made it so under `attrs.reason` (never a driver's message).
fn host_state(host: &str, reachable: bool, reason: &str) -> Event {
    let mut attrs = Map::new();
    attrs.insert("reachable".into(), Value::Bool(reachable));
    attrs.insert("reason".into(), Value::String(reason.to_string()));
    Event {
        kind: EventKind::HostState,
        subject: Subject {
            kind: SubjectKind::Host,
            id: host.to_string(),
        },
        attrs,
        ts: Utc::now(),
        correlation_id: Uuid::new_v4(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running background discovery: a stop signal and one task per host.
struct Discovery {
    stop: watch::Sender<bool>,
    tasks: HashMap<String, JoinHandle<()>>,
}

impl InventoryService {
    /// A service with its own breakers (SPEC §7 thresholds).
    pub fn new() -> Self {
        InventoryService::default()
    }

    /// A service using `breakers`, so that refresh failures and the
    /// engine's action failures trip the same per-host breaker. The
    /// service becomes the breakers' observer
    /// ([`Breakers::on_change`]): a breaker opening or closing changes
    /// what is known of its host's reachability.
    pub fn with_breakers(breakers: Arc<Breakers>) -> Self {
        InventoryService {
            inner: Arc::new(Inner::new(breakers)),
        }
    }

    /// Publishes every change of a host's reachability as a `host.state`
    /// event through `publisher` (SPEC §1), in the order the changes
    /// happen; what is already known is published first. Replaces an
    /// earlier publisher. Spawns the forwarding task on the current tokio
    /// runtime; it ends when the bus closes.
    pub fn publish_host_states(&self, publisher: Publisher) {
        self.inner.reach.publish_to(publisher);
    }

    /// What is known of the host's reachability (the latest `host.state`
    /// published for it); `None` when unknown or not registered.
    pub fn reachable(&self, host_id: &str) -> Option<bool> {
        self.inner.reach.get(host_id)
    }

    /// Registers (or replaces) the host `driver` is bound to. If background
    /// discovery is running, the host's discovery task starts now (a
    /// replaced host's task is stopped first).
    pub fn add_host(&self, driver: Arc<dyn Driver>, settings: RefreshSettings) {
        let breaker = self.inner.breakers.for_host(driver.host_id());
        self.inner.reach.register(driver.host_id());
        let host = Arc::new(HostState::new(
            driver,
            settings,
            breaker,
            self.inner.reach.clone(),
        ));
        let id = host.host_id.clone();
        self.inner
            .hosts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), host.clone());
        let mut discovery = self.lock_discovery();
        if let Some(discovery) = discovery.as_mut() {
            if let Some(old) = discovery.tasks.remove(&id) {
                old.abort();
            }
            let task = spawn_discovery_task(host, discovery.stop.subscribe());
            discovery.tasks.insert(id, task);
        }
    }

    /// Unregisters a host and stops its discovery task (discovery only
    /// reads, so aborting it is safe). Returns whether it was registered.
    pub fn remove_host(&self, host_id: &str) -> bool {
        let removed = self
            .inner
            .hosts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(host_id)
            .is_some();
        self.inner.reach.unregister(host_id);
        if let Some(discovery) = self.lock_discovery().as_mut() {
            if let Some(task) = discovery.tasks.remove(host_id) {
                task.abort();
            }
        }
        removed
    }

    /// Registered host ids, sorted.
    pub fn host_ids(&self) -> Vec<String> {
        self.read_hosts().keys().cloned().collect()
    }

    /// Installs a snapshot obtained elsewhere (an inventory file, the store)
    /// for a registered host, as if a discovery had found it at its `ts`
    /// (now, if it has none). A later refresh replaces it.
    pub fn seed(&self, snapshot: HostInventory) -> Result<(), InventoryServiceError> {
        let host = self.host(&snapshot.host_id)?;
        let ts = snapshot.ts.unwrap_or_else(Utc::now);
        let age = (Utc::now() - ts).to_std().unwrap_or(Duration::ZERO);
        let now = Instant::now();
        let taken = now.checked_sub(age).unwrap_or(now);
        let mut status = host.lock_status();
        // A snapshot seeded as stale (restored from the store at start)
        // stays stale until a real refresh, whatever its age says.
        status.unsure = snapshot.stale;
        status.snapshot = Some(Arc::new(snapshot.with_ts(ts)));
        status.refreshed_at = Some(taken);
        status.newest_start = Some(taken);
        status.last_error = None;
        Ok(())
    }

    /// Records what the agent's own actions did to targets of `host_id`,
    /// so the next decision does not read a state they changed: a target
    /// with a resulting state (`stopped`) gets it in the snapshot; a result
    /// without one (a failure, an interrupted item, a driver that does not
    /// read back) marks the snapshot stale until the next refresh, and a
    /// stale snapshot never skips an action as already desired. A refresh
    /// that started before this call may have read the old state: its
    /// result is dropped.
    pub fn record_results(&self, host_id: &str, results: &[(String, Option<String>)]) {
        let Ok(host) = self.host(host_id) else {
            return;
        };
        let mut status = host.lock_status();
        status.newest_start = Some(Instant::now());
        let Some(snapshot) = status.snapshot.clone() else {
            status.unsure = true;
            return;
        };
        let mut targets = snapshot.targets().to_vec();
        let mut unsure = false;
        for (target, state) in results {
            let found = targets.iter_mut().find(|t| t.canonical_id() == *target);
            match (found, state) {
                (Some(t), Some(state)) => t.status = Some(state.clone()),
                _ => unsure = true,
            }
        }
        let mut updated =
            HostInventory::new(snapshot.host_id.clone(), snapshot.plugin.clone(), targets)
                .with_stale(snapshot.stale);
        if let Some(ts) = snapshot.ts {
            updated = updated.with_ts(ts);
        }
        status.snapshot = Some(Arc::new(updated));
        status.unsure |= unsure;
    }

    /// Refreshes a host on the fast path within its SLA (see
    /// [`RefreshSettings`]): joins a fast refresh already in flight (never
    /// waits for a full one), else calls `discover(Fast, remaining budget)`,
    /// retrying a transient failure only when the retry can finish inside
    /// what is left (expected duration: the last call's). The targets found
    /// replace the snapshot's. On failure or timeout the last snapshot
    /// stays, stale.
    pub async fn fast_refresh(
        &self,
        host_id: &str,
    ) -> Result<RefreshOutcome, InventoryServiceError> {
        Ok(self.host(host_id)?.fast_refresh().await)
    }

    /// Runs one full discovery of a host now (after a full one in flight,
    /// if any), bounded by [`RefreshSettings::full_timeout`].
    pub async fn full_refresh(
        &self,
        host_id: &str,
    ) -> Result<RefreshOutcome, InventoryServiceError> {
        Ok(self.host(host_id)?.full_refresh().await)
    }

    /// The host's current snapshot, its `stale` flag up to date.
    pub fn snapshot(
        &self,
        host_id: &str,
    ) -> Result<Option<Arc<HostInventory>>, InventoryServiceError> {
        Ok(self.host(host_id)?.current())
    }

    /// The host's refresh state.
    pub fn status(&self, host_id: &str) -> Result<HostStatus, InventoryServiceError> {
        let host = self.host(host_id)?;
        let snapshot = host.current();
        let status = host.lock_status();
        Ok(HostStatus {
            host_id: host.host_id.clone(),
            ts: snapshot.as_ref().and_then(|s| s.ts),
            stale: snapshot.as_ref().is_none_or(|s| s.stale),
            last_error: status.last_error.clone(),
            partial: status.partial.clone(),
            targets: snapshot.as_ref().map_or(0, |s| s.len()),
            by_type: snapshot.as_ref().map_or_else(BTreeMap::new, |s| {
                let mut counts = BTreeMap::new();
                for target in s.targets() {
                    *counts.entry(target.target_type.clone()).or_insert(0) += 1;
                }
                counts
            }),
            breaker: host.breaker.state(),
            reachable: self.inner.reach.get(host_id),
        })
    }

    /// Every host's refresh latency and misses, fast then full, by host.
    pub fn refresh_stats(&self) -> Vec<RefreshStats> {
        let hosts: Vec<Arc<HostState>> = self.read_hosts().values().cloned().collect();
        hosts
            .iter()
            .flat_map(|h| h.timings.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// A copy of every host's current snapshot (hosts never discovered are left out).
    pub fn inventory(&self) -> Inventory {
        let hosts: Vec<Arc<HostState>> = self.read_hosts().values().cloned().collect();
        hosts
            .iter()
            .filter_map(|h| h.current())
            .map(|s| HostInventory::clone(&s))
            .collect()
    }

    /// Prefix and substring search over ids, names and labels of every
    /// host's snapshot (hosts in id order, each ranked by
    /// [`HostInventory::search`]), at most `limit` hits.
    pub fn search(&self, text: &str, limit: usize) -> Vec<SearchHit> {
        let hosts: Vec<Arc<HostState>> = self.read_hosts().values().cloned().collect();
        let mut hits = Vec::new();
        for host in hosts {
            if hits.len() >= limit {
                break;
            }
            if let Some(snapshot) = host.current() {
                hits.extend(
                    snapshot
                        .search(text, limit - hits.len())
                        .into_iter()
                        .map(|t| SearchHit {
                            host_id: host.host_id.clone(),
                            target: t.clone(),
                        }),
                );
            }
        }
        hits
    }

    /// [`search`](Self::search) within one host.
    pub fn search_host(
        &self,
        host_id: &str,
        text: &str,
        limit: usize,
    ) -> Result<Vec<Target>, InventoryServiceError> {
        self.search_host_type(host_id, None, text, limit)
    }

    /// [`InventoryService::search_host`] among the targets of
    /// `target_type` only, when one is given.
    pub fn search_host_type(
        &self,
        host_id: &str,
        target_type: Option<&str>,
        text: &str,
        limit: usize,
    ) -> Result<Vec<Target>, InventoryServiceError> {
        let snapshot = self.host(host_id)?.current();
        Ok(snapshot
            .map(|s| {
                let hits = match target_type {
                    Some(t) => s.search_type(t, text, limit),
                    None => s.search(text, limit),
                };
                hits.into_iter().cloned().collect()
            })
            .unwrap_or_default())
    }

    /// Resolves `selector` against the host's current snapshot (no refresh;
    /// call [`fast_refresh`](Self::fast_refresh) first for a fresh view).
    pub fn resolve(
        &self,
        host_id: &str,
        selector: &Selector,
    ) -> Result<Resolution, InventoryServiceError> {
        let snapshot =
            self.host(host_id)?
                .current()
                .ok_or_else(|| InventoryServiceError::NoSnapshot {
                    host: host_id.into(),
                })?;
        selector
            .resolve(&snapshot)
            .map_err(|source| InventoryServiceError::Selector {
                host: host_id.into(),
                source: Box::new(source),
            })
    }

    /// Starts background full discovery: one task per host, first run now,
    /// then every `discovery_interval` on a fixed schedule (a run that
    /// overruns skips the ticks it missed). Hosts added later get their task
    /// when added. Calling it again while running does nothing.
    pub fn start_discovery(&self) {
        let mut discovery = self.lock_discovery();
        if discovery.is_some() {
            return;
        }
        let (stop, _) = watch::channel(false);
        let hosts: Vec<Arc<HostState>> = self.read_hosts().values().cloned().collect();
        let tasks = hosts
            .into_iter()
            .map(|host| {
                (
                    host.host_id.clone(),
                    spawn_discovery_task(host, stop.subscribe()),
                )
            })
            .collect();
        *discovery = Some(Discovery { stop, tasks });
    }

    /// Stops background discovery: no new run starts, runs in flight get
    /// `grace` to finish and are then aborted. Returns how many were aborted.
    pub async fn stop_discovery(&self, grace: Duration) -> usize {
        let Some(discovery) = self.lock_discovery().take() else {
            return 0;
        };
        let _ = discovery.stop.send(true);
        let deadline = Instant::now() + grace;
        let mut aborted = 0;
        for (host, mut task) in discovery.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(host = %host, "discovery still running at shutdown, aborted");
                task.abort();
                // Wait for the cancellation itself, so nothing of the host's
                // discovery runs once this returns.
                let _ = task.await;
                aborted += 1;
            }
        }
        aborted
    }

    /// Runs background discovery until `shutdown` completes, then stops it
    /// with `grace` for runs in flight.
    pub async fn run_discovery(&self, shutdown: impl Future<Output = ()>, grace: Duration) {
        self.start_discovery();
        shutdown.await;
        self.stop_discovery(grace).await;
    }

    fn host(&self, host_id: &str) -> Result<Arc<HostState>, InventoryServiceError> {
        self.read_hosts()
            .get(host_id)
            .cloned()
            .ok_or_else(|| InventoryServiceError::UnknownHost {
                host: host_id.into(),
            })
    }

    fn read_hosts(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<HostState>>> {
        self.inner.hosts.read().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_discovery(&self) -> std::sync::MutexGuard<'_, Option<Discovery>> {
        self.inner
            .discovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// The engine reads the service's snapshots, records its results into
/// them, and refreshes the hosts of the policies that fire on the fast
/// path ([`InventoryService::fast_refresh`], SPEC §6 step 5).
impl Snapshots for InventoryService {
    fn host(&self, host_id: &str) -> Option<HostInventory> {
        self.snapshot(host_id)
            .ok()
            .flatten()
            .map(|s| HostInventory::clone(&s))
    }

    fn record_results(&self, host_id: &str, results: &[(String, Option<String>)]) {
        InventoryService::record_results(self, host_id, results);
    }

    /// The host's own SLA (its manifest's, in its [`RefreshSettings`])
    /// bounds the refresh; `_sla` is the same value seen by the engine.
    fn refresh<'a>(&'a self, host_id: &'a str, _sla: Duration) -> RefreshFuture<'a> {
        Box::pin(async move {
            let outcome = match self.fast_refresh(host_id).await {
                Ok(outcome) => outcome,
                Err(e) => return HostRefresh::stale(None, e.to_string()),
            };
            let snapshot = self.snapshot(host_id).ok().flatten();
            match outcome.error {
                Some(error) => HostRefresh::stale(
                    snapshot,
                    format!(
                        "the refresh of host {host_id} failed ({}): {error}",
                        error.code()
                    ),
                ),
                None if !outcome.refreshed => HostRefresh::stale(
                    snapshot,
                    format!("the refresh of host {host_id} was superseded by a failed one"),
                ),
                None => HostRefresh::fresh(snapshot),
            }
        })
    }
}

/// Everything the service knows about one host.
struct HostState {
    host_id: String,
    plugin: String,
    driver: Arc<dyn Driver>,
    settings: RefreshSettings,
    /// Held by the one fast refresh of this host that runs; waiters share its outcome.
    fast_lock: tokio::sync::Mutex<()>,
    /// Held by the one full discovery of this host that runs. Fast refreshes
    /// never take it.
    full_lock: tokio::sync::Mutex<()>,
    status: Mutex<Status>,
    /// Shared with every other user of the host (the engine's queue).
    breaker: Arc<Breaker>,
    /// The service's reachability record, told of every refresh's verdict.
    reach: Arc<Reachability>,
    /// Latency and misses of this host's fast and full refreshes, for
    /// `/metrics` ([`InventoryService::refresh_stats`]).
    timings: Mutex<[RefreshStats; 2]>,
}

#[derive(Default)]
struct Status {
    snapshot: Option<Arc<HostInventory>>,
    /// When the discovery that produced the snapshot started, on the
    /// runtime clock (for its age).
    refreshed_at: Option<Instant>,
    last_error: Option<RefreshError>,
    /// What the discovery that made the snapshot could not read.
    partial: Vec<String>,
    /// The agent's own actions changed targets in ways it did not read back
    /// (no resulting state reported): stale until the next refresh.
    unsure: bool,
    /// Start of the newest refresh whose result (success or failure) was
    /// recorded: a result of a refresh that started earlier arrives late
    /// and is dropped.
    newest_start: Option<Instant>,
    /// Fast refreshes finished (successful or not); a waiter that sees it
    /// move joined a fast refresh instead of starting one.
    fast_generation: u64,
    last_fast_outcome: Option<RefreshOutcome>,
}

/// When a refresh started, on both clocks.
#[derive(Debug, Clone, Copy)]
struct Started {
    at: Instant,
    wall: DateTime<Utc>,
}

impl Started {
    fn now() -> Self {
        Started {
            at: Instant::now(),
            wall: Utc::now(),
        }
    }
}

impl HostState {
    fn new(
        driver: Arc<dyn Driver>,
        settings: RefreshSettings,
        breaker: Arc<Breaker>,
        reach: Arc<Reachability>,
    ) -> Self {
        let driver_host = driver.host_id().to_string();
        HostState {
            host_id: driver.host_id().to_string(),
            plugin: driver.plugin_id().to_string(),
            driver,
            settings,
            fast_lock: tokio::sync::Mutex::new(()),
            full_lock: tokio::sync::Mutex::new(()),
            status: Mutex::new(Status::default()),
            breaker,
            reach,
            timings: Mutex::new([
                RefreshStats {
                    host: driver_host.clone(),
                    mode: "fast",
                    ..RefreshStats::default()
                },
                RefreshStats {
                    host: driver_host,
                    mode: "full",
                    ..RefreshStats::default()
                },
            ]),
        }
    }

    /// Counts one refresh of `mode` (0 fast, 1 full) that took `elapsed`;
    /// one that left the snapshot as it was is a miss.
    fn time(&self, mode: usize, elapsed: Duration, outcome: &RefreshOutcome) {
        let mut timings = self.timings.lock().unwrap_or_else(|e| e.into_inner());
        timings[mode].latency.observe(elapsed);
        if !outcome.refreshed && outcome.error.is_some() {
            timings[mode].sla_misses += 1;
        }
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The snapshot with `stale` brought up to date (a copy is made only
    /// when the flag changes).
    fn current(&self) -> Option<Arc<HostInventory>> {
        let mut status = self.lock_status();
        let stale = self.is_stale(&status, Instant::now());
        let snapshot = status.snapshot.as_mut()?;
        if snapshot.stale != stale {
            *snapshot = Arc::new(HostInventory::clone(snapshot).with_stale(stale));
        }
        Some(snapshot.clone())
    }

    fn is_stale(&self, status: &Status, now: Instant) -> bool {
        status.unsure
            || status.last_error.is_some()
            || status
                .refreshed_at
                .is_none_or(|at| now.saturating_duration_since(at) > self.settings.max_age())
    }

    async fn fast_refresh(&self) -> RefreshOutcome {
        let span = tracing::info_span!(
            "inventory_refresh",
            host = %self.host_id,
            plugin = %self.plugin,
            mode = "fast",
            attempts = tracing::field::Empty,
            refreshed = tracing::field::Empty,
        );
        let started = Instant::now();
        let outcome = self.fast_refresh_inner().instrument(span.clone()).await;
        self.time(0, started.elapsed(), &outcome);
        span.record("attempts", outcome.attempts);
        span.record("refreshed", outcome.refreshed);
        outcome
    }

    async fn fast_refresh_inner(&self) -> RefreshOutcome {
        let sla = self.settings.sla;
        let deadline = Instant::now() + sla;
        let seen = self.lock_status().fast_generation;
        let Ok(_guard) = tokio::time::timeout_at(deadline, self.fast_lock.lock()).await else {
            // Another fast refresh held the host for the whole SLA.
            return self.fallback(RefreshError::Timeout { budget: sla }, 0);
        };
        if let Some(joined) = self.joined(seen) {
            return joined;
        }
        let outcome = self.run_fast(deadline).await;
        let mut status = self.lock_status();
        status.fast_generation += 1;
        status.last_fast_outcome = Some(outcome.clone());
        outcome
    }

    async fn run_fast(&self, deadline: Instant) -> RefreshOutcome {
        let sla = self.settings.sla;
        // A retry starts only if it can finish inside what is left of the
        // SLA, expecting it to take as long as the call that just failed.
        let mut retry = Retry::new(
            Backoff::new(
                self.settings.fast_retry_delay,
                self.settings.fast_retry_delay,
            ),
            self.settings.fast_retries,
            Some(deadline),
        );
        let mut attempts = 0u32;
        let (error, started) = loop {
            let started = Started::now();
            let permit = match self.breaker.acquire() {
                Ok(permit) => permit,
                Err(refused) => break (RefreshError::BreakerOpen(refused), started),
            };
            let remaining = deadline.saturating_duration_since(started.at);
            if remaining.is_zero() {
                break (RefreshError::Timeout { budget: sla }, started);
            }
            attempts += 1;
            let call = tracing::debug_span!("driver_call", host = %self.host_id, mode = "fast", attempt = attempts);
            let (result, notes) = drivers::notes::with_discovery_notes(tokio::time::timeout(
                remaining,
                self.driver.discover(RefreshMode::Fast, remaining),
            ))
            .instrument(call)
            .await;
            let last_call = started.at.elapsed();
            let e = match result {
                Ok(Ok(targets)) => {
                    permit.success();
                    return self.store(targets, notes, started, attempts);
                }
                Ok(Err(e)) => {
                    permit.failure(e.kind);
                    e
                }
                Err(_) => {
                    permit.failure(ErrorKind::Timeout);
                    break (RefreshError::Timeout { budget: sla }, started);
                }
            };
            let Some(delay) = retry.next(&e, last_call) else {
                break (RefreshError::from_driver(&e), started);
            };
            tracing::debug!(attempts, error = %e, "fast refresh failed, retrying");
            tokio::time::sleep(delay).await;
        };
        tracing::warn!(attempts, code = %error.code(), error = %error, "fast refresh failed, using the last snapshot");
        self.fail(error, started, attempts)
    }

    async fn full_refresh(&self) -> RefreshOutcome {
        let span = tracing::info_span!(
            "inventory_refresh",
            host = %self.host_id,
            plugin = %self.plugin,
            mode = "full",
            refreshed = tracing::field::Empty,
        );
        let started = Instant::now();
        let outcome = self.full_refresh_inner().instrument(span.clone()).await;
        self.time(1, started.elapsed(), &outcome);
        span.record("refreshed", outcome.refreshed);
        outcome
    }

    async fn full_refresh_inner(&self) -> RefreshOutcome {
        let budget = self.settings.full_timeout();
        let _guard = self.full_lock.lock().await;
        let started = Started::now();
        let permit = match self.breaker.acquire() {
            Ok(permit) => permit,
            Err(refused) => return self.fail(RefreshError::BreakerOpen(refused), started, 0),
        };
        let call =
            tracing::debug_span!("driver_call", host = %self.host_id, mode = "full", attempt = 1);
        let (result, notes) = drivers::notes::with_discovery_notes(tokio::time::timeout(
            budget,
            self.driver.discover(RefreshMode::Full, budget),
        ))
        .instrument(call)
        .await;
        let error = match result {
            Ok(Ok(targets)) => {
                permit.success();
                return self.store(targets, notes, started, 1);
            }
            Ok(Err(e)) => {
                permit.failure(e.kind);
                RefreshError::from_driver(&e)
            }
            Err(_) => {
                permit.failure(ErrorKind::Timeout);
                RefreshError::Timeout { budget }
            }
        };
        tracing::warn!(code = %error.code(), error = %error, "full discovery failed, keeping the last snapshot");
        self.fail(error, started, 1)
    }

    /// The outcome of a fast refresh that finished while this caller waited.
    fn joined(&self, seen: u64) -> Option<RefreshOutcome> {
        let status = self.lock_status();
        if status.fast_generation == seen {
            return None;
        }
        let mut outcome = status.last_fast_outcome.clone()?;
        outcome.attempts = 0;
        Some(outcome)
    }

    /// Whether a result of a refresh that started at `started` arrives after
    /// one of a refresh that started later (and must be dropped).
    fn superseded(status: &Status, started: Instant) -> bool {
        status.newest_start.is_some_and(|newest| started < newest)
    }

    /// Installs what a discovery that started at `started` found, unless a
    /// later-started refresh already recorded its result.
    fn store(
        &self,
        targets: Vec<Target>,
        partial: Vec<String>,
        started: Started,
        attempts: u32,
    ) -> RefreshOutcome {
        // The host answered just now, whatever happens to the result.
        self.reach.set(&self.host_id, true, "refresh.ok");
        let mut status = self.lock_status();
        if Self::superseded(&status, started.at) {
            tracing::debug!("discovery result superseded by a refresh that started later");
            let stale = self.is_stale(&status, Instant::now());
            return RefreshOutcome {
                refreshed: !stale,
                ts: status.snapshot.as_ref().and_then(|s| s.ts),
                stale,
                error: status.last_error.clone(),
                attempts,
            };
        }
        let snapshot = HostInventory::new(self.host_id.clone(), self.plugin.clone(), targets)
            .with_ts(started.wall);
        status.snapshot = Some(Arc::new(snapshot));
        status.refreshed_at = Some(started.at);
        status.newest_start = Some(started.at);
        status.last_error = None;
        status.unsure = false;
        if !partial.is_empty() && partial != status.partial {
            tracing::warn!(host = %self.host_id, missing = %partial.join("; "), "partial discovery");
        }
        status.partial = partial;
        RefreshOutcome {
            refreshed: true,
            ts: Some(started.wall),
            stale: false,
            error: None,
            attempts,
        }
    }

    /// Records a failed refresh: the snapshot stays and turns stale, unless
    /// a later-started refresh already recorded its result.
    fn fail(&self, error: RefreshError, started: Started, attempts: u32) -> RefreshOutcome {
        if error.blames_host() {
            self.reach.set(&self.host_id, false, &error.code());
        }
        let mut status = self.lock_status();
        if !Self::superseded(&status, started.at) {
            status.last_error = Some(error.clone());
            status.newest_start = Some(started.at);
        }
        RefreshOutcome {
            refreshed: false,
            ts: status.snapshot.as_ref().and_then(|s| s.ts),
            stale: true,
            error: Some(error),
            attempts,
        }
    }

    /// The last snapshot, stale, without recording a failure (the refresh
    /// that held the host may still succeed).
    fn fallback(&self, error: RefreshError, attempts: u32) -> RefreshOutcome {
        let status = self.lock_status();
        RefreshOutcome {
            refreshed: false,
            ts: status.snapshot.as_ref().and_then(|s| s.ts),
            stale: true,
            error: Some(error),
            attempts,
        }
    }
}

fn spawn_discovery_task(host: Arc<HostState>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    let span = tracing::info_span!("inventory_discovery", host = %host.host_id);
    tokio::spawn(
        async move {
            let mut ticker = tokio::time::interval(host.settings.discovery_interval);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|stopped| *stopped) => return,
                    _ = ticker.tick() => {}
                }
                host.full_refresh().await;
            }
        }
        .instrument(span),
    )
}
