//! Certificate pinning for the self-signed certificate every fresh Proxmox
//! install serves: the leaf certificate's SHA-256 must equal the configured
//! pin, and no CA chain, name or validity period is required (the pin is the
//! trust). The handshake signature is still verified against the pinned
//! certificate's key, so a server must hold that key to pass.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::driver::{DriverError, ErrorKind};

/// Parses a SHA-256 pin written `AA:BB:...` (as the Proxmox GUI shows it) or
/// as plain hex, any case.
pub(crate) fn parse_fingerprint(text: &str) -> Result<[u8; 32], DriverError> {
    let hex_text: String = text
        .chars()
        .filter(|c| !matches!(c, ':' | ' ' | '-'))
        .collect();
    let bytes = hex::decode(&hex_text).ok().filter(|b| b.len() == 32).ok_or_else(|| {
        DriverError::new(
            ErrorKind::ConfigError,
            format!("tls_fingerprint must be a SHA-256 fingerprint (32 bytes, `AA:BB:...` or hex), got {text:?}"),
        )
    })?;
    let mut pin = [0u8; 32];
    pin.copy_from_slice(&bytes);
    Ok(pin)
}

/// `AA:BB:...` form of a fingerprint, for messages.
pub(crate) fn format_fingerprint(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A handshake failure in words: the pin mismatch's own text rather than
/// rustls's `Debug` rendering of it.
pub(crate) fn describe_tls_error(e: &Error) -> String {
    match e {
        Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => inner.to_string(),
        other => other.to_string(),
    }
}

/// A rustls client config that trusts exactly the pinned certificate.
pub(crate) fn pinned_client_config(pin: [u8; 32]) -> Result<rustls::ClientConfig, DriverError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinVerifier {
        pin,
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            DriverError::new(ErrorKind::TlsError, format!("tls setup failed: {e}")).with_source(e)
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

/// Accepts the server certificate iff its SHA-256 equals the pin.
#[derive(Debug)]
struct PinVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

/// The certificate the server sent is not the pinned one.
#[derive(Debug, thiserror::Error)]
#[error("server certificate sha256 {found} does not match the pinned tls_fingerprint")]
struct FingerprintMismatch {
    found: String,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let found: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if found == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(FingerprintMismatch {
                    found: format_fingerprint(&found),
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_in_colon_and_plain_hex_forms() {
        let colon = "07:CC:65:3F:F9:96:7E:6C:B8:4C:DA:58:4E:E1:92:D9:D4:AC:88:8D:40:97:42:2E:AA:16:61:18:9D:53:DC:72";
        let plain = "07cc653ff9967e6cb84cda584ee192d9d4ac888d4097422eaa1661189d53dc72";
        assert_eq!(
            parse_fingerprint(colon).unwrap(),
            parse_fingerprint(plain).unwrap()
        );
        assert_eq!(
            format_fingerprint(&parse_fingerprint(plain).unwrap()),
            colon
        );
    }

    #[test]
    fn short_or_non_hex_pins_are_config_errors() {
        for bad in ["", "AA:BB", "zz", &"A".repeat(66)] {
            assert_eq!(
                parse_fingerprint(bad).unwrap_err().kind,
                ErrorKind::ConfigError
            );
        }
    }

    #[test]
    fn verifier_rejects_a_certificate_other_than_the_pin() {
        let cert = CertificateDer::from(vec![1u8, 2, 3]);
        let pin: [u8; 32] = Sha256::digest([1u8, 2, 3]).into();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let name = ServerName::try_from("pve1").unwrap();
        let ok = PinVerifier {
            pin,
            provider: provider.clone(),
        };
        assert!(ok
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .is_ok());
        let other = PinVerifier {
            pin: [0; 32],
            provider,
        };
        let err = other
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        let text = describe_tls_error(&err);
        assert!(
            text.starts_with("server certificate sha256 03:90:"),
            "{text}"
        );
        assert!(
            text.ends_with("does not match the pinned tls_fingerprint"),
            "{text}"
        );
    }
}
