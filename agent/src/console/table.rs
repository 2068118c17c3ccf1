//! The policies table's filter and sort (SPEC §11): by a name substring
//! and a status, sorted by name, status, last run or last dry-run
//! severity. Done on the server from the query string (`GET
//! /policies?q=&status=&sort=`), so the form works without script and a
//! filtered view is a link.

use std::cmp::Ordering;

use serde::Deserialize;

use super::PolicyRow;

/// The table's query string.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct PoliciesQuery {
    /// A case-insensitive part of the name.
    #[serde(default)]
    pub q: String,
    /// `enabled`, `disabled`, `invalid`, or empty for all.
    #[serde(default)]
    pub status: String,
    /// `name` (default), `status`, `last_run` (newest first), `severity`
    /// (worst first).
    #[serde(default)]
    pub sort: String,
}

/// One `<option>` of a filter.
pub struct Choice {
    pub value: &'static str,
    pub label: &'static str,
    pub selected: bool,
}

const STATUSES: [(&str, &str); 4] = [
    ("", "any status"),
    ("enabled", "enabled"),
    ("disabled", "disabled"),
    ("invalid", "invalid"),
];

const SORTS: [(&str, &str); 4] = [
    ("name", "name"),
    ("status", "status"),
    ("last_run", "last run, newest first"),
    ("severity", "last dry-run, worst first"),
];

impl PoliciesQuery {
    pub fn statuses(&self) -> Vec<Choice> {
        choices(&STATUSES, &self.status)
    }

    pub fn sorts(&self) -> Vec<Choice> {
        let sort = if self.sort.is_empty() {
            "name"
        } else {
            &self.sort
        };
        choices(&SORTS, sort)
    }

    /// The rows that match, in the chosen order.
    pub(super) fn apply(&self, rows: Vec<PolicyRow>) -> Vec<PolicyRow> {
        let needle = self.q.trim().to_lowercase();
        let mut rows: Vec<PolicyRow> = rows
            .into_iter()
            .filter(|r| needle.is_empty() || r.name.to_lowercase().contains(&needle))
            .filter(|r| self.status.is_empty() || r.status == self.status)
            .collect();
        let by_name =
            |a: &PolicyRow, b: &PolicyRow| a.name.to_lowercase().cmp(&b.name.to_lowercase());
        let order: fn(&PolicyRow, &PolicyRow) -> Ordering = match self.sort.as_str() {
            "status" => |a, b| a.status.cmp(&b.status),
            // RFC 3339 strings of one format sort as the instants do;
            // never-run policies last.
            "last_run" => |a, b| b.last_run_at.cmp(&a.last_run_at),
            "severity" => |a, b| severity_rank(&b.severity).cmp(&severity_rank(&a.severity)),
            _ => |_, _| Ordering::Equal,
        };
        rows.sort_by(|a, b| order(a, b).then_with(|| by_name(a, b)));
        rows
    }
}

fn choices(all: &[(&'static str, &'static str)], current: &str) -> Vec<Choice> {
    all.iter()
        .map(|&(value, label)| Choice {
            value,
            label,
            selected: value == current,
        })
        .collect()
}

/// The stored dry-run severity (`inventory::Severity`) as a rank; "not
/// run" below every severity.
fn severity_rank(s: &str) -> u8 {
    match s {
        "blocker" => 4,
        "error" => 3,
        "warn" => 2,
        "info" => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, status: &str, last_run_at: &str, severity: &str) -> PolicyRow {
        PolicyRow {
            id: name.into(),
            name: name.into(),
            intent: "disabled",
            status: status.into(),
            severity: severity.into(),
            trigger: String::new(),
            last_run: String::new(),
            last_run_at: last_run_at.into(),
            last_outcome: String::new(),
        }
    }

    fn names(rows: &[PolicyRow]) -> Vec<&str> {
        rows.iter().map(|r| r.name.as_str()).collect()
    }

    fn rows() -> Vec<PolicyRow> {
        vec![
            row("Stop web", "enabled", "2026-12-07T09:00:00Z", "info"),
            row("backup nas", "disabled", "", "error"),
            row("Stop db", "disabled", "2026-12-07T10:00:00Z", "warn"),
            row("a new one", "disabled", "", "not run"),
        ]
    }

    #[test]
    fn the_name_filter_ignores_case_and_the_status_filter_is_exact() {
        let q = PoliciesQuery {
            q: "STOP".into(),
            status: "disabled".into(),
            ..PoliciesQuery::default()
        };
        assert_eq!(names(&q.apply(rows())), ["Stop db"]);
    }

    #[test]
    fn rows_sort_by_name_by_default_and_by_newest_run_or_worst_severity_on_request() {
        let mut q = PoliciesQuery::default();
        assert_eq!(
            names(&q.apply(rows())),
            ["a new one", "backup nas", "Stop db", "Stop web"]
        );
        q.sort = "last_run".into();
        assert_eq!(
            names(&q.apply(rows())),
            ["Stop db", "Stop web", "a new one", "backup nas"]
        );
        q.sort = "severity".into();
        // A dry-run that found only `info` ranks above one never run.
        assert_eq!(
            names(&q.apply(rows())),
            ["backup nas", "Stop db", "Stop web", "a new one"]
        );
    }
}
