//! Soft-deleted VMs are restorable for `settings.purge_after_secs`
//! (bigv-api.md §5.8), then purged: the VM, its discs, NICs and the
//! privileges on it go, and its IP addresses return to their ranges. The
//! reconciler then removes whatever nodes still hold (purged discs are
//! strays on their tails). Time is `state.clock`, so tests move it.

use crate::model::{DbError, Disc, IpRecord, Model, Nic, Privilege, Target, Tx, Vm, VmId};

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
    let due: Vec<VmId> = ids
        .iter()
        .copied()
        .filter(|id| {
            tx.model()
                .vm(*id)
                .is_some_and(|vm| is_due(vm, tx.model(), now))
        })
        .collect();
    for id in &due {
        tracing::info!(vm = id.0, "purging a VM deleted long enough ago");
        purge_vm(tx, *id)?;
    }
    Ok(due.len())
}

/// Removes a VM for good: its discs, NICs, the privileges on it, and its
/// addresses (NIC and management) return to their ranges. The one place
/// a VM is purged, for the API's `?purge=true` and the timer alike.
pub fn purge_vm(tx: &mut Tx<'_>, id: VmId) -> Result<(), DbError> {
    let model = tx.model();
    let Some(vm) = model.vm(id) else {
        return Ok(());
    };
    let discs: Vec<u64> = model.discs_of(id).map(|d| d.id.0).collect();
    let nics: Vec<u64> = model.nics_of(id).map(|n| n.id.0).collect();
    let addresses: Vec<String> = model
        .ips
        .values()
        .filter(|r| {
            r.nic_id.is_some_and(|n| nics.contains(&n.0))
                || vm.management_address.as_deref() == Some(r.address.as_str())
        })
        .map(|r| r.address.clone())
        .collect();
    let privileges: Vec<u64> = model
        .privileges
        .values()
        .filter(|p| p.target == Target::Vm(id))
        .map(|p| p.id.0)
        .collect();
    for key in discs {
        tx.delete::<Disc>(key)?;
    }
    for key in nics {
        tx.delete::<Nic>(key)?;
    }
    for key in addresses {
        tx.delete::<IpRecord>(key)?;
    }
    for key in privileges {
        tx.delete::<Privilege>(key)?;
    }
    tx.delete::<Vm>(id.0)
}
