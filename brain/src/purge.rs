//! Soft-deleted VMs are restorable for `settings.purge_after_secs`
//! (bigv-api.md §5.8), then purged: the VM, its discs, NICs and the
//! privileges on it go, and its IP addresses return to their ranges. The
//! reconciler then removes whatever nodes still hold (purged discs are
//! strays on their tails). Time is `state.clock`, so tests move it.

use crate::model::{DbError, Model, Target, Tx, Vm, VmId};

fn is_due(vm: &Vm, model: &Model, now: u64) -> bool {
    vm.deleted
        && vm
            .deleted_at
            .is_some_and(|at| now >= at.saturating_add(model.settings.purge_after_secs))
}

/// VMs whose restore period is over.
pub fn due(model: &Model, now: u64) -> Vec<VmId> {
    model
        .vms
        .values()
        .filter(|vm| is_due(vm, model, now))
        .map(|vm| vm.id)
        .collect()
}

/// Purges those of `ids` still due (one may have been restored since the
/// caller looked). Returns how many went.
pub fn purge(tx: &mut Tx<'_>, ids: &[VmId], now: u64) -> Result<usize, DbError> {
    let model = tx.model();
    let mut vms = vec![];
    let mut discs = vec![];
    let mut nics = vec![];
    let mut ips = vec![];
    let mut privileges = vec![];
    for id in ids {
        let Some(vm) = model.vm(*id).filter(|vm| is_due(vm, model, now)) else {
            continue;
        };
        vms.push(vm.id.0);
        discs.extend(model.discs_of(vm.id).map(|d| d.id.0));
        let vm_nics: Vec<_> = model.nics_of(vm.id).map(|n| n.id).collect();
        ips.extend(
            model
                .ips
                .values()
                .filter(|ip| ip.nic_id.is_some_and(|n| vm_nics.contains(&n)))
                .map(|ip| ip.address.clone()),
        );
        nics.extend(vm_nics.into_iter().map(|n| n.0));
        privileges.extend(
            model
                .privileges
                .values()
                .filter(|p| p.target == Target::Vm(vm.id))
                .map(|p| p.id.0),
        );
        tracing::info!(vm = vm.id.0, name = %vm.name, "purging a VM deleted long enough ago");
    }
    let purged = vms.len();
    for key in discs {
        tx.delete::<crate::model::Disc>(key)?;
    }
    for key in ips {
        tx.delete::<crate::model::IpRecord>(key)?;
    }
    for key in nics {
        tx.delete::<crate::model::Nic>(key)?;
    }
    for key in privileges {
        tx.delete::<crate::model::Privilege>(key)?;
    }
    for key in vms {
        tx.delete::<Vm>(key)?;
    }
    Ok(purged)
}
