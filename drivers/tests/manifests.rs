//! The shipped plugin manifests load, validate and match the embedded copy;
//! bad manifests are rejected with every error naming file, field and why;
//! inverse and idempotency-key lookups follow SPEC §5 and §7.

use std::path::PathBuf;

use drivers::driver::{idempotency_key, Action};
use drivers::manifest::{
    Capability, Category, DryRunSupport, Inverse, Manifest, ManifestSet, ValueType, EMBEDDED,
};
use expect_test::{expect, Expect};
use serde_json::{json, Map, Value};

fn plugin_specs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugin-specs")
}

fn shipped() -> ManifestSet {
    ManifestSet::embedded()
}

fn cap(id: &str) -> Capability {
    shipped()
        .capability(id)
        .map(|(_, c)| c.clone())
        .unwrap_or_else(|| panic!("no capability {id}"))
}

fn params(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn inverse(cap_id: &str, verb: &str, p: Value) -> Option<(String, Value)> {
    cap(cap_id)
        .inverse(verb, &params(p))
        .map(|Inverse { verb, params }| (verb, Value::Object(params)))
}

// --- the shipped manifests ------------------------------------------------

#[test]
fn every_file_in_plugin_specs_loads_and_matches_the_embedded_copy() {
    let from_dir = ManifestSet::load_dir(plugin_specs()).unwrap_or_else(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("plugin-specs does not load:\n{}", lines.join("\n"))
    });
    assert_eq!(from_dir, shipped());

    let mut on_disk: Vec<String> = std::fs::read_dir(plugin_specs())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    on_disk.sort();
    let embedded: Vec<&str> = EMBEDDED.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        on_disk, embedded,
        "EMBEDDED must list every file of plugin-specs/"
    );
    for (name, text) in EMBEDDED {
        let disk = std::fs::read_to_string(plugin_specs().join(name)).unwrap();
        assert_eq!(&disk, text, "{name} differs from its embedded copy");
    }
}

#[test]
fn shipped_manifests_declare_the_capability_table_of_the_spec() {
    let table: &[(&str, &str, &[&str], &str)] = &[
        (
            "proxmox.ve",
            "proxmox.vm",
            &["start", "shutdown", "stop", "reset", "suspend", "resume"],
            "vm",
        ),
        (
            "proxmox.ve",
            "proxmox.ct",
            &["start", "shutdown", "stop"],
            "ct",
        ),
        (
            "proxmox.ve",
            "proxmox.node",
            &["shutdown", "reboot"],
            "host",
        ),
        ("aruba.aoss", "aoss.poe.port", &["set"], "poe-port"),
        ("aruba.aoss", "aoss.interface", &["set"], "interface"),
        ("linux.ssh", "host.power", &["poweroff", "reboot"], "host"),
        (
            "linux.ssh",
            "host.service",
            &["start", "stop", "restart"],
            "service",
        ),
        ("http.webhook", "notify.webhook", &["post"], "webhook"),
    ];
    let set = shipped();
    assert_eq!(
        set.ids().collect::<Vec<_>>(),
        ["aruba.aoss", "http.webhook", "linux.ssh", "proxmox.ve"]
    );
    for (plugin, cap_id, verbs, target) in table {
        let (manifest, cap) = set.capability(cap_id).unwrap();
        assert_eq!(&manifest.id, plugin);
        assert_eq!(&cap.verbs, verbs, "{cap_id}");
        assert_eq!(cap.targets, [*target], "{cap_id}");
    }
    let total: usize = set.iter().map(|m| m.capabilities.len()).sum();
    assert_eq!(total, table.len());
}

#[test]
fn shipped_manifests_set_refresh_sla_discovery_and_rate_limits() {
    for m in shipped().iter() {
        assert_eq!(m.defaults.dry_run_refresh_sla_s, 5, "{}", m.id);
        assert!(m.discovery.interval_s >= 60, "{}", m.id);
        for c in &m.capabilities {
            assert!(c.rate_limit.is_some(), "{} has no rate_limit", c.id);
        }
    }
    let pve = shipped().get("proxmox.ve").cloned().unwrap();
    assert_eq!(pve.category, Category::HostOrchestrator);
    let http = pve.defaults.http.clone().unwrap();
    assert_eq!(
        (
            http.timeout_s,
            http.retries,
            http.backoff_ms_start,
            http.verify_tls
        ),
        (5, 2, 250, true)
    );
    assert_eq!(
        pve.target_types().into_iter().collect::<Vec<_>>(),
        ["ct", "host", "vm"]
    );
}

#[test]
fn the_proxmox_connection_schema_marks_the_token_secret_and_defaults_the_port() {
    let pve = shipped().get("proxmox.ve").cloned().unwrap();
    let conn = &pve.schema.connection;
    assert_eq!(conn["port"].default, Some(json!(8006)));
    assert_eq!(conn["verify_tls"].default, Some(json!(true)));
    assert!(conn["token_secret"].secret && conn["token_secret"].required);
    assert!(!conn["tls_fingerprint"].required);
    assert_eq!(pve.secret_fields().collect::<Vec<_>>(), ["token_secret"]);
    for name in ["host", "node", "token_id", "token_secret"] {
        assert!(conn[name].required, "{name}");
    }
}

#[test]
fn ssh_manifests_mark_keys_and_passwords_secret_and_default_save_config_off() {
    let set = shipped();
    let aoss = set.get("aruba.aoss").unwrap();
    assert_eq!(
        aoss.secret_fields().collect::<Vec<_>>(),
        ["password", "private_key", "private_key_passphrase"]
    );
    assert_eq!(
        aoss.schema.connection["save_config"].default,
        Some(json!(false))
    );
    assert_eq!(aoss.schema.connection["port"].default, Some(json!(22)));
    assert_eq!(aoss.schema.require_one_of, [["password", "private_key"]]);
    let linux = set.get("linux.ssh").unwrap();
    assert_eq!(
        linux.schema.connection["trust_on_first_use"].default,
        Some(json!(false))
    );
    assert_eq!(linux.schema.connection["sudo"].default, Some(json!(false)));
    assert!(linux.schema.connection["private_key"].secret);
    let hook = set.get("http.webhook").unwrap();
    assert!(hook.schema.connection["secret"].secret && !hook.schema.connection["secret"].required);
}

#[test]
fn only_host_power_and_node_verbs_power_off_the_host() {
    let set = shipped();
    let mut powering: Vec<String> = Vec::new();
    for m in set.iter() {
        for c in &m.capabilities {
            for v in &c.verbs {
                if c.powers_off(v) {
                    powering.push(format!("{}:{v}", c.id));
                }
            }
        }
    }
    assert_eq!(
        powering,
        [
            "host.power:poweroff",
            "host.power:reboot",
            "proxmox.node:shutdown",
            "proxmox.node:reboot"
        ]
    );
}

#[test]
fn the_webhook_body_is_an_object_or_a_string_and_dry_run_is_optional() {
    let hook = cap("notify.webhook");
    assert_eq!(hook.dry_run, DryRunSupport::Optional);
    let body = &hook.params["body"];
    assert_eq!(
        body.ty,
        ValueType::OneOf(vec![ValueType::Object, ValueType::String])
    );
    assert!(body.check(&json!({"text": "on battery"})).is_ok());
    assert!(body.check(&json!("on battery")).is_ok());
    assert_eq!(
        body.check(&json!(3)).unwrap_err(),
        "expected object or string, found an integer"
    );
    assert_eq!(
        serde_json::to_value(&hook).unwrap()["params"]["body"]["type"],
        json!(["object", "string"])
    );
}

// --- params -----------------------------------------------------------------

#[test]
fn grace_params_apply_to_shutdown_only() {
    let vm = cap("proxmox.vm");
    let names = |verb| {
        vm.params_for(verb)
            .map(|(n, _)| n.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names("shutdown"),
        ["force_after_grace", "grace_s", "timeout_s"]
    );
    assert_eq!(names("start"), ["timeout_s"]);
    assert_eq!(
        Value::Object(vm.effective_params("shutdown", &Map::new())),
        json!({"grace_s": 60, "force_after_grace": false})
    );
    assert_eq!(
        Value::Object(vm.effective_params("start", &Map::new())),
        json!({})
    );
}

#[test]
fn checking_params_fills_defaults_and_reports_every_problem() {
    let vm = cap("proxmox.vm");
    assert_eq!(
        Value::Object(
            vm.check_params("shutdown", &params(json!({"grace_s": 30})))
                .unwrap()
        ),
        json!({"grace_s": 30, "force_after_grace": false})
    );
    let problems = vm
        .check_params(
            "start",
            &params(json!({"grace_s": 30, "grace": 1, "timeout_s": "soon"})),
        )
        .unwrap_err();
    let shown: Vec<String> = problems
        .iter()
        .map(|p| {
            format!(
                "{}: {} [{}]",
                p.param,
                p.message,
                p.hint.clone().unwrap_or_default()
            )
        })
        .collect();
    expect![[r#"
        [
            "grace: unknown param `grace` for `proxmox.vm` [expected one of: timeout_s]",
            "grace_s: param `grace_s` does not apply to verb `start` [it applies to: shutdown]",
            "timeout_s: expected integer, found a string []",
        ]
    "#]]
    .assert_debug_eq(&shown);

    let poe = cap("aoss.poe.port");
    let problems = poe
        .check_params("set", &params(json!({"state": "of"})))
        .unwrap_err();
    assert_eq!(
        problems[0].message,
        "`of` is not one of: on, off, cycle (did you mean `off`?)"
    );
    let problems = poe.check_params("set", &Map::new()).unwrap_err();
    assert_eq!(
        problems[0].message,
        "missing required param `state` for verb `set`"
    );
    let problems = poe.check_params("sett", &Map::new()).unwrap_err();
    assert_eq!(problems[0].hint.as_deref(), Some("did you mean `set`?"));
    let problems = cap("proxmox.vm")
        .check_params("shutdown", &params(json!({"grace_s": -1})))
        .unwrap_err();
    assert_eq!(problems[0].message, "must be at least 0");
}

// --- inverses ---------------------------------------------------------------

#[test]
fn proxmox_guest_verbs_invert_as_the_spec_says() {
    for cap_id in ["proxmox.vm", "proxmox.ct"] {
        assert_eq!(
            inverse(cap_id, "start", json!({})),
            Some(("shutdown".into(), json!({})))
        );
        assert_eq!(
            inverse(cap_id, "shutdown", json!({})),
            Some(("start".into(), json!({})))
        );
        assert_eq!(
            inverse(cap_id, "stop", json!({})),
            Some(("start".into(), json!({})))
        );
    }
    assert_eq!(
        inverse("proxmox.vm", "suspend", json!({})),
        Some(("resume".into(), json!({})))
    );
    assert_eq!(
        inverse("proxmox.vm", "resume", json!({})),
        Some(("suspend".into(), json!({})))
    );
    assert_eq!(inverse("proxmox.vm", "reset", json!({})), None);
    assert_eq!(inverse("proxmox.node", "shutdown", json!({})), None);
}

#[test]
fn an_inverse_drops_params_that_do_not_apply_to_its_verb_and_keeps_shared_ones() {
    assert_eq!(
        inverse(
            "proxmox.vm",
            "shutdown",
            json!({"grace_s": 120, "force_after_grace": true, "timeout_s": 300})
        ),
        Some(("start".into(), json!({"timeout_s": 300})))
    );
}

#[test]
fn poe_set_off_and_on_invert_each_other_and_cycle_has_no_inverse() {
    assert_eq!(
        inverse("aoss.poe.port", "set", json!({"state": "off"})),
        Some(("set".into(), json!({"state": "on"})))
    );
    assert_eq!(
        inverse("aoss.poe.port", "set", json!({"state": "on"})),
        Some(("set".into(), json!({"state": "off"})))
    );
    assert_eq!(
        inverse("aoss.poe.port", "set", json!({"state": "cycle"})),
        None
    );
    assert!(cap("aoss.poe.port").is_invertible("set"));
}

#[test]
fn interface_admin_down_and_up_invert_each_other() {
    assert_eq!(
        inverse("aoss.interface", "set", json!({"admin": "down"})),
        Some(("set".into(), json!({"admin": "up"})))
    );
    assert_eq!(
        inverse("aoss.interface", "set", json!({"admin": "up"})),
        Some(("set".into(), json!({"admin": "down"})))
    );
}

#[test]
fn services_stop_and_start_invert_and_power_and_webhooks_have_no_inverse() {
    assert_eq!(
        inverse("host.service", "stop", json!({})),
        Some(("start".into(), json!({})))
    );
    assert_eq!(
        inverse("host.service", "start", json!({})),
        Some(("stop".into(), json!({})))
    );
    assert_eq!(inverse("host.service", "restart", json!({})), None);
    assert_eq!(
        inverse("host.power", "poweroff", json!({"delay_s": 5})),
        None
    );
    assert_eq!(inverse("host.power", "reboot", json!({})), None);
    assert!(!cap("host.power").is_invertible("poweroff"));
    assert_eq!(
        inverse("notify.webhook", "post", json!({"body": "x"})),
        None
    );
}

#[test]
fn an_action_inverts_another_when_it_is_its_inverse_with_the_same_key_params() {
    let poe = cap("aoss.poe.port");
    let on = params(json!({"state": "on"}));
    let off = params(json!({"state": "off"}));
    let cycle = params(json!({"state": "cycle"}));
    assert!(poe.inverts("set", &on, "set", &off));
    assert!(poe.inverts("set", &off, "set", &on));
    assert!(!poe.inverts("set", &off, "set", &off));
    assert!(!poe.inverts("set", &on, "set", &cycle));
    assert!(!poe.inverts("set", &cycle, "set", &on));

    let vm = cap("proxmox.vm");
    let none = Map::new();
    assert!(vm.inverts("start", &none, "shutdown", &params(json!({"grace_s": 10}))));
    assert!(vm.inverts("start", &none, "stop", &none));
    // Symmetric: `stop`'s inverse is `start`, so a stop after a start
    // undoes it too, although `start`'s own inverse is `shutdown`.
    assert!(vm.inverts("stop", &none, "start", &none));
    assert!(!vm.inverts("stop", &none, "stop", &none));
    assert!(!vm.inverts("reset", &none, "start", &none));
}

#[test]
fn undoes_lists_the_forward_actions_whose_keys_an_action_clears() {
    let poe = cap("aoss.poe.port");
    assert_eq!(
        poe.undoes("set", &params(json!({"state": "on"}))),
        [Inverse {
            verb: "set".into(),
            params: params(json!({"state": "off"}))
        }]
    );
    assert!(poe
        .undoes("set", &params(json!({"state": "cycle"})))
        .is_empty());
    let vm = cap("proxmox.vm");
    let undone: Vec<String> = vm
        .undoes("start", &Map::new())
        .into_iter()
        .map(|i| i.verb)
        .collect();
    assert_eq!(undone, ["shutdown", "stop"]);

    // The engine clears exactly the key the forward run recorded.
    let forward = Action {
        capability: poe.id.clone(),
        verb: "set".into(),
        params: params(json!({"state": "off"})),
    };
    let recorded = idempotency_key("sw-a", &forward, "poe-port:1/A1", &poe.key_params("set"));
    let undone = &poe.undoes("set", &params(json!({"state": "on"})))[0];
    let cleared = Action {
        capability: poe.id.clone(),
        verb: undone.verb.clone(),
        params: undone.params.clone(),
    };
    assert_eq!(
        idempotency_key(
            "sw-a",
            &cleared,
            "poe-port:1/A1",
            &poe.key_params(&undone.verb)
        ),
        recorded
    );
}

// --- idempotency keys -------------------------------------------------------

#[test]
fn key_params_are_the_state_changing_params_plus_key_fields() {
    assert_eq!(cap("aoss.poe.port").key_params("set"), ["state"]);
    assert_eq!(cap("aoss.interface").key_params("set"), ["admin"]);
    assert_eq!(cap("notify.webhook").key_params("post"), ["body"]);
    assert!(cap("proxmox.vm").key_params("shutdown").is_empty());
    assert!(cap("host.power").key_params("poweroff").is_empty());

    let text = "id: t.x\nname: T\nversion: 1.0.0\ncategory: generic\ncapabilities:\n  - id: t.cap\n    verbs: [go, stop]\n    targets: [thing]\n    params:\n      speed: { type: int, verbs: [go] }\n      mode: { type: string, state: true }\n    idempotency: { key_fields: [verb, speed] }\n";
    let m = Manifest::from_yaml("t.x.yaml", text).unwrap();
    let c = m.capability("t.cap").unwrap();
    assert_eq!(c.key_params("go"), ["mode", "speed"]);
    assert_eq!(c.key_params("stop"), ["mode"]);
}

#[test]
fn poe_off_and_on_never_share_an_idempotency_key() {
    let poe = cap("aoss.poe.port");
    let key = |state: &str| {
        let action = Action {
            capability: poe.id.clone(),
            verb: "set".into(),
            params: params(json!({ "state": state })),
        };
        idempotency_key("sw-a", &action, "poe-port:1/A1", &poe.key_params("set"))
    };
    assert_eq!(key("off"), "sw-a/aoss.poe.port:set:poe-port:1/A1:state=off");
    assert_ne!(key("off"), key("on"));
}

#[test]
fn shipped_manifests_declare_what_each_verb_leads_to() {
    let table = [
        ("proxmox.vm", "shutdown", json!({}), vec!["stopped"]),
        ("proxmox.vm", "stop", json!({}), vec!["stopped"]),
        ("proxmox.vm", "start", json!({}), vec!["running"]),
        ("proxmox.vm", "resume", json!({}), vec!["running"]),
        (
            "proxmox.vm",
            "suspend",
            json!({}),
            vec!["paused", "suspended"],
        ),
        ("proxmox.vm", "reset", json!({}), vec![]),
        ("proxmox.ct", "shutdown", json!({}), vec!["stopped"]),
        ("proxmox.ct", "start", json!({}), vec!["running"]),
        ("proxmox.node", "shutdown", json!({}), vec![]),
        ("aoss.poe.port", "set", json!({"state": "off"}), vec!["off"]),
        ("aoss.poe.port", "set", json!({"state": "on"}), vec!["on"]),
        ("aoss.poe.port", "set", json!({"state": "cycle"}), vec![]),
        (
            "aoss.interface",
            "set",
            json!({"admin": "down"}),
            vec!["down"],
        ),
        ("aoss.interface", "set", json!({"admin": "up"}), vec!["up"]),
        (
            "host.service",
            "start",
            json!({}),
            vec!["running", "active"],
        ),
        (
            "host.service",
            "stop",
            json!({}),
            vec!["stopped", "inactive"],
        ),
        ("host.service", "restart", json!({}), vec![]),
        ("host.power", "poweroff", json!({}), vec![]),
        ("notify.webhook", "post", json!({"body": "x"}), vec![]),
    ];
    for (cap_id, verb, p, expected) in table {
        let p = params(p);
        assert_eq!(
            cap(cap_id).desired_statuses(verb, &p),
            expected,
            "{cap_id} {verb} {p:?}"
        );
    }
}

#[test]
fn a_param_valued_result_without_values_is_the_param_value_or_its_default() {
    let set = ManifestSet::from_yaml(
        "t.x.yaml",
        &format!(
            "{HEAD}capabilities:\n  - id: t.cap\n    verbs: [set]\n    targets: [thing]\n    params:\n      mode: {{ type: string, default: idle, state: true }}\n    results:\n      set: {{ param: mode }}\n"
        ),
    )
    .expect("loads");
    let (_, c) = set.capability("t.cap").unwrap();
    assert_eq!(
        c.desired_statuses("set", &params(json!({"mode": "busy"}))),
        ["busy"]
    );
    assert_eq!(c.desired_statuses("set", &params(json!({}))), ["idle"]);
    let v = serde_json::to_value(c).unwrap();
    assert_eq!(v["results"], json!({"set": {"param": "mode"}}));
}

// --- bad manifests ----------------------------------------------------------

const HEAD: &str = "id: t.x\nname: T\nversion: 1.0.0\ncategory: generic\n";

/// Loads `HEAD + rest` as `t.x.yaml` and shows every error, one a line.
fn check(rest: &str, expect: Expect) {
    check_file("t.x.yaml", &format!("{HEAD}{rest}"), expect);
}

fn check_file(file: &str, text: &str, expect: Expect) {
    let shown = match ManifestSet::from_yaml(file, text) {
        Ok(_) => "ok\n".to_string(),
        Err(errors) => errors.iter().map(|e| format!("{e}\n")).collect(),
    };
    expect.assert_eq(&shown);
}

#[test]
fn a_minimal_manifest_loads() {
    check(
        "capabilities:\n  - { id: t.cap, verbs: [go], targets: [thing] }\n",
        expect![[r#"
            ok
        "#]],
    );
}

#[test]
fn unknown_fields_are_named_with_a_did_you_mean_at_every_level() {
    check(
        r#"descripton: x
capabilities:
  - id: t.cap
    verbz: [go]
    targets: [thing]
    dry-run: required
    params:
      speed: { type: int, defualt: 3 }
"#,
        expect![[r#"
            t.x.yaml: /descripton: unknown field `descripton` (did you mean `description`?)
            t.x.yaml: /capabilities/0/dry-run: unknown field `dry-run` (did you mean `dry_run`?)
            t.x.yaml: /capabilities/0/verbz: unknown field `verbz` (did you mean `verbs`?)
            t.x.yaml: /capabilities/0/verbs: missing required field
            t.x.yaml: /capabilities/0/params/speed/defualt: unknown field `defualt` (did you mean `default`?)
        "#]],
    );
}

#[test]
fn missing_top_level_fields_are_all_reported() {
    check_file(
        "t.x.yaml",
        "id: t.x\n",
        expect![[r#"
            t.x.yaml: /name: missing required field
            t.x.yaml: /version: missing required field
            t.x.yaml: /category: missing required field
            t.x.yaml: /capabilities: missing required field
        "#]],
    );
}

#[test]
fn empty_verbs_and_targets_are_rejected() {
    check(
        "capabilities:\n  - { id: t.cap, verbs: [], targets: [] }\n  - { id: t.two, verbs: [go, go], targets: [Thing] }\n",
        expect![[r#"
            t.x.yaml: /capabilities/0/verbs: must list at least one verb
            t.x.yaml: /capabilities/0/targets: must list at least one target type
            t.x.yaml: /capabilities/1/verbs/1: verb `go` is listed twice
            t.x.yaml: /capabilities/1/targets/0: target type `Thing` must be lowercase dotted words (letters, digits, `-`, `_`)
        "#]],
    );
}

#[test]
fn duplicate_capability_ids_are_rejected() {
    check(
        "capabilities:\n  - { id: t.cap, verbs: [go], targets: [thing] }\n  - { id: t.cap, verbs: [go], targets: [thing] }\n",
        expect![[r#"
            t.x.yaml: /capabilities/1/id: capability `t.cap` is declared twice
        "#]],
    );
}

#[test]
fn the_id_must_match_the_file_name() {
    check_file(
        "plugins/proxmox.ve.yaml",
        &format!("{HEAD}capabilities:\n  - {{ id: t.cap, verbs: [go], targets: [thing] }}\n"),
        expect![[r#"
            plugins/proxmox.ve.yaml: /id: id `t.x` does not match the file name (expected `proxmox.ve`)
        "#]],
    );
}

#[test]
fn category_and_version_must_be_valid() {
    check_file(
        "t.x.yaml",
        "id: t.x\nname: T\nversion: v1\ncategory: netwrk\ncapabilities:\n  - { id: t.cap, verbs: [go], targets: [thing], dry_run: maybe }\n",
        expect![[r#"
            t.x.yaml: /version: `v1` is not a version like 1.2.3
            t.x.yaml: /category: unknown category `netwrk` (did you mean `network`?)
            t.x.yaml: /capabilities/0/dry_run: unknown dry_run mode `maybe` (expected one of: required, optional, unsupported)
        "#]],
    );
}

#[test]
fn invertible_must_name_declared_verbs_and_params() {
    check(
        r#"capabilities:
  - id: t.cap
    verbs: [start, stop]
    targets: [thing]
    invertible:
      strat: { inverse: stop }
      start: { inverse: halt }
      stop: stop
"#,
        expect![[r#"
            t.x.yaml: /capabilities/0/invertible/stop: expected a mapping like { inverse: stop }, found a string
            t.x.yaml: /capabilities/0/invertible/start/inverse: unknown verb `halt` (expected one of: start, stop)
            t.x.yaml: /capabilities/0/invertible/strat: unknown verb `strat` (did you mean `start`?)
        "#]],
    );
}

#[test]
fn param_valued_inverses_must_use_declared_params_and_allowed_values() {
    check(
        r#"capabilities:
  - id: t.cap
    verbs: [set, go]
    targets: [thing]
    params:
      state: { type: string, allowed: ["on", "off"], required: true, state: true, verbs: [set] }
    invertible:
      set:
        - { when: { state: "of" }, inverse: set, params: { state: "on" } }
        - { when: { sate: "on" }, inverse: set, params: { state: "off" } }
        - { inverse: set, params: { state: "off" } }
        - { when: { state: "on" }, inverse: set }
      go:
        - { when: { state: "on" }, inverse: set, params: { state: 1 } }
"#,
        expect![[r#"
            t.x.yaml: /capabilities/0/invertible/go/0/when/state: param `state` does not apply to verb `go`
            t.x.yaml: /capabilities/0/invertible/go/0/params/state: expected string, found an integer
            t.x.yaml: /capabilities/0/invertible/set/0/when/state: `of` is not one of: on, off (did you mean `off`?)
            t.x.yaml: /capabilities/0/invertible/set/1/when/sate: unknown param `sate` (did you mean `state`?)
            t.x.yaml: /capabilities/0/invertible/set/3: never used: rule 2 above matches every action
        "#]],
    );
}

#[test]
fn param_defaults_must_fit_their_type_and_allowed_values() {
    check(
        r#"capabilities:
  - id: t.cap
    verbs: [go]
    targets: [thing]
    params:
      speed: { type: int, default: "fast" }
      mode: { type: string, allowed: [a, b], default: c }
      level: { type: integr }
      must: { type: bool, required: true, default: true }
      ratio: { type: number, min: 0, max: 1, default: 2 }
      Bad-Name: { type: string }
"#,
        expect![[r#"
            t.x.yaml: /capabilities/0/params/Bad-Name: param name `Bad-Name` must be lowercase letters, digits and `_`
            t.x.yaml: /capabilities/0/params/level/type: unknown type `integr` (did you mean `integer`?)
            t.x.yaml: /capabilities/0/params/mode/default: default does not fit: `c` is not one of: a, b
            t.x.yaml: /capabilities/0/params/must/default: a required param cannot have a default
            t.x.yaml: /capabilities/0/params/ratio/default: default does not fit: must be at most 1
            t.x.yaml: /capabilities/0/params/speed/default: default does not fit: expected integer, found a string
        "#]],
    );
}

#[test]
fn param_verbs_key_fields_and_power_verbs_must_be_declared() {
    check(
        r#"capabilities:
  - id: t.cap
    verbs: [shutdown, start]
    targets: [thing]
    params:
      grace_s: { type: int, verbs: [shutdwn] }
    idempotency: { key_fields: [verb, grace, target_id] }
    powers_off_host: [reboot]
"#,
        expect![[r#"
            t.x.yaml: /capabilities/0/powers_off_host/0: unknown verb `reboot` (expected one of: shutdown, start)
            t.x.yaml: /capabilities/0/params/grace_s/verbs/0: unknown verb `shutdwn` (did you mean `shutdown`?)
            t.x.yaml: /capabilities/0/idempotency/key_fields/1: unknown key field `grace` (did you mean `grace_s`?)
        "#]],
    );
}

#[test]
fn repeatable_verbs_must_be_declared_and_have_a_result() {
    check(
        r#"capabilities:
  - id: t.cap
    verbs: [shutdown, reset]
    targets: [thing]
    results:
      shutdown: stopped
    repeatable: [shutdown, reset, reboot]
"#,
        expect![[r#"
            t.x.yaml: /capabilities/0/repeatable/2: unknown verb `reboot` (expected one of: shutdown, reset)
            t.x.yaml: /capabilities/0/repeatable/1: verb `reset` has no `results` entry: a verb is repeated only where its effect can be read
        "#]],
    );
}

#[test]
fn shutdown_stop_and_poe_off_repeat_but_reset_reboot_and_cycle_never_do() {
    assert!(cap("proxmox.vm").repeats("shutdown", &params(json!({"grace_s": 60}))));
    assert!(cap("proxmox.vm").repeats("stop", &Map::new()));
    assert!(cap("proxmox.ct").repeats("shutdown", &Map::new()));
    assert!(!cap("proxmox.vm").repeats("reset", &Map::new()));
    assert!(!cap("proxmox.node").repeats("reboot", &Map::new()));
    assert!(!cap("host.power").repeats("reboot", &Map::new()));
    let poe = cap("aoss.poe.port");
    assert!(poe.repeats("set", &params(json!({"state": "off"}))));
    assert!(!poe.repeats("set", &params(json!({"state": "cycle"}))));
    assert!(!cap("host.service").repeats("restart", &Map::new()));
    assert!(!cap("notify.webhook").repeats("post", &Map::new()));
}

#[test]
fn results_must_name_declared_verbs_string_params_and_allowed_values() {
    check(
        r#"capabilities:
  - id: t.cap
    verbs: [set, go, halt, stay]
    targets: [thing]
    params:
      state: { type: string, allowed: ["on", "off"], state: true, verbs: [set] }
      n: { type: int }
    results:
      set: { param: state, values: { "on": "on", "dim": "dim" } }
      go: { param: n }
      halt: { param: state }
      stay: []
      jump: stopped
      fly: { param: state, value: { "on": up } }
"#,
        expect![[r#"
            t.x.yaml: /capabilities/0/results/fly/value: unknown field `value` (did you mean `values`?)
            t.x.yaml: /capabilities/0/results/stay: must list at least one status
            t.x.yaml: /capabilities/0/results/fly: unknown verb `fly` (expected one of: set, go, halt, stay)
            t.x.yaml: /capabilities/0/results/go/param: param `n` is integer: a status follows a string param
            t.x.yaml: /capabilities/0/results/halt/param: param `state` does not apply to verb `halt`
            t.x.yaml: /capabilities/0/results/jump: unknown verb `jump` (expected one of: set, go, halt, stay)
            t.x.yaml: /capabilities/0/results/set/values/dim: `dim` is not one of: on, off
        "#]],
    );
}

#[test]
fn connection_fields_are_checked_like_params() {
    check(
        r#"schema:
  connection:
    port: { type: integer, default: "22" }
    password: { type: string, secret: true, default: hunter2 }
    host: { type: string, required: true, default: localhost }
    mode: { type: sting }
  require_one_of: [[password, key]]
capabilities:
  - { id: t.cap, verbs: [go], targets: [thing] }
"#,
        expect![[r#"
            t.x.yaml: /schema/connection/host/default: a required field cannot have a default
            t.x.yaml: /schema/connection/mode/type: unknown type `sting` (did you mean `string`?)
            t.x.yaml: /schema/connection/password/default: a secret field cannot have a default
            t.x.yaml: /schema/connection/port/default: default does not fit: expected integer, found a string
            t.x.yaml: /schema/require_one_of/0/1: unknown connection field `key` (expected one of: host, password, port)
        "#]],
    );
}

#[test]
fn defaults_and_rate_limits_are_type_checked() {
    check(
        r#"defaults:
  dry_run_refresh_sla_s: 0
  http: { timeout_s: five, backoff_ms_start: 500, backoff_ms_max: 100 }
discovery: { interval_s: -1 }
capabilities:
  - { id: t.cap, verbs: [go], targets: [thing], rate_limit: { rps: 0 } }
"#,
        expect![[r#"
            t.x.yaml: /defaults/dry_run_refresh_sla_s: must be at least 1
            t.x.yaml: /defaults/http/timeout_s: expected a non-negative integer, found a string
            t.x.yaml: /defaults/http/backoff_ms_max: 100 is below backoff_ms_start (500)
            t.x.yaml: /discovery/interval_s: must not be negative, found -1
            t.x.yaml: /capabilities/0/rate_limit/rps: must be at least 1
        "#]],
    );
}

#[test]
fn yaml_syntax_errors_name_the_line() {
    check_file(
        "t.x.yaml",
        "id: t.x\ncapabilities: [\n",
        expect![[r#"
            t.x.yaml: /: invalid yaml: did not find expected node content at line 3 column 1, while parsing a flow node
        "#]],
    );
    check_file(
        "t.x.yaml",
        "id: t.x\nid: t.y\n",
        expect![[r#"
            t.x.yaml: /: invalid yaml: duplicate entry with key "id"
        "#]],
    );
}

#[test]
fn load_dir_reports_every_error_of_every_file_and_cross_manifest_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let cap =
        |id: &str| format!("capabilities:\n  - {{ id: {id}, verbs: [go], targets: [thing] }}\n");
    let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "a.one.yaml",
        format!(
            "id: a.one\nname: A\nversion: 1.0.0\ncategory: generic\n{}",
            cap("shared.cap")
        ),
    );
    write(
        "b.two.yml",
        format!(
            "id: b.two\nname: B\nversion: 1.0.0\ncategory: generic\n{}",
            cap("shared.cap")
        ),
    );
    write(
        "c.three.yaml",
        format!(
            "id: c.three\nname: C\nversion: 1.0\ncategory: generic\n{}",
            cap("c.cap")
        ),
    );
    write("notes.txt", "not a manifest".into());
    let errors = ManifestSet::load_dir(dir.path()).unwrap_err();
    let shown: Vec<String> = errors
        .iter()
        .map(|e| {
            e.to_string()
                .replace(&dir.path().display().to_string(), "DIR")
        })
        .collect();
    expect![[r#"
        [
            "DIR/b.two.yml: /capabilities/0/id: capability `shared.cap` is already declared by manifest `a.one` (DIR/a.one.yaml)",
            "DIR/c.three.yaml: /version: `1.0` is not a version like 1.2.3",
        ]
    "#]]
    .assert_debug_eq(&shown);
}

#[test]
fn a_manifest_error_becomes_a_blocker_finding() {
    let errors = ManifestSet::from_yaml("t.x.yaml", "id: t.x\n").unwrap_err();
    let f = errors[0].to_finding();
    assert_eq!(f.severity, inventory::Severity::Blocker);
    assert_eq!(f.code, "manifest.invalid");
    assert_eq!(f.path, "/name");
    assert_eq!(f.message, "t.x.yaml: missing required field");
}

#[test]
fn manifests_serialize_for_the_api_in_their_yaml_shape() {
    let poe = cap("aoss.poe.port");
    let v = serde_json::to_value(&poe).unwrap();
    assert_eq!(
        v["invertible"]["set"][0],
        json!({"when": {"state": "off"}, "inverse": "set", "params": {"state": "on"}})
    );
    assert_eq!(v["params"]["state"]["type"], json!("string"));
    assert_eq!(v["rate_limit"], json!({"rps": 5, "burst": 5}));
    let pve = serde_json::to_value(shipped().get("proxmox.ve").unwrap()).unwrap();
    assert_eq!(pve["category"], json!("host-orchestrator"));
    assert_eq!(
        pve["schema"]["connection"]["token_secret"]["secret"],
        json!(true)
    );
}
