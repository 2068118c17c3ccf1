//! Condition evaluation (SPEC §2 `conditions.all`, §6 step 3): each condition
//! is read against a [`Facts`] view of the latest UPS readings, host
//! reachability and metrics, and against the policy's own context. A fact
//! that is missing or ambiguous fails its condition with a reason, never
//! counts as true, and every result carries explain text for the ledger.

use std::cell::OnceCell;
use std::collections::BTreeMap;

use serde_json::Value;

use super::event::{ups_matches, Event, EventKind, SubjectKind};
use crate::spec::{Condition, Op, Scope, UpsState};

/// The latest readings of one UPS, keyed in a facts view by its subject id
/// (`ups1@nas.lan:3493`). Numbers use the canonical metric names of SPEC §1.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpsFacts {
    pub subject_id: String,
    /// The power source the UPS last entered (`on_battery`, `on_mains`),
    /// if any yet.
    pub state: Option<UpsState>,
    /// The other states it entered since ([`UpsState::ends`]): conditions
    /// on top of the power source (`low_battery`, `overload`, ...) and
    /// `comm_lost`, in the order entered.
    pub conditions: Vec<UpsState>,
    /// `battery.runtime` / 60.
    pub runtime_minutes: Option<f64>,
    /// `battery.charge`, percent.
    pub charge_pct: Option<f64>,
    /// `ups.load`, percent.
    pub load: Option<f64>,
    /// Any other numeric NUT variable, by its NUT name (`input.voltage`).
    pub variables: BTreeMap<String, f64>,
}

/// The answer to a lookup that may find one, none, or several candidates.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<T> {
    Found(T),
    /// Nothing matches, or the match has no such reading.
    Missing,
    /// Several candidates match; their ids, sorted.
    Ambiguous(Vec<String>),
}

/// One metric value and the subject id of the source that reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub source: String,
    pub value: f64,
}

/// What conditions read. The engine keeps a [`FactsSnapshot`] up to date
/// from the events it consumes; anything else that can answer these
/// questions (a live NUT client, a test double) may stand in.
pub trait Facts {
    /// `Some(filter)`: the UPS whose subject id is `filter` or whose name
    /// part is (see [`ups_matches`]); `None`: the only UPS known.
    fn ups(&self, subject_or_name: Option<&str>) -> Lookup<&UpsFacts>;

    /// Whether the host answered its last probe; `None` if never probed.
    fn host_reachable(&self, host_id: &str) -> Option<bool>;

    /// The metric `name` from `source` (a UPS filter as in [`Facts::ups`],
    /// or another source's subject id), or with `None` from the only source
    /// that reports it.
    fn metric(&self, name: &str, source: Option<&str>) -> Lookup<Reading>;
}

/// What a condition may need to know about the policy being evaluated.
pub struct PolicyContext<'a> {
    /// `targets.host_id`: the host that `host.reachable` is about.
    pub host_id: &'a str,
    /// How many targets the policy's selector resolves to now
    /// (`vm.count_matching`). Called at most once per evaluation, and only
    /// when a `vm` condition needs it; an error explains why the selector
    /// could not be resolved.
    pub count_matching: &'a dyn Fn() -> Result<usize, String>,
}

/// The verdict on a condition list.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionOutcome {
    /// Every condition held (true for an empty list).
    pub all_true: bool,
    /// One entry per condition, in the order written.
    pub results: Vec<ConditionResult>,
}

/// The verdict on one condition.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionResult {
    /// Position in `conditions.all`.
    pub index: usize,
    pub ok: bool,
    /// Set when the condition could not be evaluated at all
    /// (`condition.missing_fact`, `condition.ambiguous_ups`, ...); `None`
    /// when it was evaluated, true or false.
    pub code: Option<&'static str>,
    /// "ups.runtime_minutes >= 5 is false: ups1@nas:3493 reports 3".
    pub reason: String,
}

/// A fact the condition needs is not known.
pub const MISSING_FACT: &str = "condition.missing_fact";
/// An `ups` condition without `ups:` on an event that names no UPS, with several UPSes known.
pub const AMBIGUOUS_UPS: &str = "condition.ambiguous_ups";
/// A `metric` condition whose metric several sources report, none of them named.
pub const AMBIGUOUS_METRIC: &str = "condition.ambiguous_metric";
/// The value or operator does not fit the field (`ups.state > 3`).
pub const TYPE_MISMATCH: &str = "condition.type_mismatch";
/// A field the scope does not know.
pub const UNKNOWN_FIELD: &str = "condition.unknown_field";
/// `vm.count_matching` could not resolve the policy's selector.
pub const SELECTOR_UNRESOLVED: &str = "condition.selector_unresolved";

impl ConditionOutcome {
    /// The results that did not hold.
    pub fn failed(&self) -> impl Iterator<Item = &ConditionResult> {
        self.results.iter().filter(|r| !r.ok)
    }

    /// One line for the ledger's `explain`: that all conditions hold, or
    /// which failed and why.
    pub fn explain(&self) -> String {
        if self.all_true {
            return match self.results.len() {
                0 => "no conditions".to_string(),
                1 => "the condition holds".to_string(),
                n => format!("all {n} conditions hold"),
            };
        }
        self.failed()
            .map(|r| format!("condition {}: {}", r.index + 1, r.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Evaluates every condition (no short cut, so the explain text is complete).
///
/// An `ups` condition reads the UPS its `ups:` filter names, else the UPS
/// that sent the event, else the only UPS known; with several and none
/// named it fails with `condition.ambiguous_ups`. A `metric` condition reads
/// the same way, falling back from the event's source to the only source
/// that reports the metric.
pub fn evaluate(
    conditions: &[Condition],
    event: &Event,
    facts: &dyn Facts,
    ctx: &PolicyContext<'_>,
) -> ConditionOutcome {
    let count = OnceCell::new();
    let results: Vec<ConditionResult> = conditions
        .iter()
        .enumerate()
        .map(|(index, cond)| {
            let verdict = match cond.scope {
                Scope::Ups => eval_ups(cond, event, facts),
                Scope::Host => eval_host(cond, facts, ctx),
                Scope::Metric => eval_metric(cond, event, facts),
                Scope::Vm => eval_vm(cond, || count.get_or_init(ctx.count_matching).clone()),
            };
            let label = label(cond);
            match verdict {
                Verdict::Evaluated { ok, observed } => ConditionResult {
                    index,
                    ok,
                    code: None,
                    reason: format!("{label} is {ok}: {observed}"),
                },
                Verdict::Unknown { code, why } => ConditionResult {
                    index,
                    ok: false,
                    code: Some(code),
                    reason: format!("{label} cannot be evaluated: {why}"),
                },
            }
        })
        .collect();
    ConditionOutcome {
        all_true: results.iter().all(|r| r.ok),
        results,
    }
}

/// An in-memory facts view, kept current by [`FactsSnapshot::apply`] from
/// the events the engine consumes, and built directly in tests.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FactsSnapshot {
    ups: BTreeMap<String, UpsFacts>,
    hosts: BTreeMap<String, bool>,
    /// Metrics of sources that are not UPSes: source subject id -> name -> value.
    metrics: BTreeMap<String, BTreeMap<String, f64>>,
}

impl UpsFacts {
    pub fn new(subject_id: &str) -> UpsFacts {
        UpsFacts {
            subject_id: subject_id.to_string(),
            ..UpsFacts::default()
        }
    }

    pub fn with_state(mut self, state: UpsState) -> UpsFacts {
        self.enter(state);
        self
    }

    /// The UPS entered `state`: a power source replaces the previous one
    /// and ends the conditions; a condition comes on top.
    pub fn enter(&mut self, state: UpsState) {
        if state.is_power_source() {
            self.state = Some(state);
            self.conditions.clear();
        } else if !self.conditions.contains(&state) {
            self.conditions.push(state);
        }
    }

    /// Folds in the latest reading of the same UPS, as a source polled it
    /// (newer than the events handled so far): its numbers win; the state
    /// comes from events (edges) and is taken from the reading only while
    /// none is known (the baseline after start, which publishes no event);
    /// conditions the reading shows on the same power source are added,
    /// since an event reports a condition only when it appears, so one that
    /// outlasted the last power change (`OB LB` -> `OL LB`) is known from
    /// readings alone. Nothing is removed: a condition the source stated
    /// without a reading (`comm_lost`, its fail-safe `low_battery`) stays.
    pub fn merge_reading(&mut self, reading: UpsFacts) {
        if self.state.is_none() && self.conditions.is_empty() {
            self.state = reading.state;
            self.conditions = reading.conditions;
        } else if self.state.is_some() && self.state == reading.state {
            for condition in reading.conditions {
                if !self.conditions.contains(&condition) {
                    self.conditions.push(condition);
                }
            }
        }
        self.runtime_minutes = reading.runtime_minutes.or(self.runtime_minutes);
        self.charge_pct = reading.charge_pct.or(self.charge_pct);
        self.load = reading.load.or(self.load);
        self.variables.extend(reading.variables);
    }

    /// Whether the UPS is in `state` now; `None` when no state is known.
    pub fn is_in(&self, state: UpsState) -> Option<bool> {
        if state.is_power_source() {
            return self.state.map(|s| s == state);
        }
        if self.state.is_none() && self.conditions.is_empty() {
            return None;
        }
        Some(self.conditions.contains(&state))
    }

    /// The known states, power source first (`on_battery, low_battery`).
    fn describe_states(&self) -> String {
        let names: Vec<&str> = self
            .state
            .iter()
            .chain(&self.conditions)
            .map(|s| s.as_str())
            .collect();
        names.join(", ")
    }

    pub fn with_reading(mut self, name: &str, value: f64) -> UpsFacts {
        self.set_reading(name, value);
        self
    }

    /// Records a reading under its canonical name or as a NUT variable.
    pub fn set_reading(&mut self, name: &str, value: f64) {
        match name {
            "runtime_minutes" => self.runtime_minutes = Some(value),
            "charge_pct" => self.charge_pct = Some(value),
            "load" => self.load = Some(value),
            _ => {
                self.variables.insert(name.to_string(), value);
            }
        }
    }

    /// A numeric reading by canonical or NUT name.
    pub fn reading(&self, name: &str) -> Option<f64> {
        match name {
            "runtime_minutes" => self.runtime_minutes,
            "charge_pct" => self.charge_pct,
            "load" => self.load,
            _ => self.variables.get(name).copied(),
        }
    }
}

impl FactsSnapshot {
    pub fn new() -> FactsSnapshot {
        FactsSnapshot::default()
    }

    pub fn with_ups(mut self, ups: UpsFacts) -> FactsSnapshot {
        self.ups.insert(ups.subject_id.clone(), ups);
        self
    }

    pub fn with_host(mut self, host_id: &str, reachable: bool) -> FactsSnapshot {
        self.set_host_reachable(host_id, reachable);
        self
    }

    /// A metric of a source that is not a UPS (UPS readings go through
    /// [`UpsFacts`]).
    pub fn with_metric(mut self, source: &str, name: &str, value: f64) -> FactsSnapshot {
        self.set_metric(source, name, value);
        self
    }

    /// The UPS with this subject id, created empty if unknown.
    pub fn ups_entry(&mut self, subject_id: &str) -> &mut UpsFacts {
        self.ups
            .entry(subject_id.to_string())
            .or_insert_with(|| UpsFacts::new(subject_id))
    }

    pub fn set_host_reachable(&mut self, host_id: &str, reachable: bool) {
        self.hosts.insert(host_id.to_string(), reachable);
    }

    pub fn set_metric(&mut self, source: &str, name: &str, value: f64) {
        self.metrics
            .entry(source.to_string())
            .or_default()
            .insert(name.to_string(), value);
    }

    /// Folds an event into the view: `ups.state` enters the UPS's state
    /// ([`UpsFacts::enter`]), `metric.threshold` records the reading (on
    /// the UPS when a UPS sent it: a reading means contact is back, so it
    /// ends `comm_lost`), `host.state` with a boolean `attrs.reachable`
    /// records reachability. Other events carry no facts.
    pub fn apply(&mut self, event: &Event) {
        match event.kind {
            EventKind::UpsState => {
                if let Some(state) = event.ups_state() {
                    self.ups_entry(&event.subject.id).enter(state);
                }
            }
            EventKind::MetricThreshold => {
                if let Some((name, value)) = event.metric() {
                    if event.subject.kind == SubjectKind::Ups {
                        let ups = self.ups_entry(&event.subject.id);
                        ups.set_reading(name, value);
                        ups.conditions.retain(|&s| s != UpsState::CommLost);
                    } else {
                        self.set_metric(&event.subject.id, name, value);
                    }
                }
            }
            EventKind::HostState => {
                if let Some(reachable) = event.attrs.get("reachable").and_then(Value::as_bool) {
                    self.set_host_reachable(&event.subject.id, reachable);
                }
            }
            EventKind::TimerAt | EventKind::TimerAfter | EventKind::WebhookCustom => {}
        }
    }
}

impl Facts for FactsSnapshot {
    fn ups(&self, subject_or_name: Option<&str>) -> Lookup<&UpsFacts> {
        // A full subject id (`ups1@nas.lan:3493`) can only match itself: a
        // name part never contains `@`. One lookup instead of a scan.
        if let Some(id) = subject_or_name.filter(|f| f.contains('@')) {
            return match self.ups.get(id) {
                Some(u) => Lookup::Found(u),
                None => Lookup::Missing,
            };
        }
        let matching: Vec<&UpsFacts> = match subject_or_name {
            Some(filter) => self
                .ups
                .values()
                .filter(|u| ups_matches(filter, &u.subject_id))
                .collect(),
            None => self.ups.values().collect(),
        };
        one_of(matching, |u| u.subject_id.clone())
    }

    fn host_reachable(&self, host_id: &str) -> Option<bool> {
        self.hosts.get(host_id).copied()
    }

    fn metric(&self, name: &str, source: Option<&str>) -> Lookup<Reading> {
        let from_ups = self
            .ups
            .values()
            .filter(|u| source.is_none_or(|f| ups_matches(f, &u.subject_id)))
            .map(|u| (u.subject_id.as_str(), u.reading(name)));
        let from_others = self
            .metrics
            .iter()
            .filter(|(id, _)| source.is_none_or(|f| f == id.as_str()))
            .map(|(id, values)| (id.as_str(), values.get(name).copied()));
        let mut candidates: Vec<(&str, Option<f64>)> = from_ups.chain(from_others).collect();
        if source.is_none() {
            // Without a named source, only sources that report the metric count.
            candidates.retain(|(_, value)| value.is_some());
        }
        match one_of(candidates, |(id, _)| id.to_string()) {
            Lookup::Found((id, Some(value))) => Lookup::Found(Reading {
                source: id.to_string(),
                value,
            }),
            Lookup::Found((_, None)) | Lookup::Missing => Lookup::Missing,
            Lookup::Ambiguous(ids) => Lookup::Ambiguous(ids),
        }
    }
}

fn one_of<T>(mut items: Vec<T>, id: impl Fn(&T) -> String) -> Lookup<T> {
    match items.len() {
        0 => Lookup::Missing,
        1 => Lookup::Found(items.remove(0)),
        _ => {
            let mut ids: Vec<String> = items.iter().map(id).collect();
            ids.sort();
            Lookup::Ambiguous(ids)
        }
    }
}

enum Verdict {
    Evaluated { ok: bool, observed: String },
    Unknown { code: &'static str, why: String },
}

fn unknown(code: &'static str, why: impl Into<String>) -> Verdict {
    Verdict::Unknown {
        code,
        why: why.into(),
    }
}

fn eval_ups(cond: &Condition, event: &Event, facts: &dyn Facts) -> Verdict {
    let (lookup, whose) = match (&cond.ups, event.subject.kind) {
        (Some(filter), _) => (facts.ups(Some(filter)), format!("UPS `{filter}`")),
        (None, SubjectKind::Ups) => (
            facts.ups(Some(&event.subject.id)),
            format!("{} (the event's UPS)", event.subject.id),
        ),
        (None, _) => (facts.ups(None), "any UPS".to_string()),
    };
    let ups = match lookup {
        Lookup::Found(ups) => ups,
        Lookup::Missing if cond.ups.is_none() && event.subject.kind != SubjectKind::Ups => {
            return unknown(MISSING_FACT, "no UPS is known");
        }
        Lookup::Missing => return unknown(MISSING_FACT, format!("no readings from {whose}")),
        Lookup::Ambiguous(ids) => {
            return unknown(
                AMBIGUOUS_UPS,
                format!(
                    "{} UPSes match ({}) and the condition names none of them; add `ups:` to it",
                    ids.len(),
                    ids.join(", ")
                ),
            )
        }
    };
    if cond.field == "state" {
        if ups.state.is_none() && ups.conditions.is_empty() {
            return unknown(MISSING_FACT, format!("{} reports no state", ups.subject_id));
        }
        let wanted = match cond.value.as_str().map(|s| (s, UpsState::parse(s))) {
            Some((_, Some(wanted))) => wanted,
            Some((text, None)) => {
                return unknown(
                    TYPE_MISMATCH,
                    format!(
                        "`{text}` is not a UPS state (one of {})",
                        UpsState::NAMES.join(", ")
                    ),
                )
            }
            None => return unknown(TYPE_MISMATCH, "a UPS state is compared with a state name"),
        };
        let Some(is_in) = ups.is_in(wanted) else {
            return unknown(
                MISSING_FACT,
                format!("{} reports no power source yet", ups.subject_id),
            );
        };
        return match equality(cond.op, is_in) {
            Some(ok) => Verdict::Evaluated {
                ok,
                observed: format!("{} reports {}", ups.subject_id, ups.describe_states()),
            },
            None => ordering_on_non_numbers(cond.op),
        };
    }
    let Some(value) = ups.reading(&cond.field) else {
        return unknown(
            MISSING_FACT,
            format!("{} reports no {}", ups.subject_id, cond.field),
        );
    };
    compare_number(cond, value, format!("{} reports {value}", ups.subject_id))
}

fn eval_host(cond: &Condition, facts: &dyn Facts, ctx: &PolicyContext<'_>) -> Verdict {
    if cond.field != "reachable" {
        return unknown(
            UNKNOWN_FIELD,
            format!("the host scope knows `reachable`, not `{}`", cond.field),
        );
    }
    let Some(wanted) = cond.value.as_bool() else {
        return unknown(
            TYPE_MISMATCH,
            "host.reachable is compared with true or false",
        );
    };
    let Some(reachable) = facts.host_reachable(ctx.host_id) else {
        return unknown(
            MISSING_FACT,
            format!("no reachability known for host {}", ctx.host_id),
        );
    };
    match equality(cond.op, reachable == wanted) {
        Some(ok) => Verdict::Evaluated {
            ok,
            observed: format!(
                "{} is {}",
                ctx.host_id,
                if reachable {
                    "reachable"
                } else {
                    "unreachable"
                }
            ),
        },
        None => ordering_on_non_numbers(cond.op),
    }
}

fn eval_metric(cond: &Condition, event: &Event, facts: &dyn Facts) -> Verdict {
    let name = cond.field.as_str();
    let lookup = match &cond.ups {
        Some(filter) => facts.metric(name, Some(filter)),
        None => match facts.metric(name, Some(&event.subject.id)) {
            found @ Lookup::Found(_) => found,
            _ => facts.metric(name, None),
        },
    };
    match lookup {
        Lookup::Found(reading) => compare_number(
            cond,
            reading.value,
            format!("{} reports {}", reading.source, reading.value),
        ),
        Lookup::Missing => unknown(
            MISSING_FACT,
            match &cond.ups {
                Some(filter) => format!("no reading of {name} from `{filter}`"),
                None => format!("no source reports {name}"),
            },
        ),
        Lookup::Ambiguous(ids) => {
            let code = if cond.ups.is_some() {
                AMBIGUOUS_UPS
            } else {
                AMBIGUOUS_METRIC
            };
            unknown(
                code,
                format!(
                    "{} sources report {name} ({}) and the condition names none of them; add `ups:` to it",
                    ids.len(),
                    ids.join(", ")
                ),
            )
        }
    }
}

fn eval_vm(cond: &Condition, count: impl FnOnce() -> Result<usize, String>) -> Verdict {
    if cond.field != "count_matching" {
        return unknown(
            UNKNOWN_FIELD,
            format!("the vm scope knows `count_matching`, not `{}`", cond.field),
        );
    }
    match count() {
        Ok(n) => compare_number(
            cond,
            n as f64,
            format!(
                "the selector resolves to {n} target{} now",
                if n == 1 { "" } else { "s" }
            ),
        ),
        Err(why) => unknown(
            SELECTOR_UNRESOLVED,
            format!("the selector could not be resolved: {why}"),
        ),
    }
}

fn compare_number(cond: &Condition, observed: f64, said: String) -> Verdict {
    match cond.value.as_f64() {
        Some(wanted) => Verdict::Evaluated {
            ok: cond.op.compare(observed, wanted),
            observed: said,
        },
        None => unknown(
            TYPE_MISMATCH,
            format!(
                "{}.{} is a number, compared with {}",
                scope_name(cond.scope),
                cond.field,
                cond.value
            ),
        ),
    }
}

/// `=` and `!=` on a boolean "equal" result; `None` for ordering operators.
fn equality(op: Op, equal: bool) -> Option<bool> {
    match op {
        Op::Eq => Some(equal),
        Op::Ne => Some(!equal),
        _ => None,
    }
}

fn ordering_on_non_numbers(op: Op) -> Verdict {
    unknown(
        TYPE_MISMATCH,
        format!("`{}` orders numbers; use = or !=", op.as_str()),
    )
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Ups => "ups",
        Scope::Host => "host",
        Scope::Metric => "metric",
        Scope::Vm => "vm",
    }
}

/// `ups.runtime_minutes >= 5`, with the `ups:` filter when there is one.
fn label(cond: &Condition) -> String {
    let value = match &cond.value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let filter = cond
        .ups
        .as_deref()
        .map(|f| format!(" (ups: {f})"))
        .unwrap_or_default();
    format!(
        "{}.{} {} {value}{filter}",
        scope_name(cond.scope),
        cond.field,
        cond.op.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::event::Subject;
    use chrono::{TimeZone, Utc};
    use expect_test::{expect, Expect};
    use serde_json::{json, Map};
    use uuid::Uuid;

    /// `"ups.runtime_minutes >= 5"`, optionally followed by `ups=<filter>`.
    fn cond(text: &str) -> Condition {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let (scope, field) = parts[0].split_once('.').unwrap();
        Condition {
            scope: Scope::parse(scope).unwrap(),
            field: field.to_string(),
            op: Op::parse(parts[1]).unwrap(),
            value: serde_json::from_str(parts[2]).unwrap_or_else(|_| json!(parts[2])),
            ups: parts
                .get(3)
                .and_then(|p| p.strip_prefix("ups="))
                .map(str::to_string),
        }
    }

    fn event(kind: EventKind, subject: SubjectKind, id: &str, attrs: Value) -> Event {
        Event {
            kind,
            subject: Subject {
                kind: subject,
                id: id.to_string(),
            },
            attrs: attrs.as_object().cloned().unwrap_or_else(Map::new),
            ts: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            correlation_id: Uuid::nil(),
        }
    }

    fn on_battery(ups: &str) -> Event {
        event(
            EventKind::UpsState,
            SubjectKind::Ups,
            ups,
            json!({"state": "on_battery"}),
        )
    }

    fn webhook() -> Event {
        event(
            EventKind::WebhookCustom,
            SubjectKind::Integration,
            "ci",
            json!({"name": "deploy"}),
        )
    }

    fn one_ups() -> FactsSnapshot {
        FactsSnapshot::new()
            .with_ups(
                UpsFacts::new("ups1@nas:3493")
                    .with_state(UpsState::OnBattery)
                    .with_reading("runtime_minutes", 3.0)
                    .with_reading("charge_pct", 80.0)
                    .with_reading("input.voltage", 0.0),
            )
            .with_host("pve-01", true)
            .with_host("pve-02", false)
    }

    fn two_upses() -> FactsSnapshot {
        one_ups().with_ups(
            UpsFacts::new("ups2@rack:3493")
                .with_state(UpsState::OnMains)
                .with_reading("runtime_minutes", 42.0)
                .with_reading("load", 30.0),
        )
    }

    fn check_in(
        facts: &FactsSnapshot,
        event: &Event,
        host: &str,
        count: Result<usize, String>,
        conditions: &[&str],
        expect: Expect,
    ) {
        let conditions: Vec<Condition> = conditions.iter().map(|c| cond(c)).collect();
        let count_matching = move || count.clone();
        let ctx = PolicyContext {
            host_id: host,
            count_matching: &count_matching,
        };
        let outcome = evaluate(&conditions, event, facts, &ctx);
        let mut out = format!("all_true: {}\n", outcome.all_true);
        for r in &outcome.results {
            let code = r.code.map(|c| format!(" [{c}]")).unwrap_or_default();
            let mark = if r.ok { "ok" } else { "FAIL" };
            out.push_str(&format!("#{} {mark}{code} {}\n", r.index, r.reason));
        }
        out.push_str(&format!("explain: {}", outcome.explain()));
        expect.assert_eq(&out);
    }

    fn check(facts: &FactsSnapshot, event: &Event, conditions: &[&str], expect: Expect) {
        check_in(facts, event, "pve-01", Ok(2), conditions, expect);
    }

    #[test]
    fn a_condition_on_top_of_the_power_source_keeps_both_until_the_power_changes() {
        let state = |name: &str| {
            event(
                EventKind::UpsState,
                SubjectKind::Ups,
                "ups1@nas:3493",
                json!({ "state": name }),
            )
        };
        let mut facts = one_ups();
        facts.apply(&state("low_battery"));
        facts.apply(&state("comm_lost"));
        let asked = [
            "ups.state = on_battery",
            "ups.state = low_battery",
            "ups.state = comm_lost",
            "ups.state = on_mains",
        ];
        check(
            &facts,
            &state("comm_lost"),
            &asked,
            expect![[r#"
                all_true: false
                #0 ok ups.state = on_battery is true: ups1@nas:3493 reports on_battery, low_battery, comm_lost
                #1 ok ups.state = low_battery is true: ups1@nas:3493 reports on_battery, low_battery, comm_lost
                #2 ok ups.state = comm_lost is true: ups1@nas:3493 reports on_battery, low_battery, comm_lost
                #3 FAIL ups.state = on_mains is false: ups1@nas:3493 reports on_battery, low_battery, comm_lost
                explain: condition 4: ups.state = on_mains is false: ups1@nas:3493 reports on_battery, low_battery, comm_lost"#]],
        );
        // A reading means contact is back; mains return ends the rest.
        facts.apply(&event(
            EventKind::MetricThreshold,
            SubjectKind::Ups,
            "ups1@nas:3493",
            json!({ "metric": "charge_pct", "value": 35 }),
        ));
        let Lookup::Found(ups) = facts.ups(Some("ups1")) else {
            panic!("ups1 is known")
        };
        assert_eq!(ups.is_in(UpsState::CommLost), Some(false));
        assert_eq!(ups.is_in(UpsState::LowBattery), Some(true));
        facts.apply(&state("on_mains"));
        check(
            &facts,
            &state("on_mains"),
            &asked,
            expect![[r#"
                all_true: false
                #0 FAIL ups.state = on_battery is false: ups1@nas:3493 reports on_mains
                #1 FAIL ups.state = low_battery is false: ups1@nas:3493 reports on_mains
                #2 FAIL ups.state = comm_lost is false: ups1@nas:3493 reports on_mains
                #3 ok ups.state = on_mains is true: ups1@nas:3493 reports on_mains
                explain: condition 1: ups.state = on_battery is false: ups1@nas:3493 reports on_mains; condition 2: ups.state = low_battery is false: ups1@nas:3493 reports on_mains; condition 3: ups.state = comm_lost is false: ups1@nas:3493 reports on_mains"#]],
        );
    }

    #[test]
    fn a_reading_adds_the_conditions_that_outlasted_a_power_change() {
        let id = "ups1@nas:3493";
        // Events: on battery, low battery, mains back (ends low battery).
        let mut facts = UpsFacts::new(id).with_state(UpsState::OnBattery);
        facts.enter(UpsState::LowBattery);
        facts.enter(UpsState::OnMains);
        assert_eq!(facts.is_in(UpsState::LowBattery), Some(false));
        // The latest poll says `OL LB`: still low, on mains.
        let mut reading = UpsFacts::new(id).with_reading("charge_pct", 20.0);
        reading.state = Some(UpsState::OnMains);
        reading.conditions = vec![UpsState::LowBattery];
        facts.merge_reading(reading.clone());
        assert_eq!(facts.is_in(UpsState::LowBattery), Some(true));
        assert_eq!(facts.charge_pct, Some(20.0));
        // A reading on another power source than the events' (the events
        // lag behind the poll) changes no state.
        let mut behind = UpsFacts::new(id).with_state(UpsState::OnBattery);
        behind.merge_reading(reading);
        assert_eq!(behind.is_in(UpsState::OnBattery), Some(true));
        assert_eq!(behind.is_in(UpsState::LowBattery), Some(false));
        // No state known yet: the reading is the baseline.
        let mut fresh = UpsFacts::new(id);
        let mut baseline = UpsFacts::new(id);
        baseline.state = Some(UpsState::OnBattery);
        fresh.merge_reading(baseline);
        assert_eq!(fresh.is_in(UpsState::OnBattery), Some(true));
    }

    #[test]
    fn an_ups_condition_reads_the_ups_that_sent_the_event() {
        check(
            &two_upses(),
            &on_battery("ups1@nas:3493"),
            &[
                "ups.runtime_minutes >= 5",
                "ups.state = on_battery",
                "ups.charge_pct > 40",
            ],
            expect![[r#"
                all_true: false
                #0 FAIL ups.runtime_minutes >= 5 is false: ups1@nas:3493 reports 3
                #1 ok ups.state = on_battery is true: ups1@nas:3493 reports on_battery
                #2 ok ups.charge_pct > 40 is true: ups1@nas:3493 reports 80
                explain: condition 1: ups.runtime_minutes >= 5 is false: ups1@nas:3493 reports 3"#]],
        );
        check(
            &two_upses(),
            &on_battery("ups2@rack:3493"),
            &["ups.runtime_minutes >= 5", "ups.state != on_battery"],
            expect![[r#"
                all_true: true
                #0 ok ups.runtime_minutes >= 5 is true: ups2@rack:3493 reports 42
                #1 ok ups.state != on_battery is true: ups2@rack:3493 reports on_mains
                explain: all 2 conditions hold"#]],
        );
    }

    #[test]
    fn an_ups_filter_by_name_or_full_id_wins_over_the_event() {
        check(
            &two_upses(),
            &on_battery("ups1@nas:3493"),
            &[
                "ups.runtime_minutes >= 5 ups=ups2",
                "ups.load < 50 ups=ups2@rack:3493",
                "ups.input.voltage = 0 ups=ups1",
            ],
            expect![[r#"
                all_true: true
                #0 ok ups.runtime_minutes >= 5 (ups: ups2) is true: ups2@rack:3493 reports 42
                #1 ok ups.load < 50 (ups: ups2@rack:3493) is true: ups2@rack:3493 reports 30
                #2 ok ups.input.voltage = 0 (ups: ups1) is true: ups1@nas:3493 reports 0
                explain: all 3 conditions hold"#]],
        );
    }

    #[test]
    fn a_non_ups_event_reads_the_only_ups_or_fails_as_ambiguous() {
        check(
            &one_ups(),
            &webhook(),
            &["ups.runtime_minutes < 5"],
            expect![[r#"
                all_true: true
                #0 ok ups.runtime_minutes < 5 is true: ups1@nas:3493 reports 3
                explain: the condition holds"#]],
        );
        check(
            &two_upses(),
            &webhook(),
            &[
                "ups.runtime_minutes < 5",
                "ups.runtime_minutes < 5 ups=ups1",
            ],
            expect![[r#"
                all_true: false
                #0 FAIL [condition.ambiguous_ups] ups.runtime_minutes < 5 cannot be evaluated: 2 UPSes match (ups1@nas:3493, ups2@rack:3493) and the condition names none of them; add `ups:` to it
                #1 ok ups.runtime_minutes < 5 (ups: ups1) is true: ups1@nas:3493 reports 3
                explain: condition 1: ups.runtime_minutes < 5 cannot be evaluated: 2 UPSes match (ups1@nas:3493, ups2@rack:3493) and the condition names none of them; add `ups:` to it"#]],
        );
        let same_name_twice = one_ups().with_ups(UpsFacts::new("ups1@other:3493"));
        check(
            &same_name_twice,
            &webhook(),
            &["ups.load > 1 ups=ups1"],
            expect![[r#"
                all_true: false
                #0 FAIL [condition.ambiguous_ups] ups.load > 1 (ups: ups1) cannot be evaluated: 2 UPSes match (ups1@nas:3493, ups1@other:3493) and the condition names none of them; add `ups:` to it
                explain: condition 1: ups.load > 1 (ups: ups1) cannot be evaluated: 2 UPSes match (ups1@nas:3493, ups1@other:3493) and the condition names none of them; add `ups:` to it"#]],
        );
    }

    #[test]
    fn missing_ups_facts_fail_the_condition_with_a_reason() {
        check(
            &one_ups(),
            &on_battery("ups1@nas:3493"),
            &["ups.load < 80", "ups.state = on_battery ups=ups9"],
            expect![[r#"
                all_true: false
                #0 FAIL [condition.missing_fact] ups.load < 80 cannot be evaluated: ups1@nas:3493 reports no load
                #1 FAIL [condition.missing_fact] ups.state = on_battery (ups: ups9) cannot be evaluated: no readings from UPS `ups9`
                explain: condition 1: ups.load < 80 cannot be evaluated: ups1@nas:3493 reports no load; condition 2: ups.state = on_battery (ups: ups9) cannot be evaluated: no readings from UPS `ups9`"#]],
        );
        check(
            &one_ups(),
            &on_battery("ups3@elsewhere"),
            &["ups.runtime_minutes >= 5"],
            expect![[r#"
                all_true: false
                #0 FAIL [condition.missing_fact] ups.runtime_minutes >= 5 cannot be evaluated: no readings from ups3@elsewhere (the event's UPS)
                explain: condition 1: ups.runtime_minutes >= 5 cannot be evaluated: no readings from ups3@elsewhere (the event's UPS)"#]],
        );
        check(
            &FactsSnapshot::new().with_ups(UpsFacts::new("ups1@nas")),
            &webhook(),
            &["ups.state = on_mains"],
            expect![[r#"
                all_true: false
                #0 FAIL [condition.missing_fact] ups.state = on_mains cannot be evaluated: ups1@nas reports no state
                explain: condition 1: ups.state = on_mains cannot be evaluated: ups1@nas reports no state"#]],
        );
        check(
            &FactsSnapshot::new(),
            &webhook(),
            &["ups.charge_pct > 50"],
            expect![[r#"
                all_true: false
                #0 FAIL [condition.missing_fact] ups.charge_pct > 50 cannot be evaluated: no UPS is known
                explain: condition 1: ups.charge_pct > 50 cannot be evaluated: no UPS is known"#]],
        );
    }

    #[test]
    fn host_reachable_reads_the_policys_host() {
        for host in ["pve-01", "pve-02", "pve-09"] {
            let expect = match host {
                "pve-01" => expect![[r#"
                    all_true: true
                    #0 ok host.reachable = true is true: pve-01 is reachable
                    explain: the condition holds"#]],
                "pve-02" => expect![[r#"
                    all_true: false
                    #0 FAIL host.reachable = true is false: pve-02 is unreachable
                    explain: condition 1: host.reachable = true is false: pve-02 is unreachable"#]],
                _ => expect![[r#"
                    all_true: false
                    #0 FAIL [condition.missing_fact] host.reachable = true cannot be evaluated: no reachability known for host pve-09
                    explain: condition 1: host.reachable = true cannot be evaluated: no reachability known for host pve-09"#]],
            };
            check_in(
                &one_ups(),
                &webhook(),
                host,
                Ok(0),
                &["host.reachable = true"],
                expect,
            );
        }
        check_in(
            &one_ups(),
            &webhook(),
            "pve-02",
            Ok(0),
            &["host.reachable != true"],
            expect![[r#"
                all_true: true
                #0 ok host.reachable != true is true: pve-02 is unreachable
                explain: the condition holds"#]],
        );
    }

    #[test]
    fn metric_conditions_prefer_the_event_source_then_the_only_reporter() {
        let facts = two_upses().with_metric("pve-01", "cpu", 93.5);
        check(
            &facts,
            &on_battery("ups2@rack:3493"),
            &[
                "metric.runtime_minutes > 10",
                "metric.cpu > 90",
                "metric.charge_pct > 40",
                "metric.load > 40 ups=ups2",
            ],
            expect![[r#"
                all_true: false
                #0 ok metric.runtime_minutes > 10 is true: ups2@rack:3493 reports 42
                #1 ok metric.cpu > 90 is true: pve-01 reports 93.5
                #2 ok metric.charge_pct > 40 is true: ups1@nas:3493 reports 80
                #3 FAIL metric.load > 40 (ups: ups2) is false: ups2@rack:3493 reports 30
                explain: condition 4: metric.load > 40 (ups: ups2) is false: ups2@rack:3493 reports 30"#]],
        );
        check(
            &facts,
            &webhook(),
            &[
                "metric.runtime_minutes > 10",
                "metric.disk_pct < 90",
                "metric.load > 1 ups=ups1",
            ],
            expect![[r#"
                all_true: false
                #0 FAIL [condition.ambiguous_metric] metric.runtime_minutes > 10 cannot be evaluated: 2 sources report runtime_minutes (ups1@nas:3493, ups2@rack:3493) and the condition names none of them; add `ups:` to it
                #1 FAIL [condition.missing_fact] metric.disk_pct < 90 cannot be evaluated: no source reports disk_pct
                #2 FAIL [condition.missing_fact] metric.load > 1 (ups: ups1) cannot be evaluated: no reading of load from `ups1`
                explain: condition 1: metric.runtime_minutes > 10 cannot be evaluated: 2 sources report runtime_minutes (ups1@nas:3493, ups2@rack:3493) and the condition names none of them; add `ups:` to it; condition 2: metric.disk_pct < 90 cannot be evaluated: no source reports disk_pct; condition 3: metric.load > 1 (ups: ups1) cannot be evaluated: no reading of load from `ups1`"#]],
        );
    }

    #[test]
    fn vm_count_matching_uses_the_selector_resolved_now() {
        check_in(
            &one_ups(),
            &webhook(),
            "pve-01",
            Ok(1),
            &["vm.count_matching >= 1", "vm.count_matching > 1"],
            expect![[r#"
                all_true: false
                #0 ok vm.count_matching >= 1 is true: the selector resolves to 1 target now
                #1 FAIL vm.count_matching > 1 is false: the selector resolves to 1 target now
                explain: condition 2: vm.count_matching > 1 is false: the selector resolves to 1 target now"#]],
        );
        check_in(
            &one_ups(),
            &webhook(),
            "pve-01",
            Err("the inventory of pve-01 is unavailable".to_string()),
            &["vm.count_matching >= 1"],
            expect![[r#"
                all_true: false
                #0 FAIL [condition.selector_unresolved] vm.count_matching >= 1 cannot be evaluated: the selector could not be resolved: the inventory of pve-01 is unavailable
                explain: condition 1: vm.count_matching >= 1 cannot be evaluated: the selector could not be resolved: the inventory of pve-01 is unavailable"#]],
        );
    }

    #[test]
    fn the_selector_is_resolved_at_most_once_and_only_when_needed() {
        let calls = std::cell::Cell::new(0);
        let count_matching = || {
            calls.set(calls.get() + 1);
            Ok(3)
        };
        let ctx = PolicyContext {
            host_id: "pve-01",
            count_matching: &count_matching,
        };
        let none = [cond("host.reachable = true")];
        evaluate(&none, &webhook(), &one_ups(), &ctx);
        assert_eq!(calls.get(), 0);
        let two = [cond("vm.count_matching > 1"), cond("vm.count_matching < 9")];
        assert!(evaluate(&two, &webhook(), &one_ups(), &ctx).all_true);
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn values_and_operators_that_do_not_fit_the_field_fail_instead_of_panicking() {
        check(
            &one_ups(),
            &on_battery("ups1@nas:3493"),
            &[
                "ups.state > 3",
                "ups.state = on_fire",
                "ups.runtime_minutes = \"long\"",
                "host.reachable >= true",
                "host.up = true",
                "vm.count = 1",
                "metric.charge_pct = yes ups=ups1",
            ],
            expect![[r#"
                all_true: false
                #0 FAIL [condition.type_mismatch] ups.state > 3 cannot be evaluated: a UPS state is compared with a state name
                #1 FAIL [condition.type_mismatch] ups.state = on_fire cannot be evaluated: `on_fire` is not a UPS state (one of on_battery, on_mains, low_battery, replace_battery, overload, forced_shutdown, comm_lost)
                #2 FAIL [condition.type_mismatch] ups.runtime_minutes = long cannot be evaluated: ups.runtime_minutes is a number, compared with "long"
                #3 FAIL [condition.type_mismatch] host.reachable >= true cannot be evaluated: `>=` orders numbers; use = or !=
                #4 FAIL [condition.unknown_field] host.up = true cannot be evaluated: the host scope knows `reachable`, not `up`
                #5 FAIL [condition.unknown_field] vm.count = 1 cannot be evaluated: the vm scope knows `count_matching`, not `count`
                #6 FAIL [condition.type_mismatch] metric.charge_pct = yes (ups: ups1) cannot be evaluated: metric.charge_pct is a number, compared with "yes"
                explain: condition 1: ups.state > 3 cannot be evaluated: a UPS state is compared with a state name; condition 2: ups.state = on_fire cannot be evaluated: `on_fire` is not a UPS state (one of on_battery, on_mains, low_battery, replace_battery, overload, forced_shutdown, comm_lost); condition 3: ups.runtime_minutes = long cannot be evaluated: ups.runtime_minutes is a number, compared with "long"; condition 4: host.reachable >= true cannot be evaluated: `>=` orders numbers; use = or !=; condition 5: host.up = true cannot be evaluated: the host scope knows `reachable`, not `up`; condition 6: vm.count = 1 cannot be evaluated: the vm scope knows `count_matching`, not `count`; condition 7: metric.charge_pct = yes (ups: ups1) cannot be evaluated: metric.charge_pct is a number, compared with "yes""#]],
        );
    }

    #[test]
    fn an_empty_condition_list_holds() {
        check(
            &FactsSnapshot::new(),
            &webhook(),
            &[],
            expect![[r#"
                all_true: true
                explain: no conditions"#]],
        );
    }

    #[test]
    fn applying_events_keeps_the_snapshot_current() {
        let mut facts = FactsSnapshot::new();
        facts.apply(&on_battery("ups1@nas:3493"));
        facts.apply(&event(
            EventKind::MetricThreshold,
            SubjectKind::Ups,
            "ups1@nas:3493",
            json!({"metric": "runtime_minutes", "value": 12}),
        ));
        facts.apply(&event(
            EventKind::MetricThreshold,
            SubjectKind::Host,
            "pve-01",
            json!({"metric": "cpu", "value": 50.5}),
        ));
        facts.apply(&event(
            EventKind::HostState,
            SubjectKind::Host,
            "pve-01",
            json!({"reachable": false}),
        ));
        assert_eq!(
            facts.ups(Some("ups1")),
            Lookup::Found(
                &UpsFacts::new("ups1@nas:3493")
                    .with_state(UpsState::OnBattery)
                    .with_reading("runtime_minutes", 12.0)
            )
        );
        assert_eq!(
            facts.metric("cpu", None),
            Lookup::Found(Reading {
                source: "pve-01".to_string(),
                value: 50.5
            })
        );
        assert_eq!(facts.host_reachable("pve-01"), Some(false));
    }
}
