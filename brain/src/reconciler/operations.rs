//! Long operations the reconciler finishes. Only reimage for now: the API
//! orders a template copy onto the VM's first disc (`Disc.template`) and
//! records a running `Reimage` operation; the disc plan forwards the copy
//! while the VM is stopped; once the tail reports `imaged_seq` at least
//! the ordered seq, the operation is done. The VM starts then because the
//! API set `power_on` when it ordered the reimage (bigv-api.md §5.6: "after
//! it the VM is powered on") and placement waits for the copy; finishing
//! does not touch `power_on`, so a stop ordered meanwhile is kept. Other
//! kinds are left to their own engine, untouched.

use crate::model::{Admission, Operation, OperationKind, OperationState, Role};

use super::discs;
use super::fencing::Liveness;
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

/// How an emptying (of a head or a pool) goes on: what is still there,
/// how each piece moves, and how many move at once.
pub(super) struct Evacuation<T> {
    /// What is still on the head or in the pool.
    pub remaining: Vec<T>,
    /// The piece a migration operation moves, if it moves one of ours.
    pub moves: fn(&OperationKind) -> Option<T>,
    /// The migration operation that moves a piece.
    pub child: fn(T) -> OperationKind,
    pub concurrency: usize,
    /// What a failed move is called in the emptying's error.
    pub name: fn(&Pass<'_>, T) -> String,
    /// The phase shown while pieces move.
    pub phase: &'static str,
}

/// Where an emptying stands after [`drive_evacuation`].
pub(super) enum Emptying {
    /// Nothing remains.
    Empty,
    /// A move it started failed; the text names the piece and why.
    Failed(String),
    /// Pieces are moving: `moved` of `total` are gone.
    Moving { moved: u64, total: u64 },
}

/// Drives an emptying operation: done when nothing remains; failed when
/// a move it started failed; otherwise moving, with its progress.
pub(super) fn evacuate<T: Copy + PartialEq>(p: &mut Pass<'_>, op: &Operation, e: Evacuation<T>) {
    let phase = e.phase;
    let total = op.total.max(e.remaining.len() as u64);
    match drive_evacuation(p, op, total, e) {
        Emptying::Empty => finish(p, op, Ok(())),
        Emptying::Failed(why) => finish(p, op, Err(why)),
        Emptying::Moving { moved, total } => set_phase(p, op, phase, Some((moved, total))),
    }
}

/// One step of emptying on behalf of `op` (an emptying or an upgrade):
/// starts moves, each its own operation (visible and cancellable one by
/// one), up to the concurrency. A failed move counts if it was started
/// after `op` (a later operation id). `total` is how many pieces there
/// were when the emptying began.
pub(super) fn drive_evacuation<T: Copy + PartialEq>(
    p: &mut Pass<'_>,
    op: &Operation,
    total: u64,
    e: Evacuation<T>,
) -> Emptying {
    let total = total.max(e.remaining.len() as u64);
    if e.remaining.is_empty() {
        return Emptying::Empty;
    }
    let mut moving = vec![];
    for other in p.model.operations.values() {
        let Some(piece) = (e.moves)(&other.kind).filter(|t| e.remaining.contains(t)) else {
            continue;
        };
        match other.state {
            OperationState::Running => moving.push(piece),
            OperationState::Failed if other.id.0 > op.id.0 => {
                let why = other.error.clone().unwrap_or_default();
                let name = (e.name)(p, piece);
                return Emptying::Failed(format!("{name} could not move: {why}"));
            }
            _ => {}
        }
    }
    let room = e.concurrency.max(1).saturating_sub(moving.len());
    let starting: Vec<T> = e
        .remaining
        .iter()
        .copied()
        .filter(|t| !moving.contains(t))
        .take(room)
        .collect();
    for piece in starting {
        tracing::info!(operation = op.id.0, piece = %(e.name)(p, piece), "emptying: starting a move");
        p.new_operations.push(Operation {
            id: op.id,
            kind: (e.child)(piece),
            state: OperationState::Running,
            phase: "queued".into(),
            done: 0,
            total: 1,
            error: None,
            created_at: p.now,
            updated_at: p.now,
        });
    }
    Emptying::Moving {
        moved: total - e.remaining.len() as u64,
        total,
    }
}

/// Whether an accepted node of `role` other than `except` is away but not
/// yet counted gone (or still joining): when no destination has room now,
/// a move waits for it rather than failing. Unknown is not dead: after a
/// brain restart, say, every node is unknown until it reconnects.
pub(super) fn peers_may_return(p: &mut Pass<'_>, role: Role, except: &str) -> bool {
    let peers: Vec<String> = p
        .model
        .nodes
        .values()
        .filter(|n| n.role == role && n.admission == Admission::Accepted && n.node_id != except)
        .map(|n| n.node_id.clone())
        .collect();
    peers
        .iter()
        .any(|n| matches!(p.liveness(n), Liveness::Unknown | Liveness::Joining))
}
