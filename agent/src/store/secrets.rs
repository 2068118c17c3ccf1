//! Host secrets at rest: a 256-bit [`SecretKey`] read from a file or the
//! `HAZEL_SECRET_KEY` environment variable, and ChaCha20-Poly1305 sealing of
//! one host's secrets into a single blob.
//!
//! The blob is `version (1 byte) || nonce (12 bytes) || ciphertext+tag`,
//! with a fresh random nonce per write and the host id as associated data,
//! so a blob copied onto another host's row does not decrypt. Neither the
//! key nor a plaintext is ever formatted into an error or a log line.

use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use base64::Engine as _;

/// The environment variable the agent reads its secret key from.
pub const SECRET_KEY_ENV: &str = "HAZEL_SECRET_KEY";

/// The first byte of every sealed blob: the format version.
const BLOB_V1: u8 = 1;

/// The nonce length of ChaCha20-Poly1305 (96 bits).
const NONCE_LEN: usize = 12;

/// The key that encrypts host secrets at rest. `Debug` prints nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; 32]);

/// Why a secret key could not be loaded. Never contains the key text.
#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    /// The text is neither 64 hex characters nor the base64 of 32 bytes.
    #[error(
        "secret key must be 64 hex characters or the base64 of 32 bytes \
         (generate one with `openssl rand -hex 32`)"
    )]
    Malformed,
    /// The key file could not be read.
    #[error("cannot read secret key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key file's content is malformed (see [`SecretKeyError::Malformed`]).
    #[error("secret key file {path} is malformed")]
    MalformedFile {
        path: PathBuf,
        #[source]
        source: Box<SecretKeyError>,
    },
    /// The environment variable is set but not valid Unicode or malformed.
    #[error("environment variable {SECRET_KEY_ENV} is malformed")]
    MalformedEnv {
        #[source]
        source: Box<SecretKeyError>,
    },
}

impl SecretKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> SecretKey {
        SecretKey(bytes)
    }

    /// Parses 64 hex characters or the (padded or unpadded, standard or
    /// URL-safe) base64 of 32 bytes; surrounding whitespace is ignored.
    pub fn from_text(text: &str) -> Result<SecretKey, SecretKeyError> {
        let text = text.trim();
        let mut bytes = [0u8; 32];
        if text.len() == 64 && hex::decode_to_slice(text, &mut bytes).is_ok() {
            return Ok(SecretKey(bytes));
        }
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        engines
            .iter()
            .find_map(|engine| engine.decode(text).ok())
            .and_then(|decoded| <[u8; 32]>::try_from(decoded.as_slice()).ok())
            .map(SecretKey)
            .ok_or(SecretKeyError::Malformed)
    }

    /// Reads a key file holding the text [`SecretKey::from_text`] accepts.
    pub fn from_file(path: impl AsRef<Path>) -> Result<SecretKey, SecretKeyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SecretKeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        SecretKey::from_text(&text).map_err(|source| SecretKeyError::MalformedFile {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// The key in [`SECRET_KEY_ENV`], `None` when the variable is unset.
    pub fn from_env() -> Result<Option<SecretKey>, SecretKeyError> {
        match std::env::var(SECRET_KEY_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(SecretKeyError::MalformedEnv {
                source: Box::new(SecretKeyError::Malformed),
            }),
            Ok(text) => SecretKey::from_text(&text).map(Some).map_err(|source| {
                SecretKeyError::MalformedEnv {
                    source: Box::new(source),
                }
            }),
        }
    }

    /// A new random key from the operating system's generator.
    pub fn generate() -> SecretKey {
        SecretKey(ChaCha20Poly1305::generate_key(&mut OsRng).into())
    }

    /// The key as 64 lowercase hex characters, for writing a key file
    /// (`hazel` prints it once when it generates one); never log it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Seals `plaintext` for the row of `host` (see the module docs).
    /// `None` only for a message over 256 GiB, which the cipher refuses.
    pub(super) fn seal(&self, host: &str, plaintext: &[u8]) -> Option<Vec<u8>> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: host.as_bytes(),
                },
            )
            .ok()?;
        let mut blob = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        blob.push(BLOB_V1);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Some(blob)
    }

    /// Opens a blob sealed by [`SecretKey::seal`] for `host`; `None` for a
    /// wrong key, another host's blob, an unknown version or damaged bytes.
    pub(super) fn open(&self, host: &str, blob: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = blob.split_first()?;
        if version != BLOB_V1 || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: host.as_bytes(),
                },
            )
            .ok()
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_parses_from_hex_or_base64_and_nothing_else() {
        let key = SecretKey::generate();
        let hex_text = key.to_hex();
        assert_eq!(SecretKey::from_text(&hex_text).unwrap(), key);
        assert_eq!(
            SecretKey::from_text(&format!("  {}\n", hex_text.to_uppercase())).unwrap(),
            key
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.0);
        assert_eq!(SecretKey::from_text(&b64).unwrap(), key);
        assert_eq!(
            SecretKey::from_text(b64.trim_end_matches('=')).unwrap(),
            key
        );
        for bad in [
            "",
            "abc",
            &hex_text[..62],
            "zz".repeat(32).as_str(),
            "aGVsbG8=",
        ] {
            let err = SecretKey::from_text(bad).unwrap_err();
            assert!(err.to_string().contains("64 hex characters"), "{err}");
        }
    }

    #[test]
    fn a_key_file_is_read_and_a_bad_one_names_the_file_not_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let key = SecretKey::generate();
        std::fs::write(&path, format!("{}\n", key.to_hex())).unwrap();
        assert_eq!(SecretKey::from_file(&path).unwrap(), key);
        std::fs::write(&path, "not-a-key-hunter2").unwrap();
        let err = SecretKey::from_file(&path).unwrap_err();
        assert!(err.to_string().contains("secret.key"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"));
        let missing = SecretKey::from_file(dir.path().join("absent")).unwrap_err();
        assert!(
            matches!(missing, SecretKeyError::Read { .. }),
            "{missing:?}"
        );
    }

    #[test]
    fn debug_prints_nothing_of_the_key() {
        let key = SecretKey::from_bytes([0xab; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
    }

    #[test]
    fn a_sealed_blob_opens_only_with_its_key_and_host() {
        let key = SecretKey::generate();
        let blob = key.seal("pve1", b"hunter2").unwrap();
        assert_eq!(blob[0], BLOB_V1);
        assert_eq!(key.open("pve1", &blob).as_deref(), Some(&b"hunter2"[..]));
        assert_eq!(key.open("pve2", &blob), None);
        assert_eq!(SecretKey::generate().open("pve1", &blob), None);
        assert_eq!(key.open("pve1", &blob[..5]), None);
        assert_eq!(key.open("pve1", &[]), None);
        // A fresh nonce per write: sealing twice never gives the same blob.
        assert_ne!(key.seal("pve1", b"hunter2").unwrap(), blob);
    }
}
