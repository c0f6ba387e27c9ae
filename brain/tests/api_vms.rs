//! Servers through the customer API as the BigV clients drive it:
//! vm_create exactly as the Go client sends it, validation, power,
//! signals, reimage, delete/restore/purge and capacity.

mod api_support;
mod common;

use api_support::*;
use bigv_brain::clock::Clock;
use bigv_brain::model::{OperationKind, VmId};
use bigv_spine::resource::SignalKind;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A brain with one head, one tail, address ranges, images, and account
/// `alice`; returns the su token.
async fn setup(tb: &TestBrain) -> (bigv_spine::sim::SimFleet, String) {
    let fleet = cluster(tb, 1, 1).await;
    networks_and_images(tb).await;
    let su = tb.su().await;
    account(tb, &su, "alice").await;
    (fleet, su)
}

#[tokio::test]
async fn vm_create_as_the_go_client_sends_it_is_visible_at_once() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    // The body captured from the client (bigv-api.md §5.3).
    let body = json!({
        "virtual_machine": {"name": "db1", "cores": 2, "memory": 2048, "autoreboot_on": true,
                            "zone_name": "york", "cdrom_url": "https://example.com/install.iso",
                            "hardware_profile": "virtio2013", "hardware_profile_locked": true},
        "discs": [{"label": "disc-1", "storage_grade": "sata", "size": 51200,
                   "backup_schedules": [{"start_at": "2026-11-23 00:00:00 UTC",
                                         "interval_seconds": 604800, "capacity": 1}]},
                  {"label": "disc-2", "storage_grade": "archive", "size": 102400}],
        "reimage": {"distribution": "stretch", "root_password": "hunter2",
                    "ssh_public_key": "", "firstboot_script": ""},
        "ips": {"ipv4": "10.0.0.5", "ipv6": "fd00::5"}
    });
    let (status, vm) = tb
        .post(&su, "/accounts/alice/groups/default/vm_create", body)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{vm}");
    assert_eq!(vm["name"], "db1");
    assert_eq!(vm["cores"], 2);
    assert_eq!(vm["memory"], 2048);
    assert_eq!(vm["power_on"], true, "autoreboot_on asks for a running VM");
    assert_eq!(vm["autoreboot_on"], true);
    assert_eq!(vm["deleted"], false);
    assert_eq!(vm["zone_name"], "york");
    assert_eq!(vm["cdrom_url"], "https://example.com/install.iso");
    assert_eq!(vm["hardware_profile"], "virtio2013");
    assert_eq!(vm["hardware_profile_locked"], true);
    assert_eq!(vm["hostname"], "db1.default.alice.bigv.test");
    assert_eq!(vm["last_imaged_with"], "stretch");
    assert_eq!(
        vm["group_id"].as_u64().unwrap(),
        group_id(&tb, "alice", "default")
    );
    let discs = vm["discs"].as_array().unwrap();
    let shape: Vec<(String, String, u64)> = discs
        .iter()
        .map(|d| {
            assert_eq!(d["virtual_machine_id"], vm["id"]);
            assert_eq!(
                d["storage_pool"],
                Value::Null,
                "the reconciler places discs"
            );
            (
                d["label"].as_str().unwrap().to_owned(),
                d["storage_grade"].as_str().unwrap().to_owned(),
                d["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("disc-1".into(), "sata".into(), 51200),
            ("disc-2".into(), "archive".into(), 102400)
        ]
    );
    let nics = vm["network_interfaces"].as_array().unwrap();
    assert_eq!(nics.len(), 1);
    assert_eq!(
        nics[0]["vlan_num"], 20,
        "the private VLAN of the asked-for ips"
    );
    assert_eq!(nics[0]["ips"], json!(["10.0.0.5", "fd00::5"]));
    assert!(nics[0]["mac"].as_str().unwrap().starts_with("fe:ff:"));
    assert_eq!(ips_of(&vm).len(), 2);

    // The client's very next request.
    let (status, again) = tb
        .get(
            &su,
            "/accounts/alice/groups/default/virtual_machines/db1?include_deleted=true&view=overview",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], vm["id"]);
    let (status, by_id) = tb
        .get(&su, &format!("/virtual_machines/{}", vm["id"]))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_id["name"], "db1");

    // The image is ordered onto the first disc, with an operation to follow.
    let model = tb.brain.db.read();
    let id = VmId(vm["id"].as_u64().unwrap());
    let first = model.discs_of(id).next().unwrap();
    let template = first.template.as_ref().unwrap();
    assert_eq!((template.seq, template.image.as_str()), (1, "stretch"));
    assert!(model.operations.values().any(|o| matches!(
        &o.kind,
        OperationKind::Reimage { vm_id, distribution } if *vm_id == id && distribution == "stretch"
    )));
}

#[tokio::test]
async fn vm_create_gives_public_addresses_and_a_stopped_vm_needs_no_head() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    // No autoreboot_on (the client's --stopped): off, and bigger than any
    // head is fine because it does not run.
    let body = json!({
        "virtual_machine": {"name": "big", "memory": HEAD_MEMORY * 2},
        "discs": [{"storage_grade": "ssd", "size": 10240}]
    });
    let vm = create_vm(&tb, &su, "alice", body).await;
    assert_eq!(vm["power_on"], false);
    assert_eq!(vm["autoreboot_on"], false);
    assert_eq!(
        vm["discs"][0]["label"], "disc-1",
        "unlabelled discs are numbered"
    );
    let ips = ips_of(&vm);
    assert_eq!(
        ips,
        [
            "192.0.2.2".parse::<std::net::IpAddr>().unwrap(),
            "2001:db8::2".parse().unwrap()
        ]
    );
    assert_eq!(vm["network_interfaces"][0]["vlan_num"], 1);
    // Starting it is refused: no head has the memory.
    let (status, body) = tb
        .put(
            &su,
            &vm_path("alice", "big"),
            json!({"autoreboot_on": true, "power_on": true}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        messages(&body, "memory")[0].contains("no head has"),
        "{body}"
    );
    let (_, vm) = tb.get(&su, &vm_path("alice", "big")).await;
    assert_eq!(vm["power_on"], false, "a refused start changed something");
}

#[tokio::test]
async fn every_bad_field_is_named_and_nothing_is_stored() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    let path = "/accounts/alice/groups/default/vm_create";
    let refused = |body: Value| {
        let tb = &tb;
        let su = su.clone();
        async move {
            let (status, errors) = tb.post(&su, path, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{errors}");
            errors
        }
    };

    let e = refused(json!({"virtual_machine": {"name": "Web_1"}})).await;
    let name = messages(&e, "name");
    assert!(name.iter().any(|m| m.contains("lower-case")), "{e}");
    assert!(name.iter().all(|m| m != "is invalid"));
    let e = refused(json!({"virtual_machine": {}})).await;
    assert_eq!(messages(&e, "name"), ["can't be blank"]);
    let e = refused(json!({"virtual_machine": {"name": "w", "memory": 100, "cores": 99}})).await;
    assert_eq!(
        messages(&e, "memory"),
        ["must be greater than or equal to 256"]
    );
    assert_eq!(messages(&e, "cores"), ["must be less than or equal to 32"]);
    let e = refused(json!({"virtual_machine": {"name": "w", "zone_name": "mars"}})).await;
    assert_eq!(
        messages(&e, "zone_name"),
        ["is not one of the zones: york, manchester"]
    );
    // Disc errors come in the per-disc array, index = disc.
    let e = refused(json!({
        "virtual_machine": {"name": "w"},
        "discs": [{"storage_grade": "sata", "size": 25600},
                  {"storage_grade": "sata", "size": 10}]
    }))
    .await;
    assert_eq!(
        e,
        json!({"discs": [{}, {"size": ["must be greater than or equal to 1024"]}]})
    );
    let e = refused(json!({
        "virtual_machine": {"name": "w"},
        "discs": [{"storage_grade": "floppy", "size": 25600}]
    }))
    .await;
    assert_eq!(
        e["discs"][0]["storage_grade"][0],
        "is not one of the storage grades: archive, sata, ssd"
    );
    let nine: Vec<Value> = (0..9).map(|_| json!({"size": 1024})).collect();
    let e = refused(json!({"virtual_machine": {"name": "w"}, "discs": nine})).await;
    assert!(messages(&e, "discs")[0].contains("at most 8"), "{e}");
    let e = refused(json!({
        "virtual_machine": {"name": "w"},
        "discs": [{"size": 25600}],
        "reimage": {"distribution": "plan9"}
    }))
    .await;
    assert_eq!(
        messages(&e, "distribution"),
        ["is not one of the available images: stretch, symbiosis"]
    );
    let e = refused(json!({
        "virtual_machine": {"name": "w", "hardware_profile": "pdp11", "keymap": "klingon",
                            "cdrom_url": "ftp://example.com/x.iso"},
    }))
    .await;
    for field in ["hardware_profile", "keymap", "cdrom_url"] {
        assert_eq!(messages(&e, field).len(), 1, "{field}: {e}");
    }
    let e = refused(json!({"virtual_machine": {"name": "w"}, "ips": {"ipv4": "192.0.2.9"}})).await;
    assert!(messages(&e, "ipv4")[0].contains("private"), "{e}");
    assert!(
        tb.brain.db.read().vms.is_empty(),
        "a refused create stored something"
    );
    assert!(tb.brain.db.read().discs.is_empty());
    assert!(tb.brain.db.read().ips.is_empty());

    // A live VM's name is taken in its group.
    create_vm(&tb, &su, "alice", small_vm("web1")).await;
    let e = refused(small_vm("web1")).await;
    assert_eq!(messages(&e, "name"), ["has already been taken"]);
}

#[tokio::test]
async fn power_and_attribute_changes_follow_put_semantics() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    create_vm(&tb, &su, "alice", small_vm("web1")).await;
    let path = vm_path("alice", "web1");
    let put = |body: Value| {
        let (tb, su, path) = (&tb, su.clone(), path.clone());
        async move {
            let (status, vm) = tb.put(&su, &path, body).await;
            assert_eq!(status, StatusCode::OK, "{vm}");
            (
                vm["power_on"].as_bool().unwrap(),
                vm["autoreboot_on"].as_bool().unwrap(),
                vm,
            )
        }
    };
    // stop, start, reboot (§5.4)
    let (on, auto, _) = put(json!({"autoreboot_on": false, "power_on": false})).await;
    assert_eq!((on, auto), (false, false));
    let (on, auto, _) = put(json!({"autoreboot_on": true, "power_on": true})).await;
    assert_eq!((on, auto), (true, true));
    let (on, auto, _) = put(json!({"autoreboot_on": true, "power_on": false})).await;
    assert_eq!(
        (on, auto),
        (false, true),
        "reboot: the reconciler starts it again"
    );
    let (_, auto, vm) = put(json!({"autoreboot_on": false})).await;
    assert!(!auto);
    assert_eq!(vm["memory"], 1024, "only what the body names changes");

    let (_, _, vm) = put(json!({"memory": 2048, "cores": 4, "keymap": "de"})).await;
    assert_eq!(
        (vm["memory"].as_u64(), vm["cores"].as_u64()),
        (Some(2048), Some(4))
    );
    assert_eq!(vm["keymap"], "de");
    let (_, _, vm) = put(json!({"cdrom_url": "http://example.com/rescue.iso"})).await;
    assert_eq!(vm["cdrom_url"], "http://example.com/rescue.iso");
    let (_, _, vm) = put(json!({"cdrom_url": null})).await;
    assert_eq!(vm["cdrom_url"], Value::Null, "null ejects");
    put(json!({"cdrom_url": "http://example.com/rescue.iso"})).await;
    let (_, _, vm) = put(json!({"cdrom_url": ""})).await;
    assert_eq!(vm["cdrom_url"], Value::Null, "\"\" ejects");
    let (_, _, vm) = put(json!({"hardware_profile": "compatibility2013",
                               "hardware_profile_locked": true}))
    .await;
    assert_eq!(vm["hardware_profile"], "compatibility2013");
    assert_eq!(vm["hardware_profile_locked"], true);

    for (body, field) in [
        (json!({"memory": 3}), "memory"),
        (json!({"cores": 0}), "cores"),
        (json!({"hardware_profile": "pdp11"}), "hardware_profile"),
        (json!({"zone_name": "manchester"}), "zone_name"),
        (json!({"power_on": "perhaps"}), "power_on"),
    ] {
        let (status, e) = tb.put(&su, &path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
        assert_eq!(messages(&e, field).len(), 1, "{e}");
    }
    let (_, vm) = tb.get(&su, &path).await;
    assert_eq!(vm["memory"], 2048, "a refused change changed something");

    // More memory than a head has, while it wants to run: refused.
    put(json!({"autoreboot_on": true, "power_on": true})).await;
    let (status, e) = tb.put(&su, &path, json!({"memory": HEAD_MEMORY * 2})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert!(messages(&e, "memory")[0].contains("no head has"), "{e}");
}

#[tokio::test]
async fn rename_and_move_need_a_free_name_in_the_destination() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    let (status, staging) = tb
        .post(&su, "/accounts/alice/groups", json!({"name": "staging"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{staging}");
    create_vm(&tb, &su, "alice", small_vm("web1")).await;
    create_vm(&tb, &su, "alice", small_vm("web2")).await;
    let (status, e) = tb
        .put(&su, &vm_path("alice", "web1"), json!({"name": "web2"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(messages(&e, "name"), ["has already been taken"]);
    let (status, vm) = tb
        .put(
            &su,
            &vm_path("alice", "web1"),
            json!({"name": "web9", "group_id": staging["id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(vm["hostname"], "web9.staging.alice.bigv.test");
    let (status, _) = tb
        .get(&su, "/accounts/alice/groups/staging/virtual_machines/web9")
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = tb.get(&su, &vm_path("alice", "web1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn signals_go_only_to_running_servers() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    let mut body = small_vm("web1");
    body["virtual_machine"]["autoreboot_on"] = json!(false);
    create_vm(&tb, &su, "alice", body).await;
    let signal = format!("{}/signal", vm_path("alice", "web1"));
    let (status, e) = tb.post(&su, &signal, json!({"signal": "powerdown"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(e.as_str().unwrap().contains("powered off"), "{e}");

    tb.put(
        &su,
        &vm_path("alice", "web1"),
        json!({"autoreboot_on": true, "power_on": true}),
    )
    .await;
    // Only a VM its head reports running takes signals (the refusal of
    // one not started yet is tested in reconcile_power.rs).
    eventually("the server to run", 10, || {
        let model = tb.brain.db.read();
        let vm = model.vms.values().next().unwrap();
        let running = bigv_brain::api::power::guest(&tb.brain.spine, vm)
            == bigv_brain::api::power::Guest::Running;
        async move { running.then_some(()) }
    })
    .await;
    let read = || {
        let model = tb.brain.db.read();
        let vm = model.vms.values().next().unwrap();
        (vm.generation, vm.signal.clone())
    };
    for (body, kind) in [
        (
            json!({"signal": "sendkey", "data": "ctrl-alt-delete"}),
            SignalKind::Sendkey,
        ),
        (json!({"signal": "reset"}), SignalKind::Reset),
    ] {
        let (generation, before) = read();
        let (status, echo) = tb.post(&su, &signal, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{echo}");
        assert_eq!(echo, body, "the response echoes the signal");
        let (now, after) = read();
        // The record carries the next seq for the reconciler to forward,
        // unless the VM was (re)started since, which clears it.
        if now == generation {
            let s = after.expect("the signal is recorded");
            assert_eq!(s.seq, before.map_or(0, |b| b.seq) + 1);
            assert_eq!(s.kind, kind);
            let keys = (kind == SignalKind::Sendkey).then_some("ctrl-alt-delete");
            assert_eq!(s.keys.as_deref(), keys);
        }
    }
    let (status, echo) = tb.post(&su, &signal, json!({"signal": "powerdown"})).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echo, json!({"signal": "powerdown"}));
    let (status, e) = tb
        .post(
            &su,
            &signal,
            json!({"signal": "sendkey", "data": "ctrl-alt-bogus"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(messages(&e, "data")[0].contains("bogus"), "{e}");
    let (status, e) = tb.post(&su, &signal, json!({"signal": "explode"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(messages(&e, "signal")[0].contains("powerdown, reset, sendkey"));
}

#[tokio::test]
async fn reimage_needs_the_server_off_and_a_known_image() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    create_vm(&tb, &su, "alice", small_vm("web1")).await;
    let reimage = format!("{}/reimage", vm_path("alice", "web1"));
    let body = json!({"distribution": "symbiosis", "root_password": "s3cret",
                      "ssh_public_key": "", "firstboot_script": ""});
    let (status, e) = tb.post(&su, &reimage, body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(e.as_str().unwrap().contains("powered off"), "{e}");

    tb.put(
        &su,
        &vm_path("alice", "web1"),
        json!({"autoreboot_on": false, "power_on": false}),
    )
    .await;
    let (status, e) = tb
        .post(&su, &reimage, json!({"distribution": "plan9"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        e,
        json!({"distribution": ["is not one of the available images: stretch, symbiosis"]})
    );
    let (status, echo) = tb.post(&su, &reimage, body).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(
        echo,
        json!({"distribution": "symbiosis", "root_password": "s3cret"})
    );
    let (_, vm) = tb.get(&su, &vm_path("alice", "web1")).await;
    assert_eq!(vm["power_on"], true, "powered on after a reimage");
    assert_eq!(vm["autoreboot_on"], false, "but autoreboot left off (§5.6)");
    assert_eq!(vm["last_imaged_with"], "symbiosis");
    let model = tb.brain.db.read();
    let disc = model.discs.values().next().unwrap();
    assert_eq!(disc.template.as_ref().unwrap().seq, 1);
    assert_eq!(disc.template.as_ref().unwrap().image, "symbiosis");
}

#[tokio::test]
async fn delete_hides_restore_returns_purge_frees_name_and_addresses() {
    let start = 1_795_000_000;
    let tb = TestBrain::start_with(test_settings(), Clock::manual(start)).await;
    let (_fleet, su) = setup(&tb).await;
    let vm = create_vm(&tb, &su, "alice", small_vm("web1")).await;
    let first_ips = ips_of(&vm);
    let path = vm_path("alice", "web1");
    tb.clock.advance(60);

    let (status, _) = tb.delete(&su, &path).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = tb.get(&su, &path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "deleted VMs hide");
    let (status, gone) = tb.get(&su, &format!("{path}?include_deleted=true")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (gone["deleted"].as_bool(), gone["power_on"].as_bool()),
        (Some(true), Some(false))
    );
    {
        let model = tb.brain.db.read();
        let v = model.vms.values().next().unwrap();
        assert_eq!(v.deleted_at, Some(start + 60));
    }
    let (_, list) = tb
        .get(&su, "/accounts/alice/groups/default/virtual_machines")
        .await;
    assert_eq!(list, json!([]));
    let (_, list) = tb
        .get(
            &su,
            "/accounts/alice/groups/default/virtual_machines?include_deleted=True",
        )
        .await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (status, _) = tb
        .delete(&su, &format!("{path}?include_deleted=true"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "already deleted");

    let (status, back) = tb
        .put(
            &su,
            &format!("{path}?include_deleted=true"),
            json!({"deleted": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{back}");
    assert_eq!(back["deleted"], false);
    let (status, _) = tb.get(&su, &path).await;
    assert_eq!(status, StatusCode::OK);

    let (status, _) = tb.delete(&su, &format!("{path}?purge=true")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = tb.get(&su, &format!("{path}?include_deleted=true")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    {
        let model = tb.brain.db.read();
        assert!(model.vms.is_empty() && model.discs.is_empty() && model.nics.is_empty());
        assert!(model.ips.is_empty(), "purged addresses are free");
    }
    let again = create_vm(&tb, &su, "alice", small_vm("web1")).await;
    assert_eq!(
        ips_of(&again),
        first_ips,
        "the freed addresses are handed out again"
    );
}

#[tokio::test]
async fn nothing_is_created_when_no_head_or_pool_has_room() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    // Four 4 GiB VMs fill the 16 GiB head, even before any is placed.
    for i in 0..4 {
        let mut body = small_vm(&format!("web{i}"));
        body["virtual_machine"]["memory"] = json!(HEAD_MEMORY / 4);
        create_vm(&tb, &su, "alice", body).await;
    }
    let mut body = small_vm("web4");
    body["virtual_machine"]["memory"] = json!(HEAD_MEMORY / 4);
    let (status, e) = tb
        .post(&su, "/accounts/alice/groups/default/vm_create", body)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert!(
        messages(&e, "memory")[0].contains("most free is 0 MiB"),
        "{e}"
    );
    // A disc bigger than any pool of its grade.
    let body = json!({
        "virtual_machine": {"name": "huge"},
        "discs": [{"storage_grade": "ssd", "size": POOL_SIZE + 1024}]
    });
    let (status, e) = tb
        .post(&su, "/accounts/alice/groups/default/vm_create", body)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert!(
        e["discs"][0]["storage_grade"][0]
            .as_str()
            .unwrap()
            .contains("no ssd pool has room"),
        "{e}"
    );
    assert_eq!(tb.brain.db.read().vms.len(), 4);
}

#[tokio::test]
async fn bare_create_makes_a_server_without_discs() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    let (status, vm) = tb
        .post(
            &su,
            "/accounts/alice/groups/default/virtual_machines",
            json!({"name": "bare1", "memory": 512}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{vm}");
    assert_eq!(vm["discs"], json!([]));
    assert_eq!(vm["network_interfaces"].as_array().unwrap().len(), 1);
    assert_eq!(vm["power_on"], false);
    let (status, e) = tb
        .post(
            &su,
            "/accounts/alice/groups/default/virtual_machines",
            json!({"name": "bare1"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(messages(&e, "name"), ["has already been taken"]);
}

#[tokio::test]
async fn a_management_range_gives_each_server_a_console_address() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    tb.brain
        .db
        .write(|tx| {
            tx.put(bigv_brain::model::Vlan {
                id: bigv_brain::model::VlanId(3),
                num: 30,
                usage_type: "management".into(),
            })?;
            tx.put(bigv_brain::model::IpRange {
                id: bigv_brain::model::IpRangeId(9),
                spec: "172.16.0.0/24".into(),
                vlan_num: 30,
                zones: vec![],
            })
        })
        .await
        .unwrap();
    let vm = create_vm(&tb, &su, "alice", small_vm("web1")).await;
    assert_eq!(vm["management_address"], "172.16.0.2");
    assert_eq!(
        vm["network_interfaces"][0]["vlan_num"], 1,
        "management ranges are not for guests"
    );
    let (status, _) = tb
        .delete(&su, &format!("{}?purge=true", vm_path("alice", "web1")))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        tb.brain.db.read().ips.is_empty(),
        "the console address is freed too"
    );
}

/// The spec of `vm.<id>` on whichever simulated head runs it.
fn running_spec(
    fleet: &bigv_spine::sim::SimFleet,
    id: u64,
) -> Option<bigv_spine::resource::VmSpec> {
    fleet
        .nodes
        .iter()
        .find_map(|n| n.vms().get(&id.to_string()).cloned())
}

#[tokio::test]
async fn imager_options_reach_the_head_hashed_and_never_leave_through_the_api() {
    use sha_crypt::PasswordVerifier as _;
    let tb = TestBrain::start().await;
    let (fleet, su) = setup(&tb).await;
    let keys =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 alice@laptop\nssh-rsa AAAAB3NzaC1yc2E alice@desk\n";
    let script = "#!/bin/sh\necho first boot > /root/hello\n";
    let mut body = small_vm("web1");
    body["reimage"] = json!({"distribution": "stretch", "root_password": "Plain-Secret-1",
                             "ssh_public_key": keys, "firstboot_script": script});
    let vm = create_vm(&tb, &su, "alice", body).await;
    let id = vm["id"].as_u64().unwrap();
    let crypt = sha_crypt::ShaCrypt::SHA512;

    let spec = eventually("the VM to run on a head", 30, || async {
        running_spec(&fleet, id)
    })
    .await;
    let first = spec
        .imager_options
        .expect("the head gets the imager options");
    let hash = first.root_password_hash.clone().unwrap();
    assert!(hash.starts_with("$6$"), "{hash}");
    assert!(
        crypt
            .verify_password(b"Plain-Secret-1", hash.as_str())
            .is_ok()
    );
    assert!(
        crypt
            .verify_password(b"Plain-Secret-2", hash.as_str())
            .is_err()
    );
    assert_eq!(first.ssh_public_key, keys);
    assert_eq!(first.authorized_keys().count(), 2);
    assert_eq!(first.firstboot_script, script);
    assert!(!first.instance_id.is_empty());

    // Neither the hash nor anything else of it comes back through the API.
    let (_, shown) = tb.get(&su, &vm_path("alice", "web1")).await;
    let shown = shown.to_string();
    for secret in ["Plain-Secret-1", hash.as_str(), "imager", "alice@laptop"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    // The store holds the hash only, never the plaintext.
    let mut dump = Vec::new();
    tb.brain.db.store().dump(&mut dump).unwrap();
    let dump = String::from_utf8(dump).unwrap();
    assert!(dump.contains(&hash));
    assert!(!dump.contains("Plain-Secret-1"));

    // A reimage is a new instance with the new password; empty fields
    // mean no keys and no script.
    tb.put(
        &su,
        &vm_path("alice", "web1"),
        json!({"autoreboot_on": false, "power_on": false}),
    )
    .await;
    eventually("the VM to stop", 30, || async {
        running_spec(&fleet, id).is_none().then_some(())
    })
    .await;
    let reimage = format!("{}/reimage", vm_path("alice", "web1"));
    let (status, echo) = tb
        .post(
            &su,
            &reimage,
            json!({"distribution": "symbiosis", "root_password": "Second-Pass",
                   "ssh_public_key": "", "firstboot_script": ""}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    let again = eventually("the reimaged VM to run", 30, || async {
        running_spec(&fleet, id)
    })
    .await
    .imager_options
    .unwrap();
    assert_ne!(again.instance_id, first.instance_id);
    let hash2 = again.root_password_hash.clone().unwrap();
    assert!(
        crypt
            .verify_password(b"Second-Pass", hash2.as_str())
            .is_ok()
    );
    assert!(
        crypt
            .verify_password(b"Plain-Secret-1", hash2.as_str())
            .is_err()
    );
    assert_eq!(again.authorized_keys().count(), 0);
    assert!(again.firstboot_script.is_empty());
    let mut dump = Vec::new();
    tb.brain.db.store().dump(&mut dump).unwrap();
    assert!(!String::from_utf8(dump).unwrap().contains("Second-Pass"));
}

#[tokio::test]
async fn oversize_imager_fields_are_refused_on_their_field() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    let mut body = small_vm("web1");
    body["reimage"] = json!({"distribution": "stretch", "root_password": "x",
                             "firstboot_script": "#".repeat(64 * 1024 + 1),
                             "ssh_public_key": ["not", "text"]});
    let (status, e) = tb
        .post(&su, "/accounts/alice/groups/default/vm_create", body)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert!(
        messages(&e, "firstboot_script")[0].contains("too long"),
        "{e}"
    );
    assert_eq!(messages(&e, "ssh_public_key"), ["must be a string"]);
    assert!(tb.brain.db.read().vms.is_empty(), "nothing stored");
}
