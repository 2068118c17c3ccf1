//! `hazel config check [--config FILE]`, also run by `hazel serve` before it
//! starts: every problem of every section and every host of the config at
//! once (SPEC §12), each with its field path (`hosts[1] (pve-01).connection.
//! base_url`), why, and what to write instead (the manifest's fields, a
//! "did you mean"). A problem makes the config unusable (exit 2); a warning
//! (a key that is not there yet) does not.
//!
//! Serde stops at the first error, so the text is walked as a YAML tree and
//! each field is deserialized on its own (every section's fields have
//! defaults, so `{field: value}` checks exactly that field); hosts are
//! checked against their manifests and their drivers built (no network).

use std::io::Write;
use std::path::{Path, PathBuf};

use drivers::manifest::{shipped, ManifestSet};
use drivers::registry::{validate_host_in, HostConfig, Registry};
use inventory::finding::did_you_mean_hint;
use serde::de::DeserializeOwned;
use serde_norway::{Mapping, Value};

use crate::service::config::{ApiLimits, AuthConfig, Config, SecretsConfig, WebhookConfig};

/// One thing wrong with the config (or, as a warning, missing around it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where: `listen`, `api.idle_timeout`, `hosts[0] (pve-01).connection.port`.
    pub path: String,
    /// Why, lowercase.
    pub message: String,
    /// What to write instead (did you mean, expected fields), one per line.
    pub hints: Vec<String>,
}

/// What `hazel config check` found in one file.
#[derive(Debug)]
pub struct ConfigReport {
    /// The file as the user named it (messages use it, never `hazel.yaml`).
    pub file: PathBuf,
    /// Problems that make the config unusable; empty when it is usable.
    pub problems: Vec<ConfigProblem>,
    /// Things `hazel serve` will need that are not there (keys, secrets).
    pub warnings: Vec<ConfigProblem>,
    /// The config, when it has no problem.
    pub config: Option<Config>,
}

impl ConfigReport {
    /// No problem: `hazel serve` can read it.
    pub fn is_usable(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Top-level fields of the config, in `docs/configuration.md` order.
pub const CONFIG_FIELDS: &[&str] = &[
    "listen",
    "data_dir",
    "plugin_dir",
    "hosts",
    "timezone",
    "concurrency",
    "log_format",
    "log_color",
    "auth",
    "secrets",
    "api",
    "webhooks",
    "nut",
    "item_ttl",
    "shutdown_grace",
    "backup",
];
const AUTH_FIELDS: &[&str] = &["jwt_key_file", "jwt_key_env"];
const SECRETS_FIELDS: &[&str] = &["key_file", "key_env"];
const API_FIELDS: &[&str] = &[
    "body_limit_bytes",
    "rate_per_s",
    "rate_burst",
    "max_connections",
    "max_connections_per_ip",
    "header_read_timeout",
    "idle_timeout",
    "write_timeout",
    "body_read_timeout",
];
const WEBHOOK_FIELDS: &[&str] = &[
    "secret_env",
    "secret_file",
    "allow_unsigned",
    "rate_per_s",
    "rate_burst",
];
const HOST_FIELDS: &[&str] = &["id", "plugin", "self", "connection"];

/// Reads and checks the config file at `path`.
pub fn check_file(path: &Path) -> ConfigReport {
    match crate::cli::read_bounded(path) {
        Ok(text) => check_text(&text, path, &Registry::builtin()),
        Err(e) => ConfigReport {
            file: path.to_path_buf(),
            problems: vec![problem(
                "(file)".into(),
                format!("cannot read {}: {e}", path.display()),
            )],
            warnings: Vec::new(),
            config: None,
        },
    }
}

/// Checks config text; `file` is only for messages and relative paths are
/// not resolved against it (as `hazel serve` does not).
pub fn check_text(text: &str, file: &Path, registry: &Registry) -> ConfigReport {
    let mut report = ConfigReport {
        file: file.to_path_buf(),
        problems: Vec::new(),
        warnings: Vec::new(),
        config: None,
    };
    let root = if text.trim().is_empty() {
        Value::Mapping(Mapping::new())
    } else {
        match serde_norway::from_str::<Value>(text) {
            Ok(Value::Null) => Value::Mapping(Mapping::new()),
            Ok(v) => v,
            Err(e) => {
                report
                    .problems
                    .push(problem("(file)".into(), format!("not valid YAML: {e}")));
                return report;
            }
        }
    };
    let Value::Mapping(root) = root else {
        report.problems.push(problem(
            "(file)".into(),
            "the config must be a mapping of fields (`listen: ...`, `hosts: ...`)".into(),
        ));
        return report;
    };
    let problems = &mut report.problems;
    // The fields that parsed, hosts aside, make a partial config whose
    // range checks run even when another field is wrong.
    let mut good = Mapping::new();
    let mut hosts = None;
    for (key, value) in &root {
        let Some(name) = key.as_str() else {
            problems.push(problem(
                format!("{key:?}"),
                "field names are strings".into(),
            ));
            continue;
        };
        match name {
            "hosts" => hosts = Some(value),
            "auth" => {
                let ok = section::<AuthConfig>(name, value, AUTH_FIELDS, problems);
                good.insert(key.clone(), ok);
            }
            "secrets" => {
                let ok = section::<SecretsConfig>(name, value, SECRETS_FIELDS, problems);
                good.insert(key.clone(), ok);
            }
            "api" => {
                let ok = section::<ApiLimits>(name, value, API_FIELDS, problems);
                good.insert(key.clone(), ok);
            }
            "webhooks" => {
                let ok = webhooks(value, problems);
                good.insert(key.clone(), ok);
            }
            "nut" => {
                let ok = nut(value, problems);
                good.insert(key.clone(), ok);
            }
            _ if !CONFIG_FIELDS.contains(&name) => {
                problems.push(unknown(name.to_string(), name, CONFIG_FIELDS));
            }
            _ => match field::<Config>(name, value) {
                Ok(()) => {
                    good.insert(key.clone(), value.clone());
                }
                Err(why) => problems.push(problem(name.to_string(), why)),
            },
        }
    }
    let partial: Option<Config> = serde_norway::from_value(Value::Mapping(good)).ok();
    if let Some(partial) = &partial {
        for e in partial.problems() {
            let crate::service::config::ConfigError::Invalid { field, message } = e else {
                continue;
            };
            problems.push(problem(field.to_string(), message));
        }
    }
    let manifests = match partial.as_ref().and_then(|c| c.plugin_dir.as_deref()) {
        Some(dir) => match crate::cli::load_manifests(Some(dir)) {
            Ok(m) => Some(m),
            Err(e) => {
                problems.push(problem("plugin_dir".into(), e.to_string()));
                None
            }
        },
        None => Some(shipped().clone()),
    };
    if let Some(hosts) = hosts {
        check_hosts(hosts, manifests.as_ref(), registry, problems);
    }
    if !report.problems.is_empty() {
        return report;
    }
    match Config::parse(text, file) {
        Ok(config) => {
            report.warnings = warnings(&config);
            report.config = Some(config);
        }
        // The walk above missed something serde saw: still say it.
        Err(e) => report
            .problems
            .push(problem("(file)".into(), e.to_string())),
    }
    report
}

/// Prints the report for people: the problems (or a summary of a usable
/// config), then the warnings. Returns the exit code: 0 usable, 2 not.
pub fn render(report: &ConfigReport, out: &mut impl Write) -> std::io::Result<i32> {
    let file = report.file.display();
    if !report.is_usable() {
        let n = report.problems.len();
        writeln!(
            out,
            "config {file}: unusable, {n} problem{}",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &report.problems {
            write_problem(out, p)?;
        }
    } else if let Some(c) = &report.config {
        writeln!(out, "config {file}: ok")?;
        writeln!(
            out,
            "  listen {}, data_dir {}, timezone {}, concurrency {}",
            c.listen,
            c.data_dir.display(),
            c.timezone,
            c.concurrency
        )?;
        let hosts: Vec<String> = c
            .hosts
            .iter()
            .map(|h| {
                let own = if h.self_host { ", self" } else { "" };
                format!("{} ({}{own})", h.id, h.plugin)
            })
            .collect();
        writeln!(
            out,
            "  {}{}{}",
            count(hosts.len(), "host"),
            if hosts.is_empty() { "" } else { ": " },
            hosts.join(", ")
        )?;
        let plugins = match &c.plugin_dir {
            Some(dir) => format!("manifests from {}", dir.display()),
            None => "built-in manifests".into(),
        };
        writeln!(
            out,
            "  {}, {}, {plugins}",
            count(c.nut.len(), "NUT UPS"),
            count(c.webhooks.len(), "webhook"),
        )?;
    }
    for w in &report.warnings {
        writeln!(out, "warning: {}: {}", w.path, w.message)?;
    }
    Ok(if report.is_usable() {
        super::EXIT_OK
    } else {
        super::EXIT_USAGE
    })
}

/// `hazel config check`: checks, prints, returns the exit code.
pub fn run(path: &Path, out: &mut impl Write) -> i32 {
    let report = check_file(path);
    render(&report, out).unwrap_or(super::EXIT_USAGE)
}

/// The report as text (what `hazel serve` prints when it refuses to start).
pub fn render_text(report: &ConfigReport) -> String {
    let mut out = Vec::new();
    let _ = render(report, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn write_problem(out: &mut impl Write, p: &ConfigProblem) -> std::io::Result<()> {
    writeln!(out, "  {}: {}", p.path, p.message)?;
    for hint in &p.hints {
        writeln!(out, "      {hint}")?;
    }
    Ok(())
}

fn count(n: usize, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        _ if what.ends_with('S') => format!("{n} {what}es"),
        _ => format!("{n} {what}s"),
    }
}

fn problem(path: String, message: String) -> ConfigProblem {
    ConfigProblem {
        path,
        message,
        hints: Vec::new(),
    }
}

fn unknown(path: String, name: &str, known: &[&str]) -> ConfigProblem {
    ConfigProblem {
        path,
        message: format!("unknown field `{name}`"),
        hints: did_you_mean_hint(name, known.iter().copied())
            .into_iter()
            .collect(),
    }
}

/// Deserializes `{name: value}` as `T`, whose other fields have defaults:
/// the error, if any, is about this field alone.
fn field<T: DeserializeOwned>(name: &str, value: &Value) -> Result<(), String> {
    let mut one = Mapping::new();
    one.insert(Value::String(name.into()), value.clone());
    match serde_norway::from_value::<T>(Value::Mapping(one)) {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            let text = text
                .strip_prefix(&format!("{name}: "))
                .unwrap_or(&text)
                .to_string();
            Err(text)
        }
    }
}

/// A mapping section (`api`, `auth`, `webhooks.x`): each field on its own.
/// Returns the fields that parsed.
fn section<T: DeserializeOwned>(
    path: &str,
    value: &Value,
    known: &[&str],
    problems: &mut Vec<ConfigProblem>,
) -> Value {
    let mut ok = Mapping::new();
    let Value::Mapping(map) = value else {
        if !value.is_null() {
            problems.push(problem(
                path.into(),
                format!("must be a mapping of {}", known.join(", ")),
            ));
        }
        return Value::Mapping(ok);
    };
    for (key, v) in map {
        let name = key.as_str().unwrap_or("?");
        let at = format!("{path}.{name}");
        if !known.contains(&name) {
            problems.push(unknown(at, name, known));
        } else if let Err(why) = field::<T>(name, v) {
            problems.push(problem(at, why));
        } else {
            ok.insert(key.clone(), v.clone());
        }
    }
    Value::Mapping(ok)
}

fn webhooks(value: &Value, problems: &mut Vec<ConfigProblem>) -> Value {
    let mut ok = Mapping::new();
    let Value::Mapping(map) = value else {
        if !value.is_null() {
            problems.push(problem(
                "webhooks".into(),
                "must be a mapping of webhook names to their settings".into(),
            ));
        }
        return Value::Mapping(ok);
    };
    for (key, v) in map {
        let name = key.as_str().unwrap_or("?");
        let hook =
            section::<WebhookConfig>(&format!("webhooks.{name}"), v, WEBHOOK_FIELDS, problems);
        ok.insert(key.clone(), hook);
    }
    Value::Mapping(ok)
}

fn nut(value: &Value, problems: &mut Vec<ConfigProblem>) -> Value {
    let mut ok = Vec::new();
    let Value::Sequence(items) = value else {
        if !value.is_null() {
            problems.push(problem(
                "nut".into(),
                "must be a list of UPSes (`- {host: ..., ups: ...}`)".into(),
            ));
        }
        return Value::Sequence(ok);
    };
    for (i, item) in items.iter().enumerate() {
        match serde_norway::from_value::<crate::nut::NutConfig>(item.clone()) {
            Ok(_) => ok.push(item.clone()),
            Err(e) => problems.push(problem(format!("nut[{i}]"), e.to_string())),
        }
    }
    Value::Sequence(ok)
}

fn check_hosts(
    value: &Value,
    manifests: Option<&ManifestSet>,
    registry: &Registry,
    problems: &mut Vec<ConfigProblem>,
) {
    let Value::Sequence(items) = value else {
        if !value.is_null() {
            problems.push(problem(
                "hosts".into(),
                "must be a list of hosts (`- id: ...`)".into(),
            ));
        }
        return;
    };
    let mut seen = std::collections::BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let id = item.get("id").and_then(Value::as_str);
        let label = match id {
            Some(id) => format!("hosts[{i}] ({id})"),
            None => format!("hosts[{i}]"),
        };
        if let Some(id) = id {
            if let Some(first) = seen.insert(id.to_string(), i) {
                problems.push(problem(
                    format!("{label}.id"),
                    format!("host id `{id}` is already used by hosts[{first}]"),
                ));
            }
        }
        check_host(&label, item, manifests, registry, problems);
    }
}

fn check_host(
    label: &str,
    item: &Value,
    manifests: Option<&ManifestSet>,
    registry: &Registry,
    problems: &mut Vec<ConfigProblem>,
) {
    let Value::Mapping(map) = item else {
        problems.push(problem(
            label.into(),
            "a host is a mapping: `{id, plugin, self?, connection}`".into(),
        ));
        return;
    };
    let before = problems.len();
    for (key, _) in map {
        let name = key.as_str().unwrap_or("?");
        if !HOST_FIELDS.contains(&name) {
            problems.push(unknown(format!("{label}.{name}"), name, HOST_FIELDS));
        }
    }
    for name in ["id", "plugin"] {
        match map.get(name) {
            None => problems.push(problem(
                format!("{label}.{name}"),
                format!("missing required field `{name}`"),
            )),
            Some(v) if !v.is_string() => problems.push(problem(
                format!("{label}.{name}"),
                "must be a string".into(),
            )),
            Some(_) => {}
        }
    }
    if map.get("self").is_some_and(|v| !v.is_bool()) {
        problems.push(problem(
            format!("{label}.self"),
            "must be true or false".into(),
        ));
    }
    if map
        .get("connection")
        .is_some_and(|v| !v.is_mapping() && !v.is_null())
    {
        problems.push(problem(
            format!("{label}.connection"),
            "must be a mapping of the plugin's connection fields".into(),
        ));
    }
    if problems.len() > before {
        return;
    }
    let Some(manifests) = manifests else { return };
    let host: HostConfig = match serde_norway::from_value(item.clone()) {
        Ok(h) => h,
        Err(e) => {
            problems.push(problem(label.into(), e.to_string()));
            return;
        }
    };
    let validated = match validate_host_in(manifests, &host) {
        Ok(v) => v,
        Err(findings) => {
            let mut expected = manifests.get(&host.plugin).map(expected_fields);
            for f in findings {
                let mut p = problem(
                    format!("{label}{}", f.path.replace('/', ".")),
                    f.message.clone(),
                );
                // The manifest's fields, once per host on its first
                // connection problem, say more than "expected one of".
                let listing = f
                    .hint
                    .as_deref()
                    .is_some_and(|h| h.starts_with("expected one of"));
                if !listing {
                    p.hints.extend(f.hint.clone());
                }
                if f.path.starts_with("/connection") {
                    p.hints.extend(expected.take());
                }
                problems.push(p);
            }
            return;
        }
    };
    if let Err(e) = registry.build(&validated) {
        let why = match e {
            drivers::registry::RegistryError::Driver { source, .. } => source.message,
            other => other.to_string(),
        };
        problems.push(problem(format!("{label}.connection"), why));
    }
}

/// `expected connection fields of proxmox.ve: host (required), port (default 8006), ...`
fn expected_fields(manifest: &drivers::manifest::Manifest) -> String {
    let fields: Vec<String> = manifest
        .schema
        .connection
        .iter()
        .map(|(name, spec)| {
            if spec.required {
                format!("{name} (required)")
            } else if let Some(d) = spec.default.as_ref().filter(|d| !d.is_object()) {
                format!("{name} (default {d})")
            } else {
                name.clone()
            }
        })
        .collect();
    format!(
        "expected connection fields of {}: {}",
        manifest.id,
        fields.join(", ")
    )
}

/// What `hazel serve` will look for besides the file: the API token key,
/// the secrets key, webhook secrets.
fn warnings(config: &Config) -> Vec<ConfigProblem> {
    use crate::service::config::ConfigError;
    let message = |e: ConfigError| match e {
        ConfigError::Key { message, .. } => message,
        other => other.to_string(),
    };
    let mut warnings = Vec::new();
    if let Err(e) = config.jwt_key() {
        warnings.push(problem(
            "auth".into(),
            format!("{}; `hazel serve` refuses to start without it", message(e)),
        ));
    }
    if let Err(e) = config.secret_key_text() {
        warnings.push(problem("secrets.key_file".into(), message(e)));
    }
    for name in config.webhooks.keys() {
        if let Err(e) = config.webhook_secret(name) {
            warnings.push(problem(format!("webhooks.{name}"), message(e)));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expect: expect_test::Expect) {
        let report = check_text(text, Path::new("site.yaml"), &Registry::builtin());
        let mut out = render_text(&report);
        out.push_str(&format!(
            "exit {}\n",
            if report.is_usable() { 0 } else { 2 }
        ));
        expect.assert_eq(&out);
    }

    #[test]
    fn every_top_level_field_is_known_to_the_config() {
        for name in CONFIG_FIELDS {
            let err = field::<Config>(name, &Value::Null)
                .err()
                .unwrap_or_default();
            assert!(!err.contains("unknown field"), "{name}: {err}");
        }
    }

    #[test]
    fn a_bad_duration_names_its_field_and_shows_the_syntax() {
        check(
            "shutdown_grace: 30 seconds\n",
            expect_test::expect![[r#"
                config site.yaml: unusable, 1 problem
                  shutdown_grace: `30 seconds` is not a duration: unexpected ` ` at position 2 (units are s, m, h, d); write e.g. `30s`, `10m` or `1h30m`
                exit 2
            "#]],
        );
    }

    #[test]
    fn a_host_name_in_listen_asks_for_an_ip() {
        check(
            "listen: localhost:8088\n",
            expect_test::expect![[r#"
                config site.yaml: unusable, 1 problem
                  listen: `localhost:8088` is not an IP address and port: write e.g. `127.0.0.1:8088` or `[::1]:8088` (names such as `localhost` are not resolved)
                exit 2
            "#]],
        );
    }

    #[test]
    fn problems_of_every_section_are_listed_together() {
        check(
            "concurency: 4\ntimezone: Mars/Base\napi:\n  idle_timout: 5s\n  rate_per_s: 0\nwebhooks:\n  x: {allow_unsigned: maybe}\n",
            expect_test::expect![[r#"
                config site.yaml: unusable, 5 problems
                  concurency: unknown field `concurency`
                      did you mean `concurrency`?
                  api.idle_timout: unknown field `idle_timout`
                      did you mean `idle_timeout`?
                  webhooks.x.allow_unsigned: invalid type: string "maybe", expected a boolean
                  timezone: `Mars/Base` is not an IANA time zone (e.g. `Europe/Berlin`, `UTC`)
                  api.rate_per_s: rate_per_s and rate_burst must be at least 1
                exit 2
            "#]],
        );
    }
}
