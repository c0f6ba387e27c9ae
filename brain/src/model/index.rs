//! Lookups derived from the records, kept in step with them so that the
//! API's per-request work does not grow with the cluster: a VM by group
//! and name, a VM's discs and NICs, whether an address or a MAC is taken,
//! and the first free address of a range.
//!
//! The indexes are never stored: [`Model::load`] builds them, and every
//! change after that goes through [`Model::insert`] and [`Model::remove`]
//! (which [`super::Db`]'s writes use). Code that fills a `Model`'s maps
//! directly (tests) calls [`Model::reindex`] afterwards; a debug build
//! notices if it did not.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use super::{Disc, DiscId, GroupId, IpRecord, Model, Nic, NicId, Record, Vm, VmId};

/// A set of numbers kept as maximal runs (`start → end`, inclusive), so
/// finding the first number not in it is one lookup however many are in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runs {
    runs: BTreeMap<u128, u128>,
    len: usize,
}

impl Runs {
    /// The run holding `n`, if any.
    fn run_of(&self, n: u128) -> Option<(u128, u128)> {
        self.runs
            .range(..=n)
            .next_back()
            .filter(|(_, end)| **end >= n)
            .map(|(s, e)| (*s, *e))
    }

    pub fn contains(&self, n: u128) -> bool {
        self.run_of(n).is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `n`; false if it was there already.
    pub fn insert(&mut self, n: u128) -> bool {
        if self.contains(n) {
            return false;
        }
        let mut start = n;
        let mut end = n;
        if let Some((s, e)) = self.runs.range(..n).next_back()
            && e.checked_add(1) == Some(n)
        {
            start = *s;
        }
        if let Some(after) = n.checked_add(1)
            && let Some(e) = self.runs.remove(&after)
        {
            end = e;
        }
        self.runs.insert(start, end);
        self.len += 1;
        true
    }

    /// Takes `n` out; false if it was not there.
    pub fn remove(&mut self, n: u128) -> bool {
        let Some((start, end)) = self.run_of(n) else {
            return false;
        };
        self.runs.remove(&start);
        if start < n {
            self.runs.insert(start, n - 1);
        }
        if n < end {
            self.runs.insert(n + 1, end);
        }
        self.len -= 1;
        true
    }

    /// The first number at or after `n` that is not in the set (`None`
    /// only past `u128::MAX`).
    pub fn next_free(&self, n: u128) -> Option<u128> {
        match self.run_of(n) {
            Some((_, end)) => end.checked_add(1),
            None => Some(n),
        }
    }

    /// The first number at or after `n` that is in the set.
    pub fn next_taken(&self, n: u128) -> Option<u128> {
        if self.contains(n) {
            return Some(n);
        }
        self.runs.range(n..).next().map(|(s, _)| *s)
    }
}

/// Addresses, IPv4 and IPv6 apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressSet {
    v4: Runs,
    v6: Runs,
}

impl AddressSet {
    pub fn family(&self, v6: bool) -> &Runs {
        if v6 { &self.v6 } else { &self.v4 }
    }

    pub fn contains(&self, addr: &IpAddr) -> bool {
        let (v6, n) = number(addr);
        self.family(v6).contains(n)
    }

    pub fn insert(&mut self, addr: &IpAddr) -> bool {
        let (v6, n) = number(addr);
        if v6 { &mut self.v6 } else { &mut self.v4 }.insert(n)
    }

    pub fn remove(&mut self, addr: &IpAddr) -> bool {
        let (v6, n) = number(addr);
        if v6 { &mut self.v6 } else { &mut self.v4 }.remove(n)
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether the address is IPv6, and its value.
pub fn number(addr: &IpAddr) -> (bool, u128) {
    match addr {
        IpAddr::V4(a) => (false, u128::from(u32::from(*a))),
        IpAddr::V6(a) => (true, u128::from(*a)),
    }
}

/// The derived lookups. See the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Indexes {
    /// Every address an [`IpRecord`] holds.
    pub addresses: AddressSet,
    /// IpRecord keys that are not addresses (never written by the API,
    /// but a restored dump could hold one): counted so `len` checks agree.
    unparsed_ips: usize,
    /// MAC → how many NICs have it (one, unless imported data says more).
    macs: HashMap<String, usize>,
    /// (group, name) → the VMs of that name there, soft-deleted ones too.
    vms_by_name: BTreeMap<(GroupId, String), BTreeSet<VmId>>,
    discs_by_vm: HashMap<VmId, BTreeSet<DiscId>>,
    nics_by_vm: HashMap<VmId, BTreeSet<NicId>>,
    /// What placement needs (`scheduler::Facts::gather`, run by every
    /// request that may start a VM): VMs that want to run by the head the
    /// model places them on, and those not placed yet; disc sizes by pool,
    /// and discs not placed yet.
    placed_on: HashMap<String, Placed>,
    unplaced_vms: BTreeSet<VmId>,
    /// Pool → (MiB, discs).
    allocated_in: HashMap<String, (u64, usize)>,
    unplaced_discs: BTreeSet<DiscId>,
    /// Record counts when last indexed, to catch maps changed behind the
    /// index's back (debug builds).
    seen: [usize; 4],
}

/// The VMs wanting to run that the model places on one head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placed {
    /// MiB, summed.
    pub memory: u64,
    pub vms: BTreeSet<VmId>,
}

/// Whether the reconciler will try to run it (as `api::power::wants_to_run`).
fn wants_to_run(vm: &Vm) -> bool {
    !vm.deleted && (vm.power_on || vm.autoreboot_on)
}

fn downcast<R: Record, T: 'static>(r: Option<&R>) -> Option<&T> {
    r.and_then(|r| (r as &dyn Any).downcast_ref::<T>())
}

impl Indexes {
    /// Follows one record changing from `old` to `new` (either absent).
    fn changed<R: Record>(&mut self, old: Option<&R>, new: Option<&R>) {
        if let Some(old) = downcast::<R, IpRecord>(old) {
            self.ip(old, false);
        }
        if let Some(new) = downcast::<R, IpRecord>(new) {
            self.ip(new, true);
        }
        if let Some(old) = downcast::<R, Nic>(old) {
            self.nic(old, false);
        }
        if let Some(new) = downcast::<R, Nic>(new) {
            self.nic(new, true);
        }
        if let Some(old) = downcast::<R, Vm>(old) {
            self.vm(old, false);
        }
        if let Some(new) = downcast::<R, Vm>(new) {
            self.vm(new, true);
        }
        if let Some(old) = downcast::<R, Disc>(old) {
            self.disc(old, false);
        }
        if let Some(new) = downcast::<R, Disc>(new) {
            self.disc(new, true);
        }
    }

    fn ip(&mut self, r: &IpRecord, add: bool) {
        match (r.address.parse::<IpAddr>(), add) {
            (Ok(a), true) => {
                self.addresses.insert(&a);
            }
            (Ok(a), false) => {
                self.addresses.remove(&a);
            }
            (Err(_), true) => self.unparsed_ips += 1,
            (Err(_), false) => self.unparsed_ips -= 1,
        }
    }

    fn nic(&mut self, n: &Nic, add: bool) {
        if add {
            *self.macs.entry(n.mac.clone()).or_default() += 1;
            self.nics_by_vm.entry(n.vm_id).or_default().insert(n.id);
        } else {
            if let Some(count) = self.macs.get_mut(&n.mac) {
                *count -= 1;
                if *count == 0 {
                    self.macs.remove(&n.mac);
                }
            }
            remove_from(&mut self.nics_by_vm, n.vm_id, &n.id);
        }
    }

    fn vm(&mut self, v: &Vm, add: bool) {
        let key = (v.group_id, v.name.clone());
        if add {
            self.vms_by_name.entry(key).or_default().insert(v.id);
        } else if let Some(ids) = self.vms_by_name.get_mut(&key) {
            ids.remove(&v.id);
            if ids.is_empty() {
                self.vms_by_name.remove(&key);
            }
        }
        if !wants_to_run(v) {
            return;
        }
        match (&v.head, add) {
            (None, true) => {
                self.unplaced_vms.insert(v.id);
            }
            (None, false) => {
                self.unplaced_vms.remove(&v.id);
            }
            (Some(head), true) => {
                let placed = self.placed_on.entry(head.clone()).or_default();
                placed.memory += v.memory;
                placed.vms.insert(v.id);
            }
            (Some(head), false) => {
                if let Some(placed) = self.placed_on.get_mut(head) {
                    placed.memory -= v.memory;
                    placed.vms.remove(&v.id);
                    if placed.vms.is_empty() {
                        self.placed_on.remove(head);
                    }
                }
            }
        }
    }

    fn disc(&mut self, d: &Disc, add: bool) {
        if add {
            self.discs_by_vm.entry(d.vm_id).or_default().insert(d.id);
        } else {
            remove_from(&mut self.discs_by_vm, d.vm_id, &d.id);
        }
        match (&d.storage_pool, add) {
            (None, true) => {
                self.unplaced_discs.insert(d.id);
            }
            (None, false) => {
                self.unplaced_discs.remove(&d.id);
            }
            (Some(pool), true) => {
                let (size, discs) = self.allocated_in.entry(pool.clone()).or_default();
                *size += d.size;
                *discs += 1;
            }
            (Some(pool), false) => {
                if let Some((size, discs)) = self.allocated_in.get_mut(pool) {
                    *size -= d.size;
                    *discs -= 1;
                    if *discs == 0 {
                        self.allocated_in.remove(pool);
                    }
                }
            }
        }
    }
}

fn remove_from<K: std::hash::Hash + Eq, V: Ord>(map: &mut HashMap<K, BTreeSet<V>>, key: K, v: &V) {
    if let Some(set) = map.get_mut(&key) {
        set.remove(v);
        if set.is_empty() {
            map.remove(&key);
        }
    }
}

impl Model {
    /// Puts a record in its map and keeps the indexes in step.
    pub fn insert<R: Record>(&mut self, record: R) {
        let old = R::map(self).insert(record.key(), record.clone());
        self.index.changed(old.as_ref(), Some(&record));
        self.index_seen();
    }

    /// Takes a record out of its map and the indexes.
    pub fn remove<R: Record>(&mut self, key: &R::Key) {
        let old = R::map(self).remove::<R::Key>(key);
        self.index.changed(old.as_ref(), None);
        self.index_seen();
    }

    /// Rebuilds every index from the maps.
    pub fn reindex(&mut self) {
        let mut index = Indexes::default();
        for r in self.ips.values() {
            index.ip(r, true);
        }
        for n in self.nics.values() {
            index.nic(n, true);
        }
        for v in self.vms.values() {
            index.vm(v, true);
        }
        for d in self.discs.values() {
            index.disc(d, true);
        }
        self.index = index;
        self.index_seen();
    }

    fn index_seen(&mut self) {
        self.index.seen = self.counts();
    }

    fn counts(&self) -> [usize; 4] {
        [
            self.ips.len(),
            self.nics.len(),
            self.vms.len(),
            self.discs.len(),
        ]
    }

    /// The indexes; in debug builds, checks no map was changed without
    /// them (see the module documentation).
    pub fn index(&self) -> &Indexes {
        debug_assert_eq!(
            self.index.seen,
            self.counts(),
            "the model's maps changed without Model::insert/remove; call Model::reindex"
        );
        &self.index
    }

    /// Whether any NIC has this MAC.
    pub fn mac_taken(&self, mac: &str) -> bool {
        self.index().macs.contains_key(mac)
    }

    /// The group's VMs called `name`, soft-deleted ones too, by id.
    pub fn vms_named(&self, group: GroupId, name: &str) -> impl Iterator<Item = &Vm> {
        self.index()
            .vms_by_name
            .get(&(group, name.to_owned()))
            .into_iter()
            .flatten()
            .filter_map(|id| self.vm(*id))
    }

    /// The VMs wanting to run that the model places on `head`.
    pub fn placed_on(&self, head: &str) -> Option<&Placed> {
        self.index().placed_on.get(head)
    }

    /// VMs that want to run and have no head yet, by id.
    pub fn unplaced_vms(&self) -> impl Iterator<Item = &Vm> {
        self.index()
            .unplaced_vms
            .iter()
            .filter_map(|id| self.vm(*id))
    }

    /// MiB of disc sizes the model puts in `pool`.
    pub fn allocated_in(&self, pool: &str) -> u64 {
        self.index()
            .allocated_in
            .get(pool)
            .map_or(0, |(size, _)| *size)
    }

    /// Discs with no pool yet, by id.
    pub fn unplaced_discs(&self) -> impl Iterator<Item = &Disc> {
        self.index()
            .unplaced_discs
            .iter()
            .filter_map(|id| self.disc(*id))
    }

    pub(super) fn disc_ids_of(&self, vm: VmId) -> impl Iterator<Item = DiscId> + '_ {
        self.index()
            .discs_by_vm
            .get(&vm)
            .into_iter()
            .flatten()
            .copied()
    }

    pub(super) fn nic_ids_of(&self, vm: VmId) -> impl Iterator<Item = NicId> + '_ {
        self.index()
            .nics_by_vm
            .get(&vm)
            .into_iter()
            .flatten()
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_split_and_find_the_first_gap_in_one_step() {
        let mut r = Runs::default();
        for n in [5, 7, 6, 3, 4] {
            assert!(r.insert(n));
        }
        assert!(!r.insert(6), "already in");
        assert_eq!(r.runs, BTreeMap::from([(3, 7)]), "merged into one run");
        assert_eq!(r.len(), 5);
        assert_eq!(r.next_free(3), Some(8));
        assert_eq!(r.next_free(2), Some(2));
        assert_eq!(r.next_taken(0), Some(3));
        assert_eq!(r.next_taken(8), None);
        assert!(r.remove(5));
        assert!(!r.remove(5));
        assert_eq!(r.runs, BTreeMap::from([(3, 4), (6, 7)]));
        assert_eq!(r.next_free(3), Some(5));
        assert_eq!(r.next_taken(5), Some(6));
        assert!(r.remove(3) && r.remove(7));
        assert_eq!(r.runs, BTreeMap::from([(4, 4), (6, 6)]));
        assert_eq!(r.len(), 2);
        assert!(r.insert(u128::MAX));
        assert_eq!(r.next_free(u128::MAX), None);
    }

    fn vm(id: u64, group: u64, name: &str) -> Vm {
        Vm {
            id: VmId(id),
            group_id: GroupId(group),
            name: name.into(),
            cores: 1,
            memory: 1024,
            power_on: false,
            autoreboot_on: false,
            cdrom_url: None,
            hardware_profile: "virtio2013".into(),
            hardware_profile_locked: false,
            keymap: None,
            zone_name: None,
            deleted: false,
            deleted_at: None,
            management_address: None,
            head: None,
            generation: 0,
            signal: None,
            anti_affinity_group: None,
            last_imaged_with: None,
            imager_options: None,
            created_at: 0,
        }
    }

    #[test]
    fn lookups_follow_renames_moves_deletes_and_a_rebuild_agrees() {
        let mut m = Model::default();
        m.insert(vm(1, 1, "web1"));
        m.insert(vm(2, 1, "web2"));
        let mut gone = vm(3, 1, "web1");
        gone.deleted = true;
        m.insert(gone);
        assert_eq!(
            m.vm_named_live(GroupId(1), "web1").map(|v| v.id),
            Some(VmId(1))
        );
        assert_eq!(m.vms_named(GroupId(1), "web1").count(), 2);
        // Rename and move: the old key goes, the new one answers.
        m.insert(vm(1, 2, "db1"));
        assert!(m.vm_named_live(GroupId(1), "web1").is_none());
        assert_eq!(m.vm_named(GroupId(1), "web1").map(|v| v.id), Some(VmId(3)));
        assert_eq!(m.vm_named(GroupId(2), "db1").map(|v| v.id), Some(VmId(1)));
        m.remove::<Vm>(&2);
        assert!(m.vm_named(GroupId(1), "web2").is_none());
        let nic = Nic {
            id: NicId(9),
            vm_id: VmId(1),
            label: None,
            mac: "fe:ff:00:00:00:01".into(),
            vlan_num: 1,
            ips: vec![],
            extra_ips: BTreeMap::new(),
        };
        m.insert(nic.clone());
        assert!(m.mac_taken("fe:ff:00:00:00:01"));
        assert_eq!(m.nics_of(VmId(1)).count(), 1);
        let before = format!("{:?}", m.index().vms_by_name);
        m.reindex();
        assert_eq!(format!("{:?}", m.index().vms_by_name), before);
        m.remove::<Nic>(&9);
        assert!(!m.mac_taken("fe:ff:00:00:00:01"));
        assert_eq!(m.nics_of(VmId(1)).count(), 0);
    }

    /// Whatever sequence of writes reaches a model, its indexes equal the
    /// ones rebuilt from scratch: VMs placed, moved, resized, powered off,
    /// soft-deleted and removed; discs placed, moved and removed; NICs and
    /// addresses coming and going.
    #[test]
    fn indexes_kept_in_step_equal_indexes_rebuilt() {
        let mut m = Model::default();
        // A small deterministic generator (no dependency needed).
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for step in 0..5_000 {
            let id = next(12) + 1;
            match next(6) {
                0 | 1 => {
                    let mut v = vm(id, next(3) + 1, &format!("vm{}", next(10)));
                    v.memory = 256 * (next(4) + 1);
                    v.power_on = next(3) > 0;
                    v.autoreboot_on = next(2) > 0;
                    v.deleted = next(8) == 0;
                    v.head = (next(3) > 0).then(|| format!("head-{}", next(4)));
                    m.insert(v);
                }
                2 => {
                    let d = Disc {
                        id: DiscId(id),
                        vm_id: VmId(next(12) + 1),
                        label: "disc-1".into(),
                        size: 1024 * (next(3) + 1),
                        storage_grade: "sata".into(),
                        storage_pool: (next(3) > 0).then(|| format!("pool-{}", next(3))),
                        address: None,
                        generation: 0,
                        iops_limit: None,
                        template: None,
                    };
                    m.insert(d);
                }
                3 => {
                    m.insert(Nic {
                        id: NicId(id),
                        vm_id: VmId(next(12) + 1),
                        label: None,
                        mac: format!("fe:ff:00:00:00:{:02x}", next(30)),
                        vlan_num: 1,
                        ips: vec![],
                        extra_ips: BTreeMap::new(),
                    });
                    m.insert(IpRecord {
                        address: format!("10.0.0.{}", next(60)),
                        range_id: super::super::IpRangeId(1),
                        nic_id: None,
                        rdns: None,
                    });
                }
                4 => {
                    m.remove::<Vm>(&id);
                    m.remove::<Disc>(&(next(12) + 1));
                }
                _ => {
                    m.remove::<Nic>(&id);
                    m.remove::<IpRecord>(&format!("10.0.0.{}", next(60)));
                }
            }
            if step % 50 == 0 {
                let kept = m.index().clone();
                m.reindex();
                assert_eq!(kept, *m.index(), "after step {step}");
            }
        }
        let kept = m.index().clone();
        m.reindex();
        assert_eq!(kept, *m.index());
        assert!(!m.index().placed_on.is_empty() && !m.index().allocated_in.is_empty());
    }
}
