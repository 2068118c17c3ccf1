//! `hazel serve --config FILE`: checks the config (every problem at once),
//! sets up logging,
//! opens the [`Service`] (store, hosts, engine), binds the API and runs
//! until SIGINT or SIGTERM, then shuts down gracefully: stop taking
//! requests, drain running actions within `shutdown_grace`, write the
//! ledger, exit. The shutdown follows mini-redis: one signal future handed
//! to the server, in-flight work drained before a deadline.

use std::path::Path;

use tracing::{error, info};

use crate::api::auth::JwtKey;
use crate::api::{self, ApiConfig, ConnLimits};
use crate::service::config::{ConfigError, LogColor, LogFormat};
use crate::service::{OpenOptions, Service, ServiceError};

/// Why `hazel serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The config file is unreadable or invalid (every problem listed).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The API token key is unusable.
    #[error("auth key: {0}")]
    Key(String),
    /// The data directory's database is missing, empty, replaced, behind
    /// its marker or damaged, or another process holds the directory: the
    /// agent refuses to start (exit 2), the message says what to restore.
    #[error("refusing to start: {0}")]
    DataDir(crate::store::DataDirError),
    /// The service could not open (store, hosts, engine).
    #[error("cannot start the service: {0}")]
    Service(#[from] ServiceError),
    /// The listen address could not be bound or the server failed.
    #[error("cannot serve on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the agent as configured in `config_path` until a stop signal.
pub async fn run(config_path: &Path) -> Result<(), ServeError> {
    // Every problem of every section and host at once, not the first.
    let report = crate::cli::config_check::check_file(config_path);
    let Some(config) = report.config.clone().filter(|_| report.is_usable()) else {
        return Err(ConfigError::Unusable {
            listing: crate::cli::config_check::render_text(&report)
                .trim_end()
                .to_string(),
        }
        .into());
    };
    init_logging(config.log_format, config.log_color);
    let jwt = JwtKey::from_bytes(config.jwt_key()?).map_err(|e| ServeError::Key(e.to_string()))?;
    let service = match Service::open(config.clone(), OpenOptions::default()).await {
        Ok(service) => service,
        Err(ServiceError::DataDir(e)) => return Err(ServeError::DataDir(e)),
        Err(e) => return Err(e.into()),
    };
    let router = api::router(
        service.clone(),
        ApiConfig {
            body_limit: config.api.body_limit_bytes,
            rate_per_s: config.api.rate_per_s,
            rate_burst: config.api.rate_burst,
            body_read_timeout: config.api.body_read_timeout,
            jwt,
        },
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    info!(listen = %config.listen, data_dir = %config.data_dir.display(), "hazel serving");
    let limits = ConnLimits::from_limits(&config.api);
    let served = api::conn::serve(listener, router, limits, stop_signal()).await;
    info!("stopping: draining running actions");
    service.shutdown().await;
    served.map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })
}

/// Structured logs on stderr, `RUST_LOG` filtered (default `info`). Text
/// lines leave out the Rust module path (the span fields say which policy,
/// host and target) and colour only as `color` says; JSON lines keep the
/// module as `target`, for filtering.
pub fn init_logging(format: LogFormat, color: LogColor) {
    init_logging_with(format, color, "info");
}

/// [`init_logging`] with the filter used when `RUST_LOG` is unset.
pub fn init_logging_with(format: LogFormat, color: LogColor, default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let ansi = color.ansi(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.with_ansi(ansi).with_target(false).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    // A second init (tests, `hazel demo` after serve) keeps the first.
    let _ = result;
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (systemd stop); `hazel serve` and
/// `hazel demo` both stop on it.
pub(crate) async fn stop_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("SIGINT received"),
        _ = term => info!("SIGTERM received"),
    }
}
