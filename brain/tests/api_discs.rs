//! Discs through the customer API: add, grow (never shrink), move between
//! stopped servers, admin-only IOPS limits, and delete only with purge.

mod api_support;
mod common;

use api_support::*;
use bigv_brain::model::{Level, Target, VmId};
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn setup(tb: &TestBrain) -> (bigv_spine::sim::SimFleet, String) {
    let fleet = cluster(tb, 1, 1).await;
    networks_and_images(tb).await;
    let su = tb.su().await;
    account(tb, &su, "alice").await;
    (fleet, su)
}

fn discs_path(vm: &str) -> String {
    format!("{}/discs", vm_path("alice", vm))
}

#[tokio::test]
async fn discs_are_added_grown_and_never_shrunk() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    create_vm(&tb, &su, "alice", small_vm("web1")).await;
    let (status, disc) = tb
        .post(
            &su,
            &discs_path("web1"),
            json!({"label": "disc-2", "storage_grade": "ssd", "size": 20480}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{disc}");
    assert_eq!(disc["label"], "disc-2");
    assert_eq!(disc["storage_pool"], Value::Null);
    for f in ["migration_progress", "migration_eta", "migration_speed"] {
        assert_eq!(disc[f], Value::Null, "{f}");
    }
    // Unlabelled: the next disc-N.
    let (_, third) = tb
        .post(&su, &discs_path("web1"), json!({"size": 2048}))
        .await;
    assert_eq!(third["label"], "disc-3");
    assert_eq!(third["storage_grade"], "sata");

    for (body, field) in [
        (json!({"label": "vda", "size": 2048}), "label"),
        (json!({"label": "disc-2", "size": 2048}), "label"),
        (
            json!({"storage_grade": "floppy", "size": 2048}),
            "storage_grade",
        ),
        (json!({"size": 100}), "size"),
        (json!({"size": 3 * 1024 * 1024}), "size"),
        (json!({"storage_grade": "ssd"}), "size"),
    ] {
        let (status, e) = tb.post(&su, &discs_path("web1"), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {e}");
        assert_eq!(messages(&e, field).len(), 1, "{body}: {e}");
    }

    let disc2 = format!("{}/disc-2", discs_path("web1"));
    let (status, e) = tb.put(&su, &disc2, json!({"size": 10240})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        messages(&e, "size")[0].starts_with("cannot be resized to a lower size"),
        "{e}"
    );
    let (status, grown) = tb.put(&su, &disc2, json!({"size": 35840})).await;
    assert_eq!(status, StatusCode::OK, "{grown}");
    assert_eq!(grown["size"], 35840);
    let (_, shown) = tb.get(&su, &format!("/discs/{}", grown["id"])).await;
    assert_eq!(shown["size"], 35840);
    let (status, e) = tb.put(&su, &disc2, json!({"size": POOL_SIZE + 1024})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert!(messages(&e, "size")[0].contains("room"), "{e}");

    // Nine discs are one too many.
    for _ in 0..5 {
        let (status, e) = tb
            .post(&su, &discs_path("web1"), json!({"size": 1024}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{e}");
    }
    let (status, e) = tb
        .post(&su, &discs_path("web1"), json!({"size": 1024}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(e.as_str().unwrap().contains("8 discs"), "{e}");
}

#[tokio::test]
async fn discs_are_deleted_only_with_purge_and_only_from_stopped_servers() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    create_vm(&tb, &su, "alice", small_vm("web1")).await;
    let (_, disc) = tb
        .post(&su, &discs_path("web1"), json!({"size": 2048}))
        .await;
    let disc2 = format!("{}/disc-2", discs_path("web1"));
    let (status, reason) = tb.delete(&su, &disc2).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(reason.as_str().unwrap().contains("purge=true"), "{reason}");
    let (status, reason) = tb.delete(&su, &format!("{disc2}?purge=true")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the server is running");
    assert!(reason.as_str().unwrap().contains("stop it"), "{reason}");
    tb.put(
        &su,
        &vm_path("alice", "web1"),
        json!({"autoreboot_on": false, "power_on": false}),
    )
    .await;
    let (status, _) = tb.delete(&su, &format!("{disc2}?purge=true")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = tb.get(&su, &format!("/discs/{}", disc["id"])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, discs) = tb.get(&su, &discs_path("web1")).await;
    assert_eq!(discs.as_array().unwrap().len(), 1);

    // By id, the same rules.
    let (_, disc) = tb
        .post(&su, &discs_path("web1"), json!({"size": 2048}))
        .await;
    let (status, _) = tb.delete(&su, &format!("/discs/{}", disc["id"])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = tb
        .delete(&su, &format!("/discs/{}?purge=true", disc["id"]))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn discs_move_between_stopped_servers_but_not_the_boot_disc() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    let a = create_vm(&tb, &su, "alice", small_vm("a")).await;
    let b = create_vm(&tb, &su, "alice", small_vm("b")).await;
    tb.post(
        &su,
        &discs_path("a"),
        json!({"label": "data", "size": 2048}),
    )
    .await;
    let data = format!("{}/data", discs_path("a"));
    let (status, e) = tb
        .put(&su, &data, json!({"virtual_machine_id": b["id"]}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "both are running");
    assert!(messages(&e, "virtual_machine_id")[0].contains("powered off"));
    for vm in ["a", "b"] {
        tb.put(
            &su,
            &vm_path("alice", vm),
            json!({"autoreboot_on": false, "power_on": false}),
        )
        .await;
    }
    let (status, e) = tb
        .put(
            &su,
            &format!("{}/disc-1", discs_path("a")),
            json!({"virtual_machine_id": b["id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(messages(&e, "virtual_machine_id")[0].contains("first disc"));
    let (status, moved) = tb
        .put(&su, &data, json!({"virtual_machine_id": b["id"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(moved["virtual_machine_id"], b["id"]);
    let model = tb.brain.db.read();
    let on_b: Vec<&str> = model
        .discs_of(VmId(b["id"].as_u64().unwrap()))
        .map(|d| d.label.as_str())
        .collect();
    assert_eq!(on_b, ["disc-1", "data"]);
    assert_eq!(model.discs_of(VmId(a["id"].as_u64().unwrap())).count(), 1);
}

#[tokio::test]
async fn only_cluster_admins_set_iops_limits() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    let alice_id = tb.brain.db.read().account_named("alice").unwrap().id;
    let owner = user(
        &tb,
        "owner",
        &[(Level::AccountAdmin, Target::Account(alice_id))],
    )
    .await;
    create_vm(&tb, &owner, "alice", small_vm("web1")).await;
    let disc1 = format!("{}/disc-1", discs_path("web1"));
    let (status, _) = tb.put(&owner, &disc1, json!({"iops_limit": 100})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, disc) = tb.put(&su, &disc1, json!({"iops_limit": 100})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(disc["iops_limit"], 100);
    let (status, disc) = tb.put(&owner, &disc1, json!({"label": "root"})).await;
    assert_eq!(status, StatusCode::OK, "{disc}");
    assert_eq!(disc["label"], "root");
    assert_eq!(disc["iops_limit"], 100);
}
