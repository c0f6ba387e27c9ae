//! Operator endpoints under `/admin` (bigv-api.md §11), driven by
//! `bigv admin` and the Go client's `--admin` commands.
//!
//! Access: every endpoint needs `cluster_admin` on the cluster (creating
//! cluster users needs `cluster_su`). A caller with no cluster-level
//! privilege at all gets 404, exactly as for an object it holds nothing
//! on: customers (even account admins) cannot tell the operator tree
//! exists. A caller with a lower cluster-level privilege gets 403. This is
//! why we do not use `Caller::require(Target::Cluster)` as is: every
//! privilege lies inside the cluster, so it would answer 403 to everyone.
//!
//! Handlers record intent only (flags, `Operation` records) and wake the
//! reconciler, which moves VMs and discs; live facts (online, memory, pool
//! space) come from the spine.
//!
//! Decisions ([G] points, and where the Go client 4.0 fixes a shape):
//! - Heads and tails have string node ids, but the Go client decodes `id`
//!   as an integer, so `id` is a stable number derived from the node id
//!   (53 bits of its SHA-256) and `uuid` is the node id. Path segments
//!   accept the label, the node id or that number.
//! - A head's `virtual_machines` is a list of strings (`web1.default.alice`)
//!   as the Go client expects; ids are in `/admin/heads/{id}/virtual_machines`.
//! - A pool's `discs` is a list of disc ids as strings (the Go client's
//!   `[]string`), with `discs_count` beside it; `overcommit_ratio` is sent
//!   as a whole number when it is one (the Go client decodes an int).
//! - `usage_strategy` `"default"` and `null` both mean normal use and read
//!   back as `null`. Setting it back to normal cancels a running "empty"
//!   operation on that head, tail or pool.
//! - Pool labels (`tail1-sata1`) never change, not even when the tail is
//!   relabelled: discs refer to pools by label.
//! - `?at=` (history) is refused with a 400: the brain keeps no history.
//! - `/admin/migration_jobs` lists every operation (migrations, emptying,
//!   reimages), so an operator watches all long work in one place.

mod boot;
mod images;

pub use images::TEMPLATES_DIR;
mod network;
mod node_logs;
mod nodes;
mod operations;
mod pools;
mod settings;
mod upgrades;
mod users;

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::AppState;
use super::access::Caller;
use super::error::ApiError;
use super::fields::Fields;
use crate::model::{
    Disc, Level, Model, Node, Operation, OperationKind, OperationState, Target, Vm,
};

/// Every `/admin` route.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(nodes::router())
        .merge(node_logs::router())
        .merge(pools::router())
        .merge(network::router())
        .merge(images::router())
        .merge(boot::router())
        .merge(operations::router())
        .merge(settings::router())
        .merge(upgrades::router())
        .merge(users::router())
}

/// `Ok` if the caller holds `level` on the cluster; 403 if it holds a
/// lower cluster privilege; 404 if it holds none.
pub fn require_cluster(model: &Model, caller: &Caller, level: Level) -> Result<(), ApiError> {
    match caller.level_on(model, Target::Cluster) {
        Some(held) if held >= level => Ok(()),
        Some(_) => Err(ApiError::Forbidden),
        None => Err(ApiError::NotFound),
    }
}

/// [`require_cluster`] for `cluster_admin`, against the current model.
fn admin(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    require_cluster(&state.db.read(), caller, Level::ClusterAdmin)
}

/// The request body's fields (JSON, or a form when the client says so).
fn body(headers: &HeaderMap, body: &Bytes) -> Result<Fields, ApiError> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    Fields::parse(content_type, body)
}

/// `?at=` asks for history, which the brain does not keep.
fn refuse_history(query: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if query.contains_key("at") {
        return Err(ApiError::field(
            "at",
            "history is not kept; omit at to see the present",
        ));
    }
    Ok(())
}

/// The stable number standing for a node in `id` fields: the first 53
/// bits of the SHA-256 of its node id (exact in every JSON decoder).
pub fn node_number(node_id: &str) -> u64 {
    let digest = Sha256::digest(node_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11).max(1)
}

/// Why `name` breaks the naming rules (those of VM names, bigv-api.md
/// §12: a DNS label of lower-case letters, digits and hyphens).
pub fn name_problem(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        return Some("can't be blank".into());
    }
    if name.len() > 63 {
        return Some("is too long (maximum is 63 characters)".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("may contain only lower-case letters, digits and hyphens".into());
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("must start and end with a letter or digit".into());
    }
    None
}

/// `usage_strategy` from a body: `Some(None)` for normal use (`null`,
/// `"default"` or `""`, which the Go client sends as null), `Some(Some("empty"))`
/// to keep new work off; `None` when absent or bad (the error is recorded).
fn usage_strategy(f: &mut Fields) -> Option<Option<String>> {
    if !f.has("usage_strategy") {
        return None;
    }
    if f.is_null("usage_strategy") {
        return Some(None);
    }
    // A non-string value has had its error recorded by `string`.
    match f.string("usage_strategy")?.as_str() {
        "" | "default" => Some(None),
        "empty" => Some(Some("empty".into())),
        _ => {
            f.error(
                "usage_strategy",
                "must be \"empty\" (take no new work), \"default\" or null",
            );
            None
        }
    }
}

/// A whole number that must be given, within `min..=max`.
fn required_u64_in(f: &mut Fields, name: &str, min: u64, max: u64) -> Option<u64> {
    if !f.has(name) || f.is_null(name) {
        f.error(name, "can't be blank");
        return None;
    }
    f.u64_in(name, min, max)
}

/// An overcommit ratio: a number above 0 and at most 10 (more would
/// promise ten times the space a pool has).
fn overcommit_ratio(f: &mut Fields, name: &str) -> Option<f64> {
    let value = match f.raw(name)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match value {
        Some(r) if !r.is_finite() => f.error(name, "must be a number, e.g. 1.5"),
        Some(r) if r <= 0.0 => f.error(name, "must be greater than 0"),
        Some(r) if r > 10.0 => f.error(name, "must be less than or equal to 10"),
        Some(r) => return Some(r),
        None => f.error(name, "must be a number, e.g. 1.5"),
    }
    None
}

/// A ratio as JSON: a whole number when it is one (the Go client decodes
/// `overcommit_ratio` as an integer).
fn ratio_json(r: f64) -> Value {
    if r.fract() == 0.0 && (0.0..9.0e15).contains(&r) {
        json!(r as u64)
    } else {
        json!(r)
    }
}

/// A node's label for display, or its node id if the record is gone.
fn node_label(model: &Model, node_id: &str) -> String {
    model
        .nodes
        .get(node_id)
        .map_or_else(|| node_id.to_owned(), |n| n.label.clone())
}

/// `web1.default.alice`: enough to find a VM with the clients.
fn vm_short_name(model: &Model, vm: &Vm) -> String {
    let group = model.group(vm.group_id);
    let account = group.and_then(|g| model.account(g.account_id));
    format!(
        "{}.{}.{}",
        vm.name,
        group.map_or("?", |g| g.name.as_str()),
        account.map_or("?", |a| a.name.as_str())
    )
}

/// A VM as the admin lists show it (a subset of the customer shape, with
/// the same field types so the Go client decodes it).
/// Discs placed in any of `pools` (labels), as admin JSON.
fn discs_in_pools(model: &Model, pools: &[&str]) -> Value {
    let inside = |d: &Disc| {
        d.storage_pool
            .as_deref()
            .is_some_and(|p| pools.contains(&p))
    };
    Value::Array(
        model
            .discs
            .values()
            .filter(|d| inside(d))
            .map(|d| disc_view(model, d))
            .collect(),
    )
}

/// VMs with at least one disc in any of `pools` (labels), as admin JSON.
fn vms_in_pools(model: &Model, pools: &[&str]) -> Value {
    let inside = |d: &Disc| {
        d.storage_pool
            .as_deref()
            .is_some_and(|p| pools.contains(&p))
    };
    Value::Array(
        model
            .vms
            .values()
            .filter(|v| model.discs_of(v.id).any(inside))
            .map(|v| vm_view(model, v))
            .collect(),
    )
}

fn vm_view(model: &Model, vm: &Vm) -> Value {
    json!({
        "id": vm.id,
        "name": vm.name,
        "group_id": vm.group_id,
        "cores": vm.cores,
        "memory": vm.memory,
        "power_on": vm.power_on,
        "autoreboot_on": vm.autoreboot_on,
        "deleted": vm.deleted,
        "cdrom_url": vm.cdrom_url,
        "hardware_profile": vm.hardware_profile,
        "hardware_profile_locked": vm.hardware_profile_locked,
        "keymap": vm.keymap,
        "zone_name": vm.zone_name,
        "management_address": vm.management_address,
        "hostname": model.hostname(vm),
        "head": vm.head.as_deref().map(|h| node_label(model, h)),
    })
}

/// A disc as the admin lists show it; a running migration adds its target.
fn disc_view(model: &Model, disc: &Disc) -> Value {
    let mut view = json!({
        "id": disc.id,
        "label": disc.label,
        "size": disc.size,
        "storage_grade": disc.storage_grade,
        "storage_pool": disc.storage_pool,
        "virtual_machine_id": disc.vm_id,
        "iops_limit": disc.iops_limit,
    });
    let migration = running(
        model,
        |k| matches!(k, OperationKind::MigrateDisc { disc_id, .. } if *disc_id == disc.id),
    );
    if let Some(op) = migration {
        if let OperationKind::MigrateDisc {
            to_pool: Some(pool),
            ..
        } = &op.kind
        {
            view["new_storage_pool"] = json!(pool);
        }
        view["migration_progress"] = json!(progress(op));
        view["migration_job_id"] = json!(op.id);
    }
    view
}

/// The running operation matching `pred`, if any.
fn running(model: &Model, pred: impl Fn(&OperationKind) -> bool) -> Option<&Operation> {
    model
        .operations
        .values()
        .find(|op| op.state == OperationState::Running && pred(&op.kind))
}

/// Percent done: 100 once finished, else done/total (0 before a total is
/// known).
fn progress(op: &Operation) -> u64 {
    match op.state {
        OperationState::Done => 100,
        _ if op.total == 0 => 0,
        _ => (op.done.saturating_mul(100) / op.total).min(100),
    }
}

/// A head or tail's command-and-control address: the first declared
/// address that is an IP (a port or prefix length is dropped), so clients
/// that parse it as an IP never fail.
fn cnc_address(node: &Node) -> Option<String> {
    use std::net::{IpAddr, SocketAddr};
    node.addresses.iter().find_map(|a| {
        a.parse::<IpAddr>()
            .ok()
            .or_else(|| a.parse::<SocketAddr>().ok().map(|s| s.ip()))
            .or_else(|| a.split('/').next()?.parse::<IpAddr>().ok())
            .map(|ip| ip.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_numbers_are_stable_distinct_and_json_safe() {
        let a = node_number("sim-head-0000");
        assert_eq!(a, node_number("sim-head-0000"));
        assert_ne!(a, node_number("sim-head-0001"));
        for id in ["", "52:54:00:12:34:56", "sim-tail-0009"] {
            let n = node_number(id);
            assert!((1..1 << 53).contains(&n), "{id}: {n}");
        }
    }

    #[test]
    fn names_follow_the_vm_rules_with_specific_messages() {
        assert_eq!(name_problem("bigv-test"), None);
        assert_eq!(name_problem("head3"), None);
        assert_eq!(name_problem(" ").as_deref(), Some("can't be blank"));
        assert!(name_problem("Debian").unwrap().contains("lower-case"));
        assert!(name_problem("centos-5.8").unwrap().contains("lower-case"));
        assert!(name_problem("-x").unwrap().contains("start and end"));
        assert!(name_problem(&"a".repeat(64)).unwrap().contains("63"));
    }

    #[test]
    fn cnc_address_is_the_first_ip() {
        let mut node = Node {
            node_id: "n".into(),
            role: crate::model::Role::Head,
            label: "head1".into(),
            admission: crate::model::Admission::Accepted,
            zone: None,
            usage_strategy: None,
            image_version: None,
            addresses: vec!["eth0".into(), "[fd00::10]:4000".into(), "10.0.0.1".into()],
            first_seen: 0,
        };
        assert_eq!(cnc_address(&node).as_deref(), Some("fd00::10"));
        node.addresses = vec!["192.0.2.7/24".into()];
        assert_eq!(cnc_address(&node).as_deref(), Some("192.0.2.7"));
        node.addresses.clear();
        assert_eq!(cnc_address(&node), None);
    }
}
