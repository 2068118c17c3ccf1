//! The in-memory decision for one event (SPEC §6 steps 1–3): which policies
//! the event concerns, in run order, and for each whether its triggers fired
//! and its conditions hold. Nothing here reads or writes the store, so this
//! is the part of event handling whose speed is measured on its own
//! (`agent/benches/decide.rs`); windows, re-resolution, guards and
//! persistence (steps 4–10) follow in the runner for the policies that matched.
//!
//! [`decide_policy`] is step 3 for one shortlisted policy, the unit a runner
//! interleaves with its own steps 4–10 (a later policy must see what an
//! earlier one recorded); [`decide`] runs steps 1–3 for the whole shortlist.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::conditions::{self, ConditionOutcome, Facts, Lookup, PolicyContext};
use super::event::Event;
use super::triggers::{Evaluation, Interest, PolicyRef, TriggerIndex, TriggerState};
use crate::spec::{Condition, TriggerGroup};

/// What the decision reads of one policy.
#[derive(Debug, Clone, Copy)]
pub struct PolicyView<'a> {
    pub group: &'a TriggerGroup,
    pub conditions: &'a [Condition],
    /// `targets.host_id`, the host `host.reachable` conditions are about.
    pub host_id: &'a str,
}

/// Where the decision finds the policies the index names.
pub trait PolicyLookup {
    /// The policy with this id (as the [`TriggerIndex`] holds it), if loaded.
    fn policy(&self, policy_id: &str) -> Option<PolicyView<'_>>;

    /// `vm.count_matching`: how many targets the policy's selector resolves
    /// to now. Called only for a policy whose triggers fired and that has a
    /// `vm` condition.
    fn count_matching(&self, policy_id: &str) -> Result<usize, String>;
}

/// Where the decision keeps each policy's trigger state.
pub trait TriggerStates {
    /// The state of `policy_id` (the index's shared id), created empty on
    /// first use; `None` when the id cannot name a policy of this table.
    fn state_mut(&mut self, policy_id: &Arc<str>) -> Option<&mut TriggerState>;
}

impl TriggerStates for HashMap<Arc<str>, TriggerState> {
    fn state_mut(&mut self, policy_id: &Arc<str>) -> Option<&mut TriggerState> {
        Some(self.entry(policy_id.clone()).or_default())
    }
}

impl TriggerStates for HashMap<Uuid, TriggerState> {
    fn state_mut(&mut self, policy_id: &Arc<str>) -> Option<&mut TriggerState> {
        let id = Uuid::parse_str(policy_id).ok()?;
        Some(self.entry(id).or_default())
    }
}

/// Step 3's verdict on one shortlisted policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    pub policy: PolicyRef,
    /// The trigger group's verdict, with its explain text and countdowns.
    pub evaluation: Evaluation,
    /// The conditions, evaluated only when the triggers fired.
    pub conditions: Option<ConditionOutcome>,
}

impl Decided {
    /// The triggers fired and every condition holds: the policy goes on to
    /// suppression, resolution and its actions (steps 4–10).
    pub fn matched(&self) -> bool {
        self.evaluation.fired.is_some() && self.conditions.as_ref().is_some_and(|c| c.all_true)
    }
}

/// Step 3 for one shortlisted policy: its triggers against `event` at `now`
/// (moving `state`), then, when they fired, its conditions against `facts`
/// (which must already include `event`). `None` for an observer the event
/// only moved (nothing to record).
pub fn decide_policy(
    pref: &PolicyRef,
    policy: PolicyView<'_>,
    state: &mut TriggerState,
    event: &Event,
    now: DateTime<Utc>,
    facts: &dyn Facts,
    count_matching: &dyn Fn() -> Result<usize, String>,
) -> Option<Decided> {
    let evaluation = state.evaluate(&pref.policy_id, policy.group, event, now, |ups| match facts
        .ups(Some(ups))
    {
        Lookup::Found(u) => u.state,
        _ => None,
    });
    if evaluation.fired.is_none() && pref.interest == Interest::Observe {
        return None;
    }
    let conditions = evaluation.fired.map(|_| {
        let ctx = PolicyContext {
            host_id: policy.host_id,
            count_matching,
        };
        conditions::evaluate(policy.conditions, event, facts, &ctx)
    });
    Some(Decided {
        policy: pref.clone(),
        evaluation,
        conditions,
    })
}

/// Steps 1–3 for `event`: the shortlist from `index` in run order (priority,
/// then policy id), each policy decided by [`decide_policy`]. Ids the index
/// names but `policies` or `states` do not know are skipped. `facts` must
/// already include `event` (the caller applies it first).
pub fn decide(
    index: &TriggerIndex,
    policies: &impl PolicyLookup,
    states: &mut impl TriggerStates,
    event: &Event,
    now: DateTime<Utc>,
    facts: &dyn Facts,
) -> Vec<Decided> {
    let mut out = Vec::new();
    for pref in index.shortlist(event) {
        let Some(policy) = policies.policy(&pref.policy_id) else {
            continue;
        };
        let Some(state) = states.state_mut(&pref.policy_id) else {
            continue;
        };
        let id = pref.policy_id.clone();
        let count = || policies.count_matching(&id);
        out.extend(decide_policy(
            &pref, policy, state, event, now, facts, &count,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::conditions::{FactsSnapshot, UpsFacts};
    use crate::engine::event::{EventKind, Subject, SubjectKind};
    use crate::spec::{Logic, Op, Scope, Trigger, UpsState};
    use serde_json::{json, Map};

    struct Table(Vec<(String, TriggerGroup, Vec<Condition>)>);

    impl PolicyLookup for Table {
        fn policy(&self, policy_id: &str) -> Option<PolicyView<'_>> {
            self.0
                .iter()
                .find(|(id, _, _)| id == policy_id)
                .map(|(_, group, conditions)| PolicyView {
                    group,
                    conditions,
                    host_id: "pve-01",
                })
        }

        fn count_matching(&self, _: &str) -> Result<usize, String> {
            Ok(1)
        }
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
            ts: Utc::now(),
            correlation_id: Uuid::nil(),
        }
    }

    fn runtime_at_least(minutes: f64) -> Condition {
        Condition {
            scope: Scope::Ups,
            field: "runtime_minutes".into(),
            op: Op::Ge,
            value: json!(minutes),
            ups: None,
        }
    }

    #[test]
    fn decide_fires_on_entering_checks_conditions_and_skips_mere_observers() {
        let on = |state| TriggerGroup {
            logic: Logic::Any,
            triggers: vec![Trigger::UpsState {
                equals: state,
                for_s: None,
                ups: None,
            }],
        };
        let table = Table(vec![
            (
                "a".into(),
                on(UpsState::OnBattery),
                vec![runtime_at_least(5.0)],
            ),
            (
                "b".into(),
                on(UpsState::OnBattery),
                vec![runtime_at_least(50.0)],
            ),
            ("c".into(), on(UpsState::OnMains), vec![]),
        ]);
        let index = TriggerIndex::build(table.0.iter().map(|(id, g, _)| (id.as_str(), 0, g)));
        let mut states: HashMap<Arc<str>, TriggerState> = HashMap::new();
        let mut facts = FactsSnapshot::new()
            .with_ups(UpsFacts::new("ups1@nas.lan:3493").with_reading("runtime_minutes", 10.0));
        let event = ups("on_battery");
        facts.apply(&event);
        let decided = decide(&index, &table, &mut states, &event, Utc::now(), &facts);
        let verdicts: Vec<(&str, bool)> = decided
            .iter()
            .map(|d| (&*d.policy.policy_id, d.matched()))
            .collect();
        assert_eq!(verdicts, [("a", true), ("b", false)]);
        // Staying on battery is not entering: shortlisted, not fired.
        let again = decide(&index, &table, &mut states, &event, Utc::now(), &facts);
        assert!(again.iter().all(|d| d.evaluation.fired.is_none()));
    }
}
