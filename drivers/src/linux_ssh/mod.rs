//! The `linux.ssh` driver: power off or reboot a Linux host and start, stop
//! or restart its services, over SSH with key login.
//!
//! Every remote command comes from a per-host template (`commands` in the
//! host config), so an operator can adapt it (`shutdown -P now`, an init
//! system other than systemd) and tests can run a harmless stand-in. Target
//! ids are validated and shell-quoted before they reach a template; nothing
//! a policy author writes becomes shell syntax. Dry-runs read (reachability,
//! login, `sudo -n true`, `command -v`, the service's state) and never run a
//! changing command.
//!
//! Every remote command of an action is one device call: it waits for a
//! slot of the capability's `rate_limit` first ([`DeviceLimits`]).
//! Discovery and the connection test are one read session each and take one
//! slot of the strictest limit. Read-only calls retry a failed connect with
//! the manifest's `defaults.ssh` retries and backoff when the retry fits in
//! their budget; a dry-run as a whole is bounded by `dry_run_budget_s`.
//! Execution never retries.

pub mod commands;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use inventory::model::Target;
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
use crate::ssh::{tail, Attempts, ExecResult, KeySource, SshClient, SshError, SshSession};

use commands::{delayed, parse_list_units, parse_state, program_of, render, validate_unit, RunAs};

/// The manifest id this driver implements.
pub const PLUGIN_ID: &str = "linux.ssh";

/// How much of stderr and stdout goes into evidence and reasons.
const TAIL_CHARS: usize = 800;

/// Connection config of a `linux.ssh` host (the host's `connection` map).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinuxSshConfig {
    /// Address, login, host key check, connect timeout and dry-run budget.
    #[serde(flatten)]
    pub ssh: SshSettings,
    /// Private key: a path readable by the agent, or the key text itself
    /// (`-----BEGIN ...`). A secret: never printed.
    pub private_key: Secret,
    /// Prefix changing commands with `sudo -n` (passwordless sudo required).
    #[serde(default = "default_sudo")]
    pub sudo: bool,
    /// Remote command templates; see [`LinuxCommands`].
    #[serde(default)]
    pub commands: LinuxCommands,
    /// Services to report in discovery; when absent, discovery lists them
    /// with `commands.list_services`.
    #[serde(default)]
    pub services: Option<Vec<String>>,
    /// Bound on each remote command, in seconds (the manifest's
    /// `defaults.ssh.command_timeout_s` when the host sets none).
    #[serde(default = "default_command_timeout_s")]
    pub command_timeout_s: u64,
}

/// Every field of [`LinuxSshConfig`], flattened ones included, in the order
/// its unknown-field message lists them.
pub(crate) const FIELDS: &[&str] = &[
    "host",
    "port",
    "username",
    "private_key",
    "private_key_passphrase",
    "known_hosts",
    "host_key_fingerprint",
    "trust_on_first_use",
    "sudo",
    "commands",
    "services",
    "connect_timeout_s",
    "command_timeout_s",
    "dry_run_budget_s",
];

/// Remote command templates. `{service}` is the validated, shell-quoted
/// unit name, `{delay_s}` the power delay in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinuxCommands {
    /// Powers the host off. Without `{delay_s}`, a delay runs it in the background after a sleep.
    #[serde(default = "default_poweroff")]
    pub poweroff: String,
    /// Reboots the host (delay as for `poweroff`).
    #[serde(default = "default_reboot")]
    pub reboot: String,
    /// Starts a service.
    #[serde(default = "default_service_start")]
    pub service_start: String,
    /// Stops a service.
    #[serde(default = "default_service_stop")]
    pub service_stop: String,
    /// Restarts a service.
    #[serde(default = "default_service_restart")]
    pub service_restart: String,
    /// Prints a service's state (`active`, `inactive`, `failed`...) as its first word; run without sudo.
    #[serde(default = "default_service_status")]
    pub service_status: String,
    /// Lists services as `systemctl list-units --plain --no-legend` does, for discovery.
    #[serde(default = "default_list_services")]
    pub list_services: String,
}

fn default_sudo() -> bool {
    false
}

fn default_command_timeout_s() -> u64 {
    30
}

fn default_poweroff() -> String {
    "systemctl poweroff".into()
}

fn default_reboot() -> String {
    "systemctl reboot".into()
}

fn default_service_start() -> String {
    "systemctl start {service}".into()
}

fn default_service_stop() -> String {
    "systemctl stop {service}".into()
}

fn default_service_restart() -> String {
    "systemctl restart {service}".into()
}

fn default_service_status() -> String {
    "systemctl is-active {service}".into()
}

fn default_list_services() -> String {
    "systemctl list-units --type=service --all --no-legend --plain".into()
}

impl Default for LinuxCommands {
    fn default() -> Self {
        LinuxCommands {
            poweroff: default_poweroff(),
            reboot: default_reboot(),
            service_start: default_service_start(),
            service_stop: default_service_stop(),
            service_restart: default_service_restart(),
            service_status: default_service_status(),
            list_services: default_list_services(),
        }
    }
}

impl LinuxSshConfig {
    /// Reads the config from a host's `connection` map.
    pub fn from_connection(connection: &Map<String, Value>) -> Result<LinuxSshConfig, DriverError> {
        crate::connection::decode(connection, FIELDS).map_err(|e| {
            DriverError::new(ErrorKind::ConfigError, format!("linux.ssh connection: {e}"))
        })
    }
}

/// The registry's constructor: reads the validated host's connection
/// (timeouts not set on the host come from the manifest's `defaults`, rate
/// limits and connect retries from the manifest) and binds a driver to it.
/// Touches no network.
pub fn build(host: &ValidatedHost) -> Result<Arc<dyn Driver>, DriverError> {
    let connection = crate::ssh::connection_with_defaults(host);
    let config = LinuxSshConfig::from_connection(&connection)?;
    let driver = LinuxSshDriver::new(host.id.clone(), config)?.with_manifest(host.manifest());
    Ok(Arc::new(driver))
}

/// The `linux.ssh` driver bound to one host.
///
/// # Guarantees
///
/// Those of [`Driver`], with what SSH leaves open: a command runs on the
/// host once sent, so when a call times out or is cancelled, the command in
/// flight may still complete there (a service may still stop, a power off
/// may still happen). The driver sends nothing after that point (see
/// [`SshClient::run`]); the engine finds out what happened by reading
/// state, never by running the command again blindly.
#[derive(Debug)]
pub struct LinuxSshDriver {
    host_id: String,
    ctx: Ctx,
    client: SshClient,
    dry_run_budget: Duration,
    /// Connect retries of read-only calls.
    read_attempts: Attempts,
}

/// What the blocking side needs, cheap to clone into it.
#[derive(Debug, Clone)]
struct Ctx {
    host_id: String,
    run_as: RunAs,
    limits: DeviceLimits,
    commands: LinuxCommands,
    services: Option<Vec<String>>,
    username: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// The SPEC §5 keys of this host, from the manifest it was built with.
    keys: HostKeys,
}

/// A parsed action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Power { reboot: bool, delay_s: u64 },
    Service(ServiceVerb),
}

/// Whether a remote command takes its own rate-limit slot.
#[derive(Debug, Clone, Copy)]
enum Slot<'a> {
    /// A device call of this capability: wait for a slot first.
    Of(&'a str),
    /// Part of a read session that took one slot when it began (discovery).
    Taken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServiceVerb {
    Start,
    Stop,
    Restart,
}

impl Op {
    /// The manifest capability whose `rate_limit` paces this op's commands.
    fn capability(self) -> &'static str {
        match self {
            Op::Power { .. } => "host.power",
            Op::Service(_) => "host.service",
        }
    }
}

impl ServiceVerb {
    fn as_str(self) -> &'static str {
        match self {
            ServiceVerb::Start => "start",
            ServiceVerb::Stop => "stop",
            ServiceVerb::Restart => "restart",
        }
    }

    /// The state the unit should end in.
    fn desired(self) -> &'static str {
        match self {
            ServiceVerb::Start | ServiceVerb::Restart => "active",
            ServiceVerb::Stop => "inactive",
        }
    }

    /// Whether a unit in `state` is already where this verb would put it.
    fn is_noop(self, state: &str) -> bool {
        match self {
            ServiceVerb::Start => state == "active",
            ServiceVerb::Stop => matches!(state, "inactive" | "failed"),
            ServiceVerb::Restart => false,
        }
    }
}

impl LinuxSshDriver {
    /// Binds the driver to `host_id`; refuses a config that cannot work (no
    /// host key check, a malformed pin, zero timeouts).
    pub fn new(
        host_id: impl Into<String>,
        config: LinuxSshConfig,
    ) -> Result<LinuxSshDriver, DriverError> {
        let host_id = host_id.into();
        if config.ssh.connect_timeout_s == 0
            || config.command_timeout_s == 0
            || config.ssh.dry_run_budget_s == 0
        {
            return Err(DriverError::new(
                ErrorKind::ConfigError,
                "timeouts must be at least 1 s",
            ));
        }
        if let Some(services) = &config.services {
            for unit in services {
                validate_unit(unit).map_err(|e| {
                    DriverError::new(ErrorKind::ConfigError, format!("services: {e}"))
                })?;
            }
        }
        let client = SshClient::new(
            config
                .ssh
                .client_config(Some(KeySource::from_config(&config.private_key)), None),
        )?;
        let driver = LinuxSshDriver {
            ctx: Ctx {
                host_id: host_id.clone(),
                run_as: if config.sudo {
                    RunAs::Sudo
                } else {
                    RunAs::LoginUser
                },
                limits: DeviceLimits::default(),
                commands: config.commands.clone(),
                services: config.services.clone(),
                username: config.ssh.username.clone(),
                connect_timeout: Duration::from_secs(config.ssh.connect_timeout_s),
                command_timeout: Duration::from_secs(config.command_timeout_s),
                keys: HostKeys::for_plugin(&host_id, PLUGIN_ID),
            },
            host_id,
            client,
            dry_run_budget: Duration::from_secs(config.ssh.dry_run_budget_s),
            read_attempts: Attempts::Once,
        };
        Ok(match crate::manifest::shipped().get(PLUGIN_ID) {
            Some(manifest) => driver.with_manifest(manifest),
            None => driver,
        })
    }

    /// Takes the rate limits (per capability), the connect retries of
    /// read-only calls (`defaults.ssh`) and the idempotency key params from
    /// `manifest` instead of the shipped `linux.ssh` manifest.
    pub fn with_manifest(mut self, manifest: &Manifest) -> LinuxSshDriver {
        self.ctx.limits = DeviceLimits::from_manifest(manifest);
        self.ctx.keys = HostKeys::from_manifest(self.host_id.clone(), manifest);
        self.read_attempts = match &manifest.defaults.ssh {
            Some(ssh) => Attempts::RetryConnect(ssh.clone()),
            None => Attempts::Once,
        };
        self
    }

    /// Connect budget plus `commands` command timeouts.
    fn budget(&self, commands: usize) -> Duration {
        let n = u32::try_from(commands).unwrap_or(u32::MAX).min(1000);
        self.ctx.connect_timeout + self.ctx.command_timeout * n
    }
}

#[async_trait]
impl Driver for LinuxSshDriver {
    fn plugin_id(&self) -> &str {
        PLUGIN_ID
    }

    fn host_id(&self) -> &str {
        &self.host_id
    }

    async fn discover(
        &self,
        mode: RefreshMode,
        budget: Duration,
    ) -> Result<Vec<Target>, DriverError> {
        let ctx = self.ctx.clone();
        let targets = self
            .client
            .run(budget, self.read_attempts.clone(), move |s| {
                discover_blocking(&ctx, s, mode)
            })
            .await?;
        Ok(targets)
    }

    async fn dry_run(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<DryRunAnswer>, DriverError> {
        let op = parse_action(action)?;
        let ctx = self.ctx.clone();
        let (action, targets) = (action.clone(), targets.to_vec());
        Ok(self
            .client
            .run(self.dry_run_budget, self.read_attempts.clone(), move |s| {
                dry_run_blocking(&ctx, s, op, &action, &targets)
            })
            .await?)
    }

    async fn execute(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<ExecOutcome>, DriverError> {
        let op = parse_action(action)?;
        let ctx = self.ctx.clone();
        let targets = targets.to_vec();
        let budget = self.budget(3 * targets.len());
        // Never retried: a connect that failed after the command was sent
        // cannot be told from one that failed before.
        Ok(self
            .client
            .run(budget, Attempts::Once, move |s| {
                Ok::<_, SshError>(execute_blocking(&ctx, s, op, &targets))
            })
            .await?)
    }

    async fn test_connection(&self) -> Result<ConnectionReport, DriverError> {
        let started = Instant::now();
        let ctx = self.ctx.clone();
        let mut details = self
            .client
            .run(self.budget(2), self.read_attempts.clone(), move |s| {
                s.wait_for("rate limit", ctx.limits.acquire_any())?;
                let mut details = session_details(&ctx, s);
                if let Ok(r) = s.exec("uname -srm", ctx.command_timeout) {
                    details.insert("uname".into(), json!(r.stdout.trim()));
                }
                if ctx.run_as == RunAs::Sudo {
                    let r = s.exec("sudo -n true", ctx.command_timeout)?;
                    details.insert("sudo".into(), json!(r.exit_status == Some(0)));
                }
                Ok::<_, SshError>(details)
            })
            .await?;
        let ok = details.get("sudo").is_none_or(|v| v == &json!(true));
        if !ok {
            details.insert(
                "reason".into(),
                json!("`sudo -n true` failed: passwordless sudo is not set up"),
            );
        }
        Ok(ConnectionReport {
            ok,
            details,
            duration_ms: elapsed_ms(started),
        })
    }
}

fn parse_action(action: &Action) -> Result<Op, DriverError> {
    let invalid = |m: String| DriverError::new(ErrorKind::ValidationError, m);
    match (action.capability.as_str(), action.verb.as_str()) {
        ("host.power", verb @ ("poweroff" | "reboot")) => {
            let delay_s = match action.params.get("delay_s") {
                None | Some(Value::Null) => 0,
                Some(v) => v.as_u64().ok_or_else(|| {
                    invalid(format!(
                        "host.power: delay_s must be a non-negative integer, got {v}"
                    ))
                })?,
            };
            Ok(Op::Power {
                reboot: verb == "reboot",
                delay_s,
            })
        }
        ("host.service", "start") => Ok(Op::Service(ServiceVerb::Start)),
        ("host.service", "stop") => Ok(Op::Service(ServiceVerb::Stop)),
        ("host.service", "restart") => Ok(Op::Service(ServiceVerb::Restart)),
        (cap @ ("host.power" | "host.service"), verb) => {
            Err(invalid(format!("{cap} has no verb `{verb}`")))
        }
        (cap, _) => Err(invalid(format!("linux.ssh has no capability `{cap}`"))),
    }
}

/// One target with the action applied to it: the host to power off or
/// reboot, or a (validated) unit to start, stop or restart.
enum Resolved {
    Host { reboot: bool, delay_s: u64 },
    Service { unit: String, verb: ServiceVerb },
}

fn resolve_target(ctx: &Ctx, op: Op, target: &str) -> Result<Resolved, String> {
    match (op, target.split_once(':')) {
        (Op::Power { reboot, delay_s }, Some(("host", id))) if id == ctx.host_id => {
            Ok(Resolved::Host { reboot, delay_s })
        }
        (Op::Power { .. }, Some(("host", id))) => Err(format!(
            "target host:{id} is not this host ({})",
            ctx.host_id
        )),
        (Op::Service(verb), Some(("service", unit))) => validate_unit(unit)
            .map(|()| Resolved::Service {
                unit: unit.to_owned(),
                verb,
            })
            .map_err(|e| e.to_string()),
        (Op::Power { .. }, _) => Err(format!("host.power targets `host:<id>`, not `{target}`")),
        (Op::Service(_), _) => Err(format!(
            "host.service targets `service:<unit>`, not `{target}`"
        )),
    }
}

/// A changing command: the line sent to the host, and the program it
/// finally runs (what `command -v` must find).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChangeCommand {
    line: String,
    /// The template's program, not a wrapper's: a delayed power command is
    /// sent as `nohup sh -c '...'`, but it is `systemctl` that must exist.
    program: String,
}

/// The changing command for a resolved target, sudo and delay applied.
fn change_command(ctx: &Ctx, resolved: &Resolved) -> ChangeCommand {
    let (template, command, delay_s) = match *resolved {
        Resolved::Host { reboot, delay_s } => {
            let template = if reboot {
                &ctx.commands.reboot
            } else {
                &ctx.commands.poweroff
            };
            let command = ctx.run_as.wrap(&render(template, None, Some(delay_s)));
            (template, command, delay_s)
        }
        Resolved::Service { ref unit, verb } => {
            let template = match verb {
                ServiceVerb::Start => &ctx.commands.service_start,
                ServiceVerb::Stop => &ctx.commands.service_stop,
                ServiceVerb::Restart => &ctx.commands.service_restart,
            };
            (
                template,
                ctx.run_as.wrap(&render(template, Some(unit), None)),
                0,
            )
        }
    };
    let program = program_of(&command).unwrap_or_default().to_owned();
    ChangeCommand {
        line: delayed(template, command, delay_s),
        program,
    }
}

/// Runs one remote command, first taking its rate-limit slot (see [`Slot`]).
fn device_exec(
    ctx: &Ctx,
    s: &mut SshSession,
    slot: Slot<'_>,
    command: &str,
) -> Result<ExecResult, SshError> {
    if let Slot::Of(capability) = slot {
        s.wait_for("rate limit", ctx.limits.acquire(capability))?;
    }
    s.exec(command, ctx.command_timeout)
}

fn status_command(ctx: &Ctx, unit: &str) -> String {
    render(&ctx.commands.service_status, Some(unit), None)
}

/// Reads a unit's state; `Err` holds why the status command said nothing usable.
fn read_state(
    ctx: &Ctx,
    s: &mut SshSession,
    slot: Slot<'_>,
    unit: &str,
) -> Result<Result<String, String>, SshError> {
    let command = status_command(ctx, unit);
    let r = device_exec(ctx, s, slot, &command)?;
    Ok(parse_state(&r.stdout).ok_or_else(|| {
        format!(
            "`{command}` printed no state (exit status {}): {}",
            r.exit_status.map_or("none".into(), |c| c.to_string()),
            tail(&r.stderr, TAIL_CHARS)
        )
    }))
}

fn precondition(check: &str, ok: bool, details: Option<Value>) -> Precondition {
    Precondition {
        check: check.into(),
        ok,
        details,
    }
}

fn session_details(ctx: &Ctx, s: &SshSession) -> Map<String, Value> {
    let mut details = Map::new();
    details.insert("ssh_banner".into(), json!(s.banner));
    details.insert("username".into(), json!(ctx.username));
    details.insert("host_key".into(), s.host_key.to_json());
    details
}

fn dry_run_blocking(
    ctx: &Ctx,
    s: &mut SshSession,
    op: Op,
    action: &Action,
    targets: &[String],
) -> Result<Vec<DryRunAnswer>, SshError> {
    let base = vec![
        precondition("reachable", true, Some(json!({ "ssh_banner": s.banner }))),
        precondition("auth", true, Some(json!({ "username": ctx.username }))),
        precondition("host_key", true, Some(s.host_key.to_json())),
    ];
    let slot = Slot::Of(op.capability());
    let sudo = if ctx.run_as == RunAs::Sudo {
        let r = device_exec(ctx, s, slot, "sudo -n true")?;
        let ok = r.exit_status == Some(0);
        Some(precondition(
            "sudo",
            ok,
            (!ok).then(|| json!({ "stderr_tail": tail(&r.stderr, TAIL_CHARS) })),
        ))
    } else {
        None
    };
    let mut present: HashMap<String, bool> = HashMap::new();
    let mut answers = Vec::with_capacity(targets.len());
    for target in targets {
        let key = ctx.keys.key(action, target);
        let mut pre = base.clone();
        pre.extend(sudo.clone());
        let resolved = match resolve_target(ctx, op, target) {
            Ok(r) => r,
            Err(reason) => {
                pre.push(precondition(
                    "target_valid",
                    false,
                    Some(json!({ "reason": reason })),
                ));
                answers.push(refused(key, pre, target, reason));
                continue;
            }
        };
        let ChangeCommand {
            line: command,
            program,
        } = change_command(ctx, &resolved);
        let found = match present.get(&program) {
            Some(found) => *found,
            None => {
                let probe = format!("command -v {}", crate::ssh::shell_quote(&program));
                let found = device_exec(ctx, s, slot, &probe)?.exit_status == Some(0);
                present.insert(program.clone(), found);
                found
            }
        };
        pre.push(precondition(
            "command_present",
            found,
            Some(json!({ "program": program })),
        ));
        let plan = Plan {
            kind: "ssh".into(),
            preview: vec![json!(command)],
        };
        let (from, to, summary, noop, state_problem) = match resolved {
            Resolved::Host { reboot, delay_s } => {
                let to = if reboot { "rebooting" } else { "off" };
                let when = if delay_s > 0 {
                    format!(" in {delay_s} s")
                } else {
                    String::new()
                };
                let verb = if reboot { "reboot" } else { "power off" };
                (
                    "running".to_owned(),
                    to.to_owned(),
                    format!("host {} would {verb}{when}", ctx.host_id),
                    false,
                    None,
                )
            }
            Resolved::Service { unit, verb } => match read_state(ctx, s, slot, &unit)? {
                Ok(state) => {
                    pre.push(precondition(
                        "service_state",
                        true,
                        Some(json!({ "state": state })),
                    ));
                    let noop = verb.is_noop(&state);
                    let summary = if noop {
                        format!("service {unit} is already {state}: no change")
                    } else {
                        format!(
                            "service {unit} would {} ({state} -> {})",
                            verb.as_str(),
                            verb.desired()
                        )
                    };
                    let to = if noop {
                        state.clone()
                    } else {
                        verb.desired().to_owned()
                    };
                    (state, to, summary, noop, None)
                }
                Err(why) => {
                    pre.push(precondition(
                        "service_state",
                        false,
                        Some(json!({ "reason": why })),
                    ));
                    (
                        "unknown".into(),
                        verb.desired().to_owned(),
                        format!("service {unit}: state unknown"),
                        false,
                        Some(why),
                    )
                }
            },
        };
        let failed = pre.iter().find(|p| !p.ok).map(|p| p.check.clone());
        let ok = failed.is_none();
        let reason = match (&failed, state_problem) {
            (_, Some(why)) => Some(why),
            (Some(check), None) => Some(failure_reason(check, &program)),
            (None, None) if noop => Some("already in the desired state".into()),
            (None, None) => None,
        };
        answers.push(DryRunAnswer {
            ok,
            severity: if ok { Severity::Info } else { Severity::Error },
            idempotency_key: key,
            preconditions: pre,
            plan: if noop {
                Plan {
                    kind: "ssh".into(),
                    preview: Vec::new(),
                }
            } else {
                plan
            },
            effects: Effects {
                summary,
                per_target: vec![TargetEffect {
                    id: target.clone(),
                    from: Some(from),
                    to: Some(to),
                }],
            },
            reason,
        });
    }
    Ok(answers)
}

fn failure_reason(check: &str, program: &str) -> String {
    match check {
        "sudo" => "`sudo -n true` failed: the user has no passwordless sudo".into(),
        "command_present" => format!("`{program}` is not installed or not on PATH"),
        other => format!("precondition `{other}` failed"),
    }
}

fn refused(
    key: String,
    preconditions: Vec<Precondition>,
    target: &str,
    reason: String,
) -> DryRunAnswer {
    DryRunAnswer {
        ok: false,
        severity: Severity::Error,
        idempotency_key: key,
        preconditions,
        plan: Plan {
            kind: "ssh".into(),
            preview: Vec::new(),
        },
        effects: Effects {
            summary: "target refused".into(),
            per_target: vec![TargetEffect {
                id: target.to_owned(),
                from: None,
                to: None,
            }],
        },
        reason: Some(reason),
    }
}

fn execute_blocking(ctx: &Ctx, s: &mut SshSession, op: Op, targets: &[String]) -> Vec<ExecOutcome> {
    let mut outcomes = Vec::with_capacity(targets.len());
    let mut broken: Option<String> = None;
    for target in targets {
        let started = Instant::now();
        let mut evidence = Map::new();
        evidence.insert("host_key".into(), s.host_key.to_json());
        let outcome = if let Some(why) = &broken {
            failure(
                target,
                ErrorKind::Timeout,
                format!("not attempted: {why}"),
                evidence,
            )
        } else {
            match execute_one(ctx, s, op, target, &mut evidence) {
                Ok(outcome) => outcome,
                Err(err) => {
                    // The session may be unusable after a transport failure or
                    // timeout: report the rest as not attempted.
                    broken = Some(format!("an earlier command failed ({err})"));
                    failure(target, err.kind(), err.to_string(), evidence)
                }
            }
        };
        outcomes.push(ExecOutcome {
            duration_ms: elapsed_ms(started),
            ..outcome
        });
    }
    outcomes
}

fn execute_one(
    ctx: &Ctx,
    s: &mut SshSession,
    op: Op,
    target: &str,
    evidence: &mut Map<String, Value>,
) -> Result<ExecOutcome, SshError> {
    let resolved = match resolve_target(ctx, op, target) {
        Ok(r) => r,
        Err(reason) => {
            return Ok(failure(
                target,
                ErrorKind::ValidationError,
                reason,
                evidence.clone(),
            ))
        }
    };
    let slot = Slot::Of(op.capability());
    let mut before = None;
    if let Resolved::Service { unit, verb } = &resolved {
        if let Ok(state) = read_state(ctx, s, slot, unit)? {
            evidence.insert("state_before".into(), json!(state));
            if verb.is_noop(&state) {
                return Ok(ExecOutcome {
                    target: target.to_owned(),
                    ok: true,
                    severity: Severity::Info,
                    code: "driver.already_desired".into(),
                    reason: Some(format!("service {unit} is already {state}")),
                    evidence: evidence.clone(),
                    duration_ms: 0,
                    result_state: Some(state),
                });
            }
            before = Some(state);
        }
    }
    let command = change_command(ctx, &resolved).line;
    evidence.insert("command".into(), json!(command));
    let r = device_exec(ctx, s, slot, &command)?;
    evidence.insert("exit_status".into(), json!(r.exit_status));
    evidence.insert("stderr_tail".into(), json!(tail(&r.stderr, TAIL_CHARS)));
    evidence.insert("stdout_tail".into(), json!(tail(&r.stdout, TAIL_CHARS)));
    if let Some(signal) = &r.signal {
        evidence.insert("signal".into(), json!(signal));
    }
    if r.connection_lost {
        evidence.insert("connection_lost".into(), json!(true));
    }
    let power = matches!(resolved, Resolved::Host { .. });
    let succeeded = r.exit_status == Some(0) || (power && r.connection_lost);
    if !succeeded {
        let status = match (&r.exit_status, &r.signal) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            (None, None) => "ended without an exit status (connection lost)".into(),
        };
        let stderr = tail(&r.stderr, TAIL_CHARS);
        let reason = if stderr.is_empty() {
            format!("`{command}` {status}")
        } else {
            format!("`{command}` {status}: {stderr}")
        };
        let kind = if r.connection_lost {
            ErrorKind::NetworkError
        } else {
            ErrorKind::ServerError
        };
        return Ok(failure(target, kind, reason, evidence.clone()));
    }
    let (result_state, severity, ok, code, reason) = match resolved {
        Resolved::Service { unit, verb } => match read_state(ctx, s, slot, &unit)? {
            Ok(after) if after == verb.desired() || verb.is_noop(&after) => (
                Some(after),
                Severity::Info,
                true,
                "driver.ok".to_owned(),
                None,
            ),
            Ok(after) if matches!(after.as_str(), "activating" | "deactivating" | "reloading") => (
                Some(after.clone()),
                Severity::Warn,
                true,
                "driver.ok".to_owned(),
                Some(format!("service {unit} is still {after}")),
            ),
            Ok(after) => (
                Some(after.clone()),
                Severity::Error,
                false,
                "driver.server_error".to_owned(),
                Some(format!(
                    "service {unit} is {after} after {} (was {})",
                    verb.as_str(),
                    before.as_deref().unwrap_or("unknown")
                )),
            ),
            Err(why) => (
                None,
                Severity::Warn,
                true,
                "driver.ok".to_owned(),
                Some(format!(
                    "command succeeded but the state could not be read back: {why}"
                )),
            ),
        },
        Resolved::Host { reboot, delay_s } => {
            let state = if reboot { "rebooting" } else { "powering_off" };
            let reason = (delay_s > 0).then(|| format!("scheduled in {delay_s} s"));
            (
                Some(state.to_owned()),
                Severity::Info,
                true,
                "driver.ok".to_owned(),
                reason,
            )
        }
    };
    Ok(ExecOutcome {
        target: target.to_owned(),
        ok,
        severity,
        code,
        reason,
        evidence: evidence.clone(),
        duration_ms: 0,
        result_state,
    })
}

fn failure(
    target: &str,
    kind: ErrorKind,
    reason: String,
    evidence: Map<String, Value>,
) -> ExecOutcome {
    ExecOutcome {
        target: target.to_owned(),
        ok: false,
        severity: Severity::Error,
        code: format!("driver.{}", kind.as_str()),
        reason: Some(reason),
        evidence,
        duration_ms: 0,
        result_state: None,
    }
}

fn discover_blocking(
    ctx: &Ctx,
    s: &mut SshSession,
    mode: RefreshMode,
) -> Result<Vec<Target>, SshError> {
    // One read session, one slot: discovery serves every capability.
    s.wait_for("rate limit", ctx.limits.acquire_any())?;
    let mut host_attrs = BTreeMap::new();
    host_attrs.insert("ssh_banner".to_owned(), json!(s.banner));
    host_attrs.insert(
        "host_key_fingerprint".to_owned(),
        json!(s.host_key.fingerprint),
    );
    let mut targets = vec![Target {
        target_type: "host".into(),
        id: ctx.host_id.clone(),
        name: None,
        status: Some("running".into()),
        labels: BTreeMap::new(),
        attrs: host_attrs,
    }];
    match &ctx.services {
        Some(units) => {
            for unit in units {
                let status = read_state(ctx, s, Slot::Taken, unit)?.ok();
                targets.push(service_target(unit, status, BTreeMap::new()));
            }
        }
        None => {
            let r = device_exec(ctx, s, Slot::Taken, &ctx.commands.list_services)?;
            if r.exit_status != Some(0) {
                return Err(SshError::Config(format!(
                    "`{}` exited with status {:?}: {}",
                    ctx.commands.list_services,
                    r.exit_status,
                    tail(&r.stderr, TAIL_CHARS)
                )));
            }
            for row in parse_list_units(&r.stdout) {
                let mut attrs = BTreeMap::new();
                if mode == RefreshMode::Full {
                    attrs.insert("load".to_owned(), json!(row.load));
                    attrs.insert("sub".to_owned(), json!(row.sub));
                    attrs.insert("description".to_owned(), json!(row.description));
                }
                targets.push(service_target(&row.unit, Some(row.active), attrs));
            }
        }
    }
    Ok(targets)
}

fn service_target(unit: &str, status: Option<String>, attrs: BTreeMap<String, Value>) -> Target {
    Target {
        target_type: "service".into(),
        id: unit.to_owned(),
        name: None,
        status,
        labels: BTreeMap::new(),
        attrs,
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: Value) -> LinuxSshConfig {
        let mut base = json!({
            "host": "10.0.0.5",
            "username": "hazel",
            "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-key-body\n-----END OPENSSH PRIVATE KEY-----",
            "trust_on_first_use": true,
        });
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        LinuxSshConfig::from_connection(base.as_object().unwrap()).unwrap()
    }

    #[test]
    fn config_defaults_are_the_documented_ones() {
        let c = config(json!({}));
        assert_eq!(c.ssh.port, 22);
        assert!(!c.sudo);
        assert_eq!(c.commands.service_stop, "systemctl stop {service}");
        assert_eq!(c.command_timeout_s, 30);
    }

    #[test]
    fn unknown_config_fields_are_refused() {
        let map = json!({"host": "h", "username": "u", "private_key": "/k", "sudoo": true});
        let err = LinuxSshConfig::from_connection(map.as_object().unwrap()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ConfigError);
        assert!(err.message.contains("sudoo"), "{}", err.message);
    }

    #[test]
    fn the_private_key_never_shows_in_debug_output() {
        let driver = LinuxSshDriver::new("web-01", config(json!({}))).unwrap();
        let text = format!("{driver:?} {:?}", config(json!({})));
        assert!(!text.contains("secret-key-body"), "{text}");
    }

    #[test]
    fn service_commands_quote_units_and_use_sudo_when_configured() {
        let driver = LinuxSshDriver::new("web-01", config(json!({"sudo": true}))).unwrap();
        let cmd = change_command(
            &driver.ctx,
            &Resolved::Service {
                unit: "nginx.service".into(),
                verb: ServiceVerb::Stop,
            },
        );
        assert_eq!(cmd.line, "sudo -n systemctl stop 'nginx.service'");
        assert_eq!(cmd.program, "systemctl");
    }

    #[test]
    fn a_delayed_power_command_is_checked_for_its_real_program_not_nohup() {
        let driver = LinuxSshDriver::new("web-01", config(json!({"sudo": true}))).unwrap();
        let cmd = change_command(
            &driver.ctx,
            &Resolved::Host {
                reboot: false,
                delay_s: 30,
            },
        );
        assert!(cmd.line.starts_with("nohup sh -c "), "{}", cmd.line);
        assert_eq!(cmd.program, "systemctl");
    }

    #[test]
    fn the_dry_run_budget_defaults_to_the_refresh_sla_and_zero_is_refused() {
        assert_eq!(config(json!({})).ssh.dry_run_budget_s, 5);
        let err =
            LinuxSshDriver::new("web-01", config(json!({"dry_run_budget_s": 0}))).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ConfigError);
    }

    #[test]
    fn targets_must_fit_the_capability_and_the_host() {
        let driver = LinuxSshDriver::new("web-01", config(json!({}))).unwrap();
        let power = Op::Power {
            reboot: false,
            delay_s: 0,
        };
        assert!(resolve_target(&driver.ctx, power, "host:web-01").is_ok());
        assert!(resolve_target(&driver.ctx, power, "host:db-01").is_err());
        assert!(resolve_target(&driver.ctx, power, "service:nginx.service").is_err());
        let stop = Op::Service(ServiceVerb::Stop);
        assert!(resolve_target(&driver.ctx, stop, "service:x;reboot").is_err());
    }

    #[test]
    fn unknown_capabilities_verbs_and_bad_params_are_validation_errors() {
        let action = |cap: &str, verb: &str, params: Value| Action {
            capability: cap.into(),
            verb: verb.into(),
            params: params.as_object().cloned().unwrap_or_default(),
        };
        for a in [
            action("host.power", "suspend", json!({})),
            action("proxmox.vm", "start", json!({})),
            action("host.power", "poweroff", json!({"delay_s": -1})),
        ] {
            assert_eq!(
                parse_action(&a).unwrap_err().kind,
                ErrorKind::ValidationError
            );
        }
        assert_eq!(
            parse_action(&action("host.power", "reboot", json!({"delay_s": 30}))).unwrap(),
            Op::Power {
                reboot: true,
                delay_s: 30
            }
        );
    }
}
