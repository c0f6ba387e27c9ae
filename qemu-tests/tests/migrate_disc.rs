//! Scenario 4 of issue 8, "live migration of a disc between tails while
//! the guest writes": a real brain, a head and two tails PXE-booted from
//! it (each tail with a blank data disc served as a `sata` pool), a
//! customer VM from the test guest with its disc on one tail; then, as an
//! operator, `bigv reset server` and at once `bigv admin migrate disc NAME
//! disc-1` (the real CLI, waiting for the operation) →
//!
//! - the guest's boot during the copy writes its 1 MiB pattern, syncs,
//!   drops its caches and reads it back: `DISC OK` naming the first boot
//!   as the writer of what it found, and no I/O error on its console;
//! - the disc is then in the other tail's pool (the brain's pool lists);
//! - sparseness kept: the destination pool's free space drops by the
//!   disc's data (template and patterns, < 200 MiB), not its 1 GiB;
//! - a second reset, now served only by the new tail: `DISC OK` naming the
//!   boot that wrote during the migration (the data verifies after).
//!
//! The guest writes at boot (its `disc` serial command cannot be typed
//! through a head yet), so "while the guest writes" is the reboot's
//! write-and-verify racing the copy. Prints the migration's total time.
//!
//! Slow: runs only with BIGV_SLOW_TESTS=1; needs what `customer.rs` needs.

use std::time::Instant;

use bigv_qemu_tests::brain::Admin;
use bigv_qemu_tests::cluster::{NodeSpec, until};
use bigv_qemu_tests::guest::{self, CustomerScenario, TEMPLATE, boot, guest_lines};
use bigv_qemu_tests::timings::Timings;
use bigv_test_guest::lines;
use serde_json::Value;

const SERVER: &str = "store1.default.acme";

#[test]
fn disc_migrates_live_between_tails() {
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
        "disc_migrates_live_between_tails",
        "migrate-disc",
        "migd",
        3,
    )
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
                    NodeSpec::tail_with_sata_disc(1, 4096),
                    NodeSpec::tail_with_sata_disc(2, 4096),
                ],
                &mut logs,
            )
            .await;
        let pools = until("both tails' pools", 60, &mut cluster.brain, async || {
            let p = admin.get("/admin/storage_pools").await;
            (p.as_array().map_or(0, Vec::len) == 2).then_some(p)
        })
        .await;
        eprintln!("pools: {pools}");
        guest::operator_and_customer_setup(&admin_cli, &alice, &guest);
        let mut t = Timings::titled("disc migration (s after the command)", &["done", "disc ok"]);
        t.row("add server", Instant::now());
        alice.run(&[
            "add", "server", SERVER, "--image", TEMPLATE, "--memory", "256M", "--cores", "1",
            "--disc", "1G",
        ]);
        let head = &cluster.nodes[0].vm;
        let first = until(
            "the guest's first DISC OK",
            300,
            &mut cluster.brain,
            async || boot(head, 0).and_then(|(b, d)| Some((b, d?))),
        )
        .await;
        t.mark("add server", "disc ok");
        assert!(first.1.contains(lines::DISC_OK), "{}", first.1);
        let id1 = lines::boot_id(&first.0).unwrap().to_owned();
        let before = tail_of_disc(&admin).await;
        eprintln!("first boot: {first:?}; the disc is on {before}");
        // The other pool's free space before it holds the disc (MiB, from
        // the tail's statvfs): what the copy takes from it shows whether
        // the holes stayed holes.
        let (dest_pool, dest_free_before) = other_pool(&admin).await;

        // Reboot the guest (it writes and verifies at boot) and migrate its
        // disc meanwhile.
        t.row("reset, migrate disc", Instant::now());
        alice.run(&["reset", "server", SERVER]);
        let out = admin_cli.run_all(&["admin", "migrate", "disc", SERVER, "disc-1"]);
        t.mark("reset, migrate disc", "done");
        eprintln!("bigv admin migrate disc: {out}");
        let second = until(
            "the guest's DISC OK across the handover (a stall this long: the new tail's neighbour advertisement missing?)",
            60,
            &mut cluster.brain,
            async || boot(head, 1).and_then(|(b, d)| Some((b, d?))),
        )
        .await;
        t.mark("reset, migrate disc", "disc ok");
        eprintln!("boot during the migration: {second:?}");
        assert_eq!(
            lines::field(&second.1, lines::DISC_OK, "previous"),
            Some(id1.as_str()),
            "{}",
            second.1
        );
        let id2 = lines::boot_id(&second.0).unwrap().to_owned();
        let after = until(
            "the disc to be on the other tail",
            120,
            &mut cluster.brain,
            async || {
                let now = tail_of_disc(&admin).await;
                (now != before).then_some(now)
            },
        )
        .await;
        eprintln!("the disc moved from {before} to {after}");

        // Sparseness kept: the 1 GiB disc holds the template (64 MiB) and
        // the guest's patterns; the destination pool loses about that,
        // not the disc's size. (Tails report pools every 10 s.)
        until(
            "the destination pool's free space to show the copy",
            60,
            &mut cluster.brain,
            async || {
                let free = pool_free(&admin, &dest_pool).await?;
                (free < dest_free_before).then_some(())
            },
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_secs(12)).await;
        let dest_free_after = pool_free(&admin, &dest_pool).await.expect("the pool");
        let taken = dest_free_before.saturating_sub(dest_free_after);
        eprintln!(
            "pool {dest_pool}: {dest_free_before} MiB free before, {dest_free_after} MiB after: the copy took {taken} MiB of a 1024 MiB disc"
        );
        assert!(
            taken <= SPARSE_LIMIT_MIB,
            "the copy took {taken} MiB on the destination for a 1 GiB disc holding ~70 MiB: holes were filled"
        );

        // Served by the new tail alone: the pattern written during the
        // migration is there.
        t.row("reset on the new tail", Instant::now());
        alice.run(&["reset", "server", SERVER]);
        let third = until(
            "the guest's DISC OK on the new tail",
            300,
            &mut cluster.brain,
            async || boot(head, 2).and_then(|(b, d)| Some((b, d?))),
        )
        .await;
        t.mark("reset on the new tail", "disc ok");
        eprintln!("boot on the new tail: {third:?}");
        assert_eq!(
            lines::field(&third.1, lines::DISC_OK, "previous"),
            Some(id2.as_str()),
            "{}",
            third.1
        );
        let errors: Vec<String> = guest_lines(head)
            .into_iter()
            .filter(|l| l.contains("I/O error") || l.contains(lines::DISC_FAIL))
            .collect();
        assert!(errors.is_empty(), "the guest saw I/O errors: {errors:#?}");
        t
    });
    println!(
        "disc live migration, image {}:\n{}\n{}",
        cluster.version,
        cluster.timings.render(),
        t.render()
    );
    drop(cluster);
    drop(data_dir);
}

/// Most the destination pool may lose to the copy: the disc's data (the
/// 64 MiB template plus 1 MiB patterns) with room for ext4's own
/// bookkeeping, far under the disc's 1024 MiB.
const SPARSE_LIMIT_MIB: u64 = 200;

/// The pool that does not hold the disc: (name, free MiB).
async fn other_pool(admin: &Admin) -> (String, u64) {
    let pools = admin.get("/admin/storage_pools").await;
    let empty: Vec<&Value> = pools
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["discs_count"] == 0)
        .collect();
    assert_eq!(empty.len(), 1, "exactly one pool is empty: {pools}");
    let name = empty[0]["name"].as_str().expect("a pool name").to_owned();
    let free = empty[0]["free_space"].as_u64().expect("free_space");
    assert!(free > 1024, "the empty pool has room: {pools}");
    (name, free)
}

/// A pool's free space (MiB) as its tail last reported it.
async fn pool_free(admin: &Admin, name: &str) -> Option<u64> {
    let pools = admin.get("/admin/storage_pools").await;
    pools.as_array()?.iter().find(|p| p["name"] == name)?["free_space"].as_u64()
}

/// The tail whose pool holds the (only) disc, as the brain lists pools.
async fn tail_of_disc(admin: &Admin) -> String {
    let pools = admin.get("/admin/storage_pools").await;
    let holding: Vec<&Value> = pools
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["discs_count"] == 1)
        .collect();
    assert_eq!(holding.len(), 1, "exactly one pool holds the disc: {pools}");
    format!("{} (pool {})", holding[0]["tail"], holding[0]["name"])
}
