//! Checking values against a manifest: an action's params against its
//! capability ([`Capability::check_params`]), and one value against the
//! rules of its field or param spec (type, allowed values, bounds, array
//! items). The decoder holds a manifest's own defaults to the same rules.

use inventory::finding::{did_you_mean, did_you_mean_hint};
use serde_json::{Map, Value};

use super::{Capability, FieldSpec, ParamProblem, ParamSpec, ValueType};

impl Capability {
    /// Checks an action's params against the manifest: unknown params (with
    /// a did-you-mean hint), params that do not apply to `verb`, missing
    /// required ones, wrong types and values. Returns the params with
    /// defaults filled in, or every problem found.
    pub fn check_params(
        &self,
        verb: &str,
        params: &Map<String, Value>,
    ) -> Result<Map<String, Value>, Vec<ParamProblem>> {
        let mut problems = Vec::new();
        if !self.has_verb(verb) {
            problems.push(ParamProblem {
                param: String::new(),
                message: format!("capability `{}` has no verb `{verb}`", self.id),
                hint: did_you_mean_hint(verb, self.verbs.iter().map(String::as_str)),
            });
            return Err(problems);
        }
        for (name, value) in params {
            match self.params.get(name) {
                None => problems.push(ParamProblem {
                    param: name.clone(),
                    message: format!("unknown param `{name}` for `{}`", self.id),
                    hint: did_you_mean_hint(name, self.params_for(verb).map(|(n, _)| n)),
                }),
                Some(spec) if !spec.applies_to(verb) => problems.push(ParamProblem {
                    param: name.clone(),
                    message: format!("param `{name}` does not apply to verb `{verb}`"),
                    hint: spec
                        .verbs
                        .as_ref()
                        .map(|v| format!("it applies to: {}", v.join(", "))),
                }),
                Some(spec) => {
                    if let Err(message) = spec.check(value) {
                        problems.push(ParamProblem {
                            param: name.clone(),
                            message,
                            hint: None,
                        });
                    }
                }
            }
        }
        for (name, spec) in self.params_for(verb) {
            if spec.required && !params.contains_key(name) {
                problems.push(ParamProblem {
                    param: name.to_string(),
                    message: format!("missing required param `{name}` for verb `{verb}`"),
                    hint: spec
                        .allowed
                        .as_ref()
                        .map(|a| format!("one of: {}", list_values(a))),
                });
            }
        }
        if problems.is_empty() {
            Ok(self.effective_params(verb, params))
        } else {
            Err(problems)
        }
    }
}

impl ParamSpec {
    /// Checks a value: type, allowed values, bounds, array items.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        check_value(
            &Rules {
                ty: &self.ty,
                allowed: self.allowed.as_deref(),
                items: self.items.as_ref(),
                min: self.min,
                max: self.max,
            },
            value,
            true,
        )
    }
}

impl FieldSpec {
    /// Checks a value: type, allowed values, bounds, array items. The
    /// message never quotes the value of a secret field.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        check_value(
            &Rules {
                ty: &self.ty,
                allowed: self.allowed.as_deref(),
                items: self.items.as_ref(),
                min: self.min,
                max: self.max,
            },
            value,
            !self.secret,
        )
    }
}

/// The value rules a field or param spec sets.
pub(super) struct Rules<'a> {
    pub(super) ty: &'a ValueType,
    pub(super) allowed: Option<&'a [Value]>,
    pub(super) items: Option<&'a ValueType>,
    pub(super) min: Option<f64>,
    pub(super) max: Option<f64>,
}

/// Checks `value` against `rules`; `reveal: false` keeps the value out of
/// the message (secret fields).
pub(super) fn check_value(rules: &Rules, value: &Value, reveal: bool) -> Result<(), String> {
    if !rules.ty.accepts(value) {
        return Err(format!("expected {}, found {}", rules.ty, kind(value)));
    }
    if let Some(allowed) = rules.allowed {
        if !allowed.contains(value) {
            if !reveal {
                return Err("value is not one of the allowed values".into());
            }
            let shown = show(value);
            let hint = value
                .as_str()
                .and_then(|s| did_you_mean(s, allowed.iter().filter_map(Value::as_str)))
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            return Err(format!(
                "`{shown}` is not one of: {}{hint}",
                list_values(allowed)
            ));
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = rules.min.filter(|m| n < *m) {
            return Err(format!("must be at least {min}"));
        }
        if let Some(max) = rules.max.filter(|m| n > *m) {
            return Err(format!("must be at most {max}"));
        }
    }
    if let (Some(items), Some(list)) = (rules.items, value.as_array()) {
        for (i, item) in list.iter().enumerate() {
            if !items.accepts(item) {
                return Err(format!("item {i}: expected {items}, found {}", kind(item)));
            }
        }
    }
    Ok(())
}

/// What a YAML/JSON value is, for messages ("a string", "a list").
pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn list_values(values: &[Value]) -> String {
    values.iter().map(show).collect::<Vec<_>>().join(", ")
}
