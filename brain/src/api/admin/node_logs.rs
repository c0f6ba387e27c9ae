//! A node's recent log lines ([G]: our addition): what its agent and init
//! sent over the spine (`log` frames, protocol 2), the last 1,000 per node
//! kept in memory by the spine server — across the node's reconnects, not
//! across a brain restart. The node's serial console is the full record.
//!
//! - `GET /admin/heads/{id}/logs?lines=N`, `GET /admin/tails/{id}/logs?lines=N`:
//!   `[{at_ms, level, source, message}]`, oldest first, the last `N`
//!   (default 100, at most 1000).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::admin;
use super::nodes::find_node;
use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::error::ApiError;
use crate::model::Role;

const DEFAULT_LINES: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/heads/{id}/logs", get(head_logs))
        .route("/admin/tails/{id}/logs", get(tail_logs))
}

async fn head_logs(
    state: State<AppState>,
    caller: Caller,
    id: Path<String>,
    query: Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    logs(state, caller, Role::Head, id, query)
}

async fn tail_logs(
    state: State<AppState>,
    caller: Caller,
    id: Path<String>,
    query: Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    logs(state, caller, Role::Tail, id, query)
}

fn logs(
    State(state): State<AppState>,
    caller: Caller,
    role: Role,
    Path(id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let lines = match query.get("lines") {
        None => DEFAULT_LINES,
        Some(s) => match s.parse::<usize>() {
            Ok(n @ 1..=bigv_spine::logs::BRAIN_LINES) => n,
            _ => {
                return Err(ApiError::field(
                    "lines",
                    format!(
                        "must be a whole number from 1 to {}",
                        bigv_spine::logs::BRAIN_LINES
                    ),
                ));
            }
        },
    };
    let node_id = {
        let model = state.db.read();
        find_node(&model, role, &id)?.node_id.clone()
    };
    let lines = state.spine.logs(&node_id, lines);
    Ok(Json(serde_json::to_value(lines).map_err(|e| {
        ApiError::Internal(format!("encoding log lines: {e}"))
    })?))
}
