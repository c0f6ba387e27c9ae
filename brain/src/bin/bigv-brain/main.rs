//! `bigv-brain`: the control plane daemon, and its store tools.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use bigv_brain::model::SCHEMA;
use bigv_brain::store::Store;
use bigv_brain::{Brain, BrainConfig};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "The BigV brain: control plane, API and spine server")]
struct Cli {
    /// Where the store and the spine certificate live.
    #[arg(long, env = "BIGV_DATA_DIR", default_value = "/var/lib/bigv-brain")]
    data_dir: PathBuf,
    #[command(flatten)]
    serve: ServeArgs,
    /// Without a subcommand, the brain runs.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Write the whole store as one JSON document (to stdout or FILE).
    Dump { file: Option<PathBuf> },
    /// Load a JSON dump into an empty store.
    Restore { file: PathBuf },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The HTTP API (customers, the bigv CLI, /session).
    #[arg(long, env = "BIGV_API_LISTEN", default_value = "0.0.0.0:8080")]
    api_listen: SocketAddr,
    /// The spine, where heads and tails connect.
    #[arg(long, env = "BIGV_SPINE_LISTEN", default_value = "0.0.0.0:4430")]
    spine_listen: SocketAddr,
    /// Username of the first cluster_su, created only if the store has no
    /// users yet.
    #[arg(long, env = "BIGV_BOOTSTRAP_USER")]
    bootstrap_user: Option<String>,
    /// Its password (prefer the environment variable to the flag).
    #[arg(long, env = "BIGV_BOOTSTRAP_PASSWORD", hide_env_values = true)]
    bootstrap_password: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.data_dir, cli.serve).await,
        Some(Command::Dump { file }) => {
            let store = Store::open(&cli.data_dir, SCHEMA)?;
            match file {
                Some(path) => {
                    let out = std::fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    store.dump(std::io::BufWriter::new(out))?;
                }
                None => store.dump(std::io::stdout().lock())?,
            }
            Ok(())
        }
        Some(Command::Restore { file }) => {
            let input = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            let store = Store::open(&cli.data_dir, SCHEMA)?;
            store.restore(std::io::BufReader::new(input))?;
            eprintln!(
                "restored {} into {}",
                file.display(),
                cli.data_dir.display()
            );
            Ok(())
        }
    }
}

async fn serve(data_dir: PathBuf, args: ServeArgs) -> anyhow::Result<()> {
    let mut config = BrainConfig::new(data_dir);
    config.api_addr = args.api_listen;
    config.spine_addr = args.spine_listen;
    config.bootstrap = match (args.bootstrap_user, args.bootstrap_password) {
        (Some(user), Some(password)) => Some((user, password)),
        (None, None) => None,
        _ => anyhow::bail!("give both --bootstrap-user and --bootstrap-password, or neither"),
    };
    let brain = Brain::start(config).await?;
    println!(
        "bigv-brain: API on http://{}, spine on {} (certificate {})",
        brain.api_addr, brain.spine_addr, brain.fingerprint
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    brain.shutdown().await;
    Ok(())
}
