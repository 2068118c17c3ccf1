//! Counters and histograms for `/metrics`, rendered in the Prometheus text
//! format (version 0.0.4): events by kind, decisions by code, actions by
//! outcome, queue depths, driver latency, host reachability, compile
//! latency and findings by severity, retries; and, read when rendered
//! ([`Live`]), each host's breaker state and inventory refresh latency and
//! SLA misses, each UPS's state and battery readings. Labelled series live
//! in small maps behind one mutex each; every update is a map lookup and an
//! add, so recording stays off the hot path's critical cost. The dashboard
//! in `deploy/grafana-dashboard.json` is built from these names.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the driver latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Upper bounds (seconds) of the compile latency histogram buckets.
pub const COMPILE_BUCKETS: [f64; 8] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0];

/// What `/metrics` reads from the rest of the agent when it renders,
/// rather than being told of each change.
#[derive(Debug, Default)]
pub struct Live {
    /// Each host's circuit breaker.
    pub breakers: Vec<(String, drivers::breaker::BreakerState)>,
    /// Each host's inventory refresh timings, by mode (`fast`, `full`).
    pub refreshes: Vec<RefreshStats>,
    /// Each UPS's latest readings (NUT).
    pub ups: Vec<crate::engine::conditions::UpsFacts>,
}

/// One host's refreshes of one mode: their latency and how many did not
/// refresh within the host's SLA (fast) or budget (full).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RefreshStats {
    pub host: String,
    pub mode: &'static str,
    pub latency: Histogram,
    pub sla_misses: u64,
}

/// The agent's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    events: Mutex<BTreeMap<(String, String), u64>>,
    decisions: Mutex<BTreeMap<String, u64>>,
    actions: Mutex<BTreeMap<String, u64>>,
    queue_depth: Mutex<BTreeMap<String, u64>>,
    running: Mutex<u64>,
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
    http: Mutex<BTreeMap<(String, u16), u64>>,
    reachable: Mutex<BTreeMap<String, bool>>,
    kill_switch_unpersisted: Mutex<u64>,
    store_write_failures: Mutex<u64>,
    store_marker_failures: Mutex<u64>,
    backup_failures: Mutex<u64>,
    compile: Mutex<Histogram>,
    findings: Mutex<BTreeMap<String, u64>>,
    retries_scheduled: Mutex<u64>,
}

/// A latency histogram over [`LATENCY_BUCKETS`] (cumulative counts).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&mut self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        self.count += 1;
        self.sum += secs;
        for (bucket, bound) in self.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if secs <= bound {
                *bucket += 1;
            }
        }
    }

    /// How many observations.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines of `name` with
    /// `labels` (already escaped, comma-separated, no braces).
    fn write(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, n) in bounds.iter().zip(self.buckets) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        if labels.is_empty() {
            let _ = writeln!(out, "{name}_sum {}", self.sum);
            let _ = writeln!(out, "{name}_count {}", self.count);
        } else {
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
        }
    }
}

impl Metrics {
    /// Records one validation or compile of a policy: how long it took and
    /// its findings by severity (`blocker`, `error`, `warn`, `info`).
    pub fn compiled<'a>(&self, elapsed: Duration, severities: impl IntoIterator<Item = &'a str>) {
        let secs = elapsed.as_secs_f64();
        {
            let mut h = lock(&self.compile);
            h.count += 1;
            h.sum += secs;
            for (bucket, bound) in h.buckets.iter_mut().zip(COMPILE_BUCKETS) {
                if secs <= bound {
                    *bucket += 1;
                }
            }
        }
        let mut findings = lock(&self.findings);
        for severity in severities {
            *findings.entry(severity.to_string()).or_default() += 1;
        }
    }

    /// Sets the engine's count of retries scheduled (SPEC §6 "Outage
    /// lifecycle"); the engine keeps the count, this mirrors it.
    pub fn set_retries_scheduled(&self, n: u64) {
        *lock(&self.retries_scheduled) = n;
    }

    /// Counts a kill switch engaged in memory whose write the store refused.
    pub fn kill_switch_unpersisted(&self) {
        *self
            .kill_switch_unpersisted
            .lock()
            .unwrap_or_else(|e| e.into_inner()) += 1;
    }

    /// Sets the store's count of writes the disk refused (full, read-only,
    /// I/O); the store keeps the count, this mirrors it for rendering.
    pub fn set_store_write_failures(&self, n: u64) {
        *lock(&self.store_write_failures) = n;
    }

    /// Sets the store's count of failed updates of the data directory's
    /// marker; the store keeps the count, this mirrors it for rendering.
    pub fn set_store_marker_failures(&self, n: u64) {
        *lock(&self.store_marker_failures) = n;
    }

    /// Counts an automatic backup that failed.
    pub fn backup_failed(&self) {
        *lock(&self.backup_failures) += 1;
    }

    /// Counts an event taken in, by kind and whether it was a dry-run.
    pub fn event(&self, kind: &str, dry_run: bool) {
        let mode = if dry_run { "dry_run" } else { "live" };
        *lock(&self.events)
            .entry((kind.to_string(), mode.to_string()))
            .or_default() += 1;
    }

    /// Counts one policy decision by its code (`engine.scheduled`, ...).
    pub fn decision(&self, code: &str) {
        *lock(&self.decisions).entry(code.to_string()).or_default() += 1;
    }

    /// Counts one action × target result by outcome (`ok`, `failed`, code).
    pub fn action(&self, outcome: &str) {
        *lock(&self.actions).entry(outcome.to_string()).or_default() += 1;
    }

    /// Replaces the queue depth gauges (items queued per host) and the
    /// number of items running.
    pub fn set_queues(&self, depths: impl IntoIterator<Item = (String, u64)>, running: u64) {
        let mut map = lock(&self.queue_depth);
        map.clear();
        map.extend(depths);
        *lock(&self.running) = running;
    }

    /// Records one driver call's latency (`plugin`, `op`: dry_run, execute,
    /// refresh).
    pub fn driver_latency(&self, plugin: &str, op: &str, elapsed: Duration) {
        lock(&self.latency)
            .entry((plugin.to_string(), op.to_string()))
            .or_default()
            .observe(elapsed);
    }

    /// Sets a host's reachability gauge from a `host.state` event (SPEC §1).
    pub fn host_reachable(&self, host: &str, reachable: bool) {
        lock(&self.reachable).insert(host.to_string(), reachable);
    }

    /// Counts one API request by route template and status.
    pub fn http(&self, route: &str, status: u16) {
        *lock(&self.http)
            .entry((route.to_string(), status))
            .or_default() += 1;
    }

    /// The Prometheus text exposition of what was recorded only.
    pub fn render(&self) -> String {
        self.render_with(&Live::default())
    }

    /// The Prometheus text exposition, with what `live` read now.
    pub fn render_with(&self, live: &Live) -> String {
        let mut out = String::with_capacity(2048);
        header(
            &mut out,
            "hazel_events_total",
            "counter",
            "Events taken in, by kind and mode.",
        );
        for ((kind, mode), n) in lock(&self.events).iter() {
            let _ = writeln!(
                out,
                "hazel_events_total{{kind=\"{}\",mode=\"{}\"}} {n}",
                esc(kind),
                mode
            );
        }
        header(
            &mut out,
            "hazel_kill_switch_unpersisted_total",
            "counter",
            "Kill switch pauses held in memory because the store refused the write.",
        );
        let _ = writeln!(
            out,
            "hazel_kill_switch_unpersisted_total {}",
            lock(&self.kill_switch_unpersisted)
        );
        header(
            &mut out,
            "hazel_store_write_failures_total",
            "counter",
            "Store writes the disk refused (full, read-only, I/O error).",
        );
        let _ = writeln!(
            out,
            "hazel_store_write_failures_total {}",
            lock(&self.store_write_failures)
        );
        header(
            &mut out,
            "hazel_store_marker_write_failures_total",
            "counter",
            "Failed updates of the data directory's marker (a lost -wal file would go unnoticed meanwhile).",
        );
        let _ = writeln!(
            out,
            "hazel_store_marker_write_failures_total {}",
            lock(&self.store_marker_failures)
        );
        header(
            &mut out,
            "hazel_backup_failures_total",
            "counter",
            "Automatic backups that failed.",
        );
        let _ = writeln!(
            out,
            "hazel_backup_failures_total {}",
            lock(&self.backup_failures)
        );
        header(
            &mut out,
            "hazel_decisions_total",
            "counter",
            "Policy decisions, by code.",
        );
        for (code, n) in lock(&self.decisions).iter() {
            let _ = writeln!(out, "hazel_decisions_total{{code=\"{}\"}} {n}", esc(code));
        }
        header(
            &mut out,
            "hazel_actions_total",
            "counter",
            "Action x target results, by outcome.",
        );
        for (outcome, n) in lock(&self.actions).iter() {
            let _ = writeln!(
                out,
                "hazel_actions_total{{outcome=\"{}\"}} {n}",
                esc(outcome)
            );
        }
        header(
            &mut out,
            "hazel_queue_depth",
            "gauge",
            "Items queued per host.",
        );
        for (host, n) in lock(&self.queue_depth).iter() {
            let _ = writeln!(out, "hazel_queue_depth{{host=\"{}\"}} {n}", esc(host));
        }
        header(
            &mut out,
            "hazel_actions_running",
            "gauge",
            "Items running now.",
        );
        let _ = writeln!(out, "hazel_actions_running {}", *lock(&self.running));
        header(
            &mut out,
            "hazel_driver_latency_seconds",
            "histogram",
            "Driver call latency, by plugin and operation.",
        );
        for ((plugin, op), h) in lock(&self.latency).iter() {
            let labels = format!("plugin=\"{}\",op=\"{}\"", esc(plugin), esc(op));
            h.write(
                &mut out,
                "hazel_driver_latency_seconds",
                &labels,
                &LATENCY_BUCKETS,
            );
        }
        header(
            &mut out,
            "hazel_host_reachable",
            "gauge",
            "Whether each host is reachable (1) or not (0), as last published in host.state; hosts never judged are absent.",
        );
        for (host, reachable) in lock(&self.reachable).iter() {
            let _ = writeln!(
                out,
                "hazel_host_reachable{{host=\"{}\"}} {}",
                esc(host),
                u8::from(*reachable)
            );
        }
        header(
            &mut out,
            "hazel_http_requests_total",
            "counter",
            "API requests, by route and status.",
        );
        for ((route, status), n) in lock(&self.http).iter() {
            let _ = writeln!(
                out,
                "hazel_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                esc(route)
            );
        }
        self.render_compile(&mut out);
        header(
            &mut out,
            "hazel_retries_scheduled_total",
            "counter",
            "Retries of failed actions scheduled while their trigger held (gave up and stopped retries are hazel_actions_total outcomes engine.gave_up and engine.retry_stopped).",
        );
        let _ = writeln!(
            out,
            "hazel_retries_scheduled_total {}",
            lock(&self.retries_scheduled)
        );
        render_live(&mut out, live);
        out
    }

    fn render_compile(&self, out: &mut String) {
        header(
            out,
            "hazel_compile_seconds",
            "histogram",
            "Time to validate and compile one policy (API validation, create, update).",
        );
        lock(&self.compile).write(out, "hazel_compile_seconds", "", &COMPILE_BUCKETS);
        header(
            out,
            "hazel_findings_total",
            "counter",
            "Findings of policy validations, by severity.",
        );
        for (severity, n) in lock(&self.findings).iter() {
            let _ = writeln!(
                out,
                "hazel_findings_total{{severity=\"{}\"}} {n}",
                esc(severity)
            );
        }
    }
}

/// The families read at render time (see [`Live`]).
fn render_live(out: &mut String, live: &Live) {
    header(
        out,
        "hazel_breaker_state",
        "gauge",
        "Each host's circuit breaker: 1 for the state it is in (closed, open, half_open), 0 for the others.",
    );
    for (host, state) in &live.breakers {
        use drivers::breaker::BreakerState as B;
        for (name, this) in [
            ("closed", B::Closed),
            ("open", B::Open),
            ("half_open", B::HalfOpen),
        ] {
            let _ = writeln!(
                out,
                "hazel_breaker_state{{host=\"{}\",state=\"{name}\"}} {}",
                esc(host),
                u8::from(*state == this)
            );
        }
    }
    header(
        out,
        "hazel_inventory_refresh_seconds",
        "histogram",
        "Inventory refresh latency, by host and mode (fast: on demand within the SLA; full: discovery).",
    );
    for stats in &live.refreshes {
        let labels = format!("host=\"{}\",mode=\"{}\"", esc(&stats.host), stats.mode);
        stats.latency.write(
            out,
            "hazel_inventory_refresh_seconds",
            &labels,
            &LATENCY_BUCKETS,
        );
    }
    header(
        out,
        "hazel_inventory_refresh_sla_misses_total",
        "counter",
        "Refreshes that did not refresh the snapshot within the host's SLA (fast) or budget (full): timed out, refused by the breaker or failed; decisions then used the last snapshot.",
    );
    for stats in &live.refreshes {
        let _ = writeln!(
            out,
            "hazel_inventory_refresh_sla_misses_total{{host=\"{}\",mode=\"{}\"}} {}",
            esc(&stats.host),
            stats.mode,
            stats.sla_misses
        );
    }
    header(
        out,
        "hazel_ups_status",
        "gauge",
        "Each UPS's states as last read: 1 for each state it is in (on_battery, on_mains, low_battery, ...), absent otherwise.",
    );
    for ups in &live.ups {
        let states = ups.state.into_iter().chain(ups.conditions.iter().copied());
        for state in states {
            let _ = writeln!(
                out,
                "hazel_ups_status{{ups=\"{}\",state=\"{}\"}} 1",
                esc(&ups.subject_id),
                state.as_str()
            );
        }
    }
    for (name, help, value) in [
        (
            "hazel_ups_battery_charge_percent",
            "Battery charge (battery.charge), percent.",
            (|u: &crate::engine::conditions::UpsFacts| u.charge_pct)
                as fn(&crate::engine::conditions::UpsFacts) -> Option<f64>,
        ),
        (
            "hazel_ups_battery_runtime_seconds",
            "Battery runtime left (battery.runtime), seconds.",
            |u| u.runtime_minutes.map(|m| m * 60.0),
        ),
        (
            "hazel_ups_load_percent",
            "Load (ups.load), percent of capacity.",
            |u| u.load,
        ),
    ] {
        header(out, name, "gauge", help);
        for ups in &live.ups {
            if let Some(v) = value(ups) {
                let _ = writeln!(out, "{name}{{ups=\"{}\"}} {v}", esc(&ups.subject_id));
            }
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, quote, newline).
fn esc(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_writes_every_family_with_help_and_type() {
        let m = Metrics::default();
        m.event("ups.state", false);
        m.decision("engine.scheduled");
        m.action("ok");
        m.set_queues([("pve1".to_string(), 2)], 1);
        m.driver_latency("proxmox.ve", "execute", Duration::from_millis(30));
        m.http("/api/policies", 201);
        m.host_reachable("pve1", true);
        m.host_reachable("sw1", true);
        m.host_reachable("sw1", false);
        let text = m.render();
        for needle in [
            "# TYPE hazel_events_total counter",
            "hazel_events_total{kind=\"ups.state\",mode=\"live\"} 1",
            "hazel_decisions_total{code=\"engine.scheduled\"} 1",
            "hazel_actions_total{outcome=\"ok\"} 1",
            "hazel_queue_depth{host=\"pve1\"} 2",
            "hazel_actions_running 1",
            "hazel_driver_latency_seconds_bucket{plugin=\"proxmox.ve\",op=\"execute\",le=\"0.05\"} 1",
            "hazel_driver_latency_seconds_bucket{plugin=\"proxmox.ve\",op=\"execute\",le=\"0.025\"} 0",
            "hazel_driver_latency_seconds_count{plugin=\"proxmox.ve\",op=\"execute\"} 1",
            "hazel_http_requests_total{route=\"/api/policies\",status=\"201\"} 1",
            "# TYPE hazel_host_reachable gauge",
            "hazel_host_reachable{host=\"pve1\"} 1",
            "hazel_host_reachable{host=\"sw1\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn live_families_show_breakers_refreshes_and_each_ups() {
        use crate::engine::conditions::UpsFacts;
        use crate::spec::UpsState;
        use drivers::breaker::BreakerState;
        let m = Metrics::default();
        m.compiled(Duration::from_micros(700), ["blocker", "warn", "blocker"]);
        m.set_retries_scheduled(3);
        let mut latency = Histogram::default();
        latency.observe(Duration::from_millis(40));
        let mut ups = UpsFacts::new("ups1@nas:3493");
        ups.state = Some(UpsState::OnBattery);
        ups.conditions = vec![UpsState::LowBattery];
        ups.charge_pct = Some(35.0);
        ups.runtime_minutes = Some(4.5);
        let live = Live {
            breakers: vec![("sw1".into(), BreakerState::Open)],
            refreshes: vec![RefreshStats {
                host: "pve1".into(),
                mode: "fast",
                latency,
                sla_misses: 2,
            }],
            ups: vec![ups],
        };
        let text = m.render_with(&live);
        for needle in [
            "hazel_compile_seconds_bucket{le=\"0.0005\"} 0",
            "hazel_compile_seconds_bucket{le=\"0.001\"} 1",
            "hazel_compile_seconds_count 1",
            "hazel_findings_total{severity=\"blocker\"} 2",
            "hazel_findings_total{severity=\"warn\"} 1",
            "hazel_retries_scheduled_total 3",
            "hazel_breaker_state{host=\"sw1\",state=\"open\"} 1",
            "hazel_breaker_state{host=\"sw1\",state=\"closed\"} 0",
            "hazel_inventory_refresh_seconds_bucket{host=\"pve1\",mode=\"fast\",le=\"0.05\"} 1",
            "hazel_inventory_refresh_seconds_count{host=\"pve1\",mode=\"fast\"} 1",
            "hazel_inventory_refresh_sla_misses_total{host=\"pve1\",mode=\"fast\"} 2",
            "hazel_ups_status{ups=\"ups1@nas:3493\",state=\"on_battery\"} 1",
            "hazel_ups_status{ups=\"ups1@nas:3493\",state=\"low_battery\"} 1",
            "hazel_ups_battery_charge_percent{ups=\"ups1@nas:3493\"} 35",
            "hazel_ups_battery_runtime_seconds{ups=\"ups1@nas:3493\"} 270",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert!(
            !text.contains("hazel_ups_load_percent{"),
            "a reading the UPS never gave is absent, not 0"
        );
    }

    /// Every family rendered, with one series of each live kind.
    fn all_families() -> Vec<String> {
        let m = Metrics::default();
        let live = Live {
            breakers: vec![("h".into(), drivers::breaker::BreakerState::Closed)],
            refreshes: vec![RefreshStats::default()],
            ups: vec![crate::engine::conditions::UpsFacts::new("u")],
        };
        m.render_with(&live)
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap_or("").to_string())
            .collect()
    }

    /// The `hazel_*` names in `text`, with a histogram's `_bucket`,
    /// `_sum` and `_count` suffixes taken off.
    fn names_in(text: &str) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        for (at, _) in text.match_indices("hazel_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            names.insert(family.to_string());
        }
        names
    }

    #[test]
    fn the_grafana_dashboard_charts_only_metrics_the_agent_renders() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../deploy/grafana-dashboard.json"))
                .expect("the dashboard is JSON");
        let families = all_families();
        let mut charted = std::collections::BTreeSet::new();
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                charted.extend(names_in(target["expr"].as_str().expect("an expr")));
            }
        }
        for name in &charted {
            assert!(
                families.contains(name),
                "the dashboard charts {name}, which /metrics does not render"
            );
        }
        for family in &families {
            assert!(
                charted.contains(family),
                "{family} is rendered but not on the dashboard"
            );
        }
    }

    #[test]
    fn docs_metrics_lists_every_family() {
        let docs = names_in(include_str!("../../../docs/metrics.md"));
        for family in all_families() {
            assert!(
                docs.contains(&family),
                "docs/metrics.md does not describe {family}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
