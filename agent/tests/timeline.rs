//! The event dry-run as a timeline (SPEC §6 "Dry-run of an event"): "what
//! would happen if the power failed now?" answers what runs now, what each
//! hold the event starts would do at its end (fire time, conditions as they
//! read now, targets, driver dry-runs) and what the inverses would restore,
//! on a virtual clock over a real SQLite file that must stay untouched.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use agent::engine::event::{Event, EventKind, Subject, SubjectKind};
use agent::engine::runner::{
    Engine, EngineConfig, Policy, TimelineKind, ALREADY_DESIRED, COUNTDOWN_STARTED, NOT_MATCHED,
    WOULD_RESTORE,
};
use agent::engine::store::{AuditQuery, EngineStore};
use agent::store::SqliteStore;
use chrono::{TimeDelta, Utc};
use drivers::breaker::{BreakerConfig, Breakers};
use serde_json::{json, Map};
use support::{ir, policy_at, ups, vm, FakeDriver, ON_BATTERY, ON_MAINS};
use uuid::Uuid;

const UPS: &str = "ups1@nas.lan:3493";

/// An engine over a SQLite file in `dir`, with `pve-01` (VMs 101 and 102
/// running, 103 stopped) and `policies` loaded.
async fn site(
    dir: &tempfile::TempDir,
    policies: Vec<Policy>,
) -> (Engine, Arc<FakeDriver>, Arc<dyn EngineStore>) {
    let store: Arc<dyn EngineStore> =
        Arc::new(SqliteStore::open(dir.path().join("hazel.db")).expect("open the store"));
    let pve = FakeDriver::new(
        "pve-01",
        "proxmox.ve",
        &[
            ("vm:101", Some("running")),
            ("vm:102", Some("running")),
            ("vm:103", Some("stopped")),
        ],
    );
    let mut engine = support::engine(
        store.clone(),
        &[&pve],
        Arc::new(Breakers::new(BreakerConfig::default())),
        EngineConfig::default(),
    );
    for policy in policies {
        engine.add_policy(policy).unwrap();
    }
    engine.start().await.unwrap();
    (engine, pve, store)
}

/// Policy 1: on battery for 5 s, with more than 40 % charge, shut VMs
/// 101-103 down.
fn shutdown_after_hold() -> Policy {
    let yaml = "version: 1\nname: \"On battery: stop low-tier VMs\"\ntrigger_group:\n  triggers:\n    \
                - { type: ups.state, equals: on_battery, for: 5s }\n\
                conditions:\n  all:\n    - { scope: ups, field: charge_pct, op: \">\", value: 40 }\n\
                targets:\n  host_id: pve-01\n  target_type: vm\n  selector: { mode: range, value: \"101-103\" }\n\
                actions:\n  - { capability_id: proxmox.vm, verb: shutdown }\n";
    Policy {
        id: Uuid::from_u128(1),
        ir: ir(yaml),
    }
}

/// Policy 2: the inverse of policy 1 on mains return.
fn restore_on_mains() -> Policy {
    let selector = format!("{{ mode: ledger, value: \"{}\" }}", Uuid::from_u128(1));
    policy_at(2, 20, ON_MAINS, "pve-01", "vm", &selector, &vm("start"))
}

/// The UPS's battery charge reading.
fn charge(pct: f64) -> Event {
    let mut attrs = Map::new();
    attrs.insert("metric".into(), json!("charge_pct"));
    attrs.insert("value".into(), json!(pct));
    Event {
        kind: EventKind::MetricThreshold,
        subject: Subject {
            kind: SubjectKind::Ups,
            id: UPS.into(),
        },
        attrs,
        ts: Utc::now(),
        correlation_id: Uuid::new_v4(),
    }
}

fn targets(list: &[&str]) -> Vec<String> {
    list.iter().map(|t| t.to_string()).collect()
}

#[tokio::test(start_paused = true)]
async fn an_on_battery_dry_run_reports_the_hold_with_its_fire_time_conditions_and_targets() {
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, pve, store) =
        site(&dir, vec![shutdown_after_hold(), restore_on_mains()]).await;
    engine.facts_mut().apply(&charge(80.0));

    let transcript = engine.dry_run_event(&ups("on_battery")).await.unwrap();

    // The instant decision says a countdown started, not "not matched".
    assert_eq!(transcript.decisions.len(), 1, "{transcript:#?}");
    assert_eq!(transcript.decisions[0].code, COUNTDOWN_STARTED);
    let kinds: Vec<TimelineKind> = transcript.timeline.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [TimelineKind::Countdown, TimelineKind::Inverse]);

    let countdown = &transcript.timeline[0];
    assert_eq!(countdown.at, Some(transcript.ts + TimeDelta::seconds(5)));
    assert!(countdown.trigger.contains("must stay 5s"), "{countdown:#?}");
    let decision = &countdown.decision;
    assert_eq!(decision.policy_id, Uuid::from_u128(1));
    assert_eq!(decision.code, "engine.scheduled", "{decision:#?}");
    assert_eq!(countdown.conditions.len(), 1, "{countdown:#?}");
    let reading = &countdown.conditions[0];
    assert!(reading.contains("charge_pct > 40 is true"), "{reading}");
    assert!(reading.contains("80"), "{reading}");
    assert_eq!(decision.planned.len(), 1);
    assert_eq!(decision.planned[0].action.verb, "shutdown");
    assert_eq!(decision.planned[0].targets, targets(&["vm:101", "vm:102"]));
    let answers = decision.planned[0].dry_run.clone().unwrap().unwrap();
    assert_eq!(answers.len(), 2, "the driver was asked at the fire time");
    assert_eq!(decision.skipped[0].target, "vm:103");
    assert_eq!(decision.skipped[0].code.as_deref(), Some(ALREADY_DESIRED));

    let inverse = &transcript.timeline[1];
    assert_eq!(inverse.at, None);
    assert_eq!(inverse.restores, Some(Uuid::from_u128(1)));
    assert_eq!(inverse.decision.policy_id, Uuid::from_u128(2));
    assert_eq!(inverse.decision.code, WOULD_RESTORE);
    assert!(inverse.trigger.contains("on_mains"), "{inverse:#?}");
    assert_eq!(inverse.decision.planned[0].action.verb, "start");
    assert_eq!(
        inverse.decision.planned[0].targets,
        targets(&["vm:101", "vm:102"])
    );
    assert_eq!(inverse.decision.planned[0].dry_run, None);

    // Nothing ran, nothing was written, no countdown was armed.
    assert!(pve.calls().is_empty());
    assert_eq!(pve.dry_runs.load(Ordering::SeqCst), 1);
    assert!(store.runs(Uuid::from_u128(1), 30).unwrap().is_empty());
    assert!(store.audit(&AuditQuery::default()).unwrap().is_empty());
    assert!(store.deadlines().unwrap().is_empty());
    assert_eq!(engine.next_deadline(), None);
    // The trigger state was not moved: the real event still starts the hold.
    let report = engine.handle_event(&ups("on_battery")).await.unwrap();
    assert_eq!(report.timers.len(), 1, "{report:#?}");
}

#[tokio::test(start_paused = true)]
async fn a_hold_whose_conditions_fail_now_is_a_countdown_that_would_run_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, pve, _store) =
        site(&dir, vec![shutdown_after_hold(), restore_on_mains()]).await;
    engine.facts_mut().apply(&charge(20.0));

    let transcript = engine.dry_run_event(&ups("on_battery")).await.unwrap();

    assert_eq!(transcript.timeline.len(), 1, "{transcript:#?}");
    let countdown = &transcript.timeline[0];
    assert_eq!(countdown.kind, TimelineKind::Countdown);
    assert_eq!(countdown.at, Some(transcript.ts + TimeDelta::seconds(5)));
    assert_eq!(countdown.decision.code, NOT_MATCHED);
    assert!(countdown.decision.planned.is_empty());
    assert_eq!(countdown.conditions.len(), 1, "{countdown:#?}");
    let reading = &countdown.conditions[0];
    assert!(reading.contains("charge_pct > 40 is false"), "{reading}");
    assert_eq!(pve.dry_runs.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_policy_without_a_hold_is_on_the_timeline_now() {
    let dir = tempfile::tempdir().unwrap();
    let now_policy = policy_at(
        3,
        0,
        ON_BATTERY,
        "pve-01",
        "vm",
        "{ mode: range, value: \"101\" }",
        &vm("shutdown"),
    );
    let (engine, _pve, _store) = site(&dir, vec![now_policy]).await;

    let transcript = engine.dry_run_event(&ups("on_battery")).await.unwrap();

    assert_eq!(transcript.timeline.len(), 1, "{transcript:#?}");
    let now = &transcript.timeline[0];
    assert_eq!(now.kind, TimelineKind::Now);
    assert_eq!(now.at, Some(transcript.ts));
    assert_eq!(now.decision.code, "engine.scheduled");
    assert_eq!(now.decision.planned[0].targets, targets(&["vm:101"]));
    assert!(now.decision.planned[0].dry_run.is_some());
}
