//! The operator API over a real brain: who may use it, cluster users and
//! groups, VLANs and IP ranges, images and cluster settings.

mod common;

use bigv_brain::model::{
    Account, AccountId, Group, GroupId, IpRangeId, IpRecord, Level, Privilege, PrivilegeId, Target,
    User, UserId, Vm, VmId,
};
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A user holding `level` on `target`, and a session token for it.
async fn user_with(tb: &TestBrain, username: &str, level: Level, target: Target) -> String {
    let username = username.to_owned();
    let name = username.clone();
    tb.brain
        .db
        .write(move |tx| {
            let user_id = UserId(tx.new_id::<User>()?);
            tx.put(User {
                id: user_id,
                username: name,
                email: None,
                authorized_keys: String::new(),
                password_hash: None,
            })?;
            let id = PrivilegeId(tx.new_id::<Privilege>()?);
            tx.put(Privilege {
                id,
                user_id,
                level,
                target,
                api_key_id: None,
                password_required: false,
                yubikey_required: false,
                yubikey_otp_max_age: None,
                ip_restrictions: None,
                creating_username: None,
            })
        })
        .await
        .unwrap();
    tb.token_for(&username).await
}

/// Account `alice` with group `default` and a stopped VM `web1` in it.
async fn seed_account(tb: &TestBrain) -> (AccountId, VmId) {
    tb.brain
        .db
        .write(|tx| {
            let account = AccountId(tx.new_id::<Account>()?);
            tx.put(Account {
                id: account,
                name: "alice".into(),
                suspended: false,
            })?;
            let group = GroupId(tx.new_id::<Group>()?);
            tx.put(Group {
                id: group,
                account_id: account,
                name: "default".into(),
            })?;
            let vm = VmId(tx.new_id::<Vm>()?);
            tx.put(Vm {
                id: vm,
                group_id: group,
                name: "web1".into(),
                cores: 1,
                memory: 1024,
                power_on: false,
                autoreboot_on: false,
                cdrom_url: None,
                hardware_profile: "virtio2013".into(),
                hardware_profile_locked: false,
                keymap: None,
                zone_name: Some("york".into()),
                deleted: false,
                deleted_at: None,
                management_address: None,
                head: None,
                generation: 0,
                signal: None,
                anti_affinity_group: None,
                last_imaged_with: None,
                imager_options: None,
                created_at: 0,
            })?;
            Ok::<_, bigv_brain::model::DbError>((account, vm))
        })
        .await
        .unwrap()
}

fn messages(body: &Value, field: &str) -> String {
    body[field].to_string()
}

#[tokio::test]
async fn only_cluster_admins_see_the_admin_tree_and_only_cluster_su_creates_cluster_users() {
    let tb = TestBrain::start().await;
    let (account, vm) = seed_account(&tb).await;
    let vm_admin = user_with(&tb, "vmadmin", Level::VmAdmin, Target::Vm(vm)).await;
    let account_admin = user_with(
        &tb,
        "accadmin",
        Level::AccountAdmin,
        Target::Account(account),
    )
    .await;
    let cluster_admin = user_with(&tb, "cadmin", Level::ClusterAdmin, Target::Cluster).await;
    let su = tb.su().await;

    let (status, _) = tb
        .call(reqwest::Method::GET, None, "/admin/heads", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Customers, even account admins who can see plenty, hold no cluster
    // privilege: to them the operator tree does not exist.
    for token in [&vm_admin, &account_admin] {
        for path in [
            "/admin/heads",
            "/admin/settings",
            "/admin/vlans",
            "/admin/migration_jobs",
        ] {
            assert_eq!(tb.get(token, path).await.0, StatusCode::NOT_FOUND, "{path}");
        }
        let (status, _) = tb
            .post(
                token,
                "/admin/vlans",
                json!({"num": 5, "usage_type": "public"}),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    assert!(tb.brain.db.read().vlans.is_empty());
    assert_eq!(
        tb.get(&cluster_admin, "/admin/heads").await,
        (StatusCode::OK, json!([]))
    );

    // Creating cluster users is for cluster_su alone.
    let new_admin =
        json!({"username": "ops2", "password": "long enough", "priv_spec": "cluster_admin"});
    let (status, _) = tb
        .post(&cluster_admin, "/admin/users", new_admin.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        tb.post(&account_admin, "/admin/users", new_admin.clone())
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert!(tb.brain.db.read().user_named("ops2").is_none());
    let (status, user) = tb.post(&su, "/admin/users", new_admin.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(user["username"], "ops2");
    assert_eq!(user["priv_spec"], "cluster_admin");
    let ops2 = tb.token_for("ops2").await;
    assert_eq!(tb.get(&ops2, "/admin/tails").await.0, StatusCode::OK);
    {
        let model = tb.brain.db.read();
        let stored = model.user_named("ops2").unwrap();
        assert!(bigv_brain::password::verify(
            "long enough",
            stored.password_hash.as_deref().unwrap()
        ));
    }

    let (status, body) = tb.post(&su, "/admin/users", new_admin).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        messages(&body, "username").contains("already been taken"),
        "{body}"
    );
    let (status, body) = tb
        .post(
            &su,
            "/admin/users",
            json!({"username": "bad name", "priv_spec": "vm_admin", "password": "short"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        messages(&body, "username").contains("letters and digits"),
        "{body}"
    );
    assert!(
        messages(&body, "priv_spec").contains("cluster_su or cluster_admin"),
        "{body}"
    );
    assert!(
        messages(&body, "password").contains("minimum is 8"),
        "{body}"
    );

    // Groups in any account, by account name or id.
    let (status, group) = tb
        .post(
            &cluster_admin,
            "/admin/groups",
            json!({"account_spec": "alice", "group_name": "staging"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    assert_eq!(group["account_id"], account.0);
    assert_eq!(group["name"], "staging");
    let (status, body) = tb
        .post(
            &cluster_admin,
            "/admin/groups",
            json!({"account_spec": account.0, "group_name": "staging"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        messages(&body, "group_name").contains("already been taken"),
        "{body}"
    );
    let (status, body) = tb
        .post(
            &cluster_admin,
            "/admin/groups",
            json!({"account_spec": "bob", "group_name": "Prod"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        messages(&body, "account_spec").contains("no account is called"),
        "{body}"
    );
    assert!(
        messages(&body, "group_name").contains("lower-case"),
        "{body}"
    );
}

#[tokio::test]
async fn a_stopped_server_has_nothing_to_migrate() {
    let tb = TestBrain::start().await;
    let (_, vm) = seed_account(&tb).await;
    let su = tb.su().await;
    let (status, body) = tb
        .post(&su, &format!("/admin/vms/{vm}/migrate"), json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.as_str()
            .unwrap()
            .contains("web1.default.alice is not running"),
        "{body}"
    );
    let (status, body) = tb
        .post(&su, &format!("/admin/vms/{vm}/cancel_migration"), json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.as_str().unwrap().contains("no migration running"),
        "{body}"
    );
    assert!(tb.brain.db.read().operations.is_empty());
}

#[tokio::test]
async fn vlans_and_ip_ranges_are_validated_counted_and_deleted_only_when_unused() {
    let tb = TestBrain::start().await;
    let su = tb.su().await;

    let (status, vlan) = tb
        .post(
            &su,
            "/admin/vlans",
            json!({"num": 100, "usage_type": "public"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{vlan}");
    assert_eq!(vlan["num"], 100);
    assert_eq!(vlan["ip_ranges"], json!([]));
    let (status, body) = tb
        .post(
            &su,
            "/admin/vlans",
            json!({"num": 100, "usage_type": "shared"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        messages(&body, "num").contains("already been taken"),
        "{body}"
    );
    assert!(messages(&body, "usage_type").contains("public"), "{body}");
    let (status, body) = tb.post(&su, "/admin/vlans", json!({"num": 5000})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(messages(&body, "num").contains("4094"), "{body}");
    assert!(
        messages(&body, "usage_type").contains("can't be blank"),
        "{body}"
    );

    let (status, range) = tb
        .post(
            &su,
            "/admin/ip_ranges",
            json!({"ip_range": "192.0.2.0/24", "vlan_num": 100}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{range}");
    assert_eq!(range["spec"], "192.0.2.0/24");
    assert_eq!(range["vlan_num"], 100);
    assert_eq!(
        range["available"], 253,
        "network, router and broadcast are never handed out"
    );
    let (status, v6) = tb
        .post(
            &su,
            "/admin/ip_ranges",
            json!({"ip_range": "2001:db8::/64", "vlan_num": 100, "zones": ["york"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v6}");
    assert_eq!(v6["available"], json!(u64::MAX - 1));
    assert_eq!(v6["zones"], json!(["york"]));

    for (spec, message) in [
        ("192.0.2.128/25", "overlaps 192.0.2.0/24"),
        ("192.0.0.0/16", "overlaps 192.0.2.0/24"),
        ("2001:db8::1:0/112", "overlaps 2001:db8::/64"),
        ("192.0.2.5/24", "did you mean 192.0.2.0/24"),
        ("192.0.3.0/31", "too small"),
        ("not-a-range", "not a CIDR range"),
    ] {
        let (status, body) = tb
            .post(
                &su,
                "/admin/ip_ranges",
                json!({"ip_range": spec, "vlan_num": 100}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{spec}");
        assert!(
            messages(&body, "ip_range").contains(message),
            "{spec}: {body}"
        );
    }
    let (status, body) = tb
        .post(
            &su,
            "/admin/ip_ranges",
            json!({"ip_range": "198.51.100.0/24", "vlan_num": 7, "zones": ["leeds"]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(messages(&body, "vlan_num").contains("no VLAN 7"), "{body}");
    assert!(messages(&body, "zones").contains("not a zone"), "{body}");
    assert_eq!(tb.brain.db.read().ip_ranges.len(), 2);

    // Lookups: by id, by CIDR, and through the VLAN.
    let id = range["id"].as_u64().unwrap();
    assert_eq!(
        tb.get(&su, &format!("/admin/ip_ranges/{id}")).await.1["spec"],
        "192.0.2.0/24"
    );
    let (_, found) = tb.get(&su, "/admin/ip_ranges?cidr=2001:db8::/64").await;
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert_eq!(found[0]["id"], v6["id"]);
    assert_eq!(
        tb.get(&su, "/admin/ip_ranges?cidr=203.0.113.0/24").await.1,
        json!([])
    );
    assert_eq!(
        tb.get(&su, "/admin/ip_ranges?cidr=nonsense").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        tb.get(&su, "/admin/ip_ranges")
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (_, vlan) = tb.get(&su, "/admin/vlans/100").await;
    assert_eq!(vlan["ip_ranges"].as_array().unwrap().len(), 2);
    assert_eq!(
        tb.get(&su, "/admin/vlans/101").await.0,
        StatusCode::NOT_FOUND
    );

    // An address in use counts against the range and keeps the VLAN.
    tb.brain
        .db
        .write(move |tx| {
            tx.put(IpRecord {
                address: "192.0.2.10".into(),
                range_id: IpRangeId(id),
                nic_id: None,
                rdns: None,
            })
        })
        .await
        .unwrap();
    assert_eq!(
        tb.get(&su, &format!("/admin/ip_ranges/{id}")).await.1["available"],
        252
    );
    let (status, body) = tb.delete(&su, "/admin/vlans/100").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.as_str().unwrap().contains("in use in 192.0.2.0/24"),
        "{body}"
    );
    assert_eq!(tb.brain.db.read().vlans.len(), 1);

    tb.brain
        .db
        .write(|tx| tx.delete::<IpRecord>("192.0.2.10".to_string()))
        .await
        .unwrap();
    assert_eq!(
        tb.delete(&su, "/admin/vlans/100").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(tb.get(&su, "/admin/vlans").await.1, json!([]));
    assert_eq!(
        tb.get(&su, "/admin/ip_ranges").await.1,
        json!([]),
        "its empty ranges went with it"
    );
}

#[tokio::test]
async fn images_are_registered_listed_and_removed() {
    let tb = TestBrain::start().await;
    let su = tb.su().await;
    let image = json!({"name": "bigv-test", "description": "A tiny test image", "size": 1024});
    let (status, created) = tb.post(&su, "/admin/images", image.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created, image);
    assert_eq!(tb.get(&su, "/admin/images").await.1, json!([image]));
    assert_eq!(tb.get(&su, "/admin/images/bigv-test").await.1, image);

    let (status, body) = tb.post(&su, "/admin/images", image.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        messages(&body, "name").contains("already been taken"),
        "{body}"
    );
    let (status, body) = tb
        .post(
            &su,
            "/admin/images",
            json!({"name": "Debian 12", "size": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(messages(&body, "name").contains("lower-case"), "{body}");
    assert!(
        messages(&body, "size").contains("greater than or equal to 1"),
        "{body}"
    );
    let (status, body) = tb
        .post(&su, "/admin/images", json!({"description": "x"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(messages(&body, "name").contains("can't be blank"), "{body}");
    assert!(messages(&body, "size").contains("can't be blank"), "{body}");
    assert_eq!(tb.brain.db.read().images.len(), 1);

    assert_eq!(
        tb.delete(&su, "/admin/images/bigv-test").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(tb.get(&su, "/admin/images").await.1, json!([]));
    assert_eq!(
        tb.delete(&su, "/admin/images/bigv-test").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn settings_change_field_by_field_and_bad_values_change_nothing() {
    let tb = TestBrain::start().await;
    let su = tb.su().await;
    let (status, before) = tb.get(&su, "/admin/settings").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(before["fence_timeout_secs"], 3);
    assert_eq!(before["admission"], "auto");

    let (status, body) = tb
        .put(
            &su,
            "/admin/settings",
            json!({
                "fence_timeout_secs": 0,
                "admission": "sometimes",
                "default_overcommit_ratio": 11,
                "cluster_domain": "Bad..Domain",
                "zones": [],
                "reserve_heads": 2,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        messages(&body, "fence_timeout_secs").contains("greater than or equal to 1"),
        "{body}"
    );
    assert!(messages(&body, "admission").contains("manual"), "{body}");
    assert!(
        messages(&body, "default_overcommit_ratio").contains("less than or equal to 10"),
        "{body}"
    );
    assert!(
        messages(&body, "cluster_domain").contains("DNS name"),
        "{body}"
    );
    assert!(messages(&body, "zones").contains("at least one"), "{body}");
    assert_eq!(
        tb.get(&su, "/admin/settings").await.1,
        before,
        "nothing changed"
    );

    let (status, after) = tb
        .put(
            &su,
            "/admin/settings",
            json!({"admission": "manual", "reserve_heads": 1, "cluster_domain": "uk0.bigv.io",
                   "zones": ["york", "manchester", "leeds"], "default_overcommit_ratio": 1.5}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["admission"], "manual");
    assert_eq!(after["fence_timeout_secs"], 3, "fields not given stay");
    let stored = tb.brain.db.read().settings.clone();
    assert_eq!(stored.admission, "manual");
    assert_eq!(stored.reserve_heads, 1);
    assert_eq!(stored.cluster_domain, "uk0.bigv.io");
    assert_eq!(stored.default_overcommit_ratio, 1.5);

    // A zone still in use cannot be dropped.
    seed_account(&tb).await;
    let (status, body) = tb
        .put(&su, "/admin/settings", json!({"zones": ["leeds"]}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        messages(&body, "zones").contains("\\\"york\\\" cannot be removed: still used by 1 server"),
        "{body}"
    );
    let (status, _) = tb
        .put(&su, "/admin/settings", json!({"zones": ["york", "leeds"]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tb.brain.db.read().settings.zones, ["york", "leeds"]);
}
