//! A real brain on port 0 with a temporary store, simulated nodes that
//! join its spine over TLS, and an HTTP client: what every brain
//! integration test starts from.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use bigv_brain::clock::Clock;
use bigv_brain::model::{Session, Settings};
use bigv_brain::{Brain, BrainConfig};
use bigv_spine::Keepalive;
use bigv_spine::sim::{SimFleet, SimHardware};
use reqwest::StatusCode;
use serde_json::Value;

pub const SU_USER: &str = "admin";
pub const SU_PASSWORD: &str = "correct-horse-battery";

pub struct TestBrain {
    pub brain: Brain,
    pub http: reqwest::Client,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub clock: Clock,
}

/// Short timings so failure tests take seconds.
pub fn test_settings() -> Settings {
    Settings {
        fence_timeout_secs: 3,
        fence_margin_secs: 1,
        ..Settings::default()
    }
}

pub fn fast_keepalive() -> Keepalive {
    Keepalive {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(1500),
    }
}

impl TestBrain {
    pub async fn start() -> TestBrain {
        Self::start_with(test_settings(), Clock::system()).await
    }

    pub async fn start_with(settings: Settings, clock: Clock) -> TestBrain {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, settings, clock).await
    }

    /// Starts (or restarts) a brain on an existing data directory.
    pub async fn start_in(dir: tempfile::TempDir, settings: Settings, clock: Clock) -> TestBrain {
        Self::start_boot(dir, settings, clock, None).await
    }

    /// Starts a brain with boot services.
    pub async fn start_boot(
        dir: tempfile::TempDir,
        settings: Settings,
        clock: Clock,
        boot: Option<bigv_brain::boot::BootServicesConfig>,
    ) -> TestBrain {
        let mut config = BrainConfig::new(dir.path());
        config.boot = boot;
        config.bootstrap = Some((SU_USER.into(), SU_PASSWORD.into()));
        config.initial_settings = settings;
        config.keepalive = fast_keepalive();
        config.clock = clock.clone();
        let brain = Brain::start(config).await.expect("brain starts");
        let base = format!("http://{}", brain.api_addr);
        TestBrain {
            brain,
            http: reqwest::Client::new(),
            base,
            dir,
            clock,
        }
    }

    /// Stops the brain and starts a new one on the same store.
    pub async fn restart(self) -> TestBrain {
        let TestBrain {
            brain, dir, clock, ..
        } = self;
        let settings = brain.db.read().settings.clone();
        brain.shutdown().await;
        Self::start_in(dir, settings, clock).await
    }

    /// A session token for `username`, written straight into the store so
    /// tests do not depend on the login endpoint.
    pub async fn token_for(&self, username: &str) -> String {
        let token = bigv_brain::password::new_secret();
        let session = Session {
            token_sha256: bigv_brain::api::access::secret_hash(&token),
            username: username.into(),
            factors: vec!["password".into()],
            expires_at: self.clock.now() + 3600,
            created_at: self.clock.now(),
        };
        self.brain
            .db
            .write(move |tx| tx.put(session))
            .await
            .unwrap();
        token
    }

    pub async fn su(&self) -> String {
        self.token_for(SU_USER).await
    }

    /// Simulated heads and tails joined to this brain over pinned TLS.
    pub fn sims(&self, heads: usize, tails: usize) -> SimFleet {
        let pin = self.brain.fingerprint;
        let keepalive = fast_keepalive();
        SimFleet::start(
            &self.brain.spine_addr.to_string(),
            heads,
            tails,
            SimHardware::Head { memory_mib: 16384 },
            SimHardware::Tail {
                pools: BTreeMap::from([
                    ("sata1".to_string(), ("sata".to_string(), 1 << 20)),
                    ("ssd1".to_string(), ("ssd".to_string(), 1 << 19)),
                ]),
            },
            move |c| {
                c.tls_pin = Some(pin);
                c.keepalive = keepalive;
            },
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        token: Option<&str>,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .header("Accept", "application/json");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, Some(token), path, None)
            .await
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, Some(token), path, Some(body))
            .await
    }

    pub async fn put(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PUT, Some(token), path, Some(body))
            .await
    }

    pub async fn delete(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::DELETE, Some(token), path, None)
            .await
    }
}

/// Polls `check` until it returns `Some`, failing after `secs` seconds.
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
