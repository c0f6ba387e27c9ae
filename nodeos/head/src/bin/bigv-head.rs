//! `bigv-head run --config head.toml` (or flags): the head agent. Joins
//! the spine and runs the VMs the brain orders as qemu processes,
//! re-adopting those a previous run left behind.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use bigv_head::agent::HeadAgent;
use bigv_head::argv::{Accel, NicBackend};
use bigv_head::config::HeadConfig;
use bigv_spine::NodeAgent;

#[derive(Parser)]
#[command(name = "bigv-head", version, about = "The BigV head agent")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Join the spine and run VMs (the head agent).
    Run {
        /// A TOML file with every setting (see `bigv_head::config`).
        #[arg(long, conflicts_with_all = ["node_id", "spine"])]
        config: Option<PathBuf>,
        #[arg(long, env = "BIGV_NODE_ID")]
        node_id: Option<String>,
        /// The brain's spine listener, `host:port`.
        #[arg(long, env = "BIGV_SPINE")]
        spine: Option<String>,
        /// The brain certificate's fingerprint, `sha256:HEX`.
        #[arg(long, env = "BIGV_PIN")]
        pin: Option<String>,
        #[arg(long)]
        run_dir: Option<PathBuf>,
        #[arg(long)]
        log_dir: Option<PathBuf>,
        /// kvm or tcg; default: KVM if /dev/kvm answers.
        #[arg(long)]
        accel: Option<String>,
        /// none, user or bridged (taps on per-VLAN bridges on --trunk).
        #[arg(long, env = "BIGV_NIC_BACKEND")]
        nic_backend: Option<String>,
        /// bridged: the interface carrying the VMs' VLANs, tagged.
        #[arg(long, env = "BIGV_TRUNK")]
        trunk: Option<String>,
        /// bridged: the one VLAN untagged on the trunk (its bridge takes
        /// the trunk itself as a port).
        #[arg(long, env = "BIGV_UNTAGGED_VLAN")]
        untagged_vlan: Option<u32>,
        #[arg(long)]
        vm_memory_mib: Option<u64>,
        /// The address incoming live migrations listen on.
        #[arg(long)]
        migration_address: Option<String>,
        /// The image version reported to the brain (init passes the
        /// image's own).
        #[arg(long, env = "BIGV_IMAGE_VERSION")]
        image_version: Option<String>,
        /// An address announced to the brain (init passes the boot NIC's
        /// DHCP address).
        #[arg(long, env = "BIGV_ADDRESS")]
        address: Option<String>,
        /// The address this head's NBD connections come from (init passes
        /// the boot NIC's global IPv6 address: discs are served on IPv6
        /// addresses). Announced first, so the brain lists it in the
        /// ACLs of this head's discs.
        #[arg(long, env = "BIGV_STORAGE_ADDRESS")]
        storage_address: Option<String>,
        /// The SSH port of each VM's console (on its management address).
        #[arg(long)]
        console_port: Option<u16>,
        /// Consoles listen on this address instead of each VM's
        /// management address (tests).
        #[arg(long)]
        console_bind: Option<std::net::IpAddr>,
        /// Add each VM's management address to this interface while the
        /// VM runs here.
        #[arg(long, env = "BIGV_CONSOLE_INTERFACE")]
        console_interface: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    // stderr (the serial console on a node) and, once joined, the brain.
    bigv_spine::logs::init_agent_tracing();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let Cmd::Run {
            config,
            node_id,
            spine,
            pin,
            run_dir,
            log_dir,
            accel,
            nic_backend,
            trunk,
            untagged_vlan,
            vm_memory_mib,
            migration_address,
            image_version,
            address,
            storage_address,
            console_port,
            console_bind,
            console_interface,
        } = cli.command;
        let config = match config {
            Some(path) => HeadConfig::load(&path)?,
            None => {
                let mut c = HeadConfig::new(
                    node_id.context("--node-id (or --config) is required")?,
                    spine.context("--spine (or --config) is required")?,
                );
                c.pin = pin;
                c.migration_address = migration_address;
                if let Some(d) = run_dir {
                    c.run_dir = d;
                }
                if let Some(d) = log_dir {
                    c.log_dir = d;
                }
                c.accel = match accel.as_deref() {
                    None => None,
                    Some("kvm") => Some(Accel::Kvm),
                    Some("tcg") => Some(Accel::Tcg),
                    Some(other) => anyhow::bail!("--accel {other:?}: expected kvm or tcg"),
                };
                c.nic_backend = match nic_backend.as_deref() {
                    None | Some("none") => NicBackend::None,
                    Some("user") => NicBackend::User,
                    Some("bridged") => NicBackend::Bridged,
                    Some(other) => {
                        anyhow::bail!("--nic-backend {other:?}: expected none, user or bridged")
                    }
                };
                c.trunk = trunk;
                c.untagged_vlan = untagged_vlan;
                c.vm_memory_mib = vm_memory_mib;
                c.image_version = image_version;
                c.addresses = storage_address.into_iter().chain(address).collect();
                if let Some(p) = console_port {
                    c.console_port = p;
                }
                c.console_bind = console_bind;
                c.console_interface = console_interface;
                c.check()?;
                c
            }
        };
        run(config).await
    })
}

async fn run(config: HeadConfig) -> anyhow::Result<()> {
    let node_config = config.node_config()?;
    let agent = HeadAgent::start(config.agent_config()).await?;
    let node = NodeAgent::new(node_config, agent.clone());
    agent.set_notifier(node.notifier());
    tokio::spawn(agent.clone().report_loop());
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("watching SIGTERM")?;
    tokio::select! {
        action = agent.run_spine(&node) => {
            // The reply has gone out; init (PID 1) reads the exit status
            // and carries the action out (docs/boot.md, "Init").
            // Standalone, the VMs keep running.
            tracing::warn!(?action, "the brain ordered a power action; exiting for init");
            agent.shutdown().await;
            std::process::exit(action.agent_exit_code());
        }
        r = tokio::signal::ctrl_c() => r.context("waiting for ^C")?,
        _ = sigterm.recv() => tracing::info!("SIGTERM; stopping"),
    }
    agent.shutdown().await;
    Ok(())
}
