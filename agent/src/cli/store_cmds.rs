//! `hazel backup` and `hazel restore`: the agent's database copied out with
//! SQLite's online backup API while the agent runs, and put back while it
//! is stopped (SPEC §10; docs/operations.md "Backups and damage").

use std::io::Write;
use std::path::Path;

use crate::service::config::Config;
use crate::store::{DataDirError, SqliteStore};

/// `hazel backup [--config FILE] OUT`: 0 written, 1 the copy failed, 2 the
/// config is unusable, the database is missing or `OUT` exists.
pub fn backup(config: &Path, out_path: &Path, out: &mut impl Write) -> i32 {
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return usage("backup", &e),
    };
    let db = config.data_dir.join(SqliteStore::DEFAULT_FILE_NAME);
    if !db.is_file() {
        eprintln!(
            "hazel backup: {} does not exist: nothing to back up",
            db.display()
        );
        return super::EXIT_USAGE;
    }
    match crate::store::backup(&db, out_path) {
        Ok(report) => {
            let _ = writeln!(
                out,
                "backed up {} to {} ({} bytes, database {}, generation {}; quick_check ok)",
                db.display(),
                report.path.display(),
                report.bytes,
                report.identity.db_id,
                report.identity.generation
            );
            super::EXIT_OK
        }
        Err(e @ DataDirError::Exists { .. }) => usage("backup", &e),
        Err(e) => failed("backup", &e),
    }
}

/// `hazel restore [--config FILE] BACKUP`: 0 restored; 1 the restore
/// failed once it had started to change the data directory (which it puts
/// back as it was, and says so); 2 the config is unusable, the agent runs,
/// or the backup is missing, unreadable or damaged (nothing was changed).
pub fn restore(config: &Path, backup: &Path, out: &mut impl Write) -> i32 {
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return usage("restore", &e),
    };
    match crate::store::restore(&config.data_dir, backup) {
        Ok(report) => {
            let _ = writeln!(
                out,
                "restored {} into {} (database {}, now generation {})",
                backup.display(),
                config.data_dir.display(),
                report.identity.db_id,
                report.identity.generation
            );
            if let Some(replaced) = report.replaced {
                let _ = writeln!(
                    out,
                    "the replaced database is kept as {}",
                    replaced.display()
                );
            }
            super::EXIT_OK
        }
        Err(
            e @ (DataDirError::Locked { .. }
            | DataDirError::Damaged { .. }
            | DataDirError::Interrupted { .. }
            | DataDirError::Io { .. }),
        ) => usage("restore", &e),
        Err(e) => failed("restore", &e),
    }
}

fn usage(cmd: &str, e: &dyn std::error::Error) -> i32 {
    eprintln!("hazel {cmd}: {}", crate::error_chain(e));
    super::EXIT_USAGE
}

fn failed(cmd: &str, e: &dyn std::error::Error) -> i32 {
    eprintln!("hazel {cmd}: {}", crate::error_chain(e));
    super::EXIT_BLOCKED
}
