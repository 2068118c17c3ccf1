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

use super::timer::TimerTag;

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
}

/// One shortlisted policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRef {
    pub priority: i64,
    pub policy_id: Arc<str>,
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
    interest: Interest,
}

impl Entry {
    /// Priority ascending, then policy id ascending; `Fire` before `Observe`.
    fn run_order(&self) -> (i64, &str, Interest) {
        (self.priority, &self.policy_id, self.interest)
    }
}

/// How [`TriggerIndex::insert`] files one key: kind, discriminator, UPS filter.
type AddKey<'a> = dyn FnMut(EventKind, &str, Option<&str>, Interest) + 'a;

/// Registers a UPS-state trigger (or `since_event`) under every state: the
/// state it names with `entering` interest, all others as observers, since
/// any other state from the same UPS means it left the named one.
fn register_states(equals: UpsState, ups: Option<&str>, entering: Interest, add: &mut AddKey<'_>) {
    for state in UpsState::ALL {
        let interest = if state == equals {
            entering
        } else {
            Interest::Observe
        };
        add(EventKind::UpsState, state.as_str(), ups, interest);
    }
}

impl TriggerIndex {
    /// Builds the index from `(policy_id, priority, trigger group)` entries
    /// (the enabled policies).
    pub fn build<'a>(
        policies: impl IntoIterator<Item = (&'a str, i64, &'a TriggerGroup)>,
    ) -> TriggerIndex {
        let mut index = TriggerIndex::default();
        for (policy_id, priority, group) in policies {
            index.insert(policy_id, priority, group);
        }
        index
    }

    /// Adds one policy. A policy inserted twice is shortlisted once.
    pub fn insert(&mut self, policy_id: &str, priority: i64, group: &TriggerGroup) {
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
            // needs no sort (see `shortlist`).
            let entry = Entry {
                priority,
                policy_id: id.clone(),
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
        let disc: &str = match event.kind {
            EventKind::UpsState => match event.ups_state() {
                Some(state) => state.as_str(),
                None => return Vec::new(),
            },
            EventKind::MetricThreshold => match event.metric() {
                Some((name, _)) => name,
                None => return Vec::new(),
            },
            EventKind::WebhookCustom => match event.webhook_name() {
                Some(name) => name,
                None => return Vec::new(),
            },
            EventKind::TimerAt | EventKind::TimerAfter => match TimerTag::from_event(event) {
                Some(tag) => tag.policy_id,
                None => return Vec::new(),
            },
            EventKind::HostState => return Vec::new(),
        };
        let Some(bucket) = self.buckets.get(&event.kind).and_then(|b| b.get(disc)) else {
            return Vec::new();
        };
        let subject = event.subject.id.as_str();
        let mut found: Vec<&Entry> = bucket.any.iter().collect();
        if !bucket.by_ups.is_empty() {
            if let Some(list) = bucket.by_ups.get(subject) {
                found.extend(list);
            }
            if let Some((name, _)) = subject.split_once('@') {
                if let Some(list) = bucket.by_ups.get(name) {
                    found.extend(list);
                }
            }
        }
        // Each list is sorted already: a stable sort finds those runs and
        // only merges them (no sort at all for a single list).
        found.sort_by(|a, b| a.run_order().cmp(&b.run_order()));
        // `Fire` sorts before `Observe`, so the first entry of a policy wins.
        found.dedup_by(|later, earlier| later.policy_id == earlier.policy_id);
        found
            .into_iter()
            .map(|e| PolicyRef {
                priority: e.priority,
                policy_id: e.policy_id.clone(),
                interest: e.interest,
            })
            .collect()
    }
}
