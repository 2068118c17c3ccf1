//! The bounded attack suite (SPEC §12): one regression test per hostile
//! input the hardening review measured against `hazel validate` and
//! `hazel serve`, each asserting the refusal code and a bound on the work
//! done, measured inside the test by a counter or limit (bytes the parser's
//! arena holds, bytes the server took before answering), never by a
//! wall-clock budget that would flake on a loaded machine.
//!
//! The API cases run the real router and connection server on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use agent::api::auth::{mint, JwtKey};
use agent::api::{self, ApiConfig, ConnLimits};
use agent::compile::CompileContext;
use agent::service::{Config, OpenOptions, Role, Service};
use agent::spec::parse::MAX_DOCUMENT_VALUES;
use agent::spec::parse_document;
use agent::validate::validate_text;
use drivers::manifest::ManifestSet;
use inventory::query::{Query, MAX_PATTERN_LEN, MAX_QUERY_LEN};
use inventory::selector::{parse_selector, SelectorMode, MAX_IDS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// The most a refused or accepted hostile document may leave in the
/// parser's arena: a few tens of MB (the old alias bomb took 2.1 GB).
const ARENA_BOUND: usize = 32 * 1024 * 1024;

/// How long a test waits for an answer that should come at once: a
/// failsafe against a hang, not a budget.
const PATIENCE: Duration = Duration::from_secs(30);

fn manifests() -> ManifestSet {
    ManifestSet::embedded()
}

/// The blocker codes of validating `text`.
fn blockers(text: &str) -> Vec<String> {
    let validated = validate_text(text, &manifests(), &CompileContext::default());
    validated
        .report
        .issues
        .iter()
        .map(|i| i.finding.code.clone())
        .collect()
}

/// Parses `text` in an arena of its own and returns the parse's error code
/// (or `None`) and the bytes the arena took: the work's memory bound.
fn parse_cost(text: &str) -> (Option<&'static str>, usize) {
    let arena = bumpalo::Bump::new();
    let code = parse_document(text, &arena).err().map(|e| e.code);
    (code, arena.allocated_bytes())
}

/// The review's alias bomb: eight levels of 9-way aliases (9^8, 43
/// million values once expanded) plus a padded list of `padding` items.
fn alias_bomb(padding: usize) -> String {
    let mut text = String::from("version: 1\nname: bomb\nl0: &l0 [x, x, x, x, x, x, x, x, x]\n");
    for level in 1..8 {
        let prev = format!("*l{}", level - 1);
        let row = [prev.as_str(); 9].join(", ");
        text.push_str(&format!("l{level}: &l{level} [{row}]\n"));
    }
    text.push_str("pad: [");
    text.push_str(&vec!["p"; padding].join(", "));
    text.push_str("]\nboom: *l7\n");
    text
}

#[test]
fn an_alias_bomb_at_the_old_sizes_is_refused_after_a_bounded_number_of_values() {
    for padding in [100_000, 200_000] {
        let text = alias_bomb(padding);
        let (code, bytes) = parse_cost(&text);
        assert_eq!(code, Some("schema.too_large"), "padding {padding}");
        assert!(bytes < ARENA_BOUND, "padding {padding}: {bytes} bytes");
        assert_eq!(blockers(&text), ["schema.too_large"]);
    }
    // The finding names the number.
    let validated = validate_text(&alias_bomb(0), &manifests(), &CompileContext::default());
    let message = &validated.report.issues[0].finding.message;
    assert!(
        message.contains(&MAX_DOCUMENT_VALUES.to_string()),
        "{message}"
    );
}

#[test]
fn a_hundred_thousand_nested_brackets_are_refused_before_the_yaml_parser_runs() {
    let text = format!("version: 1\nname: deep\npad: {}\n", "[".repeat(100_000));
    let (code, bytes) = parse_cost(&text);
    assert_eq!(code, Some("schema.too_deep"));
    // Refused by the linear scan: the arena never grew.
    assert_eq!(bytes, bumpalo::Bump::new().allocated_bytes());
    assert_eq!(blockers(&text), ["schema.too_deep"]);
    // JSON too.
    let json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(parse_cost(&json).0, Some("schema.too_deep"));
}

#[test]
fn a_long_glob_with_many_stars_is_refused_before_any_target_is_matched() {
    let pattern = "*".repeat(300_000);
    let errors = Query::parse(&format!("name ~ {pattern}")).unwrap_err();
    assert_eq!(errors[0].code, "selector.query_too_complex");
    // Past the query length limit first; a pattern inside it but past the
    // pattern limit names that limit.
    assert!(
        errors[0].message.contains(&MAX_QUERY_LEN.to_string()),
        "{}",
        errors[0].message
    );
    let pattern = "a*".repeat(MAX_PATTERN_LEN);
    let errors = Query::parse(&format!("name ~ {pattern}")).unwrap_err();
    assert_eq!(errors[0].code, "selector.query_too_complex");
    assert!(
        errors[0].message.contains(&MAX_PATTERN_LEN.to_string()),
        "{}",
        errors[0].message
    );
    // The longest pattern accepted parses, its star runs collapsed.
    let stars = "*".repeat(MAX_PATTERN_LEN);
    assert!(Query::parse(&format!("name ~ {stars}")).is_ok());
}

#[test]
fn twenty_five_thousand_and_joined_predicates_are_refused() {
    let query = vec!["status = running"; 25_000].join(" and ");
    let errors = Query::parse(&query).unwrap_err();
    assert_eq!(errors[0].code, "selector.query_too_complex");
    // Refused by length before one predicate is parsed: one error, not 25 000.
    assert_eq!(errors.len(), 1);
    // Inside the length limit, by the predicate count.
    let query = vec!["a = b"; 200].join(" and ");
    assert!(query.len() < MAX_QUERY_LEN);
    let errors = Query::parse(&query).unwrap_err();
    assert_eq!(errors[0].code, "selector.query_too_complex");
    assert_eq!(errors.len(), 1);
}

#[test]
fn a_huge_range_selector_is_refused_without_expanding_it() {
    let errors = parse_selector(SelectorMode::Range, "1-999999999999", "vm").unwrap_err();
    assert_eq!(errors[0].code, "selector.too_large");
    assert!(
        errors[0].message.contains(&MAX_IDS.to_string()),
        "{}",
        errors[0].message
    );
    // Counted, not expanded: a range one past the limit is refused too.
    let value = format!("1-{}", MAX_IDS + 1);
    let errors = parse_selector(SelectorMode::Range, &value, "vm").unwrap_err();
    assert_eq!(errors[0].code, "selector.too_large");
}

// --- the API on loopback ---

const JWT_KEY: &[u8] = b"hostile-input-test-key-of-32-bytes!!";
/// A small body limit, so the body cases stay small too.
const BODY_LIMIT: usize = 64 * 1024;

struct Api {
    addr: SocketAddr,
    service: Service,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("store.key");
    std::fs::write(&secrets, "ab".repeat(32)).unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        shutdown_grace: Duration::from_secs(1),
        ..Config::default()
    };
    config.secrets.key_file = Some(secrets);
    config.secrets.key_env = "HAZEL_HOSTILE_TEST_NO_SUCH_VAR".into();
    let options = OpenOptions {
        discovery: false,
        ..OpenOptions::default()
    };
    let service = Service::open(config, options)
        .await
        .expect("the service opens");
    let api_config = ApiConfig {
        body_limit: BODY_LIMIT,
        rate_per_s: 10_000,
        rate_burst: 10_000,
        ..ApiConfig::new(JwtKey::from_bytes(JWT_KEY).unwrap())
    };
    let router = api::router(service.clone(), api_config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(api::conn::serve(
        listener,
        router,
        ConnLimits::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    Api {
        addr,
        service,
        _stop: stop,
        _dir: dir,
    }
}

fn token() -> String {
    let key = JwtKey::from_bytes(JWT_KEY).unwrap();
    mint(
        &key,
        "operator",
        Role::Operator,
        Duration::from_secs(600),
        chrono::Utc::now(),
    )
}

/// A request head for `POST path` as an operator, with `extra` headers.
fn head(path: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nX-Hazel-CSRF: 1\r\n{extra}\r\n",
        token()
    )
}

/// Reads the answer's status and body until the server closes or the
/// answer is complete.
async fn answer(stream: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&raw);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse::<usize>().ok());
                if len.is_some_and(|len| body.len() >= len) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("an answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn code(body: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    value["error"]["code"].as_str().unwrap_or("").to_string()
}

#[tokio::test]
async fn an_oversized_declared_body_is_refused_before_a_byte_of_it_is_read() {
    let api = api().await;
    let mut stream = TcpStream::connect(api.addr).await.unwrap();
    // 100 MB declared, none sent: the answer comes anyway.
    let head = head(
        "/api/policies/validate",
        "Content-Type: application/yaml\r\nContent-Length: 100000000\r\n",
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (status, body) = answer(&mut stream).await;
    assert_eq!(status, 413);
    assert_eq!(code(&body), "request.too_large");
    assert!(body.contains(&BODY_LIMIT.to_string()), "{body}");
}

#[tokio::test]
async fn a_chunked_body_past_the_limit_is_cut_at_the_limit() {
    let api = api().await;
    let mut stream = TcpStream::connect(api.addr).await.unwrap();
    let head = head(
        "/api/policies/validate",
        "Content-Type: application/yaml\r\nTransfer-Encoding: chunked\r\n",
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Chunks of 16 KiB until the server answers; it may stop reading
    // (the write fails or blocks) once it has refused the body.
    let chunk = format!("4000\r\n{}\r\n", "#".repeat(0x4000));
    let mut sent = 0usize;
    let most = 256 * BODY_LIMIT; // 16 MiB: far past the limit
    while sent < most {
        match tokio::time::timeout(
            Duration::from_millis(500),
            stream.write_all(chunk.as_bytes()),
        )
        .await
        {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
    }
    let (status, body) = answer(&mut stream).await;
    assert_eq!(status, 413);
    assert_eq!(code(&body), "request.too_large");
    // What the server took is the limit plus what the sockets buffer,
    // never the whole stream.
    assert!(sent < most, "the server read all {sent} bytes");
}

#[tokio::test]
async fn deeply_nested_json_in_a_body_is_a_too_deep_blocker() {
    let api = api().await;
    let depth = BODY_LIMIT / 2 - 10;
    let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let mut stream = TcpStream::connect(api.addr).await.unwrap();
    let head = head(
        "/api/policies/validate",
        &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            text.len()
        ),
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(text.as_bytes()).await.unwrap();
    let (status, body) = answer(&mut stream).await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["issues"][0]["code"], "schema.too_deep", "{report}");
    // No validation slot is left taken.
    assert_eq!(api.service.cpu_jobs_running(), 0);
}

#[tokio::test]
async fn a_header_flood_is_refused_with_431() {
    let api = api().await;
    let mut stream = TcpStream::connect(api.addr).await.unwrap();
    // 10 000 headers (about 200 KB): past both the count and the byte limit.
    let flood: String = (0..10_000).map(|i| format!("X-Flood-{i}: y\r\n")).collect();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{flood}\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let (status, body) = answer(&mut stream).await;
    assert_eq!(status, 431, "{body}");
    assert_eq!(code(&body), "request.headers_too_large");
}
