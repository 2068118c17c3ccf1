//! Validate + compile throughput.
//!
//! Target (issue 2): validate + compile of the SPEC §2 example (JSON input)
//! against a 1 000-VM inventory at >= 100 000 specs/s on one core, i.e.
//! <= 10 µs per spec. A Python implementation of the same contract does about
//! 5 600/s on this machine.

use std::hint::black_box;

use agent::compile::CompileContext;
use agent::validate::validate_text;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use drivers::manifest::ManifestSet;
use inventory::index::{HostInventory, Inventory};
use inventory::model::Target;

fn inventory_with_1000_vms() -> Inventory {
    let targets = (1..=1000)
        .map(|id| Target {
            target_type: "vm".into(),
            id: id.to_string(),
            name: Some(format!("vm-{id}")),
            status: Some(if id % 3 == 0 { "stopped" } else { "running" }.into()),
            labels: [(
                "tier".to_string(),
                if id % 2 == 0 { "low" } else { "high" }.to_string(),
            )]
            .into(),
            attrs: Default::default(),
        })
        .collect();
    let mut inv = Inventory::new();
    inv.insert(HostInventory::new("pve-01", "proxmox.ve", targets));
    inv
}

fn bench_validate(c: &mut Criterion) {
    let spec = include_str!("../../examples/spec-section2.json");
    let manifests = ManifestSet::embedded();
    let inventory = inventory_with_1000_vms();
    let ctx = CompileContext {
        inventory: Some(&inventory),
        now: Some("2026-11-22T11:30:00Z".into()),
        ..CompileContext::default()
    };
    assert!(
        validate_text(spec, &manifests, &ctx).report.ok,
        "the SPEC §2 example must validate"
    );
    let mut group = c.benchmark_group("validate");
    group.throughput(Throughput::Elements(1));
    group.bench_function("spec_section2_json_against_1000_vms", |b| {
        b.iter(|| validate_text(black_box(spec), &manifests, &ctx))
    });
    group.finish();

    // Stage breakdown, to see where the time goes.
    let mut stages = c.benchmark_group("validate_stages");
    let arena = bumpalo::Bump::new();
    let doc = agent::spec::parse_document(spec, &arena).unwrap();
    let (parsed, _) = agent::spec::parse_spec_node(&doc);
    let parsed = parsed.unwrap();
    stages.bench_function("parse_document_json", |b| {
        b.iter_batched_ref(
            bumpalo::Bump::new,
            |arena| agent::spec::parse_document(black_box(spec), arena).map(|_| ()),
            criterion::BatchSize::SmallInput,
        )
    });
    stages.bench_function("parse_spec", |b| {
        b.iter(|| agent::spec::parse_spec_node(black_box(&doc)))
    });
    stages.bench_function("compile", |b| {
        b.iter_batched(
            || parsed.clone(),
            |spec| agent::compile::compile(spec, &manifests, &ctx),
            criterion::BatchSize::SmallInput,
        )
    });
    stages.bench_function("normalize_cron", |b| {
        b.iter(|| agent::spec::schedule::normalize_cron(black_box("0 1 * * 0")))
    });
    let ir = validate_text(spec, &manifests, &ctx).report.ir.unwrap();
    let canonical = agent::hash::canonical_text(&parsed, &ir.plan);
    stages.bench_function("canonical_text", |b| {
        b.iter(|| agent::hash::canonical_text(black_box(&parsed), &ir.plan))
    });
    stages.bench_function(format!("sha256_{}_bytes", canonical.len()), |b| {
        use sha2::Digest;
        b.iter(|| sha2::Sha256::digest(black_box(canonical.as_bytes())))
    });
    stages.finish();
}

criterion_group!(benches, bench_validate);
criterion_main!(benches);
