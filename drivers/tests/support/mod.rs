//! Helpers shared by the SSH driver tests (`linux_ssh.rs`, `aruba.rs`). The
//! sshd harness itself is `drivers::testing::sshd` (feature `sim`), so other
//! test crates can use it too.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;

use drivers::driver::Action;
use serde_json::Value;

/// A temp dir readable by other local users (a password-login user's forced
/// command may need to reach files in it).
pub fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    dir
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

/// Fails when `secret` (or a long piece of it) shows up in `text`.
pub fn assert_no_secret(text: &str, secret: &str, what: &str) {
    assert!(!text.contains(secret), "{what} leaks a secret: {text}");
}
