//! Inverse policies (SPEC §11): from a forward policy spec, the spec of the
//! policy that undoes it (stop the VMs on battery -> start them on mains).
//!
//! The module is pure: it reads the spec as the JSON a user writes (SPEC §2)
//! and answers with another such spec, so the operator can edit and save it.
//! What Hazel cannot infer (a timer's schedule, a threshold's reverse, an
//! action with no inverse) is kept as a placeholder and listed in
//! `needs_input` as JSON pointers into the new spec, each with a note why.
//! The inverse is never saved or enabled here: the operator does both.

use drivers::manifest::{Capability, ManifestSet};
use inventory::Severity;
use serde::Serialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::spec::parse_spec;

/// What the inverse generator needs besides the forward spec.
#[derive(Debug, Clone, Copy)]
pub struct InverseOptions<'a> {
    /// The forward policy's id when it is stored: the inverse then targets
    /// `{mode: ledger, value: <id>}`, exactly what the forward run changed.
    /// `None` keeps the forward selector.
    pub forward_id: Option<Uuid>,
    /// The manifests whose `invertible` maps flip the verbs.
    pub manifests: &'a ManifestSet,
    /// The host the agent runs on (`self: true` in `hazel.yaml`), if known,
    /// so a power-off of the agent's own host gets a note that says so.
    pub self_host: Option<&'a str>,
}

/// One value of the inverse spec that the operator must supply or confirm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NeedsInput {
    /// JSON pointer into `spec_inverse` (`/trigger_group/triggers/0/schedule`).
    pub path: String,
    /// Why Hazel could not infer it, and what to write.
    pub note: String,
}

/// The answer of `POST /api/policies/:id/inverse`:
/// `{spec_inverse, enabled: false, needs_input: [{path, note}], notes}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inverse {
    /// The inverse policy spec, in the shape users write (SPEC §2), unsaved.
    pub spec_inverse: Value,
    /// Always `false`: an inverse is returned disabled (its spec says so too).
    pub enabled: bool,
    /// Values to fill in before the inverse can do its job, in document order.
    pub needs_input: Vec<NeedsInput>,
    /// What the generator did (verbs flipped, triggers flipped, selector
    /// replaced), one sentence each, for the operator to review.
    pub notes: Vec<String>,
}

/// Why no inverse could be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InverseError {
    /// The input is not a JSON object, so not a policy spec at all.
    #[error("a policy spec is a JSON object, found {found}")]
    NotAnObject {
        /// The JSON type found instead (`array`, `string`).
        found: &'static str,
    },
    /// The input is an object but not a valid policy spec; validate it first.
    #[error("not a valid policy spec (validate it first): {}", .problems.join("; "))]
    InvalidSpec {
        /// Each schema blocker as `<pointer>: <message>`.
        problems: Vec<String>,
    },
}

impl InverseError {
    /// Never: the same input gives the same error.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Appended to the forward policy's name (and removed again when inverting an inverse).
pub const NAME_SUFFIX: &str = " (inverse)";

/// The UPS state that undoes `state` (SPEC §11): `on_battery` <-> `on_mains`,
/// `low_battery` -> `on_mains`. Other states have no opposite.
pub fn flip_ups_state(state: &str) -> Option<&'static str> {
    match state {
        "on_battery" | "low_battery" => Some("on_mains"),
        "on_mains" => Some("on_battery"),
        _ => None,
    }
}

/// Generates the inverse of a policy spec (SPEC §11).
///
/// Each action's verb is flipped through its capability's `invertible` map
/// (param-valued inverses flip their params too) and the action order is
/// reversed; `ups.state` triggers and `ups` state conditions are flipped;
/// the selector becomes the forward policy's ledger when it is stored; the
/// name gets [`NAME_SUFFIX`], `enabled` is `false` and `id` is dropped.
/// Triggers kept as they are (timers, thresholds, webhooks) and UPS states
/// with no opposite stay in place as placeholders and are listed in
/// `needs_input`. Actions with no inverse are left out with a note (kept,
/// they would repeat the forward effect, e.g. power a host off again when
/// the mains return); when none is left, `actions` is empty, which blocks
/// a save, and `/actions` is listed in `needs_input`. Otherwise the output
/// passes validation as it is and does what the operator wants once every
/// `needs_input` entry is dealt with.
///
/// The input must be a valid policy spec (an `id` field is tolerated).
pub fn inverse(spec: &Value, options: &InverseOptions<'_>) -> Result<Inverse, InverseError> {
    let Value::Object(forward) = spec else {
        return Err(InverseError::NotAnObject {
            found: json_type(spec),
        });
    };
    let mut doc = forward.clone();
    let mut out = Out::default();
    if doc.remove("id").is_some() {
        out.note("dropped `id`: the inverse is a new policy until it is saved");
    }
    check_valid(&doc)?;

    let forward_name = str_at(&doc, "name").to_string();
    let name = match forward_name.strip_suffix(NAME_SUFFIX) {
        Some(original) if original.trim().chars().count() >= 3 => original.to_string(),
        _ => format!("{forward_name}{NAME_SUFFIX}"),
    };
    out.note(format!("name: `{name}`"));
    doc.insert("name".into(), Value::String(name));
    doc.insert("enabled".into(), Value::Bool(false));
    doc.insert(
        "notes".into(),
        Value::String(match options.forward_id {
            Some(id) => format!("Inverse of \"{forward_name}\" (policy {id}), generated by Hazel."),
            None => format!("Inverse of \"{forward_name}\", generated by Hazel."),
        }),
    );

    invert_triggers(&mut doc, &mut out);
    invert_conditions(&mut doc, &mut out);
    invert_targets(&mut doc, options, &mut out);
    invert_actions(&mut doc, options, &mut out);

    Ok(Inverse {
        spec_inverse: Value::Object(doc),
        enabled: false,
        needs_input: out.needs_input,
        notes: out.notes,
    })
}

/// The `needs_input` and `notes` being collected.
#[derive(Default)]
struct Out {
    needs_input: Vec<NeedsInput>,
    notes: Vec<String>,
}

impl Out {
    fn need(&mut self, path: impl Into<String>, note: impl Into<String>) {
        self.needs_input.push(NeedsInput {
            path: path.into(),
            note: note.into(),
        });
    }

    fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }
}

/// Rejects anything the schema stage blocks, so the rest can rely on the
/// document's shape (SPEC §2).
fn check_valid(doc: &Map<String, Value>) -> Result<(), InverseError> {
    let (parsed, findings) = parse_spec(&Value::Object(doc.clone()));
    let problems: Vec<String> = findings
        .iter()
        .filter(|f| f.severity == Severity::Blocker)
        .map(|f| {
            format!(
                "{}: {}",
                if f.path.is_empty() { "/" } else { &f.path },
                f.message
            )
        })
        .collect();
    match (parsed, problems.is_empty()) {
        (Some(_), true) => Ok(()),
        (_, false) => Err(InverseError::InvalidSpec { problems }),
        (None, true) => Err(InverseError::InvalidSpec {
            problems: vec!["/: the document is not a policy spec".into()],
        }),
    }
}

/// One trigger of the inverse, with the `needs_input` entries (pointer
/// suffix inside the trigger, note) and notes it produced.
struct FlippedTrigger {
    value: Value,
    needs: Vec<(&'static str, String)>,
    notes: Vec<String>,
}

fn invert_triggers(doc: &mut Map<String, Value>, out: &mut Out) {
    let Some(group) = doc.get_mut("trigger_group").and_then(Value::as_object_mut) else {
        return;
    };
    let forward: Vec<Value> = group
        .get("triggers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut kept: Vec<FlippedTrigger> = Vec::with_capacity(forward.len());
    for (i, trigger) in forward.iter().enumerate() {
        let flipped = flip_trigger(trigger);
        let duplicate = flipped.needs.is_empty()
            && kept
                .iter()
                .any(|k| k.needs.is_empty() && k.value == flipped.value);
        if duplicate {
            out.note(format!(
                "/trigger_group/triggers/{i} of the forward policy flips to a trigger already listed; dropped"
            ));
            continue;
        }
        kept.push(flipped);
    }
    let pointer = |j: usize| format!("/trigger_group/triggers/{j}");
    for (j, t) in kept.iter().enumerate() {
        for note in &t.notes {
            out.note(format!("{}: {note}", pointer(j)));
        }
        for (suffix, note) in &t.needs {
            out.need(format!("{}{suffix}", pointer(j)), note.clone());
        }
    }
    if kept.len() > 1 && group.get("logic").and_then(Value::as_str) == Some("ALL") {
        out.note(
            "/trigger_group/logic: kept `ALL`: the undo fires only when every flipped trigger \
             holds; use `ANY` if any one of them should undo",
        );
    }
    group.insert(
        "triggers".into(),
        Value::Array(kept.into_iter().map(|t| t.value).collect()),
    );
}

fn flip_trigger(trigger: &Value) -> FlippedTrigger {
    let mut value = trigger.clone();
    let mut needs = Vec::new();
    let mut notes = Vec::new();
    let Some(t) = value.as_object_mut() else {
        return FlippedTrigger {
            value,
            needs,
            notes,
        };
    };
    match str_at(t, "type") {
        "ups.state" => {
            let state = str_at(t, "equals").to_string();
            match flip_ups_state(&state) {
                Some(to) => {
                    t.insert("equals".into(), Value::String(to.into()));
                    let mut note = format!("ups.state `{state}` -> `{to}`");
                    if let Some(held) = t.get("for").and_then(Value::as_str) {
                        note.push_str(&format!(
                            "; kept `for: {held}`: the new state must hold that long too"
                        ));
                    }
                    notes.push(note);
                }
                None => needs.push((
                    "/equals",
                    format!(
                        "the UPS state `{state}` has no opposite: set the state that signals \
                         the undo (`on_mains`, say) or delete this trigger"
                    ),
                )),
            }
        }
        "metric.threshold" => {
            let metric = str_at(t, "metric");
            let op = str_at(t, "op");
            let value = t.get("value").map(Value::to_string).unwrap_or_default();
            let margin = match op {
                ">" | ">=" => "; a lower value leaves a margin that avoids flapping",
                "<" | "<=" => "; a higher value leaves a margin that avoids flapping",
                _ => "",
            };
            needs.push((
                "/op",
                format!(
                    "the reverse of `{metric} {op} {value}` is not inferred: `{metric} {} {value}` \
                     undoes as soon as the value crosses back{margin}; set `op` and `value` (the \
                     forward threshold is kept as a placeholder)",
                    reverse_op(op)
                ),
            ));
        }
        "timer.at" => needs.push((
            "/schedule",
            "when to undo a scheduled action cannot be inferred from its schedule: set the \
             schedule of the undo (the forward schedule is kept as a placeholder)"
                .to_string(),
        )),
        "timer.after" => {
            let since = t.get_mut("since_event").and_then(Value::as_object_mut);
            let flipped = since.and_then(|since| {
                if str_at(since, "type") != "ups.state" {
                    return None;
                }
                let state = str_at(since, "equals").to_string();
                let to = flip_ups_state(&state)?;
                since.insert("equals".into(), Value::String(to.into()));
                Some(format!("since_event ups.state `{state}` -> `{to}`"))
            });
            match flipped {
                Some(note) => notes.push(note),
                None => needs.push((
                    "/since_event",
                    "the event the undo should count from cannot be inferred: set `since_event`"
                        .to_string(),
                )),
            }
            needs.push((
                "/after",
                "how long to wait before the undo cannot be inferred: set `after` (the forward \
                 delay is kept as a placeholder)"
                    .to_string(),
            ));
        }
        "webhook.custom" => needs.push((
            "/name",
            format!(
                "which webhook signals the undo cannot be inferred: name it (`{}-undo`, say) and \
                 configure it on the agent (the forward name is kept as a placeholder)",
                str_at(t, "name")
            ),
        )),
        other => needs.push(("", format!("unknown trigger type `{other}`"))),
    }
    FlippedTrigger {
        value,
        needs,
        notes,
    }
}

/// The comparison that is true exactly when `op` is false.
fn reverse_op(op: &str) -> &'static str {
    match op {
        ">" => "<=",
        ">=" => "<",
        "<" => ">=",
        "<=" => ">",
        "=" => "!=",
        _ => "=",
    }
}

/// `ups` conditions on `state` describe the trigger's situation, so they
/// flip like the trigger; every other condition is kept with a note, since
/// it may or may not still make sense when the undo runs.
fn invert_conditions(doc: &mut Map<String, Value>, out: &mut Out) {
    let Some(all) = doc
        .get_mut("conditions")
        .and_then(Value::as_object_mut)
        .and_then(|c| c.get_mut("all"))
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for (j, condition) in all.iter_mut().enumerate() {
        let Some(c) = condition.as_object_mut() else {
            continue;
        };
        let path = format!("/conditions/all/{j}");
        let (scope, field, op) = (str_at(c, "scope"), str_at(c, "field"), str_at(c, "op"));
        let value = c.get("value").cloned().unwrap_or(Value::Null);
        if scope == "ups" && field == "state" {
            let state = value.as_str().unwrap_or_default();
            match flip_ups_state(state) {
                Some(to) => {
                    out.note(format!("{path}: ups state `{op} {state}` -> `{op} {to}`"));
                    c.insert("value".into(), Value::String(to.into()));
                }
                None if op == "!=" => out.note(format!(
                    "{path}: kept `ups.state != {state}`: it holds for the undo as well as for \
                     the forward run"
                )),
                None => out.need(
                    format!("{path}/value"),
                    format!(
                        "the condition reads the UPS state `{state}`, which has no opposite: \
                         set the state the undo needs or delete the condition"
                    ),
                ),
            }
        } else {
            out.note(format!(
                "{path}: kept `{scope}.{field} {op} {value}`, written for the forward \
                 situation: check it should also hold for the undo"
            ));
        }
    }
}

fn invert_targets(doc: &mut Map<String, Value>, options: &InverseOptions<'_>, out: &mut Out) {
    let Some(selector) = doc
        .get_mut("targets")
        .and_then(Value::as_object_mut)
        .and_then(|t| t.get_mut("selector"))
    else {
        return;
    };
    let (mode, value) = selector
        .as_object()
        .map(|s| {
            (
                str_at(s, "mode").to_string(),
                str_at(s, "value").to_string(),
            )
        })
        .unwrap_or_default();
    match options.forward_id {
        Some(id) => {
            out.note(format!(
                "/targets/selector: `{mode}: {value}` -> `ledger: {id}`: the inverse acts on \
                 exactly the targets the forward policy's latest successful run changed"
            ));
            *selector = json!({ "mode": "ledger", "value": id.to_string() });
        }
        None if mode == "ledger" => out.note(format!(
            "/targets/selector: kept `{mode}: {value}` because this policy is not stored: the \
             inverse acts on what policy {value}'s latest run changed, not on what this policy \
             changed; store this policy and generate again to target its own ledger"
        )),
        None => {
            out.note(format!(
                "/targets/selector: kept `{mode}: {value}` because the forward policy is not \
                 stored: the inverse acts on every target it resolves to, not only those the \
                 forward run changed; store the forward policy and generate again for a ledger \
                 selector"
            ));
            if mode == "query" && query_reads_status(&value) {
                out.need(
                    "/targets/selector/value",
                    "the query filters on `status`, which the forward actions change (a VM \
                     stopped by the forward run no longer matches `status = running`): rewrite \
                     the query, or store the forward policy and generate again for a ledger \
                     selector",
                );
            }
        }
    }
}

/// Whether a selector query has a predicate on the `status` field.
fn query_reads_status(query: &str) -> bool {
    query
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
        .any(|word| word == "status")
}

/// Reverses the actions and flips each one; an action with no inverse
/// stays as written, at its new position, and is listed in `needs_input`.
fn invert_actions(doc: &mut Map<String, Value>, options: &InverseOptions<'_>, out: &mut Out) {
    let host_id = doc
        .get("targets")
        .and_then(Value::as_object)
        .map(|t| str_at(t, "host_id").to_string())
        .unwrap_or_default();
    let Some(actions) = doc.get_mut("actions").and_then(Value::as_array_mut) else {
        return;
    };
    let n = actions.len();
    if n > 1 {
        out.note("/actions: order reversed: the last forward action is undone first");
    }
    let forward: Vec<Value> = actions.drain(..).rev().collect();
    for (k, action) in forward.into_iter().enumerate() {
        let Value::Object(a) = action else {
            continue;
        };
        // Pointers name the action's position in the inverse as built so far.
        let path = format!("/actions/{}", actions.len());
        let forward_at = format!("/actions/{}", n - 1 - k);
        let cap_id = str_at(&a, "capability_id").to_string();
        let verb = str_at(&a, "verb").to_string();
        let params = a
            .get("params")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let forward = describe(&cap_id, &verb, &params);
        let Some((_, cap)) = options.manifests.capability(&cap_id) else {
            out.need(
                path,
                format!("`{cap_id}` is not a capability of the loaded manifests, so its inverse is unknown: replace or delete this action (kept as written)"),
            );
            actions.push(Value::Object(a));
            continue;
        };
        match cap.inverse(&verb, &params) {
            Some(inv) => {
                let backward = describe(&cap_id, &inv.verb, &inv.params);
                let mut flipped = Map::new();
                flipped.insert("capability_id".into(), Value::String(cap_id.clone()));
                flipped.insert("verb".into(), Value::String(inv.verb));
                if !inv.params.is_empty() {
                    flipped.insert("params".into(), Value::Object(inv.params));
                }
                let mut note = format!("{path}: `{forward}` ({forward_at}) -> `{backward}`");
                let hint = a.get("idempotency").and_then(|i| i.get("key_hint"));
                if hint.is_some_and(|h| !h.is_null()) {
                    note.push_str("; dropped the forward idempotency key hint");
                }
                out.note(note);
                actions.push(Value::Object(flipped));
            }
            // Left out, never kept: an action with no inverse run by the
            // inverse policy would repeat the forward effect (a power-off
            // again when the mains return).
            None => out.note(format!(
                "{forward_at}: left out of the inverse: {}",
                no_inverse_note(cap, &verb, &params, &forward, &host_id, options)
            )),
        }
    }
    if actions.is_empty() {
        out.need(
            "/actions",
            "no action of the forward policy has an inverse the agent can run (see the notes): \
             add the actions that undo it, or do not save this inverse",
        );
    }
}

/// Why an action has no inverse, and what the operator can do.
fn no_inverse_note(
    cap: &Capability,
    verb: &str,
    params: &Map<String, Value>,
    forward: &str,
    host_id: &str,
    options: &InverseOptions<'_>,
) -> String {
    let kept = "running it again would not undo it";
    if cap.powers_off(verb) {
        if options.self_host == Some(host_id) {
            return format!(
                "`{forward}` powers off the host the agent runs on (`{host_id}`, `self: true`): \
                 once it runs the agent is off and can undo nothing; power the host on by \
                 other means (Wake-on-LAN, IPMI, BIOS power-on after AC loss) ({kept})"
            );
        }
        return format!(
            "`{forward}` powers off or reboots a host, and no driver action undoes that (a \
             rebooted host comes back by itself, a powered-off one needs Wake-on-LAN, IPMI or \
             power-on after AC loss) ({kept})"
        );
    }
    if cap.is_invertible(verb) {
        let effective = cap.effective_params(verb, params);
        let keys: std::collections::BTreeSet<&str> = cap
            .invertible
            .get(verb)
            .into_iter()
            .flatten()
            .flat_map(|rule| rule.when.keys().map(String::as_str))
            .collect();
        let values: Vec<String> = keys
            .iter()
            .map(|k| format!("{k}={}", plain(effective.get(*k).unwrap_or(&Value::Null))))
            .collect();
        return format!(
            "`{forward}` has no inverse: the inverse of `{} {verb}` depends on {}, and {} \
             matches no rule ({kept})",
            cap.id,
            keys.iter().copied().collect::<Vec<_>>().join(", "),
            values.join(", ")
        );
    }
    format!(
        "`{} {verb}` has no inverse in the manifest ({kept})",
        cap.id
    )
}

/// `cap verb k=v, ...` for notes.
fn describe(cap_id: &str, verb: &str, params: &Map<String, Value>) -> String {
    let mut text = format!("{cap_id} {verb}");
    for (i, (k, v)) in params.iter().enumerate() {
        text.push_str(if i == 0 { " " } else { ", " });
        text.push_str(&format!("{k}={}", plain(v)));
    }
    text
}

/// A value as text, strings without quotes.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn str_at<'m>(map: &'m Map<String, Value>, key: &str) -> &'m str {
    map.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::CompileContext;
    use crate::validate::validate_value;
    use expect_test::{expect, Expect};

    const INVENTORY: &str = include_str!("../../examples/inventory/homelab.yaml");
    const FORWARD_ID: &str = "0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5";

    fn forward_id() -> Uuid {
        FORWARD_ID.parse().expect("test uuid parses")
    }

    fn parse(text: &str) -> Value {
        serde_norway::from_str(text).expect("test spec is YAML")
    }

    fn options(forward_id: Option<Uuid>) -> InverseOptions<'static> {
        InverseOptions {
            forward_id,
            manifests: drivers::manifest::shipped(),
            self_host: None,
        }
    }

    /// Validates `spec` against the shipped manifests and the example
    /// inventory; one line per issue, then `ok` or `blocked`.
    fn validation(spec: &Value) -> String {
        let inventory =
            inventory::file::parse_inventory(INVENTORY, None).expect("example inventory parses");
        let ctx = CompileContext {
            inventory: Some(&inventory),
            now: Some("2026-11-22T11:30:00Z".into()),
            ..CompileContext::default()
        };
        let report = validate_value(spec, drivers::manifest::shipped(), &ctx).report;
        let mut out = String::new();
        for issue in &report.issues {
            let f = &issue.finding;
            out.push_str(&format!(
                "validate: {} {} {}: {}\n",
                f.severity, f.code, f.path, f.message
            ));
        }
        out.push_str(if report.ok {
            "validate: ok"
        } else {
            "validate: blocked"
        });
        out
    }

    /// The inverse as the operator reads it: the spec in YAML, what needs
    /// input, the notes, and how the inverse validates.
    fn render(result: Result<Inverse, InverseError>) -> String {
        let inv = match result {
            Ok(inv) => inv,
            Err(e) => return format!("error: {e}"),
        };
        assert!(!inv.enabled);
        assert_eq!(inv.spec_inverse["enabled"], Value::Bool(false));
        let mut out = serde_norway::to_string(&inv.spec_inverse).expect("renders as YAML");
        for n in &inv.needs_input {
            assert!(
                inv.spec_inverse.pointer(&n.path).is_some(),
                "needs_input points at nothing: {}",
                n.path
            );
            out.push_str(&format!("needs_input {}: {}\n", n.path, n.note));
        }
        for n in &inv.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out.push_str(&validation(&inv.spec_inverse));
        out
    }

    fn check_with(input: &str, options: &InverseOptions<'_>, expect: Expect) {
        expect.assert_eq(&render(inverse(&parse(input), options)));
    }

    fn check(input: &str, forward_id: Option<Uuid>, expect: Expect) {
        check_with(input, &options(forward_id), expect);
    }

    /// The shipped examples, in file-name order.
    fn examples() -> Vec<(String, Value)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("examples/ exists")
            .map(|e| e.expect("readable entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "json"))
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p).expect("example is readable");
                let name = p
                    .file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned();
                (name, parse(&text))
            })
            .collect()
    }

    fn all_examples(forward_id: Option<Uuid>) -> String {
        let mut out = String::new();
        for (name, spec) in examples() {
            out.push_str(&format!("=== {name}\n"));
            out.push_str(&render(inverse(&spec, &options(forward_id))));
            out.push('\n');
        }
        out
    }

    #[test]
    fn every_shipped_example_inverts_to_a_ledger_policy_when_stored() {
        expect![[r#"
            === 01-on-battery-shed-poe.yaml
            actions:
            - capability_id: aoss.poe.port
              params:
                state: on
              verb: set
            enabled: false
            name: 'On battery: shed lab PoE ports (inverse)'
            notes: 'Inverse of "On battery: shed lab PoE ports" (policy 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5), generated by Hazel.'
            priority: 10
            targets:
              host_id: sw-01
              selector:
                mode: ledger
                value: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5
              target_type: poe-port
            trigger_group:
              triggers:
              - equals: on_mains
                type: ups.state
            version: 1
            note: name: `On battery: shed lab PoE ports (inverse)`
            note: /trigger_group/triggers/0: ups.state `on_battery` -> `on_mains`
            note: /targets/selector: `range: 1/B1-1/B4` -> `ledger: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5`: the inverse acts on exactly the targets the forward policy's latest successful run changed
            note: /actions/0: `aoss.poe.port set state=off` (/actions/0) -> `aoss.poe.port set state=on`
            validate: ok
            === 02-on-battery-stop-low-tier-vms.yaml
            actions:
            - capability_id: proxmox.vm
              verb: start
            conditions:
              all:
              - field: runtime_minutes
                op: '>='
                scope: ups
                value: 5
            enabled: false
            name: 'On battery 2m: stop low-tier VMs (inverse)'
            notes: 'Inverse of "On battery 2m: stop low-tier VMs" (policy 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5), generated by Hazel.'
            priority: 20
            suppression_window: 30m
            targets:
              host_id: pve-01
              selector:
                mode: ledger
                value: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5
              target_type: vm
            trigger_group:
              triggers:
              - equals: on_mains
                for: 2m
                type: ups.state
            version: 1
            note: name: `On battery 2m: stop low-tier VMs (inverse)`
            note: /trigger_group/triggers/0: ups.state `on_battery` -> `on_mains`; kept `for: 2m`: the new state must hold that long too
            note: /conditions/all/0: kept `ups.runtime_minutes >= 5`, written for the forward situation: check it should also hold for the undo
            note: /targets/selector: `query: labels.tier = low and status = running` -> `ledger: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5`: the inverse acts on exactly the targets the forward policy's latest successful run changed
            note: /actions/0: `proxmox.vm shutdown force_after_grace=true, grace_s=90` (/actions/0) -> `proxmox.vm start`
            validate: ok
            === 03-low-battery-poweroff-nas.yaml
            actions: []
            enabled: false
            name: 'Low battery: power off nas-01 (inverse)'
            notes: 'Inverse of "Low battery: power off nas-01" (policy 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5), generated by Hazel.'
            priority: 90
            targets:
              host_id: nas-01
              selector:
                mode: ledger
                value: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5
              target_type: host
            trigger_group:
              triggers:
              - equals: on_mains
                type: ups.state
            version: 1
            needs_input /actions: no action of the forward policy has an inverse the agent can run (see the notes): add the actions that undo it, or do not save this inverse
            note: name: `Low battery: power off nas-01 (inverse)`
            note: /trigger_group/triggers/0: ups.state `low_battery` -> `on_mains`
            note: /targets/selector: `list: nas-01` -> `ledger: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5`: the inverse acts on exactly the targets the forward policy's latest successful run changed
            note: /actions/0: left out of the inverse: `host.power poweroff delay_s=0` powers off or reboots a host, and no driver action undoes that (a rebooted host comes back by itself, a powered-off one needs Wake-on-LAN, IPMI or power-on after AC loss) (running it again would not undo it)
            validate: blocker schema.empty /actions: at least one action is required
            validate: blocked
            === 04-mains-return-start-stopped-vms.yaml
            actions:
            - capability_id: proxmox.vm
              verb: shutdown
            enabled: false
            name: 'Mains return: start the VMs we stopped (inverse)'
            notes: 'Inverse of "Mains return: start the VMs we stopped" (policy 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5), generated by Hazel.'
            priority: 20
            targets:
              host_id: pve-01
              selector:
                mode: ledger
                value: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5
              target_type: vm
            trigger_group:
              triggers:
              - equals: on_battery
                type: ups.state
            version: 1
            note: name: `Mains return: start the VMs we stopped (inverse)`
            note: /trigger_group/triggers/0: ups.state `on_mains` -> `on_battery`
            note: /targets/selector: `ledger: 6f1c2a0e-3b4d-4e5f-8a9b-0c1d2e3f4a5b` -> `ledger: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5`: the inverse acts on exactly the targets the forward policy's latest successful run changed
            note: /actions/0: `proxmox.vm start` (/actions/0) -> `proxmox.vm shutdown`
            validate: ok
            === 05-weekly-restart-app.yaml
            actions: []
            enabled: false
            name: 'Weekly: restart app on web-01 (inverse)'
            notes: 'Inverse of "Weekly: restart app on web-01" (policy 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5), generated by Hazel.'
            suppression_window: 1h
            targets:
              host_id: web-01
              selector:
                mode: ledger
                value: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5
              target_type: service
            trigger_group:
              triggers:
              - schedule:
                  at: 01:00
                  days:
                  - sun
                  repeat: weekly
                type: timer.at
            version: 1
            needs_input /trigger_group/triggers/0/schedule: when to undo a scheduled action cannot be inferred from its schedule: set the schedule of the undo (the forward schedule is kept as a placeholder)
            needs_input /actions: no action of the forward policy has an inverse the agent can run (see the notes): add the actions that undo it, or do not save this inverse
            note: name: `Weekly: restart app on web-01 (inverse)`
            note: /targets/selector: `list: app.service` -> `ledger: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5`: the inverse acts on exactly the targets the forward policy's latest successful run changed
            note: /actions/0: left out of the inverse: `host.service restart` has no inverse in the manifest (running it again would not undo it)
            validate: blocker schema.empty /actions: at least one action is required
            validate: blocked
            === 06-webhook-deploy.yaml
            actions: []
            enabled: false
            name: 'Webhook deploy: restart web-01 services (inverse)'
            notes: 'Inverse of "Webhook deploy: restart web-01 services" (policy 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5), generated by Hazel.'
            suppression_window: 2m
            targets:
              host_id: web-01
              selector:
                mode: ledger
                value: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5
              target_type: service
            trigger_group:
              triggers:
              - name: deploy
                type: webhook.custom
            version: 1
            needs_input /trigger_group/triggers/0/name: which webhook signals the undo cannot be inferred: name it (`deploy-undo`, say) and configure it on the agent (the forward name is kept as a placeholder)
            needs_input /actions: no action of the forward policy has an inverse the agent can run (see the notes): add the actions that undo it, or do not save this inverse
            note: name: `Webhook deploy: restart web-01 services (inverse)`
            note: /targets/selector: `list: app.service,nginx.service` -> `ledger: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5`: the inverse acts on exactly the targets the forward policy's latest successful run changed
            note: /actions/0: left out of the inverse: `host.service restart` has no inverse in the manifest (running it again would not undo it)
            validate: blocker schema.empty /actions: at least one action is required
            validate: blocked
            === 07-on-battery-notify.yaml
            actions: []
            enabled: false
            name: 'On battery: page on-call (inverse)'
            notes: 'Inverse of "On battery: page on-call" (policy 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5), generated by Hazel.'
            priority: 0
            targets:
              host_id: notify
              selector:
                mode: ledger
                value: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5
              target_type: webhook
            trigger_group:
              logic: ANY
              triggers:
              - equals: on_mains
                type: ups.state
                ups: ups1@nut.lan:3493
              - equals: comm_lost
                for: 30s
                type: ups.state
                ups: ups1@nut.lan:3493
            version: 1
            needs_input /trigger_group/triggers/1/equals: the UPS state `comm_lost` has no opposite: set the state that signals the undo (`on_mains`, say) or delete this trigger
            needs_input /actions: no action of the forward policy has an inverse the agent can run (see the notes): add the actions that undo it, or do not save this inverse
            note: name: `On battery: page on-call (inverse)`
            note: /trigger_group/triggers/0: ups.state `on_battery` -> `on_mains`
            note: /targets/selector: `list: oncall` -> `ledger: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5`: the inverse acts on exactly the targets the forward policy's latest successful run changed
            note: /actions/0: left out of the inverse: `notify.webhook post` has no inverse in the manifest (running it again would not undo it)
            validate: blocker schema.empty /actions: at least one action is required
            validate: blocked
            === spec-section2.json
            actions:
            - capability_id: proxmox.vm
              verb: start
            conditions:
              all:
              - field: runtime_minutes
                op: '>='
                scope: ups
                value: 5
              - field: reachable
                op: =
                scope: host
                value: true
              - field: charge_pct
                op: '>'
                scope: metric
                value: 40
              - field: count_matching
                op: '>='
                scope: vm
                value: 1
            dynamic_resolution: true
            enabled: false
            idempotency_window: 10m
            name: 'On battery: stop low-tier VMs (inverse)'
            notes: 'Inverse of "On battery: stop low-tier VMs" (policy 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5), generated by Hazel.'
            priority: 0
            stop_on_match: false
            suppression_window: 5m
            targets:
              host_id: pve-01
              selector:
                mode: ledger
                value: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5
              target_type: vm
            trigger_group:
              logic: ANY
              triggers:
              - equals: on_mains
                type: ups.state
              - for: 120s
                metric: load
                op: '>'
                type: metric.threshold
                value: 60
              - schedule:
                  at: 01:00
                  days:
                  - sun
                  repeat: weekly
                type: timer.at
              - schedule:
                  cron: 0 1 * * 0
                type: timer.at
              - after: 10m
                since_event:
                  equals: on_battery
                  type: ups.state
                type: timer.after
              - name: deploy
                type: webhook.custom
            version: 1
            needs_input /trigger_group/triggers/1/op: the reverse of `load > 60` is not inferred: `load <= 60` undoes as soon as the value crosses back; a lower value leaves a margin that avoids flapping; set `op` and `value` (the forward threshold is kept as a placeholder)
            needs_input /trigger_group/triggers/2/schedule: when to undo a scheduled action cannot be inferred from its schedule: set the schedule of the undo (the forward schedule is kept as a placeholder)
            needs_input /trigger_group/triggers/3/schedule: when to undo a scheduled action cannot be inferred from its schedule: set the schedule of the undo (the forward schedule is kept as a placeholder)
            needs_input /trigger_group/triggers/4/after: how long to wait before the undo cannot be inferred: set `after` (the forward delay is kept as a placeholder)
            needs_input /trigger_group/triggers/5/name: which webhook signals the undo cannot be inferred: name it (`deploy-undo`, say) and configure it on the agent (the forward name is kept as a placeholder)
            note: name: `On battery: stop low-tier VMs (inverse)`
            note: /trigger_group/triggers/0: ups.state `on_battery` -> `on_mains`
            note: /trigger_group/triggers/4: since_event ups.state `on_mains` -> `on_battery`
            note: /conditions/all/0: kept `ups.runtime_minutes >= 5`, written for the forward situation: check it should also hold for the undo
            note: /conditions/all/1: kept `host.reachable = true`, written for the forward situation: check it should also hold for the undo
            note: /conditions/all/2: kept `metric.charge_pct > 40`, written for the forward situation: check it should also hold for the undo
            note: /conditions/all/3: kept `vm.count_matching >= 1`, written for the forward situation: check it should also hold for the undo
            note: /targets/selector: `range: 104,204,311-318` -> `ledger: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5`: the inverse acts on exactly the targets the forward policy's latest successful run changed
            note: /actions/0: `proxmox.vm shutdown grace_s=60` (/actions/0) -> `proxmox.vm start`
            validate: ok
        "#]].assert_eq(&all_examples(Some(forward_id())));
    }

    #[test]
    fn every_shipped_example_inverts_keeping_its_selector_when_not_stored() {
        expect![[r#"
            === 01-on-battery-shed-poe.yaml
            actions:
            - capability_id: aoss.poe.port
              params:
                state: on
              verb: set
            enabled: false
            name: 'On battery: shed lab PoE ports (inverse)'
            notes: 'Inverse of "On battery: shed lab PoE ports", generated by Hazel.'
            priority: 10
            targets:
              host_id: sw-01
              selector:
                mode: range
                value: 1/B1-1/B4
              target_type: poe-port
            trigger_group:
              triggers:
              - equals: on_mains
                type: ups.state
            version: 1
            note: name: `On battery: shed lab PoE ports (inverse)`
            note: /trigger_group/triggers/0: ups.state `on_battery` -> `on_mains`
            note: /targets/selector: kept `range: 1/B1-1/B4` because the forward policy is not stored: the inverse acts on every target it resolves to, not only those the forward run changed; store the forward policy and generate again for a ledger selector
            note: /actions/0: `aoss.poe.port set state=off` (/actions/0) -> `aoss.poe.port set state=on`
            validate: ok
            === 02-on-battery-stop-low-tier-vms.yaml
            actions:
            - capability_id: proxmox.vm
              verb: start
            conditions:
              all:
              - field: runtime_minutes
                op: '>='
                scope: ups
                value: 5
            enabled: false
            name: 'On battery 2m: stop low-tier VMs (inverse)'
            notes: 'Inverse of "On battery 2m: stop low-tier VMs", generated by Hazel.'
            priority: 20
            suppression_window: 30m
            targets:
              host_id: pve-01
              selector:
                mode: query
                value: labels.tier = low and status = running
              target_type: vm
            trigger_group:
              triggers:
              - equals: on_mains
                for: 2m
                type: ups.state
            version: 1
            needs_input /targets/selector/value: the query filters on `status`, which the forward actions change (a VM stopped by the forward run no longer matches `status = running`): rewrite the query, or store the forward policy and generate again for a ledger selector
            note: name: `On battery 2m: stop low-tier VMs (inverse)`
            note: /trigger_group/triggers/0: ups.state `on_battery` -> `on_mains`; kept `for: 2m`: the new state must hold that long too
            note: /conditions/all/0: kept `ups.runtime_minutes >= 5`, written for the forward situation: check it should also hold for the undo
            note: /targets/selector: kept `query: labels.tier = low and status = running` because the forward policy is not stored: the inverse acts on every target it resolves to, not only those the forward run changed; store the forward policy and generate again for a ledger selector
            note: /actions/0: `proxmox.vm shutdown force_after_grace=true, grace_s=90` (/actions/0) -> `proxmox.vm start`
            validate: ok
            === 03-low-battery-poweroff-nas.yaml
            actions: []
            enabled: false
            name: 'Low battery: power off nas-01 (inverse)'
            notes: 'Inverse of "Low battery: power off nas-01", generated by Hazel.'
            priority: 90
            targets:
              host_id: nas-01
              selector:
                mode: list
                value: nas-01
              target_type: host
            trigger_group:
              triggers:
              - equals: on_mains
                type: ups.state
            version: 1
            needs_input /actions: no action of the forward policy has an inverse the agent can run (see the notes): add the actions that undo it, or do not save this inverse
            note: name: `Low battery: power off nas-01 (inverse)`
            note: /trigger_group/triggers/0: ups.state `low_battery` -> `on_mains`
            note: /targets/selector: kept `list: nas-01` because the forward policy is not stored: the inverse acts on every target it resolves to, not only those the forward run changed; store the forward policy and generate again for a ledger selector
            note: /actions/0: left out of the inverse: `host.power poweroff delay_s=0` powers off or reboots a host, and no driver action undoes that (a rebooted host comes back by itself, a powered-off one needs Wake-on-LAN, IPMI or power-on after AC loss) (running it again would not undo it)
            validate: blocker schema.empty /actions: at least one action is required
            validate: blocked
            === 04-mains-return-start-stopped-vms.yaml
            actions:
            - capability_id: proxmox.vm
              verb: shutdown
            enabled: false
            name: 'Mains return: start the VMs we stopped (inverse)'
            notes: 'Inverse of "Mains return: start the VMs we stopped", generated by Hazel.'
            priority: 20
            targets:
              host_id: pve-01
              selector:
                mode: ledger
                value: 6f1c2a0e-3b4d-4e5f-8a9b-0c1d2e3f4a5b
              target_type: vm
            trigger_group:
              triggers:
              - equals: on_battery
                type: ups.state
            version: 1
            note: name: `Mains return: start the VMs we stopped (inverse)`
            note: /trigger_group/triggers/0: ups.state `on_mains` -> `on_battery`
            note: /targets/selector: kept `ledger: 6f1c2a0e-3b4d-4e5f-8a9b-0c1d2e3f4a5b` because this policy is not stored: the inverse acts on what policy 6f1c2a0e-3b4d-4e5f-8a9b-0c1d2e3f4a5b's latest run changed, not on what this policy changed; store this policy and generate again to target its own ledger
            note: /actions/0: `proxmox.vm start` (/actions/0) -> `proxmox.vm shutdown`
            validate: ok
            === 05-weekly-restart-app.yaml
            actions: []
            enabled: false
            name: 'Weekly: restart app on web-01 (inverse)'
            notes: 'Inverse of "Weekly: restart app on web-01", generated by Hazel.'
            suppression_window: 1h
            targets:
              host_id: web-01
              selector:
                mode: list
                value: app.service
              target_type: service
            trigger_group:
              triggers:
              - schedule:
                  at: 01:00
                  days:
                  - sun
                  repeat: weekly
                type: timer.at
            version: 1
            needs_input /trigger_group/triggers/0/schedule: when to undo a scheduled action cannot be inferred from its schedule: set the schedule of the undo (the forward schedule is kept as a placeholder)
            needs_input /actions: no action of the forward policy has an inverse the agent can run (see the notes): add the actions that undo it, or do not save this inverse
            note: name: `Weekly: restart app on web-01 (inverse)`
            note: /targets/selector: kept `list: app.service` because the forward policy is not stored: the inverse acts on every target it resolves to, not only those the forward run changed; store the forward policy and generate again for a ledger selector
            note: /actions/0: left out of the inverse: `host.service restart` has no inverse in the manifest (running it again would not undo it)
            validate: blocker schema.empty /actions: at least one action is required
            validate: blocked
            === 06-webhook-deploy.yaml
            actions: []
            enabled: false
            name: 'Webhook deploy: restart web-01 services (inverse)'
            notes: 'Inverse of "Webhook deploy: restart web-01 services", generated by Hazel.'
            suppression_window: 2m
            targets:
              host_id: web-01
              selector:
                mode: list
                value: app.service,nginx.service
              target_type: service
            trigger_group:
              triggers:
              - name: deploy
                type: webhook.custom
            version: 1
            needs_input /trigger_group/triggers/0/name: which webhook signals the undo cannot be inferred: name it (`deploy-undo`, say) and configure it on the agent (the forward name is kept as a placeholder)
            needs_input /actions: no action of the forward policy has an inverse the agent can run (see the notes): add the actions that undo it, or do not save this inverse
            note: name: `Webhook deploy: restart web-01 services (inverse)`
            note: /targets/selector: kept `list: app.service,nginx.service` because the forward policy is not stored: the inverse acts on every target it resolves to, not only those the forward run changed; store the forward policy and generate again for a ledger selector
            note: /actions/0: left out of the inverse: `host.service restart` has no inverse in the manifest (running it again would not undo it)
            validate: blocker schema.empty /actions: at least one action is required
            validate: blocked
            === 07-on-battery-notify.yaml
            actions: []
            enabled: false
            name: 'On battery: page on-call (inverse)'
            notes: 'Inverse of "On battery: page on-call", generated by Hazel.'
            priority: 0
            targets:
              host_id: notify
              selector:
                mode: list
                value: oncall
              target_type: webhook
            trigger_group:
              logic: ANY
              triggers:
              - equals: on_mains
                type: ups.state
                ups: ups1@nut.lan:3493
              - equals: comm_lost
                for: 30s
                type: ups.state
                ups: ups1@nut.lan:3493
            version: 1
            needs_input /trigger_group/triggers/1/equals: the UPS state `comm_lost` has no opposite: set the state that signals the undo (`on_mains`, say) or delete this trigger
            needs_input /actions: no action of the forward policy has an inverse the agent can run (see the notes): add the actions that undo it, or do not save this inverse
            note: name: `On battery: page on-call (inverse)`
            note: /trigger_group/triggers/0: ups.state `on_battery` -> `on_mains`
            note: /targets/selector: kept `list: oncall` because the forward policy is not stored: the inverse acts on every target it resolves to, not only those the forward run changed; store the forward policy and generate again for a ledger selector
            note: /actions/0: left out of the inverse: `notify.webhook post` has no inverse in the manifest (running it again would not undo it)
            validate: blocker schema.empty /actions: at least one action is required
            validate: blocked
            === spec-section2.json
            actions:
            - capability_id: proxmox.vm
              verb: start
            conditions:
              all:
              - field: runtime_minutes
                op: '>='
                scope: ups
                value: 5
              - field: reachable
                op: =
                scope: host
                value: true
              - field: charge_pct
                op: '>'
                scope: metric
                value: 40
              - field: count_matching
                op: '>='
                scope: vm
                value: 1
            dynamic_resolution: true
            enabled: false
            idempotency_window: 10m
            name: 'On battery: stop low-tier VMs (inverse)'
            notes: 'Inverse of "On battery: stop low-tier VMs", generated by Hazel.'
            priority: 0
            stop_on_match: false
            suppression_window: 5m
            targets:
              host_id: pve-01
              selector:
                mode: range
                value: 104,204,311-318
              target_type: vm
            trigger_group:
              logic: ANY
              triggers:
              - equals: on_mains
                type: ups.state
              - for: 120s
                metric: load
                op: '>'
                type: metric.threshold
                value: 60
              - schedule:
                  at: 01:00
                  days:
                  - sun
                  repeat: weekly
                type: timer.at
              - schedule:
                  cron: 0 1 * * 0
                type: timer.at
              - after: 10m
                since_event:
                  equals: on_battery
                  type: ups.state
                type: timer.after
              - name: deploy
                type: webhook.custom
            version: 1
            needs_input /trigger_group/triggers/1/op: the reverse of `load > 60` is not inferred: `load <= 60` undoes as soon as the value crosses back; a lower value leaves a margin that avoids flapping; set `op` and `value` (the forward threshold is kept as a placeholder)
            needs_input /trigger_group/triggers/2/schedule: when to undo a scheduled action cannot be inferred from its schedule: set the schedule of the undo (the forward schedule is kept as a placeholder)
            needs_input /trigger_group/triggers/3/schedule: when to undo a scheduled action cannot be inferred from its schedule: set the schedule of the undo (the forward schedule is kept as a placeholder)
            needs_input /trigger_group/triggers/4/after: how long to wait before the undo cannot be inferred: set `after` (the forward delay is kept as a placeholder)
            needs_input /trigger_group/triggers/5/name: which webhook signals the undo cannot be inferred: name it (`deploy-undo`, say) and configure it on the agent (the forward name is kept as a placeholder)
            note: name: `On battery: stop low-tier VMs (inverse)`
            note: /trigger_group/triggers/0: ups.state `on_battery` -> `on_mains`
            note: /trigger_group/triggers/4: since_event ups.state `on_mains` -> `on_battery`
            note: /conditions/all/0: kept `ups.runtime_minutes >= 5`, written for the forward situation: check it should also hold for the undo
            note: /conditions/all/1: kept `host.reachable = true`, written for the forward situation: check it should also hold for the undo
            note: /conditions/all/2: kept `metric.charge_pct > 40`, written for the forward situation: check it should also hold for the undo
            note: /conditions/all/3: kept `vm.count_matching >= 1`, written for the forward situation: check it should also hold for the undo
            note: /targets/selector: kept `range: 104,204,311-318` because the forward policy is not stored: the inverse acts on every target it resolves to, not only those the forward run changed; store the forward policy and generate again for a ledger selector
            note: /actions/0: `proxmox.vm shutdown grace_s=60` (/actions/0) -> `proxmox.vm start`
            validate: info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
            validate: ok
        "#]].assert_eq(&all_examples(None));
    }

    #[test]
    fn every_inverse_of_an_example_validates_and_complete_ones_have_no_blocker() {
        for forward_id in [None, Some(forward_id())] {
            for (name, spec) in examples() {
                let inv = inverse(&spec, &options(forward_id)).expect("examples invert");
                let report = validate_value(
                    &inv.spec_inverse,
                    drivers::manifest::shipped(),
                    &CompileContext::default(),
                )
                .report;
                let nothing_to_undo = inv.needs_input.iter().any(|n| n.path == "/actions");
                assert!(
                    report.ok || nothing_to_undo,
                    "inverse of {name} is blocked: {:?}",
                    report.issues
                );
                if nothing_to_undo {
                    assert!(!report.ok, "an inverse without actions must not save");
                }
                if inv.needs_input.is_empty() {
                    assert!(report
                        .issues
                        .iter()
                        .all(|i| i.finding.severity != Severity::Blocker));
                }
            }
        }
    }

    #[test]
    fn stopping_vms_on_battery_inverts_to_starting_them_on_mains() {
        check(
            r#"
version: 1
name: stop low-tier VMs
trigger_group:
  triggers:
    - { type: ups.state, equals: on_battery }
targets:
  host_id: pve-01
  target_type: vm
  selector: { mode: range, value: "104,204" }
actions:
  - { capability_id: proxmox.vm, verb: shutdown, params: { grace_s: 60 } }
"#,
            Some(forward_id()),
            expect![[r#"
                actions:
                - capability_id: proxmox.vm
                  verb: start
                enabled: false
                name: stop low-tier VMs (inverse)
                notes: Inverse of "stop low-tier VMs" (policy 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5), generated by Hazel.
                targets:
                  host_id: pve-01
                  selector:
                    mode: ledger
                    value: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5
                  target_type: vm
                trigger_group:
                  triggers:
                  - equals: on_mains
                    type: ups.state
                version: 1
                note: name: `stop low-tier VMs (inverse)`
                note: /trigger_group/triggers/0: ups.state `on_battery` -> `on_mains`
                note: /targets/selector: `range: 104,204` -> `ledger: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5`: the inverse acts on exactly the targets the forward policy's latest successful run changed
                note: /actions/0: `proxmox.vm shutdown grace_s=60` (/actions/0) -> `proxmox.vm start`
                validate: ok"#]],
        );
    }

    #[test]
    fn poe_off_inverts_to_poe_on_through_the_param_valued_rule() {
        check(
            r#"
version: 1
name: shed PoE
trigger_group:
  triggers:
    - { type: ups.state, equals: low_battery }
targets:
  host_id: sw-01
  target_type: poe-port
  selector: { mode: list, value: "1/B1,1/B2" }
actions:
  - { capability_id: aoss.poe.port, verb: set, params: { state: "off" } }
"#,
            None,
            expect![[r#"
                actions:
                - capability_id: aoss.poe.port
                  params:
                    state: on
                  verb: set
                enabled: false
                name: shed PoE (inverse)
                notes: Inverse of "shed PoE", generated by Hazel.
                targets:
                  host_id: sw-01
                  selector:
                    mode: list
                    value: 1/B1,1/B2
                  target_type: poe-port
                trigger_group:
                  triggers:
                  - equals: on_mains
                    type: ups.state
                version: 1
                note: name: `shed PoE (inverse)`
                note: /trigger_group/triggers/0: ups.state `low_battery` -> `on_mains`
                note: /targets/selector: kept `list: 1/B1,1/B2` because the forward policy is not stored: the inverse acts on every target it resolves to, not only those the forward run changed; store the forward policy and generate again for a ledger selector
                note: /actions/0: `aoss.poe.port set state=off` (/actions/0) -> `aoss.poe.port set state=on`
                validate: ok"#]],
        );
    }

    #[test]
    fn a_poe_cycle_has_no_inverse_and_is_left_out_with_a_note() {
        check(
            r#"
version: 1
name: cycle the lab ports
trigger_group:
  triggers:
    - { type: ups.state, equals: on_mains }
targets:
  host_id: sw-01
  target_type: poe-port
  selector: { mode: list, value: "1/B1" }
actions:
  - { capability_id: aoss.poe.port, verb: set, params: { state: cycle } }
"#,
            Some(forward_id()),
            expect![[r#"
                actions: []
                enabled: false
                name: cycle the lab ports (inverse)
                notes: Inverse of "cycle the lab ports" (policy 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5), generated by Hazel.
                targets:
                  host_id: sw-01
                  selector:
                    mode: ledger
                    value: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5
                  target_type: poe-port
                trigger_group:
                  triggers:
                  - equals: on_battery
                    type: ups.state
                version: 1
                needs_input /actions: no action of the forward policy has an inverse the agent can run (see the notes): add the actions that undo it, or do not save this inverse
                note: name: `cycle the lab ports (inverse)`
                note: /trigger_group/triggers/0: ups.state `on_mains` -> `on_battery`
                note: /targets/selector: `list: 1/B1` -> `ledger: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5`: the inverse acts on exactly the targets the forward policy's latest successful run changed
                note: /actions/0: left out of the inverse: `aoss.poe.port set state=cycle` has no inverse: the inverse of `aoss.poe.port set` depends on state, and state=cycle matches no rule (running it again would not undo it)
                validate: blocker schema.empty /actions: at least one action is required
                validate: blocked"#]],
        );
    }

    #[test]
    fn a_node_shutdown_has_no_inverse_and_is_left_out_so_the_inverse_cannot_save() {
        check(
            r#"
version: 1
name: shut the node down
trigger_group:
  triggers:
    - { type: ups.state, equals: low_battery }
targets:
  host_id: pve-01
  target_type: host
  selector: { mode: list, value: pve-01 }
actions:
  - { capability_id: proxmox.node, verb: shutdown }
"#,
            None,
            expect![[r#"
                actions: []
                enabled: false
                name: shut the node down (inverse)
                notes: Inverse of "shut the node down", generated by Hazel.
                targets:
                  host_id: pve-01
                  selector:
                    mode: list
                    value: pve-01
                  target_type: host
                trigger_group:
                  triggers:
                  - equals: on_mains
                    type: ups.state
                version: 1
                needs_input /actions: no action of the forward policy has an inverse the agent can run (see the notes): add the actions that undo it, or do not save this inverse
                note: name: `shut the node down (inverse)`
                note: /trigger_group/triggers/0: ups.state `low_battery` -> `on_mains`
                note: /targets/selector: kept `list: pve-01` because the forward policy is not stored: the inverse acts on every target it resolves to, not only those the forward run changed; store the forward policy and generate again for a ledger selector
                note: /actions/0: left out of the inverse: `proxmox.node shutdown` powers off or reboots a host, and no driver action undoes that (a rebooted host comes back by itself, a powered-off one needs Wake-on-LAN, IPMI or power-on after AC loss) (running it again would not undo it)
                validate: blocker schema.empty /actions: at least one action is required
                validate: blocked"#]],
        );
    }

    #[test]
    fn powering_off_the_agents_own_host_says_the_agent_cannot_undo_it() {
        let input = r#"
version: 1
name: power off nas-01
trigger_group:
  triggers:
    - { type: ups.state, equals: low_battery }
targets:
  host_id: nas-01
  target_type: host
  selector: { mode: list, value: nas-01 }
actions:
  - { capability_id: host.power, verb: poweroff }
"#;
        let inv = inverse(
            &parse(input),
            &InverseOptions {
                self_host: Some("nas-01"),
                ..options(None)
            },
        )
        .expect("inverts");
        let needs: Vec<String> = inv
            .needs_input
            .iter()
            .map(|n| format!("{}: {}", n.path, n.note))
            .collect();
        expect![[r#"
            [
                "/actions: no action of the forward policy has an inverse the agent can run (see the notes): add the actions that undo it, or do not save this inverse",
            ]
        "#]].assert_debug_eq(&needs);
    }

    #[test]
    fn several_actions_are_reversed_and_pointers_name_the_new_positions() {
        check(
            r#"
version: 1
name: take the web tier down
trigger_group:
  triggers:
    - { type: ups.state, equals: on_battery }
targets:
  host_id: web-01
  target_type: service
  selector: { mode: list, value: "app.service" }
actions:
  - { capability_id: host.service, verb: stop }
  - { capability_id: host.service, verb: restart }
  - { capability_id: host.service, verb: start, idempotency: { key_hint: boot } }
"#,
            Some(forward_id()),
            expect![[r#"
                actions:
                - capability_id: host.service
                  verb: stop
                - capability_id: host.service
                  verb: start
                enabled: false
                name: take the web tier down (inverse)
                notes: Inverse of "take the web tier down" (policy 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5), generated by Hazel.
                targets:
                  host_id: web-01
                  selector:
                    mode: ledger
                    value: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5
                  target_type: service
                trigger_group:
                  triggers:
                  - equals: on_mains
                    type: ups.state
                version: 1
                note: name: `take the web tier down (inverse)`
                note: /trigger_group/triggers/0: ups.state `on_battery` -> `on_mains`
                note: /targets/selector: `list: app.service` -> `ledger: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5`: the inverse acts on exactly the targets the forward policy's latest successful run changed
                note: /actions: order reversed: the last forward action is undone first
                note: /actions/0: `host.service start` (/actions/2) -> `host.service stop`; dropped the forward idempotency key hint
                note: /actions/1: left out of the inverse: `host.service restart` has no inverse in the manifest (running it again would not undo it)
                note: /actions/1: `host.service stop` (/actions/0) -> `host.service start`
                validate: ok"#]],
        );
    }

    #[test]
    fn ups_state_conditions_flip_and_other_conditions_are_kept_with_a_note() {
        check(
            r#"
version: 1
name: stop VMs while on battery
trigger_group:
  logic: ALL
  triggers:
    - { type: ups.state, equals: on_battery }
    - { type: metric.threshold, metric: load, op: ">", value: 60, for: 2m }
conditions:
  all:
    - { scope: ups, field: state, op: "=", value: on_battery }
    - { scope: ups, field: state, op: "!=", value: overload }
    - { scope: ups, field: runtime_minutes, op: ">=", value: 5 }
targets:
  host_id: pve-01
  target_type: vm
  selector: { mode: query, value: 'labels.tier = low and status = running' }
actions:
  - { capability_id: proxmox.vm, verb: suspend }
"#,
            None,
            expect![[r#"
                actions:
                - capability_id: proxmox.vm
                  verb: resume
                conditions:
                  all:
                  - field: state
                    op: =
                    scope: ups
                    value: on_mains
                  - field: state
                    op: '!='
                    scope: ups
                    value: overload
                  - field: runtime_minutes
                    op: '>='
                    scope: ups
                    value: 5
                enabled: false
                name: stop VMs while on battery (inverse)
                notes: Inverse of "stop VMs while on battery", generated by Hazel.
                targets:
                  host_id: pve-01
                  selector:
                    mode: query
                    value: labels.tier = low and status = running
                  target_type: vm
                trigger_group:
                  logic: ALL
                  triggers:
                  - equals: on_mains
                    type: ups.state
                  - for: 2m
                    metric: load
                    op: '>'
                    type: metric.threshold
                    value: 60
                version: 1
                needs_input /trigger_group/triggers/1/op: the reverse of `load > 60` is not inferred: `load <= 60` undoes as soon as the value crosses back; a lower value leaves a margin that avoids flapping; set `op` and `value` (the forward threshold is kept as a placeholder)
                needs_input /targets/selector/value: the query filters on `status`, which the forward actions change (a VM stopped by the forward run no longer matches `status = running`): rewrite the query, or store the forward policy and generate again for a ledger selector
                note: name: `stop VMs while on battery (inverse)`
                note: /trigger_group/triggers/0: ups.state `on_battery` -> `on_mains`
                note: /trigger_group/logic: kept `ALL`: the undo fires only when every flipped trigger holds; use `ANY` if any one of them should undo
                note: /conditions/all/0: ups state `= on_battery` -> `= on_mains`
                note: /conditions/all/1: kept `ups.state != overload`: it holds for the undo as well as for the forward run
                note: /conditions/all/2: kept `ups.runtime_minutes >= 5`, written for the forward situation: check it should also hold for the undo
                note: /targets/selector: kept `query: labels.tier = low and status = running` because the forward policy is not stored: the inverse acts on every target it resolves to, not only those the forward run changed; store the forward policy and generate again for a ledger selector
                note: /actions/0: `proxmox.vm suspend` (/actions/0) -> `proxmox.vm resume`
                validate: ok"#]],
        );
    }

    #[test]
    fn triggers_that_flip_to_the_same_trigger_are_listed_once() {
        check(
            r#"
version: 1
name: stop VMs on any outage
trigger_group:
  triggers:
    - { type: ups.state, equals: on_battery }
    - { type: ups.state, equals: low_battery }
    - { type: webhook.custom, name: outage }
targets:
  host_id: pve-01
  target_type: vm
  selector: { mode: list, value: "104" }
actions:
  - { capability_id: proxmox.vm, verb: stop }
"#,
            Some(forward_id()),
            expect![[r#"
                actions:
                - capability_id: proxmox.vm
                  verb: start
                enabled: false
                name: stop VMs on any outage (inverse)
                notes: Inverse of "stop VMs on any outage" (policy 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5), generated by Hazel.
                targets:
                  host_id: pve-01
                  selector:
                    mode: ledger
                    value: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5
                  target_type: vm
                trigger_group:
                  triggers:
                  - equals: on_mains
                    type: ups.state
                  - name: outage
                    type: webhook.custom
                version: 1
                needs_input /trigger_group/triggers/1/name: which webhook signals the undo cannot be inferred: name it (`outage-undo`, say) and configure it on the agent (the forward name is kept as a placeholder)
                note: name: `stop VMs on any outage (inverse)`
                note: /trigger_group/triggers/1 of the forward policy flips to a trigger already listed; dropped
                note: /trigger_group/triggers/0: ups.state `on_battery` -> `on_mains`
                note: /targets/selector: `list: 104` -> `ledger: 0b7e6d5c-4a3b-4c2d-9e1f-a0b1c2d3e4f5`: the inverse acts on exactly the targets the forward policy's latest successful run changed
                note: /actions/0: `proxmox.vm stop` (/actions/0) -> `proxmox.vm start`
                validate: ok"#]],
        );
    }

    #[test]
    fn the_inverse_of_an_inverse_is_the_forward_policy_again() {
        let forward = parse(
            r#"
version: 1
name: shed PoE
enabled: false
trigger_group:
  triggers:
    - { type: ups.state, equals: on_battery, for: 30s }
targets:
  host_id: sw-01
  target_type: poe-port
  selector: { mode: list, value: "1/B1" }
actions:
  - { capability_id: aoss.poe.port, verb: set, params: { state: "off" } }
  - { capability_id: aoss.interface, verb: set, params: { admin: down } }
notes: forward
"#,
        );
        let once = inverse(&forward, &options(None)).expect("inverts");
        assert!(once.needs_input.is_empty());
        let twice = inverse(&once.spec_inverse, &options(None)).expect("inverts again");
        assert!(twice.needs_input.is_empty());
        let mut back = twice.spec_inverse;
        back["notes"] = "forward".into();
        assert_eq!(back, forward);
    }

    #[test]
    fn a_stored_id_is_dropped_from_the_inverse() {
        let mut spec = parse(
            r#"
version: 1
name: stop a VM
trigger_group: { triggers: [ { type: ups.state, equals: on_battery } ] }
targets: { host_id: pve-01, target_type: vm, selector: { mode: list, value: "104" } }
actions: [ { capability_id: proxmox.vm, verb: shutdown } ]
"#,
        );
        spec["id"] = FORWARD_ID.into();
        let inv = inverse(&spec, &options(Some(forward_id()))).expect("inverts");
        assert!(inv.spec_inverse.get("id").is_none());
        assert_eq!(
            inv.spec_inverse["targets"]["selector"],
            json!({ "mode": "ledger", "value": FORWARD_ID })
        );
    }

    #[test]
    fn anything_but_a_valid_policy_spec_is_an_error() {
        expect!["error: a policy spec is a JSON object, found an array"]
            .assert_eq(&render(inverse(&json!([1, 2]), &options(None))));
        expect!["error: not a valid policy spec (validate it first): /name: name `x` is shorter than 3 characters; /trigger_group: missing required field `trigger_group`; /targets: missing required field `targets`; /actions: at least one action is required"].assert_eq(&render(inverse(
            &json!({ "version": 1, "name": "x", "actions": [] }),
            &options(None),
        )));
    }
}
