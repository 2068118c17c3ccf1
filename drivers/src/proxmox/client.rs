//! The HTTP side of the driver: one reqwest client per host carrying the
//! API-token header, TLS set up per the host's pin or CA roots, per-call
//! timeouts cut to the caller's remaining budget, and retries of idempotent
//! GETs that start only when they can still finish in that budget. Every
//! request first takes a slot of the host's device-call rate limit
//! ([`DeviceLimits`], the manifest's `rate_limit` per capability), so
//! retries and task polls count too. Every failure leaves this module as a
//! [`DriverError`] with its §7 kind; no message or `Debug` output carries
//! the token secret.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{tls, ProxmoxConfig, Scheme};
use crate::driver::{DriverError, ErrorKind};
use crate::ratelimit::{Backoff, DeviceLimits, Retry};

/// The device calls of one driver operation: the host's client plus the
/// rate limit they count against. Cheap to copy; dry-run, execute and
/// discovery make every API call through one of these.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Calls<'a> {
    client: &'a ApiClient,
    /// The capability whose `rate_limit` the calls take; `None` for calls
    /// that serve every capability (discovery, connection test).
    capability: Option<&'a str>,
}

/// The answer of a POST: its HTTP status (execute evidence) and what it said.
#[derive(Debug)]
pub(crate) struct Posted {
    /// The HTTP status, when an answer came at all.
    pub http_status: Option<u16>,
    pub result: Result<Value, DriverError>,
}

/// A failed call plus whether repeating it may succeed.
struct CallError {
    error: DriverError,
    /// The HTTP status, when the server answered.
    http_status: Option<u16>,
    retryable: bool,
}

/// The Proxmox API client of one host.
pub(crate) struct ApiClient {
    http: reqwest::Client,
    /// `https://host:8006/api2/json`.
    base: String,
    /// `PVEAPIToken=USER@REALM!NAME=SECRET`, marked sensitive.
    auth: HeaderValue,
    timeout: Duration,
    retries: u32,
    backoff: Backoff,
    /// The host's device-call rate limits (manifest `rate_limit`).
    limits: DeviceLimits,
    /// `max_in_flight`: a concurrency cap on top of the rate.
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("auth", &crate::secret::MASK)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    pub(crate) fn new(config: &ProxmoxConfig, limits: DeviceLimits) -> Result<Self, DriverError> {
        let timeout = Duration::from_secs_f64(config.http.timeout_s);
        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("hazel/", env!("CARGO_PKG_VERSION")));
        if config.scheme == Scheme::Https {
            if let Some(pin) = &config.tls_fingerprint {
                builder = builder.use_preconfigured_tls(tls::pinned_client_config(
                    tls::parse_fingerprint(pin)?,
                )?);
            } else if !config.http.verify_tls {
                builder = builder.danger_accept_invalid_certs(true);
            }
        }
        let http = builder.build().map_err(|e| {
            DriverError::new(
                ErrorKind::ConfigError,
                format!("cannot build http client: {e}"),
            )
        })?;
        let host = if config.host.contains(':') && !config.host.starts_with('[') {
            format!("[{}]", config.host)
        } else {
            config.host.clone()
        };
        let scheme = match config.scheme {
            Scheme::Https => "https",
            Scheme::Http => "http",
        };
        let base = format!("{scheme}://{host}:{}/api2/json", config.port);
        reqwest::Url::parse(&base).map_err(|e| {
            DriverError::new(
                ErrorKind::ConfigError,
                format!("invalid host {:?}: {e}", config.host),
            )
        })?;
        let mut auth = HeaderValue::from_str(&format!(
            "PVEAPIToken={}={}",
            config.token_id,
            config.token_secret.expose()
        ))
        .map_err(|_| {
            DriverError::new(
                ErrorKind::ConfigError,
                "token_id or token_secret is not a valid header value",
            )
        })?;
        auth.set_sensitive(true);
        Ok(ApiClient {
            http,
            base,
            auth,
            timeout,
            retries: config.http.retries,
            backoff: Backoff::new(
                Duration::from_millis(config.http.backoff_ms_start),
                Duration::from_millis(config.http.backoff_ms_max),
            ),
            limits,
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
        })
    }

    /// Calls made for an action of `capability`: they count against its `rate_limit`.
    pub(crate) fn for_capability<'a>(&'a self, capability: &'a str) -> Calls<'a> {
        Calls {
            client: self,
            capability: Some(capability),
        }
    }

    /// Calls that serve every capability (discovery, connection test): they
    /// count against the host's strictest `rate_limit`.
    pub(crate) fn for_any(&self) -> Calls<'_> {
        Calls {
            client: self,
            capability: None,
        }
    }

    async fn call(
        &self,
        capability: Option<&str>,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        form: &[(&str, String)],
        deadline: Option<Instant>,
    ) -> Result<(u16, Value), CallError> {
        let what = format!("{method} {path}");
        let out_of_budget = || CallError {
            error: DriverError::new(
                ErrorKind::Timeout,
                format!("{what}: no time left in the budget"),
            ),
            http_status: None,
            retryable: false,
        };
        // The concurrency permit first, then the rate slot, so the request
        // leaves right when the limiter allows it (no bunching behind the cap).
        let permit_and_slot = async {
            let permit = self.permits.acquire().await;
            match capability {
                Some(cap) => self.limits.acquire(cap).await,
                None => self.limits.acquire_any().await,
            }
            permit
        };
        // Running out of budget while waiting for our own limiter says
        // nothing about the host: report it as rate_limited, which does not
        // count against the host's breaker (a timeout would).
        let locally_limited = || {
            CallError {
            error: DriverError::new(
                ErrorKind::RateLimited,
                format!("{what}: the budget ran out waiting for the host's rate limit or connection cap"),
            ),
            http_status: None,
            retryable: false,
        }
        };
        let _permit = match deadline {
            Some(d) => tokio::time::timeout_at(d, permit_and_slot)
                .await
                .map_err(|_| locally_limited())?,
            None => permit_and_slot.await,
        }
        .expect("the semaphore is never closed");
        let timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(out_of_budget());
                }
                left.min(self.timeout)
            }
            None => self.timeout,
        };
        let url = format!("{}{}", self.base, path);
        let mut request = self
            .http
            .request(method, url)
            .header(AUTHORIZATION, self.auth.clone())
            .timeout(timeout);
        if !query.is_empty() {
            request = request.query(query);
        }
        if !form.is_empty() {
            request = request.form(form);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(&what, timeout, e))?;
        let status = response.status();
        let reason = response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(&what, timeout, e))?;
        if status.is_success() {
            let mut envelope: Value = serde_json::from_slice(&body).map_err(|e| CallError {
                error: DriverError::new(
                    ErrorKind::Unknown,
                    format!("{what}: answer is not json: {e}"),
                ),
                http_status: Some(status.as_u16()),
                retryable: false,
            })?;
            let data = envelope
                .get_mut("data")
                .map(Value::take)
                .unwrap_or(Value::Null);
            return Ok((status.as_u16(), data));
        }
        Err(status_error(&what, status, reason.as_deref(), &body))
    }
}

impl Calls<'_> {
    /// `GET path?query` and the `data` of the answer. Transient failures are
    /// retried (up to `retries`, with the host's backoff) only when the retry
    /// can finish before `deadline`, judging by how long the failed attempt took.
    pub(crate) async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
        deadline: Option<Instant>,
    ) -> Result<Value, DriverError> {
        let client = self.client;
        let mut retry = Retry::new(client.backoff.clone(), client.retries, deadline);
        loop {
            let started = Instant::now();
            let failure = match client
                .call(self.capability, Method::GET, path, query, &[], deadline)
                .await
            {
                Ok((_, data)) => return Ok(data),
                Err(failure) => failure,
            };
            let wait = if failure.retryable {
                retry.next(&failure.error, started.elapsed())
            } else {
                None
            };
            let Some(wait) = wait else {
                return Err(failure.error);
            };
            tracing::debug!(
                path,
                retries_left = retry.retries_left(),
                wait_ms = wait.as_millis() as u64,
                error = %failure.error,
                "retrying GET"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// `POST path` with a form body, with the HTTP status for evidence.
    /// Never retried: a power request that reached the node may have started
    /// a task even if its answer was lost.
    pub(crate) async fn post(
        &self,
        path: &str,
        form: &[(&str, String)],
        deadline: Option<Instant>,
    ) -> Posted {
        match self
            .client
            .call(self.capability, Method::POST, path, &[], form, deadline)
            .await
        {
            Ok((status, data)) => Posted {
                http_status: Some(status),
                result: Ok(data),
            },
            Err(e) => Posted {
                http_status: e.http_status,
                result: Err(e.error),
            },
        }
    }
}

/// Maps a non-2xx answer to its §7 kind, with the server's text: the JSON
/// `message` of newer servers, else the reason phrase older ones use.
fn status_error(what: &str, status: StatusCode, reason: Option<&str>, body: &[u8]) -> CallError {
    let envelope: Option<Value> = serde_json::from_slice(body).ok();
    let message = envelope
        .as_ref()
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .or_else(|| reason.map(str::to_string))
        .or_else(|| status.canonical_reason().map(str::to_string))
        .unwrap_or_default();
    let mut text = message.clone();
    if let Some(errors) = envelope
        .as_ref()
        .and_then(|e| e.get("errors"))
        .and_then(Value::as_object)
    {
        let details: Vec<String> = errors
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}: {}",
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                )
            })
            .collect();
        if !details.is_empty() {
            text = format!("{text} ({})", details.join("; "));
        }
    }
    let code = status.as_u16();
    let (kind, retryable) = match code {
        400 => (ErrorKind::ValidationError, false),
        401 | 403 => (ErrorKind::AuthError, false),
        404 | 501 => (ErrorKind::NotFound, false),
        408 => (ErrorKind::Timeout, true),
        429 => (ErrorKind::RateLimited, true),
        500 => (
            classify_text(&message).unwrap_or(ErrorKind::ServerError),
            false,
        ),
        502..=504 => (ErrorKind::ServerError, true),
        // pveproxy's pseudo-statuses for a failed hop to another cluster node.
        595..=599 => (ErrorKind::NetworkError, true),
        _ if status.is_server_error() => (ErrorKind::ServerError, false),
        _ => (ErrorKind::Unknown, false),
    };
    CallError {
        error: DriverError::new(kind, format!("{what}: http {code} {text}")),
        http_status: Some(code),
        retryable,
    }
}

/// Recognises the error texts Proxmox uses for a few well-known conditions
/// (in 500 answers and in task exit statuses).
pub(crate) fn classify_text(text: &str) -> Option<ErrorKind> {
    let t = text.to_ascii_lowercase();
    if t.contains("does not exist")
        || t.contains("unable to find configuration file")
        || t.contains("no such")
    {
        Some(ErrorKind::NotFound)
    } else if t.contains("is locked")
        || t.contains("is a template")
        || t.contains("is paused - cannot")
    {
        Some(ErrorKind::ValidationError)
    } else if t.contains("got timeout") {
        Some(ErrorKind::Timeout)
    } else if t.contains("permission check failed") {
        Some(ErrorKind::AuthError)
    } else {
        None
    }
}

/// Maps a transport failure (no HTTP answer) to tls/timeout/network.
fn transport_error(what: &str, timeout: Duration, e: reqwest::Error) -> CallError {
    if let Some(tls) = tls_cause(&e) {
        return CallError {
            error: DriverError::new(
                ErrorKind::TlsError,
                format!("{what}: tls handshake failed: {tls}"),
            )
            .with_source(e),
            http_status: None,
            retryable: false,
        };
    }
    let (kind, message) = if e.is_timeout() {
        (
            ErrorKind::Timeout,
            format!("{what}: no answer within {:.1} s", timeout.as_secs_f64()),
        )
    } else if e.is_connect() {
        (
            ErrorKind::NetworkError,
            format!("{what}: cannot connect: {}", root_cause(&e)),
        )
    } else if e.is_body() || e.is_request() || e.is_decode() {
        (
            ErrorKind::NetworkError,
            format!("{what}: connection failed: {}", root_cause(&e)),
        )
    } else {
        (ErrorKind::Unknown, format!("{what}: {}", root_cause(&e)))
    };
    CallError {
        error: DriverError::new(kind, message).with_source(e),
        http_status: None,
        retryable: true,
    }
}

/// The rustls error somewhere in the chain, if the failure was the TLS
/// handshake. `io::Error::source` skips the error it wraps, so wrapped io
/// errors are opened with `get_ref` (hyper-rustls nests two of them).
fn tls_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(e) = err.downcast_ref::<rustls::Error>() {
            return Some(tls::describe_tls_error(e));
        }
        current = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    loop {
        let next = match last
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => last.source(),
        };
        match next {
            Some(n) => last = n,
            None => return last.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(code: u16, reason: Option<&str>, body: &str) -> (ErrorKind, bool, String) {
        let e = status_error(
            "GET /x",
            StatusCode::from_u16(code).unwrap(),
            reason,
            body.as_bytes(),
        );
        (e.error.kind, e.retryable, e.error.message)
    }

    #[test]
    fn statuses_map_to_the_error_taxonomy() {
        assert_eq!(
            kind_of(401, Some("Authentication failed!"), "").0,
            ErrorKind::AuthError
        );
        assert!(!kind_of(401, None, "").1, "auth errors are never retried");
        assert_eq!(
            kind_of(
                403,
                Some("Permission check failed (/vms/100, VM.PowerMgmt)"),
                ""
            )
            .0,
            ErrorKind::AuthError
        );
        assert_eq!(
            kind_of(400, None, r#"{"data":null,"errors":{"vmid":"bad"}}"#).0,
            ErrorKind::ValidationError
        );
        assert_eq!(
            kind_of(595, Some("Errors during connection establishment"), "").0,
            ErrorKind::NetworkError
        );
        assert!(kind_of(599, None, "").1);
        assert_eq!(
            kind_of(500, Some("VM 100 not running"), r#"{"data":null}"#).0,
            ErrorKind::ServerError
        );
        assert_eq!(
            kind_of(
                500,
                Some("Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist"),
                ""
            )
            .0,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn the_message_field_wins_over_the_reason_phrase() {
        let (_, _, msg) = kind_of(
            500,
            Some("VM 100 not running"),
            r#"{"data":null,"message":"VM 100 not running\nmore\n"}"#,
        );
        assert_eq!(msg, "GET /x: http 500 VM 100 not running\nmore");
        let (_, _, msg) = kind_of(500, Some("VM is locked (backup)"), r#"{"data":null}"#);
        assert_eq!(msg, "GET /x: http 500 VM is locked (backup)");
    }
}
