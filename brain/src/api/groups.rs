//! Groups within an account (bigv-api.md §4.2). Creating, renaming and
//! deleting them is for account admins; `default` is never removed or
//! renamed, and a group with servers is never deleted.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::Value;

use super::access::Caller;
use super::accounts::DEFAULT_GROUP;
use super::error::ApiError;
use super::fields::Fields;
use super::views::{self, Flags};
use super::{AppState, lookup, names};
use crate::model::{AccountId, Group, GroupId, Level, Model, Privilege, Target};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/accounts/{acc}/groups", get(list).post(create))
        .route(
            "/accounts/{acc}/groups/{grp}",
            get(show).put(update).delete(remove),
        )
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(acc): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let flags = Flags::parse(query.as_deref());
    let model = state.db.read();
    let account = lookup::account(&model, &caller, &acc)?;
    let groups = model
        .groups_of(account.id)
        .filter(|g| caller.can_see(&model, Target::Group(g.id)))
        .map(|g| views::group(&model, &caller, g, flags))
        .collect();
    Ok(Json(Value::Array(groups)))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let flags = Flags::parse(query.as_deref());
    let model = state.db.read();
    let account = lookup::account(&model, &caller, &acc)?;
    let group = lookup::group(&model, &caller, account, &grp)?;
    Ok(Json(views::group(&model, &caller, group, flags)))
}

/// A group name: the VM name rules, unique in its account.
fn check_name(
    f: &mut Fields,
    model: &Model,
    account: AccountId,
    except: Option<GroupId>,
) -> Option<String> {
    let name = f.required_string("name")?;
    for p in names::name_problems(&name, 1) {
        f.error("name", p);
    }
    if model
        .groups_of(account)
        .any(|g| g.name == name && Some(g.id) != except)
    {
        f.error("name", "has already been taken");
    }
    Some(name)
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(acc): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut f = views::body(&headers, &body)?;
    let who = caller.clone();
    let group = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let account = lookup::account(model, &who, &acc)?;
            who.require(model, Target::Account(account.id), Level::AccountAdmin)?;
            let account_id = account.id;
            let name = check_name(&mut f, model, account_id, None);
            f.finish()?;
            let group = Group {
                id: GroupId(tx.new_id::<Group>()?),
                account_id,
                name: name.unwrap_or_default(),
            };
            tx.put(group.clone())?;
            tracing::info!(group = %group.name, account = %account_id, by = %who.username, "created a group");
            Ok::<_, ApiError>(group)
        })
        .await?;
    let model = state.db.read();
    Ok((
        StatusCode::CREATED,
        Json(views::group(&model, &caller, &group, Flags::default())),
    )
        .into_response())
}

/// Renames a group.
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut f = views::body(&headers, &body)?;
    let who = caller.clone();
    let group = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let account = lookup::account(model, &who, &acc)?;
            let found = lookup::group(model, &who, account, &grp)?;
            who.require(model, Target::Account(account.id), Level::AccountAdmin)?;
            let mut changed = found.clone();
            if f.has("name")
                && let Some(name) = check_name(&mut f, model, account.id, Some(found.id))
                && name != found.name
            {
                if found.name == DEFAULT_GROUP {
                    f.error("name", "of the default group cannot be changed");
                }
                changed.name = name;
            }
            f.finish()?;
            if changed != *found {
                tx.put(changed.clone())?;
            }
            Ok::<_, ApiError>(changed)
        })
        .await?;
    let model = state.db.read();
    Ok(Json(views::group(&model, &caller, &group, Flags::default())).into_response())
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .db
        .write(move |tx| {
            let model = tx.model();
            let account = lookup::account(model, &caller, &acc)?;
            let found = lookup::group(model, &caller, account, &grp)?;
            caller.require(model, Target::Account(account.id), Level::AccountAdmin)?;
            if found.name == DEFAULT_GROUP {
                return Err(ApiError::refused(
                    "the default group cannot be deleted: every account keeps one",
                ));
            }
            let servers = model.vms_in(found.id).count();
            if servers > 0 {
                return Err(ApiError::refused(format!(
                    "group {} still has {servers} server(s), counting deleted ones not yet \
                     purged: move or purge them first",
                    found.name
                )));
            }
            let id = found.id;
            let privileges: Vec<u64> = model
                .privileges
                .values()
                .filter(|p| p.target == Target::Group(id))
                .map(|p| p.id.0)
                .collect();
            for p in privileges {
                tx.delete::<Privilege>(p)?;
            }
            tx.delete::<Group>(id.0)?;
            tracing::info!(group = %id, by = %caller.username, "deleted a group");
            Ok::<_, ApiError>(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
