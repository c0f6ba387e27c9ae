//! A VM's SSH console from the customer's side: the real OpenSSH client
//! logs in to the VM's management address with the customer's BigV
//! password (answered by an `SSH_ASKPASS` script, as a desktop would) and
//! types a line on the guest's serial console.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a console session showed.
pub struct Shown {
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

impl Shown {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().expect("output poisoned")).into_owned()
    }

    fn errors(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().expect("stderr poisoned")).into_owned()
    }

    fn wait_for(&self, what: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.text().contains(what) {
            assert!(
                Instant::now() < deadline,
                "the console never showed {what:?}; it showed {:?}; ssh said {:?}",
                self.text(),
                self.errors()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock()
                .expect("output poisoned")
                .extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

/// Logs in to `user@address` (port 22) with `password`, waits until the
/// console shows `first` (its scroll-back since power-on), types `line`,
/// waits for `answer` and leaves; everything it showed. Panics, saying
/// what it saw, if either does not come within `limit`.
pub fn login_and_type(
    address: &str,
    user: &str,
    password: &str,
    first: &str,
    line: &str,
    answer: &str,
    limit: Duration,
) -> String {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("a temporary folder");
    let askpass = dir.path().join("askpass");
    std::fs::write(&askpass, format!("#!/bin/sh\necho '{password}'\n")).expect("askpass");
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut child = Command::new("ssh")
        .args(["-tt", "-F", "/dev/null"])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "LogLevel=ERROR"])
        .args(["-o", "ConnectTimeout=20"])
        .args(["-o", "PreferredAuthentications=password"])
        .args(["-o", "PubkeyAuthentication=no"])
        .args(["-o", "NumberOfPasswordPrompts=1"])
        .arg(format!("{user}@{address}"))
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh (tools/setup-host.sh installs openssh-client)");
    let shown = Shown {
        out: collect(child.stdout.take().expect("piped")),
        err: collect(child.stderr.take().expect("piped")),
    };
    let mut stdin = child.stdin.take().expect("piped");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        shown.wait_for(first, limit);
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("typing on the console");
        shown.wait_for(answer, limit);
    }));
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    shown.text()
}
