//! The operator API over a real brain with simulated heads and tails:
//! live node facts, admission, pool settings, migrations and emptying.
//!
//! Node and pool records are written straight into the store (as the
//! reconciler does when a node first connects), then the simulated nodes
//! join so the spine facts are live.

mod common;

use std::time::Duration;

use bigv_brain::model::{
    Account, AccountId, Admission, Disc, DiscId, Group, GroupId, Node, Pool, Role, Vm, VmId,
};
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn head_id(i: usize) -> String {
    format!("sim-head-{i:04}")
}

fn tail_id(i: usize) -> String {
    format!("sim-tail-{i:04}")
}

/// Node records `head1…`, `tail1…` for the sims' ids, and pools
/// `tailN-sata1` (sata) and `tailN-ssd1` (ssd) on each tail.
async fn seed_nodes(tb: &TestBrain, heads: usize, tails: usize, admission: Admission) {
    tb.brain
        .db
        .write(move |tx| {
            let node = |node_id: String, role, label: String| Node {
                node_id,
                role,
                label,
                admission,
                zone: Some("york".into()),
                usage_strategy: None,
                image_version: Some("sim".into()),
                addresses: vec![],
                first_seen: 0,
            };
            for i in 0..heads {
                tx.put(node(head_id(i), Role::Head, format!("head{}", i + 1)))?;
            }
            for i in 0..tails {
                tx.put(node(tail_id(i), Role::Tail, format!("tail{}", i + 1)))?;
                for (name, grade) in [("sata1", "sata"), ("ssd1", "ssd")] {
                    tx.put(Pool {
                        label: format!("tail{}-{name}", i + 1),
                        node_id: tail_id(i),
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
}

/// A running VM `name` in alice's default group, placed on `head` (a
/// node id), with one sata disc of 10 GiB in `pool`.
async fn seed_vm(tb: &TestBrain, name: &str, memory: u64, head: &str, pool: &str) -> (u64, u64) {
    let (name, head, pool) = (name.to_owned(), head.to_owned(), pool.to_owned());
    tb.brain
        .db
        .write(move |tx| {
            let account = match tx.model().account_named("alice") {
                Some(a) => a.id,
                None => {
                    let id = AccountId(tx.new_id::<Account>()?);
                    tx.put(Account {
                        id,
                        name: "alice".into(),
                        suspended: false,
                    })?;
                    id
                }
            };
            let group = match tx.model().group_named(account, "default") {
                Some(g) => g.id,
                None => {
                    let id = GroupId(tx.new_id::<Group>()?);
                    tx.put(Group {
                        id,
                        account_id: account,
                        name: "default".into(),
                    })?;
                    id
                }
            };
            let vm_id = VmId(tx.new_id::<Vm>()?);
            tx.put(Vm {
                id: vm_id,
                group_id: group,
                name,
                cores: 2,
                memory,
                power_on: true,
                autoreboot_on: true,
                cdrom_url: None,
                hardware_profile: "virtio2013".into(),
                hardware_profile_locked: false,
                keymap: None,
                zone_name: Some("york".into()),
                deleted: false,
                deleted_at: None,
                management_address: None,
                head: Some(head),
                generation: 1,
                signal: None,
                anti_affinity_group: None,
                last_imaged_with: None,
                imager_options: None,
                created_at: 0,
            })?;
            let disc_id = DiscId(tx.new_id::<Disc>()?);
            tx.put(Disc {
                id: disc_id,
                vm_id,
                label: "disc-1".into(),
                size: 10240,
                storage_grade: "sata".into(),
                storage_pool: Some(pool),
                address: None,
                generation: 1,
                iops_limit: None,
                template: None,
            })?;
            Ok::<_, bigv_brain::model::DbError>((vm_id.0, disc_id.0))
        })
        .await
        .unwrap()
}

async fn get_ok(tb: &TestBrain, token: &str, path: &str) -> Value {
    let (status, body) = tb.get(token, path).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body
}

/// Waits until every listed head and tail is online.
async fn wait_online(tb: &TestBrain, token: &str) {
    for path in ["/admin/heads", "/admin/tails"] {
        eventually(&format!("{path} online"), 15, || async move {
            let list = get_ok(tb, token, path).await;
            list.as_array()
                .unwrap()
                .iter()
                .all(|n| n["online"] == true)
                .then_some(())
        })
        .await;
    }
}

fn messages(body: &Value, field: &str) -> String {
    body[field].to_string()
}

#[tokio::test]
async fn heads_tails_and_pools_show_live_facts_and_a_node_that_stays_away_goes_offline() {
    let tb = TestBrain::start().await;
    seed_nodes(&tb, 2, 1, Admission::Accepted).await;
    let su = tb.su().await;

    // Known but never connected: listed, offline, no memory.
    let heads = get_ok(&tb, &su, "/admin/heads").await;
    assert_eq!(heads.as_array().unwrap().len(), 2);
    assert_eq!(heads[0]["online"], false);
    assert_eq!(heads[0]["total_memory"], 0);

    let sims = tb.sims(2, 1);
    wait_online(&tb, &su).await;

    let head1 = get_ok(&tb, &su, "/admin/heads/head1").await;
    assert_eq!(head1["label"], "head1");
    assert_eq!(head1["uuid"], head_id(0));
    assert_eq!(head1["arch"], "x86_64");
    assert_eq!(head1["admission"], "accepted");
    assert_eq!(head1["zone"], "york");
    assert_eq!(head1["total_memory"], 16384);
    assert_eq!(head1["free_memory"], 16384);
    assert_eq!(head1["virtual_machines_count"], 0);
    assert_eq!(head1["models"], json!([]));
    // `id` is a number (the Go client decodes an int) and finds the head,
    // as does its node id.
    let number = head1["id"].as_u64().expect("numeric id");
    assert_eq!(
        get_ok(&tb, &su, &format!("/admin/heads/{number}")).await["label"],
        "head1"
    );
    assert_eq!(
        get_ok(&tb, &su, &format!("/admin/heads/{}", head_id(0))).await["label"],
        "head1"
    );
    assert_eq!(
        tb.get(&su, "/admin/heads/head9").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        tb.get(&su, "/admin/heads/tail1").await.0,
        StatusCode::NOT_FOUND
    );

    let tail = get_ok(&tb, &su, "/admin/tails/tail1").await;
    assert_eq!(tail["uuid"], tail_id(0));
    assert_eq!(tail["online"], true);
    assert_eq!(tail["pools"], json!(["tail1-sata1", "tail1-ssd1"]));

    let pools = get_ok(&tb, &su, "/admin/storage_pools").await;
    assert_eq!(pools.as_array().unwrap().len(), 2);
    let sata = get_ok(&tb, &su, "/admin/storage_pools/tail1-sata1").await;
    assert_eq!(sata["name"], "tail1-sata1");
    assert_eq!(sata["grade"], "sata");
    assert_eq!(sata["size"], 1 << 20);
    assert_eq!(sata["free_space"], 1 << 20);
    assert_eq!(sata["ceiling"], 1 << 20);
    assert_eq!(sata["alloc"], 0);
    assert_eq!(sata["overcommit_ratio"], 1);
    assert_eq!(sata["zone"], "york");

    // A VM placed on head1 with a disc in tail1-sata1 shows up everywhere.
    let (vm, disc) = seed_vm(&tb, "web1", 4096, &head_id(0), "tail1-sata1").await;
    let head1 = get_ok(&tb, &su, "/admin/heads/head1").await;
    assert_eq!(head1["free_memory"], 16384 - 4096);
    assert_eq!(head1["used_cores"], 2);
    assert_eq!(head1["virtual_machines"], json!(["web1.default.alice"]));
    let on_head = get_ok(&tb, &su, "/admin/heads/head1/virtual_machines").await;
    assert_eq!(on_head[0]["id"], vm);
    assert_eq!(on_head[0]["head"], "head1");
    let sata = get_ok(&tb, &su, "/admin/storage_pools/tail1-sata1").await;
    assert_eq!(sata["alloc"], 10240);
    assert_eq!(sata["discs"], json!([disc.to_string()]));
    let on_tail = get_ok(&tb, &su, "/admin/tails/tail1/discs").await;
    assert_eq!(on_tail[0]["id"], disc);
    assert_eq!(
        get_ok(&tb, &su, "/admin/tails/tail1/virtual_machines").await[0]["id"],
        vm
    );
    assert_eq!(
        get_ok(
            &tb,
            &su,
            "/admin/storage_pools/tail1-sata1/virtual_machines"
        )
        .await[0]["id"],
        vm
    );
    let (status, body) = tb
        .get(
            &su,
            "/admin/heads/head1/virtual_machines?at=2018-08-21T15:00:00+0000",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(messages(&body, "at").contains("history"), "{body}");

    // head2 drops off the spine and stays away: offline, head1 unaffected.
    sims.node(&head_id(1))
        .unwrap()
        .stay_away(Duration::from_secs(60));
    eventually("head2 offline", 10, || async {
        let head2 = get_ok(&tb, &su, "/admin/heads/head2").await;
        (head2["online"] == false).then_some(())
    })
    .await;
    let head2 = get_ok(&tb, &su, "/admin/heads/head2").await;
    assert_eq!(head2["total_memory"], 0);
    assert_eq!(get_ok(&tb, &su, "/admin/heads/head1").await["online"], true);
}

#[tokio::test]
async fn a_pending_node_is_accepted_and_relabelled() {
    let tb = TestBrain::start().await;
    seed_nodes(&tb, 2, 1, Admission::Pending).await;
    let su = tb.su().await;
    let _sims = tb.sims(2, 1);
    wait_online(&tb, &su).await;
    assert_eq!(
        get_ok(&tb, &su, "/admin/heads/head1").await["admission"],
        "pending"
    );

    let (status, head) = tb.post(&su, "/admin/heads/head1/accept", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{head}");
    assert_eq!(head["admission"], "accepted");
    assert_eq!(
        get_ok(&tb, &su, "/admin/heads/head1").await["admission"],
        "accepted"
    );
    assert_eq!(
        get_ok(&tb, &su, "/admin/heads/head2").await["admission"],
        "pending"
    );
    // A head is not a tail.
    assert_eq!(
        tb.post(&su, "/admin/tails/head2/accept", json!({})).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, tail) = tb.post(&su, "/admin/tails/tail1/accept", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tail["admission"], "accepted");

    // Relabel and re-zone; labels are unique and never bare numbers.
    let (status, head) = tb
        .put(
            &su,
            "/admin/heads/head1",
            json!({"label": "stg-h1", "zone": "manchester"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{head}");
    assert_eq!(head["label"], "stg-h1");
    assert_eq!(head["zone"], "manchester");
    assert_eq!(
        get_ok(&tb, &su, "/admin/heads/stg-h1").await["uuid"],
        head_id(0)
    );
    let (status, body) = tb
        .put(
            &su,
            "/admin/heads/head2",
            json!({"label": "tail1", "zone": "leeds"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        messages(&body, "label").contains("already been taken"),
        "{body}"
    );
    assert!(messages(&body, "zone").contains("not a zone"), "{body}");
    let (status, body) = tb
        .put(&su, "/admin/heads/head2", json!({"label": "42"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(messages(&body, "label").contains("bare numbers"), "{body}");
    let (status, body) = tb
        .put(
            &su,
            "/admin/tails/tail1",
            json!({"usage_strategy": "sometimes"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        messages(&body, "usage_strategy").contains("empty"),
        "{body}"
    );
    assert_eq!(
        get_ok(&tb, &su, "/admin/heads/head2").await["label"],
        "head2"
    );
}

#[tokio::test]
async fn pool_settings_are_validated_and_overcommit_raises_the_ceiling() {
    let tb = TestBrain::start().await;
    seed_nodes(&tb, 0, 1, Admission::Accepted).await;
    let su = tb.su().await;
    let _sims = tb.sims(0, 1);
    wait_online(&tb, &su).await;
    let path = "/admin/storage_pools/tail1-sata1";

    for (ratio, message) in [
        (json!(0), "must be greater than 0"),
        (json!(-1.5), "must be greater than 0"),
        (json!(11), "must be less than or equal to 10"),
        (json!("lots"), "must be a number"),
    ] {
        // A good field beside a bad one changes nothing either.
        let (status, body) = tb
            .put(
                &su,
                path,
                json!({"overcommit_ratio": ratio, "migration_concurrency": 4}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{ratio}");
        assert!(
            messages(&body, "overcommit_ratio").contains(message),
            "{body}"
        );
    }
    let (status, body) = tb
        .put(
            &su,
            path,
            json!({"migration_concurrency": 0, "label": "fast"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(messages(&body, "migration_concurrency").contains("greater than or equal to 1"));
    assert!(
        messages(&body, "label").contains("cannot be changed"),
        "{body}"
    );
    let pool = get_ok(&tb, &su, path).await;
    assert_eq!(pool["migration_concurrency"], 1);
    assert_eq!(pool["overcommit_ratio"], 1);

    let (status, pool) = tb
        .put(
            &su,
            path,
            json!({"overcommit_ratio": 2.5, "migration_concurrency": 3, "iops_limit": 500}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{pool}");
    assert_eq!(pool["overcommit_ratio"], 2.5);
    assert_eq!(pool["ceiling"], (1u64 << 20) * 5 / 2);
    assert_eq!(pool["migration_concurrency"], 3);
    assert_eq!(pool["iops_limit"], 500);
    let (_, pool) = tb
        .put(
            &su,
            path,
            json!({"overcommit_ratio": "2", "iops_limit": null}),
        )
        .await;
    assert_eq!(pool["overcommit_ratio"], 2, "whole ratios stay integers");
    assert_eq!(pool["iops_limit"], Value::Null);
    assert_eq!(
        tb.get(&su, "/admin/storage_pools/tail9-sata1").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn vm_and_disc_migrations_are_checked_recorded_listed_and_cancelled() {
    let tb = TestBrain::start().await;
    seed_nodes(&tb, 3, 2, Admission::Accepted).await;
    let su = tb.su().await;
    let sims = tb.sims(3, 2);
    // Migrations are carried out; slow copies keep them running while the
    // API's bookkeeping is checked.
    for node in &sims.nodes {
        node.mirror_time(std::time::Duration::from_secs(600));
    }
    wait_online(&tb, &su).await;
    let (web1, disc) = seed_vm(&tb, "web1", 4096, &head_id(0), "tail1-sata1").await;
    // head2 is nearly full.
    seed_vm(&tb, "big", 15000, &head_id(1), "tail1-sata1").await;
    let migrate = format!("/admin/vms/{web1}/migrate");

    for (spec, message) in [
        ("head2", "head2 has 1384 MiB free; web1 needs 4096 MiB"),
        ("head9", "no head is called"),
        ("head1", "web1 already runs on head1"),
        ("tail1", "no head is called"),
    ] {
        let (status, body) = tb.post(&su, &migrate, json!({"new_head_spec": spec})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{spec}");
        assert!(
            messages(&body, "new_head_spec").contains(message),
            "{spec}: {body}"
        );
    }
    assert!(
        get_ok(&tb, &su, "/admin/migration_jobs")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );

    let (status, op) = tb
        .post(&su, &migrate, json!({"new_head_spec": "head3"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["kind"], "migrate_vm");
    assert_eq!(op["vm_id"], web1);
    assert_eq!(op["to_head"], head_id(2));
    assert_eq!(op["state"], "running");
    assert_eq!(op["progress"], 0);
    assert!(op["created_at"].as_str().unwrap().ends_with(" UTC"), "{op}");
    let migrating = get_ok(&tb, &su, "/admin/migrating_vms").await;
    assert_eq!(migrating.as_array().unwrap().len(), 1);
    assert_eq!(migrating[0]["id"], web1);
    assert_eq!(migrating[0]["migration"]["id"], op["id"]);
    let job = get_ok(&tb, &su, &format!("/admin/migration_jobs/{}", op["id"])).await;
    assert_eq!(job["description"], "migrate web1.default.alice to head3");
    assert_eq!(
        get_ok(&tb, &su, "/admin/migration_jobs?unfinished=1").await[0]["id"],
        op["id"]
    );

    // One running operation per VM.
    let (status, body) = tb.post(&su, &migrate, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.as_str().unwrap().contains("already has operation"),
        "{body}"
    );

    let cancel = format!("/admin/vms/{web1}/cancel_migration");
    let (status, cancelled) = tb.post(&su, &cancel, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["id"], op["id"]);
    assert_eq!(cancelled["state"], "cancelled");
    assert!(
        get_ok(&tb, &su, "/admin/migrating_vms")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        get_ok(&tb, &su, "/admin/migration_jobs?unfinished=1")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        get_ok(&tb, &su, "/admin/migration_jobs").await[0]["state"],
        "cancelled"
    );
    let (status, body) = tb.post(&su, &cancel, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.as_str().unwrap().contains("no migration running"),
        "{body}"
    );

    // Without a target the scheduler's choice is checked up front.
    let (status, op) = tb.post(&su, &migrate, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["to_head"], Value::Null);
    assert_eq!(
        tb.post(&su, "/admin/vms/999/migrate", json!({})).await.0,
        StatusCode::NOT_FOUND
    );

    // Discs: same grade, room, not where it is.
    let migrate = format!("/admin/discs/{disc}/migrate");
    for (spec, message) in [
        ("tail2-ssd1", "is ssd storage but disc"),
        ("tail1-sata1", "is already in tail1-sata1"),
        ("tail7-sata1", "no storage pool is called"),
    ] {
        let (status, body) = tb.post(&su, &migrate, json!({"new_pool_spec": spec})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{spec}");
        assert!(
            messages(&body, "new_pool_spec").contains(message),
            "{spec}: {body}"
        );
    }
    let (status, op) = tb
        .post(&su, &migrate, json!({"new_pool_spec": "tail2-sata1"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["kind"], "migrate_disc");
    assert_eq!(op["to_pool"], "tail2-sata1");
    let discs = get_ok(&tb, &su, "/admin/migrating_discs").await;
    assert_eq!(discs[0]["id"], disc);
    assert_eq!(discs[0]["new_storage_pool"], "tail2-sata1");
    assert_eq!(
        tb.post(&su, &migrate, json!({})).await.0,
        StatusCode::BAD_REQUEST
    );
    let (status, cancelled) = tb
        .post(
            &su,
            &format!("/admin/discs/{disc}/cancel_migration"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelled["state"], "cancelled");
    assert!(
        get_ok(&tb, &su, "/admin/migrating_discs")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn emptying_a_head_or_pool_records_the_operation_and_keeps_new_work_off() {
    let tb = TestBrain::start().await;
    seed_nodes(&tb, 2, 1, Admission::Accepted).await;
    let su = tb.su().await;
    let sims = tb.sims(2, 1);
    for node in &sims.nodes {
        node.mirror_time(std::time::Duration::from_secs(600));
    }
    wait_online(&tb, &su).await;
    seed_vm(&tb, "web1", 1024, &head_id(0), "tail1-sata1").await;
    let (web2, _) = seed_vm(&tb, "web2", 1024, &head_id(1), "tail1-sata1").await;

    let (status, op) = tb.post(&su, "/admin/heads/head1/empty", json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["kind"], "empty_head");
    assert_eq!(op["node_id"], head_id(0));
    assert_eq!(op["total"], 1, "one VM to move");
    assert_eq!(op["description"], "empty head1");
    assert_eq!(
        get_ok(&tb, &su, "/admin/heads/head1").await["usage_strategy"],
        "empty"
    );
    let (status, body) = tb.post(&su, "/admin/heads/head1/empty", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.as_str().unwrap().contains("already has operation"),
        "{body}"
    );
    // Nothing new goes to a head being emptied.
    let (status, body) = tb
        .post(
            &su,
            &format!("/admin/vms/{web2}/migrate"),
            json!({"new_head_spec": "head1"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        messages(&body, "new_head_spec").contains("head1 is being emptied"),
        "{body}"
    );

    // Changing their mind: back to default stops the evacuation.
    let (status, head) = tb
        .put(
            &su,
            "/admin/heads/head1",
            json!({"usage_strategy": "default"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(head["usage_strategy"], Value::Null);
    let job = get_ok(&tb, &su, &format!("/admin/migration_jobs/{}", op["id"])).await;
    assert_eq!(job["state"], "cancelled");

    let (status, op) = tb
        .post(&su, "/admin/storage_pools/tail1-sata1/empty", json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["kind"], "empty_pool");
    assert_eq!(op["pool"], "tail1-sata1");
    assert_eq!(op["total"], 2, "two discs to move");
    assert_eq!(
        get_ok(&tb, &su, "/admin/storage_pools/tail1-sata1").await["usage_strategy"],
        "empty"
    );
    // The emptying, the disc migration it starts (one at a time) and the
    // VM migration the head's emptying started before it was called off.
    let unfinished = get_ok(&tb, &su, "/admin/migration_jobs?unfinished=true").await;
    let unfinished = unfinished.as_array().unwrap();
    assert!(
        unfinished.iter().any(|j| j["id"] == op["id"]),
        "{unfinished:?}"
    );
    assert!(
        unfinished
            .iter()
            .filter(|j| j["id"] != op["id"])
            .all(|j| j["kind"] == "migrate_disc" || j["kind"] == "migrate_vm"),
        "{unfinished:?}"
    );
    assert_eq!(
        tb.post(&su, "/admin/heads/head7/empty", json!({})).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_nodes_log_lines_are_shown_to_operators() {
    use bigv_spine::logs::{LogBuffer, LogLine};
    use bigv_spine::sim::{SimHardware, SimNode};
    let tb = TestBrain::start().await;
    let su = tb.su().await;
    let logs = LogBuffer::new();
    for (i, m) in ["agent started", "pool sata1 mounted", "disc 7 created"]
        .into_iter()
        .enumerate()
    {
        logs.push(LogLine {
            at_ms: i as u64,
            level: "INFO".into(),
            source: if i == 0 { "init" } else { "agent" }.into(),
            message: m.into(),
        });
    }
    let mut config = SimNode::config(&tb.brain.spine_addr.to_string(), "t-logs", "v1");
    config.tls_pin = Some(tb.brain.fingerprint);
    config.keepalive = fast_keepalive();
    config.logs = Some(logs);
    let node = SimNode::new(
        config,
        SimHardware::Tail {
            pools: [("sata1".to_string(), ("sata".to_string(), 1 << 20))].into(),
        },
    );
    let task = tokio::spawn(node.clone().run());
    let lines = eventually("the tail's log lines", 20, || async {
        let (s, v) = tb.get(&su, "/admin/tails/t-logs/logs").await;
        (s == StatusCode::OK && v.as_array().is_some_and(|a| a.len() == 3)).then_some(v)
    })
    .await;
    assert_eq!(lines[0]["source"], "init", "{lines}");
    assert_eq!(lines[2]["message"], "disc 7 created", "{lines}");
    let (s, v) = tb.get(&su, "/admin/tails/t-logs/logs?lines=1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v[0]["message"], "disc 7 created");
    for bad in ["0", "1001", "lots"] {
        let (s, v) = tb
            .get(&su, &format!("/admin/tails/t-logs/logs?lines={bad}"))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["lines"].is_array(), "{v}");
    }
    // Not a head: 404; without a session: 401.
    let (s, _) = tb.get(&su, "/admin/heads/t-logs/logs").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = tb
        .call(reqwest::Method::GET, None, "/admin/tails/t-logs/logs", None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    task.abort();
}
