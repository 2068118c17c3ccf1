//! Browser sessions (SPEC §9): the web console signs a local user in and
//! hands the browser an opaque random token in the `hazel_session` cookie
//! (HttpOnly, SameSite=Strict, Secure over TLS). The API's guard accepts
//! that cookie wherever it accepts a bearer token, with the user's role;
//! mutating requests still need the `X-Hazel-CSRF: 1` header.
//!
//! Sessions live in memory only: a restart signs everyone out, and nothing
//! that could be replayed is ever written to disk. Each expires a fixed time
//! after sign-in ([`SESSION_TTL`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{header, HeaderMap};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::auth::Claims;
use crate::service::Role;

/// The cookie that carries the session token.
pub const SESSION_COOKIE: &str = "hazel_session";

/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The signed-in sessions, by the SHA-256 of their token (a memory dump
/// shows no usable token).
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

/// One signed-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user's name (the audit log's subject).
    pub user: String,
    pub role: Role,
    pub created: DateTime<Utc>,
    pub expires: DateTime<Utc>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new(SESSION_TTL)
    }
}

impl Sessions {
    /// No sessions; each new one lasts `ttl`.
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            by_hash: Mutex::new(HashMap::new()),
        }
    }

    /// Signs `user` in at `now`; returns the token for the cookie (256
    /// random bits, hex).
    pub fn create(&self, user: &str, role: Role, now: DateTime<Utc>) -> String {
        let token = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let ttl = chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::hours(12));
        let session = Session {
            user: user.to_string(),
            role,
            created: now,
            expires: now + ttl,
        };
        let mut map = self.lock();
        // Expired sessions are dropped whenever one is created, so the map
        // never grows beyond the sessions of one TTL.
        map.retain(|_, s| s.expires > now);
        map.insert(hash(&token), session);
        token
    }

    /// The session of `token` at `now`; an expired one is removed and
    /// answers `None`.
    pub fn get(&self, token: &str, now: DateTime<Utc>) -> Option<Session> {
        let key = hash(token);
        let mut map = self.lock();
        match map.get(&key) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Signs the session of `token` out.
    pub fn remove(&self, token: &str) {
        self.lock().remove(&hash(token));
    }

    /// The session the request's cookie names, at `now`.
    pub fn from_headers(&self, headers: &HeaderMap, now: DateTime<Utc>) -> Option<Session> {
        self.get(&cookie(headers, SESSION_COOKIE)?, now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.by_hash.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Session {
    /// The session as token claims, for the API's role check.
    pub fn claims(&self) -> Claims {
        Claims {
            sub: self.user.clone(),
            role: self.role,
            iat: self.created.timestamp(),
            exp: self.expires.timestamp(),
        }
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The value of the cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

/// Whether the request came over TLS: the agent itself serves plain HTTP,
/// so only a TLS-terminating proxy's `X-Forwarded-Proto: https` says so.
pub fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value that stores `token` for `max_age`.
pub fn set_cookie(token: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that deletes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", Duration::ZERO, secure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    #[test]
    fn a_session_is_found_by_its_token_until_it_expires_and_then_never_again() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let token = sessions.create("alice", Role::Operator, t0());
        assert_eq!(token.len(), 64);
        let found = sessions.get(&token, t0()).unwrap();
        assert_eq!((found.user.as_str(), found.role), ("alice", Role::Operator));
        assert!(sessions
            .get(&token, t0() + chrono::Duration::seconds(59))
            .is_some());
        assert!(sessions
            .get(&token, t0() + chrono::Duration::seconds(60))
            .is_none());
        assert!(sessions.get(&token, t0()).is_none(), "removed once expired");
    }

    #[test]
    fn a_removed_or_unknown_token_has_no_session() {
        let sessions = Sessions::default();
        let token = sessions.create("bob", Role::Admin, t0());
        assert!(sessions.get("0".repeat(64).as_str(), t0()).is_none());
        sessions.remove(&token);
        assert!(sessions.get(&token, t0()).is_none());
    }

    #[test]
    fn the_cookie_is_read_among_others_and_written_httponly_strict_and_secure_over_tls() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; hazel_session=abc ; b=2"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("abc"));
        assert!(!over_tls(&headers));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("HTTPS"));
        assert!(over_tls(&headers));
        let plain = set_cookie("abc", Duration::from_secs(60), false);
        assert_eq!(
            plain,
            "hazel_session=abc; Path=/; Max-Age=60; HttpOnly; SameSite=Strict"
        );
        assert!(set_cookie("abc", Duration::from_secs(60), true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }
}
