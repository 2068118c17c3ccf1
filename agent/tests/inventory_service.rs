//! The inventory service against a scriptable fake driver, on a paused tokio
//! clock: latencies, SLAs and discovery intervals are virtual, so the tests
//! assert exact timings and call counts without sleeping for real.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::inventory_service::{
    InventoryService, InventoryServiceError, RefreshError, RefreshSettings,
};
use async_trait::async_trait;
use drivers::breaker::{BreakerState, Breakers};
use drivers::driver::{
    Action, ConnectionReport, Driver, DriverError, DryRunAnswer, ErrorKind, ExecOutcome,
    RefreshMode,
};
use drivers::manifest::ManifestSet;
use inventory::{parse_selector, SelectorMode, Target};
use tokio::time::Instant;

/// What one discovery call does.
#[derive(Clone)]
struct Step {
    latency: Duration,
    result: Result<Vec<Target>, ErrorKind>,
}

impl Step {
    fn ok(latency_ms: u64, targets: Vec<Target>) -> Self {
        Step {
            latency: Duration::from_millis(latency_ms),
            result: Ok(targets),
        }
    }

    fn fail(latency_ms: u64, kind: ErrorKind) -> Self {
        Step {
            latency: Duration::from_millis(latency_ms),
            result: Err(kind),
        }
    }
}

/// A driver whose discovery follows a script (then repeats `default`) and
/// records every call.
struct FakeDriver {
    host: String,
    script: Mutex<VecDeque<Step>>,
    default: Mutex<Step>,
    calls: Mutex<Vec<(RefreshMode, Instant)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl FakeDriver {
    fn new(host: &str, default: Step) -> Arc<Self> {
        Arc::new(FakeDriver {
            host: host.into(),
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(default),
            calls: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        })
    }

    fn then(&self, step: Step) {
        self.script.lock().unwrap().push_back(step);
    }

    fn set_default(&self, step: Step) {
        *self.default.lock().unwrap() = step;
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn calls_of(&self, mode: RefreshMode) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| *m == mode)
            .count()
    }
}

#[async_trait]
impl Driver for FakeDriver {
    fn plugin_id(&self) -> &str {
        "fake.plugin"
    }

    fn host_id(&self) -> &str {
        &self.host
    }

    async fn discover(
        &self,
        mode: RefreshMode,
        _budget: Duration,
    ) -> Result<Vec<Target>, DriverError> {
        self.calls.lock().unwrap().push((mode, Instant::now()));
        let step = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.default.lock().unwrap().clone());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let guard = InFlight(&self.in_flight);
        tokio::time::sleep(step.latency).await;
        drop(guard);
        step.result
            .map_err(|kind| DriverError::new(kind, "scripted failure"))
    }

    async fn dry_run(
        &self,
        _action: &Action,
        _targets: &[String],
    ) -> Result<Vec<DryRunAnswer>, DriverError> {
        Err(DriverError::new(
            ErrorKind::Unknown,
            "the fake driver only discovers",
        ))
    }

    async fn execute(
        &self,
        _action: &Action,
        _targets: &[String],
    ) -> Result<Vec<ExecOutcome>, DriverError> {
        Err(DriverError::new(
            ErrorKind::Unknown,
            "the fake driver only discovers",
        ))
    }

    async fn test_connection(&self) -> Result<ConnectionReport, DriverError> {
        Err(DriverError::new(
            ErrorKind::Unknown,
            "the fake driver only discovers",
        ))
    }
}

/// Decrements the in-flight count even when the call is cancelled.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn vm(id: &str, name: &str, labels: &[(&str, &str)]) -> Target {
    Target {
        target_type: "vm".into(),
        id: id.into(),
        name: Some(name.into()),
        status: Some("running".into()),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        attrs: BTreeMap::new(),
    }
}

fn vms() -> Vec<Target> {
    vec![
        vm("101", "web-01", &[("tier", "low")]),
        vm("103", "web-03", &[("tier", "low")]),
        vm("202", "db-01", &[("tier", "high")]),
    ]
}

/// SLA 5 s, discovery every 60 s (so max age 120 s), no retry delay.
fn settings() -> RefreshSettings {
    RefreshSettings {
        sla: Duration::from_secs(5),
        discovery_interval: Duration::from_secs(60),
        fast_retry_delay: Duration::ZERO,
        ..RefreshSettings::default()
    }
}

fn service(driver: &Arc<FakeDriver>, settings: RefreshSettings) -> InventoryService {
    let service = InventoryService::new();
    service.add_host(driver.clone(), settings);
    service
}

fn ids(service: &InventoryService, host: &str) -> Vec<String> {
    let snapshot = service.snapshot(host).unwrap().unwrap();
    snapshot.iter().map(Target::canonical_id).collect()
}

#[tokio::test(start_paused = true)]
async fn a_fast_refresh_within_the_sla_replaces_the_snapshot() {
    let driver = FakeDriver::new("pve", Step::ok(800, vms()));
    let service = service(&driver, settings());

    let started = Instant::now();
    let outcome = service.fast_refresh("pve").await.unwrap();

    assert!(outcome.refreshed && !outcome.stale, "{outcome:?}");
    assert!(outcome.ts.is_some());
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.attempts, 1);
    assert_eq!(started.elapsed(), Duration::from_millis(800));
    assert_eq!(driver.calls_of(RefreshMode::Fast), 1);
    assert_eq!(ids(&service, "pve"), ["vm:101", "vm:103", "vm:202"]);
    assert!(!service.snapshot("pve").unwrap().unwrap().stale);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_outlasts_the_sla_falls_back_to_the_last_snapshot_marked_stale() {
    let driver = FakeDriver::new("pve", Step::ok(100, vms()));
    let service = service(&driver, settings());
    let first = service.fast_refresh("pve").await.unwrap();
    driver.set_default(Step::ok(30_000, vec![vm("999", "late", &[])]));

    let started = Instant::now();
    let outcome = service.fast_refresh("pve").await.unwrap();

    assert_eq!(
        started.elapsed(),
        Duration::from_secs(5),
        "bounded by the sla"
    );
    assert!(!outcome.refreshed && outcome.stale, "{outcome:?}");
    assert_eq!(outcome.ts, first.ts, "the last snapshot's ts");
    assert_eq!(
        outcome.error,
        Some(RefreshError::Timeout {
            budget: Duration::from_secs(5)
        })
    );
    assert_eq!(ids(&service, "pve"), ["vm:101", "vm:103", "vm:202"]);
    assert!(service.snapshot("pve").unwrap().unwrap().stale);
    assert_eq!(
        driver.in_flight.load(Ordering::SeqCst),
        0,
        "the timed-out call was cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_starts_only_when_it_fits_the_remaining_budget() {
    // Each call fails after 2 s: the second fits the 3 s left, a third would
    // not fit the 1 s left after it.
    let driver = FakeDriver::new("pve", Step::fail(2_000, ErrorKind::ServerError));
    let service = service(
        &driver,
        RefreshSettings {
            fast_retries: 5,
            ..settings()
        },
    );

    let started = Instant::now();
    let outcome = service.fast_refresh("pve").await.unwrap();

    assert_eq!(driver.calls(), 2);
    assert_eq!(outcome.attempts, 2);
    assert_eq!(started.elapsed(), Duration::from_secs(4));
    assert_eq!(outcome.error.unwrap().code(), "driver.server_error");
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_cannot_finish_inside_the_sla_is_never_started() {
    let driver = FakeDriver::new("pve", Step::fail(3_000, ErrorKind::NetworkError));
    let service = service(
        &driver,
        RefreshSettings {
            fast_retries: 5,
            ..settings()
        },
    );

    let started = Instant::now();
    let outcome = service.fast_refresh("pve").await.unwrap();

    assert_eq!(
        driver.calls(),
        1,
        "a second 3 s call would not fit the 2 s left"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert!(!outcome.refreshed && outcome.stale);
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_is_retried_and_the_retry_can_succeed() {
    let driver = FakeDriver::new("pve", Step::ok(500, vms()));
    driver.then(Step::fail(500, ErrorKind::Timeout));
    let service = service(&driver, settings());

    let outcome = service.fast_refresh("pve").await.unwrap();

    assert!(outcome.refreshed, "{outcome:?}");
    assert_eq!(outcome.attempts, 2);
    assert_eq!(driver.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failure_that_is_not_transient_is_not_retried() {
    let driver = FakeDriver::new("pve", Step::fail(100, ErrorKind::AuthError));
    let service = service(&driver, settings());

    let outcome = service.fast_refresh("pve").await.unwrap();

    assert_eq!(driver.calls(), 1);
    assert_eq!(
        outcome.error,
        Some(RefreshError::Driver {
            kind: ErrorKind::AuthError,
            message: "scripted failure".into()
        })
    );
    assert_eq!(outcome.ts, None, "never discovered");
    assert!(outcome.stale);
}

#[tokio::test(start_paused = true)]
async fn concurrent_fast_refreshes_coalesce_into_one_driver_call() {
    let driver = FakeDriver::new("pve", Step::ok(1_000, vms()));
    let service = service(&driver, settings());

    let (a, b, c, d) = tokio::join!(
        service.fast_refresh("pve"),
        service.fast_refresh("pve"),
        service.fast_refresh("pve"),
        service.fast_refresh("pve"),
    );

    assert_eq!(driver.calls(), 1);
    let outcomes = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()];
    assert!(outcomes
        .iter()
        .all(|o| o.refreshed && o.ts == outcomes[0].ts));
    assert_eq!(
        outcomes.iter().map(|o| o.attempts).sum::<u32>(),
        1,
        "one made the call, three joined it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fast_refresh_joins_a_full_discovery_in_flight_instead_of_starting_another() {
    let driver = FakeDriver::new("pve", Step::ok(3_000, vms()));
    let service = service(&driver, settings());
    let background = service.clone();
    let full = tokio::spawn(async move { background.full_refresh("pve").await });
    tokio::time::sleep(Duration::from_millis(10)).await;

    let outcome = service.fast_refresh("pve").await.unwrap();

    assert!(outcome.refreshed, "{outcome:?}");
    assert_eq!(driver.calls_of(RefreshMode::Full), 1);
    assert_eq!(driver.calls_of(RefreshMode::Fast), 0);
    assert_eq!(driver.max_in_flight.load(Ordering::SeqCst), 1);
    assert!(full.await.unwrap().unwrap().refreshed);
}

#[tokio::test(start_paused = true)]
async fn a_fast_refresh_stuck_behind_a_long_full_discovery_gives_up_at_the_sla() {
    let driver = FakeDriver::new("pve", Step::ok(100, vms()));
    let service = service(&driver, settings());
    service.fast_refresh("pve").await.unwrap();
    driver.set_default(Step::ok(20_000, vms()));
    let background = service.clone();
    let full = tokio::spawn(async move { background.full_refresh("pve").await });
    tokio::time::sleep(Duration::from_millis(10)).await;

    let started = Instant::now();
    let outcome = service.fast_refresh("pve").await.unwrap();

    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert!(!outcome.refreshed && outcome.stale);
    assert_eq!(outcome.attempts, 0);
    assert_eq!(
        driver.max_in_flight.load(Ordering::SeqCst),
        1,
        "never two calls at once"
    );
    assert!(
        full.await.unwrap().unwrap().refreshed,
        "the full discovery still lands"
    );
    assert!(!service.snapshot("pve").unwrap().unwrap().stale);
}

#[tokio::test(start_paused = true)]
async fn background_discovery_runs_every_interval_and_stops_on_shutdown() {
    let driver = FakeDriver::new("pve", Step::ok(0, vms()));
    let service = service(&driver, settings());

    service.start_discovery();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(driver.calls_of(RefreshMode::Full), 1, "first run at start");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(driver.calls_of(RefreshMode::Full), 2);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(driver.calls_of(RefreshMode::Full), 3);

    let aborted = service.stop_discovery(Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_secs(600)).await;

    assert_eq!(aborted, 0);
    assert_eq!(
        driver.calls_of(RefreshMode::Full),
        3,
        "no run after shutdown"
    );
    let times: Vec<Instant> = driver
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|(_, at)| *at)
        .collect();
    assert_eq!(times[1] - times[0], Duration::from_secs(60));
    assert_eq!(times[2] - times[1], Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn a_host_added_while_discovery_runs_gets_its_own_schedule() {
    let service = InventoryService::new();
    service.start_discovery();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let driver = FakeDriver::new("sw1", Step::ok(0, vms()));

    service.add_host(driver.clone(), settings());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(driver.calls_of(RefreshMode::Full), 1);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(driver.calls_of(RefreshMode::Full), 2);

    service.remove_host("sw1");
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        driver.calls_of(RefreshMode::Full),
        2,
        "a removed host is no longer discovered"
    );
    service.stop_discovery(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_a_discovery_in_flight_within_the_grace_and_aborts_after_it() {
    let driver = FakeDriver::new("pve", Step::ok(5_000, vms()));
    let service = service(&driver, settings());
    service.start_discovery();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let aborted = service.stop_discovery(Duration::from_secs(10)).await;
    assert_eq!(aborted, 0);
    assert_eq!(ids(&service, "pve").len(), 3, "the run in flight finished");

    driver.set_default(Step::ok(60_000, vms()));
    service.start_discovery();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let aborted = service.stop_discovery(Duration::from_secs(2)).await;
    assert_eq!(aborted, 1);
    assert_eq!(driver.in_flight.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn run_discovery_stops_when_its_shutdown_future_completes() {
    let driver = FakeDriver::new("pve", Step::ok(0, vms()));
    let service = service(&driver, settings());

    service
        .run_discovery(
            tokio::time::sleep(Duration::from_secs(150)),
            Duration::from_secs(1),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(600)).await;

    assert_eq!(
        driver.calls_of(RefreshMode::Full),
        3,
        "runs at 0, 60 and 120 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_goes_stale_after_its_max_age() {
    let driver = FakeDriver::new("pve", Step::ok(0, vms()));
    let service = service(&driver, settings());
    service.fast_refresh("pve").await.unwrap();

    tokio::time::sleep(Duration::from_secs(119)).await;
    assert!(!service.status("pve").unwrap().stale);
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert!(
        service.status("pve").unwrap().stale,
        "older than 2 x the 60 s interval"
    );
    assert!(service.snapshot("pve").unwrap().unwrap().stale);
    assert!(service.inventory().host("pve").unwrap().stale);
    let outcome = service.fast_refresh("pve").await.unwrap();
    assert!(outcome.refreshed && !outcome.stale);
    assert!(!service.snapshot("pve").unwrap().unwrap().stale);
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_marks_a_young_snapshot_stale_until_the_next_success() {
    let driver = FakeDriver::new("pve", Step::ok(0, vms()));
    let service = service(
        &driver,
        RefreshSettings {
            fast_retries: 0,
            ..settings()
        },
    );
    service.fast_refresh("pve").await.unwrap();
    driver.then(Step::fail(10, ErrorKind::NotFound));

    service.fast_refresh("pve").await.unwrap();
    let status = service.status("pve").unwrap();
    assert!(status.stale);
    assert_eq!(status.last_error.unwrap().code(), "driver.not_found");

    service.fast_refresh("pve").await.unwrap();
    let status = service.status("pve").unwrap();
    assert!(!status.stale && status.last_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_skips_the_refresh_and_returns_the_stale_snapshot_with_the_reason() {
    let driver = FakeDriver::new("pve", Step::ok(0, vms()));
    let service = service(
        &driver,
        RefreshSettings {
            fast_retries: 0,
            ..settings()
        },
    );
    service.fast_refresh("pve").await.unwrap();
    driver.set_default(Step::fail(10, ErrorKind::NetworkError));
    for _ in 0..3 {
        service.fast_refresh("pve").await.unwrap();
    }
    assert_eq!(driver.calls(), 4);

    let outcome = service.fast_refresh("pve").await.unwrap();

    assert_eq!(driver.calls(), 4, "no call while the breaker is open");
    assert!(!outcome.refreshed && outcome.stale);
    assert!(outcome.ts.is_some(), "the last snapshot is still served");
    assert_eq!(
        outcome.error.as_ref().unwrap().code(),
        "inventory.breaker_open"
    );
    assert_eq!(service.status("pve").unwrap().breaker, BreakerState::Open);
    assert_eq!(ids(&service, "pve").len(), 3);

    driver.set_default(Step::ok(0, vms()));
    tokio::time::sleep(Duration::from_secs(120)).await;
    let outcome = service.fast_refresh("pve").await.unwrap();
    assert!(
        outcome.refreshed,
        "a trial call after the open period: {outcome:?}"
    );
    assert_eq!(service.status("pve").unwrap().breaker, BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn failures_that_blame_the_request_do_not_trip_the_breaker() {
    let driver = FakeDriver::new("pve", Step::fail(0, ErrorKind::AuthError));
    let service = service(
        &driver,
        RefreshSettings {
            fast_retries: 0,
            ..settings()
        },
    );
    for _ in 0..5 {
        service.fast_refresh("pve").await.unwrap();
    }
    assert_eq!(driver.calls(), 5);
    assert_eq!(service.status("pve").unwrap().breaker, BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn search_matches_id_and_name_prefixes_substrings_and_labels_across_hosts() {
    let pve = FakeDriver::new("pve", Step::ok(0, vms()));
    let other = FakeDriver::new(
        "pve2",
        Step::ok(0, vec![vm("300", "web-09", &[("tier", "low")])]),
    );
    let service = service(&pve, settings());
    service.add_host(other, settings());
    service.fast_refresh("pve").await.unwrap();
    service.fast_refresh("pve2").await.unwrap();

    let found = |text: &str| -> Vec<String> {
        service
            .search(text, 10)
            .into_iter()
            .map(|h| format!("{}/{}", h.host_id, h.target.canonical_id()))
            .collect()
    };

    assert_eq!(found("20"), ["pve/vm:202"], "id prefix");
    assert_eq!(
        found("web"),
        ["pve/vm:101", "pve/vm:103", "pve2/vm:300"],
        "name prefix"
    );
    assert_eq!(
        found("b-0"),
        ["pve/vm:101", "pve/vm:103", "pve/vm:202", "pve2/vm:300"],
        "substring"
    );
    assert_eq!(found("high"), ["pve/vm:202"], "label value");
    assert_eq!(service.search("web", 2).len(), 2, "limit");
    let in_host: Vec<String> = service
        .search_host("pve2", "low", 10)
        .unwrap()
        .iter()
        .map(Target::canonical_id)
        .collect();
    assert_eq!(in_host, ["vm:300"]);
}

#[tokio::test(start_paused = true)]
async fn selectors_resolve_against_the_live_snapshot() {
    let driver = FakeDriver::new("pve", Step::ok(0, vms()));
    let service = service(&driver, settings());
    let range = parse_selector(SelectorMode::Range, "101-103", "vm").unwrap();
    let query = parse_selector(SelectorMode::Query, "labels.tier = low", "vm").unwrap();

    assert!(matches!(
        service.resolve("pve", &range),
        Err(InventoryServiceError::NoSnapshot { .. })
    ));
    service.fast_refresh("pve").await.unwrap();
    let resolution = service.resolve("pve", &range).unwrap();
    assert_eq!(resolution.ids, ["vm:101", "vm:103"]);
    assert_eq!(resolution.missing, 1);
    assert_eq!(
        service.resolve("pve", &query).unwrap().ids,
        ["vm:101", "vm:103"]
    );

    let mut grown = vms();
    grown.push(vm("102", "web-02", &[("tier", "low")]));
    driver.set_default(Step::ok(0, grown));
    service.full_refresh("pve").await.unwrap();

    assert_eq!(
        service.resolve("pve", &range).unwrap().ids,
        ["vm:101", "vm:102", "vm:103"]
    );
    assert_eq!(service.resolve("pve", &query).unwrap().ids.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_fast_refresh_keeps_the_labels_full_discovery_found() {
    let driver = FakeDriver::new("pve", Step::ok(0, vms()));
    let service = service(&driver, settings());
    service.full_refresh("pve").await.unwrap();
    let bare = |id: &str| Target {
        target_type: "vm".into(),
        id: id.into(),
        name: None,
        status: Some("stopped".into()),
        labels: BTreeMap::new(),
        attrs: BTreeMap::new(),
    };
    driver.set_default(Step::ok(0, vec![bare("101"), bare("202")]));

    service.fast_refresh("pve").await.unwrap();

    let query = parse_selector(
        SelectorMode::Query,
        "labels.tier = low and status = stopped",
        "vm",
    )
    .unwrap();
    assert_eq!(service.resolve("pve", &query).unwrap().ids, ["vm:101"]);
    assert_eq!(ids(&service, "pve"), ["vm:101", "vm:202"], "103 is gone");
}

#[tokio::test(start_paused = true)]
async fn an_unknown_host_is_an_error_not_an_empty_inventory() {
    let service = InventoryService::new();
    assert!(matches!(
        service.fast_refresh("nope").await,
        Err(InventoryServiceError::UnknownHost { .. })
    ));
    assert!(service.search("x", 5).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_breaker_tripped_by_the_engine_also_stops_refreshes_of_that_host() {
    let breakers = Arc::new(Breakers::default());
    let driver = FakeDriver::new("pve", Step::ok(0, vms()));
    let service = InventoryService::with_breakers(breakers.clone());
    service.add_host(driver.clone(), settings());
    let engine_side = breakers.for_host("pve");
    for _ in 0..3 {
        engine_side
            .acquire()
            .unwrap()
            .failure(ErrorKind::NetworkError);
    }

    let outcome = service.fast_refresh("pve").await.unwrap();

    assert_eq!(driver.calls(), 0);
    assert_eq!(outcome.error.unwrap().code(), "inventory.breaker_open");
}

#[test]
fn refresh_settings_come_from_the_manifest() {
    let manifests = ManifestSet::embedded();
    let webhook = manifests
        .get("http.webhook")
        .expect("the shipped webhook manifest");

    let settings = RefreshSettings::from_manifest(webhook);

    assert_eq!(settings.sla, webhook.refresh_sla());
    assert_eq!(
        settings.discovery_interval,
        Duration::from_secs(webhook.discovery.interval_s)
    );
    assert_eq!(settings.max_age(), settings.discovery_interval * 2);
}
