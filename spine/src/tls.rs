//! TLS for the spine: the brain presents a self-signed certificate and
//! nodes accept it only if its SHA-256 fingerprint is the one pinned in
//! their boot parameters. No CA, no names, no clock: a diskless node has
//! neither a trust store nor a reliable time before it joins.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("fingerprint {input:?} is not \"sha256:\" followed by 64 hex digits")]
    BadFingerprint { input: String },
    #[error("could not generate the brain's certificate")]
    Generate(#[source] rcgen::Error),
    #[error("could not build the TLS configuration")]
    Config(#[source] rustls::Error),
}

/// The SHA-256 of a certificate's DER, written `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(cert_der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(cert_der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, TlsError> {
        let bad = || TlsError::BadFingerprint {
            input: s.chars().take(80).collect(),
        };
        let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

/// The brain's certificate and key (DER).
#[derive(Clone)]
pub struct BrainIdentity {
    pub cert_der: Vec<u8>,
    pub key_pkcs8_der: Vec<u8>,
}

impl BrainIdentity {
    /// Mints a fresh self-signed certificate (names are informational only).
    pub fn generate(names: &[&str]) -> Result<Self, TlsError> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names).map_err(TlsError::Generate)?;
        Ok(BrainIdentity {
            cert_der: certified.cert.der().to_vec(),
            key_pkcs8_der: certified.signing_key.serialize_der(),
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert_der)
    }

    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8_der.clone()));
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(self.cert_der.clone())], key)
            .map_err(TlsError::Config)?;
        Ok(Arc::new(config))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration that trusts exactly one certificate.
pub fn pinned_client_config(pin: Fingerprint) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = PinnedVerifier {
        pin,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The server name nodes present; the pin, not the name, is what is checked.
pub fn brain_server_name() -> ServerName<'static> {
    ServerName::try_from("bigv-brain").expect("static name is valid")
}

#[derive(Debug)]
struct PinnedVerifier {
    pin: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of(end_entity);
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::error!(expected = %self.pin, presented = %got, "brain certificate does not match the pinned fingerprint");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    // The handshake signature must still be checked: it proves the peer
    // holds the pinned certificate's key, not merely a copy of the cert.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_text_round_trips_and_rejects_junk() {
        let fp = Fingerprint::of(b"hello");
        let text = fp.to_string();
        assert_eq!(text.len(), 7 + 64);
        assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
        for junk in ["", "sha256:", "md5:00", &text[..70], &format!("{text}0")] {
            assert!(junk.parse::<Fingerprint>().is_err(), "{junk}");
        }
    }
}
