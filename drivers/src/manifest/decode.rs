//! Decoding a manifest file: YAML text -> JSON value -> typed [`Manifest`],
//! by hand rather than with serde so that every problem of a file is
//! reported at once, each with a JSON-pointer path (`/capabilities/0/verbs`)
//! and a did-you-mean for unknown keys and names. Cross-field rules (verbs
//! named by `invertible`, `powers_off_host`, `results` and `repeatable`, defaults that fit
//! their own spec) are checked here too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use inventory::finding::{did_you_mean_hint, pointer_token};
use serde_json::{Map, Value};

use super::check::{check_value, kind, Rules};
use super::{
    default_discovery_interval_s, default_refresh_sla_s, Capability, Category, Defaults, Discovery,
    DryRunSupport, FieldSpec, HttpDefaults, Idempotency, InverseRule, Manifest, ManifestError,
    ParamSpec, RateLimit, Schema, SshDefaults, ValueType, VerbResult, KEY_PSEUDO_FIELDS,
};

/// Parses and validates one manifest file (see [`Manifest::from_yaml`]).
pub(super) fn manifest(file_name: &str, text: &str) -> Result<Manifest, Vec<ManifestError>> {
    let value = parse_yaml(file_name, text)?;
    let mut d = Decoder {
        file: file_name,
        errors: Vec::new(),
    };
    let manifest = decode_manifest(&mut d, &value);
    if let Some(m) = &manifest {
        let expected = expected_id(file_name);
        if m.id != expected {
            d.err(
                "/id",
                format!(
                    "id `{}` does not match the file name (expected `{expected}`)",
                    m.id
                ),
            );
        }
    }
    match manifest {
        Some(m) if d.errors.is_empty() => Ok(m),
        _ => Err(d.errors),
    }
}

const MANIFEST_KEYS: &[&str] = &[
    "id",
    "name",
    "version",
    "category",
    "description",
    "schema",
    "defaults",
    "capabilities",
    "discovery",
];
const SCHEMA_KEYS: &[&str] = &["connection", "require_one_of"];
const FIELD_KEYS: &[&str] = &[
    "type",
    "required",
    "default",
    "secret",
    "description",
    "allowed",
    "enum",
    "items",
    "min",
    "max",
];
const DEFAULTS_KEYS: &[&str] = &["dry_run_refresh_sla_s", "http", "ssh"];
const HTTP_KEYS: &[&str] = &[
    "timeout_s",
    "retries",
    "backoff_ms_start",
    "backoff_ms_max",
    "verify_tls",
];
const SSH_KEYS: &[&str] = &[
    "connect_timeout_s",
    "command_timeout_s",
    "retries",
    "backoff_ms_start",
    "backoff_ms_max",
];
const DISCOVERY_KEYS: &[&str] = &["interval_s"];
const CAPABILITY_KEYS: &[&str] = &[
    "id",
    "description",
    "verbs",
    "targets",
    "dry_run",
    "invertible",
    "idempotency",
    "rate_limit",
    "params",
    "powers_off_host",
    "results",
    "repeatable",
];
const RESULT_PARAM_KEYS: &[&str] = &["param", "values"];
const IDEMPOTENCY_KEYS: &[&str] = &["key_fields"];
const RATE_LIMIT_KEYS: &[&str] = &["rps", "burst"];
const PARAM_KEYS: &[&str] = &[
    "type",
    "allowed",
    "enum",
    "required",
    "default",
    "verbs",
    "state",
    "description",
    "items",
    "min",
    "max",
];
const RULE_KEYS: &[&str] = &["when", "inverse", "params"];

const CATEGORIES: &[(&str, Category)] = &[
    ("host-orchestrator", Category::HostOrchestrator),
    ("network", Category::Network),
    ("host", Category::Host),
    ("notifications", Category::Notifications),
    ("generic", Category::Generic),
];
const DRY_RUN: &[(&str, DryRunSupport)] = &[
    ("required", DryRunSupport::Required),
    ("optional", DryRunSupport::Optional),
    ("unsupported", DryRunSupport::Unsupported),
];

struct Decoder<'f> {
    file: &'f str,
    errors: Vec<ManifestError>,
}

type Obj = Map<String, Value>;

impl Decoder<'_> {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ManifestError {
            file: self.file.to_string(),
            field: path.to_string(),
            message: message.into(),
        });
    }

    /// A mapping whose keys are all in `known`; unknown keys are reported
    /// (with a did-you-mean) but the mapping is still decoded.
    fn object<'v>(&mut self, path: &str, v: &'v Value, known: &[&str]) -> Option<&'v Obj> {
        let Some(map) = v.as_object() else {
            self.err(path, format!("expected a mapping, found {}", kind(v)));
            return None;
        };
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                self.err(
                    &join(path, key),
                    unknown("field", key, known.iter().copied()),
                );
            }
        }
        Some(map)
    }

    /// An optional field (null counts as absent), decoded with `f`.
    fn opt<'v, T>(
        &mut self,
        path: &str,
        map: &'v Obj,
        key: &str,
        f: impl FnOnce(&mut Self, &str, &'v Value) -> Option<T>,
    ) -> Option<T> {
        match map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => f(self, &join(path, key), v),
        }
    }

    /// A required field, decoded with `f`; reports it when missing.
    fn req<'v, T>(
        &mut self,
        path: &str,
        map: &'v Obj,
        key: &str,
        f: impl FnOnce(&mut Self, &str, &'v Value) -> Option<T>,
    ) -> Option<T> {
        match map.get(key) {
            None | Some(Value::Null) => {
                self.err(&join(path, key), "missing required field");
                None
            }
            Some(v) => f(self, &join(path, key), v),
        }
    }

    fn string(&mut self, path: &str, v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.err(path, format!("expected a string, found {}", kind(other)));
                None
            }
        }
    }

    fn uint(&mut self, path: &str, v: &Value) -> Option<u64> {
        match (v.as_u64(), v.as_i64()) {
            (Some(n), _) => Some(n),
            (None, Some(negative)) => {
                self.err(path, format!("must not be negative, found {negative}"));
                None
            }
            (None, None) => {
                self.err(
                    path,
                    format!("expected a non-negative integer, found {}", kind(v)),
                );
                None
            }
        }
    }

    fn u32(&mut self, path: &str, v: &Value) -> Option<u32> {
        let n = self.uint(path, v)?;
        match u32::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                self.err(path, format!("{n} is too large"));
                None
            }
        }
    }

    fn positive(&mut self, path: &str, v: &Value) -> Option<u64> {
        match self.uint(path, v)? {
            0 => {
                self.err(path, "must be at least 1");
                None
            }
            n => Some(n),
        }
    }

    fn number(&mut self, path: &str, v: &Value) -> Option<f64> {
        match v.as_f64() {
            Some(n) => Some(n),
            None => {
                self.err(path, format!("expected a number, found {}", kind(v)));
                None
            }
        }
    }

    fn boolean(&mut self, path: &str, v: &Value) -> Option<bool> {
        match v.as_bool() {
            Some(b) => Some(b),
            None => {
                self.err(path, format!("expected true or false, found {}", kind(v)));
                None
            }
        }
    }

    fn strings(&mut self, path: &str, v: &Value) -> Option<Vec<String>> {
        let Some(items) = v.as_array() else {
            self.err(
                path,
                format!("expected a list of strings, found {}", kind(v)),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.string(&join(path, &i.to_string()), item) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A non-empty list of distinct ids.
    fn id_list(&mut self, path: &str, v: &Value, what: &str) -> Option<Vec<String>> {
        let list = self.strings(path, v)?;
        if list.is_empty() {
            self.err(path, format!("must list at least one {what}"));
        }
        let mut seen = BTreeSet::new();
        for (i, item) in list.iter().enumerate() {
            let p = join(path, &i.to_string());
            if !is_id(item) {
                self.err(&p, bad_id(what, item));
            } else if !seen.insert(item.as_str()) {
                self.err(&p, format!("{what} `{item}` is listed twice"));
            }
        }
        Some(list)
    }

    fn choice<T: Copy>(
        &mut self,
        path: &str,
        v: &Value,
        what: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let s = self.string(path, v)?;
        match options.iter().find(|(name, _)| *name == s) {
            Some((_, t)) => Some(*t),
            None => {
                self.err(path, unknown(what, &s, options.iter().map(|(n, _)| *n)));
                None
            }
        }
    }

    fn value_type(&mut self, path: &str, v: &Value) -> Option<ValueType> {
        let one = |d: &mut Self, path: &str, v: &Value| {
            let s = d.string(path, v)?;
            let t = ValueType::parse(&s);
            if t.is_none() {
                d.err(path, unknown("type", &s, TYPE_NAMES.iter().copied()));
            }
            t
        };
        match v {
            Value::Array(items) => {
                if items.len() < 2 {
                    self.err(path, "a list of types needs at least two members");
                }
                let types: Vec<Option<ValueType>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| one(self, &join(path, &i.to_string()), item))
                    .collect();
                let types: Option<Vec<ValueType>> = types.into_iter().collect();
                types.map(ValueType::OneOf)
            }
            other => one(self, path, other),
        }
    }

    fn mapping(&mut self, path: &str, v: &Value) -> Option<Obj> {
        match v.as_object() {
            Some(m) => Some(m.clone()),
            None => {
                self.err(path, format!("expected a mapping, found {}", kind(v)));
                None
            }
        }
    }

    fn allowed(&mut self, path: &str, map: &Obj) -> Option<Vec<Value>> {
        if map.contains_key("allowed") && map.contains_key("enum") {
            self.err(
                &join(path, "enum"),
                "give `allowed` or its alias `enum`, not both",
            );
        }
        let key = if map.contains_key("allowed") {
            "allowed"
        } else {
            "enum"
        };
        self.opt(path, map, key, |d, p, v| match v.as_array() {
            Some(list) if !list.is_empty() => Some(list.clone()),
            Some(_) => {
                d.err(p, "must list at least one value");
                None
            }
            None => {
                d.err(p, format!("expected a list of values, found {}", kind(v)));
                None
            }
        })
    }
}

fn decode_manifest(d: &mut Decoder, v: &Value) -> Option<Manifest> {
    let m = d.object("", v, MANIFEST_KEYS)?;
    let id = d.req("", m, "id", |d, p, v| {
        let s = d.string(p, v)?;
        if !is_id(&s) {
            d.err(p, bad_id("manifest id", &s));
        }
        Some(s)
    });
    let name = d.req("", m, "name", Decoder::string);
    let version = d.req("", m, "version", |d, p, v| {
        if let Value::Number(n) = v {
            d.err(p, format!("`{n}` is not a version like 1.2.3"));
            return None;
        }
        let s = d.string(p, v)?;
        if !is_semver(&s) {
            d.err(p, format!("`{s}` is not a version like 1.2.3"));
        }
        Some(s)
    });
    let category = d.req("", m, "category", |d, p, v| {
        d.choice(p, v, "category", CATEGORIES)
    });
    let description = d.opt("", m, "description", Decoder::string);
    let schema = d.opt("", m, "schema", decode_schema).unwrap_or_default();
    let defaults = d
        .opt("", m, "defaults", decode_defaults)
        .unwrap_or_default();
    let discovery = d
        .opt("", m, "discovery", decode_discovery)
        .unwrap_or_default();
    let capabilities = d.req("", m, "capabilities", |d, p, v| {
        let Some(items) = v.as_array() else {
            d.err(
                p,
                format!("expected a list of capabilities, found {}", kind(v)),
            );
            return None;
        };
        if items.is_empty() {
            d.err(p, "must list at least one capability");
        }
        let mut caps = Vec::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            let cp = join(p, &i.to_string());
            if let Some(cap) = decode_capability(d, &cp, item) {
                if !seen.insert(cap.id.clone()) {
                    d.err(
                        &join(&cp, "id"),
                        format!("capability `{}` is declared twice", cap.id),
                    );
                }
                caps.push(cap);
            }
        }
        Some(caps)
    });
    Some(Manifest {
        id: id?,
        name: name?,
        version: version?,
        category: category?,
        description,
        schema,
        defaults,
        capabilities: capabilities?,
        discovery,
    })
}

fn decode_schema(d: &mut Decoder, path: &str, v: &Value) -> Option<Schema> {
    let m = d.object(path, v, SCHEMA_KEYS)?;
    let connection = d
        .opt(path, m, "connection", |d, p, v| {
            let fields = v.as_object().or_else(|| {
                d.err(
                    p,
                    format!("expected a mapping of fields, found {}", kind(v)),
                );
                None
            })?;
            let mut out = BTreeMap::new();
            for (name, spec) in fields {
                let fp = join(p, name);
                if !is_name(name) {
                    d.err(&fp, bad_name("field", name));
                }
                if let Some(f) = decode_field(d, &fp, spec) {
                    out.insert(name.clone(), f);
                }
            }
            Some(out)
        })
        .unwrap_or_default();
    let require_one_of = d
        .opt(path, m, "require_one_of", |d, p, v| {
            let Some(groups) = v.as_array() else {
                d.err(
                    p,
                    format!("expected a list of lists of field names, found {}", kind(v)),
                );
                return None;
            };
            let mut out = Vec::new();
            for (i, group) in groups.iter().enumerate() {
                let gp = join(p, &i.to_string());
                let Some(names) = d.strings(&gp, group) else {
                    continue;
                };
                for (j, name) in names.iter().enumerate() {
                    if !connection.contains_key(name) {
                        d.err(
                            &join(&gp, &j.to_string()),
                            unknown(
                                "connection field",
                                name,
                                connection.keys().map(String::as_str),
                            ),
                        );
                    }
                }
                out.push(names);
            }
            Some(out)
        })
        .unwrap_or_default();
    Some(Schema {
        connection,
        require_one_of,
    })
}

fn decode_field(d: &mut Decoder, path: &str, v: &Value) -> Option<FieldSpec> {
    let m = d.object(path, v, FIELD_KEYS)?;
    let ty = d.req(path, m, "type", Decoder::value_type);
    let required = d
        .opt(path, m, "required", Decoder::boolean)
        .unwrap_or(false);
    let secret = d.opt(path, m, "secret", Decoder::boolean).unwrap_or(false);
    let description = d.opt(path, m, "description", Decoder::string);
    let allowed = d.allowed(path, m);
    let items = d.opt(path, m, "items", Decoder::value_type);
    let min = d.opt(path, m, "min", Decoder::number);
    let max = d.opt(path, m, "max", Decoder::number);
    let default = m.get("default").filter(|v| !v.is_null()).cloned();
    let field = FieldSpec {
        ty: ty?,
        required,
        default,
        secret,
        description,
        allowed,
        items,
        min,
        max,
    };
    check_rules(
        d,
        path,
        &Rules {
            ty: &field.ty,
            allowed: field.allowed.as_deref(),
            items: field.items.as_ref(),
            min: field.min,
            max: field.max,
        },
        field.default.as_ref(),
    );
    if field.required && field.default.is_some() {
        d.err(
            &join(path, "default"),
            "a required field cannot have a default",
        );
    }
    if field.secret && field.default.is_some() {
        d.err(
            &join(path, "default"),
            "a secret field cannot have a default",
        );
    }
    Some(field)
}

fn decode_defaults(d: &mut Decoder, path: &str, v: &Value) -> Option<Defaults> {
    let m = d.object(path, v, DEFAULTS_KEYS)?;
    let dry_run_refresh_sla_s = d
        .opt(path, m, "dry_run_refresh_sla_s", Decoder::positive)
        .unwrap_or_else(default_refresh_sla_s);
    let http = d.opt(path, m, "http", |d, p, v| {
        let h = d.object(p, v, HTTP_KEYS)?;
        let base = HttpDefaults::default();
        Some(HttpDefaults {
            timeout_s: d
                .opt(p, h, "timeout_s", Decoder::positive)
                .unwrap_or(base.timeout_s),
            retries: d.opt(p, h, "retries", Decoder::u32).unwrap_or(base.retries),
            backoff_ms_start: d
                .opt(p, h, "backoff_ms_start", Decoder::uint)
                .unwrap_or(base.backoff_ms_start),
            backoff_ms_max: d
                .opt(p, h, "backoff_ms_max", Decoder::uint)
                .unwrap_or(base.backoff_ms_max),
            verify_tls: d
                .opt(p, h, "verify_tls", Decoder::boolean)
                .unwrap_or(base.verify_tls),
        })
    });
    let ssh = d.opt(path, m, "ssh", |d, p, v| {
        let s = d.object(p, v, SSH_KEYS)?;
        let base = SshDefaults::default();
        Some(SshDefaults {
            connect_timeout_s: d
                .opt(p, s, "connect_timeout_s", Decoder::positive)
                .unwrap_or(base.connect_timeout_s),
            command_timeout_s: d
                .opt(p, s, "command_timeout_s", Decoder::positive)
                .unwrap_or(base.command_timeout_s),
            retries: d.opt(p, s, "retries", Decoder::u32).unwrap_or(base.retries),
            backoff_ms_start: d
                .opt(p, s, "backoff_ms_start", Decoder::uint)
                .unwrap_or(base.backoff_ms_start),
            backoff_ms_max: d
                .opt(p, s, "backoff_ms_max", Decoder::uint)
                .unwrap_or(base.backoff_ms_max),
        })
    });
    for (key, start, max) in [
        (
            "http",
            http.as_ref().map(|h| h.backoff_ms_start),
            http.as_ref().map(|h| h.backoff_ms_max),
        ),
        (
            "ssh",
            ssh.as_ref().map(|s| s.backoff_ms_start),
            ssh.as_ref().map(|s| s.backoff_ms_max),
        ),
    ] {
        if let (Some(start), Some(max)) = (start, max) {
            if max < start {
                d.err(
                    &join(&join(path, key), "backoff_ms_max"),
                    format!("{max} is below backoff_ms_start ({start})"),
                );
            }
        }
    }
    Some(Defaults {
        dry_run_refresh_sla_s,
        http,
        ssh,
    })
}

fn decode_discovery(d: &mut Decoder, path: &str, v: &Value) -> Option<Discovery> {
    let m = d.object(path, v, DISCOVERY_KEYS)?;
    Some(Discovery {
        interval_s: d
            .opt(path, m, "interval_s", Decoder::positive)
            .unwrap_or_else(default_discovery_interval_s),
    })
}

fn decode_capability(d: &mut Decoder, path: &str, v: &Value) -> Option<Capability> {
    let m = d.object(path, v, CAPABILITY_KEYS)?;
    let id = d.req(path, m, "id", |d, p, v| {
        let s = d.string(p, v)?;
        if !is_id(&s) {
            d.err(p, bad_id("capability id", &s));
        }
        Some(s)
    });
    let description = d.opt(path, m, "description", Decoder::string);
    let verbs = d.req(path, m, "verbs", |d, p, v| d.id_list(p, v, "verb"));
    let targets = d.req(path, m, "targets", |d, p, v| d.id_list(p, v, "target type"));
    let dry_run = d
        .opt(path, m, "dry_run", |d, p, v| {
            d.choice(p, v, "dry_run mode", DRY_RUN)
        })
        .unwrap_or(DryRunSupport::Required);
    let params = d.opt(path, m, "params", decode_params);
    let key_fields = d.opt(path, m, "idempotency", |d, p, v| {
        let i = d.object(p, v, IDEMPOTENCY_KEYS)?;
        d.opt(p, i, "key_fields", Decoder::strings)
    });
    let rate_limit = d.opt(path, m, "rate_limit", |d, p, v| {
        let r = d.object(p, v, RATE_LIMIT_KEYS)?;
        let rps = d.req(p, r, "rps", |d, p, v| {
            d.positive(p, v).and_then(|n| d.u32(p, &n.into()))
        });
        let burst = d.opt(p, r, "burst", |d, p, v| {
            d.positive(p, v).and_then(|n| d.u32(p, &n.into()))
        });
        rps.map(|rps| RateLimit {
            rps,
            burst: burst.unwrap_or(rps),
        })
    });
    let powers_off = d.opt(path, m, "powers_off_host", |d, p, v| match v {
        Value::Bool(true) => Some(verbs.clone().unwrap_or_default()),
        Value::Bool(false) => Some(Vec::new()),
        other => {
            let list = d.strings(p, other)?;
            check_verbs(d, p, &list, verbs.as_deref());
            Some(list)
        }
    });
    let invertible = d.opt(path, m, "invertible", decode_invertible);
    let results = d.opt(path, m, "results", decode_results);
    let repeatable = d.opt(path, m, "repeatable", |d, p, v| {
        let list = d.strings(p, v)?;
        check_verbs(d, p, &list, verbs.as_deref());
        Some(list)
    });

    let verbs = verbs?;
    let params = params.unwrap_or_default();
    let key_fields = key_fields.unwrap_or_default();
    for (name, spec) in &params {
        if let Some(list) = &spec.verbs {
            check_verbs(
                d,
                &join(&join(&join(path, "params"), name), "verbs"),
                list,
                Some(&verbs),
            );
        }
    }
    for (i, field) in key_fields.iter().enumerate() {
        if !KEY_PSEUDO_FIELDS.contains(&field.as_str()) && !params.contains_key(field) {
            let candidates = KEY_PSEUDO_FIELDS
                .iter()
                .copied()
                .chain(params.keys().map(String::as_str));
            d.err(
                &join(
                    &join(&join(path, "idempotency"), "key_fields"),
                    &i.to_string(),
                ),
                unknown("key field", field, candidates),
            );
        }
    }
    let invertible = invertible.unwrap_or_default();
    check_invertible(d, &join(path, "invertible"), &invertible, &verbs, &params);
    let invertible = invertible
        .into_iter()
        .map(|(verb, rules)| (verb, rules.into_iter().map(|(_, r)| r).collect::<Vec<_>>()))
        .filter(|(_, rules)| !rules.is_empty())
        .collect();
    let results = results.unwrap_or_default();
    check_results(d, &join(path, "results"), &results, &verbs, &params);
    let repeatable = repeatable.unwrap_or_default();
    for (i, verb) in repeatable.iter().enumerate() {
        if verbs.contains(verb) && !results.contains_key(verb) {
            d.err(
                &join(&join(path, "repeatable"), &i.to_string()),
                format!(
                    "verb `{verb}` has no `results` entry: a verb is repeated only where its effect can be read"
                ),
            );
        }
    }
    Some(Capability {
        id: id?,
        description,
        verbs,
        targets: targets?,
        dry_run,
        invertible,
        idempotency: Idempotency { key_fields },
        rate_limit,
        params,
        powers_off_host: powers_off.unwrap_or_default(),
        results,
        repeatable,
    })
}

fn check_verbs(d: &mut Decoder, path: &str, list: &[String], verbs: Option<&[String]>) {
    let Some(verbs) = verbs else { return };
    for (i, verb) in list.iter().enumerate() {
        if !verbs.contains(verb) {
            d.err(
                &join(path, &i.to_string()),
                unknown("verb", verb, verbs.iter().map(String::as_str)),
            );
        }
    }
}

fn decode_params(d: &mut Decoder, path: &str, v: &Value) -> Option<BTreeMap<String, ParamSpec>> {
    let Some(map) = v.as_object() else {
        d.err(
            path,
            format!("expected a mapping of params, found {}", kind(v)),
        );
        return None;
    };
    let mut out = BTreeMap::new();
    for (name, spec) in map {
        let pp = join(path, name);
        if !is_name(name) {
            d.err(&pp, bad_name("param", name));
        }
        if let Some(p) = decode_param(d, &pp, spec) {
            out.insert(name.clone(), p);
        }
    }
    Some(out)
}

fn decode_param(d: &mut Decoder, path: &str, v: &Value) -> Option<ParamSpec> {
    let m = d.object(path, v, PARAM_KEYS)?;
    let ty = d.req(path, m, "type", Decoder::value_type);
    let allowed = d.allowed(path, m);
    let required = d
        .opt(path, m, "required", Decoder::boolean)
        .unwrap_or(false);
    let verbs = d.opt(path, m, "verbs", |d, p, v| d.id_list(p, v, "verb"));
    let state = d.opt(path, m, "state", Decoder::boolean).unwrap_or(false);
    let description = d.opt(path, m, "description", Decoder::string);
    let items = d.opt(path, m, "items", Decoder::value_type);
    let min = d.opt(path, m, "min", Decoder::number);
    let max = d.opt(path, m, "max", Decoder::number);
    let default = m.get("default").filter(|v| !v.is_null()).cloned();
    let param = ParamSpec {
        ty: ty?,
        allowed,
        required,
        default,
        verbs,
        state,
        description,
        items,
        min,
        max,
    };
    check_rules(
        d,
        path,
        &Rules {
            ty: &param.ty,
            allowed: param.allowed.as_deref(),
            items: param.items.as_ref(),
            min: param.min,
            max: param.max,
        },
        param.default.as_ref(),
    );
    if param.required && param.default.is_some() {
        d.err(
            &join(path, "default"),
            "a required param cannot have a default",
        );
    }
    Some(param)
}

/// Checks that the allowed values and the default of a field or param fit its own rules.
fn check_rules(d: &mut Decoder, path: &str, rules: &Rules, default: Option<&Value>) {
    if let Some(allowed) = rules.allowed {
        for (i, value) in allowed.iter().enumerate() {
            if !rules.ty.accepts(value) {
                d.err(
                    &join(&join(path, "allowed"), &i.to_string()),
                    format!("expected {}, found {}", rules.ty, kind(value)),
                );
            }
        }
    }
    if let (Some(min), Some(max)) = (rules.min, rules.max) {
        if min > max {
            d.err(&join(path, "max"), format!("{max} is below min ({min})"));
        }
    }
    if rules.items.is_some() && !rules.ty.accepts(&Value::Array(Vec::new())) {
        d.err(
            &join(path, "items"),
            format!("`items` needs type array, not {}", rules.ty),
        );
    }
    if let Some(default) = default {
        if let Err(why) = check_value(rules, default, true) {
            d.err(
                &join(path, "default"),
                format!("default does not fit: {why}"),
            );
        }
    }
}

/// Inverse rules by forward verb, each with its path in the file (the plain
/// form `start: { inverse: shutdown }` has no index in its path).
type RulesAt = BTreeMap<String, Vec<(String, InverseRule)>>;

fn decode_invertible(d: &mut Decoder, path: &str, v: &Value) -> Option<RulesAt> {
    let Some(map) = v.as_object() else {
        d.err(
            path,
            format!("expected a mapping of verb to inverse, found {}", kind(v)),
        );
        return None;
    };
    let mut out = BTreeMap::new();
    for (verb, spec) in map {
        let vp = join(path, verb);
        let rules = match spec {
            Value::Null => Vec::new(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let rp = join(&vp, &i.to_string());
                    decode_rule(d, &rp, item).map(|r| (rp, r))
                })
                .collect(),
            other => decode_rule(d, &vp, other)
                .map(|r| (vp.clone(), r))
                .into_iter()
                .collect(),
        };
        out.insert(verb.clone(), rules);
    }
    Some(out)
}

fn decode_rule(d: &mut Decoder, path: &str, v: &Value) -> Option<InverseRule> {
    if let Value::String(s) = v {
        d.err(
            path,
            format!("expected a mapping like {{ inverse: {s} }}, found a string"),
        );
        return None;
    }
    let m = d.object(path, v, RULE_KEYS)?;
    let inverse = d.req(path, m, "inverse", Decoder::string);
    let when = d.opt(path, m, "when", Decoder::mapping).unwrap_or_default();
    let params = d
        .opt(path, m, "params", Decoder::mapping)
        .unwrap_or_default();
    Some(InverseRule {
        when,
        inverse: inverse?,
        params,
    })
}

/// Every verb, rule and param value of `invertible` must be declared, and
/// no rule may hide behind a catch-all rule above it.
fn check_invertible(
    d: &mut Decoder,
    path: &str,
    invertible: &RulesAt,
    verbs: &[String],
    params: &BTreeMap<String, ParamSpec>,
) {
    let declared = || verbs.iter().map(String::as_str);
    for (verb, rules) in invertible {
        if !verbs.contains(verb) {
            d.err(&join(path, verb), unknown("verb", verb, declared()));
            continue;
        }
        let mut catch_all_at: Option<usize> = None;
        for (i, (rp, rule)) in rules.iter().enumerate() {
            if let Some(at) = catch_all_at {
                d.err(
                    rp,
                    format!("never used: rule {at} above matches every action"),
                );
            } else if rule.when.is_empty() {
                catch_all_at = Some(i);
            }
            if !verbs.contains(&rule.inverse) {
                d.err(
                    &join(rp, "inverse"),
                    unknown("verb", &rule.inverse, declared()),
                );
                continue;
            }
            check_param_values(d, &join(rp, "when"), &rule.when, verb, params);
            check_param_values(d, &join(rp, "params"), &rule.params, &rule.inverse, params);
        }
    }
}

/// `results`: verb -> a status, a list of statuses, or `{ param, values }`.
fn decode_results(d: &mut Decoder, path: &str, v: &Value) -> Option<BTreeMap<String, VerbResult>> {
    let Some(map) = v.as_object() else {
        d.err(
            path,
            format!("expected a mapping of verb to status, found {}", kind(v)),
        );
        return None;
    };
    let mut out = BTreeMap::new();
    for (verb, spec) in map {
        let vp = join(path, verb);
        let result = match spec {
            Value::Object(_) => {
                let m = d.object(&vp, spec, RESULT_PARAM_KEYS)?;
                let param = d.req(&vp, m, "param", Decoder::string);
                let values = d
                    .opt(&vp, m, "values", |d, p, v| {
                        let Some(vm) = v.as_object() else {
                            d.err(
                                p,
                                format!("expected a mapping of value to status, found {}", kind(v)),
                            );
                            return None;
                        };
                        let mut values = BTreeMap::new();
                        for (value, statuses) in vm {
                            if let Some(list) = decode_statuses(d, &join(p, value), statuses) {
                                values.insert(value.clone(), list);
                            }
                        }
                        Some(values)
                    })
                    .unwrap_or_default();
                param.map(|param| VerbResult::Param { param, values })
            }
            other => decode_statuses(d, &vp, other).map(VerbResult::Statuses),
        };
        if let Some(result) = result {
            out.insert(verb.clone(), result);
        }
    }
    Some(out)
}

/// One status (`stopped`) or a non-empty list of them (`[running, active]`).
fn decode_statuses(d: &mut Decoder, path: &str, v: &Value) -> Option<Vec<String>> {
    let list = match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(_) => d.strings(path, v)?,
        other => {
            d.err(
                path,
                format!(
                    "expected a status or a list of statuses, found {}",
                    kind(other)
                ),
            );
            return None;
        }
    };
    if list.is_empty() {
        d.err(path, "must list at least one status");
        return None;
    }
    for (i, status) in list.iter().enumerate() {
        if status.trim().is_empty() {
            d.err(&join(path, &i.to_string()), "a status cannot be empty");
        }
    }
    Some(list)
}

/// Every verb of `results` must be declared; a `{ param }` result must name
/// a string param of that verb, and its `values` values that param accepts.
fn check_results(
    d: &mut Decoder,
    path: &str,
    results: &BTreeMap<String, VerbResult>,
    verbs: &[String],
    params: &BTreeMap<String, ParamSpec>,
) {
    for (verb, result) in results {
        let vp = join(path, verb);
        if !verbs.contains(verb) {
            d.err(&vp, unknown("verb", verb, verbs.iter().map(String::as_str)));
            continue;
        }
        let VerbResult::Param { param, values } = result else {
            continue;
        };
        let pp = join(&vp, "param");
        match params.get(param) {
            None => d.err(
                &pp,
                unknown("param", param, params.keys().map(String::as_str)),
            ),
            Some(spec) if !spec.applies_to(verb) => d.err(
                &pp,
                format!("param `{param}` does not apply to verb `{verb}`"),
            ),
            Some(spec) if !spec.ty.accepts(&Value::String(String::new())) => d.err(
                &pp,
                format!(
                    "param `{param}` is {}: a status follows a string param",
                    spec.ty
                ),
            ),
            Some(spec) => {
                for value in values.keys() {
                    if let Err(why) = spec.check(&Value::String(value.clone())) {
                        d.err(&join(&join(&vp, "values"), value), why);
                    }
                }
            }
        }
    }
}

fn check_param_values(
    d: &mut Decoder,
    path: &str,
    values: &Map<String, Value>,
    verb: &str,
    params: &BTreeMap<String, ParamSpec>,
) {
    for (name, value) in values {
        let pp = join(path, name);
        match params.get(name) {
            None => d.err(
                &pp,
                unknown("param", name, params.keys().map(String::as_str)),
            ),
            Some(spec) if !spec.applies_to(verb) => d.err(
                &pp,
                format!("param `{name}` does not apply to verb `{verb}`"),
            ),
            Some(spec) => {
                if let Err(why) = spec.check(value) {
                    d.err(&pp, why);
                }
            }
        }
    }
}

const TYPE_NAMES: &[&str] = &[
    "string", "integer", "int", "number", "boolean", "bool", "object", "array", "any",
];

impl ValueType {
    fn parse(name: &str) -> Option<ValueType> {
        Some(match name {
            "string" => ValueType::String,
            "integer" | "int" => ValueType::Integer,
            "number" => ValueType::Number,
            "boolean" | "bool" => ValueType::Boolean,
            "object" => ValueType::Object,
            "array" => ValueType::Array,
            "any" => ValueType::Any,
            _ => return None,
        })
    }
}

fn parse_yaml(file: &str, text: &str) -> Result<Value, Vec<ManifestError>> {
    let whole = |message: String| {
        vec![ManifestError {
            file: file.to_string(),
            field: String::new(),
            message,
        }]
    };
    let yaml: serde_norway::Value =
        serde_norway::from_str(text).map_err(|e| whole(format!("invalid yaml: {e}")))?;
    serde_json::to_value(yaml).map_err(|e| whole(format!("invalid yaml: {e}")))
}

/// `proxmox.ve.yaml` (or `/dir/proxmox.ve.yml`) -> `proxmox.ve`.
fn expected_id(file_name: &str) -> &str {
    let base = Path::new(file_name)
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or(file_name);
    base.strip_suffix(".yaml")
        .or_else(|| base.strip_suffix(".yml"))
        .unwrap_or(base)
}

fn join(path: &str, key: &str) -> String {
    format!("{path}/{}", pointer_token(key))
}

/// A dotted, lowercase id: `proxmox.vm`, `poe-port`, `set`.
fn is_id(s: &str) -> bool {
    s.split('.').all(|part| {
        part.starts_with(|c: char| c.is_ascii_lowercase())
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    })
}

/// A field or param name: `grace_s`, `token_id`.
fn is_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `MAJOR.MINOR.PATCH` with an optional `-pre` or `+build` suffix.
fn is_semver(s: &str) -> bool {
    let core = s.split(['-', '+']).next().unwrap_or("");
    let rest = &s[core.len()..];
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_digit())
                && (p.len() == 1 || !p.starts_with('0'))
        })
        && (rest.is_empty() || rest.len() > 1)
}

fn bad_id(what: &str, s: &str) -> String {
    format!("{what} `{s}` must be lowercase dotted words (letters, digits, `-`, `_`)")
}

fn bad_name(what: &str, s: &str) -> String {
    format!("{what} name `{s}` must be lowercase letters, digits and `_`")
}

/// "unknown field `verbz` (did you mean `verbs`?)", or the list of known
/// names when none is close.
fn unknown<'a>(what: &str, word: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let hint = did_you_mean_hint(word, known).unwrap_or_else(|| "none are declared".to_owned());
    format!("unknown {what} `{word}` ({hint})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_must_look_like_semver() {
        for good in ["1.0.0", "0.1.10", "2.3.4-rc.1", "1.0.0+build5"] {
            assert!(is_semver(good), "{good}");
        }
        for bad in ["1.0", "v1.0.0", "1.0.x", "01.0.0", "1.0.0-", ""] {
            assert!(!is_semver(bad), "{bad}");
        }
    }

    #[test]
    fn ids_are_lowercase_dotted_words() {
        assert!(is_id("proxmox.vm"));
        assert!(is_id("poe-port"));
        assert!(!is_id("Proxmox.vm"));
        assert!(!is_id("proxmox..vm"));
        assert!(!is_id(""));
    }

    #[test]
    fn the_expected_id_is_the_file_name_without_extension() {
        assert_eq!(expected_id("plugin-specs/proxmox.ve.yaml"), "proxmox.ve");
        assert_eq!(expected_id("linux.ssh.yml"), "linux.ssh");
    }
}
