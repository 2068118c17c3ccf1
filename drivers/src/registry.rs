//! The driver registry: the one place that names concrete drivers. It checks
//! a host's connection config against its plugin's manifest (missing and
//! unknown fields, types, defaults) and builds the driver instance bound to
//! that host. The [`ValidatedHost`] it hands out lives in [`crate::host`],
//! below the drivers, and keeps secrets masked in everything it can print:
//! fields the manifest marks `secret: true`, and the credentials of any
//! URL-valued string (userinfo, credential-like query values), whatever
//! field holds it.
//!
//! # Adding a driver
//!
//! Write `pub fn build(host: &ValidatedHost) -> Result<Arc<dyn Driver>, DriverError>`
//! in the driver's module, ship `plugin-specs/<id>.yaml` (and add it to
//! [`crate::manifest::EMBEDDED`]), then add one line to [`DRIVERS`]:
//!
//! ```text
//! ("proxmox.ve", crate::proxmox::build),
//! ```
//!
//! `drivers/tests/registry.rs` fails until every shipped manifest has one.

use std::collections::BTreeMap;
use std::sync::Arc;

use inventory::finding::{did_you_mean_hint, pointer_token, Finding, Severity};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::driver::{Driver, DriverError};
/// Re-exported: the agent reads validated hosts from the registry that
/// produces them.
pub use crate::host::ValidatedHost;
use crate::manifest::{Manifest, ManifestSet};

/// Builds a driver bound to one validated host. Must not touch the network:
/// connections are made lazily by the driver's calls.
pub type Constructor = fn(&ValidatedHost) -> Result<Arc<dyn Driver>, DriverError>;

/// Every driver Hazel ships, by manifest id. Add one line per driver (see
/// the module docs); nothing else names a concrete driver.
pub const DRIVERS: &[(&str, Constructor)] = &[
    ("proxmox.ve", crate::proxmox::build),
    ("linux.ssh", crate::linux_ssh::build),
    ("aruba.aoss", crate::aruba::build),
    ("http.webhook", crate::webhook::build),
];

/// A host as the user configures it (`hazel.yaml` `hosts:` or `POST /api/hosts`).
///
/// `Serialize` writes the connection in clear, secrets included: it exists
/// for the store. Show users a [`ValidatedHost`], which masks them; `Debug`
/// here prints only the connection's field names.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Unique host id, used in target ids and selectors (`pve1`).
    pub id: String,
    /// Manifest id of the driver (`proxmox.ve`).
    pub plugin: String,
    /// The agent itself runs on this host: actions that power it off run last.
    #[serde(rename = "self", default)]
    pub self_host: bool,
    /// Connection fields, checked against the manifest's `schema.connection`.
    #[serde(default)]
    pub connection: Map<String, Value>,
}

/// Why a driver could not be built for a host.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The host names a plugin no manifest declares.
    #[error("host `{host}` uses unknown plugin `{plugin}`")]
    UnknownPlugin {
        host: String,
        plugin: String,
        /// Findings ready for the API (`schema.unknown_plugin`, with a hint).
        findings: Vec<Finding>,
    },
    /// A manifest exists but no driver is registered for it.
    #[error("no driver is registered for plugin `{plugin}`")]
    NoDriver { plugin: String },
    /// The host's config does not fit its manifest.
    #[error(
        "host `{host}` has an invalid configuration: {}",
        list_findings(findings)
    )]
    InvalidHost {
        host: String,
        findings: Vec<Finding>,
    },
    /// The driver's constructor refused the config.
    #[error("cannot build the driver of host `{host}`: {source}")]
    Driver {
        host: String,
        #[source]
        source: DriverError,
    },
}

/// Manifest id -> driver constructor. [`Registry::builtin`] holds
/// [`DRIVERS`]; tests may register fakes.
#[derive(Clone, Default)]
pub struct Registry {
    constructors: BTreeMap<String, Constructor>,
}

impl RegistryError {
    /// Whether trying again later may succeed (only a transient constructor failure).
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Driver { source, .. } => source.is_retryable(),
            _ => false,
        }
    }

    /// The findings to show for this error.
    pub fn findings(&self) -> Vec<Finding> {
        match self {
            RegistryError::UnknownPlugin { findings, .. }
            | RegistryError::InvalidHost { findings, .. } => findings.clone(),
            RegistryError::NoDriver { .. } => {
                vec![Finding::new(
                    Severity::Blocker,
                    "schema.no_driver",
                    "/plugin",
                    self.to_string(),
                )]
            }
            RegistryError::Driver { source, .. } => {
                vec![Finding::new(
                    Severity::Error,
                    source.code(),
                    "/connection",
                    self.to_string(),
                )]
            }
        }
    }
}

impl Registry {
    /// The drivers Hazel ships ([`DRIVERS`]).
    pub fn builtin() -> Registry {
        let mut registry = Registry::empty();
        for (id, constructor) in DRIVERS {
            registry.register(*id, *constructor);
        }
        registry
    }

    /// No drivers at all (tests register their own).
    pub fn empty() -> Registry {
        Registry::default()
    }

    /// Registers (or replaces) the constructor of a plugin.
    pub fn register(
        &mut self,
        plugin: impl Into<String>,
        constructor: Constructor,
    ) -> &mut Registry {
        self.constructors.insert(plugin.into(), constructor);
        self
    }

    /// Builder-style [`Registry::register`].
    pub fn with(mut self, plugin: impl Into<String>, constructor: Constructor) -> Registry {
        self.register(plugin, constructor);
        self
    }

    pub fn get(&self, plugin: &str) -> Option<Constructor> {
        self.constructors.get(plugin).copied()
    }

    pub fn contains(&self, plugin: &str) -> bool {
        self.constructors.contains_key(plugin)
    }

    /// Registered plugin ids, sorted.
    pub fn plugins(&self) -> impl Iterator<Item = &str> {
        self.constructors.keys().map(String::as_str)
    }

    /// Manifests of `manifests` that have no registered driver.
    pub fn unregistered<'m>(&self, manifests: &'m ManifestSet) -> Vec<&'m str> {
        manifests.ids().filter(|id| !self.contains(id)).collect()
    }

    /// Registered drivers without a manifest in `manifests`.
    pub fn without_manifest(&self, manifests: &ManifestSet) -> Vec<&str> {
        self.plugins()
            .filter(|id| manifests.get(id).is_none())
            .collect()
    }

    /// Builds the driver of a validated host.
    pub fn build(&self, host: &ValidatedHost) -> Result<Arc<dyn Driver>, RegistryError> {
        let constructor = self
            .get(&host.plugin)
            .ok_or_else(|| RegistryError::NoDriver {
                plugin: host.plugin.clone(),
            })?;
        constructor(host).map_err(|source| RegistryError::Driver {
            host: host.id.clone(),
            source,
        })
    }

    /// Validates a host config against its manifest and builds its driver.
    pub fn driver_for(
        &self,
        manifests: &ManifestSet,
        host: &HostConfig,
    ) -> Result<(ValidatedHost, Arc<dyn Driver>), RegistryError> {
        let validated = validate_host_in(manifests, host).map_err(|findings| {
            if manifests.get(&host.plugin).is_none() {
                RegistryError::UnknownPlugin {
                    host: host.id.clone(),
                    plugin: host.plugin.clone(),
                    findings,
                }
            } else {
                RegistryError::InvalidHost {
                    host: host.id.clone(),
                    findings,
                }
            }
        })?;
        let driver = self.build(&validated)?;
        Ok((validated, driver))
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.constructors.keys()).finish()
    }
}

/// Validates a host against the manifest its `plugin` names in `manifests`
/// (an unknown plugin is a `schema.unknown_plugin` finding with a hint).
pub fn validate_host_in(
    manifests: &ManifestSet,
    host: &HostConfig,
) -> Result<ValidatedHost, Vec<Finding>> {
    match manifests.get(&host.plugin) {
        Some(manifest) => validate_host(manifest, host),
        None => {
            let mut finding = Finding::new(
                Severity::Blocker,
                "schema.unknown_plugin",
                "/plugin",
                format!("unknown plugin `{}`", host.plugin),
            );
            if let Some(hint) = did_you_mean_hint(&host.plugin, manifests.ids()) {
                finding = finding.with_hint(hint);
            }
            Err(vec![finding])
        }
    }
}

/// Checks a host's config against `manifest.schema.connection`: the plugin
/// id, missing required fields, unknown fields (with a did-you-mean hint),
/// types and allowed values, `require_one_of` groups. Fills defaults.
/// Reports every problem at once as `blocker` findings (`schema.*`) whose
/// paths point into the host config (`/connection/port`); no message
/// quotes a secret.
pub fn validate_host(
    manifest: &Manifest,
    host: &HostConfig,
) -> Result<ValidatedHost, Vec<Finding>> {
    let mut findings = Vec::new();
    let blocker = |code: &str, path: String, message: String| {
        Finding::new(Severity::Blocker, code, path, message)
    };
    if host.plugin != manifest.id {
        findings.push(blocker(
            "schema.plugin_mismatch",
            "/plugin".into(),
            format!("host uses plugin `{}`, not `{}`", host.plugin, manifest.id),
        ));
    }
    if !is_host_id(&host.id) {
        findings.push(blocker(
            "schema.invalid_id",
            "/id".into(),
            format!(
                "host id `{}` must be letters, digits, `.`, `_` or `-`",
                host.id
            ),
        ));
    }
    let schema = &manifest.schema.connection;
    let mut connection = Map::new();
    for (name, value) in &host.connection {
        let path = format!("/connection/{}", pointer_token(name));
        let Some(spec) = schema.get(name) else {
            let mut f = blocker(
                "schema.unknown_field",
                path,
                format!("unknown connection field `{name}`"),
            );
            if let Some(h) = did_you_mean_hint(name, schema.keys().map(String::as_str)) {
                f = f.with_hint(h);
            }
            findings.push(f);
            continue;
        };
        if value.is_null() {
            continue;
        }
        match spec.check(value) {
            Ok(()) => {
                connection.insert(name.clone(), value.clone());
            }
            Err(why) => findings.push(blocker(
                "schema.invalid_value",
                path,
                format!("`{name}`: {why}"),
            )),
        }
    }
    for (name, spec) in schema {
        if host.connection.get(name).is_some_and(|v| !v.is_null()) {
            continue;
        }
        if spec.required {
            let mut f = blocker(
                "schema.missing_field",
                format!("/connection/{}", pointer_token(name)),
                format!("missing required connection field `{name}`"),
            );
            if let Some(d) = &spec.description {
                f = f.with_hint(d.clone());
            }
            findings.push(f);
        } else if let Some(default) = &spec.default {
            connection.insert(name.clone(), default.clone());
        }
    }
    for group in &manifest.schema.require_one_of {
        if !group
            .iter()
            .any(|n| host.connection.get(n).is_some_and(|v| !v.is_null()))
        {
            let names: Vec<String> = group.iter().map(|n| format!("`{n}`")).collect();
            findings.push(blocker(
                "schema.missing_field",
                "/connection".into(),
                format!("one of {} is required", names.join(", ")),
            ));
        }
    }
    if findings.is_empty() {
        Ok(ValidatedHost::new(
            host.id.clone(),
            host.plugin.clone(),
            host.self_host,
            connection,
            Arc::new(manifest.clone()),
        ))
    } else {
        Err(findings)
    }
}

impl std::fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Which fields are secret is the manifest's business, so no value is shown.
        let fields: Vec<&str> = self.connection.keys().map(String::as_str).collect();
        f.debug_struct("HostConfig")
            .field("id", &self.id)
            .field("plugin", &self.plugin)
            .field("self_host", &self.self_host)
            .field("connection_fields", &fields)
            .finish()
    }
}

/// Every finding on one line, `; `-separated: `/connection/x: why (hint)`.
fn list_findings(findings: &[Finding]) -> String {
    let items: Vec<String> = findings
        .iter()
        .map(|f| match &f.hint {
            Some(hint) => format!("{}: {} ({hint})", f.path, f.message),
            None => format!("{}: {}", f.path, f.message),
        })
        .collect();
    items.join("; ")
}

fn is_host_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::ErrorKind;

    fn refuses(_: &ValidatedHost) -> Result<Arc<dyn Driver>, DriverError> {
        Err(DriverError::new(ErrorKind::ConfigError, "not today"))
    }

    #[test]
    fn a_registration_line_is_a_plain_tuple_of_id_and_function() {
        // The same shape as a line of DRIVERS: a fn item coerces to Constructor.
        const LINES: &[(&str, Constructor)] = &[("test.refuses", refuses)];
        let mut registry = Registry::empty();
        for (id, c) in LINES {
            registry.register(*id, *c);
        }
        assert!(registry.contains("test.refuses"));
        assert_eq!(registry.plugins().collect::<Vec<_>>(), ["test.refuses"]);
    }

    #[test]
    fn host_ids_are_simple_words() {
        assert!(is_host_id("pve-1.lab"));
        assert!(!is_host_id(""));
        assert!(!is_host_id("a b"));
    }
}
