//! The `linux.ssh` driver against a real OpenSSH sshd on loopback. Remote
//! commands are configured per host, so "power off" touches a marker file
//! and services are a small shell script keeping their state in files.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drivers::driver::{Driver, ErrorKind, RefreshMode};
use drivers::linux_ssh::{LinuxSshConfig, LinuxSshDriver};
use drivers::manifest::ManifestSet;
use drivers::registry::{HostConfig, Registry};
use drivers::testing::sshd::{closed_port, Sshd};
use inventory::Severity;
use serde_json::{json, Value};
use support::{
    action, assert_no_secret, forward_after, manifest_with_rate_limit, shared_tempdir,
    ssh_connection, stamps_ns, wait_for_disconnects,
};

/// A stand-in for systemctl: `svc start|stop|restart|status|fail <unit>`.
const SVC: &str = r#"#!/bin/sh
dir="$(dirname "$0")/units"
mkdir -p "$dir"
case "$1" in
  start|restart) echo active > "$dir/$2" ;;
  stop) echo inactive > "$dir/$2" ;;
  status) cat "$dir/$2" 2>/dev/null || echo inactive ;;
  fail) echo "job for $2 failed: boom" >&2; exit 3 ;;
esac
"#;

/// One sshd plus a work dir holding the fake commands and their traces.
struct Host {
    sshd: Sshd,
    work: tempfile::TempDir,
}

impl Host {
    fn start() -> Host {
        let work = shared_tempdir();
        let svc = work.path().join("svc");
        std::fs::write(&svc, SVC).unwrap();
        drivers::testing::set_mode(&svc, 0o755);
        Host {
            sshd: Sshd::start(),
            work,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn set_unit(&self, unit: &str, state: &str) {
        std::fs::create_dir_all(self.path("units")).unwrap();
        std::fs::write(self.path("units").join(unit), format!("{state}\n")).unwrap();
    }

    fn unit(&self, unit: &str) -> String {
        std::fs::read_to_string(self.path("units").join(unit))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// The host's connection map: key login, host key pinned, harmless commands.
    fn connection(&self, overrides: Value) -> serde_json::Map<String, Value> {
        let w = self.work.path().display();
        let commands = json!({
            "commands": {
                "poweroff": format!("touch {w}/poweroff-called"),
                "reboot": format!("touch {w}/reboot-called"),
                "service_start": format!("{w}/svc start {{service}}"),
                "service_stop": format!("{w}/svc stop {{service}}"),
                "service_restart": format!("{w}/svc restart {{service}}"),
                "service_status": format!("{w}/svc status {{service}}"),
            },
        });
        ssh_connection(&self.sshd, commands, overrides)
    }

    fn driver(&self, overrides: Value) -> LinuxSshDriver {
        let config = LinuxSshConfig::from_connection(&self.connection(overrides)).expect("config");
        LinuxSshDriver::new("web-01", config).expect("driver")
    }
}

fn stop() -> drivers::driver::Action {
    action("host.service", "stop", json!({}))
}

fn poweroff() -> drivers::driver::Action {
    action("host.power", "poweroff", json!({"delay_s": 0}))
}

fn checks(answer: &drivers::driver::DryRunAnswer) -> Vec<(String, bool)> {
    answer
        .preconditions
        .iter()
        .map(|p| (p.check.clone(), p.ok))
        .collect()
}

fn sshd_accepted_a_login(sshd: &Sshd) -> bool {
    sshd.log().contains("Accepted publickey")
}

#[tokio::test]
async fn connection_test_reports_the_verified_host_key_and_the_ssh_banner() {
    let host = Host::start();
    let report = host
        .driver(json!({}))
        .test_connection()
        .await
        .expect("connection test");
    assert!(report.ok);
    assert_eq!(
        report.details["host_key"]["fingerprint"],
        json!(host.sshd.host_key_fingerprint())
    );
    assert_eq!(
        report.details["host_key"]["verified_by"],
        json!("fingerprint")
    );
    assert!(report.details["ssh_banner"]
        .as_str()
        .unwrap()
        .contains("OpenSSH"));
}

#[tokio::test]
async fn dry_run_of_a_stop_shows_active_to_inactive_and_changes_nothing() {
    let host = Host::start();
    host.set_unit("web.service", "active");
    let answers = host
        .driver(json!({}))
        .dry_run(&stop(), &["service:web.service".into()])
        .await
        .expect("dry-run");
    let a = &answers[0];
    assert!(a.ok, "{a:?}");
    assert_eq!(a.severity, Severity::Info);
    assert_eq!(
        a.idempotency_key,
        "web-01/host.service:stop:service:web.service"
    );
    assert_eq!(
        checks(a),
        [
            ("reachable".to_owned(), true),
            ("auth".to_owned(), true),
            ("host_key".to_owned(), true),
            ("command_present".to_owned(), true),
            ("service_state".to_owned(), true),
        ]
    );
    let w = host.work.path().display();
    assert_eq!(a.plan.kind, "ssh");
    assert_eq!(
        a.plan.preview,
        [json!(format!("{w}/svc stop 'web.service'"))]
    );
    let effect = &a.effects.per_target[0];
    assert_eq!(
        (effect.from.as_deref(), effect.to.as_deref()),
        (Some("active"), Some("inactive"))
    );
    assert_eq!(a.reason, None);
    assert_eq!(
        host.unit("web.service"),
        "active",
        "a dry-run must not change state"
    );
}

#[tokio::test]
async fn dry_run_of_a_stop_on_an_inactive_service_is_an_info_no_op() {
    let host = Host::start();
    host.set_unit("web.service", "inactive");
    let answers = host
        .driver(json!({}))
        .dry_run(&stop(), &["service:web.service".into()])
        .await
        .unwrap();
    let a = &answers[0];
    assert!(a.ok);
    assert_eq!(a.severity, Severity::Info);
    assert!(a.plan.preview.is_empty());
    let effect = &a.effects.per_target[0];
    assert_eq!(
        (effect.from.as_deref(), effect.to.as_deref()),
        (Some("inactive"), Some("inactive"))
    );
    assert_eq!(a.reason.as_deref(), Some("already in the desired state"));
}

#[tokio::test]
async fn dry_run_says_when_the_configured_command_is_not_installed() {
    let host = Host::start();
    let driver = host.driver(json!({"commands": {"poweroff": "hazel-no-such-program --now"}}));
    let answers = driver
        .dry_run(&poweroff(), &["host:web-01".into()])
        .await
        .unwrap();
    let a = &answers[0];
    assert!(!a.ok);
    assert_eq!(a.severity, Severity::Error);
    assert!(checks(a).contains(&("command_present".to_owned(), false)));
    assert!(
        a.reason
            .as_deref()
            .unwrap()
            .contains("hazel-no-such-program"),
        "{a:?}"
    );
}

#[tokio::test]
async fn execute_poweroff_runs_the_configured_command_and_reports_its_exit_status() {
    let host = Host::start();
    let outcomes = host
        .driver(json!({}))
        .execute(&poweroff(), &["host:web-01".into()])
        .await
        .expect("execute");
    let o = &outcomes[0];
    assert!(o.ok, "{o:?}");
    assert_eq!(o.code, "driver.ok");
    assert_eq!(o.evidence["exit_status"], json!(0));
    assert_eq!(
        o.evidence["command"],
        json!(format!(
            "touch {}/poweroff-called",
            host.work.path().display()
        ))
    );
    assert_eq!(o.result_state.as_deref(), Some("powering_off"));
    assert!(
        host.path("poweroff-called").exists(),
        "the configured command ran"
    );
}

#[tokio::test]
async fn a_power_delay_schedules_the_command_in_the_background() {
    let host = Host::start();
    let started = Instant::now();
    let outcomes = host
        .driver(json!({}))
        .execute(
            &action("host.power", "reboot", json!({"delay_s": 1})),
            &["host:web-01".into()],
        )
        .await
        .unwrap();
    assert!(outcomes[0].ok, "{:?}", outcomes[0]);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "execute waited for the delay"
    );
    assert!(!host.path("reboot-called").exists());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !host.path("reboot-called").exists() {
        assert!(Instant::now() < deadline, "the delayed command never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn execute_stop_changes_the_service_and_reads_its_state_back() {
    let host = Host::start();
    host.set_unit("web.service", "active");
    host.set_unit("db.service", "inactive");
    let driver = host.driver(json!({}));
    let outcomes = driver
        .execute(
            &stop(),
            &["service:web.service".into(), "service:db.service".into()],
        )
        .await
        .unwrap();
    assert!(outcomes[0].ok);
    assert_eq!(outcomes[0].code, "driver.ok");
    assert_eq!(outcomes[0].result_state.as_deref(), Some("inactive"));
    assert_eq!(outcomes[0].evidence["state_before"], json!("active"));
    assert_eq!(host.unit("web.service"), "inactive");
    assert_eq!(outcomes[1].code, "driver.already_desired");
    assert!(
        outcomes[1].evidence.get("command").is_none(),
        "a no-op runs no command"
    );
}

#[tokio::test]
async fn a_non_zero_exit_is_an_error_with_the_stderr_tail() {
    let host = Host::start();
    host.set_unit("web.service", "active");
    let w = host.work.path().display().to_string();
    let driver = host.driver(json!({"commands": {
        "service_stop": format!("{w}/svc fail {{service}}"),
        "service_status": format!("{w}/svc status {{service}}"),
    }}));
    let outcomes = driver
        .execute(&stop(), &["service:web.service".into()])
        .await
        .unwrap();
    let o = &outcomes[0];
    assert!(!o.ok);
    assert_eq!(o.severity, Severity::Error);
    assert_eq!(o.code, "driver.server_error");
    assert_eq!(o.evidence["exit_status"], json!(3));
    assert!(o.evidence["stderr_tail"]
        .as_str()
        .unwrap()
        .contains("job for web.service failed: boom"));
    let reason = o.reason.as_deref().unwrap();
    assert!(
        reason.contains("exited with status 3") && reason.contains("boom"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_unit_name_with_shell_syntax_is_refused_and_never_sent() {
    let host = Host::start();
    let evil = format!("service:x;touch {}/injected", host.work.path().display());
    let driver = host.driver(json!({}));
    let answers = driver
        .dry_run(&stop(), std::slice::from_ref(&evil))
        .await
        .unwrap();
    assert!(!answers[0].ok);
    assert!(answers[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("[A-Za-z0-9_.@:-]"));
    let outcomes = driver.execute(&stop(), &[evil]).await.unwrap();
    assert_eq!(outcomes[0].code, "driver.validation_error");
    assert!(!host.path("injected").exists());
}

#[tokio::test]
async fn a_key_the_server_does_not_accept_is_an_auth_error() {
    let host = Host::start();
    let driver = host.driver(json!({"private_key": host.sshd.unauthorized_key_path()}));
    let err = driver.test_connection().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::AuthError, "{err}");
    let err = driver
        .execute(&poweroff(), &["host:web-01".into()])
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::AuthError);
    assert!(!host.path("poweroff-called").exists());
}

#[tokio::test]
async fn a_closed_port_is_a_network_error() {
    let host = Host::start();
    let driver = host.driver(json!({"port": closed_port()}));
    let err = driver.test_connection().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NetworkError, "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_host_key_that_does_not_match_the_pin_is_refused_before_login() {
    let host = Host::start();
    let other_pin = format!("SHA256:{}", "A".repeat(43));
    let driver = host.driver(json!({"host_key_fingerprint": other_pin}));
    let err = driver
        .execute(&poweroff(), &["host:web-01".into()])
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::TlsError, "{err}");
    assert!(err.message.contains("does not match"), "{err}");
    assert!(!host.path("poweroff-called").exists());
    assert!(
        !sshd_accepted_a_login(&host.sshd),
        "credentials were sent to an unverified host"
    );
}

#[tokio::test]
async fn a_known_hosts_entry_with_another_key_is_refused() {
    let host = Host::start();
    let known = host.path("known_hosts");
    // The right host name, someone else's key.
    let other_pub = std::fs::read_to_string(format!(
        "{}.pub",
        host.sshd.unauthorized_key_path().display()
    ))
    .unwrap();
    let other_key: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    std::fs::write(
        &known,
        format!("[127.0.0.1]:{} {}\n", host.sshd.port(), other_key.join(" ")),
    )
    .unwrap();
    let driver = host.driver(
        json!({"host_key_fingerprint": null, "known_hosts": known, "trust_on_first_use": true}),
    );
    let err = driver.test_connection().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::TlsError, "{err}");

    let good = host
        .driver(json!({"host_key_fingerprint": null, "known_hosts": host.sshd.known_hosts_path()}));
    let report = good
        .test_connection()
        .await
        .expect("a matching known_hosts entry is accepted");
    assert_eq!(
        report.details["host_key"]["verified_by"],
        json!("known_hosts")
    );
}

#[tokio::test]
async fn an_unknown_host_key_is_refused_unless_trust_on_first_use_is_configured() {
    let host = Host::start();
    let known = host.path("known_hosts");
    let strict = host.driver(json!({"host_key_fingerprint": null, "known_hosts": known}));
    let err = strict.test_connection().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::TlsError, "{err}");
    assert!(
        !known.exists(),
        "nothing is recorded without trust on first use"
    );
    assert!(!sshd_accepted_a_login(&host.sshd));

    let tofu = host.driver(
        json!({"host_key_fingerprint": null, "known_hosts": known, "trust_on_first_use": true}),
    );
    let first = tofu.test_connection().await.unwrap();
    assert_eq!(
        first.details["host_key"]["trusted_on_first_use"],
        json!(true)
    );
    assert_eq!(
        first.details["host_key"]["verified_by"],
        json!("trust_on_first_use")
    );
    let recorded = std::fs::read_to_string(&known).unwrap();
    assert_eq!(
        recorded.trim(),
        format!(
            "[127.0.0.1]:{} {}",
            host.sshd.port(),
            host.sshd.host_key_line()
        )
    );
    let second = tofu.test_connection().await.unwrap();
    assert_eq!(
        second.details["host_key"]["trusted_on_first_use"],
        json!(false)
    );
    assert_eq!(
        second.details["host_key"]["verified_by"],
        json!("known_hosts")
    );
}

#[tokio::test]
async fn trust_on_first_use_without_a_file_pins_the_key_for_the_driver_and_says_so_in_evidence() {
    let host = Host::start();
    let driver = host.driver(json!({"host_key_fingerprint": null, "trust_on_first_use": true}));
    let outcomes = driver
        .execute(&poweroff(), &["host:web-01".into()])
        .await
        .unwrap();
    let key = &outcomes[0].evidence["host_key"];
    assert_eq!(key["trusted_on_first_use"], json!(true));
    assert_eq!(key["fingerprint"], json!(host.sshd.host_key_fingerprint()));
    let again = driver.test_connection().await.unwrap();
    assert_eq!(
        again.details["host_key"]["trusted_on_first_use"],
        json!(false)
    );
}

#[tokio::test]
async fn no_host_key_check_at_all_is_a_config_error() {
    let host = Host::start();
    let config =
        LinuxSshConfig::from_connection(&host.connection(json!({"host_key_fingerprint": null})))
            .unwrap();
    let err = LinuxSshDriver::new("web-01", config).unwrap_err();
    assert_eq!(err.kind, ErrorKind::ConfigError);
}

#[tokio::test]
async fn a_command_that_outlives_its_timeout_is_a_timeout() {
    let host = Host::start();
    let driver = host.driver(json!({"command_timeout_s": 1, "commands": {"poweroff": "sleep 20"}}));
    let started = Instant::now();
    let outcomes = driver
        .execute(&poweroff(), &["host:web-01".into()])
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert!(!outcomes[0].ok);
    assert_eq!(outcomes[0].code, "driver.timeout", "{:?}", outcomes[0]);
}

#[tokio::test]
async fn secrets_never_appear_in_answers_errors_or_debug_output() {
    let host = Host::start();
    let pem = host.sshd.client_key_pem();
    // The longest base64 line of the key body is what a leak would show.
    let body = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .max_by_key(|l| l.len())
        .unwrap()
        .to_owned();
    let driver = host.driver(json!({"private_key": pem}));
    host.set_unit("web.service", "active");

    let report = driver.test_connection().await.expect("inline keys log in");
    let answers = driver
        .dry_run(&stop(), &["service:web.service".into()])
        .await
        .unwrap();
    let outcomes = driver
        .execute(&stop(), &["service:web.service".into()])
        .await
        .unwrap();
    let found = driver
        .discover(RefreshMode::Fast, Duration::from_secs(10))
        .await;
    let everything = format!(
        "{} {} {} {:?} {driver:?}",
        serde_json::to_string(&report).unwrap(),
        serde_json::to_string(&answers).unwrap(),
        serde_json::to_string(&outcomes).unwrap(),
        found,
    );
    assert_no_secret(&everything, &body, "answers");

    let refused = host.driver(
        json!({"private_key": pem, "host_key_fingerprint": format!("SHA256:{}A", "B".repeat(42))}),
    );
    let err = refused.test_connection().await.unwrap_err();
    assert_no_secret(&format!("{err} {err:?} {refused:?}"), &body, "errors");
    let config =
        LinuxSshConfig::from_connection(&host.connection(json!({"private_key": pem}))).unwrap();
    assert_no_secret(&format!("{config:?}"), &body, "config Debug");
}

#[tokio::test]
async fn discovery_lists_the_host_and_the_configured_services() {
    let host = Host::start();
    host.set_unit("web.service", "active");
    host.set_unit("db.service", "inactive");
    let driver = host.driver(json!({"services": ["web.service", "db.service"]}));
    let targets = driver
        .discover(RefreshMode::Fast, Duration::from_secs(10))
        .await
        .unwrap();
    let seen: Vec<(String, Option<String>)> = targets
        .iter()
        .map(|t| (t.canonical_id(), t.status.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            ("host:web-01".to_owned(), Some("running".to_owned())),
            ("service:web.service".to_owned(), Some("active".to_owned())),
            ("service:db.service".to_owned(), Some("inactive".to_owned())),
        ]
    );
}

#[tokio::test]
async fn discovery_without_a_service_list_reads_list_units_output() {
    let host = Host::start();
    let listing = host.path("units.txt");
    std::fs::write(
        &listing,
        "cron.service loaded active running Regular background program processing daemon\n\
         nginx.service loaded failed failed A high performance web server\n",
    )
    .unwrap();
    let driver =
        host.driver(json!({"commands": {"list_services": format!("cat {}", listing.display())}}));
    let targets = driver
        .discover(RefreshMode::Full, Duration::from_secs(10))
        .await
        .unwrap();
    let nginx = targets
        .iter()
        .find(|t| t.id == "nginx.service")
        .expect("nginx listed");
    assert_eq!(nginx.status.as_deref(), Some("failed"));
    assert_eq!(
        nginx.attrs["description"],
        json!("A high performance web server")
    );
}

#[tokio::test]
async fn with_sudo_the_commands_run_through_sudo_n_and_the_dry_run_checks_it() {
    let host = Host::start();
    let driver = host.driver(json!({"sudo": true}));
    let answers = driver
        .dry_run(&poweroff(), &["host:web-01".into()])
        .await
        .unwrap();
    let a = &answers[0];
    assert!(a.preconditions.iter().any(|p| p.check == "sudo"), "{a:?}");
    let preview = a.plan.preview[0].as_str().unwrap();
    assert!(preview.starts_with("sudo -n touch "), "{preview}");
}

#[tokio::test]
async fn the_registry_builds_the_driver_from_a_host_config() {
    let host = Host::start();
    let config = HostConfig {
        id: "web-01".into(),
        plugin: "linux.ssh".into(),
        self_host: false,
        connection: host.connection(json!({})),
    };
    let (_, driver): (_, Arc<dyn Driver>) = Registry::builtin()
        .driver_for(&ManifestSet::embedded(), &config)
        .expect("the manifest accepts the driver's config fields");
    assert_eq!(driver.plugin_id(), "linux.ssh");
    assert!(driver.test_connection().await.unwrap().ok);
}

#[tokio::test]
async fn each_remote_command_waits_for_a_slot_of_the_capability_rate_limit() {
    let host = Host::start();
    host.set_unit("web.service", "active");
    let w = host.work.path().display().to_string();
    let stamps = host.path("stamps");
    let stamp = format!("date +%s%N >> {}", stamps.display());
    // One call per second, no burst: every command after the first waits
    // for the next slot.
    let manifest = manifest_with_rate_limit("linux.ssh", "host.service", 1, 1);
    let driver = host
        .driver(json!({"commands": {
            "service_stop": format!("{stamp}; {w}/svc stop {{service}}"),
            "service_status": format!("{stamp}; {w}/svc status {{service}}"),
        }}))
        .with_manifest(&manifest);
    // Three commands: read the state, stop, read it back.
    let started = Instant::now();
    let outcomes = driver
        .execute(&stop(), &["service:web.service".into()])
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(outcomes[0].ok, "{:?}", outcomes[0]);
    // The limiter's timers never fire early: two waits of a second each are
    // a floor on the call, however fast the host answers.
    assert!(
        took >= Duration::from_millis(1950),
        "three paced commands took only {took:?}"
    );
    // The host's clock agrees: all three ran, spread over those two seconds
    // (unpaced they run within tens of ms; the margin absorbs how long a
    // loaded machine takes to start each command's shell).
    let ran = stamps_ns(&stamps);
    assert_eq!(ran.len(), 3, "{ran:?}");
    let span_ms = (ran[2] - ran[0]) / 1_000_000;
    assert!(
        span_ms >= 1000,
        "the commands ran within {span_ms} ms, inside the 1 rps limit"
    );
}

#[tokio::test]
async fn a_delayed_power_off_checks_that_its_own_program_is_installed_not_nohup() {
    let host = Host::start();
    let driver = host.driver(json!({"commands": {"poweroff": "hazel-no-such-program --now"}}));
    let delayed = action("host.power", "poweroff", json!({"delay_s": 30}));
    let answers = driver
        .dry_run(&delayed, &["host:web-01".into()])
        .await
        .unwrap();
    let a = &answers[0];
    let preview = a.plan.preview[0].as_str().unwrap();
    assert!(preview.starts_with("nohup sh -c "), "{preview}");
    let present = a
        .preconditions
        .iter()
        .find(|p| p.check == "command_present")
        .unwrap();
    assert_eq!(
        present.details.as_ref().unwrap()["program"],
        json!("hazel-no-such-program")
    );
    assert!(!present.ok, "{a:?}");
    assert!(!a.ok);
}

#[tokio::test]
async fn a_dry_run_is_bounded_by_its_budget_and_reports_a_timeout() {
    let host = Host::start();
    let w = host.work.path().display().to_string();
    // Each command alone may take 30 s; the dry-run as a whole gets 1 s.
    let driver = host.driver(json!({
        "dry_run_budget_s": 1,
        "command_timeout_s": 30,
        "commands": {
            "service_stop": format!("{w}/svc stop {{service}}"),
            "service_status": "sleep 20",
        },
    }));
    let started = Instant::now();
    let err = driver
        .dry_run(&stop(), &["service:web.service".into()])
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a 1 s dry-run budget took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_cancelled_execute_sends_no_further_command() {
    let host = Host::start();
    host.set_unit("web.service", "active");
    host.set_unit("db.service", "active");
    let w = host.work.path().display().to_string();
    let driver = host.driver(json!({"commands": {
        "service_stop": format!("sleep 2; {w}/svc stop {{service}}"),
        "service_status": format!("{w}/svc status {{service}}"),
    }}));
    let targets = ["service:web.service".into(), "service:db.service".into()];
    let stop = stop();
    // The caller gives up while web.service's stop is still running.
    let call = driver.execute(&stop, &targets);
    let gave_up = tokio::time::timeout(Duration::from_secs(1), call).await;
    assert!(gave_up.is_err(), "the call finished early: {gave_up:?}");
    // The driver closes its session once it notices; after that nothing can be sent.
    wait_for_disconnects(&host.sshd, 1).await;
    assert_eq!(
        host.unit("db.service"),
        "active",
        "a command was sent after the caller stopped waiting"
    );
}

#[tokio::test]
async fn output_that_trickles_in_over_several_read_slices_is_read_whole() {
    let host = Host::start();
    // The driver waits for output in short slices; pauses between lines must
    // not cut the command short or lose what comes after them.
    let slow = "sleep 0.5; echo first; sleep 0.5; echo second >&2; sleep 0.5; echo third";
    let driver = host.driver(json!({"commands": {"poweroff": slow}}));
    let outcomes = driver
        .execute(&poweroff(), &["host:web-01".into()])
        .await
        .unwrap();
    let o = &outcomes[0];
    assert!(o.ok, "{o:?}");
    assert_eq!(o.evidence["exit_status"], json!(0));
    assert_eq!(o.evidence["stdout_tail"], json!("first\nthird"));
    assert_eq!(o.evidence["stderr_tail"], json!("second"));
}

#[tokio::test]
async fn read_only_calls_retry_a_refused_connect_and_changes_never_do() {
    let host = Host::start();
    let port = closed_port();
    let driver = host.driver(json!({"port": port}));
    // The host comes up 200 ms after the first attempt, inside the first
    // backoff (defaults.ssh: 1 retry after 500 ms).
    let comes_up = || {
        tokio::spawn(forward_after(
            Duration::from_millis(200),
            port,
            host.sshd.port(),
        ))
    };

    let up = comes_up();
    let err = driver
        .execute(&poweroff(), &["host:web-01".into()])
        .await
        .unwrap_err();
    up.abort();
    let _ = up.await;
    assert_eq!(err.kind, ErrorKind::NetworkError, "{err}");
    assert!(!host.path("poweroff-called").exists());

    let up = comes_up();
    let report = driver
        .test_connection()
        .await
        .expect("the connection test retries the refused connect");
    assert!(report.ok);
    up.abort();
}
