//! The per-host circuit breaker (SPEC §7): after 3 consecutive failures
//! within 60 s the host is considered down and calls are refused for 120 s,
//! then exactly one trial call is let through (half-open); its success closes
//! the breaker, its failure opens it again. This keeps a dead host from
//! eating the refresh SLA and the queue of every policy that touches it.
//!
//! Only failures that say the host is in trouble count
//! ([`ErrorKind::counts_for_breaker`]: network, TLS, timeout, server
//! errors). Any other answer (success, `auth_error`, `not_found`, ...) proves
//! the host is up and resets the count. Time is [`tokio::time::Instant`], so
//! tests drive it with `tokio::time::pause`.
//!
//! Whoever must know when a host is judged down or back (the agent's
//! inventory service publishes `host.state`, SPEC §1) installs a
//! [`BreakerObserver`] on the shared [`Breakers`] with
//! [`Breakers::on_change`]; the breakers stay free of the agent's types.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use serde::Serialize;
use tokio::time::Instant;

use crate::driver::{DriverError, ErrorKind};

/// Thresholds of a breaker; the default is SPEC §7's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive counted failures that trip the breaker.
    pub failure_threshold: u32,
    /// The failures must all fall within this window.
    pub failure_window: Duration,
    /// How long a tripped breaker refuses calls before its trial call.
    pub open_for: Duration,
}

/// What a breaker does with the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// One trial call may go (or is in flight); its outcome decides.
    HalfOpen,
}

/// A call the breaker refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerError {
    /// The breaker tripped; the trial call may go after `retry_in`.
    #[error("circuit breaker open, next trial call in {}s", .retry_in.as_secs_f64().ceil())]
    Open { retry_in: Duration },
    /// Half-open and its one trial call is still running.
    #[error("circuit breaker half-open, its trial call is still running")]
    TrialInFlight,
}

/// The outcome of [`Breaker::call`]: refused, or the call's own error.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The breaker refused the call; the device was not asked.
    #[error(transparent)]
    Refused(#[from] BreakerError),
    /// The call ran and failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// Told of every state change a call makes a breaker go through, with the
/// host id and the new state: [`BreakerState::Open`] when it trips or a
/// trial call fails, [`BreakerState::HalfOpen`] when a trial call is let
/// through, [`BreakerState::Closed`] when a trial call succeeds. (An open
/// breaker's period ending is not a change until a call asks.)
///
/// It runs under the breaker's lock, so changes arrive in the order they
/// happened: it must be quick, must not block, and must not call back into
/// the same breaker.
pub type BreakerObserver = Arc<dyn Fn(&str, BreakerState) + Send + Sync>;

/// One host's breaker. Cheap to share (`Arc`), safe from many tasks.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
    /// The host id and the observer slot of the [`Breakers`] that made it.
    observed: Option<(String, Arc<ObserverSlot>)>,
}

/// The observer a [`Breakers`] shares with every breaker it made.
#[derive(Default)]
struct ObserverSlot(RwLock<Option<BreakerObserver>>);

impl std::fmt::Debug for ObserverSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.read().map(|o| o.is_some()).unwrap_or(false);
        f.debug_tuple("ObserverSlot").field(&set).finish()
    }
}

/// Leave to make one call; report its outcome with [`BreakerPermit::success`],
/// [`BreakerPermit::failure`] or [`BreakerPermit::record`]. Dropping it
/// unreported (a cancelled call) records nothing, and frees the trial slot
/// of a half-open breaker.
#[must_use = "report the call's outcome on the permit"]
#[derive(Debug)]
pub struct BreakerPermit<'a> {
    breaker: &'a Breaker,
    generation: u64,
    trial: bool,
    reported: bool,
}

/// Breakers by host id, created on first use.
#[derive(Debug, Default)]
pub struct Breakers {
    config: BreakerConfig,
    by_host: DashMap<String, Arc<Breaker>>,
    observer: Arc<ObserverSlot>,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// Times of the current run of consecutive counted failures.
    failures: VecDeque<Instant>,
    /// Bumped at every phase change, so outcomes of calls let through in an
    /// earlier phase are ignored.
    generation: u64,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { trial_out: bool },
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 3,
            failure_window: Duration::from_secs(60),
            open_for: Duration::from_secs(120),
        }
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::new(BreakerConfig::default())
    }
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                failures: VecDeque::new(),
                generation: 0,
            }),
            observed: None,
        }
    }

    /// Tells the observer of its [`Breakers`], if any, that the breaker is
    /// now `state`. Called with `inner` locked, so changes are told in order.
    fn changed(&self, state: BreakerState) {
        let Some((host, slot)) = &self.observed else {
            return;
        };
        let observer = slot.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(observer) = observer {
            observer(host, state);
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state as the next call would see it (an open breaker whose period
    /// ended reads as half-open).
    pub fn state(&self) -> BreakerState {
        let inner = self.lock();
        match inner.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if Instant::now() < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a call would be let through now, without taking the leave
    /// (the engine's preflight guard).
    pub fn would_allow(&self) -> bool {
        let inner = self.lock();
        match inner.phase {
            Phase::Closed => true,
            Phase::Open { until } => Instant::now() >= until,
            Phase::HalfOpen { trial_out } => !trial_out,
        }
    }

    /// Asks leave for one call. Closed: granted. Open: refused until the
    /// open period ends, then granted once as the half-open trial; while the
    /// trial runs every other call is refused.
    pub fn acquire(&self) -> Result<BreakerPermit<'_>, BreakerError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let trial = match inner.phase {
            Phase::Closed => false,
            Phase::Open { until } if now < until => {
                return Err(BreakerError::Open {
                    retry_in: until - now,
                });
            }
            Phase::HalfOpen { trial_out: true } => return Err(BreakerError::TrialInFlight),
            Phase::Open { .. } | Phase::HalfOpen { trial_out: false } => {
                let was_open = matches!(inner.phase, Phase::Open { .. });
                inner.generation += 1;
                inner.phase = Phase::HalfOpen { trial_out: true };
                tracing::info!(
                    phase = "half_open",
                    "circuit breaker lets one trial call through"
                );
                if was_open {
                    self.changed(BreakerState::HalfOpen);
                }
                true
            }
        };
        Ok(BreakerPermit {
            breaker: self,
            generation: inner.generation,
            trial,
            reported: false,
        })
    }

    /// Runs `call` if the breaker lets it, and records its outcome.
    /// Cancel-safe: dropping the future records nothing.
    pub async fn call<T, F>(&self, call: F) -> Result<T, CallError>
    where
        F: Future<Output = Result<T, DriverError>>,
    {
        let permit = self.acquire()?;
        let result = call.await;
        permit.record(&result);
        result.map_err(CallError::Driver)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` inconsistent
        // (every update is a plain assignment), so a poisoned lock is usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn settle(&self, generation: u64, counted_failure: bool) {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        match (inner.phase, counted_failure) {
            (Phase::HalfOpen { .. }, false) => {
                tracing::info!(phase = "closed", "circuit breaker trial call succeeded");
                inner.close();
                self.changed(BreakerState::Closed);
            }
            (Phase::HalfOpen { .. }, true) => {
                tracing::warn!(phase = "open", "circuit breaker trial call failed");
                inner.open(now + self.config.open_for);
                self.changed(BreakerState::Open);
            }
            (Phase::Closed, false) => inner.failures.clear(),
            (Phase::Closed, true) => {
                inner.failures.push_back(now);
                while inner
                    .failures
                    .front()
                    .is_some_and(|first| now.duration_since(*first) > self.config.failure_window)
                {
                    inner.failures.pop_front();
                }
                if inner.failures.len() >= self.config.failure_threshold as usize {
                    tracing::warn!(
                        phase = "open",
                        failures = inner.failures.len(),
                        "circuit breaker tripped"
                    );
                    inner.open(now + self.config.open_for);
                    self.changed(BreakerState::Open);
                }
            }
            // A permit of the current generation is never issued while open.
            (Phase::Open { .. }, _) => {}
        }
    }

    fn abandon(&self, generation: u64) {
        let mut inner = self.lock();
        if inner.generation == generation {
            if let Phase::HalfOpen { trial_out: true } = inner.phase {
                inner.phase = Phase::HalfOpen { trial_out: false };
            }
        }
    }
}

impl Inner {
    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.failures.clear();
        self.generation += 1;
    }

    fn open(&mut self, until: Instant) {
        self.phase = Phase::Open { until };
        self.failures.clear();
        self.generation += 1;
    }
}

impl BreakerPermit<'_> {
    /// Whether this is the half-open trial call.
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    /// The call got an answer from the host.
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.settle(self.generation, false);
    }

    /// The call failed with `kind`; it counts only if
    /// [`ErrorKind::counts_for_breaker`], otherwise the host answered and it
    /// counts as a success.
    pub fn failure(mut self, kind: ErrorKind) {
        self.reported = true;
        self.breaker
            .settle(self.generation, kind.counts_for_breaker());
    }

    /// Records a call's result.
    pub fn record<T>(self, result: &Result<T, DriverError>) {
        match result {
            Ok(_) => self.success(),
            Err(e) => self.failure(e.kind),
        }
    }
}

impl Drop for BreakerPermit<'_> {
    fn drop(&mut self) {
        if !self.reported && self.trial {
            self.breaker.abandon(self.generation);
        }
    }
}

impl Breakers {
    pub fn new(config: BreakerConfig) -> Breakers {
        Breakers {
            config,
            by_host: DashMap::new(),
            observer: Arc::default(),
        }
    }

    /// Installs `observer` (replacing any other): from now on it is told
    /// of every state change of every breaker these hold, those created
    /// before this call included. One observer per agent: the inventory
    /// service, which turns changes into `host.state` events (SPEC §1).
    pub fn on_change(&self, observer: BreakerObserver) {
        *self.observer.0.write().unwrap_or_else(|e| e.into_inner()) = Some(observer);
    }

    /// The breaker of `host`, created closed on first use.
    pub fn for_host(&self, host: &str) -> Arc<Breaker> {
        if let Some(b) = self.by_host.get(host) {
            return Arc::clone(&b);
        }
        let entry = self.by_host.entry(host.to_string()).or_insert_with(|| {
            let mut breaker = Breaker::new(self.config.clone());
            breaker.observed = Some((host.to_string(), Arc::clone(&self.observer)));
            Arc::new(breaker)
        });
        Arc::clone(&entry)
    }

    /// Every known host's state, sorted by host (for metrics and the API).
    pub fn states(&self) -> Vec<(String, BreakerState)> {
        let mut out: Vec<(String, BreakerState)> = self
            .by_host
            .iter()
            .map(|e| (e.key().clone(), e.value().state()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn fail(b: &Breaker, kind: ErrorKind) {
        b.acquire()
            .expect("breaker should let the call through")
            .failure(kind);
    }

    fn trip(b: &Breaker) {
        for _ in 0..3 {
            fail(b, ErrorKind::Timeout);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn three_consecutive_failures_within_a_minute_trip_the_breaker() {
        let b = Breaker::default();
        fail(&b, ErrorKind::NetworkError);
        advance(Duration::from_secs(20)).await;
        fail(&b, ErrorKind::Timeout);
        assert_eq!(b.state(), BreakerState::Closed);
        advance(Duration::from_secs(20)).await;
        fail(&b, ErrorKind::ServerError);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.would_allow());
        assert!(
            matches!(b.acquire(), Err(BreakerError::Open { retry_in }) if retry_in == Duration::from_secs(120))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_spread_over_more_than_a_minute_do_not_trip() {
        let b = Breaker::default();
        for _ in 0..5 {
            fail(&b, ErrorKind::Timeout);
            advance(Duration::from_secs(31)).await;
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_or_an_answer_from_the_host_resets_the_count() {
        let b = Breaker::default();
        fail(&b, ErrorKind::Timeout);
        fail(&b, ErrorKind::Timeout);
        b.acquire().unwrap().success();
        fail(&b, ErrorKind::Timeout);
        fail(&b, ErrorKind::Timeout);
        fail(&b, ErrorKind::AuthError);
        fail(&b, ErrorKind::Timeout);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_that_do_not_count_never_trip_the_breaker() {
        let b = Breaker::default();
        for kind in [
            ErrorKind::AuthError,
            ErrorKind::NotFound,
            ErrorKind::ValidationError,
            ErrorKind::RateLimited,
        ] {
            fail(&b, kind);
            fail(&b, kind);
            fail(&b, kind);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_stays_open_for_two_minutes() {
        let b = Breaker::default();
        trip(&b);
        advance(Duration::from_secs(119)).await;
        assert_eq!(b.state(), BreakerState::Open);
        assert!(
            matches!(b.acquire(), Err(BreakerError::Open { retry_in }) if retry_in == Duration::from_secs(1))
        );
        advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.would_allow());
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_exactly_one_trial_call_through() {
        let b = Breaker::default();
        trip(&b);
        advance(Duration::from_secs(120)).await;
        let trial = b.acquire().expect("the trial call goes through");
        assert!(trial.is_trial());
        assert_eq!(b.acquire().unwrap_err(), BreakerError::TrialInFlight);
        assert!(!b.would_allow());
        trial.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!b.acquire().unwrap().is_trial());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_call_opens_the_breaker_for_another_two_minutes() {
        let b = Breaker::default();
        trip(&b);
        advance(Duration::from_secs(120)).await;
        b.acquire().unwrap().failure(ErrorKind::NetworkError);
        assert_eq!(b.state(), BreakerState::Open);
        advance(Duration::from_secs(119)).await;
        assert_eq!(b.state(), BreakerState::Open);
        advance(Duration::from_secs(1)).await;
        b.acquire().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_trial_call_frees_the_trial_slot() {
        let b = Breaker::default();
        trip(&b);
        advance(Duration::from_secs(120)).await;
        drop(b.acquire().unwrap());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.acquire().unwrap().is_trial());
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_of_calls_started_before_a_trip_are_ignored() {
        let b = Breaker::default();
        let slow = b.acquire().unwrap();
        trip(&b);
        slow.success();
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn call_records_the_outcome_and_refuses_when_open() {
        let b = Breaker::default();
        for _ in 0..3 {
            let r: Result<(), CallError> = b
                .call(async { Err(DriverError::new(ErrorKind::Timeout, "no answer")) })
                .await;
            assert!(matches!(r, Err(CallError::Driver(_))));
        }
        let r = b.call(async { Ok::<_, DriverError>(1) }).await;
        assert!(matches!(
            r,
            Err(CallError::Refused(BreakerError::Open { .. }))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn breakers_are_per_host() {
        let all = Breakers::default();
        trip(&all.for_host("pve1"));
        assert_eq!(all.for_host("pve1").state(), BreakerState::Open);
        assert_eq!(all.for_host("sw1").state(), BreakerState::Closed);
        assert_eq!(
            all.states(),
            vec![
                ("pve1".to_string(), BreakerState::Open),
                ("sw1".to_string(), BreakerState::Closed)
            ]
        );
    }

    /// Every change the observer of `all` is told, as `host state` lines.
    fn record_changes(all: &Breakers) -> Arc<Mutex<Vec<String>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        all.on_change(Arc::new(move |host, state| {
            sink.lock().unwrap().push(format!("{host} {state:?}"));
        }));
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn the_observer_is_told_when_a_breaker_trips_tries_and_closes() {
        let all = Breakers::default();
        // Created before the observer is installed: still observed.
        let pve1 = all.for_host("pve1");
        let seen = record_changes(&all);
        fail(&pve1, ErrorKind::Timeout);
        fail(&pve1, ErrorKind::Timeout);
        assert!(seen.lock().unwrap().is_empty(), "closed is not a change");
        fail(&pve1, ErrorKind::Timeout);
        advance(Duration::from_secs(120)).await;
        pve1.acquire().unwrap().failure(ErrorKind::NetworkError);
        advance(Duration::from_secs(120)).await;
        pve1.acquire().unwrap().success();
        pve1.acquire().unwrap().success();
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "pve1 Open",
                "pve1 HalfOpen",
                "pve1 Open",
                "pve1 HalfOpen",
                "pve1 Closed"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_observer_hears_nothing_of_calls_that_change_no_state() {
        let all = Breakers::default();
        let seen = record_changes(&all);
        let sw1 = all.for_host("sw1");
        for kind in [ErrorKind::AuthError, ErrorKind::NotFound] {
            fail(&sw1, kind);
        }
        sw1.acquire().unwrap().success();
        trip(&sw1);
        // Refused calls and a cancelled trial change nothing.
        assert!(sw1.acquire().is_err());
        advance(Duration::from_secs(120)).await;
        drop(sw1.acquire().unwrap());
        assert_eq!(*seen.lock().unwrap(), ["sw1 Open", "sw1 HalfOpen"]);
        // A breaker made on its own has no observer to tell.
        trip(&Breaker::default());
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn many_tasks_share_one_breaker() {
        let b = Arc::new(Breaker::default());
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let b = Arc::clone(&b);
                tokio::spawn(async move {
                    if let Ok(p) = b.acquire() {
                        p.failure(ErrorKind::Timeout);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(b.state(), BreakerState::Open);
    }
}
