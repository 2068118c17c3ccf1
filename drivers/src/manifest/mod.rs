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

use inventory::finding::{Finding, Severity};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

mod check;
mod decode;

/// The manifests shipped with Hazel, compiled into the binary so it works
/// without a plugin directory: `(file name, YAML text)`.
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "aruba.aoss.yaml",
        include_str!("../../../plugin-specs/aruba.aoss.yaml"),
    ),
    (
        "http.webhook.yaml",
        include_str!("../../../plugin-specs/http.webhook.yaml"),
    ),
    (
        "linux.ssh.yaml",
        include_str!("../../../plugin-specs/linux.ssh.yaml"),
    ),
    (
        "proxmox.ve.yaml",
        include_str!("../../../plugin-specs/proxmox.ve.yaml"),
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
    /// What each verb leads to: the target statuses in which it has nothing
    /// left to do. The engine's already-desired guard (SPEC §6 step 7) and
    /// the reconciliation of interrupted intents read them; a verb not
    /// listed (reset, reboot, cycle, post) is never skipped.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub results: BTreeMap<String, VerbResult>,
    /// Verbs safe to send again when an interrupted run left it unknown
    /// whether the device got them (SPEC §6 "Persistence and restarts"):
    /// shutdown, stop, PoE off. Each needs a `results` entry, so the engine
    /// can read whether it took effect first; a verb whose params lead to no
    /// status (`set state=cycle`) is never repeated, nor is any verb left
    /// out (reboot, reset, cycle, post).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repeatable: Vec<String>,
}

/// The statuses one verb leads to (`results` in the YAML).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum VerbResult {
    /// Any of these statuses (`shutdown: stopped`, `start: [running, active]`).
    Statuses(Vec<String>),
    /// The status follows a param's value (`set: { param: state }`: `set
    /// state=off` leads to `off`). With `values`, only the listed values
    /// lead somewhere, each to its statuses (`cycle` left out leads nowhere).
    Param {
        param: String,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        values: BTreeMap<String, Vec<String>>,
    },
}

/// Where a capability is looked up by id: the whole configured set (the
/// engine) or the one manifest a driver was built from.
pub trait Capabilities {
    /// The capability with this id, if declared.
    fn find_capability(&self, id: &str) -> Option<&Capability>;
}

impl Capabilities for ManifestSet {
    fn find_capability(&self, id: &str) -> Option<&Capability> {
        self.capability(id).map(|(_, c)| c)
    }
}

impl Capabilities for Manifest {
    fn find_capability(&self, id: &str) -> Option<&Capability> {
        self.capability(id)
    }
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
        decode::manifest(file_name, text)
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

    /// Whether `verb` with `params` may be sent again after an interruption
    /// (see [`Capability::repeatable`]): listed, and leading to a status.
    pub fn repeats(&self, verb: &str, params: &Map<String, Value>) -> bool {
        self.repeatable.iter().any(|v| v == verb) && !self.desired_statuses(verb, params).is_empty()
    }

    /// The target statuses `verb` with `params` leads to, from `results`
    /// (a param left out counts with its default); empty when the manifest
    /// declares none, and then nothing is ever skipped as already done.
    pub fn desired_statuses<'a>(
        &'a self,
        verb: &str,
        params: &'a Map<String, Value>,
    ) -> Vec<&'a str> {
        match self.results.get(verb) {
            None => Vec::new(),
            Some(VerbResult::Statuses(list)) => list.iter().map(String::as_str).collect(),
            Some(VerbResult::Param { param, values }) => {
                let value = params
                    .get(param)
                    .or_else(|| self.params.get(param).and_then(|p| p.default.as_ref()))
                    .and_then(Value::as_str);
                match value {
                    None => Vec::new(),
                    Some(v) if values.is_empty() => vec![v],
                    Some(v) => values
                        .get(v)
                        .map(|l| l.iter().map(String::as_str).collect())
                        .unwrap_or_default(),
                }
            }
        }
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
    /// `other_params` on the same targets: either action is the other's
    /// inverse, with the same idempotency-key params (defaults applied).
    /// The relation is symmetric: the map says `stop`'s inverse is `start`
    /// and `start`'s is `shutdown`, yet a `stop` after a `start` undoes it
    /// as surely as a `start` after a `stop` does. The engine uses it to
    /// clear suppression, idempotency and restore-set state.
    pub fn inverts(
        &self,
        verb: &str,
        params: &Map<String, Value>,
        other_verb: &str,
        other_params: &Map<String, Value>,
    ) -> bool {
        self.inverts_one_way(verb, params, other_verb, other_params)
            || self.inverts_one_way(other_verb, other_params, verb, params)
    }

    /// Whether the other action's inverse (per the map) is `verb` with
    /// `params`.
    fn inverts_one_way(
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
        // The action's own inverse is undone too (`stop` undoes `start`).
        if let Some(own) = self.inverse(verb, params) {
            if !out.contains(&own) {
                out.push(own);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_of_type_accepts_each_member() {
        let t = ValueType::OneOf(vec![ValueType::Object, ValueType::String]);
        assert!(t.accepts(&serde_json::json!({"a": 1})));
        assert!(t.accepts(&serde_json::json!("hi")));
        assert!(!t.accepts(&serde_json::json!(1)));
        assert_eq!(t.to_string(), "object or string");
    }
}
