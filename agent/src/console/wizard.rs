//! The policy wizard (SPEC §4, §9, §11 in a browser): five steps — Basics,
//! Trigger, Conditions, Targets & Actions, Review — that build a spec, and
//! a YAML/JSON text view of the same spec.
//!
//! Every form field is named by the JSON pointer it writes
//! (`s:/trigger_group/triggers/0/for`; the prefix says how the text becomes
//! a value), laid over the spec it was opened with (`base`, so parts the
//! fields do not show — a second trigger, say — are kept). On every
//! (debounced) change the draft goes through the validator of
//! `POST /api/policies/validate` ([`Service::validate_draft`]) and each
//! finding is drawn next to the field its pointer names, the rest in a
//! list; Save is enabled exactly when the report is `ok` (no blocker), and
//! the save itself goes through the API's gates (`create_policy`,
//! `update_policy`), which refuse a blocker anyway.
//!
//! The selector preview resolves the draft's selector on the host's
//! current inventory snapshot (the resolve path the validator's
//! `selector.missing` findings come from) and suggests targets from the
//! inventory search index.

use std::collections::HashSet;

use askama::Template;
use axum::extract::{FromRequestParts, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{render, render_status, service_error, Route, SignedIn, Viewer};
use crate::api::extract::{Form, PathId};
use crate::api::{Access, AppState};
use crate::service::{Actor, Role, Service, ServiceError};

/// The wizard's routes, added to the console's.
pub fn routes() -> Vec<Route> {
    let page = |path, handler| Route {
        path,
        access: Access::Public,
        mutating: false,
        handler,
    };
    let control = |path, role, handler| Route {
        path,
        access: Access::Role(role),
        mutating: true,
        handler,
    };
    vec![
        page("/policies/new", get(new_page)),
        page("/policies/{id}/edit", get(edit_page)),
        page("/policies/{id}/inverse", get(inverse_page)),
        page("/assets/wizard.js", get(wizard_js)),
        control("/ui/wizard/validate", Role::Operator, post(live)),
        control("/ui/wizard/editor", Role::Operator, post(switch_editor)),
        control("/ui/wizard/save", Role::Admin, post(save)),
    ]
}

const WIZARD_JS: &[u8] = include_bytes!("assets/wizard.js");

async fn wizard_js() -> Response {
    super::asset("text/javascript; charset=utf-8", WIZARD_JS)
}

// ---- the fields -------------------------------------------------------------

/// How a field's text becomes a value at its pointer (the name's prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `s:` text as is.
    Str,
    /// `n:` a number; text that is not one stays text, so the validator
    /// reports it at the field.
    Num,
    /// `b:` `true` or `false`.
    Bool,
    /// `j:` JSON (an object such as an action's params or a schedule).
    Json,
    /// `v:` JSON when it parses (`5`, `true`), else text (a condition's value).
    Value,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Str => "s",
            Kind::Num => "n",
            Kind::Bool => "b",
            Kind::Json => "j",
            Kind::Value => "v",
        }
    }

    fn of(prefix: &str) -> Option<Kind> {
        Some(match prefix {
            "s" => Kind::Str,
            "n" => Kind::Num,
            "b" => Kind::Bool,
            "j" => Kind::Json,
            "v" => Kind::Value,
            _ => return None,
        })
    }
}

enum Control {
    Text,
    Area,
    Select(Vec<(String, String)>),
}

struct FieldDef {
    step: u8,
    pointer: String,
    kind: Kind,
    label: String,
    help: &'static str,
    control: Control,
    /// The id of a `<datalist>` offering values.
    list: &'static str,
    /// The trigger types the field is for (space-separated; empty: all).
    /// The wizard's script hides the others' empty fields.
    for_types: &'static str,
    /// The element id of the trigger type select `for_types` reads.
    type_field: String,
    /// Set on the first field of a list's item when the list has several.
    item: Option<Item>,
}

const STEPS: [&str; 5] = [
    "Basics",
    "Trigger",
    "Conditions",
    "Targets & Actions",
    "Review",
];

/// How many triggers, conditions and actions the wizard shows fields for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    triggers: usize,
    conditions: usize,
    actions: usize,
}

/// The lists the wizard edits item by item, with their add/remove names.
const LISTS: [(&str, &str); 3] = [
    ("triggers", "/trigger_group/triggers"),
    ("conditions", "/conditions/all"),
    ("actions", "/actions"),
];

/// Items the wizard shows at most per list; more stay in the spec and are
/// edited as text (a bound on the form the server draws and reads).
const MAX_ITEMS: usize = 20;

impl Shape {
    /// One item of each list at least, else as many as `spec` has.
    fn of_spec(spec: &Value) -> Shape {
        let len = |ptr: &str| {
            spec.pointer(ptr)
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
                .clamp(1, MAX_ITEMS)
        };
        Shape {
            triggers: len(LISTS[0].1),
            conditions: len(LISTS[1].1),
            actions: len(LISTS[2].1),
        }
    }

    /// The shape of a posted form: one past the highest index its fields
    /// name in each list.
    fn of_pointers<'a>(pointers: impl Iterator<Item = &'a str>) -> Shape {
        let mut shape = Shape {
            triggers: 1,
            conditions: 1,
            actions: 1,
        };
        for pointer in pointers {
            for (name, list) in LISTS {
                let index = pointer
                    .strip_prefix(list)
                    .and_then(|rest| rest.strip_prefix('/'))
                    .and_then(|rest| rest.split('/').next())
                    .and_then(|i| i.parse::<usize>().ok());
                if let Some(i) = index.filter(|i| *i < MAX_ITEMS) {
                    let n = shape.get_mut(name);
                    *n = (*n).max(i + 1);
                }
            }
        }
        shape
    }

    fn get_mut(&mut self, name: &str) -> &mut usize {
        match name {
            "triggers" => &mut self.triggers,
            "conditions" => &mut self.conditions,
            _ => &mut self.actions,
        }
    }

    /// One more item of list `name` (`triggers`, `conditions`, `actions`).
    fn add(mut self, name: &str) -> Shape {
        let n = self.get_mut(name);
        *n = (*n + 1).min(MAX_ITEMS);
        self
    }
}

/// The item of a list a field belongs to, drawn as a group with its own
/// heading and Remove button when the list has more than one.
#[derive(Debug, Clone)]
struct Item {
    /// `Trigger 2`.
    title: String,
    /// The item's pointer (`/actions/1`), what Remove removes.
    pointer: String,
}

fn opts(values: &[&str]) -> Vec<(String, String)> {
    values
        .iter()
        .map(|v| {
            let label = if v.is_empty() { "(none)" } else { v };
            ((*v).to_string(), label.to_string())
        })
        .collect()
}

fn field(step: u8, pointer: &str, kind: Kind, label: &str, help: &'static str) -> FieldDef {
    FieldDef {
        step,
        pointer: pointer.to_string(),
        kind,
        label: label.to_string(),
        help,
        control: Control::Text,
        list: "",
        for_types: "",
        type_field: String::new(),
        item: None,
    }
}

/// The label of an item's field: numbered when the list has several.
fn numbered(what: &str, n: usize, of: usize, label: &str) -> String {
    if of > 1 {
        format!("{what} {n}: {label}")
    } else {
        label.to_string()
    }
}

/// Every field of the wizard, in step order, for `shape`'s items.
fn fields(hosts: &[String], shape: Shape) -> Vec<FieldDef> {
    let mut out = vec![
        field(
            1,
            "/name",
            Kind::Str,
            "Name",
            "What the policy does, in a few words.",
        ),
        field(
            1,
            "/priority",
            Kind::Num,
            "Priority",
            "Higher runs first when several policies match (optional).",
        ),
        FieldDef {
            control: Control::Select(vec![
                ("false".into(), "Saved disabled".into()),
                (
                    "true".into(),
                    "Enabled when saved (through the dry-run gate)".into(),
                ),
            ]),
            ..field(1, "/enabled", Kind::Bool, "Enabled", "")
        },
        field(
            1,
            "/suppression_window",
            Kind::Str,
            "Suppression window",
            "Do not fire again within this time, e.g. 30m (optional).",
        ),
        field(
            1,
            "/idempotency_window",
            Kind::Str,
            "Idempotency window",
            "An action on a target is not repeated within this time, e.g. 10m (optional).",
        ),
        FieldDef {
            control: Control::Select(vec![
                (String::new(), "(default: no)".into()),
                ("false".into(), "No".into()),
                (
                    "true".into(),
                    "Yes: no lower-priority policy runs for the same event".into(),
                ),
            ]),
            ..field(1, "/stop_on_match", Kind::Value, "Stop on match", "")
        },
        FieldDef {
            control: Control::Select(vec![
                (String::new(), "(default: yes)".into()),
                (
                    "true".into(),
                    "Yes: resolve the selector again when the policy fires".into(),
                ),
                (
                    "false".into(),
                    "No: act on the targets resolved at save".into(),
                ),
            ]),
            ..field(
                1,
                "/dynamic_resolution",
                Kind::Value,
                "Dynamic resolution",
                "",
            )
        },
        FieldDef {
            control: Control::Area,
            ..field(1, "/notes", Kind::Str, "Notes", "Free text (optional).")
        },
        FieldDef {
            control: Control::Select(vec![
                (String::new(), "(default: ANY)".into()),
                ("ANY".into(), "ANY: one trigger is enough".into()),
                ("ALL".into(), "ALL: every trigger at once".into()),
            ]),
            ..field(
                2,
                "/trigger_group/logic",
                Kind::Str,
                "Trigger logic",
                "How several triggers combine.",
            )
        },
    ];
    for i in 0..shape.triggers {
        let t = format!("/trigger_group/triggers/{i}");
        let n = i + 1;
        let of = shape.triggers;
        let label = |l: &str| numbered("Trigger", n, of, l);
        let mut trigger = vec![
            FieldDef {
                control: Control::Select(opts(&[
                    "ups.state",
                    "metric.threshold",
                    "timer.at",
                    "timer.after",
                    "webhook.custom",
                ])),
                ..field(2, &format!("{t}/type"), Kind::Str, &label("Trigger type"), "")
            },
            field(2, &format!("{t}/ups"), Kind::Str, &label("UPS"), "ups.state, metric.threshold: the UPS's name, e.g. ups1 (optional: any UPS)."),
            FieldDef {
                list: "ups-states",
                ..field(2, &format!("{t}/equals"), Kind::Str, &label("UPS state"), "ups.state: on_battery, on_mains, low_battery…")
            },
            field(2, &format!("{t}/for"), Kind::Str, &label("For (duration)"), "Only when the state lasts this long, e.g. 2m (optional)."),
            field(2, &format!("{t}/metric"), Kind::Str, &label("Metric"), "metric.threshold: e.g. load, charge_pct."),
            field(2, &format!("{t}/op"), Kind::Str, &label("Comparison"), "metric.threshold: >, >=, <, <=, ="),
            field(2, &format!("{t}/value"), Kind::Value, &label("Threshold"), "metric.threshold: a number."),
            FieldDef {
                control: Control::Area,
                ..field(2, &format!("{t}/schedule"), Kind::Json, &label("Schedule (JSON)"), "timer.at: {\"cron\": \"0 1 * * 0\"} or {\"repeat\": \"weekly\", \"at\": \"01:00\", \"days\": [\"sun\"]}.")
            },
            field(2, &format!("{t}/after"), Kind::Str, &label("After (duration)"), "timer.after: e.g. 10m."),
            FieldDef {
                control: Control::Area,
                ..field(2, &format!("{t}/since_event"), Kind::Json, &label("Since event (JSON)"), "timer.after: the event that starts the timer, e.g. {\"type\": \"ups.state\", \"equals\": \"on_mains\"}.")
            },
            field(2, &format!("{t}/name"), Kind::Str, &label("Webhook name"), "webhook.custom: the configured webhook's name."),
        ];
        for def in &mut trigger {
            def.for_types = match def.pointer.strip_prefix(t.as_str()) {
                Some("/ups") => "ups.state metric.threshold",
                Some("/equals") => "ups.state",
                Some("/for") => "ups.state metric.threshold",
                Some("/metric" | "/op" | "/value") => "metric.threshold",
                Some("/schedule") => "timer.at",
                Some("/after" | "/since_event") => "timer.after",
                Some("/name") => "webhook.custom",
                _ => "",
            };
            def.type_field = field_id(&format!("{t}/type"));
        }
        in_item(&mut trigger, "Trigger", n, of, &t);
        out.extend(trigger);
    }
    for i in 0..shape.conditions {
        let c = format!("/conditions/all/{i}");
        let n = i + 1;
        let label = |l: &str| format!("Condition {n}: {l}");
        let mut row = vec![
            FieldDef {
                control: Control::Select(opts(&["", "ups", "host", "metric", "vm", "ct"])),
                ..field(3, &format!("{c}/scope"), Kind::Str, &label("scope"), "")
            },
            field(
                3,
                &format!("{c}/field"),
                Kind::Str,
                &label("field"),
                "e.g. runtime_minutes, reachable.",
            ),
            FieldDef {
                control: Control::Select(opts(&["", "=", "!=", ">", ">=", "<", "<="])),
                ..field(3, &format!("{c}/op"), Kind::Str, &label("comparison"), "")
            },
            field(
                3,
                &format!("{c}/value"),
                Kind::Value,
                &label("value"),
                "A number, true/false or text.",
            ),
            field(
                3,
                &format!("{c}/ups"),
                Kind::Str,
                &label("UPS"),
                "ups, metric: which UPS (optional: the one that sent the event).",
            ),
        ];
        in_item(&mut row, "Condition", n, shape.conditions, &c);
        out.extend(row);
    }
    let mut host_opts = vec![(String::new(), "(choose a host)".to_string())];
    host_opts.extend(hosts.iter().map(|h| (h.clone(), h.clone())));
    out.extend([
        FieldDef {
            control: Control::Select(host_opts),
            ..field(4, "/targets/host_id", Kind::Str, "Host", "")
        },
        FieldDef {
            list: "target-types",
            ..field(4, "/targets/target_type", Kind::Str, "Target type", "vm, ct, poe-port, interface, service…")
        },
        FieldDef {
            control: Control::Select(opts(&["list", "range", "query"])),
            ..field(4, "/targets/selector/mode", Kind::Str, "Selector mode", "list/range: ids such as 101,104-110; query: labels.tier = low and status = running.")
        },
        FieldDef {
            list: "target-suggestions",
            ..field(4, "/targets/selector/value", Kind::Str, "Selector", "The preview below resolves it on the host's inventory.")
        },
    ]);
    for i in 0..shape.actions {
        let a = format!("/actions/{i}");
        let n = i + 1;
        let of = shape.actions;
        let mut action = vec![
            field(
                4,
                &format!("{a}/capability_id"),
                Kind::Str,
                &numbered("Action", n, of, "Action capability"),
                "e.g. proxmox.vm.",
            ),
            field(
                4,
                &format!("{a}/verb"),
                Kind::Str,
                &numbered("Action", n, of, "Action verb"),
                "e.g. shutdown, start.",
            ),
            FieldDef {
                control: Control::Area,
                ..field(
                    4,
                    &format!("{a}/params"),
                    Kind::Json,
                    &numbered("Action", n, of, "Action parameters (JSON)"),
                    "e.g. {\"grace_s\": 90} (optional).",
                )
            },
        ];
        in_item(&mut action, "Action", n, of, &a);
        out.extend(action);
    }
    out
}

/// Marks an item's fields as its group (the first one carries the group).
fn in_item(defs: &mut [FieldDef], what: &str, n: usize, of: usize, pointer: &str) {
    if of < 2 {
        return;
    }
    if let Some(first) = defs.first_mut() {
        first.item = Some(Item {
            title: format!("{what} {n}"),
            pointer: pointer.to_string(),
        });
    }
}

/// A field's element id: `w` and the pointer's segments (`w-targets-host_id`).
fn field_id(pointer: &str) -> String {
    let mut id = String::from("w");
    for c in pointer.chars() {
        id.push(match c {
            '/' => '-',
            c if c.is_ascii_alphanumeric() || c == '_' => c,
            _ => '_',
        });
    }
    id
}

/// The field a JSON pointer belongs to: the deepest field at or above it,
/// else the first field below it (`/actions` names the first action's
/// fields). `None` for the whole document or a part no field shows.
fn field_for<'a>(path: &str, pointers: impl Iterator<Item = &'a str> + Clone) -> Option<&'a str> {
    if path.is_empty() || path == "/" {
        return None;
    }
    let at_or_above = pointers
        .clone()
        .filter(|p| path == *p || path.starts_with(&format!("{p}/")))
        .max_by_key(|p| p.len());
    at_or_above.or_else(|| {
        let prefix = format!("{path}/");
        pointers.into_iter().find(|p| p.starts_with(&prefix))
    })
}

fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// Sets `value` at `pointer`, making the objects and arrays on the way.
fn set_at(root: &mut Value, pointer: &str, value: Value) {
    let segments: Vec<String> = pointer.split('/').skip(1).map(unescape).collect();
    let mut node = root;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let next_is_index = segments
            .get(i + 1)
            .is_some_and(|s| s.parse::<usize>().is_ok());
        let fresh = || {
            if next_is_index {
                Value::Array(Vec::new())
            } else {
                Value::Object(Map::new())
            }
        };
        if !node.is_object() && !node.is_array() {
            *node = Value::Object(Map::new());
        }
        let index = seg.parse::<usize>().ok().filter(|_| node.is_array());
        node = match (node, index) {
            (Value::Array(items), Some(index)) => {
                while items.len() <= index {
                    items.push(Value::Object(Map::new()));
                }
                if last {
                    items[index] = value;
                    return;
                }
                &mut items[index]
            }
            (Value::Object(map), _) => {
                if last {
                    map.insert(seg.clone(), value);
                    return;
                }
                map.entry(seg.clone()).or_insert_with(fresh)
            }
            _ => return,
        };
    }
}

/// Removes the value at `pointer`, if there is one.
fn remove_at(root: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = unescape(last);
    let Some(node) = root.pointer_mut(parent) else {
        return;
    };
    if let Value::Object(map) = node {
        map.remove(&last);
    }
}

/// Drops the empty condition rows and the empty objects the fields made.
fn prune(spec: &mut Value) {
    if let Some(Value::Array(rows)) = spec.pointer_mut("/conditions/all") {
        rows.retain(|r| r.as_object().is_none_or(|o| !o.is_empty()));
    }
    for parent in ["/conditions", ""] {
        if let Some(Value::Object(map)) = spec.pointer_mut(parent) {
            map.retain(|k, v| match v {
                Value::Object(o) => !o.is_empty() || k == "params",
                Value::Array(a) => !a.is_empty() || k != "all",
                _ => true,
            });
        }
    }
    for list in ["/trigger_group/triggers", "/actions"] {
        if let Some(Value::Array(items)) = spec.pointer_mut(list) {
            items.retain(|r| r.as_object().is_none_or(|o| !o.is_empty()));
        }
    }
}

/// A field's text as the value its kind says; `None` removes the key.
fn value_of(kind: Kind, text: &str) -> Option<Value> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return None;
    }
    Some(match kind {
        Kind::Str => Value::String(text.to_string()),
        Kind::Num => serde_json::from_str::<serde_json::Number>(trimmed)
            .map_or_else(|_| Value::String(trimmed.to_string()), Value::Number),
        Kind::Bool => Value::Bool(trimmed == "true"),
        Kind::Json | Kind::Value => {
            serde_json::from_str(trimmed).unwrap_or_else(|_| Value::String(trimmed.to_string()))
        }
    })
}

/// A value as its field shows it.
fn text_of(kind: Kind, value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => match kind {
            Kind::Bool => "false".into(),
            _ => String::new(),
        },
        Some(Value::String(s)) => s.clone(),
        Some(v @ (Value::Object(_) | Value::Array(_))) => {
            serde_json::to_string(v).unwrap_or_default()
        }
        Some(v) => v.to_string(),
    }
}

// ---- the form ---------------------------------------------------------------

/// The posted form: the wizard's fields (`kind:pointer`) and its state.
#[derive(Default)]
struct Draft {
    mode: String,
    /// `add:<list>` or `remove:<item pointer>` (the wizard's Add and Remove
    /// buttons); empty for the mode switch.
    op: String,
    /// The step shown when the button was pressed.
    step: String,
    policy_id: String,
    version: String,
    base: Value,
    needs: Vec<Need>,
    spec_text: String,
    fields: Vec<(Kind, String, String)>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Need {
    path: String,
    note: String,
}

impl Draft {
    fn of(pairs: Vec<(String, String)>) -> Draft {
        let mut d = Draft::default();
        for (name, value) in pairs {
            match name.as_str() {
                "mode" => d.mode = value,
                "op" => d.op = value,
                "step" => d.step = value,
                "policy_id" => d.policy_id = value,
                "version" => d.version = value,
                "base" => d.base = serde_json::from_str(&value).unwrap_or(Value::Null),
                "needs" => d.needs = serde_json::from_str(&value).unwrap_or_default(),
                "spec_text" => d.spec_text = value,
                _ => {
                    if let Some((prefix, pointer)) = name.split_once(':') {
                        if let (Some(kind), true) = (Kind::of(prefix), pointer.starts_with('/')) {
                            d.fields.push((kind, pointer.to_string(), value));
                        }
                    }
                }
            }
        }
        d
    }

    fn text_mode(&self) -> bool {
        self.mode == "text"
    }

    /// The spec the fields build over `base`.
    fn spec_from_fields(&self) -> Value {
        let mut spec = self.fields_over_base();
        prune(&mut spec);
        spec
    }

    /// The fields laid over `base`, empty items still in place (so an
    /// item's index is still the one its fields name).
    fn fields_over_base(&self) -> Value {
        let mut spec = match &self.base {
            Value::Object(_) => self.base.clone(),
            _ => Value::Object(Map::new()),
        };
        for (kind, pointer, text) in &self.fields {
            match value_of(*kind, text) {
                Some(v) => set_at(&mut spec, pointer, v),
                None => remove_at(&mut spec, pointer),
            }
        }
        spec
    }

    /// The text to validate and save, and the spec as far as it parses.
    fn body(&self) -> (String, Option<Value>) {
        if self.text_mode() {
            (self.spec_text.clone(), parse_text(&self.spec_text))
        } else {
            let spec = self.spec_from_fields();
            (serde_json::to_string(&spec).unwrap_or_default(), Some(spec))
        }
    }
}

/// YAML or JSON text as a value (`None` when it does not parse).
fn parse_text(text: &str) -> Option<Value> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        serde_json::from_str(trimmed).ok()
    } else {
        serde_norway::from_str(text).ok()
    }
}

fn to_yaml(spec: &Value) -> String {
    serde_norway::to_string(spec).unwrap_or_default()
}

// ---- the page ---------------------------------------------------------------

struct FieldView {
    id: String,
    name: String,
    label: String,
    help: String,
    value: String,
    /// `text`, `area` or `select`.
    control: &'static str,
    options: Vec<(String, String, bool)>,
    list: &'static str,
    for_types: &'static str,
    type_field: String,
    /// The heading and Remove button of the item this field starts.
    item: Option<Item>,
    /// The `needs_input` notes at this field (create inverse).
    need: String,
}

struct StepView {
    n: u8,
    title: &'static str,
    fields: Vec<FieldView>,
    /// The step's Add buttons: `(list, label)`.
    adds: Vec<(&'static str, &'static str)>,
}

#[derive(Template)]
#[template(path = "console/wizard.html")]
struct WizardPage {
    viewer: Viewer,
    title: String,
    intro: String,
    notes: Vec<String>,
    editor: EditorView,
}

/// The editor (wizard or text), the part the mode switch replaces.
#[derive(Template)]
#[template(path = "console/wizard_editor.html")]
struct EditorView {
    text_mode: bool,
    policy_id: String,
    version: String,
    base: String,
    needs_json: String,
    needs: Vec<Need>,
    steps: Vec<StepView>,
    spec_text: String,
    ups_states: Vec<&'static str>,
    error: String,
    /// The step to show first (after an Add or Remove, the one it was on).
    start_step: u8,
    /// The element to focus once drawn (the first field of an added item).
    focus: String,
}

async fn host_ids(service: &Service) -> Vec<String> {
    service
        .hosts()
        .await
        .map(|hs| hs.into_iter().map(|h| h.id).collect())
        .unwrap_or_default()
}

/// The editor for `spec`, with fields for `shape`'s items
/// ([`Shape::of_spec`], or one more after an Add).
fn editor(
    spec: &Value,
    shape: Shape,
    hosts: &[String],
    needs: Vec<Need>,
    text_mode: bool,
    policy_id: String,
    version: String,
) -> EditorView {
    let defs = fields(hosts, shape);
    let pointers: Vec<&str> = defs.iter().map(|d| d.pointer.as_str()).collect();
    let mut steps: Vec<StepView> = STEPS
        .iter()
        .enumerate()
        .map(|(i, title)| StepView {
            n: u8::try_from(i + 1).unwrap_or(0),
            title,
            fields: Vec::new(),
            adds: match i {
                1 => vec![("triggers", "Add a trigger")],
                2 => vec![("conditions", "Add a condition")],
                3 => vec![("actions", "Add an action")],
                _ => Vec::new(),
            },
        })
        .collect();
    for def in &defs {
        let value = text_of(def.kind, spec.pointer(&def.pointer));
        let need = needs
            .iter()
            .filter(|n| field_for(&n.path, pointers.iter().copied()) == Some(def.pointer.as_str()))
            .map(|n| n.note.clone())
            .collect::<Vec<_>>()
            .join(" ");
        let (control, options) = match &def.control {
            Control::Text => ("text", Vec::new()),
            Control::Area => ("area", Vec::new()),
            Control::Select(options) => {
                let mut options: Vec<(String, String, bool)> = options
                    .iter()
                    .map(|(v, l)| (v.clone(), l.clone(), *v == value))
                    .collect();
                if !value.is_empty() && !options.iter().any(|o| o.2) {
                    options.push((value.clone(), value.clone(), true));
                }
                ("select", options)
            }
        };
        if let Some(step) = steps.get_mut(usize::from(def.step) - 1) {
            step.fields.push(FieldView {
                id: field_id(&def.pointer),
                name: format!("{}:{}", def.kind.prefix(), def.pointer),
                label: def.label.clone(),
                help: def.help.to_string(),
                value,
                control,
                options,
                list: def.list,
                for_types: def.for_types,
                type_field: def.type_field.clone(),
                item: def.item.clone(),
                need,
            });
        }
    }
    EditorView {
        text_mode,
        policy_id,
        version,
        base: serde_json::to_string(spec).unwrap_or_default(),
        needs_json: serde_json::to_string(&needs).unwrap_or_default(),
        needs,
        steps,
        spec_text: to_yaml(spec),
        ups_states: crate::spec::UpsState::NAMES.to_vec(),
        error: String::new(),
        start_step: 1,
        focus: String::new(),
    }
}

/// A new policy's starting spec.
fn blank() -> Value {
    serde_json::json!({
        "version": 1,
        "enabled": false,
        "trigger_group": {"triggers": [{"type": "ups.state", "equals": "on_battery"}]},
        "targets": {"selector": {"mode": "list"}},
    })
}

/// A wizard page's signed-in operator or admin. Without a session the
/// request goes to `/login`; a viewer, who may not draft policies, to the
/// policies table.
struct MayEdit(Viewer);

impl FromRequestParts<AppState> for MayEdit {
    type Rejection = Redirect;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let SignedIn(viewer) = SignedIn::from_request_parts(parts, state).await?;
        if viewer.operator {
            Ok(MayEdit(viewer))
        } else {
            Err(Redirect::to("/policies"))
        }
    }
}

async fn new_page(State(state): State<AppState>, MayEdit(viewer): MayEdit) -> Response {
    let hosts = host_ids(state.service()).await;
    render(&WizardPage {
        viewer,
        title: "New policy".into(),
        intro: String::new(),
        notes: Vec::new(),
        editor: editor(
            &blank(),
            Shape::of_spec(&blank()),
            &hosts,
            Vec::new(),
            false,
            String::new(),
            String::new(),
        ),
    })
}

async fn edit_page(
    State(state): State<AppState>,
    MayEdit(viewer): MayEdit,
    PathId(id): PathId,
) -> Response {
    let policy = match state.service().policy(id).await {
        Ok(p) => p,
        Err(e) => return service_error(&e),
    };
    let hosts = host_ids(state.service()).await;
    render(&WizardPage {
        viewer,
        title: format!("Edit {}", policy.name),
        intro: format!(
            "Saving makes version {} of this policy.",
            policy.version_int + 1
        ),
        notes: Vec::new(),
        editor: editor(
            &policy.spec,
            Shape::of_spec(&policy.spec),
            &hosts,
            Vec::new(),
            false,
            id.to_string(),
            policy.version_int.to_string(),
        ),
    })
}

async fn inverse_page(
    State(state): State<AppState>,
    MayEdit(viewer): MayEdit,
    PathId(id): PathId,
) -> Response {
    let service = state.service();
    let result =
        async { Ok::<_, ServiceError>((service.policy(id).await?, service.inverse(id).await?)) };
    let (policy, inverse) = match result.await {
        Ok(found) => found,
        Err(e) => return service_error(&e),
    };
    let mut spec = inverse["spec_inverse"].clone();
    if let Value::Object(map) = &mut spec {
        map.insert("enabled".into(), Value::Bool(false));
    }
    let needs: Vec<Need> =
        serde_json::from_value(inverse["needs_input"].clone()).unwrap_or_default();
    let notes = inverse["notes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| n.as_str().map_or_else(|| n.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let hosts = host_ids(service).await;
    render(&WizardPage {
        viewer,
        title: format!("Inverse of {}", policy.name),
        intro: "The generated inverse, unsaved and disabled. Fill in every highlighted field before saving.".into(),
        notes,
        editor: editor(&spec,Shape::of_spec(&spec), &hosts, needs, false, String::new(), String::new()),
    })
}

/// Switches between the wizard and the text view, carrying the spec over;
/// with an `op`, redraws the wizard with an item added or removed, on the
/// step it was on.
async fn switch_editor(
    State(state): State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let draft = Draft::of(pairs);
    let hosts = host_ids(state.service()).await;
    if !draft.op.is_empty() && !draft.text_mode() {
        return render(&changed_items(draft, &hosts));
    }
    if draft.text_mode() {
        // Text -> wizard: the text must parse.
        let Some(spec) = parse_text(&draft.spec_text).filter(Value::is_object) else {
            let mut view = editor(
                &draft.base,
                Shape::of_spec(&draft.base),
                &hosts,
                draft.needs,
                true,
                draft.policy_id,
                draft.version,
            );
            view.spec_text = draft.spec_text;
            view.error =
                "The text is not a YAML or JSON object: fix it before switching to the wizard."
                    .into();
            return render(&view);
        };
        render(&editor(
            &spec,
            Shape::of_spec(&spec),
            &hosts,
            draft.needs,
            false,
            draft.policy_id,
            draft.version,
        ))
    } else {
        let spec = draft.spec_from_fields();
        render(&editor(
            &spec,
            Shape::of_spec(&spec),
            &hosts,
            draft.needs,
            true,
            draft.policy_id,
            draft.version,
        ))
    }
}

/// The wizard after an Add (`add:<list>`: one more, empty item, focused)
/// or a Remove (`remove:<item pointer>`: that item out of the spec).
fn changed_items(draft: Draft, hosts: &[String]) -> EditorView {
    let mut spec = draft.fields_over_base();
    let mut shape = Shape::of_pointers(draft.fields.iter().map(|(_, p, _)| p.as_str()));
    let mut focus = String::new();
    if let Some(list) = draft.op.strip_prefix("add:") {
        if let Some((name, pointer)) = LISTS.iter().find(|(name, _)| *name == list) {
            shape = shape.add(name);
            let index = match *name {
                "triggers" => shape.triggers,
                "conditions" => shape.conditions,
                _ => shape.actions,
            } - 1;
            let first = match *name {
                "triggers" => "type",
                "conditions" => "scope",
                _ => "capability_id",
            };
            focus = field_id(&format!("{pointer}/{index}/{first}"));
            if *name == "triggers" {
                // A new trigger starts as the wizard's default type.
                set_at(
                    &mut spec,
                    &format!("{pointer}/{index}"),
                    serde_json::json!({"type": "ups.state"}),
                );
            }
        }
    } else if let Some(item) = draft.op.strip_prefix("remove:") {
        if let Some((parent, index)) = item.rsplit_once('/') {
            let index = index.parse::<usize>().ok();
            if let (Some(Value::Array(items)), Some(index)) = (spec.pointer_mut(parent), index) {
                if index < items.len() {
                    items.remove(index);
                }
            }
            if let Some((name, _)) = LISTS.iter().find(|(_, list)| *list == parent) {
                let n = shape.get_mut(name);
                *n = n.saturating_sub(1).max(1);
            }
        }
    }
    prune(&mut spec);
    // Fields for every item the spec now has, and the added one.
    let from_spec = Shape::of_spec(&spec);
    let shape = Shape {
        triggers: shape.triggers.max(from_spec.triggers),
        conditions: shape.conditions.max(from_spec.conditions),
        actions: shape.actions.max(from_spec.actions),
    };
    let mut view = editor(
        &spec,
        shape,
        hosts,
        draft.needs,
        false,
        draft.policy_id,
        draft.version,
    );
    view.start_step = draft.step.parse().unwrap_or(1).clamp(1, 5);
    view.focus = focus;
    view
}

// ---- live validation ----------------------------------------------------------

struct FindingView {
    severity: String,
    code: String,
    path: String,
    message: String,
    hint: String,
}

struct Slot {
    id: String,
    findings: Vec<FindingView>,
}

struct Preview {
    /// Why there is no preview, when there is none.
    note: String,
    count: usize,
    first: Vec<String>,
    missing_count: usize,
    missing: Vec<String>,
    suggestions: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "console/wizard_live.html")]
struct LiveFragment {
    text_mode: bool,
    summary: String,
    blockers: usize,
    rest: Vec<FindingView>,
    slots: Vec<Slot>,
    step_counts: Vec<(u8, usize)>,
    can_save: bool,
    save_note: String,
    preview: Preview,
    review: String,
}

fn finding_view(issue: &Value) -> FindingView {
    let s = |k: &str| issue[k].as_str().unwrap_or("").to_string();
    FindingView {
        severity: s("severity"),
        code: s("code"),
        path: s("path"),
        message: s("message"),
        hint: s("hint"),
    }
}

const PREVIEW_IDS: usize = 8;

fn preview(service: &Service, spec: Option<&Value>) -> Preview {
    let mut p = Preview {
        note: String::new(),
        count: 0,
        first: Vec::new(),
        missing_count: 0,
        missing: Vec::new(),
        suggestions: Vec::new(),
    };
    let text = |ptr: &str| {
        spec.and_then(|s| s.pointer(ptr))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (host, target_type, mode, value) = (
        text("/targets/host_id"),
        text("/targets/target_type"),
        text("/targets/selector/mode"),
        text("/targets/selector/value"),
    );
    // Suggestions: the inventory search index, on the last word typed.
    let word = value
        .rsplit([',', ' '])
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    // On the chosen host (and type) when there is one: searching every
    // host first and filtering after would let another host's hits fill
    // the limit.
    let wanted_type = (!target_type.is_empty()).then_some(target_type.as_str());
    let found: Vec<inventory::Target> = if host.is_empty() {
        service
            .inventory()
            .search(&word, 40)
            .into_iter()
            .map(|h| h.target)
            .filter(|t| wanted_type.is_none_or(|w| t.target_type == w))
            .take(PREVIEW_IDS)
            .collect()
    } else {
        service
            .inventory()
            .search_host_type(&host, wanted_type, &word, PREVIEW_IDS)
            .unwrap_or_default()
    };
    p.suggestions = found
        .into_iter()
        .map(|t| {
            let label = format!(
                "{}:{}{}{}",
                t.target_type,
                t.id,
                t.name.map(|n| format!(" {n}")).unwrap_or_default(),
                t.status.map(|s| format!(" ({s})")).unwrap_or_default()
            );
            (t.id, label)
        })
        .collect();
    if host.is_empty() || target_type.is_empty() || value.trim().is_empty() {
        p.note = "Choose a host, a target type and a selector to see the targets.".into();
        return p;
    }
    let Ok(mode) = mode.parse::<inventory::SelectorMode>() else {
        p.note = format!("Unknown selector mode `{mode}`.");
        return p;
    };
    let selector = match inventory::parse_selector(mode, &value, &target_type) {
        Ok(s) => s,
        Err(errors) => {
            p.note = errors
                .iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("; ");
            return p;
        }
    };
    match service.inventory().resolve(&host, &selector) {
        Ok(resolution) => {
            p.count = resolution.ids.len();
            p.first = resolution.ids.iter().take(PREVIEW_IDS).cloned().collect();
            p.missing_count = resolution.missing;
            if resolution.missing > 0 {
                let found: HashSet<&String> = resolution.ids.iter().collect();
                p.missing = selector
                    .expand()
                    .ok()
                    .flatten()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|id| !found.contains(id))
                    .take(PREVIEW_IDS)
                    .collect();
            }
        }
        Err(e) => p.note = e.to_string(),
    }
    p
}

async fn live(
    State(state): State<AppState>,
    actor: Actor,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let draft = Draft::of(pairs);
    let (body, spec) = draft.body();
    let service = state.service();
    let report = match service.validate_draft(body).await {
        Ok(r) => serde_json::to_value(&r).unwrap_or(Value::Null),
        Err(e) => {
            // Busy: say so in the findings; the next change tries again.
            return render_status(
                StatusCode::OK,
                &super::ErrorFragment {
                    code: e.code().to_string(),
                    message: e.to_string(),
                    items: Vec::new(),
                },
            );
        }
    };
    render(&live_fragment(
        service,
        &draft,
        &actor,
        &report,
        spec.as_ref(),
    ))
}

fn live_fragment(
    service: &Service,
    draft: &Draft,
    actor: &Actor,
    report: &Value,
    spec: Option<&Value>,
) -> LiveFragment {
    let shape = Shape::of_pointers(draft.fields.iter().map(|(_, p, _)| p.as_str()));
    let defs = fields(&[], shape);
    let pointers: Vec<&str> = defs.iter().map(|d| d.pointer.as_str()).collect();
    let mut slots: Vec<Slot> = defs
        .iter()
        .map(|d| Slot {
            id: field_id(&d.pointer),
            findings: Vec::new(),
        })
        .collect();
    let mut step_counts: Vec<(u8, usize)> = (1..=5).map(|n| (n, 0)).collect();
    let mut rest = Vec::new();
    let mut blockers = 0;
    for issue in report["issues"].as_array().into_iter().flatten() {
        let view = finding_view(issue);
        if view.severity == "blocker" {
            blockers += 1;
        }
        let at = (!draft.text_mode())
            .then(|| field_for(&view.path, pointers.iter().copied()))
            .flatten()
            .and_then(|p| pointers.iter().position(|q| *q == p));
        match at {
            Some(i) => {
                if let Some(c) = step_counts.get_mut(usize::from(defs[i].step) - 1) {
                    c.1 += 1;
                }
                slots[i].findings.push(view);
            }
            None => rest.push(view),
        }
    }
    let ok = report["ok"].as_bool() == Some(true);
    let admin = actor.role >= Role::Admin;
    let summary = if ok {
        let n = report["issues"].as_array().map_or(0, Vec::len);
        if n == 0 {
            "Valid: no findings.".to_string()
        } else {
            format!("Valid, with {n} finding(s) to read.")
        }
    } else {
        format!("{blockers} blocker(s): fix them to save.")
    };
    LiveFragment {
        text_mode: draft.text_mode(),
        summary,
        blockers,
        rest,
        slots: if draft.text_mode() { Vec::new() } else { slots },
        step_counts,
        can_save: ok && admin,
        save_note: if !admin {
            "Saving needs the admin role.".into()
        } else if ok {
            String::new()
        } else {
            "Save is disabled while there is a blocker.".into()
        },
        preview: preview(service, spec),
        review: spec.map(to_yaml).unwrap_or_default(),
    }
}

// ---- save -------------------------------------------------------------------

async fn save(
    State(state): State<AppState>,
    actor: Actor,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let draft = Draft::of(pairs);
    let (body, spec) = draft.body();
    let service = state.service();
    let saved = match draft.policy_id.parse::<Uuid>() {
        Ok(id) => {
            let version = draft.version.parse::<u64>().ok();
            service.update_policy(&actor, id, &body, version).await
        }
        Err(_) => service.create_policy(&actor, &body).await,
    };
    match saved {
        Ok(policy) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("/policies/{}", policy.id)) {
                response.headers_mut().insert("hx-redirect", v);
            }
            response
        }
        // The server's own gate: blockers are refused whatever the page did.
        Err(ServiceError::Invalid { report }) => {
            let mut response = render_status(
                StatusCode::BAD_REQUEST,
                &live_fragment(service, &draft, &actor, &report, spec.as_ref()),
            );
            response
                .headers_mut()
                .insert("hx-retarget", HeaderValue::from_static("#findings"));
            response
        }
        Err(e) => service_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_maps_to_the_deepest_field_at_or_above_its_pointer() {
        let one = Shape {
            triggers: 1,
            conditions: 1,
            actions: 1,
        };
        let defs = fields(&[], one);
        let ptrs = || defs.iter().map(|d| d.pointer.as_str());
        assert_eq!(
            field_for("/trigger_group/triggers/0/for", ptrs()),
            Some("/trigger_group/triggers/0/for")
        );
        assert_eq!(
            field_for("/actions/0/params/grace_s", ptrs()),
            Some("/actions/0/params")
        );
        assert_eq!(
            field_for("/trigger_group/triggers/0/schedule/cron", ptrs()),
            Some("/trigger_group/triggers/0/schedule")
        );
        assert_eq!(
            field_for("/actions", ptrs()),
            Some("/actions/0/capability_id")
        );
        assert_eq!(field_for("", ptrs()), None);
        assert_eq!(field_for("/trigger_group/triggers/1/for", ptrs()), None);
    }

    #[test]
    fn the_fields_build_the_spec_over_its_base_and_drop_empty_rows() {
        let draft = Draft::of(vec![
            ("base".into(), r#"{"version":1,"trigger_group":{"triggers":[{"type":"ups.state"},{"type":"webhook.custom","name":"x"}]},"conditions":{"all":[{"scope":"ups"}]}}"#.into()),
            ("s:/name".into(), "Stop".into()),
            ("n:/priority".into(), "20".into()),
            ("n:/trigger_group/triggers/0/ups".into(), "".into()),
            ("s:/trigger_group/triggers/0/for".into(), "2m".into()),
            ("s:/conditions/all/0/scope".into(), "".into()),
            ("s:/conditions/all/2/field".into(), "".into()),
            ("j:/actions/0/params".into(), r#"{"grace_s": 5}"#.into()),
            ("s:/actions/0/verb".into(), "shutdown".into()),
        ]);
        assert_eq!(
            draft.spec_from_fields(),
            serde_json::json!({
                "version": 1,
                "name": "Stop",
                "priority": 20,
                "trigger_group": {"triggers": [
                    {"type": "ups.state", "for": "2m"},
                    {"type": "webhook.custom", "name": "x"},
                ]},
                "actions": [{"params": {"grace_s": 5}, "verb": "shutdown"}],
            })
        );
    }

    fn draft(op: &str, fields: &[(&str, &str)]) -> Draft {
        let mut pairs = vec![
            ("mode".to_string(), "wizard".to_string()),
            ("op".to_string(), op.to_string()),
            ("step".to_string(), "4".to_string()),
            ("base".to_string(), r#"{"version":1}"#.to_string()),
        ];
        pairs.extend(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Draft::of(pairs)
    }

    fn ids(view: &EditorView, step: usize) -> Vec<String> {
        view.steps[step - 1]
            .fields
            .iter()
            .map(|f| f.id.clone())
            .collect()
    }

    #[test]
    fn add_draws_one_more_empty_item_on_the_same_step_and_focuses_it() {
        let view = changed_items(
            draft(
                "add:actions",
                &[
                    ("s:/actions/0/capability_id", "proxmox.vm"),
                    ("s:/actions/0/verb", "shutdown"),
                ],
            ),
            &[],
        );
        assert_eq!(view.start_step, 4);
        assert_eq!(view.focus, "w-actions-1-capability_id");
        let step4 = ids(&view, 4);
        assert!(
            step4.contains(&"w-actions-1-params".to_string()),
            "{step4:?}"
        );
        let first = &view.steps[3].fields;
        let label = first
            .iter()
            .find(|f| f.id == "w-actions-1-verb")
            .map(|f| f.label.clone());
        assert_eq!(label.as_deref(), Some("Action 2: Action verb"));
        // The added item is empty: the spec keeps one action until it is filled.
        let base: Value = serde_json::from_str(&view.base).unwrap();
        assert_eq!(base["actions"].as_array().map(Vec::len), Some(1));
        // A second trigger starts as the default type, with its own fields.
        let view = changed_items(
            draft(
                "add:triggers",
                &[("s:/trigger_group/triggers/0/type", "timer.after")],
            ),
            &[],
        );
        let base: Value = serde_json::from_str(&view.base).unwrap();
        assert_eq!(
            base["trigger_group"]["triggers"],
            serde_json::json!([{"type": "timer.after"}, {"type": "ups.state"}])
        );
        let type_of_for = view.steps[1]
            .fields
            .iter()
            .find(|f| f.id == "w-trigger_group-triggers-1-for")
            .map(|f| f.type_field.clone());
        assert_eq!(
            type_of_for.as_deref(),
            Some("w-trigger_group-triggers-1-type")
        );
    }

    #[test]
    fn remove_takes_out_the_item_its_fields_named_even_after_an_empty_one() {
        // Condition 1 is empty, 2 and 3 are filled: Remove on condition 2
        // removes condition 2, not the one that moved into its place.
        let view = changed_items(
            draft(
                "remove:/conditions/all/1",
                &[
                    ("s:/conditions/all/0/scope", ""),
                    ("s:/conditions/all/1/scope", "ups"),
                    ("s:/conditions/all/1/field", "charge_pct"),
                    ("s:/conditions/all/2/scope", "host"),
                    ("s:/conditions/all/2/field", "reachable"),
                ],
            ),
            &[],
        );
        let base: Value = serde_json::from_str(&view.base).unwrap();
        assert_eq!(
            base["conditions"]["all"],
            serde_json::json!([{"scope": "host", "field": "reachable"}])
        );
        // The empty row the form had stays, after the kept condition.
        let scopes: Vec<&str> = view.steps[2]
            .fields
            .iter()
            .filter(|f| f.id.ends_with("-scope"))
            .map(|f| f.value.as_str())
            .collect();
        assert_eq!(scopes, ["host", ""]);
    }

    #[test]
    fn a_form_s_shape_is_one_past_its_highest_index_and_bounded() {
        let shape = Shape::of_pointers(
            [
                "/name",
                "/trigger_group/triggers/2/type",
                "/conditions/all/0/field",
                "/actions/1/verb",
                "/actions/999/verb",
            ]
            .into_iter(),
        );
        assert_eq!(
            shape,
            Shape {
                triggers: 3,
                conditions: 1,
                actions: 2
            }
        );
        let many = serde_json::json!({"actions": vec![serde_json::json!({}); 50]});
        assert_eq!(Shape::of_spec(&many).actions, MAX_ITEMS);
        assert_eq!(Shape::of_spec(&many).add("actions").actions, MAX_ITEMS);
    }
}
