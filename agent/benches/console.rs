//! Console render time: the policies page (`GET /policies`) with 1 000
//! stored policies, rendered on the server.
//!
//! Target (SPEC §11, the web console): **p95 under 20 ms**. Opens a real
//! `Service` (SQLite in a temp dir, a `proxmox.ve` host seeded with 1 000
//! VMs), stores 1 000 policies through the service (validated and compiled
//! as the API stores them), writes 5 ledger runs per policy into the
//! store, then times `console::render_policies_page`: every policy read
//! from the store page by page, each one's newest run from one
//! `last_run_headlines` query, the trigger summarised in words, the askama
//! template rendered to one HTML string (≈ 780 KiB). What the handler adds
//! (session lookup, the HTTP answer) is not counted. 20 warm-up renders,
//! then 200 timed one by one. Run: `cargo bench -p hazel-agent --bench
//! console`. Prints p50, p95, p99 and max; exits non-zero above the target.

use std::time::{Duration, Instant};

use agent::console::{render_policies_page, Viewer};
use agent::engine::store::{
    EngineStore, ResultRecord, RunEvent, RunRecord, RunStatus, SubjectRecord, Write,
};
use agent::service::{Actor, Role};
use inventory::model::Target;
use serde_json::json;

mod common;

const POLICIES: usize = 1_000;
const WARMUP: usize = 20;
const RUNS: usize = 200;
const TARGET_P95: Duration = Duration::from_millis(20);
/// Ledger runs stored per policy before timing.
const RUNS_PER_POLICY: usize = 5;

fn main() {
    // `cargo bench` passes `--bench`; this binary takes no options.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::bench_config(dir.path());
    let service = common::open_service(config.clone(), vms(1000)).await;
    let actor = Actor {
        subject: "bench".into(),
        role: Role::Admin,
        correlation_id: None,
    };
    let started = Instant::now();
    for i in 0..POLICIES {
        let spec = json!({
            "version": 1,
            "name": format!("Stop vm {} on battery", i + 1),
            "enabled": false,
            "trigger_group": {"triggers": [{"type": "ups.state", "equals": "on_battery",
                "ups": format!("ups{}", i % 10), "for": format!("{}m", 1 + i % 5)}]},
            "targets": {"host_id": "pve-01", "target_type": "vm",
                "selector": {"mode": "list", "value": format!("{}", 1 + i % 1000)}},
            "actions": [{"capability_id": "proxmox.vm", "verb": "shutdown", "params": {"grace_s": 5}}],
        });
        service
            .create_policy(&actor, &spec.to_string())
            .await
            .expect("the policy is stored");
    }
    eprintln!(
        "stored {POLICIES} policies in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // A ledger as a season of outages leaves it: RUNS_PER_POLICY runs for
    // every policy, written straight into the store while the service is
    // closed (one transaction), so each row's last-run lookup finds one.
    let ids: Vec<uuid::Uuid> = {
        let mut ids = Vec::new();
        let mut after = None;
        loop {
            let page = service.policies(after, 500).await.expect("policies");
            ids.extend(page.items.iter().map(|p| p.id));
            match page.next.as_deref().map(uuid::Uuid::parse_str) {
                Some(Ok(next)) => after = Some(next),
                _ => break,
            }
        }
        ids
    };
    service.shutdown().await;
    drop(service);
    {
        let store = agent::store::open_data_dir(dir.path(), &agent::store::SqliteConfig::default())
            .expect("the store opens");
        let writes: Vec<Write> = ids
            .iter()
            .flat_map(|id| (0..RUNS_PER_POLICY).map(move |n| Write::AppendRun(ledger_run(*id, n))))
            .collect();
        store.write(&writes).expect("the runs are stored");
    }
    let service = common::open_service(config, vms(1000)).await;
    let viewer = Viewer {
        user: "bench".into(),
        role: "admin",
        admin: true,
        operator: true,
    };
    let mut bytes = 0;
    for _ in 0..WARMUP {
        bytes = render_policies_page(&service, viewer.clone())
            .await
            .expect("renders")
            .len();
    }
    assert!(
        bytes > 100_000,
        "the page holds the 1 000 rows ({bytes} bytes)"
    );
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        let html = render_policies_page(&service, viewer.clone())
            .await
            .expect("renders");
        times.push(t.elapsed());
        std::hint::black_box(html);
    }
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).min(times.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "console/policies_page ({POLICIES} policies, {} KiB): p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {RUNS} renders",
        bytes / 1024,
        ms(at(0.50)),
        ms(at(0.95)),
        ms(at(0.99)),
        ms(at(1.0)),
    );
    service.shutdown().await;
    assert!(
        at(0.95) < TARGET_P95,
        "p95 {:.2} ms is above the {} ms target",
        ms(at(0.95)),
        TARGET_P95.as_millis()
    );
}

/// Run `n` of policy `id`: one VM shut down, a day apart.
fn ledger_run(id: uuid::Uuid, n: usize) -> RunRecord {
    let at = chrono::Utc::now() - chrono::Duration::days(i64::try_from(n).unwrap_or(0));
    let correlation_id = uuid::Uuid::new_v4();
    RunRecord {
        run_id: uuid::Uuid::new_v4(),
        policy_id: id,
        version_int: 1,
        event: RunEvent {
            kind: "ups.state".into(),
            subject: SubjectRecord {
                kind: "ups".into(),
                id: "ups1@127.0.0.1:3493".into(),
            },
            correlation_id,
        },
        started_at: at,
        finished_at: at + chrono::Duration::seconds(40),
        severity: inventory::Severity::Info,
        status: if n % 7 == 3 {
            RunStatus::Partial
        } else {
            RunStatus::Ok
        },
        results: vec![ResultRecord {
            action_index: 0,
            capability: "proxmox.vm".into(),
            verb: "shutdown".into(),
            host: "pve-01".into(),
            target: format!("vm:{}", 1 + n),
            ok: true,
            changed: true,
            severity: inventory::Severity::Info,
            code: None,
            reason: String::new(),
            evidence: json!({"task": "UPID:pve-01:0001"}),
            duration_ms: 38_000,
            result_state: Some("stopped".into()),
        }],
        explain: json!({"trigger": "ups.state on_battery held 2m", "conditions": []}),
    }
}

fn vms(n: u32) -> Vec<Target> {
    (1..=n)
        .map(|id| Target {
            target_type: "vm".into(),
            id: id.to_string(),
            name: Some(format!("vm-{id}")),
            status: Some("running".into()),
            labels: Default::default(),
            attrs: Default::default(),
        })
        .collect()
}
