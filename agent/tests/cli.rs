//! The `hazel validate` and `hazel compile` commands, run as a user would:
//! the real binary, real files, exit codes and output checked.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn hazel(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hazel"))
        .args(args)
        .current_dir(cwd)
        .env_remove("HAZEL_PLUGINS")
        .output()
        .expect("the hazel binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn examples() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| format!("examples/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    files.sort();
    files
}

#[test]
fn validating_the_shipped_examples_succeeds_with_exit_0() {
    let mut args = vec!["validate", "--inventory", "examples/inventory/homelab.yaml"];
    let files = examples();
    args.extend(files.iter().map(String::as_str));
    let out = hazel(&args, &repo());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    for file in &files {
        assert!(
            text.contains(&format!("{file}: ok (hash ")),
            "{file} missing in:\n{text}"
        );
    }
    assert!(
        text.contains(&format!(
            "{} file(s): {} ok, 0 blocked",
            files.len(),
            files.len()
        )),
        "{text}"
    );
}

#[test]
fn json_output_is_one_object_per_file_in_argument_order() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 2\nname: x\n").unwrap();
    let bad = bad.to_string_lossy().into_owned();
    let out = hazel(
        &[
            "validate",
            "--json",
            "examples/06-webhook-deploy.yaml",
            &bad,
        ],
        &repo(),
    );
    assert_eq!(out.status.code(), Some(1), "a blocker exits 1");
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["file"], "examples/06-webhook-deploy.yaml");
    assert_eq!(reports[0]["ok"], true);
    assert_eq!(reports[0]["hash"].as_str().map(str::len), Some(64));
    assert_eq!(reports[0]["ir"]["hash"], reports[0]["hash"]);
    assert_eq!(reports[0]["ir"]["plan"][0]["capability"], "host.service");
    assert_eq!(reports[1]["file"], bad.as_str());
    assert_eq!(reports[1]["ok"], false);
    assert!(reports[1].get("hash").is_none() && reports[1].get("ir").is_none());
    let issues = reports[1]["issues"].as_array().unwrap();
    assert!(issues.iter().any(|i| i["code"] == "schema.version"
        && i["path"] == "/version"
        && i["stage"] == "schema"));
    assert!(issues.iter().all(|i| i["severity"] == "blocker"));
}

#[test]
fn malformed_yaml_is_a_finding_with_line_and_column_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, "version: 1\nname: ok name\ntrigger_group: {\n").unwrap();
    let out = hazel(&["validate", &file.to_string_lossy()], &repo());
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("schema.parse") && text.contains("line 4"),
        "{text}"
    );
}

#[test]
fn an_unreadable_file_or_bad_usage_exits_2() {
    let out = hazel(&["validate", "no/such/file.yaml"], &repo());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read no/such/file.yaml"),
        "{}",
        stderr(&out)
    );
    let out = hazel(&["validate"], &repo());
    assert_eq!(out.status.code(), Some(2), "no files is a usage error");
    let out = hazel(
        &[
            "validate",
            "--inventory",
            "no/such/inventory.yaml",
            "examples/06-webhook-deploy.yaml",
        ],
        &repo(),
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn plugin_manifests_are_found_from_the_working_directory_or_overridden() {
    // From a subdirectory, plugin-specs/ is found upwards.
    let out = hazel(
        &["validate", "06-webhook-deploy.yaml"],
        &repo().join("examples"),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );

    // A broken plugin directory is named, with the file and field at fault.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.yaml"), "id: broken\nname: x\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hazel"))
        .args(["validate", "examples/06-webhook-deploy.yaml"])
        .current_dir(repo())
        .env("HAZEL_PLUGINS", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("broken.yaml"), "{}", stderr(&out));

    // Without any plugin dir, the built-in manifests are used.
    let empty = tempfile::tempdir().unwrap();
    let spec = empty.path().join("p.yaml");
    std::fs::copy(repo().join("examples/06-webhook-deploy.yaml"), &spec).unwrap();
    let out = hazel(&["validate", "p.yaml"], empty.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn compile_prints_the_ir_or_the_blockers() {
    let out = hazel(
        &[
            "compile",
            "--inventory",
            "examples/inventory/homelab.yaml",
            "examples/02-on-battery-stop-low-tier-vms.yaml",
        ],
        &repo(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ir: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ir["match"]["trigger_group"]["triggers"][0]["for_s"], 120);
    assert_eq!(ir["windows"]["suppression_s"], 1800);
    assert_eq!(
        ir["targets"]["resolved_ids"],
        serde_json::json!(["vm:104", "vm:105", "vm:204", "vm:311", "vm:312"])
    );
    assert_eq!(ir["plan"][0]["params"]["grace_s"], 90);

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 1\n").unwrap();
    let out = hazel(&["compile", &bad.to_string_lossy()], &repo());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("schema.missing_field"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_file_larger_than_the_api_body_limit_is_refused_without_reading_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    // 2 MiB of comments: valid YAML, but past the limit.
    std::fs::write(&big, "# x\n".repeat(512 * 1024)).unwrap();
    let out = hazel(&["validate", big.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("larger than 1048576 bytes"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn max_size_sets_how_much_of_a_file_the_cli_reads() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("p.yaml");
    let mut text = std::fs::read_to_string(repo().join("examples/06-webhook-deploy.yaml")).unwrap();
    // 2 MiB: past the default, under the larger limit asked for.
    text.push_str(&"# x\n".repeat(512 * 1024));
    std::fs::write(&spec, &text).unwrap();
    let path = spec.to_str().unwrap();

    let out = hazel(&["validate", "--max-size", "3000000", path], dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );

    // A smaller one refuses even a small file, naming the number; the flag
    // may come before the command too.
    let small = repo().join("examples/06-webhook-deploy.yaml");
    let out = hazel(
        &["--max-size", "100", "validate", small.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("larger than 100 bytes"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--max-size"), "{}", stderr(&out));

    // The config checker reads under the same limit.
    let config = dir.path().join("hazel.yaml");
    std::fs::write(&config, format!("data_dir: /tmp\n{}", "# x\n".repeat(64))).unwrap();
    let out = hazel(
        &[
            "config",
            "check",
            "--max-size",
            "50",
            "--config",
            config.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(said.contains("larger than 50 bytes"), "{said}");
}
