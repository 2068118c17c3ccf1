//! The in-memory store for tests and the event dry-run's scratch state. It
//! behaves like the SQLite store ([`crate::store::SqliteStore`]; the
//! conformance suite checks both) but keeps nothing across a restart.
//!
//! A batch is applied to a copy of the state that replaces the original
//! only when every write succeeded, which gives the same all-or-nothing
//! guarantee as a transaction.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{
    AuditEntry, AuditQuery, DeadlineKind, DeadlineRecord, EngineStore, FollowUpRecord, IntentEntry,
    IntentId, IntentRecord, KillSwitchState, RestoreEntry, RetryRecord, RunRecord, StoreError,
    StoreResult, SubjectState, TimerCheckRecord, WindowState, Write, LEDGER_RUNS_PER_POLICY,
};

/// An [`EngineStore`] held in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Clone, Default)]
struct State {
    windows: BTreeMap<Uuid, WindowState>,
    /// key -> (policy, ran_at)
    keys: BTreeMap<String, (Uuid, DateTime<Utc>)>,
    deadlines: BTreeMap<(Uuid, u32, DeadlineKind), DeadlineRecord>,
    timer_checks: BTreeMap<(Uuid, u32), DateTime<Utc>>,
    intents: BTreeMap<IntentId, IntentEntry>,
    /// policy -> (append seq, run), kept sorted newest first.
    runs: BTreeMap<Uuid, Vec<(u64, RunRecord)>>,
    next_run_seq: u64,
    kill_switch: KillSwitchState,
    audit: Vec<AuditEntry>,
    trigger_states: BTreeMap<Uuid, Value>,
    subject_states: BTreeMap<String, SubjectState>,
    restore: BTreeMap<(Uuid, String, String), RestoreEntry>,
    retries: BTreeMap<(Uuid, u32, String), RetryRecord>,
    follow_ups: BTreeMap<IntentId, FollowUpRecord>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    // Safe after a panic: writes never mutate the shared state in place.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl EngineStore for MemoryStore {
    fn write(&self, batch: &[Write]) -> StoreResult<()> {
        let mut guard = self.lock();
        // A batch that cannot fail is applied in place; one that may fail
        // is applied to a copy first, so it leaves nothing partial. (Copying
        // every time made each write cost the whole history.)
        if !guard.may_fail(batch) {
            for write in batch {
                guard.apply(write)?;
            }
            return Ok(());
        }
        let mut next = guard.clone();
        for write in batch {
            next.apply(write)?;
        }
        *guard = next;
        Ok(())
    }

    fn window_state(&self, policy_id: Uuid) -> StoreResult<WindowState> {
        Ok(self
            .lock()
            .windows
            .get(&policy_id)
            .cloned()
            .unwrap_or_default())
    }

    fn key_ran_at(&self, key: &str) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(self.lock().keys.get(key).map(|(_, at)| *at))
    }

    fn deadlines(&self) -> StoreResult<Vec<DeadlineRecord>> {
        let mut out: Vec<DeadlineRecord> = self.lock().deadlines.values().cloned().collect();
        out.sort_by(|a, b| {
            (a.due_at, a.policy_id, a.trigger_index, a.kind.as_str()).cmp(&(
                b.due_at,
                b.policy_id,
                b.trigger_index,
                b.kind.as_str(),
            ))
        });
        Ok(out)
    }

    fn timer_checks(&self) -> StoreResult<Vec<TimerCheckRecord>> {
        Ok(self
            .lock()
            .timer_checks
            .iter()
            .map(
                |(&(policy_id, trigger_index), &checked_at)| TimerCheckRecord {
                    policy_id,
                    trigger_index,
                    checked_at,
                },
            )
            .collect())
    }

    fn open_intents(&self) -> StoreResult<Vec<IntentRecord>> {
        let mut out: Vec<IntentRecord> = self
            .lock()
            .intents
            .values()
            .filter(|entry| entry.outcome.is_none())
            .map(|entry| entry.intent.clone())
            .collect();
        out.sort_by_key(|a| (a.created_at, a.id()));
        Ok(out)
    }

    fn intent(&self, id: &IntentId) -> StoreResult<Option<IntentEntry>> {
        Ok(self.lock().intents.get(id).cloned())
    }

    fn runs(&self, policy_id: Uuid, limit: usize) -> StoreResult<Vec<RunRecord>> {
        Ok(self
            .lock()
            .runs
            .get(&policy_id)
            .map(|runs| {
                runs.iter()
                    .take(limit)
                    .map(|(_, run)| run.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    fn latest_successful_run(&self, policy_id: Uuid) -> StoreResult<Option<RunRecord>> {
        Ok(self.lock().runs.get(&policy_id).and_then(|runs| {
            runs.iter()
                .map(|(_, run)| run)
                .find(|run| run.status.is_successful())
                .cloned()
        }))
    }

    fn kill_switch(&self) -> StoreResult<KillSwitchState> {
        Ok(self.lock().kill_switch.clone())
    }

    fn restore_entries(&self) -> StoreResult<Vec<RestoreEntry>> {
        Ok(self.lock().restore.values().cloned().collect())
    }

    fn waiting_retries(&self) -> StoreResult<Vec<RetryRecord>> {
        Ok(self.lock().retries.values().cloned().collect())
    }

    fn follow_ups(&self) -> StoreResult<Vec<FollowUpRecord>> {
        Ok(self.lock().follow_ups.values().cloned().collect())
    }

    fn subject_states(&self) -> StoreResult<Vec<SubjectState>> {
        Ok(self.lock().subject_states.values().cloned().collect())
    }

    fn trigger_states(&self) -> StoreResult<Vec<(Uuid, Value)>> {
        Ok(self
            .lock()
            .trigger_states
            .iter()
            .map(|(id, state)| (*id, state.clone()))
            .collect())
    }

    fn audit(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEntry>> {
        Ok(self
            .lock()
            .audit
            .iter()
            .rev()
            .filter(|entry| query.matches(entry))
            .take(query.limit)
            .cloned()
            .collect())
    }
}

impl State {
    /// Whether applying `batch` could return an error (a conflict or a
    /// missing intent), counting what the batch itself writes first.
    /// Conservative: a batch that prunes intents is treated as fallible.
    fn may_fail(&self, batch: &[Write]) -> bool {
        let mut persisted = std::collections::BTreeSet::new();
        let mut completed = std::collections::BTreeSet::new();
        let mut appended = std::collections::BTreeSet::new();
        for write in batch {
            match write {
                Write::PersistIntent(intent) => {
                    let id = intent.id();
                    if self.intents.contains_key(&id) || !persisted.insert(id) {
                        return true;
                    }
                }
                Write::CompleteIntent { id, .. } => {
                    let stored = self.intents.get(id).map(|e| e.outcome.is_some());
                    let known = stored.is_some() || persisted.contains(id);
                    if !known || stored == Some(true) || !completed.insert(id.clone()) {
                        return true;
                    }
                }
                Write::PruneIntents { .. } => return true,
                Write::AppendRun(run) => {
                    let kept = self
                        .runs
                        .values()
                        .flatten()
                        .any(|(_, kept)| kept.run_id == run.run_id);
                    if kept || !appended.insert(run.run_id) {
                        return true;
                    }
                }
                _ => {}
            }
        }
        false
    }

    fn apply(&mut self, write: &Write) -> StoreResult<()> {
        match write {
            Write::RecordFire { policy_id, at } => {
                self.windows.entry(*policy_id).or_default().last_fired_at = Some(*at);
            }
            Write::RecordSuppressed { policy_id, at } => {
                let window = self.windows.entry(*policy_id).or_default();
                window.last_suppressed_at = Some(*at);
                window.suppressed_count += 1;
            }
            Write::ClearSuppression { policy_id } => {
                if let Some(window) = self.windows.get_mut(policy_id) {
                    window.last_fired_at = None;
                }
            }
            Write::RecordKey { policy_id, key, at } => {
                self.keys.insert(key.clone(), (*policy_id, *at));
            }
            Write::ClearKeys { keys } => {
                for key in keys {
                    self.keys.remove(key);
                }
            }
            Write::PruneKeys { before } => self.keys.retain(|_, (_, at)| *at >= *before),
            Write::UpsertDeadline(deadline) => {
                let key = (deadline.policy_id, deadline.trigger_index, deadline.kind);
                self.deadlines.insert(key, deadline.clone());
            }
            Write::RemoveDeadline {
                policy_id,
                trigger_index,
                kind,
            } => {
                self.deadlines.remove(&(*policy_id, *trigger_index, *kind));
            }
            Write::SetTimerChecked {
                policy_id,
                trigger_index,
                at,
            } => {
                self.timer_checks.insert((*policy_id, *trigger_index), *at);
            }
            Write::ReopenIntent(intent) => {
                self.intents.insert(
                    intent.id(),
                    IntentEntry {
                        intent: intent.clone(),
                        outcome: None,
                    },
                );
            }
            Write::PersistIntent(intent) => {
                let id = intent.id();
                if self.intents.contains_key(&id) {
                    return Err(StoreError::Conflict {
                        what: format!(
                            "intent {} action {} on {} already persisted",
                            id.run_id, id.action_index, id.host
                        ),
                    });
                }
                let entry = IntentEntry {
                    intent: intent.clone(),
                    outcome: None,
                };
                self.intents.insert(id, entry);
            }
            Write::RecordTask { id, task } => {
                if let Some(entry) = self.intents.get_mut(id) {
                    if entry.outcome.is_none() && !entry.intent.tasks.contains(task) {
                        entry.intent.tasks.push(task.clone());
                    }
                }
            }
            Write::StartIntent { id, at } => {
                if let Some(entry) = self.intents.get_mut(id) {
                    if entry.outcome.is_none() && entry.intent.started_at.is_none() {
                        entry.intent.started_at = Some(*at);
                    }
                }
            }
            Write::CompleteIntent { id, outcome } => {
                let describe =
                    || format!("{} action {} on {}", id.run_id, id.action_index, id.host);
                let entry = self
                    .intents
                    .get_mut(id)
                    .ok_or_else(|| StoreError::NotFound {
                        what: format!("intent {}", describe()),
                    })?;
                if entry.outcome.is_some() {
                    return Err(StoreError::Conflict {
                        what: format!("intent {} already has an outcome", describe()),
                    });
                }
                entry.outcome = Some(outcome.clone());
            }
            Write::PruneIntents { before } => self.intents.retain(|_, entry| {
                entry
                    .outcome
                    .as_ref()
                    .is_none_or(|outcome| outcome.finished_at >= *before)
            }),
            Write::AppendRun(run) => {
                let duplicate = self
                    .runs
                    .values()
                    .flatten()
                    .any(|(_, kept)| kept.run_id == run.run_id);
                if duplicate {
                    return Err(StoreError::Conflict {
                        what: format!("run {} already in the ledger", run.run_id),
                    });
                }
                self.next_run_seq += 1;
                let runs = self.runs.entry(run.policy_id).or_default();
                runs.push((self.next_run_seq, run.clone()));
                runs.sort_by(|(seq_a, a), (seq_b, b)| {
                    (b.started_at, seq_b).cmp(&(a.started_at, seq_a))
                });
                runs.truncate(LEDGER_RUNS_PER_POLICY);
            }
            Write::SetKillSwitch(state) => self.kill_switch = state.clone(),
            Write::AppendAudit(record) => {
                let seq = self.audit.last().map_or(1, |last| last.seq + 1);
                self.audit.push(AuditEntry {
                    seq,
                    record: record.clone(),
                });
            }
            Write::AddRestore(entry) => {
                self.restore
                    .entry((entry.policy_id, entry.host.clone(), entry.target.clone()))
                    .or_insert_with(|| entry.clone());
            }
            Write::RemoveRestore {
                policy_id,
                host,
                target,
            } => {
                self.restore
                    .remove(&(*policy_id, host.clone(), target.clone()));
            }
            Write::PutRetry(retry) => {
                self.retries.insert(
                    (retry.run_id, retry.action_index, retry.host.clone()),
                    retry.clone(),
                );
            }
            Write::RemoveRetry {
                run_id,
                action_index,
                host,
            } => {
                self.retries.remove(&(*run_id, *action_index, host.clone()));
            }
            Write::PutFollowUp(record) => {
                self.follow_ups.insert(record.intent.id(), record.clone());
            }
            Write::RemoveFollowUp { id } => {
                self.follow_ups.remove(id);
            }
            Write::SetSubjectState(state) => {
                self.subject_states.insert(state.id.clone(), state.clone());
            }
            Write::SetTriggerState { policy_id, state } => {
                if state.is_null() {
                    self.trigger_states.remove(policy_id);
                } else {
                    self.trigger_states.insert(*policy_id, state.clone());
                }
            }
        }
        Ok(())
    }
}
