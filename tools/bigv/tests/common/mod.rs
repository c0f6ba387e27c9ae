//! A real brain on port 0 (temporary store, bootstrap `cluster_su`), and
//! the real `bigv` binary run against it with its own config directory.
//! Tests check effects through the brain's API or its store.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bigv_brain::api::tls::ApiTls;
use bigv_brain::clock::Clock;
use bigv_brain::model::{
    Account, AccountId, Admission, DbError, Group, GroupId, Image, Level, Node, Pool, Privilege,
    PrivilegeId, Role, Session, Settings, Target, User, UserId, VmId,
};
use bigv_brain::{Brain, BrainConfig};
use bigv_spine::Keepalive;
use bigv_spine::sim::{SimFleet, SimHardware};
use serde_json::Value;

pub const SU_USER: &str = "admin";
pub const SU_PASSWORD: &str = "correct-horse-battery";

pub struct Harness {
    pub rt: tokio::runtime::Runtime,
    pub brain: Option<Brain>,
    pub data: tempfile::TempDir,
    /// The CLI's config directory (`BIGV_CONFIG_DIR`).
    pub config: tempfile::TempDir,
    pub endpoint: String,
    pub http: reqwest::blocking::Client,
    pub fleet: Option<SimFleet>,
    su: std::cell::OnceCell<String>,
}

/// What one run of `bigv` did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success, showing the run if not.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "bigv failed: {self:#?}");
        self
    }

    /// Asserts the exit code, and that stderr is one `bigv: …` line.
    pub fn fails(self, code: i32) -> Run {
        assert_eq!(self.code, code, "wrong exit code: {self:#?}");
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.is_empty()).collect();
        let last = lines.last().copied().unwrap_or("");
        assert!(last.starts_with("bigv: "), "no one-line error: {self:#?}");
        assert!(!self.stderr.contains("panicked"), "panic: {self:#?}");
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

pub fn settings() -> Settings {
    Settings {
        fence_timeout_secs: 3,
        fence_margin_secs: 1,
        ..Settings::default()
    }
}

fn keepalive() -> Keepalive {
    Keepalive {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(1500),
    }
}

impl Harness {
    /// A cluster (two heads, one tail), an image, public addresses, and
    /// alice (account_admin of account alice) logged in.
    pub fn customer() -> Harness {
        let mut h = Harness::start();
        h.nodes(2, 1, Admission::Accepted);
        let (account, _) = h.account("alice");
        h.user(
            "alice",
            "alices-password",
            Level::AccountAdmin,
            Target::Account(account),
        );
        h.write(|tx| {
            tx.put(Image {
                name: "bookworm".into(),
                description: "Debian 12".into(),
                size: 2048,
            })
        });
        h.bigv_env(
            &["--profile", "ops", "login"],
            &[("BIGV_USER", SU_USER), ("BIGV_PASS", SU_PASSWORD)],
        )
        .ok();
        let ops = |args: &[&str]| {
            let mut all = vec!["--profile", "ops"];
            all.extend_from_slice(args);
            h.bigv(&all).ok();
        };
        ops(&["admin", "add", "vlan", "1"]);
        ops(&["admin", "add", "ip", "range", "192.0.2.0/24", "1"]);
        // Console addresses come from a management VLAN.
        ops(&["admin", "add", "vlan", "2", "--usage-type", "management"]);
        ops(&["admin", "add", "ip", "range", "198.51.100.0/24", "2"]);
        h.bigv_env(
            &["login"],
            &[("BIGV_USER", "alice"), ("BIGV_PASS", "alices-password")],
        )
        .ok();
        h
    }

    pub fn start() -> Harness {
        Self::start_with(settings())
    }

    pub fn start_with(settings: Settings) -> Harness {
        Self::start_serving(settings, None)
    }

    /// A brain whose API is served over HTTPS; `endpoint` is its https URL.
    pub fn start_https(tls: ApiTls) -> Harness {
        Self::start_serving(settings(), Some(tls))
    }

    fn start_serving(settings: Settings, api_tls: Option<ApiTls>) -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut config = BrainConfig::new(data.path());
        config.bootstrap = Some((SU_USER.into(), SU_PASSWORD.into()));
        config.initial_settings = settings;
        config.keepalive = keepalive();
        config.clock = Clock::system();
        config.api_tls = api_tls;
        let brain = rt.block_on(Brain::start(config)).expect("brain starts");
        let scheme = if brain.api_https { "https" } else { "http" };
        let endpoint = format!("{scheme}://{}", brain.api_addr);
        Harness {
            rt,
            brain: Some(brain),
            data,
            config: tempfile::tempdir().unwrap(),
            endpoint,
            http: reqwest::blocking::Client::new(),
            fleet: None,
            su: std::cell::OnceCell::new(),
        }
    }

    pub fn brain(&self) -> &Brain {
        self.brain.as_ref().expect("brain running")
    }

    pub fn config_dir(&self) -> &Path {
        self.config.path()
    }

    /// A `bigv` command with a clean environment pointing at this brain.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bigv"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.config.path())
            .env("BIGV_CONFIG_DIR", self.config.path())
            .env("BIGV_ENDPOINT", &self.endpoint)
            .env("BIGV_POLL_MS", "50")
            .stdin(Stdio::null());
        cmd
    }

    fn output(mut cmd: Command, stdin: Option<&str>) -> Run {
        let out = match stdin {
            None => cmd.output().expect("bigv runs"),
            Some(input) => {
                cmd.stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let mut child = cmd.spawn().expect("bigv runs");
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(input.as_bytes())
                    .unwrap();
                child.wait_with_output().unwrap()
            }
        };
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a prepared command.
    pub fn run(&self, cmd: Command) -> Run {
        Self::output(cmd, None)
    }

    /// Runs a prepared command with `input` on stdin.
    pub fn bigv_stdin_cmd(&self, cmd: Command, input: &str) -> Run {
        Self::output(cmd, Some(input))
    }

    /// Runs `bigv args` with the stored login (if any).
    pub fn bigv(&self, args: &[&str]) -> Run {
        Self::output(self.command(args), None)
    }

    /// Runs `bigv args` with extra environment variables.
    pub fn bigv_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::output(cmd, None)
    }

    /// Runs `bigv args` with `input` on stdin.
    pub fn bigv_stdin(&self, args: &[&str], input: &str) -> Run {
        Self::output(self.command(args), Some(input))
    }

    /// `bigv login` as the bootstrap cluster_su, via BIGV_USER/BIGV_PASS.
    pub fn login_su(&self) {
        self.bigv_env(
            &["login"],
            &[("BIGV_USER", SU_USER), ("BIGV_PASS", SU_PASSWORD)],
        )
        .ok();
    }

    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut bigv_brain::model::Tx<'_>) -> Result<T, DbError> + Send + 'static,
    ) -> T
    where
        T: Send + 'static,
    {
        self.rt
            .block_on(self.brain().db.write(f))
            .expect("store write")
    }

    /// A session for `username` straight in the store.
    pub fn token_for(&self, username: &str) -> String {
        let token = bigv_brain::password::new_secret();
        let session = Session {
            token_sha256: bigv_brain::api::access::secret_hash(&token),
            username: username.into(),
            factors: vec!["password".into()],
            expires_at: Clock::system().now() + 3600,
            created_at: Clock::system().now(),
        };
        self.write(move |tx| tx.put(session));
        token
    }

    /// A cluster_su session token for checking effects (one per harness).
    pub fn su(&self) -> String {
        self.su.get_or_init(|| self.token_for(SU_USER)).clone()
    }

    /// A user with a password and no privileges.
    pub fn plain_user(&self, username: &str, password: &str) -> UserId {
        let (username, hash) = (username.to_owned(), bigv_brain::password::hash(password));
        self.write(move |tx| {
            let id = UserId(tx.new_id::<User>()?);
            tx.put(User {
                id,
                username,
                email: None,
                authorized_keys: String::new(),
                password_hash: Some(hash),
            })?;
            Ok(id)
        })
    }

    /// A user with a password and one privilege.
    pub fn user(&self, username: &str, password: &str, level: Level, target: Target) {
        let id = self.plain_user(username, password);
        self.write(move |tx| {
            let pid = PrivilegeId(tx.new_id::<Privilege>()?);
            tx.put(Privilege {
                id: pid,
                user_id: id,
                level,
                target,
                api_key_id: None,
                password_required: true,
                yubikey_required: false,
                yubikey_otp_max_age: None,
                ip_restrictions: None,
                creating_username: None,
            })
        });
    }

    /// An account with its `default` group, straight in the store.
    pub fn account(&self, name: &str) -> (AccountId, GroupId) {
        let name = name.to_owned();
        self.write(move |tx| {
            let id = AccountId(tx.new_id::<Account>()?);
            tx.put(Account {
                id,
                name,
                suspended: false,
            })?;
            let gid = GroupId(tx.new_id::<Group>()?);
            tx.put(Group {
                id: gid,
                account_id: id,
                name: "default".into(),
            })?;
            Ok((id, gid))
        })
    }

    /// Node records `head1…`/`tail1…` for the simulated nodes' ids, with
    /// pools `tailN-sata1` and `tailN-ssd1`, then the nodes themselves.
    pub fn nodes(&mut self, heads: usize, tails: usize, admission: Admission) {
        self.write(move |tx| {
            let node = |node_id: String, role, label: String| Node {
                node_id,
                role,
                label,
                admission,
                zone: Some("york".into()),
                usage_strategy: None,
                image_version: Some("sim".into()),
                addresses: vec![],
                first_seen: 0,
            };
            for i in 0..heads {
                tx.put(node(
                    format!("sim-head-{i:04}"),
                    Role::Head,
                    format!("head{}", i + 1),
                ))?;
            }
            for i in 0..tails {
                let id = format!("sim-tail-{i:04}");
                tx.put(node(id.clone(), Role::Tail, format!("tail{}", i + 1)))?;
                for (name, grade) in [("sata1", "sata"), ("ssd1", "ssd")] {
                    tx.put(Pool {
                        label: format!("tail{}-{name}", i + 1),
                        node_id: id.clone(),
                        name: name.into(),
                        grade: grade.into(),
                        overcommit_ratio: 1.0,
                        usage_strategy: None,
                        migration_concurrency: 1,
                        iops_limit: None,
                    })?;
                }
            }
            Ok(())
        });
        let brain = self.brain();
        let pin = brain.fingerprint;
        let addr = brain.spine_addr.to_string();
        let _guard = self.rt.enter();
        let fleet = SimFleet::start(
            &addr,
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
                c.keepalive = keepalive();
            },
        );
        // The brain carries out migrations; slow simulated copies keep
        // them running while a CLI test looks at them.
        for node in &fleet.nodes {
            node.mirror_time(Duration::from_secs(600));
        }
        self.fleet = Some(fleet);
        let want = heads + tails;
        self.eventually("the simulated nodes to join", 20, || {
            let n = brain_online(self);
            (n == want).then_some(())
        });
    }

    /// A request to the brain as `token`; (status, JSON or text).
    pub fn api(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.endpoint))
            .bearer_auth(token)
            .header("Accept", "application/json");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn get(&self, token: &str, path: &str) -> Value {
        let (status, v) = self.api(reqwest::Method::GET, token, path, None);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    pub fn eventually<T>(&self, what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {secs} s waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The simulated head running VM `id`, once the reconciler has
    /// started it there.
    pub fn running_on(&self, id: VmId) -> std::sync::Arc<bigv_spine::sim::SimNode> {
        self.eventually("the server to run on a simulated head", 20, || {
            let brain = self.brain();
            let vm = brain.db.read().vm(id)?.clone();
            let node = self.fleet.as_ref()?.node(vm.head.as_deref()?)?.clone();
            let names = [id.0.to_string(), format!("vm.{}", id.0)];
            // The brain must know too: it takes signals only for a VM its
            // head reports running.
            let known = bigv_brain::api::power::guest(&brain.spine, &vm)
                == bigv_brain::api::power::Guest::Running;
            (known && node.vms().keys().any(|k| names.contains(k))).then_some(node)
        })
    }

    pub fn profile_file(&self, variable: &str) -> PathBuf {
        self.config.path().join("profiles/default").join(variable)
    }
}

fn brain_online(h: &Harness) -> usize {
    let su = h.su();
    let heads = h.get(&su, "/admin/heads");
    let tails = h.get(&su, "/admin/tails");
    [heads, tails]
        .iter()
        .flat_map(|v| v.as_array().cloned().unwrap_or_default())
        .filter(|n| n["online"] == true)
        .count()
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.fleet.take();
        if let Some(brain) = self.brain.take() {
            self.rt.block_on(brain.shutdown());
        }
    }
}

/// Replaces what changes from run to run (ids, addresses, tokens, times)
/// so output can be compared with a golden file.
pub fn normalise(text: &str, endpoint: &str) -> String {
    let mut out = text.replace(endpoint, "http://BRAIN");
    // Timestamps like 2026-11-23 10:11:12 UTC or 2026-11-23T10:11:12+0000.
    out = replace_pattern(&out, |s| {
        let b = s.as_bytes();
        if b.len() >= 19
            && b[4] == b'-'
            && b[7] == b'-'
            && (b[10] == b' ' || b[10] == b'T')
            && b[13] == b':'
            && b[16] == b':'
            && b[..4].iter().all(u8::is_ascii_digit)
        {
            Some((19, "TIME".into()))
        } else {
            None
        }
    });
    out
}

/// Scans `text`, letting `at` replace a match starting at each position.
fn replace_pattern(text: &str, at: impl Fn(&str) -> Option<(usize, String)>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if !text.is_char_boundary(i) {
            i += 1;
            continue;
        }
        match at(&text[i..]) {
            Some((len, with)) => {
                out.push_str(&with);
                i += len;
            }
            None => {
                let c = text[i..].chars().next().unwrap();
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// Compares `actual` with tests/golden/`name`; `UPDATE_GOLDEN=1` rewrites it.
pub fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "output differs from {} (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

/// JSON with the values of `keys` (anywhere) replaced by a placeholder.
pub fn mask_json(mut v: Value, keys: &[&str]) -> Value {
    fn walk(v: &mut Value, keys: &[&str]) {
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    if keys.contains(&k.as_str()) && !child.is_null() {
                        *child = Value::String(format!("<{k}>"));
                    } else {
                        walk(child, keys);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, keys)),
            _ => {}
        }
    }
    walk(&mut v, keys);
    v
}
