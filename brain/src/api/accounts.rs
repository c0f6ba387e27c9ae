//! Accounts (bigv-api.md §4.1). Every account has a group `default`,
//! made with it. Creating and deleting accounts is for cluster admins.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::Value;

use super::access::Caller;
use super::error::ApiError;
use super::fields::Fields;
use super::views::{self, Flags};
use super::{AppState, lookup, names};
use crate::model::{
    Account, AccountId, AntiAffinityGroup, Group, GroupId, Level, Model, Privilege, Target, Tx,
};

/// Every account's first group, used when none is named.
pub const DEFAULT_GROUP: &str = "default";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/accounts", get(list).post(create_from_body))
        .route(
            "/accounts/{acc}",
            get(show).post(create_from_path).put(update).delete(remove),
        )
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Json<Value> {
    let flags = Flags::parse(query.as_deref());
    let model = state.db.read();
    let accounts = model
        .accounts
        .values()
        .filter(|a| caller.can_see(&model, Target::Account(a.id)))
        .map(|a| views::account(&model, &caller, a, flags))
        .collect();
    Json(Value::Array(accounts))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(acc): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let flags = Flags::parse(query.as_deref());
    let model = state.db.read();
    let account = lookup::account(&model, &caller, &acc)?;
    Ok(Json(views::account(&model, &caller, account, flags)))
}

/// A new account named `name` and its default group.
fn create(tx: &mut Tx<'_>, caller: &Caller, name: Option<String>) -> Result<Account, ApiError> {
    let model = tx.model();
    if !caller.is_cluster_admin(model) {
        return Err(ApiError::Forbidden);
    }
    let mut f = Fields::new(serde_json::Map::new());
    let name = match name.filter(|n| !n.is_empty()) {
        None => {
            f.error("name", "can't be blank");
            None
        }
        Some(n) => {
            for p in names::name_problems(&n, names::MIN_ACCOUNT_NAME) {
                f.error("name", p);
            }
            if model.account_named(&n).is_some() {
                f.error("name", "has already been taken");
            }
            Some(n)
        }
    };
    f.finish()?;
    let name = name.unwrap_or_default();
    let account = Account {
        id: AccountId(tx.new_id::<Account>()?),
        name,
        suspended: false,
    };
    tx.put(account.clone())?;
    let group_id = GroupId(tx.new_id::<Group>()?);
    tx.put(Group {
        id: group_id,
        account_id: account.id,
        name: DEFAULT_GROUP.into(),
    })?;
    tracing::info!(account = %account.name, by = %caller.username, "created an account");
    Ok(account)
}

fn respond_created(state: &AppState, caller: &Caller, account: &Account) -> Response {
    let model = state.db.read();
    (
        StatusCode::CREATED,
        Json(views::account(&model, caller, account, Flags::default())),
    )
        .into_response()
}

async fn create_from_body(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut f = views::body(&headers, &body)?;
    let name = f.string("name");
    f.finish()?;
    let who = caller.clone();
    let account = state.db.write(move |tx| create(tx, &who, name)).await?;
    Ok(respond_created(&state, &caller, &account))
}

async fn create_from_path(
    State(state): State<AppState>,
    caller: Caller,
    Path(acc): Path<String>,
) -> Result<Response, ApiError> {
    let who = caller.clone();
    let account = state
        .db
        .write(move |tx| create(tx, &who, Some(acc)))
        .await?;
    Ok(respond_created(&state, &caller, &account))
}

/// Only `suspended` changes (cluster admins); the name is fixed.
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(acc): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut f = views::body(&headers, &body)?;
    let who = caller.clone();
    let account = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let found = lookup::account(model, &who, &acc)?;
            who.require(model, Target::Account(found.id), Level::AccountAdmin)?;
            let mut changed = found.clone();
            if let Some(name) = f.string("name")
                && name != found.name
            {
                f.error("name", "cannot be changed once the account exists");
            }
            if let Some(suspended) = f.bool("suspended") {
                if suspended != found.suspended && !who.is_cluster_admin(model) {
                    return Err(ApiError::Forbidden);
                }
                changed.suspended = suspended;
            }
            f.finish()?;
            if changed != *found {
                tx.put(changed.clone())?;
            }
            Ok::<_, ApiError>(changed)
        })
        .await?;
    let model = state.db.read();
    Ok(Json(views::account(&model, &caller, &account, Flags::default())).into_response())
}

/// Deletes an empty account: its groups, anti-affinity groups and the
/// privileges on them go with it. One with servers (even deleted ones not
/// yet purged) is refused.
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(acc): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .db
        .write(move |tx| {
            let model = tx.model();
            let found = lookup::account(model, &caller, &acc)?;
            caller.require(model, Target::Account(found.id), Level::ClusterAdmin)?;
            let groups: Vec<GroupId> = model.groups_of(found.id).map(|g| g.id).collect();
            let servers = model
                .vms
                .values()
                .filter(|v| groups.contains(&v.group_id))
                .count();
            if servers > 0 {
                return Err(ApiError::refused(format!(
                    "account {} still has {servers} server(s), counting deleted ones not yet \
                     purged: purge them before deleting the account",
                    found.name
                )));
            }
            let id = found.id;
            let name = found.name.clone();
            let doomed = doomed_records(model, id, &groups);
            for g in &groups {
                tx.delete::<Group>(g.0)?;
            }
            for a in doomed.affinity {
                tx.delete::<AntiAffinityGroup>(a)?;
            }
            for p in doomed.privileges {
                tx.delete::<Privilege>(p)?;
            }
            tx.delete::<Account>(id.0)?;
            tracing::info!(account = %name, by = %caller.username, "deleted an account");
            Ok::<_, ApiError>(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

struct Doomed {
    affinity: Vec<u64>,
    privileges: Vec<u64>,
}

fn doomed_records(model: &Model, account: AccountId, groups: &[GroupId]) -> Doomed {
    Doomed {
        affinity: model
            .affinity_groups
            .values()
            .filter(|a| a.account_id == account)
            .map(|a| a.id.0)
            .collect(),
        privileges: model
            .privileges
            .values()
            .filter(|p| match p.target {
                Target::Account(a) => a == account,
                Target::Group(g) => groups.contains(&g),
                _ => false,
            })
            .map(|p| p.id.0)
            .collect(),
    }
}
