//! One agent polling 100 UPSes across 10 upsd servers at the default 2 s
//! interval, without drift (issue 6). Target: every UPS's polls stay on
//! their schedule `first poll + k × 2 s` for the whole run (no accumulated
//! drift; jitter of a few ms at most), at low CPU.
//!
//! Ten real upsd instances would measure upsd; instead each "server" is a
//! small in-process fake upsd (tokio TCP on loopback) answering `LIST VAR`
//! for its ten UPSes and recording when each request arrived. The drift of
//! a poll is its arrival time minus its scheduled time (the UPS's first
//! poll plus a whole number of intervals). The fake servers run on their
//! own runtime thread; the CPU figure is the whole process (agent and fake
//! servers), so it bounds the agent's share from above.
//!
//! `HAZEL_BENCH_SECS` sets the run length (default 30 s) and
//! `HAZEL_BENCH_INTERVAL_MS` the poll interval (default 2000).
//! Run: `cargo bench -p hazel-agent --bench nut_poll`.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::engine::bus;
use agent::nut::NutConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const SERVERS: usize = 10;
const UPSES_PER_SERVER: usize = 10;

type Arrivals = Arc<Mutex<BTreeMap<String, Vec<Instant>>>>;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fake upsd: answers `LIST VAR <ups>` for any UPS name, `OK` to
/// `USERNAME`/`PASSWORD`, `OK Goodbye` to `LOGOUT`; records LIST VAR arrivals.
async fn fake_upsd(listener: TcpListener, arrivals: Arrivals) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let arrivals = Arc::clone(&arrivals);
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let at = Instant::now();
                let words: Vec<&str> = line.split_whitespace().collect();
                let reply = match words.as_slice() {
                    ["LIST", "VAR", ups] => {
                        arrivals
                            .lock()
                            .unwrap()
                            .entry(ups.to_string())
                            .or_default()
                            .push(at);
                        format!(
                            "BEGIN LIST VAR {ups}\n\
                             VAR {ups} battery.charge \"100\"\n\
                             VAR {ups} battery.runtime \"1800\"\n\
                             VAR {ups} input.voltage \"230.1\"\n\
                             VAR {ups} ups.load \"023.4\"\n\
                             VAR {ups} ups.status \"OL CHRG\"\n\
                             END LIST VAR {ups}\n"
                        )
                    }
                    ["LOGOUT"] => {
                        let _ = write.write_all(b"OK Goodbye\n").await;
                        return;
                    }
                    ["USERNAME", ..] | ["PASSWORD", ..] => "OK\n".to_string(),
                    _ => "ERR UNKNOWN-COMMAND\n".to_string(),
                };
                if write.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn cpu_seconds() -> f64 {
    // utime + stime in clock ticks (fields 14 and 15; USER_HZ is 100 on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After ")" the first field is the state (field 3), so field n is index n - 3.
    (ticks(14 - 3) + ticks(15 - 3)) / 100.0
}

fn main() {
    let secs = env_u64("HAZEL_BENCH_SECS", 30);
    let interval = Duration::from_millis(env_u64("HAZEL_BENCH_INTERVAL_MS", 2000));
    let arrivals: Arrivals = Arc::default();

    // The fake servers, on their own runtime thread.
    let (ports_tx, ports_rx) = std::sync::mpsc::channel();
    let server_arrivals = Arc::clone(&arrivals);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut ports = Vec::new();
            for _ in 0..SERVERS {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                ports.push(listener.local_addr().unwrap().port());
                tokio::spawn(fake_upsd(listener, Arc::clone(&server_arrivals)));
            }
            ports_tx.send(ports).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let ports = ports_rx.recv().unwrap();

    let configs: Vec<NutConfig> = ports
        .iter()
        .enumerate()
        .flat_map(|(s, &port)| {
            (0..UPSES_PER_SERVER).map(move |u| NutConfig {
                port,
                poll_interval_ms: interval.as_millis() as u64,
                ..NutConfig::new("127.0.0.1", format!("ups{s}x{u}"))
            })
        })
        .collect();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cpu_start = cpu_seconds();
    let wall_start = Instant::now();
    let published = rt.block_on(async {
        let (tx, mut rx) = bus::channel(NonZeroUsize::new(1024).unwrap(), "nut");
        let drain = tokio::spawn(async move {
            let mut n = 0u64;
            while rx.recv().await.is_some() {
                n += 1;
            }
            n
        });
        let sources = agent::nut::spawn(&configs, tx);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        sources.shutdown().await;
        drain.await.unwrap()
    });
    let wall = wall_start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;

    let arrivals = arrivals.lock().unwrap();
    let mut drifts_ms = Vec::new();
    let mut final_drift_ms: f64 = 0.0;
    let mut polls = 0usize;
    let mut skipped = 0usize;
    for times in arrivals.values() {
        let first = times[0];
        for (i, &t) in times.iter().enumerate() {
            let since = t.duration_since(first).as_secs_f64();
            let k = (since / interval.as_secs_f64()).round();
            if k as usize != i {
                skipped += 1;
            }
            let drift = (since - k * interval.as_secs_f64()) * 1000.0;
            drifts_ms.push(drift.abs());
            polls += 1;
        }
        if let Some(&last) = times.last() {
            let since = last.duration_since(first).as_secs_f64();
            let k = (since / interval.as_secs_f64()).round();
            final_drift_ms =
                final_drift_ms.max((since - k * interval.as_secs_f64()).abs() * 1000.0);
        }
    }
    drifts_ms.sort_by(|a, b| a.total_cmp(b));
    let p99 = drifts_ms[((drifts_ms.len() as f64 * 0.99) as usize).min(drifts_ms.len() - 1)];
    let max = drifts_ms.last().copied().unwrap_or(0.0);
    println!(
        "nut_poll: {} UPSes on {SERVERS} servers, interval {} ms, {secs} s",
        arrivals.len(),
        interval.as_millis()
    );
    println!("  polls: {polls} (skipped ticks: {skipped}), events published: {published}");
    println!("  poll-start drift vs schedule: p99 {p99:.2} ms, max {max:.2} ms, at the last poll ≤ {final_drift_ms:.2} ms");
    println!(
        "  CPU (agent + fake servers): {cpu:.2} s over {wall:.1} s wall = {:.2} % of one core",
        cpu / wall * 100.0
    );
    assert_eq!(
        arrivals.len(),
        SERVERS * UPSES_PER_SERVER,
        "every UPS was polled"
    );
    assert_eq!(skipped, 0, "no poll tick was skipped");
    assert!(
        max < interval.as_secs_f64() * 1000.0 * 0.1,
        "drift {max:.1} ms is over 10 % of the interval"
    );
}
