//! The in-memory lease table. The DHCP task owns it; the brain persists
//! what it is told through [`crate::BootPolicy::lease_changed`] and hands
//! the bound leases back at start-up.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::MacAddr;

/// A bound lease, as persisted by the brain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub mac: MacAddr,
    pub address: Ipv4Addr,
    /// Expiry, seconds since the Unix epoch.
    pub expires: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Offered, waiting for the client's REQUEST; held for a short time.
    Offered,
    Bound,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    address: Ipv4Addr,
    expires: u64,
    state: State,
}

/// Leases by MAC, with a reverse index by address, and declined addresses.
#[derive(Debug, Default)]
pub struct LeaseTable {
    by_mac: HashMap<MacAddr, Slot>,
    by_addr: HashMap<Ipv4Addr, MacAddr>,
    /// Addresses a client declined (found in use), out of the pool until.
    declined: HashMap<Ipv4Addr, u64>,
}

impl LeaseTable {
    pub fn new(bound: impl IntoIterator<Item = Lease>) -> LeaseTable {
        let mut t = LeaseTable::default();
        for l in bound {
            t.set(l.mac, l.address, l.expires, State::Bound);
        }
        t
    }

    fn set(&mut self, mac: MacAddr, address: Ipv4Addr, expires: u64, state: State) {
        if let Some(old) = self.by_mac.insert(
            mac,
            Slot {
                address,
                expires,
                state,
            },
        ) && old.address != address
        {
            self.by_addr.remove(&old.address);
        }
        if let Some(prev) = self.by_addr.insert(address, mac)
            && prev != mac
        {
            self.by_mac.remove(&prev);
        }
    }

    /// The MAC holding `address` now (an unexpired offer or lease), if any.
    pub fn holder(&self, address: Ipv4Addr, now: u64) -> Option<MacAddr> {
        let mac = self.by_addr.get(&address)?;
        let slot = self.by_mac.get(mac)?;
        (slot.expires > now).then_some(*mac)
    }

    /// The address this MAC holds or last held (even expired).
    pub fn address_of(&self, mac: MacAddr) -> Option<Ipv4Addr> {
        self.by_mac.get(&mac).map(|s| s.address)
    }

    /// The unexpired bound lease of this MAC.
    pub fn bound(&self, mac: MacAddr, now: u64) -> Option<Lease> {
        let s = self.by_mac.get(&mac)?;
        (s.state == State::Bound && s.expires > now).then_some(Lease {
            mac,
            address: s.address,
            expires: s.expires,
        })
    }

    /// Whether `address` may be given to `mac`: nobody else holds it and
    /// nobody declined it recently.
    pub fn available(&self, address: Ipv4Addr, mac: MacAddr, now: u64) -> bool {
        if self
            .declined
            .get(&address)
            .is_some_and(|&until| until > now)
        {
            return false;
        }
        match self.holder(address, now) {
            Some(m) => m == mac,
            None => true,
        }
    }

    /// Records an offer held until `expires`. A bound lease of the same MAC
    /// and address stays bound.
    pub fn offer(&mut self, mac: MacAddr, address: Ipv4Addr, expires: u64, now: u64) {
        if let Some(l) = self.bound(mac, now)
            && l.address == address
        {
            return;
        }
        self.set(mac, address, expires, State::Offered);
    }

    /// Binds a lease.
    pub fn bind(&mut self, mac: MacAddr, address: Ipv4Addr, expires: u64) -> Lease {
        self.set(mac, address, expires, State::Bound);
        Lease {
            mac,
            address,
            expires,
        }
    }

    /// Drops whatever this MAC holds; returns the lease it had.
    pub fn release(&mut self, mac: MacAddr) -> Option<Lease> {
        let s = self.by_mac.remove(&mac)?;
        self.by_addr.remove(&s.address);
        Some(Lease {
            mac,
            address: s.address,
            expires: s.expires,
        })
    }

    /// Forgets an offer this MAC did not take (it chose another server).
    pub fn withdraw_offer(&mut self, mac: MacAddr) {
        if self
            .by_mac
            .get(&mac)
            .is_some_and(|s| s.state == State::Offered)
        {
            self.release(mac);
        }
    }

    /// Keeps `address` out of the pool until `until`.
    pub fn decline(&mut self, mac: MacAddr, address: Ipv4Addr, until: u64) {
        if self.by_addr.get(&address) == Some(&mac) {
            self.release(mac);
        }
        self.declined.insert(address, until);
    }

    /// Every unexpired bound lease, sorted by address (for status pages).
    pub fn bound_leases(&self, now: u64) -> Vec<Lease> {
        let mut v: Vec<Lease> = self
            .by_mac
            .keys()
            .filter_map(|m| self.bound(*m, now))
            .collect();
        v.sort_by_key(|l| l.address);
        v
    }
}
