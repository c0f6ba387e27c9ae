//! Heads and tails: listing with live facts, relabelling, zoning,
//! admission (our addition for the `manual` admission policy) and their
//! dependants.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use bigv_spine::resource::{ResourceValue, VmRunState};
use serde_json::{Value, json};

use super::{
    admin, body, cnc_address, discs_in_pools, node_number, refuse_history, usage_strategy,
    vm_short_name, vm_view, vms_in_pools,
};
use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::error::ApiError;
use crate::api::fields::Fields;
use crate::boot::check::{expected_version, image_check};
use crate::model::{Admission, Model, Node, OperationKind, OperationState, Role, Vm};
use crate::scheduler::Facts;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/heads", get(list_heads))
        .route("/admin/heads/{id}", get(show_head).put(update_head))
        .route("/admin/heads/{id}/virtual_machines", get(head_vms))
        .route("/admin/heads/{id}/accept", post(accept_head))
        .route("/admin/tails", get(list_tails))
        .route("/admin/tails/{id}", get(show_tail).put(update_tail))
        .route("/admin/tails/{id}/discs", get(tail_discs))
        .route("/admin/tails/{id}/virtual_machines", get(tail_vms))
        .route("/admin/tails/{id}/accept", post(accept_tail))
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Head => "head",
        Role::Tail => "tail",
    }
}

/// A head or tail by label, node id or number (in that order).
pub(super) fn find_node<'m>(model: &'m Model, role: Role, seg: &str) -> Result<&'m Node, ApiError> {
    let of_role = || model.nodes.values().filter(move |n| n.role == role);
    let number = seg.parse::<u64>().ok();
    of_role()
        .find(|n| n.label == seg)
        .or_else(|| of_role().find(|n| n.node_id == seg))
        .or_else(|| of_role().find(|n| Some(node_number(&n.node_id)) == number))
        .ok_or(ApiError::NotFound)
}

fn online(state: &AppState, node: &Node) -> bool {
    state
        .spine
        .node(&node.node_id)
        .is_some_and(|h| h.is_ready())
}

/// How many VMs the head itself reports running (the spine's view; the
/// model's placement is `virtual_machines_count`).
fn running_vms(state: &AppState, node: &Node) -> usize {
    state.spine.node(&node.node_id).map_or(0, |h| {
        h.with_resources(|table| {
            table
                .values()
                .filter(|(value, _)| {
                    matches!(value, ResourceValue::Vm(vm) if vm.state == Some(VmRunState::Running))
                })
                .count()
        })
    })
}

fn admission(node: &Node) -> &'static str {
    match node.admission {
        Admission::Pending => "pending",
        Admission::Accepted => "accepted",
    }
}

/// The VMs the model places on a head (soft-deleted ones are not there).
pub(super) fn vms_on<'m>(model: &'m Model, node_id: &'m str) -> impl Iterator<Item = &'m Vm> {
    model
        .vms
        .values()
        .filter(move |v| !v.deleted && v.head.as_deref() == Some(node_id))
}

fn head_view(state: &AppState, model: &Model, facts: &Facts, node: &Node) -> Value {
    let head = facts.heads.get(&node.node_id);
    let vms: Vec<&Vm> = vms_on(model, &node.node_id).collect();
    json!({
        "id": node_number(&node.node_id),
        "uuid": node.node_id,
        "label": node.label,
        "zone": node.zone,
        "arch": "x86_64",
        "cnc_address": cnc_address(node),
        "last_note": null,
        "total_memory": head.map_or(0, |h| h.total_memory),
        "free_memory": head.map_or(0, |h| h.free_memory),
        "usage_strategy": node.usage_strategy,
        "models": [],
        "online": online(state, node),
        "admission": admission(node),
        "image_version": node.image_version,
        "image_expected": expected_version(model, node),
        "image_mismatch": image_check(model, node).is_mismatch(),
        "used_cores": vms.iter().map(|v| u64::from(v.cores)).sum::<u64>(),
        "virtual_machines_count": vms.len(),
        "running_virtual_machines_count": running_vms(state, node),
        "virtual_machines": vms.iter().map(|v| vm_short_name(model, v)).collect::<Vec<_>>(),
    })
}

fn tail_view(state: &AppState, model: &Model, node: &Node) -> Value {
    json!({
        "id": node_number(&node.node_id),
        "uuid": node.node_id,
        "label": node.label,
        "cnc_address": cnc_address(node),
        "zone": node.zone,
        "online": online(state, node),
        "admission": admission(node),
        "usage_strategy": node.usage_strategy,
        "image_version": node.image_version,
        "image_expected": expected_version(model, node),
        "image_mismatch": image_check(model, node).is_mismatch(),
        "pools": model.pools_of(&node.node_id).map(|p| p.label.clone()).collect::<Vec<_>>(),
    })
}

fn node_view(state: &AppState, model: &Model, node: &Node) -> Value {
    match node.role {
        Role::Head => head_view(state, model, &Facts::gather(model, &state.spine), node),
        Role::Tail => tail_view(state, model, node),
    }
}

async fn list_heads(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let model = state.db.read();
    let facts = Facts::gather(&model, &state.spine);
    let heads = model
        .nodes
        .values()
        .filter(|n| n.role == Role::Head)
        .map(|n| head_view(&state, &model, &facts, n))
        .collect();
    Ok(Json(Value::Array(heads)))
}

async fn show_head(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let model = state.db.read();
    let node = find_node(&model, Role::Head, &id)?;
    Ok(Json(node_view(&state, &model, node)))
}

async fn head_vms(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    refuse_history(&query)?;
    let model = state.db.read();
    let node = find_node(&model, Role::Head, &id)?;
    let vms = vms_on(&model, &node.node_id)
        .map(|v| vm_view(&model, v))
        .collect();
    Ok(Json(Value::Array(vms)))
}

async fn list_tails(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let model = state.db.read();
    let tails = model
        .nodes
        .values()
        .filter(|n| n.role == Role::Tail)
        .map(|n| tail_view(&state, &model, n))
        .collect();
    Ok(Json(Value::Array(tails)))
}

async fn show_tail(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let model = state.db.read();
    let node = find_node(&model, Role::Tail, &id)?;
    Ok(Json(tail_view(&state, &model, node)))
}

/// Labels of the tail's pools.
fn tail_pool_labels(model: &Model, node: &Node) -> Vec<String> {
    model
        .pools_of(&node.node_id)
        .map(|p| p.label.clone())
        .collect()
}

async fn tail_discs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    refuse_history(&query)?;
    let model = state.db.read();
    let node = find_node(&model, Role::Tail, &id)?;
    let pools = tail_pool_labels(&model, node);
    let pools: Vec<&str> = pools.iter().map(String::as_str).collect();
    Ok(Json(discs_in_pools(&model, &pools)))
}

async fn tail_vms(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    refuse_history(&query)?;
    let model = state.db.read();
    let node = find_node(&model, Role::Tail, &id)?;
    let pools = tail_pool_labels(&model, node);
    let pools: Vec<&str> = pools.iter().map(String::as_str).collect();
    Ok(Json(vms_in_pools(&model, &pools)))
}

async fn update_head(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    update_node(state, caller, Role::Head, id, headers, bytes).await
}

async fn update_tail(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    update_node(state, caller, Role::Tail, id, headers, bytes).await
}

/// Checks a new label: the naming rules, not a bare number (numbers are
/// ids in paths), and unique among all nodes' labels and node ids.
fn check_label(model: &Model, node: &Node, f: &mut Fields) -> Option<String> {
    let label = f.string("label")?;
    let problem = if let Some(problem) = super::name_problem(&label) {
        Some(problem)
    } else if label.bytes().all(|b| b.is_ascii_digit()) {
        Some("must contain a letter or hyphen: bare numbers are ids".into())
    } else {
        model
            .nodes
            .values()
            .find(|n| n.node_id != node.node_id && (n.label == label || n.node_id == label))
            .map(|other| {
                format!(
                    "has already been taken (by {} {})",
                    role_name(other.role),
                    other.node_id
                )
            })
    };
    match problem {
        Some(p) => {
            f.error("label", p);
            None
        }
        None => Some(label),
    }
}

/// A zone from a body: `Some(None)` to clear it; it must be one of the
/// cluster's zones.
pub(super) fn check_zone(model: &Model, f: &mut Fields, name: &str) -> Option<Option<String>> {
    if !f.has(name) {
        return None;
    }
    if f.is_null(name) {
        return Some(None);
    }
    let zone = f.string(name)?;
    if model.settings.zones.contains(&zone) {
        Some(Some(zone))
    } else {
        f.error(
            name,
            format!(
                "is not a zone of this cluster (zones: {})",
                model.settings.zones.join(", ")
            ),
        );
        None
    }
}

async fn update_node(
    state: AppState,
    caller: Caller,
    role: Role,
    seg: String,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let mut f = body(&headers, &bytes)?;
    let now = state.clock.now();
    let node_id = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let node = find_node(model, role, &seg)?.clone();
            let mut updated = node.clone();
            let strategy = usage_strategy(&mut f);
            if let Some(strategy) = &strategy {
                updated.usage_strategy = strategy.clone();
            }
            if let Some(label) = check_label(model, &node, &mut f) {
                updated.label = label;
            }
            if let Some(zone) = check_zone(model, &mut f, "zone") {
                updated.zone = zone;
            }
            f.finish()?;
            // Put back to normal use: the operator changed their mind about
            // emptying it, so the evacuation stops.
            let emptying = model
                .operations
                .values()
                .find(|op| {
                    op.state == OperationState::Running
                        && matches!(&op.kind, OperationKind::EmptyHead { node_id } if *node_id == node.node_id)
                })
                .cloned();
            if let (Some(None), Some(mut op)) = (strategy, emptying) {
                op.state = OperationState::Cancelled;
                op.phase = "cancelled".into();
                op.updated_at = now;
                tx.put(op)?;
            }
            let node_id = node.node_id.clone();
            if updated != node {
                tx.put(updated)?;
            }
            Ok::<_, ApiError>(node_id)
        })
        .await?;
    state.reconcile.notify_one();
    let model = state.db.read();
    let node = model.nodes.get(&node_id).ok_or(ApiError::NotFound)?;
    Ok(Json(node_view(&state, &model, node)))
}

async fn accept_head(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    accept(state, caller, Role::Head, id).await
}

async fn accept_tail(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    accept(state, caller, Role::Tail, id).await
}

/// Pending → accepted; accepting an accepted node is harmless.
async fn accept(
    state: AppState,
    caller: Caller,
    role: Role,
    seg: String,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let node_id = state
        .db
        .write(move |tx| {
            let node = find_node(tx.model(), role, &seg)?.clone();
            let node_id = node.node_id.clone();
            if node.admission != Admission::Accepted {
                tracing::info!(node = %node.node_id, label = %node.label, "node accepted");
                tx.put(Node {
                    admission: Admission::Accepted,
                    ..node
                })?;
            }
            Ok::<_, ApiError>(node_id)
        })
        .await?;
    state.reconcile.notify_one();
    let model = state.db.read();
    let node = model.nodes.get(&node_id).ok_or(ApiError::NotFound)?;
    Ok(Json(node_view(&state, &model, node)))
}
