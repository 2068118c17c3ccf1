//! Pacing of device calls: a rate limiter per host × capability built from
//! the manifest's `rate_limit` (SPEC §5: it counts the calls a driver makes
//! to a device), a [`Backoff`] between retries, and the SLA arithmetic that
//! lets a retry start only if it can finish inside what is left of the
//! budget. These are values configured once, not sleeps scattered through
//! driver code.
//!
//! Time is [`tokio::time::Instant`] throughout (the limiter runs `governor`
//! on a tokio-backed clock), so tests drive it with `tokio::time::pause`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::driver::DriverError;
use crate::manifest::{Capability, HttpDefaults, RateLimit, SshDefaults};

/// A call the limiter would not let through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limit reached, next call allowed in {}ms", .wait.as_millis())]
pub struct NotReady {
    /// How long until the next call is allowed.
    pub wait: Duration,
}

/// The limiter of one host × capability.
#[derive(Debug)]
pub struct CallLimiter {
    limit: RateLimit,
    clock: TokioClock,
    inner: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>,
}

/// Limiters by host × capability, created on first use from the
/// capability's `rate_limit`; capabilities without one are not limited.
#[derive(Debug, Default)]
pub struct RateLimiters {
    by_key: DashMap<(String, String), Arc<CallLimiter>>,
}

/// Exponential backoff between retries: `start`, then doubling up to `max`.
/// A value: keep one per retried operation and [`Backoff::reset`] it after
/// a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    start: Duration,
    max: Duration,
    next: Duration,
}

/// Retries of one operation under a retry count, a backoff and (optionally)
/// an SLA deadline.
#[derive(Debug, Clone)]
pub struct Retry {
    backoff: Backoff,
    retries_left: u32,
    deadline: Option<Instant>,
}

/// `governor` clock reading tokio's (pausable) time.
#[derive(Debug, Clone)]
struct TokioClock {
    origin: Instant,
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.origin.elapsed())
    }
}

impl CallLimiter {
    /// `rate.rps` calls per second sustained, `rate.burst` at once (zeros count as one).
    pub fn new(rate: RateLimit) -> CallLimiter {
        let one = NonZeroU32::MIN;
        let rps = NonZeroU32::new(rate.rps).unwrap_or(one);
        let burst = NonZeroU32::new(rate.burst).unwrap_or(one);
        let clock = TokioClock {
            origin: Instant::now(),
        };
        let quota = Quota::per_second(rps).allow_burst(burst);
        CallLimiter {
            limit: rate,
            inner: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one call's slot if there is one now, without waiting.
    pub fn check(&self) -> Result<(), NotReady> {
        self.inner.check().map_err(|not_until| NotReady {
            wait: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// Waits until a call is allowed and takes its slot. Cancel-safe: a
    /// dropped wait takes no slot.
    pub async fn until_ready(&self) {
        while let Err(NotReady { wait }) = self.check() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The device-call limits of one host: one [`CallLimiter`] per capability
/// of its plugin that declares a `rate_limit` (SPEC §5: `rate_limit` counts
/// the calls a driver makes to a device, per host). A driver owns one and
/// awaits [`DeviceLimits::acquire`] before every device call (HTTP request,
/// SSH command, CLI line batch).
#[derive(Debug, Clone, Default)]
pub struct DeviceLimits {
    by_capability: std::collections::BTreeMap<String, Arc<CallLimiter>>,
    /// Discovery reads serve every capability, so they take the strictest limit.
    strictest: Option<Arc<CallLimiter>>,
}

impl DeviceLimits {
    /// Limits from a manifest's capabilities.
    pub fn from_manifest(manifest: &crate::manifest::Manifest) -> DeviceLimits {
        let mut limits = DeviceLimits::default();
        for cap in &manifest.capabilities {
            if let Some(rate) = cap.rate_limit {
                let limiter = Arc::new(CallLimiter::new(rate));
                let stricter = limits
                    .strictest
                    .as_ref()
                    .is_none_or(|s| (rate.rps, rate.burst) < (s.limit().rps, s.limit().burst));
                if stricter {
                    limits.strictest = Some(limiter.clone());
                }
                limits.by_capability.insert(cap.id.clone(), limiter);
            }
        }
        limits
    }

    /// Limits of a shipped plugin (from the embedded manifests); no limits
    /// for an unknown plugin id.
    pub fn for_plugin(plugin_id: &str) -> DeviceLimits {
        crate::manifest::shipped()
            .get(plugin_id)
            .map(DeviceLimits::from_manifest)
            .unwrap_or_default()
    }

    /// Waits for a device-call slot of `capability` (cancel-safe).
    pub async fn acquire(&self, capability: &str) {
        if let Some(limiter) = self.by_capability.get(capability) {
            limiter.until_ready().await;
        }
    }

    /// Waits for a device-call slot of a call that serves all capabilities
    /// (discovery, connection test).
    pub async fn acquire_any(&self) {
        if let Some(limiter) = &self.strictest {
            limiter.until_ready().await;
        }
    }
}

impl RateLimiters {
    pub fn new() -> RateLimiters {
        RateLimiters::default()
    }

    /// The limiter of `host` × `capability`, or `None` when the capability
    /// declares no `rate_limit`.
    pub fn get(&self, host: &str, capability: &Capability) -> Option<Arc<CallLimiter>> {
        let rate = capability.rate_limit?;
        let key = (host.to_string(), capability.id.clone());
        if let Some(l) = self.by_key.get(&key) {
            return Some(Arc::clone(&l));
        }
        let entry = self
            .by_key
            .entry(key)
            .or_insert_with(|| Arc::new(CallLimiter::new(rate)));
        Some(Arc::clone(&entry))
    }

    /// Takes one device call's slot now, or says how long to wait.
    pub fn check(&self, host: &str, capability: &Capability) -> Result<(), NotReady> {
        match self.get(host, capability) {
            Some(l) => l.check(),
            None => Ok(()),
        }
    }

    /// Waits for one device call's slot.
    pub async fn until_ready(&self, host: &str, capability: &Capability) {
        if let Some(l) = self.get(host, capability) {
            l.until_ready().await;
        }
    }
}

impl Backoff {
    /// `max` below `start` is raised to `start`.
    pub fn new(start: Duration, max: Duration) -> Backoff {
        Backoff {
            start,
            max: max.max(start),
            next: start,
        }
    }

    /// The manifest's HTTP backoff (`backoff_ms_start`, `backoff_ms_max`).
    pub fn from_http(d: &HttpDefaults) -> Backoff {
        Backoff::new(
            Duration::from_millis(d.backoff_ms_start),
            Duration::from_millis(d.backoff_ms_max),
        )
    }

    /// The manifest's SSH backoff.
    pub fn from_ssh(d: &SshDefaults) -> Backoff {
        Backoff::new(
            Duration::from_millis(d.backoff_ms_start),
            Duration::from_millis(d.backoff_ms_max),
        )
    }

    /// The delay [`Backoff::next_delay`] would return.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// The delay before the next retry; the one after doubles, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.start;
    }
}

/// Whether a call expected to take `expected_call_time` and started now
/// finishes by `deadline`.
pub fn fits(deadline: Instant, expected_call_time: Duration) -> bool {
    Instant::now()
        .checked_add(expected_call_time)
        .is_some_and(|end| end <= deadline)
}

impl Retry {
    /// `retries` retries after the first call; `deadline` is the SLA end, if any.
    pub fn new(backoff: Backoff, retries: u32, deadline: Option<Instant>) -> Retry {
        Retry {
            backoff,
            retries_left: retries,
            deadline,
        }
    }

    /// The manifest's HTTP settings under an optional deadline.
    pub fn from_http(d: &HttpDefaults, deadline: Option<Instant>) -> Retry {
        Retry::new(Backoff::from_http(d), d.retries, deadline)
    }

    /// The manifest's SSH settings under an optional deadline.
    pub fn from_ssh(d: &SshDefaults, deadline: Option<Instant>) -> Retry {
        Retry::new(Backoff::from_ssh(d), d.retries, deadline)
    }

    pub fn retries_left(&self) -> u32 {
        self.retries_left
    }

    /// After `error`: the delay to wait before retrying, or `None` when the
    /// error is not retryable, no retry is left, or the backoff plus a call
    /// of `expected_call_time` would end past the deadline.
    pub fn next(&mut self, error: &DriverError, expected_call_time: Duration) -> Option<Duration> {
        if !error.is_retryable() || self.retries_left == 0 {
            return None;
        }
        let delay = self.backoff.peek();
        if let Some(deadline) = self.deadline {
            if !fits(deadline, delay.saturating_add(expected_call_time)) {
                return None;
            }
        }
        self.retries_left -= 1;
        Some(self.backoff.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::ErrorKind;

    fn rate(rps: u32, burst: u32) -> RateLimit {
        RateLimit { rps, burst }
    }

    #[tokio::test(start_paused = true)]
    async fn a_limiter_lets_a_burst_through_then_refuses() {
        let l = CallLimiter::new(rate(2, 3));
        for _ in 0..3 {
            assert!(l.check().is_ok());
        }
        let NotReady { wait } = l.check().unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_limiter_refills_at_the_configured_rate() {
        let l = CallLimiter::new(rate(2, 1));
        assert!(l.check().is_ok());
        assert!(l.check().is_err());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(l.check().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn until_ready_waits_out_the_rate_without_real_sleeps() {
        let l = CallLimiter::new(rate(10, 1));
        let start = Instant::now();
        for _ in 0..5 {
            l.until_ready().await;
        }
        // One at once, then four more at 100 ms each.
        assert_eq!(start.elapsed(), Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn limiters_are_per_host_and_capability() {
        let mut cap = crate::manifest::ManifestSet::embedded()
            .capability("aoss.poe.port")
            .map(|(_, c)| c.clone())
            .unwrap();
        cap.rate_limit = Some(rate(1, 1));
        let all = RateLimiters::new();
        assert!(all.check("sw1", &cap).is_ok());
        assert!(all.check("sw1", &cap).is_err());
        assert!(all.check("sw2", &cap).is_ok());
        cap.rate_limit = None;
        for _ in 0..10 {
            assert!(
                all.check("sw1", &cap).is_ok(),
                "a capability without rate_limit is not limited"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_millis(1000));
        let delays: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_fits_only_if_it_ends_before_the_deadline() {
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(fits(deadline, Duration::from_secs(5)));
        assert!(!fits(deadline, Duration::from_millis(5001)));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(!fits(deadline, Duration::from_secs(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_starts_only_if_it_can_finish_inside_the_budget() {
        let timeout = DriverError::new(ErrorKind::Timeout, "no answer");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut retry = Retry::new(
            Backoff::new(Duration::from_millis(250), Duration::from_secs(2)),
            5,
            Some(deadline),
        );
        assert_eq!(
            retry.next(&timeout, Duration::from_secs(1)),
            Some(Duration::from_millis(250))
        );
        tokio::time::advance(Duration::from_millis(3500)).await;
        // 500 ms backoff + 1 s call would end at 5 s: still fits.
        assert_eq!(
            retry.next(&timeout, Duration::from_secs(1)),
            Some(Duration::from_millis(500))
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        // 1 s backoff + 1 s call would end past the deadline.
        assert_eq!(retry.next(&timeout, Duration::from_secs(1)), None);
    }

    #[test]
    fn errors_that_are_not_retryable_and_spent_retries_stop_retrying() {
        let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(10));
        let mut retry = Retry::new(backoff, 1, None);
        let auth = DriverError::new(ErrorKind::AuthError, "denied");
        let net = DriverError::new(ErrorKind::NetworkError, "reset");
        assert_eq!(retry.next(&auth, Duration::ZERO), None);
        assert!(retry.next(&net, Duration::ZERO).is_some());
        assert_eq!(retry.next(&net, Duration::ZERO), None);
    }
}
