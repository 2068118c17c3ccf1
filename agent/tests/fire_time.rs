//! Fresh state at fire time (SPEC §6 steps 5 and 7): the host of a policy
//! that fires is refreshed at that moment, once per event, within the
//! host's refresh SLA, and re-resolution and the guards read that refresh;
//! a refresh that fails or outlasts the SLA falls back to the last
//! snapshot with `warn inventory.stale` and skips nothing as already
//! desired. On a virtual clock; each test asserts the exact driver calls.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::engine::runner::{
    tokio_clock, Engine, EngineConfig, HostRefresh, Policy, RefreshFuture, Snapshots,
    ALREADY_DESIRED, INVENTORY_STALE,
};
use agent::engine::store::MemoryStore;
use agent::inventory_service::{InventoryService, RefreshSettings};
use async_trait::async_trait;
use drivers::breaker::{BreakerConfig, Breakers};
use drivers::driver::{
    Action, ConnectionReport, Driver, DriverError, DryRunAnswer, ErrorKind, ExecOutcome,
    RefreshMode,
};
use drivers::manifest::ManifestSet;
use inventory::{HostInventory, Severity, Target};
use support::{host_state, policy, range, ups, vm, FakeDriver, DEPLOY, ON_BATTERY, ON_MAINS};

/// How a [`Device`] answers a refresh.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    /// The device's current state.
    Live,
    /// The refresh fails (the device cannot be read).
    Fail,
    /// The refresh never finishes.
    Hang,
}

/// The inventory as the engine sees it: a snapshot per host taken at the
/// last discovery (`held`), and a refresh that reads the device (the fake
/// driver's state, every target labelled `tier: low`) and replaces it, as
/// the inventory service's fast refresh does. Counts the refreshes.
struct Device {
    drivers: Vec<Arc<FakeDriver>>,
    held: Mutex<BTreeMap<String, HostInventory>>,
    answer: Mutex<Answer>,
    refreshes: Mutex<Vec<String>>,
}

impl Device {
    /// A discovery of every host now: what the engine will hold.
    fn discovered(drivers: &[&Arc<FakeDriver>]) -> Arc<Device> {
        let drivers: Vec<Arc<FakeDriver>> = drivers.iter().map(|d| Arc::clone(d)).collect();
        let held = drivers
            .iter()
            .map(|d| (d.host.clone(), labelled(d)))
            .collect();
        Arc::new(Device {
            drivers,
            held: Mutex::new(held),
            answer: Mutex::new(Answer::Live),
            refreshes: Mutex::new(Vec::new()),
        })
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// The hosts refreshed so far, in call order.
    fn refreshes(&self) -> Vec<String> {
        self.refreshes.lock().unwrap().clone()
    }
}

/// The fake's state as a discovery reads it, every target `tier: low`.
fn labelled(driver: &FakeDriver) -> HostInventory {
    let snapshot = driver.snapshot();
    let targets = snapshot
        .targets()
        .iter()
        .cloned()
        .map(|mut t| {
            t.labels.insert("tier".into(), "low".into());
            t
        })
        .collect();
    HostInventory::new(&snapshot.host_id, &snapshot.plugin, targets)
}

impl Snapshots for Device {
    fn host(&self, host_id: &str) -> Option<HostInventory> {
        self.held.lock().unwrap().get(host_id).cloned()
    }

    fn refresh<'a>(&'a self, host_id: &'a str, _sla: Duration) -> RefreshFuture<'a> {
        self.refreshes.lock().unwrap().push(host_id.to_string());
        let answer = *self.answer.lock().unwrap();
        Box::pin(async move {
            match answer {
                Answer::Live => {
                    let driver = self.drivers.iter().find(|d| d.host == host_id);
                    let Some(driver) = driver else {
                        return HostRefresh::stale(None, "unknown host");
                    };
                    let fresh = labelled(driver);
                    self.held
                        .lock()
                        .unwrap()
                        .insert(host_id.to_string(), fresh.clone());
                    HostRefresh::fresh(Some(Arc::new(fresh)))
                }
                Answer::Fail => HostRefresh::stale(
                    self.host(host_id).map(Arc::new),
                    "driver.network_error: connection refused",
                ),
                Answer::Hang => std::future::pending().await,
            }
        })
    }
}

fn engine(device: &Arc<Device>, manifests: Option<ManifestSet>, policies: Vec<Policy>) -> Engine {
    let mut config = EngineConfig {
        clock: tokio_clock(),
        ..EngineConfig::default()
    };
    if let Some(manifests) = manifests {
        config.manifests = Arc::new(manifests);
    }
    engine_with(device, config, policies)
}

fn engine_with(device: &Arc<Device>, config: EngineConfig, policies: Vec<Policy>) -> Engine {
    let mut engine = Engine::new(
        Arc::new(MemoryStore::default()),
        device.clone(),
        Arc::new(Breakers::new(BreakerConfig::default())),
        config,
    );
    for driver in &device.drivers {
        engine.add_driver(driver.clone() as Arc<dyn Driver>);
    }
    for policy in policies {
        engine.add_policy(policy).unwrap();
    }
    engine
}

fn pve(host: &str, targets: &[(&str, &str)]) -> Arc<FakeDriver> {
    let targets: Vec<(&str, Option<&str>)> = targets.iter().map(|(t, s)| (*t, Some(*s))).collect();
    FakeDriver::new(host, "proxmox.ve", &targets)
}

fn executes(driver: &FakeDriver) -> Vec<(String, Vec<String>)> {
    driver.executes()
}

fn shutdown(targets: &[&str]) -> Vec<(String, Vec<String>)> {
    vec![(
        "shutdown".to_string(),
        targets.iter().map(|t| t.to_string()).collect(),
    )]
}

const LOW_AND_RUNNING: &str = "{ mode: query, value: \"labels.tier = low and status = running\" }";

#[tokio::test(start_paused = true)]
async fn a_vm_started_outside_hazel_since_the_last_discovery_is_shut_down_by_a_query_selector() {
    let host = pve("pve-01", &[("vm:101", "running"), ("vm:102", "stopped")]);
    let device = Device::discovered(&[&host]);
    // Since the last discovery, someone started vm:102 and created vm:105.
    host.set_status("vm:102", "running");
    host.set_status("vm:105", "running");
    let p = policy(
        1,
        ON_BATTERY,
        "pve-01",
        "vm",
        LOW_AND_RUNNING,
        &vm("shutdown"),
    );
    let mut engine = engine(&device, None, vec![p]);

    let report = engine.handle_event(&ups("on_battery")).await.unwrap();
    engine.settle().await.unwrap();

    assert_eq!(report.decisions[0].code, "engine.scheduled");
    assert_eq!(report.decisions[0].severity, Severity::Info);
    assert_eq!(executes(&host), shutdown(&["vm:101", "vm:102", "vm:105"]));
    assert_eq!(device.refreshes(), ["pve-01"]);
}

#[tokio::test(start_paused = true)]
async fn a_vm_started_outside_hazel_is_shut_down_by_a_policy_naming_it_by_id() {
    let host = pve("pve-01", &[("vm:103", "stopped")]);
    let device = Device::discovered(&[&host]);
    host.set_status("vm:103", "running");
    let p = policy(
        1,
        ON_BATTERY,
        "pve-01",
        "vm",
        &range("103"),
        &vm("shutdown"),
    );
    let mut engine = engine(&device, None, vec![p]);

    let report = engine.handle_event(&ups("on_battery")).await.unwrap();
    engine.settle().await.unwrap();

    let decision = &report.decisions[0];
    assert_eq!(decision.code, "engine.scheduled");
    assert!(
        decision.skipped.is_empty(),
        "nothing skipped as {ALREADY_DESIRED}: {:?}",
        decision.skipped
    );
    assert_eq!(executes(&host), shutdown(&["vm:103"]));
    assert_eq!(host.status("vm:103").as_deref(), Some("stopped"));
}

#[tokio::test(start_paused = true)]
async fn a_retry_reads_the_host_refreshed_when_it_is_due_not_the_snapshot_held_since() {
    let host = pve("pve-01", &[("vm:103", "running")]);
    let device = Device::discovered(&[&host]);
    let p = policy(
        1,
        ON_BATTERY,
        "pve-01",
        "vm",
        &range("103"),
        &vm("shutdown"),
    );
    let mut engine = engine(&device, None, vec![p]);
    engine
        .handle_event(&host_state("pve-01", false))
        .await
        .unwrap();
    engine.handle_event(&ups("on_battery")).await.unwrap(); // retry at 5 s
    engine.settle().await.unwrap();
    assert!(executes(&host).is_empty());
    // A discovery meanwhile saw vm:103 stopped; the operator started it
    // again since. The engine holds the older state.
    host.set_status("vm:103", "stopped");
    device
        .held
        .lock()
        .unwrap()
        .insert("pve-01".into(), labelled(&host));
    host.set_status("vm:103", "running");
    engine
        .handle_event(&host_state("pve-01", true))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(5)).await;
    let now = engine.next_deadline().expect("the retry");
    engine.fire_due(now).await.unwrap();
    engine.settle().await.unwrap();

    assert_eq!(executes(&host), shutdown(&["vm:103"]));
    assert_eq!(host.status("vm:103").as_deref(), Some("stopped"));
    assert_eq!(device.refreshes(), ["pve-01", "pve-01"]);
}

#[tokio::test(start_paused = true)]
async fn a_vm_stopped_outside_hazel_is_skipped_as_already_desired_on_the_refreshed_state() {
    // The other way round: the held snapshot says running, the device says
    // stopped; the guard reads the refresh and calls no driver.
    let host = pve("pve-01", &[("vm:103", "running")]);
    let device = Device::discovered(&[&host]);
    host.set_status("vm:103", "stopped");
    let p = policy(
        1,
        ON_BATTERY,
        "pve-01",
        "vm",
        &range("103"),
        &vm("shutdown"),
    );
    let mut engine = engine(&device, None, vec![p]);

    let report = engine.handle_event(&ups("on_battery")).await.unwrap();
    engine.settle().await.unwrap();

    assert_eq!(report.decisions[0].code, ALREADY_DESIRED);
    assert!(executes(&host).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_falls_back_to_the_last_snapshot_with_inventory_stale_and_skips_nothing_as_already_desired(
) {
    let host = pve("pve-01", &[("vm:103", "stopped")]);
    let device = Device::discovered(&[&host]);
    host.set_status("vm:103", "running");
    device.answer(Answer::Fail);
    let p = policy(
        1,
        ON_BATTERY,
        "pve-01",
        "vm",
        &range("103"),
        &vm("shutdown"),
    );
    let mut engine = engine(&device, None, vec![p]);

    let report = engine.handle_event(&ups("on_battery")).await.unwrap();
    let runs = engine.settle().await.unwrap();

    let decision = &report.decisions[0];
    assert_eq!(decision.code, "engine.scheduled");
    assert_eq!(decision.severity, Severity::Warn);
    let why = decision.explain["inventory"].as_str().unwrap();
    assert!(why.starts_with(INVENTORY_STALE), "{why}");
    assert!(why.contains("connection refused"), "{why}");
    assert!(decision.skipped.is_empty(), "{:?}", decision.skipped);
    assert_eq!(executes(&host), shutdown(&["vm:103"]));
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].severity, Severity::Warn);
    assert_eq!(runs[0].explain["inventory"].as_str(), Some(why));
}

/// The shipped manifests with proxmox.ve's refresh SLA set to `seconds`.
fn proxmox_sla(seconds: u64) -> ManifestSet {
    let shipped = include_str!("../../plugin-specs/proxmox.ve.yaml");
    let edited = shipped.replace(
        "dry_run_refresh_sla_s: 5",
        &format!("dry_run_refresh_sla_s: {seconds}"),
    );
    assert_ne!(edited, shipped, "the edit changes the manifest");
    ManifestSet::from_yaml("proxmox.ve.yaml", &edited).expect("the edited manifest loads")
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_outlasts_the_manifests_sla_falls_back_at_the_sla_and_skips_nothing() {
    let host = pve("pve-01", &[("vm:103", "stopped")]);
    let device = Device::discovered(&[&host]);
    host.set_status("vm:103", "running");
    device.answer(Answer::Hang);
    let p = policy(
        1,
        ON_BATTERY,
        "pve-01",
        "vm",
        &range("103"),
        &vm("shutdown"),
    );
    let mut engine = engine(&device, Some(proxmox_sla(2)), vec![p]);
    assert_eq!(engine.refresh_sla("pve-01"), Duration::from_secs(2));

    let start = tokio::time::Instant::now();
    let report = engine.handle_event(&ups("on_battery")).await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(2),
        "the SLA bounds the wait"
    );
    engine.settle().await.unwrap();

    let decision = &report.decisions[0];
    assert_eq!(decision.code, "engine.scheduled");
    assert_eq!(decision.severity, Severity::Warn);
    let why = decision.explain["inventory"].as_str().unwrap();
    assert!(why.contains("outlasted its SLA of 2s"), "{why}");
    assert_eq!(executes(&host), shutdown(&["vm:103"]));
}

#[tokio::test(start_paused = true)]
async fn one_refresh_per_host_per_event_however_many_policies_fire() {
    let a = pve(
        "pve-01",
        &[
            ("vm:101", "running"),
            ("vm:102", "running"),
            ("vm:103", "running"),
        ],
    );
    let b = pve("pve-02", &[("vm:201", "running")]);
    let c = pve("pve-03", &[("vm:301", "running")]);
    let device = Device::discovered(&[&a, &b, &c]);
    let held = "{ type: ups.state, equals: on_battery, for: 30s }";
    let clock = tokio_clock();
    let config = EngineConfig {
        clock: clock.clone(),
        ..EngineConfig::default()
    };
    let mut engine = engine_with(
        &device,
        config,
        vec![
            policy(
                1,
                ON_BATTERY,
                "pve-01",
                "vm",
                &range("101"),
                &vm("shutdown"),
            ),
            policy(
                2,
                ON_BATTERY,
                "pve-01",
                "vm",
                &range("102"),
                &vm("shutdown"),
            ),
            policy(
                3,
                ON_BATTERY,
                "pve-01",
                "vm",
                &range("103"),
                &vm("shutdown"),
            ),
            policy(
                4,
                ON_BATTERY,
                "pve-02",
                "vm",
                &range("201"),
                &vm("shutdown"),
            ),
            // Shortlisted but not fired now: its hold only starts.
            policy(5, held, "pve-03", "vm", &range("301"), &vm("shutdown")),
            // Not shortlisted at all.
            policy(6, ON_MAINS, "pve-03", "vm", &range("301"), &vm("start")),
        ],
    );

    engine.handle_event(&ups("on_battery")).await.unwrap();
    engine.settle().await.unwrap();
    assert_eq!(device.refreshes(), ["pve-01", "pve-02"]);
    assert_eq!(a.executes().len(), 3);
    assert_eq!(b.executes(), shutdown(&["vm:201"]));

    // The hold's end fires policy 5 alone: pve-03 is refreshed then, once.
    tokio::time::advance(Duration::from_secs(30)).await;
    engine.fire_due(clock()).await.unwrap();
    engine.settle().await.unwrap();
    assert_eq!(device.refreshes(), ["pve-01", "pve-02", "pve-03"]);
    assert_eq!(c.executes(), shutdown(&["vm:301"]));

    // An event that fires nothing refreshes nothing.
    engine.handle_event(&ups("on_mains")).await.unwrap();
    engine.settle().await.unwrap();
    // Policy 6 fires on the mains return: only its host.
    assert_eq!(device.refreshes(), ["pve-01", "pve-02", "pve-03", "pve-03"]);
    let report = engine
        .handle_event(&support::webhook("deploy"))
        .await
        .unwrap();
    assert!(report.decisions.is_empty());
    assert_eq!(device.refreshes().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_suppressed_policy_refreshes_nothing() {
    let host = pve("pve-01", &[("vm:101", "running")]);
    let device = Device::discovered(&[&host]);
    let p = policy(
        1,
        ON_BATTERY,
        "pve-01",
        "vm",
        &range("101"),
        &vm("shutdown"),
    );
    let mut engine = engine(&device, None, vec![p]);
    engine.handle_event(&ups("on_battery")).await.unwrap();
    engine.settle().await.unwrap();
    engine.handle_event(&ups("on_mains")).await.unwrap();
    let report = engine.handle_event(&ups("on_battery")).await.unwrap();
    assert_eq!(report.decisions[0].code, "engine.suppressed_window");
    assert_eq!(device.refreshes(), ["pve-01"]);
}

#[tokio::test(start_paused = true)]
async fn the_event_dry_run_decides_on_the_refreshed_inventory() {
    let host = pve("pve-01", &[("vm:101", "running"), ("vm:102", "stopped")]);
    let device = Device::discovered(&[&host]);
    host.set_status("vm:102", "running");
    let p = policy(
        1,
        ON_BATTERY,
        "pve-01",
        "vm",
        LOW_AND_RUNNING,
        &vm("shutdown"),
    );
    let engine = engine(&device, None, vec![p]);

    let transcript = engine.dry_run_event(&ups("on_battery")).await.unwrap();

    let planned = &transcript.decisions[0].planned;
    assert_eq!(planned.len(), 1);
    assert_eq!(planned[0].targets, ["vm:101", "vm:102"]);
    assert_eq!(device.refreshes(), ["pve-01"]);
    assert!(executes(&host).is_empty(), "a dry-run executes nothing");

    // A failed refresh: the dry-run says so too.
    host.set_status("vm:101", "stopped");
    device.answer(Answer::Fail);
    let transcript = engine.dry_run_event(&ups("on_battery")).await.unwrap();
    let decision = &transcript.decisions[0];
    assert_eq!(decision.severity, Severity::Warn);
    assert!(decision.explain["inventory"]
        .as_str()
        .unwrap()
        .starts_with(INVENTORY_STALE));
    assert_eq!(decision.planned[0].targets, ["vm:101", "vm:102"]);
}

/// A fake whose discovery can be made to fail (`network_error`), for the
/// inventory service's fast refresh.
struct Flaky {
    inner: Arc<FakeDriver>,
    failing: AtomicBool,
}

#[async_trait]
impl Driver for Flaky {
    fn plugin_id(&self) -> &str {
        self.inner.plugin_id()
    }

    fn host_id(&self) -> &str {
        self.inner.host_id()
    }

    async fn discover(
        &self,
        mode: RefreshMode,
        budget: Duration,
    ) -> Result<Vec<Target>, DriverError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(DriverError::new(
                ErrorKind::NetworkError,
                "connection refused",
            ));
        }
        self.inner.discover(mode, budget).await
    }

    async fn dry_run(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<DryRunAnswer>, DriverError> {
        self.inner.dry_run(action, targets).await
    }

    async fn execute(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<ExecOutcome>, DriverError> {
        self.inner.execute(action, targets).await
    }

    async fn test_connection(&self) -> Result<ConnectionReport, DriverError> {
        self.inner.test_connection().await
    }
}

#[tokio::test(start_paused = true)]
async fn the_inventory_service_refreshes_at_fire_time_and_falls_back_stale_when_the_device_fails() {
    let host = pve("pve-01", &[("vm:103", "stopped"), ("vm:104", "stopped")]);
    let flaky = Arc::new(Flaky {
        inner: host.clone(),
        failing: AtomicBool::new(false),
    });
    let breakers = Arc::new(Breakers::new(BreakerConfig::default()));
    let service = InventoryService::with_breakers(breakers.clone());
    // No retry: one failed discovery leaves the breaker closed (three trip it).
    let settings = RefreshSettings {
        fast_retries: 0,
        ..RefreshSettings::default()
    };
    service.add_host(flaky.clone(), settings);
    // The last discovery, a minute ago: both VMs stopped.
    service.fast_refresh("pve-01").await.unwrap();
    tokio::time::advance(Duration::from_secs(60)).await;
    host.set_status("vm:103", "running");
    let mut engine = Engine::new(
        Arc::new(MemoryStore::default()),
        Arc::new(service.clone()),
        breakers,
        EngineConfig {
            clock: tokio_clock(),
            ..EngineConfig::default()
        },
    );
    engine.add_driver(flaky.clone());
    engine
        .add_policy(policy(
            1,
            ON_BATTERY,
            "pve-01",
            "vm",
            &range("103"),
            &vm("shutdown"),
        ))
        .unwrap();
    engine
        .add_policy(policy(
            2,
            DEPLOY,
            "pve-01",
            "vm",
            &range("104"),
            &vm("shutdown"),
        ))
        .unwrap();

    let report = engine.handle_event(&ups("on_battery")).await.unwrap();
    engine.settle().await.unwrap();
    assert_eq!(report.decisions[0].code, "engine.scheduled");
    assert_eq!(report.decisions[0].severity, Severity::Info);
    assert_eq!(executes(&host), shutdown(&["vm:103"]));

    // vm:104 is started outside Hazel, then the device stops answering:
    // the last snapshot (vm:104 stopped) is used, stale, and not trusted.
    host.set_status("vm:104", "running");
    flaky.failing.store(true, Ordering::SeqCst);
    let report = engine
        .handle_event(&support::webhook("deploy"))
        .await
        .unwrap();
    engine.settle().await.unwrap();
    let decision = &report.decisions[0];
    assert_eq!(decision.code, "engine.scheduled");
    assert_eq!(decision.severity, Severity::Warn);
    let why = decision.explain["inventory"].as_str().unwrap();
    assert!(why.contains("driver.network_error"), "{why}");
    assert_eq!(
        executes(&host),
        [shutdown(&["vm:103"]), shutdown(&["vm:104"])].concat()
    );
}
