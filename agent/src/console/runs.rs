//! The console's Runs page (SPEC §9, §6 "Dry-run of an event"): the audit
//! log with filters (kind, policy, since), read through the same service
//! query as `GET /api/audit`, and "what would happen if the power failed
//! now?": an event dry-run for a chosen UPS and state, its timeline drawn
//! as HTML (what runs now, each countdown's end, what the inverses would
//! restore). Nothing executes; the dry-run's transcript is kept like the
//! API's.

use std::collections::{BTreeSet, HashMap};

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{Duration as Span, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{render, service_error, time, SignedIn, Viewer};
use crate::api::extract::Form;
use crate::api::AppState;
use crate::engine::store::AuditQuery;
use crate::service::{Actor, ServiceError};
use crate::spec::UpsState;

/// How many audit records the page shows.
const PAGE: usize = 200;

/// The filters of the audit log, as the form sends them.
#[derive(Debug, Default, Deserialize)]
pub(super) struct AuditFilter {
    #[serde(default)]
    kind: String,
    /// A policy id, or empty for all.
    #[serde(default)]
    policy: String,
    /// `1h`, `24h`, `7d`, or empty for all time.
    #[serde(default)]
    since: String,
}

struct AuditRow {
    seq: i64,
    at: String,
    kind: String,
    policy: String,
    policy_id: String,
    details: String,
}

struct Choice {
    value: String,
    label: String,
    selected: bool,
}

#[derive(Template)]
#[template(path = "console/runs.html")]
struct RunsPage {
    viewer: Viewer,
    kind: String,
    policies: Vec<Choice>,
    since: Vec<Choice>,
    rows: Vec<AuditRow>,
    ups: Vec<String>,
    states: Vec<&'static str>,
}

const SINCE: [(&str, &str, i64); 4] = [
    ("", "all time", 0),
    ("1h", "the last hour", 3600),
    ("24h", "the last 24 hours", 86_400),
    ("7d", "the last 7 days", 604_800),
];

/// `GET /runs`.
pub(super) async fn runs_page(
    State(state): State<AppState>,
    SignedIn(viewer): SignedIn,
    Query(filter): Query<AuditFilter>,
) -> Response {
    match runs(&state, viewer, filter).await {
        Ok(page) => render(&page),
        Err(e) => service_error(&e),
    }
}

async fn runs(
    state: &AppState,
    viewer: Viewer,
    filter: AuditFilter,
) -> Result<RunsPage, ServiceError> {
    let service = state.service();
    let policies = super::all_policies(service).await?;
    let names: HashMap<Uuid, String> = policies.iter().map(|p| (p.id, p.name.clone())).collect();
    let policy_id = Uuid::parse_str(filter.policy.trim()).ok();
    let since_s = SINCE
        .iter()
        .find(|(v, _, _)| *v == filter.since)
        .map_or(0, |(_, _, s)| *s);
    let entries = service
        .audit(AuditQuery {
            kind: Some(filter.kind.trim().to_string()).filter(|k| !k.is_empty()),
            policy_id,
            since: (since_s > 0).then(|| Utc::now() - Span::seconds(since_s)),
            limit: PAGE,
            ..AuditQuery::default()
        })
        .await?;
    let rows = entries
        .into_iter()
        .map(|e| {
            let id = e.record.policy_id;
            AuditRow {
                seq: e.seq,
                at: time(&e.record.ts),
                kind: e.record.kind,
                policy: id
                    .map(|id| names.get(&id).cloned().unwrap_or_else(|| id.to_string()))
                    .unwrap_or_default(),
                policy_id: id.map(|id| id.to_string()).unwrap_or_default(),
                details: details_text(&e.record.details),
            }
        })
        .collect();
    let mut choices = vec![Choice {
        value: String::new(),
        label: "all policies".into(),
        selected: policy_id.is_none(),
    }];
    choices.extend(policies.iter().map(|p| Choice {
        value: p.id.to_string(),
        label: p.name.clone(),
        selected: Some(p.id) == policy_id,
    }));
    let ups = ups_names(
        service.ups_readings().into_iter().map(|(id, _)| id),
        policies.iter().map(|p| &p.spec),
    );
    Ok(RunsPage {
        viewer,
        kind: filter.kind.trim().to_string(),
        policies: choices,
        since: SINCE
            .iter()
            .map(|(v, label, _)| Choice {
                value: (*v).to_string(),
                label: (*label).to_string(),
                selected: *v == filter.since,
            })
            .collect(),
        rows,
        ups,
        states: UpsState::NAMES.to_vec(),
    })
}

/// An audit record's details as `key=value` pairs, in one line.
fn details_text(details: &Value) -> String {
    match details {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The UPSes to offer: the configured NUT UPSes and every UPS a policy's
/// `ups.state` trigger names, sorted, without duplicates.
fn ups_names<'a>(
    configured: impl Iterator<Item = String>,
    specs: impl Iterator<Item = &'a Value>,
) -> Vec<String> {
    let mut out: BTreeSet<String> = configured.collect();
    for spec in specs {
        for trigger in spec["trigger_group"]["triggers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(ups) = trigger["ups"].as_str() {
                out.insert(ups.to_string());
            }
        }
    }
    out.into_iter().collect()
}

#[derive(Deserialize)]
pub(super) struct SimulateForm {
    ups: String,
    state: String,
}

struct Step {
    when: String,
    kind: String,
    policy: String,
    trigger: String,
    conditions: Vec<String>,
    severity: String,
    code: String,
    actions: Vec<String>,
    skipped: Vec<String>,
}

#[derive(Template)]
#[template(path = "console/simulate.html")]
struct SimulateFragment {
    ups: String,
    state: String,
    severity: String,
    transcript_id: String,
    steps: Vec<Step>,
}

/// `POST /ui/simulate`: the event dry-run of `ups` entering `state`.
pub(super) async fn simulate(
    State(state): State<AppState>,
    actor: Actor,
    Form(form): Form<SimulateForm>,
) -> Response {
    let event = json!({
        "kind": "ups.state",
        "subject": {"kind": "ups", "id": form.ups.trim()},
        "attrs": {"state": form.state.trim()},
    });
    match state.service().inject_event(&actor, &event, true).await {
        Ok(answer) => render(&SimulateFragment {
            ups: form.ups.trim().to_string(),
            state: form.state.trim().to_string(),
            severity: answer.severity.unwrap_or_default(),
            transcript_id: answer
                .transcript_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            steps: answer
                .timeline
                .unwrap_or_default()
                .iter()
                .map(step)
                .collect(),
        }),
        Err(e) => service_error(&e),
    }
}

/// One timeline entry (the JSON of `POST /api/events?dry_run=true`) as a
/// readable step.
fn step(entry: &Value) -> Step {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let kind = s(&entry["kind"]);
    let when = match (kind.as_str(), entry["at"].as_str()) {
        ("inverse", _) => "when the opposite event comes".to_string(),
        (_, Some(at)) => chrono::DateTime::parse_from_rfc3339(at)
            .map(|t| time(&t.with_timezone(&Utc)))
            .unwrap_or_else(|_| at.to_string()),
        (_, None) => String::new(),
    };
    let mut policy = entry["policy_name"]
        .as_str()
        .map_or_else(|| s(&entry["policy_id"]), str::to_string);
    if let Some(name) = entry["restores"]["policy_name"].as_str() {
        policy = format!("{policy} (restores what {name} changed)");
    }
    let actions = entry["planned"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let dry = &p["dry_run"];
            let outcome = if dry.is_null() {
                String::new()
            } else if let Some(err) = dry.get("error") {
                format!(
                    " — dry-run error: {}",
                    err["message"]
                        .as_str()
                        .map_or_else(|| err.to_string(), str::to_string)
                )
            } else {
                let answers = dry["answers"].as_array().map_or(0, Vec::len);
                format!(" — dry-run answered for {answers} target(s)")
            };
            format!(
                "{} {} on {}: {}{outcome}",
                s(&p["capability"]),
                s(&p["verb"]),
                s(&p["host"]),
                super::list(&p["targets"]),
            )
        })
        .collect();
    Step {
        when,
        kind,
        policy,
        trigger: s(&entry["trigger"]),
        conditions: entry["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect(),
        severity: s(&entry["severity"]),
        code: s(&entry["code"]),
        actions,
        skipped: entry["skipped"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ups_choices_join_configured_upses_and_those_policies_name() {
        let spec = json!({"trigger_group": {"triggers": [
            {"type": "ups.state", "ups": "ups2", "equals": "on_battery"},
            {"type": "schedule"}
        ]}});
        let got = ups_names(
            vec!["ups1@nas:3493".to_string()].into_iter(),
            [&spec].into_iter(),
        );
        assert_eq!(got, ["ups1@nas:3493", "ups2"]);
    }

    #[test]
    fn a_countdown_step_names_its_deadline_policy_and_planned_action() {
        let entry = json!({
            "at": "2026-12-07T10:02:00.000Z", "kind": "countdown",
            "policy_id": "p", "policy_name": "Stop vm 101",
            "trigger": "ups1 on_battery held 2m", "conditions": [],
            "severity": "ok", "code": "policy.matched",
            "planned": [{"capability": "proxmox.vm", "verb": "shutdown", "host": "pve-01",
                         "targets": ["vm:101"], "dry_run": {"answers": [{}]}}],
            "skipped": [],
        });
        let step = step(&entry);
        assert_eq!(step.when, "2026-12-07 10:02:00 UTC");
        assert_eq!(step.policy, "Stop vm 101");
        assert_eq!(
            step.actions,
            ["proxmox.vm shutdown on pve-01: vm:101 — dry-run answered for 1 target(s)"]
        );
    }

    #[test]
    fn audit_details_read_as_key_value_pairs() {
        assert_eq!(
            details_text(&json!({"by": "admin", "ok": true})),
            "by=admin ok=true"
        );
    }
}
