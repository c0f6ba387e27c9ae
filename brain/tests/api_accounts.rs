//! Accounts and groups through the customer API: the overview the Go
//! client reads its default account from, creation and deletion rules,
//! and the empty account segment the 4.0 client sends.

mod api_support;
mod common;

use api_support::*;
use bigv_brain::model::{Level, Target};
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn assert_int(v: &Value, what: &str) {
    assert!(v.is_u64(), "{what} should be an integer: {v}");
}

fn assert_string_or_null(v: &Value, what: &str) {
    assert!(
        v.is_string() || v.is_null(),
        "{what} should be a string or null: {v}"
    );
}

/// Every member the Go client's VirtualMachine decodes, with its type.
fn assert_vm_shape(vm: &Value) {
    for f in ["id", "group_id", "cores", "memory"] {
        assert_int(&vm[f], f);
    }
    for f in [
        "power_on",
        "autoreboot_on",
        "deleted",
        "hardware_profile_locked",
    ] {
        assert!(vm[f].is_boolean(), "{f}: {vm}");
    }
    for f in ["name", "hostname", "hardware_profile"] {
        assert!(vm[f].is_string(), "{f}: {vm}");
    }
    for f in [
        "cdrom_url",
        "keymap",
        "zone_name",
        "head",
        "last_imaged_with",
    ] {
        assert_string_or_null(&vm[f], f);
    }
    match &vm["management_address"] {
        Value::Null => {}
        Value::String(s) => {
            let _: std::net::IpAddr = s.parse().expect("management_address is an IP");
        }
        other => panic!("management_address: {other}"),
    }
    for d in vm["discs"].as_array().expect("discs") {
        for f in ["id", "size", "virtual_machine_id"] {
            assert_int(&d[f], f);
        }
        assert!(d["label"].is_string() && d["storage_grade"].is_string());
        assert_string_or_null(&d["storage_pool"], "storage_pool");
    }
    for n in vm["network_interfaces"].as_array().expect("nics") {
        for f in ["id", "vlan_num", "virtual_machine_id"] {
            assert_int(&n[f], f);
        }
        assert!(n["mac"].is_string());
        assert_string_or_null(&n["label"], "label");
    }
    ips_of(vm);
}

#[tokio::test]
async fn the_overview_has_the_shape_the_go_client_decodes() {
    let tb = TestBrain::start().await;
    let _fleet = cluster(&tb, 1, 1).await;
    networks_and_images(&tb).await;
    let su = tb.su().await;
    let alice_id = account(&tb, &su, "alice").await;
    account(&tb, &su, "bob").await;
    let alice = user(
        &tb,
        "alice",
        &[(
            Level::AccountAdmin,
            Target::Account(bigv_brain::model::AccountId(alice_id)),
        )],
    )
    .await;
    create_vm(&tb, &alice, "alice", small_vm("web1")).await;
    create_vm(&tb, &alice, "alice", small_vm("old")).await;
    let (status, _) = tb.delete(&alice, &vm_path("alice", "old")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Exactly what the client asks for; the first account is its default.
    let (status, accounts) = tb
        .get(&alice, "/accounts?view=overview&include_deleted=true")
        .await;
    assert_eq!(status, StatusCode::OK, "{accounts}");
    let accounts = accounts.as_array().unwrap();
    assert_eq!(
        accounts.len(),
        1,
        "alice sees only her account: {accounts:?}"
    );
    let a = &accounts[0];
    assert_int(&a["id"], "id");
    assert_eq!(a["name"], "alice");
    assert_eq!(a["suspended"], false);
    let groups = a["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["name"], "default");
    assert_eq!(groups[0]["account_id"], a["id"]);
    let vms = groups[0]["virtual_machines"].as_array().unwrap();
    let names: Vec<&str> = vms.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["web1", "old"], "include_deleted shows deleted VMs");
    for vm in vms {
        assert_vm_shape(vm);
    }
    assert_eq!(vms[0]["discs"].as_array().unwrap().len(), 1);
    assert_eq!(ips_of(&vms[0]).len(), 2, "one IPv4 and one IPv6");

    let (_, without) = tb.get(&alice, "/accounts/alice?view=overview").await;
    let names: Vec<&str> = without["groups"][0]["virtual_machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web1"], "deleted VMs hide without include_deleted");
    let (_, plain) = tb.get(&alice, "/accounts/alice").await;
    assert_eq!(
        plain,
        json!({"id": alice_id, "name": "alice", "suspended": false})
    );
    let (_, group) = tb
        .get(
            &alice,
            "/accounts/alice/groups/default?view=overview&include_deleted=true",
        )
        .await;
    assert_eq!(group["virtual_machines"].as_array().unwrap().len(), 2);

    // The cluster admin sees both accounts; bob's is invisible to alice.
    let (_, all) = tb.get(&su, "/accounts").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (status, _) = tb.get(&alice, "/accounts/bob").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn accounts_are_made_and_removed_by_cluster_admins_only() {
    let tb = TestBrain::start().await;
    let _fleet = cluster(&tb, 1, 1).await;
    networks_and_images(&tb).await;
    let su = tb.su().await;
    let (status, a) = tb.post(&su, "/accounts", json!({"name": "acme"})).await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    assert_eq!(a["name"], "acme");
    let (_, groups) = tb.get(&su, "/accounts/acme/groups").await;
    assert_eq!(
        groups[0]["name"], "default",
        "every account gets a default group"
    );
    let (status, _) = tb.post(&su, "/accounts/globex", json!({})).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "POST /accounts/{{name}} creates too"
    );

    let (status, e) = tb.post(&su, "/accounts", json!({"name": "ab"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        messages(&e, "name"),
        ["is too short (minimum is 3 characters)"]
    );
    let (status, e) = tb.post(&su, "/accounts", json!({"name": "acme"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(messages(&e, "name"), ["has already been taken"]);

    let admin = user(
        &tb,
        "acme-admin",
        &[(
            Level::AccountAdmin,
            Target::Account(bigv_brain::model::AccountId(a["id"].as_u64().unwrap())),
        )],
    )
    .await;
    let (status, _) = tb.post(&admin, "/accounts", json!({"name": "mine"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = tb
        .put(&admin, "/accounts/acme", json!({"suspended": true}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only cluster admins suspend");
    let (status, e) = tb
        .put(&admin, "/accounts/acme", json!({"name": "other"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(messages(&e, "name")[0].contains("cannot be changed"));
    let (status, changed) = tb
        .put(&su, "/accounts/acme", json!({"suspended": true}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(changed["suspended"], true);
    let (status, _) = tb.delete(&admin, "/accounts/acme").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    create_vm(&tb, &su, "acme", small_vm("web1")).await;
    let (status, reason) = tb.delete(&su, "/accounts/acme").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reason}");
    assert!(reason.as_str().unwrap().contains("1 server"), "{reason}");
    tb.delete(&su, &format!("{}?purge=true", vm_path("acme", "web1")))
        .await;
    let (status, _) = tb.delete(&su, "/accounts/acme").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = tb.get(&su, "/accounts/acme").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let model = tb.brain.db.read();
    assert!(
        model
            .groups
            .values()
            .all(|g| model.account(g.account_id).is_some())
    );
    assert!(
        !model
            .privileges
            .values()
            .any(|p| matches!(p.target, Target::Account(_))),
        "privileges on a deleted account go with it"
    );
}

#[tokio::test]
async fn groups_are_created_renamed_and_deleted_only_when_empty() {
    let tb = TestBrain::start().await;
    let _fleet = cluster(&tb, 1, 1).await;
    networks_and_images(&tb).await;
    let su = tb.su().await;
    account(&tb, &su, "acme").await;
    let (status, g) = tb
        .post(&su, "/accounts/acme/groups", json!({"name": "staging"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{g}");
    assert_eq!(g["name"], "staging");
    let (status, e) = tb
        .post(&su, "/accounts/acme/groups", json!({"name": "staging"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(messages(&e, "name"), ["has already been taken"]);
    let (status, e) = tb
        .post(&su, "/accounts/acme/groups", json!({"name": "Bad.Name"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(messages(&e, "name").len(), 2, "{e}");

    let (status, renamed) = tb
        .put(
            &su,
            "/accounts/acme/groups/staging",
            json!({"name": "testing"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(renamed["name"], "testing");
    let (status, e) = tb
        .put(
            &su,
            "/accounts/acme/groups/default",
            json!({"name": "main"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");

    let (status, _) = tb.delete(&su, "/accounts/acme/groups/default").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "default stays");
    let path = "/accounts/acme/groups/testing/vm_create";
    let (status, _) = tb.post(&su, path, small_vm("web1")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = tb.delete(&su, "/accounts/acme/groups/testing").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "not empty");
    let (status, _) = tb
        .delete(
            &su,
            "/accounts/acme/groups/testing/virtual_machines/web1?purge=true",
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = tb.delete(&su, "/accounts/acme/groups/testing").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, groups) = tb.get(&su, "/accounts/acme/groups").await;
    assert_eq!(groups.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_empty_account_segment_means_the_callers_default_account() {
    let tb = TestBrain::start().await;
    let _fleet = cluster(&tb, 1, 1).await;
    networks_and_images(&tb).await;
    let su = tb.su().await;
    account(&tb, &su, "other").await;
    let id = account(&tb, &su, "acme").await;
    let token = user(
        &tb,
        "acme-user",
        &[(
            Level::AccountAdmin,
            Target::Account(bigv_brain::model::AccountId(id)),
        )],
    )
    .await;
    let (status, vm) = tb
        .post(
            &token,
            "/accounts//groups/default/vm_create",
            small_vm("web1"),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{vm}");
    assert_eq!(vm["hostname"], "web1.default.acme.bigv.test");
    let (status, vm) = tb
        .get(&token, "/accounts//groups/default/virtual_machines/web1")
        .await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    let (status, discs) = tb
        .get(
            &token,
            "/accounts//groups/default/virtual_machines/web1/discs",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(discs.as_array().unwrap().len(), 1);
}
