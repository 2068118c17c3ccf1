//! The `http.webhook` driver: posts a policy's notification to an HTTP
//! receiver, signed with HMAC-SHA256 when the host has a secret.
//!
//! One webhook host is one receiver: a base `url`, one secret, one set of
//! headers. Its targets (`webhook:<name>`) are the endpoints listed in the
//! host's `targets` map (name -> path appended to the base URL); a host with
//! no map has the single target `webhook:default`, the base URL itself. The
//! list is closed, so a typo in a policy is a `not_found` at preflight
//! rather than a POST to a path nobody listens on.
//!
//! # Retries
//!
//! A POST is not idempotent: an attempt that timed out or got a 5xx may
//! still have been delivered, and retrying it may deliver twice. So by
//! default only a failure to connect is retried (no byte of the request left
//! the agent). With `retry_post: true` the operator declares that the
//! receiver dedupes on the `Idempotency-Key` header, and a timeout, a 5xx
//! (but 501/505) or a 429/408 is retried too. Retries wait an exponential
//! backoff (`backoff_ms_start` doubling up to `backoff_ms_max`), or the
//! receiver's `Retry-After` when that is longer, and a retry starts only if
//! the wait plus a whole attempt (`timeout_s`) fit in what is left of
//! `budget_s`.
//!
//! # Keys
//!
//! Two keys, for two jobs. The dry-run answer's `idempotency_key` is the
//! engine's SPEC §5 key ([`crate::driver::action_key`]: host, capability,
//! verb, target and the body), and execute reports the same value in its evidence.
//! The `Idempotency-Key` header is per delivery: a fresh UUID for each
//! execute of a target, the same on every attempt of that delivery, so a
//! receiver that dedupes on it sees one delivery per execute, and the same
//! notification sent again tomorrow is not mistaken for a retry. When the
//! action's `headers` param sets `Idempotency-Key`, that value is sent
//! instead; the host's `headers` cannot set it (one value for every
//! delivery would make a deduping receiver drop all but the first).
//!
//! # Limits and secrets
//!
//! Every request (each POST attempt, each probe) first takes a slot of the
//! host's [`DeviceLimits`] (the manifest's `rate_limit`). The `secret`, the
//! host's `headers` (secret in the manifest: they carry bearer tokens), the
//! URL's userinfo and credential-like query values and credential-like
//! action header values are never shown in a preview, evidence, error or
//! `Debug`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use inventory::model::Target;
use inventory::Severity;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::Sha256;
use tokio::time::Instant;
use tracing::Instrument;

use crate::connection::HttpSettings;
use crate::driver::{
    Action, ConnectionReport, Driver, DriverError, DryRunAnswer, Effects, ErrorKind, ExecOutcome,
    HostKeys, Plan, Precondition, RefreshMode, TargetEffect,
};
use crate::host::{is_credential_name, ValidatedHost};
use crate::manifest::Manifest;
use crate::ratelimit::{fits, Backoff, DeviceLimits, Retry};
use crate::secret::{Secret, MASK};

/// The manifest id this driver implements.
pub const PLUGIN_ID: &str = "http.webhook";
/// The one capability of the manifest.
pub const CAPABILITY: &str = "notify.webhook";
/// The one verb of [`CAPABILITY`].
pub const VERB_POST: &str = "post";
/// The target type of every webhook target.
pub const TARGET_TYPE: &str = "webhook";
/// The target a host without a `targets` map exposes: the base URL itself.
pub const DEFAULT_TARGET: &str = "default";
/// `sha256=<hex>`: HMAC-SHA256 of the exact body bytes under the host's secret.
pub const SIGNATURE_HEADER: &str = "x-hazel-signature";
/// Unix seconds at which the delivery was prepared (the same for every attempt).
pub const TIMESTAMP_HEADER: &str = "x-hazel-timestamp";
/// The key a receiver dedupes retried deliveries on: one per delivery (see
/// the module docs), or the action's own.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Response headers read as the receiver's request id, first match wins.
const REQUEST_ID_HEADERS: &[&str] = &[
    "x-request-id",
    "request-id",
    "x-correlation-id",
    "x-amzn-requestid",
    "x-github-request-id",
];

/// Connection config of one webhook host (the `connection` block of a host
/// whose plugin is `http.webhook`). `plugin-specs/http.webhook.yaml`
/// declares every field, with the same defaults, so a host built through
/// the registry can set each of them.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Base URL of the receiver, `http` or `https`. Userinfo
    /// (`https://user:pass@host/`) is sent as basic auth and never shown.
    pub url: String,
    /// HMAC-SHA256 key; when set every POST carries `X-Hazel-Signature:
    /// sha256=<hex>` over the exact body bytes.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Attempt timeout, retries (of a retryable failure, see the module
    /// docs) and backoff, and whether to verify the receiver's TLS certificate.
    #[serde(flatten)]
    pub http: HttpSettings,
    /// Wall-clock budget of one delivery in seconds: a retry starts only if
    /// its wait (backoff or `Retry-After`) plus a whole attempt fit in what
    /// is left of it.
    #[serde(default = "default_budget_s")]
    pub budget_s: f64,
    /// Also retry a POST that may have reached the receiver (timeout, 5xx,
    /// 429, 408). Off by default: a POST is not idempotent. Turn it on only
    /// for a receiver that dedupes on `Idempotency-Key`; a connect failure
    /// is retried either way.
    #[serde(default = "default_retry_post")]
    pub retry_post: bool,
    /// Headers sent with every POST; an action's `headers` param overrides
    /// them by name. Their values are secret (they carry bearer tokens) and
    /// are never shown; `Idempotency-Key` and the `X-Hazel-*` headers cannot
    /// be set here.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Endpoints of this receiver: target name -> path appended to `url`.
    /// Empty means one target, `default`, posting to `url` itself.
    #[serde(default)]
    pub targets: BTreeMap<String, String>,
    /// Reachability probe a dry-run may send (`none`, `head`, `options`).
    /// `none` (the default) keeps a dry-run free of any request.
    #[serde(default)]
    pub dry_run_probe: Probe,
}

/// Every field of [`WebhookConfig`], flattened ones included, in the order
/// its unknown-field message lists them.
pub(crate) const FIELDS: &[&str] = &[
    "url",
    "secret",
    "timeout_s",
    "retries",
    "backoff_ms_start",
    "backoff_ms_max",
    "budget_s",
    "retry_post",
    "headers",
    "targets",
    "dry_run_probe",
    "verify_tls",
];

fn default_budget_s() -> f64 {
    30.0
}

fn default_retry_post() -> bool {
    false
}

/// The request a dry-run may send to check that a receiver answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// No request at all.
    #[default]
    None,
    /// `HEAD <target url>`.
    Head,
    /// `OPTIONS <target url>`.
    Options,
}

impl WebhookConfig {
    /// A config with every default, posting to `url`.
    pub fn new(url: impl Into<String>) -> Self {
        WebhookConfig {
            url: url.into(),
            secret: None,
            http: HttpSettings::default(),
            budget_s: default_budget_s(),
            retry_post: default_retry_post(),
            headers: BTreeMap::new(),
            targets: BTreeMap::new(),
            dry_run_probe: Probe::None,
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: BTreeMap<&str, &str> =
            self.headers.keys().map(|k| (k.as_str(), MASK)).collect();
        f.debug_struct("WebhookConfig")
            .field("url", &display_url_str(&self.url))
            .field("secret", &self.secret)
            .field("timeout_s", &self.http.timeout_s)
            .field("retries", &self.http.retries)
            .field("backoff_ms_start", &self.http.backoff_ms_start)
            .field("backoff_ms_max", &self.http.backoff_ms_max)
            .field("budget_s", &self.budget_s)
            .field("retry_post", &self.retry_post)
            .field("headers", &headers)
            .field("targets", &self.targets)
            .field("dry_run_probe", &self.dry_run_probe)
            .field("verify_tls", &self.http.verify_tls)
            .finish()
    }
}

/// The registry's constructor: the host's validated connection (the
/// manifest's schema filled in the defaults) and the manifest's rate limits.
pub fn build(host: &ValidatedHost) -> Result<Arc<dyn Driver>, DriverError> {
    let connection: Map<String, Value> = host
        .fields()
        .filter_map(|name| host.value(name).map(|v| (name.to_owned(), v.clone())))
        .collect();
    // Checked here so that the decoding error below, which may quote a
    // value, can never be about a header (header values are secret).
    if let Some(headers) = connection.get("headers").and_then(Value::as_object) {
        if let Some((name, _)) = headers.iter().find(|(_, v)| !v.is_string()) {
            return Err(DriverError::new(
                ErrorKind::ConfigError,
                format!(
                    "webhook host {}: headers: value of {name:?} must be a string",
                    host.id
                ),
            ));
        }
    }
    let config: WebhookConfig = crate::connection::decode(&connection, FIELDS).map_err(|e| {
        DriverError::new(
            ErrorKind::ConfigError,
            format!(
                "webhook host {}: connection does not fit the webhook config: {e}",
                host.id
            ),
        )
    })?;
    let driver = WebhookDriver::new(host.id.clone(), config)?.with_manifest(host.manifest());
    Ok(Arc::new(driver))
}

/// The `http.webhook` driver bound to one host.
pub struct WebhookDriver {
    host_id: String,
    config: WebhookConfig,
    base: Url,
    timeout: Duration,
    budget: Duration,
    client: reqwest::Client,
    limits: DeviceLimits,
    /// The SPEC §5 keys of this host, from the manifest it was built with.
    keys: HostKeys,
}

impl std::fmt::Debug for WebhookDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookDriver")
            .field("host_id", &self.host_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WebhookDriver {
    /// Validates `config` and builds the HTTP client, with the shipped
    /// manifest's rate limits. Every problem is a `config_error`: a bad URL,
    /// a non-positive timeout or budget, an invalid or reserved header, an
    /// invalid target name.
    pub fn new(host_id: impl Into<String>, config: WebhookConfig) -> Result<Self, DriverError> {
        let host_id = host_id.into();
        let mut problems = Vec::new();
        let base = match Url::parse(&config.url) {
            Ok(url) => {
                if let Err(problem) = check_url(&url) {
                    problems.push(problem);
                }
                Some(url)
            }
            Err(e) => {
                problems.push(format!("url is not a valid URL: {e}"));
                None
            }
        };
        if !(config.http.timeout_s.is_finite() && config.http.timeout_s > 0.0) {
            problems.push("timeout_s must be a positive number of seconds".to_string());
        }
        if !(config.budget_s.is_finite() && config.budget_s > 0.0) {
            problems.push("budget_s must be a positive number of seconds".to_string());
        }
        for (name, value) in &config.headers {
            if let Err(problem) = check_header(name, value) {
                problems.push(format!("headers: {problem}"));
            } else if is_reserved_header(name) || name.eq_ignore_ascii_case(IDEMPOTENCY_HEADER) {
                problems.push(format!(
                    "headers: {name} is set by hazel per delivery and cannot be configured"
                ));
            }
        }
        for (name, path) in &config.targets {
            if name.is_empty() || !name.chars().all(is_id_char) {
                problems.push(format!(
                    "targets: name {name:?} must match [A-Za-z0-9_.@:-]+"
                ));
            }
            if path.contains(['?', '#']) {
                problems.push(format!(
                    "targets: path of {name:?} must not hold a query or fragment"
                ));
            }
        }
        if !problems.is_empty() {
            return Err(DriverError::new(
                ErrorKind::ConfigError,
                format!("webhook host {host_id}: {}", problems.join("; ")),
            ));
        }
        let base = base.expect("a url that failed to parse is reported above");
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .danger_accept_invalid_certs(!config.http.verify_tls)
            .user_agent(concat!("hazel/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                DriverError::new(ErrorKind::ConfigError, "cannot build the http client")
                    .with_source(e.without_url())
            })?;
        Ok(WebhookDriver {
            timeout: Duration::from_secs_f64(config.http.timeout_s),
            budget: Duration::from_secs_f64(config.budget_s),
            config,
            base,
            client,
            limits: DeviceLimits::for_plugin(PLUGIN_ID),
            keys: HostKeys::for_plugin(&host_id, PLUGIN_ID),
            host_id,
        })
    }

    /// Takes the device-call limits and the idempotency key params from
    /// `manifest` (the one the host was validated against) instead of the
    /// shipped `http.webhook` manifest.
    pub fn with_manifest(mut self, manifest: &Manifest) -> Self {
        self.limits = DeviceLimits::from_manifest(manifest);
        self.keys = HostKeys::from_manifest(self.host_id.clone(), manifest);
        self
    }

    /// Replaces the device-call limits (builder style); [`build`] passes the
    /// host's manifest's.
    pub fn with_limits(mut self, limits: DeviceLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The configured targets as `(name, path)`, in name order.
    pub fn endpoints(&self) -> Vec<(String, String)> {
        if self.config.targets.is_empty() {
            vec![(DEFAULT_TARGET.to_string(), String::new())]
        } else {
            self.config
                .targets
                .iter()
                .map(|(n, p)| (n.clone(), p.clone()))
                .collect()
        }
    }

    fn endpoint_path(&self, name: &str) -> Option<String> {
        if self.config.targets.is_empty() {
            (name == DEFAULT_TARGET).then(String::new)
        } else {
            self.config.targets.get(name).cloned()
        }
    }

    fn target_url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let path = path.trim_start_matches('/');
        if !path.is_empty() {
            let joined = format!("{}/{}", url.path().trim_end_matches('/'), path);
            url.set_path(&joined);
        }
        url
    }

    /// Everything a POST to one target needs, or the first check that failed.
    fn prepare(&self, action: &Action, target: &str) -> Prepared {
        let mut checks = Vec::new();
        let name = match target.strip_prefix("webhook:") {
            Some(name) => name,
            None => {
                checks.push(Precondition {
                    check: "webhook_exists".into(),
                    ok: false,
                    details: Some(json!({"target": target})),
                });
                return Prepared::rejected(
                    checks,
                    ErrorKind::NotFound,
                    format!("{target} is not a webhook target"),
                );
            }
        };
        let Some(path) = self.endpoint_path(name) else {
            checks.push(Precondition {
                check: "webhook_exists".into(),
                ok: false,
                details: Some(json!({"known": self.endpoints().into_iter().map(|(n, _)| n).collect::<Vec<_>>()})),
            });
            return Prepared::rejected(
                checks,
                ErrorKind::NotFound,
                format!("webhook {name} is not configured on host {}", self.host_id),
            );
        };
        checks.push(Precondition {
            check: "webhook_exists".into(),
            ok: true,
            details: None,
        });

        let url = self.target_url(&path);
        match check_url(&url) {
            Ok(()) => checks.push(Precondition {
                check: "url_valid".into(),
                ok: true,
                details: Some(json!({"scheme": url.scheme(), "url": display_url(&url)})),
            }),
            Err(problem) => {
                checks.push(Precondition {
                    check: "url_valid".into(),
                    ok: false,
                    details: Some(json!({"url": display_url(&url)})),
                });
                return Prepared::rejected(checks, ErrorKind::ConfigError, problem);
            }
        }

        let request = match self.build_request(action, url) {
            Ok(request) => {
                checks.push(Precondition {
                    check: "params_valid".into(),
                    ok: true,
                    details: None,
                });
                request
            }
            Err(problem) => {
                checks.push(Precondition {
                    check: "params_valid".into(),
                    ok: false,
                    details: None,
                });
                return Prepared::rejected(checks, ErrorKind::ValidationError, problem);
            }
        };
        Prepared {
            checks,
            outcome: Ok(request),
        }
    }

    fn build_request(&self, action: &Action, url: Url) -> Result<Request, String> {
        if action.capability != CAPABILITY || action.verb != VERB_POST {
            return Err(format!(
                "{PLUGIN_ID} supports only {CAPABILITY} {VERB_POST}, not {} {}",
                action.capability, action.verb
            ));
        }
        for name in action.params.keys() {
            if name != "body" && name != "headers" {
                return Err(format!("unknown param {name:?} (expected body, headers)"));
            }
        }
        let (body, body_kind, content_type) = match action.params.get("body") {
            None | Some(Value::Null) => (Vec::new(), BodyKind::Empty, None),
            Some(Value::String(text)) => (
                text.clone().into_bytes(),
                BodyKind::Text,
                Some("text/plain; charset=utf-8"),
            ),
            Some(v @ Value::Object(_)) => (
                serde_json::to_vec(v).map_err(|e| format!("body cannot be encoded: {e}"))?,
                BodyKind::Json,
                Some("application/json"),
            ),
            Some(_) => return Err("param body must be an object or a string".to_string()),
        };

        // What a preview may show of each header: the host's values are
        // secret (the manifest says so), the action's are masked when the
        // name looks like a credential.
        let mut headers = HeaderMap::new();
        let mut shown = Map::new();
        if let Some(content_type) = content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            shown.insert(CONTENT_TYPE.as_str().into(), json!(content_type));
        }
        for (name, value) in &self.config.headers {
            let (name, value) = parse_header(name, value)?;
            shown.insert(name.as_str().into(), json!(MASK));
            headers.insert(name, value);
        }
        match action.params.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(extra)) => {
                for (name, value) in extra {
                    let Value::String(text) = value else {
                        return Err(format!("header {name:?} must be a string"));
                    };
                    let (name, value) = parse_header(name, text)?;
                    let preview = if is_sensitive_header(name.as_str()) {
                        MASK
                    } else {
                        text.as_str()
                    };
                    shown.insert(name.as_str().into(), json!(preview));
                    headers.insert(name, value);
                }
            }
            Some(_) => return Err("param headers must be an object of strings".to_string()),
        }
        if let Some(reserved) = headers.keys().find(|n| is_reserved_header(n.as_str())) {
            return Err(format!(
                "header {reserved} is set by hazel and cannot be overridden"
            ));
        }
        let user_key = headers
            .get(IDEMPOTENCY_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        Ok(Request {
            url,
            headers,
            header_preview: shown,
            body,
            body_kind,
            body_preview: action.params.get("body").cloned().unwrap_or(Value::Null),
            user_idempotency_key: user_key,
        })
    }

    fn answer(
        &self,
        action: &Action,
        target: &str,
        mut prepared: Prepared,
        probe: Option<ProbeResult>,
    ) -> DryRunAnswer {
        let key = self.keys.key(action, target);
        let request = match prepared.outcome {
            Ok(request) => request,
            Err(rejection) => {
                return DryRunAnswer {
                    ok: false,
                    severity: Severity::Error,
                    idempotency_key: key,
                    preconditions: prepared.checks,
                    plan: Plan {
                        kind: "api".into(),
                        preview: Vec::new(),
                    },
                    effects: Effects {
                        summary: format!("would not POST: {}", rejection.message),
                        per_target: Vec::new(),
                    },
                    reason: Some(format!("{}: {}", rejection.kind, rejection.message)),
                };
            }
        };
        let mut reason = None;
        if let Some(probe) = probe {
            let ok = probe.error.is_none();
            if let Some(error) = &probe.error {
                reason = Some(error.to_string());
            }
            prepared.checks.push(Precondition {
                check: "reachable".into(),
                ok,
                details: Some(probe.details),
            });
        }
        let ok = reason.is_none();
        let url = display_url(&request.url);
        DryRunAnswer {
            ok,
            severity: if ok { Severity::Info } else { Severity::Error },
            idempotency_key: key,
            preconditions: prepared.checks,
            plan: Plan {
                kind: "api".into(),
                preview: vec![json!({
                    "method": "POST",
                    "url": url,
                    "headers": self.preview_headers(&request),
                    "body": request.body_preview,
                })],
            },
            effects: Effects {
                summary: format!(
                    "would POST {} bytes{} to {url}",
                    request.body.len(),
                    request.body_kind.describe()
                ),
                per_target: vec![TargetEffect {
                    id: target.to_string(),
                    from: None,
                    to: Some("posted".into()),
                }],
            },
            reason,
        }
    }

    fn preview_headers(&self, request: &Request) -> Map<String, Value> {
        let mut out = request.header_preview.clone();
        out.insert(
            TIMESTAMP_HEADER.into(),
            Value::String("<unix seconds at send>".into()),
        );
        if request.user_idempotency_key.is_none() {
            out.insert(
                IDEMPOTENCY_HEADER.into(),
                Value::String("<one per delivery>".into()),
            );
        }
        if self.config.secret.is_some() {
            out.insert(
                SIGNATURE_HEADER.into(),
                Value::String(format!("sha256={MASK}")),
            );
        }
        out
    }

    async fn probe(&self, method: Method, url: &Url) -> ProbeResult {
        self.limits.acquire_any().await;
        let started = Instant::now();
        let result = self
            .client
            .request(method.clone(), url.clone())
            .timeout(self.timeout)
            .send()
            .await;
        let mut details = Map::new();
        details.insert("method".into(), Value::String(method.to_string()));
        details.insert(
            "duration_ms".into(),
            json!(started.elapsed().as_millis() as u64),
        );
        let error = match result {
            Ok(response) => {
                let status = response.status();
                details.insert("status".into(), json!(status.as_u16()));
                match status_kind(status) {
                    // Any answer short of a server failure or a refusal shows the
                    // receiver is there; 404/405 to a HEAD are normal.
                    Some(kind @ (ErrorKind::AuthError | ErrorKind::ServerError)) => Some(
                        DriverError::new(kind, format!("probe got http {}", status.as_u16())),
                    ),
                    _ => None,
                }
            }
            Err(e) => Some(transport_error(e, &display_url(url))),
        };
        ProbeResult {
            details: Value::Object(details),
            error,
        }
    }

    /// Posts one prepared request, retrying as the module docs say.
    /// `action_key` is the §5 key, reported in the evidence as the dry-run
    /// reported it.
    async fn deliver(&self, target: &str, action_key: String, request: Request) -> ExecOutcome {
        let started = Instant::now();
        let deadline = started + self.budget;
        let delivery_key = request
            .user_idempotency_key
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut headers = request.headers.clone();
        headers.insert(
            IDEMPOTENCY_HEADER,
            HeaderValue::from_str(&delivery_key).expect("a uuid or an already valid header value"),
        );
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        headers.insert(TIMESTAMP_HEADER, HeaderValue::from(timestamp));
        if let Some(secret) = &self.config.secret {
            let signature = format!("sha256={}", sign(secret, &request.body));
            headers.insert(
                SIGNATURE_HEADER,
                HeaderValue::from_str(&signature).expect("hex is a valid header value"),
            );
        }
        let url_shown = display_url(&request.url);
        // A retry must leave room for a whole attempt after its wait.
        let mut retry = Retry::new(
            Backoff::new(
                Duration::from_millis(self.config.http.backoff_ms_start),
                Duration::from_millis(self.config.http.backoff_ms_max),
            ),
            self.config.http.retries,
            Some(deadline),
        );

        let mut evidence = Map::new();
        evidence.insert("url".into(), Value::String(url_shown.clone()));
        evidence.insert("idempotency_key".into(), Value::String(action_key));
        evidence.insert("delivery_key".into(), Value::String(delivery_key));
        let mut attempts = 0u32;
        let failure = loop {
            if tokio::time::timeout_at(deadline, self.limits.acquire(CAPABILITY))
                .await
                .is_err()
            {
                break Some(Failure {
                    error: DriverError::new(
                        ErrorKind::RateLimited,
                        format!("post to {url_shown}: no rate-limit slot within the budget"),
                    ),
                    sent: false,
                    retry_after: None,
                    retryable_status: false,
                });
            }
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = self
                .client
                .post(request.url.clone())
                .headers(headers.clone())
                .body(request.body.clone())
                .timeout(self.timeout.min(remaining))
                .send()
                .await;
            let mut failure = match attempt {
                Ok(response) => {
                    let status = response.status();
                    evidence.insert("status".into(), json!(status.as_u16()));
                    if let Some(id) = request_id(response.headers()) {
                        evidence.insert("request_id".into(), Value::String(id));
                    }
                    match status_kind(status) {
                        None => break None,
                        Some(kind) => Failure {
                            error: DriverError::new(
                                kind,
                                format!("{url_shown} answered http {}", status.as_u16()),
                            ),
                            sent: true,
                            retry_after: retry_after(response.headers()),
                            retryable_status: retryable_status(status),
                        },
                    }
                }
                Err(e) => {
                    let sent = !e.is_connect();
                    Failure {
                        error: transport_error(e, &url_shown),
                        sent,
                        retry_after: None,
                        retryable_status: true,
                    }
                }
            };
            // A request that may have been delivered is retried only when
            // the operator says the receiver dedupes (`retry_post`).
            if !failure.retryable_status || (failure.sent && !self.config.retry_post) {
                break Some(failure);
            }
            let had_retries = retry.retries_left() > 0;
            let wait = retry
                .next(&failure.error, self.timeout)
                .map(|backoff| {
                    failure
                        .retry_after
                        .map_or(backoff, |after| after.max(backoff))
                })
                .filter(|wait| fits(deadline, wait.saturating_add(self.timeout)));
            let Some(wait) = wait else {
                if let Some(after) = failure.retry_after {
                    evidence.insert("retry_after_ms".into(), json!(after.as_millis() as u64));
                }
                if had_retries && failure.error.is_retryable() {
                    failure.error.message = match failure.retry_after {
                        Some(after) => format!(
                            "{}; retry-after {}s and an attempt do not fit the remaining budget",
                            failure.error.message,
                            after.as_secs_f64()
                        ),
                        None => format!(
                            "{}; a retry would not fit the remaining budget",
                            failure.error.message
                        ),
                    };
                }
                break Some(failure);
            };
            tracing::debug!(
                host = %self.host_id,
                target = %target,
                attempt = attempts,
                wait_ms = wait.as_millis() as u64,
                error = %failure.error,
                "webhook post failed, retrying"
            );
            tokio::time::sleep(wait).await;
        };
        evidence.insert("attempts".into(), json!(attempts));
        let duration = started.elapsed();
        evidence.insert("duration_ms".into(), json!(duration.as_millis() as u64));
        match failure {
            None => ExecOutcome {
                target: target.to_string(),
                ok: true,
                severity: Severity::Info,
                code: "driver.ok".into(),
                reason: None,
                evidence,
                duration_ms: duration.as_millis() as u64,
                result_state: Some("posted".into()),
            },
            Some(failure) => ExecOutcome {
                target: target.to_string(),
                ok: false,
                severity: Severity::Error,
                code: failure.error.code(),
                reason: Some(failure.error.message),
                evidence,
                duration_ms: duration.as_millis() as u64,
                result_state: None,
            },
        }
    }
}

#[async_trait]
impl Driver for WebhookDriver {
    fn plugin_id(&self) -> &str {
        PLUGIN_ID
    }

    fn host_id(&self) -> &str {
        &self.host_id
    }

    /// The configured endpoints; no request is sent, so `mode` and `budget`
    /// do not matter.
    async fn discover(
        &self,
        _mode: RefreshMode,
        _budget: Duration,
    ) -> Result<Vec<Target>, DriverError> {
        Ok(self
            .endpoints()
            .into_iter()
            .map(|(name, path)| {
                let mut attrs = BTreeMap::new();
                attrs.insert(
                    "url".to_string(),
                    Value::String(display_url(&self.target_url(&path))),
                );
                Target {
                    target_type: TARGET_TYPE.into(),
                    id: name.clone(),
                    name: Some(name),
                    status: None,
                    labels: BTreeMap::new(),
                    attrs,
                }
            })
            .collect())
    }

    async fn dry_run(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<DryRunAnswer>, DriverError> {
        let method = match self.config.dry_run_probe {
            Probe::None => None,
            Probe::Head => Some(Method::HEAD),
            Probe::Options => Some(Method::OPTIONS),
        };
        let mut answers = Vec::with_capacity(targets.len());
        for target in targets {
            let prepared = self.prepare(action, target);
            let probe = match (&method, &prepared.outcome) {
                (Some(method), Ok(request)) => Some(self.probe(method.clone(), &request.url).await),
                _ => None,
            };
            answers.push(self.answer(action, target, prepared, probe));
        }
        Ok(answers)
    }

    async fn execute(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<ExecOutcome>, DriverError> {
        let mut outcomes = Vec::with_capacity(targets.len());
        for target in targets {
            // The guard's `driver_call` span has the host and plugin; this one
            // only names the target of this delivery.
            let span = tracing::info_span!("delivery", target = %target);
            let prepared = self.prepare(action, target);
            let key = self.keys.key(action, target);
            let outcome = match prepared.outcome {
                Ok(request) => self.deliver(target, key, request).instrument(span).await,
                Err(rejection) => ExecOutcome {
                    target: target.clone(),
                    ok: false,
                    severity: Severity::Error,
                    code: format!("driver.{}", rejection.kind),
                    reason: Some(rejection.message),
                    evidence: Map::from_iter([("idempotency_key".to_string(), Value::String(key))]),
                    duration_ms: 0,
                    result_state: None,
                },
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Sends `HEAD <url>` (or the configured probe method): any answer short
    /// of 401/403 or a 5xx shows a receiver is there. Never POSTs.
    async fn test_connection(&self) -> Result<ConnectionReport, DriverError> {
        let method = match self.config.dry_run_probe {
            Probe::Options => Method::OPTIONS,
            Probe::None | Probe::Head => Method::HEAD,
        };
        let started = Instant::now();
        let probe = self.probe(method, &self.base).await;
        if let Some(error) = probe.error {
            return Err(error);
        }
        let mut details = match probe.details {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        details.insert("url".into(), Value::String(display_url(&self.base)));
        Ok(ConnectionReport {
            ok: true,
            details,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }
}

/// `hex(HMAC-SHA256(secret, body))`, what `X-Hazel-Signature` carries after `sha256=`.
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("hmac takes a key of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A URL as Hazel may show it: userinfo removed, credential-like query
/// values masked.
pub fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    if shown.query().is_some() {
        let pairs: Vec<(String, String)> = shown
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_credential_name(&k) {
                    MASK.to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

fn display_url_str(url: &str) -> String {
    match Url::parse(url) {
        Ok(url) => display_url(&url),
        Err(_) => "<invalid url>".to_string(),
    }
}

struct Request {
    url: Url,
    headers: HeaderMap,
    /// The headers as a preview may show them (see `build_request`).
    header_preview: Map<String, Value>,
    body: Vec<u8>,
    body_kind: BodyKind,
    body_preview: Value,
    user_idempotency_key: Option<String>,
}

#[derive(Clone, Copy)]
enum BodyKind {
    Empty,
    Json,
    Text,
}

impl BodyKind {
    fn describe(self) -> &'static str {
        match self {
            BodyKind::Empty => "",
            BodyKind::Json => " of JSON",
            BodyKind::Text => " of text",
        }
    }
}

struct Rejection {
    kind: ErrorKind,
    message: String,
}

struct Prepared {
    checks: Vec<Precondition>,
    outcome: Result<Request, Rejection>,
}

impl Prepared {
    fn rejected(checks: Vec<Precondition>, kind: ErrorKind, message: String) -> Self {
        Prepared {
            checks,
            outcome: Err(Rejection { kind, message }),
        }
    }
}

struct ProbeResult {
    details: Value,
    error: Option<DriverError>,
}

struct Failure {
    error: DriverError,
    /// Whether any byte of the request may have reached the receiver.
    sent: bool,
    retry_after: Option<Duration>,
    /// False for statuses whose kind is transient but whose retry is
    /// pointless (`501 Not Implemented`, `505`).
    retryable_status: bool,
}

fn check_url(url: &Url) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "url scheme must be http or https, not {}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("url has no host".to_string());
    }
    if url.fragment().is_some() {
        return Err("url must not hold a fragment".to_string());
    }
    Ok(())
}

fn check_header(name: &str, value: &str) -> Result<(), String> {
    parse_header(name, value).map(|_| ())
}

fn parse_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let parsed_name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    let parsed_value = HeaderValue::from_str(value)
        .map_err(|_| format!("value of header {name:?} is not valid"))?;
    Ok((parsed_name, parsed_value))
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | ':' | '-')
}

/// Whether an action header's value is a credential and must be masked
/// (`Idempotency-Key` is not, though its name holds `key`).
fn is_sensitive_header(name: &str) -> bool {
    is_credential_name(name) && !name.eq_ignore_ascii_case(IDEMPOTENCY_HEADER)
}

/// Headers hazel computes for each delivery.
fn is_reserved_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(SIGNATURE_HEADER) || name.eq_ignore_ascii_case(TIMESTAMP_HEADER)
}

/// `None` for success (2xx), else the §7 kind of the status.
fn status_kind(status: StatusCode) -> Option<ErrorKind> {
    let code = status.as_u16();
    Some(match code {
        200..=299 => return None,
        401 | 403 => ErrorKind::AuthError,
        404 | 410 => ErrorKind::NotFound,
        400 | 409 | 413 | 415 | 422 => ErrorKind::ValidationError,
        408 => ErrorKind::Timeout,
        429 => ErrorKind::RateLimited,
        500..=599 => ErrorKind::ServerError,
        // 1xx, 3xx (redirects are not followed: a redirected POST would turn
        // into a GET) and the other 4xx.
        _ => ErrorKind::Unknown,
    })
}

fn retryable_status(status: StatusCode) -> bool {
    !matches!(status.as_u16(), 501 | 505)
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    REQUEST_ID_HEADERS
        .iter()
        .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
        .map(str::to_string)
}

/// Maps a transport failure to the §7 taxonomy. The URL is dropped from the
/// source so that no query value leaks through an error chain.
fn transport_error(e: reqwest::Error, url: &str) -> DriverError {
    let (kind, what) = if is_tls(&e) {
        (ErrorKind::TlsError, "tls handshake failed")
    } else if e.is_timeout() {
        (ErrorKind::Timeout, "timed out")
    } else if e.is_connect() {
        (ErrorKind::NetworkError, "cannot connect")
    } else if e.is_builder() {
        (ErrorKind::ConfigError, "cannot build the request")
    } else {
        (ErrorKind::NetworkError, "transport failed")
    };
    DriverError::new(kind, format!("post to {url}: {what}")).with_source(e.without_url())
}

fn is_tls(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        let text = err.to_string().to_ascii_lowercase();
        if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver(config: WebhookConfig) -> WebhookDriver {
        WebhookDriver::new("hooks", config).unwrap()
    }

    #[test]
    fn target_paths_are_appended_to_the_base_path() {
        let mut config = WebhookConfig::new("https://example.test/api/?team=ops");
        config.targets.insert("alerts".into(), "/alerts".into());
        let d = driver(config);
        assert_eq!(
            d.target_url("/alerts").as_str(),
            "https://example.test/api/alerts?team=ops"
        );
        assert_eq!(
            d.target_url("").as_str(),
            "https://example.test/api/?team=ops"
        );
    }

    #[test]
    fn shown_urls_lose_userinfo_and_credential_query_values() {
        let url = Url::parse("https://bob:hunter2@example.test/x?token=abc&team=ops").unwrap();
        assert_eq!(
            display_url(&url),
            "https://example.test/x?token=***&team=ops"
        );
    }

    #[test]
    fn config_problems_are_reported_together() {
        let mut config = WebhookConfig::new("ftp://example.test/");
        config.http.timeout_s = 0.0;
        config.targets.insert("bad name".into(), "x".into());
        let err = WebhookDriver::new("hooks", config).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ConfigError);
        assert!(err.message.contains("scheme"), "{err}");
        assert!(err.message.contains("timeout_s"), "{err}");
        assert!(err.message.contains("bad name"), "{err}");
    }

    #[test]
    fn statuses_map_to_the_error_taxonomy() {
        let kind = |c: u16| status_kind(StatusCode::from_u16(c).unwrap());
        assert_eq!(kind(204), None);
        assert_eq!(kind(401), Some(ErrorKind::AuthError));
        assert_eq!(kind(403), Some(ErrorKind::AuthError));
        assert_eq!(kind(404), Some(ErrorKind::NotFound));
        assert_eq!(kind(422), Some(ErrorKind::ValidationError));
        assert_eq!(kind(429), Some(ErrorKind::RateLimited));
        assert_eq!(kind(503), Some(ErrorKind::ServerError));
        assert_eq!(kind(302), Some(ErrorKind::Unknown));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
    }

    #[test]
    fn dry_run_keys_are_the_engines_keys_differing_by_body_not_headers() {
        let action = |body: Value, headers: Value| Action {
            capability: CAPABILITY.into(),
            verb: VERB_POST.into(),
            params: json!({"body": body, "headers": headers})
                .as_object()
                .cloned()
                .unwrap(),
        };
        let d = driver(WebhookConfig::new("https://example.test/"));
        let key = |a: &Action| {
            d.answer(a, "webhook:default", d.prepare(a, "webhook:default"), None)
                .idempotency_key
        };
        let one = action(json!({"m": 1}), json!({}));
        let a = key(&one);
        let b = key(&action(json!({"m": 2}), json!({})));
        let c = key(&action(json!({"m": 1}), json!({"x-a": "1"})));
        assert_eq!(
            a,
            crate::driver::action_key(
                crate::manifest::shipped(),
                d.host_id(),
                &one,
                "webhook:default"
            )
        );
        assert_eq!(
            a,
            format!(
                r#"{}/notify.webhook:post:webhook:default:body={{"m":1}}"#,
                d.host_id()
            )
        );
        assert_ne!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn hazel_headers_and_a_fixed_idempotency_key_cannot_be_configured() {
        for name in ["Idempotency-Key", "X-Hazel-Signature", "x-hazel-timestamp"] {
            let mut config = WebhookConfig::new("https://example.test/");
            config.headers.insert(name.into(), "v".into());
            let err = WebhookDriver::new("hooks", config).unwrap_err();
            assert!(
                err.message.contains("cannot be configured"),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn header_values_and_the_secret_are_masked_in_debug() {
        let mut config = WebhookConfig::new("https://example.test/");
        config.secret = Some(Secret::new("hmac-key-123"));
        config
            .headers
            .insert("Authorization".into(), "Bearer tok-456".into());
        config
            .headers
            .insert("X-Tenant".into(), "tenant-789".into());
        let shown = format!("{:?}", driver(config));
        for secret in ["hmac-key-123", "tok-456", "tenant-789"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("X-Tenant"), "names stay visible: {shown}");
    }
}
