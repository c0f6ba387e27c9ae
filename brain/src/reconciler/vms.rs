//! VMs: where each should run, starting and stopping them, and the fully
//! unpacked `vm.<id>` resource a head needs to run one (BRIEF §3
//! decision 3).
//!
//! A VM should run when `!deleted && power_on`. `power_on=false` with
//! `autoreboot_on=true` is a reboot: it is stopped, then `power_on` is set
//! again and the next pass starts it afresh. A VM that stops by itself
//! (seen running on its head, then gone) is started again if autoreboot is
//! on, else recorded as off (`power_on=false`, no head). Placement and a
//! raised generation are persisted before any create is sent (the pass
//! runs inside the store write), and a VM is created only once its discs
//! admit that head and no other node holds or is being ordered about it.
//! Once running, only `cdrom_url` and new signals are forwarded; other
//! changes apply at the next start (bigv-api.md §5.7).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use bigv_spine::Resource;
use bigv_spine::resource::{DhcpConfig, NetworkInterface, UserAuthentication, VmDisc, VmSpec};
use ipnet::Ipv4Net;

use crate::api::access::ancestors;
use crate::model::{Model, Nic, Target, Vm};
use crate::scheduler::vm_resource;

use super::discs;
use super::fencing::Liveness;
use super::orders::Action;
use super::pass::Pass;
use super::snapshot::NodeSnap;

pub(super) fn plan(p: &mut Pass<'_>) {
    let model = p.model;
    for vm in model.vms.values() {
        plan_vm(p, vm);
    }
}

fn plan_vm<'a>(p: &mut Pass<'a>, vm: &'a Vm) {
    let id = vm.id;
    if p.migrating_vms.contains(&id) {
        // Its migration decides where it runs until it ends.
        return;
    }
    let wants_run = !vm.deleted && vm.power_on;
    let reboot = !vm.deleted && !vm.power_on && vm.autoreboot_on;
    let Some(head) = vm.head.as_deref() else {
        if wants_run {
            place(p, vm, &[]);
        } else if reboot {
            // Not running anywhere: the stop half of the reboot is done.
            p.vm_mut(id).power_on = true;
        }
        return;
    };
    let snap = p.snap;
    if let Some(node) = snap.nodes.get(head).filter(|n| n.ready) {
        return on_ready_head(p, vm, node, wants_run, reboot);
    }
    match p.liveness(head) {
        // It may still run there: nothing moves (unknown is not dead).
        Liveness::Joining | Liveness::Unknown => {}
        Liveness::Fenced => {
            // The head has killed its VMs by now, and cannot come back to
            // the discs: their ACLs move to the new head before it starts.
            p.recall.seen_running.remove(&id);
            p.vm_mut(id).head = None;
            if wants_run {
                tracing::warn!(vm = id.0, old_head = %head, "head gone past the fence timeout: restarting the VM elsewhere");
                place(p, vm, &[head]);
            } else if reboot {
                p.vm_mut(id).power_on = true;
            }
        }
        // Handled above.
        Liveness::Ready => {}
    }
}

fn on_ready_head<'a>(
    p: &mut Pass<'a>,
    vm: &'a Vm,
    node: &'a NodeSnap,
    wants_run: bool,
    reboot: bool,
) {
    let id = vm.id;
    let head = node.info.node_id.as_str();
    if !p.recall.ledger.is_quiet() && p.recall.ledger.busy_on(head, &vm_resource(id)) {
        // Wait for the order's outcome; the table follows it.
        return;
    }
    let running = node.vms.get(&id);
    if wants_run {
        if let Some((spec, generation)) = running {
            if p.recall.seen_running.get(&id).map(String::as_str) != Some(head) {
                p.recall.seen_running.insert(id, head.to_owned());
                p.recall.refused.remove(&id);
            }
            forward_changes(p, vm, head, spec, *generation);
            return;
        }
        if p.recall.seen_running.get(&id).map(String::as_str) == Some(head) {
            p.recall.seen_running.remove(&id);
            if !vm.autoreboot_on {
                tracing::info!(vm = id.0, %head, "VM stopped and autoreboot is off: recording it as powered off");
                let vm = p.vm_mut(id);
                vm.power_on = false;
                vm.head = None;
                return;
            }
            tracing::info!(vm = id.0, %head, "VM stopped and autoreboot is on: starting it again");
        }
        if p.recall.refused.get(&id).map(String::as_str) == Some(head) {
            p.recall.refused.remove(&id);
            p.vm_mut(id).head = None;
            place(p, vm, &[head]);
            return;
        }
        start(p, vm, head);
    } else if let Some((_, generation)) = running {
        p.recall.seen_running.remove(&id);
        let name = vm_resource(id);
        if !p.may_order(head, &name) {
            return;
        }
        let why = if vm.deleted {
            "deleted"
        } else if reboot {
            "rebooting"
        } else {
            "powered off"
        };
        let generation = p.vm_mut(id).generation.max(*generation) + 1;
        p.vm_mut(id).generation = generation;
        tracing::info!(vm = id.0, %head, why, "stopping VM");
        p.order(head, Action::Remove(name), generation);
    } else if reboot {
        tracing::info!(vm = id.0, %head, "VM stopped for its reboot: starting it afresh");
        p.vm_mut(id).power_on = true;
    } else {
        p.vm_mut(id).head = None;
    }
}

/// Picks a head for a VM that runs nowhere, booking it for this pass.
fn place(p: &mut Pass<'_>, vm: &Vm, exclude: &[&str]) {
    let id = vm.id;
    let unplaced_disc = p
        .discs_of(id)
        .any(|d| p.disc(d).is_none_or(|d| d.storage_pool.is_none()));
    if unplaced_disc {
        note_unplaced(p, vm, "its discs have no storage yet".into());
        return;
    }
    let model = p.model;
    let facts = p.facts();
    match facts.pick_head(model, vm, exclude) {
        Ok(head) => {
            facts.reserve_head(&head, id, vm.memory);
            tracing::info!(vm = id.0, %head, memory_mib = vm.memory, "VM placed");
            p.recall.unplaced_vms.remove(&id);
            p.vm_mut(id).head = Some(head);
        }
        Err(e) => note_unplaced(p, vm, e.reason),
    }
}

/// Logs why a VM cannot be placed, once per reason.
fn note_unplaced(p: &mut Pass<'_>, vm: &Vm, reason: String) {
    if p.recall.unplaced_vms.get(&vm.id) != Some(&reason) {
        tracing::warn!(vm = vm.id.0, memory_mib = vm.memory, %reason, "cannot place VM");
        p.recall.unplaced_vms.insert(vm.id, reason);
    }
}

/// Creates the VM on `head` if that is safe now.
fn start(p: &mut Pass<'_>, vm: &Vm, head: &str) {
    let id = vm.id;
    let name = vm_resource(id);
    // Never two copies: while another node holds it (a rogue being
    // removed) or any order about it is in flight, wait.
    let elsewhere = p.reported_on.get(&id).is_some_and(|r| r.beyond(head));
    if elsewhere || p.busy(&name) || !p.may_order(head, &name) {
        return;
    }
    if !discs::ready_for(p, id, head) {
        return;
    }
    let spec = vm_spec(p, vm);
    let generation = p.vm_mut(id).generation + 1;
    let record = p.vm_mut(id);
    record.generation = generation;
    // A signal is for the process it was sent to; a new one has seen none.
    record.signal = None;
    tracing::info!(vm = id.0, %head, generation, "starting VM");
    p.order(
        head,
        Action::Create(Resource::vm(id.0.to_string(), spec)),
        generation,
    );
}

/// Forwards what may change under a running VM: the CD and signals.
fn forward_changes(p: &mut Pass<'_>, vm: &Vm, head: &str, spec: &VmSpec, generation: u64) {
    let cdrom = spec.cdrom_url != vm.cdrom_url;
    let signal = vm.signal.is_some() && spec.signal != vm.signal;
    if !(cdrom || signal) {
        return;
    }
    let name = vm_resource(vm.id);
    if !p.may_order(head, &name) {
        return;
    }
    let mut wanted = spec.clone();
    wanted.state = None;
    wanted.started_at = None;
    wanted.cdrom_url = vm.cdrom_url.clone();
    if signal {
        wanted.signal = vm.signal.clone();
    }
    let generation = p.vm_mut(vm.id).generation.max(generation) + 1;
    p.vm_mut(vm.id).generation = generation;
    tracing::info!(vm = vm.id.0, %head, cdrom = ?vm.cdrom_url, signal = ?vm.signal.as_ref().map(|s| (s.seq, s.kind)), "updating running VM");
    p.order(
        head,
        Action::Update(Resource::vm(vm.id.0.to_string(), wanted)),
        generation,
    );
}

/// Removes VMs from heads the model does not place them on: rogues (a
/// head back from beyond the fence declaring VMs that now run elsewhere),
/// purged VMs, and anything not named by us.
pub(super) fn remove_rogues(p: &mut Pass<'_>) {
    let snap = p.snap;
    for node in snap.nodes.values().filter(|n| n.ready) {
        let node_id = node.info.node_id.as_str();
        for (id, (_, generation)) in &node.vms {
            if p.vm(*id)
                .is_some_and(|v| v.head.as_deref() == Some(node_id))
                || p.vm_handover.get(id).map(String::as_str) == Some(node_id)
            {
                continue;
            }
            let name = vm_resource(*id);
            let record = p.vm(*id).map(|v| (v.head.clone(), v.generation));
            if !p.may_order(node_id, &name) {
                continue;
            }
            let generation = record.as_ref().map_or(0, |(_, g)| *g).max(*generation) + 1;
            if record.is_some() {
                p.vm_mut(*id).generation = generation;
            }
            tracing::warn!(vm = id.0, node = %node_id, placed_on = ?record.and_then(|(head, _)| head), "removing a VM the model does not place on this node");
            p.order(node_id, Action::Remove(name), generation);
        }
        for (name, generation) in &node.foreign_vms {
            if p.may_order(node_id, name) {
                tracing::warn!(node = %node_id, resource = %name, "removing a VM that is not ours");
                p.order(node_id, Action::Remove(name.clone()), generation + 1);
            }
        }
    }
}

/// The fully unpacked resource for `vm` (paper fig. 5).
pub(super) fn vm_spec(p: &mut Pass<'_>, vm: &Vm) -> VmSpec {
    let model = p.model;
    let hostname = model.hostname(vm);
    let domain = hostname
        .strip_prefix(&format!("{}.", vm.name))
        .unwrap_or_default()
        .to_owned();
    // Compatibility profiles are for guests without virtio drivers.
    let (nic_model, disc_model) = if vm.hardware_profile.starts_with("compatibility") {
        ("e1000", "ide")
    } else {
        ("virtio", "virtio")
    };
    let network_interfaces = p
        .nics_of(vm.id)
        .into_iter()
        .filter_map(|id| model.nics.get(&id.0))
        .map(|nic| NetworkInterface {
            mac: nic.mac.clone(),
            vlan_id: nic.vlan_num,
            model: nic_model.into(),
            ips: nic
                .ips
                .iter()
                .chain(nic.extra_ips.keys())
                .cloned()
                .collect(),
            dhcp: dhcp(model, nic, &vm.name, &domain),
        })
        .collect();
    let discs = p
        .discs_of(vm.id)
        .filter_map(|id| p.disc(id))
        .filter_map(|d| {
            Some(VmDisc {
                address: discs::nbd_url(d.address.as_deref()?),
                model: disc_model.into(),
                serial: Some(d.label.clone()),
            })
        })
        .collect();
    let mut users: BTreeMap<String, UserAuthentication> = BTreeMap::new();
    for target in ancestors(model, Target::Vm(vm.id)) {
        for user in p.users_on(target) {
            if let Some(user) = model.user(user) {
                let keys = user.authorized_keys.trim();
                users.insert(
                    user.username.clone(),
                    UserAuthentication {
                        authorized_keys: (!keys.is_empty()).then(|| keys.to_owned()),
                        // Console logins by password check the user's
                        // BigV password on the head (argon2).
                        password: user.password_hash.clone(),
                    },
                );
            }
        }
    }
    VmSpec {
        memory: vm.memory,
        cores: vm.cores,
        balloon_on: true,
        cdrom_url: vm.cdrom_url.clone(),
        imager_options: vm.imager_options.clone(),
        display_name: hostname,
        keymap: vm.keymap.clone().unwrap_or_else(|| "en-gb".into()),
        network_interfaces,
        discs,
        management_address: vm.management_address.clone(),
        management_ssh_keys: vec![],
        console_users: users.keys().cloned().collect(),
        user_authentication: users,
        signal: None,
        state: None,
        started_at: None,
        incoming: None,
        migrate_to: None,
        migration: None,
    }
}

/// What the head's DHCP responder tells the guest: the range holding the
/// NIC's primary IPv4 address, its first host as router.
fn dhcp(model: &Model, nic: &Nic, hostname: &str, domain: &str) -> Option<DhcpConfig> {
    let v4 = nic.ips.iter().find_map(|ip| ip.parse::<Ipv4Addr>().ok())?;
    let in_range = |spec: &str| spec.parse::<Ipv4Net>().ok().filter(|net| net.contains(&v4));
    let net = model
        .ips
        .get(&v4.to_string())
        .and_then(|r| model.ip_ranges.get(&r.range_id.0))
        .and_then(|r| in_range(&r.spec))
        .or_else(|| model.ip_ranges.values().find_map(|r| in_range(&r.spec)))?
        .trunc();
    let router = Ipv4Addr::from(u32::from(net.network()).wrapping_add(1));
    Some(DhcpConfig {
        network: net.to_string(),
        router: router.to_string(),
        hostname: hostname.to_owned(),
        domain: domain.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IpRange, IpRangeId, NicId, VmId};

    #[test]
    fn dhcp_uses_the_range_holding_the_primary_v4() {
        let mut model = Model::default();
        for (id, spec) in [
            (1, "2001:db8::/64"),
            (2, "192.0.2.0/24"),
            (3, "198.51.100.0/25"),
        ] {
            model.ip_ranges.insert(
                id,
                IpRange {
                    id: IpRangeId(id),
                    spec: spec.into(),
                    vlan_num: 1,
                    zones: vec![],
                },
            );
        }
        let nic = Nic {
            id: NicId(1),
            vm_id: VmId(1),
            label: None,
            mac: "fe:ff:00:00:00:01".into(),
            vlan_num: 1,
            ips: vec!["2001:db8::10".into(), "198.51.100.20".into()],
            extra_ips: Default::default(),
        };
        let got = dhcp(&model, &nic, "web1", "default.alice.bigv.test").unwrap();
        assert_eq!(got.network, "198.51.100.0/25");
        assert_eq!(got.router, "198.51.100.1");
        assert_eq!(got.domain, "default.alice.bigv.test");
        let v6_only = Nic {
            ips: vec!["2001:db8::10".into()],
            ..nic
        };
        assert!(dhcp(&model, &v6_only, "web1", "x").is_none());
    }
}
