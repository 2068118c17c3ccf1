//! Idempotency keys across hosts (SPEC §5) and the engine's one source of
//! driver knowledge (SPEC §7), on a virtual clock over one SQLite file, in
//! the style of `outage.rs`: each test asserts the exact driver calls made.
//!
//! - The same policy shape on two hosts whose targets have equal ids: both
//!   act, because the key starts with the host id.
//! - An engine given a custom `plugin_dir` manifest: its already-desired
//!   guard and its keys follow that manifest, not the shipped copy.

mod support;

use std::path::Path;
use std::sync::Arc;

use agent::engine::event::Event;
use agent::engine::runner::{
    Clock, Engine, EngineConfig, EventReport, Policy, ALREADY_DESIRED, SUPPRESSED_IDEMPOTENT,
};
use agent::engine::store::EngineStore;
use agent::store::SqliteStore;
use chrono::{DateTime, TimeDelta, Utc};
use drivers::breaker::{BreakerConfig, Breakers};
use drivers::driver::{action_key, Action};
use drivers::manifest::{ManifestSet, EMBEDDED};
use serde_json::Map;
use support::{poe, policy_at, range, ups, vm, FakeDriver, ON_BATTERY};

/// One agent's data dir and wall clock, and the hosts it drives.
struct Site {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    hosts: Vec<Arc<FakeDriver>>,
    clock: Clock,
    t0: tokio::time::Instant,
}

impl Site {
    fn new(hosts: Vec<Arc<FakeDriver>>) -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hazel.db");
        let t0 = tokio::time::Instant::now();
        let base = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        Site {
            _dir: dir,
            path,
            hosts,
            clock: Arc::new(move || base + TimeDelta::from_std(t0.elapsed()).unwrap()),
            t0,
        }
    }

    fn store(&self) -> Arc<dyn EngineStore> {
        Arc::new(SqliteStore::open(&self.path).expect("open the store"))
    }

    /// A start of the agent with `policies`, reading `manifests`.
    async fn start(&self, manifests: ManifestSet, policies: Vec<Policy>) -> Engine {
        let hosts: Vec<&Arc<FakeDriver>> = self.hosts.iter().collect();
        let mut engine = support::engine(
            self.store(),
            &hosts,
            Arc::new(Breakers::new(BreakerConfig::default())),
            EngineConfig {
                clock: self.clock.clone(),
                manifests: Arc::new(manifests),
                ..EngineConfig::default()
            },
        );
        for policy in policies {
            engine.add_policy(policy).unwrap();
        }
        engine.start().await.unwrap();
        engine
    }

    /// `(host, verb, state, targets, seconds since the test began)` of
    /// every execute of every host, in host order.
    fn calls(&self) -> Vec<Call> {
        self.hosts
            .iter()
            .flat_map(|h| h.calls())
            .map(|c| {
                (
                    c.host,
                    c.verb,
                    c.state,
                    c.targets,
                    c.start.duration_since(self.t0).as_secs(),
                )
            })
            .collect()
    }
}

type Call = (String, String, Option<String>, Vec<String>, u64);

fn call(host: &str, verb: &str, state: Option<&str>, targets: &[&str], at: u64) -> Call {
    (
        host.to_string(),
        verb.to_string(),
        state.map(str::to_string),
        targets.iter().map(|t| t.to_string()).collect(),
        at,
    )
}

async fn handle(engine: &mut Engine, event: &Event) -> EventReport {
    let report = engine.handle_event(event).await.unwrap();
    engine.settle().await.unwrap();
    report
}

/// Every skip code of every decision in `report`.
fn skip_codes(report: &EventReport) -> Vec<String> {
    report
        .decisions
        .iter()
        .flat_map(|d| d.skipped.iter().filter_map(|r| r.code.clone()))
        .collect()
}

fn switch(host: &str) -> Arc<FakeDriver> {
    FakeDriver::new(
        host,
        "aruba.aoss",
        &[
            ("poe-port:1/A10", Some("on")),
            ("poe-port:1/A11", Some("on")),
            ("poe-port:1/A12", Some("on")),
        ],
    )
}

fn cluster(host: &str) -> Arc<FakeDriver> {
    FakeDriver::new(host, "proxmox.ve", &[("vm:104", Some("running"))])
}

fn shed(id: u128, host: &str) -> Policy {
    policy_at(
        id,
        10,
        ON_BATTERY,
        host,
        "poe-port",
        &range("1/A10-1/A12"),
        &poe("off"),
    )
}

#[tokio::test(start_paused = true)]
async fn the_same_policy_shape_on_two_switches_with_equal_port_ids_makes_both_act() {
    let site = Site::new(vec![switch("sw-a"), switch("sw-b")]);
    let mut engine = site
        .start(
            ManifestSet::embedded(),
            vec![shed(1, "sw-a"), shed(2, "sw-b")],
        )
        .await;
    let report = handle(&mut engine, &ups("on_battery")).await;

    let ports = ["poe-port:1/A10", "poe-port:1/A11", "poe-port:1/A12"];
    assert_eq!(
        site.calls(),
        [
            call("sw-a", "set", Some("off"), &ports, 0),
            call("sw-b", "set", Some("off"), &ports, 0),
        ]
    );
    assert!(
        !skip_codes(&report).contains(&SUPPRESSED_IDEMPOTENT.to_string()),
        "{report:?}"
    );
    let store = site.store();
    let off = Action {
        capability: "aoss.poe.port".into(),
        verb: "set".into(),
        params: serde_json::json!({"state": "off"})
            .as_object()
            .cloned()
            .unwrap(),
    };
    for host in ["sw-a", "sw-b"] {
        let key = action_key(&ManifestSet::embedded(), host, &off, "poe-port:1/A10");
        assert!(store.key_ran_at(&key).unwrap().is_some(), "{key}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_same_policy_shape_on_two_clusters_with_a_vm_104_each_makes_both_act() {
    let site = Site::new(vec![cluster("pve-01"), cluster("pve-02")]);
    let stop = |id, host| {
        policy_at(
            id,
            10,
            ON_BATTERY,
            host,
            "vm",
            &range("104"),
            &vm("shutdown"),
        )
    };
    let mut engine = site
        .start(
            ManifestSet::embedded(),
            vec![stop(1, "pve-01"), stop(2, "pve-02")],
        )
        .await;
    handle(&mut engine, &ups("on_battery")).await;

    assert_eq!(
        site.calls(),
        [
            call("pve-01", "shutdown", None, &["vm:104"], 0),
            call("pve-02", "shutdown", None, &["vm:104"], 0),
        ]
    );
}

/// The shipped manifests written to a `plugin_dir`, with `proxmox.ve.yaml`
/// changed by `edit`, loaded the way the service loads its `plugin_dir`.
fn plugin_dir(dir: &Path, edit: impl Fn(&str) -> String) -> ManifestSet {
    for (file, text) in EMBEDDED {
        let text = if *file == "proxmox.ve.yaml" {
            let edited = edit(text);
            assert_ne!(&edited, text, "the edit changes the manifest");
            edited
        } else {
            text.to_string()
        };
        std::fs::write(dir.join(file), text).unwrap();
    }
    agent::cli::load_manifests(Some(dir)).expect("the custom plugin_dir loads")
}

#[tokio::test(start_paused = true)]
async fn an_engine_with_a_custom_plugin_dir_guards_and_keys_by_that_manifest() {
    let dir = tempfile::tempdir().unwrap();
    // This site's Proxmox reports a cleanly shut down guest as `halted`, and
    // keys shutdowns by their grace too.
    let custom = plugin_dir(dir.path(), |text| {
        text.replacen(
            "      shutdown: stopped\n      stop: stopped\n      suspend:",
            "      shutdown: [stopped, halted]\n      stop: stopped\n      suspend:",
            1,
        )
        .replacen(
            "idempotency: { key_fields: [verb, target_id] }",
            "idempotency: { key_fields: [verb, target_id, grace_s] }",
            1,
        )
    });
    let pve = FakeDriver::new(
        "pve-01",
        "proxmox.ve",
        &[("vm:101", Some("halted")), ("vm:102", Some("running"))],
    );
    let site = Site::new(vec![pve]);
    let stop = policy_at(
        1,
        10,
        ON_BATTERY,
        "pve-01",
        "vm",
        &range("101-102"),
        &vm("shutdown"),
    );
    let mut engine = site.start(custom.clone(), vec![stop]).await;
    let report = handle(&mut engine, &ups("on_battery")).await;

    // The guard read the custom `results`: vm:101 is already halted.
    assert_eq!(
        site.calls(),
        [call("pve-01", "shutdown", None, &["vm:102"], 0)]
    );
    let skipped = &report.decisions[0].skipped;
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].target, "vm:101");
    assert_eq!(skipped[0].code.as_deref(), Some(ALREADY_DESIRED));

    // The key recorded carries the custom key field.
    let store = site.store();
    assert!(store
        .key_ran_at("pve-01/proxmox.vm:shutdown:vm:102:grace_s=60")
        .unwrap()
        .is_some());
    assert!(store
        .key_ran_at("pve-01/proxmox.vm:shutdown:vm:102")
        .unwrap()
        .is_none());
    let shutdown = Action {
        capability: "proxmox.vm".into(),
        verb: "shutdown".into(),
        params: Map::from_iter([("grace_s".to_string(), serde_json::json!(60))]),
    };
    assert_eq!(
        action_key(&custom, "pve-01", &shutdown, "vm:102"),
        "pve-01/proxmox.vm:shutdown:vm:102:grace_s=60"
    );
}
