//! The data directory as a whole: its lock, its identity marker, the checks
//! at start, and backups (SPEC §10, §12). The agent refuses to start on a
//! database that is not the one the directory held (missing, empty,
//! replaced, behind its marker, damaged) rather than run "ready" on less
//! than it had; the message says what to restore.
//!
//! The marker (`hazel.id`, JSON) records the database's id and the
//! generation the database had at its last bump. The first commit after
//! each checkpoint bumps the generation and then rewrites the marker; so
//! when the `-wal` file holding acknowledged commits is lost, the database
//! file's generation is behind the marker's. A lock file (`hazel.lock`,
//! `flock`, holding the pid) keeps a second agent and `hazel restore` off a
//! directory in use.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Utc;
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::sqlite::{check_writable, error_chain, read_identity};
use super::{SqliteConfig, SqliteStore, StoreIdentity};
use crate::engine::store::{AuditRecord, EngineStore, StoreError};

/// The marker's file name in the data directory.
pub const MARKER_FILE: &str = "hazel.id";
/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "hazel.lock";

/// What `hazel.id` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    /// The database's id (`store_identity.db_id`).
    pub db_id: Uuid,
    /// The database's generation when the marker was written.
    pub generation: u64,
    /// The database file's size then; the file never shrinks (no vacuum),
    /// so a smaller one was truncated.
    pub db_bytes: u64,
    /// Pages and page size then (for the operator).
    pub page_count: u64,
    pub page_size: u64,
    /// When the marker was written (RFC 3339).
    pub written_at: String,
}

/// Why the data directory cannot be used. Each message says what happened
/// and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another process (an agent, `hazel restore`) holds the directory.
    #[error(
        "{dir} is in use by another hazel process{}: stop it first",
        .pid.as_deref().map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked { dir: PathBuf, pid: Option<String> },
    /// The marker says the directory held a database; the file is gone.
    #[error(
        "{db} is missing, but {marker} says this data directory held database {db_id}: \
         refusing to start empty; restore it with `hazel restore BACKUP` \
         (or remove {marker} to start a new, empty database)"
    )]
    Missing {
        db: PathBuf,
        marker: PathBuf,
        db_id: Uuid,
    },
    /// The database file has no bytes.
    #[error(
        "{db} is empty (0 bytes){}: refusing to start with no policies; restore it with \
         `hazel restore BACKUP` (or delete {db}{} to start a new, empty database)",
        empty_note(.marked),
        empty_also(.marked)
    )]
    Empty { db: PathBuf, marked: bool },
    /// The database file is smaller than it was.
    #[error(
        "{db} is {found} bytes but was {known} bytes: it was truncated; \
         restore it with `hazel restore BACKUP`"
    )]
    Truncated { db: PathBuf, found: u64, known: u64 },
    /// The database is another one than the directory held.
    #[error(
        "{db} is database {found}, but this data directory held database {expected} ({marker}): \
         it was replaced by another agent's; put the right file back, or restore this \
         agent's with `hazel restore BACKUP` (`hazel restore` also adopts another database \
         on purpose)"
    )]
    Replaced {
        db: PathBuf,
        marker: PathBuf,
        found: Uuid,
        expected: Uuid,
    },
    /// The database is older than the marker: acknowledged commits are gone.
    #[error(
        "{db} is at generation {found} but {marker} records generation {expected}: commits \
         acknowledged after the last checkpoint are missing (the {db}-wal file was deleted or \
         lost, or {db} was replaced by an older copy); restore the newest backup with \
         `hazel restore BACKUP`, or, to start on what {db} holds and accept the loss, \
         remove {marker}"
    )]
    Behind {
        db: PathBuf,
        marker: PathBuf,
        found: u64,
        expected: u64,
    },
    /// `PRAGMA quick_check` found damage, or the file is not a database.
    #[error("{db} is damaged ({problems}); restore it with `hazel restore BACKUP`")]
    Damaged { db: PathBuf, problems: String },
    /// The marker cannot be read or written.
    #[error("cannot use the data directory's marker {path}: {message}")]
    Marker { path: PathBuf, message: String },
    /// A file of the directory could not be read or written.
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A backup's destination already exists.
    #[error("{path} exists: refusing to overwrite it")]
    Exists { path: PathBuf },
    /// A restore failed after it had started to change the data directory.
    #[error(
        "the restore failed: {}; {}",
        crate::error_chain(.cause.as_ref()),
        put_back_note(.put_back, .moved)
    )]
    RestoreFailed {
        cause: Box<DataDirError>,
        /// Whether what was there was put back; why not.
        put_back: Result<(), String>,
        /// Where the files that were there had been moved aside.
        moved: Vec<PathBuf>,
    },
    /// A restore was killed half-way: its `hazel.db.replacing` may hold the
    /// only copy of a database.
    #[error(
        "{left} is left by a restore that was interrupted: it may be the only copy of the \
         database that was there. If hazel.db is missing or is not the database you want, \
         move it (and its -wal and -shm, if any) back in place of hazel.db; otherwise remove \
         it. Then run the restore again"
    )]
    Interrupted { left: PathBuf },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn put_back_note(put_back: &Result<(), String>, moved: &[PathBuf]) -> String {
    match put_back {
        Ok(()) => "the data directory is as it was before the restore".into(),
        Err(problems) => format!(
            "putting back what was there also failed ({problems}): the database that was \
             there is in {}; move it back (without the `.replacing` in the names) before \
             starting the agent",
            moved
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Keeps the marker in step with the generation (held by the store).
#[derive(Debug)]
pub struct MarkerSync {
    path: PathBuf,
    /// Whether a commit since the last checkpoint has bumped the
    /// generation (and written the marker).
    bumped: AtomicBool,
    /// Marker writes that failed (`hazel_store_marker_write_failures_total`).
    failures: std::sync::atomic::AtomicU64,
}

impl MarkerSync {
    pub(super) fn needs_bump(&self) {
        self.bumped.store(false, Ordering::Relaxed);
    }

    pub(super) fn wants_bump(&self) -> bool {
        !self.bumped.load(Ordering::Relaxed)
    }

    /// Writes the marker for `identity`; a failure is logged loudly and
    /// the next commit tries again (the commit itself stands).
    pub(super) fn record(&self, conn: &Connection, db: &Path, identity: StoreIdentity) {
        match write_marker(&self.path, conn, db, identity) {
            Ok(()) => self.bumped.store(true, Ordering::Relaxed),
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    error = %error_chain(&e),
                    "cannot update the data directory's marker: a lost -wal file would go unnoticed"
                );
            }
        }
    }

    /// Marker writes that failed so far.
    pub(super) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// Opens the store in `dir` after checking it is the database the directory
/// held: takes the directory's lock, refuses a missing, empty, truncated,
/// replaced, behind or damaged (`PRAGMA quick_check`) database, initialises
/// a fresh directory (no marker, no database), adopts a database that has no
/// marker yet (an agent from before markers), and keeps the marker in step
/// from then on. The lock is held as long as the store is open.
pub fn open_data_dir(dir: &Path, config: &SqliteConfig) -> Result<SqliteStore, DataDirError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let db = dir.join(SqliteStore::DEFAULT_FILE_NAME);
    check_writable(dir, &db)?;
    let lock = lock_dir(dir)?;
    let marker_path = dir.join(MARKER_FILE);
    let marker = read_marker(&marker_path)?;
    match (std::fs::metadata(&db), &marker) {
        (Err(e), Some(m)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DataDirError::Missing {
                db,
                marker: marker_path,
                db_id: m.db_id,
            })
        }
        (Err(e), None) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(dir = %dir.display(), "new data directory: creating the database");
        }
        (Err(source), _) => {
            return Err(DataDirError::Io {
                what: "cannot read",
                path: db,
                source,
            })
        }
        (Ok(meta), marker) if meta.len() == 0 => {
            return Err(DataDirError::Empty {
                db,
                marked: marker.is_some(),
            })
        }
        (Ok(meta), Some(m)) if meta.len() < m.db_bytes => {
            return Err(DataDirError::Truncated {
                db,
                found: meta.len(),
                known: m.db_bytes,
            })
        }
        (Ok(_), _) => quick_check(&db)?,
    }
    let mut store = SqliteStore::open_with(&db, config).map_err(|e| damaged_or(&db, e))?;
    // Migrations (a new database's whole schema) go into the file itself,
    // so that from here on only commits after the first bump live in the WAL.
    store.checkpoint()?;
    let identity = store.identity()?;
    if let Some(m) = &marker {
        if m.db_id != identity.db_id {
            return Err(DataDirError::Replaced {
                db,
                marker: marker_path,
                found: identity.db_id,
                expected: m.db_id,
            });
        }
        if identity.generation < m.generation {
            return Err(DataDirError::Behind {
                db,
                marker: marker_path,
                found: identity.generation,
                expected: m.generation,
            });
        }
    } else {
        tracing::info!(db_id = %identity.db_id, "data directory marker written");
    }
    if marker.as_ref().map(|m| m.generation) != Some(identity.generation) {
        write_marker(&marker_path, &store.lock(), &db, identity)?;
    }
    store.marker = Some(MarkerSync {
        path: marker_path,
        bumped: AtomicBool::new(false),
        failures: std::sync::atomic::AtomicU64::new(0),
    });
    store.dir_lock = Some(lock);
    Ok(store)
}

/// Runs `PRAGMA quick_check` on the database at `db` (and its WAL):
/// `Err(Damaged)` with SQLite's findings. It reads every page once, so it
/// costs about one sequential read of the file (see docs/operations.md).
pub fn quick_check(db: &Path) -> Result<(), DataDirError> {
    let damaged = |problems: String| DataDirError::Damaged {
        db: db.to_path_buf(),
        problems,
    };
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| damaged(e.to_string()))?;
    let mut stmt = conn
        .prepare("PRAGMA quick_check(20)")
        .map_err(|e| damaged(e.to_string()))?;
    let rows = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
        .map_err(|e| damaged(e.to_string()))?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(damaged(rows.join("; ")))
    }
}

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub identity: StoreIdentity,
}

/// Copies the database at `db` to `out` with SQLite's online backup API, in
/// one step (one read transaction: a consistent snapshot that, in WAL mode,
/// does not block the running agent's writes), as a single file in
/// rollback-journal mode, checked with `quick_check` before it is renamed
/// into place. Refuses an existing `out`.
pub fn backup(db: &Path, out: &Path) -> Result<BackupReport, DataDirError> {
    if out.exists() {
        return Err(DataDirError::Exists {
            path: out.to_path_buf(),
        });
    }
    let src = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Open {
        path: db.to_path_buf(),
        source,
    })?;
    src.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| store_err("backup", e))?;
    let tmp = sibling(out, ".partial");
    let _ = std::fs::remove_file(&tmp);
    let copied = (|| -> Result<StoreIdentity, DataDirError> {
        let mut dst = Connection::open(&tmp).map_err(|source| StoreError::Open {
            path: tmp.clone(),
            source,
        })?;
        {
            let backup = rusqlite::backup::Backup::new(&src, &mut dst)
                .map_err(|e| store_err("backup", e))?;
            loop {
                match backup.step(-1).map_err(|e| store_err("backup", e))? {
                    rusqlite::backup::StepResult::Done => break,
                    _ => std::thread::sleep(std::time::Duration::from_millis(50)),
                }
            }
        }
        let _: String = dst
            .query_row("PRAGMA journal_mode = DELETE", [], |row| row.get(0))
            .map_err(|e| store_err("backup", e))?;
        let identity = read_identity(&dst)?;
        dst.close().map_err(|(_, e)| store_err("backup", e))?;
        quick_check(&tmp)?;
        sync_file(&tmp)?;
        Ok(identity)
    })();
    let identity = match copied {
        Ok(identity) => identity,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out).map_err(|source| DataDirError::Io {
        what: "cannot write",
        path: out.to_path_buf(),
        source,
    })?;
    sync_parent(out);
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(BackupReport {
        path: out.to_path_buf(),
        bytes,
        identity,
    })
}

/// One automatic backup (`backup:` in the config): `db` copied with
/// [`backup`] to `dir/hazel-<UTC time>.db`, then the oldest files of that
/// pattern beyond `keep` removed. Returns the new file.
pub fn backup_rotating(db: &Path, dir: &Path, keep: usize) -> Result<BackupReport, DataDirError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let name = format!("hazel-{}.db", Utc::now().format("%Y%m%dT%H%M%S%.3fZ"));
    let report = backup(db, &dir.join(name))?;
    let mut old: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| DataDirError::Io {
            what: "cannot list",
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("hazel-") && n.ends_with(".db"))
        })
        .collect();
    // The time in the name sorts as text.
    old.sort();
    let excess = old.len().saturating_sub(keep.max(1));
    for path in &old[..excess] {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an old backup");
        }
    }
    Ok(report)
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The restored database's identity (its generation bumped past the
    /// backup's).
    pub identity: StoreIdentity,
    /// Where the replaced database went (`hazel.db.replaced`), if there was
    /// one.
    pub replaced: Option<PathBuf>,
}

/// Replaces the database in `dir` with `backup`: refuses while the
/// directory's lock is held (a running agent), checks the backup with
/// `quick_check`, copies it in beside the database (`hazel.db.restoring`),
/// moves the current database and its `-wal`/`-shm` aside
/// (`hazel.db.replacing`), puts the copy in place, brings its schema up to
/// date, records a `store.restored` audit record, rewrites the marker with
/// its id and a fresh generation, and only then keeps the replaced
/// database as `hazel.db.replaced` (overwriting an older one).
///
/// A failure before the copy is in place changes nothing; a failure after
/// the database was moved aside puts it back ([`DataDirError::RestoreFailed`]
/// says whether that worked). A `hazel.db.replacing` left by a restore that
/// was killed half-way may be the only copy of a database: the restore
/// refuses until someone looks at it.
pub fn restore(dir: &Path, backup: &Path) -> Result<RestoreReport, DataDirError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let _lock = lock_dir(dir)?;
    if !backup.is_file() {
        return Err(DataDirError::Io {
            what: "cannot read the backup",
            path: backup.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    quick_check(backup)?;
    let db = dir.join(SqliteStore::DEFAULT_FILE_NAME);
    let paths = RestorePaths {
        tmp: sibling(&db, ".restoring"),
        replacing: sibling(&db, ".replacing"),
        replaced: sibling(&db, ".replaced"),
        db,
    };
    for suffix in SUFFIXES {
        let left = sibling(&paths.replacing, suffix);
        if left.exists() {
            return Err(DataDirError::Interrupted { left });
        }
    }
    let mut done = Progress::default();
    put_in(dir, backup, &paths, &mut done).map_err(|cause| put_back(&paths, &done, cause))
}

/// A database file and its companions.
const SUFFIXES: [&str; 3] = ["", "-wal", "-shm"];

/// The files a restore works with.
struct RestorePaths {
    /// `hazel.db`.
    db: PathBuf,
    /// The backup's copy before it is put in place.
    tmp: PathBuf,
    /// Where the current database waits while the copy is put in place.
    replacing: PathBuf,
    /// Where it is kept once the restore succeeded.
    replaced: PathBuf,
}

/// How far a restore changed the data directory, for [`put_back`].
#[derive(Default)]
struct Progress {
    /// The files moved aside to `replacing`: (from, to).
    moved: Vec<(PathBuf, PathBuf)>,
    /// Whether the copy is in place as `hazel.db`.
    placed: bool,
}

/// The steps of [`restore`] after its checks.
fn put_in(
    dir: &Path,
    backup: &Path,
    paths: &RestorePaths,
    done: &mut Progress,
) -> Result<RestoreReport, DataDirError> {
    let RestorePaths {
        db,
        tmp,
        replacing,
        replaced,
    } = paths;
    // The copy first: a full disk stops the restore here, with nothing moved.
    std::fs::copy(backup, tmp).map_err(|source| DataDirError::Io {
        what: "cannot copy the backup to",
        path: tmp.clone(),
        source,
    })?;
    sync_file(tmp)?;
    for suffix in SUFFIXES {
        let from = sibling(db, suffix);
        let to = sibling(replacing, suffix);
        if from.exists() {
            std::fs::rename(&from, &to).map_err(|source| DataDirError::Io {
                what: "cannot move aside",
                path: from.clone(),
                source,
            })?;
            done.moved.push((from, to));
        }
    }
    std::fs::rename(tmp, db).map_err(|source| DataDirError::Io {
        what: "cannot write",
        path: db.clone(),
        source,
    })?;
    done.placed = true;
    sync_parent(db);
    let store = SqliteStore::open(db).map_err(|e| damaged_or(db, e))?;
    let had_db = done.moved.iter().any(|(from, _)| from == db);
    // The audit log says when the history was rewound, and from what.
    store.append_audit(&AuditRecord {
        ts: Utc::now(),
        correlation_id: Uuid::new_v4(),
        kind: "store.restored".into(),
        policy_id: None,
        details: serde_json::json!({
            "backup": backup.display().to_string(),
            "replaced": had_db.then(|| replaced.display().to_string()),
        }),
    })?;
    store.checkpoint()?;
    let identity = {
        let conn = store.lock();
        let identity = super::sqlite::bump_generation(&conn)?;
        write_marker(&dir.join(MARKER_FILE), &conn, db, identity)?;
        identity
    };
    drop(store);
    // Done: the replaced database takes the place of an older one.
    for suffix in SUFFIXES {
        let _ = std::fs::remove_file(sibling(replaced, suffix));
    }
    let mut kept = None;
    for (from, to) in &done.moved {
        let name = to.display().to_string();
        let keep = PathBuf::from(name.replacen(".replacing", ".replaced", 1));
        let at = match std::fs::rename(to, &keep) {
            Ok(()) => keep,
            Err(e) => {
                tracing::warn!(from = %to.display(), to = %keep.display(), error = %e, "the replaced database keeps its temporary name");
                to.clone()
            }
        };
        if from == db {
            kept = Some(at);
        }
    }
    sync_parent(db);
    Ok(RestoreReport {
        identity,
        replaced: kept,
    })
}

/// Undoes a failed [`put_in`]: removes the copy (in place or not) and moves
/// back what it moved aside. The error says whether that worked and, when
/// it did not, where the database that was there is.
fn put_back(paths: &RestorePaths, done: &Progress, cause: DataDirError) -> DataDirError {
    let mut problems = Vec::new();
    let mut remove = |path: &Path| match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => problems.push(format!("cannot remove {}: {e}", path.display())),
    };
    remove(&paths.tmp);
    // Only what the restore put there: before the copy was in place,
    // `hazel.db` and its companions are still the ones that were there.
    if done.placed {
        for suffix in SUFFIXES {
            remove(&sibling(&paths.db, suffix));
        }
    }
    for (from, to) in &done.moved {
        if let Err(e) = std::fs::rename(to, from) {
            problems.push(format!(
                "cannot move {} back to {}: {e}",
                to.display(),
                from.display()
            ));
        }
    }
    sync_parent(&paths.db);
    let put_back = if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    };
    DataDirError::RestoreFailed {
        cause: Box::new(cause),
        put_back,
        moved: done.moved.iter().map(|(_, to)| to.clone()).collect(),
    }
}

/// Takes the directory's lock (non-blocking) and writes the pid into it.
pub fn lock_dir(dir: &Path) -> Result<File, DataDirError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| DataDirError::Io {
            what: "cannot open the lock file",
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path)
                .ok()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty());
            return Err(DataDirError::Locked {
                dir: dir.to_path_buf(),
                pid,
            });
        }
        Err(std::fs::TryLockError::Error(source)) => {
            return Err(DataDirError::Io {
                what: "cannot lock",
                path,
                source,
            })
        }
    }
    let _ = file.set_len(0);
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}

/// Reads the marker; `None` when there is none.
pub fn read_marker(path: &Path) -> Result<Option<Marker>, DataDirError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| DataDirError::Marker {
                path: path.to_path_buf(),
                message: format!(
                    "{e}; restore it from a backup of the data directory, or remove it \
                     to adopt the database as it is"
                ),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DataDirError::Io {
            what: "cannot read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes the marker for `identity` atomically (temporary file, fsync,
/// rename, fsync of the directory).
fn write_marker(
    path: &Path,
    conn: &Connection,
    db: &Path,
    identity: StoreIdentity,
) -> Result<(), DataDirError> {
    let pages = |pragma: &str| -> u64 {
        conn.query_row(&format!("PRAGMA {pragma}"), [], |row| row.get::<_, i64>(0))
            .ok()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0)
    };
    let marker = Marker {
        db_id: identity.db_id,
        generation: identity.generation,
        db_bytes: std::fs::metadata(db).map(|m| m.len()).unwrap_or(0),
        page_count: pages("page_count"),
        page_size: pages("page_size"),
        written_at: Utc::now().to_rfc3339(),
    };
    let io = |source| DataDirError::Io {
        what: "cannot write",
        path: path.to_path_buf(),
        source,
    };
    let tmp = sibling(path, ".tmp");
    let mut file = File::create(&tmp).map_err(io)?;
    let text = serde_json::to_string_pretty(&marker).map_err(|e| DataDirError::Marker {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.write_all(b"\n").map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    sync_parent(path);
    Ok(())
}

/// A file or SQLite error that says the file is not a database (or is
/// corrupt) is damage; anything else stays a store error.
fn damaged_or(db: &Path, e: StoreError) -> DataDirError {
    let source = match &e {
        StoreError::Open { source, .. }
        | StoreError::Configure { source, .. }
        | StoreError::Migrate { source, .. }
        | StoreError::Sqlite { source, .. } => Some(source),
        _ => None,
    };
    match source.and_then(|s| s.sqlite_error_code()) {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            DataDirError::Damaged {
                db: db.to_path_buf(),
                problems: error_chain(&e),
            }
        }
        _ => DataDirError::Store(e),
    }
}

fn empty_note(marked: &bool) -> &'static str {
    if *marked {
        " although this data directory held a database"
    } else {
        ""
    }
}

fn empty_also(marked: &bool) -> &'static str {
    if *marked {
        " and hazel.id"
    } else {
        ""
    }
}

fn store_err(op: &'static str, source: rusqlite::Error) -> DataDirError {
    DataDirError::Store(StoreError::Sqlite { op, source })
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn sync_file(path: &Path) -> Result<(), DataDirError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| DataDirError::Io {
            what: "cannot sync",
            path: path.to_path_buf(),
            source,
        })
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}
