//! The HTTP API the BigV clients speak (bigv-api.md), plus `/session`.
//!
//! Handlers read the in-memory model and write through [`Db::write`];
//! they never talk to nodes: after a write they wake the reconciler, which
//! makes the cluster match (BRIEF §3.1).
//!
//! - `error.rs`: the closed set of errors and their bodies.
//! - `fields.rs`: field-by-field body reading and validation.
//! - `access.rs`: the caller, privileges, 404-vs-403.
//! - `time.rs`: timestamps.

pub mod access;
pub mod accounts;
pub mod addresses;
pub mod admin;
pub mod api_keys;
pub mod backups;
pub mod definitions;
pub mod discs;
pub mod error;
pub mod fields;
pub mod groups;
pub mod lookup;
pub mod names;
pub mod nics;
pub mod power;
pub mod privileges;
pub mod session;
pub mod time;
pub mod tls;
pub mod users;
pub mod views;
pub mod vm_create;
pub mod vms;

use std::sync::Arc;

use axum::Router;
use bigv_spine::SpineServer;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::model::Db;

pub use access::Caller;
pub use error::ApiError;
pub use fields::Fields;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: Arc<Db>,
    pub clock: Clock,
    /// Live node facts (online, free memory, pool space) for admin views.
    pub spine: Arc<SpineServer>,
    /// Wakes the reconciler after a write so it acts at once.
    pub reconcile: Arc<Notify>,
    /// The node images (what heads and tails network-boot).
    pub node_images: Arc<crate::boot::images::NodeImageStore>,
    /// OS template files, `NAME.raw` (`<data dir>/templates`).
    pub templates: Arc<std::path::PathBuf>,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(session::routes())
        .merge(definitions::routes())
        .merge(users::routes())
        .merge(privileges::routes())
        .merge(api_keys::routes())
        .merge(admin::router())
        .merge(accounts::routes())
        .merge(groups::routes())
        .merge(vms::routes())
        .merge(vm_create::routes())
        .merge(power::routes())
        .merge(discs::routes())
        .merge(backups::routes())
        .merge(nics::routes())
        .layer(axum::extract::DefaultBodyLimit::max(fields::MAX_BODY))
        .with_state(state)
}
