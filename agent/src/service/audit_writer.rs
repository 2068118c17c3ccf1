//! Group commit for the audit records API requests leave (a validation, an
//! injected event, a webhook post): each caller still waits until its
//! record is on disk before it answers, but records that arrive while a
//! commit is in flight go to disk together in the next one. With the
//! store's `synchronous = FULL`, one commit per request made
//! `POST /api/policies/validate` eight times slower (BENCHMARKS.md); a
//! batch costs one commit.
//!
//! A batch that fails is written again record by record, so each caller
//! gets the answer of its own record. The writer holds the store weakly:
//! it never keeps a closed service's database (and its directory lock)
//! open.

use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};

use super::ServiceError;
use crate::engine::store::{AuditRecord, EngineStore, StoreResult, Write};
use crate::store::SqliteStore;

/// Records waiting at most (callers wait for room beyond it).
const QUEUE: usize = 4096;
/// Records in one commit at most.
const MAX_BATCH: usize = 512;

struct Pending {
    record: AuditRecord,
    done: oneshot::Sender<StoreResult<()>>,
}

/// The sending side; the writer task ends when it is dropped.
pub(super) struct AuditWriter {
    tx: mpsc::Sender<Pending>,
}

impl AuditWriter {
    pub(super) fn spawn(store: &Arc<SqliteStore>) -> AuditWriter {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(Arc::downgrade(store), rx));
        AuditWriter { tx }
    }

    /// Appends `record`; returns once it is committed.
    pub(super) async fn append(&self, record: AuditRecord) -> Result<(), ServiceError> {
        let (done, committed) = oneshot::channel();
        let stopped = || ServiceError::Internal {
            message: "the audit writer has stopped".into(),
        };
        self.tx
            .send(Pending { record, done })
            .await
            .map_err(|_| stopped())?;
        committed
            .await
            .map_err(|_| stopped())?
            .map_err(ServiceError::from)
    }
}

async fn run(store: Weak<SqliteStore>, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let Some(store) = store.upgrade() else {
            return; // the service is gone: its callers' senders drop
        };
        let written = tokio::task::spawn_blocking(move || commit(&store, batch)).await;
        if let Err(e) = written {
            tracing::error!(error = %e, "the audit writer's commit panicked");
        }
    }
}

/// Commits `batch` in one transaction and answers every caller; after a
/// failure, each record alone.
fn commit(store: &SqliteStore, batch: Vec<Pending>) {
    let writes: Vec<Write> = batch
        .iter()
        .map(|p| Write::AppendAudit(p.record.clone()))
        .collect();
    if store.write(&writes).is_ok() {
        for pending in batch {
            let _ = pending.done.send(Ok(()));
        }
        return;
    }
    for pending in batch {
        let result = store.append_audit(&pending.record);
        let _ = pending.done.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::AuditQuery;

    fn record(n: u128) -> AuditRecord {
        AuditRecord {
            ts: chrono::Utc::now(),
            kind: "policy.validated".into(),
            policy_id: None,
            correlation_id: uuid::Uuid::from_u128(n),
            details: serde_json::json!({"n": n.to_string()}),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_records_are_all_committed_and_each_caller_waits_for_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path().join("hazel.db")).unwrap());
        let writer = Arc::new(AuditWriter::spawn(&store));
        let mut calls = Vec::new();
        for n in 0..300u128 {
            let writer = writer.clone();
            let store = store.clone();
            calls.push(tokio::spawn(async move {
                writer.append(record(n)).await.unwrap();
                // Committed before the answer: readable at once.
                let found = store
                    .audit(&AuditQuery {
                        limit: 1000,
                        ..AuditQuery::default()
                    })
                    .unwrap();
                assert!(found
                    .iter()
                    .any(|e| e.record.correlation_id == uuid::Uuid::from_u128(n)));
            }));
        }
        for call in calls {
            call.await.unwrap();
        }
        let all = store
            .audit(&AuditQuery {
                limit: 1000,
                ..AuditQuery::default()
            })
            .unwrap();
        assert_eq!(all.len(), 300);
    }

    #[tokio::test]
    async fn a_closed_store_is_not_kept_open_and_callers_are_told() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path().join("hazel.db")).unwrap());
        let writer = AuditWriter::spawn(&store);
        writer.append(record(1)).await.unwrap();
        // The commit's own hold ends just after it answers.
        for _ in 0..200 {
            if Arc::strong_count(&store) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(Arc::strong_count(&store), 1, "the writer holds it weakly");
        drop(store);
        let e = writer.append(record(2)).await.unwrap_err();
        assert!(e.to_string().contains("audit writer"), "{e}");
    }
}
