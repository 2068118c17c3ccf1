//! Events into the engine (SPEC §1, §9): injected normalized events, decided
//! for real or dry-run with the transcript kept, and named webhooks checked
//! against their HMAC-SHA256 secret.

use chrono::Utc;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::audit::audit;
use super::{Actor, EventAnswer, Service, ServiceError};
use crate::engine::event::Event;
use crate::engine::runner::Transcript;
use crate::engine::store::{AuditRecord, EngineStore};
use crate::store::{PolicyStore, TranscriptRecord};

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
        let event = Event::from_json(body).map_err(|errors| ServiceError::BadRequest {
            code: "event.invalid",
            message: format!("the event has {} problem(s)", errors.len()),
            details: json!({"errors": errors.iter().map(|e| json!({"field": e.field(), "message": e.to_string()})).collect::<Vec<_>>()}),
        })?;
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
        self.store(move |s| s.append_audit(&audit)).await?;
        self.decide(event, dry_run).await
    }

    /// A named webhook post (SPEC §9): checked against its HMAC-SHA256
    /// secret when one is configured, refused unless `allow_unsigned` when
    /// none is, then decided as a `webhook.custom` event.
    pub async fn webhook(
        &self,
        name: &str,
        signature: Option<&str>,
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
            Some(secret) => check_signature(&secret, signature, body)?,
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
        self.decide(event, false).await
    }

    async fn decide(&self, event: Event, dry_run: bool) -> Result<EventAnswer, ServiceError> {
        let correlation_id = event.correlation_id;
        if dry_run {
            let transcript = self.engine_call(self.inner.engine.dry_run(event)).await?;
            let body = transcript_json(&transcript);
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
                severity: Some(transcript.severity.as_str().to_string()),
                transcript_id: Some(transcript.transcript_id),
            });
        }
        let report = self.engine_call(self.inner.engine.event(event)).await?;
        Ok(EventAnswer {
            correlation_id,
            dry_run: false,
            decisions: report.decisions.iter().map(decision_json).collect(),
            severity: None,
            transcript_id: None,
        })
    }
}

fn check_signature(
    secret: &[u8],
    signature: Option<&str>,
    body: &[u8],
) -> Result<(), ServiceError> {
    let refuse = |code: &'static str, message: &str| ServiceError::Webhook {
        code,
        status: 401,
        message: message.to_string(),
    };
    let Some(signature) = signature else {
        return Err(refuse(
            "webhook.unsigned",
            "the X-Hazel-Signature header is missing (sha256=<hex HMAC of the body>)",
        ));
    };
    let hex_part = signature.strip_prefix("sha256=").unwrap_or(signature);
    let expected = hex::decode(hex_part.trim())
        .map_err(|_| refuse("webhook.bad_signature", "the signature is not sha256=<hex>"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .map_err(|_| refuse("webhook.bad_signature", "the webhook secret is unusable"))?;
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| {
        refuse(
            "webhook.bad_signature",
            "the signature does not match the body",
        )
    })
}

fn transcript_json(transcript: &Transcript) -> Value {
    json!({
        "transcript_id": transcript.transcript_id,
        "correlation_id": transcript.correlation_id,
        "severity": transcript.severity,
        "decisions": transcript.decisions.iter().map(decision_json).collect::<Vec<_>>(),
    })
}

fn decision_json(decision: &crate::engine::runner::PolicyDecision) -> Value {
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
