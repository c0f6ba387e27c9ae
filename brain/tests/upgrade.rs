//! Rolling upgrades (`POST /admin/upgrades`) against simulated heads and
//! tails that obey the reboot order: every node in turn is emptied,
//! rebooted onto the new version, checked and put back, with every VM
//! kept running throughout (the simulators' guest logs show no stop and no
//! second start); a node that comes back on the wrong version or not at
//! all stops the rollout; a restarted brain resumes it; cancelling puts
//! the node being emptied back into service.

mod common;
mod reconcile_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bigv_brain::boot::images;
use bigv_brain::model::{AffinityGroupId, AffinityPolicy, AntiAffinityGroup, DbError, VmId};
use bigv_spine::sim::{GuestEventKind, SimFleet};
use common::*;
use reconcile_support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A node image folder: the three files and a manifest vouching for them.
fn make_image(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let mut files = serde_json::Map::new();
    for name in ["vmlinuz", "initrd", "initrd-head"] {
        let data = format!("{name} of {version}");
        std::fs::write(dir.join(name), &data).unwrap();
        files.insert(
            name.into(),
            json!({"sha256": hex::encode(Sha256::digest(&data)), "size": data.len()}),
        );
    }
    let m = json!({"version": version, "files": files});
    std::fs::write(dir.join("manifest.json"), m.to_string()).unwrap();
}

/// Stores node image `version` and lets the brain find it.
async fn store_image(tb: &TestBrain, version: &str) {
    let src = tempfile::tempdir().unwrap();
    make_image(src.path(), version);
    images::add(tb.dir.path(), src.path()).unwrap();
    let su = tb.su().await;
    let (status, list) = tb.get(&su, "/admin/node_images").await;
    assert_eq!(status, StatusCode::OK, "{list}");
}

/// Image v2 stored and `heads` + `tails` joined, every one of them set to
/// come back from a reboot on v2; their node ids by label.
async fn ready_for_v2(
    tb: &TestBrain,
    heads: usize,
    tails: usize,
) -> (SimFleet, BTreeMap<String, String>) {
    store_image(tb, "v2").await;
    let fleet = fleet(tb, heads, tails);
    joined(tb, &fleet).await;
    for node in &fleet.nodes {
        node.boot_version("v2");
    }
    (fleet, labels(tb))
}

/// Node ids by label.
fn labels(tb: &TestBrain) -> BTreeMap<String, String> {
    tb.brain
        .db
        .read()
        .nodes
        .values()
        .map(|n| (n.label.clone(), n.node_id.clone()))
        .collect()
}

async fn start_upgrade(tb: &TestBrain, body: Value) -> Value {
    let su = tb.su().await;
    let (status, op) = tb.post(&su, "/admin/upgrades", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    op
}

async fn upgrade_ends(tb: &TestBrain, secs: u64) -> Value {
    let su = tb.su().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, op) = tb.get(&su, "/admin/upgrades/latest").await;
        assert_eq!(status, StatusCode::OK, "{op}");
        if op["state"] != "running" {
            return op;
        }
        if tokio::time::Instant::now() >= deadline {
            let (_, jobs) = tb.get(&su, "/admin/migration_jobs").await;
            panic!("the upgrade did not end within {secs} s: {op:#}\njobs: {jobs:#}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that no VM was stopped or started a second time on any node
/// since the fleet started: each ran as one guest, moved only live.
fn never_stopped_never_twice(fleet: &SimFleet, vms: &[VmId]) {
    let log = fleet.guest_log();
    for id in vms {
        let name = id.0.to_string();
        let mine: Vec<_> = log.iter().filter(|e| e.vm == name).collect();
        let boots = mine
            .iter()
            .filter(|e| e.kind == GuestEventKind::Booted)
            .count();
        assert_eq!(boots, 1, "VM {name} booted once only: {mine:#?}");
        let stops: Vec<_> = mine
            .iter()
            .filter(|e| matches!(e.kind, GuestEventKind::Stopped(_)))
            .collect();
        assert!(stops.is_empty(), "VM {name} was stopped: {stops:#?}");
        // Between moves it runs in one place: every arrival is paired with
        // the departure from where it ran.
        let ins = mine
            .iter()
            .filter(|e| e.kind == GuestEventKind::MigratedIn)
            .count();
        let outs = mine
            .iter()
            .filter(|e| e.kind == GuestEventKind::MigratedOut)
            .count();
        assert_eq!(ins, outs, "VM {name}: {mine:#?}");
    }
}

/// Watches the model while the upgrade runs: at most one node out of
/// service (emptied or off the spine) at a time, every VM wanted running,
/// and the anti-affinity pair never on one head.
fn watch(
    tb: &TestBrain,
    vms: Vec<VmId>,
    pair: Option<(VmId, VmId)>,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let db = tb.brain.db.clone();
    let spine = tb.brain.spine.clone();
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut problems = vec![];
        let mut most_out = 0;
        while !flag.load(Ordering::Relaxed) {
            {
                let model = db.read();
                let out: Vec<&str> = model
                    .nodes
                    .values()
                    .filter(|n| {
                        n.usage_strategy.as_deref() == Some("empty")
                            || !spine.node(&n.node_id).is_some_and(|h| h.is_ready())
                    })
                    .map(|n| n.label.as_str())
                    .collect();
                if out.len() > 1 {
                    problems.push(format!("more than one node out of service: {out:?}"));
                }
                most_out = most_out.max(out.len());
                for id in &vms {
                    if !model.vm(*id).is_some_and(|v| v.power_on) {
                        problems.push(format!("VM {} not wanted running", id.0));
                    }
                }
                if let Some((a, b)) = pair {
                    let (ha, hb) = (
                        model.vm(a).and_then(|v| v.head.clone()),
                        model.vm(b).and_then(|v| v.head.clone()),
                    );
                    if ha.is_some() && ha == hb {
                        problems.push(format!("anti-affinity pair together on {ha:?}"));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(most_out, 1, "some node was out of service at some point");
        problems.dedup();
        problems
    });
    (stop, task)
}

async fn set_usage(tb: &TestBrain, node_id: &str, strategy: Option<&str>) {
    let (node_id, strategy) = (node_id.to_owned(), strategy.map(str::to_owned));
    tb.brain
        .db
        .write(move |tx| {
            let mut node = tx.model().nodes[&node_id].clone();
            node.usage_strategy = strategy;
            tx.put(node)
        })
        .await
        .unwrap();
}

/// Two VMs in an anti-affinity group with policy `fail`.
async fn anti_affine(tb: &TestBrain, a: VmId, b: VmId) {
    let group = tb
        .brain
        .db
        .write(move |tx| {
            let account_id = tx.model().account_named("alice").unwrap().id;
            let id = AffinityGroupId(tx.new_id::<AntiAffinityGroup>()?);
            tx.put(AntiAffinityGroup {
                id,
                account_id,
                name: "pair".into(),
                policy: AffinityPolicy::Fail,
            })?;
            Ok::<_, DbError>(id)
        })
        .await
        .unwrap();
    for vm in [a, b] {
        update_vm(tb, vm, move |v| v.anti_affinity_group = Some(group)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_is_emptied_rebooted_onto_the_version_and_readmitted_in_turn() {
    let tb = TestBrain::start().await;
    let (fleet, _) = ready_for_v2(&tb, 3, 2).await;
    let mut vms = vec![];
    for name in ["web1", "web2", "mail"] {
        vms.push(create_vm(&tb, NewVm::running(name)).await);
    }
    // Two that must never share a head, started once the rule is set.
    for name in ["db1", "db2"] {
        vms.push(create_vm(&tb, NewVm::stopped(name)).await);
    }
    anti_affine(&tb, vms[3], vms[4]).await;
    for id in &vms[3..] {
        update_vm(&tb, *id, |v| {
            v.power_on = true;
            v.autoreboot_on = true;
        })
        .await;
    }
    for id in &vms {
        wait_running(&tb, &fleet, *id, 20).await;
    }
    // One stopped VM: its disc moves with the tails' evacuation too.
    let stopped = create_vm(&tb, NewVm::stopped("cold")).await;
    eventually("the stopped VM's disc to be placed", 10, || {
        let placed = discs(&tb, stopped)[0].storage_pool.is_some();
        async move { placed.then_some(()) }
    })
    .await;

    let (stop, watcher) = watch(&tb, vms.clone(), Some((vms[3], vms[4])));
    let started = start_upgrade(&tb, json!({"version": "v2", "reboot_timeout": 30})).await;
    assert_eq!(started["kind"], "upgrade");
    assert_eq!(started["version"], "v2");
    assert_eq!(started["nodes_total"], 5);
    let order: Vec<String> = started["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["label"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(order, ["head1", "head2", "head3", "tail1", "tail2"]);
    assert_eq!(
        tb.brain.db.read().settings.node_image_version.as_deref(),
        Some("v2"),
        "the cluster's target is the new version"
    );
    // One upgrade at a time.
    let su = tb.su().await;
    let (status, body) = tb
        .post(&su, "/admin/upgrades", json!({"version": "v2"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.as_str().unwrap().contains("already has operation"),
        "{body}"
    );

    let done = upgrade_ends(&tb, 90).await;
    stop.store(true, Ordering::Relaxed);
    let problems = watcher.await.unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(done["state"], "done", "{done:#}");
    assert_eq!(done["nodes_done"], 5);
    assert_eq!(done["done"], done["total"]);
    for n in done["nodes"].as_array().unwrap() {
        assert_eq!(n["step"], "done", "{n}");
        assert!(n["total_secs"].is_u64(), "{n}");
        assert!(n["reboot_at"].is_string(), "{n}");
    }

    // Every node is on v2, in service, and rebooted once, in order, one
    // at a time.
    let by_label = labels(&tb);
    let mut previous_up = None;
    for label in &order {
        let node_id = &by_label[label];
        let reboots = sim(&fleet, node_id).reboots();
        assert_eq!(reboots.len(), 1, "{label}: {reboots:?}");
        assert_eq!(reboots[0].version, "v2");
        if let Some(up) = previous_up {
            assert!(
                reboots[0].down_at > up,
                "{label} went down before the one before it was back"
            );
        }
        previous_up = reboots[0].up_at;
        let record = tb.brain.db.read().nodes[node_id].clone();
        assert_eq!(record.image_version.as_deref(), Some("v2"));
        assert_eq!(record.usage_strategy, None, "{label} is back in service");
    }
    // Every VM kept running: never stopped, never two copies.
    never_stopped_never_twice(&fleet, &vms);
    for id in &vms {
        assert_eq!(sim_heads_running(&fleet, *id).len(), 1);
    }
    let placed = discs(&tb, stopped)[0].clone();
    assert!(
        disc_on_tails(&fleet, &placed).is_some(),
        "the stopped VM's disc is still held"
    );

    // Nothing left to do: a second upgrade to the same version skips all.
    let again = start_upgrade(&tb, json!({"version": "v2"})).await;
    assert!(
        again["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["step"] == "skipped" && n["note"] == "already on v2"),
        "{again:#}"
    );
    assert_eq!(upgrade_ends(&tb, 10).await["state"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_on_the_wrong_version_stops_the_rollout_with_a_clear_message() {
    let tb = TestBrain::start().await;
    store_image(&tb, "v2").await;
    let fleet = fleet(&tb, 2, 2);
    joined(&tb, &fleet).await;
    let by_label = labels(&tb);
    sim(&fleet, &by_label["head1"]).boot_version("v2");
    // head2 boots something else.
    sim(&fleet, &by_label["head2"]).boot_version("v1");
    let id = create_vm(&tb, NewVm::running("web1")).await;
    wait_running(&tb, &fleet, id, 20).await;

    // A bad request changes nothing.
    let su = tb.su().await;
    let (status, body) = tb
        .post(&su, "/admin/upgrades", json!({"version": "v9"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["version"][0]
            .as_str()
            .unwrap()
            .contains("is not a stored node image (stored: v2"),
        "{body}"
    );
    let (status, body) = tb
        .post(
            &su,
            "/admin/upgrades",
            json!({"version": "v2", "reboot_timeout": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["reboot_timeout"].is_array(), "{body}");
    assert!(tb.brain.db.read().operations.is_empty());

    start_upgrade(&tb, json!({"version": "v2", "reboot_timeout": 30})).await;
    let failed = upgrade_ends(&tb, 60).await;
    assert_eq!(failed["state"], "failed", "{failed:#}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with("head2 came back on image version v1, expected v2; the upgrade stopped with 1 of 4 nodes done"),
        "{error}"
    );
    assert_eq!(failed["nodes"][1]["step"], "failed");
    assert_eq!(failed["nodes"][2]["step"], "pending", "tail1 untouched");
    assert_eq!(failed["nodes"][3]["step"], "pending", "tail2 untouched");
    assert!(sim(&fleet, &by_label["tail1"]).reboots().is_empty());
    assert!(sim(&fleet, &by_label["tail2"]).reboots().is_empty());
    let model = tb.brain.db.read().clone();
    assert_eq!(
        model.nodes[&by_label["head2"]].usage_strategy.as_deref(),
        Some("empty"),
        "the wrong node stays out of service"
    );
    assert_eq!(model.nodes[&by_label["head1"]].usage_strategy, None);
    never_stopped_never_twice(&fleet, &[id]);
    assert_eq!(sim_heads_running(&fleet, id), [by_label["head1"].clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_come_back_in_time_stops_the_rollout() {
    let tb = TestBrain::start().await;
    store_image(&tb, "v2").await;
    let fleet = fleet(&tb, 2, 0);
    joined(&tb, &fleet).await;
    let by_label = labels(&tb);
    sim(&fleet, &by_label["head1"]).reboot_delay(Duration::from_secs(60));
    start_upgrade(&tb, json!({"version": "v2", "reboot_timeout": 2})).await;
    let failed = upgrade_ends(&tb, 30).await;
    assert_eq!(failed["state"], "failed", "{failed:#}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with("head1 did not come back on the spine with image version v2 within 2 s of its reboot order"),
        "{error}"
    );
    assert!(sim(&fleet, &by_label["head2"]).reboots().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_brain_resumes_the_upgrade() {
    let tb = TestBrain::start().await;
    let (fleet, by_label) = ready_for_v2(&tb, 2, 2).await;
    // head1 stays down long enough for the brain to restart meanwhile.
    sim(&fleet, &by_label["head1"]).reboot_delay(Duration::from_secs(3));
    let vms = vec![
        create_vm(&tb, NewVm::running("web1")).await,
        create_vm(&tb, NewVm::running("web2")).await,
    ];
    for id in &vms {
        wait_running(&tb, &fleet, *id, 20).await;
    }
    start_upgrade(&tb, json!({"version": "v2", "reboot_timeout": 60})).await;
    let su = tb.su().await;
    eventually("head1 to be rebooting", 30, || {
        let (tb, su) = (&tb, su.clone());
        async move {
            let (_, op) = tb.get(&su, "/admin/upgrades/latest").await;
            (op["current_node"] == "head1" && op["current_step"] == "booting").then_some(())
        }
    })
    .await;
    let tb = restart_same_spine(tb).await;
    let done = upgrade_ends(&tb, 90).await;
    assert_eq!(done["state"], "done", "{done:#}");
    for node in &fleet.nodes {
        assert_eq!(node.image_version(), "v2");
        assert_eq!(node.reboots().len(), 1, "{}", node.node_id());
    }
    never_stopped_never_twice(&fleet, &vms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_puts_the_node_being_emptied_back_and_touches_nothing_else() {
    let tb = TestBrain::start().await;
    store_image(&tb, "v2").await;
    let fleet = fleet(&tb, 2, 2);
    joined(&tb, &fleet).await;
    let by_label = labels(&tb);
    // The VM goes to head1, the first in line: head2 takes nothing yet.
    let head = by_label["head1"].clone();
    set_usage(&tb, &by_label["head2"], Some("empty")).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    assert_eq!(wait_running(&tb, &fleet, id, 20).await, head);
    set_usage(&tb, &by_label["head2"], None).await;
    // Its live migration takes a minute: the upgrade is still emptying.
    sim(&fleet, &head).mirror_time(Duration::from_secs(60));
    start_upgrade(&tb, json!({"version": "v2"})).await;
    let su = tb.su().await;
    eventually("head1 to be emptied", 20, || {
        let (tb, su) = (&tb, su.clone());
        async move {
            let (_, op) = tb.get(&su, "/admin/upgrades/latest").await;
            (op["current_step"] == "evacuating" && op["phase"].as_str()?.contains("0 of 1"))
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        tb.brain.db.read().nodes[&head].usage_strategy.as_deref(),
        Some("empty")
    );
    let (status, cancelled) = tb
        .post(&su, "/admin/upgrades/latest/cancel", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    assert!(
        cancelled["nodes"][0]["note"]
            .as_str()
            .unwrap()
            .contains("back in service"),
        "{cancelled:#}"
    );
    assert_eq!(tb.brain.db.read().nodes[&head].usage_strategy, None);
    let (status, body) = tb
        .post(&su, "/admin/upgrades/latest/cancel", json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.as_str()
            .unwrap()
            .ends_with("is not running (it is cancelled)"),
        "{body}"
    );
    always("no node reboots", Duration::from_secs(1), || {
        fleet.nodes.iter().all(|n| n.reboots().is_empty())
    })
    .await;
    let (status, _) = tb.get(&su, "/admin/upgrades/99").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_that_could_not_empty_a_node_is_refused_up_front() {
    let tb = TestBrain::start().await;
    store_image(&tb, "v1").await;
    store_image(&tb, "v2").await;
    // An explicit target: the brain picks the first stored image itself
    // when there is none, which must not be mistaken for the upgrade's.
    let su = tb.su().await;
    let (status, body) = tb
        .put(&su, "/admin/settings", json!({"node_image_version": "v1"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let fleet = fleet(&tb, 2, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    wait_running(&tb, &fleet, id, 20).await;
    let (status, body) = tb
        .post(&su, "/admin/upgrades", json!({"version": "v2"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body.as_str().unwrap(),
        "tail1 holds sata discs and no other tail in service has a sata pool to take them; a rolling upgrade moves them off each tail before its reboot"
    );
    let model = tb.brain.db.read();
    assert!(model.operations.is_empty());
    assert_eq!(
        model.settings.node_image_version.as_deref(),
        Some("v1"),
        "the target did not move"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_brain_resumes_emptying_a_node() {
    let tb = TestBrain::start().await;
    let (fleet, by_label) = ready_for_v2(&tb, 2, 2).await;
    let head = by_label["head1"].clone();
    set_usage(&tb, &by_label["head2"], Some("empty")).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    assert_eq!(wait_running(&tb, &fleet, id, 20).await, head);
    set_usage(&tb, &by_label["head2"], None).await;
    // Its live migration takes 3 s: the brain restarts in the middle.
    sim(&fleet, &head).mirror_time(Duration::from_secs(3));
    start_upgrade(&tb, json!({"version": "v2", "reboot_timeout": 60})).await;
    let su = tb.su().await;
    eventually("head1 to be emptied", 20, || {
        let (tb, su) = (&tb, su.clone());
        async move {
            let (_, op) = tb.get(&su, "/admin/upgrades/latest").await;
            (op["current_step"] == "evacuating" && op["phase"].as_str()?.contains("0 of 1"))
                .then_some(())
        }
    })
    .await;
    let tb = restart_same_spine(tb).await;
    let done = upgrade_ends(&tb, 90).await;
    assert_eq!(done["state"], "done", "{done:#}");
    for node in &fleet.nodes {
        assert_eq!(node.image_version(), "v2");
        assert_eq!(node.reboots().len(), 1, "{}", node.node_id());
    }
    never_stopped_never_twice(&fleet, &[id]);
    // Off head1 while it rebooted, back onto it while head2 did.
    assert_eq!(sim_heads_running(&fleet, id), [head]);
}
