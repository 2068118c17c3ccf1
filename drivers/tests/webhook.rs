//! The `http.webhook` driver against a real HTTP receiver on 127.0.0.1 (an
//! axum server that records every request and answers from a script).
//!
//! These tests run on real time: the peer is a real socket, and a paused
//! tokio clock would fire the client's timeouts while it waits for loopback
//! IO. Waits are kept to milliseconds; the one exception is the 429 test,
//! because `Retry-After` counts whole seconds.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use drivers::driver::{Action, Driver, ErrorKind, RefreshMode};
use drivers::secret::Secret;
use drivers::webhook::{sign, Probe, WebhookConfig, WebhookDriver};
use serde_json::{json, Value};

/// What the receiver answers to one request.
#[derive(Clone)]
enum Reply {
    Status(u16),
    WithHeaders(u16, Vec<(&'static str, &'static str)>),
    /// Never answers; the client must time out.
    Hang,
}

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Default)]
struct Receiver {
    script: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
}

impl Receiver {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(
    State(rx): State<Arc<Receiver>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rx.seen.lock().unwrap().push(Seen {
        method,
        path: uri.path().to_string(),
        headers,
        body: body.to_vec(),
    });
    let reply = rx
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Status(200));
    match reply {
        Reply::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Reply::WithHeaders(code, headers) => {
            let mut response = StatusCode::from_u16(code).unwrap().into_response();
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
        Reply::Hang => std::future::pending().await,
    }
}

/// Starts a receiver answering `script` in order (then 200s); returns its base URL.
async fn receiver(script: Vec<Reply>) -> (String, Arc<Receiver>) {
    let rx = Arc::new(Receiver {
        script: Mutex::new(script.into()),
        seen: Mutex::new(Vec::new()),
    });
    let app = Router::new().fallback(handle).with_state(rx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding 127.0.0.1:0 for the test receiver");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}/hooks"), rx)
}

/// A fast-failing config: short backoff, alerts and audit endpoints.
fn config(url: &str) -> WebhookConfig {
    let mut config = WebhookConfig::new(url);
    config.backoff_ms_start = 10;
    config.backoff_ms_max = 50;
    config.timeout_s = 2.0;
    config.budget_s = 10.0;
    config.targets.insert("alerts".into(), "alerts".into());
    config.targets.insert("audit".into(), "/audit/in".into());
    config
}

fn post(body: Value) -> Action {
    Action {
        capability: "notify.webhook".into(),
        verb: "post".into(),
        params: json!({ "body": body }).as_object().cloned().unwrap(),
    }
}

fn targets(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_signed_post_carries_an_hmac_the_receiver_can_verify() {
    let (url, rx) = receiver(vec![Reply::WithHeaders(
        202,
        vec![("x-request-id", "req-77")],
    )])
    .await;
    let mut config = config(&url);
    config.secret = Some(Secret::new("s3cr3t-hmac-key"));
    let driver = WebhookDriver::new("hooks", config).unwrap();

    let outcomes = driver
        .execute(
            &post(json!({"event": "on_battery", "ups": "ups1"})),
            &targets(&["webhook:alerts"]),
        )
        .await
        .unwrap();

    let outcome = &outcomes[0];
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(outcome.code, "driver.ok");
    assert_eq!(outcome.evidence["status"], 202);
    assert_eq!(outcome.evidence["request_id"], "req-77");
    assert_eq!(outcome.evidence["attempts"], 1);
    let seen = rx.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, Method::POST);
    assert_eq!(request.path, "/hooks/alerts");
    let expected = format!("sha256={}", hmac_hex(b"s3cr3t-hmac-key", &request.body));
    assert_eq!(request.headers["x-hazel-signature"], expected.as_str());
    assert_eq!(request.headers["content-type"], "application/json");
    let timestamp: u64 = request.headers["x-hazel-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(timestamp > 1_600_000_000);
    assert_eq!(
        request.headers["idempotency-key"].to_str().unwrap(),
        outcome.evidence["idempotency_key"].as_str().unwrap()
    );
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body, json!({"event": "on_battery", "ups": "ups1"}));
}

/// The receiver's side of the signature check, written independently of the driver.
fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn the_signature_helper_matches_an_independent_hmac() {
    assert_eq!(sign(&Secret::new("k"), b"body"), hmac_hex(b"k", b"body"));
}

#[tokio::test]
async fn a_string_body_is_sent_as_text_and_an_object_as_json() {
    let (url, rx) = receiver(vec![]).await;
    let driver = WebhookDriver::new("hooks", config(&url)).unwrap();

    driver
        .execute(&post(json!("UPS on battery")), &targets(&["webhook:audit"]))
        .await
        .unwrap();
    driver
        .execute(&post(json!({"n": 1})), &targets(&["webhook:audit"]))
        .await
        .unwrap();

    let seen = rx.seen();
    assert_eq!(seen[0].path, "/hooks/audit/in");
    assert_eq!(seen[0].headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(seen[0].body, b"UPS on battery");
    assert!(
        seen[0].headers.get("x-hazel-signature").is_none(),
        "no secret, no signature"
    );
    assert_eq!(seen[1].headers["content-type"], "application/json");
    assert_eq!(seen[1].body, br#"{"n":1}"#);
}

#[tokio::test]
async fn action_headers_override_configured_headers_by_name() {
    let (url, rx) = receiver(vec![]).await;
    let mut config = config(&url);
    config.headers.insert("X-Team".into(), "ops".into());
    config.headers.insert("X-Env".into(), "prod".into());
    let driver = WebhookDriver::new("hooks", config).unwrap();
    let mut action = post(json!({}));
    action
        .params
        .insert("headers".into(), json!({"x-team": "storage"}));

    driver
        .execute(&action, &targets(&["webhook:alerts"]))
        .await
        .unwrap();

    let seen = rx.seen();
    assert_eq!(seen[0].headers["x-team"], "storage");
    assert_eq!(seen[0].headers["x-env"], "prod");
}

#[tokio::test]
async fn a_503_is_retried_with_the_same_idempotency_key_until_it_succeeds() {
    let (url, rx) = receiver(vec![
        Reply::Status(503),
        Reply::Status(503),
        Reply::Status(200),
    ])
    .await;
    let driver = WebhookDriver::new("hooks", config(&url)).unwrap();

    let outcomes = driver
        .execute(&post(json!({"a": 1})), &targets(&["webhook:alerts"]))
        .await
        .unwrap();

    assert!(outcomes[0].ok, "{:?}", outcomes[0]);
    assert_eq!(outcomes[0].evidence["attempts"], 3);
    let seen = rx.seen();
    assert_eq!(seen.len(), 3);
    let keys: Vec<_> = seen
        .iter()
        .map(|s| s.headers["idempotency-key"].clone())
        .collect();
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "one key for every attempt: {keys:?}"
    );
}

#[tokio::test]
async fn retries_stop_after_the_configured_count() {
    let (url, rx) = receiver(vec![Reply::Status(500); 5]).await;
    let mut config = config(&url);
    config.retries = 1;
    let driver = WebhookDriver::new("hooks", config).unwrap();

    let outcomes = driver
        .execute(&post(json!({})), &targets(&["webhook:alerts"]))
        .await
        .unwrap();

    assert_eq!(outcomes[0].code, "driver.server_error");
    assert_eq!(outcomes[0].evidence["attempts"], 2);
    assert_eq!(rx.seen().len(), 2);
}

#[tokio::test]
async fn a_400_is_not_retried_and_reads_as_a_validation_error() {
    let (url, rx) = receiver(vec![Reply::Status(400), Reply::Status(200)]).await;
    let driver = WebhookDriver::new("hooks", config(&url)).unwrap();

    let outcomes = driver
        .execute(&post(json!({})), &targets(&["webhook:alerts"]))
        .await
        .unwrap();

    assert!(!outcomes[0].ok);
    assert_eq!(outcomes[0].code, "driver.validation_error");
    assert_eq!(outcomes[0].evidence["status"], 400);
    assert_eq!(outcomes[0].evidence["attempts"], 1);
    assert_eq!(rx.seen().len(), 1);
}

#[tokio::test]
async fn statuses_map_to_auth_and_not_found_errors() {
    let (url, _rx) = receiver(vec![
        Reply::Status(401),
        Reply::Status(403),
        Reply::Status(404),
    ])
    .await;
    let driver = WebhookDriver::new("hooks", config(&url)).unwrap();

    let outcomes = driver
        .execute(
            &post(json!({})),
            &targets(&["webhook:alerts", "webhook:alerts", "webhook:alerts"]),
        )
        .await
        .unwrap();

    let codes: Vec<_> = outcomes.iter().map(|o| o.code.as_str()).collect();
    assert_eq!(
        codes,
        ["driver.auth_error", "driver.auth_error", "driver.not_found"]
    );
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out() {
    let (url, rx) = receiver(vec![Reply::Hang]).await;
    let mut config = config(&url);
    config.timeout_s = 0.2;
    config.retries = 0;
    let driver = WebhookDriver::new("hooks", config).unwrap();

    let started = Instant::now();
    let outcomes = driver
        .execute(&post(json!({})), &targets(&["webhook:alerts"]))
        .await
        .unwrap();

    assert_eq!(outcomes[0].code, "driver.timeout");
    assert_eq!(outcomes[0].evidence["attempts"], 1);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(rx.seen().len(), 1);
}

#[tokio::test]
async fn a_timed_out_post_is_not_retried_when_retry_post_is_off() {
    let (url, rx) = receiver(vec![Reply::Hang, Reply::Hang]).await;
    let mut config = config(&url);
    config.timeout_s = 0.2;
    config.retries = 2;
    config.retry_post = false;
    let driver = WebhookDriver::new("hooks", config).unwrap();

    let outcomes = driver
        .execute(&post(json!({})), &targets(&["webhook:alerts"]))
        .await
        .unwrap();

    assert_eq!(outcomes[0].code, "driver.timeout");
    assert_eq!(outcomes[0].evidence["attempts"], 1);
    assert_eq!(rx.seen().len(), 1);
}

#[tokio::test]
async fn an_unreachable_port_is_a_network_error_retried_because_nothing_was_sent() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut config = config(&format!("http://127.0.0.1:{port}/"));
    config.retry_post = false;
    config.retries = 2;
    let driver = WebhookDriver::new("hooks", config).unwrap();

    let outcomes = driver
        .execute(&post(json!({})), &targets(&["webhook:alerts"]))
        .await
        .unwrap();

    assert!(!outcomes[0].ok);
    assert_eq!(outcomes[0].code, "driver.network_error");
    assert_eq!(outcomes[0].evidence["attempts"], 3);
    let err = driver.test_connection().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NetworkError);
}

#[tokio::test]
async fn a_429_waits_for_retry_after_then_succeeds() {
    let (url, rx) = receiver(vec![Reply::WithHeaders(429, vec![("retry-after", "1")])]).await;
    let driver = WebhookDriver::new("hooks", config(&url)).unwrap();

    let started = Instant::now();
    let outcomes = driver
        .execute(&post(json!({})), &targets(&["webhook:alerts"]))
        .await
        .unwrap();

    assert!(outcomes[0].ok, "{:?}", outcomes[0]);
    assert_eq!(outcomes[0].evidence["attempts"], 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retry-after was honoured"
    );
    assert_eq!(rx.seen().len(), 2);
}

#[tokio::test]
async fn a_retry_after_beyond_the_budget_gives_up_at_once_as_rate_limited() {
    let (url, rx) = receiver(vec![Reply::WithHeaders(429, vec![("retry-after", "120")])]).await;
    let mut config = config(&url);
    config.budget_s = 5.0;
    let driver = WebhookDriver::new("hooks", config).unwrap();

    let started = Instant::now();
    let outcomes = driver
        .execute(&post(json!({})), &targets(&["webhook:alerts"]))
        .await
        .unwrap();

    assert_eq!(outcomes[0].code, "driver.rate_limited");
    assert_eq!(outcomes[0].evidence["attempts"], 1);
    assert_eq!(outcomes[0].evidence["retry_after_ms"], 120_000);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(rx.seen().len(), 1);
}

#[tokio::test]
async fn a_dry_run_sends_nothing_and_previews_the_post() {
    let (url, rx) = receiver(vec![]).await;
    let mut config = config(&url);
    config.secret = Some(Secret::new("s3cr3t-hmac-key"));
    let driver = WebhookDriver::new("hooks", config).unwrap();

    let answers = driver
        .dry_run(
            &post(json!({"event": "on_battery"})),
            &targets(&["webhook:alerts", "webhook:nope"]),
        )
        .await
        .unwrap();

    assert!(rx.seen().is_empty(), "a dry-run must not send a request");
    let ok = serde_json::to_value(&answers[0]).unwrap();
    assert_eq!(ok["ok"], true);
    assert_eq!(ok["severity"], "info");
    assert_eq!(ok["plan"]["kind"], "api");
    let preview = &ok["plan"]["preview"][0];
    assert_eq!(preview["method"], "POST");
    assert_eq!(preview["url"], format!("{url}/alerts"));
    assert_eq!(preview["headers"]["x-hazel-signature"], "sha256=***");
    assert_eq!(preview["body"], json!({"event": "on_battery"}));
    assert!(ok["effects"]["summary"]
        .as_str()
        .unwrap()
        .starts_with("would POST"));
    let checks: Vec<_> = ok["preconditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].clone())
        .collect();
    assert_eq!(
        checks,
        [
            json!("webhook_exists"),
            json!("url_valid"),
            json!("params_valid")
        ]
    );
    assert!(ok["idempotency_key"]
        .as_str()
        .unwrap()
        .starts_with("notify.webhook:post:webhook:alerts:body=sha256:"));

    let missing = &answers[1];
    assert!(!missing.ok);
    assert_eq!(missing.severity, inventory::Severity::Error);
    assert!(
        missing.reason.as_deref().unwrap().starts_with("not_found"),
        "{missing:?}"
    );
}

#[tokio::test]
async fn a_dry_run_probe_is_sent_only_when_configured() {
    let (url, rx) = receiver(vec![Reply::Status(405)]).await;
    let mut config = config(&url);
    config.dry_run_probe = Probe::Head;
    let driver = WebhookDriver::new("hooks", config).unwrap();

    let answers = driver
        .dry_run(&post(json!({})), &targets(&["webhook:alerts"]))
        .await
        .unwrap();

    assert!(
        answers[0].ok,
        "a 405 to HEAD still shows a receiver: {:?}",
        answers[0]
    );
    let reachable = answers[0]
        .preconditions
        .iter()
        .find(|c| c.check == "reachable")
        .unwrap();
    assert!(reachable.ok);
    let seen = rx.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::HEAD);
}

#[tokio::test]
async fn invalid_params_fail_the_preflight_without_a_request() {
    let (url, rx) = receiver(vec![]).await;
    let driver = WebhookDriver::new("hooks", config(&url)).unwrap();

    let answers = driver
        .dry_run(&post(json!([1, 2])), &targets(&["webhook:alerts"]))
        .await
        .unwrap();
    let outcomes = driver
        .execute(&post(json!(42)), &targets(&["webhook:alerts"]))
        .await
        .unwrap();

    assert!(!answers[0].ok);
    assert!(answers[0]
        .preconditions
        .iter()
        .any(|c| c.check == "params_valid" && !c.ok));
    assert_eq!(outcomes[0].code, "driver.validation_error");
    assert!(rx.seen().is_empty());
}

#[tokio::test]
async fn discovery_lists_the_configured_webhooks() {
    let driver =
        WebhookDriver::new("hooks", config("https://bob:pw-abc@example.test/base/")).unwrap();

    let found = driver
        .discover(RefreshMode::Fast, Duration::from_secs(5))
        .await
        .unwrap();

    let ids: Vec<_> = found.iter().map(|t| t.canonical_id()).collect();
    assert_eq!(ids, ["webhook:alerts", "webhook:audit"]);
    assert_eq!(found[0].attrs["url"], "https://example.test/base/alerts");

    let single = WebhookDriver::new("hooks", WebhookConfig::new("https://example.test/")).unwrap();
    let found = single
        .discover(RefreshMode::Full, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(found[0].canonical_id(), "webhook:default");
}

#[tokio::test]
async fn secrets_never_appear_in_previews_answers_errors_or_debug() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (url, _rx) = receiver(vec![]).await;
    let secrets = ["s3cr3t-hmac-key", "tok-xyz-789", "pw-abc-123", "qs-tok-456"];
    let with = |url: &str| {
        let mut config = config(url);
        config.secret = Some(Secret::new(secrets[0]));
        config
            .headers
            .insert("Authorization".into(), format!("Bearer {}", secrets[1]));
        config.retries = 0;
        WebhookDriver::new("hooks", config).unwrap()
    };
    let authed = |url: &str| {
        url.replacen("http://", &format!("http://bob:{}@", secrets[2]), 1) + "?token=" + secrets[3]
    };
    let up = with(&authed(&url));
    let down = with(&authed(&format!("http://127.0.0.1:{port}/")));
    let action = post(json!({"m": "hi"}));
    let ids = targets(&["webhook:alerts"]);

    let mut shown = Vec::new();
    shown.push(format!("{up:?}"));
    shown.push(serde_json::to_string(&up.dry_run(&action, &ids).await.unwrap()).unwrap());
    shown.push(serde_json::to_string(&up.execute(&action, &ids).await.unwrap()).unwrap());
    shown.push(serde_json::to_string(&down.execute(&action, &ids).await.unwrap()).unwrap());
    shown.push(
        serde_json::to_string(
            &up.discover(RefreshMode::Full, Duration::from_secs(1))
                .await
                .unwrap(),
        )
        .unwrap(),
    );
    let err = down.test_connection().await.unwrap_err();
    shown.push(format!("{err} {err:?}"));
    let mut source = std::error::Error::source(&err);
    while let Some(inner) = source {
        shown.push(format!("{inner} {inner:?}"));
        source = inner.source();
    }
    let mut bad = config("ftp://bob:pw-abc-123@example.test/");
    bad.secret = Some(Secret::new(secrets[0]));
    let err = WebhookDriver::new("hooks", bad).unwrap_err();
    shown.push(format!("{err} {err:?}"));

    for text in &shown {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
    }
}

#[tokio::test]
async fn the_registry_builds_a_webhook_driver_from_a_host_config() {
    let manifests = drivers::manifest::ManifestSet::embedded();
    let host: drivers::registry::HostConfig = serde_json::from_value(json!({
        "id": "hooks",
        "plugin": "http.webhook",
        "connection": {"url": "https://example.test/notify", "secret": "s3cr3t-hmac-key"}
    }))
    .unwrap();

    let (_, driver) = drivers::registry::Registry::builtin()
        .driver_for(&manifests, &host)
        .expect("a valid webhook host");

    assert_eq!(driver.plugin_id(), "http.webhook");
    let found = driver
        .discover(RefreshMode::Fast, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(found[0].canonical_id(), "webhook:default");
}
