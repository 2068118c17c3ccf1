//! `hazel config check` and the same check at `hazel serve` start, run as a
//! user would: the real binary, a config file not called `hazel.yaml`, the
//! output and exit codes checked (SPEC §12).

use std::path::Path;
use std::process::{Command, Output};

use expect_test::expect;

fn hazel(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hazel"))
        .args(args)
        .current_dir(cwd)
        .env_remove("HAZEL_JWT_KEY")
        .env_remove("HAZEL_SECRET_KEY")
        .env_remove("RUST_LOG")
        .output()
        .expect("the hazel binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Three problems in two hosts: the old documented Proxmox fields and an
/// SSH host with no way to check its host key.
const THREE_PROBLEMS: &str = "\
listen: 127.0.0.1:8088
hosts:
  - id: pve-01
    plugin: proxmox.ve
    connection:
      base_url: https://pve-01.lan:8006
      node: pve-01
      token_id: hazel@pve!agent
      token_secret: do-not-print-me
  - id: nas
    plugin: linux.ssh
    connection: { host: 10.0.0.5, username: hazel, private_key: /etc/hazel/id_ed25519 }
";

#[test]
fn config_check_lists_every_problem_of_every_host_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("site.yaml"), THREE_PROBLEMS).unwrap();
    let out = hazel(&["config", "check", "--config", "site.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("do-not-print-me"));
    expect![[r#"
        config site.yaml: unusable, 3 problems
          hosts[0] (pve-01).connection.base_url: unknown connection field `base_url`
              expected connection fields of proxmox.ve: host (required), node (required), port (default 8006), scheme (default "https"), tls_fingerprint, token_id (required), token_secret (required), verify_tls (default true)
          hosts[0] (pve-01).connection.host: missing required connection field `host`
              API address (name or IP) of any node of the cluster.
          hosts[1] (nas).connection: no host key verification: set host_key_fingerprint, known_hosts or trust_on_first_use
    "#]]
    .assert_eq(&stdout);
}

#[test]
fn serve_refuses_an_unusable_config_with_the_same_listing_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("site.yaml"), THREE_PROBLEMS).unwrap();
    let out = hazel(&["serve", "--config", "site.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("hazel serve: config site.yaml: unusable, 3 problems\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hosts[1] (nas).connection: no host key verification"),
        "{stderr}"
    );
    assert!(!stderr.contains("hazel.yaml"), "{stderr}");
    assert!(
        !dir.path().join("hazel-data").exists(),
        "nothing was opened"
    );
}

#[test]
fn config_check_summarizes_a_usable_config_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwt.key"), "k".repeat(32)).unwrap();
    let config = "\
listen: 127.0.0.1:9000
data_dir: ./data
auth: { jwt_key_file: jwt.key }
webhooks: { lab-button: { allow_unsigned: true } }
hosts:
  - id: nas
    plugin: linux.ssh
    self: true
    connection: { host: 10.0.0.5, username: hazel, private_key: id_ed25519, trust_on_first_use: true }
";
    std::fs::write(dir.path().join("agent.yaml"), config).unwrap();
    let out = hazel(&["config", "check", "--config", "agent.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    expect![[r#"
        config agent.yaml: ok
          listen 127.0.0.1:9000, data_dir ./data, timezone UTC, concurrency 16
          1 host: nas (linux.ssh, self)
          0 NUT UPSes, 1 webhook, built-in manifests
    "#]]
    .assert_eq(&text(&out.stdout));
}

#[test]
fn config_check_warns_about_a_missing_token_key_without_failing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent.yaml"), "concurrency: 4\n").unwrap();
    let out = hazel(&["config", "check", "--config", "agent.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(
        stdout.ends_with(
            "warning: auth: no API token key: set $HAZEL_JWT_KEY or auth.jwt_key_file \
             (at least 32 bytes, e.g. `openssl rand -hex 32`); `hazel serve` refuses to start without it\n"
        ),
        "{stdout}"
    );
}

#[test]
fn config_check_of_a_missing_file_names_it_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = hazel(&["config", "check", "--config", "nope.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("cannot read nope.yaml"), "{stdout}");
}
