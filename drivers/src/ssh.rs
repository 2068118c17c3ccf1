//! SSH sessions shared by the `linux.ssh` and `aruba.aoss` drivers: libssh2
//! (the `ssh2` crate) with a connect timeout, key or password login and host
//! key verification, run off the async runtime's worker threads.
//!
//! Every blocking libssh2 call happens inside [`SshClient::run`], which moves
//! the work onto tokio's blocking pool and bounds it by one overall deadline.
//! The blocking side honours that deadline itself: libssh2's session timeout
//! is set to what is left before every blocking call, and the deadline and
//! the caller's interest are checked between steps, so the thread stops
//! promptly when the budget runs out or the caller's future is dropped,
//! instead of going on sending commands nobody waits for.
//!
//! Host keys are checked before any credential is sent, by (in this order) a
//! pinned SHA-256 fingerprint, a known_hosts file, or trust on first use when
//! the host config asks for it. A host key that does not match is a
//! [`ErrorKind::TlsError`]: it is SSH's counterpart of a certificate that
//! fails verification (the peer is not who the config says), it is never
//! retryable, and it counts against the host's breaker. A host key that no
//! check can vouch for (not in known_hosts, trust on first use off) is the
//! same kind. A config that names no check at all is refused when the client
//! is built ([`ErrorKind::ConfigError`]).

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use ssh2::{CheckResult, HostKeyType, KnownHostFileKind, Session};
use tokio::sync::watch;

use crate::driver::{DriverError, ErrorKind};
use crate::manifest::SshDefaults;
use crate::ratelimit::Retry;
use crate::secret::Secret;

/// libssh2's code for "timed out" (`LIBSSH2_ERROR_TIMEOUT`).
const LIBSSH2_ERROR_TIMEOUT: i32 = -9;
/// libssh2's code for "could not read or parse the key file" (`LIBSSH2_ERROR_FILE`).
const LIBSSH2_ERROR_FILE: i32 = -16;
/// How many bytes of a command's stdout and stderr are kept (the tail).
const OUTPUT_KEEP: usize = 64 * 1024;
/// How long the async side waits past the budget for the blocking side to
/// report its own (more precise) timeout. libssh2 measures its timeout in
/// whole seconds of elapsed time, so a call may overshoot by up to one.
const GRACE: Duration = Duration::from_secs(2);
/// The longest a read waiting for output blocks in libssh2 before the
/// blocking side looks again whether its caller still waits: how promptly a
/// cancelled call stops while a command runs or a CLI is silent.
const SLICE: Duration = Duration::from_millis(200);

/// Where and how to log in; the compiled form of a driver's connection config.
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// Host name or address.
    pub host: String,
    pub port: u16,
    pub username: String,
    /// The private key to try first, if any.
    pub private_key: Option<KeySource>,
    /// Passphrase of an encrypted private key.
    pub private_key_passphrase: Option<Secret>,
    /// The password to try when there is no key or the key is refused.
    pub password: Option<Secret>,
    /// How the host key is verified.
    pub host_key: HostKeyCheck,
    /// Bound on the TCP connect, the handshake and the login together.
    pub connect_timeout: Duration,
}

/// A private key: a file, or the key text itself (held as a secret).
#[derive(Clone)]
pub enum KeySource {
    /// Path of an OpenSSH or PEM private key file readable by the agent.
    Path(PathBuf),
    /// The key text (`-----BEGIN ...`).
    Inline(Secret),
}

/// How the host key is verified; at least one must be set.
#[derive(Debug, Clone, Default)]
pub struct HostKeyCheck {
    /// `SHA256:<base64>` as `ssh-keygen -lf` prints it; wins over the rest.
    pub fingerprint: Option<String>,
    /// An OpenSSH known_hosts file.
    pub known_hosts: Option<PathBuf>,
    /// Accept an unknown host key once and remember it (in `known_hosts`
    /// when one is set, else for the life of the client).
    pub trust_on_first_use: bool,
}

/// What the host key check found, for evidence and connection reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyFacts {
    /// `SHA256:<base64>`.
    pub fingerprint: String,
    /// `ssh-ed25519`, `ssh-rsa`, ...
    pub key_type: String,
    /// `fingerprint`, `known_hosts` or `trust_on_first_use`.
    pub verified_by: &'static str,
    /// True when this connection trusted the key on first use (and recorded it).
    pub trusted_on_first_use: bool,
}

/// A client for one host: its config and, with trust on first use and no
/// known_hosts file, the fingerprint learned on the first connection.
#[derive(Debug, Clone)]
pub struct SshClient {
    config: Arc<SshConfig>,
    learned_pin: Arc<Mutex<Option<String>>>,
}

/// Whether a call may retry a failed connect.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempts {
    /// One connect attempt. Calls that change state use this: they are never retried.
    Once,
    /// A connect failure that may be transient (refused, reset, timed out)
    /// is retried with these `defaults.ssh` retries and backoff, and only
    /// when the retry can finish inside the call's budget. For read-only
    /// calls (discovery, dry-run, connection test).
    RetryConnect(SshDefaults),
}

/// A logged-in session, usable only inside [`SshClient::run`].
pub struct SshSession {
    session: Session,
    bounds: Bounds,
    /// The host key check's result.
    pub host_key: HostKeyFacts,
    /// The server's SSH identification string (`SSH-2.0-OpenSSH_9.2p1 ...`).
    pub banner: Option<String>,
}

/// An interactive shell channel (see [`SshSession::shell`]) whose every read
/// and write is bounded by an idle limit and the call's deadline, and fails
/// once the caller stopped waiting: a CLI driven through it sends nothing
/// after its call timed out or was cancelled.
pub struct Shell {
    channel: ssh2::Channel,
    session: Session,
    bounds: Bounds,
    io_limit: Duration,
}

/// What bounds the blocking side of one call: its deadline, and whether the
/// async caller is still waiting (the sender half lives in the caller's
/// future, so dropping that future closes the channel).
#[derive(Clone)]
struct Bounds {
    deadline: Instant,
    budget: Duration,
    caller: watch::Receiver<()>,
    runtime: tokio::runtime::Handle,
}

/// The result of one remote command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// The exit status; `None` when the command was killed by a signal or the
    /// connection closed before the server reported one (a host powering off).
    pub exit_status: Option<i32>,
    /// The signal that ended the command, if any (`TERM`).
    pub signal: Option<String>,
    /// The tail of stdout (at most 64 KiB), lossily decoded.
    pub stdout: String,
    /// The tail of stderr (at most 64 KiB), lossily decoded.
    pub stderr: String,
    /// True when the connection dropped before the command's end was seen.
    pub connection_lost: bool,
}

/// Why an SSH operation failed; [`SshError::kind`] maps it onto SPEC §7.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    /// The TCP connection failed (refused, unreachable, reset).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// A step did not finish before the deadline.
    #[error("{what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
    /// The caller stopped waiting (its future was dropped or its own
    /// timeout fired), so the blocking side stopped before `what`.
    #[error("call abandoned by its caller before {what}")]
    Abandoned { what: String },
    /// The SSH handshake (banner, key exchange) failed.
    #[error("ssh handshake with {addr} failed: {source}")]
    Handshake {
        addr: String,
        #[source]
        source: ssh2::Error,
    },
    /// The server's host key is not the expected one.
    #[error("host key of {addr} does not match: expected {expected}, server offered {actual}")]
    HostKeyMismatch {
        addr: String,
        expected: String,
        actual: String,
    },
    /// The host key is unknown and trust on first use is off.
    #[error(
        "host key {fingerprint} of {addr} is not in {known_hosts} and trust_on_first_use is off"
    )]
    HostKeyUnknown {
        addr: String,
        fingerprint: String,
        known_hosts: String,
    },
    /// The server refused every configured credential.
    #[error("{user}@{addr}: authentication failed (tried {tried}; server allows {allowed})")]
    Auth {
        user: String,
        addr: String,
        tried: String,
        allowed: String,
    },
    /// The config cannot work (no credential, unreadable key, bad pin).
    #[error("{0}")]
    Config(String),
    /// A protocol step after login failed.
    #[error("{what}: {source}")]
    Protocol {
        what: String,
        #[source]
        source: ssh2::Error,
    },
    /// Reading or writing a channel failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The blocking worker panicked or was cancelled.
    #[error("ssh worker failed: {0}")]
    Worker(String),
}

impl SshError {
    /// The §7 error kind: refused or unreachable -> `network_error`, login
    /// refused -> `auth_error`, host key not verified -> `tls_error`,
    /// deadline -> `timeout`, unusable config -> `config_error`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SshError::Resolve { .. } | SshError::Connect { .. } | SshError::Handshake { .. } => {
                ErrorKind::NetworkError
            }
            SshError::Timeout { .. } | SshError::Abandoned { .. } => ErrorKind::Timeout,
            SshError::HostKeyMismatch { .. } | SshError::HostKeyUnknown { .. } => {
                ErrorKind::TlsError
            }
            SshError::Auth { .. } => ErrorKind::AuthError,
            SshError::Config(_) => ErrorKind::ConfigError,
            SshError::Protocol { .. } | SshError::Io { .. } => ErrorKind::NetworkError,
            SshError::Worker(_) => ErrorKind::Unknown,
        }
    }

    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }
}

impl From<SshError> for DriverError {
    fn from(err: SshError) -> Self {
        DriverError::new(err.kind(), err.to_string()).with_source(err)
    }
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Path(path) => f.debug_tuple("Path").field(path).finish(),
            KeySource::Inline(secret) => f.debug_tuple("Inline").field(secret).finish(),
        }
    }
}

impl KeySource {
    /// Reads a config value that holds either a key file's path or the key
    /// text itself (anything starting with `-----BEGIN`).
    pub fn from_config(value: &Secret) -> KeySource {
        let text = value.expose().trim_start();
        if text.starts_with("-----BEGIN") {
            KeySource::Inline(value.clone())
        } else {
            KeySource::Path(PathBuf::from(value.expose().trim()))
        }
    }
}

impl HostKeyFacts {
    /// The facts as JSON for evidence, preconditions and connection reports.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "fingerprint": self.fingerprint,
            "key_type": self.key_type,
            "verified_by": self.verified_by,
            "trusted_on_first_use": self.trusted_on_first_use,
        })
    }
}

impl SshClient {
    /// Checks that the config can work: a credential, some host key check,
    /// a well-formed fingerprint pin.
    pub fn new(config: SshConfig) -> Result<SshClient, SshError> {
        if config.host.trim().is_empty() {
            return Err(SshError::Config("host is empty".into()));
        }
        if config.username.trim().is_empty() {
            return Err(SshError::Config("username is empty".into()));
        }
        if config.private_key.is_none() && config.password.as_ref().is_none_or(Secret::is_empty) {
            return Err(SshError::Config(
                "no credential: set private_key or password".into(),
            ));
        }
        let check = &config.host_key;
        if check.fingerprint.is_none() && check.known_hosts.is_none() && !check.trust_on_first_use {
            return Err(SshError::Config(
                "no host key verification: set host_key_fingerprint, known_hosts or trust_on_first_use".into(),
            ));
        }
        if let Some(pin) = &check.fingerprint {
            normalize_fingerprint(pin)?;
        }
        Ok(SshClient {
            config: Arc::new(config),
            learned_pin: Arc::new(Mutex::new(None)),
        })
    }

    pub fn config(&self) -> &SshConfig {
        &self.config
    }

    /// Connects, logs in and runs `work` on tokio's blocking pool, all within
    /// `budget`. The session is closed when `work` returns. With
    /// [`Attempts::RetryConnect`], a transient connect failure is retried
    /// while the retry still fits in the budget.
    ///
    /// # Guarantees
    ///
    /// - Every blocking libssh2 call is bounded by what is left of `budget`
    ///   (the session timeout is set before each one), so the blocking
    ///   thread ends shortly after the deadline (libssh2 counts elapsed time
    ///   in whole seconds, so within about a second of it).
    /// - When this future is dropped or times out, the blocking side notices
    ///   at its next step ([`SshSession::check`], each [`Shell`] read or
    ///   write, each [`SshSession::exec`]) and stops: no further command or
    ///   CLI line is sent.
    /// - What remains: a command or line already sent may still complete on
    ///   the device after the caller stopped waiting (the device does not
    ///   know the caller left). A caller that timed out must treat the
    ///   change as unknown and reconcile by reading state, never by blind
    ///   re-execution.
    pub async fn run<T, E, F>(&self, budget: Duration, attempts: Attempts, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<SshError> + Send + 'static,
        F: FnOnce(&mut SshSession) -> Result<T, E> + Send + 'static,
    {
        let client = self.clone();
        // Kept alive by this future only: dropping the future (or returning
        // on the timeout below) tells the blocking side to stop.
        let (_caller_waits, caller) = watch::channel(());
        let bounds = Bounds {
            deadline: Instant::now() + budget,
            budget,
            caller,
            runtime: tokio::runtime::Handle::current(),
        };
        let span = tracing::Span::current();
        let task = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let mut session = client.connect_with_retries(bounds, &attempts)?;
            let result = match session.check("the session's work") {
                Ok(()) => work(&mut session),
                Err(err) => Err(err.into()),
            };
            session.close();
            result
        });
        match tokio::time::timeout(budget + GRACE, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(SshError::Worker(join.to_string()).into()),
            Err(_) => Err(SshError::Timeout {
                what: format!("ssh call to {}:{}", self.config.host, self.config.port),
                after: budget,
            }
            .into()),
        }
    }

    /// Blocking: [`SshClient::connect`], retried as `attempts` allows.
    fn connect_with_retries(
        &self,
        bounds: Bounds,
        attempts: &Attempts,
    ) -> Result<SshSession, SshError> {
        let mut retry = match attempts {
            Attempts::Once => None,
            Attempts::RetryConnect(defaults) => Some(Retry::from_ssh(
                defaults,
                Some(tokio::time::Instant::from_std(bounds.deadline)),
            )),
        };
        loop {
            let started = Instant::now();
            let err = match self.connect(bounds.clone()) {
                Ok(session) => return Ok(session),
                Err(err) => err,
            };
            // A retry is expected to take about as long as the attempt that
            // failed (a refused port fails at once, a silent one at its timeout).
            let as_driver_error = DriverError::new(err.kind(), String::new());
            let Some(delay) = retry
                .as_mut()
                .and_then(|r| r.next(&as_driver_error, started.elapsed()))
            else {
                return Err(err);
            };
            tracing::debug!(
                host = %self.config.host,
                port = self.config.port,
                error = %err,
                wait_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "retrying ssh connect"
            );
            bounds.wait_for("connect retry backoff", tokio::time::sleep(delay))?;
        }
    }

    /// Blocking: TCP connect, handshake, host key check, login.
    fn connect(&self, bounds: Bounds) -> Result<SshSession, SshError> {
        let cfg = &*self.config;
        let addr_text = format!("{}:{}", cfg.host, cfg.port);
        bounds.check("tcp connect")?;
        let connect_deadline = bounds.deadline.min(Instant::now() + cfg.connect_timeout);
        let addrs: Vec<SocketAddr> = (cfg.host.as_str(), cfg.port)
            .to_socket_addrs()
            .map_err(|source| SshError::Resolve {
                host: cfg.host.clone(),
                source,
            })?
            .collect();
        let mut last_err = None;
        let mut stream = None;
        for addr in addrs {
            let left = remaining(connect_deadline, "tcp connect", cfg.connect_timeout)?;
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let stream = match (stream, last_err) {
            (Some(s), _) => s,
            (None, Some(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(SshError::Timeout {
                    what: format!("tcp connect to {addr_text}"),
                    after: cfg.connect_timeout,
                })
            }
            (None, Some(source)) => {
                return Err(SshError::Connect {
                    addr: addr_text,
                    source,
                })
            }
            (None, None) => {
                return Err(SshError::Resolve {
                    host: cfg.host.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
                })
            }
        };
        let _ = stream.set_nodelay(true);

        let mut session = Session::new().map_err(|source| SshError::Protocol {
            what: "libssh2 session".into(),
            source,
        })?;
        session.set_tcp_stream(stream);
        bounds.check("ssh handshake")?;
        set_timeout(
            &session,
            connect_deadline,
            "ssh handshake",
            cfg.connect_timeout,
        )?;
        session.handshake().map_err(|source| {
            if is_timeout(&source) {
                SshError::Timeout {
                    what: format!("ssh handshake with {addr_text}"),
                    after: cfg.connect_timeout,
                }
            } else {
                SshError::Handshake {
                    addr: addr_text.clone(),
                    source,
                }
            }
        })?;
        let banner = session.banner().map(str::to_owned);

        let host_key = self.check_host_key(&session, &addr_text)?;

        self.login(&session, &addr_text, &bounds, connect_deadline)?;
        Ok(SshSession {
            session,
            bounds,
            host_key,
            banner,
        })
    }

    fn check_host_key(&self, session: &Session, addr: &str) -> Result<HostKeyFacts, SshError> {
        let cfg = &*self.config;
        let (key, key_type) = session
            .host_key()
            .ok_or_else(|| SshError::Config(format!("{addr} offered no host key")))?;
        let fingerprint = fingerprint_of(key);
        let key_type = key_type_name(key_type).to_owned();
        let facts = |verified_by, trusted_on_first_use| HostKeyFacts {
            fingerprint: fingerprint.clone(),
            key_type: key_type.clone(),
            verified_by,
            trusted_on_first_use,
        };
        if let Some(pin) = &cfg.host_key.fingerprint {
            let expected = normalize_fingerprint(pin)?;
            if expected != fingerprint {
                return Err(SshError::HostKeyMismatch {
                    addr: addr.to_owned(),
                    expected,
                    actual: fingerprint,
                });
            }
            return Ok(facts("fingerprint", false));
        }
        if let Some(path) = &cfg.host_key.known_hosts {
            let mut known = session.known_hosts().map_err(|source| SshError::Protocol {
                what: "known_hosts".into(),
                source,
            })?;
            if path.exists() {
                known
                    .read_file(path, KnownHostFileKind::OpenSSH)
                    .map_err(|e| {
                        SshError::Config(format!("cannot read known_hosts {}: {e}", path.display()))
                    })?;
            }
            return match known.check_port(&cfg.host, cfg.port, key) {
                CheckResult::Match => Ok(facts("known_hosts", false)),
                CheckResult::Mismatch => Err(SshError::HostKeyMismatch {
                    addr: addr.to_owned(),
                    expected: format!("the key recorded in {}", path.display()),
                    actual: fingerprint,
                }),
                CheckResult::NotFound if cfg.host_key.trust_on_first_use => {
                    append_known_host(path, &cfg.host, cfg.port, &key_type, key)?;
                    Ok(facts("trust_on_first_use", true))
                }
                CheckResult::NotFound => Err(SshError::HostKeyUnknown {
                    addr: addr.to_owned(),
                    fingerprint,
                    known_hosts: path.display().to_string(),
                }),
                CheckResult::Failure => Err(SshError::Config(format!(
                    "cannot check host key of {addr} against {}",
                    path.display()
                ))),
            };
        }
        // Trust on first use without a file: pin for the life of this client.
        let mut learned = self.learned_pin.lock().unwrap_or_else(|e| e.into_inner());
        match learned.as_ref() {
            Some(pin) if *pin == fingerprint => Ok(facts("trust_on_first_use", false)),
            Some(pin) => Err(SshError::HostKeyMismatch {
                addr: addr.to_owned(),
                expected: pin.clone(),
                actual: fingerprint,
            }),
            None => {
                *learned = Some(fingerprint.clone());
                Ok(facts("trust_on_first_use", true))
            }
        }
    }

    /// Tries the key, then the password; every libssh2 call is bounded by
    /// what is left before `until` (the connect deadline).
    fn login(
        &self,
        session: &Session,
        addr: &str,
        bounds: &Bounds,
        until: Instant,
    ) -> Result<(), SshError> {
        let cfg = &*self.config;
        let arm = || {
            bounds.check("ssh login")?;
            set_timeout(session, until, "ssh login", cfg.connect_timeout)
        };
        arm()?;
        let allowed = session
            .auth_methods(&cfg.username)
            .map(str::to_owned)
            .unwrap_or_else(|_| "unknown".into());
        let mut tried = Vec::new();
        if let Some(key) = &cfg.private_key {
            tried.push("publickey");
            let passphrase = cfg.private_key_passphrase.as_ref().map(Secret::expose);
            arm()?;
            let result = match key {
                KeySource::Path(path) => {
                    if !path.exists() {
                        return Err(SshError::Config(format!(
                            "private key file {} not found",
                            path.display()
                        )));
                    }
                    session.userauth_pubkey_file(&cfg.username, None, path, passphrase)
                }
                KeySource::Inline(text) => {
                    session.userauth_pubkey_memory(&cfg.username, None, text.expose(), passphrase)
                }
            };
            if let Err(e) = result {
                if is_timeout(&e) {
                    return Err(SshError::Timeout {
                        what: format!("ssh login to {addr}"),
                        after: cfg.connect_timeout,
                    });
                }
                if matches!(e.code(), ssh2::ErrorCode::Session(LIBSSH2_ERROR_FILE)) {
                    return Err(SshError::Config(format!(
                        "cannot load the private key: {}",
                        e.message()
                    )));
                }
            }
        }
        if !session.authenticated() {
            if let Some(password) = cfg.password.as_ref().filter(|p| !p.is_empty()) {
                tried.push("password");
                arm()?;
                if let Err(e) = session.userauth_password(&cfg.username, password.expose()) {
                    if is_timeout(&e) {
                        return Err(SshError::Timeout {
                            what: format!("ssh login to {addr}"),
                            after: cfg.connect_timeout,
                        });
                    }
                }
            }
        }
        if session.authenticated() {
            Ok(())
        } else {
            Err(SshError::Auth {
                user: cfg.username.clone(),
                addr: addr.to_owned(),
                tried: tried.join(", "),
                allowed,
            })
        }
    }
}

impl SshSession {
    /// Time left before the call's deadline; a timeout error when none is.
    pub fn remaining(&self, what: &str) -> Result<Duration, SshError> {
        self.bounds.left(what)
    }

    /// Fails when the deadline has passed or the caller stopped waiting.
    /// Drivers call it between steps, so a call whose caller is gone sends
    /// nothing more.
    pub fn check(&self, what: &str) -> Result<(), SshError> {
        self.bounds.check(what)
    }

    /// Runs `fut` (a rate limiter's wait, a sleep) on the async runtime from
    /// this blocking thread, bounded by the deadline and by the caller's
    /// interest. The runtime's timers must be driven meanwhile: a worker
    /// thread does, or on a current-thread runtime the caller awaiting
    /// [`SshClient::run`].
    pub fn wait_for<F: Future>(&self, what: &str, fut: F) -> Result<F::Output, SshError> {
        self.bounds.wait_for(what, fut)
    }

    /// Waits `duration` (a PoE cycle's off time); ends early with an error
    /// when the deadline comes first or the caller stops waiting.
    pub fn pause(&self, duration: Duration, what: &str) -> Result<(), SshError> {
        self.bounds.wait_for(what, tokio::time::sleep(duration))
    }

    /// Runs one command (no PTY) and collects its exit status and output.
    /// `timeout` bounds this command; the call's deadline still applies, and
    /// libssh2's timeout is set to what is left before every blocking step.
    pub fn exec(&mut self, command: &str, timeout: Duration) -> Result<ExecResult, SshError> {
        let what = format!("command `{}`", first_line(command));
        self.bounds.check(&what)?;
        let until = self.bounds.deadline.min(Instant::now() + timeout);
        let limit = until.saturating_duration_since(Instant::now());
        let session = &self.session;
        let bounds = &self.bounds;
        let arm = || {
            bounds.check(&what)?;
            set_timeout(session, until, &what, limit)
        };
        // Reads wait in slices, so a caller that leaves is noticed while the
        // command still runs.
        let arm_slice = || {
            bounds.check(&what)?;
            set_timeout(session, until.min(Instant::now() + SLICE), &what, limit)
        };
        let timeout_err = || SshError::Timeout {
            what: what.clone(),
            after: limit,
        };
        arm()?;
        let mut channel = session
            .channel_session()
            .map_err(|e| protocol(&what, e, limit))?;
        arm()?;
        channel
            .exec(command)
            .map_err(|e| protocol(&what, e, limit))?;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut connection_lost = false;
        match read_tail(&mut channel, &mut stdout, until, &arm_slice)? {
            ReadEnd::Eof => {}
            ReadEnd::TimedOut => return Err(timeout_err()),
            ReadEnd::Lost => connection_lost = true,
        }
        if !connection_lost {
            match read_tail(&mut channel.stderr(), &mut stderr, until, &arm_slice)? {
                ReadEnd::Eof => {}
                ReadEnd::TimedOut => return Err(timeout_err()),
                ReadEnd::Lost => connection_lost = true,
            }
        }
        if !connection_lost {
            arm()?;
            match channel.wait_close() {
                Ok(()) => {}
                Err(e) if is_timeout(&e) => return Err(timeout_err()),
                Err(_) => connection_lost = true,
            }
        }
        let signal = if connection_lost {
            None
        } else {
            channel.exit_signal().ok().and_then(|s| s.exit_signal)
        };
        let exit_status = if connection_lost || signal.is_some() {
            None
        } else {
            channel.exit_status().ok()
        };
        Ok(ExecResult {
            exit_status,
            signal,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            connection_lost,
        })
    }

    /// Opens an interactive shell on a PTY (`vt100`, `cols` x `rows`), as a
    /// network device's CLI expects. Each later read or write on it waits at
    /// most `io_limit` (and never past the call's deadline).
    pub fn shell(&mut self, cols: u32, rows: u32, io_limit: Duration) -> Result<Shell, SshError> {
        let what = "interactive shell";
        let until = self.bounds.deadline.min(Instant::now() + io_limit);
        let session = &self.session;
        let bounds = &self.bounds;
        let arm = || {
            bounds.check(what)?;
            set_timeout(session, until, what, io_limit)
        };
        arm()?;
        let mut channel = session
            .channel_session()
            .map_err(|e| protocol(what, e, io_limit))?;
        arm()?;
        channel
            .request_pty("vt100", None, Some((cols, rows, 0, 0)))
            .map_err(|e| protocol(what, e, io_limit))?;
        arm()?;
        channel.shell().map_err(|e| protocol(what, e, io_limit))?;
        Ok(Shell {
            channel,
            session: self.session.clone(),
            bounds: self.bounds.clone(),
            io_limit,
        })
    }

    fn close(&mut self) {
        // Best effort and short: the work is done either way.
        self.session.set_timeout(1000);
        let _ = self.session.disconnect(None, "bye", None);
    }
}

impl Shell {
    /// The end of the next read or write: the idle limit from now, never
    /// past the call's deadline.
    fn until(&self) -> Instant {
        self.bounds.deadline.min(Instant::now() + self.io_limit)
    }

    /// Bounds the next libssh2 call by `until` (and by [`SLICE`] when
    /// `sliced`); an error once `until` has passed or the caller stopped
    /// waiting.
    fn arm(&self, until: Instant, sliced: bool, what: &str) -> std::io::Result<()> {
        let end = if sliced {
            until.min(Instant::now() + SLICE)
        } else {
            until
        };
        self.bounds
            .check(what)
            .and_then(|()| set_timeout(&self.session, end, what, self.io_limit))
            .map_err(|err| match err {
                SshError::Timeout { .. } => {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, err.to_string())
                }
                other => std::io::Error::other(other.to_string()),
            })
    }
}

impl Read for Shell {
    /// Waits for output in short slices (a silent switch is the common
    /// case), looking between them whether the caller still waits.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let until = self.until();
        loop {
            self.arm(until, true, "reading the shell")?;
            match self.channel.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut && Instant::now() < until => {}
                other => return other,
            }
        }
    }
}

impl Write for Shell {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm(self.until(), false, "writing to the shell")?;
        self.channel.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.arm(self.until(), false, "writing to the shell")?;
        self.channel.flush()
    }
}

impl Bounds {
    /// Whether the caller still waits for this call's result.
    fn caller_gone(&self) -> bool {
        self.caller.has_changed().is_err()
    }

    fn check(&self, what: &str) -> Result<(), SshError> {
        self.left(what).map(drop)
    }

    fn left(&self, what: &str) -> Result<Duration, SshError> {
        if self.caller_gone() {
            return Err(SshError::Abandoned {
                what: what.to_owned(),
            });
        }
        remaining(self.deadline, what, self.budget)
    }

    fn wait_for<F: Future>(&self, what: &str, fut: F) -> Result<F::Output, SshError> {
        let left = self.left(what)?;
        let mut caller = self.caller.clone();
        self.runtime.block_on(async move {
            tokio::select! {
                // The caller first: once it is gone (even while the runtime
                // shuts down) `fut` is not polled again.
                biased;
                // Never sent on: an error here means the caller's future is gone.
                _ = caller.changed() => Err(SshError::Abandoned { what: what.to_owned() }),
                out = fut => Ok(out),
                () = tokio::time::sleep(left) => Err(SshError::Timeout {
                    what: what.to_owned(),
                    after: self.budget,
                }),
            }
        })
    }
}

/// `SHA256:<base64 without padding>` of a host key blob, as OpenSSH prints it.
pub fn fingerprint_of(key: &[u8]) -> String {
    let digest = Sha256::digest(key);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// Checks a configured pin and returns it in the form [`fingerprint_of`] prints.
pub fn normalize_fingerprint(pin: &str) -> Result<String, SshError> {
    let bad = || {
        SshError::Config(format!(
            "host_key_fingerprint `{pin}` is not `SHA256:<base64>` as `ssh-keygen -lf` prints it"
        ))
    };
    let body = pin
        .trim()
        .strip_prefix("SHA256:")
        .ok_or_else(bad)?
        .trim_end_matches('=');
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(body)
        .map_err(|_| bad())?;
    if bytes.len() != 32 {
        return Err(bad());
    }
    Ok(format!("SHA256:{body}"))
}

/// Quotes `text` for a POSIX shell: one argument, nothing expanded.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The last `max` characters of `text` (whole characters), for evidence.
pub fn tail(text: &str, max: usize) -> String {
    let trimmed = text.trim_end();
    if trimmed.len() <= max {
        return trimmed.to_owned();
    }
    let mut start = trimmed.len() - max;
    while !trimmed.is_char_boundary(start) {
        start += 1;
    }
    trimmed[start..].to_owned()
}

fn key_type_name(kind: HostKeyType) -> &'static str {
    match kind {
        HostKeyType::Rsa => "ssh-rsa",
        HostKeyType::Dss => "ssh-dss",
        HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        HostKeyType::Ed25519 => "ssh-ed25519",
        HostKeyType::Unknown => "unknown",
    }
}

/// Records a host key trusted on first use, in OpenSSH's format
/// (`[host]:port` for a port other than 22).
fn append_known_host(
    path: &Path,
    host: &str,
    port: u16,
    key_type: &str,
    key: &[u8],
) -> Result<(), SshError> {
    let name = if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    };
    let line = format!(
        "{name} {key_type} {}\n",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()).map(|()| f))
        .map_err(|e| {
            SshError::Config(format!(
                "cannot record the host key in {}: {e}",
                path.display()
            ))
        })?;
    file.flush().map_err(|e| {
        SshError::Config(format!(
            "cannot record the host key in {}: {e}",
            path.display()
        ))
    })
}

fn remaining(deadline: Instant, what: &str, after: Duration) -> Result<Duration, SshError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(SshError::Timeout {
            what: what.to_owned(),
            after,
        });
    }
    Ok(left)
}

fn set_timeout(
    session: &Session,
    until: Instant,
    what: &str,
    after: Duration,
) -> Result<(), SshError> {
    let left = remaining(until, what, after)?;
    let ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX).max(1);
    session.set_timeout(ms);
    Ok(())
}

fn is_timeout(err: &ssh2::Error) -> bool {
    matches!(err.code(), ssh2::ErrorCode::Session(LIBSSH2_ERROR_TIMEOUT))
}

fn protocol(what: &str, source: ssh2::Error, after: Duration) -> SshError {
    if is_timeout(&source) {
        SshError::Timeout {
            what: what.to_owned(),
            after,
        }
    } else {
        SshError::Protocol {
            what: what.to_owned(),
            source,
        }
    }
}

/// How a [`read_tail`] ended.
enum ReadEnd {
    Eof,
    TimedOut,
    /// The connection dropped (a host powering off mid-command).
    Lost,
}

/// Reads to end of stream or `until`, keeping the last [`OUTPUT_KEEP`]
/// bytes; `arm` bounds each read (a slice of the time left) and stops the
/// loop once the caller is gone.
fn read_tail(
    reader: &mut impl Read,
    keep: &mut Vec<u8>,
    until: Instant,
    arm: &dyn Fn() -> Result<(), SshError>,
) -> Result<ReadEnd, SshError> {
    let mut buf = [0u8; 8192];
    loop {
        arm()?;
        match reader.read(&mut buf) {
            Ok(0) => return Ok(ReadEnd::Eof),
            Ok(n) => {
                keep.extend_from_slice(&buf[..n]);
                if keep.len() > OUTPUT_KEEP * 2 {
                    keep.drain(..keep.len() - OUTPUT_KEEP);
                }
            }
            // One slice is over; the next `arm` says whether time is left.
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && Instant::now() < until => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Ok(ReadEnd::TimedOut),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Ok(ReadEnd::Lost),
        }
    }
}

fn first_line(command: &str) -> &str {
    command.lines().next().unwrap_or("")
}

/// A validated SSH host's connection fields, with what the host leaves out
/// taken from its manifest's `defaults`: the dry-run budget from the refresh
/// SLA, connect and command timeouts from `defaults.ssh`. Both SSH drivers'
/// registry constructors read their config from this.
pub(crate) fn connection_with_defaults(
    host: &crate::host::ValidatedHost,
) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::json;
    let mut connection: serde_json::Map<String, serde_json::Value> = host
        .fields()
        .filter_map(|name| host.value(name).map(|v| (name.to_owned(), v.clone())))
        .collect();
    let defaults = &host.manifest().defaults;
    connection
        .entry("dry_run_budget_s")
        .or_insert_with(|| json!(defaults.dry_run_refresh_sla_s));
    if let Some(ssh) = &defaults.ssh {
        connection
            .entry("connect_timeout_s")
            .or_insert_with(|| json!(ssh.connect_timeout_s));
        connection
            .entry("command_timeout_s")
            .or_insert_with(|| json!(ssh.command_timeout_s));
    }
    connection
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_keeps_quotes_and_metacharacters_inert() {
        assert_eq!(shell_quote("nginx.service"), "'nginx.service'");
        assert_eq!(shell_quote("a'b; rm -rf /"), r"'a'\''b; rm -rf /'");
    }

    #[test]
    fn fingerprints_are_normalized_and_checked() {
        let fp = fingerprint_of(b"key");
        assert!(fp.starts_with("SHA256:") && !fp.ends_with('='));
        assert_eq!(normalize_fingerprint(&format!("{fp}=")).unwrap(), fp);
        assert!(normalize_fingerprint("MD5:aa:bb").is_err());
        assert!(normalize_fingerprint("SHA256:short").is_err());
    }

    #[test]
    fn inline_keys_are_told_from_paths_and_never_printed() {
        let inline =
            KeySource::from_config(&Secret::new("-----BEGIN OPENSSH PRIVATE KEY-----\nabc"));
        assert!(matches!(inline, KeySource::Inline(_)));
        assert!(!format!("{inline:?}").contains("abc"));
        let path = KeySource::from_config(&Secret::new("/etc/hazel/id_ed25519"));
        assert!(matches!(path, KeySource::Path(p) if p == Path::new("/etc/hazel/id_ed25519")));
    }

    #[test]
    fn tail_keeps_the_end_on_char_boundaries() {
        assert_eq!(tail("abcdef\n", 3), "def");
        assert_eq!(tail("ééé", 3), "é");
    }

    #[test]
    fn a_config_without_host_key_check_or_credential_is_refused() {
        let config = SshConfig {
            host: "h".into(),
            port: 22,
            username: "u".into(),
            private_key: None,
            private_key_passphrase: None,
            password: Some(Secret::new("pw")),
            host_key: HostKeyCheck::default(),
            connect_timeout: Duration::from_secs(1),
        };
        let err = SshClient::new(config.clone()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConfigError);
        let no_credential = SshConfig {
            password: None,
            host_key: HostKeyCheck {
                trust_on_first_use: true,
                ..HostKeyCheck::default()
            },
            ..config
        };
        assert_eq!(
            SshClient::new(no_credential).unwrap_err().kind(),
            ErrorKind::ConfigError
        );
    }
}
