//! The run and ledger bookkeeping (SPEC §6 step 9): the scheduler's
//! reports turned into per-target result rows, each intent completed, the
//! keys of failed targets forgotten, and one ledger entry per run once its
//! last item is reported. It also reads the ledger back for the `ledger`
//! selector (SPEC §2), so the engine and the policy dry-run resolve it alike.

use std::collections::HashMap;

use drivers::driver::{Action, ExecOutcome};
use inventory::Severity;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    restore::Change,
    retry::{retryable, Attempt},
    ActionWork, Engine, EngineError, OpenRun, EXECUTION_FAILED, HELD_EXPIRED, INTERRUPTED,
};
use crate::engine::scheduler::{Outcome, Report, SchedulerError, Work};
use crate::engine::store::{
    AuditRecord, IntentOutcome, IntentRecord, ResultRecord, RunRecord, RunStatus, Write,
};

impl Engine {
    /// Waits for every queued or running item and closes their runs (step
    /// 9). Returns the ledger entries written, in closing order.
    pub async fn settle(&mut self) -> Result<Vec<RunRecord>, EngineError> {
        let mut closed: Vec<RunRecord> = self.closed.drain(..).collect();
        while !self.pending.is_empty() {
            if let Some(run) = self.next_run().await? {
                closed.push(run);
            }
        }
        closed.extend(self.closed.drain(..));
        Ok(closed)
    }

    /// Waits for the next item report and records it. Returns the ledger
    /// entry when that report closed a run, `None` when the run has items
    /// left or nothing was pending. For a service loop that `select!`s
    /// between the event bus and this.
    ///
    /// While it waits it also serves the scheduler's `before_self_poweroff`
    /// hook: every report already sent is recorded (the ledger is flushed)
    /// before the self-poweroff item may start.
    pub async fn next_run(&mut self) -> Result<Option<RunRecord>, EngineError> {
        loop {
            if let Some(run) = self.closed.pop_front() {
                return Ok(Some(run));
            }
            if self.pending.is_empty() {
                return Ok(None);
            }
            tokio::select! {
                report = self.reports.recv() => {
                    let Some(report) = report else {
                        return Err(EngineError::Scheduler {
                            source: SchedulerError::Stopped,
                        });
                    };
                    return self.on_report(report);
                }
                Some(reply) = self.flushes.recv() => {
                    self.flush_reports()?;
                    let _ = reply.send(());
                }
            }
        }
    }

    /// Records every report already on the channel; closed runs wait in
    /// `closed` for [`Engine::next_run`].
    pub(super) fn flush_reports(&mut self) -> Result<(), EngineError> {
        while let Ok(report) = self.reports.try_recv() {
            if let Some(run) = self.on_report(report)? {
                self.closed.push_back(run);
            }
        }
        Ok(())
    }

    /// Answers flush requests already waiting (see [`Engine::next_run`]).
    pub(super) fn serve_flushes(&mut self) -> Result<(), EngineError> {
        while let Ok(reply) = self.flushes.try_recv() {
            self.flush_reports()?;
            let _ = reply.send(());
        }
        Ok(())
    }

    /// How many scheduled items have not been reported yet.
    pub fn pending_items(&self) -> usize {
        self.pending.len()
    }

    /// The runs not yet in the ledger: items still queued or running, or
    /// retries waiting while the trigger holds (SPEC §6 "Outage lifecycle").
    pub fn open_runs(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self.open.keys().copied().collect();
        ids.sort();
        ids
    }

    pub(super) fn on_report(
        &mut self,
        report: Report<<ActionWork as Work>::Output>,
    ) -> Result<Option<RunRecord>, EngineError> {
        let Some(item) = self.pending.remove(&report.id) else {
            return Ok(None);
        };
        let elapsed = item.started.elapsed().as_millis() as u64;
        let attempt = Attempt {
            whole_retryable: matches!(
                &report.outcome,
                Outcome::Completed(Err(e)) if e.is_retryable()
            ),
            ..item.attempt
        };
        let outcome = match report.outcome {
            Outcome::Cancelled { started: false } if item.trigger_ended => {
                Ok(self.trigger_ended_outcomes(&item.intent)?)
            }
            outcome => self.observe_outcome(&item.intent, outcome)?,
        };
        self.item_done_with(item.run_id, &item.intent, outcome, elapsed, attempt)
    }

    /// Turns a scheduler outcome into the item's results and tells the
    /// snapshots what the item did to its targets.
    fn observe_outcome(
        &mut self,
        intent: &IntentRecord,
        outcome: Outcome<<ActionWork as Work>::Output>,
    ) -> Result<Result<Vec<ExecOutcome>, String>, EngineError> {
        let started = !matches!(
            outcome,
            Outcome::Dropped(_) | Outcome::Cancelled { started: false } | Outcome::NotRun
        );
        let outcome = self.outcome_results(intent, outcome)?;
        if started {
            let results: Vec<(String, Option<String>)> = match &outcome {
                Ok(list) => intent
                    .targets
                    .iter()
                    .map(|t| {
                        let state = list
                            .iter()
                            .find(|o| &o.target == t && o.ok)
                            .and_then(|o| o.result_state.clone());
                        (t.clone(), state)
                    })
                    .collect(),
                Err(_) => intent.targets.iter().map(|t| (t.clone(), None)).collect(),
            };
            self.snapshots.record_results(&intent.host, &results);
        }
        Ok(outcome)
    }

    fn outcome_results(
        &mut self,
        intent: &IntentRecord,
        outcome: Outcome<<ActionWork as Work>::Output>,
    ) -> Result<Result<Vec<ExecOutcome>, String>, EngineError> {
        Ok(match outcome {
            Outcome::Dropped(reason) => Ok(self.held_dropped(intent, &reason)?),
            Outcome::Completed(Ok(list)) => Ok(list),
            Outcome::Completed(Err(e)) => Err(e.to_string()),
            Outcome::Cancelled { started: false } => Err("cancelled".to_string()),
            Outcome::NotRun => Err("not run: the scheduler shut down".to_string()),
            // The item was running: the driver may already have acted.
            Outcome::Cancelled { started: true } => {
                Ok(interrupted_outcomes(intent, "cancelled while running"))
            }
            Outcome::Interrupted => Ok(interrupted_outcomes(
                intent,
                "interrupted at the shutdown deadline",
            )),
            Outcome::Panicked(why) => Ok(interrupted_outcomes(
                intent,
                &format!("panicked while running: {why}"),
            )),
        })
    }

    /// Records one item's outcome in its run and closes the run when it was
    /// the last one.
    pub(super) fn item_done(
        &mut self,
        run_id: Uuid,
        intent: &IntentRecord,
        outcome: Result<Vec<ExecOutcome>, String>,
        elapsed_ms: u64,
    ) -> Result<Option<RunRecord>, EngineError> {
        self.item_done_with(run_id, intent, outcome, elapsed_ms, Attempt::default())
    }

    /// [`Engine::item_done`] for an item that was attempt `attempt`: the
    /// targets it failed on with a retryable error are retried while the
    /// trigger holds (SPEC §6 "Outage lifecycle"), in the same run.
    fn item_done_with(
        &mut self,
        run_id: Uuid,
        intent: &IntentRecord,
        outcome: Result<Vec<ExecOutcome>, String>,
        elapsed_ms: u64,
        attempt: Attempt,
    ) -> Result<Option<RunRecord>, EngineError> {
        let Some(mut open) = self.open.remove(&run_id) else {
            return Ok(None);
        };
        let first_row = open.record.results.len();
        let finished = self.finish_item(&mut open.record, intent, outcome, elapsed_ms);
        open.items_left = open.items_left.saturating_sub(1);
        if finished.is_ok() {
            // The restore sets learn what the item changed as soon as it
            // is reported, not when its run closes: an inverse decided
            // meanwhile (the run may wait for a retry of another target)
            // must find it, and an inverse that restored it first must not
            // see it added back afterwards.
            let at = (self.config.clock)();
            let writes = self.record_item_changes(&open, first_row, at);
            if let Err(e) = self.store.write(&writes) {
                self.open.insert(run_id, open);
                return Err(e.into());
            }

            let failed: Vec<String> = open.record.results[first_row..]
                .iter()
                .filter(|r| {
                    !r.ok && (attempt.whole_retryable || r.code.as_deref().is_some_and(retryable))
                })
                .map(|r| r.target.clone())
                .collect();
            if !failed.is_empty()
                && self.plan_retry(
                    &mut open,
                    intent.action_index,
                    &intent.host,
                    failed,
                    attempt,
                )
            {
                open.items_left += 1;
            }
        }
        if open.items_left > 0 {
            self.open.insert(run_id, open);
            finished?;
            return Ok(None);
        }
        finished?;
        self.close_run(open.record).map(Some)
    }

    /// Step 9: status and severity from the results, the ledger entry and
    /// its audit record. The restore sets (and the suppression of the
    /// policies they empty) took in each item's changes when it was
    /// reported (`record_item_changes`).
    pub(super) fn close_run(&mut self, mut record: RunRecord) -> Result<RunRecord, EngineError> {
        record.finished_at = (self.config.clock)();
        // Rows of pairs that were attempted: the driver's answers and the
        // engine's whole-item failures (driver error, cancel, TTL drop), but
        // not the pairs skipped by a window or a guard.
        // A target retried (SPEC §6 "Outage lifecycle") counts by its last
        // attempt: failed then done is done.
        let attempted = |r: &ResultRecord| {
            r.code.as_deref().is_none_or(|c| {
                !c.starts_with("engine.")
                    || c == EXECUTION_FAILED
                    || c == INTERRUPTED
                    || c == super::GAVE_UP
                    || c == super::HOST_UNREACHABLE
            })
        };
        let mut latest: HashMap<(u32, &str, &str), usize> = HashMap::new();
        for (i, r) in record.results.iter().enumerate() {
            // "Retrying stopped" notes why the last attempt stands.
            if r.code.as_deref() != Some(super::RETRY_STOPPED) {
                latest.insert((r.action_index, r.host.as_str(), r.target.as_str()), i);
            }
        }
        let executed: Vec<&ResultRecord> = record
            .results
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                latest.get(&(r.action_index, r.host.as_str(), r.target.as_str())) == Some(i)
            })
            .map(|(_, r)| r)
            .filter(|r| attempted(r))
            .collect();
        let ok = executed.iter().filter(|r| r.ok).count();
        let interrupted = executed
            .iter()
            .any(|r| r.code.as_deref() == Some(INTERRUPTED));
        record.status = match ok {
            // A running item was stopped midway: it may have acted, and is
            // reconciled by reading state, never retried blindly.
            _ if interrupted => RunStatus::Interrupted,
            // Nothing reached a driver: every item was dropped at release,
            // or cancelled before it started as its trigger ended.
            0 if executed.is_empty()
                && record.results.iter().any(|r| {
                    matches!(
                        r.code.as_deref(),
                        Some(HELD_EXPIRED) | Some(super::TRIGGER_ENDED)
                    )
                }) =>
            {
                RunStatus::Cancelled
            }
            0 if executed.is_empty() && record.results.iter().all(|r| r.ok) => RunStatus::Ok,
            0 => RunStatus::Failed,
            n if n == executed.len() => RunStatus::Ok,
            _ => RunStatus::Partial,
        };
        record.severity = record
            .results
            .iter()
            .map(|r| r.severity)
            .max()
            .unwrap_or(Severity::Info)
            .max(super::fresh::stale_floor(&record.explain));
        // The restore sets took in what the run changed item by item
        // (`record_item_changes`).
        let mut batch = vec![Write::AppendAudit(AuditRecord {
            ts: record.finished_at,
            correlation_id: record.event.correlation_id,
            kind: "engine.run_finished".into(),
            policy_id: Some(record.policy_id),
            details: json!({"run_id": record.run_id, "status": record.status.as_str()}),
        })];
        batch.push(Write::AppendRun(record.clone()));
        self.store.write(&batch)?;
        Ok(record)
    }

    /// The restore sets (SPEC §6 "Outage lifecycle"): what the item whose
    /// rows start at `first_row` of `open`'s run changed joins its
    /// policy's set and leaves the sets it undoes. Returns the writes.
    fn record_item_changes(
        &mut self,
        open: &OpenRun,
        first_row: usize,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Vec<Write> {
        let record = &open.record;
        let params = |index: u32| {
            self.policies
                .get(&record.policy_id)
                .and_then(|p| p.ir.plan.get(index as usize))
                .map(|step| step.params.clone())
                .unwrap_or_default()
        };
        let changes: Vec<Change<'_>> = record.results[first_row..]
            .iter()
            .filter(|r| r.ok && r.changed)
            .map(|r| Change {
                host: &r.host,
                target: &r.target,
                action: Action {
                    capability: r.capability.clone(),
                    verb: r.verb.clone(),
                    params: params(r.action_index),
                },
                from: open
                    .from
                    .get(&(r.host.clone(), r.target.clone()))
                    .cloned()
                    .flatten(),
                to: r.result_state.clone(),
            })
            .collect();
        self.record_changes(record.policy_id, record.run_id, at, changes)
    }

    /// Records one item's per-target results, completes its intent and
    /// forgets the keys of the targets it failed on.
    fn finish_item(
        &self,
        record: &mut RunRecord,
        intent: &IntentRecord,
        outcome: Result<Vec<ExecOutcome>, String>,
        elapsed_ms: u64,
    ) -> Result<(), EngineError> {
        let action = Action {
            capability: intent.capability.clone(),
            verb: intent.verb.clone(),
            params: intent.params.as_object().cloned().unwrap_or_default(),
        };
        let first_row = record.results.len();
        let mut failed_keys = Vec::new();
        let mut all_ok = true;
        let mut reason = String::new();
        let mut failed_code = EXECUTION_FAILED.to_string();
        for target in &intent.targets {
            let result = match &outcome {
                Ok(list) => match list.iter().find(|o| &o.target == target) {
                    Some(o) => ResultRecord {
                        changed: o.ok
                            && o.code != "driver.already_desired"
                            && !o.code.starts_with("engine."),
                        ok: o.ok,
                        severity: o.severity,
                        code: Some(o.code.clone()),
                        reason: o.reason.clone().unwrap_or_default(),
                        evidence: Value::Object(o.evidence.clone()),
                        duration_ms: o.duration_ms,
                        result_state: o.result_state.clone(),
                        ..row(
                            0,
                            &action,
                            &intent.host,
                            target,
                            true,
                            Severity::Info,
                            "",
                            "",
                        )
                    },
                    None => row(
                        0,
                        &action,
                        &intent.host,
                        target,
                        false,
                        Severity::Error,
                        EXECUTION_FAILED,
                        "the driver reported nothing for this target",
                    ),
                },
                Err(why) => ResultRecord {
                    duration_ms: elapsed_ms,
                    ..row(
                        0,
                        &action,
                        &intent.host,
                        target,
                        false,
                        Severity::Error,
                        EXECUTION_FAILED,
                        why,
                    )
                },
            };
            let result = ResultRecord {
                action_index: intent.action_index,
                ..result
            };
            if !result.ok {
                all_ok = false;
                reason = result.reason.clone();
                if let Some(code) = result.code.as_deref().filter(|c| c.starts_with("engine.")) {
                    failed_code = code.to_string();
                }
                // An interrupted target may have been acted on: its key
                // stays, so it is never run twice by accident.
                if result.code.as_deref() != Some(INTERRUPTED) {
                    failed_keys.push(self.key(&intent.host, &action, target));
                }
            }
            record.results.push(result);
        }
        let worst = record.results[first_row..]
            .iter()
            .map(|r| r.severity)
            .max()
            .unwrap_or(Severity::Info);
        let finished_at = (self.config.clock)();
        let mut batch = vec![
            Write::CompleteIntent {
                id: intent.id(),
                outcome: IntentOutcome {
                    finished_at,
                    ok: all_ok,
                    severity: worst,
                    code: (!all_ok).then_some(failed_code),
                    reason: reason.clone(),
                },
            },
            Write::AppendAudit(AuditRecord {
                ts: finished_at,
                correlation_id: intent.correlation_id,
                kind: "execution.finished".into(),
                policy_id: Some(intent.policy_id),
                details: json!({
                    "run_id": intent.run_id,
                    "action_index": intent.action_index,
                    "capability": intent.capability,
                    "verb": intent.verb,
                    "host": intent.host,
                    "targets": intent.targets,
                    "ok": all_ok,
                    "reason": reason,
                }),
            }),
        ];
        if !failed_keys.is_empty() {
            batch.push(Write::ClearKeys { keys: failed_keys });
        }
        self.store.write(&batch)?;
        Ok(())
    }
}

/// The per-target rows of an item stopped while it ran (cancelled,
/// interrupted at shutdown, panicked): the driver may already have acted, so
/// they are `engine.interrupted`, not plain failures. Their keys stay
/// recorded and the target's state tells what happened (SPEC §6
/// "Persistence and restarts"); nothing re-executes them blindly.
fn interrupted_outcomes(intent: &IntentRecord, why: &str) -> Vec<ExecOutcome> {
    intent
        .targets
        .iter()
        .map(|target| ExecOutcome {
            target: target.clone(),
            ok: false,
            severity: Severity::Warn,
            code: INTERRUPTED.to_string(),
            reason: Some(format!(
                "{why}; {target} may already have been acted on: not retried, \
                 reconcile by reading its state"
            )),
            evidence: serde_json::Map::new(),
            duration_ms: 0,
            result_state: None,
        })
        .collect()
}

/// A result row the engine writes itself (skips, errors).
#[allow(clippy::too_many_arguments)]
pub(super) fn row(
    index: usize,
    action: &Action,
    host: &str,
    target: &str,
    ok: bool,
    severity: Severity,
    code: &str,
    reason: &str,
) -> ResultRecord {
    ResultRecord {
        action_index: index as u32,
        capability: action.capability.clone(),
        verb: action.verb.clone(),
        host: host.to_string(),
        target: target.to_string(),
        ok,
        changed: false,
        severity,
        code: (!code.is_empty()).then(|| code.to_string()),
        reason: reason.to_string(),
        evidence: Value::Null,
        duration_ms: 0,
        result_state: None,
    }
}
