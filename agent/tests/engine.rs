//! The per-policy run (SPEC §6) end to end on a virtual clock: real policies
//! compiled from YAML, the in-memory store, the real scheduler, and a
//! scriptable fake driver that keeps a status per target.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::compile::{CompileContext, Ir};
use agent::engine::event::{Event, EventKind, Subject, SubjectKind};
use agent::engine::runner::{
    tokio_clock, Engine, EngineConfig, EventReport, Policy, Snapshots, ALREADY_DESIRED,
    HOST_UNREACHABLE, INTERRUPTED, SELECTOR_EMPTY, SUPPRESSED_IDEMPOTENT, SUPPRESSED_WINDOW,
};
use agent::engine::store::{
    AuditQuery, EngineStore, MemoryStore, RunStatus, LEDGER_RUNS_PER_POLICY,
};
use agent::validate::validate_text;
use async_trait::async_trait;
use drivers::breaker::{BreakerConfig, Breakers};
use drivers::driver::{
    action_key, Action, ConnectionReport, Driver, DriverError, DryRunAnswer, Effects, ErrorKind,
    ExecOutcome, Plan, RefreshMode, TargetEffect,
};
use drivers::manifest::shipped;
use inventory::{HostInventory, Severity, Target};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// One execute as the fake saw it: verb, `state` param, targets.
type Call = (String, Option<String>, Vec<String>);

/// A driver for one host with a status per canonical target id.
struct FakeDriver {
    host: String,
    plugin: String,
    state: Mutex<BTreeMap<String, Option<String>>>,
    latency: Mutex<Duration>,
    failing: Mutex<HashSet<String>>,
    /// Verbs whose execute fails as a whole (a driver error).
    erroring: Mutex<HashSet<String>>,
    /// `(verb, state param, targets)` of every execute, in call order.
    calls: Mutex<Vec<Call>>,
    dry_runs: AtomicUsize,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl FakeDriver {
    fn new(host: &str, plugin: &str, targets: &[(&str, Option<&str>)]) -> Arc<FakeDriver> {
        Arc::new(FakeDriver {
            host: host.into(),
            plugin: plugin.into(),
            state: Mutex::new(
                targets
                    .iter()
                    .map(|(id, s)| (id.to_string(), s.map(str::to_string)))
                    .collect(),
            ),
            latency: Mutex::new(Duration::from_millis(200)),
            failing: Mutex::new(HashSet::new()),
            erroring: Mutex::new(HashSet::new()),
            calls: Mutex::new(Vec::new()),
            dry_runs: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
        })
    }

    fn status(&self, target: &str) -> Option<String> {
        self.state.lock().unwrap().get(target).cloned().flatten()
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn snapshot(&self) -> HostInventory {
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
}

/// The status an action leaves a target in.
fn after(action: &Action, before: Option<String>) -> Option<String> {
    let state = action.params.get("state").and_then(Value::as_str);
    match (action.verb.as_str(), state) {
        ("start", _) => Some("running".into()),
        ("shutdown" | "stop", _) => Some("stopped".into()),
        ("set", Some(s)) => Some(s.into()),
        _ => before,
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
        Ok(targets
            .iter()
            .map(|t| {
                let from = self.status(t);
                DryRunAnswer {
                    ok: true,
                    severity: Severity::Info,
                    idempotency_key: action_key(action, t),
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
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        self.calls.lock().unwrap().push((
            action.verb.clone(),
            action
                .params
                .get("state")
                .and_then(Value::as_str)
                .map(str::to_string),
            targets.to_vec(),
        ));
        let latency = *self.latency.lock().unwrap();
        tokio::time::sleep(latency).await;
        if self.erroring.lock().unwrap().contains(&action.verb) {
            self.running.fetch_sub(1, Ordering::SeqCst);
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
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(out)
    }

    async fn test_connection(&self) -> Result<ConnectionReport, DriverError> {
        Ok(ConnectionReport {
            ok: true,
            details: Map::new(),
            duration_ms: 0,
        })
    }
}

/// Snapshots read live from the fake drivers, as a fresh refresh would.
struct Live(Vec<Arc<FakeDriver>>);

impl Snapshots for Live {
    fn host(&self, host_id: &str) -> Option<HostInventory> {
        self.0
            .iter()
            .find(|d| d.host == host_id)
            .map(|d| d.snapshot())
    }
}

struct Harness {
    engine: Engine,
    store: Arc<MemoryStore>,
    breakers: Arc<Breakers>,
}

fn harness(drivers: &[&Arc<FakeDriver>]) -> Harness {
    let store = Arc::new(MemoryStore::default());
    let breakers = Arc::new(Breakers::new(BreakerConfig::default()));
    let mut engine = Engine::new(
        store.clone(),
        Arc::new(Live(drivers.iter().map(|d| Arc::clone(d)).collect())),
        breakers.clone(),
        EngineConfig {
            clock: tokio_clock(),
            ..EngineConfig::default()
        },
    );
    for d in drivers {
        engine.add_driver(Arc::clone(d) as Arc<dyn Driver>);
    }
    Harness {
        engine,
        store,
        breakers,
    }
}

fn pve() -> Arc<FakeDriver> {
    FakeDriver::new(
        "pve-01",
        "proxmox.ve",
        &[
            ("vm:101", Some("running")),
            ("vm:102", Some("running")),
            ("vm:103", Some("stopped")),
            ("vm:104", Some("running")),
        ],
    )
}

fn switch() -> Arc<FakeDriver> {
    FakeDriver::new(
        "sw-01",
        "aruba.aoss",
        &[
            ("poe-port:1/1", Some("on")),
            ("poe-port:1/2", Some("on")),
            ("poe-port:1/3", None),
        ],
    )
}

/// Compiles a policy from YAML, failing the test on any blocker.
fn ir(yaml: &str) -> Ir {
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

/// A policy on `trigger` acting `verb params` on `selector` of `host`.
fn policy(id: u128, trigger: &str, host: &str, ty: &str, selector: &str, action: &str) -> Policy {
    let yaml = format!(
        "version: 1\nname: test policy\ntrigger_group:\n  triggers:\n    - {trigger}\n\
         targets:\n  host_id: {host}\n  target_type: {ty}\n  selector: {selector}\n\
         actions:\n  - {action}\n"
    );
    Policy {
        id: Uuid::from_u128(id),
        ir: ir(&yaml),
    }
}

const ON_BATTERY: &str = "{ type: ups.state, equals: on_battery }";
const ON_MAINS: &str = "{ type: ups.state, equals: on_mains }";
const DEPLOY: &str = "{ type: webhook.custom, name: deploy }";

fn range(value: &str) -> String {
    format!("{{ mode: range, value: \"{value}\" }}")
}

fn vm(verb: &str) -> String {
    format!("{{ capability_id: proxmox.vm, verb: {verb} }}")
}

fn poe(state: &str) -> String {
    format!("{{ capability_id: aoss.poe.port, verb: set, params: {{ state: {state} }} }}")
}

fn ups(state: &str) -> Event {
    let mut attrs = Map::new();
    attrs.insert("state".into(), json!(state));
    Event {
        kind: EventKind::UpsState,
        subject: Subject {
            kind: SubjectKind::Ups,
            id: "ups1@nas.lan:3493".into(),
        },
        attrs,
        ts: chrono::Utc::now(),
        correlation_id: Uuid::new_v4(),
    }
}

fn webhook(name: &str) -> Event {
    let mut attrs = Map::new();
    attrs.insert("name".into(), json!(name));
    Event {
        kind: EventKind::WebhookCustom,
        subject: Subject {
            kind: SubjectKind::Integration,
            id: name.into(),
        },
        attrs,
        ts: chrono::Utc::now(),
        correlation_id: Uuid::new_v4(),
    }
}

fn host_state(host: &str, reachable: bool) -> Event {
    let mut attrs = Map::new();
    attrs.insert("reachable".into(), json!(reachable));
    Event {
        kind: EventKind::HostState,
        subject: Subject {
            kind: SubjectKind::Host,
            id: host.into(),
        },
        attrs,
        ts: chrono::Utc::now(),
        correlation_id: Uuid::new_v4(),
    }
}

/// Handles one event and waits for every item it scheduled.
async fn handle(h: &mut Harness, event: &Event) -> EventReport {
    let report = h.engine.handle_event(event).await.unwrap();
    h.engine.settle().await.unwrap();
    report
}

fn codes(report: &EventReport) -> Vec<(u128, String)> {
    report
        .decisions
        .iter()
        .map(|d| (d.policy_id.as_u128(), d.code.clone()))
        .collect()
}

async fn minutes(n: u64) {
    tokio::time::advance(Duration::from_secs(60 * n)).await;
}

#[tokio::test(start_paused = true)]
async fn policies_run_by_priority_then_by_uuid() {
    let pve = pve();
    let mut h = harness(&[&pve]);
    let mut late = policy(1, DEPLOY, "pve-01", "vm", &range("101"), &vm("reset"));
    late.ir.priority = 5;
    h.engine.add_policy(late).unwrap();
    h.engine
        .add_policy(policy(
            3,
            DEPLOY,
            "pve-01",
            "vm",
            &range("102"),
            &vm("reset"),
        ))
        .unwrap();
    h.engine
        .add_policy(policy(
            2,
            DEPLOY,
            "pve-01",
            "vm",
            &range("104"),
            &vm("reset"),
        ))
        .unwrap();
    let report = handle(&mut h, &webhook("deploy")).await;
    let order: Vec<u128> = codes(&report).iter().map(|(id, _)| *id).collect();
    assert_eq!(order, vec![2, 3, 1]);
    let targets: Vec<Vec<String>> = pve.calls().into_iter().map(|c| c.2).collect();
    assert_eq!(
        targets,
        vec![vec!["vm:104"], vec!["vm:102"], vec!["vm:101"]]
    );
}

#[tokio::test(start_paused = true)]
async fn stop_on_match_skips_later_policies_once_an_action_was_scheduled() {
    let pve = pve();
    let mut h = harness(&[&pve]);
    // Priority 0 stops on match but has nothing to do (vm:103 is stopped).
    let mut idle = policy(
        1,
        ON_BATTERY,
        "pve-01",
        "vm",
        &range("103"),
        &vm("shutdown"),
    );
    idle.ir.stop_on_match = true;
    let mut first = policy(
        2,
        ON_BATTERY,
        "pve-01",
        "vm",
        &range("101"),
        &vm("shutdown"),
    );
    first.ir.stop_on_match = true;
    first.ir.priority = 1;
    let mut second = policy(
        3,
        ON_BATTERY,
        "pve-01",
        "vm",
        &range("102"),
        &vm("shutdown"),
    );
    second.ir.priority = 2;
    for p in [idle, first, second] {
        h.engine.add_policy(p).unwrap();
    }
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(
        codes(&report),
        vec![
            (1, ALREADY_DESIRED.to_string()),
            (2, "engine.scheduled".to_string())
        ]
    );
    assert_eq!(pve.status("vm:101").as_deref(), Some("stopped"));
    assert_eq!(pve.status("vm:102").as_deref(), Some("running"));
}

#[tokio::test(start_paused = true)]
async fn suppression_window_holds_a_second_outage_and_counts_it() {
    let pve = pve();
    let mut h = harness(&[&pve]);
    h.engine
        .add_policy(policy(
            1,
            ON_BATTERY,
            "pve-01",
            "vm",
            &range("101"),
            &vm("shutdown"),
        ))
        .unwrap();
    handle(&mut h, &ups("on_battery")).await;
    minutes(1).await;
    handle(&mut h, &ups("on_mains")).await;
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(codes(&report), vec![(1, SUPPRESSED_WINDOW.to_string())]);
    let window = h.store.window_state(Uuid::from_u128(1)).unwrap();
    assert_eq!(window.suppressed_count, 1);
    // Suppressed evaluations stay out of the ledger and go to the audit log.
    assert_eq!(h.store.runs(Uuid::from_u128(1), 100).unwrap().len(), 1);
    let audit = h
        .store
        .audit(&AuditQuery {
            kind: Some(SUPPRESSED_WINDOW.into()),
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(audit.len(), 1);
    // Past the suppression window, the idempotency window (step 6) still
    // holds the key...
    minutes(5).await;
    handle(&mut h, &ups("on_mains")).await;
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(codes(&report), vec![(1, SUPPRESSED_IDEMPOTENT.to_string())]);
    // ... and past both windows the policy acts again on a VM restarted by hand.
    minutes(10).await;
    pve.state
        .lock()
        .unwrap()
        .insert("vm:101".into(), Some("running".into()));
    handle(&mut h, &ups("on_mains")).await;
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(codes(&report), vec![(1, "engine.scheduled".to_string())]);
    assert_eq!(pve.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_inverse_action_on_the_same_targets_clears_the_suppression_window() {
    let pve = pve();
    let mut h = harness(&[&pve]);
    h.engine
        .add_policy(policy(
            1,
            ON_BATTERY,
            "pve-01",
            "vm",
            &range("101"),
            &vm("shutdown"),
        ))
        .unwrap();
    h.engine
        .add_policy(policy(
            2,
            ON_MAINS,
            "pve-01",
            "vm",
            &range("101"),
            &vm("start"),
        ))
        .unwrap();
    handle(&mut h, &ups("on_battery")).await;
    minutes(1).await;
    handle(&mut h, &ups("on_mains")).await;
    minutes(1).await;
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(codes(&report), vec![(1, "engine.scheduled".to_string())]);
    let verbs: Vec<String> = pve.calls().into_iter().map(|c| c.0).collect();
    assert_eq!(verbs, vec!["shutdown", "start", "shutdown"]);
}

#[tokio::test(start_paused = true)]
async fn poe_off_on_off_within_the_windows_acts_every_time() {
    let sw = switch();
    let mut h = harness(&[&sw]);
    h.engine
        .add_policy(policy(
            1,
            ON_BATTERY,
            "sw-01",
            "poe-port",
            &range("1/1-1/2"),
            &poe("off"),
        ))
        .unwrap();
    h.engine
        .add_policy(policy(
            2,
            ON_MAINS,
            "sw-01",
            "poe-port",
            &range("1/1-1/2"),
            &poe("on"),
        ))
        .unwrap();
    for event in ["on_battery", "on_mains", "on_battery"] {
        handle(&mut h, &ups(event)).await;
        minutes(2).await;
    }
    let states: Vec<Option<String>> = sw.calls().into_iter().map(|c| c.1).collect();
    assert_eq!(
        states,
        vec![Some("off".into()), Some("on".into()), Some("off".into())]
    );
    assert_eq!(sw.status("poe-port:1/2").as_deref(), Some("off"));
}

#[tokio::test(start_paused = true)]
async fn idempotency_window_skips_a_key_that_already_ran() {
    let sw = switch();
    let mut h = harness(&[&sw]);
    // Port 1/3 reports no status, so only the key can tell it was done.
    h.engine
        .add_policy(policy(
            1,
            ON_BATTERY,
            "sw-01",
            "poe-port",
            &range("1/3"),
            &poe("off"),
        ))
        .unwrap();
    h.engine
        .add_policy(policy(
            2,
            ON_BATTERY,
            "sw-01",
            "poe-port",
            &range("1/3"),
            &poe("off"),
        ))
        .unwrap();
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(
        codes(&report),
        vec![
            (1, "engine.scheduled".to_string()),
            (2, SUPPRESSED_IDEMPOTENT.to_string())
        ]
    );
    assert_eq!(sw.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_target_forgets_its_key_and_is_retried() {
    let sw = switch();
    sw.failing.lock().unwrap().insert("poe-port:1/3".into());
    let mut h = harness(&[&sw]);
    let mut p = policy(
        1,
        DEPLOY,
        "sw-01",
        "poe-port",
        &range("1/2,1/3"),
        &poe("off"),
    );
    p.ir.windows.suppression_s = 0;
    h.engine.add_policy(p).unwrap();
    handle(&mut h, &webhook("deploy")).await;
    let run = &h.store.runs(Uuid::from_u128(1), 1).unwrap()[0];
    assert_eq!(run.status, RunStatus::Partial);
    sw.failing.lock().unwrap().clear();
    minutes(1).await;
    let report = handle(&mut h, &webhook("deploy")).await;
    assert_eq!(report.decisions[0].planned[0].targets, vec!["poe-port:1/3"]);
    assert_eq!(sw.status("poe-port:1/3").as_deref(), Some("off"));
}

#[tokio::test(start_paused = true)]
async fn ledger_selector_restarts_exactly_what_was_stopped() {
    let pve = pve();
    let mut h = harness(&[&pve]);
    h.engine
        .add_policy(policy(
            1,
            ON_BATTERY,
            "pve-01",
            "vm",
            &range("101-103"),
            &vm("shutdown"),
        ))
        .unwrap();
    let ledger = format!("{{ mode: ledger, value: \"{}\" }}", Uuid::from_u128(1));
    h.engine
        .add_policy(policy(2, ON_MAINS, "pve-01", "vm", &ledger, &vm("start")))
        .unwrap();
    handle(&mut h, &ups("on_battery")).await;
    let forward = &h.store.runs(Uuid::from_u128(1), 1).unwrap()[0];
    let changed: Vec<&str> = forward.changed_targets().iter().map(|p| p.1).collect();
    assert_eq!(changed, vec!["vm:101", "vm:102"]);
    minutes(3).await;
    handle(&mut h, &ups("on_mains")).await;
    let starts: Vec<Vec<String>> = pve
        .calls()
        .into_iter()
        .filter(|c| c.0 == "start")
        .map(|c| c.2)
        .collect();
    assert_eq!(starts, vec![vec!["vm:101", "vm:102"]]);
    assert_eq!(pve.status("vm:103").as_deref(), Some("stopped"));
    assert_eq!(pve.status("vm:104").as_deref(), Some("running"));
}

#[tokio::test(start_paused = true)]
async fn empty_selection_warns_and_the_next_policy_still_runs() {
    let pve = pve();
    let mut h = harness(&[&pve]);
    h.engine
        .add_policy(policy(
            1,
            ON_BATTERY,
            "pve-01",
            "vm",
            &range("900-901"),
            &vm("shutdown"),
        ))
        .unwrap();
    h.engine
        .add_policy(policy(
            2,
            ON_BATTERY,
            "pve-01",
            "vm",
            &range("101"),
            &vm("shutdown"),
        ))
        .unwrap();
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(report.decisions[0].code, SELECTOR_EMPTY);
    assert_eq!(report.decisions[0].severity, Severity::Warn);
    assert_eq!(report.decisions[1].code, "engine.scheduled");
    assert!(h.store.runs(Uuid::from_u128(1), 30).unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_target_already_in_the_desired_state_is_skipped_with_info() {
    let pve = pve();
    let mut h = harness(&[&pve]);
    h.engine
        .add_policy(policy(
            1,
            ON_BATTERY,
            "pve-01",
            "vm",
            &range("103"),
            &vm("shutdown"),
        ))
        .unwrap();
    let report = handle(&mut h, &ups("on_battery")).await;
    let decision = &report.decisions[0];
    assert_eq!(decision.code, ALREADY_DESIRED);
    assert_eq!(decision.severity, Severity::Info);
    assert_eq!(decision.skipped[0].target, "vm:103");
    assert!(pve.calls().is_empty());
    assert!(h.store.runs(Uuid::from_u128(1), 30).unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_host_is_an_error_run_and_nothing_executes() {
    let pve = pve();
    let mut h = harness(&[&pve]);
    h.engine
        .add_policy(policy(
            1,
            ON_BATTERY,
            "pve-01",
            "vm",
            &range("101"),
            &vm("shutdown"),
        ))
        .unwrap();
    handle(&mut h, &host_state("pve-01", false)).await;
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(report.decisions[0].code, HOST_UNREACHABLE);
    assert_eq!(report.decisions[0].severity, Severity::Error);
    assert!(pve.calls().is_empty());
    let runs = h.store.runs(Uuid::from_u128(1), 30).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Error);
    assert_eq!(runs[0].results[0].code.as_deref(), Some(HOST_UNREACHABLE));
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_counts_as_an_unreachable_host() {
    let pve = pve();
    let mut h = harness(&[&pve]);
    h.engine
        .add_policy(policy(
            1,
            ON_BATTERY,
            "pve-01",
            "vm",
            &range("101"),
            &vm("shutdown"),
        ))
        .unwrap();
    let breaker = h.breakers.for_host("pve-01");
    for _ in 0..3 {
        breaker.acquire().unwrap().failure(ErrorKind::NetworkError);
    }
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(report.decisions[0].code, HOST_UNREACHABLE);
    assert!(pve.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn ledger_entries_have_the_spec_shape_and_only_30_are_kept() {
    let pve = pve();
    let mut h = harness(&[&pve]);
    let mut p = policy(1, DEPLOY, "pve-01", "vm", &range("101,103"), &vm("reset"));
    p.ir.windows.suppression_s = 0;
    p.ir.windows.idempotency_s = 0;
    h.engine.add_policy(p).unwrap();
    let mut last = None;
    for _ in 0..35 {
        let event = webhook("deploy");
        last = Some(event.correlation_id);
        handle(&mut h, &event).await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(pve.calls().len(), 35);
    let runs = h.store.runs(Uuid::from_u128(1), 100).unwrap();
    assert_eq!(runs.len(), LEDGER_RUNS_PER_POLICY);
    let run = &runs[0];
    assert_eq!(run.event.kind, "webhook.custom");
    assert_eq!(run.event.subject.id, "deploy");
    assert_eq!(Some(run.event.correlation_id), last);
    assert_eq!(run.version_int, 1);
    assert_eq!(run.status, RunStatus::Ok);
    assert_eq!(run.severity, Severity::Info);
    assert!(run.finished_at > run.started_at);
    let targets: Vec<&str> = run.results.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, vec!["vm:101", "vm:103"]);
    assert!(run.results.iter().all(|r| r.ok && r.duration_ms == 200));
    assert_eq!(run.results[0].code.as_deref(), Some("driver.ok"));
    assert!(run.explain["trigger"].is_string());
    assert!(run.explain["conditions"].is_string());
}

#[tokio::test(start_paused = true)]
async fn event_dry_run_executes_nothing_and_persists_nothing() {
    let pve = pve();
    let mut h = harness(&[&pve]);
    h.engine
        .add_policy(policy(
            1,
            ON_BATTERY,
            "pve-01",
            "vm",
            &range("101-103"),
            &vm("shutdown"),
        ))
        .unwrap();
    let transcript = h.engine.dry_run_event(&ups("on_battery")).await.unwrap();
    let decision = &transcript.decisions[0];
    assert_eq!(decision.code, "engine.scheduled");
    assert_eq!(decision.planned[0].targets, vec!["vm:101", "vm:102"]);
    let answers = decision.planned[0].dry_run.clone().unwrap().unwrap();
    assert_eq!(
        answers[0].effects.per_target[0].to.as_deref(),
        Some("stopped")
    );
    assert_eq!(decision.skipped[0].code.as_deref(), Some(ALREADY_DESIRED));
    assert!(pve.calls().is_empty());
    assert_eq!(pve.dry_runs.load(Ordering::SeqCst), 1);
    assert!(h.store.runs(Uuid::from_u128(1), 30).unwrap().is_empty());
    assert!(h.store.audit(&AuditQuery::default()).unwrap().is_empty());
    // The trigger state was not moved: the real event still fires.
    let report = handle(&mut h, &ups("on_battery")).await;
    assert_eq!(report.decisions[0].code, "engine.scheduled");
}

#[tokio::test(start_paused = true)]
async fn a_slow_host_never_delays_the_next_event_on_another_host() {
    let pve = pve();
    *pve.latency.lock().unwrap() = Duration::from_secs(3600);
    let sw = switch();
    let mut h = harness(&[&pve, &sw]);
    h.engine
        .add_policy(policy(
            1,
            ON_BATTERY,
            "pve-01",
            "vm",
            &range("101"),
            &vm("shutdown"),
        ))
        .unwrap();
    h.engine
        .add_policy(policy(
            2,
            DEPLOY,
            "sw-01",
            "poe-port",
            &range("1/1"),
            &poe("off"),
        ))
        .unwrap();
    let start = tokio::time::Instant::now();
    h.engine.handle_event(&ups("on_battery")).await.unwrap();
    h.engine.handle_event(&webhook("deploy")).await.unwrap();
    let first = h.engine.next_run().await.unwrap().unwrap();
    assert_eq!(first.policy_id, Uuid::from_u128(2));
    assert!(start.elapsed() < Duration::from_secs(1));
    let rest = h.engine.settle().await.unwrap();
    assert_eq!(rest[0].policy_id, Uuid::from_u128(1));
    assert_eq!(h.engine.pending_items(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_kill_switch_holds_scheduled_items_until_release() {
    let pve = pve();
    let mut h = harness(&[&pve]);
    h.engine
        .add_policy(policy(
            1,
            ON_BATTERY,
            "pve-01",
            "vm",
            &range("101"),
            &vm("shutdown"),
        ))
        .unwrap();
    h.engine.scheduler().pause().await.unwrap();
    let report = h.engine.handle_event(&ups("on_battery")).await.unwrap();
    assert_eq!(report.decisions[0].code, "engine.scheduled");
    minutes(1).await;
    assert!(pve.calls().is_empty());
    assert_eq!(h.engine.pending_items(), 1);
    let intents = h.store.open_intents().unwrap();
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0].targets, vec!["vm:101"]);
    h.engine.scheduler().resume().await.unwrap();
    let runs = h.engine.settle().await.unwrap();
    assert_eq!(runs[0].status, RunStatus::Ok);
    assert!(h.store.open_intents().unwrap().is_empty());
    assert_eq!(pve.status("vm:101").as_deref(), Some("stopped"));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Random policy sets over two hosts, random event streams: the fake
        /// drivers never see two executions on one host at once, and the
        /// ledger never grows past 30 per policy.
        #[test]
        fn no_host_ever_runs_two_actions_at_once(
            policies in proptest::collection::vec((0u8..3, 0i64..3, 101u32..105, any::<bool>()), 1..8),
            events in proptest::collection::vec(0u8..3, 1..12),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let pve = pve();
                let sw = switch();
                let mut h = harness(&[&pve, &sw]);
                let triggers = [ON_BATTERY, ON_MAINS, DEPLOY];
                for (i, (trigger, priority, vmid, on_switch)) in policies.iter().enumerate() {
                    let trigger = triggers[*trigger as usize];
                    let mut p = if *on_switch {
                        policy(i as u128 + 1, trigger, "sw-01", "poe-port", &range("1/1-1/3"), &poe("off"))
                    } else {
                        policy(i as u128 + 1, trigger, "pve-01", "vm", &range(&vmid.to_string()), &vm("reset"))
                    };
                    p.ir.priority = *priority;
                    p.ir.windows.suppression_s = 0;
                    p.ir.windows.idempotency_s = 0;
                    h.engine.add_policy(p).unwrap();
                }
                let all = [ups("on_battery"), ups("on_mains"), webhook("deploy")];
                for e in &events {
                    let mut event = all[*e as usize].clone();
                    event.correlation_id = Uuid::new_v4();
                    // No settle between events: items of several events overlap.
                    h.engine.handle_event(&event).await.unwrap();
                    tokio::time::advance(Duration::from_millis(50)).await;
                }
                h.engine.settle().await.unwrap();
                assert!(pve.max_running.load(Ordering::SeqCst) <= 1);
                assert!(sw.max_running.load(Ordering::SeqCst) <= 1);
                for i in 0..policies.len() {
                    let runs = h.store.runs(Uuid::from_u128(i as u128 + 1), 100).unwrap();
                    assert!(runs.len() <= LEDGER_RUNS_PER_POLICY);
                }
            });
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_whole_item_failure_makes_the_run_partial_or_failed() {
    let pve = pve();
    pve.erroring.lock().unwrap().insert("reset".into());
    let mut h = harness(&[&pve]);
    let two = format!("{}\n  - {}", vm("shutdown"), vm("reset"));
    h.engine
        .add_policy(policy(1, DEPLOY, "pve-01", "vm", &range("101"), &two))
        .unwrap();
    h.engine
        .add_policy(policy(
            2,
            DEPLOY,
            "pve-01",
            "vm",
            &range("104"),
            &vm("reset"),
        ))
        .unwrap();
    handle(&mut h, &webhook("deploy")).await;
    let run = &h.store.runs(Uuid::from_u128(1), 1).unwrap()[0];
    assert_eq!(run.results.len(), 2);
    assert!(run.results[0].ok);
    assert_eq!(
        run.results[1].code.as_deref(),
        Some("engine.execution_failed")
    );
    assert_eq!(run.status, RunStatus::Partial);
    assert_eq!(run.severity, Severity::Error);
    let run = &h.store.runs(Uuid::from_u128(2), 1).unwrap()[0];
    assert_eq!(run.status, RunStatus::Failed);
}

#[tokio::test(start_paused = true)]
async fn idempotency_runs_before_the_host_guard() {
    let sw = switch();
    let mut h = harness(&[&sw]);
    // Port 1/3 reports no status, so only the key can tell it was done.
    let mut p = policy(1, DEPLOY, "sw-01", "poe-port", &range("1/3"), &poe("off"));
    p.ir.windows.suppression_s = 0;
    h.engine.add_policy(p).unwrap();
    handle(&mut h, &webhook("deploy")).await;
    handle(&mut h, &host_state("sw-01", false)).await;
    minutes(1).await;
    let report = handle(&mut h, &webhook("deploy")).await;
    assert_eq!(codes(&report), vec![(1, SUPPRESSED_IDEMPOTENT.to_string())]);
    assert_eq!(report.decisions[0].severity, Severity::Info);
    // Only the first run is in the ledger: no error entry.
    let runs = h.store.runs(Uuid::from_u128(1), 30).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Ok);
    assert_eq!(sw.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn finished_items_are_applied_before_the_next_event_without_settling() {
    let sw = switch();
    let mut h = harness(&[&sw]);
    h.engine
        .add_policy(policy(
            1,
            ON_BATTERY,
            "sw-01",
            "poe-port",
            &range("1/1-1/2"),
            &poe("off"),
        ))
        .unwrap();
    h.engine
        .add_policy(policy(
            2,
            ON_MAINS,
            "sw-01",
            "poe-port",
            &range("1/1-1/2"),
            &poe("on"),
        ))
        .unwrap();
    let mut all = Vec::new();
    for event in ["on_battery", "on_mains", "on_battery"] {
        // No settle / next_run: only virtual time passes, so the items
        // finish and their reports wait on the channel.
        let report = h.engine.handle_event(&ups(event)).await.unwrap();
        all.extend(codes(&report));
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    assert_eq!(
        all,
        vec![
            (1, "engine.scheduled".to_string()),
            (2, "engine.scheduled".to_string()),
            (1, "engine.scheduled".to_string()),
        ]
    );
    h.engine.settle().await.unwrap();
    let states: Vec<Option<String>> = sw.calls().into_iter().map(|c| c.1).collect();
    assert_eq!(
        states,
        vec![Some("off".into()), Some("on".into()), Some("off".into())]
    );
}

#[tokio::test(start_paused = true)]
async fn an_item_cancelled_while_running_is_interrupted_and_never_rerun() {
    let pve = pve();
    let mut h = harness(&[&pve]);
    let mut p = policy(1, DEPLOY, "pve-01", "vm", &range("101"), &vm("shutdown"));
    p.ir.windows.suppression_s = 0;
    h.engine.add_policy(p).unwrap();
    h.engine.handle_event(&webhook("deploy")).await.unwrap();
    // The driver has been called (it takes 200 ms) when the cancel lands.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(pve.calls().len(), 1);
    assert_eq!(h.engine.scheduler().cancel_host("pve-01").await.unwrap(), 1);
    let runs = h.engine.settle().await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Interrupted);
    assert_eq!(runs[0].results[0].code.as_deref(), Some(INTERRUPTED));
    assert_eq!(runs[0].results[0].severity, Severity::Warn);
    assert!(h.store.open_intents().unwrap().is_empty());
    // The key stays: the next event does not run the shutdown again.
    minutes(1).await;
    let report = handle(&mut h, &webhook("deploy")).await;
    assert_eq!(codes(&report), vec![(1, SUPPRESSED_IDEMPOTENT.to_string())]);
    assert_eq!(pve.calls().len(), 1);
}
