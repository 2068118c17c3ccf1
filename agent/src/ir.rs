//! The runtime IR of SPEC §3: what [`crate::compile`] produces from a
//! policy spec and what the engine runs. It is plain data with no logic, so
//! the compiler and the policy hash ([`crate::hash`], which reads the
//! compiled plan) both depend on it instead of on each other.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::spec::{Condition, SelectorSpec, TriggerGroup};

/// The runtime IR (SPEC §3).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ir {
    pub policy_id: Option<String>,
    pub hash: String,
    pub version_int: u64,
    pub priority: i64,
    pub stop_on_match: bool,
    pub dynamic_resolution: bool,
    #[serde(rename = "match")]
    pub match_: MatchIr,
    pub targets: TargetsIr,
    pub plan: Vec<PlanStep>,
    pub windows: Windows,
}

/// `match`: the normalized trigger group and conditions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MatchIr {
    pub trigger_group: TriggerGroup,
    pub conditions: Vec<Condition>,
}

/// `targets`, with the ids the selector resolved to when it could be.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetsIr {
    pub host_id: String,
    pub target_type: String,
    pub selector: SelectorSpec,
    /// Canonical ids (`vm:104`); `None` for `query` without an inventory and
    /// for `ledger` (resolved by the engine at execution).
    pub resolved_ids: Option<Vec<String>>,
    /// When the ids were checked against an inventory; `None` when they were
    /// only expanded offline.
    pub resolved_at: Option<String>,
}

/// One step of the plan: an action with its params completed from the manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanStep {
    pub capability: String,
    pub verb: String,
    pub params: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_hint: Option<String>,
    /// The action's retry when it is not the default one (SPEC §6
    /// "Outage lifecycle"); a spelled-out default compiles to `None`, so it
    /// hashes the same as an omitted one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<crate::spec::RetrySpec>,
}

/// Suppression and idempotency windows in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Windows {
    pub suppression_s: u64,
    pub idempotency_s: u64,
}
