//! Per-policy trigger state and the trigger semantics of SPEC §2, as a pure
//! state machine: an event and the current time in, whether the policy fired
//! (and why, or why not) and which countdowns to arm or cancel out.
//!
//! The state is kept per trigger and per subject (each UPS, each metric
//! source counts on its own) and only while it matters: a UPS is tracked
//! while it is in the trigger's state, a metric while its comparison holds, a
//! `timer.after` while it counts. It serializes to JSON so the store can
//! persist it with the policy; after a restart [`TriggerState::pending_timers`]
//! re-arms the countdowns. State belongs to one version of a policy: when the
//! policy's hash changes, start from [`TriggerState::default`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::engine::event::{ups_matches, Event, EventKind, SubjectKind};
use crate::spec::{EventPattern, Logic, Schedule, Trigger, TriggerGroup, UpsState};

use super::timer::{TimerKind, TimerRequest, TimerTag};

/// The outcome of evaluating one policy's trigger group against one event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Evaluation {
    /// Set when the policy fires on this event.
    pub fired: Option<FiredBy>,
    /// Which trigger fired, or why none did, in one line per trigger touched.
    pub explain: String,
    /// Countdowns to arm; deliver each one's [`TimerRequest::event`] when due.
    pub timers: Vec<TimerRequest>,
    /// Countdowns that no longer apply; their expiry would be ignored anyway.
    pub cancelled: Vec<TimerRequest>,
}

/// The trigger that made the policy fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FiredBy {
    /// Index into the policy's `trigger_group.triggers`.
    pub trigger: usize,
}

/// Runtime state of one policy's triggers (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TriggerState {
    /// Indexed like the policy's triggers.
    triggers: Vec<PerTrigger>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
struct PerTrigger {
    /// Keyed by subject id.
    subjects: BTreeMap<String, Tracked>,
}

/// One subject a trigger tracks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Tracked {
    subject_kind: String,
    /// When the UPS entered the state, the comparison became true, or the
    /// `timer.after` started counting.
    since: DateTime<Utc>,
    /// The pending countdown, if any.
    deadline: Option<DateTime<Utc>>,
    /// The edge was delivered (the `for` hold ran out, the delay elapsed).
    fired: bool,
    correlation_id: Uuid,
}

/// What one trigger made of one event.
enum Outcome {
    /// Nothing to say: the event is not about this trigger.
    Untouched,
    /// The event moved the state but did not make the trigger true.
    Noted(String),
    /// The event made the trigger true.
    BecameTrue(String),
}

impl TriggerState {
    /// Evaluates `event` against `group` (the triggers of policy `policy_id`)
    /// at `now`. `facts_ups_state` reads the current state of a UPS (by
    /// subject id, or by the name or id a trigger's `ups` filter gives); it
    /// lets `ALL` see a UPS that was already in a state when the policy
    /// started tracking, and keeps a stale tracked state from counting.
    pub fn evaluate(
        &mut self,
        policy_id: &str,
        group: &TriggerGroup,
        event: &Event,
        now: DateTime<Utc>,
        facts_ups_state: impl Fn(&str) -> Option<UpsState>,
    ) -> Evaluation {
        self.triggers
            .resize_with(group.triggers.len(), PerTrigger::default);
        let tag = TimerTag::from_event(event).filter(|t| t.policy_id == policy_id);
        let mut eval = Evaluation::default();
        let mut became_true = Vec::new();
        let mut notes = String::new();
        for (i, trigger) in group.triggers.iter().enumerate() {
            let ctx = Ctx {
                policy_id,
                trigger: i,
                event,
                now,
                tag: tag.filter(|t| t.trigger == i),
            };
            let outcome = self.triggers[i].step(trigger, &ctx, &facts_ups_state, &mut eval);
            match outcome {
                Outcome::Untouched => {}
                Outcome::Noted(text) => {
                    let _ = writeln!(notes, "trigger {i} ({}): {text}", Describe(trigger));
                }
                Outcome::BecameTrue(text) => {
                    let _ = writeln!(notes, "trigger {i} ({}): {text}", Describe(trigger));
                    became_true.push(i);
                }
            }
        }
        let fired = match group.logic {
            Logic::Any => became_true.first().copied(),
            Logic::All => {
                let mut fired = None;
                for &i in &became_true {
                    let missing = (0..group.triggers.len()).find(|&j| {
                        j != i
                            && !self.triggers[j].currently_true(
                                &group.triggers[j],
                                now,
                                &facts_ups_state,
                            )
                    });
                    match missing {
                        None => {
                            fired = Some(i);
                            break;
                        }
                        Some(j) => {
                            let _ = writeln!(
                                notes,
                                "ALL: trigger {i} became true but trigger {j} ({}) does not hold now",
                                describe(&group.triggers[j])
                            );
                        }
                    }
                }
                fired
            }
        };
        eval.fired = fired.map(|trigger| FiredBy { trigger });
        eval.explain = match fired {
            Some(i) => {
                let all = if group.logic == Logic::All && group.triggers.len() > 1 {
                    " while every other trigger holds"
                } else {
                    ""
                };
                format!(
                    "fired by trigger {i} ({}){all}\n{notes}",
                    Describe(&group.triggers[i])
                )
            }
            None if notes.is_empty() => format!(
                "not fired: no trigger reacts to this {} event\n",
                event.kind.as_str()
            ),
            None => format!("not fired\n{notes}"),
        };
        eval
    }

    /// The countdowns this state is waiting for: re-arm them after a restart.
    pub fn pending_timers(&self, policy_id: &str, group: &TriggerGroup) -> Vec<TimerRequest> {
        let mut out = Vec::new();
        for (i, (per, trigger)) in self.triggers.iter().zip(&group.triggers).enumerate() {
            let kind = match trigger {
                Trigger::TimerAfter { .. } => TimerKind::After,
                _ => TimerKind::ForHold,
            };
            for (subject, tracked) in &per.subjects {
                if let Some(deadline) = tracked.deadline {
                    out.push(tracked.request(policy_id, i, kind, subject, deadline));
                }
            }
        }
        out.sort();
        out
    }

    /// The state as JSON, for the store.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Reads state the store persisted; `None` when it does not parse (start
    /// from the default then: a lost countdown is re-armed by the next event).
    pub fn from_json(value: &serde_json::Value) -> Option<TriggerState> {
        serde_json::from_value(value.clone()).ok()
    }
}

/// What every trigger step needs to know about the event.
struct Ctx<'a> {
    policy_id: &'a str,
    trigger: usize,
    event: &'a Event,
    now: DateTime<Utc>,
    /// The event's timer tag when it is addressed to this trigger.
    tag: Option<TimerTag<'a>>,
}

impl Ctx<'_> {
    fn subject_id(&self) -> &str {
        &self.event.subject.id
    }

    fn track(&self, deadline: Option<DateTime<Utc>>) -> Tracked {
        Tracked {
            subject_kind: self.event.subject.kind.as_str().to_string(),
            since: self.now,
            deadline,
            fired: deadline.is_none(),
            correlation_id: self.event.correlation_id,
        }
    }

    /// The timer tag when this event is the expiry of `kind` for the subject.
    fn expiry(&self, kind: TimerKind) -> Option<DateTime<Utc>> {
        self.tag
            .filter(|t| t.kind == Some(kind))
            .and_then(|t| t.deadline)
    }
}

impl Tracked {
    fn request(
        &self,
        policy_id: &str,
        trigger: usize,
        kind: TimerKind,
        subject: &str,
        deadline: DateTime<Utc>,
    ) -> TimerRequest {
        TimerRequest {
            deadline,
            policy_id: policy_id.to_string(),
            trigger,
            kind,
            subject_kind: SubjectKind::parse(&self.subject_kind).unwrap_or(SubjectKind::Ups),
            subject_id: subject.to_string(),
            correlation_id: self.correlation_id,
        }
    }
}

fn seconds(s: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000))
}

/// A `for` of zero is no hold at all.
fn hold(for_s: Option<u64>) -> Option<u64> {
    for_s.filter(|s| *s > 0)
}

impl PerTrigger {
    fn step(
        &mut self,
        trigger: &Trigger,
        ctx: &Ctx<'_>,
        facts: &impl Fn(&str) -> Option<UpsState>,
        eval: &mut Evaluation,
    ) -> Outcome {
        match trigger {
            Trigger::UpsState { equals, for_s, ups } => {
                self.step_ups(*equals, hold(*for_s), ups.as_deref(), ctx, facts, eval)
            }
            Trigger::MetricThreshold {
                metric,
                op,
                value,
                for_s,
                ups,
            } => {
                if let Some(deadline) = ctx.expiry(TimerKind::ForHold) {
                    return self.hold_expired(
                        ctx,
                        hold(*for_s).unwrap_or(0),
                        deadline,
                        |_| true,
                        "held",
                    );
                }
                let Some((name, reading)) = ctx.event.metric() else {
                    return Outcome::Untouched;
                };
                if name != metric
                    || ups
                        .as_deref()
                        .is_some_and(|f| !ups_matches(f, ctx.subject_id()))
                {
                    return Outcome::Untouched;
                }
                let holds = op.compare(reading, *value);
                let subject = ctx.subject_id().to_string();
                match (holds, self.subjects.get(&subject)) {
                    (true, Some(tracked)) => Outcome::Noted(format!(
                        "{name} = {reading} on {subject} still true since {} (no new edge)",
                        tracked.since.format("%H:%M:%S")
                    )),
                    (true, None) => match hold(*for_s) {
                        None => {
                            self.subjects.insert(subject.clone(), ctx.track(None));
                            Outcome::BecameTrue(format!(
                                "{name} = {reading} on {subject} became true"
                            ))
                        }
                        Some(n) => {
                            let deadline = ctx.now + seconds(n);
                            let tracked = ctx.track(Some(deadline));
                            eval.timers.push(tracked.request(
                                ctx.policy_id,
                                ctx.trigger,
                                TimerKind::ForHold,
                                &subject,
                                deadline,
                            ));
                            self.subjects.insert(subject.clone(), tracked);
                            Outcome::Noted(format!(
                                "{name} = {reading} on {subject} became true; must hold {n}s"
                            ))
                        }
                    },
                    (false, Some(_)) => {
                        self.untrack(&subject, ctx, TimerKind::ForHold, eval);
                        Outcome::Noted(format!(
                            "{name} = {reading} on {subject} is false again; re-armed"
                        ))
                    }
                    (false, None) => {
                        Outcome::Noted(format!("{name} = {reading} on {subject} is false"))
                    }
                }
            }
            Trigger::TimerAt { schedule } => match ctx.tag {
                Some(tag) if ctx.event.kind == EventKind::TimerAt => Outcome::BecameTrue(format!(
                    "scheduled fire {} of {}",
                    tag.deadline
                        .map(super::timer::format_instant)
                        .unwrap_or_default(),
                    describe_schedule(schedule)
                )),
                _ => Outcome::Untouched,
            },
            Trigger::WebhookCustom { name } => match ctx.event.webhook_name() {
                Some(posted) if posted == name => {
                    Outcome::BecameTrue(format!("webhook {name} posted"))
                }
                _ => Outcome::Untouched,
            },
            Trigger::TimerAfter {
                after_s,
                since_event,
            } => self.step_after(*after_s, since_event, ctx, eval),
        }
    }

    fn step_ups(
        &mut self,
        equals: UpsState,
        for_s: Option<u64>,
        filter: Option<&str>,
        ctx: &Ctx<'_>,
        facts: &impl Fn(&str) -> Option<UpsState>,
        eval: &mut Evaluation,
    ) -> Outcome {
        if let Some(deadline) = ctx.expiry(TimerKind::ForHold) {
            let still = |subject: &str| facts(subject).is_none_or(|s| s == equals);
            return self.hold_expired(ctx, for_s.unwrap_or(0), deadline, still, equals.as_str());
        }
        let Some(state) = ctx.event.ups_state() else {
            return Outcome::Untouched;
        };
        // Borrowed until it is stored: most policies an event reaches are
        // observers with nothing to track.
        let subject = ctx.subject_id();
        if filter.is_some_and(|f| !ups_matches(f, subject)) {
            return Outcome::Untouched;
        }
        let tracked = self.subjects.contains_key(subject);
        if state != equals {
            if !tracked {
                return Outcome::Untouched;
            }
            let counting = self.untrack(subject, ctx, TimerKind::ForHold, eval);
            let tail = if counting {
                "; countdown cancelled"
            } else {
                ""
            };
            return Outcome::Noted(format!(
                "{subject} left {} for {}{tail}",
                equals.as_str(),
                state.as_str()
            ));
        }
        if tracked {
            return Outcome::Noted(format!(
                "{subject} is already {}: staying is not entering",
                equals.as_str()
            ));
        }
        match for_s {
            None => {
                self.subjects.insert(subject.to_string(), ctx.track(None));
                Outcome::BecameTrue(format!("{subject} entered {}", equals.as_str()))
            }
            Some(n) => {
                let deadline = ctx.now + seconds(n);
                let tracked = ctx.track(Some(deadline));
                eval.timers.push(tracked.request(
                    ctx.policy_id,
                    ctx.trigger,
                    TimerKind::ForHold,
                    subject,
                    deadline,
                ));
                self.subjects.insert(subject.to_string(), tracked);
                Outcome::Noted(format!(
                    "{subject} entered {}; must stay {n}s",
                    equals.as_str()
                ))
            }
        }
    }

    fn step_after(
        &mut self,
        after_s: u64,
        since: &EventPattern,
        ctx: &Ctx<'_>,
        eval: &mut Evaluation,
    ) -> Outcome {
        if let Some(deadline) = ctx.expiry(TimerKind::After) {
            let subject = ctx.subject_id();
            return match self.subjects.get_mut(subject) {
                Some(t) if t.deadline == Some(deadline) && ctx.now >= deadline => {
                    t.deadline = None;
                    t.fired = true;
                    let text = format!(
                        "{after_s}s passed since {} on {subject}",
                        describe_pattern(since)
                    );
                    if matches!(since, EventPattern::WebhookCustom { .. }) {
                        self.subjects.remove(subject);
                    }
                    Outcome::BecameTrue(text)
                }
                _ => Outcome::Noted(format!(
                    "stale timer for {subject} ignored: its countdown was cancelled or re-armed"
                )),
            };
        }
        let subject = ctx.subject_id().to_string();
        let start = |this: &mut PerTrigger, eval: &mut Evaluation, what: String| {
            let deadline = ctx.now + seconds(after_s);
            let tracked = ctx.track(Some(deadline));
            eval.timers.push(tracked.request(
                ctx.policy_id,
                ctx.trigger,
                TimerKind::After,
                &subject,
                deadline,
            ));
            this.subjects.insert(subject.clone(), tracked);
            Outcome::Noted(format!("{what}; fires in {after_s}s unless cancelled"))
        };
        match since {
            EventPattern::UpsState { equals, ups } => {
                let Some(state) = ctx.event.ups_state() else {
                    return Outcome::Untouched;
                };
                if ups.as_deref().is_some_and(|f| !ups_matches(f, &subject)) {
                    return Outcome::Untouched;
                }
                let tracked = self.subjects.contains_key(&subject);
                match (state == *equals, tracked) {
                    (true, false) => {
                        start(self, eval, format!("{subject} entered {}", equals.as_str()))
                    }
                    (true, true) => Outcome::Noted(format!(
                        "{subject} is already {}; countdown unchanged",
                        equals.as_str()
                    )),
                    (false, true) => {
                        let counting = self.untrack(&subject, ctx, TimerKind::After, eval);
                        let tail = if counting {
                            "; countdown cancelled"
                        } else {
                            ""
                        };
                        Outcome::Noted(format!(
                            "{subject} left {} for {}{tail}",
                            equals.as_str(),
                            state.as_str()
                        ))
                    }
                    (false, false) => Outcome::Untouched,
                }
            }
            EventPattern::WebhookCustom { name } => match ctx.event.webhook_name() {
                Some(posted) if posted == name => {
                    // A repeated webhook restarts the delay: it counts from the latest.
                    self.untrack(&subject, ctx, TimerKind::After, eval);
                    start(self, eval, format!("webhook {name} posted"))
                }
                _ => Outcome::Untouched,
            },
        }
    }

    /// A `for` expiry: fires if the subject's countdown is the one armed for
    /// `deadline` and the state held for the whole time.
    fn hold_expired(
        &mut self,
        ctx: &Ctx<'_>,
        for_s: u64,
        deadline: DateTime<Utc>,
        still: impl Fn(&str) -> bool,
        what: &str,
    ) -> Outcome {
        let subject = ctx.subject_id();
        match self.subjects.get_mut(subject) {
            Some(t)
                if t.deadline == Some(deadline)
                    && !t.fired
                    && ctx.now >= t.since + seconds(for_s) =>
            {
                if !still(subject) {
                    self.subjects.remove(subject);
                    return Outcome::Noted(format!(
                        "hold of {what} on {subject} ran out but the facts say it no longer holds"
                    ));
                }
                t.deadline = None;
                t.fired = true;
                Outcome::BecameTrue(format!(
                    "{what} on {subject} held {for_s}s since {}",
                    t.since.format("%H:%M:%S")
                ))
            }
            _ => Outcome::Noted(format!(
                "stale timer for {subject} ignored: the hold was broken or re-armed"
            )),
        }
    }

    /// Stops tracking `subject`; reports a pending countdown as cancelled.
    /// Returns whether one was pending.
    fn untrack(
        &mut self,
        subject: &str,
        ctx: &Ctx<'_>,
        kind: TimerKind,
        eval: &mut Evaluation,
    ) -> bool {
        let Some(t) = self.subjects.remove(subject) else {
            return false;
        };
        match t.deadline {
            Some(deadline) => {
                eval.cancelled
                    .push(t.request(ctx.policy_id, ctx.trigger, kind, subject, deadline));
                true
            }
            None => false,
        }
    }

    /// Whether the trigger holds now (the `ALL` rule): a UPS in the state
    /// (for at least `for`), a comparison true (for at least `for`).
    /// Instantaneous triggers never hold between their events.
    fn currently_true(
        &self,
        trigger: &Trigger,
        now: DateTime<Utc>,
        facts: &impl Fn(&str) -> Option<UpsState>,
    ) -> bool {
        match trigger {
            Trigger::UpsState { equals, for_s, ups } => {
                let held = seconds(hold(*for_s).unwrap_or(0));
                let tracked = self.subjects.iter().any(|(subject, t)| {
                    t.since + held <= now && facts(subject).is_none_or(|s| s == *equals)
                });
                // A UPS already in the state before tracking began counts
                // only without `for`: its entry time is unknown.
                tracked
                    || (hold(*for_s).is_none()
                        && ups.as_deref().is_some_and(|f| facts(f) == Some(*equals)))
            }
            Trigger::MetricThreshold { for_s, .. } => {
                let held = seconds(hold(*for_s).unwrap_or(0));
                self.subjects.values().any(|t| t.since + held <= now)
            }
            Trigger::TimerAt { .. }
            | Trigger::TimerAfter { .. }
            | Trigger::WebhookCustom { .. } => false,
        }
    }
}

/// A trigger in one line, for explain texts.
pub fn describe(trigger: &Trigger) -> String {
    Describe(trigger).to_string()
}

/// [`describe`] without the intermediate `String`, for `write!`.
struct Describe<'a>(&'a Trigger);

impl std::fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Trigger::UpsState { equals, for_s, .. } => {
                write!(f, "ups.state = {}", equals.as_str())?;
                if let Some(n) = for_s {
                    write!(f, " for {n}s")?;
                }
            }
            Trigger::MetricThreshold {
                metric,
                op,
                value,
                for_s,
                ..
            } => {
                write!(f, "metric.threshold {metric} {} {value}", op.as_str())?;
                if let Some(n) = for_s {
                    write!(f, " for {n}s")?;
                }
            }
            Trigger::TimerAt { schedule } => write!(f, "timer.at {}", describe_schedule(schedule))?,
            Trigger::TimerAfter {
                after_s,
                since_event,
            } => write!(
                f,
                "timer.after {after_s}s since {}",
                describe_pattern(since_event)
            )?,
            Trigger::WebhookCustom { name } => write!(f, "webhook.custom {name}")?,
        }
        if let Trigger::UpsState { ups: Some(u), .. }
        | Trigger::MetricThreshold { ups: Some(u), .. } = self.0
        {
            write!(f, " on {u}")?;
        }
        Ok(())
    }
}

fn describe_pattern(pattern: &EventPattern) -> String {
    match pattern {
        EventPattern::UpsState {
            equals,
            ups: Some(u),
        } => format!("ups.state = {} on {u}", equals.as_str()),
        EventPattern::UpsState { equals, ups: None } => format!("ups.state = {}", equals.as_str()),
        EventPattern::WebhookCustom { name } => format!("webhook.custom {name}"),
    }
}

fn describe_schedule(schedule: &Schedule) -> String {
    match schedule {
        Schedule::Repeat { at, days, .. } if days.is_empty() => format!("daily at {at}"),
        Schedule::Repeat { at, days, .. } => {
            let days: Vec<&str> = days
                .iter()
                .map(|d| crate::spec::Weekday::NAMES[*d as usize])
                .collect();
            format!("at {at} on {}", days.join(","))
        }
        Schedule::Cron { cron } => format!("cron `{cron}`"),
    }
}
