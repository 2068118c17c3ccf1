//! Switch port ids and Hazel's rectangle semantics for port ranges.
//!
//! A port is written `member/port` (`1/24`), `member/slot+port` (`1/A1`),
//! `slot+port` (`A1`) or as a plain number on a standalone switch (`24`). A
//! range between two ports of the same shape covers every member, every slot
//! letter and every port number between its ends. Switches read ranges their
//! own way, so drivers never send a selector's text to a device:
//! [`compress_runs`] turns a resolved list back into runs the device reads
//! exactly as Hazel does.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// One switch port.
///
/// `Ord` sorts by member, then slot, then number: within a range this is the
/// order of expansion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    /// Stack member (`1` in `1/A1`), absent on a standalone or chassis switch.
    pub member: Option<u32>,
    /// Module slot letter, always uppercase (`A` in `1/A1`), absent on fixed-port switches.
    pub slot: Option<char>,
    /// Port number within the member or slot.
    pub number: u32,
}

/// Which of the four written forms a port uses; both ends of a range must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortShape {
    /// `24`: a plain number on a standalone switch.
    Number,
    /// `1/24`: member and port.
    MemberNumber,
    /// `1/A1`: member, slot letter and port.
    MemberSlotNumber,
    /// `A1`: slot letter and port on a chassis switch.
    SlotNumber,
}

/// An inclusive rectangle of ports between two ports of the same shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    first: Port,
    last: Port,
}

/// Why a text is not a port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParsePortError {
    /// The text is empty.
    #[error("empty port")]
    Empty,
    /// The text does not follow any of the four port forms.
    #[error("`{0}` is not a port (forms: `1/24`, `1/A1`, `A1`, `24`)")]
    Form(String),
    /// A slot letter is lowercase; switches print them uppercase.
    #[error("`{text}`: slot letters are uppercase (`{upper}`)")]
    LowercaseSlot {
        /// The text as written.
        text: String,
        /// The same port with an uppercase slot letter.
        upper: String,
    },
    /// A member or port number does not fit in 32 bits.
    #[error("`{0}`: number too large")]
    TooLarge(String),
}

/// Why two ports do not make a range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    /// The ends are written in different forms (`1/A1-B4`).
    #[error(
        "range ends have different forms: `{first}` is {first_shape}, `{last}` is {last_shape}"
    )]
    ShapeMismatch {
        first: Port,
        last: Port,
        first_shape: PortShape,
        last_shape: PortShape,
    },
    /// One dimension runs backwards (`1/4-1/1`).
    #[error("reversed range: {dimension} goes from {from} down to {to}")]
    Reversed {
        /// `member`, `slot` or `port number`.
        dimension: &'static str,
        from: String,
        to: String,
    },
    /// One end is not a port.
    #[error(transparent)]
    Port(#[from] ParsePortError),
}

impl Port {
    /// A port from its parts; `slot` is uppercased.
    pub fn new(member: Option<u32>, slot: Option<char>, number: u32) -> Self {
        Port {
            member,
            slot: slot.map(|c| c.to_ascii_uppercase()),
            number,
        }
    }

    /// The written form of this port.
    pub fn shape(&self) -> PortShape {
        match (self.member, self.slot) {
            (None, None) => PortShape::Number,
            (Some(_), None) => PortShape::MemberNumber,
            (Some(_), Some(_)) => PortShape::MemberSlotNumber,
            (None, Some(_)) => PortShape::SlotNumber,
        }
    }

    /// True when `self` and `other` differ only by their port number.
    fn same_group(&self, other: &Port) -> bool {
        self.member == other.member && self.slot == other.slot
    }
}

impl PortShape {
    /// A short name of the form, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            PortShape::Number => "a plain port number",
            PortShape::MemberNumber => "member/port",
            PortShape::MemberSlotNumber => "member/slot+port",
            PortShape::SlotNumber => "slot+port",
        }
    }
}

impl fmt::Display for PortShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(member) = self.member {
            write!(f, "{member}/")?;
        }
        if let Some(slot) = self.slot {
            write!(f, "{slot}")?;
        }
        write!(f, "{}", self.number)
    }
}

impl FromStr for Port {
    type Err = ParsePortError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(ParsePortError::Empty);
        }
        let form = || ParsePortError::Form(text.to_owned());
        let (member, rest) = match text.split_once('/') {
            Some((member, rest)) => (Some(parse_u32(member, text)?.ok_or_else(form)?), rest),
            None => (None, text),
        };
        let mut chars = rest.chars();
        let (slot, digits) = match chars.next() {
            Some(c) if c.is_ascii_uppercase() => (Some(c), chars.as_str()),
            Some(c) if c.is_ascii_lowercase() => {
                let port = Port::new(
                    member,
                    Some(c),
                    parse_u32(chars.as_str(), text)?.ok_or_else(form)?,
                );
                return Err(ParsePortError::LowercaseSlot {
                    text: text.to_owned(),
                    upper: port.to_string(),
                });
            }
            _ => (None, rest),
        };
        let number = parse_u32(digits, text)?.ok_or_else(form)?;
        Ok(Port {
            member,
            slot,
            number,
        })
    }
}

/// `Ok(None)` when `digits` is not a decimal number; an error when it is one but overflows.
fn parse_u32(digits: &str, whole: &str) -> Result<Option<u32>, ParsePortError> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    digits
        .parse()
        .map(Some)
        .map_err(|_| ParsePortError::TooLarge(whole.to_owned()))
}

impl PortRange {
    /// The rectangle from `first` to `last`, which must have the same shape
    /// and must not run backwards in any dimension.
    pub fn new(first: Port, last: Port) -> Result<Self, PortRangeError> {
        if first.shape() != last.shape() {
            return Err(PortRangeError::ShapeMismatch {
                first,
                last,
                first_shape: first.shape(),
                last_shape: last.shape(),
            });
        }
        let reversed = |dimension, from: String, to: String| PortRangeError::Reversed {
            dimension,
            from,
            to,
        };
        if first.member > last.member {
            return Err(reversed(
                "member",
                fmt_opt(first.member),
                fmt_opt(last.member),
            ));
        }
        if first.slot > last.slot {
            return Err(reversed("slot", fmt_opt(first.slot), fmt_opt(last.slot)));
        }
        if first.number > last.number {
            return Err(reversed(
                "port number",
                first.number.to_string(),
                last.number.to_string(),
            ));
        }
        Ok(PortRange { first, last })
    }

    /// A range of one port.
    pub fn single(port: Port) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    pub fn first(&self) -> Port {
        self.first
    }

    pub fn last(&self) -> Port {
        self.last
    }

    /// How many ports the rectangle holds: members × slots × port numbers.
    /// Computed, never materialised (exact even for absurd rectangles).
    pub fn count(&self) -> u128 {
        let members = match (self.first.member, self.last.member) {
            (Some(a), Some(b)) => u128::from(b - a) + 1,
            _ => 1,
        };
        let slots = match (self.first.slot, self.last.slot) {
            (Some(a), Some(b)) => u128::from(b as u32 - a as u32) + 1,
            _ => 1,
        };
        let numbers = u128::from(self.last.number - self.first.number) + 1;
        members * slots * numbers
    }

    /// True when `port` lies inside the rectangle.
    pub fn contains(&self, port: &Port) -> bool {
        port.shape() == self.first.shape()
            && port.member >= self.first.member
            && port.member <= self.last.member
            && port.slot >= self.first.slot
            && port.slot <= self.last.slot
            && port.number >= self.first.number
            && port.number <= self.last.number
    }

    /// Every port of the rectangle, member by member, slot by slot, number by
    /// number (which is also `Port` order). Lazy: callers check [`count`](Self::count) first.
    pub fn iter(&self) -> impl Iterator<Item = Port> + '_ {
        let (first, last) = (self.first, self.last);
        let (m0, m1) = (first.member.unwrap_or(0), last.member.unwrap_or(0));
        let (s0, s1) = (
            first.slot.map_or(0, |c| c as u32),
            last.slot.map_or(0, |c| c as u32),
        );
        (m0..=m1).flat_map(move |m| {
            (s0..=s1).flat_map(move |s| {
                (first.number..=last.number).map(move |number| Port {
                    member: first.member.map(|_| m),
                    slot: first.slot.map(|_| char::from_u32(s).unwrap_or('A')),
                    number,
                })
            })
        })
    }
}

fn fmt_opt<T: fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(String::new, |v| v.to_string())
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    /// `1/A1-1/B4` or a single port.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('-') {
            Some((a, b)) => PortRange::new(a.trim().parse()?, b.trim().parse()?),
            None => Ok(PortRange::single(text.trim().parse()?)),
        }
    }
}

/// Compresses a resolved port list into runs a switch reads the same way:
/// consecutive numbers in the same member and slot become `1/A1-1/A4`; a run
/// never crosses a slot or a member. The output is sorted, duplicates are
/// dropped, and it can be joined with `,` into one interface list.
pub fn compress_runs(ports: &[Port]) -> Vec<String> {
    let sorted: BTreeSet<Port> = ports.iter().copied().collect();
    let mut runs = Vec::new();
    let mut iter = sorted.into_iter();
    let Some(mut start) = iter.next() else {
        return runs;
    };
    let mut end = start;
    for port in iter {
        if port.same_group(&end) && Some(port.number) == end.number.checked_add(1) {
            end = port;
            continue;
        }
        runs.push(
            PortRange {
                first: start,
                last: end,
            }
            .to_string(),
        );
        start = port;
        end = port;
    }
    runs.push(
        PortRange {
            first: start,
            last: end,
        }
        .to_string(),
    );
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};
    use proptest::prelude::*;

    /// Parses a port or a range and renders its expansion, or the error.
    fn check(input: &str, expect: Expect) {
        let actual = match input.parse::<PortRange>() {
            Ok(range) => {
                let ports: Vec<String> = range.iter().map(|p| p.to_string()).collect();
                format!("{} ports: {}", range.count(), ports.join(" "))
            }
            Err(err) => format!("error: {err}"),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn every_port_form_parses_and_prints_back() {
        check("24", expect!["1 ports: 24"]);
        check("1/24", expect!["1 ports: 1/24"]);
        check("1/A1", expect!["1 ports: 1/A1"]);
        check("A1", expect!["1 ports: A1"]);
    }

    #[test]
    fn ranges_expand_as_rectangles() {
        check("1/1-1/4", expect!["4 ports: 1/1 1/2 1/3 1/4"]);
        check(
            "1/A1-1/B4",
            expect!["8 ports: 1/A1 1/A2 1/A3 1/A4 1/B1 1/B2 1/B3 1/B4"],
        );
        check("1/1-2/2", expect!["4 ports: 1/1 1/2 2/1 2/2"]);
        check("A1-B2", expect!["4 ports: A1 A2 B1 B2"]);
        check("1-3", expect!["3 ports: 1 2 3"]);
        check("1/A1-2/B1", expect!["4 ports: 1/A1 1/B1 2/A1 2/B1"]);
    }

    #[test]
    fn malformed_ports_and_ranges_are_explained() {
        check("1/A1-B4", expect!["error: range ends have different forms: `1/A1` is member/slot+port, `B4` is slot+port"]);
        check(
            "1/4-1/1",
            expect!["error: reversed range: port number goes from 4 down to 1"],
        );
        check(
            "2/1-1/4",
            expect!["error: reversed range: member goes from 2 down to 1"],
        );
        check(
            "B1-A4",
            expect!["error: reversed range: slot goes from B down to A"],
        );
        check(
            "1/a1",
            expect!["error: `1/a1`: slot letters are uppercase (`1/A1`)"],
        );
        check(
            "1/",
            expect!["error: `1/` is not a port (forms: `1/24`, `1/A1`, `A1`, `24`)"],
        );
        check(
            "AB1",
            expect!["error: `AB1` is not a port (forms: `1/24`, `1/A1`, `A1`, `24`)"],
        );
        check(
            "1/99999999999",
            expect!["error: `1/99999999999`: number too large"],
        );
        check("", expect!["error: empty port"]);
    }

    #[test]
    fn compress_runs_never_crosses_a_slot_or_member() {
        let ports: Vec<Port> = "1/A1-1/B4".parse::<PortRange>().unwrap().iter().collect();
        expect![[r#"
            [
                "1/A1-1/A4",
                "1/B1-1/B4",
            ]
        "#]]
        .assert_debug_eq(&compress_runs(&ports));
        let ports: Vec<Port> = ["1/3", "1/1", "1/2", "2/1", "1/5", "1/2", "24"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        expect![[r#"
            [
                "24",
                "1/1-1/3",
                "1/5",
                "2/1",
            ]
        "#]]
        .assert_debug_eq(&compress_runs(&ports));
        assert!(compress_runs(&[]).is_empty());
    }

    fn arb_port() -> impl Strategy<Value = Port> {
        (
            proptest::option::of(1u32..4),
            proptest::option::of(prop::sample::select(vec!['A', 'B', 'C', 'D'])),
            1u32..12,
        )
            .prop_map(|(member, slot, number)| Port {
                member,
                slot,
                number,
            })
    }

    proptest! {
        #[test]
        fn port_range_count_is_members_times_slots_times_ports(
            m0 in 1u32..5, dm in 0u32..4, s0 in 0u8..5, ds in 0u8..4, n0 in 1u32..30, dn in 0u32..30,
            with_member: bool, with_slot: bool,
        ) {
            let first = Port::new(with_member.then_some(m0), with_slot.then_some((b'A' + s0) as char), n0);
            let last = Port::new(with_member.then_some(m0 + dm), with_slot.then_some((b'A' + s0 + ds) as char), n0 + dn);
            let range = PortRange::new(first, last).unwrap();
            let members = if with_member { dm + 1 } else { 1 };
            let slots = if with_slot { u32::from(ds) + 1 } else { 1 };
            let expected = u128::from(members * slots * (dn + 1));
            prop_assert_eq!(range.count(), expected);
            prop_assert_eq!(range.iter().count() as u128, expected);
            let reparsed: PortRange = range.to_string().parse().unwrap();
            prop_assert_eq!(reparsed, range);
        }

        #[test]
        fn expanding_compressed_runs_yields_exactly_the_input_set(ports in proptest::collection::vec(arb_port(), 0..60)) {
            let runs = compress_runs(&ports);
            let mut expanded = Vec::new();
            for run in &runs {
                let range: PortRange = run.parse().unwrap();
                expanded.extend(range.iter());
            }
            let input: BTreeSet<Port> = ports.iter().copied().collect();
            let output: BTreeSet<Port> = expanded.iter().copied().collect();
            prop_assert_eq!(expanded.len(), output.len(), "runs overlap: {:?}", runs);
            prop_assert_eq!(output, input);
        }

        #[test]
        fn printing_a_port_and_parsing_it_back_is_the_identity(port in arb_port()) {
            prop_assert_eq!(port.to_string().parse::<Port>().unwrap(), port);
        }
    }
}
