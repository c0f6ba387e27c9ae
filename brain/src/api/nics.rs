//! Network interfaces and their addresses (bigv-api.md §8).
//!
//! NICs come with their VM and go with it; the API only shows them and
//! adds extra addresses to them (`ip_create`). Each extra address is
//! routed via the NIC's primary address of the same family. `/ips/{ip}`
//! shows an address, sets its reverse DNS, or gives an extra address
//! back; `swap_virtual_machine_ips` swaps two servers' addresses.

use std::collections::BTreeMap;
use std::net::IpAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::access::Caller;
use super::addresses::{Allocator, Family};
use super::error::ApiError;
use super::views::{self, Flags};
use super::vms::find_vm;
use super::{AppState, names};
use crate::model::{IpRecord, Level, Model, Nic, Target, Tx, Vm, VmId};

/// Extra addresses one `ip_create` may ask for.
pub const MAX_EXTRA_PER_REQUEST: u64 = 4;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/accounts/{acc}/groups/{grp}/virtual_machines/{vm}/nics",
            get(list),
        )
        .route(
            "/accounts/{acc}/groups/{grp}/virtual_machines/{vm}/nics/{nic}",
            get(show),
        )
        .route(
            "/accounts/{acc}/groups/{grp}/virtual_machines/{vm}/nics/{nic}/ip_create",
            post(ip_create),
        )
        .route("/ips/swap_virtual_machine_ips", post(swap))
        .route("/ips/{ip}", get(show_ip).put(update_ip).delete(remove_ip))
}

/// A VM's NIC by id, or by label when it has one.
fn find_nic<'m>(model: &'m Model, vm: &Vm, seg: &str) -> Result<&'m Nic, ApiError> {
    let by_id = seg.parse::<u64>().ok();
    model
        .nics_of(vm.id)
        .find(|n| Some(n.id.0) == by_id || n.label.as_deref() == Some(seg))
        .ok_or(ApiError::NotFound)
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp, vm)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let flags = Flags::parse(query.as_deref());
    let model = state.db.read();
    let found = find_vm(&model, &caller, &acc, &grp, &vm, flags.include_deleted)?;
    Ok(Json(Value::Array(
        model.nics_of(found.id).map(views::nic).collect(),
    )))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp, vm, nic)): Path<(String, String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let flags = Flags::parse(query.as_deref());
    let model = state.db.read();
    let found = find_vm(&model, &caller, &acc, &grp, &vm, flags.include_deleted)?;
    Ok(Json(views::nic(find_nic(&model, found, &nic)?)))
}

/// The NIC's primary address of `family`, if it has one.
fn primary_of(nic: &Nic, family: Family) -> Option<String> {
    nic.ips
        .iter()
        .find(|a| {
            a.parse::<IpAddr>()
                .is_ok_and(|ip| Family::of(&ip) == family)
        })
        .cloned()
}

async fn ip_create(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp, vm, nic)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut f = views::body(&headers, &body)?;
    let added = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let found = find_vm(model, &caller, &acc, &grp, &vm, false)?;
            caller.require(model, Target::Vm(found.id), Level::VmAdmin)?;
            let nic = find_nic(model, found, &nic)?;
            let count = if f.has("addresses") {
                f.u64_in("addresses", 1, MAX_EXTRA_PER_REQUEST)
            } else {
                Some(1)
            };
            let family = match f.string("family").filter(|s| !s.is_empty()) {
                None => Some(Family::V4),
                Some(s) => {
                    let parsed = Family::parse(&s);
                    if parsed.is_none() {
                        f.error("family", "is not one of ipv4, ipv6");
                    }
                    parsed
                }
            };
            let reason = f.string("reason").unwrap_or_default();
            let contiguous = f.bool("contiguous").unwrap_or(false);
            let via = family.and_then(|fam| primary_of(nic, fam));
            if let (Some(fam), None) = (family, &via) {
                f.error(
                    "family",
                    format!(
                        "this interface has no primary {} address for extra ones to be routed via",
                        fam.name()
                    ),
                );
            }
            f.finish()?;
            let (Some(count), Some(family), Some(via)) = (count, family, via) else {
                return Err(ApiError::Internal("ip_create passed checks unread".into()));
            };
            let got = Allocator::new(model)
                .extras(
                    family,
                    nic.vlan_num,
                    found.zone_name.as_deref(),
                    count as usize,
                    contiguous,
                )
                .map_err(|e| ApiError::field("addresses", e))?;
            let mut changed = nic.clone();
            let vm_id = found.id;
            let mut added = vec![];
            for c in got {
                let address = c.address.to_string();
                changed.extra_ips.insert(address.clone(), via.clone());
                tx.put(IpRecord {
                    address: address.clone(),
                    range_id: c.range_id,
                    nic_id: Some(changed.id),
                    rdns: None,
                })?;
                added.push(address);
            }
            tracing::info!(vm = %vm_id, ips = ?added, %reason, by = %caller.username, "added extra addresses");
            tx.put(changed)?;
            Ok::<_, ApiError>(added)
        })
        .await?;
    state.reconcile.notify_one();
    Ok(Json(json!({ "ips": added })).into_response())
}

/// The VM an address belongs to: through its NIC, or as the VM's
/// management address.
fn owner(model: &Model, r: &IpRecord) -> Option<VmId> {
    r.nic_id
        .and_then(|n| model.nics.get(&n.0))
        .map(|n| n.vm_id)
        .or_else(|| {
            model
                .vms
                .values()
                .find(|v| v.management_address.as_deref() == Some(r.address.as_str()))
                .map(|v| v.id)
        })
}

/// The address record at `/ips/{seg}`, if the caller may see it; with the
/// VM owning it (addresses no VM owns are for cluster admins).
fn find_ip<'m>(
    model: &'m Model,
    caller: &Caller,
    seg: &str,
) -> Result<(&'m IpRecord, Option<VmId>), ApiError> {
    let addr: IpAddr = seg.parse().map_err(|_| ApiError::NotFound)?;
    let r = model.ips.get(&addr.to_string()).ok_or(ApiError::NotFound)?;
    let vm = owner(model, r);
    let visible = match vm {
        Some(v) => caller.can_see(model, Target::Vm(v)),
        None => caller.is_cluster_admin(model),
    };
    if visible {
        Ok((r, vm))
    } else {
        Err(ApiError::NotFound)
    }
}

fn require_owner(model: &Model, caller: &Caller, vm: Option<VmId>) -> Result<(), ApiError> {
    match vm {
        Some(v) => caller.require(model, Target::Vm(v), Level::VmAdmin),
        None => caller.require(model, Target::Cluster, Level::ClusterAdmin),
    }
}

async fn show_ip(
    State(state): State<AppState>,
    caller: Caller,
    Path(ip): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let model = state.db.read();
    let (r, _) = find_ip(&model, &caller, &ip)?;
    Ok(Json(views::ip(&model, r)))
}

/// Sets (or with null/"" clears) the address's reverse DNS name.
async fn update_ip(
    State(state): State<AppState>,
    caller: Caller,
    Path(ip): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut f = views::body(&headers, &body)?;
    let changed = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let (r, vm) = find_ip(model, &caller, &ip)?;
            require_owner(model, &caller, vm)?;
            let mut changed = r.clone();
            if f.has("rdns") {
                changed.rdns = f.string("rdns").filter(|s| !s.is_empty());
                if let Some(name) = &changed.rdns {
                    for p in names::rdns_problems(name) {
                        f.error("rdns", p);
                    }
                }
            }
            f.finish()?;
            if changed != *r {
                tx.put(changed.clone())?;
            }
            Ok::<_, ApiError>(changed)
        })
        .await?;
    let model = state.db.read();
    Ok(Json(views::ip(&model, &changed)).into_response())
}

/// Gives an extra address back; primary addresses go with their server.
async fn remove_ip(
    State(state): State<AppState>,
    caller: Caller,
    Path(ip): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .db
        .write(move |tx| {
            let model = tx.model();
            let (r, vm) = find_ip(model, &caller, &ip)?;
            require_owner(model, &caller, vm)?;
            let nic = r.nic_id.and_then(|n| model.nics.get(&n.0));
            let Some(nic) = nic.filter(|n| n.extra_ips.contains_key(&r.address)) else {
                return Err(ApiError::refused(format!(
                    "{} is a primary address: it is freed when its server is purged",
                    r.address
                )));
            };
            let mut changed = nic.clone();
            changed.extra_ips.remove(&r.address);
            let address = r.address.clone();
            tx.put(changed)?;
            tx.delete::<IpRecord>(address.clone())?;
            tracing::info!(%address, by = %caller.username, "freed an extra address");
            Ok::<_, ApiError>(())
        })
        .await?;
    state.reconcile.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

/// Points every extra address of `nic` at its own primary of that family.
fn reroute(nic: &mut Nic) {
    let routes: BTreeMap<String, String> = nic
        .extra_ips
        .iter()
        .map(|(extra, via)| {
            let fam = extra.parse::<IpAddr>().ok().map(|a| Family::of(&a));
            let own = fam.and_then(|f| primary_of(nic, f));
            (extra.clone(), own.unwrap_or_else(|| via.clone()))
        })
        .collect();
    nic.extra_ips = routes;
}

/// Swaps the primary addresses (and with `move_additional_ips`, the extra
/// ones) of two servers' first NICs, which must be on the same VLAN.
fn swap_ips(tx: &mut Tx<'_>, caller: &Caller, mut f: super::Fields) -> Result<Vec<VmId>, ApiError> {
    let model = tx.model();
    let first = f.u64("virtual_machine_1_id");
    let second = f.u64("virtual_machine_2_id");
    for (field, v) in [
        ("virtual_machine_1_id", first),
        ("virtual_machine_2_id", second),
    ] {
        if v.is_none() && !f.has(field) {
            f.error(field, "can't be blank");
        }
    }
    let move_extra = f.bool("move_additional_ips").unwrap_or(false);
    if first.is_some() && first == second {
        f.error(
            "virtual_machine_2_id",
            "must be a different server from virtual_machine_1_id",
        );
    }
    f.finish()?;
    let (Some(first), Some(second)) = (first, second) else {
        return Err(ApiError::Internal("swap passed checks unread".into()));
    };
    let mut nics = vec![];
    for id in [VmId(first), VmId(second)] {
        let vm = model
            .vm(id)
            .filter(|v| !v.deleted && caller.can_see(model, Target::Vm(v.id)))
            .ok_or(ApiError::NotFound)?;
        caller.require(model, Target::Vm(id), Level::VmAdmin)?;
        let nic = model
            .nics_of(id)
            .next()
            .ok_or_else(|| ApiError::refused(format!("{} has no network interface", vm.name)))?;
        nics.push(nic.clone());
    }
    let (mut a, mut b) = (nics[0].clone(), nics[1].clone());
    if a.vlan_num != b.vlan_num {
        return Err(ApiError::refused(
            "the two servers are on different networks (VLANs), so their addresses cannot swap",
        ));
    }
    std::mem::swap(&mut a.ips, &mut b.ips);
    if move_extra {
        std::mem::swap(&mut a.extra_ips, &mut b.extra_ips);
    }
    reroute(&mut a);
    reroute(&mut b);
    let mut records = vec![];
    for nic in [&a, &b] {
        for address in nic.ips.iter().chain(nic.extra_ips.keys()) {
            if let Some(r) = model.ips.get(address)
                && r.nic_id != Some(nic.id)
            {
                let mut r = r.clone();
                r.nic_id = Some(nic.id);
                records.push(r);
            }
        }
    }
    for r in records {
        tx.put(r)?;
    }
    let ids = vec![a.vm_id, b.vm_id];
    tx.put(a)?;
    tx.put(b)?;
    tracing::info!(vms = ?ids, move_extra, by = %caller.username, "swapped addresses");
    Ok(ids)
}

async fn swap(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let f = views::body(&headers, &body)?;
    let ids = state.db.write(move |tx| swap_ips(tx, &caller, f)).await?;
    state.reconcile.notify_one();
    let model = state.db.read();
    let vms: Vec<Value> = ids
        .iter()
        .filter_map(|id| model.vm(*id))
        .map(|v| views::vm(&model, v))
        .collect();
    Ok(Json(json!({ "virtual_machines": vms })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NicId;

    #[test]
    fn extra_addresses_follow_their_nics_primary() {
        let mut nic = Nic {
            id: NicId(1),
            vm_id: VmId(1),
            label: None,
            mac: "fe:ff:00:00:00:01".into(),
            vlan_num: 1,
            ips: vec!["192.0.2.20".into(), "2001:db8::20".into()],
            extra_ips: BTreeMap::from([
                ("192.0.2.30".into(), "192.0.2.10".into()),
                ("2001:db8::30".into(), "2001:db8::10".into()),
            ]),
        };
        reroute(&mut nic);
        assert_eq!(nic.extra_ips["192.0.2.30"], "192.0.2.20");
        assert_eq!(nic.extra_ips["2001:db8::30"], "2001:db8::20");
    }
}
