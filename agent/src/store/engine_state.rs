//! The engine's state in the SQLite store: [`EngineStore`] for
//! [`SqliteStore`], one transaction per [`Write`] batch. The engine only
//! knows its trait; this is the one place that maps it to the tables of
//! migration 1 (and 3, trigger state).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Transaction};
use uuid::Uuid;

use super::sqlite::{conflict_or, from_json, json_column, parse_ts, parse_uuid, sql, to_json, ts};
use super::SqliteStore;
use crate::engine::store::{
    AuditEntry, AuditQuery, AuditRecord, DeadlineKind, DeadlineRecord, EngineStore, FollowUpRecord,
    IntentEntry, IntentId, IntentOutcome, IntentRecord, KillSwitchState, RestoreEntry, RetryRecord,
    RunHeadline, RunRecord, RunStatus, StoreError, StoreResult, SubjectState, TimerCheckRecord,
    WindowState, Write, LEDGER_RUNS_PER_POLICY,
};

impl EngineStore for SqliteStore {
    fn write(&self, batch: &[Write]) -> StoreResult<()> {
        self.with_transaction(|tx| apply_writes(tx, batch))
    }

    fn window_state(&self, policy_id: Uuid) -> StoreResult<WindowState> {
        let row = self
            .lock()
            .query_row(
                "SELECT last_fired_at, last_suppressed_at, suppressed_count
                 FROM policy_window WHERE policy_id = ?1",
                params![policy_id.to_string()],
                |row| {
                    Ok((
                        row.get::<_, Option<String>>(0)?,
                        row.get::<_, Option<String>>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(sql("window_state"))?;
        let Some((fired, suppressed, count)) = row else {
            return Ok(WindowState::default());
        };
        Ok(WindowState {
            last_fired_at: fired.as_deref().map(parse_ts).transpose()?,
            last_suppressed_at: suppressed.as_deref().map(parse_ts).transpose()?,
            suppressed_count: u64::try_from(count).map_err(|_| StoreError::Corrupt {
                what: "suppressed_count",
                value: count.to_string(),
            })?,
        })
    }

    fn key_ran_at(&self, key: &str) -> StoreResult<Option<DateTime<Utc>>> {
        let ran_at: Option<String> = self
            .lock()
            .query_row(
                "SELECT ran_at FROM idempotency_keys WHERE key = ?1",
                params![key],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql("key_ran_at"))?;
        ran_at.as_deref().map(parse_ts).transpose()
    }

    fn deadlines(&self) -> StoreResult<Vec<DeadlineRecord>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT policy_id, trigger_index, kind, due_at, state FROM deadlines
                 ORDER BY due_at, policy_id, trigger_index, kind",
            )
            .map_err(sql("deadlines"))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, u32>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                ))
            })
            .map_err(sql("deadlines"))?;
        let mut out = Vec::new();
        for row in rows {
            let (policy_id, trigger_index, kind, due_at, state) = row.map_err(sql("deadlines"))?;
            out.push(DeadlineRecord {
                policy_id: parse_uuid(&policy_id)?,
                trigger_index,
                kind: DeadlineKind::parse(&kind).ok_or(StoreError::Corrupt {
                    what: "deadlines.kind",
                    value: kind,
                })?,
                due_at: parse_ts(&due_at)?,
                state: from_json("deadline state", &state)?,
            });
        }
        Ok(out)
    }

    fn timer_checks(&self) -> StoreResult<Vec<TimerCheckRecord>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT policy_id, trigger_index, checked_at FROM timer_checks
                 ORDER BY policy_id, trigger_index",
            )
            .map_err(sql("timer_checks"))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, u32>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .map_err(sql("timer_checks"))?;
        let mut out = Vec::new();
        for row in rows {
            let (policy_id, trigger_index, checked_at) = row.map_err(sql("timer_checks"))?;
            out.push(TimerCheckRecord {
                policy_id: parse_uuid(&policy_id)?,
                trigger_index,
                checked_at: parse_ts(&checked_at)?,
            });
        }
        Ok(out)
    }

    fn open_intents(&self) -> StoreResult<Vec<IntentRecord>> {
        let docs = json_column(
            &self.lock(),
            "open_intents",
            "SELECT intent FROM intents WHERE outcome IS NULL
             ORDER BY created_at, run_id, action_index, host",
            [],
        )?;
        docs.iter().map(|doc| from_json("intent", doc)).collect()
    }

    fn intent(&self, id: &IntentId) -> StoreResult<Option<IntentEntry>> {
        let row = self
            .lock()
            .query_row(
                "SELECT intent, outcome FROM intents
                 WHERE run_id = ?1 AND action_index = ?2 AND host = ?3",
                params![id.run_id.to_string(), id.action_index, id.host],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?)),
            )
            .optional()
            .map_err(sql("intent"))?;
        let Some((intent, outcome)) = row else {
            return Ok(None);
        };
        Ok(Some(IntentEntry {
            intent: from_json("intent", &intent)?,
            outcome: outcome
                .as_deref()
                .map(|doc| from_json("intent outcome", doc))
                .transpose()?,
        }))
    }

    fn runs(&self, policy_id: Uuid, limit: usize) -> StoreResult<Vec<RunRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let docs = json_column(
            &self.lock(),
            "runs",
            "SELECT run FROM runs WHERE policy_id = ?1
             ORDER BY started_at DESC, seq DESC LIMIT ?2",
            params![policy_id.to_string(), limit],
        )?;
        docs.iter().map(|doc| from_json("run", doc)).collect()
    }

    /// One statement for all of `ids` (a JSON array parameter, so no limit
    /// on bound variables): each id's newest run through the
    /// `runs_policy_newest` index, read from its columns without parsing
    /// the run's document.
    fn last_run_headlines(&self, ids: &[Uuid]) -> StoreResult<HashMap<Uuid, RunHeadline>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let ids = to_json("policy ids", &ids)?;
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(
                "SELECT policy_id, started_at, status FROM runs WHERE seq IN (
                   SELECT (SELECT seq FROM runs WHERE policy_id = ids.value
                           ORDER BY started_at DESC, seq DESC LIMIT 1)
                   FROM json_each(?1) AS ids)",
            )
            .map_err(sql("last_run_headlines"))?;
        let rows = statement
            .query_map(params![ids], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .map_err(sql("last_run_headlines"))?;
        let mut out = HashMap::new();
        for row in rows {
            let (policy_id, started_at, status) = row.map_err(sql("last_run_headlines"))?;
            let status = RunStatus::parse(&status).ok_or_else(|| StoreError::Corrupt {
                what: "run status",
                value: status.clone(),
            })?;
            out.insert(
                parse_uuid(&policy_id)?,
                RunHeadline {
                    started_at: parse_ts(&started_at)?,
                    status,
                },
            );
        }
        Ok(out)
    }

    fn latest_successful_run(&self, policy_id: Uuid) -> StoreResult<Option<RunRecord>> {
        let doc: Option<String> = self
            .lock()
            .query_row(
                "SELECT run FROM runs WHERE policy_id = ?1 AND successful = 1
                 ORDER BY started_at DESC, seq DESC LIMIT 1",
                params![policy_id.to_string()],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql("latest_successful_run"))?;
        doc.as_deref().map(|doc| from_json("run", doc)).transpose()
    }

    fn kill_switch(&self) -> StoreResult<KillSwitchState> {
        let row = self
            .lock()
            .query_row(
                "SELECT paused, since, by_whom, reason FROM kill_switch WHERE id = 1",
                [],
                |row| {
                    Ok((
                        row.get::<_, bool>(0)?,
                        row.get::<_, Option<String>>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, Option<String>>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(sql("kill_switch"))?;
        let Some((paused, since, by, reason)) = row else {
            return Ok(KillSwitchState::default());
        };
        Ok(KillSwitchState {
            paused,
            since: since.as_deref().map(parse_ts).transpose()?,
            by,
            reason,
        })
    }

    fn restore_entries(&self) -> StoreResult<Vec<RestoreEntry>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT policy_id, host, target, from_state, to_state, capability, verb,
                        params, run_id, at
                 FROM restore_set ORDER BY policy_id, host, target",
            )
            .map_err(sql("restore_entries"))?;
        let rows = stmt
            .query_map([], |row| -> rusqlite::Result<RestoreRow> {
                Ok(RestoreRow {
                    policy_id: row.get(0)?,
                    host: row.get(1)?,
                    target: row.get(2)?,
                    from: row.get(3)?,
                    to: row.get(4)?,
                    capability: row.get(5)?,
                    verb: row.get(6)?,
                    params: row.get(7)?,
                    run_id: row.get(8)?,
                    at: row.get(9)?,
                })
            })
            .map_err(sql("restore_entries"))?;
        let mut out = Vec::new();
        for row in rows {
            let row = row.map_err(sql("restore_entries"))?;
            out.push(RestoreEntry {
                policy_id: parse_uuid(&row.policy_id)?,
                host: row.host,
                target: row.target,
                from: row.from,
                to: row.to,
                capability: row.capability,
                verb: row.verb,
                params: from_json("restore params", &row.params)?,
                run_id: parse_uuid(&row.run_id)?,
                at: parse_ts(&row.at)?,
            });
        }
        Ok(out)
    }

    fn waiting_retries(&self) -> StoreResult<Vec<RetryRecord>> {
        self.item_records(ItemTable::WaitingRetries)
    }

    fn follow_ups(&self) -> StoreResult<Vec<FollowUpRecord>> {
        self.item_records(ItemTable::FollowUps)
    }

    fn subject_states(&self) -> StoreResult<Vec<SubjectState>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT subject_id, states, at FROM subject_states ORDER BY subject_id")
            .map_err(sql("subject_states"))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .map_err(sql("subject_states"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, states, at) = row.map_err(sql("subject_states"))?;
            out.push(SubjectState {
                id,
                states: from_json("subject states", &states)?,
                at: parse_ts(&at)?,
            });
        }
        Ok(out)
    }

    fn trigger_states(&self) -> StoreResult<Vec<(Uuid, serde_json::Value)>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT policy_id, state FROM trigger_states ORDER BY policy_id")
            .map_err(sql("trigger_states"))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(sql("trigger_states"))?;
        let mut out = Vec::new();
        for row in rows {
            let (policy_id, state) = row.map_err(sql("trigger_states"))?;
            out.push((parse_uuid(&policy_id)?, from_json("trigger state", &state)?));
        }
        Ok(out)
    }

    fn audit(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEntry>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT seq, ts, correlation_id, kind, policy_id, details FROM audit
                 WHERE (?1 IS NULL OR policy_id = ?1)
                   AND (?2 IS NULL OR correlation_id = ?2)
                   AND (?3 IS NULL OR kind = ?3)
                   AND (?4 IS NULL OR seq < ?4)
                   AND (?6 IS NULL OR seq > ?6)
                   AND (?7 IS NULL OR ts >= ?7)
                 ORDER BY seq DESC LIMIT ?5",
            )
            .map_err(sql("audit"))?;
        let rows = stmt
            .query_map(
                params![
                    query.policy_id.map(|p| p.to_string()),
                    query.correlation_id.map(|c| c.to_string()),
                    query.kind,
                    query.before_seq,
                    i64::try_from(query.limit).unwrap_or(i64::MAX),
                    query.after_seq,
                    query.since.as_ref().map(ts),
                ],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, Option<String>>(4)?,
                        row.get::<_, String>(5)?,
                    ))
                },
            )
            .map_err(sql("audit"))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, ts, correlation_id, kind, policy_id, details) = row.map_err(sql("audit"))?;
            out.push(AuditEntry {
                seq,
                record: AuditRecord {
                    ts: parse_ts(&ts)?,
                    correlation_id: parse_uuid(&correlation_id)?,
                    kind,
                    policy_id: policy_id.as_deref().map(parse_uuid).transpose()?,
                    details: from_json("audit details", &details)?,
                },
            });
        }
        Ok(out)
    }
}

/// Applies engine writes inside a caller's transaction (see
/// [`SqliteStore::with_transaction`]).
pub(super) fn apply_writes(tx: &Transaction<'_>, batch: &[Write]) -> StoreResult<()> {
    batch.iter().try_for_each(|write| apply(tx, write))
}

/// Applies one write inside the batch's transaction.
fn apply(tx: &Transaction<'_>, write: &Write) -> StoreResult<()> {
    match write {
        Write::RecordFire { policy_id, at } => {
            tx.execute(
                "INSERT INTO policy_window (policy_id, last_fired_at) VALUES (?1, ?2)
                 ON CONFLICT (policy_id) DO UPDATE SET last_fired_at = excluded.last_fired_at",
                params![policy_id.to_string(), ts(at)],
            )
            .map_err(sql("record_fire"))?;
        }
        Write::RecordSuppressed { policy_id, at } => {
            tx.execute(
                "INSERT INTO policy_window (policy_id, last_suppressed_at, suppressed_count)
                 VALUES (?1, ?2, 1)
                 ON CONFLICT (policy_id) DO UPDATE SET
                     last_suppressed_at = excluded.last_suppressed_at,
                     suppressed_count = suppressed_count + 1",
                params![policy_id.to_string(), ts(at)],
            )
            .map_err(sql("record_suppressed"))?;
        }
        Write::ClearSuppression { policy_id } => {
            tx.execute(
                "UPDATE policy_window SET last_fired_at = NULL WHERE policy_id = ?1",
                params![policy_id.to_string()],
            )
            .map_err(sql("clear_suppression"))?;
        }
        Write::RecordKey { policy_id, key, at } => {
            tx.execute(
                "INSERT INTO idempotency_keys (key, policy_id, ran_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET
                     policy_id = excluded.policy_id, ran_at = excluded.ran_at",
                params![key, policy_id.to_string(), ts(at)],
            )
            .map_err(sql("record_key"))?;
        }
        Write::ClearKeys { keys } => {
            let mut stmt = tx
                .prepare_cached("DELETE FROM idempotency_keys WHERE key = ?1")
                .map_err(sql("clear_keys"))?;
            for key in keys {
                stmt.execute(params![key]).map_err(sql("clear_keys"))?;
            }
        }
        Write::PruneKeys { before } => {
            tx.execute(
                "DELETE FROM idempotency_keys WHERE ran_at < ?1",
                params![ts(before)],
            )
            .map_err(sql("prune_keys"))?;
        }
        Write::UpsertDeadline(deadline) => {
            tx.execute(
                "INSERT INTO deadlines (policy_id, trigger_index, kind, due_at, state)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (policy_id, trigger_index, kind) DO UPDATE SET
                     due_at = excluded.due_at, state = excluded.state",
                params![
                    deadline.policy_id.to_string(),
                    deadline.trigger_index,
                    deadline.kind.as_str(),
                    ts(&deadline.due_at),
                    to_json("deadline state", &deadline.state)?,
                ],
            )
            .map_err(sql("upsert_deadline"))?;
        }
        Write::RemoveDeadline {
            policy_id,
            trigger_index,
            kind,
        } => {
            tx.execute(
                "DELETE FROM deadlines WHERE policy_id = ?1 AND trigger_index = ?2 AND kind = ?3",
                params![policy_id.to_string(), trigger_index, kind.as_str()],
            )
            .map_err(sql("remove_deadline"))?;
        }
        Write::SetTimerChecked {
            policy_id,
            trigger_index,
            at,
        } => {
            tx.execute(
                "INSERT INTO timer_checks (policy_id, trigger_index, checked_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (policy_id, trigger_index) DO UPDATE SET
                     checked_at = excluded.checked_at",
                params![policy_id.to_string(), trigger_index, ts(at)],
            )
            .map_err(sql("set_timer_checked"))?;
        }
        Write::PersistIntent(intent) => {
            tx.execute(
                "INSERT INTO intents (run_id, action_index, host, policy_id, created_at, intent)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    intent.run_id.to_string(),
                    intent.action_index,
                    intent.host,
                    intent.policy_id.to_string(),
                    ts(&intent.created_at),
                    to_json("intent", intent)?,
                ],
            )
            .map_err(|source| {
                conflict_or(source, "persist_intent", || {
                    format!("intent {} already persisted", describe(&intent.id()))
                })
            })?;
        }
        Write::ReopenIntent(intent) => {
            tx.execute(
                "INSERT INTO intents (run_id, action_index, host, policy_id, created_at, intent)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (run_id, action_index, host) DO UPDATE SET
                     created_at = excluded.created_at, intent = excluded.intent,
                     finished_at = NULL, outcome = NULL",
                params![
                    intent.run_id.to_string(),
                    intent.action_index,
                    intent.host,
                    intent.policy_id.to_string(),
                    ts(&intent.created_at),
                    to_json("intent", intent)?,
                ],
            )
            .map_err(sql("reopen_intent"))?;
        }
        Write::RecordTask { id, task } => update_open_intent(tx, id, "record_task", |intent| {
            let new = !intent.tasks.contains(task);
            if new {
                intent.tasks.push(task.clone());
            }
            new
        })?,
        Write::StartIntent { id, at } => update_open_intent(tx, id, "start_intent", |intent| {
            let new = intent.started_at.is_none();
            if new {
                intent.started_at = Some(*at);
            }
            new
        })?,
        Write::CompleteIntent { id, outcome } => complete_intent(tx, id, outcome)?,
        Write::PruneIntents { before } => {
            tx.execute(
                "DELETE FROM intents WHERE outcome IS NOT NULL AND finished_at < ?1",
                params![ts(before)],
            )
            .map_err(sql("prune_intents"))?;
        }
        Write::AppendRun(run) => append_run(tx, run)?,
        Write::SetKillSwitch(state) => {
            tx.execute(
                "INSERT INTO kill_switch (id, paused, since, by_whom, reason)
                 VALUES (1, ?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET paused = excluded.paused,
                     since = excluded.since, by_whom = excluded.by_whom,
                     reason = excluded.reason",
                params![
                    state.paused,
                    state.since.as_ref().map(ts),
                    state.by,
                    state.reason
                ],
            )
            .map_err(sql("set_kill_switch"))?;
        }
        Write::AppendAudit(record) => insert_audit(tx, record)?,
        Write::AddRestore(entry) => {
            tx.execute(
                "INSERT INTO restore_set (policy_id, host, target, from_state, to_state,
                                          capability, verb, params, run_id, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (policy_id, host, target) DO NOTHING",
                params![
                    entry.policy_id.to_string(),
                    entry.host,
                    entry.target,
                    entry.from,
                    entry.to,
                    entry.capability,
                    entry.verb,
                    to_json("restore params", &entry.params)?,
                    entry.run_id.to_string(),
                    ts(&entry.at)
                ],
            )
            .map_err(sql("add_restore"))?;
        }
        Write::RemoveRestore {
            policy_id,
            host,
            target,
        } => {
            tx.execute(
                "DELETE FROM restore_set WHERE policy_id = ?1 AND host = ?2 AND target = ?3",
                params![policy_id.to_string(), host, target],
            )
            .map_err(sql("remove_restore"))?;
        }
        Write::PutRetry(retry) => put_item_record(
            tx,
            ItemTable::WaitingRetries,
            (retry.run_id, retry.action_index, &retry.host),
            retry,
        )?,
        Write::PutFollowUp(record) => {
            let id = record.intent.id();
            put_item_record(
                tx,
                ItemTable::FollowUps,
                (id.run_id, id.action_index, &id.host),
                record,
            )?;
        }
        Write::RemoveFollowUp { id } => remove_item_record(
            tx,
            ItemTable::FollowUps,
            (id.run_id, id.action_index, &id.host),
        )?,
        Write::RemoveRetry {
            run_id,
            action_index,
            host,
        } => remove_item_record(
            tx,
            ItemTable::WaitingRetries,
            (*run_id, *action_index, host),
        )?,
        Write::SetSubjectState(state) => {
            tx.execute(
                "INSERT INTO subject_states (subject_id, states, at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (subject_id) DO UPDATE SET states = excluded.states, at = excluded.at",
                params![
                    state.id,
                    to_json("subject states", &state.states)?,
                    ts(&state.at)
                ],
            )
            .map_err(sql("set_subject_state"))?;
        }
        Write::SetTriggerState { policy_id, state } => {
            if state.is_null() {
                tx.execute(
                    "DELETE FROM trigger_states WHERE policy_id = ?1",
                    params![policy_id.to_string()],
                )
                .map_err(sql("set_trigger_state"))?;
            } else {
                tx.execute(
                    "INSERT INTO trigger_states (policy_id, state) VALUES (?1, ?2)
                     ON CONFLICT (policy_id) DO UPDATE SET state = excluded.state",
                    params![policy_id.to_string(), to_json("trigger state", state)?],
                )
                .map_err(sql("set_trigger_state"))?;
            }
        }
    }
    Ok(())
}

/// Appends an audit record inside a caller's transaction: the engine's
/// [`Write::AppendAudit`] and the policy store's mutations share it.
pub(super) fn insert_audit(tx: &Transaction<'_>, record: &AuditRecord) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO audit (ts, correlation_id, kind, policy_id, details)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            ts(&record.ts),
            record.correlation_id.to_string(),
            record.kind,
            record.policy_id.map(|p| p.to_string()),
            to_json("audit details", &record.details)?,
        ],
    )
    .map_err(sql("append_audit"))?;
    Ok(())
}

fn complete_intent(
    tx: &Transaction<'_>,
    id: &IntentId,
    outcome: &IntentOutcome,
) -> StoreResult<()> {
    let existing: Option<Option<String>> = tx
        .query_row(
            "SELECT outcome FROM intents WHERE run_id = ?1 AND action_index = ?2 AND host = ?3",
            params![id.run_id.to_string(), id.action_index, id.host],
            |row| row.get(0),
        )
        .optional()
        .map_err(sql("complete_intent"))?;
    match existing {
        None => Err(StoreError::NotFound {
            what: format!("intent {}", describe(id)),
        }),
        Some(Some(_)) => Err(StoreError::Conflict {
            what: format!("intent {} already has an outcome", describe(id)),
        }),
        Some(None) => {
            tx.execute(
                "UPDATE intents SET finished_at = ?4, outcome = ?5
                 WHERE run_id = ?1 AND action_index = ?2 AND host = ?3",
                params![
                    id.run_id.to_string(),
                    id.action_index,
                    id.host,
                    ts(&outcome.finished_at),
                    to_json("intent outcome", outcome)?,
                ],
            )
            .map_err(sql("complete_intent"))?;
            Ok(())
        }
    }
}

fn append_run(tx: &Transaction<'_>, run: &RunRecord) -> StoreResult<()> {
    let policy_id = run.policy_id.to_string();
    tx.execute(
        "INSERT INTO runs (run_id, policy_id, started_at, finished_at, status, successful,
                           correlation_id, run)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            run.run_id.to_string(),
            policy_id,
            ts(&run.started_at),
            ts(&run.finished_at),
            run.status.as_str(),
            run.status.is_successful(),
            run.event.correlation_id.to_string(),
            to_json("run", run)?,
        ],
    )
    .map_err(|source| {
        conflict_or(source, "append_run", || {
            format!("run {} already in the ledger", run.run_id)
        })
    })?;
    tx.execute(
        "DELETE FROM runs WHERE policy_id = ?1 AND seq NOT IN (
             SELECT seq FROM runs WHERE policy_id = ?1
             ORDER BY started_at DESC, seq DESC LIMIT ?2)",
        params![policy_id, LEDGER_RUNS_PER_POLICY as i64],
    )
    .map_err(sql("append_run prune"))?;
    Ok(())
}

fn describe(id: &IntentId) -> String {
    format!("{} action {} on {}", id.run_id, id.action_index, id.host)
}

/// One `restore_set` row as SQLite returns it.
struct RestoreRow {
    policy_id: String,
    host: String,
    target: String,
    from: Option<String>,
    to: Option<String>,
    capability: String,
    verb: String,
    params: String,
    run_id: String,
    at: String,
}

/// Rewrites the document of intent `id` while it has no outcome, when
/// `change` says it changed it; an unknown or finished intent is left as
/// it is.
fn update_open_intent(
    tx: &Transaction<'_>,
    id: &IntentId,
    what: &'static str,
    change: impl FnOnce(&mut IntentRecord) -> bool,
) -> StoreResult<()> {
    let key = params![id.run_id.to_string(), id.action_index, id.host];
    let doc: Option<String> = tx
        .query_row(
            "SELECT intent FROM intents
             WHERE run_id = ?1 AND action_index = ?2 AND host = ?3 AND outcome IS NULL",
            key,
            |row| row.get(0),
        )
        .optional()
        .map_err(sql(what))?;
    let Some(doc) = doc else {
        return Ok(());
    };
    let mut intent: IntentRecord = from_json("intent", &doc)?;
    if change(&mut intent) {
        tx.execute(
            "UPDATE intents SET intent = ?4
             WHERE run_id = ?1 AND action_index = ?2 AND host = ?3",
            params![
                id.run_id.to_string(),
                id.action_index,
                id.host,
                to_json("intent", &intent)?
            ],
        )
        .map_err(sql(what))?;
    }
    Ok(())
}

/// The tables that keep one JSON record per item (run, action, host) of
/// the engine's work: the same columns, the same key.
#[derive(Debug, Clone, Copy)]
enum ItemTable {
    /// Targets waiting for a retry while their trigger holds.
    WaitingRetries,
    /// Targets a restart left to read again.
    FollowUps,
}

/// An item's key: run, action index, host.
type ItemKey<'a> = (Uuid, u32, &'a str);

impl ItemTable {
    fn name(self) -> &'static str {
        match self {
            ItemTable::WaitingRetries => "waiting_retries",
            ItemTable::FollowUps => "follow_ups",
        }
    }

    /// What a record is called in errors.
    fn what(self) -> &'static str {
        match self {
            ItemTable::WaitingRetries => "waiting retry",
            ItemTable::FollowUps => "follow-up",
        }
    }
}

impl SqliteStore {
    /// Every record of `table`, in key order.
    fn item_records<T: serde::de::DeserializeOwned>(
        &self,
        table: ItemTable,
    ) -> StoreResult<Vec<T>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT record FROM {} ORDER BY run_id, action_index, host",
                table.name()
            ))
            .map_err(sql(table.name()))?;
        let rows = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(sql(table.name()))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(from_json(table.what(), &row.map_err(sql(table.name()))?)?);
        }
        Ok(out)
    }
}

/// Adds or replaces the record of `key` in `table`.
fn put_item_record(
    tx: &Transaction<'_>,
    table: ItemTable,
    (run_id, action_index, host): ItemKey<'_>,
    record: &impl serde::Serialize,
) -> StoreResult<()> {
    tx.execute(
        &format!(
            "INSERT INTO {} (run_id, action_index, host, record)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (run_id, action_index, host) DO UPDATE SET record = excluded.record",
            table.name()
        ),
        params![
            run_id.to_string(),
            action_index,
            host,
            to_json(table.what(), record)?
        ],
    )
    .map_err(sql(table.name()))?;
    Ok(())
}

/// Removes the record of `key` from `table`, if there is one.
fn remove_item_record(
    tx: &Transaction<'_>,
    table: ItemTable,
    (run_id, action_index, host): ItemKey<'_>,
) -> StoreResult<()> {
    tx.execute(
        &format!(
            "DELETE FROM {} WHERE run_id = ?1 AND action_index = ?2 AND host = ?3",
            table.name()
        ),
        params![run_id.to_string(), action_index, host],
    )
    .map_err(sql(table.name()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::engine::store::conformance::{appends, check_ledger_cap, conformance_suite};
    use crate::store::{SqliteConfig, SqliteStore, Synchronous};

    fn sqlite_store(synchronous: Synchronous) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = SqliteConfig {
            synchronous,
            ..SqliteConfig::default()
        };
        let store =
            SqliteStore::open_with(dir.path().join("hazel.db"), &config).expect("open store");
        (dir, store)
    }

    conformance_suite!(sqlite, sqlite_store(Synchronous::Full));

    proptest! {
        // Each append is its own transaction on disk; fewer cases keep it quick.
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn the_sqlite_ledger_never_holds_more_than_thirty_runs_per_policy(ops in appends()) {
            let (_dir, store) = sqlite_store(Synchronous::Normal);
            check_ledger_cap(&store, &ops)?;
        }
    }
}
