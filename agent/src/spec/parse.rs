//! From text to [`PolicySpec`]: read JSON or YAML into a value tree, then walk
//! it, collecting every schema finding at once with a JSON-pointer path and,
//! where a known word is close, a "did you mean" hint.

use inventory::finding::{did_you_mean, pointer_token};
use inventory::selector::SelectorMode;
use inventory::{Finding, Severity};
use serde_json::{Map, Value};

use super::duration::parse_duration;
use super::node::{same_word, Entries, EntriesExt, Node, NodeSeed};
use super::schedule::{normalize_cron, parse_time_of_day};
use super::*;

/// A document that is not well-formed JSON or YAML, or passes a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    /// `JSON` or `YAML`.
    pub format: &'static str,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// `schema.parse`, or the limit the document exceeds
    /// (`schema.too_deep`, `schema.too_large`).
    pub code: &'static str,
}

impl std::fmt::Display for DocumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.code {
            "schema.parse" => "syntax error",
            _ => "document refused",
        };
        write!(f, "{} {what}", self.format)?;
        if self.line > 0 {
            write!(f, " at line {}, column {}", self.line, self.column)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for DocumentError {}

/// The most values a YAML document may expand to, aliases counted each time
/// they are used (SPEC §12): a policy has a few hundred; an alias bomb is
/// stopped here, after a bounded amount of work, whatever the document's size.
pub const MAX_DOCUMENT_VALUES: usize = 100_000;

impl DocumentError {
    /// The blocker for this error.
    pub fn to_finding(&self) -> Finding {
        let hint = match self.code {
            "schema.too_deep" => {
                "flatten the document; a policy needs a handful of levels (limits: docs/limits.md)"
            }
            "schema.too_large" => {
                "a YAML alias that repeats a large part many times multiplies the document; write the values out or remove the aliases (limits: docs/limits.md)"
            }
            _ => "fix the syntax at that position; JSON and YAML are both accepted",
        };
        Finding::new(Severity::Blocker, self.code, "", self.to_string()).with_hint(hint)
    }
}

/// The deepest nesting of YAML flow collections (`[`, `{`) in `text`, by a
/// linear scan that skips quoted scalars and comments, stopping once it
/// passes `limit`. The YAML parser's cost grows with the square of that
/// depth, so it is checked before parsing.
fn flow_depth_exceeds(text: &str, limit: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let (mut depth, mut line, mut line_start) = (0usize, 1usize, 0usize);
    let mut i = 0;
    let mut prev = b'\n';
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' => {
                line += 1;
                line_start = i + 1;
            }
            b'#' if prev == b' ' || prev == b'\t' || prev == b'\n' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    } else if bytes[i] == b'\n' {
                        line += 1;
                        line_start = i + 1;
                    }
                    i += 1;
                }
            }
            b'\'' if matches!(prev, b' ' | b'\t' | b'\n' | b'[' | b'{' | b',' | b':') => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'\'' {
                    if bytes[i] == b'\n' {
                        line += 1;
                        line_start = i + 1;
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Some((line, i - line_start + 1));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = b;
        i += 1;
    }
    None
}

/// Reads JSON (text starting with `{` or `[`) or YAML into a document tree
/// that borrows from `text`, with its children in `arena`.
pub fn parse_document<'a>(
    text: &'a str,
    arena: &'a bumpalo::Bump,
) -> Result<Node<'a>, DocumentError> {
    let trimmed = text.trim_start_matches('\u{feff}');
    if matches!(trimmed.trim_start().as_bytes().first(), Some(b'{' | b'[')) {
        super::json::parse(trimmed, arena).map_err(|e| DocumentError {
            format: "JSON",
            line: e.line,
            column: e.column,
            message: e.message.to_string(),
            code: if e.message == super::json::TOO_DEEP {
                "schema.too_deep"
            } else {
                "schema.parse"
            },
        })
    } else {
        use serde::de::DeserializeSeed;
        if let Some((line, column)) = flow_depth_exceeds(trimmed, super::json::MAX_DEPTH) {
            return Err(DocumentError {
                format: "YAML",
                line,
                column,
                message: super::json::TOO_DEEP.to_string(),
                code: "schema.too_deep",
            });
        }
        // In the arena: the budget lives as long as the tree it bounds.
        let budget: &std::cell::Cell<usize> =
            arena.alloc(std::cell::Cell::new(MAX_DOCUMENT_VALUES));
        let yaml = serde_norway::Deserializer::from_str(trimmed);
        NodeSeed { arena, budget }.deserialize(yaml).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            let mut message = strip_position(&e.to_string());
            // The YAML library's own alias limit (relative to the
            // document's size) and ours (absolute) say the same thing.
            let code = if budget.get() == 0 || message.contains("repetition limit exceeded") {
                message = format!(
                    "the document expands to more than {MAX_DOCUMENT_VALUES} values (YAML aliases counted each time they are used)"
                );
                "schema.too_large"
            } else if message.contains("recursion limit exceeded") {
                "schema.too_deep"
            } else {
                "schema.parse"
            };
            DocumentError {
                format: "YAML",
                line,
                column,
                message,
                code,
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
const ACTION_FIELDS: &[&str] = &["capability_id", "verb", "params", "idempotency", "retry"];
const RETRY_FIELDS: &[&str] = &["attempts", "backoff"];
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

/// Whether `text` is empty or only whitespace (`text.trim().is_empty()`).
/// Text that starts with printable ASCII, nearly every value of a policy,
/// is answered from its first byte instead of a Unicode trim.
pub(crate) fn is_blank(text: &str) -> bool {
    match text.as_bytes().first() {
        // `char::is_whitespace` in ASCII: tab, line feed, vertical tab, form
        // feed, carriage return, space; all of them are at most 0x20.
        Some(&b) if b > b' ' && b.is_ascii() => false,
        _ => text.trim().is_empty(),
    }
}

/// Walks a `serde_json::Value` into a [`PolicySpec`]; see [`parse_spec_node`].
pub fn parse_spec(doc: &Value) -> (Option<PolicySpec>, Vec<Finding>) {
    let arena = bumpalo::Bump::new();
    parse_spec_node(&Node::from_value(doc, &arena))
}

/// Walks a document into a [`PolicySpec`]. Returns the spec only when no
/// blocker was found; the findings are every schema problem at once.
pub fn parse_spec_node(doc: &Node<'_>) -> (Option<PolicySpec>, Vec<Finding>) {
    let (parsed, findings) = parse_spec_lenient(doc);
    match parsed {
        Parsed::Spec(spec) => (Some(spec), findings),
        Parsed::Parts(_) => (None, findings),
    }
}

/// What the schema walk produced: the whole spec, or, when a blocker kept it
/// from being built, the parts compile can still check on their own.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// No schema blocker: the whole spec.
    Spec(PolicySpec),
    /// At least one schema blocker: the parts that parsed anyway.
    Parts(SpecParts),
}

/// The parts of a spec that compile checks against manifests and the
/// inventory, each kept when it parsed by itself although another part of the
/// document did not (SPEC §4: a schema blocker never hides the compile
/// findings of the parts that did parse).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecParts {
    /// `targets`, when it parsed.
    pub targets: Option<TargetsSpec>,
    /// The actions that parsed, with their index in `actions`.
    pub actions: Vec<(usize, ActionSpec)>,
}

/// Walks a document like [`parse_spec_node`], but when a schema blocker
/// keeps the spec from being built, still returns the parts that parsed, so
/// validation can compile them in the same round.
pub fn parse_spec_lenient(doc: &Node<'_>) -> (Parsed, Vec<Finding>) {
    let mut w = Walker {
        findings: Vec::new(),
    };
    let parsed = w.policy(doc);
    let blocked = w.findings.iter().any(|f| f.severity == Severity::Blocker);
    let parsed = match parsed {
        Parsed::Spec(spec) if blocked => Parsed::Parts(SpecParts {
            targets: Some(spec.targets),
            actions: spec.actions.into_iter().enumerate().collect(),
        }),
        other => other,
    };
    (parsed, w.findings)
}

struct Walker {
    findings: Vec<Finding>,
}

/// A JSON pointer built as a chain of borrowed segments and rendered only
/// when a finding needs it, so walking a valid document allocates no paths.
#[derive(Clone, Copy)]
enum P<'a> {
    Root,
    Key(&'a P<'a>, &'a str),
    Idx(&'a P<'a>, usize),
}

impl<'a> P<'a> {
    fn key(&'a self, key: &'a str) -> P<'a> {
        P::Key(self, key)
    }

    fn idx(&'a self, i: usize) -> P<'a> {
        P::Idx(self, i)
    }

    fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) {
        match self {
            P::Root => {}
            P::Key(parent, key) => {
                parent.render_into(out);
                out.push('/');
                out.push_str(&pointer_token(key));
            }
            P::Idx(parent, i) => {
                parent.render_into(out);
                out.push('/');
                out.push_str(&i.to_string());
            }
        }
    }
}

fn type_name(v: &Node<'_>) -> &'static str {
    match v {
        Node::Null => "null",
        Node::Bool(_) => "a boolean",
        Node::Int(_) | Node::UInt(_) | Node::Float(_) => "a number",
        Node::Str(_) => "a string",
        Node::Seq(_) => "a list",
        Node::Map(_) => "an object",
    }
}

impl Walker {
    fn blocker(&mut self, code: &str, path: &P<'_>, message: String) -> &mut Finding {
        self.findings.push(Finding::new(
            Severity::Blocker,
            code,
            path.render(),
            message,
        ));
        self.findings.last_mut().expect("just pushed")
    }

    fn wrong_type(&mut self, path: &P<'_>, expected: &str, v: &Node<'_>) {
        self.blocker(
            "schema.type",
            path,
            format!("expected {expected}, found {}", type_name(v)),
        );
    }

    /// An object whose keys are all in `fields`; unknown keys are reported.
    fn object<'v, 'a: 'v>(
        &mut self,
        v: &'v Node<'a>,
        path: &P<'_>,
        fields: &[&str],
    ) -> Option<&'v Entries<'a>> {
        let Node::Map(map) = v else {
            self.wrong_type(path, "an object", v);
            return None;
        };
        // Known fields seen so far, by their index in `fields`: a key is
        // written twice exactly when its field was already seen, which saves
        // comparing every key with every earlier one.
        debug_assert!(fields.len() <= 64, "a field set fits the bit mask");
        let mut seen = 0u64;
        for (key, _) in map.iter() {
            match fields.iter().position(|f| same_word(f, key)) {
                None => self.unknown_field(path, key, fields),
                Some(i) if seen & (1 << i) != 0 => {
                    // JSON parsers keep one of the two silently; say which one counts.
                    self.blocker(
                        "schema.duplicate_field",
                        &path.key(key),
                        format!("field `{key}` is written twice"),
                    )
                    .hint = Some("remove one of them; only the first would be read".into());
                }
                Some(i) => seen |= 1 << i,
            }
        }
        Some(map)
    }

    fn unknown_field(&mut self, path: &P<'_>, key: &str, fields: &[&str]) {
        let hint = did_you_mean(key, fields.iter().copied())
            .map(|s| format!("did you mean `{s}`?"))
            .unwrap_or_else(|| format!("known fields here: {}", fields.join(", ")));
        self.blocker(
            "schema.unknown_field",
            &path.key(key),
            format!("unknown field `{key}`"),
        )
        .hint = Some(hint);
    }

    fn required<'v, 'a: 'v>(
        &mut self,
        map: &'v Entries<'a>,
        key: &str,
        path: &P<'_>,
    ) -> Option<&'v Node<'a>> {
        let v = map.field(key);
        if v.is_none() {
            self.blocker(
                "schema.missing_field",
                &path.key(key),
                format!("missing required field `{key}`"),
            );
        }
        v
    }

    fn string<'v, 'a: 'v>(&mut self, v: &'v Node<'a>, path: &P<'_>) -> Option<&'v str> {
        match v {
            Node::Str(s) if !is_blank(s) => Some(s),
            Node::Str(_) => {
                self.blocker("schema.empty", path, "must not be empty".into());
                None
            }
            other => {
                self.wrong_type(path, "a string", other);
                None
            }
        }
    }

    fn boolean(&mut self, map: &Entries<'_>, key: &str, path: &P<'_>, default: bool) -> bool {
        match map.field(key) {
            None => default,
            Some(Node::Bool(b)) => *b,
            Some(other) => {
                self.wrong_type(&path.key(key), "true or false", other);
                default
            }
        }
    }

    fn duration(&mut self, v: &Node<'_>, path: &P<'_>) -> Option<u64> {
        let Node::Str(s) = v else {
            self.wrong_type(
                path,
                "a duration string such as `90s`, `10m`, `1h30m` or `2d`",
                v,
            );
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

    fn optional_duration(
        &mut self,
        map: &Entries<'_>,
        key: &str,
        path: &P<'_>,
        default: u64,
    ) -> u64 {
        match map.field(key) {
            None => default,
            Some(v) => self.duration(v, &path.key(key)).unwrap_or(default),
        }
    }

    /// A value from a closed set, with a did-you-mean hint when it is close.
    fn one_of<'a>(
        &mut self,
        v: &Node<'_>,
        path: &P<'_>,
        allowed: &[&'a str],
        what: &str,
    ) -> Option<&'a str> {
        let s = self.string(v, path)?;
        if let Some(found) = allowed.iter().find(|a| same_word(a, s)) {
            return Some(found);
        }
        let hint = match did_you_mean(s, allowed.iter().copied()) {
            Some(close) => format!("did you mean `{close}`?"),
            None => format!("one of: {}", allowed.join(", ")),
        };
        self.blocker("schema.enum", path, format!("`{s}` is not a {what}"))
            .hint = Some(hint);
        None
    }

    fn ups_name(&mut self, map: &Entries<'_>, path: &P<'_>) -> Option<String> {
        let v = map.field("ups")?;
        self.string(v, &path.key("ups")).map(str::to_string)
    }

    fn policy(&mut self, doc: &Node<'_>) -> Parsed {
        let top = P::Root;
        let r = &top;
        let Some(root) = self.object(doc, r, ROOT_FIELDS) else {
            return Parsed::Parts(SpecParts::default());
        };
        let version = match self.required(root, "version", r) {
            Some(n) if n.as_u64() == Some(SPEC_VERSION) => Some(SPEC_VERSION),
            Some(other) => {
                self.blocker(
                    "schema.version",
                    &r.key("version"),
                    format!("version must be the integer 1, found {other}"),
                )
                .hint = Some("write `version: 1`".into());
                None
            }
            None => None,
        };
        let name = self
            .required(root, "name", r)
            .and_then(|v| self.string(v, &r.key("name")))
            .and_then(|n| {
                // Fewer than 3 characters: no third one (without counting all).
                if n.trim().chars().nth(2).is_none() {
                    self.blocker(
                        "schema.name_too_short",
                        &r.key("name"),
                        format!("name `{n}` is shorter than 3 characters"),
                    );
                    None
                } else {
                    Some(n.to_string())
                }
            });
        let enabled = self.boolean(root, "enabled", r, true);
        let priority = match root.field("priority") {
            None => 0,
            Some(n @ (Node::Int(_) | Node::UInt(_))) if n.as_i64().is_some() => {
                n.as_i64().unwrap_or(0)
            }
            Some(other) => {
                self.wrong_type(&r.key("priority"), "an integer", other);
                0
            }
        };
        let stop_on_match = self.boolean(root, "stop_on_match", r, false);
        let dynamic_resolution = self.boolean(root, "dynamic_resolution", r, true);
        let trigger_group = self
            .required(root, "trigger_group", r)
            .and_then(|v| self.trigger_group(v));
        let conditions = match root.field("conditions") {
            None | Some(Node::Null) => Some(Vec::new()),
            Some(v) => self.conditions(v),
        };
        let targets = self
            .required(root, "targets", r)
            .and_then(|v| self.targets(v));
        let actions = self
            .required(root, "actions", r)
            .and_then(|v| self.actions(v));
        let suppression_s =
            self.optional_duration(root, "suppression_window", r, DEFAULT_SUPPRESSION_S);
        let idempotency_s =
            self.optional_duration(root, "idempotency_window", r, DEFAULT_IDEMPOTENCY_S);
        let notes = match root.field("notes") {
            None | Some(Node::Null) => None,
            Some(Node::Str(s)) => Some((*s).to_string()),
            Some(other) => {
                self.wrong_type(&r.key("notes"), "a string", other);
                None
            }
        };
        let all_actions = actions
            .as_ref()
            .is_some_and(|a| a.iter().all(Option::is_some));
        match (
            version,
            name,
            trigger_group,
            conditions,
            targets,
            all_actions,
        ) {
            (
                Some(version),
                Some(name),
                Some(trigger_group),
                Some(conditions),
                Some(targets),
                true,
            ) => Parsed::Spec(PolicySpec {
                version,
                name,
                enabled,
                priority,
                stop_on_match,
                dynamic_resolution,
                trigger_group,
                conditions,
                targets,
                actions: actions.into_iter().flatten().flatten().collect(),
                suppression_s,
                idempotency_s,
                notes,
            }),
            (_, _, _, _, targets, _) => Parsed::Parts(SpecParts {
                targets,
                actions: actions
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .filter_map(|(i, a)| Some((i, a?)))
                    .collect(),
            }),
        }
    }

    fn list<'v, 'a: 'v>(
        &mut self,
        v: &'v Node<'a>,
        path: &P<'_>,
        what: &str,
    ) -> Option<&'v [Node<'a>]> {
        match v {
            Node::Seq([]) => {
                self.blocker(
                    "schema.empty",
                    path,
                    format!("at least one {what} is required"),
                );
                None
            }
            Node::Seq(items) => Some(items),
            other => {
                self.wrong_type(path, "a list", other);
                None
            }
        }
    }

    fn trigger_group(&mut self, v: &Node<'_>) -> Option<TriggerGroup> {
        let top = P::Root;
        let path = &top.key("trigger_group");
        let map = self.object(v, path, TRIGGER_GROUP_FIELDS)?;
        let logic = match map.field("logic") {
            None => Some(Logic::Any),
            Some(v) => self
                .one_of(v, &path.key("logic"), &["ALL", "ANY"], "trigger logic")
                .map(|l| if l == "ALL" { Logic::All } else { Logic::Any }),
        };
        let tpath = path.key("triggers");
        let items = self
            .required(map, "triggers", path)
            .and_then(|v| self.list(v, &tpath, "trigger"))?;
        let mut triggers = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.trigger(item, &tpath.idx(i)) {
                Some(t) => triggers.push(t),
                None => ok = false,
            }
        }
        let logic = logic?;
        if logic == Logic::All {
            let mut instantaneous = triggers
                .iter()
                .enumerate()
                .filter(|(_, t)| t.is_instantaneous());
            if let Some((first, _)) = instantaneous.next() {
                for (i, t) in instantaneous {
                    self.blocker(
                        "schema.instantaneous_under_all",
                        &tpath.idx(i),
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

    fn trigger(&mut self, v: &Node<'_>, path: &P<'_>) -> Option<Trigger> {
        let Node::Map(map) = v else {
            self.wrong_type(path, "an object", v);
            return None;
        };
        let kind = self.required(map, "type", path).and_then(|t| {
            let s = self.string(t, &path.key("type"))?;
            if TRIGGER_TYPES.contains(&s) {
                return Some(s);
            }
            let hint = match did_you_mean(s, TRIGGER_TYPES) {
                Some(close) => format!("did you mean `{close}`?"),
                None => format!("one of: {}", TRIGGER_TYPES.join(", ")),
            };
            self.blocker(
                "schema.unknown_trigger_type",
                &path.key("type"),
                format!("unknown trigger type `{s}`"),
            )
            .hint = Some(hint);
            None
        });
        let Some(kind) = kind else {
            // Still report fields no trigger type knows.
            for (key, _) in map.iter().filter(|(k, _)| !ANY_TRIGGER_FIELDS.contains(k)) {
                self.unknown_field(path, key, ANY_TRIGGER_FIELDS);
            }
            return None;
        };
        let fields = trigger_fields(kind);
        for (key, _) in map.iter() {
            if fields.iter().any(|f| same_word(f, key)) {
                continue;
            }
            match *key {
                "for" => {
                    self.blocker(
                        "schema.for_not_allowed",
                        &path.key(key),
                        format!("`for` is not allowed on `{kind}`"),
                    )
                    .hint = Some(
                        "`for` applies to ups.state and metric.threshold triggers only".into(),
                    );
                }
                "ups" => {
                    self.blocker(
                        "schema.ups_not_allowed",
                        &path.key(key),
                        format!("`ups` is not allowed on `{kind}`"),
                    )
                    .hint = Some("`ups` applies to ups.state and metric.threshold triggers".into());
                }
                _ => self.unknown_field(path, key, fields),
            }
        }
        let (for_s, for_ok) = match map.field("for") {
            Some(v) if fields.contains(&"for") => match self.duration(v, &path.key("for")) {
                Some(s) => (Some(s), true),
                None => (None, false),
            },
            _ => (None, true),
        };
        let trigger = self.trigger_body(kind, map, path, for_s);
        trigger.filter(|_| for_ok)
    }

    fn trigger_body(
        &mut self,
        kind: &str,
        map: &Entries<'_>,
        path: &P<'_>,
        for_s: Option<u64>,
    ) -> Option<Trigger> {
        match kind {
            "ups.state" => {
                let equals = self
                    .required(map, "equals", path)
                    .and_then(|v| self.ups_state(v, &path.key("equals")));
                let ups = self.ups_name(map, path);
                Some(Trigger::UpsState {
                    equals: equals?,
                    for_s,
                    ups,
                })
            }
            "metric.threshold" => {
                let metric = self
                    .required(map, "metric", path)
                    .and_then(|v| self.string(v, &path.key("metric")))
                    .map(str::to_string);
                let op = self
                    .required(map, "op", path)
                    .and_then(|v| self.op(v, &path.key("op")));
                let value = self
                    .required(map, "value", path)
                    .and_then(|v| match v.as_f64() {
                        Some(n) if n.is_finite() => Some(n),
                        Some(n) => {
                            self.blocker(
                                "schema.type",
                                &path.key("value"),
                                format!(
                                    "expected a finite number, found {n}: a threshold of \
                                     YAML's .inf or .nan compares with nothing"
                                ),
                            );
                            None
                        }
                        None => {
                            self.wrong_type(&path.key("value"), "a number", v);
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
                    .and_then(|v| self.schedule(v, &path.key("schedule")))?;
                Some(Trigger::TimerAt { schedule })
            }
            "timer.after" => {
                let after = self
                    .required(map, "after", path)
                    .and_then(|v| self.duration(v, &path.key("after")));
                let since = self
                    .required(map, "since_event", path)
                    .and_then(|v| self.since_event(v, &path.key("since_event")));
                Some(Trigger::TimerAfter {
                    after_s: after?,
                    since_event: since?,
                })
            }
            _ => {
                let name = self
                    .required(map, "name", path)
                    .and_then(|v| self.literal(v, &path.key("name")))?;
                Some(Trigger::WebhookCustom { name })
            }
        }
    }

    fn literal(&mut self, v: &Node<'_>, path: &P<'_>) -> Option<String> {
        let s = self.string(v, path)?;
        if is_literal_id(s) {
            Some(s.to_string())
        } else {
            self.blocker(
                "schema.invalid_id",
                path,
                format!("`{s}` is not a valid id"),
            )
            .hint = Some("ids use letters, digits and `_ . @ : -` only".into());
            None
        }
    }

    fn ups_state(&mut self, v: &Node<'_>, path: &P<'_>) -> Option<UpsState> {
        self.one_of(v, path, &UpsState::NAMES, "UPS state")
            .and_then(UpsState::parse)
    }

    fn op(&mut self, v: &Node<'_>, path: &P<'_>) -> Option<Op> {
        self.one_of(v, path, &Op::NAMES, "comparison operator")
            .and_then(Op::parse)
    }

    fn schedule(&mut self, v: &Node<'_>, path: &P<'_>) -> Option<Schedule> {
        let map = self.object(v, path, SCHEDULE_FIELDS)?;
        if let Some(cron) = map.field("cron") {
            if map.iter().any(|(k, _)| *k != "cron") {
                self.blocker(
                    "schema.schedule",
                    path,
                    "a schedule is either `cron` or `repeat`/`at`/`days`, not both".into(),
                );
                return None;
            }
            let cpath = path.key("cron");
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
            self.one_of(v, &path.key("repeat"), &["daily", "weekly"], "repeat")
                .map(|r| {
                    if r == "daily" {
                        Repeat::Daily
                    } else {
                        Repeat::Weekly
                    }
                })
        });
        let at = self.required(map, "at", path).and_then(|v| {
            let apath = path.key("at");
            let s = self.string(v, &apath)?;
            if parse_time_of_day(s).is_some() {
                Some(s.to_string())
            } else {
                self.blocker(
                    "schema.time_of_day",
                    &apath,
                    format!("`{s}` is not a time of day"),
                )
                .hint = Some("write 24-hour HH:MM, e.g. \"01:00\"".into());
                None
            }
        });
        let days = match map.field("days") {
            None => Some(Vec::new()),
            Some(v) => self.days(v, &path.key("days")),
        };
        let (repeat, days) = (repeat?, days?);
        match (repeat, days.is_empty()) {
            (Repeat::Weekly, true) => {
                self.blocker(
                    "schema.days",
                    &path.key("days"),
                    "a weekly schedule needs `days`".into(),
                )
                .hint = Some("e.g. days: [sun]".into());
                None
            }
            (Repeat::Daily, false) => {
                self.blocker(
                    "schema.days",
                    &path.key("days"),
                    "a daily schedule runs every day and takes no `days`".into(),
                )
                .hint = Some("use repeat: weekly to pick days".into());
                None
            }
            _ => Some(Schedule::Repeat {
                repeat,
                at: at?,
                days,
            }),
        }
    }

    fn days(&mut self, v: &Node<'_>, path: &P<'_>) -> Option<Vec<Weekday>> {
        let Node::Seq(items) = v else {
            self.wrong_type(path, "a list of weekdays", v);
            return None;
        };
        let mut days = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self
                .one_of(item, &path.idx(i), &Weekday::NAMES, "weekday")
                .and_then(Weekday::parse)
            {
                Some(d) if days.contains(&d) => {
                    self.blocker(
                        "schema.days",
                        &path.idx(i),
                        format!("weekday `{}` is listed twice", Weekday::NAMES[d as usize]),
                    );
                    ok = false;
                }
                Some(d) => days.push(d),
                None => ok = false,
            }
        }
        days.sort();
        ok.then_some(days)
    }

    fn since_event(&mut self, v: &Node<'_>, path: &P<'_>) -> Option<EventPattern> {
        let map = self.object(v, path, SINCE_EVENT_FIELDS)?;
        let kind = self.required(map, "type", path).and_then(|t| {
            self.one_of(
                t,
                &path.key("type"),
                &["ups.state", "webhook.custom"],
                "since_event type",
            )
        })?;
        if kind == "ups.state" {
            if map.contains_key("name") {
                self.unknown_field(path, "name", &["type", "equals", "ups"]);
            }
            let equals = self
                .required(map, "equals", path)
                .and_then(|v| self.ups_state(v, &path.key("equals")));
            let ups = self.ups_name(map, path);
            Some(EventPattern::UpsState {
                equals: equals?,
                ups,
            })
        } else {
            for key in ["equals", "ups"] {
                if map.contains_key(key) {
                    self.unknown_field(path, key, &["type", "name"]);
                }
            }
            let name = self
                .required(map, "name", path)
                .and_then(|v| self.literal(v, &path.key("name")))?;
            Some(EventPattern::WebhookCustom { name })
        }
    }

    fn conditions(&mut self, v: &Node<'_>) -> Option<Vec<Condition>> {
        let top = P::Root;
        let path = &top.key("conditions");
        let map = self.object(v, path, CONDITIONS_FIELDS)?;
        let apath = path.key("all");
        let items = match map.field("all") {
            None | Some(Node::Null) => return Some(Vec::new()),
            Some(Node::Seq(items)) => items,
            Some(other) => {
                self.wrong_type(&apath, "a list of conditions", other);
                return None;
            }
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.condition(item, &apath.idx(i)) {
                Some(c) => out.push(c),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn condition(&mut self, v: &Node<'_>, path: &P<'_>) -> Option<Condition> {
        let map = self.object(v, path, CONDITION_FIELDS)?;
        let scope = self.required(map, "scope", path).and_then(|s| {
            let spath = path.key("scope");
            let text = self.string(s, &spath)?;
            Scope::parse(text).or_else(|| {
                let hint = match did_you_mean(text, Scope::NAMES) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!("one of: {}", Scope::NAMES.join(", ")),
                };
                self.blocker(
                    "schema.unknown_scope",
                    &spath,
                    format!("unknown condition scope `{text}`"),
                )
                .hint = Some(hint);
                None
            })
        });
        let field = self
            .required(map, "field", path)
            .and_then(|f| self.string(f, &path.key("field")));
        let op = self
            .required(map, "op", path)
            .and_then(|o| self.op(o, &path.key("op")));
        let value = self.required(map, "value", path).and_then(|v| match v {
            Node::Int(_) | Node::UInt(_) | Node::Float(_) | Node::Str(_) | Node::Bool(_) => Some(v),
            other => {
                self.wrong_type(&path.key("value"), "a number, string or boolean", other);
                None
            }
        });
        let ups = self.ups_name(map, path);
        let (scope, field, op, value) = (scope?, field?, op?, value?);
        let fpath = path.key("field");
        if let Some(known) = scope.fields() {
            if !known.contains(&field) {
                let hint = match did_you_mean(field, known.iter().copied()) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!(
                        "fields of scope {}: {}",
                        Scope::NAMES[scope as usize],
                        known.join(", ")
                    ),
                };
                self.blocker(
                    "schema.unknown_condition_field",
                    &fpath,
                    format!(
                        "scope `{}` has no field `{field}`",
                        Scope::NAMES[scope as usize]
                    ),
                )
                .hint = Some(hint);
                return None;
            }
        }
        if ups.is_some() && !matches!(scope, Scope::Ups | Scope::Metric) {
            self.blocker(
                "schema.ups_not_allowed",
                &path.key("ups"),
                "`ups` applies to the ups and metric scopes only".into(),
            );
        }
        let vpath = path.key("value");
        if op.is_ordering() && !value.is_number() {
            self.blocker(
                "schema.op_needs_number",
                &vpath,
                format!("`{}` compares order and needs a number", op.as_str()),
            );
            return None;
        }
        match (scope, field) {
            (Scope::Ups, "state") => {
                if op.is_ordering() {
                    self.blocker(
                        "schema.op_needs_number",
                        &path.key("op"),
                        "a UPS state compares with = or != only".into(),
                    );
                }
                self.ups_state(value, &vpath)?;
            }
            (Scope::Host, "reachable") if op.is_ordering() || !value.is_boolean() => {
                self.blocker(
                    "schema.type",
                    &vpath,
                    "host reachability compares with = or != against true or false".into(),
                );
                return None;
            }
            (Scope::Ups | Scope::Vm, _) | (Scope::Metric, _) if !value.is_number() => {
                self.wrong_type(&vpath, "a number", value);
                return None;
            }
            _ => {}
        }
        Some(Condition {
            scope,
            field: field.to_string(),
            op,
            value: value.to_value(),
            ups,
        })
    }

    fn targets(&mut self, v: &Node<'_>) -> Option<TargetsSpec> {
        let top = P::Root;
        let path = &top.key("targets");
        let map = self.object(v, path, TARGETS_FIELDS)?;
        let host_id = self
            .required(map, "host_id", path)
            .and_then(|v| self.literal(v, &path.key("host_id")));
        let target_type = self
            .required(map, "target_type", path)
            .and_then(|v| self.string(v, &path.key("target_type")))
            .map(str::to_string);
        let selector = self
            .required(map, "selector", path)
            .and_then(|v| self.selector(v, &path.key("selector")));
        Some(TargetsSpec {
            host_id: host_id?,
            target_type: target_type?,
            selector: selector?,
        })
    }

    fn selector(&mut self, v: &Node<'_>, path: &P<'_>) -> Option<SelectorSpec> {
        let map = self.object(v, path, SELECTOR_FIELDS)?;
        let mode = self.required(map, "mode", path).and_then(|m| {
            self.one_of(
                m,
                &path.key("mode"),
                &["list", "range", "query", "ledger"],
                "selector mode",
            )
            .and_then(|m| m.parse::<SelectorMode>().ok())
        });
        let vpath = path.key("value");
        let value = self.required(map, "value", path).and_then(|v| match v {
            // YAML users write `value: 104`; a number is the same selector as "104".
            Node::UInt(n) => Some(n.to_string()),
            other => self.string(other, &vpath).map(str::to_string),
        });
        Some(SelectorSpec {
            mode: mode?,
            value: value?,
        })
    }

    /// Every action in order, `None` for one that did not parse (its
    /// blockers are reported), so the others can still be compiled.
    fn actions(&mut self, v: &Node<'_>) -> Option<Vec<Option<ActionSpec>>> {
        let top = P::Root;
        let path = &top.key("actions");
        let items = self.list(v, path, "action")?;
        Some(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| self.action(item, &path.idx(i)))
                .collect(),
        )
    }

    fn action(&mut self, v: &Node<'_>, path: &P<'_>) -> Option<ActionSpec> {
        let map = self.object(v, path, ACTION_FIELDS)?;
        let capability_id = self
            .required(map, "capability_id", path)
            .and_then(|v| self.string(v, &path.key("capability_id")))
            .map(str::to_string);
        let verb = self
            .required(map, "verb", path)
            .and_then(|v| self.string(v, &path.key("verb")))
            .map(str::to_string);
        let params = match map.field("params") {
            None | Some(Node::Null) => Some(Map::new()),
            Some(p @ Node::Map(_)) => match p.to_value() {
                Value::Object(m) => Some(m),
                _ => None,
            },
            Some(other) => {
                self.wrong_type(&path.key("params"), "an object", other);
                None
            }
        };
        let key_hint = match map.field("idempotency") {
            None | Some(Node::Null) => Some(None),
            Some(v) => {
                let ipath = path.key("idempotency");
                self.object(v, &ipath, IDEMPOTENCY_FIELDS)
                    .and_then(|m| match m.field("key_hint") {
                        None | Some(Node::Null) => Some(None),
                        Some(h) => self
                            .string(h, &ipath.key("key_hint"))
                            .map(|s| Some(s.to_string())),
                    })
            }
        };
        let retry = match map.field("retry") {
            None | Some(Node::Null) => Some(None),
            Some(v) => self.retry(v, &path.key("retry")).map(Some),
        };
        Some(ActionSpec {
            capability_id: capability_id?,
            verb: verb?,
            params: params?,
            key_hint: key_hint?,
            retry: retry?,
        })
    }

    /// `retry: {attempts: <int >= 0>, backoff: <duration>}`, both optional.
    fn retry(&mut self, v: &Node<'_>, path: &P<'_>) -> Option<RetrySpec> {
        let map = self.object(v, path, RETRY_FIELDS)?;
        let mut ok = true;
        let attempts = match map.field("attempts") {
            None | Some(Node::Null) => None,
            Some(n @ Node::UInt(_)) | Some(n @ Node::Int(_)) => {
                match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                    Some(n) => Some(n),
                    None => {
                        self.blocker(
                            "schema.range",
                            &path.key("attempts"),
                            "retry attempts must be a whole number from 0 to 4294967295".into(),
                        )
                        .hint = Some("0 disables retries; leave it out to retry as long as the trigger holds".into());
                        ok = false;
                        None
                    }
                }
            }
            Some(other) => {
                self.wrong_type(&path.key("attempts"), "a whole number", other);
                ok = false;
                None
            }
        };
        let backoff_s = match map.field("backoff") {
            None | Some(Node::Null) => DEFAULT_RETRY_BACKOFF_S,
            Some(b) => match self.duration(b, &path.key("backoff")) {
                Some(0) => {
                    self.blocker(
                        "schema.range",
                        &path.key("backoff"),
                        "the retry backoff must be at least 1s".into(),
                    );
                    ok = false;
                    0
                }
                Some(s) => s,
                None => {
                    ok = false;
                    0
                }
            },
        };
        ok.then_some(RetrySpec {
            attempts,
            backoff_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_blank_agrees_with_trim() {
        for text in [
            "", " ", "\t\n", "\u{b}", "\u{c}x", "x", " x", "\u{a0}", "\u{a0}y", "\u{1}", "é",
            "\u{7f}",
        ] {
            assert_eq!(is_blank(text), text.trim().is_empty(), "{text:?}");
        }
    }
}
