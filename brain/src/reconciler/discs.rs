//! Discs: a pool and a storage address for each, the disc created on the
//! pool's tail, and its access control list naming only the head its VM is
//! placed on (empty when the VM is placed nowhere: nobody may connect).
//!
//! The ACL is what makes restarting a VM elsewhere safe (BRIEF §3
//! decision 4): a VM is started on a head only once every one of its discs
//! reports an ACL of exactly that head (`ready_for`), so the old head has
//! lost access before the new one gets it.
//!
//! Storage addresses: each disc gets `fd00:5::/64` with its id as the
//! interface identifier (disc 42 → `fd00:5::2a`). Ids are never reused, so
//! addresses are unique without bookkeeping, and the address stays with
//! the disc wherever it is served from. Heads reach it at
//! `nbd:[<address>]:10809`.

use std::net::Ipv6Addr;

use bigv_spine::resource::DiscSpec;
use bigv_spine::{Resource, ResourceValue};

use crate::model::{Disc, DiscId, OperationKind, OperationState, VmId};
use crate::scheduler::disc_resource;

use super::orders::Action;
use super::pass::Pass;
use super::snapshot::{ReportedDisc, Snapshot};

/// The storage LAN prefix disc addresses come from.
const STORAGE_PREFIX: u128 = 0xfd00_0005_0000_0000_0000_0000_0000_0000;

/// The storage prefix, for the boot LAN's router advertisements: where
/// the boot LAN is also the storage LAN, nodes learn that disc addresses
/// are on-link from them (docs/storage.md, "Addresses").
pub fn storage_prefix() -> ipnet::Ipv6Net {
    ipnet::Ipv6Net::new(Ipv6Addr::from(STORAGE_PREFIX), 64).expect("a /64 is a valid prefix")
}

/// The port tails serve NBD on.
pub const NBD_PORT: u16 = 10809;

/// A disc's own address on the storage LAN (see the module docs).
pub fn storage_address(id: DiscId) -> String {
    Ipv6Addr::from(STORAGE_PREFIX | u128::from(id.0)).to_string()
}

/// How a head's qemu reaches a disc.
pub fn nbd_url(address: &str) -> String {
    format!("nbd:[{address}]:{NBD_PORT}")
}

/// Gives every disc of an existing VM a pool and an address.
pub(super) fn place(p: &mut Pass<'_>) {
    let model = p.model;
    for disc in model.discs.values() {
        if (disc.storage_pool.is_some() && disc.address.is_some()) || model.vm(disc.vm_id).is_none()
        {
            continue;
        }
        if disc.storage_pool.is_none() {
            let facts = p.facts();
            match facts.pick_pool(&disc.storage_grade, disc.size, &[]) {
                Ok(pool) => {
                    facts.reserve_pool(&pool, disc.size);
                    tracing::info!(disc = disc.id.0, vm = disc.vm_id.0, %pool, "disc placed");
                    p.recall.unplaced_discs.remove(&disc.id);
                    p.disc_mut(disc.id).storage_pool = Some(pool);
                }
                Err(e) => {
                    if p.recall.unplaced_discs.get(&disc.id) != Some(&e.reason) {
                        tracing::warn!(disc = disc.id.0, vm = disc.vm_id.0, reason = %e.reason, "cannot place disc");
                        p.recall.unplaced_discs.insert(disc.id, e.reason);
                    }
                    continue;
                }
            }
        }
        if disc.address.is_none() {
            p.disc_mut(disc.id).address = Some(storage_address(disc.id));
        }
    }
}

/// The ACL a disc should have: the storage address of the head its VM is
/// placed on, or nobody (empty); during a live migration's handover, the
/// destination head's as well. `None` when a head's address is not known
/// (a head that never declared one and is not connected): then the ACL is
/// left as it is.
fn desired_acl(p: &Pass<'_>, disc: &Disc) -> Option<Vec<String>> {
    let Some(head) = p.vm(disc.vm_id).and_then(|v| v.head.as_deref()) else {
        return Some(vec![]);
    };
    let mut acl = vec![p.node_address(head)?.to_owned()];
    if let Some(dest) = p.vm_handover.get(&disc.vm_id) {
        acl.push(p.node_address(dest)?.to_owned());
    }
    Some(acl)
}

/// The desired ACL (nobody when a head's address is unknown).
pub(super) fn desired_acl_list(p: &Pass<'_>, disc: &Disc) -> Vec<String> {
    desired_acl(p, disc).unwrap_or_default()
}

/// Whether two ACLs list the same addresses.
fn same_acl(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

fn acl_is(acl: &[String], wanted: Option<&str>) -> bool {
    match wanted {
        None => acl.is_empty(),
        Some(address) => acl.len() == 1 && acl[0] == address,
    }
}

/// The disc's tail if it is ready, and the tail's report of the disc.
fn reported<'a>(p: &Pass<'a>, disc: &Disc) -> Option<(&'a str, Option<&'a ReportedDisc>)> {
    let pool = p.pool(disc.storage_pool.as_deref()?)?;
    let snap: &'a Snapshot = p.snap;
    let tail = snap.ready(&pool.node_id)?;
    let found = tail
        .discs
        .get(&disc.id)
        .filter(|r| r.grade == disc.storage_grade);
    Some((tail.info.node_id.as_str(), found))
}

/// What the tail reports for this disc, if its tail is ready and has it.
pub(super) fn reported_spec<'a>(p: &Pass<'a>, disc: &Disc) -> Option<&'a DiscSpec> {
    reported(p, disc)
        .and_then(|(_, found)| found)
        .map(|r| &r.spec)
}

/// Whether every disc of `vm` exists on its tail, open to `head` and to
/// nobody else, at its ordered size (NBD has no resize notification: a VM
/// started before a grow reaches the tail would see the old size until
/// its next start), with any ordered template copy finished and no
/// restore from a backup waiting: the condition for starting the VM
/// there.
pub(super) fn ready_for(p: &Pass<'_>, vm: VmId, head: &str) -> bool {
    let Some(address) = p.node_address(head) else {
        return false;
    };
    p.discs_of(vm).all(|id| {
        let Some(disc) = p.disc(id).filter(|d| d.address.is_some()) else {
            return false;
        };
        let Some(spec) = reported_spec(p, disc) else {
            return false;
        };
        acl_is(&spec.access_control_list, Some(address))
            && spec.size >= disc.size
            && !crate::backups::restore_pending(p.model, disc.id)
            && disc
                .template
                .as_ref()
                .is_none_or(|t| spec.imaged_seq.is_some_and(|done| done >= t.seq))
    })
}

/// Creates and updates discs on their tails.
pub(super) fn plan(p: &mut Pass<'_>) {
    let model = p.model;
    for id in model.discs.keys() {
        let id = DiscId(*id);
        if let Some((tail, action, generation)) = decide(p, id) {
            p.disc_mut(id).generation = generation;
            p.order(&tail, action, generation);
        }
    }
}

/// The order one disc needs, if any, with its generation and tail.
fn decide(p: &Pass<'_>, id: DiscId) -> Option<(String, Action, u64)> {
    let disc = p.disc(id)?;
    let (pool_label, address) = (disc.storage_pool.as_deref()?, disc.address.as_deref()?);
    let pool = p.pool(pool_label)?;
    let (tail, found) = reported(p, disc)?;
    let version = p
        .snap
        .nodes
        .get(tail)
        .map_or(0, |n| n.info.protocol_version);
    let acl = desired_acl(p, disc);
    // Never overwrite a disc under a running VM (the API only reimages
    // stopped ones; this makes sure).
    let vm_running = p.reported_on.contains_key(&disc.vm_id);
    let Some(found) = found else {
        // A disc under migration is the migration's to create or not: its
        // source may just have handed it over (the source's report of it
        // gone can come before the destination's of it served), and a new
        // blank copy on the source would answer on the disc's address
        // beside the real one (the whole-system disc migration saw a head
        // reconnect to it).
        if migrating(p, id) {
            return None;
        }
        let acl = acl?;
        p.model.vm(disc.vm_id)?;
        let name = disc_resource(disc);
        if !p.may_order(tail, &name) {
            return None;
        }
        let spec = DiscSpec {
            size: disc.size,
            storage_pool: pool.name.clone(),
            access_control_list: acl,
            address: address.to_owned(),
            template: disc.template.clone().filter(|_| !vm_running),
            limits: super::disc_limits::disc_limits_for(version, disc, Some(pool)),
            ..DiscSpec::default()
        };
        tracing::info!(disc = id.0, %tail, pool = %pool_label, size_mib = disc.size, "creating disc");
        let resource = Resource::new(name, ResourceValue::Disc(spec)).ok()?;
        return Some((
            tail.to_owned(),
            Action::Create(resource),
            disc.generation + 1,
        ));
    };
    let spec = &found.spec;
    let template = match (&disc.template, vm_running) {
        (Some(t), false) => Some(t),
        _ => spec.template.as_ref(),
    };
    let acl_ok = acl
        .as_ref()
        .is_none_or(|wanted| same_acl(&spec.access_control_list, wanted));
    let grow = disc.size > spec.size;
    // A migration in progress rides on every order (without it, the tail
    // would cancel the copy); one that ended is taken off.
    let migrate_to = p.disc_moves.get(&id);
    // No restore under a running server, nor under a mirror's copy.
    let hold_restore = vm_running || migrating(p, id);
    let backups = wanted_backups(p, disc, tail, hold_restore);
    let limits = super::disc_limits::disc_limits_for(version, disc, Some(pool));
    let steady = !grow
        && acl_ok
        && template == spec.template.as_ref()
        && migrate_to == spec.migrate_to.as_ref()
        && crate::backups::same_order(backups.as_ref(), spec.backups.as_ref())
        && limits == spec.limits;
    if steady || !p.may_order(tail, &found.name) {
        return None;
    }
    let acl = acl.unwrap_or_else(|| spec.access_control_list.clone());
    let wanted = DiscSpec {
        size: disc.size.max(spec.size),
        storage_pool: pool.name.clone(),
        access_control_list: acl,
        address: address.to_owned(),
        template: template.cloned(),
        migrate_to: migrate_to.cloned(),
        backups,
        limits,
        ..DiscSpec::default()
    };
    tracing::info!(disc = id.0, %tail, size_mib = wanted.size, acl = ?wanted.access_control_list, template = ?wanted.template.as_ref().map(|t| t.seq), "updating disc");
    let resource = Resource::new(found.name.clone(), ResourceValue::Disc(wanted)).ok()?;
    let generation = disc.generation.max(found.generation) + 1;
    Some((tail.to_owned(), Action::Update(resource), generation))
}

/// The disc order's `backups` (see `crate::backups::wanted`), for a
/// tail that speaks a protocol with backups; stored in its `iceberg` pool
/// when it has one.
fn wanted_backups(
    p: &Pass<'_>,
    disc: &Disc,
    tail: &str,
    hold_restore: bool,
) -> Option<bigv_spine::backup::DiscBackups> {
    let capable = p
        .snap
        .nodes
        .get(tail)
        .is_some_and(|n| n.info.protocol_version >= super::snapshot::BACKUPS_PROTOCOL);
    if !capable {
        return None;
    }
    // Backups that came along with a migration are there before the
    // brain has recorded their move: keep what the tail says it holds.
    let held: Vec<String> = reported_spec(p, disc)
        .and_then(|s| s.backups.as_ref())
        .map(|b| b.taken.iter().map(|t| t.id.clone()).collect())
        .unwrap_or_default();
    let iceberg = iceberg_pool(p, tail);
    crate::backups::wanted(p.model, disc.id, tail, &held, iceberg, hold_restore)
}

/// The tail's cold-storage pool for backups, if it has one.
pub(super) fn iceberg_pool(p: &Pass<'_>, tail: &str) -> Option<String> {
    p.model
        .pools_of(tail)
        .find(|pool| pool.grade == crate::backups::ICEBERG)
        .map(|pool| pool.name.clone())
}

/// Whether a disc migration of `id` is running.
fn migrating(p: &Pass<'_>, id: DiscId) -> bool {
    p.model.operations.values().any(|op| {
        op.state == OperationState::Running
            && matches!(op.kind, OperationKind::MigrateDisc { disc_id, .. } if disc_id == id)
    })
}

/// Removes discs the model does not have (purged) from every ready node.
pub(super) fn remove_strays(p: &mut Pass<'_>) {
    let (model, snap) = (p.model, p.snap);
    for node in snap.nodes.values().filter(|n| n.ready) {
        let node_id = node.info.node_id.as_str();
        let ours = node
            .discs
            .iter()
            .filter(|(id, r)| model.disc(**id).is_none_or(|d| d.storage_grade != r.grade));
        let strays = ours
            .map(|(_, r)| (&r.name, r.generation))
            .chain(node.foreign_discs.iter().map(|(n, g)| (n, *g)));
        for (name, generation) in strays {
            if p.may_order(node_id, name) {
                tracing::info!(node = %node_id, disc = %name, "removing a disc the model does not have");
                p.order(node_id, Action::Remove(name.clone()), generation + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_addresses_are_unique_per_disc_and_in_the_prefix() {
        assert_eq!(storage_address(DiscId(1)), "fd00:5::1");
        assert_eq!(storage_address(DiscId(42)), "fd00:5::2a");
        assert_eq!(
            storage_address(DiscId(u64::MAX)),
            "fd00:5::ffff:ffff:ffff:ffff"
        );
        assert_eq!(nbd_url("fd00:5::2a"), "nbd:[fd00:5::2a]:10809");
        let prefix = storage_prefix();
        assert!(prefix.contains(&storage_address(DiscId(42)).parse::<Ipv6Addr>().unwrap()));
        assert_eq!(prefix.to_string(), "fd00:5::/64");
    }
}
