//! A VM's SSH console driven by the real OpenSSH client (`/usr/bin/ssh`),
//! against a stand-in for qemu: a serial socket and scroll-back file the
//! test writes, and a VNC socket that greets like qemu's. On loopback (or
//! in a network namespace of the test's own), fast (no VM); `console.rs`
//! does the same with a real guest.

mod common;

use std::path::Path;
use std::time::Duration;

use bigv_head::argv::VmPaths;
use bigv_head::console::{Console, ConsoleConfig, auth};
use bigv_spine::resource::{UserAuthentication, VmSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use common::ssh::*;

const WAIT: Duration = Duration::from_secs(20);
/// `openssl passwd -6 -salt saltsalt 'correct horse'`
const BOB_HASH: &str = "$6$saltsalt$hRM5XZ86KXEw9UOmjigeVqFgULtFB2sgpC9lXQDfMib3Zgw7mEiUvBJI2EplzfAqxL5Vvwp2scFtv/uamSo5z0";

fn append(log: &Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(log)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// qemu's side of a VM: run directory, a scroll-back log holding an
/// earlier boot and this one's first line, a serial socket, and a VNC
/// socket greeting like qemu's.
fn stand_in(dir: &Path) -> (VmPaths, UnixListener) {
    let paths = VmPaths::new(&dir.join("run"), &dir.join("log"), "t1");
    std::fs::create_dir_all(&paths.dir).unwrap();
    std::fs::create_dir_all(paths.serial_log.parent().unwrap()).unwrap();
    std::fs::write(&paths.serial_log, "an earlier boot\n").unwrap();
    bigv_head::console::mark_power_on(&paths);
    append(&paths.serial_log, "BIGV-GUEST BOOT id=1\r\n");
    let serial = UnixListener::bind(&paths.serial).unwrap();
    let vnc = UnixListener::bind(&paths.vnc).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = vnc.accept().await {
            let _ = s.write_all(b"RFB 003.008\n").await;
            tokio::spawn(async move {
                let mut sink = [0u8; 64];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    (paths, serial)
}

/// Waits until `host:port` accepts (or, with `up` false, refuses).
async fn listening(host: &str, port: u16, up: bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect((host, port)).await.is_ok() != up {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{host}:{port} never {}",
            if up { "listened" } else { "closed" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn openssh_reaches_the_serial_console_and_vnc() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, serial) = stand_in(dir.path());

    let (alice_key, alice_pub) = keygen(dir.path(), "alice");
    let (mallory_key, mallory_pub) = keygen(dir.path(), "mallory");
    let users = [
        ("alice", Some(alice_pub), None),
        ("bob", None, Some(BOB_HASH.to_owned())),
        // Has credentials but is not a console user.
        ("mallory", Some(mallory_pub), None),
    ];
    let spec = VmSpec {
        management_address: Some("127.0.0.1".into()),
        console_users: vec!["alice".into(), "bob".into()],
        user_authentication: users
            .into_iter()
            .map(|(u, k, p)| {
                (
                    u.to_owned(),
                    UserAuthentication {
                        authorized_keys: k,
                        password: p,
                    },
                )
            })
            .collect(),
        ..Default::default()
    };
    let port = free_port();
    let config = ConsoleConfig {
        port,
        bind: None,
        host_key: Some(dir.path().join("state/host_key")),
        interface: None,
    };
    let host_key = auth::host_key(&config.host_key_path(dir.path())).unwrap();
    let ended = CancellationToken::new();
    let stopping = CancellationToken::new();
    let _console = Console::start(
        &config,
        Some(&host_key),
        "t1",
        &spec,
        &paths,
        &ended,
        &stopping,
    );
    listening("127.0.0.1", port, true).await;

    // Alice: the scroll-back since this power-on (not the earlier boot),
    // then live output.
    let alice_args = key_args(&alice_key);
    let alice_args = strs(&alice_args);
    let mut alice = ssh(port, "alice", &alice_args, &[]);
    alice.wait_for("BIGV-GUEST BOOT id=1").await;
    assert!(
        !alice.text().contains("an earlier boot"),
        "{}",
        alice.text()
    );
    let (mut guest, _) = tokio::time::timeout(WAIT, serial.accept())
        .await
        .expect("the console connects to the serial socket")
        .unwrap();
    append(&paths.serial_log, "TICK 1 uptime=1.0\r\n");
    alice.wait_for("TICK 1 uptime=1.0").await;

    // Bob, by password (OpenSSH asks SSH_ASKPASS, forced), at once.
    let askpass_env = askpass(dir.path(), "askpass", "correct horse");
    // Bob asks for a pty (`-tt`), as an interactive `ssh` does.
    let mut bob_args = PASSWORD_ARGS.to_vec();
    bob_args.push("-tt");
    let mut bob = ssh(port, "bob", &bob_args, &askpass_env);
    bob.wait_for("TICK 1 uptime=1.0").await;
    append(&paths.serial_log, "TICK 2 uptime=2.0\r\n");
    alice.wait_for("TICK 2").await;
    bob.wait_for("TICK 2").await;

    // Both type; the guest reads both; its answer reaches both.
    alice.type_("sta").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    bob.type_("tus\n").await;
    let mut typed = vec![0u8; 7];
    tokio::time::timeout(WAIT, guest.read_exact(&mut typed))
        .await
        .expect("keystrokes reach the guest")
        .unwrap();
    assert_eq!(typed, b"status\n");
    append(&paths.serial_log, "BIGV-GUEST STATUS boot_id=1\r\n");
    alice.wait_for("STATUS boot_id=1").await;
    bob.wait_for("STATUS boot_id=1").await;

    // Refused: mallory's key (not a console user), alice with mallory's
    // key, bob with a wrong password.
    let mallory_args = key_args(&mallory_key);
    let mallory_args = strs(&mallory_args);
    for (user, args) in [("mallory", &mallory_args), ("alice", &mallory_args)] {
        let (code, err) = ssh(port, user, args, &[]).exit().await;
        assert_eq!(code, 255, "{user}: {err}");
        assert!(err.contains("Permission denied"), "{user}: {err}");
    }
    let wrong_env = askpass(dir.path(), "wrong", "correct horsf");
    let (code, err) = ssh(port, "bob", &PASSWORD_ARGS, &wrong_env).exit().await;
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("Permission denied"), "{err}");

    // VNC through `ssh -L`; other destinations refused.
    let vnc_port = free_port();
    let other_port = free_port();
    let forward = format!("{vnc_port}:127.0.0.1:5900");
    let other = format!("{other_port}:127.0.0.1:22");
    let mut tunnel_args = alice_args.clone();
    tunnel_args.extend(["-N", "-L", &forward, "-L", &other]);
    let tunnel = ssh(port, "alice", &tunnel_args, &[]);
    let greeting = first_bytes(vnc_port, 12).await;
    assert_eq!(&greeting, b"RFB 003.008\n");
    let mut refused = tokio::net::TcpStream::connect(("127.0.0.1", other_port))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, refused.read(&mut buf))
        .await
        .expect("a refused forward closes")
        .unwrap_or(0);
    assert_eq!(n, 0);
    drop(tunnel);

    // Alice detaches (closes her end); Bob stays attached.
    let (code, _) = alice.exit().await;
    assert_eq!(code, 0);
    append(&paths.serial_log, "TICK 3 uptime=3.0\r\n");
    bob.wait_for("TICK 3").await;
    // With a pty, OpenSSH's `~.` leaves too.
    let mut tty_args = alice_args.clone();
    tty_args.push("-tt");
    let mut escaping = ssh(port, "alice", &tty_args, &[]);
    escaping.wait_for("TICK 3").await;
    escaping.type_("\r~.").await;
    let (code, err) = escaping.exit().await;
    assert_eq!(code, 255, "{err}");
    append(&paths.serial_log, "TICK 4 uptime=4.0\r\n");
    bob.wait_for("TICK 4").await;

    // The VM ends: Bob is told and disconnected; the port closes.
    ended.cancel();
    bob.wait_for("[bigv: the VM stopped]").await;
    let (code, err) = bob.exit().await;
    assert_eq!(code, 0, "{err}");
    listening("127.0.0.1", port, false).await;
}

/// With `interface` set the console puts the management address on it
/// while the VM runs, keeps it across an agent restart, and takes it away
/// when the VM ends. In a network namespace of its own.
#[test]
fn the_console_brings_its_management_address_up_and_down() {
    bigv_testkit::in_netns_with_bridge("mgmt0", || async {
        let dir = tempfile::tempdir().unwrap();
        let (paths, _serial) = stand_in(dir.path());
        let (key, public) = keygen(dir.path(), "alice");
        let mgmt = "10.7.0.9";
        let spec = VmSpec {
            management_address: Some(mgmt.into()),
            console_users: vec!["alice".into()],
            user_authentication: [(
                "alice".to_owned(),
                UserAuthentication {
                    authorized_keys: Some(public),
                    password: None,
                },
            )]
            .into(),
            ..Default::default()
        };
        let config = ConsoleConfig {
            port: 22,
            bind: None,
            host_key: None,
            interface: Some("mgmt0".into()),
        };
        let host_key = auth::host_key(&config.host_key_path(dir.path())).unwrap();
        let mgmt0 = bigv_head::console::address::Interface::open("mgmt0")
            .await
            .unwrap();
        let ip = mgmt.parse().unwrap();
        assert!(!mgmt0.has(ip).await.unwrap());
        let ended = CancellationToken::new();
        let start = |stopping: &CancellationToken| {
            Console::start(
                &config,
                Some(&host_key),
                "t1",
                &spec,
                &paths,
                &ended,
                stopping,
            )
        };
        let agent = CancellationToken::new();
        let _console = start(&agent);
        listening(mgmt, 22, true).await;
        assert!(mgmt0.has(ip).await.unwrap());
        let args = key_args(&key);
        let alice = ssh_at(mgmt, 22, "alice", &strs(&args), &[]);
        alice.wait_for("BIGV-GUEST BOOT id=1").await;
        alice.exit().await;

        // The agent restarts: the address stays; the next agent serves it.
        agent.cancel();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(mgmt0.has(ip).await.unwrap());
        let agent = CancellationToken::new();
        let _console = start(&agent);
        listening(mgmt, 22, true).await;

        // The VM ends: the address goes.
        ended.cancel();
        let deadline = tokio::time::Instant::now() + WAIT;
        while mgmt0.has(ip).await.unwrap() {
            assert!(tokio::time::Instant::now() < deadline, "{mgmt} stays");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        listening(mgmt, 22, false).await;
    });
}
