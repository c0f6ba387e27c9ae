//! Scenario 4 of issue 8, "live migration of a disc between tails while
//! the guest writes": a real brain, a head and two tails PXE-booted from
//! it (each tail with a blank data disc served as a `sata` pool), a
//! customer VM from the test guest with its disc on one tail and an SSH
//! console on a management address. Then:
//!
//! 1. the customer logs in to the VM's SSH console (OpenSSH, the BigV
//!    password) and types a writer on the guest's serial console (its
//!    `sh` command, busybox's shell): round after round it takes 1 MiB
//!    from `/dev/urandom`, writes it with direct I/O and an fsync into
//!    the next of [`SLOTS`] 1 MiB slots of the disc's data region, and
//!    prints `W <round> <slot> <md5>` (`WFAIL …` if a write fails), until
//!    a stop file appears;
//! 2. once every slot was written, the operator runs `bigv admin migrate
//!    disc NAME disc-1` (the real CLI, waiting for the operation) while
//!    the writer goes on (the copy, the template's data and the 64 MiB of
//!    slots, and the handover take about a second, in which a writer
//!    round of ~0.1 s runs several times);
//! 3. the writer wrote before the command, while it ran and after it
//!    returned (each `W` line's arrival on the console timed against the
//!    command), no write failed, the guest's console shows no `I/O
//!    error`, and, stopped by `touch /tmp/stop`, the writer exits 0;
//! 4. the disc is in the other tail's pool (the brain's pool lists), and
//!    every slot read back with direct I/O, now served by the new tail
//!    only, has the md5 of the last data written to it: checksums match;
//! 5. sparseness kept: the destination pool's free space drops by the
//!    disc's data (template and slots, < 200 MiB), not its 1 GiB;
//! 6. a reset, the guest booting from the disc on the new tail: `DISC OK`
//!    naming the first boot as the writer of the boot pattern (the first
//!    MiB of the data region, which the writer's slots stay clear of).
//!
//! Earlier the guest could not be typed to through a head, and the test
//! raced a reboot's 1 MiB pattern write against the copy instead; the
//! writer supersedes it (the copy is longer, and writes go on through the
//! whole migration, not only around the handover). Prints the timings.
//!
//! Slow: runs only with BIGV_SLOW_TESTS=1; needs what `customer.rs` needs
//! (and OpenSSH's client).

use std::time::{Duration, Instant};

use bigv_qemu_tests::brain::Admin;
use bigv_qemu_tests::cluster::{NodeSpec, until};
use bigv_qemu_tests::console::{MAX_LINE, Session};
use bigv_qemu_tests::guest::{self, CustomerScenario, boot, guest_lines};
use bigv_qemu_tests::timings::Timings;
use bigv_test_guest::{layout, lines};
use serde_json::Value;

const SERVER: &str = "store1.default.acme";
/// The customer's disc, MiB.
const DISC_MIB: u64 = 1024;
/// The writer's slots: [`SLOTS`] slots of 1 MiB from MiB
/// [`FIRST_SLOT_MIB`] of the disc. Inside the data region (from 41 MiB),
/// well clear of its first MiB (the boot pattern) and of its last sector
/// (the firstboot marker), and past the template's 64 MiB: the slots are
/// holes until written.
const FIRST_SLOT_MIB: u64 = 128;
const SLOTS: u64 = 64;
/// The writer stops by itself after this many rounds, whatever happens.
const MAX_ROUNDS: u64 = 3000;
/// Writes seen after the command returned before the writer is stopped.
const WRITES_AFTER: usize = 3;
/// The longest a write may wait (the copy's pause at the handover, a
/// reconnect to the new tail); over it, the guest's I/O stalled.
const STALL_LIMIT: Duration = Duration::from_secs(60);

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
        guest::management_setup(&admin_cli);
        let mut t = Timings::titled(
            "step (s after its start)",
            &["done", "disc ok", "1st write", "max gap"],
        );
        t.row("add server", Instant::now());
        guest::add_server(&alice, SERVER, &format!("{DISC_MIB}M"), &[]);
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
        let dev = lines::field(&first.1, lines::DISC_OK, "dev")
            .unwrap_or_else(|| panic!("no dev in {}", first.1))
            .to_owned();
        // The slots are inside the data region, clear of the boot
        // pattern's MiB and of the last sector.
        let data_start_mib = (u64::from(layout::data_start()) * layout::SECTOR) >> 20;
        assert!(FIRST_SLOT_MIB > data_start_mib + 1 && FIRST_SLOT_MIB + SLOTS < DISC_MIB);
        let before = tail_of_disc(&admin).await;
        eprintln!("first boot: {first:?}; the disc is on {before}");

        // 1. The writer, typed on the SSH console.
        let mut console = guest::console_session(&alice, SERVER, &id1);
        let script = writer(&dev);
        t.row("writer: every slot once", Instant::now());
        console.type_line(&format!("sh {script}"));
        let w = sh_number(&mut console, &script);
        let prefilled = console.wait_until(
            "the writer's first round over every slot",
            Duration::from_secs(900),
            |seen| {
                let run = Run::of(seen, w);
                run.fail_early();
                (run.writes.len() as u64 >= SLOTS).then_some(run)
            },
        );
        t.mark_at(
            "writer: every slot once",
            "1st write",
            prefilled.writes[0].at,
        );
        t.mark("writer: every slot once", "done");
        t.set(
            "writer: every slot once",
            "max gap",
            prefilled.max_gap(None, None).as_secs_f64(),
        );
        let per_round = prefilled.writes[prefilled.writes.len() - 1]
            .at
            .duration_since(prefilled.writes[0].at)
            / (prefilled.writes.len() as u32 - 1);
        eprintln!("the writer wrote every slot once; a round takes {per_round:?}");

        // The other pool's free space before it holds the disc (MiB, from
        // the tail's statvfs): what the copy takes from it shows whether
        // the holes stayed holes.
        let (dest_pool, dest_free_before) = other_pool(&admin).await;

        // 2. The migration, while the writer goes on.
        t.row("migrate disc", Instant::now());
        let started = Instant::now();
        let out = admin_cli.run_all(&["admin", "migrate", "disc", SERVER, "disc-1"]);
        let returned = Instant::now();
        t.mark("migrate disc", "done");
        eprintln!("bigv admin migrate disc: {out}");
        let after = console.wait_until(
            &format!("{WRITES_AFTER} writes after the migration returned"),
            STALL_LIMIT * 2,
            |seen| {
                let run = Run::of(seen, w);
                run.fail_early();
                (run.writes.iter().filter(|x| x.at > returned).count() >= WRITES_AFTER)
                    .then_some(run)
            },
        );
        if let Some(x) = after.writes.iter().find(|x| x.at > started) {
            t.mark_at("migrate disc", "1st write", x.at);
        }
        let gap = after.max_gap(Some(started), Some(returned));
        t.set("migrate disc", "max gap", gap.as_secs_f64());

        // 3. Stop the writer: it ends its round and exits 0 (no failure).
        t.row("stop, read back", Instant::now());
        console.type_line("sh touch /tmp/stop");
        let run = console.wait_until("the writer's end", Duration::from_secs(120), |seen| {
            let run = Run::of(seen, w);
            run.exit.is_some().then_some(run)
        });
        eprintln!(
            "the writer: {} writes, {} failures, {:?}, exit {:?}",
            run.writes.len(),
            run.failures.len(),
            run.end,
            run.exit
        );
        assert!(run.failures.is_empty(), "writes failed: {:#?}", run.failures);
        assert_eq!(run.exit, Some(0), "the writer's status; {:?}", run.end);
        let (pre, during, post) = (
            run.writes.iter().filter(|x| x.at < started).count(),
            run.writes
                .iter()
                .filter(|x| x.at >= started && x.at <= returned)
                .count(),
            run.writes.iter().filter(|x| x.at > returned).count(),
        );
        eprintln!(
            "writes seen before the migrate command: {pre}, while it ran ({:.1} s): {during}, after it returned: {post}; the longest wait for a write across it: {gap:?}",
            (returned - started).as_secs_f64()
        );
        assert!(
            pre >= SLOTS as usize && during >= 1 && post >= WRITES_AFTER,
            "the writes did not overlap the migration: {pre} before, {during} during, {post} after"
        );
        assert!(gap < STALL_LIMIT, "a write waited {gap:?}");
        no_io_errors(head);

        // 4. The disc is on the other tail, and serves what was written.
        let moved_to = until(
            "the disc to be on the other tail",
            120,
            &mut cluster.brain,
            async || {
                let now = tail_of_disc(&admin).await;
                (now != before).then_some(now)
            },
        )
        .await;
        eprintln!("the disc moved from {before} to {moved_to}");
        let script = reader(&dev);
        console.type_line(&format!("sh {script}"));
        let r = sh_number(&mut console, &script);
        let (read, status) =
            console.wait_until("the read-back's end", Duration::from_secs(600), |seen| {
                let mut read = vec![];
                for (_, l) in seen {
                    if let Some(status) = lines::sh_exit(l, r) {
                        return Some((read, status));
                    }
                    if let Some(out) = lines::sh_out(l, r) {
                        read.push(out.to_owned());
                    }
                }
                None
            });
        t.mark("stop, read back", "done");
        assert_eq!(status, 0, "the read-back: {read:#?}");
        let last = run.last_per_slot();
        assert_eq!(last.len() as u64, SLOTS, "every slot was written");
        let mut checked = 0;
        for line in &read {
            let (slot, md5) = read_line(line).unwrap_or_else(|| panic!("reading back: {line}"));
            let wrote = last
                .get(&slot)
                .unwrap_or_else(|| panic!("slot {slot} read back was never written"));
            assert_eq!(
                &md5, wrote,
                "slot {slot} on the new tail differs from the last write to it"
            );
            checked += 1;
        }
        assert_eq!(checked, SLOTS, "every slot read back: {read:#?}");
        eprintln!("all {SLOTS} slots read back from the new tail with the md5 last written");
        assert!(
            !console.text().contains("fell behind"),
            "the console skipped output: {}",
            console.text()
        );
        drop(console);

        // 5. Sparseness kept: the 1 GiB disc holds the template (64 MiB,
        // mostly holes) and the 64 MiB of slots; the destination pool
        // loses about that, not the disc's size. (Tails report pools
        // every 10 s.)
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
        tokio::time::sleep(Duration::from_secs(12)).await;
        let dest_free_after = pool_free(&admin, &dest_pool).await.expect("the pool");
        let taken = dest_free_before.saturating_sub(dest_free_after);
        eprintln!(
            "pool {dest_pool}: {dest_free_before} MiB free before, {dest_free_after} MiB after: the copy took {taken} MiB of a {DISC_MIB} MiB disc"
        );
        assert!(
            taken <= SPARSE_LIMIT_MIB,
            "the copy took {taken} MiB on the destination for a 1 GiB disc holding ~80 MiB: holes were filled"
        );

        // 6. A boot from the disc on the new tail alone: the boot pattern
        // the first boot wrote is there.
        t.row("reset on the new tail", Instant::now());
        alice.run(&["reset", "server", SERVER]);
        let second = until(
            "the guest's DISC OK on the new tail",
            300,
            &mut cluster.brain,
            async || boot(head, 1).and_then(|(b, d)| Some((b, d?))),
        )
        .await;
        t.mark("reset on the new tail", "disc ok");
        eprintln!("boot on the new tail: {second:?}");
        assert_eq!(
            lines::field(&second.1, lines::DISC_OK, "previous"),
            Some(id1.as_str()),
            "{}",
            second.1
        );
        no_io_errors(head);
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
/// template's ~10 MiB of data, the boot pattern, the 64 MiB of slots)
/// with room for ext4's own bookkeeping, far under the disc's 1024 MiB.
const SPARSE_LIMIT_MIB: u64 = 200;

/// The writer, for the guest's `sh` command (one line; busybox ash and
/// busybox dd 1.35): round `i` writes fresh random data to slot
/// `FIRST_SLOT_MIB + i % SLOTS` of `dev`, bypassing the page cache and
/// flushed, and prints `W <i> <slot> <md5>`, or `WFAIL <i> <slot> <dd's
/// message>`; it stops at `/tmp/stop` or after [`MAX_ROUNDS`], prints
/// `WEND rounds=… failed=…` and exits 0 only if no write failed.
fn writer(dev: &str) -> String {
    format!(
        "mkdir -p /tmp; rm -f /tmp/stop; i=0; f=0; \
         while [ $i -lt {MAX_ROUNDS} ] && [ ! -e /tmp/stop ]; do s=$(({FIRST_SLOT_MIB}+i%{SLOTS})); \
         if dd if=/dev/urandom of=/tmp/w bs=1M count=1 iflag=fullblock 2>/tmp/e \
         && dd if=/tmp/w of={dev} bs=1M seek=$s oflag=direct conv=fsync,notrunc 2>/tmp/e; \
         then m=$(md5sum </tmp/w); echo W $i $s ${{m%% *}}; \
         else f=$((f+1)); echo WFAIL $i $s $(cat /tmp/e); fi; i=$((i+1)); done; \
         echo WEND rounds=$i failed=$f; [ $f = 0 ]"
    )
}

/// Reads every slot back with direct I/O: `R <slot> <md5>` each, or
/// `RFAIL <slot> <dd's message>` (and exits 1).
fn reader(dev: &str) -> String {
    let last = FIRST_SLOT_MIB + SLOTS - 1;
    format!(
        "f=0; for s in $(seq {FIRST_SLOT_MIB} {last}); do \
         if dd if={dev} of=/tmp/r bs=1M count=1 skip=$s iflag=direct 2>/tmp/e; \
         then m=$(md5sum </tmp/r); echo R $s ${{m%% *}}; \
         else f=1; echo RFAIL $s $(cat /tmp/e); fi; done; [ $f = 0 ]"
    )
}

/// The number of the guest's `sh` command that runs `script`.
fn sh_number(console: &mut Session, script: &str) -> u64 {
    console.wait_until("the command's SH-START", Duration::from_secs(60), |seen| {
        seen.iter().find_map(|(_, l)| lines::sh_started(l, script))
    })
}

/// One write the writer reported, and when its line arrived.
#[derive(Debug, Clone)]
struct Written {
    at: Instant,
    slot: u64,
    md5: String,
}

/// What the writer (`sh` command `n`) showed so far.
#[derive(Debug, Default)]
struct Run {
    writes: Vec<Written>,
    failures: Vec<String>,
    end: Option<String>,
    exit: Option<i32>,
}

impl Run {
    fn of(seen: &[(Instant, String)], n: u64) -> Run {
        let mut run = Run::default();
        for (at, l) in seen {
            if let Some(status) = lines::sh_exit(l, n) {
                run.exit = Some(status);
            }
            let Some(out) = lines::sh_out(l, n) else {
                continue;
            };
            if let Some((slot, md5)) = write_line(out) {
                run.writes.push(Written { at: *at, slot, md5 });
            } else if out.starts_with("WEND") {
                run.end = Some(out.to_owned());
            } else {
                run.failures.push(out.to_owned());
            }
        }
        run
    }

    /// Panics at a failed write or the writer's end while it should run.
    fn fail_early(&self) {
        assert!(
            self.failures.is_empty() && self.exit.is_none(),
            "the writer: {self:#?}"
        );
    }

    /// The longest wait between two consecutive writes, of those pairs
    /// that overlap `from`…`to` (all without bounds): how long the guest's
    /// writes stalled across a step.
    fn max_gap(&self, from: Option<Instant>, to: Option<Instant>) -> Duration {
        self.writes
            .windows(2)
            .filter(|w| from.is_none_or(|f| w[1].at > f) && to.is_none_or(|t| w[0].at < t))
            .map(|w| w[1].at - w[0].at)
            .max()
            .unwrap_or_default()
    }

    /// Each slot's md5 as last written.
    fn last_per_slot(&self) -> std::collections::BTreeMap<u64, String> {
        self.writes
            .iter()
            .map(|w| (w.slot, w.md5.clone()))
            .collect()
    }
}

/// `W <round> <slot> <md5>` → (slot, md5).
fn write_line(out: &str) -> Option<(u64, String)> {
    let mut words = out.split_whitespace();
    let (Some("W"), Some(round), Some(slot), Some(md5), None) = (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        return None;
    };
    round.parse::<u64>().ok()?;
    Some((slot.parse().ok()?, md5_word(md5)?))
}

/// `R <slot> <md5>` → (slot, md5).
fn read_line(out: &str) -> Option<(u64, String)> {
    let mut words = out.split_whitespace();
    let (Some("R"), Some(slot), Some(md5), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return None;
    };
    Some((slot.parse().ok()?, md5_word(md5)?))
}

fn md5_word(w: &str) -> Option<String> {
    (w.len() == 32 && w.bytes().all(|b| b.is_ascii_hexdigit())).then(|| w.to_owned())
}

/// Fails if the guest's console (as its head echoes it) shows an I/O
/// error (the kernel's `I/O error, dev vda, …`) or a failed disc check.
fn no_io_errors(head: &bigv_qemu_tests::vm::Vm) {
    let errors: Vec<String> = guest_lines(head)
        .into_iter()
        .filter(|l| l.contains("I/O error") || l.contains(lines::DISC_FAIL))
        .collect();
    assert!(errors.is_empty(), "the guest saw I/O errors: {errors:#?}");
}

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

#[test]
fn scripts_fit_the_serial_line_and_lines_parse() {
    for script in [writer("/dev/vda"), reader("/dev/vda")] {
        let typed = format!("sh {script}");
        assert!(
            typed.len() <= MAX_LINE,
            "{} > {MAX_LINE}: {typed}",
            typed.len()
        );
        assert!(!typed.contains(['\'', '"', '\n', '~']), "{typed}");
    }
    let md5 = "54936f9a966abc98040f4341ee41ac0e";
    assert_eq!(
        write_line(&format!("W 3 131 {md5}")),
        Some((131, md5.to_owned()))
    );
    assert_eq!(write_line("W 3 131 nothex"), None);
    assert_eq!(write_line("WFAIL 3 131 dd: error writing"), None);
    assert_eq!(
        read_line(&format!("R 131 {md5}")),
        Some((131, md5.to_owned()))
    );
    assert_eq!(read_line("RFAIL 131 dd: can't open"), None);
    let t0 = Instant::now();
    let seen: Vec<(Instant, String)> = [
        (0, "SH-START 2 x".to_owned()),
        (1, format!("SH-OUT 2: W 0 128 {md5}")),
        (4, format!("SH-OUT 3: W 0 999 {md5}")),
        (5, format!("SH-OUT 2: W 1 129 {md5}")),
        (
            6,
            "SH-OUT 2: WFAIL 2 130 dd: error writing '/dev/vda': I/O error".to_owned(),
        ),
        (7, "SH-OUT 2: WEND rounds=3 failed=1".to_owned()),
        (7, "SH-EXIT 2 status=1".to_owned()),
    ]
    .into_iter()
    .map(|(s, l)| (t0 + Duration::from_secs(s), l))
    .collect();
    let run = Run::of(&seen, 2);
    assert_eq!(run.writes.len(), 2);
    assert_eq!(run.failures.len(), 1, "{run:?}");
    assert_eq!(run.exit, Some(1));
    assert_eq!(run.end.as_deref(), Some("WEND rounds=3 failed=1"));
    assert_eq!(run.max_gap(None, None), Duration::from_secs(4));
    assert_eq!(
        run.max_gap(
            Some(t0 + Duration::from_secs(2)),
            Some(t0 + Duration::from_secs(3))
        ),
        Duration::from_secs(4)
    );
    assert_eq!(
        run.max_gap(Some(t0 + Duration::from_secs(6)), None),
        Duration::ZERO
    );
    assert_eq!(run.last_per_slot().len(), 2);
}
