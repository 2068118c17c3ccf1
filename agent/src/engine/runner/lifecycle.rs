//! The engine's life across restarts and the kill switch (SPEC §6
//! "Persistence and restarts", "Kill switch"): what [`Engine::start`]
//! restores, the countdowns [`Engine::fire_due`] delivers, and the pause and
//! release of [`Engine::pause`] / [`Engine::resume`].
//!
//! Countdowns are persisted as the store's deadline records, one per
//! (policy, trigger, kind), each carrying the policy's whole trigger state
//! and the hash of the policy version it belongs to, so a restart re-arms
//! exactly what was pending. Intents left without an outcome are reconciled
//! by waiting for the device tasks they recorded and then a driver dry-run
//! (reading the targets' state), never blindly re-executed: only a
//! repeatable verb whose trigger still holds is sent again (`inflight`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use drivers::driver::{Action, ExecOutcome};
use drivers::guard::{with_context, CallContext};
use drivers::task::TaskStatus;
use inventory::Severity;
use serde_json::{json, Map, Value};
use tracing::{info, warn};
use uuid::Uuid;

use super::guards::desired_statuses;
use super::inflight;
use super::ledger::row;
use super::restore::Change;
use super::{
    Engine, EngineError, EventReport, ALREADY_DESIRED, CAPABILITY_MISSING, EXECUTION_FAILED,
    HELD_EXPIRED, HOST_UNREACHABLE, INTERRUPTED, TIMER_MISSED,
};
use crate::engine::event::Event;
use crate::engine::scheduler::DropReason;
use crate::engine::store::{
    AuditRecord, DeadlineKind, DeadlineRecord, IntentId, IntentOutcome, IntentRecord,
    KillSwitchState, RunEvent, RunRecord, RunStatus, SubjectRecord, Write,
};
use crate::engine::triggers::{
    missed_fires, next_fire, timer_at_event, TimerKind, TimerRequest, TriggerState,
};
use crate::spec::Trigger;

/// What [`Engine::start`] found and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StartReport {
    /// The persisted kill switch was engaged, so the scheduler starts paused.
    pub paused: bool,
    /// `for` / `timer.after` countdowns re-armed from the store (those on
    /// a UPS wait for its first reading before they can fire).
    pub rearmed: usize,
    /// Open intents found and reconciled, oldest first.
    pub reconciled: Vec<Reconciled>,
    /// `timer.at` fires missed while down and queued to run once (within
    /// the grace); [`Engine::fire_due`] delivers them.
    pub late_fires: usize,
    /// `timer.at` fires missed while down and recorded as missed.
    pub missed: usize,
    /// Retries that waited for their delay when the agent stopped, decided
    /// again once their subject is read (`inflight`).
    pub waiting_retries: usize,
}

/// One open intent reconciled at start by reading its targets' state.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciled {
    pub intent: IntentId,
    /// Targets the dry-run shows in the state the action leads to: their
    /// idempotency keys are kept.
    pub done: Vec<String>,
    /// Targets not (or not known to be) there: their keys are cleared so the
    /// next event acts on them; nothing is re-executed now.
    pub not_done: Vec<String>,
    /// Targets whose device task still ran when the wait for it ended:
    /// their keys are kept (the task may still act), nothing is re-executed.
    pub pending: Vec<String>,
    /// Targets of `not_done` to be sent the action again once the trigger
    /// is known to hold (a repeatable verb, `inflight`).
    pub repeat: Vec<String>,
    /// Targets of `not_done` whose call had started without reporting a
    /// device task: read once more later, as the call may still land
    /// (`inflight`).
    pub unconfirmed: Vec<String>,
    /// Why the dry-run could not be read, if it could not.
    pub error: Option<String>,
}

impl Engine {
    /// Restores what the store kept (SPEC §6 "Persistence and restarts",
    /// "Kill switch"): applies the persisted kill switch to the scheduler,
    /// re-arms the persisted `for` / `timer.after` countdowns with their
    /// trigger state, reconciles intents left without an outcome (marked
    /// `engine.interrupted`, read by a driver dry-run, never re-executed),
    /// and decides about `timer.at` fires missed while down. Call it once
    /// after loading the policies and drivers; [`Engine::handle_event`] runs
    /// it first if it was not called.
    pub async fn start(&mut self) -> Result<StartReport, EngineError> {
        if self.started {
            return Ok(StartReport::default());
        }
        self.started = true;
        let mut report = StartReport::default();
        let now = (self.config.clock)();
        if self.store.kill_switch()?.paused {
            self.scheduler
                .pause()
                .await
                .map_err(|source| EngineError::Scheduler { source })?;
            report.paused = true;
        }
        self.load_levels()?;
        self.load_restore_sets()?;
        report.rearmed = self.restore_countdowns()?;
        self.restore_follow_ups()?;
        report.reconciled = self.reconcile(now).await?;
        report.waiting_retries = self.restore_waiting_retries()?;
        let (late, missed) = self.arm_timer_at(now)?;
        report.late_fires = late;
        report.missed = missed;
        Ok(report)
    }

    /// The earliest instant [`Engine::fire_due`] has something to deliver.
    /// A service loop sleeps until then (or the next event).
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        if !self.due_events.is_empty() {
            return Some((self.config.clock)());
        }
        let at = self.at_fires.first().map(|(t, _, _)| *t);
        [
            self.timers.next_deadline(),
            at,
            self.next_retry(),
            self.next_follow_up(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Delivers every countdown and `timer.at` fire due at `now` as its
    /// internal timer event, through [`Engine::handle_event`], earliest
    /// first. Returns one report per delivered event.
    pub async fn fire_due(&mut self, now: DateTime<Utc>) -> Result<Vec<EventReport>, EngineError> {
        if !self.started {
            self.start().await?;
        }
        self.fire_retries(now).await?;
        self.fire_follow_ups(now).await?;
        let mut events: Vec<Event> = self.due_events.drain(..).collect();
        let mut checked = Vec::new();
        while let Some(&(at, id, trigger)) = self.at_fires.first() {
            if at > now {
                break;
            }
            self.at_fires.pop_first();
            events.push(timer_at_event(&id.to_string(), trigger, at));
            checked.push(Write::SetTimerChecked {
                policy_id: id,
                trigger_index: trigger as u32,
                at,
            });
            if let Some(next) = self
                .timer_at_schedule(id, trigger)
                .and_then(|schedule| next_fire(schedule, at, self.config.timezone))
            {
                self.at_fires.insert((next, id, trigger));
            }
        }
        events.extend(self.timers.pop_due(now).iter().map(TimerRequest::event));
        events.sort_by_key(|e| e.ts);
        let mut events: VecDeque<Event> = events.into();
        // A fire taken out of its queue is never dropped: on a failure it
        // and every fire after it go back to the front of `due_events`, and
        // the next call delivers them (an event handled in part is safe to
        // decide again: the fires and keys it persisted hold it back).
        if !checked.is_empty() {
            if let Err(e) = self.store.write(&checked) {
                self.requeue(events);
                return Err(e.into());
            }
        }
        let mut reports = Vec::new();
        while let Some(event) = events.pop_front() {
            match self.handle_event(&event).await {
                Ok(report) => reports.push(report),
                Err(e) => {
                    events.push_front(event);
                    self.requeue(events);
                    return Err(e);
                }
            }
        }
        Ok(reports)
    }

    /// Puts undelivered fires back, ahead of anything queued since.
    fn requeue(&mut self, mut events: VecDeque<Event>) {
        events.extend(self.due_events.drain(..));
        self.due_events = events;
    }

    /// Engages the kill switch: persisted first, then every queued and new
    /// item is held (running ones finish). Dry-runs keep working.
    ///
    /// The brake works first (SPEC §12): the scheduler holds items at once,
    /// in memory, and only then is the state persisted. A write that fails
    /// (a full disk) leaves the engine paused and is logged loudly; the
    /// answer is `Ok(false)` so the caller can say it was not persisted.
    pub async fn pause(&mut self, by: &str, reason: &str) -> Result<bool, EngineError> {
        self.scheduler
            .pause()
            .await
            .map_err(|source| EngineError::Scheduler { source })?;
        let now = (self.config.clock)();
        let persisted = self.store.write(&[
            Write::SetKillSwitch(KillSwitchState {
                paused: true,
                since: Some(now),
                by: Some(by.to_string()),
                reason: Some(reason.to_string()),
            }),
            Write::AppendAudit(AuditRecord {
                ts: now,
                correlation_id: Uuid::new_v4(),
                kind: "engine.paused".into(),
                policy_id: None,
                details: json!({"by": by, "reason": reason}),
            }),
        ]);
        if let Err(e) = &persisted {
            tracing::error!(error = %e, by, "KILL SWITCH ENGAGED IN MEMORY ONLY: the store refused the write; a restart would forget it until it is written");
        }
        Ok(persisted.is_ok())
    }

    /// Releases the kill switch: persisted, then each held item is dropped
    /// with a record if older than its TTL, else re-checked by step 7's
    /// guards from the current facts, snapshots and breakers (an item whose
    /// targets are all already in the desired state is dropped with an
    /// `engine.already_desired` record). Dropped items close their runs;
    /// [`Engine::next_run`] or [`Engine::settle`] hand those out.
    pub async fn resume(&mut self) -> Result<(), EngineError> {
        let now = (self.config.clock)();
        self.store.write(&[
            Write::SetKillSwitch(KillSwitchState {
                paused: false,
                since: Some(now),
                by: None,
                reason: None,
            }),
            Write::AppendAudit(AuditRecord {
                ts: now,
                correlation_id: Uuid::new_v4(),
                kind: "engine.resumed".into(),
                policy_id: None,
                details: json!({}),
            }),
        ])?;
        *self
            .guard_view
            .facts
            .write()
            .unwrap_or_else(|e| e.into_inner()) = self.facts.clone();
        self.scheduler
            .resume()
            .await
            .map_err(|source| EngineError::Scheduler { source })
    }

    /// Arms `state`'s countdowns for policy `id` in place of the ones armed
    /// before, and persists them with the trigger state: one deadline record
    /// per (trigger, kind), the earliest subject's deadline, each carrying
    /// the whole state. Writes nothing when nothing changed.
    pub(super) fn sync_timers(
        &mut self,
        id: Uuid,
        before: &TriggerState,
        state: &TriggerState,
    ) -> Result<(), EngineError> {
        let Some(policy) = self.policies.get(&id) else {
            return Ok(());
        };
        let pending = state.pending_timers(&id.to_string(), &policy.ir.match_.trigger_group);
        let old = self.armed.remove(&id).unwrap_or_default();
        if pending == old && before == state {
            if !old.is_empty() {
                self.armed.insert(id, old);
            }
            return Ok(());
        }
        for request in &old {
            self.timers.cancel(request);
        }
        // The audit log tells a countdown's story: started, and cancelled
        // when the condition stopped holding before its deadline (a
        // countdown that ran out fired, and its run is in the ledger).
        let now = (self.config.clock)();
        let mut audit: Vec<Write> = Vec::new();
        for request in pending.iter().filter(|r| !old.contains(r)) {
            audit.push(countdown_audit(
                "engine.countdown_started",
                id,
                request,
                now,
            ));
        }
        for request in old
            .iter()
            .filter(|r| !pending.contains(r) && r.deadline > now)
        {
            let mut record = countdown_audit("engine.countdown_cancelled", id, request, now);
            // A countdown restored at start that the first reading ended.
            if self.levels.is_gated(request) {
                not_confirmed(&mut record);
            }
            audit.push(record);
        }
        let mut due: BTreeMap<(u32, DeadlineKind), DateTime<Utc>> = BTreeMap::new();
        for request in &pending {
            if !self.levels.is_gated(request) {
                self.timers.arm(request.clone());
            }
            let slot = due
                .entry((request.trigger as u32, deadline_kind(request.kind)))
                .or_insert(request.deadline);
            *slot = (*slot).min(request.deadline);
        }
        let stored = json!({"hash": policy.ir.hash, "trigger_state": state.to_json()});
        let mut batch: Vec<Write> = due
            .iter()
            .map(|(&(trigger_index, kind), &due_at)| {
                Write::UpsertDeadline(DeadlineRecord {
                    policy_id: id,
                    trigger_index,
                    kind,
                    due_at,
                    state: stored.clone(),
                })
            })
            .collect();
        let gone: BTreeSet<(u32, DeadlineKind)> = old
            .iter()
            .map(|r| (r.trigger as u32, deadline_kind(r.kind)))
            .filter(|key| !due.contains_key(key))
            .collect();
        batch.extend(
            gone.into_iter()
                .map(|(trigger_index, kind)| Write::RemoveDeadline {
                    policy_id: id,
                    trigger_index,
                    kind,
                }),
        );
        if !pending.is_empty() {
            self.armed.insert(id, pending);
        }
        batch.extend(audit);
        if !batch.is_empty() {
            self.store.write(&batch)?;
        }
        Ok(())
    }

    /// Re-arms the countdowns the store kept, with their trigger state.
    /// State of another version of the policy (its hash changed) is dropped.
    fn restore_countdowns(&mut self) -> Result<usize, EngineError> {
        let mut seen = HashSet::new();
        let mut stale = Vec::new();
        let mut rearmed = 0;
        for record in self.store.deadlines()? {
            let Some(policy) = self.policies.get(&record.policy_id) else {
                continue;
            };
            let same_version =
                record.state.get("hash").and_then(Value::as_str) == Some(policy.ir.hash.as_str());
            let state = record
                .state
                .get("trigger_state")
                .and_then(TriggerState::from_json)
                .filter(|_| same_version);
            let Some(state) = state else {
                stale.push(Write::RemoveDeadline {
                    policy_id: record.policy_id,
                    trigger_index: record.trigger_index,
                    kind: record.kind,
                });
                continue;
            };
            if !seen.insert(record.policy_id) {
                continue;
            }
            let pending = state.pending_timers(
                &record.policy_id.to_string(),
                &policy.ir.match_.trigger_group,
            );
            for request in &pending {
                // A countdown on a UPS waits for the first reading to
                // confirm the state it counts on (SPEC §6 "Outage lifecycle").
                if self.needs_confirmation(request) {
                    self.gate(record.policy_id, request.clone());
                } else {
                    self.timers.arm(request.clone());
                }
            }
            rearmed += pending.len();
            if !pending.is_empty() {
                self.armed.insert(record.policy_id, pending);
            }
            self.decider.set_state(record.policy_id, state);
        }
        if !stale.is_empty() {
            self.store.write(&stale)?;
        }
        Ok(rearmed)
    }

    /// Marks every intent without outcome `engine.interrupted` and
    /// reconciles it: waits (bounded) for the device tasks it recorded,
    /// then reads the targets by a driver dry-run. Targets already where
    /// the action leads keep their keys (a change joins the restore set),
    /// targets whose task still runs keep theirs and are `pending`, the
    /// others have them cleared. One `interrupted` ledger entry per run;
    /// nothing is executed here: not-done targets of a repeatable verb are
    /// handed to [`Engine::defer_restart_retry`] (`inflight`).
    async fn reconcile(&mut self, now: DateTime<Utc>) -> Result<Vec<Reconciled>, EngineError> {
        let mut runs: BTreeMap<Uuid, RunRecord> = BTreeMap::new();
        let mut out = Vec::new();
        let mut retries = Vec::new();
        for intent in self.store.open_intents()? {
            let action = Action {
                capability: intent.capability.clone(),
                verb: intent.verb.clone(),
                params: intent.params.as_object().cloned().unwrap_or_default(),
            };
            let context = CallContext {
                policy_id: intent.policy_id,
                policy: self.names.get(&intent.policy_id).map(|n| n.as_str().into()),
                correlation_id: intent.correlation_id,
            };
            let driver = self.drivers.get(&intent.host).cloned();
            // Device tasks the driver reported before the crash are waited
            // for first (`inflight`): a target read while its task still
            // runs would look unchanged.
            let tasks = match &driver {
                Some(driver) if !intent.tasks.is_empty() => {
                    with_context(context.clone(), self.wait_for_tasks(&intent, driver)).await
                }
                _ => BTreeMap::new(),
            };
            let answer = match &driver {
                Some(driver) => with_context(context, driver.dry_run(&action, &intent.targets))
                    .await
                    .map_err(|e| e.to_string()),
                None => Err(format!("no driver for host {}", intent.host)),
            };
            let desired = desired_statuses(&self.config.manifests, &action);
            let repeatable = self.repeatable(&intent, &action);
            let mut changed_to: Vec<(String, Option<String>)> = Vec::new();
            let mut done = Vec::new();
            let mut not_done = Vec::new();
            let mut pending = Vec::new();
            let mut repeat = Vec::new();
            let mut from_states = HashMap::new();
            let mut rows = Vec::new();
            for target in &intent.targets {
                let from = answer.as_ref().ok().and_then(|list| {
                    list.iter()
                        .flat_map(|a| a.effects.per_target.iter())
                        .find(|e| &e.id == target)
                        .and_then(|e| e.from.clone())
                });
                let task = tasks.get(target);
                let running = task.is_some_and(|(_, s)| s.is_running());
                let failed = matches!(task, Some((_, TaskStatus::Failed { .. })));
                let reached = !running && from.as_deref().is_some_and(|s| desired.contains(&s));
                let again = !reached && !running && repeatable;
                let seen = from.as_deref().unwrap_or("unknown");
                let task_note = match task {
                    Some((t, TaskStatus::Succeeded { exit })) => {
                        format!(" (task {} ended {exit})", t.handle)
                    }
                    Some((t, TaskStatus::Failed { exit })) => {
                        format!(" (task {} failed: {exit})", t.handle)
                    }
                    _ => String::new(),
                };
                let why = if running {
                    let (t, _) = task.expect("a running task");
                    format!(
                        "interrupted by a restart; task {} on {target} still runs after {} s: \
                         pending, not re-executed, its key kept",
                        t.handle,
                        inflight::task_wait(&action.params).as_secs()
                    )
                } else if reached && failed {
                    format!(
                        "interrupted by a restart; {target} is {seen}{task_note}: \
                         already there, not a change"
                    )
                } else if reached {
                    format!(
                        "interrupted by a restart; {target} is {seen}{task_note}, \
                         so the action took effect"
                    )
                } else if again {
                    format!(
                        "interrupted by a restart; {target} is {seen}{task_note}: {} is \
                         repeatable, sent again if the trigger still holds",
                        action.verb
                    )
                } else {
                    format!(
                        "interrupted by a restart; {target} is {seen}{task_note}: \
                         not re-executed, the next event acts on it"
                    )
                };
                let mut result = row(
                    intent.action_index as usize,
                    &action,
                    &intent.host,
                    target,
                    reached,
                    Severity::Warn,
                    INTERRUPTED,
                    &why,
                );
                result.changed = reached && !failed;
                rows.push(result);
                if reached && !failed {
                    changed_to.push((target.clone(), from.clone()));
                }
                from_states.insert((intent.host.clone(), target.clone()), from.clone());
                if reached {
                    done.push(target.clone());
                } else if running {
                    pending.push(target.clone());
                } else {
                    not_done.push(target.clone());
                    if again {
                        repeat.push(target.clone());
                    }
                }
            }
            let error = answer.err();
            let reason = match &error {
                Some(e) => format!("interrupted by a restart; dry-run failed: {e}"),
                None => format!(
                    "interrupted by a restart; {} of {} targets reached the desired state{}",
                    done.len(),
                    intent.targets.len(),
                    if pending.is_empty() {
                        String::new()
                    } else {
                        format!(", {} still pending", pending.len())
                    }
                ),
            };
            warn!(policy_id = %intent.policy_id, host = %intent.host, correlation_id = %intent.correlation_id, reason = %reason, "engine.interrupted");
            let mut batch = vec![
                Write::CompleteIntent {
                    id: intent.id(),
                    outcome: IntentOutcome {
                        finished_at: now,
                        ok: not_done.is_empty() && pending.is_empty(),
                        severity: Severity::Warn,
                        code: Some(INTERRUPTED.to_string()),
                        reason: reason.clone(),
                    },
                },
                Write::AppendAudit(AuditRecord {
                    ts: now,
                    correlation_id: intent.correlation_id,
                    kind: INTERRUPTED.into(),
                    policy_id: Some(intent.policy_id),
                    details: json!({
                        "run_id": intent.run_id,
                        "action_index": intent.action_index,
                        "capability": intent.capability,
                        "verb": intent.verb,
                        "host": intent.host,
                        "done": done,
                        "not_done": not_done,
                        "pending": pending,
                        "repeat": repeat,
                        "tasks": intent.tasks,
                        "reason": reason,
                    }),
                }),
            ];
            let cleared: Vec<String> = not_done
                .iter()
                .map(|t| self.key(&intent.host, &action, t))
                .collect();
            if !cleared.is_empty() {
                batch.push(Write::ClearKeys { keys: cleared });
            }
            // A change the reconciliation found took effect joins the
            // policy's restore set (SPEC §6 "Outage lifecycle"); its state
            // before the crash is not known.
            let changes = changed_to
                .iter()
                .map(|(target, to)| Change {
                    host: &intent.host,
                    target,
                    action: action.clone(),
                    from: None,
                    to: to.clone(),
                })
                .collect();
            batch.extend(self.record_changes(intent.policy_id, intent.run_id, now, changes));
            // A call that started and reported no task for a target may
            // still land after this read (an SSH command, a Proxmox POST
            // whose UPID was not written yet): read once more later, as a
            // target whose task still runs is. Written with the outcome,
            // so a crash now cannot lose it.
            let unconfirmed: Vec<String> = match intent.started_at {
                Some(_) => not_done
                    .iter()
                    .filter(|t| !intent.tasks.iter().any(|task| &task.target == *t))
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            let follow_up = (!pending.is_empty() || !unconfirmed.is_empty()).then(|| {
                // One wait from now, after this start's own wait.
                inflight::follow_up_record(
                    intent.clone(),
                    pending.clone(),
                    unconfirmed.clone(),
                    (self.config.clock)(),
                )
            });
            batch.extend(follow_up.clone().map(Write::PutFollowUp));
            self.store.write(&batch)?;
            let version_int = self
                .policies
                .get(&intent.policy_id)
                .map_or(0, |p| p.ir.version_int);
            runs.entry(intent.run_id)
                .or_insert_with(|| RunRecord {
                    run_id: intent.run_id,
                    policy_id: intent.policy_id,
                    version_int,
                    event: intent.event.clone().unwrap_or_else(|| RunEvent {
                        kind: INTERRUPTED.into(),
                        subject: SubjectRecord {
                            kind: "host".into(),
                            id: intent.host.clone(),
                        },
                        correlation_id: intent.correlation_id,
                    }),
                    started_at: intent.created_at,
                    finished_at: now,
                    severity: Severity::Warn,
                    status: RunStatus::Interrupted,
                    results: Vec::new(),
                    explain: json!({"restart": "the agent stopped before this run finished"}),
                })
                .results
                .extend(rows);
            if let Some(record) = follow_up {
                self.keep_follow_up(record);
            }
            if let (false, Some(event)) = (repeat.is_empty(), intent.event.clone()) {
                retries.push(inflight::RestartRetry {
                    policy_id: intent.policy_id,
                    run_id: intent.run_id,
                    action_index: intent.action_index,
                    host: intent.host.clone(),
                    targets: repeat.clone(),
                    event,
                    from: from_states,
                    waiting: None,
                    restores: false,
                });
            }
            out.push(Reconciled {
                intent: intent.id(),
                done,
                not_done,
                pending,
                repeat,
                unconfirmed,
                error,
            });
        }
        let batch: Vec<Write> = runs.into_values().map(Write::AppendRun).collect();
        if !batch.is_empty() {
            self.store.write(&batch)?;
        }
        // The interrupted runs are in the ledger; what is sent again runs
        // as new runs once the trigger can be checked.
        for retry in retries {
            self.defer_restart_retry(retry)?;
        }
        Ok(out)
    }

    /// Arms the next fire of every `timer.at` trigger and decides about the
    /// ones missed while down: the latest within the grace runs once (queued
    /// for [`Engine::fire_due`]), the others are audited as missed. Returns
    /// (late fires queued, fires recorded as missed).
    fn arm_timer_at(&mut self, now: DateTime<Utc>) -> Result<(usize, usize), EngineError> {
        let checks = self.store.timer_checks()?;
        let mut batch = Vec::new();
        let (mut late, mut missed_count) = (0, 0);
        let tz = self.config.timezone;
        for (id, policy) in &self.policies {
            for (index, trigger) in policy.ir.match_.trigger_group.triggers.iter().enumerate() {
                let Trigger::TimerAt { schedule } = trigger else {
                    continue;
                };
                let last = checks
                    .iter()
                    .find(|c| c.policy_id == *id && c.trigger_index == index as u32)
                    .map(|c| c.checked_at);
                if let Some(last) = last {
                    let decision = missed_fires(schedule, last, now, self.config.missed_grace, tz);
                    if let Some(due) = decision.due.filter(|_| decision.fire_once) {
                        self.due_events
                            .push_back(timer_at_event(&id.to_string(), index, due));
                        late += 1;
                    }
                    missed_count += decision.missed.len();
                    if !decision.missed.is_empty() {
                        batch.push(Write::AppendAudit(AuditRecord {
                            ts: now,
                            correlation_id: Uuid::new_v4(),
                            kind: TIMER_MISSED.into(),
                            policy_id: Some(*id),
                            details: json!({
                                "trigger": index,
                                "missed": decision.missed,
                                "truncated": decision.truncated,
                                "grace_s": self.config.missed_grace.as_secs(),
                            }),
                        }));
                    }
                }
                batch.push(Write::SetTimerChecked {
                    policy_id: *id,
                    trigger_index: index as u32,
                    at: now,
                });
                if let Some(next) = next_fire(schedule, now, tz) {
                    self.at_fires.insert((next, *id, index));
                }
            }
        }
        if !batch.is_empty() {
            self.store.write(&batch)?;
        }
        Ok((late, missed_count))
    }

    /// The schedule of `timer.at` trigger `index` of policy `id`.
    fn timer_at_schedule(&self, id: Uuid, index: usize) -> Option<&crate::spec::Schedule> {
        match self
            .policies
            .get(&id)?
            .ir
            .match_
            .trigger_group
            .triggers
            .get(index)?
        {
            Trigger::TimerAt { schedule } => Some(schedule),
            _ => None,
        }
    }

    /// The per-target rows of an item the kill switch dropped at release,
    /// as if the driver had answered, and its audit record.
    pub(super) fn held_dropped(
        &self,
        intent: &IntentRecord,
        reason: &DropReason,
    ) -> Result<Vec<ExecOutcome>, EngineError> {
        let (ok, severity, code, why) = match reason {
            DropReason::Expired { .. } => (false, Severity::Warn, HELD_EXPIRED, reason.to_string()),
            DropReason::Recheck(text) => match text.split_once(": ") {
                Some((ALREADY_DESIRED, why)) => (true, Severity::Info, ALREADY_DESIRED, why.into()),
                Some((HOST_UNREACHABLE, why)) => {
                    (false, Severity::Error, HOST_UNREACHABLE, why.into())
                }
                Some((CAPABILITY_MISSING, why)) => {
                    (false, Severity::Error, CAPABILITY_MISSING, why.into())
                }
                _ => (false, Severity::Error, EXECUTION_FAILED, text.clone()),
            },
        };
        info!(policy_id = %intent.policy_id, host = %intent.host, correlation_id = %intent.correlation_id, code, reason = %why, "held item dropped at release");
        self.store.write(&[Write::AppendAudit(AuditRecord {
            ts: (self.config.clock)(),
            correlation_id: intent.correlation_id,
            kind: "engine.held_dropped".into(),
            policy_id: Some(intent.policy_id),
            details: json!({
                "run_id": intent.run_id,
                "action_index": intent.action_index,
                "host": intent.host,
                "targets": intent.targets,
                "code": code,
                "reason": why,
            }),
        })])?;
        Ok(intent
            .targets
            .iter()
            .map(|target| ExecOutcome {
                target: target.clone(),
                ok,
                severity,
                code: code.to_string(),
                reason: Some(why.clone()),
                evidence: Map::new(),
                duration_ms: 0,
                result_state: None,
            })
            .collect())
    }
}

/// The store's name for a countdown kind.
/// The audit record of a countdown starting or being cancelled.
pub(super) fn countdown_audit(
    kind: &str,
    policy_id: Uuid,
    request: &TimerRequest,
    now: DateTime<Utc>,
) -> Write {
    Write::AppendAudit(AuditRecord {
        ts: now,
        correlation_id: request.correlation_id,
        kind: kind.to_string(),
        policy_id: Some(policy_id),
        details: json!({
            "trigger": request.trigger,
            "timer": request.kind.as_str(),
            "deadline": request.deadline,
            "subject": request.subject_id,
        }),
    })
}

/// Marks a `countdown_audit` record as a countdown restored at start that
/// the first reading did not confirm (reason [`super::NOT_CONFIRMED`]).
pub(super) fn not_confirmed(record: &mut Write) {
    if let Write::AppendAudit(entry) = record {
        if let Value::Object(details) = &mut entry.details {
            details.insert("reason".into(), Value::from(super::NOT_CONFIRMED));
        }
    }
}

pub(super) fn deadline_kind(kind: TimerKind) -> DeadlineKind {
    match kind {
        TimerKind::ForHold => DeadlineKind::For,
        TimerKind::After => DeadlineKind::After,
    }
}
