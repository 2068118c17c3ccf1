//! A Proxmox VE API simulator for tests, benchmarks and `hazel demo`: an
//! axum server on a loopback port that answers the power-control subset of
//! `/api2/json` the way a PVE 8/9 cluster does (shapes and quirks from
//! `reference/proxmox-api.md`), with a handle to script it and count calls.
//!
//! Covered:
//! - the `{"data": ...}` envelope, `Server: pve-api-daemon/3.0`, JSON content
//!   type; error answers with the text as HTTP reason phrase and, unless
//!   [`SimConfig::error_message_field`] is off (pre-2025 servers), in `message`;
//!   `400` with per-parameter `errors`; `501` for unknown paths;
//! - API-token auth (`PVEAPIToken=USER@REALM!NAME=SECRET`, also with a space
//!   after `PVEAPIToken`): `401 No ticket` / `401 Authentication failed!` with
//!   an empty body after a configurable delay (real servers: ~3 s);
//! - `GET /version`, `/nodes`, `/nodes/{node}/status`, `/cluster/resources`
//!   (`type` = `vm`, `node`, `storage` or none), `/nodes/{node}/{qemu|lxc}`,
//!   `.../{vmid}/status/current`, `.../{vmid}/config`;
//! - `POST .../{vmid}/status/{start|shutdown|stop|reset|suspend|resume|reboot}`
//!   (qemu; lxc: start, shutdown, stop, reboot) returning a real-format UPID,
//!   with the documented state conflicts: starting a running guest gives a
//!   task that fails `VM 104 already running`; a config lock makes the task
//!   fail `VM is locked (backup)`; shutdown/stop of a stopped guest ends OK;
//!   shutdown of a paused VM is `500 VM is paused - cannot shutdown` unless
//!   `forceStop=1`; reset/suspend/resume of a stopped VM is `500 VM 104 not
//!   running`; a vmid that is not on the addressed node fails with the real
//!   texts; templates refuse to start; `skiplock` from a token is refused;
//!   booleans must be `0`/`1`; unknown params are rejected;
//! - tasks that run for a configurable delay (`GET /nodes/{node}/tasks/{upid}/status`
//!   with `running`/`stopped` + `exitstatus`, `GET /nodes/{node}/tasks` with
//!   `source=active|archive|all`, `vmid`, `typefilter`, `errors`, `limit`, `start`),
//!   guests that fail every power task with a given text, guests that ignore
//!   ACPI (shutdown ends `VM quit/powerdown failed - got timeout`, or
//!   `WARNINGS: 1` and stopped with `forceStop=1`), HA-managed guests
//!   (`hastart`/`hastop` tasks) that the cluster starts again after they stop,
//!   tasks injected by a test (a running backup), migration between nodes;
//! - a multi-node cluster served from one endpoint, as `pveproxy` proxies
//!   `/nodes/{other}/...`; an offline node answers `595 Errors during
//!   connection establishment, proxy handshake: No route to host`; node power
//!   (`POST /nodes/{node}/status`, `command=shutdown|reboot`, `{"data":null}`,
//!   acting 2 s later);
//! - per-call latency, request counters and a request log with arrival
//!   times (to check a client's pacing), and changes a
//!   test schedules right after a given request ([`ProxmoxSim::after_request`]:
//!   someone else starts the VM, the guest migrates, a backup takes the lock)
//!   to reproduce races deterministically.
//!
//! Not covered: TLS (plain HTTP only; put a TLS proxy in front to test
//! pinning), tickets and CSRF (`/access/ticket`), permissions and `403`
//! (the token may do everything), `full=1` QMP details, snapshots, backup
//! jobs (beyond a lock and an injected `vzdump` task), migration tasks,
//! storage, SDN and pools beyond a `local` storage entry per node, config
//! writes (`PUT .../config`), quorum loss, `suspend todisk=1`, the RRD lag of
//! `/cluster/resources` (it always shows the live state), task logs
//! (`/tasks/{upid}/log`) and stopping tasks (`DELETE /tasks/{upid}`).
//!
//! Task and event times are tokio time, so the cluster model can be driven
//! under `tokio::time::pause` (see the unit tests). Tests that talk to the
//! server over a socket should run on real time with small delays: a paused
//! runtime jumps to its next timer whenever it waits for loopback IO.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{ProxmoxConfig, Scheme};
use crate::secret::Secret;

/// What the simulated cluster looks like at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Address to listen on; port 0 picks a free one. Keep it on loopback.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Names of the cluster's nodes (all online at start).
    #[serde(default = "default_nodes")]
    pub nodes: Vec<String>,
    /// The guests (VMs and containers).
    #[serde(default)]
    pub guests: Vec<SimGuest>,
    /// The one accepted API token id, `USER@REALM!NAME`.
    #[serde(default = "default_token_id")]
    pub token_id: String,
    /// The accepted token's secret.
    #[serde(default = "default_token_secret")]
    pub token_secret: String,
    /// How long a power task runs before it stops, milliseconds.
    #[serde(default = "default_task_delay_ms")]
    pub task_delay_ms: u64,
    /// Delay added before every answer, milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Delay before a 401 answer, milliseconds (a real server waits ~3000).
    #[serde(default = "default_auth_fail_delay_ms")]
    pub auth_fail_delay_ms: u64,
    /// Put the error text in a `message` field too (servers since 2025);
    /// `false` leaves it only in the HTTP reason phrase, as older servers do.
    #[serde(default = "default_true")]
    pub error_message_field: bool,
    /// Delay between an HA guest with `ha_restarts` stopping and the cluster
    /// starting it again, milliseconds.
    #[serde(default)]
    pub ha_restart_delay_ms: u64,
    /// `version` reported by `GET /version`.
    #[serde(default = "default_version")]
    pub version: String,
}

/// One guest of the simulated cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimGuest {
    /// The vmid (unique across the cluster, >= 100).
    pub vmid: u32,
    /// `qemu` (a VM) or `lxc` (a container).
    #[serde(default)]
    pub kind: SimKind,
    /// The node it runs on.
    pub node: String,
    /// Its name (`VM <vmid>` / `CT<vmid>` when unset).
    #[serde(default)]
    pub name: Option<String>,
    /// Power state at start.
    #[serde(default)]
    pub status: SimStatus,
    /// Proxmox tags (`tier.low`, `prod`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Config lock (`backup`, `migrate`, ...): power tasks fail `VM is locked (<lock>)`.
    #[serde(default)]
    pub lock: Option<String>,
    /// A template: refuses to start.
    #[serde(default)]
    pub template: bool,
    /// Managed by the HA stack (`hastart`/`hastop` tasks, `hastate` in resources).
    #[serde(default)]
    pub ha_managed: bool,
    /// The cluster starts it again after it stops (an HA resource whose
    /// requested state stays `started`). Implies `ha_managed`.
    #[serde(default)]
    pub ha_restarts: bool,
    /// Every power task that would change its state ends with this exit status.
    #[serde(default)]
    pub fail_with: Option<String>,
    /// Ignores ACPI shutdown: a shutdown runs for its whole `timeout`.
    #[serde(default)]
    pub ignores_acpi: bool,
    /// Memory, MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Virtual CPUs.
    #[serde(default = "default_cores")]
    pub cores: u32,
}

/// QEMU VM or LXC container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimKind {
    #[default]
    Qemu,
    Lxc,
}

/// A guest's power state in the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimStatus {
    Running,
    #[default]
    Stopped,
    /// Paused in RAM (`status: running`, `qmpstatus: paused`).
    Paused,
    /// Suspended to disk (`status: stopped`, `lock: suspended`).
    Hibernated,
}

/// A change a test schedules to happen "concurrently", right after a given
/// request is answered (see [`ProxmoxSim::after_request`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimChange {
    /// Someone else changes a guest's power state.
    Status(u32, SimStatus),
    /// The guest migrates to another node.
    Migrate(u32, String),
    /// A lock is taken or released (a backup starts or ends).
    Lock(u32, Option<String>),
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn default_nodes() -> Vec<String> {
    vec!["pve1".into()]
}

fn default_token_id() -> String {
    "root@pam!hazel".into()
}

fn default_token_secret() -> String {
    DEMO_TOKEN_SECRET.into()
}

fn default_task_delay_ms() -> u64 {
    50
}

fn default_auth_fail_delay_ms() -> u64 {
    20
}

fn default_true() -> bool {
    true
}

fn default_version() -> String {
    "8.2.4".into()
}

fn default_memory_mb() -> u64 {
    2048
}

fn default_cores() -> u32 {
    2
}

/// The secret of the default demo token (not a real credential).
pub const DEMO_TOKEN_SECRET: &str = "5f0c6a1e-8d4b-4c2a-9e1f-0a1b2c3d4e5f";

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: default_listen(),
            nodes: default_nodes(),
            guests: Vec::new(),
            token_id: default_token_id(),
            token_secret: default_token_secret(),
            task_delay_ms: default_task_delay_ms(),
            latency_ms: 0,
            auth_fail_delay_ms: default_auth_fail_delay_ms(),
            error_message_field: true,
            ha_restart_delay_ms: 0,
            version: default_version(),
        }
    }
}

impl SimGuest {
    /// A guest with every optional field at its default.
    pub fn new(vmid: u32, kind: SimKind, node: &str, status: SimStatus) -> Self {
        SimGuest {
            vmid,
            kind,
            node: node.into(),
            name: None,
            status,
            tags: Vec::new(),
            lock: None,
            template: false,
            ha_managed: false,
            ha_restarts: false,
            fail_with: None,
            ignores_acpi: false,
            memory_mb: default_memory_mb(),
            cores: default_cores(),
        }
    }

    /// Sets the name (builder style).
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the tags (builder style).
    pub fn tagged(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|t| t.to_string()).collect();
        self
    }
}

impl SimConfig {
    /// A small demo cluster: two nodes, VMs of two tiers, a locked VM, a VM
    /// whose tasks fail, an HA VM the cluster restarts, two containers and a template.
    pub fn demo() -> Self {
        let vm = |id, node: &str, status, name: &str, tags: &[&str]| {
            SimGuest::new(id, SimKind::Qemu, node, status)
                .named(name)
                .tagged(tags)
        };
        let mut locked = vm(106, "pve1", SimStatus::Running, "backup06", &["tier.low"]);
        locked.lock = Some("backup".into());
        let mut flaky = vm(107, "pve2", SimStatus::Stopped, "flaky07", &["tier.low"]);
        flaky.fail_with = Some("start failed: QEMU exited with code 1".into());
        let mut ha = vm(
            108,
            "pve2",
            SimStatus::Running,
            "ha08",
            &["tier.high", "ha"],
        );
        ha.ha_managed = true;
        ha.ha_restarts = true;
        let mut tmpl = vm(9000, "pve1", SimStatus::Stopped, "tmpl-debian12", &[]);
        tmpl.template = true;
        SimConfig {
            nodes: vec!["pve1".into(), "pve2".into()],
            guests: vec![
                vm(
                    100,
                    "pve1",
                    SimStatus::Running,
                    "web01",
                    &["tier.high", "prod"],
                ),
                vm(
                    101,
                    "pve1",
                    SimStatus::Running,
                    "db01",
                    &["tier.high", "prod"],
                ),
                vm(104, "pve1", SimStatus::Running, "app04", &["tier.low"]),
                vm(105, "pve2", SimStatus::Stopped, "batch05", &["tier.low"]),
                locked,
                flaky,
                ha,
                SimGuest::new(201, SimKind::Lxc, "pve2", SimStatus::Running)
                    .named("dns201")
                    .tagged(&["tier.low"]),
                SimGuest::new(202, SimKind::Lxc, "pve1", SimStatus::Stopped).named("cache202"),
                tmpl,
            ],
            ..SimConfig::default()
        }
    }

    /// `nodes` nodes named `pve1..` and `vms` running VMs from vmid 100, spread
    /// round-robin, every other one tagged `tier.low` (the rest `tier.high`).
    pub fn generated(nodes: usize, vms: usize) -> Self {
        let nodes: Vec<String> = (1..=nodes.max(1)).map(|i| format!("pve{i}")).collect();
        SimConfig {
            guests: generated_guests(&nodes, vms),
            nodes,
            ..SimConfig::default()
        }
    }
}

/// `vms` running VMs from vmid 100 spread round-robin over `nodes`, every
/// other one tagged `tier.low` (the rest `tier.high`).
pub fn generated_guests(nodes: &[String], vms: usize) -> Vec<SimGuest> {
    let fallback = ["pve1".to_string()];
    let nodes = if nodes.is_empty() {
        &fallback[..]
    } else {
        nodes
    };
    (0..vms)
        .map(|i| {
            let tier = if i % 2 == 0 { "tier.low" } else { "tier.high" };
            SimGuest::new(
                100 + i as u32,
                SimKind::Qemu,
                &nodes[i % nodes.len()],
                SimStatus::Running,
            )
            .named(&format!("vm{:04}", 100 + i))
            .tagged(&[tier])
        })
        .collect()
}

/// A running simulator; dropping it stops the server.
pub struct ProxmoxSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for ProxmoxSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxmoxSim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

struct Shared {
    token_id: String,
    token_secret: String,
    world: Mutex<World>,
}

impl ProxmoxSim {
    /// Binds `config.listen` and serves on the current tokio runtime.
    pub async fn start(config: SimConfig) -> std::io::Result<ProxmoxSim> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            token_id: config.token_id.clone(),
            token_secret: config.token_secret.clone(),
            world: Mutex::new(World::new(&config)),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "proxmox simulator stopped with an error");
            }
        });
        Ok(ProxmoxSim {
            addr,
            shared,
            stop: Some(stop),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/api2/json`.
    pub fn base_url(&self) -> String {
        format!("http://{}/api2/json", self.addr)
    }

    /// A driver config that reaches this simulator with its token.
    pub fn driver_config(&self) -> ProxmoxConfig {
        let node = self.with_world(|w| w.nodes.keys().next().cloned().unwrap_or_default());
        let mut cfg = ProxmoxConfig::new(
            self.addr.ip().to_string(),
            node,
            self.shared.token_id.clone(),
            Secret::new(self.shared.token_secret.clone()),
        );
        cfg.port = self.addr.port();
        cfg.scheme = Scheme::Http;
        cfg
    }

    /// The same config as a host's `connection` map (for a registry).
    pub fn connection(&self) -> Map<String, Value> {
        let cfg = self.driver_config();
        let mut map = Map::new();
        map.insert("host".into(), json!(cfg.host));
        map.insert("port".into(), json!(cfg.port));
        map.insert("node".into(), json!(cfg.node));
        map.insert("token_id".into(), json!(cfg.token_id));
        map.insert("token_secret".into(), json!(self.shared.token_secret));
        map.insert("scheme".into(), json!("http"));
        map
    }

    fn with_world<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        let mut world = self.shared.world.lock().unwrap_or_else(|p| p.into_inner());
        world.advance(Instant::now());
        f(&mut world)
    }

    /// How many `method` requests reached `path` (relative to `/api2/json`,
    /// without the query), including refused ones.
    pub fn request_count(&self, method: &str, path: &str) -> u64 {
        self.with_world(|w| {
            w.counts
                .get(&format!("{method} {path}"))
                .copied()
                .unwrap_or(0)
        })
    }

    /// How many requests reached paths starting with `prefix` (any method).
    pub fn request_count_prefix(&self, prefix: &str) -> u64 {
        self.with_world(|w| {
            w.counts
                .iter()
                .filter(|(k, _)| {
                    k.split_once(' ')
                        .is_some_and(|(_, p)| p.starts_with(prefix))
                })
                .map(|(_, n)| n)
                .sum()
        })
    }

    /// All requests so far.
    pub fn total_requests(&self) -> u64 {
        self.with_world(|w| w.counts.values().sum())
    }

    /// The latest requests, `METHOD /path?query`, oldest first (the last 10 000).
    pub fn request_log(&self) -> Vec<String> {
        self.with_world(|w| w.log.iter().map(|(_, r)| r.clone()).collect())
    }

    /// [`ProxmoxSim::request_log`] with each request's arrival time (tokio
    /// time since the simulator started), oldest first.
    pub fn request_timeline(&self) -> Vec<(Duration, String)> {
        self.with_world(|w| w.log.clone())
    }

    /// Forgets counters and the log.
    pub fn reset_counters(&self) {
        self.with_world(|w| {
            w.counts.clear();
            w.log.clear();
        })
    }

    /// Changes the delay added before every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.with_world(|w| w.latency = latency)
    }

    /// Changes how long new power tasks run.
    pub fn set_task_delay(&self, delay: Duration) {
        self.with_world(|w| w.task_delay = delay)
    }

    /// Changes the delay before 401 answers (3 s on a real server).
    pub fn set_auth_fail_delay(&self, delay: Duration) {
        self.with_world(|w| w.auth_fail_delay = delay)
    }

    /// Sets a guest's power state directly (as if changed outside the API).
    pub fn set_status(&self, vmid: u32, status: SimStatus) {
        self.with_world(|w| {
            if let Some(g) = w.guests.get_mut(&vmid) {
                g.status = status;
            }
        })
    }

    /// Sets or clears a guest's config lock.
    pub fn set_lock(&self, vmid: u32, lock: Option<&str>) {
        self.with_world(|w| {
            if let Some(g) = w.guests.get_mut(&vmid) {
                g.lock = lock.map(str::to_string);
            }
        })
    }

    /// Makes every state-changing power task of a guest fail with `text` (or heals it).
    pub fn set_fail_with(&self, vmid: u32, text: Option<&str>) {
        self.with_world(|w| {
            if let Some(g) = w.guests.get_mut(&vmid) {
                g.fail_with = text.map(str::to_string);
            }
        })
    }

    /// Moves a guest to another node (an instant migration).
    pub fn migrate(&self, vmid: u32, node: &str) {
        self.with_world(|w| {
            if let Some(g) = w.guests.get_mut(&vmid) {
                g.node = node.to_string();
            }
        })
    }

    /// Marks a node online or offline (offline nodes answer 595 through the proxy).
    pub fn set_node_online(&self, node: &str, online: bool) {
        self.with_world(|w| {
            if let Some(n) = w.nodes.get_mut(node) {
                *n = online;
            }
        })
    }

    /// Starts a task on a guest that changes nothing and runs for `duration`
    /// (a backup, a replication); returns its UPID.
    pub fn start_task(&self, vmid: u32, task_type: &str, duration: Duration) -> String {
        self.with_world(|w| {
            let node = w
                .guests
                .get(&vmid)
                .map(|g| g.node.clone())
                .unwrap_or_default();
            w.spawn_task(
                &node,
                task_type,
                &vmid.to_string(),
                duration,
                "OK".into(),
                None,
            )
        })
    }

    /// A guest's current state.
    pub fn status(&self, vmid: u32) -> Option<SimStatus> {
        self.with_world(|w| w.guests.get(&vmid).map(|g| g.status))
    }

    /// The node a guest is on.
    pub fn node_of(&self, vmid: u32) -> Option<String> {
        self.with_world(|w| w.guests.get(&vmid).map(|g| g.node.clone()))
    }

    /// Whether a node is online.
    pub fn node_online(&self, node: &str) -> Option<bool> {
        self.with_world(|w| w.nodes.get(node).copied())
    }

    /// `(upid, exitstatus)` of every task so far (exit status `None` while running).
    pub fn tasks(&self) -> Vec<(String, Option<String>)> {
        self.with_world(|w| {
            w.tasks
                .iter()
                .map(|t| (t.upid.clone(), t.done.then(|| t.exitstatus.clone())))
                .collect()
        })
    }

    /// Applies `change` right after the next `method path` request (path
    /// relative to `/api2/json`, no query) is answered: a deterministic way to
    /// let "someone else" act between two of the driver's calls.
    pub fn after_request(&self, method: &str, path: &str, change: SimChange) {
        self.with_world(|w| w.triggers.push((format!("{method} {path}"), change)))
    }

    /// Stops the server and waits until it no longer accepts connections.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::task::yield_now().await;
    }
}

impl Drop for ProxmoxSim {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What a power task does to a guest when it ends OK.
#[derive(Debug, Clone)]
struct Effect {
    vmid: u32,
    status: SimStatus,
}

#[derive(Debug, Clone)]
struct Task {
    upid: String,
    node: String,
    pid: u32,
    pstart: u32,
    starttime: u64,
    task_type: String,
    id: String,
    ends_at: Instant,
    exitstatus: String,
    effect: Option<Effect>,
    done: bool,
    /// Epoch seconds the task ends (reported once it has).
    endtime: u64,
}

#[derive(Debug, Clone)]
enum Event {
    /// The HA stack starts a stopped guest again.
    HaRestart(u32),
    /// A node powers off (or reboots) after accepting the command.
    NodePower { node: String, reboot: bool },
}

/// The simulated cluster's state; every handler locks it briefly and never
/// across an await.
struct World {
    /// Node name -> online.
    nodes: BTreeMap<String, bool>,
    guests: BTreeMap<u32, SimGuest>,
    tasks: Vec<Task>,
    events: Vec<(Instant, Event)>,
    counts: BTreeMap<String, u64>,
    /// Requests with their arrival time since `started`.
    log: Vec<(Duration, String)>,
    started: Instant,
    latency: Duration,
    task_delay: Duration,
    auth_fail_delay: Duration,
    ha_restart_delay: Duration,
    message_field: bool,
    version: String,
    token_id: String,
    next_pid: u32,
    /// Changes to apply right after a matching request is answered.
    triggers: Vec<(String, SimChange)>,
}

/// An answer before it becomes HTTP.
enum Reply {
    Data(Value),
    DataTotal(Value, usize),
    Error {
        status: u16,
        message: String,
        errors: Option<Value>,
    },
}

fn fail(status: u16, message: impl Into<String>) -> Reply {
    Reply::Error {
        status,
        message: message.into(),
        errors: None,
    }
}

fn param_error(param: &str, text: impl Into<String>) -> Reply {
    Reply::Error {
        status: 400,
        message: "Parameter verification failed.".into(),
        errors: Some(json!({ param: text.into() })),
    }
}

const LOG_CAP: usize = 10_000;

impl World {
    fn new(cfg: &SimConfig) -> World {
        let mut nodes: BTreeMap<String, bool> =
            cfg.nodes.iter().map(|n| (n.clone(), true)).collect();
        let guests = cfg
            .guests
            .iter()
            .map(|g| {
                nodes.entry(g.node.clone()).or_insert(true);
                let mut g = g.clone();
                g.ha_managed |= g.ha_restarts;
                if g.status == SimStatus::Hibernated {
                    g.lock = Some("suspended".into());
                }
                (g.vmid, g)
            })
            .collect();
        World {
            nodes,
            guests,
            tasks: Vec::new(),
            events: Vec::new(),
            counts: BTreeMap::new(),
            log: Vec::new(),
            started: Instant::now(),
            latency: Duration::from_millis(cfg.latency_ms),
            task_delay: Duration::from_millis(cfg.task_delay_ms),
            auth_fail_delay: Duration::from_millis(cfg.auth_fail_delay_ms),
            ha_restart_delay: Duration::from_millis(cfg.ha_restart_delay_ms),
            message_field: cfg.error_message_field,
            version: cfg.version.clone(),
            token_id: cfg.token_id.clone(),
            next_pid: 0x0003_A1F2,
            triggers: Vec::new(),
        }
    }

    fn record(&mut self, method: &Method, path: &str, query: &str) {
        let rel = path.strip_prefix("/api2/json").unwrap_or(path);
        *self.counts.entry(format!("{method} {rel}")).or_insert(0) += 1;
        if self.log.len() >= LOG_CAP {
            self.log.drain(..LOG_CAP / 2);
        }
        let at = self.started.elapsed();
        if query.is_empty() {
            self.log.push((at, format!("{method} {rel}")));
        } else {
            self.log.push((at, format!("{method} {rel}?{query}")));
        }
    }

    /// Applies the first trigger waiting for `key` (`METHOD /path`).
    fn fire_trigger(&mut self, key: &str) {
        let Some(i) = self.triggers.iter().position(|(k, _)| k == key) else {
            return;
        };
        let (_, change) = self.triggers.remove(i);
        match change {
            SimChange::Status(vmid, status) => {
                if let Some(g) = self.guests.get_mut(&vmid) {
                    g.status = status;
                }
            }
            SimChange::Migrate(vmid, node) => {
                if let Some(g) = self.guests.get_mut(&vmid) {
                    g.node = node;
                }
            }
            SimChange::Lock(vmid, lock) => {
                if let Some(g) = self.guests.get_mut(&vmid) {
                    g.lock = lock;
                }
            }
        }
    }

    /// Applies every task end and event that is due, in time order.
    fn advance(&mut self, now: Instant) {
        loop {
            let task = self
                .tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.done && t.ends_at <= now)
                .min_by_key(|(_, t)| t.ends_at)
                .map(|(i, t)| (t.ends_at, i));
            let event = self
                .events
                .iter()
                .enumerate()
                .filter(|(_, (at, _))| *at <= now)
                .min_by_key(|(_, (at, _))| *at)
                .map(|(i, (at, _))| (*at, i));
            match (task, event) {
                (Some((t_at, i)), Some((e_at, _))) if t_at <= e_at => self.finish_task(i),
                (Some((_, i)), None) => self.finish_task(i),
                (_, Some((_, j))) => {
                    let (at, event) = self.events.remove(j);
                    self.apply_event(at, event);
                }
                (None, None) => break,
            }
        }
    }

    fn finish_task(&mut self, i: usize) {
        let task = &mut self.tasks[i];
        task.done = true;
        let ok = task.exitstatus == "OK" || task.exitstatus.starts_with("WARNINGS");
        let (ends_at, effect) = (task.ends_at, task.effect.clone());
        if let (true, Some(effect)) = (ok, effect) {
            if let Some(g) = self.guests.get_mut(&effect.vmid) {
                g.status = effect.status;
                if effect.status != SimStatus::Hibernated && g.lock.as_deref() == Some("suspended")
                {
                    g.lock = None;
                }
                if g.ha_restarts && effect.status == SimStatus::Stopped {
                    self.events.push((
                        ends_at + self.ha_restart_delay,
                        Event::HaRestart(effect.vmid),
                    ));
                }
            }
        }
    }

    fn apply_event(&mut self, _at: Instant, event: Event) {
        match event {
            Event::HaRestart(vmid) => {
                if let Some(g) = self.guests.get_mut(&vmid) {
                    if g.status == SimStatus::Stopped
                        && self.nodes.get(&g.node).copied().unwrap_or(false)
                    {
                        g.status = SimStatus::Running;
                    }
                }
            }
            Event::NodePower { node, reboot } => {
                for g in self.guests.values_mut().filter(|g| g.node == node) {
                    if g.status != SimStatus::Hibernated {
                        g.status = SimStatus::Stopped;
                    }
                }
                if !reboot {
                    self.nodes.insert(node, false);
                }
            }
        }
    }

    fn spawn_task(
        &mut self,
        node: &str,
        task_type: &str,
        id: &str,
        duration: Duration,
        exitstatus: String,
        effect: Option<Effect>,
    ) -> String {
        let pid = self.next_pid;
        self.next_pid += 1;
        let pstart = 0x01B2_C3D4u32.wrapping_add(pid.wrapping_mul(7));
        let starttime = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let upid = format!(
            "UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{task_type}:{id}:{}:",
            self.token_id
        );
        self.tasks.push(Task {
            upid: upid.clone(),
            node: node.to_string(),
            pid,
            pstart,
            starttime,
            task_type: task_type.to_string(),
            id: id.to_string(),
            ends_at: Instant::now() + duration,
            exitstatus,
            effect,
            done: false,
            endtime: starttime + duration.as_secs(),
        });
        upid
    }

    /// Errors of `/nodes/{node}/...` for unknown and offline nodes.
    fn node_check(&self, node: &str) -> Result<(), Reply> {
        match self.nodes.get(node) {
            Some(true) => Ok(()),
            Some(false) => Err(fail(
                595,
                "Errors during connection establishment, proxy handshake: No route to host",
            )),
            None => Err(fail(
                500,
                format!("hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"),
            )),
        }
    }

    fn route(&mut self, method: &Method, path: &str, params: &BTreeMap<String, String>) -> Reply {
        let segs: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| percent_decode(s, false))
            .collect();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let not_impl = || fail(501, format!("Method '{method} {path}' not implemented"));
        let get = method == Method::GET;
        let post = method == Method::POST;
        match segs.as_slice() {
            ["version"] if get => Reply::Data(json!({
                "version": self.version,
                "release": self.version.rsplit_once('.').map(|(r, _)| r).unwrap_or(&self.version),
                "repoid": "faa83925",
            })),
            ["nodes"] if get => Reply::Data(self.nodes_list()),
            ["cluster", "resources"] if get => self.resources(params),
            ["nodes", node, rest @ ..] => {
                if let Err(reply) = self.node_check(node) {
                    return reply;
                }
                match rest {
                    ["status"] if get => Reply::Data(self.node_status(node)),
                    ["status"] if post => self.node_power(node, params),
                    ["tasks"] if get => self.task_list(node, params),
                    ["tasks", upid, "status"] if get => self.task_status(node, upid),
                    [kind @ ("qemu" | "lxc")] if get => {
                        Reply::Data(self.guest_list(node, kind_of(kind)))
                    }
                    [kind @ ("qemu" | "lxc"), vmid, "status", "current"] if get => {
                        self.status_current(node, kind_of(kind), vmid)
                    }
                    [kind @ ("qemu" | "lxc"), vmid, "config"] if get => {
                        self.config(node, kind_of(kind), vmid)
                    }
                    [kind @ ("qemu" | "lxc"), vmid, "status", action] if post => self
                        .power(node, kind_of(kind), vmid, action, params)
                        .unwrap_or_else(not_impl),
                    _ => not_impl(),
                }
            }
            _ => not_impl(),
        }
    }

    fn nodes_list(&self) -> Value {
        let list: Vec<Value> = self
            .nodes
            .iter()
            .map(|(name, online)| {
                let mut n = json!({
                    "node": name, "id": format!("node/{name}"), "type": "node",
                    "status": if *online { "online" } else { "offline" },
                    "maxcpu": 16, "maxmem": 67_324_375_040u64, "maxdisk": 100_861_726_720u64,
                    "level": "", "ssl_fingerprint": "5A:9C:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD",
                });
                if *online {
                    n["cpu"] = json!(0.0123);
                    n["mem"] = json!(12_884_901_888u64);
                    n["disk"] = json!(9_763_504_128u64);
                    n["uptime"] = json!(864_000);
                }
                n
            })
            .collect();
        Value::Array(list)
    }

    fn node_status(&self, node: &str) -> Value {
        json!({
            "uptime": 864_000, "cpu": 0.0123,
            "memory": {"total": 67_324_375_040u64, "used": 12_884_901_888u64, "free": 54_439_473_152u64},
            "pveversion": format!("pve-manager/{}/faa83925", self.version),
            "kversion": "Linux 6.8.12-4-pve", "node": node,
        })
    }

    fn node_power(&mut self, node: &str, params: &BTreeMap<String, String>) -> Reply {
        if let Some(extra) = params.keys().find(|k| k.as_str() != "command") {
            return param_error(extra, "property is not defined in schema and the schema does not allow additional properties");
        }
        let reboot = match params.get("command").map(String::as_str) {
            Some("shutdown") => false,
            Some("reboot") => true,
            Some(other) => {
                return param_error(
                    "command",
                    format!(
                    "value '{other}' does not have a value in the enumeration 'reboot, shutdown'"
                ),
                )
            }
            None => return param_error("command", "property is missing and it is not optional"),
        };
        self.events.push((
            Instant::now() + Duration::from_secs(2),
            Event::NodePower {
                node: node.to_string(),
                reboot,
            },
        ));
        Reply::Data(Value::Null)
    }

    fn guest_item(&self, g: &SimGuest) -> Value {
        let running = matches!(g.status, SimStatus::Running | SimStatus::Paused);
        let mut v = json!({
            "vmid": g.vmid,
            "name": guest_name(g),
            "status": if running { "running" } else { "stopped" },
            "cpus": g.cores, "maxmem": g.memory_mb * 1024 * 1024,
            "mem": if running { g.memory_mb * 1024 * 1024 / 3 } else { 0 },
            "cpu": if running { 0.031 } else { 0.0 },
            "maxdisk": 34_359_738_368u64, "disk": 0,
            "uptime": if running { 86_400 } else { 0 },
            "netin": if running { 123_456_789 } else { 0 },
            "netout": if running { 98_765_432 } else { 0 },
        });
        if running {
            v["pid"] = json!(200_000 + g.vmid);
        }
        if !g.tags.is_empty() {
            v["tags"] = json!(g.tags.join(";"));
        }
        if g.template {
            v["template"] = json!(1);
        }
        if let Some(lock) = &g.lock {
            v["lock"] = json!(lock);
        }
        if g.kind == SimKind::Lxc {
            v["type"] = json!("lxc");
        }
        v
    }

    fn resources(&self, params: &BTreeMap<String, String>) -> Reply {
        let filter = params.get("type").map(String::as_str);
        if let Some(f) = filter {
            if !matches!(f, "vm" | "storage" | "node" | "sdn") {
                return param_error(
                    "type",
                    format!("value '{f}' does not have a value in the enumeration 'vm, storage, node, sdn'"),
                );
            }
        }
        let mut out = Vec::new();
        if matches!(filter, None | Some("node")) {
            for (name, online) in &self.nodes {
                let mut n = json!({"id": format!("node/{name}"), "type": "node", "node": name,
                    "status": if *online { "online" } else { "offline" }, "maxcpu": 16,
                    "maxmem": 67_324_375_040u64, "maxdisk": 100_861_726_720u64, "level": ""});
                if *online {
                    n["uptime"] = json!(864_000);
                    n["cpu"] = json!(0.0123);
                    n["mem"] = json!(12_884_901_888u64);
                }
                out.push(n);
            }
        }
        if matches!(filter, None | Some("storage")) {
            for name in self.nodes.keys() {
                out.push(json!({"id": format!("storage/{name}/local"), "type": "storage", "node": name,
                    "storage": "local", "status": "available", "plugintype": "dir", "shared": 0,
                    "content": "iso,vztmpl,backup", "disk": 9_763_504_128u64, "maxdisk": 100_861_726_720u64}));
            }
        }
        if matches!(filter, None | Some("vm")) {
            for g in self.guests.values() {
                let online = self.nodes.get(&g.node).copied().unwrap_or(false);
                let item = self.guest_item(g);
                let kind = kind_name(g.kind);
                let mut r = json!({
                    "id": format!("{kind}/{}", g.vmid), "vmid": g.vmid, "type": kind, "node": g.node,
                    "name": item["name"], "status": if online { item["status"].clone() } else { json!("unknown") },
                    "template": u8::from(g.template), "uptime": item["uptime"], "cpu": item["cpu"],
                    "maxcpu": g.cores, "mem": item["mem"], "maxmem": item["maxmem"], "disk": 0,
                    "maxdisk": item["maxdisk"], "netin": item["netin"], "netout": item["netout"],
                    "diskread": 0, "diskwrite": 0,
                });
                for key in ["tags", "lock"] {
                    if let Some(v) = item.get(key) {
                        r[key] = v.clone();
                    }
                }
                if g.ha_managed {
                    r["hastate"] = json!(if g.status == SimStatus::Stopped {
                        "stopped"
                    } else {
                        "started"
                    });
                }
                out.push(r);
            }
        }
        Reply::Data(Value::Array(out))
    }

    fn guest_on(&self, node: &str, kind: SimKind, vmid: &str) -> Option<&SimGuest> {
        let vmid: u32 = vmid.parse().ok()?;
        self.guests
            .get(&vmid)
            .filter(|g| g.node == node && g.kind == kind)
    }

    fn missing_conf(node: &str, kind: SimKind, vmid: &str) -> Reply {
        fail(500, missing_conf_text(node, kind, vmid))
    }

    fn guest_list(&self, node: &str, kind: SimKind) -> Value {
        Value::Array(
            self.guests
                .values()
                .filter(|g| g.node == node && g.kind == kind)
                .map(|g| self.guest_item(g))
                .collect(),
        )
    }

    fn status_current(&self, node: &str, kind: SimKind, vmid: &str) -> Reply {
        let Some(g) = self.guest_on(node, kind, vmid) else {
            return Self::missing_conf(node, kind, vmid);
        };
        let mut v = self.guest_item(g);
        v["ha"] = if g.ha_managed {
            json!({"managed": 1, "state": "started", "group": null})
        } else {
            json!({"managed": 0})
        };
        if kind == SimKind::Qemu {
            v["qmpstatus"] = json!(match g.status {
                SimStatus::Running => "running",
                SimStatus::Paused => "paused",
                SimStatus::Stopped | SimStatus::Hibernated => "stopped",
            });
            v["agent"] = json!(1);
            v["running-qemu"] = json!("9.0.2");
        }
        Reply::Data(v)
    }

    fn config(&self, node: &str, kind: SimKind, vmid: &str) -> Reply {
        let Some(g) = self.guest_on(node, kind, vmid) else {
            return Self::missing_conf(node, kind, vmid);
        };
        let mut v = json!({
            "memory": g.memory_mb.to_string(), "cores": g.cores, "onboot": 1,
            "digest": format!("{:040x}", u128::from(g.vmid) * 0x9e37_79b9_7f4a_7c15),
        });
        match kind {
            SimKind::Qemu => {
                v["name"] = json!(guest_name(g));
                v["sockets"] = json!(1);
                v["ostype"] = json!("l26");
                v["boot"] = json!("order=scsi0");
                v["scsi0"] = json!(format!("local-lvm:vm-{}-disk-0,size=32G", g.vmid));
                v["net0"] = json!("virtio=BC:24:11:2A:3B:4C,bridge=vmbr0");
                v["agent"] = json!("1");
            }
            SimKind::Lxc => {
                v["hostname"] = json!(guest_name(g));
                v["ostype"] = json!("debian");
                v["rootfs"] = json!(format!("local-lvm:vm-{}-disk-0,size=8G", g.vmid));
            }
        }
        if !g.tags.is_empty() {
            v["tags"] = json!(g.tags.join(";"));
        }
        if let Some(lock) = &g.lock {
            v["lock"] = json!(lock);
        }
        if g.template {
            v["template"] = json!(1);
        }
        Reply::Data(v)
    }

    /// `POST .../status/{action}`; `None` for an action the guest type lacks (501).
    fn power(
        &mut self,
        node: &str,
        kind: SimKind,
        vmid: &str,
        action: &str,
        params: &BTreeMap<String, String>,
    ) -> Option<Reply> {
        let allowed: &[&str] = match (kind, action) {
            (_, "start") => &["timeout", "skiplock"],
            (_, "shutdown") => &["timeout", "forceStop", "keepActive", "skiplock"],
            (_, "stop") => &["timeout", "skiplock", "keepActive", "overrule-shutdown"],
            (SimKind::Qemu, "reset") => &["skiplock"],
            (SimKind::Qemu, "suspend") => &["skiplock", "todisk"],
            (SimKind::Qemu, "resume") => &["skiplock", "nocheck"],
            (_, "reboot") => &["timeout"],
            _ => return None,
        };
        if let Some(err) = check_params(params, allowed) {
            return Some(err);
        }
        if params.get("skiplock").map(String::as_str) == Some("1") {
            return Some(param_error("skiplock", "Only root may use this option."));
        }
        let force = params.get("forceStop").map(String::as_str) == Some("1");
        let timeout = params.get("timeout").and_then(|t| t.parse::<u64>().ok());
        let noun = match kind {
            SimKind::Qemu => "VM",
            SimKind::Lxc => "CT",
        };
        let prefix = match kind {
            SimKind::Qemu => "qm",
            SimKind::Lxc => "vz",
        };
        let task_type = match action {
            "suspend" => format!("{prefix}pause"),
            other => format!("{prefix}{other}"),
        };

        let Some(g) = self.guest_on(node, kind, vmid).cloned() else {
            let not_here =
                format!("unable to find configuration file for VM {vmid} on node '{node}'");
            return Some(match action {
                "start" => {
                    let message = missing_conf_text(node, kind, vmid);
                    let upid =
                        self.spawn_task(node, &task_type, vmid, self.task_delay, message, None);
                    Reply::Data(json!(upid))
                }
                "stop" | "shutdown" => {
                    let upid =
                        self.spawn_task(node, &task_type, vmid, self.task_delay, not_here, None);
                    Reply::Data(json!(upid))
                }
                _ => fail(500, not_here),
            });
        };
        let id = g.vmid;
        let task_type = if g.ha_managed && matches!(action, "start" | "stop" | "shutdown") {
            if action == "start" {
                "hastart"
            } else {
                "hastop"
            }
            .to_string()
        } else {
            task_type
        };
        let running = matches!(g.status, SimStatus::Running | SimStatus::Paused);
        let lock = g.lock.clone();
        let locked = |l: &str| format!("{noun} is locked ({l})");
        let failing = g.fail_with.clone();
        let mut delay = self.task_delay;
        // (exit status, new state) of the task, or a synchronous error.
        let outcome: Result<(String, Option<SimStatus>), Reply> = match action {
            "start" => {
                if g.template {
                    Ok(("you can't start a vm if it's a template".into(), None))
                } else if g.status == SimStatus::Running && lock.as_deref() == Some("backup") {
                    Ok(("OK".into(), None))
                } else if running {
                    Ok((format!("{noun} {id} already running"), None))
                } else if g.status == SimStatus::Hibernated {
                    Ok(("OK".into(), Some(SimStatus::Running)))
                } else if let Some(l) = &lock {
                    Ok((locked(l), None))
                } else if let Some(f) = failing {
                    Ok((f, None))
                } else {
                    Ok(("OK".into(), Some(SimStatus::Running)))
                }
            }
            "shutdown" | "stop" => {
                if !running {
                    Ok(("OK".into(), None))
                } else if action == "shutdown" && g.status == SimStatus::Paused && !force {
                    Err(fail(500, "VM is paused - cannot shutdown"))
                } else if let Some(l) = &lock {
                    Ok((locked(l), None))
                } else if let Some(f) = failing {
                    Ok((f, None))
                } else if action == "shutdown" && g.ignores_acpi && g.status == SimStatus::Running {
                    delay = Duration::from_secs(timeout.unwrap_or(60));
                    if force {
                        Ok(("WARNINGS: 1".into(), Some(SimStatus::Stopped)))
                    } else {
                        Ok(("VM quit/powerdown failed - got timeout".into(), None))
                    }
                } else {
                    Ok(("OK".into(), Some(SimStatus::Stopped)))
                }
            }
            "reset" | "suspend" | "resume" | "reboot" => {
                if !running {
                    Err(fail(500, format!("{noun} {id} not running")))
                } else if action == "reboot" && g.status == SimStatus::Paused {
                    Err(fail(500, "VM is paused - cannot shutdown"))
                } else if let Some(l) = &lock {
                    Ok((locked(l), None))
                } else if let Some(f) = failing {
                    Ok((f, None))
                } else {
                    let to = match action {
                        "suspend" => SimStatus::Paused,
                        _ => SimStatus::Running,
                    };
                    Ok(("OK".into(), Some(to)))
                }
            }
            _ => return None,
        };
        Some(match outcome {
            Err(reply) => reply,
            Ok((exit, to)) => {
                let effect = to.map(|status| Effect { vmid: id, status });
                let upid = self.spawn_task(node, &task_type, &id.to_string(), delay, exit, effect);
                Reply::Data(json!(upid))
            }
        })
    }

    fn task_item(&self, t: &Task) -> Value {
        let (user, tokenid) = split_token_id(&self.token_id);
        let mut v = json!({
            "upid": t.upid, "node": t.node, "pid": t.pid, "pstart": t.pstart,
            "starttime": t.starttime, "type": t.task_type, "id": t.id, "user": user,
        });
        if let Some(tok) = tokenid {
            v["tokenid"] = json!(tok);
        }
        v
    }

    fn task_list(&self, node: &str, params: &BTreeMap<String, String>) -> Reply {
        let source = params
            .get("source")
            .map(String::as_str)
            .unwrap_or("archive");
        if !matches!(source, "archive" | "active" | "all") {
            return param_error(
                "source",
                format!("value '{source}' does not have a value in the enumeration 'archive, active, all'"),
            );
        }
        let limit: usize = params
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(50);
        let start: usize = params
            .get("start")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let errors_only = params.get("errors").map(String::as_str) == Some("1");
        let mut list: Vec<&Task> = self
            .tasks
            .iter()
            .filter(|t| t.node == node)
            .filter(|t| match source {
                "active" => !t.done,
                "archive" => t.done,
                _ => true,
            })
            .filter(|t| params.get("vmid").is_none_or(|v| &t.id == v))
            .filter(|t| params.get("typefilter").is_none_or(|ty| &t.task_type == ty))
            .filter(|t| !errors_only || (t.done && t.exitstatus != "OK"))
            .collect();
        list.sort_by_key(|t| std::cmp::Reverse((t.starttime, t.pid)));
        let total = list.len();
        let items: Vec<Value> = list
            .into_iter()
            .skip(start)
            .take(limit)
            .map(|t| {
                let mut v = self.task_item(t);
                if t.done {
                    v["status"] = json!(t.exitstatus);
                    v["endtime"] = json!(t.endtime);
                } else {
                    v["status"] = json!("RUNNING");
                }
                v
            })
            .collect();
        Reply::DataTotal(Value::Array(items), total)
    }

    fn task_status(&self, node: &str, upid: &str) -> Reply {
        let fields: Vec<&str> = upid.split(':').collect();
        if fields.len() != 9 || fields[0] != "UPID" || !fields[8].is_empty() {
            return param_error("upid", format!("unable to parse worker upid '{upid}'"));
        }
        let Some(t) = self.tasks.iter().find(|t| t.upid == upid && t.node == node) else {
            return param_error("upid", "no such task");
        };
        let mut v = self.task_item(t);
        if t.done {
            v["status"] = json!("stopped");
            v["exitstatus"] = json!(t.exitstatus);
        } else {
            v["status"] = json!("running");
        }
        Reply::Data(v)
    }
}

/// `user@realm!token` -> (`user@realm`, `token`).
fn split_token_id(token_id: &str) -> (String, Option<String>) {
    match token_id.split_once('!') {
        Some((u, t)) => (u.to_string(), Some(t.to_string())),
        None => (token_id.to_string(), None),
    }
}

fn missing_conf_text(node: &str, kind: SimKind, vmid: &str) -> String {
    let dir = match kind {
        SimKind::Qemu => "qemu-server",
        SimKind::Lxc => "lxc",
    };
    format!("Configuration file 'nodes/{node}/{dir}/{vmid}.conf' does not exist")
}

fn kind_of(segment: &str) -> SimKind {
    if segment == "lxc" {
        SimKind::Lxc
    } else {
        SimKind::Qemu
    }
}

fn kind_name(kind: SimKind) -> &'static str {
    match kind {
        SimKind::Qemu => "qemu",
        SimKind::Lxc => "lxc",
    }
}

fn guest_name(g: &SimGuest) -> String {
    g.name.clone().unwrap_or_else(|| match g.kind {
        SimKind::Qemu => format!("VM {}", g.vmid),
        SimKind::Lxc => format!("CT{}", g.vmid),
    })
}

const BOOL_PARAMS: &[&str] = &[
    "forceStop",
    "keepActive",
    "skiplock",
    "todisk",
    "nocheck",
    "overrule-shutdown",
];

/// Schema checks of a power call's params: known names, `0`/`1` booleans,
/// integer timeouts.
fn check_params(params: &BTreeMap<String, String>, allowed: &[&str]) -> Option<Reply> {
    for (name, value) in params {
        if !allowed.contains(&name.as_str()) {
            return Some(param_error(
                name,
                "property is not defined in schema and the schema does not allow additional properties",
            ));
        }
        if BOOL_PARAMS.contains(&name.as_str()) && !matches!(value.as_str(), "0" | "1") {
            return Some(param_error(
                name,
                format!("type check ('boolean') failed - got '{value}'"),
            ));
        }
        if name == "timeout" && value.parse::<u64>().is_err() {
            return Some(param_error(
                name,
                format!("type check ('integer') failed - got '{value}'"),
            ));
        }
    }
    None
}

/// Decodes `%XX` (and `+` as space in form and query text).
fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_urlencoded(text: &str, into: &mut BTreeMap<String, String>) {
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        into.insert(percent_decode(k, true), percent_decode(v, true));
    }
}

/// Whether the `Authorization` header carries the accepted token; the
/// error is the 401 reason phrase.
fn check_auth(headers: &HeaderMap, shared: &Shared) -> Result<(), &'static str> {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err("No ticket");
    };
    let rest = value
        .strip_prefix("PVEAPIToken")
        .and_then(|r| r.strip_prefix('=').or_else(|| r.strip_prefix(' ')))
        .ok_or("No ticket")?;
    let (id, secret) = rest.split_once('=').ok_or("Authentication failed!")?;
    if id == shared.token_id && secret == shared.token_secret {
        Ok(())
    } else {
        Err("Authentication failed!")
    }
}

fn respond(status: u16, reason: Option<&str>, body: Option<Value>) -> Response {
    let mut resp = Response::new(match &body {
        Some(v) => Body::from(v.to_string()),
        None => Body::empty(),
    });
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = resp.headers_mut();
    headers.insert(
        header::SERVER,
        HeaderValue::from_static("pve-api-daemon/3.0"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
    if body.is_some() {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=UTF-8"),
        );
    }
    if let Some(reason) = reason {
        if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(reason.to_string()) {
            resp.extensions_mut().insert(phrase);
        }
    }
    resp
}

impl Reply {
    fn into_response(self, message_field: bool) -> Response {
        match self {
            Reply::Data(data) => respond(200, None, Some(json!({ "data": data }))),
            Reply::DataTotal(data, total) => {
                respond(200, None, Some(json!({ "data": data, "total": total })))
            }
            Reply::Error {
                status,
                message,
                errors,
            } => {
                let first_line = message.lines().next().unwrap_or("").to_string();
                let mut body = json!({ "data": null });
                if let Some(errors) = errors {
                    body["errors"] = errors;
                }
                if message_field {
                    body["message"] = json!(format!("{message}\n"));
                }
                if (595..=599).contains(&status) {
                    return respond(status, Some(&first_line), None);
                }
                respond(status, Some(&first_line), Some(body))
            }
        }
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let (latency, auth_delay, message_field) = {
        let mut w = shared.world.lock().unwrap_or_else(|p| p.into_inner());
        w.record(&method, &path, &query);
        (w.latency, w.auth_fail_delay, w.message_field)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let Some(api_path) = path.strip_prefix("/api2/json") else {
        return fail(501, format!("Method '{method} {path}' not implemented"))
            .into_response(message_field);
    };
    if let Err(reason) = check_auth(&headers, &shared) {
        tokio::time::sleep(auth_delay).await;
        return respond(401, Some(reason), None);
    }
    let mut params = BTreeMap::new();
    parse_urlencoded(&query, &mut params);
    if !body.is_empty() {
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        if is_json {
            match serde_json::from_slice::<Map<String, Value>>(&body) {
                Ok(map) => {
                    for (k, v) in map {
                        let text = match v {
                            Value::String(s) => s,
                            Value::Bool(b) => if b { "1" } else { "0" }.to_string(),
                            other => other.to_string(),
                        };
                        params.insert(k, text);
                    }
                }
                Err(e) => {
                    return fail(400, format!("invalid JSON body: {e}"))
                        .into_response(message_field);
                }
            }
        } else {
            parse_urlencoded(&String::from_utf8_lossy(&body), &mut params);
        }
    }
    let reply = {
        let mut w = shared.world.lock().unwrap_or_else(|p| p.into_inner());
        w.advance(Instant::now());
        let reply = w.route(&method, api_path, &params);
        w.fire_trigger(&format!("{method} {api_path}"));
        reply
    };
    reply.into_response(message_field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_escapes_and_plus() {
        assert_eq!(percent_decode("UPID%3Apve1%3A", false), "UPID:pve1:");
        assert_eq!(percent_decode("a+b", true), "a b");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("100%", false), "100%");
    }

    #[test]
    fn upids_have_the_real_format() {
        let mut w = World::new(&SimConfig::demo());
        let upid = w.spawn_task("pve1", "qmstart", "104", Duration::ZERO, "OK".into(), None);
        let fields: Vec<&str> = upid.split(':').collect();
        assert_eq!(fields.len(), 9);
        assert_eq!(fields[1], "pve1");
        assert_eq!(fields[2].len(), 8);
        assert_eq!(fields[5], "qmstart");
        assert_eq!(fields[7], "root@pam!hazel");
        assert!(upid.ends_with(':'));
    }

    fn upid_of(reply: Option<Reply>) -> String {
        match reply {
            Some(Reply::Data(Value::String(upid))) => upid,
            _ => panic!("expected a UPID"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_stop_after_their_delay_and_then_change_the_guest() {
        let mut w = World::new(&SimConfig::demo());
        let upid = upid_of(w.power("pve1", SimKind::Qemu, "104", "shutdown", &BTreeMap::new()));
        w.advance(Instant::now());
        assert!(!w.tasks[0].done);
        assert_eq!(w.guests[&104].status, SimStatus::Running);
        tokio::time::advance(Duration::from_millis(60)).await;
        w.advance(Instant::now());
        assert!(w.tasks[0].done);
        assert_eq!(w.tasks[0].upid, upid);
        assert_eq!(w.guests[&104].status, SimStatus::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cluster_restarts_an_ha_guest_after_its_restart_delay() {
        let mut w = World::new(&SimConfig {
            ha_restart_delay_ms: 10_000,
            ..SimConfig::demo()
        });
        upid_of(w.power("pve2", SimKind::Qemu, "108", "shutdown", &BTreeMap::new()));
        assert!(w.tasks[0].task_type == "hastop");
        tokio::time::advance(Duration::from_millis(60)).await;
        w.advance(Instant::now());
        assert_eq!(w.guests[&108].status, SimStatus::Stopped);
        tokio::time::advance(Duration::from_secs(10)).await;
        w.advance(Instant::now());
        assert_eq!(w.guests[&108].status, SimStatus::Running);
    }

    #[tokio::test(start_paused = true)]
    async fn a_guest_that_ignores_acpi_times_out_unless_forced() {
        let mut cfg = SimConfig::demo();
        cfg.guests
            .iter_mut()
            .find(|g| g.vmid == 104)
            .unwrap()
            .ignores_acpi = true;
        let mut w = World::new(&cfg);
        let mut params = BTreeMap::new();
        params.insert("timeout".to_string(), "30".to_string());
        upid_of(w.power("pve1", SimKind::Qemu, "104", "shutdown", &params));
        tokio::time::advance(Duration::from_secs(29)).await;
        w.advance(Instant::now());
        assert!(!w.tasks[0].done);
        tokio::time::advance(Duration::from_secs(2)).await;
        w.advance(Instant::now());
        assert_eq!(
            w.tasks[0].exitstatus,
            "VM quit/powerdown failed - got timeout"
        );
        assert_eq!(w.guests[&104].status, SimStatus::Running);
        params.insert("forceStop".to_string(), "1".to_string());
        upid_of(w.power("pve1", SimKind::Qemu, "104", "shutdown", &params));
        tokio::time::advance(Duration::from_secs(31)).await;
        w.advance(Instant::now());
        assert_eq!(w.tasks[1].exitstatus, "WARNINGS: 1");
        assert_eq!(w.guests[&104].status, SimStatus::Stopped);
    }

    #[test]
    fn power_params_are_schema_checked() {
        let mut p = BTreeMap::new();
        p.insert("forceStop".to_string(), "true".to_string());
        assert!(check_params(&p, &["forceStop"]).is_some());
        p.insert("forceStop".to_string(), "1".to_string());
        assert!(check_params(&p, &["forceStop"]).is_none());
        assert!(check_params(&p, &["timeout"]).is_some());
    }
}
