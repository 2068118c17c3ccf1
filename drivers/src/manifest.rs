//! Plugin manifests (SPEC §7): the data file each driver ships in
//! `plugin-specs/<id>.yaml`, saying what the driver can do (capabilities,
//! verbs, target types, params, inverses, rate limits) and what a host of
//! that kind must configure. Compile checks policies against these types
//! instead of against driver code, so a manifest is the contract between a
//! policy author and a driver.
//!
//! Loading reports every problem of every file at once, each with the file,
//! a JSON-pointer path (`/capabilities/0/verbs`) and why. The format is
//! documented field by field in `docs/manifest-format.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use inventory::finding::{did_you_mean, pointer_token, Finding, Severity};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

/// The manifests shipped with Hazel, compiled into the binary so it works
/// without a plugin directory: `(file name, YAML text)`.
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "aruba.aoss.yaml",
        include_str!("../../plugin-specs/aruba.aoss.yaml"),
    ),
    (
        "http.webhook.yaml",
        include_str!("../../plugin-specs/http.webhook.yaml"),
    ),
    (
        "linux.ssh.yaml",
        include_str!("../../plugin-specs/linux.ssh.yaml"),
    ),
    (
        "proxmox.ve.yaml",
        include_str!("../../plugin-specs/proxmox.ve.yaml"),
    ),
];

/// Key fields that are not params: they name parts of the key that are
/// always there anyway, and are accepted in `idempotency.key_fields`.
pub const KEY_PSEUDO_FIELDS: &[&str] = &["capability", "verb", "target", "target_id"];

/// One driver's manifest, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    /// Dotted plugin id, equal to the file name without `.yaml` (`proxmox.ve`).
    pub id: String,
    /// Human name (`Proxmox VE`).
    pub name: String,
    /// Semver of the manifest (`1.0.0`).
    pub version: String,
    pub category: Category,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What a host of this plugin must configure.
    pub schema: Schema,
    pub defaults: Defaults,
    pub capabilities: Vec<Capability>,
    pub discovery: Discovery,
}

/// What kind of thing a plugin drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    HostOrchestrator,
    Network,
    Host,
    Notifications,
    Generic,
}

/// The connection schema of a host (`schema` in the YAML).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Schema {
    /// Connection fields by name.
    pub connection: BTreeMap<String, FieldSpec>,
    /// Groups of fields of which at least one must be set (`[[password, private_key]]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub require_one_of: Vec<Vec<String>>,
}

/// The type of a connection field or action param. YAML accepts both the
/// JSON-Schema spelling (`integer`, `boolean`) and the short one (`int`,
/// `bool`); a list (`[object, string]`) accepts any of its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueType {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    Array,
    Any,
    /// Any one of these types (`[object, string]`).
    OneOf(Vec<ValueType>),
}

/// The type of a connection field.
pub type FieldType = ValueType;
/// The type of an action param.
pub type ParamType = ValueType;

/// One connection field of a host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldSpec {
    #[serde(rename = "type")]
    pub ty: FieldType,
    pub required: bool,
    /// Filled in when the host config leaves the field out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Masked everywhere it could be shown (Debug, API, logs).
    pub secret: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The only values accepted (`enum` is accepted as an alias in YAML).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<Value>>,
    /// Element type of an `array` field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<FieldType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// Manifest-wide defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Defaults {
    /// Budget of a fast inventory refresh before a dry-run (SPEC §5), seconds.
    pub dry_run_refresh_sla_s: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpDefaults>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshDefaults>,
}

/// Call settings of HTTP-based drivers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpDefaults {
    /// Timeout of one request.
    pub timeout_s: u64,
    /// Retries of a retryable failure (not counting the first call).
    pub retries: u32,
    /// First backoff delay; doubles each retry up to `backoff_ms_max`.
    pub backoff_ms_start: u64,
    pub backoff_ms_max: u64,
    pub verify_tls: bool,
}

/// Call settings of SSH-based drivers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SshDefaults {
    /// TCP connect + handshake + auth.
    pub connect_timeout_s: u64,
    /// One command (or CLI session) once logged in.
    pub command_timeout_s: u64,
    pub retries: u32,
    pub backoff_ms_start: u64,
    pub backoff_ms_max: u64,
}

/// Background discovery settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Discovery {
    /// Seconds between two full discoveries of a host.
    pub interval_s: u64,
}

/// One capability: a family of verbs over one or more target types.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capability {
    /// Dotted id, unique across all manifests (`proxmox.vm`).
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub verbs: Vec<String>,
    /// Target types the verbs act on (`vm`, `poe-port`).
    pub targets: Vec<String>,
    pub dry_run: DryRunSupport,
    /// Inverse rules by forward verb; first matching rule wins.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub invertible: BTreeMap<String, Vec<InverseRule>>,
    pub idempotency: Idempotency,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamSpec>,
    /// Verbs that power off (or reboot) the host itself; on the agent's own
    /// host (`self: true`) they run last, after the ledger is flushed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub powers_off_host: Vec<String>,
}

/// How a capability answers dry-runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DryRunSupport {
    /// Real preconditions read from the device; a failing dry-run blocks Enable.
    Required,
    /// A preview without device reads; the answer never blocks Enable.
    Optional,
    /// No dry-run; preflight reports a warning instead.
    Unsupported,
}

/// One inverse rule: when the forward action's params match `when`, its
/// inverse is `inverse` with `params` set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InverseRule {
    /// Param values the forward action must have (defaults applied); empty matches always.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub when: Map<String, Value>,
    /// The inverse verb.
    pub inverse: String,
    /// Params the inverse action gets.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
}

/// Extra idempotency key fields.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Idempotency {
    /// Param names (or [`KEY_PSEUDO_FIELDS`]) added to the key; they never
    /// remove the state-changing params.
    pub key_fields: Vec<String>,
}

/// Device calls a driver may make per host and capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    /// Sustained calls per second.
    pub rps: u32,
    /// Calls allowed at once after a quiet period.
    pub burst: u32,
}

/// One action param of a capability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamSpec {
    #[serde(rename = "type")]
    pub ty: ParamType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<Value>>,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// The verbs this param applies to; `None` means all of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verbs: Option<Vec<String>>,
    /// State-changing: part of the idempotency key.
    pub state: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<ParamType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// An action that undoes another: the verb and params to run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inverse {
    pub verb: String,
    pub params: Map<String, Value>,
}

/// One problem with a param of an action, found by [`Capability::check_params`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamProblem {
    /// The param name (empty when the problem is the verb itself).
    pub param: String,
    pub message: String,
    pub hint: Option<String>,
}

/// One problem in one manifest file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{file}: {}: {message}", if .field.is_empty() { "/" } else { .field.as_str() })]
pub struct ManifestError {
    /// The file as the loader was given it.
    pub file: String,
    /// JSON pointer to the offending field (`/capabilities/0/verbs`); empty for the whole file.
    pub field: String,
    /// Why, lowercase.
    pub message: String,
}

/// The shipped manifests, parsed once per process.
pub fn shipped() -> &'static ManifestSet {
    static SHIPPED: std::sync::OnceLock<ManifestSet> = std::sync::OnceLock::new();
    SHIPPED.get_or_init(ManifestSet::parse_embedded)
}

/// Every loaded manifest, by id, with capability ids unique across all.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ManifestSet {
    manifests: BTreeMap<String, Manifest>,
}

impl Manifest {
    /// Parses and validates one manifest. `file_name` is used in errors and
    /// must be `<id>.yaml` (or `.yml`); a path is fine, only its last part counts.
    pub fn from_yaml(file_name: &str, text: &str) -> Result<Manifest, Vec<ManifestError>> {
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

    /// Every target type any capability acts on.
    pub fn target_types(&self) -> BTreeSet<&str> {
        self.capabilities
            .iter()
            .flat_map(|c| c.targets.iter().map(String::as_str))
            .collect()
    }

    /// The capability with this id.
    pub fn capability(&self, id: &str) -> Option<&Capability> {
        self.capabilities.iter().find(|c| c.id == id)
    }

    /// Names of the connection fields marked `secret: true`.
    pub fn secret_fields(&self) -> impl Iterator<Item = &str> {
        self.schema
            .connection
            .iter()
            .filter(|(_, f)| f.secret)
            .map(|(n, _)| n.as_str())
    }

    /// The fast-refresh budget of a dry-run.
    pub fn refresh_sla(&self) -> Duration {
        Duration::from_secs(self.defaults.dry_run_refresh_sla_s)
    }
}

impl Capability {
    pub fn has_verb(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }

    pub fn has_target(&self, target_type: &str) -> bool {
        self.targets.iter().any(|t| t == target_type)
    }

    /// Whether `verb` powers off or reboots the host (see [`Capability::powers_off_host`]).
    pub fn powers_off(&self, verb: &str) -> bool {
        self.powers_off_host.iter().any(|v| v == verb)
    }

    /// Whether any inverse rule is declared for `verb` (it may still not
    /// match every param value, e.g. `set state=cycle`).
    pub fn is_invertible(&self, verb: &str) -> bool {
        self.invertible.get(verb).is_some_and(|r| !r.is_empty())
    }

    /// The params that apply to `verb`, by name.
    pub fn params_for<'a>(
        &'a self,
        verb: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a ParamSpec)> + 'a {
        self.params
            .iter()
            .filter(move |(_, p)| p.applies_to(verb))
            .map(|(n, p)| (n.as_str(), p))
    }

    /// The params of `verb` that go into its idempotency key: the
    /// state-changing ones plus the `key_fields` that name params, sorted.
    pub fn key_params(&self, verb: &str) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .params
            .iter()
            .filter(|(n, p)| {
                p.applies_to(verb) && (p.state || self.idempotency.key_fields.contains(n))
            })
            .map(|(n, _)| n.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// `params` with the defaults of the params of `verb` filled in.
    pub fn effective_params(&self, verb: &str, params: &Map<String, Value>) -> Map<String, Value> {
        let mut out = params.clone();
        for (name, spec) in self.params_for(verb) {
            if let (false, Some(default)) = (out.contains_key(name), &spec.default) {
                out.insert(name.to_string(), default.clone());
            }
        }
        out
    }

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
                hint: hint_for(verb, self.verbs.iter().map(String::as_str)),
            });
            return Err(problems);
        }
        for (name, value) in params {
            match self.params.get(name) {
                None => problems.push(ParamProblem {
                    param: name.clone(),
                    message: format!("unknown param `{name}` for `{}`", self.id),
                    hint: hint_for(name, self.params_for(verb).map(|(n, _)| n)),
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

    /// The action that undoes `verb` with `params`, or `None` when nothing
    /// does (`cycle`, `reboot`). The first rule whose `when` matches the
    /// params (defaults applied) wins. The inverse gets the rule's `params`
    /// plus the forward params that are not state-changing and also apply to
    /// the inverse verb (a polling `timeout_s`, say).
    pub fn inverse(&self, verb: &str, params: &Map<String, Value>) -> Option<Inverse> {
        let effective = self.effective_params(verb, params);
        let rule = self
            .invertible
            .get(verb)?
            .iter()
            .find(|r| r.when.iter().all(|(k, v)| effective.get(k) == Some(v)))?;
        let mut out: Map<String, Value> = params
            .iter()
            .filter(|(k, _)| {
                self.params
                    .get(*k)
                    .is_some_and(|p| !p.state && p.applies_to(verb) && p.applies_to(&rule.inverse))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in &rule.params {
            out.insert(k.clone(), v.clone());
        }
        Some(Inverse {
            verb: rule.inverse.clone(),
            params: out,
        })
    }

    /// Whether running `verb` with `params` undoes `other_verb` with
    /// `other_params` on the same targets: the other action's inverse has
    /// this verb and the same idempotency-key params (defaults applied).
    /// The engine uses it to clear suppression and idempotency state.
    pub fn inverts(
        &self,
        verb: &str,
        params: &Map<String, Value>,
        other_verb: &str,
        other_params: &Map<String, Value>,
    ) -> bool {
        let Some(inverse) = self.inverse(other_verb, other_params) else {
            return false;
        };
        if inverse.verb != verb {
            return false;
        }
        let ours = self.effective_params(verb, params);
        let theirs = self.effective_params(verb, &inverse.params);
        self.key_params(verb)
            .iter()
            .all(|k| ours.get(*k) == theirs.get(*k))
    }

    /// The forward actions that `verb` with `params` undoes, each with the
    /// params its inverse rule keyed on (`set state=on` undoes `set
    /// state=off`; `start` undoes `shutdown` and `stop`). Their idempotency
    /// keys (with [`Capability::key_params`]) are the ones to clear.
    pub fn undoes(&self, verb: &str, params: &Map<String, Value>) -> Vec<Inverse> {
        let mut out: Vec<Inverse> = Vec::new();
        for (forward, rules) in &self.invertible {
            for rule in rules.iter().filter(|r| r.inverse == verb) {
                let candidate = Inverse {
                    verb: forward.clone(),
                    params: rule.when.clone(),
                };
                if self.inverts(verb, params, forward, &rule.when) && !out.contains(&candidate) {
                    out.push(candidate);
                }
            }
        }
        out
    }
}

impl ParamSpec {
    /// Whether this param applies to `verb`.
    pub fn applies_to(&self, verb: &str) -> bool {
        self.verbs
            .as_ref()
            .is_none_or(|v| v.iter().any(|x| x == verb))
    }

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

impl ValueType {
    /// Whether `value` has this type (`Integer` wants a whole number).
    pub fn accepts(&self, value: &Value) -> bool {
        match self {
            ValueType::String => value.is_string(),
            ValueType::Integer => value.is_i64() || value.is_u64(),
            ValueType::Number => value.is_number(),
            ValueType::Boolean => value.is_boolean(),
            ValueType::Object => value.is_object(),
            ValueType::Array => value.is_array(),
            ValueType::Any => true,
            ValueType::OneOf(types) => types.iter().any(|t| t.accepts(value)),
        }
    }

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

    fn name(&self) -> &'static str {
        match self {
            ValueType::String => "string",
            ValueType::Integer => "integer",
            ValueType::Number => "number",
            ValueType::Boolean => "boolean",
            ValueType::Object => "object",
            ValueType::Array => "array",
            ValueType::Any => "any",
            ValueType::OneOf(_) => "one-of",
        }
    }
}

const TYPE_NAMES: &[&str] = &[
    "string", "integer", "int", "number", "boolean", "bool", "object", "array", "any",
];

impl std::fmt::Display for ValueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueType::OneOf(types) => {
                let names: Vec<String> = types.iter().map(ToString::to_string).collect();
                f.write_str(&names.join(" or "))
            }
            other => f.write_str(other.name()),
        }
    }
}

impl Serialize for ValueType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ValueType::OneOf(types) => types.serialize(serializer),
            other => serializer.serialize_str(other.name()),
        }
    }
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::HostOrchestrator => "host-orchestrator",
            Category::Network => "network",
            Category::Host => "host",
            Category::Notifications => "notifications",
            Category::Generic => "generic",
        }
    }
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            dry_run_refresh_sla_s: default_refresh_sla_s(),
            http: None,
            ssh: None,
        }
    }
}

impl Default for HttpDefaults {
    fn default() -> Self {
        HttpDefaults {
            timeout_s: 5,
            retries: 2,
            backoff_ms_start: 250,
            backoff_ms_max: 5_000,
            verify_tls: true,
        }
    }
}

impl Default for SshDefaults {
    fn default() -> Self {
        SshDefaults {
            connect_timeout_s: 5,
            command_timeout_s: 30,
            retries: 1,
            backoff_ms_start: 500,
            backoff_ms_max: 5_000,
        }
    }
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            interval_s: default_discovery_interval_s(),
        }
    }
}

/// SPEC §5: 5 s unless the manifest says otherwise.
fn default_refresh_sla_s() -> u64 {
    5
}

fn default_discovery_interval_s() -> u64 {
    600
}

impl ManifestError {
    /// The error as a `blocker` finding (`manifest.invalid`), for API answers.
    pub fn to_finding(&self) -> Finding {
        Finding::new(
            Severity::Blocker,
            "manifest.invalid",
            self.field.clone(),
            format!("{}: {}", self.file, self.message),
        )
    }
}

impl ManifestSet {
    pub fn new() -> Self {
        ManifestSet::default()
    }

    /// Loads one file as a set of one.
    pub fn from_yaml(file_name: &str, text: &str) -> Result<ManifestSet, Vec<ManifestError>> {
        ManifestSet::from_sources([(file_name, text)])
    }

    /// Loads `(file name, YAML text)` pairs, reporting every error of every
    /// file, plus ids and capability ids declared twice.
    pub fn from_sources<'a>(
        sources: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<ManifestSet, Vec<ManifestError>> {
        let mut set = ManifestSet::new();
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        let mut errors = Vec::new();
        for (file, text) in sources {
            match Manifest::from_yaml(file, text) {
                Ok(m) => {
                    if let Some(other) = files.get(&m.id) {
                        errors.push(ManifestError {
                            file: file.to_string(),
                            field: "/id".into(),
                            message: format!("manifest `{}` is already defined in {other}", m.id),
                        });
                        continue;
                    }
                    for (i, cap) in m.capabilities.iter().enumerate() {
                        if let Some((owner, _)) = set.capability(&cap.id) {
                            errors.push(ManifestError {
                                file: file.to_string(),
                                field: format!("/capabilities/{i}/id"),
                                message: format!(
                                    "capability `{}` is already declared by manifest `{}` ({})",
                                    cap.id, owner.id, files[&owner.id]
                                ),
                            });
                        }
                    }
                    files.insert(m.id.clone(), file.to_string());
                    set.manifests.insert(m.id.clone(), m);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// Loads every `*.yaml` and `*.yml` file of a directory (not recursive),
    /// in file-name order, reporting every error at once.
    pub fn load_dir(path: impl AsRef<Path>) -> Result<ManifestSet, Vec<ManifestError>> {
        let dir = path.as_ref();
        let io_error = |file: &Path, e: std::io::Error| ManifestError {
            file: file.display().to_string(),
            field: String::new(),
            message: format!("cannot read: {e}"),
        };
        let entries = std::fs::read_dir(dir).map_err(|e| vec![io_error(dir, e)])?;
        let mut paths = Vec::new();
        let mut errors = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => {
                    let p = entry.path();
                    let yaml = p.extension().is_some_and(|e| e == "yaml" || e == "yml");
                    if yaml && p.is_file() {
                        paths.push(p);
                    }
                }
                Err(e) => errors.push(io_error(dir, e)),
            }
        }
        paths.sort();
        let mut texts = Vec::new();
        for p in paths {
            match std::fs::read_to_string(&p) {
                Ok(text) => texts.push((p.display().to_string(), text)),
                Err(e) => errors.push(io_error(&p, e)),
            }
        }
        match ManifestSet::from_sources(texts.iter().map(|(f, t)| (f.as_str(), t.as_str()))) {
            Ok(set) if errors.is_empty() => Ok(set),
            Ok(_) => Err(errors),
            Err(mut e) => {
                errors.append(&mut e);
                Err(errors)
            }
        }
    }

    /// The manifests shipped with Hazel ([`EMBEDDED`]).
    pub fn embedded() -> ManifestSet {
        shipped().clone()
    }

    fn parse_embedded() -> ManifestSet {
        match ManifestSet::from_sources(EMBEDDED.iter().copied()) {
            Ok(set) => set,
            // Tested by drivers/tests/manifests.rs; unreachable in a tested build.
            Err(errors) => panic!("a shipped manifest is invalid: {errors:?}"),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Manifest> {
        self.manifests.get(id)
    }

    /// Manifests in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Manifest> {
        self.manifests.values()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.manifests.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.manifests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.manifests.is_empty()
    }

    /// The capability with this id and the manifest declaring it.
    pub fn capability(&self, cap_id: &str) -> Option<(&Manifest, &Capability)> {
        self.iter()
            .find_map(|m| m.capability(cap_id).map(|c| (m, c)))
    }

    /// Every capability id of every manifest, for did-you-mean hints.
    pub fn capability_ids(&self) -> impl Iterator<Item = &str> {
        self.iter()
            .flat_map(|m| m.capabilities.iter().map(|c| c.id.as_str()))
    }
}

// ---------------------------------------------------------------------------
// Decoding: YAML value -> typed manifest, collecting every error with its path.

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
];
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

// ---------------------------------------------------------------------------
// Small helpers.

struct Rules<'a> {
    ty: &'a ValueType,
    allowed: Option<&'a [Value]>,
    items: Option<&'a ValueType>,
    min: Option<f64>,
    max: Option<f64>,
}

fn check_value(rules: &Rules, value: &Value, reveal: bool) -> Result<(), String> {
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

fn kind(v: &Value) -> &'static str {
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

/// "unknown field `verbz` (did you mean `verbs`?)", or the list of known
/// names when none is close.
fn unknown<'a>(what: &str, word: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let known: Vec<&str> = known.into_iter().collect();
    match did_you_mean(word, known.iter().copied()) {
        Some(close) => format!("unknown {what} `{word}` (did you mean `{close}`?)"),
        None if known.is_empty() => format!("unknown {what} `{word}` (none are declared)"),
        None => format!(
            "unknown {what} `{word}` (expected one of: {})",
            known.join(", ")
        ),
    }
}

fn hint_for<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let known: Vec<&str> = known.into_iter().collect();
    match did_you_mean(word, known.iter().copied()) {
        Some(close) => Some(format!("did you mean `{close}`?")),
        None if known.is_empty() => None,
        None => Some(format!("expected one of: {}", known.join(", "))),
    }
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

    #[test]
    fn a_one_of_type_accepts_each_member() {
        let t = ValueType::OneOf(vec![ValueType::Object, ValueType::String]);
        assert!(t.accepts(&serde_json::json!({"a": 1})));
        assert!(t.accepts(&serde_json::json!("hi")));
        assert!(!t.accepts(&serde_json::json!(1)));
        assert_eq!(t.to_string(), "object or string");
    }
}
