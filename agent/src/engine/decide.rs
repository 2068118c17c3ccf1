//! The in-memory decision for one event (SPEC §6 steps 1–3): which policies
//! the event concerns, in run order, and for each whether its triggers fired
//! and its conditions hold. Nothing here reads or writes the store, so this
//! is the part of event handling whose speed is measured on its own
//! (`agent/benches/decide.rs`); windows, re-resolution, guards and
//! persistence (steps 4–10) follow in the runner for the policies that
//! matched.
//!
//! The [`Decider`] is what the engine holds: the loaded policies' triggers
//! and conditions in numbered slots, their trigger states beside them, and
//! the trigger index filed by slot. One event costs one pass over the
//! shortlist with no id parsed, hashed or copied:
//!
//! - the event is read once into an [`EventView`] that every policy shares;
//! - the index hands back slot numbers, already in run order;
//! - a policy's trigger verdict records its reasons as data and becomes
//!   explain text only when the runner writes a ledger entry or an audit
//!   record ([`Evaluation::explain`]);
//! - a condition list is evaluated once per event and the outcome shared by
//!   every fired policy with the same list ([`ConditionMemo`]): conditions
//!   read only the event and the facts (and, for `host` conditions, the
//!   policy's host, which is part of the key), which do not change while
//!   one event is decided. Lists with a `vm` condition depend on the
//!   policy's own selector and are evaluated per policy.
//!
//! [`Decider::decide_one`] is step 3 for one shortlisted policy, the unit the
//! runner interleaves with its own steps 4–10 (a later policy must see what
//! an earlier one recorded); [`Decider::decide`] runs steps 1–3 for the
//! whole shortlist.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::conditions::{self, ConditionOutcome, Facts, Lookup, PolicyContext};
use super::triggers::{Evaluation, EventView, Hit, Interest, TriggerIndex, TriggerState};
use crate::spec::{Condition, Scope, TriggerGroup};

/// What the decision reads of one loaded policy for every event that
/// shortlists it: small, so that one event's policies cost few cache lines.
#[derive(Debug, Clone)]
struct Slot {
    id: Uuid,
    /// `id` as text: timer tags and countdown requests name policies so.
    id_text: Box<str>,
    priority: i64,
    /// The trigger group, in the shared table: policies with equal groups
    /// (typically many per UPS state or webhook) read one copy.
    group: u32,
    /// The shared condition list, or `None` when it must be evaluated per
    /// policy (it has a `vm` condition).
    shared: Option<u32>,
    /// The policy's trigger state, beside what reads it.
    state: TriggerState,
    /// Read only for a fired policy, so kept out of the slot's cache lines.
    details: Box<Details>,
}

/// What only a fired policy's conditions read.
#[derive(Debug, Clone)]
struct Details {
    conditions: Vec<Condition>,
    /// `targets.host_id`, the host `host.reachable` conditions are about.
    host_id: String,
}

/// The policies' triggers, conditions and trigger states, and the index
/// over them (see the module docs).
#[derive(Debug, Default)]
pub struct Decider {
    index: TriggerIndex,
    slots: Vec<Option<Slot>>,
    groups: Shared<TriggerGroup>,
    ids: HashMap<Uuid, u32>,
    free: Vec<u32>,
    /// Condition lists by [`shared_key`]; the outcomes live in a
    /// [`ConditionMemo`].
    lists: Shared<()>,
    /// The shortlist buffer, reused from event to event.
    hits: Vec<Hit>,
    /// One bit per slot: set when the policy's trigger state tracks a
    /// subject. An [`Interest::Leave`] hit on a policy that tracks nothing
    /// would evaluate to nothing, so [`Decider::shortlist`] drops it
    /// without reading the policy at all.
    tracking: Vec<u64>,
}

/// Step 3's verdict on one shortlisted policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    pub policy_id: Uuid,
    pub priority: i64,
    pub interest: Interest,
    /// The trigger group's verdict, with its reasons and countdowns.
    pub evaluation: Evaluation,
    /// The conditions, evaluated only when the triggers fired (shared with
    /// every policy of the same list that fired on the same event).
    pub conditions: Option<Arc<ConditionOutcome>>,
}

impl Decided {
    /// The triggers fired and every condition holds: the policy goes on to
    /// suppression, resolution and its actions (steps 4–10).
    pub fn matched(&self) -> bool {
        self.evaluation.fired.is_some() && self.conditions.as_ref().is_some_and(|c| c.all_true)
    }
}

impl Decider {
    pub fn new() -> Decider {
        Decider::default()
    }

    /// Loads a policy: `id`, its priority, trigger group, conditions and
    /// host. Its trigger state starts empty. `false` (and nothing changed)
    /// when `id` is loaded already.
    pub fn insert(
        &mut self,
        id: Uuid,
        priority: i64,
        group: &TriggerGroup,
        conditions: &[Condition],
        host_id: &str,
    ) -> bool {
        if self.ids.contains_key(&id) {
            return false;
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 policies")
            }
        };
        let shared = shared_key(conditions, host_id).map(|key| self.lists.acquire(key, || ()));
        let entry = Slot {
            id,
            id_text: id.to_string().into(),
            priority,
            group: self.groups.acquire(group_key(group), || group.clone()),
            shared,
            state: TriggerState::default(),
            details: Box::new(Details {
                conditions: conditions.to_vec(),
                host_id: host_id.to_string(),
            }),
        };
        self.index
            .insert_slot(&entry.id_text, slot, priority, group);
        self.note_tracking(slot, &entry.state);
        self.slots[slot as usize] = Some(entry);
        self.ids.insert(id, slot);
        true
    }

    /// Unloads a policy and its trigger state; `false` if it was not loaded.
    pub fn remove(&mut self, id: Uuid) -> bool {
        let Some(slot) = self.ids.remove(&id) else {
            return false;
        };
        if let Some(entry) = self.slots[slot as usize].take() {
            self.groups.release(entry.group);
            if let Some(list) = entry.shared {
                self.lists.release(list);
            }
        }
        self.note_tracking(slot, &TriggerState::default());
        self.free.push(slot);
        // The index has no removal: rebuilt from the remaining slots.
        let mut index = TriggerIndex::default();
        for (n, entry) in self.slots.iter().enumerate() {
            if let Some(e) = entry {
                index.insert_slot(&e.id_text, n as u32, e.priority, self.groups.get(e.group));
            }
        }
        self.index = index;
        true
    }

    /// How many policies are loaded.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The trigger state of a loaded policy.
    pub fn state(&self, id: Uuid) -> Option<&TriggerState> {
        let slot = self.ids.get(&id)?;
        self.slots[*slot as usize].as_ref().map(|s| &s.state)
    }

    /// Replaces the trigger state of a loaded policy; `false` (and nothing
    /// kept) when it is not loaded.
    pub fn set_state(&mut self, id: Uuid, state: TriggerState) -> bool {
        let Some(&n) = self.ids.get(&id) else {
            return false;
        };
        self.note_tracking(n, &state);
        match self.slots[n as usize].as_mut() {
            Some(slot) => {
                slot.state = state;
                true
            }
            None => false,
        }
    }

    /// Takes a shortlisted policy's state out (leaving it empty) for
    /// [`Decider::decide_one`]; put it back with [`Decider::put_state`].
    pub fn take_state(&mut self, hit: Hit) -> TriggerState {
        match &mut self.slots[hit.slot as usize] {
            Some(slot) => std::mem::take(&mut slot.state),
            None => TriggerState::default(),
        }
    }

    pub fn put_state(&mut self, hit: Hit, state: TriggerState) {
        self.note_tracking(hit.slot, &state);
        if let Some(slot) = &mut self.slots[hit.slot as usize] {
            slot.state = state;
        }
    }

    fn is_tracking(&self, slot: u32) -> bool {
        let (word, bit) = (slot as usize / 64, slot % 64);
        self.tracking.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    /// Records whether the state of `slot` tracks a subject (see `tracking`).
    fn note_tracking(&mut self, slot: u32, state: &TriggerState) {
        self.set_tracking(slot, state.tracking() > 0);
    }

    fn set_tracking(&mut self, slot: u32, tracking: bool) {
        let (word, bit) = (slot as usize / 64, slot % 64);
        if self.tracking.len() <= word {
            self.tracking.resize(word + 1, 0);
        }
        if tracking {
            self.tracking[word] |= 1 << bit;
        } else {
            self.tracking[word] &= !(1 << bit);
        }
    }

    /// The id of a shortlisted policy (`None` for a slot freed since).
    pub fn policy_id(&self, hit: Hit) -> Option<Uuid> {
        self.slots[hit.slot as usize].as_ref().map(|s| s.id)
    }

    /// Step 1–2: the policies `view` concerns, in run order (priority, then
    /// id), each once with its strongest interest, into `out`. A policy the
    /// event could only make leave a state it does not track is left out.
    pub fn shortlist(&self, view: &EventView<'_>, out: &mut Vec<Hit>) {
        self.index.shortlist_hits(view, out);
        out.retain(|hit| hit.interest != Interest::Leave || self.is_tracking(hit.slot));
    }

    /// Step 3 for one shortlisted policy: its triggers against the event at
    /// `now` (moving `state`, which [`Decider::take_state`] handed out or a
    /// dry-run's copy), then, when they fired, its conditions against
    /// `facts` (which must already include the event). `count_matching`
    /// answers `vm.count_matching` for this policy. `None` for an observer
    /// the event only moved (nothing to record) and for a freed slot.
    #[allow(clippy::too_many_arguments)]
    pub fn decide_one(
        &self,
        hit: Hit,
        state: &mut TriggerState,
        view: &EventView<'_>,
        now: DateTime<Utc>,
        facts: &dyn Facts,
        memo: &mut ConditionMemo,
        count_matching: &dyn Fn() -> Result<usize, String>,
    ) -> Option<Decided> {
        let slot = self.slots[hit.slot as usize].as_ref()?;
        let step = Step {
            view,
            now,
            facts,
            count_matching,
        };
        judge(&self.groups, slot, hit, state, &step, memo)
    }

    /// Steps 1–3 for the event in `view`: every shortlisted policy decided by
    /// [`Decider::decide_one`], moving the trigger states, appended to `out`
    /// in run order. `facts` must already include the event;
    /// `count_matching` answers `vm.count_matching` by policy id.
    pub fn decide(
        &mut self,
        view: &EventView<'_>,
        now: DateTime<Utc>,
        facts: &dyn Facts,
        memo: &mut ConditionMemo,
        count_matching: &dyn Fn(Uuid) -> Result<usize, String>,
        out: &mut Vec<Decided>,
    ) {
        memo.next_event();
        let mut hits = std::mem::take(&mut self.hits);
        self.shortlist(view, &mut hits);
        for &hit in &hits {
            let n = hit.slot as usize;
            let Some(slot) = self.slots[n].as_mut() else {
                continue;
            };
            let id = slot.id;
            let count = || count_matching(id);
            let step = Step {
                view,
                now,
                facts,
                count_matching: &count,
            };
            // The state is moved in place, beside the slot it belongs to.
            let mut state = std::mem::take(&mut slot.state);
            let decided = judge(&self.groups, slot, hit, &mut state, &step, memo);
            let tracking = state.tracking() > 0;
            slot.state = state;
            self.set_tracking(hit.slot, tracking);
            out.extend(decided);
        }
        self.hits = hits;
    }
}

/// What step 3 reads of the event at hand, the same for every policy.
struct Step<'a, 'e> {
    view: &'a EventView<'e>,
    now: DateTime<Utc>,
    /// The facts, with the event applied.
    facts: &'a dyn Facts,
    /// `vm.count_matching` for the policy being decided.
    count_matching: &'a dyn Fn() -> Result<usize, String>,
}

/// Step 3 for one policy (see [`Decider::decide_one`]).
fn judge(
    groups: &Shared<TriggerGroup>,
    slot: &Slot,
    hit: Hit,
    state: &mut TriggerState,
    step: &Step<'_, '_>,
    memo: &mut ConditionMemo,
) -> Option<Decided> {
    let (view, facts) = (step.view, step.facts);
    let group = groups.get(slot.group);
    let evaluation = state.evaluate_view(&slot.id_text, group, view, step.now, |ups| {
        match facts.ups(Some(ups)) {
            Lookup::Found(u) => u.state,
            _ => None,
        }
    });
    if evaluation.fired.is_none() && hit.interest != Interest::Fire {
        return None;
    }
    let conditions = evaluation.fired.map(|_| {
        let evaluate = || {
            let details = &slot.details;
            let ctx = PolicyContext {
                host_id: &details.host_id,
                count_matching: step.count_matching,
            };
            Arc::new(conditions::evaluate(
                &details.conditions,
                view.event,
                facts,
                &ctx,
            ))
        };
        match slot.shared {
            Some(list) => memo.get_or_insert(list, evaluate),
            None => evaluate(),
        }
    });
    Some(Decided {
        policy_id: slot.id,
        priority: slot.priority,
        interest: hit.interest,
        evaluation,
        conditions,
    })
}

/// The key two policies share a trigger group under: its canonical JSON.
fn group_key(group: &TriggerGroup) -> String {
    serde_json::to_string(group).unwrap_or_default()
}

/// The key two policies share a condition list under: equal conditions
/// and, if a condition reads the policy's host, the same host. `None` for
/// a list with a `vm` condition, which depends on the policy's own selector.
fn shared_key(conditions: &[Condition], host_id: &str) -> Option<String> {
    if conditions.iter().any(|c| c.scope == Scope::Vm) {
        return None;
    }
    let host = if conditions.iter().any(|c| c.scope == Scope::Host) {
        host_id
    } else {
        ""
    };
    Some(format!(
        "{host}\n{}",
        serde_json::to_string(conditions).ok()?
    ))
}

/// Values shared by the policies whose keys are equal, counted, each
/// dropped when its last policy is unloaded.
#[derive(Debug)]
struct Shared<T> {
    by_key: HashMap<String, u32>,
    /// `(key, value, policies using it)`, by number; `None` once unused.
    entries: Vec<Option<(String, T, usize)>>,
    free: Vec<u32>,
}

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Shared {
            by_key: HashMap::new(),
            entries: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Shared<T> {
    /// The number of the entry under `key` (made by `value` if new),
    /// counted as used once more.
    fn acquire(&mut self, key: String, value: impl FnOnce() -> T) -> u32 {
        if let Some(&n) = self.by_key.get(&key) {
            if let Some((_, _, users)) = &mut self.entries[n as usize] {
                *users += 1;
            }
            return n;
        }
        let n = match self.free.pop() {
            Some(n) => n,
            None => {
                self.entries.push(None);
                u32::try_from(self.entries.len() - 1).expect("fewer than 2^32 entries")
            }
        };
        self.entries[n as usize] = Some((key.clone(), value(), 1));
        self.by_key.insert(key, n);
        n
    }

    /// The value of a live entry.
    fn get(&self, n: u32) -> &T {
        match &self.entries[n as usize] {
            Some((_, value, _)) => value,
            None => unreachable!("shared entry {n} is used by a loaded policy"),
        }
    }

    fn release(&mut self, n: u32) {
        let Some((key, _, users)) = &mut self.entries[n as usize] else {
            return;
        };
        *users -= 1;
        if *users == 0 {
            self.by_key.remove(key.as_str());
            self.entries[n as usize] = None;
            self.free.push(n);
        }
    }
}

/// Condition outcomes of the current event, by shared list number. Valid
/// for one event: call [`ConditionMemo::next_event`] before each (the
/// facts change between events). Kept by the caller so that a read-only
/// decision (a dry-run) can use one of its own.
#[derive(Debug, Default)]
pub struct ConditionMemo {
    event: u64,
    outcomes: Vec<(u64, Option<Arc<ConditionOutcome>>)>,
}

impl ConditionMemo {
    /// Forgets the outcomes of the previous event.
    pub fn next_event(&mut self) {
        self.event += 1;
    }

    fn get_or_insert(
        &mut self,
        list: u32,
        evaluate: impl FnOnce() -> Arc<ConditionOutcome>,
    ) -> Arc<ConditionOutcome> {
        let n = list as usize;
        if self.outcomes.len() <= n {
            self.outcomes.resize(n + 1, (0, None));
        }
        match &self.outcomes[n] {
            (event, Some(outcome)) if *event == self.event => outcome.clone(),
            _ => {
                let outcome = evaluate();
                self.outcomes[n] = (self.event, Some(outcome.clone()));
                outcome
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::conditions::{FactsSnapshot, UpsFacts};
    use crate::engine::event::{Event, EventKind, Subject, SubjectKind};
    use crate::spec::{Logic, Op, Trigger, UpsState};
    use serde_json::{json, Map};

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

    fn condition(scope: Scope, field: &str, op: Op, value: serde_json::Value) -> Condition {
        Condition {
            scope,
            field: field.into(),
            op,
            value,
            ups: None,
        }
    }

    fn runtime_at_least(minutes: f64) -> Condition {
        condition(Scope::Ups, "runtime_minutes", Op::Ge, json!(minutes))
    }

    fn on(state: UpsState) -> TriggerGroup {
        TriggerGroup {
            logic: Logic::Any,
            triggers: vec![Trigger::UpsState {
                equals: state,
                for_s: None,
                ups: None,
            }],
        }
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn facts() -> FactsSnapshot {
        FactsSnapshot::new()
            .with_ups(UpsFacts::new("ups1@nas.lan:3493").with_reading("runtime_minutes", 10.0))
            .with_host("pve-01", true)
            .with_host("pve-02", false)
    }

    fn run(decider: &mut Decider, event: &Event, facts: &mut FactsSnapshot) -> Vec<Decided> {
        facts.apply(event);
        let mut out = Vec::new();
        let mut memo = ConditionMemo::default();
        decider.decide(
            &EventView::new(event),
            Utc::now(),
            facts,
            &mut memo,
            &|_| Ok(3),
            &mut out,
        );
        out
    }

    #[test]
    fn decide_fires_on_entering_checks_conditions_and_skips_mere_observers() {
        let mut decider = Decider::new();
        let battery = on(UpsState::OnBattery);
        assert!(decider.insert(id(1), 0, &battery, &[runtime_at_least(5.0)], "pve-01"));
        assert!(decider.insert(id(2), 0, &battery, &[runtime_at_least(50.0)], "pve-01"));
        assert!(decider.insert(id(3), 0, &on(UpsState::OnMains), &[], "pve-01"));
        assert!(!decider.insert(id(3), 0, &battery, &[], "pve-01"));
        let mut facts = facts();
        let decided = run(&mut decider, &ups("on_battery"), &mut facts);
        let verdicts: Vec<(Uuid, bool)> =
            decided.iter().map(|d| (d.policy_id, d.matched())).collect();
        assert_eq!(verdicts, [(id(1), true), (id(2), false)]);
        assert_eq!(
            decided[0].evaluation.explain(&battery, "ups1@nas.lan:3493"),
            "fired by trigger 0 (ups.state = on_battery)\n\
             trigger 0 (ups.state = on_battery): ups1@nas.lan:3493 entered on_battery\n"
        );
        // Staying on battery is not entering: shortlisted, not fired.
        let again = run(&mut decider, &ups("on_battery"), &mut facts);
        assert!(again.iter().all(|d| d.evaluation.fired.is_none()));
        // Back on mains: policy 3 fires; 1 and 2 only re-arm (observers).
        let mains = run(&mut decider, &ups("on_mains"), &mut facts);
        let ids: Vec<Uuid> = mains.iter().map(|d| d.policy_id).collect();
        assert_eq!(ids, [id(3)]);
        assert!(mains[0].matched());
    }

    #[test]
    fn run_order_is_priority_then_id_and_removal_frees_the_slot() {
        let mut decider = Decider::new();
        let battery = on(UpsState::OnBattery);
        for (n, priority) in [(5, 1), (2, 1), (9, 0)] {
            decider.insert(id(n), priority, &battery, &[], "pve-01");
        }
        let mut facts = facts();
        let order = |d: &[Decided]| d.iter().map(|d| d.policy_id).collect::<Vec<_>>();
        let first = run(&mut decider, &ups("on_battery"), &mut facts);
        assert_eq!(order(&first), [id(9), id(2), id(5)]);
        assert!(decider.remove(id(2)));
        assert!(!decider.remove(id(2)));
        assert_eq!(decider.len(), 2);
        // The freed slot is reused by a new policy with a fresh state.
        decider.insert(id(1), 1, &battery, &[], "pve-01");
        run(&mut decider, &ups("on_mains"), &mut facts);
        let second = run(&mut decider, &ups("on_battery"), &mut facts);
        assert_eq!(order(&second), [id(9), id(1), id(5)]);
        assert!(second.iter().all(Decided::matched));
    }

    #[test]
    fn a_condition_list_is_shared_only_where_its_answer_is_the_same() {
        let mut decider = Decider::new();
        let battery = on(UpsState::OnBattery);
        let reachable = [condition(Scope::Host, "reachable", Op::Eq, json!(true))];
        let count = [condition(Scope::Vm, "count_matching", Op::Ge, json!(1))];
        decider.insert(id(1), 0, &battery, &reachable, "pve-01");
        decider.insert(id(2), 0, &battery, &reachable, "pve-02");
        decider.insert(id(3), 0, &battery, &reachable, "pve-01");
        decider.insert(id(4), 0, &battery, &count, "pve-01");
        decider.insert(id(5), 0, &battery, &count, "pve-02");
        let mut facts = facts();
        facts.apply(&ups("on_battery"));
        let mut out = Vec::new();
        let mut memo = ConditionMemo::default();
        decider.decide(
            &EventView::new(&ups("on_battery")),
            Utc::now(),
            &facts,
            &mut memo,
            &|policy| Ok(if policy == id(4) { 2 } else { 0 }),
            &mut out,
        );
        let verdicts: Vec<bool> = out.iter().map(Decided::matched).collect();
        // pve-02 is unreachable; policy 5's selector matches nothing.
        assert_eq!(verdicts, [true, false, true, true, false]);
        let outcome = |n: usize| out[n].conditions.clone().expect("fired");
        assert!(Arc::ptr_eq(&outcome(0), &outcome(2)), "same host: shared");
        assert!(!Arc::ptr_eq(&outcome(0), &outcome(1)), "other host");
        assert!(!Arc::ptr_eq(&outcome(3), &outcome(4)), "vm: per policy");
        // Shared outcomes last one event only.
        let mut facts = facts.with_host("pve-01", false);
        decider.remove(id(2));
        decider.remove(id(5));
        run(&mut decider, &ups("on_mains"), &mut facts);
        let later = run(&mut decider, &ups("on_battery"), &mut facts);
        assert!(later.iter().take(2).all(|d| !d.matched()));
    }
}
