//! `hazel demo`: Hazel's main job on a fresh machine, with no external
//! service. It starts a Proxmox VE API simulator on loopback, opens the
//! [`Service`] on embedded defaults (SQLite in a temporary directory or
//! `--data-dir`), serves the HTTP API with a key made for the session, and
//! walks through validate -> save -> dry-run -> inverse -> enable -> a
//! simulated UPS going on battery -> the `for` countdown -> execution ->
//! mains return -> the inverse -> the ledger, printing each step in plain
//! sentences. Then it keeps the API running until Ctrl-C (or stops at once
//! with `--once`).
//!
//! Every fact the walkthrough claims is also checked ([`DemoReport::checks`]):
//! which VMs the outage stopped (read back from the simulator), which one
//! stayed off, that the inverse started exactly those. Waits poll with a
//! deadline; nothing depends on timing beyond the `for` delay itself.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;
use drivers::proxmox::sim::{ProxmoxSim, SimConfig, SimGuest, SimKind, SimStatus};
use drivers::registry::HostConfig;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::api::auth::{mint, JwtKey};
use crate::api::{self, ApiConfig};
use crate::service::{Actor, Config, OpenOptions, Role, Service, ServiceError};

/// The host id the simulator is registered as.
pub const HOST_ID: &str = "pve-01";
/// The simulated UPS's subject id (`<ups>@<server>`, SPEC §1).
pub const UPS_SUBJECT: &str = "demo-ups@localhost:3493";
/// The name of the outage policy.
pub const FORWARD_NAME: &str = "Demo: on battery, stop low-tier VMs";

/// How `hazel demo` runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop after the walkthrough instead of serving the API until Ctrl-C.
    pub once: bool,
    /// Keep the store here; a temporary directory (removed at exit) when `None`.
    pub data_dir: Option<PathBuf>,
    /// Where the API listens; a free loopback port when this one is taken.
    pub listen: SocketAddr,
    /// The outage policy's `for` delay (whole seconds, at least 1).
    pub for_delay: Duration,
    /// How long each wait for the engine may take beyond the `for` delay.
    pub wait_limit: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            once: false,
            data_dir: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            for_delay: Duration::from_secs(5),
            wait_limit: Duration::from_secs(30),
        }
    }
}

/// One fact the walkthrough checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoCheck {
    pub what: String,
    pub ok: bool,
}

/// What the walkthrough did and found.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// Every check passed.
    pub ok: bool,
    pub checks: Vec<DemoCheck>,
    /// The API's base URL (`http://127.0.0.1:8088`).
    pub url: String,
    /// An admin token for the session.
    pub token: String,
    /// The API could not bind `listen` and took a free port instead.
    pub fell_back: bool,
    pub forward_id: Option<Uuid>,
    pub inverse_id: Option<Uuid>,
    /// The transcript of the outage policy's dry-run (SPEC §5).
    pub dry_run: Value,
    /// The inverse as `POST /api/policies/:id/inverse` answers.
    pub inverse: Value,
    /// The low-tier VMs running before the outage (vmids).
    pub running_low_tier: Vec<u32>,
    /// The low-tier VMs already off before the outage.
    pub already_off: Vec<u32>,
    /// VMs the outage policy stopped (read back from the simulator).
    pub stopped: Vec<u32>,
    /// VMs the inverse started (read back from the simulator).
    pub started: Vec<u32>,
    /// The VMs off at the end.
    pub off_at_end: Vec<u32>,
    /// The ledgers of both policies, newest first.
    pub forward_ledger: Vec<Value>,
    pub inverse_ledger: Vec<Value>,
}

/// Why the demo could not run at all (a failed step is a failed check
/// instead, reported in [`DemoReport`]).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Writing the walkthrough failed.
    #[error("cannot write the walkthrough")]
    Output(#[source] std::io::Error),
    /// The Proxmox simulator could not bind a loopback port.
    #[error("cannot start the Proxmox simulator")]
    Simulator(#[source] std::io::Error),
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The service could not open or a step it needs failed.
    #[error("{step}: {source}")]
    Service {
        step: &'static str,
        #[source]
        source: ServiceError,
    },
    /// The API could not listen.
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The session's token key is unusable.
    #[error("token key: {0}")]
    Key(String),
}

fn service_error(step: &'static str) -> impl FnOnce(ServiceError) -> DemoError {
    move |source| DemoError::Service { step, source }
}

/// The simulated cluster: two high-tier VMs and three low-tier ones, one of
/// which was already stopped before the outage.
pub fn sim_config() -> SimConfig {
    let vm = |id, status, name: &str, tier: &str| {
        SimGuest::new(id, SimKind::Qemu, "pve1", status)
            .named(name)
            .tagged(&[tier])
    };
    SimConfig {
        nodes: vec!["pve1".into()],
        guests: vec![
            vm(100, SimStatus::Running, "web01", "tier.high"),
            vm(101, SimStatus::Running, "db01", "tier.high"),
            vm(104, SimStatus::Running, "app04", "tier.low"),
            vm(105, SimStatus::Stopped, "batch05", "tier.low"),
            vm(106, SimStatus::Running, "ci06", "tier.low"),
        ],
        ..SimConfig::default()
    }
}

/// The outage policy (example 02's shape with a short `for`).
pub fn forward_policy(for_delay: Duration) -> String {
    let secs = for_delay.as_secs().max(1);
    format!(
        r#"version: 1
name: "{FORWARD_NAME}"
enabled: false
priority: 20
trigger_group:
  triggers:
    - {{ type: ups.state, equals: on_battery, for: {secs}s }}
targets:
  host_id: {HOST_ID}
  target_type: vm
  selector: {{ mode: query, value: 'labels.tier = low' }}
actions:
  - capability_id: proxmox.vm
    verb: shutdown
    params: {{ grace_s: 30, force_after_grace: true }}
suppression_window: 30m
notes: "hazel demo: the UPS is on battery for {secs}s, so shed the low-tier VMs to stretch the runtime."
"#
    )
}

/// A data directory: the given one, or a fresh temporary one removed on drop.
struct DataDir {
    path: PathBuf,
    temporary: bool,
}

impl DataDir {
    fn open(given: Option<PathBuf>) -> Result<DataDir, DemoError> {
        let (path, temporary) = match given {
            Some(p) => (p, false),
            None => (
                std::env::temp_dir().join(format!("hazel-demo-{}", Uuid::new_v4().simple())),
                true,
            ),
        };
        std::fs::create_dir_all(&path).map_err(|source| DemoError::DataDir {
            path: path.clone(),
            source,
        })?;
        Ok(DataDir { path, temporary })
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Records checks while writing the walkthrough.
struct Walk<'a, W: Write> {
    out: &'a mut W,
    report: DemoReport,
    step: usize,
}

const STEPS: usize = 9;

impl<W: Write> Walk<'_, W> {
    fn line(&mut self, text: impl AsRef<str>) -> Result<(), DemoError> {
        writeln!(self.out, "{}", text.as_ref()).map_err(DemoError::Output)?;
        self.out.flush().map_err(DemoError::Output)
    }

    fn step(&mut self, title: &str) -> Result<(), DemoError> {
        self.step += 1;
        let n = self.step;
        self.line("")?;
        self.line(format!("[{n}/{STEPS}] {title}"))
    }

    fn say(&mut self, text: impl AsRef<str>) -> Result<(), DemoError> {
        self.line(format!("  {}", text.as_ref()))
    }

    fn check(&mut self, ok: bool, what: impl Into<String>) -> Result<bool, DemoError> {
        let what = what.into();
        self.line(format!("  {} {what}", if ok { "ok  " } else { "FAIL" }))?;
        self.report.checks.push(DemoCheck { what, ok });
        Ok(ok)
    }
}

/// The console account the demo makes when it keeps serving.
const DEMO_USER: &str = "demo";

/// Runs the demo, writing the walkthrough to `out`; see the module docs.
pub async fn run(options: DemoOptions, out: &mut impl Write) -> Result<DemoReport, DemoError> {
    let mut walk = Walk {
        out,
        report: DemoReport::default(),
        step: 0,
    };
    walk.line("Hazel demo: a power cut, end to end, on this machine only.")?;
    walk.line("Nothing here touches real hardware: the Proxmox cluster is a simulator on")?;
    walk.line("127.0.0.1 and the UPS is simulated (Hazel is handed the events a UPS would send).")?;

    // The world: simulator, store, service, API.
    let sim = ProxmoxSim::start(sim_config())
        .await
        .map_err(DemoError::Simulator)?;
    let data = DataDir::open(options.data_dir.clone())?;
    let mut config = Config {
        data_dir: data.path.clone(),
        hosts: vec![HostConfig {
            id: HOST_ID.into(),
            plugin: "proxmox.ve".into(),
            self_host: false,
            connection: sim.connection(),
        }],
        shutdown_grace: Duration::from_secs(5),
        ..Config::default()
    };
    // The demo needs no at-rest key: its host is declared, not stored.
    config.secrets.key_env = "HAZEL_DEMO_UNUSED_SECRET_KEY".into();
    config.auth.jwt_key_env = "HAZEL_DEMO_UNUSED_JWT_KEY".into();
    let service = Service::open(config, OpenOptions::default())
        .await
        .map_err(service_error("cannot open the service"))?;
    let key_text = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let jwt =
        JwtKey::from_bytes(key_text.into_bytes()).map_err(|e| DemoError::Key(e.to_string()))?;
    let token = mint(
        &jwt,
        "demo",
        Role::Admin,
        Duration::from_secs(24 * 3600),
        Utc::now(),
    );
    let (listener, fell_back) = match tokio::net::TcpListener::bind(options.listen).await {
        Ok(l) => (l, false),
        Err(first) => {
            let fallback = SocketAddr::new(options.listen.ip(), 0);
            match tokio::net::TcpListener::bind(fallback).await {
                Ok(l) => (l, true),
                Err(_) => {
                    return Err(DemoError::Listen {
                        addr: options.listen,
                        source: first,
                    })
                }
            }
        }
    };
    let addr = listener.local_addr().map_err(|source| DemoError::Listen {
        addr: options.listen,
        source,
    })?;
    let url = format!("http://{addr}");
    let router = api::router(service.clone(), ApiConfig::new(jwt));
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, router, async move {
        let _ = api_stopped.await;
    }));
    walk.report.url = url.clone();
    walk.report.token = token.clone();
    walk.report.fell_back = fell_back;
    if fell_back {
        walk.line(format!(
            "{} is taken, so the API listens on {url} instead.",
            options.listen
        ))?;
    }
    let actor = Actor {
        subject: "demo".into(),
        role: Role::Admin,
        correlation_id: None,
    };

    walkthrough(&mut walk, &service, &sim, &actor, &options, &data).await?;

    let mut report = std::mem::take(&mut walk.report);
    report.ok = !report.checks.is_empty() && report.checks.iter().all(|c| c.ok);
    let failed: Vec<&DemoCheck> = report.checks.iter().filter(|c| !c.ok).collect();
    walk.line("")?;
    if report.ok {
        walk.line(format!(
            "All {} checks passed: the outage stopped exactly the running low-tier VMs and mains return started exactly those again.",
            report.checks.len()
        ))?;
    } else {
        walk.line(format!(
            "{} of {} checks failed:",
            failed.len(),
            report.checks.len()
        ))?;
        for c in failed {
            walk.line(format!("  FAIL {}", c.what))?;
        }
    }
    walk.line("")?;
    walk.line("Real UPS: this demo simulated the UPS. To follow a real one, run Network UPS")?;
    walk.line("Tools (upsd) and add a `nut:` section to hazel.yaml; see docs/nut.md.")?;

    walk.line("")?;
    if options.once {
        // The agent stops with this run: a token and commands to try
        // against it would point at nothing.
        walk.line(
            "--once: stopping now. Run `hazel demo` without --once to keep the API up and try the CLI against it.",
        )?;
        let _ = stop_api.send(());
        let _ = server.await;
        service.shutdown().await;
        sim.shutdown().await;
        drop(data);
        return Ok(report);
    }
    // A console account for this run, so the walkthrough's policies,
    // ledger and a simulated outage can be seen in a browser at once.
    let password = Uuid::new_v4().simple().to_string()[..20].to_string();
    let console = crate::store::SqliteStore::open(
        data.path.join(crate::store::SqliteStore::DEFAULT_FILE_NAME),
    )
    .map_err(|e| e.to_string())
    .and_then(|store| {
        crate::service::users::add_user(&store, DEMO_USER, Role::Admin, &password, "demo")
            .map_err(|e| e.to_string())
    });
    match console {
        Ok(_) => walk.line(format!(
            "Web console: {url}/ - sign in as {DEMO_USER} with password {password} (this run only)"
        ))?,
        Err(e) => walk.line(format!(
            "Web console: no account could be made ({e}); add one with `hazel user add`."
        ))?,
    }
    walk.line(format!("The API is running at {url}"))?;
    walk.line(format!(
        "Admin token for this session (valid 24 h, this run only):\n  {token}"
    ))?;
    walk.line("Try, from another terminal:")?;
    let url_env = if url == crate::client::DEFAULT_URL {
        String::new()
    } else {
        format!("HAZEL_URL={url} ")
    };
    walk.line(format!("  export {url_env}HAZEL_TOKEN={token}"))?;
    walk.line("  hazel policy list")?;
    walk.line(format!("  hazel executions \"{FORWARD_NAME}\""))?;
    walk.line(format!("  hazel dry-run \"{FORWARD_NAME}\""))?;
    walk.line("  hazel hosts")?;
    walk.line(format!(
        "  echo '{}' | hazel simulate -",
        ups_event("on_battery")
    ))?;
    walk.line(format!("  curl -s {url}/api/openapi.json | head"))?;

    walk.line(format!(
        "  hazel explain \"{FORWARD_NAME}\"   # why it acted or did not"
    ))?;
    walk.line("  hazel audit --follow")?;
    walk.line("Press Ctrl-C to stop (the store is removed unless you passed --data-dir).")?;
    crate::serve::stop_signal().await;
    walk.line("Stopping: draining running actions, writing the ledger.")?;
    let _ = stop_api.send(());
    let _ = server.await;
    service.shutdown().await;
    sim.shutdown().await;
    drop(data);
    Ok(report)
}

fn ups_event(state: &str) -> Value {
    json!({
        "type": "ups",
        "kind": "ups.state",
        "subject": {"kind": "ups", "id": UPS_SUBJECT},
        "attrs": {"state": state},
    })
}

async fn walkthrough<W: Write>(
    walk: &mut Walk<'_, W>,
    service: &Service,
    sim: &ProxmoxSim,
    actor: &Actor,
    options: &DemoOptions,
    data: &DataDir,
) -> Result<(), DemoError> {
    let guests = sim_config().guests;
    let low: Vec<u32> = guests
        .iter()
        .filter(|g| g.tags.iter().any(|t| t == "tier.low"))
        .map(|g| g.vmid)
        .collect();
    let high: Vec<u32> = guests
        .iter()
        .filter(|g| !g.tags.iter().any(|t| t == "tier.low"))
        .map(|g| g.vmid)
        .collect();
    let running_low: Vec<u32> = low
        .iter()
        .copied()
        .filter(|id| sim.status(*id) == Some(SimStatus::Running))
        .collect();
    let off_low: Vec<u32> = low
        .iter()
        .copied()
        .filter(|id| sim.status(*id) == Some(SimStatus::Stopped))
        .collect();
    walk.report.running_low_tier = running_low.clone();
    walk.report.already_off = off_low.clone();

    // 1. The world.
    walk.step("The setup")?;
    walk.say(format!(
        "Store: SQLite in {}{}.",
        data.path.display(),
        if data.temporary {
            " (a temporary directory, removed at exit)"
        } else {
            ""
        }
    ))?;
    walk.say(format!(
        "Host {HOST_ID}: a simulated Proxmox VE cluster at {} (plugin proxmox.ve, scheme http).",
        sim.base_url()
    ))?;
    walk.say(format!("HTTP API: {}", walk.report.url))?;
    walk.say("Hazel asks the cluster what it runs (an inventory refresh):")?;
    let inventory = service
        .host_inventory(HOST_ID, true)
        .await
        .map_err(service_error("inventory refresh"))?;
    let targets: Vec<Value> = inventory["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["type"] == json!("vm"))
        .cloned()
        .collect();
    for t in &targets {
        let tier = t["labels"]["tier"].as_str().unwrap_or("-");
        walk.say(format!(
            "  vm:{:<5} {:<9} tier {:<5} {}",
            text(&t["id"]),
            text(&t["name"]),
            tier,
            text(&t["status"]),
        ))?;
    }
    walk.check(
        targets.len() == guests.len(),
        format!("Hazel sees the {} VMs of the cluster", guests.len()),
    )?;
    walk.say(format!(
        "{} was already off before the outage; keep an eye on it.",
        vms(&off_low)
    ))?;

    // 2. Validate.
    walk.step("Validate the outage policy")?;
    let spec = forward_policy(options.for_delay);
    walk.say("The policy, as an operator would write it:")?;
    for l in spec.lines() {
        walk.say(format!("  | {l}"))?;
    }
    let report = serde_json::to_value(service.validate(&spec)).unwrap_or(Value::Null);
    walk.say("Hazel checks the schema (fields, durations, trigger types), then compiles it")?;
    walk.say("against the Proxmox manifest (is `proxmox.vm shutdown` a real capability?) and")?;
    walk.say("the inventory (which VMs does the selector match right now?).")?;
    let issues = report["issues"].as_array().cloned().unwrap_or_default();
    if issues.is_empty() {
        walk.say("No findings.")?;
    }
    for i in &issues {
        walk.say(format!(
            "  {} {} at {}: {}",
            text(&i["severity"]),
            text(&i["code"]),
            text(&i["path"]),
            text(&i["message"])
        ))?;
    }
    walk.check(
        report["ok"] == json!(true),
        "the policy validates with no blocker",
    )?;

    // 3. Save.
    walk.step("Save it")?;
    let forward = match service.create_policy(actor, &spec).await {
        Ok(p) => p,
        Err(ServiceError::DuplicateHash { existing_id }) => {
            walk.say(format!(
                "This data dir already holds this policy ({existing_id}) from an earlier demo; replacing it."
            ))?;
            remove_earlier(service, actor, existing_id).await?;
            service
                .create_policy(actor, &spec)
                .await
                .map_err(service_error("save the policy"))?
        }
        Err(e) => return Err(service_error("save the policy")(e)),
    };
    let forward_id = forward.id;
    walk.report.forward_id = Some(forward_id);
    walk.say(format!("id {forward_id}"))?;
    walk.say(format!(
        "status {}, version {}, hash {}",
        forward.status, forward.version_int, forward.hash
    ))?;
    walk.say(
        "Saved disabled: it was written with `enabled: false`, and enabling runs a dry-run gate.",
    )?;
    walk.say(
        "The hash identifies the compiled policy; saving an identical one again is refused (409).",
    )?;
    walk.check(
        forward.status == "disabled" && forward.version_int == 1,
        "saved as version 1, disabled",
    )?;

    // 4. Dry-run.
    walk.step("Dry-run: what would happen if the power failed now?")?;
    let transcript = service
        .dry_run_policy(actor, forward_id)
        .await
        .map_err(service_error("dry-run"))?;
    let transcript = serde_json::to_value(&transcript).unwrap_or(Value::Null);
    walk.report.dry_run = transcript.clone();
    let used = &transcript["used_inventory"];
    walk.say(format!(
        "used_inventory.refreshed: {}, stale: {}, ts: {}",
        used["refreshed"],
        used["stale"],
        text(&used["ts"])
    ))?;
    walk.say("Hazel refreshed the host's inventory first, then asked the Proxmox driver to")?;
    walk.say("preflight the shutdown of every matched VM without changing anything:")?;
    let mut would_stop = Vec::new();
    let mut no_change = Vec::new();
    for action in transcript["actions"].as_array().into_iter().flatten() {
        for answer in action["answers"].as_array().into_iter().flatten() {
            let checks: Vec<String> = answer["preconditions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{} {}",
                        text(&p["check"]),
                        if p["ok"] == json!(true) {
                            "ok"
                        } else {
                            "failed"
                        }
                    )
                })
                .collect();
            for effect in answer["effects"]["per_target"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let id = text(&effect["id"]);
                let (from, to) = (text(&effect["from"]), text(&effect["to"]));
                let what = if from == to {
                    no_change.push(vmid(&id));
                    format!("already {to}: no change")
                } else {
                    would_stop.push(vmid(&id));
                    format!("{from} -> {to}")
                };
                walk.say(format!(
                    "  {:<8} {:<28} [{}] {}",
                    id,
                    what,
                    checks.join(", "),
                    text(&answer["severity"])
                ))?;
            }
        }
    }
    walk.say(format!(
        "Severity {}: nothing blocks this policy.",
        text(&transcript["severity"])
    ))?;
    walk.check(
        used["refreshed"] == json!(true),
        "the dry-run used a freshly refreshed inventory",
    )?;
    walk.check(
        sorted(would_stop) == running_low,
        format!("the dry-run would stop {}", vms(&running_low)),
    )?;
    walk.check(
        sorted(no_change) == off_low,
        format!("{} is already stopped: no change", vms(&off_low)),
    )?;

    // 5. Inverse.
    walk.step("Generate the inverse: what to do when the mains return")?;
    let inverse = service
        .inverse(forward_id)
        .await
        .map_err(service_error("inverse"))?;
    walk.report.inverse = inverse.clone();
    let inv_spec = inverse["spec_inverse"].clone();
    let inv_trigger = &inv_spec["trigger_group"]["triggers"][0];
    let inv_selector = &inv_spec["targets"]["selector"];
    walk.say(format!(
        "trigger: ups.state {} (flipped from on_battery)",
        text(&inv_trigger["equals"])
    ))?;
    walk.say(format!(
        "action: {} {} (the manifest says shutdown is undone by start)",
        text(&inv_spec["actions"][0]["capability_id"]),
        text(&inv_spec["actions"][0]["verb"])
    ))?;
    walk.say(format!(
        "targets: selector {{mode: {}, value: {}}}",
        text(&inv_selector["mode"]),
        text(&inv_selector["value"])
    ))?;
    walk.say("The ledger selector means: exactly the VMs the outage policy's latest run changed,")?;
    walk.say("so a VM that was already off before the outage is never started by mistake.")?;
    for need in inverse["needs_input"].as_array().into_iter().flatten() {
        walk.say(format!(
            "needs input at {}: {}",
            text(&need["path"]),
            text(&need["note"])
        ))?;
    }
    walk.check(
        inv_trigger["equals"] == json!("on_mains")
            && inv_selector["mode"] == json!("ledger")
            && inv_selector["value"] == json!(forward_id.to_string()),
        "the inverse listens for on_mains and targets the outage policy's ledger",
    )?;
    let inv_text = serde_json::to_string(&inv_spec).unwrap_or_default();
    let inverse_policy = match service.create_policy(actor, &inv_text).await {
        Ok(p) => p,
        Err(ServiceError::DuplicateHash { existing_id }) => {
            remove_earlier(service, actor, existing_id).await?;
            service
                .create_policy(actor, &inv_text)
                .await
                .map_err(service_error("save the inverse"))?
        }
        Err(e) => return Err(service_error("save the inverse")(e)),
    };
    let inverse_id = inverse_policy.id;
    walk.report.inverse_id = Some(inverse_id);
    walk.say(format!(
        "Saved as \"{}\": id {inverse_id}, status {}, version {}, hash {}",
        inverse_policy.name, inverse_policy.status, inverse_policy.version_int, inverse_policy.hash
    ))?;

    // 6. Enable.
    walk.step("Enable both (the gates)")?;
    walk.say("Enabling runs a fresh dry-run; an error in it would refuse the enable (409).")?;
    let mut enabled = true;
    for (id, label) in [(forward_id, "outage policy"), (inverse_id, "inverse")] {
        match service.enable_policy(actor, id, None).await {
            Ok(p) => {
                let gate = p
                    .last_dry_run
                    .as_ref()
                    .map(|d| text(&d["severity"]))
                    .unwrap_or_else(|| "-".into());
                walk.say(format!(
                    "{label}: status {} (gate dry-run severity {gate})",
                    p.status
                ))?;
                enabled &= p.status == "enabled";
            }
            Err(e) => {
                walk.say(format!("{label}: refused: {e} ({})", e.code()))?;
                enabled = false;
            }
        }
    }
    walk.say("(The inverse's ledger selector is empty until the outage policy has run: a warning, not an error.)")?;
    walk.check(enabled, "both policies are enabled")?;

    // 7. On battery.
    walk.step("The UPS goes on battery")?;
    let secs = options.for_delay.as_secs().max(1);
    walk.say(format!(
        "Simulated UPS {UPS_SUBJECT} reports ups.state on_battery (as NUT's OB status would)."
    ))?;
    let answer = service
        .inject_event(actor, &ups_event("on_battery"), false)
        .await
        .map_err(service_error("on_battery event"))?;
    let names = BTreeMap::from([
        (forward_id.to_string(), "outage policy".to_string()),
        (inverse_id.to_string(), "inverse".to_string()),
    ]);
    show_decisions(walk, &answer.decisions, &names)?;
    walk.say(format!(
        "The trigger has `for: {secs}s`: Hazel starts a countdown and acts only if the UPS is still"
    ))?;
    walk.say("on battery when it ends. A shorter blip (on_mains before then) would cancel it.")?;
    countdown(walk, secs, "still on battery, the outage policy fires").await?;
    let deadline = Instant::now() + options.wait_limit;
    let done = poll(deadline, || {
        running_low
            .iter()
            .all(|id| sim.status(*id) == Some(SimStatus::Stopped))
    })
    .await;
    let runs = wait_runs(service, forward_id, 1, deadline).await;
    let stopped: Vec<u32> = low
        .iter()
        .chain(high.iter())
        .copied()
        .filter(|id| sim.status(*id) == Some(SimStatus::Stopped) && !off_low.contains(id))
        .collect();
    walk.report.stopped = sorted(stopped.clone());
    walk.say("Execution (the ledger entry the run wrote):")?;
    if let Some(run) = runs.first() {
        show_run(walk, run)?;
    }
    walk.say("The simulator now reports:")?;
    show_sim(walk, sim, &guests)?;
    walk.check(
        done && walk.report.stopped == running_low,
        format!("the outage stopped exactly {}", vms(&running_low)),
    )?;
    walk.check(
        off_low
            .iter()
            .all(|id| sim.status(*id) == Some(SimStatus::Stopped)),
        format!("{} stayed off (already stopped, no change)", vms(&off_low)),
    )?;
    walk.check(
        high.iter()
            .all(|id| sim.status(*id) == Some(SimStatus::Running)),
        format!("the high-tier VMs {} kept running", vms(&high)),
    )?;

    // 8. On mains.
    walk.step("The mains return")?;
    walk.say("Hazel knows which VMs are off now without asking: its own actions wrote their")?;
    walk.say("results into the inventory snapshot (the driver read each state back).")?;
    walk.say(format!(
        "Simulated UPS {UPS_SUBJECT} reports ups.state on_mains (NUT's OL status)."
    ))?;
    let answer = service
        .inject_event(actor, &ups_event("on_mains"), false)
        .await
        .map_err(service_error("on_mains event"))?;
    show_decisions(walk, &answer.decisions, &names)?;
    let inv_for = inv_trigger["for"]
        .as_str()
        .and_then(|f| crate::spec::duration::parse_duration(f).ok())
        .unwrap_or(0);
    if inv_for > 0 {
        walk.say(format!(
            "The inverse kept the `for: {inv_for}s`: the mains must stay on that long (a flickering"
        ))?;
        walk.say("return does not restart VMs into the next outage).")?;
        countdown(walk, inv_for, "the mains are still on, the inverse fires").await?;
    }
    let wait = Instant::now() + options.wait_limit;
    let done = poll(wait, || {
        running_low
            .iter()
            .all(|id| sim.status(*id) == Some(SimStatus::Running))
    })
    .await;
    let inv_runs = wait_runs(service, inverse_id, 1, wait).await;
    let started_vms: Vec<u32> = walk
        .report
        .stopped
        .iter()
        .copied()
        .filter(|id| sim.status(*id) == Some(SimStatus::Running))
        .collect();
    walk.report.started = started_vms.clone();
    walk.say("Execution of the inverse:")?;
    if let Some(run) = inv_runs.first() {
        show_run(walk, run)?;
    }
    walk.say("The simulator now reports:")?;
    show_sim(walk, sim, &guests)?;
    let inv_targets: Vec<u32> = sorted(
        inv_runs
            .first()
            .map(|r| {
                r["results"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|x| x["changed"] == json!(true))
                    .map(|x| vmid(&text(&x["target"])))
                    .collect()
            })
            .unwrap_or_default(),
    );
    walk.check(
        done && inv_targets == walk.report.stopped && started_vms == walk.report.stopped,
        format!(
            "the inverse started exactly the VMs the outage stopped: {}",
            vms(&walk.report.stopped)
        ),
    )?;
    walk.report.off_at_end = sorted(
        guests
            .iter()
            .map(|g| g.vmid)
            .filter(|id| sim.status(*id) == Some(SimStatus::Stopped))
            .collect(),
    );
    walk.check(
        walk.report.off_at_end == off_low,
        format!("{} was off before the outage and stays off", vms(&off_low)),
    )?;

    // 9. Ledger.
    walk.step("The ledger of both policies")?;
    walk.say(
        "Every run that scheduled an action is kept (the last 30 per policy), with why it matched.",
    )?;
    walk.say("(`timer.after` is the event the engine delivers when a `for` countdown ends.)")?;
    let forward_ledger = service
        .executions(forward_id, 30)
        .await
        .map_err(service_error("ledger"))?;
    let inverse_ledger = service
        .executions(inverse_id, 30)
        .await
        .map_err(service_error("ledger"))?;
    for (label, ledger) in [
        ("outage policy", &forward_ledger),
        ("inverse", &inverse_ledger),
    ] {
        walk.say(format!("{label}: {} run(s)", ledger.len()))?;
        for run in ledger {
            walk.say(format!(
                "  run {} {} on {} ({}) status {}: {}",
                short(&text(&run["run_id"])),
                text(&run["started_at"]),
                text(&run["event"]["kind"]),
                text(&run["event"]["subject"]["id"]),
                text(&run["status"]),
                run["results"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| format!(
                        "{} {} {}",
                        text(&r["verb"]),
                        text(&r["target"]),
                        if r["changed"] == json!(true) {
                            "changed"
                        } else {
                            "unchanged"
                        }
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))?;
        }
    }
    walk.check(
        !forward_ledger.is_empty() && !inverse_ledger.is_empty(),
        "the ledger holds a run of each policy",
    )?;
    walk.report.forward_ledger = forward_ledger;
    walk.report.inverse_ledger = inverse_ledger;
    Ok(())
}

/// Prints the engine's decision per policy for an injected event.
fn show_decisions<W: Write>(
    walk: &mut Walk<'_, W>,
    decisions: &[Value],
    names: &BTreeMap<String, String>,
) -> Result<(), DemoError> {
    if decisions.is_empty() {
        walk.say("  No enabled policy reacts to this event.")?;
    }
    for d in decisions {
        let id = text(&d["policy_id"]);
        let name = names.get(&id).cloned().unwrap_or(id);
        walk.say(format!("  {name}: {}", text(&d["code"])))?;
        for (_, why) in d["explain"].as_object().into_iter().flatten() {
            for l in text(why).lines().filter(|l| !l.trim().is_empty()) {
                walk.say(format!("    {}", l.trim()))?;
            }
        }
    }
    Ok(())
}

/// Shows a countdown of `secs` seconds, one line a second.
async fn countdown<W: Write>(
    walk: &mut Walk<'_, W>,
    secs: u64,
    done: &str,
) -> Result<(), DemoError> {
    let started = Instant::now();
    let mut shown = secs + 1;
    while started.elapsed() < Duration::from_secs(secs) {
        let left = secs.saturating_sub(started.elapsed().as_secs());
        if left != shown && left > 0 {
            walk.say(format!("  countdown: {left}s left"))?;
            shown = left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    walk.say(format!("  countdown over: {done}."))
}

/// Deletes a policy an earlier demo left in a kept data dir, and the policies
/// whose ledger selector names it.
async fn remove_earlier(service: &Service, actor: &Actor, id: Uuid) -> Result<(), DemoError> {
    let page = service
        .policies(None, 500)
        .await
        .map_err(service_error("list policies"))?;
    for p in page.items {
        let selector = &p.spec["targets"]["selector"];
        if p.id == id
            || (selector["mode"] == json!("ledger") && selector["value"] == json!(id.to_string()))
        {
            service
                .delete_policy(actor, p.id)
                .await
                .map_err(service_error("delete an earlier demo policy"))?;
        }
    }
    Ok(())
}

/// Polls `done` every 50 ms until it holds or `deadline` passes.
async fn poll(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The policy's ledger once it holds at least `count` finished runs (or
/// whatever it holds at `deadline`).
async fn wait_runs(service: &Service, id: Uuid, count: usize, deadline: Instant) -> Vec<Value> {
    loop {
        let runs = service.executions(id, 30).await.unwrap_or_default();
        if runs.len() >= count || Instant::now() >= deadline {
            return runs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn show_run<W: Write>(walk: &mut Walk<'_, W>, run: &Value) -> Result<(), DemoError> {
    walk.say(format!(
        "  run {} status {} (severity {})",
        short(&text(&run["run_id"])),
        text(&run["status"]),
        text(&run["severity"])
    ))?;
    for r in run["results"].as_array().into_iter().flatten() {
        walk.say(format!(
            "    {} {} {}: {}{}",
            text(&r["verb"]),
            text(&r["target"]),
            if r["ok"] == json!(true) {
                "ok"
            } else {
                "failed"
            },
            text(&r["code"]),
            match r["reason"].as_str() {
                Some(reason) if !reason.is_empty() => format!(" ({reason})"),
                _ => String::new(),
            }
        ))?;
    }
    Ok(())
}

fn show_sim<W: Write>(
    walk: &mut Walk<'_, W>,
    sim: &ProxmoxSim,
    guests: &[SimGuest],
) -> Result<(), DemoError> {
    let line = guests
        .iter()
        .map(|g| {
            let status = match sim.status(g.vmid) {
                Some(SimStatus::Running) => "running",
                Some(SimStatus::Stopped) => "stopped",
                Some(SimStatus::Paused) => "paused",
                Some(SimStatus::Hibernated) => "hibernated",
                None => "gone",
            };
            format!("vm:{} {}", g.vmid, status)
        })
        .collect::<Vec<_>>()
        .join(", ");
    walk.say(format!("  {line}"))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// `vm:104` -> 104.
fn vmid(target: &str) -> u32 {
    target
        .rsplit(':')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn sorted(mut ids: Vec<u32>) -> Vec<u32> {
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn vms(ids: &[u32]) -> String {
    let names: Vec<String> = ids.iter().map(|id| format!("vm:{id}")).collect();
    match names.len() {
        0 => "no VM".into(),
        _ => names.join(", "),
    }
}
