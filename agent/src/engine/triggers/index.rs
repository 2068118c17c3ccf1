//! The trigger index (SPEC §6 step 1): which policies can react to an event,
//! found by hash lookups on the event's kind, discriminator and UPS, never by
//! a scan of all policies.
//!
//! Each trigger registers the keys it needs. A key is the event kind plus a
//! discriminator (the entered UPS state, the metric name, the webhook name,
//! or for timer events the policy id the timer belongs to) plus an optional
//! UPS filter. A policy registers as [`Interest::Fire`] where the event can
//! make one of its triggers true and as [`Interest::Observe`] where the event
//! only moves its trigger state: a UPS leaving a state (which cancels a `for`
//! countdown or a `timer.after`) or the event a `timer.after` counts from.

use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::event::{Event, EventKind};
use crate::spec::{EventPattern, Trigger, TriggerGroup, UpsState};

use super::state::EventView;

/// Why a shortlisted policy must see the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Interest {
    /// The event can make one of the policy's triggers true: evaluate the
    /// triggers and, when they fire, the conditions.
    Fire,
    /// The event can only update the policy's trigger state (cancel or start
    /// a countdown); it can never fire the policy. Evaluate the triggers so
    /// the state moves, and skip conditions and audit.
    Observe,
    /// Like [`Interest::Observe`], but the event can only make the policy
    /// stop tracking a subject (a UPS left the state a trigger waits in):
    /// a policy that tracks nothing is untouched by it and may be skipped.
    Leave,
}

/// One shortlisted policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRef {
    pub priority: i64,
    pub policy_id: Arc<str>,
    pub interest: Interest,
}

/// One shortlisted policy by the slot number it was inserted with
/// ([`TriggerIndex::insert_slot`]): what the engine's hot path reads, with
/// no id to copy or compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub slot: u32,
    pub interest: Interest,
}

/// Hash index from (event kind, discriminator, UPS filter) to policies.
#[derive(Debug, Default)]
pub struct TriggerIndex {
    buckets: HashMap<EventKind, HashMap<Box<str>, Bucket>>,
    policies: usize,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Triggers without a UPS filter: every subject.
    any: Vec<Entry>,
    /// Triggers with `ups: <name or full id>`, keyed by that filter.
    by_ups: HashMap<Box<str>, Vec<Entry>>,
}

#[derive(Debug, Clone)]
struct Entry {
    priority: i64,
    policy_id: Arc<str>,
    slot: u32,
    interest: Interest,
}

impl Entry {
    /// Priority ascending, then policy id ascending.
    fn run_order(&self) -> (i64, &str) {
        (self.priority, &self.policy_id)
    }

    fn hit(&self) -> Hit {
        Hit {
            slot: self.slot,
            interest: self.interest,
        }
    }
}

/// How [`TriggerIndex::insert`] files one key: kind, discriminator, UPS filter.
type AddKey<'a> = dyn FnMut(EventKind, &str, Option<&str>, Interest) + 'a;

/// Registers a UPS-state trigger (or `since_event`): the state it names
/// with `entering` interest, and as [`Interest::Leave`] every state whose
/// event means the UPS left the named one ([`UpsState::ends`]: the other
/// power source, or for a condition either power source).
fn register_states(equals: UpsState, ups: Option<&str>, entering: Interest, add: &mut AddKey<'_>) {
    for state in UpsState::ALL {
        if state == equals {
            add(EventKind::UpsState, state.as_str(), ups, entering);
        } else if state.ends(equals) {
            add(EventKind::UpsState, state.as_str(), ups, Interest::Leave);
        }
    }
}

impl TriggerIndex {
    /// Builds the index from `(policy_id, priority, trigger group)` entries
    /// (the enabled policies), numbering their slots in order.
    pub fn build<'a>(
        policies: impl IntoIterator<Item = (&'a str, i64, &'a TriggerGroup)>,
    ) -> TriggerIndex {
        let mut index = TriggerIndex::default();
        for (policy_id, priority, group) in policies {
            index.insert(policy_id, priority, group);
        }
        index
    }

    /// Adds one policy under the next slot number.
    pub fn insert(&mut self, policy_id: &str, priority: i64, group: &TriggerGroup) {
        let slot = u32::try_from(self.policies).unwrap_or(u32::MAX);
        self.insert_slot(policy_id, slot, priority, group);
    }

    /// Adds one policy under the caller's `slot` number, which
    /// [`TriggerIndex::shortlist_hits`] hands back. A policy whose triggers
    /// register the same key twice is filed there once, with its strongest
    /// interest, so no shortlist drawn from one list needs a dedup.
    pub fn insert_slot(&mut self, policy_id: &str, slot: u32, priority: i64, group: &TriggerGroup) {
        let id: Arc<str> = Arc::from(policy_id);
        let mut add = |kind: EventKind, disc: &str, ups: Option<&str>, interest: Interest| {
            let bucket = self
                .buckets
                .entry(kind)
                .or_default()
                .entry(disc.into())
                .or_default();
            let list = match ups {
                None => &mut bucket.any,
                Some(filter) => bucket.by_ups.entry(filter.into()).or_default(),
            };
            // Lists stay in run order, so a shortlist drawn from one list
            // needs no sort (see `shortlist_hits`).
            if let Some(known) = list.iter_mut().find(|e| e.slot == slot) {
                known.interest = known.interest.min(interest);
                return;
            }
            let entry = Entry {
                priority,
                policy_id: id.clone(),
                slot,
                interest,
            };
            let at = list.partition_point(|e| e.run_order() <= entry.run_order());
            list.insert(at, entry);
        };
        for trigger in &group.triggers {
            match trigger {
                Trigger::UpsState { equals, for_s, ups } => {
                    register_states(*equals, ups.as_deref(), Interest::Fire, &mut add);
                    if for_s.is_some_and(|s| s > 0) {
                        add(EventKind::TimerAfter, policy_id, None, Interest::Fire);
                    }
                }
                Trigger::MetricThreshold {
                    metric, for_s, ups, ..
                } => {
                    add(
                        EventKind::MetricThreshold,
                        metric,
                        ups.as_deref(),
                        Interest::Fire,
                    );
                    if for_s.is_some_and(|s| s > 0) {
                        add(EventKind::TimerAfter, policy_id, None, Interest::Fire);
                    }
                }
                Trigger::TimerAt { .. } => add(EventKind::TimerAt, policy_id, None, Interest::Fire),
                Trigger::TimerAfter { since_event, .. } => {
                    add(EventKind::TimerAfter, policy_id, None, Interest::Fire);
                    match since_event {
                        EventPattern::UpsState { equals, ups } => {
                            register_states(*equals, ups.as_deref(), Interest::Observe, &mut add)
                        }
                        EventPattern::WebhookCustom { name } => {
                            add(EventKind::WebhookCustom, name, None, Interest::Observe)
                        }
                    }
                }
                Trigger::WebhookCustom { name } => {
                    add(EventKind::WebhookCustom, name, None, Interest::Fire)
                }
            }
        }
        self.policies += 1;
    }

    /// How many policies were inserted.
    pub fn len(&self) -> usize {
        self.policies
    }

    pub fn is_empty(&self) -> bool {
        self.policies == 0
    }

    /// The policies that must see `event`, each once (with its strongest
    /// interest), ordered by priority ascending, then policy id ascending.
    pub fn shortlist(&self, event: &Event) -> Vec<PolicyRef> {
        let mut entries = Vec::new();
        self.shortlist_entries(&EventView::new(event), &mut entries);
        entries
            .into_iter()
            .map(|e| PolicyRef {
                priority: e.priority,
                policy_id: e.policy_id.clone(),
                interest: e.interest,
            })
            .collect()
    }

    /// [`TriggerIndex::shortlist`] by slot, into a buffer the caller reuses
    /// (cleared first): the engine's per-event path.
    pub fn shortlist_hits(&self, view: &EventView<'_>, out: &mut Vec<Hit>) {
        out.clear();
        let Some(bucket) = self.bucket(view) else {
            return;
        };
        let (named, by_name) = self.ups_lists(bucket, view);
        match (named, by_name) {
            // The common case: one list, already in run order and free of
            // duplicates.
            (None, None) => out.extend(bucket.any.iter().map(Entry::hit)),
            (Some(list), None) | (None, Some(list)) if bucket.any.is_empty() => {
                out.extend(list.iter().map(Entry::hit))
            }
            _ => {
                let mut entries = Vec::new();
                self.shortlist_entries(view, &mut entries);
                out.extend(entries.into_iter().map(Entry::hit));
            }
        }
    }

    /// The bucket of the event's kind and discriminator.
    fn bucket(&self, view: &EventView<'_>) -> Option<&Bucket> {
        let event = view.event;
        let disc: &str = match event.kind {
            EventKind::UpsState => view.ups_state()?.as_str(),
            EventKind::MetricThreshold => view.metric()?.0,
            EventKind::WebhookCustom => view.webhook_name()?,
            EventKind::TimerAt | EventKind::TimerAfter => view.timer_tag()?.policy_id,
            EventKind::HostState => return None,
        };
        self.buckets.get(&event.kind)?.get(disc)
    }

    /// The lists filed under a UPS filter that names the event's subject:
    /// by its full id, and by its name part.
    fn ups_lists<'b>(
        &self,
        bucket: &'b Bucket,
        view: &EventView<'_>,
    ) -> (Option<&'b Vec<Entry>>, Option<&'b Vec<Entry>>) {
        if bucket.by_ups.is_empty() {
            return (None, None);
        }
        let subject = view.event.subject.id.as_str();
        let named = bucket.by_ups.get(subject);
        let by_name = subject
            .split_once('@')
            .and_then(|(name, _)| bucket.by_ups.get(name));
        (named, by_name)
    }

    /// Every entry that must see the event, merged into run order and
    /// deduplicated (the general case of [`TriggerIndex::shortlist_hits`]).
    fn shortlist_entries<'b>(&'b self, view: &EventView<'_>, found: &mut Vec<&'b Entry>) {
        let Some(bucket) = self.bucket(view) else {
            return;
        };
        found.extend(&bucket.any);
        let (named, by_name) = self.ups_lists(bucket, view);
        found.extend(named.into_iter().flatten());
        found.extend(by_name.into_iter().flatten());
        // Each list is sorted already: a stable sort finds those runs and
        // only merges them (no sort at all for a single list). `Fire` sorts
        // before `Observe`, so the first entry of a policy wins the dedup.
        found.sort_by(|a, b| (a.run_order(), a.interest).cmp(&(b.run_order(), b.interest)));
        found.dedup_by(|later, earlier| later.policy_id == earlier.policy_id);
    }
}
