//! What the engine tests share: one scriptable fake driver that keeps a
//! status per target and records every execute with its start and end on
//! tokio's clock, snapshots read live from the fakes, an engine builder,
//! policies compiled from YAML and the events the tests send.
//!
//! Each test crate (`engine`, `engine_restart`, `engine_props`) includes
//! this module with `mod support;` and uses a different part of it, hence
//! the crate-level `dead_code` allowance below.

// Every test crate compiles its own copy and uses only some of the helpers.
#![allow(dead_code)]

pub mod site;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::compile::CompileContext;
use agent::engine::event::{Event, EventKind, Subject, SubjectKind};
use agent::engine::runner::{Engine, EngineConfig, Policy, Snapshots};
use agent::engine::store::EngineStore;
use agent::ir::Ir;
use agent::validate::validate_text;
use async_trait::async_trait;
use chrono::Utc;
use drivers::breaker::Breakers;
use drivers::driver::{
    action_key, Action, ConnectionReport, Driver, DriverError, DryRunAnswer, Effects, ErrorKind,
    ExecOutcome, Plan, RefreshMode, TargetEffect,
};
use drivers::manifest::shipped;
use drivers::task::{report_task, TaskHandle, TaskStatus};
use inventory::{HostInventory, Severity, Target};
use serde_json::{json, Map, Value};
use tokio::time::Instant;
use uuid::Uuid;

/// How long an execute takes when nothing else is scripted.
pub const DEFAULT_LATENCY: Duration = Duration::from_millis(200);

/// One execute as a fake saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub host: String,
    pub verb: String,
    /// The action's `state` param (`on`, `off`, ...), if any.
    pub state: Option<String>,
    pub targets: Vec<String>,
    /// When the execute started, on tokio's clock.
    pub start: Instant,
    /// When it returned or was dropped; `None` while it runs.
    pub end: Option<Instant>,
}

/// How many executes run at once, now and at most; one per fake (its
/// host) and optionally one shared by several fakes (all hosts).
#[derive(Debug, Default)]
pub struct Concurrency {
    running: AtomicUsize,
    max: AtomicUsize,
}

impl Concurrency {
    /// The most executes seen running at once.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }

    /// Executes running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    fn enter(&self) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A driver for one host with a status per canonical target id.
///
/// Scriptable through its public fields: `latency` (or `latencies`, used
/// in turn), `failing` targets (left as they are, reported failed),
/// `erroring` verbs (the whole execute fails), and a `probe` called at the
/// start of every execute. Every execute is recorded in `calls()`.
pub struct FakeDriver {
    pub host: String,
    pub plugin: String,
    pub state: Mutex<BTreeMap<String, Option<String>>>,
    /// How long an execute takes when `latencies` is empty.
    pub latency: Mutex<Duration>,
    /// Per-execute latencies, taken in turn round robin, when not empty.
    pub latencies: Mutex<VecDeque<Duration>>,
    /// Targets an execute leaves as they are and reports failed.
    pub failing: Mutex<HashSet<String>>,
    /// Verbs whose execute fails as a whole (a driver error).
    pub erroring: Mutex<HashSet<String>>,
    /// Called at the start of every execute (to look at the store then).
    pub probe: Mutex<Option<Box<dyn Fn() + Send>>>,
    pub dry_runs: AtomicUsize,
    /// Executes of this host at once.
    pub concurrency: Concurrency,
    /// Executes of every fake sharing it at once.
    pub global: Arc<Concurrency>,
    /// When set, each target's change runs as a device task of this
    /// length: its handle is reported before the execute waits, and the
    /// device finishes it even when the execute is dropped (a crash).
    pub task_delay: Mutex<Option<Duration>>,
    tasks: Mutex<Vec<FakeTask>>,
    calls: Mutex<Vec<Call>>,
}

/// A change the fake device runs on its own until `ends`.
struct FakeTask {
    handle: String,
    target: String,
    to: Option<String>,
    ends: Instant,
    applied: bool,
}

impl FakeDriver {
    /// A fake for `host` with its own global concurrency counter.
    pub fn new(host: &str, plugin: &str, targets: &[(&str, Option<&str>)]) -> Arc<FakeDriver> {
        FakeDriver::sharing(host, plugin, targets, &Arc::default())
    }

    /// A fake for `host` counting its executes in `global` too.
    pub fn sharing(
        host: &str,
        plugin: &str,
        targets: &[(&str, Option<&str>)],
        global: &Arc<Concurrency>,
    ) -> Arc<FakeDriver> {
        Arc::new(FakeDriver {
            host: host.into(),
            plugin: plugin.into(),
            state: Mutex::new(
                targets
                    .iter()
                    .map(|(id, s)| (id.to_string(), s.map(str::to_string)))
                    .collect(),
            ),
            latency: Mutex::new(DEFAULT_LATENCY),
            latencies: Mutex::new(VecDeque::new()),
            failing: Mutex::new(HashSet::new()),
            erroring: Mutex::new(HashSet::new()),
            probe: Mutex::new(None),
            dry_runs: AtomicUsize::new(0),
            concurrency: Concurrency::default(),
            global: global.clone(),
            task_delay: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
        })
    }

    pub fn status(&self, target: &str) -> Option<String> {
        self.settle_tasks();
        self.state.lock().unwrap().get(target).cloned().flatten()
    }

    /// Applies the changes of the device tasks that ended by now.
    fn settle_tasks(&self) {
        let now = Instant::now();
        let mut tasks = self.tasks.lock().unwrap();
        for task in tasks.iter_mut().filter(|t| !t.applied && t.ends <= now) {
            task.applied = true;
            self.state
                .lock()
                .unwrap()
                .insert(task.target.clone(), task.to.clone());
        }
    }

    /// The handles of every task started so far.
    pub fn task_handles(&self) -> Vec<String> {
        self.tasks
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.handle.clone())
            .collect()
    }

    pub fn set_status(&self, target: &str, status: &str) {
        self.state
            .lock()
            .unwrap()
            .insert(target.into(), Some(status.into()));
    }

    /// Every execute so far, in call order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// `(verb, targets)` of every execute so far, in call order.
    pub fn executes(&self) -> Vec<(String, Vec<String>)> {
        self.calls()
            .into_iter()
            .map(|c| (c.verb, c.targets))
            .collect()
    }

    pub fn snapshot(&self) -> HostInventory {
        self.settle_tasks();
        let targets = self
            .state
            .lock()
            .unwrap()
            .iter()
            .map(|(id, status)| {
                let (target_type, id) = id.split_once(':').unwrap();
                Target {
                    target_type: target_type.into(),
                    id: id.into(),
                    name: None,
                    status: status.clone(),
                    labels: BTreeMap::new(),
                    attrs: BTreeMap::new(),
                }
            })
            .collect();
        HostInventory::new(&self.host, &self.plugin, targets)
    }

    fn next_latency(&self) -> Duration {
        let mut script = self.latencies.lock().unwrap();
        match script.pop_front() {
            Some(latency) => {
                script.push_back(latency);
                latency
            }
            None => *self.latency.lock().unwrap(),
        }
    }
}

/// The status an action leaves a target in.
pub fn after(action: &Action, before: Option<String>) -> Option<String> {
    let state = action.params.get("state").and_then(Value::as_str);
    match (action.verb.as_str(), state) {
        ("start", _) => Some("running".into()),
        ("shutdown" | "stop", _) => Some("stopped".into()),
        // A PoE cycle turns the port off and on again.
        ("set", Some("cycle")) => before,
        ("set", Some(s)) => Some(s.into()),
        _ => before,
    }
}

/// Marks an execute running; records its end and leaves the counters
/// when dropped, so a cancelled execute ends too.
struct Running<'a> {
    driver: &'a FakeDriver,
    call: usize,
}

impl<'a> Running<'a> {
    fn enter(driver: &'a FakeDriver, action: &Action, targets: &[String]) -> Running<'a> {
        driver.concurrency.enter();
        driver.global.enter();
        let mut calls = driver.calls.lock().unwrap();
        calls.push(Call {
            host: driver.host.clone(),
            verb: action.verb.clone(),
            state: action
                .params
                .get("state")
                .and_then(Value::as_str)
                .map(str::to_string),
            targets: targets.to_vec(),
            start: Instant::now(),
            end: None,
        });
        Running {
            driver,
            call: calls.len() - 1,
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Ok(mut calls) = self.driver.calls.lock() {
            calls[self.call].end = Some(Instant::now());
        }
        self.driver.concurrency.leave();
        self.driver.global.leave();
    }
}

#[async_trait]
impl Driver for FakeDriver {
    fn plugin_id(&self) -> &str {
        &self.plugin
    }

    fn host_id(&self) -> &str {
        &self.host
    }

    async fn discover(
        &self,
        _mode: RefreshMode,
        _budget: Duration,
    ) -> Result<Vec<Target>, DriverError> {
        Ok(self.snapshot().into_targets())
    }

    async fn dry_run(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<DryRunAnswer>, DriverError> {
        self.dry_runs.fetch_add(1, Ordering::SeqCst);
        self.settle_tasks();
        Ok(targets
            .iter()
            .map(|t| {
                let from = self.status(t);
                DryRunAnswer {
                    ok: true,
                    severity: Severity::Info,
                    idempotency_key: action_key(shipped(), &self.host, action, t),
                    preconditions: Vec::new(),
                    plan: Plan {
                        kind: "api".into(),
                        preview: Vec::new(),
                    },
                    effects: Effects {
                        summary: format!("{} would run", action.verb),
                        per_target: vec![TargetEffect {
                            id: t.clone(),
                            to: after(action, from.clone()),
                            from,
                        }],
                    },
                    reason: None,
                }
            })
            .collect())
    }

    async fn execute(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<ExecOutcome>, DriverError> {
        if let Some(probe) = self.probe.lock().unwrap().as_ref() {
            probe();
        }
        let _running = Running::enter(self, action, targets);
        let mut latency = self.next_latency();
        let task_delay = *self.task_delay.lock().unwrap();
        if let Some(delay) = task_delay {
            latency = delay;
            let failing = self.failing.lock().unwrap().clone();
            for t in targets.iter().filter(|t| !failing.contains(*t)) {
                let handle = {
                    let mut tasks = self.tasks.lock().unwrap();
                    let handle = format!("task-{}:{}:{t}", tasks.len() + 1, action.verb);
                    tasks.push(FakeTask {
                        handle: handle.clone(),
                        target: t.clone(),
                        to: after(action, self.state.lock().unwrap().get(t).cloned().flatten()),
                        ends: Instant::now() + delay,
                        applied: false,
                    });
                    handle
                };
                report_task(TaskHandle {
                    target: t.clone(),
                    handle,
                });
            }
        }
        tokio::time::sleep(latency).await;
        if self.erroring.lock().unwrap().contains(&action.verb) {
            return Err(DriverError::new(
                ErrorKind::ServerError,
                "scripted whole-item failure",
            ));
        }
        let failing = self.failing.lock().unwrap().clone();
        let mut out = Vec::new();
        for t in targets {
            let ok = !failing.contains(t);
            if ok {
                let mut state = self.state.lock().unwrap();
                let before = state.get(t).cloned().flatten();
                state.insert(t.clone(), after(action, before));
            }
            out.push(ExecOutcome {
                target: t.clone(),
                ok,
                severity: if ok { Severity::Info } else { Severity::Error },
                code: if ok {
                    "driver.ok"
                } else {
                    "driver.server_error"
                }
                .into(),
                reason: (!ok).then(|| "scripted failure".to_string()),
                evidence: Map::new(),
                duration_ms: latency.as_millis() as u64,
                result_state: self.status(t),
            });
        }
        Ok(out)
    }

    async fn test_connection(&self) -> Result<ConnectionReport, DriverError> {
        Ok(ConnectionReport {
            ok: true,
            details: Map::new(),
            duration_ms: 0,
        })
    }

    async fn task_status(&self, task: &TaskHandle) -> Result<TaskStatus, DriverError> {
        self.settle_tasks();
        let tasks = self.tasks.lock().unwrap();
        Ok(match tasks.iter().find(|t| t.handle == task.handle) {
            Some(t) if t.applied => TaskStatus::Succeeded { exit: "OK".into() },
            Some(_) => TaskStatus::Running,
            None => TaskStatus::Unknown,
        })
    }
}

/// Snapshots read live from the fake drivers, as a fresh refresh would.
pub struct Live(pub Vec<Arc<FakeDriver>>);

impl Snapshots for Live {
    fn host(&self, host_id: &str) -> Option<HostInventory> {
        self.0
            .iter()
            .find(|d| d.host == host_id)
            .map(|d| d.snapshot())
    }
}

/// An engine over `store` with `drivers` registered and read live.
pub fn engine(
    store: Arc<dyn EngineStore>,
    drivers: &[&Arc<FakeDriver>],
    breakers: Arc<Breakers>,
    config: EngineConfig,
) -> Engine {
    let mut engine = Engine::new(
        store,
        Arc::new(Live(drivers.iter().map(|d| Arc::clone(d)).collect())),
        breakers,
        config,
    );
    for d in drivers {
        engine.add_driver(Arc::clone(d) as Arc<dyn Driver>);
    }
    engine
}

/// Compiles a policy from YAML, failing the test on any blocker.
pub fn ir(yaml: &str) -> Ir {
    let validated = validate_text(
        yaml,
        shipped(),
        &CompileContext {
            version_int: 1,
            ..CompileContext::default()
        },
    );
    validated
        .report
        .ir
        .unwrap_or_else(|| panic!("policy does not compile: {:?}", validated.report.issues))
}

/// A policy of priority 0 on `trigger` running `action` on `selector` of
/// `ty` on `host`.
pub fn policy(
    id: u128,
    trigger: &str,
    host: &str,
    ty: &str,
    selector: &str,
    action: &str,
) -> Policy {
    policy_at(id, 0, trigger, host, ty, selector, action)
}

/// [`policy`] with a priority.
pub fn policy_at(
    id: u128,
    priority: i64,
    trigger: &str,
    host: &str,
    ty: &str,
    selector: &str,
    action: &str,
) -> Policy {
    let yaml = format!(
        "version: 1\nname: test policy\npriority: {priority}\ntrigger_group:\n  triggers:\n    - {trigger}\n\
         targets:\n  host_id: {host}\n  target_type: {ty}\n  selector: {selector}\n\
         actions:\n  - {action}\n"
    );
    Policy {
        id: Uuid::from_u128(id),
        ir: ir(&yaml),
    }
}

pub const ON_BATTERY: &str = "{ type: ups.state, equals: on_battery }";
pub const ON_MAINS: &str = "{ type: ups.state, equals: on_mains }";
pub const DEPLOY: &str = "{ type: webhook.custom, name: deploy }";

/// A `range` selector.
pub fn range(value: &str) -> String {
    format!("{{ mode: range, value: \"{value}\" }}")
}

/// A `proxmox.vm` action.
pub fn vm(verb: &str) -> String {
    format!("{{ capability_id: proxmox.vm, verb: {verb} }}")
}

/// An `aoss.poe.port set` action.
pub fn poe(state: &str) -> String {
    format!("{{ capability_id: aoss.poe.port, verb: set, params: {{ state: {state} }} }}")
}

/// The UPS `ups1@nas.lan:3493` entering `state`.
pub fn ups(state: &str) -> Event {
    let mut attrs = Map::new();
    attrs.insert("state".into(), json!(state));
    Event {
        kind: EventKind::UpsState,
        subject: Subject {
            kind: SubjectKind::Ups,
            id: "ups1@nas.lan:3493".into(),
        },
        attrs,
        ts: Utc::now(),
        correlation_id: Uuid::new_v4(),
    }
}

/// The custom webhook `name` called.
pub fn webhook(name: &str) -> Event {
    let mut attrs = Map::new();
    attrs.insert("name".into(), json!(name));
    Event {
        kind: EventKind::WebhookCustom,
        subject: Subject {
            kind: SubjectKind::Integration,
            id: name.into(),
        },
        attrs,
        ts: Utc::now(),
        correlation_id: Uuid::new_v4(),
    }
}

/// `host` became reachable or unreachable.
pub fn host_state(host: &str, reachable: bool) -> Event {
    let mut attrs = Map::new();
    attrs.insert("reachable".into(), json!(reachable));
    Event {
        kind: EventKind::HostState,
        subject: Subject {
            kind: SubjectKind::Host,
            id: host.into(),
        },
        attrs,
        ts: Utc::now(),
        correlation_id: Uuid::new_v4(),
    }
}

/// The most calls running at the same instant, from their recorded
/// intervals (half-open: a call ending when another starts does not
/// overlap it). A call without an end counts as still running.
pub fn max_overlap(calls: &[Call]) -> usize {
    let mut edges: Vec<(Instant, i32)> = Vec::new();
    for call in calls {
        edges.push((call.start, 1));
        if let Some(end) = call.end {
            edges.push((end, -1));
        }
    }
    // At one instant, ends before starts.
    edges.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        max = max.max(now);
    }
    max as usize
}
