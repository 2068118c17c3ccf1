//! The `aruba.aoss` driver: PoE on/off/cycle and interface enable/disable on
//! ArubaOS-Switch (AOS-S / ProVision) over an interactive SSH CLI, with key
//! or password login.
//!
//! The driver receives resolved canonical ids (`poe-port:1/A1`), never the
//! user's selector text. It reads the live table, keeps the ports whose
//! state must change, and compresses exactly those into runs that never
//! cross a slot or a member ([`inventory::port::compress_runs`]), so the
//! switch, which reads `1/A1-1/B4` as "A1 through B4" across the whole A
//! module, touches the same ports Hazel means. The dry-run preview is built
//! by the same function as the execution: it shows the exact CLI lines.
//! Ports listed in the host's `protected_ports` are never touched: a dry-run
//! refuses each one on its own answer (severity `error`) and still plans the
//! others, with runs that skip it; `execute` refuses the whole call before
//! anything is sent. `write memory` runs only when `save_config` is true (so a
//! switch that reboots while the agent is down comes back with PoE on).
//!
//! Device calls are paced by the capability's `rate_limit`
//! ([`DeviceLimits`]): the table read, the change batch and the read-back
//! of an action each take a slot; discovery and the connection test are one
//! read session each and take one slot of the strictest limit. Read-only
//! calls retry a failed connect with the manifest's `defaults.ssh` retries
//! and backoff when the retry fits in their budget; a dry-run as a whole is
//! bounded by `dry_run_budget_s`. A change is never retried.

pub mod cli;
#[cfg(feature = "sim")]
pub mod sim;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use inventory::model::Target;
use inventory::port::{compress_runs, Port};
use inventory::Severity;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::connection::SshSettings;
use crate::driver::{
    Action, ConnectionReport, Driver, DriverError, DryRunAnswer, Effects, ErrorKind, ExecOutcome,
    HostKeys, Plan, Precondition, RefreshMode, TargetEffect,
};
use crate::host::ValidatedHost;
use crate::manifest::Manifest;
use crate::ratelimit::DeviceLimits;
use crate::secret::Secret;
use crate::ssh::{Attempts, KeySource, Shell, SshClient, SshSession};

use cli::{
    change_lines, parse_interfaces_brief, parse_poe_brief, Change, Cli, CliError, Level, Persist,
    CYCLE_PAUSE,
};

/// The manifest id this driver implements.
pub const PLUGIN_ID: &str = "aruba.aoss";

/// PTY size requested for the CLI: wide lines, a long page.
const PTY_COLS: u32 = 200;
const PTY_ROWS: u32 = 1000;

/// Connection config of an `aruba.aoss` host (the host's `connection` map).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArubaConfig {
    /// Address, login, host key check, connect timeout and dry-run budget.
    #[serde(flatten)]
    pub ssh: SshSettings,
    /// Private key: a path readable by the agent, or the key text itself
    /// (`-----BEGIN ...`). A secret: never printed.
    #[serde(default)]
    pub private_key: Option<Secret>,
    /// Password, tried when there is no key or the key is refused. A secret.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Run `write memory` after a change. Off by default: a switch that
    /// reboots while the agent is down then comes back with PoE on.
    #[serde(default = "default_save_config")]
    pub save_config: bool,
    /// Ports the driver must never touch (uplinks, the agent's own port),
    /// written as the switch prints them (`1/A1`, `24`).
    #[serde(default)]
    pub protected_ports: Vec<String>,
    /// Seconds PoE stays off during `state=cycle`, so the device really loses power.
    #[serde(default = "default_cycle_off_s")]
    pub cycle_off_s: u64,
    /// Bound on each CLI command's answer, in seconds (the manifest's
    /// `defaults.ssh.command_timeout_s` when the host sets none).
    #[serde(default = "default_command_timeout_s")]
    pub command_timeout_s: u64,
}

/// Every field of [`ArubaConfig`], flattened ones included, in the order
/// its unknown-field message lists them.
pub(crate) const FIELDS: &[&str] = &[
    "host",
    "port",
    "username",
    "private_key",
    "private_key_passphrase",
    "password",
    "known_hosts",
    "host_key_fingerprint",
    "trust_on_first_use",
    "save_config",
    "protected_ports",
    "cycle_off_s",
    "connect_timeout_s",
    "command_timeout_s",
    "dry_run_budget_s",
];

fn default_save_config() -> bool {
    false
}

fn default_cycle_off_s() -> u64 {
    5
}

fn default_command_timeout_s() -> u64 {
    20
}

impl ArubaConfig {
    /// Reads the config from a host's `connection` map.
    pub fn from_connection(connection: &Map<String, Value>) -> Result<ArubaConfig, DriverError> {
        crate::connection::decode(connection, FIELDS).map_err(|e| {
            DriverError::new(
                ErrorKind::ConfigError,
                format!("aruba.aoss connection: {e}"),
            )
        })
    }
}

/// The registry's constructor: reads the validated host's connection
/// (timeouts not set on the host come from the manifest's `defaults`, rate
/// limits and connect retries from the manifest) and binds a driver to it.
/// Touches no network.
pub fn build(host: &ValidatedHost) -> Result<Arc<dyn Driver>, DriverError> {
    let connection = crate::ssh::connection_with_defaults(host);
    let config = ArubaConfig::from_connection(&connection)?;
    let driver = ArubaDriver::new(host.id.clone(), config)?.with_manifest(host.manifest());
    Ok(Arc::new(driver))
}

/// The `aruba.aoss` driver bound to one switch.
///
/// # Guarantees
///
/// Those of [`Driver`], with what a CLI leaves open: a line reaches the
/// switch once sent, so when a call times out or is cancelled, the line in
/// flight may still take effect. The driver sends no further line after
/// that point (see [`SshClient::run`]), not even `end` or the second half of
/// a `cycle`: a cycle stopped during its pause leaves its ports with PoE
/// off. The engine finds out what happened by reading the table again,
/// never by sending the change again blindly.
#[derive(Debug)]
pub struct ArubaDriver {
    host_id: String,
    ctx: Ctx,
    protected: Vec<Port>,
    client: SshClient,
    dry_run_budget: Duration,
    /// Connect retries of read-only calls.
    read_attempts: Attempts,
}

/// What the blocking side needs, cheap to clone into it.
#[derive(Debug, Clone)]
struct Ctx {
    username: String,
    persist: Persist,
    limits: DeviceLimits,
    cycle_off: Duration,
    command_timeout: Duration,
    /// The SPEC §5 keys of this host, from the manifest it was built with.
    keys: HostKeys,
}

/// A parsed action: which table it reads and which change it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `aoss.poe.port set state=on|off|cycle` on `poe-port:<port>`.
    Poe(PoeState),
    /// `aoss.interface set admin=up|down` on `interface:<port>`.
    Admin(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoeState {
    On,
    Off,
    Cycle,
}

/// What happens to one target, decided from the live table.
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    /// The id is not a port of the right type.
    Invalid(String),
    /// The switch's table has no such port.
    Missing(Port),
    /// A port of the host's `protected_ports`: never touched, whatever its
    /// state (dry-run only; `execute` refuses the whole call).
    Protected(Port),
    /// Already in the desired state.
    NoOp { port: Port, state: String },
    /// Will change.
    Change {
        port: Port,
        from: String,
        to: String,
    },
}

/// A whole change over one action's targets.
#[derive(Debug, Clone, PartialEq)]
struct ChangePlan {
    decisions: Vec<Decision>,
    /// Compressed runs of the ports that change.
    runs: Vec<String>,
    /// Exact CLI lines (with [`CYCLE_PAUSE`] where a cycle pauses); empty when nothing changes.
    lines: Vec<String>,
}

/// One port's live state from a table.
#[derive(Debug, Clone, PartialEq)]
struct LiveState {
    state: String,
    details: Value,
}

impl Op {
    fn target_type(self) -> &'static str {
        match self {
            Op::Poe(_) => "poe-port",
            Op::Admin(_) => "interface",
        }
    }

    fn change(self) -> Change {
        match self {
            Op::Poe(PoeState::On) => Change::PoeOn,
            Op::Poe(PoeState::Off) => Change::PoeOff,
            Op::Poe(PoeState::Cycle) => Change::PoeCycle,
            Op::Admin(true) => Change::AdminUp,
            Op::Admin(false) => Change::AdminDown,
        }
    }

    /// The state a port ends in.
    fn desired(self) -> &'static str {
        match self {
            Op::Poe(PoeState::On | PoeState::Cycle) => "on",
            Op::Poe(PoeState::Off) => "off",
            Op::Admin(true) => "up",
            Op::Admin(false) => "down",
        }
    }

    /// The manifest capability whose `rate_limit` paces this op's calls.
    fn capability(self) -> &'static str {
        match self {
            Op::Poe(_) => "aoss.poe.port",
            Op::Admin(_) => "aoss.interface",
        }
    }

    fn is_noop(self, state: &str) -> bool {
        self != Op::Poe(PoeState::Cycle) && state == self.desired()
    }
}

impl ArubaDriver {
    /// Binds the driver to `host_id`; refuses a config that cannot work (no
    /// credential, no host key check, an unparsable protected port).
    pub fn new(
        host_id: impl Into<String>,
        config: ArubaConfig,
    ) -> Result<ArubaDriver, DriverError> {
        if config.ssh.connect_timeout_s == 0
            || config.command_timeout_s == 0
            || config.ssh.dry_run_budget_s == 0
        {
            return Err(DriverError::new(
                ErrorKind::ConfigError,
                "timeouts must be at least 1 s",
            ));
        }
        let protected = config
            .protected_ports
            .iter()
            .map(|p| {
                p.parse::<Port>().map_err(|e| {
                    DriverError::new(ErrorKind::ConfigError, format!("protected_ports: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = SshClient::new(config.ssh.client_config(
            config.private_key.as_ref().map(KeySource::from_config),
            config.password.clone(),
        ))?;
        let host_id = host_id.into();
        let driver = ArubaDriver {
            ctx: Ctx {
                keys: HostKeys::for_plugin(&host_id, PLUGIN_ID),
                username: config.ssh.username.clone(),
                persist: if config.save_config {
                    Persist::StartupConfig
                } else {
                    Persist::RunningConfig
                },
                limits: DeviceLimits::default(),
                cycle_off: Duration::from_secs(config.cycle_off_s),
                command_timeout: Duration::from_secs(config.command_timeout_s),
            },
            protected,
            client,
            dry_run_budget: Duration::from_secs(config.ssh.dry_run_budget_s),
            read_attempts: Attempts::Once,
            host_id,
        };
        Ok(match crate::manifest::shipped().get(PLUGIN_ID) {
            Some(manifest) => driver.with_manifest(manifest),
            None => driver,
        })
    }

    /// Takes the rate limits (per capability), the connect retries of
    /// read-only calls (`defaults.ssh`) and the idempotency key params from
    /// `manifest` instead of the shipped `aruba.aoss` manifest.
    pub fn with_manifest(mut self, manifest: &Manifest) -> ArubaDriver {
        self.ctx.limits = DeviceLimits::from_manifest(manifest);
        self.ctx.keys = HostKeys::from_manifest(self.host_id.clone(), manifest);
        self.read_attempts = match &manifest.defaults.ssh {
            Some(ssh) => Attempts::RetryConnect(ssh.clone()),
            None => Attempts::Once,
        };
        self
    }

    /// Connect budget plus `commands` CLI exchanges (and a cycle's pause).
    fn budget(&self, commands: u32, op: Option<Op>) -> Duration {
        let pause = if op == Some(Op::Poe(PoeState::Cycle)) {
            self.ctx.cycle_off
        } else {
            Duration::ZERO
        };
        self.client.config().connect_timeout + self.ctx.command_timeout * commands + pause
    }

    /// Refuses the whole call when any target is a protected port: nothing
    /// is sent to the switch, not even a login.
    fn refuse_protected(
        &self,
        ports: &[(String, Result<Port, String>)],
    ) -> Result<(), DriverError> {
        let hit: Vec<String> = ports
            .iter()
            .filter_map(|(_, p)| p.as_ref().ok())
            .filter(|p| self.protected.contains(p))
            .map(|p| p.to_string())
            .collect();
        if hit.is_empty() {
            return Ok(());
        }
        Err(DriverError::new(
            ErrorKind::ValidationError,
            format!(
                "refusing to touch protected port(s) {} of {} (host config protected_ports); nothing was sent",
                hit.join(", "),
                self.host_id
            ),
        ))
    }
}

/// The note of a discovery that read the PoE table but whose interface
/// table the switch rejected (a firmware or a restricted account).
const INTERFACES_MISSING: &str = "the switch rejected `show interfaces brief`: PoE ports only, \
     no interface targets (aoss.interface actions find none)";

#[async_trait]
impl Driver for ArubaDriver {
    fn plugin_id(&self) -> &str {
        PLUGIN_ID
    }

    fn host_id(&self) -> &str {
        &self.host_id
    }

    async fn discover(
        &self,
        _mode: RefreshMode,
        budget: Duration,
    ) -> Result<Vec<Target>, DriverError> {
        let ctx = self.ctx.clone();
        let host_id = self.host_id.clone();
        let protected = self.protected.clone();
        // Protected ports carry `attrs.protected = true`, so compile can
        // refuse a selector that names one (SPEC §4 blocker) before any
        // dry-run reaches the switch.
        let mark = move |port: &Port, attrs: &mut BTreeMap<String, Value>| {
            if protected.contains(port) {
                attrs.insert("protected".to_owned(), json!(true));
            }
        };
        self.client
            .run(budget, self.read_attempts.clone(), move |s| {
                // One read session, one slot: discovery serves every capability.
                s.wait_for("rate limit", ctx.limits.acquire_any())?;
                let mut cli = open_cli(&ctx, s)?;
                let mut targets = Vec::new();
                // A switch without PoE rejects the command; it then has no PoE ports.
                if let Ok(text) = cli.run("show power-over-ethernet brief") {
                    for row in parse_poe_brief(&text) {
                        let mut attrs = BTreeMap::new();
                        attrs.insert("draw_w".to_owned(), json!(row.draw_w));
                        attrs.insert("poe_status".to_owned(), json!(row.status));
                        attrs.insert("priority".to_owned(), json!(row.priority));
                        attrs.insert("class".to_owned(), json!(row.class));
                        mark(&row.port, &mut attrs);
                        targets.push(Target {
                            target_type: "poe-port".into(),
                            id: row.port.to_string(),
                            name: None,
                            status: Some(if row.enabled { "on" } else { "off" }.into()),
                            labels: BTreeMap::new(),
                            attrs,
                        });
                    }
                }
                let text = match cli.run("show interfaces brief") {
                    Ok(text) => text,
                    // The PoE table was read: a PoE-only policy needs no
                    // more. Keep that partial inventory (SPEC §4: a partial
                    // refresh is a warning) and say what is missing.
                    Err(err @ CliError::Rejected { .. }) if !targets.is_empty() => {
                        tracing::warn!(
                            host = %host_id,
                            error = %err,
                            "the switch rejected `show interfaces brief`: the inventory has its \
                             PoE ports but no interface targets (aoss.interface actions will \
                             find none)"
                        );
                        return Ok((targets, Some(INTERFACES_MISSING)));
                    }
                    Err(err) => return Err(cli_error(err)),
                };
                for row in parse_interfaces_brief(&text) {
                    let mut attrs = BTreeMap::new();
                    attrs.insert(
                        "link".to_owned(),
                        json!(if row.link_up { "up" } else { "down" }),
                    );
                    attrs.insert("port_type".to_owned(), json!(row.port_type));
                    mark(&row.port, &mut attrs);
                    targets.push(Target {
                        target_type: "interface".into(),
                        id: row.port.to_string(),
                        name: None,
                        status: Some(if row.enabled { "up" } else { "down" }.into()),
                        labels: BTreeMap::new(),
                        attrs,
                    });
                }
                Ok::<_, DriverError>((targets, None))
            })
            .await
            .map(|(targets, missing)| {
                if let Some(note) = missing {
                    crate::notes::report_partial(note);
                }
                targets
            })
    }

    async fn dry_run(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<DryRunAnswer>, DriverError> {
        let op = parse_action(action)?;
        let ports = parse_targets(op, targets);
        // A protected port is refused on its own answer and the others are
        // still planned; with nothing else to plan, nothing is sent at all.
        let plannable = ports
            .iter()
            .any(|(_, p)| p.as_ref().is_ok_and(|p| !self.protected.contains(p)));
        if !plannable {
            self.refuse_protected(&ports)?;
        }
        let protected = self.protected.clone();
        let ctx = self.ctx.clone();
        let action = action.clone();
        self.client
            .run(self.dry_run_budget, self.read_attempts.clone(), move |s| {
                let mut cli = open_cli(&ctx, s)?;
                let manager = cli.prompt.level == Level::Manager;
                // The table read is the dry-run's one device call.
                s.wait_for("rate limit", ctx.limits.acquire(op.capability()))?;
                let live = read_live(&mut cli, op)?;
                let plan = plan_change(op, &ports, &protected, &live, ctx.persist);
                Ok::<_, DriverError>(dry_run_answers(
                    &action, op, s, &ctx, manager, &ports, &live, &plan,
                ))
            })
            .await
    }

    async fn execute(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<ExecOutcome>, DriverError> {
        let op = parse_action(action)?;
        let ports = parse_targets(op, targets);
        self.refuse_protected(&ports)?;
        let ctx = self.ctx.clone();
        self.client
            .run(self.budget(12, Some(op)), Attempts::Once, move |s| {
                execute_blocking(&ctx, s, op, &ports)
            })
            .await
    }

    async fn test_connection(&self) -> Result<ConnectionReport, DriverError> {
        let started = Instant::now();
        let ctx = self.ctx.clone();
        let details = self
            .client
            .run(self.budget(2, None), self.read_attempts.clone(), move |s| {
                s.wait_for("rate limit", ctx.limits.acquire_any())?;
                let cli = open_cli(&ctx, s)?;
                let mut details = Map::new();
                details.insert("ssh_banner".into(), json!(s.banner));
                details.insert("host_key".into(), s.host_key.to_json());
                details.insert("username".into(), json!(ctx.username));
                details.insert("hostname".into(), json!(cli.prompt.hostname));
                let level = match cli.prompt.level {
                    Level::Manager => "manager",
                    Level::Operator => "operator",
                };
                details.insert("level".into(), json!(level));
                Ok::<_, DriverError>(details)
            })
            .await?;
        let ok = details.get("level") == Some(&json!("manager"));
        Ok(ConnectionReport {
            ok,
            details,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }
}

fn parse_action(action: &Action) -> Result<Op, DriverError> {
    let invalid = |m: String| DriverError::new(ErrorKind::ValidationError, m);
    let param = |name: &str| action.params.get(name).and_then(Value::as_str);
    match (action.capability.as_str(), action.verb.as_str()) {
        ("aoss.poe.port", "set") => match param("state") {
            Some("on") => Ok(Op::Poe(PoeState::On)),
            Some("off") => Ok(Op::Poe(PoeState::Off)),
            Some("cycle") => Ok(Op::Poe(PoeState::Cycle)),
            _ => Err(invalid(
                "aoss.poe.port set needs state: on, off or cycle".into(),
            )),
        },
        ("aoss.interface", "set") => match param("admin") {
            Some("up") => Ok(Op::Admin(true)),
            Some("down") => Ok(Op::Admin(false)),
            _ => Err(invalid("aoss.interface set needs admin: up or down".into())),
        },
        (cap @ ("aoss.poe.port" | "aoss.interface"), verb) => {
            Err(invalid(format!("{cap} has no verb `{verb}`")))
        }
        (cap, _) => Err(invalid(format!("aruba.aoss has no capability `{cap}`"))),
    }
}

/// Parses `poe-port:1/A1` / `interface:1/A1` ids; the error says why an id is refused.
fn parse_targets(op: Op, targets: &[String]) -> Vec<(String, Result<Port, String>)> {
    targets
        .iter()
        .map(|t| {
            let port = match t.split_once(':') {
                Some((ty, id)) if ty == op.target_type() => {
                    id.parse::<Port>().map_err(|e| e.to_string())
                }
                _ => Err(format!(
                    "expected a `{}:<port>` target, got `{t}`",
                    op.target_type()
                )),
            };
            (t.clone(), port)
        })
        .collect()
}

/// Decides every target against the live table and builds the exact lines.
fn plan_change(
    op: Op,
    ports: &[(String, Result<Port, String>)],
    protected: &[Port],
    live: &HashMap<Port, LiveState>,
    persist: Persist,
) -> ChangePlan {
    let decisions: Vec<Decision> = ports
        .iter()
        .map(|(_, port)| match port {
            Err(why) => Decision::Invalid(why.clone()),
            Ok(port) if protected.contains(port) => Decision::Protected(*port),
            Ok(port) => match live.get(port) {
                None => Decision::Missing(*port),
                Some(l) if op.is_noop(&l.state) => Decision::NoOp {
                    port: *port,
                    state: l.state.clone(),
                },
                Some(l) => Decision::Change {
                    port: *port,
                    from: l.state.clone(),
                    to: op.desired().into(),
                },
            },
        })
        .collect();
    let changing: Vec<Port> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Change { port, .. } => Some(*port),
            _ => None,
        })
        .collect();
    let runs = compress_runs(&changing);
    let lines = if runs.is_empty() {
        Vec::new()
    } else {
        change_lines(&runs, op.change(), persist)
    };
    ChangePlan {
        decisions,
        runs,
        lines,
    }
}

/// Opens the CLI; every read and write on it waits at most the command
/// timeout and never past the call's deadline (see [`Shell`]).
fn open_cli(ctx: &Ctx, s: &mut SshSession) -> Result<Cli<Shell>, DriverError> {
    let deadline = Instant::now() + s.remaining("switch cli")?;
    let shell = s.shell(PTY_COLS, PTY_ROWS, ctx.command_timeout)?;
    Cli::open(shell, deadline).map_err(cli_error)
}

/// Reads the table the action needs: PoE states (`on`/`off`) or admin states (`up`/`down`).
fn read_live<S: std::io::Read + std::io::Write>(
    cli: &mut Cli<S>,
    op: Op,
) -> Result<HashMap<Port, LiveState>, DriverError> {
    Ok(match op {
        Op::Poe(_) => {
            let text = cli
                .run("show power-over-ethernet brief")
                .map_err(cli_error)?;
            parse_poe_brief(&text)
                .into_iter()
                .map(|r| {
                    let state = if r.enabled { "on" } else { "off" };
                    let details = json!({
                        "poe": state, "status": r.status, "draw_w": r.draw_w, "priority": r.priority,
                    });
                    (
                        r.port,
                        LiveState {
                            state: state.into(),
                            details,
                        },
                    )
                })
                .collect()
        }
        Op::Admin(_) => {
            let text = cli.run("show interfaces brief").map_err(cli_error)?;
            parse_interfaces_brief(&text)
                .into_iter()
                .map(|r| {
                    let state = if r.enabled { "up" } else { "down" };
                    let link = if r.link_up { "up" } else { "down" };
                    (
                        r.port,
                        LiveState {
                            state: state.into(),
                            details: json!({ "admin": state, "link": link }),
                        },
                    )
                })
                .collect()
        }
    })
}

/// Maps a CLI failure onto §7: a rejected command is `not_found` when the
/// switch says the port or module is missing, else `validation_error`.
fn cli_error(err: CliError) -> DriverError {
    let kind = match &err {
        CliError::Rejected { message, .. } if message.starts_with("Module not present") => {
            ErrorKind::NotFound
        }
        CliError::Rejected { .. } => ErrorKind::ValidationError,
        CliError::Timeout { .. } => ErrorKind::Timeout,
        CliError::Io { source, .. } if source.kind() == std::io::ErrorKind::TimedOut => {
            ErrorKind::Timeout
        }
        CliError::Closed { .. } | CliError::Io { .. } => ErrorKind::NetworkError,
    };
    DriverError::new(kind, err.to_string()).with_source(err)
}

fn preview(lines: &[String]) -> Vec<Value> {
    lines.iter().map(|l| json!(l)).collect()
}

#[allow(clippy::too_many_arguments)]
fn dry_run_answers(
    action: &Action,
    op: Op,
    s: &SshSession,
    ctx: &Ctx,
    manager: bool,
    ports: &[(String, Result<Port, String>)],
    live: &HashMap<Port, LiveState>,
    plan: &ChangePlan,
) -> Vec<DryRunAnswer> {
    let base = vec![
        Precondition {
            check: "reachable".into(),
            ok: true,
            details: Some(json!({ "ssh_banner": s.banner })),
        },
        Precondition {
            check: "auth".into(),
            ok: true,
            details: Some(json!({ "username": ctx.username })),
        },
        Precondition {
            check: "host_key".into(),
            ok: true,
            details: Some(s.host_key.to_json()),
        },
        Precondition {
            check: "manager_level".into(),
            ok: manager,
            details: None,
        },
    ];
    let changes = plan
        .decisions
        .iter()
        .filter(|d| matches!(d, Decision::Change { .. }))
        .count();
    ports
        .iter()
        .zip(&plan.decisions)
        .map(|((target, _), decision)| {
            let key = ctx.keys.key(action, target);
            let mut pre = base.clone();
            let (ok, from, to, summary, reason, lines) = match decision {
                Decision::Invalid(why) => {
                    pre.push(Precondition {
                        check: "target_valid".into(),
                        ok: false,
                        details: Some(json!({ "reason": why })),
                    });
                    (
                        false,
                        None,
                        None,
                        "target refused".to_owned(),
                        Some(why.clone()),
                        &[][..],
                    )
                }
                Decision::Protected(port) => {
                    let why = format!(
                        "port {port} is protected (host config protected_ports): it is never touched"
                    );
                    pre.push(Precondition {
                        check: "not_protected".into(),
                        ok: false,
                        details: Some(json!({ "port": port.to_string() })),
                    });
                    (
                        false,
                        None,
                        None,
                        format!("port {port} is protected"),
                        Some(why),
                        &[][..],
                    )
                }
                Decision::Missing(port) => {
                    pre.push(Precondition {
                        check: "port_present".into(),
                        ok: false,
                        details: None,
                    });
                    let why = format!("port {port} is not in the switch's table (not_found)");
                    (
                        false,
                        None,
                        None,
                        format!("port {port} not found"),
                        Some(why),
                        &[][..],
                    )
                }
                Decision::NoOp { port, state } => {
                    pre.push(present_check(live, port, op));
                    (
                        true,
                        Some(state.clone()),
                        Some(state.clone()),
                        format!("port {port} is already {state}: no change"),
                        Some("already in the desired state".to_owned()),
                        &[][..],
                    )
                }
                Decision::Change { port, from, to } => {
                    pre.push(present_check(live, port, op));
                    let summary = format!(
                        "{changes} port(s) would change ({}); port {port} {from} -> {to}",
                        plan.runs.join(",")
                    );
                    (
                        true,
                        Some(from.clone()),
                        Some(to.clone()),
                        summary,
                        None,
                        &plan.lines[..],
                    )
                }
            };
            let ok = ok && (manager || lines.is_empty());
            let reason = if !manager && !lines.is_empty() {
                Some(
                    "logged in at operator level (`>`): a manager login is needed to change ports"
                        .to_owned(),
                )
            } else {
                reason
            };
            DryRunAnswer {
                ok,
                severity: if ok { Severity::Info } else { Severity::Error },
                idempotency_key: key,
                preconditions: pre,
                plan: Plan {
                    kind: "cli".into(),
                    preview: preview(lines),
                },
                effects: Effects {
                    summary,
                    per_target: vec![TargetEffect {
                        id: target.clone(),
                        from,
                        to,
                    }],
                },
                reason,
            }
        })
        .collect()
}

fn present_check(live: &HashMap<Port, LiveState>, port: &Port, op: Op) -> Precondition {
    let check = match op {
        Op::Poe(_) => "poe_state",
        Op::Admin(_) => "admin_state",
    };
    Precondition {
        check: check.into(),
        ok: true,
        details: live.get(port).map(|l| l.details.clone()),
    }
}

/// How one target ended.
#[derive(Debug, Clone, Copy)]
enum Status {
    Changed,
    AlreadyDesired,
    Failed(ErrorKind),
}

fn outcome(
    target: &str,
    status: Status,
    reason: Option<String>,
    evidence: &Map<String, Value>,
) -> ExecOutcome {
    let (ok, severity, code) = match status {
        Status::Changed => (true, Severity::Info, "driver.ok".to_owned()),
        Status::AlreadyDesired => (true, Severity::Info, "driver.already_desired".to_owned()),
        Status::Failed(kind) => (false, Severity::Error, format!("driver.{}", kind.as_str())),
    };
    ExecOutcome {
        target: target.to_owned(),
        ok,
        severity,
        code,
        reason,
        evidence: evidence.clone(),
        duration_ms: 0,
        result_state: None,
    }
}

fn execute_blocking(
    ctx: &Ctx,
    s: &mut SshSession,
    op: Op,
    ports: &[(String, Result<Port, String>)],
) -> Result<Vec<ExecOutcome>, DriverError> {
    let started = Instant::now();
    let capability = op.capability();
    let mut cli = open_cli(ctx, s)?;
    // Three device calls at most, each taking a slot: the table read, the
    // change batch and the read-back.
    s.wait_for("rate limit", ctx.limits.acquire(capability))?;
    let live = read_live(&mut cli, op)?;
    // Protected ports never get here: `execute` refuses the call first.
    let plan = plan_change(op, ports, &[], &live, ctx.persist);
    if !plan.lines.is_empty() && cli.prompt.level != Level::Manager {
        return Err(DriverError::new(
            ErrorKind::AuthError,
            "logged in at operator level (`>`): a manager login is needed to change ports",
        ));
    }
    let mut evidence = Map::new();
    evidence.insert("host_key".into(), s.host_key.to_json());
    evidence.insert("runs".into(), json!(plan.runs));
    let mut sent = Vec::new();
    let mut failed: Option<DriverError> = None;
    // The session is out of step with the switch after a timeout or a close:
    // nothing more is sent on it, not even the read-back.
    let mut session_lost = false;
    if !plan.lines.is_empty() {
        // The change batch is one device call.
        if let Err(err) = s.wait_for("rate limit", ctx.limits.acquire(capability)) {
            failed = Some(err.into());
        }
    }
    for line in &plan.lines {
        if failed.is_some() {
            break;
        }
        if line == CYCLE_PAUSE {
            // Ends early when the deadline comes first or the caller leaves:
            // then the rest of the cycle is not sent (see the type's guarantees).
            if let Err(err) = s.pause(ctx.cycle_off, "the pause of a poe cycle") {
                failed = Some(err.into());
                session_lost = true;
            }
            continue;
        }
        sent.push(line.clone());
        if let Err(err) = cli.run(line) {
            // Stop at the first rejection: a port command must never land in
            // the wrong context. Leave config mode, best effort.
            session_lost = matches!(
                err,
                CliError::Timeout { .. } | CliError::Closed { .. } | CliError::Io { .. }
            );
            if !session_lost {
                let _ = cli.run("end");
                sent.push("end".into());
            }
            failed = Some(cli_error(err));
        }
    }
    evidence.insert("cli".into(), json!(sent));
    evidence.insert(
        "write_memory".into(),
        json!(failed.is_none() && sent.iter().any(|l| l == "write memory")),
    );
    // Read back what the switch now says (also after a rejection: it may
    // have applied part of the change).
    let after = if session_lost || plan.lines.is_empty() {
        None
    } else {
        s.wait_for("rate limit", ctx.limits.acquire(capability))
            .ok()
            .and_then(|()| read_live(&mut cli, op).ok())
    };
    let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let outcomes = ports
        .iter()
        .zip(&plan.decisions)
        .map(|((target, _), decision)| {
            let mut out = match decision {
                Decision::Invalid(why) => outcome(
                    target,
                    Status::Failed(ErrorKind::ValidationError),
                    Some(why.clone()),
                    &evidence,
                ),
                Decision::Protected(port) => outcome(
                    target,
                    Status::Failed(ErrorKind::ValidationError),
                    Some(format!(
                        "port {port} is protected (host config protected_ports)"
                    )),
                    &evidence,
                ),
                Decision::Missing(port) => outcome(
                    target,
                    Status::Failed(ErrorKind::NotFound),
                    Some(format!("port {port} is not in the switch's table")),
                    &evidence,
                ),
                Decision::NoOp { port, state } => {
                    let mut o = outcome(
                        target,
                        Status::AlreadyDesired,
                        Some(format!("port {port} is already {state}")),
                        &evidence,
                    );
                    o.result_state = Some(state.clone());
                    o
                }
                Decision::Change { port, from, to } => {
                    let now = after.as_ref().and_then(|a| a.get(port));
                    let mut ev = evidence.clone();
                    ev.insert("from".into(), json!(from));
                    if let Some(l) = now {
                        ev.insert("after".into(), l.details.clone());
                    }
                    let mut o = match (&failed, now) {
                        (Some(err), _) => outcome(
                            target,
                            Status::Failed(err.kind),
                            Some(err.message.clone()),
                            &ev,
                        ),
                        (None, Some(l)) if l.state == *to => {
                            outcome(target, Status::Changed, None, &ev)
                        }
                        (None, Some(l)) => outcome(
                            target,
                            Status::Failed(ErrorKind::ServerError),
                            Some(format!(
                                "port {port} is {} after the change, expected {to}",
                                l.state
                            )),
                            &ev,
                        ),
                        (None, None) => outcome(
                            target,
                            Status::Changed,
                            Some("change sent; the state could not be read back".into()),
                            &ev,
                        ),
                    };
                    o.result_state = now.map(|l| l.state.clone());
                    o
                }
            };
            out.duration_ms = elapsed;
            out
        })
        .collect();
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(states: &[(&str, &str)]) -> HashMap<Port, LiveState> {
        states
            .iter()
            .map(|(p, s)| {
                (
                    p.parse().unwrap(),
                    LiveState {
                        state: (*s).into(),
                        details: json!({}),
                    },
                )
            })
            .collect()
    }

    fn targets(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_rectangle_compresses_into_runs_that_stay_inside_each_slot() {
        let ids: Vec<String> = ["A", "B"]
            .iter()
            .flat_map(|s| (1..=4).map(move |n| format!("poe-port:1/{s}{n}")))
            .collect();
        let table: Vec<(String, &str)> = ids.iter().map(|t| (t[9..].to_owned(), "on")).collect();
        let table: Vec<(&str, &str)> = table.iter().map(|(p, s)| (p.as_str(), *s)).collect();
        let op = Op::Poe(PoeState::Off);
        let plan = plan_change(
            op,
            &parse_targets(op, &ids),
            &[],
            &live(&table),
            Persist::RunningConfig,
        );
        assert_eq!(plan.runs, ["1/A1-1/A4", "1/B1-1/B4"]);
        assert_eq!(plan.lines[1], "interface 1/A1-1/A4,1/B1-1/B4");
    }

    #[test]
    fn no_op_missing_and_invalid_targets_stay_out_of_the_lines() {
        let op = Op::Poe(PoeState::On);
        let ids = targets(&[
            "poe-port:1",
            "poe-port:2",
            "poe-port:9",
            "interface:3",
            "poe-port:x",
        ]);
        let plan = plan_change(
            op,
            &parse_targets(op, &ids),
            &[],
            &live(&[("1", "on"), ("2", "off")]),
            Persist::StartupConfig,
        );
        assert!(matches!(plan.decisions[0], Decision::NoOp { .. }));
        assert!(matches!(plan.decisions[1], Decision::Change { .. }));
        assert!(matches!(plan.decisions[2], Decision::Missing(_)));
        assert!(matches!(plan.decisions[3], Decision::Invalid(_)));
        assert!(matches!(plan.decisions[4], Decision::Invalid(_)));
        assert_eq!(
            plan.lines,
            [
                "configure",
                "interface 2",
                "power-over-ethernet",
                "exit",
                "end",
                "write memory"
            ]
        );
    }

    #[test]
    fn a_cycle_is_never_a_no_op() {
        let op = Op::Poe(PoeState::Cycle);
        let plan = plan_change(
            op,
            &parse_targets(op, &targets(&["poe-port:1"])),
            &[],
            &live(&[("1", "on")]),
            Persist::RunningConfig,
        );
        assert_eq!(
            plan.lines,
            [
                "configure",
                "interface 1",
                "no power-over-ethernet",
                CYCLE_PAUSE,
                "power-over-ethernet",
                "exit",
                "end"
            ]
        );
    }

    #[test]
    fn actions_need_a_known_capability_and_a_valid_param() {
        let action = |cap: &str, params: Value| Action {
            capability: cap.into(),
            verb: "set".into(),
            params: params.as_object().cloned().unwrap_or_default(),
        };
        assert_eq!(
            parse_action(&action("aoss.poe.port", json!({"state": "off"}))).unwrap(),
            Op::Poe(PoeState::Off)
        );
        assert_eq!(
            parse_action(&action("aoss.interface", json!({"admin": "down"}))).unwrap(),
            Op::Admin(false)
        );
        assert!(parse_action(&action("aoss.poe.port", json!({"state": "maybe"}))).is_err());
        assert!(parse_action(&action("aoss.vlan", json!({}))).is_err());
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let map = json!({
            "host": "sw1", "username": "manager", "password": "hunter2-pw",
            "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nkey-body\n", "trust_on_first_use": true,
        });
        let config = ArubaConfig::from_connection(map.as_object().unwrap()).unwrap();
        let driver = ArubaDriver::new("sw1", config.clone()).unwrap();
        let text = format!("{config:?} {driver:?}");
        assert!(
            !text.contains("hunter2-pw") && !text.contains("key-body"),
            "{text}"
        );
    }

    #[test]
    fn an_unparsable_protected_port_is_a_config_error() {
        let map = json!({
            "host": "sw1", "username": "manager", "password": "pw", "trust_on_first_use": true,
            "protected_ports": ["1/a1"],
        });
        let config = ArubaConfig::from_connection(map.as_object().unwrap()).unwrap();
        assert_eq!(
            ArubaDriver::new("sw1", config).unwrap_err().kind,
            ErrorKind::ConfigError
        );
    }
}
