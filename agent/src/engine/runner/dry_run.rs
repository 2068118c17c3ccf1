//! The dry-run of an event (SPEC §6 "Dry-run of an event"): the same
//! decision as a live event, taken on a copy of the trigger state and facts,
//! with each planned action's driver asked for a dry-run instead of an
//! execution. Nothing is persisted; the result is a [`Transcript`].
//!
//! The answer is a timeline, not only the instant decisions: what runs now;
//! each countdown the event would start (`for`, `timer.after`), decided
//! again at its fire time on the copied trigger state as if the state held
//! (the conditions as they read now, targets resolved and guarded on the
//! current snapshot, driver dry-runs); and what the inverse policies (a
//! `ledger` selector naming a forward policy that would act) would restore
//! when the opposite event follows. A policy whose event only started a
//! hold is `engine.countdown_started`, never simply "not matched".
//!
//! # Known limits
//!
//! - A countdown is decided as if nothing ran before it: the idempotency
//!   keys and suppression an earlier entry of the same timeline would
//!   record are not applied to later ones.
//! - An inverse entry lists targets and actions but asks no driver: a
//!   dry-run now would read the targets before the forward changed them.

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use drivers::driver::{Action, Driver};
use drivers::guard::{with_context, CallContext};
use inventory::selector::SelectorMode;
use inventory::{HostInventory, Severity};
use serde_json::json;
use uuid::Uuid;

use super::{
    fresh, restore_targets, DecideStep, Engine, EngineError, FireTime, PlannedAction, Policy,
    PolicyDecision, NOT_MATCHED, SUPPRESSED_WINDOW,
};
use crate::engine::conditions::FactsSnapshot;
use crate::engine::decide::{ConditionMemo, Decided};
use crate::engine::event::Event;
use crate::engine::triggers::{describe, EventView, TimerRequest, TriggerState};

/// `info` (dry-run only): the event started a `for` / `timer.after`
/// countdown; the policy's timeline entry says what happens at its end.
pub const COUNTDOWN_STARTED: &str = "engine.countdown_started";
/// `info` (dry-run only): an inverse policy would restore these targets
/// when the opposite event follows.
pub const WOULD_RESTORE: &str = "engine.would_restore";

/// The result of [`Engine::dry_run_event`]: what would happen, nothing done.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub transcript_id: Uuid,
    pub correlation_id: Uuid,
    /// When the event was decided: the `at` of the `now` entries.
    pub ts: DateTime<Utc>,
    /// The instant decisions, one per shortlisted policy (as a live event).
    pub decisions: Vec<PolicyDecision>,
    /// Now, each countdown's fire, then the inverses (module docs).
    pub timeline: Vec<TimelineEntry>,
    /// Worst severity over the decisions, countdowns and dry-run answers.
    pub severity: Severity,
}

/// When a [`TimelineEntry`] happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineKind {
    /// Decided on the event itself.
    Now,
    /// At the end of a countdown the event starts, if the state holds.
    Countdown,
    /// When the opposite event follows (an inverse policy).
    Inverse,
}

impl TimelineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TimelineKind::Now => "now",
            TimelineKind::Countdown => "countdown",
            TimelineKind::Inverse => "inverse",
        }
    }
}

/// One step of an event dry-run's timeline (SPEC §6 "Dry-run of an event").
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEntry {
    /// When: the event's decision time, a countdown's deadline; `None` for
    /// an inverse (whenever the opposite event comes).
    pub at: Option<DateTime<Utc>>,
    pub kind: TimelineKind,
    /// What leads here: the trigger verdict on the event (for a countdown,
    /// the hold it started), or an inverse's triggers.
    pub trigger: String,
    /// Each condition as it reads now ("ups.charge_pct > 40 is true:
    /// ups1@nas.lan:3493 reports 80"); empty when the triggers would not
    /// fire (conditions are read only then) or for an inverse.
    pub conditions: Vec<String>,
    /// The policy's decision at `at`: code, explain (with the conditions as
    /// they read now), planned actions with resolved targets and driver
    /// dry-runs (none for an inverse), skipped rows.
    pub decision: PolicyDecision,
    /// For an inverse: the forward policy whose effects it restores.
    pub restores: Option<Uuid>,
}

/// An event dry-run decided, its driver dry-runs not yet asked
/// ([`Engine::plan_dry_run`]).
pub struct DryRunPlan {
    correlation_id: Uuid,
    now: DateTime<Utc>,
    decisions: Vec<PolicyDecision>,
    /// The trigger text and condition readings of each decision, in
    /// `decisions` order.
    notes: Vec<(String, Vec<String>)>,
    /// Policies whose decision only started a countdown: no `now` entry.
    counting: HashSet<Uuid>,
    countdowns: Vec<TimelineEntry>,
    inverses: Vec<TimelineEntry>,
    drivers: HashMap<String, Arc<dyn Driver>>,
    /// The hosts of the policies that fired (now or at a countdown's end)
    /// and got past their suppression window, sorted.
    fire_hosts: Vec<String>,
}

impl DryRunPlan {
    /// The hosts whose inventory this plan's decisions read at fire time:
    /// the ones to refresh ([`Engine::fire_time_refresh`]) before the plan
    /// is made again on fresh state ([`Engine::plan_dry_run_on`]).
    pub fn fire_hosts(&self) -> &[String] {
        &self.fire_hosts
    }

    /// Asks each planned action's driver for its dry-run (now and at each
    /// countdown's fire), rolls the worst severity up and lays the
    /// timeline out.
    pub async fn run(mut self) -> Transcript {
        let context = self.correlation_id;
        for decision in self
            .decisions
            .iter_mut()
            .chain(self.countdowns.iter_mut().map(|e| &mut e.decision))
        {
            dry_run_decision(&self.drivers, context, decision).await;
        }
        let severity = self
            .decisions
            .iter()
            .chain(self.countdowns.iter().map(|e| &e.decision))
            .map(decision_severity)
            .max()
            .unwrap_or(Severity::Info);
        let mut timeline: Vec<TimelineEntry> = self
            .decisions
            .iter()
            .zip(self.notes)
            .filter(|(d, _)| !self.counting.contains(&d.policy_id))
            .map(|(d, (trigger, conditions))| TimelineEntry {
                at: Some(self.now),
                kind: TimelineKind::Now,
                trigger,
                conditions,
                decision: d.clone(),
                restores: None,
            })
            .collect();
        timeline.extend(self.countdowns);
        timeline.extend(self.inverses);
        Transcript {
            transcript_id: Uuid::new_v4(),
            correlation_id: self.correlation_id,
            ts: self.now,
            decisions: self.decisions,
            timeline,
            severity,
        }
    }
}

/// Fills in the driver dry-run of each of `decision`'s planned actions.
async fn dry_run_decision(
    drivers: &HashMap<String, Arc<dyn Driver>>,
    correlation_id: Uuid,
    decision: &mut PolicyDecision,
) {
    for planned in &mut decision.planned {
        // The name is on the enclosing `policy_run` span.
        let context = CallContext {
            policy_id: decision.policy_id,
            policy: None,
            correlation_id,
        };
        let answer = match drivers.get(&planned.host) {
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

/// The worst of a decision's own severity and its dry-run answers.
fn decision_severity(d: &PolicyDecision) -> Severity {
    let answers = d.planned.iter().map(|p| match &p.dry_run {
        Some(Ok(list)) => list
            .iter()
            .map(|a| a.severity)
            .max()
            .unwrap_or(Severity::Info),
        _ => Severity::Error,
    });
    answers.fold(d.severity, Ord::max)
}

impl Engine {
    /// The whole decision for `event` with driver dry-runs; trigger state,
    /// facts and store are left untouched (SPEC §6 "Dry-run of an event").
    /// Like a live event (SPEC §6 step 5, "Same truth everywhere"), the
    /// hosts of the policies that fire are refreshed first, once each, and
    /// the decision is taken on what the refreshes returned.
    pub async fn dry_run_event(&self, event: &Event) -> Result<Transcript, EngineError> {
        let plan = self.plan_dry_run(event)?;
        if plan.fire_hosts().is_empty() {
            return Ok(plan.run().await);
        }
        let fire = self.fire_time_refresh(plan.fire_hosts().to_vec()).await;
        Ok(self.plan_dry_run_on(event, &fire)?.run().await)
    }

    /// The decision part of [`Engine::dry_run_event`] on the snapshots as
    /// they are, without the driver calls: a service loop refreshes
    /// [`DryRunPlan::fire_hosts`] and plans again with
    /// [`Engine::plan_dry_run_on`], then runs [`DryRunPlan::run`], each in
    /// a task of its own, so a slow host never holds up live events.
    pub fn plan_dry_run(&self, event: &Event) -> Result<DryRunPlan, EngineError> {
        self.plan_dry_run_on(event, &FireTime::default())
    }

    /// [`Engine::plan_dry_run`] with the fire-time refreshes in `fire`:
    /// a policy whose host is in it resolves and guards on that snapshot.
    pub fn plan_dry_run_on(
        &self,
        event: &Event,
        fire: &FireTime,
    ) -> Result<DryRunPlan, EngineError> {
        let now = (self.config.clock)();
        let mut decisions = Vec::new();
        let mut notes = Vec::new();
        let mut timers = Vec::new();
        // Each policy's trigger state after the event, for its countdowns.
        let mut states: HashMap<Uuid, TriggerState> = HashMap::new();
        let mut counting = HashSet::new();
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
                fresh: None,
                window: None,
            };
            let count = || self.count_matching(id, &step);
            let Some(decided) = self
                .decider
                .decide_one(hit, &mut state, &view, now, &facts, &mut memo, &count)
            else {
                continue;
            };
            let step = DecideStep {
                fresh: fire.get(&self.policies[&id].ir.targets.host_id),
                ..step
            };
            let mut started = Vec::new();
            let Some(mut decision) = self.decide_with(&step, id, &decided, &mut started)? else {
                continue;
            };
            fresh::note_stale(&mut decision, step.fresh);
            if !started.is_empty() && decision.code == NOT_MATCHED {
                decision.code = COUNTDOWN_STARTED.to_string();
                counting.insert(id);
            }
            states.insert(id, state);
            timers.extend(started);
            let stop = !decision.planned.is_empty() && self.policies[&id].ir.stop_on_match;
            notes.push((trigger_text(&decision), readings(&decided)));
            decisions.push(decision);
            if stop {
                break;
            }
        }
        timers.sort();
        let mut countdowns = Vec::new();
        for request in &timers {
            if let Some(entry) = self.countdown_entry(request, &decisions, &states, &facts, fire)? {
                countdowns.push(entry);
            }
        }
        let inverses = self.inverse_entries(
            decisions
                .iter()
                .chain(countdowns.iter().map(|e| &e.decision)),
            fire,
        );
        let mut fire_hosts: Vec<String> = decisions
            .iter()
            .chain(countdowns.iter().map(|e| &e.decision))
            .filter(|d| {
                ![NOT_MATCHED, SUPPRESSED_WINDOW, COUNTDOWN_STARTED].contains(&d.code.as_str())
            })
            .filter_map(|d| self.policies.get(&d.policy_id))
            .map(|p| p.ir.targets.host_id.clone())
            .collect();
        fire_hosts.sort();
        fire_hosts.dedup();
        let drivers = decisions
            .iter()
            .chain(countdowns.iter().map(|e| &e.decision))
            .flat_map(|d| &d.planned)
            .filter_map(|p| {
                self.drivers
                    .get(&p.host)
                    .map(|d| (p.host.clone(), d.clone()))
            })
            .collect();
        Ok(DryRunPlan {
            correlation_id: event.correlation_id,
            now,
            decisions,
            notes,
            counting,
            countdowns,
            inverses,
            drivers,
            fire_hosts,
        })
    }

    /// What `request`'s countdown would do at its deadline if the state
    /// held: its expiry event decided on the policy's copied trigger state,
    /// with the facts as they read now (the event applied) and the current
    /// snapshot. `None` for a policy no longer loaded.
    fn countdown_entry(
        &self,
        request: &TimerRequest,
        decisions: &[PolicyDecision],
        states: &HashMap<Uuid, TriggerState>,
        facts: &FactsSnapshot,
        refreshed: &FireTime,
    ) -> Result<Option<TimelineEntry>, EngineError> {
        let Ok(id) = Uuid::parse_str(&request.policy_id) else {
            return Ok(None);
        };
        if !self.policies.contains_key(&id) {
            return Ok(None);
        }
        // The verdict on the event that started the hold, without its
        // "not fired" headline: what remains says which hold and how long.
        let hold = decisions
            .iter()
            .find(|d| d.policy_id == id)
            .map(trigger_text)
            .unwrap_or_default();
        let hold = hold
            .strip_prefix("not fired\n")
            .unwrap_or(&hold)
            .to_string();
        let at = request.deadline;
        let fire = request.event();
        let view = EventView::new(&fire);
        let mut facts = facts.clone();
        facts.apply(&fire);
        let mut memo = ConditionMemo::default();
        memo.next_event();
        let mut hits = Vec::new();
        self.decider.shortlist(&view, &mut hits);
        let mut state = states.get(&id).cloned().unwrap_or_default();
        let snapshot = OnceCell::new();
        let step = DecideStep {
            view: &view,
            facts: &facts,
            now: at,
            snapshot: &snapshot,
            fresh: None,
            window: None,
        };
        let decided = hits
            .into_iter()
            .find(|hit| self.decider.policy_id(*hit) == Some(id))
            .and_then(|hit| {
                let count = || self.count_matching(id, &step);
                self.decider
                    .decide_one(hit, &mut state, &view, at, &facts, &mut memo, &count)
            });
        let conditions = decided.as_ref().map(readings).unwrap_or_default();
        let step = DecideStep {
            fresh: refreshed.get(&self.policies[&id].ir.targets.host_id),
            ..step
        };
        let decision = match decided {
            Some(decided) => self.decide_with(&step, id, &decided, &mut Vec::new())?,
            None => None,
        };
        let decision = decision.map(|mut d| {
            fresh::note_stale(&mut d, step.fresh);
            d
        });
        let decision = decision.unwrap_or_else(|| PolicyDecision {
            policy_id: id,
            severity: Severity::Info,
            code: NOT_MATCHED.to_string(),
            explain: json!({"trigger": "the countdown's end would not fire the policy"}),
            planned: Vec::new(),
            skipped: Vec::new(),
            run_id: None,
        });
        Ok(Some(TimelineEntry {
            at: Some(at),
            kind: TimelineKind::Countdown,
            trigger: hold,
            conditions,
            decision,
            restores: None,
        }))
    }

    /// The inverse policies of each forward decision that would act: the
    /// loaded policies whose `ledger` selector names the forward policy,
    /// with the targets they would restore ([`restored_targets`]).
    fn inverse_entries<'d>(
        &self,
        forwards: impl Iterator<Item = &'d PolicyDecision>,
        fire: &FireTime,
    ) -> Vec<TimelineEntry> {
        let mut out = Vec::new();
        for forward in forwards.filter(|d| !d.planned.is_empty()) {
            let forward_id = forward.policy_id.to_string();
            for inverse in self.policies.values() {
                let selector = &inverse.ir.targets.selector;
                if selector.mode != SelectorMode::Ledger || selector.value != forward_id {
                    continue;
                }
                let host = &inverse.ir.targets.host_id;
                let snapshot = match fire.get(host) {
                    Some(refresh) => refresh.snapshot.as_deref().cloned(),
                    None => self.snapshots.host(host),
                };
                let targets = self.restored_targets(inverse, forward, snapshot.as_ref());
                let trigger = inverse
                    .ir
                    .match_
                    .trigger_group
                    .triggers
                    .iter()
                    .map(describe)
                    .collect::<Vec<_>>()
                    .join(" or ");
                let planned = if targets.is_empty() {
                    Vec::new()
                } else {
                    inverse
                        .ir
                        .plan
                        .iter()
                        .enumerate()
                        .map(|(index, step)| PlannedAction {
                            action_index: index as u32,
                            action: Action {
                                capability: step.capability.clone(),
                                verb: step.verb.clone(),
                                params: step.params.clone(),
                            },
                            host: inverse.ir.targets.host_id.clone(),
                            targets: targets.clone(),
                            dry_run: None,
                        })
                        .collect()
                };
                out.push(TimelineEntry {
                    at: None,
                    kind: TimelineKind::Inverse,
                    trigger: trigger.clone(),
                    conditions: Vec::new(),
                    decision: PolicyDecision {
                        policy_id: inverse.id,
                        severity: Severity::Info,
                        code: WOULD_RESTORE.to_string(),
                        explain: json!({"trigger": trigger, "targets": targets}),
                        planned,
                        skipped: Vec::new(),
                        run_id: None,
                    },
                    restores: Some(forward.policy_id),
                });
            }
        }
        out
    }
}

impl Engine {
    /// What `inverse` (whose `ledger` selector names `forward`'s policy)
    /// would restore once `forward`'s planned actions ran. The one place an
    /// event dry-run says what an inverse restores: the forward policy's
    /// restore set as the engine resolves it now (SPEC §6 "Outage
    /// lifecycle"), plus the targets the forward actions would add to it.
    fn restored_targets(
        &self,
        inverse: &Policy,
        forward: &PolicyDecision,
        snapshot: Option<&HostInventory>,
    ) -> Vec<String> {
        let targets = &inverse.ir.targets;
        let mut out = restore_targets(
            &self.config.manifests,
            self.restore.of(forward.policy_id),
            &targets.host_id,
            &targets.target_type,
            snapshot,
        )
        .targets;
        let prefix = format!("{}:", targets.target_type);
        for planned in forward.planned.iter().filter(|p| p.host == targets.host_id) {
            for target in &planned.targets {
                if target.starts_with(&prefix)
                    && !out.contains(target)
                    && snapshot.is_none_or(|s| s.contains(target))
                {
                    out.push(target.clone());
                }
            }
        }
        out
    }
}

/// Each condition's reading in a step 3 verdict, as text.
fn readings(decided: &Decided) -> Vec<String> {
    decided
        .conditions
        .iter()
        .flat_map(|c| c.results.iter().map(|r| r.reason.clone()))
        .collect()
}

/// The trigger verdict of a decision's explain, as text.
fn trigger_text(decision: &PolicyDecision) -> String {
    decision.explain["trigger"]
        .as_str()
        .unwrap_or_default()
        .trim_end()
        .to_string()
}
