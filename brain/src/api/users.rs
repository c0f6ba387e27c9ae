//! `/users` (bigv-api.md §7.1): who exists, their SSH keys and passwords.
//!
//! Decisions ([G]):
//! - **Who sees whom.** Everyone sees themselves; a `cluster_admin` sees
//!   everyone; an `account_admin` also sees every user holding a privilege
//!   on or inside their account (their colleagues and customers' staff).
//!   Anyone else is 404.
//! - **Who changes whom.** Users change their own keys and password; a
//!   `cluster_admin` may change, delete or make API keys for users strictly
//!   below them (a `cluster_su` for anyone), mirroring the grant rule. An
//!   API key that carries privileges of its own is a restricted credential
//!   and may not change its user or mint more keys.
//! - Usernames are letters and digits and start with a letter, so a path
//!   segment that is all digits is always an id. They are unique ignoring
//!   case, so `Alice` cannot pose as `alice`.
//! - `username` and `email` cannot change; a PUT that repeats the current
//!   values is fine (the Go client PUTs the whole user back to edit keys,
//!   with `""` for a missing email).
//! - A password change ends the user's other sessions (not the one making
//!   the change); API keys are separate credentials and stay.
//! - An empty user segment (`/users/`, which the Go client sends for
//!   `add key` without `--user`) means the caller.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::AppState;
use super::access::{Caller, ancestors, secret_hash};
use super::error::ApiError;
use super::fields::Fields;
use crate::model::{ApiKey, Level, Model, Privilege, Session, Target, User, UserId};

pub const MAX_USERNAME: usize = 64;
pub const MIN_PASSWORD: usize = 8;
/// argon2 on megabytes of input would be a cheap way to burn our CPU.
pub const MAX_PASSWORD: usize = 1024;
const MAX_EMAIL: usize = 254;
const MAX_AUTHORIZED_KEYS: usize = 64 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/users", get(list).post(create))
        .route("/users/", get(show).put(update))
        .route("/users/{user}", get(show).put(update).delete(remove))
}

/// What is wrong with a username, if anything.
pub fn username_problem(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        Some("can't be blank".into())
    } else if !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        Some("may contain only letters and digits".into())
    } else if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Some("must start with a letter".into())
    } else if name.len() > MAX_USERNAME {
        Some(format!(
            "is too long (maximum is {MAX_USERNAME} characters)"
        ))
    } else {
        None
    }
}

/// What is wrong with a new password, if anything.
pub fn password_problem(password: &str) -> Option<String> {
    if password.chars().count() < MIN_PASSWORD {
        Some(format!(
            "is too short (minimum is {MIN_PASSWORD} characters)"
        ))
    } else if password.len() > MAX_PASSWORD {
        Some(format!("is too long (maximum is {MAX_PASSWORD} bytes)"))
    } else {
        None
    }
}

fn email_problem(email: &str) -> Option<String> {
    let ok = email.len() <= MAX_EMAIL
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
    (!ok).then(|| "is not an email address (like someone@example.com)".into())
}

fn is_key_type(word: &str) -> bool {
    word.starts_with("ssh-") || word.starts_with("ecdsa-sha2-") || word.starts_with("sk-")
}

fn is_base64_blob(word: &str) -> bool {
    word.len() >= 16
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
}

/// `authorized_keys` text: every line that is not blank or a comment must
/// hold `<type> <base64>`, possibly after options, as sshd reads it.
fn authorized_keys_problem(text: &str) -> Option<String> {
    if text.len() > MAX_AUTHORIZED_KEYS {
        return Some(format!(
            "is too long (maximum is {MAX_AUTHORIZED_KEYS} bytes)"
        ));
    }
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let is_key = words
            .windows(2)
            .any(|w| is_key_type(w[0]) && is_base64_blob(w[1]));
        if !is_key || line.chars().any(|c| c.is_control() && c != '\t') {
            return Some(format!(
                "line {} is not an SSH public key (expected \"<type> <base64 key> [comment]\", \
                 e.g. \"ssh-ed25519 AAAAC3Nz... you@laptop\")",
                i + 1
            ));
        }
    }
    None
}

/// The highest level `user` holds in their own right (not via API keys).
pub fn highest_level(model: &Model, user: UserId) -> Option<Level> {
    model
        .privileges
        .values()
        .filter(|p| p.user_id == user && p.api_key_id.is_none())
        .map(|p| p.level)
        .max()
}

/// Whether the caller may see `user` at all.
pub fn visible(model: &Model, caller: &Caller, user: &User) -> bool {
    if user.id == caller.user_id || caller.is_cluster_admin(model) {
        return true;
    }
    model
        .privileges
        .values()
        .filter(|p| p.user_id == user.id)
        .flat_map(|p| ancestors(model, p.target))
        .any(|t| {
            matches!(t, Target::Account(_))
                && caller.level_on(model, t) >= Some(Level::AccountAdmin)
        })
}

/// False for an API key restricted by privileges of its own: it speaks
/// for part of its user, not all of them.
pub fn acts_fully(model: &Model, caller: &Caller) -> bool {
    caller.api_key.is_none()
        || !model
            .privileges
            .values()
            .any(|p| p.api_key_id.is_some() && p.api_key_id == caller.api_key)
}

/// Whether the caller may change `user`'s password and keys, or manage
/// their API keys.
pub fn may_manage(model: &Model, caller: &Caller, user: &User) -> bool {
    if !acts_fully(model, caller) {
        return false;
    }
    if user.id == caller.user_id {
        return true;
    }
    match caller.level_on(model, Target::Cluster) {
        Some(Level::ClusterSu) => true,
        Some(Level::ClusterAdmin) => highest_level(model, user.id) < Some(Level::ClusterAdmin),
        _ => false,
    }
}

/// The user a path segment names (id or username; empty = the caller),
/// whether or not the caller may see them.
pub fn find<'m>(model: &'m Model, caller: &Caller, seg: &str) -> Option<&'m User> {
    if seg.is_empty() {
        return model.user(caller.user_id);
    }
    match seg.parse::<u64>() {
        Ok(id) => model.users.get(&id),
        Err(_) => model.user_named(seg),
    }
}

/// The user a path segment names, if the caller may see them.
pub fn lookup<'m>(model: &'m Model, caller: &Caller, seg: &str) -> Result<&'m User, ApiError> {
    find(model, caller, seg)
        .filter(|u| visible(model, caller, u))
        .ok_or(ApiError::NotFound)
}

/// A user as the API shows it: never the password hash.
pub fn user_json(user: &User) -> Value {
    json!({
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "authorized_keys": user.authorized_keys,
    })
}

/// The SHA-256 of the bearer token on this request, to spare the caller's
/// own session when others are ended.
fn bearer_hash(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(secret_hash(token.trim()))
}

async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || crate::password::hash(&password))
        .await
        .map_err(|e| ApiError::Internal(format!("password hashing task failed: {e}")))
}

/// `GET /users`: everyone the caller may see.
async fn list(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let model = state.db.read();
    let users: Vec<Value> = model
        .users
        .values()
        .filter(|u| visible(&model, &caller, u))
        .map(user_json)
        .collect();
    Ok(Json(users).into_response())
}

/// `GET /users/{user}`.
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    seg: Option<Path<String>>,
) -> Result<Response, ApiError> {
    let seg = seg.map(|Path(s)| s).unwrap_or_default();
    let model = state.db.read();
    let user = lookup(&model, &caller, &seg)?;
    Ok(Json(user_json(user)).into_response())
}

/// `POST /users` (cluster_admin): `username`, `email`, `password`,
/// `authorized_keys`.
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !caller.is_cluster_admin(&state.db.read()) {
        return Err(ApiError::Forbidden);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mut f = Fields::parse(content_type, &body)?;
    let username = f.required_string("username");
    if let Some(problem) = username.as_deref().and_then(username_problem) {
        f.error("username", problem);
    }
    let email = f.string("email").filter(|e| !e.is_empty());
    if let Some(problem) = email.as_deref().and_then(email_problem) {
        f.error("email", problem);
    }
    let password = f.string("password");
    if let Some(problem) = password.as_deref().and_then(password_problem) {
        f.error("password", problem);
    }
    let authorized_keys = f.string("authorized_keys").unwrap_or_default();
    if let Some(problem) = authorized_keys_problem(&authorized_keys) {
        f.error("authorized_keys", problem);
    }
    f.finish()?;
    let username = username.unwrap_or_default();
    let password_hash = match password {
        Some(p) => Some(hash_password(p).await?),
        None => None,
    };
    let created_by = caller.username.clone();
    let user = state
        .db
        .write(move |tx| {
            let taken = tx
                .model()
                .users
                .values()
                .any(|u| u.username.eq_ignore_ascii_case(&username));
            if taken {
                return Err(ApiError::field("username", "has already been taken"));
            }
            let user = User {
                id: UserId(tx.new_id::<User>()?),
                username,
                email,
                authorized_keys,
                password_hash,
            };
            tx.put(user.clone())?;
            Ok(user)
        })
        .await?;
    tracing::info!(username = %user.username, by = %created_by, "user created");
    Ok((StatusCode::CREATED, Json(user_json(&user))).into_response())
}

/// `PUT /users/{user}`: `authorized_keys` (the whole text) and `password`.
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    seg: Option<Path<String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let seg = seg.map(|Path(s)| s).unwrap_or_default();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mut f = Fields::parse(content_type, &body)?;
    let user_id = {
        let model = state.db.read();
        let user = lookup(&model, &caller, &seg)?;
        if !may_manage(&model, &caller, user) {
            return Err(ApiError::Forbidden);
        }
        if let Some(name) = f.string("username")
            && name != user.username
        {
            f.error("username", "can't be changed");
        }
        if let Some(email) = f.string("email")
            && email != user.email.clone().unwrap_or_default()
        {
            f.error("email", "can't be changed");
        }
        user.id
    };
    let authorized_keys = f.string("authorized_keys");
    if let Some(problem) = authorized_keys.as_deref().and_then(authorized_keys_problem) {
        f.error("authorized_keys", problem);
    }
    let password = f.string("password");
    if let Some(problem) = password.as_deref().and_then(password_problem) {
        f.error("password", problem);
    }
    f.finish()?;
    let password_hash = match password {
        Some(p) => Some(hash_password(p).await?),
        None => None,
    };
    let keep_session = bearer_hash(&headers);
    let user = state
        .db
        .write(move |tx| {
            let mut user = tx
                .model()
                .user(user_id)
                .cloned()
                .ok_or(ApiError::NotFound)?;
            if let Some(keys) = authorized_keys {
                user.authorized_keys = keys;
            }
            if let Some(hash) = password_hash {
                user.password_hash = Some(hash);
                let others: Vec<String> = tx
                    .model()
                    .sessions
                    .values()
                    .filter(|s| s.username == user.username)
                    .map(|s| s.token_sha256.clone())
                    .filter(|h| Some(h) != keep_session.as_ref())
                    .collect();
                for key in others {
                    tx.delete::<Session>(key)?;
                }
            }
            tx.put(user.clone())?;
            Ok::<_, ApiError>(user)
        })
        .await?;
    Ok(Json(user_json(&user)).into_response())
}

/// `DELETE /users/{user}` (cluster_admin): the user and every privilege,
/// session and API key they hold.
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(seg): Path<String>,
) -> Result<Response, ApiError> {
    let user_id = {
        let model = state.db.read();
        let user = lookup(&model, &caller, &seg)?;
        if user.id == caller.user_id {
            return Err(ApiError::refused("You cannot delete your own user"));
        }
        if !caller.is_cluster_admin(&model) || !may_manage(&model, &caller, user) {
            return Err(ApiError::Forbidden);
        }
        user.id
    };
    let by = caller.username.clone();
    let username = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let user = model.user(user_id).cloned().ok_or(ApiError::NotFound)?;
            let privileges: Vec<u64> = model
                .privileges
                .values()
                .filter(|p| p.user_id == user_id)
                .map(|p| p.id.0)
                .collect();
            let sessions: Vec<String> = model
                .sessions
                .values()
                .filter(|s| s.username == user.username)
                .map(|s| s.token_sha256.clone())
                .collect();
            let keys: Vec<u64> = model
                .api_keys
                .values()
                .filter(|k| k.user_id == user_id)
                .map(|k| k.id.0)
                .collect();
            for id in privileges {
                tx.delete::<Privilege>(id)?;
            }
            for hash in sessions {
                tx.delete::<Session>(hash)?;
            }
            for id in keys {
                tx.delete::<ApiKey>(id)?;
            }
            tx.delete::<User>(user_id.0)?;
            Ok::<_, ApiError>(user.username)
        })
        .await?;
    tracing::info!(%username, %by, "user deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_letters_and_digits_starting_with_a_letter() {
        assert_eq!(username_problem("alice2"), None);
        assert_eq!(username_problem("Bob"), None);
        assert!(username_problem("").unwrap().contains("blank"));
        assert!(
            username_problem("al-ice")
                .unwrap()
                .contains("letters and digits")
        );
        assert!(
            username_problem("al ice")
                .unwrap()
                .contains("letters and digits")
        );
        assert!(
            username_problem("2alice")
                .unwrap()
                .contains("start with a letter")
        );
        assert!(
            username_problem(&"a".repeat(65))
                .unwrap()
                .contains("too long")
        );
    }

    #[test]
    fn authorized_keys_lines_must_be_keys() {
        let good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB4x alice@laptop\n\n# old\n\
                    from=\"10.0.0.0/8\",no-pty ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB bob\n";
        assert_eq!(authorized_keys_problem(good), None);
        assert_eq!(authorized_keys_problem(""), None);
        let bad = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB4x a\nhello world\n";
        assert!(authorized_keys_problem(bad).unwrap().starts_with("line 2 "));
        assert!(authorized_keys_problem("ssh-rsa short").is_some());
    }

    #[test]
    fn emails_and_passwords() {
        assert_eq!(email_problem("a@example.com"), None);
        assert!(email_problem("example.com").is_some());
        assert!(email_problem("a b@example.com").is_some());
        assert!(password_problem("short").unwrap().contains("minimum is 8"));
        assert_eq!(password_problem("long enough"), None);
    }
}
