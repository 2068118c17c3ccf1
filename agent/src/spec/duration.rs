//! The strict duration grammar of policy specs: one or more `<int><unit>`
//! groups with units `s m h d` (`90s`, `10m`, `1h30m`, `2d`). Anything else,
//! a bare number, a sign, a trailing letter, an empty string, is rejected so
//! that `300` never silently means seconds to one user and minutes to another.

/// Why a duration text was refused; the message names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text is empty or only whitespace.
    #[error("empty duration")]
    Empty,
    /// A number without a unit, e.g. `300`.
    #[error("`{0}` has no unit")]
    MissingUnit(String),
    /// A character that is neither a digit nor a known unit.
    #[error("unexpected `{found}` at position {pos} (units are s, m, h, d)")]
    Unexpected { found: char, pos: usize },
    /// A unit with no number before it, e.g. `m` or `1hm`.
    #[error("unit `{unit}` at position {pos} has no number before it")]
    MissingNumber { unit: char, pos: usize },
    /// The same unit twice, or units out of order (`10m1h`).
    #[error(
        "unit `{unit}` at position {pos} repeats or comes after a smaller unit (write e.g. 1h30m)"
    )]
    Order { unit: char, pos: usize },
    /// More seconds than fit in 64 bits.
    #[error("duration is too large")]
    Overflow,
}

/// Parses a duration into whole seconds.
pub fn parse_duration(text: &str) -> Result<u64, DurationError> {
    if super::parse::is_blank(text) {
        return Err(DurationError::Empty);
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    let mut last_rank = usize::MAX;
    for (pos, c) in text.char_indices() {
        if let Some(d) = c.to_digit(10) {
            let n = number.unwrap_or(0);
            number = Some(
                n.checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(d)))
                    .ok_or(DurationError::Overflow)?,
            );
            continue;
        }
        let (rank, factor) = match c {
            'd' => (3, 86_400),
            'h' => (2, 3_600),
            'm' => (1, 60),
            's' => (0, 1),
            _ => return Err(DurationError::Unexpected { found: c, pos }),
        };
        let n = number
            .take()
            .ok_or(DurationError::MissingNumber { unit: c, pos })?;
        if rank >= last_rank {
            return Err(DurationError::Order { unit: c, pos });
        }
        last_rank = rank;
        total = n
            .checked_mul(factor)
            .and_then(|s| total.checked_add(s))
            .ok_or(DurationError::Overflow)?;
    }
    if number.is_some() {
        return Err(DurationError::MissingUnit(text.to_string()));
    }
    Ok(total)
}

/// Formats seconds back in the largest units (`5400` -> `1h30m`), the inverse of
/// [`parse_duration`] for display.
pub fn format_duration(mut secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, factor) in [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)] {
        if secs >= factor {
            out.push_str(&(secs / factor).to_string());
            out.push(unit);
            secs %= factor;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn check(input: &str, expect: Expect) {
        let actual = match parse_duration(input) {
            Ok(s) => format!("{s}s"),
            Err(e) => format!("error: {e}"),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn valid_durations_parse_to_seconds() {
        check("90s", expect!["90s"]);
        check("10m", expect!["600s"]);
        check("1h30m", expect!["5400s"]);
        check("2d", expect!["172800s"]);
        check("1d2h3m4s", expect!["93784s"]);
        check("0s", expect!["0s"]);
    }

    #[test]
    fn malformed_durations_are_refused_with_a_reason() {
        check(
            "10mx",
            expect!["error: unexpected `x` at position 3 (units are s, m, h, d)"],
        );
        check("300", expect!["error: `300` has no unit"]);
        check(
            "-5m",
            expect!["error: unexpected `-` at position 0 (units are s, m, h, d)"],
        );
        check("", expect!["error: empty duration"]);
        check(
            "m",
            expect!["error: unit `m` at position 0 has no number before it"],
        );
        check("10m1h", expect!["error: unit `h` at position 4 repeats or comes after a smaller unit (write e.g. 1h30m)"]);
        check(
            "1h 30m",
            expect!["error: unexpected ` ` at position 2 (units are s, m, h, d)"],
        );
        check(
            "99999999999999999999s",
            expect!["error: duration is too large"],
        );
    }

    #[test]
    fn format_is_the_inverse_of_parse() {
        for secs in [0, 1, 59, 60, 90, 3600, 5400, 86_400, 93_784] {
            assert_eq!(parse_duration(&format_duration(secs)), Ok(secs));
        }
    }
}
