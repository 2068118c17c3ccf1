//! Opening the [`Service`]: the store in `data_dir`, the hosts and their
//! drivers, the re-validation of stored policies and the engine thread
//! ([`OpenOptions`] swaps parts for tests and `hazel demo`). It also holds the
//! shared state every other file of the service reads, with its two doors:
//! store calls on the blocking pool and calls to the engine thread.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use drivers::breaker::{BreakerConfig, Breakers};
use drivers::driver::Driver;
use drivers::manifest::{shipped, ManifestSet};
use drivers::registry::Registry;
use inventory::{HostInventory, Inventory};
use serde_json::{json, Value};
use tracing::warn;
use uuid::Uuid;

use super::config::Config;
use super::engine_loop::{EngineCallError, EngineHandle, EngineParts};
use super::hosts::{build_inventory, host_config, register, unguarded, HostEntry};
use super::metrics::Metrics;
use super::{Service, ServiceError};
use crate::compile::CompileContext;
use crate::engine::bus::{Consumer, Publisher, DEFAULT_CAPACITY};
use crate::engine::runner::{EngineConfig, Policy};
use crate::engine::scheduler::SchedulerConfig;
use crate::engine::store::{AuditRecord, EngineStore, StoreResult};
use crate::inventory_service::{InventoryService, RefreshSettings};
use crate::store::{
    open_data_dir, HostSource, PolicyStatus, PolicyStore, SecretKey, SqliteConfig, SqliteStore,
};
use crate::validate::validate_value;

/// Why the agent is not ready (`/readyz` answers 503 with it).
#[derive(Debug, Clone)]
pub struct NotReady {
    /// `engine.unavailable` or `store.unwritable`.
    pub code: &'static str,
    /// What is wrong, for the operator.
    pub message: String,
}

/// What [`Service::open`] takes besides the config; tests and `hazel demo`
/// swap parts.
pub struct OpenOptions {
    /// The drivers by plugin id.
    pub registry: Registry,
    /// The manifests; from `plugin_dir` or the built-in ones when `None`.
    pub manifests: Option<ManifestSet>,
    /// Events from other sources (tests, benches), forwarded onto the
    /// engine's bus beside NUT's and the inventory's `host.state`.
    pub bus: Option<Consumer>,
    /// Start background discovery of every host.
    pub discovery: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            registry: Registry::builtin(),
            manifests: None,
            bus: None,
            discovery: true,
        }
    }
}

pub(super) struct Inner {
    pub(super) config: Config,
    pub(super) store: Arc<SqliteStore>,
    pub(super) manifests: Arc<ManifestSet>,
    pub(super) registry: Registry,
    pub(super) inventory: InventoryService,
    pub(super) breakers: Arc<Breakers>,
    pub(super) engine: EngineHandle,
    pub(super) metrics: Arc<Metrics>,
    pub(super) hosts: RwLock<BTreeMap<String, HostEntry>>,
    pub(super) webhook_secrets: BTreeMap<String, Option<Vec<u8>>>,
    pub(super) inventory_cache: Mutex<Option<(Instant, Arc<Inventory>)>>,
    /// Serializes policy mutations, so the duplicate-hash check and the
    /// write see the same store.
    pub(super) writes: tokio::sync::Mutex<()>,
    /// The NUT pollers, stopped first at shutdown.
    nut: tokio::sync::Mutex<Option<crate::nut::NutSources>>,
    /// The NUT sources' latest readings, for `/metrics`.
    pub(super) readings: Option<crate::nut::LatestReadings>,
    /// Slots for CPU-bound work run on the blocking pool (validation):
    /// never on the async workers, never more at once than this (SPEC §12).
    pub(super) cpu_slots: super::cpu_slots::CpuSlots,
    /// Signatures of accepted webhook posts within their window (replays).
    pub(super) webhook_seen: tokio::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// A kill switch engaged in memory whose write the store refused.
    pub(super) unpersisted_pause: tokio::sync::Mutex<Option<super::KillSwitchView>>,
    /// The automatic backups (`backup:` in the config), stopped at shutdown.
    backups: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Commits the audit records of API requests in groups.
    pub(super) audit_writer: super::audit_writer::AuditWriter,
}

pub use super::cpu_slots::CPU_SLOTS;

impl Service {
    /// Opens the store in `config.data_dir`, registers the hosts (stored
    /// ones, then `hazel.yaml`'s, which win), re-validates every stored
    /// policy against the current manifests and hosts (a policy that no
    /// longer compiles becomes `invalid`), and starts the engine thread with
    /// the enabled ones. The engine reconciles what a previous run left.
    pub async fn open(config: Config, options: OpenOptions) -> Result<Service, ServiceError> {
        config
            .check()
            .map_err(|e| bad("config.invalid", e.to_string()))?;
        let manifests = match options.manifests {
            Some(m) => m,
            None => match &config.plugin_dir {
                Some(dir) => crate::cli::load_manifests(Some(dir))
                    .map_err(|e| bad("config.plugins", e.to_string()))?,
                None => shipped().clone(),
            },
        };
        let manifests = Arc::new(manifests);
        // The data directory's checks (lock, marker, quick_check) refuse a
        // database that is not the one the directory held (SPEC §10).
        let dir = config.data_dir.clone();
        let store =
            tokio::task::spawn_blocking(move || open_data_dir(&dir, &SqliteConfig::default()))
                .await
                .map_err(join_error)??;
        if let Some(text) = config
            .secret_key_text()
            .map_err(|e| bad("config.secrets", e.to_string()))?
        {
            let key =
                SecretKey::from_text(&text).map_err(|e| bad("config.secrets", e.to_string()))?;
            store.set_secret_key(key);
        }
        let store = Arc::new(store);
        let breakers = Arc::new(Breakers::new(BreakerConfig::default()));
        let inventory = InventoryService::with_breakers(breakers.clone());
        let metrics = Arc::new(Metrics::default());

        // Hosts: stored (API-created) first, then the declarative ones.
        let mut hosts = BTreeMap::new();
        let stored = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.hosts())
                .await
                .map_err(join_error)??
        };
        for record in stored {
            let host = host_config(&record);
            match register(&options.registry, &manifests, &breakers, &host) {
                Ok((validated, driver)) => {
                    hosts.insert(
                        host.id.clone(),
                        HostEntry {
                            validated,
                            driver,
                            source: HostSource::Api,
                        },
                    );
                }
                Err(e) => warn!(host = %host.id, error = %e, "stored host not registered"),
            }
        }
        for host in &config.hosts {
            if hosts.contains_key(&host.id) {
                warn!(host = %host.id, "config host replaces the API-created host with the same id");
            }
            let (validated, driver) = register(&options.registry, &manifests, &breakers, host)
                .map_err(|e| ServiceError::BadRequest {
                    code: "config.host_invalid",
                    message: format!("config host `{}`: {e}", host.id),
                    details: json!({"findings": e.findings()}),
                })?;
            hosts.insert(
                host.id.clone(),
                HostEntry {
                    validated,
                    driver,
                    source: HostSource::Config,
                },
            );
        }
        for (id, entry) in &hosts {
            inventory.add_host(
                unguarded(&entry.driver),
                RefreshSettings::from_manifest(entry.validated.manifest()),
            );
            let stored = {
                let store = store.clone();
                let id = id.clone();
                tokio::task::spawn_blocking(move || store.inventory_snapshot(&id))
                    .await
                    .map_err(join_error)??
            };
            if let Some((_, snapshot)) = stored {
                match serde_json::from_value::<HostInventory>(snapshot) {
                    Ok(snapshot) => {
                        let _ = inventory.seed(snapshot.with_stale(true));
                    }
                    Err(e) => warn!(host = %id, error = %e, "stored inventory snapshot unreadable"),
                }
            }
        }

        let mut webhook_secrets = BTreeMap::new();
        for name in config.webhooks.keys() {
            let secret = config
                .webhook_secret(name)
                .map_err(|e| bad("config.webhooks", e.to_string()))?;
            webhook_secrets.insert(name.clone(), secret);
        }

        let self_host = hosts
            .values()
            .find(|h| h.validated.self_host)
            .map(|h| h.validated.id.clone());
        let engine_config = EngineConfig {
            scheduler: SchedulerConfig {
                max_concurrent: config.concurrency,
                ..SchedulerConfig::default()
            },
            self_host,
            item_ttl: config.item_ttl,
            timezone: config.tz(),
            // Countdowns restored on these UPSes wait for their NUT
            // source's first reading (SPEC §6 "Outage lifecycle"); one
            // on a UPS only the API reports is re-armed at once.
            read_subjects: Some(config.nut.iter().map(|n| n.subject_id()).collect()),
            // The manifests policies were compiled against, so guards and
            // idempotency keys read the same ones (SPEC §7).
            manifests: manifests.clone(),
            ..EngineConfig::default()
        };
        let inner_inventory = inventory.clone();
        let service_hosts = RwLock::new(hosts);
        let drivers: Vec<Arc<dyn Driver>> = service_hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|h| h.driver.clone())
            .collect();

        // Policies: re-validated now; the enabled ones go to the engine.
        let partial = PartialService {
            store: store.clone(),
            manifests: manifests.clone(),
            inventory: inventory.clone(),
            hosts: &service_hosts,
        };
        let policies = partial.reload_policies().await?;
        // Event sources publish on one bus the engine consumes: the NUT
        // pollers, and the inventory service's `host.state` changes (SPEC
        // §1); events a caller hands in (`options.bus`) are forwarded onto it.
        let (publisher, consumer) = crate::engine::bus::channel(DEFAULT_CAPACITY, "inventory");
        inventory.publish_host_states(publisher.clone());
        let nut = (!config.nut.is_empty())
            .then(|| crate::nut::spawn(&config.nut, publisher.with_source("nut")));
        if let Some(external) = options.bus {
            tokio::spawn(forward(external, publisher.with_source("external")));
        }
        let bus = Some(consumer);
        let readings = nut.as_ref().map(|n| n.readings().clone());
        let engine = EngineHandle::spawn(EngineParts {
            store: store.clone() as Arc<dyn EngineStore>,
            snapshots: Arc::new(inner_inventory),
            breakers: breakers.clone(),
            config: engine_config,
            drivers,
            policies,
            metrics: metrics.clone(),
            bus,
            readings: readings.clone(),
        })
        .map_err(|e| ServiceError::Internal {
            message: format!("cannot start the engine thread: {e}"),
        })?;
        if options.discovery {
            inventory.start_discovery();
        }
        let backups = config.backup.clone().map(|backup| {
            tokio::spawn(backup_loop(
                store.path().to_path_buf(),
                backup,
                metrics.clone(),
            ))
        });
        let audit_writer = super::audit_writer::AuditWriter::spawn(&store);
        Ok(Service {
            inner: Arc::new(Inner {
                config,
                store,
                manifests,
                registry: options.registry,
                inventory,
                breakers,
                engine,
                metrics,
                hosts: service_hosts,
                webhook_secrets,
                inventory_cache: Mutex::new(None),
                writes: tokio::sync::Mutex::new(()),
                nut: tokio::sync::Mutex::new(nut),
                readings,
                cpu_slots: super::cpu_slots::CpuSlots::default(),
                unpersisted_pause: tokio::sync::Mutex::new(None),
                webhook_seen: tokio::sync::Mutex::new(Default::default()),
                backups: Mutex::new(backups),
                audit_writer,
            }),
        })
    }

    /// The configuration the service runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The metrics `/metrics` renders.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The `/metrics` exposition, with the store's counters brought up to
    /// date.
    pub fn render_metrics(&self) -> String {
        let failures = self.inner.store.write_failures();
        self.inner.metrics.set_store_write_failures(failures);
        let marker = self.inner.store.marker_write_failures();
        self.inner.metrics.set_store_marker_failures(marker);
        let live = super::metrics::Live {
            breakers: self.inner.breakers.states(),
            refreshes: self.inner.inventory.refresh_stats(),
            ups: self
                .inner
                .readings
                .as_ref()
                .map(|r| r.snapshot())
                .unwrap_or_default(),
        };
        self.inner.metrics.render_with(&live)
    }

    /// Whether the agent can do its work (`/readyz`): the engine runs and
    /// the store can write. `Err` says why not.
    pub async fn readiness(&self) -> Result<(), NotReady> {
        if !self.ready() {
            return Err(NotReady {
                code: "engine.unavailable",
                message: "the engine is not running".into(),
            });
        }
        let store = self.inner.store.clone();
        let checked = tokio::task::spawn_blocking(move || store.check_writable()).await;
        match checked {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(NotReady {
                code: "store.unwritable",
                message: format!("the store cannot write: {reason}"),
            }),
            Err(e) => Err(NotReady {
                code: "store.unwritable",
                message: format!("the store check did not finish: {e}"),
            }),
        }
    }

    /// Makes every store write fail with `reason` until called with `None`
    /// (fault tests; see [`SqliteStore::inject_write_failure`]).
    #[doc(hidden)]
    pub fn inject_store_write_failure(&self, reason: Option<&str>) {
        self.inner.store.inject_write_failure(reason);
    }

    /// The inventory service (tests and `hazel demo` seed or refresh it).
    pub fn inventory(&self) -> &InventoryService {
        &self.inner.inventory
    }

    /// Whether the engine runs (`/readyz`).
    pub fn ready(&self) -> bool {
        self.inner.engine.status().ready()
    }

    /// Stops background discovery and drains the engine: running actions
    /// get `config.shutdown_grace` to finish, the ledger is written.
    pub async fn shutdown(&self) {
        let grace = self.inner.config.shutdown_grace;
        let backups = self
            .inner
            .backups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(backups) = backups {
            backups.abort();
        }
        if let Some(nut) = self.inner.nut.lock().await.take() {
            nut.shutdown().await;
        }
        self.inner
            .inventory
            .stop_discovery(Duration::from_secs(2))
            .await;
        self.inner.engine.shutdown(grace).await;
    }

    /// Runs a store call on the blocking pool.
    pub(super) async fn store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SqliteStore) -> StoreResult<T> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(join_error)?
            .map_err(ServiceError::from)
    }

    /// How many of the [`CPU_SLOTS`] CPU-bound jobs (validations, compiles,
    /// selector resolutions) are running now.
    pub fn cpu_jobs_running(&self) -> usize {
        self.inner.cpu_slots.running(CPU_SLOTS)
    }

    /// Runs CPU-bound `work` (compiling, resolving selectors, building the
    /// inventory) on the blocking pool under one of the [`CPU_SLOTS`],
    /// waiting for a free one: nothing CPU-bound runs on the async workers,
    /// and no more than that many such jobs at once (SPEC §12).
    pub(super) async fn cpu<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Service) -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        let permit =
            self.inner
                .cpu_slots
                .acquire()
                .await
                .ok_or_else(|| ServiceError::Internal {
                    message: "the CPU slots are closed".into(),
                })?;
        let service = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work(&service)
        })
        .await
        .map_err(join_error)
    }

    pub(super) async fn engine_call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, EngineCallError>>,
    ) -> Result<T, ServiceError> {
        call.await.map_err(|e| match e {
            EngineCallError::Stopped => ServiceError::Unavailable,
            EngineCallError::Failed(message) => ServiceError::Internal { message },
        })
    }
}

/// What [`Service::open`] needs to re-validate stored policies before the
/// service exists.
struct PartialService<'a> {
    store: Arc<SqliteStore>,
    manifests: Arc<ManifestSet>,
    inventory: InventoryService,
    hosts: &'a RwLock<BTreeMap<String, HostEntry>>,
}

impl PartialService<'_> {
    /// Re-validates every stored policy: one that no longer compiles turns
    /// `invalid` (and back to `disabled` once it compiles again); the
    /// enabled ones are returned for the engine.
    async fn reload_policies(&self) -> Result<Vec<(Policy, String)>, ServiceError> {
        let inventory = build_inventory(
            &self.inventory,
            &self.hosts.read().unwrap_or_else(|e| e.into_inner()),
        );
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let store = self.store.clone();
            let page = tokio::task::spawn_blocking(move || store.policies(after, 500))
                .await
                .map_err(join_error)??;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for record in page {
                let ctx = CompileContext {
                    policy_id: Some(record.id.to_string()),
                    version_int: record.version_int,
                    inventory: Some(&inventory),
                    now: Some(Utc::now().to_rfc3339()),
                };
                let validated = validate_value(&record.spec, &self.manifests, &ctx);
                let status = match (&validated.report.ir, record.status) {
                    (None, _) => PolicyStatus::Invalid,
                    (Some(_), PolicyStatus::Invalid) => PolicyStatus::Disabled,
                    (Some(_), status) => status,
                };
                if status != record.status {
                    warn!(policy_id = %record.id, from = record.status.as_str(), to = status.as_str(), "policy status changed at start");
                    let audit = AuditRecord {
                        ts: Utc::now(),
                        correlation_id: Uuid::new_v4(),
                        kind: "policy.revalidated".into(),
                        policy_id: Some(record.id),
                        details: json!({"from": record.status.as_str(), "to": status.as_str(), "issues": validated.report.issues}),
                    };
                    let store = self.store.clone();
                    let (id, intent) = (record.id, record.enabled_intent);
                    tokio::task::spawn_blocking(move || {
                        store.set_policy_status(id, status, intent, &audit)
                    })
                    .await
                    .map_err(join_error)??;
                }
                if status == PolicyStatus::Enabled {
                    if let Some(ir) = validated.report.ir {
                        out.push((Policy { id: record.id, ir }, record.name.clone()));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Backs the database up every `config.every` into `config.dir`, keeping
/// the newest `config.keep` (docs/operations.md). A failed backup is logged
/// loudly and tried again at the next tick; it never stops the agent.
async fn backup_loop(
    db: std::path::PathBuf,
    config: crate::service::config::BackupConfig,
    metrics: Arc<Metrics>,
) {
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + config.every, config.every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (db, dir, keep) = (db.clone(), config.dir.clone(), config.keep);
        match tokio::task::spawn_blocking(move || crate::store::backup_rotating(&db, &dir, keep))
            .await
        {
            Ok(Ok(report)) => tracing::info!(
                path = %report.path.display(),
                bytes = report.bytes,
                "automatic backup written"
            ),
            Ok(Err(e)) => {
                metrics.backup_failed();
                tracing::error!(error = %e, "automatic backup failed");
            }
            Err(e) => {
                metrics.backup_failed();
                tracing::error!(error = %e, "automatic backup task failed");
            }
        }
    }
}

/// Moves every event of `from` onto `to`, in order, until either closes.
async fn forward(mut from: Consumer, to: Publisher) {
    while let Some(event) = from.recv().await {
        if to.publish(event).await.is_err() {
            return;
        }
    }
}

pub(super) fn bad(code: &'static str, message: String) -> ServiceError {
    ServiceError::BadRequest {
        code,
        message,
        details: Value::Null,
    }
}

pub(super) fn join_error(e: tokio::task::JoinError) -> ServiceError {
    ServiceError::Internal {
        message: format!("blocking task failed: {e}"),
    }
}
