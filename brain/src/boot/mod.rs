//! Boot services wiring: the brain runs `pxe/`'s DHCP, TFTP, router
//! advertisements and boot HTTP server on the boot LAN, answering them
//! from its model (docs/boot.md, "The brain's side").
//!
//! - `manifest.rs`, `images.rs`: node images by version in the data dir;
//! - `policy.rs`: the [`bigv_pxe::BootPolicy`] answered from memory;
//! - `task.rs`: the task that persists leases and enrollments and keeps
//!   the policy's view current;
//! - `check.rs`: the image version check that keeps mismatched nodes out
//!   of service.

pub mod check;
pub mod images;
pub mod manifest;
pub mod policy;
pub mod storage;
pub mod task;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bigv_pxe::dhcp::socket::{self as dhcp_socket, DhcpSocketConfig};
use bigv_pxe::dhcp::{DhcpConfig, DhcpServer};
use bigv_pxe::ra::{RaConfig, RaSender};
use bigv_pxe::tftp::{TftpConfig, TftpServer, TftpSource};
use bytes::Bytes;
use ipnet::{Ipv4Net, Ipv6Net};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::images::NodeImageStore;
use self::policy::{BootParams, BrainPolicy};
use crate::model::Db;

/// Debian's iPXE binaries (package `ipxe`), served over TFTP by default.
pub const DEBIAN_IPXE: [(&str, &str); 2] = [
    ("undionly.kpxe", "/usr/lib/ipxe/undionly.kpxe"),
    ("ipxe.efi", "/boot/ipxe.efi"),
];

/// Where the TFTP server's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TftpFiles {
    /// A folder (everything in it, read-only).
    Dir(PathBuf),
    /// Named files loaded at start-up; missing ones are skipped with a
    /// warning (a BIOS-only cluster needs no `ipxe.efi`).
    Files(Vec<(String, PathBuf)>),
}

impl Default for TftpFiles {
    fn default() -> Self {
        TftpFiles::Files(
            DEBIAN_IPXE
                .iter()
                .map(|(n, p)| (n.to_string(), PathBuf::from(p)))
                .collect(),
        )
    }
}

/// DHCP, TFTP and RA on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanConfig {
    pub interface: String,
    pub subnet: Ipv4Net,
    /// The dynamic pool, inclusive.
    pub pool: (Ipv4Addr, Ipv4Addr),
    pub tftp: TftpFiles,
    /// An on-link prefix to advertise (else the RA carries none).
    pub ra_prefix: Option<Ipv6Net>,
}

/// The boot services' settings (`bigv-brain --boot-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootServicesConfig {
    /// The brain's address on the boot LAN (DHCP server id, next-server,
    /// and the host in script URLs).
    pub address: Ipv4Addr,
    /// The boot HTTP server (scripts and image files).
    pub http_listen: SocketAddr,
    /// DHCP, TFTP and RA; `None` runs only the HTTP server (tests, or a
    /// boot LAN whose DHCP is elsewhere and points iPXE at us).
    pub lan: Option<LanConfig>,
    /// The spine address nodes are told (default: `address` and the spine
    /// listener's port).
    pub spine: Option<SocketAddr>,
    /// More kernel arguments for every node.
    pub extra_args: Vec<String>,
    /// The nodes' NIC on a storage LAN of its own (e.g. `eth1`). `None`:
    /// the boot LAN is also the storage LAN, and its router advertisements
    /// list the storage prefix as on-link (docs/storage.md, "Addresses").
    pub storage_interface: Option<String>,
}

impl BootServicesConfig {
    /// DHCP, TFTP and RA on `interface` with default pool (the upper half
    /// of the subnet's hosts above `address`), HTTP on port 80.
    pub fn on_interface(interface: &str, address: Ipv4Addr, subnet: Ipv4Net) -> Self {
        BootServicesConfig {
            address,
            http_listen: SocketAddr::V4(SocketAddrV4::new(address, 80)),
            lan: Some(LanConfig {
                interface: interface.into(),
                subnet,
                pool: default_pool(subnet),
                tftp: TftpFiles::default(),
                ra_prefix: None,
            }),
            spine: None,
            extra_args: Vec::new(),
            storage_interface: None,
        }
    }
}

/// The kernel arguments naming the nodes' storage NIC and the storage
/// prefix init derives each node's address from (none without a storage
/// LAN of its own).
pub fn storage_args(config: &BootServicesConfig) -> Vec<String> {
    match &config.storage_interface {
        Some(iface) => vec![
            format!("bigv.storage={iface}"),
            format!(
                "bigv.storage_prefix={}",
                crate::reconciler::storage_prefix()
            ),
        ],
        None => vec![],
    }
}

/// The boot LAN's router advertisements: its SLAAC prefix, if any, and
/// the storage prefix as on-link only when the boot LAN is also the
/// storage LAN (otherwise heads must reach disc addresses through their
/// storage NIC alone).
fn ra_config(config: &BootServicesConfig, lan: &LanConfig) -> RaConfig {
    let mut rcfg = RaConfig::new(&lan.interface);
    rcfg.prefix = lan.ra_prefix;
    if config.storage_interface.is_none() {
        rcfg.on_link = vec![crate::reconciler::storage_prefix()];
    }
    rcfg
}

/// The upper half of the subnet's host addresses.
pub fn default_pool(subnet: Ipv4Net) -> (Ipv4Addr, Ipv4Addr) {
    let first = u32::from(subnet.network()) + 1;
    let last = u32::from(subnet.broadcast()).saturating_sub(1).max(first);
    let mid = first + (last - first) / 2;
    (
        Ipv4Addr::from(mid + 1).min(Ipv4Addr::from(last)),
        Ipv4Addr::from(last),
    )
}

/// The running boot services.
pub struct BootServices {
    pub policy: Arc<BrainPolicy>,
    pub http_addr: SocketAddr,
    pub tasks: Vec<JoinHandle<()>>,
    /// The parameters scripts are written with (the caller's, plus
    /// `bigv.templates=`, which needs the bound HTTP address).
    pub params: BootParams,
}

fn tftp_source(files: &TftpFiles) -> TftpSource {
    match files {
        TftpFiles::Dir(d) => TftpSource::Directory(d.clone()),
        TftpFiles::Files(list) => {
            let mut map = HashMap::new();
            for (name, path) in list {
                match std::fs::read(path) {
                    Ok(b) => {
                        map.insert(name.clone(), Bytes::from(b));
                    }
                    Err(e) => tracing::warn!(
                        file = %path.display(), error = %e,
                        "iPXE binary not served over TFTP (apt-get install ipxe)"
                    ),
                }
            }
            TftpSource::Memory(Arc::new(map))
        }
    }
}

/// Binds and starts the boot services. Fails (naming what) if a socket
/// cannot be bound; nothing is left running then.
pub async fn start(
    config: &BootServicesConfig,
    db: &Arc<Db>,
    images: &Arc<NodeImageStore>,
    mut params: BootParams,
    templates: PathBuf,
    shutdown: &CancellationToken,
    events: tokio::sync::mpsc::UnboundedSender<policy::BootEvent>,
) -> anyhow::Result<BootServices> {
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("listening for boot HTTP on {}", config.http_listen))?;
    let http_addr = listener.local_addr()?;
    let http_base = format!("http://{}:{}", config.address, http_addr.port());
    // Where tails fetch OS templates they have no copy of (init hands it
    // to the tail agent; heads ignore it).
    params
        .extra_args
        .push(format!("bigv.templates={http_base}/templates"));
    params.extra_args.extend(storage_args(config));
    let policy = Arc::new(BrainPolicy::new(
        task::current_view(db, images, &params),
        events,
    ));

    let mut started: Vec<Box<dyn FnOnce(CancellationToken) -> JoinHandle<()> + Send>> = vec![];
    if let Some(lan) = &config.lan {
        let dcfg = DhcpConfig::new(
            config.address,
            lan.subnet,
            lan.pool.0,
            lan.pool.1,
            http_base.clone(),
        );
        let leases = task::stored_leases(&db.read());
        let dhcp = DhcpServer::new(dcfg, policy.clone(), leases)
            .context("the boot LAN's DHCP settings")?;
        let sock_cfg = DhcpSocketConfig::on_interface(&lan.interface);
        let sock = dhcp_socket::bind(&sock_cfg)
            .with_context(|| format!("DHCP on {} (needs root)", lan.interface))?;
        started.push(Box::new(move |stop: CancellationToken| {
            tokio::spawn(async move {
                dhcp_socket::serve(dhcp, sock, sock_cfg, stop.cancelled_owned()).await;
            })
        }));

        let mut tcfg = TftpConfig::new(SocketAddr::V4(SocketAddrV4::new(config.address, 69)));
        tcfg.interface = Some(lan.interface.clone());
        let tftp = TftpServer::bind(tcfg, tftp_source(&lan.tftp))
            .with_context(|| format!("TFTP on {}:69", config.address))?;
        started.push(Box::new(move |stop: CancellationToken| {
            tokio::spawn(tftp.serve(stop.cancelled_owned()))
        }));

        let rcfg = ra_config(config, lan);
        let ra = RaSender::bind(&rcfg)
            .with_context(|| format!("router advertisements on {}", lan.interface))?;
        started.push(Box::new(move |stop: CancellationToken| {
            tokio::spawn(ra.serve(stop.cancelled_owned()))
        }));
    }
    let app = bigv_pxe::http::router(policy.clone(), &http_base, images.root().to_path_buf())
        .merge(bigv_pxe::http::templates_router(templates));
    started.push(Box::new(move |stop: CancellationToken| {
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "boot HTTP server failed");
            }
        })
    }));
    let tasks = started
        .into_iter()
        .map(|f| f(shutdown.child_token()))
        .collect();
    tracing::info!(%http_base, lan = ?config.lan.as_ref().map(|l| &l.interface), "boot services started");
    Ok(BootServices {
        policy,
        http_addr,
        tasks,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_lan_of_its_own_takes_disc_addresses_off_the_boot_lan() {
        let shared = BootServicesConfig::on_interface(
            "br0",
            "10.0.0.1".parse().unwrap(),
            "10.0.0.0/24".parse().unwrap(),
        );
        let lan = shared.lan.clone().unwrap();
        assert_eq!(
            ra_config(&shared, &lan).on_link,
            [crate::reconciler::storage_prefix()]
        );
        assert!(storage_args(&shared).is_empty());

        let separate = BootServicesConfig {
            storage_interface: Some("eth1".into()),
            ..shared
        };
        assert!(ra_config(&separate, &lan).on_link.is_empty());
        assert_eq!(
            storage_args(&separate),
            ["bigv.storage=eth1", "bigv.storage_prefix=fd00:5::/64"]
        );
    }
}
