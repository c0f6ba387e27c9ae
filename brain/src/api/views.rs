//! The JSON shapes of accounts, groups, VMs, discs, NICs and IPs, exactly
//! as the BigV clients decode them (bigv-api.md §4, §5.2, §6, §8).
//!
//! A VM always carries its discs and NICs (the client reads them from
//! every VM it fetches); accounts and groups embed their children only
//! with `view=overview`, and deleted VMs appear only with
//! `include_deleted=true`. Embedded children are filtered to what the
//! caller may see.

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use serde_json::{Value, json};

use super::access::Caller;
use super::error::ApiError;
use super::fields::{Fields, truthy};
use crate::model::{
    Account, Backup, BackupSchedule, Disc, Group, IpRecord, Model, Nic, Pool, Target, Vm,
};

/// The query flags the API honours; anything else is ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags {
    pub overview: bool,
    pub include_deleted: bool,
    pub purge: bool,
}

impl Flags {
    /// From a raw query string; Python's `True` counts as true.
    pub fn parse(query: Option<&str>) -> Flags {
        let pairs: Vec<(String, String)> = query
            .and_then(|q| serde_urlencoded::from_str(q).ok())
            .unwrap_or_default();
        let mut flags = Flags::default();
        for (k, v) in pairs {
            let on = truthy(&v).unwrap_or(false);
            match k.as_str() {
                "view" => flags.overview = v.eq_ignore_ascii_case("overview"),
                "include_deleted" => flags.include_deleted = on,
                "purge" => flags.purge = on,
                _ => {}
            }
        }
        flags
    }
}

/// A request body as fields, JSON or form-encoded by its content type.
pub fn body(headers: &HeaderMap, body: &Bytes) -> Result<Fields, ApiError> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    Fields::parse(content_type, body)
}

pub fn account(model: &Model, caller: &Caller, a: &Account, flags: Flags) -> Value {
    let mut out = json!({"id": a.id, "name": a.name, "suspended": a.suspended});
    if flags.overview {
        let groups: Vec<Value> = model
            .groups_of(a.id)
            .filter(|g| caller.can_see(model, Target::Group(g.id)))
            .map(|g| group(model, caller, g, flags))
            .collect();
        out["groups"] = Value::Array(groups);
    }
    out
}

pub fn group(model: &Model, caller: &Caller, g: &Group, flags: Flags) -> Value {
    let mut out = json!({"id": g.id, "account_id": g.account_id, "name": g.name});
    if flags.overview {
        out["virtual_machines"] = Value::Array(
            visible_vms(model, caller, g, flags.include_deleted)
                .map(|v| vm(model, v))
                .collect(),
        );
    }
    out
}

/// The group's VMs the caller can see, in id order.
pub fn visible_vms<'m>(
    model: &'m Model,
    caller: &'m Caller,
    g: &Group,
    include_deleted: bool,
) -> impl Iterator<Item = &'m Vm> {
    model
        .vms_in(g.id)
        .filter(move |v| include_deleted || !v.deleted)
        .filter(move |v| caller.can_see(model, Target::Vm(v.id)))
}

/// The label of the head a VM is placed on (`head1`), or null.
fn head_label(model: &Model, v: &Vm) -> Value {
    v.head
        .as_deref()
        .map(|id| model.nodes.get(id).map_or(id, |n| n.label.as_str()))
        .map_or(Value::Null, |l| Value::String(l.to_owned()))
}

pub fn vm(model: &Model, v: &Vm) -> Value {
    json!({
        "id": v.id,
        "name": v.name,
        "group_id": v.group_id,
        "cores": v.cores,
        "memory": v.memory,
        "power_on": v.power_on,
        "autoreboot_on": v.autoreboot_on,
        "deleted": v.deleted,
        "cdrom_url": v.cdrom_url,
        "keymap": v.keymap,
        "hardware_profile": v.hardware_profile,
        "hardware_profile_locked": v.hardware_profile_locked,
        "zone_name": v.zone_name,
        "head": head_label(model, v),
        "management_address": v.management_address,
        "hostname": model.hostname(v),
        "discs": model.discs_of(v.id).map(|d| disc(model, d)).collect::<Vec<_>>(),
        "network_interfaces": model.nics_of(v.id).map(nic).collect::<Vec<_>>(),
        "last_imaged_with": v.last_imaged_with,
    })
}

pub fn disc(model: &Model, d: &Disc) -> Value {
    let backup_count = model
        .backups_of(d.id)
        .filter(|b| crate::backups::visible(b))
        .count();
    let schedules: Vec<Value> = model.schedules_of(d.id).map(backup_schedule).collect();
    json!({
        "backup_count": backup_count,
        "backups_enabled": !schedules.is_empty(),
        "backup_schedules": schedules,
        "id": d.id,
        "label": d.label,
        "size": d.size,
        "storage_grade": d.storage_grade,
        "storage_pool": d.storage_pool,
        "virtual_machine_id": d.vm_id,
        "iops_limit": d.iops_limit,
        "resource_name": crate::scheduler::disc_resource(d).to_string(),
        "new_storage_grade": null,
        "new_storage_pool": null,
        "migration_progress": null,
        "migration_eta": null,
        "migration_speed": null,
    })
}

/// A backup: a disc's fields (bigv-api.md §9) and its own.
pub fn backup(model: &Model, b: &Backup) -> Value {
    let parent = model.disc(b.disc_id);
    let pool = backup_pool(model, b, parent);
    json!({
        "id": b.id,
        "label": crate::backups::label(b),
        "size": b.size,
        "storage_grade": match pool {
            Some(p) if p.grade == crate::backups::ICEBERG => p.grade.clone(),
            _ => parent.map(|d| d.storage_grade.clone()).unwrap_or_default(),
        },
        "storage_pool": pool.map(|p| p.label.clone()).or_else(|| b.storage_pool.clone()),
        "virtual_machine_id": parent.map(|d| d.vm_id),
        "parent_disc_id": b.disc_id,
        "manual": b.manual,
        "backup_count": 0,
        "backups_enabled": false,
        "backup_schedules": [],
        "state": b.state,
        "created_at": crate::api::time::format_time(b.created_at),
        "allocated": b.allocated,
        "error": b.error,
        "schedule_id": b.schedule_id,
        "restore": b.restore.as_ref().map(|r| json!({"state": r.state, "error": r.error})),
    })
}

/// The pool holding a backup (the tail reports its own pool name; this is
/// that pool on the disc's tail), if known.
fn backup_pool<'m>(model: &'m Model, b: &Backup, parent: Option<&Disc>) -> Option<&'m Pool> {
    let name = b.storage_pool.as_ref()?;
    let disc_pool = model.pools.get(parent?.storage_pool.as_ref()?)?;
    model.pools_of(&disc_pool.node_id).find(|p| &p.name == name)
}

pub fn backup_schedule(s: &BackupSchedule) -> Value {
    json!({
        "id": s.id,
        "start_at": s.start_at,
        "interval_seconds": s.interval_seconds,
        "capacity": s.capacity,
        "next_at": crate::api::time::format_time(s.next_at),
    })
}

pub fn nic(n: &Nic) -> Value {
    json!({
        "id": n.id,
        "label": n.label,
        "mac": n.mac,
        "vlan_num": n.vlan_num,
        "ips": n.ips,
        "extra_ips": n.extra_ips,
        "virtual_machine_id": n.vm_id,
    })
}

/// An IP: the docs call the address `address`, the Go client `ip`; both
/// are given.
pub fn ip(model: &Model, r: &IpRecord) -> Value {
    let nic = r.nic_id.and_then(|id| model.nics.get(&id.0));
    json!({
        "ip": r.address,
        "address": r.address,
        "rdns": r.rdns,
        "network_interface_id": r.nic_id,
        "virtual_machine_id": nic.map(|n| n.vm_id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Admission, GroupId, Node, Role, VmId};

    #[test]
    fn a_vm_shows_the_label_of_its_head() {
        let mut model = Model::default();
        model.nodes.insert(
            "52:54:00:00:00:01".into(),
            Node {
                node_id: "52:54:00:00:00:01".into(),
                role: Role::Head,
                label: "head1".into(),
                admission: Admission::Accepted,
                zone: None,
                usage_strategy: None,
                image_version: None,
                addresses: vec![],
                first_seen: 0,
            },
        );
        let mut v = Vm {
            id: VmId(7),
            group_id: GroupId(1),
            name: "web1".into(),
            cores: 1,
            memory: 1024,
            power_on: true,
            autoreboot_on: true,
            cdrom_url: None,
            hardware_profile: "virtio2013".into(),
            hardware_profile_locked: false,
            keymap: None,
            zone_name: None,
            deleted: false,
            deleted_at: None,
            management_address: None,
            head: Some("52:54:00:00:00:01".into()),
            generation: 0,
            signal: None,
            anti_affinity_group: None,
            last_imaged_with: None,
            imager_options: None,
            created_at: 0,
        };
        assert_eq!(vm(&model, &v)["head"], "head1");
        v.head = None;
        assert_eq!(vm(&model, &v)["head"], Value::Null);
    }

    #[test]
    fn flags_accept_python_booleans_and_ignore_the_rest() {
        let f = Flags::parse(Some("view=overview&include_deleted=True&purge=False&x=1"));
        assert!(f.overview && f.include_deleted && !f.purge);
        let f = Flags::parse(Some("purge=true"));
        assert!(f.purge && !f.overview);
        let f = Flags::parse(None);
        assert!(!f.purge && !f.overview && !f.include_deleted);
    }
}
