//! The per-host circuit breaker around real drivers talking to real peers on
//! loopback: the Proxmox API simulator (slow, stopped, restarted, or a closed
//! port in its place) and an axum HTTP receiver for webhooks. Three counted
//! failures trip the breaker, further calls are refused without reaching
//! the peer, and after the open period one trial call decides.
//!
//! These tests run on real time with a 300 ms open period: the peers are
//! real sockets, and a paused tokio clock would fire the clients' timeouts
//! while they wait for loopback IO. Nothing asserts how fast a call was;
//! "not reaching the peer" is read from the peers' request counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Router;
use drivers::breaker::{Breaker, BreakerConfig, BreakerError, BreakerState, Breakers};
use drivers::driver::{Action, Driver, DriverError, DryRunAnswer, ErrorKind, RefreshMode};
use drivers::guard::{guard, refusal, GuardedDriver};
use drivers::proxmox::sim::{ProxmoxSim, SimConfig};
use drivers::proxmox::{ProxmoxConfig, ProxmoxDriver};
use drivers::testing::sshd::closed_port;
use drivers::webhook::{Probe, WebhookConfig, WebhookDriver};
use serde_json::{json, Value};

/// How long a tripped breaker refuses calls in these tests.
const OPEN_FOR: Duration = Duration::from_millis(300);
/// Upper bound of any wait for a condition; reaching it fails the test.
const PATIENCE: Duration = Duration::from_secs(10);

/// SPEC §7's thresholds with a short open period.
fn short_breakers() -> Breakers {
    Breakers::new(BreakerConfig {
        failure_threshold: 3,
        failure_window: Duration::from_secs(60),
        open_for: OPEN_FOR,
    })
}

async fn start_sim(config: SimConfig) -> ProxmoxSim {
    ProxmoxSim::start(config)
        .await
        .expect("the proxmox simulator binds a loopback port")
}

/// A driver config for `sim` that fails fast: no retries, a short timeout.
fn fast_config(sim: &ProxmoxSim) -> ProxmoxConfig {
    let mut config = sim.driver_config();
    config.http.timeout_s = 0.5;
    config.http.retries = 0;
    config.dry_run_budget_s = 2.0;
    config
}

fn proxmox(host: &str, config: ProxmoxConfig, breakers: &Breakers) -> Arc<dyn Driver> {
    let driver = ProxmoxDriver::new(host, config).expect("the simulator's config is valid");
    guard(Arc::new(driver), breakers)
}

fn action(capability: &str, verb: &str, params: Value) -> Action {
    Action {
        capability: capability.into(),
        verb: verb.into(),
        params: params.as_object().cloned().unwrap_or_default(),
    }
}

fn shutdown_vm() -> Action {
    action(
        "proxmox.vm",
        "shutdown",
        json!({"grace_s": 60, "force_after_grace": false}),
    )
}

/// A dry-run of shutting down `vm:104`; its first request is `GET
/// /cluster/resources`. (Connection tests and discovery take the host's
/// strictest rate limit, `proxmox.node`'s 1/s, so the tests repeat this.)
async fn preflight(pve: &Arc<dyn Driver>) -> Result<Vec<DryRunAnswer>, DriverError> {
    pve.dry_run(&shutdown_vm(), &targets(&["vm:104"])).await
}

fn post() -> Action {
    action(
        "notify.webhook",
        "post",
        json!({"body": {"event": "on_battery"}}),
    )
}

fn targets(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// Fails unless `result` is a failure that reached the peer with `kind`.
fn assert_failed<T: std::fmt::Debug>(result: Result<T, DriverError>, kind: ErrorKind) {
    let e = result.expect_err("the call should fail at the peer");
    assert!(
        refusal(&e).is_none(),
        "the call should have reached the peer, but the breaker refused it: {e}"
    );
    assert_eq!(e.kind, kind, "{e}");
}

/// Fails unless `result` is the breaker's refusal; returns why it refused.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, DriverError>) -> BreakerError {
    let e = result.expect_err("the breaker should refuse the call");
    assert_eq!(
        e.kind,
        ErrorKind::NetworkError,
        "a refusal reads as an unreachable host: {e}"
    );
    assert_eq!(e.code(), "driver.network_error");
    refusal(&e)
        .unwrap_or_else(|| panic!("not a breaker refusal: {e}"))
        .clone()
}

/// Waits (real time) until the open period of `breaker` is over.
async fn wait_until_half_open(breaker: &Breaker) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while breaker.state() == BreakerState::Open {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the breaker stayed open for {PATIENCE:?}, far beyond its {OPEN_FOR:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
}

/// Waits until nothing accepts connections on `addr` any more.
async fn wait_until_refused(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} still accepts connections after the simulator stopped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `sim` has seen at least `n` requests.
async fn wait_for_requests(sim: &ProxmoxSim, n: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while sim.total_requests() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the simulator saw {} requests, expected {n}",
            sim.total_requests()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn three_timeouts_trip_the_breaker_and_the_fourth_call_never_reaches_the_host() {
    let sim = start_sim(SimConfig::demo()).await;
    sim.set_latency(Duration::from_secs(2));
    let breakers = short_breakers();
    let pve = proxmox("pve-01", fast_config(&sim), &breakers);
    let breaker = breakers.for_host("pve-01");

    for n in 1..=3 {
        assert_failed(preflight(&pve).await, ErrorKind::Timeout);
        assert_eq!(sim.request_count("GET", "/cluster/resources"), n);
    }
    assert_eq!(breaker.state(), BreakerState::Open);

    let seen = sim.total_requests();
    let why = assert_refused(preflight(&pve).await);
    assert!(matches!(why, BreakerError::Open { retry_in } if retry_in <= OPEN_FOR));
    assert_refused(pve.execute(&shutdown_vm(), &targets(&["vm:104"])).await);
    assert_refused(pve.test_connection().await);
    assert_refused(
        pve.discover(RefreshMode::Fast, Duration::from_secs(1))
            .await,
    );
    assert_eq!(
        sim.total_requests(),
        seen,
        "no call reaches the host while the breaker is open"
    );
}

#[tokio::test]
async fn a_refusal_says_the_breaker_is_open_and_until_when() {
    let sim = start_sim(SimConfig::demo()).await;
    let breakers = short_breakers();
    let mut config = fast_config(&sim);
    config.port = closed_port();
    let pve = proxmox("pve-01", config, &breakers);
    for _ in 0..3 {
        assert_failed(preflight(&pve).await, ErrorKind::NetworkError);
    }

    let e = pve
        .test_connection()
        .await
        .expect_err("the breaker refuses the call");
    assert!(
        e.message
            .starts_with("circuit breaker of host pve-01 is open until 20"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("the device was not asked"),
        "{}",
        e.message
    );
    assert!(matches!(refusal(&e), Some(BreakerError::Open { .. })));
    assert_eq!(sim.total_requests(), 0);
}

#[tokio::test]
async fn a_failed_trial_call_opens_the_breaker_again_and_a_successful_one_closes_it() {
    let sim = start_sim(SimConfig::demo()).await;
    sim.set_latency(Duration::from_secs(2));
    let breakers = short_breakers();
    let pve = proxmox("pve-01", fast_config(&sim), &breakers);
    let breaker = breakers.for_host("pve-01");
    for _ in 0..3 {
        assert_failed(preflight(&pve).await, ErrorKind::Timeout);
    }

    wait_until_half_open(&breaker).await;
    assert_failed(preflight(&pve).await, ErrorKind::Timeout);
    assert_eq!(
        sim.request_count("GET", "/cluster/resources"),
        4,
        "the trial reached the host"
    );
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "one failed trial reopens it"
    );
    assert_refused(preflight(&pve).await);
    assert_eq!(sim.request_count("GET", "/cluster/resources"), 4);

    sim.set_latency(Duration::ZERO);
    wait_until_half_open(&breaker).await;
    let report = pve
        .test_connection()
        .await
        .expect("the trial call succeeds");
    assert!(report.ok);
    assert_eq!(breaker.state(), BreakerState::Closed);
    let answers = preflight(&pve).await.expect("calls go through again");
    assert!(answers[0].ok, "{:?}", answers[0]);
}

#[tokio::test]
async fn a_stopped_host_trips_the_breaker_and_one_trial_call_after_its_return_closes_it() {
    let sim = start_sim(SimConfig::demo()).await;
    let addr = sim.addr();
    let breakers = short_breakers();
    // Patient enough for the returning host's 200 ms answers.
    let mut config = fast_config(&sim);
    config.http.timeout_s = 5.0;
    let pve = proxmox("pve-01", config, &breakers);
    let breaker = breakers.for_host("pve-01");
    pve.test_connection().await.expect("the host is up");

    sim.shutdown().await;
    wait_until_refused(addr).await;
    assert_failed(
        pve.discover(RefreshMode::Fast, Duration::from_secs(1))
            .await,
        ErrorKind::NetworkError,
    );
    assert_failed(preflight(&pve).await, ErrorKind::NetworkError);
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "two failures are not enough"
    );
    assert_failed(
        pve.execute(&shutdown_vm(), &targets(&["vm:104"])).await,
        ErrorKind::NetworkError,
    );
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_refused(pve.test_connection().await);

    // The host comes back on the same address, answering slowly enough
    // that the trial call is still running when a second call arrives.
    let back = start_sim(SimConfig {
        listen: addr,
        latency_ms: 200,
        ..SimConfig::demo()
    })
    .await;
    wait_until_half_open(&breaker).await;
    let trial = {
        let pve = Arc::clone(&pve);
        tokio::spawn(async move { pve.test_connection().await })
    };
    wait_for_requests(&back, 1).await;
    let why = assert_refused(pve.test_connection().await);
    assert_eq!(why, BreakerError::TrialInFlight);
    assert_eq!(
        back.total_requests(),
        1,
        "only the trial call reached the host"
    );

    let report = trial
        .await
        .expect("the trial task ran")
        .expect("the trial call succeeds");
    assert!(report.ok);
    assert_eq!(breaker.state(), BreakerState::Closed);
    let answers = preflight(&pve).await.expect("calls go through again");
    assert!(answers[0].ok, "{:?}", answers[0]);
}

#[tokio::test]
async fn every_driver_of_one_host_shares_its_breaker_and_other_hosts_keep_theirs() {
    let sim = start_sim(SimConfig::demo()).await;
    let breakers = short_breakers();
    let mut dead = fast_config(&sim);
    dead.port = closed_port();
    let pve1_dead = proxmox("pve-01", dead, &breakers);
    for _ in 0..3 {
        assert_failed(preflight(&pve1_dead).await, ErrorKind::NetworkError);
    }

    // Another driver of the same host (rebuilt after a config change, or the
    // one the engine holds next to the inventory's) meets the same breaker.
    let pve1_again = GuardedDriver::from_breakers(
        Arc::new(ProxmoxDriver::new("pve-01", fast_config(&sim)).unwrap()),
        &breakers,
    );
    assert_refused(pve1_again.test_connection().await);
    assert_eq!(sim.total_requests(), 0);
    assert_eq!(pve1_again.breaker().state(), BreakerState::Open);

    let pve2 = proxmox("pve-02", fast_config(&sim), &breakers);
    pve2.test_connection()
        .await
        .expect("another host's breaker is closed");
    assert_eq!(sim.total_requests(), 1);
    assert_eq!(
        breakers.states(),
        vec![
            ("pve-01".to_string(), BreakerState::Open),
            ("pve-02".to_string(), BreakerState::Closed),
        ]
    );
}

/// An HTTP receiver that answers every request with one status and counts them.
async fn receiver(status: u16) -> (String, Arc<AtomicU64>) {
    async fn answer(State((status, seen)): State<(StatusCode, Arc<AtomicU64>)>) -> StatusCode {
        seen.fetch_add(1, Ordering::SeqCst);
        status
    }
    let seen = Arc::new(AtomicU64::new(0));
    let status = StatusCode::from_u16(status).expect("a valid status");
    let app = Router::new()
        .fallback(answer)
        .with_state((status, seen.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding 127.0.0.1:0 for the test receiver");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(async move {
        axum::serve(listener, app)
            .await
            .expect("the receiver serves");
    });
    (format!("http://{addr}/hooks"), seen)
}

fn webhook(url: &str, breakers: &Breakers) -> Arc<dyn Driver> {
    let mut config = WebhookConfig::new(url);
    config.http.retries = 0;
    config.http.timeout_s = 2.0;
    config.budget_s = 5.0;
    config.dry_run_probe = Probe::Head;
    guard(
        Arc::new(WebhookDriver::new("hooks", config).expect("a valid webhook config")),
        breakers,
    )
}

#[tokio::test]
async fn a_webhook_receiver_answering_503_trips_the_breaker() {
    let (url, seen) = receiver(503).await;
    let breakers = short_breakers();
    let hooks = webhook(&url, &breakers);

    // A delivery failure is reported per target; every target of the call
    // failing with a server error counts against the host.
    for n in 1..=2 {
        let outcomes = hooks
            .execute(&post(), &targets(&["webhook:default"]))
            .await
            .expect("execute answers per target");
        assert_eq!(outcomes[0].code, "driver.server_error");
        assert_eq!(seen.load(Ordering::SeqCst), n);
    }
    assert_failed(hooks.test_connection().await, ErrorKind::ServerError);
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert_eq!(breakers.for_host("hooks").state(), BreakerState::Open);

    assert_refused(hooks.execute(&post(), &targets(&["webhook:default"])).await);
    assert_refused(hooks.test_connection().await);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        3,
        "no request reaches the receiver while the breaker is open"
    );
}

#[tokio::test]
async fn auth_errors_do_not_trip_the_breaker() {
    let (url, seen) = receiver(401).await;
    let breakers = short_breakers();
    let hooks = webhook(&url, &breakers);

    for _ in 0..3 {
        assert_failed(hooks.test_connection().await, ErrorKind::AuthError);
        let outcomes = hooks
            .execute(&post(), &targets(&["webhook:default"]))
            .await
            .expect("execute answers per target");
        assert_eq!(outcomes[0].code, "driver.auth_error");
    }
    assert_eq!(
        seen.load(Ordering::SeqCst),
        6,
        "every call reached the receiver"
    );
    assert_eq!(breakers.for_host("hooks").state(), BreakerState::Closed);
}

#[tokio::test]
async fn failed_dry_run_answers_do_not_trip_the_breaker() {
    let (url, seen) = receiver(503).await;
    let breakers = short_breakers();
    let hooks = webhook(&url, &breakers);

    for _ in 0..4 {
        let answers = hooks
            .dry_run(&post(), &targets(&["webhook:default"]))
            .await
            .expect("a dry-run answers per target");
        assert!(!answers[0].ok, "the probe got a 503: {:?}", answers[0]);
    }
    assert_eq!(
        seen.load(Ordering::SeqCst),
        4,
        "every probe reached the receiver"
    );
    assert_eq!(breakers.for_host("hooks").state(), BreakerState::Closed);
}
