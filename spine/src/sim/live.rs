//! Simulated live migration of a VM between heads, with the real head's
//! protocol (`incoming` on the destination's create, `migrate_to` on the
//! source's update, `migration` progress, then the source reports the VM
//! destroyed and the destination reports it running). The guest keeps its
//! `started_at`: it is the same guest, moved.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::resource::{
    Resource, ResourceName, VmMigrationOrder, VmMigrationProgress, VmMigrationState, VmRunState,
    VmSpec,
};

use super::{GuestEventKind, SimHandler, mirror};

/// The downtime a simulated source reports for every migration.
pub const SIM_DOWNTIME_MS: u64 = 37;

/// Progress as the source reports it when the migration starts.
pub(super) fn started(order: &VmMigrationOrder, memory_mib: u64) -> VmMigrationProgress {
    VmMigrationProgress {
        seq: order.seq,
        to: order.to.clone(),
        state: VmMigrationState::Active,
        ram_done: 0,
        ram_total: memory_mib << 20,
        downtime_ms: None,
        error: None,
    }
}

/// The source side: copy RAM (pretend), then switch over or fail. Runs as
/// its own task; aborting it is cancelling.
pub(super) async fn run(source: Arc<SimHandler>, vm: String, order: VmMigrationOrder) {
    let half = Duration::from_millis(source.mirror_ms.load(Ordering::Relaxed) / 2);
    tokio::time::sleep(half).await;
    if let Some(spec) = source.set_vm_migration(&vm, |m| m.ram_done = m.ram_total / 2) {
        source.notifier().updated(Resource::vm(&vm, spec)).await;
    }
    tokio::time::sleep(half).await;
    let fail = source.fail_mirrors.load(Ordering::Relaxed);
    let name = ResourceName::vm(&vm);
    let destination = mirror::destination(&order.endpoint).filter(|(_, n)| *n == name);
    let Some((destination, _)) = destination.filter(|_| !fail) else {
        let why = if fail {
            "simulated failure".to_owned()
        } else {
            format!("nothing listens at {}", order.endpoint)
        };
        let failed = source.set_vm_migration(&vm, |m| {
            m.state = VmMigrationState::Failed;
            m.error = Some(why.clone());
        });
        if let Some(spec) = failed {
            source.notifier().updated(Resource::vm(&vm, spec)).await;
        }
        return;
    };
    let Some(started_at) = source.state().vms.get(&vm).map(|v| v.started_at) else {
        return;
    };
    // Switch-over: the guest runs on the destination, the source ends.
    let running = {
        let mut state = destination.state();
        let arrived = state.vms.get_mut(&vm).map(|v| {
            if let Some(endpoint) = v.incoming.take().and_then(|i| i.endpoint) {
                mirror::forget(&endpoint);
            }
            v.state = Some(VmRunState::Running);
            v.started_at = started_at;
            v.clone()
        });
        if arrived.is_some() {
            destination.guest_event(&mut state, &vm, GuestEventKind::MigratedIn);
        }
        arrived
    };
    let Some(running) = running else { return };
    destination
        .notifier()
        .updated(Resource::vm(&vm, running))
        .await;
    destination.report(None).await;
    // Like a real source head stopped right after the switch-over: the
    // final progress, with qemu's downtime, just before the VM goes.
    let completed = source.set_vm_migration(&vm, |m| {
        m.ram_done = m.ram_total;
        m.downtime_ms = Some(SIM_DOWNTIME_MS);
    });
    if let Some(spec) = completed {
        source.notifier().updated(Resource::vm(&vm, spec)).await;
    }
    {
        let mut state = source.state();
        state.vms.remove(&vm);
        state.mirrors.remove(&name);
        source.guest_event(&mut state, &vm, GuestEventKind::MigratedOut);
    }
    source.notifier().destroyed(name).await;
    source.report(None).await;
}

impl SimHandler {
    fn set_vm_migration(
        &self,
        vm: &str,
        change: impl FnOnce(&mut VmMigrationProgress),
    ) -> Option<VmSpec> {
        let mut state = self.state();
        let spec = state.vms.get_mut(vm)?;
        change(spec.migration.as_mut()?);
        Some(spec.clone())
    }
}
