//! The [`Service`]'s state and operations: open (store, hosts, drivers,
//! inventory, engine thread), policies with their gates, hosts, events,
//! webhooks and the kill switch. Every store call runs on the blocking pool.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use drivers::breaker::{BreakerConfig, Breakers};
use drivers::driver::Driver;
use drivers::guard::guard;
use drivers::manifest::{shipped, ManifestSet};
use drivers::registry::{HostConfig, Registry, RegistryError, ValidatedHost};
use hmac::{Hmac, Mac};
use inventory::{HostInventory, Inventory};
use serde_json::{json, Value};
use sha2::Sha256;
use tracing::{info, warn};
use uuid::Uuid;

use super::config::Config;
use super::dry_run::{self, PolicyTranscript};
use super::engine_loop::{EngineCallError, EngineHandle, EngineParts};
use super::metrics::Metrics;
use super::{
    Actor, EventAnswer, HostInventoryStatus, HostView, KillSwitchView, Page, PolicyView, Service,
    ServiceError,
};
use crate::compile::CompileContext;
use crate::engine::bus::Consumer;
use crate::engine::event::Event;
use crate::engine::runner::{EngineConfig, Policy, Snapshots, Transcript};
use crate::engine::scheduler::SchedulerConfig;
use crate::engine::store::{
    AuditEntry, AuditQuery, AuditRecord, EngineStore, HostRecord, HostSource, PolicyRecord,
    PolicyStatus, PolicyStore, SecretKey, SqliteStore, StoreError, StoreResult, TranscriptRecord,
    ValidationRecord,
};
use crate::inventory_service::{InventoryService, RefreshSettings};
use crate::validate::{validate_text, validate_value, Validated};

/// How long the inventory used to validate policies is reused before it is
/// copied again from the inventory service.
const INVENTORY_CACHE: Duration = Duration::from_secs(1);

/// What [`Service::open`] takes besides the config; tests and `hazel demo`
/// swap parts.
pub struct OpenOptions {
    /// The drivers by plugin id.
    pub registry: Registry,
    /// The manifests; from `plugin_dir` or the built-in ones when `None`.
    pub manifests: Option<ManifestSet>,
    /// Events from sources (NUT, timers); `None` when there are none.
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
    registry: Registry,
    pub(super) inventory: InventoryService,
    breakers: Arc<Breakers>,
    engine: EngineHandle,
    pub(super) metrics: Arc<Metrics>,
    pub(super) hosts: RwLock<BTreeMap<String, HostEntry>>,
    webhook_secrets: BTreeMap<String, Option<Vec<u8>>>,
    inventory_cache: Mutex<Option<(Instant, Arc<Inventory>)>>,
    /// Serializes policy mutations, so the duplicate-hash check and the
    /// write see the same store.
    writes: tokio::sync::Mutex<()>,
    /// The NUT pollers, stopped first at shutdown.
    nut: tokio::sync::Mutex<Option<crate::nut::NutSources>>,
}

/// A registered host and its driver (guarded by its breaker).
#[derive(Clone)]
pub(super) struct HostEntry {
    pub(super) validated: ValidatedHost,
    pub(super) driver: Arc<dyn Driver>,
    source: HostSource,
}

/// The engine reads the inventory service's snapshots.
struct ServiceSnapshots(InventoryService);

impl Snapshots for ServiceSnapshots {
    fn host(&self, host_id: &str) -> Option<HostInventory> {
        self.0
            .snapshot(host_id)
            .ok()
            .flatten()
            .map(|s| HostInventory::clone(&s))
    }

    fn record_results(&self, host_id: &str, results: &[(String, Option<String>)]) {
        self.0.record_results(host_id, results);
    }
}

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
        let path = config.data_dir.join(SqliteStore::DEFAULT_FILE_NAME);
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(path))
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
                warn!(host = %host.id, "hazel.yaml host replaces the API-created host with the same id");
            }
            let (validated, driver) = register(&options.registry, &manifests, &breakers, host)
                .map_err(|e| ServiceError::BadRequest {
                    code: "config.host_invalid",
                    message: format!("hazel.yaml host `{}`: {e}", host.id),
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
        // Event sources: NUT pollers publish on a bus the engine consumes.
        let (bus, nut) = match options.bus {
            Some(bus) => (Some(bus), None),
            None if !config.nut.is_empty() => {
                let capacity =
                    std::num::NonZeroUsize::new(1024).unwrap_or(std::num::NonZeroUsize::MIN);
                let (publisher, consumer) = crate::engine::bus::channel(capacity, "nut");
                (
                    Some(consumer),
                    Some(crate::nut::spawn(&config.nut, publisher)),
                )
            }
            None => (None, None),
        };
        let engine = EngineHandle::spawn(EngineParts {
            store: store.clone() as Arc<dyn EngineStore>,
            snapshots: Arc::new(ServiceSnapshots(inner_inventory)),
            breakers: breakers.clone(),
            config: engine_config,
            drivers,
            policies,
            metrics: metrics.clone(),
            bus,
            readings: nut.as_ref().map(|n| n.readings().clone()),
        })
        .map_err(|e| ServiceError::Internal {
            message: format!("cannot start the engine thread: {e}"),
        })?;
        if options.discovery {
            inventory.start_discovery();
        }
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
        if let Some(nut) = self.inner.nut.lock().await.take() {
            nut.shutdown().await;
        }
        self.inner
            .inventory
            .stop_discovery(Duration::from_secs(2))
            .await;
        self.inner.engine.shutdown(grace).await;
    }

    /// Validates a spec (JSON or YAML) against the manifests and the current
    /// inventory: the object `hazel validate --json` prints.
    pub fn validate(&self, body: &str) -> crate::validate::ValidationReport {
        let inventory = self.cached_inventory();
        let ctx = CompileContext {
            inventory: Some(&inventory),
            ..CompileContext::default()
        };
        validate_text(body, &self.inner.manifests, &ctx).report
    }

    /// Saves a new policy (SPEC §9): blockers -> 400; an identical hash ->
    /// 409 naming the stored policy; saved `disabled` unless the spec says
    /// `enabled: true` and its preflight dry-run has no error.
    pub async fn create_policy(
        &self,
        actor: &Actor,
        body: &str,
    ) -> Result<PolicyView, ServiceError> {
        let _write = self.inner.writes.lock().await;
        let id = Uuid::new_v4();
        let (validated, spec) = self.validate_for_store(body, id, 1)?;
        let hash = validated.report.hash.clone().unwrap_or_default();
        if let Some(existing_id) = self.store(move |s| s.policy_by_hash(&hash)).await? {
            return Err(ServiceError::DuplicateHash { existing_id });
        }
        let now = Utc::now();
        let meta = validated.meta.clone();
        let record = PolicyRecord {
            id,
            name: meta.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            spec,
            version_int: 1,
            hash: validated.report.hash.clone().unwrap_or_default(),
            compiled_ir: serde_json::to_value(&validated.report.ir).unwrap_or(Value::Null),
            enabled_intent: meta.as_ref().is_some_and(|m| m.enabled),
            status: PolicyStatus::Disabled,
            last_validation: Some(validation_record(&validated)),
            last_dry_run: None,
            created_at: now,
            updated_at: now,
        };
        let audit = audit(
            actor,
            "policy.created",
            Some(id),
            json!({"version_int": 1, "hash": record.hash}),
        );
        let insert = record.clone();
        self.store(move |s| s.insert_policy(&insert, &audit))
            .await
            .map_err(duplicate)?;
        info!(policy_id = %id, by = %actor.subject, "policy created");
        if record.enabled_intent {
            saved_even_if_blocked(self.try_enable(actor, id, None).await)?;
        }
        self.policy(id).await
    }

    /// Replaces a policy's spec, bumping `version_int`; `expected_version`
    /// (from `If-Match`) must match the stored one when given. The policy
    /// is unloaded and, if its spec says `enabled: true`, enabled again
    /// through the dry-run gate.
    pub async fn update_policy(
        &self,
        actor: &Actor,
        id: Uuid,
        body: &str,
        expected_version: Option<u64>,
    ) -> Result<PolicyView, ServiceError> {
        let _write = self.inner.writes.lock().await;
        let current = self.record(id).await?;
        // Checked before anything changes (the `writes` lock makes it
        // race-free): a refused update must leave the policy running.
        if let Some(expected) = expected_version {
            if expected != current.version_int {
                return Err(ServiceError::Conflict {
                    code: "policy.version_conflict",
                    message: format!(
                        "the policy is at version {}, not {expected}; read the policy again and retry",
                        current.version_int
                    ),
                });
            }
        }
        let version = current.version_int + 1;
        let (validated, spec) = self.validate_for_store(body, id, version)?;
        let hash = validated.report.hash.clone().unwrap_or_default();
        if let Some(existing_id) = self.store(move |s| s.policy_by_hash(&hash)).await? {
            if existing_id != id {
                return Err(ServiceError::DuplicateHash { existing_id });
            }
        }
        let meta = validated.meta.clone();
        let record = PolicyRecord {
            name: meta.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            spec,
            hash: validated.report.hash.clone().unwrap_or_default(),
            compiled_ir: serde_json::to_value(&validated.report.ir).unwrap_or(Value::Null),
            enabled_intent: meta.as_ref().is_some_and(|m| m.enabled),
            status: PolicyStatus::Disabled,
            last_validation: Some(validation_record(&validated)),
            updated_at: Utc::now(),
            ..current
        };
        self.engine_call(self.inner.engine.unload(id)).await?;
        let audit = audit(
            actor,
            "policy.updated",
            Some(id),
            json!({"version_int": version, "hash": record.hash}),
        );
        let update = record.clone();
        self.store(move |s| s.update_policy(&update, expected_version, &audit))
            .await
            .map_err(|e| match e {
                ServiceError::Store {
                    source: StoreError::Conflict { what },
                } => ServiceError::Conflict {
                    code: "policy.version_conflict",
                    message: format!("{what}; read the policy again and retry"),
                },
                other => duplicate(other),
            })?;
        if record.enabled_intent {
            saved_even_if_blocked(self.try_enable(actor, id, None).await)?;
        }
        self.policy(id).await
    }

    /// Deletes a policy; its ledger and audit records stay.
    pub async fn delete_policy(&self, actor: &Actor, id: Uuid) -> Result<(), ServiceError> {
        let _write = self.inner.writes.lock().await;
        self.record(id).await?;
        self.engine_call(self.inner.engine.unload(id)).await?;
        let audit = audit(actor, "policy.deleted", Some(id), json!({}));
        self.store(move |s| s.delete_policy(id, &audit)).await?;
        Ok(())
    }

    /// One stored policy.
    pub async fn policy(&self, id: Uuid) -> Result<PolicyView, ServiceError> {
        Ok(view(self.record(id).await?))
    }

    /// Stored policies by id, `limit` per page after the cursor `after`.
    pub async fn policies(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Page<PolicyView>, ServiceError> {
        let limit = limit.clamp(1, 500);
        let (items, total) = self
            .store(move |s| Ok((s.policies(after, limit + 1)?, s.count_policies()?)))
            .await?;
        let more = items.len() > limit;
        let items: Vec<PolicyView> = items.into_iter().take(limit).map(view).collect();
        let next = more
            .then(|| items.last().map(|p| p.id.to_string()))
            .flatten();
        Ok(Page { items, next, total })
    }

    /// Enables a policy (SPEC §9 gates): a fresh dry-run runs first and an
    /// error in it refuses the enable (409 with the errors) unless
    /// `force_reason` is given (admins only; the API checks the role), which
    /// is written to the audit log.
    pub async fn enable_policy(
        &self,
        actor: &Actor,
        id: Uuid,
        force_reason: Option<String>,
    ) -> Result<PolicyView, ServiceError> {
        let _write = self.inner.writes.lock().await;
        self.try_enable(actor, id, force_reason.as_deref()).await?;
        self.policy(id).await
    }

    /// Disables a policy: unloaded from the engine (queued actions still
    /// run and reach the ledger).
    pub async fn disable_policy(
        &self,
        actor: &Actor,
        id: Uuid,
    ) -> Result<PolicyView, ServiceError> {
        let _write = self.inner.writes.lock().await;
        let record = self.record(id).await?;
        self.engine_call(self.inner.engine.unload(id)).await?;
        let status = if record.status == PolicyStatus::Invalid {
            PolicyStatus::Invalid
        } else {
            PolicyStatus::Disabled
        };
        let audit = audit(actor, "policy.disabled", Some(id), json!({}));
        self.store(move |s| s.set_policy_status(id, status, false, &audit))
            .await?;
        self.policy(id).await
    }

    /// Dry-runs a stored policy now (SPEC §5) and keeps the transcript.
    pub async fn dry_run_policy(
        &self,
        actor: &Actor,
        id: Uuid,
    ) -> Result<PolicyTranscript, ServiceError> {
        let record = self.record(id).await?;
        let transcript = dry_run::run(self, &record).await?;
        let kept = transcript.clone();
        let body = serde_json::to_value(&kept).unwrap_or(Value::Null);
        let dry = crate::engine::store::DryRunRecord {
            ts: kept.ts,
            severity: kept.severity,
            transcript_id: kept.transcript_id,
        };
        let t = TranscriptRecord {
            id: kept.transcript_id,
            policy_id: Some(id),
            created_at: kept.ts,
            severity: kept.severity,
            body,
        };
        self.store(move |s| s.record_dry_run(id, &dry, &t)).await?;
        info!(policy_id = %id, by = %actor.subject, severity = ?transcript.severity, "policy dry-run");
        Ok(transcript)
    }

    /// A kept transcript (policy dry-run or event dry-run).
    pub async fn transcript(&self, id: Uuid) -> Result<Value, ServiceError> {
        self.store(move |s| s.transcript(id))
            .await?
            .map(|t| t.body)
            .ok_or(ServiceError::NotFound {
                what: "transcript",
                id: id.to_string(),
            })
    }

    /// A policy's ledger, newest first, at most `limit` (≤ 30) entries.
    pub async fn executions(&self, id: Uuid, limit: usize) -> Result<Vec<Value>, ServiceError> {
        self.record(id).await?;
        let limit = limit.clamp(1, crate::engine::store::LEDGER_RUNS_PER_POLICY);
        let runs = self.store(move |s| s.runs(id, limit)).await?;
        Ok(runs
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .collect())
    }

    /// The inverse of a stored policy (SPEC §11), unsaved.
    pub async fn inverse(&self, id: Uuid) -> Result<Value, ServiceError> {
        let record = self.record(id).await?;
        let self_host = self
            .read_hosts()
            .values()
            .find(|h| h.validated.self_host)
            .map(|h| h.validated.id.clone());
        let options = crate::inverse::InverseOptions {
            forward_id: Some(id),
            manifests: &self.inner.manifests,
            self_host: self_host.as_deref(),
        };
        let inverse = crate::inverse::inverse(&record.spec, &options).map_err(|e| {
            ServiceError::Unprocessable {
                code: "policy.not_invertible",
                message: e.to_string(),
                details: Value::Null,
            }
        })?;
        serde_json::to_value(&inverse).map_err(|e| ServiceError::Internal {
            message: e.to_string(),
        })
    }

    /// Injects a normalized event (SPEC §1): decided for real, or with
    /// `dry_run` the whole decision with driver dry-runs, nothing executed,
    /// the transcript kept.
    pub async fn inject_event(
        &self,
        actor: &Actor,
        body: &Value,
        dry_run: bool,
    ) -> Result<EventAnswer, ServiceError> {
        let event = Event::from_json(body).map_err(|errors| ServiceError::BadRequest {
            code: "event.invalid",
            message: format!("the event has {} problem(s)", errors.len()),
            details: json!({"errors": errors.iter().map(|e| json!({"field": e.field(), "message": e.to_string()})).collect::<Vec<_>>()}),
        })?;
        let audit = audit(
            actor,
            if dry_run {
                "event.dry_run"
            } else {
                "event.injected"
            },
            None,
            json!({"kind": event.kind.as_str(), "subject": event.subject.id}),
        );
        let correlation = event.correlation_id;
        let audit = AuditRecord {
            correlation_id: correlation,
            ..audit
        };
        self.store(move |s| s.append_audit(&audit)).await?;
        self.decide(event, dry_run).await
    }

    /// A named webhook post (SPEC §9): checked against its HMAC-SHA256
    /// secret when one is configured, refused unless `allow_unsigned` when
    /// none is, then decided as a `webhook.custom` event.
    pub async fn webhook(
        &self,
        name: &str,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<EventAnswer, ServiceError> {
        let Some(hook) = self.inner.config.webhooks.get(name) else {
            return Err(ServiceError::Webhook {
                code: "webhook.unknown",
                status: 404,
                message: format!("no webhook named `{name}` is configured"),
            });
        };
        match self.inner.webhook_secrets.get(name).cloned().flatten() {
            Some(secret) => check_signature(&secret, signature, body)?,
            None if hook.allow_unsigned => {}
            None => {
                return Err(ServiceError::Webhook {
                    code: "webhook.unsigned_refused",
                    status: 403,
                    message: format!(
                        "webhook `{name}` has no secret configured and allow_unsigned is false"
                    ),
                })
            }
        }
        let payload: Value = serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
        let event = Event::from_json(&json!({
            "type": "webhook",
            "kind": "webhook.custom",
            "subject": {"kind": "integration", "id": name},
            "attrs": {"name": name, "body": payload},
        }))
        .map_err(|errors| ServiceError::Internal {
            message: format!("webhook event: {errors:?}"),
        })?;
        self.decide(event, false).await
    }

    /// Every registered host, secrets masked.
    pub async fn hosts(&self) -> Result<Vec<HostView>, ServiceError> {
        let hosts: Vec<HostEntry> = self.read_hosts().values().cloned().collect();
        Ok(hosts.iter().map(|h| self.host_view(h)).collect())
    }

    /// Creates (or replaces) an API-managed host: validated against its
    /// manifest, secrets encrypted at rest, registered with the inventory
    /// and the engine. A host declared in `hazel.yaml` cannot be replaced.
    pub async fn create_host(&self, actor: &Actor, body: &Value) -> Result<HostView, ServiceError> {
        let host: HostConfig =
            serde_json::from_value(body.clone()).map_err(|e| bad("host.invalid", e.to_string()))?;
        if self
            .read_hosts()
            .get(&host.id)
            .is_some_and(|h| h.source == HostSource::Config)
        {
            return Err(ServiceError::Conflict {
                code: "host.declared_in_config",
                message: format!(
                    "host `{}` is declared in hazel.yaml; change it there",
                    host.id
                ),
            });
        }
        let (validated, driver) = register(
            &self.inner.registry,
            &self.inner.manifests,
            &self.inner.breakers,
            &host,
        )
        .map_err(|e| ServiceError::BadRequest {
            code: "host.invalid",
            message: e.to_string(),
            details: json!({"findings": e.findings()}),
        })?;
        let record = host_record(&validated, HostSource::Api);
        let audit = audit(
            actor,
            "host.upserted",
            None,
            json!({"host": host.id, "plugin": host.plugin}),
        );
        self.store(move |s| s.upsert_host(&record, &audit)).await?;
        self.inner.inventory.add_host(
            unguarded(&driver),
            RefreshSettings::from_manifest(validated.manifest()),
        );
        self.engine_call(self.inner.engine.add_driver(driver.clone()))
            .await?;
        let entry = HostEntry {
            validated,
            driver,
            source: HostSource::Api,
        };
        let shown = self.host_view(&entry);
        self.inner
            .hosts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.id.clone(), entry);
        *self
            .inner
            .inventory_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        Ok(shown)
    }

    /// The capabilities a host's plugin offers (from its manifest).
    pub async fn host_capabilities(&self, id: &str) -> Result<Value, ServiceError> {
        let entry = self.host_entry(id)?;
        let manifest = entry.validated.manifest();
        Ok(json!({
            "host": id,
            "plugin": manifest.id,
            "capabilities": manifest.capabilities,
        }))
    }

    /// A host's inventory (children, `ts`, `stale`); `refresh` runs a fast
    /// refresh first within the host's SLA and keeps the snapshot.
    pub async fn host_inventory(&self, id: &str, refresh: bool) -> Result<Value, ServiceError> {
        self.host_entry(id)?;
        let mut refreshed = None;
        if refresh {
            let outcome = self.inner.inventory.fast_refresh(id).await.map_err(|e| {
                ServiceError::Internal {
                    message: e.to_string(),
                }
            })?;
            refreshed = Some(json!({
                "refreshed": outcome.refreshed,
                "error": outcome.error.as_ref().map(|e| json!({"code": e.code(), "message": e.to_string()})),
            }));
            self.keep_snapshot(id).await?;
        }
        let snapshot = self
            .inner
            .inventory
            .snapshot(id)
            .map_err(|e| ServiceError::Internal {
                message: e.to_string(),
            })?;
        let status = self.inner.inventory.status(id).ok();
        Ok(json!({
            "host": id,
            "ts": status.as_ref().and_then(|s| s.ts),
            "stale": status.as_ref().is_none_or(|s| s.stale),
            "refresh": refreshed,
            "targets": snapshot.map(|s| serde_json::to_value(s.targets()).unwrap_or(Value::Null)).unwrap_or(json!([])),
        }))
    }

    /// The kill switch.
    pub async fn kill_switch(&self) -> Result<KillSwitchView, ServiceError> {
        let state = self.store(|s| s.kill_switch()).await?;
        Ok(KillSwitchView {
            paused: state.paused,
            since: state.since,
            by: state.by,
            reason: state.reason,
        })
    }

    /// Engages or releases the kill switch (persisted; dry-runs keep working).
    pub async fn set_kill_switch(
        &self,
        actor: &Actor,
        paused: bool,
        reason: Option<String>,
    ) -> Result<KillSwitchView, ServiceError> {
        if paused {
            let reason = reason.unwrap_or_else(|| "paused through the API".into());
            self.engine_call(self.inner.engine.pause(&actor.subject, &reason))
                .await?;
        } else {
            self.engine_call(self.inner.engine.resume()).await?;
        }
        self.kill_switch().await
    }

    /// Audit records, newest first.
    pub async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>, ServiceError> {
        self.store(move |s| s.audit(&query)).await
    }

    // ---- internals -------------------------------------------------------

    async fn decide(&self, event: Event, dry_run: bool) -> Result<EventAnswer, ServiceError> {
        let correlation_id = event.correlation_id;
        if dry_run {
            let transcript = self.engine_call(self.inner.engine.dry_run(event)).await?;
            let body = transcript_json(&transcript);
            let kept = TranscriptRecord {
                id: transcript.transcript_id,
                policy_id: None,
                created_at: Utc::now(),
                severity: transcript.severity,
                body: body.clone(),
            };
            self.store(move |s| s.put_transcript(&kept)).await?;
            return Ok(EventAnswer {
                correlation_id,
                dry_run: true,
                decisions: body["decisions"].as_array().cloned().unwrap_or_default(),
                severity: Some(transcript.severity.as_str().to_string()),
                transcript_id: Some(transcript.transcript_id),
            });
        }
        let report = self.engine_call(self.inner.engine.event(event)).await?;
        Ok(EventAnswer {
            correlation_id,
            dry_run: false,
            decisions: report.decisions.iter().map(decision_json).collect(),
            severity: None,
            transcript_id: None,
        })
    }

    /// Enables `id` through the dry-run gate (the caller holds `writes`).
    async fn try_enable(
        &self,
        actor: &Actor,
        id: Uuid,
        force: Option<&str>,
    ) -> Result<(), ServiceError> {
        let record = self.record(id).await?;
        let (validated, _) = self
            .validate_for_store(
                &serde_json::to_string(&record.spec).unwrap_or_default(),
                id,
                record.version_int,
            )
            .map_err(|e| match e {
                ServiceError::Invalid { report } => ServiceError::Conflict {
                    code: "policy.invalid_status",
                    message: format!("the policy no longer compiles: {}", summarize(&report)),
                },
                other => other,
            })?;
        let transcript = self.dry_run_policy(actor, id).await?;
        let errors = transcript.errors();
        if !errors.is_empty() {
            match force {
                Some(reason) => {
                    let audit = audit(
                        actor,
                        "policy.enable_forced",
                        Some(id),
                        json!({"reason": reason, "errors": errors, "transcript_id": transcript.transcript_id}),
                    );
                    self.store(move |s| s.append_audit(&audit)).await?;
                    warn!(policy_id = %id, by = %actor.subject, reason, "enable forced past dry-run errors");
                }
                None => {
                    // A refused Enable changes nothing that runs: a disabled
                    // policy stays disabled (its intent is recorded), an
                    // enabled one stays enabled (a host briefly down must
                    // not switch a running policy off).
                    let audit = audit(
                        actor,
                        "policy.enable_blocked",
                        Some(id),
                        json!({"transcript_id": transcript.transcript_id}),
                    );
                    let status = match record.status {
                        PolicyStatus::Enabled => PolicyStatus::Enabled,
                        _ => PolicyStatus::Disabled,
                    };
                    self.store(move |s| s.set_policy_status(id, status, true, &audit))
                        .await?;
                    return Err(ServiceError::EnableBlocked {
                        errors,
                        transcript_id: Some(transcript.transcript_id),
                    });
                }
            }
        }
        let Some(ir) = validated.report.ir else {
            return Err(ServiceError::Internal {
                message: "validated policy without IR".into(),
            });
        };
        let audit = audit(
            actor,
            "policy.enabled",
            Some(id),
            json!({"forced": force.is_some()}),
        );
        // The engine first: if it cannot load the policy the store keeps
        // what runs (disabled); if the store write fails, unload again.
        self.engine_call(self.inner.engine.load(Policy { id, ir }))
            .await?;
        let stored = self
            .store(move |s| s.set_policy_status(id, PolicyStatus::Enabled, true, &audit))
            .await;
        if let Err(e) = stored {
            let _ = self.engine_call(self.inner.engine.unload(id)).await;
            return Err(e);
        }
        Ok(())
    }

    /// Validates `body` for storing as policy `id` at `version`: blockers
    /// are an [`ServiceError::Invalid`]; returns the validation and the spec
    /// as JSON.
    fn validate_for_store(
        &self,
        body: &str,
        id: Uuid,
        version: u64,
    ) -> Result<(Validated, Value), ServiceError> {
        let inventory = self.cached_inventory();
        let ctx = CompileContext {
            policy_id: Some(id.to_string()),
            version_int: version,
            inventory: Some(&inventory),
            now: Some(Utc::now().to_rfc3339()),
        };
        let validated = validate_text(body, &self.inner.manifests, &ctx);
        if !validated.report.ok {
            return Err(ServiceError::Invalid {
                report: serde_json::to_value(&validated.report).unwrap_or(Value::Null),
            });
        }
        let spec = parse_spec_value(body)?;
        Ok((validated, spec))
    }

    /// Every registered host's snapshot (an empty one for hosts never
    /// discovered, so policies on them compile), reused for a second.
    pub(super) fn cached_inventory(&self) -> Arc<Inventory> {
        let mut cache = self
            .inner
            .inventory_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((at, inventory)) = cache.as_ref() {
            if at.elapsed() < INVENTORY_CACHE {
                return inventory.clone();
            }
        }
        let inventory = Arc::new(build_inventory(&self.inner.inventory, &self.read_hosts()));
        *cache = Some((Instant::now(), inventory.clone()));
        inventory
    }

    async fn keep_snapshot(&self, id: &str) -> Result<(), ServiceError> {
        if let Ok(Some(snapshot)) = self.inner.inventory.snapshot(id) {
            let value = serde_json::to_value(&*snapshot).unwrap_or(Value::Null);
            let ts = snapshot.ts.unwrap_or_else(Utc::now);
            let id = id.to_string();
            self.store(move |s| s.put_inventory_snapshot(&id, &value, ts))
                .await?;
        }
        Ok(())
    }

    pub(super) fn host_entry(&self, id: &str) -> Result<HostEntry, ServiceError> {
        self.read_hosts()
            .get(id)
            .cloned()
            .ok_or(ServiceError::NotFound {
                what: "host",
                id: id.to_string(),
            })
    }

    fn host_view(&self, entry: &HostEntry) -> HostView {
        let status = self.inner.inventory.status(&entry.validated.id).ok();
        HostView {
            id: entry.validated.id.clone(),
            plugin: entry.validated.plugin.clone(),
            self_host: entry.validated.self_host,
            source: entry.source.as_str().to_string(),
            connection: entry.validated.masked_connection(),
            inventory: status.map(|s| HostInventoryStatus {
                ts: s.ts,
                stale: s.stale,
                targets: s.targets,
            }),
        }
    }

    fn read_hosts(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, HostEntry>> {
        self.inner.hosts.read().unwrap_or_else(|e| e.into_inner())
    }

    async fn record(&self, id: Uuid) -> Result<PolicyRecord, ServiceError> {
        self.store(move |s| s.policy(id))
            .await?
            .ok_or(ServiceError::NotFound {
                what: "policy",
                id: id.to_string(),
            })
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

    async fn engine_call<T>(
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
    async fn reload_policies(&self) -> Result<Vec<Policy>, ServiceError> {
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
                        out.push(Policy { id: record.id, ir });
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Validates a host and builds its driver, guarded by the host's breaker.
fn register(
    registry: &Registry,
    manifests: &ManifestSet,
    breakers: &Breakers,
    host: &HostConfig,
) -> Result<(ValidatedHost, Arc<dyn Driver>), RegistryError> {
    let (validated, driver) = registry.driver_for(manifests, host)?;
    Ok((validated, guard(driver, breakers)))
}

/// The inventory service checks the breaker itself: give it the bare driver.
fn unguarded(driver: &Arc<dyn Driver>) -> Arc<dyn Driver> {
    driver.clone()
}

fn build_inventory(service: &InventoryService, hosts: &BTreeMap<String, HostEntry>) -> Inventory {
    let mut inventory = service.inventory();
    for (id, entry) in hosts {
        if inventory.host(id).is_none() {
            inventory.insert(HostInventory::new(
                id.clone(),
                entry.validated.plugin.clone(),
                Vec::new(),
            ));
        }
    }
    inventory
}

/// The spec body as JSON (the user may send YAML).
fn parse_spec_value(body: &str) -> Result<Value, ServiceError> {
    let trimmed = body.trim_start();
    let parsed = if trimmed.starts_with('{') {
        serde_json::from_str::<Value>(body).map_err(|e| e.to_string())
    } else {
        serde_norway::from_str::<Value>(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|message| bad("policy.unreadable", message))
}

fn validation_record(validated: &Validated) -> ValidationRecord {
    ValidationRecord {
        ts: Utc::now(),
        ok: validated.report.ok,
        issues: serde_json::to_value(&validated.report.issues).unwrap_or(Value::Null),
    }
}

fn view(record: PolicyRecord) -> PolicyView {
    let mut spec = record.spec;
    if let Value::Object(map) = &mut spec {
        map.insert("enabled".into(), Value::Bool(record.enabled_intent));
    }
    PolicyView {
        id: record.id,
        name: record.name,
        spec,
        version_int: record.version_int,
        hash: record.hash,
        status: record.status.as_str().to_string(),
        enabled_intent: record.enabled_intent,
        compiled_ir: record.compiled_ir,
        last_validation: record
            .last_validation
            .map(|v| serde_json::to_value(v).unwrap_or(Value::Null)),
        last_dry_run: record
            .last_dry_run
            .map(|v| serde_json::to_value(v).unwrap_or(Value::Null)),
        created_at: record.created_at,
        updated_at: record.updated_at,
    }
}

fn audit(actor: &Actor, kind: &str, policy_id: Option<Uuid>, mut details: Value) -> AuditRecord {
    if let Value::Object(map) = &mut details {
        map.insert("by".into(), Value::String(actor.subject.clone()));
        map.insert("role".into(), Value::String(actor.role.as_str().into()));
    }
    AuditRecord {
        ts: Utc::now(),
        correlation_id: Uuid::new_v4(),
        kind: kind.to_string(),
        policy_id,
        details,
    }
}

fn check_signature(
    secret: &[u8],
    signature: Option<&str>,
    body: &[u8],
) -> Result<(), ServiceError> {
    let refuse = |code: &'static str, message: &str| ServiceError::Webhook {
        code,
        status: 401,
        message: message.to_string(),
    };
    let Some(signature) = signature else {
        return Err(refuse(
            "webhook.unsigned",
            "the X-Hazel-Signature header is missing (sha256=<hex HMAC of the body>)",
        ));
    };
    let hex_part = signature.strip_prefix("sha256=").unwrap_or(signature);
    let expected = hex::decode(hex_part.trim())
        .map_err(|_| refuse("webhook.bad_signature", "the signature is not sha256=<hex>"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .map_err(|_| refuse("webhook.bad_signature", "the webhook secret is unusable"))?;
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| {
        refuse(
            "webhook.bad_signature",
            "the signature does not match the body",
        )
    })
}

fn transcript_json(transcript: &Transcript) -> Value {
    json!({
        "transcript_id": transcript.transcript_id,
        "correlation_id": transcript.correlation_id,
        "severity": transcript.severity,
        "decisions": transcript.decisions.iter().map(decision_json).collect::<Vec<_>>(),
    })
}

fn decision_json(decision: &crate::engine::runner::PolicyDecision) -> Value {
    json!({
        "policy_id": decision.policy_id,
        "severity": decision.severity,
        "code": decision.code,
        "explain": decision.explain,
        "run_id": decision.run_id,
        "planned": decision.planned.iter().map(|p| json!({
            "action_index": p.action_index,
            "capability": p.action.capability,
            "verb": p.action.verb,
            "params": p.action.params,
            "host": p.host,
            "targets": p.targets,
            "dry_run": p.dry_run.as_ref().map(|r| match r {
                Ok(answers) => json!({"answers": answers}),
                Err(e) => json!({"error": e}),
            }),
        })).collect::<Vec<_>>(),
        "skipped": decision.skipped,
    })
}

fn summarize(report: &Value) -> String {
    report["issues"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["severity"] == "blocker")
        .map(|i| {
            format!(
                "{} at {}",
                i["code"].as_str().unwrap_or(""),
                i["path"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn bad(code: &'static str, message: String) -> ServiceError {
    ServiceError::BadRequest {
        code,
        message,
        details: Value::Null,
    }
}

fn duplicate(e: ServiceError) -> ServiceError {
    match e {
        ServiceError::Store {
            source: StoreError::DuplicateHash { existing_id },
        } => ServiceError::DuplicateHash { existing_id },
        other => other,
    }
}

fn join_error(e: tokio::task::JoinError) -> ServiceError {
    ServiceError::Internal {
        message: format!("blocking task failed: {e}"),
    }
}

/// A validated host as the store keeps it: secret fields apart (encrypted
/// at rest), the rest in clear.
fn host_record(validated: &ValidatedHost, source: HostSource) -> HostRecord {
    let now = Utc::now();
    let mut connection = serde_json::Map::new();
    let mut secrets = BTreeMap::new();
    for name in validated.fields() {
        if validated.is_secret(name) {
            if let Some(secret) = validated.secret(name) {
                secrets.insert(name.to_string(), secret);
            }
        } else if let Some(value) = validated.value(name) {
            connection.insert(name.to_string(), value.clone());
        }
    }
    HostRecord {
        id: validated.id.clone(),
        plugin: validated.plugin.clone(),
        connection,
        secrets,
        source,
        created_at: now,
        updated_at: now,
    }
}

/// A stored host back as the config the registry validates.
fn host_config(record: &HostRecord) -> HostConfig {
    let mut connection = record.connection.clone();
    for (name, secret) in &record.secrets {
        connection.insert(name.clone(), Value::String(secret.expose().to_string()));
    }
    HostConfig {
        id: record.id.clone(),
        plugin: record.plugin.clone(),
        self_host: false,
        connection,
    }
}

/// SPEC §9: a save whose preflight has an error is still a save, with
/// `status: disabled` (the dry-run, its transcript and the refusal are
/// recorded); only Enable answers 409.
fn saved_even_if_blocked(result: Result<(), ServiceError>) -> Result<(), ServiceError> {
    match result {
        Ok(()) => Ok(()),
        // The policy is stored (disabled); the client must not think it was
        // not (a retry would then be a duplicate). The refusal is audited by
        // the gate; other failures are logged here.
        Err(ServiceError::EnableBlocked { .. }) => Ok(()),
        Err(e) => {
            warn!(error = %e, code = e.code(), "saved policy left disabled: its enable failed");
            Ok(())
        }
    }
}
