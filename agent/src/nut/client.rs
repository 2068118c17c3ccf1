//! An async client for upsd's TCP protocol, read-only by construction: it
//! speaks `VER`, `LIST UPS`, `LIST VAR`, `GET VAR`, `LOGOUT`, and
//! `USERNAME`/`PASSWORD` when credentials are configured. It never sends
//! `LOGIN`: that registers the connection as a upsmon client, and a upsmon
//! primary would then wait for Hazel before shutting the host down.
//!
//! Every request has a deadline (the connection's `timeout`); after a
//! timeout or an I/O error the connection is unusable and the caller
//! reconnects. The password is a [`Secret`] and never appears in logs or
//! errors.

use std::collections::BTreeMap;
use std::time::Duration;

use drivers::secret::Secret;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::protocol::{self, ErrorCode, LineError, ReplyLine};

/// Longest reply line accepted; upsd's own limit is far below it.
const MAX_LINE: u64 = 64 * 1024;

/// Longest `LIST` block accepted, in lines.
const MAX_LIST_ITEMS: usize = 100_000;

/// How to reach and authenticate to one upsd.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub host: String,
    pub port: u16,
    /// Sent as `USERNAME` right after connecting, when set.
    pub user: Option<String>,
    /// Sent as `PASSWORD` right after connecting, when set.
    pub password: Option<Secret>,
    /// Deadline of the connect and of every request (write plus whole reply).
    pub timeout: Duration,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum NutError {
    /// The TCP connection could not be opened.
    #[error("cannot connect to upsd at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("upsd connection failed during `{request}`")]
    Io {
        request: String,
        #[source]
        source: std::io::Error,
    },
    /// upsd closed the connection before answering.
    #[error("upsd closed the connection during `{request}`")]
    Closed { request: String },
    /// No complete answer within the deadline.
    #[error("upsd did not answer `{request}` within {}ms", .timeout.as_millis())]
    Timeout { request: String, timeout: Duration },
    /// upsd answered `ERR <code>`.
    #[error("upsd refused `{request}`: {code}")]
    Server {
        request: String,
        #[source]
        code: ErrorCode,
    },
    /// The answer does not follow the protocol.
    #[error("unexpected reply to `{request}`: {why} (line: {line:?})")]
    Protocol {
        request: String,
        line: String,
        why: String,
    },
}

impl NutError {
    /// upsd's error code, when upsd answered `ERR`.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            NutError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether trying again (on a new connection for the transport errors)
    /// can succeed: transport failures and timeouts can, stale or
    /// disconnected drivers can, refusals and protocol violations cannot.
    pub fn is_retryable(&self) -> bool {
        match self {
            NutError::Connect { .. }
            | NutError::Io { .. }
            | NutError::Closed { .. }
            | NutError::Timeout { .. } => true,
            NutError::Server { code, .. } => code.is_retryable(),
            NutError::Protocol { .. } => false,
        }
    }

    /// Whether the connection is unusable after this error (the caller must
    /// reconnect); an `ERR` reply leaves it in sync.
    pub fn breaks_connection(&self) -> bool {
        !matches!(self, NutError::Server { .. })
    }
}

/// One connection to upsd; see the module docs.
#[derive(Debug)]
pub struct NutClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
    line: String,
}

impl NutClient {
    /// Connects and, when configured, sends `USERNAME` and `PASSWORD`.
    pub async fn connect(options: &ClientOptions) -> Result<NutClient, NutError> {
        let addr = format!("{}:{}", options.host, options.port);
        let stream = match tokio::time::timeout(
            options.timeout,
            TcpStream::connect((options.host.as_str(), options.port)),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(NutError::Connect { addr, source }),
            Err(_) => {
                return Err(NutError::Timeout {
                    request: "connect".into(),
                    timeout: options.timeout,
                })
            }
        };
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let mut client = NutClient {
            reader: BufReader::new(read),
            writer: write,
            timeout: options.timeout,
            line: String::new(),
        };
        if let Some(user) = &options.user {
            client.expect_ok(&["USERNAME", user], "USERNAME").await?;
        }
        if let Some(password) = &options.password {
            // The request is named without its argument so the password
            // never reaches an error message.
            client
                .expect_ok(&["PASSWORD", password.expose()], "PASSWORD")
                .await?;
        }
        Ok(client)
    }

    /// `VER`: the server's free-text version line.
    pub async fn ver(&mut self) -> Result<String, NutError> {
        let request = "VER";
        self.timed(request, async |c| {
            c.send(&["VER"], request).await?;
            c.read_line(request).await.map(|l| l.trim_end().to_string())
        })
        .await
    }

    /// `LIST UPS`: UPS names and descriptions.
    pub async fn list_ups(&mut self) -> Result<Vec<(String, String)>, NutError> {
        let items = self.list(&["UPS"], "UPS", 3).await?;
        Ok(items
            .into_iter()
            .map(|mut w| {
                let desc = w.pop().unwrap_or_default();
                let name = w.pop().unwrap_or_default();
                (name, desc)
            })
            .collect())
    }

    /// `LIST VAR <ups>`: every variable of one UPS.
    pub async fn list_var(&mut self, ups: &str) -> Result<BTreeMap<String, String>, NutError> {
        let items = self.list(&["VAR", ups], "VAR", 4).await?;
        Ok(items
            .into_iter()
            .map(|mut w| {
                let value = w.pop().unwrap_or_default();
                let name = w.pop().unwrap_or_default();
                (name, value)
            })
            .collect())
    }

    /// `GET VAR <ups> <var>`: one variable's value.
    pub async fn get_var(&mut self, ups: &str, var: &str) -> Result<String, NutError> {
        let words = ["GET", "VAR", ups, var];
        let request = words.join(" ");
        self.timed(&request, async |c| {
            c.send(&words, &request).await?;
            let mut got = c.reply(&request).await?;
            match got.as_slice() {
                [kw, u, v, _] if kw == "VAR" && u.eq_ignore_ascii_case(ups) && v == var => {
                    Ok(got.pop().unwrap_or_default())
                }
                _ => Err(protocol_error(
                    &request,
                    &got,
                    "expected `VAR <ups> <var> <value>`",
                )),
            }
        })
        .await
    }

    /// `LOGOUT`, then closes the connection. A server that already went
    /// away is not an error.
    pub async fn logout(mut self) -> Result<(), NutError> {
        let request = "LOGOUT";
        let result = self
            .timed(request, async |c| {
                c.send(&["LOGOUT"], request).await?;
                c.read_line(request).await.map(drop)
            })
            .await;
        match result {
            Ok(()) | Err(NutError::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends a request expecting a reply starting with `OK`.
    async fn expect_ok(&mut self, words: &[&str], request: &str) -> Result<(), NutError> {
        self.timed(request, async |c| {
            c.send(words, request).await?;
            let got = c.reply(request).await?;
            if got.first().is_some_and(|w| w == "OK") {
                Ok(())
            } else {
                Err(protocol_error(request, &got, "expected `OK`"))
            }
        })
        .await
    }

    /// `LIST <what...>`: the item lines between `BEGIN LIST` and `END LIST`,
    /// each checked to start with `item_kw` and have `arity` words.
    async fn list(
        &mut self,
        what: &[&str],
        item_kw: &str,
        arity: usize,
    ) -> Result<Vec<Vec<String>>, NutError> {
        let mut words = vec!["LIST"];
        words.extend_from_slice(what);
        let request = words.join(" ");
        self.timed(&request, async |c| {
            c.send(&words, &request).await?;
            let begin = c.reply(&request).await?;
            if !(begin.len() > 2
                && begin[0] == "BEGIN"
                && begin[1] == "LIST"
                && protocol::same_words(&begin[2..], what))
            {
                return Err(protocol_error(&request, &begin, "expected `BEGIN LIST`"));
            }
            let mut items = Vec::new();
            loop {
                let line = c.reply(&request).await?;
                if line.first().is_some_and(|w| w == "END") {
                    if line.len() > 2 && line[1] == "LIST" && protocol::same_words(&line[2..], what)
                    {
                        return Ok(items);
                    }
                    return Err(protocol_error(&request, &line, "mismatched `END LIST`"));
                }
                if line.len() != arity || line[0] != item_kw {
                    return Err(protocol_error(
                        &request,
                        &line,
                        &format!("expected a `{item_kw}` item of {arity} words"),
                    ));
                }
                if items.len() >= MAX_LIST_ITEMS {
                    return Err(protocol_error(&request, &line, "list too long"));
                }
                items.push(line);
            }
        })
        .await
    }

    /// Runs one request under the connection's deadline.
    async fn timed<T>(
        &mut self,
        request: &str,
        f: impl AsyncFnOnce(&mut NutClient) -> Result<T, NutError>,
    ) -> Result<T, NutError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, f(self)).await {
            Ok(result) => result,
            Err(_) => Err(NutError::Timeout {
                request: request.to_string(),
                timeout,
            }),
        }
    }

    async fn send(&mut self, words: &[&str], request: &str) -> Result<(), NutError> {
        let line = protocol::request_line(words);
        tracing::trace!(request, "nut request");
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|source| NutError::Io {
                request: request.to_string(),
                source,
            })
    }

    /// One raw reply line without its line end.
    async fn read_line(&mut self, request: &str) -> Result<&str, NutError> {
        self.line.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_line(&mut self.line)
            .await
            .map_err(|source| NutError::Io {
                request: request.to_string(),
                source,
            })?;
        if n == 0 {
            return Err(NutError::Closed {
                request: request.to_string(),
            });
        }
        if !self.line.ends_with('\n') {
            if n as u64 >= MAX_LINE {
                return Err(NutError::Protocol {
                    request: request.to_string(),
                    line: self.line.chars().take(80).collect(),
                    why: "reply line too long".into(),
                });
            }
            return Err(NutError::Closed {
                request: request.to_string(),
            });
        }
        Ok(self.line.trim_end_matches(['\n', '\r']))
    }

    /// One reply line as words; `ERR` lines become [`NutError::Server`].
    async fn reply(&mut self, request: &str) -> Result<Vec<String>, NutError> {
        let line = self.read_line(request).await?;
        match protocol::parse_reply(line) {
            Ok(ReplyLine::Words(words)) => Ok(words),
            Ok(ReplyLine::Err(code)) => Err(NutError::Server {
                request: request.to_string(),
                code,
            }),
            Err(e @ (LineError::UnterminatedQuote | LineError::TrailingBackslash)) => {
                Err(NutError::Protocol {
                    request: request.to_string(),
                    line: line.to_string(),
                    why: e.to_string(),
                })
            }
        }
    }
}

fn protocol_error(request: &str, words: &[String], why: &str) -> NutError {
    NutError::Protocol {
        request: request.to_string(),
        line: words.join(" "),
        why: why.to_string(),
    }
}
