//! The demo cluster (`tools/demo.sh`): the whole system as the scenarios
//! run it — a real `bigv-brain` with its embedded store in a private
//! network namespace, and heads and tails as qemu VMs that PXE-boot the
//! node image from it, are accepted and become ready — kept running until
//! SIGTERM or Ctrl-C, when it powers the machines off, stops the brain and
//! deletes the namespace.
//!
//! The brain's API listens on the namespace's loopback; this process
//! forwards `--api` on the host's loopback to it, so the `bigv` CLI on
//! the host talks to the cluster and nothing else leaves the namespace.
//! The API is HTTPS with the brain's own certificate. When the cluster is
//! ready it writes `STATE/fingerprint` (the certificate's, for `bigv
//! --tls-fingerprint`) and then `STATE/ready` (the endpoint); the
//! PIDs it started and the namespace name are in `STATE/processes` while
//! they run, for `tools/demo.sh down` to clean up after a hard kill.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bigv_qemu_tests::brain::{self, Admin};
use bigv_qemu_tests::cluster::{Cluster, NodeSpec};
use bigv_qemu_tests::logs::Logs;
use clap::Parser;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

/// Each tail's data disc (a sparse file in the state folder).
const DISC_MIB: u64 = 20 * 1024;

#[derive(Parser)]
#[command(about = "Runs the BigV demo cluster in qemu until SIGTERM or Ctrl-C")]
struct Args {
    /// Folder for the brain's store, the consoles and logs, and the
    /// `ready` and `processes` files.
    #[arg(long)]
    state: PathBuf,
    /// Where the brain's API is reachable on this machine.
    #[arg(long, default_value = "127.0.0.1:8080")]
    api: String,
    #[arg(long, default_value_t = 2)]
    heads: u8,
    #[arg(long, default_value_t = 1)]
    tails: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    bigv_qemu_tests::require_host();
    // Bound before entering the namespace, so on the host's loopback.
    let listener = match std::net::TcpListener::bind(&args.api) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "bigv-demo: cannot listen on {} for the API: {e} (set BIGV_DEMO_API to another address)",
                args.api
            );
            return ExitCode::FAILURE;
        }
    };
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let mut logs = Logs::kept_in(&args.state.join("logs"));
    let taps = usize::from(args.heads) + usize::from(args.tails);
    // The heads echo their VMs' serial consoles into their logs
    // (docs/head.md; `bigv admin show logs head head1`), and their public
    // NIC is the VLAN trunk VMs' NICs are bridged onto.
    let mut cluster = Cluster::start_with(
        "demo",
        taps,
        &args.state.join("brain"),
        &mut logs,
        &bigv_qemu_tests::guest::CONSOLE_BOOT_ARGS,
    );
    write_processes(&args.state, &cluster);

    // Everything from here on (API client, forwarded connections) opens
    // its sockets on this thread, inside the namespace.
    cluster.ns.enter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let listener = TcpListener::from_std(listener).expect("the API listener");
        tokio::spawn(forward_api(listener));
        let admin = Admin::login(&mut cluster.brain).await;
        let specs: Vec<NodeSpec> = (1..=args.heads)
            .map(NodeSpec::head)
            .chain((1..=args.tails).map(|n| NodeSpec::tail_with_sata_disc(n, DISC_MIB)))
            .collect();
        cluster.bring_up(&admin, &specs, &mut logs).await;
        write_processes(&args.state, &cluster);
        println!(
            "demo cluster ready, image {}:\n{}",
            cluster.version,
            cluster.timings.render()
        );
        let pin = cluster.brain.wait_fingerprint();
        std::fs::write(args.state.join("fingerprint"), format!("{pin}\n"))
            .expect("writing the fingerprint file");
        std::fs::write(args.state.join("ready"), format!("https://{}\n", args.api))
            .expect("writing the ready file");
        wait_for_stop(&mut cluster).await;
    });
    eprintln!("bigv-demo: stopping the machines, the brain and the namespace");
    drop(cluster);
    // All ended: nothing left for `down` to clean up (and those PIDs may
    // belong to someone else from now on).
    let _ = std::fs::remove_file(args.state.join("processes"));
    ExitCode::SUCCESS
}

/// Until SIGTERM or SIGINT; says so (once) when the brain or a machine
/// dies meanwhile, and keeps running so its logs can be read.
async fn wait_for_stop(cluster: &mut Cluster) {
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("a SIGINT handler");
    let mut reported = false;
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
        let brain_dead = cluster.brain.exited();
        let dead: Vec<String> = cluster
            .nodes
            .iter_mut()
            .filter_map(|n| n.vm.exited().then(|| n.row()))
            .collect();
        if !reported && (brain_dead || !dead.is_empty()) {
            eprintln!("bigv-demo: exited: brain {brain_dead}, machines {dead:?}");
            reported = true;
        }
    }
}

/// Pipes each connection to the host address to the brain's API inside
/// the namespace.
async fn forward_api(listener: TcpListener) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            match TcpStream::connect(brain::API).await {
                Ok(mut api) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut api).await;
                }
                Err(e) => eprintln!("bigv-demo: the brain's API: {e}"),
            }
        });
    }
}

/// `STATE/processes`: `netns NAME`, then `pid PID` for the brain and each
/// qemu, rewritten as they start.
fn write_processes(state: &Path, cluster: &Cluster) {
    let mut s = format!("netns {}\npid {}\n", cluster.ns.name, cluster.brain.pid());
    for n in &cluster.nodes {
        s.push_str(&format!("pid {}\n", n.vm.pid()));
    }
    std::fs::write(state.join("processes"), s).expect("writing the processes file");
}
