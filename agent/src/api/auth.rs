//! Bearer tokens for the API: compact JWS (JWT) signed with HMAC-SHA256,
//! written directly on `hmac` + `sha2` + `base64` so the accepted token
//! format is exactly what this file says. Only `HS256` is accepted (never
//! `none`), the signature is compared in constant time, and the claims carry
//! a subject, a role and an expiry.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::service::Role;

/// The shortest key accepted, in bytes (the HS256 output size; RFC 7518
/// §3.2 requires at least that much key material).
pub const MIN_KEY_LEN: usize = 32;

/// How far in the future a token's `iat` may be before it is refused
/// (clock skew between the minting machine and the agent).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A token's claims: who (`sub`), with which role, issued and expiring at
/// (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The subject (`alice`, `cli`, `demo`); recorded in the audit log.
    pub sub: String,
    /// What the bearer may do.
    pub role: Role,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds; the token is refused from this second on.
    pub exp: i64,
}

/// The HS256 key that signs and verifies tokens. Its `Debug` never shows
/// the key.
#[derive(Clone)]
pub struct JwtKey {
    bytes: Vec<u8>,
}

/// Why a token (or its absence) was refused. Each variant has a stable API
/// code ([`AuthError::code`]) and an HTTP status ([`AuthError::status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer ...` header.
    #[error(
        "missing bearer token: send `Authorization: Bearer <token>` (mint one with `hazel token`)"
    )]
    Missing,
    /// The header or the token is not a well-formed HS256 JWT with valid claims.
    #[error("malformed token: {reason}")]
    Malformed {
        /// What is wrong, for the operator (never the token itself).
        reason: String,
    },
    /// The token names an algorithm other than HS256 (including `none`).
    #[error("token algorithm {alg:?} is not accepted; only HS256 is")]
    Algorithm {
        /// The header's `alg`.
        alg: String,
    },
    /// The signature does not match this agent's key.
    #[error("token signature does not verify")]
    InvalidSignature,
    /// The token has expired.
    #[error("token expired at {exp}")]
    Expired {
        /// The expiry, Unix seconds.
        exp: i64,
    },
    /// The token's role is below what the route needs.
    #[error("role {have} may not do this; it needs {need}")]
    Forbidden {
        /// The token's role.
        have: &'static str,
        /// The route's minimum role.
        need: &'static str,
    },
    /// A mutating request came without the `X-Hazel-CSRF: 1` header.
    #[error("mutating requests must carry the header `X-Hazel-CSRF: 1`")]
    CsrfMissing,
}

/// The key given to [`JwtKey::from_bytes`] is too short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the API token key is {len} bytes; it must be at least {MIN_KEY_LEN} (e.g. `openssl rand -hex 32`)")]
pub struct KeyError {
    /// The length given.
    pub len: usize,
}

/// Why `hazel token` could not mint a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The key is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The role is not one of viewer, operator, admin.
    #[error("unknown role {0:?}: use viewer, operator or admin")]
    UnknownRole(String),
    /// The subject is empty.
    #[error("the token subject must not be empty")]
    EmptySubject,
    /// A zero lifetime would mint a token that is already expired.
    #[error("the token lifetime must be above zero")]
    ZeroTtl,
}

impl JwtKey {
    /// A key from raw bytes; refuses fewer than [`MIN_KEY_LEN`] bytes.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<JwtKey, KeyError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError { len: bytes.len() });
        }
        Ok(JwtKey { bytes })
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.bytes).expect("hmac takes a key of any length")
    }
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtKey(..)")
    }
}

impl AuthError {
    /// The stable API error code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "auth.missing",
            AuthError::Malformed { .. } => "auth.malformed",
            AuthError::Algorithm { .. } | AuthError::InvalidSignature => "auth.invalid_signature",
            AuthError::Expired { .. } => "auth.expired",
            AuthError::Forbidden { .. } => "auth.forbidden",
            AuthError::CsrfMissing => "csrf.missing",
        }
    }

    /// The HTTP status: 401 for an unusable credential, 403 for a refusal.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Forbidden { .. } | AuthError::CsrfMissing => 403,
            _ => 401,
        }
    }

    fn malformed(reason: impl Into<String>) -> AuthError {
        AuthError::Malformed {
            reason: reason.into(),
        }
    }
}

/// The JOSE header this module writes and the only `alg` it reads.
#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// The claims as they travel (role as text, checked after decoding).
#[derive(Serialize, Deserialize)]
struct WireClaims {
    sub: String,
    role: String,
    iat: i64,
    exp: i64,
}

/// Mints a token for `subject` with `role`, valid for `ttl` from `now`.
pub fn mint(key: &JwtKey, subject: &str, role: Role, ttl: Duration, now: DateTime<Utc>) -> String {
    let iat = now.timestamp();
    let ttl_s = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let claims = WireClaims {
        sub: subject.to_string(),
        role: role.as_str().to_string(),
        iat,
        exp: iat.saturating_add(ttl_s),
    };
    let header = Header {
        alg: "HS256".into(),
        typ: Some("JWT".into()),
    };
    let mut token = String::with_capacity(256);
    URL_SAFE_NO_PAD.encode_string(
        serde_json::to_vec(&header).expect("a header serializes"),
        &mut token,
    );
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(
        serde_json::to_vec(&claims).expect("claims serialize"),
        &mut token,
    );
    let mut mac = key.mac();
    mac.update(token.as_bytes());
    let signature = mac.finalize().into_bytes();
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    token
}

/// Verifies `token` against `key` at `now`: well formed, `alg` HS256, the
/// signature (compared in constant time), not expired, not issued in the
/// future beyond [`MAX_CLOCK_SKEW`], a known role.
pub fn verify(key: &JwtKey, token: &str, now: DateTime<Utc>) -> Result<Claims, AuthError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::malformed(
            "a token has three dot-separated parts",
        ));
    };
    let header_bytes = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| AuthError::malformed("the header is not base64url"))?;
    let header: Header = serde_json::from_slice(&header_bytes)
        .map_err(|_| AuthError::malformed("the header is not a JSON object with `alg`"))?;
    if header.alg != "HS256" {
        return Err(AuthError::Algorithm { alg: header.alg });
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| AuthError::malformed("the signature is not base64url"))?;
    let signed_len = header_b64.len() + 1 + claims_b64.len();
    let mut mac = key.mac();
    mac.update(&token.as_bytes()[..signed_len]);
    mac.verify_slice(&signature)
        .map_err(|_| AuthError::InvalidSignature)?;
    let claims_bytes = URL_SAFE_NO_PAD
        .decode(claims_b64)
        .map_err(|_| AuthError::malformed("the claims are not base64url"))?;
    let claims: WireClaims = serde_json::from_slice(&claims_bytes).map_err(|_| {
        AuthError::malformed(
            "the claims need `sub` (text), `role` (text), `iat` and `exp` (integers)",
        )
    })?;
    let role = Role::parse(&claims.role)
        .ok_or_else(|| AuthError::malformed(format!("unknown role {:?}", claims.role)))?;
    let now_s = now.timestamp();
    if now_s >= claims.exp {
        return Err(AuthError::Expired { exp: claims.exp });
    }
    let skew = i64::try_from(MAX_CLOCK_SKEW.as_secs()).unwrap_or(i64::MAX);
    if claims.iat > now_s.saturating_add(skew) {
        return Err(AuthError::malformed("the token is issued in the future"));
    }
    if claims.sub.is_empty() {
        return Err(AuthError::malformed("the subject is empty"));
    }
    Ok(Claims {
        sub: claims.sub,
        role,
        iat: claims.iat,
        exp: claims.exp,
    })
}

/// Reads the token out of an `Authorization` header value (`Bearer <token>`,
/// scheme case-insensitive).
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| AuthError::malformed("the Authorization header is not `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::malformed(
            "the Authorization scheme must be `Bearer`",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

/// `hazel token`: mints a token from the raw key bytes, a subject, a role
/// name and a lifetime, at the current time.
pub fn mint_for_cli(
    key: &[u8],
    subject: &str,
    role: &str,
    ttl: Duration,
) -> Result<String, TokenError> {
    let key = JwtKey::from_bytes(key)?;
    let role = Role::parse(role).ok_or_else(|| TokenError::UnknownRole(role.to_string()))?;
    if subject.trim().is_empty() {
        return Err(TokenError::EmptySubject);
    }
    if ttl.is_zero() {
        return Err(TokenError::ZeroTtl);
    }
    Ok(mint(&key, subject, role, ttl, Utc::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn key() -> JwtKey {
        JwtKey::from_bytes(*b"0123456789abcdef0123456789abcdef").unwrap()
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    fn hour() -> Duration {
        Duration::from_secs(3600)
    }

    fn encode(value: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    fn sign(key: &JwtKey, signing_input: &str) -> String {
        let mut mac = key.mac();
        mac.update(signing_input.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    fn forged(header: serde_json::Value, claims: serde_json::Value) -> String {
        let input = format!("{}.{}", encode(&header), encode(&claims));
        let signature = sign(&key(), &input);
        format!("{input}.{signature}")
    }

    #[test]
    fn a_minted_token_verifies_with_its_subject_role_and_expiry() {
        let token = mint(&key(), "alice", Role::Operator, hour(), t0());
        let claims = verify(&key(), &token, t0()).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.role, Role::Operator);
        assert_eq!(claims.iat, t0().timestamp());
        assert_eq!(claims.exp, t0().timestamp() + 3600);
    }

    #[test]
    fn a_token_is_refused_from_its_expiry_second_on() {
        let token = mint(&key(), "alice", Role::Admin, hour(), t0());
        let just_before = t0() + chrono::Duration::seconds(3599);
        assert!(verify(&key(), &token, just_before).is_ok());
        let at_expiry = t0() + chrono::Duration::seconds(3600);
        let err = verify(&key(), &token, at_expiry).unwrap_err();
        assert_eq!(err.code(), "auth.expired");
        assert_eq!(err.status(), 401);
    }

    #[test]
    fn a_token_signed_with_another_key_has_an_invalid_signature() {
        let other = JwtKey::from_bytes(vec![7u8; 40]).unwrap();
        let token = mint(&other, "mallory", Role::Admin, hour(), t0());
        assert_eq!(
            verify(&key(), &token, t0()).unwrap_err(),
            AuthError::InvalidSignature
        );
    }

    #[test]
    fn a_changed_claim_breaks_the_signature() {
        let token = mint(&key(), "bob", Role::Viewer, hour(), t0());
        let parts: Vec<&str> = token.split('.').collect();
        let claims = encode(&serde_json::json!({
            "sub": "bob", "role": "admin", "iat": t0().timestamp(), "exp": t0().timestamp() + 3600
        }));
        let tampered = format!("{}.{}.{}", parts[0], claims, parts[2]);
        assert_eq!(
            verify(&key(), &tampered, t0()).unwrap_err().code(),
            "auth.invalid_signature"
        );
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused_even_with_a_valid_mac() {
        let claims = serde_json::json!({
            "sub": "eve", "role": "admin", "iat": t0().timestamp(), "exp": t0().timestamp() + 60
        });
        for alg in ["none", "None", "HS512", "RS256", "hs256"] {
            let token = forged(
                serde_json::json!({"alg": alg, "typ": "JWT"}),
                claims.clone(),
            );
            let err = verify(&key(), &token, t0()).unwrap_err();
            assert_eq!(err, AuthError::Algorithm { alg: alg.into() }, "{alg}");
            assert_eq!(err.status(), 401);
        }
        let unsigned = format!(
            "{}.{}.",
            encode(&serde_json::json!({"alg": "none"})),
            encode(&claims)
        );
        assert_eq!(
            verify(&key(), &unsigned, t0()).unwrap_err().code(),
            "auth.invalid_signature"
        );
    }

    #[test]
    fn malformed_tokens_are_refused_as_malformed() {
        for token in ["", "abc", "a.b", "a.b.c.d", "!!.??.##", "e30.e30.e30"] {
            let err = verify(&key(), token, t0()).unwrap_err();
            assert_eq!(err.code(), "auth.malformed", "{token:?}: {err}");
        }
    }

    #[test]
    fn an_unknown_role_or_missing_claim_is_malformed() {
        let header = serde_json::json!({"alg": "HS256"});
        let iat = t0().timestamp();
        let unknown = forged(
            header.clone(),
            serde_json::json!({"sub": "x", "role": "root", "iat": iat, "exp": iat + 60}),
        );
        let err = verify(&key(), &unknown, t0()).unwrap_err();
        assert_eq!(err.code(), "auth.malformed");
        assert!(err.to_string().contains("root"), "{err}");
        let no_exp = forged(
            header,
            serde_json::json!({"sub": "x", "role": "admin", "iat": iat}),
        );
        assert_eq!(
            verify(&key(), &no_exp, t0()).unwrap_err().code(),
            "auth.malformed"
        );
    }

    #[test]
    fn a_token_issued_beyond_the_clock_skew_is_refused() {
        let future = t0() + chrono::Duration::seconds(120);
        let token = mint(&key(), "alice", Role::Viewer, hour(), future);
        assert_eq!(
            verify(&key(), &token, t0()).unwrap_err().code(),
            "auth.malformed"
        );
        let near = t0() + chrono::Duration::seconds(30);
        let token = mint(&key(), "alice", Role::Viewer, hour(), near);
        assert!(verify(&key(), &token, t0()).is_ok());
    }

    #[test]
    fn a_short_key_is_refused_with_its_length() {
        let err = JwtKey::from_bytes(b"short".to_vec()).unwrap_err();
        assert_eq!(err, KeyError { len: 5 });
        assert!(err.to_string().contains("at least 32"), "{err}");
    }

    #[test]
    fn the_key_debug_output_shows_nothing_of_the_key() {
        let printed = format!("{:?}", key());
        assert_eq!(printed, "JwtKey(..)");
    }

    #[test]
    fn the_bearer_header_is_parsed_case_insensitively_and_missing_is_reported() {
        assert_eq!(bearer(Some("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer(Some("bearer abc")).unwrap(), "abc");
        assert_eq!(bearer(None).unwrap_err(), AuthError::Missing);
        assert_eq!(bearer(Some("Bearer ")).unwrap_err(), AuthError::Missing);
        assert_eq!(
            bearer(Some("Basic abc")).unwrap_err().code(),
            "auth.malformed"
        );
        assert_eq!(bearer(Some("abc")).unwrap_err().code(), "auth.malformed");
    }

    #[test]
    fn error_codes_and_statuses_are_stable() {
        let forbidden = AuthError::Forbidden {
            have: "viewer",
            need: "admin",
        };
        assert_eq!(
            (forbidden.code(), forbidden.status()),
            ("auth.forbidden", 403)
        );
        assert_eq!(
            (
                AuthError::CsrfMissing.code(),
                AuthError::CsrfMissing.status()
            ),
            ("csrf.missing", 403)
        );
        assert_eq!(
            (AuthError::Missing.code(), AuthError::Missing.status()),
            ("auth.missing", 401)
        );
    }

    #[test]
    fn the_cli_mints_a_token_the_server_accepts() {
        let raw = b"0123456789abcdef0123456789abcdef";
        let token = mint_for_cli(raw, "cli", "admin", hour()).unwrap();
        let claims = verify(&key(), &token, Utc::now()).unwrap();
        assert_eq!((claims.sub.as_str(), claims.role), ("cli", Role::Admin));
        assert_eq!(
            mint_for_cli(raw, "cli", "root", hour()).unwrap_err(),
            TokenError::UnknownRole("root".into())
        );
        assert_eq!(
            mint_for_cli(b"short", "cli", "admin", hour()).unwrap_err(),
            TokenError::Key(KeyError { len: 5 })
        );
        assert_eq!(
            mint_for_cli(raw, " ", "admin", hour()).unwrap_err(),
            TokenError::EmptySubject
        );
        assert_eq!(
            mint_for_cli(raw, "cli", "admin", Duration::ZERO).unwrap_err(),
            TokenError::ZeroTtl
        );
    }
}
