//! A VM's SSH console from the customer's side: the real OpenSSH client
//! logs in to the VM's management address with the customer's BigV
//! password (answered by an `SSH_ASKPASS` script, as a desktop would) and
//! types lines on the guest's serial console.
//!
//! [`Session`] stays logged in: type several lines, read what the console
//! shows, each line with the moment it arrived (how a scenario tells what
//! the guest did before, during and after a step). [`login_and_type`] is
//! the one-line case.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest line [`Session::type_line`] types. The guest reads its
/// serial console in canonical mode, whose line buffer holds 4095
/// characters; a quarter of that leaves room and keeps lines readable.
pub const MAX_LINE: usize = 1024;

/// What the console showed: every byte, and the complete lines (without
/// their `\r\n`) with the moment each one's end arrived.
#[derive(Default)]
struct Seen {
    bytes: Vec<u8>,
    lines: Vec<(Instant, String)>,
    partial: Vec<u8>,
}

impl Seen {
    fn add(&mut self, chunk: &[u8], now: Instant) {
        self.bytes.extend_from_slice(chunk);
        for &b in chunk {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial)
                    .trim_end_matches('\r')
                    .to_owned();
                self.lines.push((now, line));
                self.partial.clear();
            } else {
                self.partial.push(b);
            }
        }
    }
}

fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            s.lock()
                .expect("output poisoned")
                .add(&chunk[..n], Instant::now());
        }
    });
    seen
}

/// A logged-in SSH console session (OpenSSH with a pty, `-tt`); the
/// client is killed when it is dropped.
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    out: Arc<Mutex<Seen>>,
    err: Arc<Mutex<Seen>>,
    // The askpass script lives as long as the client may ask.
    _dir: tempfile::TempDir,
}

impl Session {
    /// Starts `ssh user@address` (port 22) answering its password prompt
    /// with `password`. Returns at once: wait for what the console should
    /// show ([`Session::wait_for`]) before typing.
    pub fn login(address: &str, user: &str, password: &str) -> Session {
        use std::os::unix::fs::PermissionsExt;
        assert!(
            !password.contains('\''),
            "the askpass script quotes the password with '"
        );
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
            // Typed lines go through as they are (no `~.` and such).
            .args(["-o", "EscapeChar=none"])
            .arg(format!("{user}@{address}"))
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ssh (tools/setup-host.sh installs openssh-client)");
        let out = collect(child.stdout.take().expect("piped"));
        let err = collect(child.stderr.take().expect("piped"));
        let stdin = child.stdin.take().expect("piped");
        Session {
            child,
            stdin,
            out,
            err,
            _dir: dir,
        }
    }

    /// Everything the console showed so far (its scroll-back since the
    /// VM's power-on, then what came while logged in).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().expect("output poisoned").bytes).into_owned()
    }

    /// The complete lines shown so far, each with when it arrived (the
    /// scroll-back's lines all at login).
    pub fn lines(&self) -> Vec<(Instant, String)> {
        self.out.lock().expect("output poisoned").lines.clone()
    }

    fn errors(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().expect("stderr poisoned").bytes).into_owned()
    }

    /// Types `line` and a newline on the console. Panics on a line the
    /// serial console would not take as typed: longer than [`MAX_LINE`],
    /// or holding a control character (a newline, or one the guest's
    /// terminal acts on, such as ^C or ^U).
    pub fn type_line(&mut self, line: &str) {
        assert!(
            line.len() <= MAX_LINE,
            "a {} character line is longer than {MAX_LINE}: {line:?}",
            line.len()
        );
        assert!(
            !line.chars().any(char::is_control),
            "a control character in {line:?}"
        );
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("typing on the console: {e}; ssh said {:?}", self.errors()));
    }

    /// Waits until `found` finds something in the lines shown so far and
    /// returns it. Panics, saying what the console showed, after `limit`
    /// or if ssh ended.
    pub fn wait_until<T>(
        &mut self,
        what: &str,
        limit: Duration,
        mut found: impl FnMut(&[(Instant, String)]) -> Option<T>,
    ) -> T {
        self.wait_seen(what, limit, |seen| found(&seen.lines))
    }

    /// Waits until the console shows `what` (anywhere, even in an
    /// unfinished line).
    pub fn wait_for(&mut self, what: &str, limit: Duration) {
        self.wait_seen(&format!("{what:?}"), limit, |seen| {
            let shown = String::from_utf8_lossy(&seen.bytes).contains(what);
            shown.then_some(())
        });
    }

    fn wait_seen<T>(
        &mut self,
        what: &str,
        limit: Duration,
        mut found: impl FnMut(&Seen) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(t) = found(&self.out.lock().expect("output poisoned")) {
                return t;
            }
            let ended = self.child.try_wait().ok().flatten();
            assert!(
                ended.is_none() && Instant::now() < deadline,
                "the console never showed {what} (ssh {}); it showed {:?}; ssh said {:?}",
                ended.map_or("still running".into(), |s| format!("ended: {s}")),
                self.text(),
                self.errors()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let mut session = Session::login(address, user, password);
    session.wait_for(first, limit);
    session.type_line(line);
    session.wait_for(answer, limit);
    session.text()
}

#[cfg(test)]
mod tests {
    use super::Seen;
    use std::time::Instant;

    #[test]
    fn lines_are_cut_at_newlines_across_chunks() {
        let mut seen = Seen::default();
        let (a, b) = (
            Instant::now(),
            Instant::now() + std::time::Duration::from_secs(1),
        );
        seen.add(b"TICK 1\r\nSH-OUT 1: W 0 12", a);
        seen.add(b"8 abc\r\npart", b);
        let lines: Vec<(Instant, &str)> =
            seen.lines.iter().map(|(t, l)| (*t, l.as_str())).collect();
        assert_eq!(lines, [(a, "TICK 1"), (b, "SH-OUT 1: W 0 128 abc")]);
        assert_eq!(seen.partial, b"part");
        assert_eq!(seen.bytes, b"TICK 1\r\nSH-OUT 1: W 0 128 abc\r\npart");
    }
}
