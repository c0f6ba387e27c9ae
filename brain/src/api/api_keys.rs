//! API keys (bigv-api.md §7.3): long-lived credentials for scripts. The
//! bearer token is `apikey.<secret>`; the brain keeps only its SHA-256.
//!
//! Decisions ([G]):
//! - The `api_key` field of the creation response is the bare secret,
//!   shown once: the Go client prints it as `apikey.<api_key>` and
//!   documents that the bearer token is `apikey.` followed by it.
//! - A key without privileges of its own acts as its user; privileges
//!   granted with `api_key_id` restrict it to those (see access.rs).
//! - Callers manage their own keys; a `cluster_admin` manages the keys of
//!   users strictly below them (a `cluster_su`: anyone's), as for users. A
//!   restricted key may list keys but not create or delete them.
//! - `GET /api_keys` lists the caller's own keys; `?user_id=` or
//!   `?user_name=` lists another's for someone allowed to manage them.
//! - `expires_at` is stored as UTC and shown as `YYYY-MM-DDTHH:MM:SS+0000`,
//!   the form the Go client parses to mark a key "(expired)". A key whose
//!   time has come stops working at once; it stays listed until deleted.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::AppState;
use super::access::{Caller, secret_hash};
use super::error::ApiError;
use super::fields::Fields;
use super::privileges::{privilege_json, query_pairs};
use super::time::{format_time, parse_time};
use super::users;
use crate::model::{ApiKey, ApiKeyId, Model, Privilege, User};

const MAX_LABEL: usize = 255;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api_keys", get(list).post(create))
        .route("/api_keys/{id}", get(show).delete(remove))
}

/// `YYYY-MM-DDTHH:MM:SS+0000` for a stored expiry.
fn expiry_json(stored: Option<&str>) -> Value {
    match stored.and_then(parse_time) {
        Some(t) => {
            let text = format_time(t);
            let text = text.strip_suffix(" UTC").unwrap_or(&text);
            json!(format!("{}+0000", text.replacen(' ', "T", 1)))
        }
        None => Value::Null,
    }
}

fn key_json(model: &Model, key: &ApiKey, overview: bool) -> Value {
    let mut v = json!({
        "id": key.id,
        "user_id": key.user_id,
        "username": model.user(key.user_id).map(|u| u.username.as_str()),
        "label": key.label,
        "expires_at": expiry_json(key.expires_at.as_deref()),
    });
    if overview {
        v["privileges"] = model
            .privileges
            .values()
            .filter(|p| p.api_key_id == Some(key.id))
            .map(|p| privilege_json(model, p))
            .collect();
    }
    v
}

/// Whether the caller may see `owner`'s keys: their own, or someone a
/// cluster admin may manage.
fn keys_visible(model: &Model, caller: &Caller, owner: &User) -> bool {
    owner.id == caller.user_id
        || (caller.is_cluster_admin(model) && users::may_manage(model, caller, owner))
}

/// The user whose keys a request is about: `seg` names them (id or
/// username) or it is the caller.
fn key_owner<'m>(
    model: &'m Model,
    caller: &Caller,
    seg: Option<&str>,
) -> Result<&'m User, ApiError> {
    let owner = users::lookup(model, caller, seg.unwrap_or(""))?;
    if keys_visible(model, caller, owner) {
        Ok(owner)
    } else {
        Err(ApiError::Forbidden)
    }
}

fn find_key<'m>(model: &'m Model, caller: &Caller, seg: &str) -> Result<&'m ApiKey, ApiError> {
    seg.parse::<u64>()
        .ok()
        .and_then(|id| model.api_keys.get(&id))
        .filter(|k| {
            model
                .user(k.user_id)
                .is_some_and(|owner| keys_visible(model, caller, owner))
        })
        .ok_or(ApiError::NotFound)
}

/// `GET /api_keys[?view=overview][&user_id=N]`.
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(raw);
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let overview = get("view") == Some("overview");
    let model = state.db.read();
    let owner = key_owner(&model, &caller, get("user_id").or(get("user_name")))?;
    let keys: Vec<Value> = model
        .api_keys
        .values()
        .filter(|k| k.user_id == owner.id)
        .map(|k| key_json(&model, k, overview))
        .collect();
    Ok(Json(keys).into_response())
}

/// `GET /api_keys/{id}` (always with its privileges).
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(seg): Path<String>,
) -> Result<Response, ApiError> {
    let model = state.db.read();
    let key = find_key(&model, &caller, &seg)?;
    Ok(Json(key_json(&model, key, true)).into_response())
}

/// `POST /api_keys` `{"user_id": N, "label": "ci", "expires_at": "..."}`.
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mut f = Fields::parse(content_type, &body)?;
    let now = state.clock.now();
    let owner_id = {
        let model = state.db.read();
        let user_seg = f.u64("user_id").map(|id| id.to_string());
        let owner = users::lookup(&model, &caller, user_seg.as_deref().unwrap_or(""))?;
        if !users::may_manage(&model, &caller, owner) {
            return Err(ApiError::Forbidden);
        }
        owner.id
    };
    let label = f.string("label").unwrap_or_default();
    if label.len() > MAX_LABEL {
        f.error(
            "label",
            format!("is too long (maximum is {MAX_LABEL} characters)"),
        );
    } else if label.chars().any(char::is_control) {
        f.error("label", "must be one line of printable text");
    }
    let expires_at = f.string("expires_at").filter(|s| !s.trim().is_empty());
    let expires_at = match expires_at.as_deref().map(|s| (s, parse_time(s))) {
        None => None,
        Some((_, Some(t))) if t > now => Some(format_time(t)),
        Some((_, Some(_))) => {
            f.error("expires_at", "must be in the future");
            None
        }
        Some((text, None)) => {
            f.error(
                "expires_at",
                format!("\"{text}\" is not a date: use YYYY-MM-DD or YYYY-MM-DD HH:MM:SS (UTC)"),
            );
            None
        }
    };
    f.finish()?;
    let secret = crate::password::new_secret();
    let secret_sha256 = secret_hash(&format!("apikey.{secret}"));
    let (mut json, username) = state
        .db
        .write(move |tx| {
            let owner = tx.model().user(owner_id).ok_or(ApiError::NotFound)?;
            let username = owner.username.clone();
            let id = ApiKeyId(tx.new_id::<ApiKey>()?);
            let key = ApiKey {
                id,
                user_id: owner_id,
                label,
                secret_sha256,
                expires_at,
            };
            let json = key_json(tx.model(), &key, true);
            tx.put(key)?;
            Ok::<_, ApiError>((json, username))
        })
        .await?;
    json["api_key"] = json!(secret);
    tracing::info!(by = %caller.username, owner = %username, key = %json["id"], "API key created");
    Ok((StatusCode::CREATED, Json(json)).into_response())
}

/// `DELETE /api_keys/{id}`: the key and the privileges bound to it.
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(seg): Path<String>,
) -> Result<Response, ApiError> {
    let id = {
        let model = state.db.read();
        let key = find_key(&model, &caller, &seg)?;
        let owner = model.user(key.user_id).ok_or(ApiError::NotFound)?;
        if !users::may_manage(&model, &caller, owner) {
            return Err(ApiError::Forbidden);
        }
        key.id
    };
    state
        .db
        .write(move |tx| {
            let bound: Vec<u64> = tx
                .model()
                .privileges
                .values()
                .filter(|p| p.api_key_id == Some(id))
                .map(|p| p.id.0)
                .collect();
            for p in bound {
                tx.delete::<Privilege>(p)?;
            }
            tx.delete::<ApiKey>(id.0)
        })
        .await?;
    tracing::info!(by = %caller.username, key = %id, "API key deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_shown_in_the_form_the_go_client_parses() {
        assert_eq!(
            expiry_json(Some("2026-11-23 00:00:00 UTC")),
            json!("2026-11-23T00:00:00+0000")
        );
        assert_eq!(expiry_json(None), Value::Null);
    }
}
