//! Long operations the reconciler finishes. Only reimage for now: the API
//! orders a template copy onto the VM's first disc (`Disc.template`) and
//! records a running `Reimage` operation; the disc plan forwards the copy
//! while the VM is stopped; once the tail reports `imaged_seq` at least
//! the ordered seq, the operation is done. The VM starts then because the
//! API set `power_on` when it ordered the reimage (bigv-api.md §5.6: "after
//! it the VM is powered on") and placement waits for the copy; finishing
//! does not touch `power_on`, so a stop ordered meanwhile is kept. Other
//! kinds are left to their own engine, untouched.

use crate::model::{Operation, OperationKind, OperationState};

use super::discs;
use super::pass::Pass;

pub(super) fn plan(p: &mut Pass<'_>) {
    let model = p.model;
    for op in model.operations.values() {
        if op.state != OperationState::Running {
            continue;
        }
        let OperationKind::Reimage {
            vm_id,
            distribution,
        } = &op.kind
        else {
            continue;
        };
        let Some(vm) = p.vm(*vm_id).filter(|v| !v.deleted) else {
            finish(p, op, Err("the server was deleted".into()));
            continue;
        };
        let vm_id = vm.id;
        let Some(disc) = p.discs_of(vm_id).next().and_then(|d| p.disc(d)) else {
            finish(p, op, Err("the server has no disc to image".into()));
            continue;
        };
        let Some(template) = disc.template.as_ref() else {
            finish(p, op, Err("no image was ordered onto the disc".into()));
            continue;
        };
        let imaged = discs::reported_spec(p, disc)
            .and_then(|s| s.imaged_seq)
            .is_some_and(|done| done >= template.seq);
        if imaged {
            tracing::info!(vm = vm_id.0, image = %distribution, "reimage finished");
            finish(p, op, Ok(()));
            p.vm_mut(vm_id).last_imaged_with = Some(distribution.clone());
        } else if op.phase != "imaging" {
            let mut op = op.clone();
            op.phase = "imaging".into();
            op.updated_at = p.now;
            p.operations.push(op);
        }
    }
}

/// Records a phase and progress when they changed (nothing is written
/// when nothing moved, so a quiet cluster's passes write nothing).
pub(super) fn set_phase(
    p: &mut Pass<'_>,
    op: &Operation,
    phase: &str,
    progress: Option<(u64, u64)>,
) {
    let (done, total) = progress.unwrap_or((op.done, op.total));
    if op.phase == phase && op.done == done && op.total == total {
        return;
    }
    let mut op = op.clone();
    op.phase = phase.into();
    op.done = done;
    op.total = total.max(1);
    op.updated_at = p.now;
    p.operations.push(op);
}

/// Ends an operation, done or failed with the reason.
pub(super) fn finish(p: &mut Pass<'_>, op: &Operation, outcome: Result<(), String>) {
    let mut op = op.clone();
    op.total = op.total.max(1);
    op.updated_at = p.now;
    match outcome {
        Ok(()) => {
            op.state = OperationState::Done;
            op.phase = "done".into();
            op.done = op.total;
        }
        Err(why) => {
            tracing::warn!(operation = op.id.0, kind = ?op.kind, %why, "operation failed");
            op.state = OperationState::Failed;
            op.phase = "failed".into();
            op.error = Some(why);
        }
    }
    p.operations.push(op);
}
