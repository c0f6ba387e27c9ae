//! `bigv admin` against a real brain with simulated heads and tails.

mod common;

use std::process::Stdio;
use std::time::Duration;

use bigv_brain::model::{
    Admission, Disc, DiscId, Level, Operation, OperationState, Target, Vm, VmId,
};
use common::{Harness, golden, mask_json, normalise};

fn operator(heads: usize, tails: usize, admission: Admission) -> Harness {
    let mut h = Harness::start();
    h.nodes(heads, tails, admission);
    h.login_su();
    h
}

#[test]
fn operators_see_heads_tails_and_pools() {
    let h = operator(2, 1, Admission::Accepted);
    let run = h.bigv(&["admin", "show", "heads"]).ok();
    golden("admin-heads.txt", &normalise(&run.stdout, &h.endpoint));
    let run = h.bigv(&["admin", "show", "heads", "--table"]).ok();
    golden("admin-heads.table", &normalise(&run.stdout, &h.endpoint));
    let run = h.bigv(&["admin", "show", "storage", "pools"]).ok();
    golden("admin-pools.txt", &normalise(&run.stdout, &h.endpoint));
    let run = h
        .bigv(&["admin", "show", "storage", "pools", "--json"])
        .ok();
    // The JSON is the brain's own objects.
    assert_eq!(run.json(), h.get(&h.su(), "/admin/storage_pools"));
    golden(
        "admin-pools.json",
        &serde_json::to_string_pretty(&mask_json(run.json(), &["id"])).unwrap(),
    );
    let run = h.bigv(&["admin", "show", "tails"]).ok();
    assert_eq!(
        run.stdout,
        "▸ tail1 (online) - pools: tail1-sata1, tail1-ssd1\n"
    );
    let run = h.bigv(&["admin", "show", "head", "head2"]).ok();
    assert!(run.stdout.starts_with("▸ head2 (online)"), "{run:?}");
    let run = h.bigv(&["admin", "show", "head", "head9"]).fails(156);
    assert_eq!(run.stderr.trim(), "bigv: head head9 was not found");
}

#[test]
fn a_pending_head_is_shown_as_such_and_accepted() {
    let h = operator(1, 0, Admission::Pending);
    let run = h.bigv(&["admin", "show", "heads"]).ok();
    assert!(run.stdout.contains("PENDING"), "{run:?}");
    h.bigv(&["admin", "accept", "head", "head1"]).ok();
    assert_eq!(
        h.get(&h.su(), "/admin/heads/head1")["admission"],
        "accepted"
    );
}

#[test]
fn heads_tails_and_pools_are_updated() {
    let h = operator(1, 1, Admission::Accepted);
    h.bigv(&[
        "admin",
        "update",
        "storage",
        "pool",
        "tail1-sata1",
        "--overcommit-ratio",
        "1.5",
        "--usage-strategy",
        "empty",
    ])
    .ok();
    let pool = h.get(&h.su(), "/admin/storage_pools/tail1-sata1");
    assert_eq!(pool["overcommit_ratio"], 1.5);
    assert_eq!(pool["usage_strategy"], "empty");
    h.bigv(&[
        "admin",
        "update",
        "head",
        "head1",
        "--label",
        "head-a",
        "--zone",
        "manchester",
    ])
    .ok();
    let head = h.get(&h.su(), "/admin/heads/head-a");
    assert_eq!(head["zone"], "manchester");
    h.bigv(&[
        "admin",
        "update",
        "tail",
        "tail1",
        "--usage-strategy",
        "empty",
    ])
    .ok();
    assert_eq!(
        h.get(&h.su(), "/admin/tails/tail1")["usage_strategy"],
        "empty"
    );

    let run = h
        .bigv(&[
            "admin",
            "update",
            "head",
            "head-a",
            "--usage-strategy",
            "sideways",
        ])
        .fails(157);
    assert!(run.stderr.contains("usage_strategy: must be"), "{run:?}");
    h.bigv(&["admin", "update", "head", "head-a"]).fails(7);
}

#[test]
fn vlans_ranges_images_and_users_are_added() {
    let h = operator(0, 0, Admission::Accepted);
    h.bigv(&["admin", "add", "vlan", "10"]).ok();
    h.bigv(&[
        "admin",
        "add",
        "ip",
        "range",
        "192.0.2.0/24",
        "10",
        "--zone",
        "york",
    ])
    .ok();
    let run = h.bigv(&["admin", "show", "vlans"]).ok();
    assert_eq!(
        run.stdout,
        "▸ VLAN 10 (public)\n    • 192.0.2.0/24 - 253 free\n"
    );
    let run = h.bigv(&["admin", "show", "ip", "ranges", "--table"]).ok();
    golden("admin-ranges.table", &run.stdout);
    let run = h
        .bigv(&["admin", "add", "ip", "range", "192.0.2.128/25", "10"])
        .fails(157);
    assert!(
        run.stderr.contains("ip_range: overlaps 192.0.2.0/24"),
        "{run:?}"
    );

    h.bigv(&[
        "admin",
        "add",
        "image",
        "bookworm",
        "2G",
        "--description",
        "Debian 12",
    ])
    .ok();
    let image = h.get(&h.su(), "/admin/images/bookworm");
    assert_eq!(image["size"], 2048);
    // Customers see it in the definitions (no login needed).
    let run = h
        .bigv_env(&["show", "images"], &[("BIGV_CONFIG_DIR", "/nonexistent")])
        .ok();
    assert_eq!(run.stdout, "bookworm  Debian 12\n");

    // An OS template with its bytes: uploaded, stored where the boot HTTP
    // server serves templates to tails from.
    let raw = h.config_dir().join("tiny.raw");
    let bytes: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&raw, &bytes).unwrap();
    let run = h
        .bigv(&[
            "admin",
            "add",
            "image",
            "tiny",
            "1M",
            "--file",
            raw.to_str().unwrap(),
        ])
        .ok();
    assert!(
        run.stderr.contains("Uploaded 5000 bytes of tiny"),
        "{run:?}"
    );
    assert_eq!(
        std::fs::read(h.data.path().join("templates/tiny.raw")).unwrap(),
        bytes
    );
    // Larger than the size given: the brain refuses, naming the field.
    std::fs::write(&raw, vec![1u8; (1 << 20) + 1]).unwrap();
    let run = h.bigv(&[
        "admin",
        "add",
        "image",
        "tiny2",
        "1M",
        "--file",
        raw.to_str().unwrap(),
    ]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("content"), "{run:?}");

    h.bigv(&[
        "admin",
        "add",
        "user",
        "eve",
        "cluster_admin",
        "--password",
        "eves-password",
    ])
    .ok();
    let run = h
        .bigv_env(
            &["--profile", "eve", "login"],
            &[("BIGV_USER", "eve"), ("BIGV_PASS", "eves-password")],
        )
        .ok();
    assert!(run.stderr.contains("as eve"), "{run:?}");
    h.bigv(&["--profile", "eve", "admin", "show", "vlans"]).ok();
}

#[test]
fn customers_cannot_see_the_operator_tree() {
    let h = Harness::start();
    let (account, _) = h.account("alice");
    h.user(
        "alice",
        "alices-password",
        Level::AccountAdmin,
        Target::Account(account),
    );
    let alice = h.token_for("alice");
    let run = h
        .bigv_env(&["admin", "show", "heads"], &[("BIGV_TOKEN", &alice)])
        .fails(156);
    assert!(run.stderr.contains("cluster_admin"), "{run:?}");
}

fn only_operation(h: &Harness) -> Operation {
    h.eventually("the operation to be recorded", 10, || {
        h.brain().db.read().operations.values().next().cloned()
    })
}

#[test]
fn emptying_a_pool_is_followed_until_it_ends() {
    let h = operator(0, 2, Admission::Accepted);
    // A stopped server's disc in tail1-sata1: emptying it means a copy to
    // tail2, which the simulated tails make slow.
    let (_, group_id) = h.account("alice");
    h.write(move |tx| {
        let vm_id = VmId(tx.new_id::<Vm>()?);
        tx.put(Vm {
            id: vm_id,
            group_id,
            name: "web1".into(),
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
        })?;
        let id = DiscId(tx.new_id::<Disc>()?);
        tx.put(Disc {
            id,
            vm_id,
            label: "disc-1".into(),
            size: 1024,
            storage_grade: "sata".into(),
            storage_pool: Some("tail1-sata1".into()),
            address: None,
            generation: 0,
            iops_limit: None,
            template: None,
        })
    });
    // --no-wait returns at once, naming the operation.
    let run = h
        .bigv(&[
            "--no-wait",
            "admin",
            "empty",
            "storage",
            "pool",
            "tail1-ssd1",
        ])
        .ok();
    let op = only_operation(&h);
    assert!(
        run.stderr.contains(&format!("Started operation {}", op.id)),
        "{run:?}"
    );
    assert_eq!(
        h.get(&h.su(), "/admin/storage_pools/tail1-ssd1")["usage_strategy"],
        "empty"
    );
    let run = h.bigv(&["admin", "show", "migrations", "--all"]).ok();
    assert!(run.stdout.contains("empty tail1-ssd1"), "{run:?}");

    // Waiting: the command follows the operation until it ends. The
    // test ends it (as failed) unless the brain has finished it first;
    // the command must report whichever happened.
    let mut child = h
        .command(&["admin", "empty", "storage", "pool", "tail1-sata1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let op = h.eventually("the second operation", 10, || {
        h.brain()
            .db
            .read()
            .operations
            .values()
            .find(|o| {
                serde_json::to_string(&o.kind)
                    .unwrap()
                    .contains("tail1-sata1")
            })
            .cloned()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "returned before the end"
    );
    let id = op.id;
    h.write(move |tx| {
        let mut op = tx.model().operations.get(&id.0).cloned().unwrap();
        if op.state == OperationState::Running {
            op.state = OperationState::Failed;
            op.phase = "failed".into();
            op.error = Some("tail on fire".into());
            tx.put(op)?;
        }
        Ok(())
    });
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = h.brain().db.read().operations.get(&id.0).cloned().unwrap();
    match last.state {
        OperationState::Done => assert_eq!(out.status.code(), Some(0), "{stderr}"),
        _ => {
            assert_eq!(out.status.code(), Some(49), "{stderr}");
            assert!(stderr.contains("failed: tail on fire"), "{stderr}");
        }
    }
}

#[test]
fn machines_on_the_boot_lan_are_registered_and_listed() {
    let h = operator(0, 0, Admission::Accepted);
    let run = h.bigv(&["admin", "show", "machines"]).ok();
    assert_eq!(run.stdout, "No machines on the boot LAN.\n");
    let run = h
        .bigv(&[
            "admin",
            "add",
            "machine",
            "52:54:00:AA:00:01",
            "tail",
            "--boot-address",
            "10.0.0.31",
        ])
        .ok();
    assert!(
        run.stderr.contains("Registered 52:54:00:AA:00:01"),
        "{run:?}"
    );
    let run = h.bigv(&["admin", "show", "machines"]).ok();
    assert_eq!(
        run.stdout,
        "▸ 52:54:00:aa:00:01 tail (registered), 10.0.0.31\n"
    );
    // A tail's storage, handed over at its next boot.
    h.bigv(&[
        "admin",
        "add",
        "machine",
        "52:54:00:aa:00:01",
        "tail",
        "--pool",
        "sata1:sata:/srv/sata1",
        "--disc",
        "vdb:/srv/sata1:format",
    ])
    .ok();
    let run = h.bigv(&["admin", "show", "machines"]).ok();
    assert_eq!(
        run.stdout,
        "▸ 52:54:00:aa:00:01 tail (registered), 10.0.0.31, pools sata1:sata:/srv/sata1, discs vdb:/srv/sata1:format\n"
    );
    let run = h
        .bigv(&[
            "admin",
            "add",
            "machine",
            "52:54:00:aa:00:01",
            "tail",
            "--disc",
            "vdb:/srv/sata1:wipe",
        ])
        .fails(157);
    assert!(run.stderr.contains("DEV:/DIR"), "{run:?}");
    let run = h
        .bigv(&["admin", "add", "machine", "52:54:00:aa:00:02", "brain"])
        .fails(157);
    assert!(run.stderr.contains("role"), "{run:?}");
    let run = h.bigv(&["admin", "show", "node-images"]).ok();
    assert!(run.stdout.starts_with("No node images"), "{run:?}");
    h.bigv(&["admin", "delete", "machine", "52:54:00:aa:00:01"])
        .ok();
    let run = h.bigv(&["admin", "show", "machines"]).ok();
    assert_eq!(run.stdout, "No machines on the boot LAN.\n");
    let run = h
        .bigv(&["admin", "delete", "machine", "52:54:00:aa:00:01"])
        .fails(156);
    assert!(run.stderr.contains("machine 52:54:00:aa:00:01"), "{run:?}");

    let run = h.bigv(&["admin", "show", "settings"]).ok();
    assert!(run.stdout.contains("enrollment: open\n"), "{run:?}");
    assert!(run.stdout.contains("node_image_version: -\n"), "{run:?}");
    h.bigv(&[
        "admin",
        "update",
        "settings",
        "--enrollment",
        "closed",
        "--enrollment-role",
        "tail",
    ])
    .ok();
    let s = h.get(&h.su(), "/admin/settings");
    assert_eq!(
        (s["enrollment"].as_str(), s["enrollment_role"].as_str()),
        (Some("closed"), Some("tail"))
    );
    let run = h
        .bigv(&["admin", "update", "settings", "--node-image-version", "v9"])
        .fails(157);
    assert!(run.stderr.contains("node_image_version"), "{run:?}");
}

#[test]
fn a_nodes_logs_are_asked_for_by_role_and_name() {
    let h = operator(1, 1, Admission::Accepted);
    let run = h.bigv(&["admin", "show", "logs", "tail", "tail1"]).ok();
    // Simulated nodes send no log lines (real agents do: spine `log` frames).
    assert_eq!(
        run.stdout,
        "No log lines from tail tail1 since the brain started.\n"
    );
    let run = h
        .bigv(&["admin", "show", "logs", "tail", "tail1", "--json"])
        .ok();
    assert_eq!(run.stdout.trim(), "[]");
    let run = h
        .bigv(&["admin", "show", "logs", "brain", "tail1"])
        .fails(7);
    assert!(run.stderr.contains("not head or tail"), "{run:?}");
    let run = h
        .bigv(&["admin", "show", "logs", "head", "tail1"])
        .fails(156);
    assert!(run.stderr.contains("head tail1"), "{run:?}");
    let run = h
        .bigv(&["admin", "show", "logs", "tail", "tail1", "--lines", "0"])
        .fails(157);
    assert!(run.stderr.contains("lines"), "{run:?}");
}
