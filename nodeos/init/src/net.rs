//! The boot NIC: find it (by `bigv.bootif`, else the first non-loopback
//! link), bring it and `lo` up, run the DHCP client over a UDP socket
//! bound to it, and apply the lease with rtnetlink. And the storage NIC,
//! where there is a storage LAN of its own: up, with the node's storage
//! address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout};

use crate::cmdline::{Mac, StorageLan};
use crate::dhcp::{self, Client, Event, Lease};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("opening a netlink socket")]
    Connect(#[source] std::io::Error),
    #[error("no network interface with MAC {0} (bigv.bootif) appeared within {1:?}")]
    NoBootif(Mac, Duration),
    #[error("no network interface other than lo appeared within {0:?}")]
    NoNic(Duration),
    #[error("no network interface {0} (bigv.storage) appeared within {1:?}")]
    NoStorageNic(String, Duration),
    #[error("DHCP socket on {iface}")]
    Socket {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no DHCP lease on {iface} within {waited:?}")]
    NoLease { iface: String, waited: Duration },
}

/// The boot interface.
#[derive(Debug, Clone)]
pub struct Nic {
    pub index: u32,
    pub name: String,
    pub mac: Mac,
}

pub struct Net {
    handle: rtnetlink::Handle,
}

fn nic_of(link: &LinkMessage) -> Option<Nic> {
    let mut name = None;
    let mut mac = None;
    for a in &link.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(b) if b.len() == 6 => {
                mac = Some(Mac(b.as_slice().try_into().ok()?));
            }
            _ => {}
        }
    }
    Some(Nic {
        index: link.header.index,
        name: name?,
        mac: mac?,
    })
}

impl Net {
    pub fn connect() -> Result<Net, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
        tokio::spawn(conn);
        Ok(Net { handle })
    }

    async fn links(&self) -> Result<Vec<LinkMessage>, NetError> {
        Ok(self.handle.link().get().execute().try_collect().await?)
    }

    /// Waits for the boot NIC to appear (the driver probes it after its
    /// module loads).
    pub async fn find_boot_nic(
        &self,
        bootif: Option<Mac>,
        wait: Duration,
    ) -> Result<Nic, NetError> {
        let deadline = Instant::now() + wait;
        loop {
            let links = self.links().await?;
            let found = links.iter().filter_map(|l| {
                let loopback = l.header.flags.contains(LinkFlags::Loopback);
                (!loopback).then(|| nic_of(l)).flatten()
            });
            let nic = match bootif {
                Some(want) => found.into_iter().find(|n| n.mac == want),
                None => found.min_by_key(|n| n.index),
            };
            if let Some(nic) = nic {
                return Ok(nic);
            }
            if Instant::now() >= deadline {
                return Err(match bootif {
                    Some(m) => NetError::NoBootif(m, wait),
                    None => NetError::NoNic(wait),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The storage NIC up with this node's storage address
    /// ([`StorageLan::address`], a /64, so the rest of the storage LAN
    /// and every disc address is on-link there). Added without duplicate
    /// address detection: the address is the MAC's, so unique, and DAD
    /// would leave it unusable for a second or more.
    pub async fn storage_up(
        &self,
        lan: &StorageLan,
        wait: Duration,
    ) -> Result<(Nic, Ipv6Addr), NetError> {
        let deadline = Instant::now() + wait;
        let nic = loop {
            let found = self
                .links()
                .await?
                .iter()
                .filter_map(nic_of)
                .find(|n| n.name == lan.interface);
            if let Some(nic) = found {
                break nic;
            }
            if Instant::now() >= deadline {
                return Err(NetError::NoStorageNic(lan.interface.clone(), wait));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        self.up(nic.index).await?;
        let address = lan.address(nic.mac);
        let mut req = self
            .handle
            .address()
            .add(nic.index, IpAddr::V6(address), 64)
            .replace();
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        req.execute().await?;
        Ok((nic, address))
    }

    pub async fn up(&self, index: u32) -> Result<(), NetError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await?;
        Ok(())
    }

    /// `lo` up (the kernel then adds 127.0.0.1/8 itself).
    pub async fn loopback_up(&self) -> Result<(), NetError> {
        let links = self.links().await?;
        for l in links {
            if l.header.flags.contains(LinkFlags::Loopback) {
                self.up(l.header.index).await?;
            }
        }
        Ok(())
    }

    /// Adds the leased address and the default route (both replacing
    /// what was there: a renewal may re-apply them).
    pub async fn apply(&self, nic: &Nic, lease: &Lease) -> Result<(), NetError> {
        self.handle
            .address()
            .add(nic.index, IpAddr::V4(lease.address), lease.prefix_len)
            .replace()
            .execute()
            .await?;
        if let Some(gw) = lease.router {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .output_interface(nic.index)
                .gateway(gw)
                .build();
            self.handle.route().add(route).replace().execute().await?;
        }
        Ok(())
    }
}

/// A UDP socket on port 68 bound to the boot NIC, able to broadcast.
pub fn dhcp_socket(iface: &str) -> Result<UdpSocket, NetError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| NetError::Socket {
        iface: iface.into(),
        source,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    s.bind_device(Some(iface.as_bytes())).map_err(err)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, dhcp::CLIENT_PORT)).into())
        .map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

const BROADCAST: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), dhcp::SERVER_PORT);

/// Sends `packet` to `to`, then feeds replies to `client` until one is an
/// event other than `Ignored` or `wait` runs out (`None`).
async fn exchange(
    sock: &UdpSocket,
    client: &mut Client,
    packet: &[u8],
    to: SocketAddr,
    wait: Duration,
) -> std::io::Result<Option<Event>> {
    sock.send_to(packet, to).await?;
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(got) = timeout(left, sock.recv_from(&mut buf)).await else {
            return Ok(None);
        };
        let (n, from) = got?;
        match client.handle(&buf[..n]) {
            Event::Ignored(why) => tracing::debug!(%from, why, "DHCP packet ignored"),
            event => return Ok(Some(event)),
        }
    }
}

/// DISCOVER … ACK, retransmitting after 1, 2, 4, 4 … s, for at most
/// `give_up`.
pub async fn obtain_lease(
    sock: &UdpSocket,
    client: &mut Client,
    iface: &str,
    give_up: Duration,
) -> Result<Lease, NetError> {
    let started = Instant::now();
    let mut wait = Duration::from_secs(1);
    let io = |source| NetError::Socket {
        iface: iface.into(),
        source,
    };
    while started.elapsed() < give_up {
        let discover = client.discover(rand::random());
        tracing::info!(
            iface,
            xid = format_args!("{:#x}", client.xid()),
            "DHCP discover"
        );
        let mut event = exchange(sock, client, &discover, BROADCAST, wait)
            .await
            .map_err(io)?;
        // Taken an offer: REQUEST, retransmitted a few times.
        let mut tries = 0;
        while let Some(Event::Request(req)) = &event {
            if tries == 3 {
                event = None;
                break;
            }
            tries += 1;
            let req = req.clone();
            event = match exchange(sock, client, &req, BROADCAST, wait)
                .await
                .map_err(io)?
            {
                None => Some(Event::Request(req)),
                other => other,
            };
        }
        match event {
            Some(Event::Bound(lease)) => return Ok(lease),
            Some(Event::Nak) => tracing::warn!(iface, "DHCP NAK; starting over"),
            _ => {}
        }
        wait = (wait * 2).min(Duration::from_secs(4));
    }
    Err(NetError::NoLease {
        iface: iface.into(),
        waited: give_up,
    })
}

/// Keeps the lease: renews at T1 (unicast to the server, then broadcast)
/// and re-applies what the server answers. If nobody answers the node
/// keeps its address (a diskless node has nowhere better to be) and tries
/// again a minute later.
pub async fn keep_lease(net: Net, nic: Nic, sock: UdpSocket, mut client: Client) {
    loop {
        let Some(lease) = client.lease().cloned() else {
            return;
        };
        tokio::time::sleep(Duration::from_secs(lease.renew_after_secs())).await;
        let mut renewed = false;
        for to in [
            SocketAddr::new(IpAddr::V4(lease.server), dhcp::SERVER_PORT),
            BROADCAST,
        ] {
            let Some(req) = client.renew(rand::random()) else {
                return;
            };
            match exchange(&sock, &mut client, &req, to, Duration::from_secs(5)).await {
                Ok(Some(Event::Bound(new))) => {
                    if let Err(e) = net.apply(&nic, &new).await {
                        tracing::warn!(error = %e, "re-applying the renewed lease");
                    }
                    tracing::info!(address = %new.address, secs = new.lease_secs, "DHCP lease renewed");
                    renewed = true;
                    break;
                }
                Ok(Some(Event::Nak)) => {
                    tracing::error!(address = %lease.address, "DHCP server refused our renewal; keeping the address");
                    return;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "DHCP renewal"),
            }
        }
        if !renewed {
            tracing::warn!(address = %lease.address, "DHCP renewal unanswered; keeping the address");
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
}

/// The first usable global IPv6 address of `iface` in the contents of
/// `/proc/net/if_inet6` (`ADDR IFINDEX PREFIXLEN SCOPE FLAGS NAME`):
/// scope global (0x00), not tentative (0x40), deprecated (0x20) or
/// DAD-failed (0x08).
pub fn global_ipv6_in(if_inet6: &str, iface: &str) -> Option<std::net::Ipv6Addr> {
    if_inet6.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 6 || f[5] != iface || f[0].len() != 32 {
            return None;
        }
        let scope = u8::from_str_radix(f[3], 16).ok()?;
        let flags = u32::from_str_radix(f[4], 16).ok()?;
        if scope != 0 || flags & (0x40 | 0x20 | 0x08) != 0 {
            return None;
        }
        u128::from_str_radix(f[0], 16)
            .ok()
            .map(std::net::Ipv6Addr::from)
    })
}

/// Waits up to `limit` for the kernel to autoconfigure (SLAAC, from the
/// brain's router advertisements) a global IPv6 address on `iface`.
/// `None` when none came: a boot LAN without an advertised prefix.
pub async fn wait_global_ipv6(iface: &str, limit: Duration) -> Option<std::net::Ipv6Addr> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let table = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
        if let Some(a) = global_ipv6_in(&table, iface) {
            return Some(a);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod ipv6_tests {
    use super::*;

    #[test]
    fn picks_the_settled_global_address_of_the_interface() {
        let table = "\
fe80000000000000505400fffe8e0001 02 40 20 80     eth0
fd000000000000005054fffffe8e0009 02 40 00 40     eth0
fd000000000000005054fffffe8e0001 03 40 00 00     eth1
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000005054fffffe8e0002 02 40 00 00     eth0
";
        assert_eq!(
            global_ipv6_in(table, "eth0"),
            Some("fd00::5054:ffff:fe8e:2".parse().unwrap())
        );
        assert_eq!(
            global_ipv6_in(table, "eth1"),
            Some("fd00::5054:ffff:fe8e:1".parse().unwrap())
        );
        assert_eq!(global_ipv6_in(table, "lo"), None);
        assert_eq!(global_ipv6_in("", "eth0"), None);
    }
}
