//! The real `bigv` CLI (`tools/bigv`), run inside the namespace (the API
//! listens on the namespace's loopback) with its own config folder, as a
//! customer or operator types it.

use std::path::{Path, PathBuf};

use crate::brain::BrainProcess;
use crate::brain::api_url;
use crate::netns::Netns;

pub struct Bigv {
    bin: PathBuf,
    config: PathBuf,
    ns: String,
    user: String,
    password: String,
    /// The brain's certificate fingerprint, pinned as `bigv --tls-fingerprint`.
    fingerprint: String,
}

impl Bigv {
    /// Builds the binary (a no-op when current).
    pub fn binary() -> PathBuf {
        crate::cargo_binary("bigv-cli", "bigv")
    }

    /// `bigv` as `user`, its profile in `config` (a folder).
    pub fn new(
        bin: &Path,
        ns: &Netns,
        brain: &mut BrainProcess,
        config: &Path,
        user: &str,
        password: &str,
    ) -> Bigv {
        let fingerprint = brain.wait_fingerprint();
        std::fs::create_dir_all(config).expect("the CLI's config folder");
        Bigv {
            bin: bin.to_owned(),
            config: config.to_owned(),
            ns: ns.name.clone(),
            user: user.into(),
            password: password.into(),
            fingerprint,
        }
    }

    /// Runs `bigv ARGS…`; returns stdout, or stdout+stderr as the error.
    pub fn try_run(&self, args: &[&str]) -> Result<String, String> {
        self.output(args).map(|(out, _)| out)
    }

    /// Runs `bigv ARGS…` and fails the test if it fails; returns stdout
    /// and stderr together (where notes go).
    pub fn run_all(&self, args: &[&str]) -> String {
        let (out, err) = self.output(args).unwrap_or_else(|e| panic!("{e}"));
        out + &err
    }

    fn output(&self, args: &[&str]) -> Result<(String, String), String> {
        let o = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(&self.bin)
            .args(args)
            .env("BIGV_CONFIG_DIR", &self.config)
            .env("BIGV_ENDPOINT", api_url(""))
            .env("BIGV_TLS_FINGERPRINT", &self.fingerprint)
            .env("BIGV_USER", &self.user)
            .env("BIGV_PASS", &self.password)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running bigv");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        eprintln!("$ bigv {}\n{out}{err}", args.join(" "));
        if o.status.success() {
            Ok((out, err))
        } else {
            Err(format!("bigv {args:?}: {}\n{out}{err}", o.status))
        }
    }

    /// Runs `bigv ARGS…` and fails the test if it fails.
    pub fn run(&self, args: &[&str]) -> String {
        self.try_run(args).unwrap_or_else(|e| panic!("{e}"))
    }
}
