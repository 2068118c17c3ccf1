//! Events into the engine (SPEC §1, §9): injected normalized events, decided
//! for real or dry-run with the transcript kept, and named webhooks checked
//! against their HMAC-SHA256 secret. A dry-run answers with its timeline
//! (SPEC §6 "Dry-run of an event"), the policies named.

use std::collections::{BTreeSet, HashMap};

use chrono::{SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::audit::audit;
use super::{Actor, EventAnswer, Service, ServiceError};
use crate::engine::event::{ups_matches, Event, SubjectKind};
use crate::engine::runner::{PolicyDecision, TimelineEntry, Transcript};
use crate::engine::store::AuditRecord;
use crate::store::{PolicyStore, TranscriptRecord};
use uuid::Uuid;

impl Service {
    /// Injects a normalized event (SPEC §1): decided for real, or with
    /// `dry_run` the whole decision with driver dry-runs, nothing executed,
    /// the transcript kept.
    pub async fn inject_event(
        &self,
        actor: &Actor,
        body: &Value,
        dry_run: bool,
    ) -> Result<EventAnswer, ServiceError> {
        let mut event = Event::from_json(body).map_err(|errors| ServiceError::BadRequest {
            code: "event.invalid",
            message: format!("the event has {} problem(s)", errors.len()),
            details: json!({"errors": errors.iter().map(|e| json!({"field": e.field(), "message": e.to_string()})).collect::<Vec<_>>()}),
        })?;
        // The request's `X-Correlation-Id`, unless the event names its own.
        if let (Some(id), None | Some(Value::Null)) =
            (actor.correlation_id, body.get("correlation_id"))
        {
            event.correlation_id = id;
        }
        let audit = audit(
            actor,
            if dry_run {
                "event.dry_run"
            } else {
                "event.injected"
            },
            None,
            json!({"kind": event.kind.as_str(), "subject": event.subject.id}),
        );
        let correlation = event.correlation_id;
        let audit = AuditRecord {
            correlation_id: correlation,
            ..audit
        };
        self.append_audit(audit).await?;
        self.decide(event, dry_run).await
    }

    /// A named webhook post (SPEC §9): checked against its HMAC-SHA256
    /// secret when one is configured, refused unless `allow_unsigned` when
    /// none is, then decided as a `webhook.custom` event.
    pub async fn webhook(
        &self,
        name: &str,
        signature: Option<&str>,
        timestamp: Option<&str>,
        body: &[u8],
    ) -> Result<EventAnswer, ServiceError> {
        let Some(hook) = self.inner.config.webhooks.get(name) else {
            return Err(ServiceError::Webhook {
                code: "webhook.unknown",
                status: 404,
                message: format!("no webhook named `{name}` is configured"),
            });
        };
        match self.inner.webhook_secrets.get(name).cloned().flatten() {
            Some(secret) => {
                let now = Utc::now().timestamp();
                let signature = check_signature(&secret, signature, timestamp, body, now)?;
                // A signature seen within the window is a replay.
                let mut seen = self.inner.webhook_seen.lock().await;
                seen.retain(|_, at| now - *at <= WEBHOOK_WINDOW_S);
                if seen.insert(signature, now).is_some() {
                    return Err(ServiceError::Webhook {
                        code: "webhook.replayed",
                        status: 409,
                        message: format!(
                            "this signed post of webhook `{name}` was already accepted; a sender signs each post with a new timestamp"
                        ),
                    });
                }
            }
            None if hook.allow_unsigned => {}
            None => {
                return Err(ServiceError::Webhook {
                    code: "webhook.unsigned_refused",
                    status: 403,
                    message: format!(
                        "webhook `{name}` has no secret configured and allow_unsigned is false"
                    ),
                })
            }
        }
        let payload: Value = serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
        let event = Event::from_json(&json!({
            "type": "webhook",
            "kind": "webhook.custom",
            "subject": {"kind": "integration", "id": name},
            "attrs": {"name": name, "body": payload},
        }))
        .map_err(|errors| ServiceError::Internal {
            message: format!("webhook event: {errors:?}"),
        })?;
        // Each accepted post leaves a record (never the body: it may carry
        // a sender's secrets).
        let audit = crate::engine::store::AuditRecord {
            ts: Utc::now(),
            correlation_id: event.correlation_id,
            kind: "webhook.accepted".into(),
            policy_id: None,
            details: json!({"name": name, "bytes": body.len()}),
        };
        self.append_audit(audit).await?;
        self.decide(event, false).await
    }

    async fn decide(&self, event: Event, dry_run: bool) -> Result<EventAnswer, ServiceError> {
        let correlation_id = event.correlation_id;
        if dry_run {
            let event = self.full_ups_subject(event);
            let transcript = self.engine_call(self.inner.engine.dry_run(event)).await?;
            let names = self.policy_names(&transcript).await?;
            let body = transcript_json(&transcript, &names);
            let kept = TranscriptRecord {
                id: transcript.transcript_id,
                policy_id: None,
                created_at: Utc::now(),
                severity: transcript.severity,
                body: body.clone(),
            };
            self.store(move |s| s.put_transcript(&kept)).await?;
            return Ok(EventAnswer {
                correlation_id,
                dry_run: true,
                decisions: body["decisions"].as_array().cloned().unwrap_or_default(),
                ts: body["ts"].as_str().map(str::to_string),
                timeline: body["timeline"].as_array().cloned(),
                severity: Some(transcript.severity.as_str().to_string()),
                transcript_id: Some(transcript.transcript_id),
            });
        }
        let report = self.engine_call(self.inner.engine.event(event)).await?;
        Ok(EventAnswer {
            correlation_id,
            dry_run: false,
            decisions: report.decisions.iter().map(decision_json).collect(),
            ts: None,
            timeline: None,
            severity: None,
            transcript_id: None,
        })
    }
}

impl Service {
    /// [`full_ups_subject`] over the configured NUT UPSes.
    fn full_ups_subject(&self, event: Event) -> Event {
        full_ups_subject(self.inner.config.nut.iter().map(|n| n.subject_id()), event)
    }

    /// The names of the policies a transcript's timeline mentions.
    async fn policy_names(
        &self,
        transcript: &Transcript,
    ) -> Result<HashMap<Uuid, String>, ServiceError> {
        let ids: BTreeSet<Uuid> = transcript
            .timeline
            .iter()
            .flat_map(|e| std::iter::once(e.decision.policy_id).chain(e.restores))
            .chain(transcript.decisions.iter().map(|d| d.policy_id))
            .collect();
        self.store(move |s| {
            let mut names = HashMap::new();
            for id in ids {
                if let Some(record) = s.policy(id)? {
                    names.insert(id, record.name);
                }
            }
            Ok(names)
        })
        .await
    }
}

/// A dry-run of a UPS event that names the UPS by its name only (`ups1`,
/// as `hazel simulate --ups ups1` sends it) is about the one `known` UPS
/// subject of that name (`ups1@nas.lan:3493`), so conditions read that
/// UPS's facts; an unknown or ambiguous name is kept as is.
fn full_ups_subject(known: impl Iterator<Item = String>, mut event: Event) -> Event {
    if event.subject.kind != SubjectKind::Ups || event.subject.id.contains('@') {
        return event;
    }
    let matching: BTreeSet<String> = known
        .filter(|id| ups_matches(&event.subject.id, id))
        .collect();
    if let [only] = matching.into_iter().collect::<Vec<_>>().as_slice() {
        event.subject.id = only.clone();
    }
    event
}

/// How far a signed post's `X-Hazel-Timestamp` may be from now, in seconds,
/// and how long its signature is remembered against replays (SPEC §9).
pub const WEBHOOK_WINDOW_S: i64 = 300;

/// Checks `signature` (`sha256=<hex>`, HMAC-SHA256 over `<timestamp>.<body>`)
/// and the timestamp (unix seconds, within [`WEBHOOK_WINDOW_S`] of `now`);
/// returns the signature's hex, the replay cache's key.
fn check_signature(
    secret: &[u8],
    signature: Option<&str>,
    timestamp: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<String, ServiceError> {
    let refuse = |code: &'static str, message: &str| ServiceError::Webhook {
        code,
        status: 401,
        message: message.to_string(),
    };
    let Some(signature) = signature else {
        return Err(refuse(
            "webhook.unsigned",
            "the X-Hazel-Signature header is missing (sha256=<hex HMAC of `<X-Hazel-Timestamp>.<body>`>)",
        ));
    };
    let Some(hex_part) = signature.trim().strip_prefix("sha256=") else {
        return Err(refuse(
            "webhook.bad_signature",
            "the signature must start with `sha256=`",
        ));
    };
    let Some(stamp) = timestamp else {
        return Err(refuse(
            "webhook.no_timestamp",
            "the X-Hazel-Timestamp header is missing (unix seconds, signed with the body)",
        ));
    };
    let at: i64 = stamp.trim().parse().map_err(|_| {
        refuse(
            "webhook.no_timestamp",
            "X-Hazel-Timestamp must be unix seconds",
        )
    })?;
    if (now - at).abs() > WEBHOOK_WINDOW_S {
        return Err(refuse(
            "webhook.stale",
            &format!(
                "X-Hazel-Timestamp is {} s from the agent's clock; at most {WEBHOOK_WINDOW_S} s is accepted",
                (now - at).abs()
            ),
        ));
    }
    let expected = hex::decode(hex_part.trim())
        .map_err(|_| refuse("webhook.bad_signature", "the signature is not sha256=<hex>"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .map_err(|_| refuse("webhook.bad_signature", "the webhook secret is unusable"))?;
    mac.update(stamp.trim().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| {
        refuse(
            "webhook.bad_signature",
            "the signature does not match `<timestamp>.<body>`",
        )
    })?;
    Ok(hex_part.trim().to_ascii_lowercase())
}

fn transcript_json(transcript: &Transcript, names: &HashMap<Uuid, String>) -> Value {
    json!({
        "transcript_id": transcript.transcript_id,
        "correlation_id": transcript.correlation_id,
        "ts": transcript.ts.to_rfc3339_opts(SecondsFormat::Millis, true),
        "severity": transcript.severity,
        "decisions": transcript.decisions.iter().map(decision_json).collect::<Vec<_>>(),
        "timeline": transcript.timeline.iter().map(|e| timeline_json(e, names)).collect::<Vec<_>>(),
    })
}

/// One timeline entry (SPEC §6 "Dry-run of an event"; docs/cli.md).
fn timeline_json(entry: &TimelineEntry, names: &HashMap<Uuid, String>) -> Value {
    let decision = decision_json(&entry.decision);
    let name = |id: &Uuid| names.get(id).cloned();
    json!({
        "at": entry.at.map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true)),
        "kind": entry.kind.as_str(),
        "policy_id": entry.decision.policy_id,
        "policy_name": name(&entry.decision.policy_id),
        "trigger": entry.trigger,
        "conditions": entry.conditions,
        "severity": entry.decision.severity,
        "code": entry.decision.code,
        "explain": entry.decision.explain,
        "planned": decision["planned"],
        "skipped": decision["skipped"],
        "restores": entry.restores.map(|id| json!({"policy_id": id, "policy_name": name(&id)})),
    })
}

fn decision_json(decision: &PolicyDecision) -> Value {
    json!({
        "policy_id": decision.policy_id,
        "severity": decision.severity,
        "code": decision.code,
        "explain": decision.explain,
        "run_id": decision.run_id,
        "planned": decision.planned.iter().map(|p| json!({
            "action_index": p.action_index,
            "capability": p.action.capability,
            "verb": p.action.verb,
            "params": p.action.params,
            "host": p.host,
            "targets": p.targets,
            "dry_run": p.dry_run.as_ref().map(|r| match r {
                Ok(answers) => json!({"answers": answers}),
                Err(e) => json!({"error": e}),
            }),
        })).collect::<Vec<_>>(),
        "skipped": decision.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ups_event(id: &str) -> Event {
        Event::from_json(&json!({
            "kind": "ups.state",
            "subject": {"kind": "ups", "id": id},
            "attrs": {"state": "on_battery"},
        }))
        .unwrap()
    }

    fn subject(known: &[&str], id: &str) -> String {
        let known = known.iter().map(|k| k.to_string());
        full_ups_subject(known, ups_event(id)).subject.id
    }

    #[test]
    fn a_ups_name_in_a_dry_run_becomes_the_one_configured_subject_of_that_name() {
        let known = ["ups1@nas.lan:3493", "ups2@nas.lan:3493"];
        assert_eq!(subject(&known, "ups1"), "ups1@nas.lan:3493");
        assert_eq!(subject(&known, "ups2@other:3493"), "ups2@other:3493");
        assert_eq!(subject(&known, "ups3"), "ups3", "unknown: kept");
        let twice = ["ups1@a:3493", "ups1@b:3493"];
        assert_eq!(subject(&twice, "ups1"), "ups1", "ambiguous: kept");
    }
}
