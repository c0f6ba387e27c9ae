//! Each VM's console: its serial port shared by any number of clients
//! ([`serial`]), an SSH server on the VM's management address that
//! attaches clients to it and tunnels VNC ([`ssh`]), for the users and
//! credentials the VM resource names ([`auth`]), optionally putting the
//! management address on the head's management interface ([`address`]);
//! and an optional echo of the serial output into the agent's log
//! ([`echo`]). docs/head.md, "Console".
//!
//! A VM's console lives while the VM runs on this head: it starts when
//! the VM starts here (or is re-adopted by a restarted agent, or an
//! incoming migration completes) and stops when qemu ends (the VM
//! stopped or migrated away) or the agent shuts down.

pub mod address;
pub mod auth;
pub mod echo;
pub mod serial;
pub mod ssh;

pub use echo::{echo, enabled};

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bigv_spine::resource::VmSpec;
use russh::keys::PrivateKey;
use tokio_util::sync::CancellationToken;

use crate::argv::VmPaths;
use auth::Access;
use serial::{Serial, SerialPaths};

/// The head's console settings (`console_*` in the head's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// The SSH port on each management address.
    pub port: u16,
    /// Listen on this address instead of each VM's management address
    /// (tests; or a head whose management addresses arrive some other
    /// way). With it, only one VM's console can listen per port.
    pub bind: Option<IpAddr>,
    /// The head's SSH host key, made on first use; `None`:
    /// `run_dir/ssh_host_ed25519_key`.
    pub host_key: Option<PathBuf>,
    /// The head's management interface: each console adds its VM's
    /// management address here while the VM runs on this head, and
    /// removes it when the VM stops or leaves. `None`: addresses are
    /// someone else's business. Not with `bind`.
    pub interface: Option<String>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            port: 22,
            bind: None,
            host_key: None,
            interface: None,
        }
    }
}

impl ConsoleConfig {
    pub fn host_key_path(&self, run_dir: &Path) -> PathBuf {
        self.host_key
            .clone()
            .unwrap_or_else(|| run_dir.join("ssh_host_ed25519_key"))
    }
}

/// Where this power-on's output starts in the serial log (which qemu
/// appends to across starts), kept in the VM's run directory.
fn power_on_file(paths: &VmPaths) -> PathBuf {
    paths.dir.join("serial.start")
}

/// Records the serial log's length as the start of a new power-on. Call
/// after qemu is up and before the guest runs.
pub fn mark_power_on(paths: &VmPaths) {
    let len = std::fs::metadata(&paths.serial_log)
        .map(|m| m.len())
        .unwrap_or(0);
    if let Err(error) = std::fs::write(power_on_file(paths), len.to_string()) {
        tracing::warn!(path = %paths.dir.display(), %error, "recording where the serial scroll-back starts");
    }
}

fn power_on(paths: &VmPaths) -> u64 {
    std::fs::read_to_string(power_on_file(paths))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// One VM's running console; it stops by itself when the VM ends or the
/// agent stops.
pub struct Console {
    serial: Serial,
    access: Arc<RwLock<Access>>,
}

impl Console {
    /// Starts the serial fan-out and, given a host key and an address to
    /// listen on, the SSH server.
    pub fn start(
        config: &ConsoleConfig,
        host_key: Option<&PrivateKey>,
        name: &str,
        spec: &VmSpec,
        paths: &VmPaths,
        ended: &CancellationToken,
        stopping: &CancellationToken,
    ) -> Console {
        let stop = stopping.child_token();
        let (e, s) = (ended.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = e.cancelled() => s.cancel(),
                _ = s.cancelled() => {}
            }
        });
        let serial = Serial::start(
            name.to_owned(),
            SerialPaths {
                socket: paths.serial.clone(),
                log: paths.serial_log.clone(),
                start: power_on(paths),
            },
            stop.clone(),
        );
        let access = Arc::new(RwLock::new(Access::from_spec(spec)));
        let management = match spec.management_address.as_deref().map(str::parse::<IpAddr>) {
            Some(Ok(ip)) => Some(ip),
            Some(Err(_)) => {
                tracing::warn!(vm = name, address = ?spec.management_address, "management_address is not an IP address; no SSH console");
                None
            }
            None => None,
        };
        let listen = management.map(|m| config.bind.unwrap_or(m));
        match (listen, host_key) {
            (Some(ip), Some(key)) => {
                let target = Arc::new(ssh::Target {
                    vm: name.to_owned(),
                    serial: serial.clone(),
                    access: access.clone(),
                    vnc: paths.vnc.clone(),
                    management,
                    ended: ended.clone(),
                    sessions: Default::default(),
                });
                let addr = SocketAddr::new(ip, config.port);
                let cfg = Arc::new(ssh::config(key.clone()));
                let vm = name.to_owned();
                let interface = config.interface.clone().filter(|_| config.bind.is_none());
                let ended = ended.clone();
                tokio::spawn(async move {
                    let managed = match interface {
                        Some(i) => manage_address(&vm, &i, ip).await,
                        None => None,
                    };
                    if let Some(listener) = listen_on(&vm, addr, &stop).await {
                        tracing::info!(vm, %addr, "SSH console listening");
                        ssh::serve(listener, cfg, target, stop).await;
                        tracing::info!(vm, %addr, "SSH console stopped");
                    }
                    // Only once the VM is gone: a restarting agent's
                    // successor keeps serving the address.
                    if let Some(i) = managed.filter(|_| ended.is_cancelled())
                        && let Err(e) = i.remove(ip).await
                    {
                        tracing::warn!(vm, error = %crate::error_chain(&e), "removing the management address");
                    }
                });
            }
            (Some(_), None) => {
                tracing::warn!(vm = name, "no SSH host key; no SSH console")
            }
            (None, _) => {}
        }
        Console { serial, access }
    }

    /// The users and credentials of an updated resource; sessions already
    /// logged in stay.
    pub fn set_access(&self, spec: &VmSpec) {
        *self.access.write().expect("access poisoned") = Access::from_spec(spec);
    }

    pub fn serial(&self) -> &Serial {
        &self.serial
    }
}

/// Adds `ip` to interface `name`; the interface if it worked.
async fn manage_address(vm: &str, name: &str, ip: IpAddr) -> Option<address::Interface> {
    let added = async {
        let i = address::Interface::open(name).await?;
        i.add(ip).await?;
        Ok::<_, address::AddressError>(i)
    }
    .await;
    added
        .inspect_err(
            |e| tracing::warn!(vm, error = %crate::error_chain(e), "adding the management address"),
        )
        .ok()
}

/// How long a console keeps trying to bind a port still in use (by the
/// console of the agent this one replaces, which is letting go of it).
const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(15);

/// Listens on `addr`, retrying while the address is in use; `None` if it
/// cannot (logged) or `stop` comes first.
async fn listen_on(
    vm: &str,
    addr: SocketAddr,
    stop: &CancellationToken,
) -> Option<tokio::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + BIND_RETRY;
    loop {
        match bind(addr) {
            Ok(l) => return Some(l),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                    _ = stop.cancelled() => return None,
                }
            }
            Err(error) => {
                tracing::warn!(vm, %addr, %error, "SSH console cannot listen");
                return None;
            }
        }
    }
}

/// A listener on `addr`, which need not be on an interface yet
/// (`IP_FREEBIND`): the management address may be added after the VM
/// starts.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_freebind_v6(true)?;
        socket.set_only_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(64)?;
    tokio::net::TcpListener::from_std(socket.into())
}
