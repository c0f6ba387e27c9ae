//! Each disc's own address on the storage LAN, added to the storage
//! interface when the disc is served and removed when it goes (or moves
//! to another tail during migration). Done with rtnetlink.
//!
//! Addresses are added as host routes (`/128`, `/32`) with `IFA_F_NODAD`:
//! the brain allocates them uniquely, and duplicate address detection
//! would otherwise keep a new IPv6 address "tentative" (unbindable) for a
//! second or more, stalling every handover by that long.
//!
//! A new IPv6 disc address is announced with an unsolicited neighbour
//! advertisement ([`neighbour_advertisement`]): when a disc moves between
//! tails its address moves too, and heads that cached the old tail's MAC
//! would otherwise keep sending their NBD reconnects there until neighbour
//! unreachability detection gives up (a TCP SYN retransmit ~63 s later, in
//! the whole-system disc migration). The kernel announces nothing for
//! `IFA_F_NODAD` addresses, so the agent does.

use std::net::{IpAddr, Ipv6Addr, SocketAddrV6};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};

#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("opening a netlink socket")]
    Connect(#[source] std::io::Error),
    #[error("storage interface {name:?} not found")]
    NoInterface {
        name: String,
        #[source]
        source: Option<rtnetlink::Error>,
    },
    #[error("adding {addr} to {iface}")]
    Add {
        addr: IpAddr,
        iface: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("removing {addr} from {iface}")]
    Remove {
        addr: IpAddr,
        iface: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("listing addresses on {iface}")]
    List {
        iface: String,
        #[source]
        source: rtnetlink::Error,
    },
}

/// Adds and removes disc addresses on one interface, or does nothing when
/// unmanaged (tests on loopback, or an operator who assigns addresses
/// another way).
#[derive(Clone)]
pub struct Addresses {
    managed: Option<Managed>,
}

#[derive(Clone)]
struct Managed {
    iface: String,
    index: u32,
    handle: rtnetlink::Handle,
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

impl Addresses {
    pub fn unmanaged() -> Self {
        Addresses { managed: None }
    }

    /// Manages addresses on `iface` (in the calling thread's network
    /// namespace). Spawns the netlink connection on the current runtime.
    pub async fn on_interface(iface: &str) -> Result<Self, AddressError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(AddressError::Connect)?;
        tokio::spawn(connection);
        let link = handle
            .link()
            .get()
            .match_name(iface.to_owned())
            .execute()
            .try_next()
            .await;
        let index = match link {
            Ok(Some(link)) => link.header.index,
            Ok(None) => {
                return Err(AddressError::NoInterface {
                    name: iface.into(),
                    source: None,
                });
            }
            Err(e) => {
                return Err(AddressError::NoInterface {
                    name: iface.into(),
                    source: Some(e),
                });
            }
        };
        Ok(Addresses {
            managed: Some(Managed {
                iface: iface.into(),
                index,
                handle,
            }),
        })
    }

    pub fn is_managed(&self) -> bool {
        self.managed.is_some()
    }

    /// Adds `addr` (already present is fine).
    pub async fn add(&self, addr: IpAddr) -> Result<(), AddressError> {
        let Some(m) = &self.managed else {
            return Ok(());
        };
        let prefix = if addr.is_ipv6() { 128 } else { 32 };
        let mut req = m.handle.address().add(m.index, addr, prefix);
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        match req.execute().await {
            Ok(()) => {
                tracing::info!(%addr, iface = m.iface, "added disc address");
                if let IpAddr::V6(v6) = addr
                    && let Err(error) = announce(&m.iface, m.index, v6)
                {
                    // Neighbours then find the address by themselves,
                    // later: worth a warning, not a failure.
                    tracing::warn!(%addr, iface = m.iface, %error, "announcing the disc address");
                }
                Ok(())
            }
            Err(e) if errno_of(&e) == Some(libc_eexist()) => Ok(()),
            Err(source) => Err(AddressError::Add {
                addr,
                iface: m.iface.clone(),
                source,
            }),
        }
    }

    /// Removes `addr` (already absent is fine).
    pub async fn remove(&self, addr: IpAddr) -> Result<(), AddressError> {
        let Some(m) = &self.managed else {
            return Ok(());
        };
        let mut found = m
            .handle
            .address()
            .get()
            .set_link_index_filter(m.index)
            .set_address_filter(addr)
            .execute();
        while let Some(msg) = found
            .try_next()
            .await
            .map_err(|source| AddressError::Remove {
                addr,
                iface: m.iface.clone(),
                source,
            })?
        {
            match m.handle.address().del(msg).execute().await {
                Ok(()) => tracing::info!(%addr, iface = m.iface, "removed disc address"),
                Err(e) if errno_of(&e) == Some(nix::errno::Errno::EADDRNOTAVAIL as i32) => {}
                Err(source) => {
                    return Err(AddressError::Remove {
                        addr,
                        iface: m.iface.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// The addresses on the interface.
    pub async fn list(&self) -> Result<Vec<IpAddr>, AddressError> {
        let Some(m) = &self.managed else {
            return Ok(vec![]);
        };
        let mut stream = m
            .handle
            .address()
            .get()
            .set_link_index_filter(m.index)
            .execute();
        let mut out = vec![];
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|source| AddressError::List {
                iface: m.iface.clone(),
                source,
            })?
        {
            for a in msg.attributes {
                if let AddressAttribute::Address(ip) = a {
                    out.push(ip);
                }
            }
        }
        Ok(out)
    }
}

/// An unsolicited neighbour advertisement (RFC 4861 4.4, 7.2.6) for
/// `target` at link-layer address `mac`: override flag set, not solicited,
/// not a router, with the target link-layer address option. The checksum
/// is left 0: the kernel fills it in on an ICMPv6 raw socket.
pub fn neighbour_advertisement(target: Ipv6Addr, mac: [u8; 6]) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0] = 136; // type: neighbour advertisement
    p[4] = 0x20; // flags: O (override)
    p[8..24].copy_from_slice(&target.octets());
    p[24] = 2; // option: target link-layer address
    p[25] = 1; // its length, in units of 8 bytes
    p[26..32].copy_from_slice(&mac);
    p
}

/// Sends [`neighbour_advertisement`] for `addr` to all nodes (ff02::1) on
/// interface `iface` (index `index`), from `addr`, hop limit 255.
fn announce(iface: &str, index: u32, addr: Ipv6Addr) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))?;
    let mac = parse_mac(text.trim()).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{iface}'s MAC {text:?}"),
        )
    })?;
    let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    sock.set_multicast_hops_v6(255)?;
    sock.set_multicast_if_v6(index)?;
    sock.bind(&SockAddr::from(SocketAddrV6::new(addr, 0, 0, 0)))?;
    let all_nodes = SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, index);
    sock.send_to(
        &neighbour_advertisement(addr, mac),
        &SockAddr::from(all_nodes),
    )?;
    Ok(())
}

/// `52:54:00:8e:02:01` → its 6 bytes.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_neighbour_advertisement_overrides_and_names_our_mac() {
        let mac = parse_mac("52:54:00:8e:02:01").unwrap();
        assert_eq!(mac, [0x52, 0x54, 0, 0x8e, 2, 1]);
        assert_eq!(parse_mac("52:54:00:8e:02"), None);
        assert_eq!(parse_mac("52:54:00:8e:02:01:07"), None);
        let target: Ipv6Addr = "fd00:5::1".parse().unwrap();
        let p = neighbour_advertisement(target, mac);
        assert_eq!(p[0], 136, "type");
        assert_eq!(p[1], 0, "code");
        assert_eq!(p[4], 0x20, "override only: not a router, not solicited");
        assert_eq!(&p[8..24], &target.octets());
        assert_eq!(&p[24..26], &[2, 1], "target link-layer address, 8 bytes");
        assert_eq!(&p[26..], &mac);
    }

    #[test]
    fn addresses_come_and_go_on_the_storage_interface() {
        bigv_testkit::in_netns_with_bridge("stor0", || async {
            let err = Addresses::on_interface("nope0").await.err().unwrap();
            assert!(err.to_string().contains("\"nope0\" not found"), "{err}");

            let a = Addresses::on_interface("stor0").await.unwrap();
            let v6: IpAddr = "fd00:5::42".parse().unwrap();
            let v4: IpAddr = "10.9.0.42".parse().unwrap();
            a.add(v6).await.unwrap();
            a.add(v6).await.unwrap(); // idempotent
            a.add(v4).await.unwrap();
            let listed = a.list().await.unwrap();
            assert!(listed.contains(&v6) && listed.contains(&v4), "{listed:?}");
            // NODAD: bindable at once, as the NBD listener needs.
            let l = tokio::net::TcpListener::bind((v6, 10809)).await.unwrap();
            drop(l);
            a.remove(v6).await.unwrap();
            a.remove(v6).await.unwrap(); // idempotent
            assert!(!a.list().await.unwrap().contains(&v6));
            assert!(tokio::net::TcpListener::bind((v6, 10809)).await.is_err());
            a.remove(v4).await.unwrap();
        });
    }
}
