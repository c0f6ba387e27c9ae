//! `bigv admin upgrade start|show|watch|cancel` against a real brain with
//! simulated heads and tails that obey reboot orders.

mod common;

use std::path::Path;
use std::time::Duration;

use bigv_brain::model::{
    Admission, Operation, OperationId, OperationKind, OperationState, Role, UpgradeNode,
    UpgradeStep,
};
use common::{Harness, golden, normalise};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Stores node image `version` in the brain's data directory and lets the
/// brain find it.
fn store_image(h: &Harness, version: &str) {
    let src = tempfile::tempdir().unwrap();
    let dir = src.path();
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
    bigv_brain::boot::images::add(h.data.path(), Path::new(dir)).unwrap();
    h.get(&h.su(), "/admin/node_images");
}

fn operator(heads: usize, tails: usize) -> Harness {
    let mut h = Harness::start();
    h.nodes(heads, tails, Admission::Accepted);
    h.login_su();
    h
}

fn sims(h: &Harness) -> &bigv_spine::sim::SimFleet {
    h.fleet.as_ref().unwrap()
}

#[test]
fn an_upgrade_is_started_followed_and_its_end_decides_the_exit_code() {
    let h = operator(2, 1);
    store_image(&h, "v2");
    for node in &sims(&h).nodes {
        node.boot_version("v2");
    }
    // Followed to the end; quiet on stdout when it is not a terminal.
    let run = h
        .bigv(&["admin", "upgrade", "start", "v2", "--reboot-timeout", "30"])
        .ok();
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr
            .contains("Done: upgrade the nodes to v2 (3 of 3 nodes upgraded, the rest skipped)."),
        "{run:?}"
    );
    for node in &sims(&h).nodes {
        assert_eq!(node.reboots().len(), 1, "{}", node.node_id());
    }
    let run = h.bigv(&["admin", "upgrade", "show", "--json"]).ok();
    let shown = run.json();
    assert_eq!(shown, h.get(&h.su(), "/admin/upgrades/latest"));
    assert_eq!(shown["state"], "done");
    assert_eq!(shown["nodes_done"], 3);

    // A node that comes back on the wrong version: exit 49, the reason.
    store_image(&h, "v3");
    for node in &sims(&h).nodes {
        node.boot_version("v3");
    }
    sims(&h).node("sim-head-0001").unwrap().boot_version("v2");
    let run = h
        .bigv(&["admin", "upgrade", "start", "v3", "--no-wait"])
        .ok();
    assert!(run.stderr.starts_with("Started upgrade"), "{run:?}");
    let run = h.bigv(&["admin", "upgrade", "watch"]).fails(49);
    let last = run.stderr.lines().last().unwrap().to_owned();
    assert!(
        last.starts_with("bigv: upgrade 2 to v3 failed: head2 came back on image version v2, expected v3; the upgrade stopped with 1 of 3 nodes done"),
        "{run:?}"
    );
    let run = h.bigv(&["admin", "upgrade", "show"]).ok();
    assert!(run.stdout.contains("  error: head2 came back"), "{run:?}");
    assert!(
        run.stdout
            .contains("  • head2 (head) failed: see the error above\n"),
        "{run:?}"
    );
    assert!(run.stdout.contains("  • tail1 (tail) pending\n"), "{run:?}");

    // Nothing runs: cancel is a 400; unknown versions and ids are named.
    let run = h.bigv(&["admin", "upgrade", "cancel"]).fails(157);
    assert!(
        run.stderr.contains("is not running (it is failed)"),
        "{run:?}"
    );
    let run = h.bigv(&["admin", "upgrade", "start", "v9"]).fails(157);
    assert!(
        run.stderr
            .contains("version: is not a stored node image (stored: v2, v3"),
        "{run:?}"
    );
    let run = h.bigv(&["admin", "upgrade", "show", "999"]).fails(156);
    assert_eq!(run.stderr.trim(), "bigv: upgrade 999 was not found");
}

#[test]
fn a_running_upgrade_is_cancelled() {
    let h = operator(2, 0);
    store_image(&h, "v2");
    let first = sims(&h).node("sim-head-0000").unwrap();
    first.boot_version("v2");
    first.reboot_delay(Duration::from_secs(60));
    h.bigv(&["admin", "upgrade", "start", "v2", "--no-wait"])
        .ok();
    h.eventually("head1 to be rebooting", 20, || {
        let up = h.get(&h.su(), "/admin/upgrades/latest");
        (up["current_step"] == "booting").then_some(())
    });
    let run = h.bigv(&["admin", "upgrade", "cancel"]).ok();
    assert!(
        run.stderr.starts_with("Cancelled upgrade 1 to v2."),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("head1: the upgrade was cancelled while it rebooted"),
        "{run:?}"
    );
    let run = h.bigv(&["admin", "upgrade", "watch"]).fails(49);
    assert!(
        run.stderr.contains("upgrade 1 to v2 was cancelled"),
        "{run:?}"
    );
    assert!(sims(&h).node("sim-head-0001").unwrap().reboots().is_empty());
}

/// A finished upgrade written into the store with fixed times, so its
/// layouts can be compared with golden files.
#[test]
fn an_upgrade_is_shown_for_people_and_scripts() {
    let h = Harness::start();
    h.login_su();
    let t0 = 1_796_000_000;
    let node = |label: &str, role, step, note: Option<&str>, times: Option<[u64; 4]>| UpgradeNode {
        node_id: format!("node-{label}"),
        label: label.into(),
        role,
        step,
        note: note.map(str::to_owned),
        usage_strategy: None,
        to_move: 2,
        started_at: times.map(|t| t0 + t[0]),
        reboot_at: times.map(|t| t0 + t[1]),
        down_at: times.map(|t| t0 + t[2]),
        finished_at: times.map(|t| t0 + t[3]),
    };
    let error = "head2 came back on image version v1, expected v2; the upgrade stopped with 2 of 4 nodes done, head2 stays out of service (set its usage strategy back to default to re-admit it) and the nodes after it were not touched";
    let op = Operation {
        id: OperationId(7),
        kind: OperationKind::Upgrade {
            version: "v2".into(),
            from_version: Some("v1".into()),
            reboot_timeout_secs: 900,
            nodes: vec![
                node(
                    "head1",
                    Role::Head,
                    UpgradeStep::Done,
                    None,
                    Some([0, 12, 13, 95]),
                ),
                node(
                    "head2",
                    Role::Head,
                    UpgradeStep::Failed,
                    Some(error),
                    Some([95, 101, 102, 180]),
                ),
                node(
                    "head3",
                    Role::Head,
                    UpgradeStep::Skipped,
                    Some("already on v2"),
                    None,
                ),
                node("tail1", Role::Tail, UpgradeStep::Pending, None, None),
            ],
        },
        state: OperationState::Failed,
        phase: "failed".into(),
        done: 2,
        total: 4,
        error: Some(error.into()),
        created_at: t0,
        updated_at: t0 + 180,
    };
    h.write(move |tx| tx.put(op));
    let run = h.bigv(&["admin", "upgrade", "show"]).ok();
    golden("upgrade-show.txt", &normalise(&run.stdout, &h.endpoint));
    let run = h.bigv(&["admin", "upgrade", "show", "7", "--table"]).ok();
    golden("upgrade-show.table", &normalise(&run.stdout, &h.endpoint));
    let run = h.bigv(&["admin", "upgrade", "show", "--json"]).ok();
    assert_eq!(run.json(), h.get(&h.su(), "/admin/upgrades/7"));
    golden(
        "upgrade-show.json",
        &serde_json::to_string_pretty(&run.json()).unwrap(),
    );
}
