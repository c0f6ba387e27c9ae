//! Node and Pool records for what joins the spine.
//!
//! A node gets its record the first time it says hello: the next free
//! label for its role (`head1`, `head2`…, `tail1`…; numbers are never
//! reused, so a label always means one machine) and the admission the
//! cluster settings ask for (`auto` accepts, anything else leaves it
//! pending). Its image version and addresses follow every hello. Each pool
//! a tail reports gets a record labelled `<tail label>-<pool name>`, with
//! the cluster's default overcommit ratio.

use std::collections::HashMap;

use bigv_spine::NodeInfo;

use crate::model::{Admission, Model, Node, Pool, Role};

use super::pass::Pass;

fn role_of(info: &NodeInfo) -> Role {
    match info.role {
        bigv_spine::Role::Head => Role::Head,
        bigv_spine::Role::Tail => Role::Tail,
    }
}

fn prefix(role: Role) -> &'static str {
    match role {
        Role::Head => "head",
        Role::Tail => "tail",
    }
}

/// One more than the highest number used in a label of this role.
fn next_number(model: &Model, role: Role) -> u64 {
    model
        .nodes
        .values()
        .filter_map(|n| n.label.strip_prefix(prefix(role))?.parse::<u64>().ok())
        .max()
        .map_or(1, |n| n + 1)
}

pub(super) fn sync(p: &mut Pass<'_>) {
    let model = p.model;
    let mut infos: Vec<&NodeInfo> = p.snap.nodes.values().map(|n| &n.info).collect();
    // The first to connect gets the lower number.
    infos.sort_by_key(|i| i.conn);
    let mut next: HashMap<&'static str, u64> = HashMap::new();
    let mut new_labels: HashMap<&str, String> = HashMap::new();
    for info in infos {
        match model.nodes.get(&info.node_id) {
            None => {
                let role = role_of(info);
                let number = next
                    .entry(prefix(role))
                    .or_insert_with(|| next_number(model, role));
                let label = format!("{}{number}", prefix(role));
                *number += 1;
                let admission = if model.settings.admission == "auto" {
                    Admission::Accepted
                } else {
                    Admission::Pending
                };
                tracing::info!(node = %info.node_id, %label, ?admission, image = %info.image_version, "new node");
                new_labels.insert(&info.node_id, label.clone());
                p.nodes.push(Node {
                    node_id: info.node_id.clone(),
                    role,
                    label,
                    admission,
                    zone: None,
                    usage_strategy: None,
                    image_version: Some(info.image_version.clone()),
                    addresses: info.addresses.clone(),
                    first_seen: p.now,
                });
            }
            Some(node)
                if node.image_version.as_deref() != Some(info.image_version.as_str())
                    || node.addresses != info.addresses =>
            {
                tracing::info!(node = %info.node_id, label = %node.label, image = %info.image_version, addresses = ?info.addresses, "node declared a new image or addresses");
                p.nodes.push(Node {
                    image_version: Some(info.image_version.clone()),
                    addresses: info.addresses.clone(),
                    ..node.clone()
                });
            }
            Some(_) => {}
        }
    }

    for snap in p.snap.nodes.values() {
        if snap.pools.is_empty() || role_of(&snap.info) != Role::Tail {
            continue;
        }
        let node_id = snap.info.node_id.as_str();
        let Some(tail_label) = model
            .nodes
            .get(node_id)
            .map(|n| n.label.clone())
            .or_else(|| new_labels.get(node_id).cloned())
        else {
            continue;
        };
        for (name, facts) in &snap.pools {
            let label = format!("{tail_label}-{name}");
            if model.pools.contains_key(&label) {
                continue;
            }
            tracing::info!(pool = %label, grade = %facts.grade, size_mib = facts.size, "new storage pool");
            p.pools.push(Pool {
                label,
                node_id: node_id.to_owned(),
                name: name.clone(),
                grade: facts.grade.clone(),
                overcommit_ratio: model.settings.default_overcommit_ratio,
                usage_strategy: None,
                migration_concurrency: 1,
                iops_limit: None,
            });
        }
    }
}
