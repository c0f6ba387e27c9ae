//! Helpers the reconciler tests share: simulated nodes that declare
//! distinct storage addresses, records written as the API would write
//! them, and observations of what the nodes run.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use bigv_brain::model::{
    Account, AccountId, DbError, Disc, DiscId, Group, GroupId, IpRange, IpRangeId, IpRecord, Nic,
    NicId, Vm, VmId,
};
use bigv_brain::scheduler::{disc_resource, vm_resource};
use bigv_brain::{Brain, BrainConfig};
use bigv_spine::resource::{DiscSpec, ResourceValue, VmSpec};
use bigv_spine::sim::{SimFleet, SimHardware, SimNode};

use crate::common::{SU_PASSWORD, SU_USER, TestBrain, fast_keepalive};

/// MiB of RAM each simulated head offers.
pub const HEAD_MEMORY: u64 = 16384;

/// The storage address a simulated node declares: heads `fd00:1::1:N`,
/// tails `fd00:1::2:N`.
pub fn node_address(node_id: &str) -> String {
    let n: u32 = node_id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let kind = if node_id.contains("head") { 1 } else { 2 };
    format!("fd00:1::{kind}:{n}")
}

/// Heads `sim-head-0000…` and tails `sim-tail-0000…` over pinned TLS,
/// each declaring its own address (the plain `tb.sims` nodes all come from
/// 127.0.0.1, which would make every head's ACL entry the same).
pub fn fleet(tb: &TestBrain, heads: usize, tails: usize) -> SimFleet {
    let pin = tb.brain.fingerprint;
    SimFleet::start(
        &tb.brain.spine_addr.to_string(),
        heads,
        tails,
        SimHardware::Head {
            memory_mib: HEAD_MEMORY,
        },
        SimHardware::Tail {
            pools: BTreeMap::from([
                ("sata1".to_string(), ("sata".to_string(), 1 << 20)),
                ("ssd1".to_string(), ("ssd".to_string(), 1 << 19)),
            ]),
        },
        move |c| {
            c.tls_pin = Some(pin);
            c.keepalive = fast_keepalive();
            c.hello.addresses = vec![node_address(&c.hello.node_id)];
        },
    )
}

pub fn head(i: usize) -> String {
    format!("sim-head-{i:04}")
}

pub fn tail(i: usize) -> String {
    format!("sim-tail-{i:04}")
}

pub fn sim<'f>(fleet: &'f SimFleet, node: &str) -> &'f SimNode {
    fleet.node(node).expect("a node of the fleet")
}

/// Waits until every node of the fleet has a Node record and its dump is
/// complete (pools too, for tails).
pub async fn joined(tb: &TestBrain, fleet: &SimFleet) {
    let ids: Vec<String> = fleet.nodes.iter().map(|n| n.node_id().to_owned()).collect();
    crate::common::eventually("every node to join and get its records", 20, || {
        let ok = ids.iter().all(|id| {
            let model = tb.brain.db.read();
            let ready = tb.brain.spine.node(id).is_some_and(|h| h.is_ready());
            let pools = !id.contains("tail") || model.pools_of(id).count() == 2;
            ready && model.nodes.contains_key(id) && pools
        });
        async move { ok.then_some(()) }
    })
    .await;
}

/// What a new VM looks like.
#[derive(Clone)]
pub struct NewVm {
    pub name: &'static str,
    pub memory: u64,
    /// (grade, MiB) per disc.
    pub discs: Vec<(&'static str, u64)>,
    pub power_on: bool,
    pub autoreboot_on: bool,
}

impl NewVm {
    pub fn running(name: &'static str) -> Self {
        NewVm {
            name,
            memory: 1024,
            discs: vec![("sata", 25600)],
            power_on: true,
            autoreboot_on: true,
        }
    }

    /// Powered off, autoreboot off: placed nowhere, its discs on tails.
    pub fn stopped(name: &'static str) -> Self {
        NewVm {
            power_on: false,
            autoreboot_on: false,
            ..NewVm::running(name)
        }
    }
}

/// Writes a VM with its discs, one NIC and one IPv4 address, as the API's
/// create would (account `alice`, group `default`, range 192.0.2.0/24),
/// and wakes the reconciler.
pub async fn create_vm(tb: &TestBrain, new: NewVm) -> VmId {
    let now = tb.clock.now();
    let id = tb
        .brain
        .db
        .write(move |tx| {
            let model = tx.model();
            let existing = model.account_named("alice").map(|a| {
                (
                    model.group_named(a.id, "default").unwrap().id,
                    IpRangeId(*model.ip_ranges.keys().next().unwrap()),
                )
            });
            let (group_id, range_id) = match existing {
                Some(ids) => ids,
                None => {
                    let account_id = AccountId(tx.new_id::<Account>()?);
                    tx.put(Account {
                        id: account_id,
                        name: "alice".into(),
                        suspended: false,
                    })?;
                    let group_id = GroupId(tx.new_id::<Group>()?);
                    tx.put(Group {
                        id: group_id,
                        account_id,
                        name: "default".into(),
                    })?;
                    let range_id = IpRangeId(tx.new_id::<IpRange>()?);
                    tx.put(IpRange {
                        id: range_id,
                        spec: "192.0.2.0/24".into(),
                        vlan_num: 1,
                        zones: vec![],
                    })?;
                    (group_id, range_id)
                }
            };
            let vm_id = VmId(tx.new_id::<Vm>()?);
            tx.put(Vm {
                id: vm_id,
                group_id,
                name: new.name.into(),
                cores: 1,
                memory: new.memory,
                power_on: new.power_on,
                autoreboot_on: new.autoreboot_on,
                cdrom_url: None,
                hardware_profile: "virtio2013".into(),
                hardware_profile_locked: false,
                keymap: None,
                zone_name: None,
                deleted: false,
                deleted_at: None,
                management_address: None,
                head: None,
                generation: 0,
                signal: None,
                anti_affinity_group: None,
                last_imaged_with: None,
                imager_options: None,
                created_at: now,
            })?;
            for (i, (grade, size)) in new.discs.iter().enumerate() {
                let disc_id = DiscId(tx.new_id::<Disc>()?);
                tx.put(Disc {
                    id: disc_id,
                    vm_id,
                    label: format!("disc-{}", i + 1),
                    size: *size,
                    storage_grade: (*grade).into(),
                    storage_pool: None,
                    address: None,
                    generation: 0,
                    iops_limit: None,
                    template: None,
                })?;
            }
            let nic_id = NicId(tx.new_id::<Nic>()?);
            let address = format!("192.0.2.{}", 10 + vm_id.0);
            tx.put(Nic {
                id: nic_id,
                vm_id,
                label: None,
                mac: format!("fe:ff:00:00:00:{:02x}", vm_id.0),
                vlan_num: 1,
                ips: vec![address.clone()],
                extra_ips: BTreeMap::new(),
            })?;
            tx.put(IpRecord {
                address,
                range_id,
                nic_id: Some(nic_id),
                rdns: None,
            })?;
            Ok::<_, DbError>(vm_id)
        })
        .await
        .unwrap();
    tb.brain.reconcile.notify_one();
    id
}

pub fn vm(tb: &TestBrain, id: VmId) -> Vm {
    tb.brain.db.read().vm(id).expect("the VM record").clone()
}

pub fn discs(tb: &TestBrain, id: VmId) -> Vec<Disc> {
    tb.brain.db.read().discs_of(id).cloned().collect()
}

/// Changes a VM record as an API handler would, and wakes the reconciler.
pub async fn update_vm(tb: &TestBrain, id: VmId, change: impl FnOnce(&mut Vm) + Send + 'static) {
    tb.brain
        .db
        .write(move |tx| {
            let mut vm = tx.model().vm(id).unwrap().clone();
            change(&mut vm);
            tx.put(vm)
        })
        .await
        .unwrap();
    tb.brain.reconcile.notify_one();
}

pub async fn update_disc(
    tb: &TestBrain,
    disc: DiscId,
    change: impl FnOnce(&mut Disc) + Send + 'static,
) {
    tb.brain
        .db
        .write(move |tx| {
            let mut d = tx.model().disc(disc).unwrap().clone();
            change(&mut d);
            tx.put(d)
        })
        .await
        .unwrap();
    tb.brain.reconcile.notify_one();
}

/// The heads whose simulators run the VM.
pub fn sim_heads_running(fleet: &SimFleet, id: VmId) -> Vec<String> {
    fleet
        .nodes
        .iter()
        .filter(|n| n.vms().contains_key(&id.0.to_string()))
        .map(|n| n.node_id().to_owned())
        .collect()
}

/// The nodes whose spine tables (what the brain sees) hold the VM.
pub fn spine_heads_reporting(tb: &TestBrain, fleet: &SimFleet, id: VmId) -> Vec<String> {
    fleet
        .nodes
        .iter()
        .map(|n| n.node_id())
        .filter(|node| {
            tb.brain
                .spine
                .node(node)
                .is_some_and(|h| h.resource(&vm_resource(id)).is_some())
        })
        .map(str::to_owned)
        .collect()
}

/// The VM as the head's spine table reports it, with its generation.
pub fn reported_vm(tb: &TestBrain, node: &str, id: VmId) -> Option<(VmSpec, u64)> {
    match tb.brain.spine.node(node)?.resource(&vm_resource(id))? {
        (ResourceValue::Vm(spec), generation) => Some((*spec, generation)),
        _ => None,
    }
}

/// The disc as its simulated tail holds it, and which tail.
pub fn disc_on_tails(fleet: &SimFleet, disc: &Disc) -> Option<(String, DiscSpec)> {
    let name = disc_resource(disc);
    fleet
        .nodes
        .iter()
        .find_map(|n| Some((n.node_id().to_owned(), n.discs().get(&name)?.clone())))
}

/// Waits until exactly one simulated head runs the VM and the model
/// places it there; returns that head.
pub async fn wait_running(tb: &TestBrain, fleet: &SimFleet, id: VmId, secs: u64) -> String {
    crate::common::eventually("the VM to run where the model places it", secs, || {
        let running = sim_heads_running(fleet, id);
        let placed = tb.brain.db.read().vm(id).and_then(|v| v.head.clone());
        let found = match (running.as_slice(), placed) {
            ([one], Some(placed)) if *one == placed => Some(placed),
            _ => None,
        };
        async move { found }
    })
    .await
}

/// Asserts for `period` that `check` holds at every poll.
pub async fn always(what: &str, period: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + period;
    while tokio::time::Instant::now() < deadline {
        assert!(check(), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops the brain and starts a new one on the same store and the same
/// spine address, so the simulated nodes (which know only that address)
/// come back to it. `TestBrain::restart` picks a new spine port.
pub async fn restart_same_spine(tb: TestBrain) -> TestBrain {
    let TestBrain {
        brain, dir, clock, ..
    } = tb;
    let settings = brain.db.read().settings.clone();
    let spine_addr = brain.spine_addr;
    brain.shutdown().await;
    let mut attempts = 0;
    let brain = loop {
        let mut config = BrainConfig::new(dir.path());
        config.bootstrap = Some((SU_USER.into(), SU_PASSWORD.into()));
        config.initial_settings = settings.clone();
        config.keepalive = fast_keepalive();
        config.clock = clock.clone();
        config.spine_addr = spine_addr;
        match Brain::start(config).await {
            Ok(brain) => break brain,
            // The old listener and store close a moment after shutdown.
            Err(e) if attempts < 50 => {
                attempts += 1;
                eprintln!("restart attempt failed, retrying: {e:#}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("brain restarts on {spine_addr}: {e:#}"),
        }
    };
    let base = format!("http://{}", brain.api_addr);
    TestBrain {
        brain,
        http: reqwest::Client::new(),
        base,
        dir,
        clock,
    }
}
