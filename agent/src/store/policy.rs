//! The service's persistent state (SPEC §9, §10, §12): policies with their
//! version, hash, compiled IR, status and last validation and dry-run; hosts
//! with their connection config (secrets encrypted at rest); the latest
//! inventory snapshot per host; dry-run transcripts.
//!
//! [`PolicyStore`] is implemented by [`SqliteStore`] on the same connection
//! and file as the engine's state. Every mutation is one transaction that
//! also appends its [`AuditRecord`] to the engine's audit log, so a crash
//! mid-write leaves neither a partial policy nor an audit record of a change
//! that did not happen. A policy's executions are the engine's ledger
//! ([`crate::engine::store::EngineStore::runs`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use drivers::secret::Secret;
use inventory::Severity;
use rusqlite::{params, OptionalExtension, Row, Transaction};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::engine_state::insert_audit;
use super::sqlite::{conflict_or, from_json, parse_ts, parse_uuid, sql, to_json, ts};
use super::SqliteStore;
use crate::engine::store::{AuditRecord, StoreError, StoreResult};

/// How many transcripts are kept overall; older ones are pruned when a new
/// one is stored, except the one each policy's `last_dry_run` names.
pub const TRANSCRIPTS_KEPT: usize = 1000;

/// The service's persistent state; see the module docs.
///
/// # Blocking
///
/// Like [`crate::engine::store::EngineStore`], every method may block on disk IO: call it
/// from `tokio::task::spawn_blocking`.
///
/// # Guarantees
///
/// - Every mutation is atomic together with its audit record: on error
///   nothing of it (and no audit record) is stored.
/// - `version_int` is 1 on insert and grows by exactly one per
///   [`PolicyStore::update_policy`]; the value in the record passed in is
///   ignored.
/// - No two stored policies share a hash ([`StoreError::DuplicateHash`]).
/// - Host secrets never reach the disk in clear and never leave the store
///   except in [`HostRecord::secrets`], whose values print masked.
/// - Deleting a policy keeps its history (ledger, audit records,
///   transcripts, whose `policy_id` still names it) and drops its runtime
///   state in the engine tables (window, deadlines, `timer.at` checks,
///   trigger state), so a deleted policy can neither fire nor be suppressed.
pub trait PolicyStore: Send + Sync {
    /// Inserts a new policy with `version_int` 1. A stored policy with the
    /// same hash is [`StoreError::DuplicateHash`]; an existing id is a
    /// [`StoreError::Conflict`].
    fn insert_policy(&self, policy: &PolicyRecord, audit: &AuditRecord) -> StoreResult<()>;

    /// Replaces the name, spec, hash, compiled IR, `enabled_intent`, status,
    /// last validation and `updated_at` of the stored policy `policy.id`,
    /// bumping `version_int` by one, and returns the new version.
    /// `created_at` and `last_dry_run` are kept. A mismatching
    /// `expected_version` is a [`StoreError::Conflict`] (optimistic
    /// concurrency), another policy with the same hash is
    /// [`StoreError::DuplicateHash`], an absent policy is
    /// [`StoreError::NotFound`].
    fn update_policy(
        &self,
        policy: &PolicyRecord,
        expected_version: Option<u64>,
        audit: &AuditRecord,
    ) -> StoreResult<u64>;

    /// Sets a policy's status and `enabled_intent` (enable / disable, or
    /// `invalid` after a manifest or host change); `updated_at` becomes
    /// `audit.ts`. The version is not bumped: the spec did not change.
    fn set_policy_status(
        &self,
        id: Uuid,
        status: PolicyStatus,
        enabled_intent: bool,
        audit: &AuditRecord,
    ) -> StoreResult<()>;

    /// Stores a dry-run's transcript and makes it the policy's
    /// `last_dry_run`, in one transaction.
    fn record_dry_run(
        &self,
        id: Uuid,
        dry_run: &DryRunRecord,
        transcript: &TranscriptRecord,
    ) -> StoreResult<()>;

    /// Deletes a policy (see `# Guarantees` for what is kept); `false` when
    /// it was not stored, in which case no audit record is written.
    fn delete_policy(&self, id: Uuid, audit: &AuditRecord) -> StoreResult<bool>;

    /// One policy.
    fn policy(&self, id: Uuid) -> StoreResult<Option<PolicyRecord>>;

    /// The id of the stored policy with this hash.
    fn policy_by_hash(&self, hash: &str) -> StoreResult<Option<Uuid>>;

    /// Keyset pagination by id ascending: the policies whose id is greater
    /// than `after`, at most `limit` of them.
    fn policies(&self, after: Option<Uuid>, limit: usize) -> StoreResult<Vec<PolicyRecord>>;

    /// How many policies are stored.
    fn count_policies(&self) -> StoreResult<u64>;

    /// Stores a transcript, pruning all but the newest [`TRANSCRIPTS_KEPT`]
    /// (and those a `last_dry_run` names) in the same transaction. An
    /// existing id is a [`StoreError::Conflict`].
    fn put_transcript(&self, transcript: &TranscriptRecord) -> StoreResult<()>;

    /// One transcript, if still kept.
    fn transcript(&self, id: Uuid) -> StoreResult<Option<TranscriptRecord>>;

    /// Inserts or replaces a host (its `created_at` is kept on replace).
    /// Non-empty secrets need a secret key ([`StoreError::SecretKeyMissing`]).
    fn upsert_host(&self, host: &HostRecord, audit: &AuditRecord) -> StoreResult<()>;

    /// One host with its secrets decrypted.
    fn host(&self, id: &str) -> StoreResult<Option<HostRecord>>;

    /// Every host by id, secrets decrypted; one host whose secrets cannot be
    /// decrypted fails the whole call.
    fn hosts(&self) -> StoreResult<Vec<HostRecord>>;

    /// Deletes a host and its inventory snapshot; `false` (and no audit
    /// record) when it was not stored.
    fn delete_host(&self, id: &str, audit: &AuditRecord) -> StoreResult<bool>;

    /// Replaces the host's latest inventory snapshot.
    fn put_inventory_snapshot(
        &self,
        host_id: &str,
        snapshot: &Value,
        ts: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// The host's latest inventory snapshot and when it was taken.
    fn inventory_snapshot(&self, host_id: &str) -> StoreResult<Option<(DateTime<Utc>, Value)>>;
}

/// What runs (SPEC §9): `enabled` only when the user's intent is enabled
/// and the gates pass, `disabled` otherwise, `invalid` when the policy no
/// longer compiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyStatus {
    /// The engine evaluates the policy.
    Enabled,
    /// Stored but not evaluated.
    Disabled,
    /// No longer compiles (a manifest or host changed); not evaluated.
    Invalid,
}

impl PolicyStatus {
    /// The stored and API name.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyStatus::Enabled => "enabled",
            PolicyStatus::Disabled => "disabled",
            PolicyStatus::Invalid => "invalid",
        }
    }

    /// The inverse of [`PolicyStatus::as_str`].
    pub fn parse(text: &str) -> Option<PolicyStatus> {
        match text {
            "enabled" => Some(PolicyStatus::Enabled),
            "disabled" => Some(PolicyStatus::Disabled),
            "invalid" => Some(PolicyStatus::Invalid),
            _ => None,
        }
    }
}

/// The last validation of a policy (SPEC §10 `last_validation`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationRecord {
    /// When it ran.
    pub ts: DateTime<Utc>,
    /// Whether it found no blocker.
    pub ok: bool,
    /// The validate report's `issues` array (each with its `stage`).
    #[serde(default)]
    pub issues: Value,
}

/// The last dry-run of a policy (SPEC §10 `last_dry_run`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRunRecord {
    /// When it ran.
    pub ts: DateTime<Utc>,
    /// Its worst severity.
    pub severity: Severity,
    /// The transcript it produced.
    pub transcript_id: Uuid,
}

/// A stored policy (SPEC §10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// Assigned by the service on create.
    pub id: Uuid,
    /// The spec's name.
    pub name: String,
    /// The spec as the user sent it, parsed to JSON.
    pub spec: Value,
    /// 1 on create; the store bumps it on every update.
    pub version_int: u64,
    /// The canonical hash (`sha256:...`), unique among stored policies.
    pub hash: String,
    /// The compiled IR.
    pub compiled_ir: Value,
    /// The spec's `enabled`: the user's intent.
    pub enabled_intent: bool,
    /// What runs.
    pub status: PolicyStatus,
    /// The last validation, if any.
    pub last_validation: Option<ValidationRecord>,
    /// The last dry-run, if any.
    pub last_dry_run: Option<DryRunRecord>,
    /// When it was first stored.
    pub created_at: DateTime<Utc>,
    /// When it was last changed.
    pub updated_at: DateTime<Utc>,
}

/// Where a host's definition comes from (SPEC §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostSource {
    /// Declared in `hazel.yaml`: re-applied at every start, wins over an
    /// API-created host with the same id.
    Config,
    /// Created through the API; persists only in the store.
    Api,
}

impl HostSource {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            HostSource::Config => "config",
            HostSource::Api => "api",
        }
    }

    /// The inverse of [`HostSource::as_str`].
    pub fn parse(text: &str) -> Option<HostSource> {
        match text {
            "config" => Some(HostSource::Config),
            "api" => Some(HostSource::Api),
            _ => None,
        }
    }
}

/// A stored host: its connection config split into plain fields and
/// secrets (the manifest's `secret: true` fields). Secrets are encrypted on
/// disk and print masked (`Debug`, `Serialize`), so a host record can be
/// logged but must be masked before the API returns it (it never returns
/// secrets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Unique host id (`pve1`).
    pub id: String,
    /// Manifest id of the driver (`proxmox.ve`).
    pub plugin: String,
    /// The non-secret connection fields, stored in clear.
    pub connection: Map<String, Value>,
    /// The secret connection fields; plaintext in memory only.
    pub secrets: BTreeMap<String, Secret>,
    /// Where the definition comes from.
    pub source: HostSource,
    /// When it was first stored (kept on replace).
    pub created_at: DateTime<Utc>,
    /// When it was last written.
    pub updated_at: DateTime<Utc>,
}

/// A dry-run transcript (`GET /api/transcripts/:id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptRecord {
    /// Its id.
    pub id: Uuid,
    /// The policy dry-run, if any (an injected event's dry-run has none).
    pub policy_id: Option<Uuid>,
    /// When it was produced.
    pub created_at: DateTime<Utc>,
    /// Its worst severity.
    pub severity: Severity,
    /// The transcript itself, opaque to the store.
    pub body: Value,
}

impl PolicyStore for SqliteStore {
    fn insert_policy(&self, policy: &PolicyRecord, audit: &AuditRecord) -> StoreResult<()> {
        self.with_transaction(|tx| {
            refuse_duplicate_hash(tx, &policy.hash, policy.id)?;
            tx.execute(
                "INSERT INTO policies (id, name, spec, version_int, hash, compiled_ir,
                     enabled_intent, status, last_validation, last_dry_run, last_transcript_id,
                     created_at, updated_at)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    policy.id.to_string(),
                    policy.name,
                    to_json("policy spec", &policy.spec)?,
                    policy.hash,
                    to_json("compiled ir", &policy.compiled_ir)?,
                    policy.enabled_intent,
                    policy.status.as_str(),
                    optional_json("last validation", policy.last_validation.as_ref())?,
                    optional_json("last dry-run", policy.last_dry_run.as_ref())?,
                    policy
                        .last_dry_run
                        .as_ref()
                        .map(|d| d.transcript_id.to_string()),
                    ts(&policy.created_at),
                    ts(&policy.updated_at),
                ],
            )
            .map_err(|source| {
                conflict_or(source, "insert_policy", || {
                    format!("policy {} already stored", policy.id)
                })
            })?;
            insert_audit(tx, audit)
        })
    }

    fn update_policy(
        &self,
        policy: &PolicyRecord,
        expected_version: Option<u64>,
        audit: &AuditRecord,
    ) -> StoreResult<u64> {
        self.with_transaction(|tx| {
            let current = stored_version(tx, policy.id)?.ok_or_else(|| not_found(policy.id))?;
            if let Some(expected) = expected_version.filter(|&e| e != current) {
                return Err(StoreError::Conflict {
                    what: format!(
                        "policy {} is at version {current}, not {expected}",
                        policy.id
                    ),
                });
            }
            refuse_duplicate_hash(tx, &policy.hash, policy.id)?;
            let next = current + 1;
            tx.execute(
                "UPDATE policies SET name = ?2, spec = ?3, version_int = ?4, hash = ?5,
                     compiled_ir = ?6, enabled_intent = ?7, status = ?8, last_validation = ?9,
                     updated_at = ?10
                 WHERE id = ?1",
                params![
                    policy.id.to_string(),
                    policy.name,
                    to_json("policy spec", &policy.spec)?,
                    version_to_sql(next)?,
                    policy.hash,
                    to_json("compiled ir", &policy.compiled_ir)?,
                    policy.enabled_intent,
                    policy.status.as_str(),
                    optional_json("last validation", policy.last_validation.as_ref())?,
                    ts(&policy.updated_at),
                ],
            )
            .map_err(sql("update_policy"))?;
            insert_audit(tx, audit)?;
            Ok(next)
        })
    }

    fn set_policy_status(
        &self,
        id: Uuid,
        status: PolicyStatus,
        enabled_intent: bool,
        audit: &AuditRecord,
    ) -> StoreResult<()> {
        self.with_transaction(|tx| {
            let changed = tx
                .execute(
                    "UPDATE policies SET status = ?2, enabled_intent = ?3, updated_at = ?4
                     WHERE id = ?1",
                    params![
                        id.to_string(),
                        status.as_str(),
                        enabled_intent,
                        ts(&audit.ts)
                    ],
                )
                .map_err(sql("set_policy_status"))?;
            if changed == 0 {
                return Err(not_found(id));
            }
            insert_audit(tx, audit)
        })
    }

    fn record_dry_run(
        &self,
        id: Uuid,
        dry_run: &DryRunRecord,
        transcript: &TranscriptRecord,
    ) -> StoreResult<()> {
        self.with_transaction(|tx| {
            let changed = tx
                .execute(
                    "UPDATE policies SET last_dry_run = ?2, last_transcript_id = ?3
                     WHERE id = ?1",
                    params![
                        id.to_string(),
                        to_json("last dry-run", dry_run)?,
                        dry_run.transcript_id.to_string(),
                    ],
                )
                .map_err(sql("record_dry_run"))?;
            if changed == 0 {
                return Err(not_found(id));
            }
            insert_transcript(tx, transcript)
        })
    }

    fn delete_policy(&self, id: Uuid, audit: &AuditRecord) -> StoreResult<bool> {
        self.with_transaction(|tx| {
            let id = id.to_string();
            let deleted = tx
                .execute("DELETE FROM policies WHERE id = ?1", params![id])
                .map_err(sql("delete_policy"))?;
            if deleted == 0 {
                return Ok(false);
            }
            for table in [
                "policy_window",
                "deadlines",
                "timer_checks",
                "trigger_states",
            ] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE policy_id = ?1"),
                    params![id],
                )
                .map_err(sql("delete_policy runtime state"))?;
            }
            insert_audit(tx, audit)?;
            Ok(true)
        })
    }

    fn policy(&self, id: Uuid) -> StoreResult<Option<PolicyRecord>> {
        let row = self
            .lock()
            .query_row(
                &format!("SELECT {POLICY_COLUMNS} FROM policies WHERE id = ?1"),
                params![id.to_string()],
                policy_row,
            )
            .optional()
            .map_err(sql("policy"))?;
        row.map(PolicyRow::decode).transpose()
    }

    fn policy_by_hash(&self, hash: &str) -> StoreResult<Option<Uuid>> {
        let id: Option<String> = self
            .lock()
            .query_row(
                "SELECT id FROM policies WHERE hash = ?1",
                params![hash],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql("policy_by_hash"))?;
        id.as_deref().map(parse_uuid).transpose()
    }

    fn policies(&self, after: Option<Uuid>, limit: usize) -> StoreResult<Vec<PolicyRecord>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {POLICY_COLUMNS} FROM policies WHERE (?1 IS NULL OR id > ?1)
                 ORDER BY id LIMIT ?2"
            ))
            .map_err(sql("policies"))?;
        let rows = stmt
            .query_map(
                params![
                    after.map(|a| a.to_string()),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                policy_row,
            )
            .map_err(sql("policies"))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(sql("policies"))?.decode()?);
        }
        Ok(out)
    }

    fn count_policies(&self) -> StoreResult<u64> {
        let count: i64 = self
            .lock()
            .query_row("SELECT COUNT(*) FROM policies", [], |row| row.get(0))
            .map_err(sql("count_policies"))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    fn put_transcript(&self, transcript: &TranscriptRecord) -> StoreResult<()> {
        self.with_transaction(|tx| insert_transcript(tx, transcript))
    }

    fn transcript(&self, id: Uuid) -> StoreResult<Option<TranscriptRecord>> {
        let row = self
            .lock()
            .query_row(
                "SELECT policy_id, created_at, severity, body FROM transcripts WHERE id = ?1",
                params![id.to_string()],
                |row| {
                    Ok((
                        row.get::<_, Option<String>>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(sql("transcript"))?;
        let Some((policy_id, created_at, severity, body)) = row else {
            return Ok(None);
        };
        Ok(Some(TranscriptRecord {
            id,
            policy_id: policy_id.as_deref().map(parse_uuid).transpose()?,
            created_at: parse_ts(&created_at)?,
            severity: parse_severity(&severity)?,
            body: from_json("transcript body", &body)?,
        }))
    }

    fn upsert_host(&self, host: &HostRecord, audit: &AuditRecord) -> StoreResult<()> {
        let secrets = self.seal_secrets(host)?;
        self.with_transaction(|tx| {
            tx.execute(
                "INSERT INTO hosts (id, plugin, connection, secrets, source, created_at,
                     updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id) DO UPDATE SET plugin = excluded.plugin,
                     connection = excluded.connection, secrets = excluded.secrets,
                     source = excluded.source, updated_at = excluded.updated_at",
                params![
                    host.id,
                    host.plugin,
                    to_json("host connection", &host.connection)?,
                    secrets,
                    host.source.as_str(),
                    ts(&host.created_at),
                    ts(&host.updated_at),
                ],
            )
            .map_err(sql("upsert_host"))?;
            insert_audit(tx, audit)
        })
    }

    fn host(&self, id: &str) -> StoreResult<Option<HostRecord>> {
        let row = self
            .lock()
            .query_row(
                &format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id = ?1"),
                params![id],
                host_row,
            )
            .optional()
            .map_err(sql("host"))?;
        row.map(|row| self.decode_host(row)).transpose()
    }

    fn hosts(&self) -> StoreResult<Vec<HostRecord>> {
        let rows = {
            let conn = self.lock();
            let mut stmt = conn
                .prepare(&format!("SELECT {HOST_COLUMNS} FROM hosts ORDER BY id"))
                .map_err(sql("hosts"))?;
            let rows = stmt.query_map([], host_row).map_err(sql("hosts"))?;
            rows.collect::<rusqlite::Result<Vec<HostRow>>>()
                .map_err(sql("hosts"))?
        };
        rows.into_iter().map(|row| self.decode_host(row)).collect()
    }

    fn delete_host(&self, id: &str, audit: &AuditRecord) -> StoreResult<bool> {
        self.with_transaction(|tx| {
            let deleted = tx
                .execute("DELETE FROM hosts WHERE id = ?1", params![id])
                .map_err(sql("delete_host"))?;
            if deleted == 0 {
                return Ok(false);
            }
            tx.execute(
                "DELETE FROM inventory_snapshots WHERE host_id = ?1",
                params![id],
            )
            .map_err(sql("delete_host snapshot"))?;
            insert_audit(tx, audit)?;
            Ok(true)
        })
    }

    fn put_inventory_snapshot(
        &self,
        host_id: &str,
        snapshot: &Value,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let snapshot = to_json("inventory snapshot", snapshot)?;
        self.with_transaction(|tx| {
            tx.execute(
                "INSERT INTO inventory_snapshots (host_id, ts, snapshot) VALUES (?1, ?2, ?3)
                 ON CONFLICT (host_id) DO UPDATE SET ts = excluded.ts,
                     snapshot = excluded.snapshot",
                params![host_id, ts(&at), snapshot],
            )
            .map_err(sql("put_inventory_snapshot"))?;
            Ok(())
        })
    }

    fn inventory_snapshot(&self, host_id: &str) -> StoreResult<Option<(DateTime<Utc>, Value)>> {
        let row = self
            .lock()
            .query_row(
                "SELECT ts, snapshot FROM inventory_snapshots WHERE host_id = ?1",
                params![host_id],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(sql("inventory_snapshot"))?;
        let Some((at, snapshot)) = row else {
            return Ok(None);
        };
        Ok(Some((
            parse_ts(&at)?,
            from_json("inventory snapshot", &snapshot)?,
        )))
    }
}

impl SqliteStore {
    /// Encrypts a host's secrets into one blob; `None` when it has none.
    fn seal_secrets(&self, host: &HostRecord) -> StoreResult<Option<Vec<u8>>> {
        if host.secrets.is_empty() {
            return Ok(None);
        }
        let key = self
            .secret_key()
            .ok_or_else(|| StoreError::SecretKeyMissing {
                host: host.id.clone(),
            })?;
        let plain: BTreeMap<&str, &str> = host
            .secrets
            .iter()
            .map(|(name, secret)| (name.as_str(), secret.expose()))
            .collect();
        let plain = to_json("host secrets", &plain)?;
        key.seal(&host.id, plain.as_bytes())
            .map(Some)
            .ok_or(StoreError::Corrupt {
                what: "host secrets",
                value: "too large to encrypt".into(),
            })
    }

    fn decode_host(&self, row: HostRow) -> StoreResult<HostRecord> {
        let secrets = match row.secrets {
            None => BTreeMap::new(),
            Some(blob) => {
                let key = self
                    .secret_key()
                    .ok_or_else(|| StoreError::SecretKeyMissing {
                        host: row.id.clone(),
                    })?;
                let undecryptable = || StoreError::SecretUndecryptable {
                    host: row.id.clone(),
                };
                let plain = key.open(&row.id, &blob).ok_or_else(undecryptable)?;
                let plain: BTreeMap<String, String> =
                    serde_json::from_slice(&plain).map_err(|_| undecryptable())?;
                plain
                    .into_iter()
                    .map(|(name, value)| (name, Secret::new(value)))
                    .collect()
            }
        };
        Ok(HostRecord {
            plugin: row.plugin,
            connection: from_json("host connection", &row.connection)?,
            secrets,
            source: HostSource::parse(&row.source).ok_or(StoreError::Corrupt {
                what: "hosts.source",
                value: row.source.clone(),
            })?,
            created_at: parse_ts(&row.created_at)?,
            updated_at: parse_ts(&row.updated_at)?,
            id: row.id,
        })
    }
}

const POLICY_COLUMNS: &str = "id, name, spec, version_int, hash, compiled_ir, enabled_intent, \
     status, last_validation, last_dry_run, created_at, updated_at";

/// A `policies` row as stored, decoded outside the row callback so that
/// decoding errors are [`StoreError`]s.
struct PolicyRow {
    id: String,
    name: String,
    spec: String,
    version_int: i64,
    hash: String,
    compiled_ir: String,
    enabled_intent: bool,
    status: String,
    last_validation: Option<String>,
    last_dry_run: Option<String>,
    created_at: String,
    updated_at: String,
}

fn policy_row(row: &Row<'_>) -> rusqlite::Result<PolicyRow> {
    Ok(PolicyRow {
        id: row.get(0)?,
        name: row.get(1)?,
        spec: row.get(2)?,
        version_int: row.get(3)?,
        hash: row.get(4)?,
        compiled_ir: row.get(5)?,
        enabled_intent: row.get(6)?,
        status: row.get(7)?,
        last_validation: row.get(8)?,
        last_dry_run: row.get(9)?,
        created_at: row.get(10)?,
        updated_at: row.get(11)?,
    })
}

impl PolicyRow {
    fn decode(self) -> StoreResult<PolicyRecord> {
        Ok(PolicyRecord {
            id: parse_uuid(&self.id)?,
            name: self.name,
            spec: from_json("policy spec", &self.spec)?,
            version_int: u64::try_from(self.version_int).map_err(|_| StoreError::Corrupt {
                what: "policies.version_int",
                value: self.version_int.to_string(),
            })?,
            hash: self.hash,
            compiled_ir: from_json("compiled ir", &self.compiled_ir)?,
            enabled_intent: self.enabled_intent,
            status: PolicyStatus::parse(&self.status).ok_or(StoreError::Corrupt {
                what: "policies.status",
                value: self.status.clone(),
            })?,
            last_validation: self
                .last_validation
                .as_deref()
                .map(|doc| from_json("last validation", doc))
                .transpose()?,
            last_dry_run: self
                .last_dry_run
                .as_deref()
                .map(|doc| from_json("last dry-run", doc))
                .transpose()?,
            created_at: parse_ts(&self.created_at)?,
            updated_at: parse_ts(&self.updated_at)?,
        })
    }
}

const HOST_COLUMNS: &str = "id, plugin, connection, secrets, source, created_at, updated_at";

/// A `hosts` row as stored, secrets still sealed.
struct HostRow {
    id: String,
    plugin: String,
    connection: String,
    secrets: Option<Vec<u8>>,
    source: String,
    created_at: String,
    updated_at: String,
}

fn host_row(row: &Row<'_>) -> rusqlite::Result<HostRow> {
    Ok(HostRow {
        id: row.get(0)?,
        plugin: row.get(1)?,
        connection: row.get(2)?,
        secrets: row.get(3)?,
        source: row.get(4)?,
        created_at: row.get(5)?,
        updated_at: row.get(6)?,
    })
}

/// [`StoreError::DuplicateHash`] when a policy other than `id` has `hash`.
fn refuse_duplicate_hash(tx: &Transaction<'_>, hash: &str, id: Uuid) -> StoreResult<()> {
    let existing: Option<String> = tx
        .query_row(
            "SELECT id FROM policies WHERE hash = ?1 AND id <> ?2",
            params![hash, id.to_string()],
            |row| row.get(0),
        )
        .optional()
        .map_err(sql("policy hash lookup"))?;
    match existing {
        Some(existing) => Err(StoreError::DuplicateHash {
            existing_id: parse_uuid(&existing)?,
        }),
        None => Ok(()),
    }
}

fn stored_version(tx: &Transaction<'_>, id: Uuid) -> StoreResult<Option<u64>> {
    let version: Option<i64> = tx
        .query_row(
            "SELECT version_int FROM policies WHERE id = ?1",
            params![id.to_string()],
            |row| row.get(0),
        )
        .optional()
        .map_err(sql("policy version"))?;
    version
        .map(|v| {
            u64::try_from(v).map_err(|_| StoreError::Corrupt {
                what: "policies.version_int",
                value: v.to_string(),
            })
        })
        .transpose()
}

fn version_to_sql(version: u64) -> StoreResult<i64> {
    i64::try_from(version).map_err(|_| StoreError::Corrupt {
        what: "policies.version_int",
        value: version.to_string(),
    })
}

/// Inserts a transcript and prunes the oldest beyond [`TRANSCRIPTS_KEPT`],
/// sparing those a policy's `last_dry_run` names.
fn insert_transcript(tx: &Transaction<'_>, transcript: &TranscriptRecord) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO transcripts (id, policy_id, created_at, severity, body)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            transcript.id.to_string(),
            transcript.policy_id.map(|p| p.to_string()),
            ts(&transcript.created_at),
            transcript.severity.as_str(),
            to_json("transcript body", &transcript.body)?,
        ],
    )
    .map_err(|source| {
        conflict_or(source, "put_transcript", || {
            format!("transcript {} already stored", transcript.id)
        })
    })?;
    tx.execute(
        "DELETE FROM transcripts
         WHERE seq NOT IN (SELECT seq FROM transcripts ORDER BY seq DESC LIMIT ?1)
           AND id NOT IN (SELECT last_transcript_id FROM policies
                          WHERE last_transcript_id IS NOT NULL)",
        params![TRANSCRIPTS_KEPT as i64],
    )
    .map_err(sql("put_transcript prune"))?;
    Ok(())
}

fn optional_json<T: Serialize>(
    what: &'static str,
    value: Option<&T>,
) -> StoreResult<Option<String>> {
    value.map(|v| to_json(what, v)).transpose()
}

fn parse_severity(text: &str) -> StoreResult<Severity> {
    serde_json::from_value(Value::String(text.to_owned())).map_err(|_| StoreError::Corrupt {
        what: "severity",
        value: text.to_owned(),
    })
}

fn not_found(id: Uuid) -> StoreError {
    StoreError::NotFound {
        what: format!("policy {id}"),
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
