//! The web console (SPEC §4, §5, §9, §11 in a browser): server-rendered
//! HTML from askama templates (checked at compile time), htmx for partial
//! updates, one small stylesheet; both assets are embedded in the binary.
//! It is a client of the same [`Service`](crate::service::Service) the API
//! calls and knows no engine internals.
//!
//! Its routes join the API's router ([`routes`], called by
//! [`crate::api::router`]) behind the same guard: a page answers only to a
//! signed-in session (else it redirects to `/login`), a control's request is
//! checked for the role it needs and the `X-Hazel-CSRF: 1` header, which
//! htmx sends on every request (`hx-headers` on the body). The templates
//! draw a control only for the roles allowed to use it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use askama::Template;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Extension;
use chrono::Utc;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::api::extract::{Form, PathId};
use crate::api::session::{self, Session};
use crate::api::{Access, AppState, CSRF_HEADER};
use crate::engine::store::AuditQuery;
use crate::service::{Actor, Role, ServiceError};

pub mod attempts;
pub mod live;
pub mod runs;
mod table;
pub mod wizard;
pub mod words;

use attempts::Attempts;

/// One console route: its path, the guard's access rule and the handler.
pub struct Route {
    pub path: &'static str,
    /// What the API's guard checks before the handler runs.
    pub access: Access,
    /// Whether the guard checks the CSRF header.
    pub mutating: bool,
    pub handler: MethodRouter<AppState>,
}

/// The console's routes, to add to the API's router.
pub fn routes() -> Vec<Route> {
    let attempts = Arc::new(Attempts::default());
    let page = |handler: MethodRouter<AppState>| Route {
        path: "",
        access: Access::Public,
        mutating: false,
        handler,
    };
    let control = |access: Role, handler: MethodRouter<AppState>| Route {
        path: "",
        access: Access::Role(access),
        mutating: true,
        handler,
    };
    let mut routes = vec![
        Route {
            path: "/",
            ..page(get(dashboard))
        },
        Route {
            path: "/login",
            // The sign-in checks the CSRF header itself: no session yet.
            ..page(get(login_page).post(login).layer(Extension(attempts)))
        },
        Route {
            path: "/policies",
            ..page(get(policies_page))
        },
        Route {
            path: "/policies/{id}",
            ..page(get(policy_page))
        },
        Route {
            path: "/assets/htmx.min.js",
            ..page(get(htmx_js))
        },
        Route {
            path: "/assets/console.css",
            ..page(get(stylesheet))
        },
        Route {
            path: "/runs",
            ..page(get(runs::runs_page))
        },
        Route {
            path: "/assets/live.js",
            ..page(get(live::live_js))
        },
        Route {
            path: "/ui/dashboard/events",
            access: Access::Role(Role::Viewer),
            mutating: false,
            handler: get(live::dashboard_events),
        },
        Route {
            path: "/ui/dashboard/live",
            access: Access::Role(Role::Viewer),
            mutating: false,
            handler: get(dashboard_live),
        },
        Route {
            path: "/logout",
            ..control(Role::Viewer, post(logout))
        },
        Route {
            path: "/ui/kill-switch",
            ..control(Role::Admin, post(kill_switch))
        },
        Route {
            path: "/ui/policies/{id}/enable",
            ..control(Role::Admin, post(policy_enable))
        },
        Route {
            path: "/ui/policies/{id}/disable",
            ..control(Role::Admin, post(policy_disable))
        },
        Route {
            path: "/ui/simulate",
            ..control(Role::Operator, post(runs::simulate))
        },
        Route {
            path: "/ui/policies/{id}/dry-run",
            ..control(Role::Operator, post(policy_dry_run))
        },
    ];
    routes.extend(wizard::routes());
    routes
}

const HTMX_JS: &[u8] = include_bytes!("assets/htmx.min.js");
const CONSOLE_CSS: &[u8] = include_bytes!("assets/console.css");

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

async fn htmx_js() -> Response {
    asset("text/javascript; charset=utf-8", HTMX_JS)
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

/// Who is signed in, as the templates see it.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub user: String,
    pub role: &'static str,
    /// May pause, resume, enable and disable.
    pub admin: bool,
    /// May dry-run.
    pub operator: bool,
}

impl Viewer {
    fn of(session: &Session) -> Viewer {
        Viewer {
            user: session.user.clone(),
            role: session.role.as_str(),
            admin: session.role >= Role::Admin,
            operator: session.role >= Role::Operator,
        }
    }

    fn of_actor(actor: &Actor) -> Viewer {
        Viewer::of(&Session {
            user: actor.subject.clone(),
            role: actor.role,
            created: Utc::now(),
            expires: Utc::now(),
        })
    }
}

/// The signed-in viewer of a page request, if any.
fn signed_in(state: &AppState, headers: &HeaderMap) -> Option<Viewer> {
    state
        .sessions()
        .from_headers(headers, Utc::now())
        .map(|s| Viewer::of(&s))
}

/// A page handler's signed-in viewer. Pages are public routes to the API's
/// guard (a browser without a session gets a redirect, not a 401), so a
/// page takes this extractor: without a session the request is redirected
/// to `/login` before the handler runs, and no page can forget the check.
struct SignedIn(Viewer);

impl axum::extract::FromRequestParts<AppState> for SignedIn {
    type Rejection = Redirect;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        signed_in(state, &parts.headers)
            .map(SignedIn)
            .ok_or_else(|| Redirect::to("/login"))
    }
}

fn render(template: &impl Template) -> Response {
    render_status(StatusCode::OK, template)
}

fn render_status(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console template failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html(
                    "<p role=\"alert\">The page could not be drawn; the agent's log says why.</p>"
                        .to_string(),
                ),
            )
                .into_response()
        }
    }
}

/// A refusal of the service, as a fragment in place of the control's result.
fn service_error(err: &ServiceError) -> Response {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    render_status(
        status,
        &ErrorFragment {
            code: err.code().to_string(),
            message: err.to_string(),
            items: Vec::new(),
        },
    )
}

// ---- sign-in ----------------------------------------------------------------

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorFragment {
    code: String,
    message: String,
    items: Vec<String>,
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if signed_in(&state, &headers).is_some() {
        return Redirect::to("/").into_response();
    }
    render(&LoginPage {})
}

/// The client's address, for the per-address attempt limit.
fn client_ip(connect: Option<&Extension<ConnectInfo<SocketAddr>>>) -> IpAddr {
    connect.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0 .0.ip())
}

async fn login(
    State(state): State<AppState>,
    Extension(attempts): Extension<Arc<Attempts>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if headers
        .get(CSRF_HEADER)
        .is_none_or(|v| v.as_bytes() != b"1")
    {
        return crate::api::ApiError::from(crate::api::auth::AuthError::CsrfMissing)
            .into_response();
    }
    let ip = client_ip(connect.as_ref());
    let now = Utc::now();
    if let Err(wait) = attempts.check(&form.username, ip, now) {
        tracing::warn!(user = %form.username, %ip, "console sign-in rate limited");
        let mut response = render_status(
            StatusCode::TOO_MANY_REQUESTS,
            &ErrorFragment {
                code: "auth.rate_limited".into(),
                message: format!(
                    "Too many failed sign-ins. Try again in {} s.",
                    wait.as_secs().max(1)
                ),
                items: Vec::new(),
            },
        );
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    let user = match state
        .service()
        .authenticate(&form.username, &form.password)
        .await
    {
        Ok(user) => user,
        Err(e) => return service_error(&e),
    };
    let Some(user) = user else {
        attempts.failed(&form.username, ip, now);
        tracing::info!(user = %form.username, %ip, "console sign-in refused");
        return render_status(
            StatusCode::UNAUTHORIZED,
            &ErrorFragment {
                code: "auth.bad_credentials".into(),
                message: "Wrong user name or password.".into(),
                items: Vec::new(),
            },
        );
    };
    attempts.succeeded(&user.name);
    tracing::info!(user = %user.name, role = user.role.as_str(), "console sign-in");
    let token = state.sessions().create(&user.name, user.role, now);
    let cookie = session::set_cookie(&token, session::SESSION_TTL, session::over_tls(&headers));
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
        .headers_mut()
        .insert("hx-redirect", HeaderValue::from_static("/"));
    response
}

async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = session::cookie(&headers, session::SESSION_COOKIE) {
        state.sessions().remove(&token);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(session::over_tls(&headers))) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
        .headers_mut()
        .insert("hx-redirect", HeaderValue::from_static("/login"));
    response
}

// ---- dashboard --------------------------------------------------------------

/// The kill switch as drawn.
#[derive(Clone)]
struct KillView {
    paused: bool,
    since: String,
    by: String,
    reason: String,
}

struct HostRow {
    id: String,
    plugin: String,
    reachable: &'static str,
    stale: bool,
    /// What the last discovery could not read (empty: everything).
    partial: String,
    snapshot: String,
    breaker: &'static str,
}

/// An item the engine accepted and has not finished.
struct ActiveRow {
    /// `running` or `queued`.
    state: &'static str,
    /// When it started running, or when it was queued.
    since: String,
    policy: String,
    policy_id: String,
    action: String,
    targets: String,
}

struct RunRow {
    at: String,
    policy: String,
    policy_id: String,
    action: String,
    targets: String,
    ok: bool,
    reason: String,
}

#[derive(Template)]
#[template(path = "console/dashboard.html")]
struct DashboardPage {
    viewer: Viewer,
    kill: KillView,
    live: LiveData,
}

/// The part of the dashboard that refreshes itself.
struct LiveData {
    ups: Vec<live::UpsRow>,
    hosts: Vec<HostRow>,
    /// Items running or waiting to run now.
    active: Vec<ActiveRow>,
    runs: Vec<RunRow>,
    updated: String,
}

#[derive(Template)]
#[template(path = "console/live.html")]
struct LiveFragment {
    live: LiveData,
}

#[derive(Template)]
#[template(path = "console/kill_switch.html")]
struct KillFragment {
    viewer: Viewer,
    kill: KillView,
}

fn time(t: &chrono::DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

async fn kill_view(state: &AppState) -> Result<KillView, ServiceError> {
    let k = state.service().kill_switch().await?;
    Ok(KillView {
        paused: k.paused,
        since: k.since.as_ref().map(time).unwrap_or_default(),
        by: k.by.unwrap_or_default(),
        reason: k.reason.unwrap_or_default(),
    })
}

async fn live(state: &AppState) -> Result<LiveData, ServiceError> {
    let service = state.service();
    let hosts = service
        .hosts()
        .await?
        .into_iter()
        .map(|h| {
            let health = service.host_health(&h.id);
            HostRow {
                reachable: match health.reachable {
                    Some(true) => "reachable",
                    Some(false) => "unreachable",
                    None => "unknown",
                },
                stale: h.inventory.as_ref().is_none_or(|i| i.stale),
                partial: h
                    .inventory
                    .as_ref()
                    .map(|i| i.partial.join("; "))
                    .unwrap_or_default(),
                snapshot: h
                    .inventory
                    .as_ref()
                    .and_then(|i| i.ts.as_ref().map(time))
                    .unwrap_or_else(|| "never".into()),
                breaker: health.breaker,
                id: h.id,
                plugin: h.plugin,
            }
        })
        .collect();
    let names: std::collections::HashMap<Uuid, String> = all_policies(service)
        .await?
        .into_iter()
        .map(|p| (p.id, p.name))
        .collect();
    let finished = service
        .audit(AuditQuery {
            kind: Some("execution.finished".into()),
            limit: 15,
            ..AuditQuery::default()
        })
        .await?;
    let runs = finished
        .into_iter()
        .map(|e| {
            let d = &e.record.details;
            let policy_id = e.record.policy_id;
            RunRow {
                at: time(&e.record.ts),
                policy: policy_id
                    .and_then(|id| names.get(&id).cloned())
                    .unwrap_or_else(|| "(deleted policy)".into()),
                policy_id: policy_id.map(|id| id.to_string()).unwrap_or_default(),
                action: format!(
                    "{} {} on {}",
                    d["capability"].as_str().unwrap_or(""),
                    d["verb"].as_str().unwrap_or(""),
                    d["host"].as_str().unwrap_or("")
                ),
                targets: list(&d["targets"]),
                ok: d["ok"].as_bool().unwrap_or(false),
                reason: d["reason"].as_str().unwrap_or("").to_string(),
            }
        })
        .collect();
    let active = service
        .open_items()
        .await?
        .into_iter()
        .map(|item| ActiveRow {
            state: if item.started_at.is_some() {
                "running"
            } else {
                "queued"
            },
            since: time(item.started_at.as_ref().unwrap_or(&item.created_at)),
            policy: names
                .get(&item.policy_id)
                .cloned()
                .unwrap_or_else(|| "(deleted policy)".into()),
            policy_id: item.policy_id.to_string(),
            action: format!("{} {} on {}", item.capability, item.verb, item.host),
            targets: item.targets.join(", "),
        })
        .collect();
    Ok(LiveData {
        ups: live::ups_rows(service),
        hosts,
        active,
        runs,
        updated: time(&Utc::now()),
    })
}

/// Every stored policy, page by page.
async fn all_policies(
    service: &crate::service::Service,
) -> Result<Vec<crate::service::PolicyView>, ServiceError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = service.policies(after, 500).await?;
        out.extend(page.items);
        match page.next.as_deref().map(Uuid::parse_str) {
            Some(Ok(next)) => after = Some(next),
            _ => return Ok(out),
        }
    }
}

fn list(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

async fn dashboard(State(state): State<AppState>, SignedIn(viewer): SignedIn) -> Response {
    let result = async { Ok::<_, ServiceError>((kill_view(&state).await?, live(&state).await?)) };
    match result.await {
        Ok((kill, live)) => render(&DashboardPage { viewer, kill, live }),
        Err(e) => service_error(&e),
    }
}

async fn dashboard_live(State(state): State<AppState>) -> Response {
    match live(&state).await {
        Ok(live) => render(&LiveFragment { live }),
        Err(e) => service_error(&e),
    }
}

#[derive(Deserialize)]
struct KillForm {
    /// `pause` or `resume`.
    action: String,
    #[serde(default)]
    reason: String,
}

async fn kill_switch(
    State(state): State<AppState>,
    actor: Actor,
    Form(form): Form<KillForm>,
) -> Response {
    let paused = form.action == "pause";
    let reason = Some(form.reason.trim().to_string()).filter(|r| !r.is_empty());
    if let Err(e) = state
        .service()
        .set_kill_switch(&actor, paused, reason)
        .await
    {
        return service_error(&e);
    }
    match kill_view(&state).await {
        Ok(kill) => render(&KillFragment {
            viewer: Viewer::of_actor(&actor),
            kill,
        }),
        Err(e) => service_error(&e),
    }
}

// ---- policies ---------------------------------------------------------------

struct PolicyRow {
    id: String,
    name: String,
    intent: &'static str,
    status: String,
    severity: String,
    trigger: String,
    /// When the newest run in the ledger started, for people; empty if none.
    last_run: String,
    /// The same instant in RFC 3339, for sorting.
    last_run_at: String,
    /// That run's status (`ok`, `partial`, `failed`, ...).
    last_outcome: String,
}

#[derive(Template)]
#[template(path = "console/policies.html")]
struct PoliciesPage {
    viewer: Viewer,
    rows: Vec<PolicyRow>,
    total: usize,
    query: table::PoliciesQuery,
}

#[derive(Template)]
#[template(path = "console/policy_row.html")]
struct PolicyRowFragment {
    viewer: Viewer,
    row: PolicyRow,
}

fn row(p: &crate::service::PolicyView) -> PolicyRow {
    row_with_run(p, None)
}

fn row_with_run(
    p: &crate::service::PolicyView,
    run: Option<&crate::engine::store::RunHeadline>,
) -> PolicyRow {
    PolicyRow {
        last_run: run.map(|r| time(&r.started_at)).unwrap_or_default(),
        last_run_at: run
            .map(|r| {
                r.started_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            })
            .unwrap_or_default(),
        last_outcome: run
            .map(|r| r.status.as_str().to_string())
            .unwrap_or_default(),
        id: p.id.to_string(),
        name: p.name.clone(),
        intent: if p.enabled_intent {
            "enabled"
        } else {
            "disabled"
        },
        status: p.status.clone(),
        severity: p
            .last_dry_run
            .as_ref()
            .and_then(|d| d["severity"].as_str())
            .unwrap_or("not run")
            .to_string(),
        trigger: words::trigger_summary(&p.spec),
    }
}

async fn policies_page(
    State(state): State<AppState>,
    SignedIn(viewer): SignedIn,
    axum::extract::Query(query): axum::extract::Query<table::PoliciesQuery>,
) -> Response {
    match policies_page_html(state.service(), viewer, query).await {
        Ok(page) => render(&page),
        Err(e) => service_error(&e),
    }
}

async fn policies_page_html(
    service: &crate::service::Service,
    viewer: Viewer,
    query: table::PoliciesQuery,
) -> Result<PoliciesPage, ServiceError> {
    let policies = all_policies(service).await?;
    let runs = service
        .last_runs(policies.iter().map(|p| p.id).collect())
        .await?;
    Ok(PoliciesPage {
        viewer,
        total: policies.len(),
        rows: query.apply(
            policies
                .iter()
                .map(|p| row_with_run(p, runs.get(&p.id)))
                .collect(),
        ),
        query,
    })
}

/// The policies page as `viewer` sees it, unfiltered: what `GET
/// /policies` answers, without the HTTP around it (for the render
/// benchmark, `agent/benches/console.rs`).
pub async fn render_policies_page(
    service: &crate::service::Service,
    viewer: Viewer,
) -> Result<String, ServiceError> {
    let page = policies_page_html(service, viewer, table::PoliciesQuery::default()).await?;
    page.render().map_err(|e| ServiceError::Internal {
        message: format!("policies page: {e}"),
    })
}

/// A row after enable or disable, with its last run.
async fn fresh_row(state: &AppState, p: &crate::service::PolicyView) -> PolicyRow {
    let runs = state
        .service()
        .last_runs(vec![p.id])
        .await
        .unwrap_or_default();
    row_with_run(p, runs.get(&p.id))
}

async fn policy_enable(
    State(state): State<AppState>,
    actor: Actor,
    PathId(id): PathId,
) -> Response {
    match state.service().enable_policy(&actor, id, None).await {
        Ok(p) => render(&PolicyRowFragment {
            viewer: Viewer::of_actor(&actor),
            row: fresh_row(&state, &p).await,
        }),
        Err(ServiceError::EnableBlocked { errors, .. }) => beside_row(
            id,
            render_status(
                StatusCode::CONFLICT,
                &ErrorFragment {
                    code: "policy.enable_blocked".into(),
                    message: "Enable refused: the dry-run has errors.".into(),
                    items: errors.iter().map(error_line).collect(),
                },
            ),
        ),
        Err(e) => beside_row(id, service_error(&e)),
    }
}

/// Shows a refusal under the policy's row instead of replacing the row.
fn beside_row(id: Uuid, mut response: Response) -> Response {
    if let Ok(target) = HeaderValue::from_str(&format!("#result-{id}")) {
        response.headers_mut().insert("hx-retarget", target);
        response
            .headers_mut()
            .insert("hx-reswap", HeaderValue::from_static("innerHTML"));
    }
    response
}

/// One dry-run error (`{code, path, message}` or an action's answer) as text.
fn error_line(e: &Value) -> String {
    let text = |k: &str| e[k].as_str().map(str::to_string);
    if let Some(message) = text("message") {
        let code = text("code").unwrap_or_default();
        return format!("{code}: {message}");
    }
    if let Some(reason) = text("reason") {
        return format!("action {}: {reason}", e["action_index"]);
    }
    e["error"]["message"]
        .as_str()
        .map_or_else(|| e.to_string(), str::to_string)
}

async fn policy_disable(
    State(state): State<AppState>,
    actor: Actor,
    PathId(id): PathId,
) -> Response {
    match state.service().disable_policy(&actor, id).await {
        Ok(p) => render(&PolicyRowFragment {
            viewer: Viewer::of_actor(&actor),
            row: fresh_row(&state, &p).await,
        }),
        Err(e) => beside_row(id, service_error(&e)),
    }
}

struct LedgerRow {
    run_id: String,
    started: String,
    status: String,
    severity: String,
    event: String,
    results: Vec<String>,
    explain: String,
}

#[derive(Template)]
#[template(path = "console/policy.html")]
struct PolicyPage {
    viewer: Viewer,
    row: PolicyRow,
    spec: String,
    /// Schema pane: the findings of the last validation (SPEC §4), one
    /// line each.
    findings: Vec<String>,
    /// Compile pane: the spec's hash and its compiled IR.
    hash: String,
    ir: String,
    ledger: Vec<LedgerRow>,
}

async fn policy_page(
    State(state): State<AppState>,
    SignedIn(viewer): SignedIn,
    PathId(id): PathId,
) -> Response {
    let service = state.service();
    let result = async {
        let policy = service.policy(id).await?;
        let runs = service.executions(id, 30).await?;
        Ok::<_, ServiceError>((policy, runs))
    };
    let (policy, runs) = match result.await {
        Ok(found) => found,
        Err(e) => return service_error(&e),
    };
    let ledger = runs.iter().map(ledger_row).collect();
    let findings = policy
        .last_validation
        .as_ref()
        .and_then(|v| v["issues"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|i| {
            let f = if i["finding"].is_object() {
                &i["finding"]
            } else {
                i
            };
            format!(
                "{} {} {}: {}",
                f["severity"].as_str().unwrap_or(""),
                f["code"].as_str().unwrap_or(""),
                f["path"].as_str().filter(|p| !p.is_empty()).unwrap_or("/"),
                f["message"].as_str().unwrap_or("")
            )
        })
        .collect();
    render(&PolicyPage {
        viewer,
        row: row(&policy),
        spec: serde_json::to_string_pretty(&policy.spec).unwrap_or_default(),
        findings,
        hash: policy.hash.clone(),
        ir: serde_json::to_string_pretty(&policy.compiled_ir).unwrap_or_default(),
        ledger,
    })
}

fn ledger_row(run: &Value) -> LedgerRow {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    LedgerRow {
        run_id: s(&run["run_id"]),
        started: s(&run["started_at"]),
        status: s(&run["status"]),
        severity: s(&run["severity"]),
        event: format!(
            "{} {}",
            s(&run["event"]["kind"]),
            s(&run["event"]["subject"]["id"])
        ),
        results: run["results"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .map(|r| {
                        format!(
                            "{} {} {}/{}: {}{}",
                            s(&r["capability"]),
                            s(&r["verb"]),
                            s(&r["host"]),
                            s(&r["target"]),
                            if r["ok"].as_bool() == Some(true) {
                                "ok"
                            } else {
                                "failed"
                            },
                            Some(s(&r["reason"]))
                                .filter(|x| !x.is_empty())
                                .map(|x| format!(" ({x})"))
                                .unwrap_or_default()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        explain: match &run["explain"] {
            Value::String(text) => text.clone(),
            Value::Null => String::new(),
            other => serde_json::to_string_pretty(other).unwrap_or_default(),
        },
    }
}

struct PreflightRow {
    action: String,
    target: String,
    severity: String,
    /// Each check with its outcome: `(passed, "vm_state: running")`.
    preconditions: Vec<(bool, String)>,
    /// `api`, `cli` or `ssh`.
    plan_kind: String,
    /// One line per call or command, in order.
    plan: Vec<String>,
    effects_summary: String,
    /// `vm:101: running → stopped`, one per target.
    effects: Vec<String>,
    reason: String,
}

impl PreflightRow {
    fn error(action: String, reason: String) -> Self {
        Self {
            action,
            target: "(all)".into(),
            severity: "error".into(),
            preconditions: Vec::new(),
            plan_kind: String::new(),
            plan: Vec::new(),
            effects_summary: String::new(),
            effects: Vec::new(),
            reason,
        }
    }

    fn answer(action: String, target: String, answer: &drivers::driver::DryRunAnswer) -> Self {
        Self {
            action,
            target,
            severity: severity_name(answer.severity),
            preconditions: answer
                .preconditions
                .iter()
                .map(|p| {
                    let details = p
                        .details
                        .as_ref()
                        .map(|d| format!(": {}", words_of(d)))
                        .unwrap_or_default();
                    (p.ok, format!("{}{details}", p.check))
                })
                .collect(),
            plan_kind: answer.plan.kind.clone(),
            plan: answer
                .plan
                .preview
                .iter()
                .map(|step| match step {
                    Value::String(text) => text.clone(),
                    other => compact(&other),
                })
                .collect(),
            effects_summary: answer.effects.summary.clone(),
            effects: answer
                .effects
                .per_target
                .iter()
                .map(|e| {
                    format!(
                        "{}: {} → {}",
                        e.id,
                        e.from.as_deref().unwrap_or("?"),
                        e.to.as_deref().unwrap_or("?")
                    )
                })
                .collect(),
            reason: answer.reason.clone().unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "console/preflight.html")]
struct PreflightFragment {
    transcript_id: String,
    severity: String,
    used_inventory: String,
    findings: Vec<String>,
    rows: Vec<PreflightRow>,
}

async fn policy_dry_run(
    State(state): State<AppState>,
    actor: Actor,
    PathId(id): PathId,
) -> Response {
    let transcript = match state.service().dry_run_policy(&actor, id).await {
        Ok(t) => t,
        Err(e) => return service_error(&e),
    };
    let mut rows = Vec::new();
    for action in &transcript.actions {
        let name = format!("{} {}", action.capability, action.verb);
        if let Some(error) = &action.error {
            rows.push(PreflightRow::error(name.clone(), error.to_string()));
        }
        for (i, answer) in action.answers.iter().enumerate() {
            let target = action.targets.get(i).cloned().unwrap_or_default();
            rows.push(PreflightRow::answer(name.clone(), target, answer));
        }
    }
    let used = &transcript.used_inventory;
    render(&PreflightFragment {
        transcript_id: transcript.transcript_id.to_string(),
        severity: severity_name(transcript.severity),
        used_inventory: format!(
            "{}{}{}",
            used.ts
                .as_ref()
                .map(time)
                .unwrap_or_else(|| "no snapshot".into()),
            if used.refreshed { ", refreshed" } else { "" },
            if used.stale { ", STALE" } else { "" }
        ),
        findings: transcript
            .findings
            .iter()
            .map(|f| format!("{}: {}", f.code, f.message))
            .collect(),
        rows,
    })
}

fn severity_name(s: inventory::Severity) -> String {
    s.as_str().to_string()
}

/// A precondition's details as words: an object's fields as `name value`
/// pairs (`node pve1, status running`), anything else as its text.
fn words_of(value: &Value) -> String {
    fn scalar(v: &Value) -> String {
        match v {
            Value::Null => "none".into(),
            Value::String(text) => text.clone(),
            other => compact(other),
        }
    }
    match value {
        Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| format!("{k} {}", scalar(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => scalar(other),
    }
}

/// Compact JSON of a value, for the preflight cells.
fn compact<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
