//! The web console's local accounts (SPEC §9 roles): passwords hashed with
//! argon2id (the crate's default parameters, a random salt per hash) and
//! checked on the blocking pool, since a check costs tens of milliseconds of
//! CPU by design. A sign-in for an unknown name verifies against a fixed
//! hash, so the answer takes as long as for a known one.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use chrono::Utc;

use super::{Role, Service, ServiceError};
use crate::store::{SqliteStore, UserRecord};

/// Why a user could not be added.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The name is empty, too long, or has characters other than letters,
    /// digits, `.`, `_`, `-`, `@`.
    #[error("user name {0:?} is not allowed: use 1 to 64 letters, digits, '.', '_', '-' or '@'")]
    BadName(String),
    /// The password is shorter than [`MIN_PASSWORD_LEN`].
    #[error("the password must have at least {MIN_PASSWORD_LEN} characters")]
    ShortPassword,
    /// Hashing failed (should not happen with the default parameters).
    #[error("cannot hash the password: {0}")]
    Hash(String),
    /// The store refused the write.
    #[error(transparent)]
    Store(#[from] crate::engine::store::StoreError),
}

/// The shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;

/// A user who signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    pub name: String,
    pub role: Role,
}

/// The argon2id PHC string of `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, UserError> {
    // 16 random bytes from the OS (uuid v4 reads getrandom).
    let salt = SaltString::encode_b64(uuid::Uuid::new_v4().as_bytes())
        .map_err(|e| UserError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `hash` (a malformed hash
/// matches nothing).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Checks a new user's name and password, hashes the password and saves
/// the user in `store` (adding or replacing); returns whether it was new.
/// `hazel user add` calls this on the store file directly.
pub fn add_user(
    store: &SqliteStore,
    name: &str,
    role: Role,
    password: &str,
    by: &str,
) -> Result<bool, UserError> {
    let ok_name = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if !ok_name {
        return Err(UserError::BadName(name.to_string()));
    }
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(UserError::ShortPassword);
    }
    let now = Utc::now();
    let record = UserRecord {
        name: name.to_string(),
        role: role.as_str().to_string(),
        password_hash: hash_password(password)?,
        created_at: now,
        updated_at: now,
    };
    Ok(store.save_user(&record, by)?)
}

/// A valid hash of no password anyone has, verified when the name is
/// unknown so that the answer's timing does not tell which names exist.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("hazel decoy password").unwrap_or_default())
}

impl Service {
    /// Checks `name` and `password` against the stored accounts; `None`
    /// for a wrong password or an unknown name (the same answer for both).
    pub async fn authenticate(
        &self,
        name: &str,
        password: &str,
    ) -> Result<Option<SignedIn>, ServiceError> {
        let name = name.to_string();
        let password = password.to_string();
        let user = self.store(move |s| s.user(&name)).await?;
        // argon2 is CPU- and memory-heavy: under the CPU slots, so a burst
        // of sign-ins cannot run more checks at once than validations.
        self.cpu(move |_| {
            let hash = user
                .as_ref()
                .map_or_else(|| decoy_hash().to_string(), |u| u.password_hash.clone());
            let matches = verify_password(&hash, &password);
            user.filter(|_| matches)
                .and_then(|u| Role::parse(&u.role).map(|role| SignedIn { name: u.name, role }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_password_verifies_and_another_does_not() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct horsf"));
        assert!(!verify_password("not a hash", "correct horse"));
        assert_ne!(hash, hash_password("correct horse").unwrap(), "salted");
    }

    #[test]
    fn bad_names_and_short_passwords_are_refused_before_anything_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("hazel.db")).unwrap();
        for name in ["", "a b", "x/y", &"n".repeat(65)] {
            assert!(
                matches!(
                    add_user(&store, name, Role::Admin, "long enough", "t"),
                    Err(UserError::BadName(_))
                ),
                "{name:?}"
            );
        }
        assert!(matches!(
            add_user(&store, "alice", Role::Admin, "short", "t"),
            Err(UserError::ShortPassword)
        ));
        assert_eq!(store.user("alice").unwrap(), None);
        assert!(add_user(&store, "alice", Role::Viewer, "long enough", "t").unwrap());
        let stored = store.user("alice").unwrap().unwrap();
        assert!(verify_password(&stored.password_hash, "long enough"));
        assert_eq!(stored.role, "viewer");
    }
}
