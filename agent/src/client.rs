//! The HTTP client the `hazel` command-line client talks to a running agent
//! with (`hazel policy ...`, `hazel dry-run`, `hazel pause`, ...). It knows
//! the routes of SPEC §9, sends the bearer token and the CSRF header, and
//! turns the API's `{"error": {code, message, ...}}` answers, refused
//! connections and garbled answers into one typed [`ClientError`] that
//! knows its exit code. The token is never printed: not in errors, not in
//! `Debug`.

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::cli::{EXIT_AUTH, EXIT_BLOCKED, EXIT_UNREACHABLE, EXIT_USAGE};

/// The header every mutating request carries (SPEC §9).
pub const CSRF_HEADER: &str = "X-Hazel-CSRF";
/// Where the client looks for the agent when `--url` and `$HAZEL_URL` are unset.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8088";
/// How long one request may take end to end (a policy dry-run has a 5 s SLA
/// per host; this leaves room for several).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting may take before the agent counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest page the client asks `GET /api/policies` for.
pub const PAGE_LIMIT: usize = 500;

/// A client of one agent's API; cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// A request body.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// No body.
    Empty,
    /// A JSON document.
    Json(&'a Value),
    /// Text with its media type (a policy file as JSON or YAML).
    Text {
        text: &'a str,
        content_type: &'static str,
    },
}

/// A successful answer: its status and its JSON body (`null` when empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error (`{"error": {code, message, ...}}`).
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
        /// The error object's other fields (`existing_id`, `errors`, `report`, ...).
        details: Map<String, Value>,
    },
    /// No connection could be made to the agent.
    #[error("cannot reach the Hazel API at {url}: {reason}; is `hazel serve` running there? (set --url or $HAZEL_URL)")]
    Unreachable {
        url: String,
        reason: String,
        #[source]
        source: reqwest::Error,
    },
    /// The connection broke or timed out mid-request.
    #[error("request to {url} failed: {reason}")]
    Transport {
        url: String,
        reason: String,
        #[source]
        source: reqwest::Error,
    },
    /// The answer is not what the API sends (not JSON, or an error without
    /// the error object).
    #[error("unexpected answer from {url} (HTTP {status}): {message}")]
    Unexpected {
        url: String,
        status: u16,
        message: String,
    },
    /// The base URL or the token cannot be used.
    #[error("{0}")]
    Setup(String),
}

impl ClientError {
    /// The documented exit code (see `hazel --help`): 4 for an auth
    /// refusal, 3 when the agent cannot be reached, 2 for a setup mistake,
    /// 1 for any other refusal.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Api { status, .. } if *status == 401 || *status == 403 => EXIT_AUTH,
            ClientError::Api { .. } | ClientError::Unexpected { .. } => EXIT_BLOCKED,
            ClientError::Unreachable { .. } | ClientError::Transport { .. } => EXIT_UNREACHABLE,
            ClientError::Setup(_) => EXIT_USAGE,
        }
    }

    /// The API's error code, for an API refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, for an API refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Unexpected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// One extra field of an API refusal's error object.
    pub fn detail(&self, key: &str) -> Option<&Value> {
        match self {
            ClientError::Api { details, .. } => details.get(key),
            _ => None,
        }
    }

    /// A hint for people, when one helps (how to get a token, ...).
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ClientError::Api { status: 401, .. } => Some(
                "pass --token or set $HAZEL_TOKEN; `hazel token --role admin --subject NAME` mints one",
            ),
            ClientError::Api { code, .. } if code == "auth.forbidden" => {
                Some("the token's role is too low for this; mint one with a higher --role")
            }
            _ => None,
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// A client of the agent at `base_url` (`http://127.0.0.1:8088`), sending
    /// `token` as the bearer token when given.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Client, ClientError> {
        let base = base_url.trim().trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| ClientError::Setup(format!("invalid --url {base:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ClientError::Setup(format!(
                "invalid --url {base:?}: use http:// or https://"
            )));
        }
        let token = token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        if let Some(t) = &token {
            if HeaderValue::from_str(&format!("Bearer {t}")).is_err() {
                return Err(ClientError::Setup(
                    "the token contains characters a header cannot carry".into(),
                ));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("hazel-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Setup(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client { http, base, token })
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends one request; a 2xx answer is returned, anything else is a
    /// [`ClientError`]. Mutating methods carry the CSRF header.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Body<'_>,
        if_match: Option<u64>,
    ) -> Result<Answer, ClientError> {
        let url = format!("{}{path}", self.base);
        let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
        let mut req = self.http.request(method, &url);
        if let Some(token) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if mutating {
            req = req.header(CSRF_HEADER, "1");
        }
        if let Some(version) = if_match {
            req = req.header(IF_MATCH, version.to_string());
        }
        req = match body {
            Body::Empty => req,
            Body::Json(value) => req
                .header(CONTENT_TYPE, "application/json")
                .body(value.to_string()),
            Body::Text { text, content_type } => req
                .header(CONTENT_TYPE, content_type)
                .body(text.to_string()),
        };
        let response = req.send().await.map_err(|e| self.transport(&url, e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.transport(&url, e))?;
        let parsed: Option<Value> = if text.trim().is_empty() {
            Some(Value::Null)
        } else {
            serde_json::from_str(&text).ok()
        };
        if status.is_success() {
            return match parsed {
                Some(body) => Ok(Answer {
                    status: status.as_u16(),
                    body,
                }),
                None => Err(ClientError::Unexpected {
                    url,
                    status: status.as_u16(),
                    message: format!("the body is not JSON: {}", snippet(&text)),
                }),
            };
        }
        Err(api_error(url, status, parsed, &text))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        Ok(self
            .request(Method::GET, path, Body::Empty, None)
            .await?
            .body)
    }

    /// `POST path` with `body`.
    pub async fn post(&self, path: &str, body: Body<'_>) -> Result<Answer, ClientError> {
        self.request(Method::POST, path, body, None).await
    }

    /// `GET /readyz`: the status and body whether ready (200) or not (503).
    pub async fn readyz(&self) -> Result<Answer, ClientError> {
        let url = format!("{}/readyz", self.base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| self.transport(&url, e))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| self.transport(&url, e))?;
        Ok(Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        })
    }

    /// Every stored policy, all pages of `GET /api/policies` read.
    pub async fn policies(&self) -> Result<Vec<Value>, ClientError> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(cursor) => format!("/api/policies?limit={PAGE_LIMIT}&after={cursor}"),
                None => format!("/api/policies?limit={PAGE_LIMIT}"),
            };
            let page = self.get(&path).await?;
            if let Some(list) = page["items"].as_array() {
                items.extend(list.iter().cloned());
            }
            match page["next"].as_str() {
                Some(next) if !next.is_empty() && after.as_deref() != Some(next) => {
                    after = Some(next.to_string());
                }
                _ => return Ok(items),
            }
        }
    }

    /// `GET /api/policies/{id}`.
    pub async fn policy(&self, id: &str) -> Result<Value, ClientError> {
        self.get(&format!("/api/policies/{id}")).await
    }

    /// `POST /api/policies/validate`: the validation report.
    pub async fn validate_policy(
        &self,
        text: &str,
        content_type: &'static str,
    ) -> Result<Value, ClientError> {
        let body = Body::Text { text, content_type };
        Ok(self.post("/api/policies/validate", body).await?.body)
    }

    /// `POST /api/policies`: the stored policy.
    pub async fn create_policy(
        &self,
        text: &str,
        content_type: &'static str,
    ) -> Result<Value, ClientError> {
        let body = Body::Text { text, content_type };
        Ok(self.post("/api/policies", body).await?.body)
    }

    /// `PUT /api/policies/{id}`, guarded by `If-Match: version` when given.
    pub async fn update_policy(
        &self,
        id: &str,
        text: &str,
        content_type: &'static str,
        version: Option<u64>,
    ) -> Result<Value, ClientError> {
        let body = Body::Text { text, content_type };
        let path = format!("/api/policies/{id}");
        Ok(self.request(Method::PUT, &path, body, version).await?.body)
    }

    /// `DELETE /api/policies/{id}`.
    pub async fn delete_policy(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/api/policies/{id}");
        self.request(Method::DELETE, &path, Body::Empty, None)
            .await
            .map(|_| ())
    }

    /// `POST /api/policies/{id}/enable`, forced with a reason when given.
    pub async fn enable_policy(
        &self,
        id: &str,
        force_reason: Option<&str>,
    ) -> Result<Value, ClientError> {
        let path = format!("/api/policies/{id}/enable");
        let answer = match force_reason {
            Some(reason) => {
                let body = json!({"force": true, "reason": reason});
                self.post(&path, Body::Json(&body)).await?
            }
            None => self.post(&path, Body::Empty).await?,
        };
        Ok(answer.body)
    }

    /// `POST /api/policies/{id}/disable`.
    pub async fn disable_policy(&self, id: &str) -> Result<Value, ClientError> {
        let path = format!("/api/policies/{id}/disable");
        Ok(self.post(&path, Body::Empty).await?.body)
    }

    /// `POST /api/policies/{id}/dry-run`: the transcript.
    pub async fn dry_run(&self, id: &str) -> Result<Value, ClientError> {
        let path = format!("/api/policies/{id}/dry-run");
        Ok(self.post(&path, Body::Empty).await?.body)
    }

    /// `POST /api/policies/{id}/inverse`: the unsaved inverse.
    pub async fn inverse(&self, id: &str) -> Result<Value, ClientError> {
        let path = format!("/api/policies/{id}/inverse");
        Ok(self.post(&path, Body::Empty).await?.body)
    }

    /// `GET /api/policies/{id}/restore-set`: the policy's restore set.
    pub async fn restore_set(&self, id: &str) -> Result<Value, ClientError> {
        self.get(&format!("/api/policies/{id}/restore-set")).await
    }

    /// `GET /api/policies/{id}/executions?limit=`: the ledger, newest first.
    pub async fn executions(&self, id: &str, limit: Option<usize>) -> Result<Value, ClientError> {
        let path = match limit {
            Some(n) => format!("/api/policies/{id}/executions?limit={n}"),
            None => format!("/api/policies/{id}/executions"),
        };
        self.get(&path).await
    }

    /// `POST /api/events?dry_run=`: the decisions.
    pub async fn inject_event(&self, event: &Value, dry_run: bool) -> Result<Value, ClientError> {
        let path = format!("/api/events?dry_run={dry_run}");
        Ok(self.post(&path, Body::Json(event)).await?.body)
    }

    /// `GET /api/hosts`.
    pub async fn hosts(&self) -> Result<Value, ClientError> {
        self.get("/api/hosts").await
    }

    /// `GET /api/kill-switch`.
    pub async fn kill_switch(&self) -> Result<Value, ClientError> {
        self.get("/api/kill-switch").await
    }

    /// `POST /api/kill-switch`: pause (`true`) or resume all execution.
    pub async fn set_kill_switch(
        &self,
        paused: bool,
        reason: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut body = json!({ "paused": paused });
        if let Some(reason) = reason {
            body["reason"] = Value::String(reason.to_string());
        }
        Ok(self.post("/api/kill-switch", Body::Json(&body)).await?.body)
    }

    fn transport(&self, url: &str, source: reqwest::Error) -> ClientError {
        let reason = innermost(&source);
        if source.is_connect() {
            ClientError::Unreachable {
                url: self.base.clone(),
                reason,
                source,
            }
        } else {
            ClientError::Transport {
                url: url.to_string(),
                reason,
                source,
            }
        }
    }
}

/// Turns a non-2xx answer into a [`ClientError`].
fn api_error(url: String, status: StatusCode, parsed: Option<Value>, text: &str) -> ClientError {
    let error = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_object);
    match error {
        Some(obj) => {
            let code = obj
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string();
            let message = obj
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let details = obj
                .iter()
                .filter(|(k, _)| k.as_str() != "code" && k.as_str() != "message")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            ClientError::Api {
                status: status.as_u16(),
                code,
                message,
                details,
            }
        }
        None => ClientError::Unexpected {
            url,
            status: status.as_u16(),
            message: if text.trim().is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("no body")
                    .to_lowercase()
            } else {
                snippet(text)
            },
        },
    }
}

/// The deepest error in the chain: "Connection refused (os error 111)"
/// rather than "error sending request".
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last: &(dyn std::error::Error + 'static) = err;
    while let Some(next) = last.source() {
        last = next;
    }
    let text = last.to_string();
    if let Some(io) = last.downcast_ref::<std::io::Error>() {
        if io.kind() == std::io::ErrorKind::ConnectionRefused {
            return "connection refused".into();
        }
    }
    if err.to_string().contains("timed out") || text.contains("timed out") {
        return "timed out".into();
    }
    text
}

fn snippet(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &one_line[..cut]),
        None => one_line,
    }
}

/// The media type a policy file is sent with: JSON for `.json` files and
/// text that starts with `{`, YAML otherwise.
pub fn policy_content_type(path: &std::path::Path, text: &str) -> &'static str {
    let json_ext = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if json_ext || text.trim_start().starts_with('{') {
        "application/json"
    } else {
        "application/yaml"
    }
}

/// Renders rows under a header as aligned columns (two spaces apart, the
/// last column unpadded), one line each.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            if i + 1 < widths.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_leave_the_last_unpadded() {
        let rows = vec![
            vec!["a1".to_string(), "long name".to_string(), "x".to_string()],
            vec!["b".to_string(), "n".to_string(), "".to_string()],
        ];
        let text = table(&["ID", "NAME", "STATUS"], &rows);
        assert_eq!(text, "ID  NAME       STATUS\na1  long name  x\nb   n\n");
    }

    #[test]
    fn an_api_error_keeps_status_code_message_and_extra_fields() {
        let body = json!({"error": {"code": "policy.duplicate_hash", "message": "dup", "existing_id": "abc"}});
        let err = api_error("u".into(), StatusCode::CONFLICT, Some(body), "");
        assert_eq!(err.status(), Some(409));
        assert_eq!(err.code(), Some("policy.duplicate_hash"));
        assert_eq!(err.detail("existing_id"), Some(&json!("abc")));
        assert_eq!(err.exit_code(), EXIT_BLOCKED);
        assert_eq!(err.to_string(), "dup (policy.duplicate_hash, HTTP 409)");
    }

    #[test]
    fn auth_refusals_exit_with_the_auth_code() {
        for status in [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN] {
            let body = json!({"error": {"code": "auth.forbidden", "message": "no"}});
            let err = api_error("u".into(), status, Some(body), "");
            assert_eq!(err.exit_code(), EXIT_AUTH);
        }
    }

    #[test]
    fn an_error_without_the_error_object_is_unexpected() {
        let err = api_error(
            "u".into(),
            StatusCode::BAD_GATEWAY,
            None,
            "<html>bad gateway</html>",
        );
        assert!(matches!(err, ClientError::Unexpected { status: 502, .. }));
        assert!(err.to_string().contains("bad gateway"), "{err}");
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let client = Client::new("http://127.0.0.1:1/", Some("s3cr3t-token".into())).unwrap();
        let text = format!("{client:?}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert_eq!(client.base_url(), "http://127.0.0.1:1");
    }

    #[test]
    fn a_url_without_http_is_a_setup_error() {
        let err = Client::new("ftp://x", None).unwrap_err();
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert!(Client::new("not a url", None).is_err());
    }

    #[test]
    fn policy_files_are_sent_as_json_or_yaml_by_extension_or_content() {
        use std::path::Path;
        assert_eq!(
            policy_content_type(Path::new("p.json"), "x"),
            "application/json"
        );
        assert_eq!(
            policy_content_type(Path::new("p"), " {\"a\":1}"),
            "application/json"
        );
        assert_eq!(
            policy_content_type(Path::new("p.yaml"), "a: 1"),
            "application/yaml"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_url_and_suggests_hazel_serve() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = Client::new(&format!("http://{addr}"), Some("tok".into())).unwrap();
        let err = client.hosts().await.unwrap_err();
        assert_eq!(err.exit_code(), EXIT_UNREACHABLE);
        let text = err.to_string();
        assert!(
            text.contains(&addr.to_string()) && text.contains("hazel serve"),
            "{text}"
        );
        assert!(!text.contains("tok"), "{text}");
    }
}
