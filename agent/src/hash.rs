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

use crate::ir::PlanStep;
use crate::spec::json::plain_len;
use crate::spec::{Condition, EventPattern, PolicySpec, Repeat, Schedule, Scope, Trigger, Weekday};
use inventory::selector::SelectorMode;

/// The hex sha256 of the canonical form of `spec` with the compiled `plan`.
pub fn policy_hash(spec: &PolicySpec, plan: &[PlanStep]) -> String {
    // One buffer hashed at once (many tiny `update` calls cost more than the
    // copy), reused per thread: a fresh kilobyte-sized buffer per policy
    // sends glibc down its large-allocation path every time.
    thread_local! {
        static CANONICAL: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(4096));
    }
    let digest = CANONICAL.with(|cell| match cell.try_borrow_mut() {
        Ok(mut canonical) => {
            canonical.clear();
            write_canonical_spec(&mut canonical, spec, plan);
            let digest = Sha256::digest(canonical.as_slice());
            if canonical.capacity() > 1 << 16 {
                *canonical = Vec::with_capacity(4096);
            }
            digest
        }
        Err(_) => {
            let mut canonical = Vec::new();
            write_canonical_spec(&mut canonical, spec, plan);
            Sha256::digest(&canonical)
        }
    });
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    hex
}

/// The canonical JSON text itself, for debugging and tests.
pub fn canonical_text(spec: &PolicySpec, plan: &[PlanStep]) -> String {
    let mut out = Vec::new();
    write_canonical_spec(&mut out, spec, plan);
    String::from_utf8(out).expect("canonical JSON is UTF-8")
}

/// Writes one JSON object whose keys the caller gives in sorted order; debug
/// builds (every test run) assert the order, so a wrong order cannot ship.
struct Obj<'w> {
    out: &'w mut Vec<u8>,
    first: bool,
    last: &'static str,
}

impl<'w> Obj<'w> {
    fn new(out: &'w mut Vec<u8>) -> Self {
        out.push(b'{');
        Obj {
            out,
            first: true,
            last: "",
        }
    }

    fn key(&mut self, key: &'static str) -> &mut Vec<u8> {
        debug_assert!(
            self.first || key > self.last,
            "canonical keys out of order: `{}` after `{}`",
            key,
            self.last
        );
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.last = key;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    fn str(&mut self, key: &'static str, value: &str) {
        write_str(self.key(key), value);
    }

    /// A value from Hazel's own vocabulary (a type, an operator, a scope):
    /// known not to need escaping, so it is copied without the check.
    fn word(&mut self, key: &'static str, value: &'static str) {
        push_word(self.key(key), value);
    }

    fn opt_str(&mut self, key: &'static str, value: Option<&str>) {
        if let Some(v) = value {
            self.str(key, v);
        }
    }

    fn int(&mut self, key: &'static str, value: i64) {
        let out = self.key(key);
        out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn opt_uint(&mut self, key: &'static str, value: Option<u64>) {
        if let Some(v) = value {
            self.int(key, v as i64);
        }
    }

    fn bool(&mut self, key: &'static str, value: bool) {
        self.key(key)
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

fn write_trigger(out: &mut Vec<u8>, t: &Trigger) {
    let mut o = Obj::new(out);
    match t {
        Trigger::UpsState { equals, for_s, ups } => {
            o.word("equals", equals.as_str());
            o.opt_uint("for_s", *for_s);
            o.word("type", t.type_name());
            o.opt_str("ups", ups.as_deref());
        }
        Trigger::MetricThreshold {
            metric,
            op,
            value,
            for_s,
            ups,
        } => {
            o.opt_uint("for_s", *for_s);
            o.str("metric", metric);
            o.word("op", op.as_str());
            o.word("type", t.type_name());
            o.opt_str("ups", ups.as_deref());
            write_canonical(o.key("value"), &Value::from(*value));
        }
        Trigger::TimerAt { schedule } => {
            let mut s = Obj::new(o.key("schedule"));
            match schedule {
                Schedule::Repeat { repeat, at, days } => {
                    s.str("at", at);
                    if !days.is_empty() {
                        let list = s.key("days");
                        list.push(b'[');
                        for (i, d) in days.iter().enumerate() {
                            if i > 0 {
                                list.push(b',');
                            }
                            push_word(list, Weekday::NAMES[*d as usize]);
                        }
                        list.push(b']');
                    }
                    s.word(
                        "repeat",
                        if *repeat == Repeat::Daily {
                            "daily"
                        } else {
                            "weekly"
                        },
                    );
                }
                Schedule::Cron { cron } => s.str("cron", cron),
            }
            s.end();
            o.word("type", t.type_name());
        }
        Trigger::TimerAfter {
            after_s,
            since_event,
        } => {
            o.int("after_s", *after_s as i64);
            let mut s = Obj::new(o.key("since_event"));
            match since_event {
                EventPattern::UpsState { equals, ups } => {
                    s.word("equals", equals.as_str());
                    s.word("type", "ups.state");
                    s.opt_str("ups", ups.as_deref());
                }
                EventPattern::WebhookCustom { name } => {
                    s.str("name", name);
                    s.word("type", "webhook.custom");
                }
            }
            s.end();
            o.word("type", t.type_name());
        }
        Trigger::WebhookCustom { name } => {
            o.str("name", name);
            o.word("type", t.type_name());
        }
    }
    o.end();
}

fn write_condition(out: &mut Vec<u8>, c: &Condition) {
    let mut o = Obj::new(out);
    o.str("field", &c.field);
    o.word("op", c.op.as_str());
    o.word("scope", Scope::NAMES[c.scope as usize]);
    o.opt_str("ups", c.ups.as_deref());
    write_canonical(o.key("value"), &c.value);
    o.end();
}

/// Writes items whose order carries no meaning: each is written once past
/// the end of `out`, then the texts are appended in sorted order and the
/// unsorted copies removed. Using `out` as the scratch space (and the stack
/// for the spans of up to 16 items) keeps this free of allocations: the
/// buffer is reused per thread by [`policy_hash`].
fn write_sorted<T>(out: &mut Vec<u8>, items: &[T], write: fn(&mut Vec<u8>, &T)) {
    let mut small = [(0, 0); 16];
    let mut large = Vec::new();
    let spans: &mut [(usize, usize)] = if items.len() <= small.len() {
        &mut small[..items.len()]
    } else {
        large.resize(items.len(), (0, 0));
        &mut large
    };
    let scratch = out.len();
    for (item, span) in items.iter().zip(spans.iter_mut()) {
        let start = out.len();
        write(out, item);
        *span = (start, out.len());
    }
    spans.sort_unstable_by(|a, b| out[a.0..a.1].cmp(&out[b.0..b.1]));
    let sorted = out.len();
    out.push(b'[');
    for (i, &(start, end)) in spans.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_within(start..end);
    }
    out.push(b']');
    out.drain(scratch..sorted);
}

fn write_canonical_spec(out: &mut Vec<u8>, spec: &PolicySpec, plan: &[PlanStep]) {
    let mut o = Obj::new(out);
    {
        let list = o.key("actions");
        list.push(b'[');
        for (i, step) in plan.iter().enumerate() {
            if i > 0 {
                list.push(b',');
            }
            let mut a = Obj::new(list);
            a.str("capability_id", &step.capability);
            a.opt_str("key_hint", step.key_hint.as_deref());
            write_map(a.key("params"), &step.params);
            if let Some(retry) = &step.retry {
                let mut r = Obj::new(a.key("retry"));
                if let Some(attempts) = retry.attempts {
                    r.int("attempts", i64::from(attempts));
                }
                r.int("backoff_s", retry.backoff_s as i64);
                r.end();
            }
            a.str("verb", &step.verb);
            a.end();
        }
        list.push(b']');
    }
    write_sorted(o.key("conditions"), &spec.conditions, write_condition);
    o.bool("dynamic_resolution", spec.dynamic_resolution);
    o.int("idempotency_s", spec.idempotency_s as i64);
    o.int("priority", spec.priority);
    o.bool("stop_on_match", spec.stop_on_match);
    o.int("suppression_s", spec.suppression_s as i64);
    {
        let mut t = Obj::new(o.key("targets"));
        t.str("host_id", &spec.targets.host_id);
        {
            let mut sel = Obj::new(t.key("selector"));
            sel.word("mode", spec.targets.selector.mode.as_str());
            let value = &spec.targets.selector.value;
            match spec.targets.selector.mode {
                SelectorMode::List | SelectorMode::Range if value.contains(char::is_whitespace) => {
                    sel.str(
                        "value",
                        &value
                            .split(',')
                            .map(str::trim)
                            .collect::<Vec<_>>()
                            .join(","),
                    )
                }
                SelectorMode::List | SelectorMode::Range => sel.str("value", value),
                SelectorMode::Query | SelectorMode::Ledger => sel.str("value", value.trim()),
            }
            sel.end();
        }
        t.str("target_type", &spec.targets.target_type);
        t.end();
    }
    {
        let mut g = Obj::new(o.key("trigger_group"));
        g.word(
            "logic",
            match spec.trigger_group.logic {
                crate::spec::Logic::All => "ALL",
                crate::spec::Logic::Any => "ANY",
            },
        );
        write_sorted(
            g.key("triggers"),
            &spec.trigger_group.triggers,
            write_trigger,
        );
        g.end();
    }
    o.int("version", spec.version as i64);
    o.end();
}

fn write_map(out: &mut impl Write, map: &serde_json::Map<String, Value>) {
    // serde_json's default map iterates in key order already; only a map
    // that keeps insertion order (a serde_json feature) needs sorting.
    if map.keys().is_sorted() {
        write_entries(out, map.iter());
    } else {
        let mut entries: Vec<(&String, &Value)> = map.iter().collect();
        entries.sort_unstable_by_key(|(k, _)| *k);
        write_entries(out, entries.into_iter());
    }
}

fn write_entries<'v>(out: &mut impl Write, entries: impl Iterator<Item = (&'v String, &'v Value)>) {
    let _ = out.write_all(b"{");
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            let _ = out.write_all(b",");
        }
        write_str(out, key);
        let _ = out.write_all(b":");
        write_canonical(out, value);
    }
    let _ = out.write_all(b"}");
}

/// Writes a string of Hazel's vocabulary (no quote, backslash or control
/// character: debug builds check) as JSON.
fn push_word(out: &mut Vec<u8>, word: &'static str) {
    debug_assert_eq!(
        plain_len(word.as_bytes()),
        word.len(),
        "{word:?} needs escaping"
    );
    out.push(b'"');
    out.extend_from_slice(word.as_bytes());
    out.push(b'"');
}

/// Writes a JSON string; text without quotes, backslashes or control
/// characters (nearly all of a policy) is copied as it is.
fn write_str(out: &mut impl Write, s: &str) {
    if plain_len(s.as_bytes()) == s.len() {
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
