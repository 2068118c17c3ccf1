//! Persistence of the engine's state (SPEC §6 "Persistence and restarts",
//! §10): window state, idempotency keys, `for` / `timer.after` deadlines,
//! `timer.at` check times, intents, the ledger, the kill switch and the
//! audit log, behind the [`EngineStore`] trait so that a restart forgets
//! nothing and repeats nothing.
//!
//! Two implementations share one conformance suite: the embedded SQLite
//! store of the agent's database ([`crate::store::SqliteStore`], outside the
//! engine, which only knows this trait), and [`MemoryStore`] for tests. The
//! records here are plain serde structs: they are the storage format, and
//! the engine maps its runtime types to and from them. Every write goes
//! through [`EngineStore::write`], which applies a whole [`Write`] batch in
//! one transaction, so a crash or a failed statement mid-batch leaves
//! nothing partial. [`Write`] is `#[non_exhaustive]`, so engine-side
//! variants can be added without breaking callers.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use inventory::Severity;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

mod memory;

pub use memory::MemoryStore;

/// How many ledger entries are kept per policy (SPEC §6 step 9, §10).
pub const LEDGER_RUNS_PER_POLICY: usize = 30;

/// The result of every store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// The engine's persistent state.
///
/// # Blocking
///
/// Every method is synchronous and may block on disk IO (an `fsync` per
/// committed write for the SQLite store). The engine calls them directly on
/// its own thread (`hazel-engine`, a current-thread runtime of its own, see
/// `service::engine_loop`), whose work is to decide, persist and then act
/// in that order; the service calls them through `spawn_blocking`. Neither
/// blocks the API's runtime workers.
///
/// # Guarantees
///
/// - [`EngineStore::write`] is atomic: either every [`Write`] of the batch
///   is applied or none is (the error says why). Single-write helpers such as
///   [`EngineStore::record_fire`] are batches of one.
/// - A write that returned `Ok` survives a crash of the agent and, for
///   the SQLite store with its default `synchronous=FULL`, a power loss.
/// - Reads see every write that returned before them.
/// - Persisting an intent twice, appending a run id twice, or completing an
///   intent twice is a [`StoreError::Conflict`]; completing an unknown
///   intent is a [`StoreError::NotFound`]. Everything else is an upsert or a
///   delete and is idempotent, so a retried batch is safe.
pub trait EngineStore: Send + Sync {
    /// Applies `batch` in one transaction (see `# Guarantees`).
    fn write(&self, batch: &[Write]) -> StoreResult<()>;

    /// A policy's window state; the default (never fired, nothing
    /// suppressed) for a policy the store has not seen.
    fn window_state(&self, policy_id: Uuid) -> StoreResult<WindowState>;

    /// When `key` last ran, if it is still recorded.
    fn key_ran_at(&self, key: &str) -> StoreResult<Option<DateTime<Utc>>>;

    /// Every pending deadline, soonest first.
    fn deadlines(&self) -> StoreResult<Vec<DeadlineRecord>>;

    /// The last `timer.at` check time of every (policy, trigger) recorded.
    fn timer_checks(&self) -> StoreResult<Vec<TimerCheckRecord>>;

    /// Intents persisted without an outcome, oldest first. After a crash
    /// these are the executions that may or may not have happened: the engine
    /// marks them `engine.interrupted` and reconciles them by reading the
    /// target's state, never by re-executing.
    fn open_intents(&self) -> StoreResult<Vec<IntentRecord>>;

    /// One intent and its outcome, if any.
    fn intent(&self, id: &IntentId) -> StoreResult<Option<IntentEntry>>;

    /// A policy's ledger, newest first (by `started_at`, then by append
    /// order), at most `limit` entries.
    fn runs(&self, policy_id: Uuid, limit: usize) -> StoreResult<Vec<RunRecord>>;

    /// The newest run of each of `ids` that has one, as its headline (when
    /// it started, how it ended): what the policies table shows. The
    /// default reads each ledger; a store can answer all at once.
    fn last_run_headlines(
        &self,
        ids: &[Uuid],
    ) -> StoreResult<std::collections::HashMap<Uuid, RunHeadline>> {
        let mut out = std::collections::HashMap::with_capacity(ids.len());
        for id in ids {
            if let Some(run) = self.runs(*id, 1)?.into_iter().next() {
                out.insert(
                    *id,
                    RunHeadline {
                        started_at: run.started_at,
                        status: run.status,
                    },
                );
            }
        }
        Ok(out)
    }

    /// The newest kept run of `policy_id` whose status is
    /// [`RunStatus::is_successful`]; the `ledger` selector reads its
    /// [`RunRecord::changed_targets`]. `None` when no such run is kept (never
    /// ran, or 30 newer unsuccessful runs pushed it out).
    fn latest_successful_run(&self, policy_id: Uuid) -> StoreResult<Option<RunRecord>>;

    /// The agent-wide kill switch; not paused when never set.
    fn kill_switch(&self) -> StoreResult<KillSwitchState>;

    /// Audit records matching `query`, newest first.
    fn audit(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEntry>>;

    /// Every persisted trigger edge state (see [`Write::SetTriggerState`]),
    /// by policy id ascending. The engine does not restore edge state at
    /// start (the runner's module docs say why: with silent source
    /// baselines a restored state could hide the next outage); this stays
    /// for sources that can confirm a state at start.
    fn trigger_states(&self) -> StoreResult<Vec<(Uuid, Value)>>;

    /// The last state the engine accepted for every subject that has one
    /// (SPEC §1: what a source's first reading after start is compared
    /// with), by subject id ascending.
    fn subject_states(&self) -> StoreResult<Vec<SubjectState>>;

    /// Every policy's restore set (SPEC §6 "Outage lifecycle"), by policy,
    /// host and target ascending.
    fn restore_entries(&self) -> StoreResult<Vec<RestoreEntry>>;

    /// The retries waiting for their delay (SPEC §6 "Outage lifecycle":
    /// retry while the trigger holds), by run, action index and host.
    fn waiting_retries(&self) -> StoreResult<Vec<RetryRecord>>;

    /// The follow-up reads of reconciled intents not yet done (SPEC §6
    /// "Persistence and restarts"), by intent id.
    fn follow_ups(&self) -> StoreResult<Vec<FollowUpRecord>>;

    /// The restore set of `policy_id`, by host and target.
    fn restore_set(&self, policy_id: Uuid) -> StoreResult<Vec<RestoreEntry>> {
        Ok(self
            .restore_entries()?
            .into_iter()
            .filter(|e| e.policy_id == policy_id)
            .collect())
    }

    /// Whether `key` ran at or after `now - window`. A key recorded in the
    /// future of `now` (clock stepped back) counts as recent: repeating an
    /// action is worse than skipping one. `now` is the engine's clock, so
    /// tests can run on a virtual one.
    fn key_ran_within(&self, key: &str, now: DateTime<Utc>, window: Duration) -> StoreResult<bool> {
        let Some(ran_at) = self.key_ran_at(key)? else {
            return Ok(false);
        };
        let window = TimeDelta::from_std(window).unwrap_or(TimeDelta::MAX);
        Ok(match now.checked_sub_signed(window) {
            Some(cutoff) => ran_at >= cutoff,
            None => true,
        })
    }

    /// Records that `policy_id` fired at `at` (starts its suppression window).
    fn record_fire(&self, policy_id: Uuid, at: DateTime<Utc>) -> StoreResult<()> {
        self.write(&[Write::RecordFire { policy_id, at }])
    }

    /// Counts one suppressed evaluation of `policy_id` at `at`.
    fn record_suppressed(&self, policy_id: Uuid, at: DateTime<Utc>) -> StoreResult<()> {
        self.write(&[Write::RecordSuppressed { policy_id, at }])
    }

    /// Clears `policy_id`'s suppression window (see [`Write::ClearSuppression`]).
    fn clear_suppression(&self, policy_id: Uuid) -> StoreResult<()> {
        self.write(&[Write::ClearSuppression { policy_id }])
    }

    /// Records that idempotency `key` ran at `at` on behalf of `policy_id`.
    fn record_key(&self, policy_id: Uuid, key: &str, at: DateTime<Utc>) -> StoreResult<()> {
        self.write(&[Write::RecordKey {
            policy_id,
            key: key.to_owned(),
            at,
        }])
    }

    /// Forgets `keys` (an inverse action ran on the same targets).
    fn clear_keys(&self, keys: &[String]) -> StoreResult<()> {
        self.write(&[Write::ClearKeys {
            keys: keys.to_vec(),
        }])
    }

    /// Forgets keys that last ran before `before` (older than any window).
    fn prune_keys(&self, before: DateTime<Utc>) -> StoreResult<()> {
        self.write(&[Write::PruneKeys { before }])
    }

    /// Inserts or replaces the deadline of (policy, trigger index, kind).
    fn upsert_deadline(&self, deadline: &DeadlineRecord) -> StoreResult<()> {
        self.write(&[Write::UpsertDeadline(deadline.clone())])
    }

    /// Removes the deadline of (policy, trigger index, kind), if any.
    fn remove_deadline(
        &self,
        policy_id: Uuid,
        trigger_index: u32,
        kind: DeadlineKind,
    ) -> StoreResult<()> {
        self.write(&[Write::RemoveDeadline {
            policy_id,
            trigger_index,
            kind,
        }])
    }

    /// Records that the `timer.at` trigger was checked up to `at`.
    fn set_timer_checked(
        &self,
        policy_id: Uuid,
        trigger_index: u32,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.write(&[Write::SetTimerChecked {
            policy_id,
            trigger_index,
            at,
        }])
    }

    /// Persists an intent before its execution is enqueued (SPEC §6 step 8).
    fn persist_intent(&self, intent: &IntentRecord) -> StoreResult<()> {
        self.write(&[Write::PersistIntent(intent.clone())])
    }

    /// Records the outcome of an intent.
    fn complete_intent(&self, id: &IntentId, outcome: &IntentOutcome) -> StoreResult<()> {
        self.write(&[Write::CompleteIntent {
            id: id.clone(),
            outcome: outcome.clone(),
        }])
    }

    /// Appends a ledger entry, pruning the policy's ledger to the newest 30.
    fn append_run(&self, run: &RunRecord) -> StoreResult<()> {
        self.write(&[Write::AppendRun(run.clone())])
    }

    /// Persists the kill switch.
    fn set_kill_switch(&self, state: &KillSwitchState) -> StoreResult<()> {
        self.write(&[Write::SetKillSwitch(state.clone())])
    }

    /// Appends an audit record.
    fn append_audit(&self, record: &AuditRecord) -> StoreResult<()> {
        self.write(&[Write::AppendAudit(record.clone())])
    }

    /// Persists (or with `Value::Null` forgets) a policy's trigger edge state.
    fn set_trigger_state(&self, policy_id: Uuid, state: &Value) -> StoreResult<()> {
        self.write(&[Write::SetTriggerState {
            policy_id,
            state: state.clone(),
        }])
    }
}

/// One write of a [`EngineStore::write`] batch. The engine batches the
/// writes that must land together, e.g. an intent's outcome with the
/// idempotency keys it recorded and the inverse keys it cleared.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Write {
    /// Sets the policy's `last_fired_at`.
    RecordFire { policy_id: Uuid, at: DateTime<Utc> },
    /// Sets `last_suppressed_at` and adds one to `suppressed_count`.
    RecordSuppressed { policy_id: Uuid, at: DateTime<Utc> },
    /// Clears `last_fired_at`, so the next matching event acts (its effect
    /// was undone by an inverse action, SPEC §6 step 4). The suppression
    /// counters are history for operators and are kept.
    ClearSuppression { policy_id: Uuid },
    /// Inserts or refreshes an idempotency key.
    RecordKey {
        policy_id: Uuid,
        key: String,
        at: DateTime<Utc>,
    },
    /// Deletes these keys; unknown keys are ignored.
    ClearKeys { keys: Vec<String> },
    /// Deletes keys whose last run is before `before`.
    PruneKeys { before: DateTime<Utc> },
    /// Inserts or replaces a deadline.
    UpsertDeadline(DeadlineRecord),
    /// Deletes a deadline; a missing one is ignored.
    RemoveDeadline {
        policy_id: Uuid,
        trigger_index: u32,
        kind: DeadlineKind,
    },
    /// Inserts or replaces a `timer.at` check time.
    SetTimerChecked {
        policy_id: Uuid,
        trigger_index: u32,
        at: DateTime<Utc>,
    },
    /// Inserts an intent without outcome; an existing id is a conflict.
    PersistIntent(IntentRecord),
    /// Inserts an intent or, when its id exists, replaces it and clears its
    /// outcome: the next attempt of a retried action (SPEC §6 "Outage
    /// lifecycle") in the same run.
    ReopenIntent(IntentRecord),
    /// Adds a device task to an intent still without outcome; a task it
    /// holds already, an unknown intent or one with an outcome (a report
    /// that arrived after the item finished) is left as it is.
    RecordTask { id: IntentId, task: TaskRecord },
    /// Marks an intent still without outcome as started (its driver call
    /// began) at `at`; an unknown intent or one with an outcome is left as
    /// it is, a started one keeps its first time.
    StartIntent { id: IntentId, at: DateTime<Utc> },
    /// Sets an intent's outcome; unknown -> not found, already set -> conflict.
    CompleteIntent {
        id: IntentId,
        outcome: IntentOutcome,
    },
    /// Deletes intents whose outcome finished before `before` (open intents
    /// are never pruned).
    PruneIntents { before: DateTime<Utc> },
    /// Appends a ledger entry and prunes the policy's ledger to the newest
    /// [`LEDGER_RUNS_PER_POLICY`] in the same transaction. A run id already
    /// kept is a conflict.
    AppendRun(RunRecord),
    /// Replaces the kill switch state.
    SetKillSwitch(KillSwitchState),
    /// Appends an audit record.
    AppendAudit(AuditRecord),
    /// Inserts or replaces a policy's trigger edge state (what the trigger
    /// layer needs to tell an edge from a level after a restart, opaque to
    /// the store); `Value::Null` deletes it.
    SetTriggerState { policy_id: Uuid, state: Value },
    /// Inserts or replaces a subject's last known state.
    SetSubjectState(SubjectState),
    /// Adds a target to a policy's restore set; a target already there keeps
    /// its entry (and so its original "from" state).
    AddRestore(RestoreEntry),
    /// Removes a target from a policy's restore set; a missing one is ignored.
    RemoveRestore {
        policy_id: Uuid,
        host: String,
        target: String,
    },
    /// Inserts or replaces a retry waiting for its delay (by run, action
    /// index and host).
    PutRetry(RetryRecord),
    /// Removes a waiting retry; a missing one is ignored.
    RemoveRetry {
        run_id: Uuid,
        action_index: u32,
        host: String,
    },
    /// Inserts or replaces a follow-up read (by its intent's id).
    PutFollowUp(FollowUpRecord),
    /// Removes a follow-up read; a missing one is ignored.
    RemoveFollowUp { id: IntentId },
}

/// Per-policy window state (SPEC §6 steps 4 and 9).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowState {
    /// When the policy last fired; its suppression window counts from here.
    pub last_fired_at: Option<DateTime<Utc>>,
    /// When an evaluation was last suppressed by the window.
    pub last_suppressed_at: Option<DateTime<Utc>>,
    /// How many evaluations the window suppressed, ever.
    pub suppressed_count: u64,
}

/// Which countdown a deadline belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadlineKind {
    /// A `metric.threshold` `for` hold.
    For,
    /// A `timer.after` delay.
    After,
}

impl DeadlineKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadlineKind::For => "for",
            DeadlineKind::After => "after",
        }
    }

    /// The inverse of [`DeadlineKind::as_str`].
    pub fn parse(text: &str) -> Option<DeadlineKind> {
        match text {
            "for" => Some(DeadlineKind::For),
            "after" => Some(DeadlineKind::After),
            _ => None,
        }
    }
}

/// A pending `for` or `timer.after` deadline of one trigger of one policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadlineRecord {
    pub policy_id: Uuid,
    /// Index of the trigger in the policy's trigger group.
    pub trigger_index: u32,
    pub kind: DeadlineKind,
    /// When the countdown runs out.
    pub due_at: DateTime<Utc>,
    /// The trigger layer's own state, opaque to the store.
    pub state: Value,
}

/// The last time a `timer.at` trigger was checked, so a schedule missed while
/// the agent was down is found at start (fired within grace, else recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerCheckRecord {
    pub policy_id: Uuid,
    pub trigger_index: u32,
    pub checked_at: DateTime<Utc>,
}

/// Identifies an intent: one action of one run on one host (one queue item).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IntentId {
    pub run_id: Uuid,
    pub action_index: u32,
    pub host: String,
}

/// What the engine is about to execute, persisted before it is enqueued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentRecord {
    pub run_id: Uuid,
    pub policy_id: Uuid,
    /// Index of the action in the policy.
    pub action_index: u32,
    pub capability: String,
    pub verb: String,
    #[serde(default)]
    pub params: Value,
    pub host: String,
    /// Targets on `host` this item acts on.
    pub targets: Vec<String>,
    /// The idempotency keys (action × target) this execution will record.
    #[serde(default)]
    pub idempotency_keys: Vec<String>,
    pub correlation_id: Uuid,
    pub created_at: DateTime<Utc>,
    /// The event the intent serves. The ledger entry of a run a crash
    /// interrupted and the trigger check of its retry read it; `None` in
    /// intents written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<RunEvent>,
    /// Device tasks the driver reported started (a Proxmox UPID per
    /// target), added by [`Write::RecordTask`] as soon as the driver hands
    /// them over, before they end: reconciliation after a crash reads them
    /// (SPEC §6 "Persistence and restarts").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskRecord>,
    /// When the item's driver call started ([`Write::StartIntent`]); `None`
    /// while it waits in the queue. An interrupted intent that started may
    /// still land on the device after the start's read, so reconciliation
    /// reads its unchanged targets once more (SPEC §6 "Persistence and
    /// restarts").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
}

/// A reconciled intent whose targets are read once more at `due`, when
/// what the interrupted call started could have finished (SPEC §6
/// "Persistence and restarts"). Kept by intent id, so a second restart
/// before it is due still reads them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowUpRecord {
    pub intent: IntentRecord,
    /// Targets whose device task still ran when the wait at start ended
    /// (their keys kept).
    #[serde(default)]
    pub pending: Vec<String>,
    /// Targets of a call that had started without a task handle and that
    /// read not changed at start (their keys already cleared): found
    /// changed later, they join the restore set.
    #[serde(default)]
    pub unconfirmed: Vec<String>,
    pub due: DateTime<Utc>,
}

/// One device task an intent's execution started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Canonical target id (`vm:104`).
    pub target: String,
    /// The device's task id (a Proxmox UPID), opaque to the engine.
    pub handle: String,
}

impl IntentRecord {
    /// This intent's id.
    pub fn id(&self) -> IntentId {
        IntentId {
            run_id: self.run_id,
            action_index: self.action_index,
            host: self.host.clone(),
        }
    }
}

/// How an intent ended. After a crash the engine reconciles an open intent
/// and completes it with `code: "engine.interrupted"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentOutcome {
    pub finished_at: DateTime<Utc>,
    pub ok: bool,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default)]
    pub reason: String,
}

/// An intent with its outcome, if recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentEntry {
    pub intent: IntentRecord,
    pub outcome: Option<IntentOutcome>,
}

/// How a policy run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every scheduled action × target succeeded.
    Ok,
    /// Some action × target pairs succeeded, some failed.
    Partial,
    /// Actions were scheduled and none succeeded.
    Failed,
    /// The run ended in an error before executing anything.
    Error,
    /// The agent stopped mid-run; reconciled after restart.
    Interrupted,
    /// Cancelled (shutdown drain deadline, dropped by the kill switch TTL,
    /// or not started as its level trigger ended: SPEC §6 "Outage lifecycle").
    Cancelled,
}

/// A run's headline: when it started and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunHeadline {
    pub started_at: DateTime<Utc>,
    pub status: RunStatus,
}

impl RunStatus {
    /// The status a stored name names ([`RunStatus::as_str`], the serde
    /// name).
    pub fn parse(name: &str) -> Option<RunStatus> {
        serde_json::from_value(Value::String(name.to_string())).ok()
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
            RunStatus::Error => "error",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the run changed something the `ledger` selector should see:
    /// `ok` and `partial` (a partial run's successful targets did change).
    pub fn is_successful(self) -> bool {
        matches!(self, RunStatus::Ok | RunStatus::Partial)
    }
}

/// The event a run reacted to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEvent {
    /// `ups.state`, `metric.threshold`, ...
    pub kind: String,
    pub subject: SubjectRecord,
    pub correlation_id: Uuid,
}

/// An event's subject (`{kind: "ups", id: "ups1@nas.lan:3493"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectRecord {
    pub kind: String,
    pub id: String,
}

/// What the agent last knew of a subject (for a UPS: its power source and
/// conditions, SPEC §1), kept across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectState {
    /// `ups1@nas.lan:3493`.
    pub id: String,
    /// The state names, the power source first (`["on_battery",
    /// "low_battery"]`).
    pub states: Vec<String>,
    /// When the engine accepted it.
    pub at: DateTime<Utc>,
}

/// One target a policy's runs changed and nobody has changed back since
/// (SPEC §6 "Outage lifecycle", restore set): what a `ledger` selector
/// naming the policy resolves to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreEntry {
    pub policy_id: Uuid,
    pub host: String,
    pub target: String,
    /// The state before the first run that changed it, when known.
    pub from: Option<String>,
    /// The state that run left it in (as the driver read it back, else what
    /// the action leads to), when known.
    pub to: Option<String>,
    /// The action that changed it (an inverse run undoes it).
    pub capability: String,
    pub verb: String,
    #[serde(default)]
    pub params: Value,
    /// The run that changed it, and when.
    pub run_id: Uuid,
    pub at: DateTime<Utc>,
}

/// A retry waiting for its delay (SPEC §6 "Outage lifecycle"): kept so a
/// restart re-plans it instead of losing it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryRecord {
    /// The run the retry belongs to (not yet in the ledger).
    pub run_id: Uuid,
    pub policy_id: Uuid,
    pub action_index: u32,
    pub host: String,
    pub targets: Vec<String>,
    /// This retry's number (1 for the first retry).
    pub retries: u32,
    pub due: DateTime<Utc>,
    /// The event the run reacted to (its subject is what the trigger is
    /// checked on).
    pub event: RunEvent,
    /// Each target's state before the run, when known (the restore set's
    /// "from").
    #[serde(default)]
    pub from: Vec<(String, Option<String>)>,
}

/// The result of one action on one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    pub action_index: u32,
    pub capability: String,
    pub verb: String,
    pub host: String,
    pub target: String,
    pub ok: bool,
    /// Whether the driver changed the target. `ok` alone cannot tell: a
    /// target skipped as `engine.already_desired` is ok and unchanged, and
    /// the `ledger` selector must not pick it.
    pub changed: bool,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub evidence: Value,
    pub duration_ms: u64,
    /// The state the driver read back after the change, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_state: Option<String>,
}

/// One ledger entry: a policy run that scheduled at least one action or
/// ended in an error (SPEC §6 step 9).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: Uuid,
    pub policy_id: Uuid,
    pub version_int: u64,
    pub event: RunEvent,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub severity: Severity,
    pub status: RunStatus,
    pub results: Vec<ResultRecord>,
    /// Why the policy matched: trigger, conditions, windows.
    #[serde(default)]
    pub explain: Value,
}

impl RunRecord {
    /// The (host, target) pairs this run changed, in result order, without
    /// duplicates: what the `ledger` selector resolves to.
    pub fn changed_targets(&self) -> Vec<(&str, &str)> {
        let mut out: Vec<(&str, &str)> = Vec::new();
        for result in self.results.iter().filter(|r| r.ok && r.changed) {
            let pair = (result.host.as_str(), result.target.as_str());
            if !out.contains(&pair) {
                out.push(pair);
            }
        }
        out
    }
}

/// The agent-wide kill switch (SPEC §6 "Kill switch").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillSwitchState {
    pub paused: bool,
    /// When the current state was set.
    pub since: Option<DateTime<Utc>>,
    /// Who set it (token subject, `cli`, ...).
    pub by: Option<String>,
    pub reason: Option<String>,
}

/// An audit record: every run, execution, validation and policy change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub ts: DateTime<Utc>,
    pub correlation_id: Uuid,
    /// Dotted kind such as `engine.suppressed_window` or `execution.finished`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<Uuid>,
    #[serde(default)]
    pub details: Value,
}

/// An audit record with its position in the log (its pagination cursor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Strictly increasing in append order, starting at 1.
    pub seq: i64,
    pub record: AuditRecord,
}

/// Which audit records to list; every filter set must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    pub policy_id: Option<Uuid>,
    pub correlation_id: Option<Uuid>,
    pub kind: Option<String>,
    /// Only entries with `seq` below this (the previous page's last `seq`).
    pub before_seq: Option<i64>,
    /// Only entries with `seq` above this (what `hazel audit --follow`
    /// already printed).
    pub after_seq: Option<i64>,
    /// Only entries written at or after this instant.
    pub since: Option<DateTime<Utc>>,
    pub limit: usize,
}

impl Default for AuditQuery {
    fn default() -> Self {
        AuditQuery {
            policy_id: None,
            correlation_id: None,
            kind: None,
            before_seq: None,
            after_seq: None,
            since: None,
            limit: 100,
        }
    }
}

impl AuditQuery {
    /// Whether `entry` passes the filters (`limit` aside).
    pub fn matches(&self, entry: &AuditEntry) -> bool {
        self.policy_id
            .is_none_or(|p| entry.record.policy_id == Some(p))
            && self
                .correlation_id
                .is_none_or(|c| entry.record.correlation_id == c)
            && self.kind.as_deref().is_none_or(|k| entry.record.kind == k)
            && self.before_seq.is_none_or(|s| entry.seq < s)
            && self.after_seq.is_none_or(|s| entry.seq > s)
            && self.since.is_none_or(|t| entry.record.ts >= t)
    }
}

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file or its directory could not be created or opened.
    #[error("cannot open store at {path}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The data directory could not be created.
    #[error("cannot create store directory {path}")]
    CreateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The data directory or the database file cannot be written.
    #[error(
        "{path} is read-only to the agent: hazel must write its database there \
         (check the permissions, the mount, and ReadWritePaths in the systemd unit)"
    )]
    ReadOnly {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A connection setting (WAL, synchronous, foreign keys) was refused.
    #[error("cannot configure store: {setting}")]
    Configure {
        setting: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// SQLite would not switch to WAL (e.g. a network file system).
    #[error("store refused WAL journal mode (got {mode})")]
    NoWal { mode: String },
    /// A schema migration failed; the database stays at the previous version.
    #[error("migration {version} ({name}) failed")]
    Migrate {
        version: u32,
        name: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// The file was written by a newer Hazel with a schema this one lacks.
    #[error("store schema version {found} is newer than this agent knows ({known})")]
    SchemaTooNew { found: u32, known: u32 },
    /// A statement failed during `op`.
    #[error("store {op} failed")]
    Sqlite {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// A record could not be encoded to or decoded from JSON.
    #[error("store record {what} is not valid JSON")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A stored column holds a value this agent cannot read.
    #[error("store column {what} holds an unreadable value {value:?}")]
    Corrupt { what: &'static str, value: String },
    /// The write would duplicate something that must be unique.
    #[error("store conflict: {what}")]
    Conflict { what: String },
    /// The write names something that is not stored.
    #[error("store has no {what}")]
    NotFound { what: String },
    /// Another stored policy has the same canonical hash (SPEC §10: 409).
    #[error("policy {existing_id} already has this hash")]
    DuplicateHash { existing_id: Uuid },
    /// A host with secrets was written or read, but no secret key is set.
    #[error(
        "host {host} has secrets but no secret key is set \
         (set HAZEL_SECRET_KEY or secret_key_file)"
    )]
    SecretKeyMissing { host: String },
    /// A host's stored secrets do not decrypt with the key set: another key
    /// wrote them, or the stored blob is damaged.
    #[error("cannot decrypt the secrets of host {host} (wrong secret key or damaged data)")]
    SecretUndecryptable { host: String },
}

impl StoreError {
    /// Whether retrying the same operation later may succeed: the database
    /// was busy or locked by another connection beyond the busy timeout.
    pub fn is_retryable(&self) -> bool {
        let source = match self {
            StoreError::Open { source, .. }
            | StoreError::Configure { source, .. }
            | StoreError::Migrate { source, .. }
            | StoreError::Sqlite { source, .. } => source,
            _ => return false,
        };
        matches!(
            source.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

#[cfg(test)]
pub(crate) mod conformance;
