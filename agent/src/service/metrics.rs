//! Counters and histograms for `/metrics`, rendered in the Prometheus text
//! format (version 0.0.4): events by kind, decisions by code, actions by
//! outcome, queue depths, driver latency, host reachability. Labelled series live in small
//! maps behind one mutex each; every update is a map lookup and an add, so
//! recording stays off the hot path's critical cost.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the driver latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

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
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
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
        let secs = elapsed.as_secs_f64();
        let mut map = lock(&self.latency);
        let h = map.entry((plugin.to_string(), op.to_string())).or_default();
        h.count += 1;
        h.sum += secs;
        for (bucket, bound) in h.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if secs <= bound {
                *bucket += 1;
            }
        }
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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
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
            for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "hazel_driver_latency_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "hazel_driver_latency_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "hazel_driver_latency_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "hazel_driver_latency_seconds_count{{{labels}}} {}",
                h.count
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
        out
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
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
