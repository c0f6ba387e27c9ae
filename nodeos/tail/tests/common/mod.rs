//! Helpers shared by the tail's integration tests: temp discs, servers on
//! loopback, and the real qemu clients.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bigv_tail::acl::Acl;
use bigv_tail::nbd::{DiscServer, Export};

pub const MIB: u64 = 1 << 20;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A sparse file of `size` bytes in a fresh temporary directory.
pub fn sparse_file(size: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disc.raw");
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    (dir, path)
}

/// Serves `path` on 127.0.0.1, port chosen by the kernel.
pub async fn serve(path: &Path, allow: &[&str], read_only: bool) -> DiscServer {
    let export = Export::open("disc.sata.1", path, read_only).unwrap();
    let acl = Acl::parse(allow).unwrap();
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    DiscServer::start(Arc::new(export), listen, acl)
        .await
        .unwrap()
}

pub fn url(server: &DiscServer) -> String {
    format!("nbd://{}/disc.sata.1", server.local_addr())
}

/// Runs `qemu-io -f raw URL -c …`; returns (success, stdout+stderr).
pub async fn qemu_io(url: &str, commands: &[String]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new("qemu-io");
    cmd.args(["-f", "raw", url]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd
        .output()
        .await
        .expect("qemu-io runs (install qemu-utils)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = text.contains("failed") || text.contains("error") || text.contains("Error");
    (out.status.success() && !failed, text)
}

/// Runs `qemu-img ARGS…`; returns stdout, panicking on failure.
pub async fn qemu_img(args: &[&str]) -> String {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .expect("qemu-img runs (install qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

pub mod tail {
    //! A real tail agent on a real spine server, on loopback.

    use std::net::IpAddr;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use bigv_spine::resource::{DiscSpec, ResourceName, ResourceValue};
    use bigv_spine::{
        Hello, Keepalive, NodeAgent, NodeConfig, NodeHandle, Role, ServerConfig, SpineEvent,
        SpineServer,
    };
    use bigv_tail::addresses::Addresses;
    use bigv_tail::agent::{AgentConfig, TailAgent};
    use bigv_tail::pools::{PoolConfig, Pools};
    use tokio::sync::mpsc;

    pub const WAIT: Duration = Duration::from_secs(20);

    pub async fn spine() -> (SpineServer, mpsc::Receiver<SpineEvent>) {
        let config = ServerConfig {
            keepalive: Keepalive {
                interval: Duration::from_millis(200),
                timeout: Duration::from_secs(3),
            },
            hello_timeout: Duration::from_secs(2),
            order_timeout: Duration::from_secs(30),
            ..ServerConfig::default()
        };
        SpineServer::bind("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap()
    }

    /// A port free on loopback for every test tail's discs.
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    pub struct TestTail {
        pub node_id: String,
        pub agent: Arc<TailAgent>,
        pub root: PathBuf,
        task: tokio::task::JoinHandle<()>,
        report: tokio::task::JoinHandle<()>,
    }

    impl TestTail {
        /// Pools live under `root` (`root/sata1`), templates in `root/images`.
        pub async fn start(
            spine_addr: &str,
            node_id: &str,
            root: PathBuf,
            storage_address: IpAddr,
            nbd_port: u16,
        ) -> TestTail {
            std::fs::create_dir_all(root.join("images")).unwrap();
            let config = AgentConfig {
                pools: Pools::open(vec![PoolConfig {
                    name: "sata1".into(),
                    grade: "sata".into(),
                    path: root.join("sata1"),
                }])
                .unwrap(),
                images: root.join("images"),
                nbd_port,
                storage_address,
                addresses: Addresses::unmanaged(),
                report_interval: Duration::from_millis(300),
                templates_url: None,
            };
            let agent = TailAgent::start(config).await.unwrap();
            let hello = Hello {
                node_id: node_id.into(),
                role: Role::Tail,
                image_version: "test".into(),
                protocol_version: bigv_spine::PROTOCOL_VERSION,
                addresses: vec![storage_address.to_string()],
            };
            let mut nc = NodeConfig::new(spine_addr, hello);
            nc.keepalive = Keepalive {
                interval: Duration::from_millis(200),
                timeout: Duration::from_secs(3),
            };
            nc.backoff = bigv_spine::Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(500),
            };
            let node = NodeAgent::new(nc, agent.clone());
            agent.set_notifier(node.notifier());
            let task = tokio::spawn(async move {
                node.run().await;
            });
            let report = tokio::spawn(agent.clone().report_loop());
            TestTail {
                node_id: node_id.into(),
                agent,
                root,
                task,
                report,
            }
        }

        pub async fn stop(self) {
            self.task.abort();
            self.report.abort();
            self.agent.shutdown().await;
        }
    }

    /// Waits until the spine server has `node_id` ready.
    pub async fn handle(server: &SpineServer, node_id: &str) -> NodeHandle {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(h) = server.node(node_id).filter(|h| h.is_ready()) {
                return h;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{node_id} never got ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The disc as the brain's table holds it.
    pub fn disc(h: &NodeHandle, name: &str) -> Option<DiscSpec> {
        let name: ResourceName = name.parse().unwrap();
        match h.resource(&name) {
            Some((ResourceValue::Disc(d), _)) => Some(d),
            _ => None,
        }
    }

    /// Polls the brain's table until `pred` holds for the disc (or its absence).
    pub async fn wait_disc(
        server: &SpineServer,
        node_id: &str,
        name: &str,
        what: &str,
        pred: impl Fn(Option<&DiscSpec>) -> bool,
    ) -> Option<DiscSpec> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let d = server.node(node_id).and_then(|h| disc(&h, name));
            if pred(d.as_ref()) {
                return d;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {name} on {node_id}: {what}; last {d:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends the crate's logs to the test output (shown for failing tests).
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "bigv_tail=debug,info".into()),
        )
        .with_test_writer()
        .try_init();
}
