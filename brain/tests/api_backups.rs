//! Disc backups and backup schedules through the API (bigv-api.md §9),
//! carried out by simulated tails: take, restore (only while the server is
//! off), delete; schedules from vm_create and POST, run by the brain's
//! clock and pruned to their capacity, kept across a brain restart.

mod api_support;
mod common;
mod reconcile_support;

use api_support::*;
use bigv_brain::clock::Clock;
use bigv_brain::model::{Level, Target, VmId};
use bigv_spine::backup::DiscBackups;
use bigv_spine::sim::SimFleet;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const T0: u64 = 1_800_000_000;

fn disc_path(vm: &str) -> String {
    format!("{}/discs/disc-1", vm_path("alice", vm))
}

/// The sim tail's report of the VM's first disc's backups.
fn tail_backups(tb: &TestBrain, fleet: &SimFleet, vm: &Value) -> Option<DiscBackups> {
    let id = VmId(vm["id"].as_u64().unwrap());
    let disc = tb.brain.db.read().discs_of(id).next().unwrap().clone();
    let name = bigv_brain::scheduler::disc_resource(&disc);
    fleet
        .nodes
        .iter()
        .find_map(|n| n.discs().get(&name).cloned())
        .and_then(|d| d.backups)
}

fn ids(list: &Value) -> Vec<u64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn backups_are_taken_restored_while_off_and_deleted() {
    let tb = TestBrain::start_with(test_settings(), Clock::manual(T0)).await;
    let fleet = cluster(&tb, 1, 1).await;
    networks_and_images(&tb).await;
    let su = tb.su().await;
    let alice = account(&tb, &su, "alice").await;
    let vm = create_vm(&tb, &su, "alice", small_vm("web1")).await;
    let backups = format!("{}/backups", disc_path("web1"));

    let (status, disc) = tb.get(&su, &disc_path("web1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(disc["backup_count"], 0);
    assert_eq!(disc["backups_enabled"], false);
    assert_eq!(disc["backup_schedules"], json!([]));

    // Take one: 202 with the backup, pending until the tail has it.
    let (status, b) = tb.post(&su, &backups, json!(null)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{b}");
    assert_eq!(b["state"], "pending");
    assert_eq!(b["manual"], true);
    assert_eq!(b["parent_disc_id"], disc["id"]);
    assert_eq!(b["size"], 25600);
    assert_eq!(b["storage_grade"], "sata");
    let bid = b["id"].as_u64().unwrap();
    assert_eq!(b["label"], format!("backup-{bid}"));
    let taken = eventually("the backup to be taken", 10, || async {
        let (_, list) = tb.get(&su, &backups).await;
        (list[0]["state"] == "taken").then_some(list)
    })
    .await;
    assert_eq!(taken[0]["storage_pool"], "tail1-sata1");
    let on_tail = tail_backups(&tb, &fleet, &vm).unwrap();
    assert_eq!(on_tail.keep, [format!("b{bid}")]);
    let (_, disc) = tb.get(&su, &disc_path("web1")).await;
    assert_eq!(disc["backup_count"], 1);

    // Privileges: console users see backups but may not take them; others
    // do not see the disc at all.
    let vm_id = VmId(vm["id"].as_u64().unwrap());
    let console = user(&tb, "watcher", &[(Level::VmConsole, Target::Vm(vm_id))]).await;
    let (status, _) = tb.get(&console, &backups).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = tb.post(&console, &backups, json!(null)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let stranger = user(&tb, "stranger", &[]).await;
    let (status, _) = tb.get(&stranger, &backups).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let owner = user(
        &tb,
        "owner",
        &[(
            Level::AccountAdmin,
            Target::Account(bigv_brain::model::AccountId(alice)),
        )],
    )
    .await;

    // Restore: refused while the server runs, and for a bad body.
    let one = format!("{backups}/{bid}");
    let (status, body) = tb.put(&owner, &one, json!({"restore": true})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("powered on"), "{body}");
    let (status, _) = tb
        .put(
            &owner,
            &vm_path("alice", "web1"),
            json!({"autoreboot_on": false, "power_on": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = tb.put(&owner, &one, json!({"restore": false})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!messages(&body, "restore").is_empty(), "{body}");
    let (status, body) = tb.put(&owner, &one, json!({"restore": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["restore"]["state"], "pending");
    eventually("the restore to be done", 10, || async {
        let (_, list) = tb.get(&owner, &backups).await;
        (list[0]["restore"]["state"] == "done").then_some(())
    })
    .await;
    assert!(
        tail_backups(&tb, &fleet, &vm)
            .unwrap()
            .restored_seq
            .is_some()
    );

    // Delete: only with purge; then gone from the API and the tail.
    let (status, _) = tb.delete(&owner, &format!("{backups}/999999")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = tb.delete(&owner, &one).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = tb.delete(&owner, &format!("{one}?purge=true")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, list) = tb.get(&owner, &backups).await;
    assert_eq!(list, json!([]));
    eventually("the tail to delete it and the record to go", 10, || async {
        let gone = tail_backups(&tb, &fleet, &vm).is_some_and(|b| b.taken.is_empty())
            && tb.brain.db.read().backups.is_empty();
        gone.then_some(())
    })
    .await;
}

#[tokio::test]
async fn schedules_take_backups_on_the_clock_prune_to_capacity_and_survive_a_restart() {
    let tb = TestBrain::start_with(test_settings(), Clock::manual(T0)).await;
    let fleet = cluster(&tb, 1, 1).await;
    networks_and_images(&tb).await;
    let su = tb.su().await;
    account(&tb, &su, "alice").await;
    let start = bigv_brain::api::time::format_time(T0 + 3600);
    let mut body = small_vm("db1");
    body["discs"][0]["backup_schedules"] =
        json!([{"start_at": start, "interval_seconds": 3600, "capacity": 2}]);
    let vm = create_vm(&tb, &su, "alice", body).await;
    let path = disc_path("db1");
    let backups = format!("{path}/backups");

    let (_, disc) = tb.get(&su, &path).await;
    assert_eq!(disc["backups_enabled"], true);
    let s = &disc["backup_schedules"][0];
    assert_eq!(
        (s["interval_seconds"].clone(), s["capacity"].clone()),
        (json!(3600), json!(2))
    );
    assert_eq!(s["start_at"], start);

    // Field errors, for vm_create and POST alike.
    let (status, body) = tb
        .post(
            &su,
            &format!("{path}/backup_schedules"),
            json!({"start_at": "soon", "interval_seconds": 10}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!messages(&body, "interval_seconds").is_empty(), "{body}");
    let (status, body) = tb
        .post(
            &su,
            &format!("{path}/backup_schedules"),
            json!({"start_at": "soon", "interval_seconds": 86400}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!messages(&body, "start_at").is_empty(), "{body}");
    let mut bad = small_vm("db2");
    bad["discs"][0]["backup_schedules"] = json!([{"start_at": "00:00"}]);
    let (status, body) = tb
        .post(&su, "/accounts/alice/groups/default/vm_create", bad)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.to_string()
            .contains("backup_schedules[0].interval_seconds"),
        "{body}"
    );

    // Nothing before start_at; then one per interval, pruned to 2.
    tb.clock.advance(3599);
    tb.brain.reconcile.notify_one();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(tb.brain.db.read().backups.is_empty());
    let mut seen = vec![];
    for n in 1..=3u64 {
        tb.clock.advance(if n == 1 { 1 } else { 3600 });
        tb.brain.reconcile.notify_one();
        let su = tb.su().await;
        let list = eventually("a scheduled backup to be taken", 10, || async {
            let (_, list) = tb.get(&su, &backups).await;
            let all_taken = list
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["state"] == "taken");
            (list.as_array().unwrap().len() as u64 == n.min(2)
                && all_taken
                && !ids(&list).iter().all(|i| seen.contains(i)))
            .then_some(list)
        })
        .await;
        assert_eq!(list[0]["manual"], false);
        seen.extend(ids(&list));
    }
    let su = tb.su().await;
    let (_, list) = tb.get(&su, &backups).await;
    let kept = ids(&list);
    assert!(!kept.contains(&seen[0]), "the oldest was pruned: {list}");
    eventually("the tail to hold just the two kept", 10, || async {
        let held: Vec<String> = tail_backups(&tb, &fleet, &vm)
            .map(|b| b.taken.into_iter().map(|t| t.id).collect())
            .unwrap_or_default();
        let want: Vec<String> = kept.iter().map(|i| format!("b{i}")).collect();
        (held == want).then_some(())
    })
    .await;

    // A restart keeps backups and schedules, and the schedule goes on.
    let tb = reconcile_support::restart_same_spine(tb).await;
    let su = tb.su().await;
    let (_, list) = tb.get(&su, &backups).await;
    assert_eq!(ids(&list), kept);
    let (_, disc) = tb.get(&su, &path).await;
    let sid = disc["backup_schedules"][0]["id"].as_u64().unwrap();
    tb.clock.advance(3600);
    tb.brain.reconcile.notify_one();
    let su = tb.su().await;
    eventually("the schedule to go on after the restart", 10, || async {
        let (_, list) = tb.get(&su, &backups).await;
        let now = ids(&list);
        (now.len() == 2 && now[0] == kept[1] && list[1]["state"] == "taken").then_some(())
    })
    .await;

    // Unscheduled: no more backups.
    let (status, _) = tb
        .delete(&su, &format!("{path}/backup_schedules/{sid}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, disc) = tb.get(&su, &path).await;
    assert_eq!(disc["backups_enabled"], false);
    let before = tb.brain.db.read().backups.len();
    tb.clock.advance(7200);
    tb.brain.reconcile.notify_one();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(tb.brain.db.read().backups.len(), before);
}

#[tokio::test]
async fn a_tail_with_an_iceberg_pool_keeps_backups_there() {
    let tb = TestBrain::start_with(test_settings(), Clock::manual(T0)).await;
    let fleet = cluster(&tb, 1, 1).await;
    networks_and_images(&tb).await;
    tb.brain
        .db
        .write(|tx| {
            tx.put(bigv_brain::model::Pool {
                label: "tail1-iceberg1".into(),
                node_id: "sim-tail-0000".into(),
                name: "iceberg1".into(),
                grade: "iceberg".into(),
                overcommit_ratio: 1.0,
                usage_strategy: None,
                migration_concurrency: 1,
                iops_limit: None,
            })
        })
        .await
        .unwrap();
    let su = tb.su().await;
    account(&tb, &su, "alice").await;
    let vm = create_vm(&tb, &su, "alice", small_vm("web1")).await;

    // Discs cannot be of the backup grade.
    let (_, defs) = tb.get(&su, "/definitions").await;
    assert!(!defs.to_string().contains("iceberg"), "{defs}");
    let (status, body) = tb
        .post(
            &su,
            &format!("{}/discs", vm_path("alice", "web1")),
            json!({"storage_grade": "iceberg", "size": 10240}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!messages(&body, "storage_grade").is_empty(), "{body}");

    let backups = format!("{}/backups", disc_path("web1"));
    let (status, _) = tb.post(&su, &backups, json!(null)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let list = eventually("the backup to be taken", 10, || async {
        let (_, list) = tb.get(&su, &backups).await;
        (list[0]["state"] == "taken").then_some(list)
    })
    .await;
    assert_eq!(list[0]["storage_pool"], "tail1-iceberg1");
    assert_eq!(list[0]["storage_grade"], "iceberg");
    let on_tail = tail_backups(&tb, &fleet, &vm).unwrap();
    assert_eq!(on_tail.pool.as_deref(), Some("iceberg1"));
    // Operators see it counted in the pool.
    let (_, pools) = tb.get(&su, "/admin/storage_pools").await;
    let count = |label: &str| {
        pools
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["label"] == label)
            .map(|p| p["backups"].clone())
    };
    assert_eq!(count("tail1-iceberg1"), Some(json!(1)), "{pools}");
    assert_eq!(count("tail1-sata1"), Some(json!(0)), "{pools}");
}

/// The customer takes a backup of web1's disc (waited for until taken),
/// and an operator migrates the disc to the other tail; returns the
/// backups' path, the backup's id and the list as it was before the move.
async fn back_up_then_migrate(tb: &TestBrain, su: &str) -> (String, u64, Value) {
    let backups = format!("{}/backups", disc_path("web1"));
    let (_, b) = tb.post(su, &backups, json!(null)).await;
    let first = b["id"].as_u64().unwrap();
    let before = eventually("the backup to be taken", 10, || async {
        let (_, list) = tb.get(su, &backups).await;
        (list[0]["state"] == "taken").then_some(list)
    })
    .await;
    let (_, disc) = tb.get(su, &disc_path("web1")).await;
    let (status, op) = tb
        .post(
            su,
            &format!("/admin/discs/{}/migrate", disc["id"]),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    (backups, first, before)
}

/// Takes another backup and waits until the new tail holds it; its id.
async fn back_up_on_the_new_tail(tb: &TestBrain, su: &str, backups: &str) -> u64 {
    let (_, b) = tb.post(su, backups, json!(null)).await;
    let id = b["id"].as_u64().unwrap();
    eventually("a new backup on the new tail", 10, || async {
        let (_, list) = tb.get(su, backups).await;
        let taken = list
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["id"] == id && b["state"] == "taken");
        taken.then_some(())
    })
    .await;
    id
}

/// A disc's backups move with it to another tail: still `taken`, now on
/// the new tail (in its iceberg pool when it has one), still restorable,
/// and new ones are taken there.
#[tokio::test]
async fn a_disc_that_moves_to_another_tail_takes_its_backups_along() {
    let tb = TestBrain::start_with(test_settings(), Clock::manual(T0)).await;
    let fleet = cluster(&tb, 1, 2).await;
    networks_and_images(&tb).await;
    let su = tb.su().await;
    account(&tb, &su, "alice").await;
    let vm = create_vm(&tb, &su, "alice", small_vm("web1")).await;
    let (backups, first, before) = back_up_then_migrate(&tb, &su).await;
    let list = eventually("the backup to be recorded on the new tail", 20, || async {
        let (_, list) = tb.get(&su, &backups).await;
        (list[0]["storage_pool"] != before[0]["storage_pool"]).then_some(list)
    })
    .await;
    assert_eq!(list[0]["state"], "taken", "{list}");
    assert_eq!(list[0]["id"], first);
    let second = back_up_on_the_new_tail(&tb, &su, &backups).await;
    let on_tail = tail_backups(&tb, &fleet, &vm).unwrap();
    assert_eq!(on_tail.keep, [format!("b{first}"), format!("b{second}")]);
}

/// A tail too old to receive backups (protocol 3) gets the disc without
/// them: they stay behind, are lost (shown `failed`, saying so), and new
/// ones are taken on the new tail.
#[tokio::test]
async fn backups_are_lost_when_the_new_tail_cannot_receive_them() {
    let tb = TestBrain::start_with(test_settings(), Clock::manual(T0)).await;
    let fleet = cluster_speaking(&tb, 1, 2, 3).await;
    networks_and_images(&tb).await;
    let su = tb.su().await;
    account(&tb, &su, "alice").await;
    let vm = create_vm(&tb, &su, "alice", small_vm("web1")).await;
    let (backups, first, _) = back_up_then_migrate(&tb, &su).await;
    let list = eventually("the moved disc's backup to be lost", 20, || async {
        let (_, list) = tb.get(&su, &backups).await;
        (list[0]["state"] == "failed").then_some(list)
    })
    .await;
    assert!(
        list[0]["error"].as_str().unwrap().contains("moved"),
        "{list}"
    );
    let second = back_up_on_the_new_tail(&tb, &su, &backups).await;
    let on_tail = tail_backups(&tb, &fleet, &vm).unwrap();
    assert_eq!(on_tail.keep, [format!("b{second}")]);
    assert_ne!(first, second);
}

/// Pruning never takes a backup that is being restored from (its server
/// would wait for the restore for ever).
#[tokio::test]
async fn pruning_spares_a_backup_being_restored() {
    let tb = TestBrain::start_with(test_settings(), Clock::manual(T0)).await;
    let _fleet = cluster(&tb, 1, 1).await;
    networks_and_images(&tb).await;
    let su = tb.su().await;
    account(&tb, &su, "alice").await;
    let start = bigv_brain::api::time::format_time(T0 + 60);
    let mut body = small_vm("db1");
    body["discs"][0]["backup_schedules"] =
        json!([{"start_at": start, "interval_seconds": 3600, "capacity": 1}]);
    create_vm(&tb, &su, "alice", body).await;
    let backups = format!("{}/backups", disc_path("db1"));
    tb.clock.advance(60);
    tb.brain.reconcile.notify_one();
    let su = tb.su().await;
    let first = eventually("the first scheduled backup", 10, || async {
        let (_, list) = tb.get(&su, &backups).await;
        (list[0]["state"] == "taken").then(|| list[0]["id"].as_u64().unwrap())
    })
    .await;
    // A restore waiting (the server runs, so it is not carried out yet).
    tb.brain
        .db
        .write(move |tx| {
            let mut b = tx.model().backups[&first].clone();
            b.restore = Some(bigv_brain::model::BackupRestore {
                seq: 1_000_000,
                state: bigv_brain::model::RestoreState::Pending,
                error: None,
            });
            tx.put(b)
        })
        .await
        .unwrap();
    tb.clock.advance(3600);
    tb.brain.reconcile.notify_one();
    let su = tb.su().await;
    let list = eventually("the second scheduled backup", 10, || async {
        let (_, list) = tb.get(&su, &backups).await;
        (list.as_array().unwrap().len() == 2 && list[1]["state"] == "taken").then_some(list)
    })
    .await;
    assert_eq!(ids(&list)[0], first, "{list}");
    assert_eq!(list[0]["restore"]["state"], "pending");
}
