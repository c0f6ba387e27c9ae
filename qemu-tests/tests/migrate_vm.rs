//! Scenario 3 of issue 8, "live migration of a VM between heads": a real
//! brain, two heads and a tail PXE-booted from it, a customer VM from the
//! test guest running on one head with its disc on the tail; then
//! `bigv admin migrate server NAME` (the real CLI, as an operator) →
//!
//! - the VM runs on the other head (the brain's head counts) and the old
//!   head's qemu is gone;
//! - the guest did not reboot: the new head's echo of its console shows
//!   its ticks continuing (tick numbers and uptime above the last ones the
//!   old head echoed) and no new boot line;
//! - its data is intact: `bigv reset server` → the next boot, on the new
//!   head, finds the pattern the first boot wrote (`DISC OK
//!   previous=<first boot id>`);
//! - its network works before and after the move: a second VM, `peer1`,
//!   on VLAN 5 too, answers its pings (typed on its SSH console, a new
//!   login on the new head after the move), and right after the move,
//!   before it pings anything, the peer's pings reach it (the network
//!   learnt where it went). The peer stays on one head,
//!   so one of the two rounds crosses the public LAN between the heads,
//!   tagged, and the other stays on a head's VLAN 5 bridge.
//!
//! The two VMs may share a head: each one's console lines are told apart
//! by the VM id the head tags them with (`guest::vm_lines`).
//! Prints the migration's total time (the CLI waits for the operation) and
//! the downtime qemu reported on the source, which the CLI shows (asserted).
//!
//! Slow: runs only with BIGV_SLOW_TESTS=1; needs what `customer.rs` needs.

use std::time::{Duration, Instant};

use bigv_qemu_tests::brain::Admin;
use bigv_qemu_tests::cli::Bigv;
use bigv_qemu_tests::cluster::{NodeSpec, until};
use bigv_qemu_tests::guest::{self, CustomerScenario, boot_of, ticks_of, vm_lines};
use bigv_qemu_tests::timings::Timings;
use bigv_test_guest::lines;

const SERVER: &str = "mig1.default.acme";
/// The VM `SERVER` pings, on the same VLAN.
const PEER: &str = "peer1.default.acme";

#[test]
fn vm_migrates_live_between_heads() {
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
    )) = CustomerScenario::begin("vm_migrates_live_between_heads", "migrate-vm", "migv", 3)
    else {
        return;
    };
    let t = rt.block_on(async {
        let admin = Admin::login(&mut cluster.brain).await;
        cluster
            .bring_up(
                &admin,
                &[
                    NodeSpec::head(1),
                    NodeSpec::head(2),
                    NodeSpec::tail_with_sata_disc(1, 4096),
                ],
                &mut logs,
            )
            .await;
        guest::operator_and_customer_setup(&admin_cli, &alice, &guest);
        guest::management_setup(&admin_cli);
        let mut t = Timings::titled(
            "migration (s after the command)",
            &["done", "ticks on new head", "ping ok", "disc ok"],
        );
        t.row("add server", Instant::now());
        for name in [SERVER, PEER] {
            guest::add_server(&alice, name, "1G", &[]);
        }
        let vm = server_id(&alice, SERVER);
        let peer = server_id(&alice, PEER);
        let heads = [cluster.nodes[0].spec.mac.clone(), cluster.nodes[1].spec.mac.clone()];
        // The first boot's DISC OK, on whichever head the scheduler chose.
        let (src, first) = until("the guest's first DISC OK", 300, &mut cluster.brain, async || {
            (0..2).find_map(|i| {
                boot_of(&cluster.nodes[i].vm, vm, 0).and_then(|(b, d)| Some((i, (b, d?))))
            })
        })
        .await;
        // The peer up with its address (its DHCP lease), wherever it runs.
        let peer_head = until("the peer's DHCP lease", 300, &mut cluster.brain, async || {
            (0..2).find(|i| {
                vm_lines(&cluster.nodes[*i].vm, peer)
                    .iter()
                    .any(|l| lines::net_lease(l).is_some())
            })
        })
        .await;
        let peer_ip = address_of(&alice, PEER);
        t.mark("add server", "disc ok");
        let dst = 1 - src;
        eprintln!("first boot on head {}: {:?}", heads[src], first);
        assert!(first.1.contains(lines::DISC_OK), "{}", first.1);
        let id1 = lines::boot_id(&first.0).unwrap().to_owned();
        // Its network, before the move.
        let mut console = guest::console_session(&alice, SERVER, &id1);
        let before = ping(&mut console, 1, &peer_ip);
        eprintln!(
            "before the move, on head {} with the peer on head {}: {before}",
            heads[src], heads[peer_head]
        );
        drop(console);
        // Let it tick a little so there is something to continue.
        tokio::time::sleep(Duration::from_secs(3)).await;

        t.row("migrate server", Instant::now());
        let out = admin_cli.run_all(&["admin", "migrate", "server", SERVER]);
        t.mark("migrate server", "done");
        eprintln!("bigv admin migrate server: {out}");
        let count = async |mac: &str| {
            admin.node("/admin/heads", mac).await.map(|h| h["running_virtual_machines_count"].clone())
        };
        // The peer stays where it is: it counts on its head.
        let peer_on = |i: usize| u64::from(i == peer_head);
        until("the VM to run on the other head only", 120, &mut cluster.brain, async || {
            (count(&heads[dst]).await == Some((1 + peer_on(dst)).into())
                && count(&heads[src]).await == Some(peer_on(src).into()))
            .then_some(())
        })
        .await;
        let src_ticks = ticks_of(&cluster.nodes[src].vm, vm);
        let (last_n, last_up) = *src_ticks.last().expect("ticks on the source head");
        let resumed = until("the guest's ticks on the new head", 120, &mut cluster.brain, async || {
            ticks_of(&cluster.nodes[dst].vm, vm).into_iter().find(|(n, _)| *n > last_n)
        })
        .await;
        t.mark("migrate server", "ticks on new head");
        eprintln!("last tick on the old head: {last_n} uptime={last_up}; first new on the new head: {resumed:?}");
        assert!(resumed.1 > last_up, "uptime went on: {last_up} then {resumed:?}");
        assert!(
            boot_of(&cluster.nodes[dst].vm, vm, 0).is_none(),
            "the guest booted again on the new head instead of migrating"
        );
        // Reachable right after the move: the peer pings it first (the
        // public LAN and the heads' bridges must know where it went before
        // it sends anything itself).
        let vm_ip = address_of(&alice, SERVER);
        let mut peer_console = guest::console_session(&alice, PEER, lines::BOOT);
        let inbound = ping(&mut peer_console, 1, &vm_ip);
        eprintln!("the peer's ping to it right after the move: {inbound}");
        drop(peer_console);
        // Its network, after the move: its console is on the new head now
        // (its scroll-back there starts at the move: docs/head.md).
        let mut console = guest::console_session(&alice, SERVER, lines::TICK);
        let after = ping(&mut console, 2, &peer_ip);
        t.mark("migrate server", "ping ok");
        eprintln!(
            "after the move, on head {} with the peer on head {}: {after}",
            heads[dst], heads[peer_head]
        );
        drop(console);
        // qemu's downtime, as the source head reported it to the brain
        // and the CLI shows it ("Done: migrate …, downtime N ms.").
        let downtime: u64 = out
            .split("downtime ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the CLI did not show the migration's downtime: {out}"));
        assert!(downtime < 10_000, "downtime {downtime} ms");
        println!("downtime (qemu's, from the source head): {downtime} ms");

        // Data: the next boot, on the new head, finds the first boot's pattern.
        t.row("reset server", Instant::now());
        alice.run(&["reset", "server", SERVER]);
        let second = until("the guest's DISC OK after the reset", 300, &mut cluster.brain, async || {
            boot_of(&cluster.nodes[dst].vm, vm, 0).and_then(|(b, d)| Some((b, d?)))
        })
        .await;
        t.mark("reset server", "disc ok");
        eprintln!("after the reset: {second:?}");
        assert_ne!(lines::boot_id(&second.0), Some(id1.as_str()));
        assert_eq!(
            lines::field(&second.1, lines::DISC_OK, "previous"),
            Some(id1.as_str()),
            "the boot after the migration must find the first boot's pattern: {}",
            second.1
        );
        t
    });
    println!(
        "VM live migration, image {}:\n{}\n{}",
        cluster.version,
        cluster.timings.render(),
        t.render()
    );
    drop(cluster);
    drop(data_dir);
}

/// The brain's id of a server (what heads tag its console lines with).
fn server_id(customer: &Bigv, name: &str) -> u64 {
    let shown: serde_json::Value =
        serde_json::from_str(&customer.run(&["--json", "show", "server", name]))
            .expect("show server --json");
    shown["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("an id for {name}: {shown}"))
}

/// A server's (first) address on its VLAN.
fn address_of(customer: &Bigv, name: &str) -> String {
    let shown: serde_json::Value =
        serde_json::from_str(&customer.run(&["--json", "show", "server", name]))
            .expect("show server --json");
    shown["network_interfaces"][0]["ips"][0]
        .as_str()
        .unwrap_or_else(|| panic!("an address for {name}: {shown}"))
        .to_owned()
}

/// Types `sh ping …` (the guest's `n`th `sh` command this boot) and
/// waits for busybox ping's summary; asserts the peer answered. Returns
/// the summary.
fn ping(console: &mut bigv_qemu_tests::console::Session, n: u64, ip: &str) -> String {
    console.type_line(&format!("sh ping -c 3 -W 5 {ip}"));
    let summary = console.wait_until(
        &format!("ping {ip}'s summary"),
        Duration::from_secs(60),
        |seen| {
            seen.iter()
                .find_map(|(_, l)| lines::sh_out(l, n).filter(|o| o.contains("packets received")))
                .map(str::to_owned)
        },
    );
    let received: u32 = summary
        .split(", ")
        .find_map(|part| part.strip_suffix(" packets received"))
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("ping's summary: {summary}"));
    assert!(received >= 1, "the peer {ip} did not answer: {summary}");
    summary
}
