//! The real OpenSSH client (`/usr/bin/ssh`) for the console tests.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long `ssh` gets to show something or exit.
pub const SSH_WAIT: Duration = Duration::from_secs(30);

/// A new Ed25519 key pair `dir/name`; its private key's path and public
/// key line.
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `ssh` whose output is collected.
pub struct Ssh {
    child: tokio::process::Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

impl Ssh {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    pub async fn wait_for(&self, what: &str) {
        let deadline = tokio::time::Instant::now() + SSH_WAIT;
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

    pub async fn type_(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Waits for ssh to exit; its status and stderr.
    pub async fn exit(mut self) -> (i32, String) {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(SSH_WAIT, self.child.wait())
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
pub fn ssh(port: u16, user: &str, args: &[&str], env: &[(&str, PathBuf)]) -> Ssh {
    ssh_at("127.0.0.1", port, user, args, env)
}

/// `ssh` to `user@host:port` in batch mode, with `args` added.
pub fn ssh_at(host: &str, port: u16, user: &str, args: &[&str], env: &[(&str, PathBuf)]) -> Ssh {
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
    .arg(format!("{user}@{host}"))
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

pub fn key_args(key: &Path) -> Vec<String> {
    vec![
        "-i".into(),
        key.display().to_string(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
    ]
}

/// `&str`s of `v` (for [`key_args`]).
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// An executable `SSH_ASKPASS` script in `dir` answering `password`, and
/// the environment that makes OpenSSH use it without a terminal.
pub fn askpass(dir: &Path, name: &str, password: &str) -> Vec<(&'static str, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\necho '{password}'\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    vec![
        ("SSH_ASKPASS", path),
        ("SSH_ASKPASS_REQUIRE", "force".into()),
        ("DISPLAY", ":0".into()),
    ]
}

/// Password authentication only, one try.
pub const PASSWORD_ARGS: [&str; 6] = [
    "-o",
    "PreferredAuthentications=password",
    "-o",
    "PubkeyAuthentication=no",
    "-o",
    "NumberOfPasswordPrompts=1",
];

/// The first `n` bytes a connection to `127.0.0.1:port` (an `ssh -L`
/// tunnel, which may take a moment to listen) receives.
pub async fn first_bytes(port: u16, n: usize) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + SSH_WAIT;
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let mut got = vec![0u8; n];
            if let Ok(Ok(_)) = tokio::time::timeout(SSH_WAIT, s.read_exact(&mut got)).await {
                return got;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing came through the tunnel on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
