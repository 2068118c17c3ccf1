//! The service layer behind `hazel serve` and the HTTP API: policies in the
//! store with their gates (SPEC §9, §10), hosts and their drivers, the
//! policy dry-run (SPEC §5), inverses (§11), event injection and the kill
//! switch, all over one [`Service`] handle that the API and `hazel demo`
//! share. Only this layer and the engine call the store; only `api` knows
//! HTTP.
//!
//! The engine runs on its own thread with its own current-thread runtime
//! ([`engine_loop`]): its store calls block on disk IO (an `fsync` per
//! committed batch), and running it apart keeps that off the API's runtime.
//! Store calls made here go through `spawn_blocking`.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

mod audit;
mod audit_writer;
pub mod config;
mod cpu_slots;
mod dry_run;
pub mod engine_loop;
mod events;
mod hosts;
mod kill_switch;
mod live;
pub mod metrics;
mod open;
mod policies;
pub mod users;

pub use config::Config;
pub use dry_run::{PolicyTranscript, UsedInventory};
pub use engine_loop::EngineStatus;
pub use hosts::HostHealth;
pub use metrics::Metrics;
pub use open::{NotReady, OpenOptions};

/// Who is asking: the token's subject and role (the API checks the role
/// before calling; the service records the subject in the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The token's `sub` (`alice`, `cli`, `demo`).
    pub subject: String,
    pub role: Role,
    /// The request's correlation id (`X-Correlation-Id`), written on the
    /// audit records and events it causes; `None` mints one per record.
    pub correlation_id: Option<Uuid>,
}

/// The three roles of SPEC §9 issue 5: viewers read; operators dry-run,
/// inject events and run; admins change policies, hosts and the kill switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    /// The role's name in tokens and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The inverse of [`Role::as_str`].
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A page of a list answer (keyset pagination: pass `next` back as `after`).
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The cursor of the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    pub total: u64,
}

/// A stored policy as the API shows it (SPEC §10).
#[derive(Debug, Clone, Serialize)]
pub struct PolicyView {
    pub id: Uuid,
    pub name: String,
    pub spec: Value,
    pub version_int: u64,
    pub hash: String,
    pub status: String,
    /// The spec's `enabled`: what the user asked for; `status` is what runs.
    pub enabled_intent: bool,
    pub compiled_ir: Value,
    pub last_validation: Option<Value>,
    pub last_dry_run: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A host as the API shows it: secrets masked, never returned.
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    pub id: String,
    pub plugin: String,
    #[serde(rename = "self")]
    pub self_host: bool,
    /// `config` (declared in `hazel.yaml`, re-applied at every start) or `api`.
    pub source: String,
    pub connection: serde_json::Map<String, Value>,
    pub inventory: Option<HostInventoryStatus>,
}

/// A host's snapshot age and staleness.
#[derive(Debug, Clone, Serialize)]
pub struct HostInventoryStatus {
    pub ts: Option<DateTime<Utc>>,
    pub stale: bool,
    pub targets: usize,
    /// How many targets of each type (`{"vm": 5, "node": 1}`).
    pub by_type: std::collections::BTreeMap<String, usize>,
    /// What the last discovery could not read (a switch that rejected its
    /// interface table, say); empty when it read everything.
    pub partial: Vec<String>,
}

/// Everything the service can refuse, each with a stable code and the HTTP
/// status the API answers with (SPEC §9).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The spec has blockers (400 `policy.invalid`); `report` is the
    /// validation report.
    #[error("the policy has blocking issues")]
    Invalid { report: Value },
    /// Malformed input other than a policy spec (400).
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        details: Value,
    },
    /// 404.
    #[error("no {what} {id}")]
    NotFound { what: &'static str, id: String },
    /// Another stored policy has the same hash (409).
    #[error("an identical policy is already stored as {existing_id}")]
    DuplicateHash { existing_id: Uuid },
    /// Enable refused: the latest dry-run has errors (409).
    #[error("enable refused: the latest dry-run reported errors")]
    EnableBlocked {
        errors: Vec<Value>,
        transcript_id: Option<Uuid>,
    },
    /// Another conflict (409): a stale `version_int`, a host defined in
    /// `hazel.yaml`, ...
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A driver reports the action structurally invalid (422).
    #[error("{message}")]
    Unprocessable {
        code: &'static str,
        message: String,
        details: Value,
    },
    /// A webhook post was refused (401 unsigned or bad signature, 404 unknown name).
    #[error("{message}")]
    Webhook {
        code: &'static str,
        status: u16,
        message: String,
    },
    /// The engine is stopping or stopped (503).
    #[error("the engine is not running")]
    Unavailable,
    /// Every slot of the blocking pool for CPU-bound work (validation,
    /// compile) stayed taken for the whole wait, or the queue for one was
    /// full (503 `service.busy` with `Retry-After`).
    #[error("{what}: every validation slot is busy; retry in a second")]
    Busy { what: &'static str },
    /// The store failed (500); details are logged, not returned.
    #[error("storage failure")]
    Store {
        #[source]
        source: crate::engine::store::StoreError,
    },
    /// Anything else internal (500).
    #[error("internal error: {message}")]
    Internal { message: String },
    /// The data directory cannot be opened: its database is not the one it
    /// held, it is read-only, or another process uses it (the agent refuses
    /// to start on it; `hazel serve` exits 2).
    #[error(transparent)]
    DataDir(crate::store::DataDirError),
}

impl ServiceError {
    /// The stable error code of the API answer.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Invalid { .. } => "policy.invalid",
            ServiceError::BadRequest { code, .. } => code,
            ServiceError::NotFound { what, .. } => match *what {
                "policy" => "policy.not_found",
                "host" => "host.not_found",
                "transcript" => "transcript.not_found",
                _ => "not_found",
            },
            ServiceError::DuplicateHash { .. } => "policy.duplicate_hash",
            ServiceError::EnableBlocked { .. } => "policy.enable_blocked",
            ServiceError::Conflict { code, .. } => code,
            ServiceError::Unprocessable { code, .. } => code,
            ServiceError::Webhook { code, .. } => code,
            ServiceError::Unavailable => "engine.unavailable",
            ServiceError::Busy { .. } => "service.busy",
            ServiceError::Store { .. } => "store.failed",
            ServiceError::Internal { .. } => "internal",
            ServiceError::DataDir(_) => "store.refused",
        }
    }

    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            ServiceError::Invalid { .. } | ServiceError::BadRequest { .. } => 400,
            ServiceError::NotFound { .. } => 404,
            ServiceError::DuplicateHash { .. }
            | ServiceError::EnableBlocked { .. }
            | ServiceError::Conflict { .. } => 409,
            ServiceError::Unprocessable { .. } => 422,
            ServiceError::Webhook { status, .. } => *status,
            ServiceError::Unavailable | ServiceError::Busy { .. } => 503,
            ServiceError::Store { .. }
            | ServiceError::Internal { .. }
            | ServiceError::DataDir(_) => 500,
        }
    }

    /// Extra fields of the answer's `error` object besides `code` and
    /// `message` (`existing_id`, `errors`, `report`, ...).
    pub fn details(&self) -> serde_json::Map<String, Value> {
        let mut out = serde_json::Map::new();
        match self {
            ServiceError::Invalid { report } => {
                out.insert("report".into(), report.clone());
            }
            ServiceError::BadRequest { details, .. }
            | ServiceError::Unprocessable { details, .. } => {
                if let Value::Object(map) = details {
                    out.extend(map.clone());
                } else if !details.is_null() {
                    out.insert("details".into(), details.clone());
                }
            }
            ServiceError::DuplicateHash { existing_id } => {
                out.insert("existing_id".into(), Value::String(existing_id.to_string()));
            }
            ServiceError::EnableBlocked {
                errors,
                transcript_id,
            } => {
                out.insert("errors".into(), Value::Array(errors.clone()));
                if let Some(id) = transcript_id {
                    out.insert("transcript_id".into(), Value::String(id.to_string()));
                }
            }
            _ => {}
        }
        out
    }
}

impl From<crate::engine::store::StoreError> for ServiceError {
    fn from(source: crate::engine::store::StoreError) -> Self {
        ServiceError::Store { source }
    }
}

impl From<crate::store::DataDirError> for ServiceError {
    fn from(source: crate::store::DataDirError) -> Self {
        ServiceError::DataDir(source)
    }
}

/// Hazel as a service; cheap to clone (one shared state).
#[derive(Clone)]
pub struct Service {
    inner: Arc<open::Inner>,
}

/// The answer of an event injection (`POST /api/events`).
#[derive(Debug, Clone, Serialize)]
pub struct EventAnswer {
    pub correlation_id: Uuid,
    pub dry_run: bool,
    /// Per shortlisted policy: id, severity, code, explain, planned actions
    /// (with driver dry-run answers when `dry_run`), skipped rows, run id.
    pub decisions: Vec<Value>,
    /// When the dry-run decided the event (dry-run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
    /// Dry-run only: what runs now, each countdown the event starts with
    /// what it would do at its end, what the inverses would restore (SPEC
    /// §6 "Dry-run of an event").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Vec<Value>>,
    /// Worst severity (dry-run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript_id: Option<Uuid>,
}

/// The kill switch as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct KillSwitchView {
    pub paused: bool,
    pub since: Option<DateTime<Utc>>,
    pub by: Option<String>,
    pub reason: Option<String>,
    /// `false` when the engine holds a pause the store could not write (a
    /// full disk): in effect now, forgotten by a restart.
    pub persisted: bool,
}

/// Capabilities a host's plugin offers (`GET /api/hosts/:id/capabilities`).
pub type Capabilities = BTreeMap<String, Value>;
