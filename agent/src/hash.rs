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

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::compile::PlanStep;
use crate::spec::PolicySpec;
use inventory::selector::SelectorMode;

/// The hex sha256 of the canonical form of `spec` with the compiled `plan`.
pub fn policy_hash(spec: &PolicySpec, plan: &[PlanStep]) -> String {
    let mut hasher = HashWriter(Sha256::new());
    write_canonical_spec(&mut hasher, spec, plan);
    hex::encode(hasher.0.finalize())
}

/// The canonical JSON text itself, for debugging and tests.
pub fn canonical_text(spec: &PolicySpec, plan: &[PlanStep]) -> String {
    let mut out = Vec::new();
    write_canonical_spec(&mut out, spec, plan);
    String::from_utf8(out).expect("canonical JSON is UTF-8")
}

struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn write_canonical_spec(out: &mut impl Write, spec: &PolicySpec, plan: &[PlanStep]) {
    let actions = Value::Array(
        plan.iter()
            .map(|step| {
                let mut m = serde_json::Map::new();
                m.insert("capability_id".into(), Value::String(step.capability.clone()));
                m.insert("verb".into(), Value::String(step.verb.clone()));
                m.insert("params".into(), Value::Object(step.params.clone()));
                if let Some(hint) = &step.key_hint {
                    m.insert("key_hint".into(), Value::String(hint.clone()));
                }
                Value::Object(m)
            })
            .collect(),
    );
    let mut triggers: Vec<Vec<u8>> = spec.trigger_group.triggers.iter().map(canonical_bytes).collect();
    triggers.sort();
    let mut conditions: Vec<Vec<u8>> = spec.conditions.iter().map(canonical_bytes).collect();
    conditions.sort();
    let selector_value = match spec.targets.selector.mode {
        SelectorMode::List | SelectorMode::Range => spec
            .targets
            .selector
            .value
            .split(',')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(","),
        SelectorMode::Query | SelectorMode::Ledger => spec.targets.selector.value.trim().to_string(),
    };
    let mut targets = serde_json::Map::new();
    targets.insert("host_id".into(), Value::String(spec.targets.host_id.clone()));
    targets.insert("target_type".into(), Value::String(spec.targets.target_type.clone()));
    let mut selector = serde_json::Map::new();
    selector.insert("mode".into(), Value::String(spec.targets.selector.mode.as_str().into()));
    selector.insert("value".into(), Value::String(selector_value));
    targets.insert("selector".into(), Value::Object(selector));

    // Top-level keys in sorted order, written by hand so the layout is explicit.
    let w = &mut *out;
    let _ = w.write_all(b"{\"actions\":");
    write_canonical(w, &actions);
    let _ = w.write_all(b",\"conditions\":");
    write_list(w, &conditions);
    let _ = write!(w, ",\"dynamic_resolution\":{}", spec.dynamic_resolution);
    let _ = write!(w, ",\"idempotency_s\":{}", spec.idempotency_s);
    let _ = write!(w, ",\"priority\":{}", spec.priority);
    let _ = write!(w, ",\"stop_on_match\":{}", spec.stop_on_match);
    let _ = write!(w, ",\"suppression_s\":{}", spec.suppression_s);
    let _ = w.write_all(b",\"targets\":");
    write_canonical(w, &Value::Object(targets));
    let logic = match spec.trigger_group.logic {
        crate::spec::Logic::All => "ALL",
        crate::spec::Logic::Any => "ANY",
    };
    let _ = write!(w, ",\"trigger_group\":{{\"logic\":\"{logic}\",\"triggers\":");
    write_list(w, &triggers);
    let _ = write!(w, "}},\"version\":{}}}", spec.version);
}

fn write_list(out: &mut impl Write, items: &[Vec<u8>]) {
    let _ = out.write_all(b"[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            let _ = out.write_all(b",");
        }
        let _ = out.write_all(item);
    }
    let _ = out.write_all(b"]");
}

fn canonical_bytes(item: &impl Serialize) -> Vec<u8> {
    let value = serde_json::to_value(item).expect("spec types serialize to JSON");
    let mut out = Vec::with_capacity(64);
    write_canonical(&mut out, &value);
    out
}

/// Writes `value` as canonical JSON: sorted keys, no whitespace, integral
/// numbers as integers.
pub fn write_canonical(out: &mut impl Write, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            let _ = out.write_all(b"{");
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    let _ = out.write_all(b",");
                }
                let _ = serde_json::to_writer(&mut *out, key);
                let _ = out.write_all(b":");
                write_canonical(out, &map[key]);
            }
            let _ = out.write_all(b"}");
        }
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
                let _ = write!(out, "{}", f as i64);
            }
            _ => {
                let _ = write!(out, "{n}");
            }
        },
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
}
