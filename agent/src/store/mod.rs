//! The agent's database: one SQLite file in the data directory
//! ([`SqliteStore`]: WAL, `synchronous=FULL`, versioned migrations) that
//! holds both the engine's state, behind the engine's own
//! [`EngineStore`](crate::engine::store::EngineStore) trait, and the
//! service's state (SPEC §9, §10): policies, hosts, inventory snapshots and
//! transcripts, behind [`PolicyStore`]; and the web console's local
//! accounts ([`UserRecord`]).
//!
//! The engine never names this module; the service opens the store and
//! hands it to the engine as an `EngineStore`. The service's tables are
//! migrations appended to the list (never edited in place). Each policy or
//! host mutation commits together with its audit record. Host secrets are
//! encrypted at rest with a [`SecretKey`]. The data directory around the
//! file (its lock, its identity marker, the checks at start, backups and
//! restores) is [`open_data_dir`]'s.

mod data_dir;
mod engine_state;
mod policy;
mod secrets;
mod sqlite;
mod users;

pub use data_dir::{
    backup, backup_rotating, lock_dir, open_data_dir, quick_check, read_marker, restore,
    BackupReport, DataDirError, Marker, RestoreReport, LOCK_FILE, MARKER_FILE,
};
pub use policy::*;
pub use secrets::{SecretKey, SecretKeyError, SECRET_KEY_ENV};
pub use sqlite::{SqliteConfig, SqliteStore, StoreIdentity, Synchronous, CHECKPOINT_EVERY_WRITES};
pub use users::UserRecord;
