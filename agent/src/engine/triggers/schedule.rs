//! `timer.at` schedules on the wall clock of the agent's time zone: when the
//! next fire is, and what to do about fires missed while the agent was down.
//!
//! Both schedule forms are read as wall-clock times: a schedule names local
//! times, and every local time it names fires exactly once. So across a DST
//! change a nonexistent local time (02:30 on the spring-forward night in
//! Europe/Berlin) fires at the first valid instant after it (03:00 CEST), and
//! an ambiguous one (02:30 on the fall-back night) fires once, at its first
//! occurrence. A cron expression is expanded by the `cron` crate over naive
//! local time and then mapped the same way, which also means an interval cron
//! does not repeat the hour that the fall-back night repeats.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Datelike, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::spec::schedule::parse_time_of_day;
use crate::spec::{Schedule, Weekday};

/// The default grace for a `timer.at` missed while the agent was down (SPEC §6).
pub const DEFAULT_MISSED_GRACE: Duration = Duration::from_secs(5 * 60);

/// At most this many missed fires are listed in a [`MissedDecision`]; a long
/// outage under a per-second cron must not produce an unbounded record.
pub const MISSED_LIST_LIMIT: usize = 1000;

/// What to do after a restart about the fires of one schedule that fell in
/// the time the agent was down.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MissedDecision {
    /// Fire the policy once now: the latest missed fire is younger than the grace.
    pub fire_once: bool,
    /// The scheduled instant the single late fire stands for, when `fire_once`.
    pub due: Option<DateTime<Utc>>,
    /// Every other missed fire, oldest first, to be recorded as missed.
    pub missed: Vec<DateTime<Utc>>,
    /// More fires were missed than [`MISSED_LIST_LIMIT`]; `missed` is the oldest.
    pub truncated: bool,
}

/// The first fire of `schedule` strictly after `after`, or `None` when the
/// schedule is invalid or never fires again.
pub fn next_fire(schedule: &Schedule, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
    let compiled = Compiled::new(schedule)?;
    compiled.next_after(after, tz)
}

/// Decides about the fires of `schedule` in `(last_check, now]`: the latest
/// one fires once if it is less than `grace` old; all others are missed.
pub fn missed_fires(
    schedule: &Schedule,
    last_check: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: Duration,
    tz: Tz,
) -> MissedDecision {
    let mut decision = MissedDecision::default();
    let Some(compiled) = Compiled::new(schedule) else {
        return decision;
    };
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let window_start = now
        .checked_sub_signed(grace)
        .map_or(last_check, |s| s.max(last_check));
    let mut cursor = window_start;
    while let Some(t) = compiled.next_after(cursor, tz).filter(|t| *t <= now) {
        decision.due = Some(t);
        cursor = t;
    }
    decision.fire_once = decision.due.is_some();
    let mut cursor = last_check;
    while let Some(t) = compiled.next_after(cursor, tz).filter(|t| *t <= now) {
        cursor = t;
        if Some(t) == decision.due {
            break;
        }
        if decision.missed.len() == MISSED_LIST_LIMIT {
            decision.truncated = true;
            break;
        }
        decision.missed.push(t);
    }
    decision
}

/// A schedule parsed once for repeated queries.
enum Compiled {
    Repeat {
        hour: u32,
        minute: u32,
        days: Vec<chrono::Weekday>,
    },
    Cron(Box<cron::Schedule>),
}

impl Compiled {
    fn new(schedule: &Schedule) -> Option<Compiled> {
        match schedule {
            Schedule::Repeat { at, days, .. } => {
                let (hour, minute) = parse_time_of_day(at)?;
                Some(Compiled::Repeat {
                    hour: hour.into(),
                    minute: minute.into(),
                    days: days.iter().map(|d| chrono_weekday(*d)).collect(),
                })
            }
            Schedule::Cron { cron } => cron::Schedule::from_str(cron)
                .ok()
                .map(|s| Compiled::Cron(Box::new(s))),
        }
    }

    /// The first wall-clock time named by the schedule strictly after `naive`.
    fn next_naive(&self, naive: NaiveDateTime) -> Option<NaiveDateTime> {
        match self {
            Compiled::Repeat { hour, minute, days } => (0..=8)
                .filter_map(|d| naive.date().checked_add_days(chrono::Days::new(d)))
                .filter(|date| days.is_empty() || days.contains(&date.weekday()))
                .filter_map(|date| date.and_hms_opt(*hour, *minute, 0))
                .find(|candidate| *candidate > naive),
            Compiled::Cron(schedule) => schedule
                .after(&Utc.from_utc_datetime(&naive))
                .next()
                .map(|t| t.naive_utc()),
        }
    }

    fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        // Candidates are wall-clock times after `after`'s own wall-clock time;
        // one whose first occurrence already passed (`after` sits in the
        // repeated hour) or that collapses onto an earlier gap end is skipped.
        let mut naive = after.with_timezone(&tz).naive_local();
        for _ in 0..1000 {
            naive = self.next_naive(naive)?;
            let instant = resolve_local(tz, naive)?;
            if instant > after {
                return Some(instant);
            }
        }
        None
    }
}

/// The instant a wall-clock time denotes: the earlier of an ambiguous pair,
/// or for a time inside a gap the first valid instant after it.
pub fn resolve_local(tz: Tz, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(earlier, _) => Some(earlier.with_timezone(&Utc)),
        LocalResult::None => {
            // Step to the first valid minute (gaps are at most a day long),
            // then back second by second to the exact end of the gap.
            let minute = chrono::Duration::minutes(1);
            let second = chrono::Duration::seconds(1);
            let mut probe = naive;
            for _ in 0..3 * 24 * 60 {
                probe += minute;
                if tz.from_local_datetime(&probe).earliest().is_some() {
                    while tz
                        .from_local_datetime(&(probe - second))
                        .earliest()
                        .is_some()
                        && probe - second > naive
                    {
                        probe -= second;
                    }
                    return tz
                        .from_local_datetime(&probe)
                        .earliest()
                        .map(|t| t.with_timezone(&Utc));
                }
            }
            None
        }
    }
}

fn chrono_weekday(day: Weekday) -> chrono::Weekday {
    match day {
        Weekday::Mon => chrono::Weekday::Mon,
        Weekday::Tue => chrono::Weekday::Tue,
        Weekday::Wed => chrono::Weekday::Wed,
        Weekday::Thu => chrono::Weekday::Thu,
        Weekday::Fri => chrono::Weekday::Fri,
        Weekday::Sat => chrono::Weekday::Sat,
        Weekday::Sun => chrono::Weekday::Sun,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Repeat;
    use expect_test::{expect, Expect};

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn daily(at: &str) -> Schedule {
        Schedule::Repeat {
            repeat: Repeat::Daily,
            at: at.into(),
            days: vec![],
        }
    }

    fn weekly(at: &str, days: &[Weekday]) -> Schedule {
        Schedule::Repeat {
            repeat: Repeat::Weekly,
            at: at.into(),
            days: days.to_vec(),
        }
    }

    fn cron(expr: &str) -> Schedule {
        Schedule::Cron {
            cron: crate::spec::schedule::normalize_cron(expr).unwrap(),
        }
    }

    /// The next `count` fires after `after`, in UTC and in the local zone.
    fn check(schedule: Schedule, after: &str, tz: Tz, count: usize, expect: Expect) {
        let mut cursor = utc(after);
        let mut lines = Vec::new();
        for _ in 0..count {
            match next_fire(&schedule, cursor, tz) {
                Some(t) => {
                    lines.push(format!(
                        "{} = {}",
                        t.format("%Y-%m-%dT%H:%M:%SZ"),
                        t.with_timezone(&tz).format("%a %Y-%m-%d %H:%M:%S %Z")
                    ));
                    cursor = t;
                }
                None => lines.push("none".into()),
            }
        }
        expect.assert_eq(&(lines.join("\n") + "\n"));
    }

    #[test]
    fn a_daily_schedule_fires_every_day_at_its_time_in_the_agent_zone() {
        check(
            daily("01:00"),
            "2026-11-22T00:30:00Z",
            chrono_tz::Europe::Berlin,
            3,
            expect![[r#"
                2026-11-23T00:00:00Z = Mon 2026-11-23 01:00:00 CET
                2026-11-24T00:00:00Z = Tue 2026-11-24 01:00:00 CET
                2026-11-25T00:00:00Z = Wed 2026-11-25 01:00:00 CET
            "#]],
        );
        check(
            daily("01:00"),
            "2026-11-22T00:30:00Z",
            Tz::UTC,
            2,
            expect![[r#"
                2026-11-22T01:00:00Z = Sun 2026-11-22 01:00:00 UTC
                2026-11-23T01:00:00Z = Mon 2026-11-23 01:00:00 UTC
            "#]],
        );
    }

    #[test]
    fn a_weekly_schedule_fires_only_on_its_days() {
        check(
            weekly("01:00", &[Weekday::Sun, Weekday::Wed]),
            "2026-11-22T01:00:00Z",
            Tz::UTC,
            3,
            expect![[r#"
                2026-11-25T01:00:00Z = Wed 2026-11-25 01:00:00 UTC
                2026-11-29T01:00:00Z = Sun 2026-11-29 01:00:00 UTC
                2026-12-02T01:00:00Z = Wed 2026-12-02 01:00:00 UTC
            "#]],
        );
    }

    #[test]
    fn a_cron_schedule_fires_at_its_crontab_times() {
        check(
            cron("0 1 * * 0"),
            "2026-11-22T00:00:00Z",
            Tz::UTC,
            2,
            expect![[r#"
                2026-11-22T01:00:00Z = Sun 2026-11-22 01:00:00 UTC
                2026-11-29T01:00:00Z = Sun 2026-11-29 01:00:00 UTC
            "#]],
        );
        check(
            cron("*/20 9 * * 1-5"),
            "2026-11-20T09:30:00Z",
            Tz::UTC,
            3,
            expect![[r#"
                2026-11-20T09:40:00Z = Fri 2026-11-20 09:40:00 UTC
                2026-11-23T09:00:00Z = Mon 2026-11-23 09:00:00 UTC
                2026-11-23T09:20:00Z = Mon 2026-11-23 09:20:00 UTC
            "#]],
        );
    }

    #[test]
    fn a_time_skipped_by_spring_forward_fires_at_the_first_valid_instant_after() {
        // 2026-03-29: Berlin jumps from 02:00 CET to 03:00 CEST.
        check(
            daily("02:30"),
            "2026-03-28T12:00:00Z",
            chrono_tz::Europe::Berlin,
            3,
            expect![[r#"
                2026-03-29T01:00:00Z = Sun 2026-03-29 03:00:00 CEST
                2026-03-30T00:30:00Z = Mon 2026-03-30 02:30:00 CEST
                2026-03-31T00:30:00Z = Tue 2026-03-31 02:30:00 CEST
            "#]],
        );
        check(
            cron("30 2 * * *"),
            "2026-03-28T12:00:00Z",
            chrono_tz::Europe::Berlin,
            2,
            expect![[r#"
                2026-03-29T01:00:00Z = Sun 2026-03-29 03:00:00 CEST
                2026-03-30T00:30:00Z = Mon 2026-03-30 02:30:00 CEST
            "#]],
        );
    }

    #[test]
    fn a_time_repeated_by_fall_back_fires_once() {
        // 2026-10-25: Berlin goes from 03:00 CEST back to 02:00 CET.
        check(
            daily("02:30"),
            "2026-10-24T12:00:00Z",
            chrono_tz::Europe::Berlin,
            2,
            expect![[r#"
                2026-10-25T00:30:00Z = Sun 2026-10-25 02:30:00 CEST
                2026-10-26T01:30:00Z = Mon 2026-10-26 02:30:00 CET
            "#]],
        );
        check(
            cron("30 2 * * *"),
            "2026-10-24T12:00:00Z",
            chrono_tz::Europe::Berlin,
            2,
            expect![[r#"
                2026-10-25T00:30:00Z = Sun 2026-10-25 02:30:00 CEST
                2026-10-26T01:30:00Z = Mon 2026-10-26 02:30:00 CET
            "#]],
        );
        // Asked from inside the repeated hour, after the first 02:30 passed.
        check(
            daily("02:30"),
            "2026-10-25T01:10:00Z",
            chrono_tz::Europe::Berlin,
            1,
            expect![[r#"
                2026-10-26T01:30:00Z = Mon 2026-10-26 02:30:00 CET
            "#]],
        );
    }

    #[test]
    fn an_invalid_schedule_never_fires() {
        assert_eq!(
            next_fire(&daily("25:00"), utc("2026-11-22T00:00:00Z"), Tz::UTC),
            None
        );
        let bad = Schedule::Cron {
            cron: "not cron".into(),
        };
        assert_eq!(next_fire(&bad, utc("2026-11-22T00:00:00Z"), Tz::UTC), None);
    }

    #[test]
    fn a_fire_missed_within_the_grace_fires_once_on_restart() {
        let decision = missed_fires(
            &daily("09:00"),
            utc("2026-11-22T08:50:00Z"),
            utc("2026-11-22T09:03:00Z"),
            DEFAULT_MISSED_GRACE,
            Tz::UTC,
        );
        assert_eq!(
            decision,
            MissedDecision {
                fire_once: true,
                due: Some(utc("2026-11-22T09:00:00Z")),
                missed: vec![],
                truncated: false,
            }
        );
    }

    #[test]
    fn a_fire_missed_longer_than_the_grace_is_recorded_as_missed() {
        let decision = missed_fires(
            &daily("09:00"),
            utc("2026-11-20T08:00:00Z"),
            utc("2026-11-22T09:06:00Z"),
            DEFAULT_MISSED_GRACE,
            Tz::UTC,
        );
        assert!(!decision.fire_once);
        assert_eq!(
            decision.missed,
            vec![
                utc("2026-11-20T09:00:00Z"),
                utc("2026-11-21T09:00:00Z"),
                utc("2026-11-22T09:00:00Z")
            ]
        );
    }

    #[test]
    fn several_fires_missed_within_the_grace_fire_once_for_the_latest() {
        let decision = missed_fires(
            &cron("* * * * *"),
            utc("2026-11-22T08:59:30Z"),
            utc("2026-11-22T09:03:30Z"),
            DEFAULT_MISSED_GRACE,
            Tz::UTC,
        );
        assert!(decision.fire_once);
        assert_eq!(decision.due, Some(utc("2026-11-22T09:03:00Z")));
        assert_eq!(decision.missed.len(), 3);
        assert!(!decision.truncated);
    }

    #[test]
    fn a_long_outage_under_a_dense_cron_lists_a_bounded_number_of_misses() {
        let decision = missed_fires(
            &cron("* * * * *"),
            utc("2026-11-01T00:00:00Z"),
            utc("2026-11-22T09:00:30Z"),
            DEFAULT_MISSED_GRACE,
            Tz::UTC,
        );
        assert!(decision.fire_once);
        assert_eq!(decision.missed.len(), MISSED_LIST_LIMIT);
        assert!(decision.truncated);
    }
}
