//! Which certificates an https endpoint may present (docs/cli.md "HTTPS").
//! A brain serving its own self-signed certificate is trusted by pinning
//! its fingerprint (`tls-fingerprint`, as heads and tails do on the
//! spine); one with a certificate from a private CA by that CA
//! (`ca-cert`); otherwise the system's trusted roots decide.

use std::path::PathBuf;
use std::sync::Arc;

use bigv_spine::tls::{Fingerprint, pinned_client_config};
use rustls::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::error::{CliError, Exit, Result};

/// What an https endpoint's certificate is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The system's trusted roots.
    System,
    /// Exactly the certificate with this SHA-256 fingerprint.
    Pinned(Fingerprint),
    /// Certificates issued by the CA(s) in this PEM file.
    Ca(PathBuf),
}

impl Trust {
    /// From the `tls-fingerprint` and `ca-cert` settings.
    pub fn from_settings(fingerprint: Option<&str>, ca_cert: Option<&str>) -> Result<Trust> {
        match (fingerprint, ca_cert) {
            (Some(_), Some(_)) => Err(CliError::usage(
                "tls-fingerprint and ca-cert are both set: give one way to trust the brain",
            )),
            (Some(pin), None) => pin.trim().parse().map(Trust::Pinned).map_err(|_| {
                CliError::usage(format!(
                    "tls-fingerprint {pin:?} is not \"sha256:\" followed by 64 hex digits \
                     (bigv-brain prints it when it starts)"
                ))
            }),
            (None, Some(path)) => Ok(Trust::Ca(PathBuf::from(path))),
            (None, None) => Ok(Trust::System),
        }
    }

    /// The TLS client configuration that enforces this trust.
    pub fn client_config(&self) -> Result<ClientConfig> {
        let provider = provider();
        let config = match self {
            Trust::Pinned(pin) => (*pinned_client_config(*pin).map_err(setup)?).clone(),
            Trust::Ca(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| CliError::usage(format!("ca-cert {}: {e}", path.display())))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(CliError::usage(format!(
                        "ca-cert {} holds no usable certificate",
                        path.display()
                    )));
                }
                let verifier =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| CliError::usage(format!("ca-cert {}: {e}", path.display())))?;
                ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(setup)?
                    .with_webpki_verifier(verifier)
                    .with_no_client_auth()
            }
            Trust::System => {
                let verifier =
                    rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|e| {
                        CliError::usage(format!(
                            "cannot load the system's trusted certificates ({e}); \
                             set tls-fingerprint or ca-cert"
                        ))
                    })?;
                ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(setup)?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth()
            }
        };
        Ok(config)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn setup(e: impl std::fmt::Display) -> CliError {
    CliError::new(Exit::Bug, format!("cannot set up TLS: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn settings_choose_the_trust() {
        assert_eq!(Trust::from_settings(None, None).unwrap(), Trust::System);
        assert!(matches!(
            Trust::from_settings(Some(PIN), None).unwrap(),
            Trust::Pinned(_)
        ));
        assert_eq!(
            Trust::from_settings(None, Some("/etc/ca.pem")).unwrap(),
            Trust::Ca("/etc/ca.pem".into())
        );
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let e = Trust::from_settings(Some("sha256:12"), None).unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        assert!(e.message.contains("tls-fingerprint"), "{}", e.message);
        let e = Trust::from_settings(Some(PIN), Some("/x")).unwrap_err();
        assert!(e.message.contains("both"), "{}", e.message);
        let e = Trust::Ca("/nonexistent/ca.pem".into())
            .client_config()
            .unwrap_err();
        assert!(e.message.contains("/nonexistent/ca.pem"), "{}", e.message);
    }
}
