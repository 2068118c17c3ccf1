//! Preflight of a power action: what `execute` would find and send, without
//! sending anything that changes state. One `/cluster/resources` call finds
//! every target's node, one active-task list per node finds pending tasks,
//! one `status/current` per target reads the live state, and `.../config`
//! is read for the `vm_lock` check of each guest about to change on which a
//! lock shows (the config's `lock` is what Proxmox enforces; reading it for
//! every guest would double the calls a dry-run spends of the host's
//! `rate_limit` and SLA budget for an answer `status/current` already
//! carries). The checks are reported in a fixed order (`auth`, `vm_exists`,
//! `vm_lock`, `vm_state`, `pending_tasks`, `no_op`). The request shapes and
//! the lock rule here are the ones `execute` uses, so the preview is exactly
//! what would go over the wire (minus the token, which only the client ever
//! sees).

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;
use inventory::Severity;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::client::{ApiClient, Calls};
use super::model::{
    parse_target, str_field, GuestKind, LiveStatus, NodeVerb, PowerParams, ResourceGuest,
    Resources, TargetRef, Verb,
};
use super::{CAP_CT, CAP_NODE, CAP_VM};
use crate::driver::{
    Action, DriverError, DryRunAnswer, Effects, ErrorKind, HostKeys, Plan, Precondition,
    TargetEffect,
};

/// The one lookup of every guest's node and cached state.
pub(crate) const RESOURCES_PATH: &str = "/cluster/resources";

/// `GET /cluster/resources?type=vm`, parsed.
pub(crate) async fn lookup_guests(
    api: Calls<'_>,
    deadline: Option<Instant>,
) -> Result<Resources, DriverError> {
    let data = api
        .get(RESOURCES_PATH, &[("type", "vm".into())], deadline)
        .await?;
    Ok(Resources::parse(&data))
}

/// `/nodes/{node}/{qemu|lxc}/{vmid}`.
pub(crate) fn guest_path(kind: GuestKind, node: &str, vmid: u32) -> String {
    format!("/nodes/{node}/{}/{vmid}", kind.api())
}

/// `/nodes/{node}/{qemu|lxc}/{vmid}/status/current`.
pub(crate) fn status_path(kind: GuestKind, node: &str, vmid: u32) -> String {
    format!("{}/status/current", guest_path(kind, node, vmid))
}

/// `/nodes/{node}/{qemu|lxc}/{vmid}/config`.
pub(crate) fn config_path(kind: GuestKind, node: &str, vmid: u32) -> String {
    format!("{}/config", guest_path(kind, node, vmid))
}

/// Whether the guest's config must be read before deciding on `verb`: only
/// when the guest is about to change and `status/current` or the resource
/// list shows a lock (then the config, which Proxmox enforces, decides).
pub(crate) fn lock_needs_config(verb: Verb, live: &LiveStatus, listed_lock: Option<&str>) -> bool {
    !verb.already_desired(&live.state) && (live.lock.is_some() || listed_lock.is_some())
}

/// The lock that decides, and where it was read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LockReading {
    pub lock: Option<String>,
    /// `config`, or `status/current` when the config was not (or could not be) read.
    pub source: &'static str,
    /// Why the config could not be read, when it could not.
    pub config_error: Option<String>,
}

impl LockReading {
    /// The config's lock when it was read, else the one `status/current` reported.
    pub(crate) fn new(live: &LiveStatus, config: Option<&Result<Value, DriverError>>) -> Self {
        match config {
            Some(Ok(cfg)) => LockReading {
                lock: str_field(cfg, "lock").filter(|l| !l.is_empty()),
                source: "config",
                config_error: None,
            },
            Some(Err(e)) => LockReading {
                lock: live.lock.clone(),
                source: "status/current",
                config_error: Some(e.message.clone()),
            },
            None => LockReading {
                lock: live.lock.clone(),
                source: "status/current",
                config_error: None,
            },
        }
    }
}

/// The POST a power verb sends: endpoint and body (numbers as the API takes them).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PowerRequest {
    pub endpoint: String,
    pub body: Vec<(&'static str, Value)>,
}

impl PowerRequest {
    pub(crate) fn guest(
        kind: GuestKind,
        node: &str,
        vmid: u32,
        verb: Verb,
        params: &PowerParams,
    ) -> Self {
        let mut body = Vec::new();
        if verb == Verb::Shutdown {
            body.push(("timeout", json!(params.grace_s)));
            if params.force_after_grace {
                body.push(("forceStop", json!(1)));
            }
        }
        PowerRequest {
            endpoint: format!("{}/status/{}", guest_path(kind, node, vmid), verb.api()),
            body,
        }
    }

    pub(crate) fn node(node: &str, verb: NodeVerb) -> Self {
        PowerRequest {
            endpoint: format!("/nodes/{node}/status"),
            body: vec![("command", json!(verb.command()))],
        }
    }

    /// The body as `application/x-www-form-urlencoded` pairs (booleans as `0`/`1`).
    pub(crate) fn form(&self) -> Vec<(&'static str, String)> {
        self.body
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect()
    }

    /// The preview entry: `{"method":"POST","endpoint":...,"body":{...}}`.
    pub(crate) fn preview(&self) -> Value {
        let mut call = Map::new();
        call.insert("method".into(), json!("POST"));
        call.insert("endpoint".into(), json!(self.endpoint));
        if !self.body.is_empty() {
            let body: Map<String, Value> = self
                .body
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect();
            call.insert("body".into(), Value::Object(body));
        }
        Value::Object(call)
    }
}

fn get_call(endpoint: impl Into<String>) -> Value {
    json!({"method": "GET", "endpoint": endpoint.into()})
}

/// A task that is still running on a node, from its active task list.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunningTask {
    pub upid: String,
    pub task_type: String,
    pub id: String,
}

fn running_tasks(data: &Value) -> Vec<RunningTask> {
    data.as_array()
        .into_iter()
        .flatten()
        .filter(|t| match str_field(t, "status") {
            Some(s) => s.eq_ignore_ascii_case("running"),
            None => t.get("endtime").is_none(),
        })
        .map(|t| RunningTask {
            upid: str_field(t, "upid").unwrap_or_default(),
            task_type: str_field(t, "type").unwrap_or_default(),
            id: str_field(t, "id").unwrap_or_default(),
        })
        .collect()
}

/// Dry-run of one action over all its targets on this host.
pub(crate) async fn dry_run(
    client: &ApiClient,
    keys: &HostKeys,
    action: &Action,
    targets: &[String],
    deadline: Instant,
) -> Result<Vec<DryRunAnswer>, DriverError> {
    let api = client.for_capability(&action.capability);
    match action.capability.as_str() {
        CAP_VM | CAP_CT => guest_dry_run(api, keys, action, targets, deadline).await,
        CAP_NODE => node_dry_run(api, keys, action, targets, deadline).await,
        other => Err(DriverError::new(
            ErrorKind::ValidationError,
            format!("proxmox.ve has no capability {other:?}"),
        )),
    }
}

/// Parses every target of a guest capability up front (a wrong type fails the call).
pub(crate) fn guest_targets(
    action: &Action,
    targets: &[String],
) -> Result<Vec<(GuestKind, u32)>, DriverError> {
    targets
        .iter()
        .map(|t| match parse_target(&action.capability, t)? {
            TargetRef::Guest { kind, vmid } => Ok((kind, vmid)),
            TargetRef::Node(_) => Err(DriverError::new(
                ErrorKind::ValidationError,
                format!("{t:?} is not a guest target"),
            )),
        })
        .collect()
}

/// Up to this many guests, a dry-run reads each one's status (exact
/// `qmpstatus` and HA state); beyond, it uses the cluster resource list
/// (see [`guest_dry_run`]). Equal to the `proxmox.vm` rate limit's burst.
pub(crate) const PER_GUEST_STATUS_MAX: usize = 20;

async fn guest_dry_run(
    api: Calls<'_>,
    keys: &HostKeys,
    action: &Action,
    targets: &[String],
    deadline: Instant,
) -> Result<Vec<DryRunAnswer>, DriverError> {
    let verb = Verb::parse(&action.capability, &action.verb)?;
    let params = PowerParams::parse(action)?;
    let refs = guest_targets(action, targets)?;
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    let resources = lookup_guests(api, Some(deadline)).await?;
    let index = resources.index();
    let found: Vec<Option<&ResourceGuest>> =
        refs.iter().map(|key| index.get(key).copied()).collect();

    let nodes: BTreeSet<&str> = found.iter().flatten().map(|g| g.node.as_str()).collect();
    let task_lists = join_all(nodes.iter().map(|node| async move {
        let query = [
            ("source", "active".to_string()),
            ("limit", "500".to_string()),
        ];
        let answer = api
            .get(&format!("/nodes/{node}/tasks"), &query, Some(deadline))
            .await;
        (node.to_string(), answer.map(|data| running_tasks(&data)))
    }));
    // States, then the configs of the locked guests among them, while the
    // task lists are read.
    // One status call per guest reads `qmpstatus` (paused, suspended) and
    // the HA state exactly; past PER_GUEST_STATUS_MAX guests those calls
    // would not fit the refresh SLA under the capability's rate limit
    // (10 calls/s: 1 000 VMs would take 100 s), so the cluster resource
    // list, already read, is the batch: its `status`, `lock` and `hastate`
    // per guest (a paused VM then reads as running).
    let batched = found.len() > PER_GUEST_STATUS_MAX;
    let states_then_locks = async {
        let statuses: Vec<Option<Result<LiveStatus, DriverError>>> =
            join_all(found.iter().map(|guest| async move {
                let g = (*guest)?;
                if batched {
                    return Some(Ok(LiveStatus::parse(&serde_json::json!({
                        "status": g.status,
                        "lock": g.lock,
                        "ha": {"managed": u8::from(g.hastate.is_some())},
                    }))));
                }
                let path = status_path(g.kind, &g.node, g.vmid);
                Some(
                    api.get(&path, &[], Some(deadline))
                        .await
                        .map(|data| LiveStatus::parse(&data)),
                )
            }))
            .await;
        let configs: Vec<Option<Result<Value, DriverError>>> = join_all(
            found
                .iter()
                .zip(&statuses)
                .map(|(guest, status)| async move {
                    let g = (*guest)?;
                    let live = status.as_ref()?.as_ref().ok()?;
                    if !lock_needs_config(verb, live, g.lock.as_deref()) {
                        return None;
                    }
                    let path = config_path(g.kind, &g.node, g.vmid);
                    Some(api.get(&path, &[], Some(deadline)).await)
                }),
        )
        .await;
        (statuses, configs)
    };
    let (task_lists, (statuses, configs)) = tokio::join!(task_lists, states_then_locks);
    let task_lists: BTreeMap<String, Result<Vec<RunningTask>, DriverError>> =
        task_lists.into_iter().collect();

    let answers = targets
        .iter()
        .zip(refs)
        .zip(found)
        .zip(statuses)
        .zip(configs)
        .map(|((((target, (kind, vmid)), guest), status), config)| {
            let ctx = GuestCtx {
                keys,
                action,
                target,
                kind,
                vmid,
                verb,
                params: &params,
            };
            match (guest, status) {
                (Some(g), Some(status)) => ctx.answer(g, status, config, task_lists.get(&g.node)),
                _ => ctx.missing(resources.other_kind(kind, vmid)),
            }
        })
        .collect();
    Ok(answers)
}

/// One target of a guest dry-run.
struct GuestCtx<'a> {
    keys: &'a HostKeys,
    action: &'a Action,
    target: &'a str,
    kind: GuestKind,
    vmid: u32,
    verb: Verb,
    params: &'a PowerParams,
}

/// The answer for a target already in the desired state: `info`, no change.
fn no_change(
    key: String,
    preconditions: Vec<Precondition>,
    preview: Vec<Value>,
    per_target: Vec<TargetEffect>,
    reason: String,
) -> DryRunAnswer {
    DryRunAnswer {
        ok: true,
        severity: Severity::Info,
        idempotency_key: key,
        preconditions,
        plan: Plan {
            kind: "api".into(),
            preview,
        },
        effects: Effects {
            summary: "no change".into(),
            per_target,
        },
        reason: Some(reason),
    }
}

fn check(name: &str, ok: bool, details: Option<Value>) -> Precondition {
    Precondition {
        check: name.to_string(),
        ok,
        details,
    }
}

impl GuestCtx<'_> {
    fn lookup_preview(&self) -> Value {
        get_call(format!("{RESOURCES_PATH}?type=vm"))
    }

    fn effect(&self, from: Option<&str>, to: Option<&str>) -> Vec<TargetEffect> {
        vec![TargetEffect {
            id: self.target.to_string(),
            from: from.map(str::to_string),
            to: to.map(str::to_string),
        }]
    }

    fn failed(
        &self,
        preconditions: Vec<Precondition>,
        preview: Vec<Value>,
        from: Option<&str>,
        reason: String,
    ) -> DryRunAnswer {
        DryRunAnswer {
            ok: false,
            severity: Severity::Error,
            idempotency_key: self.keys.key(self.action, self.target),
            preconditions,
            plan: Plan {
                kind: "api".into(),
                preview,
            },
            effects: Effects {
                summary: format!(
                    "{} {} cannot be changed: {reason}",
                    self.kind.noun(),
                    self.vmid
                ),
                per_target: self.effect(from, from),
            },
            reason: Some(reason),
        }
    }

    /// The target is not in the cluster's resource list.
    fn missing(&self, other: Option<GuestKind>) -> DryRunAnswer {
        let mut details = json!({"vmid": self.vmid});
        let mut reason = format!(
            "{} {} not found in the cluster",
            self.kind.noun(),
            self.vmid
        );
        if let Some(other) = other {
            let hint = format!(
                "vmid {} is a {} ({}:{})",
                self.vmid,
                other.noun(),
                other.target_type(),
                self.vmid
            );
            details["hint"] = json!(hint);
            reason = format!("{reason}; {hint}");
        }
        let preconditions = vec![
            check("auth", true, None),
            check("vm_exists", false, Some(details)),
        ];
        self.failed(preconditions, vec![self.lookup_preview()], None, reason)
    }

    fn answer(
        &self,
        guest: &ResourceGuest,
        status: Result<LiveStatus, DriverError>,
        config: Option<Result<Value, DriverError>>,
        tasks: Option<&Result<Vec<RunningTask>, DriverError>>,
    ) -> DryRunAnswer {
        let status_endpoint = status_path(self.kind, &guest.node, self.vmid);
        let mut preview = vec![self.lookup_preview(), get_call(&status_endpoint)];
        let exists = check(
            "vm_exists",
            true,
            Some(json!({"node": guest.node, "type": self.kind.api()})),
        );
        let live = match status {
            Ok(live) => live,
            Err(e) if e.kind == ErrorKind::AuthError => {
                let pre = vec![check("auth", false, Some(json!({"error": e.message})))];
                return self.failed(pre, preview, None, e.to_string());
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                let pre = vec![
                    check("auth", true, None),
                    check(
                        "vm_exists",
                        false,
                        Some(json!({"node": guest.node, "error": e.message})),
                    ),
                ];
                return self.failed(pre, preview, None, e.to_string());
            }
            Err(e) => {
                let details = json!({"error": e.message, "kind": e.kind.as_str()});
                let pre = vec![
                    check("auth", true, None),
                    exists,
                    check("vm_state", false, Some(details)),
                ];
                return self.failed(pre, preview, None, e.to_string());
            }
        };

        let state = live.state.as_str().to_string();
        let already = self.verb.already_desired(&live.state);
        let desired = self.verb.desired();
        let mut failures: Vec<String> = Vec::new();

        if config.is_some() {
            preview.push(get_call(config_path(self.kind, &guest.node, self.vmid)));
        }
        let lock = LockReading::new(&live, config.as_ref());
        let lock_ok = match &lock.lock {
            None => true,
            Some(l) => already || self.verb.lock_allows(l),
        };
        let mut lock_details = json!({"lock": lock.lock, "source": lock.source});
        if let Some(e) = &lock.config_error {
            lock_details["config_error"] = json!(e);
        }
        if !lock_ok {
            failures.push(format!(
                "{} is locked ({})",
                self.kind.noun(),
                lock.lock.as_deref().unwrap_or("")
            ));
        } else if lock.lock.is_some() && already {
            lock_details["ignored"] = json!("already in the desired state");
        }

        let refusal = if already {
            None
        } else {
            self.verb.refusal(
                self.kind,
                self.vmid,
                &live.state,
                self.params.force_after_grace,
            )
        };
        let mut state_details = json!({"state": state, "node": guest.node});
        if live.ha_managed {
            state_details["ha_managed"] = json!(true);
        }
        if let Some(r) = &refusal {
            failures.push(r.clone());
        }

        let mut warnings: Vec<String> = Vec::new();
        let vmid_text = self.vmid.to_string();
        let pending = match tasks {
            Some(Ok(list)) => {
                let mine: Vec<&RunningTask> = list.iter().filter(|t| t.id == vmid_text).collect();
                if !mine.is_empty() && !already {
                    let kinds: Vec<&str> = mine.iter().map(|t| t.task_type.as_str()).collect();
                    warnings.push(format!(
                        "{} task(s) still running on {} {} ({}); the action may wait for them or fail",
                        mine.len(),
                        self.kind.noun(),
                        self.vmid,
                        kinds.join(", ")
                    ));
                }
                let upids: Vec<&str> = mine.iter().map(|t| t.upid.as_str()).collect();
                check(
                    "pending_tasks",
                    mine.is_empty(),
                    Some(json!({"running": upids})),
                )
            }
            Some(Err(e)) => {
                warnings.push(format!("pending tasks not checked: {e}"));
                check("pending_tasks", true, Some(json!({"unchecked": e.message})))
            }
            None => check(
                "pending_tasks",
                true,
                Some(json!({"unchecked": "no task list"})),
            ),
        };

        let preconditions = vec![
            check("auth", true, None),
            exists,
            check("vm_lock", lock_ok, Some(lock_details)),
            check("vm_state", refusal.is_none(), Some(state_details)),
            pending,
            check(
                "no_op",
                true,
                Some(json!({"already_desired": already, "desired": desired.as_str()})),
            ),
        ];

        if let Some(reason) = failures.into_iter().next() {
            return self.failed(preconditions, preview, Some(&state), reason);
        }
        let key = self.keys.key(self.action, self.target);
        if already {
            let per_target = self.effect(Some(&state), Some(&state));
            let reason = format!("{} is already {state}", self.target);
            return no_change(key, preconditions, preview, per_target, reason);
        }
        let request =
            PowerRequest::guest(self.kind, &guest.node, self.vmid, self.verb, self.params);
        preview.push(request.preview());
        preview.push(json!({
            "method": "GET",
            "endpoint": format!("/nodes/{}/tasks/{{upid}}/status", guest.node),
            "repeat": "until the task is stopped",
        }));
        preview.push(get_call(status_endpoint));
        let mut summary = format!(
            "{} {} {} ({state} -> {})",
            self.kind.noun(),
            self.vmid,
            self.verb.effect_phrase(),
            desired.as_str()
        );
        if live.ha_managed {
            summary.push_str("; HA-managed, the cluster may change it again");
        }
        DryRunAnswer {
            ok: true,
            severity: if warnings.is_empty() {
                Severity::Info
            } else {
                Severity::Warn
            },
            idempotency_key: key,
            preconditions,
            plan: Plan {
                kind: "api".into(),
                preview,
            },
            effects: Effects {
                summary,
                per_target: self.effect(Some(&state), Some(desired.as_str())),
            },
            reason: warnings.into_iter().next(),
        }
    }
}

/// Node names and states from `GET /nodes`.
pub(crate) async fn lookup_nodes(
    api: Calls<'_>,
    deadline: Option<Instant>,
) -> Result<BTreeMap<String, String>, DriverError> {
    let data = api.get("/nodes", &[], deadline).await?;
    Ok(data
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            Some((
                str_field(n, "node")?,
                str_field(n, "status").unwrap_or_else(|| "unknown".into()),
            ))
        })
        .collect())
}

/// Parses node targets of `proxmox.node`.
pub(crate) fn node_targets(
    action: &Action,
    targets: &[String],
) -> Result<Vec<String>, DriverError> {
    targets
        .iter()
        .map(|t| match parse_target(&action.capability, t)? {
            TargetRef::Node(n) => Ok(n),
            TargetRef::Guest { .. } => Err(DriverError::new(
                ErrorKind::ValidationError,
                format!("{t:?} is not a host target"),
            )),
        })
        .collect()
}

async fn node_dry_run(
    api: Calls<'_>,
    keys: &HostKeys,
    action: &Action,
    targets: &[String],
    deadline: Instant,
) -> Result<Vec<DryRunAnswer>, DriverError> {
    let verb = NodeVerb::parse(&action.verb)?;
    let names = node_targets(action, targets)?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let nodes = lookup_nodes(api, Some(deadline)).await?;
    let answers = targets
        .iter()
        .zip(names)
        .map(|(target, name)| {
            let key = keys.key(action, target);
            let mut preview = vec![get_call("/nodes")];
            let effect = |from: Option<&str>, to: Option<&str>| {
                vec![TargetEffect {
                    id: target.clone(),
                    from: from.map(str::to_string),
                    to: to.map(str::to_string),
                }]
            };
            let Some(state) = nodes.get(&name) else {
                let reason = format!("node {name} is not a member of this cluster");
                return DryRunAnswer {
                    ok: false,
                    severity: Severity::Error,
                    idempotency_key: key,
                    preconditions: vec![
                        check("auth", true, None),
                        check(
                            "node_exists",
                            false,
                            Some(json!({"known": nodes.keys().collect::<Vec<_>>()})),
                        ),
                    ],
                    plan: Plan {
                        kind: "api".into(),
                        preview,
                    },
                    effects: Effects {
                        summary: reason.clone(),
                        per_target: effect(None, None),
                    },
                    reason: Some(reason),
                };
            };
            let online = state == "online";
            let no_op = !online && verb == NodeVerb::Shutdown;
            let mut preconditions = vec![
                check("auth", true, None),
                check("node_exists", true, None),
                check("node_state", online || no_op, Some(json!({"state": state}))),
            ];
            preconditions.push(check(
                "no_op",
                true,
                Some(json!({"already_desired": no_op})),
            ));
            if no_op {
                let per_target = effect(Some(state), Some(state));
                let reason = format!("node {name} is already {state}");
                return no_change(key, preconditions, preview, per_target, reason);
            }
            if !online {
                let reason =
                    format!("node {name} is {state}; it cannot be rebooted through the API");
                return DryRunAnswer {
                    ok: false,
                    severity: Severity::Error,
                    idempotency_key: key,
                    preconditions,
                    plan: Plan {
                        kind: "api".into(),
                        preview,
                    },
                    effects: Effects {
                        summary: reason.clone(),
                        per_target: effect(Some(state), Some(state)),
                    },
                    reason: Some(reason),
                };
            }
            preview.push(PowerRequest::node(&name, verb).preview());
            let (to, summary) = match verb {
                NodeVerb::Shutdown => ("offline", format!("node {name} would power off")),
                NodeVerb::Reboot => ("online", format!("node {name} would reboot")),
            };
            DryRunAnswer {
                ok: true,
                severity: Severity::Info,
                idempotency_key: key,
                preconditions,
                plan: Plan {
                    kind: "api".into(),
                    preview,
                },
                effects: Effects {
                    summary,
                    per_target: effect(Some(state), Some(to)),
                },
                reason: None,
            }
        })
        .collect();
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_request_carries_grace_and_force_only_when_asked() {
        let p = PowerParams {
            grace_s: 60,
            force_after_grace: false,
            timeout_s: None,
        };
        let r = PowerRequest::guest(GuestKind::Qemu, "pve1", 104, Verb::Shutdown, &p);
        assert_eq!(
            r.preview(),
            json!({"method":"POST","endpoint":"/nodes/pve1/qemu/104/status/shutdown","body":{"timeout":60}})
        );
        let forced = PowerRequest::guest(
            GuestKind::Lxc,
            "pve2",
            201,
            Verb::Shutdown,
            &PowerParams {
                force_after_grace: true,
                ..p
            },
        );
        assert_eq!(
            forced.form(),
            vec![
                ("timeout", "60".to_string()),
                ("forceStop", "1".to_string())
            ]
        );
        assert_eq!(forced.endpoint, "/nodes/pve2/lxc/201/status/shutdown");
        let start = PowerRequest::guest(GuestKind::Qemu, "pve1", 104, Verb::Start, &p);
        assert_eq!(
            start.preview(),
            json!({"method":"POST","endpoint":"/nodes/pve1/qemu/104/status/start"})
        );
    }

    #[test]
    fn only_running_tasks_count_as_pending() {
        let data = json!([
            {"upid":"UPID:pve1:1:1:1:vzdump:104:root@pam:","type":"vzdump","id":"104","status":"RUNNING"},
            {"upid":"UPID:pve1:2:2:2:qmstart:105:root@pam:","type":"qmstart","id":"105","status":"OK","endtime":5}
        ]);
        let tasks = running_tasks(&data);
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].id, "104");
    }
}
