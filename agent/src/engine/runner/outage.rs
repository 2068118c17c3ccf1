//! The engine's side of the outage lifecycle (SPEC §1, §6 "Outage
//! lifecycle"): level readings compared with the last known state of each
//! UPS, and countdowns restored at start that wait for the first reading to
//! confirm the state they count on.
//!
//! [`Engine::handle_event`] is the one entry for every event. An ordinary
//! `ups.state` edge is handled as before and then folded into the UPS's
//! last known [`UpsLevel`], which the store keeps. A level reading (a
//! source's first reading after start or reconnect, [`level_event`]) is
//! compared with that record and each state it enters is handled as an
//! edge, so the engine, not each source, decides what a restart means.
//!
//! A `for` / `timer.after` countdown restored at start on a UPS subject is
//! not put on the timer queue until that UPS has been read: if the reading
//! ends the state (the mains came back while the agent was down), the edge
//! it causes cancels the countdown with an audit record; if it confirms it,
//! the countdown fires at its original deadline (at once when that passed).
//! A shutdown never runs on a state that already ended.
//!
//! For the same reason, when a UPS reading ends the state a policy's level
//! trigger waits for (the mains return, the low battery clears), that
//! policy's items still queued on their host — behind another item, or
//! held by the kill switch — are cancelled before they start and recorded
//! `info engine.trigger_ended`; an item already running finishes (it may
//! be acting; the engine never drops a started call).
//!
//! [`level_event`]: crate::engine::subjects::level_event

use std::collections::{BTreeMap, BTreeSet};

use drivers::driver::ExecOutcome;
use inventory::Severity;
use serde_json::{json, Value};
use tracing::{info, warn};
use uuid::Uuid;

use super::lifecycle::{countdown_audit, not_confirmed};
use super::{Engine, EngineError, EventReport};
use crate::engine::event::{Event, EventKind, SubjectKind};
use crate::engine::store::{AuditRecord, IntentRecord, SubjectState, Write};
use crate::engine::subjects::{edge_of, entered, level_metrics, level_reading, UpsLevel};
use crate::engine::triggers::TimerRequest;
use crate::spec::Trigger;

/// The audit reason of a restored countdown whose state the first reading
/// after start did not confirm.
pub const NOT_CONFIRMED: &str = "engine.countdown_not_confirmed";

/// The ledger and audit code of a queued item cancelled before it started
/// because its policy's trigger stopped holding.
pub const TRIGGER_ENDED: &str = "engine.trigger_ended";

/// What the engine knows of each UPS's level and which subjects a source
/// has read since start.
#[derive(Debug, Default)]
pub(super) struct Levels {
    /// The last level accepted per UPS subject (mirrors the store).
    known: BTreeMap<String, UpsLevel>,
    /// Countdowns restored at start, waiting for their subject's first
    /// reading, by subject id.
    gated: BTreeMap<String, Vec<(Uuid, TimerRequest)>>,
    /// Subjects read (or sent an event) since start.
    read: BTreeSet<String>,
}

impl Levels {
    /// Whether `request` is a restored countdown still waiting for its
    /// subject's first reading (it must not be put on the timer queue).
    pub(super) fn is_gated(&self, request: &TimerRequest) -> bool {
        self.gated
            .get(&request.subject_id)
            .is_some_and(|g| g.iter().any(|(_, r)| r == request))
    }
}

impl Engine {
    /// Handles one event for real: SPEC §6 steps 1–10 up to the enqueueing
    /// of every scheduled item (see [`Engine::handle_edge`]). A level
    /// reading is first turned into the edges it implies (module docs); a
    /// `ups.state` edge also updates the UPS's last known state.
    ///
    /// The first call runs [`Engine::start`] if the caller did not.
    pub async fn handle_event(&mut self, event: &Event) -> Result<EventReport, EngineError> {
        if !self.started {
            self.start().await?;
        }
        if let Some(reading) = level_reading(event) {
            return self.handle_level(event, reading).await;
        }
        let report = self.handle_edge(event).await?;
        if event.subject.kind == SubjectKind::Ups {
            if let Some(state) = event.ups_state() {
                let mut level = self
                    .levels
                    .known
                    .get(&event.subject.id)
                    .cloned()
                    .unwrap_or_default();
                level.enter(state);
                self.remember_level(&event.subject.id, level);
            }
            if matches!(event.kind, EventKind::UpsState | EventKind::MetricThreshold) {
                self.confirm_subject(&event.subject.id)?;
            }
        }
        Ok(report)
    }

    /// Cancels, before they start, the queued items of every run whose
    /// policy's level trigger no longer holds on the facts now (module
    /// docs). A running item is left alone: the scheduler cancels only
    /// what has not started. The cancelled items are reported by the
    /// scheduler and recorded by [`Engine::trigger_ended_outcomes`].
    pub(super) async fn cancel_ended(&mut self) -> Result<(), EngineError> {
        let ended: Vec<Uuid> = self
            .pending
            .iter()
            .filter(|(_, item)| !item.trigger_ended)
            .filter(|(_, item)| {
                self.open.get(&item.run_id).is_some_and(|run| {
                    self.trigger_ended(item.intent.policy_id, &run.record.event.subject.id)
                })
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            let cancelled = self
                .scheduler
                .cancel_queued(id)
                .await
                .map_err(|source| EngineError::Scheduler { source })?;
            if let Some(item) = self.pending.get_mut(&id).filter(|_| cancelled) {
                item.trigger_ended = true;
            }
        }
        Ok(())
    }

    /// The per-target outcomes of an item cancelled before it started
    /// because its trigger ended, and their audit record. Nothing ran, so
    /// the rows are not changes and their idempotency keys are forgotten
    /// (the next outage acts again).
    pub(super) fn trigger_ended_outcomes(
        &self,
        intent: &IntentRecord,
    ) -> Result<Vec<ExecOutcome>, EngineError> {
        let why = "not started: the policy's trigger no longer holds";
        info!(policy_id = %intent.policy_id, host = %intent.host, correlation_id = %intent.correlation_id, targets = ?intent.targets, "engine.trigger_ended");
        self.store.write(&[Write::AppendAudit(AuditRecord {
            ts: (self.config.clock)(),
            correlation_id: intent.correlation_id,
            kind: TRIGGER_ENDED.into(),
            policy_id: Some(intent.policy_id),
            details: json!({
                "run_id": intent.run_id,
                "action_index": intent.action_index,
                "verb": intent.verb,
                "host": intent.host,
                "targets": intent.targets,
                "reason": why,
            }),
        })])?;
        Ok(intent
            .targets
            .iter()
            .map(|target| ExecOutcome {
                target: target.clone(),
                ok: false,
                severity: Severity::Info,
                code: TRIGGER_ENDED.to_string(),
                reason: Some(why.to_string()),
                evidence: serde_json::Map::new(),
                duration_ms: 0,
                result_state: None,
            })
            .collect())
    }

    /// The last level the engine accepted for each UPS, by subject id.
    pub fn known_levels(&self) -> &BTreeMap<String, UpsLevel> {
        &self.levels.known
    }

    /// Loads the last known levels from the store (at start).
    pub(super) fn load_levels(&mut self) -> Result<(), EngineError> {
        self.levels.known = self
            .store
            .subject_states()?
            .into_iter()
            .map(|s| (s.id, UpsLevel::from_names(&s.states)))
            .collect();
        Ok(())
    }

    /// Whether a countdown restored at start must wait for its subject's
    /// first reading: a UPS subject a source reads ([`super::EngineConfig::read_subjects`])
    /// and that has not been read yet.
    pub(super) fn needs_confirmation(&self, request: &TimerRequest) -> bool {
        request.subject_kind == SubjectKind::Ups
            && !self.levels.read.contains(&request.subject_id)
            && self
                .config
                .read_subjects
                .as_ref()
                .is_none_or(|s| s.contains(&request.subject_id))
    }

    /// Whether UPS `subject_id` is one a source reads and has not been
    /// read since start (what an interrupted intent's retry waits for).
    pub(super) fn awaits_reading(&self, subject_id: &str) -> bool {
        !self.levels.read.contains(subject_id)
            && self
                .config
                .read_subjects
                .as_ref()
                .is_none_or(|s| s.contains(subject_id))
    }

    /// Keeps a restored countdown off the timer queue until its subject is read.
    pub(super) fn gate(&mut self, policy_id: Uuid, request: TimerRequest) {
        self.levels
            .gated
            .entry(request.subject_id.clone())
            .or_default()
            .push((policy_id, request));
    }

    /// A level reading: each state it enters against the last known level
    /// is handled as an edge, then the level is recorded exactly as read
    /// and the subject's restored countdowns are confirmed or cancelled.
    async fn handle_level(
        &mut self,
        event: &Event,
        reading: UpsLevel,
    ) -> Result<EventReport, EngineError> {
        let id = event.subject.id.clone();
        let record = self
            .levels
            .known
            .get(&id)
            .cloned()
            .or_else(|| self.implied_level(&id));
        let mut report = EventReport {
            correlation_id: event.correlation_id,
            decisions: Vec::new(),
            timers: Vec::new(),
        };
        for state in entered(record.as_ref(), &reading) {
            let edge = self.handle_edge(&edge_of(event, state)).await?;
            report.decisions.extend(edge.decisions);
            report.timers.extend(edge.timers);
        }
        let level = UpsLevel {
            power: reading.power.or(record.and_then(|r| r.power)),
            conditions: reading.conditions,
        };
        // The facts read the UPS exactly as it is now: a condition (or
        // `comm_lost`) the reading no longer shows is gone.
        let facts = self.facts.ups_entry(&id);
        if level.power.is_some() {
            facts.state = level.power;
        }
        facts.conditions = level.conditions.clone();
        self.remember_level(&id, level);
        // The metrics read with the level confirm or end the restored
        // `metric.threshold` holds, as the states do the `ups.state` ones.
        for edge in self.metric_confirmations(event) {
            let edge = self.handle_edge(&edge).await?;
            report.decisions.extend(edge.decisions);
            report.timers.extend(edge.timers);
        }
        self.confirm_subject(&id)?;
        // A condition the reading no longer shows ended without an edge.
        self.cancel_ended().await?;
        Ok(report)
    }

    /// The `metric.threshold` events a level reading implies: one per metric
    /// it carries that a countdown restored at start and still waiting for
    /// this UPS's first reading watches. Handled as edges before the
    /// countdowns are confirmed, a value no longer past the threshold ends
    /// the hold (cancelled with reason [`NOT_CONFIRMED`]); one still past
    /// it keeps the hold and its original deadline. Every metric read is
    /// recorded in the facts. A metric no countdown waits on is the
    /// source's baseline, not an event.
    fn metric_confirmations(&mut self, level: &Event) -> Vec<Event> {
        let id = &level.subject.id;
        let metrics = level_metrics(level);
        let facts = self.facts.ups_entry(id);
        for (name, value) in &metrics {
            facts.set_reading(name, *value);
        }
        let Some(gated) = self.levels.gated.get(id) else {
            return Vec::new();
        };
        let watched: BTreeSet<&str> = gated
            .iter()
            .filter_map(|(policy_id, request)| {
                let policy = self.policies.get(policy_id)?;
                match policy
                    .ir
                    .match_
                    .trigger_group
                    .triggers
                    .get(request.trigger)?
                {
                    Trigger::MetricThreshold { metric, .. } => Some(metric.as_str()),
                    _ => None,
                }
            })
            .collect();
        metrics
            .iter()
            .filter(|(name, _)| watched.contains(name.as_str()))
            .map(|(name, value)| {
                let mut attrs = serde_json::Map::new();
                attrs.insert("metric".into(), Value::from(name.as_str()));
                attrs.insert("value".into(), Value::from(*value));
                Event {
                    kind: EventKind::MetricThreshold,
                    subject: level.subject.clone(),
                    attrs,
                    ts: level.ts,
                    correlation_id: level.correlation_id,
                }
            })
            .collect()
    }

    /// What the restored countdowns of `id` say the UPS was in, when the
    /// store has no record of it (a store written before records were
    /// kept): a hold on `on_battery` means the engine last knew it on
    /// battery, so a reading on mains is an `on_mains` edge that ends the
    /// hold rather than a first start that confirms it.
    fn implied_level(&self, id: &str) -> Option<UpsLevel> {
        let mut level = UpsLevel::default();
        for (policy_id, request) in self.levels.gated.get(id)? {
            let Some(policy) = self.policies.get(policy_id) else {
                continue;
            };
            if let Some(Trigger::UpsState { equals, .. }) =
                policy.ir.match_.trigger_group.triggers.get(request.trigger)
            {
                level.enter(*equals);
            }
        }
        (level != UpsLevel::default()).then_some(level)
    }

    /// Records `level` as the subject's last known state, in memory and in
    /// the store. A store failure is logged, not returned: the event was
    /// handled, and a stale record only makes the next start publish a
    /// change again, which the idempotency keys and guards absorb.
    fn remember_level(&mut self, id: &str, level: UpsLevel) {
        if self.levels.known.get(id) == Some(&level) {
            return;
        }
        let record = SubjectState {
            id: id.to_string(),
            states: level.names(),
            at: (self.config.clock)(),
        };
        if let Err(e) = self.store.write(&[Write::SetSubjectState(record)]) {
            warn!(subject = id, error = %e, "cannot persist the last known UPS state");
        }
        self.levels.known.insert(id.to_string(), level);
    }

    /// The first reading (or event) of `id` since start: its restored
    /// countdowns that the reading left pending go on the timer queue with
    /// their original deadline; the ones it ended are gone from the trigger
    /// state already, and those whose deadline passed while the agent was
    /// down get an audit record here (the edge's own record covers only
    /// deadlines still ahead).
    fn confirm_subject(&mut self, id: &str) -> Result<(), EngineError> {
        if !self.levels.read.insert(id.to_string()) {
            return Ok(());
        }
        self.release_restart_retries(id)?;
        let Some(gated) = self.levels.gated.remove(id) else {
            return Ok(());
        };
        let now = (self.config.clock)();
        let mut audit = Vec::new();
        for (policy_id, request) in gated {
            let pending = self
                .armed
                .get(&policy_id)
                .is_some_and(|armed| armed.contains(&request));
            if pending {
                self.timers.arm(request);
            } else if request.deadline <= now {
                let mut record =
                    countdown_audit("engine.countdown_cancelled", policy_id, &request, now);
                not_confirmed(&mut record);
                audit.push(record);
            }
        }
        if !audit.is_empty() {
            self.store.write(&audit)?;
        }
        Ok(())
    }
}
