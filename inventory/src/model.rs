//! Hosts, their child targets and per-host snapshots: what discovery found,
//! when, and whether it can still be trusted. Also the id form each target
//! type uses ([`IdForm`]), which the selector grammar and the search index
//! both read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One child target of a host (a VM, a container, a PoE port, a service...).
///
/// `id` is written without the type prefix (`104`, `1/A1`, `nginx.service`);
/// [`Target::canonical_id`] gives `<type>:<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Target type, e.g. `vm`, `ct`, `poe-port`, `interface`, `host`, `service`, `webhook`.
    #[serde(rename = "type")]
    pub target_type: String,
    /// Id without the type prefix.
    pub id: String,
    /// Human name (a VM's name, a port's description), when the device has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Current state where the driver knows one (`running`, `stopped`, `on`, `off`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Free-form labels (`tier = low`); Proxmox tags map here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Other facts the driver reports (node, lock, draw in watts...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attrs: BTreeMap<String, serde_json::Value>,
}

impl Target {
    /// `<target_type>:<id>`, the id used in plans, ledgers and idempotency keys.
    pub fn canonical_id(&self) -> String {
        format!("{}:{}", self.target_type, self.id)
    }
}

/// Which id form a target type uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdForm {
    /// Numbers and numeric ranges (`vm`, `ct`).
    Numeric,
    /// Switch ports and port rectangles (`poe-port`, `interface`).
    Port,
    /// Literal ids matching `[A-Za-z0-9_.@:-]+` (hosts, services, webhooks...).
    Literal,
}

/// Which id form `target_type` uses: numbers for `vm` and `ct`, ports for
/// `poe-port` and `interface`, literals for every other type.
pub fn id_form(target_type: &str) -> IdForm {
    match target_type {
        "vm" | "ct" => IdForm::Numeric,
        "poe-port" | "interface" => IdForm::Port,
        _ => IdForm::Literal,
    }
}
