//! Scenario 1 of issue 8, "rack and power on": two blank machines on the
//! brain's boot LAN PXE-boot the real node image from a real `bigv-brain`
//! process, join the spine by themselves, appear pending, are accepted by
//! an operator through the admin API, and become ready.
//!
//! - The tail gets its role from the cluster's `enrollment_role: tail`
//!   (enrollment open, the machine never seen before).
//! - The head gets its role from registering its MAC
//!   (`POST /admin/machines {mac, role: head}`, what
//!   `bigv admin add machine MAC head` sends), and a CPU with SVM and
//!   1.5 GiB so it can run VMs later.
//! - `admission: manual`, so both wait for the operator (the manual path).
//!
//! Then the tail is power-cycled through QMP (`system_reset`, the reset
//! button): it network-boots again and is back in service by itself,
//! still accepted, with no operator action.
//!
//! Slow: builds the image and boots two kernels under TCG; runs only with
//! BIGV_SLOW_TESTS=1. Needs root, iproute2, qemu-system-x86, ipxe-qemu,
//! ipxe and the kernel from tools/fetch-kernel.sh.

use bigv_qemu_tests::brain::Admin;
use bigv_qemu_tests::cluster::{Cluster, NodeSpec};
use bigv_qemu_tests::logs::Logs;
use serde_json::json;

#[test]
fn rack_and_power_on() {
    if !bigv_qemu_tests::slow_tests_enabled("rack_and_power_on") {
        return;
    }
    bigv_qemu_tests::require_host();
    let mut logs = Logs::new("rack");
    // The store and its copy of the image (~100 MB): removed even on failure.
    let data_dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start("rack", 2, &data_dir.path().join("brain"), &mut logs);

    // This thread talks to the API on the namespace's loopback; the
    // runtime is single-threaded so every socket is opened here.
    cluster.ns.enter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(scenario(&mut cluster, &mut logs));
    println!(
        "rack and power on, image {}:\n{}",
        cluster.version,
        cluster.timings.render()
    );
    // Teardown, in order: VMs, brain, namespace.
    drop(cluster);
    drop(data_dir);
}

async fn scenario(cluster: &mut Cluster, logs: &mut Logs) {
    let admin = Admin::login(&mut cluster.brain).await;
    let head = NodeSpec::head(1);
    let tail = NodeSpec::tail(1);
    admin
        .put(
            "/admin/settings",
            json!({"admission": "manual", "enrollment": "open", "enrollment_role": "tail"}),
        )
        .await;
    admin
        .post("/admin/machines", json!({"mac": head.mac, "role": "head"}))
        .await;
    cluster.wait_for_target_image(&admin).await;
    let version = cluster.version.clone();

    // Both boot at once; each must show up pending, on our image.
    cluster.power_on(head, logs);
    cluster.power_on(tail, logs);
    let joined = cluster.wait_joined(&admin).await;
    for (n, node) in cluster.nodes.iter().zip(&joined) {
        let name = n.spec.role.name();
        assert_eq!(node["admission"], "pending", "{name}: {node}");
        assert_eq!(node["image_version"], version, "{name}: {node}");
        assert_eq!(node["image_mismatch"], false, "{name}: {node}");
        assert!(
            n.vm.saw(&format!("booting image {version} as {name}")),
            "the {name} got the {name} script for {version}"
        );
    }
    // The brain recorded what it served each machine.
    let machines = admin.get("/admin/machines").await;
    for n in &cluster.nodes {
        let m = machines
            .as_array()
            .and_then(|a| a.iter().find(|m| m["mac"] == n.spec.mac.as_str()))
            .unwrap_or_else(|| panic!("{} not in /admin/machines: {machines}", n.spec.mac));
        assert_eq!(m["booted_version"], version, "{m}");
        assert_eq!(m["role"], n.spec.role.name(), "{m}");
    }

    // The operator accepts both; they become ready: accepted, online, on
    // the image they were given.
    cluster.accept_all(&admin).await;
    for node in cluster.wait_ready(&admin).await {
        assert_eq!(node["image_version"], version, "{node}");
        assert_eq!(node["image_mismatch"], false, "{node}");
    }
    // Each node's init and agent log lines reach the brain over the spine.
    for n in &cluster.nodes {
        let path = format!("{}/{}/logs?lines=1000", n.spec.role.list(), n.spec.mac);
        let admin = &admin;
        let lines = bigv_qemu_tests::cluster::until(
            "the node's log lines at the brain",
            30,
            &mut cluster.brain,
            async || {
                let v = admin.get(&path).await;
                let has = |source: &str, text: &str| {
                    v.as_array().is_some_and(|a| {
                        a.iter().any(|l| {
                            l["source"] == source
                                && l["message"].as_str().is_some_and(|m| m.contains(text))
                        })
                    })
                };
                (has("init", "agent started") && has("agent", "joined the spine")).then_some(v)
            },
        )
        .await;
        assert!(lines.as_array().unwrap().len() >= 2, "{lines}");
    }
    for n in &cluster.nodes {
        assert!(
            cluster.timings.get(&n.row(), "dhcp").is_some(),
            "the {}'s console never showed iPXE's DHCP lease",
            n.spec.role.name()
        );
    }

    // A power cycle: the tail boots again over the network and comes back
    // by itself, still accepted (no operator action).
    let tail = &cluster.nodes[1];
    let (mac, list) = (tail.spec.mac.clone(), tail.spec.role.list());
    let booted = |console: &str| {
        console
            .matches(&format!("booting image {version} as tail"))
            .count()
    };
    assert_eq!(booted(&tail.vm.console()), 1, "one boot so far");
    let cycled = std::time::Instant::now();
    tail.vm.power_cycle();
    let back = bigv_qemu_tests::cluster::until(
        "the power-cycled tail back in service",
        bigv_qemu_tests::cluster::BOOT_LIMIT.as_secs(),
        &mut cluster.brain,
        async || {
            let console = cluster.nodes[1].vm.console();
            if booted(&console) < 2 {
                return None;
            }
            // Its new agent's session, not the old one the brain may not
            // have seen end yet: a second join in its log at the brain.
            let logs = admin.get(&format!("{list}/{mac}/logs?lines=1000")).await;
            let joins = logs.as_array()?.iter().filter(|l| {
                l["source"] == "agent"
                    && l["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("joined the spine"))
            });
            if joins.count() < 2 {
                return None;
            }
            admin
                .node(list, &mac)
                .await
                .filter(|v| v["admission"] == "accepted" && v["online"] == true)
        },
    )
    .await;
    assert_eq!(back["image_version"], version, "{back}");
    println!(
        "power cycle (QMP system_reset) → the tail back in service: {:.1} s",
        cycled.elapsed().as_secs_f64()
    );
}
