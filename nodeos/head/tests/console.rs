//! The SSH console of a real VM (the test guest under TCG, started through
//! the head agent on a real spine), used with the real OpenSSH client:
//! the boot line from the scroll-back and live ticks; `status` typed and
//! answered; two clients at once; a wrong key and a user who is not a
//! console user refused; VNC through `ssh -L`; the console back after an
//! agent restart (re-adopted VM) with the scroll-back since power-on; a
//! console user added by an update order; the session ended when the VM
//! is removed. Slow tier: BIGV_SLOW_TESTS=1.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bigv_head::agent::{AgentConfig, HeadAgent};
use bigv_head::console::ConsoleConfig;
use bigv_spine::resource::{ResourceName, UserAuthentication, VmDisc, VmSpec};
use bigv_spine::{NodeAgent, Resource};
use bigv_test_guest::lines;
use common::ssh::*;
use common::*;

const BOOT_WAIT: Duration = Duration::from_secs(240);

struct ConsoleHead {
    agent: Arc<HeadAgent>,
    task: tokio::task::JoinHandle<()>,
}

impl ConsoleHead {
    async fn start(spine: SocketAddr, root: &Path, port: u16) -> ConsoleHead {
        let config = AgentConfig {
            console: ConsoleConfig {
                port,
                bind: None,
                host_key: None,
                interface: None,
            },
            ..agent_config(root)
        };
        let agent = HeadAgent::start(config).await.unwrap();
        let node = NodeAgent::new(
            head_node_config(spine, "head1", Duration::from_secs(5)),
            agent.clone(),
        );
        agent.set_notifier(node.notifier());
        let runner = agent.clone();
        let task = tokio::spawn(async move {
            runner.run_spine(&node).await;
        });
        ConsoleHead { agent, task }
    }

    /// Stops the agent as a crash would, leaving qemu running.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        self.agent.shutdown().await;
    }
}

async fn listening(port: u16) {
    wait_for("the console to listen", WAIT, || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssh_console_shows_and_drives_a_real_guest() {
    if !slow() {
        return;
    }
    logs();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let _killer = KillVms(root.join("run"));
    let (_image, tail) = guest_on_tail(&root, &["127.0.0.1"]).await;
    let server = spine().await;
    let port = free_port();
    let head = ConsoleHead::start(server.local_addr(), &root, port).await;
    let h = ready(&server, "head1").await;

    let (alice_key, alice_pub) = keygen(&root, "alice");
    let (mallory_key, mallory_pub) = keygen(&root, "mallory");
    let auth = |keys: String| UserAuthentication {
        authorized_keys: Some(keys),
        password: None,
    };
    let order = VmSpec {
        memory: 256,
        cores: 1,
        balloon_on: true,
        keymap: "en-gb".into(),
        display_name: "t.test".into(),
        discs: vec![VmDisc {
            address: format!("nbd:{}", tail.local_addr()),
            model: "virtio".into(),
            serial: Some("guestdisc".into()),
        }],
        management_address: Some("127.0.0.1".into()),
        console_users: vec!["alice".into()],
        user_authentication: [
            ("alice".to_owned(), auth(alice_pub)),
            ("mallory".to_owned(), auth(mallory_pub)),
        ]
        .into(),
        ..Default::default()
    };
    h.create(Resource::vm("t1", order.clone()), 1)
        .await
        .unwrap();
    listening(port).await;

    // Attached from before the boot: the boot line and ticks arrive live.
    let alice_args = key_args(&alice_key);
    let alice_args = strs(&alice_args);
    let first = ssh(port, "alice", &alice_args, &[]);
    let boot_wait = |s: &Ssh| {
        let text = s.text();
        text.lines()
            .find_map(lines::boot_id)
            .map(str::to_owned)
            .filter(|_| text.contains(lines::TICK))
    };
    let boot_id = wait_for("the boot line and a tick over ssh", BOOT_WAIT, || {
        boot_wait(&first)
    })
    .await;

    // A second client attaching later gets the boot line from the
    // scroll-back, then live ticks too.
    let mut second = ssh(port, "alice", &alice_args, &[]);
    second.wait_for(&format!("{}{boot_id}", lines::BOOT)).await;
    let ticks = |s: &Ssh| {
        s.text()
            .lines()
            .filter_map(lines::tick)
            .map(|(n, _)| n)
            .max()
            .unwrap_or(0)
    };
    let now = ticks(&second);
    wait_for("live ticks on both", Duration::from_secs(60), || {
        (ticks(&second) > now + 1 && ticks(&first) > now + 1).then_some(())
    })
    .await;

    // `status` typed on one; the guest's answer shows on both.
    second.type_("status\n").await;
    let status = format!("{}boot_id={boot_id}", lines::STATUS);
    wait_for("the status answer on both", Duration::from_secs(60), || {
        (first.text().contains(&status) && second.text().contains(&status)).then_some(())
    })
    .await;

    // Refused: a key that is not alice's; a user who is not a console user.
    let mallory_args = key_args(&mallory_key);
    let mallory_args = strs(&mallory_args);
    for (user, args) in [("alice", &mallory_args), ("mallory", &mallory_args)] {
        let (code, err) = ssh(port, user, args, &[]).exit().await;
        assert_eq!(code, 255, "{user}: {err}");
        assert!(err.contains("Permission denied"), "{user}: {err}");
    }

    // VNC through the tunnel reaches qemu's VNC server.
    let vnc_port = free_port();
    let forward = format!("{vnc_port}:127.0.0.1:5900");
    let mut tunnel_args = alice_args.clone();
    tunnel_args.extend(["-N", "-L", &forward]);
    let tunnel = ssh(port, "alice", &tunnel_args, &[]);
    assert_eq!(first_bytes(vnc_port, 12).await, b"RFB 003.008\n");
    drop(tunnel);
    drop(second);

    // Agent restart: the console goes with the agent and comes back with
    // the re-adopted VM, scroll-back since power-on included.
    head.stop().await;
    first.wait_for("[bigv: the head agent is restarting").await;
    first.exit().await;
    let head = ConsoleHead::start(server.local_addr(), &root, port).await;
    let h = ready(&server, "head1").await;
    assert!(vm_in_table(&h, "t1").is_some(), "vm.t1 re-adopted");
    listening(port).await;
    let mut again = ssh(port, "alice", &alice_args, &[]);
    again.wait_for(&format!("{}{boot_id}", lines::BOOT)).await;
    let now = ticks(&again);
    wait_for(
        "live ticks after the restart",
        Duration::from_secs(60),
        || (ticks(&again) > now + 1).then_some(()),
    )
    .await;
    again.type_("status\n").await;
    wait_for(
        "the status answer after the restart",
        Duration::from_secs(60),
        || (again.text().matches(&status).count() >= 2).then_some(()),
    )
    .await;

    // An update makes mallory a console user: she gets in at once, and
    // the head reports the new users.
    let mut order = order;
    order.console_users.push("mallory".into());
    h.update(Resource::vm("t1", order.clone()), 2)
        .await
        .unwrap();
    assert_eq!(
        vm_in_table(&h, "t1").unwrap().console_users,
        ["alice", "mallory"]
    );
    let mallory = ssh(port, "mallory", &mallory_args, &[]);
    mallory.wait_for(&format!("{}{boot_id}", lines::BOOT)).await;
    drop(mallory);

    // The VM removed: the session is told and ends; the port closes.
    h.remove(ResourceName::vm("t1"), 3).await.unwrap();
    again.wait_for("[bigv: the VM stopped]").await;
    let (code, err) = again.exit().await;
    assert_eq!(code, 0, "{err}");
    wait_for("the console to stop listening", WAIT, || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .is_err()
            .then_some(())
    })
    .await;
    head.stop().await;
    tail.stop().await;
}
