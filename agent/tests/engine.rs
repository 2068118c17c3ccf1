//! The per-policy run (SPEC §6) end to end on a virtual clock: real policies
//! compiled from YAML, the in-memory store, the real scheduler, and a
//! scriptable fake driver that keeps a status per target (`support`). The
//! properties over random policy sets and event streams are in
//! `engine_props.rs`.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use agent::engine::event::Event;
use agent::engine::runner::{
    tokio_clock, Engine, EngineConfig, EventReport, Policy, ALREADY_DESIRED, HOST_UNREACHABLE,
    INTERRUPTED, SELECTOR_EMPTY, SUPPRESSED_IDEMPOTENT, SUPPRESSED_WINDOW,
};
use agent::engine::store::{
    AuditQuery, EngineStore, MemoryStore, RunStatus, LEDGER_RUNS_PER_POLICY,
};
use drivers::breaker::{BreakerConfig, Breakers};
use drivers::driver::ErrorKind;
use inventory::Severity;
use support::{
    host_state, poe, policy, range, ups, vm, webhook, FakeDriver, DEPLOY, ON_BATTERY, ON_MAINS,
};
use uuid::Uuid;

struct Harness {
    engine: Engine,
    store: Arc<MemoryStore>,
    breakers: Arc<Breakers>,
}

/// An engine over `drivers` with `policies` loaded, in the order given.
fn harness(drivers: &[&Arc<FakeDriver>], policies: impl IntoIterator<Item = Policy>) -> Harness {
    let store = Arc::new(MemoryStore::default());
    let breakers = Arc::new(Breakers::new(BreakerConfig::default()));
    let mut engine = support::engine(
        store.clone(),
        drivers,
        breakers.clone(),
        EngineConfig {
            clock: tokio_clock(),
            ..EngineConfig::default()
        },
    );
    for policy in policies {
        engine.add_policy(policy).unwrap();
    }
    Harness {
        engine,
        store,
        breakers,
    }
}

fn pve() -> Arc<FakeDriver> {
    FakeDriver::new(
        "pve-01",
        "proxmox.ve",
        &[
            ("vm:101", Some("running")),
            ("vm:102", Some("running")),
            ("vm:103", Some("stopped")),
            ("vm:104", Some("running")),
        ],
    )
}

fn switch() -> Arc<FakeDriver> {
    FakeDriver::new(
        "sw-01",
        "aruba.aoss",
        &[
            ("poe-port:1/1", Some("on")),
            ("poe-port:1/2", Some("on")),
            ("poe-port:1/3", None),
        ],
    )
}

/// A policy on `pve-01` running `verb` on the VMs in `vms` (a range).
fn pve_policy(id: u128, trigger: &str, vms: &str, verb: &str) -> Policy {
    policy(id, trigger, "pve-01", "vm", &range(vms), &vm(verb))
}

/// A policy on `sw-01` setting the PoE ports in `ports` (a range) to `state`.
fn poe_policy(id: u128, trigger: &str, ports: &str, state: &str) -> Policy {
    policy(id, trigger, "sw-01", "poe-port", &range(ports), &poe(state))
}

/// Policy 1 turns PoE ports 1/1-1/2 off on battery, policy 2 on again on
/// mains: the outage pair whose windows the inverse keys must not block.
fn poe_off_on() -> [Policy; 2] {
    [
        poe_policy(1, ON_BATTERY, "1/1-1/2", "off"),
        poe_policy(2, ON_MAINS, "1/1-1/2", "on"),
    ]
}

/// Handles one event and waits for every item it scheduled.
async fn handle(h: &mut Harness, event: &Event) -> EventReport {
    let report = h.engine.handle_event(event).await.unwrap();
    h.engine.settle().await.unwrap();
    report
}

fn codes(report: &EventReport) -> Vec<(u128, String)> {
    report
        .decisions
        .iter()
        .map(|d| (d.policy_id.as_u128(), d.code.clone()))
        .collect()
}

async fn minutes(n: u64) {
    tokio::time::advance(Duration::from_secs(60 * n)).await;
}

#[tokio::test(start_paused = true)]
async fn policies_run_by_priority_then_by_uuid() {
    let pve = pve();
    let mut late = pve_policy(1, DEPLOY, "101", "reset");
    late.ir.priority = 5;
    let mut h = harness(
        &[&pve],
        [
            late,
            pve_policy(3, DEPLOY, "102", "reset"),
            pve_policy(2, DEPLOY, "104", "reset"),
        ],
    );
    let report = handle(&mut h, &webhook("deploy")).await;
    let order: Vec<u128> = codes(&report).iter().map(|(id, _)| *id).collect();
    assert_eq!(order, vec![2, 3, 1]);
    let targets: Vec<Vec<String>> = pve.calls().into_iter().map(|c| c.targets).collect();
    assert_eq!(
        targets,
        vec![vec!["vm:104"], vec!["vm:102"], vec!["vm:101"]]
    );
}

#[tokio::test(start_paused = true)]
async fn stop_on_match_skips_later_policies_once_an_action_was_scheduled() {
    let pve = pve();
    // Priority 0 stops on match but has nothing to do (vm:103 is stopped).
    let mut idle = pve_policy(1, ON_BATTERY, "103", "shutdown");
    idle.ir.stop_on_match = true;
    let mut first = pve_policy(2, ON_BATTERY, "101", "shutdown");
    first.ir.stop_on_match = true;
    first.ir.priority = 1;
    let mut second = pve_policy(3, ON_BATTERY, "102", "shutdown");
    second.ir.priority = 2;
    let mut h = harness(&[&pve], [idle, first, second]);
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(
        codes(&report),
        vec![
            (1, ALREADY_DESIRED.to_string()),
            (2, "engine.scheduled".to_string())
        ]
    );
    assert_eq!(pve.status("vm:101").as_deref(), Some("stopped"));
    assert_eq!(pve.status("vm:102").as_deref(), Some("running"));
    // The three share one trigger group, but the run never reached policy 3:
    // it has not seen the UPS enter on_battery. The same state published
    // again is its edge, and only its.
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(
        codes(&report),
        vec![
            (1, "engine.not_matched".to_string()),
            (2, "engine.not_matched".to_string()),
            (3, "engine.scheduled".to_string())
        ]
    );
    assert_eq!(pve.status("vm:102").as_deref(), Some("stopped"));
}

#[tokio::test(start_paused = true)]
async fn suppression_window_holds_a_second_outage_and_counts_it() {
    let pve = pve();
    let mut h = harness(&[&pve], [pve_policy(1, ON_BATTERY, "101", "shutdown")]);
    handle(&mut h, &ups("on_battery")).await;
    minutes(1).await;
    handle(&mut h, &ups("on_mains")).await;
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(codes(&report), vec![(1, SUPPRESSED_WINDOW.to_string())]);
    let window = h.store.window_state(Uuid::from_u128(1)).unwrap();
    assert_eq!(window.suppressed_count, 1);
    // Suppressed evaluations stay out of the ledger and go to the audit log.
    assert_eq!(h.store.runs(Uuid::from_u128(1), 100).unwrap().len(), 1);
    let audit = h
        .store
        .audit(&AuditQuery {
            kind: Some(SUPPRESSED_WINDOW.into()),
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(audit.len(), 1);
    // Past the suppression window, the idempotency window (step 6) still
    // holds the key...
    minutes(5).await;
    handle(&mut h, &ups("on_mains")).await;
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(codes(&report), vec![(1, SUPPRESSED_IDEMPOTENT.to_string())]);
    // ... and past both windows the policy acts again on a VM restarted by hand.
    minutes(10).await;
    pve.state
        .lock()
        .unwrap()
        .insert("vm:101".into(), Some("running".into()));
    handle(&mut h, &ups("on_mains")).await;
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(codes(&report), vec![(1, "engine.scheduled".to_string())]);
    assert_eq!(pve.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_inverse_action_on_the_same_targets_clears_the_suppression_window() {
    let pve = pve();
    let mut h = harness(
        &[&pve],
        [
            pve_policy(1, ON_BATTERY, "101", "shutdown"),
            pve_policy(2, ON_MAINS, "101", "start"),
        ],
    );
    handle(&mut h, &ups("on_battery")).await;
    minutes(1).await;
    handle(&mut h, &ups("on_mains")).await;
    minutes(1).await;
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(codes(&report), vec![(1, "engine.scheduled".to_string())]);
    let verbs: Vec<String> = pve.calls().into_iter().map(|c| c.verb).collect();
    assert_eq!(verbs, vec!["shutdown", "start", "shutdown"]);
}

#[tokio::test(start_paused = true)]
async fn poe_off_on_off_within_the_windows_acts_every_time() {
    let sw = switch();
    let mut h = harness(&[&sw], poe_off_on());
    for event in ["on_battery", "on_mains", "on_battery"] {
        handle(&mut h, &ups(event)).await;
        minutes(2).await;
    }
    let states: Vec<Option<String>> = sw.calls().into_iter().map(|c| c.state).collect();
    assert_eq!(
        states,
        vec![Some("off".into()), Some("on".into()), Some("off".into())]
    );
    assert_eq!(sw.status("poe-port:1/2").as_deref(), Some("off"));
}

#[tokio::test(start_paused = true)]
async fn idempotency_window_skips_a_key_that_already_ran() {
    let sw = switch();
    // Port 1/3 reports no status, so only the key can tell it was done.
    let mut h = harness(
        &[&sw],
        [
            poe_policy(1, ON_BATTERY, "1/3", "off"),
            poe_policy(2, ON_BATTERY, "1/3", "off"),
        ],
    );
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(
        codes(&report),
        vec![
            (1, "engine.scheduled".to_string()),
            (2, SUPPRESSED_IDEMPOTENT.to_string())
        ]
    );
    assert_eq!(sw.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_target_forgets_its_key_and_is_retried() {
    let sw = switch();
    sw.failing.lock().unwrap().insert("poe-port:1/3".into());
    let mut p = poe_policy(1, DEPLOY, "1/2,1/3", "off");
    p.ir.windows.suppression_s = 0;
    let mut h = harness(&[&sw], [p]);
    handle(&mut h, &webhook("deploy")).await;
    let run = &h.store.runs(Uuid::from_u128(1), 1).unwrap()[0];
    assert_eq!(run.status, RunStatus::Partial);
    sw.failing.lock().unwrap().clear();
    minutes(1).await;
    let report = handle(&mut h, &webhook("deploy")).await;
    assert_eq!(report.decisions[0].planned[0].targets, vec!["poe-port:1/3"]);
    assert_eq!(sw.status("poe-port:1/3").as_deref(), Some("off"));
}

#[tokio::test(start_paused = true)]
async fn ledger_selector_restarts_exactly_what_was_stopped() {
    let pve = pve();
    let ledger = format!("{{ mode: ledger, value: \"{}\" }}", Uuid::from_u128(1));
    let mut h = harness(
        &[&pve],
        [
            pve_policy(1, ON_BATTERY, "101-103", "shutdown"),
            policy(2, ON_MAINS, "pve-01", "vm", &ledger, &vm("start")),
        ],
    );
    handle(&mut h, &ups("on_battery")).await;
    let forward = &h.store.runs(Uuid::from_u128(1), 1).unwrap()[0];
    let changed: Vec<&str> = forward.changed_targets().iter().map(|p| p.1).collect();
    assert_eq!(changed, vec!["vm:101", "vm:102"]);
    minutes(3).await;
    handle(&mut h, &ups("on_mains")).await;
    let starts: Vec<Vec<String>> = pve
        .calls()
        .into_iter()
        .filter(|c| c.verb == "start")
        .map(|c| c.targets)
        .collect();
    assert_eq!(starts, vec![vec!["vm:101", "vm:102"]]);
    assert_eq!(pve.status("vm:103").as_deref(), Some("stopped"));
    assert_eq!(pve.status("vm:104").as_deref(), Some("running"));
}

#[tokio::test(start_paused = true)]
async fn empty_selection_warns_and_the_next_policy_still_runs() {
    let pve = pve();
    let mut h = harness(
        &[&pve],
        [
            pve_policy(1, ON_BATTERY, "900-901", "shutdown"),
            pve_policy(2, ON_BATTERY, "101", "shutdown"),
        ],
    );
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(report.decisions[0].code, SELECTOR_EMPTY);
    assert_eq!(report.decisions[0].severity, Severity::Warn);
    assert_eq!(report.decisions[1].code, "engine.scheduled");
    assert!(h.store.runs(Uuid::from_u128(1), 30).unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_target_already_in_the_desired_state_is_skipped_with_info() {
    let pve = pve();
    let mut h = harness(&[&pve], [pve_policy(1, ON_BATTERY, "103", "shutdown")]);
    let report = handle(&mut h, &ups("on_battery")).await;
    let decision = &report.decisions[0];
    assert_eq!(decision.code, ALREADY_DESIRED);
    assert_eq!(decision.severity, Severity::Info);
    assert_eq!(decision.skipped[0].target, "vm:103");
    assert!(pve.calls().is_empty());
    assert!(h.store.runs(Uuid::from_u128(1), 30).unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_host_is_an_error_and_nothing_executes_while_it_stays_unreachable() {
    // SPEC §6 "Outage lifecycle": the run stays open for retries while the
    // trigger holds; it is written when the outage ends with the host
    // still unreachable.
    let pve = pve();
    let mut h = harness(&[&pve], [pve_policy(1, ON_BATTERY, "101", "shutdown")]);
    handle(&mut h, &host_state("pve-01", false)).await;
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(report.decisions[0].code, HOST_UNREACHABLE);
    assert_eq!(report.decisions[0].severity, Severity::Error);
    assert!(h.store.runs(Uuid::from_u128(1), 30).unwrap().is_empty());
    minutes(1).await;
    let due = h.engine.next_deadline().expect("a retry is due");
    h.engine.fire_due(due).await.unwrap();
    handle(&mut h, &ups("on_mains")).await;
    minutes(2).await;
    let due = h.engine.next_deadline().expect("a retry is due");
    h.engine.fire_due(due).await.unwrap();
    h.engine.settle().await.unwrap();
    assert!(pve.calls().is_empty());
    let runs = h.store.runs(Uuid::from_u128(1), 30).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Failed);
    assert_eq!(runs[0].results[0].code.as_deref(), Some(HOST_UNREACHABLE));
    assert_eq!(h.engine.next_deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_counts_as_an_unreachable_host() {
    let pve = pve();
    let mut h = harness(&[&pve], [pve_policy(1, ON_BATTERY, "101", "shutdown")]);
    let breaker = h.breakers.for_host("pve-01");
    for _ in 0..3 {
        breaker.acquire().unwrap().failure(ErrorKind::NetworkError);
    }
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(report.decisions[0].code, HOST_UNREACHABLE);
    assert!(pve.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn ledger_entries_have_the_spec_shape_and_only_30_are_kept() {
    let pve = pve();
    let mut p = pve_policy(1, DEPLOY, "101,103", "reset");
    p.ir.windows.suppression_s = 0;
    p.ir.windows.idempotency_s = 0;
    let mut h = harness(&[&pve], [p]);
    let mut last = None;
    for _ in 0..35 {
        let event = webhook("deploy");
        last = Some(event.correlation_id);
        handle(&mut h, &event).await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(pve.calls().len(), 35);
    let runs = h.store.runs(Uuid::from_u128(1), 100).unwrap();
    assert_eq!(runs.len(), LEDGER_RUNS_PER_POLICY);
    let run = &runs[0];
    assert_eq!(run.event.kind, "webhook.custom");
    assert_eq!(run.event.subject.id, "deploy");
    assert_eq!(Some(run.event.correlation_id), last);
    assert_eq!(run.version_int, 1);
    assert_eq!(run.status, RunStatus::Ok);
    assert_eq!(run.severity, Severity::Info);
    assert!(run.finished_at > run.started_at);
    let targets: Vec<&str> = run.results.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, vec!["vm:101", "vm:103"]);
    assert!(run.results.iter().all(|r| r.ok && r.duration_ms == 200));
    assert_eq!(run.results[0].code.as_deref(), Some("driver.ok"));
    assert!(run.explain["trigger"].is_string());
    assert!(run.explain["conditions"].is_string());
}

#[tokio::test(start_paused = true)]
async fn event_dry_run_executes_nothing_and_persists_nothing() {
    let pve = pve();
    let mut h = harness(&[&pve], [pve_policy(1, ON_BATTERY, "101-103", "shutdown")]);
    let transcript = h.engine.dry_run_event(&ups("on_battery")).await.unwrap();
    let decision = &transcript.decisions[0];
    assert_eq!(decision.code, "engine.scheduled");
    assert_eq!(decision.planned[0].targets, vec!["vm:101", "vm:102"]);
    let answers = decision.planned[0].dry_run.clone().unwrap().unwrap();
    assert_eq!(
        answers[0].effects.per_target[0].to.as_deref(),
        Some("stopped")
    );
    assert_eq!(decision.skipped[0].code.as_deref(), Some(ALREADY_DESIRED));
    assert!(pve.calls().is_empty());
    assert_eq!(pve.dry_runs.load(Ordering::SeqCst), 1);
    assert!(h.store.runs(Uuid::from_u128(1), 30).unwrap().is_empty());
    assert!(h.store.audit(&AuditQuery::default()).unwrap().is_empty());
    // The trigger state was not moved: the real event still fires.
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(report.decisions[0].code, "engine.scheduled");
}

#[tokio::test(start_paused = true)]
async fn a_slow_host_never_delays_the_next_event_on_another_host() {
    let pve = pve();
    *pve.latency.lock().unwrap() = Duration::from_secs(3600);
    let sw = switch();
    let mut h = harness(
        &[&pve, &sw],
        [
            pve_policy(1, ON_BATTERY, "101", "shutdown"),
            poe_policy(2, DEPLOY, "1/1", "off"),
        ],
    );
    let start = tokio::time::Instant::now();
    h.engine.handle_event(&ups("on_battery")).await.unwrap();
    h.engine.handle_event(&webhook("deploy")).await.unwrap();
    let first = h.engine.next_run().await.unwrap().unwrap();
    assert_eq!(first.policy_id, Uuid::from_u128(2));
    assert!(start.elapsed() < Duration::from_secs(1));
    let rest = h.engine.settle().await.unwrap();
    assert_eq!(rest[0].policy_id, Uuid::from_u128(1));
    assert_eq!(h.engine.pending_items(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_kill_switch_holds_scheduled_items_until_release() {
    let pve = pve();
    let mut h = harness(&[&pve], [pve_policy(1, ON_BATTERY, "101", "shutdown")]);
    h.engine.scheduler().pause().await.unwrap();
    let report = h.engine.handle_event(&ups("on_battery")).await.unwrap();
    assert_eq!(report.decisions[0].code, "engine.scheduled");
    minutes(1).await;
    assert!(pve.calls().is_empty());
    assert_eq!(h.engine.pending_items(), 1);
    let intents = h.store.open_intents().unwrap();
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0].targets, vec!["vm:101"]);
    h.engine.scheduler().resume().await.unwrap();
    let runs = h.engine.settle().await.unwrap();
    assert_eq!(runs[0].status, RunStatus::Ok);
    assert!(h.store.open_intents().unwrap().is_empty());
    assert_eq!(pve.status("vm:101").as_deref(), Some("stopped"));
}

#[tokio::test(start_paused = true)]
async fn a_whole_item_failure_makes_the_run_partial_or_failed() {
    let pve = pve();
    pve.erroring.lock().unwrap().insert("reset".into());
    let two = format!("{}\n  - {}", vm("shutdown"), vm("reset"));
    let mut h = harness(
        &[&pve],
        [
            policy(1, DEPLOY, "pve-01", "vm", &range("101"), &two),
            pve_policy(2, DEPLOY, "104", "reset"),
        ],
    );
    handle(&mut h, &webhook("deploy")).await;
    let run = &h.store.runs(Uuid::from_u128(1), 1).unwrap()[0];
    assert_eq!(run.results.len(), 2);
    assert!(run.results[0].ok);
    assert_eq!(
        run.results[1].code.as_deref(),
        Some("engine.execution_failed")
    );
    assert_eq!(run.status, RunStatus::Partial);
    assert_eq!(run.severity, Severity::Error);
    let run = &h.store.runs(Uuid::from_u128(2), 1).unwrap()[0];
    assert_eq!(run.status, RunStatus::Failed);
}

#[tokio::test(start_paused = true)]
async fn idempotency_runs_before_the_host_guard() {
    let sw = switch();
    // Port 1/3 reports no status, so only the key can tell it was done.
    let mut p = poe_policy(1, DEPLOY, "1/3", "off");
    p.ir.windows.suppression_s = 0;
    let mut h = harness(&[&sw], [p]);
    handle(&mut h, &webhook("deploy")).await;
    handle(&mut h, &host_state("sw-01", false)).await;
    minutes(1).await;
    let report = handle(&mut h, &webhook("deploy")).await;
    assert_eq!(codes(&report), vec![(1, SUPPRESSED_IDEMPOTENT.to_string())]);
    assert_eq!(report.decisions[0].severity, Severity::Info);
    // Only the first run is in the ledger: no error entry.
    let runs = h.store.runs(Uuid::from_u128(1), 30).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Ok);
    assert_eq!(sw.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn finished_items_are_applied_before_the_next_event_without_settling() {
    let sw = switch();
    let mut h = harness(&[&sw], poe_off_on());
    let mut all = Vec::new();
    for event in ["on_battery", "on_mains", "on_battery"] {
        // No settle / next_run: only virtual time passes, so the items
        // finish and their reports wait on the channel.
        let report = h.engine.handle_event(&ups(event)).await.unwrap();
        all.extend(codes(&report));
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    assert_eq!(
        all,
        vec![
            (1, "engine.scheduled".to_string()),
            (2, "engine.scheduled".to_string()),
            (1, "engine.scheduled".to_string()),
        ]
    );
    h.engine.settle().await.unwrap();
    let states: Vec<Option<String>> = sw.calls().into_iter().map(|c| c.state).collect();
    assert_eq!(
        states,
        vec![Some("off".into()), Some("on".into()), Some("off".into())]
    );
}

#[tokio::test(start_paused = true)]
async fn an_item_cancelled_while_running_is_interrupted_and_never_rerun() {
    let pve = pve();
    let mut p = pve_policy(1, DEPLOY, "101", "shutdown");
    p.ir.windows.suppression_s = 0;
    let mut h = harness(&[&pve], [p]);
    h.engine.handle_event(&webhook("deploy")).await.unwrap();
    // The driver has been called (it takes 200 ms) when the cancel lands.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(pve.calls().len(), 1);
    assert_eq!(h.engine.scheduler().cancel_host("pve-01").await.unwrap(), 1);
    let runs = h.engine.settle().await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Interrupted);
    assert_eq!(runs[0].results[0].code.as_deref(), Some(INTERRUPTED));
    assert_eq!(runs[0].results[0].severity, Severity::Warn);
    assert!(h.store.open_intents().unwrap().is_empty());
    // The key stays: the next event does not run the shutdown again.
    minutes(1).await;
    let report = handle(&mut h, &webhook("deploy")).await;
    assert_eq!(codes(&report), vec![(1, SUPPRESSED_IDEMPOTENT.to_string())]);
    assert_eq!(pve.calls().len(), 1);
}

/// Snapshots as the inventory service would serve them after a failed
/// refresh: the last one taken, flagged stale.
struct Stale(Arc<FakeDriver>);

impl agent::engine::runner::Snapshots for Stale {
    fn host(&self, host_id: &str) -> Option<inventory::HostInventory> {
        (self.0.host == host_id).then(|| self.0.snapshot().with_stale(true))
    }
}

#[tokio::test(start_paused = true)]
async fn a_stale_snapshot_never_skips_an_action_as_already_desired() {
    // vm:103 shows `stopped` in a stale snapshot but runs now: the engine
    // must not trust the old status; the driver's execute reads the live one.
    let pve = pve();
    pve.set_status("vm:103", "running");
    let frozen = FakeDriver::new("pve-01", "proxmox.ve", &[("vm:103", Some("stopped"))]);
    let store = Arc::new(MemoryStore::default());
    let mut engine = agent::engine::runner::Engine::new(
        store.clone(),
        Arc::new(Stale(frozen)),
        Arc::new(Breakers::new(BreakerConfig::default())),
        EngineConfig {
            clock: tokio_clock(),
            ..EngineConfig::default()
        },
    );
    engine.add_driver(pve.clone());
    engine
        .add_policy(pve_policy(1, ON_BATTERY, "103", "shutdown"))
        .unwrap();
    let report = engine.handle_event(&ups("on_battery")).await.unwrap();
    assert_eq!(report.decisions[0].code, "engine.scheduled");
    engine.settle().await.unwrap();
    assert_eq!(pve.status("vm:103").as_deref(), Some("stopped"));
    assert_eq!(pve.calls().len(), 1);
}

/// A `MakeWriter` that keeps what the log wrote, for the log-line tests.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_fired_policy_held_by_a_condition_logs_why_at_info_with_its_name() {
    let buf = LogBuffer::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);
    let driver = pve();
    let yaml = "version: 1\nname: shed\ntrigger_group:\n  triggers:\n    - { type: ups.state, equals: on_battery }\n\
        conditions:\n  all:\n    - { scope: ups, field: runtime_minutes, op: \">=\", value: 5 }\n\
        targets:\n  host_id: pve-01\n  target_type: vm\n  selector: { mode: range, value: \"101-102\" }\n\
        actions:\n  - { capability_id: proxmox.vm, verb: shutdown, params: { grace_s: 60 } }\n";
    let mut h = harness(&[&driver], []);
    let id = Uuid::from_u128(7);
    h.engine
        .add_policy(Policy {
            id,
            ir: support::ir(yaml),
        })
        .unwrap();
    h.engine.name_policy(id, "Stop low tier on battery".into());
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(codes(&report), [(7, "engine.not_matched".to_string())]);
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("engine.not_matched"))
        .unwrap_or_else(|| panic!("no not_matched line in:\n{log}"));
    assert!(line.contains(" INFO "), "{line}");
    assert!(line.contains("Stop low tier on battery"), "{line}");
    assert!(
        line.contains("ups.runtime_minutes >= 5 cannot be evaluated"),
        "{line}"
    );
}
