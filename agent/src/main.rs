//! The `hazel` binary: argument parsing and exit codes; the work lives in the
//! `agent` library. The offline commands (`validate`, `compile`) read files;
//! `serve` runs the agent; `token` mints an API token; every other command
//! is a client of a running agent's HTTP API ([`agent::client`]) that prints
//! tables for people and the API's JSON unchanged with `--json`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent::cli::{self, client_cmds, ClientOptions, OfflineOptions};
use agent::client::DEFAULT_URL;
use clap::{CommandFactory, Parser, Subcommand};

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  the agent refused the request, or the result has an error or a blocker
     (a dry-run of severity error, an invalid policy, a blocked enable)
  2  usage error, or a file that cannot be read or parsed
  3  the agent cannot be reached (is `hazel serve` running? see --url)
  4  authentication refused: no token, an invalid or expired one, or a role
     too low for the command (HTTP 401 or 403)";

/// Hazel: event-driven infrastructure automation with driver preflight.
#[derive(Debug, Parser)]
#[command(name = "hazel", version = cli::packaging::VERSION, about, after_help = EXIT_CODES_HELP)]
struct Args {
    /// Read at most BYTES of a file or standard input (policies, events,
    /// inventories, the config); the default is the API's body limit,
    /// 1048576, so a file the agent would refuse is refused here too.
    #[arg(long, global = true, value_name = "BYTES")]
    max_size: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate policy files (JSON or YAML) and report every finding.
    ///
    /// Exit codes: 0 no file has a blocker, 1 some file has one, 2 usage error
    /// or unreadable file.
    Validate {
        /// Print a JSON array, one `{file, ok, issues, hash, ir}` per file.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        offline: OfflineArgs,
        /// Policy files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the compiled IR of a policy file (findings go to stderr).
    Compile {
        #[command(flatten)]
        offline: OfflineArgs,
        /// Policy file.
        file: PathBuf,
    },
    /// Run the agent: the store, the engine and the HTTP API, until SIGINT
    /// or SIGTERM.
    ///
    /// Exit codes: 0 stopped cleanly, 1 the service failed, 2 the config is
    /// unreadable or invalid, or the data directory's database is missing,
    /// empty, replaced, behind its marker or damaged (restore it with
    /// `hazel restore`), or another agent holds the directory.
    Serve {
        /// The agent's configuration (see docs/configuration.md).
        #[arg(long, value_name = "FILE", default_value = "hazel.yaml")]
        config: PathBuf,
    },
    /// Copy the agent's database to OUT with SQLite's online backup API
    /// (safe while `hazel serve` runs); the copy is checked before it is
    /// renamed into place.
    ///
    /// Exit codes: 0 written, 1 the copy failed, 2 unusable config, no
    /// database, or OUT exists.
    Backup {
        /// The agent's configuration, for its data_dir.
        #[arg(long, value_name = "FILE", default_value = "hazel.yaml")]
        config: PathBuf,
        /// Where to write the backup (must not exist).
        out: PathBuf,
    },
    /// Replace the agent's database with BACKUP (the agent must be
    /// stopped); the replaced one is kept as hazel.db.replaced.
    ///
    /// Exit codes: 0 restored, 1 the restore failed, 2 unusable config,
    /// the agent runs, or BACKUP is unreadable or damaged.
    Restore {
        /// The agent's configuration, for its data_dir.
        #[arg(long, value_name = "FILE", default_value = "hazel.yaml")]
        config: PathBuf,
        /// A file written by `hazel backup`.
        backup: PathBuf,
    },
    /// Check the agent's configuration without starting it.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Hazel's main job in one command, with no external service: a
    /// simulated Proxmox cluster and UPS, a power cut walked through step by
    /// step (validate, dry-run, inverse, the outage, mains return, the
    /// ledger), then the API kept running until Ctrl-C.
    ///
    /// Exit codes: 0 every step behaved as expected, 1 a step did not or
    /// the demo could not start, 2 usage error.
    Demo {
        /// Stop after the walkthrough instead of serving the API.
        #[arg(long)]
        once: bool,
        /// Keep the store in DIR [default: a temporary directory, removed at
        /// exit].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Where the API listens; a free port is taken when this one is busy.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8088")]
        listen: std::net::SocketAddr,
    },
    /// Mint an API token for local use, signed with the agent's key
    /// (`auth.jwt_key_file` of the config, else $HAZEL_JWT_KEY).
    ///
    /// Exit codes: 0 printed, 2 no usable key, bad role, subject or TTL.
    Token {
        /// What the token may do: viewers read, operators also dry-run and
        /// inject events, admins also change policies, hosts and the kill
        /// switch.
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// Who the token is for; written to the audit log.
        #[arg(long)]
        subject: String,
        /// Lifetime, in the policy duration syntax (`90m`, `12h`, `7d`).
        #[arg(long, default_value = "12h")]
        ttl: String,
        /// The agent's configuration, for where the key comes from.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Manage the web console's local accounts (stored in the agent's
    /// store; the agent may be running).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage stored policies.
    #[command(after_help = EXIT_CODES_HELP)]
    Policy {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Dry-run a stored policy now: fresh inventory, driver dry-runs, the
    /// transcript. Exits 1 when its severity is error or blocker.
    #[command(after_help = EXIT_CODES_HELP)]
    DryRun {
        #[command(flatten)]
        conn: ClientArgs,
        /// The policy's id or its unique name.
        policy: String,
    },
    /// What would happen if this event came now (an event dry-run): what
    /// runs now, what each hold would do when it ends, what the inverses
    /// would restore. Nothing is executed. Exits 1 when its severity is
    /// error or blocker.
    ///
    /// `hazel simulate --ups ups1 on_battery` builds the UPS event;
    /// `hazel simulate --event FILE` (or `hazel simulate FILE`) reads any
    /// normalized event as JSON or YAML (`-` reads standard input).
    #[command(after_help = EXIT_CODES_HELP)]
    Simulate {
        #[command(flatten)]
        conn: ClientArgs,
        /// The UPS, by name (`ups1`) or full subject id (`ups1@nas.lan:3493`).
        #[arg(long, value_name = "NAME", conflicts_with = "event")]
        ups: Option<String>,
        /// A normalized event as JSON or YAML; `-` reads standard input.
        #[arg(long, value_name = "FILE")]
        event: Option<String>,
        /// With --ups: the UPS state (on_battery, on_mains, low_battery,
        /// ...). Without: an event file, as --event.
        #[arg(value_name = "STATE|FILE", conflicts_with = "event")]
        arg: Option<String>,
    },
    /// Print the inverse of a stored policy as YAML, unsaved and disabled,
    /// with what needs input as comments.
    #[command(after_help = EXIT_CODES_HELP)]
    Inverse {
        #[command(flatten)]
        conn: ClientArgs,
        /// The policy's id or its unique name.
        policy: String,
    },
    /// Show a policy's execution ledger, newest first.
    #[command(after_help = EXIT_CODES_HELP)]
    Executions {
        #[command(flatten)]
        conn: ClientArgs,
        /// The policy's id or its unique name.
        policy: String,
        /// At most this many runs (1 to 30).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=30))]
        limit: Option<u64>,
    },
    /// Show a policy's restore set: the targets its runs changed that nobody
    /// changed back since, which its inverse would restore.
    #[command(after_help = EXIT_CODES_HELP, name = "restore-set")]
    RestoreSet {
        #[command(flatten)]
        conn: ClientArgs,
        /// The policy's id or its unique name.
        policy: String,
    },
    /// Inject events.
    #[command(after_help = EXIT_CODES_HELP)]
    Events {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// List the agent's hosts, their targets by type and inventory age;
    /// `hazel hosts show HOST` lists one host's inventory.
    #[command(after_help = EXIT_CODES_HELP)]
    Hosts {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(subcommand)]
        command: Option<HostsCommand>,
    },
    /// Why a policy acted or did not: its last decision (`--last`, the
    /// default) or what it would decide on an event now (`--event FILE`):
    /// the trigger, each condition with the value it read, the windows,
    /// the targets and the guards, with their reason codes. Exits 1 when
    /// that decision has an error.
    #[command(after_help = EXIT_CODES_HELP)]
    Explain {
        #[command(flatten)]
        conn: ClientArgs,
        /// The policy's id, short id or unique name.
        policy: String,
        /// Explain the policy's last decision (the default).
        #[arg(long, conflicts_with = "event")]
        last: bool,
        /// Explain what it would decide on this event now (simulated,
        /// nothing runs); JSON or YAML, `-` reads standard input.
        #[arg(long, value_name = "FILE")]
        event: Option<String>,
    },
    /// The audit log, oldest of the selection first: who changed what,
    /// every engine decision and why.
    #[command(after_help = EXIT_CODES_HELP)]
    Audit {
        #[command(flatten)]
        conn: ClientArgs,
        /// Only this policy's records (id, short id or name).
        #[arg(long)]
        policy: Option<String>,
        /// Only records of this kind (`engine.evaluated`, `policy.created`, ...).
        #[arg(long)]
        kind: Option<String>,
        /// Only records since a duration ago (`1h`, `30m`, `2d`) or an
        /// RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// At most this many records (the newest ones).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=500))]
        limit: u64,
        /// Then print each new record as it is written, until Ctrl-C.
        #[arg(long, short)]
        follow: bool,
    },
    /// Print a kept dry-run transcript (the id `hazel dry-run`, `hazel
    /// simulate` and `hazel policy show` print).
    #[command(after_help = EXIT_CODES_HELP)]
    Transcript {
        #[command(flatten)]
        conn: ClientArgs,
        /// The transcript id.
        id: String,
    },
    /// Pause all execution (the kill switch); decisions are still made.
    #[command(after_help = EXIT_CODES_HELP)]
    Pause {
        #[command(flatten)]
        conn: ClientArgs,
        /// Why; written to the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume execution after `hazel pause`.
    #[command(after_help = EXIT_CODES_HELP)]
    Resume {
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Print a shell completion script (bash, zsh or fish) to stdout.
    ///
    /// Bash: `hazel completions bash > /etc/bash_completion.d/hazel`; the
    /// Debian package installs all three.
    Completions {
        /// The shell.
        shell: cli::packaging::Shell,
    },
    /// Print the man page (roff) to stdout: `hazel man | man -l -`.
    Man,
    /// Show the kill switch and whether the agent is ready. Exits 1 when
    /// the agent answers but is not ready.
    #[command(after_help = EXIT_CODES_HELP)]
    Status {
        #[command(flatten)]
        conn: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Create each policy, or update the stored one with the same `name`;
    /// prints created, updated or unchanged per file.
    #[command(after_help = EXIT_CODES_HELP)]
    ///
    /// Exit 1 when a file is refused, when an update would change the
    /// trigger types, host, target type or selector mode of the stored
    /// policy without --replace, or when a spec asking `enabled: true` was
    /// saved disabled because its dry-run found errors (the reason is
    /// printed).
    Apply {
        /// Policy files (JSON or YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Allow an update that changes what the stored policy reacts to
        /// or acts on (trigger types, host, target type, selector mode).
        #[arg(long)]
        replace: bool,
    },
    /// List the stored policies.
    #[command(after_help = EXIT_CODES_HELP)]
    List,
    /// Show one policy with its spec.
    #[command(after_help = EXIT_CODES_HELP)]
    Show {
        /// The policy's id or its unique name.
        policy: String,
    },
    /// Enable a policy; refused when a fresh dry-run has errors, unless an
    /// admin forces it with a reason.
    #[command(after_help = EXIT_CODES_HELP)]
    Enable {
        /// The policy's id or its unique name.
        policy: String,
        /// Enable despite errors in the dry-run (admins; needs --reason).
        #[arg(long, requires = "reason")]
        force: bool,
        /// Why it is forced; written to the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Disable a policy.
    #[command(after_help = EXIT_CODES_HELP)]
    Disable {
        /// The policy's id or its unique name.
        policy: String,
    },
    /// Delete a policy (its ledger and audit records stay).
    #[command(after_help = EXIT_CODES_HELP)]
    Delete {
        /// The policy's id or its unique name.
        policy: String,
    },
    /// Print a policy's spec as YAML (JSON with --json), ready to import.
    #[command(after_help = EXIT_CODES_HELP)]
    Export {
        /// The policy's id or its unique name.
        policy: String,
    },
    /// Store a new policy from a file; refused when an identical one exists.
    #[command(after_help = EXIT_CODES_HELP)]
    Import {
        /// Policy file (JSON or YAML).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum HostsCommand {
    /// One host's inventory: each target with its type, name, state and
    /// labels, and whether the snapshot is stale.
    #[command(after_help = EXIT_CODES_HELP)]
    Show {
        /// The host's id.
        host: String,
        /// Refresh the inventory on the fast path first.
        #[arg(long)]
        refresh: bool,
    },
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Inject a normalized event for real: matching policies run.
    #[command(after_help = EXIT_CODES_HELP)]
    Send {
        /// A normalized event as JSON or YAML; `-` reads standard input.
        event: String,
    },
}

#[derive(Debug, clap::Args)]
struct OfflineArgs {
    /// Inventory file (YAML or JSON) to resolve selectors against.
    #[arg(long, value_name = "FILE")]
    inventory: Option<PathBuf>,
    /// Plugin manifest directory [default: $HAZEL_PLUGINS, else plugin-specs/
    /// found from the working directory upwards, else the built-in manifests].
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,
}

/// How the client commands reach the agent and print.
#[derive(Debug, Clone, clap::Args)]
struct ClientArgs {
    /// Base URL of the agent's API.
    #[arg(long, env = "HAZEL_URL", default_value = DEFAULT_URL, global = true)]
    url: String,
    /// Bearer token (mint one with `hazel token`).
    #[arg(long, env = "HAZEL_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON answers unchanged (for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// Print times in UTC instead of the local zone.
    #[arg(long, env = "HAZEL_UTC", global = true, value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    utc: bool,
}

impl From<OfflineArgs> for OfflineOptions {
    fn from(a: OfflineArgs) -> Self {
        OfflineOptions {
            plugins: a.plugins,
            inventory: a.inventory,
        }
    }
}

impl From<ClientArgs> for ClientOptions {
    fn from(a: ClientArgs) -> Self {
        cli::use_utc(a.utc);
        ClientOptions {
            url: a.url,
            token: a.token,
            json: a.json,
        }
    }
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a console user, or replace the role and password of an existing
    /// one. The password is prompted for (no echo) or read from the first
    /// line of stdin; at least 8 characters.
    ///
    /// Exit codes: 0 saved, 1 the store refused, 2 bad name, role,
    /// password or config.
    Add {
        /// The sign-in name (letters, digits, '.', '_', '-', '@').
        name: String,
        /// What the user may do: viewers read, operators also dry-run,
        /// admins also enable, disable and pause.
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// The agent's configuration, for where the store is (`data_dir`).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// List every problem of every section and host (field path, why, what
    /// to write), or a summary of a usable config. `hazel serve` runs the
    /// same check at start.
    ///
    /// Exit codes: 0 usable (warnings aside), 2 unusable or unreadable.
    Check {
        /// The agent's configuration (see docs/configuration.md).
        #[arg(long, value_name = "FILE", default_value = "hazel.yaml")]
        config: PathBuf,
    },
}

fn main() {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() {
                cli::EXIT_USAGE
            } else {
                cli::EXIT_OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if let Some(bytes) = args.max_size {
        cli::set_max_file_bytes(bytes);
    }
    let mut stdout = std::io::stdout().lock();
    let code = match args.command {
        Command::Validate {
            json,
            offline,
            files,
        } => cli::validate_files(&files, &offline.into(), json, &mut stdout),
        Command::Compile { offline, file } => {
            cli::compile_file(&file, &offline.into(), &mut stdout)
        }
        Command::Serve { config } => serve(&config),
        Command::Backup { config, out } => cli::store_cmds::backup(&config, &out, &mut stdout),
        Command::Restore { config, backup } => {
            cli::store_cmds::restore(&config, &backup, &mut stdout)
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => cli::config_check::run(&config, &mut stdout),
        Command::Demo {
            once,
            data_dir,
            listen,
        } => demo(once, data_dir, listen, &mut stdout),
        Command::Token {
            role,
            subject,
            ttl,
            config,
        } => token(&role, &subject, &ttl, config.as_deref(), &mut stdout),
        Command::User {
            command: UserCommand::Add { name, role, config },
        } => cli::users::add(&name, &role, config.as_deref(), &mut stdout),
        Command::Completions { shell } => {
            cli::packaging::completions(Args::command(), shell, &mut stdout)
        }
        Command::Man => cli::packaging::man(Args::command(), &mut stdout),
        other => client(other, &mut stdout),
    };
    let _ = stdout.flush();
    std::process::exit(code);
}

// ---- serve and token -------------------------------------------------------

fn serve(config: &Path) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hazel serve: cannot start the runtime: {e}");
            return cli::EXIT_BLOCKED;
        }
    };
    match runtime.block_on(agent::serve::run(config)) {
        Ok(()) => cli::EXIT_OK,
        Err(e) => {
            eprintln!("hazel serve: {}", agent::error_chain(&e));
            match e {
                agent::serve::ServeError::Config(_)
                | agent::serve::ServeError::Key(_)
                | agent::serve::ServeError::DataDir(_) => cli::EXIT_USAGE,
                _ => cli::EXIT_BLOCKED,
            }
        }
    }
}

fn demo(
    once: bool,
    data_dir: Option<PathBuf>,
    listen: std::net::SocketAddr,
    out: &mut impl Write,
) -> i32 {
    // Warnings only on stderr unless RUST_LOG says otherwise: the
    // walkthrough on stdout is the output.
    agent::serve::init_logging_with(
        agent::service::config::LogFormat::Text,
        agent::service::config::LogColor::Auto,
        "warn",
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hazel demo: cannot start the runtime: {e}");
            return cli::EXIT_BLOCKED;
        }
    };
    let options = agent::demo::DemoOptions {
        once,
        data_dir,
        listen,
        ..agent::demo::DemoOptions::default()
    };
    match runtime.block_on(agent::demo::run(options, out)) {
        Ok(report) if report.ok => cli::EXIT_OK,
        Ok(_) => cli::EXIT_BLOCKED,
        Err(e) => {
            eprintln!("hazel demo: {}", agent::error_chain(&e));
            cli::EXIT_BLOCKED
        }
    }
}

fn token(role: &str, subject: &str, ttl: &str, config: Option<&Path>, out: &mut impl Write) -> i32 {
    let config = match config {
        Some(path) => match agent::service::Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("hazel token: {}", agent::error_chain(&e));
                return cli::EXIT_USAGE;
            }
        },
        None => agent::service::Config::default(),
    };
    let key = match config.jwt_key() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("hazel token: {e}");
            return cli::EXIT_USAGE;
        }
    };
    let ttl = match agent::spec::duration::parse_duration(ttl) {
        Ok(secs) => Duration::from_secs(secs),
        Err(e) => {
            eprintln!("hazel token: --ttl {ttl:?}: {e}");
            return cli::EXIT_USAGE;
        }
    };
    match agent::api::mint_for_cli(&key, subject, role, ttl) {
        Ok(token) => {
            let _ = writeln!(out, "{token}");
            cli::EXIT_OK
        }
        Err(e) => {
            eprintln!("hazel token: {e}");
            cli::EXIT_USAGE
        }
    }
}

// ---- the client commands ---------------------------------------------------

/// Runs a client command ([`agent::cli::client_cmds`]) and returns its exit
/// code.
fn client(command: Command, out: &mut impl Write) -> i32 {
    let runtime = match client_cmds::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let json = match &command {
        Command::Policy { conn, .. }
        | Command::DryRun { conn, .. }
        | Command::Simulate { conn, .. }
        | Command::Inverse { conn, .. }
        | Command::Executions { conn, .. }
        | Command::RestoreSet { conn, .. }
        | Command::Events { conn, .. }
        | Command::Hosts { conn, .. }
        | Command::Explain { conn, .. }
        | Command::Audit { conn, .. }
        | Command::Transcript { conn, .. }
        | Command::Pause { conn, .. }
        | Command::Resume { conn }
        | Command::Status { conn } => conn.json,
        _ => false,
    };
    let outcome = runtime.block_on(async {
        match command {
            Command::Policy { conn, command } => policy(&conn.into(), command, out).await,
            Command::DryRun { conn, policy } => {
                client_cmds::dry_run(&conn.into(), &policy, out).await
            }
            Command::Simulate {
                conn,
                ups,
                event,
                arg,
            } => {
                let input = match (ups, event, arg) {
                    (Some(ups), None, Some(state)) => {
                        Ok(client_cmds::Simulated::Ups { ups, state })
                    }
                    (Some(_), None, None) => Err(client_cmds::Failure::Usage(
                        "--ups needs a state: hazel simulate --ups NAME on_battery".into(),
                    )),
                    (None, Some(file), None) | (None, None, Some(file)) => {
                        Ok(client_cmds::Simulated::File(file))
                    }
                    _ => Err(client_cmds::Failure::Usage(
                        "give --ups NAME STATE, --event FILE or an event file".into(),
                    )),
                };
                match input {
                    Ok(input) => client_cmds::simulate(&conn.into(), &input, out).await,
                    Err(e) => Err(e),
                }
            }
            Command::Inverse { conn, policy } => {
                client_cmds::inverse(&conn.into(), &policy, out).await
            }
            Command::RestoreSet { conn, policy } => {
                client_cmds::restore_set(&conn.into(), &policy, out).await
            }
            Command::Executions {
                conn,
                policy,
                limit,
            } => client_cmds::executions(&conn.into(), &policy, limit, out).await,
            Command::Events {
                conn,
                command: EventsCommand::Send { event },
            } => client_cmds::send_event(&conn.into(), &event, out).await,
            Command::Hosts {
                conn,
                command: None,
            } => client_cmds::hosts(&conn.into(), out).await,
            Command::Hosts {
                conn,
                command: Some(HostsCommand::Show { host, refresh }),
            } => cli::why::host_show(&conn.into(), &host, refresh, out).await,
            Command::Explain {
                conn,
                policy,
                event,
                ..
            } => {
                let what = match event {
                    Some(file) => cli::why::Explained::Event(file),
                    None => cli::why::Explained::Last,
                };
                cli::why::explain(&conn.into(), &policy, &what, out).await
            }
            Command::Audit {
                conn,
                policy,
                kind,
                since,
                limit,
                follow,
            } => {
                let filter = cli::why::AuditFilter {
                    policy,
                    kind,
                    since,
                    limit: limit as usize,
                    follow,
                    poll: Duration::from_secs(1),
                };
                cli::why::audit(&conn.into(), &filter, out).await
            }
            Command::Transcript { conn, id } => cli::why::transcript(&conn.into(), &id, out).await,
            Command::Pause { conn, reason } => {
                client_cmds::set_kill_switch(&conn.into(), true, reason.as_deref(), out).await
            }
            Command::Resume { conn } => {
                client_cmds::set_kill_switch(&conn.into(), false, None, out).await
            }
            Command::Status { conn } => client_cmds::status(&conn.into(), out).await,
            Command::Validate { .. }
            | Command::Compile { .. }
            | Command::Serve { .. }
            | Command::Backup { .. }
            | Command::Restore { .. }
            | Command::Config { .. }
            | Command::Demo { .. }
            | Command::Token { .. }
            | Command::User { .. }
            | Command::Completions { .. }
            | Command::Man => Err(cli::Failure::Usage("not a client command".into())),
        }
    });
    client_cmds::finish(outcome, json, out)
}

async fn policy(
    conn: &ClientOptions,
    command: PolicyCommand,
    out: &mut impl Write,
) -> cli::Outcome {
    match command {
        PolicyCommand::Apply { files, replace } => {
            client_cmds::policy_apply(conn, &files, replace, out).await
        }
        PolicyCommand::List => client_cmds::policy_list(conn, out).await,
        PolicyCommand::Show { policy } => client_cmds::policy_show(conn, &policy, out).await,
        PolicyCommand::Enable {
            policy,
            force,
            reason,
        } => {
            let reason = if force { reason.as_deref() } else { None };
            client_cmds::policy_enable(conn, &policy, reason, out).await
        }
        PolicyCommand::Disable { policy } => client_cmds::policy_disable(conn, &policy, out).await,
        PolicyCommand::Delete { policy } => client_cmds::policy_delete(conn, &policy, out).await,
        PolicyCommand::Export { policy } => client_cmds::policy_export(conn, &policy, out).await,
        PolicyCommand::Import { file } => client_cmds::policy_import(conn, &file, out).await,
    }
}
