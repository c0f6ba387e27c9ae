//! A minimal IPv6 router-advertisement sender for the boot LAN.
//!
//! iPXE configures IPv6 alongside DHCPv4 and, with no router on the link,
//! waits about 16 s for one before it carries on (measured: qemu-lab.md §2
//! and docs/boot.md). An RA with the M and O flags clear tells it there is
//! nothing more to wait for. We send one to all-nodes (ff02::1) every
//! `interval` and in answer to each router solicitation (sent to ff02::2).
//! The router lifetime defaults to 0: we are not a default router, and the
//! boot LAN stays IPv4 for everything else. An optional on-link prefix lets
//! clients autoconfigure addresses in it.

use std::ffi::CString;
use std::io::{self, Read};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

use ipnet::Ipv6Net;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
/// Never answer solicitations faster than this.
const MIN_GAP: Duration = Duration::from_millis(200);

/// The advertisement's contents and cadence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaConfig {
    /// The boot LAN interface.
    pub interface: String,
    /// Advertised as on-link and autonomous (SLAAC), if set.
    pub prefix: Option<Ipv6Net>,
    /// Advertised as on-link only (no SLAAC): clients reach addresses in
    /// them directly on the link. The brain lists its storage prefix here,
    /// so heads reach every disc's own address on a boot LAN that is also
    /// the storage LAN (docs/storage.md, "Addresses").
    pub on_link: Vec<Ipv6Net>,
    /// Seconds; 0 = not a default router.
    pub router_lifetime: u16,
    /// Unsolicited advertisement period.
    pub interval: Duration,
}

impl RaConfig {
    pub fn new(interface: &str) -> RaConfig {
        RaConfig {
            interface: interface.to_string(),
            prefix: None,
            on_link: vec![],
            router_lifetime: 0,
            interval: Duration::from_secs(10),
        }
    }
}

/// Setting the sender up failed.
#[derive(Debug, thiserror::Error)]
pub enum RaError {
    #[error("interface {interface:?} not found")]
    NoSuchInterface { interface: String },
    #[error("creating the raw ICMPv6 socket (needs CAP_NET_RAW)")]
    Create(#[source] io::Error),
    #[error("setting {option} on the ICMPv6 socket")]
    SetOption {
        option: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The ICMPv6 router advertisement (checksum left 0: the kernel fills it
/// in for raw ICMPv6 sockets).
pub fn advertisement(cfg: &RaConfig) -> Vec<u8> {
    let mut p = vec![
        ROUTER_ADVERTISEMENT,
        0, // code
        0,
        0,  // checksum
        64, // current hop limit for the clients
        0,  // flags: M = 0, O = 0 (no DHCPv6 to wait for)
    ];
    p.extend_from_slice(&cfg.router_lifetime.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // reachable time: unspecified
    p.extend_from_slice(&0u32.to_be_bytes()); // retrans timer: unspecified
    if let Some(net) = cfg.prefix {
        prefix_option(&mut p, net, 0xc0); // L and A
    }
    for net in &cfg.on_link {
        prefix_option(&mut p, *net, 0x80); // L only
    }
    p
}

/// A prefix information option (RFC 4861 §4.6.2), 4 × 8 bytes.
fn prefix_option(p: &mut Vec<u8>, net: Ipv6Net, flags: u8) {
    p.extend_from_slice(&[3, 4, net.prefix_len(), flags]);
    p.extend_from_slice(&86_400u32.to_be_bytes()); // valid lifetime
    p.extend_from_slice(&14_400u32.to_be_bytes()); // preferred lifetime
    p.extend_from_slice(&[0; 4]);
    p.extend_from_slice(&net.network().octets());
}

/// Whether an ICMPv6 message is a router solicitation.
pub fn is_router_solicitation(p: &[u8]) -> bool {
    p.len() >= 8 && p[0] == ROUTER_SOLICITATION && p[1] == 0
}

fn if_index(name: &str) -> Result<u32, RaError> {
    let none = || RaError::NoSuchInterface {
        interface: name.to_string(),
    };
    let c = CString::new(name).map_err(|_| none())?;
    // SAFETY: `c` is a valid NUL-terminated string for the whole call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 { Err(none()) } else { Ok(idx) }
}

/// The bound sender; [`RaSender::serve`] runs it.
pub struct RaSender {
    socket: AsyncFd<Socket>,
    ifindex: u32,
    packet: Vec<u8>,
    interval: Duration,
}

impl RaSender {
    /// Opens a raw ICMPv6 socket on the interface (hop limit 255 as RFC 4861
    /// requires) and joins all-routers to hear solicitations. Call it
    /// within a tokio runtime.
    pub fn bind(cfg: &RaConfig) -> Result<RaSender, RaError> {
        let ifindex = if_index(&cfg.interface)?;
        let set =
            |option, r: io::Result<()>| r.map_err(|source| RaError::SetOption { option, source });
        let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
            .map_err(RaError::Create)?;
        set(
            "SO_BINDTODEVICE",
            s.bind_device(Some(cfg.interface.as_bytes())),
        )?;
        set("IPV6_MULTICAST_HOPS", s.set_multicast_hops_v6(255))?;
        set("IPV6_UNICAST_HOPS", s.set_unicast_hops_v6(255))?;
        set("IPV6_MULTICAST_IF", s.set_multicast_if_v6(ifindex))?;
        set("IPV6_MULTICAST_LOOP", s.set_multicast_loop_v6(false))?;
        set(
            "IPV6_JOIN_GROUP",
            s.join_multicast_v6(&ALL_ROUTERS, ifindex),
        )?;
        set("O_NONBLOCK", s.set_nonblocking(true))?;
        // SAFETY: a socket2::Socket owns its descriptor, keeps it open until
        // dropped and always returns the same one from as_raw_fd.
        let socket =
            unsafe { AsyncFd::register(s) }.map_err(|e| RaError::Create(e.into_parts().1))?;
        Ok(RaSender {
            socket,
            ifindex,
            packet: advertisement(cfg),
            interval: cfg.interval,
        })
    }

    fn send(&self) {
        let to = SockAddr::from(SocketAddrV6::new(ALL_NODES, 0, 0, self.ifindex));
        match self.socket.get_ref().send_to(&self.packet, &to) {
            Ok(_) => tracing::debug!("router advertisement sent"),
            // No link-local address yet (no carrier, DAD): try next time.
            Err(e) => tracing::debug!(error = %e, "router advertisement not sent"),
        }
    }

    /// Advertises until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(self.interval);
        let mut last = tokio::time::Instant::now() - MIN_GAP;
        let mut buf = [0u8; 1500];
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.send();
                    last = tokio::time::Instant::now();
                }
                r = self.socket.readable() => {
                    let Ok(mut guard) = r else { continue };
                    match guard.try_io(|s| {
                        let mut sock: &Socket = s.get_ref();
                        sock.read(&mut buf)
                    }) {
                        Ok(Ok(n)) if is_router_solicitation(&buf[..n]) => {
                            if last.elapsed() >= MIN_GAP {
                                tracing::debug!("router solicitation: answering");
                                self.send();
                                last = tokio::time::Instant::now();
                            }
                        }
                        Ok(Ok(_)) | Err(_) => {}
                        Ok(Err(e)) => tracing::debug!(error = %e, "ICMPv6 receive failed"),
                    }
                }
                () = &mut shutdown => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_bytes() {
        let mut cfg = RaConfig::new("br0");
        assert_eq!(
            advertisement(&cfg),
            [134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        cfg.prefix = Some("fd00::/64".parse().unwrap());
        cfg.router_lifetime = 1800;
        let p = advertisement(&cfg);
        assert_eq!(p.len(), 16 + 32);
        assert_eq!(&p[6..8], &1800u16.to_be_bytes());
        assert_eq!(&p[16..20], &[3, 4, 64, 0xc0]);
        assert_eq!(&p[32..34], &[0xfd, 0]);
        assert!(p[34..48].iter().all(|&b| b == 0));

        // The storage prefix: on-link (L) but no SLAAC (A clear).
        cfg.on_link = vec!["fd00:5::/64".parse().unwrap()];
        let p = advertisement(&cfg);
        assert_eq!(p.len(), 16 + 32 + 32);
        assert_eq!(&p[48..52], &[3, 4, 64, 0x80]);
        assert_eq!(&p[64..68], &[0xfd, 0, 0, 5]);
    }

    #[test]
    fn solicitations() {
        assert!(is_router_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_router_solicitation(&[133, 0, 0]));
        assert!(!is_router_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]));
    }

    #[test]
    fn unknown_interface_is_named() {
        match RaSender::bind(&RaConfig::new("no-such-if0")) {
            Err(RaError::NoSuchInterface { interface }) => assert_eq!(interface, "no-such-if0"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("bound to a missing interface"),
        }
    }
}
