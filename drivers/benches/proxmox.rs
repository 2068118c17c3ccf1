//! Preflight at scale: a fast inventory refresh plus a dry-run of a shutdown
//! of 1 000 VMs spread over 20 Proxmox hosts (simulators on loopback, each a
//! two-node cluster of 50 VMs answering every call after 20 ms), all hosts
//! concurrently, as the engine does for a policy that spans them.
//!
//! Target: one whole round within the 5 s dry-run refresh SLA (SPEC §5,
//! §12); the setup asserts it for the first round and prints the figure.
//! Per host that is 1 discovery call, 1 `/cluster/resources`, 2 task lists
//! and 50 `status/current` reads, at most 8 in flight per host and paced by
//! the shipped manifest's `rate_limit` (`proxmox.vm`: 10 per second after a
//! burst of 20, so the 53 calls of a dry-run take at least 3.3 s: the rate
//! limit, not the simulators' latency, sets the figure). Every measured
//! round starts from fresh drivers (untimed setup), i.e. idle hosts with
//! full rate buckets, as a policy's preflight finds them; back to back on
//! the same drivers a round would be paced at the sustained 10 per second.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use drivers::driver::{Action, Driver, RefreshMode};
use drivers::proxmox::sim::{ProxmoxSim, SimConfig};
use drivers::proxmox::ProxmoxDriver;
use futures::future::join_all;
use serde_json::json;

const HOSTS: usize = 20;
const VMS_PER_HOST: usize = 50;
const LATENCY_MS: u64 = 20;
/// The refresh SLA the round must fit in.
const SLA: Duration = Duration::from_secs(5);

async fn round(drivers: &[ProxmoxDriver], action: &Action, targets: &[String]) {
    join_all(drivers.iter().map(|driver| async move {
        let inventory = driver
            .discover(RefreshMode::Fast, SLA)
            .await
            .expect("fast refresh");
        assert_eq!(inventory.len(), VMS_PER_HOST + 2, "50 VMs and 2 nodes");
        let answers = driver.dry_run(action, targets).await.expect("dry-run");
        assert_eq!(answers.len(), VMS_PER_HOST);
        assert!(answers.iter().all(|a| a.ok));
    }))
    .await;
}

/// One driver per simulated host, with the shipped limits and fresh buckets.
fn drivers_for(sims: &[ProxmoxSim]) -> Vec<ProxmoxDriver> {
    sims.iter()
        .enumerate()
        .map(|(i, sim)| {
            ProxmoxDriver::new(format!("pve-{i:02}"), sim.driver_config()).expect("driver")
        })
        .collect()
}

fn refresh_and_dry_run(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let sims = rt.block_on(async {
        let mut sims = Vec::new();
        for _ in 0..HOSTS {
            let sim = ProxmoxSim::start(SimConfig {
                latency_ms: LATENCY_MS,
                ..SimConfig::generated(2, VMS_PER_HOST)
            })
            .await
            .expect("simulator on loopback");
            sims.push(sim);
        }
        sims
    });
    let action = Action {
        capability: "proxmox.vm".into(),
        verb: "shutdown".into(),
        params: json!({"grace_s": 60, "force_after_grace": false})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    };
    let targets: Vec<String> = (0..VMS_PER_HOST)
        .map(|i| format!("vm:{}", 100 + i))
        .collect();

    let drivers = drivers_for(&sims);
    let started = Instant::now();
    rt.block_on(round(&drivers, &action, &targets));
    let first = started.elapsed();
    println!(
        "first round (cold connections): {:.0} ms for {} VMs on {HOSTS} hosts, SLA {} ms",
        first.as_secs_f64() * 1000.0,
        HOSTS * VMS_PER_HOST,
        SLA.as_millis()
    );
    assert!(
        first <= SLA,
        "a fast refresh and dry-run of {} VMs on {HOSTS} hosts took {first:?}, over the {SLA:?} SLA",
        HOSTS * VMS_PER_HOST
    );

    c.bench_function(
        "proxmox_fast_refresh_and_dry_run_1000_vms_20_hosts_20ms",
        |b| {
            b.iter_batched(
                || drivers_for(&sims),
                |drivers| rt.block_on(round(&drivers, &action, &targets)),
                BatchSize::PerIteration,
            )
        },
    );
}

criterion_group!(benches, refresh_and_dry_run);
criterion_main!(benches);
