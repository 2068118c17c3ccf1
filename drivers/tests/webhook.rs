//! The `http.webhook` driver against a real HTTP receiver on 127.0.0.1 (an
//! axum server that records every request and answers from a script).
//!
//! These tests run on real time: the peer is a real socket, and a paused
//! tokio clock would fire the client's timeouts while it waits for loopback
//! IO. Waits are kept to milliseconds; the one exception is the 429 test,
//! because `Retry-After` counts whole seconds.
//!
//! Retries: a POST that may have reached the receiver is retried only with
//! `retry_post: true`; a connect failure always is.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use drivers::driver::{action_key, Action, Driver, ErrorKind, RefreshMode};
use drivers::manifest::{shipped, ManifestSet, RateLimit};
use drivers::ratelimit::DeviceLimits;
use drivers::registry::{HostConfig, Registry};
use drivers::secret::{Secret, MASK};
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

/// A fast-failing config: short backoff, alerts and audit endpoints,
/// `retry_post` at its default (off).
fn config(url: &str) -> WebhookConfig {
    let mut config = WebhookConfig::new(url);
    config.http.backoff_ms_start = 10;
    config.http.backoff_ms_max = 50;
    config.http.timeout_s = 2.0;
    config.budget_s = 10.0;
    config.targets.insert("alerts".into(), "alerts".into());
    config.targets.insert("audit".into(), "/audit/in".into());
    config
}

/// [`config`] for a receiver that dedupes on `Idempotency-Key`.
fn deduping(url: &str) -> WebhookConfig {
    let mut config = config(url);
    config.retry_post = true;
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
        outcome.evidence["delivery_key"].as_str().unwrap()
    );
    let action = post(json!({"event": "on_battery", "ups": "ups1"}));
    assert_eq!(
        outcome.evidence["idempotency_key"],
        action_key(shipped(), "hooks", &action, "webhook:alerts"),
        "the §5 key, as the dry-run reports it"
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
async fn by_default_a_post_that_reached_the_receiver_is_not_retried() {
    let (url, rx) = receiver(vec![Reply::Status(503), Reply::Status(200)]).await;
    let driver = WebhookDriver::new("hooks", config(&url)).unwrap();

    let outcomes = driver
        .execute(&post(json!({"a": 1})), &targets(&["webhook:alerts"]))
        .await
        .unwrap();

    assert_eq!(outcomes[0].code, "driver.server_error");
    assert_eq!(outcomes[0].evidence["attempts"], 1);
    assert_eq!(rx.seen().len(), 1, "a 503 may have been processed");
}

#[tokio::test]
async fn with_retry_post_a_503_is_retried_with_the_same_idempotency_key_until_it_succeeds() {
    let (url, rx) = receiver(vec![
        Reply::Status(503),
        Reply::Status(503),
        Reply::Status(200),
    ])
    .await;
    let driver = WebhookDriver::new("hooks", deduping(&url)).unwrap();

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
    assert_eq!(
        outcomes[0].evidence["delivery_key"],
        keys[0].to_str().unwrap()
    );
}

#[tokio::test]
async fn each_delivery_gets_its_own_key_unless_the_action_sets_one() {
    let (url, rx) = receiver(vec![]).await;
    let driver = WebhookDriver::new("hooks", config(&url)).unwrap();
    let mut keyed = post(json!({"a": 1}));
    keyed
        .params
        .insert("headers".into(), json!({"Idempotency-Key": "deploy-42"}));

    for action in [post(json!({"a": 1})), post(json!({"a": 1})), keyed] {
        driver
            .execute(&action, &targets(&["webhook:alerts"]))
            .await
            .unwrap();
    }

    let keys: Vec<String> = rx
        .seen()
        .iter()
        .map(|s| s.headers["idempotency-key"].to_str().unwrap().to_string())
        .collect();
    assert_ne!(
        keys[0], keys[1],
        "the same notification sent twice is two deliveries"
    );
    assert_eq!(keys[2], "deploy-42");
}

#[tokio::test]
async fn retries_stop_after_the_configured_count() {
    let (url, rx) = receiver(vec![Reply::Status(500); 5]).await;
    let mut config = deduping(&url);
    config.http.retries = 1;
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
    config.http.timeout_s = 0.2;
    config.http.retries = 0;
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
async fn a_timed_out_post_is_not_retried_by_default() {
    let (url, rx) = receiver(vec![Reply::Hang, Reply::Hang]).await;
    let mut config = config(&url);
    config.http.timeout_s = 0.2;
    config.http.retries = 2;
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
    config.http.retries = 2;
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
    let driver = WebhookDriver::new("hooks", deduping(&url)).unwrap();

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
    let mut config = deduping(&url);
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
async fn a_retry_starts_only_if_its_wait_and_a_whole_attempt_fit_the_budget() {
    // The 10 ms backoff fits the 1 s budget, but the backoff plus a 2 s
    // attempt does not: no retry starts.
    let (url, rx) = receiver(vec![Reply::Status(503), Reply::Status(200)]).await;
    let mut config = deduping(&url);
    config.http.timeout_s = 2.0;
    config.budget_s = 1.0;
    let driver = WebhookDriver::new("hooks", config).unwrap();

    let outcomes = driver
        .execute(&post(json!({})), &targets(&["webhook:alerts"]))
        .await
        .unwrap();

    assert_eq!(outcomes[0].code, "driver.server_error");
    assert_eq!(outcomes[0].evidence["attempts"], 1);
    let reason = outcomes[0].reason.as_deref().unwrap();
    assert!(
        reason.contains("would not fit the remaining budget"),
        "{reason}"
    );
    assert_eq!(rx.seen().len(), 1);
}

#[tokio::test]
async fn posts_wait_for_the_capabilitys_rate_limit() {
    let (url, rx) = receiver(vec![]).await;
    let mut manifest = ManifestSet::embedded().get("http.webhook").unwrap().clone();
    manifest.capabilities[0].rate_limit = Some(RateLimit { rps: 10, burst: 1 });
    let driver = WebhookDriver::new("hooks", config(&url))
        .unwrap()
        .with_limits(DeviceLimits::from_manifest(&manifest));

    let started = Instant::now();
    let outcomes = driver
        .execute(
            &post(json!({})),
            &targets(&[
                "webhook:alerts",
                "webhook:audit",
                "webhook:alerts",
                "webhook:audit",
            ]),
        )
        .await
        .unwrap();

    assert!(outcomes.iter().all(|o| o.ok), "{outcomes:?}");
    assert_eq!(rx.seen().len(), 4);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "one post at once, then one per 100 ms: {:?}",
        started.elapsed()
    );
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
    assert_eq!(
        ok["idempotency_key"],
        action_key(
            shipped(),
            "hooks",
            &post(json!({"event": "on_battery"})),
            "webhook:alerts"
        ),
        "the engine's §5 key"
    );

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
    let secrets = [
        "s3cr3t-hmac-key",
        "tok-xyz-789",
        "pw-abc-123",
        "qs-tok-456",
        "tenant-991",
        "act-tok-555",
    ];
    let with = |url: &str| {
        let mut config = config(url);
        config.secret = Some(Secret::new(secrets[0]));
        config
            .headers
            .insert("Authorization".into(), format!("Bearer {}", secrets[1]));
        config.headers.insert("X-Tenant".into(), secrets[4].into());
        config.http.retries = 0;
        WebhookDriver::new("hooks", config).unwrap()
    };
    let authed = |url: &str| {
        url.replacen("http://", &format!("http://bob:{}@", secrets[2]), 1) + "?token=" + secrets[3]
    };
    let up = with(&authed(&url));
    let down = with(&authed(&format!("http://127.0.0.1:{port}/")));
    let mut action = post(json!({"m": "hi"}));
    action.params.insert(
        "headers".into(),
        json!({"X-Api-Token": secrets[5], "X-Team": "ops"}),
    );
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
    let preview = serde_json::to_value(&up.dry_run(&action, &ids).await.unwrap()[0]).unwrap();
    let headers = &preview["plan"]["preview"][0]["headers"];
    assert_eq!(headers["x-tenant"], MASK, "host header values are secret");
    assert_eq!(
        headers["x-api-token"], MASK,
        "credential-like action header"
    );
    assert_eq!(headers["x-team"], "ops", "other action headers are shown");
}

#[tokio::test]
async fn the_registry_builds_a_webhook_driver_from_a_host_config() {
    let manifests = ManifestSet::embedded();
    let host: HostConfig = serde_json::from_value(json!({
        "id": "hooks",
        "plugin": "http.webhook",
        "connection": {"url": "https://example.test/notify", "secret": "s3cr3t-hmac-key"}
    }))
    .unwrap();

    let (_, driver) = Registry::builtin()
        .driver_for(&manifests, &host)
        .expect("a valid webhook host");

    assert_eq!(driver.plugin_id(), "http.webhook");
    let found = driver
        .discover(RefreshMode::Fast, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(found[0].canonical_id(), "webhook:default");
}

/// Every connection field the driver accepts, each set away from its default.
fn every_field(url: &str) -> Value {
    json!({
        "url": url,
        "secret": "s3cr3t-hmac-key",
        "timeout_s": 1.5,
        "retries": 3,
        "backoff_ms_start": 5,
        "backoff_ms_max": 20,
        "budget_s": 8,
        "retry_post": true,
        "headers": {"Authorization": "Bearer tok-xyz-789", "X-Team": "ops"},
        "targets": {"alerts": "alerts", "audit": "/audit/in"},
        "dry_run_probe": "head",
        "verify_tls": false
    })
}

#[tokio::test]
async fn a_host_built_through_the_registry_can_set_every_webhook_field() {
    let (url, rx) = receiver(vec![
        Reply::Status(503),
        Reply::Status(503),
        Reply::Status(200),
        Reply::Status(405),
    ])
    .await;
    let host: HostConfig = serde_json::from_value(json!({
        "id": "hooks", "plugin": "http.webhook", "connection": every_field(&url)
    }))
    .unwrap();

    let (validated, driver) = Registry::builtin()
        .driver_for(&ManifestSet::embedded(), &host)
        .unwrap_or_else(|e| panic!("{e}: {:?}", e.findings()));

    let found: Vec<String> = driver
        .discover(RefreshMode::Fast, Duration::from_secs(1))
        .await
        .unwrap()
        .iter()
        .map(|t| t.canonical_id())
        .collect();
    assert_eq!(found, ["webhook:alerts", "webhook:audit"], "targets");
    let outcomes = driver
        .execute(&post(json!({"n": 1})), &targets(&["webhook:audit"]))
        .await
        .unwrap();
    assert!(outcomes[0].ok, "{:?}", outcomes[0]);
    assert_eq!(
        outcomes[0].evidence["attempts"], 3,
        "retry_post, retries and the backoff apply"
    );
    let answers = driver
        .dry_run(&post(json!({"n": 1})), &targets(&["webhook:alerts"]))
        .await
        .unwrap();
    assert!(answers[0].ok, "{:?}", answers[0]);

    let seen = rx.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0].path, "/hooks/audit/in");
    assert_eq!(seen[0].headers["authorization"], "Bearer tok-xyz-789");
    assert_eq!(seen[0].headers["x-team"], "ops");
    let expected = format!("sha256={}", hmac_hex(b"s3cr3t-hmac-key", &seen[0].body));
    assert_eq!(seen[0].headers["x-hazel-signature"], expected.as_str());
    assert_eq!(seen[3].method, Method::HEAD, "dry_run_probe: head");
    assert_eq!(seen[3].path, "/hooks/alerts");

    let shown = format!(
        "{validated:?} {}",
        serde_json::to_string(&validated).unwrap()
    );
    for secret in ["s3cr3t-hmac-key", "tok-xyz-789"] {
        assert!(!shown.contains(secret), "{secret} leaked in {shown}");
    }
}

#[test]
fn the_manifest_declares_every_webhook_field_with_the_drivers_defaults() {
    let manifests = ManifestSet::embedded();
    let manifest = manifests.get("http.webhook").unwrap();
    let declared: Vec<&str> = manifest
        .schema
        .connection
        .keys()
        .map(String::as_str)
        .collect();
    let accepted = every_field("https://example.test/");
    let accepted: Vec<&str> = accepted
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(declared, accepted);
    // `every_field` holds every field the driver accepts: the config denies
    // unknown fields, so this fails if one is misspelt or gone.
    serde_json::from_value::<WebhookConfig>(every_field("https://example.test/")).unwrap();

    let d = WebhookConfig::new("https://example.test/");
    let default = |name: &str| manifest.schema.connection[name].default.clone();
    assert_eq!(default("timeout_s"), Some(json!(d.http.timeout_s as u64)));
    assert_eq!(default("retries"), Some(json!(d.http.retries)));
    assert_eq!(
        default("backoff_ms_start"),
        Some(json!(d.http.backoff_ms_start))
    );
    assert_eq!(
        default("backoff_ms_max"),
        Some(json!(d.http.backoff_ms_max))
    );
    assert_eq!(default("budget_s"), Some(json!(d.budget_s as u64)));
    assert_eq!(default("retry_post"), Some(json!(false)));
    assert_eq!(default("verify_tls"), Some(json!(d.http.verify_tls)));
    assert_eq!(default("dry_run_probe"), Some(json!("none")));
    assert!(!d.retry_post, "a post is not idempotent");
    let http = manifest.defaults.http.as_ref().unwrap();
    assert_eq!(
        (
            http.timeout_s as f64,
            http.retries,
            http.backoff_ms_start,
            http.backoff_ms_max
        ),
        (
            d.http.timeout_s,
            d.http.retries,
            d.http.backoff_ms_start,
            d.http.backoff_ms_max
        ),
        "defaults.http agrees with the connection defaults"
    );
    assert!(
        manifest.schema.connection["headers"].secret,
        "headers carry tokens"
    );
}

#[test]
fn a_host_header_that_is_not_a_string_is_refused_without_quoting_it() {
    let mut connection = every_field("https://example.test/");
    connection["headers"] = json!({"Authorization": 98765});
    let host: HostConfig = serde_json::from_value(json!({
        "id": "hooks", "plugin": "http.webhook", "connection": connection
    }))
    .unwrap();

    let err = match Registry::builtin().driver_for(&ManifestSet::embedded(), &host) {
        Ok(_) => panic!("a numeric header was accepted"),
        Err(e) => e,
    };

    let shown = format!("{err} {err:?} {:?}", err.findings());
    assert!(shown.contains("Authorization"), "{shown}");
    assert!(!shown.contains("98765"), "{shown}");
}
