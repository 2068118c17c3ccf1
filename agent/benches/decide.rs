//! Event -> decided actions.
//!
//! Target (issue 4): 10 000 enabled policies spread over 200 (kind,
//! discriminator) keys: event -> decided actions (in-memory decision;
//! persistence off the hot path) >= 200 000 events/s on one core, p99 < 1 ms.
//!
//! Three figures. `decide/in_memory` is the decision the target is about:
//! facts updated from the event, the trigger index shortlist in run order,
//! every shortlisted policy's trigger evaluation and, for those that fired,
//! its conditions, through the same [`Decider`] the engine holds
//! ([`Decider::decide`]; explain text is rendered from the verdicts only
//! when a ledger entry is written, so not here). `decide/engine` is
//! the whole [`Engine::handle_event`] with the in-memory store and a driver
//! that answers at once: suppression, re-resolution, idempotency keys,
//! guards, intents and enqueueing of every matched policy (windows are 0 s,
//! so every match schedules). Executions are settled between timed events,
//! outside the measurement. `decide/engine_refresh` is the same with the
//! snapshots served by the inventory service and refreshed at fire time
//! (SPEC §6 step 5: one fast refresh per host of a policy that fired, per
//! event) from devices that answer at once: the difference between the two
//! is what the fire-time refresh costs besides the network round trip.
//!
//! The policies come from real spec JSON through `validate_text`; each
//! event of the stream (see `common::event_stream`) is an edge for the 50
//! policies on its key. Criterion reports the mean per event; the p99 is
//! measured in a separate loop that times every event on its own and is
//! printed to stderr.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use std::time::{Duration, Instant};
use uuid::Uuid;

use agent::engine::conditions::FactsSnapshot;
use agent::engine::decide::{ConditionMemo, Decided, Decider};
use agent::engine::event::Event;
use agent::engine::runner::{Engine, EngineConfig, Policy, Snapshots};
use agent::engine::store::MemoryStore;
use agent::engine::triggers::EventView;
use agent::inventory_service::{InventoryService, RefreshSettings};
use agent::ir::Ir;
use async_trait::async_trait;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use drivers::breaker::{BreakerConfig, Breakers};
use drivers::driver::{
    Action, ConnectionReport, Driver, DriverError, DryRunAnswer, ExecOutcome, RefreshMode,
};
use inventory::{Inventory, Target};

mod common;

/// Events timed one by one for the p99.
const P99_EVENTS: usize = 20_000;
/// Events through the whole engine (the in-memory store makes each one
/// slower than the last, see below).
const ENGINE_EVENTS: usize = 20;

/// The in-memory decision state the engine holds ([`Decider`]: index,
/// policies, trigger states, condition lists), the facts, and the buffers
/// reused from event to event.
struct InMemory {
    decider: Decider,
    targets: HashMap<Uuid, usize>,
    facts: FactsSnapshot,
    memo: ConditionMemo,
    decided: Vec<Decided>,
}

impl InMemory {
    fn new(compiled: &[(Uuid, Ir)]) -> InMemory {
        let mut decider = Decider::new();
        for (id, ir) in compiled {
            decider.insert(
                *id,
                ir.priority,
                &ir.match_.trigger_group,
                &ir.match_.conditions,
                &ir.targets.host_id,
            );
        }
        InMemory {
            decider,
            targets: compiled
                .iter()
                .map(|(id, ir)| (*id, ir.targets.resolved_ids.as_ref().map_or(0, Vec::len)))
                .collect(),
            facts: common::facts(),
            memo: ConditionMemo::default(),
            decided: Vec::new(),
        }
    }

    /// One event: facts, then steps 1–3. Returns how many policies matched.
    fn handle(&mut self, event: &Event) -> usize {
        self.facts.apply(event);
        self.decided.clear();
        let targets = &self.targets;
        let count = |id: Uuid| {
            targets
                .get(&id)
                .copied()
                .ok_or_else(|| format!("no policy {id}"))
        };
        self.decider.decide(
            &EventView::new(event),
            event.ts,
            &self.facts,
            &mut self.memo,
            &count,
            &mut self.decided,
        );
        self.decided.iter().filter(|d| d.matched()).count()
    }
}

/// Whether a bench id passes the command line's filter: the setup and p99
/// loops outside criterion follow the same filter as the criterion benches
/// (plain substring match on arguments naming `decide`).
fn wanted(id: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-') && a.contains("decide"))
        .collect();
    filters.is_empty() || filters.iter().any(|f| id.contains(f.as_str()))
}

/// The 99th percentile of `samples` (sorted in place).
fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[(samples.len() * 99).div_ceil(100) - 1]
}

fn report_p99(what: &str, samples: &mut [Duration]) {
    let total: Duration = samples.iter().sum();
    let mean = total / samples.len() as u32;
    let p50 = {
        samples.sort_unstable();
        samples[samples.len() / 2]
    };
    eprintln!(
        "{what}: {} events timed one by one: mean {mean:?} ({:.0} events/s), p50 {p50:?}, p99 {:?}, max {:?}",
        samples.len(),
        1.0 / mean.as_secs_f64(),
        p99(samples),
        samples[samples.len() - 1],
    );
}

fn bench_decide(c: &mut Criterion) {
    let compiled = common::compiled_policies();
    let stream = common::event_stream();

    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(1));

    // (a) the in-memory decision.
    if wanted("decide/in_memory") {
        in_memory(&mut group, "in_memory", &compiled, &stream);
    }
    // (a') the same with no two trigger groups equal: nothing shared.
    if wanted("decide/in_memory_distinct") {
        let distinct = common::compiled_policies_with(true);
        in_memory(&mut group, "in_memory_distinct", &distinct, &stream);
    }
    // (b) the whole engine, in-memory store, instant drivers.
    if wanted("decide/engine") {
        engine(&compiled, &stream, Snapshot::Held);
    }
    // (c) the same, the snapshots served by the inventory service with a
    // fire-time refresh per host and event (SPEC §6 step 5) whose device
    // answers at once: what the refresh adds besides the network.
    if wanted("decide/engine_refresh") {
        engine(&compiled, &stream, Snapshot::Refreshed);
    }
    group.finish();
}

fn in_memory(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    compiled: &[(Uuid, Ir)],
    stream: &[Event],
) {
    let mut decider = InMemory::new(compiled);
    assert_eq!(decider.decider.len(), common::POLICIES);
    // One pass to reach the steady state, and to check the stream is edges.
    let matched: usize = stream.iter().map(|e| decider.handle(e)).sum();
    eprintln!(
        "decide/{name}: {} policies over {} keys; one pass of {} events matched {matched} policies ({:.1} per event)",
        common::POLICIES,
        common::KEYS,
        stream.len(),
        matched as f64 / stream.len() as f64
    );
    assert!(
        matched >= stream.len() * 30,
        "the stream must fire policies"
    );
    let mut samples = Vec::with_capacity(P99_EVENTS);
    for event in stream.iter().cycle().take(P99_EVENTS) {
        let start = Instant::now();
        black_box(decider.handle(event));
        samples.push(start.elapsed());
    }
    report_p99(&format!("decide/{name}"), &mut samples);

    let mut next = stream.iter().cycle();
    group.bench_function(name, |b| {
        b.iter(|| decider.handle(next.next().expect("the stream cycles")))
    });
}

/// Where `decide/engine*` reads host snapshots.
#[derive(Clone, Copy, PartialEq)]
enum Snapshot {
    /// A fixed in-memory inventory, never refreshed (`decide/engine`).
    Held,
    /// The inventory service, refreshed at fire time from devices that
    /// answer at once (`decide/engine_refresh`).
    Refreshed,
}

/// An instant Proxmox host whose discovery finds [`common::host_snapshot`]'s
/// ten VMs at once (no network): the inventory service's in-memory path.
struct DiscoveringDriver {
    inner: common::InstantDriver,
    h: usize,
    /// Discoveries of every host, to report refreshes per event.
    discoveries: Arc<AtomicUsize>,
}

#[async_trait]
impl Driver for DiscoveringDriver {
    fn plugin_id(&self) -> &str {
        self.inner.plugin_id()
    }

    fn host_id(&self) -> &str {
        self.inner.host_id()
    }

    async fn discover(
        &self,
        _mode: RefreshMode,
        _budget: Duration,
    ) -> Result<Vec<Target>, DriverError> {
        self.discoveries.fetch_add(1, Ordering::Relaxed);
        Ok(common::host_snapshot(self.h, 10).into_targets())
    }

    async fn dry_run(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<DryRunAnswer>, DriverError> {
        self.inner.dry_run(action, targets).await
    }

    async fn execute(
        &self,
        action: &Action,
        targets: &[String],
    ) -> Result<Vec<ExecOutcome>, DriverError> {
        self.inner.execute(action, targets).await
    }

    async fn test_connection(&self) -> Result<ConnectionReport, DriverError> {
        self.inner.test_connection().await
    }
}

fn engine(compiled: &[(Uuid, Ir)], stream: &[Event], source: Snapshot) {
    let name = match source {
        Snapshot::Held => "decide/engine",
        Snapshot::Refreshed => "decide/engine_refresh",
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let discoveries = Arc::new(AtomicUsize::new(0));
    let mut engine = rt.block_on(async {
        let breakers = Arc::new(Breakers::new(BreakerConfig::default()));
        let drivers: Vec<Arc<dyn Driver>> = (0..common::HOSTS)
            .map(|h| {
                Arc::new(DiscoveringDriver {
                    inner: common::InstantDriver::new(h),
                    h,
                    discoveries: discoveries.clone(),
                }) as Arc<dyn Driver>
            })
            .collect();
        let snapshots: Arc<dyn Snapshots> = match source {
            Snapshot::Held => {
                let inventory: Inventory = (0..common::HOSTS)
                    .map(|h| common::host_snapshot(h, 10))
                    .collect();
                Arc::new(RwLock::new(inventory))
            }
            Snapshot::Refreshed => {
                let service = InventoryService::with_breakers(breakers.clone());
                for driver in &drivers {
                    service.add_host(driver.clone(), RefreshSettings::default());
                    service
                        .fast_refresh(driver.host_id())
                        .await
                        .expect("the host is registered");
                }
                // One refresh through the engine's seam, timed on its own.
                const ONE_BY_ONE: u32 = 1_000;
                let host = drivers[0].host_id().to_string();
                let start = Instant::now();
                for _ in 0..ONE_BY_ONE {
                    black_box(Snapshots::refresh(&service, &host, Duration::from_secs(5)).await);
                }
                eprintln!(
                    "{name}: one fire-time refresh of a 10-VM host (in memory): mean {:?}",
                    start.elapsed() / ONE_BY_ONE
                );
                Arc::new(service)
            }
        };
        let mut engine = Engine::new(
            Arc::new(MemoryStore::default()),
            snapshots,
            breakers,
            EngineConfig::default(),
        );
        for driver in drivers {
            engine.add_driver(driver);
        }
        for (id, ir) in compiled {
            engine
                .add_policy(Policy {
                    id: *id,
                    ir: ir.clone(),
                })
                .expect("ids are unique");
        }
        *engine.facts_mut() = common::facts();
        engine.start().await.expect("the engine starts");
        engine
    });
    let settle = |engine: &mut Engine| {
        rt.block_on(async {
            engine.settle().await.expect("runs settle");
        })
    };
    // Timed one by one; executions settle every 10 events, untimed. The
    // in-memory store's history grows with every run, so the figure is
    // given per 5 events, not as a criterion steady state.
    let mut scheduled = 0usize;
    let seeded = discoveries.load(Ordering::Relaxed);
    let mut samples = Vec::with_capacity(ENGINE_EVENTS);
    for (n, event) in stream.iter().cycle().take(ENGINE_EVENTS).enumerate() {
        let start = Instant::now();
        let report = rt
            .block_on(engine.handle_event(event))
            .expect("event handled");
        samples.push(start.elapsed());
        scheduled += report
            .decisions
            .iter()
            .filter(|d| d.code == "engine.scheduled")
            .count();
        if n % 10 == 9 {
            settle(&mut engine);
        }
    }
    settle(&mut engine);
    let refreshes = discoveries.load(Ordering::Relaxed) - seeded;
    eprintln!(
        "{name}: {ENGINE_EVENTS} events scheduled {scheduled} policies' actions ({:.1} per event), {refreshes} host refreshes ({:.1} per event)",
        scheduled as f64 / ENGINE_EVENTS as f64,
        refreshes as f64 / ENGINE_EVENTS as f64
    );
    for (pass, chunk) in samples.chunks(5).enumerate() {
        let mean = chunk.iter().sum::<Duration>() / chunk.len() as u32;
        eprintln!(
            "{name}: events {}..{}: mean {mean:?} per event",
            pass * 5,
            pass * 5 + chunk.len()
        );
    }
    report_p99(name, &mut samples);
}

criterion_group!(benches, bench_decide);
criterion_main!(benches);
