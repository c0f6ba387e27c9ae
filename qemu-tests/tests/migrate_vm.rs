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
//!   previous=<first boot id>`).
//!
//! Prints the migration's total time (the CLI waits for the operation) and
//! the downtime qemu reported on the source, which the CLI shows (asserted).
//!
//! Slow: runs only with BIGV_SLOW_TESTS=1; needs what `customer.rs` needs.

use std::time::{Duration, Instant};

use bigv_qemu_tests::brain::Admin;
use bigv_qemu_tests::cluster::{NodeSpec, until};
use bigv_qemu_tests::guest::{self, CustomerScenario, TEMPLATE, boot, ticks};
use bigv_qemu_tests::timings::Timings;
use bigv_test_guest::lines;

const SERVER: &str = "mig1.default.acme";

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
        let mut t = Timings::titled("migration (s after the command)", &["done", "ticks on new head", "disc ok"]);
        t.row("add server", Instant::now());
        alice.run(&[
            "add", "server", SERVER, "--image", TEMPLATE, "--memory", "256M", "--cores", "1",
            "--disc", "1G",
        ]);
        let heads = [cluster.nodes[0].spec.mac.clone(), cluster.nodes[1].spec.mac.clone()];
        // The first boot's DISC OK, on whichever head the scheduler chose.
        let (src, first) = until("the guest's first DISC OK", 300, &mut cluster.brain, async || {
            (0..2).find_map(|i| {
                boot(&cluster.nodes[i].vm, 0).and_then(|(b, d)| Some((i, (b, d?))))
            })
        })
        .await;
        t.mark("add server", "disc ok");
        let dst = 1 - src;
        eprintln!("first boot on head {}: {:?}", heads[src], first);
        assert!(first.1.contains(lines::DISC_OK), "{}", first.1);
        let id1 = lines::boot_id(&first.0).unwrap().to_owned();
        // Let it tick a little so there is something to continue.
        tokio::time::sleep(Duration::from_secs(3)).await;

        t.row("migrate server", Instant::now());
        let out = admin_cli.run_all(&["admin", "migrate", "server", SERVER]);
        t.mark("migrate server", "done");
        eprintln!("bigv admin migrate server: {out}");
        let count = async |mac: &str| {
            admin.node("/admin/heads", mac).await.map(|h| h["running_virtual_machines_count"].clone())
        };
        until("the VM to run on the other head only", 120, &mut cluster.brain, async || {
            (count(&heads[dst]).await == Some(1.into()) && count(&heads[src]).await == Some(0.into()))
                .then_some(())
        })
        .await;
        let src_ticks = ticks(&cluster.nodes[src].vm);
        let (last_n, last_up) = *src_ticks.last().expect("ticks on the source head");
        let resumed = until("the guest's ticks on the new head", 120, &mut cluster.brain, async || {
            ticks(&cluster.nodes[dst].vm).into_iter().find(|(n, _)| *n > last_n)
        })
        .await;
        t.mark("migrate server", "ticks on new head");
        eprintln!("last tick on the old head: {last_n} uptime={last_up}; first new on the new head: {resumed:?}");
        assert!(resumed.1 > last_up, "uptime went on: {last_up} then {resumed:?}");
        assert!(
            boot(&cluster.nodes[dst].vm, 0).is_none(),
            "the guest booted again on the new head instead of migrating"
        );
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
            boot(&cluster.nodes[dst].vm, 0).and_then(|(b, d)| Some((b, d?)))
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
