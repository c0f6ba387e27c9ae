//! Live migration between two head agents in one process (distinct run
//! directories, both on loopback), with real qemu (TCG), the test guest
//! on our tail's NBD server and a real spine server. First a migration to
//! an endpoint nobody listens on fails and the guest runs on at the
//! source; a migration the brain cancels leaves it running there too;
//! then the guest moves to the other head and keeps its boot id and its
//! tick count, and its SSH console (management address 127.0.0.1, the
//! same port on both heads) moves with it. Slow tier: BIGV_SLOW_TESTS=1.
//!
//! Both heads are 127.0.0.1, so the tail sees one peer (the same address
//! reconnecting replaces its connection); the two-address handover rule
//! has its own test in `nodeos/tail/tests/nbd_rules.rs`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bigv_spine::Resource;
use bigv_spine::resource::{
    ImagerOptions, VmDisc, VmIncoming, VmMigrationOrder, VmMigrationProgress, VmMigrationState,
    VmRunState, VmSpec,
};
use bigv_test_guest::lines;
use common::*;
use tokio::io::AsyncWriteExt;

const BOOT_WAIT: Duration = Duration::from_secs(180);
const MIGRATE_WAIT: Duration = Duration::from_secs(120);

/// The complete lines of a serial log (a line being written is left out).
fn last_tick(log: &Path) -> Option<u64> {
    serial_lines(log)
        .iter()
        .filter_map(|l| lines::tick(l))
        .next_back()
        .map(|(n, _)| n)
}

/// A loopback port nobody listens on (bound, then released).
fn dead_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_guest_moves_to_another_head_and_a_failed_migration_leaves_it_running() {
    if !slow() {
        return;
    }
    logs();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    // The handover lists both heads (here both are 127.0.0.1).
    let (_, tail) = guest_on_tail(&root, &["127.0.0.1", "127.0.0.1"]).await;
    let (server, mut events) = spine_with_events("127.0.0.1:0".parse().unwrap()).await;
    // Every migration progress head A reports, as the brain would see it
    // (the table alone may drop the last report: the VM is destroyed
    // right after it).
    let reported: Arc<std::sync::Mutex<Vec<VmMigrationProgress>>> = Arc::default();
    {
        let reported = reported.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let bigv_spine::SpineEvent::Updated {
                    node_id, resource, ..
                } = event
                    && node_id == "head-a"
                    && let (_, bigv_spine::ResourceValue::Vm(spec)) = resource.into_parts()
                    && let Some(m) = spec.migration
                {
                    reported.lock().unwrap().push(m);
                }
            }
        });
    }
    let console_port = common::ssh::free_port();
    let console = bigv_head::console::ConsoleConfig {
        port: console_port,
        ..Default::default()
    };
    let mut head_a =
        SpineHead::start_with_console(server.local_addr(), &root, "head-a", console.clone()).await;
    let head_b = SpineHead::start_with_console(server.local_addr(), &root, "head-b", console).await;
    let mut a = ready(&server, "head-a").await;
    let b = ready(&server, "head-b").await;

    // The guest boots on A.
    let (alice_key, alice_pub) = common::ssh::keygen(&root, "alice");
    let alice_args = common::ssh::key_args(&alice_key);
    let alice_args = common::ssh::strs(&alice_args);
    let mut order = VmSpec {
        memory: 256,
        cores: 1,
        keymap: "en-gb".into(),
        display_name: "t.test".into(),
        discs: vec![VmDisc {
            address: format!("nbd:{}", tail.local_addr()),
            model: "virtio".into(),
            serial: Some("guestdisc".into()),
        }],
        // A seed drive on both sides: B builds the identical one.
        imager_options: Some(ImagerOptions {
            instance_id: "bigv-vm1-op1".into(),
            // glibc's SHA-512 crypt test vector, of "Hello world!".
            root_password_hash: Some("$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1".into()),
            ..Default::default()
        }),
        management_address: Some("127.0.0.1".into()),
        console_users: vec!["alice".into()],
        user_authentication: [(
            "alice".to_owned(),
            bigv_spine::resource::UserAuthentication {
                authorized_keys: Some(alice_pub),
                password: None,
            },
        )]
        .into(),
        ..Default::default()
    };
    a.create(Resource::vm("t1", order.clone()), 1)
        .await
        .unwrap();
    let started_at = vm_in_table(&a, "t1").unwrap().started_at.unwrap();
    let log_a = head_a.agent.paths("t1").serial_log;
    let boot_id = wait_for("the guest's boot line on A", BOOT_WAIT, || {
        serial_lines(&log_a)
            .iter()
            .find_map(|l| lines::boot_id(l).map(str::to_owned))
    })
    .await;
    wait_for("the guest's disc check on A", BOOT_WAIT, || {
        serial_lines(&log_a)
            .iter()
            .any(|l| l.contains(lines::DISC_OK))
            .then_some(())
    })
    .await;
    wait_for("the guest to read its seed drive on A", BOOT_WAIT, || {
        serial_lines(&log_a)
            .into_iter()
            .find(|l| l.contains(lines::CIDATA))
    })
    .await;

    // A migration to an endpoint nobody listens on fails; the guest runs on.
    order.migrate_to = Some(VmMigrationOrder {
        seq: 1,
        to: "head-b".into(),
        endpoint: dead_endpoint(),
        max_bandwidth: None,
        max_downtime_ms: None,
    });
    a.update(Resource::vm("t1", order.clone()), 2)
        .await
        .unwrap();
    let failed = wait_for("the failed migration's report", MIGRATE_WAIT, || {
        vm_in_table(&a, "t1")
            .and_then(|v| v.migration)
            .filter(|m| m.state == VmMigrationState::Failed)
    })
    .await;
    assert_eq!((failed.seq, failed.to.as_str()), (1, "head-b"));
    assert!(failed.error.is_some(), "{failed:?}");
    let tick = last_tick(&log_a).unwrap_or(0);
    wait_for("the guest to tick on at A", WAIT, || {
        (last_tick(&log_a).unwrap_or(0) > tick + 1).then_some(())
    })
    .await;
    let still = vm_in_table(&a, "t1").unwrap();
    assert_eq!(still.state, Some(VmRunState::Running));
    assert!(head_a.agent.pid("t1").is_some());

    // B waits for the stream.
    let incoming = VmSpec {
        incoming: Some(VmIncoming {
            from: "head-a".into(),
            endpoint: None,
        }),
        started_at: Some(started_at),
        migrate_to: None,
        ..order.clone()
    };
    let listen_on_b = async |generation| {
        b.create(Resource::vm("t1", incoming.clone()), generation)
            .await
            .unwrap();
        let waiting = vm_in_table(&b, "t1").unwrap();
        assert_eq!(waiting.state, Some(VmRunState::Migrating));
        let endpoint = waiting
            .incoming
            .and_then(|i| i.endpoint)
            .expect("B reports where it listens");
        assert!(endpoint.starts_with("127.0.0.1:"), "{endpoint}");
        endpoint
    };
    let endpoint = listen_on_b(1).await;

    // A migration the brain takes back (an order without `migrate_to`)
    // is cancelled: the guest runs on at A, B's qemu gives up.
    order.migrate_to = Some(VmMigrationOrder {
        seq: 2,
        to: "head-b".into(),
        endpoint,
        max_bandwidth: Some(1 << 20),
        max_downtime_ms: None,
    });
    a.update(Resource::vm("t1", order.clone()), 3)
        .await
        .unwrap();
    wait_for("progress of the slow migration", MIGRATE_WAIT, || {
        vm_in_table(&a, "t1")
            .and_then(|v| v.migration)
            .filter(|m| m.seq == 2 && m.ram_done > 0)
    })
    .await;
    order.migrate_to = None;
    a.update(Resource::vm("t1", order.clone()), 4)
        .await
        .unwrap();
    let cancelled = vm_in_table(&a, "t1").unwrap().migration.unwrap();
    assert_eq!(cancelled.state, VmMigrationState::Failed, "{cancelled:?}");
    wait_for("B's qemu to give up", MIGRATE_WAIT, || {
        vm_in_table(&b, "t1").is_none().then_some(())
    })
    .await;
    let tick = last_tick(&log_a).unwrap_or(0);
    wait_for("the guest to tick on at A after the cancel", WAIT, || {
        (last_tick(&log_a).unwrap_or(0) > tick + 1).then_some(())
    })
    .await;
    assert_eq!(
        vm_in_table(&a, "t1").unwrap().state,
        Some(VmRunState::Running)
    );
    let endpoint = listen_on_b(2).await;

    // A migrates to it, slowly enough to report progress on the way.
    order.migrate_to = Some(VmMigrationOrder {
        seq: 3,
        to: "head-b".into(),
        endpoint,
        max_bandwidth: Some(16 << 20),
        max_downtime_ms: Some(500),
    });
    a.update(Resource::vm("t1", order.clone()), 5)
        .await
        .unwrap();
    let tick_before = last_tick(&log_a).unwrap_or(0);
    // A's agent restarts mid-migration: the new one re-adopts the qemu and
    // watches the migration qemu kept running, to its end.
    wait_for("progress before A's agent restarts", MIGRATE_WAIT, || {
        vm_in_table(&a, "t1")
            .and_then(|v| v.migration)
            .filter(|m| m.seq == 3 && m.ram_done > 0)
    })
    .await;
    head_a
        .restart_agent(server.local_addr(), &root, "head-a")
        .await;
    a = wait_for("A's new agent on the spine", WAIT, || {
        server
            .node("head-a")
            .filter(|h| h.is_ready() && h.info().conn != a.info().conn)
    })
    .await;
    let mut seen: Vec<VmMigrationProgress> = Vec::new();
    let deadline = tokio::time::Instant::now() + MIGRATE_WAIT;
    while let Some(v) = vm_in_table(&a, "t1") {
        if let Some(m) = v.migration.filter(|m| m.seq == 3)
            && seen.last() != Some(&m)
        {
            assert_eq!(m.state, VmMigrationState::Active, "{m:?}");
            seen.push(m);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never reported the VM destroyed; progress seen: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen.iter()
            .any(|m| m.ram_done > 0 && m.ram_done < m.ram_total),
        "progress reported on the way: {seen:?}"
    );
    assert!(
        seen.iter().all(|m| m.ram_total >= 256 << 20),
        "ram_total is the guest's RAM: {seen:?}"
    );
    assert!(head_a.agent.pid("t1").is_none(), "A's qemu ended");
    // The final report carries qemu's downtime.
    let last = reported
        .lock()
        .unwrap()
        .iter()
        .rfind(|m| m.seq == 3)
        .cloned()
        .expect("A reported the migration");
    let downtime = last.downtime_ms.expect("A reported the downtime");
    assert!(
        downtime > 0 && downtime < 10_000,
        "downtime {downtime} ms: {last:?}"
    );
    eprintln!("downtime reported by A: {downtime} ms");

    // B runs the same guest: same boot, ticks continuing.
    let moved = wait_for("B to report the guest running", WAIT, || {
        vm_in_table(&b, "t1").filter(|v| v.state == Some(VmRunState::Running))
    })
    .await;
    assert_eq!(moved.incoming, None);
    assert_eq!(moved.started_at, Some(started_at), "the guest's start kept");
    let log_b = head_b.agent.paths("t1").serial_log;
    let first_on_b = wait_for("ticks on B", WAIT, || last_tick(&log_b)).await;
    assert!(
        first_on_b >= tick_before,
        "ticks continue from A's ({tick_before}), not from a new boot: {first_on_b}"
    );
    assert!(
        !serial_lines(&log_b)
            .iter()
            .any(|l| lines::boot_id(l).is_some()),
        "no boot on B"
    );
    // The console moved with the guest: B serves the management address
    // (once A's console has let go of the port) with B's scroll-back,
    // which holds ticks but no boot; `status` typed there is answered.
    let deadline = tokio::time::Instant::now() + MIGRATE_WAIT;
    let mut on_b = loop {
        let s = common::ssh::ssh(console_port, "alice", &alice_args, &[]);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let text = s.text();
        if text.contains(lines::TICK) && !text.contains(lines::BOOT) {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no console on B: {text:?}"
        );
    };
    on_b.type_("status\n").await;
    on_b.wait_for(&format!("{}boot_id={boot_id}", lines::STATUS))
        .await;
    drop(on_b);
    let serial = tokio::net::UnixStream::connect(head_b.agent.paths("t1").serial)
        .await
        .unwrap();
    let (mut from_guest, mut serial) = serial.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_guest, &mut tokio::io::sink()).await;
    });
    serial.write_all(b"status\n").await.unwrap();
    let status = wait_for("the guest's status answer on B", WAIT, || {
        serial_lines(&log_b)
            .into_iter()
            .find(|l| l.starts_with(lines::STATUS))
    })
    .await;
    assert!(status.contains(&format!("boot_id={boot_id}")), "{status}");
    // The seed drive B attached is A's, byte for byte, and the password
    // the guest read from it on A still logs in on B.
    assert_eq!(
        std::fs::read(head_b.agent.paths("t1").seed).unwrap(),
        bigv_head::seed::image(order.imager_options.as_ref().unwrap(), "t.test").unwrap()
    );
    serial
        .write_all(b"login root Hello world!\n")
        .await
        .unwrap();
    wait_for("login ok on B", WAIT, || {
        serial_lines(&log_b)
            .into_iter()
            .find(|l| l.contains(lines::LOGIN_OK))
    })
    .await;
    // Its disc still answers from B.
    serial.write_all(b"disc\n").await.unwrap();
    let disc = wait_for("the disc check on B", BOOT_WAIT, || {
        serial_lines(&log_b)
            .into_iter()
            .find(|l| l.contains(lines::DISC_OK) || l.contains(lines::DISC_FAIL))
    })
    .await;
    assert!(disc.contains("DISC OK"), "{disc}");

    drop(head_a);
    drop(head_b);
    tail.stop().await;
}
