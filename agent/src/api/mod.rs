//! The HTTP API of `hazel serve` (SPEC §9): JSON over HTTP/1.1 on axum, in
//! front of the [`Service`]. Only this module knows HTTP: it turns requests
//! into service calls and service answers and refusals into status codes
//! and `{"error": {...}}` bodies.
//!
//! Every route is declared once in the `routes!` table below, with its
//! role, body, query and answers; the same declaration registers the axum
//! route (with its auth guard) and documents it in the OpenAPI document at
//! `GET /api/openapi.json`, so the document cannot drift from the code.
//!
//! Layers, outermost first: request metrics; the body limit (a declared
//! `Content-Length` above it is refused before anything is read, a streamed
//! body is cut at it); the rate limit (not on `/healthz`, `/readyz`,
//! `/metrics`, `/api/kill-switch`), one budget for requests that carry a
//! valid token and one for every other request, so that a flood without a
//! token never locks operators out, and one per configured webhook for its
//! posts, so that a flood elsewhere never refuses a sender; then, per route, the bearer token and role check and the
//! `X-Hazel-CSRF: 1` check on mutating methods (webhooks exempt). The API
//! never sends CORS headers, so browsers never grant the cross-site
//! preflight a forged CSRF header would need.
//!
//! A web console session cookie ([`session`]) is accepted wherever a
//! bearer token is, with the signed-in user's role; the console's own
//! routes ([`crate::console`]) are added to this router through
//! [`crate::console::routes`], each behind the same guard.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use crate::service::config::ApiLimits;
use crate::service::{Actor, Role, Service};

pub mod auth;
pub mod conn;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod openapi;
pub mod session;

pub use auth::{mint_for_cli, JwtKey};
pub use conn::ConnLimits;
pub use error::ApiError;

/// Default largest request body: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// The CSRF header every mutating request must carry with the value `1`.
pub const CSRF_HEADER: &str = "x-hazel-csrf";

/// The API's limits and token key.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest request body in bytes (413 `request.too_large` above).
    pub body_limit: usize,
    /// Sustained requests per second over the whole API; 0 turns the rate
    /// limit off.
    pub rate_per_s: u32,
    /// Requests allowed in a burst above the sustained rate (at least 1).
    pub rate_burst: u32,
    /// Time a request has to send its whole body once a route reads it
    /// (408 `request.body_timeout` after it).
    pub body_read_timeout: std::time::Duration,
    /// The HS256 key tokens are verified with.
    pub jwt: JwtKey,
}

impl ApiConfig {
    /// The defaults (1 MiB bodies, 100 requests/s, bursts of 200) with `jwt`.
    pub fn new(jwt: JwtKey) -> ApiConfig {
        ApiConfig {
            body_limit: DEFAULT_BODY_LIMIT,
            rate_per_s: 100,
            rate_burst: 200,
            body_read_timeout: std::time::Duration::from_secs(30),
            jwt,
        }
    }

    /// The limits of `hazel.yaml`'s `api` section with `jwt`.
    pub fn from_limits(limits: &ApiLimits, jwt: JwtKey) -> ApiConfig {
        ApiConfig {
            body_limit: limits.body_limit_bytes,
            rate_per_s: limits.rate_per_s,
            rate_burst: limits.rate_burst,
            body_read_timeout: limits.body_read_timeout,
            jwt,
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, no token (probes, metrics, the OpenAPI document).
    Public,
    /// External senders: no token, no CSRF header; the service checks the
    /// webhook's HMAC signature.
    Webhook,
    /// A bearer token with at least this role.
    Role(Role),
}

/// What a route reads from the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyDoc {
    /// Nothing.
    None,
    /// A JSON document (described).
    Json(&'static str),
    /// An optional JSON document; an empty body is allowed.
    OptionalJson(&'static str),
    /// A policy spec as JSON or YAML text.
    Policy,
    /// Raw bytes of any type (described).
    Raw(&'static str),
}

/// A documented query or header parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamDoc {
    /// The parameter's name.
    pub name: &'static str,
    /// Its JSON Schema type: `string`, `integer`, `boolean`.
    pub ty: &'static str,
    /// What it does.
    pub description: &'static str,
}

/// One route: what registers it and what documents it.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    /// `GET`, `POST`, `PUT`, `DELETE`.
    pub method: &'static str,
    /// The axum path; `{id}` parameters are UUIDs, any other `{name}` is text.
    pub path: &'static str,
    /// The handler's name, used as the OpenAPI `operationId`.
    pub operation: &'static str,
    /// Who may call it.
    pub access: Access,
    /// One line for the document.
    pub summary: &'static str,
    /// The request body.
    pub body: BodyDoc,
    /// Query parameters.
    pub query: &'static [ParamDoc],
    /// Request headers the handler reads (besides auth and CSRF).
    pub headers: &'static [ParamDoc],
    /// The answers the handler itself gives; see [`RouteDoc::responses`].
    pub answers: &'static [(u16, &'static str)],
}

/// Declares the route table: one entry per route, expanded into
/// [`ROUTES`] (the documentation) and `register` (the axum routes, each
/// behind its guard).
macro_rules! routes {
    ($(
        $method:ident $path:literal => $handler:ident {
            access: $access:expr,
            summary: $summary:literal,
            body: $body:expr,
            query: [$($qname:literal : $qty:literal => $qdesc:literal),* $(,)?],
            headers: [$($hname:literal : $hty:literal => $hdesc:literal),* $(,)?],
            answers: [$($code:literal => $cdesc:literal),+ $(,)?] $(,)?
        }
    )*) => {
        /// Every route of the API, in declaration order.
        pub static ROUTES: &[RouteDoc] = &[$(
            RouteDoc {
                method: stringify!($method),
                path: $path,
                operation: stringify!($handler),
                access: $access,
                summary: $summary,
                body: $body,
                query: &[$(ParamDoc { name: $qname, ty: $qty, description: $qdesc }),*],
                headers: &[$(ParamDoc { name: $hname, ty: $hty, description: $hdesc }),*],
                answers: &[$(($code, $cdesc)),+],
            }
        ),*];

        fn register(router: Router<AppState>, shared: &Arc<Shared>) -> Router<AppState> {
            let mut router = router;
            $(
                let guard_state = Guard {
                    shared: Arc::clone(shared),
                    access: $access,
                    mutating: is_mutating(stringify!($method)),
                };
                router = router.route(
                    $path,
                    on(MethodFilter::$method, handlers::$handler)
                        .route_layer(from_fn_with_state(guard_state, guard)),
                );
            )*
            router
        }
    };
}

routes! {
    GET "/healthz" => healthz {
        access: Access::Public,
        summary: "Liveness: 200 while the process runs",
        body: BodyDoc::None, query: [], headers: [],
        answers: [200 => "the process runs"],
    }
    GET "/readyz" => readyz {
        access: Access::Public,
        summary: "Readiness: 200 when the engine runs and the store can write; 503 says why not",
        body: BodyDoc::None, query: [], headers: [],
        answers: [200 => "ready", 503 => "not ready: {status, error: {code, message}} (engine.unavailable, store.unwritable)"],
    }
    GET "/metrics" => metrics {
        access: Access::Public,
        summary: "Metrics in the Prometheus text format 0.0.4",
        body: BodyDoc::None, query: [], headers: [],
        answers: [200 => "the exposition (text/plain; version=0.0.4)"],
    }
    GET "/api/openapi.json" => openapi {
        access: Access::Public,
        summary: "This document",
        body: BodyDoc::None, query: [], headers: [],
        answers: [200 => "the OpenAPI 3.1 document"],
    }
    GET "/api/hosts" => hosts_list {
        access: Access::Role(Role::Viewer),
        summary: "List hosts (secrets masked)",
        body: BodyDoc::None, query: [], headers: [],
        answers: [200 => "the hosts"],
    }
    POST "/api/hosts" => hosts_create {
        access: Access::Role(Role::Admin),
        summary: "Add a host with its connection config (stored with secrets encrypted)",
        body: BodyDoc::Json("a host: {id, plugin, self?, connection}"),
        query: [], headers: [],
        answers: [201 => "the host, with Location", 400 => "invalid host config",
                  409 => "the id is taken or declared in hazel.yaml"],
    }
    GET "/api/hosts/{host_id}/capabilities" => host_capabilities {
        access: Access::Role(Role::Viewer),
        summary: "The capabilities the host's plugin offers",
        body: BodyDoc::None, query: [], headers: [],
        answers: [200 => "capabilities by id", 404 => "no such host"],
    }
    GET "/api/hosts/{host_id}/inventory" => host_inventory {
        access: Access::Role(Role::Viewer),
        summary: "The host's inventory snapshot (children, ts, stale)",
        body: BodyDoc::None,
        query: ["refresh": "boolean" => "refresh on the fast path first (default false)"],
        headers: [],
        answers: [200 => "the snapshot", 400 => "bad query", 404 => "no such host"],
    }
    POST "/api/policies/validate" => policies_validate {
        access: Access::Role(Role::Operator),
        summary: "Validate a policy: the report of `hazel validate --json`, 200 even when not ok",
        body: BodyDoc::Policy, query: [], headers: [],
        answers: [200 => "the report {ok, issues, hash, ir}",
                  503 => "service.busy: no validation slot freed within 1 s, or 64 validations already wait for one (Retry-After)"],
    }
    POST "/api/policies" => policies_create {
        access: Access::Role(Role::Admin),
        summary: "Store a policy (a preflight error stores it disabled)",
        body: BodyDoc::Policy, query: [], headers: [],
        answers: [201 => "the stored policy, with Location", 400 => "blockers (policy.invalid, with the report)",
                  409 => "policy.duplicate_hash, with existing_id"],
    }
    GET "/api/policies" => policies_list {
        access: Access::Role(Role::Viewer),
        summary: "List policies, a page at a time",
        body: BodyDoc::None,
        query: ["after": "string" => "the previous page's `next` cursor",
                "limit": "integer" => "page size, 1..=500 (default 50)"],
        headers: [],
        answers: [200 => "a page {items, next?, total}", 400 => "bad cursor or limit"],
    }
    GET "/api/policies/{id}" => policy_get {
        access: Access::Role(Role::Viewer),
        summary: "One policy",
        body: BodyDoc::None, query: [], headers: [],
        answers: [200 => "the policy", 400 => "request.bad_id", 404 => "no such policy"],
    }
    PUT "/api/policies/{id}" => policy_update {
        access: Access::Role(Role::Admin),
        summary: "Replace a policy's spec; bumps version_int",
        body: BodyDoc::Policy, query: [],
        headers: ["If-Match": "integer" => "the version_int the change is based on"],
        answers: [200 => "the updated policy", 400 => "blockers or a bad id/header",
                  404 => "no such policy", 409 => "stale If-Match or duplicate hash"],
    }
    DELETE "/api/policies/{id}" => policy_delete {
        access: Access::Role(Role::Admin),
        summary: "Delete a policy",
        body: BodyDoc::None, query: [], headers: [],
        answers: [204 => "deleted", 400 => "request.bad_id", 404 => "no such policy"],
    }
    POST "/api/policies/{id}/enable" => policy_enable {
        access: Access::Role(Role::Admin),
        summary: "Enable a policy; refused when its latest dry-run has errors unless forced with a reason",
        body: BodyDoc::OptionalJson("{force?: bool, reason?: string}; force needs a non-empty reason"),
        query: [], headers: [],
        answers: [200 => "the policy", 400 => "policy.force_reason_required or a bad id",
                  404 => "no such policy", 409 => "policy.enable_blocked, with the dry-run's errors"],
    }
    POST "/api/policies/{id}/disable" => policy_disable {
        access: Access::Role(Role::Admin),
        summary: "Disable a policy",
        body: BodyDoc::None, query: [], headers: [],
        answers: [200 => "the policy", 400 => "request.bad_id", 404 => "no such policy"],
    }
    POST "/api/policies/{id}/dry-run" => policy_dry_run {
        access: Access::Role(Role::Operator),
        summary: "Dry-run a policy now: fast refresh, driver dry-runs, the persisted transcript",
        body: BodyDoc::None, query: [], headers: [],
        answers: [200 => "the transcript", 400 => "request.bad_id", 404 => "no such policy",
                  409 => "the policy no longer compiles", 422 => "a driver reports the action invalid"],
    }
    GET "/api/policies/{id}/executions" => policy_executions {
        access: Access::Role(Role::Viewer),
        summary: "The policy's execution ledger, newest first",
        body: BodyDoc::None,
        query: ["limit": "integer" => "1..=30 (default 30)"],
        headers: [],
        answers: [200 => "ledger entries", 400 => "bad id or limit", 404 => "no such policy"],
    }
    GET "/api/policies/{id}/restore-set" => policy_restore_set {
        access: Access::Role(Role::Viewer),
        summary: "The policy's restore set: the targets its runs changed that nobody changed back since",
        body: BodyDoc::None, query: [], headers: [],
        answers: [200 => "restore-set entries by host and target", 400 => "request.bad_id", 404 => "no such policy"],
    }
    POST "/api/policies/{id}/inverse" => policy_inverse {
        access: Access::Role(Role::Operator),
        summary: "The policy's inverse, unsaved, with enabled: false and needs_input",
        body: BodyDoc::None, query: [], headers: [],
        answers: [200 => "{spec_inverse, enabled, needs_input, notes}", 400 => "request.bad_id",
                  404 => "no such policy"],
    }
    GET "/api/transcripts/{id}" => transcript_get {
        access: Access::Role(Role::Viewer),
        summary: "A persisted dry-run transcript",
        body: BodyDoc::None, query: [], headers: [],
        answers: [200 => "the transcript", 400 => "request.bad_id", 404 => "no such transcript"],
    }
    POST "/api/events" => events_inject {
        access: Access::Role(Role::Operator),
        summary: "Inject a normalized event; dry_run=true decides with driver dry-runs and executes nothing",
        body: BodyDoc::Json("a normalized event (SPEC §1)"),
        query: ["dry_run": "boolean" => "decide without executing (default false)"],
        headers: [],
        answers: [200 => "the dry-run: decisions and a timeline (now, each hold's end, the inverses; docs/cli.md)", 202 => "accepted; the decisions (actions run after)",
                  400 => "an invalid event", 422 => "a driver reports an action invalid"],
    }
    POST "/api/webhooks/{name}" => webhook {
        access: Access::Webhook,
        summary: "A named webhook from an external sender (no token, no CSRF; HMAC-signed)",
        body: BodyDoc::Raw("the sender's payload; the signature covers these exact bytes"),
        query: [],
        headers: ["X-Hazel-Signature": "string" => "sha256=<hex> HMAC-SHA256 of `<X-Hazel-Timestamp>.<body>`",
                  "X-Hazel-Timestamp": "string" => "unix seconds, within 300 s of the agent's clock"],
        answers: [202 => "accepted; the decisions", 400 => "bad payload or header",
                  401 => "missing or bad signature, missing or stale timestamp",
                  403 => "no secret configured and unsigned posts not allowed",
                  404 => "no such webhook",
                  409 => "webhook.replayed: this signed post was already accepted"],
    }
    GET "/api/kill-switch" => kill_switch_get {
        access: Access::Role(Role::Viewer),
        summary: "The kill switch",
        body: BodyDoc::None, query: [], headers: [],
        answers: [200 => "{paused, since, by, reason}"],
    }
    POST "/api/kill-switch" => kill_switch_set {
        access: Access::Role(Role::Admin),
        summary: "Pause or resume all execution",
        body: BodyDoc::Json("{paused: bool, reason?: string}"),
        query: [], headers: [],
        answers: [200 => "the kill switch"],
    }
    GET "/api/audit" => audit {
        access: Access::Role(Role::Viewer),
        summary: "The audit log, newest first",
        body: BodyDoc::None,
        query: ["policy_id": "string" => "only this policy's records",
                "correlation_id": "string" => "only this correlation id",
                "kind": "string" => "only this kind (e.g. policy.enabled)",
                "before": "integer" => "the previous page's `next` (a seq)",
                "after": "integer" => "only records after this seq (to follow the log)",
                "since": "string" => "only records at or after this RFC 3339 instant",
                "limit": "integer" => "1..=1000 (default 100)"],
        headers: [],
        answers: [200 => "{items, next}", 400 => "bad filter"],
    }
}

impl RouteDoc {
    /// Whether the method changes state (and so needs the CSRF header,
    /// unless it is a webhook).
    pub fn mutating(&self) -> bool {
        is_mutating(self.method)
    }

    /// Every status the route can answer: the handler's own plus those of
    /// the layers in front of it (auth, CSRF, body parsing, the rate limit,
    /// server errors).
    pub fn responses(&self) -> Vec<(u16, &'static str)> {
        let mut out: Vec<(u16, &'static str)> = self.answers.to_vec();
        let mut add = |code: u16, text: &'static str| {
            if !out.iter().any(|(c, _)| *c == code) {
                out.push((code, text));
            }
        };
        match self.access {
            Access::Role(_) => {
                add(
                    401,
                    "auth.missing, auth.malformed, auth.invalid_signature, auth.expired",
                );
                add(403, "auth.forbidden (role too low) or csrf.missing");
            }
            Access::Webhook => add(401, "missing or bad signature"),
            Access::Public => {}
        }
        if self.body != BodyDoc::None {
            add(
                400,
                "request.malformed_json, request.invalid_body, request.not_utf8",
            );
            add(413, "request.too_large");
        }
        if matches!(
            self.body,
            BodyDoc::Json(_) | BodyDoc::OptionalJson(_) | BodyDoc::Policy
        ) {
            add(415, "request.content_type");
        }
        if !self.query.is_empty() || self.path.contains('{') {
            add(400, "request.bad_query or request.bad_id");
        }
        if self.path.starts_with("/api/") && self.access != Access::Public {
            add(429, "rate_limited, with Retry-After");
            add(500, "internal (details in the agent's log)");
            add(503, "engine.unavailable");
        }
        out.sort_by_key(|(code, _)| *code);
        out
    }
}

/// The axum state: the service and the API's own shared parts.
#[derive(Clone)]
pub struct AppState {
    service: Service,
    shared: Arc<Shared>,
}

impl AppState {
    /// The service every route calls.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// The console's signed-in sessions.
    pub fn sessions(&self) -> &session::Sessions {
        &self.shared.sessions
    }

    /// The dashboard snapshot every open dashboard stream shares.
    pub(crate) fn dashboard_feed(&self) -> &crate::console::live::Snapshots {
        &self.shared.dashboard
    }
}

/// What every request shares: the key, the limiter, the rendered document.
struct Shared {
    jwt: JwtKey,
    /// The console's signed-in sessions.
    sessions: Arc<session::Sessions>,
    /// `(with a valid token, without)`: see the module docs.
    limiter: Option<(DefaultDirectRateLimiter, DefaultDirectRateLimiter)>,
    /// Each configured webhook's own budget, by name
    /// (`webhooks.NAME.rate_per_s`; `None` when that is 0).
    webhooks: HashMap<String, Option<DefaultDirectRateLimiter>>,
    body_limit: usize,
    body_read_timeout: std::time::Duration,
    openapi: Bytes,
    /// One dashboard read per half beat for all open dashboard streams.
    dashboard: crate::console::live::Snapshots,
}

/// The body limit, put in the request's extensions for the extractors'
/// error message, and the time the body has to arrive in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit(pub(crate) usize, pub(crate) std::time::Duration);

/// One route's guard: its access rule and whether it mutates.
#[derive(Clone)]
struct Guard {
    shared: Arc<Shared>,
    access: Access,
    mutating: bool,
}

fn is_mutating(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "DELETE" | "PATCH")
}

/// The router of the whole API over `service`.
pub fn router(service: Service, config: ApiConfig) -> Router {
    let limiter = quota(config.rate_per_s, config.rate_burst)
        .map(|quota| (RateLimiter::direct(quota), RateLimiter::direct(quota)));
    let webhooks = service
        .config()
        .webhooks
        .iter()
        .map(|(name, hook)| {
            let limiter = quota(hook.rate_per_s, hook.rate_burst).map(RateLimiter::direct);
            (name.clone(), limiter)
        })
        .collect();
    let shared = Arc::new(Shared {
        jwt: config.jwt,
        sessions: Arc::new(session::Sessions::default()),
        limiter,
        webhooks,
        body_limit: config.body_limit,
        body_read_timeout: config.body_read_timeout,
        openapi: Bytes::from(openapi::document(ROUTES).to_string()),
        dashboard: crate::console::live::Snapshots::default(),
    });
    let state = AppState {
        service,
        shared: Arc::clone(&shared),
    };
    let mut router = register(Router::new(), &shared);
    for route in crate::console::routes() {
        let guard_state = Guard {
            shared: Arc::clone(&shared),
            access: route.access,
            mutating: route.mutating,
        };
        router = router.route(
            route.path,
            route
                .handler
                .route_layer(from_fn_with_state(guard_state, guard)),
        );
    }
    router
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(from_fn_with_state(Arc::clone(&shared), rate_limit))
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(from_fn_with_state(Arc::clone(&shared), body_limit))
        .layer(from_fn_with_state(state.clone(), record))
        .layer(axum::middleware::from_fn(correlation))
        .with_state(state)
}

/// `rate` per second with bursts of `burst` (at least 1); `None` for a
/// rate of 0, which turns the limit off.
fn quota(rate: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(rate)?;
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Some(Quota::per_second(rate).allow_burst(burst))
}

/// The request header that carries a caller's correlation id.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The correlation id of one request: the caller's `X-Correlation-Id` (a
/// UUID), else a fresh one. Audit records and events of the request carry
/// it, and the answer echoes it, so a caller can find its own records.
#[derive(Debug, Clone, Copy)]
pub struct CorrelationId(pub Uuid);

/// Takes or mints the request's [`CorrelationId`] and echoes it; a header
/// that is not a UUID is refused (400 `request.bad_header`).
async fn correlation(mut req: Request, next: Next) -> Response {
    let id = match req.headers().get(CORRELATION_HEADER) {
        None => Uuid::new_v4(),
        Some(value) => match value.to_str().ok().and_then(|v| Uuid::parse_str(v.trim()).ok()) {
            Some(id) => id,
            None => {
                return ApiError::bad_header(
                    "X-Correlation-Id",
                    "`X-Correlation-Id` must be a UUID (e.g. 0b6f6a4e-3c1d-4d4c-9e57-0f3e2b1a9c42); leave it out to get a fresh one",
                )
                .into_response()
            }
        },
    };
    req.extensions_mut().insert(CorrelationId(id));
    let mut response = next.run(req).await;
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(CORRELATION_HEADER, value);
    }
    response
}

/// Serves `router` on `listener` with the default connection limits until
/// `shutdown` completes, then stops taking connections and lets requests
/// in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    conn::serve(listener, router, ConnLimits::default(), shutdown).await
}

/// Counts each answer by route template and status.
async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let response = next.run(req).await;
    let route = route.as_deref().unwrap_or("unmatched");
    state
        .service
        .metrics()
        .http(route, response.status().as_u16());
    response
}

/// Refuses a declared body above the limit before reading it.
async fn body_limit(State(shared): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > shared.body_limit as u64) {
        let mut response = ApiError::too_large(shared.body_limit).into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    req.extensions_mut()
        .insert(BodyLimit(shared.body_limit, shared.body_read_timeout));
    next.run(req).await
}

/// The rate limit: 429 `rate_limited` with `Retry-After`. Requests with a
/// valid token (whatever their role; the route checks it) and all others
/// draw on separate budgets of the same size; a post to a configured
/// webhook draws on that webhook's own budget only, so a flood elsewhere
/// never refuses a sender's signed posts (SPEC §9).
async fn rate_limit(State(shared): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    // A configured webhook's name; anything else under the prefix (an
    // unknown name) counts as anonymous.
    let webhook = req
        .uri()
        .path()
        .strip_prefix("/api/webhooks/")
        .and_then(|name| shared.webhooks.get(name));
    if let Some(limiter) = webhook {
        if let Some(Err(not_until)) = limiter.as_ref().map(|l| l.check()) {
            return rate_limited(not_until);
        }
        return next.run(req).await;
    }
    // The probes, and the kill switch: an operator must be able to pause
    // the agent even while something floods the API (the route still needs
    // an admin token and the CSRF header).
    let exempt = matches!(
        req.uri().path(),
        "/healthz" | "/readyz" | "/metrics" | "/api/kill-switch"
    );
    if let (Some((signed, other)), false) = (&shared.limiter, exempt) {
        let now = chrono::Utc::now();
        let claims = match req.headers().get(header::AUTHORIZATION) {
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|v| auth::bearer(Some(v)).ok())
                .and_then(|t| auth::verify(&shared.jwt, t, now).ok()),
            None => shared
                .sessions
                .from_headers(req.headers(), now)
                .map(|s| s.claims()),
        };
        let limiter = if claims.is_some() { signed } else { other };
        if let Err(not_until) = limiter.check() {
            return rate_limited(not_until);
        }
        // The route's guard reads these instead of verifying again.
        if let Some(claims) = claims {
            req.extensions_mut().insert(Verified(claims));
        }
    }
    next.run(req).await
}

/// The 429 answer, with the seconds until the budget has room again.
fn rate_limited(not_until: governor::NotUntil<<DefaultClock as Clock>::Instant>) -> Response {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::rate_limited(secs.max(1)).into_response()
}

/// A token's claims, verified by [`rate_limit`] for this request.
#[derive(Debug, Clone)]
struct Verified(auth::Claims);

/// The per-route guard: token (or session cookie) and role, then CSRF on
/// mutating methods.
async fn guard(State(guard): State<Guard>, mut req: Request, next: Next) -> Response {
    match check(&guard, &mut req) {
        Ok(()) => next.run(req).await,
        Err(err) => err.into_response(),
    }
}

fn check(guard: &Guard, req: &mut Request) -> Result<(), ApiError> {
    let need = match guard.access {
        Access::Public | Access::Webhook => return Ok(()),
        Access::Role(need) => need,
    };
    let claims = match req.extensions_mut().remove::<Verified>() {
        Some(Verified(claims)) => claims,
        None => {
            let header = match req.headers().get(header::AUTHORIZATION) {
                // No token: a console session cookie stands for one.
                None => match guard
                    .shared
                    .sessions
                    .from_headers(req.headers(), chrono::Utc::now())
                {
                    Some(session) => return authorize(guard, req, session.claims(), need),
                    None => None,
                },
                Some(value) => Some(value.to_str().map_err(|_| auth::AuthError::Malformed {
                    reason: "the Authorization header is not text".into(),
                })?),
            };
            let token = auth::bearer(header)?;
            auth::verify(&guard.shared.jwt, token, chrono::Utc::now())?
        }
    };
    authorize(guard, req, claims, need)
}

/// The role and CSRF checks for verified `claims`; puts the [`Actor`] in
/// the request.
fn authorize(
    guard: &Guard,
    req: &mut Request,
    claims: auth::Claims,
    need: Role,
) -> Result<(), ApiError> {
    if claims.role < need {
        return Err(auth::AuthError::Forbidden {
            have: claims.role.as_str(),
            need: need.as_str(),
        }
        .into());
    }
    if guard.mutating
        && req
            .headers()
            .get(CSRF_HEADER)
            .is_none_or(|v| v.as_bytes() != b"1")
    {
        return Err(auth::AuthError::CsrfMissing.into());
    }
    let correlation_id = req.extensions().get::<CorrelationId>().map(|c| c.0);
    req.extensions_mut().insert(Actor {
        subject: claims.sub,
        role: claims.role,
        correlation_id,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn no_two_routes_share_a_method_and_path() {
        let mut seen = BTreeSet::new();
        for route in ROUTES {
            assert!(
                seen.insert((route.method, route.path)),
                "{} {} is declared twice",
                route.method,
                route.path
            );
        }
    }

    #[test]
    fn only_the_webhook_route_is_exempt_from_tokens_under_api_besides_the_document() {
        let open: Vec<&str> = ROUTES
            .iter()
            .filter(|r| r.path.starts_with("/api/") && !matches!(r.access, Access::Role(_)))
            .map(|r| r.path)
            .collect();
        assert_eq!(open, ["/api/openapi.json", "/api/webhooks/{name}"]);
    }

    #[test]
    fn viewers_may_only_read() {
        for route in ROUTES {
            if route.access == Access::Role(Role::Viewer) {
                assert_eq!(
                    route.method, "GET",
                    "{} is mutating but open to viewers",
                    route.path
                );
            }
        }
    }

    #[test]
    fn policy_hosts_and_kill_switch_changes_need_an_admin() {
        for route in ROUTES.iter().filter(|r| r.mutating()) {
            let admin_only = route.path == "/api/hosts"
                || route.path == "/api/kill-switch"
                || route.path == "/api/policies"
                || route.path == "/api/policies/{id}"
                || route.path.ends_with("/enable")
                || route.path.ends_with("/disable");
            if admin_only {
                assert_eq!(
                    route.access,
                    Access::Role(Role::Admin),
                    "{} {}",
                    route.method,
                    route.path
                );
            }
        }
    }

    #[test]
    fn every_route_answers_a_success_and_token_routes_document_401_403_and_429() {
        for route in ROUTES {
            let codes: Vec<u16> = route.responses().iter().map(|(c, _)| *c).collect();
            assert!(
                codes.iter().any(|c| (200..300).contains(c)),
                "{} {} has no success answer",
                route.method,
                route.path
            );
            if matches!(route.access, Access::Role(_)) {
                for code in [401, 403, 429] {
                    assert!(
                        codes.contains(&code),
                        "{} {} lacks {code}",
                        route.method,
                        route.path
                    );
                }
            }
            if route.body != BodyDoc::None {
                assert!(
                    codes.contains(&413),
                    "{} {} lacks 413",
                    route.method,
                    route.path
                );
            }
        }
    }
}
