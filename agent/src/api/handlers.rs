//! The route handlers: each reads its request through the API's extractors,
//! calls one [`Service`] method and writes its answer as JSON. No decision
//! is made here beyond HTTP concerns (status codes, headers, query limits);
//! the gates live in the service.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Json, OptionalJson, PathId, PathText, PolicyText, Query, RawBody};
use super::AppState;
use crate::engine::store::{AuditQuery, LEDGER_RUNS_PER_POLICY};
use crate::service::{Actor, Role};

/// Default page size of `GET /api/policies`.
pub const POLICIES_DEFAULT_LIMIT: usize = 50;
/// Largest page size of `GET /api/policies`.
pub const POLICIES_MAX_LIMIT: usize = 500;
/// Default page size of `GET /api/audit`.
pub const AUDIT_DEFAULT_LIMIT: usize = 100;
/// Largest page size of `GET /api/audit`.
pub const AUDIT_MAX_LIMIT: usize = 1000;
/// The header carrying a webhook's HMAC-SHA256 signature (`sha256=<hex>`).
pub const SIGNATURE_HEADER: &str = "x-hazel-signature";
/// The header with the unix time a webhook post was signed at.
pub const TIMESTAMP_HEADER: &str = "x-hazel-timestamp";

type ApiResult = Result<Response, ApiError>;

fn ok(value: impl serde::Serialize) -> ApiResult {
    Ok(axum::Json(value).into_response())
}

fn with_status(status: StatusCode, value: impl serde::Serialize) -> ApiResult {
    Ok((status, axum::Json(value)).into_response())
}

fn limit_in(
    name: &str,
    value: Option<usize>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match value {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_query(format!(
            "`{name}` must be between 1 and {max}, got {n}"
        ))
        .with("param", name)),
    }
}

fn parse_uuid_param(name: &str, value: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    match value {
        None | Some("") => Ok(None),
        Some(text) => Uuid::parse_str(text).map(Some).map_err(|_| {
            ApiError::bad_query(format!("`{name}` must be a UUID, got {text:?}"))
                .with("param", name)
        }),
    }
}

/// An optional RFC 3339 instant query parameter (`since=2026-12-07T09:00:00Z`).
fn parse_instant_param(
    name: &str,
    value: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    match value {
        None | Some("") => Ok(None),
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| Some(t.with_timezone(&chrono::Utc)))
            .map_err(|_| {
                ApiError::bad_query(format!(
                    "`{name}` must be an RFC 3339 instant such as 2026-12-07T09:00:00Z, got {text:?}"
                ))
                .with("param", name)
            }),
    }
}

/// `GET /healthz`: the process runs.
pub async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: the engine runs and the store can write; otherwise 503
/// with the reason in the JSON error shape.
pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.service.readiness().await {
        Ok(()) => axum::Json(json!({"status": "ready"})).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "not_ready",
                "error": {"code": why.code, "message": why.message},
            })),
        )
            .into_response(),
    }
}

/// `GET /metrics`: Prometheus text format 0.0.4.
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.service.render_metrics(),
    )
        .into_response()
}

/// `GET /api/openapi.json`: the document generated from the route table.
pub async fn openapi(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        state.shared.openapi.clone(),
    )
        .into_response()
}

/// `GET /api/hosts`.
pub async fn hosts_list(State(state): State<AppState>) -> ApiResult {
    ok(state.service.hosts().await?)
}

/// `POST /api/hosts`.
pub async fn hosts_create(
    State(state): State<AppState>,
    actor: Actor,
    Json(body): Json<Value>,
) -> ApiResult {
    let host = state.service.create_host(&actor, &body).await?;
    let location = format!("/api/hosts/{}", host.id);
    let mut response = with_status(StatusCode::CREATED, host)?;
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// `GET /api/hosts/{host_id}/capabilities`.
pub async fn host_capabilities(State(state): State<AppState>, PathText(id): PathText) -> ApiResult {
    ok(state.service.host_capabilities(&id).await?)
}

/// The query of `GET /api/hosts/{host_id}/inventory`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryQuery {
    /// Refresh on the fast path before answering.
    #[serde(default)]
    refresh: bool,
}

/// `GET /api/hosts/{host_id}/inventory?refresh=`.
pub async fn host_inventory(
    State(state): State<AppState>,
    PathText(id): PathText,
    Query(query): Query<InventoryQuery>,
) -> ApiResult {
    ok(state.service.host_inventory(&id, query.refresh).await?)
}

/// `POST /api/policies/validate`: always 200 with the report.
pub async fn policies_validate(
    State(state): State<AppState>,
    actor: Actor,
    PolicyText(body): PolicyText,
) -> ApiResult {
    ok(state.service.validate_off_runtime(&actor, body).await?)
}

/// `POST /api/policies`: 201 with `Location`.
pub async fn policies_create(
    State(state): State<AppState>,
    actor: Actor,
    PolicyText(body): PolicyText,
) -> ApiResult {
    let policy = state.service.create_policy(&actor, &body).await?;
    let location = format!("/api/policies/{}", policy.id);
    let mut response = with_status(StatusCode::CREATED, policy)?;
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// The query of `GET /api/policies`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// The previous page's `next` cursor.
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/policies?after=&limit=`.
pub async fn policies_list(
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> ApiResult {
    let after = parse_uuid_param("after", query.after.as_deref())?;
    let limit = limit_in(
        "limit",
        query.limit,
        POLICIES_DEFAULT_LIMIT,
        POLICIES_MAX_LIMIT,
    )?;
    ok(state.service.policies(after, limit).await?)
}

/// `GET /api/policies/{id}`.
pub async fn policy_get(State(state): State<AppState>, PathId(id): PathId) -> ApiResult {
    ok(state.service.policy(id).await?)
}

/// Reads `If-Match: <version_int>` (quotes and a weak `W/` prefix allowed).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_header(
            "If-Match",
            "If-Match must be the policy's version_int, e.g. `If-Match: 3`",
        )
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    let text = text.trim_matches('"');
    text.parse::<u64>().map(Some).map_err(|_| bad())
}

/// `PUT /api/policies/{id}`: bumps `version_int`; `If-Match` guards
/// against a concurrent change.
pub async fn policy_update(
    State(state): State<AppState>,
    actor: Actor,
    PathId(id): PathId,
    headers: HeaderMap,
    PolicyText(body): PolicyText,
) -> ApiResult {
    let expected = if_match(&headers)?;
    ok(state
        .service
        .update_policy(&actor, id, &body, expected)
        .await?)
}

/// `DELETE /api/policies/{id}`: 204.
pub async fn policy_delete(
    State(state): State<AppState>,
    actor: Actor,
    PathId(id): PathId,
) -> ApiResult {
    state.service.delete_policy(&actor, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The optional body of `POST /api/policies/{id}/enable`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnableBody {
    /// Enable despite errors in the latest dry-run (admins, with a reason).
    #[serde(default)]
    force: bool,
    /// Why; written to the audit log. Required with `force`.
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/policies/{id}/enable`.
pub async fn policy_enable(
    State(state): State<AppState>,
    actor: Actor,
    PathId(id): PathId,
    OptionalJson(body): OptionalJson<EnableBody>,
) -> ApiResult {
    let body = body.unwrap_or_default();
    let force_reason =
        if body.force {
            if actor.role < Role::Admin {
                return Err(super::auth::AuthError::Forbidden {
                    have: actor.role.as_str(),
                    need: Role::Admin.as_str(),
                }
                .into());
            }
            match body.reason.map(|r| r.trim().to_string()) {
                Some(reason) if !reason.is_empty() => Some(reason),
                _ => return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "policy.force_reason_required",
                    "a forced enable needs a non-empty `reason` (it is written to the audit log)",
                )),
            }
        } else {
            None
        };
    ok(state
        .service
        .enable_policy(&actor, id, force_reason)
        .await?)
}

/// `POST /api/policies/{id}/disable`.
pub async fn policy_disable(
    State(state): State<AppState>,
    actor: Actor,
    PathId(id): PathId,
) -> ApiResult {
    ok(state.service.disable_policy(&actor, id).await?)
}

/// `POST /api/policies/{id}/dry-run`: the transcript.
pub async fn policy_dry_run(
    State(state): State<AppState>,
    actor: Actor,
    PathId(id): PathId,
) -> ApiResult {
    ok(state.service.dry_run_policy(&actor, id).await?)
}

/// The query of `GET /api/policies/{id}/executions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionsQuery {
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/policies/{id}/executions?limit=`: the ledger, newest first.
pub async fn policy_executions(
    State(state): State<AppState>,
    PathId(id): PathId,
    Query(query): Query<ExecutionsQuery>,
) -> ApiResult {
    let limit = limit_in(
        "limit",
        query.limit,
        LEDGER_RUNS_PER_POLICY,
        LEDGER_RUNS_PER_POLICY,
    )?;
    ok(state.service.executions(id, limit).await?)
}

/// `GET /api/policies/{id}/restore-set`: the restore set (SPEC §6 "Outage
/// lifecycle"), what a `ledger` selector naming the policy resolves to.
pub async fn policy_restore_set(State(state): State<AppState>, PathId(id): PathId) -> ApiResult {
    ok(state.service.restore_set(id).await?)
}

/// `POST /api/policies/{id}/inverse`: the unsaved inverse.
pub async fn policy_inverse(State(state): State<AppState>, PathId(id): PathId) -> ApiResult {
    ok(state.service.inverse(id).await?)
}

/// `GET /api/transcripts/{id}`.
pub async fn transcript_get(State(state): State<AppState>, PathId(id): PathId) -> ApiResult {
    ok(state.service.transcript(id).await?)
}

/// The query of `POST /api/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Decide with driver dry-runs and execute nothing.
    #[serde(default)]
    dry_run: bool,
}

/// `POST /api/events?dry_run=`: 200 with the dry-run decisions and
/// timeline, 202 when live (actions run after the answer).
pub async fn events_inject(
    State(state): State<AppState>,
    actor: Actor,
    Query(query): Query<EventQuery>,
    Json(event): Json<Value>,
) -> ApiResult {
    let answer = state
        .service
        .inject_event(&actor, &event, query.dry_run)
        .await?;
    let status = if query.dry_run {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    with_status(status, answer)
}

/// `POST /api/webhooks/{name}`: no token, no CSRF; the service checks the
/// HMAC signature over the raw body.
pub async fn webhook(
    State(state): State<AppState>,
    PathText(name): PathText,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult {
    let signature = match headers.get(SIGNATURE_HEADER) {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::bad_header("X-Hazel-Signature", "the signature must be `sha256=<hex>`")
        })?),
    };
    let timestamp = match headers.get(TIMESTAMP_HEADER) {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::bad_header("X-Hazel-Timestamp", "the timestamp must be unix seconds")
        })?),
    };
    let answer = state
        .service
        .webhook(&name, signature, timestamp, &body)
        .await?;
    with_status(StatusCode::ACCEPTED, answer)
}

/// `GET /api/kill-switch`.
pub async fn kill_switch_get(State(state): State<AppState>) -> ApiResult {
    ok(state.service.kill_switch().await?)
}

/// The body of `POST /api/kill-switch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillSwitchBody {
    /// `true` pauses all execution; `false` resumes.
    paused: bool,
    /// Why; written to the audit log.
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/kill-switch`.
pub async fn kill_switch_set(
    State(state): State<AppState>,
    actor: Actor,
    Json(body): Json<KillSwitchBody>,
) -> ApiResult {
    ok(state
        .service
        .set_kill_switch(&actor, body.paused, body.reason)
        .await?)
}

/// The query of `GET /api/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    #[serde(default)]
    policy_id: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    /// The previous page's `next` (an entry's `seq`).
    #[serde(default)]
    before: Option<i64>,
    /// Only entries after this `seq` (following the log).
    #[serde(default)]
    after: Option<i64>,
    /// Only entries at or after this instant (RFC 3339).
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/audit?...`: newest first, `next` pages on.
pub async fn audit(State(state): State<AppState>, Query(params): Query<AuditParams>) -> ApiResult {
    let limit = limit_in("limit", params.limit, AUDIT_DEFAULT_LIMIT, AUDIT_MAX_LIMIT)?;
    let query = AuditQuery {
        policy_id: parse_uuid_param("policy_id", params.policy_id.as_deref())?,
        correlation_id: parse_uuid_param("correlation_id", params.correlation_id.as_deref())?,
        kind: params.kind.filter(|k| !k.is_empty()),
        before_seq: params.before,
        after_seq: params.after,
        since: parse_instant_param("since", params.since.as_deref())?,
        limit,
    };
    let items = state.service.audit(query).await?;
    let next = if items.len() == limit {
        items.last().map(|e| e.seq)
    } else {
        None
    };
    ok(json!({ "items": items, "next": next }))
}

/// Unknown route: 404 `route.not_found`.
pub async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::route_not_found(method.as_str(), uri.path())
}

/// Known route, other method: 405 `route.method_not_allowed`.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_reads_plain_quoted_and_weak_versions() {
        for (text, want) in [("3", 3), ("\"4\"", 4), ("W/\"5\"", 5)] {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_MATCH, HeaderValue::from_static(text));
            assert_eq!(if_match(&headers).unwrap(), Some(want), "{text}");
        }
        assert_eq!(if_match(&HeaderMap::new()).unwrap(), None);
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_MATCH, HeaderValue::from_static("*"));
        assert_eq!(if_match(&headers).unwrap_err().code(), "request.bad_header");
    }

    #[test]
    fn limits_default_and_refuse_out_of_range_values() {
        assert_eq!(limit_in("limit", None, 50, 500).unwrap(), 50);
        assert_eq!(limit_in("limit", Some(500), 50, 500).unwrap(), 500);
        assert_eq!(
            limit_in("limit", Some(0), 50, 500).unwrap_err().code(),
            "request.bad_query"
        );
        assert_eq!(
            limit_in("limit", Some(31), 30, 30).unwrap_err().code(),
            "request.bad_query"
        );
    }

    #[test]
    fn uuid_query_parameters_name_themselves_when_bad() {
        assert_eq!(parse_uuid_param("after", None).unwrap(), None);
        assert_eq!(parse_uuid_param("after", Some("")).unwrap(), None);
        let err = parse_uuid_param("after", Some("nope")).unwrap_err();
        assert_eq!(err.code(), "request.bad_query");
    }
}
