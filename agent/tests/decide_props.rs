//! The engine's in-memory decision ([`Decider`]) against the plain
//! composition it optimizes, over random policy sets and event streams.
//!
//! The reference keeps one [`TriggerState`] per policy in a map, rebuilds a
//! string-keyed [`TriggerIndex`] whenever the policy set changes, evaluates
//! every shortlisted policy (observers and policies that could only leave a
//! state included) with [`TriggerState::evaluate`], and evaluates each fired
//! policy's conditions on its own. The [`Decider`] files policies in slots,
//! shares trigger groups, one trigger state among the policies of a group
//! whose states are equal, and condition outcomes, skips policies a UPS
//! could only make leave a state they do not track, and renders explain text
//! on demand. Both must produce the same verdicts, in the same order, with
//! the same explain text, countdowns and condition outcomes, and leave
//! every policy in the same state, for every event, while policies come and
//! go, states are restored, and runs stop part-way (as `stop_on_match` and
//! store errors make the runner stop) with or without a revert.

use std::collections::BTreeMap;

use agent::engine::conditions::{self, Facts, FactsSnapshot, Lookup, PolicyContext, UpsFacts};
use agent::engine::decide::{ConditionMemo, Decider};
use agent::engine::event::{Event, EventKind, Subject, SubjectKind};
use agent::engine::triggers::{EventView, Interest, TimerRequest, TriggerIndex, TriggerState};
use agent::spec::{Condition, EventPattern, Logic, Op, Scope, Trigger, TriggerGroup, UpsState};
use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};
use uuid::Uuid;

const UPSES: [&str; 2] = ["ups1@nas.lan:3493", "ups2@nas.lan:3493"];
const HOSTS: [&str; 2] = ["pve-01", "pve-02"];

#[derive(Debug, Clone)]
struct PolicyDef {
    id: Uuid,
    priority: i64,
    group: TriggerGroup,
    conditions: Vec<Condition>,
    host: &'static str,
}

/// One step of a scenario.
#[derive(Debug, Clone)]
enum Step {
    Ups(usize, UpsState),
    Metric(usize, &'static str, f64),
    Webhook(&'static str),
    Host(usize, bool),
    /// Deliver the `n`th countdown armed so far (if any), at its deadline.
    Timer(usize),
    /// Unload policy `n % len`, then load it again with a fresh state.
    Reload(usize),
    /// Give policy `n % len` the state of policy `m % len` if their
    /// trigger groups are equal, else an empty state, as a restart
    /// restores states from the store.
    Restore(usize, usize),
    /// The event of the inner step decided as the runner does when a run
    /// stops early (`stop_on_match`, an error): only the first `reach`
    /// policies of the shortlist are stepped, and with `skip_odd` not
    /// those among them with an odd id (a caller that skips policies).
    /// With `revert`, the last one stepped gets its state from before the
    /// event back (the store refused what the event implied). Without
    /// `close`, the event is left open and the next one closes it.
    Partial {
        inner: Box<Step>,
        reach: usize,
        skip_odd: bool,
        revert: bool,
        close: bool,
    },
}

fn ups_filter() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("ups1".to_string())),
        Just(Some(UPSES[1].to_string())),
    ]
}

fn state() -> impl Strategy<Value = UpsState> {
    prop::sample::select(UpsState::ALL.to_vec())
}

fn hold() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![Just(None), Just(Some(0)), Just(Some(30))]
}

fn trigger() -> impl Strategy<Value = Trigger> {
    prop_oneof![
        (state(), hold(), ups_filter()).prop_map(|(equals, for_s, ups)| Trigger::UpsState {
            equals,
            for_s,
            ups
        }),
        (
            prop::sample::select(vec!["load", "charge_pct"]),
            hold(),
            ups_filter()
        )
            .prop_map(|(metric, for_s, ups)| Trigger::MetricThreshold {
                metric: metric.to_string(),
                op: Op::Gt,
                value: 50.0,
                for_s,
                ups,
            }),
        prop::sample::select(vec!["deploy", "drill"]).prop_map(|name| Trigger::WebhookCustom {
            name: name.to_string()
        }),
        (state(), ups_filter()).prop_map(|(equals, ups)| Trigger::TimerAfter {
            after_s: 60,
            since_event: EventPattern::UpsState { equals, ups },
        }),
        Just(Trigger::TimerAfter {
            after_s: 45,
            since_event: EventPattern::WebhookCustom {
                name: "deploy".into()
            },
        }),
    ]
}

/// A condition list from a small set, so that many policies share one
/// (and the [`Decider`] shares its outcome) while hosts and `vm` differ.
fn conditions() -> impl Strategy<Value = Vec<Condition>> {
    let make = |scope, field: &str, op, value| Condition {
        scope,
        field: field.into(),
        op,
        value,
        ups: None,
    };
    let runtime = make(Scope::Ups, "runtime_minutes", Op::Ge, json!(5));
    let reachable = make(Scope::Host, "reachable", Op::Eq, json!(true));
    let count = make(Scope::Vm, "count_matching", Op::Ge, json!(1));
    let load = make(Scope::Metric, "load", Op::Lt, json!(90));
    prop::sample::select(vec![
        vec![],
        vec![runtime.clone()],
        vec![reachable.clone()],
        vec![reachable.clone(), load.clone()],
        vec![count.clone()],
        vec![runtime, count, reachable, load],
    ])
}

fn policy() -> impl Strategy<Value = (i64, TriggerGroup, Vec<Condition>, usize)> {
    (
        0i64..3,
        prop::bool::ANY,
        prop::collection::vec(trigger(), 1..3),
        conditions(),
        0usize..2,
    )
        .prop_map(|(priority, all, triggers, conditions, host)| {
            let logic = if all { Logic::All } else { Logic::Any };
            (priority, TriggerGroup { logic, triggers }, conditions, host)
        })
}

fn event_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..2, state()).prop_map(|(u, s)| Step::Ups(u, s)),
        2 => (0usize..2, prop::sample::select(vec!["load", "charge_pct"]), prop::sample::select(vec![20.0, 80.0]))
            .prop_map(|(u, m, v)| Step::Metric(u, m, v)),
        1 => prop::sample::select(vec!["deploy", "drill"]).prop_map(Step::Webhook),
        1 => (0usize..2, prop::bool::ANY).prop_map(|(h, r)| Step::Host(h, r)),
        2 => (0usize..8).prop_map(Step::Timer),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => event_step(),
        1 => (0usize..16).prop_map(Step::Reload),
        1 => (0usize..16, 0usize..16).prop_map(|(n, m)| Step::Restore(n, m)),
        2 => (event_step(), 0usize..6, prop::bool::ANY, prop::bool::ANY, prop::bool::ANY).prop_map(
            |(inner, reach, skip_odd, revert, close)| Step::Partial {
                inner: Box::new(inner),
                reach,
                skip_odd,
                revert,
                close,
            }
        ),
    ]
}

fn event(kind: EventKind, subject: (SubjectKind, &str), attrs: Value, ts: DateTime<Utc>) -> Event {
    let Value::Object(attrs) = attrs else {
        unreachable!("attrs are an object")
    };
    Event {
        kind,
        subject: Subject {
            kind: subject.0,
            id: subject.1.to_string(),
        },
        attrs,
        ts,
        correlation_id: Uuid::from_u128(ts.timestamp() as u128),
    }
}

/// `vm.count_matching` of a policy: fixed per policy, some zero.
fn count_of(id: Uuid) -> Result<usize, String> {
    Ok((id.as_u128() % 3) as usize)
}

/// What one verdict looks like, from either side, for comparison.
#[derive(Debug, PartialEq)]
struct Verdict {
    policy: Uuid,
    interest: Interest,
    fired: Option<usize>,
    explain: String,
    timers: Vec<TimerRequest>,
    cancelled: Vec<TimerRequest>,
    conditions: Option<conditions::ConditionOutcome>,
}

/// The plain composition (see the module docs).
#[derive(Default)]
struct Reference {
    policies: BTreeMap<Uuid, PolicyDef>,
    states: BTreeMap<Uuid, TriggerState>,
}

impl Reference {
    /// The verdicts on `event` of the first `reach` shortlisted policies
    /// (all without a reach), and the ids of those policies.
    fn decide(
        &mut self,
        event: &Event,
        now: DateTime<Utc>,
        facts: &FactsSnapshot,
        reach: Option<usize>,
        skip: &dyn Fn(Uuid) -> bool,
    ) -> (Vec<Verdict>, Vec<Uuid>) {
        let ids: Vec<String> = self.policies.keys().map(Uuid::to_string).collect();
        let index = TriggerIndex::build(
            ids.iter()
                .zip(self.policies.values())
                .map(|(id, p)| (id.as_str(), p.priority, &p.group)),
        );
        let mut out = Vec::new();
        let mut reached = Vec::new();
        let shortlist = index.shortlist(event);
        for pref in shortlist.iter().take(reach.unwrap_or(usize::MAX)) {
            let id: Uuid = pref.policy_id.parse().expect("a uuid");
            reached.push(id);
            if skip(id) {
                continue;
            }
            let def = &self.policies[&id];
            let state = self.states.entry(id).or_default();
            let eval =
                state.evaluate(
                    &pref.policy_id,
                    &def.group,
                    event,
                    now,
                    |ups, state| match facts.ups(Some(ups)) {
                        Lookup::Found(u) => u.is_in(state),
                        _ => None,
                    },
                );
            if eval.fired.is_none() && pref.interest != Interest::Fire {
                continue;
            }
            let count = || count_of(id);
            let ctx = PolicyContext {
                host_id: def.host,
                count_matching: &count,
            };
            let outcome = eval
                .fired
                .map(|_| conditions::evaluate(&def.conditions, event, facts, &ctx));
            out.push(Verdict {
                policy: id,
                interest: pref.interest,
                fired: eval.fired.map(|f| f.trigger),
                explain: eval.explain(&def.group, &event.subject.id),
                timers: eval.timers().to_vec(),
                cancelled: eval.cancelled().to_vec(),
                conditions: outcome,
            });
        }
        (out, reached)
    }
}

fn load(decider: &mut Decider, def: &PolicyDef) {
    assert!(decider.insert(def.id, def.priority, &def.group, &def.conditions, def.host));
}

/// A policy of the generated set, loaded `copies` times (equal trigger
/// groups: the decider shares one state among them while it can) with
/// priorities that differ, so copies interleave with other policies.
type Generated = ((i64, TriggerGroup, Vec<Condition>, usize), usize);

fn run(policies: Vec<Generated>, steps: Vec<Step>) {
    let defs: Vec<PolicyDef> = policies
        .into_iter()
        .flat_map(|(policy, copies)| {
            (0..copies as i64).map(move |c| {
                let (priority, group, conditions, host) = policy.clone();
                ((priority + c) % 3, group, conditions, host)
            })
        })
        .enumerate()
        .map(|(n, (priority, group, conditions, host))| PolicyDef {
            id: Uuid::from_u128(0x4000_8000_0000_0000_0000 + (n as u128 * 7919) % 1000),
            priority,
            group,
            conditions,
            host: HOSTS[host],
        })
        .collect();
    let mut reference = Reference::default();
    let mut decider = Decider::new();
    for def in &defs {
        reference.policies.insert(def.id, def.clone());
        load(&mut decider, def);
    }
    let mut facts = FactsSnapshot::new()
        .with_ups(UpsFacts::new(UPSES[0]).with_reading("runtime_minutes", 10.0))
        .with_ups(UpsFacts::new(UPSES[1]).with_reading("runtime_minutes", 2.0))
        .with_host(HOSTS[0], true);
    let t0: DateTime<Utc> = "2026-11-22T11:30:00Z".parse().expect("an instant");
    let mut now = t0;
    let mut armed: Vec<TimerRequest> = Vec::new();
    let mut memo = ConditionMemo::default();
    for step in steps {
        now += Duration::seconds(7);
        let (step, partial) = match step {
            Step::Partial {
                inner,
                reach,
                skip_odd,
                revert,
                close,
            } => (*inner, Some((reach, skip_odd, revert, close))),
            step => (step, None),
        };
        let event = match step {
            Step::Ups(u, s) => event(
                EventKind::UpsState,
                (SubjectKind::Ups, UPSES[u]),
                json!({ "state": s.as_str() }),
                now,
            ),
            Step::Metric(u, m, v) => event(
                EventKind::MetricThreshold,
                (SubjectKind::Ups, UPSES[u]),
                json!({ "metric": m, "value": v }),
                now,
            ),
            Step::Webhook(name) => event(
                EventKind::WebhookCustom,
                (SubjectKind::Integration, "webhook"),
                json!({ "name": name, "body": {} }),
                now,
            ),
            Step::Host(h, reachable) => event(
                EventKind::HostState,
                (SubjectKind::Host, HOSTS[h]),
                json!({ "reachable": reachable }),
                now,
            ),
            Step::Timer(n) => {
                if armed.is_empty() {
                    continue;
                }
                let request = armed.remove(n % armed.len());
                now = now.max(request.deadline);
                request.event()
            }
            Step::Reload(n) => {
                let def = &defs[n % defs.len()];
                reference.states.remove(&def.id);
                assert!(decider.remove(def.id));
                load(&mut decider, def);
                continue;
            }
            Step::Restore(n, m) => {
                let (to, from) = (&defs[n % defs.len()], &defs[m % defs.len()]);
                let state = match to.group == from.group {
                    true => decider.state(from.id).cloned().expect("loaded"),
                    false => TriggerState::default(),
                };
                assert!(decider.set_state(to.id, state.clone()));
                reference.states.insert(to.id, state);
                continue;
            }
            Step::Partial { .. } => unreachable!("event_step makes no Partial"),
        };
        facts.apply(&event);
        let skip_odd = partial.is_some_and(|p| p.1);
        let skip = move |id: Uuid| skip_odd && id.as_u128() % 2 == 1;
        let (expected, reached) =
            reference.decide(&event, now, &facts, partial.map(|p| p.0), &skip);
        let mut decided = Vec::new();
        let view = EventView::new(&event);
        match partial {
            None => decider.decide(&view, now, &facts, &mut memo, &count_of, &mut decided),
            Some((_, _, revert, close)) => {
                // As the runner does: begin, advance while the run goes on,
                // maybe revert the last one, end.
                memo.next_event();
                let mut hits = Vec::new();
                decider.begin(&view, &mut hits);
                let mut last = None;
                for hit in hits {
                    let Some(id) = decider.policy_id(hit) else {
                        continue;
                    };
                    if !reached.contains(&id) {
                        break;
                    }
                    if skip(id) {
                        continue;
                    }
                    let before = decider.hit_state(hit).cloned().expect("loaded");
                    let count = || count_of(id);
                    decided.extend(decider.advance(hit, &view, now, &facts, &mut memo, &count));
                    last = Some((id, before));
                }
                if let (true, Some((id, before))) = (revert, last) {
                    assert!(decider.set_state(id, before.clone()));
                    reference.states.insert(id, before);
                }
                if close {
                    decider.end();
                }
            }
        }
        let group_of = |id: Uuid| &reference.policies[&id].group;
        let actual: Vec<Verdict> = decided
            .into_iter()
            .map(|d| Verdict {
                policy: d.policy_id,
                interest: d.interest,
                fired: d.evaluation.fired.map(|f| f.trigger),
                explain: d
                    .evaluation
                    .explain(group_of(d.policy_id), &event.subject.id),
                timers: d.evaluation.timers().to_vec(),
                cancelled: d.evaluation.cancelled().to_vec(),
                conditions: d.conditions.map(|c| (*c).clone()),
            })
            .collect();
        assert_eq!(actual, expected, "after {event:?}");
        for verdict in &expected {
            armed.extend(verdict.timers.iter().cloned());
        }
        // Countdowns armed by observers are not in any verdict: take them
        // from the reference's states so their expiry is exercised too.
        for (id, state) in &reference.states {
            for request in state.pending_timers(&id.to_string(), group_of(*id)) {
                if !armed.contains(&request) {
                    armed.push(request);
                }
            }
        }
        for (id, state) in &reference.states {
            assert_eq!(
                decider.state(*id),
                Some(state),
                "state of {id} after {event:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_decider_decides_like_the_plain_composition(
        policies in prop::collection::vec((policy(), 1usize..4), 1..10),
        steps in prop::collection::vec(step(), 1..60),
    ) {
        run(policies, steps);
    }
}

#[test]
fn a_policy_that_tracks_nothing_is_skipped_on_leave_but_not_when_tracking() {
    // Deterministic companion of the property: the leave skip in numbers.
    let battery = TriggerGroup {
        logic: Logic::Any,
        triggers: vec![Trigger::UpsState {
            equals: UpsState::OnBattery,
            for_s: Some(120),
            ups: None,
        }],
    };
    let mut decider = Decider::new();
    let id = Uuid::from_u128(1);
    decider.insert(id, 0, &battery, &[], "pve-01");
    let facts = FactsSnapshot::new();
    let t0: DateTime<Utc> = "2026-11-22T11:30:00Z".parse().expect("an instant");
    let mut memo = ConditionMemo::default();
    let mut decide = |state: UpsState, s: i64| {
        let e = event(
            EventKind::UpsState,
            (SubjectKind::Ups, UPSES[0]),
            json!({ "state": state.as_str() }),
            t0 + Duration::seconds(s),
        );
        let mut out = Vec::new();
        decider.decide(
            &EventView::new(&e),
            e.ts,
            &facts,
            &mut memo,
            &count_of,
            &mut out,
        );
        (out, decider.state(id).cloned().unwrap_or_default())
    };
    let (out, idle) = decide(UpsState::OnMains, 0);
    assert!(out.is_empty());
    assert_eq!(idle, TriggerState::default());
    let (out, counting) = decide(UpsState::OnBattery, 1);
    assert_eq!(out.len(), 1, "the countdown start is reported");
    assert_eq!(out[0].evaluation.timers().len(), 1);
    assert_eq!(counting.pending_timers(&id.to_string(), &battery).len(), 1);
    // Leaving cancels the countdown: the tracking policy is not skipped.
    let (out, after) = decide(UpsState::OnMains, 3);
    assert!(out.is_empty(), "an observer's move is not a verdict");
    assert!(after.pending_timers(&id.to_string(), &battery).is_empty());
}

#[test]
fn a_run_left_open_keeps_the_unreached_policies_states() {
    // Found by the property: copies of a `timer.after` policy, an event
    // that reaches only the first copy and is never closed, then an event
    // that closes it and reaches one policy.
    let on = |equals| TriggerGroup {
        logic: Logic::Any,
        triggers: vec![Trigger::UpsState {
            equals,
            for_s: None,
            ups: None,
        }],
    };
    let after_overload = TriggerGroup {
        logic: Logic::Any,
        triggers: vec![Trigger::TimerAfter {
            after_s: 60,
            since_event: EventPattern::UpsState {
                equals: UpsState::Overload,
                ups: None,
            },
        }],
    };
    let battery = on(UpsState::OnBattery);
    run(
        vec![
            ((0, after_overload, vec![], 0), 2),
            ((0, battery.clone(), vec![], 0), 2),
            ((0, battery, vec![], 0), 2),
        ],
        vec![
            Step::Ups(1, UpsState::Overload),
            Step::Partial {
                inner: Box::new(Step::Ups(0, UpsState::Overload)),
                reach: 1,
                skip_odd: false,
                revert: false,
                close: false,
            },
            Step::Partial {
                inner: Box::new(Step::Ups(0, UpsState::OnBattery)),
                reach: 1,
                skip_odd: false,
                revert: false,
                close: true,
            },
        ],
    );
}
