//! `bigv admin`: heads, tails, storage pools, migrations, evacuations,
//! VLANs, IP ranges, images and cluster users (bigv-api.md §11).
//!
//! Migrations and evacuations are operations the brain carries out; the
//! commands start one and, unless `--no-wait`, follow its progress in
//! `/admin/migration_jobs/{id}` until it ends.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::Ctx;
use crate::cli::{
    AddRangeNoun, Admin, AdminAdd, AdminDelete, AdminShow, AdminUpdate, CancelNoun, CancelWhat,
    EmptyNoun, MigrateNoun, NodeNoun, PoolNoun, PoolsNoun, RangesNoun, UpdateNodeArgs,
    UpdatePoolNoun,
};
use crate::client::prompt_password;
use crate::error::{CliError, Exit, Result};
use crate::names::{human_size, parse_size, seg};
use crate::output::{self, Progress, note, opt};
use crate::types::{
    Disc, Head, Image, IpRange, LogLine, Machine, NodeImage, Operation, Pool, Tail, Vlan,
};

pub(super) fn read<T: serde::de::DeserializeOwned>(value: &Value, what: &str) -> Result<T> {
    serde_json::from_value(value.clone()).map_err(|e| {
        CliError::new(
            Exit::ApiInternal,
            format!("the brain's description of {what} could not be read: {e}"),
        )
    })
}

/// GET one admin object; a 404 is about that object.
fn get(ctx: &Ctx, path: &str, what: &str) -> Result<Value> {
    ctx.client()?.get_value(path, what)
}

/// GET an admin list. Lists always exist, so a 404 means the caller is
/// not an operator (the brain hides `/admin` from customers).
fn get_list(ctx: &Ctx, path: &str, what: &str) -> Result<Value> {
    ctx.client()?.get_value(path, what).map_err(|e| {
        if e.exit == Exit::NotFound {
            CliError::not_found(format!(
                "{what} was not found: the admin commands need the cluster_admin privilege"
            ))
        } else {
            e
        }
    })
}

pub fn dispatch(ctx: &Ctx, a: Admin) -> Result<()> {
    match a {
        Admin::Show(s) => show(ctx, s),
        Admin::Accept(NodeNoun::Head(n)) => accept(ctx, "heads", "head", &n.name),
        Admin::Accept(NodeNoun::Tail(n)) => accept(ctx, "tails", "tail", &n.name),
        Admin::Migrate(MigrateNoun::Server(m)) => migrate_server(ctx, &m.server, m.head.as_deref()),
        Admin::Migrate(MigrateNoun::Disc(m)) => {
            migrate_disc(ctx, &m.server, &m.label, m.pool.as_deref())
        }
        Admin::Cancel(CancelNoun::Migration(CancelWhat::Server(s))) => {
            let (r, _, vm) = ctx.vm(&s.server)?;
            let reply = ctx.client()?.post(
                &format!("/admin/vms/{}/cancel_migration", vm.id),
                &json!({}),
                &format!("server {r}"),
            )?;
            let op: Operation = read(&reply, "the migration")?;
            note(format!(
                "Cancelled operation {}: {}.",
                op.id, op.description
            ));
            Ok(())
        }
        Admin::Cancel(CancelNoun::Migration(CancelWhat::Disc(d))) => {
            let disc = disc_of(ctx, &d.server, &d.label)?;
            let reply = ctx.client()?.post(
                &format!("/admin/discs/{}/cancel_migration", disc.id),
                &json!({}),
                &format!("disc {}", disc.id),
            )?;
            let op: Operation = read(&reply, "the migration")?;
            note(format!(
                "Cancelled operation {}: {}.",
                op.id, op.description
            ));
            Ok(())
        }
        Admin::Empty(EmptyNoun::Head(n)) => start_and_follow(
            ctx,
            &format!("/admin/heads/{}/empty", seg(&n.name)),
            &json!({}),
            &format!("head {}", n.name),
        ),
        Admin::Empty(EmptyNoun::Storage(PoolNoun::Pool(n))) => start_and_follow(
            ctx,
            &format!("/admin/storage_pools/{}/empty", seg(&n.name)),
            &json!({}),
            &format!("storage pool {}", n.name),
        ),
        Admin::Update(AdminUpdate::Head(u)) => update_node(ctx, "heads", "head", u),
        Admin::Update(AdminUpdate::Tail(u)) => update_node(ctx, "tails", "tail", u),
        Admin::Update(AdminUpdate::Storage(UpdatePoolNoun::Pool(u))) => {
            let mut body = Map::new();
            if let Some(s) = &u.usage_strategy {
                body.insert("usage_strategy".into(), json!(s));
            }
            if let Some(r) = u.overcommit_ratio {
                body.insert("overcommit_ratio".into(), json!(r));
            }
            if let Some(n) = u.migration_concurrency {
                body.insert("migration_concurrency".into(), json!(n));
            }
            if let Some(n) = u.iops_limit {
                body.insert("iops_limit".into(), json!(n));
            }
            if body.is_empty() {
                return Err(CliError::usage(
                    "nothing to change: give --usage-strategy, --overcommit-ratio, --migration-concurrency or --iops-limit",
                ));
            }
            let reply = ctx.client()?.put(
                &format!("/admin/storage_pools/{}", seg(&u.name)),
                &Value::Object(body),
                &format!("storage pool {}", u.name),
            )?;
            note(format!("Updated storage pool {}.", u.name));
            show_pools(ctx, reply, false)
        }
        Admin::Update(AdminUpdate::Settings(u)) => {
            let mut body = Map::new();
            for (k, v) in [
                ("enrollment", &u.enrollment),
                ("enrollment_role", &u.enrollment_role),
                ("admission", &u.admission),
                ("node_image_version", &u.node_image_version),
            ] {
                if let Some(v) = v {
                    body.insert(k.into(), json!(v));
                }
            }
            if let Some(n) = u.reserve_heads {
                body.insert("reserve_heads".into(), json!(n));
            }
            if body.is_empty() {
                return Err(CliError::usage(
                    "nothing to change: give --enrollment, --enrollment-role, --admission, --node-image-version or --reserve-heads",
                ));
            }
            let reply =
                ctx.client()?
                    .put("/admin/settings", &Value::Object(body), "the settings")?;
            note("Updated the cluster settings.");
            show_settings(ctx, &reply);
            Ok(())
        }
        Admin::Add(add) => admin_add(ctx, add),
        Admin::Upgrade(u) => super::upgrade::dispatch(ctx, u),
        Admin::Delete(AdminDelete::Machine(m)) => {
            ctx.client()?.delete(
                &format!("/admin/machines/{}", seg(&m.name)),
                &format!("machine {}", m.name),
            )?;
            note(format!("Forgot machine {}.", m.name));
            Ok(())
        }
    }
}

const HEAD_HEADERS: &[&str] = &[
    "Label",
    "Online",
    "Admission",
    "Zone",
    "Address",
    "Memory",
    "Free",
    "Cores",
    "Servers",
    "Usage",
    "Image",
];

/// The image column: the version, and what it should be when it differs.
fn image_cell(version: &Option<String>, expected: &Option<String>, mismatch: bool) -> String {
    if mismatch {
        format!("{} (booted {}!)", opt(version), opt(expected))
    } else {
        opt(version)
    }
}

fn mismatch_flag(version: &Option<String>, expected: &Option<String>) -> String {
    format!(
        "IMAGE MISMATCH: runs {}, booted with {} (out of service)",
        opt(version),
        opt(expected)
    )
}

fn head_row(h: &Head) -> Vec<String> {
    vec![
        h.label.clone(),
        h.online.to_string(),
        opt(&h.admission),
        opt(&h.zone),
        opt(&h.cnc_address),
        human_size(h.total_memory),
        human_size(h.free_memory),
        h.used_cores.to_string(),
        h.virtual_machines_count.to_string(),
        h.usage_strategy.clone().unwrap_or_else(|| "default".into()),
        image_cell(&h.image_version, &h.image_expected, h.image_mismatch),
    ]
}

fn head_line(h: &Head) -> String {
    let mut flags = vec![if h.online { "online" } else { "OFFLINE" }.to_owned()];
    if h.admission.as_deref() == Some("pending") {
        flags.push("PENDING (bigv admin accept head …)".into());
    }
    if let Some(s) = &h.usage_strategy {
        flags.push(format!("usage {s}"));
    }
    if h.image_mismatch {
        flags.push(mismatch_flag(&h.image_version, &h.image_expected));
    }
    format!(
        "▸ {} ({}) - {} of {} free, {} server{}{}\n",
        h.label,
        flags.join(", "),
        human_size(h.free_memory),
        human_size(h.total_memory),
        h.virtual_machines_count,
        if h.virtual_machines_count == 1 {
            ""
        } else {
            "s"
        },
        h.zone
            .as_deref()
            .map(|z| format!(" in {z}"))
            .unwrap_or_default()
    )
}

const TAIL_HEADERS: &[&str] = &[
    "Label",
    "Online",
    "Admission",
    "Zone",
    "Address",
    "Pools",
    "Image",
];

fn tail_row(t: &Tail) -> Vec<String> {
    vec![
        t.label.clone(),
        t.online.to_string(),
        opt(&t.admission),
        opt(&t.zone),
        opt(&t.cnc_address),
        t.pools.join(","),
        image_cell(&t.image_version, &t.image_expected, t.image_mismatch),
    ]
}

fn tail_line(t: &Tail) -> String {
    let mut flags = vec![if t.online { "online" } else { "OFFLINE" }.to_owned()];
    if t.admission.as_deref() == Some("pending") {
        flags.push("PENDING (bigv admin accept tail …)".into());
    }
    if t.image_mismatch {
        flags.push(mismatch_flag(&t.image_version, &t.image_expected));
    }
    format!(
        "▸ {} ({}) - pools: {}\n",
        t.label,
        flags.join(", "),
        if t.pools.is_empty() {
            "none".into()
        } else {
            t.pools.join(", ")
        }
    )
}

const POOL_HEADERS: &[&str] = &[
    "Label",
    "Grade",
    "Tail",
    "Size",
    "Free",
    "Allocated",
    "Ceiling",
    "Discs",
    "Overcommit",
    "Usage",
];

fn pool_row(p: &Pool) -> Vec<String> {
    vec![
        p.label.clone(),
        p.grade.clone(),
        opt(&p.tail),
        human_size(p.size),
        human_size(p.free_space),
        human_size(p.alloc),
        human_size(p.ceiling),
        p.discs_count.to_string(),
        opt(&p.overcommit_ratio),
        p.usage_strategy.clone().unwrap_or_else(|| "default".into()),
    ]
}

fn pool_line(p: &Pool) -> String {
    format!(
        "▸ {} ({}) - {} allocated of {} ({} free on disc), {} disc{}, overcommit {}{}\n",
        p.label,
        p.grade,
        human_size(p.alloc),
        human_size(p.ceiling),
        human_size(p.free_space),
        p.discs_count,
        if p.discs_count == 1 { "" } else { "s" },
        opt(&p.overcommit_ratio),
        p.usage_strategy
            .as_deref()
            .map(|s| format!(", usage {s}"))
            .unwrap_or_default()
    )
}

fn show_pools(ctx: &Ctx, value: Value, many: bool) -> Result<()> {
    let pools: Vec<Pool> = if many {
        read(&value, "the storage pools")?
    } else {
        vec![read(&value, "the storage pool")?]
    };
    ctx.out.show(
        &value,
        POOL_HEADERS,
        || pools.iter().map(pool_row).collect(),
        || {
            if pools.is_empty() {
                "No storage pools.\n".into()
            } else {
                pools.iter().map(pool_line).collect()
            }
        },
    );
    Ok(())
}

const OPERATION_HEADERS: &[&str] = &["ID", "State", "Progress", "Phase", "Description", "Error"];

fn operation_row(o: &Operation) -> Vec<String> {
    vec![
        o.id.to_string(),
        o.state.clone(),
        format!("{}%", o.progress),
        o.phase.clone(),
        o.description.clone(),
        opt(&o.error),
    ]
}

fn operation_line(o: &Operation) -> String {
    let error = o
        .error
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    format!(
        "• {} {} - {}, {}% ({}){}{error}\n",
        o.id,
        o.description,
        o.state,
        o.progress,
        o.phase,
        downtime(o)
    )
}

/// `, downtime N ms` for a live migration whose source reported it.
fn downtime(o: &Operation) -> String {
    o.downtime_ms
        .map(|ms| format!(", downtime {ms} ms"))
        .unwrap_or_default()
}

/// Settings as `key: value` lines (JSON values, strings unquoted).
fn show_settings(ctx: &Ctx, value: &Value) {
    let rows: Vec<(String, String)> = value
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Null => "-".into(),
                        v => v.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default();
    ctx.out.show(
        value,
        &["Setting", "Value"],
        || {
            rows.iter()
                .map(|(k, v)| vec![k.clone(), v.clone()])
                .collect()
        },
        || rows.iter().map(|(k, v)| format!("{k}: {v}\n")).collect(),
    );
}

fn show(ctx: &Ctx, s: AdminShow) -> Result<()> {
    match s {
        AdminShow::Settings => {
            let value = get_list(ctx, "/admin/settings", "the settings")?;
            show_settings(ctx, &value);
        }
        AdminShow::Heads => {
            let value = get_list(ctx, "/admin/heads", "the list of heads")?;
            let heads: Vec<Head> = read(&value, "the heads")?;
            ctx.out.show(
                &value,
                HEAD_HEADERS,
                || heads.iter().map(head_row).collect(),
                || {
                    if heads.is_empty() {
                        "No heads.\n".into()
                    } else {
                        heads.iter().map(head_line).collect()
                    }
                },
            );
        }
        AdminShow::Head(n) => {
            let value = get(
                ctx,
                &format!("/admin/heads/{}", seg(&n.name)),
                &format!("head {}", n.name),
            )?;
            let h: Head = read(&value, "the head")?;
            ctx.out.show(
                &value,
                HEAD_HEADERS,
                || vec![head_row(&h)],
                || {
                    let mut s = head_line(&h);
                    s.push_str(&format!(
                        "  node id {}, address {}\n",
                        h.uuid,
                        opt(&h.cnc_address)
                    ));
                    for vm in &h.virtual_machines {
                        s.push_str(&format!("    • {vm}\n"));
                    }
                    s
                },
            );
        }
        AdminShow::Tails => {
            let value = get_list(ctx, "/admin/tails", "the list of tails")?;
            let tails: Vec<Tail> = read(&value, "the tails")?;
            ctx.out.show(
                &value,
                TAIL_HEADERS,
                || tails.iter().map(tail_row).collect(),
                || {
                    if tails.is_empty() {
                        "No tails.\n".into()
                    } else {
                        tails.iter().map(tail_line).collect()
                    }
                },
            );
        }
        AdminShow::Tail(n) => {
            let value = get(
                ctx,
                &format!("/admin/tails/{}", seg(&n.name)),
                &format!("tail {}", n.name),
            )?;
            let t: Tail = read(&value, "the tail")?;
            ctx.out.show(
                &value,
                TAIL_HEADERS,
                || vec![tail_row(&t)],
                || tail_line(&t),
            );
        }
        AdminShow::Storage(PoolsNoun::Pools) => {
            let value = get_list(ctx, "/admin/storage_pools", "the list of storage pools")?;
            show_pools(ctx, value, true)?;
        }
        AdminShow::Storage(PoolsNoun::Pool(n)) => {
            let value = get(
                ctx,
                &format!("/admin/storage_pools/{}", seg(&n.name)),
                &format!("storage pool {}", n.name),
            )?;
            show_pools(ctx, value, false)?;
        }
        AdminShow::Migrations(m) => {
            let path = if m.all {
                "/admin/migration_jobs"
            } else {
                "/admin/migration_jobs?unfinished=1"
            };
            let value = get_list(ctx, path, "the list of migrations")?;
            let ops: Vec<Operation> = read(&value, "the migrations")?;
            ctx.out.show(
                &value,
                OPERATION_HEADERS,
                || ops.iter().map(operation_row).collect(),
                || {
                    if ops.is_empty() {
                        "No migrations running.\n".into()
                    } else {
                        ops.iter().map(operation_line).collect()
                    }
                },
            );
        }
        AdminShow::Migration(id) => {
            let value = get(
                ctx,
                &format!("/admin/migration_jobs/{}", id.id),
                &format!("migration {}", id.id),
            )?;
            let op: Operation = read(&value, "the migration")?;
            ctx.out.show(
                &value,
                OPERATION_HEADERS,
                || vec![operation_row(&op)],
                || operation_line(&op),
            );
        }
        AdminShow::Vlans => {
            let value = get_list(ctx, "/admin/vlans", "the list of VLANs")?;
            let vlans: Vec<Vlan> = read(&value, "the VLANs")?;
            ctx.out.show(
                &value,
                &["Num", "UsageType", "Ranges"],
                || {
                    vlans
                        .iter()
                        .map(|v| {
                            vec![
                                v.num.to_string(),
                                opt(&v.usage_type),
                                v.ip_ranges
                                    .iter()
                                    .map(|r| r.spec.clone())
                                    .collect::<Vec<_>>()
                                    .join(","),
                            ]
                        })
                        .collect()
                },
                || {
                    if vlans.is_empty() {
                        return "No VLANs.\n".into();
                    }
                    let mut s = String::new();
                    for v in &vlans {
                        s.push_str(&format!("▸ VLAN {} ({})\n", v.num, opt(&v.usage_type)));
                        for r in &v.ip_ranges {
                            s.push_str(&format!("    • {} - {} free\n", r.spec, r.available));
                        }
                    }
                    s
                },
            );
        }
        AdminShow::Ip(RangesNoun::Ranges) => {
            let value = get_list(ctx, "/admin/ip_ranges", "the list of IP ranges")?;
            let ranges: Vec<IpRange> = read(&value, "the IP ranges")?;
            ctx.out.show(
                &value,
                &["ID", "Spec", "VLAN", "Zones", "Available"],
                || {
                    ranges
                        .iter()
                        .map(|r| {
                            vec![
                                r.id.to_string(),
                                r.spec.clone(),
                                r.vlan_num.to_string(),
                                r.zones.join(","),
                                r.available.to_string(),
                            ]
                        })
                        .collect()
                },
                || {
                    if ranges.is_empty() {
                        return "No IP ranges.\n".into();
                    }
                    ranges
                        .iter()
                        .map(|r| {
                            format!(
                                "• {} on VLAN {} - {} free{}\n",
                                r.spec,
                                r.vlan_num,
                                r.available,
                                if r.zones.is_empty() {
                                    String::new()
                                } else {
                                    format!(" (zones {})", r.zones.join(", "))
                                }
                            )
                        })
                        .collect()
                },
            );
        }
        AdminShow::NodeImages => {
            let value = get_list(ctx, "/admin/node_images", "the list of node images")?;
            let images: Vec<NodeImage> = read(&value, "the node images")?;
            let size = |i: &NodeImage| i.files.values().map(|f| f.size).sum::<u64>();
            ctx.out.show(
                &value,
                &["Version", "Target", "Kernel", "Files", "Bytes"],
                || {
                    images
                        .iter()
                        .map(|i| {
                            vec![
                                i.version.clone(),
                                i.target.to_string(),
                                opt(&i.kernel_version),
                                i.files.keys().cloned().collect::<Vec<_>>().join(","),
                                size(i).to_string(),
                            ]
                        })
                        .collect()
                },
                || {
                    if images.is_empty() {
                        return "No node images (add one with `bigv-brain image add DIR` on the brain).\n".into();
                    }
                    images
                        .iter()
                        .map(|i| {
                            format!(
                                "• {}{} - {} files, {} bytes, kernel {}\n",
                                i.version,
                                if i.target { " (target)" } else { "" },
                                i.files.len(),
                                size(i),
                                opt(&i.kernel_version)
                            )
                        })
                        .collect()
                },
            );
        }
        AdminShow::Logs(l) => {
            let list = match l.role.as_str() {
                "head" => "heads",
                "tail" => "tails",
                _ => {
                    return Err(CliError::new(
                        Exit::Usage,
                        format!("{:?} is not head or tail", l.role),
                    ));
                }
            };
            let value = get(
                ctx,
                &format!("/admin/{list}/{}/logs?lines={}", seg(&l.name), l.lines),
                &format!("{} {}", l.role, l.name),
            )?;
            let lines: Vec<LogLine> = read(&value, "the log lines")?;
            ctx.out.show(
                &value,
                &["Time (UTC)", "Level", "Source", "Message"],
                || {
                    lines
                        .iter()
                        .map(|x| {
                            vec![
                                output::utc_ms(x.at_ms),
                                x.level.clone(),
                                x.source.clone(),
                                x.message.clone(),
                            ]
                        })
                        .collect()
                },
                || {
                    if lines.is_empty() {
                        return format!(
                            "No log lines from {} {} since the brain started.\n",
                            l.role, l.name
                        );
                    }
                    lines
                        .iter()
                        .map(|x| {
                            format!(
                                "{} {:<5} {:<5} {}\n",
                                output::utc_ms(x.at_ms),
                                x.level,
                                x.source,
                                x.message
                            )
                        })
                        .collect()
                },
            );
        }
        AdminShow::Machines => {
            let value = get_list(ctx, "/admin/machines", "the list of machines")?;
            let machines: Vec<Machine> = read(&value, "the machines")?;
            ctx.out.show(
                &value,
                &[
                    "MAC", "Role", "State", "Label", "Address", "Booted", "Running",
                ],
                || {
                    machines
                        .iter()
                        .map(|m| {
                            vec![
                                m.mac.clone(),
                                m.role.clone(),
                                m.state.clone(),
                                opt(&m.label),
                                opt(&m.address.clone().or(m.boot_address.clone())),
                                opt(&m.booted_version),
                                image_cell(&m.image_version, &m.booted_version, m.image_mismatch),
                            ]
                        })
                        .collect()
                },
                || {
                    if machines.is_empty() {
                        return "No machines on the boot LAN.\n".into();
                    }
                    machines
                        .iter()
                        .map(|m| {
                            let mut s = format!("▸ {} {} ({})", m.mac, m.role, m.state);
                            if let Some(l) = &m.label {
                                s.push_str(&format!(" as {l}"));
                            }
                            if let Some(a) = m.address.as_ref().or(m.boot_address.as_ref()) {
                                s.push_str(&format!(", {a}"));
                            }
                            if let Some(v) = &m.booted_version {
                                s.push_str(&format!(", booted {v}"));
                            }
                            if !m.pools.is_empty() {
                                s.push_str(&format!(", pools {}", m.pools.join(" ")));
                            }
                            if !m.discs.is_empty() {
                                s.push_str(&format!(", discs {}", m.discs.join(" ")));
                            }
                            if m.image_mismatch {
                                s.push_str(&format!(
                                    ", {}",
                                    mismatch_flag(&m.image_version, &m.booted_version)
                                ));
                            }
                            s.push('\n');
                            s
                        })
                        .collect()
                },
            );
        }
        AdminShow::Images => {
            let value = get_list(ctx, "/admin/images", "the list of images")?;
            let images: Vec<Image> = read(&value, "the images")?;
            ctx.out.show(
                &value,
                &["Name", "Size", "Description"],
                || {
                    images
                        .iter()
                        .map(|i| vec![i.name.clone(), i.size.to_string(), i.description.clone()])
                        .collect()
                },
                || {
                    if images.is_empty() {
                        return "No images.\n".into();
                    }
                    images
                        .iter()
                        .map(|i| {
                            format!("• {} ({}) {}\n", i.name, human_size(i.size), i.description)
                        })
                        .collect()
                },
            );
        }
    }
    Ok(())
}

fn accept(ctx: &Ctx, plural: &str, noun: &str, name: &str) -> Result<()> {
    ctx.client()?.post(
        &format!("/admin/{plural}/{}/accept", seg(name)),
        &json!({}),
        &format!("{noun} {name}"),
    )?;
    note(format!("Accepted {noun} {name}; it may now take work."));
    Ok(())
}

fn update_node(ctx: &Ctx, plural: &str, noun: &str, u: UpdateNodeArgs) -> Result<()> {
    let mut body = Map::new();
    if let Some(s) = &u.usage_strategy {
        body.insert("usage_strategy".into(), json!(s));
    }
    if let Some(l) = &u.label {
        body.insert("label".into(), json!(l));
    }
    if let Some(z) = &u.zone {
        body.insert("zone".into(), json!(z));
    }
    if body.is_empty() {
        return Err(CliError::usage(
            "nothing to change: give --usage-strategy, --label or --zone",
        ));
    }
    ctx.client()?.put(
        &format!("/admin/{plural}/{}", seg(&u.name)),
        &Value::Object(body),
        &format!("{noun} {}", u.name),
    )?;
    note(format!("Updated {noun} {}.", u.name));
    Ok(())
}

fn disc_of(ctx: &Ctx, server: &str, label: &str) -> Result<Disc> {
    let r = ctx.resolve_vm(server)?;
    ctx.client()?.get(
        &format!("{}/discs/{}", r.path(), seg(label)),
        &format!("disc {label} of {r}"),
    )
}

fn migrate_server(ctx: &Ctx, server: &str, head: Option<&str>) -> Result<()> {
    let (r, _, vm) = ctx.vm(server)?;
    let body = match head {
        Some(h) => json!({"new_head_spec": h}),
        None => json!({}),
    };
    start_and_follow(
        ctx,
        &format!("/admin/vms/{}/migrate", vm.id),
        &body,
        &format!("server {r}"),
    )
}

fn migrate_disc(ctx: &Ctx, server: &str, label: &str, pool: Option<&str>) -> Result<()> {
    let disc = disc_of(ctx, server, label)?;
    let body = match pool {
        Some(p) => json!({"new_pool_spec": p}),
        None => json!({}),
    };
    start_and_follow(
        ctx,
        &format!("/admin/discs/{}/migrate", disc.id),
        &body,
        &format!("disc {label} of {server}"),
    )
}

/// Starts an operation and follows it unless `--no-wait`.
fn start_and_follow(ctx: &Ctx, path: &str, body: &Value, what: &str) -> Result<()> {
    let reply = ctx.client()?.post(path, body, what)?;
    let op: Operation = read(&reply, "the new operation")?;
    if ctx.no_wait {
        note(format!(
            "Started operation {}: {} (follow it with `bigv admin show migration {}`).",
            op.id, op.description, op.id
        ));
        if !ctx.out.is_human() {
            ctx.out.show(
                &reply,
                OPERATION_HEADERS,
                || vec![operation_row(&op)],
                String::new,
            );
        }
        return Ok(());
    }
    follow(ctx, &op)
}

/// Polls an operation until it ends, with a progress bar on a terminal.
pub fn follow(ctx: &Ctx, op: &Operation) -> Result<()> {
    let progress = Progress::percent(&op.description);
    let last = output::wait_for(
        Duration::from_secs(24 * 3600),
        &format!("operation {} is still running", op.id),
        || {
            let value = get(
                ctx,
                &format!("/admin/migration_jobs/{}", op.id),
                &format!("operation {}", op.id),
            )?;
            let now: Operation = read(&value, "the operation")?;
            progress.set(
                now.progress,
                Some(&format!("{} ({})", now.description, now.phase)),
            );
            Ok(now.finished().then_some(now))
        },
    )?;
    progress.finish();
    match last.state.as_str() {
        "done" => {
            note(format!("Done: {}{}.", last.description, downtime(&last)));
            Ok(())
        }
        "cancelled" => Err(CliError::new(
            Exit::Unknown,
            format!("operation {} ({}) was cancelled", last.id, last.description),
        )),
        _ => Err(CliError::new(
            Exit::Unknown,
            format!(
                "operation {} ({}) failed: {}",
                last.id,
                last.description,
                last.error.as_deref().unwrap_or("no reason given")
            ),
        )),
    }
}

/// Follows a server's reimage when the caller may see operations (cluster
/// admins); customers cannot, and return at once.
pub fn follow_reimage(ctx: &Ctx, vm_id: u64) -> Result<()> {
    let listed = ctx
        .client()?
        .get_value("/admin/migration_jobs?unfinished=1", "the operations");
    let value = match listed {
        Ok(v) => v,
        Err(e) if matches!(e.exit, Exit::NotFound | Exit::Forbidden) => return Ok(()),
        Err(e) => return Err(e),
    };
    let ops: Vec<Operation> = read(&value, "the operations")?;
    match ops
        .iter()
        .find(|o| o.kind == "reimage" && o.vm_id == Some(vm_id))
    {
        Some(op) => follow(ctx, op),
        None => Ok(()),
    }
}

fn admin_add(ctx: &Ctx, add: AdminAdd) -> Result<()> {
    let client = ctx.client()?;
    match add {
        AdminAdd::Account(a) => {
            let name = crate::names::account_name(&a.name)?;
            client.post("/accounts", &json!({"name": name}), "the accounts")?;
            note(format!("Created account {name} with its group default."));
        }
        AdminAdd::Ip(AddRangeNoun::Range(r)) => {
            let reply = client.post(
                "/admin/ip_ranges",
                &json!({"ip_range": r.cidr, "vlan_num": r.vlan, "zones": r.zones}),
                "the IP ranges",
            )?;
            note(format!(
                "Added IP range {} on VLAN {} (id {}).",
                r.cidr, r.vlan, reply["id"]
            ));
        }
        AdminAdd::Vlan(v) => {
            client.post(
                "/admin/vlans",
                &json!({"num": v.num, "usage_type": v.usage_type}),
                "the VLANs",
            )?;
            note(format!("Added VLAN {} ({}).", v.num, v.usage_type));
        }
        AdminAdd::Image(i) => {
            let size = parse_size(&i.size)?;
            client.post(
                "/admin/images",
                &json!({"name": i.name, "size": size, "description": i.description}),
                "the images",
            )?;
            note(format!(
                "Registered image {} ({}).",
                i.name,
                human_size(size)
            ));
            if let Some(file) = &i.file {
                let reply = client.put_file(
                    &format!("/admin/images/{}/content", i.name),
                    file,
                    &format!("image {}", i.name),
                )?;
                note(format!(
                    "Uploaded {} bytes of {} from {}.",
                    reply["bytes"],
                    i.name,
                    file.display()
                ));
            }
        }
        AdminAdd::Machine(m) => {
            let mut body = json!({"mac": m.mac, "role": m.role});
            if let Some(a) = &m.boot_address {
                body["boot_address"] = json!(a);
            }
            // Left out unless given: registering again keeps what is stored.
            if !m.pools.is_empty() {
                body["pools"] = json!(m.pools);
            }
            if !m.discs.is_empty() {
                body["discs"] = json!(m.discs);
            }
            client.post("/admin/machines", &body, "the machines")?;
            note(format!(
                "Registered {} to boot as a {}{}.",
                m.mac,
                m.role,
                m.boot_address
                    .as_deref()
                    .map(|a| format!(" at {a}"))
                    .unwrap_or_default()
            ));
        }
        AdminAdd::User(u) => {
            let password = match u.password.clone().or_else(|| {
                std::env::var("BIGV_NEW_PASS")
                    .ok()
                    .filter(|p| !p.is_empty())
            }) {
                Some(p) => p,
                None if output::interactive_output() => {
                    prompt_password(&format!("Password for {}: ", u.username))?
                }
                None => {
                    return Err(CliError::usage(
                        "give the new user a password: --password, or BIGV_NEW_PASS",
                    ));
                }
            };
            client.post(
                "/admin/users",
                &json!({"username": u.username, "priv_spec": u.level, "password": password}),
                "the users",
            )?;
            note(format!("Created user {} with {}.", u.username, u.level));
        }
    }
    Ok(())
}
