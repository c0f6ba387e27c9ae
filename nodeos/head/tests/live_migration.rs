//! Live migration between two head agents in one process (distinct run
//! directories, both on loopback), with real qemu (TCG), the test guest
//! on our tail's NBD server and a real spine server. First a migration to
//! an endpoint nobody listens on fails and the guest runs on at the
//! source; a migration the brain cancels leaves it running there too;
//! then the guest moves to the other head and keeps its boot id and its
//! tick count. Slow tier: BIGV_SLOW_TESTS=1.
//!
//! Both heads are 127.0.0.1, so the tail sees one peer (the same address
//! reconnecting replaces its connection); the two-address handover rule
//! has its own test in `nodeos/tail/tests/nbd_rules.rs`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bigv_head::agent::{AgentConfig, HeadAgent};
use bigv_head::argv::{Accel, NicBackend, QemuSettings};
use bigv_spine::resource::{
    VmDisc, VmIncoming, VmMigrationOrder, VmMigrationProgress, VmMigrationState, VmRunState, VmSpec,
};
use bigv_spine::{
    Hello, Keepalive, NodeAgent, NodeConfig, NodeHandle, Resource, Role, ServerConfig, SpineServer,
};
use bigv_tail::acl::Acl;
use bigv_tail::nbd::{DiscServer, Export};
use bigv_test_guest::lines;
use common::*;
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(20);
const BOOT_WAIT: Duration = Duration::from_secs(180);
const MIGRATE_WAIT: Duration = Duration::from_secs(120);

/// A head agent on the spine; its qemu processes are killed on drop.
struct TestHead {
    agent: Arc<HeadAgent>,
    task: tokio::task::JoinHandle<()>,
    run_dir: PathBuf,
}

impl Drop for TestHead {
    fn drop(&mut self) {
        self.task.abort();
        drop(KillVms(self.run_dir.clone()));
    }
}

impl TestHead {
    /// A new agent for the same head (its qemu processes keep running and
    /// are re-adopted), as when init restarts a crashed agent.
    async fn restart_agent(&mut self, spine: SocketAddr, root: &Path, node_id: &str) {
        self.task.abort();
        self.agent.shutdown().await;
        (self.agent, self.task) = TestHead::spawn_agent(spine, root, node_id).await;
    }

    async fn start(spine: SocketAddr, root: &Path, node_id: &str) -> TestHead {
        let (agent, task) = TestHead::spawn_agent(spine, root, node_id).await;
        TestHead {
            agent,
            task,
            run_dir: root.join(node_id).join("run"),
        }
    }

    async fn spawn_agent(
        spine: SocketAddr,
        root: &Path,
        node_id: &str,
    ) -> (Arc<HeadAgent>, tokio::task::JoinHandle<()>) {
        let run_dir = root.join(node_id).join("run");
        let config = AgentConfig {
            qemu: "qemu-system-x86_64".into(),
            run_dir: run_dir.clone(),
            log_dir: root.join(node_id).join("log"),
            settings: QemuSettings {
                accel: Accel::Tcg,
                nic_backend: NicBackend::User,
                nbd_reconnect_delay_secs: 60,
                nbd_open_timeout_secs: 10,
                local_cdrom: true,
            },
            vm_memory_mib: 1024,
            report_interval: Duration::from_millis(500),
            fence_timeout: None,
            migration_address: Some("127.0.0.1".into()),
        };
        let agent = HeadAgent::start(config).await.unwrap();
        let hello = Hello {
            node_id: node_id.into(),
            role: Role::Head,
            image_version: "test".into(),
            protocol_version: bigv_spine::PROTOCOL_VERSION,
            addresses: vec!["127.0.0.1".into()],
        };
        let mut nc = NodeConfig::new(spine.to_string(), hello);
        nc.keepalive = Keepalive {
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(5),
        };
        let node = NodeAgent::new(nc, agent.clone());
        agent.set_notifier(node.notifier());
        let runner = agent.clone();
        let task = tokio::spawn(async move {
            runner.run_spine(&node).await;
        });
        (agent, task)
    }
}

async fn ready(server: &SpineServer, node_id: &str) -> NodeHandle {
    wait_for(&format!("{node_id} on the spine"), WAIT, || {
        server.node(node_id).filter(|h| h.is_ready())
    })
    .await
}

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
    let image = root.join("guest.raw");
    build_guest(&image);
    let export = Export::open("disc.sata.1", &image, false).unwrap();
    // The handover lists both heads (here both are 127.0.0.1).
    let tail = DiscServer::start(
        Arc::new(export),
        "127.0.0.1:0".parse().unwrap(),
        Acl::parse(&["127.0.0.1", "127.0.0.1"]).unwrap(),
    )
    .await
    .unwrap();
    let config = ServerConfig {
        keepalive: Keepalive {
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(5),
        },
        order_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    };
    let (server, mut events) = SpineServer::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
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
    let mut head_a = TestHead::start(server.local_addr(), &root, "head-a").await;
    let head_b = TestHead::start(server.local_addr(), &root, "head-b").await;
    let mut a = ready(&server, "head-a").await;
    let b = ready(&server, "head-b").await;

    // The guest boots on A.
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
