//! Per-VM DHCP (paper fig. 5 `dhcp`): one responder per VM NIC, on that
//! NIC's tap, that answers only the NIC's own MAC with the lease the brain
//! put in the resource (`network_interfaces[i].dhcp`).
//!
//! - [`NicLease::from_nic`] turns the resource into a checked lease, or
//!   `None` when the NIC has no `dhcp` block or no IPv4 address (then there
//!   is no responder).
//! - [`answer`] is the pure DHCP logic: one DHCP payload in, at most one
//!   reply out. [`answer_frame`] wraps it in Ethernet/IPv4/UDP both ways;
//!   it is what the socket loop calls, and it is property-tested never to
//!   panic and never to answer another MAC.
//! - [`serve`] owns an `AF_PACKET` socket bound to the tap (the tap has no
//!   IP address, so a UDP socket could neither receive the client's
//!   broadcasts reliably nor address a client that has no address yet) and
//!   runs until cancelled.
//!
//! There is no lease state: the answer is a pure function of the resource.
//! The design notes are in `docs/head.md`, "Per-VM DHCP".

mod frame;
mod packet;
mod socket;

use std::net::Ipv4Addr;

use bigv_pxe::{MacAddr, ParseMacError};
use bigv_spine::resource::NetworkInterface;
use ipnet::Ipv4Net;

pub use frame::{FrameIgnored, FrameReply, answer_frame};
pub use packet::{Destination, Ignored, Reply, answer};
pub use socket::serve;

/// Lease time given to every guest, seconds. Renewal (T1) at half, rebinding
/// (T2) at 7/8. The lease is static, so a short one costs only a renewal
/// every half hour per VM, and a changed address reaches the guest within
/// T1.
pub const LEASE_SECS: u32 = 3600;

/// What one NIC's responder hands out; built from the resource by
/// [`NicLease::from_nic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicLease {
    /// The only client answered (`chaddr` and the frame's source).
    pub mac: MacAddr,
    /// The first IPv4 address in `ips`.
    pub address: Ipv4Addr,
    /// `dhcp.network`: the subnet mask (option 1).
    pub network: Ipv4Net,
    /// `dhcp.router` (option 3).
    pub router: Ipv4Addr,
    /// `dhcp.hostname` (option 12).
    pub hostname: String,
    /// `dhcp.domain` (option 15); left out when empty.
    pub domain: Option<String>,
    /// Server identifier (option 54) and the IPv4 source of the replies.
    /// The router's address: it is on the guest's subnet, so a renewing
    /// client can unicast to it, and the responder sees every frame the
    /// guest sends on its tap whatever its destination.
    pub server_id: Ipv4Addr,
    /// Option 51, seconds.
    pub lease_secs: u32,
}

/// A NIC's `dhcp` block that cannot be served; each variant names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("mac: {0}")]
    Mac(#[source] ParseMacError),
    #[error("dhcp.network: {value:?} is not an IPv4 network in CIDR form (a.b.c.d/n)")]
    Network { value: String },
    #[error("dhcp.network: {value:?} has host bits set (the network is {network})")]
    NetworkHostBits { value: String, network: Ipv4Net },
    #[error("dhcp.network: /{prefix} leaves no room for a host and a router")]
    NetworkTooSmall { prefix: u8 },
    #[error("dhcp.router: {value:?} is not an IPv4 address")]
    Router { value: String },
    #[error("dhcp.router: {router} is not a host address in dhcp.network {network}")]
    RouterOutsideNetwork { router: Ipv4Addr, network: Ipv4Net },
    #[error("ips[{index}]: {address} is not a host address in dhcp.network {network}")]
    AddressOutsideNetwork {
        index: usize,
        address: Ipv4Addr,
        network: Ipv4Net,
    },
    #[error("ips[{index}]: {address} is also dhcp.router")]
    AddressIsRouter { index: usize, address: Ipv4Addr },
    #[error("dhcp.{field}: {value:?} {reason}")]
    Name {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// Whether `a` is a usable host address of `net` (not its network or
/// broadcast address, except in a /31).
fn is_host(net: &Ipv4Net, a: Ipv4Addr) -> bool {
    net.contains(&a) && (net.prefix_len() >= 31 || (a != net.network() && a != net.broadcast()))
}

/// DNS-ish names as they go into options 12 and 15: printable ASCII, no
/// spaces, at most 255 bytes (one option).
fn check_name(field: &'static str, value: &str, may_be_empty: bool) -> Result<(), LeaseError> {
    let reason = if value.is_empty() && !may_be_empty {
        Some("is empty")
    } else if value.len() > 255 {
        Some("is longer than 255 bytes")
    } else if !value.bytes().all(|b| b.is_ascii_graphic()) {
        Some("must be printable ASCII without spaces")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(LeaseError::Name {
            field,
            value: value.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

impl NicLease {
    /// The lease for `nic`, `Ok(None)` if it gets no DHCP (no `dhcp` block,
    /// or no IPv4 address in `ips`), or the first field that is wrong.
    pub fn from_nic(nic: &NetworkInterface) -> Result<Option<NicLease>, LeaseError> {
        let Some(dhcp) = &nic.dhcp else {
            return Ok(None);
        };
        let Some((index, address)) = nic
            .ips
            .iter()
            .enumerate()
            .find_map(|(i, ip)| Some((i, ip.parse::<Ipv4Addr>().ok()?)))
        else {
            return Ok(None);
        };
        let mac: MacAddr = nic.mac.parse().map_err(LeaseError::Mac)?;
        let network: Ipv4Net = dhcp.network.parse().map_err(|_| LeaseError::Network {
            value: dhcp.network.clone(),
        })?;
        if network != network.trunc() {
            return Err(LeaseError::NetworkHostBits {
                value: dhcp.network.clone(),
                network: network.trunc(),
            });
        }
        if network.prefix_len() > 30 {
            return Err(LeaseError::NetworkTooSmall {
                prefix: network.prefix_len(),
            });
        }
        let router: Ipv4Addr = dhcp.router.parse().map_err(|_| LeaseError::Router {
            value: dhcp.router.clone(),
        })?;
        if !is_host(&network, router) {
            return Err(LeaseError::RouterOutsideNetwork { router, network });
        }
        if !is_host(&network, address) {
            return Err(LeaseError::AddressOutsideNetwork {
                index,
                address,
                network,
            });
        }
        if address == router {
            return Err(LeaseError::AddressIsRouter { index, address });
        }
        check_name("hostname", &dhcp.hostname, false)?;
        check_name("domain", &dhcp.domain, true)?;
        Ok(Some(NicLease {
            mac,
            address,
            network,
            router,
            hostname: dhcp.hostname.clone(),
            domain: (!dhcp.domain.is_empty()).then(|| dhcp.domain.clone()),
            server_id: router,
            lease_secs: LEASE_SECS,
        }))
    }
}

/// Why [`serve`] stopped (other than being cancelled).
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("interface {ifname:?}: not found")]
    NoInterface {
        ifname: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {ifname:?}: {op} on its packet socket")]
    Socket {
        ifname: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {ifname:?} went away")]
    InterfaceGone { ifname: String },
}

#[cfg(test)]
mod tests {
    use bigv_spine::resource::DhcpConfig;

    use super::*;

    pub(crate) fn nic() -> NetworkInterface {
        NetworkInterface {
            mac: "fe:ff:00:00:00:01".into(),
            vlan_id: 1,
            model: "virtio".into(),
            ips: vec!["2001:db8::10".into(), "198.51.100.20".into()],
            dhcp: Some(DhcpConfig {
                network: "198.51.100.0/25".into(),
                router: "198.51.100.1".into(),
                hostname: "web1".into(),
                domain: "default.alice.bigv.test".into(),
            }),
        }
    }

    #[test]
    fn the_lease_is_the_resource() {
        let l = NicLease::from_nic(&nic()).unwrap().unwrap();
        assert_eq!(
            l,
            NicLease {
                mac: MacAddr([0xfe, 0xff, 0, 0, 0, 1]),
                address: "198.51.100.20".parse().unwrap(),
                network: "198.51.100.0/25".parse().unwrap(),
                router: "198.51.100.1".parse().unwrap(),
                hostname: "web1".into(),
                domain: Some("default.alice.bigv.test".into()),
                server_id: "198.51.100.1".parse().unwrap(),
                lease_secs: LEASE_SECS,
            }
        );
        let mut n = nic();
        n.dhcp.as_mut().unwrap().domain = String::new();
        assert_eq!(NicLease::from_nic(&n).unwrap().unwrap().domain, None);
    }

    #[test]
    fn no_dhcp_block_or_no_ipv4_means_no_responder() {
        let mut n = nic();
        n.dhcp = None;
        assert_eq!(NicLease::from_nic(&n), Ok(None));
        let mut n = nic();
        n.ips = vec!["2001:db8::10".into()];
        assert_eq!(NicLease::from_nic(&n), Ok(None));
        n.ips.clear();
        assert_eq!(NicLease::from_nic(&n), Ok(None));
    }

    #[test]
    fn bad_fields_are_refused_by_name() {
        type Break = fn(&mut NetworkInterface);
        let cases: Vec<(Break, &str)> = vec![
            (|n| n.mac = "fe:ff:00".into(), "mac: "),
            (
                |n| n.dhcp.as_mut().unwrap().network = "198.51.100.0".into(),
                "dhcp.network: \"198.51.100.0\" is not",
            ),
            (
                |n| n.dhcp.as_mut().unwrap().network = "2001:db8::/64".into(),
                "dhcp.network: ",
            ),
            (
                |n| n.dhcp.as_mut().unwrap().network = "198.51.100.7/25".into(),
                "dhcp.network: \"198.51.100.7/25\" has host bits set (the network is 198.51.100.0/25)",
            ),
            (
                |n| n.dhcp.as_mut().unwrap().network = "198.51.100.20/31".into(),
                "dhcp.network: /31",
            ),
            (
                |n| n.dhcp.as_mut().unwrap().router = "gw".into(),
                "dhcp.router: \"gw\"",
            ),
            (
                |n| n.dhcp.as_mut().unwrap().router = "198.51.100.200".into(),
                "dhcp.router: 198.51.100.200 is not a host address in dhcp.network 198.51.100.0/25",
            ),
            (
                |n| n.dhcp.as_mut().unwrap().router = "198.51.100.0".into(),
                "dhcp.router: 198.51.100.0 is not",
            ),
            (
                |n| n.ips[1] = "198.51.100.127".into(),
                "ips[1]: 198.51.100.127 is not a host address",
            ),
            (
                |n| n.ips[1] = "198.51.100.1".into(),
                "ips[1]: 198.51.100.1 is also dhcp.router",
            ),
            (
                |n| n.dhcp.as_mut().unwrap().hostname = String::new(),
                "dhcp.hostname: \"\" is empty",
            ),
            (
                |n| n.dhcp.as_mut().unwrap().hostname = "web 1".into(),
                "dhcp.hostname: \"web 1\" must be printable",
            ),
            (
                |n| n.dhcp.as_mut().unwrap().domain = "a".repeat(256),
                "dhcp.domain: ",
            ),
        ];
        for (break_it, expected) in cases {
            let mut n = nic();
            break_it(&mut n);
            let e = NicLease::from_nic(&n).expect_err(expected).to_string();
            assert!(
                e.starts_with(expected),
                "{e:?} does not start with {expected:?}"
            );
        }
    }
}
