//! Each disc's own address on the storage LAN, added to the storage
//! interface when the disc is served and removed when it goes (or moves
//! to another tail during migration). Done with rtnetlink.
//!
//! Addresses are added as host routes (`/128`, `/32`) with `IFA_F_NODAD`:
//! the brain allocates them uniquely, and duplicate address detection
//! would otherwise keep a new IPv6 address "tentative" (unbindable) for a
//! second or more, stalling every handover by that long.
//!
//! A new disc address is announced (`bigv_announce`: an unsolicited
//! neighbour advertisement, or a gratuitous ARP for IPv4): when a disc
//! moves between tails its address moves too, and heads that cached the
//! old tail's MAC would otherwise keep sending their NBD reconnects there
//! until neighbour unreachability detection gives up (a TCP SYN
//! retransmit ~63 s later, in the whole-system disc migration). The
//! kernel announces nothing for `IFA_F_NODAD` addresses, so the agent
//! does.

use std::net::IpAddr;

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
                if let Err(error) = bigv_announce::announce(&m.iface, m.index, addr) {
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

fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}

#[cfg(test)]
mod tests {
    use super::*;

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
