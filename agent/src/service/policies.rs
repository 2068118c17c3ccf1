//! Stored policies and their gates (SPEC §9, §10): create, update, delete,
//! list, enable through a fresh dry-run (SPEC §5), disable, the kept
//! transcripts, the ledger and the inverse (SPEC §11).

use chrono::Utc;
use serde_json::{json, Value};
use tracing::{info, warn};
use uuid::Uuid;

use super::audit::audit;
use super::dry_run::{self, PolicyTranscript};
use super::open::bad;
use super::{Actor, Page, PolicyView, Service, ServiceError};
use crate::compile::CompileContext;
use crate::engine::runner::Policy;
use crate::engine::store::{EngineStore, StoreError};
use crate::store::{PolicyRecord, PolicyStatus, PolicyStore, TranscriptRecord, ValidationRecord};
use crate::validate::{validate_text, Validated};

impl Service {
    /// Validates a spec (JSON or YAML) against the manifests and the current
    /// inventory: the object `hazel validate --json` prints.
    pub fn validate(&self, body: &str) -> crate::validate::ValidationReport {
        let inventory = self.cached_inventory();
        let ctx = CompileContext {
            inventory: Some(&inventory),
            ..CompileContext::default()
        };
        self.timed_validation(body, &ctx).report
    }

    /// [`validate_text`], counted in the compile latency and findings
    /// metrics. CPU-bound: callers run it on the blocking pool.
    fn timed_validation(&self, body: &str, ctx: &CompileContext<'_>) -> Validated {
        let started = std::time::Instant::now();
        let validated = validate_text(body, &self.inner.manifests, ctx);
        self.inner.metrics.compiled(
            started.elapsed(),
            validated
                .report
                .issues
                .iter()
                .map(|i| i.finding.severity.as_str()),
        );
        validated
    }

    /// [`Service::validate`] on the blocking pool, under one of
    /// [`super::open::CPU_SLOTS`] slots: a request that finds none free
    /// waits in a bounded queue for a bounded time, then is refused with
    /// 503 (SPEC §12: nothing CPU-bound on the async workers, and a bounded
    /// number of them at once; see `service::cpu_slots`).
    ///
    /// Each validation leaves an audit record (`policy.validated`): who,
    /// whether it passed, the hash and the codes found, not the text.
    pub async fn validate_off_runtime(
        &self,
        actor: &Actor,
        body: String,
    ) -> Result<crate::validate::ValidationReport, ServiceError> {
        let report = self.validate_draft(body).await?;
        let record = audit(actor, "policy.validated", None, validation_details(&report));
        self.append_audit(record).await?;
        Ok(report)
    }

    /// [`Service::validate_off_runtime`] without the audit record: the
    /// console's live validation of a draft on every (debounced) change,
    /// which would otherwise flood the audit log. Same validator, same
    /// blocking pool and slots; the save goes through the audited gates.
    pub async fn validate_draft(
        &self,
        body: String,
    ) -> Result<crate::validate::ValidationReport, ServiceError> {
        let permit = self
            .inner
            .cpu_slots
            .acquire_bounded()
            .await
            .ok_or(ServiceError::Busy { what: "validation" })?;
        let service = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            service.validate(&body)
        })
        .await
        .map_err(|e| ServiceError::Internal {
            message: format!("validation task failed: {e}"),
        })
    }

    /// Saves a new policy (SPEC §9): blockers -> 400; an identical hash ->
    /// 409 naming the stored policy; saved `disabled` unless the spec says
    /// `enabled: true` and its preflight dry-run has no error.
    pub async fn create_policy(
        &self,
        actor: &Actor,
        body: &str,
    ) -> Result<PolicyView, ServiceError> {
        let _write = self.inner.writes.lock().await;
        let id = Uuid::new_v4();
        let (validated, spec) = self.validate_for_store(body, id, 1).await?;
        let hash = validated.report.hash.clone().unwrap_or_default();
        if let Some(existing_id) = self.store(move |s| s.policy_by_hash(&hash)).await? {
            return Err(ServiceError::DuplicateHash { existing_id });
        }
        let now = Utc::now();
        let meta = validated.meta.clone();
        let record = PolicyRecord {
            id,
            name: meta.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            spec,
            version_int: 1,
            hash: validated.report.hash.clone().unwrap_or_default(),
            compiled_ir: serde_json::to_value(&validated.report.ir).unwrap_or(Value::Null),
            enabled_intent: meta.as_ref().is_some_and(|m| m.enabled),
            status: PolicyStatus::Disabled,
            last_validation: Some(validation_record(&validated)),
            last_dry_run: None,
            created_at: now,
            updated_at: now,
        };
        let audit = audit(
            actor,
            "policy.created",
            Some(id),
            json!({"version_int": 1, "hash": record.hash}),
        );
        let insert = record.clone();
        self.store(move |s| s.insert_policy(&insert, &audit))
            .await
            .map_err(duplicate)?;
        info!(policy_id = %id, by = %actor.subject, "policy created");
        if record.enabled_intent {
            saved_even_if_blocked(self.try_enable(actor, id, None).await)?;
        }
        self.policy(id).await
    }

    /// Replaces a policy's spec, bumping `version_int`; `expected_version`
    /// (from `If-Match`) must match the stored one when given. The policy
    /// is unloaded and, if its spec says `enabled: true`, enabled again
    /// through the dry-run gate.
    pub async fn update_policy(
        &self,
        actor: &Actor,
        id: Uuid,
        body: &str,
        expected_version: Option<u64>,
    ) -> Result<PolicyView, ServiceError> {
        let _write = self.inner.writes.lock().await;
        let current = self.record(id).await?;
        // Checked before anything changes (the `writes` lock makes it
        // race-free): a refused update must leave the policy running.
        if let Some(expected) = expected_version {
            if expected != current.version_int {
                return Err(ServiceError::Conflict {
                    code: "policy.version_conflict",
                    message: format!(
                        "the policy is at version {}, not {expected}; read the policy again and retry",
                        current.version_int
                    ),
                });
            }
        }
        let version = current.version_int + 1;
        let (validated, spec) = self.validate_for_store(body, id, version).await?;
        let hash = validated.report.hash.clone().unwrap_or_default();
        if let Some(existing_id) = self.store(move |s| s.policy_by_hash(&hash)).await? {
            if existing_id != id {
                return Err(ServiceError::DuplicateHash { existing_id });
            }
        }
        let meta = validated.meta.clone();
        let record = PolicyRecord {
            name: meta.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            spec,
            hash: validated.report.hash.clone().unwrap_or_default(),
            compiled_ir: serde_json::to_value(&validated.report.ir).unwrap_or(Value::Null),
            enabled_intent: meta.as_ref().is_some_and(|m| m.enabled),
            status: PolicyStatus::Disabled,
            last_validation: Some(validation_record(&validated)),
            updated_at: Utc::now(),
            ..current
        };
        self.engine_call(self.inner.engine.unload(id)).await?;
        let audit = audit(
            actor,
            "policy.updated",
            Some(id),
            json!({"version_int": version, "hash": record.hash}),
        );
        let update = record.clone();
        self.store(move |s| s.update_policy(&update, expected_version, &audit))
            .await
            .map_err(|e| match e {
                ServiceError::Store {
                    source: StoreError::Conflict { what },
                } => ServiceError::Conflict {
                    code: "policy.version_conflict",
                    message: format!("{what}; read the policy again and retry"),
                },
                other => duplicate(other),
            })?;
        if record.enabled_intent {
            saved_even_if_blocked(self.try_enable(actor, id, None).await)?;
        }
        self.policy(id).await
    }

    /// Deletes a policy; its ledger and audit records stay.
    pub async fn delete_policy(&self, actor: &Actor, id: Uuid) -> Result<(), ServiceError> {
        let _write = self.inner.writes.lock().await;
        self.record(id).await?;
        self.engine_call(self.inner.engine.unload(id)).await?;
        let audit = audit(actor, "policy.deleted", Some(id), json!({}));
        self.store(move |s| s.delete_policy(id, &audit)).await?;
        Ok(())
    }

    /// One stored policy.
    pub async fn policy(&self, id: Uuid) -> Result<PolicyView, ServiceError> {
        Ok(view(self.record(id).await?))
    }

    /// Stored policies by id, `limit` per page after the cursor `after`.
    pub async fn policies(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Page<PolicyView>, ServiceError> {
        let limit = limit.clamp(1, 500);
        let (items, total) = self
            .store(move |s| Ok((s.policies(after, limit + 1)?, s.count_policies()?)))
            .await?;
        let more = items.len() > limit;
        let items: Vec<PolicyView> = items.into_iter().take(limit).map(view).collect();
        let next = more
            .then(|| items.last().map(|p| p.id.to_string()))
            .flatten();
        Ok(Page { items, next, total })
    }

    /// Enables a policy (SPEC §9 gates): a fresh dry-run runs first and an
    /// error in it refuses the enable (409 with the errors) unless
    /// `force_reason` is given (admins only; the API checks the role), which
    /// is written to the audit log.
    pub async fn enable_policy(
        &self,
        actor: &Actor,
        id: Uuid,
        force_reason: Option<String>,
    ) -> Result<PolicyView, ServiceError> {
        let _write = self.inner.writes.lock().await;
        self.try_enable(actor, id, force_reason.as_deref()).await?;
        self.policy(id).await
    }

    /// Disables a policy: unloaded from the engine (queued actions still
    /// run and reach the ledger).
    pub async fn disable_policy(
        &self,
        actor: &Actor,
        id: Uuid,
    ) -> Result<PolicyView, ServiceError> {
        let _write = self.inner.writes.lock().await;
        let record = self.record(id).await?;
        self.engine_call(self.inner.engine.unload(id)).await?;
        let status = if record.status == PolicyStatus::Invalid {
            PolicyStatus::Invalid
        } else {
            PolicyStatus::Disabled
        };
        let audit = audit(actor, "policy.disabled", Some(id), json!({}));
        self.store(move |s| s.set_policy_status(id, status, false, &audit))
            .await?;
        self.policy(id).await
    }

    /// Dry-runs a stored policy now (SPEC §5) and keeps the transcript.
    pub async fn dry_run_policy(
        &self,
        actor: &Actor,
        id: Uuid,
    ) -> Result<PolicyTranscript, ServiceError> {
        let record = self.record(id).await?;
        let name = record.name.clone();
        let transcript = dry_run::run(self, &record).await?;
        let kept = transcript.clone();
        let body = serde_json::to_value(&kept).unwrap_or(Value::Null);
        let dry = crate::store::DryRunRecord {
            ts: kept.ts,
            severity: kept.severity,
            transcript_id: kept.transcript_id,
        };
        let t = TranscriptRecord {
            id: kept.transcript_id,
            policy_id: Some(id),
            created_at: kept.ts,
            severity: kept.severity,
            body,
        };
        let entry = audit(
            actor,
            "policy.dry_run",
            Some(id),
            json!({"severity": kept.severity, "transcript_id": kept.transcript_id}),
        );
        self.store(move |s| {
            s.record_dry_run(id, &dry, &t)?;
            s.append_audit(&entry)
        })
        .await?;
        info!(policy_id = %id, policy = %name, by = %actor.subject, severity = ?transcript.severity, "policy dry-run");
        Ok(transcript)
    }

    /// A kept transcript (policy dry-run or event dry-run).
    pub async fn transcript(&self, id: Uuid) -> Result<Value, ServiceError> {
        self.store(move |s| s.transcript(id))
            .await?
            .map(|t| t.body)
            .ok_or(ServiceError::NotFound {
                what: "transcript",
                id: id.to_string(),
            })
    }

    /// A policy's ledger, newest first, at most `limit` (≤ 30) entries.
    pub async fn executions(&self, id: Uuid, limit: usize) -> Result<Vec<Value>, ServiceError> {
        self.record(id).await?;
        let limit = limit.clamp(1, crate::engine::store::LEDGER_RUNS_PER_POLICY);
        let runs = self.store(move |s| s.runs(id, limit)).await?;
        Ok(runs
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .collect())
    }

    /// A policy's restore set (SPEC §6 "Outage lifecycle"), by host and
    /// target: what its inverse's `ledger` selector resolves to.
    pub async fn restore_set(&self, id: Uuid) -> Result<Vec<Value>, ServiceError> {
        self.record(id).await?;
        let set = self.store(move |s| s.restore_set(id)).await?;
        Ok(set
            .iter()
            .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
            .collect())
    }

    /// The inverse of a stored policy (SPEC §11), unsaved.
    pub async fn inverse(&self, id: Uuid) -> Result<Value, ServiceError> {
        let record = self.record(id).await?;
        // Inverting compiles the spec: CPU-bound, on the blocking pool.
        self.cpu(move |service| {
            let self_host = service
                .read_hosts()
                .values()
                .find(|h| h.validated.self_host)
                .map(|h| h.validated.id.clone());
            let options = crate::inverse::InverseOptions {
                forward_id: Some(id),
                manifests: &service.inner.manifests,
                self_host: self_host.as_deref(),
            };
            let inverse = crate::inverse::inverse(&record.spec, &options).map_err(|e| {
                ServiceError::Unprocessable {
                    code: "policy.not_invertible",
                    message: e.to_string(),
                    details: Value::Null,
                }
            })?;
            serde_json::to_value(&inverse).map_err(|e| ServiceError::Internal {
                message: e.to_string(),
            })
        })
        .await?
    }

    /// Enables `id` through the dry-run gate (the caller holds `writes`).
    async fn try_enable(
        &self,
        actor: &Actor,
        id: Uuid,
        force: Option<&str>,
    ) -> Result<(), ServiceError> {
        let record = self.record(id).await?;
        let (validated, _) = self
            .validate_for_store(
                &serde_json::to_string(&record.spec).unwrap_or_default(),
                id,
                record.version_int,
            )
            .await
            .map_err(|e| match e {
                ServiceError::Invalid { report } => ServiceError::Conflict {
                    code: "policy.invalid_status",
                    message: format!("the policy no longer compiles: {}", summarize(&report)),
                },
                other => other,
            })?;
        let transcript = self.dry_run_policy(actor, id).await?;
        let errors = transcript.errors();
        if !errors.is_empty() {
            match force {
                Some(reason) => {
                    let audit = audit(
                        actor,
                        "policy.enable_forced",
                        Some(id),
                        json!({"reason": reason, "errors": errors, "transcript_id": transcript.transcript_id}),
                    );
                    self.append_audit(audit).await?;
                    warn!(policy_id = %id, by = %actor.subject, reason, "enable forced past dry-run errors");
                }
                None => {
                    // A refused Enable changes nothing that runs: a disabled
                    // policy stays disabled (its intent is recorded), an
                    // enabled one stays enabled (a host briefly down must
                    // not switch a running policy off).
                    let audit = audit(
                        actor,
                        "policy.enable_blocked",
                        Some(id),
                        json!({"transcript_id": transcript.transcript_id}),
                    );
                    let status = match record.status {
                        PolicyStatus::Enabled => PolicyStatus::Enabled,
                        _ => PolicyStatus::Disabled,
                    };
                    self.store(move |s| s.set_policy_status(id, status, true, &audit))
                        .await?;
                    return Err(ServiceError::EnableBlocked {
                        errors,
                        transcript_id: Some(transcript.transcript_id),
                    });
                }
            }
        }
        let Some(ir) = validated.report.ir else {
            return Err(ServiceError::Internal {
                message: "validated policy without IR".into(),
            });
        };
        let audit = audit(
            actor,
            "policy.enabled",
            Some(id),
            json!({"forced": force.is_some()}),
        );
        // The engine first: if it cannot load the policy the store keeps
        // what runs (disabled); if the store write fails, unload again.
        self.engine_call(
            self.inner
                .engine
                .load(Policy { id, ir }, record.name.clone()),
        )
        .await?;
        let stored = self
            .store(move |s| s.set_policy_status(id, PolicyStatus::Enabled, true, &audit))
            .await;
        if let Err(e) = stored {
            let _ = self.engine_call(self.inner.engine.unload(id)).await;
            return Err(e);
        }
        Ok(())
    }

    /// Validates `body` for storing as policy `id` at `version`: blockers
    /// are an [`ServiceError::Invalid`]; returns the validation and the spec
    /// as JSON. Runs on the blocking pool under one of the CPU slots
    /// (waiting for one: a save is not refused for being busy), never on
    /// the async workers (SPEC §12).
    async fn validate_for_store(
        &self,
        body: &str,
        id: Uuid,
        version: u64,
    ) -> Result<(Validated, Value), ServiceError> {
        let body = body.to_string();
        self.cpu(move |service| service.validate_for_store_blocking(&body, id, version))
            .await?
    }

    fn validate_for_store_blocking(
        &self,
        body: &str,
        id: Uuid,
        version: u64,
    ) -> Result<(Validated, Value), ServiceError> {
        let inventory = self.cached_inventory();
        let ctx = CompileContext {
            policy_id: Some(id.to_string()),
            version_int: version,
            inventory: Some(&inventory),
            now: Some(Utc::now().to_rfc3339()),
        };
        let validated = self.timed_validation(body, &ctx);
        if !validated.report.ok {
            return Err(ServiceError::Invalid {
                report: serde_json::to_value(&validated.report).unwrap_or(Value::Null),
            });
        }
        let spec = parse_spec_value(body)?;
        Ok((validated, spec))
    }

    async fn record(&self, id: Uuid) -> Result<PolicyRecord, ServiceError> {
        self.store(move |s| s.policy(id))
            .await?
            .ok_or(ServiceError::NotFound {
                what: "policy",
                id: id.to_string(),
            })
    }
}

/// The spec body as JSON (the user may send YAML).
fn parse_spec_value(body: &str) -> Result<Value, ServiceError> {
    let trimmed = body.trim_start();
    let parsed = if trimmed.starts_with('{') {
        serde_json::from_str::<Value>(body).map_err(|e| e.to_string())
    } else {
        serde_norway::from_str::<Value>(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|message| bad("policy.unreadable", message))
}

fn validation_record(validated: &Validated) -> ValidationRecord {
    ValidationRecord {
        ts: Utc::now(),
        ok: validated.report.ok,
        issues: serde_json::to_value(&validated.report.issues).unwrap_or(Value::Null),
    }
}

fn view(record: PolicyRecord) -> PolicyView {
    let mut spec = record.spec;
    if let Value::Object(map) = &mut spec {
        map.insert("enabled".into(), Value::Bool(record.enabled_intent));
    }
    PolicyView {
        id: record.id,
        name: record.name,
        spec,
        version_int: record.version_int,
        hash: record.hash,
        status: record.status.as_str().to_string(),
        enabled_intent: record.enabled_intent,
        compiled_ir: record.compiled_ir,
        last_validation: record
            .last_validation
            .map(|v| serde_json::to_value(v).unwrap_or(Value::Null)),
        last_dry_run: record
            .last_dry_run
            .map(|v| serde_json::to_value(v).unwrap_or(Value::Null)),
        created_at: record.created_at,
        updated_at: record.updated_at,
    }
}

fn summarize(report: &Value) -> String {
    report["issues"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["severity"] == "blocker")
        .map(|i| {
            format!(
                "{} at {}",
                i["code"].as_str().unwrap_or(""),
                i["path"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn duplicate(e: ServiceError) -> ServiceError {
    match e {
        ServiceError::Store {
            source: StoreError::DuplicateHash { existing_id },
        } => ServiceError::DuplicateHash { existing_id },
        other => other,
    }
}

/// SPEC §9: a save whose preflight has an error is still a save, with
/// `status: disabled` (the dry-run, its transcript and the refusal are
/// recorded); only Enable answers 409.
fn saved_even_if_blocked(result: Result<(), ServiceError>) -> Result<(), ServiceError> {
    match result {
        Ok(()) => Ok(()),
        // The policy is stored (disabled); the client must not think it was
        // not (a retry would then be a duplicate). The refusal is audited by
        // the gate; other failures are logged here.
        Err(ServiceError::EnableBlocked { .. }) => Ok(()),
        Err(e) => {
            warn!(error = %e, code = e.code(), "saved policy left disabled: its enable failed");
            Ok(())
        }
    }
}

/// What the audit record of a validation keeps: the outcome, the hash and
/// each finding's severity, code and path (at most [`AUDITED_FINDINGS`]),
/// not the policy text.
fn validation_details(report: &crate::validate::ValidationReport) -> Value {
    let findings: Vec<Value> = report
        .issues
        .iter()
        .take(AUDITED_FINDINGS)
        .map(|i| json!({"severity": i.finding.severity, "code": i.finding.code, "path": i.finding.path}))
        .collect();
    json!({
        "ok": report.ok,
        "hash": report.hash,
        "findings": findings,
        "findings_total": report.issues.len(),
    })
}

/// How many findings a validation's audit record lists.
const AUDITED_FINDINGS: usize = 20;
