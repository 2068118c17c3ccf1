//! What the benches share: 10 000 policies compiled from real spec JSON
//! over 200 trigger keys, the event stream that drives them, and a driver
//! that answers at once (so `decide` and `memory` measure the same policy
//! set); and the service the API and console benches open (`bench_config`,
//! `open_service`).

#![allow(dead_code)] // each bench uses part of this module

use std::collections::BTreeMap;
use std::time::Duration;

use agent::compile::CompileContext;
use agent::engine::conditions::{FactsSnapshot, UpsFacts};
use agent::engine::event::{Event, EventKind, Subject, SubjectKind};
use agent::ir::Ir;
use agent::validate::validate_text;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use drivers::driver::{
    Action, ConnectionReport, Driver, DriverError, DryRunAnswer, ExecOutcome, RefreshMode,
};
use drivers::manifest::shipped;
use inventory::{HostInventory, Severity, Target};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// Enabled policies.
pub const POLICIES: usize = 10_000;
/// Trigger keys: 100 `(ups.state, state, ups)`, 50 metric names, 50 webhook names.
pub const KEYS: usize = 200;
/// UPSes; each has 4 state keys.
pub const UPSES: usize = 25;
pub const UPS_STATES: [&str; 4] = ["on_battery", "on_mains", "low_battery", "overload"];
pub const METRICS: usize = 50;
pub const WEBHOOKS: usize = 50;
/// Hosts the policies act on (10 VMs each).
pub const HOSTS: usize = 10;

pub fn ups_id(u: usize) -> String {
    format!("ups{u}@nas.lan:3493")
}

pub fn host_id(h: usize) -> String {
    format!("pve-{h:02}")
}

pub fn policy_uuid(n: usize) -> Uuid {
    Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0000 | n as u128)
}

/// The spec of policy `n`: key `n % 200` (so 50 policies per key), a
/// condition that holds with the facts of [`facts`], a 2-VM range on one of
/// [`HOSTS`] hosts, windows of 0 s so every match schedules its action.
pub fn spec_json(n: usize) -> String {
    spec_json_with(n, false)
}

/// [`spec_json`], and with `distinct` a second trigger no event of the
/// stream fires (`webhook.custom never-{n}`, `ANY`): no two policies have
/// equal trigger groups, so nothing is shared between them, the worst case
/// for the decision.
pub fn spec_json_with(n: usize, distinct: bool) -> String {
    let key = n % KEYS;
    let (trigger, condition) = if key < UPSES * UPS_STATES.len() {
        let (u, s) = (key / UPS_STATES.len(), UPS_STATES[key % UPS_STATES.len()]);
        (
            json!({ "type": "ups.state", "equals": s, "ups": format!("ups{u}") }),
            json!({ "scope": "ups", "field": "runtime_minutes", "op": ">=", "value": 5 }),
        )
    } else if key < UPSES * UPS_STATES.len() + METRICS {
        let m = key - UPSES * UPS_STATES.len();
        (
            json!({ "type": "metric.threshold", "metric": format!("m{m}"), "op": ">", "value": 60 }),
            json!({ "scope": "ups", "field": "charge_pct", "op": ">=", "value": 40 }),
        )
    } else {
        let w = key - UPSES * UPS_STATES.len() - METRICS;
        (
            json!({ "type": "webhook.custom", "name": format!("hook{w}") }),
            json!({ "scope": "host", "field": "reachable", "op": "=", "value": true }),
        )
    };
    let first = 101 + (n / KEYS) % 9;
    let mut triggers = vec![trigger];
    if distinct {
        triggers.push(json!({ "type": "webhook.custom", "name": format!("never-{n}") }));
    }
    json!({
        "version": 1,
        "name": format!("bench policy {n}"),
        "priority": (n % 7) as i64,
        "trigger_group": { "triggers": triggers },
        "conditions": { "all": [condition] },
        "targets": {
            "host_id": host_id(n % HOSTS),
            "target_type": "vm",
            "selector": { "mode": "range", "value": format!("{first}-{}", first + 1) }
        },
        "actions": [{ "capability_id": "proxmox.vm", "verb": "shutdown" }],
        "suppression_window": "0s",
        "idempotency_window": "0s"
    })
    .to_string()
}

/// Compiles every policy through `validate_text`, as the API would.
pub fn compiled_policies() -> Vec<(Uuid, Ir)> {
    compiled_policies_with(false)
}

/// [`compiled_policies`] from [`spec_json_with`].
pub fn compiled_policies_with(distinct: bool) -> Vec<(Uuid, Ir)> {
    let ctx = CompileContext {
        version_int: 1,
        ..CompileContext::default()
    };
    (0..POLICIES)
        .map(|n| {
            let validated = validate_text(&spec_json_with(n, distinct), shipped(), &ctx);
            let ir = validated.report.ir.unwrap_or_else(|| {
                panic!("policy {n} does not compile: {:?}", validated.report.issues)
            });
            (policy_uuid(n), ir)
        })
        .collect()
}

/// Facts every condition of [`spec_json`] reads: UPS runtime and charge,
/// host reachability.
pub fn facts() -> FactsSnapshot {
    let mut facts = FactsSnapshot::new();
    for u in 0..UPSES {
        facts = facts.with_ups(
            UpsFacts::new(&ups_id(u))
                .with_reading("runtime_minutes", 30.0)
                .with_reading("charge_pct", 90.0),
        );
    }
    for h in 0..HOSTS {
        facts = facts.with_host(&host_id(h), true);
    }
    facts
}

fn event(
    kind: EventKind,
    subject: (SubjectKind, String),
    attrs: Value,
    ts: DateTime<Utc>,
) -> Event {
    let Value::Object(attrs) = attrs else {
        unreachable!("attrs are an object")
    };
    Event {
        kind,
        subject: Subject {
            kind: subject.0,
            id: subject.1,
        },
        attrs,
        ts,
        correlation_id: Uuid::new_v4(),
    }
}

/// Four rounds over every key (500 events), repeating without a break when
/// replayed: each UPS steps through its four states (every event enters a
/// state: 50 policies fire; entering a power source also ends the other
/// one and the conditions, whose tracking policies re-arm),
/// each metric alternates 80 / 20 around its threshold 60 (an edge every
/// other round), each webhook is posted every round.
pub fn event_stream() -> Vec<Event> {
    let t0: DateTime<Utc> = "2026-11-22T11:30:00Z".parse().expect("a valid instant");
    let mut out = Vec::new();
    for round in 0..4 {
        for u in 0..UPSES {
            out.push(event(
                EventKind::UpsState,
                (SubjectKind::Ups, ups_id(u)),
                json!({ "state": UPS_STATES[(round + u) % 4] }),
                t0,
            ));
        }
        for m in 0..METRICS {
            let value = if (round + m) % 2 == 0 { 80.0 } else { 20.0 };
            out.push(event(
                EventKind::MetricThreshold,
                (SubjectKind::Ups, ups_id(m % UPSES)),
                json!({ "metric": format!("m{m}"), "value": value }),
                t0,
            ));
        }
        for w in 0..WEBHOOKS {
            out.push(event(
                EventKind::WebhookCustom,
                (SubjectKind::Integration, "webhook".to_string()),
                json!({ "name": format!("hook{w}"), "body": {} }),
                t0,
            ));
        }
    }
    // Interleave kinds so consecutive events hit different keys.
    let mut mixed = Vec::with_capacity(out.len());
    let (ups, rest): (Vec<_>, Vec<_>) =
        out.into_iter().partition(|e| e.kind == EventKind::UpsState);
    let mut rest = rest.into_iter();
    for e in ups {
        mixed.push(e);
        mixed.extend(rest.by_ref().take(4));
    }
    mixed.extend(rest);
    mixed
}

/// The VMs of one host, all running, with a label or two.
pub fn host_snapshot(h: usize, vms: usize) -> HostInventory {
    let targets = (0..vms)
        .map(|i| Target {
            target_type: "vm".into(),
            id: (101 + i).to_string(),
            name: Some(format!("{}-vm-{}", host_id(h), 101 + i)),
            status: Some(if i % 3 == 0 { "stopped" } else { "running" }.into()),
            labels: BTreeMap::from([
                (
                    "tier".to_string(),
                    ["low", "mid", "high"][i % 3].to_string(),
                ),
                ("app".to_string(), format!("app{}", i % 40)),
            ]),
            attrs: BTreeMap::new(),
        })
        .collect();
    HostInventory::new(host_id(h), "proxmox.ve", targets)
}

/// A Proxmox host whose every call succeeds at once. It keeps no
/// targets of its own (discovery finds none), so it adds nothing to the
/// memory figure.
pub struct InstantDriver {
    pub host: String,
}

impl InstantDriver {
    pub fn new(h: usize) -> InstantDriver {
        InstantDriver { host: host_id(h) }
    }
}

#[async_trait]
impl Driver for InstantDriver {
    fn plugin_id(&self) -> &str {
        "proxmox.ve"
    }

    fn host_id(&self) -> &str {
        &self.host
    }

    async fn discover(
        &self,
        _mode: RefreshMode,
        _budget: Duration,
    ) -> Result<Vec<Target>, DriverError> {
        Ok(Vec::new())
    }

    async fn dry_run(
        &self,
        _action: &Action,
        _targets: &[String],
    ) -> Result<Vec<DryRunAnswer>, DriverError> {
        Ok(Vec::new())
    }

    async fn execute(
        &self,
        _action: &Action,
        targets: &[String],
    ) -> Result<Vec<ExecOutcome>, DriverError> {
        Ok(targets
            .iter()
            .map(|t| ExecOutcome {
                target: t.clone(),
                ok: true,
                severity: Severity::Info,
                code: "driver.ok".into(),
                reason: None,
                evidence: Map::new(),
                duration_ms: 0,
                result_state: Some("stopped".into()),
            })
            .collect())
    }

    async fn test_connection(&self) -> Result<ConnectionReport, DriverError> {
        Ok(ConnectionReport {
            ok: true,
            details: Map::new(),
            duration_ms: 0,
        })
    }
}

/// The `proxmox.ve` host `pve-01` the service benches declare: never
/// dialled (discovery is off; its inventory is seeded).
pub fn bench_config(data_dir: &std::path::Path) -> agent::service::Config {
    let host: drivers::registry::HostConfig = serde_json::from_value(json!({
        "id": "pve-01",
        "plugin": "proxmox.ve",
        "connection": {
            "host": "127.0.0.1", "port": 9, "node": "pve-01", "scheme": "http",
            "token_id": "bench@pve!bench", "token_secret": "00000000-0000-0000-0000-000000000000"
        }
    }))
    .expect("host");
    agent::service::Config {
        data_dir: data_dir.to_path_buf(),
        hosts: vec![host],
        ..agent::service::Config::default()
    }
}

/// Opens the service of `config` without discovery and seeds `pve-01`'s
/// inventory with `vms`.
pub async fn open_service(
    config: agent::service::Config,
    vms: Vec<Target>,
) -> agent::service::Service {
    let service = agent::service::Service::open(
        config,
        agent::service::OpenOptions {
            discovery: false,
            ..agent::service::OpenOptions::default()
        },
    )
    .await
    .expect("service opens");
    service
        .inventory()
        .seed(HostInventory::new("pve-01", "proxmox.ve", vms))
        .expect("seed");
    service
}
