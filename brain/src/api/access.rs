//! Who is calling, and what they may see and do (bigv-api.md §2.3, §7.2).
//!
//! A privilege gives a level on a target; it applies to the target and
//! everything inside it (cluster ⊃ account ⊃ group ⊃ VM). An object the
//! caller holds no privilege on or within is invisible (404); one it can
//! see but lacks the level for is forbidden (403).

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::model::{ApiKeyId, Level, Model, Privilege, Target, UserId};

/// An authenticated caller, from a session token or an API key.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: UserId,
    pub username: String,
    pub factors: Vec<String>,
    /// Set when the caller authenticated with an API key.
    pub api_key: Option<ApiKeyId>,
}

/// SHA-256 hex of a secret; tokens and API keys are stored only this way.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Caller {
    /// Resolves a bearer token against sessions and API keys.
    pub fn from_token(model: &Model, token: &str, now: u64) -> Option<Caller> {
        let hash = secret_hash(token);
        if token.starts_with("apikey.") {
            let key = model.api_keys.values().find(|k| k.secret_sha256 == hash)?;
            if key
                .expires_at
                .as_deref()
                .and_then(super::time::parse_time)
                .is_some_and(|t| t <= now)
            {
                return None;
            }
            let user = model.user(key.user_id)?;
            return Some(Caller {
                user_id: user.id,
                username: user.username.clone(),
                factors: vec!["apikey".into()],
                api_key: Some(key.id),
            });
        }
        let session = model.sessions.get(&hash)?;
        if session.expires_at <= now {
            return None;
        }
        let user = model.user_named(&session.username)?;
        Some(Caller {
            user_id: user.id,
            username: user.username.clone(),
            factors: session.factors.clone(),
            api_key: None,
        })
    }

    /// The privileges that speak for this caller. An API key carries the
    /// privileges granted to it; a key with none acts with its user's own.
    pub fn privileges<'m>(&self, model: &'m Model) -> Vec<&'m Privilege> {
        let mine = model
            .privileges
            .values()
            .filter(|p| p.user_id == self.user_id);
        let for_key: Vec<&Privilege> = mine
            .clone()
            .filter(|p| p.api_key_id.is_some() && p.api_key_id == self.api_key)
            .collect();
        if self.api_key.is_some() && !for_key.is_empty() {
            for_key
        } else {
            mine.filter(|p| p.api_key_id.is_none()).collect()
        }
    }

    /// The highest level the caller holds on `target` or anything above it.
    pub fn level_on(&self, model: &Model, target: Target) -> Option<Level> {
        let above = ancestors(model, target);
        self.privileges(model)
            .into_iter()
            .filter(|p| above.contains(&p.target))
            .map(|p| p.level)
            .max()
    }

    /// Whether the caller holds any privilege on, above or inside `target`.
    pub fn can_see(&self, model: &Model, target: Target) -> bool {
        self.level_on(model, target).is_some()
            || self
                .privileges(model)
                .into_iter()
                .any(|p| ancestors(model, p.target).contains(&target))
    }

    /// `Ok` if the caller holds at least `level` on `target`; otherwise 404
    /// if it cannot even see it, 403 if it can.
    pub fn require(&self, model: &Model, target: Target, level: Level) -> Result<(), ApiError> {
        match self.level_on(model, target) {
            Some(held) if held >= level => Ok(()),
            _ if self.can_see(model, target) => Err(ApiError::Forbidden),
            _ => Err(ApiError::NotFound),
        }
    }

    pub fn is_cluster_admin(&self, model: &Model) -> bool {
        self.level_on(model, Target::Cluster) >= Some(Level::ClusterAdmin)
    }
}

/// `target` and every target containing it, innermost first.
pub fn ancestors(model: &Model, target: Target) -> Vec<Target> {
    let group_of = |vm| model.vm(vm).map(|v| Target::Group(v.group_id));
    let account_of = |group| model.group(group).map(|g| Target::Account(g.account_id));
    let mut chain = vec![target];
    let mut next = match target {
        Target::Vm(vm) => group_of(vm),
        Target::Group(g) => account_of(g),
        Target::Account(_) => Some(Target::Cluster),
        Target::Cluster => None,
    };
    while let Some(t) = next {
        chain.push(t);
        next = match t {
            Target::Group(g) => account_of(g),
            Target::Account(_) => Some(Target::Cluster),
            Target::Vm(_) | Target::Cluster => None,
        };
    }
    // Cluster privileges reach even records whose parents are gone.
    if chain.last() != Some(&Target::Cluster) {
        chain.push(Target::Cluster);
    }
    chain
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthenticated("Authentication failed"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthenticated("Authentication failed"))?;
        let model = state.db.read();
        Caller::from_token(&model, token, state.clock.now())
            .ok_or(ApiError::Unauthenticated("Authentication failed"))
    }
}
