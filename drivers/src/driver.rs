//! The driver contract: what the engine may ask of a device driver, and the
//! shapes of the answers (SPEC §5 dry-run answer, execute outcome, §7 error
//! taxonomy). A driver instance is bound to one host; the registry builds it
//! from the host's validated connection config.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use inventory::model::Target;
use inventory::Severity;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::manifest::{Capabilities, Manifest};
use crate::task::{TaskHandle, TaskStatus};

/// How much a discovery should read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefreshMode {
    /// Only what a preflight needs (ids, states, locks), within the refresh SLA.
    Fast,
    /// Everything the driver can learn (names, labels, attrs); runs in the background.
    Full,
}

/// One action of a policy as the driver sees it: capability, verb and the
/// params after compile filled in the manifest defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub capability: String,
    pub verb: String,
    #[serde(default)]
    pub params: Map<String, Value>,
}

/// One check a dry-run made, in the order it made them (§5 `preconditions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Precondition {
    /// Stable name of the check: `auth`, `vm_exists`, `vm_lock`, `vm_state`, ...
    pub check: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// What the driver would send to the device (§5 `plan`). Never holds secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// `api`, `cli` or `ssh`.
    pub kind: String,
    /// The exact calls or command lines, in order.
    pub preview: Vec<Value>,
}

/// The expected change of one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetEffect {
    /// Canonical target id (`vm:104`).
    pub id: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// §5 `effects`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effects {
    pub summary: String,
    pub per_target: Vec<TargetEffect>,
}

/// A dry-run answer for one action × target, exactly the SPEC §5 shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRunAnswer {
    pub ok: bool,
    pub severity: Severity,
    pub idempotency_key: String,
    pub preconditions: Vec<Precondition>,
    pub plan: Plan,
    pub effects: Effects,
    pub reason: Option<String>,
}

/// The outcome of executing one action on one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecOutcome {
    /// Canonical target id (`vm:104`).
    pub target: String,
    pub ok: bool,
    pub severity: Severity,
    /// Dotted code: `driver.ok`, `driver.already_desired`, `driver.<error kind>`, ...
    pub code: String,
    pub reason: Option<String>,
    /// Request ids, HTTP statuses, exit codes, task ids (never secrets).
    pub evidence: Map<String, Value>,
    pub duration_ms: u64,
    /// The state read back after the change (`stopped`), when the driver checked.
    pub result_state: Option<String>,
}

/// What a connection test learned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionReport {
    pub ok: bool,
    /// Peer facts worth showing (API version, SSH banner, switch model); never secrets.
    pub details: Map<String, Value>,
    pub duration_ms: u64,
}

/// The §7 error taxonomy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    AuthError,
    ConfigError,
    NetworkError,
    TlsError,
    RateLimited,
    NotFound,
    ValidationError,
    ServerError,
    Timeout,
    Unknown,
}

impl ErrorKind {
    /// The snake_case name used in codes (`driver.auth_error`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::AuthError => "auth_error",
            ErrorKind::ConfigError => "config_error",
            ErrorKind::NetworkError => "network_error",
            ErrorKind::TlsError => "tls_error",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::NotFound => "not_found",
            ErrorKind::ValidationError => "validation_error",
            ErrorKind::ServerError => "server_error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unknown => "unknown",
        }
    }

    /// Whether retrying the same call may succeed (transient failures only).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::NetworkError
                | ErrorKind::RateLimited
                | ErrorKind::ServerError
                | ErrorKind::Timeout
        )
    }

    /// Whether this failure counts against the host's circuit breaker: the
    /// host (not the request) is in trouble.
    pub fn counts_for_breaker(self) -> bool {
        matches!(
            self,
            ErrorKind::NetworkError
                | ErrorKind::TlsError
                | ErrorKind::Timeout
                | ErrorKind::ServerError
        )
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A driver call that failed as a whole (the device could not be asked).
/// Per-target problems are reported inside answers instead.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct DriverError {
    pub kind: ErrorKind,
    /// What went wrong, lowercase, never containing a secret.
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl DriverError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        DriverError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying error (builder style).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Whether retrying may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The dotted code for findings and ledger entries (`driver.timeout`).
    pub fn code(&self) -> String {
        format!("driver.{}", self.kind.as_str())
    }
}

/// A device driver bound to one host.
///
/// `targets` are canonical ids (`vm:104`) of all of one action's targets on
/// this host, so a driver can batch its device calls (one VM list, one CLI
/// session). Answers come back one per target, in the order of `targets`.
///
/// # Guarantees
///
/// - `discover`, `dry_run` and `test_connection` never change device state.
/// - `execute` is idempotent: running it again on a target already in the
///   desired state changes nothing and reports `driver.already_desired`.
/// - Every method is safe to cancel (dropping the future): a cancelled
///   `execute` leaves each target either untouched or fully changed as the
///   device itself applies the request; nothing is left half-configured by
///   the driver, and the engine reconciles by reading state, never by blind
///   re-execution.
/// - No secret appears in an answer, an error message or a log line.
/// - A driver whose device runs a change as a task of its own (Proxmox
///   UPIDs) reports each task's handle through [`crate::task::report_task`]
///   as soon as the device accepted it, before waiting for it, and answers
///   [`Driver::task_status`] about it.
#[async_trait]
pub trait Driver: Send + Sync {
    /// The manifest id this driver implements (`proxmox.ve`).
    fn plugin_id(&self) -> &str;

    /// The host id this instance is bound to.
    fn host_id(&self) -> &str;

    /// Lists the host's child targets. `Fast` reads what a preflight needs within
    /// `budget`; `Full` may take longer and hydrate names, labels and attrs.
    async fn discover(
        &self,
        mode: RefreshMode,
        budget: Duration,
    ) -> Result<Vec<Target>, DriverError>;

    /// Computes what `execute` would do, touching nothing.
    async fn dry_run(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<DryRunAnswer>, DriverError>;

    /// Applies the action to every target and reports per-target outcomes.
    async fn execute(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<ExecOutcome>, DriverError>;

    /// Checks reachability and credentials.
    async fn test_connection(&self) -> Result<ConnectionReport, DriverError>;

    /// What the device says now about a task this driver started and
    /// reported through [`crate::task::report_task`] (one read, no wait;
    /// never changes device state). The engine asks at start about the
    /// tasks of intents a crash left open. The default, for drivers that
    /// start no tasks, is [`TaskStatus::Unknown`]: read the target instead.
    async fn task_status(&self, _task: &TaskHandle) -> Result<TaskStatus, DriverError> {
        Ok(TaskStatus::Unknown)
    }
}

/// The idempotency key of one action × target (SPEC §5): host id,
/// capability, verb, canonical target id and a fingerprint of the
/// state-changing params, `pve-01/proxmox.vm:shutdown:vm:104`. The host id
/// keeps `vm:104` of two clusters (or `1/A1` of two switches) apart, and
/// the params keep `set state=off` and `set state=on` apart. `key_params`
/// names the params that go into the fingerprint: the manifest's
/// state-changing params plus any its `key_fields` add (never fewer).
pub fn idempotency_key(host: &str, action: &Action, target: &str, key_params: &[&str]) -> String {
    let mut key = format!("{host}/{}:{}:{}", action.capability, action.verb, target);
    let mut names: Vec<&str> = key_params
        .iter()
        .copied()
        .filter(|n| action.params.contains_key(*n))
        .collect();
    names.sort_unstable();
    names.dedup();
    for (i, name) in names.iter().enumerate() {
        key.push(if i == 0 { ':' } else { ',' });
        key.push_str(name);
        key.push('=');
        key.push_str(&param_text(&action.params[*name]));
    }
    key
}

/// The idempotency key of `action` on `target` of `host`, with the key
/// params that `manifests` declares for that capability and verb
/// ([`crate::manifest::Capability::key_params`]). The engine passes the
/// configured manifest set, a driver the manifest its host was validated
/// against ([`HostKeys`]), so a dry-run and an execution of the same action
/// always agree on the key. A capability `manifests` does not know keys on
/// capability, verb and target alone.
pub fn action_key(
    manifests: &impl Capabilities,
    host: &str,
    action: &Action,
    target: &str,
) -> String {
    let key_params = manifests
        .find_capability(&action.capability)
        .map(|cap| cap.key_params(&action.verb))
        .unwrap_or_default();
    idempotency_key(host, action, target, &key_params)
}

/// The SPEC §5 keys of one host: its id and the key params of the manifest
/// it was validated against. A driver holds one, so the keys in its dry-run
/// answers are the ones the engine computes from the same configured
/// manifests ([`action_key`]).
#[derive(Debug, Clone)]
pub struct HostKeys {
    host: String,
    /// Key params by capability id, then verb.
    key_params: Arc<BTreeMap<String, BTreeMap<String, Vec<String>>>>,
}

impl HostKeys {
    /// The keys of `host` under `manifest` (the one its host was validated against).
    pub fn from_manifest(host: impl Into<String>, manifest: &Manifest) -> HostKeys {
        let key_params = manifest
            .capabilities
            .iter()
            .map(|cap| {
                let verbs = cap
                    .verbs
                    .iter()
                    .map(|verb| {
                        let params = cap.key_params(verb).into_iter().map(String::from);
                        (verb.clone(), params.collect())
                    })
                    .collect();
                (cap.id.clone(), verbs)
            })
            .collect();
        HostKeys {
            host: host.into(),
            key_params: Arc::new(key_params),
        }
    }

    /// The keys of `host` under the shipped manifest of `plugin_id`, for a
    /// driver built without a host config (its `new`); the registry's
    /// constructors use [`HostKeys::from_manifest`] with the configured one.
    /// An unknown plugin keys on capability, verb and target alone.
    pub fn for_plugin(host: impl Into<String>, plugin_id: &str) -> HostKeys {
        match crate::manifest::shipped().get(plugin_id) {
            Some(manifest) => HostKeys::from_manifest(host, manifest),
            None => HostKeys {
                host: host.into(),
                key_params: Arc::default(),
            },
        }
    }

    /// The host the keys are for.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The key of `action` on `target` of this host ([`action_key`]).
    pub fn key(&self, action: &Action, target: &str) -> String {
        let params: Vec<&str> = self
            .key_params
            .get(&action.capability)
            .and_then(|verbs| verbs.get(&action.verb))
            .map(|p| p.iter().map(String::as_str).collect())
            .unwrap_or_default();
        idempotency_key(&self.host, action, target, &params)
    }
}

fn param_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(verb: &str, params: Value) -> Action {
        Action {
            capability: "aoss.poe.port".into(),
            verb: verb.into(),
            params: params.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn idempotency_keys_differ_by_state_changing_params() {
        let off = idempotency_key(
            "sw-a",
            &action("set", serde_json::json!({"state": "off"})),
            "poe-port:1/A1",
            &["state"],
        );
        let on = idempotency_key(
            "sw-a",
            &action("set", serde_json::json!({"state": "on"})),
            "poe-port:1/A1",
            &["state"],
        );
        assert_ne!(off, on);
        assert_eq!(off, "sw-a/aoss.poe.port:set:poe-port:1/A1:state=off");
    }

    #[test]
    fn idempotency_key_without_params_is_host_capability_verb_target() {
        let key = idempotency_key(
            "pve-01",
            &action("start", serde_json::json!({"grace_s": 60})),
            "vm:104",
            &[],
        );
        assert_eq!(key, "pve-01/aoss.poe.port:start:vm:104");
    }

    #[test]
    fn the_same_action_on_equal_target_ids_of_two_hosts_has_two_keys() {
        let off = action("set", serde_json::json!({"state": "off"}));
        let set = crate::manifest::shipped();
        assert_ne!(
            action_key(set, "sw-a", &off, "poe-port:1/A10"),
            action_key(set, "sw-b", &off, "poe-port:1/A10")
        );
    }

    #[test]
    fn action_keys_follow_the_manifest_key_params() {
        let set = crate::manifest::shipped();
        let off = Action {
            capability: "aoss.poe.port".into(),
            verb: "set".into(),
            params: serde_json::json!({"state": "off"})
                .as_object()
                .cloned()
                .unwrap(),
        };
        assert_eq!(
            action_key(set, "sw-a", &off, "poe-port:1/A1"),
            "sw-a/aoss.poe.port:set:poe-port:1/A1:state=off"
        );
        let shutdown = Action {
            capability: "proxmox.vm".into(),
            verb: "shutdown".into(),
            params: serde_json::json!({"grace_s": 60})
                .as_object()
                .cloned()
                .unwrap(),
        };
        assert_eq!(
            action_key(set, "pve-01", &shutdown, "vm:104"),
            "pve-01/proxmox.vm:shutdown:vm:104"
        );
        let one = set.get("proxmox.ve").unwrap();
        let keys = HostKeys::from_manifest("pve-01", one);
        assert_eq!(
            keys.key(&shutdown, "vm:104"),
            "pve-01/proxmox.vm:shutdown:vm:104"
        );
    }

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(ErrorKind::Timeout.is_retryable());
        assert!(!ErrorKind::AuthError.is_retryable());
    }
}
