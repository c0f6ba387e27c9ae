//! Fencing: a head that has not heard the brain for the fence timeout
//! kills every VM, because by then the brain may start them elsewhere
//! (`brain/src/reconciler/fencing.rs` waits the same timeout plus a
//! margin). The clock must never run slow: "last heard" is taken as the
//! end of the session minus the keepalive timeout (a session can die
//! silently for that long before the link notices), and a restarted agent
//! starts from the last time a previous agent recorded contact
//! (`run_dir/spine-seen`), not from its own start.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug)]
struct State {
    connected: bool,
    /// When the brain was last heard (valid while not connected).
    last_heard: Instant,
    /// VMs killed by the fence, not yet told to a new session.
    fenced: usize,
}

pub struct Fence {
    timeout: Duration,
    seen_file: PathBuf,
    state: Mutex<State>,
}

/// True once `last_heard + timeout` has passed without a connection.
pub fn due(connected: bool, last_heard: Instant, timeout: Duration, now: Instant) -> bool {
    !connected && now.saturating_duration_since(last_heard) >= timeout
}

impl Fence {
    /// A fence that counts from the last contact a previous agent
    /// recorded in `run_dir`, or from now.
    pub fn new(timeout: Duration, run_dir: &Path) -> Fence {
        let seen_file = run_dir.join("spine-seen");
        let now = Instant::now();
        let last_heard = std::fs::metadata(&seen_file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .and_then(|ago| now.checked_sub(ago))
            .unwrap_or(now);
        Fence {
            timeout,
            seen_file,
            state: Mutex::new(State {
                connected: false,
                last_heard,
                fenced: 0,
            }),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fence state poisoned")
    }

    /// A session reached the dump: the brain is heard. Returns how many
    /// VMs the fence killed while it was away (to be said once).
    pub fn connected(&self) -> usize {
        let fenced = {
            let mut s = self.state();
            s.connected = true;
            std::mem::take(&mut s.fenced)
        };
        self.record_contact();
        fenced
    }

    /// Notes contact while connected (called periodically).
    pub fn record_contact(&self) {
        if self.state().connected {
            let _ = std::fs::write(&self.seen_file, b"");
        }
    }

    /// The session ended; it may have been silent for `keepalive_timeout`.
    pub fn disconnected(&self, keepalive_timeout: Duration) {
        let mut s = self.state();
        if s.connected {
            let now = Instant::now();
            s.connected = false;
            s.last_heard = now.checked_sub(keepalive_timeout).unwrap_or(now);
        }
    }

    /// True if the VMs must die now.
    pub fn is_due(&self) -> bool {
        let s = self.state();
        due(s.connected, s.last_heard, self.timeout, Instant::now())
    }

    /// How long the brain has not been heard, if disconnected.
    pub fn silent_for(&self) -> Option<Duration> {
        let s = self.state();
        (!s.connected).then(|| s.last_heard.elapsed())
    }

    pub fn add_fenced(&self, n: usize) {
        self.state().fenced += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_only_when_disconnected_past_the_timeout() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(120);
        assert!(!due(false, t0, timeout, t0 + Duration::from_secs(119)));
        assert!(due(false, t0, timeout, t0 + Duration::from_secs(120)));
        assert!(!due(true, t0, timeout, t0 + Duration::from_secs(500)));
    }

    #[test]
    fn disconnect_counts_from_before_the_keepalive_timeout_and_restart_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = Fence::new(Duration::from_secs(30), dir.path());
        assert_eq!(f.connected(), 0);
        assert!(dir.path().join("spine-seen").exists());
        f.disconnected(Duration::from_secs(20));
        let silent = f.silent_for().unwrap();
        assert!(silent >= Duration::from_secs(20), "{silent:?}");
        assert!(!f.is_due());
        f.add_fenced(2);
        assert_eq!(f.connected(), 2, "said once");
        assert_eq!(f.connected(), 0);

        // A new agent counts from the recorded contact, not from its start.
        let old = SystemTime::now() - Duration::from_secs(40);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("spine-seen"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let g = Fence::new(Duration::from_secs(30), dir.path());
        assert!(g.is_due(), "40 s without contact is past a 30 s fence");
    }
}
