//! Cluster-wide settings ([G]: our addition), read and changed as one
//! object. PUT changes only the fields given; each is checked on its own:
//!
//! | field | rule |
//! |---|---|
//! | `cluster_domain` | DNS name: dot-separated labels of lower-case letters, digits, hyphens |
//! | `zones` | non-empty list of distinct names; a zone still used by a VM, node or IP range cannot go |
//! | `reserve_heads` | 0–1000 |
//! | `fence_timeout_secs` | 1–86400 (heads kill their VMs this long after losing the spine) |
//! | `fence_margin_secs` | 0–86400 |
//! | `purge_after_secs` | 0–315360000 (ten years) |
//! | `admission` | `"auto"` or `"manual"` |
//! | `default_overcommit_ratio` | above 0, at most 10 (for pools created later) |
//! | `enrollment` | `"open"` (unknown machines on the boot LAN may boot and enroll) or `"closed"` |
//! | `enrollment_role` | `"head"` or `"tail"`: what an enrolling machine boots as |
//! | `node_image_version` | a stored node image (`GET /admin/node_images`): what machines network-boot |

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::{admin, body, name_problem, overcommit_ratio};
use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::error::ApiError;
use crate::api::fields::Fields;
use crate::boot::images::NodeImageStore;
use crate::model::{Model, Role, Settings};

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/settings", get(show).put(update))
}

fn view(settings: &Settings) -> Result<Json<Value>, ApiError> {
    serde_json::to_value(settings)
        .map(Json)
        .map_err(|e| ApiError::Internal(format!("rendering settings: {e}")))
}

async fn show(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let settings = state.db.read().settings.clone();
    view(&settings)
}

fn domain_problem(domain: &str) -> Option<String> {
    if domain.len() > 253 {
        return Some("is too long (maximum is 253 characters)".into());
    }
    domain
        .split('.')
        .find_map(name_problem)
        .map(|p| format!("must be a DNS name: each dot-separated part {p}"))
}

/// Where `zone` is still used, for the refusal to remove it.
fn zone_users(model: &Model, zone: &str) -> Vec<String> {
    let mut users = vec![];
    let vms = model
        .vms
        .values()
        .filter(|v| v.zone_name.as_deref() == Some(zone))
        .count();
    if vms > 0 {
        users.push(format!("{vms} server(s)"));
    }
    let nodes: Vec<&str> = model
        .nodes
        .values()
        .filter(|n| n.zone.as_deref() == Some(zone))
        .map(|n| n.label.as_str())
        .collect();
    if !nodes.is_empty() {
        users.push(nodes.join(", "));
    }
    let ranges: Vec<&str> = model
        .ip_ranges
        .values()
        .filter(|r| r.zones.iter().any(|z| z == zone))
        .map(|r| r.spec.as_str())
        .collect();
    if !ranges.is_empty() {
        users.push(format!("IP range(s) {}", ranges.join(", ")));
    }
    users
}

fn check_zones(model: &Model, f: &mut Fields) -> Option<Vec<String>> {
    let zones = f.strings("zones")?;
    if zones.is_empty() {
        f.error("zones", "must name at least one zone");
        return None;
    }
    let mut ok = true;
    for (i, zone) in zones.iter().enumerate() {
        if let Some(problem) = name_problem(zone) {
            f.error("zones", format!("{zone:?} {problem}"));
            ok = false;
        } else if zones[..i].contains(zone) {
            f.error("zones", format!("{zone:?} is listed twice"));
            ok = false;
        }
    }
    for gone in model.settings.zones.iter().filter(|z| !zones.contains(z)) {
        let users = zone_users(model, gone);
        if !users.is_empty() {
            f.error(
                "zones",
                format!(
                    "{gone:?} cannot be removed: still used by {}",
                    users.join("; ")
                ),
            );
            ok = false;
        }
    }
    ok.then_some(zones)
}

/// The settings with the body's changes applied, or the field errors.
fn apply(model: &Model, f: &mut Fields, images: &NodeImageStore) -> Settings {
    let mut s = model.settings.clone();
    if let Some(domain) = f.required_string_if_present("cluster_domain") {
        match domain_problem(&domain) {
            Some(problem) => f.error("cluster_domain", problem),
            None => s.cluster_domain = domain,
        }
    }
    if let Some(zones) = check_zones(model, f) {
        s.zones = zones;
    }
    if let Some(n) = f.u64_in("reserve_heads", 0, 1000) {
        s.reserve_heads = n as usize;
    }
    if let Some(n) = f.u64_in("fence_timeout_secs", 1, 86_400) {
        s.fence_timeout_secs = n;
    }
    if let Some(n) = f.u64_in("fence_margin_secs", 0, 86_400) {
        s.fence_margin_secs = n;
    }
    if let Some(n) = f.u64_in("purge_after_secs", 0, 10 * 365 * 86_400) {
        s.purge_after_secs = n;
    }
    if let Some(admission) = f.required_string_if_present("admission") {
        match admission.as_str() {
            "auto" | "manual" => s.admission = admission,
            _ => f.error(
                "admission",
                "must be \"auto\" (accept new nodes) or \"manual\" (leave them pending)",
            ),
        }
    }
    if let Some(r) = overcommit_ratio(f, "default_overcommit_ratio") {
        s.default_overcommit_ratio = r;
    }
    if let Some(e) = f.required_string_if_present("enrollment") {
        match e.as_str() {
            "open" | "closed" => s.enrollment = e,
            _ => f.error(
                "enrollment",
                "must be \"open\" (unknown machines may boot and enroll) or \"closed\"",
            ),
        }
    }
    if let Some(r) = f.required_string_if_present("enrollment_role") {
        match r.as_str() {
            "head" => s.enrollment_role = Role::Head,
            "tail" => s.enrollment_role = Role::Tail,
            _ => f.error("enrollment_role", "must be \"head\" or \"tail\""),
        }
    }
    if let Some(v) = f.required_string_if_present("node_image_version") {
        if images.get(&v).is_some() {
            s.node_image_version = Some(v);
        } else {
            let stored: Vec<String> = images.list().into_iter().map(|i| i.version).collect();
            f.error(
                "node_image_version",
                format!(
                    "is not a stored node image (stored: {}; add one with `bigv-brain image add DIR`)",
                    if stored.is_empty() { "none".into() } else { stored.join(", ") }
                ),
            );
        }
    }
    s
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let mut f = body(&headers, &bytes)?;
    let images = state.node_images.clone();
    {
        // Hashing a newly added image must not hold the store's writer.
        let images = images.clone();
        tokio::task::spawn_blocking(move || images.rescan())
            .await
            .map_err(|e| ApiError::Internal(format!("scanning node images: {e}")))?;
    }
    let settings = state
        .db
        .write(move |tx| {
            let settings = apply(tx.model(), &mut f, &images);
            f.finish()?;
            if settings != tx.model().settings {
                tx.put_settings(settings.clone())?;
                tracing::info!(?settings, "cluster settings changed");
            }
            Ok::<_, ApiError>(settings)
        })
        .await?;
    state
        .spine
        .set_fence_timeout(Some(settings.fence_timeout_secs));
    state.reconcile.notify_one();
    view(&settings)
}

trait PresentString {
    /// A string field that may be absent, but not blank or null if given.
    fn required_string_if_present(&mut self, name: &str) -> Option<String>;
}

impl PresentString for Fields {
    fn required_string_if_present(&mut self, name: &str) -> Option<String> {
        if self.has(name) {
            self.required_string(name)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_dns_names() {
        assert_eq!(domain_problem("uk0.bigv.io"), None);
        assert!(domain_problem("uk0..io").unwrap().contains("blank"));
        assert!(domain_problem("UK0.io").unwrap().contains("lower-case"));
        assert!(domain_problem(&"a.".repeat(130)).unwrap().contains("253"));
    }
}
