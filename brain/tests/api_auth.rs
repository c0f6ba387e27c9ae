//! Logging in, users, privileges, API keys and definitions, through the
//! real HTTP API of a real brain.

mod common;

use bigv_brain::clock::Clock;
use bigv_brain::model::{Account, AccountId, Group, GroupId, Image, Pool, Settings, Vm, VmId};
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// 2027-01-15 08:00:00 UTC.
const T0: u64 = 1_800_000_000;
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

async fn login(tb: &TestBrain, body: Value) -> (StatusCode, String) {
    let resp = tb
        .http
        .post(tb.url("/session"))
        .header("Accept", "text/plain")
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

async fn login_form(tb: &TestBrain, form: &[(&str, &str)]) -> (StatusCode, String) {
    let resp = tb
        .http
        .post(tb.url("/session"))
        .form(form)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

async fn new_user(tb: &TestBrain, su: &str, username: &str, password: &str) -> u64 {
    let (status, body) = tb
        .post(
            su,
            "/users",
            json!({"username": username, "password": password, "email": format!("{username}@example.com")}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_u64().unwrap()
}

async fn grant(tb: &TestBrain, token: &str, user: &str, body: Value) -> (StatusCode, Value) {
    tb.post(token, &format!("/users/{user}/privileges"), body)
        .await
}

struct Tree {
    acme: u64,
    acme_default: u64,
    web1: u64,
    other_default: u64,
    db1: u64,
}

fn vm(id: u64, group: u64, name: &str) -> Vm {
    Vm {
        id: VmId(id),
        group_id: GroupId(group),
        name: name.into(),
        cores: 1,
        memory: 1024,
        power_on: false,
        autoreboot_on: false,
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
        created_at: 0,
    }
}

/// Accounts `acme` (group `default`, VM `web1`) and `other` (group
/// `default`, VM `db1`), written straight into the store.
async fn tree(tb: &TestBrain) -> Tree {
    tb.brain
        .db
        .write(|tx| {
            let account = |tx: &mut bigv_brain::model::Tx<'_>, name: &str, vm_name: &str| {
                let a = tx.new_id::<Account>()?;
                tx.put(Account {
                    id: AccountId(a),
                    name: name.into(),
                    suspended: false,
                })?;
                let g = tx.new_id::<Group>()?;
                tx.put(Group {
                    id: GroupId(g),
                    account_id: AccountId(a),
                    name: "default".into(),
                })?;
                let v = tx.new_id::<Vm>()?;
                tx.put(vm(v, g, vm_name))?;
                Ok::<_, bigv_brain::model::DbError>((a, g, v))
            };
            let (acme, acme_default, web1) = account(tx, "acme", "web1")?;
            let (_, other_default, db1) = account(tx, "other", "db1")?;
            Ok::<_, bigv_brain::model::DbError>(Tree {
                acme,
                acme_default,
                web1,
                other_default,
                db1,
            })
        })
        .await
        .unwrap()
}

fn ids_of(list: &Value) -> Vec<u64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn login_by_json_and_form_and_the_token_lasts_exactly_its_validity() {
    let tb = TestBrain::start_with(test_settings(), Clock::manual(T0)).await;

    let (status, json_token) = login(
        &tb,
        json!({"username": SU_USER, "password": SU_PASSWORD, "validity": "120"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json_token}");
    assert_eq!(json_token.len(), 64, "the body is the bare token");
    let (status, form_token) = login_form(
        &tb,
        &[
            ("username", SU_USER),
            ("password", SU_PASSWORD),
            ("validity", "5"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{form_token}");
    let (status, default_token) =
        login(&tb, json!({"username": SU_USER, "password": SU_PASSWORD})).await;
    assert_eq!(status, StatusCode::OK);

    // The token is a bearer token for the brain, and the session reads back.
    let (status, me) = tb.get(&json_token, "/users/admin").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["username"], SU_USER);
    let (status, session) = tb
        .call(
            reqwest::Method::GET,
            None,
            &format!("/session/{json_token}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        session,
        json!({"username": SU_USER, "factors": ["password"], "group_memberships": []})
    );

    // validity 5 was raised to the 60 s minimum; use does not extend it.
    tb.clock.advance(59);
    assert_eq!(tb.get(&form_token, "/users").await.0, StatusCode::OK);
    tb.clock.advance(2);
    assert_eq!(
        tb.get(&form_token, "/users").await.0,
        StatusCode::UNAUTHORIZED
    );
    let session_path = format!("/session/{form_token}");
    let (status, _) = tb
        .call(reqwest::Method::GET, None, &session_path, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(tb.get(&json_token, "/users").await.0, StatusCode::OK);
    tb.clock.advance(60);
    assert_eq!(
        tb.get(&json_token, "/users").await.0,
        StatusCode::UNAUTHORIZED
    );
    // No validity means 1800 s.
    assert_eq!(tb.get(&default_token, "/users").await.0, StatusCode::OK);
    tb.clock.advance(1800 - 121);
    assert_eq!(
        tb.get(&default_token, "/users").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = tb
        .call(reqwest::Method::GET, None, "/session/not-a-token", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_logins_answer_with_the_strings_clients_match() {
    let tb = TestBrain::start().await;
    let (status, body) = login(&tb, json!({"username": SU_USER, "password": "wrong"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("Bad login credentials"), "{body}");
    let (status, body) = login(&tb, json!({"username": "nobody", "password": "wrong"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("Bad login credentials"), "{body}");

    let (status, body) = login(&tb, json!({"username": SU_USER})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("Badly-formed parameters"), "{body}");
    let (status, body) = login_form(&tb, &[("username", SU_USER), ("password", "")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("Badly-formed parameters"), "{body}");
    let (status, body) = login(
        &tb,
        json!({"username": SU_USER, "password": SU_PASSWORD, "validity": "soon"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("Badly-formed parameters"), "{body}");
    let resp = tb
        .http
        .post(tb.url("/session"))
        .header("Content-Type", "application/json")
        .body("{\"username\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("Badly-formed parameters")
    );
    assert!(
        tb.brain.db.read().sessions.is_empty(),
        "no session from a bad login"
    );
}

#[tokio::test]
async fn a_user_whose_privilege_needs_a_yubikey_cannot_log_in_by_password() {
    let tb = TestBrain::start().await;
    let su = tb.su().await;
    let t = tree(&tb).await;
    new_user(&tb, &su, "yuki", "yuki-password").await;
    assert_eq!(
        login(
            &tb,
            json!({"username": "yuki", "password": "yuki-password"})
        )
        .await
        .0,
        StatusCode::OK
    );
    let (status, body) = grant(
        &tb,
        &su,
        "yuki",
        json!({"account_id": t.acme, "level": "account_admin", "yubikey_required": true}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = login(
        &tb,
        json!({"username": "yuki", "password": "yuki-password", "yubikey": "cccccbhuinjdkn"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("Authentication failed"), "{body}");
    assert!(body.contains("Yubikey"), "{body}");
    // A wrong password still reads as bad credentials, revealing nothing.
    let (_, body) = login(&tb, json!({"username": "yuki", "password": "nope"})).await;
    assert!(body.contains("Bad login credentials"), "{body}");
}

#[tokio::test]
async fn only_cluster_admins_impersonate_and_only_those_below_them() {
    let tb = TestBrain::start().await;
    let su = tb.su().await;
    new_user(&tb, &su, "bob", "bob-password").await;
    new_user(&tb, &su, "ops", "ops-password").await;
    let (status, _) = grant(&tb, &su, "ops", json!({"level": "cluster_admin"})).await;
    assert_eq!(status, StatusCode::CREATED);

    let (_, su_token) = login(&tb, json!({"username": SU_USER, "password": SU_PASSWORD})).await;
    let resp = tb
        .http
        .post(tb.url(&format!("/session/{su_token}")))
        .json(&json!({"username": "bob"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let as_bob = resp.text().await.unwrap();
    let (status, session) = tb
        .call(
            reqwest::Method::GET,
            None,
            &format!("/session/{as_bob}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(session["username"], "bob");
    assert!(
        session["factors"]
            .as_array()
            .unwrap()
            .contains(&json!("impersonated")),
        "{session}"
    );
    // The new token acts as bob: he sees only himself.
    let (status, users) = tb.get(&as_bob, "/users").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(users.as_array().unwrap().len(), 1);
    assert_eq!(users[0]["username"], "bob");

    let impersonate = |token: String, username: &'static str| {
        let req = tb
            .http
            .post(tb.url(&format!("/session/{token}")))
            .json(&json!({"username": username}));
        async move { req.send().await.unwrap().status() }
    };
    let (_, bob_token) = login(&tb, json!({"username": "bob", "password": "bob-password"})).await;
    assert_eq!(impersonate(bob_token, SU_USER).await, StatusCode::FORBIDDEN);
    let (_, ops_token) = login(&tb, json!({"username": "ops", "password": "ops-password"})).await;
    assert_eq!(impersonate(ops_token.clone(), "bob").await, StatusCode::OK);
    assert_eq!(
        impersonate(ops_token.clone(), SU_USER).await,
        StatusCode::FORBIDDEN,
        "a cluster_admin cannot become a cluster_su"
    );
    // The same "strictly below" rule decides whose password ops may reset.
    let (status, _) = tb
        .put(
            &ops_token,
            "/users/bob",
            json!({"password": "reset-by-ops"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        login(&tb, json!({"username": "bob", "password": "reset-by-ops"}))
            .await
            .0,
        StatusCode::OK
    );
    let (status, _) = tb
        .put(
            &ops_token,
            "/users/admin",
            json!({"password": "taken-over"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        tb.delete(&ops_token, "/users/admin").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        impersonate(ops_token, "nobody").await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        impersonate("unknown".into(), "bob").await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn definitions_need_no_login_and_follow_images_pools_and_zones() {
    let tb = TestBrain::start_with(
        Settings {
            zones: vec!["york".into()],
            ..test_settings()
        },
        Clock::system(),
    )
    .await;
    let fetch = || async {
        let (status, defs) = tb
            .call(reqwest::Method::GET, None, "/definitions", None)
            .await;
        assert_eq!(status, StatusCode::OK);
        defs.as_array()
            .unwrap()
            .iter()
            .map(|d| (d["id"].as_str().unwrap().to_owned(), d["data"].clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let defs = fetch().await;
    assert_eq!(defs["distributions"], json!([]));
    assert_eq!(defs["storage_grades"], json!(["sata", "ssd"]));
    assert!(defs["storage_grade_descriptions"]["ssd"].is_string());
    assert_eq!(defs["zone_names"], json!(["york"]));
    assert_eq!(
        defs["hardware_profiles"],
        json!(["virtio2013", "compatibility2013"])
    );
    for keymap in ["en-gb", "en-us", "de", "fr"] {
        assert!(defs["keymaps"].as_array().unwrap().contains(&json!(keymap)));
    }
    for key in [
        "ctrl", "alt", "delete", "f1", "f12", "esc", "tab", "ret", "spc", "a", "0",
    ] {
        assert!(
            defs["sendkeys"].as_array().unwrap().contains(&json!(key)),
            "{key}"
        );
    }

    tb.brain
        .db
        .write(|tx| {
            for (name, description) in [("trixie", "Debian 13"), ("bookworm", "Debian 12")] {
                tx.put(Image {
                    name: name.into(),
                    description: description.into(),
                    size: 2048,
                })?;
            }
            tx.put(Pool {
                label: "tail1-archive1".into(),
                node_id: "tail-node".into(),
                name: "archive1".into(),
                grade: "archive".into(),
                overcommit_ratio: 1.0,
                usage_strategy: None,
                migration_concurrency: 1,
                iops_limit: None,
            })
        })
        .await
        .unwrap();
    let defs = fetch().await;
    assert_eq!(defs["distributions"], json!(["bookworm", "trixie"]));
    assert_eq!(defs["distribution_descriptions"]["trixie"], "Debian 13");
    assert_eq!(defs["storage_grades"], json!(["archive", "sata", "ssd"]));
    assert!(defs["storage_grade_descriptions"]["archive"].is_string());
}

#[tokio::test]
async fn users_are_created_validated_updated_and_deleted() {
    let tb = TestBrain::start().await;
    let su = tb.su().await;

    let (status, body) = tb.post(&su, "/users", json!({"username": "bob-1"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["username"],
        json!(["may contain only letters and digits"])
    );
    let (status, body) = tb.post(&su, "/users", json!({"username": "1bob"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["username"], json!(["must start with a letter"]));
    let (status, body) = tb
        .post(
            &su,
            "/users",
            json!({"username": "bob", "password": "short", "email": "nope"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["password"][0].as_str().unwrap().contains("too short"));
    assert!(body["email"][0].as_str().unwrap().contains("email address"));
    assert_eq!(
        tb.brain.db.read().users.len(),
        1,
        "bad input stored nothing"
    );

    let bob_id = new_user(&tb, &su, "bob", "first-password").await;
    let (status, body) = tb
        .post(
            &su,
            "/users",
            json!({"username": "Bob", "password": "another-one"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["username"], json!(["has already been taken"]));

    let bob = tb.token_for("bob").await;
    let (status, _) = tb
        .post(
            &bob,
            "/users",
            json!({"username": "carol", "password": "carol-password"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Users see themselves; the admin sees everyone; hashes never show.
    let (_, mine) = tb.get(&bob, "/users").await;
    assert_eq!(ids_of(&mine), vec![bob_id]);
    let (_, all) = tb.get(&su, "/users").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    for user in all.as_array().unwrap() {
        let text = user.to_string();
        assert!(
            !text.contains("argon2") && !text.contains("password"),
            "{text}"
        );
    }
    let (status, me) = tb.get(&bob, "/users/").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an empty user segment is the caller"
    );
    assert_eq!(me["username"], "bob");
    assert_eq!(tb.get(&bob, "/users/admin").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        tb.get(&su, &format!("/users/{bob_id}")).await.1["username"],
        "bob"
    );

    // SSH keys: the whole text is replaced; garbage is refused.
    let keys = format!("{KEY} bob@laptop\n{KEY} bob@desktop");
    let (status, body) = tb
        .put(&bob, "/users/bob", json!({"authorized_keys": keys}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["authorized_keys"], keys);
    let (status, body) = tb
        .put(&bob, "/users/bob", json!({"authorized_keys": "my key\n"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["authorized_keys"][0]
            .as_str()
            .unwrap()
            .contains("line 1")
    );
    // The Go client PUTs the whole user back; unchanged names are fine.
    let (_, mut whole) = tb.get(&bob, "/users/bob").await;
    whole["authorized_keys"] = json!(format!("{KEY} bob@laptop"));
    assert_eq!(tb.put(&bob, "/users/bob", whole).await.0, StatusCode::OK);
    let (status, body) = tb
        .put(&bob, "/users/bob", json!({"username": "robert"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["username"], json!(["can't be changed"]));
    let (status, body) = tb
        .put(&bob, "/users/bob", json!({"email": "new@example.com"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["email"], json!(["can't be changed"]));
    assert_eq!(
        tb.brain
            .db
            .read()
            .user_named("bob")
            .unwrap()
            .authorized_keys,
        format!("{KEY} bob@laptop")
    );

    // A new password works at once and ends bob's other sessions.
    let (_, other_session) = login(
        &tb,
        json!({"username": "bob", "password": "first-password"}),
    )
    .await;
    let (status, _) = tb
        .put(&bob, "/users/bob", json!({"password": "second-password"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tb.get(&bob, "/users/bob").await.0, StatusCode::OK);
    assert_eq!(
        tb.get(&other_session, "/users/bob").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = login(
        &tb,
        json!({"username": "bob", "password": "first-password"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("Bad login credentials"));
    let (status, new_token) = login(
        &tb,
        json!({"username": "bob", "password": "second-password"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, key) = tb
        .post(&new_token, "/api_keys", json!({"label": "ci"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let bob_key = format!("apikey.{}", key["api_key"].as_str().unwrap());

    // Deleting bob takes his sessions, keys and privileges with him.
    assert_eq!(
        tb.delete(&bob, "/users/admin").await.0,
        StatusCode::NOT_FOUND,
        "bob cannot see other users, let alone delete them"
    );
    assert_eq!(
        tb.delete(&bob, "/users/bob").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        tb.delete(&su, "/users/admin").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(tb.delete(&su, "/users/bob").await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        tb.get(&new_token, "/users").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(tb.get(&bob_key, "/users").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(tb.get(&su, "/users/bob").await.0, StatusCode::NOT_FOUND);
    let model = tb.brain.db.read();
    assert!(model.api_keys.is_empty());
    assert!(model.sessions.values().all(|s| s.username != "bob"));
}

#[tokio::test]
async fn grants_need_a_level_strictly_above_on_the_target() {
    let tb = TestBrain::start().await;
    let su = tb.su().await;
    let t = tree(&tb).await;
    for name in ["alice", "victor", "carol"] {
        new_user(&tb, &su, name, "some-password").await;
    }
    let (status, _) = grant(
        &tb,
        &su,
        "alice",
        json!({"account_id": t.acme, "level": "account_admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = grant(
        &tb,
        &su,
        "victor",
        json!({"virtual_machine_id": t.web1, "level": "vm_admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let alice = tb.token_for("alice").await;
    let victor = tb.token_for("victor").await;

    // A vm_admin may hand out vm_console on their VM, not vm_admin.
    let (status, _) = grant(&tb, &victor, "carol", json!({"virtual_machine_id": t.web1, "level": "vm_admin", "password_required": true, "yubikey_required": false})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, console) = grant(
        &tb,
        &victor,
        "carol",
        json!({"virtual_machine_id": t.web1, "level": "vm_console"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{console}");
    assert_eq!(console["virtual_machine_name"], "web1");
    assert_eq!(console["creating_username"], "victor");
    let (status, _) = grant(
        &tb,
        &victor,
        "carol",
        json!({"virtual_machine_id": t.db1, "level": "vm_console"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "db1 is invisible to victor");

    // An account_admin grants group_admin in their account, not elsewhere.
    let (status, group_admin) = grant(
        &tb,
        &alice,
        "carol",
        json!({"group_id": t.acme_default, "level": "group_admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{group_admin}");
    let object = group_admin.as_object().unwrap();
    assert_eq!(group_admin["group_id"], t.acme_default);
    assert_eq!(group_admin["group_name"], "default");
    assert_eq!(group_admin["account_name"], "acme");
    assert!(!object.contains_key("account_id") && !object.contains_key("virtual_machine_id"));
    assert_eq!(group_admin["username"], "carol");
    assert_eq!(group_admin["password_required"], true);
    assert_eq!(group_admin["yubikey_required"], false);
    let (status, _) = grant(
        &tb,
        &alice,
        "carol",
        json!({"group_id": t.other_default, "level": "group_admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = grant(
        &tb,
        &alice,
        "carol",
        json!({"account_id": t.acme, "level": "account_admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = grant(&tb, &alice, "carol", json!({"level": "cluster_admin"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Targets by name.
    let (status, by_name) = grant(&tb, &alice, "carol", json!({"virtual_machine_name": "web1", "group_name": "default", "account_name": "acme", "level": "vm_admin"})).await;
    assert_eq!(status, StatusCode::CREATED, "{by_name}");
    assert_eq!(by_name["virtual_machine_id"], t.web1);

    // Bad requests name the field and store nothing.
    let before = tb.brain.db.read().privileges.len();
    let (status, body) = grant(
        &tb,
        &alice,
        "carol",
        json!({"group_id": t.acme_default, "level": "vm_admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["virtual_machine_id"][0]
            .as_str()
            .unwrap()
            .contains("virtual machine")
    );
    let (status, body) = grant(
        &tb,
        &alice,
        "carol",
        json!({"account_id": t.acme, "level": "emperor"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["level"][0]
            .as_str()
            .unwrap()
            .contains("not a privilege level")
    );
    let (status, body) = grant(
        &tb,
        &su,
        "carol",
        json!({"account_id": t.acme, "level": "cluster_admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["level"][0].as_str().unwrap().contains("whole cluster"));
    let (status, body) = grant(
        &tb,
        &alice,
        "carol",
        json!({"account_id": t.acme, "level": "group_admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = grant(
        &tb,
        &alice,
        "carol",
        json!({"group_id": t.acme_default, "level": "group_admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "duplicate: {body}");
    let (status, body) = grant(&tb, &alice, "carol", json!({"virtual_machine_id": t.web1, "level": "vm_console", "ip_restrictions": "192.0.2.7, 10.0.0.0/8 fish"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["ip_restrictions"][0]
            .as_str()
            .unwrap()
            .contains("\"fish\"")
    );
    assert_eq!(
        grant(
            &tb,
            &alice,
            "nobody",
            json!({"group_id": t.acme_default, "level": "vm_admin"})
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        grant(
            &tb,
            &alice,
            "nobody",
            json!({"group_id": t.acme_default, "level": "group_admin"})
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(tb.brain.db.read().privileges.len(), before);

    // After a grant only the Yubikey and IP fields change.
    let path = format!("/privileges/{}", by_name["id"]);
    let (status, body) = tb.put(&alice, &path, json!({"level": "vm_console"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["level"][0]
            .as_str()
            .unwrap()
            .contains("can't be changed")
    );
    let mut whole = by_name.clone();
    whole["yubikey_required"] = json!(true);
    whole["ip_restrictions"] = json!(["192.0.2.7", "2001:db8::/32"]);
    let (status, body) = tb.put(&alice, &path, whole).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["yubikey_required"], true);
    assert_eq!(
        body["ip_restrictions"],
        json!(["192.0.2.7/32", "2001:db8::/32"])
    );
    assert_eq!(
        tb.put(&victor, &path, json!({"yubikey_required": false}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let carol = tb.token_for("carol").await;
    let carol_group = format!("/privileges/{}", group_admin["id"]);
    assert_eq!(
        tb.put(&carol, &carol_group, json!({"yubikey_required": true}))
            .await
            .0,
        StatusCode::FORBIDDEN,
        "nobody loosens their own privilege"
    );

    // Revoking follows the same rule; giving up your own is always allowed.
    let alice_priv = tb.get(&alice, "/privileges").await.1[0]["id"]
        .as_u64()
        .unwrap();
    assert_eq!(
        tb.delete(&victor, &format!("/privileges/{alice_priv}"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        tb.delete(&victor, &format!("/privileges/{}", group_admin["id"]))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        tb.delete(&victor, &format!("/privileges/{}", console["id"]))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        tb.delete(&carol, &format!("/privileges/{}", by_name["id"]))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        tb.delete(&alice, &format!("/privileges/{}", group_admin["id"]))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(tb.get(&carol, "/privileges").await.1, json!([]));

    // The cluster can never lose its last cluster_su.
    let su_priv = tb.get(&su, "/privileges").await.1[0]["id"]
        .as_u64()
        .unwrap();
    let (status, body) = tb.delete(&su, &format!("/privileges/{su_priv}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.as_str().unwrap().contains("last cluster_su"));
}

#[tokio::test]
async fn privileges_are_listed_per_user_and_per_target() {
    let tb = TestBrain::start().await;
    let su = tb.su().await;
    let t = tree(&tb).await;
    for name in ["alice", "gary", "victor", "otto"] {
        new_user(&tb, &su, name, "some-password").await;
    }
    let mut ids = std::collections::BTreeMap::new();
    for (user, body) in [
        (
            "alice",
            json!({"account_id": t.acme, "level": "account_admin"}),
        ),
        (
            "gary",
            json!({"group_id": t.acme_default, "level": "group_admin"}),
        ),
        (
            "victor",
            json!({"virtual_machine_id": t.web1, "level": "vm_admin"}),
        ),
        (
            "otto",
            json!({"virtual_machine_id": t.db1, "level": "vm_admin"}),
        ),
    ] {
        let (status, p) = grant(&tb, &su, user, body).await;
        assert_eq!(status, StatusCode::CREATED);
        ids.insert(user, p["id"].as_u64().unwrap());
    }
    let alice = tb.token_for("alice").await;
    let victor = tb.token_for("victor").await;
    let otto = tb.token_for("otto").await;

    assert_eq!(
        ids_of(&tb.get(&alice, "/accounts/acme/privileges").await.1),
        vec![ids["alice"]]
    );
    assert_eq!(
        ids_of(
            &tb.get(
                &alice,
                &format!("/accounts/{}/groups/default/privileges", t.acme)
            )
            .await
            .1
        ),
        vec![ids["gary"]]
    );
    assert_eq!(
        ids_of(
            &tb.get(
                &alice,
                "/accounts/acme/groups/default/virtual_machines/web1/privileges"
            )
            .await
            .1
        ),
        vec![ids["victor"]]
    );
    // The Go client leaves the account out for `show privileges --server`.
    assert_eq!(
        ids_of(
            &tb.get(
                &victor,
                "/accounts//groups/default/virtual_machines/web1/privileges"
            )
            .await
            .1
        ),
        vec![ids["victor"]]
    );
    // Victor sees web1 but not the privileges above his level.
    assert_eq!(
        tb.get(&victor, "/accounts/acme/privileges").await.1,
        json!([])
    );
    assert_eq!(
        tb.get(&otto, "/accounts/acme/privileges").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        tb.get(
            &otto,
            "/accounts/acme/groups/default/virtual_machines/web1/privileges"
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );

    assert_eq!(
        ids_of(&tb.get(&victor, "/privileges").await.1),
        vec![ids["victor"]]
    );
    assert_eq!(
        ids_of(&tb.get(&alice, "/users/victor/privileges").await.1),
        vec![ids["victor"]]
    );
    assert_eq!(
        tb.get(&alice, "/users/otto/privileges").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        ids_of(&tb.get(&alice, "/privileges?user_name=gary").await.1),
        vec![ids["gary"]]
    );
    let (_, users) = tb.get(&alice, "/users").await;
    let mut names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["alice", "gary", "victor"],
        "alice sees her account's users"
    );
    let (status, otto_priv) = tb.get(&su, &format!("/privileges/{}", ids["otto"])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(otto_priv["virtual_machine_name"], "db1");
    assert_eq!(otto_priv["account_name"], "other");
    assert_eq!(
        tb.get(&alice, &format!("/privileges/{}", ids["otto"]))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn api_keys_authenticate_until_deleted_or_expired() {
    let tb = TestBrain::start_with(test_settings(), Clock::manual(T0)).await;
    let su = tb.su().await;
    let t = tree(&tb).await;
    let dave_id = new_user(&tb, &su, "dave", "dave-password").await;
    new_user(&tb, &su, "erin", "erin-password").await;
    let (status, _) = grant(
        &tb,
        &su,
        "dave",
        json!({"account_id": t.acme, "level": "account_admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let dave = tb.token_for("dave").await;
    let erin = tb.token_for("erin").await;

    let (status, body) = tb
        .post(
            &dave,
            "/api_keys",
            json!({"user_id": dave_id, "label": "ci", "expires_at": "next tuesday"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["expires_at"][0]
            .as_str()
            .unwrap()
            .contains("not a date")
    );
    let (status, body) = tb
        .post(
            &dave,
            "/api_keys",
            json!({"label": "ci", "expires_at": "2020-01-01"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["expires_at"], json!(["must be in the future"]));
    assert!(tb.brain.db.read().api_keys.is_empty());

    let (status, created) = tb
        .post(
            &dave,
            "/api_keys",
            json!({"user_id": dave_id, "label": "ci", "expires_at": "2099-01-01"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["username"], "dave");
    assert_eq!(created["expires_at"], "2099-01-01T00:00:00+0000");
    let secret = created["api_key"].as_str().unwrap();
    let bearer = format!("apikey.{secret}");
    assert!(
        !tb.brain
            .db
            .read()
            .api_keys
            .values()
            .any(|k| k.secret_sha256.contains(secret)),
        "only a hash is stored"
    );
    let (status, me) = tb.get(&bearer, "/users/dave").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["username"], "dave");
    let (status, listed) = tb.get(&dave, "/api_keys?view=overview").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["label"], "ci");
    assert_eq!(listed[0]["privileges"], json!([]));
    assert!(
        listed[0].get("api_key").is_none(),
        "the secret is shown once"
    );

    // Others cannot see or touch dave's key; the cluster admin can.
    let key_path = format!("/api_keys/{}", created["id"]);
    assert_eq!(tb.delete(&erin, &key_path).await.0, StatusCode::NOT_FOUND);
    assert_eq!(tb.get(&erin, "/api_keys").await.1, json!([]));
    assert_eq!(
        tb.post(&erin, "/api_keys", json!({"user_id": dave_id}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        ids_of(&tb.get(&su, &format!("/api_keys?user_id={dave_id}")).await.1),
        vec![created["id"].as_u64().unwrap()]
    );

    // A key restricted to one VM acts only there and cannot mint keys.
    let (_, restricted) = tb
        .post(&dave, "/api_keys", json!({"label": "web1 only"}))
        .await;
    let restricted_bearer = format!("apikey.{}", restricted["api_key"].as_str().unwrap());
    let (status, p) = grant(
        &tb,
        &dave,
        "dave",
        json!({"virtual_machine_id": t.web1, "level": "vm_admin", "api_key_id": restricted["id"]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    assert_eq!(p["api_key_id"], restricted["id"]);
    let (status, body) = grant(
        &tb,
        &dave,
        "dave",
        json!({"virtual_machine_id": t.web1, "level": "vm_console", "api_key_id": 9999}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["api_key_id"][0]
            .as_str()
            .unwrap()
            .contains("not an API key of dave")
    );
    let group_admin = json!({"group_id": t.acme_default, "level": "group_admin"});
    assert_eq!(
        grant(&tb, &restricted_bearer, "erin", group_admin.clone())
            .await
            .0,
        StatusCode::FORBIDDEN,
        "the key speaks only for web1"
    );
    assert_eq!(
        grant(&tb, &dave, "erin", group_admin).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        tb.post(&restricted_bearer, "/api_keys", json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    let (_, overview) = tb.get(&dave, "/api_keys?view=overview").await;
    assert_eq!(overview[1]["privileges"][0]["virtual_machine_id"], t.web1);

    // Deleting a key stops it at once, and takes its privileges with it.
    assert_eq!(tb.delete(&dave, &key_path).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        tb.get(&bearer, "/users/dave").await.0,
        StatusCode::UNAUTHORIZED
    );
    let restricted_path = format!("/api_keys/{}", restricted["id"]);
    assert_eq!(
        tb.delete(&dave, &restricted_path).await.0,
        StatusCode::NO_CONTENT
    );
    assert!(
        tb.brain
            .db
            .read()
            .privileges
            .values()
            .all(|p| p.api_key_id.is_none())
    );

    // An expired key is refused.
    let (status, short) = tb
        .post(
            &dave,
            "/api_keys",
            json!({"label": "short", "expires_at": "2027-01-15 09:00:00"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{short}");
    let short_bearer = format!("apikey.{}", short["api_key"].as_str().unwrap());
    assert_eq!(tb.get(&short_bearer, "/users/dave").await.0, StatusCode::OK);
    tb.clock.advance(3600);
    assert_eq!(
        tb.get(&short_bearer, "/users/dave").await.0,
        StatusCode::UNAUTHORIZED
    );
    let dave = tb.token_for("dave").await;
    assert_eq!(
        tb.get(&dave, "/api_keys").await.1[0]["expires_at"],
        "2027-01-15T09:00:00+0000"
    );
}
