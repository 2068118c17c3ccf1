//! The whole loop end to end (issue 6 item 4), against real peers on
//! loopback: a real NUT `upsd` with the `dummy-ups` driver, a real OpenSSH
//! `sshd` (the NAS, whose power-off command is a harmless `touch`), and the
//! Proxmox API simulator; the agent is the real `hazel serve` binary, run as
//! a child process so the test can restart it and kill it with SIGKILL.
//!
//! The story: policies go in through the API; a battery blip shorter than
//! the `for` delay does nothing (the audit log shows the countdown started
//! and cancelled); a real outage stops the running low-tier VMs and powers
//! the NAS off; mains return and the inverse policy (ledger selector)
//! starts exactly the VMs that were stopped, while the one that was off
//! before stays off; a restart on mains fires nothing; a SIGKILL in the
//! middle of a run loses nothing and repeats nothing, and the interrupted
//! action is reconciled at the next start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::api::auth::{mint, JwtKey};
use agent::nut::testing::Upsd;
use agent::service::Role;
use drivers::proxmox::sim::{ProxmoxSim, SimConfig, SimGuest, SimKind, SimStatus};
use drivers::testing::sshd::Sshd;
use serde_json::{json, Value};

const JWT_KEY: &str = "e2e-test-key-0123456789abcdef0123456789";
const FOR_S: u64 = 3;

use hazel_tests::hazel_binary;

use drivers::testing::free_port;

/// The agent process and how to reach it.
struct Agent {
    child: Option<Child>,
    config: PathBuf,
    base: String,
    log: PathBuf,
    http: reqwest::Client,
    token: String,
}

impl Agent {
    fn start(config: &Path, port: u16, log: &Path) -> Agent {
        let key = JwtKey::from_bytes(JWT_KEY.as_bytes().to_vec()).unwrap();
        let token = mint(
            &key,
            "e2e",
            Role::Admin,
            Duration::from_secs(3600),
            chrono::Utc::now(),
        );
        let mut agent = Agent {
            child: None,
            config: config.to_path_buf(),
            base: format!("http://127.0.0.1:{port}"),
            log: log.to_path_buf(),
            http: reqwest::Client::new(),
            token,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(hazel_binary())
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("HAZEL_JWT_KEY", JWT_KEY)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("hazel serve starts");
        self.child = Some(child);
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "hazel serve did not become ready; its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no drain, no ledger flush.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: the graceful path.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("hazel serve did not stop on SIGTERM within 30 s");
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("X-Hazel-CSRF", "1");
        if let Some(body) = body {
            req = req.json(&body);
        }
        let answer = req.send().await.expect("agent answers");
        let status = answer.status().as_u16();
        let value = answer.json().await.unwrap_or(Value::Null);
        (status, value)
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, value) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert!(
            (200..300).contains(&status),
            "POST {path}: {status} {value}"
        );
        value
    }

    async fn get(&self, path: &str) -> Value {
        let (status, value) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {value}");
        value
    }

    async fn executions(&self, policy: &str) -> Vec<Value> {
        let value = self
            .get(&format!("/api/policies/{policy}/executions?limit=30"))
            .await;
        value
            .as_array()
            .cloned()
            .or_else(|| value["items"].as_array().cloned())
            .unwrap_or_default()
    }

    async fn audit(&self, kind: &str) -> Vec<Value> {
        let value = self.get(&format!("/api/audit?kind={kind}&limit=200")).await;
        value["items"].as_array().cloned().unwrap_or_default()
    }

    /// How many live `ups.state` events the agent has handled, from
    /// `/metrics`.
    async fn ups_state_events(&self) -> u64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix("hazel_events_total{kind=\"ups.state\",mode=\"live\"} "))
            .map_or(0, |n| n.trim().parse().expect("a count"))
    }
}

impl Agent {
    /// The `/metrics` text.
    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("agent answers")
            .text()
            .await
            .expect("metrics text")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 100 ms until it returns `Some`, failing after
/// `within` with the agent's log.
async fn eventually<T, F, Fut>(what: &str, within: Duration, agent: &Agent, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    hazel_tests::eventually(what, within, check, || async {
        format!("agent log:\n{}", agent.log_text())
    })
    .await
}

fn cluster() -> SimConfig {
    let vm = |id: u32, status, tier: &str| {
        SimGuest::new(id, SimKind::Qemu, "pve1", status)
            .named(&format!("vm-{id}"))
            .tagged(&[&format!("tier.{tier}")])
    };
    SimConfig {
        guests: vec![
            vm(101, SimStatus::Running, "low"),
            vm(102, SimStatus::Running, "low"),
            vm(103, SimStatus::Running, "low"),
            // Off before the outage: the inverse must leave it off.
            vm(104, SimStatus::Stopped, "low"),
            vm(105, SimStatus::Running, "high"),
        ],
        task_delay_ms: 100,
        ..SimConfig::default()
    }
}

fn write_config(
    dir: &Path,
    port: u16,
    sim: &ProxmoxSim,
    sshd: &Sshd,
    upsd: &Upsd,
    marker_dir: &Path,
) -> PathBuf {
    let nut = upsd.config();
    let config = json!({
        "listen": format!("127.0.0.1:{port}"),
        "data_dir": dir.join("data"),
        "shutdown_grace": "5s",
        "hosts": [
            {"id": "pve-01", "plugin": "proxmox.ve", "connection": sim.connection()},
            {"id": "nas-01", "plugin": "linux.ssh", "connection": {
                "host": sshd.host(),
                "port": sshd.port(),
                "username": sshd.user(),
                "private_key": sshd.client_key_path(),
                "host_key_fingerprint": sshd.host_key_fingerprint(),
                "services": [],
                "commands": {"poweroff": format!("touch {}/poweroff-called", marker_dir.display())},
            }},
        ],
        "nut": [{
            "host": nut.host,
            "port": nut.port,
            "ups": nut.ups,
            "poll_interval_ms": 200,
            "comm_lost_after_ms": 5000,
        }],
    });
    let path = dir.join("hazel.yaml");
    // JSON is YAML: the config file is written as JSON.
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    path
}

fn stop_low_tier() -> Value {
    json!({
        "version": 1,
        "name": "On battery: stop low-tier VMs",
        "priority": 20,
        "trigger_group": {"triggers": [{"type": "ups.state", "equals": "on_battery", "for": format!("{FOR_S}s")}]},
        "targets": {"host_id": "pve-01", "target_type": "vm",
                    "selector": {"mode": "query", "value": "labels.tier = low and status = running"}},
        "actions": [{"capability_id": "proxmox.vm", "verb": "shutdown", "params": {"grace_s": 5}}],
        "suppression_window": "1s",
        "idempotency_window": "1s",
    })
}

fn poweroff_nas() -> Value {
    json!({
        "version": 1,
        "name": "On battery: power off the NAS",
        "priority": 90,
        "trigger_group": {"triggers": [{"type": "ups.state", "equals": "on_battery", "for": format!("{FOR_S}s")}]},
        "targets": {"host_id": "nas-01", "target_type": "host", "selector": {"mode": "list", "value": "nas-01"}},
        "actions": [{"capability_id": "host.power", "verb": "poweroff", "params": {"delay_s": 0}}],
    })
}

fn vm_status(sim: &ProxmoxSim, id: u32) -> Option<SimStatus> {
    sim.status(id)
}

fn shutdown_posts(sim: &ProxmoxSim, id: u32) -> u64 {
    sim.request_count("POST", &format!("/nodes/pve1/qemu/{id}/status/shutdown"))
}

fn start_posts(sim: &ProxmoxSim, id: u32) -> u64 {
    sim.request_count("POST", &format!("/nodes/pve1/qemu/{id}/status/start"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_and_its_return_run_end_to_end_against_real_peers() {
    let dir = tempfile::tempdir().unwrap();
    let markers = tempfile::tempdir().unwrap();
    let sim = ProxmoxSim::start(cluster())
        .await
        .expect("the Proxmox simulator binds");
    let sshd = Sshd::start();
    let upsd = Upsd::builder().start();
    upsd.set_status("OL");
    upsd.wait_for_var("ups.status", "OL");
    let port = free_port();
    let config = write_config(dir.path(), port, &sim, &sshd, &upsd, markers.path());
    let mut agent = Agent::start(&config, port, &dir.path().join("hazel.log"));
    agent.wait_ready().await;

    // Policies in through the API; both enabled through the dry-run gate.
    let forward = agent.post("/api/policies", stop_low_tier()).await;
    let forward_id = forward["id"].as_str().unwrap().to_string();
    assert_eq!(forward["version_int"], 1);
    let nas = agent.post("/api/policies", poweroff_nas()).await;
    let nas_id = nas["id"].as_str().unwrap().to_string();
    for id in [&forward_id, &nas_id] {
        let enabled = agent
            .post(&format!("/api/policies/{id}/enable"), json!({}))
            .await;
        assert_eq!(enabled["status"], "enabled", "{enabled}");
    }
    // The inverse: generated, saved, enabled.
    let inverse = agent
        .post(&format!("/api/policies/{forward_id}/inverse"), json!({}))
        .await;
    assert_eq!(inverse["enabled"], false);
    assert_eq!(
        inverse["spec_inverse"]["targets"]["selector"]["mode"],
        "ledger"
    );
    let back = agent
        .post("/api/policies", inverse["spec_inverse"].clone())
        .await;
    let back_id = back["id"].as_str().unwrap().to_string();
    let enabled = agent
        .post(&format!("/api/policies/{back_id}/enable"), json!({}))
        .await;
    assert_eq!(enabled["status"], "enabled", "{enabled}");

    // A restart while on mains fires nothing.
    agent.stop();
    agent.spawn();
    agent.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in [&forward_id, &nas_id, &back_id] {
        assert!(agent.executions(id).await.is_empty(), "{id} ran on mains");
    }
    // What operators chart: the UPS as upsd reports it, the host's breaker.
    let metrics = agent.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("hazel_ups_status{ups=\"dummy@")
                && l.ends_with("state=\"on_mains\"} 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains("hazel_breaker_state{host=\"pve-01\",state=\"closed\"} 1"),
        "{metrics}"
    );

    // A blip shorter than `for`: the countdown starts and is cancelled.
    upsd.set_status("OB DISCHRG");
    eventually(
        "the countdown to start",
        Duration::from_secs(10),
        &agent,
        || async {
            let started = agent.audit("engine.countdown_started").await;
            (!started.is_empty()).then_some(())
        },
    )
    .await;
    upsd.set_status("OL");
    eventually(
        "the countdown to be cancelled",
        Duration::from_secs(10),
        &agent,
        || async {
            let cancelled = agent.audit("engine.countdown_cancelled").await;
            (!cancelled.is_empty()).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(FOR_S + 1)).await;
    assert!(
        agent.executions(&forward_id).await.is_empty(),
        "the blip fired"
    );
    assert!(agent.executions(&nas_id).await.is_empty(), "the blip fired");
    assert!(!markers.path().join("poweroff-called").exists());

    // The outage: after `for`, the running low-tier VMs stop and the NAS
    // powers off; the ledger shows both. Low battery comes on top during
    // the hold (`OB DISCHRG LB`): the UPS is still on battery, so the
    // countdowns keep running (they used to be cancelled, and nothing ran).
    let started = agent.audit("engine.countdown_started").await.len();
    let cancelled = agent.audit("engine.countdown_cancelled").await.len();
    upsd.set_status("OB DISCHRG");
    eventually(
        "the outage's countdowns to start",
        Duration::from_secs(10),
        &agent,
        || async {
            let now = agent.audit("engine.countdown_started").await.len();
            (now > started).then_some(())
        },
    )
    .await;
    let seen = agent.ups_state_events().await;
    upsd.set_status("OB DISCHRG LB");
    eventually(
        "the low-battery event",
        Duration::from_secs(10),
        &agent,
        || async { (agent.ups_state_events().await > seen).then_some(()) },
    )
    .await;
    assert!(
        agent.executions(&forward_id).await.is_empty(),
        "low battery arrived after the hold ran out: this step tests nothing"
    );
    let run = eventually(
        "the forward run in the ledger",
        Duration::from_secs(30),
        &agent,
        || async { agent.executions(&forward_id).await.into_iter().next() },
    )
    .await;
    assert_eq!(run["status"], "ok", "{run}");
    eventually(
        "the NAS power-off in the ledger",
        Duration::from_secs(30),
        &agent,
        || async { agent.executions(&nas_id).await.into_iter().next() },
    )
    .await;
    assert!(
        markers.path().join("poweroff-called").exists(),
        "the NAS power-off command ran"
    );
    assert_eq!(
        agent.audit("engine.countdown_cancelled").await.len(),
        cancelled,
        "low battery cancelled an on-battery hold"
    );
    for id in [101, 102, 103] {
        assert_eq!(vm_status(&sim, id), Some(SimStatus::Stopped), "vm {id}");
        assert_eq!(shutdown_posts(&sim, id), 1, "vm {id} shut down once");
    }
    assert_eq!(shutdown_posts(&sim, 104), 0, "vm 104 was already off");
    assert_eq!(
        vm_status(&sim, 105),
        Some(SimStatus::Running),
        "high tier untouched"
    );

    // Mains return: the inverse starts exactly what was stopped.
    upsd.set_status("OL");
    let run = eventually(
        "the inverse run in the ledger",
        Duration::from_secs(30),
        &agent,
        || async { agent.executions(&back_id).await.into_iter().next() },
    )
    .await;
    assert_eq!(run["status"], "ok", "{run}");
    for id in [101, 102, 103] {
        assert_eq!(
            vm_status(&sim, id),
            Some(SimStatus::Running),
            "vm {id} started again"
        );
        assert_eq!(start_posts(&sim, id), 1, "vm {id} started once");
    }
    assert_eq!(
        vm_status(&sim, 104),
        Some(SimStatus::Stopped),
        "vm 104 stays off"
    );
    assert_eq!(start_posts(&sim, 104), 0);

    // SIGKILL in the middle of a run: slow shutdown tasks, a second outage,
    // kill while the driver waits for the tasks; then restart.
    let ledger_before = agent.executions(&forward_id).await.len();
    sim.set_task_delay(Duration::from_secs(6));
    upsd.set_status("OB DISCHRG");
    eventually(
        "a shutdown to reach the simulator",
        Duration::from_secs(30),
        &agent,
        || async {
            let posts: u64 = [101, 102, 103]
                .iter()
                .map(|id| shutdown_posts(&sim, *id))
                .sum();
            (posts > 3).then_some(())
        },
    )
    .await;
    agent.kill();
    let posts_at_kill: Vec<u64> = [101, 102, 103]
        .iter()
        .map(|id| shutdown_posts(&sim, *id))
        .collect();
    agent.spawn();
    agent.wait_ready().await;
    let interrupted = eventually(
        "the interrupted run in the ledger",
        Duration::from_secs(30),
        &agent,
        || async {
            agent
                .executions(&forward_id)
                .await
                .into_iter()
                .find(|r| r["status"] == "interrupted")
        },
    )
    .await;
    assert!(
        interrupted["results"]
            .as_array()
            .is_some_and(|r| r.iter().all(|x| x["code"] == "engine.interrupted")),
        "{interrupted}"
    );
    let reconciled = agent.audit("engine.interrupted").await;
    assert!(
        !reconciled.is_empty(),
        "the interrupted intent was reconciled"
    );
    // Nothing runs twice: the still-on-battery UPS is a baseline after the
    // restart, and the interrupted intent is read, never re-executed.
    tokio::time::sleep(Duration::from_secs(FOR_S + 2)).await;
    let posts_after: Vec<u64> = [101, 102, 103]
        .iter()
        .map(|id| shutdown_posts(&sim, *id))
        .collect();
    assert_eq!(
        posts_after, posts_at_kill,
        "a shutdown was sent again after the restart"
    );
    // Nothing recorded is lost: the earlier runs are still in the ledger.
    let ledger_after = agent.executions(&forward_id).await;
    assert!(ledger_after.len() > ledger_before, "{ledger_after:?}");
    assert!(!agent.executions(&back_id).await.is_empty());
    assert!(!agent.executions(&nas_id).await.is_empty());
    agent.stop();
    // The log went to a file: plain text a person (or grep) reads, the
    // policies by name, no colour codes and no Rust module paths.
    let log = agent.log_text();
    let coloured: Vec<&str> = log.lines().filter(|l| l.contains('\u{1b}')).collect();
    assert!(
        coloured.is_empty(),
        "ANSI codes in a log file: {coloured:?}"
    );
    assert!(!log.contains("agent::"), "module paths in the log");
    assert!(
        log.lines()
            .any(|l| l.contains("policy_run") && l.contains("policy=")),
        "no policy_run span naming its policy in:\n{log}"
    );
}

/// SPEC §1 and §6 "Outage lifecycle" against the real `hazel serve` and a
/// real upsd: a hold interrupted by a restart is not fired when the mains
/// returned while the agent was down, and a start during an outage acts on
/// it (the first reading is judged against the state the store kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_the_hold_after_the_mains_returned_shuts_nothing_down_and_a_start_on_battery_acts(
) {
    let dir = tempfile::tempdir().unwrap();
    let markers = tempfile::tempdir().unwrap();
    let sim = ProxmoxSim::start(cluster())
        .await
        .expect("the Proxmox simulator binds");
    let sshd = Sshd::start();
    let upsd = Upsd::builder().start();
    upsd.set_status("OL");
    upsd.wait_for_var("ups.status", "OL");
    let port = free_port();
    let config = write_config(dir.path(), port, &sim, &sshd, &upsd, markers.path());
    let mut agent = Agent::start(&config, port, &dir.path().join("hazel.log"));
    agent.wait_ready().await;
    let forward = agent.post("/api/policies", stop_low_tier()).await;
    let forward_id = forward["id"].as_str().unwrap().to_string();
    let enabled = agent
        .post(&format!("/api/policies/{forward_id}/enable"), json!({}))
        .await;
    assert_eq!(enabled["status"], "enabled", "{enabled}");

    // On battery; SIGTERM during the hold; the mains return while the
    // agent is down, and the hold's deadline passes.
    upsd.set_status("OB DISCHRG");
    eventually(
        "the countdown to start",
        Duration::from_secs(10),
        &agent,
        || async {
            let started = agent.audit("engine.countdown_started").await;
            (!started.is_empty()).then_some(())
        },
    )
    .await;
    agent.stop();
    upsd.set_status("OL");
    upsd.wait_for_var("ups.status", "OL");
    tokio::time::sleep(Duration::from_secs(FOR_S + 1)).await;
    agent.spawn();
    agent.wait_ready().await;
    let cancelled = eventually(
        "the restored countdown to be cancelled by the first reading",
        Duration::from_secs(10),
        &agent,
        || async {
            agent
                .audit("engine.countdown_cancelled")
                .await
                .into_iter()
                .find(|e| e.to_string().contains("engine.countdown_not_confirmed"))
        },
    )
    .await;
    assert!(cancelled.to_string().contains(&forward_id), "{cancelled}");
    tokio::time::sleep(Duration::from_secs(FOR_S + 1)).await;
    assert!(
        agent.executions(&forward_id).await.is_empty(),
        "a shutdown ran on mains"
    );
    for id in [101, 102, 103] {
        assert_eq!(
            shutdown_posts(&sim, id),
            0,
            "vm {id} was shut down on mains"
        );
        assert_eq!(vm_status(&sim, id), Some(SimStatus::Running), "vm {id}");
    }

    // The agent starts while the UPS is already on battery: the first
    // reading is an outage the store did not know, so the hold starts and
    // the shutdown runs.
    agent.stop();
    upsd.set_status("OB DISCHRG");
    upsd.wait_for_var("ups.status", "OB DISCHRG");
    agent.spawn();
    agent.wait_ready().await;
    let run = eventually(
        "the forward run after a start during the outage",
        Duration::from_secs(30),
        &agent,
        || async { agent.executions(&forward_id).await.into_iter().next() },
    )
    .await;
    assert_eq!(run["status"], "ok", "{run}");
    for id in [101, 102, 103] {
        assert_eq!(vm_status(&sim, id), Some(SimStatus::Stopped), "vm {id}");
        assert_eq!(shutdown_posts(&sim, id), 1, "vm {id} shut down once");
    }
    agent.stop();
}

/// The targets of `policy`'s restore set (`GET /api/policies/:id/restore-set`).
async fn restore_set(agent: &Agent, policy: &str) -> Vec<String> {
    let set = agent
        .get(&format!("/api/policies/{policy}/restore-set"))
        .await;
    let mut targets: Vec<String> = set
        .as_array()
        .unwrap_or_else(|| panic!("a restore set is a list: {set}"))
        .iter()
        .filter_map(|e| e["target"].as_str().map(str::to_string))
        .collect();
    targets.sort();
    targets
}

/// SPEC §6 "Outage lifecycle" (restore set, reconciliation) against the
/// real `hazel serve`: SIGKILL while the shutdown tasks run, the tasks
/// finish while the agent is down, and at the next mains return the
/// generated inverse (ledger selector) starts exactly the VMs that were
/// stopped: never vm 104 (off before the outage) nor vm 105 (high tier).
///
/// The restart waits until the simulator's tasks have finished: a
/// reconciliation that reads a target whose task still runs records no
/// change (issue 13 item 9, landing separately).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_shutdown_then_the_mains_return_restores_exactly_the_stopped_vms() {
    let dir = tempfile::tempdir().unwrap();
    let markers = tempfile::tempdir().unwrap();
    let sim = ProxmoxSim::start(cluster())
        .await
        .expect("the Proxmox simulator binds");
    let sshd = Sshd::start();
    let upsd = Upsd::builder().start();
    upsd.set_status("OL");
    upsd.wait_for_var("ups.status", "OL");
    let port = free_port();
    let config = write_config(dir.path(), port, &sim, &sshd, &upsd, markers.path());
    let mut agent = Agent::start(&config, port, &dir.path().join("hazel.log"));
    agent.wait_ready().await;
    let forward = agent.post("/api/policies", stop_low_tier()).await;
    let forward_id = forward["id"].as_str().unwrap().to_string();
    let inverse = agent
        .post(&format!("/api/policies/{forward_id}/inverse"), json!({}))
        .await;
    assert_eq!(
        inverse["spec_inverse"]["targets"]["selector"]["mode"], "ledger",
        "{inverse}"
    );
    let back = agent
        .post("/api/policies", inverse["spec_inverse"].clone())
        .await;
    let back_id = back["id"].as_str().unwrap().to_string();
    for id in [&forward_id, &back_id] {
        let enabled = agent
            .post(&format!("/api/policies/{id}/enable"), json!({}))
            .await;
        assert_eq!(enabled["status"], "enabled", "{enabled}");
    }

    // The outage, with slow shutdown tasks; SIGKILL once all three
    // shutdowns reached Proxmox, while the driver waits for the tasks.
    sim.set_task_delay(Duration::from_secs(6));
    upsd.set_status("OB DISCHRG");
    eventually(
        "the three shutdowns to reach the simulator",
        Duration::from_secs(30),
        &agent,
        || async {
            let posts: u64 = [101, 102, 103]
                .iter()
                .map(|id| shutdown_posts(&sim, *id))
                .sum();
            (posts == 3).then_some(())
        },
    )
    .await;
    agent.kill();
    assert!(
        [101, 102, 103]
            .iter()
            .any(|id| vm_status(&sim, *id) == Some(SimStatus::Running)),
        "the kill came after the tasks finished: nothing was in flight"
    );
    // The tasks finish on the host while the agent is down.
    let deadline = Instant::now() + Duration::from_secs(30);
    while [101, 102, 103]
        .iter()
        .any(|id| vm_status(&sim, *id) != Some(SimStatus::Stopped))
    {
        assert!(
            Instant::now() < deadline,
            "the simulator's tasks never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sim.set_task_delay(Duration::from_millis(100));

    // Restart, still on battery: reconciliation finds the three stopped,
    // and they are the forward policy's restore set.
    agent.spawn();
    agent.wait_ready().await;
    let set = eventually(
        "the reconciled targets in the restore set",
        Duration::from_secs(30),
        &agent,
        || async {
            let set = restore_set(&agent, &forward_id).await;
            (set.len() == 3).then_some(set)
        },
    )
    .await;
    assert_eq!(set, ["vm:101", "vm:102", "vm:103"]);

    // Mains return: the inverse starts exactly those.
    upsd.set_status("OL");
    let run = eventually(
        "the inverse run in the ledger",
        Duration::from_secs(30),
        &agent,
        || async { agent.executions(&back_id).await.into_iter().next() },
    )
    .await;
    assert_eq!(run["status"], "ok", "{run}");
    for id in [101, 102, 103] {
        assert_eq!(vm_status(&sim, id), Some(SimStatus::Running), "vm {id}");
        assert_eq!(start_posts(&sim, id), 1, "vm {id} started once");
        assert_eq!(shutdown_posts(&sim, id), 1, "vm {id} shut down once");
    }
    assert_eq!(vm_status(&sim, 104), Some(SimStatus::Stopped), "vm 104");
    assert_eq!(
        start_posts(&sim, 104),
        0,
        "vm 104 was off before the outage"
    );
    assert_eq!(vm_status(&sim, 105), Some(SimStatus::Running), "vm 105");
    assert_eq!(start_posts(&sim, 105) + shutdown_posts(&sim, 105), 0);
    assert!(restore_set(&agent, &forward_id).await.is_empty());
    agent.stop();
}
