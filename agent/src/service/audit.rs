//! The audit log: how the service builds the record of each change a user
//! makes, and the query that reads records back, newest first.

use chrono::Utc;
use serde_json::Value;
use uuid::Uuid;

use super::{Actor, Service, ServiceError};
use crate::engine::store::{AuditEntry, AuditQuery, AuditRecord, EngineStore};

impl Service {
    /// Audit records, newest first.
    pub async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>, ServiceError> {
        self.store(move |s| s.audit(&query)).await
    }

    /// Appends `record` through the group-committing audit writer; returns
    /// once it is on disk.
    pub(super) async fn append_audit(&self, record: AuditRecord) -> Result<(), ServiceError> {
        self.inner.audit_writer.append(record).await
    }
}

/// The audit record of a change `actor` made: `details` with who (`by`)
/// and in which role, under the request's correlation id (else a fresh one).
pub(super) fn audit(
    actor: &Actor,
    kind: &str,
    policy_id: Option<Uuid>,
    mut details: Value,
) -> AuditRecord {
    if let Value::Object(map) = &mut details {
        map.insert("by".into(), Value::String(actor.subject.clone()));
        map.insert("role".into(), Value::String(actor.role.as_str().into()));
    }
    AuditRecord {
        ts: Utc::now(),
        correlation_id: actor.correlation_id.unwrap_or_else(Uuid::new_v4),
        kind: kind.to_string(),
        policy_id,
        details,
    }
}
