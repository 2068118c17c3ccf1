//! Compile: a schema-valid [`PolicySpec`] checked against the plugin
//! manifests (and the inventory when one is given) and turned into the
//! runtime IR of SPEC §3 ([`crate::ir`]), with its stable hash.
//!
//! Capability, verb, target type and params are checked against the manifest
//! of the policy's host when the host is known (from the inventory), otherwise
//! against the manifest that declares the capability. Params get their
//! manifest defaults filled in, so spelling a default out or leaving it off
//! compiles (and hashes) the same.

use drivers::manifest::{Capability, Manifest, ManifestSet};
use inventory::finding::did_you_mean;
use inventory::index::Inventory;
use inventory::selector::{parse_selector, SelectorMode};
use inventory::{Finding, Severity};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::hash::policy_hash;
use crate::ir::{Ir, MatchIr, PlanStep, TargetsIr, Windows};
use crate::spec::{ActionSpec, PolicySpec, SpecParts, TargetsSpec};

/// What compile knows besides the spec: identity and the clock are inputs, so
/// compiling the same spec twice gives the same IR.
#[derive(Debug, Clone, Default)]
pub struct CompileContext<'a> {
    /// The stored policy's id, `None` before it is saved.
    pub policy_id: Option<String>,
    /// The stored version, 1 before it is saved.
    pub version_int: u64,
    /// The inventory to resolve the selector against, if any.
    pub inventory: Option<&'a Inventory>,
    /// When the resolution happened (`resolved_at`), RFC 3339.
    pub now: Option<String>,
}

/// Compile output: the IR when nothing blocks, every compile finding, and
/// the parts of the spec the IR leaves out.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub ir: Option<Ir>,
    pub findings: Vec<Finding>,
    pub meta: SpecMeta,
}

/// What a spec says about itself rather than about what it does (not hashed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecMeta {
    pub name: String,
    pub enabled: bool,
    pub notes: Option<String>,
}

/// Compiles a spec; see the module docs. The spec is consumed: its parts
/// move into the IR instead of being copied (the actions' ids, verbs and
/// params into the plan steps; the hash reads the plan, not the actions).
pub fn compile(
    mut spec: PolicySpec,
    manifests: &ManifestSet,
    ctx: &CompileContext<'_>,
) -> Compiled {
    let mut findings = Vec::new();
    let host = resolve_host(&spec.targets, manifests, ctx, &mut findings);
    check_target_type(&spec.targets, manifests, host.as_ref(), &mut findings);
    let plan: Vec<Option<PlanStep>> = std::mem::take(&mut spec.actions)
        .into_iter()
        .enumerate()
        .map(|(i, action)| {
            compile_action(
                i,
                action,
                Some(&spec.targets.target_type),
                manifests,
                host.as_ref(),
                &mut findings,
            )
        })
        .collect();
    let (resolved_ids, resolved_at) = resolve_selector(&spec.targets, ctx, &mut findings);

    let blocked = findings.iter().any(|f| f.severity == Severity::Blocker);
    let plan: Option<Vec<PlanStep>> = plan.into_iter().collect();
    let hash = match (&plan, blocked) {
        (Some(plan), false) => Some(policy_hash(&spec, plan)),
        _ => None,
    };
    let PolicySpec {
        name,
        enabled,
        notes,
        priority,
        stop_on_match,
        dynamic_resolution,
        trigger_group,
        conditions,
        targets,
        suppression_s,
        idempotency_s,
        ..
    } = spec;
    let ir = match (hash, plan) {
        (Some(hash), Some(plan)) => Some(Ir {
            policy_id: ctx.policy_id.clone(),
            hash,
            version_int: ctx.version_int.max(1),
            priority,
            stop_on_match,
            dynamic_resolution,
            match_: MatchIr {
                trigger_group,
                conditions,
            },
            targets: TargetsIr {
                host_id: targets.host_id,
                target_type: targets.target_type,
                selector: targets.selector,
                resolved_ids,
                resolved_at,
            },
            plan,
            windows: Windows {
                suppression_s,
                idempotency_s,
            },
        }),
        _ => None,
    };
    Compiled {
        ir,
        findings,
        meta: SpecMeta {
            name,
            enabled,
            notes,
        },
    }
}

/// Compile's findings for the parts of a spec that parsed when the whole
/// did not (SPEC §4): the same checks [`compile`] makes on `targets` and on
/// each action, without building an IR. An action is checked against the
/// target type only when `targets` parsed.
pub fn compile_parts(
    parts: SpecParts,
    manifests: &ManifestSet,
    ctx: &CompileContext<'_>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let host = parts.targets.as_ref().and_then(|targets| {
        let host = resolve_host(targets, manifests, ctx, &mut findings);
        check_target_type(targets, manifests, host.as_ref(), &mut findings);
        host
    });
    let target_type = parts.targets.as_ref().map(|t| t.target_type.as_str());
    for (i, action) in parts.actions {
        compile_action(
            i,
            action,
            target_type,
            manifests,
            host.as_ref(),
            &mut findings,
        );
    }
    if let Some(targets) = &parts.targets {
        resolve_selector(targets, ctx, &mut findings);
    }
    findings
}

/// The manifest of the policy's host, when the inventory knows the host.
struct HostPlugin<'m> {
    plugin: &'m Manifest,
}

fn resolve_host<'m>(
    targets: &TargetsSpec,
    manifests: &'m ManifestSet,
    ctx: &CompileContext<'_>,
    findings: &mut Vec<Finding>,
) -> Option<HostPlugin<'m>> {
    let inventory = ctx.inventory?;
    let host_id = &targets.host_id;
    let Some(host) = inventory.host(host_id) else {
        let known: Vec<&str> = inventory.hosts().map(|h| h.host_id.as_str()).collect();
        let hint = match did_you_mean(host_id, known.iter().copied()) {
            Some(close) => format!("did you mean `{close}`?"),
            None if known.is_empty() => "the inventory has no hosts".to_string(),
            None => format!("known hosts: {}", known.join(", ")),
        };
        findings.push(
            Finding::new(
                Severity::Blocker,
                "compile.unknown_host",
                "/targets/host_id",
                format!("host `{host_id}` is not in the inventory"),
            )
            .with_hint(hint),
        );
        return None;
    };
    match manifests.get(&host.plugin) {
        Some(plugin) => Some(HostPlugin { plugin }),
        None => {
            findings.push(
                Finding::new(
                    Severity::Blocker,
                    "compile.unknown_plugin",
                    "/targets/host_id",
                    format!("host `{host_id}` uses plugin `{}`, which no manifest declares", host.plugin),
                )
                .with_hint("check the plugin directory (--plugins) or the host's `plugin` in the inventory"),
            );
            None
        }
    }
}

fn check_target_type(
    targets: &TargetsSpec,
    manifests: &ManifestSet,
    host: Option<&HostPlugin<'_>>,
    findings: &mut Vec<Finding>,
) {
    let target_type = targets.target_type.as_str();
    let path = "/targets/target_type";
    if let Some(host) = host {
        if !host
            .plugin
            .capabilities
            .iter()
            .any(|c| c.has_target(target_type))
        {
            let types = host.plugin.target_types();
            let hint = match did_you_mean(target_type, types.iter().copied()) {
                Some(close) => format!("did you mean `{close}`?"),
                None => format!(
                    "plugin `{}` acts on: {}",
                    host.plugin.id,
                    types.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            };
            findings.push(
                Finding::new(
                    Severity::Blocker,
                    "compile.target_type_unsupported",
                    path,
                    format!(
                        "host `{}` (plugin `{}`) has no targets of type `{target_type}`",
                        targets.host_id, host.plugin.id
                    ),
                )
                .with_hint(hint),
            );
        }
        return;
    }
    let known = manifests
        .iter()
        .any(|m| m.capabilities.iter().any(|c| c.has_target(target_type)));
    if !known {
        let mut all: Vec<&str> = manifests.iter().flat_map(|m| m.target_types()).collect();
        all.sort_unstable();
        all.dedup();
        let hint = match did_you_mean(target_type, all.iter().copied()) {
            Some(close) => format!("did you mean `{close}`?"),
            None => format!("known target types: {}", all.join(", ")),
        };
        findings.push(
            Finding::new(
                Severity::Blocker,
                "compile.unknown_target_type",
                path,
                format!("no plugin knows target type `{target_type}`"),
            )
            .with_hint(hint),
        );
    }
}

/// Checks one action and turns it into a plan step, moving its parts. JSON
/// pointers (`/actions/{i}/...`) are only formatted for a finding: a valid
/// action needs none.
fn compile_action(
    i: usize,
    action: ActionSpec,
    target_type: Option<&str>,
    manifests: &ManifestSet,
    host: Option<&HostPlugin<'_>>,
    findings: &mut Vec<Finding>,
) -> Option<PlanStep> {
    let path = || format!("/actions/{i}");
    let cap_id = action.capability_id.as_str();
    let capability = find_capability(&path, cap_id, manifests, host, findings)?;

    let mut ok = true;
    if !capability.verbs.iter().any(|v| v == &action.verb) {
        let hint = match did_you_mean(&action.verb, capability.verbs.iter().map(String::as_str)) {
            Some(close) => format!("did you mean `{close}`?"),
            None => format!("verbs of `{cap_id}`: {}", capability.verbs.join(", ")),
        };
        findings.push(
            Finding::new(
                Severity::Blocker,
                "compile.unknown_verb",
                format!("{}/verb", path()),
                format!("capability `{cap_id}` has no verb `{}`", action.verb),
            )
            .with_hint(hint),
        );
        ok = false;
    }
    if let Some(target_type) = target_type.filter(|t| !capability.targets.iter().any(|c| c == t)) {
        findings.push(
            Finding::new(
                Severity::Blocker,
                "compile.target_type_unsupported",
                format!("{}/capability_id", path()),
                format!(
                    "capability `{cap_id}` acts on {}, not on `{target_type}`",
                    capability.targets.join(", ")
                ),
            )
            .with_hint("change targets.target_type or pick a capability for that target type"),
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    let ActionSpec {
        capability_id,
        verb,
        params,
        key_hint,
        retry,
    } = action;
    let params = compile_params(&path, &verb, params, capability, findings)?;
    Some(PlanStep {
        capability: capability_id,
        verb,
        params,
        key_hint,
        retry: retry.filter(|r| *r != crate::spec::RetrySpec::default()),
    })
}

fn find_capability<'m>(
    path: &dyn Fn() -> String,
    cap_id: &str,
    manifests: &'m ManifestSet,
    host: Option<&HostPlugin<'m>>,
    findings: &mut Vec<Finding>,
) -> Option<&'m Capability> {
    let cpath = || format!("{}/capability_id", path());
    if let Some(host) = host {
        if let Some(cap) = host.plugin.capability(cap_id) {
            return Some(cap);
        }
        if let Some((other, _)) = manifests.capability(cap_id) {
            findings.push(
                Finding::new(
                    Severity::Blocker,
                    "compile.capability_not_on_host",
                    cpath(),
                    format!(
                        "capability `{cap_id}` belongs to plugin `{}`, but the host uses plugin `{}`",
                        other.id, host.plugin.id
                    ),
                )
                .with_hint("a policy targets one host; use a capability of that host's plugin"),
            );
            return None;
        }
    } else if let Some((_, cap)) = manifests.capability(cap_id) {
        return Some(cap);
    }
    let all: Vec<&str> = match host {
        Some(h) => h
            .plugin
            .capabilities
            .iter()
            .map(|c| c.id.as_str())
            .collect(),
        None => manifests
            .iter()
            .flat_map(|m| m.capabilities.iter().map(|c| c.id.as_str()))
            .collect(),
    };
    let hint = match did_you_mean(cap_id, all.iter().copied()) {
        Some(close) => format!("did you mean `{close}`?"),
        None => format!("known capabilities: {}", all.join(", ")),
    };
    findings.push(
        Finding::new(
            Severity::Blocker,
            "compile.unknown_capability",
            cpath(),
            format!("unknown capability `{cap_id}`"),
        )
        .with_hint(hint),
    );
    None
}

/// Checks an action's params against the capability and completes them
/// with the manifest's defaults. The given params are all kept when every
/// one passes, so the map is checked by reference first and then extended
/// in place; anything else reports every problem and returns `None`.
fn compile_params(
    path: &dyn Fn() -> String,
    verb: &str,
    params: Map<String, Value>,
    capability: &Capability,
    findings: &mut Vec<Finding>,
) -> Option<Map<String, Value>> {
    let mut ok = true;
    let declared = || capability.params_for(verb);
    for (name, value) in &params {
        let ppath = || {
            format!(
                "{}/params/{}",
                path(),
                inventory::finding::pointer_token(name)
            )
        };
        let Some(spec) = capability
            .params
            .get(name.as_str())
            .filter(|spec| spec.applies_to(verb))
        else {
            let other_verb = capability.params.contains_key(name.as_str());
            let message = if other_verb {
                format!(
                    "param `{name}` does not apply to verb `{verb}` of `{}`",
                    capability.id
                )
            } else {
                format!("capability `{}` has no param `{name}`", capability.id)
            };
            let names: Vec<&str> = declared().map(|(n, _)| n).collect();
            let hint = match did_you_mean(name, names.iter().copied()) {
                Some(close) => format!("did you mean `{close}`?"),
                None if names.is_empty() => format!("verb `{verb}` takes no params"),
                None => format!("params of `{verb}`: {}", names.join(", ")),
            };
            findings.push(
                Finding::new(Severity::Blocker, "compile.unknown_param", ppath(), message)
                    .with_hint(hint),
            );
            ok = false;
            continue;
        };
        if let Err(why) = spec.check(value) {
            let code = if spec.ty.accepts(value) {
                "compile.param_value"
            } else {
                "compile.param_type"
            };
            findings.push(Finding::new(
                Severity::Blocker,
                code,
                ppath(),
                format!("param `{name}`: {why}"),
            ));
            ok = false;
        }
    }
    for (name, spec) in declared() {
        if params.contains_key(name) || spec.default.is_some() {
            continue;
        }
        if spec.required {
            let hint = match &spec.allowed {
                Some(values) => format!(
                    "one of: {}",
                    values
                        .iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => format!("a value of type {}", spec.ty),
            };
            findings.push(
                Finding::new(
                    Severity::Blocker,
                    "compile.missing_param",
                    format!("{}/params/{name}", path()),
                    format!("verb `{verb}` of `{}` needs param `{name}`", capability.id),
                )
                .with_hint(hint),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    let mut out = params;
    for (name, spec) in declared() {
        if let Some(default) = &spec.default {
            if !out.contains_key(name) {
                out.insert(name.to_string(), default.clone());
            }
        }
    }
    Some(out)
}

/// `blocker compile.protected_target` when the selection holds targets the
/// host's driver marks as never to be touched (`attrs.protected = true`:
/// the `protected_ports` of an `aruba.aoss` host), naming them (SPEC §4:
/// a bad selector blocks Save). The driver refuses them again at dry-run.
fn protected_finding(
    ids: &[String],
    host: &inventory::index::HostInventory,
    mode: SelectorMode,
    path: &str,
) -> Option<Finding> {
    let protected: Vec<&str> = ids
        .iter()
        .filter(|id| {
            host.get(id)
                .and_then(|t| t.attrs.get("protected"))
                .is_some_and(|v| v == &Value::Bool(true))
        })
        .map(String::as_str)
        .collect();
    if protected.is_empty() {
        return None;
    }
    let hint = if mode == SelectorMode::Query {
        "add `and attrs.protected != true` to the query".to_owned()
    } else {
        format!("leave {} out of the selector", protected.join(", "))
    };
    Some(
        Finding::new(
            Severity::Blocker,
            "compile.protected_target",
            path,
            format!(
                "the selector includes protected target(s) {} of host {} (host config protected_ports): actions on them are refused",
                protected.join(", "),
                host.host_id
            ),
        )
        .with_hint(hint),
    )
}

fn resolve_selector(
    targets: &TargetsSpec,
    ctx: &CompileContext<'_>,
    findings: &mut Vec<Finding>,
) -> (Option<Vec<String>>, Option<String>) {
    let path = "/targets/selector/value";
    let sel = &targets.selector;
    let selector = match parse_selector(sel.mode, &sel.value, &targets.target_type) {
        Ok(s) => s,
        Err(errors) => {
            findings.extend(errors.iter().map(|e| e.to_finding(path)));
            return (None, None);
        }
    };
    if sel.mode == SelectorMode::Ledger {
        return (None, None);
    }
    if let Some(host) = ctx.inventory.and_then(|inv| inv.host(&targets.host_id)) {
        return match selector.resolve(host) {
            Ok(resolution) => {
                findings.extend(resolution.findings.into_iter().map(|mut f| {
                    if f.path.is_empty() {
                        f.path = path.to_string();
                    }
                    f
                }));
                if let Some(finding) = protected_finding(&resolution.ids, host, sel.mode, path) {
                    findings.push(finding);
                }
                (Some(resolution.ids), ctx.now.clone())
            }
            Err(e) => {
                findings.push(e.to_finding(path));
                (None, None)
            }
        };
    }
    match selector.expand() {
        Ok(ids) => (ids, None),
        Err(e) => {
            findings.push(e.to_finding(path));
            (None, None)
        }
    }
}
