//! Retry while the trigger holds (SPEC §6 "Outage lifecycle"): an action ×
//! target that failed with a retryable error (host unreachable, breaker
//! open, timeout, a network or server error) is tried again with backoff
//! for as long as the policy's trigger still holds, every attempt recorded
//! in the same ledger run. Retrying ends when the targets reach the desired
//! state, the trigger stops holding (`info engine.retry_stopped`), or the
//! action's `retry.attempts` run out (`error engine.gave_up`). A host that
//! comes back from unreachable during an outage therefore still gets shut
//! down. Retried items go through the host's queue like any item, so the
//! kill switch holds them too.
//!
//! A retry waiting for its delay is also kept in the store
//! ([`Write::PutRetry`]): after a restart [`Engine::start`] hands it to the
//! same path as an interrupted intent (`inflight`), which waits for the
//! subject's first reading, checks the trigger and plans it again in a new
//! run (its retry count kept, the backoff started afresh).

use chrono::{DateTime, TimeDelta, Utc};
use drivers::driver::Action;
use drivers::guard::CallContext;
use drivers::ratelimit::Backoff;
use inventory::Severity;
use serde_json::{json, Value};
use std::time::Duration;
use tracing::{info, warn};
use uuid::Uuid;

use super::fresh::FireTime;
use super::guards::{already_desired, Guard};
use super::ledger::row;
use super::{
    inverse_keys, ledger_forward, ActionWork, Engine, EngineError, OpenRun, Pending,
    ALREADY_DESIRED, HOST_UNREACHABLE,
};
use crate::engine::conditions::{Facts, Lookup};
use crate::engine::scheduler::QueueItem;
use crate::engine::store::{AuditRecord, IntentRecord, RetryRecord, Write};
use crate::spec::{Logic, RetrySpec, Trigger, MAX_RETRY_BACKOFF_S};

/// Retrying ended because the attempts ran out.
pub const GAVE_UP: &str = "engine.gave_up";
/// Retrying ended because the policy's trigger no longer holds.
pub const RETRY_STOPPED: &str = "engine.retry_stopped";

/// Where a retried item stands: how many retries were made and the
/// backoff for the next one.
#[derive(Debug, Clone, Default)]
pub(super) struct Attempt {
    /// Retries made before this item (0 for the first attempt).
    pub retries: u32,
    pub backoff: Option<Backoff>,
    /// The whole item failed with a retryable driver error.
    pub whole_retryable: bool,
}

/// A retry waiting for its delay.
#[derive(Debug)]
struct PendingRetry {
    due: DateTime<Utc>,
    run_id: Uuid,
    policy_id: Uuid,
    action_index: u32,
    host: String,
    targets: Vec<String>,
    /// This retry's number (1 for the first retry).
    retries: u32,
    backoff: Backoff,
}

/// The retries waiting for their delay.
#[derive(Debug, Default)]
pub(super) struct Retries {
    waiting: Vec<PendingRetry>,
}

impl Retries {
    /// When the next retry is due.
    pub(super) fn next_due(&self) -> Option<DateTime<Utc>> {
        self.waiting.iter().map(|r| r.due).min()
    }

    fn take_due(&mut self, now: DateTime<Utc>) -> Vec<PendingRetry> {
        let (due, wait): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(|r| r.due <= now);
        self.waiting = wait;
        due
    }
}

/// Whether a result code is worth retrying: the host or the network, not
/// the request (auth, config, validation, not found).
pub(super) fn retryable(code: &str) -> bool {
    matches!(
        code,
        HOST_UNREACHABLE
            | "driver.network_error"
            | "driver.timeout"
            | "driver.rate_limited"
            | "driver.server_error"
    )
}

impl Engine {
    /// The retry of the policy's action `index` (its `retry`, or the default).
    fn retry_spec(&self, policy_id: Uuid, index: u32) -> RetrySpec {
        self.policies
            .get(&policy_id)
            .and_then(|p| p.ir.plan.get(index as usize))
            .and_then(|step| step.retry)
            .unwrap_or_default()
    }

    /// Whether the policy's trigger group still holds now for the event
    /// subject `subject_id` (a UPS still in the state a `ups.state` trigger
    /// waits for, a metric still past its threshold). Timers and webhooks
    /// are instantaneous and never hold.
    pub(super) fn trigger_holds(&self, policy_id: Uuid, subject_id: &str) -> bool {
        let Some(policy) = self.policies.get(&policy_id) else {
            return false;
        };
        let group = &policy.ir.match_.trigger_group;
        let holds = |trigger: &Trigger| self.level_holds(trigger, subject_id) == Some(true);
        match group.logic {
            Logic::All => group.triggers.iter().all(holds),
            Logic::Any => group.triggers.iter().any(holds),
        }
    }

    /// Whether the policy's trigger group is made of level triggers only
    /// (`ups.state`, `metric.threshold`) and the last reading says it no
    /// longer holds. Unlike `!trigger_holds`, an unknown reading (no metric
    /// value yet) or an instantaneous trigger never counts as ended.
    pub(super) fn trigger_ended(&self, policy_id: Uuid, subject_id: &str) -> bool {
        let Some(policy) = self.policies.get(&policy_id) else {
            return false;
        };
        let group = &policy.ir.match_.trigger_group;
        let level = |t: &Trigger| {
            matches!(
                t,
                Trigger::UpsState { .. } | Trigger::MetricThreshold { .. }
            )
        };
        if group.triggers.is_empty() || !group.triggers.iter().all(level) {
            return false;
        }
        let ended = |trigger: &Trigger| self.level_holds(trigger, subject_id) == Some(false);
        match group.logic {
            Logic::All => group.triggers.iter().any(ended),
            Logic::Any => group.triggers.iter().all(ended),
        }
    }

    /// Whether a level trigger holds on the facts now: `None` when the
    /// facts do not say (UPS or metric never read) or the trigger is not a
    /// level (a timer, a webhook).
    fn level_holds(&self, trigger: &Trigger, subject_id: &str) -> Option<bool> {
        let ups = |filter: &Option<String>| match self
            .facts
            .ups(Some(filter.as_deref().unwrap_or(subject_id)))
        {
            Lookup::Found(u) => Some(u),
            _ => None,
        };
        match trigger {
            Trigger::UpsState { equals, ups: f, .. } => ups(f).and_then(|u| u.is_in(*equals)),
            Trigger::MetricThreshold {
                metric,
                op,
                value,
                ups: f,
                ..
            } => ups(f)
                .and_then(|u| u.reading(metric))
                .map(|reading| op.compare(reading, *value)),
            _ => None,
        }
    }

    /// After `targets` of action `index` on `host` failed with a retryable
    /// error in `open`'s run: schedules the next retry and returns `true`,
    /// or records why there is none (`engine.gave_up`,
    /// `engine.retry_stopped`) and returns `false`.
    pub(super) fn plan_retry(
        &mut self,
        open: &mut OpenRun,
        index: u32,
        host: &str,
        targets: Vec<String>,
        attempt: Attempt,
    ) -> bool {
        let policy_id = open.record.policy_id;
        let spec = self.retry_spec(policy_id, index);
        if spec.attempts == Some(0) || targets.is_empty() {
            return false;
        }
        let action = self.plan_action(policy_id, index);
        let end = |open: &mut OpenRun, code: &str, severity: Severity, why: &str| {
            for target in &targets {
                open.record.results.push(row(
                    index as usize,
                    &action,
                    host,
                    target,
                    false,
                    severity,
                    code,
                    why,
                ));
            }
        };
        if spec.attempts.is_some_and(|max| attempt.retries >= max) {
            let why = format!("gave up after {} retries", attempt.retries);
            warn!(policy_id = %policy_id, host, "engine.gave_up: {why}");
            end(open, GAVE_UP, Severity::Error, &why);
            return false;
        }
        if !self.trigger_holds(policy_id, &open.record.event.subject.id) {
            // A trigger that does not hold (an instantaneous timer or
            // webhook, or an outage already over): the failure stands as
            // it is; a retry series that was going on says why it ends.
            if attempt.retries > 0 {
                let why = "not retried: the policy's trigger no longer holds";
                info!(policy_id = %policy_id, host, "engine.retry_stopped");
                end(open, RETRY_STOPPED, Severity::Info, why);
            }
            return false;
        }
        let mut backoff = attempt.backoff.unwrap_or_else(|| {
            let start = Duration::from_secs(spec.backoff_s);
            Backoff::new(start, Duration::from_secs(MAX_RETRY_BACKOFF_S).max(start))
        });
        let delay = backoff.next_delay();
        let now = (self.config.clock)();
        let due = now + TimeDelta::from_std(delay).unwrap_or(TimeDelta::MAX);
        let retries = attempt.retries + 1;
        // The retry is kept in the store too, so a restart re-plans it
        // (`Engine::start`) instead of losing it.
        let from = targets
            .iter()
            .map(|t| {
                let state = open
                    .from
                    .get(&(host.to_string(), t.clone()))
                    .cloned()
                    .flatten();
                (t.clone(), state)
            })
            .collect();
        let record = RetryRecord {
            run_id: open.record.run_id,
            policy_id,
            action_index: index,
            host: host.to_string(),
            targets: targets.clone(),
            retries,
            due,
            event: open.record.event.clone(),
            from,
        };
        self.retries_scheduled += 1;
        if let Err(e) = self.store.write(&[Write::PutRetry(record)]) {
            warn!(policy_id = %policy_id, host, error = %e, "cannot persist the waiting retry: a restart before it is due loses it");
        }
        let _ = self.store.write(&[Write::AppendAudit(AuditRecord {
            ts: now,
            correlation_id: open.record.event.correlation_id,
            kind: "engine.retry_scheduled".into(),
            policy_id: Some(policy_id),
            details: json!({
                "run_id": open.record.run_id,
                "action_index": index,
                "host": host,
                "targets": targets,
                "retry": retries,
                "due": due,
            }),
        })]);
        self.retries.waiting.push(PendingRetry {
            due,
            run_id: open.record.run_id,
            policy_id,
            action_index: index,
            host: host.to_string(),
            targets,
            retries,
            backoff,
        });
        true
    }

    /// The action `index` of a policy, as the engine runs it.
    fn plan_action(&self, policy_id: Uuid, index: u32) -> Action {
        self.policies
            .get(&policy_id)
            .and_then(|p| p.ir.plan.get(index as usize))
            .map(|step| Action {
                capability: step.capability.clone(),
                verb: step.verb.clone(),
                params: step.params.clone(),
            })
            .unwrap_or_else(|| Action {
                capability: String::new(),
                verb: String::new(),
                params: Default::default(),
            })
    }

    /// When the next retry is due (for [`Engine::next_deadline`]).
    pub(super) fn next_retry(&self) -> Option<DateTime<Utc>> {
        self.retries.next_due()
    }

    /// Runs every retry due at `now`: re-checks the trigger and the host's
    /// guards, skips targets already in the desired state, reopens the
    /// intent and enqueues the item in the same run.
    pub(super) async fn fire_retries(&mut self, now: DateTime<Utc>) -> Result<(), EngineError> {
        let mut due = self.retries.take_due(now).into_iter();
        while let Some(retry) = due.next() {
            // Its store record goes now; a retry planned again below
            // writes its own.
            let forget = Write::RemoveRetry {
                run_id: retry.run_id,
                action_index: retry.action_index,
                host: retry.host.clone(),
            };
            if let Err(e) = self.store.write(&[forget]) {
                self.retries.waiting.push(retry);
                self.retries.waiting.extend(due);
                return Err(e.into());
            }
            let Some(mut open) = self.open.remove(&retry.run_id) else {
                continue;
            };
            let attempt = Attempt {
                retries: retry.retries,
                backoff: Some(retry.backoff.clone()),
                whole_retryable: false,
            };
            let action = self.plan_action(retry.policy_id, retry.action_index);
            let index = retry.action_index;
            if !self.trigger_holds(retry.policy_id, &open.record.event.subject.id) {
                info!(policy_id = %retry.policy_id, host = %retry.host, "engine.retry_stopped");
                for target in &retry.targets {
                    open.record.results.push(row(
                        index as usize,
                        &action,
                        &retry.host,
                        target,
                        false,
                        Severity::Info,
                        RETRY_STOPPED,
                        "not retried: the policy's trigger no longer holds",
                    ));
                }
                self.settle_retry(open, false)?;
                continue;
            }
            let guard = match self.policies.get(&retry.policy_id) {
                Some(policy) => self.host_guard(policy, &self.facts),
                None => Guard::Fail(HOST_UNREACHABLE, "the policy was unloaded".into()),
            };
            if let Guard::Fail(code, why) = guard {
                let why = format!("retry {}: {why}", retry.retries);
                for target in &retry.targets {
                    open.record.results.push(row(
                        index as usize,
                        &action,
                        &retry.host,
                        target,
                        false,
                        Severity::Error,
                        code,
                        &why,
                    ));
                }
                let again = retryable(code)
                    && self.policies.contains_key(&retry.policy_id)
                    && self.plan_retry(&mut open, index, &retry.host, retry.targets, attempt);
                self.settle_retry(open, again)?;
                continue;
            }
            // Targets that reached the desired state meanwhile are done,
            // read on the host refreshed now, as at the first fire (SPEC §6
            // steps 5 and 7): the snapshot held since may be older than an
            // operator's change. A failed refresh skips nothing.
            let mut fire = FireTime::default();
            self.refresh_at_fire(&mut fire, &retry.host).await;
            let snapshot = fire.get(&retry.host).and_then(|r| r.snapshot.clone());
            let mut targets = Vec::new();
            let mut done = Vec::new();
            for target in retry.targets {
                match already_desired(
                    &self.config.manifests,
                    &action,
                    snapshot.as_deref(),
                    &target,
                ) {
                    Some(status) => {
                        open.record.results.push(row(
                            index as usize,
                            &action,
                            &retry.host,
                            &target,
                            true,
                            Severity::Info,
                            ALREADY_DESIRED,
                            &format!("{target} is already {status}"),
                        ));
                        done.push(target);
                    }
                    None => targets.push(target),
                }
            }
            // An inverse's target someone else brought back meanwhile is no
            // longer as the forward run left it: it leaves the forward
            // policy's restore set, as when the inverse first resolved it.
            let forward = self.policies.get(&retry.policy_id).and_then(ledger_forward);
            if let Some(forward) = forward.filter(|_| !done.is_empty()) {
                let writes = self.drop_changed_since(forward, &retry.host, &done);
                if let Err(e) = self.store.write(&writes) {
                    self.open.insert(retry.run_id, open);
                    return Err(e.into());
                }
            }
            if targets.is_empty() {
                self.settle_retry(open, false)?;
                continue;
            }
            let Some(driver) = self.drivers.get(&retry.host).cloned() else {
                self.settle_retry(open, false)?;
                continue;
            };
            let keys: Vec<String> = targets
                .iter()
                .map(|t| self.key(&retry.host, &action, t))
                .collect();
            let intent = IntentRecord {
                run_id: retry.run_id,
                policy_id: retry.policy_id,
                action_index: index,
                capability: action.capability.clone(),
                verb: action.verb.clone(),
                params: Value::Object(action.params.clone()),
                host: retry.host.clone(),
                targets: targets.clone(),
                idempotency_keys: keys.clone(),
                correlation_id: open.record.event.correlation_id,
                created_at: now,
                event: Some(open.record.event.clone()),
                tasks: Vec::new(),
                started_at: None,
            };
            let mut batch = vec![Write::ReopenIntent(intent.clone())];
            batch.extend(keys.into_iter().map(|key| Write::RecordKey {
                policy_id: retry.policy_id,
                key,
                at: now,
            }));
            let inverse = inverse_keys(&self.config.manifests, &retry.host, &action, &targets);
            if !inverse.is_empty() {
                batch.push(Write::ClearKeys { keys: inverse });
            }
            if let Err(e) = self.store.write(&batch) {
                self.open.insert(retry.run_id, open);
                return Err(e.into());
            }
            let item_id = Uuid::new_v4();
            let item = QueueItem::new(
                item_id,
                retry.host.clone(),
                ActionWork {
                    driver,
                    action: action.clone(),
                    targets,
                    context: CallContext {
                        policy_id: retry.policy_id,
                        policy: self.names.get(&retry.policy_id).map(|n| n.as_str().into()),
                        correlation_id: intent.correlation_id,
                    },
                    tasks: self.task_sink(&intent),
                    started: self.start_mark(&intent),
                },
            )
            .with_ttl(self.config.item_ttl);
            self.open.insert(retry.run_id, open);
            if let Err(e) = self.scheduler.enqueue(item).await {
                let outcome = Err(format!("not enqueued: {}", e.reason));
                if let Some(run) = self.item_done(retry.run_id, &intent, outcome, 0)? {
                    self.closed.push_back(run);
                }
                continue;
            }
            self.pending.insert(
                item_id,
                Pending {
                    run_id: retry.run_id,
                    intent,
                    started: tokio::time::Instant::now(),
                    attempt: Attempt {
                        retries: retry.retries,
                        backoff: Some(retry.backoff),
                        whole_retryable: false,
                    },
                    trigger_ended: false,
                },
            );
        }
        Ok(())
    }

    /// A retry that ran no item: when no further retry was planned (`again`
    /// false) it no longer holds its run open, which closes when nothing
    /// else does.
    fn settle_retry(&mut self, mut open: OpenRun, again: bool) -> Result<(), EngineError> {
        if !again {
            open.items_left = open.items_left.saturating_sub(1);
        }
        if open.items_left > 0 {
            self.open.insert(open.record.run_id, open);
            return Ok(());
        }
        let run = self.close_run(open.record)?;
        self.closed.push_back(run);
        Ok(())
    }
}
