//! `host.reachable` end to end (SPEC §1 `host.state`, §2 conditions): the
//! inventory service refreshes a host through a driver that can be cut
//! off, publishes what it learns of the host's reachability on a bus, and
//! the engine takes those events as the service's engine loop does before
//! deciding a policy whose condition is `host.reachable = true`. Virtual
//! clock; the fake driver records every execute. The last test runs the
//! whole service (`hazel serve`'s wiring) against the Proxmox simulator on
//! loopback, in real time: the engine runs on its own thread.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::engine::bus::{self, Consumer};
use agent::engine::event::EventKind;
use agent::engine::runner::{tokio_clock, Engine, EngineConfig, PolicyDecision, NOT_MATCHED};
use agent::engine::store::{AuditQuery, EngineStore, MemoryStore};
use agent::inventory_service::{InventoryService, RefreshSettings};
use agent::service::{Actor, Config, OpenOptions, Role, Service};
use async_trait::async_trait;
use drivers::breaker::{BreakerConfig, Breakers};
use drivers::driver::{
    Action, ConnectionReport, Driver, DriverError, DryRunAnswer, ErrorKind, ExecOutcome,
    RefreshMode,
};
use drivers::proxmox::sim::{ProxmoxSim, SimConfig};
use drivers::registry::HostConfig;
use inventory::Target;
use serde_json::json;
use std::num::NonZeroUsize;
use support::{ir, webhook, FakeDriver};
use uuid::Uuid;

const POLICY: u128 = 1;

/// Shut down vm 101 on the `deploy` webhook, only if pve-01 is reachable.
const NEEDS_REACHABLE: &str = "version: 1
name: deploy needs the host
trigger_group:
  triggers:
    - { type: webhook.custom, name: deploy }
conditions:
  all:
    - { scope: host, field: reachable, op: \"=\", value: true }
targets:
  host_id: pve-01
  target_type: vm
  selector: { mode: range, value: \"101\" }
actions:
  - { capability_id: proxmox.vm, verb: shutdown }
suppression_window: 1s
";

/// What the inventory service calls for pve-01: the fake's targets, or
/// the scripted failure while the link is cut.
struct Link {
    fake: Arc<FakeDriver>,
    cut: Mutex<Option<ErrorKind>>,
}

#[async_trait]
impl Driver for Link {
    fn plugin_id(&self) -> &str {
        self.fake.plugin_id()
    }

    fn host_id(&self) -> &str {
        self.fake.host_id()
    }

    async fn discover(
        &self,
        mode: RefreshMode,
        budget: Duration,
    ) -> Result<Vec<Target>, DriverError> {
        let cut = *self.cut.lock().unwrap();
        match cut {
            Some(kind) => Err(DriverError::new(kind, "scripted: the link is cut")),
            None => self.fake.discover(mode, budget).await,
        }
    }

    async fn dry_run(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<DryRunAnswer>, DriverError> {
        self.fake.dry_run(action, targets).await
    }

    async fn execute(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<ExecOutcome>, DriverError> {
        self.fake.execute(action, targets).await
    }

    async fn test_connection(&self) -> Result<ConnectionReport, DriverError> {
        self.fake.test_connection().await
    }
}

/// The engine, the inventory service and the bus between them, sharing
/// one set of breakers as `hazel serve` does.
struct Rig {
    engine: Engine,
    inventory: InventoryService,
    bus: Consumer,
    pve: Arc<FakeDriver>,
    link: Arc<Link>,
    breakers: Arc<Breakers>,
    store: Arc<MemoryStore>,
}

impl Rig {
    fn new() -> Rig {
        let pve = FakeDriver::new(
            "pve-01",
            "proxmox.ve",
            &[("vm:101", Some("running")), ("vm:102", Some("running"))],
        );
        let link = Arc::new(Link {
            fake: pve.clone(),
            cut: Mutex::new(None),
        });
        let breakers = Arc::new(Breakers::new(BreakerConfig::default()));
        let inventory = InventoryService::with_breakers(breakers.clone());
        inventory.add_host(
            link.clone(),
            RefreshSettings {
                fast_retries: 0,
                ..RefreshSettings::default()
            },
        );
        let (publisher, bus) = bus::channel(NonZeroUsize::new(64).unwrap(), "inventory");
        inventory.publish_host_states(publisher);
        let store = Arc::new(MemoryStore::default());
        let mut engine = support::engine(
            store.clone(),
            &[&pve],
            breakers.clone(),
            EngineConfig {
                clock: tokio_clock(),
                ..EngineConfig::default()
            },
        );
        engine
            .add_policy(agent::engine::runner::Policy {
                id: Uuid::from_u128(POLICY),
                ir: ir(NEEDS_REACHABLE),
            })
            .unwrap();
        Rig {
            engine,
            inventory,
            bus,
            pve,
            link,
            breakers,
            store,
        }
    }

    /// Cuts the link to pve-01 (`Some(kind)`: discoveries fail so) or mends it.
    fn cut(&self, kind: Option<ErrorKind>) {
        *self.link.cut.lock().unwrap() = kind;
    }

    async fn refresh(&self) {
        self.inventory.fast_refresh("pve-01").await.unwrap();
    }

    /// Hands the engine every `host.state` event published so far, as the
    /// service's engine loop does; returns their `reachable` values.
    async fn deliver(&mut self) -> Vec<bool> {
        let mut seen = Vec::new();
        // Lets the forwarding task move what is pending onto the bus.
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(1), self.bus.recv()).await
        {
            assert_eq!(event.kind, EventKind::HostState);
            assert_eq!(event.subject.id, "pve-01");
            seen.push(event.attrs["reachable"].as_bool().unwrap());
            self.engine.handle_event(&event).await.unwrap();
        }
        seen
    }

    /// The `deploy` webhook; the policy's decision once its runs are done.
    async fn deploy(&mut self) -> PolicyDecision {
        let report = self.engine.handle_event(&webhook("deploy")).await.unwrap();
        self.engine.settle().await.unwrap();
        // Past the suppression window, so the next deploy is decided afresh.
        tokio::time::advance(Duration::from_secs(2)).await;
        report.decisions.into_iter().next().unwrap()
    }

    fn shutdowns(&self) -> usize {
        self.pve.executes().len()
    }

    /// The conditions' explanation of every `engine.evaluated` record.
    fn evaluated(&self) -> Vec<String> {
        self.store
            .audit(&AuditQuery {
                kind: Some("engine.evaluated".into()),
                ..AuditQuery::default()
            })
            .unwrap()
            .into_iter()
            .map(|e| e.record.details["explain"]["conditions"].to_string())
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn a_policy_needing_the_host_reachable_acts_after_the_first_successful_refresh() {
    let mut rig = Rig::new();
    let before = rig.deploy().await;
    assert_eq!(before.code, NOT_MATCHED);
    assert_eq!(rig.shutdowns(), 0);

    rig.refresh().await;
    assert_eq!(rig.deliver().await, [true]);
    let after = rig.deploy().await;

    assert_eq!(after.code, "engine.scheduled", "{:?}", after.explain);
    assert_eq!(
        rig.pve.executes(),
        [("shutdown".to_string(), vec!["vm:101".to_string()])]
    );
    let evaluated = rig.evaluated();
    assert_eq!(evaluated.len(), 1, "{evaluated:?}");
    assert!(
        evaluated[0].contains("no reachability known for host pve-01"),
        "{evaluated:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_policy_needing_the_host_reachable_waits_while_refreshes_fail_and_says_why() {
    let mut rig = Rig::new();
    rig.refresh().await;
    rig.cut(Some(ErrorKind::NetworkError));
    rig.refresh().await;
    assert_eq!(rig.deliver().await, [true, false]);

    let cut_off = rig.deploy().await;
    assert_eq!(cut_off.code, NOT_MATCHED);
    assert_eq!(rig.shutdowns(), 0);
    let evaluated = rig.evaluated();
    assert!(
        evaluated
            .last()
            .is_some_and(|e| e.contains("host.reachable = true is false: pve-01 is unreachable")),
        "{evaluated:?}"
    );

    rig.cut(None);
    rig.refresh().await;
    assert_eq!(rig.deliver().await, [true]);
    assert_eq!(rig.deploy().await.code, "engine.scheduled");
    assert_eq!(rig.shutdowns(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_tripped_breaker_makes_the_host_unreachable_until_its_trial_call_succeeds() {
    let mut rig = Rig::new();
    rig.refresh().await;
    assert_eq!(rig.deliver().await, [true]);
    // Three failed driver calls of the engine trip the shared breaker.
    let breaker = rig.breakers.for_host("pve-01");
    for _ in 0..3 {
        breaker.acquire().unwrap().failure(ErrorKind::Timeout);
    }
    assert_eq!(rig.deliver().await, [false]);
    assert_eq!(rig.deploy().await.code, NOT_MATCHED);
    // A refresh the open breaker refuses changes nothing more.
    rig.refresh().await;
    assert_eq!(rig.deliver().await, Vec::<bool>::new());

    tokio::time::advance(Duration::from_secs(120)).await;
    rig.refresh().await; // the half-open trial call, answered
    assert_eq!(rig.deliver().await, [true]);
    assert_eq!(rig.deploy().await.code, "engine.scheduled");
    assert_eq!(rig.shutdowns(), 1);
}

/// Waits (at most 5 s) until the service's engine has taken a `host.state`
/// saying pve-01 is `reachable`: the gauge is set as the engine loop takes
/// the event, before any later command.
async fn engine_knows(service: &Service, reachable: bool) {
    let line = format!(
        "hazel_host_reachable{{host=\"pve-01\"}} {}",
        u8::from(reachable)
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !service.metrics().render().contains(&line) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the engine never heard that pve-01 is reachable={reachable}:\n{}",
            service.metrics().render()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_service_publishes_host_state_so_the_spec_example_condition_passes_after_a_dry_run() {
    let sim = ProxmoxSim::start(SimConfig::demo())
        .await
        .expect("the Proxmox simulator binds a loopback port");
    let data = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: data.path().to_path_buf(),
        hosts: vec![HostConfig {
            id: "pve-01".into(),
            plugin: "proxmox.ve".into(),
            self_host: false,
            connection: sim.connection(),
        }],
        shutdown_grace: Duration::from_secs(2),
        ..Config::default()
    };
    // The host is declared, not stored: no at-rest key is needed.
    config.secrets.key_env = "HAZEL_HOST_STATE_TEST_UNUSED_KEY".into();
    let service = Service::open(
        config,
        OpenOptions {
            discovery: false,
            ..OpenOptions::default()
        },
    )
    .await
    .expect("the service opens");
    let admin = Actor {
        subject: "test".into(),
        role: Role::Admin,
        correlation_id: None,
    };
    let policy = NEEDS_REACHABLE.replace("value: \"101\"", "value: \"104\"");
    let created = service.create_policy(&admin, &policy).await.unwrap();
    // Enabling runs the preflight dry-run, which refreshes pve-01.
    let enabled = service
        .enable_policy(&admin, created.id, None)
        .await
        .unwrap();
    assert_eq!(enabled.status, "enabled", "{enabled:?}");
    engine_knows(&service, true).await;
    let deploy = json!({
        "type": "webhook",
        "kind": "webhook.custom",
        "subject": {"kind": "integration", "id": "deploy"},
        "attrs": {"name": "deploy"},
    });

    let answer = service.inject_event(&admin, &deploy, false).await.unwrap();
    assert_eq!(
        answer.decisions[0]["code"], "engine.scheduled",
        "{answer:?}"
    );

    sim.shutdown().await;
    // The refused connection (or the breaker it tripped, if the run's own
    // calls failed first) makes pve-01 unreachable.
    let outcome = service.inventory().fast_refresh("pve-01").await.unwrap();
    assert!(
        outcome.error.as_ref().is_some_and(|e| e.blames_host()),
        "{outcome:?}"
    );
    engine_knows(&service, false).await;
    // Conditions are read before the suppression window: no wait needed.
    let answer = service.inject_event(&admin, &deploy, false).await.unwrap();
    assert_eq!(answer.decisions[0]["code"], NOT_MATCHED, "{answer:?}");
    let explain = answer.decisions[0]["explain"]["conditions"].to_string();
    assert!(explain.contains("pve-01 is unreachable"), "{explain}");
    service.shutdown().await;
}
