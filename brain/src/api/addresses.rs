//! Handing out MAC and IP addresses (bigv-api.md §8).
//!
//! An address is taken while an [`IpRecord`] names it and free otherwise,
//! so freeing is deleting the record. Within a range the network address
//! and the first host (the router) are never handed out, nor an IPv4
//! broadcast address. Which ranges serve what is decided by the VLAN the
//! range is on:
//! - *public* (VMs' primary and extra addresses): VLANs whose `usage_type`
//!   is `public`, and ranges on a VLAN number with no VLAN record at all,
//!   so a cluster set up with ranges alone works;
//! - *management* (consoles): VLANs whose `usage_type` is `management`;
//! - anything else is *private*: only addresses a customer asks for by
//!   name in `vm_create`'s `ips` come from there.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{AddressSet, IpRange, IpRangeId, Model};

/// The VLAN a NIC goes on when no range could give it an address.
pub const DEFAULT_VLAN: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn parse(s: &str) -> Option<Family> {
        match s.to_ascii_lowercase().as_str() {
            "ipv4" | "v4" | "4" => Some(Family::V4),
            "ipv6" | "v6" | "6" => Some(Family::V6),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usage {
    Public,
    Management,
    Private,
}

/// An address chosen for a NIC, with the range it came from.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub address: IpAddr,
    pub range_id: IpRangeId,
    pub vlan_num: u32,
}

/// The primary addresses of a new NIC.
#[derive(Debug, Clone)]
pub struct Primary {
    pub vlan_num: u32,
    pub addresses: Vec<Chosen>,
}

/// First and last assignable address of a range, as integers.
fn bounds(net: &IpNet) -> Option<(u128, u128)> {
    let (network, last) = match net {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            // The broadcast address is not for hosts.
            u128::from(u32::from(n.broadcast())).checked_sub(1)?,
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    };
    // Skip the network address and the router (the first host).
    let first = network + 2;
    (first <= last).then_some((first, last))
}

fn addr_of(net: &IpNet, n: u128) -> IpAddr {
    match net {
        IpNet::V4(_) => IpAddr::from(std::net::Ipv4Addr::from(n as u32)),
        IpNet::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(n)),
    }
}

fn as_int(addr: &IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

/// Allocates addresses against the model plus whatever it has already
/// handed out itself (one allocator per write). The model's address index
/// keeps taken addresses as runs, so finding a free one costs a few
/// lookups however full the range is (it used to copy and scan every
/// address in the cluster per request).
pub struct Allocator<'m> {
    model: &'m Model,
    /// Addresses and MACs handed out by this allocator, not yet stored.
    taken: AddressSet,
    macs: BTreeSet<String>,
    /// Run lookups made so far (for tests of the allocator's cost).
    steps: usize,
}

impl<'m> Allocator<'m> {
    pub fn new(model: &'m Model) -> Self {
        Allocator {
            model,
            taken: AddressSet::default(),
            macs: BTreeSet::new(),
            steps: 0,
        }
    }

    /// Run lookups made so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    fn is_taken(&self, addr: &IpAddr) -> bool {
        self.taken.contains(addr) || self.model.index().addresses.contains(addr)
    }

    /// A MAC no NIC in the cluster has: `fe:ff:` and four random bytes.
    pub fn mac(&mut self) -> String {
        loop {
            let b: [u8; 4] = rand::random();
            let mac = format!("fe:ff:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3]);
            if !self.model.mac_taken(&mac) && self.macs.insert(mac.clone()) {
                return mac;
            }
        }
    }

    fn usage(&self, range: &IpRange) -> Usage {
        match self.model.vlans.values().find(|v| v.num == range.vlan_num) {
            None => Usage::Public,
            Some(v) if v.usage_type == "public" => Usage::Public,
            Some(v) if v.usage_type == "management" => Usage::Management,
            Some(_) => Usage::Private,
        }
    }

    /// Ranges of `usage` and `family` serving `zone`, in id order.
    fn ranges(
        &self,
        usage: Usage,
        family: Family,
        zone: Option<&str>,
    ) -> Vec<(&'m IpRange, IpNet)> {
        self.model
            .ip_ranges
            .values()
            .filter(|r| self.usage(r) == usage)
            .filter(|r| r.zones.is_empty() || zone.is_none_or(|z| r.zones.iter().any(|rz| rz == z)))
            .filter_map(|r| Some((r, r.spec.parse::<IpNet>().ok()?)))
            .filter(|(_, net)| {
                matches!(
                    (net, family),
                    (IpNet::V4(_), Family::V4) | (IpNet::V6(_), Family::V6)
                )
            })
            .collect()
    }

    /// The first `count` consecutive free addresses of `range`, taken.
    /// Each step jumps a whole run of taken addresses, so a range filled
    /// from the bottom costs one step however many it holds.
    fn take_run(&mut self, range: &IpRange, net: &IpNet, count: usize) -> Option<Vec<Chosen>> {
        let (first, last) = bounds(net)?;
        let count = u128::try_from(count).ok().filter(|c| *c > 0)?;
        let v6 = matches!(net, IpNet::V6(_));
        let mut at = first;
        loop {
            // The first address at or after `at` that neither the model
            // nor this allocator holds.
            loop {
                self.steps += 1;
                let stored = self.model.index().addresses.family(v6).next_free(at)?;
                let here = self.taken.family(v6).next_free(stored)?;
                if here == at {
                    break;
                }
                at = here;
            }
            let end = at.checked_add(count - 1)?;
            if end > last {
                return None;
            }
            // Free up to the next taken address of either.
            let next_taken = [
                self.model.index().addresses.family(v6).next_taken(at),
                self.taken.family(v6).next_taken(at),
            ]
            .into_iter()
            .flatten()
            .min();
            match next_taken {
                Some(t) if t <= end => at = t,
                _ => {
                    let run: Vec<IpAddr> = (at..=end).map(|n| addr_of(net, n)).collect();
                    for a in &run {
                        self.taken.insert(a);
                    }
                    return Some(
                        run.into_iter()
                            .map(|address| Chosen {
                                address,
                                range_id: range.id,
                                vlan_num: range.vlan_num,
                            })
                            .collect(),
                    );
                }
            }
        }
    }

    /// One free address from the first range of the kind that has one.
    fn take_one(
        &mut self,
        usage: Usage,
        family: Family,
        zone: Option<&str>,
        vlan: Option<u32>,
    ) -> Option<Chosen> {
        for (range, net) in self.ranges(usage, family, zone) {
            if vlan.is_some_and(|v| v != range.vlan_num) {
                continue;
            }
            if let Some(mut got) = self.take_run(range, &net, 1) {
                return got.pop();
            }
        }
        None
    }

    /// A new NIC's primary addresses: one public IPv4 and, on the same
    /// VLAN, one IPv6 where a range has room. A cluster out of addresses
    /// gives none rather than refusing the VM; extra addresses can be
    /// added later.
    pub fn primary(&mut self, zone: Option<&str>) -> Primary {
        let v4 = self.take_one(Usage::Public, Family::V4, zone, None);
        let v6 = self.take_one(
            Usage::Public,
            Family::V6,
            zone,
            v4.as_ref().map(|c| c.vlan_num),
        );
        let vlan_num = v4
            .as_ref()
            .or(v6.as_ref())
            .map(|c| c.vlan_num)
            .or_else(|| {
                self.ranges(Usage::Public, Family::V4, zone)
                    .first()
                    .map(|(r, _)| r.vlan_num)
            })
            .unwrap_or(DEFAULT_VLAN);
        Primary {
            vlan_num,
            addresses: v4.into_iter().chain(v6).collect(),
        }
    }

    /// A console address from a management range, if the cluster has one.
    pub fn management(&mut self, zone: Option<&str>) -> Option<Chosen> {
        self.take_one(Usage::Management, Family::V4, zone, None)
            .or_else(|| self.take_one(Usage::Management, Family::V6, zone, None))
    }

    /// `count` extra addresses of `family` on `vlan` (consecutive ones
    /// when `contiguous`), or how many are free if too few are.
    pub fn extras(
        &mut self,
        family: Family,
        vlan: u32,
        zone: Option<&str>,
        count: usize,
        contiguous: bool,
    ) -> Result<Vec<Chosen>, String> {
        let ranges: Vec<(&IpRange, IpNet)> = self
            .ranges(Usage::Public, family, zone)
            .into_iter()
            .chain(self.ranges(Usage::Private, family, zone))
            .filter(|(r, _)| r.vlan_num == vlan)
            .collect();
        if contiguous {
            for (range, net) in &ranges {
                if let Some(run) = self.take_run(range, net, count) {
                    return Ok(run);
                }
            }
            return Err(format!(
                "no range on this server's network has {count} consecutive free {} addresses",
                family.name()
            ));
        }
        let mut got = vec![];
        for (range, net) in &ranges {
            while got.len() < count {
                match self.take_run(range, net, 1) {
                    Some(mut one) => got.append(&mut one),
                    None => break,
                }
            }
        }
        if got.len() < count {
            return Err(format!(
                "only {} free {} addresses are left on this server's network",
                got.len(),
                family.name()
            ));
        }
        Ok(got)
    }

    /// Claims an address a customer asked for by name (vm_create `ips`):
    /// it must be a free host address of a private range.
    pub fn claim(&mut self, address: IpAddr) -> Result<Chosen, String> {
        let family = Family::of(&address);
        let found = self
            .ranges(Usage::Private, family, None)
            .into_iter()
            .find(|(_, net)| net.contains(&address));
        let Some((range, net)) = found else {
            return Err("is not in any private network of this cluster".into());
        };
        let inside = bounds(&net).is_some_and(|(first, last)| {
            let n = as_int(&address);
            first <= n && n <= last
        });
        if !inside {
            return Err(format!(
                "is the network, router or broadcast address of {}",
                range.spec
            ));
        }
        if self.is_taken(&address) {
            return Err("is already in use".into());
        }
        self.taken.insert(&address);
        Ok(Chosen {
            address,
            range_id: range.id,
            vlan_num: range.vlan_num,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IpRecord, Vlan, VlanId};

    fn range(id: u64, spec: &str, vlan: u32) -> IpRange {
        IpRange {
            id: IpRangeId(id),
            spec: spec.into(),
            vlan_num: vlan,
            zones: vec![],
        }
    }

    #[test]
    fn skips_network_router_broadcast_and_taken_addresses() {
        let mut model = Model::default();
        model.ip_ranges.insert(1, range(1, "192.0.2.0/29", 7));
        model.ip_ranges.insert(2, range(2, "2001:db8::/64", 7));
        model.insert(IpRecord {
            address: "192.0.2.3".into(),
            range_id: IpRangeId(1),
            nic_id: None,
            rdns: None,
        });
        let mut a = Allocator::new(&model);
        let p = a.primary(None);
        assert_eq!(p.vlan_num, 7);
        let got: Vec<String> = p.addresses.iter().map(|c| c.address.to_string()).collect();
        assert_eq!(got, ["192.0.2.2", "2001:db8::2"]);
        let more = a.extras(Family::V4, 7, None, 3, false).unwrap();
        let more: Vec<String> = more.iter().map(|c| c.address.to_string()).collect();
        assert_eq!(more, ["192.0.2.4", "192.0.2.5", "192.0.2.6"]);
        // .7 is the broadcast address: the range is now full.
        let err = a.extras(Family::V4, 7, None, 1, false).unwrap_err();
        assert!(err.contains("only 0 free"), "{err}");
        assert!(a.primary(None).addresses[0].address.is_ipv6());
    }

    #[test]
    fn contiguous_runs_private_claims_and_vlan_usage() {
        let mut model = Model::default();
        model.vlans.insert(
            1,
            Vlan {
                id: VlanId(1),
                num: 20,
                usage_type: "private".into(),
            },
        );
        model.ip_ranges.insert(1, range(1, "10.0.0.0/24", 20));
        let mut a = Allocator::new(&model);
        assert!(
            a.primary(None).addresses.is_empty(),
            "private is not public"
        );
        assert!(a.claim("10.0.0.1".parse().unwrap()).is_err(), "router");
        let c = a.claim("10.0.0.5".parse().unwrap()).unwrap();
        assert_eq!(c.vlan_num, 20);
        assert!(a.claim("10.0.0.5".parse().unwrap()).is_err(), "taken");
        assert!(a.claim("192.168.0.5".parse().unwrap()).is_err(), "no range");
        let run = a.extras(Family::V4, 20, None, 4, true).unwrap();
        let run: Vec<String> = run.iter().map(|c| c.address.to_string()).collect();
        assert_eq!(run, ["10.0.0.6", "10.0.0.7", "10.0.0.8", "10.0.0.9"]);
        let mac = a.mac();
        assert!(mac.starts_with("fe:ff:") && mac.len() == 17, "{mac}");
    }

    /// The allocator's cost must not grow with the addresses in use: a
    /// range filled from the bottom (as VMs fill it) answers in the same
    /// few run lookups at 100 addresses taken as at 20,000.
    #[test]
    fn a_free_address_costs_the_same_few_steps_however_full_the_range_is() {
        let steps_with = |taken: u32| {
            let mut model = Model::default();
            model.ip_ranges.insert(1, range(1, "10.128.0.0/14", 1));
            let base = u32::from(std::net::Ipv4Addr::new(10, 128, 0, 2));
            for n in 0..taken {
                model.insert(IpRecord {
                    address: std::net::Ipv4Addr::from(base + n).to_string(),
                    range_id: IpRangeId(1),
                    nic_id: None,
                    rdns: None,
                });
            }
            let mut a = Allocator::new(&model);
            let got = a.primary(None).addresses;
            let expected = std::net::Ipv4Addr::from(base + taken);
            assert_eq!(got[0].address, IpAddr::from(expected));
            let steps = a.steps();
            // A second one in the same write skips the first as well.
            let next = a.primary(None).addresses;
            assert_eq!(
                next[0].address,
                IpAddr::from(std::net::Ipv4Addr::from(base + taken + 1))
            );
            steps
        };
        let small = steps_with(100);
        let large = steps_with(20_000);
        assert_eq!(small, large, "steps grew with the addresses taken");
        assert!(large <= 3, "{large} steps for one address");
    }

    #[test]
    fn freed_addresses_are_reused_and_runs_skip_what_is_taken() {
        let mut model = Model::default();
        model.ip_ranges.insert(1, range(1, "10.0.0.0/24", 1));
        let record = |a: &str| IpRecord {
            address: a.into(),
            range_id: IpRangeId(1),
            nic_id: None,
            rdns: None,
        };
        for n in 2..=20 {
            model.insert(record(&format!("10.0.0.{n}")));
        }
        model.remove::<IpRecord>(&"10.0.0.7".to_string());
        model.remove::<IpRecord>(&"10.0.0.12".to_string());
        model.remove::<IpRecord>(&"10.0.0.13".to_string());
        let mut a = Allocator::new(&model);
        let one = a.extras(Family::V4, 1, None, 1, false).unwrap();
        assert_eq!(one[0].address.to_string(), "10.0.0.7", "the lowest hole");
        let run = a.extras(Family::V4, 1, None, 2, true).unwrap();
        let run: Vec<String> = run.iter().map(|c| c.address.to_string()).collect();
        assert_eq!(run, ["10.0.0.12", "10.0.0.13"]);
        let run = a.extras(Family::V4, 1, None, 3, true).unwrap();
        let run: Vec<String> = run.iter().map(|c| c.address.to_string()).collect();
        assert_eq!(run, ["10.0.0.21", "10.0.0.22", "10.0.0.23"]);
    }
}
