//! Validation never panics: arbitrary JSON in any field of a valid policy,
//! and arbitrary text, give findings, not a crash.

use agent::compile::CompileContext;
use agent::validate::validate_text;
use drivers::manifest::ManifestSet;
use proptest::prelude::*;
use serde_json::{json, Value};

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "on_battery",
            "2m",
            "-5m",
            "1/A1-1/B4",
            "104",
            "ALL",
            "proxmox.vm",
            "0 1 * * 0"
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn valid_policy() -> Value {
    serde_json::from_str(include_str!("../../examples/spec-section2.json")).unwrap()
}

/// Every JSON pointer of `v` (objects and arrays, not the root).
fn pointers(v: &Value, prefix: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{prefix}/{k}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let p = format!("{prefix}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_json_in_any_field_gives_findings_not_a_panic(which in any::<prop::sample::Index>(), replacement in arbitrary_json()) {
        let mut doc = valid_policy();
        let mut paths = Vec::new();
        pointers(&doc, String::new(), &mut paths);
        let path = which.get(&paths).clone();
        *doc.pointer_mut(&path).expect("pointer from the document") = replacement;
        let text = doc.to_string();
        let report = validate_text(&text, &ManifestSet::embedded(), &CompileContext::default()).report;
        // Either valid, or every blocker names a place.
        prop_assert!(report.ok || report.issues.iter().any(|i| !i.finding.code.is_empty()));
        prop_assert_eq!(report.ok, report.hash.is_some());
    }

    #[test]
    fn arbitrary_text_gives_findings_not_a_panic(text in "\\PC{0,200}") {
        let _ = validate_text(&text, &ManifestSet::embedded(), &CompileContext::default());
    }
}
