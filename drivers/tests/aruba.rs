//! The `aruba.aoss` driver against the AOS-S CLI simulator behind a real
//! OpenSSH sshd (the simulator is the sshd's `ForceCommand`, so the SSH
//! transport, the PTY and the login are real). Assertions read the
//! simulator's state file and its log of every line the driver sent.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drivers::aruba::sim::{Layout, SimState};
use drivers::aruba::{ArubaConfig, ArubaDriver};
use drivers::driver::{Driver, ErrorKind, RefreshMode};
use drivers::manifest::ManifestSet;
use drivers::registry::{HostConfig, Registry};
use drivers::testing::sshd::{closed_port, Sshd, SshdBuilder};
use inventory::Severity;
use serde_json::{json, Value};
use support::{
    action, assert_no_secret, ids, manifest_with_rate_limit, rectangle, shared_tempdir,
    ssh_connection, wait_for_disconnects,
};

/// The local user created for the password-login test.
const PASSWORD_USER: &str = "hazel-aoss-test";
const PASSWORD: &str = "pw-Xq7-never-shown";

/// A switch: the simulator's files and the sshd in front of it.
struct Switch {
    work: tempfile::TempDir,
    sshd: Sshd,
}

impl Switch {
    fn start(state: SimState) -> Switch {
        Switch::start_with(state, Sshd::builder())
    }

    fn start_with(state: SimState, builder: SshdBuilder) -> Switch {
        Switch::launch(state, builder, "")
    }

    /// `sim_args` are more simulator arguments, as the shell reads them
    /// (`--stall-after 'no power-over-ethernet'`).
    fn launch(state: SimState, builder: SshdBuilder, sim_args: &str) -> Switch {
        let work = shared_tempdir();
        state.save(&work.path().join("state.json")).unwrap();
        let command = format!(
            "{} --state {} --log {} --times {} {sim_args}",
            env!("CARGO_BIN_EXE_aoss-cli-sim"),
            work.path().join("state.json").display(),
            work.path().join("commands.log").display(),
            work.path().join("times.log").display()
        );
        let sshd = builder.force_command(command).start();
        Switch { work, sshd }
    }

    /// When each line reached the switch (ns since the epoch), in order.
    fn times(&self) -> Vec<(u128, String)> {
        std::fs::read_to_string(self.work.path().join("times.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(ns, line)| (ns.parse().unwrap(), line.to_owned()))
            .collect()
    }

    fn state(&self) -> SimState {
        SimState::load(&self.work.path().join("state.json")).unwrap()
    }

    fn log_path(&self) -> PathBuf {
        self.work.path().join("commands.log")
    }

    /// Every non-empty line the switch received, in order.
    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The lines that change something (everything but `no page` and `show`).
    fn changes(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| l != "no page" && !l.starts_with("show "))
            .collect()
    }

    fn connection(&self, overrides: Value) -> serde_json::Map<String, Value> {
        ssh_connection(&self.sshd, json!({ "cycle_off_s": 0 }), overrides)
    }

    fn driver(&self, overrides: Value) -> ArubaDriver {
        let config = ArubaConfig::from_connection(&self.connection(overrides)).expect("config");
        ArubaDriver::new("sw1", config).expect("driver")
    }
}

/// Member 1, modules A and B, eight ports each, PoE on everywhere.
fn vsf() -> SimState {
    SimState::vsf("Core-Switch-1", 1, &['A', 'B'], 8)
}

fn poe(state: &str) -> drivers::driver::Action {
    action("aoss.poe.port", "set", json!({ "state": state }))
}

fn poe_off_ports(state: &SimState) -> Vec<String> {
    state
        .ports
        .iter()
        .filter(|p| !p.poe)
        .map(|p| p.port.clone())
        .collect()
}

fn expected_off_lines() -> Vec<String> {
    [
        "configure",
        "interface 1/A1-1/A4,1/B1-1/B4",
        "no power-over-ethernet",
        "exit",
        "end",
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test]
async fn discovery_keeps_the_poe_ports_when_the_switch_rejects_the_interface_table() {
    let mut state = vsf();
    state.rejected = vec!["show interfaces brief".into()];
    let switch = Switch::start(state);
    let driver = switch.driver(json!({}));
    let (targets, notes) = drivers::notes::with_discovery_notes(
        driver.discover(RefreshMode::Fast, Duration::from_secs(20)),
    )
    .await;
    let targets = targets.expect("a partial inventory, not an error");
    assert_eq!(targets.len(), 16, "{targets:?}");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("show interfaces brief"), "{notes:?}");
    assert!(targets.iter().all(|t| t.target_type == "poe-port"));
    assert_eq!(
        switch.log(),
        [
            "no page",
            "show power-over-ethernet brief",
            "show interfaces brief"
        ]
    );
}

#[tokio::test]
async fn discovery_marks_the_protected_ports_so_compile_can_refuse_them() {
    let switch = Switch::start(vsf());
    let targets = switch
        .driver(json!({"protected_ports": ["1/A2"]}))
        .discover(RefreshMode::Fast, Duration::from_secs(20))
        .await
        .unwrap();
    let protected: Vec<String> = targets
        .iter()
        .filter(|t| t.attrs.get("protected") == Some(&json!(true)))
        .map(|t| t.canonical_id())
        .collect();
    assert_eq!(protected, ["poe-port:1/A2", "interface:1/A2"]);
}

#[tokio::test]
async fn discovery_fails_when_the_switch_rejects_both_tables() {
    let mut state = vsf();
    state.rejected = vec![
        "show power-over-ethernet brief".into(),
        "show interfaces brief".into(),
    ];
    let switch = Switch::start(state);
    let err = switch
        .driver(json!({}))
        .discover(RefreshMode::Fast, Duration::from_secs(20))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ValidationError, "{err}");
    assert!(err.message.contains("show interfaces brief"), "{err}");
}

#[tokio::test]
async fn discovery_parses_the_poe_and_interface_tables() {
    let mut state = vsf();
    state.ports[1].poe = false;
    state.ports[2].pd = false;
    state.ports[9].admin = false;
    let switch = Switch::start(state);
    let targets = switch
        .driver(json!({}))
        .discover(RefreshMode::Fast, Duration::from_secs(20))
        .await
        .unwrap();
    let poe: Vec<_> = targets
        .iter()
        .filter(|t| t.target_type == "poe-port")
        .collect();
    assert_eq!(poe.len(), 16);
    assert_eq!(
        (poe[0].id.as_str(), poe[0].status.as_deref()),
        ("1/A1", Some("on"))
    );
    assert_eq!(poe[0].attrs["draw_w"], json!(4.7));
    assert_eq!(poe[0].attrs["poe_status"], json!("Delivering"));
    assert_eq!(poe[1].status.as_deref(), Some("off"));
    assert_eq!(poe[1].attrs["poe_status"], json!("Disabled"));
    assert_eq!(poe[2].attrs["poe_status"], json!("Searching"));
    assert_eq!(poe[2].attrs["draw_w"], json!(0.0));
    let b2 = targets
        .iter()
        .find(|t| t.canonical_id() == "interface:1/B2")
        .unwrap();
    assert_eq!(b2.status.as_deref(), Some("down"));
    assert_eq!(
        switch.log(),
        [
            "no page",
            "show power-over-ethernet brief",
            "show interfaces brief"
        ]
    );
}

#[tokio::test]
async fn the_15x_table_layout_and_a_login_banner_are_handled() {
    let mut state = SimState::standalone("idf02", 4);
    state.layout = Layout::V15;
    state.banner = true;
    state.ports[3].poe = false;
    let switch = Switch::start(state);
    let driver = switch.driver(json!({}));
    let report = driver.test_connection().await.unwrap();
    assert_eq!(report.details["hostname"], json!("idf02"));
    let answers = driver
        .dry_run(&poe("on"), &ids("poe-port", &["3", "4"]))
        .await
        .unwrap();
    assert_eq!(answers[0].effects.per_target[0].from.as_deref(), Some("on"));
    assert_eq!(
        answers[1].effects.per_target[0].from.as_deref(),
        Some("off")
    );
    assert_eq!(
        answers[1].plan.preview,
        [
            "configure",
            "interface 4",
            "power-over-ethernet",
            "exit",
            "end"
        ]
        .map(|l| json!(l))
    );
}

#[tokio::test]
async fn dry_run_shows_from_and_to_per_port_and_the_exact_cli_with_compressed_runs() {
    let switch = Switch::start(vsf());
    // What the selector `1/A1-1/B4` resolves to: Hazel's rectangle.
    let targets = rectangle("poe-port", &['A', 'B'], 4);
    let answers = switch
        .driver(json!({}))
        .dry_run(&poe("off"), &targets)
        .await
        .unwrap();
    assert_eq!(answers.len(), 8);
    for (a, target) in answers.iter().zip(&targets) {
        assert!(a.ok, "{a:?}");
        assert_eq!(a.severity, Severity::Info);
        assert_eq!(
            a.idempotency_key,
            format!("sw1/aoss.poe.port:set:{target}:state=off")
        );
        assert_eq!(a.plan.kind, "cli");
        assert_eq!(
            a.plan.preview,
            expected_off_lines()
                .iter()
                .map(|l| json!(l))
                .collect::<Vec<_>>()
        );
        let effect = &a.effects.per_target[0];
        assert_eq!(effect.id, *target);
        assert_eq!(
            (effect.from.as_deref(), effect.to.as_deref()),
            (Some("on"), Some("off"))
        );
        let poe_state = a
            .preconditions
            .iter()
            .find(|p| p.check == "poe_state")
            .unwrap();
        assert_eq!(poe_state.details.as_ref().unwrap()["draw_w"], json!(4.7));
    }
    assert_eq!(
        switch.changes(),
        Vec::<String>::new(),
        "a dry-run sends no change"
    );
    assert_eq!(poe_off_ports(&switch.state()), Vec::<String>::new());
}

#[tokio::test]
async fn dry_run_of_ports_already_off_is_an_info_no_op_and_they_leave_the_plan() {
    let mut state = vsf();
    state.ports[0].poe = false; // 1/A1
    let switch = Switch::start(state);
    let answers = switch
        .driver(json!({}))
        .dry_run(&poe("off"), &ids("poe-port", &["1/A1", "1/A2"]))
        .await
        .unwrap();
    let noop = &answers[0];
    assert!(noop.ok);
    assert_eq!(noop.severity, Severity::Info);
    assert!(noop.plan.preview.is_empty());
    assert_eq!(
        noop.effects.per_target[0].from,
        noop.effects.per_target[0].to
    );
    assert_eq!(
        answers[1].plan.preview,
        [
            "configure",
            "interface 1/A2",
            "no power-over-ethernet",
            "exit",
            "end"
        ]
        .map(|l| json!(l))
    );
}

#[tokio::test]
async fn execute_off_turns_off_exactly_the_selected_ports_and_does_not_save() {
    let switch = Switch::start(vsf());
    let targets = rectangle("poe-port", &['A', 'B'], 4);
    let outcomes = switch
        .driver(json!({}))
        .execute(&poe("off"), &targets)
        .await
        .unwrap();
    for o in &outcomes {
        assert!(o.ok, "{o:?}");
        assert_eq!(o.code, "driver.ok");
        assert_eq!(o.result_state.as_deref(), Some("off"));
        assert_eq!(o.evidence["write_memory"], json!(false));
        assert_eq!(o.evidence["runs"], json!(["1/A1-1/A4", "1/B1-1/B4"]));
    }
    let state = switch.state();
    assert_eq!(
        poe_off_ports(&state),
        ["1/A1", "1/A2", "1/A3", "1/A4", "1/B1", "1/B2", "1/B3", "1/B4"],
        "ports 1/A5-1/A8 must stay on: the switch would read 1/A1-1/B4 as all of module A"
    );
    assert_eq!(switch.changes(), expected_off_lines());
    assert_eq!(state.write_memory_count, 0);
}

#[tokio::test]
async fn execute_on_and_cycle_leave_poe_on_and_a_second_run_is_already_desired() {
    let mut state = vsf();
    for p in &mut state.ports[..3] {
        p.poe = false;
    }
    let switch = Switch::start(state);
    let driver = switch.driver(json!({}));
    let targets = ids("poe-port", &["1/A1", "1/A2", "1/A3"]);
    let on = driver.execute(&poe("on"), &targets).await.unwrap();
    assert!(
        on.iter()
            .all(|o| o.ok && o.result_state.as_deref() == Some("on")),
        "{on:?}"
    );
    assert!(poe_off_ports(&switch.state()).is_empty());

    let again = driver.execute(&poe("on"), &targets).await.unwrap();
    assert!(
        again.iter().all(|o| o.code == "driver.already_desired"),
        "{again:?}"
    );

    let before = switch.changes().len();
    let cycle = driver
        .execute(&poe("cycle"), &ids("poe-port", &["1/B7", "1/B8"]))
        .await
        .unwrap();
    assert!(
        cycle
            .iter()
            .all(|o| o.ok && o.result_state.as_deref() == Some("on")),
        "{cycle:?}"
    );
    assert_eq!(
        switch.changes()[before..],
        [
            "configure",
            "interface 1/B7-1/B8",
            "no power-over-ethernet",
            "power-over-ethernet",
            "exit",
            "end"
        ]
    );
    assert!(poe_off_ports(&switch.state()).is_empty());
}

#[tokio::test]
async fn write_memory_is_sent_only_when_save_config_is_true() {
    let switch = Switch::start(vsf());
    let outcomes = switch
        .driver(json!({"save_config": true}))
        .execute(&poe("off"), &ids("poe-port", &["1/A1"]))
        .await
        .unwrap();
    assert!(outcomes[0].ok);
    assert_eq!(outcomes[0].evidence["write_memory"], json!(true));
    assert_eq!(
        switch.changes().last().map(String::as_str),
        Some("write memory")
    );
    let state = switch.state();
    assert_eq!(state.write_memory_count, 1);
    assert!(!state.saved.unwrap()[0].poe);
}

#[tokio::test]
async fn executing_on_a_protected_port_is_refused_before_anything_is_sent() {
    let switch = Switch::start(vsf());
    let driver = switch.driver(json!({"protected_ports": ["1/A2"]}));
    let targets = ids("poe-port", &["1/A1", "1/A2", "1/A3"]);
    let err = driver.execute(&poe("off"), &targets).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::ValidationError);
    assert!(
        err.message.contains("1/A2") && err.message.contains("protected"),
        "{err}"
    );
    // A dry-run of protected ports only has nothing to plan: refused too.
    let err = driver
        .dry_run(&poe("off"), &ids("poe-port", &["1/A2"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ValidationError);
    assert!(
        !switch.log_path().exists(),
        "the switch received: {:?}",
        switch.log()
    );
    assert!(
        !switch.sshd.log().contains("Accepted"),
        "the driver logged in"
    );
    assert!(poe_off_ports(&switch.state()).is_empty());
}

#[tokio::test]
async fn a_dry_run_refuses_a_protected_port_on_its_own_answer_and_still_plans_the_others() {
    let switch = Switch::start(vsf());
    let driver = switch.driver(json!({"protected_ports": ["1/A2"]}));
    let targets = ids("poe-port", &["1/A1", "1/A2", "1/A3"]);
    let answers = driver.dry_run(&poe("off"), &targets).await.unwrap();
    assert_eq!(answers.len(), 3);
    let protected = &answers[1];
    assert!(!protected.ok);
    assert_eq!(protected.severity, Severity::Error);
    let reason = protected.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("1/A2") && reason.contains("protected"),
        "{reason}"
    );
    assert!(protected
        .preconditions
        .iter()
        .any(|p| p.check == "not_protected" && !p.ok));
    assert!(protected.plan.preview.is_empty());
    // The run skips the protected port: `1/A1-1/A3` would touch it.
    for answer in [&answers[0], &answers[2]] {
        assert!(answer.ok, "{answer:?}");
        assert!(
            answer.plan.preview.contains(&json!("interface 1/A1,1/A3")),
            "{:?}",
            answer.plan.preview
        );
    }
    // The dry-run only read the table.
    assert!(switch.changes().is_empty(), "{:?}", switch.changes());
}

#[tokio::test]
async fn password_login_works_and_the_password_never_shows() {
    let builder = Sshd::builder().password_user(PASSWORD_USER, PASSWORD);
    let switch = Switch::start_with(vsf(), builder);
    // The forced command runs as the password user: let it write the sim's files.
    for path in [
        switch.work.path().to_path_buf(),
        switch.work.path().join("state.json"),
    ] {
        switch.sshd.chown_to_password_user(&path);
    }
    let login = json!({"username": PASSWORD_USER, "password": PASSWORD, "private_key": null});
    let driver = switch.driver(login.clone());
    let report = driver.test_connection().await.expect("password login");
    assert!(report.ok);
    assert_eq!(report.details["level"], json!("manager"));
    let outcomes = driver
        .execute(&poe("off"), &ids("poe-port", &["1/B8"]))
        .await
        .unwrap();
    assert!(outcomes[0].ok, "{:?}", outcomes[0]);
    assert_eq!(poe_off_ports(&switch.state()), ["1/B8"]);
    assert!(switch.sshd.log().contains("Accepted password"));

    let mut wrong = login;
    wrong["password"] = json!("not-the-password");
    let err = switch.driver(wrong).test_connection().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::AuthError, "{err}");
    let shown = format!(
        "{} {err} {err:?} {driver:?} {:?}",
        serde_json::to_string(&outcomes).unwrap(),
        ArubaConfig::from_connection(&switch.connection(json!({"password": PASSWORD}))).unwrap()
    );
    assert_no_secret(&shown, PASSWORD, "answers, errors and Debug output");
}

#[tokio::test]
async fn a_port_missing_from_the_switch_is_not_found_and_never_sent() {
    let switch = Switch::start(vsf());
    let driver = switch.driver(json!({}));
    let targets = ids("poe-port", &["1/C1", "1/A1"]);
    let answers = driver.dry_run(&poe("off"), &targets).await.unwrap();
    assert!(!answers[0].ok);
    assert_eq!(answers[0].severity, Severity::Error);
    assert!(answers[0].reason.as_deref().unwrap().contains("1/C1"));
    assert_eq!(
        answers[1].plan.preview,
        [
            "configure",
            "interface 1/A1",
            "no power-over-ethernet",
            "exit",
            "end"
        ]
        .map(|l| json!(l))
    );
    let outcomes = driver.execute(&poe("off"), &targets).await.unwrap();
    assert_eq!(outcomes[0].code, "driver.not_found");
    assert!(outcomes[1].ok);
    assert!(switch.log().iter().all(|l| !l.contains("1/C1")));
}

#[tokio::test]
async fn a_switch_rejection_is_reported_and_stops_the_change() {
    let mut state = vsf();
    // Listed in the table, but the module is gone when the change arrives.
    state.unplugged = vec!["1/A3".into()];
    let switch = Switch::start(state);
    let outcomes = switch
        .driver(json!({"save_config": true}))
        .execute(
            &poe("off"),
            &ids("poe-port", &["1/A1", "1/A2", "1/A3", "1/A4"]),
        )
        .await
        .unwrap();
    for o in &outcomes {
        assert!(!o.ok);
        assert_eq!(o.code, "driver.not_found");
        let reason = o.reason.as_deref().unwrap();
        assert!(
            reason.contains("Module not present for port or invalid port: 1/A3"),
            "{reason}"
        );
        assert_eq!(o.evidence["write_memory"], json!(false));
    }
    assert_eq!(
        switch.changes(),
        ["configure", "interface 1/A1-1/A4", "end"]
    );
    assert!(poe_off_ports(&switch.state()).is_empty());
}

#[tokio::test]
async fn interface_admin_down_disables_the_ports() {
    let switch = Switch::start(vsf());
    let driver = switch.driver(json!({}));
    let set_down = action("aoss.interface", "set", json!({"admin": "down"}));
    let targets = ids("interface", &["1/B1", "1/B2"]);
    let answers = driver.dry_run(&set_down, &targets).await.unwrap();
    assert_eq!(
        answers[0].idempotency_key,
        "sw1/aoss.interface:set:interface:1/B1:admin=down"
    );
    assert_eq!(
        answers[0].plan.preview,
        ["configure", "interface 1/B1-1/B2", "disable", "exit", "end"].map(|l| json!(l))
    );
    let outcomes = driver.execute(&set_down, &targets).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| o.ok && o.result_state.as_deref() == Some("down")),
        "{outcomes:?}"
    );
    let state = switch.state();
    let disabled: Vec<&str> = state
        .ports
        .iter()
        .filter(|p| !p.admin)
        .map(|p| p.port.as_str())
        .collect();
    assert_eq!(disabled, ["1/B1", "1/B2"]);
}

#[tokio::test]
async fn a_wrong_target_type_or_param_is_refused() {
    let switch = Switch::start(vsf());
    let driver = switch.driver(json!({}));
    let answers = driver
        .dry_run(&poe("off"), &ids("interface", &["1/A1"]))
        .await
        .unwrap();
    assert!(!answers[0].ok);
    let err = driver
        .dry_run(&poe("sideways"), &ids("poe-port", &["1/A1"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ValidationError);
}

#[tokio::test]
async fn the_registry_builds_the_driver_from_a_host_config() {
    let switch = Switch::start(vsf());
    let config = HostConfig {
        id: "sw1".into(),
        plugin: "aruba.aoss".into(),
        self_host: false,
        connection: switch.connection(json!({"protected_ports": ["1/A24"]})),
    };
    let (_, driver): (_, Arc<dyn Driver>) = Registry::builtin()
        .driver_for(&ManifestSet::embedded(), &config)
        .expect("the manifest accepts the driver's config fields");
    assert_eq!(driver.plugin_id(), "aruba.aoss");
    assert!(driver.test_connection().await.unwrap().ok);
}

#[tokio::test]
async fn an_unreachable_switch_is_a_network_error_and_nothing_is_sent() {
    let switch = Switch::start(vsf());
    let driver = switch.driver(json!({"port": closed_port()}));
    let err = driver.test_connection().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NetworkError, "{err}");
    assert!(err.is_retryable());
    let targets = ids("poe-port", &["1/A1"]);
    let err = driver.dry_run(&poe("off"), &targets).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NetworkError, "{err}");
    let err = driver.execute(&poe("off"), &targets).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NetworkError, "{err}");
    assert!(
        !switch.log_path().exists(),
        "the switch received: {:?}",
        switch.log()
    );
}

#[tokio::test]
async fn a_switch_that_stops_answering_is_a_timeout_within_the_dry_run_budget() {
    let switch = Switch::launch(
        vsf(),
        Sshd::builder(),
        "--stall-after 'show power-over-ethernet brief'",
    );
    // Each command alone may take 20 s; the dry-run as a whole gets 2 s.
    let driver = switch.driver(json!({"command_timeout_s": 20, "dry_run_budget_s": 2}));
    let started = Instant::now();
    let err = driver
        .dry_run(&poe("off"), &ids("poe-port", &["1/A1"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a 2 s dry-run budget took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_switch_that_stalls_mid_change_is_a_timeout_and_nothing_more_is_sent() {
    let switch = Switch::launch(
        vsf(),
        Sshd::builder(),
        "--stall-after 'no power-over-ethernet'",
    );
    let driver = switch.driver(json!({"command_timeout_s": 1, "save_config": true}));
    let started = Instant::now();
    let outcomes = driver
        .execute(&poe("off"), &ids("poe-port", &["1/A1", "1/A2"]))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a 1 s command timeout took {:?}",
        started.elapsed()
    );
    for o in &outcomes {
        assert!(!o.ok);
        assert_eq!(o.code, "driver.timeout", "{o:?}");
        assert_eq!(o.evidence["write_memory"], json!(false));
    }
    wait_for_disconnects(&switch.sshd, 1).await;
    assert_eq!(
        switch.changes(),
        ["configure", "interface 1/A1-1/A2", "no power-over-ethernet"],
        "nothing is sent after a timeout, not even `end`"
    );
    // The line already sent still took effect: the engine learns it by reading state.
    assert_eq!(poe_off_ports(&switch.state()), ["1/A1", "1/A2"]);
}

#[tokio::test]
async fn a_cycle_cancelled_during_its_pause_sends_nothing_more() {
    let switch = Switch::start(vsf());
    let driver = switch.driver(json!({"cycle_off_s": 10}));
    let (cycle, targets) = (poe("cycle"), ids("poe-port", &["1/A1"]));
    let call = driver.execute(&cycle, &targets);
    // The caller gives up while PoE is off, before the cycle turns it on again.
    let gave_up = tokio::time::timeout(Duration::from_secs(3), call).await;
    assert!(gave_up.is_err(), "the cycle finished early: {gave_up:?}");
    wait_for_disconnects(&switch.sshd, 1).await;
    assert_eq!(
        switch.changes(),
        ["configure", "interface 1/A1", "no power-over-ethernet"],
        "a line was sent after the caller stopped waiting"
    );
    assert_eq!(poe_off_ports(&switch.state()), ["1/A1"]);
}

#[tokio::test]
async fn each_cli_batch_waits_for_a_slot_of_the_capability_rate_limit() {
    let switch = Switch::start(vsf());
    // One call per second, no burst.
    let manifest = manifest_with_rate_limit("aruba.aoss", "aoss.poe.port", 1, 1);
    let driver = switch.driver(json!({})).with_manifest(&manifest);
    let started = Instant::now();
    let outcomes = driver
        .execute(&poe("off"), &ids("poe-port", &["1/A1"]))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(outcomes[0].ok, "{:?}", outcomes[0]);
    // Three device calls: the table read, the change batch, the read-back.
    // The limiter's timers never fire early, so two waits of a second each
    // are a floor on the call.
    assert!(
        took >= Duration::from_millis(1950),
        "three paced batches took only {took:?}"
    );
    // The switch's view (one long-lived process, so no start-up jitter).
    let times = switch.times();
    let arrived = |line: &str, nth: usize| {
        times
            .iter()
            .filter(|(_, l)| l == line)
            .nth(nth)
            .unwrap_or_else(|| panic!("`{line}` #{nth} never arrived: {times:?}"))
            .0
    };
    let read = arrived("show power-over-ethernet brief", 0);
    let change = arrived("configure", 0);
    let read_back = arrived("show power-over-ethernet brief", 1);
    let gaps_ms = [
        (change - read) / 1_000_000,
        (read_back - change) / 1_000_000,
    ];
    assert!(
        gaps_ms.iter().all(|g| *g >= 700),
        "the batches reached the switch {gaps_ms:?} ms apart, inside the 1 rps limit"
    );
    // The batch itself is one call: its lines follow each other at once.
    let end = arrived("end", 0);
    assert!((end - change) / 1_000_000 < 900, "{times:?}");
}
