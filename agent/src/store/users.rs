//! The web console's local accounts (SPEC §9 roles): a name, a role and an
//! argon2 PHC string, in the `console_users` table of the same file. The
//! store never sees a password; hashing and verifying are the service's.
//! Adding or replacing a user commits with its `user.saved` audit record.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};
use serde_json::json;
use uuid::Uuid;

use super::engine_state::insert_audit;
use super::sqlite::{parse_ts, sql, ts};
use super::SqliteStore;
use crate::engine::store::{AuditRecord, StoreError, StoreResult};

/// One console account as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The sign-in name; also the audit log's subject for the user's changes.
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// The argon2id PHC string (salt and parameters included).
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash is not the password, but it stays out of logs anyway.
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("password_hash", &"***")
            .finish()
    }
}

impl SqliteStore {
    /// Adds `user`, or replaces the role and hash of the user of that name
    /// (keeping `created_at`); returns whether it was new. The audit record
    /// (`user.saved`, with the name, the role and `created`) commits with it.
    pub fn save_user(&self, user: &UserRecord, by: &str) -> StoreResult<bool> {
        self.with_transaction(|tx| {
            let existed: Option<String> = tx
                .query_row(
                    "SELECT name FROM console_users WHERE name = ?1",
                    params![user.name],
                    |row| row.get(0),
                )
                .optional()
                .map_err(sql("user_exists"))?;
            tx.execute(
                "INSERT INTO console_users (name, role, password_hash, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (name) DO UPDATE SET
                     role = excluded.role,
                     password_hash = excluded.password_hash,
                     updated_at = excluded.updated_at",
                params![
                    user.name,
                    user.role,
                    user.password_hash,
                    ts(&user.created_at),
                    ts(&user.updated_at)
                ],
            )
            .map_err(sql("save_user"))?;
            let created = existed.is_none();
            insert_audit(
                tx,
                &AuditRecord {
                    ts: user.updated_at,
                    correlation_id: Uuid::new_v4(),
                    kind: "user.saved".into(),
                    policy_id: None,
                    details: json!({
                        "name": user.name,
                        "role": user.role,
                        "created": created,
                        "by": by,
                    }),
                },
            )?;
            Ok(created)
        })
    }

    /// The user called `name`, if any.
    pub fn user(&self, name: &str) -> StoreResult<Option<UserRecord>> {
        let conn = self.lock();
        let row = conn
            .query_row(
                "SELECT name, role, password_hash, created_at, updated_at
                   FROM console_users WHERE name = ?1",
                params![name],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                    ))
                },
            )
            .optional()
            .map_err(sql("user"))?;
        row.map(|(name, role, password_hash, created, updated)| {
            Ok(UserRecord {
                name,
                role,
                password_hash,
                created_at: parse_ts(&created)?,
                updated_at: parse_ts(&updated)?,
            })
        })
        .transpose()
        .map_err(|e: StoreError| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::{AuditQuery, EngineStore};
    use chrono::TimeZone;

    fn t(s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, s).unwrap()
    }

    fn user(role: &str, hash: &str, at: DateTime<Utc>) -> UserRecord {
        UserRecord {
            name: "alice".into(),
            role: role.into(),
            password_hash: hash.into(),
            created_at: at,
            updated_at: at,
        }
    }

    #[test]
    fn a_saved_user_reads_back_and_saving_again_replaces_role_and_hash_but_not_created_at() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("hazel.db")).unwrap();
        assert_eq!(store.user("alice").unwrap(), None);
        assert!(store
            .save_user(&user("viewer", "$h1", t(1)), "cli")
            .unwrap());
        assert!(!store.save_user(&user("admin", "$h2", t(2)), "cli").unwrap());
        let back = store.user("alice").unwrap().unwrap();
        assert_eq!(
            (back.role.as_str(), back.password_hash.as_str()),
            ("admin", "$h2")
        );
        assert_eq!((back.created_at, back.updated_at), (t(1), t(2)));
        let audit = store.audit(&AuditQuery::default()).unwrap();
        let saved: Vec<_> = audit
            .iter()
            .filter(|e| e.record.kind == "user.saved")
            .map(|e| e.record.details["created"].clone())
            .collect();
        assert_eq!(saved.len(), 2);
        assert!(
            !audit
                .iter()
                .any(|e| e.record.details.to_string().contains("$h")),
            "no hash in the audit log"
        );
    }

    #[test]
    fn a_user_record_prints_without_its_hash() {
        let printed = format!("{:?}", user("admin", "$argon2id$secret", t(1)));
        assert!(!printed.contains("argon2id"), "{printed}");
    }
}
