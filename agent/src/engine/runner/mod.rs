//! The per-policy run (SPEC §6): one event in, every shortlisted policy
//! taken through steps 1–10 in the binding order, actions enqueued on the
//! per-host scheduler, outcomes in the ledger. This module holds the
//! [`Engine`] and the per-event flow (decide, resolve, write intents,
//! enqueue); its submodules hold the rest by job:
//!
//! - `guards`: step 7's preflight guards, at decision time and again when
//!   the kill switch releases a held item;
//! - `ledger`: step 9, the scheduler's reports turned into ledger entries,
//!   and the `ledger` selector that reads them back;
//! - `dry_run`: the event dry-run ([`Engine::dry_run_event`]) and its
//!   timeline (now, each countdown's fire, the inverses);
//! - `fresh`: the fire-time refresh steps 5–7 read (one per host and
//!   event, for the hosts of the policies that fired; stale fallback);
//! - `lifecycle`: restarts, countdowns and the kill switch.
//!
//! [`Engine::handle_event`] decides policy by policy (so a later policy sees
//! the idempotency keys an earlier one recorded for the same event) and
//! enqueues every scheduled action without waiting for it, so a slow host
//! never holds up the next event; [`Engine::next_run`] (or
//! [`Engine::settle`]) takes the scheduler's reports and writes one ledger
//! entry per run once its last item is reported. Idempotency keys are
//! recorded when the intent is persisted (a queued action counts as run) and
//! forgotten again for targets whose execution failed, so a failure is
//! retried by the next event; an item stopped while running (cancelled,
//! interrupted at shutdown, panicked) may have acted, so it keeps its keys
//! and is recorded `engine.interrupted`, never retried blindly. Reports
//! already sent are applied before each new event is decided.
//! [`Engine::dry_run_event`] takes the same decision on a copy of the
//! trigger state, asks the drivers for dry-runs instead of executing, and
//! persists nothing: it returns a [`Transcript`] whose timeline also says
//! what each countdown the event starts would do at its end and what the
//! inverse policies would restore.
//!
//! A service loop `select!`s between the event bus, [`Engine::next_run`] and
//! a sleep until [`Engine::next_deadline`], after which it calls
//! [`Engine::fire_due`]: the engine arms and persists the `for` /
//! `timer.after` countdowns and `timer.at` fires itself and delivers them as
//! internal timer events. [`Engine::start`] restores what a previous run
//! left (`lifecycle`): the kill switch, countdowns, interrupted intents and
//! missed `timer.at` fires. [`Engine::pause`] / [`Engine::resume`] are the
//! persisted kill switch; at release the scheduler re-checks each held item
//! with step 7's guards. Before a self-poweroff item runs, the scheduler's
//! hook asks the engine to flush every finished run to the ledger; the
//! engine answers while it waits in [`Engine::next_run`] or at the end of
//! [`Engine::handle_event`] (else the item runs after [`FLUSH_TIMEOUT`]).
//!
//! The engine never names a concrete driver: it is handed `Arc<dyn Driver>`
//! per host (already guarded by the breaker by the registry) and reads the
//! inventory through [`Snapshots`].
//!
//! # Known limits
//!
//! - Store calls are synchronous on the calling task. The service runs
//!   the engine on its own thread and runtime (`service::engine_loop`), so
//!   an `fsync` blocks only the engine and its scheduler, not the API.
//! - The host of a policy that fires is refreshed at that moment
//!   (`fresh`, SPEC §6 step 5), but not again at kill-switch release: the
//!   re-check reads [`Snapshots`] as is. A stale snapshot never skips an
//!   action as already desired (the driver's idempotent execute reads the
//!   live state), but selectors still resolve against it.
//! - Edge state without a pending countdown (a UPS seen on battery) is not
//!   restored after a restart, on purpose: the NUT source's first reading
//!   after a start is a silent baseline, so a restored "on battery" could
//!   never be seen to end and the next outage would not be an edge — a
//!   missed shutdown. Starting clean can at worst repeat an action, which
//!   the persisted suppression and idempotency windows hold back.
//! - A run interrupted by a crash gets an `interrupted` ledger entry holding
//!   only its open intents' rows: the store cannot list a run's completed
//!   intents, and the event's kind and subject are not in the intent.
//! - A `timer.at` fire's check time is recorded when it is taken from the
//!   queue, before its run: a crash in between loses that fire rather than
//!   repeating it.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use drivers::breaker::Breakers;
use drivers::driver::{action_key, Action, Driver, DriverError, DryRunAnswer, ExecOutcome};
use drivers::guard::{with_context, CallContext};
use drivers::manifest::{Capabilities, Capability, ManifestSet};
use drivers::task::{with_task_sink, TaskSink};
use inventory::selector::{parse_selector, SelectorMode};
use inventory::{HostInventory, Inventory, Severity};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn, Instrument};
use uuid::Uuid;

use super::conditions::FactsSnapshot;
use super::decide::{ConditionMemo, Decided, Decider};
use super::event::Event;
use super::scheduler::{
    self, BoxFuture, Hooks, QueueItem, Report, SchedulerConfig, SchedulerError, SchedulerHandle,
    Work,
};
use super::store::{
    AuditRecord, EngineStore, IntentRecord, ResultRecord, RunEvent, RunRecord, RunStatus,
    StoreError, SubjectRecord, WindowState, Write,
};
use super::triggers::{EventView, TimerQueue, TimerRequest, TriggerState, DEFAULT_MISSED_GRACE};
use crate::ir::Ir;
use inflight::StartMark;

mod dry_run;
mod fresh;
mod guards;
mod inflight;
mod ledger;
mod lifecycle;
mod outage;
mod restore;
mod retry;

pub use dry_run::{
    DryRunPlan, TimelineEntry, TimelineKind, Transcript, COUNTDOWN_STARTED, WOULD_RESTORE,
};
pub use fresh::{
    refresh_hosts, FireTime, HostRefresh, RefreshFuture, DEFAULT_FIRE_TIME_SLA, INVENTORY_STALE,
};
pub use guards::desired_statuses;
use guards::{already_desired, recheck_held, Guard, GuardView};
use ledger::row;
pub use lifecycle::{Reconciled, StartReport};
pub use outage::{NOT_CONFIRMED, TRIGGER_ENDED};
pub use restore::{restore_targets, RestoreResolution, CHANGED_SINCE};
pub use retry::{GAVE_UP, RETRY_STOPPED};

/// `info`: the policy fired within its suppression window.
pub const SUPPRESSED_WINDOW: &str = "engine.suppressed_window";
/// `info`: the action × target key ran within the idempotency window.
pub const SUPPRESSED_IDEMPOTENT: &str = "engine.suppressed_idempotent";
/// `info`: the target is already in the state the action leads to.
pub const ALREADY_DESIRED: &str = "engine.already_desired";
/// `error`: the host is unreachable or its breaker is open.
pub const HOST_UNREACHABLE: &str = "engine.host_unreachable";
/// `error`: the host's driver does not offer the action's capability or verb.
pub const CAPABILITY_MISSING: &str = "engine.capability_missing";
/// `warn`: the selector resolved to nothing.
pub const SELECTOR_EMPTY: &str = "selector.empty";
/// `error`: the selector could not be resolved (no snapshot, bad ledger id).
pub const SELECTOR_UNRESOLVED: &str = "selector.unresolved";
/// `info`: the triggers did not fire or a condition failed.
pub const NOT_MATCHED: &str = "engine.not_matched";
/// `error`: the scheduler or the driver failed the queued item as a whole.
pub const EXECUTION_FAILED: &str = "engine.execution_failed";
/// `warn`: an intent had no outcome at start (the agent stopped mid-run;
/// it was reconciled by a dry-run, not re-executed), or its item was
/// cancelled, interrupted at shutdown or panicked while running (it may
/// have acted: its keys stay, it is not retried).
pub const INTERRUPTED: &str = "engine.interrupted";
/// `warn`: an item held by the kill switch outlived its TTL and was dropped.
pub const HELD_EXPIRED: &str = "engine.held_expired";
/// `warn`: a `timer.at` fire fell in the time the agent was down, beyond
/// the grace period, and was not run.
pub const TIMER_MISSED: &str = "engine.timer_missed";

/// How long the `before_self_poweroff` hook waits for the engine to flush
/// the ledger before the self-poweroff item runs anyway.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// A policy the engine runs: its stored id and compiled IR.
#[derive(Debug, Clone)]
pub struct Policy {
    pub id: Uuid,
    pub ir: Ir,
}

/// Where the engine reads the current inventory of a host (SPEC §6 steps 5
/// and 7). The inventory service or a test double implements it.
pub trait Snapshots: Send + Sync {
    /// The current snapshot of `host_id`, if the host is known.
    fn host(&self, host_id: &str) -> Option<HostInventory>;

    /// What the engine's own actions did: each (target, resulting state if
    /// the driver read it back). The inventory service writes the states
    /// into its snapshot and marks it stale where a state is unknown, so a
    /// later decision (an inverse on mains return) does not skip a target
    /// on a status the engine itself changed. Test doubles that read live
    /// state need not implement it.
    fn record_results(&self, _host_id: &str, _results: &[(String, Option<String>)]) {}

    /// Refreshes `host_id` on the fast path within `sla` (SPEC §6 step 5:
    /// the engine calls it once per host per event, for the hosts of the
    /// policies that fired) and returns the snapshot to decide on. After a
    /// refresh that succeeded, [`Snapshots::host`] returns the refreshed
    /// snapshot too. One that fails returns the last snapshot with
    /// [`HostRefresh::stale`]; the engine also gives up on it after `sla`.
    ///
    /// The default serves [`Snapshots::host`] as it is: for a source that
    /// is always current (test doubles reading live state) or cannot refresh.
    fn refresh<'a>(&'a self, host_id: &'a str, _sla: Duration) -> RefreshFuture<'a> {
        let snapshot = self.host(host_id).map(Arc::new);
        Box::pin(std::future::ready(HostRefresh::fresh(snapshot)))
    }
}

impl Snapshots for RwLock<Inventory> {
    fn host(&self, host_id: &str) -> Option<HostInventory> {
        self.read()
            .unwrap_or_else(|e| e.into_inner())
            .host(host_id)
            .cloned()
    }
}

/// The engine's clock; tests run it on tokio's paused clock.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// A clock that starts at the wall time of its creation and advances with
/// `tokio::time::Instant`, so `tokio::time::pause` controls it.
pub fn tokio_clock() -> Clock {
    let base = Utc::now();
    let start = tokio::time::Instant::now();
    Arc::new(move || base + TimeDelta::from_std(start.elapsed()).unwrap_or(TimeDelta::MAX))
}

/// Engine settings.
#[derive(Clone)]
pub struct EngineConfig {
    /// Scheduler settings (global cap).
    pub scheduler: SchedulerConfig,
    /// The host the agent runs on (`self: true`); its power-off actions run last.
    pub self_host: Option<String>,
    /// Age after which an item held by the kill switch is dropped.
    pub item_ttl: Duration,
    /// Now, for windows and the ledger.
    pub clock: Clock,
    /// The zone `timer.at` schedules are read in.
    pub timezone: Tz,
    /// How old a `timer.at` fire missed while the agent was down may be and
    /// still run once at start (SPEC §6: 5 min).
    pub missed_grace: Duration,
    /// The UPS subjects a live source reads and so confirms after start
    /// (SPEC §6 "Outage lifecycle"): a countdown restored on one of them
    /// waits for its first reading. `None`: every UPS subject is read. A
    /// countdown on a subject no source reads is re-armed at once, as no
    /// reading will come to confirm it.
    pub read_subjects: Option<BTreeSet<String>>,
    /// The configured manifests (the service's `plugin_dir`, the ones
    /// policies were compiled against): idempotency keys (SPEC §5), what a
    /// verb leads to (step 7's already-desired guard, reconciliation),
    /// inverses and self-poweroff verbs all come from here. Default: the
    /// manifests shipped with Hazel.
    pub manifests: Arc<ManifestSet>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            scheduler: SchedulerConfig::default(),
            self_host: None,
            item_ttl: scheduler::DEFAULT_TTL,
            clock: tokio_clock(),
            timezone: Tz::UTC,
            missed_grace: DEFAULT_MISSED_GRACE,
            read_subjects: None,
            manifests: Arc::new(ManifestSet::embedded()),
        }
    }
}

/// What went wrong while handling an event.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A store read or write failed; the event was not fully handled.
    #[error("engine store access failed")]
    Store {
        #[source]
        source: StoreError,
    },
    /// The scheduler stopped.
    #[error("engine scheduler unavailable")]
    Scheduler {
        #[source]
        source: SchedulerError,
    },
    /// A policy with this id is already loaded.
    #[error("policy {id} is already loaded")]
    DuplicatePolicy { id: Uuid },
}

impl EngineError {
    /// Whether handling the same event again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Store { source } => source.is_retryable(),
            EngineError::Scheduler { source } => source.is_retryable(),
            EngineError::DuplicatePolicy { .. } => false,
        }
    }
}

impl From<StoreError> for EngineError {
    fn from(source: StoreError) -> Self {
        EngineError::Store { source }
    }
}

/// What happened to one shortlisted policy for one event.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDecision {
    pub policy_id: Uuid,
    /// Severity of the outcome (`info` when nothing went wrong).
    pub severity: Severity,
    /// `engine.scheduled`, `engine.not_matched`, `engine.suppressed_window`, ...
    pub code: String,
    /// Why it matched or not: trigger, conditions, windows, guards.
    pub explain: Value,
    /// Actions planned per host (executed, or dry-run in a transcript).
    pub planned: Vec<PlannedAction>,
    /// Per action × target rows skipped by a window or a guard.
    pub skipped: Vec<ResultRecord>,
    /// The ledger run, when one was written.
    pub run_id: Option<Uuid>,
}

/// One action over its targets on one host: one queue item.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedAction {
    pub action_index: u32,
    pub action: Action,
    pub host: String,
    pub targets: Vec<String>,
    /// The driver's dry-run answers (dry-run mode only).
    pub dry_run: Option<Result<Vec<DryRunAnswer>, String>>,
}

/// The result of [`Engine::handle_event`].
#[derive(Debug, Clone, PartialEq)]
pub struct EventReport {
    pub correlation_id: Uuid,
    /// One decision per policy that could fire, in run order.
    pub decisions: Vec<PolicyDecision>,
    /// Countdowns the trigger layer asked for on this event. The engine has
    /// armed and persisted them already; [`Engine::fire_due`] delivers them.
    pub timers: Vec<TimerRequest>,
}

/// The queued work: one action over its targets on one host.
pub struct ActionWork {
    driver: Arc<dyn Driver>,
    action: Action,
    targets: Vec<String>,
    /// The policy and event the action serves, for the driver call's span.
    context: CallContext,
    /// Persists the device task handles the driver reports into the
    /// item's intent (`inflight`).
    tasks: TaskSink,
    /// Marks the item's intent started right before the driver call
    /// (`inflight`): a crash after it may leave a change that lands later.
    started: StartMark,
}

impl Work for ActionWork {
    type Output = Result<Vec<ExecOutcome>, DriverError>;

    fn run(self) -> BoxFuture<Self::Output> {
        Box::pin(async move {
            (self.started)();
            let call = self.driver.execute(&self.action, &self.targets);
            with_context(self.context, with_task_sink(self.tasks, call)).await
        })
    }
}

/// What one shortlisted policy's decision reads of the event at hand.
struct DecideStep<'a> {
    view: &'a EventView<'a>,
    /// The facts with the event applied.
    facts: &'a FactsSnapshot,
    now: DateTime<Utc>,
    /// The policy's host snapshot, once read ([`Engine::snapshot`]).
    snapshot: &'a OnceCell<Option<HostInventory>>,
    /// The host's fire-time refresh, once the policy fired (steps 5–7 read
    /// it instead of `snapshot`).
    fresh: Option<&'a HostRefresh>,
    /// The policy's window state, when read before the refresh (step 4).
    window: Option<&'a WindowState>,
}

/// The engine: policies, their trigger state, facts, and the scheduler.
pub struct Engine {
    policies: BTreeMap<Uuid, Policy>,
    /// Steps 1–3: the trigger index, trigger states and condition lists.
    decider: Decider,
    /// Condition outcomes shared within the event being handled.
    memo: ConditionMemo,
    facts: FactsSnapshot,
    store: Arc<dyn EngineStore>,
    snapshots: Arc<dyn Snapshots>,
    drivers: HashMap<String, Arc<dyn Driver>>,
    breakers: Arc<Breakers>,
    scheduler: SchedulerHandle<ActionWork>,
    reports: mpsc::UnboundedReceiver<Report<<ActionWork as Work>::Output>>,
    config: EngineConfig,
    /// Runs with items still queued or running, by run id.
    open: HashMap<Uuid, OpenRun>,
    /// Queued or running items, by scheduler item id.
    pending: HashMap<Uuid, Pending>,
    /// Armed `for` / `timer.after` countdowns of every policy.
    timers: TimerQueue,
    /// The countdowns armed (in `timers` and the store) per policy.
    armed: HashMap<Uuid, Vec<TimerRequest>>,
    /// What the scheduler's recheck reads at kill-switch release.
    guard_view: Arc<GuardView>,
    /// Flush requests from the scheduler's `before_self_poweroff` hook.
    flushes: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    /// Runs closed while serving a flush, not yet handed to the caller.
    closed: VecDeque<RunRecord>,
    /// Next `timer.at` fire per (instant, policy, trigger index).
    at_fires: BTreeSet<(DateTime<Utc>, Uuid, usize)>,
    /// Timer events to deliver at the next [`Engine::fire_due`] (late
    /// `timer.at` fires found at start).
    due_events: VecDeque<Event>,
    /// [`Engine::start`] ran.
    started: bool,
    /// Last known UPS levels and restored countdowns awaiting a reading.
    levels: outage::Levels,
    /// Every policy's restore set, indexed by target (the store keeps them).
    restore: restore::RestoreSets,
    /// Retries waiting for their delay (SPEC §6 "Outage lifecycle").
    retries: retry::Retries,
    /// Interrupted intents to send again once their UPS is read (`inflight`).
    restarts: inflight::Restarts,
    /// Policy names for logs ([`Engine::name_policy`]); ids are the keys.
    names: HashMap<Uuid, String>,
    /// Retries scheduled since start, for the metrics.
    retries_scheduled: u64,
}

/// One scheduled item awaiting its report.
struct Pending {
    run_id: Uuid,
    intent: IntentRecord,
    started: tokio::time::Instant,
    /// Which attempt the item is, for the next retry.
    attempt: retry::Attempt,
    /// The scheduler cancelled the item before it started because its
    /// policy's trigger stopped holding (`outage::TRIGGER_ENDED`).
    trigger_ended: bool,
}

/// A run that scheduled at least one item, awaiting its results.
struct OpenRun {
    record: RunRecord,
    /// Items not yet reported.
    items_left: usize,
    /// Each planned (host, target)'s state before the run, from the
    /// snapshot it was decided on: the restore set's "from".
    from: HashMap<(String, String), Option<String>>,
}

impl Engine {
    /// Starts an engine (and its scheduler) on the current runtime.
    pub fn new(
        store: Arc<dyn EngineStore>,
        snapshots: Arc<dyn Snapshots>,
        breakers: Arc<Breakers>,
        config: EngineConfig,
    ) -> Engine {
        let guard_view = Arc::new(GuardView {
            facts: RwLock::new(FactsSnapshot::new()),
            snapshots: snapshots.clone(),
            breakers: breakers.clone(),
            manifests: config.manifests.clone(),
        });
        let (flush_tx, flushes) = mpsc::unbounded_channel();
        let hooks = Hooks {
            recheck: {
                let view = guard_view.clone();
                Arc::new(move |item: &QueueItem<ActionWork>| recheck_held(&view, item))
            },
            before_self_poweroff: Arc::new(move || {
                let flush_tx: mpsc::UnboundedSender<oneshot::Sender<()>> = flush_tx.clone();
                Box::pin(async move {
                    let (reply, done) = oneshot::channel();
                    if flush_tx.send(reply).is_err() {
                        return;
                    }
                    if tokio::time::timeout(FLUSH_TIMEOUT, done).await.is_err() {
                        warn!("ledger flush before self power-off timed out");
                    }
                })
            }),
        };
        let (scheduler, reports) = scheduler::spawn(config.scheduler.clone(), hooks);
        Engine {
            policies: BTreeMap::new(),
            decider: Decider::new(),
            memo: ConditionMemo::default(),
            facts: FactsSnapshot::new(),
            store,
            snapshots,
            drivers: HashMap::new(),
            breakers,
            scheduler,
            reports,
            config,
            open: HashMap::new(),
            pending: HashMap::new(),
            timers: TimerQueue::default(),
            armed: HashMap::new(),
            guard_view,
            flushes,
            closed: VecDeque::new(),
            at_fires: BTreeSet::new(),
            due_events: VecDeque::new(),
            started: false,
            levels: outage::Levels::default(),
            restore: restore::RestoreSets::default(),
            retries: retry::Retries::default(),
            restarts: inflight::Restarts::default(),
            names: HashMap::new(),
            retries_scheduled: 0,
        }
    }

    /// How many retries of failed actions were scheduled since start
    /// (SPEC §6 "Outage lifecycle"), for the metrics.
    pub fn retries_scheduled(&self) -> u64 {
        self.retries_scheduled
    }

    /// Tells the engine what a loaded policy is called, so its log lines
    /// name it next to its id (SPEC §12: logs a person can read).
    pub fn name_policy(&mut self, id: Uuid, name: String) {
        self.names.insert(id, name);
    }

    /// The name logs call policy `id` by (empty when it was not given).
    fn policy_name(&self, id: Uuid) -> &str {
        self.names.get(&id).map_or("", String::as_str)
    }

    /// Registers the driver of a host (keyed by [`Driver::host_id`]).
    pub fn add_driver(&mut self, driver: Arc<dyn Driver>) {
        self.drivers.insert(driver.host_id().to_string(), driver);
    }

    /// Loads an enabled policy.
    pub fn add_policy(&mut self, policy: Policy) -> Result<(), EngineError> {
        if self.policies.contains_key(&policy.id) {
            return Err(EngineError::DuplicatePolicy { id: policy.id });
        }
        let ir = &policy.ir;
        self.decider.insert(
            policy.id,
            ir.priority,
            &ir.match_.trigger_group,
            &ir.match_.conditions,
            &ir.targets.host_id,
        );
        if self.started {
            // Loaded after start: arm its `timer.at` fires from now (there
            // is nothing missed to look back on for a policy just loaded).
            let now = (self.config.clock)();
            for (index, trigger) in policy.ir.match_.trigger_group.triggers.iter().enumerate() {
                if let crate::spec::Trigger::TimerAt { schedule } = trigger {
                    if let Some(next) =
                        super::triggers::next_fire(schedule, now, self.config.timezone)
                    {
                        self.at_fires.insert((next, policy.id, index));
                    }
                }
            }
        }
        self.policies.insert(policy.id, policy);
        Ok(())
    }

    /// Loads `policy`, or replaces the loaded policy with the same id. A
    /// replacement that behaves the same (same hash: an Enable of an enabled
    /// policy, a re-saved identical spec) keeps its trigger state and armed
    /// countdowns — a UPS already on battery would not publish again, so a
    /// dropped `for` countdown would never come back. A changed policy
    /// starts clean ([`Engine::remove_policy`], then [`Engine::add_policy`]).
    pub fn load_policy(&mut self, policy: Policy) -> Result<(), EngineError> {
        if let Some(loaded) = self.policies.get_mut(&policy.id) {
            if loaded.ir.hash == policy.ir.hash {
                *loaded = policy;
                return Ok(());
            }
            self.remove_policy(policy.id)?;
        }
        self.add_policy(policy)
    }

    /// Unloads a policy (deleted, disabled or about to be replaced): its
    /// trigger state, armed countdowns (in memory and in the store) and
    /// `timer.at` fires go with it. Items it already queued still run and
    /// reach the ledger. Returns whether it was loaded.
    pub fn remove_policy(&mut self, id: Uuid) -> Result<bool, EngineError> {
        let Some(policy) = self.policies.remove(&id) else {
            return Ok(false);
        };
        self.names.remove(&id);
        self.decider.remove(id);
        self.at_fires.retain(|(_, policy_id, _)| *policy_id != id);
        let mut batch = Vec::new();
        let now = (self.config.clock)();
        for request in self.armed.remove(&id).unwrap_or_default() {
            self.timers.cancel(&request);
            batch.push(lifecycle::countdown_audit(
                "engine.countdown_cancelled",
                id,
                &request,
                now,
            ));
            batch.push(Write::RemoveDeadline {
                policy_id: id,
                trigger_index: request.trigger as u32,
                kind: lifecycle::deadline_kind(request.kind),
            });
        }
        batch.dedup();
        drop(policy);
        self.store.write(&batch)?;
        Ok(true)
    }

    /// Puts a policy's trigger state and armed countdowns back to `before`
    /// after the store refused what the event implied, so the same event
    /// handled again (a retried timer fire) decides the same way instead of
    /// finding its edge or countdown already consumed. Best effort on the
    /// store side: the refused writes never landed, and a failing re-write
    /// of the old deadlines leaves the store as it was.
    fn revert_state(&mut self, id: Uuid, current: TriggerState, before: TriggerState) {
        let _ = self.sync_timers(id, &current, &before);
        self.decider.set_state(id, before);
    }

    /// Whether [`Engine::next_run`] has something to wait for or hand out:
    /// items not yet reported, or runs closed but not yet taken.
    pub fn has_work(&self) -> bool {
        !self.pending.is_empty() || !self.closed.is_empty()
    }

    /// The ids of the loaded policies, in id order.
    pub fn policy_ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.policies.keys().copied()
    }

    /// The facts conditions read; kept current from every handled event.
    pub fn facts_mut(&mut self) -> &mut FactsSnapshot {
        &mut self.facts
    }

    /// The scheduler, for snapshots and shutdown. Pause through
    /// [`Engine::pause`], which persists the kill switch.
    pub fn scheduler(&self) -> &SchedulerHandle<ActionWork> {
        &self.scheduler
    }

    /// Handles one edge event: SPEC §6 steps 1–10 up to the enqueueing of
    /// every scheduled item. It does not wait for them: their results reach
    /// the ledger through [`Engine::next_run`] or [`Engine::settle`] (runs
    /// whose items have already been reported are closed here too). Every
    /// event enters through [`Engine::handle_event`] (`outage.rs`), which
    /// turns level readings into edges first.
    async fn handle_edge(&mut self, event: &Event) -> Result<EventReport, EngineError> {
        if !self.started {
            self.start().await?;
        }
        // Reports already sent are applied first: a finished run may clear
        // another policy's suppression (its effect was undone) or forget the
        // keys of failed targets, and this event must see that.
        self.flush_reports()?;
        self.facts.apply(event);
        // What a policy queued for a state that just ended must not start
        // now (SPEC §6 "Outage lifecycle"), nor count as in flight for the
        // inverses decided below.
        if event.subject.kind == super::event::SubjectKind::Ups {
            self.cancel_ended().await?;
        }
        // A forward policy's targets a restart left to be read again are
        // read now once its trigger ended (the mains back), so the
        // inverses decided below count what the interrupted calls changed
        // (`inflight`).
        self.read_follow_ups_early().await?;
        let now = (self.config.clock)();
        let mut decisions = Vec::new();
        let mut timers = Vec::new();
        let view = EventView::new(event);
        let mut memo = std::mem::take(&mut self.memo);
        memo.next_event();
        let mut hits = Vec::new();
        self.decider.begin(&view, &mut hits);
        let mut failed = None;
        let mut fire = FireTime::default();
        for hit in hits {
            let Some(id) = self.decider.policy_id(hit) else {
                continue;
            };
            let before = self.decider.hit_state(hit).cloned().unwrap_or_default();
            let span = tracing::info_span!(
                "policy_run",
                policy = %self.policy_name(id),
                policy_id = %id,
                host = %self.policies.get(&id).map_or("", |p| p.ir.targets.host_id.as_str()),
                correlation_id = %event.correlation_id
            );
            let snapshot = OnceCell::new();
            let step = DecideStep {
                view: &view,
                facts: &self.facts,
                now,
                snapshot: &snapshot,
                fresh: None,
                window: None,
            };
            // The decider is moved out while it steps: `vm.count_matching`
            // reads the rest of the engine. Nothing here awaits.
            let mut decider = std::mem::take(&mut self.decider);
            let decided = span.in_scope(|| {
                let count = || self.count_matching(id, &step);
                decider.advance(hit, &view, now, &self.facts, &mut memo, &count)
            });
            self.decider = decider;
            let after = self.decider.hit_state(hit).cloned().unwrap_or_default();
            let decision = match decided {
                Some(decided) => {
                    // Steps 5–7 read the host refreshed now (SPEC §6), once
                    // per host and event, only for a policy that fired and
                    // is not suppressed.
                    match self.fire_window(id, &decided, now) {
                        Ok(window) => {
                            let host = &self.policies[&id].ir.targets.host_id;
                            if window.as_ref().is_some_and(|(_, fires)| *fires) {
                                self.refresh_at_fire(&mut fire, host)
                                    .instrument(span.clone())
                                    .await;
                            }
                            let step = DecideStep {
                                fresh: fire.get(host),
                                window: window.as_ref().map(|(w, _)| w),
                                ..step
                            };
                            span.in_scope(|| {
                                let mut decision =
                                    self.decide_with(&step, id, &decided, &mut timers);
                                if let Ok(Some(d)) = &mut decision {
                                    fresh::note_stale(d, step.fresh);
                                }
                                decision
                            })
                        }
                        Err(e) => Err(e),
                    }
                }
                None => Ok(None),
            };
            let synced = self.sync_timers(id, &before, &after);
            let decision = match synced.and(decision) {
                Ok(decision) => decision,
                Err(e) => {
                    self.revert_state(id, after, before);
                    failed = Some(e);
                    break;
                }
            };
            let Some(mut decision) = decision else {
                continue;
            };
            let scheduled = match self.apply(&mut decision, event, now).instrument(span).await {
                Ok(scheduled) => scheduled,
                Err(e) => {
                    self.revert_state(id, after, before);
                    failed = Some(e);
                    break;
                }
            };
            let stop = scheduled && self.policies[&id].ir.stop_on_match;
            decisions.push(decision);
            if stop {
                break;
            }
        }
        // The policies not reached keep their states.
        self.decider.end();
        self.memo = memo;
        if let Some(e) = failed {
            return Err(e);
        }
        while let Ok(report) = self.reports.try_recv() {
            if let Some(run) = self.on_report(report)? {
                self.closed.push_back(run);
            }
        }
        self.serve_flushes()?;
        Ok(EventReport {
            correlation_id: event.correlation_id,
            decisions,
            timers,
        })
    }

    /// The host snapshot a policy's step reads: a copy of the host's whole
    /// inventory, so read at most once per policy and event, and only for
    /// a policy that needs it (a `vm` condition, or triggers that fired).
    fn snapshot<'s>(&self, id: Uuid, step: &'s DecideStep<'_>) -> Option<&'s HostInventory> {
        if let Some(fresh) = step.fresh {
            return fresh.snapshot.as_deref();
        }
        step.snapshot
            .get_or_init(|| {
                let host = self
                    .policies
                    .get(&id)
                    .map(|p| p.ir.targets.host_id.as_str());
                host.and_then(|h| self.snapshots.host(h))
            })
            .as_ref()
    }

    /// `vm.count_matching` for policy `id`: how many targets its selector
    /// resolves to now.
    fn count_matching(&self, id: Uuid, step: &DecideStep<'_>) -> Result<usize, String> {
        let policy = self
            .policies
            .get(&id)
            .ok_or_else(|| format!("no policy {id}"))?;
        self.resolve(policy, self.snapshot(id, step))
            .map(|ids| ids.len())
            .map_err(|(_, why)| why)
    }

    /// Whether `decided` fired policy `id` (trigger and conditions
    /// matched): then its window state, read once for step 4, and whether
    /// step 4 lets it through to steps 5–7 (the fire-time refresh).
    fn fire_window(
        &self,
        id: Uuid,
        decided: &Decided,
        now: DateTime<Utc>,
    ) -> Result<Option<(WindowState, bool)>, EngineError> {
        let fired = decided.conditions.as_ref().is_some_and(|c| c.all_true);
        if !fired {
            return Ok(None);
        }
        let window = self.store.window_state(id)?;
        let through = self
            .suppressed_since(&self.policies[&id], &window, now)
            .is_none();
        Ok(Some((window, through)))
    }

    /// Steps 4–7 for one policy whose step 3 gave `decided`; reads the
    /// store, writes nothing. `None` when the event could only move the
    /// trigger state (observer).
    fn decide_with(
        &self,
        step: &DecideStep<'_>,
        id: Uuid,
        decided: &Decided,
        timers: &mut Vec<TimerRequest>,
    ) -> Result<Option<PolicyDecision>, EngineError> {
        let policy = &self.policies[&id];
        let ir = &policy.ir;
        let (now, facts) = (step.now, step.facts);
        let snapshot = || self.snapshot(id, step);
        let eval = &decided.evaluation;
        timers.extend(eval.timers().iter().cloned());
        let mut explain = serde_json::Map::new();
        explain.insert(
            "trigger".into(),
            Value::String(eval.explain(&ir.match_.trigger_group, &step.view.event.subject.id)),
        );
        let mut decision = PolicyDecision {
            policy_id: id,
            severity: Severity::Info,
            code: NOT_MATCHED.to_string(),
            explain: Value::Null,
            planned: Vec::new(),
            skipped: Vec::new(),
            run_id: None,
        };
        let finish = |mut d: PolicyDecision, explain: serde_json::Map<String, Value>| {
            d.explain = Value::Object(explain);
            Ok(Some(d))
        };
        let Some(outcome) = &decided.conditions else {
            return finish(decision, explain);
        };
        explain.insert("conditions".into(), Value::String(outcome.explain()));
        if !outcome.all_true {
            return finish(decision, explain);
        }
        let snapshot = snapshot();
        // Step 4: suppression window.
        let window = match step.window {
            Some(window) => window.clone(),
            None => self.store.window_state(id)?,
        };
        if let Some(last) = self.suppressed_since(policy, &window, now) {
            explain.insert(
                "windows".into(),
                Value::String(format!(
                    "suppressed: fired at {last}, within its suppression window of {}s",
                    ir.windows.suppression_s
                )),
            );
            decision.code = SUPPRESSED_WINDOW.to_string();
            return finish(decision, explain);
        }
        // Step 5: dynamic re-resolution (or the compiled ids).
        let ids = match self.resolve(policy, snapshot) {
            Ok(ids) => ids,
            Err((code, why)) => {
                explain.insert("targets".into(), Value::String(why));
                decision.code = code.to_string();
                decision.severity = Severity::Error;
                return finish(decision, explain);
            }
        };
        // A restore-set target someone changed since is not restored.
        if let Some(forward) = ledger_forward(policy) {
            let changed = restore_targets(
                &self.config.manifests,
                self.restore.of(forward),
                &ir.targets.host_id,
                &ir.targets.target_type,
                snapshot,
            )
            .changed;
            for (target, now) in changed {
                let step = &ir.plan[0];
                let action = Action {
                    capability: step.capability.clone(),
                    verb: step.verb.clone(),
                    params: step.params.clone(),
                };
                let why = format!(
                    "{target} is {now} now: changed since the run of {forward} left it, not restored"
                );
                decision.skipped.push(row(
                    0,
                    &action,
                    &ir.targets.host_id,
                    &target,
                    true,
                    Severity::Info,
                    CHANGED_SINCE,
                    &why,
                ));
            }
        }
        if ids.is_empty() {
            explain.insert(
                "targets".into(),
                Value::String("the selector resolved to no targets".into()),
            );
            decision.code = SELECTOR_EMPTY.to_string();
            decision.severity = Severity::Warn;
            return finish(decision, explain);
        }
        explain.insert("targets".into(), json!(ids));
        // Step 7's host-wide part (capability, reachability) is computed
        // here but applied after step 6, to the pairs idempotency left.
        let host = ir.targets.host_id.clone();
        let guard = self.host_guard(policy, facts);
        // Targets the forward is still changing are not judged on the
        // state they are in before that (`restore`).
        let in_flight = ledger_forward(policy)
            .map(|f| self.in_flight(f, &host, &ir.targets.target_type))
            .unwrap_or_default();
        let mut guarded = false;
        let idem = Duration::from_secs(ir.windows.idempotency_s);
        for (index, step) in ir.plan.iter().enumerate() {
            let action = Action {
                capability: step.capability.clone(),
                verb: step.verb.clone(),
                params: step.params.clone(),
            };
            let mut targets = Vec::new();
            for target in &ids {
                // Step 6: idempotency.
                if self
                    .store
                    .key_ran_within(&self.key(&host, &action, target), now, idem)?
                {
                    let why = format!(
                        "{} ran on {target} within the idempotency window of {}s",
                        action.verb, ir.windows.idempotency_s
                    );
                    decision.skipped.push(row(
                        index,
                        &action,
                        &host,
                        target,
                        true,
                        Severity::Info,
                        SUPPRESSED_IDEMPOTENT,
                        &why,
                    ));
                    continue;
                }
                // Step 7 (host-wide): capability and reachability.
                if let Guard::Fail(code, why) = &guard {
                    guarded = true;
                    decision.skipped.push(row(
                        index,
                        &action,
                        &host,
                        target,
                        false,
                        Severity::Error,
                        code,
                        why,
                    ));
                    continue;
                }
                // Step 7 (per target): already in the desired state.
                if let Some(status) =
                    already_desired(&self.config.manifests, &action, snapshot, target)
                        .filter(|_| !in_flight.contains(target))
                {
                    let why = format!("{target} is already {status}");
                    decision.skipped.push(row(
                        index,
                        &action,
                        &host,
                        target,
                        true,
                        Severity::Info,
                        ALREADY_DESIRED,
                        &why,
                    ));
                    continue;
                }
                targets.push(target.clone());
            }
            if !targets.is_empty() {
                decision.planned.push(PlannedAction {
                    action_index: index as u32,
                    action,
                    host: host.clone(),
                    targets,
                    dry_run: None,
                });
            }
        }
        let worst = decision.skipped.iter().map(|r| r.severity).max();
        decision.severity = worst.unwrap_or(Severity::Info);
        decision.code = match guard {
            Guard::Fail(code, why) if guarded => {
                explain.insert("guards".into(), Value::String(why));
                code.to_string()
            }
            _ if !decision.planned.is_empty() => "engine.scheduled".to_string(),
            // Nothing left to do: report the first reason.
            _ => decision
                .skipped
                .first()
                .and_then(|r| r.code.clone())
                .unwrap_or_else(|| ALREADY_DESIRED.to_string()),
        };
        finish(decision, explain)
    }

    /// Step 5: the targets the policy acts on now, or the finding code and
    /// reason why they cannot be known.
    fn resolve(
        &self,
        policy: &Policy,
        snapshot: Option<&HostInventory>,
    ) -> Result<Vec<String>, (&'static str, String)> {
        let targets = &policy.ir.targets;
        let selector = parse_selector(
            targets.selector.mode,
            &targets.selector.value,
            &targets.target_type,
        )
        .map_err(|e| {
            let why = e.iter().map(|e| e.message.clone()).collect::<Vec<_>>();
            (SELECTOR_UNRESOLVED, why.join("; "))
        })?;
        if targets.selector.mode == SelectorMode::Ledger {
            let forward = selector
                .ledger_policy_id()
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or((
                    SELECTOR_UNRESOLVED,
                    "ledger value is not a policy id".into(),
                ))?;
            let mut ids = restore_targets(
                &self.config.manifests,
                self.restore.of(forward),
                &targets.host_id,
                &targets.target_type,
                snapshot,
            )
            .targets;
            for target in self.in_flight(forward, &targets.host_id, &targets.target_type) {
                if !ids.contains(&target) {
                    ids.push(target);
                }
            }
            return Ok(ids);
        }
        if !policy.ir.dynamic_resolution {
            if let Some(ids) = &targets.resolved_ids {
                return Ok(ids.clone());
            }
        }
        let Some(snapshot) = snapshot else {
            return Err((
                SELECTOR_UNRESOLVED,
                format!("no inventory snapshot of host {}", targets.host_id),
            ));
        };
        selector
            .resolve(snapshot)
            .map(|r| r.ids)
            .map_err(|e| (SELECTOR_UNRESOLVED, e.message))
    }

    /// Writes what a decision implies (steps 4, 8, 9 for non-executing
    /// outcomes) and enqueues its items. Returns whether anything was
    /// scheduled.
    async fn apply(
        &mut self,
        decision: &mut PolicyDecision,
        event: &Event,
        now: DateTime<Utc>,
    ) -> Result<bool, EngineError> {
        let id = decision.policy_id;
        let audit = |kind: &str, decision: &PolicyDecision| {
            Write::AppendAudit(AuditRecord {
                ts: now,
                correlation_id: event.correlation_id,
                kind: kind.to_string(),
                policy_id: Some(id),
                details: json!({"code": decision.code, "explain": decision.explain}),
            })
        };
        // Restore-set targets changed since leave the forward policy's set.
        if let Some(forward) = self.policies.get(&id).and_then(ledger_forward) {
            let changed: Vec<String> = decision
                .skipped
                .iter()
                .filter(|r| r.code.as_deref() == Some(CHANGED_SINCE))
                .map(|r| r.target.clone())
                .collect();
            if !changed.is_empty() {
                let host = self.policies[&id].ir.targets.host_id.clone();
                let writes = self.drop_changed_since(forward, &host, &changed);
                self.store.write(&writes)?;
            }
        }
        if decision.code == SUPPRESSED_WINDOW {
            info!(policy = %self.policy_name(id), policy_id = %id, correlation_id = %event.correlation_id, "engine.suppressed_window: {}", text_field(&decision.explain, "windows"));
            self.store.write(&[
                Write::RecordSuppressed {
                    policy_id: id,
                    at: now,
                },
                audit(SUPPRESSED_WINDOW, decision),
            ])?;
            return Ok(false);
        }
        if decision.code == SELECTOR_EMPTY {
            warn!(policy_id = %id, correlation_id = %event.correlation_id, "selector.empty");
        }
        // The trigger fired but a condition held the policy back: the
        // first place an operator looks for "why didn't it act?".
        if decision.code == NOT_MATCHED && decision.explain.get("conditions").is_some() {
            info!(policy = %self.policy_name(id), policy_id = %id, correlation_id = %event.correlation_id, "engine.not_matched: the trigger fired, a condition held it: {}", text_field(&decision.explain, "conditions"));
        }
        let is_error = decision.severity >= Severity::Error;
        if decision.planned.is_empty() && !is_error {
            self.store.write(&[audit("engine.evaluated", decision)])?;
            return Ok(false);
        }
        let ir = &self.policies[&id].ir;
        let run_id = Uuid::new_v4();
        decision.run_id = Some(run_id);
        let record = RunRecord {
            run_id,
            policy_id: id,
            version_int: ir.version_int,
            event: RunEvent {
                kind: event.kind.as_str().to_string(),
                subject: SubjectRecord {
                    kind: event.subject.kind.as_str().to_string(),
                    id: event.subject.id.clone(),
                },
                correlation_id: event.correlation_id,
            },
            started_at: now,
            finished_at: now,
            severity: decision.severity,
            status: RunStatus::Error,
            results: decision.skipped.clone(),
            explain: decision.explain.clone(),
        };
        if decision.planned.is_empty() {
            // A host unreachable (or its breaker open) when the policy
            // fires is retried while the trigger holds (SPEC §6 "Outage
            // lifecycle"): the run stays open for the retries.
            let mut failed: BTreeMap<u32, Vec<String>> = BTreeMap::new();
            for r in decision.skipped.iter().filter(|r| !r.ok) {
                if r.code.as_deref().is_some_and(retry::retryable) {
                    failed
                        .entry(r.action_index)
                        .or_default()
                        .push(r.target.clone());
                }
            }
            let host = ir.targets.host_id.clone();
            let snapshot = self.snapshots.host(&host);
            let from = failed
                .values()
                .flatten()
                .map(|t| {
                    let status = snapshot
                        .as_ref()
                        .and_then(|s| s.get(t))
                        .and_then(|x| x.status.clone());
                    ((host.clone(), t.clone()), status)
                })
                .collect();
            let mut open = OpenRun {
                record,
                items_left: 0,
                from,
            };
            for (index, targets) in failed {
                if self.plan_retry(&mut open, index, &host, targets, retry::Attempt::default()) {
                    open.items_left += 1;
                }
            }
            if open.items_left > 0 {
                info!(policy_id = %id, correlation_id = %event.correlation_id, code = %decision.code, "retrying while the trigger holds");
                self.store.write(&[
                    Write::RecordFire {
                        policy_id: id,
                        at: now,
                    },
                    audit("engine.retrying", decision),
                ])?;
                self.open.insert(run_id, open);
                // Nothing was scheduled now: `stop_on_match` (step 10)
                // counts actions scheduled for this event.
                return Ok(false);
            }
            tracing::error!(policy_id = %id, correlation_id = %event.correlation_id, code = %decision.code, "policy run ended in an error");
            self.store
                .write(&[Write::AppendRun(open.record), audit("engine.run", decision)])?;
            return Ok(false);
        }
        // Step 8: persist intents (with the keys they record and the inverse
        // keys they clear) and the fire, then enqueue.
        let mut batch = vec![
            Write::RecordFire {
                policy_id: id,
                at: now,
            },
            audit("engine.scheduled", decision),
        ];
        let mut intents = Vec::new();
        for planned in &decision.planned {
            let keys: Vec<String> = planned
                .targets
                .iter()
                .map(|t| self.key(&planned.host, &planned.action, t))
                .collect();
            let intent = IntentRecord {
                run_id,
                policy_id: id,
                action_index: planned.action_index,
                capability: planned.action.capability.clone(),
                verb: planned.action.verb.clone(),
                params: Value::Object(planned.action.params.clone()),
                host: planned.host.clone(),
                targets: planned.targets.clone(),
                idempotency_keys: keys.clone(),
                correlation_id: event.correlation_id,
                created_at: now,
                event: Some(record.event.clone()),
                tasks: Vec::new(),
                started_at: None,
            };
            batch.push(Write::PersistIntent(intent.clone()));
            for key in keys {
                batch.push(Write::RecordKey {
                    policy_id: id,
                    key,
                    at: now,
                });
            }
            let inverse_keys = inverse_keys(
                &self.config.manifests,
                &planned.host,
                &planned.action,
                &planned.targets,
            );
            if !inverse_keys.is_empty() {
                batch.push(Write::ClearKeys { keys: inverse_keys });
            }
            intents.push(intent);
        }
        self.store.write(&batch)?;
        let mut from = HashMap::new();
        for planned in &decision.planned {
            let snapshot = self.snapshots.host(&planned.host);
            for target in &planned.targets {
                let status = snapshot
                    .as_ref()
                    .and_then(|s| s.get(target))
                    .and_then(|t| t.status.clone());
                from.insert((planned.host.clone(), target.clone()), status);
            }
        }
        self.open.insert(
            run_id,
            OpenRun {
                record,
                items_left: intents.len(),
                from,
            },
        );
        for (planned, intent) in decision.planned.iter().zip(intents) {
            let Some(driver) = self.drivers.get(&planned.host).cloned() else {
                let outcome = Err(format!("no driver for host {}", planned.host));
                self.item_done(run_id, &intent, outcome, 0)?;
                continue;
            };
            let powers_off_self = self.config.self_host.as_deref() == Some(planned.host.as_str())
                && self
                    .capability(&planned.action.capability)
                    .is_some_and(|c| c.powers_off(&planned.action.verb));
            let item_id = Uuid::new_v4();
            let mut item = QueueItem::new(
                item_id,
                planned.host.clone(),
                ActionWork {
                    driver,
                    action: planned.action.clone(),
                    targets: planned.targets.clone(),
                    context: CallContext {
                        policy_id: intent.policy_id,
                        policy: self.names.get(&intent.policy_id).map(|n| n.as_str().into()),
                        correlation_id: intent.correlation_id,
                    },
                    tasks: self.task_sink(&intent),
                    started: self.start_mark(&intent),
                },
            )
            .with_ttl(self.config.item_ttl);
            if powers_off_self {
                item = item.powering_off_self();
            }
            if let Err(e) = self.scheduler.enqueue(item).await {
                let outcome = Err(format!("not enqueued: {}", e.reason));
                self.item_done(run_id, &intent, outcome, 0)?;
                continue;
            }
            self.pending.insert(
                item_id,
                Pending {
                    run_id,
                    intent,
                    started: tokio::time::Instant::now(),
                    attempt: retry::Attempt::default(),
                    trigger_ended: false,
                },
            );
        }
        Ok(true)
    }
}

impl Engine {
    /// When `policy` last fired, if that was within its suppression window
    /// at `now` (step 4). A policy restoring a forward policy's restore set
    /// (a `ledger` selector) is never held back while that set has
    /// targets (or items still queued or running that will add some): the
    /// set, not the window, says what is left to restore, and
    /// an outage that came and went within the window must still be
    /// restored (SPEC §6 "Outage lifecycle").
    fn suppressed_since(
        &self,
        policy: &Policy,
        window: &WindowState,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let owed = |f: Uuid| {
            self.restore.of(f).next().is_some()
                || !self
                    .in_flight(
                        f,
                        &policy.ir.targets.host_id,
                        &policy.ir.targets.target_type,
                    )
                    .is_empty()
        };
        if ledger_forward(policy).is_some_and(owed) {
            return None;
        }
        let suppression = TimeDelta::seconds(policy.ir.windows.suppression_s as i64);
        window
            .last_fired_at
            .filter(|last| now < *last + suppression)
    }
}

/// The forward policy a `ledger` selector names, if `policy` has one.
fn ledger_forward(policy: &Policy) -> Option<Uuid> {
    let targets = &policy.ir.targets;
    if targets.selector.mode != SelectorMode::Ledger {
        return None;
    }
    Uuid::parse_str(targets.selector.value.trim()).ok()
}

impl Engine {
    /// The capability `id` of the configured manifests.
    fn capability(&self, id: &str) -> Option<&Capability> {
        self.config.manifests.find_capability(id)
    }

    /// The SPEC §5 key of `action` on `target` of `host`, with the key
    /// params of the configured manifests.
    fn key(&self, host: &str, action: &Action, target: &str) -> String {
        action_key(self.config.manifests.as_ref(), host, action, target)
    }
}

/// The idempotency keys of the actions `action` undoes, on `targets` of
/// `host` (the same host: undoing a shutdown on one cluster says nothing
/// about `vm:104` of another).
fn inverse_keys(
    manifests: &ManifestSet,
    host: &str,
    action: &Action,
    targets: &[String],
) -> Vec<String> {
    let Some(cap) = manifests.find_capability(&action.capability) else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    for undone in cap.undoes(&action.verb, &action.params) {
        let forward = Action {
            capability: action.capability.clone(),
            verb: undone.verb,
            params: undone.params,
        };
        keys.extend(
            targets
                .iter()
                .map(|t| action_key(manifests, host, &forward, t)),
        );
    }
    keys
}

/// A text field of a decision's `explain`, one line (for a log line).
fn text_field(explain: &Value, field: &str) -> String {
    explain
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or("")
        .replace('\n', "; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An action from its parts, for the runner's unit tests.
    pub(super) fn action(capability: &str, verb: &str, params: Value) -> Action {
        Action {
            capability: capability.into(),
            verb: verb.into(),
            params: params.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn running_an_action_clears_the_keys_of_what_it_undoes_on_the_same_host() {
        let set = ManifestSet::embedded();
        let on = action("aoss.poe.port", "set", json!({"state": "on"}));
        let off = action("aoss.poe.port", "set", json!({"state": "off"}));
        let targets = vec!["poe-port:1/1".to_string()];
        assert_eq!(
            inverse_keys(&set, "sw-a", &on, &targets),
            vec![action_key(&set, "sw-a", &off, "poe-port:1/1")]
        );
        assert!(
            !inverse_keys(&set, "sw-a", &on, &targets).contains(&action_key(
                &set,
                "sw-b",
                &off,
                "poe-port:1/1"
            ))
        );
        let start = action("proxmox.vm", "start", json!({}));
        let keys = inverse_keys(&set, "pve-01", &start, &["vm:104".to_string()]);
        assert!(keys.contains(&action_key(
            &set,
            "pve-01",
            &action("proxmox.vm", "shutdown", json!({})),
            "vm:104"
        )));
        let cycle = action("aoss.poe.port", "set", json!({"state": "cycle"}));
        assert!(inverse_keys(&set, "sw-a", &cycle, &targets).is_empty());
    }
}
