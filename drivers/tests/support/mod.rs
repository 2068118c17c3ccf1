//! Helpers shared by the SSH driver tests (`linux_ssh.rs`, `aruba.rs`). The
//! sshd harness itself is `drivers::testing::sshd` (feature `sim`), so other
//! test crates can use it too.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use drivers::driver::Action;
use drivers::manifest::{Manifest, ManifestSet, RateLimit};
use drivers::testing::sshd::Sshd;
use serde_json::{json, Map, Value};

/// A temp dir readable by other local users (a password-login user's forced
/// command may need to reach files in it).
pub fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    drivers::testing::set_mode(dir.path(), 0o755);
    dir
}

/// The connection map of an SSH host behind `sshd`: key login, host key
/// pinned, 5 s connect and 10 s command timeouts, then the driver's own
/// `fields`, then the test's `overrides` (a `null` removes a field).
pub fn ssh_connection(sshd: &Sshd, fields: Value, overrides: Value) -> Map<String, Value> {
    let mut map = json!({
        "host": sshd.host(),
        "port": sshd.port(),
        "username": sshd.user(),
        "private_key": sshd.client_key_path(),
        "host_key_fingerprint": sshd.host_key_fingerprint(),
        "connect_timeout_s": 5,
        "command_timeout_s": 10,
    });
    let map = map.as_object_mut().unwrap();
    let layers = [fields, overrides];
    for (k, v) in layers.iter().flat_map(|layer| layer.as_object().unwrap()) {
        if v.is_null() {
            map.remove(k);
        } else {
            map.insert(k.clone(), v.clone());
        }
    }
    map.clone()
}

/// An action with JSON params.
pub fn action(capability: &str, verb: &str, params: Value) -> Action {
    Action {
        capability: capability.into(),
        verb: verb.into(),
        params: params.as_object().cloned().unwrap_or_default(),
    }
}

/// Canonical target ids from bare ids: `ids("poe-port", &["1/A1"])`.
pub fn ids(target_type: &str, bare: &[&str]) -> Vec<String> {
    bare.iter()
        .map(|id| format!("{target_type}:{id}"))
        .collect()
}

/// Every `type:<member>/<slot><n>` id of Hazel's rectangle `first..=last`
/// slots and `1..=ports` numbers on member 1 (what the selector resolves
/// `1/A1-1/B4` to).
pub fn rectangle(target_type: &str, slots: &[char], ports: u32) -> Vec<String> {
    slots
        .iter()
        .flat_map(|s| (1..=ports).map(move |n| format!("{target_type}:1/{s}{n}")))
        .collect()
}

/// A copy of shipped manifest `plugin` whose `capability` is limited to
/// `rps` device calls per second with a burst of `burst`.
pub fn manifest_with_rate_limit(plugin: &str, capability: &str, rps: u32, burst: u32) -> Manifest {
    let mut manifest = ManifestSet::embedded()
        .get(plugin)
        .unwrap_or_else(|| panic!("no shipped manifest {plugin}"))
        .clone();
    let cap = manifest
        .capabilities
        .iter_mut()
        .find(|c| c.id == capability)
        .unwrap_or_else(|| panic!("{plugin} has no capability {capability}"));
    cap.rate_limit = Some(RateLimit { rps, burst });
    manifest
}

/// The nanosecond stamps `date +%s%N` appended to `path`, one per line.
pub fn stamps_ns(path: &Path) -> Vec<u128> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().expect("a `date +%s%N` stamp"))
        .collect()
}

/// Waits until sshd logged `count` client disconnects (the driver closed
/// its sessions, so nothing more can be sent on them). Async, so the
/// runtime keeps running while it polls.
pub async fn wait_for_disconnects(sshd: &Sshd, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = sshd.log().matches("Received disconnect from").count();
        if seen >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sshd saw {seen} of {count} disconnects; log:\n{}",
            sshd.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After `delay`, listens on loopback `port` and forwards every connection
/// to loopback `to`: a host that comes up while a driver is connecting.
/// Runs until aborted.
pub async fn forward_after(delay: Duration, port: u16, to: u16) {
    tokio::time::sleep(delay).await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the forwarded port");
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// Fails when `secret` (or a long piece of it) shows up in `text`.
pub fn assert_no_secret(text: &str, secret: &str, what: &str) {
    assert!(!text.contains(secret), "{what} leaks a secret: {text}");
}
