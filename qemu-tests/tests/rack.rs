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
//! Slow: builds the image and boots two kernels under TCG; runs only with
//! BIGV_SLOW_TESTS=1. Needs root, iproute2, qemu-system-x86, ipxe-qemu,
//! ipxe and the kernel from tools/fetch-kernel.sh.

use std::time::{Duration, Instant};

use bigv_qemu_tests::brain::{self, Admin, BrainProcess};
use bigv_qemu_tests::logs::Logs;
use bigv_qemu_tests::netns::Netns;
use bigv_qemu_tests::timings::Timings;
use bigv_qemu_tests::vm::{Vm, VmSpec};
use serde_json::{Value, json};

const HEAD_MAC: &str = "52:54:00:8e:00:01";
const TAIL_MAC: &str = "52:54:00:8e:00:02";
/// One boot under TCG on a loaded CI machine (kernel, both initrds over
/// HTTP, modules, DHCP, the agent's TLS join).
const BOOT_LIMIT: Duration = Duration::from_secs(240);
const COLUMNS: [&str; 4] = ["dhcp", "spine join", "accepted", "ready"];

struct Node {
    name: &'static str,
    mac: &'static str,
    list: &'static str,
    vm: Vm,
}

#[test]
fn rack_and_power_on() {
    if !bigv_qemu_tests::slow_tests_enabled("rack_and_power_on") {
        return;
    }
    bigv_qemu_tests::require_host();
    let mut logs = Logs::new("rack");
    let (image, version) = bigv_qemu_tests::image::build_cached();
    let bin = brain::binary();
    // The store and its copy of the image (~100 MB): removed even on failure.
    let data_dir = tempfile::tempdir().unwrap();
    let data = data_dir.path().join("brain");
    brain::add_image(&bin, &data, &image);

    let ns = Netns::create("rack", 2);
    let brain_log = logs.file("brain.log");
    let mut brain = BrainProcess::start(&ns, &bin, &data, &brain_log);
    eprintln!("brain pid {} in namespace {}", brain.pid(), ns.name);

    // This thread talks to the API on the namespace's loopback; the
    // runtime is single-threaded so every socket is opened here.
    ns.enter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let timings = rt.block_on(scenario(&ns, &mut brain, &mut logs, &version));
    println!("rack and power on, image {version}:\n{}", timings.render());
    // Teardown, in order: VMs (dropped in scenario), brain, namespace.
    drop(brain);
    drop(ns);
    drop(data_dir);
}

async fn scenario(ns: &Netns, brain: &mut BrainProcess, logs: &mut Logs, version: &str) -> Timings {
    let admin = Admin::login(brain).await;
    admin
        .put(
            "/admin/settings",
            json!({"admission": "manual", "enrollment": "open", "enrollment_role": "tail"}),
        )
        .await;
    admin
        .post("/admin/machines", json!({"mac": HEAD_MAC, "role": "head"}))
        .await;
    // The brain makes the first image it finds the cluster's target.
    until(
        "the image to be the cluster's target",
        60,
        brain,
        async || {
            (admin.get("/admin/settings").await["node_image_version"] == version).then_some(())
        },
    )
    .await;

    let mut timings = Timings::new(&COLUMNS);
    let specs = [
        (
            "head",
            HEAD_MAC,
            "/admin/heads",
            1536,
            Some("qemu64,+svm,+npt"),
        ),
        ("tail", TAIL_MAC, "/admin/tails", 768, None),
    ];
    let mut nodes = Vec::new();
    for (i, (name, mac, list, memory_mib, cpu)) in specs.into_iter().enumerate() {
        let spec = VmSpec {
            mac,
            tap: &ns.taps[i],
            memory_mib,
            cpu,
        };
        let serial = logs.file(&format!("{name}-serial.log"));
        let stderr = logs.file(&format!("{name}-qemu.log"));
        let vm = Vm::power_on(ns, &spec, &serial, &stderr);
        eprintln!("{name} ({mac}) powered on: qemu pid {}", vm.pid());
        timings.row(&format!("{name} {mac}"), vm.powered_on);
        nodes.push(Node {
            name,
            mac,
            list,
            vm,
        });
    }

    // Both boot at once; each must show up pending, on our image.
    let deadline = Instant::now() + BOOT_LIMIT;
    let mut pending: Vec<Option<Value>> = vec![None; nodes.len()];
    while pending.iter().any(Option::is_none) {
        for (i, n) in nodes.iter_mut().enumerate() {
            let row = format!("{} {}", n.name, n.mac);
            if n.vm.saw("net0: 10.0.0.") {
                timings.mark(&row, "dhcp");
            }
            assert!(!n.vm.exited(), "the {} VM's qemu exited", n.name);
            if pending[i].is_none()
                && let Some(node) = admin.node(n.list, n.mac).await
                && node["online"] == true
            {
                timings.mark(&row, "spine join");
                pending[i] = Some(node);
            }
        }
        assert!(!brain.exited(), "the brain exited");
        if Instant::now() > deadline {
            let missing: Vec<_> = nodes
                .iter()
                .zip(&pending)
                .filter(|(_, p)| p.is_none())
                .map(|(n, _)| n.name)
                .collect();
            panic!(
                "{missing:?} did not join the spine within {BOOT_LIMIT:?}\n{}",
                timings.render()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (n, node) in nodes.iter().zip(&pending) {
        let node = node.as_ref().unwrap();
        assert_eq!(node["admission"], "pending", "{}: {node}", n.name);
        assert_eq!(node["image_version"], version, "{}: {node}", n.name);
        assert_eq!(node["image_mismatch"], false, "{}: {node}", n.name);
        assert!(
            n.vm.saw(&format!("booting image {version} as {}", n.name)),
            "the {} got the {} script for {version}",
            n.name,
            n.name
        );
    }
    // The brain recorded what it served each machine.
    let machines = admin.get("/admin/machines").await;
    for n in &nodes {
        let m = machines
            .as_array()
            .and_then(|a| a.iter().find(|m| m["mac"] == n.mac))
            .unwrap_or_else(|| panic!("{} not in /admin/machines: {machines}", n.mac));
        assert_eq!(m["booted_version"], version, "{m}");
        assert_eq!(m["role"], n.name, "{m}");
    }

    // The operator accepts both; they become ready: accepted, online, on
    // the image they were given.
    for n in &nodes {
        admin
            .post(&format!("{}/{}/accept", n.list, n.mac), json!({}))
            .await;
        timings.mark(&format!("{} {}", n.name, n.mac), "accepted");
    }
    for n in &nodes {
        let row = format!("{} {}", n.name, n.mac);
        let node = until(
            &format!("the {} to be ready", n.name),
            60,
            brain,
            async || {
                admin
                    .node(n.list, n.mac)
                    .await
                    .filter(|v| v["admission"] == "accepted" && v["online"] == true)
            },
        )
        .await;
        timings.mark(&row, "ready");
        assert_eq!(node["image_version"], version, "{node}");
        assert_eq!(node["image_mismatch"], false, "{node}");
    }
    for n in &nodes {
        assert!(
            timings
                .get(&format!("{} {}", n.name, n.mac), "dhcp")
                .is_some(),
            "the {}'s console never showed iPXE's DHCP lease",
            n.name
        );
    }
    // Power off: the VMs are killed by PID as they drop.
    drop(nodes);
    timings
}

/// Polls `f` every half second for `secs`; fails early if the brain died.
async fn until<T>(
    what: &str,
    secs: u64,
    brain: &mut BrainProcess,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(!brain.exited(), "the brain exited while waiting for {what}");
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
