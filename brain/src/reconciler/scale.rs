//! A pass over a cluster of benchmark size (20,000 VMs on 1,000 heads,
//! 250 tails): with everything where the model wants it, it must decide
//! nothing, and quickly.

use std::collections::BTreeMap;
use std::time::Instant as Clock;

use bigv_spine::resource::{DiscSpec, NetworkInterface, PoolFacts, VmDisc, VmSpec};
use bigv_spine::{NodeInfo, Role as SpineRole};
use tokio::time::Instant;

use crate::model::{
    Account, AccountId, Admission, Disc, DiscId, Group, GroupId, Model, Nic, NicId, Node, Pool,
    Role, Vm, VmId,
};
use crate::scheduler::{Facts, disc_resource};

use super::discs::{nbd_url, storage_address};
use super::pass::{Pass, Recall};
use super::snapshot::{NodeSnap, Snapshot};

/// This thread's CPU time (Linux), so the figures printed mean something
/// on a busy machine; wall time elsewhere.
fn cpu_time() -> std::time::Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(std::time::Duration::from_nanos)
        .unwrap_or_else(|| {
            static START: std::sync::OnceLock<Clock> = std::sync::OnceLock::new();
            START.get_or_init(Clock::now).elapsed()
        })
}

const HEADS: usize = 1000;
const TAILS: usize = 250;
const VMS: u64 = 20_000;

fn head_id(i: usize) -> String {
    format!("head-{i:04}")
}

fn tail_id(i: usize) -> String {
    format!("tail-{i:04}")
}

fn address(node: usize) -> String {
    format!("fd00:1::{node:x}")
}

fn info(node_id: String, role: SpineRole, n: usize) -> NodeInfo {
    NodeInfo {
        node_id,
        conn: n as u64,
        role,
        image_version: "v1".into(),
        protocol_version: 1,
        addresses: vec![address(n)],
        peer: "127.0.0.1:1".parse().expect("literal"),
        fence_timeout_secs: None,
    }
}

/// A converged cluster: the model and what the nodes report agree.
fn converged() -> (Model, Snapshot) {
    let mut model = Model::default();
    let mut snap = Snapshot::default();
    model.accounts.insert(
        1,
        Account {
            id: AccountId(1),
            name: "alice".into(),
            suspended: false,
        },
    );
    model.groups.insert(
        1,
        Group {
            id: GroupId(1),
            account_id: AccountId(1),
            name: "default".into(),
        },
    );
    for i in 0..HEADS + TAILS {
        let (id, role, label, spine_role) = if i < HEADS {
            (
                head_id(i),
                Role::Head,
                format!("head{}", i + 1),
                SpineRole::Head,
            )
        } else {
            let t = i - HEADS;
            (
                tail_id(t),
                Role::Tail,
                format!("tail{}", t + 1),
                SpineRole::Tail,
            )
        };
        model.nodes.insert(
            id.clone(),
            Node {
                node_id: id.clone(),
                role,
                label: label.clone(),
                admission: Admission::Accepted,
                zone: None,
                usage_strategy: None,
                image_version: Some("v1".into()),
                addresses: vec![address(i)],
                first_seen: 0,
            },
        );
        let mut node = NodeSnap::new(info(id.clone(), spine_role, i), true);
        if role == Role::Tail {
            let pool = format!("{label}-sata1");
            model.pools.insert(
                pool.clone(),
                Pool {
                    label: pool,
                    node_id: id.clone(),
                    name: "sata1".into(),
                    grade: "sata".into(),
                    overcommit_ratio: 1.0,
                    usage_strategy: None,
                    migration_concurrency: 1,
                    iops_limit: None,
                },
            );
            node.pools = BTreeMap::from([(
                "sata1".to_string(),
                PoolFacts {
                    grade: "sata".into(),
                    size: 1 << 24,
                    free: 1 << 24,
                    allocated: 0,
                },
            )]);
        }
        snap.nodes.insert(id, node);
    }
    for v in 1..=VMS {
        let head = (v as usize) % HEADS;
        let tail = (v as usize) % TAILS;
        let vm = Vm {
            id: VmId(v),
            group_id: GroupId(1),
            name: format!("vm{v}"),
            cores: 1,
            memory: 512,
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
            head: Some(head_id(head)),
            generation: 1,
            signal: None,
            anti_affinity_group: None,
            last_imaged_with: None,
            imager_options: None,
            created_at: 0,
        };
        let disc = Disc {
            id: DiscId(v),
            vm_id: VmId(v),
            label: "disc-1".into(),
            size: 25600,
            storage_grade: "sata".into(),
            storage_pool: Some(format!("tail{}-sata1", tail + 1)),
            address: Some(storage_address(DiscId(v))),
            generation: 1,
            iops_limit: None,
            template: None,
        };
        let nic = Nic {
            id: NicId(v),
            vm_id: VmId(v),
            label: None,
            mac: format!("fe:ff:00:00:{:02x}:{:02x}", v >> 8 & 0xff, v & 0xff),
            vlan_num: 1,
            ips: vec![format!("10.{}.{}.{}", v >> 16, v >> 8 & 0xff, v & 0xff)],
            extra_ips: BTreeMap::new(),
        };
        let spec = VmSpec {
            memory: 512,
            cores: 1,
            balloon_on: true,
            display_name: model.hostname(&vm),
            keymap: "en-gb".into(),
            network_interfaces: vec![NetworkInterface {
                mac: nic.mac.clone(),
                vlan_id: 1,
                model: "virtio".into(),
                ips: nic.ips.clone(),
                dhcp: None,
            }],
            discs: vec![VmDisc {
                address: nbd_url(disc.address.as_deref().expect("set above")),
                model: "virtio".into(),
                serial: Some("disc-1".into()),
            }],
            ..VmSpec::default()
        };
        let on_tail = DiscSpec {
            size: 25600,
            storage_pool: "sata1".into(),
            access_control_list: vec![address(head)],
            address: storage_address(DiscId(v)),
            allocated: Some(0),
            limits: super::disc_limits::disc_limits_for(1, &disc, None),
            ..DiscSpec::default()
        };
        let head_snap = snap.nodes.get_mut(&head_id(head)).expect("head");
        head_snap.vms.insert(VmId(v), (spec, 1));
        let tail_snap = snap.nodes.get_mut(&tail_id(tail)).expect("tail");
        tail_snap.add(
            disc_resource(&disc),
            bigv_spine::ResourceValue::Disc(on_tail),
            1,
        );
        model.vms.insert(v, vm);
        model.discs.insert(v, disc);
        model.nics.insert(v, nic);
    }
    model.reindex();
    (model, snap)
}

#[test]
fn a_pass_over_a_converged_cluster_of_20000_vms_decides_nothing_in_milliseconds() {
    let (model, snap) = converged();
    let mut recall = Recall::default();
    let mut timings = vec![];
    let mut cpu = vec![];
    for _ in 0..3 {
        let began = Clock::now();
        let cpu_began = cpu_time();
        let mut gather = Facts::default;
        let mut pass = Pass::new(
            &model,
            &snap,
            &mut recall,
            1000,
            Instant::now(),
            &mut gather,
        );
        pass.run();
        let changes = pass.finish();
        timings.push(began.elapsed());
        cpu.push(cpu_time() - cpu_began);
        assert_eq!(changes.writes(), 0, "a converged cluster needs no writes");
        assert!(
            changes.orders.is_empty(),
            "a converged cluster needs no orders: {:?}",
            changes.orders.first()
        );
    }
    assert_eq!(recall.seen_running.len(), VMS as usize);
    let began = Clock::now();
    let copy = snap.clone();
    let cloned = began.elapsed();
    assert_eq!(copy.nodes.len(), HEADS + TAILS);
    eprintln!(
        "reconcile pass over {VMS} VMs, {HEADS} heads, {TAILS} tails: wall {timings:?}, \
         CPU {cpu:?}; a full copy of the spine tables: {cloned:?}"
    );
    // Generous even for an unoptimised build on a busy machine; the
    // release figure is in the report.
    assert!(timings.iter().min().expect("three runs").as_secs_f64() < 2.0);
}

/// The same cluster with nothing placed yet and nothing running: what the
/// brain faces when 20,000 VMs are created at once.
fn fresh() -> (Model, Snapshot) {
    let (mut model, mut snap) = converged();
    for vm in model.vms.values_mut() {
        vm.head = None;
        vm.generation = 0;
    }
    for disc in model.discs.values_mut() {
        disc.storage_pool = None;
        disc.address = None;
        disc.generation = 0;
    }
    for node in snap.nodes.values_mut() {
        node.vms.clear();
        node.discs.clear();
    }
    (model, snap)
}

/// Placement facts for `fresh`: every head and pool usable and empty.
fn facts(model: &Model) -> Facts {
    let mut facts = Facts::default();
    for node in model.nodes.values() {
        if node.role == Role::Head {
            facts.heads.insert(
                node.node_id.clone(),
                crate::scheduler::HeadFacts {
                    node_id: node.node_id.clone(),
                    label: node.label.clone(),
                    total_memory: 65536,
                    free_memory: 65536,
                    vms: vec![],
                    usable: true,
                },
            );
        }
    }
    for pool in model.pools.values() {
        facts.pools.insert(
            pool.label.clone(),
            crate::scheduler::PoolFacts {
                label: pool.label.clone(),
                node_id: pool.node_id.clone(),
                grade: pool.grade.clone(),
                size: 1 << 24,
                allocated: 0,
                overcommit_ratio: 1.0,
                usable: true,
            },
        );
    }
    facts
}

#[test]
fn placing_20000_new_vms_takes_two_passes_and_orders_each_thing_once() {
    let (mut model, mut snap) = fresh();
    let mut recall = Recall::default();

    // Pass 1: every disc gets a pool, every VM a head; discs are created.
    let began = Clock::now();
    let changes = {
        let facts = facts(&model);
        let mut gather = move || facts.clone();
        let mut pass = Pass::new(
            &model,
            &snap,
            &mut recall,
            1000,
            Instant::now(),
            &mut gather,
        );
        pass.run();
        pass.finish()
    };
    let first = began.elapsed();
    assert_eq!(changes.orders.len(), VMS as usize);
    assert!(
        changes
            .orders
            .iter()
            .all(|o| matches!(o.action, super::orders::Action::Create(_)))
    );
    for vm in changes.vms {
        assert!(vm.head.is_some(), "VM {} placed", vm.id);
        model.vms.insert(vm.id.0, vm);
    }
    for disc in changes.discs {
        model.discs.insert(disc.id.0, disc);
    }
    // The tails do as they are told.
    for order in changes.orders {
        recall
            .ledger
            .finished(&order.node, order.name(), true, Instant::now());
        let super::orders::Action::Create(resource) = order.action else {
            unreachable!("checked above");
        };
        let (name, value) = resource.into_parts();
        let node = snap.nodes.get_mut(&order.node).expect("a tail");
        node.add(name, value, order.generation);
    }

    // Pass 2: with every disc open to its VM's head, every VM starts.
    let began = Clock::now();
    let changes = {
        let mut gather = || panic!("nothing left to place");
        let mut pass = Pass::new(
            &model,
            &snap,
            &mut recall,
            1000,
            Instant::now(),
            &mut gather,
        );
        pass.run();
        pass.finish()
    };
    let second = began.elapsed();
    assert_eq!(changes.orders.len(), VMS as usize);
    assert!(changes.orders.iter().all(|o| {
        matches!(&o.action, super::orders::Action::Create(r) if r.name().to_string().starts_with("vm."))
    }));
    eprintln!("placing {VMS} new VMs: first pass {first:?}, second pass {second:?}");
}

#[tokio::test]
async fn gathering_placement_facts_for_20000_vms_is_linear() {
    let (model, _) = converged();
    let (spine, _events) = bigv_spine::SpineServer::bind(
        "127.0.0.1:0".parse().expect("literal"),
        bigv_spine::ServerConfig::default(),
    )
    .await
    .expect("a listener");
    let began = Clock::now();
    let cpu = cpu_time();
    let mut facts = Facts::gather(&model, &spine);
    for _ in 1..20 {
        facts = Facts::gather(&model, &spine);
    }
    let took = began.elapsed() / 20;
    let cpu = (cpu_time() - cpu) / 20;
    assert_eq!(facts.heads.len(), HEADS);
    assert_eq!(facts.pools.len(), TAILS);
    let per_head = (VMS as usize / HEADS) as u64;
    assert!(facts.heads.values().all(|h| h.vms.len() as u64 == per_head));
    let per_pool = VMS / TAILS as u64;
    assert!(
        facts
            .pools
            .values()
            .all(|p| p.allocated == per_pool * 25600)
    );
    eprintln!("gathering placement facts for {VMS} VMs: wall {took:?}, CPU {cpu:?}");
}
