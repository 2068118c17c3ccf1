//! `hazel.yaml`: the agent's configuration for `hazel serve`, read once at
//! start. Every field is documented here and in `docs/configuration.md`;
//! unknown fields are refused with the field's path, so a typo never turns
//! into a silently ignored setting. Hosts listed here are declarative: they
//! are re-applied at every start and win over an API-created host with the
//! same id (with a warning), SPEC §12.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drivers::registry::HostConfig;
use serde::Deserialize;

/// The whole `hazel.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on. Keep it on loopback unless a reverse
    /// proxy terminates TLS in front of Hazel.
    #[serde(default = "default_listen", deserialize_with = "socket_addr_text")]
    pub listen: SocketAddr,
    /// Where the SQLite store (`hazel.db`) lives; created if missing.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Directory of plugin manifests (`*.yaml`); the manifests built into
    /// the binary when absent.
    #[serde(default)]
    pub plugin_dir: Option<PathBuf>,
    /// Hosts and their connections (declarative; see the module docs).
    #[serde(default)]
    pub hosts: Vec<HostConfig>,
    /// IANA time zone `timer.at` schedules are read in.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Global cap on actions running at once across all hosts.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Log line format on stderr.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Colour in text log lines: `auto` (only when stderr is a terminal
    /// and `NO_COLOR` is unset), `always` or `never`.
    #[serde(default)]
    pub log_color: LogColor,
    /// API authentication.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Encryption of host secrets at rest.
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// API limits.
    #[serde(default)]
    pub api: ApiLimits,
    /// Named webhooks accepted at `POST /api/webhooks/:name`.
    #[serde(default)]
    pub webhooks: BTreeMap<String, WebhookConfig>,
    /// UPSes to watch through NUT `upsd` servers (`docs/nut.md`).
    #[serde(default)]
    pub nut: Vec<crate::nut::NutConfig>,
    /// Age after which an action held by the kill switch is dropped, e.g. `10m`.
    #[serde(default = "default_item_ttl", with = "duration_text")]
    pub item_ttl: Duration,
    /// How long a graceful shutdown waits for running actions, e.g. `30s`.
    #[serde(default = "default_drain", with = "duration_text")]
    pub shutdown_grace: Duration,
    /// Automatic backups of the database while the agent runs
    /// (docs/operations.md); none when absent.
    #[serde(default)]
    pub backup: Option<BackupConfig>,
}

/// `backup:` in `hazel.yaml`: `hazel backup` run by the agent itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Where the backups go (created if missing); files are named
    /// `hazel-<UTC time>.db`. Put it on another disk than `data_dir`.
    pub dir: PathBuf,
    /// How often, e.g. `6h` (at least `1m`); the first one `every` after
    /// start.
    #[serde(default = "default_backup_every", with = "duration_text")]
    pub every: Duration,
    /// How many backups to keep (at least 1); the oldest are removed.
    #[serde(default = "default_backup_keep")]
    pub keep: usize,
}

fn default_backup_every() -> Duration {
    Duration::from_secs(6 * 3600)
}

fn default_backup_keep() -> usize {
    7
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether text log lines carry ANSI colour codes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogColor {
    /// Colour only when stderr is a terminal and `NO_COLOR` is unset: a
    /// log file or the journal gets plain text.
    #[default]
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

impl LogColor {
    /// Whether to colour, given whether stderr is a terminal and whether
    /// `NO_COLOR` is set (https://no-color.org).
    pub fn ansi(self, stderr_is_terminal: bool, no_color: bool) -> bool {
        match self {
            LogColor::Auto => stderr_is_terminal && !no_color,
            LogColor::Always => true,
            LogColor::Never => false,
        }
    }
}

/// Where the HS256 key that signs API tokens comes from. The file wins over
/// the environment variable; with neither, `hazel serve` refuses to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// File holding the key (at least 32 bytes; surrounding whitespace trimmed).
    #[serde(default)]
    pub jwt_key_file: Option<PathBuf>,
    /// Environment variable holding the key.
    #[serde(default = "default_jwt_env")]
    pub jwt_key_env: String,
}

/// Where the key that encrypts host secrets at rest comes from (32 bytes
/// as 64 hex characters or base64). The file wins over the variable. Without
/// a key, hosts with secrets cannot be stored through the API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default = "default_secret_env")]
    pub key_env: String,
}

/// Request limits of the HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiLimits {
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: usize,
    /// Sustained requests per second over the whole API.
    #[serde(default = "default_rate")]
    pub rate_per_s: u32,
    /// Requests allowed in a burst above the sustained rate.
    #[serde(default = "default_burst")]
    pub rate_burst: u32,
    /// Most connections served at once; a connection above it is accepted
    /// and closed at once. Keep it below the process's file descriptor
    /// limit (`LimitNOFILE` in the systemd unit).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most connections served at once from one client IP address.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Time a connection that has started a request has to send the whole
    /// request head (request line and headers), e.g. `10s`.
    #[serde(default = "default_header_read_timeout", with = "duration_text")]
    pub header_read_timeout: Duration,
    /// Time a connection may stay open without sending a byte while no
    /// request of it is being answered (a fresh connection, or a
    /// keep-alive connection between requests), e.g. `30s`.
    #[serde(default = "default_idle_timeout", with = "duration_text")]
    pub idle_timeout: Duration,
    /// Time an answer may wait for the client to take its bytes, e.g.
    /// `30s`: a client that asks and stops reading has its connection
    /// closed, so it cannot hold a connection slot for ever.
    #[serde(default = "default_write_timeout", with = "duration_text")]
    pub write_timeout: Duration,
    /// Time a request has to send its whole body once a route reads it,
    /// e.g. `30s`: a body that stalls is answered 408 and its connection
    /// closed, so a slow sender cannot hold a connection for ever.
    #[serde(default = "default_body_read_timeout", with = "duration_text")]
    pub body_read_timeout: Duration,
}

/// One named webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Environment variable holding the HMAC-SHA256 secret senders sign with.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the secret (wins over `secret_env`).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Accept posts without a signature when no secret is configured.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// Sustained posts per second to this webhook: its own rate-limit
    /// budget, apart from the API's, so a flood on other routes never
    /// refuses its posts (SPEC §9); 0 turns its limit off.
    #[serde(default = "default_webhook_rate_per_s")]
    pub rate_per_s: u32,
    /// Posts allowed in a burst above `rate_per_s` (at least 1).
    #[serde(default = "default_webhook_rate_burst")]
    pub rate_burst: u32,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            secret_env: None,
            secret_file: None,
            allow_unsigned: false,
            rate_per_s: default_webhook_rate_per_s(),
            rate_burst: default_webhook_rate_burst(),
        }
    }
}

fn default_webhook_rate_per_s() -> u32 {
    10
}

fn default_webhook_rate_burst() -> u32 {
    20
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            data_dir: default_data_dir(),
            plugin_dir: None,
            hosts: Vec::new(),
            timezone: default_timezone(),
            concurrency: default_concurrency(),
            log_format: LogFormat::default(),
            log_color: LogColor::default(),
            auth: AuthConfig::default(),
            secrets: SecretsConfig::default(),
            api: ApiLimits::default(),
            webhooks: BTreeMap::new(),
            nut: Vec::new(),
            item_ttl: default_item_ttl(),
            shutdown_grace: default_drain(),
            backup: None,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_key_file: None,
            jwt_key_env: default_jwt_env(),
        }
    }
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig {
            key_file: None,
            key_env: default_secret_env(),
        }
    }
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            body_limit_bytes: default_body_limit(),
            rate_per_s: default_rate(),
            rate_burst: default_burst(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            write_timeout: default_write_timeout(),
            body_read_timeout: default_body_read_timeout(),
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed or a field is unknown or of the wrong type.
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A field's value is out of range.
    #[error("config field `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// A key or secret source is missing or unreadable.
    #[error("config field `{field}`: {message}")]
    Key {
        field: &'static str,
        message: String,
    },
    /// `hazel config check` found problems; `listing` is its report.
    #[error("{listing}")]
    Unusable { listing: String },
}

impl Config {
    /// Reads and checks `hazel.yaml`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and checks config text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_norway::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
        };
        config.check()?;
        Ok(config)
    }

    /// Range checks serde cannot express; the first of [`Config::problems`].
    pub fn check(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every range problem serde cannot express, all at once (`hazel config
    /// check` lists them together).
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        let mut invalid = |field: &'static str, message: String| {
            problems.push(ConfigError::Invalid { field, message })
        };
        if self.concurrency == 0 {
            invalid(
                "concurrency",
                "must be at least 1 (it caps actions running at once)".into(),
            );
        }
        if self.timezone.parse::<chrono_tz::Tz>().is_err() {
            invalid(
                "timezone",
                format!(
                    "`{}` is not an IANA time zone (e.g. `Europe/Berlin`, `UTC`)",
                    self.timezone
                ),
            );
        }
        if self.api.rate_per_s == 0 || self.api.rate_burst == 0 {
            invalid(
                "api.rate_per_s",
                "rate_per_s and rate_burst must be at least 1".into(),
            );
        }
        if self.api.body_limit_bytes < 1024 {
            invalid("api.body_limit_bytes", "must be at least 1024 bytes".into());
        }
        if self.api.max_connections == 0 || self.api.max_connections_per_ip == 0 {
            invalid(
                "api.max_connections",
                "max_connections and max_connections_per_ip must be at least 1".into(),
            );
        }
        if self.api.idle_timeout.is_zero() || self.api.header_read_timeout.is_zero() {
            invalid(
                "api.idle_timeout",
                "idle_timeout and header_read_timeout must be at least 1s".into(),
            );
        }
        if self.api.write_timeout.is_zero() {
            invalid(
                "api.write_timeout",
                "write_timeout must be at least 1s".into(),
            );
        }
        if self.api.body_read_timeout.is_zero() {
            invalid(
                "api.body_read_timeout",
                "must be at least 1s, e.g. 30s".into(),
            );
        }
        if let Some(backup) = &self.backup {
            if backup.every < Duration::from_secs(60) {
                invalid("backup.every", "must be at least 1m, e.g. 6h".into());
            }
            if backup.keep == 0 {
                invalid("backup.keep", "must be at least 1".into());
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for host in &self.hosts {
            if !seen.insert(host.id.as_str()) {
                invalid("hosts", format!("host id `{}` is listed twice", host.id));
            }
        }
        problems
    }

    /// The time zone, checked by [`Config::check`].
    pub fn tz(&self) -> chrono_tz::Tz {
        self.timezone.parse().unwrap_or(chrono_tz::Tz::UTC)
    }

    /// The API token key: `auth.jwt_key_file`, else `$auth.jwt_key_env`.
    pub fn jwt_key(&self) -> Result<Vec<u8>, ConfigError> {
        read_key(
            "auth.jwt_key_file",
            self.auth.jwt_key_file.as_deref(),
            &self.auth.jwt_key_env,
        )?
        .ok_or_else(|| ConfigError::Key {
            field: "auth",
            message: format!(
                "no API token key: set ${} or auth.jwt_key_file (at least 32 bytes, e.g. `openssl rand -hex 32`)",
                self.auth.jwt_key_env
            ),
        })
    }

    /// The at-rest secret key text, if configured.
    pub fn secret_key_text(&self) -> Result<Option<String>, ConfigError> {
        Ok(read_key(
            "secrets.key_file",
            self.secrets.key_file.as_deref(),
            &self.secrets.key_env,
        )?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// A webhook's HMAC secret, if configured.
    pub fn webhook_secret(&self, name: &str) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(hook) = self.webhooks.get(name) else {
            return Ok(None);
        };
        read_key(
            "webhooks.secret_file",
            hook.secret_file.as_deref(),
            hook.secret_env.as_deref().unwrap_or(""),
        )
    }
}

fn read_key(
    field: &'static str,
    file: Option<&Path>,
    env: &str,
) -> Result<Option<Vec<u8>>, ConfigError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Key {
            field,
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        return Ok(Some(text.trim().as_bytes().to_vec()));
    }
    if env.is_empty() {
        return Ok(None);
    }
    Ok(std::env::var(env)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .map(String::into_bytes))
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8088))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./hazel-data")
}

fn default_timezone() -> String {
    "UTC".into()
}

fn default_concurrency() -> usize {
    16
}

fn default_jwt_env() -> String {
    "HAZEL_JWT_KEY".into()
}

fn default_secret_env() -> String {
    "HAZEL_SECRET_KEY".into()
}

fn default_body_limit() -> usize {
    1024 * 1024
}

fn default_rate() -> u32 {
    1000
}

fn default_burst() -> u32 {
    2000
}

fn default_max_connections() -> usize {
    4096
}

fn default_max_connections_per_ip() -> usize {
    256
}

fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_write_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_item_ttl() -> Duration {
    crate::engine::scheduler::DEFAULT_TTL
}

fn default_drain() -> Duration {
    Duration::from_secs(30)
}

/// `listen` as an `IP:port`; a name such as `localhost:8088` is refused
/// with a hint, since the API binds before any resolver is asked.
fn socket_addr_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "`{text}` is not an IP address and port: write e.g. `127.0.0.1:8088` or `[::1]:8088` (names such as `localhost` are not resolved)"
        ))
    })
}

/// Durations written as in policies (`90s`, `10m`, `1h30m`).
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::spec::duration::parse_duration(&text)
            .map(Duration::from_secs)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a duration: {e}; write e.g. `30s`, `10m` or `1h30m`"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("hazel.yaml"))
    }

    #[test]
    fn log_colour_is_off_for_a_file_or_no_color_unless_always() {
        assert!(LogColor::Auto.ansi(true, false));
        assert!(!LogColor::Auto.ansi(false, false), "a file or the journal");
        assert!(!LogColor::Auto.ansi(true, true), "NO_COLOR");
        assert!(LogColor::Always.ansi(false, true));
        assert!(!LogColor::Never.ansi(true, false));
        let config: Config = serde_norway::from_str("log_color: never\n").unwrap();
        assert_eq!(config.log_color, LogColor::Never);
        assert_eq!(Config::default().log_color, LogColor::Auto);
        assert!(serde_norway::from_str::<Config>("log_color: sometimes\n").is_err());
    }

    #[test]
    fn empty_config_gets_the_documented_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8088");
        assert_eq!(config.data_dir, PathBuf::from("./hazel-data"));
        assert_eq!(config.concurrency, 16);
        assert_eq!(config.item_ttl, Duration::from_secs(600));
        assert_eq!(config.tz(), chrono_tz::Tz::UTC);
    }

    #[test]
    fn unknown_field_is_refused_with_its_name() {
        let err = parse("listen: 127.0.0.1:9000\nconcurency: 4\n").unwrap_err();
        assert!(err.to_string().contains("concurency"), "{err}");
    }

    #[test]
    fn a_backup_problem_names_the_field_that_has_it() {
        let fields = |text: &str| -> Vec<&'static str> {
            let config: Config = serde_norway::from_str(text).unwrap();
            config
                .problems()
                .into_iter()
                .filter_map(|p| match p {
                    ConfigError::Invalid { field, .. } => Some(field),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            fields("backup: {dir: /b, every: 6h, keep: 0}\n"),
            ["backup.keep"]
        );
        assert_eq!(
            fields("backup: {dir: /b, every: 30s, keep: 2}\n"),
            ["backup.every"]
        );
    }

    #[test]
    fn zero_concurrency_and_bad_timezone_are_refused() {
        assert!(parse("concurrency: 0")
            .unwrap_err()
            .to_string()
            .contains("concurrency"));
        assert!(parse("timezone: Mars/Base")
            .unwrap_err()
            .to_string()
            .contains("timezone"));
    }

    #[test]
    fn connection_limits_have_defaults_and_can_be_set() {
        let config = parse("listen: 127.0.0.1:8088\n").unwrap();
        assert_eq!(config.api.max_connections, 4096);
        assert_eq!(config.api.max_connections_per_ip, 256);
        assert_eq!(config.api.idle_timeout, Duration::from_secs(30));
        assert_eq!(config.api.header_read_timeout, Duration::from_secs(10));
        let config = parse(
            "api:\n  max_connections: 100\n  max_connections_per_ip: 8\n  idle_timeout: 5s\n  header_read_timeout: 2s\n",
        )
        .unwrap();
        assert_eq!(config.api.max_connections, 100);
        assert_eq!(config.api.max_connections_per_ip, 8);
        assert_eq!(config.api.idle_timeout, Duration::from_secs(5));
        assert_eq!(config.api.header_read_timeout, Duration::from_secs(2));
    }

    #[test]
    fn durations_use_the_policy_syntax() {
        let config = parse("item_ttl: 1h30m\nshutdown_grace: 45s\n").unwrap();
        assert_eq!(config.item_ttl, Duration::from_secs(5400));
        assert_eq!(config.shutdown_grace, Duration::from_secs(45));
        assert!(parse("item_ttl: 10mx").is_err());
    }

    #[test]
    fn the_documented_example_and_the_deploy_config_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let docs = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
        let start = docs.find("```yaml\n").expect("docs have a yaml example") + 8;
        let end = start + docs[start..].find("```").unwrap();
        let config = parse(&docs[start..end]).unwrap();
        assert_eq!(config.hosts.len(), 2);
        assert!(config.webhooks["lab-button"].allow_unsigned);
        let deploy = Config::load(&root.join("deploy/hazel.yaml")).unwrap();
        assert_eq!(deploy.log_format, LogFormat::Json);
    }

    #[test]
    fn duplicate_host_ids_are_refused() {
        let text = "hosts:\n  - {id: a, plugin: linux.ssh}\n  - {id: a, plugin: linux.ssh}\n";
        assert!(parse(text)
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
    }
}
