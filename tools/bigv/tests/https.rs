//! The CLI against a brain serving its API over HTTPS: with the brain's
//! own certificate pinned by fingerprint, and with a certificate from a
//! private CA the CLI is told to trust. An endpoint the CLI cannot verify
//! is refused with exit 150 and says why; nothing is sent in clear.

mod common;

use std::path::PathBuf;

use bigv_brain::api::tls::ApiTls;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// `bigv show account --json` after logging in: proves a full round trip.
fn login_and_read(h: &Harness, env: &[(&str, &str)]) -> Run {
    let mut login = vec![("BIGV_USER", SU_USER), ("BIGV_PASS", SU_PASSWORD)];
    login.extend_from_slice(env);
    let run = h.bigv_env(&["login"], &login);
    if run.code != 0 {
        return run;
    }
    h.bigv_env(&["show", "user", SU_USER, "--json"], env)
}

#[test]
fn a_pinned_self_signed_brain_is_trusted_and_nothing_else_is() {
    let h = Harness::start_https(ApiTls::OwnCertificate);
    assert!(h.endpoint.starts_with("https://"), "{}", h.endpoint);
    let pin = h.brain().fingerprint.to_string();

    let run = login_and_read(&h, &[("BIGV_TLS_FINGERPRINT", &pin)]).ok();
    assert_eq!(run.json()["username"], SU_USER, "{run:?}");

    // `login --tls-fingerprint` keeps the pin in the profile with the token.
    h.bigv_env(
        &["--tls-fingerprint", &pin, "login"],
        &[("BIGV_USER", SU_USER), ("BIGV_PASS", SU_PASSWORD)],
    )
    .ok();
    h.bigv(&["show", "user", SU_USER]).ok();

    // Without a pin the self-signed certificate is not trusted.
    let run = login_and_read(&h, &[("BIGV_PROFILE", "unpinned")]).fails(50);
    assert!(run.stderr.contains("certificate"), "{run:?}");

    // A wrong pin is refused too, whichever certificate is presented.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let run = h
        .bigv_env(
            &["show", "user", SU_USER],
            &[("BIGV_TLS_FINGERPRINT", &wrong)],
        )
        .fails(150);
    assert!(run.stderr.contains("certificate"), "{run:?}");

    // A malformed pin is a usage error naming the setting.
    let run = h
        .bigv_env(
            &["show", "user", SU_USER],
            &[("BIGV_TLS_FINGERPRINT", "sha256:xyz")],
        )
        .fails(7);
    assert!(run.stderr.contains("tls-fingerprint"), "{run:?}");

    // Plain http to the https port gets no answer it could trust.
    let http = h.endpoint.replace("https://", "http://");
    h.bigv_env(&["show", "user", SU_USER], &[("BIGV_ENDPOINT", &http)])
        .fails(150);
}

/// A CA and a certificate it issued for 127.0.0.1 and localhost, as PEM
/// files in `dir`: (ca.pem, cert.pem, key.pem).
fn private_ca(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[test]
fn a_brain_with_a_private_ca_certificate_is_trusted_through_that_ca() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(pki.path());
    let h = Harness::start_https(ApiTls::Files { cert, key });
    let ca = ca.display().to_string();

    // https is assumed when the endpoint has no scheme.
    let bare = h.endpoint.trim_start_matches("https://").to_owned();
    let run = login_and_read(&h, &[("BIGV_CA_CERT", &ca), ("BIGV_ENDPOINT", &bare)]).ok();
    assert_eq!(run.json()["username"], SU_USER, "{run:?}");

    // The CA can be saved in the profile, and show config says so.
    h.bigv(&["update", "config", "--ca-cert", &ca]).ok();
    let run = h.bigv(&["show", "config", "--json"]).ok();
    assert_eq!(run.json()["ca-cert"]["value"], ca.as_str(), "{run:?}");
    assert_eq!(run.json()["ca-cert"]["source"], "profile", "{run:?}");
    h.bigv(&["show", "user", SU_USER]).ok();

    // The system's roots do not vouch for a private CA.
    let run = h
        .bigv_env(
            &["--profile", "other", "show", "user", SU_USER],
            &[("BIGV_TOKEN", "any")],
        )
        .fails(150);
    assert!(run.stderr.contains("certificate"), "{run:?}");

    // A pin on top of the saved CA is ambiguous, and refused as such.
    let pin = h.brain().fingerprint.to_string();
    let run = h
        .bigv(&["--tls-fingerprint", &pin, "show", "user", SU_USER])
        .fails(7);
    assert!(run.stderr.contains("both"), "{run:?}");
}
