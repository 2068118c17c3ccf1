//! The inventory service against a scriptable fake driver, on a paused tokio
//! clock: latencies, SLAs and discovery intervals are virtual, so the tests
//! assert exact timings and call counts without sleeping for real. One test
//! runs the real Proxmox driver against its simulator on loopback (real
//! time: a paused clock would fire the HTTP client's timeouts).

use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::engine::bus::{self, Consumer};
use agent::engine::event::{EventKind, SubjectKind};
use agent::inventory_service::{
    InventoryService, InventoryServiceError, RefreshError, RefreshSettings, MAX_FULL_TIMEOUT,
};
use async_trait::async_trait;
use drivers::breaker::{BreakerState, Breakers};
use drivers::driver::{
    Action, ConnectionReport, Driver, DriverError, DryRunAnswer, ErrorKind, ExecOutcome,
    RefreshMode,
};
use drivers::manifest::ManifestSet;
use drivers::proxmox::sim::{ProxmoxSim, SimConfig};
use drivers::proxmox::ProxmoxDriver;
use inventory::{parse_selector, SelectorMode, Target};
use tokio::time::Instant;

/// What one discovery call does.
#[derive(Clone)]
struct Step {
    latency: Duration,
    result: Result<Vec<Target>, ErrorKind>,
    /// A partial-discovery note the driver reports with its answer.
    note: Option<&'static str>,
}

impl Step {
    fn ok(latency_ms: u64, targets: Vec<Target>) -> Self {
        Step {
            latency: Duration::from_millis(latency_ms),
            result: Ok(targets),
            note: None,
        }
    }

    /// The same answer, reported as partial with `note`.
    fn noting(self, note: &'static str) -> Self {
        Step {
            note: Some(note),
            ..self
        }
    }

    fn fail(latency_ms: u64, kind: ErrorKind) -> Self {
        Step {
            latency: Duration::from_millis(latency_ms),
            result: Err(kind),
            note: None,
        }
    }
}

/// A driver whose discovery follows a script (then repeats `default`) and
/// records every call; full discoveries follow `full` instead when it is set.
struct FakeDriver {
    host: String,
    script: Mutex<VecDeque<Step>>,
    default: Mutex<Step>,
    full: Mutex<Option<Step>>,
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
            full: Mutex::new(None),
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

    /// What every full discovery does from now on (fast ones keep the script).
    fn set_full(&self, step: Step) {
        *self.full.lock().unwrap() = Some(step);
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
        let full = self.full.lock().unwrap().clone();
        let step = match (mode, full) {
            (RefreshMode::Full, Some(step)) => step,
            _ => self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| self.default.lock().unwrap().clone()),
        };
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let guard = InFlight(&self.in_flight);
        tokio::time::sleep(step.latency).await;
        drop(guard);
        if let Some(note) = step.note {
            drivers::notes::report_partial(note);
        }
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
async fn a_partial_discovery_shows_its_note_until_a_complete_one_replaces_it() {
    let driver = FakeDriver::new("pve", Step::ok(10, vms()).noting("no interface table"));
    let service = service(&driver, settings());
    let outcome = service.fast_refresh("pve").await.unwrap();
    assert!(
        outcome.refreshed && !outcome.stale,
        "a partial refresh is a success"
    );
    assert_eq!(
        service.status("pve").unwrap().partial,
        ["no interface table"]
    );
    // A failed refresh keeps the snapshot and what it lacked.
    driver.then(Step::fail(10, ErrorKind::AuthError));
    let failed = service.fast_refresh("pve").await.unwrap();
    assert!(failed.stale && failed.error.is_some(), "{failed:?}");
    assert_eq!(
        service.status("pve").unwrap().partial,
        ["no interface table"]
    );
    driver.set_default(Step::ok(10, vms()));
    service.fast_refresh("pve").await.unwrap();
    // The complete discoveries, fast then full, clear it; a full one that
    // is partial says so too.
    assert!(service.status("pve").unwrap().partial.is_empty());
    driver.set_full(Step::ok(10, vms()).noting("no LLDP table"));
    service.full_refresh("pve").await.unwrap();
    assert_eq!(service.status("pve").unwrap().partial, ["no LLDP table"]);
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
async fn a_fast_refresh_runs_while_a_full_discovery_is_in_flight() {
    let driver = FakeDriver::new("pve", Step::ok(500, vms()));
    driver.set_full(Step::ok(3_000, vms()));
    let service = service(&driver, settings());
    let background = service.clone();
    let full = tokio::spawn(async move { background.full_refresh("pve").await });
    tokio::time::sleep(Duration::from_millis(10)).await;

    let started = Instant::now();
    let outcome = service.fast_refresh("pve").await.unwrap();

    assert!(outcome.refreshed, "{outcome:?}");
    assert_eq!(outcome.attempts, 1, "its own call, not the full one's");
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(500),
        "no wait behind the full"
    );
    assert_eq!(driver.calls_of(RefreshMode::Full), 1);
    assert_eq!(driver.calls_of(RefreshMode::Fast), 1);
    assert_eq!(driver.max_in_flight.load(Ordering::SeqCst), 2);
    full.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_hung_full_discovery_never_delays_fast_refreshes() {
    // Discovery every 10 min: the full timeout is capped at a minute.
    let slow = RefreshSettings {
        discovery_interval: Duration::from_secs(600),
        ..settings()
    };
    let driver = FakeDriver::new("pve", Step::ok(100, vms()));
    driver.set_full(Step::ok(3_600_000, vec![vm("999", "never", &[])]));
    let service = service(&driver, slow);
    let background = service.clone();
    let full = tokio::spawn(async move { background.full_refresh("pve").await });
    tokio::time::sleep(Duration::from_millis(10)).await;

    for _ in 0..5 {
        let started = Instant::now();
        let outcome = service.fast_refresh("pve").await.unwrap();
        assert!(outcome.refreshed && !outcome.stale, "{outcome:?}");
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let full = full.await.unwrap().unwrap();

    assert_eq!(driver.calls_of(RefreshMode::Fast), 5);
    assert_eq!(
        full.error,
        Some(RefreshError::Timeout {
            budget: MAX_FULL_TIMEOUT
        })
    );
    assert_eq!(ids(&service, "pve"), ["vm:101", "vm:103", "vm:202"]);
    assert!(
        !service.status("pve").unwrap().stale,
        "the full discovery started before the last fast refresh: its timeout is old news"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_discovery_that_started_earlier_never_overwrites_a_later_fast_refresh() {
    // The full discovery read the VMs before 101 was retagged; the fast
    // refresh read them after. The fast one's view stays.
    let driver = FakeDriver::new(
        "pve",
        Step::ok(100, vec![vm("101", "web-01", &[("tier", "high")])]),
    );
    driver.set_full(Step::ok(3_000, vms()));
    let service = service(&driver, settings());
    let background = service.clone();
    let full = tokio::spawn(async move { background.full_refresh("pve").await });
    tokio::time::sleep(Duration::from_millis(10)).await;

    let fast = service.fast_refresh("pve").await.unwrap();
    let full = full.await.unwrap().unwrap();

    assert_eq!(ids(&service, "pve"), ["vm:101"]);
    assert_eq!(full.ts, fast.ts, "the full result was dropped");
    assert!(full.refreshed, "a later view than it asked for is in place");
    let low = parse_selector(SelectorMode::Query, "labels.tier = low", "vm").unwrap();
    assert!(service.resolve("pve", &low).unwrap().ids.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_fast_refresh_that_started_earlier_never_overwrites_a_later_full_discovery() {
    let driver = FakeDriver::new("pve", Step::ok(2_000, vec![vm("999", "old", &[])]));
    driver.set_full(Step::ok(100, vms()));
    let service = service(&driver, settings());
    let foreground = service.clone();
    let fast = tokio::spawn(async move { foreground.fast_refresh("pve").await });
    tokio::time::sleep(Duration::from_millis(10)).await;

    let full = service.full_refresh("pve").await.unwrap();
    let fast = fast.await.unwrap().unwrap();

    assert!(full.refreshed);
    assert_eq!(ids(&service, "pve"), ["vm:101", "vm:103", "vm:202"]);
    assert!(
        fast.refreshed && !fast.stale,
        "a view newer than the request is in place: {fast:?}"
    );
    assert_eq!(fast.ts, full.ts);
}

#[tokio::test(start_paused = true)]
async fn a_fast_refresh_is_not_delayed_by_a_hung_background_discovery() {
    let driver = FakeDriver::new("pve", Step::ok(200, vms()));
    driver.set_full(Step::ok(3_600_000, vms()));
    let service = service(&driver, settings());
    service.start_discovery();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(driver.calls_of(RefreshMode::Full), 1, "the full run hangs");

    let started = Instant::now();
    let outcome = service.fast_refresh("pve").await.unwrap();

    assert!(outcome.refreshed, "{outcome:?}");
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    service.stop_discovery(Duration::ZERO).await;
}

#[test]
fn a_full_discovery_may_take_the_interval_but_never_more_than_a_minute_by_default() {
    let with = |interval_s: u64, full_timeout: Option<Duration>| RefreshSettings {
        discovery_interval: Duration::from_secs(interval_s),
        full_timeout,
        ..RefreshSettings::default()
    };
    assert_eq!(with(600, None).full_timeout(), Duration::from_secs(60));
    assert_eq!(with(30, None).full_timeout(), Duration::from_secs(30));
    assert_eq!(
        with(600, Some(Duration::from_secs(120))).full_timeout(),
        Duration::from_secs(120),
        "an explicit timeout is honoured"
    );
    assert_eq!(
        with(60, Some(Duration::from_secs(120))).full_timeout(),
        Duration::from_secs(60),
        "but never overlaps the next run"
    );
    assert_eq!(RefreshSettings::default().full_timeout(), MAX_FULL_TIMEOUT);
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
async fn a_fast_refresh_replaces_the_targets_so_a_removed_tag_stops_matching() {
    let driver = FakeDriver::new("pve", Step::ok(0, vms()));
    let service = service(&driver, settings());
    service.full_refresh("pve").await.unwrap();
    let low = parse_selector(SelectorMode::Query, "labels.tier = low", "vm").unwrap();
    assert_eq!(
        service.resolve("pve", &low).unwrap().ids,
        ["vm:101", "vm:103"]
    );
    // The tier.low tag of 101 was removed on the device; 103 is gone.
    driver.set_default(Step::ok(
        0,
        vec![
            vm("101", "web-01", &[]),
            vm("202", "db-01", &[("tier", "high")]),
        ],
    ));

    service.fast_refresh("pve").await.unwrap();

    assert!(
        service.resolve("pve", &low).unwrap().ids.is_empty(),
        "what the device says now wins"
    );
    assert_eq!(ids(&service, "pve"), ["vm:101", "vm:202"]);
}

#[tokio::test(start_paused = true)]
async fn label_queries_work_on_a_fast_refresh_that_returns_tags() {
    // Proxmox's fast path (/cluster/resources) carries names and tags.
    let driver = FakeDriver::new("pve", Step::ok(0, vms()));
    let service = service(&driver, settings());

    service.fast_refresh("pve").await.unwrap();

    assert_eq!(driver.calls_of(RefreshMode::Full), 0);
    let query = parse_selector(SelectorMode::Query, "labels.tier = low", "vm").unwrap();
    assert_eq!(
        service.resolve("pve", &query).unwrap().ids,
        ["vm:101", "vm:103"]
    );
}

#[tokio::test]
async fn the_proxmox_drivers_fast_refresh_keeps_label_queries_working() {
    let sim = ProxmoxSim::start(SimConfig::demo())
        .await
        .expect("the proxmox simulator binds a loopback port");
    let driver =
        ProxmoxDriver::new("pve", sim.driver_config()).expect("the simulator's config is valid");
    let service = InventoryService::new();
    service.add_host(Arc::new(driver), RefreshSettings::default());

    let outcome = service.fast_refresh("pve").await.unwrap();

    assert!(outcome.refreshed, "{outcome:?}");
    let query = parse_selector(SelectorMode::Query, "labels.tier = low", "vm").unwrap();
    assert_eq!(
        service.resolve("pve", &query).unwrap().ids,
        ["vm:104", "vm:105", "vm:106", "vm:107"],
        "tier.low tags, from the fast path alone"
    );
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn every_refresh_runs_in_a_span_naming_its_host() {
    let spans = Spans::default();
    // While only one dispatcher exists, tracing caches a callsite's
    // interest as the default of whichever thread hits it first, and the
    // tests running in parallel have none ("never"). With a second one
    // alive it asks every dispatcher, and this one always says "sometimes".
    let _second = tracing::Dispatch::new(Spans::default());
    let _default = tracing::subscriber::set_default(spans.clone());
    tracing::callsite::rebuild_interest_cache();
    let driver = FakeDriver::new("pve", Step::ok(0, vms()));
    let service = service(&driver, settings());

    service.fast_refresh("pve").await.unwrap();
    service.full_refresh("pve").await.unwrap();
    service.start_discovery();
    tokio::time::sleep(Duration::from_secs(1)).await;
    service.stop_discovery(Duration::from_secs(1)).await;

    let refreshes: Vec<SpanFields> = spans
        .named("inventory_refresh")
        .into_iter()
        .filter(|f| f.get("host").map(String::as_str) == Some("pve"))
        .collect();
    let modes: Vec<&str> = refreshes.iter().map(|f| f["mode"].as_str()).collect();
    assert_eq!(
        modes,
        ["fast", "full", "full"],
        "one span per refresh, background included"
    );
    assert_eq!(refreshes[0]["attempts"], "1");
    assert_eq!(refreshes[0]["refreshed"], "true");
    assert_eq!(spans.named("driver_call").len(), 3, "one per driver call");
}

/// A tracing subscriber that keeps every span's name and fields.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<(String, SpanFields)>>>);

/// A span's fields as text, by name.
type SpanFields = BTreeMap<String, String>;

impl Spans {
    fn named(&self, name: &str) -> Vec<SpanFields> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

struct Fields<'a>(&'a mut SpanFields);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
}

impl tracing::Subscriber for Spans {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // Ask every time: other threads run without this subscriber.
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = BTreeMap::new();
        span.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().unwrap();
        spans.push((span.metadata().name().to_string(), fields));
        tracing::span::Id::from_u64(spans.len() as u64)
    }

    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut spans = self.0.lock().unwrap();
        if let Some((_, fields)) = spans.get_mut(span.into_u64() as usize - 1) {
            values.record(&mut Fields(fields));
        }
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, _: &tracing::Event<'_>) {}

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
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

#[tokio::test(start_paused = true)]
async fn the_agents_own_results_update_the_snapshot_and_unknown_ones_make_it_stale() {
    let driver = FakeDriver::new("pve", Step::ok(10, vms()));
    let service = service(&driver, settings());
    service.fast_refresh("pve").await.unwrap();
    let status = |id: &str| {
        let snapshot = service.snapshot("pve").unwrap().unwrap();
        snapshot.get(id).and_then(|t| t.status.clone())
    };

    // A shutdown read back as `stopped`: the snapshot says so at once, and
    // stays fresh (the next decision may trust it).
    service.record_results("pve", &[("vm:101".into(), Some("stopped".into()))]);
    assert_eq!(status("vm:101").as_deref(), Some("stopped"));
    assert!(!service.snapshot("pve").unwrap().unwrap().stale);

    // A result without a state read back: stale until the next refresh.
    service.record_results("pve", &[("vm:103".into(), None)]);
    assert!(service.snapshot("pve").unwrap().unwrap().stale);
    service.fast_refresh("pve").await.unwrap();
    assert!(!service.snapshot("pve").unwrap().unwrap().stale);
    assert_eq!(
        status("vm:101").as_deref(),
        Some("running"),
        "the refresh wins"
    );
}

/// A bus the service publishes `host.state` on.
fn host_states(service: &InventoryService) -> Consumer {
    let (publisher, consumer) = bus::channel(NonZeroUsize::new(64).unwrap(), "inventory");
    service.publish_host_states(publisher);
    consumer
}

/// `host reachable reason` of every `host.state` published so far.
async fn published(bus: &mut Consumer) -> Vec<String> {
    let mut out = Vec::new();
    // The forwarding task runs while this waits (a millisecond of virtual time).
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(1), bus.recv()).await {
        assert_eq!(event.kind, EventKind::HostState);
        assert_eq!(event.subject.kind, SubjectKind::Host);
        out.push(format!(
            "{} {} {}",
            event.subject.id,
            event.attrs["reachable"],
            event.attrs["reason"].as_str().unwrap()
        ));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn reachability_is_published_when_a_refresh_changes_it_and_only_then() {
    let driver = FakeDriver::new("pve", Step::ok(10, vms()));
    let service = service(
        &driver,
        RefreshSettings {
            fast_retries: 0,
            ..settings()
        },
    );
    let mut bus = host_states(&service);
    assert_eq!(service.reachable("pve"), None);
    assert_eq!(published(&mut bus).await, Vec::<String>::new());

    service.fast_refresh("pve").await.unwrap();
    service.full_refresh("pve").await.unwrap();
    assert_eq!(published(&mut bus).await, ["pve true refresh.ok"]);
    assert_eq!(service.reachable("pve"), Some(true));
    assert_eq!(service.status("pve").unwrap().reachable, Some(true));

    driver.then(Step::fail(10, ErrorKind::NetworkError));
    driver.then(Step::fail(10, ErrorKind::ServerError));
    service.fast_refresh("pve").await.unwrap();
    service.fast_refresh("pve").await.unwrap();
    assert_eq!(
        published(&mut bus).await,
        ["pve false driver.network_error"]
    );
    assert_eq!(service.reachable("pve"), Some(false));

    service.fast_refresh("pve").await.unwrap();
    service.fast_refresh("pve").await.unwrap();
    assert_eq!(published(&mut bus).await, ["pve true refresh.ok"]);

    // A refresh that outlasts the SLA: unreachable too.
    driver.then(Step::ok(30_000, vms()));
    service.fast_refresh("pve").await.unwrap();
    assert_eq!(published(&mut bus).await, ["pve false inventory.timeout"]);
}

#[tokio::test(start_paused = true)]
async fn errors_that_blame_the_request_leave_reachability_as_it_was() {
    let driver = FakeDriver::new("pve", Step::fail(10, ErrorKind::AuthError));
    let service = service(
        &driver,
        RefreshSettings {
            fast_retries: 0,
            ..settings()
        },
    );
    let mut bus = host_states(&service);
    service.fast_refresh("pve").await.unwrap();
    assert_eq!(service.reachable("pve"), None, "unknown, not unreachable");

    driver.then(Step::ok(10, vms()));
    service.fast_refresh("pve").await.unwrap();
    for kind in [
        ErrorKind::AuthError,
        ErrorKind::ConfigError,
        ErrorKind::NotFound,
    ] {
        driver.then(Step::fail(10, kind));
        service.fast_refresh("pve").await.unwrap();
    }

    assert_eq!(published(&mut bus).await, ["pve true refresh.ok"]);
    assert_eq!(service.reachable("pve"), Some(true));
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opening_and_closing_on_the_engines_calls_is_published() {
    let breakers = Arc::new(Breakers::default());
    let driver = FakeDriver::new("pve", Step::ok(0, vms()));
    let service = InventoryService::with_breakers(breakers.clone());
    service.add_host(driver.clone(), settings());
    let mut bus = host_states(&service);
    service.fast_refresh("pve").await.unwrap();

    // The engine's own driver calls trip the host's breaker, then its
    // trial call two minutes later gets an answer: no refresh involved.
    let engine_side = breakers.for_host("pve");
    for _ in 0..3 {
        engine_side.acquire().unwrap().failure(ErrorKind::Timeout);
    }
    assert_eq!(service.reachable("pve"), Some(false));
    tokio::time::advance(Duration::from_secs(120)).await;
    engine_side.acquire().unwrap().success();

    assert_eq!(
        published(&mut bus).await,
        [
            "pve true refresh.ok",
            "pve false breaker.open",
            "pve true breaker.closed"
        ]
    );
    assert_eq!(driver.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_publisher_given_late_hears_what_is_known_and_removed_hosts_say_nothing() {
    let breakers = Arc::new(Breakers::default());
    let pve = FakeDriver::new("pve", Step::ok(0, vms()));
    let other = FakeDriver::new("pve2", Step::ok(0, vms()));
    let service = InventoryService::with_breakers(breakers.clone());
    service.add_host(pve.clone(), settings());
    service.add_host(other.clone(), settings());
    service.fast_refresh("pve").await.unwrap();

    let mut bus = host_states(&service);
    assert_eq!(published(&mut bus).await, ["pve true known"]);

    assert!(service.remove_host("pve"));
    let breaker = breakers.for_host("pve");
    for _ in 0..3 {
        breaker.acquire().unwrap().failure(ErrorKind::Timeout);
    }
    assert_eq!(published(&mut bus).await, Vec::<String>::new());
    assert_eq!(service.reachable("pve"), None);
    assert_eq!(service.reachable("pve2"), None, "never refreshed");
}

#[test]
fn a_host_search_stays_on_its_host_and_type_whatever_other_hosts_hold() {
    let service = InventoryService::new();
    // A first host whose many matches would fill any shared limit.
    let busy: Vec<Target> = (0..100)
        .map(|i| vm(&format!("{}", 1000 + i), &format!("web-{i}"), &[]))
        .collect();
    for (id, targets) in [("a-busy", busy), ("b-pve", vms())] {
        service.add_host(FakeDriver::new(id, Step::ok(1, Vec::new())), settings());
        service
            .seed(inventory::HostInventory::new(id, "fake", targets))
            .unwrap();
    }
    let ids = |found: Vec<Target>| found.into_iter().map(|t| t.id).collect::<Vec<_>>();
    let on_b = service
        .search_host_type("b-pve", Some("vm"), "web", 8)
        .unwrap();
    assert_eq!(ids(on_b), ["101", "103"]);
    let no_ct = service
        .search_host_type("b-pve", Some("ct"), "web", 8)
        .unwrap();
    assert!(no_ct.is_empty());
}
