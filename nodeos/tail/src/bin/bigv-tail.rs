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

use bigv_tail::acl::Acl;
use bigv_tail::nbd::{DiscServer, Export};

#[derive(Parser)]
#[command(name = "bigv-tail", version, about = "The BigV tail agent")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Cmd::Serve {
                file,
                listen,
                allow,
                name,
                read_only,
            } => serve(file, listen, allow, name, read_only).await,
        }
    })
}

async fn serve(
    file: PathBuf,
    listen: SocketAddr,
    allow: Vec<IpAddr>,
    name: String,
    read_only: bool,
) -> anyhow::Result<()> {
    let export = Export::open(name, &file, read_only)
        .with_context(|| format!("opening {}", file.display()))?;
    let server =
        DiscServer::start(Arc::new(export), listen, allow.into_iter().collect::<Acl>()).await?;
    println!("listening on {}", server.local_addr());
    tokio::signal::ctrl_c().await.context("waiting for ^C")?;
    server.stop().await;
    Ok(())
}
