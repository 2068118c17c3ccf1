//! The client commands of the `hazel` binary: each one a request (or a few)
//! to a running agent's HTTP API through [`crate::client`], printed for
//! people by [`super::render`] or unchanged with `--json`, and mapped to the
//! documented exit code.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::render::{
    issue_line, kill_switch_line, one_line, pretty, print_decisions, print_executions, print_hosts,
    print_inverse, print_json, print_kill_switch, print_policies, print_policy, print_restore_set,
    print_state, print_timeline, print_transcript, text_of, to_yaml,
};
use super::render::{policy_names, short_id};
use super::{EXIT_AUTH, EXIT_BLOCKED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE};
use crate::client::{policy_content_type, Client, ClientError};

/// How the client commands reach the agent and print (`--url`, `--token`,
/// `--json`).
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Base URL of the agent's API.
    pub url: String,
    /// Bearer token.
    pub token: Option<String>,
    /// Print the API's JSON answers unchanged.
    pub json: bool,
}

/// Why a client command stopped.
pub enum Failure {
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

/// A client command's exit code, or why it stopped.
pub type Outcome = Result<i32, Failure>;

/// The runtime the client commands run on; `Err` is the exit code after the
/// failure is printed.
pub fn runtime() -> Result<tokio::runtime::Runtime, i32> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("hazel: cannot start the runtime: {e}");
            EXIT_BLOCKED
        })
}

/// The exit code of a finished client command, printing why it failed;
/// `json` is its `--json`.
pub fn finish(outcome: Outcome, json: bool, out: &mut impl Write) -> i32 {
    match outcome {
        Ok(code) => code,
        Err(Failure::Usage(message)) => {
            eprintln!("hazel: {message}");
            EXIT_USAGE
        }
        Err(Failure::Refused(message)) => {
            if !message.is_empty() {
                eprintln!("hazel: {message}");
            }
            EXIT_BLOCKED
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

/// `hazel dry-run`: dry-runs a stored policy; exit 1 when its severity is
/// error or blocker.
pub async fn dry_run(conn: &ClientOptions, policy: &str, out: &mut impl Write) -> Outcome {
    let client = connect(conn)?;
    let id = resolve(&client, policy).await?;
    let transcript = client.dry_run(&id).await?;
    if conn.json {
        print_json(out, &transcript);
    } else {
        let names = policy_names(&client.policies().await?);
        print_transcript(out, &transcript, &names);
    }
    Ok(severity_code(&transcript["severity"]))
}

/// What `hazel simulate` posts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Simulated {
    /// `--ups NAME STATE`: the normalized `ups.state` event for that UPS
    /// (a name or a full subject id) entering `state`.
    Ups { ups: String, state: String },
    /// `--event FILE` (or the file as the argument): any normalized event,
    /// JSON or YAML; `-` reads standard input.
    File(String),
}

/// `hazel simulate`: an event dry-run, printed as a timeline (what runs
/// now, each hold's end, what the inverses would restore); exit 1 when its
/// severity is error or blocker.
pub async fn simulate(conn: &ClientOptions, input: &Simulated, out: &mut impl Write) -> Outcome {
    let client = connect(conn)?;
    let event = match input {
        Simulated::Ups { ups, state } => ups_event(ups, state),
        Simulated::File(source) => read_event(source)?,
    };
    let answer = client.inject_event(&event, true).await?;
    if conn.json {
        print_json(out, &answer);
    } else {
        print_timeline(out, &answer);
    }
    Ok(severity_code(&answer["severity"]))
}

/// The normalized event a UPS source publishes when `ups` enters `state`
/// (SPEC §1); the agent checks the state.
fn ups_event(ups: &str, state: &str) -> Value {
    json!({
        "type": "ups",
        "kind": "ups.state",
        "subject": {"kind": "ups", "id": ups},
        "attrs": {"state": state},
    })
}

/// `hazel inverse`: the inverse of a stored policy as YAML.
pub async fn inverse(conn: &ClientOptions, policy: &str, out: &mut impl Write) -> Outcome {
    let client = connect(conn)?;
    let id = resolve(&client, policy).await?;
    let inverse = client.inverse(&id).await?;
    if conn.json {
        print_json(out, &inverse);
    } else {
        print_inverse(out, &inverse)?;
    }
    Ok(EXIT_OK)
}

/// `hazel executions`: a policy's ledger, newest first.
pub async fn executions(
    conn: &ClientOptions,
    policy: &str,
    limit: Option<u64>,
    out: &mut impl Write,
) -> Outcome {
    let client = connect(conn)?;
    let id = resolve(&client, policy).await?;
    let runs = client.executions(&id, limit.map(|n| n as usize)).await?;
    if conn.json {
        print_json(out, &runs);
    } else {
        print_executions(out, &runs);
    }
    Ok(EXIT_OK)
}

/// `hazel restore-set`: what a policy's inverse would restore.
pub async fn restore_set(conn: &ClientOptions, policy: &str, out: &mut impl Write) -> Outcome {
    let client = connect(conn)?;
    let id = resolve(&client, policy).await?;
    let set = client.restore_set(&id).await?;
    if conn.json {
        print_json(out, &set);
    } else {
        print_restore_set(out, &set);
    }
    Ok(EXIT_OK)
}

/// `hazel events send`: injects an event for real.
pub async fn send_event(conn: &ClientOptions, event: &str, out: &mut impl Write) -> Outcome {
    let client = connect(conn)?;
    let event = read_event(event)?;
    let answer = client.inject_event(&event, false).await?;
    if conn.json {
        print_json(out, &answer);
    } else {
        let names = policy_names(&client.policies().await?);
        print_decisions(out, &answer, &names);
    }
    Ok(EXIT_OK)
}

/// `hazel hosts`: the agent's hosts and their inventory age.
pub async fn hosts(conn: &ClientOptions, out: &mut impl Write) -> Outcome {
    let client = connect(conn)?;
    let hosts = client.hosts().await?;
    if conn.json {
        print_json(out, &hosts);
    } else {
        print_hosts(out, &hosts);
    }
    Ok(EXIT_OK)
}

/// `hazel pause` (`paused`) and `hazel resume`: sets the kill switch.
pub async fn set_kill_switch(
    conn: &ClientOptions,
    paused: bool,
    reason: Option<&str>,
    out: &mut impl Write,
) -> Outcome {
    let client = connect(conn)?;
    let answer = client.set_kill_switch(paused, reason).await?;
    print_kill_switch(out, conn.json, &answer);
    Ok(EXIT_OK)
}

/// `hazel status`: the kill switch and readiness; exit 1 when the agent
/// answers but is not ready.
pub async fn status(conn: &ClientOptions, out: &mut impl Write) -> Outcome {
    let client = connect(conn)?;
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
        } else if ready.body["error"]["message"].is_string() {
            format!(
                "not ready (HTTP {}: {})",
                ready.status,
                text_of(&ready.body["error"]["message"])
            )
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
        EXIT_OK
    } else {
        EXIT_BLOCKED
    })
}

/// `hazel policy list`.
pub async fn policy_list(conn: &ClientOptions, out: &mut impl Write) -> Outcome {
    let client = connect(conn)?;
    let items = client.policies().await?;
    if conn.json {
        print_json(out, &json!({"items": items, "total": items.len()}));
    } else {
        print_policies(out, &items);
    }
    Ok(EXIT_OK)
}

/// `hazel policy show`.
pub async fn policy_show(conn: &ClientOptions, policy: &str, out: &mut impl Write) -> Outcome {
    let client = connect(conn)?;
    let id = resolve(&client, policy).await?;
    let policy = client.policy(&id).await?;
    if conn.json {
        print_json(out, &policy);
    } else {
        print_policy(out, &policy)?;
    }
    Ok(EXIT_OK)
}

/// `hazel policy enable`: `force_reason` is the reason of `--force`.
pub async fn policy_enable(
    conn: &ClientOptions,
    policy: &str,
    force_reason: Option<&str>,
    out: &mut impl Write,
) -> Outcome {
    let client = connect(conn)?;
    let id = resolve(&client, policy).await?;
    let policy = client.enable_policy(&id, force_reason).await?;
    print_state(out, conn.json, "enabled", &policy);
    Ok(EXIT_OK)
}

/// `hazel policy disable`.
pub async fn policy_disable(conn: &ClientOptions, policy: &str, out: &mut impl Write) -> Outcome {
    let client = connect(conn)?;
    let id = resolve(&client, policy).await?;
    let policy = client.disable_policy(&id).await?;
    print_state(out, conn.json, "disabled", &policy);
    Ok(EXIT_OK)
}

/// `hazel policy delete`.
pub async fn policy_delete(conn: &ClientOptions, policy: &str, out: &mut impl Write) -> Outcome {
    let client = connect(conn)?;
    let id = resolve(&client, policy).await?;
    client.delete_policy(&id).await?;
    if conn.json {
        print_json(out, &json!({"deleted": id}));
    } else {
        let _ = writeln!(out, "deleted {id}");
    }
    Ok(EXIT_OK)
}

/// `hazel policy export`: the spec as YAML (JSON with `--json`).
pub async fn policy_export(conn: &ClientOptions, policy: &str, out: &mut impl Write) -> Outcome {
    let client = connect(conn)?;
    let id = resolve(&client, policy).await?;
    let policy = client.policy(&id).await?;
    if conn.json {
        print_json(out, &policy["spec"]);
    } else {
        let _ = write!(out, "{}", to_yaml(&policy["spec"])?);
    }
    Ok(EXIT_OK)
}

/// `hazel policy import`: stores a new policy from a file.
pub async fn policy_import(conn: &ClientOptions, file: &Path, out: &mut impl Write) -> Outcome {
    let client = connect(conn)?;
    let text = read_file(file)?;
    let content_type = policy_content_type(file, &text);
    let policy = client.create_policy(&text, content_type).await?;
    if conn.json {
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
    Ok(EXIT_OK)
}

/// `hazel policy apply`: per file, create, or update the policy with the
/// same name, or leave it when its hash is the same.
///
/// An update that changes what the policy reacts to or acts on (the
/// trigger types, the host, the target type or the selector mode) is
/// refused unless `replace`: that is a different policy under the same
/// name, as an inverse saved under its forward's name once was. Exit 1
/// also when a spec asking `enabled: true` was saved disabled (its dry-run
/// gate failed), after printing why.
pub async fn policy_apply(
    conn: &ClientOptions,
    files: &[PathBuf],
    replace: bool,
    out: &mut impl Write,
) -> Outcome {
    let client = connect(conn)?;
    apply(&client, conn.json, files, replace, out).await
}

/// Applies `files` one by one (see [`policy_apply`]).
async fn apply(
    client: &Client,
    json: bool,
    files: &[PathBuf],
    replace: bool,
    out: &mut impl Write,
) -> Outcome {
    let mut stored = client.policies().await?;
    let mut results = Vec::new();
    let mut code = EXIT_OK;
    for file in files {
        let text = match read_file(file) {
            Ok(t) => t,
            Err(Failure::Usage(message)) => {
                eprintln!("hazel: {message}");
                code = EXIT_USAGE;
                continue;
            }
            Err(other) => return Err(other),
        };
        let content_type = policy_content_type(file, &text);
        let parsed = serde_norway::from_str::<Value>(&text).ok();
        let name = parsed
            .as_ref()
            .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_string));
        let same_name: Vec<&Value> = match &name {
            Some(name) => stored
                .iter()
                .filter(|p| p["name"].as_str() == Some(name.as_str()))
                .collect(),
            None => Vec::new(),
        };
        let mut change_note = None;
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
            [existing] => {
                let new_spec = parsed.clone().unwrap_or(Value::Null);
                if let Some(change) = identity_change(&existing["spec"], &new_spec) {
                    if !replace {
                        eprintln!(
                            "hazel: {}: refused: this would turn the stored policy {:?} into a different one ({change}); \
                             give it another name, or pass --replace if that is what you mean",
                            file.display(),
                            name.clone().unwrap_or_default()
                        );
                        code = code.max(EXIT_BLOCKED);
                        if json {
                            results.push(json!({
                                "file": file.display().to_string(),
                                "result": "refused",
                                "error": {"code": "apply.identity_change", "message": change},
                            }));
                        }
                        continue;
                    }
                }
                let changed = changed_fields(&existing["spec"], &new_spec);
                let result = update(client, existing, &text, content_type).await;
                if matches!(&result, Ok(("updated", _))) {
                    change_note = Some(format!(
                        "an existing policy was updated, from version {}; changed: {}",
                        text_of(&existing["version_int"]),
                        if changed.is_empty() {
                            "formatting only".to_string()
                        } else {
                            changed.join(", ")
                        }
                    ));
                }
                result
            }
            many => {
                eprintln!(
                    "hazel: {}: {} stored policies are named {:?}; use `hazel policy import` or delete the extras",
                    file.display(),
                    many.len(),
                    name.unwrap_or_default()
                );
                code = code.max(EXIT_BLOCKED);
                continue;
            }
        };
        match result {
            Ok((action, policy)) => {
                let not_enabled = not_enabled_reason(client, &policy).await;
                if !json {
                    let _ = writeln!(
                        out,
                        "{action:<9} {}  {:?} (version {}, status {})",
                        short_id(&policy["id"]),
                        text_of(&policy["name"]),
                        text_of(&policy["version_int"]),
                        text_of(&policy["status"]),
                    );
                    if let Some(note) = &change_note {
                        let _ = writeln!(out, "          {note}");
                    }
                    if let Some((why, _)) = &not_enabled {
                        for line in why {
                            let _ = writeln!(out, "          {line}");
                        }
                    }
                }
                if let Some((_, true)) = not_enabled {
                    code = code.max(EXIT_BLOCKED);
                }
                results.push(json!({
                    "file": file.display().to_string(),
                    "result": action,
                    "policy": policy,
                }));
            }
            Err(e) if matches!(e.exit_code(), EXIT_AUTH | EXIT_UNREACHABLE) => {
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
                if code == EXIT_OK {
                    code = EXIT_BLOCKED;
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

/// Why an applied policy is not enabled, as lines to print, and whether
/// that is a failure (its spec asks `enabled: true` but the dry-run gate
/// kept it disabled); `None` when it is enabled.
async fn not_enabled_reason(client: &Client, policy: &Value) -> Option<(Vec<String>, bool)> {
    if policy["status"] == "enabled" {
        return None;
    }
    if policy["enabled_intent"] != json!(true) {
        return Some((
            vec![
                "not enabled: the spec says `enabled: false`; `hazel policy enable` it when ready"
                    .into(),
            ],
            false,
        ));
    }
    let dry = &policy["last_dry_run"];
    let mut lines = vec![format!(
        "not enabled: the spec asks `enabled: true` but its dry-run has severity {}; fix what it found and apply again, or `hazel policy enable --force --reason ...`",
        text_of(&dry["severity"])
    )];
    if let Some(id) = dry["transcript_id"].as_str() {
        if let Ok(t) = client.get(&format!("/api/transcripts/{id}")).await {
            for action in t["actions"].as_array().into_iter().flatten() {
                if let Some(error) = action.get("error").filter(|e| !e.is_null()) {
                    lines.push(format!(
                        "  {}: {}",
                        text_of(&action["host"]),
                        one_line(error)
                    ));
                }
                let targets = action["targets"].as_array().cloned().unwrap_or_default();
                for (i, answer) in action["answers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    if matches!(answer["severity"].as_str(), Some("error" | "blocker")) {
                        lines.push(format!(
                            "  {}: {}",
                            targets.get(i).map(text_of).unwrap_or_else(|| "-".into()),
                            text_of(&answer["reason"])
                        ));
                    }
                }
            }
            for finding in t["findings"].as_array().into_iter().flatten() {
                if matches!(finding["severity"].as_str(), Some("error" | "blocker")) {
                    lines.push(issue_line(finding));
                }
            }
        }
        lines.push(format!("  transcript: hazel transcript {id}"));
    }
    Some((lines, true))
}

/// What makes a stored policy a different one if `new` replaced it: its
/// trigger types (with the state a state trigger waits for: `on_battery`
/// and `on_mains` are a forward and its inverse), its host, its target
/// type or its selector mode.
fn identity_change(old: &Value, new: &Value) -> Option<String> {
    let triggers = |spec: &Value| -> Vec<String> {
        let mut kinds: Vec<String> = spec["trigger_group"]["triggers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| match t["equals"].as_str() {
                Some(state) => format!("{} = {state}", text_of(&t["type"])),
                None => text_of(&t["type"]),
            })
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds
    };
    let mut changes = Vec::new();
    let (was, now) = (triggers(old), triggers(new));
    if was != now {
        changes.push(format!("trigger {} -> {}", was.join("+"), now.join("+")));
    }
    for (label, pointer) in [
        ("host", "/targets/host_id"),
        ("target type", "/targets/target_type"),
        ("selector mode", "/targets/selector/mode"),
    ] {
        let (a, b) = (old.pointer(pointer), new.pointer(pointer));
        if a != b {
            changes.push(format!(
                "{label} {} -> {}",
                a.map_or("-".into(), text_of),
                b.map_or("-".into(), text_of)
            ));
        }
    }
    (!changes.is_empty()).then(|| changes.join(", "))
}

/// The top-level spec fields whose value differs (`actions`, `windows`...).
fn changed_fields(old: &Value, new: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| k.to_string())
        .collect()
}

pub(super) fn connect(conn: &ClientOptions) -> Result<Client, Failure> {
    Ok(Client::new(&conn.url, conn.token.clone())?)
}

/// A policy argument: an id as is, else the id of the one policy with that
/// name, else of the one whose id starts with it (the short ids tables
/// print; at least 4 characters).
pub(super) async fn resolve(client: &Client, policy: &str) -> Result<String, Failure> {
    if uuid::Uuid::parse_str(policy).is_ok() {
        return Ok(policy.to_string());
    }
    let all = client.policies().await?;
    resolve_in(&all, policy)
}

/// [`resolve`] over a listing already fetched.
pub(super) fn resolve_in(all: &[Value], policy: &str) -> Result<String, Failure> {
    let named: Vec<&Value> = all
        .iter()
        .filter(|p| p["name"].as_str() == Some(policy))
        .collect();
    let prefixed: Vec<&Value> = if policy.len() >= 4 {
        all.iter()
            .filter(|p| p["id"].as_str().is_some_and(|id| id.starts_with(policy)))
            .collect()
    } else {
        Vec::new()
    };
    match (named.as_slice(), prefixed.as_slice()) {
        ([one], _) | ([], [one]) => Ok(text_of(&one["id"])),
        ([], []) => Err(Failure::Refused(format!(
            "no policy has the id, short id or name {policy:?}; `hazel policy list` shows them"
        ))),
        ([], many) => Err(Failure::Usage(format!(
            "{} policies have an id starting with {policy:?}; give more of it",
            many.len()
        ))),
        (many, _) => Err(Failure::Usage(format!(
            "{} policies are named {policy:?}; pass the id instead",
            many.len()
        ))),
    }
}

fn read_file(path: &Path) -> Result<String, Failure> {
    super::read_bounded(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))
}

/// Reads an event file (`-` is standard input) as JSON, else YAML.
pub(super) fn read_event(source: &str) -> Result<Value, Failure> {
    let text = if source == "-" {
        super::read_limited(std::io::stdin(), "standard input")
            .map_err(|e| Failure::Usage(format!("cannot read standard input: {e}")))?
    } else {
        read_file(Path::new(source))?
    };
    serde_json::from_str(&text)
        .or_else(|json_err| {
            serde_norway::from_str::<Value>(&text).map_err(|_| json_err.to_string())
        })
        .map_err(|e| Failure::Usage(format!("{source}: not a JSON or YAML event: {e}")))
}

/// Exit 1 when a severity is `error` or `blocker`.
fn severity_code(severity: &Value) -> i32 {
    match severity.as_str() {
        Some("error" | "blocker") => EXIT_BLOCKED,
        _ => EXIT_OK,
    }
}
