//! The accept loop and per-connection limits of `hazel serve`: at most
//! `max_connections` connections at once and `max_connections_per_ip` from
//! one address (the excess is accepted and closed at once, so a flood costs
//! one descriptor for a moment, never a slot), a connection that sends
//! nothing is closed after `idle_timeout`, one that has started a request
//! head must finish it within `header_read_timeout`.
//!
//! When every slot is taken, a new connection whose request arrives does
//! not wait for an idle one to time out: the connection idle the longest
//! (no request in flight, no byte of the next one seen) among a sample of
//! [`EVICT_SAMPLE`] is closed and the newcomer takes its slot. A newcomer
//! that sends nothing within [`FIRST_BYTES_WAIT`] is refused, so a flood of
//! silent sockets neither churns the idle connections out nor keeps a
//! health probe or an operator's request out for the whole `idle_timeout`;
//! a connection busy with a request is never closed for it. At most
//! [`EVICT_WAITERS`] newcomers wait for their first bytes, and as many for
//! a freed slot (up to [`EVICT_WAIT`]), at once; beyond that they are
//! refused as before. A newcomer whose request is already there when it is
//! accepted (the usual case behind a backlog) skips the first wait.
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

/// Connections looked at to find the one idle the longest when the cap is
/// full (an approximate LRU: the map's order is arbitrary).
pub const EVICT_SAMPLE: usize = 64;
/// Newcomers waiting at once for a slot an eviction frees.
pub const EVICT_WAITERS: usize = 64;
/// How long a newcomer waits for that slot.
pub const EVICT_WAIT: Duration = Duration::from_secs(1);
/// How long a newcomer that has sent nothing yet is given to send its
/// request's first bytes, when the cap is full (at most [`EVICT_WAITERS`]
/// such newcomers at once; the rest are refused).
pub const FIRST_BYTES_WAIT: Duration = Duration::from_millis(250);

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
    /// Time an answer's write may wait for the client to take bytes (a
    /// client that asked and stopped reading): past it the connection is
    /// closed, so it cannot hold its slot for ever.
    pub write_timeout: Duration,
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
            write_timeout: limits.write_timeout,
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
    let live = Arc::new(Live::default());
    let waiters = Arc::new(Semaphore::new(EVICT_WAITERS));
    let readers = Arc::new(Semaphore::new(EVICT_WAITERS));
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
        let Some(ip_slot) = PerIp::take(&per_ip, peer.ip()) else {
            tracing::debug!(%peer, "connection refused: max_connections_per_ip reached");
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            // Small JSON answers: without TCP_NODELAY, Nagle holds the body
            // behind the headers' unacknowledged segment.
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        let start = {
            let (router, stopped, live) = (router.clone(), stopped.clone(), Arc::clone(&live));
            move |tcp, slot| connection(tcp, peer, router, limits, stopped, live, (slot, ip_slot))
        };
        if let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
            tokio::spawn(start(tcp, slot));
            continue;
        }
        // Full: only a newcomer with a request may take an idle slot.
        let Some((tcp, arrived)) = peek_now(tcp) else {
            continue;
        };
        let reading = if arrived {
            None
        } else {
            let Ok(permit) = Arc::clone(&readers).try_acquire_owned() else {
                tracing::debug!(%peer, "connection refused: max_connections reached");
                continue;
            };
            Some(permit)
        };
        let (live, slots, waiters) = (Arc::clone(&live), Arc::clone(&slots), Arc::clone(&waiters));
        tokio::spawn(async move {
            if let Some(_reading) = reading {
                if !first_bytes(&tcp).await {
                    tracing::debug!(%peer, "connection refused: max_connections reached, nothing sent");
                    return;
                }
            }
            let Ok(_waiter) = waiters.try_acquire_owned() else {
                tracing::debug!(%peer, "connection refused: max_connections reached");
                return;
            };
            if !live.evict_oldest_idle() {
                tracing::debug!(%peer, "connection refused: max_connections reached, none idle");
                return;
            }
            match tokio::time::timeout(EVICT_WAIT, slots.acquire_owned()).await {
                Ok(Ok(slot)) => start(tcp, slot).await,
                _ => tracing::debug!(%peer, "connection refused: no slot freed in time"),
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every slot back means every connection has closed.
    let _ = slots.acquire_many(max as u32).await;
    Ok(())
}

/// `tcp` and whether the first bytes of a request have already arrived on
/// it; `None` (the connection dropped) when it is closed or unreadable.
/// Peeks with a plain non-blocking `recv`: tokio's own peek answers only
/// once its reactor has seen the socket readable, which a connection just
/// accepted has not been yet.
fn peek_now(tcp: TcpStream) -> Option<(TcpStream, bool)> {
    let std = tcp.into_std().ok()?;
    let mut byte = [0u8; 1];
    let arrived = match std.peek(&mut byte) {
        Ok(0) => return None,
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => return None,
    };
    TcpStream::from_std(std).ok().map(|tcp| (tcp, arrived))
}

/// Whether a request's first bytes arrive on `tcp` within
/// [`FIRST_BYTES_WAIT`] (a client sends its request right after connecting;
/// a silent socket is not worth an idle connection's slot).
async fn first_bytes(tcp: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(FIRST_BYTES_WAIT, tcp.peek(&mut byte)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// The open connections, for eviction when the cap is full.
#[derive(Default)]
struct Live {
    conns: Mutex<HashMap<u64, Arc<Exchanges>>>,
    next: AtomicU64,
}

impl Live {
    fn add(self: &Arc<Self>, exchanges: &Arc<Exchanges>) -> LiveEntry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::clone(exchanges));
        LiveEntry {
            live: Arc::clone(self),
            id,
        }
    }

    /// Asks the connection idle the longest, among a sample, to close;
    /// `false` when none in the sample is idle.
    fn evict_oldest_idle(&self) -> bool {
        // Picked and marked under the lock, so two newcomers never pick the
        // same connection; one that turned busy since it was sampled is
        // passed over for the next.
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let mut idle: Vec<(Instant, &Arc<Exchanges>)> = conns
            .values()
            .take(EVICT_SAMPLE)
            .filter_map(|x| x.idle_since().map(|since| (since, x)))
            .collect();
        idle.sort_by_key(|(since, _)| *since);
        idle.into_iter().any(|(_, x)| x.try_evict())
    }
}

/// A connection's place in [`Live`], removed on drop.
struct LiveEntry {
    live: Arc<Live>,
    id: u64,
}

impl Drop for LiveEntry {
    fn drop(&mut self) {
        self.live
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
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
    live: Arc<Live>,
    _slots: (OwnedSemaphorePermit, IpSlot),
) {
    let exchanges = Arc::new(Exchanges::default());
    let _entry = live.add(&exchanges);
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
    reader: WakerSlot,
    /// Since when the connection waits for a request with no byte of it
    /// seen (`None` while a request is read or answered).
    idle: Mutex<Option<Instant>>,
    /// Set to close the connection at its next idle read (eviction).
    evicted: std::sync::atomic::AtomicBool,
    /// hyper's read while idle, woken by an eviction.
    idle_reader: WakerSlot,
}

/// A parked read's waker, for another task to wake.
#[derive(Default)]
struct WakerSlot(Mutex<Option<std::task::Waker>>);

impl WakerSlot {
    fn park(&self, waker: &std::task::Waker) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
    }

    fn wake(&self) {
        let waker = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Exchanges {
    fn idle_since(&self) -> Option<Instant> {
        if self.evicted.load(Ordering::Acquire) {
            return None;
        }
        *self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_idle(&self, since: Option<Instant>) {
        *self.idle.lock().unwrap_or_else(|e| e.into_inner()) = since;
    }

    /// Marks the connection to close at its next idle read, if it is still
    /// idle (checked under the lock its phase changes take); wakes that read.
    fn try_evict(&self) -> bool {
        {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.is_none() || self.evicted.swap(true, Ordering::AcqRel) {
                return false;
            }
        }
        self.idle_reader.wake();
        true
    }
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
            self.0.reader.wake();
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
    /// Armed while a write waits for the client to take bytes.
    write_timer: Pin<Box<Sleep>>,
    /// Whether `write_timer` runs for the write waiting now.
    write_waiting: bool,
    /// A replacement answer being written: its bytes and how many are out.
    rewrite: Option<(Vec<u8>, usize)>,
}

impl Guarded {
    fn new(inner: TcpStream, exchanges: Arc<Exchanges>, limits: ConnLimits) -> Guarded {
        exchanges.set_idle(Some(Instant::now()));
        Guarded {
            inner,
            exchanges,
            limits,
            phase: Phase::Idle,
            seen_started: 0,
            timer: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            write_timer: Box::pin(tokio::time::sleep(limits.write_timeout)),
            write_waiting: false,
            rewrite: None,
        }
    }

    /// Writes to the socket; a write that has waited `write_timeout` for
    /// the client to take a byte fails with `TimedOut` (hyper then closes
    /// the connection). Any progress restarts the wait.
    fn write_inner(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => {
                if !self.write_waiting {
                    self.write_waiting = true;
                    let deadline = Instant::now() + self.limits.write_timeout;
                    self.write_timer.as_mut().reset(deadline);
                }
                if self.write_timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "write_timeout elapsed: the client stopped reading",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.write_waiting = false;
                ready
            }
        }
    }

    /// Follows the connection's requests: a request started or finished
    /// since the last read restarts the idle timer.
    fn track(&mut self) {
        let open = self.exchanges.open.load(Ordering::Acquire);
        let started = self.exchanges.started.load(Ordering::Acquire);
        if open > 0 {
            if self.phase != Phase::Busy {
                self.exchanges.set_idle(None);
            }
            self.phase = Phase::Busy;
        } else if self.phase == Phase::Busy || started != self.seen_started {
            self.phase = Phase::Idle;
            let now = Instant::now();
            self.exchanges.set_idle(Some(now));
            self.timer.as_mut().reset(now + self.limits.idle_timeout);
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
        if this.phase == Phase::Idle && this.exchanges.evicted.load(Ordering::Acquire) {
            // Evicted for a newcomer: end of stream, hyper closes.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.phase == Phase::Idle {
                    this.exchanges.set_idle(None);
                    this.phase = Phase::Head;
                    let deadline = Instant::now() + this.limits.header_read_timeout;
                    this.timer.as_mut().reset(deadline);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if this.phase == Phase::Busy {
                    this.exchanges.reader.park(cx.waker());
                    // Closed between the check and the registration.
                    if this.exchanges.open.load(Ordering::Acquire) == 0 {
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                }
                if this.phase == Phase::Idle {
                    this.exchanges.idle_reader.park(cx.waker());
                    // Evicted between the check and the registration.
                    if this.exchanges.evicted.load(Ordering::Acquire) {
                        cx.waker().wake_by_ref();
                    }
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
        let Some((answer, sent)) = this
            .rewrite
            .take()
            .or_else(|| json_for_hyper_answer(buf).map(|answer| (answer, 0)))
        else {
            return this.write_inner(cx, buf);
        };
        // hyper calls again with the same bytes until they are taken, so
        // they are taken only once the whole replacement is out.
        let mut sent = sent;
        while sent < answer.len() {
            match this.write_inner(cx, &answer[sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    this.rewrite = Some((answer, sent));
                    return Poll::Pending;
                }
            }
        }
        this.rewrite = Some((answer, sent));
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
