//! `bigv-tail bench`: our NBD server against `qemu-nbd` (and Debian's
//! `nbd-server` when installed), serving the same file to the same client
//! (`qemu-img bench`) over loopback, one server at a time.
//!
//! `qemu-img bench` has no random mode; the "random" rows use a stride of
//! 1 MiB + 4 KiB, which wraps around the file and never touches adjacent
//! blocks in a row (no readahead or merging helps), the closest it offers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Where the test file goes (a real filesystem, not tmpfs, to match a tail).
    pub dir: PathBuf,
    /// File size in MiB; filled with data so reads are not of holes.
    pub size_mib: u64,
    /// Runs per cell; the best is kept.
    pub runs: u32,
    /// Our binary (`bigv-tail`), to run `serve` in its own process.
    pub ours: PathBuf,
    /// Only the mirror-versus-cp row.
    pub mirror_only: bool,
}

#[derive(Debug, Clone, Copy)]
struct Workload {
    name: &'static str,
    write: bool,
    block: u64,
    step: Option<u64>,
    depth: u32,
    count: u64,
}

const WORKLOADS: [Workload; 6] = [
    Workload {
        name: "4 KiB random read, depth 1",
        write: false,
        block: 4096,
        step: Some((1 << 20) + 4096),
        depth: 1,
        count: 20_000,
    },
    Workload {
        name: "4 KiB random write, depth 1",
        write: true,
        block: 4096,
        step: Some((1 << 20) + 4096),
        depth: 1,
        count: 20_000,
    },
    Workload {
        name: "4 KiB random read, depth 32",
        write: false,
        block: 4096,
        step: Some((1 << 20) + 4096),
        depth: 32,
        count: 60_000,
    },
    Workload {
        name: "4 KiB random write, depth 32",
        write: true,
        block: 4096,
        step: Some((1 << 20) + 4096),
        depth: 32,
        count: 60_000,
    },
    Workload {
        name: "1 MiB sequential read, depth 8",
        write: false,
        block: 1 << 20,
        step: None,
        depth: 8,
        count: 3000,
    },
    Workload {
        name: "1 MiB sequential write, depth 8",
        write: true,
        block: 1 << 20,
        step: None,
        depth: 8,
        count: 3000,
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Ours,
    QemuNbd,
    NbdServer,
}

impl Peer {
    fn label(self) -> &'static str {
        match self {
            Peer::Ours => "bigv-tail",
            Peer::QemuNbd => "qemu-nbd",
            Peer::NbdServer => "nbd-server",
        }
    }

    fn available(self) -> bool {
        match self {
            Peer::Ours => true,
            Peer::QemuNbd => which("qemu-nbd"),
            Peer::NbdServer => which("nbd-server"),
        }
    }
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A server process; killed (by its PID) when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start(peer: Peer, cfg: &BenchConfig, file: &Path) -> anyhow::Result<Server> {
    start_with(peer, cfg, file, &[])
}

/// [`start`], with extra arguments for our `serve` (limits).
fn start_with(
    peer: Peer,
    cfg: &BenchConfig,
    file: &Path,
    extra: &[&str],
) -> anyhow::Result<Server> {
    let port = free_port()?;
    let path = file.to_str().context("file path is not UTF-8")?;
    let mut cmd = match peer {
        Peer::Ours => {
            let mut c = Command::new(&cfg.ours);
            c.args(["serve", path, "--name", "bench", "--allow", "127.0.0.1"])
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(extra);
            c
        }
        Peer::QemuNbd => {
            let mut c = Command::new("qemu-nbd");
            c.args(["-f", "raw", "-x", "bench", "-b", "127.0.0.1", "-t"])
                .args(["-p", &port.to_string(), "--aio=threads", path]);
            c
        }
        Peer::NbdServer => {
            let conf = cfg.dir.join("nbd-server.conf");
            std::fs::write(
                &conf,
                format!(
                    "[generic]\nlistenaddr = 127.0.0.1\nport = {port}\nuser = root\ngroup = root\n\n[bench]\nexportname = {path}\n"
                ),
            )?;
            let mut c = Command::new("nbd-server");
            c.args(["-C", conf.to_str().context("conf path")?, "-d"]);
            c
        }
    };
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", peer.label()))?;
    let server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    // Not by connecting: `nbd-server -d` serves exactly one connection.
    while !listening(port) {
        if Instant::now() > deadline {
            bail!("{} did not listen on port {port}", peer.label());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

/// Whether something listens on 127.0.0.1:`port` (from /proc/net/tcp).
fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
    })
}

/// Runs one `qemu-img bench`; returns seconds.
fn qemu_img_bench(port: u16, w: &Workload) -> anyhow::Result<f64> {
    let url = format!("nbd://127.0.0.1:{port}/bench");
    let mut cmd = Command::new("qemu-img");
    cmd.args(["bench", "-f", "raw", "-c", &w.count.to_string()])
        .args(["-d", &w.depth.to_string(), "-s", &w.block.to_string()]);
    if let Some(step) = w.step {
        cmd.args(["-S", &step.to_string()]);
    }
    if w.write {
        cmd.arg("-w");
    }
    let out = cmd.arg(&url).output().context("running qemu-img bench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "qemu-img bench against {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text.lines()
        .find_map(|l| {
            l.strip_prefix("Run completed in ")
                .and_then(|r| r.strip_suffix(" seconds."))
                .and_then(|s| s.parse().ok())
        })
        .with_context(|| format!("no timing in qemu-img bench output: {text}"))
}

/// Fills the file with non-zero data so reads hit real blocks.
fn prepare(cfg: &BenchConfig) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    std::fs::create_dir_all(&cfg.dir)?;
    let path = cfg.dir.join("bench.raw");
    let mut f = std::fs::File::create(&path)?;
    let mut block = vec![0u8; 1 << 20];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    for _ in 0..cfg.size_mib {
        f.write_all(&block)?;
    }
    f.sync_all()?;
    Ok(path)
}

/// One measured cell: operations per second and MiB per second.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub iops: f64,
    pub mib_s: f64,
}

/// Runs every workload against every available server and prints a table.
pub fn run(cfg: &BenchConfig) -> anyhow::Result<()> {
    if cfg.mirror_only {
        std::fs::create_dir_all(&cfg.dir)?;
        return mirror_vs_cp(cfg);
    }
    // First, while this process is fresh: its RSS is then the server's.
    let idle = idle_exports(cfg, IDLE_EXPORTS)?;
    let file = prepare(cfg)?;
    let peers: Vec<Peer> = [Peer::Ours, Peer::QemuNbd, Peer::NbdServer]
        .into_iter()
        .filter(|p| {
            let ok = p.available();
            if !ok {
                eprintln!("bench: {} is not installed; skipped", p.label());
            }
            ok
        })
        .collect();
    let mut results: Vec<Vec<Cell>> = vec![];
    for w in &WORKLOADS {
        let mut row = vec![];
        for &peer in &peers {
            let mut best = f64::MAX;
            for _ in 0..cfg.runs.max(1) {
                // A fresh server per run: no state carried between peers.
                let server = start(peer, cfg, &file)?;
                let secs = qemu_img_bench(server.port, w)?;
                drop(server);
                best = best.min(secs);
            }
            let ops = w.count as f64 / best;
            row.push(Cell {
                iops: ops,
                mib_s: ops * w.block as f64 / f64::from(1 << 20),
            });
            eprintln!("bench: {} / {}: {:.3} s", w.name, peer.label(), best);
        }
        results.push(row);
    }
    print!("{}", table(&peers, &results));
    println!(
        "{:<34} {:>14} {:>14} {:>13.2}x",
        format!("RSS, {IDLE_EXPORTS} idle exports"),
        format!("{:.1} MiB", idle.ours_mib),
        format!("{:.1} MiB", idle.qemu_nbd_mib),
        idle.qemu_nbd_mib / idle.ours_mib
    );
    limited(cfg, &file)?;
    let _ = std::fs::remove_file(&file);
    mirror_vs_cp(cfg)?;
    Ok(())
}

/// Exports served at once, idle, for the memory row.
const IDLE_EXPORTS: usize = 100;

/// Resident memory serving `n` idle exports (listening, no client).
struct Idle {
    /// This process's whole RSS with `n` disc servers running in it (as
    /// one tail agent serves all its discs).
    ours_mib: f64,
    /// The sum over `n` qemu-nbd processes, one per export as it needs.
    qemu_nbd_mib: f64,
}

/// `VmRSS` of process `pid` (`self` for this one), MiB.
fn rss_mib(pid: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS for process {pid}"))?;
    Ok(kib / 1024.0)
}

fn idle_exports(cfg: &BenchConfig, n: usize) -> anyhow::Result<Idle> {
    let dir = cfg.dir.join("idle");
    std::fs::create_dir_all(&dir)?;
    let files = (0..n)
        .map(|i| {
            let path = dir.join(format!("disc{i}.raw"));
            std::fs::File::create(&path)?.set_len(1 << 30)?;
            Ok(path)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ours_mib = runtime.block_on(async {
        let mut servers = vec![];
        for (i, path) in files.iter().enumerate() {
            let export =
                std::sync::Arc::new(crate::nbd::Export::open(format!("disc{i}"), path, false)?);
            let acl = crate::acl::Acl::parse(&["127.0.0.1"])?;
            servers.push(crate::nbd::DiscServer::start(export, "127.0.0.1:0".parse()?, acl).await?);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = rss_mib("self")?;
        for s in servers {
            s.stop().await;
        }
        anyhow::Ok(rss)
    })?;
    drop(runtime);
    let mut peers = vec![];
    for path in &files {
        peers.push(start(Peer::QemuNbd, cfg, path)?);
    }
    let mut qemu_nbd_mib = 0.0;
    for p in &peers {
        qemu_nbd_mib += rss_mib(&p.child.id().to_string())?;
    }
    drop(peers);
    std::fs::remove_dir_all(&dir)?;
    Ok(Idle {
        ours_mib,
        qemu_nbd_mib,
    })
}

/// Our server with a disc limit of 2000 IOPS: how close a client at
/// depth 32 is held to it (the first second's worth is the burst).
fn limited(cfg: &BenchConfig, file: &Path) -> anyhow::Result<()> {
    const IOPS: u64 = 2000;
    let w = Workload {
        name: "4 KiB random read, depth 32, capped",
        write: false,
        block: 4096,
        step: Some((1 << 20) + 4096),
        depth: 32,
        count: 5 * IOPS,
    };
    let server = start_with(Peer::Ours, cfg, file, &["--iops", &IOPS.to_string()])?;
    let secs = qemu_img_bench(server.port, &w)?;
    drop(server);
    let expected = (w.count - IOPS) as f64 / IOPS as f64;
    println!(
        "{:<34} {:>14} {:>14} {:>13.2}x",
        format!("4 KiB read d32, {IOPS} IOPS cap"),
        format!("{secs:.2} s"),
        format!("{expected:.2} s exp."),
        secs / expected
    );
    Ok(())
}

/// The mirror's copy (what a migration's first pass does, over NBD on
/// loopback, fsync at the end) against `cp --sparse=always` + `sync` of the
/// same half-sparse file.
fn mirror_vs_cp(cfg: &BenchConfig) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let src = cfg.dir.join("mirror-src.raw");
    let f = std::fs::File::create(&src)?;
    let size = cfg.size_mib << 20;
    f.set_len(size)?;
    // Data in every other 4 MiB run: half allocated, half holes.
    let run = vec![0x5au8; 4 << 20];
    let mut off = 0;
    while off < size {
        f.write_all_at(&run, off)?;
        off += 8 << 20;
    }
    f.sync_all()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut best_mirror = f64::MAX;
    let mut best_cp = f64::MAX;
    // CPU seconds per copy (least of the runs): ours is the whole process
    // (both ends of the mirror), cp's is cp + sync. Less at the mercy of
    // other load on the machine than the wall time.
    let mut cpu_mirror = f64::MAX;
    let mut cpu_cp = f64::MAX;
    for _ in 0..cfg.runs.max(1) {
        let dst = cfg.dir.join("mirror-dst.raw");
        let _ = std::fs::remove_file(&dst);
        std::fs::File::create(&dst)?.set_len(size)?;
        let secs = runtime.block_on(async {
            let export = std::sync::Arc::new(crate::nbd::Export::open("bench", &src, true)?);
            let dest = std::sync::Arc::new(crate::nbd::Export::open("bench", &dst, false)?);
            // As a migration's destination serves its mirror connection.
            let server = crate::nbd::DiscServer::start_with(
                dest,
                "127.0.0.1:0".parse()?,
                crate::acl::Acl::parse(&["127.0.0.1"])?,
                crate::nbd::server::ServeOptions {
                    write_behind: true,
                    ..Default::default()
                },
            )
            .await?;
            let started = Instant::now();
            let cpu = cpu_seconds(RUSAGE_SELF);
            crate::mirror::copy_once(&export, server.local_addr()).await?;
            let secs = started.elapsed().as_secs_f64();
            cpu_mirror = cpu_mirror.min(cpu_seconds(RUSAGE_SELF) - cpu);
            server.stop().await;
            anyhow::Ok(secs)
        })?;
        best_mirror = best_mirror.min(secs);
        let _ = std::fs::remove_file(&dst);
        let started = Instant::now();
        let cpu = cpu_seconds(RUSAGE_CHILDREN);
        let ok = Command::new("cp")
            .args(["--sparse=always"])
            .arg(&src)
            .arg(&dst)
            .status()?
            .success()
            && Command::new("sync").arg(&dst).status()?.success();
        if !ok {
            bail!("cp --sparse=always failed");
        }
        best_cp = best_cp.min(started.elapsed().as_secs_f64());
        cpu_cp = cpu_cp.min(cpu_seconds(RUSAGE_CHILDREN) - cpu);
        let _ = std::fs::remove_file(&dst);
    }
    let _ = std::fs::remove_file(&src);
    let mib = cfg.size_mib as f64;
    println!(
        "{:<34} {:>14} {:>14} {:>14}",
        "copy of a half-sparse file", "mirror", "cp --sparse", "vs cp"
    );
    println!(
        "{:<34} {:>14} {:>14} {:>13.2}x",
        format!("{} MiB, {} MiB data", cfg.size_mib, cfg.size_mib / 2),
        format!("{:.0} MiB/s", mib / best_mirror),
        format!("{:.0} MiB/s", mib / best_cp),
        best_cp / best_mirror
    );
    println!(
        "{:<34} {:>14} {:>14} {:>13.2}x",
        "  CPU time per copy",
        format!("{:.0} ms", cpu_mirror * 1000.0),
        format!("{:.0} ms", cpu_cp * 1000.0),
        cpu_cp / cpu_mirror
    );
    Ok(())
}

const RUSAGE_SELF: i32 = nix::libc::RUSAGE_SELF;
const RUSAGE_CHILDREN: i32 = nix::libc::RUSAGE_CHILDREN;

/// User + system CPU seconds of this process (all threads) or of its
/// waited-for children.
fn cpu_seconds(who: i32) -> f64 {
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut ru: nix::libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage for the call to fill.
    unsafe { nix::libc::getrusage(who, &mut ru) };
    let secs = |t: nix::libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

fn table(peers: &[Peer], results: &[Vec<Cell>]) -> String {
    let mut out = String::new();
    let mut header = format!("{:<34}", "workload (qemu-img bench)");
    for p in peers {
        header.push_str(&format!(" {:>14}", p.label()));
    }
    for p in peers.iter().skip(1) {
        header.push_str(&format!(" {:>14}", format!("vs {}", p.label())));
    }
    out.push_str(&header);
    out.push('\n');
    out.push_str(&"-".repeat(header.len()));
    out.push('\n');
    for (w, row) in WORKLOADS.iter().zip(results) {
        let mut line = format!("{:<34}", w.name);
        for c in row {
            let cell = if w.block < (1 << 20) {
                format!("{:.0} IOPS", c.iops)
            } else {
                format!("{:.0} MiB/s", c.mib_s)
            };
            line.push_str(&format!(" {cell:>14}"));
        }
        for c in row.iter().skip(1) {
            line.push_str(&format!(" {:>13.2}x", row[0].iops / c.iops));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}
