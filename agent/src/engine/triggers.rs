//! Triggers (SPEC §2 "Trigger semantics", §6 steps 1–3): which policies an
//! event concerns, and whether it makes each one fire.
//!
//! Everything here is pure: time and the time zone are inputs, nothing
//! sleeps or does IO, so the engine owns the clock and the store owns the
//! bytes. [`TriggerIndex`] shortlists policies by hash lookups on the event's
//! kind and discriminator ([`index`]); [`TriggerState`] is one policy's edge,
//! `for` and `timer.after` state machine ([`state`]); countdowns come back as
//! internal timer events ([`timer`]); [`next_fire`] and [`missed_fires`] read
//! `timer.at` schedules on the wall clock, DST included ([`schedule`]).
//!
//! One event, end to end: `index.shortlist(&event)` gives the policies in
//! run order; for each, `state.evaluate(..)` says whether it fired and which
//! countdowns to arm or cancel; the engine persists the state, arms the
//! countdowns (a [`TimerQueue`] will do) and, when one is due, publishes its
//! [`TimerRequest::event`] on the bus like any other event.

pub mod index;
pub mod schedule;
pub mod state;
pub mod timer;

pub use index::{Hit, Interest, PolicyRef, TriggerIndex};
pub use schedule::{missed_fires, next_fire, MissedDecision, DEFAULT_MISSED_GRACE};
pub use state::{describe, Evaluation, EventView, FiredBy, TriggerState};
pub use timer::{timer_at_event, TimerKind, TimerQueue, TimerRequest, TimerTag};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::event::{Event, EventKind, Subject, SubjectKind};
    use crate::spec::{EventPattern, Logic, Op, Repeat, Schedule, Trigger, TriggerGroup, UpsState};
    use chrono::{DateTime, Duration, Utc};
    use expect_test::{expect, Expect};
    use serde_json::{json, Value};
    use uuid::Uuid;

    const P: &str = "00000000-0000-4000-8000-000000000001";
    const UPS1: &str = "ups1@nas.lan:3493";
    const UPS2: &str = "ups2@nas.lan:3493";

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T11:30:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn at(s: i64) -> DateTime<Utc> {
        t0() + Duration::seconds(s)
    }

    fn event(
        kind: EventKind,
        subject: (SubjectKind, &str),
        attrs: Value,
        ts: DateTime<Utc>,
    ) -> Event {
        let Value::Object(attrs) = attrs else {
            unreachable!("attrs are an object")
        };
        Event {
            kind,
            subject: Subject {
                kind: subject.0,
                id: subject.1.into(),
            },
            attrs,
            ts,
            correlation_id: Uuid::new_v4(),
        }
    }

    fn ups(id: &str, state: &str, s: i64) -> Event {
        event(
            EventKind::UpsState,
            (SubjectKind::Ups, id),
            json!({ "state": state }),
            at(s),
        )
    }

    fn metric(id: &str, name: &str, value: f64, s: i64) -> Event {
        event(
            EventKind::MetricThreshold,
            (SubjectKind::Ups, id),
            json!({ "metric": name, "value": value }),
            at(s),
        )
    }

    fn webhook(name: &str, s: i64) -> Event {
        event(
            EventKind::WebhookCustom,
            (SubjectKind::Integration, "webhook"),
            json!({ "name": name, "body": {} }),
            at(s),
        )
    }

    fn on_state(equals: UpsState, for_s: Option<u64>, filter: Option<&str>) -> Trigger {
        Trigger::UpsState {
            equals,
            for_s,
            ups: filter.map(String::from),
        }
    }

    fn load_above(value: f64, for_s: Option<u64>) -> Trigger {
        Trigger::MetricThreshold {
            metric: "load".into(),
            op: Op::Gt,
            value,
            for_s,
            ups: None,
        }
    }

    fn group(logic: Logic, triggers: Vec<Trigger>) -> TriggerGroup {
        TriggerGroup { logic, triggers }
    }

    /// Drives one policy through a script of events, delivering its
    /// countdowns through a [`TimerQueue`] at their deadlines, and renders
    /// one line per evaluation: the time, the event, and the verdict.
    struct Run {
        group: TriggerGroup,
        state: TriggerState,
        queue: TimerQueue,
        facts: std::collections::HashMap<String, crate::engine::conditions::UpsFacts>,
        log: String,
    }

    impl Run {
        fn new(group: TriggerGroup) -> Run {
            Run {
                group,
                state: TriggerState::default(),
                queue: TimerQueue::default(),
                facts: Default::default(),
                log: String::new(),
            }
        }

        /// Delivers due countdowns up to the event's time, then the event.
        fn feed(&mut self, event: Event) -> &mut Run {
            self.advance_to(event.ts);
            self.deliver(event.clone(), event.ts);
            self
        }

        fn advance_to(&mut self, now: DateTime<Utc>) -> &mut Run {
            while let Some(deadline) = self.queue.next_deadline().filter(|d| *d <= now) {
                for request in self.queue.pop_due(deadline) {
                    self.deliver(request.event(), deadline);
                }
            }
            self
        }

        fn deliver(&mut self, event: Event, now: DateTime<Utc>) {
            if let Some(state) = event.ups_state() {
                let id = &event.subject.id;
                self.facts
                    .entry(id.clone())
                    .or_insert_with(|| crate::engine::conditions::UpsFacts::new(id))
                    .enter(state);
            }
            let facts = &self.facts;
            let eval = self
                .state
                .evaluate(P, &self.group, &event, now, |id: &str, state| {
                    facts
                        .get(id)
                        .or_else(|| {
                            facts
                                .iter()
                                .find(|(k, _)| crate::engine::event::ups_matches(id, k))
                                .map(|(_, v)| v)
                        })
                        .and_then(|u| u.is_in(state))
                });
            self.queue.apply(&eval);
            let what = match event.kind {
                EventKind::UpsState => format!(
                    "{} {}",
                    event.subject.id,
                    event.attrs["state"].as_str().unwrap_or("?")
                ),
                EventKind::MetricThreshold => format!(
                    "{} {}={}",
                    event.subject.id, event.attrs["metric"], event.attrs["value"]
                ),
                EventKind::WebhookCustom => {
                    format!("webhook {}", event.attrs["name"].as_str().unwrap_or("?"))
                }
                _ => format!(
                    "{} {}",
                    event.kind.as_str(),
                    event.attrs["timer"].as_str().unwrap_or("?")
                ),
            };
            let verdict = match eval.fired {
                Some(f) => format!("FIRED by {}", f.trigger),
                None => "-".into(),
            };
            let mut line = format!("+{}s {what}: {verdict}", (now - t0()).num_seconds());
            if !eval.timers().is_empty() {
                line += &format!(" [armed {}]", eval.timers().len());
            }
            if !eval.cancelled().is_empty() {
                line += &format!(" [cancelled {}]", eval.cancelled().len());
            }
            self.log += &line;
            self.log += "\n";
        }

        fn check(&self, expect: Expect) {
            expect.assert_eq(&self.log);
        }
    }

    #[test]
    fn ups_state_fires_on_entering_and_not_on_staying() {
        let mut run = Run::new(group(
            Logic::Any,
            vec![on_state(UpsState::OnBattery, None, None)],
        ));
        run.feed(ups(UPS1, "on_battery", 0))
            .feed(ups(UPS1, "on_battery", 5))
            .feed(ups(UPS1, "on_mains", 10))
            .feed(ups(UPS1, "on_battery", 20))
            .feed(ups(UPS2, "on_battery", 21));
        run.check(expect![[r#"
            +0s ups1@nas.lan:3493 on_battery: FIRED by 0
            +5s ups1@nas.lan:3493 on_battery: -
            +10s ups1@nas.lan:3493 on_mains: -
            +20s ups1@nas.lan:3493 on_battery: FIRED by 0
            +21s ups2@nas.lan:3493 on_battery: FIRED by 0
        "#]]);
    }

    #[test]
    fn a_three_second_battery_blip_does_not_fire_a_policy_held_for_120s() {
        let mut run = Run::new(group(
            Logic::Any,
            vec![on_state(UpsState::OnBattery, Some(120), None)],
        ));
        run.feed(ups(UPS1, "on_battery", 0))
            .feed(ups(UPS1, "on_mains", 3))
            .advance_to(at(600));
        run.check(expect![[r#"
            +0s ups1@nas.lan:3493 on_battery: - [armed 1]
            +3s ups1@nas.lan:3493 on_mains: - [cancelled 1]
        "#]]);
    }

    #[test]
    fn a_state_held_for_its_for_fires_when_the_countdown_runs_out() {
        let mut run = Run::new(group(
            Logic::Any,
            vec![on_state(UpsState::OnBattery, Some(120), None)],
        ));
        run.feed(ups(UPS1, "on_battery", 0))
            .feed(ups(UPS1, "on_mains", 3))
            .feed(ups(UPS1, "on_battery", 10))
            .advance_to(at(600));
        run.check(expect![[r#"
            +0s ups1@nas.lan:3493 on_battery: - [armed 1]
            +3s ups1@nas.lan:3493 on_mains: - [cancelled 1]
            +10s ups1@nas.lan:3493 on_battery: - [armed 1]
            +130s timer.after for: FIRED by 0
        "#]]);
    }

    #[test]
    fn low_battery_or_lost_contact_on_top_of_on_battery_keeps_its_hold_counting() {
        // NUT reports `OB` then `OB LB`; the source then loses the UPS
        // (`comm_lost`, and the fail-safe `low_battery` again). The UPS
        // never left battery: the 120 s hold runs out and fires. Only mains
        // return would have cancelled it.
        let mut run = Run::new(group(
            Logic::Any,
            vec![on_state(UpsState::OnBattery, Some(120), None)],
        ));
        run.feed(ups(UPS1, "on_battery", 0))
            .feed(ups(UPS1, "low_battery", 30))
            .feed(ups(UPS1, "comm_lost", 60))
            .advance_to(at(600));
        run.check(expect![[r#"
            +0s ups1@nas.lan:3493 on_battery: - [armed 1]
            +30s ups1@nas.lan:3493 low_battery: -
            +60s ups1@nas.lan:3493 comm_lost: -
            +120s timer.after for: FIRED by 0
        "#]]);
    }

    #[test]
    fn a_condition_state_rearms_on_a_power_change_not_on_another_condition() {
        let mut run = Run::new(group(
            Logic::Any,
            vec![on_state(UpsState::LowBattery, None, None)],
        ));
        run.feed(ups(UPS1, "on_battery", 0))
            .feed(ups(UPS1, "low_battery", 10))
            .feed(ups(UPS1, "overload", 11))
            .feed(ups(UPS1, "on_mains", 20))
            .feed(ups(UPS1, "on_battery", 30))
            .feed(ups(UPS1, "low_battery", 40))
            .advance_to(at(600));
        run.check(expect![[r#"
            +0s ups1@nas.lan:3493 on_battery: -
            +10s ups1@nas.lan:3493 low_battery: FIRED by 0
            +11s ups1@nas.lan:3493 overload: -
            +20s ups1@nas.lan:3493 on_mains: -
            +30s ups1@nas.lan:3493 on_battery: -
            +40s ups1@nas.lan:3493 low_battery: FIRED by 0
        "#]]);
    }

    #[test]
    fn a_stale_countdown_event_is_ignored_even_if_it_was_never_cancelled() {
        let g = group(
            Logic::Any,
            vec![on_state(UpsState::OnBattery, Some(120), None)],
        );
        let mut state = TriggerState::default();
        let none = |_: &str, _| None;
        let first = state.evaluate(P, &g, &ups(UPS1, "on_battery", 0), at(0), none);
        state.evaluate(P, &g, &ups(UPS1, "on_mains", 3), at(3), none);
        state.evaluate(P, &g, &ups(UPS1, "on_battery", 10), at(10), none);
        let stale = state.evaluate(P, &g, &first.timers()[0].event(), at(120), none);
        assert_eq!(stale.fired, None);
        expect![[r#"
            not fired
            trigger 0 (ups.state = on_battery for 120s): stale timer for ups1@nas.lan:3493 ignored: the hold was broken or re-armed
        "#]]
        .assert_eq(&stale.explain(&g, UPS1));
    }

    #[test]
    fn metric_threshold_fires_on_the_edge_and_rearms_once_false() {
        let mut run = Run::new(group(Logic::Any, vec![load_above(60.0, None)]));
        run.feed(metric(UPS1, "load", 50.0, 0))
            .feed(metric(UPS1, "load", 70.0, 1))
            .feed(metric(UPS1, "load", 80.0, 2))
            .feed(metric(UPS2, "load", 65.0, 3))
            .feed(metric(UPS1, "load", 40.0, 4))
            .feed(metric(UPS1, "load", 61.0, 5))
            .feed(metric(UPS1, "charge_pct", 99.0, 6));
        run.check(expect![[r#"
            +0s ups1@nas.lan:3493 "load"=50.0: -
            +1s ups1@nas.lan:3493 "load"=70.0: FIRED by 0
            +2s ups1@nas.lan:3493 "load"=80.0: -
            +3s ups2@nas.lan:3493 "load"=65.0: FIRED by 0
            +4s ups1@nas.lan:3493 "load"=40.0: -
            +5s ups1@nas.lan:3493 "load"=61.0: FIRED by 0
            +6s ups1@nas.lan:3493 "charge_pct"=99.0: -
        "#]]);
    }

    #[test]
    fn metric_threshold_with_for_fires_only_after_holding_and_is_cancelled_by_a_false_reading() {
        let mut run = Run::new(group(Logic::Any, vec![load_above(60.0, Some(120))]));
        run.feed(metric(UPS1, "load", 70.0, 0))
            .feed(metric(UPS1, "load", 50.0, 60))
            .feed(metric(UPS1, "load", 75.0, 100))
            .feed(metric(UPS1, "load", 90.0, 150))
            .advance_to(at(1000))
            .feed(metric(UPS1, "load", 95.0, 1001));
        run.check(expect![[r#"
            +0s ups1@nas.lan:3493 "load"=70.0: - [armed 1]
            +60s ups1@nas.lan:3493 "load"=50.0: - [cancelled 1]
            +100s ups1@nas.lan:3493 "load"=75.0: - [armed 1]
            +150s ups1@nas.lan:3493 "load"=90.0: -
            +220s timer.after for: FIRED by 0
            +1001s ups1@nas.lan:3493 "load"=95.0: -
        "#]]);
    }

    #[test]
    fn all_with_two_stateful_triggers_fires_when_the_second_becomes_true() {
        let mut run = Run::new(group(
            Logic::All,
            vec![
                on_state(UpsState::OnBattery, None, None),
                load_above(60.0, Some(30)),
            ],
        ));
        run.feed(metric(UPS1, "load", 70.0, 0))
            .feed(ups(UPS1, "on_battery", 10))
            .feed(ups(UPS1, "on_mains", 40))
            .feed(ups(UPS1, "on_battery", 50))
            .feed(metric(UPS1, "load", 20.0, 60))
            .feed(metric(UPS1, "load", 80.0, 70))
            .advance_to(at(200));
        run.check(expect![[r#"
            +0s ups1@nas.lan:3493 "load"=70.0: - [armed 1]
            +10s ups1@nas.lan:3493 on_battery: -
            +30s timer.after for: FIRED by 1
            +40s ups1@nas.lan:3493 on_mains: -
            +50s ups1@nas.lan:3493 on_battery: FIRED by 0
            +60s ups1@nas.lan:3493 "load"=20.0: -
            +70s ups1@nas.lan:3493 "load"=80.0: - [armed 1]
            +100s timer.after for: FIRED by 1
        "#]]);
    }

    #[test]
    fn all_explains_which_trigger_does_not_hold() {
        let g = group(
            Logic::All,
            vec![
                on_state(UpsState::OnBattery, None, None),
                load_above(60.0, Some(30)),
            ],
        );
        let mut state = TriggerState::default();
        let eval = state.evaluate(P, &g, &ups(UPS1, "on_battery", 0), at(0), |_, _| None);
        assert_eq!(eval.fired, None);
        expect![[r#"
            not fired
            trigger 0 (ups.state = on_battery): ups1@nas.lan:3493 entered on_battery
            ALL: trigger 0 became true but trigger 1 (metric.threshold load > 60 for 30s) does not hold now
        "#]]
        .assert_eq(&eval.explain(&g, UPS1));
    }

    #[test]
    fn all_with_one_instantaneous_trigger_fires_on_it_only_while_the_other_holds() {
        let mut run = Run::new(group(
            Logic::All,
            vec![
                on_state(UpsState::OnBattery, None, Some("ups1")),
                Trigger::WebhookCustom {
                    name: "deploy".into(),
                },
            ],
        ));
        run.feed(webhook("deploy", 0))
            .feed(ups(UPS1, "on_battery", 10))
            .feed(webhook("deploy", 20))
            .feed(webhook("other", 25))
            .feed(ups(UPS1, "on_mains", 30))
            .feed(webhook("deploy", 40));
        run.check(expect![[r#"
            +0s webhook deploy: -
            +10s ups1@nas.lan:3493 on_battery: -
            +20s webhook deploy: FIRED by 1
            +25s webhook other: -
            +30s ups1@nas.lan:3493 on_mains: -
            +40s webhook deploy: -
        "#]]);
    }

    #[test]
    fn all_sees_a_ups_already_in_the_state_through_the_facts() {
        let g = group(
            Logic::All,
            vec![
                on_state(UpsState::OnBattery, None, Some("ups1")),
                Trigger::WebhookCustom {
                    name: "deploy".into(),
                },
            ],
        );
        let mut state = TriggerState::default();
        let eval = state.evaluate(P, &g, &webhook("deploy", 0), at(0), |u, s| {
            (u == "ups1").then_some(s == UpsState::OnBattery)
        });
        assert_eq!(eval.fired, Some(FiredBy { trigger: 1 }));
    }

    #[test]
    fn timer_after_fires_after_its_delay_since_the_event() {
        let mut run = Run::new(group(
            Logic::Any,
            vec![Trigger::TimerAfter {
                after_s: 600,
                since_event: EventPattern::UpsState {
                    equals: UpsState::OnMains,
                    ups: None,
                },
            }],
        ));
        run.feed(ups(UPS1, "on_mains", 0))
            .feed(ups(UPS1, "on_mains", 100))
            .advance_to(at(700));
        run.check(expect![[r#"
            +0s ups1@nas.lan:3493 on_mains: - [armed 1]
            +100s ups1@nas.lan:3493 on_mains: -
            +600s timer.after after: FIRED by 0
        "#]]);
    }

    #[test]
    fn timer_after_is_cancelled_when_the_opposite_event_comes_first() {
        let mut run = Run::new(group(
            Logic::Any,
            vec![Trigger::TimerAfter {
                after_s: 600,
                since_event: EventPattern::UpsState {
                    equals: UpsState::OnMains,
                    ups: None,
                },
            }],
        ));
        run.feed(ups(UPS1, "on_mains", 0))
            .feed(ups(UPS1, "on_battery", 300))
            .feed(ups(UPS1, "on_mains", 400))
            .advance_to(at(2000));
        run.check(expect![[r#"
            +0s ups1@nas.lan:3493 on_mains: - [armed 1]
            +300s ups1@nas.lan:3493 on_battery: - [cancelled 1]
            +400s ups1@nas.lan:3493 on_mains: - [armed 1]
            +1000s timer.after after: FIRED by 0
        "#]]);
    }

    #[test]
    fn timer_after_a_webhook_counts_from_the_latest_post() {
        let mut run = Run::new(group(
            Logic::Any,
            vec![Trigger::TimerAfter {
                after_s: 60,
                since_event: EventPattern::WebhookCustom {
                    name: "deploy".into(),
                },
            }],
        ));
        run.feed(webhook("deploy", 0))
            .feed(webhook("deploy", 30))
            .advance_to(at(500));
        run.check(expect![[r#"
            +0s webhook deploy: - [armed 1]
            +30s webhook deploy: - [armed 1] [cancelled 1]
            +90s timer.after after: FIRED by 0
        "#]]);
    }

    #[test]
    fn webhook_custom_fires_only_for_its_own_name() {
        let mut run = Run::new(group(
            Logic::Any,
            vec![Trigger::WebhookCustom {
                name: "deploy".into(),
            }],
        ));
        run.feed(webhook("deploy", 0))
            .feed(webhook("rollback", 1))
            .feed(webhook("deploy", 2));
        run.check(expect![[r#"
            +0s webhook deploy: FIRED by 0
            +1s webhook rollback: -
            +2s webhook deploy: FIRED by 0
        "#]]);
    }

    #[test]
    fn timer_at_fires_for_its_own_timer_event_only() {
        let g = group(
            Logic::Any,
            vec![
                Trigger::WebhookCustom {
                    name: "deploy".into(),
                },
                Trigger::TimerAt {
                    schedule: Schedule::Repeat {
                        repeat: Repeat::Daily,
                        at: "01:00".into(),
                        days: vec![],
                    },
                },
            ],
        );
        let mut state = TriggerState::default();
        let eval = state.evaluate(P, &g, &timer_at_event(P, 1, at(0)), at(0), |_, _| None);
        assert_eq!(eval.fired, Some(FiredBy { trigger: 1 }));
        expect![[r#"
            fired by trigger 1 (timer.at daily at 01:00)
            trigger 1 (timer.at daily at 01:00): scheduled fire 2026-11-22T11:30:00Z of daily at 01:00
        "#]]
        .assert_eq(&eval.explain(&g, "timer"));
        let other = state.evaluate(
            P,
            &g,
            &timer_at_event("another-policy", 1, at(0)),
            at(0),
            |_, _| None,
        );
        assert_eq!(other.fired, None);
    }

    #[test]
    fn a_ups_filter_matches_by_name_or_full_id() {
        for filter in ["ups1", UPS1] {
            let mut run = Run::new(group(
                Logic::Any,
                vec![on_state(UpsState::OnBattery, None, Some(filter))],
            ));
            run.feed(ups(UPS2, "on_battery", 0))
                .feed(ups(UPS1, "on_battery", 1));
            run.check(expect![[r#"
                +0s ups2@nas.lan:3493 on_battery: -
                +1s ups1@nas.lan:3493 on_battery: FIRED by 0
            "#]]);
        }
    }

    #[test]
    fn trigger_state_survives_a_json_round_trip_and_rearms_its_countdowns() {
        let g = group(
            Logic::Any,
            vec![on_state(UpsState::OnBattery, Some(120), None)],
        );
        let mut state = TriggerState::default();
        let eval = state.evaluate(P, &g, &ups(UPS1, "on_battery", 0), at(0), |_, _| None);
        let restored = TriggerState::from_json(&state.to_json()).expect("state parses back");
        assert_eq!(restored, state);
        assert_eq!(restored.pending_timers(P, &g), eval.timers());
        let mut restored = restored;
        let fired = restored.evaluate(P, &g, &eval.timers()[0].event(), at(120), |_, _| None);
        assert_eq!(fired.fired, Some(FiredBy { trigger: 0 }));
    }

    // ---- the index ----

    fn policy_id(n: usize) -> String {
        format!("00000000-0000-4000-8000-{n:012}")
    }

    #[test]
    fn shortlist_uses_the_index_not_a_scan() {
        // 10 000 policies over 200 keys: 100 webhook names, 100 metric names.
        let groups: Vec<(String, TriggerGroup)> = (0..10_000)
            .map(|n| {
                let key = n % 200;
                let trigger = if key < 100 {
                    Trigger::WebhookCustom {
                        name: format!("hook{key}"),
                    }
                } else {
                    Trigger::MetricThreshold {
                        metric: format!("m{key}"),
                        op: Op::Gt,
                        value: 1.0,
                        for_s: None,
                        ups: None,
                    }
                };
                (policy_id(n), group(Logic::Any, vec![trigger]))
            })
            .collect();
        let index = TriggerIndex::build(groups.iter().map(|(id, g)| (id.as_str(), 0, g)));
        assert_eq!(index.len(), 10_000);
        assert_eq!(index.shortlist(&webhook("hook7", 0)).len(), 50);
        assert_eq!(index.shortlist(&metric(UPS1, "m150", 2.0, 0)).len(), 50);
        assert!(index.shortlist(&webhook("nobody", 0)).is_empty());
        assert!(index.shortlist(&ups(UPS1, "on_battery", 0)).is_empty());
    }

    #[test]
    fn shortlist_keys_metric_events_by_name_and_ups_filter() {
        let load_ups1 = group(
            Logic::Any,
            vec![Trigger::MetricThreshold {
                metric: "load".into(),
                op: Op::Gt,
                value: 60.0,
                for_s: None,
                ups: Some("ups1".into()),
            }],
        );
        let load_any = group(Logic::Any, vec![load_above(60.0, None)]);
        let (a, b) = (policy_id(1), policy_id(2));
        let index = TriggerIndex::build([(a.as_str(), 0, &load_ups1), (b.as_str(), 0, &load_any)]);
        assert_eq!(index.shortlist(&metric(UPS1, "load", 70.0, 0)).len(), 2);
        assert_eq!(index.shortlist(&metric(UPS2, "load", 70.0, 0)).len(), 1);
        assert!(index
            .shortlist(&metric(UPS1, "charge_pct", 70.0, 0))
            .is_empty());
    }

    #[test]
    fn shortlist_orders_by_priority_then_policy_id() {
        let g = group(
            Logic::Any,
            vec![Trigger::WebhookCustom {
                name: "deploy".into(),
            }],
        );
        let entries = [
            (policy_id(3), 0),
            (policy_id(1), 5),
            (policy_id(2), 0),
            (policy_id(9), -1),
            (policy_id(4), 5),
        ];
        let index = TriggerIndex::build(entries.iter().map(|(id, p)| (id.as_str(), *p, &g)));
        let order: Vec<(i64, String)> = index
            .shortlist(&webhook("deploy", 0))
            .into_iter()
            .map(|r| (r.priority, r.policy_id.to_string()))
            .collect();
        assert_eq!(
            order,
            vec![
                (-1, policy_id(9)),
                (0, policy_id(2)),
                (0, policy_id(3)),
                (5, policy_id(1)),
                (5, policy_id(4)),
            ]
        );
    }

    fn check_shortlist(index: &TriggerIndex, event: &Event, expect: Expect) {
        let lines: Vec<String> = index
            .shortlist(event)
            .into_iter()
            .map(|r| format!("{} {:?}", r.policy_id, r.interest))
            .collect();
        expect.assert_eq(&(lines.join("\n") + "\n"));
    }

    #[test]
    fn shortlist_keys_ups_events_by_state_and_ups_filter() {
        let battery_any = group(
            Logic::Any,
            vec![on_state(UpsState::OnBattery, Some(60), None)],
        );
        let battery_ups1 = group(
            Logic::Any,
            vec![on_state(UpsState::OnBattery, None, Some("ups1"))],
        );
        let battery_full = group(
            Logic::Any,
            vec![on_state(UpsState::OnBattery, None, Some(UPS2))],
        );
        let after_mains = group(
            Logic::Any,
            vec![Trigger::TimerAfter {
                after_s: 60,
                since_event: EventPattern::UpsState {
                    equals: UpsState::OnMains,
                    ups: None,
                },
            }],
        );
        let (a, b, c, d) = (policy_id(1), policy_id(2), policy_id(3), policy_id(4));
        let index = TriggerIndex::build([
            (a.as_str(), 0, &battery_any),
            (b.as_str(), 0, &battery_ups1),
            (c.as_str(), 0, &battery_full),
            (d.as_str(), 0, &after_mains),
        ]);
        check_shortlist(
            &index,
            &ups(UPS1, "on_battery", 0),
            expect![[r#"
                00000000-0000-4000-8000-000000000001 Fire
                00000000-0000-4000-8000-000000000002 Fire
                00000000-0000-4000-8000-000000000004 Leave
            "#]],
        );
        check_shortlist(
            &index,
            &ups(UPS2, "on_mains", 0),
            expect![[r#"
                00000000-0000-4000-8000-000000000001 Leave
                00000000-0000-4000-8000-000000000003 Leave
                00000000-0000-4000-8000-000000000004 Observe
            "#]],
        );
        let timer = TimerRequest {
            deadline: at(60),
            policy_id: d.clone(),
            trigger: 0,
            kind: TimerKind::After,
            subject_kind: SubjectKind::Ups,
            subject_id: UPS1.into(),
            correlation_id: Uuid::nil(),
        };
        check_shortlist(
            &index,
            &timer.event(),
            expect![[r#"
                00000000-0000-4000-8000-000000000004 Fire
            "#]],
        );
    }

    #[test]
    fn a_timer_event_round_trips_its_tag() {
        let request = TimerRequest {
            deadline: at(0) + Duration::milliseconds(1),
            policy_id: P.into(),
            trigger: 2,
            kind: TimerKind::ForHold,
            subject_kind: SubjectKind::Ups,
            subject_id: UPS1.into(),
            correlation_id: Uuid::nil(),
        };
        let event = request.event();
        let tag = TimerTag::from_event(&event).expect("a timer event has a tag");
        assert_eq!(
            tag,
            TimerTag {
                policy_id: P,
                trigger: 2,
                kind: Some(TimerKind::ForHold),
                deadline: Some(request.deadline)
            }
        );
        assert_eq!(TimerTag::from_event(&ups(UPS1, "on_battery", 0)), None);
    }

    // ---- properties ----

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// For random UPS event streams, a policy with `for: N` fires
            /// only after the UPS stayed in the state for N seconds without
            /// interruption (low battery on top does not interrupt it), and
            /// does fire once it has.
            #[test]
            fn a_policy_with_for_never_fires_before_n_seconds_of_continuous_state(
                hold_s in 1u64..200,
                steps in proptest::collection::vec((0i64..150, 0usize..3, 0usize..2), 1..40),
            ) {
                let states = ["on_battery", "on_mains", "low_battery"];
                let g = group(Logic::Any, vec![on_state(UpsState::OnBattery, Some(hold_s), None)]);
                let mut state = TriggerState::default();
                let mut queue = TimerQueue::default();
                // Per UPS: the power source it is on and since when (the
                // real history), and whether it reported low battery since.
                let mut truth: std::collections::HashMap<&str, (&str, DateTime<Utc>)> = Default::default();
                let mut low: std::collections::HashSet<&str> = Default::default();
                let mut now = at(0);
                let mut fires = 0usize;
                let check = |event: &Event, now: DateTime<Utc>, state: &mut TriggerState, queue: &mut TimerQueue,
                             truth: &std::collections::HashMap<&str, (&str, DateTime<Utc>)>, fires: &mut usize| {
                    let eval = state.evaluate(P, &g, event, now, |_, _| None);
                    queue.apply(&eval);
                    if eval.fired.is_some() {
                        *fires += 1;
                        let (current, since) = truth.get(event.subject.id.as_str()).copied().expect("a fired UPS has history");
                        prop_assert_eq!(current, "on_battery");
                        prop_assert!(now - since >= Duration::seconds(hold_s as i64),
                            "fired after {}s of {}s", (now - since).num_seconds(), hold_s);
                    }
                    Ok(())
                };
                for (gap, state_ix, ups_ix) in steps {
                    let next = now + Duration::seconds(gap);
                    while let Some(deadline) = queue.next_deadline().filter(|d| *d <= next) {
                        for request in queue.pop_due(deadline) {
                            check(&request.event(), deadline, &mut state, &mut queue, &truth, &mut fires)?;
                        }
                    }
                    now = next;
                    let id = [UPS1, UPS2][ups_ix];
                    let name = states[state_ix];
                    // Sources publish changes only. Low battery comes on
                    // top of the power source (NUT's `OB LB`): the UPS
                    // stays on battery, and the hold keeps counting.
                    if name == "low_battery" {
                        if !low.insert(id) {
                            continue;
                        }
                    } else {
                        if truth.get(id).is_some_and(|(s, _)| *s == name) {
                            continue;
                        }
                        truth.insert(id, (name, now));
                        low.remove(id);
                    }
                    check(&ups(id, name, 0), now, &mut state, &mut queue, &truth, &mut fires)?;
                }
                // And it is live: a UPS that ends on battery fires once its hold runs out.
                while let Some(deadline) = queue.next_deadline() {
                    for request in queue.pop_due(deadline) {
                        check(&request.event(), deadline, &mut state, &mut queue, &truth, &mut fires)?;
                    }
                }
                if truth.values().any(|(s, _)| *s == "on_battery") {
                    prop_assert!(fires > 0, "a UPS stayed on battery but the policy never fired");
                }
            }
        }
    }
}
