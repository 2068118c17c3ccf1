//! `timer.at` schedules: `{repeat: daily|weekly, at: "HH:MM", days?}` and
//! cron expressions. A 5-field expression is crontab (minute first, day of
//! week 0 or 7 = Sunday); Hazel prepends a seconds field and rewrites the
//! day-of-week field as weekday names before handing it to the `cron` crate,
//! whose numbering differs (1 = Sunday). A 6-field expression is the `cron`
//! crate's own seconds-first form and is passed through unchanged.

use std::str::FromStr;

/// Why a cron expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// Not 5 or 6 whitespace-separated fields.
    #[error("expected 5 fields (crontab) or 6 fields (seconds first), found {0}")]
    FieldCount(usize),
    /// A crontab day-of-week item Hazel cannot read.
    #[error("day-of-week item `{0}` is not a weekday (0-7 or sun..sat), a range or a step")]
    Weekday(String),
    /// Both day of month and day of week restricted: crontab means "either",
    /// the `cron` crate means "both"; refused rather than silently changed.
    #[error("day of month and day of week are both restricted; crontab fires on either, which Hazel cannot express in one schedule")]
    DomAndDow,
    /// The `cron` crate refused the converted expression.
    #[error("{0}")]
    Invalid(String),
}

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Converts a user's cron text to the `cron` crate's form and checks that the
/// crate accepts it. Returns the expression to store and run.
///
/// Results are memoized per thread (bounded): the same few expressions are
/// validated over and over (every save, every API validate), and the `cron`
/// crate's parser is the costliest step of validating a timer policy.
pub fn normalize_cron(expr: &str) -> Result<String, CronError> {
    const CACHE_LIMIT: usize = 256;
    thread_local! {
        static CACHE: std::cell::RefCell<std::collections::HashMap<String, Result<String, CronError>>> =
            std::cell::RefCell::new(std::collections::HashMap::new());
    }
    if let Some(hit) = CACHE.with(|c| c.borrow().get(expr).cloned()) {
        return hit;
    }
    let result = normalize_cron_uncached(expr);
    CACHE.with(|c| {
        let mut cache = c.borrow_mut();
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(expr.to_string(), result.clone());
    });
    result
}

fn normalize_cron_uncached(expr: &str) -> Result<String, CronError> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let converted = match fields.len() {
        5 => {
            let restricted = |f: &str| f != "*" && f != "?";
            if restricted(fields[2]) && restricted(fields[4]) {
                return Err(CronError::DomAndDow);
            }
            let dow = crontab_weekdays(fields[4])?;
            format!(
                "0 {} {} {} {} {}",
                fields[0], fields[1], fields[2], fields[3], dow
            )
        }
        6 => fields.join(" "),
        n => return Err(CronError::FieldCount(n)),
    };
    cron::Schedule::from_str(&converted).map_err(|e| CronError::Invalid(e.to_string()))?;
    Ok(converted)
}

/// Rewrites a crontab day-of-week field as a list of weekday names, which the
/// `cron` crate reads unambiguously. `*` and `?` stay as they are.
fn crontab_weekdays(field: &str) -> Result<String, CronError> {
    if field == "*" || field == "?" {
        return Ok(field.to_string());
    }
    let mut days = [false; 7];
    for item in field.split(',') {
        let bad = || CronError::Weekday(item.to_string());
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<usize>().ok().filter(|s| *s > 0).ok_or_else(bad)?,
            ),
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" {
            (0, 6)
        } else if let Some((a, b)) = range.split_once('-') {
            (weekday(a).ok_or_else(bad)?, weekday(b).ok_or_else(bad)?)
        } else {
            let d = weekday(range).ok_or_else(bad)?;
            // `5/2` in crontab means "from 5 to the end, every 2".
            (d, if step > 1 { 7 } else { d })
        };
        if hi < lo {
            return Err(bad());
        }
        for d in (lo..=hi).step_by(step) {
            days[d % 7] = true;
        }
    }
    let names: Vec<&str> = (0..7).filter(|d| days[*d]).map(|d| DAY_NAMES[d]).collect();
    Ok(names.join(","))
}

/// A crontab weekday: 0-7 (0 and 7 are Sunday, kept apart so `5-7` runs
/// through Sunday) or a three-letter name.
fn weekday(text: &str) -> Option<usize> {
    if let Ok(n) = text.parse::<usize>() {
        return (n <= 7).then_some(n);
    }
    DAY_NAMES.iter().position(|d| d.eq_ignore_ascii_case(text))
}

/// Parses `HH:MM` (24-hour) into hour and minute.
pub fn parse_time_of_day(text: &str) -> Option<(u8, u8)> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: u8 = h.parse().ok()?;
    let m: u8 = m.parse().ok()?;
    (h < 24 && m < 60).then_some((h, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn check(input: &str, expect: Expect) {
        let actual = match normalize_cron(input) {
            Ok(s) => s,
            Err(e) => format!("error: {e}"),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn crontab_gets_seconds_and_named_weekdays() {
        check("0 1 * * 0", expect!["0 0 1 * * SUN"]);
        check("0 1 * * 7", expect!["0 0 1 * * SUN"]);
        check("30 2 * * 1-5", expect!["0 30 2 * * MON,TUE,WED,THU,FRI"]);
        check("0 3 * * 5-7", expect!["0 0 3 * * SUN,FRI,SAT"]);
        check("0 3 * * sat,sun", expect!["0 0 3 * * SUN,SAT"]);
        check("*/15 * * * *", expect!["0 */15 * * * *"]);
        check("0 4 1 * *", expect!["0 0 4 1 * *"]);
        check("0 4 * * */2", expect!["0 0 4 * * SUN,TUE,THU,SAT"]);
        check(
            "0 4 * * 0-7",
            expect!["0 0 4 * * SUN,MON,TUE,WED,THU,FRI,SAT"],
        );
    }

    #[test]
    fn six_fields_are_seconds_first_and_pass_through() {
        check("0 0 1 * * Sun", expect!["0 0 1 * * Sun"]);
    }

    #[test]
    fn bad_cron_expressions_are_refused() {
        check(
            "0 1 * *",
            expect!["error: expected 5 fields (crontab) or 6 fields (seconds first), found 4"],
        );
        check(
            "0 1 * * 8",
            expect![
                "error: day-of-week item `8` is not a weekday (0-7 or sun..sat), a range or a step"
            ],
        );
        check("0 1 15 * 1", expect!["error: day of month and day of week are both restricted; crontab fires on either, which Hazel cannot express in one schedule"]);
        check(
            "61 1 * * *",
            expect![[r#"
            error: 0 61 1 * * *
              ^
            Minutes must be less than 59. ('61' specified.)"#]],
        );
    }

    #[test]
    fn time_of_day_is_strict_hh_mm() {
        assert_eq!(parse_time_of_day("01:00"), Some((1, 0)));
        assert_eq!(parse_time_of_day("23:59"), Some((23, 59)));
        assert_eq!(parse_time_of_day("24:00"), None);
        assert_eq!(parse_time_of_day("1:00"), None);
        assert_eq!(parse_time_of_day("01:60"), None);
    }
}
