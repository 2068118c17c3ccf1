//! The UPS event source: polls upsd and turns what changed into normalized
//! events (SPEC §1) on the engine's bus.
//!
//! The decisions are a pure state machine, [`UpsTracker`] (readings and the
//! time in, [`Change`]s out), so they are tested without a network or a
//! clock. Around it, one poll loop per upsd server ([`spawn`]) keeps one
//! connection, polls every UPS of that server with `LIST VAR` on a fixed
//! schedule, reconnects with backoff, and stops on the shutdown signal.
//!
//! Rules (`docs/nut.md`): the first reading after start is published as a
//! level reading (every state the UPS is in), which the engine compares
//! with the state it last knew and persisted (SPEC §1), so a restart on
//! mains fires nothing and a mains return while the agent was down is
//! still seen; each later good reading is compared with the last
//! good one (across failures, so a change while unreachable is published
//! once and an unchanged state never twice); `ups.status` tokens that appear
//! become `ups.state` events and changed readings become `metric.threshold`
//! events; a UPS not read for `comm_lost_after_ms` becomes one `comm_lost`,
//! followed by `low_battery` when it was last seen on battery (the upsmon
//! fail-safe) unless `lost_on_battery_is_low_battery` is off.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use drivers::ratelimit::Backoff;
use drivers::secret::Secret;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use uuid::Uuid;

use super::client::{ClientOptions, NutClient};
use super::protocol;
use crate::engine::bus::Publisher;
use crate::engine::conditions::UpsFacts;
use crate::engine::event::{Event, EventKind, Subject, SubjectKind};
use crate::engine::subjects::{level_event_with_metrics, PUBLISH_ORDER};
use crate::spec::UpsState;

/// One UPS on one upsd server (`nut:` in `hazel.yaml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NutConfig {
    /// upsd's host name or address.
    pub host: String,
    /// upsd's TCP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The UPS name in upsd's `ups.conf` (`ups1`).
    pub ups: String,
    /// Sent as `USERNAME` when set. Reading needs no account; `LOGIN` is never sent.
    #[serde(default)]
    pub user: Option<String>,
    /// Sent as `PASSWORD` when set; never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Time between polls, in milliseconds. upsd drops clients idle for
    /// 60 s, so keep it well below that.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// How long the UPS may be unreadable (server down, `DATA-STALE`,
    /// `DRIVER-NOT-CONNECTED`) before a `comm_lost` event, in milliseconds.
    #[serde(default = "default_comm_lost_after_ms")]
    pub comm_lost_after_ms: u64,
    /// Whether losing a UPS last seen on battery also publishes
    /// `low_battery`, as upsmon treats it as critical.
    #[serde(default = "default_true")]
    pub lost_on_battery_is_low_battery: bool,
    /// Deadline of one request (connect or poll), in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

pub fn default_port() -> u16 {
    3493
}

pub fn default_poll_interval_ms() -> u64 {
    2000
}

pub fn default_comm_lost_after_ms() -> u64 {
    15_000
}

pub fn default_true() -> bool {
    true
}

pub fn default_request_timeout_ms() -> u64 {
    5000
}

/// The most a reconnect waits between attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(10);

impl NutConfig {
    /// A config with every default (`port` 3493).
    pub fn new(host: impl Into<String>, ups: impl Into<String>) -> NutConfig {
        NutConfig {
            host: host.into(),
            port: default_port(),
            ups: ups.into(),
            user: None,
            password: None,
            poll_interval_ms: default_poll_interval_ms(),
            comm_lost_after_ms: default_comm_lost_after_ms(),
            lost_on_battery_is_low_battery: true,
            request_timeout_ms: default_request_timeout_ms(),
        }
    }

    /// The event subject id, `<ups>@<host>:<port>`.
    pub fn subject_id(&self) -> String {
        format!("{}@{}:{}", self.ups, self.host, self.port)
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(1))
    }

    fn tracker_options(&self) -> TrackerOptions {
        TrackerOptions {
            comm_lost_after: Duration::from_millis(self.comm_lost_after_ms),
            lost_on_battery_is_low_battery: self.lost_on_battery_is_low_battery,
        }
    }

    /// Configs that share a server, credentials and timing share one poll
    /// loop and one connection.
    fn server_key(&self) -> (String, u16, Option<String>, Option<String>, u64, u64) {
        (
            self.host.clone(),
            self.port,
            self.user.clone(),
            self.password.as_ref().map(|p| p.expose().to_string()),
            self.poll_interval_ms,
            self.request_timeout_ms,
        )
    }
}

/// What one poll of one UPS found.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// The UPS's variables (`ups.status`, `battery.charge`, ...).
    Vars(BTreeMap<String, String>),
    /// upsd's `WAIT` status: it is (re)connecting to the driver. No
    /// information, neither a reading nor a failure.
    Wait,
    /// The server or the UPS could not be read (connection refused or lost,
    /// timeout, `DATA-STALE`, `DRIVER-NOT-CONNECTED`, ...).
    Failed,
}

/// What the source publishes for a UPS.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The first reading after start: every state the UPS is in, published
    /// as a level reading that the engine compares with what it last knew
    /// (SPEC §1; [`crate::engine::subjects`]), with the metrics read with
    /// them (a restored `metric.threshold` hold is confirmed by them).
    Level {
        states: Vec<UpsState>,
        metrics: BTreeMap<&'static str, f64>,
    },
    /// A `ups.state` event.
    State(UpsState),
    /// A `metric.threshold` event under a canonical metric name.
    Metric { name: &'static str, value: f64 },
}

/// The tracker's tunables (from [`NutConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerOptions {
    pub comm_lost_after: Duration,
    pub lost_on_battery_is_low_battery: bool,
}

/// The pure core of one UPS: feed it every poll's [`Reading`] with the
/// time, get back what to publish. See the module docs for the rules.
#[derive(Debug, Clone)]
pub struct UpsTracker {
    options: TrackerOptions,
    /// States and metrics of the last good reading; `None` until the first
    /// one (the baseline). Kept across failures.
    current: Option<Snapshot>,
    /// Whether the last good reading had `OB` (kept across failures, for
    /// the fail-safe).
    last_on_battery: bool,
    /// When the current run of failures began.
    failing_since: Option<Instant>,
    /// Whether this run of failures already published `comm_lost`.
    comm_lost_published: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Snapshot {
    states: Vec<UpsState>,
    metrics: BTreeMap<&'static str, f64>,
}

/// The order several states that appear at once are published in.
const STATE_ORDER: [UpsState; 6] = PUBLISH_ORDER;

/// The `ups.state` a status token stands for, if any.
pub fn token_state(token: &str) -> Option<UpsState> {
    match token {
        "OL" => Some(UpsState::OnMains),
        "OB" => Some(UpsState::OnBattery),
        "LB" => Some(UpsState::LowBattery),
        "RB" => Some(UpsState::ReplaceBattery),
        "OVER" => Some(UpsState::Overload),
        "FSD" => Some(UpsState::ForcedShutdown),
        _ => None,
    }
}

/// The states `ups.status` puts the UPS in, in [`STATE_ORDER`]. Unknown
/// tokens (`CHRG`, `ALARM`, ...) are accepted and carry no state.
pub fn status_states(status: &str) -> Vec<UpsState> {
    let present: Vec<UpsState> = status.split_whitespace().filter_map(token_state).collect();
    STATE_ORDER
        .into_iter()
        .filter(|s| present.contains(s))
        .collect()
}

/// The canonical metrics (SPEC §1) in a UPS's variables: `load` from
/// `ups.load`, `charge_pct` from `battery.charge`, `runtime_minutes` from
/// `battery.runtime` (seconds) / 60. Values that are not numbers are skipped.
pub fn canonical_metrics(vars: &BTreeMap<String, String>) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    for (var, name, scale) in [
        ("ups.load", "load", 1.0),
        ("battery.charge", "charge_pct", 1.0),
        ("battery.runtime", "runtime_minutes", 1.0 / 60.0),
    ] {
        if let Some(value) = vars.get(var).and_then(|v| parse_number(v)) {
            out.insert(name, value * scale);
        }
    }
    out
}

/// A NUT number (`"023.4"`, `"100"`); `None` for anything else.
pub fn parse_number(text: &str) -> Option<f64> {
    let t = text.trim();
    if t.is_empty()
        || !t
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl UpsTracker {
    pub fn new(options: TrackerOptions) -> UpsTracker {
        UpsTracker {
            options,
            current: None,
            last_on_battery: false,
            failing_since: None,
            comm_lost_published: false,
        }
    }

    /// Whether a baseline is set (the next reading may publish).
    pub fn has_baseline(&self) -> bool {
        self.current.is_some()
    }

    /// Folds one poll's result in at `now` and returns what to publish, in
    /// order.
    pub fn observe(&mut self, now: Instant, reading: &Reading) -> Vec<Change> {
        match reading {
            Reading::Wait => self.check(now),
            Reading::Failed => {
                // The last good reading stays the baseline: the first good
                // reading after a failure is compared with it, so a change
                // during a short failure (OL -> OB while the driver was
                // stale) is still published, and a state that did not
                // change while the UPS was unreachable is not published
                // again (a mains-return policy must not start VMs twice).
                self.failing_since.get_or_insert(now);
                self.check(now)
            }
            Reading::Vars(vars) => {
                let status = vars.get("ups.status").map(String::as_str).unwrap_or("");
                if protocol::is_wait_status(status) {
                    return self.check(now);
                }
                if status.trim().is_empty() {
                    // upsmon counts an empty status as a failed poll.
                    return self.observe(now, &Reading::Failed);
                }
                self.failing_since = None;
                self.comm_lost_published = false;
                self.last_on_battery = status.split_whitespace().any(|t| t == "OB");
                let next = Snapshot {
                    states: status_states(status),
                    metrics: canonical_metrics(vars),
                };
                let Some(prev) = self.current.replace(next.clone()) else {
                    // The first reading after start is a level: the engine
                    // judges it against the state it last knew. Its metrics
                    // go with it (they confirm a restored metric hold) and
                    // are the baseline for the next readings.
                    return vec![Change::Level {
                        states: next.states,
                        metrics: next.metrics,
                    }];
                };
                // Going on battery ends the conditions seen on mains: the
                // ones still present (`OL LB` -> `OB LB`) are reported again
                // after it, so a low-battery policy acts on this outage.
                // Back on mains they are not: what was acted on during the
                // outage is not acted on again.
                let to_battery = next.states.contains(&UpsState::OnBattery)
                    && !prev.states.contains(&UpsState::OnBattery);
                let mut out: Vec<Change> = next
                    .states
                    .iter()
                    .filter(|s| !prev.states.contains(s) || (to_battery && !s.is_power_source()))
                    .map(|&s| Change::State(s))
                    .collect();
                for (&name, &value) in &next.metrics {
                    if prev.metrics.get(name) != Some(&value) {
                        out.push(Change::Metric { name, value });
                    }
                }
                out
            }
        }
    }

    /// Time passing without a reading (a poll not attempted while the
    /// reconnect backs off): publishes `comm_lost` once the failures have
    /// lasted long enough.
    pub fn check(&mut self, now: Instant) -> Vec<Change> {
        let Some(since) = self.failing_since else {
            return Vec::new();
        };
        if self.comm_lost_published || now.duration_since(since) < self.options.comm_lost_after {
            return Vec::new();
        }
        self.comm_lost_published = true;
        let mut out = vec![Change::State(UpsState::CommLost)];
        if self.last_on_battery && self.options.lost_on_battery_is_low_battery {
            out.push(Change::State(UpsState::LowBattery));
        }
        out
    }
}

/// The latest readings of every polled UPS, by subject id, including
/// baselines (which publish no event): what the engine's facts for
/// conditions can be seeded from.
#[derive(Debug, Clone, Default)]
pub struct LatestReadings(Arc<Mutex<BTreeMap<String, UpsFacts>>>);

impl LatestReadings {
    /// A copy of every UPS's latest readings.
    pub fn snapshot(&self) -> Vec<UpsFacts> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, UpsFacts>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, subject_id: &str, vars: &BTreeMap<String, String>) {
        let mut map = self.lock();
        let facts = map
            .entry(subject_id.to_string())
            .or_insert_with(|| UpsFacts::new(subject_id));
        if let Some(status) = vars.get("ups.status") {
            // The power source, and the conditions on top of it exactly as
            // this reading has them (a reading also means contact is back).
            let states = status_states(status);
            if let Some(&power) = states.iter().find(|s| s.is_power_source()) {
                facts.state = Some(power);
            }
            facts.conditions = states
                .into_iter()
                .filter(|s| !s.is_power_source())
                .collect();
        }
        for (name, value) in canonical_metrics(vars) {
            facts.set_reading(name, value);
        }
        for (var, text) in vars {
            if !matches!(
                var.as_str(),
                "ups.load" | "battery.charge" | "battery.runtime"
            ) {
                if let Some(value) = parse_number(text) {
                    facts.set_reading(var, value);
                }
            }
        }
    }
}

/// The running poll loops; see [`spawn`].
#[derive(Debug)]
pub struct NutSources {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    readings: LatestReadings,
}

impl NutSources {
    /// The latest readings of every UPS (see [`LatestReadings`]).
    pub fn readings(&self) -> &LatestReadings {
        &self.readings
    }

    /// Signals every poll loop to stop and waits for them; each logs out of
    /// its upsd first.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Starts one poll loop per upsd server (configs with the same host, port,
/// credentials and timing share one loop and one connection), publishing
/// to `publisher`. Must be called inside a tokio runtime.
pub fn spawn(configs: &[NutConfig], publisher: Publisher) -> NutSources {
    let (stop, stop_rx) = watch::channel(false);
    let readings = LatestReadings::default();
    let tasks = spawn_with_shutdown(configs, publisher, stop_rx, readings.clone());
    NutSources {
        stop,
        tasks,
        readings,
    }
}

/// [`spawn`] with a caller-owned shutdown signal: the loops stop when
/// `shutdown` turns `true` (or its sender is dropped).
pub fn spawn_with_shutdown(
    configs: &[NutConfig],
    publisher: Publisher,
    shutdown: watch::Receiver<bool>,
    readings: LatestReadings,
) -> Vec<JoinHandle<()>> {
    let mut servers: BTreeMap<_, Vec<NutConfig>> = BTreeMap::new();
    for config in configs {
        servers
            .entry(config.server_key())
            .or_default()
            .push(config.clone());
    }
    servers
        .into_values()
        .map(|upses| {
            tokio::spawn(run_server(
                upses,
                publisher.clone(),
                shutdown.clone(),
                readings.clone(),
            ))
        })
        .collect()
}

/// One UPS inside a server's poll loop.
struct Polled {
    config: NutConfig,
    subject_id: String,
    tracker: UpsTracker,
}

/// The poll loop of one server: every `poll_interval`, poll each UPS (or,
/// while disconnected, try to reconnect once the backoff allows), feed the
/// trackers, publish their changes. Returns when `shutdown` turns true.
///
/// The interval uses [`MissedTickBehavior::Skip`]: ticks stay on the grid
/// `start + k × interval` for the whole run, so the schedule never drifts;
/// when a poll overruns (a slow server, a request timeout) the ticks it
/// covered are dropped rather than fired in a burst (`Burst`) or the whole
/// grid shifted later (`Delay`, whose shifts add up over a day of slow
/// polls). A skipped tick loses nothing: the next poll reads the current
/// state anyway.
pub async fn run_server(
    upses: Vec<NutConfig>,
    publisher: Publisher,
    mut shutdown: watch::Receiver<bool>,
    readings: LatestReadings,
) {
    let Some(first) = upses.first().cloned() else {
        return;
    };
    let options = ClientOptions {
        host: first.host.clone(),
        port: first.port,
        user: first.user.clone(),
        password: first.password.clone(),
        timeout: Duration::from_millis(first.request_timeout_ms.max(1)),
    };
    let interval_len = first.poll_interval();
    let mut polled: Vec<Polled> = upses
        .into_iter()
        .map(|config| Polled {
            subject_id: config.subject_id(),
            tracker: UpsTracker::new(config.tracker_options()),
            config,
        })
        .collect();
    let server = format!("{}:{}", options.host, options.port);
    let mut backoff = Backoff::new(interval_len, MAX_RECONNECT_DELAY.max(interval_len));
    let mut client: Option<NutClient> = None;
    let mut next_connect = Instant::now();
    let mut interval = tokio::time::interval(interval_len);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);

    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = interval.tick() => {}
        }
        let now = Instant::now();
        if client.is_none() && now >= next_connect {
            match NutClient::connect(&options).await {
                Ok(c) => {
                    tracing::info!(server = %server, "connected to upsd");
                    backoff.reset();
                    client = Some(c);
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(server = %server, error = %e, retry_ms = delay.as_millis() as u64, "cannot reach upsd");
                    next_connect = now + delay;
                    for p in &mut polled {
                        let changes = p.tracker.observe(Instant::now(), &Reading::Failed);
                        publish(&publisher, &p.subject_id, changes).await;
                    }
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else {
            // Backing off: no attempt this tick, but time still counts.
            for p in &mut polled {
                let changes = p.tracker.check(now);
                publish(&publisher, &p.subject_id, changes).await;
            }
            continue;
        };
        let mut broken = false;
        for p in &mut polled {
            let reading = if broken {
                Reading::Failed
            } else {
                match c.list_var(&p.config.ups).await {
                    Ok(vars) => {
                        readings.record(&p.subject_id, &vars);
                        if vars
                            .get("ups.status")
                            .is_some_and(|s| protocol::is_wait_status(s))
                        {
                            Reading::Wait
                        } else {
                            Reading::Vars(vars)
                        }
                    }
                    Err(e) => {
                        if e.breaks_connection() {
                            broken = true;
                        }
                        tracing::warn!(server = %server, ups = %p.config.ups, error = %e, "cannot read UPS");
                        Reading::Failed
                    }
                }
            };
            let changes = p.tracker.observe(Instant::now(), &reading);
            publish(&publisher, &p.subject_id, changes).await;
        }
        if broken {
            client = None;
            next_connect = Instant::now();
        }
    }
    if let Some(c) = client {
        let _ = c.logout().await;
    }
}

/// Publishes a UPS's changes in order. A closed bus means the engine shut
/// down; the loop notices through its shutdown signal.
async fn publish(publisher: &Publisher, subject_id: &str, changes: Vec<Change>) {
    for change in changes {
        let event = change_event(subject_id, &change);
        tracing::info!(ups = subject_id, change = ?change, "ups event");
        if publisher.publish(event).await.is_err() {
            tracing::debug!(ups = subject_id, "event bus closed, dropping ups event");
            return;
        }
    }
}

/// The SPEC §1 event for a change of the UPS `subject_id`.
pub fn change_event(subject_id: &str, change: &Change) -> Event {
    let (kind, attrs) = match change {
        Change::Level { states, metrics } => {
            return level_event_with_metrics(
                subject_id,
                states,
                metrics.iter().map(|(&name, &value)| (name, value)),
            )
        }
        Change::State(state) => {
            let mut attrs = Map::new();
            attrs.insert("state".into(), Value::from(state.as_str()));
            (EventKind::UpsState, attrs)
        }
        Change::Metric { name, value } => {
            let mut attrs = Map::new();
            attrs.insert("metric".into(), Value::from(*name));
            attrs.insert("value".into(), Value::from(*value));
            (EventKind::MetricThreshold, attrs)
        }
    };
    Event {
        kind,
        subject: Subject {
            kind: SubjectKind::Ups,
            id: subject_id.to_string(),
        },
        attrs,
        ts: Utc::now(),
        correlation_id: Uuid::new_v4(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> TrackerOptions {
        TrackerOptions {
            comm_lost_after: Duration::from_secs(15),
            lost_on_battery_is_low_battery: true,
        }
    }

    fn vars(status: &str, charge: &str, runtime: &str, load: &str) -> Reading {
        let mut v = BTreeMap::new();
        v.insert("ups.status".to_string(), status.to_string());
        v.insert("battery.charge".to_string(), charge.to_string());
        v.insert("battery.runtime".to_string(), runtime.to_string());
        v.insert("ups.load".to_string(), load.to_string());
        Reading::Vars(v)
    }

    fn status(s: &str) -> Reading {
        vars(s, "100", "1800", "20")
    }

    fn secs(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    /// A readable trace of the changes: `on_battery`, `load=35`.
    fn show(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Level { states, .. } => format!(
                    "level[{}]",
                    states
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Change::State(s) => s.as_str().to_string(),
                Change::Metric { name, value } => format!("{name}={value}"),
            })
            .collect()
    }

    #[test]
    fn the_first_reading_is_a_level_for_the_engine_and_then_a_baseline() {
        let t0 = Instant::now();
        let mut t = UpsTracker::new(options());
        assert_eq!(
            show(&t.observe(t0, &status("OB LB"))),
            ["level[on_battery,low_battery]"]
        );
        assert!(t.has_baseline());
        assert!(t.observe(secs(t0, 2), &status("OB LB")).is_empty());
    }

    #[test]
    fn the_first_reading_carries_its_metrics_to_the_engine() {
        let mut t = UpsTracker::new(options());
        let changes = t.observe(Instant::now(), &vars("OB", "42", "600", "35"));
        assert_eq!(
            changes,
            [Change::Level {
                states: vec![UpsState::OnBattery],
                metrics: BTreeMap::from([
                    ("charge_pct", 42.0),
                    ("load", 35.0),
                    ("runtime_minutes", 10.0)
                ]),
            }]
        );
        let event = change_event("ups1@nas:3493", &changes[0]);
        let mut metrics = crate::engine::subjects::level_metrics(&event);
        metrics.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            metrics,
            [
                ("charge_pct".to_string(), 42.0),
                ("load".to_string(), 35.0),
                ("runtime_minutes".to_string(), 10.0)
            ]
        );
    }

    #[test]
    fn status_tokens_that_appear_become_states_in_severity_order() {
        let t0 = Instant::now();
        let mut t = UpsTracker::new(options());
        t.observe(t0, &status("OL CHRG"));
        assert_eq!(
            show(&t.observe(secs(t0, 2), &status("OB DISCHRG"))),
            ["on_battery"]
        );
        assert_eq!(
            show(&t.observe(secs(t0, 4), &status("OB LB"))),
            ["low_battery"]
        );
        assert_eq!(show(&t.observe(secs(t0, 6), &status("OL"))), ["on_mains"]);
        assert_eq!(
            show(&t.observe(secs(t0, 8), &status("FSD OB LB RB OVER"))),
            [
                "on_battery",
                "replace_battery",
                "overload",
                "low_battery",
                "forced_shutdown"
            ]
        );
        // Tokens that go away publish nothing; unknown tokens are ignored.
        assert!(t.observe(secs(t0, 10), &status("OB ALARM XYZ")).is_empty());
    }

    #[test]
    fn latest_readings_keep_the_power_source_and_the_conditions_on_top() {
        let readings = LatestReadings::default();
        let Reading::Vars(vars) = status("OB LB OVER") else {
            unreachable!("status() reads variables")
        };
        readings.record("ups1@nas:3493", &vars);
        let ups = &readings.snapshot()[0];
        assert_eq!(ups.state, Some(UpsState::OnBattery));
        assert_eq!(ups.conditions, [UpsState::Overload, UpsState::LowBattery]);
        assert_eq!(ups.is_in(UpsState::LowBattery), Some(true));
        assert_eq!(ups.charge_pct, Some(100.0));
    }

    #[test]
    fn conditions_still_present_are_reported_again_when_the_ups_goes_on_battery() {
        let t0 = Instant::now();
        let mut t = UpsTracker::new(options());
        t.observe(t0, &status("OL LB"));
        // Mains fail with the battery still low from the last outage.
        assert_eq!(
            show(&t.observe(secs(t0, 2), &status("OB LB"))),
            ["on_battery", "low_battery"]
        );
        // Back on mains, the low battery is not news.
        assert_eq!(
            show(&t.observe(secs(t0, 4), &status("OL LB"))),
            ["on_mains"]
        );
    }

    #[test]
    fn metrics_are_published_under_canonical_names_when_they_change() {
        let t0 = Instant::now();
        let mut t = UpsTracker::new(options());
        t.observe(t0, &vars("OL", "100", "1800", "020.0"));
        assert!(t
            .observe(secs(t0, 2), &vars("OL", "100", "1800", "20"))
            .is_empty());
        assert_eq!(
            show(&t.observe(secs(t0, 4), &vars("OB", "95", "900", "35.5"))),
            [
                "on_battery",
                "charge_pct=95",
                "load=35.5",
                "runtime_minutes=15"
            ]
        );
        // A value that is not a number is no reading.
        assert!(t
            .observe(secs(t0, 6), &vars("OB", "95", "n/a", "35.5"))
            .is_empty());
    }

    #[test]
    fn failures_longer_than_the_timeout_publish_one_comm_lost() {
        let t0 = Instant::now();
        let mut t = UpsTracker::new(options());
        t.observe(t0, &status("OL"));
        assert!(t.observe(secs(t0, 2), &Reading::Failed).is_empty());
        assert!(t.observe(secs(t0, 16), &Reading::Failed).is_empty());
        assert_eq!(show(&t.check(secs(t0, 17))), ["comm_lost"]);
        assert!(t.observe(secs(t0, 19), &Reading::Failed).is_empty());
        assert!(t.check(secs(t0, 300)).is_empty());
    }

    #[test]
    fn after_a_failure_the_first_reading_is_compared_with_the_last_good_one() {
        let t0 = Instant::now();
        let mut t = UpsTracker::new(options());
        t.observe(t0, &status("OB"));
        t.observe(secs(t0, 2), &Reading::Failed);
        assert_eq!(show(&t.check(secs(t0, 18))), ["comm_lost", "low_battery"]);
        // The mains came back while the UPS was unreachable: published.
        assert_eq!(show(&t.observe(secs(t0, 20), &status("OL"))), ["on_mains"]);
        // On mains before and after a loss: nothing to publish again.
        t.observe(secs(t0, 22), &Reading::Failed);
        assert_eq!(show(&t.check(secs(t0, 40))), ["comm_lost"]);
        assert!(t.observe(secs(t0, 41), &status("OL")).is_empty());
        // A change during a short failure (no comm_lost) is published.
        t.observe(secs(t0, 43), &Reading::Failed);
        assert_eq!(
            show(&t.observe(secs(t0, 44), &status("OB"))),
            ["on_battery"]
        );
    }

    #[test]
    fn a_ups_lost_on_battery_is_treated_as_low_battery() {
        let t0 = Instant::now();
        let mut t = UpsTracker::new(options());
        t.observe(t0, &status("OL"));
        t.observe(secs(t0, 2), &status("OB"));
        t.observe(secs(t0, 4), &Reading::Failed);
        assert_eq!(show(&t.check(secs(t0, 19))), ["comm_lost", "low_battery"]);

        let mut off = UpsTracker::new(TrackerOptions {
            lost_on_battery_is_low_battery: false,
            ..options()
        });
        off.observe(t0, &status("OB"));
        off.observe(secs(t0, 4), &Reading::Failed);
        assert_eq!(show(&off.check(secs(t0, 19))), ["comm_lost"]);
    }

    #[test]
    fn a_ups_never_read_becomes_comm_lost_without_the_fail_safe() {
        let t0 = Instant::now();
        let mut t = UpsTracker::new(options());
        assert!(t.observe(t0, &Reading::Failed).is_empty());
        assert_eq!(
            show(&t.observe(secs(t0, 15), &Reading::Failed)),
            ["comm_lost"]
        );
    }

    #[test]
    fn a_change_during_a_short_failure_is_published_when_read() {
        let t0 = Instant::now();
        let mut t = UpsTracker::new(options());
        t.observe(t0, &status("OL"));
        t.observe(secs(t0, 2), &Reading::Failed);
        assert!(t.has_baseline(), "the last good reading stays the baseline");
        assert_eq!(show(&t.observe(secs(t0, 4), &status("OB"))), ["on_battery"]);
        assert_eq!(show(&t.observe(secs(t0, 6), &status("OL"))), ["on_mains"]);
        // A short outage publishes no comm_lost, and the clock restarts.
        t.observe(secs(t0, 8), &Reading::Failed);
        t.observe(secs(t0, 10), &status("OL"));
        t.observe(secs(t0, 20), &Reading::Failed);
        assert!(t.check(secs(t0, 34)).is_empty());
        assert_eq!(show(&t.check(secs(t0, 35))), ["comm_lost"]);
    }

    #[test]
    fn wait_is_no_information_not_a_failure_nor_a_baseline() {
        let t0 = Instant::now();
        let mut t = UpsTracker::new(options());
        assert!(t.observe(t0, &status("WAIT")).is_empty());
        assert!(!t.has_baseline());
        assert!(t.observe(secs(t0, 60), &Reading::Wait).is_empty());
        t.observe(secs(t0, 62), &status("OL"));
        assert!(t.observe(secs(t0, 64), &status("WAIT")).is_empty());
        assert_eq!(
            show(&t.observe(secs(t0, 66), &status("OB"))),
            ["on_battery"]
        );
    }

    #[test]
    fn an_empty_status_counts_as_a_failed_poll() {
        let t0 = Instant::now();
        let mut t = UpsTracker::new(options());
        t.observe(t0, &status("OL"));
        t.observe(secs(t0, 1), &status(""));
        assert_eq!(show(&t.check(secs(t0, 16))), ["comm_lost"]);
    }

    #[test]
    fn events_carry_the_spec_shape() {
        let e = change_event("ups1@nas:3493", &Change::State(UpsState::OnBattery));
        assert_eq!(e.ups_state(), Some(UpsState::OnBattery));
        assert_eq!(e.subject.kind, SubjectKind::Ups);
        let m = change_event(
            "ups1@nas:3493",
            &Change::Metric {
                name: "charge_pct",
                value: 42.0,
            },
        );
        assert_eq!(m.metric(), Some(("charge_pct", 42.0)));
    }

    #[test]
    fn config_fills_defaults_and_refuses_unknown_fields() {
        let c: NutConfig = serde_json::from_str(r#"{"host":"nas","ups":"ups1"}"#).unwrap();
        assert_eq!(c, NutConfig::new("nas", "ups1"));
        assert_eq!(c.subject_id(), "ups1@nas:3493");
        assert_eq!((c.poll_interval_ms, c.comm_lost_after_ms), (2000, 15_000));
        let err = serde_json::from_str::<NutConfig>(r#"{"host":"nas","ups":"u","pasword":"x"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `pasword`"), "{err}");
        let with_pw: NutConfig =
            serde_json::from_str(r#"{"host":"nas","ups":"u","user":"mon","password":"hunter2"}"#)
                .unwrap();
        assert!(!format!("{with_pw:?}").contains("hunter2"));
    }

    #[test]
    fn numbers_parse_with_zero_padding_and_nothing_else() {
        assert_eq!(parse_number("023.4"), Some(23.4));
        assert_eq!(parse_number("100"), Some(100.0));
        assert_eq!(parse_number("1e3"), None);
        assert_eq!(parse_number("OL"), None);
        assert_eq!(parse_number(""), None);
    }
}
