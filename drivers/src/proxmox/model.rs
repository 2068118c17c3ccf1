//! What the driver reads from the API, parsed leniently (numbers may come as
//! strings, booleans as `0`/`1` or `true`/`false`), and the verb table that
//! says which state each power verb leads to and from which states it may
//! run. Pure data: no IO here.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use super::{CAP_CT, CAP_NODE, CAP_VM};
use crate::driver::{Action, DriverError, ErrorKind};

/// QEMU VM or LXC container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum GuestKind {
    Qemu,
    Lxc,
}

impl GuestKind {
    /// Path segment of the API (`qemu`, `lxc`), also the `type` in `/cluster/resources`.
    pub(crate) fn api(self) -> &'static str {
        match self {
            GuestKind::Qemu => "qemu",
            GuestKind::Lxc => "lxc",
        }
    }

    /// Hazel's target type (`vm`, `ct`).
    pub(crate) fn target_type(self) -> &'static str {
        match self {
            GuestKind::Qemu => "vm",
            GuestKind::Lxc => "ct",
        }
    }

    /// The capability that powers it (`proxmox.vm`, `proxmox.ct`), whose
    /// `rate_limit` its per-guest reads count against.
    pub(crate) fn capability(self) -> &'static str {
        match self {
            GuestKind::Qemu => CAP_VM,
            GuestKind::Lxc => CAP_CT,
        }
    }

    /// How messages name it.
    pub(crate) fn noun(self) -> &'static str {
        match self {
            GuestKind::Qemu => "VM",
            GuestKind::Lxc => "container",
        }
    }
}

/// A target of one call, parsed from its canonical id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetRef {
    Guest { kind: GuestKind, vmid: u32 },
    Node(String),
}

/// Parses `vm:104` / `ct:201` / `host:pve1` for `capability`; a target of
/// the wrong type for the capability is a validation error of the whole call.
pub(crate) fn parse_target(capability: &str, target: &str) -> Result<TargetRef, DriverError> {
    let invalid = |why: &str| {
        DriverError::new(
            ErrorKind::ValidationError,
            format!("target {target:?} is not valid for {capability}: {why}"),
        )
    };
    let (ty, id) = target
        .split_once(':')
        .ok_or_else(|| invalid("expected <type>:<id>"))?;
    let kind = match (capability, ty) {
        (CAP_VM, "vm") => GuestKind::Qemu,
        (CAP_CT, "ct") => GuestKind::Lxc,
        (CAP_NODE, "host") => {
            if id.is_empty() {
                return Err(invalid("empty node name"));
            }
            return Ok(TargetRef::Node(id.to_string()));
        }
        (CAP_VM, _) => return Err(invalid("expected a vm:<vmid> target")),
        (CAP_CT, _) => return Err(invalid("expected a ct:<vmid> target")),
        (CAP_NODE, _) => return Err(invalid("expected a host:<node> target")),
        _ => return Err(invalid("unknown capability")),
    };
    let vmid: u32 = id
        .parse()
        .map_err(|_| invalid("the id must be a numeric vmid"))?;
    if vmid < 100 {
        return Err(invalid("vmids start at 100"));
    }
    Ok(TargetRef::Guest { kind, vmid })
}

/// A guest as `/cluster/resources` lists it (cached, may lag the live state).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResourceGuest {
    pub vmid: u32,
    pub kind: GuestKind,
    pub node: String,
    pub name: Option<String>,
    pub status: Option<String>,
    pub lock: Option<String>,
    pub tags: Option<String>,
    pub template: bool,
    pub hastate: Option<String>,
    pub pool: Option<String>,
    pub maxcpu: Option<Value>,
    pub maxmem: Option<Value>,
}

/// A node as `/cluster/resources` or `/nodes` lists it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResourceNode {
    pub node: String,
    pub status: Option<String>,
}

/// The guests and nodes of a `/cluster/resources` answer, in answer order;
/// storage, pools and SDN entries are skipped.
#[derive(Debug, Default, Clone)]
pub(crate) struct Resources {
    pub guests: Vec<ResourceGuest>,
    pub nodes: Vec<ResourceNode>,
}

impl Resources {
    pub(crate) fn parse(data: &Value) -> Resources {
        let mut out = Resources::default();
        for item in data.as_array().into_iter().flatten() {
            let ty = str_field(item, "type");
            match ty.as_deref() {
                Some("qemu") | Some("lxc") => {
                    let kind = if ty.as_deref() == Some("qemu") {
                        GuestKind::Qemu
                    } else {
                        GuestKind::Lxc
                    };
                    let vmid = item.get("vmid").and_then(as_u32).or_else(|| {
                        str_field(item, "id")
                            .and_then(|id| id.rsplit('/').next().and_then(|v| v.parse().ok()))
                    });
                    let (Some(vmid), Some(node)) = (vmid, str_field(item, "node")) else {
                        continue;
                    };
                    out.guests.push(ResourceGuest {
                        vmid,
                        kind,
                        node,
                        name: str_field(item, "name"),
                        status: str_field(item, "status"),
                        lock: str_field(item, "lock").filter(|l| !l.is_empty()),
                        tags: str_field(item, "tags").filter(|t| !t.is_empty()),
                        template: item.get("template").is_some_and(truthy),
                        hastate: str_field(item, "hastate"),
                        pool: str_field(item, "pool"),
                        maxcpu: item.get("maxcpu").cloned(),
                        maxmem: item.get("maxmem").cloned(),
                    });
                }
                Some("node") => {
                    if let Some(node) = str_field(item, "node") {
                        out.nodes.push(ResourceNode {
                            node,
                            status: str_field(item, "status"),
                        });
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Guest lookup by kind and vmid.
    pub(crate) fn index(&self) -> HashMap<(GuestKind, u32), &ResourceGuest> {
        self.guests.iter().map(|g| ((g.kind, g.vmid), g)).collect()
    }

    /// Whether some guest has this vmid under the other kind (a `vm:` target that is a container).
    pub(crate) fn other_kind(&self, kind: GuestKind, vmid: u32) -> Option<GuestKind> {
        self.guests
            .iter()
            .find(|g| g.vmid == vmid && g.kind != kind)
            .map(|g| g.kind)
    }
}

/// Proxmox tags to labels: `tier.low` -> `tier = low`, `prod` -> `prod = true`.
/// Tags are `;`-separated in answers; `,` and spaces (config syntax) are accepted too.
pub(crate) fn tags_to_labels(tags: &str) -> BTreeMap<String, String> {
    tags.split([';', ',', ' '])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|tag| match tag.split_once('.') {
            Some((k, v)) if !k.is_empty() => (k.to_string(), v.to_string()),
            _ => (tag.to_string(), "true".to_string()),
        })
        .collect()
}

/// A guest's power state as Hazel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GuestState {
    Running,
    Stopped,
    /// QEMU paused in RAM (`status: running`, `qmpstatus: paused`).
    Paused,
    /// Hibernated to disk (`status: stopped` + `lock: suspended`) or QMP `suspended`.
    Suspended,
    /// Anything else the API reports (`unknown`, `prelaunch`, ...).
    Other(String),
}

impl GuestState {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            GuestState::Running => "running",
            GuestState::Stopped => "stopped",
            GuestState::Paused => "paused",
            GuestState::Suspended => "suspended",
            GuestState::Other(s) => s,
        }
    }
}

/// What `status/current` says about one guest.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LiveStatus {
    pub state: GuestState,
    pub lock: Option<String>,
    pub ha_managed: bool,
}

impl LiveStatus {
    pub(crate) fn parse(data: &Value) -> LiveStatus {
        let status = str_field(data, "status").unwrap_or_else(|| "unknown".into());
        let qmp = str_field(data, "qmpstatus");
        let lock = str_field(data, "lock").filter(|l| !l.is_empty());
        let state = match (status.as_str(), qmp.as_deref()) {
            ("running", Some("paused")) => GuestState::Paused,
            ("running", Some("suspended")) => GuestState::Suspended,
            ("running", _) => GuestState::Running,
            ("stopped", _) if lock.as_deref() == Some("suspended") => GuestState::Suspended,
            ("stopped", _) => GuestState::Stopped,
            (other, _) => GuestState::Other(other.to_string()),
        };
        let ha_managed = data
            .get("ha")
            .and_then(|ha| ha.get("managed"))
            .is_some_and(truthy);
        LiveStatus {
            state,
            lock,
            ha_managed,
        }
    }
}

/// A power verb of `proxmox.vm` / `proxmox.ct`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Start,
    Shutdown,
    Stop,
    Reset,
    Suspend,
    Resume,
}

impl Verb {
    pub(crate) fn parse(capability: &str, verb: &str) -> Result<Verb, DriverError> {
        let v = match verb {
            "start" => Verb::Start,
            "shutdown" => Verb::Shutdown,
            "stop" => Verb::Stop,
            "reset" if capability == CAP_VM => Verb::Reset,
            "suspend" if capability == CAP_VM => Verb::Suspend,
            "resume" if capability == CAP_VM => Verb::Resume,
            _ => {
                return Err(DriverError::new(
                    ErrorKind::ValidationError,
                    format!("{capability} has no verb {verb:?}"),
                ))
            }
        };
        Ok(v)
    }

    /// The `status/{action}` path segment.
    pub(crate) fn api(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Shutdown => "shutdown",
            Verb::Stop => "stop",
            Verb::Reset => "reset",
            Verb::Suspend => "suspend",
            Verb::Resume => "resume",
        }
    }

    /// The state the verb leads to.
    pub(crate) fn desired(self) -> GuestState {
        match self {
            Verb::Start | Verb::Resume | Verb::Reset => GuestState::Running,
            Verb::Shutdown | Verb::Stop => GuestState::Stopped,
            Verb::Suspend => GuestState::Paused,
        }
    }

    /// Whether a guest in `state` needs nothing. `reset` always acts.
    pub(crate) fn already_desired(self, state: &GuestState) -> bool {
        match self {
            Verb::Start | Verb::Resume => *state == GuestState::Running,
            Verb::Shutdown | Verb::Stop => *state == GuestState::Stopped,
            Verb::Suspend => matches!(state, GuestState::Paused | GuestState::Suspended),
            Verb::Reset => false,
        }
    }

    /// Why the verb cannot run from `state` (mirrors the API's own refusals), if it cannot.
    pub(crate) fn refusal(
        self,
        kind: GuestKind,
        vmid: u32,
        state: &GuestState,
        force: bool,
    ) -> Option<String> {
        let noun = kind.noun();
        match (self, state) {
            (_, GuestState::Other(s)) => Some(format!("{noun} {vmid} is in state {s:?}")),
            (Verb::Start, GuestState::Paused) => Some(format!(
                "{noun} {vmid} is paused; use resume to continue it"
            )),
            (Verb::Shutdown, GuestState::Paused) if !force => Some(format!(
                "{noun} {vmid} is paused - cannot shutdown (set force_after_grace or use stop)"
            )),
            (Verb::Reset | Verb::Suspend, GuestState::Stopped | GuestState::Suspended) => {
                Some(format!("{noun} {vmid} not running"))
            }
            (Verb::Resume, GuestState::Stopped) => Some(format!("{noun} {vmid} not running")),
            _ => None,
        }
    }

    /// Whether a config lock lets the verb run (a hibernated guest carries
    /// `lock: suspended` and is woken by start or resume).
    pub(crate) fn lock_allows(self, lock: &str) -> bool {
        lock == "suspended" && matches!(self, Verb::Start | Verb::Resume)
    }

    /// `would stop`, for effect summaries.
    pub(crate) fn effect_phrase(self) -> &'static str {
        match self {
            Verb::Start => "would start",
            Verb::Shutdown => "would shut down",
            Verb::Stop => "would stop (hard)",
            Verb::Reset => "would reset",
            Verb::Suspend => "would pause",
            Verb::Resume => "would resume",
        }
    }
}

/// Node power verbs of `proxmox.node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeVerb {
    Shutdown,
    Reboot,
}

impl NodeVerb {
    pub(crate) fn parse(verb: &str) -> Result<NodeVerb, DriverError> {
        match verb {
            "shutdown" => Ok(NodeVerb::Shutdown),
            "reboot" => Ok(NodeVerb::Reboot),
            _ => Err(DriverError::new(
                ErrorKind::ValidationError,
                format!("{CAP_NODE} has no verb {verb:?}"),
            )),
        }
    }

    pub(crate) fn command(self) -> &'static str {
        match self {
            NodeVerb::Shutdown => "shutdown",
            NodeVerb::Reboot => "reboot",
        }
    }
}

/// The params of a power action, after the manifest filled its defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PowerParams {
    /// Seconds a shutdown waits for the guest.
    pub grace_s: u64,
    /// Hard stop when the grace runs out.
    pub force_after_grace: bool,
    /// How long the driver waits for the task, seconds.
    pub timeout_s: Option<u64>,
}

impl PowerParams {
    pub(crate) fn parse(action: &Action) -> Result<PowerParams, DriverError> {
        let p = &action.params;
        let bad = |name: &str, want: &str| {
            DriverError::new(
                ErrorKind::ValidationError,
                format!("param {name} must be {want}, got {}", p[name]),
            )
        };
        let uint = |name: &str| -> Result<Option<u64>, DriverError> {
            match p.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => as_u64(v)
                    .map(Some)
                    .ok_or_else(|| bad(name, "a non-negative integer")),
            }
        };
        let force_after_grace = match p.get("force_after_grace") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => match as_u64(v) {
                Some(0) => false,
                Some(1) => true,
                _ => return Err(bad("force_after_grace", "a boolean")),
            },
        };
        Ok(PowerParams {
            grace_s: uint("grace_s")?.unwrap_or(60),
            force_after_grace,
            timeout_s: uint("timeout_s")?,
        })
    }
}

/// The node a UPID names (`UPID:<node>:...`).
pub(crate) fn upid_node(upid: &str) -> Option<&str> {
    let mut parts = upid.split(':');
    (parts.next() == Some("UPID")).then_some(())?;
    parts.next().filter(|n| !n.is_empty())
}

pub(crate) fn str_field(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `1`, `"1"`, `true` are true.
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => matches!(s.as_str(), "1" | "true" | "yes" | "on"),
        _ => false,
    }
}

pub(crate) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_u32(v: &Value) -> Option<u32> {
    as_u64(v).and_then(|n| u32::try_from(n).ok())
}

/// Copies `keys` that `from` has into `to`.
pub(crate) fn copy_fields(from: &Value, to: &mut Map<String, Value>, keys: &[&str]) {
    for key in keys {
        if let Some(v) = from.get(*key) {
            if !v.is_null() {
                to.insert((*key).to_string(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tags_become_labels_with_dots_splitting_key_and_value() {
        let labels = tags_to_labels("tier.low;prod;env.eu.west");
        assert_eq!(labels["tier"], "low");
        assert_eq!(labels["prod"], "true");
        assert_eq!(labels["env"], "eu.west");
        assert!(tags_to_labels("").is_empty());
    }

    #[test]
    fn resources_parse_guests_and_nodes_and_skip_storage() {
        let data = json!([
            {"id":"qemu/100","vmid":100,"type":"qemu","node":"pve1","status":"running","template":0,"tags":"a;b.c"},
            {"id":"lxc/201","vmid":"201","type":"lxc","node":"pve2","status":"stopped","lock":"backup"},
            {"id":"node/pve1","type":"node","node":"pve1","status":"online"},
            {"id":"storage/pve1/local","type":"storage","node":"pve1","status":"available"}
        ]);
        let r = Resources::parse(&data);
        assert_eq!(r.guests.len(), 2);
        assert_eq!(r.guests[1].vmid, 201);
        assert_eq!(r.guests[1].lock.as_deref(), Some("backup"));
        assert_eq!(r.nodes.len(), 1);
    }

    #[test]
    fn live_status_distinguishes_paused_and_hibernated() {
        let paused =
            LiveStatus::parse(&json!({"status":"running","qmpstatus":"paused","ha":{"managed":0}}));
        assert_eq!(paused.state, GuestState::Paused);
        let hib = LiveStatus::parse(
            &json!({"status":"stopped","lock":"suspended","ha":{"managed":1,"state":"started"}}),
        );
        assert_eq!(hib.state, GuestState::Suspended);
        assert!(hib.ha_managed);
    }

    #[test]
    fn targets_must_match_the_capability() {
        assert_eq!(
            parse_target(CAP_VM, "vm:104").unwrap(),
            TargetRef::Guest {
                kind: GuestKind::Qemu,
                vmid: 104
            }
        );
        assert!(parse_target(CAP_VM, "ct:104").is_err());
        assert!(parse_target(CAP_CT, "ct:abc").is_err());
        assert_eq!(
            parse_target(CAP_NODE, "host:pve2").unwrap(),
            TargetRef::Node("pve2".into())
        );
    }

    #[test]
    fn containers_have_no_reset_suspend_or_resume() {
        assert!(Verb::parse(CAP_CT, "reset").is_err());
        assert!(Verb::parse(CAP_VM, "reset").is_ok());
    }

    #[test]
    fn upid_names_its_node() {
        assert_eq!(
            upid_node("UPID:pve2:0003A1F2:01B2C3D4:6740A1B2:qmstart:100:root@pam!hazel:"),
            Some("pve2")
        );
        assert_eq!(upid_node("nonsense"), None);
    }
}
