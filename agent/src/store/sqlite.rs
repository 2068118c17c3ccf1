//! The embedded SQLite store: one database file in the data directory, WAL
//! journal, versioned migrations (the engine's tables and the service's),
//! one connection shared by the engine's state and the service's.
//!
//! Timestamps are stored as RFC 3339 text with nine fraction digits and `Z`,
//! which sorts as text in time order and round-trips exactly. Records with a
//! nested shape (intents, runs) are stored as JSON next to the columns that
//! are indexed or filtered on.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, ErrorCode, Transaction, TransactionBehavior};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use super::SecretKey;
use crate::engine::store::{StoreError, StoreResult};

/// How the store opens its database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteConfig {
    /// How long a statement waits for a lock held by another connection
    /// before failing with a retryable error.
    pub busy_timeout: Duration,
    /// The durability of a commit.
    pub synchronous: Synchronous,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            busy_timeout: default_busy_timeout(),
            synchronous: Synchronous::Full,
        }
    }
}

fn default_busy_timeout() -> Duration {
    Duration::from_secs(5)
}

/// SQLite's `synchronous` setting.
///
/// The default is `Full`: with WAL, `Normal` keeps the database consistent
/// but may lose the last commits on a power loss, and power loss is the
/// event Hazel exists for. An intent written just before the agent powers
/// off a host (or its own) must survive, or the restart would not know the
/// action ran. `Full` costs one `fsync` of the WAL per commit; persistence is
/// off the event hot path, so that is cheap. `Normal` is for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    Full,
    Normal,
}

/// The agent's database, and the embedded SQLite implementation of
/// [`EngineStore`](crate::engine::store::EngineStore).
///
/// One connection behind a mutex: writes are serialized anyway, and the
/// engine reaches the store from `spawn_blocking`. Other processes (a CLI
/// reading the ledger) may open the same file; WAL lets them read while the
/// agent writes.
///
/// The same store implements [`super::PolicyStore`] (policies, hosts,
/// transcripts, inventory snapshots). Host secrets are encrypted with the
/// key given to [`SqliteStore::set_secret_key`]; without one, a host with
/// secrets can be neither written nor read.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    secret_key: RwLock<Option<SecretKey>>,
    /// Why the last write failed, if it did; cleared by the next write
    /// that commits. `/readyz` reports it.
    write_failure: Mutex<Option<String>>,
    /// Writes that failed on the disk (full, read-only, I/O) since start.
    write_failures: AtomicU64,
    /// A failure every write reports instead of writing (fault tests).
    injected: Mutex<Option<String>>,
    /// The data directory's marker, kept in step with the generation when
    /// the store was opened through [`super::open_data_dir`].
    pub(super) marker: Option<super::data_dir::MarkerSync>,
    /// Commits since the last checkpoint; SQLite's own automatic
    /// checkpoint is off so that every checkpoint is followed by a bump of
    /// the generation (see [`SqliteStore::checkpoint`]).
    writes_since_checkpoint: AtomicU64,
    /// The data directory's lock, held while the store is open.
    pub(super) dir_lock: Option<std::fs::File>,
}

/// Commits between two checkpoints of the WAL into the database file.
pub const CHECKPOINT_EVERY_WRITES: u64 = 1000;

/// How a checkpoint treats readers of the WAL.
#[derive(Debug, Clone, Copy)]
enum Checkpoint {
    /// Copies what no reader needs and never waits (the periodic one, in
    /// the commit path). When every frame was copied, the next commit
    /// starts the WAL from its beginning, and `journal_size_limit` cuts the
    /// file back.
    Passive,
    /// Waits for readers (up to the busy timeout), copies everything and
    /// truncates the WAL to zero bytes (at open, after a restore).
    Truncate,
}

/// The size the WAL file is cut back to when it restarts from its
/// beginning after a complete checkpoint.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// The database's identity and generation (table `store_identity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreIdentity {
    /// Random at creation; the same in every backup of the database.
    pub db_id: Uuid,
    /// Bumped by the first commit after each checkpoint.
    pub generation: u64,
}

/// One schema migration. Append new ones at the end, never edit applied ones:
/// the service's tables (policies, hosts, inventory snapshots, transcripts)
/// arrive as version 2 and up, each applied in its own transaction.
struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "engine state",
        sql: r#"
CREATE TABLE policy_window (
    policy_id TEXT PRIMARY KEY,
    last_fired_at TEXT,
    last_suppressed_at TEXT,
    suppressed_count INTEGER NOT NULL DEFAULT 0 CHECK (suppressed_count >= 0)
) STRICT;

CREATE TABLE idempotency_keys (
    key TEXT PRIMARY KEY,
    policy_id TEXT NOT NULL,
    ran_at TEXT NOT NULL
) STRICT;
CREATE INDEX idempotency_keys_ran_at ON idempotency_keys (ran_at);

CREATE TABLE deadlines (
    policy_id TEXT NOT NULL,
    trigger_index INTEGER NOT NULL CHECK (trigger_index >= 0),
    kind TEXT NOT NULL CHECK (kind IN ('for', 'after')),
    due_at TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (policy_id, trigger_index, kind)
) STRICT;

CREATE TABLE timer_checks (
    policy_id TEXT NOT NULL,
    trigger_index INTEGER NOT NULL CHECK (trigger_index >= 0),
    checked_at TEXT NOT NULL,
    PRIMARY KEY (policy_id, trigger_index)
) STRICT;

CREATE TABLE intents (
    run_id TEXT NOT NULL,
    action_index INTEGER NOT NULL CHECK (action_index >= 0),
    host TEXT NOT NULL,
    policy_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    intent TEXT NOT NULL,
    finished_at TEXT,
    outcome TEXT,
    PRIMARY KEY (run_id, action_index, host)
) STRICT;
CREATE INDEX intents_open ON intents (created_at) WHERE outcome IS NULL;

CREATE TABLE runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    policy_id TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    status TEXT NOT NULL,
    successful INTEGER NOT NULL CHECK (successful IN (0, 1)),
    correlation_id TEXT NOT NULL,
    run TEXT NOT NULL
) STRICT;
CREATE INDEX runs_policy_newest ON runs (policy_id, started_at DESC, seq DESC);

CREATE TABLE kill_switch (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    paused INTEGER NOT NULL CHECK (paused IN (0, 1)),
    since TEXT,
    by_whom TEXT,
    reason TEXT
) STRICT;

CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    policy_id TEXT,
    details TEXT NOT NULL
) STRICT;
CREATE INDEX audit_policy ON audit (policy_id, seq);
CREATE INDEX audit_correlation ON audit (correlation_id, seq);
"#,
    },
    Migration {
        version: 2,
        name: "service state",
        sql: r#"
CREATE TABLE policies (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    version_int INTEGER NOT NULL CHECK (version_int >= 1),
    hash TEXT NOT NULL UNIQUE,
    compiled_ir TEXT NOT NULL,
    enabled_intent INTEGER NOT NULL CHECK (enabled_intent IN (0, 1)),
    status TEXT NOT NULL CHECK (status IN ('enabled', 'disabled', 'invalid')),
    last_validation TEXT,
    last_dry_run TEXT,
    last_transcript_id TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

CREATE TABLE transcripts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    policy_id TEXT,
    created_at TEXT NOT NULL,
    severity TEXT NOT NULL,
    body TEXT NOT NULL
) STRICT;

CREATE TABLE hosts (
    id TEXT PRIMARY KEY,
    plugin TEXT NOT NULL,
    connection TEXT NOT NULL,
    secrets BLOB,
    source TEXT NOT NULL CHECK (source IN ('config', 'api')),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

CREATE TABLE inventory_snapshots (
    host_id TEXT PRIMARY KEY,
    ts TEXT NOT NULL,
    snapshot TEXT NOT NULL
) STRICT;
"#,
    },
    Migration {
        version: 3,
        name: "trigger state",
        sql: r#"
CREATE TABLE trigger_states (
    policy_id TEXT PRIMARY KEY,
    state TEXT NOT NULL
) STRICT;
"#,
    },
    Migration {
        version: 4,
        name: "subject states",
        sql: r#"
CREATE TABLE subject_states (
    subject_id TEXT PRIMARY KEY,
    states TEXT NOT NULL,
    at TEXT NOT NULL
) STRICT;
"#,
    },
    Migration {
        version: 5,
        name: "idempotency keys with the host id",
        sql: KEYS_WITH_HOST,
    },
    Migration {
        version: 6,
        name: "restore sets",
        sql: r#"
CREATE TABLE restore_set (
    policy_id TEXT NOT NULL,
    host TEXT NOT NULL,
    target TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT,
    capability TEXT NOT NULL,
    verb TEXT NOT NULL,
    params TEXT NOT NULL,
    run_id TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (policy_id, host, target)
) STRICT;
"#,
    },
    Migration {
        version: 7,
        name: "waiting retries",
        sql: r#"
CREATE TABLE waiting_retries (
    run_id TEXT NOT NULL,
    action_index INTEGER NOT NULL,
    host TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, action_index, host)
) STRICT;
"#,
    },
    Migration {
        version: 8,
        name: "follow-up reads",
        sql: r#"
CREATE TABLE follow_ups (
    run_id TEXT NOT NULL,
    action_index INTEGER NOT NULL,
    host TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, action_index, host)
) STRICT;
"#,
    },
    // The web console's local accounts (SPEC §9): an argon2 PHC string per
    // user, never the password. Sessions live in memory only.
    Migration {
        version: 9,
        name: "console users",
        sql: r#"
CREATE TABLE console_users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;
"#,
    },
    Migration {
        version: 10,
        name: "store identity",
        sql: STORE_IDENTITY,
    },
];

/// Version 10: the database's identity (a random UUID, the same in every
/// backup of it) and its generation, which the first commit after each
/// checkpoint bumps. The data directory's marker (`hazel.id`) records both,
/// so a database replaced by another agent's, or one that lost the commits
/// its `-wal` file held, is told apart at start (see `data_dir`).
const STORE_IDENTITY: &str = r#"
CREATE TABLE store_identity (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    db_id TEXT NOT NULL,
    generation INTEGER NOT NULL CHECK (generation >= 0),
    created_at TEXT NOT NULL
) STRICT;
INSERT INTO store_identity (id, db_id, generation, created_at)
SELECT 1,
       lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4'
           || substr(lower(hex(randomblob(2))), 2) || '-'
           || substr('89ab', 1 + (abs(random()) % 4), 1)
           || substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))),
       0,
       strftime('%Y-%m-%dT%H:%M:%fZ', 'now');
"#;

/// Version 5: SPEC §5 keys carry the host id (`pve-01/proxmox.vm:...`),
/// and a key written before is the new key without its `host/` prefix. Each
/// stored key gets the host of the policy that recorded it (the compiled
/// IR's `targets.host_id`), so its window survives the upgrade. A key whose
/// policy is gone, or has no compiled IR naming a host, cannot be given
/// one: it is dropped, and one `store.keys_migrated` audit record says how
/// many keys were rewritten and dropped and why, so nothing is lost
/// silently. Dropping a key can at worst let its action run once more
/// inside its old window; the suppression window still holds.
const KEYS_WITH_HOST: &str = r#"
CREATE TEMP TABLE keys_host AS
    SELECT k.key AS key,
           (SELECT json_extract(p.compiled_ir, '$.targets.host_id')
              FROM policies p
             WHERE p.id = k.policy_id AND json_valid(p.compiled_ir)) AS host
      FROM idempotency_keys k;
INSERT INTO audit (ts, correlation_id, kind, policy_id, details)
SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
       '00000000-0000-0000-0000-000000000000',
       'store.keys_migrated',
       NULL,
       json_object(
           'rewritten', (SELECT COUNT(*) FROM keys_host WHERE typeof(host) = 'text' AND host <> ''),
           'dropped', (SELECT COUNT(*) FROM keys_host WHERE typeof(host) <> 'text' OR host = ''),
           'reason', 'idempotency keys now start with the host id (SPEC §5); each stored key got the host of the policy that recorded it, and keys whose policy is gone or names no host were dropped'
       )
 WHERE EXISTS (SELECT 1 FROM keys_host);
DELETE FROM idempotency_keys
 WHERE key IN (SELECT key FROM keys_host WHERE typeof(host) <> 'text' OR host = '');
UPDATE idempotency_keys
   SET key = (SELECT host FROM keys_host h WHERE h.key = idempotency_keys.key) || '/' || key;
DROP TABLE keys_host;
"#;

/// The version of every known migration, in order (for tests that build
/// an older schema).
#[cfg(test)]
pub(super) fn migration_versions() -> Vec<u32> {
    MIGRATIONS.iter().map(|m| m.version).collect()
}

/// Runs one migration's SQL again on an open store, as an upgrade from the
/// version before it would (for tests of data migrations, independent of
/// the migrations that come after it).
#[cfg(test)]
pub(super) fn rerun_migration(store: &SqliteStore, version: u32) -> rusqlite::Result<()> {
    let migration = MIGRATIONS
        .iter()
        .find(|m| m.version == version)
        .expect("a known migration");
    store.lock().execute_batch(migration.sql)
}

impl SqliteStore {
    /// The database file's name inside the agent's data directory.
    pub const DEFAULT_FILE_NAME: &'static str = "hazel.db";

    /// Opens (creating if needed) the store at `path` with the default
    /// [`SqliteConfig`], and brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> StoreResult<SqliteStore> {
        SqliteStore::open_with(path, &SqliteConfig::default())
    }

    /// Opens the store at `path` with `config`.
    pub fn open_with(path: impl AsRef<Path>, config: &SqliteConfig) -> StoreResult<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
            // SQLite's own word for this is "unable to open database file".
            check_writable(dir, &path)?;
        }
        let mut conn = Connection::open(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        configure(&conn, config)?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            path,
            conn: Mutex::new(conn),
            secret_key: RwLock::new(None),
            write_failure: Mutex::new(None),
            write_failures: AtomicU64::new(0),
            injected: Mutex::new(None),
            marker: None,
            writes_since_checkpoint: AtomicU64::new(0),
            dir_lock: None,
        })
    }

    /// The database's identity and generation.
    pub fn identity(&self) -> StoreResult<StoreIdentity> {
        read_identity(&self.lock())
    }

    /// Copies the WAL into the database file and truncates it, then makes
    /// the next commit bump the generation (and the marker with it). Until
    /// a commit after the checkpoint is acknowledged, the database file
    /// alone holds everything; from then on, losing the `-wal` file leaves
    /// the file's generation behind the marker's, which start refuses.
    /// SQLite's automatic checkpoint is off: this runs at open and after a
    /// restore. It waits (up to the busy timeout) for readers to leave the
    /// WAL so it can truncate it.
    pub fn checkpoint(&self) -> StoreResult<()> {
        let conn = self.lock();
        self.checkpoint_locked(&conn, Checkpoint::Truncate)
    }

    fn checkpoint_locked(&self, conn: &Connection, mode: Checkpoint) -> StoreResult<()> {
        self.writes_since_checkpoint.store(0, Ordering::Relaxed);
        // A partial checkpoint (a reader holds old frames) still copied
        // some frames: the next commit must bump either way.
        if let Some(marker) = &self.marker {
            marker.needs_bump();
        }
        let pragma = match mode {
            Checkpoint::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
            Checkpoint::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        };
        let (busy, log, done): (i64, i64, i64) = conn
            .query_row(pragma, [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .map_err(sql("checkpoint"))?;
        // TRUNCATE reports a reader it waited out in vain as `busy`;
        // PASSIVE never waits and copies fewer frames than the log holds.
        if busy != 0 || done < log {
            tracing::debug!(
                log,
                done,
                "store checkpoint partial: a reader holds the WAL"
            );
        }
        Ok(())
    }

    /// Sets the key that encrypts host secrets at rest (replacing any
    /// previous one). Secrets already stored under another key stay
    /// encrypted with it and read back as [`StoreError::SecretUndecryptable`].
    pub fn set_secret_key(&self, key: SecretKey) {
        *self
            .secret_key
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(key);
    }

    /// Whether a secret key is set.
    pub fn has_secret_key(&self) -> bool {
        self.secret_key
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some()
    }

    /// The secret key, for the policy store's host secrets.
    pub(super) fn secret_key(&self) -> Option<SecretKey> {
        self.secret_key
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The highest applied migration.
    pub fn schema_version(&self) -> StoreResult<u32> {
        applied_version(&self.lock()).map_err(sql("schema_version"))
    }

    /// The journal mode in effect (`wal`).
    pub fn journal_mode(&self) -> StoreResult<String> {
        self.lock()
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .map_err(sql("journal_mode"))
    }

    /// Runs `f` in one `IMMEDIATE` transaction, committed when `f` returns
    /// `Ok` and rolled back otherwise. This is the extension point for the
    /// service's stores (policies, hosts, transcripts) on the same file: their
    /// writes, and the engine's writes applied with `apply_writes`, can share
    /// one transaction.
    pub(super) fn with_transaction<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let result = self.transaction_unrecorded(f);
        self.record_write(result.as_ref().err());
        result
    }

    fn transaction_unrecorded<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        if let Some(reason) = lock_plain(&self.injected).clone() {
            return Err(injected_failure(reason));
        }
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin"))?;
        let value = f(&tx)?;
        let bumped = match &self.marker {
            Some(marker) if marker.wants_bump() => Some(bump_generation(&tx)?),
            _ => None,
        };
        tx.commit().map_err(sql("commit"))?;
        if let (Some(identity), Some(marker)) = (bumped, &self.marker) {
            // After the commit: a crash in between leaves the marker one
            // generation behind the database, which start accepts.
            marker.record(&conn, &self.path, identity);
        }
        // The periodic checkpoint runs inside the commit path, under the
        // store's lock: it must never wait. A reader (`hazel backup`'s
        // snapshot, say) keeps its frames in the WAL until the next one.
        if self.writes_since_checkpoint.fetch_add(1, Ordering::Relaxed) + 1
            >= CHECKPOINT_EVERY_WRITES
        {
            if let Err(e) = self.checkpoint_locked(&conn, Checkpoint::Passive) {
                tracing::warn!(error = %error_chain(&e), "store checkpoint failed");
            }
        }
        Ok(value)
    }

    /// Keeps the outcome of a write for [`SqliteStore::check_writable`]:
    /// a failure of the disk (full, read-only, I/O, locked) is remembered
    /// and counted; a commit clears it. Refusals about the data (a
    /// conflict, a missing row) say nothing about the disk.
    fn record_write(&self, error: Option<&StoreError>) {
        match error {
            None => *lock_plain(&self.write_failure) = None,
            Some(e) if is_disk_failure(e) => {
                self.write_failures.fetch_add(1, Ordering::Relaxed);
                let reason = error_chain(e);
                tracing::error!(error = %reason, "store write failed");
                *lock_plain(&self.write_failure) = Some(reason);
            }
            Some(_) => {}
        }
    }

    /// Whether the store can write now: `Err` with the reason when it
    /// cannot. Cheap while writes succeed (`BEGIN IMMEDIATE; ROLLBACK`
    /// takes the write lock and catches a read-only file); after a failed
    /// write, a real one (the header's `user_version`, rewritten with its
    /// value) is committed to see whether the disk has recovered.
    pub fn check_writable(&self) -> Result<(), String> {
        let failed = lock_plain(&self.write_failure).is_some();
        let result = self.transaction_unrecorded(|tx| {
            if failed {
                let version: i64 = tx
                    .query_row("PRAGMA user_version", [], |row| row.get(0))
                    .map_err(sql("probe"))?;
                tx.execute_batch(&format!("PRAGMA user_version = {version}"))
                    .map_err(sql("probe"))?;
                Ok(())
            } else {
                // Rolled back on drop: nothing is written.
                Err(StoreError::NotFound {
                    what: "probe rollback".into(),
                })
            }
        });
        match result {
            Ok(()) | Err(StoreError::NotFound { .. }) if !failed => Ok(()),
            Ok(()) => {
                self.record_write(None);
                Ok(())
            }
            Err(e) => {
                if is_disk_failure(&e) {
                    self.record_write(Some(&e));
                }
                Err(lock_plain(&self.write_failure)
                    .clone()
                    .unwrap_or_else(|| error_chain(&e)))
            }
        }
    }

    /// Writes that failed on the disk since the store opened.
    pub fn write_failures(&self) -> u64 {
        self.write_failures.load(Ordering::Relaxed)
    }

    /// Updates of the data directory's marker that failed since the store
    /// opened (0 for a store opened without its data directory).
    pub fn marker_write_failures(&self) -> u64 {
        self.marker.as_ref().map_or(0, |m| m.failures())
    }

    /// Makes every write fail with `reason` (a full disk, as SQLite reports
    /// it) until called with `None`: for fault tests of readiness and the
    /// kill switch where a full filesystem cannot be mounted.
    #[doc(hidden)]
    pub fn inject_write_failure(&self, reason: Option<&str>) {
        *lock_plain(&self.injected) = reason.map(str::to_string);
    }

    // A poisoned lock is safe to reuse: a panic mid-transaction drops the
    // `Transaction`, which rolls back.
    pub(super) fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Reads the identity row (written by migration 10).
pub(super) fn read_identity(conn: &Connection) -> StoreResult<StoreIdentity> {
    let (id, generation): (String, i64) = conn
        .query_row(
            "SELECT db_id, generation FROM store_identity WHERE id = 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(sql("identity"))?;
    Ok(StoreIdentity {
        db_id: parse_uuid(&id)?,
        generation: u64::try_from(generation).map_err(|_| StoreError::Corrupt {
            what: "generation",
            value: generation.to_string(),
        })?,
    })
}

/// Bumps the generation inside `tx` and returns the new identity.
pub(super) fn bump_generation(tx: &Connection) -> StoreResult<StoreIdentity> {
    tx.execute(
        "UPDATE store_identity SET generation = generation + 1 WHERE id = 1",
        [],
    )
    .map_err(sql("generation"))?;
    read_identity(tx)
}

fn lock_plain<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn injected_failure(reason: String) -> StoreError {
    StoreError::Sqlite {
        op: "commit",
        source: rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some(reason),
        ),
    }
}

/// Whether `e` says the disk cannot take writes (rather than refusing the
/// data).
fn is_disk_failure(e: &StoreError) -> bool {
    match e {
        StoreError::Sqlite { source, .. } => matches!(
            source.sqlite_error_code(),
            Some(
                ErrorCode::DiskFull
                    | ErrorCode::ReadOnly
                    | ErrorCode::SystemIoFailure
                    | ErrorCode::CannotOpen
                    | ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
                    | ErrorCode::DatabaseCorrupt
                    | ErrorCode::PermissionDenied
            )
        ),
        _ => false,
    }
}

pub(super) use crate::error_chain;

/// Refuses, with a message that says so, a data directory or database file
/// the agent cannot write.
pub(super) fn check_writable(dir: &Path, db: &Path) -> StoreResult<()> {
    let read_only = |path: &Path, source: std::io::Error| StoreError::ReadOnly {
        path: path.to_path_buf(),
        source,
    };
    let probe = dir.join(".hazel-write-check");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .map_err(|e| read_only(dir, e))?;
    let _ = std::fs::remove_file(&probe);
    if db.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(db)
            .map_err(|e| read_only(db, e))?;
    }
    Ok(())
}

fn configure(conn: &Connection, config: &SqliteConfig) -> StoreResult<()> {
    conn.busy_timeout(config.busy_timeout)
        .map_err(|source| StoreError::Configure {
            setting: "busy_timeout",
            source,
        })?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|source| StoreError::Configure {
            setting: "journal_mode",
            source,
        })?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NoWal { mode });
    }
    let synchronous = match config.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(|source| StoreError::Configure {
            setting: "synchronous",
            source,
        })?;
    // Checkpoints are the store's own (`SqliteStore::checkpoint`), each
    // followed by a bump of the generation.
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(|source| StoreError::Configure {
            setting: "wal_autocheckpoint",
            source,
        })?;
    conn.query_row(
        &format!("PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}"),
        [],
        |row| row.get::<_, i64>(0),
    )
    .map_err(|source| StoreError::Configure {
        setting: "journal_size_limit",
        source,
    })?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(|source| StoreError::Configure {
            setting: "foreign_keys",
            source,
        })?;
    Ok(())
}

fn applied_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |row| row.get(0),
    )
}

/// Applies every pending migration, each in its own transaction together
/// with its row in `schema_migrations`.
fn migrate(conn: &mut Connection) -> StoreResult<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at TEXT NOT NULL
        ) STRICT;",
    )
    .map_err(|source| StoreError::Migrate {
        version: 0,
        name: "schema_migrations",
        source,
    })?;
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    for migration in MIGRATIONS {
        let fail = |source| StoreError::Migrate {
            version: migration.version,
            name: migration.name,
            source,
        };
        // IMMEDIATE: two agents starting on one file do not both migrate.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        let found = applied_version(&tx).map_err(fail)?;
        if found > known {
            return Err(StoreError::SchemaTooNew { found, known });
        }
        if found >= migration.version {
            continue;
        }
        tx.execute_batch(migration.sql).map_err(fail)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![migration.version, migration.name, ts(&Utc::now())],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)?;
    }
    Ok(())
}

pub(super) fn json_column<P: rusqlite::Params>(
    conn: &Connection,
    op: &'static str,
    query: &str,
    params: P,
) -> StoreResult<Vec<String>> {
    let mut stmt = conn.prepare(query).map_err(sql(op))?;
    let rows = stmt.query_map(params, |row| row.get(0)).map_err(sql(op))?;
    rows.collect::<rusqlite::Result<Vec<String>>>()
        .map_err(sql(op))
}

pub(super) fn sql(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { op, source }
}

pub(super) fn conflict_or(
    source: rusqlite::Error,
    op: &'static str,
    what: impl FnOnce() -> String,
) -> StoreError {
    if source.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) {
        StoreError::Conflict { what: what() }
    } else {
        StoreError::Sqlite { op, source }
    }
}

/// Fixed-width RFC 3339 (nanoseconds, `Z`): text order is time order.
pub(super) fn ts(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

pub(super) fn parse_ts(text: &str) -> StoreResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| StoreError::Corrupt {
            what: "timestamp",
            value: text.to_owned(),
        })
}

pub(super) fn parse_uuid(text: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(text).map_err(|_| StoreError::Corrupt {
        what: "uuid",
        value: text.to_owned(),
    })
}

pub(super) fn to_json<T: Serialize + ?Sized>(what: &'static str, value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|source| StoreError::Json { what, source })
}

pub(super) fn from_json<T: DeserializeOwned>(what: &'static str, text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|source| StoreError::Json { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::conformance::{intent, run};
    use crate::engine::store::*;

    #[test]
    fn a_failed_write_makes_the_store_unwritable_until_a_write_commits_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("hazel.db")).unwrap();
        assert_eq!(store.check_writable(), Ok(()));
        store.inject_write_failure(Some("database or disk is full"));
        let write = store.with_transaction(|_| Ok(()));
        assert!(write.is_err());
        assert_eq!(store.write_failures(), 1);
        let reason = store.check_writable().unwrap_err();
        assert!(reason.contains("disk is full"), "{reason}");
        store.inject_write_failure(None);
        // The probe writes for real once a write has failed, and clears it.
        assert_eq!(store.check_writable(), Ok(()));
        assert_eq!(store.check_writable(), Ok(()));
    }

    #[test]
    fn a_refused_record_says_nothing_about_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("hazel.db")).unwrap();
        let refused: StoreResult<()> = store.with_transaction(|_| {
            Err(StoreError::Conflict {
                what: "taken".into(),
            })
        });
        assert!(refused.is_err());
        assert_eq!(store.write_failures(), 0);
        assert_eq!(store.check_writable(), Ok(()));
    }

    fn temp_store() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("data").join("hazel.db");
        (dir, path)
    }

    #[test]
    fn wal_mode_is_on_with_full_sync_and_foreign_keys() {
        let (_dir, path) = temp_store();
        let store = SqliteStore::open(&path).expect("open");
        assert_eq!(store.journal_mode().expect("journal mode"), "wal");
        let conn = store.lock();
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .expect("sync");
        assert_eq!(sync, 2, "synchronous=FULL");
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .expect("fk");
        assert_eq!(fk, 1);
    }

    #[test]
    fn migrations_are_recorded_once_and_reopening_applies_none_again() {
        let (_dir, path) = temp_store();
        let known = MIGRATIONS.last().map(|m| m.version).expect("migrations");
        let store = SqliteStore::open(&path).expect("open");
        assert_eq!(store.schema_version().expect("version"), known);
        drop(store);
        let store = SqliteStore::open(&path).expect("reopen");
        let rows: i64 = store
            .lock()
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_schema_newer_than_the_agent_is_refused() {
        let (_dir, path) = temp_store();
        let store = SqliteStore::open(&path).expect("open");
        store
            .lock()
            .execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', 'x')",
                [],
            )
            .expect("insert");
        drop(store);
        let err = SqliteStore::open(&path).expect_err("newer schema");
        assert!(
            matches!(err, StoreError::SchemaTooNew { found: 999, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn reopening_the_file_keeps_everything() {
        let (_dir, path) = temp_store();
        let policy = Uuid::from_u128(7);
        let at = crate::engine::store::conformance::t(100);
        let open_intent = intent(1, 0, "pve1");
        let done_intent = intent(2, 0, "pve1");
        let ledger = run(policy, 3, 50, RunStatus::Ok);
        {
            let store = SqliteStore::open(&path).expect("open");
            store.record_fire(policy, at).expect("fire");
            store.record_suppressed(policy, at).expect("suppressed");
            store
                .record_key(policy, "vm.stop:pve1/101", at)
                .expect("key");
            store
                .upsert_deadline(&DeadlineRecord {
                    policy_id: policy,
                    trigger_index: 1,
                    kind: DeadlineKind::For,
                    due_at: at,
                    state: serde_json::json!({"since": "x"}),
                })
                .expect("deadline");
            store.set_timer_checked(policy, 0, at).expect("timer");
            store.persist_intent(&open_intent).expect("intent");
            store.persist_intent(&done_intent).expect("intent");
            store
                .complete_intent(
                    &done_intent.id(),
                    &crate::engine::store::conformance::outcome(true),
                )
                .expect("complete");
            store.append_run(&ledger).expect("run");
            store
                .set_kill_switch(&KillSwitchState {
                    paused: true,
                    since: Some(at),
                    by: Some("admin".into()),
                    reason: Some("maintenance".into()),
                })
                .expect("kill");
            store
                .append_audit(&AuditRecord {
                    ts: at,
                    correlation_id: Uuid::from_u128(9),
                    kind: "engine.run".into(),
                    policy_id: Some(policy),
                    details: serde_json::json!({"n": 1}),
                })
                .expect("audit");
        }
        let store = SqliteStore::open(&path).expect("reopen");
        let window = store.window_state(policy).expect("window");
        assert_eq!(window.last_fired_at, Some(at));
        assert_eq!(window.suppressed_count, 1);
        assert_eq!(store.key_ran_at("vm.stop:pve1/101").expect("key"), Some(at));
        assert_eq!(store.deadlines().expect("deadlines").len(), 1);
        assert_eq!(store.timer_checks().expect("timers")[0].checked_at, at);
        assert_eq!(store.open_intents().expect("open"), vec![open_intent]);
        assert_eq!(store.runs(policy, 30).expect("runs"), vec![ledger.clone()]);
        assert_eq!(
            store.latest_successful_run(policy).expect("latest"),
            Some(ledger)
        );
        assert!(store.kill_switch().expect("kill").paused);
        assert_eq!(store.audit(&AuditQuery::default()).expect("audit").len(), 1);
    }

    #[test]
    fn intents_without_outcome_are_listed_after_reopen() {
        let (_dir, path) = temp_store();
        let first = intent(1, 0, "pve1");
        let second = intent(1, 1, "pve2");
        {
            let store = SqliteStore::open(&path).expect("open");
            store.persist_intent(&first).expect("intent");
            store.persist_intent(&second).expect("intent");
            store
                .complete_intent(
                    &first.id(),
                    &crate::engine::store::conformance::outcome(true),
                )
                .expect("complete");
            // Dropped without completing `second`: the agent "crashed".
        }
        let store = SqliteStore::open(&path).expect("reopen");
        assert_eq!(store.open_intents().expect("open"), vec![second]);
    }

    #[test]
    fn a_constraint_error_mid_batch_rolls_back_on_disk_too() {
        let (_dir, path) = temp_store();
        let policy = Uuid::from_u128(7);
        let dup = intent(1, 0, "pve1");
        {
            let store = SqliteStore::open(&path).expect("open");
            store.persist_intent(&dup).expect("intent");
            let err = store
                .write(&[
                    Write::RecordFire {
                        policy_id: policy,
                        at: crate::engine::store::conformance::t(1),
                    },
                    Write::AppendRun(run(policy, 1, 1, RunStatus::Ok)),
                    Write::PersistIntent(dup.clone()),
                ])
                .expect_err("duplicate intent");
            assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
        }
        let store = SqliteStore::open(&path).expect("reopen");
        assert_eq!(
            store.window_state(policy).expect("window"),
            WindowState::default()
        );
        assert!(store.runs(policy, 30).expect("runs").is_empty());
    }

    #[test]
    fn a_busy_database_error_is_retryable_and_a_conflict_is_not() {
        let busy = StoreError::Sqlite {
            op: "write",
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                None,
            ),
        };
        assert!(busy.is_retryable());
        assert!(!StoreError::Conflict { what: "x".into() }.is_retryable());
    }

    #[test]
    fn a_second_connection_waiting_on_a_write_lock_gets_a_retryable_error() {
        let (_dir, path) = temp_store();
        let store = SqliteStore::open_with(
            &path,
            &SqliteConfig {
                busy_timeout: Duration::from_millis(10),
                synchronous: Synchronous::Normal,
            },
        )
        .expect("open");
        let other = Connection::open(&path).expect("other connection");
        other
            .execute_batch("BEGIN IMMEDIATE")
            .expect("hold write lock");
        let err = store
            .record_fire(Uuid::from_u128(1), crate::engine::store::conformance::t(1))
            .expect_err("locked");
        assert!(err.is_retryable(), "{err:?}");
        other.execute_batch("ROLLBACK").expect("release");
    }

    /// The periodic checkpoint runs in the commit path under the store's
    /// lock: a reader holding an old snapshot (a `hazel backup` of a large
    /// database) must not stall every write for the busy timeout. With a
    /// busy timeout of ten minutes, a waiting checkpoint would hang here.
    #[test]
    fn the_periodic_checkpoint_does_not_wait_for_a_reader() {
        let (_dir, path) = temp_store();
        let store = std::sync::Arc::new(
            SqliteStore::open_with(
                &path,
                &SqliteConfig {
                    busy_timeout: Duration::from_secs(600),
                    synchronous: Synchronous::Normal,
                },
            )
            .expect("open"),
        );
        store
            .record_fire(Uuid::from_u128(1), crate::engine::store::conformance::t(1))
            .unwrap();
        let reader = Connection::open(&path).expect("reader");
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |row| {
                row.get(0)
            })
            .expect("a read snapshot");
        let (done, finished) = std::sync::mpsc::channel();
        let writer = std::sync::Arc::clone(&store);
        std::thread::spawn(move || {
            for i in 0..=CHECKPOINT_EVERY_WRITES {
                writer
                    .record_fire(
                        Uuid::from_u128(u128::from(i % 7)),
                        crate::engine::store::conformance::t(2),
                    )
                    .expect("a write");
            }
            let _ = done.send(());
        });
        // A failsafe, not a budget: a checkpoint that waits takes 600 s.
        finished
            .recv_timeout(Duration::from_secs(120))
            .expect("the writes passed the periodic checkpoint while a reader held the WAL");
        reader.execute_batch("COMMIT").unwrap();
        // With the reader gone, an explicit checkpoint empties the WAL.
        store.checkpoint().unwrap();
        let wal = std::fs::metadata(format!("{}-wal", path.display())).map_or(0, |m| m.len());
        assert_eq!(wal, 0, "the WAL is truncated");
    }
}
