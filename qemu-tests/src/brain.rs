//! The real `bigv-brain` binary, run inside the namespace with its boot
//! services on the bridge and its API on HTTPS (its own certificate,
//! pinned by fingerprint as an operator would), and an admin API client
//! for it. The process is killed by PID on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::{BRAIN_ADDRESS, BRIDGE, Netns};

pub const API: &str = "127.0.0.1:8080";
pub const SPINE_PORT: u16 = 4430;
pub const ADMIN: &str = "admin";
pub const PASSWORD: &str = "correct-horse-battery";

/// The API's URL for `path`.
pub fn api_url(path: &str) -> String {
    format!("https://{API}{path}")
}

/// Builds the `bigv-brain` binary (a no-op when it is current) into the
/// target directory this test was built in and returns its path.
pub fn binary() -> PathBuf {
    let target = crate::target_dir();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(bigv_image::workspace_root())
        .args([
            "build",
            "--locked",
            "-p",
            "bigv-brain",
            "--bin",
            "bigv-brain",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("running cargo");
    assert!(status.success(), "building bigv-brain failed");
    target.join("debug").join("bigv-brain")
}

/// `bigv-brain --data-dir DIR image add IMAGE`, as an operator does.
pub fn add_image(bin: &Path, data: &Path, image: &Path) {
    let o = Command::new(bin)
        .arg("--data-dir")
        .arg(data)
        .args(["image", "add"])
        .arg(image)
        .output()
        .expect("bigv-brain image add");
    assert!(
        o.status.success(),
        "image add: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

pub struct BrainProcess {
    child: Child,
    /// What it was started with, to start it again on the same data
    /// directory ([`BrainProcess::restart`]).
    ns: String,
    bin: PathBuf,
    data: PathBuf,
    extra: Vec<String>,
}

impl BrainProcess {
    /// Starts the brain in `ns` with DHCP/TFTP/RA/HTTP boot on the bridge;
    /// its output goes to `log`.
    pub fn start(ns: &Netns, bin: &Path, data: &Path, log: &Path) -> BrainProcess {
        Self::start_with(ns, bin, data, log, &[])
    }

    /// [`BrainProcess::start`] with more command-line arguments (e.g.
    /// `--boot-kernel-arg …`).
    pub fn start_with(
        ns: &Netns,
        bin: &Path,
        data: &Path,
        log: &Path,
        extra: &[&str],
    ) -> BrainProcess {
        let ns = ns.name.clone();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn(&ns, bin, data, log, &extra);
        BrainProcess {
            child,
            ns,
            bin: bin.to_owned(),
            data: data.to_owned(),
            extra,
        }
    }

    /// SIGKILLs the brain, as a crash or a pulled plug would, and reaps it.
    pub fn kill(&mut self) {
        // `ip netns exec` execs the brain: this PID is the brain's.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the brain again (after [`BrainProcess::kill`]) on the same
    /// data directory with the same arguments; its output goes to `log`.
    pub fn restart(&mut self, log: &Path) {
        assert!(self.exited(), "restart: the brain is still running");
        self.child = spawn(&self.ns, &self.bin, &self.data, log, &self.extra);
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The fingerprint clients pin (the brain's own certificate, made at
    /// its first start), once the certificate exists.
    pub fn fingerprint(&self) -> Option<String> {
        let der = std::fs::read(self.data.join("spine-cert.der")).ok()?;
        // Whole? A DER SEQUENCE with a two-byte length: 30 82 HI LO.
        let whole = der.len() > 4
            && der[..2] == [0x30, 0x82]
            && der.len() == 4 + usize::from(u16::from_be_bytes([der[2], der[3]]));
        whole.then(|| bigv_spine::tls::Fingerprint::of(&der).to_string())
    }

    /// [`BrainProcess::fingerprint`], waiting for the brain to start.
    pub fn wait_fingerprint(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(!self.exited(), "the brain exited while starting");
            if let Some(pin) = self.fingerprint() {
                return pin;
            }
            assert!(Instant::now() < deadline, "the brain never started");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn spawn(ns: &str, bin: &Path, data: &Path, log: &Path, extra: &[String]) -> Child {
    let out = std::fs::File::create(log).expect("the brain's log file");
    let err = out.try_clone().expect("the brain's log file");
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin)
        .arg("--data-dir")
        .arg(data)
        .args(["--api-listen", API, "--api-tls"])
        .args(["--spine-listen", &format!("0.0.0.0:{SPINE_PORT}")])
        .args(["--bootstrap-user", ADMIN])
        .env("BIGV_BOOTSTRAP_PASSWORD", PASSWORD)
        .args(["--boot-interface", BRIDGE, "--boot-address", BRAIN_ADDRESS])
        .args(["--boot-pool", "10.0.0.100-10.0.0.200"])
        .args(["--boot-ra-prefix", "fd00::/64"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("starting bigv-brain")
}

impl Drop for BrainProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS client trusting exactly the certificate `pin` names.
fn pinned_client(pin: &str) -> reqwest::Client {
    let pin = pin.parse().expect("a fingerprint");
    let tls = bigv_spine::tls::pinned_client_config(pin).expect("a TLS configuration");
    reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .build()
        .expect("an HTTPS client")
}

/// The admin API as an operator uses it (must run on a thread inside the
/// namespace: the API listens on the namespace's loopback).
pub struct Admin {
    http: reqwest::Client,
    token: String,
}

impl Admin {
    /// Logs in as the bootstrap admin, retrying while the brain starts.
    pub async fn login(brain: &mut BrainProcess) -> Admin {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(!brain.exited(), "the brain exited while starting");
            // Read again each time: the certificate appears at first start.
            let http = brain.fingerprint().map(|pin| pinned_client(&pin));
            let r = match &http {
                Some(http) => http
                    .post(api_url("/session"))
                    .json(&serde_json::json!({"username": ADMIN, "password": PASSWORD}))
                    .send()
                    .await
                    .ok(),
                None => None,
            };
            if let (Some(http), Some(r)) = (http, r)
                && r.status().is_success()
            {
                let token = r.text().await.expect("the session token");
                return Admin {
                    http,
                    token: token.trim().to_owned(),
                };
            }
            assert!(Instant::now() < deadline, "the brain's API never answered");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(api_url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "GET {path}: {status} {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Value {
        let r = req
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "{what}: {status} {body}");
        serde_json::from_str(&body).unwrap_or(Value::Null)
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let req = self.http.post(api_url(path)).json(&body);
        self.send(req, &format!("POST {path}")).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Value {
        let req = self.http.put(api_url(path)).json(&body);
        self.send(req, &format!("PUT {path}")).await
    }

    /// The node with this id in `/admin/heads` or `/admin/tails`.
    pub async fn node(&self, list: &str, id: &str) -> Option<Value> {
        self.get(list)
            .await
            .as_array()?
            .iter()
            .find(|n| n["uuid"] == id)
            .cloned()
    }
}
