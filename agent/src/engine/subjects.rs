//! What the agent last knew of each UPS, and what a full reading changes
//! against it (SPEC §1 "judged against what the agent last knew", §6
//! "Outage lifecycle").
//!
//! Events are edges, but an outage is a level: the store keeps, per UPS
//! subject, the power source and conditions the engine last accepted
//! ([`UpsLevel`]). A source's first reading after start or reconnect is a
//! *level reading* ([`level_event`]): the engine compares it with that
//! record ([`entered`]) and handles each difference as an ordinary edge, so
//! a restart on mains fires nothing, a start during an outage acts on it,
//! and a mains return that happened while the agent was down still runs
//! the mains-return policies. Pure: no store, no clock.

use chrono::Utc;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::engine::event::{Event, EventKind, Subject, SubjectKind};
use crate::spec::UpsState;

/// The attribute that marks a `ups.state` event as a full reading: `true`,
/// with every state the UPS is in under [`STATES_ATTR`].
pub const LEVEL_ATTR: &str = "level";

/// The attribute listing a level reading's states (`["on_battery",
/// "low_battery"]`).
pub const STATES_ATTR: &str = "states";

/// The attribute of a level reading holding the metrics read with it, by
/// canonical name (`{"charge_pct": 42.0}`): what confirms or ends a
/// restored `metric.threshold` hold ([`level_metrics`]).
pub const METRICS_ATTR: &str = "metrics";

/// The order several states entered at once are published in: the power
/// source first (entering it ends the conditions of the previous one,
/// [`UpsState::ends`]), then the conditions on top of it, increasingly
/// severe.
pub const PUBLISH_ORDER: [UpsState; 6] = [
    UpsState::OnMains,
    UpsState::OnBattery,
    UpsState::ReplaceBattery,
    UpsState::Overload,
    UpsState::LowBattery,
    UpsState::ForcedShutdown,
];

/// The states a UPS is in: one power source (once known) and the
/// conditions on top of it. `comm_lost` is never part of it: losing
/// contact says nothing of the UPS, and the first reading after contact
/// returns is compared with what was known before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpsLevel {
    pub power: Option<UpsState>,
    /// In [`PUBLISH_ORDER`], without duplicates.
    pub conditions: Vec<UpsState>,
}

impl UpsLevel {
    /// The level of a reading's states (any order; `comm_lost` ignored).
    pub fn from_states(states: &[UpsState]) -> UpsLevel {
        let mut level = UpsLevel::default();
        for &state in &PUBLISH_ORDER {
            if !states.contains(&state) {
                continue;
            }
            if state.is_power_source() {
                // A reading with both sources is malformed: battery wins,
                // the side a shutdown policy must not miss.
                if level.power != Some(UpsState::OnBattery) {
                    level.power = Some(state);
                }
            } else {
                level.conditions.push(state);
            }
        }
        level
    }

    /// The level as the store keeps it: state names, the power source first.
    pub fn names(&self) -> Vec<String> {
        self.states()
            .into_iter()
            .map(|s| s.as_str().to_string())
            .collect()
    }

    /// The level the store kept; unknown names are skipped.
    pub fn from_names(names: &[String]) -> UpsLevel {
        let states: Vec<UpsState> = names.iter().filter_map(|n| UpsState::parse(n)).collect();
        UpsLevel::from_states(&states)
    }

    /// Every state, the power source first.
    pub fn states(&self) -> Vec<UpsState> {
        self.power
            .iter()
            .copied()
            .chain(self.conditions.iter().copied())
            .collect()
    }

    /// Folds in an edge: entering a power source ends the other one and
    /// every condition ([`UpsState::ends`]); a condition is added;
    /// `comm_lost` changes nothing.
    pub fn enter(&mut self, state: UpsState) {
        if state == UpsState::CommLost {
            return;
        }
        if state.is_power_source() {
            self.power = Some(state);
            self.conditions.clear();
        } else if !self.conditions.contains(&state) {
            self.conditions.push(state);
            self.conditions.sort_by_key(|s| order(*s));
        }
    }

    /// On mains (or no source known) with no condition: what a first start
    /// takes as nothing to act on.
    pub fn is_normal(&self) -> bool {
        self.power != Some(UpsState::OnBattery) && self.conditions.is_empty()
    }

    /// Whether the UPS is in `state` (`comm_lost` is never recorded).
    pub fn contains(&self, state: UpsState) -> bool {
        self.power == Some(state) || self.conditions.contains(&state)
    }
}

fn order(state: UpsState) -> usize {
    PUBLISH_ORDER
        .iter()
        .position(|&s| s == state)
        .unwrap_or(PUBLISH_ORDER.len())
}

/// The states a full `reading` publishes as entered, in [`PUBLISH_ORDER`],
/// judged against `record`, the level the agent last knew (SPEC §1):
/// - no record (a first start, a new UPS): nothing when the reading is
///   normal; otherwise `on_battery` (when on battery) and every condition,
///   as entered now. `on_mains` is never published without a record: no
///   outage was seen, so there is nothing to restore;
/// - a record: the power source when it differs, and each condition not
///   recorded; going on battery reports every condition present again
///   (the outage is a new one, as the NUT source does between polls), while
///   a return to mains reports only conditions that were not known.
pub fn entered(record: Option<&UpsLevel>, reading: &UpsLevel) -> Vec<UpsState> {
    let Some(record) = record else {
        if reading.is_normal() {
            return Vec::new();
        }
        return reading
            .power
            .filter(|&p| p == UpsState::OnBattery)
            .into_iter()
            .chain(reading.conditions.iter().copied())
            .collect();
    };
    let mut out = Vec::new();
    let power_changed = reading.power.is_some() && reading.power != record.power;
    if power_changed {
        out.extend(reading.power);
    }
    let to_battery = power_changed && reading.power == Some(UpsState::OnBattery);
    out.extend(
        reading
            .conditions
            .iter()
            .copied()
            .filter(|c| to_battery || !record.conditions.contains(c)),
    );
    out
}

/// A level reading of the UPS `subject_id`: a `ups.state` event whose
/// `state` is the power source (so a consumer that knows nothing of levels
/// still reads it as one) and whose `states` list everything it is in.
pub fn level_event(subject_id: &str, states: &[UpsState]) -> Event {
    let level = UpsLevel::from_states(states);
    let mut attrs = Map::new();
    if let Some(power) = level.power {
        attrs.insert("state".into(), Value::from(power.as_str()));
    }
    attrs.insert(LEVEL_ATTR.into(), Value::Bool(true));
    attrs.insert(
        STATES_ATTR.into(),
        Value::Array(level.names().into_iter().map(Value::from).collect()),
    );
    Event {
        kind: EventKind::UpsState,
        subject: Subject {
            kind: SubjectKind::Ups,
            id: subject_id.to_string(),
        },
        attrs,
        ts: Utc::now(),
        correlation_id: Uuid::new_v4(),
    }
}

/// A [`level_event`] that also carries the metrics read with the states
/// (under [`METRICS_ATTR`]).
pub fn level_event_with_metrics<'a>(
    subject_id: &str,
    states: &[UpsState],
    metrics: impl IntoIterator<Item = (&'a str, f64)>,
) -> Event {
    let mut event = level_event(subject_id, states);
    let metrics: Map<String, Value> = metrics
        .into_iter()
        .map(|(name, value)| (name.to_string(), Value::from(value)))
        .collect();
    if !metrics.is_empty() {
        event
            .attrs
            .insert(METRICS_ATTR.into(), Value::Object(metrics));
    }
    event
}

/// The metrics a level reading carries ([`level_event_with_metrics`]);
/// empty for an edge or a reading without metrics.
pub fn level_metrics(event: &Event) -> Vec<(String, f64)> {
    event
        .attrs
        .get(METRICS_ATTR)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(name, value)| Some((name.clone(), value.as_f64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The level an event states, when it is a level reading (see
/// [`level_event`]); `None` for an ordinary edge.
pub fn level_reading(event: &Event) -> Option<UpsLevel> {
    if event.kind != EventKind::UpsState
        || event.attrs.get(LEVEL_ATTR).and_then(Value::as_bool) != Some(true)
    {
        return None;
    }
    let names: Vec<String> = event
        .attrs
        .get(STATES_ATTR)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut level = UpsLevel::from_names(&names);
    if level.power.is_none() {
        level.power = event.ups_state().filter(|s| s.is_power_source());
    }
    Some(level)
}

/// The edge event for `state` entered by a level reading: same subject,
/// time and correlation id, so the runs it causes trace back to it.
pub fn edge_of(level: &Event, state: UpsState) -> Event {
    let mut attrs = Map::new();
    attrs.insert("state".into(), Value::from(state.as_str()));
    Event {
        kind: EventKind::UpsState,
        subject: level.subject.clone(),
        attrs,
        ts: level.ts,
        correlation_id: level.correlation_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use UpsState::*;

    fn level(states: &[UpsState]) -> UpsLevel {
        UpsLevel::from_states(states)
    }

    fn names(states: Vec<UpsState>) -> Vec<&'static str> {
        states.into_iter().map(UpsState::as_str).collect()
    }

    #[test]
    fn a_first_start_on_mains_publishes_nothing() {
        assert!(entered(None, &level(&[OnMains])).is_empty());
        assert!(entered(None, &level(&[])).is_empty());
    }

    #[test]
    fn a_first_start_during_an_outage_publishes_it_as_entered() {
        assert_eq!(names(entered(None, &level(&[OnBattery]))), ["on_battery"]);
        assert_eq!(
            names(entered(None, &level(&[LowBattery, OnBattery]))),
            ["on_battery", "low_battery"]
        );
        // On mains with a condition: the condition, never `on_mains`.
        assert_eq!(
            names(entered(None, &level(&[OnMains, ReplaceBattery]))),
            ["replace_battery"]
        );
    }

    #[test]
    fn an_equal_reading_publishes_nothing() {
        let record = level(&[OnBattery, LowBattery]);
        assert!(entered(Some(&record), &level(&[OnBattery, LowBattery])).is_empty());
        assert!(entered(Some(&level(&[OnMains])), &level(&[OnMains])).is_empty());
    }

    #[test]
    fn mains_returned_while_down_is_published_as_on_mains() {
        let record = level(&[OnBattery]);
        assert_eq!(
            names(entered(Some(&record), &level(&[OnMains]))),
            ["on_mains"]
        );
    }

    #[test]
    fn going_on_battery_reports_every_condition_again_and_mains_only_new_ones() {
        let record = level(&[OnMains, ReplaceBattery]);
        assert_eq!(
            names(entered(Some(&record), &level(&[OnBattery, ReplaceBattery]))),
            ["on_battery", "replace_battery"]
        );
        let record = level(&[OnBattery, LowBattery]);
        assert_eq!(
            names(entered(
                Some(&record),
                &level(&[OnMains, LowBattery, Overload])
            )),
            ["on_mains", "overload"]
        );
    }

    #[test]
    fn a_reading_without_a_power_source_keeps_the_recorded_one() {
        let record = level(&[OnBattery]);
        assert_eq!(
            names(entered(Some(&record), &level(&[LowBattery]))),
            ["low_battery"]
        );
    }

    #[test]
    fn edges_fold_into_the_level_as_the_store_keeps_it() {
        let mut l = UpsLevel::default();
        l.enter(OnBattery);
        l.enter(LowBattery);
        l.enter(CommLost);
        l.enter(ReplaceBattery);
        assert_eq!(l.names(), ["on_battery", "replace_battery", "low_battery"]);
        assert_eq!(UpsLevel::from_names(&l.names()), l);
        l.enter(OnMains);
        assert_eq!(l.names(), ["on_mains"]);
    }

    #[test]
    fn a_level_event_round_trips_and_an_edge_is_not_a_level() {
        let e = level_event("ups1@nas:3493", &[LowBattery, OnBattery]);
        assert_eq!(e.ups_state(), Some(OnBattery));
        assert_eq!(level_reading(&e), Some(level(&[OnBattery, LowBattery])));
        let edge = edge_of(&e, LowBattery);
        assert_eq!(edge.correlation_id, e.correlation_id);
        assert_eq!(level_reading(&edge), None);
    }
}
