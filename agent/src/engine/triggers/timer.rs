//! Countdowns and their delivery as internal timer events.
//!
//! Every deadline the trigger layer asks for (a `for` hold, a `timer.after`
//! delay) and every `timer.at` fire comes back into the engine as an ordinary
//! event on the bus, so a deadline runs through the same shortlist, trigger,
//! condition and explain path as a UPS or webhook event. The event names the
//! policy and trigger it belongs to in its attrs:
//!
//! | attr        | value                                              |
//! |-------------|----------------------------------------------------|
//! | `policy_id` | the policy the timer belongs to                    |
//! | `trigger`   | the index of the trigger in the policy's group     |
//! | `timer`     | `for` (a hold ran out), `after` or `at`            |
//! | `deadline`  | RFC 3339 instant the countdown was armed for       |
//!
//! `for` and `after` expiries are `timer.after` events ("a delay counted from
//! an event ran out") carrying the subject and correlation id of the event
//! that started the countdown; `timer.at` fires are `timer.at` events. A
//! stale expiry (its countdown was cancelled or re-armed meanwhile) is
//! recognised by its `deadline` and ignored, so cancelling a timer in the
//! queue is an optimisation, not a requirement for correctness.

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::engine::event::{Event, EventKind, Subject, SubjectKind};

/// What a countdown is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    /// A `for` hold of `ups.state` or `metric.threshold`.
    ForHold,
    /// A `timer.after` delay.
    After,
}

impl TimerKind {
    /// The `attrs.timer` value of the expiry event.
    pub fn as_str(self) -> &'static str {
        match self {
            TimerKind::ForHold => "for",
            TimerKind::After => "after",
        }
    }
}

/// A countdown to arm (or, in [`Evaluation::cancelled`](super::Evaluation),
/// one to disarm). Deliver [`TimerRequest::event`] onto the bus at `deadline`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerRequest {
    pub deadline: DateTime<Utc>,
    pub policy_id: String,
    pub trigger: usize,
    pub kind: TimerKind,
    /// The subject of the event that started the countdown (the UPS, the
    /// metric's source, the webhook).
    pub subject_kind: SubjectKind,
    pub subject_id: String,
    /// The correlation id of the event that started the countdown, so the
    /// run it eventually causes is traced back to it.
    pub correlation_id: Uuid,
}

impl TimerRequest {
    /// The `timer.after` event to publish when the deadline is reached.
    pub fn event(&self) -> Event {
        let mut attrs = Map::new();
        attrs.insert("policy_id".into(), Value::from(self.policy_id.clone()));
        attrs.insert("trigger".into(), Value::from(self.trigger));
        attrs.insert("timer".into(), Value::from(self.kind.as_str()));
        attrs.insert(
            "deadline".into(),
            Value::from(format_instant(self.deadline)),
        );
        Event {
            kind: EventKind::TimerAfter,
            subject: Subject {
                kind: self.subject_kind,
                id: self.subject_id.clone(),
            },
            attrs,
            ts: self.deadline,
            correlation_id: self.correlation_id,
        }
    }
}

/// The `timer.at` event to publish when trigger `trigger` of a policy is due
/// at `scheduled` (the instant [`next_fire`](super::next_fire) returned, or
/// the `due` of a [`MissedDecision`](super::MissedDecision)).
pub fn timer_at_event(policy_id: &str, trigger: usize, scheduled: DateTime<Utc>) -> Event {
    let mut attrs = Map::new();
    attrs.insert("policy_id".into(), Value::from(policy_id));
    attrs.insert("trigger".into(), Value::from(trigger));
    attrs.insert("timer".into(), Value::from("at"));
    attrs.insert("deadline".into(), Value::from(format_instant(scheduled)));
    Event {
        kind: EventKind::TimerAt,
        subject: Subject {
            kind: SubjectKind::Integration,
            id: "timer".into(),
        },
        attrs,
        ts: scheduled,
        correlation_id: Uuid::new_v4(),
    }
}

/// What a timer event says about itself (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerTag<'a> {
    pub policy_id: &'a str,
    pub trigger: usize,
    /// `None` for a `timer.at` fire.
    pub kind: Option<TimerKind>,
    pub deadline: Option<DateTime<Utc>>,
}

impl<'a> TimerTag<'a> {
    /// Reads the tag of a `timer.at` or `timer.after` event; `None` for other
    /// events and for timer events that name no policy.
    pub fn from_event(event: &'a Event) -> Option<TimerTag<'a>> {
        if !matches!(event.kind, EventKind::TimerAt | EventKind::TimerAfter) {
            return None;
        }
        let policy_id = event.attrs.get("policy_id")?.as_str()?;
        let trigger = usize::try_from(event.attrs.get("trigger")?.as_u64()?).ok()?;
        let kind = match (event.kind, event.attrs.get("timer").and_then(Value::as_str)) {
            (EventKind::TimerAt, _) => None,
            (EventKind::TimerAfter, Some("for")) => Some(TimerKind::ForHold),
            (EventKind::TimerAfter, _) => Some(TimerKind::After),
            _ => return None,
        };
        let deadline = event
            .attrs
            .get("deadline")
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc));
        Some(TimerTag {
            policy_id,
            trigger,
            kind,
            deadline,
        })
    }
}

/// Formats an instant losslessly, so a deadline survives the round trip
/// through an event's attrs and compares equal to the armed one.
pub(crate) fn format_instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Pending countdowns ordered by deadline: a plain data structure the engine
/// (or a test) drives with its own clock. Arm and cancel with an
/// [`Evaluation`](super::Evaluation)'s `timers` and `cancelled`, then publish
/// the events of [`TimerQueue::pop_due`].
#[derive(Debug, Default, Clone)]
pub struct TimerQueue {
    pending: BTreeSet<TimerRequest>,
}

impl TimerQueue {
    pub fn arm(&mut self, request: TimerRequest) {
        self.pending.insert(request);
    }

    pub fn cancel(&mut self, request: &TimerRequest) {
        self.pending.remove(request);
    }

    /// Cancels, then arms, what one evaluation asked for.
    pub fn apply(&mut self, evaluation: &super::Evaluation) {
        for request in evaluation.cancelled() {
            self.cancel(request);
        }
        for request in evaluation.timers() {
            self.arm(request.clone());
        }
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        self.pending.first().map(|r| r.deadline)
    }

    /// Removes and returns every countdown due at `now`, earliest first.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Vec<TimerRequest> {
        let mut due = Vec::new();
        while self.pending.first().is_some_and(|r| r.deadline <= now) {
            due.extend(self.pending.pop_first());
        }
        due
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}
