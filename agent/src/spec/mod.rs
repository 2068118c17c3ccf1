//! Policy spec v1: what a user writes (SPEC §2), in JSON or YAML.
//!
//! These types mirror the document and do no IO. [`parse::parse_spec`] builds
//! them from a `serde_json::Value` while collecting every schema finding at
//! once (with JSON-pointer paths), which `serde`'s derive cannot do: it stops
//! at the first error. Compile (`crate::compile`) then checks the spec against
//! plugin manifests and the inventory and produces the runtime IR.

pub mod duration;
pub mod json;
pub mod node;
pub mod parse;
pub mod schedule;

use serde::Serialize;
use serde_json::{Map, Value};

pub use node::Node;
pub use parse::{
    parse_document, parse_spec, parse_spec_lenient, parse_spec_node, DocumentError, Parsed,
    SpecParts,
};

/// The only spec version this build understands.
pub const SPEC_VERSION: u64 = 1;
/// Default suppression window (SPEC §2): 5 minutes.
pub const DEFAULT_SUPPRESSION_S: u64 = 300;
/// Default idempotency window (SPEC §2): 10 minutes.
pub const DEFAULT_IDEMPOTENCY_S: u64 = 600;

/// A schema-valid policy spec with defaults filled in and durations in seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicySpec {
    pub version: u64,
    pub name: String,
    pub enabled: bool,
    pub priority: i64,
    pub stop_on_match: bool,
    pub dynamic_resolution: bool,
    pub trigger_group: TriggerGroup,
    pub conditions: Vec<Condition>,
    pub targets: TargetsSpec,
    pub actions: Vec<ActionSpec>,
    pub suppression_s: u64,
    pub idempotency_s: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

/// How the triggers of a group combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Logic {
    /// The policy fires when an event makes one trigger true while all others are true.
    All,
    /// The policy fires when any trigger fires.
    Any,
}

/// `trigger_group`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TriggerGroup {
    pub logic: Logic,
    pub triggers: Vec<Trigger>,
}

/// UPS states as normalized events carry them (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpsState {
    OnBattery,
    OnMains,
    LowBattery,
    ReplaceBattery,
    Overload,
    ForcedShutdown,
    CommLost,
}

impl UpsState {
    /// Every state, in the order the documentation lists them.
    pub const ALL: [UpsState; 7] = [
        UpsState::OnBattery,
        UpsState::OnMains,
        UpsState::LowBattery,
        UpsState::ReplaceBattery,
        UpsState::Overload,
        UpsState::ForcedShutdown,
        UpsState::CommLost,
    ];

    /// The names of [`UpsState::ALL`], in the same order.
    pub const NAMES: [&'static str; 7] = [
        "on_battery",
        "on_mains",
        "low_battery",
        "replace_battery",
        "overload",
        "forced_shutdown",
        "comm_lost",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpsState::OnBattery => "on_battery",
            UpsState::OnMains => "on_mains",
            UpsState::LowBattery => "low_battery",
            UpsState::ReplaceBattery => "replace_battery",
            UpsState::Overload => "overload",
            UpsState::ForcedShutdown => "forced_shutdown",
            UpsState::CommLost => "comm_lost",
        }
    }

    pub fn parse(text: &str) -> Option<UpsState> {
        UpsState::NAMES
            .iter()
            .position(|n| *n == text)
            .map(|i| UpsState::ALL[i])
    }

    /// `on_battery` and `on_mains`: where the power comes from. A UPS is in
    /// exactly one; the other states are conditions that come on top of it
    /// (NUT reports `OB LB`, `OL RB`, `OB OVER`) or, for `comm_lost`, say
    /// that nothing is known.
    pub fn is_power_source(self) -> bool {
        matches!(self, UpsState::OnBattery | UpsState::OnMains)
    }

    /// Whether a UPS entering `self` is no longer in `other`. Entering a
    /// power source ends the other one and every condition entered since:
    /// they are armed again for the next time a source reports them (the
    /// NUT source reports the conditions present when a UPS goes on
    /// battery). Entering a condition, or losing contact, ends nothing: a
    /// UPS on battery that reports low battery is still on battery, and
    /// one the source cannot read is in whatever state it was last seen in.
    pub fn ends(self, other: UpsState) -> bool {
        self != other && self.is_power_source()
    }
}

/// Comparison operators of thresholds and conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Op {
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
}

impl Op {
    pub const ALL: [Op; 6] = [Op::Eq, Op::Ne, Op::Gt, Op::Ge, Op::Lt, Op::Le];
    /// The names of [`Op::ALL`], in the same order.
    pub const NAMES: [&'static str; 6] = ["=", "!=", ">", ">=", "<", "<="];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
        }
    }

    pub fn parse(text: &str) -> Option<Op> {
        Op::NAMES
            .iter()
            .position(|n| *n == text)
            .map(|i| Op::ALL[i])
    }

    /// Whether the operator compares order and so needs numbers.
    pub fn is_ordering(self) -> bool {
        !matches!(self, Op::Eq | Op::Ne)
    }

    /// Applies the operator to two numbers.
    pub fn compare(self, left: f64, right: f64) -> bool {
        match self {
            Op::Eq => left == right,
            Op::Ne => left != right,
            Op::Gt => left > right,
            Op::Ge => left >= right,
            Op::Lt => left < right,
            Op::Le => left <= right,
        }
    }
}

/// One trigger, with durations normalized to seconds (`for_s`, `after_s`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum Trigger {
    /// Fires on the event that enters the state (held `for_s` when set).
    #[serde(rename = "ups.state")]
    UpsState {
        equals: UpsState,
        #[serde(skip_serializing_if = "Option::is_none")]
        for_s: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ups: Option<String>,
    },
    /// Fires when `metric op value` becomes true (held `for_s` when set).
    #[serde(rename = "metric.threshold")]
    MetricThreshold {
        metric: String,
        op: Op,
        value: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        for_s: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ups: Option<String>,
    },
    /// Fires at a wall-clock schedule in the agent's time zone.
    #[serde(rename = "timer.at")]
    TimerAt { schedule: Schedule },
    /// Fires `after_s` after `since_event`, unless cancelled first.
    #[serde(rename = "timer.after")]
    TimerAfter {
        after_s: u64,
        since_event: EventPattern,
    },
    /// Fires when the named webhook is posted.
    #[serde(rename = "webhook.custom")]
    WebhookCustom { name: String },
}

impl Trigger {
    /// The `type` string as written in specs.
    pub fn type_name(&self) -> &'static str {
        match self {
            Trigger::UpsState { .. } => "ups.state",
            Trigger::MetricThreshold { .. } => "metric.threshold",
            Trigger::TimerAt { .. } => "timer.at",
            Trigger::TimerAfter { .. } => "timer.after",
            Trigger::WebhookCustom { .. } => "webhook.custom",
        }
    }

    /// Timers and webhooks are true only for their own event (SPEC §2).
    pub fn is_instantaneous(&self) -> bool {
        matches!(
            self,
            Trigger::TimerAt { .. } | Trigger::TimerAfter { .. } | Trigger::WebhookCustom { .. }
        )
    }
}

/// The trigger types a spec may name (a closed set).
pub const TRIGGER_TYPES: [&str; 5] = [
    "ups.state",
    "metric.threshold",
    "timer.at",
    "timer.after",
    "webhook.custom",
];

/// A `timer.at` schedule.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Schedule {
    /// `{repeat: daily|weekly, at: "HH:MM", days?}`.
    Repeat {
        repeat: Repeat,
        at: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        days: Vec<Weekday>,
    },
    /// A cron expression as the `cron` crate reads it (seconds first).
    Cron { cron: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Repeat {
    Daily,
    Weekly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];
    pub const NAMES: [&'static str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

    pub fn parse(text: &str) -> Option<Weekday> {
        Weekday::NAMES
            .iter()
            .position(|n| *n == text)
            .map(|i| Weekday::ALL[i])
    }
}

/// The event a `timer.after` counts from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum EventPattern {
    #[serde(rename = "ups.state")]
    UpsState {
        equals: UpsState,
        #[serde(skip_serializing_if = "Option::is_none")]
        ups: Option<String>,
    },
    #[serde(rename = "webhook.custom")]
    WebhookCustom { name: String },
}

/// Condition scopes (a closed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Ups,
    Host,
    Metric,
    Vm,
}

impl Scope {
    pub const NAMES: [&'static str; 4] = ["ups", "host", "metric", "vm"];

    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "ups" => Some(Scope::Ups),
            "host" => Some(Scope::Host),
            "metric" => Some(Scope::Metric),
            "vm" => Some(Scope::Vm),
            _ => None,
        }
    }

    /// The fields a scope knows; `None` means any name (metrics).
    pub fn fields(self) -> Option<&'static [&'static str]> {
        match self {
            Scope::Ups => Some(&["runtime_minutes", "charge_pct", "load", "state"]),
            Scope::Host => Some(&["reachable"]),
            Scope::Metric => None,
            Scope::Vm => Some(&["count_matching"]),
        }
    }
}

/// One entry of `conditions.all`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Condition {
    pub scope: Scope,
    pub field: String,
    pub op: Op,
    pub value: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ups: Option<String>,
}

/// `targets`: one host, one target type, one selector.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetsSpec {
    pub host_id: String,
    pub target_type: String,
    pub selector: SelectorSpec,
}

/// `targets.selector` as written (the grammar is checked by compile, which
/// knows the target type).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SelectorSpec {
    pub mode: inventory::selector::SelectorMode,
    pub value: String,
}

/// One entry of `actions`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionSpec {
    pub capability_id: String,
    pub verb: String,
    pub params: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_hint: Option<String>,
    /// `retry: {attempts, backoff}`; `None`: the default retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

/// How an action that failed with a retryable error is retried while its
/// policy's trigger holds (SPEC §6 "Outage lifecycle"): the first retry
/// after `backoff_s`, each next one after twice the last delay, up to
/// [`MAX_RETRY_BACKOFF_S`] (or `backoff_s` when larger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetrySpec {
    /// Retries after the first attempt; `None`: as long as the trigger
    /// holds; `Some(0)`: never retried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The first delay, in seconds.
    pub backoff_s: u64,
}

/// The first retry delay when an action sets none (5 s).
pub const DEFAULT_RETRY_BACKOFF_S: u64 = 5;
/// The longest delay between two retries when the first is shorter (60 s).
pub const MAX_RETRY_BACKOFF_S: u64 = 60;

impl Default for RetrySpec {
    fn default() -> RetrySpec {
        RetrySpec {
            attempts: None,
            backoff_s: DEFAULT_RETRY_BACKOFF_S,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_tables_match_the_variants() {
        for (i, state) in UpsState::ALL.iter().enumerate() {
            assert_eq!(UpsState::NAMES[i], state.as_str());
            assert_eq!(UpsState::parse(state.as_str()), Some(*state));
        }
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(Op::NAMES[i], op.as_str());
            assert_eq!(Op::parse(op.as_str()), Some(*op));
        }
    }
}
