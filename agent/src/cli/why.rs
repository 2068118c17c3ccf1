//! The "why didn't it fire?" commands (SPEC §9): `hazel explain` (the last
//! decision of a policy, or what it would decide on an event: the trigger,
//! each condition with the value it read, the windows, the targets and the
//! guards, with their reason codes), `hazel audit` (the audit log as a
//! table, filtered and followed), `hazel hosts show` (one host's inventory)
//! and `hazel transcript` (a kept dry-run transcript). Each reads the API
//! a running agent serves; `--json` prints its answers unchanged.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

use super::client_cmds::{connect, read_event, resolve_in, ClientOptions, Failure, Outcome};
use super::render::{
    one_line, policy_label, policy_names, print_json, print_timeline, print_transcript, run_reason,
    short_id, stamp, text_of, PolicyNames,
};
use super::{EXIT_BLOCKED, EXIT_OK};
use crate::client::{table, Client};

/// The audit kinds that carry an engine decision with its `explain`.
const DECISION_KINDS: [&str; 5] = [
    "engine.evaluated",
    "engine.scheduled",
    "engine.run",
    "engine.suppressed_window",
    "engine.retrying",
];

/// How many audit records `explain --last` reads to find the last decision.
const DECISION_SCAN: usize = 200;

/// What `hazel explain` explains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Explained {
    /// The policy's last decision, from the audit log and its ledger.
    Last,
    /// What the policy would decide on this event now (an event dry-run).
    Event(String),
}

/// `hazel explain POLICY [--last | --event FILE]`: why a policy acted or
/// did not. Exits 1 when the explained decision has an error.
pub async fn explain(
    conn: &ClientOptions,
    policy: &str,
    what: &Explained,
    out: &mut impl Write,
) -> Outcome {
    let client = connect(conn)?;
    let all = client.policies().await?;
    let id = resolve_in(&all, policy)?;
    let stored = client.policy(&id).await?;
    match what {
        Explained::Last => explain_last(&client, conn.json, &stored, out).await,
        Explained::Event(source) => {
            let event = read_event(source)?;
            explain_event(&client, conn.json, &stored, &event, out).await
        }
    }
}

async fn explain_last(
    client: &Client,
    json: bool,
    stored: &Value,
    out: &mut impl Write,
) -> Outcome {
    let id = text_of(&stored["id"]);
    let audit = client
        .get(&format!("/api/audit?policy_id={id}&limit={DECISION_SCAN}"))
        .await?;
    let decision = audit["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| &item["record"])
        .find(|r| {
            r["kind"]
                .as_str()
                .is_some_and(|k| DECISION_KINDS.contains(&k))
                && r["details"]["explain"].is_object()
        })
        .cloned();
    let runs = client.executions(&id, Some(1)).await?;
    let last_run = runs.as_array().and_then(|r| r.first()).cloned();
    if json {
        print_json(
            out,
            &json!({"policy": policy_summary(stored), "decision": decision, "last_run": last_run}),
        );
        return Ok(decision
            .as_ref()
            .map_or(EXIT_OK, |d| severity_exit(&d["details"])));
    }
    write_policy_header(out, stored);
    let Some(decision) = decision else {
        let _ = writeln!(
            out,
            "no decision recorded: no event its trigger waits for ({}) has reached it{}",
            trigger_kinds(stored),
            if stored["status"] == "enabled" {
                ""
            } else {
                " (a disabled policy is not evaluated)"
            }
        );
        let _ = writeln!(
            out,
            "try: hazel explain {} --event FILE   (what it would decide on an event now)",
            short_id(&stored["id"])
        );
        return Ok(EXIT_OK);
    };
    let _ = writeln!(
        out,
        "last decision: {} ({}, correlation {})",
        stamp(&decision["ts"]),
        text_of(&decision["kind"]),
        text_of(&decision["correlation_id"])
    );
    write_explain(
        out,
        &decision["details"]["code"],
        &decision["details"]["explain"],
    );
    if let Some(run) = last_run {
        let why = run_reason(&run);
        let _ = writeln!(
            out,
            "last run:     {} {} {}{}",
            short_id(&run["run_id"]),
            stamp(&run["started_at"]),
            text_of(&run["status"]),
            if why.is_empty() {
                String::new()
            } else {
                format!(": {why}")
            }
        );
    }
    Ok(severity_exit(&decision["details"]))
}

async fn explain_event(
    client: &Client,
    json: bool,
    stored: &Value,
    event: &Value,
    out: &mut impl Write,
) -> Outcome {
    let id = text_of(&stored["id"]);
    let answer = client.inject_event(event, true).await?;
    let decision = answer["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["policy_id"].as_str() == Some(id.as_str()))
        .cloned();
    let entries: Vec<Value> = answer["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["policy_id"].as_str() == Some(id.as_str()))
        .cloned()
        .collect();
    if json {
        print_json(
            out,
            &json!({
                "policy": policy_summary(stored),
                "decision": decision,
                "timeline": entries,
                "transcript_id": answer["transcript_id"],
            }),
        );
        return Ok(decision.as_ref().map_or(EXIT_OK, severity_exit));
    }
    write_policy_header(out, stored);
    let Some(decision) = decision else {
        let _ = writeln!(
            out,
            "this event does not reach the policy: its trigger waits for {}, the event is {} on {}{}",
            trigger_kinds(stored),
            text_of(&event["kind"]),
            text_of(&event["subject"]["id"]),
            if stored["status"] == "enabled" {
                ""
            } else {
                " (and a disabled policy is not evaluated)"
            }
        );
        return Ok(EXIT_OK);
    };
    let _ = writeln!(
        out,
        "on this event now (simulated, transcript {}):",
        text_of(&answer["transcript_id"])
    );
    write_explain(out, &decision["code"], &decision["explain"]);
    for planned in decision["planned"].as_array().into_iter().flatten() {
        let targets: Vec<String> = planned["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text_of)
            .collect();
        let _ = writeln!(
            out,
            "would run:    {} {} on {}: {}",
            text_of(&planned["capability"]),
            text_of(&planned["verb"]),
            text_of(&planned["host"]),
            targets.join(", ")
        );
    }
    for row in decision["skipped"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "skipped:      {}: {} ({})",
            text_of(&row["target"]),
            text_of(&row["reason"]),
            text_of(&row["code"])
        );
    }
    for entry in entries.iter().filter(|e| e["kind"] == "countdown") {
        let _ = writeln!(
            out,
            "after hold:   at {}: {} ({})",
            stamp(&entry["at"]),
            entry["planned"]
                .as_array()
                .filter(|p| !p.is_empty())
                .map_or("nothing would run".to_string(), |p| format!(
                    "{} action(s) would run",
                    p.len()
                )),
            text_of(&entry["code"])
        );
        for reading in entry["conditions"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "              condition: {}", text_of(reading));
        }
    }
    Ok(severity_exit(&decision))
}

/// `policy "NAME" (SHORT-ID), version V, status S`.
fn write_policy_header(out: &mut impl Write, stored: &Value) {
    let _ = writeln!(
        out,
        "policy {:?} ({}), version {}, status {}",
        text_of(&stored["name"]),
        short_id(&stored["id"]),
        text_of(&stored["version_int"]),
        text_of(&stored["status"]),
    );
}

/// A decision's reason code and each part of its explain, one labelled
/// line per step (a multi-line part is indented under its label).
fn write_explain(out: &mut impl Write, code: &Value, explain: &Value) {
    let _ = writeln!(out, "result:       {}", text_of(code));
    for field in [
        "trigger",
        "conditions",
        "windows",
        "targets",
        "guards",
        "restart",
    ] {
        let Some(part) = explain.get(field).filter(|v| !v.is_null()) else {
            continue;
        };
        let lines = match part {
            Value::String(text) if field == "conditions" => split_conditions(text),
            Value::String(text) => text.lines().map(str::to_string).collect(),
            Value::Array(items) => vec![items.iter().map(text_of).collect::<Vec<_>>().join(", ")],
            other => vec![one_line(other)],
        };
        for (i, line) in lines.iter().enumerate() {
            let label = if i == 0 {
                format!("{field}:")
            } else {
                String::new()
            };
            let _ = writeln!(out, "{label:<13} {line}");
        }
    }
}

/// `condition 1: ... ; condition 2: ...` as one line per condition.
fn split_conditions(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("; condition ") {
        lines.push(rest[..at].to_string());
        rest = &rest[at + 2..];
    }
    lines.push(rest.to_string());
    lines
}

/// The event kinds a stored policy's triggers wait for, e.g. `ups.state`.
fn trigger_kinds(stored: &Value) -> String {
    let kinds: Vec<String> = stored["spec"]["trigger_group"]["triggers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| text_of(&t["type"]))
        .collect();
    if kinds.is_empty() {
        "nothing".into()
    } else {
        kinds.join(" or ")
    }
}

fn policy_summary(stored: &Value) -> Value {
    json!({
        "id": stored["id"],
        "name": stored["name"],
        "status": stored["status"],
        "enabled_intent": stored["enabled_intent"],
        "version_int": stored["version_int"],
    })
}

/// Exit 1 when a decision's severity is error or blocker.
fn severity_exit(decision: &Value) -> i32 {
    match decision["severity"].as_str() {
        Some("error" | "blocker") => EXIT_BLOCKED,
        _ => EXIT_OK,
    }
}

/// What `hazel audit` shows.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// A policy's id, short id or name.
    pub policy: Option<String>,
    /// One audit kind (`engine.evaluated`, `policy.created`, ...).
    pub kind: Option<String>,
    /// Records since a duration ago (`1h`, `30m`) or an RFC 3339 instant.
    pub since: Option<String>,
    /// At most this many records (newest).
    pub limit: usize,
    /// Keep printing new records as they are written, until interrupted.
    pub follow: bool,
    /// How often `--follow` asks.
    pub poll: Duration,
}

/// `hazel audit`: the audit log, oldest of the selection first, one row
/// per record (time, kind, policy by name, who, what); `--follow` then
/// prints each new record as it is written.
pub async fn audit(conn: &ClientOptions, filter: &AuditFilter, out: &mut impl Write) -> Outcome {
    let client = connect(conn)?;
    let all = client.policies().await?;
    let mut names = policy_names(&all);
    let mut query = Vec::new();
    if let Some(policy) = &filter.policy {
        query.push(format!("policy_id={}", resolve_in(&all, policy)?));
    }
    if let Some(kind) = &filter.kind {
        query.push(format!("kind={kind}"));
    }
    if let Some(since) = &filter.since {
        query.push(format!("since={}", since_instant(since)?));
    }
    let base = query.join("&");
    let page = client
        .get(&format!(
            "/api/audit?{base}{}limit={}",
            if base.is_empty() { "" } else { "&" },
            filter.limit
        ))
        .await?;
    let mut items: Vec<Value> = page["items"].as_array().cloned().unwrap_or_default();
    items.reverse();
    let mut last = items.iter().filter_map(|i| i["seq"].as_i64()).max();
    if conn.json {
        for item in &items {
            let _ = writeln!(out, "{item}");
        }
    } else {
        let rows: Vec<Vec<String>> = items.iter().map(|i| audit_row(i, &names)).collect();
        let _ = write!(out, "{}", table(&AUDIT_HEADER, &rows));
        if !filter.follow {
            let _ = writeln!(out, "{} record(s)", items.len());
        }
    }
    let _ = out.flush();
    if !filter.follow {
        return Ok(EXIT_OK);
    }
    loop {
        tokio::time::sleep(filter.poll).await;
        let after = last.map(|s| format!("after={s}&")).unwrap_or_default();
        let page = client
            .get(&format!(
                "/api/audit?{after}{base}{}limit=500",
                if base.is_empty() { "" } else { "&" }
            ))
            .await?;
        let mut fresh: Vec<Value> = page["items"].as_array().cloned().unwrap_or_default();
        if fresh.is_empty() {
            continue;
        }
        fresh.reverse();
        if fresh
            .iter()
            .any(|i| i["record"]["kind"] == "policy.created")
        {
            names = policy_names(&client.policies().await?);
        }
        for item in &fresh {
            if conn.json {
                let _ = writeln!(out, "{item}");
            } else {
                let row = audit_row(item, &names);
                // Rows printed one by one, in the table's columns as far as
                // their widths allow.
                let _ = writeln!(out, "{}", row.join("  "));
            }
        }
        let _ = out.flush();
        last = fresh
            .iter()
            .filter_map(|i| i["seq"].as_i64())
            .max()
            .or(last);
    }
}

const AUDIT_HEADER: [&str; 5] = ["TIME", "KIND", "POLICY", "BY", "WHAT"];

/// One audit record as a row: its time, kind, policy name, who did it
/// (`engine` for the engine's own records) and a one-line summary.
fn audit_row(item: &Value, names: &PolicyNames) -> Vec<String> {
    let record = &item["record"];
    let details = &record["details"];
    let by = details["by"]
        .as_str()
        .map_or_else(|| "engine".to_string(), str::to_string);
    vec![
        stamp(&record["ts"]),
        text_of(&record["kind"]),
        if record["policy_id"].is_null() {
            "-".into()
        } else {
            policy_label(names, &record["policy_id"])
        },
        by,
        audit_what(details),
    ]
}

/// The most telling part of an audit record's details, on one line of at
/// most 120 characters: a decision's code and its first reason, else the
/// details without who did it.
fn audit_what(details: &Value) -> String {
    let text = if let Some(explain) = details["explain"].as_object() {
        let reason = ["windows", "targets", "conditions", "trigger", "restart"]
            .iter()
            .find_map(|f| explain.get(*f).and_then(Value::as_str))
            .and_then(|t| t.lines().last())
            .unwrap_or("");
        format!("{}: {reason}", text_of(&details["code"]))
    } else {
        let mut rest = details.clone();
        if let Some(map) = rest.as_object_mut() {
            map.remove("by");
            map.remove("role");
        }
        one_line(&rest)
    };
    if text.chars().count() > 120 {
        let cut: String = text.chars().take(117).collect();
        format!("{cut}...")
    } else {
        text
    }
}

/// `--since`: a duration ago (`1h`, `90m`, `2d`) or an RFC 3339 instant,
/// as the RFC 3339 instant the API takes.
fn since_instant(since: &str) -> Result<String, Failure> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(since) {
        return Ok(at
            .with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    let seconds = crate::spec::duration::parse_duration(since).map_err(|e| {
        Failure::Usage(format!(
            "--since {since:?}: {e}; give a duration ago (1h, 30m, 2d) or an RFC 3339 time"
        ))
    })?;
    let at = chrono::Utc::now() - chrono::Duration::seconds(seconds.min(i64::MAX as u64) as i64);
    Ok(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// `hazel hosts show HOST [--refresh]`: one host's inventory, each target
/// with its type, state and labels, and whether the snapshot is stale.
pub async fn host_show(
    conn: &ClientOptions,
    host: &str,
    refresh: bool,
    out: &mut impl Write,
) -> Outcome {
    let client = connect(conn)?;
    let path = format!(
        "/api/hosts/{host}/inventory{}",
        if refresh { "?refresh=true" } else { "" }
    );
    let inventory = client.get(&path).await?;
    if conn.json {
        print_json(out, &inventory);
        return Ok(EXIT_OK);
    }
    let targets = inventory["targets"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "host {}: inventory at {} ({}), {} target(s)",
        text_of(&inventory["host"]),
        stamp(&inventory["ts"]),
        if inventory["stale"] == json!(true) {
            "stale"
        } else {
            "fresh"
        },
        targets.len()
    );
    for note in inventory["partial"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "partial discovery: {}", text_of(note));
    }
    if let Some(error) = inventory["refresh"]["error"].as_object() {
        let _ = writeln!(
            out,
            "refresh failed: {} ({})",
            text_of(&error["message"].clone()),
            text_of(&error["code"].clone())
        );
    }
    let rows: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            let labels: Vec<String> = t["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", text_of(v)))
                .collect();
            vec![
                format!("{}:{}", text_of(&t["type"]), text_of(&t["id"])),
                text_of(&t["name"]),
                text_of(&t["status"]),
                if labels.is_empty() {
                    "-".into()
                } else {
                    labels.join(",")
                },
            ]
        })
        .collect();
    let _ = write!(
        out,
        "{}",
        table(&["TARGET", "NAME", "STATE", "LABELS"], &rows)
    );
    Ok(EXIT_OK)
}

/// `hazel transcript ID`: a kept dry-run transcript, a policy's (as
/// `hazel dry-run` prints it) or an event's (as `hazel simulate` does).
pub async fn transcript(conn: &ClientOptions, id: &str, out: &mut impl Write) -> Outcome {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(Failure::Usage(format!(
            "{id:?} is not a transcript id; commands print it as `transcript <uuid>`"
        )));
    }
    let client = connect(conn)?;
    let transcript = client.get(&format!("/api/transcripts/{id}")).await?;
    if conn.json {
        print_json(out, &transcript);
    } else if transcript["timeline"].is_array() {
        print_timeline(out, &transcript);
    } else {
        let names = policy_names(&client.policies().await?);
        print_transcript(out, &transcript, &names);
    }
    Ok(match transcript["severity"].as_str() {
        Some("error" | "blocker") => EXIT_BLOCKED,
        _ => EXIT_OK,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_split_one_per_line() {
        assert_eq!(
            split_conditions(
                "condition 1: ups.runtime_minutes >= 5 is false: ups1 reports 3; condition 2: ups.load < 80 is true: ups1 reports 20"
            ),
            [
                "condition 1: ups.runtime_minutes >= 5 is false: ups1 reports 3",
                "condition 2: ups.load < 80 is true: ups1 reports 20"
            ]
        );
        assert_eq!(
            split_conditions("all 2 conditions hold"),
            ["all 2 conditions hold"]
        );
    }

    #[test]
    fn since_takes_a_duration_ago_or_an_instant_and_names_the_flag_otherwise() {
        assert_eq!(
            since_instant("2026-12-07T10:00:00+01:00").ok().unwrap(),
            "2026-12-07T09:00:00Z"
        );
        let ago = since_instant("1h").ok().unwrap();
        let at = chrono::DateTime::parse_from_rfc3339(&ago).unwrap();
        let diff = chrono::Utc::now() - at.with_timezone(&chrono::Utc);
        assert!((3590..=3610).contains(&diff.num_seconds()), "{diff}");
        match since_instant("yesterday") {
            Err(Failure::Usage(message)) => assert!(message.contains("--since"), "{message}"),
            _ => panic!("a bad --since is a usage error"),
        }
    }

    #[test]
    fn a_runs_reason_is_its_first_failed_target_or_its_explain() {
        let run = json!({"results": [
            {"target": "vm:101", "ok": true, "code": "executed"},
            {"target": "vm:106", "ok": false, "code": "driver.locked", "reason": "VM is locked (backup)"},
            {"target": "vm:107", "ok": false, "code": "host.unreachable"},
        ]});
        assert_eq!(
            run_reason(&run),
            "vm:106: driver.locked (VM is locked (backup)) and 1 more"
        );
        let nothing = json!({"results": [], "explain": {"trigger": "fired", "targets": "the selector resolved to no targets"}});
        assert_eq!(run_reason(&nothing), "the selector resolved to no targets");
        assert_eq!(run_reason(&json!({"results": [{"ok": true}]})), "");
    }

    #[test]
    fn an_audit_row_names_the_policy_and_the_decision_reason() {
        let names = PolicyNames::from([(
            "6f1c2a0e-3b4d-4e5f-8a9b-0c1d2e3f4a5b".to_string(),
            "On battery".to_string(),
        )]);
        let item = json!({"seq": 3, "record": {
            "ts": "2026-12-07T10:30:05.123456Z",
            "kind": "engine.evaluated",
            "policy_id": "6f1c2a0e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
            "correlation_id": "0b7d0000-0000-4000-8000-000000000000",
            "details": {"code": "engine.not_matched", "explain": {
                "trigger": "fired by trigger 0 (ups.state = on_battery)",
                "conditions": "condition 1: ups.runtime_minutes >= 5 cannot be evaluated: ups1 reports no battery.runtime"
            }}
        }});
        let row = audit_row(&item, &names);
        assert_eq!(row[1], "engine.evaluated");
        assert_eq!(row[2], "On battery");
        assert_eq!(row[3], "engine");
        assert_eq!(
            row[4],
            "engine.not_matched: condition 1: ups.runtime_minutes >= 5 cannot be evaluated: ups1 reports no battery.runtime"
        );
        let created = json!({"seq": 1, "record": {
            "ts": "2026-12-07T10:30:05Z", "kind": "policy.created", "policy_id": null,
            "details": {"by": "alice", "role": "admin", "version_int": 1}
        }});
        let row = audit_row(&created, &names);
        assert_eq!(
            (row[2].as_str(), row[3].as_str(), row[4].as_str()),
            ("-", "alice", "version_int=1")
        );
    }
}
