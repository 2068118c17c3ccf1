//! Connection settings more than one driver accepts, each flattened
//! (`#[serde(flatten)]`) into the config of the drivers that speak that
//! protocol, with their defaults as named functions here and nowhere else:
//! [`SshSettings`] for `linux.ssh` and `aruba.aoss`, [`HttpSettings`] for
//! `proxmox.ve` and `http.webhook`. A host writes these fields flat in its
//! `connection` map, as before; only the Rust structs are shared.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::secret::Secret;
use crate::ssh::{HostKeyCheck, KeySource, SshConfig};

/// How an SSH driver reaches and logs in to its host, and how long it waits.
#[derive(Debug, Clone, Deserialize)]
pub struct SshSettings {
    /// Host name or address to connect to (a switch's management address).
    pub host: String,
    /// SSH port.
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// User to log in as: one with rights for the commands (or `sudo`) on
    /// Linux, a manager-level user on a switch.
    pub username: String,
    /// Passphrase of an encrypted `private_key`. A secret.
    #[serde(default)]
    pub private_key_passphrase: Option<Secret>,
    /// OpenSSH known_hosts file to verify the host key against.
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// Pinned host key, `SHA256:<base64>` as `ssh-keygen -lf` prints it;
    /// wins over `known_hosts`.
    #[serde(default)]
    pub host_key_fingerprint: Option<String>,
    /// Accept an unknown host key on first connection and remember it (in
    /// `known_hosts` when set). Off unless asked for.
    #[serde(default = "default_trust_on_first_use")]
    pub trust_on_first_use: bool,
    /// Bound on TCP connect, handshake and login, in seconds (the
    /// manifest's `defaults.ssh.connect_timeout_s` when the host sets none).
    #[serde(default = "default_connect_timeout_s")]
    pub connect_timeout_s: u64,
    /// Bound on a whole dry-run (connect, login and every read), in seconds
    /// (the manifest's `defaults.dry_run_refresh_sla_s` when the host sets
    /// none); past it the dry-run fails with `timeout`.
    #[serde(default = "default_dry_run_budget_s")]
    pub dry_run_budget_s: u64,
}

/// How an HTTP driver times out and retries its calls, and whether it
/// checks certificates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpSettings {
    /// Time one request may take, connect to last response byte, in seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Extra attempts after the first for a retryable failure; each driver
    /// says which failures are retryable (never a Proxmox POST; a webhook
    /// POST only with `retry_post`).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First wait between two attempts in milliseconds; doubles per retry.
    #[serde(default = "default_backoff_ms_start")]
    pub backoff_ms_start: u64,
    /// Longest wait between two attempts in milliseconds.
    #[serde(default = "default_backoff_ms_max")]
    pub backoff_ms_max: u64,
    /// Verify the server's TLS certificate (Proxmox: against the system's
    /// CA roots when no pin is set). `false` accepts any certificate.
    #[serde(default = "default_verify_tls")]
    pub verify_tls: bool,
}

impl SshSettings {
    /// The SSH client's settings: these, with the driver's credentials.
    pub fn client_config(
        &self,
        private_key: Option<KeySource>,
        password: Option<Secret>,
    ) -> SshConfig {
        SshConfig {
            host: self.host.clone(),
            port: self.port,
            username: self.username.clone(),
            private_key,
            private_key_passphrase: self.private_key_passphrase.clone(),
            password,
            host_key: HostKeyCheck {
                fingerprint: self.host_key_fingerprint.clone(),
                known_hosts: self.known_hosts.clone(),
                trust_on_first_use: self.trust_on_first_use,
            },
            connect_timeout: Duration::from_secs(self.connect_timeout_s),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            timeout_s: default_timeout_s(),
            retries: default_retries(),
            backoff_ms_start: default_backoff_ms_start(),
            backoff_ms_max: default_backoff_ms_max(),
            verify_tls: default_verify_tls(),
        }
    }
}

/// Decodes a driver config from a host's `connection` map. `fields` are the
/// config's field names in declaration order: `deny_unknown_fields` still
/// refuses an unknown field through `flatten`, but no longer lists the
/// expected ones, so they are checked here first with serde's own message.
pub(crate) fn decode<T: DeserializeOwned>(
    connection: &Map<String, Value>,
    fields: &'static [&'static str],
) -> Result<T, serde_json::Error> {
    if let Some(unknown) = connection.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(serde::de::Error::unknown_field(unknown, fields));
    }
    serde_json::from_value(Value::Object(connection.clone()))
}

fn default_ssh_port() -> u16 {
    22
}

fn default_trust_on_first_use() -> bool {
    false
}

fn default_connect_timeout_s() -> u64 {
    5
}

fn default_dry_run_budget_s() -> u64 {
    5
}

fn default_timeout_s() -> f64 {
    5.0
}

fn default_retries() -> u32 {
    2
}

fn default_backoff_ms_start() -> u64 {
    250
}

fn default_backoff_ms_max() -> u64 {
    2_000
}

fn default_verify_tls() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Probe {
        #[serde(flatten)]
        http: HttpSettings,
        url: String,
    }

    const PROBE_FIELDS: &[&str] = &["url", "timeout_s", "retries"];

    #[test]
    fn an_unknown_field_is_refused_with_the_expected_ones_listed() {
        let map = json!({"url": "u", "retires": 1});
        let err = decode::<Probe>(map.as_object().unwrap(), PROBE_FIELDS).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown field `retires`, expected one of `url`, `timeout_s`, `retries`"
        );
    }

    #[test]
    fn flattened_settings_take_their_defaults() {
        let map = json!({"url": "u", "retries": 4});
        let probe: Probe = decode(map.as_object().unwrap(), PROBE_FIELDS).unwrap();
        assert_eq!(probe.url, "u");
        assert_eq!(probe.http.retries, 4);
        assert_eq!(probe.http.timeout_s, 5.0);
        assert!(probe.http.verify_tls);
    }

    #[test]
    fn each_driver_lists_every_field_its_manifest_declares() {
        let drivers = [
            (crate::aruba::PLUGIN_ID, crate::aruba::FIELDS),
            (crate::linux_ssh::PLUGIN_ID, crate::linux_ssh::FIELDS),
            (crate::webhook::PLUGIN_ID, crate::webhook::FIELDS),
        ];
        for (plugin, fields) in drivers {
            let manifest = crate::manifest::shipped().get(plugin).unwrap();
            let mut listed = fields.to_vec();
            listed.sort_unstable();
            let declared: Vec<&str> = manifest
                .schema
                .connection
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(listed, declared, "{plugin}");
        }
    }
}
