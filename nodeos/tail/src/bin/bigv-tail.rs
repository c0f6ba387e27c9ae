//! `bigv-tail`: the tail agent, plus tools to serve one file and to
//! benchmark the NBD server against its peers.
//!
//! - `bigv-tail run --config tail.toml` (or flags): join the spine and
//!   serve discs from the configured pools.
//! - `bigv-tail serve FILE --listen ADDR --allow IP…`: serve one file as a
//!   disc with no control plane (debugging, tests, benchmarks).
//! - `bigv-tail bench`: ours vs `qemu-nbd` (and `nbd-server`), same file,
//!   same client.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use bigv_spine::NodeAgent;
use bigv_tail::acl::Acl;
use bigv_tail::agent::TailAgent;
use bigv_tail::config::TailConfig;
use bigv_tail::nbd::{DiscServer, Export};
use bigv_tail::pools::PoolConfig;

#[derive(Parser)]
#[command(name = "bigv-tail", version, about = "The BigV tail agent")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compare our NBD server with qemu-nbd (and nbd-server) using
    /// `qemu-img bench`; prints a table. Build with --release first.
    Bench {
        /// Directory for the test file (a real filesystem).
        #[arg(long, default_value = "/var/tmp/bigv-bench")]
        dir: PathBuf,
        /// Test file size, MiB.
        #[arg(long, default_value_t = 512)]
        size_mib: u64,
        /// Runs per cell (the best is kept).
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Only compare the mirror's copy with `cp --sparse=always`.
        #[arg(long)]
        mirror_only: bool,
    },
    /// Join the spine and serve the pools' discs (the tail agent).
    Run {
        /// A TOML file with every setting (see `bigv_tail::config`).
        #[arg(long, conflicts_with_all = ["node_id", "spine", "pool"])]
        config: Option<PathBuf>,
        #[arg(long, env = "BIGV_NODE_ID")]
        node_id: Option<String>,
        /// The brain's spine listener, `host:port`.
        #[arg(long, env = "BIGV_SPINE")]
        spine: Option<String>,
        /// The brain certificate's fingerprint, `sha256:HEX`.
        #[arg(long, env = "BIGV_PIN")]
        pin: Option<String>,
        /// Where discs' own addresses are added (init passes the boot NIC).
        #[arg(long, env = "BIGV_STORAGE_INTERFACE")]
        storage_interface: Option<String>,
        #[arg(long, env = "BIGV_STORAGE_ADDRESS", default_value = "127.0.0.1")]
        storage_address: IpAddr,
        #[arg(long, default_value = "/srv/images")]
        images: PathBuf,
        #[arg(long, default_value_t = bigv_tail::config::NBD_PORT)]
        nbd_port: u16,
        /// A pool as `NAME:GRADE:DIR` (repeatable; in the environment,
        /// comma-separated).
        #[arg(long, env = "BIGV_POOLS", value_delimiter = ',')]
        pool: Vec<String>,
        /// The image version reported to the brain (init passes the
        /// kernel's `bigv.version`).
        #[arg(long, env = "BIGV_IMAGE_VERSION")]
        image_version: Option<String>,
        /// Where templates missing from --images are fetched
        /// (`URL/<image>.raw`; init passes the brain's).
        #[arg(long, env = "BIGV_TEMPLATES_URL")]
        templates_url: Option<String>,
    },
    /// Serve one file as an NBD export until interrupted.
    Serve {
        /// The disc image (a sparse raw file).
        file: PathBuf,
        /// Address to listen on (port 0 picks one; the bound address is
        /// printed on stdout as `listening on ADDR`).
        #[arg(long, default_value = "127.0.0.1:10809")]
        listen: SocketAddr,
        /// Peers allowed to connect (repeatable); none means nobody.
        #[arg(long = "allow")]
        allow: Vec<IpAddr>,
        /// The export name (the empty name also selects it).
        #[arg(long, default_value = "disc")]
        name: String,
        #[arg(long)]
        read_only: bool,
        /// Hold clients to this many requests per second.
        #[arg(long)]
        iops: Option<u64>,
        /// Hold clients to this many MiB/s of data.
        #[arg(long)]
        mib_per_second: Option<u64>,
    },
}

fn main() -> anyhow::Result<()> {
    // stderr (the serial console on a node) and, once joined, the brain.
    bigv_spine::logs::init_agent_tracing();
    let cli = Cli::parse();
    if let Cmd::Bench {
        dir,
        size_mib,
        runs,
        mirror_only,
    } = &cli.command
    {
        let cfg = bigv_tail::bench::BenchConfig {
            dir: dir.clone(),
            size_mib: *size_mib,
            runs: *runs,
            mirror_only: *mirror_only,
            ours: std::env::current_exe().context("finding our own binary")?,
        };
        return bigv_tail::bench::run(&cfg);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Cmd::Bench { .. } => unreachable!("handled before the runtime starts"),
            Cmd::Run {
                config,
                node_id,
                spine,
                pin,
                storage_interface,
                storage_address,
                images,
                nbd_port,
                pool,
                image_version,
                templates_url,
            } => {
                let config = match config {
                    Some(path) => TailConfig::load(&path)?,
                    None => {
                        let pools = pool
                            .iter()
                            .map(|p| parse_pool(p))
                            .collect::<anyhow::Result<Vec<_>>>()?;
                        let config = TailConfig {
                            node_id: node_id.context("--node-id (or --config) is required")?,
                            spine: spine.context("--spine (or --config) is required")?,
                            pin,
                            storage_interface,
                            storage_address,
                            images,
                            nbd_port,
                            report_interval_secs: 10,
                            pools,
                            image_version,
                            templates_url,
                        };
                        config.check()?;
                        config
                    }
                };
                run(config).await
            }
            Cmd::Serve {
                file,
                listen,
                allow,
                name,
                read_only,
                iops,
                mib_per_second,
            } => {
                let limits = (iops.is_some() || mib_per_second.is_some()).then_some(
                    bigv_spine::resource::DiscLimits {
                        iops,
                        mib_per_second,
                    },
                );
                serve(file, listen, allow, name, read_only, limits).await
            }
        }
    })
}

fn parse_pool(s: &str) -> anyhow::Result<PoolConfig> {
    let mut parts = s.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(grade), Some(dir)) if !name.is_empty() && !grade.is_empty() => {
            Ok(PoolConfig {
                name: name.into(),
                grade: grade.into(),
                path: dir.into(),
            })
        }
        _ => anyhow::bail!("--pool {s:?}: expected NAME:GRADE:DIR"),
    }
}

async fn run(config: TailConfig) -> anyhow::Result<()> {
    let node_config = config.node_config()?;
    let agent = TailAgent::start(config.agent_config().await?).await?;
    let node = NodeAgent::new(node_config, agent.clone());
    agent.set_notifier(node.notifier());
    tokio::spawn(agent.clone().report_loop());
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("watching SIGTERM")?;
    tokio::select! {
        action = node.run() => {
            // The reply has gone out; init (PID 1) reads the exit status
            // and carries the action out (docs/boot.md, "Init").
            tracing::warn!(?action, "the brain ordered a power action; exiting for init");
            std::process::exit(action.agent_exit_code());
        }
        r = tokio::signal::ctrl_c() => r.context("waiting for ^C")?,
        _ = sigterm.recv() => tracing::info!("SIGTERM; stopping"),
    }
    Ok(())
}

async fn serve(
    file: PathBuf,
    listen: SocketAddr,
    allow: Vec<IpAddr>,
    name: String,
    read_only: bool,
    limits: Option<bigv_spine::resource::DiscLimits>,
) -> anyhow::Result<()> {
    let export = Export::open(name, &file, read_only)
        .with_context(|| format!("opening {}", file.display()))?;
    let server =
        DiscServer::start(Arc::new(export), listen, allow.into_iter().collect::<Acl>()).await?;
    server.set_limits(limits);
    println!("listening on {}", server.local_addr());
    tokio::signal::ctrl_c().await.context("waiting for ^C")?;
    server.stop().await;
    Ok(())
}
