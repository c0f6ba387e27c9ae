//! Fencing: a head that has not heard the brain for the fence timeout
//! kills every VM, because by then the brain may start them elsewhere
//! (`brain/src/reconciler/fencing.rs` waits the same timeout plus a
//! margin). The clock must never run slow: "last heard" is taken as the
//! end of the session minus the keepalive timeout (a session can die
//! silently for that long before the link notices), and a restarted agent
//! starts from the last time a previous agent recorded contact
//! (`run_dir/spine-seen`), not from its own start.
//!
//! The timeout is the brain's: its `welcome` carries it (spine protocol
//! 3), and the fence keeps it in `run_dir/fence-timeout` so that an agent
//! restarted while the brain is away still fences on the brain's time.
//! The head's own `fence_timeout_secs` applies only until a brain has
//! said one (or when the brain is too old to say).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug)]
struct State {
    /// `None`: never fence.
    timeout: Option<Duration>,
    connected: bool,
    /// When the brain was last heard (valid while not connected).
    last_heard: Instant,
    /// VMs killed by the fence, not yet told to a new session.
    fenced: usize,
}

pub struct Fence {
    /// The head's own setting, used until a brain tells its own.
    configured: Option<Duration>,
    seen_file: PathBuf,
    timeout_file: PathBuf,
    state: Mutex<State>,
}

/// True once `last_heard + timeout` has passed without a connection.
pub fn due(connected: bool, last_heard: Instant, timeout: Duration, now: Instant) -> bool {
    !connected && now.saturating_duration_since(last_heard) >= timeout
}

impl Fence {
    /// A fence that counts from the last contact a previous agent
    /// recorded in `run_dir`, or from now, with the timeout a brain last
    /// gave (kept in `run_dir`) or else `configured` (`None`: never).
    pub fn new(configured: Option<Duration>, run_dir: &Path) -> Fence {
        let seen_file = run_dir.join("spine-seen");
        let timeout_file = run_dir.join("fence-timeout");
        let timeout = match std::fs::read_to_string(&timeout_file) {
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(secs) => Some(Duration::from_secs(secs)),
                Err(_) => {
                    tracing::warn!(file = %timeout_file.display(), "unreadable brain fence timeout: using the configured one");
                    configured
                }
            },
            Err(_) => configured,
        };
        let now = Instant::now();
        let last_heard = std::fs::metadata(&seen_file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .and_then(|ago| now.checked_sub(ago))
            .unwrap_or(now);
        Fence {
            configured,
            seen_file,
            timeout_file,
            state: Mutex::new(State {
                timeout,
                connected: false,
                last_heard,
                fenced: 0,
            }),
        }
    }

    /// The timeout in force (`None`: never fence).
    pub fn timeout(&self) -> Option<Duration> {
        self.state().timeout
    }

    /// The brain's welcome said `brain` (`None`: a brain too old to say).
    /// Kept for agents started later, before they hear a brain.
    pub fn told(&self, brain: Option<Duration>) {
        let timeout = match brain {
            Some(t) => {
                let written = std::fs::write(&self.timeout_file, format!("{}\n", t.as_secs()));
                if let Err(e) = written {
                    tracing::warn!(file = %self.timeout_file.display(), error = %e, "cannot keep the brain's fence timeout; a restarted agent would use the configured one");
                }
                Some(t)
            }
            None => {
                let _ = std::fs::remove_file(&self.timeout_file);
                self.configured
            }
        };
        let mut s = self.state();
        if s.timeout != timeout {
            tracing::info!(from = ?s.timeout, to = ?timeout, "fence timeout set by the brain");
            s.timeout = timeout;
        }
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
        s.timeout
            .is_some_and(|t| due(s.connected, s.last_heard, t, Instant::now()))
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
        let f = Fence::new(Some(Duration::from_secs(30)), dir.path());
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
        let g = Fence::new(Some(Duration::from_secs(30)), dir.path());
        assert!(g.is_due(), "40 s without contact is past a 30 s fence");
    }

    #[test]
    fn the_brains_timeout_wins_and_outlives_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let f = Fence::new(Some(Duration::from_secs(120)), dir.path());
        assert_eq!(f.timeout(), Some(Duration::from_secs(120)));
        f.told(Some(Duration::from_secs(20)));
        assert_eq!(f.timeout(), Some(Duration::from_secs(20)));
        f.connected();
        f.disconnected(Duration::from_secs(5));

        // An agent restarted 21 s after the last contact, brain still
        // away: the brain's 20 s apply, not its configured 120 s.
        let old = SystemTime::now() - Duration::from_secs(21);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("spine-seen"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let g = Fence::new(Some(Duration::from_secs(120)), dir.path());
        assert_eq!(g.timeout(), Some(Duration::from_secs(20)));
        assert!(g.is_due());

        // Even a head configured never to fence obeys the brain.
        let never = Fence::new(None, dir.path());
        assert!(never.is_due());

        // A brain too old to say: back to the head's own setting.
        g.told(None);
        assert_eq!(g.timeout(), Some(Duration::from_secs(120)));
        assert!(!dir.path().join("fence-timeout").exists());
        assert_eq!(Fence::new(None, dir.path()).timeout(), None);
        assert!(!Fence::new(None, dir.path()).is_due());
    }
}
