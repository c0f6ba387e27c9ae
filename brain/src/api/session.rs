//! `/session`: logging in by password, reading a session, impersonation
//! (bigv-api.md §2.2). In BigV this was a separate auth server; the brain
//! serves it itself, so the clients' `--auth-endpoint` points here.
//!
//! Decisions ([G]):
//! - **Fixed expiry.** A session lives exactly `validity` seconds (clamped
//!   to 60..=3600, default 1800) from login and is never extended by use.
//!   The Go client asks for a validity and logs in again when its token
//!   stops working, so a sliding window buys nothing and makes a stolen
//!   token live for ever.
//! - **No Yubikey or 2FA backend.** We cannot verify one-time passwords,
//!   so a user holding a privilege that demands a Yubikey cannot log in by
//!   password at all (401 `Authentication failed: ...`; the client treats it
//!   as bad credentials). Such a user works through API keys, which never
//!   carried the yubikey requirement. Accepting the login and silently
//!   honouring the privilege would void the requirement; answering
//!   `Missing 2FA` would make the client prompt for a code we cannot check.
//!   A `2fa` or `yubikey` value sent by a user who needs none is ignored and
//!   never appears in `factors`.
//! - Only the SHA-256 of a token is stored; the token is shown once.
//! - Impersonation needs `cluster_admin`, and like granting it only reaches
//!   users strictly below the impersonator (a `cluster_su` reaches anyone).
//!   The new session ends when the impersonator's does.

use std::sync::OnceLock;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::AppState;
use super::access::{Caller, secret_hash};
use super::error::ApiError;
use super::fields::Fields;
use super::users::{MAX_USERNAME, highest_level};
use crate::model::{DbError, Level, Model, Session, Target, Tx};

pub const DEFAULT_VALIDITY: u64 = 1800;
pub const MIN_VALIDITY: u64 = 60;
pub const MAX_VALIDITY: u64 = 3600;

/// The strings the clients match on (bigv-api.md §2.2).
const BAD_CREDENTIALS: &str = "Bad login credentials";
const BAD_PARAMETERS: &str = "Badly-formed parameters";
const NEEDS_YUBIKEY: &str = "Authentication failed: a privilege of this user requires a Yubikey, \
     which this brain cannot verify; use an API key instead";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/session", post(create))
        .route("/session/{token}", get(read).post(impersonate))
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// A 400 the clients recognise, still naming what was wrong.
fn badly_formed(detail: &str) -> ApiError {
    ApiError::refused(format!("{BAD_PARAMETERS}: {detail}"))
}

fn token_response(token: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        token,
    )
        .into_response()
}

/// A PHC hash of a random password, verified against when the username is
/// unknown so that a wrong username costs as long as a wrong password.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| crate::password::hash(&crate::password::new_secret()))
}

struct Login {
    username: String,
    password: String,
    validity: u64,
}

fn read_login(headers: &HeaderMap, body: &Bytes) -> Result<Login, ApiError> {
    let mut f = Fields::parse(content_type(headers), body)
        .map_err(|_| badly_formed("the body must be a JSON object or a form"))?;
    let username = f.string("username").filter(|u| !u.is_empty());
    let password = f.string("password").filter(|p| !p.is_empty());
    let validity = f.u64("validity");
    if !f.is_ok() {
        return Err(badly_formed(
            "username and password must be strings and validity a whole number of seconds",
        ));
    }
    let (Some(username), Some(password)) = (username, password) else {
        return Err(badly_formed("username and password are both required"));
    };
    if username.len() > MAX_USERNAME {
        return Err(badly_formed("the username is too long"));
    }
    Ok(Login {
        username,
        password,
        validity: validity
            .unwrap_or(DEFAULT_VALIDITY)
            .clamp(MIN_VALIDITY, MAX_VALIDITY),
    })
}

/// Removes sessions that have run out, so the table does not grow with
/// every login.
fn purge_expired(tx: &mut Tx<'_>, now: u64) -> Result<(), DbError> {
    let expired: Vec<String> = tx
        .model()
        .sessions
        .values()
        .filter(|s| s.expires_at <= now)
        .map(|s| s.token_sha256.clone())
        .collect();
    for key in expired {
        tx.delete::<Session>(key)?;
    }
    Ok(())
}

/// Stores a new session and returns its token.
async fn start_session(
    state: &AppState,
    username: String,
    factors: Vec<String>,
    expires_at: u64,
) -> Result<String, ApiError> {
    let token = crate::password::new_secret();
    let now = state.clock.now();
    let session = Session {
        token_sha256: secret_hash(&token),
        username,
        factors,
        expires_at,
        created_at: now,
    };
    state
        .db
        .write(move |tx| {
            purge_expired(tx, now)?;
            tx.put(session)
        })
        .await?;
    Ok(token)
}

/// `POST /session`: JSON or form `username`, `password`, `validity`.
async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let login = read_login(&headers, &body)?;
    let (stored, needs_yubikey) = {
        let model = state.db.read();
        match model.user_named(&login.username) {
            Some(user) => (
                user.password_hash.clone(),
                model
                    .privileges
                    .values()
                    .any(|p| p.user_id == user.id && p.api_key_id.is_none() && p.yubikey_required),
            ),
            None => (None, false),
        }
    };
    let known = stored.is_some();
    let password = login.password;
    // argon2 is deliberately slow: keep it off the async workers.
    let matches = tokio::task::spawn_blocking(move || match &stored {
        Some(hash) => crate::password::verify(&password, hash),
        None => crate::password::verify(&password, dummy_hash()),
    })
    .await
    .map_err(|e| ApiError::Internal(format!("password check task failed: {e}")))?;
    if !(known && matches) {
        tracing::info!(username = %login.username, "login refused: bad credentials");
        return Err(ApiError::Unauthenticated(BAD_CREDENTIALS));
    }
    if needs_yubikey {
        tracing::info!(username = %login.username, "login refused: a privilege requires a yubikey");
        return Err(ApiError::Unauthenticated(NEEDS_YUBIKEY));
    }
    let expires_at = state.clock.now() + login.validity;
    let token = start_session(
        &state,
        login.username.clone(),
        vec!["password".into()],
        expires_at,
    )
    .await?;
    tracing::info!(username = %login.username, validity = login.validity, "session started");
    Ok(token_response(token))
}

/// The live session behind `token`, as a caller. API keys are not
/// sessions: the clients never send them here.
fn session_caller(model: &Model, token: &str, now: u64) -> Option<(Caller, u64)> {
    if token.starts_with("apikey.") {
        return None;
    }
    let session = model.sessions.get(&secret_hash(token))?;
    let caller = Caller::from_token(model, token, now)?;
    Some((caller, session.expires_at))
}

/// `GET /session/{token}`: who the token belongs to; 404 once it is
/// unknown or expired.
async fn read(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let model = state.db.read();
    let (caller, _) =
        session_caller(&model, &token, state.clock.now()).ok_or(ApiError::NotFound)?;
    Ok(Json(json!({
        "username": caller.username,
        "factors": caller.factors,
        "group_memberships": [],
    }))
    .into_response())
}

/// `POST /session/{token}` `{"username": "bob"}`: a new session acting as
/// bob, for operators investigating a customer's view.
async fn impersonate(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let now = state.clock.now();
    let mut f = Fields::parse(content_type(&headers), &body)?;
    let (target, factors, expires_at) = {
        let model = state.db.read();
        let (caller, expires_at) = session_caller(&model, &token, now)
            .ok_or(ApiError::Unauthenticated("Authentication failed"))?;
        if !caller.is_cluster_admin(&model) {
            return Err(ApiError::Forbidden);
        }
        let username = f.required_string("username");
        f.finish()?;
        let username = username.unwrap_or_default();
        let Some(target) = model.user_named(&username) else {
            return Err(ApiError::field("username", "is not the name of any user"));
        };
        let is_su = caller.level_on(&model, Target::Cluster) == Some(Level::ClusterSu);
        if !is_su && highest_level(&model, target.id) >= Some(Level::ClusterAdmin) {
            return Err(ApiError::Forbidden);
        }
        let mut factors: Vec<String> = caller
            .factors
            .iter()
            .filter(|f| *f != "impersonated")
            .cloned()
            .collect();
        factors.push("impersonated".into());
        tracing::info!(by = %caller.username, as_user = %target.username, "impersonation session started");
        (target.username.clone(), factors, expires_at)
    };
    let token = start_session(&state, target, factors, expires_at).await?;
    Ok(token_response(token))
}
