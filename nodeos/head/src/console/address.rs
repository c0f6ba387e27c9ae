//! A VM's management address on the head's management interface, while
//! its console runs there (`console_interface` in the head's config; off
//! unless set). Added as a host route (`/32`, `/128`) with `IFA_F_NODAD`
//! so it is usable at once, with rtnetlink, and announced to the LAN
//! (gratuitous ARP, unsolicited neighbour advertisement: `bigv_announce`)
//! because it moves between heads with its VM, as the tail does for disc
//! addresses (`nodeos/tail/src/addresses.rs`).

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};

#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("opening a netlink socket")]
    Connect(#[source] std::io::Error),
    #[error("management interface {0:?} not found")]
    NoInterface(String, #[source] Option<rtnetlink::Error>),
    #[error("adding {0} to {1}")]
    Add(IpAddr, String, #[source] rtnetlink::Error),
    #[error("removing {0} from {1}")]
    Remove(IpAddr, String, #[source] rtnetlink::Error),
}

/// One interface's addresses, through a netlink connection of its own.
pub struct Interface {
    name: String,
    index: u32,
    handle: rtnetlink::Handle,
}

fn errno(e: &rtnetlink::Error) -> Option<nix::errno::Errno> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(nix::errno::Errno::from_raw(-m.raw_code())),
        _ => None,
    }
}

impl Interface {
    /// `name` in the calling thread's network namespace (spawns the
    /// netlink connection on the current runtime).
    pub async fn open(name: &str) -> Result<Interface, AddressError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(AddressError::Connect)?;
        tokio::spawn(connection);
        let link = handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await;
        match link {
            Ok(Some(link)) => Ok(Interface {
                name: name.to_owned(),
                index: link.header.index,
                handle,
            }),
            Ok(None) => Err(AddressError::NoInterface(name.to_owned(), None)),
            Err(e) => Err(AddressError::NoInterface(name.to_owned(), Some(e))),
        }
    }

    /// Adds `addr` (already there is fine).
    pub async fn add(&self, addr: IpAddr) -> Result<(), AddressError> {
        let prefix = if addr.is_ipv6() { 128 } else { 32 };
        let mut req = self.handle.address().add(self.index, addr, prefix);
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        match req.execute().await {
            Ok(()) => {
                tracing::info!(%addr, iface = self.name, "added a management address");
                // After a migration the address was on another head a
                // moment ago: tell the LAN, or SSH clients keep knocking
                // there until their neighbour entry goes stale.
                if let Err(error) = bigv_announce::announce(&self.name, self.index, addr) {
                    tracing::warn!(%addr, iface = self.name, %error, "announcing the management address");
                }
                Ok(())
            }
            Err(e) if errno(&e) == Some(nix::errno::Errno::EEXIST) => Ok(()),
            Err(e) => Err(AddressError::Add(addr, self.name.clone(), e)),
        }
    }

    /// Removes `addr` (already gone is fine).
    pub async fn remove(&self, addr: IpAddr) -> Result<(), AddressError> {
        let err = |e| AddressError::Remove(addr, self.name.clone(), e);
        let mut found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .set_address_filter(addr)
            .execute();
        while let Some(msg) = found.try_next().await.map_err(err)? {
            match self.handle.address().del(msg).execute().await {
                Ok(()) => tracing::info!(%addr, iface = self.name, "removed a management address"),
                Err(e) if errno(&e) == Some(nix::errno::Errno::EADDRNOTAVAIL) => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(())
    }

    /// Whether `addr` is on the interface.
    pub async fn has(&self, addr: IpAddr) -> Result<bool, AddressError> {
        let err = |e| AddressError::Remove(addr, self.name.clone(), e);
        let mut found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .set_address_filter(addr)
            .execute();
        Ok(found.try_next().await.map_err(err)?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_addresses_come_and_go() {
        bigv_testkit::in_netns_with_bridge("mgmt0", || async {
            let err = Interface::open("nope0").await.err().unwrap();
            assert!(err.to_string().contains("\"nope0\" not found"), "{err}");
            let i = Interface::open("mgmt0").await.unwrap();
            for addr in ["10.7.0.9", "fd00:7::9"] {
                let addr: IpAddr = addr.parse().unwrap();
                assert!(!i.has(addr).await.unwrap());
                i.add(addr).await.unwrap();
                i.add(addr).await.unwrap(); // idempotent
                assert!(i.has(addr).await.unwrap());
                // Bindable at once (no DAD).
                drop(tokio::net::TcpListener::bind((addr, 22)).await.unwrap());
                i.remove(addr).await.unwrap();
                i.remove(addr).await.unwrap(); // idempotent
                assert!(!i.has(addr).await.unwrap());
            }
        });
    }
}
