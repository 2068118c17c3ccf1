//! The accept loop and per-connection limits of `hazel serve`: at most
//! `max_connections` connections at once and `max_connections_per_ip` from
//! one address (the excess is accepted and closed at once, so a flood costs
//! one descriptor for a moment, never a slot), a connection that sends
//! nothing is closed after `idle_timeout`, one that has started a request
//! head must finish it within `header_read_timeout`.
//!
//! axum's own `serve` exposes none of these, so connections are driven
//! here with hyper's HTTP/1.1 server directly. hyper answers a request it
//! cannot parse (400, 414, 431) itself with an empty body; [`Guarded`]
//! replaces those answers on the wire with the API's `{"error": {...}}`
//! shape, because hyper offers no hook for them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::service::config::ApiLimits;

/// Largest request head (request line and headers) hyper buffers; above it
/// the answer is 431. A request target above 64 KiB gets 414 first.
pub const MAX_HEAD_BYTES: usize = 128 * 1024;

/// The connection limits of the API server.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Most connections served at once (at least 1).
    pub max_connections: usize,
    /// Most connections served at once from one IP address (at least 1).
    pub max_per_ip: usize,
    /// Time to finish a request head once its first byte arrived.
    pub header_read_timeout: Duration,
    /// Time a connection may send nothing while none of its requests is
    /// being answered.
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits::from_limits(&ApiLimits::default())
    }
}

impl ConnLimits {
    /// The limits of `hazel.yaml`'s `api` section.
    pub fn from_limits(limits: &ApiLimits) -> ConnLimits {
        ConnLimits {
            max_connections: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown`
/// completes; then stops accepting, asks every connection to close after
/// its request in flight, and returns when all have closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max));
    let per_ip = Arc::new(PerIp {
        counts: Mutex::new(HashMap::new()),
        max: limits.max_per_ip.max(1),
    });
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or memory: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Refused connections are closed by dropping them here.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "connection refused: max_connections reached");
            continue;
        };
        let Some(ip_slot) = PerIp::take(&per_ip, peer.ip()) else {
            tracing::debug!(%peer, "connection refused: max_connections_per_ip reached");
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            // Small JSON answers: without TCP_NODELAY, Nagle holds the body
            // behind the headers' unacknowledged segment.
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        tokio::spawn(connection(
            tcp,
            peer,
            router.clone(),
            limits,
            stopped.clone(),
            (slot, ip_slot),
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    // Every slot back means every connection has closed.
    let _ = slots.acquire_many(max as u32).await;
    Ok(())
}

/// Connections per client address.
struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
}

/// One connection's place in [`PerIp`], given back on drop.
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(table: &Arc<PerIp>, ip: IpAddr) -> Option<IpSlot> {
        let mut counts = table.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= table.max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            table: Arc::clone(table),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Becomes `true` when the server stops taking requests: a request
/// extension for answers that stream until told to end (a graceful
/// shutdown waits for every answer in flight).
#[derive(Debug, Clone)]
pub struct Stopping(pub watch::Receiver<bool>);

impl Stopping {
    /// Resolves once the server is stopping.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Serves one connection; its slots are given back when it ends.
async fn connection(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    router: Router,
    limits: ConnLimits,
    mut stopped: watch::Receiver<bool>,
    _slots: (OwnedSemaphorePermit, IpSlot),
) {
    let exchanges = Arc::new(Exchanges::default());
    let stopped_for_requests = stopped.clone();
    let io = TokioIo::new(Guarded::new(tcp, Arc::clone(&exchanges), limits));
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        // The client's address, for per-address limits such as the
        // console's sign-in attempts.
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        // Long-lived answers (the console's event stream) end when the
        // server stops, so a graceful shutdown does not wait on them.
        req.extensions_mut()
            .insert(Stopping(stopped_for_requests.clone()));
        let open = Exchange::start(&exchanges);
        let mut router = router.clone();
        async move {
            let response = tower_service::Service::call(&mut router, req)
                .await
                .unwrap_or_else(|never| match never {});
            Ok::<_, Infallible>(response.map(|body| Tracked { body, _open: open }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES + 64 * 1024)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = async { let _ = stopped.wait_for(|stop| *stop).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection closed with an error");
    }
}

/// The requests of one connection being answered, shared by its service
/// (which starts and ends them) and its [`Guarded`] stream (whose timers
/// run only while none is open).
#[derive(Default)]
struct Exchanges {
    /// Requests whose answer has not been fully handed to hyper.
    open: AtomicUsize,
    /// Requests started so far.
    started: AtomicU64,
    /// hyper's read, parked while a request was open; woken when the last
    /// one closes so the idle timer starts.
    reader: Mutex<Option<std::task::Waker>>,
}

/// One request in [`Exchanges`], closed when its answer's body is dropped
/// (or the request is cancelled).
struct Exchange(Arc<Exchanges>);

impl Exchange {
    fn start(exchanges: &Arc<Exchanges>) -> Exchange {
        exchanges.open.fetch_add(1, Ordering::AcqRel);
        exchanges.started.fetch_add(1, Ordering::AcqRel);
        Exchange(Arc::clone(exchanges))
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            let reader = self
                .0
                .reader
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(waker) = reader {
                waker.wake();
            }
        }
    }
}

/// An answer's body that keeps its [`Exchange`] open until hyper drops it.
struct Tracked {
    body: Body,
    _open: Exchange,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Where a connection is between requests, for its timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request is being answered: no timer.
    Busy,
    /// Waiting for a request, no byte of it seen: `idle_timeout`.
    Idle,
    /// Part of a request head has arrived: `header_read_timeout`.
    Head,
}

/// The TCP stream under hyper: enforces the idle and header-read timeouts
/// on reads, and rewrites hyper's own error answers into the API's JSON
/// error shape on writes.
struct Guarded {
    inner: TcpStream,
    exchanges: Arc<Exchanges>,
    limits: ConnLimits,
    phase: Phase,
    seen_started: u64,
    timer: Pin<Box<Sleep>>,
    /// A replacement answer being written: its bytes and how many are out.
    rewrite: Option<(Vec<u8>, usize)>,
}

impl Guarded {
    fn new(inner: TcpStream, exchanges: Arc<Exchanges>, limits: ConnLimits) -> Guarded {
        Guarded {
            inner,
            exchanges,
            limits,
            phase: Phase::Idle,
            seen_started: 0,
            timer: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            rewrite: None,
        }
    }

    /// Follows the connection's requests: a request started or finished
    /// since the last read restarts the idle timer.
    fn track(&mut self) {
        let open = self.exchanges.open.load(Ordering::Acquire);
        let started = self.exchanges.started.load(Ordering::Acquire);
        if open > 0 {
            self.phase = Phase::Busy;
        } else if self.phase == Phase::Busy || started != self.seen_started {
            self.phase = Phase::Idle;
            self.timer
                .as_mut()
                .reset(Instant::now() + self.limits.idle_timeout);
        }
        self.seen_started = started;
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.track();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.phase == Phase::Idle {
                    this.phase = Phase::Head;
                    let deadline = Instant::now() + this.limits.header_read_timeout;
                    this.timer.as_mut().reset(deadline);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if this.phase == Phase::Busy {
                    *this
                        .exchanges
                        .reader
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
                    // Closed between the check and the registration.
                    if this.exchanges.open.load(Ordering::Acquire) == 0 {
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                }
                if this.timer.as_mut().poll(cx).is_ready() {
                    let which = match this.phase {
                        Phase::Head => "header_read_timeout",
                        _ => "idle_timeout",
                    };
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{which} elapsed"),
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite.is_none() {
            match json_for_hyper_answer(buf) {
                Some(answer) => this.rewrite = Some((answer, 0)),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        // hyper calls again with the same bytes until they are taken, so
        // they are taken only once the whole replacement is out.
        while let Some((answer, sent)) = this.rewrite.as_mut() {
            if *sent == answer.len() {
                return Poll::Ready(Ok(buf.len()));
            }
            match Pin::new(&mut this.inner).poll_write(cx, &answer[*sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    // Not vectored: hyper then hands each answer over as one buffer, so its
    // own error answers are seen whole by `json_for_hyper_answer`.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// The JSON answer replacing `written` when it is one of hyper's own
/// answers to a request it could not parse: status 400, 414 or 431 with an
/// empty body. The API's own answers with these statuses always have a
/// JSON body, so they never match.
fn json_for_hyper_answer(written: &[u8]) -> Option<Vec<u8>> {
    let (status, reason, code, message) = if written.starts_with(b"HTTP/1.1 400 ") {
        (
            400,
            "Bad Request",
            "request.malformed",
            "the request is not valid HTTP/1.1".to_string(),
        )
    } else if written.starts_with(b"HTTP/1.1 414 ") {
        (
            414,
            "URI Too Long",
            "request.uri_too_long",
            "the request target is longer than the server accepts".to_string(),
        )
    } else if written.starts_with(b"HTTP/1.1 431 ") {
        (
            431,
            "Request Header Fields Too Large",
            "request.headers_too_large",
            format!(
                "the request head is larger than {MAX_HEAD_BYTES} bytes or has more than 100 headers"
            ),
        )
    } else {
        return None;
    };
    let end = written.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&written[..end]).to_ascii_lowercase();
    // The whole answer is the head: no body follows it.
    if written.len() != end + 4 || !head.contains("\r\ncontent-length: 0") {
        return None;
    }
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_empty_error_answers_become_json() {
        let hyper =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(json_for_hyper_answer(hyper).unwrap()).unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "request.headers_too_large");
        assert!(out.starts_with("HTTP/1.1 431 "));
    }

    #[test]
    fn the_apis_own_error_answers_are_left_alone() {
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert!(json_for_hyper_answer(ours).is_none());
        let head_only = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 57\r\n\r\n";
        assert!(json_for_hyper_answer(head_only).is_none());
    }
}
