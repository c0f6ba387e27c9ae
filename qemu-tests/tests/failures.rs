//! Scenario 6 of issue 8, "how it'll screw up" (the paper's failures), on
//! a real brain and PXE-booted head and tail, a customer VM running the
//! test guest on the head with its disc over NBD on the tail (as in
//! `customer.rs`), the guest's console seen on the head's own serial
//! console (readable while the brain is down).
//!
//! Covered so far: **the brain killed** (SIGKILL) → the VM keeps running
//! (its ticks go on, same boot id); **the brain restarted** on the same
//! data directory → it reconverges without touching the VM: the head is
//! back online reporting the VM running, the guest never rebooted, and
//! the head got no start, stop or reset order.
//!
//! **A head's cable pulled** (QMP `set_link off`) for 45 s, under the
//! fence timeout → the brain sees the head go, the guest ticks on; the
//! cable back, the head rejoins with the VM, nothing moved or restarted.
//! Then **that head powered off hard** (its qemu killed) → once the brain's fence
//! timeout plus margin have passed (set short here), the VM (autoreboot
//! on) boots on the other head, finding the data its first boot wrote;
//! the old copy is gone with its machine, so two never run.
//!
//! Not yet: a cable pulled past the fence timeout (the head's own fence
//! timeout is not settable on a PXE-booted head: it stays 120 s), the
//! tail's cable pulled.
//!
//! Slow: builds the image and the test guest, boots two nodes and a
//! nested guest under TCG; runs only with BIGV_SLOW_TESTS=1. Needs what
//! `customer.rs` needs.

use std::path::Path;
use std::time::{Duration, Instant};

use bigv_qemu_tests::brain::Admin;
use bigv_qemu_tests::cli::Bigv;
use bigv_qemu_tests::cluster::{Cluster, NodeSpec, until};
use bigv_qemu_tests::guest::{self, CustomerScenario, TEMPLATE};
use bigv_qemu_tests::logs::Logs;
use bigv_qemu_tests::timings::Timings;
use bigv_qemu_tests::vm::Vm;
use bigv_test_guest::lines;

const SERVER: &str = "web1.default.acme";
/// How long the brain stays dead: well under the head's fence timeout
/// (120 s by default), past which the head would kill its VMs.
const BRAIN_DOWN: Duration = Duration::from_secs(20);
/// After the restarted brain sees the head again: several reconciler
/// passes (at least one a second), time for any wrong order to show.
const SETTLE: Duration = Duration::from_secs(15);

#[test]
fn brain_killed_vms_run_on_and_the_restarted_brain_reconverges() {
    if !bigv_qemu_tests::slow_tests_enabled(
        "brain_killed_vms_run_on_and_the_restarted_brain_reconverges",
    ) {
        return;
    }
    bigv_qemu_tests::require_host();
    let CustomerScenario {
        mut logs,
        guest: guest_image,
        data_dir,
        mut cluster,
        admin_cli,
        customer,
    } = CustomerScenario::start("failures-brain", "fbrain", 2);
    cluster.ns.enter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = rt.block_on(brain_scenario(
        &admin_cli,
        &customer,
        &guest_image,
        &mut cluster,
        &mut logs,
    ));
    println!(
        "brain killed and restarted, image {}:\n{}\n{}",
        cluster.version,
        cluster.timings.render(),
        t.render()
    );
    drop(cluster);
    drop(data_dir);
}

/// Lines of the head agent's own log (not the guests') containing `what`.
fn head_log_count(head: &Vm, what: &str) -> usize {
    head.console()
        .lines()
        .filter(|l| !l.contains(guest::CONSOLE) && l.contains(what))
        .count()
}

/// The head agent's order lines about VMs: each start, ordered stop and
/// reset.
fn vm_orders(head: &Vm) -> [usize; 3] {
    [
        head_log_count(head, "VM started"),
        head_log_count(head, "stopping VM (ordered)"),
        head_log_count(head, "VM reset"),
    ]
}

async fn brain_scenario(
    admin_cli: &Bigv,
    customer: &Bigv,
    guest_image: &Path,
    cluster: &mut Cluster,
    logs: &mut Logs,
) -> Timings {
    let admin = Admin::login(&mut cluster.brain).await;
    cluster
        .bring_up(
            &admin,
            &[NodeSpec::head(1), NodeSpec::tail_with_sata_disc(1, 4096)],
            logs,
        )
        .await;
    guest::operator_and_customer_setup(admin_cli, customer, guest_image);
    let mut t = Timings::titled(
        "step (s after it)",
        &[
            "running",
            "guest boot",
            "disc ok",
            "ticks on",
            "head back",
            "settled",
        ],
    );
    t.row("add server", Instant::now());
    customer.run(&[
        "add", "server", SERVER, "--image", TEMPLATE, "--memory", "256M", "--cores", "1", "--disc",
        "1G",
    ]);
    let head_mac = cluster.nodes[0].spec.mac.clone();
    let (boot_line, disc) = {
        let head = &cluster.nodes[0].vm;
        guest::wait_boot(&mut cluster.brain, &admin, head, 0, "add server", &mut t).await
    };
    assert!(disc.contains(lines::DISC_OK), "{disc}");
    let id = lines::boot_id(&boot_line).unwrap().to_owned();
    let orders = vm_orders(&cluster.nodes[0].vm);
    assert_eq!(orders, [1, 0, 0], "one start so far");

    // The brain dies (SIGKILL: no goodbye on the spine). The guest keeps
    // ticking on the head, same boot.
    // Its first ticks (once a second from its boot line).
    let (tick0, _) = until("the guest to tick", 60, &mut cluster.brain, async || {
        guest::last_tick(&cluster.nodes[0].vm).filter(|(n, _)| *n >= 2)
    })
    .await;
    t.row("kill brain", Instant::now());
    cluster.brain.kill();
    eprintln!("brain killed at guest tick {tick0}");
    let down = Instant::now();
    let head = &cluster.nodes[0].vm;
    loop {
        let (n, _) = guest::last_tick(head).expect("the guest ticks");
        if n >= tick0 + 5 {
            t.mark("kill brain", "ticks on");
        }
        if down.elapsed() >= BRAIN_DOWN {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (tick1, _) = guest::last_tick(head).expect("the guest ticks");
    assert!(
        tick1 >= tick0 + 10,
        "the guest stopped ticking while the brain was dead: tick {tick0} at the kill, {tick1} {BRAIN_DOWN:?} later"
    );
    assert_eq!(guest::boot_ids(head), [id.as_str()], "the guest rebooted");
    assert_eq!(
        vm_orders(head),
        orders,
        "the head acted while the brain was dead"
    );

    // The brain comes back on the same data directory: the head
    // reconnects and reports the VM, and the brain leaves it alone.
    t.row("restart brain", Instant::now());
    cluster.brain.restart(&logs.file("brain-restarted.log"));
    let admin = Admin::login(&mut cluster.brain).await;
    until(
        "the head back online with its VM",
        120,
        &mut cluster.brain,
        async || {
            admin
                .node("/admin/heads", &head_mac)
                .await
                .filter(|h| h["online"] == true && h["running_virtual_machines_count"] == 1)
        },
    )
    .await;
    t.mark("restart brain", "head back");
    tokio::time::sleep(SETTLE).await;
    t.mark("restart brain", "settled");
    let head = &cluster.nodes[0].vm;
    let (tick2, _) = guest::last_tick(head).expect("the guest ticks");
    assert!(
        tick2 > tick1,
        "the guest stopped ticking: {tick1} → {tick2}"
    );
    assert_eq!(guest::boot_ids(head), [id.as_str()], "the guest rebooted");
    assert_eq!(
        vm_orders(head),
        orders,
        "[started, stopped, reset] on the head: the restarted brain sent orders about a VM already in place"
    );
    let h = admin
        .node("/admin/heads", &head_mac)
        .await
        .expect("the head");
    assert_eq!(h["running_virtual_machines_count"], 1, "{h}");
    let shown = customer.run(&["--json", "show", "server", SERVER]);
    assert!(
        shown.replace(' ', "").contains("\"power_on\":true"),
        "the server should still be on: {shown}"
    );
    eprintln!("guest boot {id}: ticks {tick0} (kill) → {tick1} (restart) → {tick2}, no reboot");
    t
}

/// The brain's fence timeout and margin for the head scenario: short, so
/// the test is quick. (A dead head's own fence timeout does not matter.)
const FENCE_SECS: u64 = 15;
const MARGIN_SECS: u64 = 5;
/// A cable pull longer than the brain takes to see the head gone
/// (keepalive, ~20 s) and well under the default fence timeout.
const CABLE_OUT: Duration = Duration::from_secs(45);

#[test]
fn a_short_cable_pull_moves_nothing_and_a_head_powered_off_hard_its_vm_comes_back_elsewhere() {
    if !bigv_qemu_tests::slow_tests_enabled(
        "a_short_cable_pull_moves_nothing_and_a_head_powered_off_hard_its_vm_comes_back_elsewhere",
    ) {
        return;
    }
    bigv_qemu_tests::require_host();
    let CustomerScenario {
        mut logs,
        guest: guest_image,
        data_dir,
        mut cluster,
        admin_cli,
        customer,
    } = CustomerScenario::start("failures-head", "fhead", 3);
    cluster.ns.enter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = rt.block_on(head_scenario(
        &admin_cli,
        &customer,
        &guest_image,
        &mut cluster,
        &mut logs,
    ));
    println!(
        "head powered off hard, image {}:\n{}\n{}",
        cluster.version,
        cluster.timings.render(),
        t.render()
    );
    drop(cluster);
    drop(data_dir);
}

/// Waits until the `n`th boot of the guest shows its `DISC OK` on one of
/// `heads` (indices into the cluster's nodes); returns that node's index
/// and the boot and disc lines. Marks `guest boot` and `disc ok`.
async fn wait_boot_on(
    cluster: &mut Cluster,
    heads: &[usize],
    n: usize,
    row: &str,
    t: &mut Timings,
    limit: Duration,
) -> (usize, String, String) {
    let deadline = Instant::now() + limit;
    loop {
        for &i in heads {
            if let Some((b, disc)) = guest::boot(&cluster.nodes[i].vm, n) {
                t.mark(row, "guest boot");
                if let Some(d) = disc {
                    t.mark(row, "disc ok");
                    eprintln!("boot {} on node {i}:\n  {b}\n  {d}", n + 1);
                    return (i, b, d);
                }
            }
        }
        assert!(!cluster.brain.exited(), "the brain exited");
        assert!(
            Instant::now() < deadline,
            "boot {} of the guest did not finish its disc check within {limit:?}\n{}",
            n + 1,
            t.render()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn head_scenario(
    admin_cli: &Bigv,
    customer: &Bigv,
    guest_image: &Path,
    cluster: &mut Cluster,
    logs: &mut Logs,
) -> Timings {
    let admin = Admin::login(&mut cluster.brain).await;
    cluster
        .bring_up(
            &admin,
            &[
                NodeSpec::head(1),
                NodeSpec::head(2),
                NodeSpec::tail_with_sata_disc(1, 4096),
            ],
            logs,
        )
        .await;
    guest::operator_and_customer_setup(admin_cli, customer, guest_image);
    let mut t = Timings::titled(
        "step (s after it)",
        &[
            "head offline",
            "head back",
            "guest boot",
            "disc ok",
            "vm on head",
        ],
    );
    t.row("add server", Instant::now());
    customer.run(&[
        "add", "server", SERVER, "--image", TEMPLATE, "--memory", "256M", "--cores", "1", "--disc",
        "1G",
    ]);
    let (first, boot1, disc1) = wait_boot_on(
        cluster,
        &[0, 1],
        0,
        "add server",
        &mut t,
        guest::GUEST_LIMIT,
    )
    .await;
    assert!(disc1.contains(lines::DISC_OK), "{disc1}");
    let id1 = lines::boot_id(&boot1).unwrap().to_owned();
    let other = 1 - first;
    let dead_mac = cluster.nodes[first].spec.mac.clone();
    let other_mac = cluster.nodes[other].spec.mac.clone();

    // Its head's cable is pulled for less than the fence timeout (the
    // defaults: 120 s, plus 30 s margin): the brain sees the head go
    // (unknown, not dead), the guest ticks on, and when the cable is back
    // the head rejoins with the same VM; nothing moved, nothing restarted.
    let (tick0, _) = until("the guest to tick", 60, &mut cluster.brain, async || {
        guest::last_tick(&cluster.nodes[first].vm).filter(|(n, _)| *n >= 2)
    })
    .await;
    let orders = [
        vm_orders(&cluster.nodes[0].vm),
        vm_orders(&cluster.nodes[1].vm),
    ];
    t.row("cable out 45 s", Instant::now());
    cluster.nodes[first].vm.set_link(false);
    let out = Instant::now();
    while out.elapsed() < CABLE_OUT {
        if let Some(h) = admin.node("/admin/heads", &dead_mac).await
            && h["online"] == false
        {
            t.mark("cable out 45 s", "head offline");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.nodes[first].vm.set_link(true);
    assert!(
        t.get("cable out 45 s", "head offline").is_some(),
        "the brain never saw the head go while its cable was out for {CABLE_OUT:?}"
    );
    until(
        "the head back online with its VM",
        120,
        &mut cluster.brain,
        async || {
            admin
                .node("/admin/heads", &dead_mac)
                .await
                .filter(|h| h["online"] == true && h["running_virtual_machines_count"] == 1)
        },
    )
    .await;
    t.mark("cable out 45 s", "head back");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let head = &cluster.nodes[first].vm;
    let (tick1, _) = guest::last_tick(head).expect("the guest ticks");
    assert!(
        tick1 as f64 >= tick0 as f64 + CABLE_OUT.as_secs_f64(),
        "the guest stopped ticking while the cable was out: {tick0} → {tick1}"
    );
    assert_eq!(guest::boot_ids(head), [id1.as_str()], "the guest rebooted");
    assert_eq!(
        [
            vm_orders(&cluster.nodes[0].vm),
            vm_orders(&cluster.nodes[1].vm)
        ],
        orders,
        "[started, stopped, reset] per head: a VM was touched for a short cable pull"
    );
    let h = admin
        .node("/admin/heads", &other_mac)
        .await
        .expect("the other head");
    assert_eq!(h["running_virtual_machines_count"], 0, "nothing moved: {h}");

    // A short fence for the power cut, so the test is quick.
    admin
        .put(
            "/admin/settings",
            serde_json::json!({"fence_timeout_secs": FENCE_SECS, "fence_margin_secs": MARGIN_SECS}),
        )
        .await;

    // The plug is pulled on the VM's head.
    t.row("power off head", Instant::now());
    let pulled = Instant::now();
    cluster.nodes[first].vm.power_off_hard();
    eprintln!("head {dead_mac} powered off at {:?}", pulled);
    let fence = Duration::from_secs(FENCE_SECS + MARGIN_SECS);
    let limit = fence + Duration::from_secs(60) + guest::GUEST_LIMIT;
    let deadline = Instant::now() + limit;
    // The brain notices (keepalive), then waits out the fence: the VM
    // must not start anywhere before.
    loop {
        if let Some(h) = admin.node("/admin/heads", &dead_mac).await
            && h["online"] == false
        {
            t.mark("power off head", "head offline");
        }
        if let Some(h) = admin.node("/admin/heads", &other_mac).await
            && h["running_virtual_machines_count"] == 1
        {
            t.mark("power off head", "vm on head");
            break;
        }
        assert!(!cluster.brain.exited(), "the brain exited");
        assert!(
            Instant::now() < deadline,
            "the VM did not come back on the other head within {limit:?}\n{}",
            t.render()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let moved_after = pulled.elapsed();
    assert!(
        moved_after >= fence,
        "the brain restarted the VM {moved_after:?} after the head went dark: before the fence timeout plus margin ({fence:?}), when a live but cut-off head could still be running it"
    );
    let (_, boot2, disc2) = wait_boot_on(
        cluster,
        &[other],
        0,
        "power off head",
        &mut t,
        guest::GUEST_LIMIT,
    )
    .await;
    let id2 = lines::boot_id(&boot2).unwrap().to_owned();
    assert_ne!(id1, id2, "a new boot on the other head");
    assert_eq!(
        lines::field(&disc2, lines::DISC_OK, "previous"),
        Some(id1.as_str()),
        "the new boot must find the first boot's pattern on the disc: {disc2}"
    );
    let shown = customer.run(&["--json", "show", "server", SERVER]);
    assert!(
        shown.replace(' ', "").contains("\"power_on\":true"),
        "the server should be on: {shown}"
    );
    eprintln!("VM moved from {dead_mac} to {other_mac} after {moved_after:?}: boot {id1} → {id2}");
    t
}
