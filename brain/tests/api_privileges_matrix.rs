//! Who may do what to a server (BRIEFING permissions table): for each
//! privilege level, GET/PUT/DELETE on a VM and vm_create in its group,
//! plus objects in another account, which are invisible (404).

mod api_support;
mod common;

use api_support::*;
use bigv_brain::model::{AccountId, GroupId, Level, Target, VmId};
use common::*;
use reqwest::StatusCode;
use serde_json::json;

const OK: StatusCode = StatusCode::OK;
const NO_CONTENT: StatusCode = StatusCode::NO_CONTENT;
const ACCEPTED: StatusCode = StatusCode::ACCEPTED;
const FORBIDDEN: StatusCode = StatusCode::FORBIDDEN;
const NOT_FOUND: StatusCode = StatusCode::NOT_FOUND;

struct Row {
    who: &'static str,
    get: StatusCode,
    put: StatusCode,
    delete: StatusCode,
    create: StatusCode,
    /// GET of a sibling VM in the same group.
    sibling: StatusCode,
    /// Renaming the VM (group_admin on its group).
    rename: StatusCode,
    /// GET of a VM in another account.
    other: StatusCode,
}

#[tokio::test]
async fn each_level_gets_exactly_what_the_table_says() {
    let tb = TestBrain::start().await;
    let _fleet = cluster(&tb, 1, 1).await;
    networks_and_images(&tb).await;
    let su = tb.su().await;
    let acme = AccountId(account(&tb, &su, "acme").await);
    account(&tb, &su, "other").await;
    let web1 = create_vm(&tb, &su, "acme", small_vm("web1")).await;
    create_vm(&tb, &su, "acme", small_vm("web2")).await;
    create_vm(&tb, &su, "other", small_vm("x")).await;
    let web1_id = VmId(web1["id"].as_u64().unwrap());
    let group = GroupId(group_id(&tb, "acme", "default"));

    let tokens = [
        (
            "cluster_admin",
            vec![(Level::ClusterAdmin, Target::Cluster)],
        ),
        (
            "account_admin",
            vec![(Level::AccountAdmin, Target::Account(acme))],
        ),
        (
            "group_admin",
            vec![(Level::GroupAdmin, Target::Group(group))],
        ),
        ("vm_admin", vec![(Level::VmAdmin, Target::Vm(web1_id))]),
        ("vm_console", vec![(Level::VmConsole, Target::Vm(web1_id))]),
        ("nobody", vec![]),
    ];
    #[rustfmt::skip]
    let table = [
        Row { who: "cluster_admin", get: OK, put: OK, delete: NO_CONTENT, create: ACCEPTED, sibling: OK, rename: OK, other: OK },
        Row { who: "account_admin", get: OK, put: OK, delete: NO_CONTENT, create: ACCEPTED, sibling: OK, rename: OK, other: NOT_FOUND },
        Row { who: "group_admin", get: OK, put: OK, delete: NO_CONTENT, create: ACCEPTED, sibling: OK, rename: OK, other: NOT_FOUND },
        Row { who: "vm_admin", get: OK, put: OK, delete: NO_CONTENT, create: FORBIDDEN, sibling: NOT_FOUND, rename: FORBIDDEN, other: NOT_FOUND },
        Row { who: "vm_console", get: OK, put: FORBIDDEN, delete: FORBIDDEN, create: FORBIDDEN, sibling: NOT_FOUND, rename: FORBIDDEN, other: NOT_FOUND },
        Row { who: "nobody", get: NOT_FOUND, put: NOT_FOUND, delete: NOT_FOUND, create: NOT_FOUND, sibling: NOT_FOUND, rename: NOT_FOUND, other: NOT_FOUND },
    ];
    let web1_path = vm_path("acme", "web1");
    for (i, row) in table.iter().enumerate() {
        let grants = &tokens.iter().find(|(w, _)| *w == row.who).unwrap().1;
        let token = user(&tb, row.who, grants).await;
        let who = row.who;

        let (status, body) = tb.get(&token, &web1_path).await;
        assert_eq!(status, row.get, "{who} GET: {body}");
        let (status, body) = tb.put(&token, &web1_path, json!({"cores": 2})).await;
        assert_eq!(status, row.put, "{who} PUT: {body}");
        let (status, body) = tb
            .put(&token, &web1_path, json!({"name": format!("renamed{i}")}))
            .await;
        assert_eq!(status, row.rename, "{who} rename: {body}");
        if status == OK {
            tb.put(
                &su,
                &vm_path("acme", &format!("renamed{i}")),
                json!({"name": "web1"}),
            )
            .await;
        }
        let (status, body) = tb.delete(&token, &web1_path).await;
        assert_eq!(status, row.delete, "{who} DELETE: {body}");
        if status == NO_CONTENT {
            let (status, body) = tb
                .put(
                    &su,
                    &format!("{web1_path}?include_deleted=true"),
                    json!({"deleted": false}),
                )
                .await;
            assert_eq!(status, OK, "restore after {who}: {body}");
        }
        let (status, body) = tb
            .post(
                &token,
                "/accounts/acme/groups/default/vm_create",
                small_vm(&format!("new{i}")),
            )
            .await;
        assert_eq!(status, row.create, "{who} vm_create: {body}");
        let (status, body) = tb.get(&token, &vm_path("acme", "web2")).await;
        assert_eq!(status, row.sibling, "{who} sibling GET: {body}");

        // Another account's objects.
        let (status, _) = tb.get(&token, &vm_path("other", "x")).await;
        assert_eq!(status, row.other, "{who} GET other VM");
        if row.who != "cluster_admin" {
            let (status, _) = tb
                .put(&token, &vm_path("other", "x"), json!({"cores": 2}))
                .await;
            assert_eq!(status, NOT_FOUND, "{who} PUT other VM");
            let (status, _) = tb.delete(&token, &vm_path("other", "x")).await;
            assert_eq!(status, NOT_FOUND, "{who} DELETE other VM");
            let (status, _) = tb
                .post(
                    &token,
                    "/accounts/other/groups/default/vm_create",
                    small_vm("sneaky"),
                )
                .await;
            assert_eq!(status, NOT_FOUND, "{who} vm_create in other");
            let (status, _) = tb.get(&token, "/accounts/other").await;
            assert_eq!(status, NOT_FOUND, "{who} GET other account");
        }
    }
    // The other account's VM was never touched.
    let model = tb.brain.db.read();
    let other = model.account_named("other").unwrap().id;
    let x = model
        .vms
        .values()
        .find(|v| model.group(v.group_id).unwrap().account_id == other)
        .unwrap();
    assert_eq!((x.cores, x.deleted), (1, false));
    assert!(model.vms.values().all(|v| v.name != "sneaky"));
}

#[tokio::test]
async fn group_and_account_changes_need_account_admin() {
    let tb = TestBrain::start().await;
    let su = tb.su().await;
    let acme = AccountId(account(&tb, &su, "acme").await);
    let group = GroupId(group_id(&tb, "acme", "default"));
    let ga = user(&tb, "ga", &[(Level::GroupAdmin, Target::Group(group))]).await;
    let aa = user(&tb, "aa", &[(Level::AccountAdmin, Target::Account(acme))]).await;
    let (status, _) = tb
        .post(&ga, "/accounts/acme/groups", json!({"name": "mine"}))
        .await;
    assert_eq!(status, FORBIDDEN);
    let (status, _) = tb.get(&ga, "/accounts/acme/groups/default").await;
    assert_eq!(status, OK);
    let (status, _) = tb
        .post(&aa, "/accounts/acme/groups", json!({"name": "mine"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = tb.get(&ga, "/accounts/acme/groups/mine").await;
    assert_eq!(status, NOT_FOUND, "a group admin sees only its own group");
    let (status, _) = tb.delete(&ga, "/accounts/acme/groups/mine").await;
    assert_eq!(status, NOT_FOUND);
    let (status, _) = tb.delete(&aa, "/accounts/acme/groups/mine").await;
    assert_eq!(status, NO_CONTENT);
}
