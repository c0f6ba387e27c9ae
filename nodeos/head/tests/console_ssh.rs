//! A VM's SSH console driven by the real OpenSSH client (`/usr/bin/ssh`),
//! against a stand-in for qemu: a serial socket and scroll-back file the
//! test writes, and a VNC socket that greets like qemu's. On loopback,
//! fast (no VM); `console.rs` does the same with a real guest.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bigv_head::argv::VmPaths;
use bigv_head::console::{Console, ConsoleConfig, auth};
use bigv_spine::resource::{UserAuthentication, VmSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
/// `openssl passwd -6 -salt saltsalt 'correct horse'`
const BOB_HASH: &str = "$6$saltsalt$hRM5XZ86KXEw9UOmjigeVqFgULtFB2sgpC9lXQDfMib3Zgw7mEiUvBJI2EplzfAqxL5Vvwp2scFtv/uamSo5z0";

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `ssh` whose output is collected.
struct Ssh {
    child: tokio::process::Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

impl Ssh {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    async fn wait_for(&self, what: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.text().contains(what) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "ssh never showed {what:?}; it showed {:?}, stderr {:?}",
                self.text(),
                String::from_utf8_lossy(&self.err.lock().unwrap())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn type_(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Waits for ssh to exit; its status and stderr.
    async fn exit(mut self) -> (i32, String) {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("ssh exits")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let err = String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned();
        (status.code().unwrap_or(-1), err)
    }
}

fn collect(mut r: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    tokio::spawn(async move {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

/// `ssh` to `user@127.0.0.1:port` in batch mode, with `args` added.
fn ssh(port: u16, user: &str, args: &[&str], env: &[(&str, &Path)]) -> Ssh {
    let mut cmd = tokio::process::Command::new("/usr/bin/ssh");
    cmd.args([
        "-p",
        &port.to_string(),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=10",
        "-F",
        "/dev/null",
    ])
    .args(args)
    .arg(format!("{user}@127.0.0.1"))
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("ssh runs");
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    Ssh { child, out, err }
}

fn key_args(key: &Path) -> Vec<String> {
    vec![
        "-i".into(),
        key.display().to_string(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
    ]
}

fn append(log: &Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(log)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

#[tokio::test]
async fn openssh_reaches_the_serial_console_and_vnc() {
    let dir = tempfile::tempdir().unwrap();
    let paths = VmPaths::new(&dir.path().join("run"), &dir.path().join("log"), "t1");
    std::fs::create_dir_all(&paths.dir).unwrap();
    std::fs::create_dir_all(paths.serial_log.parent().unwrap()).unwrap();
    std::fs::write(&paths.serial_log, "an earlier boot\n").unwrap();
    bigv_head::console::mark_power_on(&paths);
    append(&paths.serial_log, "BIGV-GUEST BOOT id=1\r\n");
    // qemu's sockets: the serial port, and VNC greeting like qemu's.
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
    // Listening?
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Alice: the scroll-back since this power-on (not the earlier boot),
    // then live output.
    let alice_args = key_args(&alice_key);
    let alice_args: Vec<&str> = alice_args.iter().map(String::as_str).collect();
    let mut alice = ssh(port, "alice", &alice_args, &[]);
    alice.wait_for("BIGV-GUEST BOOT id=1").await;
    assert!(!alice.text().contains("an earlier boot"), "{}", alice.text());
    let (mut guest, _) = tokio::time::timeout(WAIT, serial.accept())
        .await
        .expect("the console connects to the serial socket")
        .unwrap();
    append(&paths.serial_log, "TICK 1 uptime=1.0\r\n");
    alice.wait_for("TICK 1 uptime=1.0").await;

    // Bob, by password (OpenSSH asks SSH_ASKPASS, forced), at once.
    let askpass = dir.path().join("askpass");
    std::fs::write(&askpass, "#!/bin/sh\necho 'correct horse'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    let password_args = [
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "NumberOfPasswordPrompts=1",
    ];
    let askpass_env: [(&str, &Path); 3] = [
        ("SSH_ASKPASS", &askpass),
        ("SSH_ASKPASS_REQUIRE", Path::new("force")),
        ("DISPLAY", Path::new(":0")),
    ];
    let mut bob = ssh(port, "bob", &password_args, &askpass_env);
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
    let mallory_args: Vec<&str> = mallory_args.iter().map(String::as_str).collect();
    for (user, args) in [("mallory", &mallory_args), ("alice", &mallory_args)] {
        let (code, err) = ssh(port, user, args, &[]).exit().await;
        assert_eq!(code, 255, "{user}: {err}");
        assert!(err.contains("Permission denied"), "{user}: {err}");
    }
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "#!/bin/sh\necho 'correct horsf'\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrong_env: [(&str, &Path); 3] = [
        ("SSH_ASKPASS", &wrong),
        ("SSH_ASKPASS_REQUIRE", Path::new("force")),
        ("DISPLAY", Path::new(":0")),
    ];
    let (code, err) = ssh(port, "bob", &password_args, &wrong_env).exit().await;
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
    let deadline = tokio::time::Instant::now() + WAIT;
    let greeting = loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", vnc_port)).await {
            let mut g = [0u8; 12];
            if let Ok(Ok(_)) = tokio::time::timeout(WAIT, s.read_exact(&mut g)).await {
                break g;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the VNC tunnel never worked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
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

    // The VM ends: Bob is told and disconnected; the port closes.
    ended.cancel();
    bob.wait_for("[bigv: the VM stopped]").await;
    let (code, err) = bob.exit().await;
    assert_eq!(code, 0, "{err}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still listening after the VM ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
