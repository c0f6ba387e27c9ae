//! Scenario 6 of issue 8, "how it'll screw up" (the paper's failures), on
//! a real brain and PXE-booted heads and tail, a customer VM running the
//! test guest on a head with its disc over NBD on the tail (as in
//! `customer.rs`), the guest's console seen on the head's own serial
//! console (readable while the brain is down or the head cut off).
//!
//! First test (1 head, 1 tail): **the brain killed** (SIGKILL) → the VM
//! keeps running (its ticks go on, same boot id); **the brain restarted**
//! on the same data directory → it reconverges without touching the VM:
//! the head is back online reporting the VM running, the guest never
//! rebooted, and the head got no start, stop or reset order. Then **the
//! tail's cable pulled** (QMP `set_link off`) while the guest writes and
//! verifies its pattern (a disc check started by ctrl-alt-delete through
//! the API): the check stalls while the guest ticks on, and completes
//! once the cable is back, finding this boot's pattern, no I/O error.
//!
//! Second test (2 heads, 1 tail): the fence set short (`PUT
//! /admin/settings`); **both heads' cables pulled** for 45 s, under the
//! fence timeout they were welcomed with (the default) → the brain sees
//! them go, the guest ticks on; the cables back, the heads rejoin (now
//! told the short fence) with the VM, nothing moved or restarted. **The
//! VM's head's cable pulled past the fence timeout** → the head kills the
//! VM, then (never before: both consoles polled in order) the brain
//! restarts it on the other head, where it finds its data; the tail drops
//! the old head from the disc's access list; the cable back, the old head
//! says it fenced and runs nothing. Then **the new head powered off
//! hard** (its qemu killed) → once the fence timeout plus margin have
//! passed, the VM (autoreboot on) boots on the first head again.
//!
//! Slow: builds the image and the test guest, boots two nodes and a
//! nested guest under TCG; runs only with BIGV_SLOW_TESTS=1. Needs what
//! `customer.rs` needs.

use std::path::Path;
use std::time::{Duration, Instant};

use bigv_qemu_tests::brain::Admin;
use bigv_qemu_tests::cli::Bigv;
use bigv_qemu_tests::cluster::{Cluster, NodeSpec, until};
use bigv_qemu_tests::guest::{self, CustomerScenario};
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
fn brain_killed_vms_run_on_the_restarted_brain_reconverges_a_tail_cable_pull_stalls_io() {
    let Some((
        CustomerScenario {
            mut logs,
            guest: guest_image,
            data_dir,
            mut cluster,
            admin_cli,
            customer,
        },
        rt,
    )) = CustomerScenario::begin(
        "brain_killed_vms_run_on_the_restarted_brain_reconverges_a_tail_cable_pull_stalls_io",
        "failures-brain",
        "fbrain",
        2,
    )
    else {
        return;
    };
    let t = rt.block_on(brain_scenario(
        &admin_cli,
        &customer,
        &guest_image,
        &mut cluster,
        &mut logs,
    ));
    println!(
        "brain killed and restarted, tail cable pulled, image {}:\n{}\n{}",
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
            "keys seen",
            "tail offline",
            "io resumed",
            "tail back",
        ],
    );
    t.row("add server", Instant::now());
    guest::add_server(customer, SERVER, "1G", &[]);
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
    tail_scenario(cluster, &admin, &id, &mut t).await;
    t
}

/// How long the tail's cable stays out: past the brain's keepalive (it
/// sees the tail go) and long enough for the guest's I/O to visibly stall.
const TAIL_OUT: Duration = Duration::from_secs(30);
/// From the cable back to the stalled disc check's answer: TCP's
/// retransmission backoff (the next try may come ~25 s after the cable
/// returns) plus the check itself under nested virtualisation.
const IO_RESUME_LIMIT: Duration = Duration::from_secs(120);

/// The tail's (only) cable is pulled for [`TAIL_OUT`] while the guest
/// writes and verifies its pattern (a disc check started by a
/// ctrl-alt-delete through the API): the check stalls, the guest ticks
/// on, and once the cable is back the check completes with `DISC OK`,
/// finding the pattern this boot wrote before (no data lost), with no I/O
/// error anywhere on the guest's console.
async fn tail_scenario(cluster: &mut Cluster, admin: &Admin, id: &str, t: &mut Timings) {
    let tail_mac = cluster.nodes[1].spec.mac.clone();
    let head = &cluster.nodes[0].vm;
    let discs_before = guest::disc_lines(head).len();
    let (tick0, _) = guest::last_tick(head).expect("the guest ticks");
    let row = "tail cable out 30 s";
    t.row(row, Instant::now());
    cluster.nodes[1].vm.set_link(false);
    let out = Instant::now();
    guest::disc_check_by_keys(admin, SERVER).await;
    while out.elapsed() < TAIL_OUT {
        let head = &cluster.nodes[0].vm;
        if guest::guest_lines(head)
            .iter()
            .any(|l| l.contains(lines::CTRL_ALT_DEL))
        {
            t.mark(row, "keys seen");
        }
        if let Some(tl) = admin.node("/admin/tails", &tail_mac).await
            && tl["online"] == false
        {
            t.mark(row, "tail offline");
        }
        assert_eq!(
            guest::disc_lines(head).len(),
            discs_before,
            "the disc check finished while the tail's cable was out: {:?}",
            guest::disc_lines(head).last()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        t.get(row, "keys seen").is_some(),
        "the guest never saw the ctrl-alt-delete that starts its disc check"
    );
    let head = &cluster.nodes[0].vm;
    let (tick1, _) = guest::last_tick(head).expect("the guest ticks");
    assert!(
        tick1 as f64 >= tick0 as f64 + TAIL_OUT.as_secs_f64() * 0.8,
        "the guest stopped ticking while its disc stalled: {tick0} → {tick1}"
    );
    cluster.nodes[1].vm.set_link(true);
    let back = Instant::now();
    let disc = loop {
        let head = &cluster.nodes[0].vm;
        if let Some(d) = guest::disc_lines(head).get(discs_before) {
            t.mark(row, "io resumed");
            break d.clone();
        }
        assert!(!cluster.brain.exited(), "the brain exited");
        assert!(
            back.elapsed() < IO_RESUME_LIMIT,
            "the guest's disc check did not finish {IO_RESUME_LIMIT:?} after the tail's cable came back\n{}",
            t.render()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let resumed_after = back.elapsed();
    assert!(disc.contains(lines::DISC_OK), "{disc}");
    assert_eq!(
        lines::field(&disc, lines::DISC_OK, "previous"),
        Some(id),
        "the check must find the pattern this boot wrote before the outage: {disc}"
    );
    until(
        "the tail back online",
        120,
        &mut cluster.brain,
        async || {
            admin
                .node("/admin/tails", &tail_mac)
                .await
                .filter(|tl| tl["online"] == true)
        },
    )
    .await;
    t.mark(row, "tail back");
    let head = &cluster.nodes[0].vm;
    let errors: Vec<String> = guest::guest_lines(head)
        .into_iter()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("i/o error") || l.contains("disc fail") || l.contains("blk_update_request")
        })
        .collect();
    assert!(
        errors.is_empty(),
        "I/O errors on the guest's console: {errors:#?}"
    );
    assert_eq!(guest::boot_ids(head), [id], "the guest rebooted");
    eprintln!(
        "tail cable out {TAIL_OUT:?}: the disc check stalled, then {disc} {resumed_after:?} after the cable came back"
    );
}

/// The brain's fence timeout and margin for the head scenario: short, so
/// the test is quick; heads are told the timeout at their next session.
const FENCE_SECS: u64 = 15;
const MARGIN_SECS: u64 = 5;
/// A cable pull longer than the brain takes to see the head gone
/// (keepalive, ~20 s) and well under the default fence timeout (what
/// the heads were told when they joined).
const CABLE_OUT: Duration = Duration::from_secs(45);

#[test]
fn head_cables_pulled_short_nothing_moves_past_the_fence_the_vm_moves_once_head_powered_off_it_moves_back()
 {
    let Some((
        CustomerScenario {
            mut logs,
            guest: guest_image,
            data_dir,
            mut cluster,
            admin_cli,
            customer,
        },
        rt,
    )) = CustomerScenario::begin(
        "head_cables_pulled_short_nothing_moves_past_the_fence_the_vm_moves_once_head_powered_off_it_moves_back",
        "failures-head",
        "fhead",
        3,
    )
    else {
        return;
    };
    let t = rt.block_on(head_scenario(
        &admin_cli,
        &customer,
        &guest_image,
        &mut cluster,
        &mut logs,
    ));
    println!(
        "head cables pulled, past the fence, head powered off hard, image {}:\n{}\n{}",
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
            "head fenced",
            "vm on head",
            "guest boot",
            "disc ok",
            "head back",
        ],
    );
    t.row("add server", Instant::now());
    guest::add_server(customer, SERVER, "1G", &[]);
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
    let first_mac = cluster.nodes[first].spec.mac.clone();
    let other_mac = cluster.nodes[other].spec.mac.clone();

    // A short fence from now on. The heads were welcomed with the
    // default (120 s) and keep it until their next session; the brain
    // waits the longer of the two.
    admin
        .put(
            "/admin/settings",
            serde_json::json!({"fence_timeout_secs": FENCE_SECS, "fence_margin_secs": MARGIN_SECS}),
        )
        .await;

    // Both heads' cables are pulled (a switch outage) for less than their
    // fence timeout (still 120 s): the brain sees the heads go (unknown,
    // not dead), the guest ticks on, and when the cables are back the
    // heads rejoin — now told the short fence — with the same VM; nothing
    // moved, nothing restarted.
    let (tick0, _) = until("the guest to tick", 60, &mut cluster.brain, async || {
        guest::last_tick(&cluster.nodes[first].vm).filter(|(n, _)| *n >= 2)
    })
    .await;
    let orders = [
        vm_orders(&cluster.nodes[0].vm),
        vm_orders(&cluster.nodes[1].vm),
    ];
    let row = "cables out 45 s";
    t.row(row, Instant::now());
    cluster.nodes[first].vm.set_link(false);
    cluster.nodes[other].vm.set_link(false);
    let out = Instant::now();
    while out.elapsed() < CABLE_OUT {
        if let Some(h) = admin.node("/admin/heads", &first_mac).await
            && h["online"] == false
        {
            t.mark(row, "head offline");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.nodes[first].vm.set_link(true);
    cluster.nodes[other].vm.set_link(true);
    assert!(
        t.get(row, "head offline").is_some(),
        "the brain never saw the head go while its cable was out for {CABLE_OUT:?}"
    );
    until(
        "both heads back online",
        120,
        &mut cluster.brain,
        async || {
            let a = admin.node("/admin/heads", &first_mac).await?;
            let b = admin.node("/admin/heads", &other_mac).await?;
            (a["online"] == true && a["running_virtual_machines_count"] == 1 && b["online"] == true)
                .then_some(())
        },
    )
    .await;
    t.mark(row, "head back");
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

    let id2 = long_cable_pull(cluster, &admin, first, &id1, &mut t).await;

    // The plug is pulled on the head the VM now runs on (`other`): it
    // comes back on `first`.
    t.row("power off head", Instant::now());
    let pulled = Instant::now();
    cluster.nodes[other].vm.power_off_hard();
    eprintln!("head {other_mac} powered off at {:?}", pulled);
    let fence = Duration::from_secs(FENCE_SECS + MARGIN_SECS);
    let limit = fence + Duration::from_secs(60) + guest::GUEST_LIMIT;
    let deadline = Instant::now() + limit;
    // The brain notices (keepalive), then waits out the fence: the VM
    // must not start anywhere before.
    loop {
        if let Some(h) = admin.node("/admin/heads", &other_mac).await
            && h["online"] == false
        {
            t.mark("power off head", "head offline");
        }
        if let Some(h) = admin.node("/admin/heads", &first_mac).await
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
    // `first` shows its second boot of the guest.
    let (_, boot3, disc3) = wait_boot_on(
        cluster,
        &[first],
        1,
        "power off head",
        &mut t,
        guest::GUEST_LIMIT,
    )
    .await;
    let id3 = lines::boot_id(&boot3).unwrap().to_owned();
    assert!(id3 != id1 && id3 != id2, "a new boot on the other head");
    assert_eq!(
        lines::field(&disc3, lines::DISC_OK, "previous"),
        Some(id2.as_str()),
        "the new boot must find the previous boot's pattern on the disc: {disc3}"
    );
    let shown = customer.run(&["--json", "show", "server", SERVER]);
    assert!(
        shown.replace(' ', "").contains("\"power_on\":true"),
        "the server should be on: {shown}"
    );
    eprintln!("VM moved from {other_mac} to {first_mac} after {moved_after:?}: boot {id2} → {id3}");
    t
}

/// The head agent's line when its fence kills the VMs.
const FENCE_LINE: &str = "the brain has been away past the fence timeout";
/// Its line on the first session after that.
const FENCED_LINE: &str = "back on the spine after a fence";

/// The cable of `first`, the VM's head, is pulled for longer than the
/// fence timeout the brain gave it: the head kills the VM, then the brain
/// restarts it on the other head — never while the old copy runs (seen on
/// both consoles, polled in order: the old head's fence line before the
/// new head's `VM started`, no tick on the old head after its fence) —
/// the tail dropping the old head from the disc's access list. The cable
/// back, the head says it fenced and runs nothing. Returns the new boot's
/// id.
async fn long_cable_pull(
    cluster: &mut Cluster,
    admin: &Admin,
    first: usize,
    id1: &str,
    t: &mut Timings,
) -> String {
    let other = 1 - first;
    let first_mac = cluster.nodes[first].spec.mac.clone();
    let other_mac = cluster.nodes[other].spec.mac.clone();
    let starts_before = [
        head_log_count(&cluster.nodes[first].vm, "VM started"),
        head_log_count(&cluster.nodes[other].vm, "VM started"),
    ];
    let row = "cable out past fence";
    t.row(row, Instant::now());
    let out = Instant::now();
    cluster.nodes[first].vm.set_link(false);
    let limit = Duration::from_secs(20 + FENCE_SECS + MARGIN_SECS + 60);
    // Polls read the old head's console, then the new head's: a fence
    // seen at an earlier poll than the new start happened before it.
    let mut poll = 0usize;
    let mut fenced_at: Option<(usize, Option<(u64, f64)>)> = None;
    let started_at = loop {
        poll += 1;
        let old = &cluster.nodes[first].vm;
        let fenced_now = head_log_count(old, FENCE_LINE) > 0;
        let tick_now = guest::last_tick(old);
        let started = head_log_count(&cluster.nodes[other].vm, "VM started") > starts_before[1];
        if started {
            t.mark(row, "vm on head");
            break poll;
        }
        if let Some(h) = admin.node("/admin/heads", &first_mac).await
            && h["online"] == false
        {
            t.mark(row, "head offline");
        }
        match &mut fenced_at {
            None if fenced_now => {
                t.mark(row, "head fenced");
                fenced_at = Some((poll, None));
            }
            // The tick one poll after the fence line (the console echo may
            // lag the kill a little): the copy's last.
            Some((p, last @ None)) if poll > *p => *last = Some(tick_now.unwrap_or((0, 0.0))),
            _ => {}
        }
        assert!(!cluster.brain.exited(), "the brain exited");
        assert!(
            out.elapsed() < limit,
            "the VM did not start on the other head within {limit:?} of the cable pull\n{}",
            t.render()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (fence_poll, last_tick) = fenced_at.unwrap_or_else(|| {
        panic!(
            "the VM started on the other head while the old head had not yet fenced: two copies could run\n{}",
            t.render()
        )
    });
    assert!(
        fence_poll < started_at,
        "the old head's fence and the new start were seen at the same poll"
    );
    let fenced_secs = t.get(row, "head fenced").unwrap_or_default();
    assert!(
        fenced_secs >= FENCE_SECS as f64 - 6.0,
        "the head fenced {fenced_secs} s after its cable was pulled: before the brain's {FENCE_SECS} s"
    );
    let moved_secs = t.get(row, "vm on head").unwrap_or_default();
    assert!(
        moved_secs >= (FENCE_SECS + MARGIN_SECS) as f64,
        "the brain restarted the VM {moved_secs} s after the pull: before the fence timeout plus margin"
    );
    let (_, boot2, disc2) = wait_boot_on(cluster, &[other], 0, row, t, guest::GUEST_LIMIT).await;
    let id2 = lines::boot_id(&boot2).unwrap().to_owned();
    assert_ne!(id1, id2, "a new boot on the other head");
    assert_eq!(
        lines::field(&disc2, lines::DISC_OK, "previous"),
        Some(id1),
        "the new boot must find the first boot's pattern on the disc: {disc2}"
    );
    let old = &cluster.nodes[first].vm;
    let last_tick = last_tick.or_else(|| guest::last_tick(old));
    assert_eq!(
        guest::last_tick(old),
        last_tick,
        "the old copy ticked on after its head's fence"
    );
    let tail = &cluster.nodes[2].vm;
    assert!(
        tail.saw("peer removed from the access list")
            || tail.saw("refused: peer not in the access list"),
        "the tail neither dropped nor refused the old head when the disc's access list moved"
    );

    // The cable back: the head rejoins, says it fenced, runs nothing.
    cluster.nodes[first].vm.set_link(true);
    until(
        "the old head back online, empty",
        120,
        &mut cluster.brain,
        async || {
            admin
                .node("/admin/heads", &first_mac)
                .await
                .filter(|h| h["online"] == true && h["running_virtual_machines_count"] == 0)
        },
    )
    .await;
    t.mark(row, "head back");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let old = &cluster.nodes[first].vm;
    assert!(
        head_log_count(old, FENCED_LINE) > 0,
        "the head did not say it fenced when it came back"
    );
    assert_eq!(
        head_log_count(old, "VM started"),
        starts_before[0],
        "the old head started a VM after coming back"
    );
    assert_eq!(guest::last_tick(old), last_tick, "a rogue copy ticks");
    let h = admin
        .node("/admin/heads", &first_mac)
        .await
        .expect("the head");
    assert_eq!(h["running_virtual_machines_count"], 0, "{h}");
    let h = admin
        .node("/admin/heads", &other_mac)
        .await
        .expect("the other head");
    assert_eq!(h["running_virtual_machines_count"], 1, "{h}");
    eprintln!(
        "cable out past the fence: head fenced at {fenced_secs:.1} s, VM on the other head at {moved_secs:.1} s, boot {id1} → {id2}"
    );
    id2
}
