//! The engine across restarts and the kill switch (SPEC §6 "Persistence and
//! restarts", "Kill switch"), on a virtual clock: `for` countdowns armed,
//! persisted and re-armed; intents interrupted by a crash reconciled by a
//! dry-run; held items re-checked at release; the ledger flushed before a
//! self power-off; `timer.at` fires missed while down. A restart is a new
//! [`Engine`] over the same store and the same clock.

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::engine::runner::{
    Clock, Engine, EngineConfig, Policy, ALREADY_DESIRED, HELD_EXPIRED, INTERRUPTED, TIMER_MISSED,
};
use agent::engine::store::{
    AuditQuery, EngineStore, IntentId, KillSwitchState, MemoryStore, RunStatus,
};
use agent::store::SqliteStore;
use chrono::{DateTime, TimeDelta, Utc};
use drivers::breaker::{BreakerConfig, Breakers};
use drivers::driver::{action_key, Action};
use drivers::manifest::shipped;
use serde_json::{json, Map, Value};
use support::{policy_at, range as vms, ups, webhook, FakeDriver, ON_BATTERY};
use uuid::Uuid;

fn pve() -> Arc<FakeDriver> {
    FakeDriver::new(
        "pve-01",
        "proxmox.ve",
        &[
            ("vm:101", Some("running")),
            ("vm:102", Some("running")),
            ("host:pve-01", Some("running")),
        ],
    )
}

/// 2026-11-22 09:50:00 UTC: a wall time the `timer.at` tests reason about.
fn base() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T09:50:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// A clock at [`base`] when created, advancing with tokio's paused clock;
/// shared by every engine of a test, as the wall clock is across restarts.
fn clock() -> Clock {
    let start = tokio::time::Instant::now();
    Arc::new(move || base() + TimeDelta::from_std(start.elapsed()).unwrap())
}

/// A new engine (a start of the agent) over `store` with `policies`.
fn engine(
    store: Arc<dyn EngineStore>,
    driver: &Arc<FakeDriver>,
    clock: &Clock,
    self_host: Option<&str>,
    policies: Vec<Policy>,
) -> Engine {
    let mut engine = support::engine(
        store,
        &[driver],
        Arc::new(Breakers::new(BreakerConfig::default())),
        EngineConfig {
            clock: clock.clone(),
            self_host: self_host.map(str::to_string),
            ..EngineConfig::default()
        },
    );
    for policy in policies {
        engine.add_policy(policy).unwrap();
    }
    engine
}

/// A policy on `trigger` running `action` on `selector` of `ty` on pve-01.
fn policy(
    id: u128,
    priority: i64,
    trigger: &str,
    ty: &str,
    selector: &str,
    action: &str,
) -> Policy {
    policy_at(id, priority, trigger, "pve-01", ty, selector, action)
}

const ON_BATTERY_120S: &str = "{ type: ups.state, equals: on_battery, for: 120s }";
const HOURLY: &str = "{ type: timer.at, schedule: { cron: \"0 0 * * * *\" } }";
const SHUTDOWN_VMS: &str = "{ capability_id: proxmox.vm, verb: shutdown }";

fn held_policy() -> Policy {
    policy(1, 10, ON_BATTERY_120S, "vm", &vms("101"), SHUTDOWN_VMS)
}

async fn seconds(n: u64) {
    tokio::time::advance(Duration::from_secs(n)).await;
}

fn audit_kinds(store: &dyn EngineStore, kind: &str) -> Vec<Value> {
    store
        .audit(&AuditQuery {
            kind: Some(kind.into()),
            ..AuditQuery::default()
        })
        .unwrap()
        .into_iter()
        .map(|e| e.record.details)
        .collect()
}

/// Delivers what is due now and returns how many policies scheduled work.
async fn fire(engine: &mut Engine, clock: &Clock) -> usize {
    let reports = engine.fire_due(clock()).await.unwrap();
    engine.settle().await.unwrap();
    reports
        .iter()
        .flat_map(|r| &r.decisions)
        .filter(|d| d.code == "engine.scheduled")
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_for_120s_hold_on_battery_fires_after_120_seconds() {
    let pve = pve();
    let store = Arc::new(MemoryStore::default());
    let clock = clock();
    let mut engine = engine(store.clone(), &pve, &clock, None, vec![held_policy()]);
    let report = engine.handle_event(&ups("on_battery")).await.unwrap();
    assert_eq!(report.timers.len(), 1);
    assert_eq!(
        engine.next_deadline(),
        Some(clock() + TimeDelta::seconds(120))
    );
    assert_eq!(store.deadlines().unwrap().len(), 1);
    seconds(119).await;
    assert_eq!(fire(&mut engine, &clock).await, 0);
    assert!(pve.executes().is_empty());
    seconds(1).await;
    assert_eq!(fire(&mut engine, &clock).await, 1);
    assert_eq!(pve.status("vm:101").as_deref(), Some("stopped"));
    assert!(store.deadlines().unwrap().is_empty());
    assert_eq!(engine.next_deadline(), None);
    // A countdown that ran out fired: it was never cancelled.
    assert_eq!(
        audit_kinds(store.as_ref(), "engine.countdown_started").len(),
        1
    );
    assert!(audit_kinds(store.as_ref(), "engine.countdown_cancelled").is_empty());
}

#[tokio::test(start_paused = true)]
async fn low_battery_and_lost_contact_during_the_hold_do_not_cancel_it() {
    // NUT: `OB`, then `OB LB` 30 s later, then the server stops answering
    // (`comm_lost`, and the fail-safe `low_battery`). The UPS never left
    // battery: the shutdown still runs when the 120 s are up.
    let pve = pve();
    let store = Arc::new(MemoryStore::default());
    let clock = clock();
    let mut engine = engine(store.clone(), &pve, &clock, None, vec![held_policy()]);
    engine.handle_event(&ups("on_battery")).await.unwrap();
    seconds(30).await;
    engine.handle_event(&ups("low_battery")).await.unwrap();
    seconds(30).await;
    engine.handle_event(&ups("comm_lost")).await.unwrap();
    engine.handle_event(&ups("low_battery")).await.unwrap();
    assert_eq!(store.deadlines().unwrap().len(), 1);
    seconds(60).await;
    assert_eq!(fire(&mut engine, &clock).await, 1);
    assert_eq!(pve.status("vm:101").as_deref(), Some("stopped"));
    assert!(audit_kinds(store.as_ref(), "engine.countdown_cancelled").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_three_second_blip_cancels_the_countdown_and_nothing_fires() {
    let pve = pve();
    let store = Arc::new(MemoryStore::default());
    let clock = clock();
    let mut engine = engine(store.clone(), &pve, &clock, None, vec![held_policy()]);
    engine.handle_event(&ups("on_battery")).await.unwrap();
    seconds(3).await;
    engine.handle_event(&ups("on_mains")).await.unwrap();
    assert_eq!(engine.next_deadline(), None);
    assert!(store.deadlines().unwrap().is_empty());
    seconds(600).await;
    assert_eq!(fire(&mut engine, &clock).await, 0);
    assert!(pve.executes().is_empty());
    // The audit log tells the story: the countdown started, then was cancelled.
    let started = audit_kinds(store.as_ref(), "engine.countdown_started");
    let cancelled = audit_kinds(store.as_ref(), "engine.countdown_cancelled");
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled[0]["timer"], "for");
}

#[tokio::test(start_paused = true)]
async fn a_restart_rearms_the_countdown_and_fires_it_once_not_twice() {
    let pve = pve();
    let store: Arc<dyn EngineStore> = Arc::new(MemoryStore::default());
    let clock = clock();
    let armed_at = clock();
    let mut first = engine(store.clone(), &pve, &clock, None, vec![held_policy()]);
    first.handle_event(&ups("on_battery")).await.unwrap();
    seconds(60).await;
    drop(first);

    let mut second = engine(store.clone(), &pve, &clock, None, vec![held_policy()]);
    let start = second.start().await.unwrap();
    assert_eq!(start.rearmed, 1);
    // The countdown waits for the first reading to confirm the outage
    // (SPEC §6 "Outage lifecycle"), then keeps its original deadline.
    assert_eq!(second.next_deadline(), None);
    second
        .handle_event(&agent::engine::subjects::level_event(
            "ups1@nas.lan:3493",
            &[agent::spec::UpsState::OnBattery],
        ))
        .await
        .unwrap();
    assert_eq!(
        second.next_deadline(),
        Some(armed_at + TimeDelta::seconds(120))
    );
    seconds(59).await;
    assert_eq!(fire(&mut second, &clock).await, 0);
    seconds(1).await;
    assert_eq!(fire(&mut second, &clock).await, 1);
    assert_eq!(fire(&mut second, &clock).await, 0);
    drop(second);

    let mut third = engine(store.clone(), &pve, &clock, None, vec![held_policy()]);
    assert_eq!(third.start().await.unwrap().rearmed, 0);
    seconds(600).await;
    assert_eq!(fire(&mut third, &clock).await, 0);
    assert_eq!(pve.executes().len(), 1);
    assert_eq!(store.runs(Uuid::from_u128(1), 30).unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_intent_interrupted_by_a_crash_is_reconciled_by_a_dry_run_never_re_executed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hazel.db");
    let pve = pve();
    *pve.latency.lock().unwrap() = Duration::from_secs(10);
    pve.failing.lock().unwrap().insert("vm:102".into());
    let clock = clock();
    let shutdown = policy(1, 10, ON_BATTERY, "vm", &vms("101-102"), SHUTDOWN_VMS);
    let store: Arc<dyn EngineStore> = Arc::new(SqliteStore::open(&path).unwrap());
    let mut first = engine(store.clone(), &pve, &clock, None, vec![shutdown.clone()]);
    first.handle_event(&ups("on_battery")).await.unwrap();
    seconds(1).await;
    assert_eq!(pve.executes().len(), 1);
    // The agent dies mid-execution: nothing records the outcome. The
    // request had reached the host: vm:101 stops, vm:102 does not.
    drop(first);
    drop(store);
    seconds(20).await;
    pve.set_status("vm:101", "stopped");

    let store: Arc<dyn EngineStore> = Arc::new(SqliteStore::open(&path).unwrap());
    assert_eq!(store.open_intents().unwrap().len(), 1);
    let mut second = engine(store.clone(), &pve, &clock, None, vec![shutdown]);
    let start = second.start().await.unwrap();
    assert_eq!(start.reconciled.len(), 1);
    assert_eq!(start.reconciled[0].done, vec!["vm:101"]);
    assert_eq!(start.reconciled[0].not_done, vec!["vm:102"]);
    assert_eq!(pve.dry_runs.load(Ordering::SeqCst), 1);
    assert_eq!(pve.executes().len(), 1, "nothing is re-executed");
    assert!(store.open_intents().unwrap().is_empty());

    let runs = store.runs(Uuid::from_u128(1), 30).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Interrupted);
    assert!(runs[0]
        .results
        .iter()
        .all(|r| r.code.as_deref() == Some(INTERRUPTED)));
    assert_eq!(audit_kinds(store.as_ref(), INTERRUPTED).len(), 1);

    let action = Action {
        capability: "proxmox.vm".into(),
        verb: "shutdown".into(),
        params: Map::new(),
    };
    assert!(store
        .key_ran_at(&action_key(shipped(), "pve-01", &action, "vm:101"))
        .unwrap()
        .is_some());
    assert!(store
        .key_ran_at(&action_key(shipped(), "pve-01", &action, "vm:102"))
        .unwrap()
        .is_none());
}

#[tokio::test(start_paused = true)]
async fn the_kill_switch_holds_items_and_rechecks_them_at_release() {
    let pve = pve();
    let store = Arc::new(MemoryStore::default());
    let clock = clock();
    let wanted = policy(1, 10, ON_BATTERY, "vm", &vms("101"), SHUTDOWN_VMS);
    let moot = policy(2, 20, ON_BATTERY, "vm", &vms("102"), SHUTDOWN_VMS);
    let mut engine = engine(store.clone(), &pve, &clock, None, vec![wanted, moot]);
    engine.pause("ops", "maintenance").await.unwrap();
    assert!(store.kill_switch().unwrap().paused);
    // Dry-runs keep working while paused.
    let transcript = engine.dry_run_event(&ups("on_battery")).await.unwrap();
    assert!(matches!(
        transcript.decisions[0].planned[0].dry_run,
        Some(Ok(_))
    ));

    let report = engine.handle_event(&ups("on_battery")).await.unwrap();
    assert_eq!(report.decisions.len(), 2);
    seconds(120).await;
    assert!(pve.executes().is_empty());
    assert_eq!(engine.pending_items(), 2);
    assert_eq!(store.open_intents().unwrap().len(), 2);

    // Someone stops vm:102 by hand meanwhile.
    pve.set_status("vm:102", "stopped");
    engine.resume().await.unwrap();
    let runs = engine.settle().await.unwrap();
    assert_eq!(runs.len(), 2);
    assert!(!store.kill_switch().unwrap().paused);
    assert_eq!(
        pve.executes(),
        vec![("shutdown".into(), vec!["vm:101".into()])]
    );
    let moot = store.runs(Uuid::from_u128(2), 30).unwrap();
    assert_eq!(moot[0].status, RunStatus::Ok);
    assert_eq!(moot[0].results[0].code.as_deref(), Some(ALREADY_DESIRED));
    assert!(!moot[0].results[0].changed);
    assert_eq!(audit_kinds(store.as_ref(), "engine.held_dropped").len(), 1);
    assert!(store.open_intents().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_item_held_past_its_ttl_is_dropped_with_a_record_and_its_key_forgotten() {
    let pve = pve();
    let store = Arc::new(MemoryStore::default());
    let clock = clock();
    let shutdown = policy(1, 10, ON_BATTERY, "vm", &vms("101"), SHUTDOWN_VMS);
    let mut engine = engine(store.clone(), &pve, &clock, None, vec![shutdown]);
    engine.pause("ops", "maintenance").await.unwrap();
    engine.handle_event(&ups("on_battery")).await.unwrap();
    seconds(11 * 60).await;
    engine.resume().await.unwrap();
    let runs = engine.settle().await.unwrap();
    assert_eq!(runs[0].status, RunStatus::Cancelled);
    assert_eq!(runs[0].results[0].code.as_deref(), Some(HELD_EXPIRED));
    let intent = store
        .intent(&IntentId {
            run_id: runs[0].run_id,
            action_index: 0,
            host: "pve-01".into(),
        })
        .unwrap()
        .unwrap();
    assert_eq!(intent.outcome.unwrap().code.as_deref(), Some(HELD_EXPIRED));
    let action = Action {
        capability: "proxmox.vm".into(),
        verb: "shutdown".into(),
        params: Map::new(),
    };
    assert!(store
        .key_ran_at(&action_key(shipped(), "pve-01", &action, "vm:101"))
        .unwrap()
        .is_none());
    assert!(pve.executes().is_empty());
    assert_eq!(audit_kinds(store.as_ref(), "engine.held_dropped").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_persisted_kill_switch_is_applied_at_start() {
    let pve = pve();
    let store = Arc::new(MemoryStore::default());
    store
        .set_kill_switch(&KillSwitchState {
            paused: true,
            since: Some(base()),
            by: Some("ops".into()),
            reason: Some("maintenance".into()),
        })
        .unwrap();
    let clock = clock();
    let shutdown = policy(1, 10, ON_BATTERY, "vm", &vms("101"), SHUTDOWN_VMS);
    let mut engine = engine(store.clone(), &pve, &clock, None, vec![shutdown]);
    assert!(engine.start().await.unwrap().paused);
    engine.handle_event(&ups("on_battery")).await.unwrap();
    seconds(60).await;
    assert!(pve.executes().is_empty());
    assert_eq!(engine.pending_items(), 1);
    engine.resume().await.unwrap();
    engine.settle().await.unwrap();
    assert_eq!(pve.executes().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_ledger_is_flushed_before_a_self_poweroff_item_runs() {
    let pve = pve();
    let store = Arc::new(MemoryStore::default());
    let clock = clock();
    let vms_first = policy(1, 10, ON_BATTERY, "vm", &vms("101-102"), SHUTDOWN_VMS);
    let node_last = policy(
        2,
        20,
        ON_BATTERY,
        "host",
        "{ mode: list, value: \"pve-01\" }",
        "{ capability_id: proxmox.node, verb: shutdown }",
    );
    let mut engine = engine(
        store.clone(),
        &pve,
        &clock,
        Some("pve-01"),
        vec![vms_first, node_last],
    );
    let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
    {
        let seen = seen.clone();
        let store = store.clone();
        *pve.probe.lock().unwrap() = Some(Box::new(move || {
            let runs = store.runs(Uuid::from_u128(1), 30).unwrap().len();
            seen.lock().unwrap().push(runs);
        }));
    }
    engine.handle_event(&ups("on_battery")).await.unwrap();
    engine.settle().await.unwrap();
    let executes = pve.executes();
    assert_eq!(executes.len(), 2);
    assert_eq!(executes[1].1, vec!["host:pve-01"]);
    // When the node shutdown started, the VM run was already in the ledger.
    assert_eq!(*seen.lock().unwrap(), vec![0, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_timer_at_missed_while_down_fires_once_within_the_grace() {
    let pve = pve();
    let store: Arc<dyn EngineStore> = Arc::new(MemoryStore::default());
    let clock = clock();
    let hourly = || policy(1, 10, HOURLY, "vm", &vms("101"), SHUTDOWN_VMS);
    let mut first = engine(store.clone(), &pve, &clock, None, vec![hourly()]);
    first.start().await.unwrap();
    seconds(8 * 60).await;
    drop(first);
    // Down from 09:58 to 10:03: the 10:00 fire is 3 minutes old.
    seconds(5 * 60).await;
    let mut second = engine(store.clone(), &pve, &clock, None, vec![hourly()]);
    let start = second.start().await.unwrap();
    assert_eq!((start.late_fires, start.missed), (1, 0));
    assert_eq!(fire(&mut second, &clock).await, 1);
    assert_eq!(fire(&mut second, &clock).await, 0);
    assert_eq!(pve.executes().len(), 1);
    assert_eq!(
        second.next_deadline(),
        Some(base() + TimeDelta::minutes(70))
    );
}

#[tokio::test(start_paused = true)]
async fn a_timer_at_missed_beyond_the_grace_is_recorded_as_missed_and_not_run() {
    let pve = pve();
    let store: Arc<dyn EngineStore> = Arc::new(MemoryStore::default());
    let clock = clock();
    let hourly = || policy(1, 10, HOURLY, "vm", &vms("101"), SHUTDOWN_VMS);
    let mut first = engine(store.clone(), &pve, &clock, None, vec![hourly()]);
    first.start().await.unwrap();
    drop(first);
    // Down from 09:50 to 10:20: the 10:00 fire is 20 minutes old.
    seconds(30 * 60).await;
    let mut second = engine(store.clone(), &pve, &clock, None, vec![hourly()]);
    let start = second.start().await.unwrap();
    assert_eq!((start.late_fires, start.missed), (0, 1));
    assert_eq!(fire(&mut second, &clock).await, 0);
    assert!(pve.executes().is_empty());
    let missed = audit_kinds(store.as_ref(), TIMER_MISSED);
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0]["missed"], json!(["2026-11-22T10:00:00Z"]));
}

#[tokio::test(start_paused = true)]
async fn a_timer_at_fires_at_its_time_while_the_agent_runs_and_records_the_check() {
    let pve = pve();
    let store: Arc<dyn EngineStore> = Arc::new(MemoryStore::default());
    let clock = clock();
    let hourly = policy(1, 10, HOURLY, "vm", &vms("101"), SHUTDOWN_VMS);
    let mut engine = engine(store.clone(), &pve, &clock, None, vec![hourly]);
    engine.start().await.unwrap();
    assert_eq!(
        engine.next_deadline(),
        Some(base() + TimeDelta::minutes(10))
    );
    seconds(9 * 60).await;
    assert_eq!(fire(&mut engine, &clock).await, 0);
    seconds(60).await;
    assert_eq!(fire(&mut engine, &clock).await, 1);
    assert_eq!(pve.executes().len(), 1);
    let checks = store.timer_checks().unwrap();
    assert_eq!(checks[0].checked_at, base() + TimeDelta::minutes(10));
    assert_eq!(
        engine.next_deadline(),
        Some(base() + TimeDelta::minutes(70))
    );
}

#[tokio::test(start_paused = true)]
async fn a_self_poweroff_item_waits_for_the_engine_to_flush_the_ledger() {
    let pve = pve();
    let store = Arc::new(MemoryStore::default());
    let clock = clock();
    let vms_first = policy(1, 10, ON_BATTERY, "vm", &vms("101"), SHUTDOWN_VMS);
    let node_last = policy(
        2,
        20,
        ON_BATTERY,
        "host",
        "{ mode: list, value: \"pve-01\" }",
        "{ capability_id: proxmox.node, verb: shutdown }",
    );
    let mut engine = engine(
        store.clone(),
        &pve,
        &clock,
        Some("pve-01"),
        vec![vms_first, node_last],
    );
    engine.handle_event(&ups("on_battery")).await.unwrap();
    // Nobody reads the engine's reports: the VM run is not in the ledger,
    // so the node shutdown waits for the flush (a sleep lets every task run).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(pve.executes().len(), 1);
    assert!(store.runs(Uuid::from_u128(1), 30).unwrap().is_empty());
    // The next event lets the engine answer the flush (not the mains
    // returning: that cancels the node shutdown before it starts).
    engine.handle_event(&webhook("deploy")).await.unwrap();
    assert_eq!(store.runs(Uuid::from_u128(1), 30).unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pve.executes().len(), 2);
    let runs = engine.settle().await.unwrap();
    assert_eq!(runs.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_restart_starts_without_edge_state_so_the_next_outage_is_an_edge() {
    // The agent powered off on battery; the mains came back while it was
    // down and the NUT source's first reading after start is a silent
    // baseline, so the engine never sees that outage end. The next
    // `on_battery` must still fire: a remembered "on battery" would skip
    // the shutdown of the next outage.
    let pve = pve();
    let store: Arc<dyn EngineStore> = Arc::new(MemoryStore::default());
    let clock = clock();
    let on_battery = || {
        let mut p = policy(
            7,
            10,
            "{ type: ups.state, equals: on_battery }",
            "vm",
            &vms("101"),
            SHUTDOWN_VMS,
        );
        p.ir.windows.suppression_s = 0;
        p.ir.windows.idempotency_s = 0;
        p
    };
    let mut first = engine(store.clone(), &pve, &clock, None, vec![on_battery()]);
    let report = first.handle_event(&ups("on_battery")).await.unwrap();
    assert_eq!(report.decisions[0].code, "engine.scheduled");
    first.settle().await.unwrap();
    drop(first);

    pve.set_status("vm:101", "running");
    seconds(3600).await;
    let mut second = engine(store.clone(), &pve, &clock, None, vec![on_battery()]);
    second.start().await.unwrap();
    let report = second.handle_event(&ups("on_battery")).await.unwrap();
    assert_eq!(report.decisions[0].code, "engine.scheduled");
    second.settle().await.unwrap();
    assert_eq!(pve.status("vm:101").as_deref(), Some("stopped"));
    assert_eq!(pve.executes().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_removed_policy_forgets_its_countdown() {
    let pve = pve();
    let store: Arc<dyn EngineStore> = Arc::new(MemoryStore::default());
    let clock = clock();
    let mut engine = engine(store.clone(), &pve, &clock, None, vec![held_policy()]);
    engine.handle_event(&ups("on_battery")).await.unwrap();
    assert_eq!(store.deadlines().unwrap().len(), 1);
    assert!(engine.remove_policy(Uuid::from_u128(1)).unwrap());
    assert!(!engine.remove_policy(Uuid::from_u128(1)).unwrap());
    assert!(store.deadlines().unwrap().is_empty());
    assert_eq!(engine.next_deadline(), None);
    seconds(600).await;
    assert_eq!(fire(&mut engine, &clock).await, 0);
    assert!(pve.executes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn reloading_an_unchanged_policy_keeps_its_running_countdown() {
    // Enable on an enabled policy reloads it: a UPS already on battery will
    // not publish again, so the countdown must survive the reload.
    let pve = pve();
    let store: Arc<dyn EngineStore> = Arc::new(MemoryStore::default());
    let clock = clock();
    let mut engine = engine(store.clone(), &pve, &clock, None, vec![held_policy()]);
    engine.handle_event(&ups("on_battery")).await.unwrap();
    seconds(60).await;
    engine.load_policy(held_policy()).unwrap();
    assert_eq!(store.deadlines().unwrap().len(), 1);
    seconds(60).await;
    assert_eq!(fire(&mut engine, &clock).await, 1);
    assert_eq!(pve.status("vm:101").as_deref(), Some("stopped"));

    // A changed policy starts clean, and its cancelled countdown is audited.
    engine.handle_event(&ups("on_mains")).await.unwrap();
    engine.handle_event(&ups("on_battery")).await.unwrap();
    let changed = policy(1, 10, ON_BATTERY_120S, "vm", &vms("101,102"), SHUTDOWN_VMS);
    engine.load_policy(changed).unwrap();
    assert!(store.deadlines().unwrap().is_empty());
    assert_eq!(
        audit_kinds(store.as_ref(), "engine.countdown_cancelled").len(),
        1
    );
}

/// A store whose writes can be made to fail, as a full disk would.
struct Flaky {
    inner: MemoryStore,
    failing: std::sync::atomic::AtomicBool,
}

impl EngineStore for Flaky {
    fn write(
        &self,
        batch: &[agent::engine::store::Write],
    ) -> agent::engine::store::StoreResult<()> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(agent::engine::store::StoreError::Corrupt {
                what: "test",
                value: "writes refused".into(),
            });
        }
        self.inner.write(batch)
    }
    fn waiting_retries(
        &self,
    ) -> agent::engine::store::StoreResult<Vec<agent::engine::store::RetryRecord>> {
        self.inner.waiting_retries()
    }
    fn follow_ups(
        &self,
    ) -> agent::engine::store::StoreResult<Vec<agent::engine::store::FollowUpRecord>> {
        self.inner.follow_ups()
    }
    fn window_state(
        &self,
        id: Uuid,
    ) -> agent::engine::store::StoreResult<agent::engine::store::WindowState> {
        self.inner.window_state(id)
    }
    fn key_ran_at(&self, key: &str) -> agent::engine::store::StoreResult<Option<DateTime<Utc>>> {
        self.inner.key_ran_at(key)
    }
    fn deadlines(
        &self,
    ) -> agent::engine::store::StoreResult<Vec<agent::engine::store::DeadlineRecord>> {
        self.inner.deadlines()
    }
    fn timer_checks(
        &self,
    ) -> agent::engine::store::StoreResult<Vec<agent::engine::store::TimerCheckRecord>> {
        self.inner.timer_checks()
    }
    fn open_intents(
        &self,
    ) -> agent::engine::store::StoreResult<Vec<agent::engine::store::IntentRecord>> {
        self.inner.open_intents()
    }
    fn intent(
        &self,
        id: &agent::engine::store::IntentId,
    ) -> agent::engine::store::StoreResult<Option<agent::engine::store::IntentEntry>> {
        self.inner.intent(id)
    }
    fn runs(
        &self,
        id: Uuid,
        limit: usize,
    ) -> agent::engine::store::StoreResult<Vec<agent::engine::store::RunRecord>> {
        self.inner.runs(id, limit)
    }
    fn latest_successful_run(
        &self,
        id: Uuid,
    ) -> agent::engine::store::StoreResult<Option<agent::engine::store::RunRecord>> {
        self.inner.latest_successful_run(id)
    }
    fn kill_switch(
        &self,
    ) -> agent::engine::store::StoreResult<agent::engine::store::KillSwitchState> {
        self.inner.kill_switch()
    }
    fn audit(
        &self,
        query: &AuditQuery,
    ) -> agent::engine::store::StoreResult<Vec<agent::engine::store::AuditEntry>> {
        self.inner.audit(query)
    }
    fn trigger_states(&self) -> agent::engine::store::StoreResult<Vec<(Uuid, Value)>> {
        self.inner.trigger_states()
    }
    fn subject_states(
        &self,
    ) -> agent::engine::store::StoreResult<Vec<agent::engine::store::SubjectState>> {
        self.inner.subject_states()
    }
    fn restore_entries(
        &self,
    ) -> agent::engine::store::StoreResult<Vec<agent::engine::store::RestoreEntry>> {
        self.inner.restore_entries()
    }
}

#[tokio::test(start_paused = true)]
async fn a_due_countdown_whose_run_cannot_be_stored_is_kept_and_fires_on_retry() {
    let pve = pve();
    let flaky = Arc::new(Flaky {
        inner: MemoryStore::default(),
        failing: std::sync::atomic::AtomicBool::new(false),
    });
    let store: Arc<dyn EngineStore> = flaky.clone();
    let clock = clock();
    let mut engine = engine(store.clone(), &pve, &clock, None, vec![held_policy()]);
    engine.handle_event(&ups("on_battery")).await.unwrap();
    seconds(120).await;
    flaky
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(engine.fire_due(clock()).await.is_err());
    assert!(pve.executes().is_empty());
    // Still due: the fire was put back, not dropped.
    assert_eq!(engine.next_deadline(), Some(clock()));
    flaky
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    seconds(1).await;
    assert_eq!(fire(&mut engine, &clock).await, 1);
    assert_eq!(pve.status("vm:101").as_deref(), Some("stopped"));
    assert_eq!(fire(&mut engine, &clock).await, 0, "fired once, not twice");
}

#[tokio::test(start_paused = true)]
async fn the_kill_switch_holds_items_when_the_store_cannot_write_and_release_needs_the_write() {
    // SPEC §12: the brake works first and is persisted second.
    let pve = pve();
    let flaky = Arc::new(Flaky {
        inner: MemoryStore::default(),
        failing: std::sync::atomic::AtomicBool::new(false),
    });
    let clock = clock();
    let mut engine = engine(flaky.clone(), &pve, &clock, None, vec![held_policy()]);
    engine.start().await.unwrap();
    flaky.failing.store(true, Ordering::SeqCst); // the disk is full
    assert!(!engine.pause("ops", "smoke in the rack").await.unwrap());
    assert!(
        !flaky.inner.kill_switch().unwrap().paused,
        "nothing was written"
    );
    flaky.failing.store(false, Ordering::SeqCst);
    engine.handle_event(&ups("on_battery")).await.unwrap();
    seconds(121).await;
    // Not `fire`: its settle would wait for the held item.
    let reports = engine.fire_due(clock()).await.unwrap();
    assert_eq!(reports.len(), 1);
    seconds(120).await;
    assert!(pve.executes().is_empty(), "a paused engine executed");
    assert_eq!(engine.pending_items(), 1, "the item is held, not lost");
    // Release needs the write.
    flaky.failing.store(true, Ordering::SeqCst);
    assert!(engine.resume().await.is_err());
    seconds(30).await;
    assert!(pve.executes().is_empty(), "a failed release released");
    flaky.failing.store(false, Ordering::SeqCst);
    engine.resume().await.unwrap();
    engine.settle().await.unwrap();
    assert_eq!(pve.executes().len(), 1);
}
