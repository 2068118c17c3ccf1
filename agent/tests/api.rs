//! The HTTP API end to end on a loopback port: a real `Service` over the
//! SQLite store in a temporary directory, the Proxmox API simulator as the
//! host's device, and a real HTTP client. Every endpoint and its status
//! codes, the auth/CSRF/size/shape refusals, the policy gates (duplicate
//! hash, version bumps, enable gating and forcing), inverses of every
//! shipped example, and a restart that keeps what was stored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent::api::auth::{mint, JwtKey};
use agent::api::{self, Access, ApiConfig, BodyDoc, ROUTES};
use agent::service::config::WebhookConfig;
use agent::service::{Config, OpenOptions, Role, Service};
use chrono::Utc;
use drivers::proxmox::sim::{ProxmoxSim, SimConfig};
use drivers::registry::HostConfig;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const JWT_KEY: &[u8] = b"integration-test-key-0123456789abcdef";
const WEBHOOK_SECRET: &str = "deploy-hook-secret";

/// A running API over a service, with the address to reach it.
struct Server {
    base: String,
    service: Service,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    http: reqwest::Client,
}

/// A test's world: its directory, the simulator and the server.
struct World {
    dir: TempDir,
    sim: Option<ProxmoxSim>,
    server: Server,
}

fn key() -> JwtKey {
    JwtKey::from_bytes(JWT_KEY).unwrap()
}

fn token(role: Role) -> String {
    mint(
        &key(),
        role.as_str(),
        role,
        Duration::from_secs(3600),
        Utc::now(),
    )
}

fn config(dir: &Path, sim: &ProxmoxSim) -> Config {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("store.key"), "ab".repeat(32)).unwrap();
    std::fs::write(secrets.join("deploy.secret"), WEBHOOK_SECRET).unwrap();
    let mut config = Config {
        data_dir: dir.join("data"),
        hosts: vec![HostConfig {
            id: "pve-01".into(),
            plugin: "proxmox.ve".into(),
            self_host: false,
            connection: sim.connection(),
        }],
        shutdown_grace: Duration::from_secs(2),
        ..Config::default()
    };
    config.secrets.key_file = Some(secrets.join("store.key"));
    config.secrets.key_env = "HAZEL_API_TEST_NO_SUCH_VAR".into();
    let hook = |secret_file: Option<PathBuf>, allow_unsigned| WebhookConfig {
        secret_env: None,
        secret_file,
        allow_unsigned,
        ..WebhookConfig::default()
    };
    config.webhooks = BTreeMap::from([
        (
            "deploy".to_string(),
            hook(Some(secrets.join("deploy.secret")), false),
        ),
        ("open".to_string(), hook(None, true)),
        ("closed".to_string(), hook(None, false)),
    ]);
    config
}

fn api_config() -> ApiConfig {
    ApiConfig {
        rate_per_s: 10_000,
        rate_burst: 10_000,
        ..ApiConfig::new(key())
    }
}

async fn start_server(config: Config, api_config: ApiConfig) -> Server {
    let options = OpenOptions {
        discovery: false,
        ..OpenOptions::default()
    };
    let service = Service::open(config, options)
        .await
        .expect("the service opens on a fresh data dir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = api::router(service.clone(), api_config);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(api::serve(listener, router, async move {
        let _ = stopped.await;
    }));
    Server {
        base,
        service,
        stop: Some(stop),
        task,
        http: reqwest::Client::new(),
    }
}

async fn world_with(tweak: impl FnOnce(&mut Config, &mut ApiConfig)) -> World {
    let dir = tempfile::tempdir().unwrap();
    let sim = ProxmoxSim::start(SimConfig::demo())
        .await
        .expect("the Proxmox simulator binds a loopback port");
    let mut cfg = config(dir.path(), &sim);
    let mut api_cfg = api_config();
    tweak(&mut cfg, &mut api_cfg);
    let server = start_server(cfg, api_cfg).await;
    World {
        dir,
        sim: Some(sim),
        server,
    }
}

async fn world() -> World {
    world_with(|_, _| {}).await
}

/// A world whose API takes a burst of two requests, then one a second.
async fn rate_limited_world() -> World {
    world_with(|_, api| {
        api.rate_per_s = 1;
        api.rate_burst = 2;
    })
    .await
}

impl Server {
    /// A request with no token and no CSRF header.
    fn bare(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// A request as `role`, with the CSRF header.
    fn as_role(&self, role: Role, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.bare(method, path)
            .bearer_auth(token(role))
            .header("X-Hazel-CSRF", "1")
    }

    fn admin(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.as_role(Role::Admin, method, path)
    }

    /// Stops taking connections, drains, and stops the service.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap().unwrap();
        self.service.shutdown().await;
    }
}

/// Sends and reads the answer as (status, JSON or `null`).
async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = req.send().await.expect("the server answers");
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

fn yaml(req: reqwest::RequestBuilder, text: &str) -> reqwest::RequestBuilder {
    req.header("content-type", "application/yaml")
        .body(text.to_string())
}

/// A policy on the simulator's VM 104 (running, unlocked, so its dry-run
/// is clean); `grace` makes each one's hash distinct.
fn policy(name: &str, grace: u32) -> String {
    format!(
        r#"version: 1
name: "{name}"
enabled: false
trigger_group:
  triggers:
    - {{ type: ups.state, equals: on_battery }}
targets:
  host_id: pve-01
  target_type: vm
  selector: {{ mode: list, value: "104" }}
actions:
  - capability_id: proxmox.vm
    verb: shutdown
    params: {{ grace_s: {grace}, force_after_grace: true }}
"#
    )
}

/// An enabled "on battery" policy and the `on_battery` event it reacts to.
async fn enabled_on_battery_policy(s: &Server) -> (String, Value) {
    let created = create(s, &policy("on battery", 90)).await;
    let id = created["id"].as_str().unwrap().to_string();
    let (status, _) = send(s.admin(Method::POST, &format!("/api/policies/{id}/enable"))).await;
    assert_eq!(status, StatusCode::OK);
    let event = json!({
        "kind": "ups.state",
        "subject": {"kind": "ups", "id": "ups1@nas:3493"},
        "attrs": {"state": "on_battery"},
    });
    (id, event)
}

async fn create(server: &Server, text: &str) -> Value {
    let (status, body) = send(yaml(server.admin(Method::POST, "/api/policies"), text)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// A refusal case: a request, and the status and error code it must answer.
type Refusal = (reqwest::RequestBuilder, StatusCode, &'static str);

/// Sends each case in order and checks its status and error code; returns
/// the answers' bodies in the same order, for checks of their details.
async fn refusals(cases: Vec<Refusal>) -> Vec<Value> {
    let mut bodies = Vec::new();
    for (n, (req, status, code)) in cases.into_iter().enumerate() {
        let (got, body) = send(req).await;
        assert_eq!(
            (got, error_code(&body)),
            (status, code),
            "refusal case {n}: {body}"
        );
        bodies.push(body);
    }
    bodies
}

/// [`refusals`] of one case; returns its body.
async fn refused(req: reqwest::RequestBuilder, status: StatusCode, code: &'static str) -> Value {
    refusals(vec![(req, status, code)]).await.remove(0)
}

/// The `X-Hazel-Signature` of `body` signed at unix time `at`.
fn sign_at(body: &[u8], at: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{at}.").as_bytes());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A webhook post of `body` to `name`, signed now.
fn signed(s: &Server, name: &str, body: &[u8]) -> reqwest::RequestBuilder {
    let at = chrono::Utc::now().timestamp();
    s.bare(Method::POST, &format!("/api/webhooks/{name}"))
        .header("X-Hazel-Timestamp", at.to_string())
        .header("X-Hazel-Signature", sign_at(body, at))
        .body(body.to_vec())
}

#[tokio::test]
async fn probes_and_metrics_answer_without_a_token() {
    let w = world().await;
    let s = &w.server;
    assert_eq!(
        send(s.bare(Method::GET, "/healthz")).await.0,
        StatusCode::OK
    );
    // Ready once the engine thread has run its start (restart
    // reconciliation): on a loaded machine that may be after `open` returns.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let (status, body) = loop {
        let (status, body) = send(s.bare(Method::GET, "/readyz")).await;
        if status == StatusCode::OK || tokio::time::Instant::now() > deadline {
            break (status, body);
        }
        assert_eq!(body["status"], "not_ready", "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
    let response = s.bare(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    assert!(text.contains("# TYPE hazel_"), "{text}");
    assert!(
        text.contains("/readyz"),
        "HTTP requests are counted by route: {text}"
    );
    s.service.shutdown().await;
    let (status, _) = send(s.bare(Method::GET, "/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        send(s.bare(Method::GET, "/healthz")).await.0,
        StatusCode::OK
    );
}

/// Waits for `/readyz` to answer 200 (the engine's start may finish after
/// `open` returns on a loaded machine).
async fn wait_ready(s: &Server) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, body) = send(s.bare(Method::GET, "/readyz")).await;
        if status == StatusCode::OK {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn readyz_fails_with_the_reason_while_the_store_cannot_write_and_recovers_after() {
    let w = world().await;
    let s = &w.server;
    wait_ready(s).await;
    s.service
        .inject_store_write_failure(Some("database or disk is full"));
    let (status, body) = send(s.bare(Method::GET, "/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["error"]["code"], "store.unwritable", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("disk is full"), "{message}");
    let metrics = s.bare(Method::GET, "/metrics").send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("hazel_store_write_failures_total 1"),
        "the failed write is counted: {text}"
    );

    s.service.inject_store_write_failure(None);
    let (status, body) = send(s.bare(Method::GET, "/readyz")).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ready")),
        "{body}"
    );
}

#[tokio::test]
async fn the_openapi_document_is_public_and_documents_every_route_with_its_role() {
    let w = world().await;
    let (status, doc) = send(w.server.bare(Method::GET, "/api/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    for route in ROUTES {
        let op = &doc["paths"][route.path][route.method.to_ascii_lowercase()];
        assert!(
            op.is_object(),
            "{} {} undocumented",
            route.method,
            route.path
        );
        assert!(op["x-hazel-role"].is_string());
        assert_eq!(op.get("requestBody").is_some(), route.body != BodyDoc::None);
        assert!(!op["responses"].as_object().unwrap().is_empty());
    }
}

#[tokio::test]
async fn every_route_answers_only_statuses_its_documentation_lists() {
    let w = world().await;
    let s = &w.server;
    for route in ROUTES {
        let path = route
            .path
            .replace("{id}", &uuid::Uuid::new_v4().to_string())
            .replace("{host_id}", "pve-01")
            .replace("{name}", "open");
        let method = Method::from_bytes(route.method.as_bytes()).unwrap();
        let mut req = s.admin(method, &path);
        if route.body != BodyDoc::None {
            req = req.header("content-type", "application/json").body("{}");
        }
        let (status, body) = send(req).await;
        let documented: Vec<u16> = route.responses().iter().map(|(c, _)| *c).collect();
        assert!(
            documented.contains(&status.as_u16()),
            "{} {} answered {status} ({body}), documented {documented:?}",
            route.method,
            route.path
        );
        if status.is_client_error() {
            assert!(
                body["error"]["code"].is_string(),
                "{} {}: {body}",
                route.method,
                route.path
            );
        }
    }
}

#[tokio::test]
async fn requests_without_a_valid_token_are_refused_with_401() {
    let w = world().await;
    let s = &w.server;
    let other = JwtKey::from_bytes(vec![9u8; 32]).unwrap();
    let forged = mint(
        &other,
        "eve",
        Role::Admin,
        Duration::from_secs(60),
        Utc::now(),
    );
    let old = Utc::now() - chrono::Duration::hours(2);
    let expired = mint(&key(), "bob", Role::Admin, Duration::from_secs(60), old);
    let policies = || s.bare(Method::GET, "/api/policies");
    let unauthorized = StatusCode::UNAUTHORIZED;
    refusals(vec![
        (policies(), unauthorized, "auth.missing"),
        (
            policies().bearer_auth(forged),
            unauthorized,
            "auth.invalid_signature",
        ),
        (
            policies().bearer_auth(expired),
            unauthorized,
            "auth.expired",
        ),
        (
            policies().bearer_auth("not.a.jwt"),
            unauthorized,
            "auth.malformed",
        ),
        (
            s.bare(Method::POST, "/api/policies")
                .header("X-Hazel-CSRF", "1")
                .header("content-type", "application/yaml")
                .body(policy("p", 90)),
            unauthorized,
            "auth.missing",
        ),
    ])
    .await;
}

#[tokio::test]
async fn a_role_below_the_route_is_forbidden_with_403() {
    let w = world().await;
    let s = &w.server;
    let (status, _) = send(s.as_role(Role::Viewer, Method::GET, "/api/policies")).await;
    assert_eq!(status, StatusCode::OK);
    let forbidden = (StatusCode::FORBIDDEN, "auth.forbidden");
    let bodies = refusals(vec![
        (
            yaml(
                s.as_role(Role::Viewer, Method::POST, "/api/policies"),
                &policy("p", 90),
            ),
            forbidden.0,
            forbidden.1,
        ),
        (
            s.as_role(Role::Operator, Method::POST, "/api/kill-switch")
                .json(&json!({"paused": true})),
            forbidden.0,
            forbidden.1,
        ),
        (
            s.as_role(Role::Viewer, Method::POST, "/api/events?dry_run=true")
                .json(&json!({"kind": "ups.state", "subject": {"kind": "ups", "id": "ups1"}, "attrs": {"state": "on_battery"}})),
            forbidden.0,
            forbidden.1,
        ),
    ])
    .await;
    assert_eq!(bodies[0]["error"]["required_role"], "admin");
    let (status, _) = send(
        s.as_role(Role::Operator, Method::POST, "/api/events?dry_run=true")
            .json(&json!({"kind": "ups.state", "subject": {"kind": "ups", "id": "ups1"}, "attrs": {"state": "on_battery"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "operators inject events");
}

#[tokio::test]
async fn a_mutating_request_without_the_csrf_header_is_refused_but_webhooks_are_exempt() {
    let w = world().await;
    let s = &w.server;
    let no_csrf = s
        .bare(Method::POST, "/api/kill-switch")
        .bearer_auth(token(Role::Admin))
        .json(&json!({"paused": true}));
    refused(no_csrf, StatusCode::FORBIDDEN, "csrf.missing").await;
    let wrong = s
        .bare(Method::POST, "/api/kill-switch")
        .bearer_auth(token(Role::Admin))
        .header("X-Hazel-CSRF", "yes")
        .json(&json!({"paused": true}));
    assert_eq!(error_code(&send(wrong).await.1), "csrf.missing");
    let (status, body) = send(s.admin(Method::GET, "/api/kill-switch")).await;
    assert_eq!(
        (status, &body["paused"]),
        (StatusCode::OK, &json!(false)),
        "nothing was paused"
    );

    let (status, body) = send(s.bare(Method::POST, "/api/webhooks/open").body("{}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test]
async fn oversize_bodies_are_refused_with_413() {
    let w = world_with(|_, api| api.body_limit = 8 * 1024).await;
    let s = &w.server;
    let big = format!("# {}\n{}", "x".repeat(16 * 1024), policy("big", 90));
    let too_large = StatusCode::PAYLOAD_TOO_LARGE;
    let bodies = refusals(vec![
        (
            yaml(s.admin(Method::POST, "/api/policies/validate"), &big),
            too_large,
            "request.too_large",
        ),
        (
            s.bare(Method::POST, "/api/webhooks/open")
                .body(vec![b'a'; 9 * 1024]),
            too_large,
            "request.too_large",
        ),
    ])
    .await;
    assert_eq!(bodies[0]["error"]["limit_bytes"], 8 * 1024);
    let (status, _) = send(yaml(
        s.admin(Method::POST, "/api/policies/validate"),
        &policy("small", 90),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "a body under the limit passes");
}

#[tokio::test]
async fn malformed_and_mistyped_bodies_are_refused_with_their_position() {
    let w = world().await;
    let s = &w.server;
    let kill_switch = || s.admin(Method::POST, "/api/kill-switch");
    let (bad, media) = (StatusCode::BAD_REQUEST, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let bodies = refusals(vec![
        (
            kill_switch()
                .header("content-type", "application/json")
                .body("{\n  \"paused\": tru\n}"),
            bad,
            "request.malformed_json",
        ),
        (
            kill_switch().json(&json!({"paused": "yes"})),
            bad,
            "request.invalid_body",
        ),
        (
            kill_switch()
                .header("content-type", "text/plain")
                .body(r#"{"paused": true}"#),
            media,
            "request.content_type",
        ),
        (
            s.admin(Method::POST, "/api/policies")
                .header("content-type", "text/plain")
                .body(policy("p", 90)),
            media,
            "request.content_type",
        ),
        (
            s.admin(Method::POST, "/api/events")
                .json(&json!({"kind": "ups.nope"})),
            bad,
            "event.invalid",
        ),
        (
            s.admin(Method::GET, "/api/policies?limit=0"),
            bad,
            "request.bad_query",
        ),
        (
            s.admin(Method::GET, "/api/policies?limit=501"),
            bad,
            "request.bad_query",
        ),
        (
            s.admin(Method::GET, "/api/audit?policy_id=zzz"),
            bad,
            "request.bad_query",
        ),
    ])
    .await;
    let body = &bodies[0];
    assert!(body["error"]["line"].as_u64().unwrap() >= 2, "{body}");
    assert!(body["error"]["column"].is_u64(), "{body}");
}

#[tokio::test]
async fn unknown_routes_are_404_wrong_methods_405_and_bad_ids_400() {
    let w = world().await;
    let s = &w.server;
    let get = |path: &str| s.admin(Method::GET, path);
    let missing = uuid::Uuid::new_v4();
    let (not_found, bad) = (StatusCode::NOT_FOUND, StatusCode::BAD_REQUEST);
    let bodies = refusals(vec![
        (get("/api/nothing-here"), not_found, "route.not_found"),
        (
            s.admin(Method::PATCH, "/api/hosts"),
            StatusCode::METHOD_NOT_ALLOWED,
            "route.method_not_allowed",
        ),
        (get("/api/policies/not-a-uuid"), bad, "request.bad_id"),
        (get("/api/transcripts/42"), bad, "request.bad_id"),
        (
            get(&format!("/api/policies/{missing}")),
            not_found,
            "policy.not_found",
        ),
        (
            get(&format!("/api/transcripts/{missing}")),
            not_found,
            "transcript.not_found",
        ),
    ])
    .await;
    assert_eq!(bodies[2]["error"]["param"], "id");
}

#[tokio::test]
async fn no_answer_carries_cors_headers() {
    let w = world().await;
    let response = w
        .server
        .bare(Method::OPTIONS, "/api/policies")
        .header("Origin", "https://evil.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "x-hazel-csrf")
        .send()
        .await
        .unwrap();
    assert!(!response.status().is_success());
    for (name, _) in response.headers() {
        assert!(!name.as_str().starts_with("access-control-"), "{name}");
    }
}

#[tokio::test]
async fn validate_answers_200_with_the_report_for_json_yaml_and_blockers() {
    let w = world().await;
    let s = &w.server;
    let (status, report) = send(yaml(
        s.admin(Method::POST, "/api/policies/validate"),
        &policy("validate me", 90),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["hash"].is_string());
    let spec: Value = serde_norway::from_str(&policy("validate me", 90)).unwrap();
    let (status, as_json) = send(s.admin(Method::POST, "/api/policies/validate").json(&spec)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(as_json["hash"], report["hash"], "JSON and YAML hash alike");
    let (status, bad) = send(
        s.as_role(Role::Operator, Method::POST, "/api/policies/validate")
            .header("content-type", "text/yaml")
            .body("version: 1\nname: x\n"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bad["ok"], false);
    assert!(!bad["issues"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn policies_are_created_listed_updated_with_version_bumps_and_deleted() {
    let w = world().await;
    let s = &w.server;
    let response = yaml(s.admin(Method::POST, "/api/policies"), &policy("first", 90))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let first: Value = response.json().await.unwrap();
    let id = first["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/api/policies/{id}"));
    assert_eq!(first["version_int"], 1);
    assert_eq!(first["status"], "disabled");

    // The same policy under another name is a duplicate; blockers refuse
    // the save with the report.
    let bodies = refusals(vec![
        (
            yaml(s.admin(Method::POST, "/api/policies"), &policy("again", 90)),
            StatusCode::CONFLICT,
            "policy.duplicate_hash",
        ),
        (
            yaml(
                s.admin(Method::POST, "/api/policies"),
                "version: 1\nname: x\n",
            ),
            StatusCode::BAD_REQUEST,
            "policy.invalid",
        ),
    ])
    .await;
    assert_eq!(bodies[0]["error"]["existing_id"], id.as_str());
    assert_eq!(bodies[1]["error"]["report"]["ok"], false);

    for grace in [91, 92] {
        create(s, &policy(&format!("p{grace}"), grace)).await;
    }
    let (status, page) = send(s.as_role(Role::Viewer, Method::GET, "/api/policies?limit=2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().expect("a second page").to_string();
    let (_, rest) =
        send(s.admin(Method::GET, &format!("/api/policies?after={next}&limit=2"))).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest.get("next").is_none_or(Value::is_null));

    let path = format!("/api/policies/{id}");
    let (status, updated) =
        send(yaml(s.admin(Method::PUT, &path), &policy("first", 120)).header("If-Match", "1"))
            .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["version_int"], 2);
    assert_ne!(updated["hash"], first["hash"]);
    let put = |if_match: &str| {
        yaml(s.admin(Method::PUT, &path), &policy("first", 121)).header("If-Match", if_match)
    };
    refusals(vec![
        (put("1"), StatusCode::CONFLICT, "policy.version_conflict"),
        (put("two"), StatusCode::BAD_REQUEST, "request.bad_header"),
    ])
    .await;
    let (status, updated) = send(yaml(s.admin(Method::PUT, &path), &policy("first", 121))).await;
    assert_eq!(
        (status, &updated["version_int"]),
        (StatusCode::OK, &json!(3))
    );
    let (_, shown) = send(s.as_role(Role::Viewer, Method::GET, &path)).await;
    assert_eq!(shown["version_int"], 3);

    let (status, body) = send(s.admin(Method::DELETE, &path)).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    refused(
        s.admin(Method::GET, &path),
        StatusCode::NOT_FOUND,
        "policy.not_found",
    )
    .await;
    let (status, _) = send(s.admin(Method::DELETE, &path)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn enable_is_gated_by_the_dry_run_and_an_admin_can_force_it_with_a_reason() {
    let mut w = world().await;
    let s = &w.server;
    let created = create(s, &policy("gated", 90)).await;
    let id = created["id"].as_str().unwrap().to_string();
    let enable = format!("/api/policies/{id}/enable");

    // A healthy host: the dry-run passes and enable succeeds.
    let (status, body) = send(s.admin(Method::POST, &enable)).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("enabled")),
        "{body}"
    );
    let (status, body) = send(s.admin(Method::POST, &format!("/api/policies/{id}/disable"))).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("disabled"))
    );

    // The host goes away: the dry-run has errors and enable is refused.
    w.sim.take().unwrap().shutdown().await;
    let bodies = refusals(vec![
        (
            s.admin(Method::POST, &enable),
            StatusCode::CONFLICT,
            "policy.enable_blocked",
        ),
        (
            s.admin(Method::POST, &enable).json(&json!({"force": true})),
            StatusCode::BAD_REQUEST,
            "policy.force_reason_required",
        ),
    ])
    .await;
    assert!(!bodies[0]["error"]["errors"].as_array().unwrap().is_empty());
    assert!(bodies[0]["error"]["transcript_id"].is_string());
    let (status, body) = send(
        s.admin(Method::POST, &enable)
            .json(&json!({"force": true, "reason": "  "})),
    )
    .await;
    assert_eq!(
        error_code(&body),
        "policy.force_reason_required",
        "{status}"
    );
    refused(
        s.as_role(Role::Operator, Method::POST, &enable)
            .json(&json!({"force": true, "reason": "x"})),
        StatusCode::FORBIDDEN,
        "auth.forbidden",
    )
    .await;

    let reason = "host is being replaced; run anyway";
    let (status, body) = send(
        s.admin(Method::POST, &enable)
            .json(&json!({"force": true, "reason": reason})),
    )
    .await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("enabled")),
        "{body}"
    );
    let (status, audit) = send(s.as_role(
        Role::Viewer,
        Method::GET,
        &format!("/api/audit?policy_id={id}&kind=policy.enable_forced"),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{audit}");
    assert_eq!(items[0]["record"]["details"]["reason"], reason);
}

#[tokio::test]
async fn a_dry_run_keeps_a_transcript_and_the_ledger_is_readable() {
    let w = world().await;
    let s = &w.server;
    let created = create(s, &policy("dry", 90)).await;
    let id = created["id"].as_str().unwrap();
    let (status, transcript) = send(s.as_role(
        Role::Operator,
        Method::POST,
        &format!("/api/policies/{id}/dry-run"),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{transcript}");
    let transcript_id = transcript["transcript_id"].as_str().unwrap();
    assert!(transcript["used_inventory"].is_object(), "{transcript}");
    let (status, kept) = send(s.as_role(
        Role::Viewer,
        Method::GET,
        &format!("/api/transcripts/{transcript_id}"),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kept["transcript_id"], transcript_id);
    let (_, shown) = send(s.admin(Method::GET, &format!("/api/policies/{id}"))).await;
    assert_eq!(shown["last_dry_run"]["transcript_id"], transcript_id);

    let (status, ledger) = send(s.as_role(
        Role::Viewer,
        Method::GET,
        &format!("/api/policies/{id}/executions?limit=30"),
    ))
    .await;
    assert_eq!((status, ledger), (StatusCode::OK, json!([])));
    refused(
        s.admin(
            Method::GET,
            &format!("/api/policies/{id}/executions?limit=31"),
        ),
        StatusCode::BAD_REQUEST,
        "request.bad_query",
    )
    .await;
}

#[tokio::test]
async fn events_are_decided_live_or_as_a_dry_run() {
    let w = world().await;
    let s = &w.server;
    let (_, event) = enabled_on_battery_policy(s).await;
    let (status, answer) = send(
        s.as_role(Role::Operator, Method::POST, "/api/events?dry_run=true")
            .json(&event),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["dry_run"], true);
    assert!(answer["transcript_id"].is_string());
    let (status, _) = send(s.admin(
        Method::GET,
        &format!(
            "/api/transcripts/{}",
            answer["transcript_id"].as_str().unwrap()
        ),
    ))
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the event dry-run transcript is kept"
    );

    refused(
        s.admin(Method::POST, "/api/events?dry_run=maybe")
            .json(&event),
        StatusCode::BAD_REQUEST,
        "request.bad_query",
    )
    .await;

    let (status, answer) = send(
        s.as_role(Role::Operator, Method::POST, "/api/events")
            .json(&event),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["dry_run"], false);
    let correlation = answer["correlation_id"].as_str().unwrap();
    let (_, audit) = send(s.admin(
        Method::GET,
        &format!("/api/audit?correlation_id={correlation}"),
    ))
    .await;
    assert!(!audit["items"].as_array().unwrap().is_empty(), "{audit}");
}

#[tokio::test]
async fn an_event_dry_run_answers_a_timeline_with_each_hold_and_the_inverses() {
    let w = world().await;
    let s = &w.server;
    let held = policy("on battery 2m", 90).replace(
        "{ type: ups.state, equals: on_battery }",
        "{ type: ups.state, equals: on_battery, for: 2m }",
    );
    let forward = create(s, &held).await;
    let forward_id = forward["id"].as_str().unwrap().to_string();
    let (status, body) =
        send(s.admin(Method::POST, &format!("/api/policies/{forward_id}/enable"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let inverse = format!(
        r#"version: 1
name: "mains back"
enabled: false
trigger_group:
  triggers:
    - {{ type: ups.state, equals: on_mains }}
targets:
  host_id: pve-01
  target_type: vm
  selector: {{ mode: ledger, value: "{forward_id}" }}
actions:
  - capability_id: proxmox.vm
    verb: start
"#
    );
    let inverse = create(s, &inverse).await;
    let inverse_id = inverse["id"].as_str().unwrap();
    let (status, body) =
        send(s.admin(Method::POST, &format!("/api/policies/{inverse_id}/enable"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let event = json!({
        "kind": "ups.state",
        "subject": {"kind": "ups", "id": "ups1@nas:3493"},
        "attrs": {"state": "on_battery"},
    });
    let (status, answer) = send(
        s.as_role(Role::Operator, Method::POST, "/api/events?dry_run=true")
            .json(&event),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // The old fields stay; the hold is no longer "not matched".
    assert_eq!(
        answer["decisions"][0]["code"], "engine.countdown_started",
        "{answer}"
    );
    let timeline = answer["timeline"].as_array().expect("a timeline");
    assert_eq!(timeline.len(), 2, "{answer}");

    let hold = &timeline[0];
    assert_eq!(hold["kind"], "countdown", "{hold}");
    assert_eq!(hold["policy_id"], json!(forward_id));
    assert_eq!(hold["policy_name"], "on battery 2m");
    let at = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    assert_eq!(
        at(&hold["at"]) - at(&answer["ts"]),
        chrono::TimeDelta::seconds(120),
        "{answer}"
    );
    assert_eq!(
        hold["trigger"],
        "trigger 0 (ups.state = on_battery for 120s): ups1@nas:3493 entered on_battery; must stay 120s"
    );
    assert_eq!(hold["conditions"], json!([]));
    assert_eq!(hold["code"], "engine.scheduled", "{hold}");
    let planned = &hold["planned"][0];
    assert_eq!(
        (&planned["capability"], &planned["verb"], &planned["host"]),
        (&json!("proxmox.vm"), &json!("shutdown"), &json!("pve-01"))
    );
    assert_eq!(planned["targets"], json!(["vm:104"]));
    assert_eq!(
        planned["dry_run"]["answers"][0]["severity"], "info",
        "the simulator was asked: {planned}"
    );

    let restore = &timeline[1];
    assert_eq!(restore["kind"], "inverse", "{restore}");
    assert_eq!(restore["at"], Value::Null);
    assert_eq!(restore["policy_name"], "mains back");
    assert_eq!(restore["restores"]["policy_name"], "on battery 2m");
    assert_eq!(restore["planned"][0]["verb"], "start");
    assert_eq!(restore["planned"][0]["targets"], json!(["vm:104"]));

    // The kept transcript carries the timeline too.
    let (_, kept) = send(s.admin(
        Method::GET,
        &format!(
            "/api/transcripts/{}",
            answer["transcript_id"].as_str().unwrap()
        ),
    ))
    .await;
    assert_eq!(kept["timeline"], answer["timeline"], "{kept}");
}

#[tokio::test]
async fn the_kill_switch_is_read_by_viewers_and_set_by_admins() {
    let w = world().await;
    let s = &w.server;
    let (status, body) = send(
        s.admin(Method::POST, "/api/kill-switch")
            .json(&json!({"paused": true, "reason": "maintenance"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["paused"], true);
    let (status, body) = send(s.as_role(Role::Viewer, Method::GET, "/api/kill-switch")).await;
    assert_eq!(
        (status, &body["paused"], &body["reason"]),
        (StatusCode::OK, &json!(true), &json!("maintenance"))
    );
    assert_eq!(body["by"], "admin");
    let (_, body) = send(
        s.admin(Method::POST, "/api/kill-switch")
            .json(&json!({"paused": false})),
    )
    .await;
    assert_eq!(body["paused"], false);
    refused(
        s.admin(Method::POST, "/api/kill-switch")
            .json(&json!({"paused": true, "extra": 1})),
        StatusCode::BAD_REQUEST,
        "request.invalid_body",
    )
    .await;
}

#[tokio::test]
async fn webhooks_need_a_valid_signature_unless_configured_unsigned() {
    let w = world().await;
    let s = &w.server;
    let payload = br#"{"ref": "main"}"#.to_vec();
    let (status, body) = send(signed(s, "deploy", &payload)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let hook = |name: &str| {
        s.bare(Method::POST, &format!("/api/webhooks/{name}"))
            .body(payload.clone())
    };
    let now = chrono::Utc::now().timestamp();
    let at = |req: reqwest::RequestBuilder, t: i64| req.header("X-Hazel-Timestamp", t.to_string());
    let bare_hex = sign_at(&payload, now)
        .trim_start_matches("sha256=")
        .to_string();
    refusals(vec![
        (
            at(hook("deploy"), now).header("X-Hazel-Signature", sign_at(b"something else", now)),
            StatusCode::UNAUTHORIZED,
            "webhook.bad_signature",
        ),
        (
            at(hook("deploy"), now).header("X-Hazel-Signature", bare_hex),
            StatusCode::UNAUTHORIZED,
            "webhook.bad_signature",
        ),
        (
            hook("deploy").header("X-Hazel-Signature", sign_at(&payload, now)),
            StatusCode::UNAUTHORIZED,
            "webhook.no_timestamp",
        ),
        (
            at(hook("deploy"), now - 600).header("X-Hazel-Signature", sign_at(&payload, now - 600)),
            StatusCode::UNAUTHORIZED,
            "webhook.stale",
        ),
        (hook("deploy"), StatusCode::UNAUTHORIZED, "webhook.unsigned"),
        (
            hook("closed"),
            StatusCode::FORBIDDEN,
            "webhook.unsigned_refused",
        ),
        (hook("nope"), StatusCode::NOT_FOUND, "webhook.unknown"),
    ])
    .await;
}

#[tokio::test]
async fn a_captured_signed_webhook_post_is_not_accepted_again_and_each_accepted_post_is_audited() {
    let w = world().await;
    let s = &w.server;
    let payload = br#"{"ref": "v2"}"#.to_vec();
    let first = signed(s, "deploy", &payload);
    let replay = first.try_clone().unwrap();
    let (status, answer) = send(first).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    refused(replay, StatusCode::CONFLICT, "webhook.replayed").await;
    let correlation = answer["correlation_id"].as_str().unwrap();
    let (_, audit) = send(s.admin(
        Method::GET,
        &format!("/api/audit?kind=webhook.accepted&correlation_id={correlation}"),
    ))
    .await;
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{audit}");
    assert!(
        !audit.to_string().contains("v2"),
        "the body is not audited: {audit}"
    );
}

#[tokio::test]
async fn hosts_are_listed_with_secrets_masked_and_created_by_admins() {
    let w = world().await;
    let s = &w.server;
    let sim = w.sim.as_ref().unwrap();
    let secret = sim.connection()["token_secret"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, hosts) = send(s.as_role(Role::Viewer, Method::GET, "/api/hosts")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(hosts[0]["id"], "pve-01");
    assert!(
        !hosts.to_string().contains(&secret),
        "the secret leaks: {hosts}"
    );

    let (status, caps) = send(s.admin(Method::GET, "/api/hosts/pve-01/capabilities")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        caps["capabilities"].to_string().contains("proxmox.vm"),
        "{caps}"
    );
    let (status, inv) =
        send(s.admin(Method::GET, "/api/hosts/pve-01/inventory?refresh=true")).await;
    assert_eq!(status, StatusCode::OK, "{inv}");
    assert_eq!(inv["stale"], false);
    assert!(inv["targets"].to_string().contains("104"), "{inv}");
    let host = json!({"id": "pve-02", "plugin": "proxmox.ve", "connection": sim.connection()});
    refusals(vec![
        (
            s.admin(Method::GET, "/api/hosts/nope/inventory"),
            StatusCode::NOT_FOUND,
            "host.not_found",
        ),
        (
            s.as_role(Role::Operator, Method::POST, "/api/hosts")
                .json(&host),
            StatusCode::FORBIDDEN,
            "auth.forbidden",
        ),
    ])
    .await;
    let response = s
        .admin(Method::POST, "/api/hosts")
        .json(&host)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["location"], "/api/hosts/pve-02");
    let created = response.text().await.unwrap();
    assert!(!created.contains(&secret), "the secret leaks: {created}");
    let declared = json!({"id": "pve-01", "plugin": "proxmox.ve", "connection": sim.connection()});
    refusals(vec![
        (
            s.admin(Method::POST, "/api/hosts").json(&declared),
            StatusCode::CONFLICT,
            "host.declared_in_config",
        ),
        (
            s.admin(Method::POST, "/api/hosts")
                .json(&json!({"id": "x", "plugin": "nope"})),
            StatusCode::BAD_REQUEST,
            "host.invalid",
        ),
    ])
    .await;
}

/// The hosts the shipped examples name besides `pve-01`, declared so the
/// examples compile; nothing listens at their addresses, so their
/// preflights fail (which must not stop a save).
fn example_hosts() -> Vec<HostConfig> {
    let host = |id: &str, plugin: &str, connection: Value| HostConfig {
        id: id.into(),
        plugin: plugin.into(),
        self_host: false,
        connection: connection.as_object().unwrap().clone(),
    };
    let ssh = json!({"host": "127.0.0.1", "port": 9, "username": "root", "private_key": "/nonexistent/id_ed25519", "trust_on_first_use": true});
    vec![
        host(
            "sw-01",
            "aruba.aoss",
            json!({"host": "127.0.0.1", "port": 9, "username": "manager", "password": "not-a-real-password", "trust_on_first_use": true}),
        ),
        host("nas-01", "linux.ssh", ssh.clone()),
        host("web-01", "linux.ssh", ssh),
        host(
            "notify",
            "http.webhook",
            json!({"url": "http://127.0.0.1:9/hook"}),
        ),
    ]
}

#[tokio::test]
async fn a_policy_whose_preflight_fails_is_saved_disabled_with_201() {
    let w = world_with(|config, _| config.hosts.extend(example_hosts())).await;
    let s = &w.server;
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/03-low-battery-poweroff-nas.yaml"),
    )
    .unwrap();
    let (status, body) = send(yaml(s.admin(Method::POST, "/api/policies"), &text)).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "SPEC §9: preflight error -> saved disabled: {body}"
    );
    assert_eq!(body["status"], "disabled");
}

#[tokio::test]
async fn the_inverse_of_every_shipped_example_is_answered_unsaved_and_disabled() {
    let w = world_with(|config, _| config.hosts.extend(example_hosts())).await;
    let s = &w.server;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut examples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 7, "{examples:?}");
    for path in &examples {
        let text = std::fs::read_to_string(path).unwrap();
        let (status, created) = send(yaml(s.admin(Method::POST, "/api/policies"), &text)).await;
        // A failing preflight keeps the policy (stored, not running); that
        // answer's status is checked by the test above.
        let id = match status {
            StatusCode::CREATED => created["id"].as_str().unwrap().to_string(),
            StatusCode::CONFLICT if error_code(&created) == "policy.enable_blocked" => {
                let (_, page) = send(s.admin(Method::GET, "/api/policies?limit=500")).await;
                let name = serde_norway::from_str::<Value>(&text).unwrap()["name"].clone();
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == name)
                    .unwrap_or_else(|| panic!("{} was not saved", path.display()))["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
            _ => panic!("{}: {status} {created}", path.display()),
        };
        let (status, inverse) = send(s.as_role(
            Role::Operator,
            Method::POST,
            &format!("/api/policies/{id}/inverse"),
        ))
        .await;
        assert_eq!(status, StatusCode::OK, "{}: {inverse}", path.display());
        assert_eq!(inverse["enabled"], false, "{}", path.display());
        assert!(
            inverse["spec_inverse"].is_object(),
            "{}: {inverse}",
            path.display()
        );
        assert!(inverse["needs_input"].is_array(), "{}", path.display());
    }
    let (_, page) = send(s.admin(Method::GET, "/api/policies")).await;
    assert_eq!(page["total"], examples.len(), "inverses are not saved");
}

#[tokio::test]
async fn a_restart_keeps_policies_versions_and_transcripts() {
    let World { dir, sim, server } = world().await;
    let sim = sim.unwrap();
    let created = create(&server, &policy("kept", 90)).await;
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/api/policies/{id}");
    let (status, _) = send(yaml(server.admin(Method::PUT, &path), &policy("kept", 95))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, transcript) = send(server.admin(Method::POST, &format!("{path}/dry-run"))).await;
    assert_eq!(status, StatusCode::OK);
    let transcript_id = transcript["transcript_id"].as_str().unwrap().to_string();
    let (_, before) = send(server.admin(Method::GET, &path)).await;
    server.stop().await;

    let again = start_server(config(dir.path(), &sim), api_config()).await;
    let (status, after) = send(again.admin(Method::GET, &path)).await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["version_int"], 2);
    assert_eq!(after["hash"], before["hash"]);
    assert_eq!(after["spec"], before["spec"]);
    assert_eq!(
        after["last_dry_run"]["transcript_id"],
        transcript_id.as_str()
    );
    let (status, kept) =
        send(again.admin(Method::GET, &format!("/api/transcripts/{transcript_id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kept, transcript);
    let (_, audit) = send(again.admin(Method::GET, &format!("/api/audit?policy_id={id}"))).await;
    let kinds: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["record"]["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"policy.created") && kinds.contains(&"policy.updated"),
        "{kinds:?}"
    );
    again.stop().await;
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_but_spares_the_probes_and_the_kill_switch() {
    let w = rate_limited_world().await;
    let s = &w.server;
    // Ready first (the engine's start may finish after `open` returns), so
    // the single probe below is a fair check.
    wait_ready(s).await;
    for _ in 0..2 {
        assert_eq!(
            send(s.admin(Method::GET, "/api/hosts")).await.0,
            StatusCode::OK
        );
    }
    let response = s.admin(Method::GET, "/api/hosts").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "rate_limited");
    assert_eq!(
        send(s.bare(Method::GET, "/healthz")).await.0,
        StatusCode::OK
    );
    // Spared too: with the anonymous budget also spent, one probe is
    // answered at once.
    let mut anonymous = StatusCode::OK;
    for _ in 0..10 {
        anonymous = send(s.bare(Method::GET, "/api/hosts")).await.0;
        if anonymous == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
    }
    assert_eq!(anonymous, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(send(s.bare(Method::GET, "/readyz")).await.0, StatusCode::OK);
    // The kill switch stays reachable under a flood.
    assert_eq!(
        send(s.admin(Method::GET, "/api/kill-switch")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_flood_without_a_valid_token_does_not_use_up_the_operators_budget() {
    let w = rate_limited_world().await;
    let s = &w.server;
    // Requests without a token, or with a forged one, exhaust their budget...
    for _ in 0..2 {
        assert_eq!(
            send(s.bare(Method::GET, "/api/hosts")).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let forged = s
        .bare(Method::GET, "/api/hosts")
        .header("authorization", "Bearer a.b.c")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::TOO_MANY_REQUESTS);
    // ...while an operator's own budget is untouched.
    for _ in 0..2 {
        assert_eq!(
            send(s.admin(Method::GET, "/api/hosts")).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        s.admin(Method::GET, "/api/hosts")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn an_anonymous_flood_does_not_refuse_a_signed_webhook_post() {
    let w = world_with(|config, api| {
        api.rate_per_s = 1;
        api.rate_burst = 2;
        let deploy = config.webhooks.get_mut("deploy").unwrap();
        deploy.rate_per_s = 1;
        deploy.rate_burst = 2;
    })
    .await;
    let s = &w.server;
    // Anonymous requests (an unknown webhook name among them) until the
    // anonymous budget is spent.
    let mut refused = false;
    for i in 0..10 {
        let path = if i % 2 == 0 {
            "/api/hosts"
        } else {
            "/api/webhooks/nope"
        };
        if s.bare(Method::POST, path).send().await.unwrap().status()
            == StatusCode::TOO_MANY_REQUESTS
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "the anonymous flood never reached the limit");
    // The webhook's own budget is untouched...
    for n in 0..2 {
        let body = format!("{{\"n\": {n}}}");
        let (status, answer) = send(signed(s, "deploy", body.as_bytes())).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }
    // ...and is a budget of its own size.
    let response = signed(s, "deploy", b"{\"n\": 2}").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
}

/// The costliest policy the limits still accept: 49 000 unknown fields
/// (98 000 values, just under the 100 000 a document may expand to), each
/// a finding, in about 640 KB (under the 1 MiB body limit).
fn worst_case_policy() -> String {
    let mut text = policy("worst", 90);
    for i in 0..49_000 {
        text.push_str(&format!("u{i}: {i}\n"));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_while_eight_worst_case_validations_run() {
    let w = world().await;
    let s = &w.server;
    let body = worst_case_policy();
    #[derive(Debug, PartialEq)]
    enum Done {
        Validation,
        Healthz,
    }
    let (done, mut order) = tokio::sync::mpsc::unbounded_channel();
    let start = |path: &str| {
        let (req, done) = (yaml(s.admin(Method::POST, path), &body), done.clone());
        tokio::spawn(async move {
            let status = req.send().await.expect("the server answers").status();
            let _ = done.send(Done::Validation);
            status
        })
    };
    let failsafe = tokio::time::Instant::now() + Duration::from_secs(60);
    let wait_for_jobs = |n: usize| {
        let service = s.service.clone();
        async move {
            while service.cpu_jobs_running() < n {
                assert!(
                    tokio::time::Instant::now() < failsafe,
                    "the validations never started"
                );
                tokio::task::yield_now().await;
            }
        }
    };
    // Four validations take the four CPU slots; four saves (one at a time,
    // under the write lock) wait for one.
    let checks: Vec<_> = (0..4).map(|_| start("/api/policies/validate")).collect();
    wait_for_jobs(4).await;
    let saves: Vec<_> = (0..4).map(|_| start("/api/policies")).collect();
    let healthz = s.bare(Method::GET, "/healthz");
    let probe = tokio::spawn(async move {
        let status = send(healthz).await.0;
        let _ = done.send(Done::Healthz);
        status
    });
    // A failsafe, not a budget: the order of the answers is the assertion.
    let first = tokio::time::timeout(Duration::from_secs(60), order.recv())
        .await
        .expect("an answer within a minute");
    assert_eq!(
        first,
        Some(Done::Healthz),
        "a validation finished before /healthz answered"
    );
    assert_eq!(probe.await.unwrap(), StatusCode::OK);
    for check in checks {
        assert_eq!(check.await.unwrap(), StatusCode::OK);
    }
    for save in saves {
        assert_eq!(save.await.unwrap(), StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn audit_pages_newest_first_with_a_cursor() {
    let w = world().await;
    let s = &w.server;
    for grace in [90, 91, 92] {
        create(s, &policy(&format!("a{grace}"), grace)).await;
    }
    let (status, first) = send(s.as_role(
        Role::Viewer,
        Method::GET,
        "/api/audit?kind=policy.created&limit=2",
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    let items = first["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(
        items[0]["seq"].as_i64() > items[1]["seq"].as_i64(),
        "newest first"
    );
    let next = first["next"].as_i64().expect("a cursor");
    let (_, rest) = send(s.admin(
        Method::GET,
        &format!("/api/audit?kind=policy.created&limit=2&before={next}"),
    ))
    .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next"].is_null());
    // Access is what the table says: viewers cannot see what only admins may do.
    assert!(ROUTES
        .iter()
        .any(|r| r.path == "/api/audit" && r.access == Access::Role(Role::Viewer)));
}

#[tokio::test]
async fn audit_filters_by_seq_after_and_time_since_for_a_follower() {
    let w = world().await;
    let s = &w.server;
    create(s, &policy("first", 90)).await;
    let (_, all) = send(s.admin(Method::GET, "/api/audit?kind=policy.created")).await;
    let first_seq = all["items"][0]["seq"].as_i64().unwrap();
    create(s, &policy("second", 91)).await;
    let (status, after) = send(s.admin(
        Method::GET,
        &format!("/api/audit?kind=policy.created&after={first_seq}"),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{after}");
    let items = after["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "only what came after the cursor: {after}");
    assert!(items[0]["seq"].as_i64().unwrap() > first_seq);

    let future = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, none) = send(
        s.admin(Method::GET, "/api/audit")
            .query(&[("since", &future)]),
    )
    .await;
    assert_eq!(
        none["items"],
        json!([]),
        "nothing is newer than an hour ahead"
    );
    let past = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let (_, some) = send(
        s.admin(Method::GET, "/api/audit")
            .query(&[("since", past.as_str()), ("kind", "policy.created")]),
    )
    .await;
    assert_eq!(some["items"].as_array().unwrap().len(), 2, "{some}");

    refusals(vec![
        (
            s.admin(Method::GET, "/api/audit?since=yesterday"),
            StatusCode::BAD_REQUEST,
            "request.bad_query",
        ),
        (
            s.admin(Method::GET, "/api/audit?after=x"),
            StatusCode::BAD_REQUEST,
            "request.bad_query",
        ),
    ])
    .await;
}

#[tokio::test]
async fn a_correlation_id_header_is_echoed_and_names_the_audit_records() {
    let w = world().await;
    let s = &w.server;
    let correlation = uuid::Uuid::new_v4();
    let response = yaml(
        s.admin(Method::POST, "/api/policies"),
        &policy("traced", 90),
    )
    .header("x-correlation-id", correlation.to_string())
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()["x-correlation-id"].to_str().unwrap(),
        correlation.to_string(),
        "the caller's id is echoed"
    );
    let (_, audit) = send(s.admin(
        Method::GET,
        &format!("/api/audit?correlation_id={correlation}"),
    ))
    .await;
    let kinds: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["record"]["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"policy.created"), "{audit}");

    // Without the header the server mints one and still says which.
    let response = s.admin(Method::GET, "/api/hosts").send().await.unwrap();
    let minted = response.headers()["x-correlation-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(minted).is_ok(), "{minted}");

    refusals(vec![(
        s.admin(Method::GET, "/api/hosts")
            .header("x-correlation-id", "not-a-uuid"),
        StatusCode::BAD_REQUEST,
        "request.bad_header",
    )])
    .await;
}

#[tokio::test]
async fn validation_and_policy_dry_runs_leave_audit_records() {
    let w = world().await;
    let s = &w.server;
    let (status, _) = send(yaml(
        s.admin(Method::POST, "/api/policies/validate"),
        "version: 1\nname: x\n",
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    let created = create(s, &policy("dry", 90)).await;
    let id = created["id"].as_str().unwrap();
    let (status, transcript) =
        send(s.admin(Method::POST, &format!("/api/policies/{id}/dry-run"))).await;
    assert_eq!(status, StatusCode::OK, "{transcript}");

    let (_, validated) = send(s.admin(Method::GET, "/api/audit?kind=policy.validated")).await;
    let record = &validated["items"][0]["record"];
    assert_eq!(record["details"]["ok"], false, "{validated}");
    assert!(record["details"]["findings_total"].as_u64().unwrap() > 0);
    assert!(
        record["details"]["findings"][0]["code"].is_string(),
        "{record}"
    );

    let (_, dry) = send(s.admin(
        Method::GET,
        &format!("/api/audit?kind=policy.dry_run&policy_id={id}"),
    ))
    .await;
    let record = &dry["items"][0]["record"];
    assert!(record["details"]["transcript_id"].is_string(), "{dry}");
    assert!(record["details"]["severity"].is_string(), "{dry}");
}

#[tokio::test]
async fn metrics_chart_compiles_findings_refreshes_and_breakers() {
    let w = world().await;
    let s = &w.server;
    let (status, _) = send(yaml(
        s.admin(Method::POST, "/api/policies/validate"),
        "version: 1\nname: x\n",
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    let created = create(s, &policy("charted", 90)).await;
    let id = created["id"].as_str().unwrap();
    let (status, _) = send(s.admin(Method::POST, &format!("/api/policies/{id}/dry-run"))).await;
    assert_eq!(status, StatusCode::OK);
    let text = s
        .bare(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    // One validation request and one create: two compiles.
    assert_eq!(value("hazel_compile_seconds_count "), 2.0);
    assert_eq!(value("hazel_findings_total{severity=\"blocker\"} "), 4.0);
    assert!(value("hazel_inventory_refresh_seconds_count{host=\"pve-01\",mode=\"fast\"} ") >= 1.0);
    assert_eq!(
        value("hazel_inventory_refresh_sla_misses_total{host=\"pve-01\",mode=\"fast\"} "),
        0.0
    );
    assert_eq!(
        value("hazel_breaker_state{host=\"pve-01\",state=\"closed\"} "),
        1.0
    );
    assert_eq!(
        value("hazel_breaker_state{host=\"pve-01\",state=\"open\"} "),
        0.0
    );
    assert_eq!(value("hazel_retries_scheduled_total "), 0.0);
    assert!(text.contains("# TYPE hazel_ups_status gauge"), "{text}");
}

#[tokio::test]
async fn a_chunked_body_is_cut_at_the_limit_with_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world_with(|_, api| api.body_limit = 8 * 1024).await;
    let addr = w.server.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/webhooks/open HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 4096];
    for _ in 0..3 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if stream.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("request.too_large"), "{answer}");
}

#[tokio::test]
async fn a_body_that_stalls_after_its_headers_is_answered_408_not_waited_for() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world_with(|_, api| api.body_read_timeout = Duration::from_secs(1)).await;
    let addr = w.server.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/webhooks/open HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"a\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The rest of the body never comes; the answer does.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers a stalled body instead of waiting for it");
    let _ = read;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request.body_timeout"), "{answer}");
}

#[tokio::test]
async fn a_console_form_that_stalls_after_its_headers_is_answered_408_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world_with(|_, api| api.body_read_timeout = Duration::from_secs(1)).await;
    let addr = w.server.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /login HTTP/1.1\r\nHost: {addr}\r\nX-Hazel-CSRF: 1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\nConnection: close\r\n\r\nusername=a"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers a stalled sign-in form instead of waiting for it");
    let _ = read;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request.body_timeout"), "{answer}");
    assert!(
        answer.contains("within 1s"),
        "the configured wait: {answer}"
    );
}

#[tokio::test]
async fn a_console_form_of_another_media_type_is_refused_with_the_type_it_takes() {
    let w = world().await;
    let response = w
        .server
        .bare(Method::POST, "/login")
        .header("X-Hazel-CSRF", "1")
        .header("content-type", "text/plain")
        .body("username=a&password=b")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body: Value = response.json().await.unwrap();
    assert!(
        body.to_string()
            .contains("application/x-www-form-urlencoded"),
        "{body}"
    );
}

#[tokio::test]
async fn the_restore_set_lists_exactly_what_the_policys_runs_changed() {
    let w = world().await;
    let s = &w.server;
    let (id, event) = enabled_on_battery_policy(s).await;
    let id = id.as_str();
    let (status, set) = send(s.as_role(
        Role::Viewer,
        Method::GET,
        &format!("/api/policies/{id}/restore-set"),
    ))
    .await;
    assert_eq!((status, set.clone()), (StatusCode::OK, json!([])));
    let (status, answer) = send(
        s.as_role(Role::Operator, Method::POST, "/api/events")
            .json(&event),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let runs = loop {
        let (_, runs) = send(s.admin(Method::GET, &format!("/api/policies/{id}/executions"))).await;
        if runs.as_array().is_some_and(|r| !r.is_empty()) || tokio::time::Instant::now() > deadline
        {
            break runs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut changed: Vec<String> = runs[0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["changed"] == json!(true))
        .map(|r| r["target"].as_str().unwrap().to_string())
        .collect();
    changed.sort();
    assert!(!changed.is_empty(), "{runs}");
    let (status, set) = send(s.as_role(
        Role::Viewer,
        Method::GET,
        &format!("/api/policies/{id}/restore-set"),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    let mut targets: Vec<String> = set
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["target"].as_str().unwrap().to_string())
        .collect();
    targets.sort();
    assert_eq!(targets, changed, "{set}");
    assert!(set.to_string().contains("\"policy_id\""), "{set}");
    refused(
        s.admin(
            Method::GET,
            &format!("/api/policies/{}/restore-set", uuid::Uuid::nil()),
        ),
        StatusCode::NOT_FOUND,
        "policy.not_found",
    )
    .await;
}

/// Every console page takes the signed-in extractor: without a session it
/// redirects to the sign-in before the handler runs; a viewer reads the
/// pages and is sent from the wizard's to the policies table.
#[tokio::test]
async fn console_pages_redirect_without_a_session_and_the_wizard_turns_a_viewer_away() {
    let w = world().await;
    let s = &w.server;
    let id = create(s, &policy("pages", 90)).await["id"]
        .as_str()
        .expect("an id")
        .to_string();
    let store = agent::store::SqliteStore::open(
        w.dir
            .path()
            .join("data")
            .join(agent::store::SqliteStore::DEFAULT_FILE_NAME),
    )
    .unwrap();
    agent::service::users::add_user(&store, "vera", Role::Viewer, "viewer-password-1", "t")
        .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str, cookie: Option<&str>| {
        let mut request = http.get(format!("{}{path}", s.base));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        async move {
            let response = request.send().await.unwrap();
            let location = response
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_string());
            (response.status(), location)
        }
    };
    let reading = ["/", "/policies", &format!("/policies/{id}"), "/runs"].map(String::from);
    let wizard = [
        "/policies/new".to_string(),
        format!("/policies/{id}/edit"),
        format!("/policies/{id}/inverse"),
    ];
    for page in reading.iter().chain(&wizard) {
        assert_eq!(
            get(page, None).await,
            (StatusCode::SEE_OTHER, Some("/login".into())),
            "{page} without a session"
        );
    }
    let signed_in = http
        .post(format!("{}/login", s.base))
        .header("X-Hazel-CSRF", "1")
        .form(&[("username", "vera"), ("password", "viewer-password-1")])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::NO_CONTENT);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    for page in &reading {
        assert_eq!(
            get(page, Some(&cookie)).await,
            (StatusCode::OK, None),
            "{page} as a viewer"
        );
    }
    for page in &wizard {
        assert_eq!(
            get(page, Some(&cookie)).await,
            (StatusCode::SEE_OTHER, Some("/policies".into())),
            "{page} as a viewer"
        );
    }
}
