//! The head agent against a real spine server, real qemu (TCG) and the
//! test guest served by our own tail's NBD server, all on loopback:
//! start → boot line on the serial log; the cloud-init seed drive's
//! password, keys and first-boot script seen by the guest (once per
//! instance); live CD change; reset → a new boot; agent restart → the same qemu re-adopted, the guest's uptime
//! and boot id continuous; ACPI powerdown → `destroyed`; a killed qemu
//! and a removed VM are reported gone. Slow tier: BIGV_SLOW_TESTS=1.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bigv_head::agent::{AgentConfig, HeadAgent};
use bigv_spine::resource::{
    ImagerOptions, NetworkInterface, ResourceName, ResourceValue, SignalKind, VmDisc, VmRunState,
    VmSignal, VmSpec,
};
use bigv_spine::{ErrorCode, NodeAgent, NodeHandle, OrderFailure, Resource, SpineServer};
use bigv_test_guest::{cidata, lines};
use common::*;
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(20);
const BOOT_WAIT: Duration = Duration::from_secs(180);
const VM_MEMORY: u64 = 1024;

/// A head agent on the spine, with its run and log directories under `root`.
struct TestHead {
    agent: Arc<HeadAgent>,
    task: tokio::task::JoinHandle<()>,
    report: tokio::task::JoinHandle<()>,
}

impl TestHead {
    async fn start(spine: SocketAddr, root: &Path) -> TestHead {
        TestHead::start_with(
            spine,
            root,
            Some(Duration::from_secs(120)),
            Duration::from_secs(5),
        )
        .await
    }

    /// `keepalive`: how long a silent link lives before the head notices.
    async fn start_with(
        spine: SocketAddr,
        root: &Path,
        fence: Option<Duration>,
        keepalive: Duration,
    ) -> TestHead {
        let config = AgentConfig {
            vm_memory_mib: VM_MEMORY,
            report_interval: Duration::from_millis(300),
            fence_timeout: fence,
            migration_address: Some("127.0.0.1".into()),
            ..agent_config(root)
        };
        let agent = HeadAgent::start(config).await.unwrap();
        let mut nc = head_node_config(spine, "head1", keepalive);
        nc.backoff = bigv_spine::Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        };
        let node = NodeAgent::new(nc, agent.clone());
        agent.set_notifier(node.notifier());
        let runner = agent.clone();
        let task = tokio::spawn(async move {
            runner.run_spine(&node).await;
        });
        let report = tokio::spawn(agent.clone().report_loop());
        TestHead {
            agent,
            task,
            report,
        }
    }

    /// Stops the agent as a crash would, leaving every qemu running.
    async fn stop(self) {
        self.task.abort();
        self.report.abort();
        let _ = self.task.await;
        self.agent.shutdown().await;
    }
}

/// Kills the qemu processes this test started (by the pids in the run
/// directory), whatever happened.
async fn handle(server: &SpineServer) -> NodeHandle {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(h) = server.node("head1").filter(|h| h.is_ready()) {
            return h;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "head1 never got ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_memory(h: &NodeHandle) -> Option<u64> {
    match h.resource(&"global.memory".parse().unwrap()) {
        Some((ResourceValue::Memory(m), _)) => Some(m.free),
        _ => None,
    }
}

/// Waits for `f` over the serial log's lines; on timeout shows the log's end.
async fn wait_serial<T>(
    log: &Path,
    what: &str,
    limit: Duration,
    mut f: impl FnMut(Vec<String>) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f(serial_lines(log)) {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            let lines = serial_lines(log);
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            panic!("timed out waiting for {what}; the serial log ends with:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// glibc's SHA-512 crypt test vector: the hash of `ROOT_PASSWORD`, as
/// the brain would send it.
const ROOT_HASH: &str = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";
const ROOT_PASSWORD: &str = "Hello world!";

fn imager(instance_id: &str, with_login: bool, script: &str) -> ImagerOptions {
    ImagerOptions {
        instance_id: instance_id.into(),
        root_password_hash: with_login.then(|| ROOT_HASH.into()),
        ssh_public_key: if with_login {
            "ssh-ed25519 AAAAC3Nza alice@laptop\n# old\nssh-rsa AAAAB3Nza alice@desk\n".into()
        } else {
            String::new()
        },
        firstboot_script: script.into(),
    }
}

/// The `n`th (from 0) serial line holding `what`.
fn nth_line(all: Vec<String>, what: &str, n: usize) -> Option<String> {
    all.into_iter().filter(|l| l.contains(what)).nth(n)
}

fn spec(discs: Vec<VmDisc>) -> VmSpec {
    VmSpec {
        memory: 256,
        cores: 1,
        balloon_on: true,
        keymap: "en-gb".into(),
        display_name: "t.test".into(),
        discs,
        network_interfaces: vec![NetworkInterface {
            mac: "52:54:00:00:00:21".into(),
            vlan_id: 1,
            model: "virtio".into(),
            ips: vec![],
            dhcp: None,
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_runs_the_test_guest_and_survives_its_own_restart() {
    if !slow() {
        return;
    }
    logs();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let _killer = KillVms(root.join("run"));
    let (image, tail) = guest_on_tail(&root, &["127.0.0.1"]).await;
    let server = spine().await;
    let head = TestHead::start(server.local_addr(), &root).await;
    let h = handle(&server).await;
    assert_eq!(free_memory(&h), Some(VM_MEMORY));

    // Start: the guest boots from its NBD disc and writes its pattern.
    let disc = VmDisc {
        address: format!("nbd:{}", tail.local_addr()),
        model: "virtio".into(),
        serial: Some("guestdisc".into()),
    };
    let mut order = spec(vec![disc]);
    let script = "#!/bin/sh\necho welcome > /etc/motd\n";
    order.imager_options = Some(imager("bigv-vm1-op1", true, script));
    h.create(Resource::vm("t1", order.clone()), 1)
        .await
        .unwrap();
    let reported = vm_in_table(&h, "t1").expect("vm.t1 reported");
    assert_eq!(reported.state, Some(VmRunState::Running));
    let started_at = reported.started_at.expect("started_at reported");
    wait_for("memory report", WAIT, || {
        (free_memory(&h) == Some(VM_MEMORY - 256)).then_some(())
    })
    .await;
    let log = head.agent.paths("t1").serial_log;
    let first_boot = wait_serial(&log, "the guest's boot line", BOOT_WAIT, |all| {
        all.iter()
            .find_map(|l| lines::boot_id(l).map(str::to_owned))
    })
    .await;
    let disc_line = wait_for("the disc check", BOOT_WAIT, || {
        serial_lines(&log)
            .into_iter()
            .find(|l| l.contains(lines::DISC_OK) || l.contains(lines::DISC_FAIL))
    })
    .await;
    assert!(disc_line.contains("DISC OK dev=/dev/vda"), "{disc_line}");
    let paths = head.agent.paths("t1");
    assert!(paths.qmp.exists() && paths.vnc.exists() && paths.serial.exists());
    // The seed drive: built from the resource, found and read by the
    // guest, its first-boot script run for this instance.
    assert_eq!(
        std::fs::read(&paths.seed).unwrap(),
        bigv_head::seed::image(order.imager_options.as_ref().unwrap(), "t.test").unwrap()
    );
    let seen = wait_serial(&log, "the guest's cidata line", BOOT_WAIT, |all| {
        nth_line(all, lines::CIDATA, 0)
    })
    .await;
    let field = |key| lines::field(&seen, lines::CIDATA, key);
    assert_eq!(field("instance-id"), Some("bigv-vm1-op1"), "{seen}");
    assert_eq!(field("hostname"), Some("t.test"), "{seen}");
    assert_eq!(field("password"), Some("set"), "{seen}");
    assert_eq!(field("keys"), Some("2"), "{seen}");
    assert_eq!(field("dev"), Some("/dev/vdb"), "{seen}");
    let sha = cidata::short_sha256(script.as_bytes());
    assert_eq!(field("firstboot"), Some(sha.as_str()), "{seen}");
    let ran = wait_serial(&log, "the first-boot script", BOOT_WAIT, |all| {
        nth_line(all, lines::FIRSTBOOT, 0)
    })
    .await;
    assert!(
        ran.contains("firstboot: ran instance=bigv-vm1-op1"),
        "{ran}"
    );

    // The CD changes while the VM runs.
    let iso = root.join("cd.iso");
    std::fs::write(&iso, vec![0u8; 1 << 20]).unwrap();
    order.cdrom_url = Some(iso.display().to_string());
    h.update(Resource::vm("t1", order.clone()), 2)
        .await
        .unwrap();
    assert_eq!(
        head.agent.cdrom_medium("t1").await.as_deref(),
        Some(iso.to_str().unwrap())
    );
    assert_eq!(vm_in_table(&h, "t1").unwrap().cdrom_url, order.cdrom_url);

    // Reset: the same qemu reboots the guest (a new boot id).
    let pid = head.agent.pid("t1").unwrap();
    order.signal = Some(VmSignal {
        seq: 1,
        kind: SignalKind::Reset,
        keys: None,
    });
    h.update(Resource::vm("t1", order.clone()), 3)
        .await
        .unwrap();
    assert_eq!(
        vm_in_table(&h, "t1").unwrap().signal.map(|s| s.seq),
        Some(1)
    );
    let second_boot = wait_for("a boot line after the reset", BOOT_WAIT, || {
        serial_lines(&log)
            .iter()
            .filter_map(|l| lines::boot_id(l))
            .find(|id| *id != first_boot)
            .map(str::to_owned)
    })
    .await;
    // The pattern found on the disc is the first boot's.
    wait_for("the disc check after the reset", BOOT_WAIT, || {
        serial_lines(&log)
            .iter()
            .any(|l| l.contains(&format!("previous={first_boot}")))
            .then_some(())
    })
    .await;
    assert_eq!(head.agent.pid("t1"), Some(pid), "a reset keeps the process");
    // Same instance, second boot: the script does not run again.
    let again = wait_serial(
        &log,
        "the first-boot check after the reset",
        BOOT_WAIT,
        |all| nth_line(all, lines::FIRSTBOOT, 1),
    )
    .await;
    assert!(
        again.contains("firstboot: already ran instance=bigv-vm1-op1"),
        "{again}"
    );

    // Agent restart: the VM keeps running and is re-adopted.
    let ticks_before = |log: &Path| {
        serial_lines(log)
            .iter()
            .filter_map(|l| lines::tick(l))
            .next_back()
            .map(|(n, _)| n)
            .unwrap_or(0)
    };
    head.stop().await;
    wait_for("the spine to notice", WAIT, || {
        (!server.node("head1").is_some_and(|h| h.is_ready())).then_some(())
    })
    .await;
    let tick_at_stop = ticks_before(&log);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(bigv_head::vm::alive(pid), "qemu outlives its agent");
    assert!(
        ticks_before(&log) > tick_at_stop,
        "the guest ticks on without an agent"
    );
    let head = TestHead::start(server.local_addr(), &root).await;
    let h = handle(&server).await;
    let adopted = vm_in_table(&h, "t1").expect("vm.t1 reported after the restart");
    assert_eq!(adopted.started_at, Some(started_at));
    assert_eq!(adopted.state, Some(VmRunState::Running));
    assert_eq!(
        adopted.signal.map(|s| s.seq),
        Some(1),
        "delivered signal remembered"
    );
    assert_eq!(head.agent.pid("t1"), Some(pid), "the same qemu");
    assert_eq!(free_memory(&h), Some(VM_MEMORY - 256));
    // The guest answers on its console: same boot, uptime continuous.
    let serial = tokio::net::UnixStream::connect(head.agent.paths("t1").serial)
        .await
        .unwrap();
    // A console client must read: the guest's serial output stalls (and
    // with it the guest's writer) once the socket buffer is full.
    let (mut from_guest, mut serial) = serial.into_split();
    tokio::spawn(async move {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut from_guest, &mut sink).await;
    });
    serial.write_all(b"status\n").await.unwrap();
    let status = wait_for("the guest's status answer", WAIT, || {
        serial_lines(&log)
            .into_iter()
            .find(|l| l.starts_with(lines::STATUS))
    })
    .await;
    assert!(
        status.contains(&format!("boot_id={second_boot}")),
        "{status}"
    );
    let boots = serial_lines(&log)
        .iter()
        .filter(|l| lines::boot_id(l).is_some())
        .count();
    assert_eq!(boots, 2, "no reboot across the agent restart");
    // The customer's root password works, and only it.
    serial
        .write_all(format!("login root {ROOT_PASSWORD}\n").as_bytes())
        .await
        .unwrap();
    wait_serial(&log, "login ok", WAIT, |all| {
        nth_line(all, lines::LOGIN_OK, 0)
    })
    .await;
    serial.write_all(b"login root Hello world\n").await.unwrap();
    wait_serial(&log, "login failed", WAIT, |all| {
        nth_line(all, lines::LOGIN_FAILED, 0)
    })
    .await;
    assert_eq!(
        serial_lines(&log)
            .iter()
            .filter(|l| l.contains(lines::LOGIN_OK))
            .count(),
        1
    );

    // A tail outage is an I/O stall, not an error: the disc check the
    // guest runs while the tail is down finishes once it is back.
    let disc_lines = |log: &Path| {
        serial_lines(log)
            .iter()
            .filter(|l| l.contains(lines::DISC_OK) || l.contains(lines::DISC_FAIL))
            .count()
    };
    let before = disc_lines(&log);
    let tail_addr = tail.local_addr();
    tail.stop().await;
    serial.write_all(b"disc\n").await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        disc_lines(&log),
        before,
        "the disc check waits for the tail"
    );
    let last_tick = |log: &Path| {
        serial_lines(log)
            .iter()
            .filter_map(|l| lines::tick(l))
            .next_back()
            .map_or(0, |(n, _)| n)
    };
    let t = last_tick(&log);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        last_tick(&log) > t,
        "the guest runs on while its disc stalls"
    );
    let tail = tail_at(&image, tail_addr, &["127.0.0.1"]).await;
    let after = wait_serial(
        &log,
        "the disc check after the tail came back",
        Duration::from_secs(90),
        |all| {
            all.into_iter()
                .filter(|l| l.contains(lines::DISC_OK) || l.contains(lines::DISC_FAIL))
                .nth(before)
        },
    )
    .await;
    assert!(after.contains("DISC OK dev=/dev/vda"), "{after}");
    assert!(
        after.contains(&format!("previous={second_boot}")),
        "{after}"
    );
    assert_eq!(
        vm_in_table(&h, "t1").unwrap().state,
        Some(VmRunState::Running)
    );

    // A repeated signal (same seq) is not delivered again.
    h.update(Resource::vm("t1", order.clone()), 4)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        serial_lines(&log)
            .iter()
            .filter(|l| lines::boot_id(l).is_some())
            .count(),
        2
    );

    // Keys: qemu takes a real combination and refuses an unknown key.
    order.signal = Some(VmSignal {
        seq: 2,
        kind: SignalKind::Sendkey,
        keys: Some("ctrl-alt-delete".into()),
    });
    h.update(Resource::vm("t1", order.clone()), 5)
        .await
        .unwrap();
    assert_eq!(vm_in_table(&h, "t1").unwrap().signal, order.signal);
    wait_serial(&log, "the guest to see ctrl-alt-delete", WAIT, |all| {
        all.iter()
            .any(|l| l.contains(lines::CTRL_ALT_DEL))
            .then_some(())
    })
    .await;
    order.signal = Some(VmSignal {
        seq: 3,
        kind: SignalKind::Sendkey,
        keys: Some("ctrl-nosuchkey".into()),
    });
    match h.update(Resource::vm("t1", order.clone()), 6).await {
        Err(OrderFailure::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::Failed);
            assert!(e.message.contains("nosuchkey"), "{}", e.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        vm_in_table(&h, "t1").unwrap().signal.map(|s| s.seq),
        Some(2)
    );
    assert!(h.resource(&"global.load".parse().unwrap()).is_some());

    // ACPI powerdown: the guest powers off, qemu exits, the brain hears.
    order.signal = Some(VmSignal {
        seq: 4,
        kind: SignalKind::Powerdown,
        keys: None,
    });
    h.update(Resource::vm("t1", order.clone()), 7)
        .await
        .unwrap();
    wait_for("vm.t1 reported destroyed", Duration::from_secs(60), || {
        vm_in_table(&h, "t1").is_none().then_some(())
    })
    .await;
    assert!(
        serial_lines(&log)
            .iter()
            .any(|l| l.contains(lines::POWER_BUTTON)),
        "the guest saw the power button"
    );
    assert!(bigv_head::vm::wait_gone(pid, Duration::from_secs(5)).await);
    assert!(
        !head.agent.paths("t1").dir.exists(),
        "run directory cleaned"
    );
    wait_for("memory given back", WAIT, || {
        (free_memory(&h) == Some(VM_MEMORY)).then_some(())
    })
    .await;

    // The compatibility profile on the same disc: IDE disc, e1000 NIC;
    // the guest boots, finds /dev/sda and the last pattern t1 wrote.
    let mut compat = spec(vec![VmDisc {
        address: format!("nbd:{}", tail.local_addr()),
        model: "ide".into(),
        serial: None,
    }]);
    compat.network_interfaces[0].model = "e1000".into();
    // A new imaging's instance: its script runs, from a seed on a CD drive.
    compat.imager_options = Some(imager("bigv-vm1-op2", false, "echo again\n"));
    h.create(Resource::vm("t2", compat), 8).await.unwrap();
    let log2 = head.agent.paths("t2").serial_log;
    let disc_line = wait_serial(
        &log2,
        "the compatibility guest's disc check",
        BOOT_WAIT,
        |all| {
            all.into_iter()
                .find(|l| l.contains(lines::DISC_OK) || l.contains(lines::DISC_FAIL))
        },
    )
    .await;
    assert!(disc_line.contains("DISC OK dev=/dev/sda"), "{disc_line}");
    assert!(
        disc_line.contains(&format!("previous={second_boot}")),
        "{disc_line}"
    );
    let seen = wait_serial(
        &log2,
        "the compatibility guest's cidata",
        BOOT_WAIT,
        |all| nth_line(all, lines::CIDATA, 0),
    )
    .await;
    assert_eq!(
        lines::field(&seen, lines::CIDATA, "password"),
        Some("none"),
        "{seen}"
    );
    assert!(
        lines::field(&seen, lines::CIDATA, "dev").is_some_and(|d| d.starts_with("/dev/sr")),
        "{seen}"
    );
    let ran = wait_serial(&log2, "the new instance's first boot", BOOT_WAIT, |all| {
        nth_line(all, lines::FIRSTBOOT, 0)
    })
    .await;
    assert!(
        ran.contains("firstboot: ran instance=bigv-vm1-op2"),
        "{ran}"
    );
    let pid2 = head.agent.pid("t2").unwrap();
    h.remove(ResourceName::vm("t2"), 9).await.unwrap();
    assert!(vm_in_table(&h, "t2").is_none());
    assert!(bigv_head::vm::wait_gone(pid2, Duration::from_secs(5)).await);
    head.stop().await;
    tail.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_removed_vms_are_reported_gone_and_bad_orders_refused() {
    if !slow() {
        return;
    }
    logs();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let _killer = KillVms(root.join("run"));
    let server = spine().await;
    let head = TestHead::start(server.local_addr(), &root).await;
    let h = handle(&server).await;

    let refused = |r: Result<(), OrderFailure>| match r {
        Err(OrderFailure::Refused(e)) => (e.code, e.message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let mut too_big = spec(vec![]);
    too_big.memory = VM_MEMORY + 1;
    let (code, msg) = refused(h.create(Resource::vm("big", too_big), 1).await);
    assert_eq!(code, ErrorCode::InsufficientResources);
    assert!(msg.contains("memory"), "{msg}");
    let mut bad = spec(vec![]);
    bad.network_interfaces[0].mac = "nonsense".into();
    let (code, msg) = refused(h.create(Resource::vm("bad", bad), 1).await);
    assert_eq!(code, ErrorCode::Invalid);
    assert!(msg.contains("network_interfaces[0].mac"), "{msg}");
    assert!(vm_in_table(&h, "bad").is_none());

    // Diskless VMs (SeaBIOS finds nothing to boot, which is enough here).
    h.create(Resource::vm("crash", spec(vec![])), 1)
        .await
        .unwrap();
    h.create(Resource::vm("gone", spec(vec![])), 1)
        .await
        .unwrap();
    let (code, _) = refused(h.create(Resource::vm("gone", spec(vec![])), 2).await);
    assert_eq!(code, ErrorCode::AlreadyExists);

    // qemu killed behind the agent's back: reported destroyed.
    let pid = head.agent.pid("crash").unwrap();
    bigv_head::vm::kill(pid);
    wait_for("vm.crash reported destroyed", WAIT, || {
        vm_in_table(&h, "crash").is_none().then_some(())
    })
    .await;

    // Removed by order: qemu ends, the VM is gone when the reply lands.
    let pid = head.agent.pid("gone").unwrap();
    h.remove(ResourceName::vm("gone"), 3).await.unwrap();
    assert!(vm_in_table(&h, "gone").is_none());
    assert!(bigv_head::vm::wait_gone(pid, Duration::from_secs(5)).await);
    head.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_cut_off_from_the_brain_past_the_fence_timeout_kills_its_vms() {
    if !slow() {
        return;
    }
    logs();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let _killer = KillVms(root.join("run"));
    let server = spine().await;
    let addr = server.local_addr();
    // Fence after 3 s of silence; the link's keepalive timeout is 1 s, so
    // the head counts 2 s from the end of its session.
    let head = TestHead::start_with(
        addr,
        &root,
        Some(Duration::from_secs(3)),
        Duration::from_secs(1),
    )
    .await;
    let h = handle(&server).await;
    h.create(Resource::vm("a", spec(vec![])), 1).await.unwrap();
    h.create(Resource::vm("b", spec(vec![])), 1).await.unwrap();
    let pids = [head.agent.pid("a").unwrap(), head.agent.pid("b").unwrap()];

    // A short break is not a fence: the head reconnects at once.
    h.disconnect();
    let h = handle(&server).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        pids.iter().all(|p| bigv_head::vm::alive(*p)),
        "no fence after a short break"
    );
    assert!(vm_in_table(&h, "a").is_some());

    // The brain goes away: the VMs live on for a while (unknown is not
    // dead), then die.
    drop(h);
    drop(server);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        pids.iter().all(|p| bigv_head::vm::alive(*p)),
        "killed too early"
    );
    let mut gone = false;
    for _ in 0..100 {
        if pids.iter().all(|p| !bigv_head::vm::alive(*p)) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "VMs still running 10 s after the fence timeout");

    // Back on a brain at the same address: the dump holds no VMs.
    let server = spine_at(addr).await;
    let h = handle(&server).await;
    assert!(vm_in_table(&h, "a").is_none() && vm_in_table(&h, "b").is_none());
    assert_eq!(free_memory(&h), Some(VM_MEMORY));
    head.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brains_fence_timeout_replaces_the_heads_own_and_outlives_an_agent_restart() {
    if !slow() {
        return;
    }
    logs();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let _killer = KillVms(root.join("run"));
    let server = spine().await;
    server.set_fence_timeout(Some(3));
    let addr = server.local_addr();
    // The head's own setting is 120 s; the brain's welcome says 3 s.
    let own = Some(Duration::from_secs(120));
    let head = TestHead::start_with(addr, &root, own, Duration::from_secs(1)).await;
    let h = handle(&server).await;
    h.create(Resource::vm("a", spec(vec![])), 1).await.unwrap();
    let pid = head.agent.pid("a").unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("run/fence-timeout"))
            .unwrap()
            .trim(),
        "3",
        "the brain's timeout is kept for a restarted agent"
    );

    // The agent crashes and the brain goes away; a new agent (still
    // configured with 120 s) re-adopts the VM and, never hearing the
    // brain, fences on the brain's 3 s counted from the old agent's
    // last contact.
    head.stop().await;
    let last_contact = std::time::Instant::now();
    drop(h);
    drop(server);
    let head = TestHead::start_with(addr, &root, own, Duration::from_secs(1)).await;
    assert_eq!(head.agent.pid("a"), Some(pid), "re-adopted");
    let mut gone_after = None;
    for _ in 0..150 {
        if !bigv_head::vm::alive(pid) {
            gone_after = Some(last_contact.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_after = gone_after.expect("the VM still runs 15 s after the brain went away");
    assert!(
        gone_after < Duration::from_secs(10),
        "fenced only {gone_after:?} after the last contact: not on the brain's 3 s"
    );
    eprintln!(
        "fenced {gone_after:?} after the last contact (brain's timeout 3 s, head's own 120 s)"
    );
    head.stop().await;
}
