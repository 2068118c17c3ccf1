//! From text to [`PolicySpec`]: read JSON or YAML into a value tree, then walk
//! it, collecting every schema finding at once with a JSON-pointer path and,
//! where a known word is close, a "did you mean" hint.

use inventory::finding::{did_you_mean, pointer_token};
use inventory::selector::SelectorMode;
use inventory::{Finding, Severity};
use serde_json::{Map, Value};

use super::duration::parse_duration;
use super::schedule::{normalize_cron, parse_time_of_day};
use super::*;

/// A document that is not well-formed JSON or YAML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{format} syntax error at line {line}, column {column}: {message}")]
pub struct DocumentError {
    /// `JSON` or `YAML`.
    pub format: &'static str,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl DocumentError {
    /// The `schema.parse` blocker for this error.
    pub fn to_finding(&self) -> Finding {
        Finding::new(Severity::Blocker, "schema.parse", "", self.to_string())
            .with_hint("fix the syntax at that position; JSON and YAML are both accepted")
    }
}

/// Reads JSON (text starting with `{` or `[`) or YAML into a value tree.
pub fn parse_document(text: &str) -> Result<Value, DocumentError> {
    let trimmed = text.trim_start_matches('\u{feff}');
    if matches!(trimmed.trim_start().as_bytes().first(), Some(b'{' | b'[')) {
        serde_json::from_str(trimmed).map_err(|e| DocumentError {
            format: "JSON",
            line: e.line(),
            column: e.column(),
            message: strip_position(&e.to_string()),
        })
    } else {
        serde_norway::from_str::<Value>(trimmed).map_err(|e| {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
            DocumentError {
                format: "YAML",
                line,
                column,
                message: strip_position(&e.to_string()),
            }
        })
    }
}

/// Drops the " at line X column Y" tail parsers append; the finding says it once.
fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

const ROOT_FIELDS: &[&str] = &[
    "version",
    "name",
    "enabled",
    "priority",
    "stop_on_match",
    "dynamic_resolution",
    "trigger_group",
    "conditions",
    "targets",
    "actions",
    "suppression_window",
    "idempotency_window",
    "notes",
];
const TRIGGER_GROUP_FIELDS: &[&str] = &["logic", "triggers"];
const CONDITIONS_FIELDS: &[&str] = &["all"];
const CONDITION_FIELDS: &[&str] = &["scope", "field", "op", "value", "ups"];
const TARGETS_FIELDS: &[&str] = &["host_id", "target_type", "selector"];
const SELECTOR_FIELDS: &[&str] = &["mode", "value"];
const ACTION_FIELDS: &[&str] = &["capability_id", "verb", "params", "idempotency"];
const IDEMPOTENCY_FIELDS: &[&str] = &["key_hint"];
const SCHEDULE_FIELDS: &[&str] = &["repeat", "at", "days", "cron"];
const SINCE_EVENT_FIELDS: &[&str] = &["type", "equals", "ups", "name"];
/// Every field any trigger type knows, to tell "wrong for this type" from "unknown".
const ANY_TRIGGER_FIELDS: &[&str] = &[
    "type",
    "equals",
    "for",
    "ups",
    "metric",
    "op",
    "value",
    "schedule",
    "after",
    "since_event",
    "name",
];

fn trigger_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "ups.state" => &["type", "equals", "for", "ups"],
        "metric.threshold" => &["type", "metric", "op", "value", "for", "ups"],
        "timer.at" => &["type", "schedule"],
        "timer.after" => &["type", "after", "since_event"],
        _ => &["type", "name"],
    }
}

/// Whether `text` is a literal id (`[A-Za-z0-9_.@:-]+`), as host ids and
/// webhook names must be.
pub fn is_literal_id(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b':' | b'-'))
}

/// Walks a document into a [`PolicySpec`]. Returns the spec only when no
/// blocker was found; the findings are every schema problem at once.
pub fn parse_spec(doc: &Value) -> (Option<PolicySpec>, Vec<Finding>) {
    let mut w = Walker { findings: Vec::new() };
    let spec = w.policy(doc);
    let blocked = w.findings.iter().any(|f| f.severity == Severity::Blocker);
    (if blocked { None } else { spec }, w.findings)
}

struct Walker {
    findings: Vec<Finding>,
}

fn child(path: &str, key: &str) -> String {
    format!("{path}/{}", pointer_token(key))
}

fn index(path: &str, i: usize) -> String {
    format!("{path}/{i}")
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl Walker {
    fn blocker(&mut self, code: &str, path: &str, message: String) -> &mut Finding {
        self.findings.push(Finding::new(Severity::Blocker, code, path, message));
        self.findings.last_mut().expect("just pushed")
    }

    fn wrong_type(&mut self, path: &str, expected: &str, v: &Value) {
        self.blocker("schema.type", path, format!("expected {expected}, found {}", type_name(v)));
    }

    /// An object whose keys are all in `fields`; unknown keys are reported.
    fn object<'v>(&mut self, v: &'v Value, path: &str, fields: &[&str]) -> Option<&'v Map<String, Value>> {
        let Value::Object(map) = v else {
            self.wrong_type(path, "an object", v);
            return None;
        };
        for key in map.keys() {
            if !fields.contains(&key.as_str()) {
                self.unknown_field(path, key, fields);
            }
        }
        Some(map)
    }

    fn unknown_field(&mut self, path: &str, key: &str, fields: &[&str]) {
        let hint = did_you_mean(key, fields.iter().copied())
            .map(|s| format!("did you mean `{s}`?"))
            .unwrap_or_else(|| format!("known fields here: {}", fields.join(", ")));
        self.blocker("schema.unknown_field", &child(path, key), format!("unknown field `{key}`"))
            .hint = Some(hint);
    }

    fn required<'v>(&mut self, map: &'v Map<String, Value>, key: &str, path: &str) -> Option<&'v Value> {
        let v = map.get(key);
        if v.is_none() {
            self.blocker("schema.missing_field", &child(path, key), format!("missing required field `{key}`"));
        }
        v
    }

    fn string<'v>(&mut self, v: &'v Value, path: &str) -> Option<&'v str> {
        match v {
            Value::String(s) if !s.trim().is_empty() => Some(s),
            Value::String(_) => {
                self.blocker("schema.empty", path, "must not be empty".into());
                None
            }
            other => {
                self.wrong_type(path, "a string", other);
                None
            }
        }
    }

    fn boolean(&mut self, map: &Map<String, Value>, key: &str, path: &str, default: bool) -> bool {
        match map.get(key) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.wrong_type(&child(path, key), "true or false", other);
                default
            }
        }
    }

    fn duration(&mut self, v: &Value, path: &str) -> Option<u64> {
        let Value::String(s) = v else {
            self.wrong_type(path, "a duration string such as `90s`, `10m`, `1h30m` or `2d`", v);
            return None;
        };
        match parse_duration(s) {
            Ok(secs) => Some(secs),
            Err(e) => {
                self.blocker("schema.duration", path, format!("invalid duration `{s}`: {e}")).hint =
                    Some("write one or more <number><unit> groups with units s, m, h, d: 90s, 10m, 1h30m, 2d".into());
                None
            }
        }
    }

    fn optional_duration(&mut self, map: &Map<String, Value>, key: &str, path: &str, default: u64) -> u64 {
        match map.get(key) {
            None => default,
            Some(v) => self.duration(v, &child(path, key)).unwrap_or(default),
        }
    }

    /// A value from a closed set, with a did-you-mean hint when it is close.
    fn one_of<'a>(&mut self, v: &Value, path: &str, allowed: &[&'a str], what: &str) -> Option<&'a str> {
        let s = self.string(v, path)?;
        if let Some(found) = allowed.iter().find(|a| **a == s) {
            return Some(found);
        }
        let hint = match did_you_mean(s, allowed.iter().copied()) {
            Some(close) => format!("did you mean `{close}`?"),
            None => format!("one of: {}", allowed.join(", ")),
        };
        self.blocker("schema.enum", path, format!("`{s}` is not a {what}")).hint = Some(hint);
        None
    }

    fn ups_name(&mut self, map: &Map<String, Value>, path: &str) -> Option<String> {
        let v = map.get("ups")?;
        self.string(v, &child(path, "ups")).map(str::to_string)
    }

    fn policy(&mut self, doc: &Value) -> Option<PolicySpec> {
        let root = self.object(doc, "", ROOT_FIELDS)?;
        let version = match self.required(root, "version", "") {
            Some(Value::Number(n)) if n.as_u64() == Some(SPEC_VERSION) => Some(SPEC_VERSION),
            Some(other) => {
                self.blocker("schema.version", "/version", format!("version must be the integer 1, found {other}"))
                    .hint = Some("write `version: 1`".into());
                None
            }
            None => None,
        };
        let name = self.required(root, "name", "").and_then(|v| self.string(v, "/name")).and_then(|n| {
            if n.trim().chars().count() < 3 {
                self.blocker("schema.name_too_short", "/name", format!("name `{n}` is shorter than 3 characters"));
                None
            } else {
                Some(n.to_string())
            }
        });
        let enabled = self.boolean(root, "enabled", "", true);
        let priority = match root.get("priority") {
            None => 0,
            Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap_or(0),
            Some(other) => {
                self.wrong_type("/priority", "an integer", other);
                0
            }
        };
        let stop_on_match = self.boolean(root, "stop_on_match", "", false);
        let dynamic_resolution = self.boolean(root, "dynamic_resolution", "", true);
        let trigger_group = self.required(root, "trigger_group", "").and_then(|v| self.trigger_group(v));
        let conditions = match root.get("conditions") {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(v) => self.conditions(v),
        };
        let targets = self.required(root, "targets", "").and_then(|v| self.targets(v));
        let actions = self.required(root, "actions", "").and_then(|v| self.actions(v));
        let suppression_s = self.optional_duration(root, "suppression_window", "", DEFAULT_SUPPRESSION_S);
        let idempotency_s = self.optional_duration(root, "idempotency_window", "", DEFAULT_IDEMPOTENCY_S);
        let notes = match root.get("notes") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.wrong_type("/notes", "a string", other);
                None
            }
        };
        Some(PolicySpec {
            version: version?,
            name: name?,
            enabled,
            priority,
            stop_on_match,
            dynamic_resolution,
            trigger_group: trigger_group?,
            conditions: conditions?,
            targets: targets?,
            actions: actions?,
            suppression_s,
            idempotency_s,
            notes,
        })
    }

    fn list<'v>(&mut self, v: &'v Value, path: &str, what: &str) -> Option<&'v Vec<Value>> {
        match v {
            Value::Array(items) if items.is_empty() => {
                self.blocker("schema.empty", path, format!("at least one {what} is required"));
                None
            }
            Value::Array(items) => Some(items),
            other => {
                self.wrong_type(path, "a list", other);
                None
            }
        }
    }

    fn trigger_group(&mut self, v: &Value) -> Option<TriggerGroup> {
        let path = "/trigger_group";
        let map = self.object(v, path, TRIGGER_GROUP_FIELDS)?;
        let logic = match map.get("logic") {
            None => Some(Logic::Any),
            Some(v) => self.one_of(v, &child(path, "logic"), &["ALL", "ANY"], "trigger logic").map(|l| {
                if l == "ALL" {
                    Logic::All
                } else {
                    Logic::Any
                }
            }),
        };
        let tpath = child(path, "triggers");
        let items = self.required(map, "triggers", path).and_then(|v| self.list(v, &tpath, "trigger"))?;
        let mut triggers = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.trigger(item, &index(&tpath, i)) {
                Some(t) => triggers.push(t),
                None => ok = false,
            }
        }
        let logic = logic?;
        if logic == Logic::All {
            let mut instantaneous = triggers.iter().enumerate().filter(|(_, t)| t.is_instantaneous());
            if let Some((first, _)) = instantaneous.next() {
                for (i, t) in instantaneous {
                    self.blocker(
                        "schema.instantaneous_under_all",
                        &index(&tpath, i),
                        format!(
                            "`{}` is instantaneous and trigger {first} already is; under ALL at most one instantaneous trigger can ever be true at once",
                            t.type_name()
                        ),
                    )
                    .hint = Some("use logic: ANY, or split the policy in two".into());
                }
            }
        }
        ok.then_some(TriggerGroup { logic, triggers })
    }

    fn trigger(&mut self, v: &Value, path: &str) -> Option<Trigger> {
        let Value::Object(map) = v else {
            self.wrong_type(path, "an object", v);
            return None;
        };
        let kind = self.required(map, "type", path).and_then(|t| {
            let s = self.string(t, &child(path, "type"))?;
            if TRIGGER_TYPES.contains(&s) {
                return Some(s);
            }
            let hint = match did_you_mean(s, TRIGGER_TYPES) {
                Some(close) => format!("did you mean `{close}`?"),
                None => format!("one of: {}", TRIGGER_TYPES.join(", ")),
            };
            self.blocker("schema.unknown_trigger_type", &child(path, "type"), format!("unknown trigger type `{s}`"))
                .hint = Some(hint);
            None
        });
        let Some(kind) = kind else {
            // Still report fields no trigger type knows.
            for key in map.keys().filter(|k| !ANY_TRIGGER_FIELDS.contains(&k.as_str())) {
                self.unknown_field(path, key, ANY_TRIGGER_FIELDS);
            }
            return None;
        };
        let fields = trigger_fields(kind);
        for key in map.keys() {
            if fields.contains(&key.as_str()) {
                continue;
            }
            match key.as_str() {
                "for" => {
                    self.blocker("schema.for_not_allowed", &child(path, key), format!("`for` is not allowed on `{kind}`"))
                        .hint = Some("`for` applies to ups.state and metric.threshold triggers only".into());
                }
                "ups" => {
                    self.blocker("schema.ups_not_allowed", &child(path, key), format!("`ups` is not allowed on `{kind}`"))
                        .hint = Some("`ups` applies to ups.state and metric.threshold triggers".into());
                }
                _ => self.unknown_field(path, key, fields),
            }
        }
        let (for_s, for_ok) = match map.get("for") {
            Some(v) if fields.contains(&"for") => match self.duration(v, &child(path, "for")) {
                Some(s) => (Some(s), true),
                None => (None, false),
            },
            _ => (None, true),
        };
        let trigger = self.trigger_body(kind, map, path, for_s);
        trigger.filter(|_| for_ok)
    }

    fn trigger_body(&mut self, kind: &str, map: &Map<String, Value>, path: &str, for_s: Option<u64>) -> Option<Trigger> {
        match kind {
            "ups.state" => {
                let equals = self.required(map, "equals", path).and_then(|v| self.ups_state(v, &child(path, "equals")));
                let ups = self.ups_name(map, path);
                Some(Trigger::UpsState { equals: equals?, for_s, ups })
            }
            "metric.threshold" => {
                let metric = self
                    .required(map, "metric", path)
                    .and_then(|v| self.string(v, &child(path, "metric")))
                    .map(str::to_string);
                let op = self.required(map, "op", path).and_then(|v| self.op(v, &child(path, "op")));
                let value = self.required(map, "value", path).and_then(|v| match v.as_f64() {
                    Some(n) => Some(n),
                    None => {
                        self.wrong_type(&child(path, "value"), "a number", v);
                        None
                    }
                });
                let ups = self.ups_name(map, path);
                Some(Trigger::MetricThreshold {
                    metric: metric?,
                    op: op?,
                    value: value?,
                    for_s,
                    ups,
                })
            }
            "timer.at" => {
                let schedule = self
                    .required(map, "schedule", path)
                    .and_then(|v| self.schedule(v, &child(path, "schedule")))?;
                Some(Trigger::TimerAt { schedule })
            }
            "timer.after" => {
                let after = self.required(map, "after", path).and_then(|v| self.duration(v, &child(path, "after")));
                let since = self
                    .required(map, "since_event", path)
                    .and_then(|v| self.since_event(v, &child(path, "since_event")));
                Some(Trigger::TimerAfter {
                    after_s: after?,
                    since_event: since?,
                })
            }
            _ => {
                let name = self.required(map, "name", path).and_then(|v| self.literal(v, &child(path, "name")))?;
                Some(Trigger::WebhookCustom { name })
            }
        }
    }

    fn literal(&mut self, v: &Value, path: &str) -> Option<String> {
        let s = self.string(v, path)?;
        if is_literal_id(s) {
            Some(s.to_string())
        } else {
            self.blocker("schema.invalid_id", path, format!("`{s}` is not a valid id")).hint =
                Some("ids use letters, digits and `_ . @ : -` only".into());
            None
        }
    }

    fn ups_state(&mut self, v: &Value, path: &str) -> Option<UpsState> {
        let names: Vec<&str> = UpsState::ALL.iter().map(|s| s.as_str()).collect();
        self.one_of(v, path, &names, "UPS state").and_then(UpsState::parse)
    }

    fn op(&mut self, v: &Value, path: &str) -> Option<Op> {
        let names: Vec<&str> = Op::ALL.iter().map(|o| o.as_str()).collect();
        self.one_of(v, path, &names, "comparison operator").and_then(Op::parse)
    }

    fn schedule(&mut self, v: &Value, path: &str) -> Option<Schedule> {
        let map = self.object(v, path, SCHEDULE_FIELDS)?;
        if let Some(cron) = map.get("cron") {
            if map.keys().any(|k| k != "cron") {
                self.blocker("schema.schedule", path, "a schedule is either `cron` or `repeat`/`at`/`days`, not both".into());
                return None;
            }
            let cpath = child(path, "cron");
            let text = self.string(cron, &cpath)?;
            return match normalize_cron(text) {
                Ok(cron) => Some(Schedule::Cron { cron }),
                Err(e) => {
                    self.blocker("schema.cron", &cpath, format!("invalid cron `{text}`: {e}")).hint = Some(
                        "5 fields are crontab (minute hour day-of-month month day-of-week); 6 fields start with seconds".into(),
                    );
                    None
                }
            };
        }
        let repeat = self.required(map, "repeat", path).and_then(|v| {
            self.one_of(v, &child(path, "repeat"), &["daily", "weekly"], "repeat")
                .map(|r| if r == "daily" { Repeat::Daily } else { Repeat::Weekly })
        });
        let at = self.required(map, "at", path).and_then(|v| {
            let apath = child(path, "at");
            let s = self.string(v, &apath)?;
            if parse_time_of_day(s).is_some() {
                Some(s.to_string())
            } else {
                self.blocker("schema.time_of_day", &apath, format!("`{s}` is not a time of day")).hint =
                    Some("write 24-hour HH:MM, e.g. \"01:00\"".into());
                None
            }
        });
        let days = match map.get("days") {
            None => Some(Vec::new()),
            Some(v) => self.days(v, &child(path, "days")),
        };
        let (repeat, days) = (repeat?, days?);
        match (repeat, days.is_empty()) {
            (Repeat::Weekly, true) => {
                self.blocker("schema.days", &child(path, "days"), "a weekly schedule needs `days`".into()).hint =
                    Some("e.g. days: [sun]".into());
                None
            }
            (Repeat::Daily, false) => {
                self.blocker("schema.days", &child(path, "days"), "a daily schedule runs every day and takes no `days`".into())
                    .hint = Some("use repeat: weekly to pick days".into());
                None
            }
            _ => Some(Schedule::Repeat { repeat, at: at?, days }),
        }
    }

    fn days(&mut self, v: &Value, path: &str) -> Option<Vec<Weekday>> {
        let Value::Array(items) = v else {
            self.wrong_type(path, "a list of weekdays", v);
            return None;
        };
        let mut days = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.one_of(item, &index(path, i), &Weekday::NAMES, "weekday").and_then(Weekday::parse) {
                Some(d) if days.contains(&d) => {
                    self.blocker("schema.days", &index(path, i), format!("weekday `{}` is listed twice", Weekday::NAMES[d as usize]));
                    ok = false;
                }
                Some(d) => days.push(d),
                None => ok = false,
            }
        }
        days.sort();
        ok.then_some(days)
    }

    fn since_event(&mut self, v: &Value, path: &str) -> Option<EventPattern> {
        let map = self.object(v, path, SINCE_EVENT_FIELDS)?;
        let kind = self
            .required(map, "type", path)
            .and_then(|t| self.one_of(t, &child(path, "type"), &["ups.state", "webhook.custom"], "since_event type"))?;
        if kind == "ups.state" {
            if map.contains_key("name") {
                self.unknown_field(path, "name", &["type", "equals", "ups"]);
            }
            let equals = self.required(map, "equals", path).and_then(|v| self.ups_state(v, &child(path, "equals")));
            let ups = self.ups_name(map, path);
            Some(EventPattern::UpsState { equals: equals?, ups })
        } else {
            for key in ["equals", "ups"] {
                if map.contains_key(key) {
                    self.unknown_field(path, key, &["type", "name"]);
                }
            }
            let name = self.required(map, "name", path).and_then(|v| self.literal(v, &child(path, "name")))?;
            Some(EventPattern::WebhookCustom { name })
        }
    }

    fn conditions(&mut self, v: &Value) -> Option<Vec<Condition>> {
        let path = "/conditions";
        let map = self.object(v, path, CONDITIONS_FIELDS)?;
        let apath = child(path, "all");
        let items = match map.get("all") {
            None | Some(Value::Null) => return Some(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.wrong_type(&apath, "a list of conditions", other);
                return None;
            }
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.condition(item, &index(&apath, i)) {
                Some(c) => out.push(c),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn condition(&mut self, v: &Value, path: &str) -> Option<Condition> {
        let map = self.object(v, path, CONDITION_FIELDS)?;
        let scope = self.required(map, "scope", path).and_then(|s| {
            let spath = child(path, "scope");
            let text = self.string(s, &spath)?;
            Scope::parse(text).or_else(|| {
                let hint = match did_you_mean(text, Scope::NAMES) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!("one of: {}", Scope::NAMES.join(", ")),
                };
                self.blocker("schema.unknown_scope", &spath, format!("unknown condition scope `{text}`")).hint = Some(hint);
                None
            })
        });
        let field = self.required(map, "field", path).and_then(|f| self.string(f, &child(path, "field")));
        let op = self.required(map, "op", path).and_then(|o| self.op(o, &child(path, "op")));
        let value = self.required(map, "value", path).and_then(|v| match v {
            Value::Number(_) | Value::String(_) | Value::Bool(_) => Some(v.clone()),
            other => {
                self.wrong_type(&child(path, "value"), "a number, string or boolean", other);
                None
            }
        });
        let ups = self.ups_name(map, path);
        let (scope, field, op, value) = (scope?, field?, op?, value?);
        let fpath = child(path, "field");
        if let Some(known) = scope.fields() {
            if !known.contains(&field) {
                let hint = match did_you_mean(field, known.iter().copied()) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!("fields of scope {}: {}", Scope::NAMES[scope as usize], known.join(", ")),
                };
                self.blocker(
                    "schema.unknown_condition_field",
                    &fpath,
                    format!("scope `{}` has no field `{field}`", Scope::NAMES[scope as usize]),
                )
                .hint = Some(hint);
                return None;
            }
        }
        if ups.is_some() && !matches!(scope, Scope::Ups | Scope::Metric) {
            self.blocker("schema.ups_not_allowed", &child(path, "ups"), "`ups` applies to the ups and metric scopes only".into());
        }
        let vpath = child(path, "value");
        if op.is_ordering() && !value.is_number() {
            self.blocker("schema.op_needs_number", &vpath, format!("`{}` compares order and needs a number", op.as_str()));
            return None;
        }
        match (scope, field) {
            (Scope::Ups, "state") => {
                if op.is_ordering() {
                    self.blocker("schema.op_needs_number", &child(path, "op"), "a UPS state compares with = or != only".into());
                }
                self.ups_state(&value, &vpath)?;
            }
            (Scope::Host, "reachable") => {
                if op.is_ordering() || !value.is_boolean() {
                    self.blocker("schema.type", &vpath, "host reachability compares with = or != against true or false".into());
                    return None;
                }
            }
            (Scope::Ups | Scope::Vm, _) | (Scope::Metric, _) if !value.is_number() => {
                self.wrong_type(&vpath, "a number", &value);
                return None;
            }
            _ => {}
        }
        Some(Condition {
            scope,
            field: field.to_string(),
            op,
            value,
            ups,
        })
    }

    fn targets(&mut self, v: &Value) -> Option<TargetsSpec> {
        let path = "/targets";
        let map = self.object(v, path, TARGETS_FIELDS)?;
        let host_id = self.required(map, "host_id", path).and_then(|v| self.literal(v, &child(path, "host_id")));
        let target_type = self
            .required(map, "target_type", path)
            .and_then(|v| self.string(v, &child(path, "target_type")))
            .map(str::to_string);
        let selector = self.required(map, "selector", path).and_then(|v| self.selector(v, &child(path, "selector")));
        Some(TargetsSpec {
            host_id: host_id?,
            target_type: target_type?,
            selector: selector?,
        })
    }

    fn selector(&mut self, v: &Value, path: &str) -> Option<SelectorSpec> {
        let map = self.object(v, path, SELECTOR_FIELDS)?;
        let mode = self.required(map, "mode", path).and_then(|m| {
            self.one_of(m, &child(path, "mode"), &["list", "range", "query", "ledger"], "selector mode")
                .and_then(|m| m.parse::<SelectorMode>().ok())
        });
        let vpath = child(path, "value");
        let value = self.required(map, "value", path).and_then(|v| match v {
            // YAML users write `value: 104`; a number is the same selector as "104".
            Value::Number(n) if n.is_u64() => Some(n.to_string()),
            other => self.string(other, &vpath).map(str::to_string),
        });
        Some(SelectorSpec { mode: mode?, value: value? })
    }

    fn actions(&mut self, v: &Value) -> Option<Vec<ActionSpec>> {
        let path = "/actions";
        let items = self.list(v, path, "action")?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.action(item, &index(path, i)) {
                Some(a) => out.push(a),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn action(&mut self, v: &Value, path: &str) -> Option<ActionSpec> {
        let map = self.object(v, path, ACTION_FIELDS)?;
        let capability_id = self
            .required(map, "capability_id", path)
            .and_then(|v| self.string(v, &child(path, "capability_id")))
            .map(str::to_string);
        let verb = self
            .required(map, "verb", path)
            .and_then(|v| self.string(v, &child(path, "verb")))
            .map(str::to_string);
        let params = match map.get("params") {
            None | Some(Value::Null) => Some(Map::new()),
            Some(Value::Object(p)) => Some(p.clone()),
            Some(other) => {
                self.wrong_type(&child(path, "params"), "an object", other);
                None
            }
        };
        let key_hint = match map.get("idempotency") {
            None | Some(Value::Null) => Some(None),
            Some(v) => {
                let ipath = child(path, "idempotency");
                self.object(v, &ipath, IDEMPOTENCY_FIELDS).and_then(|m| match m.get("key_hint") {
                    None | Some(Value::Null) => Some(None),
                    Some(h) => self.string(h, &child(&ipath, "key_hint")).map(|s| Some(s.to_string())),
                })
            }
        };
        Some(ActionSpec {
            capability_id: capability_id?,
            verb: verb?,
            params: params?,
            key_hint: key_hint?,
        })
    }
}

