//! The per-host circuit breaker (SPEC §7) around every call to a driver:
//! [`GuardedDriver`] asks the host's [`Breaker`] for leave before it lets a
//! call reach the device, refuses at once while the breaker is open, and
//! records each call's outcome. One [`Breakers`] shared by everything that
//! talks to drivers makes refreshes, dry-runs, actions and connection tests
//! of one host trip and heal one breaker.
//!
//! # What counts
//!
//! Only failures that blame the host count
//! ([`ErrorKind::counts_for_breaker`]: network, TLS, timeout, server
//! errors); any other answer proves the host is up and resets the count.
//!
//! - `discover`, `test_connection`, `task_status`: the call's `Err` kind.
//! - `dry_run`: only an `Err` of the whole call counts. Per-target problems
//!   inside the answers (a failed precondition, a probe that got a 503) never
//!   trip the host's breaker, even when every answer failed: a
//!   [`crate::driver::DryRunAnswer`] carries no error kind, and a preflight
//!   that answered at all got as far as the host.
//! - `execute`: an `Err` of the whole call counts, and so does an answer in
//!   which *every* target failed with a counting kind (its outcome `code` is
//!   `driver.<kind>`): drivers that talk to one endpoint per target, like
//!   `http.webhook`, report a dead receiver per target, not as an `Err`. One
//!   target that succeeded or failed for its own reason (`not_found`,
//!   `validation_error`, ...) shows the host answered.
//!
//! A call refused by the breaker is an `Err` of kind
//! [`ErrorKind::NetworkError`] (what the engine reports as
//! `engine.host_unreachable`) whose message says until when the breaker is
//! open; its source is the [`BreakerError`] ([`refusal`] finds it). The
//! device is not asked, and the refusal itself is not recorded. A call that
//! is cancelled (its future dropped, e.g. by an outer timeout) records
//! nothing, and frees the half-open trial slot if it held it: give drivers
//! their own timeouts (they have `timeout_s`) so that hangs are recorded.
//!
//! # How the agent wires it
//!
//! ```text
//! let breakers = Arc::new(Breakers::default());               // one per agent
//! let inventory = InventoryService::with_breakers(breakers.clone()); // observes them
//! for host in hosts {
//!     let raw = registry.build(&host)?;                        // Arc<dyn Driver>
//!     inventory.add_host(raw.clone(), settings);               // raw: it guards itself
//!     engine_drivers.insert(host.id, guard(raw, &breakers));   // dry_run / execute / test
//! }
//! ```
//!
//! Wrap a driver once: a guarded driver handed to something that acquires
//! the same breaker itself (the inventory service's refreshes do) would
//! count every failure twice and refuse its own half-open trial call.
//! The engine's step-7 preflight reads [`Breaker::would_allow`] of
//! `breakers.for_host(host)` without calling the driver. The inventory
//! service installs the breakers' observer ([`Breakers::on_change`]), so a
//! breaker tripped or healed by any guarded call becomes a `host.state`
//! event.
//!
//! # Tracing
//!
//! Each call runs in one `driver_call` span carrying the host, plugin,
//! method, action, target count and breaker phase, plus the `policy_id` and `correlation_id` of the
//! [`CallContext`] the engine set with [`with_context`] (empty for calls
//! outside a policy run: refreshes, connection tests). Drivers open no
//! span of their own for the call.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{SecondsFormat, Utc};
use inventory::model::Target;
use serde_json::Value;
use tracing::field::Empty;
use tracing::Instrument;
use uuid::Uuid;

use crate::breaker::{Breaker, BreakerError, Breakers};
use crate::driver::{
    Action, ConnectionReport, Driver, DriverError, DryRunAnswer, ErrorKind, ExecOutcome,
    RefreshMode,
};
use crate::task::{TaskHandle, TaskStatus};

/// The policy run a driver call serves, shown on the guard's span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallContext {
    pub policy_id: Uuid,
    /// The policy's name, for people reading the log (`None` when unknown).
    pub policy: Option<std::sync::Arc<str>>,
    /// The event's correlation id (SPEC §1), shared by every log line of its handling.
    pub correlation_id: Uuid,
}

tokio::task_local! {
    static CONTEXT: CallContext;
}

/// Runs `call` (a driver call, or work that makes some) with `context`, so
/// the guard's span of every call it makes names the policy and event.
pub async fn with_context<F: std::future::Future>(context: CallContext, call: F) -> F::Output {
    CONTEXT.scope(context, call).await
}

/// A driver whose every call goes through its host's circuit breaker (see
/// the module docs for what counts as a failure).
pub struct GuardedDriver {
    inner: Arc<dyn Driver>,
    breaker: Arc<Breaker>,
}

/// Wraps `driver` with the breaker `breakers` holds for its host.
pub fn guard(driver: Arc<dyn Driver>, breakers: &Breakers) -> Arc<dyn Driver> {
    Arc::new(GuardedDriver::from_breakers(driver, breakers))
}

/// The breaker's refusal behind `error`, if a [`GuardedDriver`] refused the
/// call without asking the device.
pub fn refusal(error: &DriverError) -> Option<&BreakerError> {
    error.source.as_deref()?.downcast_ref::<BreakerError>()
}

impl GuardedDriver {
    /// Guards `inner` with `breaker`, which should be its host's breaker
    /// from the agent's shared [`Breakers`].
    pub fn new(inner: Arc<dyn Driver>, breaker: Arc<Breaker>) -> Self {
        GuardedDriver { inner, breaker }
    }

    /// Guards `inner` with `breakers.for_host(inner.host_id())`.
    pub fn from_breakers(inner: Arc<dyn Driver>, breakers: &Breakers) -> Self {
        let breaker = breakers.for_host(inner.host_id());
        GuardedDriver::new(inner, breaker)
    }

    /// The unguarded driver (for a caller that acquires the breaker itself).
    pub fn inner(&self) -> &Arc<dyn Driver> {
        &self.inner
    }

    /// The host's breaker.
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    /// Runs `call` if the breaker lets it, recording as a failure the kind
    /// `counted` picks from its result (`None`: the host answered).
    async fn call<T, F>(
        &self,
        method: &'static str,
        action: Option<&Action>,
        targets: &[String],
        call: F,
        counted: fn(&Result<T, DriverError>) -> Option<ErrorKind>,
    ) -> Result<T, DriverError>
    where
        F: std::future::Future<Output = Result<T, DriverError>>,
    {
        let context = CONTEXT.try_with(|c| c.clone()).ok();
        let context = context.as_ref();
        // The targets by id, the first few: a span line stays one line.
        let shown: Vec<&str> = targets.iter().take(8).map(String::as_str).collect();
        let target = match targets.len() {
            0 => None,
            n if n > shown.len() => {
                Some(format!("{} and {} more", shown.join(","), n - shown.len()))
            }
            _ => Some(shown.join(",")),
        };
        let span = tracing::info_span!(
            "driver_call",
            policy = context.and_then(|c| c.policy.as_deref()),
            policy_id = context.map(|c| tracing::field::display(c.policy_id)),
            host = %self.inner.host_id(),
            plugin = %self.inner.plugin_id(),
            method,
            capability = action.map(|a| a.capability.as_str()),
            verb = action.map(|a| a.verb.as_str()),
            targets = targets.len(),
            target = target.as_deref(),
            breaker = Empty,
            correlation_id = context.map(|c| tracing::field::display(c.correlation_id)),
        );
        async {
            let permit = match self.breaker.acquire() {
                Ok(permit) => permit,
                Err(refused) => {
                    tracing::Span::current().record("breaker", "refused");
                    tracing::debug!(reason = %refused, "circuit breaker refused the driver call");
                    return Err(self.refused(refused));
                }
            };
            let phase = if permit.is_trial() { "trial" } else { "closed" };
            tracing::Span::current().record("breaker", phase);
            // The breaker logs a trip or a trial's verdict inside this span,
            // so its lines carry the host.
            let result = call.await;
            match counted(&result) {
                Some(kind) => permit.failure(kind),
                None => permit.success(),
            }
            result
        }
        .instrument(span)
        .await
    }

    fn refused(&self, refused: BreakerError) -> DriverError {
        let host = self.inner.host_id();
        let message = match &refused {
            BreakerError::Open { retry_in } => {
                let until = Utc::now()
                    + chrono::Duration::from_std(*retry_in).unwrap_or(chrono::TimeDelta::zero());
                format!(
                    "circuit breaker of host {host} is open until {} (next trial call in {:.1} s); the device was not asked",
                    until.to_rfc3339_opts(SecondsFormat::Millis, true),
                    retry_in.as_secs_f64()
                )
            }
            BreakerError::TrialInFlight => format!(
                "circuit breaker of host {host} is half-open and its one trial call is still running; the device was not asked"
            ),
        };
        DriverError::new(ErrorKind::NetworkError, message).with_source(refused)
    }
}

/// The counted failure of a call whose answer is all-or-nothing.
fn err_kind<T>(result: &Result<T, DriverError>) -> Option<ErrorKind> {
    result.as_ref().err().map(|e| e.kind)
}

/// An execute answer counts when every target failed with a counting kind.
fn exec_kind(result: &Result<Vec<ExecOutcome>, DriverError>) -> Option<ErrorKind> {
    let outcomes = match result {
        Err(e) => return Some(e.kind),
        Ok(outcomes) => outcomes,
    };
    let mut first = None;
    for outcome in outcomes {
        if outcome.ok {
            return None;
        }
        let kind = kind_of_code(&outcome.code).filter(|k| k.counts_for_breaker())?;
        first.get_or_insert(kind);
    }
    first
}

/// `driver.server_error` -> [`ErrorKind::ServerError`].
fn kind_of_code(code: &str) -> Option<ErrorKind> {
    let name = code.strip_prefix("driver.")?;
    serde_json::from_value(Value::String(name.to_string())).ok()
}

impl std::fmt::Debug for GuardedDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedDriver")
            .field("host", &self.inner.host_id())
            .field("plugin", &self.inner.plugin_id())
            .field("breaker", &self.breaker.state())
            .finish()
    }
}

#[async_trait]
impl Driver for GuardedDriver {
    fn plugin_id(&self) -> &str {
        self.inner.plugin_id()
    }

    fn host_id(&self) -> &str {
        self.inner.host_id()
    }

    async fn discover(
        &self,
        mode: RefreshMode,
        budget: Duration,
    ) -> Result<Vec<Target>, DriverError> {
        self.call(
            "discover",
            None,
            &[],
            self.inner.discover(mode, budget),
            err_kind,
        )
        .await
    }

    async fn dry_run(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<DryRunAnswer>, DriverError> {
        self.call(
            "dry_run",
            Some(action),
            targets,
            self.inner.dry_run(action, targets),
            err_kind,
        )
        .await
    }

    async fn execute(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<ExecOutcome>, DriverError> {
        self.call(
            "execute",
            Some(action),
            targets,
            self.inner.execute(action, targets),
            exec_kind,
        )
        .await
    }

    async fn test_connection(&self) -> Result<ConnectionReport, DriverError> {
        self.call(
            "test_connection",
            None,
            &[],
            self.inner.test_connection(),
            err_kind,
        )
        .await
    }

    async fn task_status(&self, task: &TaskHandle) -> Result<TaskStatus, DriverError> {
        self.call(
            "task_status",
            None,
            std::slice::from_ref(&task.target),
            self.inner.task_status(task),
            err_kind,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inventory::Severity;
    use serde_json::Map;

    fn outcome(ok: bool, code: &str) -> ExecOutcome {
        ExecOutcome {
            target: "webhook:default".into(),
            ok,
            severity: if ok { Severity::Info } else { Severity::Error },
            code: code.into(),
            reason: None,
            evidence: Map::new(),
            duration_ms: 0,
            result_state: None,
        }
    }

    #[test]
    fn outcome_codes_name_their_error_kind() {
        assert_eq!(
            kind_of_code("driver.server_error"),
            Some(ErrorKind::ServerError)
        );
        assert_eq!(kind_of_code("driver.timeout"), Some(ErrorKind::Timeout));
        assert_eq!(kind_of_code("driver.already_desired"), None);
        assert_eq!(kind_of_code("engine.host_unreachable"), None);
    }

    #[test]
    fn an_execute_answer_counts_only_when_every_target_failed_for_a_host_reason() {
        let all_down = Ok(vec![
            outcome(false, "driver.server_error"),
            outcome(false, "driver.timeout"),
        ]);
        assert_eq!(exec_kind(&all_down), Some(ErrorKind::ServerError));
        let one_ok = Ok(vec![
            outcome(false, "driver.server_error"),
            outcome(true, "driver.ok"),
        ]);
        assert_eq!(exec_kind(&one_ok), None);
        let one_own_reason = Ok(vec![
            outcome(false, "driver.network_error"),
            outcome(false, "driver.not_found"),
        ]);
        assert_eq!(exec_kind(&one_own_reason), None);
        assert_eq!(exec_kind(&Ok(Vec::new())), None);
        let whole_call = Err(DriverError::new(ErrorKind::TlsError, "bad pin"));
        assert_eq!(exec_kind(&whole_call), Some(ErrorKind::TlsError));
    }

    #[tokio::test]
    async fn the_call_context_is_seen_only_inside_with_context() {
        let context = CallContext {
            policy_id: Uuid::new_v4(),
            policy: Some("On battery: stop low-tier VMs".into()),
            correlation_id: Uuid::new_v4(),
        };
        let inside = with_context(context.clone(), async {
            CONTEXT.try_with(|c| c.clone()).ok()
        })
        .await;
        assert_eq!(inside, Some(context));
        assert_eq!(CONTEXT.try_with(|c| c.clone()).ok(), None);
    }
}
