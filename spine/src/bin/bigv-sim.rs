//! `bigv-sim`: simulated heads and tails speaking the real spine.
//!
//! `bigv-sim fleet --brain ADDR ...` connects a fleet to a running brain
//! (scale tests, brain development). `bigv-sim demo` needs nothing: it
//! starts a spine listener in-process, joins a small fleet to it over
//! TLS, gives a few orders and prints what the brain sees.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bigv_spine::resource::{DiscSpec, ResourceValue, VmSpec};
use bigv_spine::sim::{SimFleet, SimHardware};
use bigv_spine::tls::{BrainIdentity, Fingerprint};
use bigv_spine::{Resource, ServerConfig, SpineEvent, SpineServer};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Simulated BigV heads and tails that speak the real spine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct FleetSize {
    #[arg(long, default_value_t = 3)]
    heads: usize,
    #[arg(long, default_value_t = 2)]
    tails: usize,
    /// RAM each simulated head offers, MiB.
    #[arg(long, default_value_t = 65536)]
    head_memory: u64,
    /// Size of each simulated tail's one `sata` pool, MiB.
    #[arg(long, default_value_t = 4 << 20)]
    pool_size: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Connect a fleet to a brain's spine listener and keep it running.
    Fleet {
        /// The brain's spine address, host:port.
        #[arg(long)]
        brain: String,
        /// Pinned fingerprint of the brain's certificate (sha256:...);
        /// without it the fleet speaks plain TCP.
        #[arg(long)]
        fingerprint: Option<Fingerprint>,
        #[command(flatten)]
        size: FleetSize,
    },
    /// Run a self-contained spine demo: listener + fleet + a few orders.
    Demo {
        #[command(flatten)]
        size: FleetSize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Fleet {
            brain,
            fingerprint,
            size,
        } => {
            let _fleet = start_fleet(&brain, fingerprint, &size);
            eprintln!(
                "{} heads and {} tails connecting to {brain}; Ctrl-C stops them",
                size.heads, size.tails
            );
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
        Command::Demo { size } => demo(size).await,
    }
}

fn start_fleet(brain: &str, pin: Option<Fingerprint>, size: &FleetSize) -> SimFleet {
    let pools = BTreeMap::from([("sata".to_owned(), ("sata".to_owned(), size.pool_size))]);
    SimFleet::start(
        brain,
        size.heads,
        size.tails,
        SimHardware::Head {
            memory_mib: size.head_memory,
        },
        SimHardware::Tail { pools },
        |config| config.tls_pin = pin,
    )
}

async fn demo(size: FleetSize) -> anyhow::Result<()> {
    if size.heads == 0 || size.tails == 0 {
        bail!("the demo needs at least one head and one tail");
    }
    let identity = BrainIdentity::generate(&["bigv-sim-demo"]).context("minting a certificate")?;
    let config = ServerConfig {
        tls: Some(identity.server_config()?),
        ..ServerConfig::default()
    };
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    let (server, mut events) = SpineServer::bind(addr, config).await?;
    println!(
        "spine listening on {} (TLS, certificate {})",
        server.local_addr(),
        identity.fingerprint()
    );
    let fleet = start_fleet(
        &server.local_addr().to_string(),
        Some(identity.fingerprint()),
        &size,
    );

    let expected = size.heads + size.tails;
    let mut ready = 0;
    while ready < expected {
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .context("nodes did not join within 30 s")?
            .context("spine stopped")?;
        if let SpineEvent::Ready { node_id, .. } = event {
            ready += 1;
            println!("ready: {node_id}");
        }
    }

    // One disc per VM on the tails, round-robin; VMs on the heads likewise.
    let nodes = server.nodes();
    let heads: Vec<_> = nodes
        .iter()
        .filter(|n| n.role == bigv_spine::Role::Head)
        .collect();
    let tails: Vec<_> = nodes
        .iter()
        .filter(|n| n.role == bigv_spine::Role::Tail)
        .collect();
    for i in 0..4 {
        let tail = server
            .node(&tails[i % tails.len()].node_id)
            .context("tail left")?;
        let head = server
            .node(&heads[i % heads.len()].node_id)
            .context("head left")?;
        let address = format!("fd00:5::{:x}", 0x100 + i);
        let disc = DiscSpec {
            size: 25_600,
            storage_pool: "sata".into(),
            // Only the head that will run the VM may connect.
            access_control_list: vec![head.info().peer.ip().to_string()],
            address: address.clone(),
            ..Default::default()
        };
        tail.create(Resource::disc("sata", i.to_string(), disc), 1)
            .await
            .context("creating a disc")?;
        head.create(Resource::vm(format!("demo{i}"), demo_vm(i, &address)), 1)
            .await
            .context("starting a VM")?;
        println!(
            "ordered vm.demo{i} on {} with disc.sata.{i} on {}",
            head.info().node_id,
            tail.info().node_id
        );
    }

    println!("\n{:<16} {:<5} resources", "node", "role");
    for info in server.nodes() {
        let Some(node) = server.node(&info.node_id) else {
            continue;
        };
        let summary: Vec<String> = node
            .resources()
            .iter()
            .map(|(name, (value, generation))| match value {
                ResourceValue::Memory(m) => format!("{name}={}/{} MiB free", m.free, m.total),
                ResourceValue::StoragePools(p) => {
                    let free: u64 = p.values().map(|f| f.free).sum();
                    format!("{name}={free} MiB free")
                }
                _ => format!("{name}@{generation}"),
            })
            .collect();
        println!(
            "{:<16} {:<5} {}",
            info.node_id,
            info.role,
            summary.join(", ")
        );
    }
    // Show a crash the way the brain hears of it (after the backlog the
    // orders above caused, which the table already reflects).
    while events.try_recv().is_ok() {}
    if let Some(head) = fleet.node(&heads[0].node_id) {
        head.crash_vm("demo0").await;
        println!("\nsimulated a crash of vm.demo0 on {}", heads[0].node_id);
    }
    println!("\nspine events follow; Ctrl-C ends the demo");
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => println!("{event}"),
                None => return Ok(()),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn demo_vm(i: usize, disc_address: &str) -> VmSpec {
    VmSpec {
        memory: 1024,
        cores: 1,
        balloon_on: true,
        cdrom_url: None,
        imager_options: None,
        display_name: format!("demo{i}.default.demo"),
        keymap: "en-gb".into(),
        network_interfaces: vec![],
        discs: vec![bigv_spine::resource::VmDisc {
            address: format!("nbd:[{disc_address}]:10809"),
            model: "virtio".into(),
            serial: None,
        }],
        management_address: None,
        management_ssh_keys: vec![],
        console_users: vec![],
        user_authentication: BTreeMap::new(),
        ..Default::default()
    }
}
