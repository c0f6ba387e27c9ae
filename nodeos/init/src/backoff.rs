//! Restart delays for the supervised agent: 1 s, 2 s, 4 s … up to 60 s;
//! a run that lasted at least a minute counts as healthy and starts the
//! sequence afresh, so an agent that crashes once a day restarts at once.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A run at least this long resets the delay.
    pub healthy_after: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, healthy_after: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            healthy_after,
            next: initial,
        }
    }

    /// The agent exited after running for `ran`: how long to wait before
    /// starting it again.
    pub fn after_exit(&mut self, ran: Duration) -> Duration {
        if ran >= self.healthy_after {
            self.next = self.initial;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_up_to_the_cap_and_resets_after_a_healthy_run() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(100);
        let delays: Vec<u64> = (0..9).map(|_| b.after_exit(quick).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.after_exit(61 * S), S);
        assert_eq!(b.after_exit(quick), 2 * S);
    }

    proptest::proptest! {
        #[test]
        fn delays_stay_within_bounds(runs in proptest::collection::vec(0u64..200, 0..50)) {
            let mut b = Backoff::default();
            for r in runs {
                let d = b.after_exit(Duration::from_secs(r));
                proptest::prop_assert!(d >= b.initial && d <= b.max);
                if r >= 60 {
                    proptest::prop_assert_eq!(d, b.initial);
                }
            }
        }
    }
}
