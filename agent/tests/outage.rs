//! The life of an outage across agent restarts (SPEC §1 level-based
//! sources, §6 "Outage lifecycle"), on a virtual clock over one SQLite file.
//!
//! A source's first reading after start is a level reading
//! (`subjects::level_event`), as the NUT source publishes it; a restart is
//! a new [`Engine`] over the same file, a crash the same without the
//! first engine finishing anything. Each test asserts the exact driver
//! calls made (verb, targets, virtual time).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use agent::engine::event::Event;
use agent::engine::runner::{
    Clock, Engine, Policy, CHANGED_SINCE, GAVE_UP, NOT_CONFIRMED, RETRY_STOPPED, TRIGGER_ENDED,
};
use agent::engine::store::RunStatus;
use agent::engine::subjects::UpsLevel;
use agent::nut::source::{change_event, Change};
use agent::spec::UpsState::{self, LowBattery, OnBattery, OnMains};
use chrono::TimeDelta;
use support::site::{call, reading, Site, UPS};
use support::{host_state, policy_at, range, ups, vm, ON_BATTERY, ON_MAINS};
use uuid::Uuid;

const ON_BATTERY_20S: &str = "{ type: ups.state, equals: on_battery, for: 20s }";
const LOW_BATTERY: &str = "{ type: ups.state, equals: low_battery }";
const CHARGE_UNDER_50_20S: &str =
    "{ type: metric.threshold, metric: charge_pct, op: \"<\", value: 50, for: 20s }";

/// A `charge_pct` reading of [`UPS`], as the NUT source publishes it.
fn charge(value: f64) -> Event {
    change_event(
        UPS,
        &Change::Metric {
            name: "charge_pct",
            value,
        },
    )
}

/// The NUT source's first reading after start, with the charge read.
fn reading_with_charge(states: &[UpsState], value: f64) -> Event {
    change_event(
        UPS,
        &Change::Level {
            states: states.to_vec(),
            metrics: BTreeMap::from([("charge_pct", value)]),
        },
    )
}

/// `pve-01` with two running VMs and one that was off before any outage.
fn site() -> Site {
    Site::new(&[
        ("vm:101", Some("running")),
        ("vm:102", Some("running")),
        ("vm:103", Some("stopped")),
    ])
}

/// Stop the running VMs 101-103 on battery (after `trigger`'s hold).
fn shutdown_on(trigger: &str) -> Policy {
    policy_at(
        1,
        10,
        trigger,
        "pve-01",
        "vm",
        &range("101-103"),
        &vm("shutdown"),
    )
}

/// The inverse: start what policy 1 stopped, when the mains return.
fn restore_on_mains() -> Policy {
    let selector = format!("{{ mode: ledger, value: \"{}\" }}", Uuid::from_u128(1));
    policy_at(2, 20, ON_MAINS, "pve-01", "vm", &selector, &vm("start"))
}

async fn seconds(n: u64) {
    tokio::time::advance(Duration::from_secs(n)).await;
}

/// Delivers what is due now and waits for the runs to finish.
async fn fire(engine: &mut Engine, clock: &Clock) {
    engine.fire_due(clock()).await.unwrap();
    engine.settle().await.unwrap();
}

async fn handle(engine: &mut Engine, event: &Event) {
    engine.handle_event(event).await.unwrap();
    engine.settle().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_restart_during_a_hold_with_the_mains_back_while_down_shuts_nothing_down() {
    let site = site();
    let mut first = site.start(vec![shutdown_on(ON_BATTERY_20S)]).await;
    handle(&mut first, &reading(&[OnMains])).await;
    seconds(5).await;
    handle(&mut first, &ups("on_battery")).await;
    seconds(8).await;
    drop(first); // SIGTERM 8 s into the 20 s hold

    seconds(30).await; // the mains return while the agent is down
    let mut second = site.start(vec![shutdown_on(ON_BATTERY_20S)]).await;
    // The original deadline passed while down: nothing fires before the
    // first reading confirms the outage.
    assert_eq!(second.next_deadline(), None);
    fire(&mut second, &site.clock).await;
    seconds(2).await;
    handle(&mut second, &reading(&[OnMains])).await;
    fire(&mut second, &site.clock).await;
    seconds(600).await;
    fire(&mut second, &site.clock).await;

    assert_eq!(site.calls(), []);
    let cancelled = site.audit("engine.countdown_cancelled");
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled[0]["reason"], NOT_CONFIRMED);
    assert!(site.store().deadlines().unwrap().is_empty());
    assert_eq!(
        second.known_levels().get(UPS),
        Some(&UpsLevel::from_states(&[OnMains]))
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_during_a_hold_still_on_battery_fires_at_the_original_deadline() {
    let site = site();
    let mut first = site.start(vec![shutdown_on(ON_BATTERY_20S)]).await;
    handle(&mut first, &reading(&[OnBattery])).await; // hold starts at 0 s
    seconds(8).await;
    drop(first);

    seconds(4).await;
    let mut second = site.start(vec![shutdown_on(ON_BATTERY_20S)]).await;
    handle(&mut second, &reading(&[OnBattery])).await; // 12 s: confirmed
    assert_eq!(
        second.next_deadline(),
        Some((site.clock)() + TimeDelta::seconds(8))
    );
    seconds(7).await;
    fire(&mut second, &site.clock).await;
    assert_eq!(site.calls(), []);
    seconds(1).await;
    fire(&mut second, &site.clock).await;
    assert_eq!(site.calls(), [call("shutdown", &["vm:101", "vm:102"], 20)]);
    assert!(site.audit("engine.countdown_cancelled").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_hold_whose_deadline_passed_while_down_fires_once_the_outage_is_confirmed() {
    let site = site();
    let mut first = site.start(vec![shutdown_on(ON_BATTERY_20S)]).await;
    handle(&mut first, &reading(&[OnBattery])).await;
    seconds(8).await;
    drop(first);

    seconds(60).await;
    let mut second = site.start(vec![shutdown_on(ON_BATTERY_20S)]).await;
    fire(&mut second, &site.clock).await;
    assert_eq!(site.calls(), [], "nothing runs before the first reading");
    seconds(2).await;
    handle(&mut second, &reading(&[OnBattery])).await;
    fire(&mut second, &site.clock).await;
    assert_eq!(site.calls(), [call("shutdown", &["vm:101", "vm:102"], 70)]);
}

#[tokio::test(start_paused = true)]
async fn the_mains_returning_while_the_agent_is_down_after_the_forward_ran_are_restored_at_start_exactly_once(
) {
    let site = site();
    let policies = || vec![shutdown_on(ON_BATTERY), restore_on_mains()];
    let mut first = site.start(policies()).await;
    handle(&mut first, &reading(&[OnMains])).await;
    seconds(1).await;
    handle(&mut first, &ups("on_battery")).await;
    drop(first); // the agent (or its host) goes down during the outage

    seconds(3600).await; // the mains return while it is down
    let mut second = site.start(policies()).await;
    handle(&mut second, &reading(&[OnMains])).await;
    drop(second);

    seconds(60).await; // another restart on mains: nothing more
    let mut third = site.start(policies()).await;
    handle(&mut third, &reading(&[OnMains])).await;

    assert_eq!(
        site.calls(),
        [
            call("shutdown", &["vm:101", "vm:102"], 1),
            call("start", &["vm:101", "vm:102"], 3601),
        ]
    );
    assert_eq!(site.pve.status("vm:103").as_deref(), Some("stopped"));
}

#[tokio::test(start_paused = true)]
async fn a_first_start_during_an_outage_acts_on_it_at_once() {
    let site = site();
    let mut engine = site
        .start(vec![shutdown_on(ON_BATTERY), restore_on_mains()])
        .await;
    handle(&mut engine, &reading(&[OnBattery])).await;
    assert_eq!(site.calls(), [call("shutdown", &["vm:101", "vm:102"], 0)]);
}

#[tokio::test(start_paused = true)]
async fn a_first_start_during_an_outage_acts_after_the_hold() {
    let site = site();
    let mut engine = site.start(vec![shutdown_on(ON_BATTERY_20S)]).await;
    seconds(3).await;
    handle(&mut engine, &reading(&[OnBattery])).await;
    seconds(19).await;
    fire(&mut engine, &site.clock).await;
    assert_eq!(site.calls(), []);
    seconds(1).await;
    fire(&mut engine, &site.clock).await;
    assert_eq!(site.calls(), [call("shutdown", &["vm:101", "vm:102"], 23)]);
}

#[tokio::test(start_paused = true)]
async fn a_start_with_low_battery_acts_on_the_low_battery() {
    let site = site();
    let last_resort = policy_at(
        3,
        0,
        LOW_BATTERY,
        "pve-01",
        "vm",
        &range("101-103"),
        &vm("stop"),
    );
    let mut engine = site.start(vec![last_resort]).await;
    handle(&mut engine, &reading(&[OnBattery, LowBattery])).await;
    assert_eq!(site.calls(), [call("stop", &["vm:101", "vm:102"], 0)]);
}

#[tokio::test(start_paused = true)]
async fn a_start_on_mains_fires_nothing_first_time_or_after_a_restart() {
    let site = site();
    let policies = || vec![shutdown_on(ON_BATTERY), restore_on_mains()];
    let mut first = site.start(policies()).await;
    handle(&mut first, &reading(&[OnMains])).await;
    drop(first);
    let mut second = site.start(policies()).await;
    handle(&mut second, &reading(&[OnMains])).await;
    assert_eq!(site.calls(), []);
}

#[tokio::test(start_paused = true)]
async fn the_next_outage_after_a_restart_on_mains_is_acted_on() {
    // The agent went down on battery and came back after the mains
    // returned: the reading ends the recorded outage, so the next
    // `on_battery` is an edge again.
    let site = site();
    let mut forward = shutdown_on(ON_BATTERY);
    forward.ir.windows.suppression_s = 0;
    forward.ir.windows.idempotency_s = 0;
    let mut first = site.start(vec![forward.clone()]).await;
    handle(&mut first, &reading(&[OnBattery])).await;
    drop(first);
    site.pve.set_status("vm:101", "running");
    site.pve.set_status("vm:102", "running");
    seconds(3600).await;
    let mut second = site.start(vec![forward]).await;
    handle(&mut second, &reading(&[OnMains])).await;
    seconds(60).await;
    handle(&mut second, &ups("on_battery")).await;
    assert_eq!(
        site.calls(),
        [
            call("shutdown", &["vm:101", "vm:102"], 0),
            call("shutdown", &["vm:101", "vm:102"], 3660),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_forward_run_fills_its_restore_set_and_the_inverse_empties_it() {
    let site = site();
    let mut engine = site
        .start(vec![shutdown_on(ON_BATTERY), restore_on_mains()])
        .await;
    handle(&mut engine, &reading(&[OnMains])).await;
    handle(&mut engine, &ups("on_battery")).await;
    assert_eq!(site.restore_set(1), ["vm:101", "vm:102"]);
    let set = engine.restore_set(Uuid::from_u128(1));
    assert_eq!(set[0].from.as_deref(), Some("running"));
    assert_eq!(set[0].to.as_deref(), Some("stopped"));
    seconds(60).await;
    handle(&mut engine, &ups("on_mains")).await;
    assert!(site.restore_set(1).is_empty());
    assert_eq!(
        site.calls(),
        [
            call("shutdown", &["vm:101", "vm:102"], 0),
            call("start", &["vm:101", "vm:102"], 60),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_operator_stopping_a_vm_after_a_restore_then_a_blip_makes_the_inverse_start_nothing() {
    let site = site();
    let mut engine = site
        .start(vec![shutdown_on(ON_BATTERY_20S), restore_on_mains()])
        .await;
    handle(&mut engine, &reading(&[OnMains])).await;
    handle(&mut engine, &ups("on_battery")).await;
    seconds(20).await;
    fire(&mut engine, &site.clock).await;
    seconds(40).await;
    handle(&mut engine, &ups("on_mains")).await;
    // The operator stops vm 101 on purpose.
    seconds(600).await;
    site.pve.set_status("vm:101", "stopped");
    // A one-second blip: the hold never runs out, the inverse fires again.
    handle(&mut engine, &ups("on_battery")).await;
    seconds(1).await;
    handle(&mut engine, &ups("on_mains")).await;
    assert_eq!(
        site.calls(),
        [
            call("shutdown", &["vm:101", "vm:102"], 20),
            call("start", &["vm:101", "vm:102"], 60),
        ],
        "the inverse replayed an outage that was already restored"
    );
    assert_eq!(site.pve.status("vm:101").as_deref(), Some("stopped"));
}

#[tokio::test(start_paused = true)]
async fn a_target_someone_changed_since_is_dropped_from_the_restore_set() {
    let site = site();
    let mut engine = site
        .start(vec![shutdown_on(ON_BATTERY), restore_on_mains()])
        .await;
    handle(&mut engine, &reading(&[OnMains])).await;
    handle(&mut engine, &ups("on_battery")).await;
    // Someone starts vm 102 by hand during the outage.
    site.pve.set_status("vm:102", "running");
    seconds(60).await;
    let report = engine.handle_event(&ups("on_mains")).await.unwrap();
    engine.settle().await.unwrap();
    let inverse = &report.decisions[0];
    assert!(
        inverse
            .skipped
            .iter()
            .any(|r| r.target == "vm:102" && r.code.as_deref() == Some(CHANGED_SINCE)),
        "{inverse:?}"
    );
    assert_eq!(
        site.calls(),
        [
            call("shutdown", &["vm:101", "vm:102"], 0),
            call("start", &["vm:101"], 60),
        ]
    );
    assert!(site.restore_set(1).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_crash_mid_run_then_the_mains_restore_the_targets_reconciliation_found_stopped() {
    let site = site();
    let policies = || vec![shutdown_on(ON_BATTERY), restore_on_mains()];
    *site.pve.latency.lock().unwrap() = Duration::from_secs(10);
    let mut first = site.start(policies()).await;
    handle_only(&mut first, &reading(&[OnMains])).await;
    handle_only(&mut first, &ups("on_battery")).await;
    seconds(1).await;
    drop(first); // SIGKILL while the shutdown runs
                 // The request had reached the host, which finishes the shutdowns.
    seconds(20).await;
    site.pve.set_status("vm:101", "stopped");
    site.pve.set_status("vm:102", "stopped");

    *site.pve.latency.lock().unwrap() = Duration::ZERO;
    let mut second = site.start(policies()).await;
    assert_eq!(site.restore_set(1), ["vm:101", "vm:102"]);
    handle(&mut second, &reading(&[OnMains])).await;
    assert_eq!(
        site.calls(),
        [
            call("shutdown", &["vm:101", "vm:102"], 0),
            call("start", &["vm:101", "vm:102"], 21),
        ]
    );
    assert!(site.restore_set(1).is_empty());
}

#[tokio::test(start_paused = true)]
async fn outage_mains_outage_mains_inside_every_window_acts_and_restores_each_time() {
    let site = site();
    let mut engine = site
        .start(vec![shutdown_on(ON_BATTERY), restore_on_mains()])
        .await;
    handle(&mut engine, &reading(&[OnMains])).await;
    handle(&mut engine, &ups("on_battery")).await;
    seconds(30).await;
    handle(&mut engine, &ups("on_mains")).await;
    seconds(30).await;
    handle(&mut engine, &ups("on_battery")).await;
    seconds(30).await;
    handle(&mut engine, &ups("on_mains")).await;
    let both = ["vm:101", "vm:102"];
    assert_eq!(
        site.calls(),
        [
            call("shutdown", &both, 0),
            call("start", &both, 30),
            call("shutdown", &both, 60),
            call("start", &both, 90),
        ]
    );
}

/// Handles an event without waiting for its runs (a crash may follow).
async fn handle_only(engine: &mut Engine, event: &Event) {
    engine.handle_event(event).await.unwrap();
}

/// The runs of policy `id`, newest first.
fn runs(site: &Site, id: u128) -> Vec<agent::engine::store::RunRecord> {
    site.store().runs(Uuid::from_u128(id), 30).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_host_unreachable_when_the_policy_fires_and_back_30s_later_is_shut_down_on_retry() {
    let site = site();
    let mut engine = site.start(vec![shutdown_on(ON_BATTERY)]).await;
    handle(&mut engine, &reading(&[OnMains])).await;
    handle(&mut engine, &host_state("pve-01", false)).await;
    handle(&mut engine, &ups("on_battery")).await;
    // Retries at 5 s and 15 s find the host still unreachable.
    for _ in 0..29 {
        seconds(1).await;
        fire(&mut engine, &site.clock).await;
    }
    assert_eq!(site.calls(), []);
    seconds(1).await;
    handle(&mut engine, &host_state("pve-01", true)).await;
    // The next retry (35 s: 5 + 10 + 20) shuts them down.
    for _ in 0..10 {
        seconds(1).await;
        fire(&mut engine, &site.clock).await;
    }
    assert_eq!(site.calls(), [call("shutdown", &["vm:101", "vm:102"], 35)]);
    let runs = runs(&site, 1);
    assert_eq!(runs.len(), 1, "every attempt is in one run");
    assert_eq!(runs[0].status, RunStatus::Ok, "{:?}", runs[0].results);
    let unreachable = runs[0]
        .results
        .iter()
        .filter(|r| r.code.as_deref() == Some("engine.host_unreachable"))
        .count();
    // Three failed attempts on the three VMs of the range (vm:103, off
    // already, is found in the desired state by the attempt that succeeds).
    assert_eq!(unreachable, 9);
    assert_eq!(site.restore_set(1), ["vm:101", "vm:102"]);
}

#[tokio::test(start_paused = true)]
async fn the_trigger_ending_during_retries_stops_them() {
    let site = site();
    let mut engine = site.start(vec![shutdown_on(ON_BATTERY)]).await;
    handle(&mut engine, &reading(&[OnMains])).await;
    handle(&mut engine, &host_state("pve-01", false)).await;
    handle(&mut engine, &ups("on_battery")).await;
    seconds(10).await;
    fire(&mut engine, &site.clock).await;
    handle(&mut engine, &ups("on_mains")).await;
    handle(&mut engine, &host_state("pve-01", true)).await;
    for _ in 0..120 {
        seconds(1).await;
        fire(&mut engine, &site.clock).await;
    }
    assert_eq!(site.calls(), [], "a shutdown ran after the mains returned");
    let runs = runs(&site, 1);
    assert_eq!(runs.len(), 1);
    assert!(
        runs[0]
            .results
            .iter()
            .any(|r| r.code.as_deref() == Some(RETRY_STOPPED)),
        "{:?}",
        runs[0].results
    );
    assert_eq!(engine.next_deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn a_driver_error_is_retried_in_the_same_run_and_attempts_run_out_with_gave_up() {
    let site = site();
    let retried = policy_at(
        1,
        10,
        ON_BATTERY,
        "pve-01",
        "vm",
        &range("101-103"),
        "{ capability_id: proxmox.vm, verb: shutdown, retry: { attempts: 2, backoff: 1s } }",
    );
    site.pve.erroring.lock().unwrap().insert("shutdown".into());
    let mut engine = site.start(vec![retried]).await;
    handle(&mut engine, &reading(&[OnMains])).await;
    handle(&mut engine, &ups("on_battery")).await;
    for _ in 0..10 {
        seconds(1).await;
        fire(&mut engine, &site.clock).await;
    }
    let both = ["vm:101", "vm:102"];
    // The first attempt, then retries after 1 s and 2 s more.
    assert_eq!(
        site.calls(),
        [
            call("shutdown", &both, 0),
            call("shutdown", &both, 1),
            call("shutdown", &both, 3)
        ]
    );
    let runs = runs(&site, 1);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Failed);
    let gave_up: Vec<&str> = runs[0]
        .results
        .iter()
        .filter(|r| r.code.as_deref() == Some(GAVE_UP))
        .map(|r| r.target.as_str())
        .collect();
    assert_eq!(gave_up, both);
}

#[tokio::test(start_paused = true)]
async fn a_driver_error_that_clears_is_done_on_retry_and_the_run_is_ok() {
    let site = site();
    site.pve.erroring.lock().unwrap().insert("shutdown".into());
    let mut engine = site.start(vec![shutdown_on(ON_BATTERY)]).await;
    handle(&mut engine, &reading(&[OnMains])).await;
    handle(&mut engine, &ups("on_battery")).await;
    site.pve.erroring.lock().unwrap().clear();
    for _ in 0..6 {
        seconds(1).await;
        fire(&mut engine, &site.clock).await;
    }
    let both = ["vm:101", "vm:102"];
    assert_eq!(
        site.calls(),
        [call("shutdown", &both, 0), call("shutdown", &both, 5)]
    );
    let runs = runs(&site, 1);
    assert_eq!(runs[0].status, RunStatus::Ok, "{:?}", runs[0].results);
    assert_eq!(engine.next_deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn retries_are_off_with_attempts_zero() {
    let site = site();
    let once = policy_at(
        1,
        10,
        ON_BATTERY,
        "pve-01",
        "vm",
        &range("101-103"),
        "{ capability_id: proxmox.vm, verb: shutdown, retry: { attempts: 0 } }",
    );
    site.pve.erroring.lock().unwrap().insert("shutdown".into());
    let mut engine = site.start(vec![once]).await;
    handle(&mut engine, &reading(&[OnMains])).await;
    handle(&mut engine, &ups("on_battery")).await;
    seconds(600).await;
    fire(&mut engine, &site.clock).await;
    assert_eq!(site.calls().len(), 1);
    assert_eq!(engine.next_deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn a_vm_started_by_hand_while_the_inverse_waits_to_retry_leaves_the_restore_set() {
    let site = site();
    let mut engine = site
        .start(vec![shutdown_on(ON_BATTERY), restore_on_mains()])
        .await;
    handle(&mut engine, &reading(&[OnMains])).await;
    handle(&mut engine, &ups("on_battery")).await;
    seconds(1).await;
    handle(&mut engine, &host_state("pve-01", false)).await;
    handle(&mut engine, &ups("on_mains")).await; // the inverse fails: retry at 6 s
    seconds(1).await;
    site.pve.set_status("vm:101", "running"); // started by hand
    handle(&mut engine, &host_state("pve-01", true)).await;
    for _ in 0..10 {
        seconds(1).await;
        fire(&mut engine, &site.clock).await;
    }
    assert_eq!(
        site.calls(),
        [
            call("shutdown", &["vm:101", "vm:102"], 0),
            call("start", &["vm:102"], 6),
        ]
    );
    // Nothing is left to restore, so the next outage is acted on.
    assert!(site.restore_set(1).is_empty(), "{:?}", site.restore_set(1));
}

#[tokio::test(start_paused = true)]
async fn a_second_outage_inside_the_inverses_window_is_restored_though_an_operator_kept_a_vm_off() {
    let site = site();
    let mut engine = site
        .start(vec![shutdown_on(ON_BATTERY), restore_on_mains()])
        .await;
    handle(&mut engine, &reading(&[OnMains])).await;
    handle(&mut engine, &ups("on_battery")).await;
    seconds(30).await;
    handle(&mut engine, &ups("on_mains")).await;
    // The operator stops vm 101 by hand; a second outage a minute later.
    site.pve.set_status("vm:101", "stopped");
    seconds(30).await;
    handle(&mut engine, &ups("on_battery")).await;
    seconds(30).await;
    handle(&mut engine, &ups("on_mains")).await;
    assert_eq!(
        site.calls(),
        [
            call("shutdown", &["vm:101", "vm:102"], 0),
            call("start", &["vm:101", "vm:102"], 30),
            call("shutdown", &["vm:102"], 60),
            call("start", &["vm:102"], 90),
        ],
        "the inverse's window held back a restore its forward still owed"
    );
    assert_eq!(site.pve.status("vm:101").as_deref(), Some("stopped"));
}

#[tokio::test(start_paused = true)]
async fn a_stop_undoes_a_start_so_the_next_start_is_not_suppressed_as_idempotent() {
    let site = site();
    let mut start = policy_at(4, 20, ON_MAINS, "pve-01", "vm", &range("103"), &vm("start"));
    start.ir.windows.suppression_s = 0;
    let mut stop = policy_at(
        5,
        0,
        LOW_BATTERY,
        "pve-01",
        "vm",
        &range("103"),
        &vm("stop"),
    );
    stop.ir.windows.suppression_s = 0;
    let mut engine = site.start(vec![start, stop]).await;
    handle(&mut engine, &reading(&[OnBattery])).await;
    handle(&mut engine, &ups("on_mains")).await;
    seconds(10).await;
    handle(&mut engine, &ups("on_battery")).await;
    handle(&mut engine, &ups("low_battery")).await;
    seconds(10).await;
    handle(&mut engine, &ups("on_mains")).await;
    assert_eq!(
        site.calls(),
        [
            call("start", &["vm:103"], 0),
            call("stop", &["vm:103"], 10),
            call("start", &["vm:103"], 20),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_waiting_for_its_delay_at_a_restart_is_planned_again_and_restores_the_vms() {
    let site = site();
    let policies = || vec![shutdown_on(ON_BATTERY), restore_on_mains()];
    let mut first = site.start(policies()).await;
    handle(&mut first, &reading(&[OnMains])).await;
    handle(&mut first, &ups("on_battery")).await;
    seconds(30).await;
    handle(&mut first, &host_state("pve-01", false)).await;
    handle(&mut first, &ups("on_mains")).await; // the inverse fails: retry at 35 s
    seconds(2).await;
    drop(first); // a restart while the retry waits
    assert_eq!(site.store().waiting_retries().unwrap().len(), 1);

    seconds(10).await;
    let (mut second, report) = site.start_with_report(policies()).await;
    assert_eq!(report.waiting_retries, 1);
    handle(&mut second, &host_state("pve-01", false)).await;
    assert_eq!(
        second.next_deadline(),
        None,
        "nothing before the first reading"
    );
    seconds(2).await;
    // 44 s: the reading confirms the mains; the retry is due at 49 s (its
    // backoff starts afresh), then 59 s.
    handle(&mut second, &reading(&[OnMains])).await;
    for _ in 0..11 {
        seconds(1).await;
        fire(&mut second, &site.clock).await;
    }
    assert_eq!(site.calls().len(), 1, "the host is still unreachable");
    handle(&mut second, &host_state("pve-01", true)).await; // 55 s
    for _ in 0..60 {
        seconds(1).await;
        fire(&mut second, &site.clock).await;
    }
    assert_eq!(
        site.calls(),
        [
            call("shutdown", &["vm:101", "vm:102"], 0),
            call("start", &["vm:101", "vm:102"], 59),
        ]
    );
    assert!(site.restore_set(1).is_empty(), "{:?}", site.restore_set(1));
    assert!(site.store().waiting_retries().unwrap().is_empty());
    let decided = site.audit("engine.restart_retry");
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert_eq!(decided[0]["waiting_retry"], 1);
    assert_eq!(decided[0]["decision"], "scheduled");
}

#[tokio::test(start_paused = true)]
async fn a_retry_waiting_at_a_restart_whose_trigger_ended_while_down_is_dropped() {
    let site = site();
    let policies = || vec![shutdown_on(ON_BATTERY)];
    let mut first = site.start(policies()).await;
    handle(&mut first, &reading(&[OnMains])).await;
    handle(&mut first, &host_state("pve-01", false)).await;
    handle(&mut first, &ups("on_battery")).await; // retry at 5 s
    seconds(2).await;
    drop(first);

    seconds(10).await;
    let mut second = site.start(policies()).await;
    seconds(2).await;
    handle(&mut second, &reading(&[OnMains])).await; // the outage ended while down
    for _ in 0..120 {
        seconds(1).await;
        fire(&mut second, &site.clock).await;
    }
    assert_eq!(site.calls(), [], "a shutdown ran after the mains returned");
    assert!(site.store().waiting_retries().unwrap().is_empty());
    assert_eq!(second.next_deadline(), None);
    assert_eq!(
        site.audit("engine.restart_retry")[0]["decision"],
        "not_held"
    );
}

#[tokio::test(start_paused = true)]
async fn the_mains_returning_while_the_shutdown_still_runs_restore_the_vms_after_it() {
    let site = site();
    site.pve
        .latencies
        .lock()
        .unwrap()
        .push_back(Duration::from_secs(8));
    site.pve
        .latencies
        .lock()
        .unwrap()
        .push_back(Duration::from_millis(200));
    let mut engine = site
        .start(vec![shutdown_on(ON_BATTERY), restore_on_mains()])
        .await;
    handle(&mut engine, &reading(&[OnMains])).await;
    handle_only(&mut engine, &ups("on_battery")).await; // the shutdown runs 0-8 s
    seconds(3).await;
    handle(&mut engine, &ups("on_mains")).await;
    assert_eq!(
        site.calls(),
        [
            call("shutdown", &["vm:101", "vm:102"], 0),
            call("start", &["vm:101", "vm:102"], 8),
        ],
        "the inverse found nothing to restore while the shutdown ran"
    );
    for vm in ["vm:101", "vm:102"] {
        assert_eq!(site.pve.status(vm).as_deref(), Some("running"), "{vm}");
    }
    assert_eq!(site.pve.status("vm:103").as_deref(), Some("stopped"));
    assert!(site.restore_set(1).is_empty(), "{:?}", site.restore_set(1));
    // The next outage is acted on.
    seconds(60).await;
    handle(&mut engine, &ups("on_battery")).await;
    assert_eq!(site.calls().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_power_off_still_queued_when_the_mains_return_never_starts() {
    let site = Site::new(&[
        ("vm:101", Some("running")),
        ("vm:102", Some("running")),
        ("vm:104", Some("running")),
    ]);
    // The outage shutdown takes 8 s; the low-battery stop queues behind it.
    site.pve
        .latencies
        .lock()
        .unwrap()
        .extend([Duration::from_secs(8), Duration::from_millis(200)]);
    let low = policy_at(
        3,
        5,
        LOW_BATTERY,
        "pve-01",
        "vm",
        &range("101-104"),
        &vm("stop"),
    );
    let mut engine = site
        .start(vec![shutdown_on(ON_BATTERY), restore_on_mains(), low])
        .await;
    handle(&mut engine, &reading(&[OnMains])).await;
    handle_only(&mut engine, &ups("on_battery")).await; // shutdown runs 0-8 s
    handle_only(&mut engine, &ups("low_battery")).await; // stop queued behind it
    seconds(3).await;
    handle(&mut engine, &ups("on_mains")).await;
    seconds(600).await;
    fire(&mut engine, &site.clock).await;

    assert_eq!(
        site.calls(),
        [
            call("shutdown", &["vm:101", "vm:102"], 0),
            call("start", &["vm:101", "vm:102"], 8),
        ],
        "the stop queued for the low battery did not start on mains"
    );
    assert_eq!(site.pve.status("vm:104").as_deref(), Some("running"));
    let ended = site.audit(TRIGGER_ENDED);
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0]["verb"], "stop");
    assert_eq!(
        ended[0]["targets"],
        serde_json::json!(["vm:101", "vm:102", "vm:104"])
    );
    let low_runs = runs(&site, 3);
    assert_eq!(low_runs.len(), 1);
    assert_eq!(low_runs[0].status, RunStatus::Cancelled);
    let codes: Vec<_> = low_runs[0]
        .results
        .iter()
        .filter(|r| r.code.as_deref() == Some(TRIGGER_ENDED))
        .map(|r| (r.target.as_str(), r.changed))
        .collect();
    assert_eq!(
        codes,
        [("vm:101", false), ("vm:102", false), ("vm:104", false)]
    );
    assert!(site.restore_set(3).is_empty());
    // The next low battery is acted on (the cancelled stop left no key).
    handle(&mut engine, &ups("on_battery")).await;
    handle(&mut engine, &ups("low_battery")).await;
    let stops: Vec<_> = site
        .calls()
        .into_iter()
        .filter(|(verb, _, _)| verb == "stop")
        .collect();
    assert_eq!(stops.len(), 1, "{stops:?}");
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_cancelled_before_it_started_is_not_in_its_inverses_restore_set() {
    let site = Site::new(&[
        ("vm:101", Some("running")),
        ("vm:102", Some("running")),
        ("vm:104", Some("running")),
    ]);
    // Another policy's stop runs 0-8 s on the host; the outage shutdown
    // (policy 1, on the low battery) queues behind it.
    site.pve
        .latencies
        .lock()
        .unwrap()
        .extend([Duration::from_secs(8), Duration::from_millis(200)]);
    let other = policy_at(4, 5, ON_BATTERY, "pve-01", "vm", &range("104"), &vm("stop"));
    let mut engine = site
        .start(vec![shutdown_on(LOW_BATTERY), restore_on_mains(), other])
        .await;
    handle(&mut engine, &reading(&[OnMains])).await;
    handle_only(&mut engine, &ups("on_battery")).await; // the stop runs 0-8 s
    handle_only(&mut engine, &ups("low_battery")).await; // shutdown queued
    seconds(3).await;
    handle(&mut engine, &ups("on_mains")).await;
    seconds(600).await;
    fire(&mut engine, &site.clock).await;

    // The running stop finished (a started call is never dropped); the
    // queued shutdown never reached the driver, so the inverse restores
    // nothing (vm:101 and vm:102 never stopped).
    assert_eq!(site.calls(), [call("stop", &["vm:104"], 0)]);
    assert_eq!(site.pve.status("vm:104").as_deref(), Some("stopped"));
    let other_runs = runs(&site, 4);
    assert_eq!(other_runs.len(), 1);
    assert_eq!(other_runs[0].status, RunStatus::Ok);
    assert!(other_runs[0].results.iter().any(|r| r.changed));
    let forward = runs(&site, 1);
    assert_eq!(forward.len(), 1);
    assert_eq!(forward[0].status, RunStatus::Cancelled);
    assert!(forward[0]
        .results
        .iter()
        .all(|r| r.code.as_deref() == Some(TRIGGER_ENDED) && !r.changed));
    assert!(site.restore_set(1).is_empty(), "{:?}", site.restore_set(1));
    let inverse = runs(&site, 2);
    assert!(
        inverse
            .iter()
            .all(|run| run.results.iter().all(|r| !r.changed)),
        "{inverse:?}"
    );
    for vm in ["vm:101", "vm:102"] {
        assert_eq!(site.pve.status(vm).as_deref(), Some("running"), "{vm}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_restored_charge_hold_whose_deadline_passed_is_dropped_when_the_first_reading_shows_it_recharged(
) {
    let site = site();
    let policies = || vec![shutdown_on(CHARGE_UNDER_50_20S)];
    let mut first = site.start(policies()).await;
    handle(&mut first, &reading(&[OnBattery])).await;
    handle(&mut first, &charge(40.0)).await; // the hold starts at 0 s
    seconds(8).await;
    drop(first);

    seconds(30).await; // recharged while the agent was down
    let mut second = site.start(policies()).await;
    assert_eq!(second.next_deadline(), None);
    handle(&mut second, &reading_with_charge(&[OnMains], 80.0)).await;
    fire(&mut second, &site.clock).await;
    seconds(600).await;
    fire(&mut second, &site.clock).await;

    assert_eq!(site.calls(), [], "a shutdown ran on a charged battery");
    let cancelled = site.audit("engine.countdown_cancelled");
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled[0]["reason"], NOT_CONFIRMED);
    assert!(site.store().deadlines().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_restored_charge_hold_still_ahead_is_dropped_when_the_first_reading_shows_it_recharged() {
    let site = site();
    let policies = || vec![shutdown_on(CHARGE_UNDER_50_20S)];
    let mut first = site.start(policies()).await;
    handle(&mut first, &reading(&[OnBattery])).await;
    handle(&mut first, &charge(40.0)).await;
    seconds(8).await;
    drop(first);

    seconds(4).await;
    let mut second = site.start(policies()).await;
    handle(&mut second, &reading_with_charge(&[OnBattery], 60.0)).await; // 12 s
    assert_eq!(second.next_deadline(), None);
    seconds(600).await;
    fire(&mut second, &site.clock).await;

    assert_eq!(site.calls(), []);
    let cancelled = site.audit("engine.countdown_cancelled");
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled[0]["reason"], NOT_CONFIRMED);
    assert!(site.store().deadlines().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_restored_charge_hold_the_first_reading_confirms_fires_at_the_original_deadline() {
    let site = site();
    let policies = || vec![shutdown_on(CHARGE_UNDER_50_20S)];
    let mut first = site.start(policies()).await;
    handle(&mut first, &reading(&[OnBattery])).await;
    handle(&mut first, &charge(40.0)).await;
    seconds(8).await;
    drop(first);

    seconds(4).await;
    let mut second = site.start(policies()).await;
    handle(&mut second, &reading_with_charge(&[OnBattery], 35.0)).await; // 12 s
    assert_eq!(
        second.next_deadline(),
        Some((site.clock)() + TimeDelta::seconds(8))
    );
    seconds(7).await;
    fire(&mut second, &site.clock).await;
    assert_eq!(site.calls(), []);
    seconds(1).await;
    fire(&mut second, &site.clock).await;
    assert_eq!(site.calls(), [call("shutdown", &["vm:101", "vm:102"], 20)]);
    assert!(site.audit("engine.countdown_cancelled").is_empty());
}
