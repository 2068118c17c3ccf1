//! Properties of the outage lifecycle (SPEC §1 level-based sources, §6
//! "Outage lifecycle", §11) over random streams of UPS edges, agent stops
//! (graceful or crash) and starts, operator changes and host reachability,
//! on a virtual clock over one SQLite file.
//!
//! The agent is driven as the service loop drives it: events handled as
//! they come, item reports recorded as they arrive, countdowns and retries
//! fired at their deadlines. A stop drops the [`Engine`] (a graceful one
//! after its items finished, a crash at once: running device tasks finish
//! on the host, nothing records them); a start is a new engine over the
//! same file followed by a level reading of the UPS as it is then
//! (`subjects::level_event`). Every case ends with the agent up, the host
//! reachable, the mains back and time for the inverses' holds and retries.

mod support;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::engine::event::Event;
use agent::engine::runner::{Clock, Engine, EngineConfig, Policy};
use agent::engine::store::EngineStore;
use agent::engine::subjects::level_event;
use agent::spec::UpsState;
use agent::store::SqliteStore;
use chrono::{DateTime, TimeDelta, Utc};
use drivers::breaker::{BreakerConfig, Breakers};
use proptest::prelude::*;
use support::{host_state, policy_at, range, ups, vm, Call, FakeDriver};
use tokio::time::Instant;
use uuid::Uuid;

const UPS: &str = "ups1@nas.lan:3493";
const HOST: &str = "pve-01";

/// The VMs of the host and how they start: 103 is off before any outage.
const VMS: [(&str, &str); 4] = [
    ("vm:101", "running"),
    ("vm:102", "running"),
    ("vm:103", "stopped"),
    ("vm:104", "running"),
];

/// The verbs that power a VM off.
const POWER_OFF: [&str; 2] = ["shutdown", "stop"];

/// The forward policies (each with an inverse): the outage shutdown and
/// the low-battery stop.
const FORWARD: u128 = 1;
const LOW: u128 = 3;

/// What the UPS really is in, which a running agent is told at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Power {
    on_battery: bool,
    low: bool,
}

impl Power {
    fn states(self) -> Vec<UpsState> {
        match (self.on_battery, self.low) {
            (false, _) => vec![UpsState::OnMains],
            (true, false) => vec![UpsState::OnBattery],
            (true, true) => vec![UpsState::OnBattery, UpsState::LowBattery],
        }
    }
}

/// What happens after a step's gap.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// The mains fail (nothing when already on battery).
    PowerFails,
    /// The mains return (nothing when already on mains).
    MainsReturn,
    /// The battery runs low (only on battery).
    LowBattery,
    /// The agent stops: after its running items finished, or at once.
    Stop { crash: bool },
    /// The agent starts (nothing when it runs); the UPS source's first
    /// reading comes `poll_s` later.
    Start { poll_s: u64 },
    /// Someone starts or stops a VM by hand.
    Operator { vm: usize, running: bool },
    /// The host becomes reachable or not: its calls fail meanwhile.
    Host { reachable: bool },
}

#[derive(Debug, Clone, Copy)]
struct Step {
    gap_s: u64,
    action: Action,
}

#[derive(Debug, Clone)]
struct Scenario {
    /// The forward shutdown's `for` (0: none).
    forward_hold_s: u64,
    /// The inverses' `for` on mains return (0: none).
    inverse_hold_s: u64,
    /// With the low-battery stop and its inverse.
    low_battery_policy: bool,
    /// How long each device task takes, in turn.
    latencies_ms: Vec<u64>,
    steps: Vec<Step>,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => Just(Action::PowerFails),
        4 => Just(Action::MainsReturn),
        1 => Just(Action::LowBattery),
        2 => any::<bool>().prop_map(|crash| Action::Stop { crash }),
        2 => prop::sample::select(vec![0u64, 2]).prop_map(|poll_s| Action::Start { poll_s }),
        1 => (0..VMS.len(), any::<bool>())
            .prop_map(|(vm, running)| Action::Operator { vm, running }),
        1 => any::<bool>().prop_map(|reachable| Action::Host { reachable }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop::sample::select(vec![0u64, 1, 2, 5, 9, 15, 25, 70]),
        action(),
    )
        .prop_map(|(gap_s, action)| Step { gap_s, action })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::sample::select(vec![0u64, 10, 20]),
        prop::sample::select(vec![0u64, 15]),
        any::<bool>(),
        prop::collection::vec(prop::sample::select(vec![200u64, 3_000, 8_000]), 1..4),
        prop::collection::vec(step(), 1..24),
    )
        .prop_map(
            |(forward_hold_s, inverse_hold_s, low_battery_policy, latencies_ms, steps)| Scenario {
                forward_hold_s,
                inverse_hold_s,
                low_battery_policy,
                latencies_ms,
                steps,
            },
        )
}

thread_local! {
    /// Compiled policies by (id, hold): compiling is the slow part of a case.
    static COMPILED: RefCell<HashMap<(u128, u64), Policy>> = RefCell::new(HashMap::new());
}

fn hold(hold_s: u64) -> String {
    if hold_s == 0 {
        String::new()
    } else {
        format!(", for: {hold_s}s")
    }
}

fn compiled(id: u128, hold_s: u64) -> Policy {
    COMPILED.with(|cache| {
        cache
            .borrow_mut()
            .entry((id, hold_s))
            .or_insert_with(|| {
                let on_battery =
                    format!("{{ type: ups.state, equals: on_battery{} }}", hold(hold_s));
                let on_mains = format!("{{ type: ups.state, equals: on_mains{} }}", hold(hold_s));
                let ledger =
                    |of: u128| format!("{{ mode: ledger, value: \"{}\" }}", Uuid::from_u128(of));
                match id {
                    FORWARD => policy_at(
                        id,
                        10,
                        &on_battery,
                        HOST,
                        "vm",
                        &range("101-103"),
                        &vm("shutdown"),
                    ),
                    2 => policy_at(
                        id,
                        20,
                        &on_mains,
                        HOST,
                        "vm",
                        &ledger(FORWARD),
                        &vm("start"),
                    ),
                    LOW => policy_at(
                        id,
                        5,
                        "{ type: ups.state, equals: low_battery }",
                        HOST,
                        "vm",
                        &range("101-104"),
                        &vm("stop"),
                    ),
                    4 => policy_at(id, 21, &on_mains, HOST, "vm", &ledger(LOW), &vm("start")),
                    _ => unreachable!("no policy {id}"),
                }
            })
            .clone()
    })
}

/// The scenario's policies: the forward shutdown and its inverse, and the
/// low-battery stop with its inverse.
fn policies(s: &Scenario, limits: Limits) -> Vec<Policy> {
    let inverse = |id| {
        let mut p = compiled(id, s.inverse_hold_s);
        if limits.inverses_windowless {
            p.ir.windows.suppression_s = 0;
            p.ir.windows.idempotency_s = 0;
        }
        p
    };
    let mut out = vec![compiled(FORWARD, s.forward_hold_s), inverse(2)];
    if s.low_battery_policy {
        out.push(compiled(LOW, 0));
        out.push(inverse(4));
    }
    out
}

/// Who last changed a VM's status, as seen between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Changer {
    Nobody,
    /// The agent (or a device task it started) powered it off.
    AgentOff,
    /// The agent started it.
    AgentOn,
    Operator,
}

/// What a scenario left behind.
struct Outcome {
    /// Every execute with the UPS's true state when it started.
    calls: Vec<(Call, Power)>,
    /// Per VM: its final status and who changed it last.
    vms: Vec<(String, Option<String>, Changer)>,
    /// The forward policies' restore sets, by policy, as the store keeps them.
    restore_sets: Vec<(u128, Vec<String>)>,
}

/// The installation the agent runs in: a data dir, the host and the clock.
struct Site {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    pve: Arc<FakeDriver>,
    clock: Clock,
    t0: Instant,
    base: DateTime<Utc>,
    power: Arc<Mutex<Power>>,
    /// The UPS's true state at each execute's start, in call order.
    seen: Arc<Mutex<Vec<Power>>>,
}

impl Site {
    fn new(latencies_ms: &[u64]) -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hazel.db");
        let t0 = Instant::now();
        let base = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let targets: Vec<(&str, Option<&str>)> = VMS
            .iter()
            .map(|(id, status)| (*id, Some(*status)))
            .collect();
        let pve = FakeDriver::new(HOST, "proxmox.ve", &targets);
        pve.latencies
            .lock()
            .unwrap()
            .extend(latencies_ms.iter().map(|ms| Duration::from_millis(*ms)));
        let power = Arc::new(Mutex::new(Power {
            on_battery: false,
            low: false,
        }));
        let seen = Arc::new(Mutex::new(Vec::new()));
        // The probe runs at the start of every execute, right before the
        // call is recorded: the i-th state belongs to the i-th call.
        let (p, s) = (power.clone(), seen.clone());
        *pve.probe.lock().unwrap() = Some(Box::new(move || {
            let now = *p.lock().unwrap();
            s.lock().unwrap().push(now);
        }));
        Site {
            _dir: dir,
            path,
            pve,
            clock: Arc::new(move || base + TimeDelta::from_std(t0.elapsed()).unwrap()),
            t0,
            base,
            power,
            seen,
        }
    }

    fn store(&self) -> Arc<dyn EngineStore> {
        Arc::new(SqliteStore::open(&self.path).expect("open the store"))
    }

    fn power(&self) -> Power {
        *self.power.lock().unwrap()
    }

    fn set_power(&self, power: Power) {
        *self.power.lock().unwrap() = power;
    }

    /// A start of the agent: a new engine over the file, the host's
    /// reachability as the inventory reads it, and `poll_s` later (the
    /// agent's loop running meanwhile) the UPS source's first reading.
    async fn start(&self, policies: &[Policy], reachable: bool, poll_s: u64) -> Option<Engine> {
        let mut engine = support::engine(
            self.store(),
            &[&self.pve],
            Arc::new(Breakers::new(BreakerConfig::default())),
            EngineConfig {
                clock: self.clock.clone(),
                ..EngineConfig::default()
            },
        );
        for policy in policies {
            engine.add_policy(policy.clone()).unwrap();
        }
        engine.start().await.unwrap();
        if !reachable {
            handle(&mut engine, &host_state(HOST, false)).await;
        }
        let mut engine = Some(engine);
        self.run_for(&mut engine, poll_s).await;
        tell(&mut engine, &level_event(UPS, &self.power().states())).await;
        engine
    }

    /// The tokio instant of an engine deadline.
    fn instant(&self, at: DateTime<Utc>) -> Instant {
        let since = (at - self.base).to_std().unwrap_or(Duration::ZERO);
        self.t0 + since
    }

    /// Runs the agent's loop for `secs` of virtual time: reports recorded
    /// as they arrive, countdowns and retries fired when due. A stopped
    /// agent only lets time pass (device tasks it started still finish).
    async fn run_for(&self, engine: &mut Option<Engine>, secs: u64) {
        let until = Instant::now() + Duration::from_secs(secs);
        let Some(engine) = engine.as_mut() else {
            tokio::time::sleep_until(until).await;
            return;
        };
        loop {
            if engine
                .next_deadline()
                .is_some_and(|at| at <= (self.clock)())
            {
                engine.fire_due((self.clock)()).await.unwrap();
                continue;
            }
            if Instant::now() >= until {
                return;
            }
            let wake = engine
                .next_deadline()
                .map_or(until, |at| self.instant(at).min(until));
            let busy = engine.pending_items() > 0;
            tokio::select! {
                biased;
                run = engine.next_run(), if busy => {
                    run.unwrap();
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn calls(&self) -> Vec<(Call, Power)> {
        let calls = self.pve.calls();
        let seen = self.seen.lock().unwrap().clone();
        assert_eq!(calls.len(), seen.len(), "one probe per execute");
        calls.into_iter().zip(seen).collect()
    }
}

async fn handle(engine: &mut Engine, event: &Event) {
    engine.handle_event(event).await.unwrap();
}

/// Sends `event` to the agent when it runs.
async fn tell(engine: &mut Option<Engine>, event: &Event) {
    if let Some(engine) = engine.as_mut() {
        handle(engine, event).await;
    }
}

/// How long after the host is back its waiting retries have all fired
/// (the longest backoff is 60 s).
const RETRIES_DONE: Duration = Duration::from_secs(65);

/// Known limits a scenario steers around, each on its own so a test can
/// show what happens without it. None remains steered in [`AVOID_ALL`]:
/// to see a minimal failing case of a limit found later, add a field that
/// steers around it, set it in `AVOID_ALL` and run this file without it.
///
/// No longer fields:
/// - the mains returned only once the agent's queued and running items
///   finished. Fixed: a power-off item still queued behind another on the
///   host (the low-battery stop behind the outage shutdown) when the mains
///   return is cancelled before it starts (`engine.trigger_ended`,
///   `runner/outage.rs`).
/// - `reconciled_once`: a start waited until the device calls a crashed
///   agent started had finished, and nobody changed a VM while the agent
///   was down. Fixed: a call that started and reported no task (the fake's
///   calls never do) and whose targets read unchanged at start is read
///   again one wait later; a change found then joins the restore set, and
///   an inverse that already ran restores it (`runner/inflight.rs`). Its
///   minimal case was `PowerFails`, a crash at once with a 3 s call, the
///   agent started again at once.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Not steered any more (fixed: a waiting retry is kept in the store
    /// and re-planned at start, `runner/retry.rs`). The agent is not
    /// stopped while a retry may be waiting (the host unreachable or back
    /// less than [`RETRIES_DONE`] ago).
    keep_retries: bool,
    /// Not steered any more (fixed: a `ledger`-selector policy is not held
    /// by its window while its forward's restore set has targets, and
    /// "undoes" is symmetric). The inverses have no suppression or
    /// idempotency window. Before the fix, with them,
    /// an inverse is held back at a mains return although its forward
    /// policy's restore set is not empty: its suppression is cleared only
    /// when its own restore set empties, which an inverse run that changed
    /// nothing (host unreachable, then the trigger ended), an operator
    /// stopping a VM it started, or a `stop` never brings about; and a
    /// `stop` clears no `start` key (the manifest says `stop`'s inverse is
    /// `start` but `start`'s is `shutdown`, and "undoes" reads one way), so
    /// the low-battery inverse's `start` after an earlier restore is
    /// `engine.suppressed_idempotent`.
    inverses_windowless: bool,
}

const AVOID_ALL: Limits = Limits {
    keep_retries: false,
    inverses_windowless: false,
};

/// Runs `s` to the end on a fresh paused runtime, steering around `limits`.
fn run(s: &Scenario, limits: Limits) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::pause();
        let site = Site::new(&s.latencies_ms);
        let policies = policies(s, limits);
        let mut reachable = true;
        let mut back_at: Option<Instant> = None;
        let mut engine = site.start(&policies, reachable, 0).await;
        // Who changed each VM last; the fake's status when last looked at.
        let mut changer = vec![Changer::Nobody; VMS.len()];
        let mut last: Vec<Option<String>> = VMS.iter().map(|(id, _)| site.pve.status(id)).collect();
        let observe = |changer: &mut Vec<Changer>, last: &mut Vec<Option<String>>| {
            for (i, (id, _)) in VMS.iter().enumerate() {
                let now = site.pve.status(id);
                if now != last[i] {
                    changer[i] = if now.as_deref() == Some("running") {
                        Changer::AgentOn
                    } else {
                        Changer::AgentOff
                    };
                    last[i] = now;
                }
            }
        };
        for step in &s.steps {
            site.run_for(&mut engine, step.gap_s).await;
            observe(&mut changer, &mut last);
            let power = site.power();
            match step.action {
                Action::PowerFails if !power.on_battery => {
                    site.set_power(Power {
                        on_battery: true,
                        low: false,
                    });
                    tell(&mut engine, &ups("on_battery")).await;
                }
                Action::MainsReturn if power.on_battery => {
                    site.set_power(Power {
                        on_battery: false,
                        low: false,
                    });
                    tell(&mut engine, &ups("on_mains")).await;
                }
                Action::LowBattery if power.on_battery && !power.low => {
                    site.set_power(Power {
                        on_battery: true,
                        low: true,
                    });
                    tell(&mut engine, &ups("low_battery")).await;
                }
                Action::Stop { .. }
                    if limits.keep_retries
                        && (!reachable
                            || back_at.is_some_and(|at| at.elapsed() < RETRIES_DONE)) => {}
                Action::Stop { crash } => {
                    if let Some(mut stopping) = engine.take() {
                        if !crash {
                            stopping.settle().await.unwrap();
                        }
                    }
                }
                Action::Start { poll_s } if engine.is_none() => {
                    engine = site.start(&policies, reachable, poll_s).await;
                }
                Action::Operator { vm, running } => {
                    let status = if running { "running" } else { "stopped" };
                    site.pve.set_status(VMS[vm].0, status);
                    if last[vm].as_deref() != Some(status) {
                        changer[vm] = Changer::Operator;
                        last[vm] = Some(status.to_string());
                    }
                }
                Action::Host { reachable: now } if now != reachable => {
                    reachable = now;
                    if reachable {
                        back_at = Some(Instant::now());
                    }
                    set_reachable(&site.pve, reachable);
                    tell(&mut engine, &host_state(HOST, reachable)).await;
                }
                _ => {}
            }
        }
        // The end of the story: the agent up, the host reachable, the
        // mains back, and time for the inverses' holds and their retries.
        if engine.is_none() {
            engine = site.start(&policies, reachable, 2).await;
        }
        if !reachable {
            set_reachable(&site.pve, true);
            tell(&mut engine, &host_state(HOST, true)).await;
        }
        if site.power().on_battery {
            site.set_power(Power {
                on_battery: false,
                low: false,
            });
            tell(&mut engine, &ups("on_mains")).await;
        }
        site.run_for(&mut engine, 600).await;
        engine.as_mut().unwrap().settle().await.unwrap();
        observe(&mut changer, &mut last);
        let store = site.store();
        let mut restore_sets = vec![(FORWARD, Vec::new())];
        if s.low_battery_policy {
            restore_sets.push((LOW, Vec::new()));
        }
        for (id, set) in &mut restore_sets {
            *set = store
                .restore_set(Uuid::from_u128(*id))
                .unwrap()
                .into_iter()
                .map(|e| e.target)
                .collect();
        }
        Outcome {
            calls: site.calls(),
            vms: VMS
                .iter()
                .zip(changer)
                .map(|((id, _), c)| (id.to_string(), site.pve.status(id), c))
                .collect(),
            restore_sets,
        }
    })
}

/// An unreachable host fails every call (and the engine is told so).
fn set_reachable(pve: &FakeDriver, reachable: bool) {
    let mut erroring = pve.erroring.lock().unwrap();
    for verb in ["shutdown", "stop", "start"] {
        if reachable {
            erroring.remove(verb);
        } else {
            erroring.insert(verb.to_string());
        }
    }
}

/// Property (a): every power-off call started while the UPS was on battery.
fn check_no_shutdown_on_mains(out: &Outcome) -> Result<(), TestCaseError> {
    for (call, power) in &out.calls {
        if POWER_OFF.contains(&call.verb.as_str()) {
            prop_assert!(
                power.on_battery,
                "{} {:?} started on mains at {:?}",
                call.verb,
                call.targets,
                call.start
            );
        }
    }
    Ok(())
}

/// Property (b): every restore set is empty, and no VM was left off by the
/// agent (the last change to it an agent power-off nobody changed since).
fn check_restored(out: &Outcome) -> Result<(), TestCaseError> {
    for (policy, set) in &out.restore_sets {
        prop_assert!(
            set.is_empty(),
            "the restore set of policy {} is {:?}",
            policy,
            set
        );
    }
    for (id, status, changer) in &out.vms {
        prop_assert!(
            *changer != Changer::AgentOff,
            "{} is {:?}: powered off by the agent and never restored",
            id,
            status
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// SPEC §6 "Outage lifecycle": a shutdown never runs because of a state
    /// that has already ended. Every power-off call starts while the UPS
    /// is really on battery, across restarts, crashes and holds.
    #[test]
    fn no_shutdown_ever_starts_while_the_ups_is_on_mains(s in scenario()) {
        check_no_shutdown_on_mains(&run(&s, AVOID_ALL))?;
    }

    /// SPEC §6 "Restore set", §11: after the last mains return, the
    /// inverses' hold and their retries, every restore set is empty and
    /// each VM the agent powered off that nobody touched since runs again.
    #[test]
    fn after_the_last_mains_return_every_vm_the_agent_powered_off_runs_again(s in scenario()) {
        check_restored(&run(&s, AVOID_ALL))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]
}
