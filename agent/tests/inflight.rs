//! Work in flight when the agent dies (SPEC §6 "Persistence and restarts"):
//! device tasks reported before the driver waited for them are waited for
//! at the next start, and an interrupted intent is sent again only when
//! its verb is repeatable and its trigger still holds. On a virtual clock
//! over one SQLite file; a crash is dropping the engine mid-run after its
//! scheduler aborted the running executes. The fake device finishes the tasks it
//! reported; a plain execute dropped before its latency ran out never
//! reached the device (its request is recorded, its effect never happens).

mod support;

use std::time::Duration;

use agent::engine::event::Event;
use agent::engine::runner::{Clock, Engine, Policy};
use agent::engine::store::RunStatus;
use agent::spec::UpsState::{OnBattery, OnMains};
use support::site::{call, reading, Site};
use support::{policy_at, range, ups, vm, ON_BATTERY, ON_MAINS};
use uuid::Uuid;

/// `pve-01` with three running VMs.
fn site() -> Site {
    Site::new(&[
        ("vm:100", Some("running")),
        ("vm:101", Some("running")),
        ("vm:102", Some("running")),
    ])
}

const ALL: [&str; 3] = ["vm:100", "vm:101", "vm:102"];

/// Policy 1: `verb` VMs 100-102 when the UPS goes on battery.
fn on_battery(verb: &str) -> Policy {
    policy_at(
        1,
        10,
        ON_BATTERY,
        "pve-01",
        "vm",
        &range("100-102"),
        &vm(verb),
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

/// SIGKILL: the running executes stop where they are and nothing of
/// them is recorded (the engine goes without reading their reports).
async fn crash(engine: Engine) {
    engine.scheduler().cancel_all().await.unwrap();
    drop(engine);
}

/// Handles an event without waiting for its runs (a crash may follow).
async fn handle_only(engine: &mut Engine, event: &Event) {
    engine.handle_event(event).await.unwrap();
}

async fn handle(engine: &mut Engine, event: &Event) {
    engine.handle_event(event).await.unwrap();
    engine.settle().await.unwrap();
}

/// Delivers what is due now and waits for the runs to finish.
async fn fire(engine: &mut Engine, clock: &Clock) {
    engine.fire_due(clock()).await.unwrap();
    engine.settle().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_crash_while_a_slow_device_task_still_runs_is_waited_for_and_recorded_as_a_change() {
    let site = site();
    let policies = || vec![on_battery("shutdown"), restore_on_mains()];
    *site.pve.task_delay.lock().unwrap() = Some(Duration::from_secs(8));
    let (mut first, _) = site.start_with_report(policies()).await;
    handle_only(&mut first, &reading(&[OnMains])).await;
    handle_only(&mut first, &ups("on_battery")).await;
    seconds(1).await;
    // The task handles are in the intent while the tasks still run.
    let open = site.store().open_intents().unwrap();
    assert_eq!(open.len(), 1);
    let handles: Vec<&str> = open[0].tasks.iter().map(|t| t.handle.as_str()).collect();
    assert_eq!(handles, site.pve.task_handles());
    assert_eq!(handles.len(), 3);
    assert_eq!(site.pve.status("vm:100").as_deref(), Some("running"));
    crash(first).await; // SIGKILL 1 s into the 8 s shutdown tasks

    let (mut second, report) = site.start_with_report(policies()).await;
    // Reconciliation waited for the tasks, then read the VMs.
    assert!(site.t0.elapsed() >= Duration::from_secs(8));
    assert_eq!(report.reconciled.len(), 1);
    assert_eq!(report.reconciled[0].done, ALL);
    assert!(report.reconciled[0].pending.is_empty());
    assert!(report.reconciled[0].repeat.is_empty());
    let runs = site.store().runs(Uuid::from_u128(1), 30).unwrap();
    assert_eq!(runs[0].status, RunStatus::Interrupted);
    assert!(runs[0].results.iter().all(|r| r.changed), "{runs:?}");
    assert_eq!(site.restore_set(1), ALL);

    // The mains return: the inverse starts the three VMs again.
    *site.pve.task_delay.lock().unwrap() = None;
    handle(&mut second, &reading(&[OnMains])).await;
    let at = site.t0.elapsed().as_secs();
    assert_eq!(
        site.calls(),
        [call("shutdown", &ALL, 0), call("start", &ALL, at)]
    );
    assert!(site.restore_set(1).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_task_still_running_when_the_wait_ends_is_pending_and_keeps_its_key() {
    let site = site();
    // A 10 min task: longer than the wait for a shutdown of grace 60 s.
    *site.pve.task_delay.lock().unwrap() = Some(Duration::from_secs(600));
    let (mut first, _) = site.start_with_report(vec![on_battery("shutdown")]).await;
    handle_only(&mut first, &reading(&[OnMains])).await;
    handle_only(&mut first, &ups("on_battery")).await;
    seconds(1).await;
    crash(first).await;

    let (mut second, report) = site.start_with_report(vec![on_battery("shutdown")]).await;
    assert_eq!(report.reconciled[0].pending, ALL);
    assert!(report.reconciled[0].repeat.is_empty(), "never sent twice");
    assert!(site.restore_set(1).is_empty());
    handle(&mut second, &reading(&[OnBattery])).await;
    // Read again 90 s later: the task still runs, the key is kept.
    seconds(90).await;
    fire(&mut second, &site.clock).await;
    assert!(site.restore_set(1).is_empty());
    let runs = site.store().runs(Uuid::from_u128(1), 30).unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs[0].results.iter().all(|r| !r.changed), "{:?}", runs[0]);
    assert_eq!(second.next_deadline(), None, "read again once");
    seconds(60).await;
    fire(&mut second, &site.clock).await;
    assert_eq!(site.calls(), [call("shutdown", &ALL, 0)]);
}

#[tokio::test(start_paused = true)]
async fn a_task_still_running_when_the_wait_ends_is_read_again_and_its_change_restored() {
    let site = site();
    let policies = || vec![on_battery("shutdown"), restore_on_mains()];
    // A 150 s task: longer than the 90 s wait at start, shorter than two.
    *site.pve.task_delay.lock().unwrap() = Some(Duration::from_secs(150));
    let (mut first, _) = site.start_with_report(policies()).await;
    handle_only(&mut first, &reading(&[OnMains])).await;
    handle_only(&mut first, &ups("on_battery")).await;
    seconds(1).await;
    crash(first).await;

    let (mut second, report) = site.start_with_report(policies()).await;
    let started = site.t0.elapsed().as_secs();
    assert_eq!(report.reconciled[0].pending, ALL);
    assert!(site.restore_set(1).is_empty());
    let runs = site.store().runs(Uuid::from_u128(1), 30).unwrap();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].results.iter().all(|r| !r.changed), "{runs:?}");
    // The pending targets are read again one wait (90 s) later.
    let due = second.next_deadline().expect("a follow-up read");
    assert_eq!(due, (site.clock)() + chrono::TimeDelta::seconds(90));
    handle(&mut second, &reading(&[OnBattery])).await;
    seconds(89).await;
    fire(&mut second, &site.clock).await;
    assert!(site.restore_set(1).is_empty());
    seconds(1).await;
    fire(&mut second, &site.clock).await;

    assert_eq!(site.restore_set(1), ALL);
    let runs = site.store().runs(Uuid::from_u128(1), 30).unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].status, RunStatus::Interrupted);
    assert!(runs[0].results.iter().all(|r| r.changed), "{:?}", runs[0]);
    assert_eq!(runs[0].results.len(), 3);
    assert_eq!(second.next_deadline(), None, "read again once");
    // The mains return: the inverse starts the VMs the task stopped.
    *site.pve.task_delay.lock().unwrap() = None;
    handle(&mut second, &ups("on_mains")).await;
    assert_eq!(
        site.calls(),
        [call("shutdown", &ALL, 0), call("start", &ALL, started + 90)]
    );
    assert!(site.restore_set(1).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_crash_right_after_the_intent_was_written_on_battery_still_runs_the_shutdown_once() {
    let site = site();
    *site.pve.latency.lock().unwrap() = Duration::from_secs(10);
    let (mut first, _) = site.start_with_report(vec![on_battery("shutdown")]).await;
    handle_only(&mut first, &reading(&[OnMains])).await;
    handle_only(&mut first, &ups("on_battery")).await;
    // Killed after the intent was persisted, before the request reached
    // the device (it would have acted after 10 s).
    assert_eq!(site.store().open_intents().unwrap().len(), 1);
    crash(first).await;
    *site.pve.latency.lock().unwrap() = support::DEFAULT_LATENCY;
    assert_eq!(site.pve.status("vm:100").as_deref(), Some("running"));

    seconds(3).await;
    let (mut second, report) = site.start_with_report(vec![on_battery("shutdown")]).await;
    assert_eq!(report.reconciled[0].repeat, ALL);
    // Nothing runs before the UPS is read again.
    seconds(30).await;
    fire(&mut second, &site.clock).await;
    assert_eq!(site.calls(), [call("shutdown", &ALL, 0)]);
    // Still on battery: no edge, but the interrupted shutdown is retried.
    handle(&mut second, &reading(&[OnBattery])).await;
    for _ in 0..120 {
        seconds(1).await;
        fire(&mut second, &site.clock).await;
        handle(&mut second, &reading(&[OnBattery])).await;
    }
    assert_eq!(
        site.calls(),
        [call("shutdown", &ALL, 0), call("shutdown", &ALL, 38)]
    );
    assert_eq!(site.pve.status("vm:100").as_deref(), Some("stopped"));
    let decided = site.audit("engine.restart_retry");
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert_eq!(decided[0]["decision"], "scheduled");
    let runs = site.store().runs(Uuid::from_u128(1), 30).unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].status, RunStatus::Ok, "{:?}", runs[0]);
    assert_eq!(runs[1].status, RunStatus::Interrupted);
    assert!(site.store().open_intents().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_shutdown_is_not_sent_again_when_the_mains_came_back() {
    let site = site();
    *site.pve.latency.lock().unwrap() = Duration::from_secs(10);
    let (mut first, _) = site.start_with_report(vec![on_battery("shutdown")]).await;
    handle_only(&mut first, &reading(&[OnMains])).await;
    handle_only(&mut first, &ups("on_battery")).await;
    crash(first).await;
    *site.pve.latency.lock().unwrap() = support::DEFAULT_LATENCY;

    let (mut second, _) = site.start_with_report(vec![on_battery("shutdown")]).await;
    handle(&mut second, &reading(&[OnMains])).await;
    for _ in 0..60 {
        seconds(1).await;
        fire(&mut second, &site.clock).await;
    }
    assert_eq!(site.calls(), [call("shutdown", &ALL, 0)]);
    let decided = site.audit("engine.restart_retry");
    assert_eq!(decided[0]["decision"], "not_held");
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_reboot_is_never_re_run() {
    let site = site();
    *site.pve.latency.lock().unwrap() = Duration::from_secs(10);
    let (mut first, _) = site.start_with_report(vec![on_battery("reset")]).await;
    handle_only(&mut first, &reading(&[OnMains])).await;
    handle_only(&mut first, &ups("on_battery")).await;
    assert_eq!(site.store().open_intents().unwrap().len(), 1);
    crash(first).await; // before the reset reached the device
    *site.pve.latency.lock().unwrap() = support::DEFAULT_LATENCY;

    let (mut second, report) = site.start_with_report(vec![on_battery("reset")]).await;
    assert_eq!(report.reconciled[0].not_done, ALL);
    assert!(report.reconciled[0].repeat.is_empty());
    handle(&mut second, &reading(&[OnBattery])).await;
    for _ in 0..120 {
        seconds(1).await;
        fire(&mut second, &site.clock).await;
    }
    assert_eq!(site.calls(), [call("reset", &ALL, 0)]);
    assert!(site.audit("engine.restart_retry").is_empty());
}

/// Runs the agent's loop for `n` seconds, one second at a time: what is due
/// fires, the runs it starts finish.
async fn run_for(engine: &mut Engine, clock: &Clock, n: u64) {
    for _ in 0..n {
        seconds(1).await;
        fire(engine, clock).await;
    }
}

/// The first agent sends the shutdown (a plain call, no device task: an
/// SSH command, a POST whose UPID was never written) and dies 1 s into
/// its 3 s; the call still lands on the device at 3 s. The second agent
/// starts at once: its read says the VMs still run.
async fn crash_during_a_call_without_a_task(site: &Site, policies: fn() -> Vec<Policy>) -> Engine {
    *site.pve.latency.lock().unwrap() = Duration::from_secs(3);
    let (mut first, _) = site.start_with_report(policies()).await;
    handle_only(&mut first, &reading(&[OnMains])).await;
    handle_only(&mut first, &ups("on_battery")).await;
    seconds(1).await;
    let open = site.store().open_intents().unwrap();
    assert!(open[0].started_at.is_some(), "the call started");
    assert!(open[0].tasks.is_empty(), "no task reported");
    drop(first); // killed; the device finishes the call it received
    *site.pve.latency.lock().unwrap() = support::DEFAULT_LATENCY;

    let (second, report) = site.start_with_report(policies()).await;
    assert_eq!(report.reconciled[0].not_done, ALL);
    assert_eq!(report.reconciled[0].unconfirmed, ALL);
    assert_eq!(site.pve.status("vm:100").as_deref(), Some("running"));
    second
}

fn with_inverse() -> Vec<Policy> {
    vec![on_battery("shutdown"), restore_on_mains()]
}

#[tokio::test(start_paused = true)]
async fn a_call_without_a_task_that_lands_after_the_start_read_is_read_again_and_restored() {
    let site = site();
    let mut second = crash_during_a_call_without_a_task(&site, with_inverse).await;
    // The mains return before the call lands: nothing is known stopped yet.
    handle(&mut second, &reading(&[OnMains])).await;
    assert!(site.restore_set(1).is_empty());
    run_for(&mut second, &site.clock, 3).await;
    assert_eq!(site.pve.status("vm:100").as_deref(), Some("stopped"));
    // Read again one wait (grace 60 s + 30 s) after the start: the call
    // took effect, the VMs join the restore set, and the inverse, whose
    // trigger still holds, starts them.
    run_for(&mut second, &site.clock, 97).await;
    let calls = site.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1].0, "start");
    assert_eq!(calls[1].1, ALL);
    assert!((91..=97).contains(&calls[1].2), "{calls:?}");
    assert_eq!(site.pve.status("vm:100").as_deref(), Some("running"));
    assert!(site.restore_set(1).is_empty());
    let runs = site.store().runs(Uuid::from_u128(1), 30).unwrap();
    assert_eq!(runs[0].status, RunStatus::Interrupted);
    assert!(runs[0].results.iter().all(|r| r.changed), "{:?}", runs[0]);
    assert_eq!(second.next_deadline(), None, "read again once");
}

#[tokio::test(start_paused = true)]
async fn a_follow_up_read_early_is_not_read_again_on_every_later_event() {
    let site = site();
    let mut second = crash_during_a_call_without_a_task(&site, with_inverse).await;
    let early_reads = || {
        site.audit("engine.interrupted")
            .iter()
            .filter(|d| d["early"] == true)
            .count()
    };
    // The mains return before the call lands: read early once, nothing
    // changed yet, kept for its due time.
    handle(&mut second, &reading(&[OnMains])).await;
    assert_eq!(early_reads(), 1);
    // Later events (the trigger still ended) do not read it again.
    for _ in 0..3 {
        handle(&mut second, &ups("on_mains")).await;
    }
    assert_eq!(early_reads(), 1, "read early once, not on every event");
    // At its due time it is read, and the inverse restores what it finds.
    run_for(&mut second, &site.clock, 100).await;
    assert_eq!(site.calls().len(), 2, "{:?}", site.calls());
    assert_eq!(site.pve.status("vm:100").as_deref(), Some("running"));
}

#[tokio::test(start_paused = true)]
async fn the_mains_returning_before_the_second_read_is_due_restores_what_the_call_changed() {
    let site = site();
    let mut second = crash_during_a_call_without_a_task(&site, with_inverse).await;
    handle(&mut second, &reading(&[OnBattery])).await;
    // The call lands at 3 s; the shutdown sent again finds the VMs stopped.
    run_for(&mut second, &site.clock, 10).await;
    assert_eq!(site.calls().len(), 1);
    assert!(site.restore_set(1).is_empty(), "not read again yet");
    // The mains return at 11 s, long before the read due at 91 s: the
    // inverse counts the VMs the interrupted call stopped.
    handle(&mut second, &ups("on_mains")).await;
    assert_eq!(
        site.calls(),
        [call("shutdown", &ALL, 0), call("start", &ALL, 11)]
    );
    assert!(site.restore_set(1).is_empty());
    run_for(&mut second, &site.clock, 100).await;
    assert_eq!(site.calls().len(), 2, "restored once");
}

#[tokio::test(start_paused = true)]
async fn a_second_restart_before_the_read_again_is_due_still_reads_again() {
    let site = site();
    let mut second = crash_during_a_call_without_a_task(&site, with_inverse).await;
    handle(&mut second, &reading(&[OnBattery])).await;
    seconds(1).await;
    drop(second); // stopped again before the call landed and the read is due

    let (mut third, report) = site.start_with_report(with_inverse()).await;
    assert!(report.reconciled.is_empty());
    handle(&mut third, &reading(&[OnBattery])).await;
    run_for(&mut third, &site.clock, 100).await;
    assert_eq!(
        site.restore_set(1),
        ALL,
        "the read at 91 s found them stopped"
    );
    assert_eq!(third.next_deadline(), None);
    handle(&mut third, &ups("on_mains")).await;
    let calls = site.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1].0, "start");
    assert_eq!(site.pve.status("vm:100").as_deref(), Some("running"));
    assert!(site.restore_set(1).is_empty());
}
