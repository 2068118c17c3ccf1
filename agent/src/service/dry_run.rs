//! The policy dry-run (SPEC §5): a fast refresh of the policy's host within
//! its SLA (a refresh that fails or times out falls back to the last
//! snapshot, marked stale, which is a `warn`), the targets resolved again
//! (the `ledger` selector from the forward policy's latest successful run),
//! one driver dry-run per action over all its targets, and the worst
//! severity rolled up into a transcript the store keeps.

use std::time::Instant;

use chrono::{DateTime, Utc};
use drivers::driver::{Action, DryRunAnswer, ErrorKind};
use inventory::selector::{parse_selector, SelectorMode};
use inventory::{Finding, Severity};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{Service, ServiceError};
use crate::compile::CompileContext;
use crate::engine::store::EngineStore;
use crate::store::PolicyRecord;
use crate::validate::validate_value;

/// SPEC §5 `used_inventory`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsedInventory {
    /// The snapshot reflects a refresh made for this dry-run.
    pub refreshed: bool,
    /// When the snapshot in use was taken.
    pub ts: Option<DateTime<Utc>>,
    /// The snapshot in use is stale (the refresh failed or timed out).
    pub stale: bool,
}

/// One action's dry-run on the policy's host.
#[derive(Debug, Clone, Serialize)]
pub struct ActionDryRun {
    pub action_index: u32,
    pub capability: String,
    pub verb: String,
    pub host: String,
    pub targets: Vec<String>,
    /// The driver's answers, one per target (SPEC §5 shape).
    pub answers: Vec<DryRunAnswer>,
    /// The driver call failed as a whole (`{code, message}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    pub duration_ms: u64,
}

/// The transcript of a policy dry-run.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyTranscript {
    pub transcript_id: Uuid,
    pub policy_id: Uuid,
    pub version_int: u64,
    pub ts: DateTime<Utc>,
    /// The worst severity of the findings and answers.
    pub severity: Severity,
    pub used_inventory: UsedInventory,
    /// Policy-level findings: `inventory.stale`, `selector.empty`, a
    /// refresh error, a missing host or capability.
    pub findings: Vec<Finding>,
    /// The resolved targets.
    pub targets: Vec<String>,
    pub actions: Vec<ActionDryRun>,
}

impl PolicyTranscript {
    /// Everything of `error` severity (what blocks Enable), as JSON.
    pub fn errors(&self) -> Vec<Value> {
        let mut out: Vec<Value> = self
            .findings
            .iter()
            .filter(|f| f.severity >= Severity::Error)
            .map(|f| json!({"code": f.code, "path": f.path, "message": f.message}))
            .collect();
        for action in &self.actions {
            if let Some(error) = &action.error {
                out.push(json!({"action_index": action.action_index, "error": error}));
            }
            for answer in action
                .answers
                .iter()
                .filter(|a| a.severity >= Severity::Error)
            {
                out.push(json!({
                    "action_index": action.action_index,
                    "idempotency_key": answer.idempotency_key,
                    "reason": answer.reason,
                }));
            }
        }
        out
    }
}

/// Dry-runs `record` now; see the module docs. A driver that reports an
/// action structurally invalid (`validation_error`) is a 422.
pub(super) async fn run(
    service: &Service,
    record: &PolicyRecord,
) -> Result<PolicyTranscript, ServiceError> {
    let id = record.id;
    let now = Utc::now();
    let mut findings = Vec::new();
    // Compiling (and building the inventory it reads) is CPU-bound: it
    // runs on the blocking pool, never on the async workers (SPEC §12).
    let (spec, version_int) = (record.spec.clone(), record.version_int);
    let validated = service
        .cpu(move |service| {
            let inventory = service.cached_inventory();
            let ctx = CompileContext {
                policy_id: Some(id.to_string()),
                version_int,
                inventory: Some(&inventory),
                now: Some(now.to_rfc3339()),
            };
            validate_value(&spec, &service.inner.manifests, &ctx)
        })
        .await?;
    let Some(ir) = validated.report.ir else {
        return Err(ServiceError::Invalid {
            report: serde_json::to_value(&validated.report).unwrap_or(Value::Null),
        });
    };
    let host_id = ir.targets.host_id.clone();
    let entry = service
        .host_entry(&host_id)
        .map_err(|_| ServiceError::Conflict {
            code: "policy.host_missing",
            message: format!(
                "host `{host_id}` is not registered; add it or re-validate the policy"
            ),
        })?;

    // Fast refresh within the host's SLA; on failure the last snapshot, stale.
    let outcome = service
        .inner
        .inventory
        .fast_refresh(&host_id)
        .await
        .map_err(|e| ServiceError::Internal {
            message: e.to_string(),
        })?;
    if let Some(error) = &outcome.error {
        let severity = if outcome.ts.is_some() {
            Severity::Warn
        } else {
            Severity::Error
        };
        findings.push(Finding::new(
            severity,
            error.code(),
            "/targets/host_id",
            format!("refresh of host {host_id} failed: {error}"),
        ));
    }
    if outcome.stale {
        findings.push(Finding::new(
            Severity::Warn,
            "inventory.stale",
            "/targets/host_id",
            format!("the inventory of host {host_id} is stale; the dry-run used the last snapshot"),
        ));
    }
    let used_inventory = UsedInventory {
        refreshed: outcome.refreshed,
        ts: outcome.ts,
        stale: outcome.stale,
    };
    if outcome.refreshed {
        if let Ok(Some(snapshot)) = service.inner.inventory.snapshot(&host_id) {
            let value = serde_json::to_value(&*snapshot).unwrap_or(Value::Null);
            let ts = snapshot.ts.unwrap_or(now);
            let host = host_id.clone();
            service
                .store(move |s| {
                    crate::store::PolicyStore::put_inventory_snapshot(s, &host, &value, ts)
                })
                .await?;
        }
    }

    // Resolve the targets again.
    let targets = resolve(service, &ir, &host_id, &mut findings).await?;
    let said = findings
        .iter()
        .any(|f| f.severity >= Severity::Error || f.code == "selector.empty");
    if targets.is_empty() && !said {
        findings.push(Finding::new(
            Severity::Warn,
            "selector.empty",
            "/targets/selector",
            "the selector resolved to no targets: the policy would do nothing now",
        ));
    }

    // One driver dry-run per action over all its targets.
    let mut actions = Vec::new();
    if !targets.is_empty() {
        for (index, step) in ir.plan.iter().enumerate() {
            let action = Action {
                capability: step.capability.clone(),
                verb: step.verb.clone(),
                params: step.params.clone(),
            };
            let started = Instant::now();
            let answer = entry.driver.dry_run(&action, &targets).await;
            let elapsed = started.elapsed();
            service
                .inner
                .metrics
                .driver_latency(&entry.validated.plugin, "dry_run", elapsed);
            let (answers, error) = match answer {
                Ok(answers) => (answers, None),
                Err(e) if e.kind == ErrorKind::ValidationError => {
                    return Err(ServiceError::Unprocessable {
                        code: "driver.validation_error",
                        message: format!(
                            "{} {} on {host_id}: {}",
                            action.capability, action.verb, e.message
                        ),
                        details: json!({"action_index": index}),
                    });
                }
                Err(e) => (
                    Vec::new(),
                    Some(json!({"code": e.code(), "message": e.message})),
                ),
            };
            actions.push(ActionDryRun {
                action_index: index as u32,
                capability: action.capability,
                verb: action.verb,
                host: host_id.clone(),
                targets: targets.clone(),
                answers,
                error,
                duration_ms: elapsed.as_millis() as u64,
            });
        }
    }
    let severity = findings
        .iter()
        .map(|f| f.severity)
        .chain(actions.iter().flat_map(|a| {
            a.answers
                .iter()
                .map(|x| x.severity)
                .chain(a.error.as_ref().map(|_| Severity::Error))
        }))
        .max()
        .unwrap_or(Severity::Info);
    Ok(PolicyTranscript {
        transcript_id: Uuid::new_v4(),
        policy_id: id,
        version_int: record.version_int,
        ts: now,
        severity,
        used_inventory,
        findings,
        targets,
        actions,
    })
}

/// The policy's targets now: the ledger selector from the forward policy's
/// latest successful run (only targets still on the host), else the
/// selector against the current snapshot.
async fn resolve(
    service: &Service,
    ir: &crate::ir::Ir,
    host_id: &str,
    findings: &mut Vec<Finding>,
) -> Result<Vec<String>, ServiceError> {
    // Parsing and matching the selector over the snapshot are CPU-bound:
    // they run on the blocking pool (SPEC §12).
    let (spec, host) = (ir.targets.clone(), host_id.to_string());
    let resolved = service
        .cpu(move |service| resolve_blocking(service, &spec, &host))
        .await?;
    let (forward, target_type) = match resolved {
        Resolved::Targets(mut found, ids) => {
            findings.append(&mut found);
            return Ok(ids);
        }
        Resolved::Ledger { forward } => (forward, ir.targets.target_type.clone()),
    };
    // The forward policy's restore set (SPEC §6 "Outage lifecycle"),
    // resolved as the engine resolves it.
    let set = service.store(move |s| s.restore_set(forward)).await?;
    let host = host_id.to_string();
    let resolved = service
        .cpu(move |service| {
            let snapshot = service.inner.inventory.snapshot(&host).ok().flatten();
            crate::engine::runner::restore_targets(
                &service.inner.manifests,
                &set,
                &host,
                &target_type,
                snapshot.as_deref(),
            )
        })
        .await?;
    for (target, now) in &resolved.changed {
        findings.push(Finding::new(
            Severity::Info,
            crate::engine::runner::CHANGED_SINCE,
            "/targets/selector/value",
            format!("{target} is {now} now: changed since the forward run, not restored"),
        ));
    }
    Ok(resolved.targets)
}

/// What [`resolve_blocking`] found: the targets (with findings), or a
/// ledger selector's forward policy, whose restore set is read next.
enum Resolved {
    Targets(Vec<Finding>, Vec<String>),
    Ledger { forward: Uuid },
}

/// The selector of `spec` parsed and resolved against the snapshot of
/// `host_id`; CPU-bound, run on the blocking pool.
fn resolve_blocking(service: &Service, spec: &crate::ir::TargetsIr, host_id: &str) -> Resolved {
    let error = |pointer: &str, message: String| {
        Resolved::Targets(
            vec![Finding::new(
                Severity::Error,
                "selector.unresolved",
                pointer,
                message,
            )],
            Vec::new(),
        )
    };
    let selector = match parse_selector(spec.selector.mode, &spec.selector.value, &spec.target_type)
    {
        Ok(s) => s,
        Err(errors) => {
            let findings = errors
                .into_iter()
                .map(|e| {
                    Finding::new(
                        Severity::Error,
                        "selector.unresolved",
                        "/targets/selector",
                        e.message,
                    )
                })
                .collect();
            return Resolved::Targets(findings, Vec::new());
        }
    };
    if spec.selector.mode == SelectorMode::Ledger {
        return match selector
            .ledger_policy_id()
            .and_then(|s| Uuid::parse_str(s).ok())
        {
            Some(forward) => Resolved::Ledger { forward },
            None => error(
                "/targets/selector/value",
                "the ledger selector's value is not a policy id".into(),
            ),
        };
    }
    let Some(snapshot) = service.inner.inventory.snapshot(host_id).ok().flatten() else {
        return error(
            "/targets/host_id",
            format!(
                "host {host_id} has no inventory yet: the refresh found nothing to resolve against"
            ),
        );
    };
    match selector.resolve(&snapshot) {
        Ok(resolution) => Resolved::Targets(resolution.findings, resolution.ids),
        Err(e) => error("/targets/selector", e.message),
    }
}
