//! The `hazel` client commands end to end: the real binary against a real
//! agent (the SQLite store in a temporary directory, the HTTP API on a
//! loopback port, the Proxmox simulator as the host), checking what people
//! read, what scripts parse with `--json`, and the documented exit codes.

use std::time::Duration;

use agent::api::{self, mint_for_cli, ApiConfig, JwtKey};
use agent::service::{Config, OpenOptions, Service};
use drivers::proxmox::sim::{ProxmoxSim, SimConfig};
use drivers::registry::HostConfig;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;

const JWT_KEY: &str = "cli-client-test-key-0123456789abcdef";

/// A running agent and the simulator behind it.
struct Agent {
    dir: TempDir,
    url: String,
    sim: Option<ProxmoxSim>,
    service: Service,
    stop: Option<oneshot::Sender<()>>,
}

impl Agent {
    async fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let sim = ProxmoxSim::start(SimConfig::demo())
            .await
            .expect("the Proxmox simulator binds a loopback port");
        let config = Config {
            data_dir: dir.path().join("data"),
            hosts: vec![HostConfig {
                id: "pve-01".into(),
                plugin: "proxmox.ve".into(),
                self_host: false,
                connection: sim.connection(),
            }],
            shutdown_grace: Duration::from_secs(2),
            ..Config::default()
        };
        let options = OpenOptions {
            discovery: false,
            ..OpenOptions::default()
        };
        let service = Service::open(config, options)
            .await
            .expect("the service opens on a fresh data dir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let api_config = ApiConfig {
            rate_per_s: 10_000,
            rate_burst: 10_000,
            ..ApiConfig::new(JwtKey::from_bytes(JWT_KEY.as_bytes()).unwrap())
        };
        let router = api::router(service.clone(), api_config);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(api::serve(listener, router, async move {
            let _ = stopped.await;
        }));
        Agent {
            dir,
            url,
            sim: Some(sim),
            service,
            stop: Some(stop),
        }
    }

    /// Runs `hazel ARGS --url <agent> --token <role's token>`.
    async fn hazel(&self, role: &str, args: &[&str]) -> Run {
        let token = token(role);
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--url", &self.url, "--token", &token]);
        hazel(&all, &[]).await
    }

    /// Writes `text` to a file in the agent's directory.
    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.service.shutdown().await;
    }
}

/// One run of the binary.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

fn token(role: &str) -> String {
    mint_for_cli(
        JWT_KEY.as_bytes(),
        &format!("test-{role}"),
        role,
        Duration::from_secs(3600),
    )
    .unwrap()
}

async fn hazel(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hazel"));
    cmd.args(args)
        .env_remove("HAZEL_URL")
        .env_remove("HAZEL_TOKEN")
        .env_remove("HAZEL_JWT_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = cmd.output().await.expect("the hazel binary runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A policy shutting down the simulator's app04 (vm 104, running, unlocked)
/// on battery; `grace` makes each version's hash distinct.
fn policy(name: &str, grace: u32) -> String {
    policy_on(name, grace, "{ mode: list, value: '104' }")
}

/// The same on every running low-tier VM: the simulator's vm 106 is locked
/// by a backup, so its dry-run has an error.
fn policy_with_locked_vm(name: &str) -> String {
    policy_on(
        name,
        90,
        "{ mode: query, value: 'labels.tier = low and status = running' }",
    )
}

fn policy_on(name: &str, grace: u32, selector: &str) -> String {
    format!(
        r#"version: 1
name: "{name}"
enabled: false
trigger_group:
  triggers:
    - {{ type: ups.state, equals: on_battery }}
targets:
  host_id: pve-01
  target_type: vm
  selector: {selector}
actions:
  - capability_id: proxmox.vm
    verb: shutdown
    params: {{ grace_s: {grace}, force_after_grace: true }}
"#
    )
}

const EVENT: &str = r#"{"kind": "ups.state", "subject": {"kind": "ups", "id": "ups1"}, "attrs": {"state": "on_battery"}}"#;

fn assert_code(run: &Run, code: i32) {
    assert_eq!(run.code, code, "{run:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_then_leaves_unchanged_then_updates_after_an_edit() {
    let agent = Agent::start().await;
    let file = agent.file("p.yaml", &policy("shed low tier", 90));

    let run = agent.hazel("admin", &["policy", "apply", &file]).await;
    assert_code(&run, 0);
    assert!(run.stdout.starts_with("created"), "{run:#?}");

    let run = agent.hazel("admin", &["policy", "apply", &file]).await;
    assert_code(&run, 0);
    assert!(run.stdout.starts_with("unchanged"), "{run:#?}");

    std::fs::write(&file, policy("shed low tier", 120)).unwrap();
    let run = agent
        .hazel("admin", &["policy", "apply", &file, "--json"])
        .await;
    assert_code(&run, 0);
    let answer = run.json();
    assert_eq!(answer[0]["result"], "updated", "{answer}");
    assert_eq!(answer[0]["policy"]["version_int"], 2, "{answer}");

    let run = agent.hazel("viewer", &["policy", "list"]).await;
    assert_code(&run, 0);
    assert!(run.stdout.starts_with("ID "), "{run:#?}");
    assert!(run.stdout.contains("shed low tier"), "{run:#?}");
    assert!(run.stdout.contains("1 policy"), "{run:#?}");

    let run = agent
        .hazel("viewer", &["policy", "show", "shed low tier"])
        .await;
    assert_code(&run, 0);
    assert!(run.stdout.contains("version:  2"), "{run:#?}");
    assert!(run.stdout.contains("grace_s: 120"), "{run:#?}");

    let run = agent
        .hazel("viewer", &["policy", "show", "no such policy"])
        .await;
    assert_code(&run, 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_policy_is_refused_with_its_issues_and_exit_1() {
    let agent = Agent::start().await;
    let file = agent.file("bad.yaml", "version: 1\nname: bad\nbogus: true\n");
    let run = agent.hazel("admin", &["policy", "apply", &file]).await;
    assert_code(&run, 1);
    assert!(run.stderr.contains("policy.invalid"), "{run:#?}");
    assert!(run.stderr.contains("bogus"), "{run:#?}");

    let run = agent
        .hazel("admin", &["policy", "apply", "/nonexistent/p.yaml"])
        .await;
    assert_code(&run, 2);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_of_an_edited_name_round_trips() {
    let agent = Agent::start().await;
    let file = agent.file("p.yaml", &policy("original", 90));
    assert_code(&agent.hazel("admin", &["policy", "apply", &file]).await, 0);

    let run = agent
        .hazel("viewer", &["policy", "export", "original"])
        .await;
    assert_code(&run, 0);
    assert!(run.stdout.contains("name: original"), "{run:#?}");
    // The export is exact: importing it unedited is refused as identical.
    let same = agent.file("same.yaml", &run.stdout);
    let run = agent.hazel("admin", &["policy", "import", &same]).await;
    assert_code(&run, 1);
    assert!(run.stderr.contains("policy.duplicate_hash"), "{run:#?}");

    // A copy needs more than a new name (the hash leaves the name out).
    let exported = agent
        .hazel("viewer", &["policy", "export", "original"])
        .await
        .stdout;
    assert!(exported.contains("grace_s: 90"), "{exported}");
    let copy = agent.file(
        "copy.yaml",
        &exported
            .replace("name: original", "name: copy")
            .replace("grace_s: 90", "grace_s: 60"),
    );
    let run = agent.hazel("admin", &["policy", "import", &copy]).await;
    assert_code(&run, 0);
    assert!(run.stdout.starts_with("created"), "{run:#?}");

    let run = agent
        .hazel("viewer", &["policy", "export", "copy", "--json"])
        .await;
    assert_code(&run, 0);
    assert_eq!(run.json()["name"], "copy");

    let run = agent.hazel("viewer", &["policy", "list", "--json"]).await;
    assert_eq!(run.json()["items"].as_array().unwrap().len(), 2);

    let run = agent.hazel("admin", &["policy", "delete", "copy"]).await;
    assert_code(&run, 0);
    let run = agent.hazel("viewer", &["policy", "list", "--json"]).await;
    assert_eq!(run.json()["total"], 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_disable_dry_run_and_inverse_report_through_their_exit_codes() {
    let mut agent = Agent::start().await;
    let file = agent.file("p.yaml", &policy("gated", 90));
    assert_code(&agent.hazel("admin", &["policy", "apply", &file]).await, 0);

    let run = agent.hazel("operator", &["dry-run", "gated"]).await;
    assert_code(&run, 0);
    assert!(run.stdout.contains("dry-run of"), "{run:#?}");
    assert!(run.stdout.contains("proxmox.vm.shutdown"), "{run:#?}");

    let run = agent.hazel("admin", &["policy", "enable", "gated"]).await;
    assert_code(&run, 0);
    assert!(run.stdout.starts_with("enabled"), "{run:#?}");
    let run = agent
        .hazel("admin", &["policy", "disable", "gated", "--json"])
        .await;
    assert_code(&run, 0);
    assert_eq!(run.json()["status"], "disabled");

    let run = agent.hazel("operator", &["inverse", "gated"]).await;
    assert_code(&run, 0);
    assert!(run.stdout.contains("verb: start"), "{run:#?}");
    assert!(run.stdout.contains("ledger"), "{run:#?}");
    let run = agent
        .hazel("operator", &["inverse", "gated", "--json"])
        .await;
    assert_eq!(run.json()["enabled"], false);

    // A locked VM among the targets: the dry-run has an error (exit 1)
    // and enable is refused unless forced with a reason.
    let locked = agent.file("locked.yaml", &policy_with_locked_vm("locked"));
    assert_code(
        &agent.hazel("admin", &["policy", "apply", &locked]).await,
        0,
    );
    let run = agent.hazel("operator", &["dry-run", "locked"]).await;
    assert_code(&run, 1);
    assert!(run.stdout.contains("severity error"), "{run:#?}");
    assert!(run.stdout.contains("VM is locked"), "{run:#?}");
    let run = agent.hazel("admin", &["policy", "enable", "locked"]).await;
    assert_code(&run, 1);
    assert!(run.stderr.contains("policy.enable_blocked"), "{run:#?}");
    let run = agent
        .hazel("admin", &["policy", "enable", "locked", "--force"])
        .await;
    assert_code(&run, 2);
    let reason = ["--force", "--reason", "backup ends soon"];
    let run = agent
        .hazel(
            "admin",
            &[&["policy", "enable", "locked"][..], &reason].concat(),
        )
        .await;
    assert_code(&run, 0);

    // The host goes away: the dry-run of the healthy policy fails too.
    agent.sim.take().unwrap().shutdown().await;
    let run = agent.hazel("operator", &["dry-run", "gated"]).await;
    assert_code(&run, 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_ups_on_battery_prints_the_hold_and_the_restore_by_policy_name_and_target() {
    let agent = Agent::start().await;
    let forward = policy("On battery 2m: stop low-tier VMs", 90).replace(
        "{ type: ups.state, equals: on_battery }",
        "{ type: ups.state, equals: on_battery, for: 2m }",
    );
    let file = agent.file("forward.yaml", &forward);
    assert_code(&agent.hazel("admin", &["policy", "apply", &file]).await, 0);
    let name = "On battery 2m: stop low-tier VMs";
    assert_code(&agent.hazel("admin", &["policy", "enable", name]).await, 0);
    let shown = agent
        .hazel("viewer", &["policy", "show", name, "--json"])
        .await;
    let forward_id = shown.json()["id"].as_str().unwrap().to_string();
    let inverse = format!(
        r#"version: 1
name: "Mains back: restart what stopped"
enabled: false
trigger_group:
  triggers:
    - {{ type: ups.state, equals: on_mains }}
targets:
  host_id: pve-01
  target_type: vm
  selector: {{ mode: ledger, value: "{forward_id}" }}
actions:
  - capability_id: proxmox.vm
    verb: start
"#
    );
    let file = agent.file("inverse.yaml", &inverse);
    assert_code(&agent.hazel("admin", &["policy", "apply", &file]).await, 0);
    assert_code(
        &agent
            .hazel(
                "admin",
                &["policy", "enable", "Mains back: restart what stopped"],
            )
            .await,
        0,
    );

    let run = agent
        .hazel("operator", &["simulate", "--ups", "ups1", "on_battery"])
        .await;
    assert_code(&run, 0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("simulated"), "{run:#?}");
    assert!(
        lines[1].starts_with("in 2m (")
            && lines[1]
                .ends_with("): On battery 2m: stop low-tier VMs -> proxmox.vm shutdown vm:104"),
        "{run:#?}"
    );
    assert!(
        lines[2]
            .contains("hold: trigger 0 (ups.state = on_battery for 120s): ups1 entered on_battery"),
        "{run:#?}"
    );
    assert!(
        run.stdout.contains(
            "when the mains return: Mains back: restart what stopped would run proxmox.vm start vm:104"
        ),
        "{run:#?}"
    );
    assert!(
        !run.stdout.contains(&forward_id),
        "names, not ids: {run:#?}"
    );

    let run = agent
        .hazel(
            "operator",
            &["simulate", "--ups", "ups1", "on_battery", "--json"],
        )
        .await;
    assert_code(&run, 0);
    let answer = run.json();
    assert_eq!(answer["timeline"][0]["kind"], "countdown", "{answer}");
    assert_eq!(answer["timeline"][0]["planned"][0]["targets"][0], "vm:104");

    let run = agent
        .hazel("operator", &["simulate", "--ups", "ups1"])
        .await;
    assert_code(&run, 2);
    assert!(run.stderr.contains("--ups needs a state"), "{run:#?}");

    let run = agent.hazel("viewer", &["executions", name, "--json"]).await;
    assert_eq!(
        run.json(),
        Value::Array(vec![]),
        "a simulation runs nothing"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_decides_without_running_and_events_send_reaches_the_ledger() {
    let agent = Agent::start().await;
    let file = agent.file("p.yaml", &policy("on battery", 90));
    assert_code(&agent.hazel("admin", &["policy", "apply", &file]).await, 0);
    assert_code(
        &agent
            .hazel("admin", &["policy", "enable", "on battery"])
            .await,
        0,
    );
    let event = agent.file("event.json", EVENT);

    let run = agent.hazel("operator", &["simulate", &event]).await;
    assert_code(&run, 0);
    assert!(run.stdout.starts_with("simulated"), "{run:#?}");
    let run = agent
        .hazel("operator", &["simulate", &event, "--json"])
        .await;
    assert_code(&run, 0);
    let answer = run.json();
    assert_eq!(answer["dry_run"], true, "{answer}");
    assert_eq!(answer["decisions"].as_array().unwrap().len(), 1, "{answer}");

    let run = agent
        .hazel("viewer", &["executions", "on battery", "--json"])
        .await;
    assert_code(&run, 0);
    assert_eq!(
        run.json(),
        Value::Array(vec![]),
        "a simulation runs nothing"
    );

    let run = agent.hazel("operator", &["events", "send", &event]).await;
    assert_code(&run, 0);
    assert!(run.stdout.starts_with("accepted"), "{run:#?}");

    let mut runs = Value::Null;
    for _ in 0..100 {
        let run = agent
            .hazel("viewer", &["executions", "on battery", "--json"])
            .await;
        runs = run.json();
        if runs.as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
    let run = agent
        .hazel("viewer", &["executions", "on battery", "--limit", "5"])
        .await;
    assert_code(&run, 0);
    assert!(run.stdout.contains("ups.state"), "{run:#?}");
    assert!(run.stdout.contains("1 run(s)"), "{run:#?}");

    let run = agent.hazel("viewer", &["hosts"]).await;
    assert_code(&run, 0);
    assert!(run.stdout.contains("pve-01"), "{run:#?}");
    assert!(run.stdout.contains("proxmox.ve"), "{run:#?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_flip_the_kill_switch_and_status_shows_it() {
    let agent = Agent::start().await;
    let run = agent
        .hazel("admin", &["pause", "--reason", "maintenance"])
        .await;
    assert_code(&run, 0);
    assert!(run.stdout.contains("PAUSED"), "{run:#?}");

    let run = agent.hazel("viewer", &["status"]).await;
    assert_code(&run, 0);
    assert!(run.stdout.contains("engine:      ready"), "{run:#?}");
    assert!(run.stdout.contains("maintenance"), "{run:#?}");

    let run = agent.hazel("admin", &["resume", "--json"]).await;
    assert_code(&run, 0);
    assert_eq!(run.json()["paused"], false);
    let run = agent.hazel("viewer", &["status", "--json"]).await;
    assert_eq!(run.json()["kill_switch"]["paused"], false);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_viewer_token_reads_but_is_refused_a_change_with_exit_4() {
    let agent = Agent::start().await;
    let run = hazel(
        &[
            "token",
            "--role",
            "viewer",
            "--subject",
            "alice",
            "--ttl",
            "1h",
        ],
        &[("HAZEL_JWT_KEY", JWT_KEY)],
    )
    .await;
    assert_code(&run, 0);
    let viewer = run.stdout.trim().to_string();
    assert_eq!(viewer.split('.').count(), 3, "a JWT: {run:#?}");

    let env = [
        ("HAZEL_URL", agent.url.as_str()),
        ("HAZEL_TOKEN", viewer.as_str()),
    ];
    assert_code(&hazel(&["policy", "list"], &env).await, 0);
    let run = hazel(&["pause"], &env).await;
    assert_code(&run, 4);
    assert!(run.stderr.contains("auth.forbidden"), "{run:#?}");
    assert!(!run.stderr.contains(&viewer), "the token is never printed");

    let run = hazel(&["hosts", "--url", &agent.url], &[]).await;
    assert_code(&run, 4);
    assert!(run.stderr.contains("hazel token"), "{run:#?}");

    let run = hazel(&["token", "--role", "admin", "--subject", "x"], &[]).await;
    assert_code(&run, 2);
    assert!(run.stderr.contains("HAZEL_JWT_KEY"), "{run:#?}");
    agent.stop().await;
}

#[tokio::test]
async fn an_unreachable_agent_exits_3_and_names_the_url() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let run = hazel(&["policy", "list", "--url", &url, "--token", "t"], &[]).await;
    assert_code(&run, 3);
    assert!(run.stderr.contains(&url), "{run:#?}");
    assert!(run.stderr.contains("hazel serve"), "{run:#?}");
}

#[tokio::test]
async fn the_help_documents_the_exit_codes() {
    let run = hazel(&["--help"], &[]).await;
    assert_code(&run, 0);
    for line in [
        "3  the agent cannot be reached",
        "4  authentication refused",
    ] {
        assert!(run.stdout.contains(line), "{run:#?}");
    }
    let run = hazel(&["policy", "apply", "--help"], &[]).await;
    assert_code(&run, 0);
    assert!(run.stdout.contains("Exit codes:"), "{run:#?}");
}

/// `text` with what changes from run to run replaced: every UUID by
/// `<uuid>`, its 8-character short form by `<id>`, and every time printed
/// to the second (`2026-12-07 10:30:05`, `Z` or not) by `<time>`.
fn normalized(text: &str, ids: &[&str]) -> String {
    let mut text = text.to_string();
    for id in ids {
        text = text.replace(id, "<uuid>").replace(&id[..8], "<id>");
    }
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    // A printed time: dddd-dd-dd dd:dd:dd with an optional Z.
    let shape = "0000-00-00 00:00:00";
    while i < chars.len() {
        let fits = i + shape.len() <= chars.len()
            && shape.chars().zip(&chars[i..]).all(|(s, c)| match s {
                '0' => c.is_ascii_digit(),
                other => other == *c,
            });
        if fits {
            out.push_str("<time>");
            i += shape.len();
            if chars.get(i) == Some(&'Z') {
                i += 1;
            }
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    // Full UUIDs nobody named (correlation, transcript ids).
    let mut result = String::new();
    let mut rest = out.as_str();
    while let Some((at, len)) = find_uuid(rest) {
        result.push_str(&rest[..at]);
        result.push_str("<uuid>");
        rest = &rest[at + len..];
    }
    result.push_str(rest);
    result
}

fn find_uuid(text: &str) -> Option<(usize, usize)> {
    (0..text.len().saturating_sub(35))
        .filter(|&i| text.is_char_boundary(i) && text.is_char_boundary(i + 36))
        .find(|&i| uuid::Uuid::parse_str(&text[i..i + 36]).is_ok())
        .map(|i| (i, 36))
}

/// The simulator's vm 104 shut down on battery, held by a condition the
/// injected event cannot satisfy (no runtime is known for the UPS), as
/// example 02 is with a UPS that reports no `battery.runtime`.
fn held_policy(name: &str) -> String {
    policy(name, 90).replace(
        "targets:",
        "conditions:\n  all:\n    - { scope: ups, field: runtime_minutes, op: \">=\", value: 5 }\ntargets:",
    )
}

/// Waits until `hazel audit --json` with `args` lists a record.
async fn first_audit(agent: &Agent, args: &[&str]) -> Value {
    for _ in 0..100 {
        let run = agent
            .hazel("viewer", &[&["audit", "--json"][..], args].concat())
            .await;
        assert_code(&run, 0);
        if let Some(line) = run.stdout.lines().next() {
            return serde_json::from_str(line).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no audit record for {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_audit_say_why_a_policy_did_not_act() {
    let agent = Agent::start().await;
    let file = agent.file("held.yaml", &held_policy("stop app04 on battery"));
    assert_code(&agent.hazel("admin", &["policy", "apply", &file]).await, 0);
    assert_code(
        &agent
            .hazel("admin", &["policy", "enable", "stop app04 on battery"])
            .await,
        0,
    );
    let id = agent
        .hazel(
            "viewer",
            &["policy", "show", "stop app04 on battery", "--json"],
        )
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Before any event: nothing decided, and the command says what to try.
    let run = agent
        .hazel("viewer", &["explain", "stop app04 on battery"])
        .await;
    assert_code(&run, 0);
    expect_test::expect![[r#"
        policy "stop app04 on battery" (<id>), version 1, status enabled
        no decision recorded: no event its trigger waits for (ups.state) has reached it
        try: hazel explain <id> --event FILE   (what it would decide on an event now)
    "#]]
    .assert_eq(&normalized(&run.stdout, &[&id]));

    let event = agent.file("event.json", EVENT);
    assert_code(
        &agent.hazel("operator", &["events", "send", &event]).await,
        0,
    );
    first_audit(&agent, &["--kind", "engine.evaluated"]).await;

    let run = agent
        .hazel("viewer", &["explain", &id[..8], "--last"])
        .await;
    assert_code(&run, 0);
    expect_test::expect![[r#"
        policy "stop app04 on battery" (<id>), version 1, status enabled
        last decision: <time> (engine.evaluated, correlation <uuid>)
        result:       engine.not_matched
        trigger:      fired by trigger 0 (ups.state = on_battery)
                      trigger 0 (ups.state = on_battery): ups1 entered on_battery
        conditions:   condition 1: ups.runtime_minutes >= 5 cannot be evaluated: ups1 reports no runtime_minutes
    "#]]
    .assert_eq(&normalized(&run.stdout, &[&id]));

    let run = agent
        .hazel("viewer", &["audit", "--policy", "stop app04 on battery"])
        .await;
    assert_code(&run, 0);
    let rows: Vec<&str> = run.stdout.lines().collect();
    assert!(rows[0].starts_with("TIME "), "{run:#?}");
    let evaluated = rows
        .iter()
        .find(|r| r.contains("engine.evaluated"))
        .unwrap_or_else(|| panic!("{run:#?}"));
    assert!(evaluated.contains("stop app04 on battery"), "{evaluated}");
    assert!(
        evaluated.contains("engine.not_matched: condition 1"),
        "{evaluated}"
    );
    assert!(rows
        .iter()
        .any(|r| r.contains("policy.created") && r.contains("test-admin")));

    let run = agent
        .hazel(
            "viewer",
            &["audit", "--kind", "policy.enabled", "--since", "1h"],
        )
        .await;
    assert_code(&run, 0);
    assert!(run.stdout.contains("1 record(s)"), "{run:#?}");
    let run = agent
        .hazel("viewer", &["audit", "--since", "yesterday"])
        .await;
    assert_code(&run, 2);
    assert!(run.stderr.contains("--since"), "{run:#?}");

    // The same question about an event not sent: simulated, nothing runs.
    // ups1 is on battery already, so the same event enters nothing...
    let run = agent
        .hazel(
            "operator",
            &["explain", "stop app04 on battery", "--event", &event],
        )
        .await;
    assert_code(&run, 0);
    let text = normalized(&run.stdout, &[&id]);
    assert!(
        text.contains("on this event now (simulated, transcript <uuid>):"),
        "{text}"
    );
    assert!(
        text.contains("ups1 is already on_battery: staying is not entering"),
        "{text}"
    );
    // ... while another UPS entering it fires the trigger, held again.
    let ups2 = agent.file("ups2.json", &EVENT.replace("ups1", "ups2"));
    let run = agent
        .hazel(
            "operator",
            &["explain", "stop app04 on battery", "--event", &ups2],
        )
        .await;
    assert_code(&run, 0);
    expect_test::expect![[r#"
        policy "stop app04 on battery" (<id>), version 1, status enabled
        on this event now (simulated, transcript <uuid>):
        result:       engine.not_matched
        trigger:      fired by trigger 0 (ups.state = on_battery)
                      trigger 0 (ups.state = on_battery): ups2 entered on_battery
        conditions:   condition 1: ups.runtime_minutes >= 5 cannot be evaluated: ups2 reports no runtime_minutes
    "#]]
    .assert_eq(&normalized(&run.stdout, &[&id]));

    // An event of a kind the trigger does not wait for.
    let hook = agent.file(
        "hook.json",
        r#"{"kind": "webhook.custom", "subject": {"kind": "integration", "id": "deploy"}, "attrs": {"name": "deploy"}}"#,
    );
    let run = agent
        .hazel(
            "operator",
            &["explain", "stop app04 on battery", "--event", &hook],
        )
        .await;
    assert_code(&run, 0);
    assert!(
        run.stdout.contains("this event does not reach the policy: its trigger waits for ups.state, the event is webhook.custom on deploy"),
        "{run:#?}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_show_lists_a_hosts_inventory_and_transcript_opens_a_dry_run() {
    let agent = Agent::start().await;
    let run = agent
        .hazel("operator", &["hosts", "show", "pve-01", "--refresh"])
        .await;
    assert_code(&run, 0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        normalized(lines[0], &[]).starts_with("host pve-01: inventory at <time> (fresh),"),
        "{run:#?}"
    );
    assert!(lines[1].starts_with("TARGET"), "{run:#?}");
    let app04 = lines
        .iter()
        .find(|l| l.starts_with("vm:104 "))
        .unwrap_or_else(|| panic!("{run:#?}"));
    assert!(
        app04.contains("app04") && app04.contains("running"),
        "{app04}"
    );
    assert!(app04.contains("tier=low"), "{app04}");
    assert!(
        lines.iter().any(|l| l.starts_with("host:pve1 ")),
        "{run:#?}"
    );

    let run = agent.hazel("viewer", &["hosts"]).await;
    assert_code(&run, 0);
    let row = run.stdout.lines().nth(1).unwrap();
    assert!(row.contains("2 ct, 2 host, 8 vm"), "targets by type: {row}");

    let run = agent.hazel("viewer", &["hosts", "show", "nope"]).await;
    assert_code(&run, 1);

    let file = agent.file("p.yaml", &policy("gated", 90));
    assert_code(&agent.hazel("admin", &["policy", "apply", &file]).await, 0);
    let run = agent
        .hazel("operator", &["dry-run", "gated", "--json"])
        .await;
    let transcript = run.json()["transcript_id"].as_str().unwrap().to_string();
    let run = agent.hazel("viewer", &["transcript", &transcript]).await;
    assert_code(&run, 0);
    assert!(
        run.stdout.starts_with("dry-run of gated: severity info"),
        "{run:#?}"
    );
    assert!(run.stdout.contains("vm:104"), "{run:#?}");
    let run = agent.hazel("viewer", &["transcript", "nope"]).await;
    assert_code(&run, 2);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_says_what_it_updated_refuses_an_identity_change_and_says_why_it_is_not_enabled() {
    let agent = Agent::start().await;
    let file = agent.file("p.yaml", &policy("shed", 90));
    let run = agent.hazel("admin", &["policy", "apply", &file]).await;
    assert_code(&run, 0);
    let id = agent
        .hazel("viewer", &["policy", "show", "shed", "--json"])
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    expect_test::expect![[r#"
        created   <id>  "shed" (version 1, status disabled)
                  not enabled: the spec says `enabled: false`; `hazel policy enable` it when ready
    "#]]
    .assert_eq(&normalized(&run.stdout, &[&id]));

    std::fs::write(&file, policy("shed", 120)).unwrap();
    let run = agent.hazel("admin", &["policy", "apply", &file]).await;
    assert_code(&run, 0);
    expect_test::expect![[r#"
        updated   <id>  "shed" (version 2, status disabled)
                  an existing policy was updated, from version 1; changed: actions
                  not enabled: the spec says `enabled: false`; `hazel policy enable` it when ready
    "#]]
    .assert_eq(&normalized(&run.stdout, &[&id]));

    // The same name on another trigger is another policy: refused.
    std::fs::write(&file, policy("shed", 120).replace("on_battery", "on_mains")).unwrap();
    let run = agent.hazel("admin", &["policy", "apply", &file]).await;
    assert_code(&run, 1);
    assert!(run.stdout.is_empty(), "{run:#?}");
    assert!(
        run.stderr.contains("this would turn the stored policy \"shed\" into a different one (trigger ups.state = on_battery -> ups.state = on_mains)"),
        "{run:#?}"
    );
    std::fs::write(
        &file,
        policy("shed", 120).replace("mode: list, value: '104'", "mode: range, value: '104-105'"),
    )
    .unwrap();
    let run = agent.hazel("admin", &["policy", "apply", &file]).await;
    assert_code(&run, 1);
    assert!(
        run.stderr.contains("selector mode list -> range"),
        "{run:#?}"
    );
    let run = agent
        .hazel("admin", &["policy", "apply", &file, "--replace"])
        .await;
    assert_code(&run, 0);
    assert!(run.stdout.starts_with("updated"), "{run:#?}");
    assert!(run.stdout.contains("changed: targets"), "{run:#?}");

    // Asked enabled, kept disabled by the dry-run gate: exit 1 and why.
    let locked = agent.file(
        "locked.yaml",
        &policy_with_locked_vm("locked").replace("enabled: false", "enabled: true"),
    );
    let run = agent.hazel("admin", &["policy", "apply", &locked]).await;
    assert_code(&run, 1);
    assert!(run.stdout.contains("status disabled"), "{run:#?}");
    assert!(
        run.stdout.contains(
            "not enabled: the spec asks `enabled: true` but its dry-run has severity error"
        ),
        "{run:#?}"
    );
    assert!(run.stdout.contains("vm:106: VM is locked"), "{run:#?}");
    assert!(
        run.stdout.contains("transcript: hazel transcript "),
        "{run:#?}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_follow_prints_records_as_they_are_written() {
    use tokio::io::AsyncBufReadExt;
    let agent = Agent::start().await;
    let token = token("viewer");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hazel"))
        .args(["audit", "--follow", "--url", &agent.url, "--token", &token])
        .env_remove("HAZEL_URL")
        .env_remove("HAZEL_TOKEN")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the hazel binary runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let header = lines.next_line().await.unwrap().unwrap();
    assert!(header.starts_with("TIME"), "{header}");

    let file = agent.file("p.yaml", &policy("followed", 90));
    assert_code(&agent.hazel("admin", &["policy", "apply", &file]).await, 0);
    // A failsafe against a hang, not a timing assertion.
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("a followed record arrives")
        .unwrap()
        .unwrap();
    assert!(line.contains("policy.created"), "{line}");
    assert!(line.contains("followed"), "{line}");
    child.kill().await.unwrap();
    agent.stop().await;
}
