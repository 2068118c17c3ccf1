//! The normalized event (SPEC §1): every source (NUT, metrics, timers,
//! webhooks, host probes, the API) publishes this one shape.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::spec::UpsState;

/// What happened. The event's `type` (`ups`, `metric`, ...) follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// `ups.state`: a UPS entered a state (`attrs.state`).
    UpsState,
    /// `metric.threshold`: a metric reading (`attrs.metric`, `attrs.value`).
    MetricThreshold,
    /// `timer.at`: a wall-clock schedule fired.
    TimerAt,
    /// `timer.after`: a delay counted from an event ran out.
    TimerAfter,
    /// `webhook.custom`: a named webhook was posted (`attrs.name`, `attrs.body`).
    WebhookCustom,
    /// `host.state`: a host became reachable or unreachable.
    HostState,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::UpsState,
        EventKind::MetricThreshold,
        EventKind::TimerAt,
        EventKind::TimerAfter,
        EventKind::WebhookCustom,
        EventKind::HostState,
    ];

    /// The `kind` string of SPEC §1 (`ups.state`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::UpsState => "ups.state",
            EventKind::MetricThreshold => "metric.threshold",
            EventKind::TimerAt => "timer.at",
            EventKind::TimerAfter => "timer.after",
            EventKind::WebhookCustom => "webhook.custom",
            EventKind::HostState => "host.state",
        }
    }

    /// The `type` string of SPEC §1 (`ups`).
    pub fn type_str(self) -> &'static str {
        match self {
            EventKind::UpsState => "ups",
            EventKind::MetricThreshold => "metric",
            EventKind::TimerAt | EventKind::TimerAfter => "timer",
            EventKind::WebhookCustom => "webhook",
            EventKind::HostState => "host",
        }
    }

    pub fn parse(text: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectKind {
    Ups,
    Host,
    Vm,
    Integration,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Ups => "ups",
            SubjectKind::Host => "host",
            SubjectKind::Vm => "vm",
            SubjectKind::Integration => "integration",
        }
    }

    pub fn parse(text: &str) -> Option<SubjectKind> {
        [
            SubjectKind::Ups,
            SubjectKind::Host,
            SubjectKind::Vm,
            SubjectKind::Integration,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// `subject`: a UPS is `<ups>@<server>` (`ups1@nas.lan:3493`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject {
    pub kind: SubjectKind,
    pub id: String,
}

/// One normalized event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub subject: Subject,
    pub attrs: Map<String, Value>,
    pub ts: DateTime<Utc>,
    /// Generated when the source gives none.
    pub correlation_id: Uuid,
}

impl Event {
    /// `attrs.state` of a `ups.state` event.
    pub fn ups_state(&self) -> Option<UpsState> {
        (self.kind == EventKind::UpsState)
            .then(|| {
                self.attrs
                    .get("state")
                    .and_then(Value::as_str)
                    .and_then(UpsState::parse)
            })
            .flatten()
    }

    /// `(attrs.metric, attrs.value)` of a `metric.threshold` event.
    pub fn metric(&self) -> Option<(&str, f64)> {
        if self.kind != EventKind::MetricThreshold {
            return None;
        }
        Some((
            self.attrs.get("metric")?.as_str()?,
            self.attrs.get("value")?.as_f64()?,
        ))
    }

    /// `attrs.name` of a `webhook.custom` event.
    pub fn webhook_name(&self) -> Option<&str> {
        (self.kind == EventKind::WebhookCustom)
            .then(|| self.attrs.get("name").and_then(Value::as_str))
            .flatten()
    }
}

/// Whether a policy's `ups: <subject id or UPS name>` filter names this
/// subject: the full id (`ups1@nas.lan:3493`) or its name part (`ups1`).
pub fn ups_matches(filter: &str, subject_id: &str) -> bool {
    filter == subject_id
        || subject_id
            .split_once('@')
            .is_some_and(|(name, _)| name == filter)
}

/// Why an event posted at the API edge was refused. Every variant names the
/// offending field as a dotted path (`attrs.value`, `subject.kind`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The posted value is not a JSON object.
    #[error("an event must be a JSON object")]
    NotAnEvent,
    /// `subject` or `attrs` is not a JSON object.
    #[error("`{field}` must be a JSON object")]
    NotAnObject { field: &'static str },
    /// A required field is absent.
    #[error("`{field}` is required")]
    Missing { field: &'static str },
    /// A field the event shape does not know (only `attrs` is open).
    #[error("`{field}` is not a known field (expected one of: {expected})")]
    UnknownField {
        field: String,
        expected: &'static str,
    },
    /// A field of the wrong JSON type, or an empty string where a name is needed.
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    /// A value outside a closed set (`kind`, `subject.kind`, `attrs.state`).
    #[error("`{field}`: `{found}` is not one of {allowed}")]
    NotOneOf {
        field: &'static str,
        found: String,
        allowed: String,
    },
    /// `type` disagrees with `kind` (`type: host` with `kind: ups.state`).
    #[error("`type`: `{found}` does not match kind `{kind}`, whose type is `{expected}`")]
    TypeMismatch {
        found: String,
        kind: &'static str,
        expected: &'static str,
    },
    /// The subject cannot be what this kind of event is about.
    #[error("`subject.kind`: a `{kind}` event is about a `{expected}`, not a `{found}`")]
    SubjectMismatch {
        kind: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    /// `ts` is not an RFC 3339 timestamp.
    #[error("`ts`: `{found}` is not an RFC 3339 timestamp (e.g. 2026-11-22T11:30:00Z)")]
    BadTimestamp { found: String },
    /// `correlation_id` is not a UUID.
    #[error("`correlation_id`: `{found}` is not a UUID")]
    BadCorrelationId { found: String },
}

impl EventError {
    /// The dotted path of the field the error is about (`""` for the event itself).
    pub fn field(&self) -> &str {
        match self {
            EventError::NotAnObject { field }
            | EventError::Missing { field }
            | EventError::WrongType { field, .. }
            | EventError::NotOneOf { field, .. } => field,
            EventError::UnknownField { field, .. } => field,
            EventError::NotAnEvent => "",
            EventError::TypeMismatch { .. } => "type",
            EventError::SubjectMismatch { .. } => "subject.kind",
            EventError::BadTimestamp { .. } => "ts",
            EventError::BadCorrelationId { .. } => "correlation_id",
        }
    }
}

const EVENT_FIELDS: &str = "type, kind, subject, attrs, ts, correlation_id";
const SUBJECT_FIELDS: &str = "kind, id";
const EVENT_KINDS: &str =
    "ups.state, metric.threshold, timer.at, timer.after, webhook.custom, host.state";
const SUBJECT_KINDS: &str = "ups, host, vm, integration";

impl Event {
    /// Reads the SPEC §1 JSON shape at the API edge, reporting every problem
    /// at once. `type` may be omitted (it follows from `kind`); `attrs`
    /// defaults to `{}`, `ts` to now and `correlation_id` to a fresh UUID.
    pub fn from_json(value: &Value) -> Result<Event, Vec<EventError>> {
        Event::from_json_at(value, Utc::now())
    }

    /// [`Event::from_json`] with `now` as the default timestamp.
    pub fn from_json_at(value: &Value, now: DateTime<Utc>) -> Result<Event, Vec<EventError>> {
        let mut errors = Vec::new();
        let Some(obj) = value.as_object() else {
            return Err(vec![EventError::NotAnEvent]);
        };
        for key in obj.keys() {
            if !EVENT_FIELDS.split(", ").any(|f| f == key) {
                errors.push(EventError::UnknownField {
                    field: key.clone(),
                    expected: EVENT_FIELDS,
                });
            }
        }

        let kind = match obj.get("kind") {
            None => {
                errors.push(EventError::Missing { field: "kind" });
                None
            }
            Some(Value::String(text)) => {
                let kind = EventKind::parse(text);
                if kind.is_none() {
                    errors.push(EventError::NotOneOf {
                        field: "kind",
                        found: text.clone(),
                        allowed: EVENT_KINDS.to_string(),
                    });
                }
                kind
            }
            Some(_) => {
                errors.push(EventError::WrongType {
                    field: "kind",
                    expected: "a string",
                });
                None
            }
        };

        match (obj.get("type"), kind) {
            (None, _) => {}
            (Some(Value::String(found)), Some(kind)) if found != kind.type_str() => {
                errors.push(EventError::TypeMismatch {
                    found: found.clone(),
                    kind: kind.as_str(),
                    expected: kind.type_str(),
                })
            }
            (Some(Value::String(_)), _) => {}
            (Some(_), _) => errors.push(EventError::WrongType {
                field: "type",
                expected: "a string",
            }),
        }

        let subject = parse_subject(obj.get("subject"), &mut errors);
        if let (Some(kind), Some(subject)) = (kind, &subject) {
            let expected = match kind {
                EventKind::UpsState => Some(SubjectKind::Ups),
                EventKind::HostState => Some(SubjectKind::Host),
                _ => None,
            };
            if let Some(expected) = expected.filter(|e| *e != subject.kind) {
                errors.push(EventError::SubjectMismatch {
                    kind: kind.as_str(),
                    expected: expected.as_str(),
                    found: subject.kind.as_str(),
                });
            }
        }

        let attrs = match obj.get("attrs") {
            None => Map::new(),
            Some(Value::Object(attrs)) => attrs.clone(),
            Some(_) => {
                errors.push(EventError::NotAnObject { field: "attrs" });
                Map::new()
            }
        };
        if let Some(kind) = kind {
            check_attrs(kind, &attrs, &mut errors);
        }

        let ts = match obj.get("ts") {
            None | Some(Value::Null) => now,
            Some(Value::String(text)) => match DateTime::parse_from_rfc3339(text) {
                Ok(ts) => ts.with_timezone(&Utc),
                Err(_) => {
                    errors.push(EventError::BadTimestamp {
                        found: text.clone(),
                    });
                    now
                }
            },
            Some(other) => {
                errors.push(EventError::BadTimestamp {
                    found: other.to_string(),
                });
                now
            }
        };

        let correlation_id = match obj.get("correlation_id") {
            None | Some(Value::Null) => Uuid::new_v4(),
            Some(Value::String(text)) => Uuid::parse_str(text).unwrap_or_else(|_| {
                errors.push(EventError::BadCorrelationId {
                    found: text.clone(),
                });
                Uuid::nil()
            }),
            Some(other) => {
                errors.push(EventError::BadCorrelationId {
                    found: other.to_string(),
                });
                Uuid::nil()
            }
        };

        match (kind, subject) {
            (Some(kind), Some(subject)) if errors.is_empty() => Ok(Event {
                kind,
                subject,
                attrs,
                ts,
                correlation_id,
            }),
            _ => Err(errors),
        }
    }

    /// The SPEC §1 JSON shape, with `type` filled in and `ts` in RFC 3339 (UTC).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "type": self.kind.type_str(),
            "kind": self.kind.as_str(),
            "subject": { "kind": self.subject.kind.as_str(), "id": self.subject.id },
            "attrs": self.attrs,
            "ts": self.ts.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            "correlation_id": self.correlation_id.to_string(),
        })
    }
}

fn parse_subject(value: Option<&Value>, errors: &mut Vec<EventError>) -> Option<Subject> {
    let obj = match value {
        None => {
            errors.push(EventError::Missing { field: "subject" });
            return None;
        }
        Some(Value::Object(obj)) => obj,
        Some(_) => {
            errors.push(EventError::NotAnObject { field: "subject" });
            return None;
        }
    };
    for key in obj.keys() {
        if !SUBJECT_FIELDS.split(", ").any(|f| f == key) {
            errors.push(EventError::UnknownField {
                field: format!("subject.{key}"),
                expected: SUBJECT_FIELDS,
            });
        }
    }
    let kind = match obj.get("kind") {
        None => {
            errors.push(EventError::Missing {
                field: "subject.kind",
            });
            None
        }
        Some(Value::String(text)) => {
            let kind = SubjectKind::parse(text);
            if kind.is_none() {
                errors.push(EventError::NotOneOf {
                    field: "subject.kind",
                    found: text.clone(),
                    allowed: SUBJECT_KINDS.to_string(),
                });
            }
            kind
        }
        Some(_) => {
            errors.push(EventError::WrongType {
                field: "subject.kind",
                expected: "a string",
            });
            None
        }
    };
    let id = match obj.get("id") {
        None => {
            errors.push(EventError::Missing {
                field: "subject.id",
            });
            None
        }
        Some(Value::String(id)) if !id.trim().is_empty() => Some(id.clone()),
        Some(_) => {
            errors.push(EventError::WrongType {
                field: "subject.id",
                expected: "a non-empty string",
            });
            None
        }
    };
    Some(Subject {
        kind: kind?,
        id: id?,
    })
}

/// The attributes each kind needs (SPEC §1); other attributes pass through.
fn check_attrs(kind: EventKind, attrs: &Map<String, Value>, errors: &mut Vec<EventError>) {
    let mut name = |field: &'static str, key: &str| match attrs.get(key) {
        None => errors.push(EventError::Missing { field }),
        Some(Value::String(s)) if !s.trim().is_empty() => {}
        Some(_) => errors.push(EventError::WrongType {
            field,
            expected: "a non-empty string",
        }),
    };
    match kind {
        EventKind::UpsState => match attrs.get("state") {
            None => errors.push(EventError::Missing {
                field: "attrs.state",
            }),
            Some(Value::String(s)) if UpsState::parse(s).is_some() => {}
            Some(other) => errors.push(EventError::NotOneOf {
                field: "attrs.state",
                found: other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_string),
                allowed: UpsState::NAMES.join(", "),
            }),
        },
        EventKind::MetricThreshold => {
            name("attrs.metric", "metric");
            match attrs.get("value") {
                None => errors.push(EventError::Missing {
                    field: "attrs.value",
                }),
                Some(v) if v.as_f64().is_some_and(f64::is_finite) => {}
                Some(_) => errors.push(EventError::WrongType {
                    field: "attrs.value",
                    expected: "a number",
                }),
            }
        }
        EventKind::WebhookCustom => name("attrs.name", "name"),
        EventKind::TimerAt | EventKind::TimerAfter | EventKind::HostState => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// Parses `input` and renders either the event (with a generated
    /// correlation id masked) or every error with its field.
    fn check(input: Value, expect: Expect) {
        let actual = match Event::from_json_at(&input, now()) {
            Ok(event) => {
                let mut out = event.to_json();
                if input.get("correlation_id").is_none() {
                    out["correlation_id"] = json!("<generated>");
                }
                out.to_string()
            }
            Err(errors) => errors
                .iter()
                .map(|e| format!("{}: {e}", e.field()))
                .collect::<Vec<_>>()
                .join("\n"),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn a_full_ups_event_parses_and_prints_back() {
        check(
            json!({
                "type": "ups", "kind": "ups.state",
                "subject": {"kind": "ups", "id": "ups1@nas:3493"},
                "attrs": {"state": "on_battery"},
                "ts": "2026-11-22T11:30:00+01:00",
                "correlation_id": "67e55044-10b1-426f-9247-bb680e5fe0c8"
            }),
            expect![[
                r#"{"attrs":{"state":"on_battery"},"correlation_id":"67e55044-10b1-426f-9247-bb680e5fe0c8","kind":"ups.state","subject":{"id":"ups1@nas:3493","kind":"ups"},"ts":"2026-11-22T10:30:00Z","type":"ups"}"#
            ]],
        );
    }

    #[test]
    fn type_ts_attrs_and_correlation_id_may_be_omitted() {
        check(
            json!({"kind": "timer.at", "subject": {"kind": "integration", "id": "nightly"}}),
            expect![[
                r#"{"attrs":{},"correlation_id":"<generated>","kind":"timer.at","subject":{"id":"nightly","kind":"integration"},"ts":"2026-11-22T12:00:00Z","type":"timer"}"#
            ]],
        );
    }

    #[test]
    fn metric_and_webhook_events_carry_their_attributes() {
        check(
            json!({"kind": "metric.threshold", "subject": {"kind": "ups", "id": "ups1@nas"},
                   "attrs": {"metric": "load", "value": 61.5}}),
            expect![[
                r#"{"attrs":{"metric":"load","value":61.5},"correlation_id":"<generated>","kind":"metric.threshold","subject":{"id":"ups1@nas","kind":"ups"},"ts":"2026-11-22T12:00:00Z","type":"metric"}"#
            ]],
        );
        check(
            json!({"kind": "webhook.custom", "subject": {"kind": "integration", "id": "ci"},
                   "attrs": {"name": "deploy", "body": {"ref": "main"}}}),
            expect![[
                r#"{"attrs":{"body":{"ref":"main"},"name":"deploy"},"correlation_id":"<generated>","kind":"webhook.custom","subject":{"id":"ci","kind":"integration"},"ts":"2026-11-22T12:00:00Z","type":"webhook"}"#
            ]],
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_field() {
        check(
            json!({
                "type": "host", "kind": "ups.state", "extra": 1,
                "subject": {"kind": "host", "id": "", "name": "x"},
                "attrs": {"state": "on_fire"},
                "ts": "yesterday", "correlation_id": "abc"
            }),
            expect![[r#"
                extra: `extra` is not a known field (expected one of: type, kind, subject, attrs, ts, correlation_id)
                type: `type`: `host` does not match kind `ups.state`, whose type is `ups`
                subject.name: `subject.name` is not a known field (expected one of: kind, id)
                subject.id: `subject.id` must be a non-empty string
                attrs.state: `attrs.state`: `on_fire` is not one of on_battery, on_mains, low_battery, replace_battery, overload, forced_shutdown, comm_lost
                ts: `ts`: `yesterday` is not an RFC 3339 timestamp (e.g. 2026-11-22T11:30:00Z)
                correlation_id: `correlation_id`: `abc` is not a UUID"#]],
        );
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        check(json!([1]), expect![": an event must be a JSON object"]);
        check(
            json!({"subject": {"kind": "vm"}}),
            expect![[r#"
                kind: `kind` is required
                subject.id: `subject.id` is required"#]],
        );
        check(
            json!({"kind": "metric.threshold", "subject": {"kind": "rack", "id": "r1"},
                   "attrs": {"value": "high"}}),
            expect![[r#"
                subject.kind: `subject.kind`: `rack` is not one of ups, host, vm, integration
                attrs.metric: `attrs.metric` is required
                attrs.value: `attrs.value` must be a number"#]],
        );
        check(
            json!({"kind": "webhook.custom", "subject": {"kind": "integration", "id": "ci"},
                   "attrs": []}),
            expect![[r#"
                attrs: `attrs` must be a JSON object
                attrs.name: `attrs.name` is required"#]],
        );
        check(
            json!({"kind": "ups.state", "subject": {"kind": "host", "id": "pve-01"},
                   "attrs": {"state": "on_mains"}}),
            expect![
                "subject.kind: `subject.kind`: a `ups.state` event is about a `ups`, not a `host`"
            ],
        );
    }

    #[test]
    fn to_json_and_from_json_round_trip() {
        let input = json!({"kind": "host.state", "subject": {"kind": "host", "id": "pve-01"},
                           "attrs": {"reachable": false}, "ts": "2026-11-22T11:30:00.250Z"});
        let event = Event::from_json_at(&input, now()).unwrap();
        assert_eq!(Event::from_json(&event.to_json()), Ok(event));
    }

    #[test]
    fn a_ups_filter_matches_the_full_id_or_the_name() {
        assert!(ups_matches("ups1@nas:3493", "ups1@nas:3493"));
        assert!(ups_matches("ups1", "ups1@nas:3493"));
        assert!(!ups_matches("ups2", "ups1@nas:3493"));
        assert!(!ups_matches("nas:3493", "ups1@nas:3493"));
    }

    #[test]
    fn kinds_round_trip_their_names() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }
}
