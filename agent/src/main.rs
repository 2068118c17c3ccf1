//! The `hazel` binary: argument parsing and exit codes; the work lives in the
//! `agent` library. The offline commands (`validate`, `compile`) read files;
//! `serve` runs the agent; `token` mints an API token; every other command
//! is a client of a running agent's HTTP API ([`agent::client`]) that prints
//! tables for people and the API's JSON unchanged with `--json`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent::cli::{self, OfflineOptions};
use agent::client::{policy_content_type, table, Client, ClientError, DEFAULT_URL};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

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
#[command(name = "hazel", version, about, after_help = EXIT_CODES_HELP)]
struct Args {
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
    /// unreadable or invalid.
    Serve {
        /// The agent's configuration (see docs/configuration.md).
        #[arg(long, value_name = "FILE", default_value = "hazel.yaml")]
        config: PathBuf,
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
    /// Decide an event without executing anything (an event dry-run).
    /// Exits 1 when its severity is error or blocker.
    #[command(after_help = EXIT_CODES_HELP)]
    Simulate {
        #[command(flatten)]
        conn: ClientArgs,
        /// A normalized event as JSON or YAML; `-` reads standard input.
        event: String,
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
    /// Inject events.
    #[command(after_help = EXIT_CODES_HELP)]
    Events {
        #[command(flatten)]
        conn: ClientArgs,
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// List the agent's hosts and their inventory age.
    #[command(after_help = EXIT_CODES_HELP)]
    Hosts {
        #[command(flatten)]
        conn: ClientArgs,
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
    Apply {
        /// Policy files (JSON or YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
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
}

impl From<OfflineArgs> for OfflineOptions {
    fn from(a: OfflineArgs) -> Self {
        OfflineOptions {
            plugins: a.plugins,
            inventory: a.inventory,
        }
    }
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
        other => run_client(other, &mut stdout),
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
            eprintln!("hazel serve: {}", chain(&e));
            match e {
                agent::serve::ServeError::Config(_) | agent::serve::ServeError::Key(_) => {
                    cli::EXIT_USAGE
                }
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
            eprintln!("hazel demo: {}", chain(&e));
            cli::EXIT_BLOCKED
        }
    }
}

fn token(role: &str, subject: &str, ttl: &str, config: Option<&Path>, out: &mut impl Write) -> i32 {
    let config = match config {
        Some(path) => match agent::service::Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("hazel token: {}", chain(&e));
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

/// An error with its `source` chain, for people.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

// ---- the client commands ---------------------------------------------------

/// Why a client command stopped.
enum Failure {
    /// The request failed; the error knows its exit code.
    Client(ClientError),
    /// A usage problem or an unreadable file (exit 2).
    Usage(String),
    /// The request went through but the result is refused or has errors
    /// (exit 1); already printed when the message is empty.
    Refused(String),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

type Outcome = Result<i32, Failure>;

fn run_client(command: Command, out: &mut impl Write) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hazel: cannot start the runtime: {e}");
            return cli::EXIT_BLOCKED;
        }
    };
    let json = match &command {
        Command::Policy { conn, .. }
        | Command::DryRun { conn, .. }
        | Command::Simulate { conn, .. }
        | Command::Inverse { conn, .. }
        | Command::Executions { conn, .. }
        | Command::Events { conn, .. }
        | Command::Hosts { conn }
        | Command::Pause { conn, .. }
        | Command::Resume { conn }
        | Command::Status { conn } => conn.json,
        _ => false,
    };
    match runtime.block_on(client_command(command, out)) {
        Ok(code) => code,
        Err(Failure::Usage(message)) => {
            eprintln!("hazel: {message}");
            cli::EXIT_USAGE
        }
        Err(Failure::Refused(message)) => {
            if !message.is_empty() {
                eprintln!("hazel: {message}");
            }
            cli::EXIT_BLOCKED
        }
        Err(Failure::Client(err)) => report_error(&err, json, out),
    }
}

/// Prints a failed request: the message (and the issues or errors the API
/// listed) on stderr, the API's error object on stdout with `--json`.
fn report_error(err: &ClientError, json: bool, out: &mut impl Write) -> i32 {
    if let (true, ClientError::Api { .. }) = (json, err) {
        let _ = writeln!(out, "{}", pretty(&error_json(err)));
    }
    eprintln!("hazel: {err}");
    if let Some(Value::Object(report)) = err.detail("report") {
        for issue in report
            .get("issues")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            eprintln!("{}", issue_line(issue));
        }
    }
    if let Some(errors) = err.detail("errors").and_then(Value::as_array) {
        for e in errors {
            eprintln!("  {}", one_line(e));
        }
    }
    if let Some(id) = err.detail("existing_id").and_then(Value::as_str) {
        eprintln!("  existing policy: {id}");
    }
    if let Some(hint) = err.hint() {
        eprintln!("  hint: {hint}");
    }
    err.exit_code()
}

fn error_json(err: &ClientError) -> Value {
    match err {
        ClientError::Api {
            code,
            message,
            details,
            ..
        } => {
            let mut obj = details.clone();
            obj.insert("code".into(), json!(code));
            obj.insert("message".into(), json!(message));
            json!({ "error": obj })
        }
        other => json!({"error": {"code": "client", "message": other.to_string()}}),
    }
}

async fn client_command(command: Command, out: &mut impl Write) -> Outcome {
    match command {
        Command::Policy { conn, command } => {
            let client = connect(&conn)?;
            policy_command(&client, conn.json, command, out).await
        }
        Command::DryRun { conn, policy } => {
            let client = connect(&conn)?;
            let id = resolve(&client, &policy).await?;
            let transcript = client.dry_run(&id).await?;
            if conn.json {
                print_json(out, &transcript);
            } else {
                print_transcript(out, &transcript);
            }
            Ok(severity_code(&transcript["severity"]))
        }
        Command::Simulate { conn, event } => {
            let client = connect(&conn)?;
            let event = read_event(&event)?;
            let answer = client.inject_event(&event, true).await?;
            if conn.json {
                print_json(out, &answer);
            } else {
                print_decisions(out, &answer);
            }
            Ok(severity_code(&answer["severity"]))
        }
        Command::Inverse { conn, policy } => {
            let client = connect(&conn)?;
            let id = resolve(&client, &policy).await?;
            let inverse = client.inverse(&id).await?;
            if conn.json {
                print_json(out, &inverse);
            } else {
                print_inverse(out, &inverse)?;
            }
            Ok(cli::EXIT_OK)
        }
        Command::Executions {
            conn,
            policy,
            limit,
        } => {
            let client = connect(&conn)?;
            let id = resolve(&client, &policy).await?;
            let runs = client.executions(&id, limit.map(|n| n as usize)).await?;
            if conn.json {
                print_json(out, &runs);
            } else {
                print_executions(out, &runs);
            }
            Ok(cli::EXIT_OK)
        }
        Command::Events {
            conn,
            command: EventsCommand::Send { event },
        } => {
            let client = connect(&conn)?;
            let event = read_event(&event)?;
            let answer = client.inject_event(&event, false).await?;
            if conn.json {
                print_json(out, &answer);
            } else {
                print_decisions(out, &answer);
            }
            Ok(cli::EXIT_OK)
        }
        Command::Hosts { conn } => {
            let client = connect(&conn)?;
            let hosts = client.hosts().await?;
            if conn.json {
                print_json(out, &hosts);
            } else {
                print_hosts(out, &hosts);
            }
            Ok(cli::EXIT_OK)
        }
        Command::Pause { conn, reason } => {
            let client = connect(&conn)?;
            let answer = client.set_kill_switch(true, reason.as_deref()).await?;
            print_kill_switch(out, conn.json, &answer);
            Ok(cli::EXIT_OK)
        }
        Command::Resume { conn } => {
            let client = connect(&conn)?;
            let answer = client.set_kill_switch(false, None).await?;
            print_kill_switch(out, conn.json, &answer);
            Ok(cli::EXIT_OK)
        }
        Command::Status { conn } => {
            let client = connect(&conn)?;
            let ready = client.readyz().await?;
            let kill = client.kill_switch().await?;
            if conn.json {
                print_json(
                    out,
                    &json!({"kill_switch": kill, "readyz": {"status": ready.status, "body": ready.body}}),
                );
            } else {
                let _ = writeln!(out, "agent:       {}", client.base_url());
                let state = if ready.status == 200 {
                    "ready".to_string()
                } else {
                    format!(
                        "not ready (HTTP {}: {})",
                        ready.status,
                        text_of(&ready.body["status"])
                    )
                };
                let _ = writeln!(out, "engine:      {state}");
                let _ = writeln!(out, "kill switch: {}", kill_switch_line(&kill));
            }
            Ok(if ready.status == 200 {
                cli::EXIT_OK
            } else {
                cli::EXIT_BLOCKED
            })
        }
        Command::Validate { .. }
        | Command::Compile { .. }
        | Command::Serve { .. }
        | Command::Demo { .. }
        | Command::Token { .. } => Err(Failure::Usage("not a client command".into())),
    }
}

async fn policy_command(
    client: &Client,
    json: bool,
    command: PolicyCommand,
    out: &mut impl Write,
) -> Outcome {
    match command {
        PolicyCommand::Apply { files } => apply(client, json, &files, out).await,
        PolicyCommand::List => {
            let items = client.policies().await?;
            if json {
                print_json(out, &json!({"items": items, "total": items.len()}));
            } else {
                print_policies(out, &items);
            }
            Ok(cli::EXIT_OK)
        }
        PolicyCommand::Show { policy } => {
            let id = resolve(client, &policy).await?;
            let policy = client.policy(&id).await?;
            if json {
                print_json(out, &policy);
            } else {
                print_policy(out, &policy)?;
            }
            Ok(cli::EXIT_OK)
        }
        PolicyCommand::Enable {
            policy,
            force,
            reason,
        } => {
            let id = resolve(client, &policy).await?;
            let reason = if force { reason.as_deref() } else { None };
            let policy = client.enable_policy(&id, reason).await?;
            print_state(out, json, "enabled", &policy);
            Ok(cli::EXIT_OK)
        }
        PolicyCommand::Disable { policy } => {
            let id = resolve(client, &policy).await?;
            let policy = client.disable_policy(&id).await?;
            print_state(out, json, "disabled", &policy);
            Ok(cli::EXIT_OK)
        }
        PolicyCommand::Delete { policy } => {
            let id = resolve(client, &policy).await?;
            client.delete_policy(&id).await?;
            if json {
                print_json(out, &json!({"deleted": id}));
            } else {
                let _ = writeln!(out, "deleted {id}");
            }
            Ok(cli::EXIT_OK)
        }
        PolicyCommand::Export { policy } => {
            let id = resolve(client, &policy).await?;
            let policy = client.policy(&id).await?;
            if json {
                print_json(out, &policy["spec"]);
            } else {
                let _ = write!(out, "{}", to_yaml(&policy["spec"])?);
            }
            Ok(cli::EXIT_OK)
        }
        PolicyCommand::Import { file } => {
            let text = read_file(&file)?;
            let content_type = policy_content_type(&file, &text);
            let policy = client.create_policy(&text, content_type).await?;
            if json {
                print_json(out, &policy);
            } else {
                let _ = writeln!(
                    out,
                    "created {} {:?} (status {})",
                    text_of(&policy["id"]),
                    text_of(&policy["name"]),
                    text_of(&policy["status"])
                );
            }
            Ok(cli::EXIT_OK)
        }
    }
}

/// `hazel policy apply`: per file, create, or update the policy with the
/// same name, or leave it when its hash is the same.
async fn apply(client: &Client, json: bool, files: &[PathBuf], out: &mut impl Write) -> Outcome {
    let mut stored = client.policies().await?;
    let mut results = Vec::new();
    let mut code = cli::EXIT_OK;
    for file in files {
        let text = match read_file(file) {
            Ok(t) => t,
            Err(Failure::Usage(message)) => {
                eprintln!("hazel: {message}");
                code = cli::EXIT_USAGE;
                continue;
            }
            Err(other) => return Err(other),
        };
        let content_type = policy_content_type(file, &text);
        let name = serde_norway::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_string));
        let same_name: Vec<&Value> = match &name {
            Some(name) => stored
                .iter()
                .filter(|p| p["name"].as_str() == Some(name.as_str()))
                .collect(),
            None => Vec::new(),
        };
        let result = match same_name.as_slice() {
            [] => match client.create_policy(&text, content_type).await {
                Ok(policy) => {
                    stored.push(policy.clone());
                    Ok(("created", policy))
                }
                // An identical policy under another name is a refusal, not
                // "unchanged": this file's name is not stored.
                Err(e) => Err(e),
            },
            [existing] => update(client, existing, &text, content_type).await,
            many => {
                eprintln!(
                    "hazel: {}: {} stored policies are named {:?}; use `hazel policy import` or delete the extras",
                    file.display(),
                    many.len(),
                    name.unwrap_or_default()
                );
                code = code.max(cli::EXIT_BLOCKED);
                continue;
            }
        };
        match result {
            Ok((action, policy)) => {
                if !json {
                    let _ = writeln!(
                        out,
                        "{action:<9} {}  {:?} (version {}, status {})",
                        text_of(&policy["id"]),
                        text_of(&policy["name"]),
                        text_of(&policy["version_int"]),
                        text_of(&policy["status"]),
                    );
                }
                results.push(json!({
                    "file": file.display().to_string(),
                    "result": action,
                    "policy": policy,
                }));
            }
            Err(e) if matches!(e.exit_code(), cli::EXIT_AUTH | cli::EXIT_UNREACHABLE) => {
                return Err(e.into());
            }
            Err(e) => {
                eprintln!("hazel: {}: refused", file.display());
                report_error(&e, false, &mut std::io::sink());
                if json {
                    let mut entry = error_json(&e);
                    entry["file"] = json!(file.display().to_string());
                    entry["result"] = json!("refused");
                    results.push(entry);
                }
                if code == cli::EXIT_OK {
                    code = cli::EXIT_BLOCKED;
                }
            }
        }
    }
    if json {
        print_json(out, &Value::Array(results));
    }
    Ok(code)
}

/// Updates `existing` with `text` unless the text's hash is the stored one.
async fn update(
    client: &Client,
    existing: &Value,
    text: &str,
    content_type: &'static str,
) -> Result<(&'static str, Value), ClientError> {
    let id = text_of(&existing["id"]);
    let report = client.validate_policy(text, content_type).await?;
    if report["ok"] == json!(true)
        && report["hash"].is_string()
        && report["hash"] == existing["hash"]
    {
        return Ok(("unchanged", existing.clone()));
    }
    let version = existing["version_int"].as_u64();
    match client.update_policy(&id, text, content_type, version).await {
        Ok(policy) => Ok(("updated", policy)),
        Err(e)
            if e.code() == Some("policy.duplicate_hash")
                && e.detail("existing_id").and_then(Value::as_str) == Some(id.as_str()) =>
        {
            Ok(("unchanged", existing.clone()))
        }
        Err(e) => Err(e),
    }
}

fn connect(conn: &ClientArgs) -> Result<Client, Failure> {
    Ok(Client::new(&conn.url, conn.token.clone())?)
}

/// A policy argument: an id as is, else the id of the one policy with that name.
async fn resolve(client: &Client, policy: &str) -> Result<String, Failure> {
    if uuid::Uuid::parse_str(policy).is_ok() {
        return Ok(policy.to_string());
    }
    let all = client.policies().await?;
    let matches: Vec<&Value> = all
        .iter()
        .filter(|p| p["name"].as_str() == Some(policy))
        .collect();
    match matches.as_slice() {
        [one] => Ok(text_of(&one["id"])),
        [] => Err(Failure::Refused(format!(
            "no policy has the id or name {policy:?}; `hazel policy list` shows them"
        ))),
        many => Err(Failure::Usage(format!(
            "{} policies are named {policy:?}; pass the id instead",
            many.len()
        ))),
    }
}

fn read_file(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))
}

/// Reads an event file (`-` is standard input) as JSON, else YAML.
fn read_event(source: &str) -> Result<Value, Failure> {
    let text = if source == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::Usage(format!("cannot read standard input: {e}")))?;
        text
    } else {
        read_file(Path::new(source))?
    };
    serde_json::from_str(&text)
        .or_else(|json_err| {
            serde_norway::from_str::<Value>(&text).map_err(|_| json_err.to_string())
        })
        .map_err(|e| Failure::Usage(format!("{source}: not a JSON or YAML event: {e}")))
}

// ---- printing --------------------------------------------------------------

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn print_json(out: &mut impl Write, value: &impl serde::Serialize) {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    let _ = writeln!(out, "{text}");
}

fn to_yaml(value: &Value) -> Result<String, Failure> {
    serde_norway::to_string(value)
        .map_err(|e| Failure::Refused(format!("cannot render the spec as YAML: {e}")))
}

/// A scalar as plain text (`-` for null).
fn text_of(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn one_line(value: &Value) -> String {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", text_of(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => text_of(other),
    }
}

fn short(hash: &Value) -> String {
    text_of(hash).chars().take(12).collect()
}

fn issue_line(issue: &Value) -> String {
    let path = match issue["path"].as_str() {
        None | Some("") => "/".to_string(),
        Some(p) => p.to_string(),
    };
    let mut line = format!(
        "  {:<7} {:<28} {path}: {}",
        text_of(&issue["severity"]),
        text_of(&issue["code"]),
        text_of(&issue["message"])
    );
    if let Some(hint) = issue["hint"].as_str() {
        line.push_str(&format!(" (hint: {hint})"));
    }
    line
}

/// Exit 1 when a severity is `error` or `blocker`.
fn severity_code(severity: &Value) -> i32 {
    match severity.as_str() {
        Some("error" | "blocker") => cli::EXIT_BLOCKED,
        _ => cli::EXIT_OK,
    }
}

fn print_policies(out: &mut impl Write, items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|p| {
            vec![
                text_of(&p["id"]),
                text_of(&p["name"]),
                text_of(&p["status"]),
                if p["enabled_intent"] == json!(true) {
                    "enabled".into()
                } else {
                    "disabled".into()
                },
                text_of(&p["version_int"]),
                short(&p["hash"]),
                text_of(&p["last_dry_run"]["severity"]),
            ]
        })
        .collect();
    let header = [
        "ID", "NAME", "STATUS", "INTENT", "VERSION", "HASH", "DRY-RUN",
    ];
    let _ = write!(out, "{}", table(&header, &rows));
    let _ = writeln!(
        out,
        "{} polic{}",
        items.len(),
        if items.len() == 1 { "y" } else { "ies" }
    );
}

fn print_policy(out: &mut impl Write, p: &Value) -> Result<(), Failure> {
    let intent = if p["enabled_intent"] == json!(true) {
        "enabled"
    } else {
        "disabled"
    };
    let _ = writeln!(out, "id:       {}", text_of(&p["id"]));
    let _ = writeln!(out, "name:     {}", text_of(&p["name"]));
    let _ = writeln!(
        out,
        "status:   {} (intent: {intent})",
        text_of(&p["status"])
    );
    let _ = writeln!(out, "version:  {}", text_of(&p["version_int"]));
    let _ = writeln!(out, "hash:     {}", text_of(&p["hash"]));
    let _ = writeln!(out, "updated:  {}", text_of(&p["updated_at"]));
    let dry = &p["last_dry_run"];
    if dry.is_object() {
        let _ = writeln!(
            out,
            "dry-run:  {} at {} (transcript {})",
            text_of(&dry["severity"]),
            text_of(&dry["ts"]),
            text_of(&dry["transcript_id"])
        );
    } else {
        let _ = writeln!(out, "dry-run:  never");
    }
    let _ = writeln!(out, "spec:");
    for line in to_yaml(&p["spec"])?.lines() {
        let _ = writeln!(out, "  {line}");
    }
    Ok(())
}

fn print_state(out: &mut impl Write, json: bool, verb: &str, p: &Value) {
    if json {
        print_json(out, p);
    } else {
        let _ = writeln!(
            out,
            "{verb} {} {:?} (status {})",
            text_of(&p["id"]),
            text_of(&p["name"]),
            text_of(&p["status"])
        );
    }
}

fn print_transcript(out: &mut impl Write, t: &Value) {
    let _ = writeln!(
        out,
        "dry-run of {}: severity {} (transcript {})",
        text_of(&t["policy_id"]),
        text_of(&t["severity"]),
        text_of(&t["transcript_id"])
    );
    let inv = &t["used_inventory"];
    let _ = writeln!(
        out,
        "inventory: {} at {}{}",
        if inv["refreshed"] == json!(true) {
            "refreshed"
        } else {
            "snapshot"
        },
        text_of(&inv["ts"]),
        if inv["stale"] == json!(true) {
            " (stale)"
        } else {
            ""
        }
    );
    let targets = t["targets"].as_array().map_or(0, Vec::len);
    let _ = writeln!(out, "targets: {targets}");
    for finding in t["findings"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "{}", issue_line(finding));
    }
    let mut rows = Vec::new();
    for action in t["actions"].as_array().into_iter().flatten() {
        let what = format!(
            "{}.{}",
            text_of(&action["capability"]),
            text_of(&action["verb"])
        );
        if let Some(error) = action.get("error").filter(|e| !e.is_null()) {
            rows.push(vec![
                text_of(&action["action_index"]),
                what.clone(),
                text_of(&action["host"]),
                "*".into(),
                "error".into(),
                one_line(error),
            ]);
        }
        let targets = action["targets"].as_array().cloned().unwrap_or_default();
        for (i, answer) in action["answers"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            rows.push(vec![
                text_of(&action["action_index"]),
                what.clone(),
                text_of(&action["host"]),
                targets.get(i).map(text_of).unwrap_or_else(|| "-".into()),
                text_of(&answer["severity"]),
                answer["reason"].as_str().unwrap_or("").to_string(),
            ]);
        }
    }
    if !rows.is_empty() {
        let header = ["#", "ACTION", "HOST", "TARGET", "SEVERITY", "REASON"];
        let _ = write!(out, "{}", table(&header, &rows));
    }
}

fn print_decisions(out: &mut impl Write, answer: &Value) {
    let mode = if answer["dry_run"] == json!(true) {
        "simulated"
    } else {
        "accepted"
    };
    let decisions = answer["decisions"].as_array().cloned().unwrap_or_default();
    let mut line = format!(
        "{mode}: correlation {}, {} decision(s)",
        text_of(&answer["correlation_id"]),
        decisions.len()
    );
    if answer["severity"].is_string() {
        line.push_str(&format!(", severity {}", text_of(&answer["severity"])));
    }
    if answer["transcript_id"].is_string() {
        line.push_str(&format!(
            " (transcript {})",
            text_of(&answer["transcript_id"])
        ));
    }
    let _ = writeln!(out, "{line}");
    if decisions.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = decisions
        .iter()
        .map(|d| {
            let planned = d["planned"].as_array().cloned().unwrap_or_default();
            let actions: Vec<String> = planned
                .iter()
                .map(|p| {
                    format!(
                        "{}.{} x{}",
                        text_of(&p["capability"]),
                        text_of(&p["verb"]),
                        p["targets"].as_array().map_or(0, Vec::len)
                    )
                })
                .collect();
            vec![
                text_of(&d["policy_id"]),
                text_of(&d["severity"]),
                text_of(&d["code"]),
                text_of(&d["run_id"]),
                if actions.is_empty() {
                    "-".into()
                } else {
                    actions.join(", ")
                },
            ]
        })
        .collect();
    let header = ["POLICY", "SEVERITY", "CODE", "RUN", "ACTIONS"];
    let _ = write!(out, "{}", table(&header, &rows));
}

fn print_inverse(out: &mut impl Write, inverse: &Value) -> Result<(), Failure> {
    let _ = writeln!(
        out,
        "# inverse policy, unsaved and disabled; review, then `hazel policy apply` it"
    );
    for need in inverse["needs_input"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "# needs input: {}: {}",
            text_of(&need["path"]),
            text_of(&need["note"])
        );
    }
    for note in inverse["notes"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "# note: {}", text_of(note));
    }
    let _ = write!(out, "{}", to_yaml(&inverse["spec_inverse"])?);
    Ok(())
}

fn print_executions(out: &mut impl Write, runs: &Value) {
    let runs = runs.as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let results = r["results"].as_array().cloned().unwrap_or_default();
            let ok = results.iter().filter(|x| x["ok"] == json!(true)).count();
            vec![
                text_of(&r["run_id"]),
                text_of(&r["started_at"]),
                text_of(&r["status"]),
                text_of(&r["severity"]),
                text_of(&r["event"]["kind"]),
                format!("{ok}/{}", results.len()),
            ]
        })
        .collect();
    let header = ["RUN", "STARTED", "STATUS", "SEVERITY", "EVENT", "OK"];
    let _ = write!(out, "{}", table(&header, &rows));
    let _ = writeln!(out, "{} run(s)", runs.len());
}

fn print_hosts(out: &mut impl Write, hosts: &Value) {
    let hosts = hosts.as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let inv = &h["inventory"];
            vec![
                text_of(&h["id"]),
                text_of(&h["plugin"]),
                if h["self"] == json!(true) {
                    "yes"
                } else {
                    "no"
                }
                .into(),
                text_of(&h["source"]),
                text_of(&inv["targets"]),
                text_of(&inv["ts"]),
                match inv["stale"].as_bool() {
                    Some(true) => "stale".into(),
                    Some(false) => "fresh".into(),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    let header = [
        "ID",
        "PLUGIN",
        "SELF",
        "SOURCE",
        "TARGETS",
        "INVENTORY",
        "STATE",
    ];
    let _ = write!(out, "{}", table(&header, &rows));
}

fn kill_switch_line(kill: &Value) -> String {
    if kill["paused"] == json!(true) {
        let mut line = format!(
            "PAUSED since {} by {}",
            text_of(&kill["since"]),
            text_of(&kill["by"])
        );
        if let Some(reason) = kill["reason"].as_str() {
            line.push_str(&format!(": {reason}"));
        }
        line
    } else {
        "off (actions run)".into()
    }
}

fn print_kill_switch(out: &mut impl Write, json: bool, kill: &Value) {
    if json {
        print_json(out, kill);
    } else {
        let _ = writeln!(out, "kill switch: {}", kill_switch_line(kill));
    }
}
