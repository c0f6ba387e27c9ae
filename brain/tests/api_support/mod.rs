//! A small cluster for the customer API tests: accounts and users with
//! privileges, address ranges, images, and simulated heads and tails whose
//! node and pool records are written up front (as the reconciler would on
//! their first connection), so capacity checks see live facts.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use bigv_brain::model::{
    Admission, Image, IpRange, IpRangeId, Level, Node, Pool, Privilege, PrivilegeId, Role, Target,
    User, UserId, Vlan, VlanId,
};
use bigv_brain::scheduler::Facts;
use bigv_spine::sim::{SimFleet, SimHardware};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

/// MiB of memory each simulated head offers.
pub const HEAD_MEMORY: u64 = 16384;
/// MiB of each simulated pool.
pub const POOL_SIZE: u64 = 1 << 20;

/// Simulated heads and tails (`sim-head-NNNN` labelled `headN+1`,
/// `sim-tail-NNNN` → `tailN+1` with pools `sata1`, `ssd1`, `archive1`),
/// waited for until placement sees every one of them.
pub async fn cluster(tb: &TestBrain, heads: usize, tails: usize) -> SimFleet {
    cluster_speaking(tb, heads, tails, bigv_spine::PROTOCOL_VERSION).await
}

/// [`cluster`] with nodes that speak spine protocol `version` (an older
/// build's nodes, say).
pub async fn cluster_speaking(
    tb: &TestBrain,
    heads: usize,
    tails: usize,
    version: u32,
) -> SimFleet {
    let grades = [("sata1", "sata"), ("ssd1", "ssd"), ("archive1", "archive")];
    let now = tb.clock.now();
    tb.brain
        .db
        .write(move |tx| {
            for i in 0..heads {
                tx.put(Node {
                    node_id: format!("sim-head-{i:04}"),
                    role: Role::Head,
                    label: format!("head{}", i + 1),
                    admission: Admission::Accepted,
                    zone: None,
                    usage_strategy: None,
                    image_version: None,
                    addresses: vec![],
                    first_seen: now,
                })?;
            }
            for i in 0..tails {
                let node_id = format!("sim-tail-{i:04}");
                tx.put(Node {
                    node_id: node_id.clone(),
                    role: Role::Tail,
                    label: format!("tail{}", i + 1),
                    admission: Admission::Accepted,
                    zone: None,
                    usage_strategy: None,
                    image_version: None,
                    addresses: vec![],
                    first_seen: now,
                })?;
                for (name, grade) in grades {
                    tx.put(Pool {
                        label: format!("tail{}-{name}", i + 1),
                        node_id: node_id.clone(),
                        name: name.into(),
                        grade: grade.into(),
                        overcommit_ratio: 1.0,
                        usage_strategy: None,
                        migration_concurrency: 1,
                        iops_limit: None,
                    })?;
                }
            }
            Ok::<_, bigv_brain::model::DbError>(())
        })
        .await
        .unwrap();
    let pin = tb.brain.fingerprint;
    let pools: BTreeMap<String, (String, u64)> = grades
        .iter()
        .map(|(name, grade)| ((*name).to_owned(), ((*grade).to_owned(), POOL_SIZE)))
        .collect();
    let fleet = SimFleet::start(
        &tb.brain.spine_addr.to_string(),
        heads,
        tails,
        SimHardware::Head {
            memory_mib: HEAD_MEMORY,
        },
        SimHardware::Tail { pools },
        move |c| {
            c.tls_pin = Some(pin);
            c.keepalive = fast_keepalive();
            c.hello.protocol_version = version;
        },
    );
    eventually(
        "every simulated node to be usable for placement",
        20,
        || {
            let facts = Facts::gather(&tb.brain.db.read(), &tb.brain.spine);
            let heads_ok = facts
                .heads
                .values()
                .filter(|h| h.usable && h.total_memory > 0)
                .count()
                == heads;
            let pools_ok = facts
                .pools
                .values()
                .filter(|p| p.usable && p.size > 0)
                .count()
                == tails * grades.len();
            std::future::ready((heads_ok && pools_ok).then_some(()))
        },
    )
    .await;
    fleet
}

/// Public ranges (192.0.2.0/28 and 2001:db8::/64 on VLAN 1), a private
/// VLAN 20 with 10.0.0.0/24 and fd00::/64, and images `stretch` (2 GiB)
/// and `symbiosis`.
pub async fn networks_and_images(tb: &TestBrain) {
    tb.brain
        .db
        .write(|tx| {
            let ranges = [
                (1, "192.0.2.0/28", 1),
                (2, "2001:db8::/64", 1),
                (3, "10.0.0.0/24", 20),
                (4, "fd00::/64", 20),
            ];
            for (id, spec, vlan) in ranges {
                tx.put(IpRange {
                    id: IpRangeId(id),
                    spec: spec.into(),
                    vlan_num: vlan,
                    zones: vec![],
                })?;
            }
            for (id, num, usage) in [(1, 1, "public"), (2, 20, "private")] {
                tx.put(Vlan {
                    id: VlanId(id),
                    num,
                    usage_type: usage.into(),
                })?;
            }
            for (name, size) in [("stretch", 2048), ("symbiosis", 1024)] {
                tx.put(Image {
                    name: name.into(),
                    description: format!("{name} test image"),
                    size,
                })?;
            }
            Ok::<_, bigv_brain::model::DbError>(())
        })
        .await
        .unwrap();
}

/// A user holding `grants`, and a session token for them.
pub async fn user(tb: &TestBrain, username: &str, grants: &[(Level, Target)]) -> String {
    let username = username.to_owned();
    let grants = grants.to_vec();
    let name = username.clone();
    tb.brain
        .db
        .write(move |tx| {
            let id = UserId(tx.new_id::<User>()?);
            tx.put(User {
                id,
                username: name,
                email: None,
                authorized_keys: String::new(),
                password_hash: None,
            })?;
            for (level, target) in grants {
                let pid = PrivilegeId(tx.new_id::<Privilege>()?);
                tx.put(Privilege {
                    id: pid,
                    user_id: id,
                    level,
                    target,
                    api_key_id: None,
                    password_required: false,
                    yubikey_required: false,
                    yubikey_otp_max_age: None,
                    ip_restrictions: None,
                    creating_username: None,
                })?;
            }
            Ok::<_, bigv_brain::model::DbError>(())
        })
        .await
        .unwrap();
    tb.token_for(&username).await
}

/// Creates an account through the API; returns its id.
pub async fn account(tb: &TestBrain, su: &str, name: &str) -> u64 {
    let (status, body) = tb.post(su, "/accounts", json!({ "name": name })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_u64().unwrap()
}

/// The id of a group, from the store.
pub fn group_id(tb: &TestBrain, account: &str, group: &str) -> u64 {
    let model = tb.brain.db.read();
    let a = model.account_named(account).unwrap();
    model.group_named(a.id, group).unwrap().id.0
}

/// The usual small vm_create body: one 25 GiB sata disc, running.
pub fn small_vm(name: &str) -> Value {
    json!({
        "virtual_machine": {"name": name, "cores": 1, "memory": 1024, "autoreboot_on": true},
        "discs": [{"label": "disc-1", "storage_grade": "sata", "size": 25600}],
    })
}

/// Creates a VM through vm_create; returns its JSON.
pub async fn create_vm(tb: &TestBrain, token: &str, account: &str, body: Value) -> Value {
    let path = format!("/accounts/{account}/groups/default/vm_create");
    let (status, vm) = tb.post(token, &path, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{vm}");
    vm
}

pub fn vm_path(account: &str, vm: &str) -> String {
    format!("/accounts/{account}/groups/default/virtual_machines/{vm}")
}

/// Every IP string in a VM's NICs, checked to parse as an IP.
pub fn ips_of(vm: &Value) -> Vec<IpAddr> {
    let mut out = vec![];
    for nic in vm["network_interfaces"].as_array().unwrap() {
        for ip in nic["ips"].as_array().unwrap() {
            out.push(ip.as_str().unwrap().parse().expect("an IP"));
        }
        for (extra, via) in nic["extra_ips"].as_object().unwrap() {
            out.push(extra.parse().expect("an IP"));
            let _: IpAddr = via.as_str().unwrap().parse().expect("an IP");
        }
    }
    out
}

/// The messages for `field` in a 400 body.
pub fn messages(body: &Value, field: &str) -> Vec<String> {
    body[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {body}"))
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect()
}
