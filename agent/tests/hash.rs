//! Properties of the policy hash (SPEC §3): the same policy written in JSON
//! or YAML, with any key order, with defaults spelled out or omitted, with
//! `120s` or `2m`, renamed or toggled, hashes the same; anything the policy
//! does differently hashes differently.

use agent::compile::CompileContext;
use agent::validate::validate_text;
use drivers::manifest::ManifestSet;
use proptest::prelude::*;
use serde_json::{json, Value};

fn hash_of(text: &str) -> String {
    let report = validate_text(text, &ManifestSet::embedded(), &CompileContext::default()).report;
    assert!(
        report.ok,
        "policy must validate: {:#?}\n{text}",
        report.issues
    );
    report.hash.expect("a valid policy has a hash")
}

fn base() -> Value {
    json!({
        "version": 1,
        "name": "On battery: stop low-tier VMs",
        "trigger_group": { "triggers": [
            { "type": "ups.state", "equals": "on_battery", "for": "2m" },
            { "type": "metric.threshold", "metric": "load", "op": ">", "value": 60 }
        ]},
        "conditions": { "all": [
            { "scope": "ups", "field": "runtime_minutes", "op": ">=", "value": 5 },
            { "scope": "host", "field": "reachable", "op": "=", "value": true }
        ]},
        "targets": { "host_id": "pve-01", "target_type": "vm",
                     "selector": { "mode": "range", "value": "104,204,311-318" } },
        "actions": [ { "capability_id": "proxmox.vm", "verb": "shutdown" } ]
    })
}

/// Writes JSON with object keys in an order picked by `seed`.
fn shuffled_json(v: &Value, seed: &mut u64) -> String {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // Fisher-Yates with a tiny LCG: deterministic per seed.
            for i in (1..entries.len()).rev() {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let j = (*seed >> 33) as usize % (i + 1);
                entries.swap(i, j);
            }
            let parts: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| {
                    format!(
                        "{}: {}",
                        serde_json::to_string(k).unwrap(),
                        shuffled_json(v, seed)
                    )
                })
                .collect();
            format!("{{ {} }}", parts.join(",\n "))
        }
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(|i| shuffled_json(i, seed)).collect();
            format!("[{}]", parts.join(", "))
        }
        other => other.to_string(),
    }
}

/// Spells out every default the spec and the manifest define.
fn with_defaults(mut v: Value) -> Value {
    let root = v.as_object_mut().unwrap();
    root.insert("enabled".into(), json!(true));
    root.insert("priority".into(), json!(0));
    root.insert("stop_on_match".into(), json!(false));
    root.insert("dynamic_resolution".into(), json!(true));
    root.insert("suppression_window".into(), json!("5m"));
    root.insert("idempotency_window".into(), json!("600s"));
    root["trigger_group"]["logic"] = json!("ANY");
    root["trigger_group"]["triggers"][0]["for"] = json!("120s");
    root["actions"][0]["params"] = json!({ "grace_s": 60, "force_after_grace": false });
    root["actions"][0]["idempotency"] = json!({ "key_hint": null });
    root["actions"][0]["retry"] = json!({ "backoff": "5s" });
    v
}

#[test]
fn json_and_yaml_of_the_same_policy_hash_the_same() {
    let v = base();
    let json_text = serde_json::to_string_pretty(&v).unwrap();
    let yaml_text = serde_norway::to_string(&v).unwrap();
    assert_eq!(hash_of(&json_text), hash_of(&yaml_text));
}

#[test]
fn spelled_out_defaults_and_equivalent_durations_hash_the_same() {
    let plain = serde_json::to_string(&base()).unwrap();
    let full = serde_json::to_string(&with_defaults(base())).unwrap();
    assert_eq!(hash_of(&plain), hash_of(&full));
}

#[test]
fn name_notes_and_enabled_do_not_change_the_hash() {
    let mut v = base();
    let before = hash_of(&v.to_string());
    v["name"] = json!("A completely different name");
    v["notes"] = json!("some notes");
    v["enabled"] = json!(false);
    assert_eq!(before, hash_of(&v.to_string()));
}

#[test]
fn trigger_and_condition_order_does_not_change_the_hash() {
    let mut v = base();
    let before = hash_of(&v.to_string());
    v["trigger_group"]["triggers"]
        .as_array_mut()
        .unwrap()
        .reverse();
    v["conditions"]["all"].as_array_mut().unwrap().reverse();
    assert_eq!(before, hash_of(&v.to_string()));
}

#[test]
fn selector_spacing_does_not_change_the_hash() {
    let mut v = base();
    let before = hash_of(&v.to_string());
    v["targets"]["selector"]["value"] = json!("104, 204 , 311-318");
    assert_eq!(before, hash_of(&v.to_string()));
}

#[test]
fn every_meaningful_change_changes_the_hash() {
    let before = hash_of(&base().to_string());
    type Change = Box<dyn Fn(&mut Value)>;
    let changes: Vec<(&str, Change)> = vec![
        ("priority", Box::new(|v| v["priority"] = json!(1))),
        (
            "stop_on_match",
            Box::new(|v| v["stop_on_match"] = json!(true)),
        ),
        (
            "dynamic_resolution",
            Box::new(|v| v["dynamic_resolution"] = json!(false)),
        ),
        (
            "logic",
            Box::new(|v| v["trigger_group"]["logic"] = json!("ALL")),
        ),
        (
            "for",
            Box::new(|v| v["trigger_group"]["triggers"][0]["for"] = json!("3m")),
        ),
        (
            "retry attempts",
            Box::new(|v| v["actions"][0]["retry"] = json!({ "attempts": 3 })),
        ),
        (
            "retry backoff",
            Box::new(|v| v["actions"][0]["retry"] = json!({ "backoff": "10s" })),
        ),
        (
            "state",
            Box::new(|v| v["trigger_group"]["triggers"][0]["equals"] = json!("low_battery")),
        ),
        (
            "threshold",
            Box::new(|v| v["trigger_group"]["triggers"][1]["value"] = json!(61)),
        ),
        (
            "condition",
            Box::new(|v| v["conditions"]["all"][0]["value"] = json!(6)),
        ),
        (
            "host",
            Box::new(|v| v["targets"]["host_id"] = json!("pve-02")),
        ),
        (
            "selector",
            Box::new(|v| v["targets"]["selector"]["value"] = json!("104,204")),
        ),
        (
            "mode",
            Box::new(|v| v["targets"]["selector"]["mode"] = json!("list")),
        ),
        (
            "verb",
            Box::new(|v| v["actions"][0]["verb"] = json!("stop")),
        ),
        (
            "param",
            Box::new(|v| v["actions"][0]["params"] = json!({ "grace_s": 30 })),
        ),
        (
            "suppression",
            Box::new(|v| v["suppression_window"] = json!("6m")),
        ),
        (
            "idempotency",
            Box::new(|v| v["idempotency_window"] = json!("11m")),
        ),
        (
            "action order",
            Box::new(|v| {
                v["actions"] = json!([
                    { "capability_id": "proxmox.vm", "verb": "stop" },
                    { "capability_id": "proxmox.vm", "verb": "shutdown" }
                ])
            }),
        ),
    ];
    let mut seen = std::collections::HashSet::new();
    seen.insert(before.clone());
    for (what, change) in changes {
        let mut v = base();
        change(&mut v);
        let after = hash_of(&v.to_string());
        assert!(seen.insert(after), "changing {what} must give a new hash");
    }
}

#[test]
fn the_hash_does_not_depend_on_the_inventory_or_the_time() {
    let text = base().to_string();
    let inventory = inventory::file::parse_inventory(
        include_str!("../../examples/inventory/homelab.yaml"),
        None,
    )
    .unwrap();
    let ctx = CompileContext {
        inventory: Some(&inventory),
        now: Some("2030-01-01T00:00:00Z".into()),
        policy_id: Some("6f1c2a0e-3b4d-4e5f-8a9b-0c1d2e3f4a5b".into()),
        version_int: 7,
    };
    let with_inventory = validate_text(&text, &ManifestSet::embedded(), &ctx).report;
    assert_eq!(with_inventory.hash.unwrap(), hash_of(&text));
}

proptest! {
    #[test]
    fn key_order_never_changes_the_hash(seed in any::<u64>(), defaults in any::<bool>()) {
        let v = if defaults { with_defaults(base()) } else { base() };
        let canonical = hash_of(&serde_json::to_string(&v).unwrap());
        let mut s = seed;
        let shuffled = shuffled_json(&v, &mut s);
        prop_assert_eq!(canonical, hash_of(&shuffled));
    }

    #[test]
    fn yaml_with_any_key_order_hashes_like_json(seed in any::<u64>()) {
        let v = base();
        let mut s = seed;
        // JSON text is valid YAML flow syntax; force the YAML reader with a leading comment.
        let yaml = format!("# yaml\n{}", shuffled_json(&v, &mut s));
        prop_assert_eq!(hash_of(&v.to_string()), hash_of(&yaml));
    }
}

#[test]
fn the_canonical_text_is_json_with_sorted_keys_and_no_whitespace() {
    let report = validate_text(
        &base().to_string(),
        &ManifestSet::embedded(),
        &CompileContext::default(),
    )
    .report;
    let ir = report.ir.unwrap();
    let (spec, _) = agent::spec::parse_spec(&base());
    let text = agent::hash::canonical_text(&spec.unwrap(), &ir.plan);
    let reparsed: Value = serde_json::from_str(&text).expect("canonical text is JSON");
    let mut rewritten = Vec::new();
    agent::hash::write_canonical(&mut rewritten, &reparsed);
    assert_eq!(
        text,
        String::from_utf8(rewritten).unwrap(),
        "keys must already be sorted"
    );
    assert!(!text.contains(": ") && !text.contains(", "));
    assert!(!text.contains("\"name\"") && !text.contains("notes") && !text.contains("enabled"));
}

#[test]
fn every_trigger_and_schedule_form_has_a_sorted_canonical_form() {
    let mut v: Value =
        serde_json::from_str(include_str!("../../examples/spec-section2.json")).unwrap();
    v["trigger_group"]["triggers"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "type": "timer.after", "after": "1h", "since_event": { "type": "webhook.custom", "name": "x" } }));
    v["trigger_group"]["triggers"].as_array_mut().unwrap().push(
        json!({ "type": "ups.state", "equals": "comm_lost", "ups": "ups1@nas:3493", "for": "30s" }),
    );
    let (spec, findings) = agent::spec::parse_spec(&v);
    let spec = spec.unwrap_or_else(|| panic!("{findings:#?}"));
    let report = validate_text(
        &v.to_string(),
        &ManifestSet::embedded(),
        &CompileContext::default(),
    )
    .report;
    let text = agent::hash::canonical_text(&spec, &report.ir.unwrap().plan);
    let reparsed: Value = serde_json::from_str(&text).unwrap();
    let mut rewritten = Vec::new();
    agent::hash::write_canonical(&mut rewritten, &reparsed);
    assert_eq!(text, String::from_utf8(rewritten).unwrap());
}
