//! `bigv-brain-bench`: the brain at cluster scale (issue 3's benchmark).
//!
//! Starts a real `bigv-brain` process on loopback with a fresh data
//! directory, joins a `bigv-sim` fleet (1,000 heads and 250 tails by
//! default) to its spine over pinned TLS, creates the VMs through the HTTP
//! API the way `bigv add server` does, and measures:
//!
//! - the time to place and run them all (as the heads report it);
//! - GET latency for single VMs under steady load from this process;
//! - the brain's resident memory;
//! - after a graceful brain restart, the time until every node is back and
//!   every VM is reported running again (the brain must not restart any).
//!
//! The figures are printed as a table beside the targets; nothing is
//! asserted. Run it with `tools/bench-brain.sh` (release build).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Parser)]
#[command(about = "Benchmark the brain with a simulated fleet and load through its API")]
struct Args {
    #[arg(long, default_value_t = 1000)]
    heads: usize,
    #[arg(long, default_value_t = 250)]
    tails: usize,
    #[arg(long, default_value_t = 20_000)]
    vms: usize,
    /// vm_create requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Clients issuing GETs in the latency phase.
    #[arg(long, default_value_t = 8)]
    get_clients: usize,
    #[arg(long, default_value_t = 10)]
    get_seconds: u64,
    /// Give up on any one phase after this many seconds.
    #[arg(long, default_value_t = 900)]
    phase_timeout: u64,
    /// Where bigv-brain and bigv-sim are (default: beside this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

const USER: &str = "bench";
const PASSWORD: &str = "bench-password-1";
const VM_MEMORY_MIB: u64 = 256;
const DISC_MIB: u64 = 1024;

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.heads == 0 || args.tails == 0 || args.vms == 0 {
        bail!("--heads, --tails and --vms must each be at least 1");
    }
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .to_owned(),
    };
    if bin_dir.ends_with("debug") {
        eprintln!("warning: debug binaries; figures are only meaningful for a release build");
    }
    let dir = tempfile::tempdir()?;
    let api = free_port()?;
    let spine = free_port()?;
    let mut table = Table::default();

    let (mut brain, pin) = Brain::start(&bin_dir, dir.path(), api, spine).await?;
    let vms_per_head = args.vms.div_ceil(args.heads) as u64;
    let discs_per_tail = args.vms.div_ceil(args.tails) as u64;
    let mut sim = Command::new(bin_dir.join("bigv-sim"))
        .args(["fleet", "--brain", &format!("127.0.0.1:{spine}")])
        .args(["--fingerprint", &pin])
        .args(["--heads", &args.heads.to_string()])
        .args(["--tails", &args.tails.to_string()])
        // Twice what the VMs need, so placement never runs out.
        .args([
            "--head-memory",
            &(2 * vms_per_head * VM_MEMORY_MIB).to_string(),
        ])
        .args(["--pool-size", &(2 * discs_per_tail * DISC_MIB).to_string()])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("sim.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting bigv-sim")?;

    let client = Api::login(api).await?;
    let phase = Duration::from_secs(args.phase_timeout);
    let began = Instant::now();
    client
        .wait_for("every node to join", phase, |c| {
            c.nodes == args.heads + args.tails
        })
        .await?;
    table.row("fleet joined", secs(began.elapsed()), "");

    client.setup(args.vms).await?;
    let began = Instant::now();
    let created = client.create_vms(args.vms, args.concurrency).await?;
    table.row(
        &format!("create {} VMs through the API", args.vms),
        secs(began.elapsed()),
        "",
    );
    table.row(
        "vm_create latency p50 / p99",
        format!("{} / {}", ms(pct(&created, 50)), ms(pct(&created, 99))),
        "",
    );
    // The growth curve: latency as the model fills, in tenths of the run
    // (requests in the order they finished).
    let tenth = created.len().div_ceil(10).max(1);
    for (i, part) in created.chunks(tenth).enumerate() {
        let from = i * tenth;
        table.row(
            &format!("  vm_create p50 / p99, VMs {}–{}", from, from + part.len()),
            format!("{} / {}", ms(pct(part, 50)), ms(pct(part, 99))),
            "",
        );
    }
    client
        .wait_for("every VM to run", phase, |c| c.running == args.vms)
        .await?;
    table.row(
        &format!("place and run {} VMs", args.vms),
        secs(began.elapsed()),
        "",
    );

    let gets = client
        .get_load(
            args.vms,
            args.get_clients,
            Duration::from_secs(args.get_seconds),
        )
        .await?;
    let p99 = pct(&gets, 99);
    table.row(
        &format!(
            "GET a VM p50 / p99 ({} clients, {} requests)",
            args.get_clients,
            gets.len()
        ),
        format!("{} / {}", ms(pct(&gets, 50)), ms(p99)),
        verdict(p99 <= Duration::from_millis(10), "p99 ≤ 10 ms"),
    );
    let rss = brain.memory()?;
    table.row(
        "brain RSS now / peak",
        format!("{} / {} MiB", rss.0 >> 10, rss.1 >> 10),
        verdict(rss.1 <= 1 << 20, "≤ 1024 MiB"),
    );

    brain.stop().await?;
    let began = Instant::now();
    let (mut brain, pin_again) = Brain::start(&bin_dir, dir.path(), api, spine).await?;
    if pin_again != pin {
        bail!("the brain's certificate changed across a restart ({pin} → {pin_again})");
    }
    let client = Api::login(api).await?;
    client
        .wait_for(
            "the fleet to reconnect and every VM to be reported",
            phase,
            |c| c.nodes == args.heads + args.tails && c.running == args.vms,
        )
        .await?;
    let took = began.elapsed();
    table.row(
        "restart → every node back, every VM running",
        secs(took),
        verdict(took <= Duration::from_secs(10), "≤ 10 s"),
    );
    let rss = brain.memory()?;
    table.row(
        "brain RSS after restart",
        format!("{} MiB", rss.0 >> 10),
        verdict(rss.0 <= 1 << 20, "≤ 1024 MiB"),
    );

    brain.stop().await?;
    let _ = sim.kill().await;
    // The data directory (store, logs) is removed when `dir` drops.
    let store = std::fs::metadata(dir.path().join("brain").join("store.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    table.row("store file", format!("{} MiB", store >> 20), "");
    table.print(&args);
    Ok(())
}

/// A `bigv-brain serve` process of ours.
struct Brain {
    child: Child,
}

impl Brain {
    /// Starts the brain and returns it with its certificate pin.
    async fn start(bin: &Path, dir: &Path, api: u16, spine: u16) -> Result<(Brain, String)> {
        let mut child = Command::new(bin.join("bigv-brain"))
            .arg("--data-dir")
            .arg(dir.join("brain"))
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .args(["--spine-listen", &format!("127.0.0.1:{spine}")])
            .env("BIGV_BOOTSTRAP_USER", USER)
            .env("BIGV_BOOTSTRAP_PASSWORD", PASSWORD)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("brain.log"))?,
            )
            .kill_on_drop(true)
            .spawn()
            .context("starting bigv-brain")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let pin = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(at) = line.find("sha256:") {
                    let pin: String = line[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == ':')
                        .collect();
                    return Ok(pin);
                }
            }
            bail!("bigv-brain exited before printing its certificate; see its log")
        })
        .await
        .context("bigv-brain did not print its certificate within 60 s")??;
        // Keep draining stdout so the brain never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((Brain { child }, pin))
    }

    /// Resident and peak resident memory, KiB.
    fn memory(&self) -> Result<(u64, u64)> {
        let pid = self.child.id().context("the brain has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }

    /// A graceful stop (SIGTERM), as an operator's restart would be.
    async fn stop(&mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await?;
        }
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(status) => {
                status?;
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("bigv-brain did not stop within 60 s of SIGTERM")
            }
        }
    }
}

/// What the admin API says about the fleet.
struct Census {
    nodes: usize,
    running: usize,
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn login(port: u16) -> Result<Api> {
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        let resp = http
            .post(format!("{base}/session"))
            .header("Accept", "text/plain")
            .json(&json!({"username": USER, "password": PASSWORD, "validity": "86400"}))
            .send()
            .await
            .context("logging in")?;
        if !resp.status().is_success() {
            bail!("logging in: {}", resp.status());
        }
        let token = resp.text().await?.trim().to_owned();
        Ok(Api { http, base, token })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{method} {path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn census(&self) -> Result<Census> {
        let heads = self
            .call(reqwest::Method::GET, "/admin/heads", None)
            .await?;
        let tails = self
            .call(reqwest::Method::GET, "/admin/tails", None)
            .await?;
        let online = |v: &Value| {
            v.as_array()
                .map_or(0, |a| a.iter().filter(|n| n["online"] == true).count())
        };
        let running = heads.as_array().map_or(0, |a| {
            a.iter()
                .filter_map(|h| h["running_virtual_machines_count"].as_u64())
                .sum::<u64>() as usize
        });
        Ok(Census {
            nodes: online(&heads) + online(&tails),
            running,
        })
    }

    async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&Census) -> bool,
    ) -> Result<()> {
        let began = Instant::now();
        loop {
            // The brain may still be starting: a failed census is retried.
            if let Ok(c) = self.census().await {
                if done(&c) {
                    return Ok(());
                }
                if began.elapsed() > limit {
                    bail!(
                        "gave up waiting for {what} after {} s: {} nodes online, {} VMs running",
                        limit.as_secs(),
                        c.nodes,
                        c.running
                    );
                }
            } else if began.elapsed() > limit {
                bail!("gave up waiting for {what}: the API does not answer");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A VLAN, enough addresses and an account, as an operator would.
    async fn setup(&self, vms: usize) -> Result<()> {
        use reqwest::Method;
        self.call(
            Method::POST,
            "/admin/vlans",
            Some(json!({"num": 1, "usage_type": "public"})),
        )
        .await?;
        // A /14 is 262,144 addresses: room for every VM's address.
        if vms > 200_000 {
            bail!("at most 200,000 VMs: the benchmark's address range is a /14");
        }
        self.call(
            Method::POST,
            "/admin/ip_ranges",
            Some(json!({"ip_range": "10.128.0.0/14", "vlan_num": 1, "zones": []})),
        )
        .await?;
        self.call(Method::POST, "/accounts", Some(json!({"name": "bench"})))
            .await?;
        Ok(())
    }

    /// Creates `n` running VMs, `concurrency` at a time; their latencies.
    async fn create_vms(&self, n: usize, concurrency: usize) -> Result<Vec<Duration>> {
        let results: Vec<Result<Duration>> = futures::stream::iter(0..n)
            .map(|i| {
                let api = self.clone();
                async move {
                    let body = json!({
                        "virtual_machine": {
                            "name": vm_name(i), "cores": 1, "memory": VM_MEMORY_MIB,
                            "power_on": true, "autoreboot_on": true,
                        },
                        "discs": [{"label": "disc-1", "storage_grade": "sata", "size": DISC_MIB}],
                    });
                    let t = Instant::now();
                    api.call(
                        reqwest::Method::POST,
                        "/accounts/bench/groups/default/vm_create",
                        Some(body),
                    )
                    .await?;
                    Ok(t.elapsed())
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// `clients` loops GETting random VMs for `period`; every latency.
    async fn get_load(
        &self,
        vms: usize,
        clients: usize,
        period: Duration,
    ) -> Result<Vec<Duration>> {
        let until = Instant::now() + period;
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..clients.max(1) {
            let api = self.clone();
            tasks.spawn(async move {
                let mut seen = Vec::new();
                // A cheap spread over the VMs, different per client.
                let mut i = c.wrapping_mul(7919);
                while Instant::now() < until {
                    i = i.wrapping_mul(1_103_515_245).wrapping_add(12345) % vms.max(1);
                    let path = format!(
                        "/accounts/bench/groups/default/virtual_machines/{}",
                        vm_name(i)
                    );
                    let t = Instant::now();
                    api.call(reqwest::Method::GET, &path, None).await?;
                    seen.push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(seen)
            });
        }
        let mut all = Vec::new();
        while let Some(done) = tasks.join_next().await {
            all.extend(done??);
        }
        Ok(all)
    }
}

fn vm_name(i: usize) -> String {
    format!("vm-{i:06}")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn pct(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) * p) / 100]
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn verdict(ok: bool, target: &str) -> String {
    format!("{target} {}", if ok { "(met)" } else { "(MISSED)" })
}

#[derive(Default)]
struct Table {
    rows: Vec<(String, String, String)>,
}

impl Table {
    fn row(&mut self, what: &str, value: String, target: impl Into<String>) {
        self.rows.push((what.to_owned(), value, target.into()));
    }

    fn print(&self, args: &Args) {
        println!(
            "\nbrain benchmark: {} heads, {} tails, {} VMs (simulated nodes, real brain process)\n",
            args.heads, args.tails, args.vms
        );
        let w0 = self
            .rows
            .iter()
            .map(|r| r.0.chars().count())
            .max()
            .unwrap_or(0);
        let w1 = self
            .rows
            .iter()
            .map(|r| r.1.chars().count())
            .max()
            .unwrap_or(0);
        println!("{:<w0$}  {:>w1$}  target", "measure", "value");
        for (what, value, target) in &self.rows {
            println!("{what:<w0$}  {value:>w1$}  {target}");
        }
    }
}
