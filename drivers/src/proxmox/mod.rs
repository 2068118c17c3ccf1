//! The `proxmox.ve` driver: power control of QEMU VMs, LXC containers and
//! nodes over the Proxmox VE REST API with an API token.
//!
//! A host is a cluster or a single node reached through any of its nodes;
//! guests migrate, so every call first looks up each guest's current node in
//! one `GET /cluster/resources?type=vm` for all of the call's targets, then
//! reads the live state from `status/current` (the resource list comes from a
//! cache that lags). The lock Proxmox enforces is the `lock` key of the
//! guest's config; `status/current` reports that key as read at request
//! time, and whenever it or the resource list shows a lock on a guest about
//! to be changed, the driver reads `.../config` and lets the config decide
//! (a lock released or swapped between the two reads is not a stale refusal).
//! Power actions return a task id (UPID) that is reported to the engine
//! ([`crate::task::report_task`]) before it is polled to completion, and a task that ends OK is followed by another state read,
//! because an HA-managed guest may be restarted by the cluster. Proxmox's
//! quirks are handled where they bite: starting a running VM "succeeds" with a
//! failing task (the driver checks state first and reads that failure as
//! already-desired), 401s arrive after ~3 s (never retried), handler errors
//! come as 500 with the text in the reason phrase or `message`, and 595–599
//! are proxy failures between nodes (network errors).
//!
//! Every HTTP request (retries and task polls included) takes a slot of the
//! host's [`DeviceLimits`]: an action's calls count against its capability's
//! manifest `rate_limit`, cluster-wide discovery reads and the connection
//! test against the strictest one; `max_in_flight` caps concurrency on top.
//!
//! `client` speaks HTTP and maps failures to the §7 error kinds, `tls` pins
//! the self-signed certificate, `model` parses what the API returns,
//! `dry_run` and `execute` hold the per-target logic, `discovery` builds the
//! inventory and `sim` (feature `sim`) is the API simulator tests run against.

mod client;
mod discovery;
mod dry_run;
mod execute;
mod model;
#[cfg(feature = "sim")]
pub mod sim;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use inventory::model::Target;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::connection::HttpSettings;
use crate::driver::{
    Action, ConnectionReport, Driver, DriverError, DryRunAnswer, ErrorKind, ExecOutcome, HostKeys,
    RefreshMode,
};
use crate::host::ValidatedHost;
use crate::ratelimit::DeviceLimits;
use crate::secret::Secret;
use crate::task::{TaskHandle, TaskStatus};

use client::ApiClient;

/// The manifest id this driver implements.
pub const PLUGIN_ID: &str = "proxmox.ve";
/// Power control of QEMU VMs (`vm:<vmid>` targets).
pub const CAP_VM: &str = "proxmox.vm";
/// Power control of LXC containers (`ct:<vmid>` targets).
pub const CAP_CT: &str = "proxmox.ct";
/// Power control of cluster nodes (`host:<node>` targets).
pub const CAP_NODE: &str = "proxmox.node";

/// Connection config of one Proxmox host (the `connection` block of a host
/// whose plugin is `proxmox.ve`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxmoxConfig {
    /// Name or address of any node of the cluster; its API proxies calls for
    /// the other nodes.
    pub host: String,
    /// API port (`pveproxy` listens on 8006).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Name of the node `host` is (as Proxmox knows it, e.g. `pve1`): the node
    /// a connection test reads and the default node of single-node hosts.
    pub node: String,
    /// Full API token id, `USER@REALM!TOKENNAME` (e.g. `root@pam!hazel`).
    pub token_id: String,
    /// The token's secret (a UUID); only ever sent in the `Authorization` header.
    pub token_secret: Secret,
    /// SHA-256 fingerprint of the node's certificate (`AA:BB:...` or plain
    /// hex). With a pin the certificate must match it and no CA chain is
    /// needed, which is how a fresh install's self-signed certificate is trusted.
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
    /// `https` (every real Proxmox) or `http` (the simulator on loopback).
    #[serde(default = "default_scheme")]
    pub scheme: Scheme,
    /// API call timeout, retries and backoff, and `verify_tls`. A retry is
    /// of an idempotent GET after a transient failure, and only if it can
    /// finish inside the caller's remaining budget; POSTs and authentication
    /// failures are never retried. `verify_tls: false` (with no pin) accepts
    /// any certificate and is logged as a warning.
    #[serde(flatten)]
    pub http: HttpSettings,
    /// Budget of one dry-run in seconds (the manifest's
    /// `dry_run_refresh_sla_s`): every read and retry of a preflight fits in it.
    #[serde(default = "default_dry_run_budget_s")]
    pub dry_run_budget_s: f64,
    /// Most API calls in flight to this host at once (a concurrency cap;
    /// the call rate is the manifest's `rate_limit`).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
}

/// Every field of [`ProxmoxConfig`], flattened ones included, in the order
/// its unknown-field message lists them.
pub(crate) const FIELDS: &[&str] = &[
    "host",
    "port",
    "node",
    "token_id",
    "token_secret",
    "tls_fingerprint",
    "verify_tls",
    "scheme",
    "timeout_s",
    "retries",
    "backoff_ms_start",
    "backoff_ms_max",
    "dry_run_budget_s",
    "max_in_flight",
];

/// Transport scheme of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// TLS, the only scheme a real Proxmox serves.
    Https,
    /// Plain HTTP, for the simulator on loopback.
    Http,
}

fn default_port() -> u16 {
    8006
}

fn default_scheme() -> Scheme {
    Scheme::Https
}

fn default_dry_run_budget_s() -> f64 {
    5.0
}

fn default_max_in_flight() -> usize {
    8
}

impl ProxmoxConfig {
    /// A config with every optional field at its default.
    pub fn new(
        host: impl Into<String>,
        node: impl Into<String>,
        token_id: impl Into<String>,
        token_secret: Secret,
    ) -> Self {
        ProxmoxConfig {
            host: host.into(),
            port: default_port(),
            node: node.into(),
            token_id: token_id.into(),
            token_secret,
            tls_fingerprint: None,
            scheme: default_scheme(),
            http: HttpSettings::default(),
            dry_run_budget_s: default_dry_run_budget_s(),
            max_in_flight: default_max_in_flight(),
        }
    }

    /// Reads the config from a host's validated `connection` map.
    pub fn from_connection(connection: &Map<String, Value>) -> Result<Self, DriverError> {
        crate::connection::decode(connection, FIELDS).map_err(|e| {
            DriverError::new(
                ErrorKind::ConfigError,
                format!("invalid proxmox.ve connection: {e}"),
            )
        })
    }

    /// Checks the values serde cannot: token id shape, pin format, timeouts.
    pub fn validate(&self) -> Result<(), DriverError> {
        let bad = |m: String| Err(DriverError::new(ErrorKind::ConfigError, m));
        if self.host.trim().is_empty() {
            return bad("host must not be empty".into());
        }
        if self.node.trim().is_empty() {
            return bad("node must not be empty".into());
        }
        validate_token_id(&self.token_id)?;
        if self.token_secret.is_empty() {
            return bad("token_secret must not be empty".into());
        }
        if self
            .token_secret
            .expose()
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return bad("token_secret must not contain whitespace or control characters".into());
        }
        if let Some(pin) = &self.tls_fingerprint {
            tls::parse_fingerprint(pin)?;
        }
        if !(self.http.timeout_s.is_finite() && self.http.timeout_s > 0.0) {
            return bad(format!(
                "timeout_s must be a positive number, got {}",
                self.http.timeout_s
            ));
        }
        if !(self.dry_run_budget_s.is_finite() && self.dry_run_budget_s > 0.0) {
            return bad(format!(
                "dry_run_budget_s must be a positive number, got {}",
                self.dry_run_budget_s
            ));
        }
        if self.http.backoff_ms_max < self.http.backoff_ms_start {
            return bad("backoff_ms_max must not be below backoff_ms_start".into());
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be at least 1".into());
        }
        Ok(())
    }
}

/// Checks `USER@REALM!TOKENNAME` the way Proxmox's token id regex does:
/// a user name without `@`/`!`/`:`, a realm of `[A-Za-z][A-Za-z0-9.\-_]+`
/// and a token name of `[A-Za-z][A-Za-z0-9.\-_]+`.
fn validate_token_id(id: &str) -> Result<(), DriverError> {
    let err = || {
        DriverError::new(
            ErrorKind::ConfigError,
            format!(
                "token_id must be the full USER@REALM!TOKENNAME (e.g. root@pam!hazel), got {id:?}"
            ),
        )
    };
    let (user_realm, name) = id.split_once('!').ok_or_else(err)?;
    let (user, realm) = user_realm.rsplit_once('@').ok_or_else(err)?;
    let word = |s: &str| {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            && s.len() >= 2
    };
    let user_ok = !user.is_empty()
        && user
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, ':' | '!' | '='));
    if user_ok && word(realm) && word(name) {
        Ok(())
    } else {
        Err(err())
    }
}

/// The registry's constructor: the host's validated connection, completed
/// with the manifest's `defaults` (HTTP timeout, retries and backoff, and
/// `dry_run_refresh_sla_s` as the dry-run budget) where the host sets none,
/// and the manifest's `rate_limit`s as the host's device-call limits.
pub fn build(host: &ValidatedHost) -> Result<Arc<dyn Driver>, DriverError> {
    let mut connection: Map<String, Value> = host
        .fields()
        .filter_map(|name| host.value(name).map(|v| (name.to_owned(), v.clone())))
        .collect();
    let defaults = &host.manifest().defaults;
    if let Some(http) = &defaults.http {
        connection
            .entry("timeout_s")
            .or_insert_with(|| json!(http.timeout_s));
        connection
            .entry("retries")
            .or_insert_with(|| json!(http.retries));
        connection
            .entry("backoff_ms_start")
            .or_insert_with(|| json!(http.backoff_ms_start));
        connection
            .entry("backoff_ms_max")
            .or_insert_with(|| json!(http.backoff_ms_max));
    }
    connection
        .entry("dry_run_budget_s")
        .or_insert_with(|| json!(defaults.dry_run_refresh_sla_s));
    Ok(Arc::new(
        ProxmoxDriver::with_limits(
            host.id.clone(),
            ProxmoxConfig::from_connection(&connection)?,
            DeviceLimits::from_manifest(host.manifest()),
        )?
        .with_keys(HostKeys::from_manifest(host.id.clone(), host.manifest())),
    ))
}

/// The `proxmox.ve` driver bound to one host.
#[derive(Debug)]
pub struct ProxmoxDriver {
    host_id: String,
    config: ProxmoxConfig,
    client: ApiClient,
    /// The SPEC §5 keys of this host, from the manifest it was built with.
    keys: HostKeys,
}

impl ProxmoxDriver {
    /// Builds the driver for `host_id` with the shipped manifest's rate
    /// limits: validates the config and prepares the HTTP client (TLS pin,
    /// token header). Makes no network call.
    pub fn new(host_id: impl Into<String>, config: ProxmoxConfig) -> Result<Self, DriverError> {
        ProxmoxDriver::with_limits(host_id, config, DeviceLimits::for_plugin(PLUGIN_ID))
    }

    /// [`ProxmoxDriver::new`] with the device-call limits of this host
    /// (e.g. [`DeviceLimits::from_manifest`] of a loaded manifest).
    pub fn with_limits(
        host_id: impl Into<String>,
        config: ProxmoxConfig,
        limits: DeviceLimits,
    ) -> Result<Self, DriverError> {
        config.validate()?;
        let host_id = host_id.into();
        if config.scheme == Scheme::Https
            && config.tls_fingerprint.is_none()
            && !config.http.verify_tls
        {
            tracing::warn!(
                host = %host_id,
                "verify_tls is false: any certificate is accepted; pin the node's certificate with tls_fingerprint instead"
            );
        }
        let client = ApiClient::new(&config, limits)?;
        Ok(ProxmoxDriver {
            keys: HostKeys::for_plugin(&host_id, PLUGIN_ID),
            host_id,
            config,
            client,
        })
    }

    /// Takes the idempotency key params from `keys` (the registry passes
    /// those of the manifest the host was validated against) instead of the
    /// shipped `proxmox.ve` manifest's.
    pub fn with_keys(mut self, keys: HostKeys) -> Self {
        self.keys = keys;
        self
    }

    /// Builds the driver from a host's `connection` map (the registry's entry point).
    pub fn from_connection(
        host_id: impl Into<String>,
        connection: &Map<String, Value>,
    ) -> Result<Self, DriverError> {
        ProxmoxDriver::new(host_id, ProxmoxConfig::from_connection(connection)?)
    }

    /// The config this driver runs with.
    pub fn config(&self) -> &ProxmoxConfig {
        &self.config
    }

    fn dry_run_deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs_f64(self.config.dry_run_budget_s)
    }
}

#[async_trait]
impl Driver for ProxmoxDriver {
    fn plugin_id(&self) -> &str {
        PLUGIN_ID
    }

    fn host_id(&self) -> &str {
        &self.host_id
    }

    async fn discover(
        &self,
        mode: RefreshMode,
        budget: Duration,
    ) -> Result<Vec<Target>, DriverError> {
        let deadline = Instant::now() + budget;
        discovery::discover(&self.client, mode, deadline).await
    }

    async fn dry_run(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<DryRunAnswer>, DriverError> {
        let deadline = self.dry_run_deadline();
        dry_run::dry_run(&self.client, &self.keys, action, targets, deadline).await
    }

    async fn execute(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<ExecOutcome>, DriverError> {
        execute::execute(&self.client, action, targets, &self.config.node).await
    }

    async fn task_status(&self, task: &TaskHandle) -> Result<TaskStatus, DriverError> {
        execute::task_status(&self.client, task).await
    }

    async fn test_connection(&self) -> Result<ConnectionReport, DriverError> {
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(self.config.http.timeout_s * 2.0);
        let version = self
            .client
            .for_any()
            .get("/version", &[], Some(deadline))
            .await?;
        let mut details = Map::new();
        for key in ["version", "release", "repoid"] {
            if let Some(v) = version.get(key) {
                details.insert(key.to_string(), v.clone());
            }
        }
        details.insert("node".into(), Value::String(self.config.node.clone()));
        details.insert(
            "token_id".into(),
            Value::String(self.config.token_id.clone()),
        );
        Ok(ConnectionReport {
            ok: true,
            details,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(token_id: &str) -> ProxmoxConfig {
        ProxmoxConfig::new(
            "pve.example",
            "pve1",
            token_id,
            Secret::new("0b5c3f4e-secret"),
        )
    }

    #[test]
    fn token_ids_must_name_user_realm_and_token() {
        assert!(validate_token_id("root@pam!hazel").is_ok());
        assert!(validate_token_id("automation@pve!hazel-01").is_ok());
        assert!(validate_token_id("first.last@company.ad!tok_1").is_ok());
        for bad in [
            "root@pam",
            "hazel",
            "root!hazel",
            "@pam!hazel",
            "root@pam!",
            "root@pam!1x",
            "root@p!x y",
        ] {
            assert!(validate_token_id(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn config_rejects_unknown_fields_and_fills_defaults() {
        let mut map = Map::new();
        map.insert("host".into(), "10.0.0.5".into());
        map.insert("node".into(), "pve1".into());
        map.insert("token_id".into(), "root@pam!hazel".into());
        map.insert("token_secret".into(), "s3cr3t".into());
        let cfg = ProxmoxConfig::from_connection(&map).unwrap();
        assert_eq!(cfg.port, 8006);
        assert!(cfg.http.verify_tls);
        assert_eq!(cfg.scheme, Scheme::Https);
        map.insert("tls_fingerprnt".into(), "AA".into());
        let err = ProxmoxConfig::from_connection(&map).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ConfigError);
    }

    #[test]
    fn driver_debug_output_masks_the_secret() {
        let driver = ProxmoxDriver::new("pve-01", config("root@pam!hazel")).unwrap();
        let text = format!("{driver:?}");
        assert!(!text.contains("0b5c3f4e-secret"), "{text}");
    }

    #[test]
    fn a_malformed_pin_is_a_config_error() {
        let mut cfg = config("root@pam!hazel");
        cfg.tls_fingerprint = Some("AA:BB".into());
        assert_eq!(
            ProxmoxDriver::new("pve-01", cfg).unwrap_err().kind,
            ErrorKind::ConfigError
        );
    }

    #[test]
    fn the_unknown_field_message_lists_every_config_field() {
        let shown = serde_json::to_value(config("root@pam!hazel")).unwrap();
        let mut fields: Vec<&str> = shown
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut listed = FIELDS.to_vec();
        fields.sort_unstable();
        listed.sort_unstable();
        assert_eq!(listed, fields);
    }
}
