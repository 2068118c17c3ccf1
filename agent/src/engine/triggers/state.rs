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
//!
//! This runs once per shortlisted policy for every event, so it is built not
//! to allocate on the common path: the event is read once into an
//! [`EventView`] shared by every policy, a tracked subject shares the view's
//! subject id, and the verdict records *why* as small structured notes that
//! become the explain text only when someone reads it
//! ([`Evaluation::explain`]).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::engine::event::{Event, EventKind, SubjectKind};
use crate::spec::{EventPattern, Logic, Schedule, Trigger, TriggerGroup, UpsState};

use super::timer::{TimerKind, TimerRequest, TimerTag};

/// One event as every trigger reads it, parsed once per event rather than
/// once per policy: the entered UPS state, the metric reading, the webhook
/// name, the timer tag, and the subject id as a shared string that tracked
/// subjects keep without copying it.
#[derive(Debug, Clone)]
pub struct EventView<'a> {
    pub event: &'a Event,
    ups_state: Option<UpsState>,
    metric: Option<(&'a str, f64)>,
    webhook: Option<&'a str>,
    tag: Option<TimerTag<'a>>,
    subject: Arc<str>,
    /// The name part of a UPS subject id (`ups1` of `ups1@nas.lan:3493`).
    ups_name: Option<&'a str>,
}

impl<'a> EventView<'a> {
    pub fn new(event: &'a Event) -> EventView<'a> {
        EventView {
            event,
            ups_state: event.ups_state(),
            metric: event.metric(),
            webhook: event.webhook_name(),
            tag: TimerTag::from_event(event),
            subject: Arc::from(event.subject.id.as_str()),
            ups_name: event.subject.id.split_once('@').map(|(name, _)| name),
        }
    }

    /// Whether a trigger's `ups:` filter (a subject id or a UPS name) names
    /// the event's subject: [`crate::engine::event::ups_matches`] with the
    /// subject id split once per event, not once per policy.
    pub fn ups_matches(&self, filter: &str) -> bool {
        filter == &*self.subject || self.ups_name == Some(filter)
    }

    /// The state a `ups.state` event entered.
    pub fn ups_state(&self) -> Option<UpsState> {
        self.ups_state
    }

    /// `(name, value)` of a `metric.threshold` event.
    pub fn metric(&self) -> Option<(&'a str, f64)> {
        self.metric
    }

    /// The name of a `webhook.custom` event.
    pub fn webhook_name(&self) -> Option<&'a str> {
        self.webhook
    }

    /// The tag of a timer event.
    pub fn timer_tag(&self) -> Option<TimerTag<'a>> {
        self.tag
    }
}

/// The outcome of evaluating one policy's trigger group against one event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Evaluation {
    /// Set when the policy fires on this event.
    pub fired: Option<FiredBy>,
    /// Countdowns armed and cancelled, boxed: most evaluations have none,
    /// and a small evaluation is cheap to hand around.
    countdowns: Option<Box<Countdowns>>,
    /// The kind of the event evaluated, for the explain text.
    kind: Option<EventKind>,
    /// What each trigger the event touched made of it, in trigger order;
    /// [`Evaluation::explain`] renders them.
    notes: Notes,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Countdowns {
    timers: Vec<TimerRequest>,
    cancelled: Vec<TimerRequest>,
}

/// The trigger that made the policy fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FiredBy {
    /// Index into the policy's `trigger_group.triggers`.
    pub trigger: usize,
}

/// Notes in order. Almost every evaluation has at most one, kept inline so
/// that the common case allocates nothing.
#[derive(Debug, Clone, PartialEq, Default)]
struct Notes {
    first: Option<Note>,
    more: Vec<Note>,
}

impl Notes {
    fn push(&mut self, note: Note) {
        if self.first.is_none() {
            self.first = Some(note);
        } else {
            self.more.push(note);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Note> {
        self.first.iter().chain(&self.more)
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

/// What trigger `trigger` made of the event, or (for [`Said::AllMissing`])
/// why `ALL` did not fire.
#[derive(Debug, Clone, PartialEq)]
struct Note {
    trigger: u32,
    /// The event made this trigger true.
    became_true: bool,
    said: Said,
}

/// One explain line, as data. Names that equal the trigger's own (the
/// metric, the webhook) are read from the trigger when rendered.
#[derive(Debug, Clone, PartialEq)]
enum Said {
    Entered {
        equals: UpsState,
    },
    EnteredMustStay {
        equals: UpsState,
        for_s: u64,
    },
    AlreadyIn {
        equals: UpsState,
    },
    Left {
        equals: UpsState,
        to: UpsState,
        cancelled: bool,
    },
    MetricBecameTrue {
        reading: f64,
    },
    MetricMustHold {
        reading: f64,
        for_s: u64,
    },
    MetricStillTrue {
        reading: f64,
        since: DateTime<Utc>,
    },
    MetricFalseAgain {
        reading: f64,
    },
    MetricFalse {
        reading: f64,
    },
    /// `what` is the UPS state held, `None` for a metric comparison.
    HoldGone {
        what: Option<UpsState>,
    },
    Held {
        what: Option<UpsState>,
        for_s: u64,
        since: DateTime<Utc>,
    },
    StaleHold,
    ScheduledFire {
        deadline: Option<DateTime<Utc>>,
    },
    WebhookPosted,
    AfterPassed {
        after_s: u64,
    },
    StaleAfter,
    /// A `timer.after` started counting: the UPS entered `entered`, or
    /// (`None`) the webhook was posted.
    AfterStarted {
        entered: Option<UpsState>,
        after_s: u64,
    },
    AfterUnchanged {
        equals: UpsState,
    },
    /// `ALL`: `trigger` became true but `missing` does not hold now.
    AllMissing {
        missing: usize,
    },
}

/// Runtime state of one policy's triggers (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TriggerState {
    /// Indexed like the policy's triggers.
    triggers: PerTriggers,
}

/// The per-trigger states. Most policies have one trigger, kept inline so
/// that reading a policy's state is one memory access, not two. Serialized
/// as a JSON array either way.
#[derive(Debug, Clone, Default)]
enum PerTriggers {
    #[default]
    None,
    One(PerTrigger),
    Many(Vec<PerTrigger>),
}

/// Equal when every trigger's state is: a trigger no event has touched yet
/// equals one with an empty state.
impl PartialEq for PerTriggers {
    fn eq(&self, other: &PerTriggers) -> bool {
        let (mine, theirs) = (self.as_slice(), other.as_slice());
        let empty = PerTrigger::default();
        (0..mine.len().max(theirs.len()))
            .all(|i| mine.get(i).unwrap_or(&empty) == theirs.get(i).unwrap_or(&empty))
    }
}

impl Eq for PerTriggers {}

impl PerTriggers {
    fn from_vec(mut all: Vec<PerTrigger>) -> PerTriggers {
        match all.len() {
            0 => PerTriggers::None,
            1 => PerTriggers::One(all.pop().unwrap_or_default()),
            _ => PerTriggers::Many(all),
        }
    }

    fn as_slice(&self) -> &[PerTrigger] {
        match self {
            PerTriggers::None => &[],
            PerTriggers::One(one) => std::slice::from_ref(one),
            PerTriggers::Many(all) => all,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [PerTrigger] {
        match self {
            PerTriggers::None => &mut [],
            PerTriggers::One(one) => std::slice::from_mut(one),
            PerTriggers::Many(all) => all,
        }
    }

    /// Makes room for `n` triggers, keeping the states of the first ones.
    fn fit(&mut self, n: usize) {
        if self.as_slice().len() != n {
            let mut all = std::mem::take(self).into_vec();
            all.resize_with(n, PerTrigger::default);
            *self = PerTriggers::from_vec(all);
        }
    }

    fn into_vec(self) -> Vec<PerTrigger> {
        match self {
            PerTriggers::None => Vec::new(),
            PerTriggers::One(one) => vec![one],
            PerTriggers::Many(all) => all,
        }
    }
}

impl Serialize for PerTriggers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PerTriggers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<PerTrigger>::deserialize(deserializer).map(PerTriggers::from_vec)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
struct PerTrigger {
    /// Keyed by subject id.
    subjects: Subjects,
}

/// The subjects one trigger tracks: rarely more than one, so the first is
/// kept inline (reading a policy's state touches no other memory) and more
/// go to a small vector searched in place, which keeps its capacity when a
/// subject leaves. Serialized as a JSON object keyed by subject id, in id
/// order.
#[derive(Debug, Clone, Default)]
enum Subjects {
    #[default]
    None,
    One((Arc<str>, Tracked)),
    Many(Vec<(Arc<str>, Tracked)>),
}

/// Equal when they track the same subjects the same way, however stored.
impl PartialEq for Subjects {
    fn eq(&self, other: &Subjects) -> bool {
        fn sorted(s: &Subjects) -> BTreeMap<&str, &Tracked> {
            s.iter().collect()
        }
        let (mine, theirs) = (self.as_slice(), other.as_slice());
        mine.len() == theirs.len() && (mine == theirs || sorted(self) == sorted(other))
    }
}

impl Eq for Subjects {}

impl Subjects {
    fn as_slice(&self) -> &[(Arc<str>, Tracked)] {
        match self {
            Subjects::None => &[],
            Subjects::One(one) => std::slice::from_ref(one),
            Subjects::Many(all) => all,
        }
    }

    fn position(&self, subject: &str) -> Option<usize> {
        self.as_slice().iter().position(|(s, _)| &**s == subject)
    }

    fn contains_key(&self, subject: &str) -> bool {
        self.position(subject).is_some()
    }

    fn get(&self, subject: &str) -> Option<&Tracked> {
        self.position(subject).map(|i| &self.as_slice()[i].1)
    }

    fn get_mut(&mut self, subject: &str) -> Option<&mut Tracked> {
        let i = self.position(subject)?;
        match self {
            Subjects::None => None,
            Subjects::One(one) => Some(&mut one.1),
            Subjects::Many(all) => Some(&mut all[i].1),
        }
    }

    fn insert(&mut self, subject: Arc<str>, tracked: Tracked) {
        if let Some(known) = self.get_mut(&subject) {
            *known = tracked;
            return;
        }
        match std::mem::take(self) {
            Subjects::None => *self = Subjects::One((subject, tracked)),
            Subjects::One(first) => *self = Subjects::Many(vec![first, (subject, tracked)]),
            Subjects::Many(mut all) => {
                all.push((subject, tracked));
                *self = Subjects::Many(all);
            }
        }
    }

    fn remove(&mut self, subject: &str) -> Option<Tracked> {
        let i = self.position(subject)?;
        match std::mem::take(self) {
            Subjects::None => None,
            Subjects::One((_, tracked)) => Some(tracked),
            Subjects::Many(mut all) => {
                let (_, tracked) = all.swap_remove(i);
                *self = Subjects::Many(all);
                Some(tracked)
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &Tracked)> {
        self.as_slice().iter().map(|(s, t)| (&**s, t))
    }

    fn values(&self) -> impl Iterator<Item = &Tracked> {
        self.as_slice().iter().map(|(_, t)| t)
    }
}

impl Serialize for Subjects {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let sorted: BTreeMap<&str, &Tracked> = self.iter().collect();
        sorted.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Subjects {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, Tracked>::deserialize(deserializer)?;
        let mut subjects = Subjects::None;
        for (subject, tracked) in map {
            subjects.insert(Arc::from(subject), tracked);
        }
        Ok(subjects)
    }
}

/// One subject a trigger tracks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Tracked {
    #[serde(with = "subject_kind")]
    subject_kind: SubjectKind,
    /// When the UPS entered the state, the comparison became true, or the
    /// `timer.after` started counting.
    since: DateTime<Utc>,
    /// The pending countdown, if any.
    deadline: Option<DateTime<Utc>>,
    /// The edge was delivered (the `for` hold ran out, the delay elapsed).
    fired: bool,
    correlation_id: Uuid,
}

/// [`SubjectKind`] as its name, the form persisted states have always had.
/// An unknown name reads as a UPS, the only subject that counts down.
mod subject_kind {
    use super::SubjectKind;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(kind: &SubjectKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(kind.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SubjectKind, D::Error> {
        let name = String::deserialize(d)?;
        Ok(SubjectKind::parse(&name).unwrap_or(SubjectKind::Ups))
    }
}

/// What one trigger made of one event: nothing (the event is not about this
/// trigger), or a note, which says whether the trigger became true.
type Outcome = Option<Note>;

impl TriggerState {
    /// Evaluates `event` against `group` (the triggers of policy `policy_id`)
    /// at `now`. `facts_ups_state` says whether a UPS (by subject id, or by
    /// the name or id a trigger's `ups` filter gives) is in a state now
    /// (`None`: not known); it lets `ALL` see a UPS that was already in a
    /// state when the policy started tracking, and keeps a stale tracked
    /// state from counting.
    ///
    /// For one event evaluated against many policies, build the
    /// [`EventView`] once and call [`TriggerState::evaluate_view`].
    pub fn evaluate(
        &mut self,
        policy_id: &str,
        group: &TriggerGroup,
        event: &Event,
        now: DateTime<Utc>,
        facts_ups_state: impl Fn(&str, UpsState) -> Option<bool>,
    ) -> Evaluation {
        self.evaluate_view(
            policy_id,
            group,
            &EventView::new(event),
            now,
            facts_ups_state,
        )
    }

    /// [`TriggerState::evaluate`] on an event already read into a view.
    pub fn evaluate_view(
        &mut self,
        policy_id: &str,
        group: &TriggerGroup,
        view: &EventView<'_>,
        now: DateTime<Utc>,
        facts_ups_state: impl Fn(&str, UpsState) -> Option<bool>,
    ) -> Evaluation {
        self.triggers.fit(group.triggers.len());
        let per = self.triggers.as_mut_slice();
        let tag = view.tag.filter(|t| t.policy_id == policy_id);
        let mut eval = Evaluation {
            kind: Some(view.event.kind),
            ..Evaluation::default()
        };
        for (i, trigger) in group.triggers.iter().enumerate() {
            let ctx = Ctx {
                policy_id,
                trigger: i,
                view,
                now,
                tag: tag.filter(|t| t.trigger == i),
            };
            if let Some(note) = per[i].step(trigger, &ctx, &facts_ups_state, &mut eval) {
                eval.notes.push(note);
            }
        }
        let fired = match group.logic {
            Logic::Any => eval
                .notes
                .iter()
                .find(|n| n.became_true)
                .map(|n| n.trigger as usize),
            Logic::All => {
                let became: Vec<usize> = eval
                    .notes
                    .iter()
                    .filter(|n| n.became_true)
                    .map(|n| n.trigger as usize)
                    .collect();
                let mut fired = None;
                for i in became {
                    let missing = (0..group.triggers.len()).find(|&j| {
                        j != i && !per[j].currently_true(&group.triggers[j], now, &facts_ups_state)
                    });
                    match missing {
                        None => {
                            fired = Some(i);
                            break;
                        }
                        Some(j) => eval.notes.push(Note {
                            trigger: i as u32,
                            became_true: false,
                            said: Said::AllMissing { missing: j },
                        }),
                    }
                }
                fired
            }
        };
        eval.fired = fired.map(|trigger| FiredBy { trigger });
        eval
    }

    /// How many subjects the state tracks over all triggers.
    pub fn tracking(&self) -> usize {
        self.triggers
            .as_slice()
            .iter()
            .map(|t| t.subjects.as_slice().len())
            .sum()
    }

    /// The countdowns this state is waiting for: re-arm them after a restart.
    pub fn pending_timers(&self, policy_id: &str, group: &TriggerGroup) -> Vec<TimerRequest> {
        let mut out = Vec::new();
        for (i, (per, trigger)) in self
            .triggers
            .as_slice()
            .iter()
            .zip(&group.triggers)
            .enumerate()
        {
            let kind = match trigger {
                Trigger::TimerAfter { .. } => TimerKind::After,
                _ => TimerKind::ForHold,
            };
            for (subject, tracked) in per.subjects.iter() {
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

impl Evaluation {
    /// Countdowns to arm; deliver each one's [`TimerRequest::event`] when due.
    pub fn timers(&self) -> &[TimerRequest] {
        self.countdowns.as_ref().map_or(&[], |c| &c.timers)
    }

    /// Countdowns that no longer apply; their expiry would be ignored anyway.
    pub fn cancelled(&self) -> &[TimerRequest] {
        self.countdowns.as_ref().map_or(&[], |c| &c.cancelled)
    }

    fn countdowns(&mut self) -> &mut Countdowns {
        self.countdowns.get_or_insert_with(Box::default)
    }

    /// Whether the evaluation arms or cancels a countdown.
    pub fn has_countdowns(&self) -> bool {
        self.countdowns.is_some()
    }

    /// This evaluation as it reads for policy `policy_id`: the same verdict
    /// and notes, with the countdowns naming that policy. An evaluation
    /// depends on the policy only through those names when the event is
    /// not a timer addressed to a policy, so policies with equal trigger
    /// groups and equal states share one evaluation this way.
    pub fn for_policy(&self, policy_id: &str) -> Evaluation {
        let mut eval = self.clone();
        if let Some(countdowns) = &mut eval.countdowns {
            for request in countdowns
                .timers
                .iter_mut()
                .chain(&mut countdowns.cancelled)
            {
                if request.policy_id != policy_id {
                    request.policy_id = policy_id.to_string();
                }
            }
        }
        eval
    }

    /// Which trigger fired, or why none did, one line per trigger the event
    /// touched: the `trigger` part of a ledger entry's explain. `group` is
    /// the trigger group this evaluation came from and `subject` the id of
    /// the evaluated event's subject (every note is about it).
    pub fn explain(&self, group: &TriggerGroup, subject: &str) -> String {
        let mut notes = String::new();
        for note in self.notes.iter() {
            let _ = match &note.said {
                Said::AllMissing { missing } => writeln!(
                    notes,
                    "ALL: trigger {} became true but trigger {missing} ({}) does not hold now",
                    note.trigger,
                    Describe(&group.triggers[*missing])
                ),
                said => writeln!(
                    notes,
                    "trigger {} ({}): {}",
                    note.trigger,
                    Describe(&group.triggers[note.trigger as usize]),
                    Render(said, &group.triggers[note.trigger as usize], subject)
                ),
            };
        }
        match self.fired {
            Some(FiredBy { trigger: i }) => {
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
            None if self.notes.is_empty() => format!(
                "not fired: no trigger reacts to this {} event\n",
                self.kind.map_or("unknown", EventKind::as_str)
            ),
            None => format!("not fired\n{notes}"),
        }
    }
}

/// One [`Said`] as the text after `trigger i (...): `.
struct Render<'a>(&'a Said, &'a Trigger, &'a str);

impl fmt::Display for Render<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject = self.2;
        let metric = match self.1 {
            Trigger::MetricThreshold { metric, .. } => metric.as_str(),
            _ => "",
        };
        match self.0 {
            Said::Entered { equals } => write!(f, "{subject} entered {}", equals.as_str()),
            Said::EnteredMustStay { equals, for_s } => write!(
                f,
                "{subject} entered {}; must stay {for_s}s",
                equals.as_str()
            ),
            Said::AlreadyIn { equals } => write!(
                f,
                "{subject} is already {}: staying is not entering",
                equals.as_str()
            ),
            Said::Left {
                equals,
                to,
                cancelled,
            } => write!(
                f,
                "{subject} left {} for {}{}",
                equals.as_str(),
                to.as_str(),
                if *cancelled {
                    "; countdown cancelled"
                } else {
                    ""
                }
            ),
            Said::MetricBecameTrue { reading } => {
                write!(f, "{metric} = {reading} on {subject} became true")
            }
            Said::MetricMustHold { reading, for_s } => write!(
                f,
                "{metric} = {reading} on {subject} became true; must hold {for_s}s"
            ),
            Said::MetricStillTrue { reading, since } => write!(
                f,
                "{metric} = {reading} on {subject} still true since {} (no new edge)",
                since.format("%H:%M:%S")
            ),
            Said::MetricFalseAgain { reading } => write!(
                f,
                "{metric} = {reading} on {subject} is false again; re-armed"
            ),
            Said::MetricFalse { reading } => {
                write!(f, "{metric} = {reading} on {subject} is false")
            }
            Said::HoldGone { what } => write!(
                f,
                "hold of {} on {subject} ran out but the facts say it no longer holds",
                held(*what)
            ),
            Said::Held { what, for_s, since } => write!(
                f,
                "{} on {subject} held {for_s}s since {}",
                held(*what),
                since.format("%H:%M:%S")
            ),
            Said::StaleHold => write!(
                f,
                "stale timer for {subject} ignored: the hold was broken or re-armed"
            ),
            Said::ScheduledFire { deadline } => {
                let schedule = match self.1 {
                    Trigger::TimerAt { schedule } => describe_schedule(schedule),
                    _ => String::new(),
                };
                write!(
                    f,
                    "scheduled fire {} of {schedule}",
                    deadline
                        .map(super::timer::format_instant)
                        .unwrap_or_default()
                )
            }
            Said::WebhookPosted => match self.1 {
                Trigger::WebhookCustom { name } => write!(f, "webhook {name} posted"),
                _ => write!(f, "webhook posted"),
            },
            Said::AfterPassed { after_s } => {
                let since = match self.1 {
                    Trigger::TimerAfter { since_event, .. } => describe_pattern(since_event),
                    _ => String::new(),
                };
                write!(f, "{after_s}s passed since {since} on {subject}")
            }
            Said::StaleAfter => write!(
                f,
                "stale timer for {subject} ignored: its countdown was cancelled or re-armed"
            ),
            Said::AfterStarted { entered, after_s } => {
                match (entered, self.1) {
                    (Some(state), _) => write!(f, "{subject} entered {}", state.as_str())?,
                    (
                        None,
                        Trigger::TimerAfter {
                            since_event: EventPattern::WebhookCustom { name },
                            ..
                        },
                    ) => write!(f, "webhook {name} posted")?,
                    (None, _) => write!(f, "webhook posted")?,
                }
                write!(f, "; fires in {after_s}s unless cancelled")
            }
            Said::AfterUnchanged { equals } => write!(
                f,
                "{subject} is already {}; countdown unchanged",
                equals.as_str()
            ),
            Said::AllMissing { missing } => write!(f, "trigger {missing} does not hold now"),
        }
    }
}

/// What a `for` hold was about: the UPS state, or a metric comparison.
fn held(what: Option<UpsState>) -> &'static str {
    what.map_or("held", UpsState::as_str)
}

/// What every trigger step needs to know about the event.
struct Ctx<'a> {
    policy_id: &'a str,
    trigger: usize,
    view: &'a EventView<'a>,
    now: DateTime<Utc>,
    /// The event's timer tag when it is addressed to this trigger.
    tag: Option<TimerTag<'a>>,
}

impl Ctx<'_> {
    fn subject_id(&self) -> &str {
        &self.view.subject
    }

    /// The subject id, shared.
    fn subject(&self) -> Arc<str> {
        self.view.subject.clone()
    }

    fn note(&self, became_true: bool, said: Said) -> Outcome {
        Some(Note {
            trigger: self.trigger as u32,
            became_true,
            said,
        })
    }

    fn track(&self, deadline: Option<DateTime<Utc>>) -> Tracked {
        Tracked {
            subject_kind: self.view.event.subject.kind,
            since: self.now,
            deadline,
            fired: deadline.is_none(),
            correlation_id: self.view.event.correlation_id,
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
            subject_kind: self.subject_kind,
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
        facts: &impl Fn(&str, UpsState) -> Option<bool>,
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
                        None,
                    );
                }
                let (name, reading) = ctx.view.metric?;
                if name != metric || ups.as_deref().is_some_and(|f| !ctx.view.ups_matches(f)) {
                    return None;
                }
                let holds = op.compare(reading, *value);
                let subject = ctx.subject_id();
                match (holds, self.subjects.get(subject)) {
                    (true, Some(tracked)) => ctx.note(
                        false,
                        Said::MetricStillTrue {
                            since: tracked.since,
                            reading,
                        },
                    ),
                    (true, None) => match hold(*for_s) {
                        None => {
                            self.subjects.insert(ctx.subject(), ctx.track(None));
                            ctx.note(true, Said::MetricBecameTrue { reading })
                        }
                        Some(n) => {
                            let deadline = ctx.now + seconds(n);
                            let tracked = ctx.track(Some(deadline));
                            eval.countdowns().timers.push(tracked.request(
                                ctx.policy_id,
                                ctx.trigger,
                                TimerKind::ForHold,
                                subject,
                                deadline,
                            ));
                            self.subjects.insert(ctx.subject(), tracked);
                            ctx.note(false, Said::MetricMustHold { reading, for_s: n })
                        }
                    },
                    (false, Some(_)) => {
                        self.untrack(subject, ctx, TimerKind::ForHold, eval);
                        ctx.note(false, Said::MetricFalseAgain { reading })
                    }
                    (false, None) => ctx.note(false, Said::MetricFalse { reading }),
                }
            }
            Trigger::TimerAt { .. } => match ctx.tag {
                Some(tag) if ctx.view.event.kind == EventKind::TimerAt => ctx.note(
                    true,
                    Said::ScheduledFire {
                        deadline: tag.deadline,
                    },
                ),
                _ => None,
            },
            Trigger::WebhookCustom { name } => match ctx.view.webhook {
                Some(posted) if posted == name => ctx.note(true, Said::WebhookPosted),
                _ => None,
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
        facts: &impl Fn(&str, UpsState) -> Option<bool>,
        eval: &mut Evaluation,
    ) -> Outcome {
        if let Some(deadline) = ctx.expiry(TimerKind::ForHold) {
            let still = |subject: &str| facts(subject, equals) != Some(false);
            return self.hold_expired(ctx, for_s.unwrap_or(0), deadline, still, Some(equals));
        }
        let state = ctx.view.ups_state?;
        let subject = ctx.subject_id();
        if filter.is_some_and(|f| !ctx.view.ups_matches(f)) {
            return None;
        }
        let tracked = self.subjects.contains_key(subject);
        if state != equals {
            // A condition on top (`OB LB`) or lost contact does not end a
            // power source: an `on_battery` hold keeps counting.
            if !tracked || !state.ends(equals) {
                return None;
            }
            let cancelled = self.untrack(subject, ctx, TimerKind::ForHold, eval);
            return ctx.note(
                false,
                Said::Left {
                    equals,
                    to: state,
                    cancelled,
                },
            );
        }
        if tracked {
            return ctx.note(false, Said::AlreadyIn { equals });
        }
        match for_s {
            None => {
                self.subjects.insert(ctx.subject(), ctx.track(None));
                ctx.note(true, Said::Entered { equals })
            }
            Some(n) => {
                let deadline = ctx.now + seconds(n);
                let tracked = ctx.track(Some(deadline));
                eval.countdowns().timers.push(tracked.request(
                    ctx.policy_id,
                    ctx.trigger,
                    TimerKind::ForHold,
                    subject,
                    deadline,
                ));
                self.subjects.insert(ctx.subject(), tracked);
                ctx.note(false, Said::EnteredMustStay { equals, for_s: n })
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
        let subject = ctx.subject_id();
        if let Some(deadline) = ctx.expiry(TimerKind::After) {
            return match self.subjects.get_mut(subject) {
                Some(t) if t.deadline == Some(deadline) && ctx.now >= deadline => {
                    t.deadline = None;
                    t.fired = true;
                    if matches!(since, EventPattern::WebhookCustom { .. }) {
                        self.subjects.remove(subject);
                    }
                    ctx.note(true, Said::AfterPassed { after_s })
                }
                _ => ctx.note(false, Said::StaleAfter {}),
            };
        }
        let start = |this: &mut PerTrigger, eval: &mut Evaluation, entered: Option<UpsState>| {
            let deadline = ctx.now + seconds(after_s);
            let tracked = ctx.track(Some(deadline));
            eval.countdowns().timers.push(tracked.request(
                ctx.policy_id,
                ctx.trigger,
                TimerKind::After,
                subject,
                deadline,
            ));
            this.subjects.insert(ctx.subject(), tracked);
            ctx.note(false, Said::AfterStarted { entered, after_s })
        };
        match since {
            EventPattern::UpsState { equals, ups } => {
                let state = ctx.view.ups_state?;
                if ups.as_deref().is_some_and(|f| !ctx.view.ups_matches(f)) {
                    return None;
                }
                let tracked = self.subjects.contains_key(subject);
                match (state == *equals, tracked) {
                    (true, false) => start(self, eval, Some(*equals)),
                    (true, true) => ctx.note(false, Said::AfterUnchanged { equals: *equals }),
                    (false, true) if state.ends(*equals) => {
                        let cancelled = self.untrack(subject, ctx, TimerKind::After, eval);
                        ctx.note(
                            false,
                            Said::Left {
                                equals: *equals,
                                to: state,
                                cancelled,
                            },
                        )
                    }
                    (false, _) => None,
                }
            }
            EventPattern::WebhookCustom { name } => match ctx.view.webhook {
                Some(posted) if posted == name => {
                    // A repeated webhook restarts the delay: it counts from the latest.
                    self.untrack(subject, ctx, TimerKind::After, eval);
                    start(self, eval, None)
                }
                _ => None,
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
        what: Option<UpsState>,
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
                    return ctx.note(false, Said::HoldGone { what });
                }
                t.deadline = None;
                t.fired = true;
                let since = t.since;
                ctx.note(true, Said::Held { what, for_s, since })
            }
            _ => ctx.note(false, Said::StaleHold {}),
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
                eval.countdowns().cancelled.push(t.request(
                    ctx.policy_id,
                    ctx.trigger,
                    kind,
                    subject,
                    deadline,
                ));
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
        facts: &impl Fn(&str, UpsState) -> Option<bool>,
    ) -> bool {
        match trigger {
            Trigger::UpsState { equals, for_s, ups } => {
                let held = seconds(hold(*for_s).unwrap_or(0));
                let tracked = self.subjects.iter().any(|(subject, t)| {
                    t.since + held <= now && facts(subject, *equals) != Some(false)
                });
                // A UPS already in the state before tracking began counts
                // only without `for`: its entry time is unknown.
                tracked
                    || (hold(*for_s).is_none()
                        && ups
                            .as_deref()
                            .is_some_and(|f| facts(f, *equals) == Some(true)))
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
