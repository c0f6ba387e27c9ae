//! `bigv-brain`: the control plane daemon, and its store tools.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use bigv_brain::api::tls::ApiTls;
use bigv_brain::boot::images::{self, NodeImageStore};
use bigv_brain::boot::{BootServicesConfig, TftpFiles};
use bigv_brain::model::SCHEMA;
use bigv_brain::store::Store;
use bigv_brain::{Brain, BrainConfig};
use clap::{Parser, Subcommand};
use ipnet::Ipv4Net;

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
    /// Node images (what heads and tails network-boot)
    #[command(subcommand, visible_alias = "node-image")]
    Image(ImageCommand),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Verify the image in DIR (vmlinuz, initrd, initrd-head and the
    /// manifest.json vouching for them) and store it by version. Works
    /// while the brain runs: it picks the image up within seconds.
    Add { dir: PathBuf },
    /// The stored node images
    List,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The HTTP API (customers, the bigv CLI, /session).
    #[arg(long, env = "BIGV_API_LISTEN", default_value = "0.0.0.0:8080")]
    api_listen: SocketAddr,
    /// Serve the API over HTTPS. Without --api-tls-cert the certificate is
    /// the brain's own self-signed one (the spine's): clients pin the
    /// fingerprint printed at start (`bigv --tls-fingerprint`).
    #[arg(long, env = "BIGV_API_TLS")]
    api_tls: bool,
    /// The API's certificate chain (PEM), e.g. from the site's CA; implies --api-tls
    #[arg(long, env = "BIGV_API_TLS_CERT", requires = "api_tls_key")]
    api_tls_cert: Option<PathBuf>,
    /// The private key (PEM) for --api-tls-cert
    #[arg(long, env = "BIGV_API_TLS_KEY", requires = "api_tls_cert")]
    api_tls_key: Option<PathBuf>,
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
    /// For a new store only (later: `PUT /admin/settings`): how long a
    /// head may lose the spine before it kills its VMs; heads are told in
    /// the spine's welcome
    #[arg(long, env = "BIGV_FENCE_TIMEOUT_SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    fence_timeout_secs: Option<u64>,
    /// For a new store only: how much longer than the fence timeout the
    /// brain waits before restarting a lost head's VMs elsewhere
    #[arg(long, env = "BIGV_FENCE_MARGIN_SECS", value_parser = clap::value_parser!(u64).range(0..=86_400))]
    fence_margin_secs: Option<u64>,
    #[command(flatten)]
    boot: BootArgs,
}

/// The boot services; without --boot-interface (or --boot-http-only) none run.
#[derive(clap::Args, Debug, Default)]
struct BootArgs {
    /// Run DHCP, TFTP and router advertisements on this boot LAN interface
    #[arg(long, env = "BIGV_BOOT_INTERFACE")]
    boot_interface: Option<String>,
    /// Run only the boot HTTP server (another DHCP server points iPXE here)
    #[arg(long, conflicts_with = "boot_interface")]
    boot_http_only: bool,
    /// The brain's IPv4 address on the boot LAN
    #[arg(long, env = "BIGV_BOOT_ADDRESS")]
    boot_address: Option<Ipv4Addr>,
    /// The boot LAN subnet (default: the /24 around --boot-address)
    #[arg(long, env = "BIGV_BOOT_SUBNET")]
    boot_subnet: Option<Ipv4Net>,
    /// The DHCP pool, FIRST-LAST (default: the upper half of the subnet)
    #[arg(long, env = "BIGV_BOOT_POOL", value_parser = parse_pool)]
    boot_pool: Option<(Ipv4Addr, Ipv4Addr)>,
    /// The boot HTTP server (default: --boot-address, port 80)
    #[arg(long, env = "BIGV_BOOT_HTTP_LISTEN")]
    boot_http_listen: Option<SocketAddr>,
    /// Serve this folder over TFTP instead of Debian's iPXE binaries
    /// (/usr/lib/ipxe/undionly.kpxe, /boot/ipxe.efi)
    #[arg(long, env = "BIGV_BOOT_TFTP_DIR")]
    boot_tftp_dir: Option<PathBuf>,
    /// The spine address nodes are told (default: --boot-address and the
    /// spine port)
    #[arg(long, env = "BIGV_BOOT_SPINE")]
    boot_spine: Option<SocketAddr>,
    /// An IPv6 prefix to advertise on the boot LAN (SLAAC)
    #[arg(long)]
    boot_ra_prefix: Option<ipnet::Ipv6Net>,
    /// An extra kernel argument for every node (repeatable)
    #[arg(long = "boot-kernel-arg")]
    boot_kernel_args: Vec<String>,
    /// The nodes' NIC on a storage LAN of its own (e.g. eth1): init gives
    /// it the node's storage address, and the boot LAN stops carrying disc
    /// addresses (default: the boot LAN is the storage LAN)
    #[arg(long, env = "BIGV_BOOT_STORAGE_INTERFACE", value_parser = parse_interface)]
    boot_storage_interface: Option<String>,
}

fn parse_interface(s: &str) -> Result<String, String> {
    let ok = (1..16).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not an interface name"))
    }
}

fn parse_pool(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected FIRST-LAST, e.g. 10.0.0.100-10.0.0.200"))?;
    let a: Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
    let b: Ipv4Addr = b
        .trim()
        .parse()
        .map_err(|_| format!("{b:?} is not an IPv4 address"))?;
    if a > b {
        return Err(format!("{a} comes after {b}"));
    }
    Ok((a, b))
}

impl BootArgs {
    /// The boot services' config, or `None` when none are asked for.
    fn config(self) -> anyhow::Result<Option<BootServicesConfig>> {
        if self.boot_interface.is_none() && !self.boot_http_only {
            if self.boot_address.is_some() || self.boot_http_listen.is_some() {
                anyhow::bail!(
                    "--boot-address/--boot-http-listen need --boot-interface IFACE (or --boot-http-only)"
                );
            }
            return Ok(None);
        }
        let address = self
            .boot_address
            .context("--boot-address is required with the boot services")?;
        let subnet = match self.boot_subnet {
            Some(s) => s,
            None => Ipv4Net::new(address, 24)?.trunc(),
        };
        let mut config = match &self.boot_interface {
            Some(iface) => BootServicesConfig::on_interface(iface, address, subnet),
            None => BootServicesConfig {
                lan: None,
                ..BootServicesConfig::on_interface("", address, subnet)
            },
        };
        if let Some(lan) = &mut config.lan {
            if let Some(pool) = self.boot_pool {
                lan.pool = pool;
            }
            if let Some(dir) = self.boot_tftp_dir {
                lan.tftp = TftpFiles::Dir(dir);
            }
            lan.ra_prefix = self.boot_ra_prefix;
        }
        if let Some(l) = self.boot_http_listen {
            config.http_listen = l;
        }
        config.spine = self.boot_spine;
        config.extra_args = self.boot_kernel_args;
        config.storage_interface = self.boot_storage_interface;
        Ok(Some(config))
    }
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
        Some(Command::Image(ImageCommand::Add { dir })) => {
            let image = images::add(&cli.data_dir, &dir)?;
            println!(
                "added node image {} ({} files) to {}",
                image.version,
                image.files.len(),
                cli.data_dir
                    .join(images::DIR)
                    .join(&image.version)
                    .display()
            );
            Ok(())
        }
        Some(Command::Image(ImageCommand::List)) => {
            let store = NodeImageStore::new(&cli.data_dir);
            store.rescan();
            for image in store.list() {
                let size: u64 = image.files.values().map(|f| f.size).sum();
                println!(
                    "{}\t{} files\t{} bytes\tkernel {}",
                    image.version,
                    image.files.len(),
                    size,
                    image.kernel_version.as_deref().unwrap_or("?")
                );
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
    config.boot = args.boot.config()?;
    config.api_tls = match (args.api_tls_cert, args.api_tls_key) {
        (Some(cert), Some(key)) => Some(ApiTls::Files { cert, key }),
        _ if args.api_tls => Some(ApiTls::OwnCertificate),
        _ => None,
    };
    if let Some(secs) = args.fence_timeout_secs {
        config.initial_settings.fence_timeout_secs = secs;
    }
    if let Some(secs) = args.fence_margin_secs {
        config.initial_settings.fence_margin_secs = secs;
    }
    config.bootstrap = match (args.bootstrap_user, args.bootstrap_password) {
        (Some(user), Some(password)) => Some((user, password)),
        (None, None) => None,
        _ => anyhow::bail!("give both --bootstrap-user and --bootstrap-password, or neither"),
    };
    let brain = Brain::start(config).await?;
    let scheme = if brain.api_https { "https" } else { "http" };
    println!(
        "bigv-brain: API on {scheme}://{}, spine on {} (certificate {})",
        brain.api_addr, brain.spine_addr, brain.fingerprint
    );
    if let Some(addr) = brain.boot_http_addr {
        println!("bigv-brain: boot HTTP on {addr}");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    brain.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(args: &[&str]) -> anyhow::Result<Option<BootServicesConfig>> {
        let cli = Cli::try_parse_from(["bigv-brain"].iter().chain(args))?;
        cli.serve.boot.config()
    }

    #[test]
    fn no_boot_flags_no_boot_services() {
        assert_eq!(boot(&[]).unwrap(), None);
        assert!(boot(&["--boot-address", "10.0.0.1"]).is_err());
    }

    #[test]
    fn boot_flags_make_the_config() {
        let c = boot(&["--boot-interface", "br0", "--boot-address", "10.0.0.1"])
            .unwrap()
            .unwrap();
        let lan = c.lan.as_ref().unwrap();
        assert_eq!(lan.interface, "br0");
        assert_eq!(lan.subnet.to_string(), "10.0.0.0/24");
        assert_eq!(lan.pool.0.to_string(), "10.0.0.128");
        assert_eq!(lan.pool.1.to_string(), "10.0.0.254");
        assert_eq!(lan.tftp, TftpFiles::default());
        assert_eq!(c.http_listen.to_string(), "10.0.0.1:80");
        assert_eq!(c.spine, None);

        let c = boot(&[
            "--boot-interface",
            "eth1",
            "--boot-address",
            "192.168.5.2",
            "--boot-subnet",
            "192.168.4.0/23",
            "--boot-pool",
            "192.168.5.10-192.168.5.20",
            "--boot-http-listen",
            "0.0.0.0:8081",
            "--boot-tftp-dir",
            "/srv/tftp",
            "--boot-spine",
            "192.168.5.2:4430",
            "--boot-kernel-arg",
            "quiet",
            "--boot-kernel-arg",
            "bigv.debug=1",
        ])
        .unwrap()
        .unwrap();
        let lan = c.lan.as_ref().unwrap();
        assert_eq!(lan.subnet.to_string(), "192.168.4.0/23");
        assert_eq!(lan.pool.0.to_string(), "192.168.5.10");
        assert_eq!(lan.tftp, TftpFiles::Dir("/srv/tftp".into()));
        assert_eq!(c.http_listen.to_string(), "0.0.0.0:8081");
        assert_eq!(c.spine.unwrap().to_string(), "192.168.5.2:4430");
        assert_eq!(c.extra_args, ["quiet", "bigv.debug=1"]);

        let c = boot(&["--boot-http-only", "--boot-address", "10.0.0.1"])
            .unwrap()
            .unwrap();
        assert!(c.lan.is_none());
        assert!(boot(&["--boot-interface", "br0"]).is_err(), "no address");
        assert!(
            boot(&[
                "--boot-interface",
                "br0",
                "--boot-address",
                "10.0.0.1",
                "--boot-pool",
                "10.0.0.9-10.0.0.2"
            ])
            .is_err()
        );
    }
}
