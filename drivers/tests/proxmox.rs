//! The `proxmox.ve` driver against the Proxmox API simulator on loopback:
//! discovery, dry-run preconditions and previews, execution with task
//! polling and state read-back, Proxmox's quirks (already-running starts,
//! delayed 401s, 5xx texts, proxy errors), batching, the host's rate limit
//! and retry budget, secrecy and TLS pinning.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use drivers::driver::{Action, Driver, DryRunAnswer, ErrorKind, ExecOutcome, RefreshMode};
use drivers::manifest::{ManifestSet, RateLimit};
use drivers::proxmox::sim::{ProxmoxSim, SimChange, SimConfig, SimGuest, SimKind, SimStatus};
use drivers::proxmox::{ProxmoxConfig, ProxmoxDriver, Scheme};
use drivers::ratelimit::DeviceLimits;
use drivers::registry::{HostConfig, Registry, RegistryError};
use drivers::secret::Secret;
use inventory::Severity;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};

async fn start(config: SimConfig) -> ProxmoxSim {
    ProxmoxSim::start(config)
        .await
        .expect("the simulator binds a loopback port")
}

fn driver_for(sim: &ProxmoxSim) -> ProxmoxDriver {
    ProxmoxDriver::new("pve-01", sim.driver_config()).expect("the simulator's config is valid")
}

async fn demo() -> (ProxmoxSim, ProxmoxDriver) {
    let sim = start(SimConfig::demo()).await;
    let driver = driver_for(&sim);
    (sim, driver)
}

fn action(capability: &str, verb: &str, params: Value) -> Action {
    Action {
        capability: capability.into(),
        verb: verb.into(),
        params: params.as_object().cloned().unwrap_or_default(),
    }
}

fn shutdown() -> Action {
    action(
        "proxmox.vm",
        "shutdown",
        json!({"grace_s": 60, "force_after_grace": false}),
    )
}

fn targets(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn check<'a>(answer: &'a DryRunAnswer, name: &str) -> &'a drivers::driver::Precondition {
    answer
        .preconditions
        .iter()
        .find(|p| p.check == name)
        .unwrap_or_else(|| panic!("no {name} precondition in {:?}", answer.preconditions))
}

async fn dry_one(driver: &ProxmoxDriver, action: &Action, target: &str) -> DryRunAnswer {
    let mut answers = driver
        .dry_run(action, &targets(&[target]))
        .await
        .expect("dry-run answers");
    assert_eq!(answers.len(), 1);
    answers.remove(0)
}

async fn exec_one(driver: &ProxmoxDriver, action: &Action, target: &str) -> ExecOutcome {
    let mut outcomes = driver
        .execute(action, &targets(&[target]))
        .await
        .expect("execute answers");
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0)
}

#[tokio::test]
async fn fast_discovery_lists_guests_and_nodes_with_tags_as_labels_in_one_call() {
    let (sim, driver) = demo().await;
    let found = driver
        .discover(RefreshMode::Fast, Duration::from_secs(5))
        .await
        .unwrap();
    let by_id = |id: &str| {
        found
            .iter()
            .find(|t| t.canonical_id() == id)
            .unwrap_or_else(|| panic!("{id} not discovered"))
    };
    let app = by_id("vm:104");
    assert_eq!(app.name.as_deref(), Some("app04"));
    assert_eq!(app.status.as_deref(), Some("running"));
    assert_eq!(app.labels["tier"], "low");
    assert_eq!(app.attrs["node"], json!("pve1"));
    let web = by_id("vm:100");
    assert_eq!(web.labels["prod"], "true");
    assert_eq!(by_id("vm:106").attrs["lock"], json!("backup"));
    assert_eq!(by_id("vm:108").attrs["ha_managed"], json!(true));
    assert_eq!(by_id("vm:9000").attrs["template"], json!(true));
    let ct = by_id("ct:201");
    assert_eq!(ct.target_type, "ct");
    assert_eq!(ct.attrs["node"], json!("pve2"));
    assert_eq!(by_id("host:pve1").status.as_deref(), Some("online"));
    assert_eq!(by_id("host:pve2").target_type, "host");
    assert_eq!(
        sim.total_requests(),
        1,
        "fast discovery is one call: {:?}",
        sim.request_log()
    );
}

#[tokio::test]
async fn full_discovery_adds_live_lists_and_configs() {
    let (sim, driver) = demo().await;
    let found = driver
        .discover(RefreshMode::Full, Duration::from_secs(5))
        .await
        .unwrap();
    let app = found.iter().find(|t| t.canonical_id() == "vm:104").unwrap();
    assert_eq!(app.attrs["ostype"], json!("l26"));
    assert_eq!(app.attrs["onboot"], json!(true));
    assert_eq!(app.attrs["cpus"], json!(2));
    let pve1 = found
        .iter()
        .find(|t| t.canonical_id() == "host:pve1")
        .unwrap();
    assert_eq!(pve1.attrs["maxcpu"], json!(16));
    assert_eq!(sim.request_count("GET", "/nodes/pve1/qemu"), 1);
    assert_eq!(sim.request_count("GET", "/nodes/pve2/lxc"), 1);
    assert_eq!(sim.request_count("GET", "/nodes/pve1/qemu/104/config"), 1);
}

#[tokio::test]
async fn dry_run_of_a_shutdown_previews_the_exact_calls_and_checks_in_order() {
    let (sim, driver) = demo().await;
    let answer = dry_one(&driver, &shutdown(), "vm:104").await;
    assert!(answer.ok, "{answer:?}");
    assert_eq!(answer.severity, Severity::Info);
    assert_eq!(answer.idempotency_key, "pve-01/proxmox.vm:shutdown:vm:104");
    let names: Vec<&str> = answer
        .preconditions
        .iter()
        .map(|p| p.check.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "auth",
            "vm_exists",
            "vm_lock",
            "vm_state",
            "pending_tasks",
            "no_op"
        ]
    );
    assert!(
        answer.preconditions.iter().all(|p| p.ok),
        "{:?}",
        answer.preconditions
    );
    assert_eq!(
        check(&answer, "vm_state").details.as_ref().unwrap()["state"],
        json!("running")
    );
    assert_eq!(answer.plan.kind, "api");
    assert!(
        answer.plan.preview.contains(&json!({
            "method": "POST",
            "endpoint": "/nodes/pve1/qemu/104/status/shutdown",
            "body": {"timeout": 60}
        })),
        "{:#?}",
        answer.plan.preview
    );
    assert_eq!(
        answer.plan.preview[0],
        json!({"method": "GET", "endpoint": "/cluster/resources?type=vm"})
    );
    let effect = &answer.effects.per_target[0];
    assert_eq!(effect.id, "vm:104");
    assert_eq!(effect.from.as_deref(), Some("running"));
    assert_eq!(effect.to.as_deref(), Some("stopped"));
    assert_eq!(
        sim.request_count_prefix("/nodes/pve1/qemu/104/status/shutdown"),
        0,
        "a dry-run sends no POST"
    );
    assert_eq!(
        sim.request_count("GET", "/nodes/pve1/qemu/104/config"),
        0,
        "no lock shows anywhere, so the config is not read"
    );
    assert_eq!(sim.status(104), Some(SimStatus::Running));
}

#[tokio::test]
async fn dry_run_with_force_after_grace_previews_force_stop() {
    let (_sim, driver) = demo().await;
    let forced = action(
        "proxmox.vm",
        "shutdown",
        json!({"grace_s": 30, "force_after_grace": true}),
    );
    let answer = dry_one(&driver, &forced, "vm:104").await;
    assert!(answer.plan.preview.contains(&json!({
        "method": "POST",
        "endpoint": "/nodes/pve1/qemu/104/status/shutdown",
        "body": {"timeout": 30, "forceStop": 1}
    })));
}

#[tokio::test]
async fn dry_run_on_an_already_stopped_vm_is_an_info_no_op() {
    let (_sim, driver) = demo().await;
    let answer = dry_one(&driver, &shutdown(), "vm:105").await;
    assert!(answer.ok);
    assert_eq!(answer.severity, Severity::Info);
    assert_eq!(answer.effects.summary, "no change");
    let effect = &answer.effects.per_target[0];
    assert_eq!(effect.from.as_deref(), Some("stopped"));
    assert_eq!(effect.from, effect.to);
    assert_eq!(
        check(&answer, "no_op").details.as_ref().unwrap()["already_desired"],
        json!(true)
    );
    assert!(
        answer.plan.preview.iter().all(|c| c["method"] == "GET"),
        "a no-op sends nothing that changes state: {:?}",
        answer.plan.preview
    );
}

/// Runs on real time (as every test here that talks to the simulator over a
/// socket): under `tokio::time::pause` the runtime would jump to the next
/// timer whenever it waits for loopback IO.
#[tokio::test]
async fn a_rejected_token_is_an_auth_error_and_is_never_retried() {
    let sim = start(SimConfig {
        auth_fail_delay_ms: 3_000,
        ..SimConfig::demo()
    })
    .await;
    let mut cfg = sim.driver_config();
    cfg.token_secret = Secret::new("00000000-wrong-secret");
    let driver = ProxmoxDriver::new("pve-01", cfg).unwrap();
    let err = driver
        .dry_run(&shutdown(), &targets(&["vm:104"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::AuthError);
    assert_eq!(err.code(), "driver.auth_error");
    assert!(err.message.contains("Authentication failed!"), "{err}");
    assert_eq!(
        sim.request_count("GET", "/cluster/resources"),
        1,
        "auth errors are not retried"
    );
}

#[tokio::test]
async fn an_unreachable_host_is_a_network_error() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut cfg = ProxmoxConfig::new(
        "127.0.0.1",
        "pve1",
        "root@pam!hazel",
        Secret::new("s3cr3t-value"),
    );
    cfg.port = port;
    cfg.scheme = Scheme::Http;
    cfg.http.backoff_ms_start = 1;
    let driver = ProxmoxDriver::new("pve-01", cfg).unwrap();
    let err = driver
        .dry_run(&shutdown(), &targets(&["vm:104"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NetworkError, "{err}");
    let err = driver.test_connection().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NetworkError, "{err}");
}

/// Every answer takes 30 s and each attempt gives up after T = 250 ms; the
/// first backoff is 50 ms and the dry-run budget B = 850 ms. Attempt 1 ends
/// at ~250 ms; a retry needs 50 + 250 ms and would end at ~550 ms <= B, so it
/// runs; the next would need 100 + 250 ms more and end at ~900 ms > B, so it
/// never starts. A driver that retried without asking whether the retry fits
/// would start a third attempt (five with no deadline at all), one that never
/// retried would stop at 1. (Delays only push the second decision further
/// past B; the first has ~150 ms of slack.)
#[tokio::test]
async fn a_slow_host_gets_exactly_the_retries_that_fit_inside_the_budget() {
    let sim = start(SimConfig {
        latency_ms: 30_000,
        ..SimConfig::demo()
    })
    .await;
    let mut cfg = sim.driver_config();
    cfg.http.timeout_s = 0.25;
    cfg.http.retries = 4;
    cfg.http.backoff_ms_start = 50;
    cfg.http.backoff_ms_max = 2_000;
    cfg.dry_run_budget_s = 0.85;
    let driver = ProxmoxDriver::new("pve-01", cfg).unwrap();
    let err = driver
        .dry_run(&shutdown(), &targets(&["vm:104"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert_eq!(err.code(), "driver.timeout");
    assert_eq!(
        sim.request_count("GET", "/cluster/resources"),
        2,
        "the first attempt and the one retry that fits: {:?}",
        sim.request_log()
    );
    assert_eq!(sim.total_requests(), 2, "{:?}", sim.request_log());
}

/// The shipped `proxmox.ve` limits with some capabilities' `rate_limit` replaced.
fn limits_with(overrides: &[(&str, RateLimit)]) -> DeviceLimits {
    let mut manifest = drivers::manifest::shipped()
        .get("proxmox.ve")
        .expect("proxmox.ve is shipped")
        .clone();
    for (id, rate) in overrides {
        let cap = manifest
            .capabilities
            .iter_mut()
            .find(|c| c.id == *id)
            .unwrap_or_else(|| panic!("no capability {id}"));
        cap.rate_limit = Some(*rate);
    }
    DeviceLimits::from_manifest(&manifest)
}

/// Checks request arrival times against a token bucket of `rate` (governor's
/// GCRA): any `n` requests in a row span at least `(n - burst) / rps`. The
/// simulator stamps a request when it arrives, not when the driver's slot
/// was granted, so `slack` absorbs loopback jitter; nothing here bounds how
/// fast the calls went.
fn assert_paced(timeline: &[(Duration, String)], rate: RateLimit, slack: Duration) {
    let period = Duration::from_secs(1) / rate.rps;
    for i in 0..timeline.len() {
        for j in i + 1..timeline.len() {
            let calls = (j - i + 1) as u32;
            if calls <= rate.burst {
                continue;
            }
            let floor = period * (calls - rate.burst);
            let span = timeline[j].0 - timeline[i].0;
            assert!(
                span + slack >= floor,
                "{calls} requests ({} .. {}) came within {span:?}, the rate limit allows no less than {floor:?}: {timeline:#?}",
                timeline[i].1,
                timeline[j].1
            );
        }
    }
}

#[tokio::test]
async fn every_api_call_of_an_action_waits_for_the_capabilitys_rate_limit() {
    let sim = start(SimConfig::generated(2, 6)).await;
    let rate = RateLimit { rps: 5, burst: 2 };
    let driver = ProxmoxDriver::with_limits(
        "pve-01",
        sim.driver_config(),
        limits_with(&[("proxmox.vm", rate)]),
    )
    .unwrap();
    let ids: Vec<String> = (100..106).map(|id| format!("vm:{id}")).collect();
    let answers = driver.dry_run(&shutdown(), &ids).await.unwrap();
    assert!(answers.iter().all(|a| a.ok), "{answers:#?}");
    assert_eq!(
        sim.total_requests(),
        1 + 2 + 6,
        "resources, a task list per node, a state per VM: {:?}",
        sim.request_log()
    );
    // Execution's POST, task polls and read-back share the same bucket.
    let out = exec_one(&driver, &shutdown(), "vm:100").await;
    assert!(out.ok, "{out:?}");
    let timeline = sim.request_timeline();
    assert!(
        timeline
            .iter()
            .any(|(_, r)| r == "POST /nodes/pve1/qemu/100/status/shutdown"),
        "{timeline:?}"
    );
    assert_paced(&timeline, rate, Duration::from_millis(60));
}

#[tokio::test]
async fn connection_tests_take_the_hosts_strictest_rate_limit() {
    let (sim, _) = demo().await;
    let rate = RateLimit { rps: 5, burst: 1 };
    let driver = ProxmoxDriver::with_limits(
        "pve-01",
        sim.driver_config(),
        limits_with(&[("proxmox.node", rate)]),
    )
    .unwrap();
    for _ in 0..3 {
        assert!(driver.test_connection().await.unwrap().ok);
    }
    let timeline = sim.request_timeline();
    assert_eq!(timeline.len(), 3, "{timeline:?}");
    assert_paced(&timeline, rate, Duration::from_millis(60));
}

#[tokio::test]
async fn a_locked_vm_fails_the_lock_precondition() {
    let (sim, driver) = demo().await;
    let answer = dry_one(&driver, &shutdown(), "vm:106").await;
    assert!(!answer.ok);
    assert_eq!(answer.severity, Severity::Error);
    let lock = check(&answer, "vm_lock");
    assert!(!lock.ok);
    assert_eq!(lock.details.as_ref().unwrap()["lock"], json!("backup"));
    assert_eq!(lock.details.as_ref().unwrap()["source"], json!("config"));
    assert_eq!(answer.reason.as_deref(), Some("VM is locked (backup)"));
    assert_eq!(
        sim.request_count("GET", "/nodes/pve1/qemu/106/config"),
        1,
        "a lock shows, so the config decides"
    );
    assert!(answer
        .plan
        .preview
        .contains(&json!({"method": "GET", "endpoint": "/nodes/pve1/qemu/106/config"})));
}

#[tokio::test]
async fn a_lock_released_after_the_state_read_is_taken_from_the_config() {
    let (sim, driver) = demo().await;
    // The backup of VM 106 ends right after its state was read.
    let release = || {
        sim.after_request(
            "GET",
            "/nodes/pve1/qemu/106/status/current",
            SimChange::Lock(106, None),
        )
    };
    release();
    let answer = dry_one(&driver, &shutdown(), "vm:106").await;
    assert!(answer.ok, "{answer:#?}");
    let lock = check(&answer, "vm_lock");
    assert!(lock.ok);
    assert_eq!(
        lock.details.as_ref().unwrap(),
        &json!({"lock": null, "source": "config"})
    );
    sim.set_lock(106, Some("backup"));
    release();
    let out = exec_one(&driver, &shutdown(), "vm:106").await;
    assert!(out.ok, "{out:?}");
    assert_eq!(
        sim.request_count("POST", "/nodes/pve1/qemu/106/status/shutdown"),
        1
    );
    assert_eq!(sim.request_count("GET", "/nodes/pve1/qemu/106/config"), 2);
}

#[tokio::test]
async fn executing_on_a_locked_vm_reports_the_lock_and_sends_nothing() {
    let (sim, driver) = demo().await;
    let out = exec_one(&driver, &shutdown(), "vm:106").await;
    assert!(!out.ok);
    assert_eq!(out.code, "driver.validation_error");
    assert_eq!(out.evidence["lock"], json!("backup"));
    assert_eq!(out.evidence["lock_source"], json!("config"));
    assert_eq!(
        sim.request_count("POST", "/nodes/pve1/qemu/106/status/shutdown"),
        0
    );
}

#[tokio::test]
async fn a_task_running_on_the_vm_is_reported_as_pending() {
    let (sim, driver) = demo().await;
    let upid = sim.start_task(104, "vzdump", Duration::from_secs(600));
    let answer = dry_one(&driver, &shutdown(), "vm:104").await;
    let pending = check(&answer, "pending_tasks");
    assert!(!pending.ok);
    assert_eq!(pending.details.as_ref().unwrap()["running"], json!([upid]));
    assert_eq!(answer.severity, Severity::Warn);
    assert!(
        answer.reason.as_deref().unwrap().contains("vzdump"),
        "{:?}",
        answer.reason
    );
}

#[tokio::test]
async fn executing_a_shutdown_polls_the_task_and_reads_the_state_back() {
    let (sim, driver) = demo().await;
    let out = exec_one(&driver, &shutdown(), "vm:104").await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.severity, Severity::Info);
    assert_eq!(out.code, "driver.ok");
    assert_eq!(out.result_state.as_deref(), Some("stopped"));
    let upid = out.evidence["upid"].as_str().unwrap();
    assert!(
        upid.starts_with("UPID:pve1:") && upid.contains(":qmshutdown:104:"),
        "{upid}"
    );
    assert_eq!(out.evidence["exitstatus"], json!("OK"));
    assert_eq!(
        out.evidence["http_status"],
        json!(200),
        "the power POST's status"
    );
    assert_eq!(sim.status(104), Some(SimStatus::Stopped));
    assert_eq!(
        sim.request_count("POST", "/nodes/pve1/qemu/104/status/shutdown"),
        1
    );
    assert!(sim.request_count("GET", &format!("/nodes/pve1/tasks/{upid}/status")) >= 1);
    assert!(
        sim.request_log()
            .iter()
            .any(|r| r == "POST /nodes/pve1/qemu/104/status/shutdown"),
        "{:?}",
        sim.request_log()
    );
    let again = exec_one(&driver, &shutdown(), "vm:104").await;
    assert_eq!(
        again.code, "driver.already_desired",
        "execute is idempotent"
    );
}

#[tokio::test]
async fn a_refused_power_request_reports_its_http_status() {
    let (sim, driver) = demo().await;
    // VM 104 migrates after its state was read: the reset goes to its old
    // node, which refuses it at once (500, no task).
    sim.after_request(
        "GET",
        "/nodes/pve1/qemu/104/status/current",
        SimChange::Migrate(104, "pve2".into()),
    );
    let reset = action("proxmox.vm", "reset", json!({}));
    let out = exec_one(&driver, &reset, "vm:104").await;
    assert!(!out.ok, "{out:?}");
    assert_eq!(out.code, "driver.not_found");
    assert_eq!(out.evidence["http_status"], json!(500));
    assert!(out.evidence.get("upid").is_none(), "{out:?}");
}

#[tokio::test]
async fn starting_a_running_vm_is_a_no_op_not_a_failure() {
    let (sim, driver) = demo().await;
    let start = action("proxmox.vm", "start", json!({}));
    let out = exec_one(&driver, &start, "vm:104").await;
    assert!(out.ok);
    assert_eq!(out.code, "driver.already_desired");
    assert_eq!(out.result_state.as_deref(), Some("running"));
    assert_eq!(
        sim.request_count("POST", "/nodes/pve1/qemu/104/status/start"),
        0
    );
}

#[tokio::test]
async fn an_already_running_task_failure_after_a_race_counts_as_already_desired() {
    let (sim, driver) = demo().await;
    // Someone else starts VM 105 right after the driver read it as stopped.
    sim.after_request(
        "GET",
        "/nodes/pve2/qemu/105/status/current",
        SimChange::Status(105, SimStatus::Running),
    );
    let out = exec_one(&driver, &action("proxmox.vm", "start", json!({})), "vm:105").await;
    assert_eq!(out.evidence["exitstatus"], json!("VM 105 already running"));
    assert!(out.ok, "{out:?}");
    assert_eq!(out.severity, Severity::Info);
    assert_eq!(out.code, "driver.already_desired");
    assert_eq!(out.result_state.as_deref(), Some("running"));
}

#[tokio::test]
async fn a_failing_vm_task_is_an_error_with_the_exit_text_and_the_upid() {
    let (sim, driver) = demo().await;
    let out = exec_one(&driver, &action("proxmox.vm", "start", json!({})), "vm:107").await;
    assert!(!out.ok);
    assert_eq!(out.severity, Severity::Error);
    assert_eq!(
        out.reason.as_deref(),
        Some("start failed: QEMU exited with code 1")
    );
    let upid = out.evidence["upid"].as_str().unwrap();
    assert!(upid.starts_with("UPID:pve2:"), "{upid}");
    assert_eq!(out.code, "driver.server_error");
    assert_eq!(out.result_state.as_deref(), Some("stopped"));
    assert_eq!(sim.status(107), Some(SimStatus::Stopped));
}

#[tokio::test]
async fn an_ha_guest_restarted_by_the_cluster_is_reported_as_found_with_a_warning() {
    let (sim, driver) = demo().await;
    let stop = action(
        "proxmox.vm",
        "shutdown",
        json!({"grace_s": 60, "timeout_s": 1}),
    );
    let out = exec_one(&driver, &stop, "vm:108").await;
    assert!(out.ok, "the task itself succeeded: {out:?}");
    assert_eq!(out.severity, Severity::Warn);
    assert_eq!(out.code, "driver.state_not_reached");
    assert_eq!(out.result_state.as_deref(), Some("running"));
    assert!(
        out.reason.as_deref().unwrap().contains("HA-managed"),
        "{:?}",
        out.reason
    );
    assert!(out.evidence["upid"]
        .as_str()
        .unwrap()
        .contains(":hastop:108:"));
    assert_eq!(sim.status(108), Some(SimStatus::Running));
}

#[tokio::test]
async fn a_guest_is_addressed_on_the_node_it_currently_runs_on() {
    let (sim, driver) = demo().await;
    let start = action("proxmox.vm", "start", json!({}));
    let answer = dry_one(&driver, &start, "vm:105").await;
    assert!(answer
        .plan
        .preview
        .contains(&json!({"method": "POST", "endpoint": "/nodes/pve2/qemu/105/status/start"})));
    sim.migrate(105, "pve1");
    let answer = dry_one(&driver, &start, "vm:105").await;
    assert!(answer
        .plan
        .preview
        .contains(&json!({"method": "POST", "endpoint": "/nodes/pve1/qemu/105/status/start"})));
    let out = exec_one(&driver, &start, "vm:105").await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.evidence["node"], json!("pve1"));
    assert_eq!(
        sim.request_count("POST", "/nodes/pve1/qemu/105/status/start"),
        1
    );
    assert_eq!(sim.status(105), Some(SimStatus::Running));
}

#[tokio::test]
async fn a_guest_that_migrates_between_lookup_and_read_is_reported_not_found_from_the_reason_phrase(
) {
    let sim = start(SimConfig {
        error_message_field: false,
        ..SimConfig::demo()
    })
    .await;
    let driver = driver_for(&sim);
    sim.after_request(
        "GET",
        "/cluster/resources",
        SimChange::Migrate(104, "pve2".into()),
    );
    let answer = dry_one(&driver, &shutdown(), "vm:104").await;
    assert!(!answer.ok);
    let exists = check(&answer, "vm_exists");
    assert!(!exists.ok);
    let reason = answer.reason.unwrap();
    assert!(
        reason.contains("Configuration file 'nodes/pve1/qemu-server/104.conf' does not exist"),
        "{reason}"
    );
    assert!(reason.starts_with("not_found"), "{reason}");
}

#[tokio::test]
async fn a_guest_on_an_offline_node_reports_the_proxy_error_as_a_network_error() {
    let (sim, driver) = demo().await;
    sim.set_node_online("pve2", false);
    let answer = dry_one(&driver, &action("proxmox.vm", "start", json!({})), "vm:105").await;
    assert!(!answer.ok);
    let state = check(&answer, "vm_state");
    assert!(!state.ok);
    assert_eq!(
        state.details.as_ref().unwrap()["kind"],
        json!("network_error")
    );
    assert!(answer.reason.unwrap().contains("No route to host"));
}

#[tokio::test]
async fn dry_run_makes_one_resources_call_for_all_targets() {
    let sim = start(SimConfig::generated(3, 30)).await;
    let driver = driver_for(&sim);
    let ids: Vec<String> = (100..130).map(|id| format!("vm:{id}")).collect();
    let answers = driver.dry_run(&shutdown(), &ids).await.unwrap();
    assert_eq!(answers.len(), 30);
    assert!(answers.iter().all(|a| a.ok));
    assert_eq!(
        answers[7].effects.per_target[0].id, "vm:107",
        "answers come in target order"
    );
    assert_eq!(sim.request_count("GET", "/cluster/resources"), 1);
    // 30 guests are more than fit one status call each inside the SLA at
    // the capability's rate limit: the resource list is the batch.
    assert_eq!(
        sim.request_count_prefix("/nodes/"),
        3,
        "one task list per node, no status call per guest"
    );
    for node in ["pve1", "pve2", "pve3"] {
        assert_eq!(sim.request_count("GET", &format!("/nodes/{node}/tasks")), 1);
    }
}

#[tokio::test]
async fn a_dry_run_of_a_few_guests_reads_each_ones_exact_status() {
    let sim = start(SimConfig::generated(2, 6)).await;
    let driver = driver_for(&sim);
    let ids: Vec<String> = (100..106).map(|id| format!("vm:{id}")).collect();
    let answers = driver.dry_run(&shutdown(), &ids).await.unwrap();
    assert!(answers.iter().all(|a| a.ok));
    assert_eq!(
        sim.request_count_prefix("/nodes/"),
        6 + 2,
        "one status call per guest and one task list per node"
    );
}

#[tokio::test]
async fn a_missing_vm_fails_vm_exists_and_hints_when_the_id_is_a_container() {
    let (_sim, driver) = demo().await;
    let answers = driver
        .dry_run(&shutdown(), &targets(&["vm:999", "vm:201"]))
        .await
        .unwrap();
    assert!(!check(&answers[0], "vm_exists").ok);
    assert_eq!(answers[0].severity, Severity::Error);
    let hint = &check(&answers[1], "vm_exists").details.as_ref().unwrap()["hint"];
    assert_eq!(hint, &json!("vmid 201 is a container (ct:201)"));
}

#[tokio::test]
async fn targets_of_the_wrong_type_fail_the_whole_call_as_validation_errors() {
    let (_sim, driver) = demo().await;
    let err = driver
        .dry_run(&shutdown(), &targets(&["ct:201"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ValidationError);
    let reset_ct = action("proxmox.ct", "reset", json!({}));
    let err = driver
        .dry_run(&reset_ct, &targets(&["ct:201"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ValidationError);
}

#[tokio::test]
async fn containers_are_shut_down_through_the_lxc_endpoints() {
    let (sim, driver) = demo().await;
    let ct_shutdown = action("proxmox.ct", "shutdown", json!({"grace_s": 20}));
    let answer = dry_one(&driver, &ct_shutdown, "ct:201").await;
    assert!(answer.plan.preview.contains(&json!({
        "method": "POST", "endpoint": "/nodes/pve2/lxc/201/status/shutdown", "body": {"timeout": 20}
    })));
    let out = exec_one(&driver, &ct_shutdown, "ct:201").await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.result_state.as_deref(), Some("stopped"));
    assert!(out.evidence["upid"]
        .as_str()
        .unwrap()
        .contains(":vzshutdown:201:"));
    assert_eq!(sim.status(201), Some(SimStatus::Stopped));
}

#[tokio::test]
async fn a_paused_vm_needs_force_to_shut_down() {
    let (sim, driver) = demo().await;
    sim.set_status(104, SimStatus::Paused);
    let answer = dry_one(&driver, &shutdown(), "vm:104").await;
    assert!(!check(&answer, "vm_state").ok);
    assert_eq!(
        check(&answer, "vm_state").details.as_ref().unwrap()["state"],
        json!("paused")
    );
    let forced = action(
        "proxmox.vm",
        "shutdown",
        json!({"grace_s": 60, "force_after_grace": true}),
    );
    assert!(dry_one(&driver, &forced, "vm:104").await.ok);
    let resume = action("proxmox.vm", "resume", json!({}));
    let out = exec_one(&driver, &resume, "vm:104").await;
    assert_eq!(out.result_state.as_deref(), Some("running"), "{out:?}");
}

#[tokio::test]
async fn node_power_is_previewed_and_sent_to_the_named_node() {
    let (sim, driver) = demo().await;
    let off = action("proxmox.node", "shutdown", json!({}));
    let answer = dry_one(&driver, &off, "host:pve2").await;
    assert!(answer.ok);
    assert!(answer.plan.preview.contains(&json!({
        "method": "POST", "endpoint": "/nodes/pve2/status", "body": {"command": "shutdown"}
    })));
    assert_eq!(answer.effects.per_target[0].to.as_deref(), Some("offline"));
    let out = exec_one(&driver, &off, "host:pve2").await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.evidence["http_status"], json!(200));
    assert_eq!(sim.request_count("POST", "/nodes/pve2/status"), 1);
    let missing = dry_one(&driver, &off, "host:pve9").await;
    assert!(!check(&missing, "node_exists").ok);
}

#[tokio::test]
async fn the_connection_test_reports_the_api_version() {
    let (_sim, driver) = demo().await;
    let report = driver.test_connection().await.unwrap();
    assert!(report.ok);
    assert_eq!(report.details["version"], json!("8.2.4"));
    assert_eq!(report.details["release"], json!("8.2"));
}

#[tokio::test]
async fn the_token_secret_never_appears_in_answers_previews_errors_or_debug_output() {
    let secret = "9d1e7c44-very-secret-token-value";
    let sim = start(SimConfig {
        token_secret: secret.into(),
        ..SimConfig::demo()
    })
    .await;
    let cfg = sim.driver_config();
    assert_eq!(cfg.token_secret.expose(), secret);
    let driver = ProxmoxDriver::new("pve-01", cfg.clone()).unwrap();
    let mut seen: Vec<String> = vec![
        format!("{driver:?}"),
        format!("{cfg:?}"),
        serde_json::to_string(&cfg).unwrap(),
    ];
    let found = driver
        .discover(RefreshMode::Full, Duration::from_secs(5))
        .await
        .unwrap();
    seen.push(serde_json::to_string(&found).unwrap());
    let all = targets(&["vm:100", "vm:104", "vm:105", "vm:106", "vm:999"]);
    let answers = driver.dry_run(&shutdown(), &all).await.unwrap();
    seen.push(serde_json::to_string(&answers).unwrap());
    let outcomes = driver.execute(&shutdown(), &all).await.unwrap();
    seen.push(serde_json::to_string(&outcomes).unwrap());
    let failed = driver
        .execute(
            &action("proxmox.vm", "start", json!({})),
            &targets(&["vm:107"]),
        )
        .await
        .unwrap();
    seen.push(serde_json::to_string(&failed).unwrap());
    seen.push(serde_json::to_string(&driver.test_connection().await.unwrap()).unwrap());
    let mut wrong = cfg.clone();
    wrong.token_id = "root@pam!other".into();
    let rejected = ProxmoxDriver::new("pve-01", wrong).unwrap();
    let err = rejected.dry_run(&shutdown(), &all).await.unwrap_err();
    seen.push(format!("{err} {err:?}"));
    let mut closed = cfg;
    closed.port = 1;
    let err = ProxmoxDriver::new("pve-01", closed)
        .unwrap()
        .discover(RefreshMode::Fast, Duration::from_secs(1))
        .await
        .unwrap_err();
    seen.push(format!("{err} {err:?}"));
    seen.extend(sim.request_log());
    for text in &seen {
        assert!(!text.contains(secret), "secret leaked in {text}");
    }
}

/// A throwaway self-signed test certificate (P-256, CN=pve1.hazel.test,
/// valid until 2126) and its key, as a fresh Proxmox node would serve one.
const TEST_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIB3TCCAYOgAwIBAgIUHS4+vlM16IAklaU3ownN9coBapwwCgYIKoZIzj0EAwIw
NTEYMBYGA1UEAwwPcHZlMS5oYXplbC50ZXN0MRkwFwYDVQQKDBBQVkUgQ2x1c3Rl
ciBOb2RlMCAXDTI2MTEyMjA3NTI1MloYDzIxMjYxMDI5MDc1MjUyWjA1MRgwFgYD
VQQDDA9wdmUxLmhhemVsLnRlc3QxGTAXBgNVBAoMEFBWRSBDbHVzdGVyIE5vZGUw
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASfMEcy+ZryfewW1NgWmpeL74OxKsHE
0s7+RHFCl8CUG482U/ghGTYionugQNgpxiwdVTsDEzAxrF+j9dff61AKo28wbTAd
BgNVHQ4EFgQUzV9qAojhnXJRxLcIrcBL2EoifmAwHwYDVR0jBBgwFoAUzV9qAojh
nXJRxLcIrcBL2EoifmAwDwYDVR0TAQH/BAUwAwEB/zAaBgNVHREEEzARhwR/AAAB
gglsb2NhbGhvc3QwCgYIKoZIzj0EAwIDSAAwRQIgNWlqGOEwJBGzlbIr4KR6EfDd
GLzRJr7t9fVc41OiGTcCIQC8RNJ3oZRipyI0IoP0ygo2JWt6vQ16Pr+JrXOtlpRk
Yw==
-----END CERTIFICATE-----";

const TEST_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgQA2s/Q+sEaKErYAS
tcWRALrW1SOE5SbFgFFLM5fvFEahRANCAASfMEcy+ZryfewW1NgWmpeL74OxKsHE
0s7+RHFCl8CUG482U/ghGTYionugQNgpxiwdVTsDEzAxrF+j9dff61AK
-----END PRIVATE KEY-----";

fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("the test PEM is valid base64")
}

/// Terminates TLS with the test certificate and forwards the bytes to the
/// plain-HTTP simulator, like `pveproxy` in front of the API daemon.
async fn tls_front(backend: SocketAddr) -> SocketAddr {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(pem_der(TEST_CERT_PEM))],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pem_der(TEST_KEY_PEM))),
    )
    .expect("the test key matches the test certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut upstream) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    addr
}

fn tls_config(
    sim: &ProxmoxSim,
    front: SocketAddr,
    pin: Option<String>,
    verify: bool,
) -> ProxmoxConfig {
    let mut cfg = sim.driver_config();
    cfg.scheme = Scheme::Https;
    cfg.port = front.port();
    cfg.tls_fingerprint = pin;
    cfg.http.verify_tls = verify;
    cfg
}

#[tokio::test]
async fn a_pinned_self_signed_certificate_is_accepted_and_a_mismatch_is_a_tls_error() {
    let (sim, _) = demo().await;
    let front = tls_front(sim.addr()).await;
    let digest = Sha256::digest(pem_der(TEST_CERT_PEM));
    let colon_pin = digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");

    let pinned =
        ProxmoxDriver::new("pve-01", tls_config(&sim, front, Some(colon_pin), true)).unwrap();
    let report = pinned
        .test_connection()
        .await
        .expect("the pinned certificate is trusted");
    assert_eq!(report.details["version"], json!("8.2.4"));
    let plain_hex = ProxmoxDriver::new(
        "pve-01",
        tls_config(&sim, front, Some(hex::encode(digest)), true),
    )
    .unwrap();
    assert!(
        plain_hex
            .dry_run(&shutdown(), &targets(&["vm:104"]))
            .await
            .unwrap()[0]
            .ok
    );

    let other_pin = Some(hex::encode([0x5a_u8; 32]));
    let mismatch = ProxmoxDriver::new("pve-01", tls_config(&sim, front, other_pin, true)).unwrap();
    let err = mismatch.test_connection().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::TlsError, "{err}");
    assert!(err.message.contains("does not match the pinned"), "{err}");

    let unpinned = ProxmoxDriver::new("pve-01", tls_config(&sim, front, None, true)).unwrap();
    assert_eq!(
        unpinned.test_connection().await.unwrap_err().kind,
        ErrorKind::TlsError
    );
    let unverified = ProxmoxDriver::new("pve-01", tls_config(&sim, front, None, false)).unwrap();
    assert!(unverified.test_connection().await.unwrap().ok);
}

#[tokio::test]
async fn the_simulator_speaks_the_proxmox_envelope_and_error_shapes() {
    let sim = start(SimConfig {
        guests: vec![SimGuest::new(
            150,
            SimKind::Qemu,
            "pve1",
            SimStatus::Stopped,
        )],
        ..SimConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let auth = format!(
        "PVEAPIToken={}={}",
        sim.driver_config().token_id,
        drivers::proxmox::sim::DEMO_TOKEN_SECRET
    );
    let url = |p: &str| format!("{}{p}", sim.base_url());
    let ok = client
        .get(url("/version"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.headers()["server"], "pve-api-daemon/3.0");
    assert!(ok.json::<Value>().await.unwrap()["data"]["version"].is_string());
    let missing = client.get(url("/version")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(
        missing.text().await.unwrap(),
        "",
        "401 answers have an empty body"
    );
    let bad = client
        .post(url("/nodes/pve1/qemu/150/status/shutdown"))
        .header("Authorization", &auth)
        .form(&[("forceStop", "true")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(
        body["errors"]["forceStop"],
        json!("type check ('boolean') failed - got 'true'")
    );
    let not_running = client
        .post(url("/nodes/pve1/qemu/150/status/reset"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(not_running.status(), 500);
    assert_eq!(
        not_running.json::<Value>().await.unwrap()["message"],
        json!("VM 150 not running\n")
    );
}

#[test]
fn the_registry_builds_the_driver_from_a_host_config_and_the_manifest_defaults() {
    let manifests = ManifestSet::embedded();
    let host = |token_id: &str| -> HostConfig {
        serde_json::from_value(json!({
            "id": "pve-01",
            "plugin": "proxmox.ve",
            "connection": {
                "host": "pve.example", "node": "pve1",
                "token_id": token_id, "token_secret": "1b2c-registry-secret",
                "tls_fingerprint": "07:CC:65:3F:F9:96:7E:6C:B8:4C:DA:58:4E:E1:92:D9:D4:AC:88:8D:40:97:42:2E:AA:16:61:18:9D:53:DC:72"
            }
        }))
        .unwrap()
    };
    let (_, driver) = Registry::builtin()
        .driver_for(&manifests, &host("root@pam!hazel"))
        .expect("a valid proxmox host builds");
    assert_eq!(driver.plugin_id(), "proxmox.ve");
    assert_eq!(driver.host_id(), "pve-01");
    match Registry::builtin().driver_for(&manifests, &host("root@pam")) {
        Err(RegistryError::Driver { source, .. }) => {
            assert_eq!(source.kind, ErrorKind::ConfigError);
            assert!(source.message.contains("USER@REALM!TOKENNAME"), "{source}");
        }
        other => panic!(
            "a token id without a token name must be refused, got {:?}",
            other.map(|_| ())
        ),
    }
}

#[tokio::test]
async fn a_registry_built_driver_keys_its_answers_with_the_configured_manifest() {
    let sim = start(SimConfig::demo()).await;
    // A custom proxmox.ve whose proxmox.vm adds `grace_s` to its key: a
    // driver built from it must key its dry-run answers the same way the
    // engine does with the configured set, not with the shipped manifest.
    let text = drivers::manifest::EMBEDDED
        .iter()
        .find(|(file, _)| *file == "proxmox.ve.yaml")
        .map(|(_, text)| {
            text.replacen(
                "idempotency: { key_fields: [verb, target_id] }",
                "idempotency: { key_fields: [verb, target_id, grace_s] }",
                1,
            )
        })
        .expect("proxmox.ve is shipped");
    let mut sources: Vec<(&str, &str)> = drivers::manifest::EMBEDDED
        .iter()
        .copied()
        .filter(|(file, _)| *file != "proxmox.ve.yaml")
        .collect();
    sources.push(("proxmox.ve.yaml", &text));
    let manifests = ManifestSet::from_sources(sources).expect("the custom set loads");
    let host: HostConfig = serde_json::from_value(json!({
        "id": "pve-02",
        "plugin": "proxmox.ve",
        "connection": sim.connection(),
    }))
    .unwrap();
    let (_, driver) = Registry::builtin()
        .driver_for(&manifests, &host)
        .expect("the simulator's host builds");
    let answers = driver
        .dry_run(&shutdown(), &targets(&["vm:104"]))
        .await
        .expect("dry-run answers");
    assert_eq!(
        answers[0].idempotency_key,
        "pve-02/proxmox.vm:shutdown:vm:104:grace_s=60"
    );
    assert_eq!(
        answers[0].idempotency_key,
        drivers::driver::action_key(&manifests, "pve-02", &shutdown(), "vm:104")
    );
}

#[tokio::test]
async fn the_upid_of_a_power_task_is_reported_before_the_task_ends_and_can_be_read_later() {
    use drivers::task::{with_task_sink, TaskHandle, TaskSink, TaskStatus};
    let sim = start(SimConfig::demo()).await;
    sim.set_task_delay(Duration::from_millis(1500));
    let driver = Arc::new(driver_for(&sim));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<TaskHandle>();
    let sink: TaskSink = Arc::new(move |h: &TaskHandle| {
        let _ = tx.send(h.clone());
    });
    let running = {
        let driver = driver.clone();
        tokio::spawn(async move {
            let (action, ids) = (shutdown(), targets(&["vm:100"]));
            with_task_sink(sink, driver.execute(&action, &ids)).await
        })
    };
    let reported = rx.recv().await.expect("the UPID is reported");
    assert_eq!(reported.target, "vm:100");
    assert!(reported.handle.starts_with("UPID:pve1:"), "{reported:?}");
    assert!(!running.is_finished(), "reported while execute still waits");
    assert_eq!(sim.status(100), Some(SimStatus::Running));
    assert_eq!(
        driver.task_status(&reported).await.unwrap(),
        TaskStatus::Running
    );
    let outcomes = running.await.unwrap().unwrap();
    assert_eq!(outcomes[0].evidence["upid"], json!(reported.handle));
    assert_eq!(sim.status(100), Some(SimStatus::Stopped));
    assert_eq!(
        driver.task_status(&reported).await.unwrap(),
        TaskStatus::Succeeded { exit: "OK".into() }
    );
    let unknown = TaskHandle {
        target: "vm:100".into(),
        handle: "UPID:pve1:00000001:00000002:00000003:qmstop:100:root@pam:".into(),
    };
    assert_eq!(
        driver.task_status(&unknown).await.unwrap(),
        TaskStatus::Unknown
    );
}
