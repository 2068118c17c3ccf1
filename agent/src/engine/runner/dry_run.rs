//! The dry-run of an event (SPEC §6 "Dry-run of an event"): the same
//! decision as a live event, taken on a copy of the trigger state and facts,
//! with each planned action's driver asked for a dry-run instead of an
//! execution. Nothing is persisted; the result is a [`Transcript`].

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::Arc;

use drivers::driver::Driver;
use drivers::guard::{with_context, CallContext};
use inventory::Severity;
use uuid::Uuid;

use super::{DecideStep, Engine, EngineError, PolicyDecision};
use crate::engine::decide::ConditionMemo;
use crate::engine::event::Event;
use crate::engine::triggers::EventView;

/// The result of [`Engine::dry_run_event`]: what would happen, nothing done.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub transcript_id: Uuid,
    pub correlation_id: Uuid,
    pub decisions: Vec<PolicyDecision>,
    /// Worst severity over the decisions and dry-run answers.
    pub severity: Severity,
}

/// An event dry-run decided, its driver dry-runs not yet asked
/// ([`Engine::plan_dry_run`]).
pub struct DryRunPlan {
    correlation_id: Uuid,
    decisions: Vec<PolicyDecision>,
    drivers: HashMap<String, Arc<dyn Driver>>,
}

impl DryRunPlan {
    /// Asks each planned action's driver for its dry-run and rolls the
    /// worst severity up into the transcript.
    pub async fn run(mut self) -> Transcript {
        for decision in &mut self.decisions {
            for planned in &mut decision.planned {
                let context = CallContext {
                    policy_id: decision.policy_id,
                    correlation_id: self.correlation_id,
                };
                let answer = match self.drivers.get(&planned.host) {
                    Some(driver) => {
                        with_context(context, driver.dry_run(&planned.action, &planned.targets))
                            .await
                            .map_err(|e| e.to_string())
                    }
                    None => Err(format!("no driver for host {}", planned.host)),
                };
                planned.dry_run = Some(answer);
            }
        }
        let severity = self
            .decisions
            .iter()
            .map(|d| {
                let answers = d.planned.iter().map(|p| match &p.dry_run {
                    Some(Ok(list)) => list
                        .iter()
                        .map(|a| a.severity)
                        .max()
                        .unwrap_or(Severity::Info),
                    _ => Severity::Error,
                });
                answers.fold(d.severity, Ord::max)
            })
            .max()
            .unwrap_or(Severity::Info);
        Transcript {
            transcript_id: Uuid::new_v4(),
            correlation_id: self.correlation_id,
            decisions: self.decisions,
            severity,
        }
    }
}

impl Engine {
    /// The whole decision for `event` with driver dry-runs; trigger state,
    /// facts and store are left untouched (SPEC §6 "Dry-run of an event").
    pub async fn dry_run_event(&self, event: &Event) -> Result<Transcript, EngineError> {
        Ok(self.plan_dry_run(event)?.run().await)
    }

    /// The decision part of [`Engine::dry_run_event`], without the driver
    /// calls: a service loop runs [`DryRunPlan::run`] in a task of its own,
    /// so a slow host's dry-run never holds up live events.
    pub fn plan_dry_run(&self, event: &Event) -> Result<DryRunPlan, EngineError> {
        let now = (self.config.clock)();
        let mut decisions = Vec::new();
        let mut timers = Vec::new();
        let mut facts = self.facts.clone();
        facts.apply(event);
        let view = EventView::new(event);
        let mut memo = ConditionMemo::default();
        memo.next_event();
        let mut hits = Vec::new();
        self.decider.shortlist(&view, &mut hits);
        for hit in hits {
            let Some(id) = self.decider.policy_id(hit) else {
                continue;
            };
            let mut state = self.decider.hit_state(hit).cloned().unwrap_or_default();
            let snapshot = OnceCell::new();
            let step = DecideStep {
                view: &view,
                facts: &facts,
                now,
                snapshot: &snapshot,
            };
            let count = || self.count_matching(id, &step);
            let Some(decided) = self
                .decider
                .decide_one(hit, &mut state, &view, now, &facts, &mut memo, &count)
            else {
                continue;
            };
            let Some(decision) = self.decide_with(&step, id, &decided, &mut timers)? else {
                continue;
            };
            let stop = !decision.planned.is_empty() && self.policies[&id].ir.stop_on_match;
            decisions.push(decision);
            if stop {
                break;
            }
        }
        let drivers = decisions
            .iter()
            .flat_map(|d| &d.planned)
            .filter_map(|p| {
                self.drivers
                    .get(&p.host)
                    .map(|d| (p.host.clone(), d.clone()))
            })
            .collect();
        Ok(DryRunPlan {
            correlation_id: event.correlation_id,
            decisions,
            drivers,
        })
    }
}
