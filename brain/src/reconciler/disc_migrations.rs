//! Live disc migration between tails (`bigv admin migrate disc`), driving
//! the tails' mirror protocol (docs/storage.md, "Live migration"):
//!
//! 1. pick the destination pool on another tail (once, kept in the
//!    operation) and create the disc there with `incoming` — it listens
//!    for the mirror and serves nobody yet;
//! 2. once the destination reports its mirror endpoint, every order to
//!    the source carries `migrate_to {seq, to, endpoint}` (an order
//!    without it would cancel the copy); `seq` is the operation id, so a
//!    new operation is a new attempt;
//! 3. the source copies and hands over: it drops its copy and the
//!    destination serves at the same storage address, so the VM's qemu just
//!    reconnects. The disc record then moves to the destination pool.
//!
//! Failure leaves the source serving and the operation failed; an unsure
//! handover is settled by looking at the destination. A cancelled or
//! failed migration's half-made destination is removed, and the source is
//! ordered without `migrate_to`. A copy that serves away from the disc's
//! recorded pool while the recorded tail has none is adopted, never
//! deleted: it may be the only one.

use std::collections::HashSet;

use bigv_spine::Resource;
use bigv_spine::resource::{DiscSpec, IncomingMirror, MigrationOrder, MigrationState};

use crate::model::{Disc, DiscId, Operation, OperationKind, OperationState, Role};
use crate::scheduler::disc_resource;

use super::operations::{Evacuation, evacuate, finish, peers_may_return, set_phase};
use super::orders::Action;
use super::pass::Pass;
use super::snapshot::{ReportedDisc, Snapshot};

const MIB: u64 = 1 << 20;

/// Plans every running disc migration; fills `p.disc_moves` with the
/// `migrate_to` each source must keep being ordered with.
pub(super) fn plan(p: &mut Pass<'_>) {
    let model = p.model;
    for op in model.operations.values() {
        if op.state != OperationState::Running {
            continue;
        }
        match &op.kind {
            OperationKind::MigrateDisc { disc_id, to_pool } => {
                step(p, op, *disc_id, to_pool.as_deref());
            }
            OperationKind::EmptyPool { pool } => empty_pool(p, op, pool),
            _ => {}
        }
    }
    adopt_and_clean(p);
}

/// Where one migration stands, and its next step.
fn step<'a>(p: &mut Pass<'a>, op: &Operation, disc_id: DiscId, to_pool: Option<&str>) {
    let snap: &'a Snapshot = p.snap;
    let Some(disc) = p.disc(disc_id).cloned() else {
        return finish(p, op, Err("the disc was deleted".into()));
    };
    let Some(source_pool) = disc.storage_pool.as_deref().and_then(|l| p.pool(l)) else {
        return finish(p, op, Err("the disc has no pool to move from".into()));
    };
    let source_tail = source_pool.node_id.clone();
    let to_label = match to_pool {
        Some(label) => label.to_owned(),
        None => match pick_destination(p, &disc, &source_tail) {
            Ok(label) => {
                let mut picked = op.clone();
                picked.kind = OperationKind::MigrateDisc {
                    disc_id,
                    to_pool: Some(label.clone()),
                };
                picked.phase = "preparing".into();
                picked.updated_at = p.now;
                p.operations.push(picked);
                return;
            }
            Err(_) if peers_may_return(p, Role::Tail, &source_tail) => {
                return set_phase(p, op, "waiting for a tail to come back", None);
            }
            Err(why) => return finish(p, op, Err(why)),
        },
    };
    let Some(dest_pool) = p.pool(&to_label) else {
        return finish(p, op, Err(format!("pool {to_label} no longer exists")));
    };
    if dest_pool.label == source_pool.label {
        // Already there: nothing to move (or it moved before a restart).
        return finish(p, op, Ok(()));
    }
    if dest_pool.node_id == source_tail {
        return finish(
            p,
            op,
            Err(format!(
                "pool {to_label} is on the same tail; discs move between tails"
            )),
        );
    }
    let dest_tail = dest_pool.node_id.clone();
    let (Some(source), Some(dest)) = (snap.ready(&source_tail), snap.ready(&dest_tail)) else {
        return set_phase(p, op, "waiting for both tails", None);
    };
    let at_source = source
        .discs
        .get(&disc_id)
        .filter(|r| r.grade == disc.storage_grade);
    let at_dest = dest
        .discs
        .get(&disc_id)
        .filter(|r| r.grade == disc.storage_grade);
    let seq = op.id.0;

    // Handed over: the destination serves it.
    if let Some(d) = at_dest.filter(|d| d.spec.incoming.is_none()) {
        if let Some(s) = at_source {
            // An unsure handover that did happen: the source lets go.
            remove(p, &source_tail, s);
            return set_phase(p, op, "handing over", None);
        }
        tracing::info!(disc = disc_id.0, from = %source_pool.label, to = %to_label, "disc migration finished");
        let record = p.disc_mut(disc_id);
        record.storage_pool = Some(to_label.clone());
        record.generation = record.generation.max(d.generation);
        return finish(p, op, Ok(()));
    }
    let Some(at_source) = at_source else {
        return set_phase(
            p,
            op,
            "waiting for the source tail to report the disc",
            None,
        );
    };
    let progress = at_source.spec.migration.as_ref().filter(|m| m.seq == seq);
    match progress.map(|m| m.state) {
        Some(MigrationState::Failed) => {
            let why = progress
                .and_then(|m| m.error.clone())
                .unwrap_or_else(|| "the mirror failed".into());
            return finish(p, op, Err(format!("the copy failed: {why}")));
        }
        Some(MigrationState::Uncertain) if at_dest.is_some() => {
            // The destination did not take over: resume at the source.
            return finish(
                p,
                op,
                Err("the handover was not confirmed and the destination did not take over".into()),
            );
        }
        _ => {}
    }
    if let Some(template) = &disc.template
        && at_source
            .spec
            .imaged_seq
            .is_none_or(|done| done < template.seq)
    {
        return set_phase(p, op, "waiting for imaging to finish", None);
    }
    let Some(at_dest) = at_dest else {
        return create_destination(
            p,
            op,
            &disc,
            &dest_tail,
            dest_pool.name.clone(),
            &source_tail,
        );
    };
    let Some(endpoint) = at_dest
        .spec
        .incoming
        .as_ref()
        .and_then(|i| i.endpoint.clone())
    else {
        return set_phase(p, op, "preparing", None);
    };
    // Backups travel with the disc when both tails know how.
    let speaks = |tail: &str| {
        p.snap
            .nodes
            .get(tail)
            .is_some_and(|n| n.info.protocol_version >= super::snapshot::MOVING_BACKUPS_PROTOCOL)
    };
    let backups = speaks(&source_tail) && speaks(&dest_tail);
    p.disc_moves.insert(
        disc_id,
        MigrationOrder {
            seq,
            to: dest_tail.clone(),
            endpoint,
            backups,
        },
    );
    follow_acl(p, &disc, &dest_tail, at_dest);
    let done = progress.map(|m| (m.bytes_done / MIB, m.bytes_total.div_ceil(MIB)));
    set_phase(p, op, "copying", done);
}

/// Emptying a pool: its discs move to other tails, as many at once as the
/// pool's `migration_concurrency`.
fn empty_pool(p: &mut Pass<'_>, op: &Operation, label: &str) {
    let Some(pool) = p.pool(label) else {
        return finish(p, op, Err(format!("pool {label} no longer exists")));
    };
    let e = pools_evacuation(p, &[label], pool.migration_concurrency as usize);
    evacuate(p, op, e);
}

/// What emptying pools means: the discs in any of `labels` move to pools
/// on other tails, `concurrency` at a time.
pub(super) fn pools_evacuation(
    p: &Pass<'_>,
    labels: &[&str],
    concurrency: usize,
) -> Evacuation<DiscId> {
    let remaining: Vec<DiscId> = p
        .model
        .discs
        .keys()
        .map(|id| DiscId(*id))
        .filter(|id| {
            p.disc(*id)
                .and_then(|d| d.storage_pool.as_deref())
                .is_some_and(|l| labels.contains(&l))
        })
        .collect();
    Evacuation {
        remaining,
        moves: |kind| match kind {
            OperationKind::MigrateDisc { disc_id, .. } => Some(*disc_id),
            _ => None,
        },
        child: |disc_id| OperationKind::MigrateDisc {
            disc_id,
            to_pool: None,
        },
        concurrency,
        name: |_, disc| format!("disc {}", disc.0),
        phase: "moving discs",
    }
}

/// The emptiest pool of the disc's grade on another tail.
fn pick_destination(p: &mut Pass<'_>, disc: &Disc, source_tail: &str) -> Result<String, String> {
    let model = p.model;
    let same_tail: Vec<&str> = model
        .pools
        .values()
        .filter(|pool| pool.node_id == source_tail)
        .map(|pool| pool.label.as_str())
        .collect();
    let facts = p.facts();
    let label = facts
        .pick_pool(&disc.storage_grade, disc.size, &same_tail)
        .map_err(|e| format!("no pool on another tail can take it: {}", e.reason))?;
    facts.reserve_pool(&label, disc.size);
    Ok(label)
}

fn create_destination(
    p: &mut Pass<'_>,
    op: &Operation,
    disc: &Disc,
    dest_tail: &str,
    pool_name: String,
    source_tail: &str,
) {
    let name = disc_resource(disc);
    let (Some(address), Some(from)) = (disc.address.clone(), p.node_address(source_tail)) else {
        return set_phase(p, op, "waiting for the source tail's address", None);
    };
    if !p.may_order(dest_tail, &name) {
        return;
    }
    let dest_pool = p
        .model
        .pools
        .values()
        .find(|pl| pl.node_id == dest_tail && pl.name == pool_name);
    let version = p
        .snap
        .nodes
        .get(dest_tail)
        .map_or(0, |n| n.info.protocol_version);
    let limits = super::disc_limits::disc_limits_for(version, disc, dest_pool);
    // Where backups sent along land: the tail's iceberg pool, if any.
    let backups = (version >= super::snapshot::MOVING_BACKUPS_PROTOCOL)
        .then(|| super::discs::iceberg_pool(p, dest_tail))
        .flatten()
        .map(|pool| bigv_spine::backup::DiscBackups {
            pool: Some(pool),
            ..Default::default()
        });
    let spec = DiscSpec {
        size: disc.size,
        storage_pool: pool_name,
        access_control_list: super::discs::desired_acl_list(p, disc),
        address,
        // Content comes by mirror, template copy included: the tail
        // counts it as done and copies nothing.
        template: disc.template.clone(),
        incoming: Some(IncomingMirror {
            from: from.to_owned(),
            endpoint: None,
        }),
        limits,
        backups,
        ..DiscSpec::default()
    };
    let Ok(resource) = Resource::new(name, bigv_spine::ResourceValue::Disc(spec)) else {
        return;
    };
    tracing::info!(disc = disc.id.0, tail = %dest_tail, "creating the migration's destination");
    let generation = bump(p, disc.id, disc.generation);
    p.order(dest_tail, Action::Create(resource), generation);
    set_phase(p, op, "preparing", None);
}

/// Keeps the destination's ACL on the VM's current head, so it serves the
/// right head from the handover on.
fn follow_acl(p: &mut Pass<'_>, disc: &Disc, dest_tail: &str, at_dest: &ReportedDisc) {
    let acl = super::discs::desired_acl_list(p, disc);
    if at_dest.spec.access_control_list == acl || !p.may_order(dest_tail, &at_dest.name) {
        return;
    }
    let spec = DiscSpec {
        access_control_list: acl,
        allocated: None,
        migration: None,
        ..at_dest.spec.clone()
    };
    if let Ok(resource) = Resource::new(at_dest.name.clone(), bigv_spine::ResourceValue::Disc(spec))
    {
        let generation = bump(p, disc.id, at_dest.generation);
        p.order(dest_tail, Action::Update(resource), generation);
    }
}

/// Copies of a disc on tails other than its recorded pool's, with no
/// migration running for it: a half-made destination is removed; one that
/// serves while the recorded tail has nothing is adopted.
fn adopt_and_clean(p: &mut Pass<'_>) {
    let (model, snap) = (p.model, p.snap);
    let moving: HashSet<DiscId> = model
        .operations
        .values()
        .filter(|op| op.state == OperationState::Running)
        .filter_map(|op| match op.kind {
            OperationKind::MigrateDisc { disc_id, .. } => Some(disc_id),
            _ => None,
        })
        .collect();
    for node in snap.nodes.values().filter(|n| n.ready) {
        let node_id = node.info.node_id.as_str();
        for (id, copy) in &node.discs {
            if moving.contains(id) {
                continue;
            }
            let Some(disc) = p.disc(*id).filter(|d| d.storage_grade == copy.grade) else {
                continue;
            };
            let Some(home) = disc.storage_pool.as_deref().and_then(|l| p.pool(l)) else {
                continue;
            };
            if home.node_id == node_id {
                continue;
            }
            if copy.spec.incoming.is_some() {
                tracing::info!(disc = id.0, tail = %node_id, "removing the destination of a migration that ended");
                remove(p, node_id, copy);
                continue;
            }
            let home_has_it = snap.ready(&home.node_id).map(|n| n.discs.contains_key(id));
            if home_has_it == Some(false) {
                let label = model
                    .pools
                    .values()
                    .find(|pool| pool.node_id == node_id && pool.name == copy.spec.storage_pool)
                    .map(|pool| pool.label.clone());
                if let Some(label) = label {
                    tracing::warn!(disc = id.0, tail = %node_id, pool = %label, "a tail serves a disc recorded elsewhere, which does not have it: adopting that copy");
                    p.disc_mut(*id).storage_pool = Some(label);
                }
            }
        }
    }
}

fn remove(p: &mut Pass<'_>, node: &str, copy: &ReportedDisc) {
    if p.may_order(node, &copy.name) {
        let generation = match copy.name.clone() {
            bigv_spine::ResourceName::Disc { id, .. } => match id.parse().ok().map(DiscId) {
                Some(id) if p.model.disc(id).is_some() => bump(p, id, copy.generation),
                _ => copy.generation + 1,
            },
            _ => copy.generation + 1,
        };
        p.order(node, Action::Remove(copy.name.clone()), generation);
    }
}

/// The next generation for an order about the disc, above both its record
/// and what the node reports, kept in the record: a tail remembers the
/// generations it applied, so a number used once must never be used again
/// for another order (a disc moving back to a tail it left would have its
/// create taken for a repeat and ignored).
fn bump(p: &mut Pass<'_>, id: DiscId, reported: u64) -> u64 {
    let record = p.disc_mut(id);
    record.generation = record.generation.max(reported) + 1;
    record.generation
}
