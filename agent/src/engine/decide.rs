//! The in-memory decision for one event (SPEC §6 steps 1–3): which policies
//! the event concerns, in run order, and for each whether its triggers fired
//! and its conditions hold. Nothing here reads or writes the store, so this
//! is the part of event handling whose speed is measured on its own
//! (`agent/benches/decide.rs`); windows, re-resolution, guards and
//! persistence (steps 4–10) follow in the runner for the policies that
//! matched.
//!
//! The [`Decider`] is what the engine holds: the loaded policies' triggers
//! and conditions in numbered slots, their trigger states, and the trigger
//! index filed by slot. One event costs one pass over the shortlist with no
//! id parsed, hashed or copied:
//!
//! - the event is read once into an [`EventView`] that every policy shares;
//! - the index hands back slot numbers, already in run order;
//! - policies with equal trigger groups share one copy of the group, and
//!   while their trigger states are equal too (the common case: they saw
//!   the same events since they were loaded) they *follow* one state kept
//!   with the group, which is evaluated once per event; each follower takes
//!   that verdict with its countdowns renamed to it
//!   ([`Evaluation::for_policy`]). A policy whose state differs (a timer
//!   addressed to it alone, a state restored or reverted by the runner, a
//!   run that stopped before reaching it) gets a state of its own, and
//!   follows its group again once the two are equal at the end of an event;
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
//! One event is [`Decider::begin`] (the shortlist), then
//! [`Decider::advance`] for the shortlisted policies in order (the unit the
//! runner interleaves with its own steps 4–10: a later policy must see what
//! an earlier one recorded), then [`Decider::end`] with the policies the run
//! did not reach (`stop_on_match`, an error), which keep the state they had.
//! [`Decider::decide`] is all three for a whole shortlist. Every policy's
//! state, verdict and countdowns are exactly those of evaluating it alone
//! ([`Decider::decide_one`], which a dry-run uses on a copy of the state);
//! `agent/tests/decide_props.rs` checks that against the plain composition.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::conditions::{self, ConditionOutcome, Facts, Lookup, PolicyContext};
use super::triggers::{Evaluation, EventView, Hit, Interest, TriggerIndex, TriggerState};
use crate::spec::{Condition, Scope, TriggerGroup};

/// What the decision reads of one loaded policy for every event that
/// shortlists it: small, so that one event's policies cost few cache lines.
#[derive(Debug)]
struct Slot {
    id: Uuid,
    priority: i64,
    /// The trigger group, in the shared table.
    group: u32,
    /// The shared condition list, or [`PER_POLICY`] when it must be
    /// evaluated per policy (it has a `vm` condition).
    list: u32,
    /// The policy's own trigger state; `None` while it follows its group's.
    own: Option<Box<TriggerState>>,
    /// The last event that [`Decider::advance`]d this policy: a follower
    /// not yet advanced in an event that moved its group still has the
    /// group's state from before the event.
    seen: u64,
    /// Read only for a fired policy or one with a state of its own, so kept
    /// out of the slot's cache line.
    details: Box<Details>,
}

/// [`Slot::list`] of a condition list evaluated per policy.
const PER_POLICY: u32 = u32::MAX;

/// What only a fired policy's conditions, or its own evaluation, read.
#[derive(Debug)]
struct Details {
    /// The policy id as text: timer tags and countdowns name policies so.
    id_text: Box<str>,
    conditions: Vec<Condition>,
    /// `targets.host_id`, the host `host.reachable` conditions are about.
    host_id: String,
}

/// One trigger group, shared by the policies that have it, and the state
/// its followers share (see the module docs).
#[derive(Debug)]
struct Group {
    group: TriggerGroup,
    /// The trigger state of every policy of this group that follows it.
    state: TriggerState,
    followers: u32,
    /// This event's step of `state`, valid while `event` is the decider's:
    /// the state before it (kept only when the group has more than one
    /// follower: only another follower can read it), the verdict, and the
    /// policy whose id the verdict's countdowns carry.
    event: u64,
    before: TriggerState,
    evaluation: Arc<Evaluation>,
    evaluated_for: Uuid,
    /// Whether `state` tracks a subject (see [`Decider::tracking`]).
    tracking: bool,
}

impl Group {
    fn new(group: &TriggerGroup) -> Group {
        Group {
            group: group.clone(),
            state: TriggerState::default(),
            followers: 0,
            event: 0,
            before: TriggerState::default(),
            evaluation: Arc::default(),
            evaluated_for: Uuid::nil(),
            tracking: false,
        }
    }
}

/// The policies' triggers, conditions and trigger states, and the index
/// over them (see the module docs).
#[derive(Debug, Default)]
pub struct Decider {
    index: TriggerIndex,
    slots: Vec<Option<Slot>>,
    groups: Shared<Group>,
    ids: HashMap<Uuid, u32>,
    free: Vec<u32>,
    /// Condition lists by [`shared_key`]; the outcomes live in a
    /// [`ConditionMemo`].
    lists: Shared<()>,
    /// The shortlist buffer of [`Decider::decide`], reused from event to
    /// event.
    hits: Vec<Hit>,
    /// One bit per slot: set when the policy's trigger state tracks a
    /// subject. An [`Interest::Leave`] hit on a policy that tracks nothing
    /// would evaluate to nothing, so [`Decider::shortlist`] drops it
    /// without reading the policy at all.
    tracking: Vec<u64>,
    /// The number of the event being decided ([`Decider::begin`]).
    event: u64,
    /// Slots with a state of their own that this event moved or set: each
    /// follows its group again at [`Decider::end`] if their states are
    /// equal then.
    touched: Vec<u32>,
    /// The shortlist of the event being decided, and how far into it
    /// [`Decider::advance`] has come; `None` between events.
    open: Option<(Vec<Hit>, usize)>,
    /// The buffer of `open` between events.
    spare: Vec<Hit>,
}

/// Step 3's verdict on one shortlisted policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    pub policy_id: Uuid,
    pub priority: i64,
    pub interest: Interest,
    /// The trigger group's verdict, with its reasons and countdowns
    /// (shared by the policies that follow one group state).
    pub evaluation: Arc<Evaluation>,
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

/// What step 3 reads of the event at hand, the same for every policy.
struct Step<'a, 'e> {
    view: &'a EventView<'e>,
    now: DateTime<Utc>,
    /// The facts, with the event applied.
    facts: &'a dyn Facts,
    /// `vm.count_matching` for the policy being decided.
    count_matching: &'a dyn Fn() -> Result<usize, String>,
}

impl Step<'_, '_> {
    /// A trigger group's verdict on the event, moving `state`.
    fn evaluate(&self, state: &mut TriggerState, policy: &str, group: &TriggerGroup) -> Evaluation {
        let facts = self.facts;
        state.evaluate_view(policy, group, self.view, self.now, |ups, state| match facts
            .ups(Some(ups))
        {
            Lookup::Found(u) => u.is_in(state),
            _ => None,
        })
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
        // Slot numbers are about to change meaning: an event still open
        // ends first.
        self.end();
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 policies")
            }
        };
        let list = shared_key(conditions, host_id)
            .map_or(PER_POLICY, |key| self.lists.acquire(key, || ()));
        let number = self.groups.acquire(group_key(group), || Group::new(group));
        let id_text: Box<str> = id.to_string().into();
        self.index.insert_slot(&id_text, slot, priority, group);
        self.slots[slot as usize] = Some(Slot {
            id,
            priority,
            group: number,
            list,
            own: Some(Box::default()),
            seen: self.event,
            details: Box::new(Details {
                id_text,
                conditions: conditions.to_vec(),
                host_id: host_id.to_string(),
            }),
        });
        self.set_tracking(slot, false);
        self.ids.insert(id, slot);
        // Its state starts empty: it follows its group if the group's is
        // empty too (or nobody follows the group).
        self.rejoin(slot);
        true
    }

    /// Unloads a policy and its trigger state; `false` if it was not loaded.
    pub fn remove(&mut self, id: Uuid) -> bool {
        if !self.ids.contains_key(&id) {
            return false;
        }
        self.end();
        let Some(slot) = self.ids.remove(&id) else {
            return false;
        };
        if let Some(entry) = self.slots[slot as usize].take() {
            if entry.own.is_none() {
                self.groups.get_mut(entry.group).followers -= 1;
            }
            self.groups.release(entry.group);
            if entry.list != PER_POLICY {
                self.lists.release(entry.list);
            }
        }
        self.set_tracking(slot, false);
        self.free.push(slot);
        // The index has no removal: rebuilt from the remaining slots.
        let mut index = TriggerIndex::default();
        for (n, entry) in self.slots.iter().enumerate() {
            if let Some(e) = entry {
                let group = &self.groups.get(e.group).group;
                index.insert_slot(&e.details.id_text, n as u32, e.priority, group);
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
        self.slot_state(*slot)
    }

    /// The trigger state of a shortlisted policy (`None` for a slot freed
    /// since).
    pub fn hit_state(&self, hit: Hit) -> Option<&TriggerState> {
        self.slot_state(hit.slot)
    }

    fn slot_state(&self, n: u32) -> Option<&TriggerState> {
        let slot = self.slots[n as usize].as_ref()?;
        let group = self.groups.get(slot.group);
        let open = self.open.is_some();
        Some(match &slot.own {
            Some(own) => own,
            None if open && group.event == self.event && slot.seen != self.event => &group.before,
            None => &group.state,
        })
    }

    /// Replaces the trigger state of a loaded policy (restored from the
    /// store, or put back after the store refused what an event implied);
    /// `false` (and nothing kept) when it is not loaded.
    pub fn set_state(&mut self, id: Uuid, state: TriggerState) -> bool {
        let Some(&n) = self.ids.get(&id) else {
            return false;
        };
        self.set_tracking(n, state.tracking() > 0);
        let Some(slot) = self.slots[n as usize].as_mut() else {
            return false;
        };
        let group = self.groups.get_mut(slot.group);
        if slot.own.is_none() {
            group.followers -= 1;
        }
        slot.own = Some(Box::new(state));
        // Equal states are equal whenever they are compared; while an
        // event is open, a policy it has not decided yet waits for its end
        // (see `rejoin`).
        self.rejoin(n);
        true
    }

    /// Makes the policy in slot `n`, which has a state of its own, follow
    /// its group again if their states are equal (or nobody follows the
    /// group: it takes the policy's state).
    fn rejoin(&mut self, n: u32) {
        let Some(slot) = self.slots[n as usize].as_mut() else {
            return;
        };
        let group = self.groups.get_mut(slot.group);
        if self.open.is_some() && group.event == self.event && slot.seen != self.event {
            // Its group moved in the open event, which has not decided this
            // policy yet: following now would hand it a verdict computed
            // from another state. It rejoins when the event ends.
            self.touched.push(n);
            return;
        }
        let joins = match &slot.own {
            None => return,
            Some(own) => group.followers == 0 || **own == group.state,
        };
        if !joins {
            return;
        }
        // It has the group's state as it is now, whatever moved it in this
        // event.
        slot.seen = self.event;
        if let Some(own) = slot.own.take() {
            if group.followers == 0 {
                group.tracking = own.tracking() > 0;
                group.state = *own;
                group.event = 0;
            }
        }
        group.followers += 1;
    }

    /// Gives the policy in slot `n`, which follows its group, a state of
    /// its own: the one [`Decider::state`] says it has.
    fn leave_group(&mut self, n: u32) {
        let event = self.event;
        let Some(slot) = self.slots[n as usize].as_mut() else {
            return;
        };
        if slot.own.is_some() {
            return;
        }
        let group = self.groups.get_mut(slot.group);
        let state = if group.event == event && slot.seen != event {
            group.before.clone()
        } else {
            group.state.clone()
        };
        group.followers -= 1;
        let tracking = state.tracking() > 0;
        slot.own = Some(Box::new(state));
        self.set_tracking(n, tracking);
    }

    fn is_tracking(&self, slot: u32) -> bool {
        let (word, bit) = (slot as usize / 64, slot % 64);
        self.tracking.get(word).is_some_and(|w| w & (1 << bit) != 0)
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

    /// Starts deciding the event in `view`: its shortlist ([`Decider::shortlist`])
    /// into `out`, to be passed to [`Decider::advance`] in order and closed
    /// with [`Decider::end`].
    pub fn begin(&mut self, view: &EventView<'_>, out: &mut Vec<Hit>) {
        // An event nobody closed (its run was abandoned) ends here, with
        // the policies it did not reach as they were.
        self.end();
        self.event += 1;
        self.touched.clear();
        self.shortlist(view, out);
        let mut open = std::mem::take(&mut self.spare);
        open.clone_from(out);
        self.open = Some((open, 0));
    }

    /// Step 3 for one policy of the shortlist [`Decider::begin`] gave, in
    /// order: its triggers against the event at `now`, moving its trigger
    /// state, then, when they fired, its conditions against `facts` (which
    /// must already include the event). `count_matching` answers
    /// `vm.count_matching` for this policy. `None` for an observer the
    /// event only moved (nothing to record) and for a freed slot.
    #[allow(clippy::too_many_arguments)]
    pub fn advance(
        &mut self,
        hit: Hit,
        view: &EventView<'_>,
        now: DateTime<Utc>,
        facts: &dyn Facts,
        memo: &mut ConditionMemo,
        count_matching: &dyn Fn() -> Result<usize, String>,
    ) -> Option<Decided> {
        let n = hit.slot;
        let at = self.open.as_ref().and_then(|(hits, reached)| {
            let at = hits[*reached..].iter().position(|&h| h == hit)?;
            Some((*reached, reached + at))
        });
        let alone = match at {
            Some((from, at)) => {
                // Policies skipped on the way (a caller's choice) are not
                // decided in this event: they keep the state they have.
                for i in from..at {
                    let skipped = self.open.as_ref().map(|(hits, _)| hits[i].slot);
                    if let Some(skipped) = skipped {
                        self.leave_group(skipped);
                        self.touched.push(skipped);
                    }
                }
                if let Some((_, reached)) = &mut self.open {
                    *reached = at + 1;
                }
                // A timer names one policy: it moves that policy's state
                // alone.
                view.timer_tag().is_some()
            }
            None => {
                // Not the open event's (a caller's mistake): decided as an
                // event of its own, on this policy's state alone.
                debug_assert!(false, "{hit:?} is not next in the open shortlist");
                self.end();
                self.event += 1;
                self.open = Some((vec![hit], 1));
                true
            }
        };
        if alone {
            self.leave_group(n);
        }
        let step = Step {
            view,
            now,
            facts,
            count_matching,
        };
        let event = self.event;
        let slot = self.slots[n as usize].as_mut()?;
        slot.seen = event;
        let (evaluation, tracking) = match &mut slot.own {
            Some(own) => {
                let evaluation = step.evaluate(
                    own,
                    &slot.details.id_text,
                    &self.groups.get(slot.group).group,
                );
                self.touched.push(n);
                let observed = evaluation.fired.is_none() && hit.interest != Interest::Fire;
                (
                    Some(Arc::new(evaluation)).filter(|_| !observed),
                    own.tracking() > 0,
                )
            }
            None => {
                let group = self.groups.get_mut(slot.group);
                if group.event != event {
                    // The state before the event is read only for the other
                    // followers (not yet advanced, or never if the run stops
                    // first); a policy that joins later has the state after.
                    if group.followers > 1 {
                        group.before.clone_from(&group.state);
                    }
                    group.evaluation = Arc::new(step.evaluate(
                        &mut group.state,
                        &slot.details.id_text,
                        &group.group,
                    ));
                    group.evaluated_for = slot.id;
                    group.tracking = group.state.tracking() > 0;
                    group.event = event;
                }
                let shared = &group.evaluation;
                let evaluation = if shared.fired.is_none() && hit.interest != Interest::Fire {
                    // An observer's move: no verdict to hand out.
                    None
                } else if shared.has_countdowns() && group.evaluated_for != slot.id {
                    Some(Arc::new(shared.for_policy(&slot.details.id_text)))
                } else {
                    Some(shared.clone())
                };
                (evaluation, group.tracking)
            }
        };
        self.set_tracking(n, tracking);
        let slot = self.slots[n as usize].as_ref()?;
        verdict(slot, hit, evaluation?, &step, memo)
    }

    /// Closes the event [`Decider::begin`] started. The shortlisted
    /// policies after the last one [`Decider::advance`]d (the run stopped
    /// on a match, or on an error) keep the states they had before the
    /// event. Nothing to do between events.
    pub fn end(&mut self) {
        let Some((hits, reached)) = self.open.take() else {
            return;
        };
        let unreached = &hits[reached.min(hits.len())..];
        for hit in unreached {
            let moved = self.slots[hit.slot as usize]
                .as_ref()
                .is_some_and(|s| s.own.is_none() && self.groups.get(s.group).event == self.event);
            if moved {
                self.leave_group(hit.slot);
            }
        }
        let touched = std::mem::take(&mut self.touched);
        for &n in &touched {
            self.rejoin(n);
        }
        for &hit in unreached {
            self.rejoin(hit.slot);
        }
        self.touched = touched;
        self.touched.clear();
        // The buffer is kept for the next event.
        self.open = None;
        self.spare = hits;
    }

    /// Step 3 for one shortlisted policy on a state of the caller's (a
    /// dry-run's copy of [`Decider::state`]), changing nothing here: the
    /// verdict [`Decider::advance`] would give on that state.
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
        let group = &self.groups.get(slot.group).group;
        let evaluation = step.evaluate(state, &slot.details.id_text, group);
        if evaluation.fired.is_none() && hit.interest != Interest::Fire {
            return None;
        }
        verdict(slot, hit, Arc::new(evaluation), &step, memo)
    }

    /// Steps 1–3 for the event in `view`: [`Decider::begin`], every
    /// shortlisted policy [`Decider::advance`]d, [`Decider::end`]; the
    /// verdicts appended to `out` in run order. `facts` must already
    /// include the event; `count_matching` answers `vm.count_matching` by
    /// policy id.
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
        self.begin(view, &mut hits);
        for &hit in &hits {
            let Some(id) = self.policy_id(hit) else {
                continue;
            };
            let count = || count_matching(id);
            out.extend(self.advance(hit, view, now, facts, memo, &count));
        }
        self.end();
        self.hits = hits;
    }
}

/// The rest of step 3 once a policy's triggers are evaluated: its
/// conditions if they fired (shared through `memo` when the list is).
fn verdict(
    slot: &Slot,
    hit: Hit,
    evaluation: Arc<Evaluation>,
    step: &Step<'_, '_>,
    memo: &mut ConditionMemo,
) -> Option<Decided> {
    let conditions = evaluation.fired.map(|_| {
        let evaluate = || {
            let details = &slot.details;
            let ctx = PolicyContext {
                host_id: &details.host_id,
                count_matching: step.count_matching,
            };
            Arc::new(conditions::evaluate(
                &details.conditions,
                step.view.event,
                step.facts,
                &ctx,
            ))
        };
        match slot.list {
            PER_POLICY => evaluate(),
            list => memo.get_or_insert(list, evaluate),
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

    /// The value of a live entry, to change.
    fn get_mut(&mut self, n: u32) -> &mut T {
        match &mut self.entries[n as usize] {
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

    #[test]
    fn policies_with_equal_groups_and_states_share_one_evaluation_until_they_differ() {
        let mut decider = Decider::new();
        let battery = on(UpsState::OnBattery);
        for n in 1..=3 {
            decider.insert(id(n), 0, &battery, &[], "pve-01");
        }
        let mut facts = facts();
        let first = run(&mut decider, &ups("on_battery"), &mut facts);
        assert!(Arc::ptr_eq(&first[0].evaluation, &first[1].evaluation));
        assert!(Arc::ptr_eq(&first[1].evaluation, &first[2].evaluation));
        // Policy 3's state is restored to empty (as after a restart with a
        // lost record): it has a state of its own and is evaluated alone.
        assert!(decider.set_state(id(3), TriggerState::default()));
        assert_ne!(decider.state(id(3)), decider.state(id(1)));
        let again = run(&mut decider, &ups("on_battery"), &mut facts);
        let fired: Vec<bool> = again.iter().map(|d| d.evaluation.fired.is_some()).collect();
        assert_eq!(fired, [false, false, true]);
        assert!(Arc::ptr_eq(&again[0].evaluation, &again[1].evaluation));
        assert!(!Arc::ptr_eq(&again[1].evaluation, &again[2].evaluation));
        // Policy 3 entered later than the others (its state says since
        // when): still its own. Back on mains none tracks anything: equal
        // states, one evaluation again.
        assert_ne!(decider.state(id(3)), decider.state(id(1)));
        run(&mut decider, &ups("on_mains"), &mut facts);
        assert_eq!(decider.state(id(3)), decider.state(id(1)));
        let third = run(&mut decider, &ups("on_battery"), &mut facts);
        assert!(third
            .iter()
            .all(|d| Arc::ptr_eq(&d.evaluation, &third[0].evaluation)));
        assert!(third.iter().all(Decided::matched));
    }

    #[test]
    fn a_state_set_mid_event_on_a_policy_not_yet_decided_is_decided_on_that_state() {
        // Policies 1 and 2 follow one state. The event moves it through
        // policy 1; policy 2 is then given the state after the event
        // (as a caller may) before its turn: it has already entered, so
        // the event is not its edge.
        let mut decider = Decider::new();
        let battery = on(UpsState::OnBattery);
        decider.insert(id(1), 0, &battery, &[], "pve-01");
        decider.insert(id(2), 1, &battery, &[], "pve-01");
        let mut facts = facts();
        let event = ups("on_battery");
        facts.apply(&event);
        let view = EventView::new(&event);
        let mut memo = ConditionMemo::default();
        memo.next_event();
        let mut hits = Vec::new();
        decider.begin(&view, &mut hits);
        let now = Utc::now();
        let count = || Ok(0);
        let first = decider
            .advance(hits[0], &view, now, &facts, &mut memo, &count)
            .expect("fired");
        assert!(first.evaluation.fired.is_some());
        let after = decider.state(id(1)).cloned().expect("loaded");
        assert!(decider.set_state(id(2), after.clone()));
        let second = decider
            .advance(hits[1], &view, now, &facts, &mut memo, &count)
            .expect("a Fire hit gives a verdict");
        assert_eq!(second.evaluation.fired, None, "already on battery");
        decider.end();
        assert_eq!(decider.state(id(2)), Some(&after));
        assert_eq!(decider.state(id(1)), decider.state(id(2)));
    }
}
