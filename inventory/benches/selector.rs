//! Selector expansion and resolution at the size limit: a 100 000-target host,
//! a selector that expands to 100 000 ids, and a query over every target.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use inventory::selector::{parse_selector, SelectorMode};
use inventory::{HostInventory, Target};

const QUERY: &str = r#"labels.tier = low and status = running and name ~ "web-*""#;

fn host_with_100k_vms() -> HostInventory {
    let targets = (1..=100_000u32)
        .map(|n| Target {
            target_type: "vm".to_owned(),
            id: n.to_string(),
            name: Some(format!("{}-{n}", if n % 2 == 0 { "web" } else { "db" })),
            status: Some(if n % 5 == 0 { "stopped" } else { "running" }.to_owned()),
            labels: BTreeMap::from([
                (
                    "tier".to_owned(),
                    ["low", "mid", "high"][n as usize % 3].to_owned(),
                ),
                ("owner".to_owned(), "ops".to_owned()),
            ]),
            attrs: BTreeMap::from([("node".to_owned(), serde_json::json!("pve-a"))]),
        })
        .collect();
    HostInventory::new("pve-01", "proxmox.ve", targets)
}

fn selector(c: &mut Criterion) {
    let host = host_with_100k_vms();

    // Target: < 20 ms (parse, expand to 100 000 canonical ids, resolve against the host).
    c.bench_function("expand_and_resolve_1_to_100000_on_100k_host", |b| {
        b.iter(|| {
            let selector =
                parse_selector(SelectorMode::Range, black_box("1-100000"), "vm").unwrap();
            let expanded = selector.expand().unwrap().unwrap();
            let resolution = selector.resolve(&host).unwrap();
            assert_eq!(resolution.ids.len(), 100_000);
            black_box((expanded, resolution))
        })
    });

    // Target: < 10 ms (parse the query and evaluate it over 100 000 targets; the host's
    // columnar view is built once, by the first query, during warm-up).
    c.bench_function("query_over_100k_targets", |b| {
        b.iter(|| {
            let selector = parse_selector(SelectorMode::Query, black_box(QUERY), "vm").unwrap();
            let resolution = selector.resolve(&host).unwrap();
            assert!(!resolution.ids.is_empty());
            black_box(resolution)
        })
    });
}

criterion_group!(benches, selector);
criterion_main!(benches);
