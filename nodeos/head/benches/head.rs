//! The head's benchmark (issue 6), run by `tools/bench-head.sh`, not by
//! `cargo test`. Each row runs ours and its peer alternately, `--runs`
//! times, in one process, and prints medians and the ratio ours/peer:
//!
//! - start: the spine order (create, which powers on) to the guest's
//!   first serial line (the first that is not empty: the bootloader's banner), vs the same qemu command line (from
//!   `bigv_head::argv`, less `-S`) started directly by this program;
//! - migration: the spine-ordered live migration between two head agents
//!   (the destination's create order to the destination reporting the
//!   guest running) vs raw QMP between two qemu processes with the same
//!   arguments (`-incoming defer`, `migrate-incoming`, `migrate`, then
//!   `query-status` until the destination runs); same bandwidth and
//!   downtime settings; the downtime qemu reports for both.
//!
//! "ratio" is median(ours) / median(peer); "paired" the median of each
//! run's own ratio (its two sides ran back to back, under about the same
//! machine load).
//!
//! Real qemu under TCG, the test guest on our tail's NBD server, a real
//! spine server, two head agents, all on loopback (see `tests/common`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bigv_head::argv::{self, VmPaths};
use bigv_head::qmp::Qmp;
use bigv_spine::resource::{
    ResourceName, ResourceValue, VmDisc, VmIncoming, VmMigrationOrder, VmRunState, VmSpec,
};
use bigv_spine::{NodeHandle, Resource, SpineEvent};
use bigv_test_guest::lines;
use common::*;
use tokio::sync::mpsc;

const BOOT_WAIT: Duration = Duration::from_secs(300);
const MIGRATE_WAIT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(10);

struct Options {
    runs: usize,
    memory: u64,
    max_bandwidth: Option<u64>,
    max_downtime_ms: Option<u64>,
}

fn options() -> Options {
    let mut o = Options {
        runs: 3,
        memory: 256,
        max_bandwidth: None,
        max_downtime_ms: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |what: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{what} takes a whole number"))
        };
        match a.as_str() {
            "--runs" => o.runs = value("--runs") as usize,
            "--memory" => o.memory = value("--memory"),
            "--max-bandwidth" => o.max_bandwidth = Some(value("--max-bandwidth")),
            "--max-downtime-ms" => o.max_downtime_ms = Some(value("--max-downtime-ms")),
            // `cargo bench` adds it.
            "--bench" => {}
            other => panic!(
                "unknown argument {other:?}; usage: [--runs N] [--memory MIB] \
                 [--max-bandwidth BYTES_PER_S] [--max-downtime-ms MS]"
            ),
        }
    }
    assert!(o.runs > 0, "--runs must be at least 1");
    o
}

/// What one run of a side measured.
#[derive(Default)]
struct Sample {
    first_line: Duration,
    /// Ours: the create order's answer (qemu spawned, QMP up, resumed);
    /// the peer: qemu's QMP greeting after the spawn.
    answered: Duration,
    boot_line: Duration,
    migration: Duration,
    downtime_ms: Option<u64>,
    first_text: String,
}

/// Polls `log` until a complete line satisfies `f`: the time since `t0`
/// and the line.
async fn serial_line(
    log: &Path,
    t0: Instant,
    what: &str,
    f: impl Fn(&str) -> bool,
) -> (Duration, String) {
    let deadline = Instant::now() + BOOT_WAIT;
    loop {
        if let Some(l) = serial_lines(log).into_iter().find(|l| f(l)) {
            return (t0.elapsed(), l);
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// The first serial line and the guest's boot line, timed from `t0`.
async fn boot_lines(log: &Path, t0: Instant, s: &mut Sample) {
    let first;
    (s.first_line, first) =
        serial_line(log, t0, "the first serial line", |l| !l.trim().is_empty()).await;
    (s.boot_line, _) = serial_line(log, t0, "the guest's boot line", |l| {
        lines::boot_id(l).is_some()
    })
    .await;
    s.first_text = first;
}

/// The `downtime_ms` of each VM's completed migration as `head-a`
/// reported it, caught from the spine's event stream: the report lives
/// only until A's qemu has quit, too short for polling the table.
type Downtimes = Arc<Mutex<HashMap<String, u64>>>;

fn record_downtimes(mut events: mpsc::Receiver<SpineEvent>) -> Downtimes {
    let seen = Downtimes::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let SpineEvent::Updated {
                node_id, resource, ..
            } = ev
                && node_id == "head-a"
                && let ResourceName::Vm(name) = resource.name()
                && let ResourceValue::Vm(spec) = resource.value()
                && let Some(d) = spec.migration.as_ref().and_then(|m| m.downtime_ms)
            {
                record.lock().unwrap().insert(name.clone(), d);
            }
        }
    });
    seen
}

struct Bench {
    opts: Options,
    downtimes: Downtimes,
    spec: VmSpec,
    root: std::path::PathBuf,
    head_a: SpineHead,
    /// Kept for its agent (B is driven through its spine handle).
    _head_b: SpineHead,
    a: NodeHandle,
    b: NodeHandle,
}

impl Bench {
    fn order(&self, seq: u64, endpoint: String) -> VmMigrationOrder {
        VmMigrationOrder {
            seq,
            to: "head-b".into(),
            endpoint,
            max_bandwidth: self.opts.max_bandwidth,
            max_downtime_ms: self.opts.max_downtime_ms,
        }
    }

    /// Ours: spine orders to the head agents.
    async fn ours(&self, name: &str) -> Sample {
        let mut s = Sample::default();
        let log = self.head_a.agent.paths(name).serial_log;
        let t0 = Instant::now();
        self.a
            .create(Resource::vm(name, self.spec.clone()), 1)
            .await
            .expect("create on A");
        s.answered = t0.elapsed();
        boot_lines(&log, t0, &mut s).await;

        let mut order = self.spec.clone();
        let incoming = VmSpec {
            incoming: Some(VmIncoming {
                from: "head-a".into(),
                endpoint: None,
            }),
            ..order.clone()
        };
        let m0 = Instant::now();
        self.b
            .create(Resource::vm(name, incoming), 1)
            .await
            .expect("create on B");
        let endpoint = vm_in_table(&self.b, name)
            .and_then(|v| v.incoming)
            .and_then(|i| i.endpoint)
            .expect("B reports where it listens");
        order.migrate_to = Some(self.order(1, endpoint));
        self.a
            .update(Resource::vm(name, order), 2)
            .await
            .expect("migration order to A");
        let deadline = Instant::now() + MIGRATE_WAIT;
        loop {
            if vm_in_table(&self.b, name).and_then(|v| v.state) == Some(VmRunState::Running) {
                s.migration = m0.elapsed();
                break;
            }
            assert!(Instant::now() < deadline, "timed out migrating {name}");
            tokio::time::sleep(POLL).await;
        }
        // A reports the downtime just before it ends its qemu.
        let until = Instant::now() + WAIT;
        while s.downtime_ms.is_none() && Instant::now() < until {
            s.downtime_ms = self.downtimes.lock().unwrap().get(name).copied();
            tokio::time::sleep(POLL).await;
        }
        self.b
            .remove(ResourceName::vm(name), 2)
            .await
            .expect("remove on B");
        s
    }

    /// The peer: qemu started by this program, raw QMP.
    async fn peer(&self, name: &str) -> Sample {
        let mut s = Sample::default();
        let src = peer_paths(&self.root, "peer-a", name);
        let mut args = argv::command_line(name, &self.spec, &qemu_settings(), &src).unwrap();
        // By hand the guest just runs: no pause for an agent's QMP.
        args.retain(|a| a != "-S");
        let t0 = Instant::now();
        let _src_qemu = Qemu::spawn(&src, &args);
        // Connected at once, as an operator's monitor would be: also
        // times qemu's own start-up (to its QMP greeting).
        let (src_qmp, _src_events) = Qmp::connect(&src.qmp, WAIT).await.expect("source QMP");
        s.answered = t0.elapsed();
        boot_lines(&src.serial_log, t0, &mut s).await;

        let dst = peer_paths(&self.root, "peer-b", name);
        let incoming = VmSpec {
            incoming: Some(VmIncoming {
                from: "peer-a".into(),
                endpoint: None,
            }),
            ..self.spec.clone()
        };
        let args = argv::command_line(name, &incoming, &qemu_settings(), &dst).unwrap();
        let m0 = Instant::now();
        let _dst_qemu = Qemu::spawn(&dst, &args);
        let (dst_qmp, _dst_events) = Qmp::connect(&dst.qmp, WAIT).await.expect("dest QMP");
        dst_qmp
            .migrate_incoming("tcp:127.0.0.1:0")
            .await
            .expect("migrate-incoming");
        let endpoint = dst_qmp
            .query_migrate()
            .await
            .unwrap()
            .listening
            .expect("the destination listens");
        src_qmp
            .migrate_set_parameters(self.opts.max_bandwidth, self.opts.max_downtime_ms)
            .await
            .unwrap();
        src_qmp
            .migrate(&format!("tcp:{endpoint}"))
            .await
            .expect("migrate");
        let deadline = Instant::now() + MIGRATE_WAIT;
        loop {
            if dst_qmp.query_status().await.unwrap().1 {
                s.migration = m0.elapsed();
                break;
            }
            assert!(Instant::now() < deadline, "timed out migrating {name}");
            tokio::time::sleep(POLL).await;
        }
        let info = src_qmp.query_migrate().await.unwrap();
        assert_eq!(info.status, "completed", "{info:?}");
        s.downtime_ms = info.downtime_ms;
        s
    }
}

fn peer_paths(root: &Path, side: &str, name: &str) -> VmPaths {
    let paths = VmPaths::new(
        &root.join(side).join("run"),
        &root.join(side).join("log"),
        name,
    );
    std::fs::create_dir_all(&paths.dir).unwrap();
    std::fs::create_dir_all(paths.serial_log.parent().unwrap()).unwrap();
    paths
}

/// A qemu this program started, killed on drop.
struct Qemu(std::process::Child);

impl Qemu {
    fn spawn(paths: &VmPaths, args: &[String]) -> Qemu {
        let log = std::fs::File::create(&paths.qemu_log).unwrap();
        let child = std::process::Command::new("qemu-system-x86_64")
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("qemu-system-x86_64 runs");
        Qemu(child)
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A table row: its label, what it measures, its target.
type Row = (&'static str, fn(&Sample) -> Duration, &'static str);

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn secs(xs: &[Sample], f: impl Fn(&Sample) -> Duration) -> f64 {
    median(xs.iter().map(|s| f(s).as_secs_f64()).collect())
}

fn downtime(xs: &[Sample]) -> String {
    let known: Vec<f64> = xs
        .iter()
        .filter_map(|s| s.downtime_ms)
        .map(|d| d as f64)
        .collect();
    if known.is_empty() {
        return "?".into();
    }
    let all: Vec<String> = xs
        .iter()
        .map(|s| s.downtime_ms.map_or("?".into(), |d| d.to_string()))
        .collect();
    format!("{:.0} ms ({})", median(known), all.join(", "))
}

fn main() {
    let opts = options();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(opts));
}

async fn run(opts: Options) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    eprintln!("building the test guest…");
    // Both heads are 127.0.0.1.
    let (_, tail) = guest_on_tail(&root, &["127.0.0.1", "127.0.0.1"]).await;
    let (server, events) = spine_with_events("127.0.0.1:0".parse().unwrap()).await;
    let downtimes = record_downtimes(events);
    let head_a = SpineHead::start(server.local_addr(), &root, "head-a").await;
    let head_b = SpineHead::start(server.local_addr(), &root, "head-b").await;
    let a = ready(&server, "head-a").await;
    let b = ready(&server, "head-b").await;
    let spec = VmSpec {
        memory: opts.memory,
        cores: 1,
        keymap: "en-gb".into(),
        display_name: "bench".into(),
        discs: vec![VmDisc {
            address: format!("nbd:{}", tail.local_addr()),
            model: "virtio".into(),
            serial: Some("guestdisc".into()),
        }],
        ..Default::default()
    };
    let bench = Bench {
        opts,
        downtimes,
        spec,
        root,
        head_a,
        _head_b: head_b,
        a,
        b,
    };
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for i in 0..bench.opts.runs {
        // Alternate which side goes first.
        let name = format!("bench{i}");
        let pair = if i % 2 == 0 {
            let o = bench.ours(&name).await;
            (o, bench.peer(&name).await)
        } else {
            let p = bench.peer(&name).await;
            (bench.ours(&name).await, p)
        };
        eprintln!(
            "run {}: ours answered {:.2}s start {:.2}s boot {:.2}s migration {:.2}s downtime {:?} ms; \
             peer QMP up {:.2}s start {:.2}s boot {:.2}s migration {:.2}s downtime {:?} ms",
            i + 1,
            pair.0.answered.as_secs_f64(),
            pair.0.first_line.as_secs_f64(),
            pair.0.boot_line.as_secs_f64(),
            pair.0.migration.as_secs_f64(),
            pair.0.downtime_ms,
            pair.1.answered.as_secs_f64(),
            pair.1.first_line.as_secs_f64(),
            pair.1.boot_line.as_secs_f64(),
            pair.1.migration.as_secs_f64(),
            pair.1.downtime_ms,
        );
        eprintln!(
            "  first serial lines: ours {:?}, peer {:?}",
            pair.0.first_text, pair.1.first_text
        );
        ours.push(pair.0);
        peer.push(pair.1);
    }
    let o = &bench.opts;
    println!(
        "head benchmark: {} runs, test guest {} MiB under TCG, max-bandwidth {}, downtime-limit {} (medians)",
        o.runs,
        o.memory,
        o.max_bandwidth
            .map_or("qemu's default".into(), |b| format!("{b} B/s")),
        o.max_downtime_ms
            .map_or("qemu's default".into(), |d| format!("{d} ms")),
    );
    println!(
        "{:<44} {:>9} {:>9} {:>7} {:>7} {:>7}",
        "row", "ours", "peer", "ratio", "paired", "target"
    );
    let rows: [Row; 3] = [
        (
            "start: order → first serial line",
            |s| s.first_line,
            "≤ 1.1",
        ),
        ("  (order → guest's BOOT line)", |s| s.boot_line, ""),
        (
            "migration: total, to destination running",
            |s| s.migration,
            "≤ 1.1",
        ),
    ];
    for (row, f, target) in rows {
        let (x, y) = (secs(&ours, f), secs(&peer, f));
        // The median of each run's own ratio: the two sides of a run ran
        // back to back, under about the same load.
        let paired = median(
            ours.iter()
                .zip(&peer)
                .map(|(o, p)| f(o).as_secs_f64() / f(p).as_secs_f64())
                .collect(),
        );
        println!(
            "{row:<44} {x:>8.2}s {y:>8.2}s {:>7.2} {paired:>7.2} {target:>7}",
            x / y
        );
    }
    println!(
        "ours: order answered (qemu up, QMP, cont) {:.3}s; peer: qemu's QMP greeting {:.3}s",
        secs(&ours, |s| s.answered),
        secs(&peer, |s| s.answered)
    );
    println!(
        "downtime reported by qemu: ours {}, peer {}",
        downtime(&ours),
        downtime(&peer)
    );
    drop(bench);
    tail.stop().await;
}
