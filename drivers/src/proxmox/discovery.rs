//! Inventory of a Proxmox host: VMs (`vm:<vmid>`), containers (`ct:<vmid>`)
//! and nodes (`host:<node>`). The fast path is one `GET /cluster/resources`
//! (unfiltered, so nodes without guests still appear as hosts); the full path
//! adds `/nodes`, each online node's qemu/lxc lists (live status, sizes) and
//! each guest's config (onboot, ostype, and the lock as the config holds it,
//! which the resource list's cached copy may not yet show). Tags become
//! labels. A failed hydration call leaves that target's extra attrs out
//! rather than failing the discovery.
//!
//! Rate limits: the cluster-wide reads serve every capability and take the
//! host's strictest `rate_limit`; the per-node guest lists and per-guest
//! config reads count against the capability of the guests they read
//! (`proxmox.vm`, `proxmox.ct`), so a full discovery of a large cluster is
//! paced by the guests' limit, not by the node-power one.

use std::collections::{BTreeMap, HashMap};

use futures::future::join_all;
use inventory::model::Target;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::client::ApiClient;
use super::dry_run::{config_path, RESOURCES_PATH};
use super::model::{
    as_u64, copy_fields, str_field, tags_to_labels, truthy, GuestKind, ResourceGuest, Resources,
};
use crate::driver::{DriverError, RefreshMode};

pub(crate) async fn discover(
    client: &ApiClient,
    mode: RefreshMode,
    deadline: Instant,
) -> Result<Vec<Target>, DriverError> {
    let data = client
        .for_any()
        .get(RESOURCES_PATH, &[], Some(deadline))
        .await?;
    let resources = Resources::parse(&data);

    let mut hosts: BTreeMap<String, Target> = BTreeMap::new();
    for n in &resources.nodes {
        hosts.insert(n.node.clone(), host_target(&n.node, n.status.clone()));
    }
    for g in &resources.guests {
        hosts
            .entry(g.node.clone())
            .or_insert_with(|| host_target(&g.node, None));
    }
    let mut guests: Vec<Target> = resources.guests.iter().map(guest_target).collect();

    if mode == RefreshMode::Full {
        hydrate(client, &resources, &mut hosts, &mut guests, deadline).await;
    }

    guests.sort_by(|a, b| {
        (a.target_type.as_str(), a.id.parse::<u64>().unwrap_or(0))
            .cmp(&(b.target_type.as_str(), b.id.parse().unwrap_or(0)))
    });
    let mut out: Vec<Target> = hosts.into_values().collect();
    out.extend(guests);
    Ok(out)
}

fn host_target(node: &str, status: Option<String>) -> Target {
    let mut attrs = BTreeMap::new();
    attrs.insert("node".to_string(), json!(node));
    Target {
        target_type: "host".into(),
        id: node.to_string(),
        name: Some(node.to_string()),
        status,
        labels: BTreeMap::new(),
        attrs,
    }
}

fn guest_target(g: &ResourceGuest) -> Target {
    let mut attrs = BTreeMap::new();
    attrs.insert("node".to_string(), json!(g.node));
    attrs.insert("type".to_string(), json!(g.kind.api()));
    attrs.insert("template".to_string(), json!(g.template));
    if let Some(lock) = &g.lock {
        attrs.insert("lock".to_string(), json!(lock));
    }
    if let Some(ha) = &g.hastate {
        attrs.insert("hastate".to_string(), json!(ha));
        attrs.insert("ha_managed".to_string(), json!(true));
    }
    if let Some(pool) = &g.pool {
        attrs.insert("pool".to_string(), json!(pool));
    }
    if let Some(v) = &g.maxcpu {
        attrs.insert("maxcpu".to_string(), v.clone());
    }
    if let Some(v) = &g.maxmem {
        attrs.insert("maxmem".to_string(), v.clone());
    }
    Target {
        target_type: g.kind.target_type().into(),
        id: g.vmid.to_string(),
        name: g.name.clone(),
        status: g.status.clone(),
        labels: g.tags.as_deref().map(tags_to_labels).unwrap_or_default(),
        attrs,
    }
}

/// Full discovery: node details, live per-node guest lists, guest configs.
async fn hydrate(
    client: &ApiClient,
    resources: &Resources,
    hosts: &mut BTreeMap<String, Target>,
    guests: &mut [Target],
    deadline: Instant,
) {
    match client.for_any().get("/nodes", &[], Some(deadline)).await {
        Ok(list) => {
            for n in list.as_array().into_iter().flatten() {
                let Some(name) = str_field(n, "node") else {
                    continue;
                };
                let host = hosts
                    .entry(name.clone())
                    .or_insert_with(|| host_target(&name, None));
                host.status = str_field(n, "status").or(host.status.take());
                let mut extra = Map::new();
                copy_fields(
                    n,
                    &mut extra,
                    &[
                        "maxcpu",
                        "maxmem",
                        "maxdisk",
                        "uptime",
                        "level",
                        "ssl_fingerprint",
                    ],
                );
                host.attrs.extend(extra);
            }
        }
        Err(e) => tracing::warn!(error = %e, "node list failed during full discovery"),
    }

    let online: Vec<String> = hosts
        .values()
        .filter(|h| h.status.as_deref() == Some("online"))
        .map(|h| h.id.clone())
        .collect();
    let lists = join_all(online.iter().flat_map(|node| {
        [GuestKind::Qemu, GuestKind::Lxc].map(|kind| async move {
            let path = format!("/nodes/{node}/{}", kind.api());
            let api = client.for_capability(kind.capability());
            (kind, api.get(&path, &[], Some(deadline)).await)
        })
    }))
    .await;
    let mut live: HashMap<(&'static str, String), Value> = HashMap::new();
    for (kind, answer) in lists {
        match answer {
            Ok(list) => {
                for item in list.as_array().into_iter().flatten() {
                    if let Some(vmid) = item.get("vmid").and_then(as_u64) {
                        live.insert((kind.target_type(), vmid.to_string()), item.clone());
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "guest list failed during full discovery"),
        }
    }

    let configs = join_all(resources.guests.iter().map(|g| async move {
        let path = config_path(g.kind, &g.node, g.vmid);
        let api = client.for_capability(g.kind.capability());
        (
            g.kind.target_type(),
            g.vmid.to_string(),
            api.get(&path, &[], Some(deadline)).await,
        )
    }))
    .await;
    let mut config_of: HashMap<(&'static str, String), Value> = HashMap::new();
    for (ty, id, answer) in configs {
        match answer {
            Ok(cfg) => {
                config_of.insert((ty, id), cfg);
            }
            Err(e) => tracing::warn!(error = %e, "guest config read failed during full discovery"),
        }
    }

    for t in guests.iter_mut() {
        let key = (kind_key(&t.target_type), t.id.clone());
        if let Some(item) = live.get(&key) {
            if let Some(status) = str_field(item, "status") {
                t.status = Some(status);
            }
            let mut extra = Map::new();
            copy_fields(item, &mut extra, &["cpus", "maxmem", "maxdisk", "uptime"]);
            t.attrs.extend(extra);
        }
        if let Some(cfg) = config_of.get(&key) {
            match str_field(cfg, "lock").filter(|l| !l.is_empty()) {
                Some(lock) => {
                    t.attrs.insert("lock".into(), json!(lock));
                }
                None => {
                    t.attrs.remove("lock");
                }
            }
            if let Some(onboot) = cfg.get("onboot") {
                t.attrs.insert("onboot".into(), json!(truthy(onboot)));
            }
            let mut extra = Map::new();
            copy_fields(cfg, &mut extra, &["ostype", "cores", "sockets", "memory"]);
            t.attrs.extend(extra);
            if let Some(tags) = str_field(cfg, "tags") {
                t.labels = tags_to_labels(&tags);
            }
        }
    }
}

fn kind_key(target_type: &str) -> &'static str {
    match target_type {
        "ct" => "ct",
        _ => "vm",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_targets_carry_labels_from_tags_and_node_attrs() {
        let r = Resources::parse(&json!([
            {"id":"qemu/104","vmid":104,"type":"qemu","node":"pve2","name":"app04","status":"running",
             "template":0,"tags":"tier.low;prod","lock":"backup","hastate":"started"}
        ]));
        let t = guest_target(&r.guests[0]);
        assert_eq!(t.canonical_id(), "vm:104");
        assert_eq!(t.labels["tier"], "low");
        assert_eq!(t.labels["prod"], "true");
        assert_eq!(t.attrs["node"], json!("pve2"));
        assert_eq!(t.attrs["lock"], json!("backup"));
        assert_eq!(t.attrs["ha_managed"], json!(true));
    }
}
