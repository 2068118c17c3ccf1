//! The action scheduler (SPEC §6 step 8 and "Kill switch"):
//! per-host single-flight FIFO queues under one global concurrency cap.
//!
//! It is kube-runtime's runner idea ("never run the same key twice at once")
//! with tower's shared-semaphore limit: one actor task owns every queue, so no
//! host ever holds a lock or a permit while it waits, and a slow or dead host
//! cannot delay another host's queue. The scheduler is generic over the work
//! ([`Work`]) so it does not know about drivers; the engine enqueues one
//! action over all its targets on one host as one [`QueueItem`].
//!
//! Every item is reported exactly once on the report channel ([`Report`]):
//! completed, cancelled, dropped on resume (TTL or recheck), not run at
//! shutdown, interrupted at the shutdown deadline, or panicked. Nothing is
//! dropped silently. Items rejected at intake are handed back to the caller
//! instead ([`EnqueueError`]).
//!
//! Rate limits per capability are not applied here: they belong to the work
//! itself (a governor limiter awaited inside [`Work::run`]), so a rate-limited
//! host waits inside its own single-flight slot.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

/// Default global concurrency cap (SPEC §6 step 8, §12).
pub const DEFAULT_MAX_CONCURRENT: usize = 16;

/// Default age after which a held item is dropped on resume (SPEC §6).
pub const DEFAULT_TTL: Duration = Duration::from_secs(10 * 60);

/// A pinned, boxed, sendable future: what [`Work::run`] returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One unit of work: for the engine, one action over all its targets on one
/// host (the driver may act on those targets concurrently, bounded, inside
/// the future).
///
/// # Guarantees
///
/// Implementations must be idempotent and safe to cancel: the scheduler
/// cancels a running item by dropping its future at whatever await point it
/// is parked on (on [`SchedulerHandle::cancel`] and at the shutdown
/// deadline). The engine reconciles such an item by reading the target's
/// state, never by re-running it blindly.
pub trait Work: Send + 'static {
    /// What the work reports when it runs to completion.
    type Output: Send + 'static;

    /// Start the work. Called at most once, when the item leaves its queue.
    fn run(self) -> BoxFuture<Self::Output>;
}

/// Any boxed future factory is work; handy where the item type is erased.
impl<T: Send + 'static> Work for Box<dyn FnOnce() -> BoxFuture<T> + Send> {
    type Output = T;

    fn run(self) -> BoxFuture<T> {
        self()
    }
}

/// Adapts a closure returning a future into [`Work`].
pub struct FnWork<F>(pub F);

impl<F, Fut> Work for FnWork<F>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    type Output = Fut::Output;

    fn run(self) -> BoxFuture<Fut::Output> {
        Box::pin((self.0)())
    }
}

/// One queued item: one piece of work bound to one host.
pub struct QueueItem<W> {
    /// Unique id (the engine uses the persisted intent's id).
    pub id: Uuid,
    /// The host whose queue the item joins; one item per host runs at a time.
    pub host: String,
    /// The work powers off the host the agent runs on (`self: true`): it runs
    /// last, after [`Hooks::before_self_poweroff`] completed.
    pub powers_off_self: bool,
    /// When the item was created; its age on resume is measured from here.
    pub enqueued_at: Instant,
    /// Held items older than this are dropped on resume.
    pub ttl: Duration,
    /// The work itself; the recheck callback may inspect it.
    pub work: W,
}

impl<W> QueueItem<W> {
    /// An item created now, with the default TTL, not powering off self.
    pub fn new(id: Uuid, host: impl Into<String>, work: W) -> Self {
        QueueItem {
            id,
            host: host.into(),
            powers_off_self: false,
            enqueued_at: Instant::now(),
            ttl: DEFAULT_TTL,
            work,
        }
    }

    /// Marks the item as powering off the agent's own host.
    pub fn powering_off_self(mut self) -> Self {
        self.powers_off_self = true;
        self
    }

    /// Sets the item's TTL.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

impl<W> fmt::Debug for QueueItem<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueItem")
            .field("id", &self.id)
            .field("host", &self.host)
            .field("powers_off_self", &self.powers_off_self)
            .field("enqueued_at", &self.enqueued_at)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// The verdict of the engine's preflight guards on a held item (resume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recheck {
    /// Still wanted: the item goes back to its place in its queue.
    Keep,
    /// No longer wanted (already desired, host unreachable, ...): dropped
    /// and reported with this reason.
    Drop(String),
}

/// Re-checks a held item on resume (the engine's SPEC §6 step 7 guards).
/// Synchronous: the engine refreshes a stale inventory snapshot before it
/// calls [`SchedulerHandle::resume`].
pub type RecheckFn<W> = Arc<dyn Fn(&QueueItem<W>) -> Recheck + Send + Sync>;

/// Runs once before the first `powers_off_self` item, and again if other
/// work ran since (the engine flushes the ledger here).
pub type HookFn = Arc<dyn Fn() -> BoxFuture<()> + Send + Sync>;

/// The engine-supplied callbacks.
pub struct Hooks<W> {
    /// Preflight guards re-run on every held item at resume.
    pub recheck: RecheckFn<W>,
    /// Awaited before any self-poweroff item starts.
    pub before_self_poweroff: HookFn,
}

impl<W> Default for Hooks<W> {
    fn default() -> Self {
        Hooks {
            recheck: Arc::new(|_| Recheck::Keep),
            before_self_poweroff: Arc::new(|| Box::pin(async {})),
        }
    }
}

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Global cap on items running at once, all hosts together.
    pub max_concurrent: usize,
    /// A semaphore to share with other limited work (tower's shared limit);
    /// `None` creates one with `max_concurrent` permits.
    pub semaphore: Option<Arc<Semaphore>>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            semaphore: None,
        }
    }
}

/// What happened to one item. Every enqueued item gets exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The work ran to completion with this output.
    Completed(T),
    /// Cancelled on request; `started` says whether its future was dropped
    /// mid-run (the engine reconciles it) or it never started.
    Cancelled {
        /// The work had started.
        started: bool,
    },
    /// Dropped on resume from a pause, never started.
    Dropped(DropReason),
    /// Never started: the scheduler shut down first.
    NotRun,
    /// Running at the shutdown deadline; its future was dropped.
    Interrupted,
    /// The work panicked.
    Panicked(String),
}

/// Why a held item was dropped on resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// Older than its TTL when the kill switch was released.
    Expired {
        /// The item's age at resume.
        age: Duration,
        /// Its TTL.
        ttl: Duration,
    },
    /// The recheck (preflight guards) said it is no longer wanted.
    Recheck(String),
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::Expired { age, ttl } => {
                write!(f, "held {age:?}, longer than its ttl of {ttl:?}")
            }
            DropReason::Recheck(reason) => write!(f, "recheck failed: {reason}"),
        }
    }
}

/// One item's outcome, on the report channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report<T> {
    /// The item's id.
    pub id: Uuid,
    /// The item's host.
    pub host: String,
    /// What happened.
    pub outcome: Outcome<T>,
}

/// Errors from the scheduler handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    /// The scheduler task has stopped (shut down, or every handle dropped).
    #[error("scheduler stopped")]
    Stopped,
}

impl SchedulerError {
    /// Whether retrying the same call can succeed.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Why an item was refused at intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// `shutdown` was called; intake is closed.
    ShuttingDown,
    /// An item with the same id is already queued or running.
    DuplicateId,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectReason::ShuttingDown => "scheduler is shutting down",
            RejectReason::DuplicateId => "an item with this id is already scheduled",
        })
    }
}

/// An item refused at intake, handed back so it is never lost.
#[derive(thiserror::Error)]
#[error("item {} for host {} rejected: {reason}", item.id, item.host)]
pub struct EnqueueError<W> {
    /// Why.
    pub reason: RejectReason,
    /// The item, untouched.
    pub item: QueueItem<W>,
}

impl<W> fmt::Debug for EnqueueError<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnqueueError")
            .field("reason", &self.reason)
            .field("item", &self.item)
            .finish()
    }
}

impl<W> EnqueueError<W> {
    /// Whether enqueueing again can succeed (never: the id or the scheduler
    /// state must change first).
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// What `shutdown` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Items that finished (any outcome but `Interrupted`) during the drain.
    pub finished: usize,
    /// Items that never started; the engine persists them.
    pub not_run: Vec<Uuid>,
    /// Items still running at the deadline, whose futures were dropped.
    pub interrupted: Vec<Uuid>,
}

/// Monotonic counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Items accepted at intake.
    pub enqueued: u64,
    /// Items whose work started.
    pub started: u64,
    /// Items reported `Completed`.
    pub completed: u64,
    /// Items reported `Cancelled`.
    pub cancelled: u64,
    /// Items dropped on resume because of their TTL.
    pub dropped_expired: u64,
    /// Items dropped on resume by the recheck.
    pub dropped_recheck: u64,
    /// Items reported `NotRun`.
    pub not_run: u64,
    /// Items reported `Interrupted`.
    pub interrupted: u64,
    /// Items reported `Panicked`.
    pub panicked: u64,
    /// Items refused at intake.
    pub rejected: u64,
    /// Times the self-poweroff hook ran.
    pub self_poweroff_hooks: u64,
}

/// Queue state of one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Items waiting in the host's queue.
    pub queued: usize,
    /// Whether an item of the host is running.
    pub running: bool,
}

/// A point-in-time view of the scheduler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The kill switch is engaged.
    pub paused: bool,
    /// `shutdown` was called.
    pub draining: bool,
    /// Items running now.
    pub running: usize,
    /// Items waiting, all queues together (self-poweroff included).
    pub queued: usize,
    /// Self-poweroff items waiting.
    pub self_queued: usize,
    /// Hosts with queued or running work.
    pub hosts: BTreeMap<String, HostStats>,
    /// Counters since start.
    pub counters: Counters,
}

/// The cloneable handle the engine talks to.
pub struct SchedulerHandle<W: Work> {
    tx: mpsc::UnboundedSender<Command<W>>,
}

impl<W: Work> Clone for SchedulerHandle<W> {
    fn clone(&self) -> Self {
        SchedulerHandle {
            tx: self.tx.clone(),
        }
    }
}

/// Starts a scheduler on the current tokio runtime. Returns its handle and
/// the channel on which every item's outcome is reported exactly once.
///
/// Dropping every handle works like `shutdown` without a deadline: queued
/// items are reported `NotRun`, running ones finish.
pub fn spawn<W: Work>(
    config: SchedulerConfig,
    hooks: Hooks<W>,
) -> (
    SchedulerHandle<W>,
    mpsc::UnboundedReceiver<Report<W::Output>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (report_tx, report_rx) = mpsc::unbounded_channel();
    let semaphore = config
        .semaphore
        .unwrap_or_else(|| Arc::new(Semaphore::new(config.max_concurrent.max(1))));
    let actor = Actor {
        hooks,
        semaphore,
        reports: report_tx,
        hosts: HashMap::new(),
        ready: BTreeMap::new(),
        self_queue: VecDeque::new(),
        index: HashMap::new(),
        running: HashMap::new(),
        tasks: JoinSet::new(),
        spare_permit: None,
        hook: None,
        hook_done: false,
        started_normal: 0,
        hook_epoch: 0,
        paused: false,
        semaphore_closed: false,
        drain: None,
        next_seq: 0,
        counters: Counters::default(),
    };
    tokio::spawn(actor.run(rx));
    (SchedulerHandle { tx }, report_rx)
}

impl<W: Work> SchedulerHandle<W> {
    /// Adds an item at the back of its host's queue (or of the self-poweroff
    /// queue). Refused items (shutting down, duplicate id) come back in the
    /// error; an accepted item is later reported exactly once.
    pub async fn enqueue(&self, item: QueueItem<W>) -> Result<(), EnqueueError<W>> {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Command::Enqueue(item, _))) =
            self.tx.send(Command::Enqueue(item, reply))
        {
            return Err(EnqueueError {
                reason: RejectReason::ShuttingDown,
                item,
            });
        }
        // The actor answers every enqueue it receives, even while it stops;
        // no answer means it panicked, and the item went down with it.
        rx.await.unwrap_or(Ok(()))
    }

    /// Cancels one item, queued or running. Returns whether it was found.
    pub async fn cancel(&self, id: Uuid) -> Result<bool, SchedulerError> {
        self.ask(|reply| Command::Cancel(Target::Item(id), reply))
            .await
            .map(|n| n > 0)
    }

    /// Cancels one item only if it has not started (queued, or held by the
    /// kill switch); a running item is left alone. Returns whether it was
    /// cancelled (then it is reported `Cancelled { started: false }`).
    /// The engine uses it when a policy's trigger stops holding: what has
    /// not started must not start, what has started finishes.
    pub async fn cancel_queued(&self, id: Uuid) -> Result<bool, SchedulerError> {
        self.ask(|reply| Command::Cancel(Target::Queued(id), reply))
            .await
            .map(|n| n > 0)
    }

    /// Cancels every item of a host. Returns how many were cancelled.
    pub async fn cancel_host(&self, host: &str) -> Result<usize, SchedulerError> {
        let host = host.to_string();
        self.ask(|reply| Command::Cancel(Target::Host(host), reply))
            .await
    }

    /// Cancels every item. Returns how many were cancelled.
    pub async fn cancel_all(&self) -> Result<usize, SchedulerError> {
        self.ask(|reply| Command::Cancel(Target::All, reply)).await
    }

    /// Engages the kill switch: nothing new starts; running items finish.
    pub async fn pause(&self) -> Result<(), SchedulerError> {
        self.ask(Command::Pause).await
    }

    /// Releases the kill switch: every held item is dropped if older than its
    /// TTL, else re-checked; the survivors keep their places.
    pub async fn resume(&self) -> Result<(), SchedulerError> {
        self.ask(Command::Resume).await
    }

    /// Queue depths, running count and counters.
    pub async fn snapshot(&self) -> Result<Snapshot, SchedulerError> {
        self.ask(Command::Snapshot).await
    }

    /// Closes intake, reports every queued item `NotRun`, lets running items
    /// finish until `deadline`, then drops the rest (`Interrupted`).
    pub async fn shutdown(&self, deadline: Instant) -> Result<DrainReport, SchedulerError> {
        self.ask(|reply| Command::Shutdown(deadline, reply)).await
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command<W>,
    ) -> Result<T, SchedulerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(command(reply))
            .map_err(|_| SchedulerError::Stopped)?;
        rx.await.map_err(|_| SchedulerError::Stopped)
    }
}

enum Target {
    Item(Uuid),
    /// One item, only while it has not started.
    Queued(Uuid),
    Host(String),
    All,
}

enum Command<W: Work> {
    Enqueue(QueueItem<W>, oneshot::Sender<Result<(), EnqueueError<W>>>),
    Cancel(Target, oneshot::Sender<usize>),
    Pause(oneshot::Sender<()>),
    Resume(oneshot::Sender<()>),
    Snapshot(oneshot::Sender<Snapshot>),
    Shutdown(Instant, oneshot::Sender<DrainReport>),
}

/// A queued item with its global enqueue sequence number (fairness order).
struct Entry<W> {
    seq: u64,
    item: QueueItem<W>,
}

struct HostQueue<W> {
    queue: VecDeque<Entry<W>>,
    running: Option<Uuid>,
}

impl<W> Default for HostQueue<W> {
    fn default() -> Self {
        HostQueue {
            queue: VecDeque::new(),
            running: None,
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
enum Place {
    Host(String),
    SelfQueue,
    Running,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AbortCause {
    Cancel,
    Deadline,
}

struct RunningItem {
    id: Uuid,
    host: String,
    is_self: bool,
    abort: AbortHandle,
    cause: Option<AbortCause>,
}

struct Drain {
    deadline: Option<Instant>,
    replies: Vec<oneshot::Sender<DrainReport>>,
    report: DrainReport,
}

struct Actor<W: Work> {
    hooks: Hooks<W>,
    semaphore: Arc<Semaphore>,
    reports: mpsc::UnboundedSender<Report<W::Output>>,
    hosts: HashMap<String, HostQueue<W>>,
    /// Hosts that can start now (queue non-empty, nothing running), keyed by
    /// the sequence number of their head item: the oldest head goes first,
    /// so no host starves and no host waits behind another.
    ready: BTreeMap<u64, String>,
    self_queue: VecDeque<Entry<W>>,
    index: HashMap<Uuid, Place>,
    running: HashMap<tokio::task::Id, RunningItem>,
    tasks: JoinSet<W::Output>,
    spare_permit: Option<OwnedSemaphorePermit>,
    hook: Option<tokio::task::JoinHandle<()>>,
    /// The hook ran and no other work started since.
    hook_done: bool,
    /// Non-self items started so far; a hook is stale if this moved on
    /// while it ran.
    started_normal: u64,
    /// `started_normal` when the running hook was spawned.
    hook_epoch: u64,
    paused: bool,
    semaphore_closed: bool,
    drain: Option<Drain>,
    next_seq: u64,
    counters: Counters,
}

impl<W: Work> Actor<W> {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command<W>>) {
        let mut commands_open = true;
        loop {
            self.dispatch();
            if self.drain.is_some() && self.running.is_empty() {
                self.finish_drain();
                // Answer what is still buffered (late items are handed back
                // as rejected, late shutdowns get the report), then stop.
                commands.close();
                while let Ok(command) = commands.try_recv() {
                    self.handle(command);
                    self.finish_drain();
                }
                return;
            }
            let want_permit =
                self.spare_permit.is_none() && !self.semaphore_closed && self.needs_permit();
            let deadline = self.drain.as_ref().and_then(|d| d.deadline);
            // Biased: finished items are taken first, so every host freed
            // at one instant is ready before a freed permit is handed out.
            tokio::select! {
                biased;
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.finished(joined);
                    // Take every other item that finished at the same time
                    // before handing out permits, so all freed hosts compete
                    // for them by age, not by who was joined first.
                    while let Some(joined) = self.tasks.try_join_next_with_id() {
                        self.finished(joined);
                    }
                }
                command = commands.recv(), if commands_open => match command {
                    Some(command) => self.handle(command),
                    None => {
                        commands_open = false;
                        if self.drain.is_none() {
                            self.start_drain(None, None);
                        }
                    }
                },
                joined = join_hook(&mut self.hook), if self.hook.is_some() => {
                    self.hook = None;
                    if let Err(err) = joined {
                        tracing::error!(error = %err, "before_self_poweroff hook failed");
                    }
                    self.hook_done = self.hook_epoch == self.started_normal;
                }
                () = sleep_until_opt(deadline), if deadline.is_some() => {
                    self.abort_all_running();
                    if let Some(d) = self.drain.as_mut() { d.deadline = None; }
                }
                permit = self.semaphore.clone().acquire_owned(), if want_permit => match permit {
                    Ok(permit) => self.spare_permit = Some(permit),
                    Err(_) => {
                        // A shared semaphore closed by its owner: nothing can
                        // start any more; hold the queues until shutdown.
                        tracing::error!("scheduler semaphore closed; holding every queue");
                        self.semaphore_closed = true;
                    }
                },
            }
        }
    }

    fn handle(&mut self, command: Command<W>) {
        match command {
            Command::Enqueue(item, reply) => {
                let _ = reply.send(self.enqueue(item));
            }
            Command::Cancel(target, reply) => {
                let _ = reply.send(self.cancel(target));
            }
            Command::Pause(reply) => {
                self.paused = true;
                let _ = reply.send(());
            }
            Command::Resume(reply) => {
                self.resume();
                let _ = reply.send(());
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Command::Shutdown(deadline, reply) => {
                if let Some(drain) = self.drain.as_mut() {
                    // A second shutdown joins the first; the earlier deadline wins.
                    drain.deadline = Some(drain.deadline.map_or(deadline, |d| d.min(deadline)));
                    drain.replies.push(reply);
                } else {
                    self.start_drain(Some(deadline), Some(reply));
                }
            }
        }
    }

    fn enqueue(&mut self, item: QueueItem<W>) -> Result<(), EnqueueError<W>> {
        let reason = if self.drain.is_some() {
            Some(RejectReason::ShuttingDown)
        } else if self.index.contains_key(&item.id) {
            Some(RejectReason::DuplicateId)
        } else {
            None
        };
        if let Some(reason) = reason {
            self.counters.rejected += 1;
            return Err(EnqueueError { reason, item });
        }
        self.counters.enqueued += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        if item.powers_off_self {
            self.index.insert(item.id, Place::SelfQueue);
            self.self_queue.push_back(Entry { seq, item });
            return Ok(());
        }
        self.index.insert(item.id, Place::Host(item.host.clone()));
        let host = self.hosts.entry(item.host.clone()).or_default();
        if host.running.is_none() && host.queue.is_empty() {
            self.ready.insert(seq, item.host.clone());
        }
        host.queue.push_back(Entry { seq, item });
        Ok(())
    }

    /// Whether some item could start if a permit were available.
    fn needs_permit(&self) -> bool {
        if self.paused || self.drain.is_some() {
            return false;
        }
        !self.ready.is_empty() || (self.self_eligible() && self.hook_done && self.hook.is_none())
    }

    fn self_eligible(&self) -> bool {
        !self.self_queue.is_empty() && self.ready.is_empty() && self.running.is_empty()
    }

    fn take_permit(&mut self) -> Option<OwnedSemaphorePermit> {
        self.spare_permit
            .take()
            .or_else(|| self.semaphore.clone().try_acquire_owned().ok())
    }

    /// Starts everything that may start now.
    fn dispatch(&mut self) {
        if self.paused || self.drain.is_some() {
            return;
        }
        // Once the agent's own host is powering off, nothing else starts:
        // it would be cut off mid-change. Held items stay queued (their
        // intents are persisted; a restart reconciles them).
        if self.running.values().any(|r| r.is_self) {
            return;
        }
        while !self.ready.is_empty() {
            let Some(permit) = self.take_permit() else {
                return;
            };
            let (_, host_name) = self.ready.pop_first().expect("non-empty");
            let host = self.hosts.get_mut(&host_name).expect("ready host exists");
            let Entry { item, .. } = host.queue.pop_front().expect("ready host has work");
            host.running = Some(item.id);
            self.hook_done = false;
            self.started_normal += 1;
            self.start(item, permit, false);
        }
        if !self.self_eligible() || self.hook.is_some() {
            return;
        }
        if !self.hook_done {
            self.counters.self_poweroff_hooks += 1;
            self.hook_epoch = self.started_normal;
            let hook = (self.hooks.before_self_poweroff)();
            self.hook = Some(tokio::spawn(hook));
            return;
        }
        if let Some(permit) = self.take_permit() {
            let Entry { item, .. } = self.self_queue.pop_front().expect("eligible");
            self.start(item, permit, true);
        }
    }

    fn start(&mut self, item: QueueItem<W>, permit: OwnedSemaphorePermit, is_self: bool) {
        self.counters.started += 1;
        self.index.insert(item.id, Place::Running);
        let span = tracing::info_span!("queue_item", host = %item.host, item_id = %item.id);
        let future = item.work.run();
        let abort = self.tasks.spawn(
            async move {
                let output = future.await;
                drop(permit);
                output
            }
            .instrument(span),
        );
        self.running.insert(
            abort.id(),
            RunningItem {
                id: item.id,
                host: item.host,
                is_self,
                abort,
                cause: None,
            },
        );
    }

    fn finished(&mut self, joined: Result<(tokio::task::Id, W::Output), tokio::task::JoinError>) {
        let (task, result) = match joined {
            Ok((task, output)) => (task, Ok(output)),
            Err(err) => (err.id(), Err(err)),
        };
        let Some(running) = self.running.remove(&task) else {
            return;
        };
        self.index.remove(&running.id);
        if !running.is_self {
            if let Some(host) = self.hosts.get_mut(&running.host) {
                host.running = None;
                match host.queue.front() {
                    Some(head) => {
                        self.ready.insert(head.seq, running.host.clone());
                    }
                    None => {
                        self.hosts.remove(&running.host);
                    }
                }
            }
        }
        let outcome = match result {
            Ok(output) => Outcome::Completed(output),
            Err(err) if err.is_panic() => {
                let payload = err.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".to_string());
                Outcome::Panicked(message)
            }
            Err(_) => match running.cause {
                Some(AbortCause::Deadline) => Outcome::Interrupted,
                _ => Outcome::Cancelled { started: true },
            },
        };
        if let Some(drain) = self.drain.as_mut() {
            if matches!(outcome, Outcome::Interrupted) {
                drain.report.interrupted.push(running.id);
            } else {
                drain.report.finished += 1;
            }
        }
        self.report(running.id, running.host, outcome);
    }

    fn cancel(&mut self, target: Target) -> usize {
        let ids: Vec<Uuid> = match target {
            Target::Item(id) => vec![id],
            Target::Queued(id) => match self.index.get(&id) {
                Some(Place::Host(_)) | Some(Place::SelfQueue) => vec![id],
                _ => Vec::new(),
            },
            Target::Host(host) => {
                let mut ids: Vec<Uuid> = self
                    .hosts
                    .get(&host)
                    .map(|h| h.queue.iter().map(|e| e.item.id).chain(h.running).collect())
                    .unwrap_or_default();
                ids.extend(
                    self.self_queue
                        .iter()
                        .filter(|e| e.item.host == host)
                        .map(|e| e.item.id),
                );
                ids.extend(
                    self.running
                        .values()
                        .filter(|r| r.is_self && r.host == host)
                        .map(|r| r.id),
                );
                ids
            }
            Target::All => self.index.keys().copied().collect(),
        };
        ids.into_iter().filter(|id| self.cancel_one(*id)).count()
    }

    fn cancel_one(&mut self, id: Uuid) -> bool {
        match self.index.get(&id) {
            None => false,
            Some(Place::Running) => {
                let Some(running) = self.running.values_mut().find(|r| r.id == id) else {
                    return false;
                };
                if running.cause.is_some() {
                    return false;
                }
                running.cause = Some(AbortCause::Cancel);
                running.abort.abort();
                true
            }
            Some(Place::Host(_)) | Some(Place::SelfQueue) => {
                if let Some(item) = self.remove_queued(id) {
                    self.report(item.id, item.host, Outcome::Cancelled { started: false });
                }
                true
            }
        }
    }

    /// Takes a not-started item out of its queue, keeping `ready` in step.
    fn remove_queued(&mut self, id: Uuid) -> Option<QueueItem<W>> {
        match self.index.remove(&id)? {
            Place::SelfQueue => {
                let at = self.self_queue.iter().position(|e| e.item.id == id)?;
                self.self_queue.remove(at).map(|e| e.item)
            }
            Place::Host(host_name) => {
                let host = self.hosts.get_mut(&host_name)?;
                let at = host.queue.iter().position(|e| e.item.id == id)?;
                let entry = host.queue.remove(at)?;
                if at == 0 && host.running.is_none() {
                    self.ready.remove(&entry.seq);
                    if let Some(head) = host.queue.front() {
                        self.ready.insert(head.seq, host_name.clone());
                    }
                }
                if host.queue.is_empty() && host.running.is_none() {
                    self.hosts.remove(&host_name);
                }
                Some(entry.item)
            }
            Place::Running => {
                self.index.insert(id, Place::Running);
                None
            }
        }
    }

    fn resume(&mut self) {
        if !self.paused {
            return;
        }
        self.paused = false;
        let now = Instant::now();
        let recheck = &self.hooks.recheck;
        let drops: Vec<(Uuid, DropReason)> = self
            .hosts
            .values()
            .flat_map(|h| h.queue.iter())
            .chain(self.self_queue.iter())
            .filter_map(|Entry { item, .. }| {
                let age = now.saturating_duration_since(item.enqueued_at);
                let reason = if age > item.ttl {
                    DropReason::Expired { age, ttl: item.ttl }
                } else {
                    match recheck(item) {
                        Recheck::Keep => return None,
                        Recheck::Drop(reason) => DropReason::Recheck(reason),
                    }
                };
                Some((item.id, reason))
            })
            .collect();
        for (id, reason) in drops {
            if let Some(item) = self.remove_queued(id) {
                tracing::info!(host = %item.host, item_id = %item.id, reason = %reason, "held item dropped on resume");
                self.report(item.id, item.host, Outcome::Dropped(reason));
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let hosts = self
            .hosts
            .iter()
            .map(|(name, h)| {
                (
                    name.clone(),
                    HostStats {
                        queued: h.queue.len(),
                        running: h.running.is_some(),
                    },
                )
            })
            .collect();
        Snapshot {
            paused: self.paused,
            draining: self.drain.is_some(),
            running: self.running.len(),
            queued: self.hosts.values().map(|h| h.queue.len()).sum::<usize>()
                + self.self_queue.len(),
            self_queued: self.self_queue.len(),
            hosts,
            counters: self.counters.clone(),
        }
    }

    fn start_drain(
        &mut self,
        deadline: Option<Instant>,
        reply: Option<oneshot::Sender<DrainReport>>,
    ) {
        if let Some(hook) = self.hook.take() {
            hook.abort();
        }
        let mut drain = Drain {
            deadline,
            replies: reply.into_iter().collect(),
            report: DrainReport::default(),
        };
        let mut queued: Vec<Entry<W>> = self
            .hosts
            .values_mut()
            .flat_map(|h| h.queue.drain(..))
            .chain(self.self_queue.drain(..))
            .collect();
        queued.sort_by_key(|e| e.seq);
        self.ready.clear();
        self.hosts.retain(|_, h| h.running.is_some());
        for Entry { item, .. } in queued {
            self.index.remove(&item.id);
            drain.report.not_run.push(item.id);
            self.report(item.id, item.host, Outcome::NotRun);
        }
        self.drain = Some(drain);
    }

    fn abort_all_running(&mut self) {
        for running in self.running.values_mut() {
            if running.cause.is_none() {
                running.cause = Some(AbortCause::Deadline);
            }
            running.abort.abort();
        }
    }

    fn finish_drain(&mut self) {
        if let Some(drain) = self.drain.as_mut() {
            for reply in drain.replies.drain(..) {
                let _ = reply.send(drain.report.clone());
            }
        }
    }

    fn report(&mut self, id: Uuid, host: String, outcome: Outcome<W::Output>) {
        let counter = match &outcome {
            Outcome::Completed(_) => &mut self.counters.completed,
            Outcome::Cancelled { .. } => &mut self.counters.cancelled,
            Outcome::Dropped(DropReason::Expired { .. }) => &mut self.counters.dropped_expired,
            Outcome::Dropped(DropReason::Recheck(_)) => &mut self.counters.dropped_recheck,
            Outcome::NotRun => &mut self.counters.not_run,
            Outcome::Interrupted => &mut self.counters.interrupted,
            Outcome::Panicked(_) => &mut self.counters.panicked,
        };
        *counter += 1;
        // A dropped receiver means nobody listens any more; the counters
        // still record the outcome.
        let _ = self.reports.send(Report { id, host, outcome });
    }
}

async fn join_hook(
    hook: &mut Option<tokio::task::JoinHandle<()>>,
) -> Result<(), tokio::task::JoinError> {
    match hook {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use proptest::prelude::*;
    use tokio::time::sleep;

    const MS: Duration = Duration::from_millis(1);

    /// What fake work records: `(time, label, started?)`.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<(Instant, String, bool)>>>);

    impl Log {
        fn push(&self, label: &str, started: bool) {
            self.0
                .lock()
                .unwrap()
                .push((Instant::now(), label.to_string(), started));
        }

        fn starts(&self) -> Vec<String> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.2)
                .map(|e| e.1.clone())
                .collect()
        }

        fn time(&self, label: &str, started: bool) -> Instant {
            self.0
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|e| e.1 == label && e.2 == started)
                .unwrap_or_else(|| panic!("{label} never {started}"))
                .0
        }
    }

    /// Fake work: logs its start and end, sleeps `took` on the virtual clock.
    struct Fake {
        label: String,
        took: Duration,
        log: Log,
    }

    impl Work for Fake {
        type Output = String;

        fn run(self) -> BoxFuture<String> {
            Box::pin(async move {
                self.log.push(&self.label, true);
                sleep(self.took).await;
                self.log.push(&self.label, false);
                self.label
            })
        }
    }

    fn item(n: u128, host: &str, label: &str, took: Duration, log: &Log) -> QueueItem<Fake> {
        QueueItem::new(
            Uuid::from_u128(n),
            host,
            Fake {
                label: label.to_string(),
                took,
                log: log.clone(),
            },
        )
    }

    fn start(
        cap: usize,
        hooks: Hooks<Fake>,
    ) -> (
        SchedulerHandle<Fake>,
        mpsc::UnboundedReceiver<Report<String>>,
    ) {
        spawn(
            SchedulerConfig {
                max_concurrent: cap,
                semaphore: None,
            },
            hooks,
        )
    }

    async fn collect(
        rx: &mut mpsc::UnboundedReceiver<Report<String>>,
        n: usize,
    ) -> Vec<Report<String>> {
        let mut out = Vec::new();
        while out.len() < n {
            out.push(rx.recv().await.expect("reports channel open"));
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn items_of_one_host_run_in_enqueue_order() {
        let log = Log::default();
        let (handle, mut rx) = start(4, Hooks::default());
        for (n, label) in ["a1", "a2", "a3", "a4"].into_iter().enumerate() {
            let took = Duration::from_millis(40 - 10 * n as u64);
            handle
                .enqueue(item(n as u128, "a", label, took, &log))
                .await
                .unwrap();
        }
        let reports = collect(&mut rx, 4).await;
        assert_eq!(log.starts(), ["a1", "a2", "a3", "a4"]);
        let done: Vec<_> = reports.iter().map(|r| r.id.as_u128()).collect();
        assert_eq!(done, [0, 1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_never_runs_two_items_at_once() {
        let log = Log::default();
        let (handle, mut rx) = start(16, Hooks::default());
        for n in 0..5 {
            handle
                .enqueue(item(n, "a", &format!("a{n}"), 10 * MS, &log))
                .await
                .unwrap();
        }
        let t0 = Instant::now();
        collect(&mut rx, 5).await;
        for n in 1..5 {
            assert!(log.time(&format!("a{n}"), true) >= log.time(&format!("a{}", n - 1), false));
        }
        assert_eq!(Instant::now() - t0, 50 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn running_items_never_exceed_the_global_cap() {
        let log = Log::default();
        let (handle, mut rx) = start(3, Hooks::default());
        for n in 0..12u128 {
            let host = format!("h{n}");
            handle
                .enqueue(item(n, &host, &host, 10 * MS, &log))
                .await
                .unwrap();
        }
        let t0 = Instant::now();
        let mut peak = 0;
        for _ in 0..12 {
            let snapshot = handle.snapshot().await.unwrap();
            peak = peak.max(snapshot.running);
            rx.recv().await.unwrap();
        }
        assert_eq!(peak, 3);
        // 12 items, 3 at a time, 10 ms each: exactly 4 waves.
        assert_eq!(Instant::now() - t0, 40 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_host_does_not_delay_other_hosts() {
        let log = Log::default();
        let (handle, mut rx) = start(2, Hooks::default());
        let hour = Duration::from_secs(3600);
        handle
            .enqueue(item(0, "slow", "slow1", hour, &log))
            .await
            .unwrap();
        handle
            .enqueue(item(1, "slow", "slow2", hour, &log))
            .await
            .unwrap();
        for n in 0..3u128 {
            handle
                .enqueue(item(10 + n, "b", &format!("b{n}"), 10 * MS, &log))
                .await
                .unwrap();
            handle
                .enqueue(item(20 + n, "c", &format!("c{n}"), 10 * MS, &log))
                .await
                .unwrap();
        }
        let t0 = Instant::now();
        let fast = collect(&mut rx, 6).await;
        assert!(fast.iter().all(|r| r.host != "slow"));
        // One permit is held by the slow host; b and c share the other.
        assert_eq!(Instant::now() - t0, 60 * MS);
        let snapshot = handle.snapshot().await.unwrap();
        assert_eq!(
            snapshot.hosts["slow"],
            HostStats {
                queued: 1,
                running: true
            }
        );
        assert_eq!(snapshot.hosts.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_self_poweroff_item_runs_last_and_only_after_the_hook() {
        let log = Log::default();
        let hook_log = log.clone();
        let hooks = Hooks {
            recheck: Arc::new(|_| Recheck::Keep),
            before_self_poweroff: Arc::new(move || {
                let log = hook_log.clone();
                Box::pin(async move {
                    log.push("flush", true);
                    sleep(5 * MS).await;
                    log.push("flush", false);
                })
            }),
        };
        let (handle, mut rx) = start(4, hooks);
        handle
            .enqueue(item(0, "me", "poweroff", MS, &log).powering_off_self())
            .await
            .unwrap();
        handle
            .enqueue(item(1, "me", "me1", 30 * MS, &log))
            .await
            .unwrap();
        handle
            .enqueue(item(2, "b", "b1", 20 * MS, &log))
            .await
            .unwrap();
        handle
            .enqueue(item(3, "b", "b2", 20 * MS, &log))
            .await
            .unwrap();
        let reports = collect(&mut rx, 4).await;
        assert_eq!(reports.last().unwrap().id, Uuid::from_u128(0));
        let flushed = log.time("flush", false);
        assert!(flushed >= log.time("b2", false));
        assert!(flushed >= log.time("me1", false));
        assert!(log.time("poweroff", true) >= flushed);
        // The first flush ran while the queue looked empty; the work that
        // arrived during it made it stale, so it ran again.
        assert_eq!(
            handle
                .snapshot()
                .await
                .unwrap()
                .counters
                .self_poweroff_hooks,
            2
        );
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_starts_while_the_self_poweroff_item_runs() {
        let log = Log::default();
        let (handle, mut rx) = start(
            4,
            Hooks {
                recheck: Arc::new(|_| Recheck::Keep),
                before_self_poweroff: Arc::new(|| Box::pin(async {})),
            },
        );
        handle
            .enqueue(item(0, "me", "poweroff", 50 * MS, &log).powering_off_self())
            .await
            .unwrap();
        // Let the poweroff start, then offer other work.
        sleep(5 * MS).await;
        handle.enqueue(item(1, "b", "b1", MS, &log)).await.unwrap();
        let reports = collect(&mut rx, 2).await;
        assert_eq!(reports[0].id, Uuid::from_u128(0));
        assert!(log.time("b1", true) >= log.time("poweroff", false));
    }

    #[tokio::test(start_paused = true)]
    async fn the_hook_runs_again_when_work_arrives_after_it() {
        let log = Log::default();
        let hook_runs = Arc::new(AtomicUsize::new(0));
        let runs = hook_runs.clone();
        let hooks = Hooks {
            recheck: Arc::new(|_| Recheck::Keep),
            before_self_poweroff: Arc::new(move || {
                runs.fetch_add(1, Ordering::SeqCst);
                Box::pin(sleep(10 * MS))
            }),
        };
        let (handle, mut rx) = start(4, hooks);
        handle
            .enqueue(item(0, "me", "poweroff", MS, &log).powering_off_self())
            .await
            .unwrap();
        // The hook is now running; new work must run before the power-off.
        sleep(2 * MS).await;
        handle
            .enqueue(item(1, "b", "late", 5 * MS, &log))
            .await
            .unwrap();
        let reports = collect(&mut rx, 2).await;
        assert_eq!(reports[0].id, Uuid::from_u128(1));
        assert_eq!(reports[1].id, Uuid::from_u128(0));
        assert_eq!(hook_runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_a_queued_item_reports_it_and_it_never_runs() {
        let log = Log::default();
        let (handle, mut rx) = start(4, Hooks::default());
        handle
            .enqueue(item(0, "a", "a0", 10 * MS, &log))
            .await
            .unwrap();
        handle
            .enqueue(item(1, "a", "a1", 10 * MS, &log))
            .await
            .unwrap();
        handle
            .enqueue(item(2, "a", "a2", 10 * MS, &log))
            .await
            .unwrap();
        assert!(handle.cancel(Uuid::from_u128(1)).await.unwrap());
        assert!(!handle.cancel(Uuid::from_u128(99)).await.unwrap());
        let reports = collect(&mut rx, 3).await;
        assert_eq!(reports[0].outcome, Outcome::Cancelled { started: false });
        assert_eq!(log.starts(), ["a0", "a2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_only_if_queued_leaves_a_running_item_alone() {
        let log = Log::default();
        let (handle, mut rx) = start(4, Hooks::default());
        handle
            .enqueue(item(0, "a", "a0", 10 * MS, &log))
            .await
            .unwrap();
        handle
            .enqueue(item(1, "a", "a1", 10 * MS, &log))
            .await
            .unwrap();
        sleep(MS).await;
        assert!(!handle.cancel_queued(Uuid::from_u128(0)).await.unwrap());
        assert!(handle.cancel_queued(Uuid::from_u128(1)).await.unwrap());
        assert!(!handle.cancel_queued(Uuid::from_u128(1)).await.unwrap());
        let reports = collect(&mut rx, 2).await;
        assert_eq!(reports[0].id, Uuid::from_u128(1));
        assert_eq!(reports[0].outcome, Outcome::Cancelled { started: false });
        assert_eq!(reports[1].outcome, Outcome::Completed("a0".to_string()));
        assert_eq!(log.starts(), ["a0"]);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_a_running_item_drops_its_future() {
        struct Guard(Arc<AtomicUsize>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let guard = Guard(dropped.clone());
        let (handle, mut rx) = spawn::<Box<dyn FnOnce() -> BoxFuture<u8> + Send>>(
            SchedulerConfig::default(),
            Hooks::default(),
        );
        let work: Box<dyn FnOnce() -> BoxFuture<u8> + Send> = Box::new(move || {
            Box::pin(async move {
                let _guard = guard;
                sleep(Duration::from_secs(3600)).await;
                1
            })
        });
        handle
            .enqueue(QueueItem::new(Uuid::from_u128(7), "a", work))
            .await
            .unwrap();
        sleep(MS).await;
        assert!(handle.cancel(Uuid::from_u128(7)).await.unwrap());
        let report = rx.recv().await.unwrap();
        assert_eq!(report.outcome, Outcome::Cancelled { started: true });
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_a_host_or_everything_reports_each_item_once() {
        let log = Log::default();
        let (handle, mut rx) = start(4, Hooks::default());
        for n in 0..3u128 {
            handle
                .enqueue(item(n, "a", &format!("a{n}"), 10 * MS, &log))
                .await
                .unwrap();
            handle
                .enqueue(item(10 + n, "b", &format!("b{n}"), 10 * MS, &log))
                .await
                .unwrap();
        }
        assert_eq!(handle.cancel_host("a").await.unwrap(), 3);
        let a = collect(&mut rx, 3).await;
        assert!(a
            .iter()
            .all(|r| r.host == "a" && matches!(r.outcome, Outcome::Cancelled { .. })));
        assert_eq!(handle.cancel_all().await.unwrap(), 3);
        let b = collect(&mut rx, 3).await;
        assert!(b
            .iter()
            .all(|r| r.host == "b" && matches!(r.outcome, Outcome::Cancelled { .. })));
        let snapshot = handle.snapshot().await.unwrap();
        assert_eq!(
            (
                snapshot.running,
                snapshot.queued,
                snapshot.counters.cancelled
            ),
            (0, 0, 6)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pause_holds_queued_items_and_lets_running_ones_finish() {
        let log = Log::default();
        let (handle, mut rx) = start(4, Hooks::default());
        handle
            .enqueue(item(0, "a", "a0", 10 * MS, &log))
            .await
            .unwrap();
        handle
            .enqueue(item(1, "a", "a1", 10 * MS, &log))
            .await
            .unwrap();
        sleep(MS).await;
        handle.pause().await.unwrap();
        handle
            .enqueue(item(2, "b", "b0", 10 * MS, &log))
            .await
            .unwrap();
        let report = rx.recv().await.unwrap();
        assert_eq!(report.outcome, Outcome::Completed("a0".into()));
        sleep(Duration::from_secs(60)).await;
        assert!(rx.try_recv().is_err());
        let snapshot = handle.snapshot().await.unwrap();
        assert!(snapshot.paused);
        assert_eq!((snapshot.running, snapshot.queued), (0, 2));
        handle.resume().await.unwrap();
        let rest = collect(&mut rx, 2).await;
        assert!(rest
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Completed(_))));
        assert_eq!(log.starts(), ["a0", "a1", "b0"]);
    }

    #[tokio::test(start_paused = true)]
    async fn resume_rechecks_held_items_and_drops_the_rejected_with_a_reason() {
        let log = Log::default();
        let seen = Arc::new(AtomicUsize::new(0));
        let counted = seen.clone();
        let hooks = Hooks {
            recheck: Arc::new(move |item: &QueueItem<Fake>| {
                counted.fetch_add(1, Ordering::SeqCst);
                if item.host == "gone" {
                    Recheck::Drop("engine.host_unreachable".into())
                } else {
                    Recheck::Keep
                }
            }),
            before_self_poweroff: Arc::new(|| Box::pin(async {})),
        };
        let (handle, mut rx) = start(4, hooks);
        handle.pause().await.unwrap();
        handle
            .enqueue(item(0, "gone", "g0", MS, &log))
            .await
            .unwrap();
        handle.enqueue(item(1, "ok", "k0", MS, &log)).await.unwrap();
        handle.resume().await.unwrap();
        let reports = collect(&mut rx, 2).await;
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        assert_eq!(
            reports[0].outcome,
            Outcome::Dropped(DropReason::Recheck("engine.host_unreachable".into()))
        );
        assert_eq!(reports[1].outcome, Outcome::Completed("k0".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn resume_drops_held_items_older_than_their_ttl() {
        let log = Log::default();
        let (handle, mut rx) = start(4, Hooks::default());
        handle.pause().await.unwrap();
        handle.enqueue(item(0, "a", "old", MS, &log)).await.unwrap();
        sleep(Duration::from_secs(9 * 60)).await;
        handle
            .enqueue(item(1, "b", "short", MS, &log).with_ttl(Duration::from_secs(30)))
            .await
            .unwrap();
        handle
            .enqueue(item(2, "c", "young", MS, &log))
            .await
            .unwrap();
        sleep(Duration::from_secs(2 * 60)).await;
        handle.resume().await.unwrap();
        let reports = collect(&mut rx, 3).await;
        let by_id = |n: u128| {
            reports
                .iter()
                .find(|r| r.id.as_u128() == n)
                .unwrap()
                .outcome
                .clone()
        };
        assert_eq!(
            by_id(0),
            Outcome::Dropped(DropReason::Expired {
                age: Duration::from_secs(11 * 60),
                ttl: DEFAULT_TTL
            })
        );
        assert!(matches!(
            by_id(1),
            Outcome::Dropped(DropReason::Expired { .. })
        ));
        assert_eq!(by_id(2), Outcome::Completed("young".into()));
        let counters = handle.snapshot().await.unwrap().counters;
        assert_eq!((counters.dropped_expired, counters.completed), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_lets_running_items_finish_and_reports_queued_ones_not_run() {
        let log = Log::default();
        let (handle, mut rx) = start(4, Hooks::default());
        handle
            .enqueue(item(0, "a", "a0", 10 * MS, &log))
            .await
            .unwrap();
        handle
            .enqueue(item(1, "a", "a1", 10 * MS, &log))
            .await
            .unwrap();
        handle
            .enqueue(item(2, "me", "off", MS, &log).powering_off_self())
            .await
            .unwrap();
        sleep(MS).await;
        let drained = handle
            .shutdown(Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            drained,
            DrainReport {
                finished: 1,
                not_run: vec![Uuid::from_u128(1), Uuid::from_u128(2)],
                interrupted: vec![],
            }
        );
        let reports = collect(&mut rx, 3).await;
        assert_eq!(reports[2].outcome, Outcome::Completed("a0".into()));
        let rejected = handle
            .enqueue(item(3, "a", "late", MS, &log))
            .await
            .unwrap_err();
        assert_eq!(rejected.reason, RejectReason::ShuttingDown);
        assert_eq!(rejected.item.id, Uuid::from_u128(3));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_interrupts_items_still_running_at_the_deadline() {
        let log = Log::default();
        let (handle, mut rx) = start(4, Hooks::default());
        handle
            .enqueue(item(0, "a", "quick", 10 * MS, &log))
            .await
            .unwrap();
        handle
            .enqueue(item(1, "b", "slow", Duration::from_secs(60), &log))
            .await
            .unwrap();
        sleep(MS).await;
        let t0 = Instant::now();
        let drained = handle.shutdown(t0 + Duration::from_secs(1)).await.unwrap();
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
        assert_eq!(drained.finished, 1);
        assert_eq!(drained.interrupted, [Uuid::from_u128(1)]);
        let reports = collect(&mut rx, 2).await;
        assert_eq!(reports[1].outcome, Outcome::Interrupted);
        assert!(handle.snapshot().await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_item_with_a_known_id_is_handed_back() {
        let log = Log::default();
        let (handle, _rx) = start(4, Hooks::default());
        handle
            .enqueue(item(0, "a", "a0", 10 * MS, &log))
            .await
            .unwrap();
        let err = handle
            .enqueue(item(0, "b", "b0", 10 * MS, &log))
            .await
            .unwrap_err();
        assert_eq!(err.reason, RejectReason::DuplicateId);
        assert_eq!(err.item.host, "b");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_item_is_reported_and_frees_its_host() {
        let (handle, mut rx) = spawn::<Box<dyn FnOnce() -> BoxFuture<u8> + Send>>(
            SchedulerConfig {
                max_concurrent: 1,
                semaphore: None,
            },
            Hooks::default(),
        );
        let boom: Box<dyn FnOnce() -> BoxFuture<u8> + Send> =
            Box::new(|| Box::pin(async { panic!("driver bug") }));
        let fine: Box<dyn FnOnce() -> BoxFuture<u8> + Send> = Box::new(|| Box::pin(async { 2 }));
        handle
            .enqueue(QueueItem::new(Uuid::from_u128(1), "a", boom))
            .await
            .unwrap();
        handle
            .enqueue(QueueItem::new(Uuid::from_u128(2), "a", fine))
            .await
            .unwrap();
        assert_eq!(
            rx.recv().await.unwrap().outcome,
            Outcome::Panicked("driver bug".into())
        );
        assert_eq!(rx.recv().await.unwrap().outcome, Outcome::Completed(2));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_every_handle_finishes_running_items_and_reports_the_rest() {
        let log = Log::default();
        let (handle, mut rx) = start(4, Hooks::default());
        handle
            .enqueue(item(0, "a", "a0", 10 * MS, &log))
            .await
            .unwrap();
        handle
            .enqueue(item(1, "a", "a1", 10 * MS, &log))
            .await
            .unwrap();
        sleep(MS).await;
        drop(handle);
        let reports = collect(&mut rx, 2).await;
        assert_eq!(reports[0].outcome, Outcome::NotRun);
        assert_eq!(reports[1].outcome, Outcome::Completed("a0".into()));
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_semaphore_limits_the_scheduler_with_its_other_users() {
        let log = Log::default();
        let shared = Arc::new(Semaphore::new(2));
        let held = shared.clone().acquire_owned().await.unwrap();
        let (handle, mut rx) = spawn(
            SchedulerConfig {
                max_concurrent: 99,
                semaphore: Some(shared.clone()),
            },
            Hooks::default(),
        );
        for n in 0..4u128 {
            let host = format!("h{n}");
            handle
                .enqueue(item(n, &host, &host, 10 * MS, &log))
                .await
                .unwrap();
        }
        let t0 = Instant::now();
        collect(&mut rx, 2).await;
        assert_eq!(Instant::now() - t0, 20 * MS);
        drop(held);
        collect(&mut rx, 2).await;
        assert_eq!(Instant::now() - t0, 30 * MS);
    }

    /// Work that checks the invariants while it runs.
    struct Checked {
        host: usize,
        seq: usize,
        took: Duration,
        cap: usize,
        state: Arc<Mutex<CheckState>>,
    }

    #[derive(Default)]
    struct CheckState {
        running: usize,
        host_busy: HashMap<usize, bool>,
        host_order: HashMap<usize, Vec<usize>>,
        violations: Vec<String>,
    }

    impl Work for Checked {
        type Output = ();

        fn run(self) -> BoxFuture<()> {
            Box::pin(async move {
                {
                    let mut s = self.state.lock().unwrap();
                    s.running += 1;
                    if s.running > self.cap {
                        let running = s.running;
                        s.violations
                            .push(format!("{running} running over cap {}", self.cap));
                    }
                    if std::mem::replace(s.host_busy.entry(self.host).or_default(), true) {
                        s.violations
                            .push(format!("host {} ran two items", self.host));
                    }
                    s.host_order.entry(self.host).or_default().push(self.seq);
                }
                // Released on completion and on cancellation alike.
                let _release = Release(self.state.clone(), self.host);
                sleep(self.took).await;
            })
        }
    }

    struct Release(Arc<Mutex<CheckState>>, usize);

    impl Drop for Release {
        fn drop(&mut self) {
            let mut s = self.0.lock().unwrap();
            s.running -= 1;
            s.host_busy.insert(self.1, false);
        }
    }

    /// Enqueues `items` (host, duration ms, sleep 1 ms first?, cancel it?)
    /// and returns every report; pauses for a while midway if `pause_at`.
    async fn run_checked(
        cap: usize,
        items: &[(usize, u64, bool, bool)],
        pause_at: Option<usize>,
        state: Arc<Mutex<CheckState>>,
    ) -> Vec<Report<()>> {
        let hooks = Hooks {
            recheck: Arc::new(|item: &QueueItem<Checked>| {
                if item.work.seq % 7 == 3 {
                    Recheck::Drop("engine.already_desired".into())
                } else {
                    Recheck::Keep
                }
            }),
            before_self_poweroff: Arc::new(|| Box::pin(async {})),
        };
        let (handle, mut rx) = spawn(
            SchedulerConfig {
                max_concurrent: cap,
                semaphore: None,
            },
            hooks,
        );
        for (seq, &(host, took, yield_first, _)) in items.iter().enumerate() {
            if pause_at == Some(seq) {
                handle.pause().await.unwrap();
            }
            if yield_first {
                sleep(MS).await;
            }
            let work = Checked {
                host,
                seq,
                took: Duration::from_millis(took),
                cap,
                state: state.clone(),
            };
            let id = Uuid::from_u128(seq as u128);
            handle
                .enqueue(QueueItem::new(id, format!("h{host}"), work))
                .await
                .unwrap();
        }
        for (seq, item) in items.iter().enumerate() {
            if item.3 {
                handle.cancel(Uuid::from_u128(seq as u128)).await.unwrap();
                sleep(MS).await;
            }
        }
        if pause_at.is_some() {
            sleep(Duration::from_millis(100)).await;
            handle.resume().await.unwrap();
        }
        let mut reports = Vec::new();
        for _ in 0..items.len() {
            reports.push(rx.recv().await.unwrap());
        }
        let drained = handle.shutdown(Instant::now()).await.unwrap();
        assert!(drained.not_run.is_empty() && drained.interrupted.is_empty());
        assert!(rx.recv().await.is_none());
        reports
    }

    fn paused_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    fn check_invariants(
        state: &Mutex<CheckState>,
        reports: &[Report<()>],
        n: usize,
    ) -> Result<(), TestCaseError> {
        let s = state.lock().unwrap();
        prop_assert!(s.violations.is_empty(), "{:?}", s.violations);
        for order in s.host_order.values() {
            prop_assert!(
                order.windows(2).all(|w| w[0] < w[1]),
                "fifo broken: {:?}",
                order
            );
        }
        let mut ids: Vec<u128> = reports.iter().map(|r| r.id.as_u128()).collect();
        ids.sort_unstable();
        prop_assert_eq!(ids, (0..n as u128).collect::<Vec<_>>());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_item_sets_keep_every_invariant(
            cap in 1usize..8,
            items in prop::collection::vec((0usize..6, 0u64..50, any::<bool>()), 1..60),
        ) {
            let items: Vec<_> = items.into_iter().map(|(h, t, y)| (h, t, y, false)).collect();
            let state = Arc::new(Mutex::new(CheckState::default()));
            let reports = paused_runtime().block_on(run_checked(cap, &items, None, state.clone()));
            check_invariants(&state, &reports, items.len())?;
            prop_assert!(reports.iter().all(|r| r.outcome == Outcome::Completed(())));
        }

        #[test]
        fn random_cancels_and_pauses_still_report_every_item_once(
            cap in 1usize..8,
            items in prop::collection::vec((0usize..6, 0u64..50, any::<bool>(), prop::bool::weighted(0.2)), 1..60),
            pause_at in prop::option::of(0usize..60),
        ) {
            let state = Arc::new(Mutex::new(CheckState::default()));
            let reports = paused_runtime().block_on(run_checked(cap, &items, pause_at, state.clone()));
            check_invariants(&state, &reports, items.len())?;
            for report in &reports {
                let seq = report.id.as_u128() as usize;
                let allowed = match &report.outcome {
                    Outcome::Completed(()) => true,
                    Outcome::Cancelled { .. } => items[seq].3,
                    Outcome::Dropped(DropReason::Recheck(_)) => pause_at.is_some() && seq % 7 == 3,
                    _ => false,
                };
                prop_assert!(allowed, "item {} ended {:?}", seq, report.outcome);
            }
        }
    }
}
