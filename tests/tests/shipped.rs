//! Cross-crate checks of what ships: the manifests on disk are the ones built
//! into the binary, every example validates against them and the example
//! inventory, and no two examples are the same policy (equal hashes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use agent::compile::CompileContext;
use agent::validate::validate_text;
use drivers::manifest::ManifestSet;
use drivers::registry::Registry;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_manifests_on_disk_are_the_embedded_ones() {
    let on_disk = ManifestSet::load_dir(repo().join("plugin-specs")).expect("plugin-specs/ loads");
    assert_eq!(on_disk, ManifestSet::embedded());
}

#[test]
fn every_example_validates_and_no_two_are_the_same_policy() {
    let manifests = ManifestSet::load_dir(repo().join("plugin-specs")).unwrap();
    let inventory_text =
        std::fs::read_to_string(repo().join("examples/inventory/homelab.yaml")).unwrap();
    let inventory = inventory::file::parse_inventory(&inventory_text, None).unwrap();
    let ctx = CompileContext {
        inventory: Some(&inventory),
        ..CompileContext::default()
    };
    let mut hashes: BTreeMap<String, String> = BTreeMap::new();
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let report =
            validate_text(&std::fs::read_to_string(&path).unwrap(), &manifests, &ctx).report;
        assert!(report.ok, "{name}: {:#?}", report.issues);
        let hash = report.hash.unwrap();
        if let Some(other) = hashes.insert(hash, name.clone()) {
            panic!("{name} and {other} are the same policy");
        }
    }
    assert!(hashes.len() >= 8, "found {} examples", hashes.len());
}

#[test]
fn every_plugin_of_the_example_inventory_has_a_driver() {
    let text = std::fs::read_to_string(repo().join("examples/inventory/homelab.yaml")).unwrap();
    let inventory = inventory::file::parse_inventory(&text, None).unwrap();
    let registry = Registry::builtin();
    for host in inventory.hosts() {
        assert!(
            registry.contains(&host.plugin),
            "no driver for plugin {} of host {}",
            host.plugin,
            host.host_id
        );
    }
}
