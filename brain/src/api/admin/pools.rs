//! Storage pools: space as the tails report it, what the model allocates,
//! and the knobs placement uses (overcommit, usage strategy).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use bigv_spine::resource::{GlobalKind, ResourceName, ResourceValue};
use serde_json::{Value, json};

use super::{
    admin, body, discs_in_pools, overcommit_ratio, ratio_json, refuse_history, usage_strategy,
    vms_in_pools,
};
use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::error::ApiError;
use crate::model::{Model, OperationKind, OperationState, Pool};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/storage_pools", get(list_pools))
        .route(
            "/admin/storage_pools/{label}",
            get(show_pool).put(update_pool),
        )
        .route("/admin/storage_pools/{label}/discs", get(pool_discs))
        .route(
            "/admin/storage_pools/{label}/virtual_machines",
            get(pool_vms),
        )
}

pub(super) fn find_pool<'m>(model: &'m Model, label: &str) -> Result<&'m Pool, ApiError> {
    model.pools.get(label).ok_or(ApiError::NotFound)
}

/// What the pool's tail reports for it now: (size, free) MiB.
fn reported(state: &AppState, pool: &Pool) -> Option<(u64, u64)> {
    let handle = state.spine.node(&pool.node_id)?;
    match handle.resource(&ResourceName::Global(GlobalKind::StoragePools))? {
        (ResourceValue::StoragePools(pools), _) => pools.get(&pool.name).map(|p| (p.size, p.free)),
        _ => None,
    }
}

fn pool_view(state: &AppState, model: &Model, pool: &Pool) -> Value {
    let (size, free) = reported(state, pool).unwrap_or((0, 0));
    let discs: Vec<String> = model
        .discs
        .values()
        .filter(|d| d.storage_pool.as_deref() == Some(&pool.label))
        .map(|d| d.id.to_string())
        .collect();
    let alloc: u64 = model
        .discs
        .values()
        .filter(|d| d.storage_pool.as_deref() == Some(&pool.label))
        .map(|d| d.size)
        .sum();
    let tail = model.nodes.get(&pool.node_id);
    json!({
        "name": pool.label,
        "label": pool.label,
        "pool_name": pool.name,
        "tail": tail.map(|t| t.label.clone()),
        "zone": tail.and_then(|t| t.zone.clone()),
        "size": size,
        "free_space": free,
        "ceiling": (size as f64 * pool.overcommit_ratio) as u64,
        "alloc": alloc,
        "discs_count": discs.len(),
        "discs": discs,
        // Backups kept in this pool (on its tail, by its tail's name).
        "backups": model
            .backups
            .values()
            .filter(|b| {
                b.state == crate::model::BackupState::Taken
                    && b.node_id.as_deref() == Some(pool.node_id.as_str())
                    && b.storage_pool.as_deref() == Some(pool.name.as_str())
            })
            .count(),
        "overcommit_ratio": ratio_json(pool.overcommit_ratio),
        "migration_concurrency": pool.migration_concurrency,
        "usage_strategy": pool.usage_strategy,
        "grade": pool.grade,
        "note": null,
        "iops_limit": pool.iops_limit,
    })
}

async fn list_pools(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let model = state.db.read();
    let pools = model
        .pools
        .values()
        .map(|p| pool_view(&state, &model, p))
        .collect();
    Ok(Json(Value::Array(pools)))
}

async fn show_pool(
    State(state): State<AppState>,
    caller: Caller,
    Path(label): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let model = state.db.read();
    let pool = find_pool(&model, &label)?;
    Ok(Json(pool_view(&state, &model, pool)))
}

async fn pool_discs(
    State(state): State<AppState>,
    caller: Caller,
    Path(label): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    refuse_history(&query)?;
    let model = state.db.read();
    let pool = find_pool(&model, &label)?;
    Ok(Json(discs_in_pools(&model, &[pool.label.as_str()])))
}

async fn pool_vms(
    State(state): State<AppState>,
    caller: Caller,
    Path(label): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    refuse_history(&query)?;
    let model = state.db.read();
    let pool = find_pool(&model, &label)?;
    Ok(Json(vms_in_pools(&model, &[pool.label.as_str()])))
}

async fn update_pool(
    State(state): State<AppState>,
    caller: Caller,
    Path(label): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let mut f = body(&headers, &bytes)?;
    let now = state.clock.now();
    let label = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let pool = find_pool(model, &label)?.clone();
            let mut updated = pool.clone();
            let strategy = usage_strategy(&mut f);
            if let Some(strategy) = &strategy {
                updated.usage_strategy = strategy.clone();
            }
            if let Some(ratio) = overcommit_ratio(&mut f, "overcommit_ratio") {
                updated.overcommit_ratio = ratio;
            }
            if let Some(n) = f.u64_in("migration_concurrency", 1, 64) {
                updated.migration_concurrency = n as u32;
            }
            if f.is_null("iops_limit") {
                updated.iops_limit = None;
            } else if let Some(n) = f.u64_in("iops_limit", 1, 10_000_000) {
                updated.iops_limit = Some(n);
            }
            if f.string("label").is_some_and(|l| l != pool.label) {
                f.error(
                    "label",
                    "cannot be changed: pools are named <tail>-<pool> and discs refer to them by it",
                );
            }
            f.finish()?;
            // Back to normal use stops a running evacuation of the pool.
            let emptying = model
                .operations
                .values()
                .find(|op| {
                    op.state == OperationState::Running
                        && matches!(&op.kind, OperationKind::EmptyPool { pool: p } if *p == pool.label)
                })
                .cloned();
            if let (Some(None), Some(mut op)) = (strategy, emptying) {
                op.state = OperationState::Cancelled;
                op.phase = "cancelled".into();
                op.updated_at = now;
                tx.put(op)?;
            }
            if updated != pool {
                tx.put(updated)?;
            }
            Ok::<_, ApiError>(pool.label)
        })
        .await?;
    state.reconcile.notify_one();
    let model = state.db.read();
    let pool = find_pool(&model, &label)?;
    Ok(Json(pool_view(&state, &model, pool)))
}
