//! Rolling upgrades (`bigv admin upgrade`): the operator names a stored
//! node image; this makes it the cluster's target and records an
//! `Upgrade` operation listing every node in the order they go (heads,
//! then tails, each by label); the reconciler does the rest
//! (reconciler/upgrades.rs). One upgrade runs at a time.
//!
//! - `POST /admin/upgrades {version, reboot_timeout?}` → 202 and the
//!   upgrade; `reboot_timeout` (seconds, 1–86400, default 900) bounds
//!   how long each node may take from its reboot order to being back.
//! - `GET /admin/upgrades`: every upgrade, oldest first.
//! - `GET /admin/upgrades/{id}`: one; `latest` is the newest.
//! - `POST /admin/upgrades/{id}/cancel` (`latest` too): stops it. A node
//!   being emptied goes back into service at once; one already rebooting
//!   is left out of service for the operator to check and re-admit.
//!
//! Upgrades are operations, so `/admin/migration_jobs` lists them too.
//! Their JSON adds to the operation's fields: `nodes` (each with `step`,
//! `note`, the times its steps began and the seconds they took),
//! `current_node`, `nodes_done` and `nodes_total`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use super::operations::{busy_error, new_operation, operation_view, state_name};
use super::{admin, body, running};
use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::error::ApiError;
use crate::api::time::format_time;
use crate::model::{
    Model, Node, Operation, OperationKind, OperationState, Role, UpgradeNode, UpgradeStep,
};

/// Default for `reboot_timeout`: a PXE boot of real hardware, with room.
pub const DEFAULT_REBOOT_TIMEOUT_SECS: u64 = 900;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/upgrades", get(list).post(start))
        .route("/admin/upgrades/{id}", get(show))
        .route("/admin/upgrades/{id}/cancel", post(cancel))
}

/// The order nodes are upgraded in: heads first (their evacuation is a
/// live migration, quick, so a bad image is found at the least cost),
/// then tails; within a role by label number (`head2` before `head10`).
fn upgrade_order(a: &Node, b: &Node) -> std::cmp::Ordering {
    let rank = |n: &Node| {
        let role = match n.role {
            Role::Head => 0,
            Role::Tail => 1,
        };
        let digits: String = n
            .label
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let number = digits.parse::<u64>().unwrap_or(u64::MAX);
        let stem = n.label[..n.label.len() - digits.len()].to_owned();
        (role, stem, number, n.label.clone())
    };
    rank(a).cmp(&rank(b))
}

/// `nodes` as shown, and the progress fields beside them.
pub(super) fn add_progress(map: &mut Map<String, Value>, nodes: &[UpgradeNode]) {
    let secs = |from: Option<u64>, to: Option<u64>| match (from, to) {
        (Some(a), Some(b)) if b >= a => json!(b - a),
        _ => Value::Null,
    };
    let time = |t: Option<u64>| t.map(format_time);
    let views: Vec<Value> = nodes
        .iter()
        .map(|n| {
            json!({
                "node_id": n.node_id,
                "label": n.label,
                "role": match n.role { Role::Head => "head", Role::Tail => "tail" },
                "step": n.step.as_str(),
                "note": n.note,
                "to_move": n.to_move,
                "started_at": time(n.started_at),
                "reboot_at": time(n.reboot_at),
                "down_at": time(n.down_at),
                "finished_at": time(n.finished_at),
                "evacuate_secs": secs(n.started_at, n.reboot_at),
                "reboot_secs": if n.step == UpgradeStep::Done { secs(n.reboot_at, n.finished_at) } else { Value::Null },
                "total_secs": if n.step == UpgradeStep::Done { secs(n.started_at, n.finished_at) } else { Value::Null },
            })
        })
        .collect();
    let current = nodes.iter().find(|n| {
        matches!(
            n.step,
            UpgradeStep::Evacuating | UpgradeStep::Rebooting | UpgradeStep::Booting
        )
    });
    let done = nodes
        .iter()
        .filter(|n| matches!(n.step, UpgradeStep::Done | UpgradeStep::Skipped))
        .count();
    map.insert("nodes".into(), Value::Array(views));
    map.insert(
        "current_node".into(),
        json!(current.map(|n| n.label.clone())),
    );
    map.insert(
        "current_step".into(),
        json!(current.map(|n| n.step.as_str())),
    );
    map.insert("nodes_done".into(), json!(done));
    map.insert("nodes_total".into(), json!(nodes.len()));
}

/// Why some node the upgrade will reboot could not be emptied, if so: a
/// head holding VMs with no other head in service, or a tail holding discs
/// of a grade no other tail in service has a pool of. Checked up front so
/// the upgrade does not stop half-way (room is the scheduler's business at
/// each move).
fn cannot_empty(
    model: &Model,
    spine: &bigv_spine::SpineServer,
    nodes: &[UpgradeNode],
) -> Option<String> {
    let in_service = |n: &Node| {
        n.admission == crate::model::Admission::Accepted
            && n.usage_strategy.as_deref() != Some("empty")
            && spine.node(&n.node_id).is_some_and(|h| h.is_ready())
    };
    for u in nodes.iter().filter(|u| u.step == UpgradeStep::Pending) {
        match u.role {
            Role::Head => {
                let vms = model
                    .vms
                    .values()
                    .filter(|v| !v.deleted && v.head.as_deref() == Some(u.node_id.as_str()))
                    .count();
                let other = model
                    .nodes
                    .values()
                    .any(|n| n.role == Role::Head && n.node_id != u.node_id && in_service(n));
                if vms > 0 && !other {
                    return Some(format!(
                        "{} runs {vms} server(s) and no other head is in service to take them; a rolling upgrade moves them off each head before its reboot",
                        u.label
                    ));
                }
            }
            Role::Tail => {
                let mine: Vec<&str> = model
                    .pools_of(&u.node_id)
                    .map(|p| p.label.as_str())
                    .collect();
                let mut grades: Vec<&str> = model
                    .discs
                    .values()
                    .filter(|d| d.storage_pool.as_deref().is_some_and(|p| mine.contains(&p)))
                    .map(|d| d.storage_grade.as_str())
                    .collect();
                grades.sort_unstable();
                grades.dedup();
                for grade in grades {
                    let other = model.pools.values().any(|p| {
                        p.grade == grade
                            && p.node_id != u.node_id
                            && p.usage_strategy.as_deref() != Some("empty")
                            && model.nodes.get(&p.node_id).is_some_and(in_service)
                    });
                    if !other {
                        return Some(format!(
                            "{} holds {grade} discs and no other tail in service has a {grade} pool to take them; a rolling upgrade moves them off each tail before its reboot",
                            u.label
                        ));
                    }
                }
            }
        }
    }
    None
}

fn is_upgrade(op: &Operation) -> bool {
    matches!(op.kind, OperationKind::Upgrade { .. })
}

/// An upgrade by id, or `latest`.
fn find<'m>(model: &'m Model, seg: &str) -> Result<&'m Operation, ApiError> {
    let found = if seg == "latest" {
        model.operations.values().rev().find(|op| is_upgrade(op))
    } else {
        seg.parse::<u64>()
            .ok()
            .and_then(|id| model.operations.get(&id))
            .filter(|op| is_upgrade(op))
    };
    found.ok_or(ApiError::NotFound)
}

async fn start(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&state, &caller)?;
    let mut f = body(&headers, &bytes)?;
    let version = f.required_string("version");
    let timeout = if f.has("reboot_timeout") && !f.is_null("reboot_timeout") {
        f.u64_in("reboot_timeout", 1, 86400)
    } else {
        Some(DEFAULT_REBOOT_TIMEOUT_SECS)
    };
    if let Some(v) = &version
        && state.node_images.get(v).is_none()
    {
        let stored: Vec<String> = state
            .node_images
            .list()
            .into_iter()
            .map(|i| i.version)
            .collect();
        f.error(
            "version",
            format!(
                "is not a stored node image (stored: {}; add one with `bigv-brain image add DIR`)",
                if stored.is_empty() {
                    "none".into()
                } else {
                    stored.join(", ")
                }
            ),
        );
    }
    f.finish()?;
    let (Some(version), Some(timeout)) = (version, timeout) else {
        return Err(ApiError::Internal("validated fields missing".into()));
    };
    let now = state.clock.now();
    let spine = state.spine.clone();
    let op = state
        .db
        .write(move |tx| {
            let model = tx.model();
            if let Some(op) = running(model, |k| matches!(k, OperationKind::Upgrade { .. })) {
                return Err(busy_error(model, "the cluster", op));
            }
            let mut order: Vec<&Node> = model.nodes.values().collect();
            order.sort_by(|a, b| upgrade_order(a, b));
            let nodes: Vec<UpgradeNode> = order
                .into_iter()
                .map(|node| {
                    let online = spine
                        .node(&node.node_id)
                        .map(|h| h.info().image_version.clone());
                    let (step, note) = match online {
                        None => (
                            UpgradeStep::Skipped,
                            Some(format!("offline; it boots {version} when it comes back")),
                        ),
                        Some(v) if v == version => {
                            (UpgradeStep::Skipped, Some(format!("already on {version}")))
                        }
                        Some(_) => (UpgradeStep::Pending, None),
                    };
                    UpgradeNode {
                        node_id: node.node_id.clone(),
                        label: node.label.clone(),
                        role: node.role,
                        finished_at: (step == UpgradeStep::Skipped).then_some(now),
                        step,
                        note,
                        usage_strategy: node.usage_strategy.clone(),
                        to_move: 0,
                        started_at: None,
                        reboot_at: None,
                        down_at: None,
                    }
                })
                .collect();
            if let Some(problem) = cannot_empty(model, &spine, &nodes) {
                return Err(ApiError::refused(problem));
            }
            let from_version = model.settings.node_image_version.clone();
            let mut settings = model.settings.clone();
            let total = nodes.len() as u64;
            let kind = OperationKind::Upgrade {
                version: version.clone(),
                from_version: from_version.clone(),
                reboot_timeout_secs: timeout,
                nodes,
            };
            let op = new_operation(tx.new_id::<Operation>()?, kind, total, now);
            tx.put(op.clone())?;
            if from_version.as_deref() != Some(version.as_str()) {
                settings.node_image_version = Some(version.clone());
                tx.put_settings(settings)?;
            }
            tracing::info!(operation = %op.id, %version, from = ?from_version, "upgrade requested");
            Ok(op)
        })
        .await?;
    state.reconcile.notify_one();
    let model = state.db.read();
    Ok((StatusCode::ACCEPTED, Json(operation_view(&model, &op))))
}

async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let model = state.db.read();
    let all = model
        .operations
        .values()
        .filter(|op| is_upgrade(op))
        .map(|op| operation_view(&model, op))
        .collect();
    Ok(Json(Value::Array(all)))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let model = state.db.read();
    let op = find(&model, &id)?;
    Ok(Json(operation_view(&model, op)))
}

async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let now = state.clock.now();
    let op = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let mut op = find(model, &id)?.clone();
            if op.state != OperationState::Running {
                return Err(ApiError::refused(format!(
                    "upgrade {} is not running (it is {})",
                    op.id,
                    state_name(op.state)
                )));
            }
            let mut restore = vec![];
            if let OperationKind::Upgrade { nodes, .. } = &mut op.kind {
                for n in nodes.iter_mut() {
                    match n.step {
                        UpgradeStep::Evacuating => {
                            // Nothing was done to it yet: back into service.
                            if let Some(node) = model.nodes.get(&n.node_id) {
                                restore.push(Node {
                                    usage_strategy: n.usage_strategy.clone(),
                                    ..node.clone()
                                });
                            }
                            n.note = Some(
                                "the upgrade was cancelled while it was being emptied; it is back in service".into(),
                            );
                        }
                        UpgradeStep::Rebooting | UpgradeStep::Booting => {
                            n.note = Some(
                                "the upgrade was cancelled while it rebooted; it stays out of service until its usage strategy is set back to default".into(),
                            );
                        }
                        _ => {}
                    }
                }
            }
            op.state = OperationState::Cancelled;
            op.phase = "cancelled".into();
            op.updated_at = now;
            for node in restore {
                tx.put(node)?;
            }
            tx.put(op.clone())?;
            tracing::info!(operation = %op.id, "upgrade cancelled");
            Ok(op)
        })
        .await?;
    state.reconcile.notify_one();
    let model = state.db.read();
    Ok(Json(operation_view(&model, &op)))
}
