//! The NUT client and the UPS event source against a real upsd with the
//! dummy-ups driver (`agent::nut::testing`). Needs the Debian packages
//! `nut-server` and `nut-client`; without them every test fails saying so.
//!
//! These run in real time against real peers, with short poll intervals
//! and comm-lost timeouts; they wait for events with generous deadlines and
//! never assert on how long anything took.

use std::num::NonZeroUsize;
use std::time::Duration;

use agent::engine::bus::{self, Consumer};
use agent::engine::event::{Event, EventKind};
use agent::nut::testing::Upsd;
use agent::nut::{ClientOptions, ErrorCode, NutClient, NutConfig, NutError};
use agent::spec::UpsState;
use drivers::secret::Secret;

/// Deadline for anything the tests wait for (dummy-ups re-reads its file
/// about once a second; reconnects back off).
const PATIENCE: Duration = Duration::from_secs(20);

fn options(upsd: &Upsd) -> ClientOptions {
    ClientOptions {
        host: upsd.host().to_string(),
        port: upsd.port(),
        user: None,
        password: None,
        timeout: Duration::from_secs(5),
    }
}

/// A source config polling fast and losing the UPS after one second.
fn fast(upsd: &Upsd) -> NutConfig {
    NutConfig {
        poll_interval_ms: 100,
        comm_lost_after_ms: 1000,
        request_timeout_ms: 1000,
        ..upsd.config()
    }
}

fn consumer() -> (bus::Publisher, Consumer) {
    bus::channel(NonZeroUsize::new(256).unwrap(), "nut")
}

fn describe(e: &Event) -> String {
    if let Some(level) = agent::engine::subjects::level_reading(e) {
        return format!("level[{}]", level.names().join(","));
    }
    match (e.ups_state(), e.metric()) {
        (Some(state), _) => state.as_str().to_string(),
        (_, Some((name, value))) => format!("{name}={value}"),
        _ => format!("{e:?}"),
    }
}

/// Events until (and including) the `ups.state` event `state`; panics with
/// what came instead when it does not come in time.
async fn until_state(rx: &mut Consumer, state: UpsState) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => {
                seen.push(describe(&e));
                if e.ups_state() == Some(state) {
                    return seen;
                }
            }
            _ => panic!("no {} event; saw {seen:?}", state.as_str()),
        }
    }
}

/// Every event published within `period`.
async fn collect_for(rx: &mut Consumer, period: Duration) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + period;
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        seen.push(describe(&e));
    }
    seen
}

fn states(seen: &[String]) -> Vec<&str> {
    seen.iter()
        .map(String::as_str)
        .filter(|s| !s.contains('='))
        .collect()
}

#[tokio::test]
async fn client_lists_upses_and_variables_and_reads_one() {
    let upsd = Upsd::builder().desc("Rack A, bottom shelf").start();
    let mut client = NutClient::connect(&options(&upsd)).await.unwrap();

    let ver = client.ver().await.unwrap();
    assert!(ver.contains("upsd"), "{ver}");
    let upses = client.list_ups().await.unwrap();
    assert_eq!(
        upses,
        [("dummy".to_string(), "Rack A, bottom shelf".to_string())]
    );
    let vars = client.list_var("dummy").await.unwrap();
    assert_eq!(vars.get("ups.status").map(String::as_str), Some("OL"));
    assert_eq!(vars.get("battery.charge").map(String::as_str), Some("100"));
    assert_eq!(client.get_var("dummy", "ups.load").await.unwrap(), "20");
    client.logout().await.unwrap();
}

#[tokio::test]
async fn a_quoted_value_with_spaces_reads_as_one_value() {
    let upsd = Upsd::start();
    upsd.set_vars(&[("ups.status", "OB LB"), ("ups.model", "Smart UPS 1500 RM")]);
    upsd.wait_for_var("ups.status", "OB LB");
    let mut client = NutClient::connect(&options(&upsd)).await.unwrap();
    assert_eq!(
        client.get_var("dummy", "ups.status").await.unwrap(),
        "OB LB"
    );
    let vars = client.list_var("dummy").await.unwrap();
    assert_eq!(
        vars.get("ups.model").map(String::as_str),
        Some("Smart UPS 1500 RM")
    );
}

#[tokio::test]
async fn an_unknown_ups_is_a_typed_error_and_the_connection_stays_usable() {
    let upsd = Upsd::start();
    let mut client = NutClient::connect(&options(&upsd)).await.unwrap();
    let err = client.get_var("nosuch", "ups.status").await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::UnknownUps), "{err}");
    assert!(!err.is_retryable());
    let err = client.list_var("nosuch").await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::UnknownUps), "{err}");
    let err = client.get_var("dummy", "no.such.var").await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::VarNotSupported), "{err}");
    // An ERR reply leaves the connection in step.
    assert_eq!(client.get_var("dummy", "ups.status").await.unwrap(), "OL");
}

#[tokio::test]
async fn a_wrong_password_is_access_denied_where_upsd_checks_it() {
    let upsd = Upsd::builder().user("monitor", "right pw").start();

    // upsd accepts USERNAME/PASSWORD without checking them and does not
    // check them for reads either: a client with a wrong password still reads.
    let mut wrong = options(&upsd);
    wrong.user = Some("monitor".into());
    wrong.password = Some(Secret::new("wrong"));
    let mut client = NutClient::connect(&wrong).await.unwrap();
    assert_eq!(client.get_var("dummy", "ups.status").await.unwrap(), "OL");

    // It checks them on commands that need a right (SET checks the right
    // before the variable); the client never sends those, so the raw
    // harness does, and the reply reads as the typed code.
    let denied = upsd.raw(&[
        "USERNAME monitor",
        "PASSWORD wrong",
        "SET VAR dummy no.such.var 1",
    ]);
    assert_eq!(denied[..2], ["OK", "OK"]);
    let reply = agent::nut::protocol::parse_reply(&denied[2]).unwrap();
    assert_eq!(
        reply,
        agent::nut::protocol::ReplyLine::Err(ErrorCode::AccessDenied)
    );
    let allowed = upsd.raw(&[
        "USERNAME monitor",
        "PASSWORD \"right pw\"",
        "SET VAR dummy no.such.var 1",
    ]);
    assert_eq!(allowed[2], "ERR VAR-NOT-SUPPORTED", "{allowed:?}");

    // The right credentials, sent by the client (password quoted: it has a space).
    let mut right = options(&upsd);
    right.user = Some("monitor".into());
    right.password = Some(Secret::new("right pw"));
    let mut client = NutClient::connect(&right).await.unwrap();
    assert_eq!(client.list_ups().await.unwrap().len(), 1);
}

#[tokio::test]
async fn connecting_to_a_closed_port_is_a_retryable_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = NutClient::connect(&ClientOptions {
        host: "127.0.0.1".into(),
        port,
        user: None,
        password: Some(Secret::new("hunter2")),
        timeout: Duration::from_secs(2),
    })
    .await
    .unwrap_err();
    assert!(matches!(err, NutError::Connect { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(!format!("{err} {err:?}").contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_publishes_a_first_level_reading_then_status_and_metric_changes() {
    let upsd = Upsd::start();
    let config = fast(&upsd);
    let subject = config.subject_id();
    let (tx, mut rx) = consumer();
    let sources = agent::nut::spawn(&[config], tx);

    // The first reading (OL) is one level reading for the engine to judge
    // against what it last knew; then it is the baseline.
    assert_eq!(
        collect_for(&mut rx, Duration::from_millis(1500)).await,
        ["level[on_mains]"]
    );
    let facts = sources.readings().snapshot();
    assert_eq!(facts.len(), 1);
    assert_eq!(facts[0].subject_id, subject);
    assert_eq!(facts[0].charge_pct, Some(100.0));

    upsd.set_status("OB DISCHRG");
    assert_eq!(
        until_state(&mut rx, UpsState::OnBattery).await,
        ["on_battery"]
    );

    upsd.set_status("OL CHRG");
    assert_eq!(until_state(&mut rx, UpsState::OnMains).await, ["on_mains"]);

    upsd.set_vars(&[
        ("ups.status", "OB LB"),
        ("battery.charge", "15"),
        ("battery.runtime", "120"),
    ]);
    let seen = until_state(&mut rx, UpsState::LowBattery).await;
    assert_eq!(states(&seen), ["on_battery", "low_battery"], "{seen:?}");
    let mut rest = seen.clone();
    rest.extend(collect_for(&mut rx, Duration::from_millis(500)).await);
    assert!(rest.contains(&"charge_pct=15".to_string()), "{rest:?}");
    assert!(rest.contains(&"runtime_minutes=2".to_string()), "{rest:?}");

    upsd.set_vars(&[("ups.load", "55.5")]);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let e = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("a load metric event")
            .expect("bus open");
        assert_eq!(e.subject.id, subject);
        if e.kind == EventKind::MetricThreshold {
            assert_eq!(e.metric(), Some(("load", 55.5)));
            break;
        }
    }
    sources.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_upsd_is_comm_lost_then_low_battery_and_its_return_publishes_only_what_changed() {
    let mut upsd = Upsd::start();
    let (tx, mut rx) = consumer();
    let sources = agent::nut::spawn(&[fast(&upsd)], tx);
    assert_eq!(
        collect_for(&mut rx, Duration::from_millis(1000)).await,
        ["level[on_mains]"]
    );

    upsd.set_status("OB");
    assert_eq!(
        until_state(&mut rx, UpsState::OnBattery).await,
        ["on_battery"]
    );

    upsd.kill_upsd();
    let seen = until_state(&mut rx, UpsState::CommLost).await;
    assert_eq!(states(&seen), ["comm_lost"]);
    assert_eq!(
        until_state(&mut rx, UpsState::LowBattery).await,
        ["low_battery"]
    );
    // One comm_lost per outage.
    assert!(collect_for(&mut rx, Duration::from_millis(1500))
        .await
        .is_empty());

    // Back, still on battery: compared with the last good reading, nothing
    // changed but the load (a load change marks when the source has read it).
    upsd.set_vars(&[("ups.load", "21")]);
    upsd.start_upsd();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !sources
        .readings()
        .snapshot()
        .first()
        .is_some_and(|f| f.load == Some(21.0))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the source never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = collect_for(&mut rx, Duration::from_millis(500)).await;
    assert!(states(&seen).is_empty(), "no state changed: {seen:?}");

    upsd.set_status("OL");
    assert_eq!(until_state(&mut rx, UpsState::OnMains).await, ["on_mains"]);
    sources.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_fail_safe_off_a_ups_lost_on_battery_is_only_comm_lost() {
    let mut upsd = Upsd::start();
    upsd.set_status("OB");
    upsd.wait_for_var("ups.status", "OB");
    let (tx, mut rx) = consumer();
    let config = NutConfig {
        lost_on_battery_is_low_battery: false,
        ..fast(&upsd)
    };
    let sources = agent::nut::spawn(&[config], tx);
    assert_eq!(
        collect_for(&mut rx, Duration::from_millis(1000)).await,
        ["level[on_battery]"]
    );
    upsd.kill_upsd();
    let seen = until_state(&mut rx, UpsState::CommLost).await;
    assert_eq!(states(&seen), ["comm_lost"]);
    assert!(collect_for(&mut rx, Duration::from_millis(1000))
        .await
        .is_empty());
    sources.shutdown().await;
}

#[test]
fn the_harness_names_the_packages_to_install() {
    assert!(agent::nut::testing::INSTALL_HINT.contains("nut-server nut-client"));
}
