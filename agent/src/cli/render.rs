//! How the client commands print for people: tables and one-line summaries
//! of the API's JSON answers (`--json` prints them unchanged instead). The
//! layout is what `agent/tests/cli_client.rs` pins.

use std::io::Write;

use serde_json::{json, Value};

use super::client_cmds::Failure;
use crate::client::table;

pub(super) fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

pub(super) fn print_json(out: &mut impl Write, value: &impl serde::Serialize) {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    let _ = writeln!(out, "{text}");
}

pub(super) fn to_yaml(value: &Value) -> Result<String, Failure> {
    serde_norway::to_string(value)
        .map_err(|e| Failure::Refused(format!("cannot render the spec as YAML: {e}")))
}

/// A scalar as plain text (`-` for null).
pub(super) fn text_of(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn one_line(value: &Value) -> String {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", text_of(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => text_of(other),
    }
}

pub(super) fn short(hash: &Value) -> String {
    text_of(hash).chars().take(12).collect()
}

/// Whether times print in UTC (`--utc`, `HAZEL_UTC=1`) rather than in the
/// reader's local zone; set once by the binary before a command runs.
static UTC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints every time of this process in UTC instead of local time.
pub fn use_utc(utc: bool) {
    UTC.store(utc, std::sync::atomic::Ordering::Relaxed);
}

fn utc() -> bool {
    UTC.load(std::sync::atomic::Ordering::Relaxed)
}

/// An RFC 3339 instant to the second, in the reader's zone (or UTC, then
/// with a `Z`): `2026-12-07 10:30:05`. Anything else prints as it is.
pub(super) fn stamp(value: &Value) -> String {
    match value.as_str().and_then(instant) {
        Some(at) if utc() => at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        Some(at) => at
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        None => text_of(value),
    }
}

/// A UUID's first 8 characters, as tables show it (every command takes
/// a unique prefix back); anything else as it is.
pub(super) fn short_id(value: &Value) -> String {
    let text = text_of(value);
    match uuid::Uuid::parse_str(&text) {
        Ok(_) => text.chars().take(8).collect(),
        Err(_) => text,
    }
}

/// A policy as people name it: its name when known, else its short id.
pub(super) fn policy_label(names: &PolicyNames, id: &Value) -> String {
    id.as_str()
        .and_then(|id| names.get(id))
        .cloned()
        .unwrap_or_else(|| short_id(id))
}

/// Stored policies' names by id, for tables that would show a UUID.
pub(super) type PolicyNames = std::collections::BTreeMap<String, String>;

/// The id -> name map of a `GET /api/policies` listing.
pub(super) fn policy_names(policies: &[Value]) -> PolicyNames {
    policies
        .iter()
        .filter_map(|p| {
            Some((
                p["id"].as_str()?.to_string(),
                p["name"].as_str()?.to_string(),
            ))
        })
        .collect()
}

pub(super) fn issue_line(issue: &Value) -> String {
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

pub(super) fn print_policies(out: &mut impl Write, items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|p| {
            vec![
                short_id(&p["id"]),
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

pub(super) fn print_policy(out: &mut impl Write, p: &Value) -> Result<(), Failure> {
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
    let _ = writeln!(out, "hash:     {}", short(&p["hash"]));
    let _ = writeln!(out, "updated:  {}", stamp(&p["updated_at"]));
    let dry = &p["last_dry_run"];
    if dry.is_object() {
        let _ = writeln!(
            out,
            "dry-run:  {} at {} (transcript {})",
            text_of(&dry["severity"]),
            stamp(&dry["ts"]),
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

pub(super) fn print_state(out: &mut impl Write, json: bool, verb: &str, p: &Value) {
    if json {
        print_json(out, p);
    } else {
        let _ = writeln!(
            out,
            "{verb} {} {:?} (status {})",
            short_id(&p["id"]),
            text_of(&p["name"]),
            text_of(&p["status"])
        );
    }
}

/// A policy dry-run's transcript; `names` turns its policy id into a name.
pub(super) fn print_transcript(out: &mut impl Write, t: &Value, names: &PolicyNames) {
    let _ = writeln!(
        out,
        "dry-run of {}: severity {} (transcript {})",
        policy_label(names, &t["policy_id"]),
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
        stamp(&inv["ts"]),
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

/// An event's answer: its summary line and one row per decision, the
/// policy by name (`names`).
pub(super) fn print_decisions(out: &mut impl Write, answer: &Value, names: &PolicyNames) {
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
                policy_label(names, &d["policy_id"]),
                text_of(&d["severity"]),
                text_of(&d["code"]),
                short_id(&d["run_id"]),
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

/// An event dry-run as a timeline (SPEC §6 "Dry-run of an event"): the
/// summary line of [`print_decisions`], then one paragraph per entry
/// naming the policy and listing its targets:
///
/// ```text
/// now (10:30:05): Notify on battery -> webhook.notify post integration:ops
/// in 2m (10:32:05): On battery: stop low-tier VMs -> proxmox.vm shutdown vm:101, vm:102
///   hold: trigger 0 (ups.state = on_battery for 120s): ups1@nas entered on_battery; must stay 120s
///   condition: ups.runtime_minutes >= 5 is true: ups1@nas reports 12
/// when the mains return: Restore (inverse) would run proxmox.vm start vm:101, vm:102
/// ```
pub(super) fn print_timeline(out: &mut impl Write, answer: &Value) {
    let Some(timeline) = answer["timeline"].as_array() else {
        // An agent that predates the timeline.
        return print_decisions(out, answer, &PolicyNames::new());
    };
    let decisions = answer["decisions"].as_array().map_or(0, Vec::len);
    let _ = writeln!(
        out,
        "simulated: correlation {}, {decisions} decision(s), severity {} (transcript {})",
        text_of(&answer["correlation_id"]),
        text_of(&answer["severity"]),
        text_of(&answer["transcript_id"]),
    );
    if timeline.is_empty() {
        let _ = writeln!(out, "no policy reacts to this event");
        return;
    }
    let now = answer["ts"].as_str().and_then(instant);
    for entry in timeline {
        let name = match entry["policy_name"].as_str() {
            Some(name) => name.to_string(),
            None => text_of(&entry["policy_id"]),
        };
        let planned = entry["planned"].as_array().cloned().unwrap_or_default();
        let actions: Vec<String> = planned.iter().map(planned_text).collect();
        let when = when_text(entry, now);
        let what = match (entry["kind"].as_str(), actions.is_empty()) {
            (Some("inverse"), true) => format!("{name} would restore nothing"),
            (Some("inverse"), false) => format!("{name} would run {}", actions.join("; ")),
            (_, false) => format!("{name} -> {}", actions.join("; ")),
            (_, true) => format!("{name}: nothing would run ({})", text_of(&entry["code"])),
        };
        let _ = writeln!(out, "{when}: {what}");
        if entry["kind"] == "countdown" {
            if let Some(hold) = entry["trigger"].as_str().filter(|t| !t.is_empty()) {
                for line in hold.lines().filter(|l| l.starts_with("trigger ")) {
                    let _ = writeln!(out, "  hold: {line}");
                }
            }
        }
        if let Some(restores) = entry["restores"].as_object() {
            let forward = restores
                .get("policy_name")
                .and_then(Value::as_str)
                .map_or_else(|| text_of(&restores["policy_id"]), str::to_string);
            let _ = writeln!(out, "  restores what {forward} changed");
        }
        for reading in entry["conditions"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  condition: {}", text_of(reading));
        }
        for p in &planned {
            if let Some(problem) = dry_run_problem(&p["dry_run"]) {
                let _ = writeln!(out, "  dry-run: {problem}");
            }
        }
        for row in entry["skipped"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  skipped {}: {} ({})",
                text_of(&row["target"]),
                text_of(&row["reason"]),
                text_of(&row["code"])
            );
        }
    }
}

/// `proxmox.vm shutdown vm:101, vm:102`
fn planned_text(planned: &Value) -> String {
    let targets: Vec<String> = planned["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text_of)
        .collect();
    format!(
        "{} {} {}",
        text_of(&planned["capability"]),
        text_of(&planned["verb"]),
        targets.join(", ")
    )
}

/// When a timeline entry happens: `now (10:30:05)`, `in 2m (10:32:05)`,
/// `when the mains return`, `when <inverse trigger>`.
fn when_text(entry: &Value, now: Option<chrono::DateTime<chrono::Utc>>) -> String {
    let at = entry["at"].as_str().and_then(instant);
    match (entry["kind"].as_str(), at) {
        (Some("inverse"), _) => {
            let trigger = text_of(&entry["trigger"]);
            if trigger.contains("ups.state = on_mains") {
                "when the mains return".into()
            } else {
                format!("when {trigger}")
            }
        }
        (Some("now"), Some(at)) => format!("now ({})", clock_time(at)),
        (_, Some(at)) => match now {
            Some(now) => format!(
                "in {} ({})",
                span_text((at - now).num_milliseconds().max(0) as u64 / 1000),
                clock_time(at)
            ),
            None => format!("at {}", clock_time(at)),
        },
        _ => text_of(&entry["kind"]),
    }
}

fn instant(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// The time of day in the local zone of the person reading.
fn clock_time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.with_timezone(&chrono::Local)
        .format("%H:%M:%S")
        .to_string()
}

/// `45s`, `2m`, `2m30s`, `1h`, `1h5m`.
fn span_text(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// A planned action's dry-run when it says more than "fine": the call's
/// error, or the reasons of answers above `info`.
fn dry_run_problem(dry_run: &Value) -> Option<String> {
    if let Some(error) = dry_run.get("error") {
        return Some(format!("error: {}", text_of(error)));
    }
    let reasons: Vec<String> = dry_run["answers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["severity"] != "info")
        .map(|a| {
            format!(
                "{} {}: {}",
                text_of(&a["severity"]),
                text_of(&a["idempotency_key"]),
                text_of(&a["reason"])
            )
        })
        .collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

pub(super) fn print_inverse(out: &mut impl Write, inverse: &Value) -> Result<(), Failure> {
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

/// A policy's ledger, newest first, each run with why it is not all ok.
pub(super) fn print_executions(out: &mut impl Write, runs: &Value) {
    let runs = runs.as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let results = r["results"].as_array().cloned().unwrap_or_default();
            let ok = results.iter().filter(|x| x["ok"] == json!(true)).count();
            vec![
                short_id(&r["run_id"]),
                stamp(&r["started_at"]),
                text_of(&r["status"]),
                text_of(&r["severity"]),
                text_of(&r["event"]["kind"]),
                format!("{ok}/{}", results.len()),
                run_reason(r),
            ]
        })
        .collect();
    let header = ["RUN", "STARTED", "STATUS", "SEVERITY", "EVENT", "OK", "WHY"];
    let _ = write!(out, "{}", table(&header, &rows));
    let _ = writeln!(out, "{} run(s)", runs.len());
}

/// Why a run is not simply "done": the first result that is not ok
/// (`target: code: reason`) and how many more; for a run with no results,
/// its explain's first reason. Empty when every result is ok.
pub(super) fn run_reason(run: &Value) -> String {
    let results = run["results"].as_array().cloned().unwrap_or_default();
    let failed: Vec<&Value> = results.iter().filter(|x| x["ok"] != json!(true)).collect();
    if let Some(first) = failed.first() {
        let mut text = format!("{}: {}", text_of(&first["target"]), text_of(&first["code"]));
        if let Some(reason) = first["reason"].as_str().filter(|r| !r.is_empty()) {
            text.push_str(&format!(" ({reason})"));
        }
        if failed.len() > 1 {
            text.push_str(&format!(" and {} more", failed.len() - 1));
        }
        return text;
    }
    if results.is_empty() {
        for field in ["targets", "windows", "conditions", "trigger", "restart"] {
            if let Some(why) = run["explain"][field].as_str() {
                return why.lines().next().unwrap_or("").to_string();
            }
        }
    }
    String::new()
}

pub(super) fn print_restore_set(out: &mut impl Write, set: &Value) {
    let set = set.as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = set
        .iter()
        .map(|e| {
            vec![
                text_of(&e["host"]),
                text_of(&e["target"]),
                text_of(&e["from"]),
                text_of(&e["to"]),
                format!("{} {}", text_of(&e["capability"]), text_of(&e["verb"])),
                stamp(&e["at"]),
            ]
        })
        .collect();
    let header = ["HOST", "TARGET", "FROM", "TO", "CHANGED BY", "AT"];
    let _ = write!(out, "{}", table(&header, &rows));
    let _ = writeln!(out, "{} target(s) to restore", set.len());
}

pub(super) fn print_hosts(out: &mut impl Write, hosts: &Value) {
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
                targets_by_type(inv),
                stamp(&inv["ts"]),
                {
                    let state = match inv["stale"].as_bool() {
                        Some(true) => "stale",
                        Some(false) => "fresh",
                        None => "-",
                    };
                    if partial(inv).next().is_some() {
                        format!("{state}, partial")
                    } else {
                        state.into()
                    }
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
    for h in &hosts {
        for note in partial(&h["inventory"]) {
            let _ = writeln!(out, "{}: partial discovery: {note}", text_of(&h["id"]));
        }
    }
}

/// What a host's last discovery could not read.
fn partial(inv: &Value) -> impl Iterator<Item = String> + '_ {
    inv["partial"].as_array().into_iter().flatten().map(text_of)
}

/// `5 vm, 1 node` from a host's inventory status (`-` before the first
/// discovery); an agent that predates `by_type` shows the total.
fn targets_by_type(inv: &Value) -> String {
    match inv["by_type"].as_object() {
        Some(types) if !types.is_empty() => types
            .iter()
            .map(|(t, n)| format!("{} {t}", text_of(n)))
            .collect::<Vec<_>>()
            .join(", "),
        Some(_) => "0".into(),
        None => text_of(&inv["targets"]),
    }
}

pub(super) fn kill_switch_line(kill: &Value) -> String {
    if kill["paused"] == json!(true) {
        let mut line = format!(
            "PAUSED since {} by {}",
            stamp(&kill["since"]),
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

pub(super) fn print_kill_switch(out: &mut impl Write, json: bool, kill: &Value) {
    if json {
        print_json(out, kill);
    } else {
        let _ = writeln!(out, "kill switch: {}", kill_switch_line(kill));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_discovery_shows_in_the_hosts_table_with_what_it_lacked() {
        let hosts = json!([
            {"id": "sw-1", "plugin": "aruba.aoss", "self": false, "source": "config",
             "inventory": {"ts": null, "stale": false, "targets": 16,
                           "by_type": {"poe-port": 16},
                           "partial": ["the switch rejected `show interfaces brief`"]}},
            {"id": "pve-01", "plugin": "proxmox.ve", "self": false, "source": "config",
             "inventory": {"ts": null, "stale": true, "targets": 5,
                           "by_type": {"vm": 5}, "partial": []}}
        ]);
        let mut out = Vec::new();
        print_hosts(&mut out, &hosts);
        let text = String::from_utf8(out).unwrap();
        let row = |id: &str| {
            text.lines()
                .find(|l| l.starts_with(id))
                .unwrap_or_else(|| panic!("no row for {id}: {text}"))
                .to_string()
        };
        assert!(row("sw-1").ends_with("fresh, partial"), "{text}");
        assert!(row("pve-01").ends_with("stale"), "{text}");
        assert!(
            text.contains("sw-1: partial discovery: the switch rejected `show interfaces brief`"),
            "{text}"
        );
        assert!(!text.contains("pve-01: partial"), "{text}");
    }
}
