//! Scheduler makespan on a virtual (paused) clock.
//!
//! Target (issue 4): 10 000 actions over 1 000 hosts, global cap 64, fake
//! driver work of 20 ms per action on the paused clock: the makespan must be
//! within 5 % of the lower bound
//! max(ceil(10 000 / 64) × 20 ms, busiest host's serial time).
//! The bench asserts that target and prints the figure, then measures the
//! real (wall-clock) cost of scheduling the whole batch.

use std::hint::black_box;
use std::time::Duration;

use agent::engine::scheduler::{self, FnWork, Hooks, QueueItem, SchedulerConfig};
use criterion::{criterion_group, criterion_main, Criterion};
use tokio::time::Instant;
use uuid::Uuid;

const ACTIONS: usize = 10_000;
const HOSTS: usize = 1_000;
const CAP: usize = 64;
const WORK: Duration = Duration::from_millis(20);
/// The makespan may exceed the bound by at most this fraction.
const TARGET_SLACK: f64 = 0.05;

/// Host of each action: a fixed pseudo-random spread (LCG), optionally with
/// one hot host that gets `hot` of the actions.
fn host_of_each_action(hot: usize) -> Vec<usize> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    (0..ACTIONS)
        .map(|n| {
            if n % (ACTIONS / hot.max(1)) == 0 && hot > 0 {
                return 0;
            }
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            1 + (state >> 33) as usize % (HOSTS - 1)
        })
        .collect()
}

fn bound(hosts: &[usize]) -> Duration {
    let mut per_host = vec![0u32; HOSTS];
    for &h in hosts {
        per_host[h] += 1;
    }
    let busiest = per_host.iter().copied().max().unwrap_or(0);
    let waves = ACTIONS.div_ceil(CAP) as u32;
    (WORK * waves).max(WORK * busiest)
}

/// Enqueues every action and waits for every report; returns the makespan
/// on the virtual clock.
async fn makespan(hosts: &[usize]) -> Duration {
    let (handle, mut reports) = scheduler::spawn(
        SchedulerConfig {
            max_concurrent: CAP,
            semaphore: None,
        },
        Hooks::default(),
    );
    let t0 = Instant::now();
    for (n, &host) in hosts.iter().enumerate() {
        let work = FnWork(|| tokio::time::sleep(WORK));
        let item = QueueItem::new(Uuid::from_u128(n as u128), format!("host-{host}"), work);
        if handle.enqueue(item).await.is_err() {
            panic!("scheduler refused action {n}");
        }
    }
    for _ in 0..hosts.len() {
        reports.recv().await.expect("every action is reported");
    }
    let makespan = Instant::now() - t0;
    handle
        .shutdown(Instant::now())
        .await
        .expect("scheduler drains");
    makespan
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

fn bench_scheduler(c: &mut Criterion) {
    for (name, hot) in [("uniform", 0), ("one_hot_host_200", 200)] {
        let hosts = host_of_each_action(hot);
        let rt = runtime();
        let got = rt.block_on(makespan(&hosts));
        let bound = bound(&hosts);
        let ratio = got.as_secs_f64() / bound.as_secs_f64();
        println!(
            "scheduler/{name}: makespan {got:?} on the virtual clock, bound {bound:?}, \
             ratio {ratio:.4} (target <= {:.2})",
            1.0 + TARGET_SLACK
        );
        assert!(
            ratio <= 1.0 + TARGET_SLACK,
            "scheduler/{name}: makespan {got:?} is more than 5 % over the bound {bound:?}"
        );
        c.bench_function(
            &format!("scheduler/{name}/10k_actions_1k_hosts_cap64"),
            |b| b.iter(|| rt.block_on(makespan(black_box(&hosts)))),
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench_scheduler
}
criterion_main!(benches);
