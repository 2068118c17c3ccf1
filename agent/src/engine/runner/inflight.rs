//! Work that was in flight when the agent stopped (SPEC §6 "Persistence and
//! restarts"): device tasks a driver reported before it waited for them,
//! and interrupted intents that are safe to send again.
//!
//! - **Task handles.** Every queued item runs its `execute` inside a
//!   [`TaskSink`] ([`drivers::task`]) that writes each handle the driver
//!   reports (a Proxmox UPID) into the item's intent at once
//!   ([`Write::RecordTask`]), while the task still runs. A crash after
//!   that leaves the handle in the open intent.
//! - **Waiting for them at start.** Reconciliation (`lifecycle`) asks the
//!   driver about each recorded task ([`Driver::task_status`]) and waits,
//!   polling every [`TASK_POLL`], until none runs or the action's own
//!   bound passed: its `timeout_s`, else `grace_s` plus
//!   [`TASK_WAIT_MARGIN`], at most [`TASK_WAIT_MAX`]. Only then does it
//!   read the targets. A target whose task ended OK in the desired state
//!   is a change (it joins the restore set); one whose task still runs at
//!   the bound is reported `pending` with its key kept (the task may still
//!   act), never re-executed. Start is delayed by at most that bound per
//!   interrupted intent.
//! - **Sending an interrupted intent again.** A target reconciliation
//!   finds not in the desired state (no task running) is sent the action
//!   again only when the manifest lists the verb as `repeatable` (and its
//!   params lead to a status: a PoE `cycle` never is), the policy still
//!   has that action, the intent knows its event, and the policy's trigger
//!   still holds. At start the UPS has not been read yet, so the check
//!   waits for the event subject's first reading (or event); a subject no
//!   source reads is checked at once. The retry then goes through the
//!   retry machinery (`retry`, [`Engine::plan_retry`]): first attempt
//!   after the action's backoff, the trigger checked again when it is due,
//!   the host guards, already-desired targets skipped. It is a new ledger
//!   run (the interrupted run is already in the ledger) whose `explain`
//!   names the interrupted one. A reboot, reset or cycle is never re-run.
//! - **Reading a target again.** A target still `pending` at start, and a
//!   target of a call that had started ([`Write::StartIntent`], written
//!   right before the driver call) without reporting a task and that read
//!   not in the desired state (`unconfirmed`: an SSH command, a Proxmox
//!   POST whose UPID was not written before the crash may still land), is
//!   read once more (its task, then a dry-run) one more wait later, from
//!   the engine's timer loop ([`Engine::fire_follow_ups`]): a target found
//!   in the desired state then is a change (it joins the restore set). A
//!   pending one found elsewhere with its task ended has its key cleared
//!   (and is sent again under the rule above), one whose task still runs
//!   keeps its key; an unconfirmed one was already handled at start (key
//!   cleared, sent again if repeatable), so only a change found counts, and
//!   a target already in the restore set (a retry changed it) is not
//!   counted twice. The result is a new ledger run of `engine.interrupted`
//!   rows whose `explain` names the interrupted run (the ledger appends,
//!   never rewrites). Follow-ups are kept in the store
//!   ([`Write::PutFollowUp`]), so a second restart before one is due still
//!   does it.
//! - **The mains returning before that read.** When the forward policy's
//!   level trigger ends (the mains back) and a loaded policy's `ledger`
//!   selector names it, its follow-ups are read at once, before the
//!   inverses decide on the event ([`Engine::read_follow_ups_early`]):
//!   what is found changed joins the restore set and is restored by the
//!   inverse; what still runs or reads unchanged is kept for its due
//!   time. A change found at that time, when an inverse already ran (its
//!   trigger holds and no hold counts down), is restored by that inverse
//!   through the retry machinery, in a new run whose `explain` says why.
//! - **Retries that waited for their delay.** The store keeps every retry
//!   waiting for its delay (`retry`); at start each is decided the same
//!   way (first reading, trigger, then the retry machinery with its retry
//!   count kept) in a new run whose `explain` names the one it continues.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use drivers::driver::{Action, Driver};
use drivers::guard::{with_context, CallContext};
use drivers::task::{TaskHandle, TaskSink, TaskStatus};
use inventory::Severity;
use serde_json::{json, Value};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::guards::desired_statuses;
use super::ledger::row;
use super::restore::Change;
use super::{retry, Engine, EngineError, OpenRun, INTERRUPTED};
use crate::engine::store::{
    AuditRecord, FollowUpRecord, IntentId, IntentRecord, RunEvent, RunRecord, RunStatus,
    TaskRecord, Write,
};

/// How much longer than the action's grace reconciliation waits for a task.
pub const TASK_WAIT_MARGIN: Duration = Duration::from_secs(30);
/// The longest reconciliation waits for the tasks of one intent.
pub const TASK_WAIT_MAX: Duration = Duration::from_secs(600);
/// How often reconciliation reads a running task.
pub const TASK_POLL: Duration = Duration::from_secs(2);
/// Audit kind of the decision about sending an interrupted intent again.
pub const RESTART_RETRY: &str = "engine.restart_retry";

/// An interrupted intent to send again once its trigger is known to hold.
#[derive(Debug)]
pub(super) struct RestartRetry {
    pub policy_id: Uuid,
    /// The interrupted run.
    pub run_id: Uuid,
    pub action_index: u32,
    pub host: String,
    pub targets: Vec<String>,
    pub event: RunEvent,
    /// Each target's state as reconciliation read it (the restore set's "from").
    pub from: HashMap<(String, String), Option<String>>,
    /// `Some(n)`: not an interrupted intent but retry `n` of `run_id`,
    /// which waited for its delay when the agent stopped (its store
    /// record goes once it is decided).
    pub waiting: Option<u32>,
    /// Not an interrupted intent but an inverse (`policy_id`) sent to
    /// targets a follow-up read found changed by `run_id` after the
    /// inverse had already resolved its restore set.
    pub restores: bool,
}

/// Interrupted intents waiting for the first reading of their UPS, and
/// reconciled ones to read again.
#[derive(Debug, Default)]
pub(super) struct Restarts {
    waiting: Vec<RestartRetry>,
    /// Reconciled intents whose targets are read once more at their `due`
    /// ([`Engine::fire_follow_ups`]); the store keeps them too.
    follow_ups: Vec<FollowUpRecord>,
    /// Follow-ups already read early: what that read left waits for its
    /// due time instead of being read again on every later event.
    read_early: HashSet<IntentId>,
}

/// Marks a queued item's intent started; called once, right before its
/// driver call.
pub type StartMark = Arc<dyn Fn() + Send + Sync>;

/// The follow-up that reads `intent`'s `pending` and `unconfirmed`
/// targets again one task wait after `now`.
pub(super) fn follow_up_record(
    intent: IntentRecord,
    pending: Vec<String>,
    unconfirmed: Vec<String>,
    now: DateTime<Utc>,
) -> FollowUpRecord {
    let params = intent.params.as_object().cloned().unwrap_or_default();
    let wait = chrono::Duration::from_std(task_wait(&params)).unwrap_or(chrono::Duration::MAX);
    FollowUpRecord {
        intent,
        pending,
        unconfirmed,
        due: now + wait,
    }
}

/// How long reconciliation waits for the tasks of an action with `params`.
pub(super) fn task_wait(params: &serde_json::Map<String, Value>) -> Duration {
    let secs = |key: &str| params.get(key).and_then(Value::as_u64);
    let wait = match secs("timeout_s") {
        Some(timeout) => Duration::from_secs(timeout),
        None => Duration::from_secs(secs("grace_s").unwrap_or(0)) + TASK_WAIT_MARGIN,
    };
    wait.min(TASK_WAIT_MAX)
}

impl Engine {
    /// The sink that persists the task handles `intent`'s execute reports.
    /// A failed write is logged: the item still runs, and a crash before
    /// it ends is then reconciled by reading state, as without a handle.
    pub(super) fn task_sink(&self, intent: &IntentRecord) -> TaskSink {
        let store = self.store.clone();
        let id = intent.id();
        let (policy_id, correlation_id) = (intent.policy_id, intent.correlation_id);
        Arc::new(move |task: &TaskHandle| {
            let write = Write::RecordTask {
                id: id.clone(),
                task: TaskRecord {
                    target: task.target.clone(),
                    handle: task.handle.clone(),
                },
            };
            match store.write(&[write]) {
                Ok(()) => {
                    debug!(%policy_id, %correlation_id, target = %task.target, task = %task.handle, "device task recorded")
                }
                Err(e) => {
                    warn!(%policy_id, %correlation_id, target = %task.target, error = %e, "cannot record the device task")
                }
            }
        })
    }

    /// The mark that records `intent` started ([`Write::StartIntent`]). A
    /// failed write is logged: the item still runs, and a crash before it
    /// ends is then reconciled as a call that never started.
    pub(super) fn start_mark(&self, intent: &IntentRecord) -> StartMark {
        let store = self.store.clone();
        let clock = self.config.clock.clone();
        let id = intent.id();
        let (policy_id, correlation_id) = (intent.policy_id, intent.correlation_id);
        Arc::new(move || {
            let write = Write::StartIntent {
                id: id.clone(),
                at: clock(),
            };
            if let Err(e) = store.write(&[write]) {
                warn!(%policy_id, %correlation_id, error = %e, "cannot mark the intent started");
            }
        })
    }

    /// Reads the tasks `intent` recorded until none runs or its bound
    /// ([`task_wait`]) passed; the last status per target. A read that
    /// fails counts as [`TaskStatus::Unknown`] (the state read decides).
    pub(super) async fn wait_for_tasks(
        &self,
        intent: &IntentRecord,
        driver: &Arc<dyn Driver>,
    ) -> BTreeMap<String, (TaskRecord, TaskStatus)> {
        let params = intent.params.as_object().cloned().unwrap_or_default();
        let until = tokio::time::Instant::now() + task_wait(&params);
        let mut last: BTreeMap<String, (TaskRecord, TaskStatus)> = BTreeMap::new();
        loop {
            for task in &intent.tasks {
                let done = last
                    .get(&task.target)
                    .is_some_and(|(t, s)| t == task && !s.is_running());
                if done {
                    continue;
                }
                let handle = TaskHandle {
                    target: task.target.clone(),
                    handle: task.handle.clone(),
                };
                let status = driver.task_status(&handle).await.unwrap_or_else(|e| {
                    warn!(host = %intent.host, task = %task.handle, error = %e, "cannot read the device task");
                    TaskStatus::Unknown
                });
                last.insert(task.target.clone(), (task.clone(), status));
            }
            let running = last.values().any(|(_, s)| s.is_running());
            let now = tokio::time::Instant::now();
            if !running || now >= until {
                return last;
            }
            tokio::time::sleep(TASK_POLL.min(until - now)).await;
        }
    }

    /// Reads a follow-up's targets again at its due time (module docs);
    /// the caller has written it to the store.
    pub(super) fn keep_follow_up(&mut self, record: FollowUpRecord) {
        self.restarts.follow_ups.push(record);
    }

    /// The follow-up reads a previous start left in the store (at start).
    pub(super) fn restore_follow_ups(&mut self) -> Result<usize, EngineError> {
        let records = self.store.follow_ups()?;
        let count = records.len();
        self.restarts.follow_ups.extend(records);
        Ok(count)
    }

    /// When the next follow-up read is due.
    pub(super) fn next_follow_up(&self) -> Option<DateTime<Utc>> {
        self.restarts.follow_ups.iter().map(|f| f.due).min()
    }

    /// Reads again the targets of every follow-up due at `now`: each
    /// target's task once, then the targets by a dry-run. Records a ledger
    /// run, the changes found (restore set), clears the keys of the
    /// pending targets not done, and hands those of a repeatable verb to
    /// [`Engine::defer_restart_retry`].
    pub(super) async fn fire_follow_ups(&mut self, now: DateTime<Utc>) -> Result<(), EngineError> {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.restarts.follow_ups)
            .into_iter()
            .partition(|f| f.due <= now);
        self.restarts.follow_ups = later;
        for follow_up in due {
            self.restarts.read_early.remove(&follow_up.intent.id());
            self.follow_up(follow_up, now, false).await?;
        }
        Ok(())
    }

    /// Reads now, before they are due, the follow-ups of the policies whose
    /// level trigger has ended (the mains are back): the inverses decided
    /// on this event then count what they find changed (SPEC §6 "Outage
    /// lifecycle"). What is still running or unchanged is kept for its due
    /// time.
    pub(super) async fn read_follow_ups_early(&mut self) -> Result<(), EngineError> {
        if self.restarts.follow_ups.is_empty() {
            return Ok(());
        }
        let now = (self.config.clock)();
        let (ended, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.restarts.follow_ups)
            .into_iter()
            .partition(|f| {
                !self.restarts.read_early.contains(&f.intent.id())
                    && f.intent.event.as_ref().is_some_and(|e| {
                        self.trigger_ended(f.intent.policy_id, &e.subject.id)
                            && self.has_inverse(f.intent.policy_id)
                    })
            });
        self.restarts.follow_ups = keep;
        for follow_up in ended {
            self.restarts.read_early.insert(follow_up.intent.id());
            self.follow_up(follow_up, now, true).await?;
        }
        Ok(())
    }

    /// Whether a loaded policy's `ledger` selector names `forward`.
    fn has_inverse(&self, forward: Uuid) -> bool {
        self.policies
            .values()
            .any(|p| super::ledger_forward(p) == Some(forward))
    }

    /// One follow-up read. `early`: read before its due time; targets
    /// still running or unchanged are kept (same due), not settled.
    async fn follow_up(
        &mut self,
        follow_up: FollowUpRecord,
        now: DateTime<Utc>,
        early: bool,
    ) -> Result<(), EngineError> {
        let FollowUpRecord {
            intent,
            pending: pending_before,
            unconfirmed,
            due,
        } = follow_up;
        let targets: Vec<String> = pending_before
            .iter()
            .chain(unconfirmed.iter())
            .cloned()
            .collect();
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
        let Some(driver) = self.drivers.get(&intent.host).cloned() else {
            self.store
                .write(&[Write::RemoveFollowUp { id: intent.id() }])?;
            return Ok(());
        };
        let mut tasks: BTreeMap<String, (TaskRecord, TaskStatus)> = BTreeMap::new();
        for task in intent
            .tasks
            .iter()
            .filter(|t| pending_before.contains(&t.target))
        {
            let handle = TaskHandle {
                target: task.target.clone(),
                handle: task.handle.clone(),
            };
            let status = with_context(context.clone(), driver.task_status(&handle))
                .await
                .unwrap_or_else(|e| {
                    warn!(host = %intent.host, task = %task.handle, error = %e, "cannot read the device task");
                    TaskStatus::Unknown
                });
            tasks.insert(task.target.clone(), (task.clone(), status));
        }
        let answer = with_context(context, driver.dry_run(&action, &targets))
            .await
            .map_err(|e| e.to_string());
        let desired = desired_statuses(&self.config.manifests, &action);
        let repeatable = self.repeatable(&intent, &action);
        let (mut done, mut not_done, mut pending, mut repeat) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut still_unconfirmed = Vec::new();
        let mut changes = Vec::new();
        let mut from_states = HashMap::new();
        let mut rows = Vec::new();
        let held: Vec<String> = self
            .restore
            .of(intent.policy_id)
            .filter(|e| e.host == intent.host)
            .map(|e| e.target.clone())
            .collect();
        for target in &targets {
            let seen = answer.as_ref().ok().and_then(|list| {
                list.iter()
                    .flat_map(|a| a.effects.per_target.iter())
                    .find(|e| &e.id == target)
                    .and_then(|e| e.from.clone())
            });
            let shown = seen.as_deref().unwrap_or("unknown");
            if unconfirmed.contains(target) {
                // A call that started without a task handle: only a change
                // found now tells (its key was cleared at start, and a
                // repeatable verb was handed to the retry then).
                let reached = seen.as_deref().is_some_and(|s| desired.contains(&s));
                if !reached {
                    still_unconfirmed.push(target.clone());
                    continue;
                }
                if held.contains(target) {
                    // Already in the restore set (a retry changed it).
                    done.push(target.clone());
                    continue;
                }
                let why = format!(
                    "read again after a restart; {target} is {shown}: the interrupted call took effect after the start's read"
                );
                let mut result = row(
                    intent.action_index as usize,
                    &action,
                    &intent.host,
                    target,
                    true,
                    Severity::Warn,
                    INTERRUPTED,
                    &why,
                );
                result.changed = true;
                rows.push(result);
                changes.push((target.clone(), seen.clone()));
                done.push(target.clone());
                continue;
            }
            let task = tasks.get(target);
            let running = task.is_some_and(|(_, s)| s.is_running());
            let failed = matches!(task, Some((_, TaskStatus::Failed { .. })));
            let reached = !running && seen.as_deref().is_some_and(|s| desired.contains(&s));
            if early && running {
                pending.push(target.clone());
                continue;
            }
            let why = if running {
                format!("read again after a restart; the task on {target} still runs: pending, its key kept")
            } else if reached && failed {
                format!(
                    "read again after a restart; {target} is {shown}: already there, not a change"
                )
            } else if reached {
                format!(
                    "read again after a restart; {target} is {shown}, so the action took effect"
                )
            } else {
                format!("read again after a restart; {target} is {shown}: not done")
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
            from_states.insert((intent.host.clone(), target.clone()), seen.clone());
            if reached {
                if !failed {
                    changes.push((target.clone(), seen.clone()));
                }
                done.push(target.clone());
            } else if running {
                pending.push(target.clone());
            } else {
                not_done.push(target.clone());
                if repeatable {
                    repeat.push(target.clone());
                }
            }
        }
        let reason = match &answer {
            Err(e) => format!("read again after a restart; dry-run failed: {e}"),
            Ok(_) => format!(
                "read again after a restart; {} of {} targets reached the desired state",
                done.len(),
                targets.len()
            ),
        };
        info!(policy_id = %intent.policy_id, host = %intent.host, correlation_id = %intent.correlation_id, early, reason = %reason, "engine.interrupted follow-up");
        let event = intent.event.clone().unwrap_or_else(|| RunEvent {
            kind: INTERRUPTED.into(),
            subject: crate::engine::store::SubjectRecord {
                kind: "host".into(),
                id: intent.host.clone(),
            },
            correlation_id: intent.correlation_id,
        });
        let version_int = self
            .policies
            .get(&intent.policy_id)
            .map_or(0, |p| p.ir.version_int);
        let mut batch = vec![Write::AppendAudit(AuditRecord {
            ts: now,
            correlation_id: intent.correlation_id,
            kind: INTERRUPTED.into(),
            policy_id: Some(intent.policy_id),
            details: json!({
                "run_id": intent.run_id,
                "follow_up": true,
                "early": early,
                "host": intent.host,
                "verb": intent.verb,
                "done": done,
                "not_done": not_done,
                "pending": pending,
                "unconfirmed": still_unconfirmed,
                "repeat": repeat,
                "reason": reason,
            }),
        })];
        if !rows.is_empty() {
            batch.push(Write::AppendRun(RunRecord {
                run_id: Uuid::new_v4(),
                policy_id: intent.policy_id,
                version_int,
                event: event.clone(),
                started_at: now,
                finished_at: now,
                severity: Severity::Warn,
                status: RunStatus::Interrupted,
                results: rows,
                explain: json!({
                    "restart": format!(
                        "run {} was interrupted by a restart while its device calls could still act; its targets were read again",
                        intent.run_id
                    ),
                }),
            }));
        }
        let cleared: Vec<String> = not_done
            .iter()
            .map(|t| self.key(&intent.host, &action, t))
            .collect();
        if !cleared.is_empty() {
            batch.push(Write::ClearKeys { keys: cleared });
        }
        // Read early, what is still running or unchanged waits for its
        // due time; at the due time, this was the last read.
        let rest = early && !(pending.is_empty() && still_unconfirmed.is_empty());
        let rest = rest.then(|| FollowUpRecord {
            intent: intent.clone(),
            pending: pending.clone(),
            unconfirmed: still_unconfirmed.clone(),
            due,
        });
        match &rest {
            Some(record) => batch.push(Write::PutFollowUp(record.clone())),
            None => batch.push(Write::RemoveFollowUp { id: intent.id() }),
        }
        let changed: Vec<String> = changes.iter().map(|(t, _)| t.clone()).collect();
        let changes = changes
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
        self.store.write(&batch)?;
        self.restarts.follow_ups.extend(rest);
        if !repeat.is_empty() {
            self.defer_restart_retry(RestartRetry {
                policy_id: intent.policy_id,
                run_id: intent.run_id,
                action_index: intent.action_index,
                host: intent.host.clone(),
                targets: repeat,
                event: event.clone(),
                from: from_states,
                waiting: None,
                restores: false,
            })?;
        }
        if !early && !changed.is_empty() {
            self.restore_late_changes(&intent, &event, changed)?;
        }
        Ok(())
    }

    /// Targets a follow-up read found changed after the forward's trigger
    /// ended and its inverse already resolved the restore set (the device
    /// finished the shutdown late): each inverse of `intent`'s policy whose
    /// trigger holds and whose hold is not still counting down restores
    /// them through the retry machinery (first attempt after its backoff,
    /// the trigger checked again then). An inverse still counting down
    /// reads them from the restore set when it fires.
    fn restore_late_changes(
        &mut self,
        intent: &IntentRecord,
        event: &RunEvent,
        targets: Vec<String>,
    ) -> Result<(), EngineError> {
        let inverses: Vec<(Uuid, u32)> = self
            .policies
            .values()
            .filter(|p| super::ledger_forward(p) == Some(intent.policy_id))
            .filter(|p| p.ir.targets.host_id == intent.host)
            .filter(|p| !self.armed.contains_key(&p.id))
            .filter(|p| self.trigger_holds(p.id, &event.subject.id))
            .flat_map(|p| (0..p.ir.plan.len() as u32).map(move |i| (p.id, i)))
            .collect();
        for (policy_id, action_index) in inverses {
            self.restart_retry(RestartRetry {
                policy_id,
                run_id: intent.run_id,
                action_index,
                host: intent.host.clone(),
                targets: targets.clone(),
                event: event.clone(),
                from: HashMap::new(),
                waiting: None,
                restores: true,
            })?;
        }
        Ok(())
    }

    /// Whether `intent`'s action may be sent again after an interruption:
    /// the manifest lists its verb as repeatable for its params, and the
    /// policy still runs that action at that index.
    pub(super) fn repeatable(&self, intent: &IntentRecord, action: &Action) -> bool {
        let listed = self
            .config
            .manifests
            .capability(&action.capability)
            .is_some_and(|(_, cap)| cap.repeats(&action.verb, &action.params));
        let same = self
            .policies
            .get(&intent.policy_id)
            .and_then(|p| p.ir.plan.get(intent.action_index as usize))
            .is_some_and(|step| step.capability == action.capability && step.verb == action.verb);
        listed && same && intent.event.is_some()
    }

    /// The retries that waited for their delay when the agent stopped
    /// (the store kept them, `retry`): each is decided like an
    /// interrupted intent, once its subject is read.
    pub(super) fn restore_waiting_retries(&mut self) -> Result<usize, EngineError> {
        let records = self.store.waiting_retries()?;
        let count = records.len();
        for record in records {
            let from = record
                .from
                .into_iter()
                .map(|(target, state)| ((record.host.clone(), target), state))
                .collect();
            self.defer_restart_retry(RestartRetry {
                policy_id: record.policy_id,
                run_id: record.run_id,
                action_index: record.action_index,
                host: record.host,
                targets: record.targets,
                event: record.event,
                from,
                waiting: Some(record.retries),
                restores: false,
            })?;
        }
        Ok(count)
    }

    /// Sends `retry` again once its trigger can be checked: now when its
    /// subject is not a UPS waiting for its first reading, else at that
    /// reading ([`Engine::release_restart_retries`]).
    pub(super) fn defer_restart_retry(&mut self, retry: RestartRetry) -> Result<(), EngineError> {
        let subject = &retry.event.subject;
        if subject.kind == "ups" && self.awaits_reading(&subject.id) {
            self.restarts.waiting.push(retry);
            return Ok(());
        }
        self.restart_retry(retry)
    }

    /// The first reading (or event) of `subject` since start: the
    /// interrupted intents waiting for it are decided now.
    pub(super) fn release_restart_retries(&mut self, subject: &str) -> Result<(), EngineError> {
        let (now, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.restarts.waiting)
            .into_iter()
            .partition(|r| r.event.subject.id == subject);
        self.restarts.waiting = wait;
        for retry in now {
            self.restart_retry(retry)?;
        }
        Ok(())
    }

    /// Opens a new run for `retry` and hands its targets to the retry
    /// machinery, which checks the trigger now and again when the retry
    /// is due. Audited either way.
    fn restart_retry(&mut self, retry: RestartRetry) -> Result<(), EngineError> {
        let now = (self.config.clock)();
        let version_int = self
            .policies
            .get(&retry.policy_id)
            .map_or(0, |p| p.ir.version_int);
        let run_id = Uuid::new_v4();
        let mut open = OpenRun {
            record: RunRecord {
                run_id,
                policy_id: retry.policy_id,
                version_int,
                event: retry.event.clone(),
                started_at: now,
                finished_at: now,
                severity: Severity::Info,
                status: RunStatus::Error,
                results: Vec::new(),
                explain: json!({
                    "restart": match retry.waiting {
                        _ if retry.restores => format!(
                            "a read after a restart found targets changed by run {} after this inverse had run; they are restored",
                            retry.run_id
                        ),
                        Some(n) => format!(
                            "retry {n} of run {} waited for its delay when the agent restarted",
                            retry.run_id
                        ),
                        None => format!(
                            "run {} was interrupted by a restart before its targets reached the desired state; its action is repeatable",
                            retry.run_id
                        ),
                    },
                    "retry_of": retry.run_id,
                }),
            },
            items_left: 0,
            from: retry.from,
        };
        let scheduled = self.plan_retry(
            &mut open,
            retry.action_index,
            &retry.host,
            retry.targets.clone(),
            retry::Attempt {
                retries: retry.waiting.map_or(0, |n| n.saturating_sub(1)),
                ..retry::Attempt::default()
            },
        );
        let decision = if scheduled { "scheduled" } else { "not_held" };
        info!(policy_id = %retry.policy_id, host = %retry.host, correlation_id = %retry.event.correlation_id, decision, waiting_retry = ?retry.waiting, "interrupted intent: {decision}");
        let mut batch = Vec::new();
        if retry.waiting.is_some() {
            batch.push(Write::RemoveRetry {
                run_id: retry.run_id,
                action_index: retry.action_index,
                host: retry.host.clone(),
            });
        }
        batch.push(Write::AppendAudit(AuditRecord {
            ts: now,
            correlation_id: retry.event.correlation_id,
            kind: RESTART_RETRY.into(),
            policy_id: Some(retry.policy_id),
            details: json!({
                "interrupted_run_id": retry.run_id,
                "run_id": scheduled.then_some(run_id),
                "action_index": retry.action_index,
                "host": retry.host,
                "targets": retry.targets,
                "waiting_retry": retry.waiting,
                "decision": decision,
            }),
        }));
        self.store.write(&batch)?;
        if scheduled {
            open.items_left = 1;
            self.open.insert(run_id, open);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_waited_for_the_timeout_or_the_grace_plus_a_margin_at_most_ten_minutes() {
        let params = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert_eq!(
            task_wait(&params(json!({"grace_s": 60}))),
            Duration::from_secs(90)
        );
        assert_eq!(
            task_wait(&params(json!({"grace_s": 60, "timeout_s": 20}))),
            Duration::from_secs(20)
        );
        assert_eq!(task_wait(&params(json!({}))), TASK_WAIT_MARGIN);
        assert_eq!(task_wait(&params(json!({"grace_s": 3600}))), TASK_WAIT_MAX);
    }
}
