//! Running a power action: look up every target's node in one call, read
//! each guest's live state (already there -> nothing is sent), read its
//! config when a lock shows (the same rule as the dry-run: the config's lock
//! decides), POST the verb, poll the returned UPID until the task stops, and
//! read the state again to report what the guest really is now. Evidence
//! carries the node, the request, the POST's HTTP status, the UPID and the
//! task's exit status. A start whose task fails with
//! "already running" (Proxmox's answer to starting a running VM) counts as
//! already-desired, not as a failure; an HA-managed guest that the cluster
//! moved back is reported with a warning and the state found.

use std::time::Duration;

use futures::future::join_all;
use inventory::Severity;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::client::{classify_text, ApiClient, Calls, Posted};
use super::dry_run::{
    config_path, guest_targets, lock_needs_config, lookup_guests, lookup_nodes, node_targets,
    status_path, LockReading, PowerRequest,
};
use super::model::{
    str_field, upid_node, GuestKind, GuestState, LiveStatus, NodeVerb, PowerParams, ResourceGuest,
    Verb,
};
use super::{CAP_CT, CAP_NODE, CAP_VM};
use crate::driver::{Action, DriverError, ErrorKind, ExecOutcome};
use crate::ratelimit::Backoff;
use crate::task::{report_task, TaskHandle, TaskStatus};

/// Extra seconds over `grace_s` the driver waits for a task by default
/// (a forced stop kills the guest 10 s after the grace).
const TASK_TIMEOUT_MARGIN_S: u64 = 30;
/// First and longest wait between two polls of a task's status.
const POLL_START: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(1);
/// How long an HA-managed guest may take to reach the state after its
/// (queued) request task ended; the HA loop acts every ~10 s.
const HA_SETTLE: Duration = Duration::from_secs(30);

/// Executes one action over all its targets on this host.
pub(crate) async fn execute(
    client: &ApiClient,
    action: &Action,
    targets: &[String],
    api_node: &str,
) -> Result<Vec<ExecOutcome>, DriverError> {
    let api = client.for_capability(&action.capability);
    match action.capability.as_str() {
        CAP_VM | CAP_CT => guest_execute(api, action, targets).await,
        CAP_NODE => node_execute(api, action, targets, api_node).await,
        other => Err(DriverError::new(
            ErrorKind::ValidationError,
            format!("proxmox.ve has no capability {other:?}"),
        )),
    }
}

/// Collects the evidence of one target's run and builds its outcome.
struct Report {
    target: String,
    started: Instant,
    evidence: Map<String, Value>,
}

impl Report {
    fn new(target: &str) -> Self {
        Report {
            target: target.to_string(),
            started: Instant::now(),
            evidence: Map::new(),
        }
    }

    fn note(&mut self, key: &str, value: impl Into<Value>) {
        self.evidence.insert(key.to_string(), value.into());
    }

    /// Notes the POST's HTTP status and hands back what it answered.
    fn posted(&mut self, posted: Posted) -> Result<Value, DriverError> {
        if let Some(status) = posted.http_status {
            self.note("http_status", status);
        }
        posted.result
    }

    fn finish(
        self,
        ok: bool,
        severity: Severity,
        code: &str,
        reason: Option<String>,
        result_state: Option<String>,
    ) -> ExecOutcome {
        ExecOutcome {
            target: self.target,
            ok,
            severity,
            code: code.to_string(),
            reason,
            evidence: self.evidence,
            duration_ms: self.started.elapsed().as_millis() as u64,
            result_state,
        }
    }

    fn error(mut self, e: &DriverError, result_state: Option<String>) -> ExecOutcome {
        self.note("error_kind", e.kind.as_str());
        self.finish(
            false,
            Severity::Error,
            &e.code(),
            Some(e.message.clone()),
            result_state,
        )
    }
}

async fn guest_execute(
    api: Calls<'_>,
    action: &Action,
    targets: &[String],
) -> Result<Vec<ExecOutcome>, DriverError> {
    let verb = Verb::parse(&action.capability, &action.verb)?;
    let params = PowerParams::parse(action)?;
    let refs = guest_targets(action, targets)?;
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    let resources = lookup_guests(api, None).await?;
    let index = resources.index();
    let runs = targets.iter().zip(refs).map(|(target, (kind, vmid))| {
        let guest = index.get(&(kind, vmid)).copied();
        let other = resources.other_kind(kind, vmid);
        run_guest(api, target, kind, vmid, guest, other, verb, params)
    });
    Ok(join_all(runs).await)
}

#[allow(clippy::too_many_arguments)]
async fn run_guest(
    api: Calls<'_>,
    target: &str,
    kind: GuestKind,
    vmid: u32,
    guest: Option<&ResourceGuest>,
    other: Option<GuestKind>,
    verb: Verb,
    params: PowerParams,
) -> ExecOutcome {
    let mut report = Report::new(target);
    let Some(guest) = guest else {
        let mut message = format!("{} {vmid} not found in the cluster", kind.noun());
        if let Some(other) = other {
            message.push_str(&format!(
                "; vmid {vmid} is a {} ({}:{vmid})",
                other.noun(),
                other.target_type()
            ));
        }
        return report.error(&DriverError::new(ErrorKind::NotFound, message), None);
    };
    let node = guest.node.clone();
    report.note("node", node.clone());
    let status_endpoint = status_path(kind, &node, vmid);

    let before = match api.get(&status_endpoint, &[], None).await {
        Ok(data) => LiveStatus::parse(&data),
        Err(e) => return report.error(&e, None),
    };
    report.note("state_before", before.state.as_str());
    if verb.already_desired(&before.state) {
        let state = before.state.as_str().to_string();
        return report.finish(
            true,
            Severity::Info,
            "driver.already_desired",
            Some(format!("{target} is already {state}")),
            Some(state),
        );
    }
    let config = if lock_needs_config(verb, &before, guest.lock.as_deref()) {
        Some(api.get(&config_path(kind, &node, vmid), &[], None).await)
    } else {
        None
    };
    let lock = LockReading::new(&before, config.as_ref());
    if let Some(e) = &lock.config_error {
        report.note("config_error", e.clone());
    }
    if lock.lock.is_some() {
        report.note("lock_source", lock.source);
    }
    if let Some(lock) = lock.lock.as_deref().filter(|l| !verb.lock_allows(l)) {
        report.note("lock", lock);
        let e = DriverError::new(
            ErrorKind::ValidationError,
            format!("{} is locked ({lock})", kind.noun()),
        );
        return report.error(&e, Some(before.state.as_str().to_string()));
    }
    if let Some(refusal) = verb.refusal(kind, vmid, &before.state, params.force_after_grace) {
        let e = DriverError::new(ErrorKind::ValidationError, refusal);
        return report.error(&e, Some(before.state.as_str().to_string()));
    }

    let request = PowerRequest::guest(kind, &node, vmid, verb, &params);
    report.note("request", request.preview());
    let posted = api.post(&request.endpoint, &request.form(), None).await;
    let upid = match report.posted(posted) {
        Ok(Value::String(upid)) => upid,
        Ok(other) => {
            let e = DriverError::new(
                ErrorKind::Unknown,
                format!("expected a task id (UPID), got {other}"),
            );
            return report.error(&e, None);
        }
        Err(e) => return report.error(&e, None),
    };
    report.note("upid", upid.clone());
    // The engine persists the UPID now, so an agent killed while the task
    // runs reads the task at its next start instead of guessing.
    report_task(TaskHandle {
        target: target.to_string(),
        handle: upid.clone(),
    });

    let timeout = Duration::from_secs(
        params
            .timeout_s
            .unwrap_or(params.grace_s + TASK_TIMEOUT_MARGIN_S),
    );
    let deadline = report.started + timeout;
    let task_node = upid_node(&upid).unwrap_or(&node).to_string();
    let exit = match poll_task(api, &task_node, &upid, deadline, timeout).await {
        Ok(exit) => exit,
        Err(e) => {
            let after = read_state(api, &status_endpoint).await;
            return report.error(&e, after.map(|s| s.as_str().to_string()));
        }
    };
    report.note("exitstatus", exit.clone());

    let desired = verb.desired();
    let task_ok = exit == "OK" || exit.starts_with("WARNINGS");
    let mut after = read_state(api, &status_endpoint).await;
    if task_ok && before.ha_managed && after.as_ref().is_some_and(|s| !verb.already_desired(s)) {
        after = settle(
            api,
            &status_endpoint,
            verb,
            deadline.min(Instant::now() + HA_SETTLE),
            after,
        )
        .await;
    }
    let after_text = after.as_ref().map(|s| s.as_str().to_string());
    let reached = after.as_ref().is_some_and(|s| reached_desired(verb, s));

    if task_ok {
        if reached {
            let severity = if exit == "OK" {
                Severity::Info
            } else {
                Severity::Warn
            };
            let reason = (exit != "OK").then(|| format!("task ended with {exit}"));
            return report.finish(true, severity, "driver.ok", reason, after_text);
        }
        let found = after_text
            .clone()
            .unwrap_or_else(|| "unknown (state read failed)".into());
        let mut reason = format!(
            "task ended {exit} but {target} is {found}, not {}",
            desired.as_str()
        );
        if before.ha_managed {
            reason.push_str(" (HA-managed: the cluster may have changed it again)");
        }
        return report.finish(
            true,
            Severity::Warn,
            "driver.state_not_reached",
            Some(reason),
            after_text,
        );
    }
    if verb == Verb::Start && exit.contains("already running") {
        return report.finish(
            true,
            Severity::Info,
            "driver.already_desired",
            Some(format!("{target} was already running (task said {exit:?})")),
            after_text,
        );
    }
    let kind = classify_text(&exit).unwrap_or(ErrorKind::ServerError);
    report.note("error_kind", kind.as_str());
    report.finish(
        false,
        Severity::Error,
        &format!("driver.{}", kind.as_str()),
        Some(exit),
        after_text,
    )
}

/// `reset` has no state of its own: a running guest after it is success.
fn reached_desired(verb: Verb, state: &GuestState) -> bool {
    match verb {
        Verb::Reset => *state == GuestState::Running,
        _ => verb.already_desired(state),
    }
}

/// Polls `GET /nodes/{node}/tasks/{upid}/status` until the task stops and
/// returns its `exitstatus`. Transient read failures keep the poll going
/// until `deadline`.
async fn poll_task(
    api: Calls<'_>,
    node: &str,
    upid: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<String, DriverError> {
    let path = format!("/nodes/{node}/tasks/{upid}/status");
    let mut backoff = Backoff::new(POLL_START, POLL_MAX);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(DriverError::new(
                ErrorKind::Timeout,
                format!("task {upid} still running after {} s", timeout.as_secs()),
            ));
        }
        tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
        match api.get(&path, &[], Some(deadline)).await {
            Ok(data) => {
                if str_field(&data, "status").as_deref() == Some("stopped") {
                    return Ok(str_field(&data, "exitstatus").unwrap_or_else(|| "unknown".into()));
                }
            }
            Err(e) if e.is_retryable() => {
                tracing::debug!(upid, error = %e, "task status read failed, polling on");
            }
            Err(e) => return Err(e),
        }
    }
}

/// One read of the task a UPID names (`GET /nodes/{node}/tasks/{upid}/status`,
/// the node taken from the UPID): running, or stopped with its exit status
/// (`OK` and `WARNINGS: n` succeeded). A UPID the node does not know (400
/// `no such task`, task logs rotated) or cannot be parsed is
/// [`TaskStatus::Unknown`].
pub(crate) async fn task_status(
    client: &ApiClient,
    task: &TaskHandle,
) -> Result<TaskStatus, DriverError> {
    let Some(node) = upid_node(&task.handle) else {
        return Ok(TaskStatus::Unknown);
    };
    let path = format!("/nodes/{node}/tasks/{}/status", task.handle);
    let data = match client.for_any().get(&path, &[], None).await {
        Ok(data) => data,
        Err(e) if matches!(e.kind, ErrorKind::ValidationError | ErrorKind::NotFound) => {
            return Ok(TaskStatus::Unknown)
        }
        Err(e) => return Err(e),
    };
    Ok(match str_field(&data, "status").as_deref() {
        Some("running") => TaskStatus::Running,
        Some("stopped") => {
            let exit = str_field(&data, "exitstatus").unwrap_or_else(|| "unknown".into());
            if exit == "OK" || exit.starts_with("WARNINGS") {
                TaskStatus::Succeeded { exit }
            } else {
                TaskStatus::Failed { exit }
            }
        }
        _ => TaskStatus::Unknown,
    })
}

/// One best-effort state read; `None` when it fails.
async fn read_state(api: Calls<'_>, endpoint: &str) -> Option<GuestState> {
    match api.get(endpoint, &[], None).await {
        Ok(data) => Some(LiveStatus::parse(&data).state),
        Err(e) => {
            tracing::warn!(endpoint, error = %e, "state read after the task failed");
            None
        }
    }
}

/// Re-reads an HA-managed guest until it reaches the verb's state or `until`.
async fn settle(
    api: Calls<'_>,
    endpoint: &str,
    verb: Verb,
    until: Instant,
    mut last: Option<GuestState>,
) -> Option<GuestState> {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
    loop {
        let now = Instant::now();
        if now >= until {
            return last;
        }
        tokio::time::sleep(backoff.next_delay().min(until - now)).await;
        if let Some(state) = read_state(api, endpoint).await {
            if verb.already_desired(&state) {
                return Some(state);
            }
            // The guest is moving: look again soon.
            if last.as_ref() != Some(&state) {
                backoff.reset();
            }
            last = Some(state);
        }
    }
}

async fn node_execute(
    api: Calls<'_>,
    action: &Action,
    targets: &[String],
    api_node: &str,
) -> Result<Vec<ExecOutcome>, DriverError> {
    let verb = NodeVerb::parse(&action.verb)?;
    let names = node_targets(action, targets)?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let nodes = lookup_nodes(api, None).await?;
    // The node whose API we talk to goes last: once it powers off, calls
    // for the others could no longer be proxied.
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by_key(|&i| names[i] == api_node);
    let mut outcomes: Vec<Option<ExecOutcome>> = vec![None; names.len()];
    for i in order {
        let (target, name) = (&targets[i], &names[i]);
        let mut report = Report::new(target);
        report.note("node", name.clone());
        let outcome = match nodes.get(name).map(String::as_str) {
            None => {
                let e = DriverError::new(
                    ErrorKind::NotFound,
                    format!("node {name} is not a member of this cluster"),
                );
                report.error(&e, None)
            }
            Some(state) if state != "online" && verb == NodeVerb::Shutdown => report.finish(
                true,
                Severity::Info,
                "driver.already_desired",
                Some(format!("node {name} is already {state}")),
                Some(state.to_string()),
            ),
            Some(state) if state != "online" => {
                let e = DriverError::new(
                    ErrorKind::ValidationError,
                    format!("node {name} is {state}"),
                );
                report.error(&e, Some(state.to_string()))
            }
            Some(_) => {
                let request = PowerRequest::node(name, verb);
                report.note("request", request.preview());
                let posted = api.post(&request.endpoint, &request.form(), None).await;
                match report.posted(posted) {
                    Ok(_) => report.finish(
                        true,
                        Severity::Info,
                        "driver.ok",
                        Some(format!(
                            "node {name} accepted {}; it acts about 2 s later",
                            verb.command()
                        )),
                        None,
                    ),
                    Err(e) => report.error(&e, None),
                }
            }
        };
        outcomes[i] = Some(outcome);
    }
    Ok(outcomes.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reset_succeeds_when_the_guest_runs_afterwards() {
        assert!(reached_desired(Verb::Reset, &GuestState::Running));
        assert!(!reached_desired(Verb::Reset, &GuestState::Stopped));
        assert!(reached_desired(Verb::Suspend, &GuestState::Paused));
    }

    #[test]
    fn report_errors_carry_the_kind_code() {
        let e = DriverError::new(ErrorKind::Timeout, "slow");
        let out = Report::new("vm:104").error(&e, None);
        assert_eq!(out.code, "driver.timeout");
        assert_eq!(out.evidence["error_kind"], json!("timeout"));
    }
}
