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

use bigv_spine::resource::{DiscSpec, ResourceName};
use bigv_spine::{Resource, ResourceValue};

use crate::model::{Disc, DiscId, VmId};
use crate::scheduler::disc_resource;

use super::orders::Action;
use super::pass::Pass;

/// The storage LAN prefix disc addresses come from.
const STORAGE_PREFIX: u128 = 0xfd00_0005_0000_0000_0000_0000_0000_0000;

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
        if model.vm(disc.vm_id).is_none() || (disc.storage_pool.is_some() && disc.address.is_some())
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
/// placed on, or nobody. `None` when that head's address is not known
/// (a head that never declared one and is not connected): leave it be.
fn desired_acl(p: &Pass<'_>, disc: &Disc) -> Option<Vec<String>> {
    match p.vm(disc.vm_id).and_then(|v| v.head.as_deref()) {
        None => Some(vec![]),
        Some(head) => p.node_address(head).map(|a| vec![a]),
    }
}

/// The tail and its report of the disc, if the tail is ready.
fn reported<'p>(p: &'p Pass<'_>, disc: &Disc) -> Option<(&'p str, Option<&'p DiscSpec>)> {
    let pool = p.model.pools.get(disc.storage_pool.as_deref()?)?;
    let tail = p.snap.ready(&pool.node_id)?;
    let spec = tail.discs.get(&disc_resource(disc)).map(|(spec, _)| spec);
    Some((tail.info.node_id.as_str(), spec))
}

/// What the tail reports for this disc, if its tail is ready and has it.
pub(super) fn reported_spec<'p>(p: &'p Pass<'_>, disc: &Disc) -> Option<&'p DiscSpec> {
    reported(p, disc).and_then(|(_, spec)| spec)
}

/// Whether every disc of `vm` exists on its tail, open to `head` and to
/// nobody else, with any ordered template copy finished: the condition for
/// starting the VM there.
pub(super) fn ready_for(p: &Pass<'_>, vm: VmId, head: &str) -> bool {
    let Some(address) = p.node_address(head) else {
        return false;
    };
    p.discs_of(vm).into_iter().all(|id| {
        let Some(disc) = p.disc(id) else {
            return false;
        };
        if disc.address.is_none() {
            return false;
        }
        let Some(spec) = reported_spec(p, disc) else {
            return false;
        };
        spec.access_control_list.len() == 1
            && spec.access_control_list[0] == address
            && disc
                .template
                .as_ref()
                .is_none_or(|t| spec.imaged_seq.is_some_and(|done| done >= t.seq))
    })
}

/// Creates and updates discs on their tails.
pub(super) fn plan(p: &mut Pass<'_>) {
    let ids: Vec<u64> = p.model.discs.keys().copied().collect();
    for id in ids {
        plan_disc(p, DiscId(id));
    }
}

fn plan_disc(p: &mut Pass<'_>, id: DiscId) {
    let Some(disc) = p.disc(id).cloned() else {
        return;
    };
    let (Some(pool_label), Some(address)) = (disc.storage_pool.as_deref(), disc.address.clone())
    else {
        return;
    };
    let Some(pool) = p.model.pools.get(pool_label) else {
        return;
    };
    let Some((tail, reported)) = reported(p, &disc) else {
        return;
    };
    let tail = tail.to_owned();
    let name = disc_resource(&disc);
    if !p.may_order(&tail, &name) {
        return;
    }
    let acl = desired_acl(p, &disc);
    // Never overwrite a disc under a running VM (the API only reimages
    // stopped ones; this makes sure).
    let vm_running = p.reported_on.contains_key(&disc.vm_id);
    let (action, generation) = match reported {
        None => {
            let (Some(acl), true) = (acl, p.model.vm(disc.vm_id).is_some()) else {
                return;
            };
            let spec = DiscSpec {
                size: disc.size,
                storage_pool: pool.name.clone(),
                access_control_list: acl,
                address,
                template: disc.template.clone().filter(|_| !vm_running),
                ..DiscSpec::default()
            };
            let generation = disc.generation + 1;
            tracing::info!(disc = id.0, %tail, pool = %pool_label, size_mib = disc.size, "creating disc");
            (Action::Create(disc_resource_value(&name, spec)), generation)
        }
        Some(spec) => {
            let acl = acl.unwrap_or_else(|| spec.access_control_list.clone());
            let template = match (&disc.template, vm_running) {
                (Some(t), false) => Some(t.clone()),
                _ => spec.template.clone(),
            };
            let grow = disc.size > spec.size;
            if !grow && acl == spec.access_control_list && template == spec.template {
                return;
            }
            let generation = disc.generation.max(generation_on(p, &tail, &name)) + 1;
            tracing::info!(disc = id.0, %tail, size_mib = disc.size.max(spec.size), acl = ?acl, template = ?template.as_ref().map(|t| t.seq), "updating disc");
            let wanted = DiscSpec {
                size: disc.size.max(spec.size),
                storage_pool: pool.name.clone(),
                access_control_list: acl,
                address,
                template,
                ..DiscSpec::default()
            };
            (
                Action::Update(disc_resource_value(&name, wanted)),
                generation,
            )
        }
    };
    p.disc_mut(id).generation = generation;
    p.order(&tail, action, generation);
}

fn generation_on(p: &Pass<'_>, node: &str, name: &ResourceName) -> u64 {
    p.snap
        .nodes
        .get(node)
        .and_then(|n| n.discs.get(name))
        .map_or(0, |(_, g)| *g)
}

fn disc_resource_value(name: &ResourceName, spec: DiscSpec) -> Resource {
    Resource::new(name.clone(), ResourceValue::Disc(spec))
        .expect("a disc name always takes a disc value")
}

/// Removes discs the model does not have (purged) from every ready node.
pub(super) fn remove_strays(p: &mut Pass<'_>) {
    let mut strays = vec![];
    for node in p.snap.nodes.values().filter(|n| n.ready) {
        for (name, (_, generation)) in &node.discs {
            let known = match name {
                ResourceName::Disc { id, .. } => id
                    .parse::<u64>()
                    .ok()
                    .and_then(|id| p.model.disc(DiscId(id)))
                    .is_some_and(|d| disc_resource(d) == *name),
                _ => false,
            };
            if !known {
                strays.push((node.info.node_id.clone(), name.clone(), *generation));
            }
        }
    }
    for (node, name, generation) in strays {
        if p.may_order(&node, &name) {
            tracing::info!(%node, disc = %name, "removing a disc the model does not have");
            p.order(&node, Action::Remove(name), generation + 1);
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
    }
}
