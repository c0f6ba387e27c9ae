//! Live migration of a running VM between heads (`bigv admin migrate
//! server`, `bigv admin empty head`), through the spine's `incoming` /
//! `migrate_to` fields on `vm.*` (docs/spine.md, "Live migration"):
//!
//! 1. pick the destination head (once, kept in the operation), or take the
//!    one the operator named;
//! 2. open the VM's discs to both heads — the only time a disc's ACL lists
//!    two — and wait until every tail reports that;
//! 3. create the VM on the destination with `incoming`: qemu waits for the
//!    migration stream and reports its endpoint;
//! 4. order the source with `migrate_to {seq: operation id, to, endpoint}`;
//!    its progress goes into the operation;
//! 5. when the destination reports the VM running without `incoming` and
//!    the source no longer reports it, the model places the VM on the
//!    destination; the discs close to the source on the same pass.
//!
//! A failure leaves the guest running on the source; the destination's
//! waiting qemu is then removed as a VM the model does not place there.
//! While a migration runs, the ordinary VM plan leaves the VM alone.

use bigv_spine::Resource;
use bigv_spine::resource::{VmIncoming, VmMigrationOrder, VmMigrationState, VmRunState, VmSpec};

use crate::model::{Operation, OperationKind, OperationState, Role, Vm, VmId};
use crate::scheduler::vm_resource;

use super::operations::{Evacuation, evacuate, finish, peers_may_return, set_phase};
use super::orders::Action;
use super::pass::Pass;
use super::snapshot::Snapshot;
use super::{discs, vms};

const MIB: u64 = 1 << 20;

/// How many VMs one head empties at once.
const EMPTY_HEAD_CONCURRENCY: usize = 2;

pub(super) fn plan(p: &mut Pass<'_>) {
    let model = p.model;
    for op in model.operations.values() {
        if op.state != OperationState::Running {
            continue;
        }
        match &op.kind {
            OperationKind::MigrateVm { vm_id, to_head, .. } => {
                step(p, op, *vm_id, to_head.as_deref());
            }
            OperationKind::EmptyHead { node_id } => empty_head(p, op, node_id),
            _ => {}
        }
    }
}

fn step<'a>(p: &mut Pass<'a>, op: &Operation, vm_id: VmId, to_head: Option<&str>) {
    let snap: &'a Snapshot = p.snap;
    let Some(vm) = p.vm(vm_id).filter(|v| !v.deleted).cloned() else {
        return finish(p, op, Err("the server was deleted".into()));
    };
    let Some(source) = vm.head.clone() else {
        return finish(p, op, Err("the server is not running on any head".into()));
    };
    let dest = match to_head {
        Some(dest) => dest.to_owned(),
        None => match pick_destination(p, &vm, &source) {
            Ok(dest) => {
                let mut picked = op.clone();
                picked.kind = OperationKind::MigrateVm {
                    vm_id,
                    to_head: Some(dest),
                    downtime_ms: None,
                };
                picked.phase = "preparing".into();
                picked.updated_at = p.now;
                p.operations.push(picked);
                return;
            }
            Err(_) if peers_may_return(p, Role::Head, &source) => {
                return set_phase(p, op, "waiting for a head to come back", None);
            }
            Err(why) => return finish(p, op, Err(why)),
        },
    };
    if dest == source {
        return finish(p, op, Ok(()));
    }
    let (Some(at), Some(to)) = (snap.ready(&source), snap.ready(&dest)) else {
        return set_phase(p, op, "waiting for both heads", None);
    };
    let seq = op.id.0;
    let at_source = at.vms.get(&vm_id);
    let at_dest = to.vms.get(&vm_id);
    // From here on both heads may open the discs, and what the destination
    // runs is the migration's, not a rogue, even while the model still
    // places the VM on the source: the two heads report the switch-over
    // on separate connections, so a pass may see the source's copy gone
    // before the destination's says it runs.
    p.vm_handover.insert(vm_id, dest.clone());

    // Switched over: the guest runs on the destination.
    if let Some((_, generation)) =
        at_dest.filter(|(s, _)| s.incoming.is_none() && s.state == Some(VmRunState::Running))
    {
        if let Some((_, source_generation)) = at_source {
            // The source's qemu is left paused after the switch-over.
            let name = vm_resource(vm_id);
            if p.may_order(&source, &name) {
                // Every generation ordered is kept in the record, so a later
                // create on this head (moving back) is never taken for a
                // repeat of an order it already applied.
                let generation = p.vm_mut(vm_id).generation.max(*source_generation) + 1;
                p.vm_mut(vm_id).generation = generation;
                p.order(&source, Action::Remove(name), generation);
            }
            return set_phase(p, op, "switching over", None);
        }
        let downtime = p.recall.migration_downtimes.get(&(vm_id, seq)).copied();
        tracing::info!(vm = vm_id.0, from = %source, to = %dest, downtime_ms = ?downtime, "VM migration finished");
        let record = p.vm_mut(vm_id);
        record.head = Some(dest.clone());
        record.generation = record.generation.max(*generation);
        p.recall.seen_running.insert(vm_id, dest);
        let mut done = op.clone();
        if let OperationKind::MigrateVm { downtime_ms, .. } = &mut done.kind {
            *downtime_ms = downtime.or(*downtime_ms);
        }
        return finish(p, &done, Ok(()));
    }
    let Some((running, source_generation)) = at_source else {
        if p.recall.seen_running.get(&vm_id) == Some(&source) && at_dest.is_some() {
            return finish(
                p,
                op,
                Err("the server stopped on its head during the migration".into()),
            );
        }
        return set_phase(p, op, "waiting for the server to run", None);
    };
    let progress = running.migration.as_ref().filter(|m| m.seq == seq);
    if let Some(m) = progress.filter(|m| m.state == VmMigrationState::Failed) {
        let why = m.error.clone().unwrap_or_else(|| "no reason given".into());
        return finish(p, op, Err(format!("the migration failed: {why}")));
    }

    let (Some(source_address), Some(dest_address)) = (
        p.node_address(&source).map(str::to_owned),
        p.node_address(&dest).map(str::to_owned),
    ) else {
        return set_phase(p, op, "waiting for the heads' addresses", None);
    };
    let open_to_both = p.discs_of(vm_id).collect::<Vec<_>>().into_iter().all(|d| {
        p.disc(d)
            .and_then(|d| discs::reported_spec(p, d))
            .is_some_and(|s| {
                let acl = &s.access_control_list;
                acl.contains(&source_address) && acl.contains(&dest_address)
            })
    });
    if !open_to_both {
        return set_phase(p, op, "opening the discs to both heads", None);
    }
    let Some((waiting, _)) = at_dest else {
        return create_destination(p, op, &vm, &source, &dest, running.started_at);
    };
    let Some(endpoint) = waiting.incoming.as_ref().and_then(|i| i.endpoint.clone()) else {
        return set_phase(p, op, "preparing", None);
    };
    let order = VmMigrationOrder {
        seq,
        to: dest.clone(),
        endpoint,
        max_bandwidth: None,
        max_downtime_ms: None,
    };
    let name = vm_resource(vm_id);
    if running.migrate_to.as_ref() != Some(&order) && p.may_order(&source, &name) {
        let wanted = VmSpec {
            state: None,
            started_at: None,
            migration: None,
            migrate_to: Some(order),
            ..running.clone()
        };
        let generation = p.vm_mut(vm_id).generation.max(*source_generation) + 1;
        p.vm_mut(vm_id).generation = generation;
        tracing::info!(vm = vm_id.0, from = %source, to = %dest, seq, "migrating VM");
        p.order(
            &source,
            Action::Update(Resource::vm(vm_id.0.to_string(), wanted)),
            generation,
        );
    }
    let done = progress.map(|m| (m.ram_done / MIB, m.ram_total.div_ceil(MIB)));
    set_phase(p, op, "migrating", done);
}

/// A head with room for the VM other than its own, booked for this pass.
fn pick_destination(p: &mut Pass<'_>, vm: &Vm, source: &str) -> Result<String, String> {
    let model = p.model;
    let facts = p.facts();
    let head = facts
        .pick_head(model, vm, &[source])
        .map_err(|e| format!("no other head can take it: {}", e.reason))?;
    facts.reserve_head(&head, vm.id, vm.memory);
    Ok(head)
}

fn create_destination(
    p: &mut Pass<'_>,
    op: &Operation,
    vm: &Vm,
    source: &str,
    dest: &str,
    started_at: Option<u64>,
) {
    let name = vm_resource(vm.id);
    if !p.may_order(dest, &name) {
        return;
    }
    let mut spec = vms::vm_spec(p, vm);
    spec.incoming = Some(VmIncoming {
        from: source.to_owned(),
        endpoint: None,
    });
    // The same guest, moved: it keeps its start time.
    spec.started_at = started_at;
    let generation = p.vm_mut(vm.id).generation + 1;
    p.vm_mut(vm.id).generation = generation;
    tracing::info!(vm = vm.id.0, head = %dest, "creating the migration's destination");
    p.order(
        dest,
        Action::Create(Resource::vm(vm.id.0.to_string(), spec)),
        generation,
    );
    set_phase(p, op, "preparing", None);
}

/// Emptying a head: its VMs migrate away, a couple at a time.
fn empty_head(p: &mut Pass<'_>, op: &Operation, node_id: &str) {
    let e = head_evacuation(p, node_id);
    evacuate(p, op, e);
}

/// What emptying a head means: the VMs the model places on it migrate to
/// heads the scheduler picks (anti-affinity honoured), a couple at a time.
pub(super) fn head_evacuation(p: &Pass<'_>, node_id: &str) -> Evacuation<VmId> {
    let remaining: Vec<VmId> = p
        .model
        .vms
        .keys()
        .map(|id| VmId(*id))
        .filter(|id| {
            p.vm(*id)
                .is_some_and(|v| !v.deleted && v.head.as_deref() == Some(node_id))
        })
        .collect();
    Evacuation {
        remaining,
        moves: |kind| match kind {
            OperationKind::MigrateVm { vm_id, .. } => Some(*vm_id),
            _ => None,
        },
        child: |vm_id| OperationKind::MigrateVm {
            vm_id,
            to_head: None,
            downtime_ms: None,
        },
        concurrency: EMPTY_HEAD_CONCURRENCY,
        name: |p, vm| {
            p.vm(vm)
                .map_or_else(|| format!("VM {}", vm.0), |v| v.name.clone())
        },
        phase: "migrating servers",
    }
}
