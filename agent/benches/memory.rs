//! Resident memory of the agent's in-memory state.
//!
//! Target (issue 4): agent memory with 10 000 policies and 100 000 targets
//! under 200 MB RSS.
//!
//! Builds what a running agent holds: the 10 000 compiled policies of the
//! `decide` bench loaded in an [`Engine`] on the in-memory store (trigger
//! index included), and an [`InventoryService`] seeded with 100 hosts ×
//! 1 000 VMs (names, status, two labels each) whose search indexes and query
//! columns are built, then reads `VmRSS` from `/proc/self/status`, prints it
//! with the step-by-step growth, and asserts the target. Not a criterion
//! bench: the figure is one reading, not a timing.

use std::sync::Arc;

use agent::engine::runner::{Engine, EngineConfig, Policy, Snapshots};
use agent::engine::store::MemoryStore;
use agent::inventory_service::{InventoryService, RefreshSettings};
use drivers::breaker::{BreakerConfig, Breakers};
use drivers::driver::Driver;
use inventory::selector::{parse_selector, SelectorMode};
use inventory::HostInventory;

mod common;

const HOSTS: usize = 100;
const VMS_PER_HOST: usize = 1_000;
/// The target, in bytes: 200 MB (decimal, the stricter reading).
const LIMIT: u64 = 200_000_000;

/// A `/proc/self/status` field in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// The engine reads host snapshots from the inventory service.
struct ServiceSnapshots(Arc<InventoryService>);

impl Snapshots for ServiceSnapshots {
    fn host(&self, host_id: &str) -> Option<HostInventory> {
        let snapshot = self.0.snapshot(host_id).ok().flatten()?;
        Some(HostInventory::clone(&snapshot))
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that names nothing else skips.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| !a.starts_with('-') && !"memory".contains(a.as_str()))
    {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let _guard = rt.enter();
    let base = status_bytes("VmRSS");

    let service = Arc::new(InventoryService::new());
    let mut engine = Engine::new(
        Arc::new(MemoryStore::default()),
        Arc::new(ServiceSnapshots(service.clone())),
        Arc::new(Breakers::new(BreakerConfig::default())),
        EngineConfig::default(),
    );
    for (id, ir) in common::compiled_policies() {
        engine
            .add_policy(Policy { id, ir })
            .expect("ids are unique");
    }
    let with_policies = status_bytes("VmRSS");

    for h in 0..HOSTS {
        let driver: Arc<dyn Driver> = Arc::new(common::InstantDriver::new(h));
        service.add_host(driver.clone(), RefreshSettings::default());
        engine.add_driver(driver);
        service
            .seed(common::host_snapshot(h, VMS_PER_HOST))
            .expect("the host is registered");
    }
    let targets: usize = service
        .host_ids()
        .iter()
        .map(|h| service.status(h).expect("registered").targets)
        .sum();
    assert_eq!(targets, HOSTS * VMS_PER_HOST);
    let with_inventory = status_bytes("VmRSS");

    // Build every host's search index and query columns.
    let hits = service.search("vm-5", usize::MAX).len();
    let query = parse_selector(
        SelectorMode::Query,
        "labels.tier = mid and status = running",
        "vm",
    )
    .expect("a valid query");
    let mut selected = 0;
    for h in service.host_ids() {
        selected += service
            .resolve(&h, &query)
            .expect("the host has a snapshot")
            .ids
            .len();
    }
    let rss = status_bytes("VmRSS");
    let peak = status_bytes("VmHWM");
    drop(engine);

    eprintln!(
        "memory: {} policies, {targets} targets on {HOSTS} hosts (search for \"vm-5\": {hits} hits; query: {selected} targets)",
        common::POLICIES
    );
    eprintln!(
        "memory: VmRSS {:.1} MiB = {:.1} MB (start {:.1}, + policies {:.1}, + inventory {:.1}, + search index and query columns {:.1} MiB); peak VmHWM {:.1} MiB; target < {:.0} MB",
        mib(rss),
        mb(rss),
        mib(base),
        mib(with_policies - base),
        mib(with_inventory - with_policies),
        mib(rss - with_inventory),
        mib(peak),
        mb(LIMIT)
    );
    assert!(
        rss < LIMIT,
        "VmRSS {:.1} MB is over the {:.0} MB target",
        mb(rss),
        mb(LIMIT)
    );
}
