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
//! - **Retries that waited for their delay.** The store keeps every retry
//!   waiting for its delay (`retry`); at start each is decided the same
//!   way (first reading, trigger, then the retry machinery with its retry
//!   count kept) in a new run whose `explain` names the one it continues.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use drivers::driver::{Action, Driver};
use drivers::task::{TaskHandle, TaskSink, TaskStatus};
use inventory::Severity;
use serde_json::{json, Value};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::{retry, Engine, EngineError, OpenRun};
use crate::engine::store::{
    AuditRecord, IntentRecord, RunEvent, RunRecord, RunStatus, TaskRecord, Write,
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
}

/// Interrupted intents waiting for the first reading of their UPS.
#[derive(Debug, Default)]
pub(super) struct Restarts {
    waiting: Vec<RestartRetry>,
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
