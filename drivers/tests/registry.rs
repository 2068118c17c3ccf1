//! The driver registry: every shipped manifest has a registered driver, host
//! configs are checked against their manifest (missing, unknown, wrong type,
//! defaults) and secrets never show in Debug or JSON: neither `secret: true`
//! fields nor the credentials of a URL in any other field.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use drivers::driver::{
    Action, ConnectionReport, Driver, DriverError, DryRunAnswer, ErrorKind, ExecOutcome,
    RefreshMode,
};
use drivers::host::{is_credential_name, mask_url};
use drivers::manifest::ManifestSet;
use drivers::registry::{
    validate_host, validate_host_in, HostConfig, Registry, RegistryError, ValidatedHost,
};
use drivers::secret::MASK;
use expect_test::{expect, Expect};
use inventory::model::Target;
use inventory::Severity;
use serde_json::json;

#[test]
fn every_shipped_manifest_has_a_registered_driver() {
    let registry = Registry::builtin();
    let manifests = ManifestSet::embedded();
    assert!(
        registry.unregistered(&manifests).is_empty(),
        "manifests in plugin-specs/ without a line in registry::DRIVERS: {:?}",
        registry.unregistered(&manifests)
    );
    assert!(
        registry.without_manifest(&manifests).is_empty(),
        "drivers in registry::DRIVERS without a manifest in plugin-specs/: {:?}",
        registry.without_manifest(&manifests)
    );
}

#[test]
fn every_shipped_manifest_accepts_a_minimal_host_and_builds_its_driver() {
    let manifests = ManifestSet::embedded();
    let minimal = [
        json!({"id": "pve1", "plugin": "proxmox.ve", "connection": {
            "host": "127.0.0.1", "node": "pve", "token_id": "hazel@pve!agent", "token_secret": "s"}}),
        json!({"id": "sw1", "plugin": "aruba.aoss", "connection": {
            "host": "127.0.0.1", "username": "manager", "password": "p",
            "trust_on_first_use": true}}),
        json!({"id": "nas", "plugin": "linux.ssh", "connection": {
            "host": "127.0.0.1", "username": "root", "private_key": "/nonexistent/id_ed25519",
            "trust_on_first_use": true}}),
        json!({"id": "hook", "plugin": "http.webhook", "connection": {"url": "http://127.0.0.1:9/hook"}}),
    ];
    for config in minimal {
        let config = host(config);
        let validated = validate_host_in(&manifests, &config)
            .unwrap_or_else(|f| panic!("{}: {f:?}", config.id));
        match Registry::builtin().build(&validated) {
            Ok(driver) => {
                assert_eq!(driver.plugin_id(), config.plugin);
                assert_eq!(driver.host_id(), config.id);
            }
            Err(e) => panic!("{}: {e}: {:?}", config.id, std::error::Error::source(&e)),
        }
    }
}

fn host(v: serde_json::Value) -> HostConfig {
    serde_json::from_value(v).expect("host config parses")
}

fn pve_host() -> HostConfig {
    host(json!({
        "id": "pve1",
        "plugin": "proxmox.ve",
        "connection": {
            "host": "10.0.0.5",
            "node": "pve",
            "token_id": "hazel@pve!agent",
            "token_secret": "4b1c-very-secret"
        }
    }))
}

/// Validates against the shipped manifests and shows the findings, one a line.
fn check(config: serde_json::Value, expect: Expect) {
    let shown = match validate_host_in(&ManifestSet::embedded(), &host(config)) {
        Ok(h) => format!("ok {}\n", serde_json::to_string(&h).unwrap()),
        Err(findings) => findings
            .iter()
            .map(|f| {
                let hint = f
                    .hint
                    .as_ref()
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default();
                format!(
                    "{} {} {}: {}{hint}\n",
                    f.severity, f.code, f.path, f.message
                )
            })
            .collect(),
    };
    expect.assert_eq(&shown);
}

#[test]
fn a_valid_host_gets_its_defaults_filled_in() {
    let manifests = ManifestSet::embedded();
    let h = validate_host(manifests.get("proxmox.ve").unwrap(), &pve_host()).unwrap();
    assert_eq!(h.u64("port"), Some(8006));
    assert_eq!(h.bool("verify_tls"), Some(true));
    assert_eq!(h.str("scheme"), Some("https"));
    assert_eq!(h.str("tls_fingerprint"), None);
    assert_eq!(h.str("node"), Some("pve"));
    assert!(!h.self_host);
    assert_eq!(h.manifest().id, "proxmox.ve");
    assert_eq!(
        h.fields().collect::<Vec<_>>(),
        [
            "host",
            "node",
            "port",
            "scheme",
            "token_id",
            "token_secret",
            "verify_tls"
        ]
    );
}

#[test]
fn missing_required_fields_are_each_named() {
    let config =
        host(json!({"id": "pve1", "plugin": "proxmox.ve", "connection": {"host": "10.0.0.5"}}));
    let findings = validate_host_in(&ManifestSet::embedded(), &config).unwrap_err();
    let shown: Vec<String> = findings
        .iter()
        .map(|f| format!("{} {} {}: {}", f.severity, f.code, f.path, f.message))
        .collect();
    expect![[r#"
        [
            "blocker schema.missing_field /connection/node: missing required connection field `node`",
            "blocker schema.missing_field /connection/token_id: missing required connection field `token_id`",
            "blocker schema.missing_field /connection/token_secret: missing required connection field `token_secret`",
        ]
    "#]]
    .assert_debug_eq(&shown);
    assert!(
        findings.iter().all(|f| f.hint.is_some()),
        "the field's description is the hint"
    );
}

#[test]
fn unknown_fields_are_named_with_a_did_you_mean_hint() {
    check(
        json!({"id": "sw1", "plugin": "aruba.aoss", "connection": {
            "host": "10.0.0.2", "username": "manager", "pasword": "x"
        }}),
        expect![[r#"
            blocker schema.unknown_field /connection/pasword: unknown connection field `pasword` (did you mean `password`?)
            blocker schema.missing_field /connection: one of `password`, `private_key` is required
        "#]],
    );
}

#[test]
fn an_unknown_field_with_no_close_match_lists_the_known_ones() {
    let config = host(json!({"id": "sw1", "plugin": "aruba.aoss", "connection": {
        "host": "10.0.0.2", "username": "manager", "password": "x", "colour": "red"
    }}));
    let findings = validate_host_in(&ManifestSet::embedded(), &config).unwrap_err();
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].path, "/connection/colour");
    let hint = findings[0].hint.clone().unwrap_or_default();
    assert!(
        hint.starts_with("expected one of: ") && hint.contains("save_config"),
        "{hint}"
    );
}

#[test]
fn wrong_types_and_values_are_reported_without_quoting_secrets() {
    check(
        json!({"id": "sw1", "plugin": "aruba.aoss", "connection": {
            "host": "10.0.0.2", "username": "manager", "password": 12345,
            "port": "22", "save_config": "yes", "protected_ports": ["1/A1", 24]
        }}),
        expect![[r#"
            blocker schema.invalid_value /connection/password: `password`: expected string, found an integer
            blocker schema.invalid_value /connection/port: `port`: expected integer, found a string
            blocker schema.invalid_value /connection/protected_ports: `protected_ports`: item 1: expected string, found an integer
            blocker schema.invalid_value /connection/save_config: `save_config`: expected boolean, found a string
        "#]],
    );
    check(
        json!({"id": "pve1", "plugin": "proxmox.ve", "connection": {
            "host": "h", "node": "n", "token_id": "t", "token_secret": "s", "port": 70000
        }}),
        expect![[r#"
            blocker schema.invalid_value /connection/port: `port`: must be at most 65535
        "#]],
    );
}

#[test]
fn an_unknown_plugin_or_a_mismatched_manifest_is_a_blocker() {
    check(
        json!({"id": "pve1", "plugin": "proxmox", "connection": {}}),
        expect![[r#"
            blocker schema.unknown_plugin /plugin: unknown plugin `proxmox` (did you mean `proxmox.ve`?)
        "#]],
    );
    let manifests = ManifestSet::embedded();
    let findings = validate_host(manifests.get("linux.ssh").unwrap(), &pve_host()).unwrap_err();
    assert_eq!(findings[0].code, "schema.plugin_mismatch");
    assert_eq!(findings[0].severity, Severity::Blocker);
}

#[test]
fn host_configs_reject_unknown_top_level_fields_and_read_self() {
    let err = serde_json::from_value::<HostConfig>(
        json!({"id": "a", "plugin": "linux.ssh", "conection": {}}),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown field `conection`"), "{err}");
    let h = host(json!({"id": "a", "plugin": "linux.ssh", "self": true}));
    assert!(h.self_host && h.connection.is_empty());
    let yaml: HostConfig = serde_norway::from_str(
        "id: nas\nplugin: linux.ssh\nself: true\nconnection:\n  host: 10.0.0.9\n  username: root\n  private_key: /etc/hazel/id_ed25519\n",
    )
    .unwrap();
    let v = validate_host_in(&ManifestSet::embedded(), &yaml).unwrap();
    assert!(v.self_host);
    assert_eq!(v.u64("port"), Some(22));
    assert_eq!(v.bool("trust_on_first_use"), Some(false));
}

#[test]
fn secrets_are_masked_in_debug_and_json() {
    let manifests = ManifestSet::embedded();
    let h = validate_host(manifests.get("proxmox.ve").unwrap(), &pve_host()).unwrap();
    let debug = format!("{h:?}");
    let json = serde_json::to_string(&h).unwrap();
    for shown in [&debug, &json, &format!("{:?}", pve_host())] {
        assert!(
            !shown.contains("4b1c-very-secret"),
            "secret leaked: {shown}"
        );
    }
    assert!(debug.contains(MASK));
    assert_eq!(
        serde_json::to_value(&h).unwrap()["connection"]["token_secret"],
        json!(MASK)
    );
    assert_eq!(
        serde_json::to_value(&h).unwrap()["connection"]["token_id"],
        json!("hazel@pve!agent")
    );
    assert_eq!(serde_json::to_value(&h).unwrap()["self"], json!(false));
    assert!(h.is_secret("token_secret") && !h.is_secret("token_id"));
    let secret = h.secret("token_secret").unwrap();
    assert_eq!(format!("{secret}"), MASK);
    assert_eq!(secret.expose(), "4b1c-very-secret");
}

#[test]
fn urls_lose_their_userinfo_and_credential_query_values() {
    let cases = [
        ("https://user:pass@host/", "https://***@host/"),
        (
            "https://bob@hooks.example:8443/x",
            "https://***@hooks.example:8443/x",
        ),
        (
            "postgres://u:p%40ss@db/hazel?sslmode=require",
            "postgres://***@db/hazel?sslmode=require",
        ),
        (
            "https://hooks.example/in?token=abc&team=ops&api_key=k#top",
            "https://hooks.example/in?token=***&team=ops&api_key=***#top",
        ),
        (
            "https://host/path@not-userinfo",
            "https://host/path@not-userinfo",
        ),
        ("hazel@pve!agent", "hazel@pve!agent"),
        ("10.0.0.5", "10.0.0.5"),
        ("user:pass@host", "user:pass@host"),
    ];
    for (text, shown) in cases {
        assert_eq!(mask_url(text), shown, "{text}");
    }
    assert!(is_credential_name("Authorization") && is_credential_name("X-Api-Key"));
    assert!(!is_credential_name("team") && !is_credential_name("content-type"));
}

#[test]
fn any_url_valued_field_is_shown_without_its_credentials() {
    let config = host(
        json!({"id": "hook", "plugin": "http.webhook", "connection": {
            "url": "https://bob:pw-abc-123@hooks.example/in?token=qs-tok-456&team=ops",
            "secret": "s3cr3t-hmac-key",
            "headers": {"Authorization": "Bearer tok-xyz-789", "X-Team": "ops-team-x"},
            "targets": {"alerts": "alerts"}
        }}),
    );
    let h = validate_host_in(&ManifestSet::embedded(), &config).unwrap();

    let masked = h.masked_connection();
    assert_eq!(
        masked["url"],
        json!("https://***@hooks.example/in?token=***&team=ops")
    );
    assert_eq!(masked["secret"], json!(MASK));
    assert_eq!(masked["headers"], json!(MASK), "webhook headers are secret");
    assert_eq!(masked["targets"], json!({"alerts": "alerts"}));
    let shown = [
        format!("{h:?}"),
        serde_json::to_string(&h).unwrap(),
        format!("{config:?}"),
    ];
    for text in &shown {
        for secret in [
            "pw-abc-123",
            "qs-tok-456",
            "s3cr3t-hmac-key",
            "tok-xyz-789",
            "ops-team-x",
        ] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
    }
    assert_eq!(
        h.str("url"),
        Some("https://bob:pw-abc-123@hooks.example/in?token=qs-tok-456&team=ops"),
        "the driver still gets the real value"
    );

    // A URL in a field no manifest marks secret, in another plugin.
    let mut pve = pve_host();
    pve.connection
        .insert("host".into(), json!("https://root:hunter2@10.0.0.5:8006/"));
    let h = validate_host_in(&ManifestSet::embedded(), &pve).unwrap();
    assert_eq!(
        h.masked_connection()["host"],
        json!("https://***@10.0.0.5:8006/")
    );
    assert!(!format!("{h:?}").contains("hunter2"));
}

#[test]
fn a_webhook_host_that_cannot_be_built_says_why_without_quoting_secrets() {
    let config = host(
        json!({"id": "hook", "plugin": "http.webhook", "connection": {
            "url": "ftp://bob:pw-abc-123@hooks.example/in",
            "headers": {"Authorization": "Bearer tok-xyz-789"}
        }}),
    );
    let err = build_error(&Registry::builtin(), &config);
    let shown = format!("{err} {err:?} {:?}", err.findings());
    assert!(shown.contains("scheme must be http or https"), "{shown}");
    for secret in ["pw-abc-123", "tok-xyz-789"] {
        assert!(!shown.contains(secret), "{secret} leaked in {shown}");
    }
}

#[test]
fn a_secret_outside_its_allowed_values_is_not_quoted() {
    let text = "id: t.x\nname: T\nversion: 1.0.0\ncategory: generic\nschema:\n  connection:\n    pin: { type: string, secret: true, allowed: [a, b] }\ncapabilities:\n  - { id: t.cap, verbs: [go], targets: [thing] }\n";
    let set = ManifestSet::from_yaml("t.x.yaml", text).unwrap();
    let config = host(json!({"id": "h", "plugin": "t.x", "connection": {"pin": "topsecret"}}));
    let findings = validate_host_in(&set, &config).unwrap_err();
    assert_eq!(
        findings[0].message,
        "`pin`: value is not one of the allowed values"
    );
}

// --- building drivers -------------------------------------------------------

struct Fake {
    host: String,
}

#[async_trait]
impl Driver for Fake {
    fn plugin_id(&self) -> &str {
        "proxmox.ve"
    }
    fn host_id(&self) -> &str {
        &self.host
    }
    async fn discover(&self, _: RefreshMode, _: Duration) -> Result<Vec<Target>, DriverError> {
        Ok(Vec::new())
    }
    async fn dry_run(&self, _: &Action, _: &[String]) -> Result<Vec<DryRunAnswer>, DriverError> {
        Ok(Vec::new())
    }
    async fn execute(&self, _: &Action, _: &[String]) -> Result<Vec<ExecOutcome>, DriverError> {
        Ok(Vec::new())
    }
    async fn test_connection(&self) -> Result<ConnectionReport, DriverError> {
        Err(DriverError::new(ErrorKind::NetworkError, "unreachable"))
    }
}

fn build_fake(host: &ValidatedHost) -> Result<Arc<dyn Driver>, DriverError> {
    Ok(Arc::new(Fake {
        host: host.id.clone(),
    }))
}

/// The error of a build that must fail (`Arc<dyn Driver>` has no `Debug` for `unwrap_err`).
fn build_error(registry: &Registry, config: &HostConfig) -> RegistryError {
    match registry.driver_for(&ManifestSet::embedded(), config) {
        Ok(_) => panic!("the driver of `{}` was built", config.id),
        Err(e) => e,
    }
}

fn refuse(_: &ValidatedHost) -> Result<Arc<dyn Driver>, DriverError> {
    Err(DriverError::new(
        ErrorKind::ConfigError,
        "token_id must look like user@realm!name",
    ))
}

#[test]
fn the_registry_builds_a_driver_bound_to_the_validated_host() {
    let registry = Registry::empty().with("proxmox.ve", build_fake);
    let (validated, driver) = registry
        .driver_for(&ManifestSet::embedded(), &pve_host())
        .unwrap();
    assert_eq!(driver.host_id(), "pve1");
    assert_eq!(validated.u64("port"), Some(8006));
    assert_eq!(
        registry.unregistered(&ManifestSet::embedded()),
        ["aruba.aoss", "http.webhook", "linux.ssh"]
    );
}

#[test]
fn the_registry_explains_why_it_cannot_build_a_driver() {
    let err = build_error(&Registry::empty(), &pve_host());
    assert!(matches!(err, RegistryError::NoDriver { .. }));
    assert_eq!(
        err.to_string(),
        "no driver is registered for plugin `proxmox.ve`"
    );

    let registry = Registry::empty().with("proxmox.ve", refuse);
    let err = build_error(&registry, &pve_host());
    assert_eq!(
        err.to_string(),
        "cannot build the driver of host `pve1`: config_error: token_id must look like user@realm!name"
    );
    assert_eq!(err.findings()[0].code, "driver.config_error");
    assert!(!err.is_retryable());

    let mut bad = pve_host();
    bad.connection.remove("node");
    let err = build_error(&registry, &bad);
    assert_eq!(
        err.to_string(),
        "host `pve1` has an invalid configuration: /connection/node: missing required connection field `node` \
         (Node name the host record stands for (node actions act on it); guests are looked up on their current node at action time.)"
    );
    assert_eq!(err.findings()[0].path, "/connection/node");

    bad.plugin = "proxmox.vee".into();
    let err = build_error(&registry, &bad);
    assert!(matches!(err, RegistryError::UnknownPlugin { .. }));
    assert_eq!(
        err.findings()[0].hint.as_deref(),
        Some("did you mean `proxmox.ve`?")
    );
}
