//! Rolling upgrades (`bigv admin upgrade start VERSION`, docs/architecture.md
//! "Rolling upgrade"). The API checks the version is a stored node image,
//! makes it the cluster's target (what a rebooting machine network-boots)
//! and records the nodes in order: heads first, then tails, each by label.
//! This file moves through them one at a time, so at most one node is out
//! of service:
//!
//! 1. **evacuating**: the node's usage strategy becomes `empty` (nothing
//!    new lands on it) and its VMs migrate live to other heads (a tail: its
//!    discs move to other tails), with the same moves `empty head` and
//!    `empty storage pool` make, each its own operation, anti-affinity
//!    honoured by the scheduler;
//! 2. **rebooting**: once the model places nothing there and the node
//!    reports nothing, it is ordered to reboot (spine `power` order);
//! 3. **booting**: it has left the spine; it must come back, within the
//!    upgrade's timeout of the order, reporting the version;
//! 4. **done**: back on the version (and, if the brain booted it, on what
//!    its boot script named): its usage strategy is put back, so the
//!    scheduler uses it again; the next node starts.
//!
//! A node already on the version is skipped, and so is one that is offline
//! when its turn comes (it boots the target when it comes back). A node
//! that comes back on another version, or not in time, fails the upgrade:
//! it stays out of service and no later node is touched. A move that fails
//! fails the upgrade too, and the node goes back into service untouched.
//!
//! Everything the steps need is in the operation record or re-read from
//! the spine each pass, so a restarted brain resumes where it was. What
//! it cannot know after a restart is whether a reboot order went out: a
//! node in `rebooting` that is still on its old version is ordered again
//! (it is empty, so a second reboot costs only time).

use std::time::Duration;

use bigv_spine::PowerAction;

use crate::boot::check::expected_version;
use crate::model::{Operation, OperationKind, OperationState, Role, UpgradeNode, UpgradeStep};

use super::disc_migrations::pools_evacuation;
use super::fencing::Liveness;
use super::operations::{Emptying, drive_evacuation};
use super::pass::Pass;
use super::vm_migrations::head_evacuation;

/// A reboot order the node neither obeyed nor refused is repeated after
/// this long.
const REORDER_AFTER: Duration = Duration::from_secs(15);

pub(super) fn plan(p: &mut Pass<'_>) {
    let model = p.model;
    for op in model.operations.values() {
        if op.state == OperationState::Running && matches!(op.kind, OperationKind::Upgrade { .. }) {
            step(p, op);
        }
    }
}

/// How a pass left the upgrade.
enum Outcome {
    Going,
    Finished,
    Failed(String),
}

fn step(p: &mut Pass<'_>, op: &Operation) {
    let OperationKind::Upgrade {
        version,
        from_version,
        reboot_timeout_secs,
        nodes,
    } = &op.kind
    else {
        return;
    };
    let mut nodes = nodes.clone();
    let mut detail = String::new();
    let outcome = advance(
        p,
        op,
        version,
        *reboot_timeout_secs,
        &mut nodes,
        &mut detail,
    );
    let mut next = op.clone();
    next.done = nodes
        .iter()
        .filter(|n| matches!(n.step, UpgradeStep::Done | UpgradeStep::Skipped))
        .count() as u64;
    next.total = (nodes.len() as u64).max(1);
    next.phase = match nodes.iter().find(|n| is_active(n.step)) {
        Some(n) if detail.is_empty() => format!("{}: {}", n.label, n.step.as_str()),
        Some(n) => format!("{}: {} ({detail})", n.label, n.step.as_str()),
        None => "done".into(),
    };
    match outcome {
        Outcome::Going => {}
        Outcome::Finished => {
            tracing::info!(operation = op.id.0, %version, "upgrade finished");
            next.state = OperationState::Done;
            next.phase = "done".into();
            next.done = next.total;
        }
        Outcome::Failed(why) => {
            tracing::warn!(operation = op.id.0, %version, %why, "upgrade stopped");
            next.state = OperationState::Failed;
            next.phase = "failed".into();
            next.error = Some(why);
        }
    }
    next.kind = OperationKind::Upgrade {
        version: version.clone(),
        from_version: from_version.clone(),
        reboot_timeout_secs: *reboot_timeout_secs,
        nodes,
    };
    if next != *op {
        next.updated_at = p.now;
        p.operations.push(next);
    }
}

/// Steps the upgrade may be in for a node that is its current one.
fn is_active(step: UpgradeStep) -> bool {
    matches!(
        step,
        UpgradeStep::Evacuating | UpgradeStep::Rebooting | UpgradeStep::Booting
    )
}

/// Moves the current node on as far as it can go in this pass (skipping
/// or finishing a node goes straight on to the next).
fn advance(
    p: &mut Pass<'_>,
    op: &Operation,
    version: &str,
    timeout: u64,
    nodes: &mut [UpgradeNode],
    detail: &mut String,
) -> Outcome {
    let done_before = |nodes: &[UpgradeNode]| {
        nodes
            .iter()
            .filter(|n| matches!(n.step, UpgradeStep::Done | UpgradeStep::Skipped))
            .count()
    };
    loop {
        let total = nodes.len();
        let Some(i) = nodes
            .iter()
            .position(|n| !matches!(n.step, UpgradeStep::Done | UpgradeStep::Skipped))
        else {
            return Outcome::Finished;
        };
        let done = done_before(nodes);
        detail.clear();
        let n = &mut nodes[i];
        let before = n.step;
        match n.step {
            UpgradeStep::Pending => begin(p, n, version),
            UpgradeStep::Evacuating => {
                if let Err(why) = evacuate(p, op, n, detail) {
                    return Outcome::Failed(why);
                }
            }
            UpgradeStep::Rebooting => rebooting(p, n, version),
            UpgradeStep::Booting => {
                if let Err(why) = booting(p, n, version, done, total) {
                    return Outcome::Failed(why);
                }
            }
            UpgradeStep::Failed => {
                return Outcome::Failed(
                    n.note
                        .clone()
                        .unwrap_or_else(|| format!("{} failed", n.label)),
                );
            }
            UpgradeStep::Done | UpgradeStep::Skipped => {}
        }
        // Timeouts count from the reboot order, whatever the step.
        if matches!(n.step, UpgradeStep::Rebooting | UpgradeStep::Booting)
            && let Some(at) = n.reboot_at
            && p.now > at.saturating_add(timeout)
        {
            let why = format!(
                "{} did not come back on the spine with image version {version} within {timeout} s of its reboot order{}; the upgrade stopped with {done} of {total} nodes done, {} stays out of service and the nodes after it were not touched",
                n.label,
                if n.step == UpgradeStep::Rebooting {
                    " (it never went down)"
                } else {
                    ""
                },
                n.label
            );
            n.step = UpgradeStep::Failed;
            n.note = Some(why.clone());
            n.finished_at = Some(p.now);
            return Outcome::Failed(why);
        }
        if n.step == before {
            // Waiting for something a later pass will see.
            return Outcome::Going;
        }
        if before == UpgradeStep::Pending && n.step == UpgradeStep::Evacuating {
            // The node is marked empty from this pass on; its moves start
            // in the next, with placement facts that see it so.
            return Outcome::Going;
        }
    }
}

/// The node's turn comes: skip it, or take it out of service.
fn begin(p: &mut Pass<'_>, n: &mut UpgradeNode, version: &str) {
    let Some(record) = p.node(&n.node_id).cloned() else {
        skip(n, p.now, "the node is no longer known".into());
        return;
    };
    let Some(reported) = p
        .snap
        .nodes
        .get(&n.node_id)
        .map(|s| s.info.image_version.clone())
    else {
        // Gone only a moment (or the brain just restarted and it has not
        // reconnected yet): wait. Gone for good: leave it.
        if p.liveness(&n.node_id) == Liveness::Fenced {
            skip(
                n,
                p.now,
                format!("offline when its turn came; it boots {version} when it comes back"),
            );
        }
        return;
    };
    n.started_at = Some(p.now);
    if reported == version {
        skip(n, p.now, format!("already on {version}"));
        return;
    }
    tracing::info!(node = %n.node_id, label = %n.label, %version, "upgrade: taking the node out of service");
    n.usage_strategy = record.usage_strategy.clone();
    n.step = UpgradeStep::Evacuating;
    n.to_move = match n.role {
        Role::Head => head_evacuation(p, &n.node_id).remaining.len(),
        Role::Tail => tail_evacuation(p, &n.node_id).remaining.len(),
    } as u64;
    if let Some(node) = p.node_mut(&n.node_id) {
        node.usage_strategy = Some("empty".into());
    }
}

fn skip(n: &mut UpgradeNode, now: u64, why: String) {
    n.step = UpgradeStep::Skipped;
    n.note = Some(why);
    n.finished_at = Some(now);
}

/// Emptying a tail: the discs in all its pools, at the highest
/// concurrency of any of them.
fn tail_evacuation(
    p: &Pass<'_>,
    node_id: &str,
) -> super::operations::Evacuation<crate::model::DiscId> {
    let pools: Vec<&str> = p
        .model
        .pools_of(node_id)
        .map(|pool| pool.label.as_str())
        .collect();
    let concurrency = p
        .model
        .pools_of(node_id)
        .map(|pool| pool.migration_concurrency as usize)
        .max()
        .unwrap_or(1);
    pools_evacuation(p, &pools, concurrency)
}

/// Moves what the node holds away; once nothing is placed there and the
/// node reports nothing, orders its reboot.
fn evacuate(
    p: &mut Pass<'_>,
    op: &Operation,
    n: &mut UpgradeNode,
    detail: &mut String,
) -> Result<(), String> {
    if p.liveness(&n.node_id) == Liveness::Fenced {
        let why = format!(
            "{} left the spine while it was being emptied; the upgrade stopped",
            n.label
        );
        n.step = UpgradeStep::Failed;
        n.note = Some(why.clone());
        n.finished_at = Some(p.now);
        return Err(why);
    }
    let emptying = match n.role {
        Role::Head => {
            let e = head_evacuation(p, &n.node_id);
            drive_evacuation(p, op, n.to_move, e)
        }
        Role::Tail => {
            let e = tail_evacuation(p, &n.node_id);
            drive_evacuation(p, op, n.to_move, e)
        }
    };
    match emptying {
        Emptying::Failed(why) => {
            let why = format!(
                "{} could not be emptied: {why}; the upgrade stopped, {} is back in service and the nodes after it were not touched",
                n.label, n.label
            );
            // Nothing was done to it: it goes back into service.
            let strategy = n.usage_strategy.clone();
            if let Some(node) = p.node_mut(&n.node_id) {
                node.usage_strategy = strategy;
            }
            n.step = UpgradeStep::Failed;
            n.note = Some(why.clone());
            n.finished_at = Some(p.now);
            Err(why)
        }
        Emptying::Moving { moved, total } => {
            let what = match n.role {
                Role::Head => "servers",
                Role::Tail => "discs",
            };
            *detail = format!("{moved} of {total} {what} moved");
            Ok(())
        }
        Emptying::Empty => {
            // The node itself must have let go too (a migrated VM's source
            // copy, a moved disc's old copy) before it may reboot.
            let holds = p.snap.ready(&n.node_id).map(|s| match n.role {
                Role::Head => s.vms.len(),
                Role::Tail => s.discs.len(),
            });
            match holds {
                Some(0) => {
                    order_reboot(p, &n.node_id);
                    n.step = UpgradeStep::Rebooting;
                    n.reboot_at = Some(p.now);
                    tracing::info!(node = %n.node_id, label = %n.label, "upgrade: node empty, rebooting it");
                }
                Some(left) => *detail = format!("waiting for it to let go of {left}"),
                None => *detail = "waiting for it on the spine".into(),
            }
            Ok(())
        }
    }
}

fn order_reboot(p: &mut Pass<'_>, node_id: &str) {
    let Some(conn) = p.snap.nodes.get(node_id).map(|s| s.info.conn) else {
        return;
    };
    p.recall
        .reboots
        .insert(node_id.to_owned(), (conn, p.instant));
    p.power_orders
        .push((node_id.to_owned(), PowerAction::Reboot));
}

/// Ordered to reboot: waits for the node to leave the spine (or to be
/// back on a new connection already).
fn rebooting(p: &mut Pass<'_>, n: &mut UpgradeNode, version: &str) {
    let current = p
        .snap
        .nodes
        .get(&n.node_id)
        .map(|s| (s.info.conn, s.info.image_version == version));
    let sent = p.recall.reboots.get(&n.node_id).copied();
    let gone = match (current, sent) {
        (None, Some(_)) => true,
        // A restarted brain, with the node not back yet: it may be
        // rebooting, or the order may never have gone out. Its hello
        // tells (the version), so wait for it.
        (None, None) => false,
        (Some((conn, _)), Some((ordered_on, _))) if conn != ordered_on => true,
        (Some((_, on_version)), None) if on_version => {
            // A restarted brain: it went down and came back meanwhile.
            true
        }
        (Some(_), None) => {
            // A restarted brain does not know whether the order went out.
            order_reboot(p, &n.node_id);
            false
        }
        (Some(_), Some((_, at))) => {
            if p.instant.duration_since(at) >= REORDER_AFTER {
                tracing::warn!(node = %n.node_id, "upgrade: the node is still up after its reboot order; ordering again");
                order_reboot(p, &n.node_id);
            }
            false
        }
    };
    if gone {
        p.recall.reboots.remove(&n.node_id);
        n.step = UpgradeStep::Booting;
        n.down_at = Some(p.now);
    }
}

/// Gone from the spine: waits for the node to come back, checks its
/// version and puts it back into service.
fn booting(
    p: &mut Pass<'_>,
    n: &mut UpgradeNode,
    version: &str,
    done: usize,
    total: usize,
) -> Result<(), String> {
    let Some(snap) = p.snap.nodes.get(&n.node_id) else {
        return Ok(());
    };
    let reported = snap.info.image_version.clone();
    let ready = snap.ready;
    let booted = p
        .node(&n.node_id)
        .and_then(|record| expected_version(p.model, record))
        .map(str::to_owned);
    let problem = if reported != version {
        Some(format!(
            "came back on image version {reported}, expected {version}"
        ))
    } else {
        booted
            .filter(|b| b != version)
            .map(|b| format!("reports image version {version} but its boot script named {b}"))
    };
    if let Some(problem) = problem {
        let why = format!(
            "{} {problem}; the upgrade stopped with {done} of {total} nodes done, {} stays out of service (set its usage strategy back to default to re-admit it) and the nodes after it were not touched",
            n.label, n.label
        );
        n.step = UpgradeStep::Failed;
        n.note = Some(why.clone());
        n.finished_at = Some(p.now);
        return Err(why);
    }
    if !ready {
        return Ok(());
    }
    let strategy = n.usage_strategy.clone();
    if let Some(node) = p.node_mut(&n.node_id) {
        node.usage_strategy = strategy;
    }
    tracing::info!(node = %n.node_id, label = %n.label, %version, "upgrade: node back on the new version and in service");
    n.step = UpgradeStep::Done;
    n.finished_at = Some(p.now);
    Ok(())
}
