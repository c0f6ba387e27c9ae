//! Helpers shared by the head's slow tests and its benchmark
//! (`benches/head.rs`): real qemu (TCG), the test guest, a real spine
//! server, head agents on it.

#![allow(dead_code)] // each test file uses its own subset

pub mod netns;
pub mod ssh;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bigv_head::agent::{AgentConfig, HeadAgent};
use bigv_head::argv::{Accel, NicBackend, QemuSettings};
use bigv_head::console::ConsoleConfig;
use bigv_spine::resource::{ResourceName, ResourceValue, VmSpec};
use bigv_spine::{
    Hello, Keepalive, NodeAgent, NodeConfig, NodeHandle, Role, ServerConfig, SpineEvent,
    SpineServer,
};
use bigv_tail::acl::Acl;
use bigv_tail::nbd::{DiscServer, Export};
use tokio::sync::mpsc;

pub const WAIT: Duration = Duration::from_secs(20);

pub fn slow() -> bool {
    if std::env::var_os("BIGV_SLOW_TESTS").is_none() {
        eprintln!("skipped: set BIGV_SLOW_TESTS=1 to run VMs under qemu");
        return false;
    }
    true
}

pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "bigv_head=debug,info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The VM as the head reports it on the spine.
pub fn vm_in_table(h: &NodeHandle, name: &str) -> Option<VmSpec> {
    match h.resource(&ResourceName::vm(name)) {
        Some((ResourceValue::Vm(spec), _)) => Some(*spec),
        _ => None,
    }
}

/// Polls `f` until it returns `Some`, failing after `limit`.
pub async fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn serial_lines(log: &Path) -> Vec<String> {
    let bytes = std::fs::read(log).unwrap_or_default();
    let mut lines: Vec<String> = String::from_utf8_lossy(&bytes)
        .split('\n')
        .map(|l| l.replace('\r', ""))
        .collect();
    lines.pop();
    lines
}

/// Builds the test guest's bootable disc into `out`.
pub fn build_guest(out: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../qemu-tests/guest/build.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("bash runs");
    assert!(status.success(), "qemu-tests/guest/build.sh failed");
}

/// Kills every qemu whose pidfile is under a run directory, on drop.
pub struct KillVms(pub PathBuf);

impl Drop for KillVms {
    fn drop(&mut self) {
        let Ok(dirs) = std::fs::read_dir(&self.0) else {
            return;
        };
        for d in dirs.flatten() {
            if let Ok(pid) = std::fs::read_to_string(d.path().join("qemu.pid"))
                && let Ok(pid) = pid.trim().parse::<i32>()
            {
                bigv_head::vm::kill(pid);
            }
        }
    }
}

/// A spine server on loopback with a fast keepalive.
pub async fn spine() -> SpineServer {
    spine_at("127.0.0.1:0".parse().unwrap()).await
}

pub async fn spine_at(addr: SocketAddr) -> SpineServer {
    spine_with_events(addr).await.0
}

/// The same, with its event stream (which must be drained: a full queue
/// holds up the nodes' connections).
pub async fn spine_with_events(addr: SocketAddr) -> (SpineServer, mpsc::Receiver<SpineEvent>) {
    let config = ServerConfig {
        keepalive: Keepalive {
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(5),
        },
        hello_timeout: Duration::from_secs(2),
        order_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    };
    SpineServer::bind(addr, config).await.unwrap()
}

/// The tests' qemu settings: TCG, user networking, a local CD allowed.
pub fn qemu_settings() -> QemuSettings {
    QemuSettings {
        accel: Accel::Tcg,
        nic_backend: NicBackend::User,
        nbd_reconnect_delay_secs: 60,
        nbd_open_timeout_secs: 10,
        local_cdrom: true,
    }
}

/// The spine link of head `node_id` (addresses: 127.0.0.1): keepalive
/// every 200 ms, the link dead after `timeout` of silence.
pub fn head_node_config(spine: SocketAddr, node_id: &str, timeout: Duration) -> NodeConfig {
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
        timeout,
    };
    nc
}

/// Builds the test guest into `root/guest.raw` and serves it on our
/// tail's NBD server on loopback, `acl` the heads it admits.
pub async fn guest_on_tail(root: &Path, acl: &[&str]) -> (PathBuf, DiscServer) {
    let image = root.join("guest.raw");
    build_guest(&image);
    (
        image.clone(),
        tail_at(&image, "127.0.0.1:0".parse().unwrap(), acl).await,
    )
}

/// Our tail's NBD server for `image` (export `disc.sata.1`) at `addr`.
pub async fn tail_at(image: &Path, addr: SocketAddr, acl: &[&str]) -> DiscServer {
    let export = Export::open("disc.sata.1", image, false).unwrap();
    DiscServer::start(Arc::new(export), addr, Acl::parse(acl).unwrap())
        .await
        .unwrap()
}

/// A head agent on the spine, in `root/NODE_ID/`, its migration listener on
/// loopback; its qemu processes are killed on drop.
pub struct SpineHead {
    pub agent: Arc<HeadAgent>,
    pub task: tokio::task::JoinHandle<()>,
    pub run_dir: PathBuf,
    pub console: ConsoleConfig,
}

impl Drop for SpineHead {
    fn drop(&mut self) {
        self.task.abort();
        drop(KillVms(self.run_dir.clone()));
    }
}

impl SpineHead {
    /// A new agent for the same head (its qemu processes keep running and
    /// are re-adopted), as when init restarts a crashed agent.
    pub async fn restart_agent(&mut self, spine: SocketAddr, root: &Path, node_id: &str) {
        self.task.abort();
        self.agent.shutdown().await;
        (self.agent, self.task) =
            SpineHead::spawn_agent(spine, root, node_id, self.console.clone()).await;
    }

    pub async fn start(spine: SocketAddr, root: &Path, node_id: &str) -> SpineHead {
        SpineHead::start_with_console(spine, root, node_id, ConsoleConfig::default()).await
    }

    /// The same, its VMs' SSH consoles set up by `console`.
    pub async fn start_with_console(
        spine: SocketAddr,
        root: &Path,
        node_id: &str,
        console: ConsoleConfig,
    ) -> SpineHead {
        let (agent, task) = SpineHead::spawn_agent(spine, root, node_id, console.clone()).await;
        SpineHead {
            agent,
            task,
            run_dir: root.join(node_id).join("run"),
            console,
        }
    }

    pub async fn spawn_agent(
        spine: SocketAddr,
        root: &Path,
        node_id: &str,
        console: ConsoleConfig,
    ) -> (Arc<HeadAgent>, tokio::task::JoinHandle<()>) {
        let config = AgentConfig {
            migration_address: Some("127.0.0.1".into()),
            console,
            ..agent_config(&root.join(node_id))
        };
        let agent = HeadAgent::start(config).await.unwrap();
        let nc = head_node_config(spine, node_id, Duration::from_secs(5));
        let node = NodeAgent::new(nc, agent.clone());
        agent.set_notifier(node.notifier());
        let runner = agent.clone();
        let task = tokio::spawn(async move {
            runner.run_spine(&node).await;
        });
        (agent, task)
    }
}

/// A head agent's settings for tests: run and log folders under `root`,
/// TCG, 1 GiB for VMs, reports every 500 ms; no fencing, migration
/// address, SSH console port or bridged NICs.
pub fn agent_config(root: &Path) -> AgentConfig {
    AgentConfig {
        qemu: "qemu-system-x86_64".into(),
        run_dir: root.join("run"),
        log_dir: root.join("log"),
        settings: qemu_settings(),
        vm_memory_mib: 1024,
        report_interval: Duration::from_millis(500),
        fence_timeout: None,
        migration_address: None,
        console: Default::default(),
        net: None,
    }
}

pub async fn ready(server: &SpineServer, node_id: &str) -> NodeHandle {
    wait_for(&format!("{node_id} on the spine"), WAIT, || {
        server.node(node_id).filter(|h| h.is_ready())
    })
    .await
}
