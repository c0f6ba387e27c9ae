//! VLANs and the IP ranges on them, from which VMs get their addresses.
//!
//! In every range the network address, the first host (the router) and,
//! for IPv4, the broadcast address are never handed out. A VLAN can be
//! deleted only when no NIC is on it and no address from its ranges is in
//! use; its (empty) ranges go with it, since there is no other way to
//! remove a range.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use ipnet::IpNet;
use serde_json::{Value, json};

use super::{admin, body, required_u64_in};
use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::error::ApiError;
use crate::api::fields::Fields;
use crate::model::{IpRange, IpRangeId, Model, Vlan, VlanId};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/vlans", get(list_vlans).post(create_vlan))
        .route("/admin/vlans/{num}", get(show_vlan).delete(delete_vlan))
        .route("/admin/ip_ranges", get(list_ranges).post(create_range))
        .route("/admin/ip_ranges/{id}", get(show_range))
}

/// Largest prefixes a range may have: room for the reserved addresses
/// and at least one VM.
const MAX_V4_PREFIX: u8 = 30;
const MAX_V6_PREFIX: u8 = 126;

/// Addresses in `net` that can never be handed out.
fn reserved(net: &IpNet) -> u128 {
    match net {
        IpNet::V4(_) => 3, // network, router, broadcast
        IpNet::V6(_) => 2, // subnet-router anycast, router
    }
}

/// Free addresses left in a range, saturating at `u64::MAX` (a /64 and
/// anything larger is, for practical purposes, inexhaustible).
fn available(model: &Model, range: &IpRange) -> u64 {
    let Ok(net) = range.spec.parse::<IpNet>() else {
        return 0;
    };
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    let total = 1u128.checked_shl(host_bits).unwrap_or(u128::MAX);
    let used = model
        .ips
        .values()
        .filter(|ip| ip.range_id == range.id)
        .count() as u128;
    let free = total.saturating_sub(reserved(&net)).saturating_sub(used);
    u64::try_from(free).unwrap_or(u64::MAX)
}

fn range_view(model: &Model, range: &IpRange) -> Value {
    json!({
        "id": range.id,
        "spec": range.spec,
        "vlan_num": range.vlan_num,
        "zones": range.zones,
        "available": available(model, range),
    })
}

fn vlan_view(model: &Model, vlan: &Vlan) -> Value {
    let ranges: Vec<Value> = model
        .ip_ranges
        .values()
        .filter(|r| r.vlan_num == vlan.num)
        .map(|r| range_view(model, r))
        .collect();
    json!({
        "id": vlan.id,
        "num": vlan.num,
        "usage_type": vlan.usage_type,
        "ip_ranges": ranges,
    })
}

fn find_vlan<'m>(model: &'m Model, seg: &str) -> Result<&'m Vlan, ApiError> {
    let num: u32 = seg.parse().map_err(|_| ApiError::NotFound)?;
    model
        .vlans
        .values()
        .find(|v| v.num == num)
        .ok_or(ApiError::NotFound)
}

async fn list_vlans(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let model = state.db.read();
    let vlans = model.vlans.values().map(|v| vlan_view(&model, v)).collect();
    Ok(Json(Value::Array(vlans)))
}

async fn show_vlan(
    State(state): State<AppState>,
    caller: Caller,
    Path(num): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let model = state.db.read();
    Ok(Json(vlan_view(&model, find_vlan(&model, &num)?)))
}

async fn create_vlan(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&state, &caller)?;
    let mut f = body(&headers, &bytes)?;
    let num = required_u64_in(&mut f, "num", 1, 4094);
    let usage_type = f.required_string("usage_type");
    if let Some(kind) = &usage_type
        && !matches!(kind.as_str(), "public" | "private" | "management")
    {
        f.error(
            "usage_type",
            "must be \"public\", \"private\" or \"management\" (consoles)",
        );
    }
    let vlan = state
        .db
        .write(move |tx| {
            if let Some(num) = num
                && tx.model().vlans.values().any(|v| u64::from(v.num) == num)
            {
                f.error("num", format!("has already been taken (VLAN {num} exists)"));
            }
            f.finish()?;
            let (Some(num), Some(usage_type)) = (num, usage_type) else {
                return Err(ApiError::Internal("validated VLAN fields missing".into()));
            };
            let vlan = Vlan {
                id: VlanId(tx.new_id::<Vlan>()?),
                num: num as u32,
                usage_type,
            };
            tx.put(vlan.clone())?;
            Ok(vlan)
        })
        .await?;
    state.reconcile.notify_one();
    let model = state.db.read();
    Ok((StatusCode::CREATED, Json(vlan_view(&model, &vlan))))
}

async fn delete_vlan(
    State(state): State<AppState>,
    caller: Caller,
    Path(num): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&state, &caller)?;
    state
        .db
        .write(move |tx| {
            let model = tx.model();
            let vlan = find_vlan(model, &num)?.clone();
            let nics = model
                .nics
                .values()
                .filter(|n| n.vlan_num == vlan.num)
                .count();
            if nics > 0 {
                return Err(ApiError::refused(format!(
                    "VLAN {} is in use by {nics} network interface(s)",
                    vlan.num
                )));
            }
            let ranges: Vec<IpRange> = model
                .ip_ranges
                .values()
                .filter(|r| r.vlan_num == vlan.num)
                .cloned()
                .collect();
            let in_use: Vec<&str> = ranges
                .iter()
                .filter(|r| model.ips.values().any(|ip| ip.range_id == r.id))
                .map(|r| r.spec.as_str())
                .collect();
            if !in_use.is_empty() {
                return Err(ApiError::refused(format!(
                    "VLAN {} has addresses in use in {}",
                    vlan.num,
                    in_use.join(", ")
                )));
            }
            for range in ranges {
                tx.delete::<IpRange>(range.id.0)?;
            }
            tx.delete::<Vlan>(vlan.id.0)?;
            tracing::info!(vlan = vlan.num, "VLAN deleted");
            Ok::<_, ApiError>(())
        })
        .await?;
    state.reconcile.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

/// A CIDR from a query or body, normalised; host bits set is an error
/// naming the network meant.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let net: IpNet = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a CIDR range, e.g. 192.0.2.0/24 or 2001:db8::/64"))?;
    if net.trunc() != net {
        return Err(format!("has host bits set; did you mean {}?", net.trunc()));
    }
    Ok(net)
}

async fn list_ranges(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    // `?cidr=` finds the range with exactly that network (the Go client
    // expects at most one).
    let wanted = match query.get("cidr") {
        Some(cidr) => Some(
            cidr.trim()
                .parse::<IpNet>()
                .map(|n| n.trunc())
                .map_err(|_| {
                    ApiError::field(
                        "cidr",
                        format!("{cidr:?} is not a CIDR range, e.g. 192.0.2.0/24"),
                    )
                })?,
        ),
        None => None,
    };
    let model = state.db.read();
    let ranges = model
        .ip_ranges
        .values()
        .filter(|r| wanted.is_none() || r.spec.parse::<IpNet>().ok() == wanted)
        .map(|r| range_view(&model, r))
        .collect();
    Ok(Json(Value::Array(ranges)))
}

async fn show_range(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &caller)?;
    let model = state.db.read();
    let range = id
        .parse::<u64>()
        .ok()
        .and_then(|id| model.ip_ranges.get(&id))
        .ok_or(ApiError::NotFound)?;
    Ok(Json(range_view(&model, range)))
}

/// The `ip_range` field: a valid network with room for VMs.
fn check_range(f: &mut Fields) -> Option<IpNet> {
    let text = f.required_string("ip_range")?;
    let net = match parse_cidr(&text) {
        Ok(net) => net,
        Err(problem) => {
            f.error("ip_range", problem);
            return None;
        }
    };
    let (max, family) = match net {
        IpNet::V4(_) => (MAX_V4_PREFIX, "IPv4"),
        IpNet::V6(_) => (MAX_V6_PREFIX, "IPv6"),
    };
    if net.prefix_len() > max {
        f.error(
            "ip_range",
            format!("is too small: {family} ranges must be /{max} or larger, to leave room for the router and VMs"),
        );
        return None;
    }
    Some(net)
}

async fn create_range(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&state, &caller)?;
    let mut f = body(&headers, &bytes)?;
    let net = check_range(&mut f);
    let vlan_num = required_u64_in(&mut f, "vlan_num", 1, 4094);
    let zones = f.strings("zones").unwrap_or_default();
    let range = state
        .db
        .write(move |tx| {
            let model = tx.model();
            if let Some(num) = vlan_num
                && !model.vlans.values().any(|v| u64::from(v.num) == num)
            {
                f.error("vlan_num", format!("no VLAN {num} exists; create it first"));
            }
            if let Some(net) = net {
                let clash = model.ip_ranges.values().find(|r| {
                    r.spec.parse::<IpNet>().is_ok_and(|other| {
                        other.contains(&net.network()) || net.contains(&other.network())
                    })
                });
                if let Some(other) = clash {
                    f.error(
                        "ip_range",
                        format!(
                            "overlaps {} (range {}, VLAN {})",
                            other.spec, other.id, other.vlan_num
                        ),
                    );
                }
            }
            for zone in &zones {
                if !model.settings.zones.contains(zone) {
                    f.error(
                        "zones",
                        format!(
                            "{zone:?} is not a zone of this cluster (zones: {})",
                            model.settings.zones.join(", ")
                        ),
                    );
                }
            }
            f.finish()?;
            let (Some(net), Some(vlan_num)) = (net, vlan_num) else {
                return Err(ApiError::Internal("validated range fields missing".into()));
            };
            let range = IpRange {
                id: IpRangeId(tx.new_id::<IpRange>()?),
                spec: net.to_string(),
                vlan_num: vlan_num as u32,
                zones,
            };
            tx.put(range.clone())?;
            tracing::info!(range = %range.spec, vlan = range.vlan_num, "IP range added");
            Ok(range)
        })
        .await?;
    state.reconcile.notify_one();
    let model = state.db.read();
    Ok((StatusCode::CREATED, Json(range_view(&model, &range))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(spec: &str) -> IpRange {
        IpRange {
            id: IpRangeId(1),
            spec: spec.into(),
            vlan_num: 1,
            zones: vec![],
        }
    }

    #[test]
    fn available_leaves_out_reserved_addresses_and_saturates() {
        let model = Model::default();
        assert_eq!(available(&model, &range("192.0.2.0/24")), 253);
        assert_eq!(available(&model, &range("192.0.2.0/30")), 1);
        assert_eq!(available(&model, &range("2001:db8::/126")), 2);
        assert_eq!(available(&model, &range("2001:db8::/64")), u64::MAX - 1);
        assert_eq!(available(&model, &range("2001:db8::/48")), u64::MAX);
        assert_eq!(available(&model, &range("::/0")), u64::MAX);
    }

    #[test]
    fn cidrs_must_be_networks() {
        assert!(parse_cidr("192.0.2.0/24").is_ok());
        assert!(
            parse_cidr("192.0.2.5/24")
                .unwrap_err()
                .contains("192.0.2.0/24")
        );
        assert!(parse_cidr("2001:db8::/64").is_ok());
        assert!(parse_cidr("banana").unwrap_err().contains("not a CIDR"));
    }
}
