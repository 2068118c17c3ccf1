//! Connection limits of the API server over loopback (issue 15 items 3
//! and 8): idle and slow connections are closed, connections past the
//! caps are refused while a free slot still answers, and the answers hyper
//! gives itself to requests it cannot parse carry the JSON error shape.
//!
//! These drive real sockets against real timers, so they use short
//! configured timeouts (a few hundred ms) instead of `tokio::time::pause`,
//! and assert only "closed within a generous bound", never exact times.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent::api::conn::{self, ConnLimits};
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// How long a test waits for something that should happen well before.
const PATIENCE: Duration = Duration::from_secs(5);

struct TestServer {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// The size of `GET /big`: more than any socket buffers take.
const BIG: usize = 64 << 20;

async fn start(limits: ConnLimits) -> TestServer {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/big", get(|| async { vec![b'x'; BIG] }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(conn::serve(listener, router, limits, async move {
        let _ = stopped.await;
    }));
    TestServer { addr, _stop: stop }
}

fn limits() -> ConnLimits {
    ConnLimits {
        max_connections: 64,
        max_per_ip: 64,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        write_timeout: Duration::from_secs(10),
    }
}

/// Reads until the server closes the connection; the bytes read, or a
/// panic if it stays open past [`PATIENCE`].
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    match tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await {
        Ok(_) => out, // EOF or reset: closed either way
        Err(_) => panic!("the server kept the connection open past {PATIENCE:?}"),
    }
}

/// Sends `request` on a fresh connection and returns the status and body
/// of the answer, read until the server closes.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before taking every byte of an
    // oversized request; the answer is still there to read.
    let _ = stream.write_all(request).await;
    let raw = String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned();
    parse_answer(&raw)
}

fn parse_answer(raw: &str) -> (u16, String) {
    let status = raw
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {raw:?}"));
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// `GET /healthz` on a fresh connection: the answer, or `None` when the
/// connection was refused.
async fn healthz(addr: SocketAddr) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let raw = read_to_close(&mut stream).await;
    (!raw.is_empty()).then(|| parse_answer(&String::from_utf8_lossy(&raw)))
}

/// A connection that has been served one keep-alive request, so it is
/// known to hold a slot.
async fn held_connection(from: Option<&str>, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    }
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
        .await
        .expect("a held connection is answered")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    stream
}

/// Whether the server closed `stream` without answering.
async fn refused(stream: &mut TcpStream) -> bool {
    let _ = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    read_to_close(stream).await.is_empty()
}

/// A client that asks for a large answer and stops reading cannot hold its
/// connection: once the write has waited `write_timeout` the server closes
/// it. Reading afterwards gets what the buffers held, then the end,
/// never the whole answer (which a connection still open would deliver).
#[tokio::test]
async fn a_client_that_stops_reading_an_answer_is_closed_after_the_write_timeout() {
    let server = start(ConnLimits {
        write_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Not reading, for well past the write timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = read_to_close(&mut stream).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &got[..got.len().min(64)]
    );
    assert!(
        got.len() < BIG,
        "the whole answer ({} bytes) arrived: the connection was not closed",
        got.len()
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
    let server = start(ConnLimits {
        idle_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    assert!(read_to_close(&mut stream).await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn a_keep_alive_connection_is_closed_when_idle_after_its_requests() {
    let server = start(ConnLimits {
        idle_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut stream = held_connection(None, server.addr).await;
    assert!(read_to_close(&mut stream).await.is_empty());
}

#[tokio::test]
async fn a_request_head_sent_too_slowly_is_cut_at_the_header_read_timeout() {
    let server = start(ConnLimits {
        header_read_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    read_to_close(&mut stream).await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A connection in the middle of a request head: busy, so never evicted.
async fn busy_connection(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    stream
}

#[tokio::test]
async fn connections_past_the_cap_are_refused_while_every_slot_is_busy() {
    let server = start(ConnLimits {
        max_connections: 3,
        ..limits()
    })
    .await;
    let mut busy = Vec::new();
    for _ in 0..3 {
        busy.push(busy_connection(server.addr).await);
    }
    // The three heads have been read (their slots are taken) once a
    // fourth connection is refused; until then it may still be served.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut extra = TcpStream::connect(server.addr).await.unwrap();
        if refused(&mut extra).await {
            break;
        }
        assert!(Instant::now() < deadline, "a fourth connection is served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(busy.pop());
    // The slot comes back when the server notices the close.
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some((status, body)) = healthz(server.addr).await {
            assert_eq!((status, body.as_str()), (200, "ok"));
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_full_cap_of_idle_connections_gives_the_longest_idle_slot_to_a_newcomer() {
    let server = start(ConnLimits {
        max_connections: 3,
        // Far longer than the test: only an eviction can free a slot.
        idle_timeout: Duration::from_secs(600),
        ..limits()
    })
    .await;
    let mut oldest = held_connection(None, server.addr).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _silent_a = TcpStream::connect(server.addr).await.unwrap();
    let _silent_b = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Every slot is held by an idle connection; a probe is still answered.
    let (status, body) = healthz(server.addr)
        .await
        .expect("the probe is served, not refused");
    assert_eq!((status, body.as_str()), (200, "ok"));
    // The keep-alive connection idle the longest made room.
    assert!(
        read_to_close(&mut oldest).await.is_empty(),
        "the oldest idle connection is closed, with nothing more sent"
    );
}
#[tokio::test]
async fn every_slot_comes_back_after_a_flood_of_silent_and_probing_connections() {
    let server = start(ConnLimits {
        max_connections: 4,
        idle_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    // Waves of silent sockets, with probes among them, all closed after.
    for _ in 0..5 {
        let mut wave = Vec::new();
        for i in 0..60 {
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            if i % 10 == 0 {
                let _ = stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                    .await;
            }
            wave.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(wave);
    }
    // Once the idle timeout has passed, every slot is free again: four
    // busy connections are taken and a fifth, busy too, finds none idle.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut busy = Vec::new();
    for _ in 0..4 {
        busy.push(busy_connection(server.addr).await);
    }
    for stream in &mut busy {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
        assert!(
            read.is_err(),
            "a busy connection that got a slot stays open"
        );
    }
}

#[tokio::test]
async fn one_address_past_its_cap_is_refused_while_another_is_served() {
    let server = start(ConnLimits {
        max_per_ip: 2,
        ..limits()
    })
    .await;
    let _a = held_connection(Some("127.0.0.1"), server.addr).await;
    let _b = held_connection(Some("127.0.0.1"), server.addr).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut third = socket.connect(server.addr).await.unwrap();
    assert!(
        refused(&mut third).await,
        "a third connection from one address is served"
    );
    // Linux routes all of 127.0.0.0/8 to loopback: another client address.
    let _other = held_connection(Some("127.0.0.2"), server.addr).await;
}

fn assert_json_error(status: u16, body: &str, code: &str) {
    let json: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{status} body is not JSON ({e}): {body:?}"));
    assert_eq!(json["error"]["code"], code, "{body}");
    assert!(json["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn a_request_hyper_cannot_parse_gets_the_json_error_shape() {
    let server = start(limits()).await;
    let (status, body) = exchange(server.addr, b"NOT HTTP AT ALL\r\n\r\n").await;
    assert_eq!(status, 400);
    assert_json_error(status, &body, "request.malformed");
}

#[tokio::test]
async fn an_over_long_uri_gets_414_in_the_json_error_shape() {
    let server = start(limits()).await;
    let request = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70 * 1024));
    let (status, body) = exchange(server.addr, request.as_bytes()).await;
    assert_eq!(status, 414);
    assert_json_error(status, &body, "request.uri_too_long");
}

#[tokio::test]
async fn over_large_headers_get_431_in_the_json_error_shape() {
    let server = start(limits()).await;
    let request = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
        "a".repeat(conn::MAX_HEAD_BYTES)
    );
    let (status, body) = exchange(server.addr, request.as_bytes()).await;
    assert_eq!(status, 431);
    assert_json_error(status, &body, "request.headers_too_large");
}

#[tokio::test]
async fn too_many_headers_get_431_in_the_json_error_shape() {
    let server = start(limits()).await;
    let mut request = String::from("GET /healthz HTTP/1.1\r\nhost: x\r\n");
    for i in 0..200 {
        request.push_str(&format!("x-h{i}: v\r\n"));
    }
    request.push_str("\r\n");
    let (status, body) = exchange(server.addr, request.as_bytes()).await;
    assert_eq!(status, 431);
    assert_json_error(status, &body, "request.headers_too_large");
}
