//! One agent installation for outage tests: a data dir with its SQLite
//! file, the Proxmox host it drives and the wall clock, shared by every
//! start of the agent. A restart is [`Site::start`] again over the same
//! file; a crash is dropping the engine first.

use std::sync::Arc;

use agent::engine::event::Event;
use agent::engine::runner::{Clock, Engine, EngineConfig, Policy, StartReport};
use agent::engine::store::{AuditQuery, EngineStore};
use agent::engine::subjects::level_event;
use agent::spec::UpsState;
use agent::store::SqliteStore;
use chrono::{DateTime, TimeDelta, Utc};
use drivers::breaker::{BreakerConfig, Breakers};
use serde_json::Value;
use uuid::Uuid;

use super::FakeDriver;

/// The UPS of the outage tests.
pub const UPS: &str = "ups1@nas.lan:3493";

pub struct Site {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    pub pve: Arc<FakeDriver>,
    pub clock: Clock,
    pub t0: tokio::time::Instant,
}

impl Site {
    /// A site whose `pve-01` has `targets`; the clock reads
    /// 2026-12-07 10:00 UTC now and moves with tokio's (paused) time.
    pub fn new(targets: &[(&str, Option<&str>)]) -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hazel.db");
        let t0 = tokio::time::Instant::now();
        let base = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        Site {
            _dir: dir,
            path,
            pve: FakeDriver::new("pve-01", "proxmox.ve", targets),
            clock: Arc::new(move || base + TimeDelta::from_std(t0.elapsed()).unwrap()),
            t0,
        }
    }

    pub fn store(&self) -> Arc<dyn EngineStore> {
        Arc::new(SqliteStore::open(&self.path).expect("open the store"))
    }

    /// A start of the agent with `policies` over the site's file, and what
    /// its start found.
    pub async fn start_with_report(&self, policies: Vec<Policy>) -> (Engine, StartReport) {
        let mut engine = super::engine(
            self.store(),
            &[&self.pve],
            Arc::new(Breakers::new(BreakerConfig::default())),
            EngineConfig {
                clock: self.clock.clone(),
                ..EngineConfig::default()
            },
        );
        for policy in policies {
            engine.add_policy(policy).unwrap();
        }
        let report = engine.start().await.unwrap();
        (engine, report)
    }

    /// [`Site::start_with_report`] without the report.
    pub async fn start(&self, policies: Vec<Policy>) -> Engine {
        self.start_with_report(policies).await.0
    }

    /// `(verb, targets, seconds since the site was made)` of every execute.
    pub fn calls(&self) -> Vec<(String, Vec<String>, u64)> {
        self.pve
            .calls()
            .into_iter()
            .map(|c| (c.verb, c.targets, c.start.duration_since(self.t0).as_secs()))
            .collect()
    }

    /// The targets in policy `id`'s restore set, as the store keeps them.
    pub fn restore_set(&self, id: u128) -> Vec<String> {
        self.store()
            .restore_set(Uuid::from_u128(id))
            .unwrap()
            .into_iter()
            .map(|e| e.target)
            .collect()
    }

    /// The details of the audit records of `kind`, newest first.
    pub fn audit(&self, kind: &str) -> Vec<Value> {
        self.store()
            .audit(&AuditQuery {
                kind: Some(kind.into()),
                ..AuditQuery::default()
            })
            .unwrap()
            .into_iter()
            .map(|e| e.record.details)
            .collect()
    }
}

/// A source's first reading of [`UPS`] after start.
pub fn reading(states: &[UpsState]) -> Event {
    level_event(UPS, states)
}

/// One expected execute: `(verb, targets, seconds)`.
pub fn call(verb: &str, targets: &[&str], at: u64) -> (String, Vec<String>, u64) {
    (
        verb.to_string(),
        targets.iter().map(|t| t.to_string()).collect(),
        at,
    )
}
