//! Validation: schema checks, then compile of every part that parsed (SPEC
//! §4), every finding at once. The
//! [`ValidationReport`] is the one object both `hazel validate --json` and
//! `POST /api/policies/validate` answer with.

use drivers::manifest::ManifestSet;
use inventory::{Finding, Severity};
use serde::Serialize;
use serde_json::Value;

use crate::compile::{compile, compile_parts, CompileContext, SpecMeta};
use crate::ir::Ir;
use crate::spec::{parse_document, parse_spec_lenient, Node, Parsed};

/// Which stage found an issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The document's shape: fields, types, enums, durations, schedules.
    Schema,
    /// Checks against manifests and the inventory: capabilities, verbs, params, selector.
    Compile,
}

/// A finding plus the stage that produced it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Issue {
    #[serde(flatten)]
    pub finding: Finding,
    pub stage: Stage,
}

/// `{ok, issues, hash, ir}`: `ok` is false when any issue is a blocker;
/// `hash` and `ir` are present whenever there is no blocker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationReport {
    pub ok: bool,
    pub issues: Vec<Issue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ir: Option<Ir>,
}

impl ValidationReport {
    /// The worst severity among the issues, `None` when there are none.
    pub fn worst(&self) -> Option<Severity> {
        self.issues.iter().map(|i| i.finding.severity).max()
    }
}

/// A validated policy: the report, and the spec's name, `enabled` and notes
/// when the schema stage passed.
#[derive(Debug, Clone)]
pub struct Validated {
    pub report: ValidationReport,
    pub meta: Option<SpecMeta>,
}

/// The most findings one validation answers with (SPEC §12): past it the
/// most severe are kept, then one `validate.truncated` finding says how
/// many more there were. A policy has a handful; without the cap a
/// document of 49 000 unknown fields (the most the value budget lets
/// through) answers with 10 MB of findings.
pub const MAX_FINDINGS: usize = 200;

/// Validates policy text (JSON or YAML).
pub fn validate_text(text: &str, manifests: &ManifestSet, ctx: &CompileContext<'_>) -> Validated {
    with_arena(|arena| match parse_document(text, arena) {
        Ok(doc) => validate_node(&doc, manifests, ctx),
        Err(e) => Validated {
            report: ValidationReport {
                ok: false,
                issues: vec![Issue {
                    finding: e.to_finding(),
                    stage: Stage::Schema,
                }],
                hash: None,
                ir: None,
            },
            meta: None,
        },
    })
}

/// Runs `f` with this thread's document arena, reset afterwards, so a
/// validation allocates nothing for its document tree once warm. A nested
/// call (none today) gets a fresh arena instead of panicking.
fn with_arena<R>(f: impl FnOnce(&bumpalo::Bump) -> R) -> R {
    thread_local! {
        static ARENA: std::cell::RefCell<bumpalo::Bump> = std::cell::RefCell::new(bumpalo::Bump::new());
    }
    ARENA.with(|cell| match cell.try_borrow_mut() {
        Ok(mut arena) => {
            let out = f(&arena);
            // Keep the arena's memory for the next call unless one hostile
            // document made it large.
            if arena.allocated_bytes() > 1 << 20 {
                *arena = bumpalo::Bump::new();
            } else {
                arena.reset();
            }
            out
        }
        Err(_) => f(&bumpalo::Bump::new()),
    })
}

/// Validates an already-parsed JSON document (an API body, say).
pub fn validate_value(doc: &Value, manifests: &ManifestSet, ctx: &CompileContext<'_>) -> Validated {
    let arena = bumpalo::Bump::new();
    validate_node(&Node::from_value(doc, &arena), manifests, ctx)
}

/// Validates a parsed document tree.
pub fn validate_node(
    doc: &Node<'_>,
    manifests: &ManifestSet,
    ctx: &CompileContext<'_>,
) -> Validated {
    let (parsed, schema_findings) = parse_spec_lenient(doc);
    let mut issues: Vec<Issue> = schema_findings
        .into_iter()
        .map(|finding| Issue {
            finding,
            stage: Stage::Schema,
        })
        .collect();
    let mut ir = None;
    let mut meta = None;
    // Compile whatever parsed, so one round reports every finding (SPEC §4).
    let compile_findings = match parsed {
        Parsed::Spec(spec) => {
            let compiled = compile(spec, manifests, ctx);
            ir = compiled.ir;
            meta = Some(compiled.meta);
            compiled.findings
        }
        Parsed::Parts(parts) => compile_parts(parts, manifests, ctx),
    };
    issues.extend(compile_findings.into_iter().map(|finding| Issue {
        finding,
        stage: Stage::Compile,
    }));
    let ok = !issues
        .iter()
        .any(|i| i.finding.severity == Severity::Blocker);
    cap_findings(&mut issues);
    let ir = ir.filter(|_| ok);
    Validated {
        report: ValidationReport {
            ok,
            issues,
            hash: ir.as_ref().map(|ir| ir.hash.clone()),
            ir,
        },
        meta,
    }
}

/// Keeps the [`MAX_FINDINGS`] most severe of `issues` (in their order
/// within a severity) and says how many were dropped.
fn cap_findings(issues: &mut Vec<Issue>) {
    if issues.len() <= MAX_FINDINGS {
        return;
    }
    let total = issues.len();
    issues.sort_by_key(|i| std::cmp::Reverse(i.finding.severity));
    issues.truncate(MAX_FINDINGS);
    let stage = issues.last().map_or(Stage::Schema, |i| i.stage);
    let finding = Finding::new(
        Severity::Info,
        "validate.truncated",
        "",
        format!(
            "{} more findings not shown: a validation answers with at most {MAX_FINDINGS}, the most severe first",
            total - MAX_FINDINGS
        ),
    )
    .with_hint("fix these and validate again (limits: docs/limits.md)");
    issues.push(Issue { finding, stage });
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    const INVENTORY: &str = include_str!("../../examples/inventory/homelab.yaml");

    /// Renders every issue of `input` (YAML or JSON) validated against the
    /// shipped manifests and the example inventory, one line each.
    fn check(input: &str, expect: Expect) {
        let manifests = ManifestSet::embedded();
        let inventory =
            inventory::file::parse_inventory(INVENTORY, None).expect("example inventory parses");
        let ctx = CompileContext {
            inventory: Some(&inventory),
            now: Some("2026-11-22T11:30:00Z".into()),
            ..CompileContext::default()
        };
        check_with(input, &manifests, &ctx, expect);
    }

    /// Like [`check`] without an inventory: manifests only.
    fn check_offline(input: &str, expect: Expect) {
        check_with(
            input,
            &ManifestSet::embedded(),
            &CompileContext::default(),
            expect,
        );
    }

    fn check_with(input: &str, manifests: &ManifestSet, ctx: &CompileContext<'_>, expect: Expect) {
        let report = validate_text(input, manifests, ctx).report;
        let mut out = String::new();
        for issue in &report.issues {
            let f = &issue.finding;
            out.push_str(&format!(
                "{:?} {} {} {}: {}",
                issue.stage, f.severity, f.code, f.path, f.message
            ));
            if let Some(h) = &f.hint {
                out.push_str(&format!(" ({h})"));
            }
            out.push('\n');
        }
        match &report.ir {
            Some(ir) => out.push_str(&format!(
                "ok; resolved {}",
                ir.targets
                    .resolved_ids
                    .as_ref()
                    .map(|ids| ids.join(" "))
                    .unwrap_or_else(|| "later".into())
            )),
            None => out.push_str("blocked"),
        }
        expect.assert_eq(&out);
    }

    /// A valid policy; cases replace one line of it.
    const BASE: &str = r#"version: 1
name: stop low-tier VMs
trigger_group:
  triggers:
    - { type: ups.state, equals: on_battery, for: 2m }
targets:
  host_id: pve-01
  target_type: vm
  selector: { mode: range, value: "104,204,311-318" }
actions:
  - { capability_id: proxmox.vm, verb: shutdown, params: { grace_s: 60 } }
"#;

    fn with(from: &str, to: &str) -> String {
        assert!(BASE.contains(from), "BASE has no `{from}`");
        BASE.replacen(from, to, 1)
    }

    #[test]
    fn the_base_policy_is_valid_and_resolves_only_existing_vms() {
        check(
            BASE,
            expect![[r#"
            Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
            ok; resolved vm:104 vm:204 vm:311 vm:312 vm:313"#]],
        );
    }

    #[test]
    fn an_action_retry_takes_whole_attempts_and_a_positive_backoff() {
        check(
            &with(
                "params: { grace_s: 60 } }",
                "params: { grace_s: 60 }, retry: { attempts: 3, backoff: 10s } }",
            ),
            expect![[r#"
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                ok; resolved vm:104 vm:204 vm:311 vm:312 vm:313"#]],
        );
        check(
            &with(
                "params: { grace_s: 60 } }",
                "params: { grace_s: 60 }, retry: { attempts: -1, backoff: 0s, tries: 2 } }",
            ),
            expect![[r#"
                Schema blocker schema.unknown_field /actions/0/retry/tries: unknown field `tries` (known fields here: attempts, backoff)
                Schema blocker schema.range /actions/0/retry/attempts: retry attempts must be a whole number from 0 to 4294967295 (0 disables retries; leave it out to retry as long as the trigger holds)
                Schema blocker schema.range /actions/0/retry/backoff: the retry backoff must be at least 1s
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
    }

    /// SPEC §12: an alias bomb or a deeply nested document is refused with
    /// the limit it passes, after bounded work, never a stall.
    #[test]
    fn documents_past_a_limit_are_refused_with_the_limit() {
        // Eight levels of 9-way aliases (9^9 values): the YAML library's
        // own limit refuses it.
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
            let refs = vec![format!("*{prev}"); 9].join(", ");
            bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        check(
            &bomb,
            expect![[r#"
            Schema blocker schema.too_large : YAML document refused: the document expands to more than 100000 values (YAML aliases counted each time they are used) (a YAML alias that repeats a large part many times multiplies the document; write the values out or remove the aliases (limits: docs/limits.md))
            blocked"#]],
        );
        // Padded so the library's limit, relative to the document's size,
        // lets it through: the absolute budget stops it.
        let padded = format!("{bomb}pad: [{}]\n", vec!["0"; 60_000].join(","));
        check(
            &padded,
            expect![[r#"
            Schema blocker schema.too_large : YAML document refused at line 1, column 23: the document expands to more than 100000 values (YAML aliases counted each time they are used) (a YAML alias that repeats a large part many times multiplies the document; write the values out or remove the aliases (limits: docs/limits.md))
            blocked"#]],
        );
        check(
            &"[".repeat(100_000),
            expect![[r#"
            Schema blocker schema.too_deep : JSON document refused at line 1, column 129: nesting deeper than 128 levels (flatten the document; a policy needs a handful of levels (limits: docs/limits.md))
            blocked"#]],
        );
        check(
            &format!("k: {}", "[".repeat(100_000)),
            expect![[r#"
            Schema blocker schema.too_deep : YAML document refused at line 1, column 132: nesting deeper than 128 levels (flatten the document; a policy needs a handful of levels (limits: docs/limits.md))
            blocked"#]],
        );
        // Brackets inside a quoted scalar are text, not nesting.
        check(
            &format!("k: \"{}\"\nversion: 2\n", "[".repeat(1000)),
            expect![[r#"
                Schema blocker schema.unknown_field /k: unknown field `k` (known fields here: version, name, enabled, priority, stop_on_match, dynamic_resolution, trigger_group, conditions, targets, actions, suppression_window, idempotency_window, notes)
                Schema blocker schema.version /version: version must be the integer 1, found 2 (write `version: 1`)
                Schema blocker schema.missing_field /name: missing required field `name`
                Schema blocker schema.missing_field /trigger_group: missing required field `trigger_group`
                Schema blocker schema.missing_field /targets: missing required field `targets`
                Schema blocker schema.missing_field /actions: missing required field `actions`
                blocked"#]],
        );
    }

    #[test]
    fn malformed_documents_are_findings_with_line_and_column() {
        check(
            "version: 1\nname: [unclosed\n",
            expect![[r#"
            Schema blocker schema.parse : YAML syntax error at line 3, column 1: did not find expected ',' or ']' (fix the syntax at that position; JSON and YAML are both accepted)
            blocked"#]],
        );
        check(
            "{\"version\": 1,,}",
            expect![[r#"
            Schema blocker schema.parse : JSON syntax error at line 1, column 15: key must be a string (fix the syntax at that position; JSON and YAML are both accepted)
            blocked"#]],
        );
        check(
            "- just\n- a list\n",
            expect![[r#"
            Schema blocker schema.type : expected an object, found a list
            blocked"#]],
        );
    }

    #[test]
    fn unknown_and_missing_fields_are_all_reported_with_hints() {
        check(
            "version: 1\nnmae: x\npriorty: 2\n",
            expect![[r#"
            Schema blocker schema.unknown_field /nmae: unknown field `nmae` (did you mean `name`?)
            Schema blocker schema.unknown_field /priorty: unknown field `priorty` (did you mean `priority`?)
            Schema blocker schema.missing_field /name: missing required field `name`
            Schema blocker schema.missing_field /trigger_group: missing required field `trigger_group`
            Schema blocker schema.missing_field /targets: missing required field `targets`
            Schema blocker schema.missing_field /actions: missing required field `actions`
            blocked"#]],
        );
        check(
            &with("name: stop low-tier VMs", "name: stop\nenabeld: true"),
            expect![[r#"
                Schema blocker schema.unknown_field /enabeld: unknown field `enabeld` (did you mean `enabled`?)
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            r#"{"version": 1, "version": 1, "name": "abc"}"#,
            expect![[r#"
            Schema blocker schema.duplicate_field /version: field `version` is written twice (remove one of them; only the first would be read)
            Schema blocker schema.missing_field /trigger_group: missing required field `trigger_group`
            Schema blocker schema.missing_field /targets: missing required field `targets`
            Schema blocker schema.missing_field /actions: missing required field `actions`
            blocked"#]],
        );
        check(
            &with(
                "params: { grace_s: 60 }",
                "params: { grace_s: 60 }, idempotency: { key: x }",
            ),
            expect![[r#"
                Schema blocker schema.unknown_field /actions/0/idempotency/key: unknown field `key` (did you mean `key_hint`?)
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
    }

    #[test]
    fn version_name_and_scalar_types_are_checked() {
        check(
            &with("version: 1", "version: \"1\""),
            expect![[r#"
                Schema blocker schema.version /version: version must be the integer 1, found "1" (write `version: 1`)
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &with("name: stop low-tier VMs", "name: ab"),
            expect![[r#"
                Schema blocker schema.name_too_short /name: name `ab` is shorter than 3 characters
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &with(
                "name: stop low-tier VMs",
                "name: abc\npriority: 1.5\nenabled: yes\nnotes: 5",
            ),
            expect![[r#"
                Schema blocker schema.type /enabled: expected true or false, found a string
                Schema blocker schema.type /priority: expected an integer, found a number
                Schema blocker schema.type /notes: expected a string, found a number
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
    }

    #[test]
    fn durations_are_strict() {
        check(
            &with("for: 2m", "for: 10mx"),
            expect![[r#"
                Schema blocker schema.duration /trigger_group/triggers/0/for: invalid duration `10mx`: unexpected `x` at position 3 (units are s, m, h, d) (write one or more <number><unit> groups with units s, m, h, d: 90s, 10m, 1h30m, 2d)
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &with("for: 2m", "for: 300"),
            expect![[r#"
                Schema blocker schema.type /trigger_group/triggers/0/for: expected a duration string such as `90s`, `10m`, `1h30m` or `2d`, found a number
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &with(
                "name: stop low-tier VMs",
                "name: abc\nsuppression_window: -5m\nidempotency_window: \"\"",
            ),
            expect![[r#"
                Schema blocker schema.duration /suppression_window: invalid duration `-5m`: unexpected `-` at position 0 (units are s, m, h, d) (write one or more <number><unit> groups with units s, m, h, d: 90s, 10m, 1h30m, 2d)
                Schema blocker schema.duration /idempotency_window: invalid duration ``: empty duration (write one or more <number><unit> groups with units s, m, h, d: 90s, 10m, 1h30m, 2d)
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
    }

    #[test]
    fn trigger_types_fields_and_states_are_closed_sets() {
        check(
            &with(
                "type: ups.state, equals: on_battery, for: 2m",
                "type: ups.stat, equals: on_battery",
            ),
            expect![[r#"
                Schema blocker schema.unknown_trigger_type /trigger_group/triggers/0/type: unknown trigger type `ups.stat` (did you mean `ups.state`?)
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &with("equals: on_battery, for: 2m", "equals: on_batery"),
            expect![[r#"
                Schema blocker schema.enum /trigger_group/triggers/0/equals: `on_batery` is not a UPS state (did you mean `on_battery`?)
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &with(
                "type: ups.state, equals: on_battery, for: 2m",
                "type: webhook.custom, name: deploy, for: 1m, ups: u1",
            ),
            expect![[r#"
                Schema blocker schema.for_not_allowed /trigger_group/triggers/0/for: `for` is not allowed on `webhook.custom` (`for` applies to ups.state and metric.threshold triggers only)
                Schema blocker schema.ups_not_allowed /trigger_group/triggers/0/ups: `ups` is not allowed on `webhook.custom` (`ups` applies to ups.state and metric.threshold triggers)
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &with(
                "type: ups.state, equals: on_battery, for: 2m",
                "type: metric.threshold, metric: load, op: '>', value: high",
            ),
            expect![[r#"
                Schema blocker schema.type /trigger_group/triggers/0/value: expected a number, found a string
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &with(
                "type: ups.state, equals: on_battery, for: 2m",
                "type: metric.threshold, metric: load, op: '>', value: .inf",
            ),
            expect![[r#"
                Schema blocker schema.type /trigger_group/triggers/0/value: expected a finite number, found inf: a threshold of YAML's .inf or .nan compares with nothing
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &with(
                "type: ups.state, equals: on_battery, for: 2m",
                "type: metric.threshold, metric: load, op: '=>', value: 60",
            ),
            expect![[r#"
                Schema blocker schema.enum /trigger_group/triggers/0/op: `=>` is not a comparison operator (did you mean `=`?)
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &with(
                "type: ups.state, equals: on_battery, for: 2m",
                "type: webhook.custom, name: \"de ploy\"",
            ),
            expect![[r#"
                Schema blocker schema.invalid_id /trigger_group/triggers/0/name: `de ploy` is not a valid id (ids use letters, digits and `_ . @ : -` only)
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &with(
                "  triggers:\n    - { type: ups.state, equals: on_battery, for: 2m }",
                "  triggers: []",
            ),
            expect![[r#"
                Schema blocker schema.empty /trigger_group/triggers: at least one trigger is required
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
    }

    #[test]
    fn under_all_at_most_one_instantaneous_trigger_is_allowed() {
        let group = "  logic: ALL\n  triggers:\n    - { type: ups.state, equals: on_battery }\n    - { type: webhook.custom, name: a }\n    - { type: timer.at, schedule: { cron: \"0 1 * * *\" } }";
        check(
            &with(
                "  triggers:\n    - { type: ups.state, equals: on_battery, for: 2m }",
                group,
            ),
            expect![[r#"
                Schema blocker schema.instantaneous_under_all /trigger_group/triggers/2: `timer.at` is instantaneous and trigger 1 already is; under ALL at most one instantaneous trigger can ever be true at once (use logic: ANY, or split the policy in two)
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        let ok = "  logic: ALL\n  triggers:\n    - { type: ups.state, equals: on_battery }\n    - { type: webhook.custom, name: a }";
        check(
            &with(
                "  triggers:\n    - { type: ups.state, equals: on_battery, for: 2m }",
                ok,
            ),
            expect![[r#"
            Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
            ok; resolved vm:104 vm:204 vm:311 vm:312 vm:313"#]],
        );
    }

    #[test]
    fn schedules_are_checked() {
        let t = "type: ups.state, equals: on_battery, for: 2m";
        check(
            &with(
                t,
                "type: timer.at, schedule: { repeat: weekly, at: \"25:00\" }",
            ),
            expect![[r#"
                Schema blocker schema.time_of_day /trigger_group/triggers/0/schedule/at: `25:00` is not a time of day (write 24-hour HH:MM, e.g. "01:00")
                Schema blocker schema.days /trigger_group/triggers/0/schedule/days: a weekly schedule needs `days` (e.g. days: [sun])
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &with(
                t,
                "type: timer.at, schedule: { repeat: daily, at: \"01:00\", days: [mon] }",
            ),
            expect![[r#"
                Schema blocker schema.days /trigger_group/triggers/0/schedule/days: a daily schedule runs every day and takes no `days` (use repeat: weekly to pick days)
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(&with(t, "type: timer.at, schedule: { repeat: weekly, at: \"01:00\", days: [sun, sunday, sun] }"), expect![[r#"
            Schema blocker schema.enum /trigger_group/triggers/0/schedule/days/1: `sunday` is not a weekday (did you mean `sun`?)
            Schema blocker schema.days /trigger_group/triggers/0/schedule/days/2: weekday `sun` is listed twice
            Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
            blocked"#]]);
        check(
            &with(t, "type: timer.at, schedule: { cron: \"0 1 * *\" }"),
            expect![[r#"
                Schema blocker schema.cron /trigger_group/triggers/0/schedule/cron: invalid cron `0 1 * *`: expected 5 fields (crontab) or 6 fields (seconds first), found 4 (5 fields are crontab (minute hour day-of-month month day-of-week); 6 fields start with seconds)
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &with(
                t,
                "type: timer.at, schedule: { cron: \"0 1 * * 0\", repeat: daily }",
            ),
            expect![[r#"
                Schema blocker schema.schedule /trigger_group/triggers/0/schedule: a schedule is either `cron` or `repeat`/`at`/`days`, not both
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(&with(t, "type: timer.after, after: 10m, since_event: { type: ups.state, equals: on_mains, name: x }"), expect![[r#"
            Schema blocker schema.unknown_field /trigger_group/triggers/0/since_event/name: unknown field `name` (known fields here: type, equals, ups)
            Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
            blocked"#]]);
    }

    #[test]
    fn conditions_check_scopes_fields_ops_and_value_types() {
        let c = |cond: &str| {
            with(
                "targets:",
                &format!("conditions:\n  all:\n    - {cond}\ntargets:"),
            )
        };
        check(
            &c("{ scope: upss, field: load, op: '>', value: 5 }"),
            expect![[r#"
                Schema blocker schema.unknown_scope /conditions/all/0/scope: unknown condition scope `upss` (did you mean `ups`?)
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &c("{ scope: ups, field: runtime, op: '>', value: 5 }"),
            expect![[r#"
                Schema blocker schema.unknown_condition_field /conditions/all/0/field: scope `ups` has no field `runtime` (did you mean `runtime_minutes`?)
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &c("{ scope: ups, field: load, op: '>', value: high }"),
            expect![[r#"
                Schema blocker schema.op_needs_number /conditions/all/0/value: `>` compares order and needs a number
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &c("{ scope: ups, field: state, op: '=', value: on_batt }"),
            expect![[r#"
                Schema blocker schema.enum /conditions/all/0/value: `on_batt` is not a UPS state (did you mean `on_battery`?)
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &c("{ scope: host, field: reachable, op: '=', value: 1 }"),
            expect![[r#"
                Schema blocker schema.type /conditions/all/0/value: host reachability compares with = or != against true or false
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(
            &c("{ scope: vm, field: count_matching, op: '>=', value: 1, ups: u1 }"),
            expect![[r#"
                Schema blocker schema.ups_not_allowed /conditions/all/0/ups: `ups` applies to the ups and metric scopes only
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
        check(&c("{ scope: metric, field: input.voltage, op: '<', value: 200, ups: \"ups1@nas:3493\" }"), expect![[r#"
            Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
            ok; resolved vm:104 vm:204 vm:311 vm:312 vm:313"#]]);
        check(
            &c("{ scope: host, field: reachable, op: '=', value: [true] }"),
            expect![[r#"
                Schema blocker schema.type /conditions/all/0/value: expected a number, string or boolean, found a list
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
    }

    #[test]
    fn capabilities_verbs_params_and_target_types_are_checked_against_the_host_plugin() {
        check(
            &with(
                "capability_id: proxmox.vm, verb: shutdown",
                "capability_id: proxmox.vn, verb: shutdown",
            ),
            expect![[r#"
            Compile blocker compile.unknown_capability /actions/0/capability_id: unknown capability `proxmox.vn` (did you mean `proxmox.vm`?)
            Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
            blocked"#]],
        );
        check(
            &with("verb: shutdown", "verb: shutdwn"),
            expect![[r#"
            Compile blocker compile.unknown_verb /actions/0/verb: capability `proxmox.vm` has no verb `shutdwn` (did you mean `shutdown`?)
            Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
            blocked"#]],
        );
        check(
            &with(
                "capability_id: proxmox.vm, verb: shutdown",
                "capability_id: aoss.poe.port, verb: set",
            ),
            expect![[r#"
            Compile blocker compile.capability_not_on_host /actions/0/capability_id: capability `aoss.poe.port` belongs to plugin `aruba.aoss`, but the host uses plugin `proxmox.ve` (a policy targets one host; use a capability of that host's plugin)
            Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
            blocked"#]],
        );
        check(
            &with(
                "params: { grace_s: 60 }",
                "params: { grace: 60, force_after_grace: maybe }",
            ),
            expect![[r#"
            Compile blocker compile.param_type /actions/0/params/force_after_grace: param `force_after_grace`: expected boolean, found a string
            Compile blocker compile.unknown_param /actions/0/params/grace: capability `proxmox.vm` has no param `grace` (did you mean `grace_s`?)
            Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
            blocked"#]],
        );
        check(
            &with("target_type: vm", "target_type: ct"),
            expect![[r#"
            Compile blocker compile.target_type_unsupported /actions/0/capability_id: capability `proxmox.vm` acts on vm, not on `ct` (change targets.target_type or pick a capability for that target type)
            Compile warn selector.empty /targets/selector/value: selector `104,204,311-318` selects no ct on host pve-01: none of its 10 ids is in the inventory (host pve-01 has 1 ct targets, e.g. 401)
            blocked"#]],
        );
        check(
            &with("host_id: pve-01", "host_id: pve-1"),
            expect![[r#"
            Compile blocker compile.unknown_host /targets/host_id: host `pve-1` is not in the inventory (did you mean `pve-01`?)
            blocked"#]],
        );
    }

    #[test]
    fn a_selector_holding_a_protected_port_is_a_blocker_naming_the_port() {
        // The driver marks the host config's protected_ports at discovery.
        let inventory = inventory::file::parse_inventory(
            "hosts:\n  - id: sw-01\n    plugin: aruba.aoss\n    targets:\n      - { type: poe-port, id: 1/A1 }\n      - { type: poe-port, id: 1/A2, attrs: { protected: true } }\n      - { type: poe-port, id: 1/A3 }\n",
            None,
        )
        .expect("inventory parses");
        let ctx = CompileContext {
            inventory: Some(&inventory),
            now: Some("2026-11-22T11:30:00Z".into()),
            ..CompileContext::default()
        };
        let poe = |mode: &str, value: &str| {
            format!(
                "version: 1\nname: shed poe\ntrigger_group:\n  triggers:\n    - {{ type: ups.state, equals: on_battery }}\ntargets:\n  host_id: sw-01\n  target_type: poe-port\n  selector: {{ mode: {mode}, value: \"{value}\" }}\nactions:\n  - {{ capability_id: aoss.poe.port, verb: set, params: {{ state: \"off\" }} }}\n"
            )
        };
        let manifests = ManifestSet::embedded();
        check_with(
            &poe("range", "1/A1-1/A3"),
            &manifests,
            &ctx,
            expect![[r#"
                Compile blocker compile.protected_target /targets/selector/value: the selector includes protected target(s) poe-port:1/A2 of host sw-01 (host config protected_ports): actions on them are refused (leave poe-port:1/A2 out of the selector)
                blocked"#]],
        );
        check_with(
            &poe("query", "status != off"),
            &manifests,
            &ctx,
            expect![[r#"
                Compile blocker compile.protected_target /targets/selector/value: the selector includes protected target(s) poe-port:1/A2 of host sw-01 (host config protected_ports): actions on them are refused (add `and attrs.protected != true` to the query)
                blocked"#]],
        );
        check_with(
            &poe("query", "attrs.protected != true"),
            &manifests,
            &ctx,
            expect!["ok; resolved poe-port:1/A1 poe-port:1/A3"],
        );
        check_with(
            &poe("range", "1/A1,1/A3"),
            &manifests,
            &ctx,
            expect!["ok; resolved poe-port:1/A1 poe-port:1/A3"],
        );
    }

    #[test]
    fn params_are_checked_against_declared_types_and_allowed_values() {
        let poe = |params: &str| {
            format!(
                "version: 1\nname: shed poe\ntrigger_group:\n  triggers:\n    - {{ type: ups.state, equals: on_battery }}\ntargets:\n  host_id: sw-01\n  target_type: poe-port\n  selector: {{ mode: range, value: \"1/A1-1/B4\" }}\nactions:\n  - {{ capability_id: aoss.poe.port, verb: set{params} }}\n"
            )
        };
        check(&poe(", params: { state: \"off\" }"), expect!["ok; resolved poe-port:1/A1 poe-port:1/A2 poe-port:1/A3 poe-port:1/A4 poe-port:1/B1 poe-port:1/B2 poe-port:1/B3 poe-port:1/B4"]);
        check(
            &poe(""),
            expect![[r#"
            Compile blocker compile.missing_param /actions/0/params/state: verb `set` of `aoss.poe.port` needs param `state` (one of: "on", "off", "cycle")
            blocked"#]],
        );
        check(
            &poe(", params: { state: dim }"),
            expect![[r#"
            Compile blocker compile.param_value /actions/0/params/state: param `state`: `dim` is not one of: on, off, cycle
            blocked"#]],
        );
        check(
            &poe(", params: { state: 1 }"),
            expect![[r#"
            Compile blocker compile.param_type /actions/0/params/state: param `state`: expected string, found an integer
            blocked"#]],
        );
    }

    #[test]
    fn selectors_are_checked_for_the_target_type() {
        check(
            &with(
                "value: \"104,204,311-318\"",
                "value: \"A1-A4,318-311,vm:104,,x y\"",
            ),
            expect![[r#"
            Compile blocker selector.wrong_form /targets/selector/value: item 1 `A1-A4`: ports are not ids of target type vm (ids are numbers such as `104` or ranges such as `311-318`)
            Compile blocker selector.reversed_range /targets/selector/value: item 2 `318-311`: reversed range: 318 is after 311 (write `311-318`)
            Compile blocker selector.syntax /targets/selector/value: item 3 `vm:104`: ids are written without the type prefix (write `104`)
            Compile blocker selector.syntax /targets/selector/value: item 4 is empty (remove the extra comma)
            Compile blocker selector.syntax /targets/selector/value: item 5 `x y`: ` ` is not allowed in an id (ids are numbers such as `104` or ranges such as `311-318`)
            blocked"#]],
        );
        check(
            &with("value: \"104,204,311-318\"", "value: \"1-4000000000\""),
            expect![[r#"
            Compile blocker selector.too_large /targets/selector/value: item 1 `1-4000000000`: expands to 4000000000 ids, more than the limit of 100000 (narrow the ranges, or select by query against the inventory)
            blocked"#]],
        );
        check(
            &with("value: \"104,204,311-318\"", "value: \"900-905\""),
            expect![[r#"
            Compile warn selector.empty /targets/selector/value: selector `900-905` selects no vm on host pve-01: none of its 6 ids is in the inventory (host pve-01 has 9 vm targets, e.g. 101, 102, 104)
            ok; resolved "#]],
        );
        check(
            &with(
                "mode: range, value: \"104,204,311-318\"",
                "mode: query, value: 'labels.tier = low and status = running'",
            ),
            expect!["ok; resolved vm:104 vm:105 vm:204 vm:311 vm:312"],
        );
        check(
            &with(
                "mode: range, value: \"104,204,311-318\"",
                "mode: query, value: 'labels.tier == low'",
            ),
            expect![[r#"
            Compile blocker selector.query_syntax /targets/selector/value: predicate 1 `labels.tier == low` (column 13): unknown operator `==` (write `=` for equality)
            blocked"#]],
        );
        check(
            &with(
                "mode: range, value: \"104,204,311-318\"",
                "mode: ledger, value: not-a-uuid",
            ),
            expect![[r#"
            Compile blocker selector.ledger_id /targets/selector/value: `not-a-uuid` is not a policy id (the ledger mode takes the uuid of a stored policy, e.g. `3f2a0c1e-8b4d-4e6f-9a1b-2c3d4e5f6a7b`)
            blocked"#]],
        );
        check(
            &with(
                "mode: range, value: \"104,204,311-318\"",
                "mode: ledger, value: 6f1c2a0e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
            ),
            expect!["ok; resolved later"],
        );
        check(
            &with("mode: range", "mode: ranges"),
            expect![[r#"
            Schema blocker schema.enum /targets/selector/mode: `ranges` is not a selector mode (did you mean `range`?)
            blocked"#]],
        );
    }

    #[test]
    fn hosts_with_unknown_plugins_and_bad_ids_are_blockers() {
        let manifests = ManifestSet::embedded();
        let inventory = inventory::file::parse_inventory(
            "hosts: [{ id: pve-01, plugin: proxmox.vx, targets: [{ type: vm, id: '104' }] }]",
            None,
        )
        .unwrap();
        let ctx = CompileContext {
            inventory: Some(&inventory),
            ..CompileContext::default()
        };
        check_with(
            BASE,
            &manifests,
            &ctx,
            expect![[r#"
                Compile blocker compile.unknown_plugin /targets/host_id: host `pve-01` uses plugin `proxmox.vx`, which no manifest declares (check the plugin directory (--plugins) or the host's `plugin` in the inventory)
                Compile warn selector.missing /targets/selector/value: 9 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:204, vm:311, vm:312, vm:313, vm:314, ... (vm:204 named on its own and not on host pve-01: check the spelling, or refresh the inventory)
                blocked"#]],
        );
        check(
            &with("host_id: pve-01", "host_id: \"pve 01\""),
            expect![[r#"
            Schema blocker schema.invalid_id /targets/host_id: `pve 01` is not a valid id (ids use letters, digits and `_ . @ : -` only)
            blocked"#]],
        );
        check(
            &with("name: stop low-tier VMs", "name: \"   \""),
            expect![[r#"
                Schema blocker schema.empty /name: must not be empty
                Compile info selector.missing /targets/selector/value: 5 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:314, vm:315, vm:316, vm:317, vm:318
                blocked"#]],
        );
    }

    #[test]
    fn schema_blockers_never_hide_the_compile_findings_of_the_parts_that_parsed() {
        // One schema blocker (a misspelt top-level field) and two compile
        // blockers (an unknown verb, a reversed range): all three in one round.
        check(
            &with(
                "name: stop low-tier VMs",
                "name: stop low-tier VMs\nprioirty: 2",
            )
            .replace("verb: shutdown", "verb: shutdwn")
            .replace("311-318", "318-311"),
            expect![[r#"
                Schema blocker schema.unknown_field /prioirty: unknown field `prioirty` (did you mean `priority`?)
                Compile blocker compile.unknown_verb /actions/0/verb: capability `proxmox.vm` has no verb `shutdwn` (did you mean `shutdown`?)
                Compile blocker selector.reversed_range /targets/selector/value: item 3 `318-311`: reversed range: 318 is after 311 (write `311-318`)
                blocked"#]],
        );
        // A too-short name, a bad window and a broken second action: the
        // first action and the targets are still compiled.
        check(
            &(with(
                "name: stop low-tier VMs",
                "name: ab\nsuppression_window: 5 minutes",
            )
            .replace("verb: shutdown", "verb: shutdwn")
            .replace("311-318", "318-311")
                + "  - { capability_id: proxmox.vm }\n"),
            expect![[r#"
                Schema blocker schema.name_too_short /name: name `ab` is shorter than 3 characters
                Schema blocker schema.missing_field /actions/1/verb: missing required field `verb`
                Schema blocker schema.duration /suppression_window: invalid duration `5 minutes`: unexpected ` ` at position 1 (units are s, m, h, d) (write one or more <number><unit> groups with units s, m, h, d: 90s, 10m, 1h30m, 2d)
                Compile blocker compile.unknown_verb /actions/0/verb: capability `proxmox.vm` has no verb `shutdwn` (did you mean `shutdown`?)
                Compile blocker selector.reversed_range /targets/selector/value: item 3 `318-311`: reversed range: 318 is after 311 (write `311-318`)
                blocked"#]],
        );
        // Without targets an action is still checked against the manifests.
        check(
            &with("target_type: vm", "target_typ: vm").replace("verb: shutdown", "verb: shutdwn"),
            expect![[r#"
                Schema blocker schema.unknown_field /targets/target_typ: unknown field `target_typ` (did you mean `target_type`?)
                Schema blocker schema.missing_field /targets/target_type: missing required field `target_type`
                Compile blocker compile.unknown_verb /actions/0/verb: capability `proxmox.vm` has no verb `shutdwn` (did you mean `shutdown`?)
                blocked"#]],
        );
    }

    #[test]
    fn a_validation_answers_with_at_most_max_findings_the_most_severe_first() {
        let mut text = String::from(include_str!("../../examples/06-webhook-deploy.yaml"));
        for i in 0..MAX_FINDINGS + 100 {
            text.push_str(&format!("u{i}: 1\n"));
        }
        let report =
            validate_text(&text, &ManifestSet::embedded(), &CompileContext::default()).report;
        assert!(!report.ok);
        assert_eq!(report.issues.len(), MAX_FINDINGS + 1);
        assert!(report.issues[..MAX_FINDINGS]
            .iter()
            .all(|i| i.finding.code == "schema.unknown_field"));
        // The first ones kept, in their order.
        assert_eq!(report.issues[0].finding.path, "/u0");
        let last = &report.issues[MAX_FINDINGS].finding;
        assert_eq!(last.code, "validate.truncated");
        assert_eq!(last.severity, Severity::Info);
        assert!(
            last.message.starts_with("100 more findings"),
            "{}",
            last.message
        );

        // Under the cap nothing changes.
        let text = text.lines().take(30).collect::<Vec<_>>().join("\n");
        let report =
            validate_text(&text, &ManifestSet::embedded(), &CompileContext::default()).report;
        assert!(report
            .issues
            .iter()
            .all(|i| i.finding.code != "validate.truncated"));
    }

    #[test]
    fn every_documented_code_has_a_snapshot_and_every_emitted_code_is_documented() {
        let docs = include_str!("../../docs/findings.md");
        let snapshots = include_str!("validate.rs");
        let sources = [include_str!("spec/parse.rs"), include_str!("compile.rs")].concat();
        let code_at = |text: &str, i: usize| -> String {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
                .collect()
        };
        let find = |text: &str, prefix: &str| -> std::collections::BTreeSet<String> {
            text.match_indices(prefix)
                .map(|(i, _)| code_at(text, i))
                .filter(|c| c.len() > prefix.len())
                .collect()
        };
        for prefix in ["schema.", "compile."] {
            let documented = find(docs, prefix);
            let emitted = find(&sources, prefix);
            for code in &emitted {
                assert!(
                    documented.contains(code),
                    "{code} is emitted but not in docs/findings.md"
                );
            }
            for code in &documented {
                let in_snapshot = snapshots.contains(&format!(" {code} "));
                assert!(
                    in_snapshot,
                    "{code} is documented but no expect snapshot shows it"
                );
            }
        }
    }

    #[test]
    fn without_an_inventory_capabilities_are_checked_against_any_manifest() {
        check_offline(BASE, expect!["ok; resolved vm:104 vm:204 vm:311 vm:312 vm:313 vm:314 vm:315 vm:316 vm:317 vm:318"]);
        check_offline(
            &with("target_type: vm", "target_type: vms"),
            expect![[r#"
            Compile blocker compile.unknown_target_type /targets/target_type: no plugin knows target type `vms` (did you mean `vm`?)
            Compile blocker compile.target_type_unsupported /actions/0/capability_id: capability `proxmox.vm` acts on vm, not on `vms` (change targets.target_type or pick a capability for that target type)
            Compile blocker selector.wrong_form /targets/selector/value: item 3 `311-318`: ranges are not ids of target type vms (ids are names made of letters, digits and `_ . @ : -`, listed one by one: `web-01,web-02`)
            blocked"#]],
        );
        check_offline(
            &with(
                "mode: range, value: \"104,204,311-318\"",
                "mode: query, value: 'labels.tier = low'",
            ),
            expect!["ok; resolved later"],
        );
    }

    #[test]
    fn every_shipped_example_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let inventory =
            inventory::file::parse_inventory(INVENTORY, None).expect("example inventory parses");
        let manifests = ManifestSet::embedded();
        let ctx = CompileContext {
            inventory: Some(&inventory),
            ..CompileContext::default()
        };
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("examples dir") {
            let path = entry.expect("dir entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if !(name.ends_with(".yaml") || name.ends_with(".json")) {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable example");
            let report = validate_text(&text, &manifests, &ctx).report;
            assert!(report.ok, "{name} has blockers: {:#?}", report.issues);
            seen += 1;
        }
        assert!(seen >= 7, "expected the shipped examples, found {seen}");
    }
}
