//! The conformance suite every [`EngineStore`] passes: each case is a plain
//! function over `&dyn EngineStore`, instantiated once per implementation
//! by `conformance_suite!`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use inventory::Severity;
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

use super::*;

/// `secs` seconds after a fixed origin (2026-11-22T00:00:00Z).
pub(crate) fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_305_600 + secs, 0).expect("valid timestamp")
}

pub(crate) fn intent(run: u128, action_index: u32, host: &str) -> IntentRecord {
    IntentRecord {
        run_id: Uuid::from_u128(run),
        policy_id: Uuid::from_u128(7),
        action_index,
        capability: "vm.power".into(),
        verb: "stop".into(),
        params: json!({"timeout_s": 60}),
        host: host.into(),
        targets: vec![format!("{host}/101"), format!("{host}/102")],
        idempotency_keys: vec![format!("vm.power.stop:{host}/101")],
        correlation_id: Uuid::from_u128(900 + run),
        created_at: t(i64::try_from(run).unwrap_or(0)),
        event: None,
        tasks: Vec::new(),
        started_at: None,
    }
}

pub(crate) fn outcome(ok: bool) -> IntentOutcome {
    IntentOutcome {
        finished_at: t(500),
        ok,
        severity: if ok { Severity::Info } else { Severity::Error },
        code: (!ok).then(|| "driver.timeout".to_owned()),
        reason: String::new(),
    }
}

fn result(target: &str, ok: bool, changed: bool) -> ResultRecord {
    ResultRecord {
        action_index: 0,
        capability: "vm.power".into(),
        verb: "stop".into(),
        host: "pve1".into(),
        target: target.into(),
        ok,
        changed,
        severity: if ok { Severity::Info } else { Severity::Error },
        code: None,
        reason: String::new(),
        evidence: json!({"state": "stopped"}),
        duration_ms: 12,
        result_state: None,
    }
}

pub(crate) fn run(policy_id: Uuid, n: u128, started: i64, status: RunStatus) -> RunRecord {
    RunRecord {
        run_id: Uuid::from_u128(n),
        policy_id,
        version_int: 1,
        event: RunEvent {
            kind: "ups.state".into(),
            subject: SubjectRecord {
                kind: "ups".into(),
                id: "ups1@nas.lan:3493".into(),
            },
            correlation_id: Uuid::from_u128(10_000 + n),
        },
        started_at: t(started),
        finished_at: t(started + 1),
        severity: Severity::Info,
        status,
        results: vec![result("pve1/101", true, true)],
        explain: json!({"trigger": 0}),
    }
}

pub(crate) fn window_state_records_fires_suppressions_and_clears_the_window(
    store: &dyn EngineStore,
) {
    let policy = Uuid::from_u128(1);
    assert_eq!(store.window_state(policy).unwrap(), WindowState::default());
    store.record_fire(policy, t(10)).unwrap();
    store.record_suppressed(policy, t(20)).unwrap();
    store.record_suppressed(policy, t(30)).unwrap();
    let window = store.window_state(policy).unwrap();
    assert_eq!(window.last_fired_at, Some(t(10)));
    assert_eq!(window.last_suppressed_at, Some(t(30)));
    assert_eq!(window.suppressed_count, 2);
    store.clear_suppression(policy).unwrap();
    let window = store.window_state(policy).unwrap();
    assert_eq!(window.last_fired_at, None);
    assert_eq!(window.suppressed_count, 2, "counters are history and stay");
    assert_eq!(
        store.window_state(Uuid::from_u128(2)).unwrap(),
        WindowState::default()
    );
}

pub(crate) fn keys_ran_within_their_window_and_can_be_cleared_and_pruned(store: &dyn EngineStore) {
    let policy = Uuid::from_u128(1);
    let hour = Duration::from_secs(3600);
    store.record_key(policy, "poe.off:sw1/3", t(0)).unwrap();
    store.record_key(policy, "poe.off:sw1/4", t(0)).unwrap();
    assert!(store
        .key_ran_within("poe.off:sw1/3", t(3600), hour)
        .unwrap());
    assert!(!store
        .key_ran_within("poe.off:sw1/3", t(3601), hour)
        .unwrap());
    assert!(
        store.key_ran_within("poe.off:sw1/3", t(-5), hour).unwrap(),
        "clock stepped back"
    );
    assert!(!store.key_ran_within("poe.on:sw1/3", t(1), hour).unwrap());
    store.record_key(policy, "poe.off:sw1/3", t(5000)).unwrap();
    assert_eq!(store.key_ran_at("poe.off:sw1/3").unwrap(), Some(t(5000)));

    store
        .clear_keys(&["poe.off:sw1/3".into(), "never.recorded".into()])
        .unwrap();
    assert_eq!(store.key_ran_at("poe.off:sw1/3").unwrap(), None);
    assert_eq!(store.key_ran_at("poe.off:sw1/4").unwrap(), Some(t(0)));

    store
        .record_key(policy, "vm.stop:pve1/101", t(100))
        .unwrap();
    store.prune_keys(t(100)).unwrap();
    assert_eq!(store.key_ran_at("poe.off:sw1/4").unwrap(), None);
    assert_eq!(store.key_ran_at("vm.stop:pve1/101").unwrap(), Some(t(100)));
}

pub(crate) fn deadlines_are_upserted_removed_and_listed_soonest_first(store: &dyn EngineStore) {
    let policy = Uuid::from_u128(1);
    let deadline = |index, kind, due, state| DeadlineRecord {
        policy_id: policy,
        trigger_index: index,
        kind,
        due_at: t(due),
        state,
    };
    store
        .upsert_deadline(&deadline(0, DeadlineKind::For, 120, json!({"since": 0})))
        .unwrap();
    store
        .upsert_deadline(&deadline(1, DeadlineKind::After, 60, json!(null)))
        .unwrap();
    store
        .upsert_deadline(&deadline(0, DeadlineKind::After, 90, json!([1, 2])))
        .unwrap();
    let listed = store.deadlines().unwrap();
    let order: Vec<_> = listed.iter().map(|d| (d.trigger_index, d.kind)).collect();
    assert_eq!(
        order,
        vec![
            (1, DeadlineKind::After),
            (0, DeadlineKind::After),
            (0, DeadlineKind::For)
        ]
    );
    assert_eq!(listed[2].state, json!({"since": 0}));

    store
        .upsert_deadline(&deadline(0, DeadlineKind::For, 30, json!({"since": 5})))
        .unwrap();
    let listed = store.deadlines().unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(
        listed[0],
        deadline(0, DeadlineKind::For, 30, json!({"since": 5}))
    );

    store.remove_deadline(policy, 0, DeadlineKind::For).unwrap();
    store.remove_deadline(policy, 9, DeadlineKind::For).unwrap();
    assert_eq!(store.deadlines().unwrap().len(), 2);
}

pub(crate) fn timer_checks_keep_the_last_check_per_policy_and_trigger(store: &dyn EngineStore) {
    let a = Uuid::from_u128(1);
    let b = Uuid::from_u128(2);
    store.set_timer_checked(b, 0, t(5)).unwrap();
    store.set_timer_checked(a, 1, t(5)).unwrap();
    store.set_timer_checked(a, 1, t(65)).unwrap();
    assert_eq!(
        store.timer_checks().unwrap(),
        vec![
            TimerCheckRecord {
                policy_id: a,
                trigger_index: 1,
                checked_at: t(65)
            },
            TimerCheckRecord {
                policy_id: b,
                trigger_index: 0,
                checked_at: t(5)
            },
        ]
    );
}

pub(crate) fn intents_are_open_until_completed_exactly_once(store: &dyn EngineStore) {
    let first = intent(2, 0, "pve1");
    let second = intent(1, 1, "pve2");
    store.persist_intent(&first).unwrap();
    store.persist_intent(&second).unwrap();
    assert_eq!(
        store.open_intents().unwrap(),
        vec![second.clone(), first.clone()]
    );

    store.complete_intent(&first.id(), &outcome(true)).unwrap();
    assert_eq!(store.open_intents().unwrap(), vec![second.clone()]);
    let entry = store.intent(&first.id()).unwrap().expect("stored");
    assert_eq!(entry.intent, first);
    assert_eq!(entry.outcome, Some(outcome(true)));

    let again = store
        .complete_intent(&first.id(), &outcome(false))
        .unwrap_err();
    assert!(matches!(again, StoreError::Conflict { .. }), "{again:?}");
    let dup = store.persist_intent(&first).unwrap_err();
    assert!(matches!(dup, StoreError::Conflict { .. }), "{dup:?}");
    let unknown = intent(3, 0, "pve1").id();
    let missing = store.complete_intent(&unknown, &outcome(true)).unwrap_err();
    assert!(
        matches!(missing, StoreError::NotFound { .. }),
        "{missing:?}"
    );
    assert_eq!(store.intent(&unknown).unwrap(), None);

    store
        .write(&[Write::PruneIntents { before: t(501) }])
        .unwrap();
    assert_eq!(
        store.intent(&first.id()).unwrap(),
        None,
        "completed and old: pruned"
    );
    assert_eq!(
        store.open_intents().unwrap(),
        vec![second],
        "open intents are never pruned"
    );
}

pub(crate) fn task_handles_join_open_intents_only(store: &dyn EngineStore) {
    let open = intent(1, 0, "pve1");
    let done = intent(2, 0, "pve1");
    store.persist_intent(&open).unwrap();
    store.persist_intent(&done).unwrap();
    store.complete_intent(&done.id(), &outcome(true)).unwrap();
    let task = |target: &str| TaskRecord {
        target: target.into(),
        handle: format!("UPID:pve1:1:2:3:qmstop:{target}:root@pam:"),
    };
    let record = |id: &IntentRecord, target: &str| Write::RecordTask {
        id: id.id(),
        task: task(target),
    };
    store
        .write(&[
            record(&open, "pve1/101"),
            record(&open, "pve1/102"),
            record(&open, "pve1/101"),
            record(&done, "pve1/101"),
            record(&intent(3, 0, "pve1"), "pve1/101"),
        ])
        .unwrap();
    let open_now = store.open_intents().unwrap();
    assert_eq!(open_now.len(), 1);
    assert_eq!(open_now[0].tasks, vec![task("pve1/101"), task("pve1/102")]);
    let done_now = store.intent(&done.id()).unwrap().expect("stored");
    assert!(
        done_now.intent.tasks.is_empty(),
        "a late report changes nothing"
    );
    assert_eq!(store.intent(&intent(3, 0, "pve1").id()).unwrap(), None);
}

pub(crate) fn intents_are_marked_started_once_while_open(store: &dyn EngineStore) {
    let open = intent(1, 0, "pve1");
    let done = intent(2, 0, "pve1");
    store.persist_intent(&open).unwrap();
    store.persist_intent(&done).unwrap();
    store.complete_intent(&done.id(), &outcome(true)).unwrap();
    assert_eq!(store.open_intents().unwrap()[0].started_at, None);
    let start = |id: &IntentRecord, at: i64| Write::StartIntent {
        id: id.id(),
        at: t(at),
    };
    store
        .write(&[
            start(&open, 10),
            start(&open, 20),
            start(&done, 10),
            start(&intent(3, 0, "pve1"), 10),
        ])
        .unwrap();
    assert_eq!(store.open_intents().unwrap()[0].started_at, Some(t(10)));
    let done_now = store.intent(&done.id()).unwrap().expect("stored");
    assert_eq!(
        done_now.intent.started_at, None,
        "a late mark changes nothing"
    );
    assert_eq!(store.intent(&intent(3, 0, "pve1").id()).unwrap(), None);
}

pub(crate) fn follow_ups_are_replaced_per_intent_and_removed(store: &dyn EngineStore) {
    assert!(store.follow_ups().unwrap().is_empty());
    let follow_up = |run: u128, due: i64| FollowUpRecord {
        intent: intent(run, 0, "pve1"),
        pending: vec!["pve1/101".into()],
        unconfirmed: vec!["pve1/102".into()],
        due: t(due),
    };
    store
        .write(&[
            Write::PutFollowUp(follow_up(2, 90)),
            Write::PutFollowUp(follow_up(1, 90)),
            Write::PutFollowUp(follow_up(1, 180)),
        ])
        .unwrap();
    assert_eq!(
        store.follow_ups().unwrap(),
        [follow_up(1, 180), follow_up(2, 90)]
    );
    store
        .write(&[
            Write::RemoveFollowUp {
                id: intent(1, 0, "pve1").id(),
            },
            Write::RemoveFollowUp {
                id: intent(9, 0, "pve1").id(),
            },
        ])
        .unwrap();
    assert_eq!(store.follow_ups().unwrap(), [follow_up(2, 90)]);
}

pub(crate) fn the_ledger_lists_runs_newest_first_and_finds_the_latest_success(
    store: &dyn EngineStore,
) {
    let policy = Uuid::from_u128(1);
    let other = Uuid::from_u128(2);
    let mut ok = run(policy, 1, 10, RunStatus::Ok);
    ok.results = vec![
        result("pve1/101", true, true),
        result("pve1/102", true, false),
        result("pve1/103", false, false),
        result("pve1/101", true, true),
    ];
    store.append_run(&ok).unwrap();
    store
        .append_run(&run(policy, 2, 30, RunStatus::Failed))
        .unwrap();
    store
        .append_run(&run(policy, 3, 20, RunStatus::Error))
        .unwrap();
    store.append_run(&run(other, 4, 40, RunStatus::Ok)).unwrap();

    let ids: Vec<u128> = store
        .runs(policy, 30)
        .unwrap()
        .iter()
        .map(|r| r.run_id.as_u128())
        .collect();
    assert_eq!(ids, vec![2, 3, 1]);
    assert_eq!(store.runs(policy, 1).unwrap().len(), 1);
    assert_eq!(store.runs(Uuid::from_u128(99), 30).unwrap(), vec![]);

    let latest = store
        .latest_successful_run(policy)
        .unwrap()
        .expect("a successful run");
    assert_eq!(latest, ok);
    assert_eq!(latest.changed_targets(), vec![("pve1", "pve1/101")]);
    assert_eq!(
        store.latest_successful_run(Uuid::from_u128(99)).unwrap(),
        None
    );

    let dup = store.append_run(&ok).unwrap_err();
    assert!(matches!(dup, StoreError::Conflict { .. }), "{dup:?}");
}

pub(crate) fn the_ledger_keeps_the_newest_thirty_runs_per_policy(store: &dyn EngineStore) {
    let policy = Uuid::from_u128(1);
    let other = Uuid::from_u128(2);
    store
        .append_run(&run(other, 1000, 0, RunStatus::Ok))
        .unwrap();
    for n in 0..45 {
        store
            .append_run(&run(
                policy,
                n,
                i64::try_from(n).unwrap(),
                RunStatus::Failed,
            ))
            .unwrap();
    }
    let kept = store.runs(policy, 100).unwrap();
    assert_eq!(kept.len(), LEDGER_RUNS_PER_POLICY);
    assert_eq!(kept[0].run_id, Uuid::from_u128(44));
    assert_eq!(kept[29].run_id, Uuid::from_u128(15));
    assert_eq!(
        store.runs(other, 100).unwrap().len(),
        1,
        "other policies untouched"
    );
    assert_eq!(store.latest_successful_run(policy).unwrap(), None);
}

pub(crate) fn the_kill_switch_is_off_until_set(store: &dyn EngineStore) {
    assert_eq!(store.kill_switch().unwrap(), KillSwitchState::default());
    let paused = KillSwitchState {
        paused: true,
        since: Some(t(1)),
        by: Some("admin".into()),
        reason: Some("maintenance".into()),
    };
    store.set_kill_switch(&paused).unwrap();
    assert_eq!(store.kill_switch().unwrap(), paused);
    let released = KillSwitchState {
        paused: false,
        since: Some(t(2)),
        by: Some("admin".into()),
        reason: None,
    };
    store.set_kill_switch(&released).unwrap();
    assert_eq!(store.kill_switch().unwrap(), released);
}

pub(crate) fn audit_records_are_listed_newest_first_with_filters_and_pages(
    store: &dyn EngineStore,
) {
    let policy = Uuid::from_u128(1);
    let record = |n: i64, kind: &str, policy_id| AuditRecord {
        ts: t(n),
        correlation_id: Uuid::from_u128(u128::try_from(n % 2).unwrap()),
        kind: kind.into(),
        policy_id,
        details: json!({"n": n}),
    };
    for n in 0..5 {
        let kind = if n == 3 {
            "engine.suppressed_window"
        } else {
            "engine.run"
        };
        store.append_audit(&record(n, kind, Some(policy))).unwrap();
    }
    store
        .append_audit(&record(5, "killswitch.paused", None))
        .unwrap();

    let all = store.audit(&AuditQuery::default()).unwrap();
    let seqs: Vec<i64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![6, 5, 4, 3, 2, 1]);
    assert_eq!(all[0].record, record(5, "killswitch.paused", None));

    let by_policy = AuditQuery {
        policy_id: Some(policy),
        limit: 2,
        ..AuditQuery::default()
    };
    let page = store.audit(&by_policy).unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 4]);
    let next = AuditQuery {
        before_seq: Some(4),
        ..by_policy
    };
    assert_eq!(
        store
            .audit(&next)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        vec![3, 2]
    );

    let by_kind = AuditQuery {
        kind: Some("engine.suppressed_window".into()),
        ..AuditQuery::default()
    };
    assert_eq!(store.audit(&by_kind).unwrap().len(), 1);
    let by_correlation = AuditQuery {
        correlation_id: Some(Uuid::from_u128(1)),
        ..AuditQuery::default()
    };
    assert_eq!(store.audit(&by_correlation).unwrap().len(), 3);

    // `hazel audit --since 1h --follow`: from an instant, then what came
    // after the last printed `seq`.
    let seqs_of =
        |q: &AuditQuery| -> Vec<i64> { store.audit(q).unwrap().iter().map(|e| e.seq).collect() };
    let since = AuditQuery {
        since: Some(t(3)),
        ..AuditQuery::default()
    };
    assert_eq!(seqs_of(&since), vec![6, 5, 4]);
    let after = AuditQuery {
        after_seq: Some(4),
        ..AuditQuery::default()
    };
    assert_eq!(seqs_of(&after), vec![6, 5]);
}

pub(crate) fn a_failed_batch_leaves_nothing_partial(store: &dyn EngineStore) {
    let policy = Uuid::from_u128(1);
    let existing = intent(1, 0, "pve1");
    store.persist_intent(&existing).unwrap();
    store.record_key(policy, "kept", t(0)).unwrap();
    let batch = [
        Write::RecordFire {
            policy_id: policy,
            at: t(5),
        },
        Write::RecordKey {
            policy_id: policy,
            key: "new".into(),
            at: t(5),
        },
        Write::ClearKeys {
            keys: vec!["kept".into()],
        },
        Write::AppendRun(run(policy, 1, 5, RunStatus::Ok)),
        Write::AppendAudit(AuditRecord {
            ts: t(5),
            correlation_id: Uuid::from_u128(1),
            kind: "engine.run".into(),
            policy_id: Some(policy),
            details: json!({}),
        }),
        // The constraint violation, after five writes already applied.
        Write::PersistIntent(existing.clone()),
        Write::SetKillSwitch(KillSwitchState {
            paused: true,
            ..KillSwitchState::default()
        }),
    ];
    let err = store.write(&batch).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(!err.is_retryable());

    assert_eq!(store.window_state(policy).unwrap(), WindowState::default());
    assert_eq!(store.key_ran_at("new").unwrap(), None);
    assert_eq!(store.key_ran_at("kept").unwrap(), Some(t(0)));
    assert_eq!(store.runs(policy, 30).unwrap(), vec![]);
    assert_eq!(store.audit(&AuditQuery::default()).unwrap(), vec![]);
    assert!(!store.kill_switch().unwrap().paused);
    assert_eq!(store.open_intents().unwrap(), vec![existing.clone()]);

    // An unknown intent's completion fails the batch the same way.
    let err = store
        .write(&[
            Write::RecordFire {
                policy_id: policy,
                at: t(6),
            },
            Write::CompleteIntent {
                id: intent(2, 0, "pve1").id(),
                outcome: outcome(true),
            },
        ])
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert_eq!(store.window_state(policy).unwrap(), WindowState::default());

    // The audit sequence does not skip numbers for the rolled-back append.
    store
        .append_audit(&AuditRecord {
            ts: t(7),
            correlation_id: Uuid::from_u128(1),
            kind: "engine.run".into(),
            policy_id: None,
            details: json!({}),
        })
        .unwrap();
    assert_eq!(store.audit(&AuditQuery::default()).unwrap()[0].seq, 1);
}

pub(crate) fn an_execution_batch_commits_outcome_keys_and_cleared_inverses_together(
    store: &dyn EngineStore,
) {
    let forward = Uuid::from_u128(1);
    let inverse = Uuid::from_u128(2);
    let intent = intent(5, 0, "sw1");
    store.record_fire(forward, t(0)).unwrap();
    store.record_key(forward, "poe.off:sw1/3", t(0)).unwrap();
    store.persist_intent(&intent).unwrap();
    store
        .write(&[
            Write::CompleteIntent {
                id: intent.id(),
                outcome: outcome(true),
            },
            Write::RecordKey {
                policy_id: inverse,
                key: "poe.on:sw1/3".into(),
                at: t(60),
            },
            Write::ClearKeys {
                keys: vec!["poe.off:sw1/3".into()],
            },
            Write::ClearSuppression { policy_id: forward },
        ])
        .unwrap();
    assert!(store.open_intents().unwrap().is_empty());
    assert_eq!(store.key_ran_at("poe.on:sw1/3").unwrap(), Some(t(60)));
    assert_eq!(store.key_ran_at("poe.off:sw1/3").unwrap(), None);
    assert_eq!(store.window_state(forward).unwrap().last_fired_at, None);
}

pub(crate) fn restore_entries_keep_their_first_from_and_are_removed_per_target(
    store: &dyn EngineStore,
) {
    assert!(store.restore_entries().unwrap().is_empty());
    let entry = |policy: u128, target: &str, from: &str, at| RestoreEntry {
        policy_id: Uuid::from_u128(policy),
        host: "pve-01".into(),
        target: target.into(),
        from: Some(from.into()),
        to: Some("stopped".into()),
        capability: "proxmox.vm".into(),
        verb: "shutdown".into(),
        params: json!({"grace_s": 60}),
        run_id: Uuid::from_u128(9),
        at,
    };
    store
        .write(&[
            Write::AddRestore(entry(2, "vm:101", "running", t(1))),
            Write::AddRestore(entry(1, "vm:102", "running", t(1))),
            Write::AddRestore(entry(1, "vm:101", "running", t(1))),
        ])
        .unwrap();
    // A second run on a target already in the set keeps the original entry.
    store
        .write(&[Write::AddRestore(entry(1, "vm:101", "paused", t(5)))])
        .unwrap();
    assert_eq!(
        store.restore_entries().unwrap(),
        [
            entry(1, "vm:101", "running", t(1)),
            entry(1, "vm:102", "running", t(1)),
            entry(2, "vm:101", "running", t(1)),
        ]
    );
    store
        .write(&[
            Write::RemoveRestore {
                policy_id: Uuid::from_u128(1),
                host: "pve-01".into(),
                target: "vm:101".into(),
            },
            Write::RemoveRestore {
                policy_id: Uuid::from_u128(3),
                host: "pve-01".into(),
                target: "vm:101".into(),
            },
        ])
        .unwrap();
    assert_eq!(
        store.restore_set(Uuid::from_u128(1)).unwrap(),
        [entry(1, "vm:102", "running", t(1))]
    );
}

pub(crate) fn subject_states_are_upserted_and_listed_by_subject(store: &dyn EngineStore) {
    assert!(store.subject_states().unwrap().is_empty());
    let state = |id: &str, states: &[&str], at| SubjectState {
        id: id.into(),
        states: states.iter().map(|s| s.to_string()).collect(),
        at,
    };
    store
        .write(&[
            Write::SetSubjectState(state("ups2@b:3493", &["on_mains"], t(1))),
            Write::SetSubjectState(state("ups1@a:3493", &["on_battery"], t(2))),
        ])
        .unwrap();
    store
        .write(&[Write::SetSubjectState(state(
            "ups1@a:3493",
            &["on_battery", "low_battery"],
            t(3),
        ))])
        .unwrap();
    assert_eq!(
        store.subject_states().unwrap(),
        [
            state("ups1@a:3493", &["on_battery", "low_battery"], t(3)),
            state("ups2@b:3493", &["on_mains"], t(1)),
        ]
    );
}

pub(crate) fn trigger_states_are_upserted_listed_by_policy_and_deleted_by_null(
    store: &dyn EngineStore,
) {
    assert!(store.trigger_states().unwrap().is_empty());
    let (first, second) = (Uuid::from_u128(2), Uuid::from_u128(1));
    store
        .set_trigger_state(first, &json!({"last": "on_battery"}))
        .unwrap();
    store
        .write(&[Write::SetTriggerState {
            policy_id: second,
            state: json!([true, false]),
        }])
        .unwrap();
    store
        .set_trigger_state(first, &json!({"last": "on_mains"}))
        .unwrap();
    assert_eq!(
        store.trigger_states().unwrap(),
        vec![
            (second, json!([true, false])),
            (first, json!({"last": "on_mains"})),
        ]
    );
    store.set_trigger_state(second, &Value::Null).unwrap();
    // Deleting an absent state is a no-op, like every other delete.
    store
        .set_trigger_state(Uuid::from_u128(3), &Value::Null)
        .unwrap();
    assert_eq!(
        store.trigger_states().unwrap(),
        vec![(first, json!({"last": "on_mains"}))]
    );
    // A failed batch leaves the previous state.
    let dup = intent(1, 0, "pve1");
    store.persist_intent(&dup).unwrap();
    store
        .write(&[
            Write::SetTriggerState {
                policy_id: first,
                state: json!("changed"),
            },
            Write::PersistIntent(dup),
        ])
        .unwrap_err();
    assert_eq!(
        store.trigger_states().unwrap(),
        vec![(first, json!({"last": "on_mains"}))]
    );
}

pub(crate) fn last_run_headlines_are_each_policy_s_newest_run(store: &dyn EngineStore) {
    let (a, b, quiet) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
    store.append_run(&run(a, 1, 100, RunStatus::Ok)).unwrap();
    store
        .append_run(&run(a, 2, 300, RunStatus::Failed))
        .unwrap();
    store.append_run(&run(a, 3, 200, RunStatus::Ok)).unwrap();
    store
        .append_run(&run(b, 4, 50, RunStatus::Partial))
        .unwrap();
    // Same start: the later append is the newer run, as in `runs`.
    store
        .append_run(&run(b, 5, 50, RunStatus::Interrupted))
        .unwrap();
    let headlines = store.last_run_headlines(&[a, b, quiet]).unwrap();
    assert_eq!(headlines.len(), 2, "{headlines:?}");
    assert_eq!(
        headlines[&a],
        RunHeadline {
            started_at: t(300),
            status: RunStatus::Failed
        }
    );
    assert_eq!(
        headlines[&b],
        RunHeadline {
            started_at: t(50),
            status: RunStatus::Interrupted
        }
    );
    for id in [a, b] {
        let newest = &store.runs(id, 1).unwrap()[0];
        assert_eq!(
            (headlines[&id].started_at, headlines[&id].status),
            (newest.started_at, newest.status),
            "the headline is the ledger's newest run"
        );
    }
    assert!(store.last_run_headlines(&[]).unwrap().is_empty());
    assert!(store.last_run_headlines(&[quiet]).unwrap().is_empty());
}

macro_rules! conformance_suite {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;

            $crate::engine::store::conformance::conformance_suite!(@cases $make;
                window_state_records_fires_suppressions_and_clears_the_window,
                keys_ran_within_their_window_and_can_be_cleared_and_pruned,
                deadlines_are_upserted_removed_and_listed_soonest_first,
                timer_checks_keep_the_last_check_per_policy_and_trigger,
                intents_are_open_until_completed_exactly_once,
                task_handles_join_open_intents_only,
                intents_are_marked_started_once_while_open,
                the_ledger_lists_runs_newest_first_and_finds_the_latest_success,
                the_ledger_keeps_the_newest_thirty_runs_per_policy,
                the_kill_switch_is_off_until_set,
                audit_records_are_listed_newest_first_with_filters_and_pages,
                a_failed_batch_leaves_nothing_partial,
                an_execution_batch_commits_outcome_keys_and_cleared_inverses_together,
                trigger_states_are_upserted_listed_by_policy_and_deleted_by_null,
                subject_states_are_upserted_and_listed_by_subject,
                restore_entries_keep_their_first_from_and_are_removed_per_target,
                waiting_retries_are_replaced_per_run_action_and_host_and_removed,
                follow_ups_are_replaced_per_intent_and_removed,
                last_run_headlines_are_each_policy_s_newest_run,
            );
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let (_guard, store) = $make;
                $crate::engine::store::conformance::$case(&store);
            }
        )*
    };
}

pub(crate) fn waiting_retries_are_replaced_per_run_action_and_host_and_removed(
    store: &dyn EngineStore,
) {
    assert!(store.waiting_retries().unwrap().is_empty());
    let retry = |run: u128, retries: u32| RetryRecord {
        run_id: Uuid::from_u128(run),
        policy_id: Uuid::from_u128(7),
        action_index: 0,
        host: "pve-01".into(),
        targets: vec!["vm:101".into()],
        retries,
        due: t(retries as i64 * 5),
        event: RunEvent {
            kind: "ups.state".into(),
            subject: SubjectRecord {
                kind: "ups".into(),
                id: "ups1@nas.lan:3493".into(),
            },
            correlation_id: Uuid::from_u128(3),
        },
        from: vec![("vm:101".into(), Some("running".into()))],
    };
    store
        .write(&[
            Write::PutRetry(retry(2, 1)),
            Write::PutRetry(retry(1, 1)),
            Write::PutRetry(retry(1, 2)),
        ])
        .unwrap();
    assert_eq!(store.waiting_retries().unwrap(), [retry(1, 2), retry(2, 1)]);
    store
        .write(&[
            Write::RemoveRetry {
                run_id: Uuid::from_u128(1),
                action_index: 0,
                host: "pve-01".into(),
            },
            Write::RemoveRetry {
                run_id: Uuid::from_u128(9),
                action_index: 0,
                host: "pve-01".into(),
            },
        ])
        .unwrap();
    assert_eq!(store.waiting_retries().unwrap(), [retry(2, 1)]);
}

/// Instantiates the suite for an implementation outside the engine
/// (`crate::store` runs it on the SQLite store).
pub(crate) use conformance_suite;

conformance_suite!(memory, ((), MemoryStore::new()));

/// One random append: (policy 0..3, started_at offset, successful?).
pub(crate) fn appends() -> impl Strategy<Value = Vec<(u8, i64, bool)>> {
    prop::collection::vec((0u8..3, 0i64..200, any::<bool>()), 0..100)
}

/// Appends `ops` one by one, checking the cap after each, then checks the
/// kept runs are exactly the newest 30 by (started_at, append order).
pub(crate) fn check_ledger_cap(
    store: &dyn EngineStore,
    ops: &[(u8, i64, bool)],
) -> Result<(), TestCaseError> {
    let mut model: Vec<Vec<(i64, usize)>> = vec![Vec::new(); 3];
    for (n, &(policy, started, ok)) in ops.iter().enumerate() {
        let policy_id = Uuid::from_u128(u128::from(policy) + 1);
        let status = if ok { RunStatus::Ok } else { RunStatus::Failed };
        store
            .append_run(&run(policy_id, n as u128, started, status))
            .unwrap();
        let kept = store.runs(policy_id, usize::MAX).unwrap();
        prop_assert!(kept.len() <= LEDGER_RUNS_PER_POLICY);
        model[usize::from(policy)].push((started, n));
    }
    for (policy, mut expected) in model.into_iter().enumerate() {
        expected.sort_by(|a, b| b.cmp(a));
        expected.truncate(LEDGER_RUNS_PER_POLICY);
        let kept = store
            .runs(Uuid::from_u128(policy as u128 + 1), usize::MAX)
            .unwrap();
        let kept: Vec<usize> = kept.iter().map(|r| r.run_id.as_u128() as usize).collect();
        let expected: Vec<usize> = expected.into_iter().map(|(_, n)| n).collect();
        prop_assert_eq!(kept, expected);
    }
    Ok(())
}

proptest! {
    #[test]
    fn the_memory_ledger_never_holds_more_than_thirty_runs_per_policy(ops in appends()) {
        check_ledger_cap(&MemoryStore::new(), &ops)?;
    }
}
