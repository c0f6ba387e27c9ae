//! Scenario 5 of issue 8, "rolling upgrade by reboot": a real brain, two
//! heads and two tails PXE-booted from it on node image v1, a customer VM
//! from the test guest running on one head with its disc on a tail. The
//! operator stores image v2 (`bigv-brain image add`, the same binaries
//! under a new version) and runs `bigv admin upgrade start v2` →
//!
//! - every node in turn is emptied (the VM live-migrates to the other
//!   head, its disc to the other tail), rebooted, network-boots v2, is
//!   checked and put back: the upgrade ends `done` and every node reports
//!   image v2;
//! - the guest never rebooted: across both heads' consoles there is one
//!   boot line only (the first), and its ticks went on past the upgrade;
//! - its data is intact: `bigv reset server` → the next boot finds the
//!   first boot's pattern (`DISC OK previous=<first boot id>`).
//!
//! (A node that comes back on the wrong version stopping the rollout is
//! tested against simulated nodes, brain/tests/upgrade.rs: a PXE-booted
//! node gets the version the brain's script names.)
//!
//! Prints each node's evacuation, reboot and total times.
//!
//! Slow: runs only with BIGV_SLOW_TESTS=1; needs what `customer.rs` needs.

use std::time::Instant;

use bigv_qemu_tests::brain::{self, Admin};
use bigv_qemu_tests::cluster::{NodeSpec, until};
use bigv_qemu_tests::guest::{self, CustomerScenario, TEMPLATE, boot, boot_ids, last_tick};
use bigv_qemu_tests::timings::Timings;
use bigv_test_guest::lines;
use serde_json::Value;

const SERVER: &str = "upg1.default.acme";

#[test]
fn rolling_upgrade_reboots_every_node_and_no_vm() {
    let Some((
        CustomerScenario {
            mut logs,
            guest,
            data_dir,
            mut cluster,
            admin_cli,
            customer: alice,
        },
        rt,
    )) = CustomerScenario::begin(
        "rolling_upgrade_reboots_every_node_and_no_vm",
        "upgrade",
        "upgr",
        4,
    )
    else {
        return;
    };
    let (t, nodes) = rt.block_on(async {
        let admin = Admin::login(&mut cluster.brain).await;
        cluster
            .bring_up(
                &admin,
                &[
                    NodeSpec::head(1),
                    NodeSpec::head(2),
                    NodeSpec::tail_with_sata_disc(1, 4096),
                    NodeSpec::tail_with_sata_disc(2, 4096),
                ],
                &mut logs,
            )
            .await;
        let v1 = cluster.version.clone();
        guest::operator_and_customer_setup(&admin_cli, &alice, &guest);
        let mut t = Timings::titled("upgrade (s after the command)", &["done", "disc ok"]);
        t.row("add server", Instant::now());
        alice.run(&[
            "add", "server", SERVER, "--image", TEMPLATE, "--memory", "256M", "--cores", "1",
            "--disc", "1G",
        ]);
        let first = until(
            "the guest's first DISC OK",
            300,
            &mut cluster.brain,
            async || {
                (0..2).find_map(|i| boot(&cluster.nodes[i].vm, 0).and_then(|(b, d)| Some((b, d?))))
            },
        )
        .await;
        t.mark("add server", "disc ok");
        assert!(first.1.contains(lines::DISC_OK), "{}", first.1);
        let id1 = lines::boot_id(&first.0).unwrap().to_owned();
        let heads = || (0..2).map(|i| &cluster.nodes[i].vm);
        let tick_before = until("the guest to tick", 60, &mut cluster.brain, async || {
            heads().filter_map(last_tick).map(|(n, _)| n).max()
        })
        .await;

        // Image v2: the same binaries under another version.
        let (image2, v2) = bigv_qemu_tests::image::build_next();
        brain::add_image(&brain::binary(), &data_dir.path().join("brain"), &image2);
        until(
            "the brain to list image v2",
            60,
            &mut cluster.brain,
            async || {
                let images = admin.get("/admin/node_images").await;
                images
                    .as_array()?
                    .iter()
                    .any(|i| i["version"] == v2.as_str())
                    .then_some(())
            },
        )
        .await;

        t.row("upgrade start", Instant::now());
        let out = admin_cli.run_all(&["admin", "upgrade", "start", &v2, "--no-wait"]);
        eprintln!("bigv admin upgrade start: {out}");
        let mut last_step = String::new();
        let upgrade = until("the upgrade to end", 2400, &mut cluster.brain, async || {
            let u = admin.get("/admin/upgrades/latest").await;
            let step = format!("{} {}", u["current_node"], u["current_step"]);
            if step != last_step {
                eprintln!(
                    "upgrade: {step} ({} of {} done)",
                    u["nodes_done"], u["nodes_total"]
                );
                last_step = step;
            }
            match u["state"].as_str() {
                Some("running") => None,
                _ => Some(u),
            }
        })
        .await;
        t.mark("upgrade start", "done");
        assert_eq!(
            upgrade["state"], "done",
            "the upgrade did not finish: {upgrade:#}"
        );
        assert_eq!(upgrade["nodes_done"], 4, "{upgrade:#}");

        // Every node is back on v2, in service.
        for list in ["/admin/heads", "/admin/tails"] {
            let nodes = admin.get(list).await;
            for n in nodes.as_array().unwrap() {
                assert_eq!(n["image_version"], v2.as_str(), "{list}: {n:#}");
                assert_eq!(n["online"], true, "{list}: {n:#}");
                assert_ne!(n["image_version"], v1.as_str());
            }
        }
        // The guest never rebooted: one boot line in all, the first, and
        // ticks after the upgrade beyond those before it.
        let ids: Vec<String> = heads().flat_map(boot_ids).collect();
        assert_eq!(
            ids,
            vec![id1.clone()],
            "the guest booted again during the upgrade"
        );
        let tick_after = until(
            "the guest to tick after the upgrade",
            120,
            &mut cluster.brain,
            async || {
                heads()
                    .filter_map(last_tick)
                    .map(|(n, _)| n)
                    .max()
                    .filter(|n| *n > tick_before + 5)
            },
        )
        .await;
        eprintln!("ticks: {tick_before} before the upgrade, {tick_after} after");

        // Data: the next boot finds the first boot's pattern.
        t.row("reset server", Instant::now());
        alice.run(&["reset", "server", SERVER]);
        let second = until(
            "the guest's DISC OK after the reset",
            300,
            &mut cluster.brain,
            async || {
                // The first boot on either head that is not the first boot.
                (0..2)
                    .flat_map(|i| (0..3).map(move |n| (i, n)))
                    .filter_map(|(i, n)| {
                        boot(&cluster.nodes[i].vm, n).and_then(|(b, d)| Some((b, d?)))
                    })
                    .find(|(b, _)| lines::boot_id(b) != Some(id1.as_str()))
            },
        )
        .await;
        t.mark("reset server", "disc ok");
        assert_eq!(
            lines::field(&second.1, lines::DISC_OK, "previous"),
            Some(id1.as_str()),
            "the boot after the upgrade must find the first boot's pattern: {}",
            second.1
        );
        (t, upgrade["nodes"].clone())
    });
    println!(
        "rolling upgrade, image {}:\n{}\n{}\n{}",
        cluster.version,
        cluster.timings.render(),
        t.render(),
        node_table(&nodes)
    );
    drop(cluster);
    drop(data_dir);
}

/// Each node's evacuation, reboot and total seconds, as the brain recorded.
fn node_table(nodes: &Value) -> String {
    let mut s = String::from("node    evacuate  reboot  total (s)\n");
    // Values do not pad: format each as a string first.
    let field = |n: &Value, k: &str| n[k].to_string();
    for n in nodes.as_array().into_iter().flatten() {
        s.push_str(&format!(
            "{:7} {:>8} {:>7} {:>6}\n",
            n["label"].as_str().unwrap_or("?"),
            field(n, "evacuate_secs"),
            field(n, "reboot_secs"),
            field(n, "total_secs")
        ));
    }
    s
}
