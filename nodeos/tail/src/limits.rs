//! Per-disc I/O limits: a token bucket for requests per second and one
//! for bytes per second, shared by every connection to the disc.
//!
//! A request takes its tokens (one op; its READ or WRITE length in bytes)
//! as soon as it is read and then waits until both buckets are out of
//! debt: a bucket may go below zero, so a request larger than the burst
//! is admitted too (after a proportionate wait), and requests are served
//! in the order they arrived. Nothing is refused: a client over its rate
//! just sees its requests take longer, as on a slower disc. While a
//! connection waits it reads no further requests, so TCP holds the
//! client back and the tail buffers nothing extra.
//!
//! Burst: a bucket holds [`BURST`] of its rate, and a disc starts full, so
//! short bursts (a boot, a `sync`) run at full speed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bigv_spine::resource::DiscLimits;

/// How much a bucket holds, in seconds of its rate.
pub const BURST: Duration = Duration::from_secs(1);

/// One token bucket; `rate` tokens per second, at most `rate × BURST`
/// stored. No rate: unlimited.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    rate: Option<f64>,
    level: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate: Option<u64>, now: Instant) -> Bucket {
        let mut b = Bucket {
            rate: None,
            level: 0.0,
            at: now,
        };
        b.set_rate(rate, now);
        b.level = b.capacity();
        b
    }

    fn capacity(&self) -> f64 {
        self.rate.map_or(0.0, |r| r * BURST.as_secs_f64())
    }

    /// Changes the rate; what is stored is kept, up to the new capacity.
    pub fn set_rate(&mut self, rate: Option<u64>, now: Instant) {
        self.refill(now);
        let was_unlimited = self.rate.is_none();
        self.rate = rate.filter(|r| *r > 0).map(|r| r as f64);
        if was_unlimited {
            self.level = self.capacity();
        }
        self.level = self.level.min(self.capacity());
    }

    fn refill(&mut self, now: Instant) {
        if let Some(rate) = self.rate {
            let secs = now.saturating_duration_since(self.at).as_secs_f64();
            self.level = (self.level + rate * secs).min(self.capacity());
        }
        self.at = self.at.max(now);
    }

    /// Takes `n` tokens at `now`; returns how long the taker must wait
    /// for the bucket to be out of debt.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        self.refill(now);
        self.level -= n as f64;
        if self.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.level / rate)
        }
    }
}

/// The limits of one disc: requests per second and bytes per second.
#[derive(Debug)]
pub struct Limiter {
    buckets: Mutex<(Bucket, Bucket)>,
    limits: Mutex<Option<DiscLimits>>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new(None)
    }
}

impl Limiter {
    pub fn new(limits: Option<DiscLimits>) -> Limiter {
        let now = Instant::now();
        let l = limits.unwrap_or_default();
        Limiter {
            buckets: Mutex::new((
                Bucket::new(l.iops, now),
                Bucket::new(l.mib_per_second.map(|m| m << 20), now),
            )),
            limits: Mutex::new(limits),
        }
    }

    /// Applies new limits at once (to requests not yet admitted).
    pub fn set(&self, limits: Option<DiscLimits>) {
        let now = Instant::now();
        let l = limits.unwrap_or_default();
        let mut b = self.buckets.lock().expect("limiter poisoned");
        b.0.set_rate(l.iops, now);
        b.1.set_rate(l.mib_per_second.map(|m| m << 20), now);
        *self.limits.lock().expect("limiter poisoned") = limits;
    }

    pub fn limits(&self) -> Option<DiscLimits> {
        *self.limits.lock().expect("limiter poisoned")
    }

    /// Takes one request of `bytes` data; returns how long it must wait.
    pub fn take(&self, bytes: u64) -> Duration {
        let now = Instant::now();
        let mut b = self.buckets.lock().expect("limiter poisoned");
        b.0.take(1, now).max(b.1.take(bytes, now))
    }

    /// Waits until one request of `bytes` data may go ahead.
    pub async fn admit(&self, bytes: u64) {
        let wait = self.take(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_full_bucket_admits_a_burst_then_spaces_requests_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(100), t0);
        // One second's worth at once.
        for _ in 0..100 {
            assert_eq!(b.take(1, t0), Duration::ZERO);
        }
        // Then each waits 10 ms more than the one before.
        assert_eq!(b.take(1, t0), 10 * MS);
        assert_eq!(b.take(1, t0), 20 * MS);
        // Time pays the debt back: after 20 ms we are at zero again.
        assert_eq!(b.take(1, t0 + 20 * MS), 10 * MS);
        // Idle for long: refilled only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..100 {
            assert_eq!(b.take(1, later), Duration::ZERO);
        }
        assert!(b.take(1, later) > Duration::ZERO);
    }

    #[test]
    fn a_request_larger_than_the_burst_waits_in_proportion() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(1 << 20), t0);
        // 3 MiB at 1 MiB/s with 1 MiB stored: 2 s.
        assert_eq!(b.take(3 << 20, t0), Duration::from_secs(2));
        // The next one queues behind it.
        assert_eq!(b.take(1 << 20, t0), Duration::from_secs(3));
    }

    #[test]
    fn no_rate_never_waits_and_changes_apply_at_once() {
        let t0 = Instant::now();
        let mut b = Bucket::new(None, t0);
        assert_eq!(b.take(u64::MAX / 2, t0), Duration::ZERO);
        b.set_rate(Some(10), t0);
        // Starts with a full burst when a limit is first set.
        for _ in 0..10 {
            assert_eq!(b.take(1, t0), Duration::ZERO);
        }
        assert_eq!(b.take(1, t0), 100 * MS);
        // Lifting the limit frees the next request at once.
        b.set_rate(None, t0);
        assert_eq!(b.take(1000, t0), Duration::ZERO);
        // A zero rate means no limit, not a stall.
        b.set_rate(Some(0), t0);
        assert_eq!(b.take(1000, t0), Duration::ZERO);
    }

    #[test]
    fn the_limiter_waits_for_the_slower_of_its_buckets() {
        let l = Limiter::new(Some(DiscLimits {
            iops: Some(1000),
            mib_per_second: Some(1),
        }));
        // The byte bucket (1 MiB stored) is what holds this one back.
        assert_eq!(l.take(1 << 20), Duration::ZERO);
        let wait = l.take(512 << 10);
        assert!(wait > 400 * MS && wait <= 500 * MS, "{wait:?}");
        l.set(None);
        assert_eq!(l.take(1 << 30), Duration::ZERO);
        assert_eq!(l.limits(), None);
    }

    #[tokio::test]
    async fn admit_really_waits() {
        let l = Limiter::new(Some(DiscLimits {
            iops: Some(200),
            mib_per_second: None,
        }));
        let started = Instant::now();
        // 200 stored, then 100 more at 200/s: about 0.5 s.
        for _ in 0..300 {
            l.admit(0).await;
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(450), "{took:?}");
    }
}
