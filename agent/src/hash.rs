//! The policy hash (SPEC §3): sha256 over the canonical JSON of the
//! normalized spec, without `name`, `notes` and `enabled`.
//!
//! Canonical means: object keys sorted, no insignificant whitespace, defaults
//! filled in (including manifest param defaults), durations in seconds,
//! integral numbers written as integers (`60` and `60.0` are the same), list
//! selectors without the spaces around items, and triggers and conditions
//! sorted, since neither a trigger group nor the flat AND of conditions
//! depends on order. Action order is kept: it is the execution order.
//! The writer sorts keys itself, so the hash cannot change with a
//! `serde_json` feature that keeps insertion order.

use std::io::Write;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::compile::PlanStep;
use crate::spec::{Condition, EventPattern, PolicySpec, Repeat, Schedule, Scope, Trigger, Weekday};
use inventory::selector::SelectorMode;

/// The hex sha256 of the canonical form of `spec` with the compiled `plan`.
pub fn policy_hash(spec: &PolicySpec, plan: &[PlanStep]) -> String {
    // One buffer hashed at once: many tiny `update` calls cost more than the copy.
    let mut canonical = Vec::with_capacity(1024);
    write_canonical_spec(&mut canonical, spec, plan);
    hex::encode(Sha256::digest(&canonical))
}

/// The canonical JSON text itself, for debugging and tests.
pub fn canonical_text(spec: &PolicySpec, plan: &[PlanStep]) -> String {
    let mut out = Vec::new();
    write_canonical_spec(&mut out, spec, plan);
    String::from_utf8(out).expect("canonical JSON is UTF-8")
}

/// A canonical JSON value built from borrowed parts: objects sort their keys
/// when written, so no intermediate `serde_json::Value` is allocated.
enum Field<'a> {
    Str(&'a str),
    Int(i64),
    Num(f64),
    Bool(bool),
    Json(&'a Value),
    Map(&'a serde_json::Map<String, Value>),
    Obj(Vec<(&'static str, Field<'a>)>),
    List(Vec<Field<'a>>),
    /// Already-canonical items, sorted before writing (order-free lists).
    Sorted(Vec<Vec<u8>>),
}

fn write_field(out: &mut impl Write, field: &Field<'_>) {
    match field {
        Field::Str(s) => write_str(out, s),
        Field::Int(n) => {
            let _ = out.write_all(itoa::Buffer::new().format(*n).as_bytes());
        }
        Field::Num(f) => write_canonical(out, &Value::from(*f)),
        Field::Bool(b) => {
            let _ = out.write_all(if *b { b"true" } else { b"false" });
        }
        Field::Json(v) => write_canonical(out, v),
        Field::Map(m) => write_map(out, m),
        Field::Obj(pairs) => {
            let mut order: Vec<usize> = (0..pairs.len()).collect();
            order.sort_unstable_by_key(|i| pairs[*i].0);
            let _ = out.write_all(b"{");
            for (n, i) in order.into_iter().enumerate() {
                if n > 0 {
                    let _ = out.write_all(b",");
                }
                let (key, value) = &pairs[i];
                let _ = out.write_all(b"\"");
                let _ = out.write_all(key.as_bytes());
                let _ = out.write_all(b"\":");
                write_field(out, value);
            }
            let _ = out.write_all(b"}");
        }
        Field::List(items) => {
            let _ = out.write_all(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    let _ = out.write_all(b",");
                }
                write_field(out, item);
            }
            let _ = out.write_all(b"]");
        }
        Field::Sorted(items) => {
            let mut items: Vec<&Vec<u8>> = items.iter().collect();
            items.sort_unstable();
            let _ = out.write_all(b"[");
            for (i, item) in items.into_iter().enumerate() {
                if i > 0 {
                    let _ = out.write_all(b",");
                }
                let _ = out.write_all(item);
            }
            let _ = out.write_all(b"]");
        }
    }
}

fn bytes(field: Field<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_field(&mut out, &field);
    out
}

fn push_opt<'a>(
    pairs: &mut Vec<(&'static str, Field<'a>)>,
    key: &'static str,
    value: Option<Field<'a>>,
) {
    if let Some(v) = value {
        pairs.push((key, v));
    }
}

fn trigger_field(t: &Trigger) -> Field<'_> {
    let mut pairs = vec![("type", Field::Str(t.type_name()))];
    match t {
        Trigger::UpsState { equals, for_s, ups } => {
            pairs.push(("equals", Field::Str(equals.as_str())));
            push_opt(&mut pairs, "for_s", for_s.map(|s| Field::Int(s as i64)));
            push_opt(&mut pairs, "ups", ups.as_deref().map(Field::Str));
        }
        Trigger::MetricThreshold {
            metric,
            op,
            value,
            for_s,
            ups,
        } => {
            pairs.push(("metric", Field::Str(metric)));
            pairs.push(("op", Field::Str(op.as_str())));
            pairs.push(("value", Field::Num(*value)));
            push_opt(&mut pairs, "for_s", for_s.map(|s| Field::Int(s as i64)));
            push_opt(&mut pairs, "ups", ups.as_deref().map(Field::Str));
        }
        Trigger::TimerAt { schedule } => {
            let schedule = match schedule {
                Schedule::Repeat { repeat, at, days } => {
                    let mut s = vec![
                        (
                            "repeat",
                            Field::Str(if *repeat == Repeat::Daily {
                                "daily"
                            } else {
                                "weekly"
                            }),
                        ),
                        ("at", Field::Str(at)),
                    ];
                    if !days.is_empty() {
                        s.push((
                            "days",
                            Field::List(
                                days.iter()
                                    .map(|d| Field::Str(Weekday::NAMES[*d as usize]))
                                    .collect(),
                            ),
                        ));
                    }
                    s
                }
                Schedule::Cron { cron } => vec![("cron", Field::Str(cron))],
            };
            pairs.push(("schedule", Field::Obj(schedule)));
        }
        Trigger::TimerAfter {
            after_s,
            since_event,
        } => {
            pairs.push(("after_s", Field::Int(*after_s as i64)));
            let since = match since_event {
                EventPattern::UpsState { equals, ups } => {
                    let mut s = vec![
                        ("type", Field::Str("ups.state")),
                        ("equals", Field::Str(equals.as_str())),
                    ];
                    push_opt(&mut s, "ups", ups.as_deref().map(Field::Str));
                    s
                }
                EventPattern::WebhookCustom { name } => {
                    vec![
                        ("type", Field::Str("webhook.custom")),
                        ("name", Field::Str(name)),
                    ]
                }
            };
            pairs.push(("since_event", Field::Obj(since)));
        }
        Trigger::WebhookCustom { name } => pairs.push(("name", Field::Str(name))),
    }
    Field::Obj(pairs)
}

fn condition_field(c: &Condition) -> Field<'_> {
    let mut pairs = vec![
        ("scope", Field::Str(Scope::NAMES[c.scope as usize])),
        ("field", Field::Str(&c.field)),
        ("op", Field::Str(c.op.as_str())),
        ("value", Field::Json(&c.value)),
    ];
    push_opt(&mut pairs, "ups", c.ups.as_deref().map(Field::Str));
    Field::Obj(pairs)
}

fn write_canonical_spec(out: &mut impl Write, spec: &PolicySpec, plan: &[PlanStep]) {
    let selector_value = match spec.targets.selector.mode {
        SelectorMode::List | SelectorMode::Range => {
            let v = &spec.targets.selector.value;
            if v.contains(char::is_whitespace) {
                v.split(',').map(str::trim).collect::<Vec<_>>().join(",")
            } else {
                v.clone()
            }
        }
        SelectorMode::Query | SelectorMode::Ledger => {
            spec.targets.selector.value.trim().to_string()
        }
    };
    let actions = plan
        .iter()
        .map(|step| {
            let mut a = vec![
                ("capability_id", Field::Str(&step.capability)),
                ("verb", Field::Str(&step.verb)),
                ("params", Field::Map(&step.params)),
            ];
            push_opt(&mut a, "key_hint", step.key_hint.as_deref().map(Field::Str));
            Field::Obj(a)
        })
        .collect();
    let logic = match spec.trigger_group.logic {
        crate::spec::Logic::All => "ALL",
        crate::spec::Logic::Any => "ANY",
    };
    let doc = Field::Obj(vec![
        ("version", Field::Int(spec.version as i64)),
        ("priority", Field::Int(spec.priority)),
        ("stop_on_match", Field::Bool(spec.stop_on_match)),
        ("dynamic_resolution", Field::Bool(spec.dynamic_resolution)),
        (
            "trigger_group",
            Field::Obj(vec![
                ("logic", Field::Str(logic)),
                (
                    "triggers",
                    Field::Sorted(
                        spec.trigger_group
                            .triggers
                            .iter()
                            .map(|t| bytes(trigger_field(t)))
                            .collect(),
                    ),
                ),
            ]),
        ),
        (
            "conditions",
            Field::Sorted(
                spec.conditions
                    .iter()
                    .map(|c| bytes(condition_field(c)))
                    .collect(),
            ),
        ),
        (
            "targets",
            Field::Obj(vec![
                ("host_id", Field::Str(&spec.targets.host_id)),
                ("target_type", Field::Str(&spec.targets.target_type)),
                (
                    "selector",
                    Field::Obj(vec![
                        ("mode", Field::Str(spec.targets.selector.mode.as_str())),
                        ("value", Field::Str(&selector_value)),
                    ]),
                ),
            ]),
        ),
        ("actions", Field::List(actions)),
        ("suppression_s", Field::Int(spec.suppression_s as i64)),
        ("idempotency_s", Field::Int(spec.idempotency_s as i64)),
    ]);
    write_field(out, &doc);
}

fn write_map(out: &mut impl Write, map: &serde_json::Map<String, Value>) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_unstable();
    let _ = out.write_all(b"{");
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            let _ = out.write_all(b",");
        }
        write_str(out, key);
        let _ = out.write_all(b":");
        write_canonical(out, &map[key]);
    }
    let _ = out.write_all(b"}");
}

/// Writes a JSON string; text without quotes, backslashes or control
/// characters (nearly all of a policy) is copied as it is.
fn write_str(out: &mut impl Write, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        let _ = out.write_all(b"\"");
        let _ = out.write_all(s.as_bytes());
        let _ = out.write_all(b"\"");
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Writes `value` as canonical JSON: sorted keys, no whitespace, integral
/// numbers as integers.
pub fn write_canonical(out: &mut impl Write, value: &Value) {
    match value {
        Value::Object(map) => write_map(out, map),
        Value::Array(items) => {
            let _ = out.write_all(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    let _ = out.write_all(b",");
                }
                write_canonical(out, item);
            }
            let _ = out.write_all(b"]");
        }
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                let _ = out.write_all(itoa::Buffer::new().format(f as i64).as_bytes());
            }
            _ => {
                let _ = serde_json::to_writer(&mut *out, n);
            }
        },
        Value::String(s) => write_str(out, s),
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(v: Value) -> String {
        let mut out = Vec::new();
        write_canonical(&mut out, &v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn canonical_json_sorts_keys_and_normalizes_integral_floats() {
        let v = serde_json::json!({"b": 60.0, "a": {"y": [1.5, 2], "x": "s"}});
        assert_eq!(canonical(v), r#"{"a":{"x":"s","y":[1.5,2]},"b":60}"#);
    }

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_does() {
        for s in [
            "plain",
            "quo\"te",
            "back\\slash",
            "new\nline",
            "tab\t",
            "\u{1}",
            "ünï",
            "\u{7f}",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }
}
