//! Migrations and evacuations: the operator states the goal, this records
//! it as a running `Operation`, and the reconciler carries it out and
//! reports progress on the record. One running operation per VM, disc,
//! head or pool: a second is refused until the first ends or is cancelled.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::nodes::{find_node, vms_on};
use super::pools::find_pool;
use super::{admin, body, disc_view, node_label, progress, running, vm_short_name, vm_view};
use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::error::ApiError;
use crate::api::fields::truthy;
use crate::model::{
    Admission, AffinityPolicy, Disc, Model, Node, Operation, OperationId, OperationKind,
    OperationState, Pool, Role, Vm,
};
use crate::scheduler::Facts;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/vms/{id}/migrate", post(migrate_vm))
        .route(
            "/admin/vms/{id}/cancel_migration",
            post(cancel_vm_migration),
        )
        .route("/admin/discs/{id}/migrate", post(migrate_disc))
        .route(
            "/admin/discs/{id}/cancel_migration",
            post(cancel_disc_migration),
        )
        .route("/admin/heads/{id}/empty", post(empty_head))
        .route("/admin/storage_pools/{label}/empty", post(empty_pool))
        .route("/admin/migrating_vms", get(migrating_vms))
        .route("/admin/migrating_discs", get(migrating_discs))
        .route("/admin/migration_jobs", get(list_jobs))
        .route("/admin/migration_jobs/{id}", get(show_job))
}

pub(super) fn state_name(state: OperationState) -> &'static str {
    match state {
        OperationState::Running => "running",
        OperationState::Done => "done",
        OperationState::Failed => "failed",
        OperationState::Cancelled => "cancelled",
    }
}

/// One line an operator can read.
fn describe(model: &Model, kind: &OperationKind) -> String {
    let vm_name = |id| {
        model
            .vm(id)
            .map_or_else(|| format!("server {id}"), |vm| vm_short_name(model, vm))
    };
    match kind {
        OperationKind::MigrateVm { vm_id, to_head, .. } => format!(
            "migrate {} to {}",
            vm_name(*vm_id),
            to_head.as_deref().map_or_else(
                || "a head the scheduler picks".into(),
                |h| node_label(model, h)
            )
        ),
        OperationKind::MigrateDisc { disc_id, to_pool } => format!(
            "migrate disc {disc_id}{} to {}",
            model
                .disc(*disc_id)
                .map(|d| format!(" ({} of {})", d.label, vm_name(d.vm_id)))
                .unwrap_or_default(),
            to_pool.as_deref().unwrap_or("a pool the scheduler picks")
        ),
        OperationKind::EmptyHead { node_id } => format!("empty {}", node_label(model, node_id)),
        OperationKind::EmptyPool { pool } => format!("empty {pool}"),
        OperationKind::Reimage {
            vm_id,
            distribution,
        } => format!("reimage {} with {distribution}", vm_name(*vm_id)),
        OperationKind::Upgrade { version, .. } => format!("upgrade the nodes to {version}"),
    }
}

/// An operation as JSON: the kind's own fields (`kind`, `vm_id`,
/// `to_head`…), then state and progress, with readable timestamps.
pub(super) fn operation_view(model: &Model, op: &Operation) -> Value {
    let mut view = serde_json::to_value(&op.kind).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut view {
        for (key, value) in [
            ("id", json!(op.id)),
            ("description", json!(describe(model, &op.kind))),
            ("state", json!(state_name(op.state))),
            ("phase", json!(op.phase)),
            ("done", json!(op.done)),
            ("total", json!(op.total)),
            ("progress", json!(progress(op))),
            ("error", json!(op.error)),
            (
                "created_at",
                json!(crate::api::time::format_time(op.created_at)),
            ),
            (
                "updated_at",
                json!(crate::api::time::format_time(op.updated_at)),
            ),
        ] {
            map.insert(key.into(), value);
        }
        if let OperationKind::Upgrade { nodes, .. } = &op.kind {
            super::upgrades::add_progress(map, nodes);
        }
    }
    view
}

pub(super) fn new_operation(id: u64, kind: OperationKind, total: u64, now: u64) -> Operation {
    Operation {
        id: OperationId(id),
        kind,
        state: OperationState::Running,
        phase: "queued".into(),
        done: 0,
        total,
        error: None,
        created_at: now,
        updated_at: now,
    }
}

/// A VM by id, as the Go client addresses it (`/admin/vms/{id}`).
fn find_vm<'m>(model: &'m Model, seg: &str) -> Result<&'m Vm, ApiError> {
    seg.parse::<u64>()
        .ok()
        .and_then(|id| model.vms.get(&id))
        .filter(|vm| !vm.deleted)
        .ok_or(ApiError::NotFound)
}

fn find_disc<'m>(model: &'m Model, seg: &str) -> Result<&'m Disc, ApiError> {
    seg.parse::<u64>()
        .ok()
        .and_then(|id| model.discs.get(&id))
        .ok_or(ApiError::NotFound)
}

/// The running operation that already works on this VM (a migration or a
/// reimage), which a new migration would fight with.
fn vm_busy(model: &Model, vm: &Vm) -> Option<Operation> {
    running(model, |k| match k {
        OperationKind::MigrateVm { vm_id, .. } | OperationKind::Reimage { vm_id, .. } => {
            *vm_id == vm.id
        }
        _ => false,
    })
    .cloned()
}

pub(super) fn busy_error(model: &Model, what: &str, op: &Operation) -> ApiError {
    ApiError::refused(format!(
        "{what} already has operation {} running ({}); wait for it or cancel it first",
        op.id,
        describe(model, &op.kind)
    ))
}

/// Why a node cannot take new work now.
fn unusable_reason(state: &AppState, node: &Node) -> &'static str {
    if node.admission == Admission::Pending {
        "is waiting to be accepted"
    } else if node.usage_strategy.as_deref() == Some("empty") {
        "is being emptied"
    } else if !state
        .spine
        .node(&node.node_id)
        .is_some_and(|h| h.is_ready())
    {
        "is offline"
    } else {
        "cannot take work now"
    }
}

/// The head an operator named for `vm`, if it can take it: usable, not
/// where the VM already is, with the memory free, and without a member of
/// the VM's anti-affinity group (policy `fail`).
fn check_head(
    state: &AppState,
    model: &Model,
    facts: &Facts,
    vm: &Vm,
    spec: &str,
) -> Result<String, String> {
    let node =
        find_node(model, Role::Head, spec).map_err(|_| format!("no head is called {spec:?}"))?;
    if vm.head.as_deref() == Some(&node.node_id) {
        return Err(format!("{} already runs on {}", vm.name, node.label));
    }
    let head = facts
        .heads
        .get(&node.node_id)
        .filter(|h| h.usable)
        .ok_or_else(|| format!("{} {}", node.label, unusable_reason(state, node)))?;
    if head.free_memory < vm.memory {
        return Err(format!(
            "{} has {} MiB free; {} needs {} MiB",
            node.label, head.free_memory, vm.name, vm.memory
        ));
    }
    let group = vm
        .anti_affinity_group
        .and_then(|g| model.affinity_groups.get(&g.0))
        .filter(|g| g.policy == AffinityPolicy::Fail);
    if let Some(group) = group {
        let clash = head
            .vms
            .iter()
            .filter_map(|id| model.vm(*id))
            .find(|other| other.id != vm.id && other.anti_affinity_group == Some(group.id));
        if let Some(other) = clash {
            return Err(format!(
                "{} runs {}, which is in the same anti-affinity group ({})",
                node.label, other.name, group.name
            ));
        }
    }
    Ok(node.node_id.clone())
}

async fn migrate_vm(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&state, &caller)?;
    let mut f = body(&headers, &bytes)?;
    let spec = f.string("new_head_spec").filter(|s| !s.trim().is_empty());
    let now = state.clock.now();
    let st = state.clone();
    let op = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let vm = find_vm(model, &id)?.clone();
            // A stopped VM has nothing to move: it starts wherever there
            // is room.
            let current = match &vm.head {
                Some(head) if vm.power_on || vm.autoreboot_on => head.clone(),
                _ => {
                    return Err(ApiError::refused(format!(
                        "{} is not running on any head; start it rather than migrate it",
                        vm_short_name(model, &vm)
                    )));
                }
            };
            if let Some(op) = vm_busy(model, &vm) {
                return Err(busy_error(model, &vm_short_name(model, &vm), &op));
            }
            let facts = Facts::gather(model, &st.spine);
            let to_head = match spec {
                Some(spec) => match check_head(&st, model, &facts, &vm, spec.trim()) {
                    Ok(node_id) => Some(node_id),
                    Err(problem) => {
                        f.error("new_head_spec", problem);
                        None
                    }
                },
                None => {
                    if let Err(e) = facts.pick_head(model, &vm, &[&current]) {
                        f.error(
                            "new_head_spec",
                            format!("no other head can take {}: {}", vm.name, e.reason),
                        );
                    }
                    None
                }
            };
            f.finish()?;
            let kind = OperationKind::MigrateVm {
                vm_id: vm.id,
                to_head,
                downtime_ms: None,
            };
            let op = new_operation(tx.new_id::<Operation>()?, kind, 0, now);
            tx.put(op.clone())?;
            tracing::info!(operation = %op.id, vm = %vm.id, "VM migration requested");
            Ok(op)
        })
        .await?;
    state.reconcile.notify_one();
    let model = state.db.read();
    Ok((StatusCode::ACCEPTED, Json(operation_view(&model, &op))))
}

/// The pool an operator named for `disc`, if it can take it: the same
/// grade (a migration never regrades), usable, and with room under its
/// overcommit ceiling.
fn check_pool(
    state: &AppState,
    model: &Model,
    facts: &Facts,
    disc: &Disc,
    spec: &str,
) -> Result<String, String> {
    let pool: &Pool =
        find_pool(model, spec).map_err(|_| format!("no storage pool is called {spec:?}"))?;
    if disc.storage_pool.as_deref() == Some(&pool.label) {
        return Err(format!("disc {} is already in {}", disc.id, pool.label));
    }
    if pool.grade != disc.storage_grade {
        return Err(format!(
            "{} is {} storage but disc {} is {}; a migration keeps the grade",
            pool.label, pool.grade, disc.id, disc.storage_grade
        ));
    }
    let facts = facts.pools.get(&pool.label).filter(|p| p.usable);
    let Some(target) = facts else {
        let reason = match model.nodes.get(&pool.node_id) {
            _ if pool.usage_strategy.as_deref() == Some("empty") => "is being emptied",
            Some(tail) => unusable_reason(state, tail),
            None => "belongs to no known tail",
        };
        return Err(format!("{} {reason}", pool.label));
    };
    if target.room() < disc.size {
        return Err(format!(
            "{} has room for {} MiB; disc {} needs {} MiB",
            pool.label,
            target.room(),
            disc.id,
            disc.size
        ));
    }
    Ok(pool.label.clone())
}

async fn migrate_disc(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&state, &caller)?;
    let mut f = body(&headers, &bytes)?;
    let spec = f.string("new_pool_spec").filter(|s| !s.trim().is_empty());
    let now = state.clock.now();
    let st = state.clone();
    let op = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let disc = find_disc(model, &id)?.clone();
            let Some(current) = disc.storage_pool.clone() else {
                return Err(ApiError::refused(format!(
                    "disc {} has not been placed in a pool yet",
                    disc.id
                )));
            };
            let busy = running(model, |k| match k {
                OperationKind::MigrateDisc { disc_id, .. } => *disc_id == disc.id,
                OperationKind::Reimage { vm_id, .. } => *vm_id == disc.vm_id,
                _ => false,
            });
            if let Some(op) = busy {
                return Err(busy_error(model, &format!("disc {}", disc.id), op));
            }
            let facts = Facts::gather(model, &st.spine);
            let to_pool = match spec {
                Some(spec) => match check_pool(&st, model, &facts, &disc, spec.trim()) {
                    Ok(label) => Some(label),
                    Err(problem) => {
                        f.error("new_pool_spec", problem);
                        None
                    }
                },
                None => {
                    if let Err(e) = facts.pick_pool(&disc.storage_grade, disc.size, &[&current]) {
                        f.error(
                            "new_pool_spec",
                            format!("no other pool can take disc {}: {}", disc.id, e.reason),
                        );
                    }
                    None
                }
            };
            f.finish()?;
            let kind = OperationKind::MigrateDisc {
                disc_id: disc.id,
                to_pool,
            };
            let op = new_operation(tx.new_id::<Operation>()?, kind, disc.size, now);
            tx.put(op.clone())?;
            tracing::info!(operation = %op.id, disc = %disc.id, "disc migration requested");
            Ok(op)
        })
        .await?;
    state.reconcile.notify_one();
    let model = state.db.read();
    Ok((StatusCode::ACCEPTED, Json(operation_view(&model, &op))))
}

/// Marks the running operation matching `pred` cancelled; the reconciler
/// stops the work and leaves the VM or disc where it was.
fn cancel(
    tx: &mut crate::model::Tx<'_>,
    what: String,
    now: u64,
    pred: impl Fn(&OperationKind) -> bool,
) -> Result<Operation, ApiError> {
    let Some(mut op) = running(tx.model(), pred).cloned() else {
        return Err(ApiError::refused(format!(
            "{what} has no migration running"
        )));
    };
    op.state = OperationState::Cancelled;
    op.phase = "cancelled".into();
    op.updated_at = now;
    tx.put(op.clone())?;
    tracing::info!(operation = %op.id, "migration cancelled");
    Ok(op)
}

async fn cancel_vm_migration(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let now = state.clock.now();
    let op = state
        .db
        .write(move |tx| {
            let vm = find_vm(tx.model(), &id)?.clone();
            let what = vm_short_name(tx.model(), &vm);
            cancel(
                tx,
                what,
                now,
                |k| matches!(k, OperationKind::MigrateVm { vm_id, .. } if *vm_id == vm.id),
            )
        })
        .await?;
    state.reconcile.notify_one();
    let model = state.db.read();
    Ok(Json(operation_view(&model, &op)))
}

async fn cancel_disc_migration(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let now = state.clock.now();
    let op = state
        .db
        .write(move |tx| {
            let disc = find_disc(tx.model(), &id)?.id;
            cancel(
                tx,
                format!("disc {disc}"),
                now,
                |k| matches!(k, OperationKind::MigrateDisc { disc_id, .. } if *disc_id == disc),
            )
        })
        .await?;
    state.reconcile.notify_one();
    let model = state.db.read();
    Ok(Json(operation_view(&model, &op)))
}

async fn empty_head(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&state, &caller)?;
    let now = state.clock.now();
    let op = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let node = find_node(model, Role::Head, &id)?.clone();
            let busy = running(
                model,
                |k| matches!(k, OperationKind::EmptyHead { node_id } if *node_id == node.node_id),
            );
            if let Some(op) = busy {
                return Err(busy_error(model, &node.label, op));
            }
            let vms = vms_on(model, &node.node_id).count() as u64;
            let kind = OperationKind::EmptyHead {
                node_id: node.node_id.clone(),
            };
            let op = new_operation(tx.new_id::<Operation>()?, kind, vms, now);
            tx.put(op.clone())?;
            tx.put(Node {
                usage_strategy: Some("empty".into()),
                ..node
            })?;
            tracing::info!(operation = %op.id, "head emptying requested");
            Ok(op)
        })
        .await?;
    state.reconcile.notify_one();
    let model = state.db.read();
    Ok((StatusCode::ACCEPTED, Json(operation_view(&model, &op))))
}

async fn empty_pool(
    State(state): State<AppState>,
    caller: Caller,
    Path(label): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&state, &caller)?;
    let now = state.clock.now();
    let op = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let pool = find_pool(model, &label)?.clone();
            let busy = running(
                model,
                |k| matches!(k, OperationKind::EmptyPool { pool: p } if *p == pool.label),
            );
            if let Some(op) = busy {
                return Err(busy_error(model, &pool.label, op));
            }
            let discs = model
                .discs
                .values()
                .filter(|d| d.storage_pool.as_deref() == Some(&pool.label))
                .count() as u64;
            let kind = OperationKind::EmptyPool {
                pool: pool.label.clone(),
            };
            let op = new_operation(tx.new_id::<Operation>()?, kind, discs, now);
            tx.put(op.clone())?;
            tx.put(Pool {
                usage_strategy: Some("empty".into()),
                ..pool
            })?;
            tracing::info!(operation = %op.id, "pool emptying requested");
            Ok(op)
        })
        .await?;
    state.reconcile.notify_one();
    let model = state.db.read();
    Ok((StatusCode::ACCEPTED, Json(operation_view(&model, &op))))
}

async fn migrating_vms(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let model = state.db.read();
    let vms = model
        .operations
        .values()
        .filter(|op| op.state == OperationState::Running)
        .filter_map(|op| match &op.kind {
            OperationKind::MigrateVm { vm_id, .. } => {
                let mut view = vm_view(&model, model.vm(*vm_id)?);
                view["migration"] = operation_view(&model, op);
                Some(view)
            }
            _ => None,
        })
        .collect();
    Ok(Json(Value::Array(vms)))
}

async fn migrating_discs(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let model = state.db.read();
    let discs = model
        .operations
        .values()
        .filter(|op| op.state == OperationState::Running)
        .filter_map(|op| match &op.kind {
            OperationKind::MigrateDisc { disc_id, .. } => {
                Some(disc_view(&model, model.disc(*disc_id)?))
            }
            _ => None,
        })
        .collect();
    Ok(Json(Value::Array(discs)))
}

async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let unfinished = match query.get("unfinished") {
        Some(v) => truthy(v)
            .ok_or_else(|| ApiError::field("unfinished", "must be true or false (1 or 0)"))?,
        None => false,
    };
    let model = state.db.read();
    let jobs = model
        .operations
        .values()
        .filter(|op| !unfinished || op.state == OperationState::Running)
        .map(|op| operation_view(&model, op))
        .collect();
    Ok(Json(Value::Array(jobs)))
}

async fn show_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let model = state.db.read();
    let op = id
        .parse::<u64>()
        .ok()
        .and_then(|id| model.operations.get(&id))
        .ok_or(ApiError::NotFound)?;
    Ok(Json(operation_view(&model, op)))
}
