//! Network boot ([G]: our addition): node images (what heads and tails
//! boot; not the customer OS images of `/admin/images`) and the machines
//! on the boot LAN.
//!
//! - `GET /admin/node_images`: the stored node images, oldest first, with
//!   `target` on the cluster's `node_image_version`. Images are added with
//!   `bigv-brain image add DIR` on the brain's host (which verifies every
//!   file against the manifest); this lists what the brain found.
//! - `GET /admin/machines`: every machine the boot LAN knows: registered
//!   by an operator, seen enrolling, or joined (then with its node's
//!   label, admission and image check).
//! - `POST /admin/machines` `{mac, role, boot_address?, pools?, discs?}`:
//!   registers a machine so that it boots with that role (and fixed
//!   address) even when enrollment is closed. Registering a machine seen
//!   enrolling makes it registered with the role given; registering one
//!   again updates it: fields left out stay as they were, `null` clears
//!   `boot_address`, `[]` clears `pools`/`discs`. Tails
//!   only: `pools` (`["NAME:GRADE:/DIR", …]`) and `discs`
//!   (`["DEV:/DIR[:format]", …]`) go onto its kernel command line
//!   (`boot/storage.rs`) and apply from its next boot.
//! - `DELETE /admin/machines/{mac}`: forgets a machine (its node record,
//!   if any, stays: remove it from service with `usage_strategy`).

use std::net::Ipv4Addr;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get};
use axum::{Json, Router};
use bigv_pxe::MacAddr;
use serde_json::{Value, json};

use super::{admin, body};
use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::error::ApiError;
use crate::api::fields::Fields;
use crate::boot::check::{ImageCheck, image_check};

use crate::boot::images::NodeImage;
use crate::boot::policy::role_name;
use crate::boot::storage;
use crate::model::{Admission, Machine, Model, Role};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/node_images", get(list_images))
        .route("/admin/machines", get(list_machines).post(register))
        .route("/admin/machines/{mac}", delete(forget).get(show_machine))
}

fn image_view(image: &NodeImage, target: Option<&str>) -> Value {
    json!({
        "version": image.version,
        "kernel_version": image.kernel_version,
        "files": image.files,
        "added_at": image.added_at,
        "target": target == Some(image.version.as_str()),
    })
}

async fn list_images(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let images = state.node_images.clone();
    tokio::task::spawn_blocking(move || images.rescan())
        .await
        .map_err(|e| ApiError::Internal(format!("scanning node images: {e}")))?;
    let target = state.db.read().settings.node_image_version.clone();
    Ok(Json(Value::Array(
        state
            .node_images
            .list()
            .iter()
            .map(|i| image_view(i, target.as_deref()))
            .collect(),
    )))
}

fn machine_view(model: &Model, m: &Machine) -> Value {
    let node = model.nodes.get(&m.mac);
    let state = match node.map(|n| n.admission) {
        Some(Admission::Pending) => "pending",
        Some(Admission::Accepted) => "accepted",
        None if m.booted_version.is_some() || m.lease.is_some() => "enrolling",
        None => "registered",
    };
    let check = node.map_or(ImageCheck::NotChecked, |n| image_check(model, n));
    json!({
        "mac": m.mac,
        "role": role_name(node.map_or(m.role, |n| n.role)),
        "registered": m.registered,
        "state": state,
        "boot_address": m.boot_address,
        "address": m.lease.as_ref().map(|l| l.address.clone()),
        "lease_expires": m.lease.as_ref().map(|l| l.expires),
        "booted_version": m.booted_version,
        "first_seen": m.first_seen,
        "last_boot_at": m.last_boot_at,
        "label": node.map(|n| n.label.clone()),
        "image_version": node.and_then(|n| n.image_version.clone()),
        "image_mismatch": check.is_mismatch(),
        "pools": m.pools,
        "discs": m.discs,
    })
}

async fn list_machines(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let model = state.db.read();
    Ok(Json(Value::Array(
        model
            .machines
            .values()
            .map(|m| machine_view(&model, m))
            .collect(),
    )))
}

fn parse_mac(seg: &str) -> Result<MacAddr, ApiError> {
    seg.parse()
        .map_err(|e: bigv_pxe::ParseMacError| ApiError::field("mac", e.to_string()))
}

async fn show_machine(
    State(state): State<AppState>,
    caller: Caller,
    Path(mac): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let mac = parse_mac(&mac)?;
    let model = state.db.read();
    let m = model
        .machines
        .get(&mac.to_string())
        .ok_or(ApiError::NotFound)?;
    Ok(Json(machine_view(&model, m)))
}

fn role(f: &mut Fields) -> Option<Role> {
    match f.required_string("role")?.as_str() {
        "head" => Some(Role::Head),
        "tail" => Some(Role::Tail),
        _ => {
            f.error("role", "must be \"head\" or \"tail\"");
            None
        }
    }
}

async fn register(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&state, &caller)?;
    let mut f = body(&headers, &bytes)?;
    let mac = f
        .required_string("mac")
        .and_then(|s| match s.parse::<MacAddr>() {
            Ok(m) => Some(m),
            Err(e) => {
                f.error("mac", e.to_string());
                None
            }
        });
    let role = role(&mut f);
    // None: keep what is stored; Some(None): clear it.
    let clear_address = f.has("boot_address") && f.is_null("boot_address");
    let address = if f.has("boot_address") && !f.is_null("boot_address") {
        f.string("boot_address")
            .and_then(|s| match s.parse::<Ipv4Addr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    f.error("boot_address", "must be an IPv4 address, e.g. 10.0.0.11");
                    None
                }
            })
    } else {
        None
    };
    let pools = storage_list(&mut f, "pools", storage::check_pools);
    let discs = storage_list(&mut f, "discs", storage::check_discs);
    if role == Some(Role::Head) {
        for (name, v) in [("pools", &pools), ("discs", &discs)] {
            if v.as_ref().is_some_and(|v| !v.is_empty()) {
                f.error(name, "only tails have storage pools and data discs");
            }
        }
    }
    let now = state.clock.now();
    let (status, key) = state
        .db
        .write(move |tx| {
            let model = tx.model();
            if let (Some(mac), Some(role)) = (mac, role)
                && let Some(node) = model.nodes.get(&mac.to_string())
                && node.role != role
            {
                f.error(
                    "role",
                    format!(
                        "{mac} has already joined as {} {}",
                        role_name(node.role),
                        node.label
                    ),
                );
            }
            if let (Some(mac), Some(addr)) = (mac, address) {
                let a = addr.to_string();
                if let Some(other) = model
                    .machines
                    .values()
                    .find(|m| m.mac != mac.to_string() && m.boot_address.as_deref() == Some(&a))
                {
                    f.error("boot_address", format!("is already {}'s", other.mac));
                }
            }
            f.finish()?;
            let (Some(mac), Some(role)) = (mac, role) else {
                return Err(ApiError::Internal("validated machine fields missing".into()));
            };
            let key = mac.to_string();
            let existing = model.machines.get(&key).cloned();
            let status = if existing.is_some() {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            let m = Machine {
                mac: key.clone(),
                role,
                boot_address: match address {
                    Some(a) => Some(a.to_string()),
                    None if clear_address => None,
                    None => existing.as_ref().and_then(|m| m.boot_address.clone()),
                },
                registered: true,
                first_seen: existing.as_ref().and_then(|m| m.first_seen).or(Some(now)),
                lease: existing.as_ref().and_then(|m| m.lease.clone()),
                booted_version: existing.as_ref().and_then(|m| m.booted_version.clone()),
                last_boot_at: existing.as_ref().and_then(|m| m.last_boot_at),
                pools: pools
                    .or_else(|| existing.as_ref().map(|m| m.pools.clone()))
                    .unwrap_or_default(),
                discs: discs
                    .or_else(|| existing.as_ref().map(|m| m.discs.clone()))
                    .unwrap_or_default(),
            };
            // A tail registered again as a head keeps no storage.
            let m = match role {
                Role::Head => Machine {
                    pools: vec![],
                    discs: vec![],
                    ..m
                },
                Role::Tail => m,
            };
            tracing::info!(mac = %m.mac, role = role_name(role), address = ?m.boot_address, "machine registered");
            tx.put(m)?;
            Ok::<_, ApiError>((status, key))
        })
        .await?;
    let model = state.db.read();
    let m = model.machines.get(&key).ok_or(ApiError::NotFound)?;
    Ok((status, Json(machine_view(&model, m))))
}

/// `pools` or `discs`: absent (None, keep what is stored) or a list of
/// strings each `check` accepts.
fn storage_list(
    f: &mut Fields,
    name: &str,
    check: fn(&[String]) -> Result<(), String>,
) -> Option<Vec<String>> {
    if !f.has(name) || f.is_null(name) {
        return None;
    }
    let v = f.strings(name)?;
    match check(&v) {
        Ok(()) => Some(v),
        Err(e) => {
            f.error(name, e);
            None
        }
    }
}

async fn forget(
    State(state): State<AppState>,
    caller: Caller,
    Path(mac): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&state, &caller)?;
    let mac = parse_mac(&mac)?;
    state
        .db
        .write(move |tx| {
            let key = mac.to_string();
            if !tx.model().machines.contains_key(&key) {
                return Err(ApiError::NotFound);
            }
            tx.delete::<Machine>(key)?;
            tracing::info!(%mac, "machine forgotten");
            Ok::<_, ApiError>(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
