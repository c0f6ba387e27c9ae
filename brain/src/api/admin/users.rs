//! Operator shortcuts: creating cluster users (`cluster_su` only, since
//! it hands out cluster-wide power) and groups in any account.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{admin, body, name_problem, require_cluster};
use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::error::ApiError;
use crate::model::{Group, GroupId, Level, Privilege, PrivilegeId, Target, User, UserId};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/users", post(create_user))
        .route("/admin/groups", post(create_group))
}

fn username_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("can't be blank")
    } else if name.len() > 64 {
        Some("is too long (maximum is 64 characters)")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Some("may contain only letters and digits")
    } else {
        None
    }
}

/// `{"username", "priv_spec": "cluster_su"|"cluster_admin"[, "password"]}`:
/// a new user holding that privilege on the cluster. Without a password
/// the user can sign in only once someone sets one or gives it an API key.
async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_cluster(&state.db.read(), &caller, Level::ClusterSu)?;
    let mut f = body(&headers, &bytes)?;
    let username = f.required_string("username");
    if let Some(problem) = username.as_deref().and_then(username_problem) {
        f.error("username", problem);
    }
    let level = f.required_string("priv_spec").and_then(|spec| {
        match Level::parse(&spec) {
            Some(level @ (Level::ClusterSu | Level::ClusterAdmin)) => Some(level),
            _ => {
                f.error(
                    "priv_spec",
                    "must be cluster_su or cluster_admin (grant other levels with POST /users/{user}/privileges)",
                );
                None
            }
        }
    });
    let password = f.string("password");
    if let Some(p) = &password
        && p.chars().count() < 8
    {
        f.error("password", "is too short (minimum is 8 characters)");
    }
    // Hash before taking the store's writer: argon2 is slow on purpose.
    let password_hash = match password.filter(|_| f.is_ok()) {
        Some(p) => Some(
            tokio::task::spawn_blocking(move || crate::password::hash(&p))
                .await
                .map_err(|e| ApiError::Internal(format!("hashing a password: {e}")))?,
        ),
        None => None,
    };
    let creator = caller.username.clone();
    let user = state
        .db
        .write(move |tx| {
            if let Some(name) = &username
                && tx.model().user_named(name).is_some()
            {
                f.error("username", "has already been taken");
            }
            f.finish()?;
            let (Some(username), Some(level)) = (username, level) else {
                return Err(ApiError::Internal("validated user fields missing".into()));
            };
            let user = User {
                id: UserId(tx.new_id::<User>()?),
                username,
                email: None,
                authorized_keys: String::new(),
                password_hash,
            };
            tx.put(user.clone())?;
            let privilege_id = PrivilegeId(tx.new_id::<Privilege>()?);
            tx.put(Privilege {
                id: privilege_id,
                user_id: user.id,
                level,
                target: Target::Cluster,
                api_key_id: None,
                password_required: false,
                yubikey_required: false,
                yubikey_otp_max_age: None,
                ip_restrictions: None,
                creating_username: Some(creator),
            })?;
            tracing::info!(user = %user.username, level = level.as_str(), "cluster user created");
            Ok((user, level))
        })
        .await?;
    let (user, level) = user;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": user.id,
            "username": user.username,
            "email": user.email,
            "authorized_keys": user.authorized_keys,
            "priv_spec": level.as_str(),
        })),
    ))
}

/// `{"account_spec": id or name, "group_name"}`: a group in any account.
async fn create_group(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&state, &caller)?;
    let mut f = body(&headers, &bytes)?;
    let account_spec = f.required_string("account_spec");
    let name = f.required_string("group_name");
    if let Some(problem) = name.as_deref().and_then(name_problem) {
        f.error("group_name", problem);
    }
    // Groups do not carry VLANs here (yet): say so rather than drop it.
    if f.u64("vlan_num").is_some_and(|n| n != 0) {
        f.error(
            "vlan_num",
            "per-group VLANs are not supported; omit vlan_num",
        );
    }
    let group = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let account = account_spec.as_deref().and_then(|spec| {
                let found = match spec.parse::<u64>() {
                    Ok(id) => model.accounts.get(&id),
                    Err(_) => model.account_named(spec),
                };
                if found.is_none() {
                    f.error("account_spec", format!("no account is called {spec:?}"));
                }
                found.map(|a| a.id)
            });
            if let (Some(account), Some(name)) = (account, &name)
                && model.group_named(account, name).is_some()
            {
                f.error("group_name", "has already been taken");
            }
            f.finish()?;
            let (Some(account_id), Some(name)) = (account, name) else {
                return Err(ApiError::Internal("validated group fields missing".into()));
            };
            let group = Group {
                id: GroupId(tx.new_id::<Group>()?),
                account_id,
                name,
            };
            tx.put(group.clone())?;
            Ok(group)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": group.id, "account_id": group.account_id, "name": group.name})),
    ))
}
