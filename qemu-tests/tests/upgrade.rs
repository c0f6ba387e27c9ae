//! Scenario 5 of issue 8, "rolling upgrade by reboot": a real brain, two
//! heads and two tails PXE-booted from it on node image v1, a customer VM
//! from the test guest running on one head with its disc on a tail. The
//! machines run with qemu `-no-reboot`: a node's reboot powers it off and
//! the test powers it on again, choosing how it boots. The operator stores
//! image v2 (`bigv-brain image add`, the same binaries under a new
//! version) and runs `bigv admin upgrade start v2` →
//!
//! - every node in turn is emptied (the VM live-migrates to the other
//!   head, its disc to the other tail), rebooted (powered on again by
//!   PXE, as a normal machine boots), network-boots v2, is checked and put
//!   back: the upgrade ends `done` and every node reports image v2.
//!
//! Then image v3 (again the same binaries) and `bigv admin upgrade start
//! v3`; the first node ordered to reboot comes back on a stale boot
//! source: qemu loads v2's kernel and initrds itself, with the command
//! line the brain's script now gives it (naming v3) →
//!
//! - the upgrade stops, `failed`, with the brain's message naming the
//!   node and both versions (`<node> came back on image version <v2>,
//!   expected <v3>; the upgrade stopped with 0 of 4 nodes done, …`),
//!   which `bigv admin upgrade show` and `watch` give the operator;
//! - that node is online on v2, flagged (`image_mismatch`) and out of
//!   service (usage strategy `empty`); no other node was rebooted: each
//!   is online on v2, in service, its qemu never exited.
//!
//! Across both upgrades:
//! - the guest never rebooted: across both heads' consoles (every boot of
//!   each, appended) there is one boot line only (the first), and its
//!   ticks went on past the upgrades;
//! - its data is intact: `bigv reset server` → the next boot finds the
//!   first boot's pattern (`DISC OK previous=<first boot id>`).
//!
//! Prints each node's evacuation, reboot and total times for the v2
//! upgrade, and when the wrong node went off and the upgrade stopped.
//!
//! Slow: runs only with BIGV_SLOW_TESTS=1; needs what `customer.rs` needs.

use std::path::Path;
use std::time::{Duration, Instant};

use bigv_qemu_tests::brain::{self, Admin};
use bigv_qemu_tests::cluster::{Cluster, Node, NodeSpec, direct_boot, until};
use bigv_qemu_tests::guest::{self, CustomerScenario, boot, boot_ids, last_tick};
use bigv_qemu_tests::timings::Timings;
use bigv_test_guest::lines;
use serde_json::Value;

const SERVER: &str = "upg1.default.acme";
const TEST: &str =
    "rolling_upgrade_reboots_every_node_no_vm_and_stops_at_a_node_on_the_wrong_version";

#[test]
fn rolling_upgrade_reboots_every_node_no_vm_and_stops_at_a_node_on_the_wrong_version() {
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
    )) = CustomerScenario::begin(TEST, "upgrade", "upgr", 4)
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
                ]
                .map(NodeSpec::no_reboot),
                &mut logs,
            )
            .await;
        let v1 = cluster.version.clone();
        guest::operator_and_customer_setup(&admin_cli, &alice, &guest);
        let mut t = Timings::titled(
            "step (s after the command)",
            &["first off", "ended", "disc ok"],
        );
        t.row("add server", Instant::now());
        guest::add_server(&alice, SERVER, "1G", &[]);
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
        // The guest's last tick on either head's console.
        let tick = |nodes: &[Node]| {
            nodes[..2]
                .iter()
                .filter_map(|n| last_tick(&n.vm))
                .map(|(n, _)| n)
                .max()
        };
        let tick_before = until("the guest to tick", 60, &mut cluster.brain, async || {
            tick(&cluster.nodes)
        })
        .await;

        // Image v2: the same binaries under another version.
        let (image2, v2) = bigv_qemu_tests::image::build_next();
        store_image(&mut cluster, &admin, data_dir.path(), &image2, &v2).await;

        const V2: &str = "upgrade to v2";
        t.row(V2, Instant::now());
        let out = admin_cli.run_all(&["admin", "upgrade", "start", &v2, "--no-wait"]);
        eprintln!("bigv admin upgrade start: {out}");
        let deadline = Instant::now() + Duration::from_secs(2400);
        let mut last_step = String::new();
        let mut rebooted = vec![];
        let upgrade = loop {
            match next_event(&mut cluster, &admin, deadline, V2, &mut last_step).await {
                Event::Ended(u) => break u,
                Event::Off(i) => {
                    // A machine whose boot source is the network: PXE.
                    t.mark(V2, "first off");
                    cluster.power_on_again(i, None);
                    rebooted.push(i);
                }
            }
        };
        t.mark(V2, "ended");
        assert_eq!(
            upgrade["state"], "done",
            "the upgrade did not finish: {upgrade:#}"
        );
        assert_eq!(upgrade["nodes_done"], 4, "{upgrade:#}");
        rebooted.sort();
        assert_eq!(rebooted, [0, 1, 2, 3], "each node reboots once");

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
        let all_boot_ids = |nodes: &[Node]| -> Vec<String> {
            nodes[..2].iter().flat_map(|n| boot_ids(&n.vm)).collect()
        };
        assert_eq!(
            all_boot_ids(&cluster.nodes),
            vec![id1.clone()],
            "the guest booted again during the upgrade"
        );
        let tick_after = until(
            "the guest to tick after the upgrade",
            120,
            &mut cluster.brain,
            async || tick(&cluster.nodes).filter(|n| *n > tick_before + 5),
        )
        .await;
        eprintln!("ticks: {tick_before} before the upgrade, {tick_after} after");

        // Image v3; the first node to reboot comes back on v2 (a stale
        // boot source): v2's files, the command line of the brain's
        // script, which names v3.
        let (image3, v3) = bigv_qemu_tests::image::build_suffixed("v3");
        store_image(&mut cluster, &admin, data_dir.path(), &image3, &v3).await;
        const V3: &str = "upgrade to v3";
        const WRONG: &str = "wrong node on";
        t.row(V3, Instant::now());
        admin_cli.run_all(&["admin", "upgrade", "start", &v3, "--no-wait"]);
        let deadline = Instant::now() + Duration::from_secs(1200);
        let mut wrong = None;
        let failed = loop {
            match next_event(&mut cluster, &admin, deadline, V3, &mut last_step).await {
                Event::Ended(u) => break u,
                Event::Off(i) => {
                    let row = cluster.nodes[i].row();
                    assert!(
                        wrong.is_none(),
                        "{row} rebooted after a node came back on the wrong version"
                    );
                    t.mark(V3, "first off");
                    let n = &cluster.nodes[i];
                    let boot =
                        direct_boot(&n.spec.mac, n.spec.role, &image2, data_dir.path()).await;
                    assert!(
                        boot.cmdline.contains(&format!("bigv.version={v3} ")),
                        "the brain's script names v3: {}",
                        boot.cmdline
                    );
                    t.row(WRONG, Instant::now());
                    cluster.power_on_again(i, Some(&boot));
                    wrong = Some(i);
                }
            }
        };
        t.mark(V3, "ended");
        t.mark(WRONG, "ended");
        let wrong = wrong.expect("no node was rebooted");
        let mac = cluster.nodes[wrong].spec.mac.clone();
        assert_eq!(failed["state"], "failed", "{failed:#}");
        let order = failed["nodes"].as_array().unwrap();
        assert_eq!(
            order[0]["node_id"],
            mac.as_str(),
            "the first node in order rebooted: {failed:#}"
        );
        assert_eq!(order[0]["step"], "failed", "{failed:#}");
        for n in &order[1..] {
            assert_eq!(n["step"], "pending", "untouched: {failed:#}");
        }
        let label = order[0]["label"].as_str().unwrap().to_owned();
        let error = failed["error"].as_str().unwrap().to_owned();
        let expected = format!(
            "{label} came back on image version {v2}, expected {v3}; \
             the upgrade stopped with 0 of 4 nodes done, {label} stays out of service"
        );
        assert!(error.starts_with(&expected), "{error}");
        assert_eq!(failed["nodes_done"], 0, "{failed:#}");
        // The operator's view, through the CLI.
        let shown = admin_cli.run(&["admin", "upgrade", "show"]);
        assert!(
            shown.contains(&format!("to {v3} from {v2}: failed, 0 of 4 nodes done"))
                && shown.contains(&format!("error: {error}")),
            "{shown}"
        );
        let watched = admin_cli
            .try_run(&["admin", "upgrade", "watch"])
            .expect_err("watching a failed upgrade fails");
        assert!(watched.contains(&format!("failed: {error}")), "{watched}");

        // The wrong node is up on v2, flagged and out of service; the
        // others are untouched on v2, in service.
        let list = cluster.nodes[wrong].spec.role.list();
        let flagged = until(
            &format!("{label} to be online on v2"),
            120,
            &mut cluster.brain,
            async || admin.node(list, &mac).await.filter(|n| n["online"] == true),
        )
        .await;
        assert_eq!(flagged["image_version"], v2.as_str(), "{flagged:#}");
        assert_eq!(flagged["image_expected"], v3.as_str(), "{flagged:#}");
        assert_eq!(flagged["image_mismatch"], true, "{flagged:#}");
        assert_eq!(flagged["usage_strategy"], "empty", "{flagged:#}");
        for i in (0..4).filter(|i| *i != wrong) {
            let n = &cluster.nodes[i];
            let v = admin
                .node(n.spec.role.list(), &n.spec.mac)
                .await
                .unwrap_or_else(|| panic!("{} listed", n.row()));
            assert_eq!(v["image_version"], v2.as_str(), "{v:#}");
            assert_eq!(v["online"], true, "{v:#}");
            assert_eq!(v["image_mismatch"], false, "{v:#}");
            assert_ne!(v["usage_strategy"], "empty", "{v:#}");
        }

        // Still the one boot of the guest, ticking on.
        assert_eq!(
            all_boot_ids(&cluster.nodes),
            vec![id1.clone()],
            "the guest booted again during the failed upgrade"
        );
        let tick_failed = until(
            "the guest to tick after the failed upgrade",
            120,
            &mut cluster.brain,
            async || tick(&cluster.nodes).filter(|n| *n > tick_after + 5),
        )
        .await;
        eprintln!("ticks: {tick_failed} after the failed upgrade");

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
            "the boot after the upgrades must find the first boot's pattern: {}",
            second.1
        );
        // No machine went off again since the wrong node came back.
        for n in &mut cluster.nodes {
            assert!(!n.vm.exited(), "{}: qemu exited", n.row());
        }
        (t, upgrade["nodes"].clone())
    });
    println!(
        "rolling upgrade, image {}:\n{}\n{}\nupgrade to v2, per node:\n{}",
        cluster.version,
        cluster.timings.render(),
        t.render(),
        node_table(&nodes)
    );
    drop(cluster);
    drop(data_dir);
}

/// Stores image `version` (folder `image`) with `bigv-brain image add`
/// while the brain runs; waits until the brain lists it.
async fn store_image(
    cluster: &mut Cluster,
    admin: &Admin,
    data: &Path,
    image: &Path,
    version: &str,
) {
    brain::add_image(&brain::binary(), &data.join("brain"), image);
    until(
        &format!("the brain to list image {version}"),
        60,
        &mut cluster.brain,
        async || {
            let images = admin.get("/admin/node_images").await;
            images
                .as_array()?
                .iter()
                .any(|i| i["version"] == version)
                .then_some(())
        },
    )
    .await;
}

enum Event {
    /// The upgrade is no longer running: the latest upgrade's object.
    Ended(Value),
    /// Node `i`'s qemu exited: it rebooted (`-no-reboot`).
    Off(usize),
}

/// Follows the latest upgrade (printing each new node and step) until it
/// is no longer running or a node's qemu has exited.
async fn next_event(
    cluster: &mut Cluster,
    admin: &Admin,
    deadline: Instant,
    what: &str,
    last_step: &mut String,
) -> Event {
    loop {
        if let Some(i) = cluster.nodes.iter_mut().position(|n| n.vm.exited()) {
            eprintln!("{what}: {} went off (rebooted)", cluster.nodes[i].row());
            return Event::Off(i);
        }
        let u = admin.get("/admin/upgrades/latest").await;
        let step = format!("{} {}", u["current_node"], u["current_step"]);
        if step != *last_step {
            eprintln!(
                "{what}: {step} ({} of {} done)",
                u["nodes_done"], u["nodes_total"]
            );
            *last_step = step;
        }
        if u["state"] != "running" {
            return Event::Ended(u);
        }
        assert!(
            !cluster.brain.exited(),
            "the brain exited during the {what}"
        );
        assert!(
            Instant::now() < deadline,
            "the {what} did not end in time: {u:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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
