//! The engine's home in the service: one OS thread with its own
//! current-thread tokio runtime runs the [`Engine`] loop. The loop
//! `select!`s between commands from the service (events to decide, dry-runs,
//! policy loads and unloads, the kill switch, shutdown), events from the bus
//! (sources such as NUT and the inventory service's `host.state` publish
//! there), the scheduler's reports
//! ([`Engine::next_run`]) and the next countdown deadline
//! ([`Engine::fire_due`]).
//!
//! The engine calls its store synchronously (an `fsync` per committed
//! batch); on its own thread that blocks only the engine and its
//! scheduler, never the API's runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drivers::breaker::Breakers;
use drivers::driver::Driver;
use drivers::manifest::ManifestSet;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};
use uuid::Uuid;

use super::metrics::Metrics;
use crate::engine::bus::Consumer;
use crate::engine::event::{Event, EventKind};
use crate::engine::runner::{
    Engine, EngineConfig, EngineError, EventReport, FireTime, Policy, Snapshots, Transcript,
};
use crate::engine::store::{EngineStore, RunRecord};

/// What the service asks of the engine thread.
enum Command {
    Event {
        event: Event,
        reply: oneshot::Sender<Result<EventReport, String>>,
    },
    DryRun {
        event: Event,
        reply: oneshot::Sender<Result<Transcript, String>>,
    },
    Load {
        policy: Box<Policy>,
        name: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Unload {
        id: Uuid,
        reply: oneshot::Sender<Result<bool, String>>,
    },
    Driver {
        driver: Arc<dyn Driver>,
    },
    Pause {
        by: String,
        reason: String,
        reply: oneshot::Sender<Result<bool, String>>,
    },
    Resume {
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// Whether the engine thread runs, for `/readyz`.
#[derive(Debug, Default)]
pub struct EngineStatus {
    started: AtomicBool,
    stopped: AtomicBool,
}

impl EngineStatus {
    /// The engine finished [`Engine::start`] and its loop is running.
    pub fn ready(&self) -> bool {
        self.started.load(Ordering::Acquire) && !self.stopped.load(Ordering::Acquire)
    }
}

/// The service's handle on the engine thread.
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    shutdown: Mutex<Option<oneshot::Sender<Duration>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    status: Arc<EngineStatus>,
}

/// Why a command did not reach the engine or failed there.
#[derive(Debug, thiserror::Error)]
pub enum EngineCallError {
    /// The engine thread is gone (shut down or crashed).
    #[error("the engine is not running")]
    Stopped,
    /// The engine answered with an error.
    #[error("{0}")]
    Failed(String),
}

/// What the engine thread is started with.
pub struct EngineParts {
    pub store: Arc<dyn EngineStore>,
    pub snapshots: Arc<dyn Snapshots>,
    pub breakers: Arc<Breakers>,
    pub config: EngineConfig,
    pub drivers: Vec<Arc<dyn Driver>>,
    /// The enabled policies, each with its name (for logs).
    pub policies: Vec<(Policy, String)>,
    pub metrics: Arc<Metrics>,
    /// Events from sources (NUT, timers, webhooks); `None` for no sources.
    pub bus: Option<Consumer>,
    /// The NUT sources' latest readings, baselines included: they publish
    /// no event, so conditions (`ups.runtime_minutes >= 5`) read them here.
    pub readings: Option<crate::nut::LatestReadings>,
}

impl EngineHandle {
    /// Starts the engine thread: loads `parts`' drivers and policies, runs
    /// [`Engine::start`] (restart reconciliation) and enters the loop.
    /// Returns once the thread runs; [`EngineStatus::ready`] turns true after
    /// `start`.
    pub fn spawn(parts: EngineParts) -> std::io::Result<EngineHandle> {
        let (commands, rx) = mpsc::channel(256);
        let (stop_tx, stop_rx) = oneshot::channel();
        let status = Arc::new(EngineStatus::default());
        let thread_status = status.clone();
        let thread = std::thread::Builder::new()
            .name("hazel-engine".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        error!(error = %e, "cannot start the engine runtime");
                        thread_status.stopped.store(true, Ordering::Release);
                        return;
                    }
                };
                runtime.block_on(run(parts, rx, stop_rx, thread_status.clone()));
                thread_status.stopped.store(true, Ordering::Release);
            })?;
        Ok(EngineHandle {
            commands,
            shutdown: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
            status,
        })
    }

    /// Whether the engine runs.
    pub fn status(&self) -> &Arc<EngineStatus> {
        &self.status
    }

    /// Decides `event` for real; the report lists every policy decision.
    pub async fn event(&self, event: Event) -> Result<EventReport, EngineCallError> {
        self.call(|reply| Command::Event { event, reply }).await
    }

    /// The whole decision for `event` with driver dry-runs; nothing persisted.
    pub async fn dry_run(&self, event: Event) -> Result<Transcript, EngineCallError> {
        self.call(|reply| Command::DryRun { event, reply }).await
    }

    /// Loads (or replaces) an enabled policy; `name` is what logs call it.
    pub async fn load(&self, policy: Policy, name: String) -> Result<(), EngineCallError> {
        self.call(|reply| Command::Load {
            policy: Box::new(policy),
            name,
            reply,
        })
        .await
    }

    /// Unloads a policy; `false` when it was not loaded.
    pub async fn unload(&self, id: Uuid) -> Result<bool, EngineCallError> {
        self.call(|reply| Command::Unload { id, reply }).await
    }

    /// Registers (or replaces) a host's driver.
    pub async fn add_driver(&self, driver: Arc<dyn Driver>) -> Result<(), EngineCallError> {
        self.commands
            .send(Command::Driver { driver })
            .await
            .map_err(|_| EngineCallError::Stopped)
    }

    /// Engages the persisted kill switch.
    /// `Ok(false)`: paused in memory, not persisted (the store refused).
    pub async fn pause(&self, by: &str, reason: &str) -> Result<bool, EngineCallError> {
        let (by, reason) = (by.to_string(), reason.to_string());
        self.call(|reply| Command::Pause { by, reason, reply })
            .await
    }

    /// Releases the kill switch (held items re-checked).
    pub async fn resume(&self) -> Result<(), EngineCallError> {
        self.call(|reply| Command::Resume { reply }).await
    }

    /// Stops intake, drains running items for at most `grace` (the rest is
    /// recorded interrupted), writes the ledger and joins the thread.
    pub async fn shutdown(&self, grace: Duration) {
        let stop = self
            .shutdown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(stop) = stop {
            let _ = stop.send(grace);
        }
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Command,
    ) -> Result<T, EngineCallError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| EngineCallError::Stopped)?;
        answer
            .await
            .map_err(|_| EngineCallError::Stopped)?
            .map_err(EngineCallError::Failed)
    }
}

async fn run(
    parts: EngineParts,
    mut commands: mpsc::Receiver<Command>,
    mut stop: oneshot::Receiver<Duration>,
    status: Arc<EngineStatus>,
) {
    let EngineParts {
        store,
        snapshots,
        breakers,
        config,
        drivers,
        policies,
        metrics,
        mut bus,
        readings,
    } = parts;
    let clock = config.clock.clone();
    let manifests = config.manifests.clone();
    let mut engine = Engine::new(store, snapshots, breakers, config);
    for driver in drivers {
        engine.add_driver(driver);
    }
    for (policy, name) in policies {
        let id = policy.id;
        match engine.add_policy(policy) {
            Ok(()) => engine.name_policy(id, name),
            Err(e) => warn!(policy_id = %id, policy = %name, error = %e, "policy not loaded"),
        }
    }
    match engine.start().await {
        Ok(report) => info!(
            paused = report.paused,
            rearmed = report.rearmed,
            reconciled = report.reconciled.len(),
            late_fires = report.late_fires,
            missed = report.missed,
            "engine started"
        ),
        Err(e) => error!(error = %e, "engine start failed; it keeps running with what it restored"),
    }
    status.started.store(true, Ordering::Release);
    // After a failed `fire_due` (the store refused a write) the fires stay
    // queued; wait a second before the next try instead of spinning.
    let mut fire_retry_at: Option<tokio::time::Instant> = None;
    // Event dry-runs back from their fire-time refreshes.
    let (replan_tx, mut replans) = mpsc::unbounded_channel::<Replan>();
    let grace = loop {
        let mut sleep = match engine.next_deadline() {
            Some(at) => (at - clock()).to_std().unwrap_or(Duration::ZERO),
            None => Duration::from_secs(3600),
        };
        if let Some(retry) = fire_retry_at {
            sleep = sleep.max(retry.saturating_duration_since(tokio::time::Instant::now()));
        }
        let has_work = engine.has_work();
        tokio::select! {
            grace = &mut stop => break grace.unwrap_or(Duration::from_secs(30)),
            command = commands.recv() => {
                let Some(command) = command else { break Duration::from_secs(30) };
                seed_facts(&mut engine, readings.as_ref());
                handle(&mut engine, command, &metrics, &replan_tx).await;
            }
            Some(planned) = replans.recv() => {
                seed_facts(&mut engine, readings.as_ref());
                replan(&engine, planned);
            }
            event = next_bus_event(&mut bus) => {
                match event {
                    Some(event) => {
                        seed_facts(&mut engine, readings.as_ref());
                        metrics.event(event.kind.as_str(), false);
                        if let Some(reachable) = host_reachable(&event) {
                            metrics.host_reachable(&event.subject.id, reachable);
                        }
                        handle_source_event(&mut engine, &event, &metrics).await;
                    }
                    None => bus = None,
                }
            }
            run = engine.next_run(), if has_work => match run {
                Ok(Some(run)) => record(&metrics, &manifests, &run),
                Ok(None) => {}
                // The scheduler is gone: nothing can run or report any more,
                // and polling would spin. Stop (readyz turns false); the
                // open intents are reconciled at the next start.
                Err(e @ EngineError::Scheduler { .. }) => {
                    error!(error = %e, "the scheduler stopped; the engine stops");
                    break Duration::ZERO;
                }
                Err(e) => error!(error = %e, "recording an action outcome failed"),
            },
            _ = tokio::time::sleep(sleep) => {
                match engine.fire_due(clock()).await {
                    Ok(reports) => {
                        fire_retry_at = None;
                        reports.iter().for_each(|r| count(&metrics, r));
                    }
                    Err(e) => {
                        fire_retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                        error!(error = %e, "firing due timers failed; they stay queued and are retried");
                    }
                }
            }
        }
        publish_queues(&engine, &metrics).await;
    };
    // Graceful drain: stop taking commands, let running items finish
    // within the grace, record everything in the ledger.
    commands.close();
    let deadline = tokio::time::Instant::now() + grace;
    match engine.scheduler().shutdown(deadline).await {
        Ok(report) => info!(?report, "scheduler drained"),
        Err(e) => warn!(error = %e, "scheduler drain failed"),
    }
    match engine.settle().await {
        Ok(runs) => runs.iter().for_each(|r| record(&metrics, &manifests, r)),
        Err(e) => error!(error = %e, "ledger flush at shutdown failed"),
    }
    info!("engine stopped");
}

/// Copies the latest UPS readings into the engine's facts
/// ([`crate::engine::conditions::UpsFacts::merge_reading`]).
fn seed_facts(engine: &mut Engine, readings: Option<&crate::nut::LatestReadings>) {
    let Some(readings) = readings else { return };
    for ups in readings.snapshot() {
        let id = ups.subject_id.clone();
        engine.facts_mut().ups_entry(&id).merge_reading(ups);
    }
}

/// A source's event is published once (NUT publishes a change, not a
/// level): when the store refuses what it implies, the engine puts the
/// trigger state back and the event is tried again a few times, a second
/// apart, before it is given up with an error.
async fn handle_source_event(engine: &mut Engine, event: &Event, metrics: &Metrics) {
    const ATTEMPTS: u32 = 4;
    for attempt in 1..=ATTEMPTS {
        match engine.handle_event(event).await {
            Ok(report) => {
                count(metrics, &report);
                return;
            }
            Err(e) if attempt < ATTEMPTS => {
                warn!(correlation_id = %event.correlation_id, attempt, error = %e, "event not handled; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                error!(correlation_id = %event.correlation_id, error = %e, "event not handled; given up");
            }
        }
    }
}

/// `attrs.reachable` of a `host.state` event.
fn host_reachable(event: &Event) -> Option<bool> {
    (event.kind == EventKind::HostState)
        .then(|| event.attrs.get("reachable")?.as_bool())
        .flatten()
}

async fn next_bus_event(bus: &mut Option<Consumer>) -> Option<Event> {
    match bus {
        Some(consumer) => consumer.recv().await,
        None => std::future::pending().await,
    }
}

/// An event dry-run whose hosts were refreshed: planned again on the
/// fresh snapshots, then its driver dry-runs run in a task of their own.
struct Replan {
    event: Event,
    fire: FireTime,
    reply: oneshot::Sender<Result<Transcript, String>>,
}

fn replan(engine: &Engine, replan: Replan) {
    let Replan { event, fire, reply } = replan;
    match engine.plan_dry_run_on(&event, &fire) {
        Ok(plan) => {
            tokio::spawn(async move {
                let _ = reply.send(Ok(plan.run().await));
            });
        }
        Err(e) => {
            let _ = reply.send(Err(describe(&e)));
        }
    }
}

async fn handle(
    engine: &mut Engine,
    command: Command,
    metrics: &Metrics,
    replans: &mpsc::UnboundedSender<Replan>,
) {
    match command {
        Command::Event { event, reply } => {
            metrics.event(event.kind.as_str(), false);
            let result = engine.handle_event(&event).await;
            if let Ok(report) = &result {
                count(metrics, report);
            }
            let _ = reply.send(result.map_err(|e| describe(&e)));
        }
        Command::DryRun { event, reply } => {
            metrics.event(event.kind.as_str(), true);
            // Decided here; the fire-time refreshes of the hosts whose
            // policies fire and the driver dry-runs (network, up to a
            // host's SLA each) run in a task of their own so live events
            // never wait. After the refreshes the decision is taken again
            // on fresh state ([`Replan`]).
            match engine.plan_dry_run(&event) {
                Ok(plan) if plan.fire_hosts().is_empty() => {
                    tokio::spawn(async move {
                        let _ = reply.send(Ok(plan.run().await));
                    });
                }
                Ok(plan) => {
                    let refresh = engine.fire_time_refresh(plan.fire_hosts().to_vec());
                    let replans = replans.clone();
                    tokio::spawn(async move {
                        let fire = refresh.await;
                        let _ = replans.send(Replan { event, fire, reply });
                    });
                }
                Err(e) => {
                    let _ = reply.send(Err(describe(&e)));
                }
            }
        }
        Command::Load {
            policy,
            name,
            reply,
        } => {
            let id = policy.id;
            let result = engine.load_policy(*policy);
            if result.is_ok() {
                engine.name_policy(id, name);
            }
            let _ = reply.send(result.map_err(|e| describe(&e)));
        }
        Command::Unload { id, reply } => {
            let _ = reply.send(engine.remove_policy(id).map_err(|e| describe(&e)));
        }
        Command::Driver { driver } => engine.add_driver(driver),
        Command::Pause { by, reason, reply } => {
            let _ = reply.send(engine.pause(&by, &reason).await.map_err(|e| describe(&e)));
        }
        Command::Resume { reply } => {
            let _ = reply.send(engine.resume().await.map_err(|e| describe(&e)));
        }
    }
}

/// An engine error with its causes, for the service's answer.
fn describe(e: &EngineError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn count(metrics: &Metrics, report: &EventReport) {
    for decision in &report.decisions {
        metrics.decision(&decision.code);
    }
}

fn record(metrics: &Metrics, manifests: &ManifestSet, run: &RunRecord) {
    for result in &run.results {
        // Rows the engine wrote itself (skips, interruptions) made no driver call.
        let by_driver = !result
            .code
            .as_deref()
            .is_some_and(|c| c.starts_with("engine."));
        if by_driver {
            if let Some((manifest, _)) = manifests.capability(&result.capability) {
                metrics.driver_latency(
                    &manifest.id,
                    "execute",
                    Duration::from_millis(result.duration_ms),
                );
            }
        }
        let outcome = match (&result.code, result.ok) {
            (Some(code), _) => code.as_str(),
            (None, true) => "ok",
            (None, false) => "failed",
        };
        metrics.action(outcome);
    }
}

async fn publish_queues(engine: &Engine, metrics: &Metrics) {
    metrics.set_retries_scheduled(engine.retries_scheduled());
    if let Ok(snapshot) = engine.scheduler().snapshot().await {
        let depths = snapshot
            .hosts
            .iter()
            .map(|(host, stats)| (host.clone(), stats.queued as u64));
        metrics.set_queues(depths, snapshot.running as u64);
    }
}
