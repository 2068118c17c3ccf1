//! `hazel demo`: the walkthrough's facts (which VMs the outage stopped,
//! which stayed off, that the inverse started exactly those, the ledger of
//! both policies, the dry-run's fresh inventory), the listen-port fallback,
//! a rerun on a kept data dir, and the real binary with `--once` and until
//! SIGINT. Waits poll with a deadline; nothing asserts on timing.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agent::demo::{self, DemoOptions, DemoReport};
use serde_json::{json, Value};

fn options(listen: SocketAddr) -> DemoOptions {
    DemoOptions {
        once: true,
        listen,
        for_delay: Duration::from_secs(1),
        ..DemoOptions::default()
    }
}

fn loopback_any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn run(options: DemoOptions) -> (DemoReport, String) {
    let mut out = Vec::new();
    let report = demo::run(options, &mut out)
        .await
        .expect("the demo runs on a fresh machine");
    (report, String::from_utf8(out).expect("utf-8 output"))
}

/// The targets a ledger run changed, sorted.
fn changed(run: &Value) -> Vec<String> {
    let mut out: Vec<String> = run["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["changed"] == json!(true) && r["ok"] == json!(true))
        .map(|r| r["target"].as_str().unwrap_or_default().to_string())
        .collect();
    out.sort();
    out
}

fn assert_walkthrough(report: &DemoReport, out: &str) {
    let failed: Vec<_> = report.checks.iter().filter(|c| !c.ok).collect();
    assert!(report.ok, "failed checks {failed:?}\n{out}");
    assert_eq!(report.running_low_tier, vec![104, 106], "{out}");
    assert_eq!(report.already_off, vec![105], "{out}");
    assert_eq!(report.stopped, vec![104, 106], "{out}");
    assert_eq!(report.started, report.stopped, "{out}");
    assert_eq!(report.off_at_end, vec![105], "{out}");

    // The dry-run refreshed the inventory and saw 105 as a no-change.
    assert_eq!(report.dry_run["used_inventory"]["refreshed"], json!(true));
    assert!(out.contains("used_inventory.refreshed: true"), "{out}");
    assert!(out.contains("already stopped: no change"), "{out}");

    // The inverse: flipped trigger, ledger selector on the forward policy.
    let forward_id = report.forward_id.expect("the forward policy is stored");
    let inverse = &report.inverse["spec_inverse"];
    assert_eq!(
        inverse["trigger_group"]["triggers"][0]["equals"],
        json!("on_mains")
    );
    assert_eq!(inverse["targets"]["selector"]["mode"], json!("ledger"));
    assert_eq!(
        inverse["targets"]["selector"]["value"],
        json!(forward_id.to_string())
    );
    assert!(report.inverse_id.is_some());

    // The ledgers of both policies: the outage changed 104 and 106 (105 was
    // skipped as already stopped), the inverse started exactly those.
    let forward_run = report
        .forward_ledger
        .first()
        .expect("the forward policy has a ledger entry");
    let inverse_run = report
        .inverse_ledger
        .first()
        .expect("the inverse has a ledger entry");
    assert_eq!(changed(forward_run), vec!["vm:104", "vm:106"]);
    assert_eq!(changed(inverse_run), vec!["vm:104", "vm:106"]);
    assert!(forward_run["results"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["target"] == json!("vm:105") && r["changed"] == json!(false)));
    assert!(!inverse_run["results"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["target"] == json!("vm:105")));

    for line in [
        "[1/9] The setup",
        "[9/9] The ledger of both policies",
        "the UPS is simulated",
        "docs/nut.md",
        "checks passed",
        "Run `hazel demo` without --once to keep the API up",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    // With --once the agent stops with the run: no token to a dead API,
    // no commands to try against it.
    assert!(!report.token.is_empty());
    assert!(!out.contains(&report.token), "{out}");
    assert!(!out.contains("another terminal"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_stops_the_running_low_tier_vms_and_the_inverse_starts_exactly_those() {
    // The default port may be taken on a shared machine: take a port and
    // keep it busy, so the demo must fall back to a free one and say so.
    let busy = std::net::TcpListener::bind(loopback_any()).unwrap();
    let taken = busy.local_addr().unwrap();
    let (report, out) = run(options(taken)).await;
    assert_walkthrough(&report, &out);
    assert!(report.fell_back, "{out}");
    assert!(out.contains(&format!("{taken} is taken")), "{out}");
    assert_ne!(report.url, format!("http://{taken}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_a_kept_data_dir_replaces_the_earlier_demo_policies() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let (report, out) = run(DemoOptions {
            data_dir: Some(dir.path().to_path_buf()),
            ..options(loopback_any())
        })
        .await;
        assert_walkthrough(&report, &out);
        assert!(!report.fell_back);
        if round == 1 {
            assert!(out.contains("from an earlier demo; replacing it"), "{out}");
        }
    }
    assert!(dir.path().join("hazel.db").exists());
}

#[test]
fn hazel_demo_once_exits_0_and_prints_the_walkthrough() {
    let output = Command::new(env!("CARGO_BIN_EXE_hazel"))
        .args(["demo", "--once", "--listen", "127.0.0.1:0"])
        .output()
        .expect("the binary runs");
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    for line in [
        "Hazel demo: a power cut, end to end",
        "Host pve-01: a simulated Proxmox VE cluster",
        "used_inventory.refreshed: true",
        "vm:104   running -> stopped",
        "vm:105   already stopped: no change",
        "trigger: ups.state on_mains (flipped from on_battery)",
        "outage policy: status enabled",
        "inverse: status enabled",
        "countdown: 5s left",
        "ok   the outage stopped exactly vm:104, vm:106",
        "ok   the inverse started exactly the VMs the outage stopped: vm:104, vm:106",
        "ok   vm:105 was off before the outage and stays off",
        "ok   the ledger holds a run of each policy",
        "checks passed",
        "--once: stopping now.",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    assert!(!out.contains("FAIL"), "{out}");
}

#[cfg(unix)]
#[tokio::test]
async fn hazel_demo_serves_the_api_until_sigint() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hazel"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary runs");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    let (mut url, mut token, mut password) = (None, None, None);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix("The API is running at ") {
                    url = Some(rest.trim().to_string());
                }
                if let Some(rest) = line.trim().strip_prefix("export ") {
                    token = rest
                        .split_whitespace()
                        .find_map(|kv| kv.strip_prefix("HAZEL_TOKEN="))
                        .map(str::to_string);
                }
                if let Some(rest) = line.split(" with password ").nth(1) {
                    password = rest.split_whitespace().next().map(str::to_string);
                }
                let ready = line.starts_with("Press Ctrl-C");
                seen.push(line);
                if ready {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let transcript = seen.join("\n");
    let url = url.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("no API URL in\n{transcript}")
    });
    let token = token.expect("a token in the output");

    // The API answers with the session's token and lists both policies.
    let http = reqwest::Client::new();
    let policies: Value = http
        .get(format!("{url}/api/policies"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("the API is up")
        .json()
        .await
        .unwrap();
    assert_eq!(policies["items"].as_array().map(Vec::len), Some(2));

    // The printed console account signs in, and its dashboard shows the
    // walkthrough's runs.
    let password = password.unwrap_or_else(|| panic!("no console password in\n{transcript}"));
    assert!(
        transcript.contains(&format!("Web console: {url}/ - sign in as demo")),
        "{transcript}"
    );
    let signed_in = http
        .post(format!("{url}/login"))
        .header("X-Hazel-CSRF", "1")
        .form(&[("username", "demo"), ("password", password.as_str())])
        .send()
        .await
        .expect("the console answers");
    assert!(signed_in.status().is_success(), "{}", signed_in.status());
    let cookie = signed_in
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.split(';').next().map(str::to_string))
        .expect("a session cookie");
    let dashboard = http
        .get(format!("{url}/"))
        .header(reqwest::header::COOKIE, cookie)
        .send()
        .await
        .expect("the dashboard answers")
        .text()
        .await
        .unwrap();
    assert!(dashboard.contains("demo (admin)"), "{dashboard}");
    assert!(
        dashboard.contains(agent::demo::FORWARD_NAME),
        "the walkthrough's runs: {dashboard}"
    );

    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("hazel demo did not stop after SIGINT\n{transcript}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "{transcript}");
    let mut rest = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        rest.push(line);
    }
    assert!(
        rest.iter().any(|l| l.starts_with("Stopping:")),
        "{}",
        rest.join("\n")
    );
}
