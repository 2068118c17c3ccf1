//! Properties of the engine (SPEC §6) over random policy sets and random
//! event streams: the real [`Engine`] with the in-memory store, the real
//! scheduler and the scriptable fake drivers of `support` (random
//! latencies, failing targets, failing verbs), on a paused tokio clock.
//!
//! Every case builds its own current-thread runtime and pauses its clock,
//! runs one scenario to the end and checks one property on what the fakes
//! recorded (start and end of every execute) and what the engine reported.

mod support;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agent::engine::event::Event;
use agent::engine::runner::{tokio_clock, EngineConfig, EventReport, Policy};
use agent::engine::scheduler::SchedulerConfig;
use agent::engine::store::{EngineStore, MemoryStore, LEDGER_RUNS_PER_POLICY};
use drivers::breaker::{BreakerConfig, Breakers};
use proptest::prelude::*;
use support::{
    host_state, max_overlap, poe, policy, ups, vm, webhook, Call, Concurrency, FakeDriver,
    ON_BATTERY, ON_MAINS,
};
use uuid::Uuid;

/// The hosts of every scenario: id, plugin, target type, targets.
struct HostDef {
    id: &'static str,
    plugin: &'static str,
    ty: &'static str,
    targets: &'static [(&'static str, Option<&'static str>)],
}

const HOSTS: [HostDef; 4] = [
    HostDef {
        id: "pve-01",
        plugin: "proxmox.ve",
        ty: "vm",
        targets: &[
            ("101", Some("running")),
            ("102", Some("running")),
            ("103", Some("stopped")),
            ("104", Some("running")),
        ],
    },
    HostDef {
        id: "pve-02",
        plugin: "proxmox.ve",
        ty: "vm",
        targets: &[
            ("201", Some("running")),
            ("202", Some("stopped")),
            ("203", Some("running")),
        ],
    },
    HostDef {
        id: "sw-01",
        plugin: "aruba.aoss",
        ty: "poe-port",
        targets: &[("1/1", Some("on")), ("1/2", Some("off")), ("1/3", None)],
    },
    HostDef {
        id: "sw-02",
        plugin: "aruba.aoss",
        ty: "poe-port",
        targets: &[("1/A1", Some("on")), ("1/A2", Some("on"))],
    },
];

/// The webhooks events call and triggers wait for.
const HOOKS: [&str; 3] = ["deploy", "backup", "tick"];

/// The triggers a random policy picks from.
const TRIGGERS: [&str; 5] = [
    ON_BATTERY,
    ON_MAINS,
    "{ type: webhook.custom, name: deploy }",
    "{ type: webhook.custom, name: backup }",
    "{ type: webhook.custom, name: tick }",
];

/// The heartbeat of the ledger property: fires on every `tick`.
const TICK: usize = 4;

/// Three actions per target type; the first never finds its target
/// already in the desired state, so it always reaches the driver.
fn action(ty: &str, index: usize) -> String {
    match ty {
        "vm" => vm(["reset", "shutdown", "start"][index]),
        _ => poe(["cycle", "off", "on"][index]),
    }
}

/// The verb of [`action`], which `erroring` scripts (every PoE action is
/// a `set`).
fn verb(ty: &str, index: usize) -> &'static str {
    match ty {
        "vm" => ["reset", "shutdown", "start"][index],
        _ => "set",
    }
}

/// One random policy.
#[derive(Debug, Clone)]
struct PolicyCase {
    /// High half of the UUID (the low half is the index, so ids differ).
    id_hi: u64,
    priority: i64,
    trigger: usize,
    host: usize,
    action: usize,
    /// Which of the host's targets the selector lists (bit i: target i).
    targets: u8,
    stop_on_match: bool,
    suppression_s: u64,
    idempotency_s: u64,
}

/// How one host's fake behaves.
#[derive(Debug, Clone)]
struct HostScript {
    latencies_ms: Vec<u64>,
    /// Targets whose execute fails (bit i: target i).
    failing: u8,
    /// An action index whose verb fails the whole item.
    erroring: Option<usize>,
}

/// One event of the stream.
#[derive(Debug, Clone, Copy)]
enum EventCase {
    Ups { on_battery: bool },
    Hook(usize),
    Host { host: usize, reachable: bool },
}

impl EventCase {
    fn event(self) -> Event {
        match self {
            EventCase::Ups { on_battery: true } => ups("on_battery"),
            EventCase::Ups { on_battery: false } => ups("on_mains"),
            EventCase::Hook(i) => webhook(HOOKS[i]),
            EventCase::Host { host, reachable } => host_state(HOSTS[host].id, reachable),
        }
    }

    /// The trigger index of the policies this event fires (shortlisted as
    /// `Fire`, so each gets a decision until a `stop_on_match`).
    fn fires(self) -> Option<usize> {
        match self {
            EventCase::Ups { on_battery: true } => Some(0),
            EventCase::Ups { on_battery: false } => Some(1),
            EventCase::Hook(i) => Some(2 + i),
            EventCase::Host { .. } => None,
        }
    }
}

/// An event after `gap_ms` of virtual time; `settle` waits for every
/// queued item after it (otherwise items of several events overlap).
#[derive(Debug, Clone)]
struct Step {
    event: EventCase,
    gap_ms: u64,
    settle: bool,
}

#[derive(Debug, Clone)]
struct Scenario {
    /// The scheduler's global cap.
    cap: usize,
    policies: Vec<PolicyCase>,
    hosts: Vec<HostScript>,
    steps: Vec<Step>,
}

/// What a scenario left behind.
struct Outcome {
    /// Each policy's id and case, in the order added.
    policies: Vec<(Uuid, PolicyCase)>,
    reports: Vec<(EventCase, EventReport)>,
    /// Every execute of every host.
    calls: Vec<Call>,
    /// The fakes' own concurrency counters: per host, and all hosts.
    host_max: Vec<usize>,
    global_max: usize,
    /// The longest ledger of any policy, checked after every event.
    longest_ledger: usize,
    /// Runs the engine opened per policy (decisions with a run id).
    runs_opened: HashMap<Uuid, usize>,
    /// Each policy's ledger length at the end.
    ledger_len: HashMap<Uuid, usize>,
}

fn policy_case() -> impl Strategy<Value = PolicyCase> {
    (
        any::<u64>(),
        -2i64..3,
        0..TRIGGERS.len(),
        0..HOSTS.len(),
        0usize..3,
        1u8..16,
        prop::bool::weighted(0.2),
        prop::sample::select(vec![0u64, 0, 0, 1, 30, 300]),
        prop::sample::select(vec![0u64, 0, 0, 1, 30, 600]),
    )
        .prop_map(
            |(id_hi, priority, trigger, host, action, targets, stop, sup, idem)| PolicyCase {
                id_hi,
                priority,
                trigger,
                host,
                action,
                targets,
                stop_on_match: stop,
                suppression_s: sup,
                idempotency_s: idem,
            },
        )
}

fn host_script() -> impl Strategy<Value = HostScript> {
    (
        prop::collection::vec(
            prop::sample::select(vec![0u64, 10, 200, 900, 2_500, 6_000]),
            1..6,
        ),
        prop::sample::select(vec![0u8, 0, 0, 1, 2, 4]),
        prop::option::weighted(0.2, 0usize..3),
    )
        .prop_map(|(latencies_ms, failing, erroring)| HostScript {
            latencies_ms,
            failing,
            erroring,
        })
}

fn event_case() -> impl Strategy<Value = EventCase> {
    prop_oneof![
        3 => any::<bool>().prop_map(|on_battery| EventCase::Ups { on_battery }),
        5 => (0..HOOKS.len()).prop_map(EventCase::Hook),
        1 => (0..HOSTS.len(), prop::bool::weighted(0.6))
            .prop_map(|(host, reachable)| EventCase::Host { host, reachable }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        event_case(),
        prop::sample::select(vec![0u64, 0, 5, 100, 700, 3_000, 20_000]),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(event, gap_ms, settle)| Step {
            event,
            gap_ms,
            settle,
        })
}

fn scenario(
    caps: std::ops::RangeInclusive<usize>,
    policies: std::ops::Range<usize>,
    steps: std::ops::Range<usize>,
) -> impl Strategy<Value = Scenario> {
    (
        caps,
        prop::collection::vec(policy_case(), policies),
        prop::collection::vec(host_script(), HOSTS.len()),
        prop::collection::vec(step(), steps),
    )
        .prop_map(|(cap, policies, hosts, steps)| Scenario {
            cap,
            policies,
            hosts,
            steps,
        })
}

/// A scenario for the ledger: a heartbeat policy (lowest priority number,
/// so always decided, zero windows, an action that always runs) fires on
/// each of 31 to 40 `tick`s, a millisecond or more apart, with random
/// events between them; random policies may listen to `tick` too.
fn ledger_scenario() -> impl Strategy<Value = Scenario> {
    (
        scenario(1..=4, 1..6, 0..1),
        0..HOSTS.len(),
        prop::collection::vec(
            (
                prop::sample::select(vec![1u64, 5, 300, 2_000]),
                prop::collection::vec(step(), 0..2),
            ),
            31..41,
        ),
    )
        .prop_map(|(mut s, host, ticks)| {
            s.policies.insert(
                0,
                PolicyCase {
                    id_hi: u64::MAX,
                    priority: -100,
                    trigger: TICK,
                    host,
                    action: 0,
                    targets: 1,
                    stop_on_match: false,
                    suppression_s: 0,
                    idempotency_s: 0,
                },
            );
            for (gap_ms, others) in ticks {
                s.steps.push(Step {
                    event: EventCase::Hook(TICK - 2),
                    gap_ms,
                    settle: false,
                });
                s.steps.extend(others);
            }
            s
        })
}

thread_local! {
    /// Compiled policies by their YAML parts: compiling is the slow part of
    /// a case, and the parts repeat across cases.
    static COMPILED: RefCell<HashMap<(usize, usize, usize, u8), Policy>> =
        RefCell::new(HashMap::new());
}

/// The host's target ids (without type) a mask selects; never empty.
fn selected(host: &HostDef, mask: u8) -> Vec<&'static str> {
    let ids: Vec<&str> = host
        .targets
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, (id, _))| *id)
        .collect();
    if ids.is_empty() {
        vec![host.targets[0].0]
    } else {
        ids
    }
}

fn build(index: usize, case: &PolicyCase) -> Policy {
    let key = (case.trigger, case.host, case.action, case.targets);
    let mut p = COMPILED.with(|cache| {
        cache
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| {
                let host = &HOSTS[case.host];
                let ids = selected(host, case.targets).join(",");
                policy(
                    0,
                    TRIGGERS[case.trigger],
                    host.id,
                    host.ty,
                    &format!("{{ mode: list, value: \"{ids}\" }}"),
                    &action(host.ty, case.action),
                )
            })
            .clone()
    });
    p.id = Uuid::from_u128((u128::from(case.id_hi) << 64) | index as u128);
    p.ir.priority = case.priority;
    p.ir.stop_on_match = case.stop_on_match;
    p.ir.windows.suppression_s = case.suppression_s;
    p.ir.windows.idempotency_s = case.idempotency_s;
    p
}

/// Runs `s` to the end on a fresh paused runtime.
fn run(s: &Scenario) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::pause();
        let global = Arc::new(Concurrency::default());
        let fakes: Vec<Arc<FakeDriver>> = HOSTS
            .iter()
            .zip(&s.hosts)
            .map(|(host, script)| {
                let targets: Vec<(String, Option<&str>)> = host
                    .targets
                    .iter()
                    .map(|(id, status)| (format!("{}:{id}", host.ty), *status))
                    .collect();
                let targets: Vec<(&str, Option<&str>)> =
                    targets.iter().map(|(id, s)| (id.as_str(), *s)).collect();
                let fake = FakeDriver::sharing(host.id, host.plugin, &targets, &global);
                fake.latencies.lock().unwrap().extend(
                    script
                        .latencies_ms
                        .iter()
                        .map(|ms| Duration::from_millis(*ms)),
                );
                fake.failing.lock().unwrap().extend(
                    selected(host, script.failing)
                        .into_iter()
                        .filter(|_| script.failing != 0)
                        .map(|id| format!("{}:{id}", host.ty)),
                );
                if let Some(i) = script.erroring {
                    fake.erroring
                        .lock()
                        .unwrap()
                        .insert(verb(host.ty, i).to_string());
                }
                fake
            })
            .collect();
        let store = Arc::new(MemoryStore::default());
        let mut engine = support::engine(
            store.clone(),
            &fakes.iter().collect::<Vec<_>>(),
            Arc::new(Breakers::new(BreakerConfig::default())),
            EngineConfig {
                scheduler: SchedulerConfig {
                    max_concurrent: s.cap,
                    semaphore: None,
                },
                clock: tokio_clock(),
                ..EngineConfig::default()
            },
        );
        let mut policies = Vec::new();
        for (i, case) in s.policies.iter().enumerate() {
            let p = build(i, case);
            policies.push((p.id, case.clone()));
            engine.add_policy(p).unwrap();
        }
        let ledger_max = |store: &MemoryStore| {
            policies
                .iter()
                .map(|(id, _)| store.runs(*id, 1_000).unwrap().len())
                .max()
                .unwrap_or(0)
        };
        let mut longest_ledger = 0;
        let mut reports = Vec::new();
        for step in &s.steps {
            tokio::time::advance(Duration::from_millis(step.gap_ms)).await;
            let report = engine.handle_event(&step.event.event()).await.unwrap();
            reports.push((step.event, report));
            if step.settle {
                engine.settle().await.unwrap();
            }
            longest_ledger = longest_ledger.max(ledger_max(&store));
        }
        engine.settle().await.unwrap();
        longest_ledger = longest_ledger.max(ledger_max(&store));
        // A run still retrying while its trigger holds (SPEC §6 "Outage
        // lifecycle") is not in the ledger yet.
        let still_open = engine.open_runs();
        let mut runs_opened = HashMap::new();
        for decision in reports.iter().flat_map(|(_, r)| &r.decisions) {
            if decision.run_id.is_some_and(|id| !still_open.contains(&id)) {
                *runs_opened.entry(decision.policy_id).or_insert(0) += 1;
            }
        }
        let ledger_len = policies
            .iter()
            .map(|(id, _)| (*id, store.runs(*id, 1_000).unwrap().len()))
            .collect();
        Outcome {
            policies,
            reports,
            calls: fakes.iter().flat_map(|f| f.calls()).collect(),
            host_max: fakes.iter().map(|f| f.concurrency.max()).collect(),
            global_max: global.max(),
            longest_ledger,
            runs_opened,
            ledger_len,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Per-host single flight (SPEC §6 step 8): on every host, each
    /// execute ends before the next one starts, from the intervals the
    /// fake recorded; the cap equals the number of hosts, so only the host
    /// queues hold items back.
    #[test]
    fn no_host_ever_runs_two_actions_at_once(s in scenario(4..=4, 1..10, 10..50)) {
        let out = run(&s);
        for host in &HOSTS {
            let mut calls: Vec<&Call> = out.calls.iter().filter(|c| c.host == host.id).collect();
            calls.sort_by_key(|c| c.start);
            for pair in calls.windows(2) {
                let end = pair[0].end.expect("every execute ended after settle");
                prop_assert!(
                    pair[1].start >= end,
                    "{}: {:?} started before {:?} ended", host.id, pair[1], pair[0]
                );
            }
        }
        prop_assert!(out.host_max.iter().all(|&m| m <= 1), "{:?}", out.host_max);
    }

    /// The global cap (SPEC §6 step 8): never more executes at once, all
    /// hosts together, than the configured cap, small enough (1 to 4, four
    /// hosts) to hold items back.
    #[test]
    fn never_more_items_run_at_once_than_the_global_cap(s in scenario(1..=4, 2..10, 10..50)) {
        let out = run(&s);
        let overlap = max_overlap(&out.calls);
        prop_assert!(overlap <= s.cap, "{overlap} executes at once, cap {}", s.cap);
        prop_assert!(out.global_max <= s.cap, "{} at once, cap {}", out.global_max, s.cap);
    }

    /// The ledger keeps 30 runs per policy (SPEC §6 step 9): checked after
    /// every event, while a heartbeat policy opens more than 30 runs.
    #[test]
    fn the_ledger_never_holds_more_than_30_runs_of_a_policy(s in ledger_scenario()) {
        let out = run(&s);
        prop_assert!(out.longest_ledger <= LEDGER_RUNS_PER_POLICY);
        let heartbeat = out.policies[0].0;
        let opened = out.runs_opened.get(&heartbeat).copied().unwrap_or(0);
        prop_assert!(opened > LEDGER_RUNS_PER_POLICY, "the heartbeat opened {opened} runs");
        prop_assert_eq!(out.ledger_len[&heartbeat], LEDGER_RUNS_PER_POLICY);
        for (id, len) in &out.ledger_len {
            let opened = out.runs_opened.get(id).copied().unwrap_or(0);
            prop_assert_eq!(*len, opened.min(LEDGER_RUNS_PER_POLICY), "policy {}", id);
        }
    }

    /// SPEC §6 steps 2 and 10: an event's decisions are exactly the
    /// policies its trigger fires, by priority then UUID ascending, cut
    /// right after the first one with `stop_on_match` that scheduled an
    /// action.
    #[test]
    fn decisions_follow_priority_then_uuid_and_stop_on_match(s in scenario(1..=4, 1..10, 5..40)) {
        let out = run(&s);
        for (event, report) in &out.reports {
            let mut expected: Vec<(i64, Uuid, bool)> = out
                .policies
                .iter()
                .filter(|(_, p)| Some(p.trigger) == event.fires())
                .map(|(id, p)| (p.priority, *id, p.stop_on_match))
                .collect();
            expected.sort();
            let mut stopped_at = None;
            for (i, decision) in report.decisions.iter().enumerate() {
                prop_assert!(stopped_at.is_none(), "{event:?}: a decision after a stop");
                prop_assert!(i < expected.len(), "{event:?}: more decisions than policies");
                let (_, id, stop) = expected[i];
                prop_assert_eq!(decision.policy_id, id, "{:?}: decision {}", event, i);
                let scheduled = !decision.planned.is_empty();
                prop_assert_eq!(scheduled, decision.code == "engine.scheduled");
                if scheduled && stop {
                    stopped_at = Some(i);
                }
            }
            if stopped_at.is_none() {
                prop_assert_eq!(report.decisions.len(), expected.len(), "{:?}", event);
            }
        }
    }
}
