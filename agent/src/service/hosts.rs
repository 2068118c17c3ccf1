//! Hosts (SPEC §9): the registered hosts and their drivers, guarded by their
//! breakers; API-created hosts with secrets sealed at rest; capabilities and
//! inventory per host, and the inventory policies are validated against.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use drivers::breaker::Breakers;
use drivers::driver::Driver;
use drivers::guard::guard;
use drivers::manifest::ManifestSet;
use drivers::registry::{HostConfig, Registry, RegistryError, ValidatedHost};
use inventory::{HostInventory, Inventory};
use serde_json::{json, Value};

use super::audit::audit;
use super::open::bad;
use super::{Actor, HostInventoryStatus, HostView, Service, ServiceError};
use crate::inventory_service::{InventoryService, RefreshSettings};
use crate::store::{HostRecord, HostSource, PolicyStore};

/// How long the inventory used to validate policies is reused before it is
/// copied again from the inventory service.
const INVENTORY_CACHE: Duration = Duration::from_secs(1);

/// A registered host and its driver (guarded by its breaker).
#[derive(Clone)]
pub(super) struct HostEntry {
    pub(super) validated: ValidatedHost,
    pub(super) driver: Arc<dyn Driver>,
    pub(super) source: HostSource,
}

/// What is known of a host right now, for the web console's dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostHealth {
    /// The latest `host.state` published for it; `None` when unknown.
    pub reachable: Option<bool>,
    /// Its circuit breaker: `closed`, `open` or `half_open`.
    pub breaker: &'static str,
}

impl Service {
    /// The host's reachability and breaker state (SPEC §1 `host.state`).
    pub fn host_health(&self, id: &str) -> HostHealth {
        let breaker = match self.inner.breakers.for_host(id).state() {
            drivers::breaker::BreakerState::Closed => "closed",
            drivers::breaker::BreakerState::Open => "open",
            drivers::breaker::BreakerState::HalfOpen => "half_open",
        };
        HostHealth {
            reachable: self.inner.inventory.reachable(id),
            breaker,
        }
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
        // A host's targets may be tens of thousands: turned into JSON on
        // the blocking pool, not on the async workers (SPEC §12).
        let targets = self
            .cpu(move |_| {
                snapshot
                    .map(|s| serde_json::to_value(s.targets()).unwrap_or(Value::Null))
                    .unwrap_or(json!([]))
            })
            .await?;
        Ok(json!({
            "host": id,
            "ts": status.as_ref().and_then(|s| s.ts),
            "stale": status.as_ref().is_none_or(|s| s.stale),
            "partial": status.as_ref().map(|s| s.partial.clone()).unwrap_or_default(),
            "refresh": refreshed,
            "targets": targets,
        }))
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
                by_type: s.by_type,
                partial: s.partial,
            }),
        }
    }

    pub(super) fn read_hosts(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, HostEntry>> {
        self.inner.hosts.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Validates a host and builds its driver, guarded by the host's breaker.
pub(super) fn register(
    registry: &Registry,
    manifests: &ManifestSet,
    breakers: &Breakers,
    host: &HostConfig,
) -> Result<(ValidatedHost, Arc<dyn Driver>), RegistryError> {
    let (validated, driver) = registry.driver_for(manifests, host)?;
    Ok((validated, guard(driver, breakers)))
}

/// The inventory service checks the breaker itself: give it the bare driver.
pub(super) fn unguarded(driver: &Arc<dyn Driver>) -> Arc<dyn Driver> {
    driver.clone()
}

pub(super) fn build_inventory(
    service: &InventoryService,
    hosts: &BTreeMap<String, HostEntry>,
) -> Inventory {
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

/// A validated host as the store keeps it: secret fields apart (encrypted
/// at rest), the rest in clear.
pub(super) fn host_record(validated: &ValidatedHost, source: HostSource) -> HostRecord {
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
pub(super) fn host_config(record: &HostRecord) -> HostConfig {
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
