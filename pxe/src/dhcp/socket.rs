//! The DHCP socket task: UDP port 67 bound to the boot interface, replies
//! broadcast (or unicast to a renewing client or a relay). The task owns the
//! [`DhcpServer`]; nothing else touches its state.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::{Destination, DhcpServer};

/// Where the DHCP task listens and sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpSocketConfig {
    /// The boot LAN interface (`SO_BINDTODEVICE`); `None` listens on all,
    /// which only tests should do.
    pub interface: Option<String>,
    /// Normally 0.0.0.0:67: broadcasts from clients without an address only
    /// reach a socket bound to the wildcard address.
    pub listen: SocketAddrV4,
    /// The clients' port, 68.
    pub client_port: u16,
    /// The broadcast address replies go to, 255.255.255.255.
    pub broadcast: Ipv4Addr,
}

impl DhcpSocketConfig {
    /// Port 67 on `interface`, replies to 255.255.255.255:68.
    pub fn on_interface(interface: &str) -> DhcpSocketConfig {
        DhcpSocketConfig {
            interface: Some(interface.to_string()),
            listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67),
            client_port: 68,
            broadcast: Ipv4Addr::BROADCAST,
        }
    }
}

/// Failures setting the socket up (the serving loop itself only logs).
#[derive(Debug, thiserror::Error)]
pub enum DhcpSocketError {
    #[error("creating the DHCP socket")]
    Create(#[source] io::Error),
    #[error("setting socket option {option} on the DHCP socket")]
    SetOption {
        option: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("binding the DHCP socket to {addr}")]
    Bind {
        addr: SocketAddrV4,
        #[source]
        source: io::Error,
    },
}

/// Opens the DHCP socket: reuse-address, broadcast, bound to the device.
pub fn bind(cfg: &DhcpSocketConfig) -> Result<UdpSocket, DhcpSocketError> {
    let set = |option, r: io::Result<()>| {
        r.map_err(|source| DhcpSocketError::SetOption { option, source })
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(DhcpSocketError::Create)?;
    set("SO_REUSEADDR", s.set_reuse_address(true))?;
    set("SO_BROADCAST", s.set_broadcast(true))?;
    if let Some(dev) = &cfg.interface {
        set("SO_BINDTODEVICE", s.bind_device(Some(dev.as_bytes())))?;
    }
    set("O_NONBLOCK", s.set_nonblocking(true))?;
    s.bind(&SocketAddr::V4(cfg.listen).into())
        .map_err(|source| DhcpSocketError::Bind {
            addr: cfg.listen,
            source,
        })?;
    UdpSocket::from_std(s.into()).map_err(DhcpSocketError::Create)
}

/// Serves DHCP on `socket` until `shutdown` resolves. Bad packets and send
/// failures are logged and do not stop the loop.
pub async fn serve(
    mut server: DhcpServer,
    socket: UdpSocket,
    cfg: DhcpSocketConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> DhcpServer {
    let mut buf = vec![0u8; 1500];
    tokio::pin!(shutdown);
    loop {
        let (len, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "DHCP receive failed");
                    continue;
                }
            },
            () = &mut shutdown => return server,
        };
        let reply = match server.handle(&buf[..len], std::time::SystemTime::now()) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(%peer, error = %crate::ErrorChain(&e), "DHCP packet not answered");
                continue;
            }
        };
        let to = match reply.to {
            Destination::Broadcast => SocketAddrV4::new(cfg.broadcast, cfg.client_port),
            Destination::Unicast(a) => SocketAddrV4::new(a, cfg.client_port),
            Destination::Relay(a) => SocketAddrV4::new(a, 67),
        };
        if let Err(e) = socket.send_to(&reply.bytes, to).await {
            tracing::warn!(%to, error = %e, kind = ?reply.message_type, "DHCP send failed");
        }
    }
}
