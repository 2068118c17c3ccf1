//! The run and ledger bookkeeping (SPEC §6 step 9): the scheduler's
//! reports turned into per-target result rows, each intent completed, the
//! keys of failed targets forgotten, and one ledger entry per run once its
//! last item is reported. It also reads the ledger back for the `ledger`
//! selector (SPEC §2), so the engine and the policy dry-run resolve it alike.

use std::collections::HashSet;

use drivers::driver::{Action, ExecOutcome};
use inventory::{HostInventory, Severity};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{ActionWork, Engine, EngineError, EXECUTION_FAILED, HELD_EXPIRED, INTERRUPTED};
use crate::engine::scheduler::{Outcome, Report, SchedulerError, Work};
use crate::engine::store::{
    AuditRecord, IntentOutcome, IntentRecord, ResultRecord, RunRecord, RunStatus, Write,
};

/// What a `ledger` selector resolves to (SPEC §6 step 5): the targets of
/// `target_type` on `host_id` that the forward policy's latest successful
/// `run` changed, in result order, keeping only those `snapshot` still has
/// (all of them without a snapshot). Shared by the engine and the policy
/// dry-run so both resolve a ledger selector the same way.
pub fn ledger_targets(
    run: Option<&RunRecord>,
    host_id: &str,
    target_type: &str,
    snapshot: Option<&HostInventory>,
) -> Vec<String> {
    let prefix = format!("{target_type}:");
    run.iter()
        .flat_map(|r| r.changed_targets())
        .filter(|(host, target)| *host == host_id && target.starts_with(&prefix))
        .filter(|(_, target)| snapshot.is_none_or(|s| s.contains(target)))
        .map(|(_, target)| target.to_string())
        .collect()
}

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

    pub(super) fn on_report(
        &mut self,
        report: Report<<ActionWork as Work>::Output>,
    ) -> Result<Option<RunRecord>, EngineError> {
        let Some(item) = self.pending.remove(&report.id) else {
            return Ok(None);
        };
        let elapsed = item.started.elapsed().as_millis() as u64;
        let outcome = self.observe_outcome(&item.intent, report.outcome)?;
        self.item_done(item.run_id, &item.intent, outcome, elapsed)
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
        let Some(mut open) = self.open.remove(&run_id) else {
            return Ok(None);
        };
        let finished = self.finish_item(&mut open.record, intent, outcome, elapsed_ms);
        open.items_left = open.items_left.saturating_sub(1);
        if open.items_left > 0 {
            self.open.insert(run_id, open);
            finished?;
            return Ok(None);
        }
        finished?;
        self.close_run(open.record).map(Some)
    }

    /// Step 9: status and severity from the results, the suppression of
    /// undone policies cleared, the ledger entry and its audit record.
    fn close_run(&self, mut record: RunRecord) -> Result<RunRecord, EngineError> {
        record.finished_at = (self.config.clock)();
        // Rows of pairs that were attempted: the driver's answers and the
        // engine's whole-item failures (driver error, cancel, TTL drop), but
        // not the pairs skipped by a window or a guard.
        let executed: Vec<&ResultRecord> = record
            .results
            .iter()
            .filter(|r| {
                r.code.as_deref().is_none_or(|c| {
                    !c.starts_with("engine.") || c == EXECUTION_FAILED || c == INTERRUPTED
                })
            })
            .collect();
        let ok = executed.iter().filter(|r| r.ok).count();
        let interrupted = executed
            .iter()
            .any(|r| r.code.as_deref() == Some(INTERRUPTED));
        record.status = match ok {
            // A running item was stopped midway: it may have acted, and is
            // reconciled by reading state, never retried blindly.
            _ if interrupted => RunStatus::Interrupted,
            // Nothing reached a driver: every item was dropped at release.
            0 if executed.is_empty()
                && record
                    .results
                    .iter()
                    .any(|r| r.code.as_deref() == Some(HELD_EXPIRED)) =>
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
            .unwrap_or(Severity::Info);
        self.clear_undone_suppression(&record)?;
        self.store.write(&[
            Write::AppendAudit(AuditRecord {
                ts: record.finished_at,
                correlation_id: record.event.correlation_id,
                kind: "engine.run_finished".into(),
                policy_id: Some(record.policy_id),
                details: json!({"run_id": record.run_id, "status": record.status.as_str()}),
            }),
            Write::AppendRun(record.clone()),
        ])?;
        Ok(record)
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

    /// Step 4's clearing: every other policy with an action that `record`'s
    /// successful actions invert, on a target its latest successful run
    /// changed (or its compiled selection), gets its suppression cleared.
    fn clear_undone_suppression(&self, record: &RunRecord) -> Result<(), EngineError> {
        let changed: Vec<&ResultRecord> = record
            .results
            .iter()
            .filter(|r| r.ok && r.changed)
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let mut cleared = Vec::new();
        for (other_id, other) in &self.policies {
            if *other_id == record.policy_id {
                continue;
            }
            let theirs: HashSet<(String, String)> =
                match self.store.latest_successful_run(*other_id)? {
                    Some(run) => run
                        .changed_targets()
                        .into_iter()
                        .map(|(h, t)| (h.to_string(), t.to_string()))
                        .collect(),
                    None => other
                        .ir
                        .targets
                        .resolved_ids
                        .iter()
                        .flatten()
                        .map(|t| (other.ir.targets.host_id.clone(), t.clone()))
                        .collect(),
                };
            let undone = changed.iter().any(|r| {
                let Some(cap) = self.capability(&r.capability) else {
                    return false;
                };
                let Some(ours) = self
                    .policies
                    .get(&record.policy_id)
                    .and_then(|p| p.ir.plan.get(r.action_index as usize))
                    .map(|step| &step.params)
                else {
                    return false;
                };
                other.ir.plan.iter().any(|step| {
                    step.capability == r.capability
                        && cap.inverts(&r.verb, ours, &step.verb, &step.params)
                }) && theirs.contains(&(r.host.clone(), r.target.clone()))
            });
            if undone {
                cleared.push(Write::ClearSuppression {
                    policy_id: *other_id,
                });
            }
        }
        if !cleared.is_empty() {
            self.store.write(&cleared)?;
        }
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
    }
}
