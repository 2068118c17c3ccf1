//! Faults of the data directory and its disk (SPEC §10, §12;
//! docs/operations.md "Backups and damage"): a database that is empty,
//! missing, replaced, damaged or behind its marker refuses to start with what
//! to restore; `hazel backup` and `hazel restore`; SIGKILL in a flood of
//! saves; a read-only data directory; a full disk.
//!
//! The read-only and full-disk tests mount a small tmpfs: they need root and
//! a working `mount` (a container needs `CAP_SYS_ADMIN`). Without them they
//! fail and say so; they never skip. The full disk is a real one (the tmpfs
//! filled with a file), not an injected store failure.

use std::io::{Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::engine::store::EngineStore;
use agent::service::config::Config;
use agent::service::{Actor, OpenOptions, Role, Service, ServiceError};
use agent::store::{open_data_dir, DataDirError, SqliteConfig, SqliteStore, MARKER_FILE};

fn config(dir: &Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        shutdown_grace: Duration::from_secs(1),
        ..Config::default()
    }
}

async fn open(dir: &Path) -> Result<Service, ServiceError> {
    Service::open(
        config(dir),
        OpenOptions {
            discovery: false,
            ..OpenOptions::default()
        },
    )
    .await
}

/// Opens, writes one record, shuts down and drops the service: an
/// initialised data directory with a marker.
async fn initialise(dir: &Path) {
    let service = open(dir).await.expect("a fresh data dir opens");
    pause(&service).await;
    service.shutdown().await;
    drop(service);
    wait_unlocked(dir);
}

async fn pause(service: &Service) {
    let admin = Actor {
        subject: "test".into(),
        role: Role::Admin,
        correlation_id: None,
    };
    service
        .set_kill_switch(&admin, true, Some("test".into()))
        .await
        .expect("pause");
}

/// The engine's start may finish after `open` returns on a loaded machine.
async fn wait_ready(service: &Service) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = service.readiness().await {
        assert!(Instant::now() < deadline, "never ready: {}", e.message);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The engine thread lets go of the store shortly after shutdown.
fn wait_unlocked(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match agent::store::lock_dir(dir) {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => panic!("still locked: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn refusal(result: Result<Service, ServiceError>) -> DataDirError {
    match result {
        Err(ServiceError::DataDir(e)) => e,
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("started on a damaged data dir"),
    }
}

fn remove_wal(dir: &Path) {
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("hazel.db{suffix}")));
    }
}

#[tokio::test]
async fn a_fresh_data_dir_gets_a_database_and_a_marker_with_its_id_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    initialise(dir.path()).await;
    let marker = agent::store::read_marker(&dir.path().join(MARKER_FILE))
        .unwrap()
        .expect("a marker");
    let service = open(dir.path()).await.expect("reopens");
    assert!(service.kill_switch().await.unwrap().paused);
    service.shutdown().await;
    drop(service);
    wait_unlocked(dir.path());
    let store = SqliteStore::open(dir.path().join("hazel.db")).unwrap();
    assert_eq!(store.identity().unwrap().db_id, marker.db_id);
}

#[tokio::test]
async fn an_empty_database_under_an_initialised_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    initialise(dir.path()).await;
    remove_wal(dir.path());
    std::fs::File::create(dir.path().join("hazel.db")).unwrap();
    let e = refusal(open(dir.path()).await);
    assert!(
        matches!(e, DataDirError::Empty { marked: true, .. }),
        "{e:?}"
    );
    let message = e.to_string();
    assert!(message.contains("0 bytes"), "{message}");
    assert!(message.contains("hazel restore BACKUP"), "{message}");
    // Still empty: nothing was initialised over it.
    assert_eq!(
        std::fs::metadata(dir.path().join("hazel.db"))
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn an_empty_database_without_a_marker_refuses_too() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::File::create(dir.path().join("hazel.db")).unwrap();
    let e = refusal(open(dir.path()).await);
    assert!(
        matches!(e, DataDirError::Empty { marked: false, .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_missing_database_under_an_initialised_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    initialise(dir.path()).await;
    remove_wal(dir.path());
    std::fs::remove_file(dir.path().join("hazel.db")).unwrap();
    let e = refusal(open(dir.path()).await);
    assert!(matches!(e, DataDirError::Missing { .. }), "{e:?}");
    assert!(e.to_string().contains("hazel restore BACKUP"), "{e}");
    assert!(!dir.path().join("hazel.db").exists(), "not recreated");
}

#[tokio::test]
async fn a_database_replaced_by_another_agents_refuses_to_start() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    initialise(ours.path()).await;
    initialise(theirs.path()).await;
    remove_wal(ours.path());
    std::fs::copy(theirs.path().join("hazel.db"), ours.path().join("hazel.db")).unwrap();
    let e = refusal(open(ours.path()).await);
    assert!(matches!(e, DataDirError::Replaced { .. }), "{e:?}");
    assert!(e.to_string().contains("another agent's"), "{e}");
}

#[tokio::test]
async fn a_database_with_garbage_pages_refuses_to_start_through_quick_check() {
    let dir = tempfile::tempdir().unwrap();
    initialise(dir.path()).await;
    remove_wal(dir.path());
    let db = dir.path().join("hazel.db");
    // Pages 3 to 12 (the schema's tables and indexes), page 1 (the header
    // and the schema) intact: only a check of the pages notices.
    let mut file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.seek(SeekFrom::Start(2 * 4096)).unwrap();
    let garbage: Vec<u8> = (0..10 * 4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    file.write_all(&garbage).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let e = refusal(open(dir.path()).await);
    assert!(matches!(e, DataDirError::Damaged { .. }), "{e:?}");
    assert!(e.to_string().contains("hazel restore BACKUP"), "{e}");
}

#[test]
fn a_lost_wal_with_acknowledged_commits_is_detected_and_a_kept_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_data_dir(dir.path(), &SqliteConfig::default()).unwrap();
    store
        .record_fire(uuid::Uuid::from_u128(1), chrono::Utc::now())
        .unwrap();
    // The agent "crashes" here: the files as they are on disk, copied while
    // the store is open (the commit is in the -wal file only).
    let crashed = |with_wal: bool| {
        let copy = tempfile::tempdir().unwrap();
        let mut names = vec!["hazel.db", MARKER_FILE];
        if with_wal {
            names.push("hazel.db-wal");
        }
        for name in names {
            std::fs::copy(dir.path().join(name), copy.path().join(name)).unwrap();
        }
        copy
    };
    let kept = crashed(true);
    let lost = crashed(false);
    drop(store);

    let reopened = open_data_dir(kept.path(), &SqliteConfig::default()).expect("WAL kept");
    assert!(reopened
        .window_state(uuid::Uuid::from_u128(1))
        .unwrap()
        .last_fired_at
        .is_some());
    drop(reopened);
    let e = open_data_dir(lost.path(), &SqliteConfig::default()).expect_err("WAL lost");
    assert!(
        matches!(
            e,
            DataDirError::Behind {
                found: 0,
                expected: 1,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("-wal file was deleted"), "{e}");
}

#[test]
fn a_marker_that_cannot_be_updated_is_counted_and_the_commit_stands() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_data_dir(dir.path(), &SqliteConfig::default()).unwrap();
    assert_eq!(store.marker_write_failures(), 0);
    // The marker's place is taken by a directory with something in it, so
    // the next update (after a checkpoint) cannot be renamed over it.
    let marker = dir.path().join(MARKER_FILE);
    std::fs::remove_file(&marker).unwrap();
    std::fs::create_dir(&marker).unwrap();
    std::fs::write(marker.join("keep"), b"x").unwrap();
    store.checkpoint().unwrap();
    let at = chrono::Utc::now();
    store
        .record_fire(uuid::Uuid::from_u128(1), at)
        .expect("the commit stands although the marker cannot follow");
    assert_eq!(store.marker_write_failures(), 1);
    assert_eq!(
        store
            .window_state(uuid::Uuid::from_u128(1))
            .unwrap()
            .last_fired_at,
        Some(at)
    );
}

#[test]
fn user_add_refuses_to_recreate_a_database_the_directory_lost() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_data_dir(dir.path(), &SqliteConfig::default()).unwrap());
    std::fs::remove_file(dir.path().join("hazel.db")).unwrap();
    let config = dir.path().join("hazel.yaml");
    std::fs::write(&config, format!("data_dir: {}\n", dir.path().display())).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hazel"))
        .args(["user", "add", "alice", "--role", "admin", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long enough password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("is missing"), "{err}");
    assert!(
        !dir.path().join("hazel.db").exists(),
        "no empty database made"
    );
    // So the next start still says what happened.
    let e = open_data_dir(dir.path(), &SqliteConfig::default()).expect_err("missing");
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn commits_after_a_checkpoint_bump_the_generation_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_data_dir(dir.path(), &SqliteConfig::default()).unwrap();
    let policy = uuid::Uuid::from_u128(1);
    store.record_fire(policy, chrono::Utc::now()).unwrap();
    store.record_fire(policy, chrono::Utc::now()).unwrap();
    assert_eq!(
        store.identity().unwrap().generation,
        1,
        "one bump per checkpoint"
    );
    store.checkpoint().unwrap();
    store.record_fire(policy, chrono::Utc::now()).unwrap();
    assert_eq!(store.identity().unwrap().generation, 2);
    let marker = agent::store::read_marker(&dir.path().join(MARKER_FILE))
        .unwrap()
        .unwrap();
    assert_eq!(marker.generation, 2);
    // The commit after the checkpoint lives in the WAL only: without it,
    // the file is one generation behind.
    let lost = tempfile::tempdir().unwrap();
    for name in ["hazel.db", MARKER_FILE] {
        std::fs::copy(dir.path().join(name), lost.path().join(name)).unwrap();
    }
    drop(store);
    let e = open_data_dir(lost.path(), &SqliteConfig::default()).expect_err("WAL lost");
    assert!(
        matches!(
            e,
            DataDirError::Behind {
                found: 1,
                expected: 2,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_database_from_before_markers_is_adopted_with_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let id = SqliteStore::open(dir.path().join("hazel.db"))
        .unwrap()
        .identity()
        .unwrap()
        .db_id;
    assert!(!dir.path().join(MARKER_FILE).exists());
    let store = open_data_dir(dir.path(), &SqliteConfig::default()).expect("adopted");
    assert_eq!(store.identity().unwrap().db_id, id);
    let marker = agent::store::read_marker(&dir.path().join(MARKER_FILE))
        .unwrap()
        .expect("written");
    assert_eq!(marker.db_id, id);
}

#[tokio::test]
async fn a_truncated_database_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    initialise(dir.path()).await;
    remove_wal(dir.path());
    let db = dir.path().join("hazel.db");
    let size = std::fs::metadata(&db).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    let e = refusal(open(dir.path()).await);
    assert!(matches!(e, DataDirError::Truncated { .. }), "{e:?}");
    assert!(e.to_string().contains("hazel restore BACKUP"), "{e}");
}

#[test]
fn a_second_agent_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open_data_dir(dir.path(), &SqliteConfig::default()).unwrap();
    let e = open_data_dir(dir.path(), &SqliteConfig::default()).expect_err("locked");
    assert!(matches!(e, DataDirError::Locked { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains(&format!("pid {}", std::process::id())),
        "{e}"
    );
}

// ---- the real binary -------------------------------------------------------

fn hazel(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hazel"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the hazel binary runs")
}

/// A site directory: `hazel.yaml` with a declared (unreachable) Proxmox
/// host, a JWT key, the data directory under `data/`.
struct Site {
    dir: tempfile::TempDir,
    port: u16,
}

impl Site {
    fn new() -> Site {
        Site::with_data_dir(Path::new("./data"))
    }

    fn with_data_dir(data_dir: &Path) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(dir.path().join("jwt.key"), "k".repeat(40)).unwrap();
        std::fs::write(
            dir.path().join("hazel.yaml"),
            format!(
                "listen: 127.0.0.1:{port}
data_dir: {data_dir}
auth:
  jwt_key_file: ./jwt.key
api:
  rate_per_s: 100000
  rate_burst: 100000
hosts:
  - id: pve-01
    plugin: proxmox.ve
    connection:
      host: 127.0.0.1
      port: 1
      node: pve-01
      token_id: hazel@pve!agent
      token_secret: 00000000-0000-0000-0000-000000000000
",
                data_dir = data_dir.display()
            ),
        )
        .unwrap();
        Site { dir, port }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory of [`Site::new`].
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn token(&self) -> String {
        let out = hazel(
            &[
                "token",
                "--role",
                "admin",
                "--subject",
                "t",
                "--config",
                "hazel.yaml",
            ],
            self.path(),
        );
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Starts `hazel serve` and waits until `/readyz` answers 200.
    async fn serve(&self) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hazel"))
            .args(["serve", "--config", "hazel.yaml"])
            .current_dir(self.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the hazel binary runs");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("hazel serve exited: {status}");
            }
            if let Ok(r) = http.get(format!("{}/readyz", self.url())).send().await {
                if r.status() == 200 {
                    return Agent(child);
                }
            }
            assert!(Instant::now() < deadline, "hazel serve never got ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A running `hazel serve`, killed when dropped (a failed test leaves no
/// agent behind).
struct Agent(Child);

impl Agent {
    /// SIGKILL, as a power cut or the OOM killer would.
    fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    /// SIGTERM (a clean stop, the binary's own signal path), then wait.
    fn stop(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        self.0.wait().unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `hazel serve` where it must refuse to start: its output, or a
/// panic (after killing it) when it starts instead.
fn serve_refused(dir: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hazel"))
        .args(["serve", "--config", "hazel.yaml"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the hazel binary runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hazel serve started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn policy(name: &str) -> String {
    serde_json::json!({
        "version": 1,
        "name": name,
        "enabled": false,
        // The name is not part of the hash (SPEC §3): the trigger is.
        "trigger_group": {"triggers": [{"type": "webhook.custom", "name": name}]},
        "targets": {"host_id": "pve-01", "target_type": "vm",
                    "selector": {"mode": "list", "value": "104"}},
        "actions": [{"capability_id": "proxmox.vm", "verb": "shutdown",
                     "params": {"grace_s": 10}}]
    })
    .to_string()
}

fn stored_policy_ids(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT id FROM policies").unwrap();
    stmt.query_map([], |row| row.get(0))
        .unwrap()
        .collect::<rusqlite::Result<Vec<String>>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_in_a_flood_of_saves_loses_no_acknowledged_save_and_a_lost_wal_refuses() {
    let site = Site::new();
    let mut child = site.serve().await;
    let token = site.token();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (acked, stop, url, token) = (acked.clone(), stop.clone(), site.url(), token.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sent = http
                    .post(format!("{url}/api/policies"))
                    .bearer_auth(&token)
                    .header("X-Hazel-CSRF", "1")
                    .header("content-type", "application/json")
                    .body(policy(&format!("flood-{worker}-{n}")))
                    .send()
                    .await;
                let Ok(answer) = sent else { break };
                if answer.status() == 201 {
                    let body: serde_json::Value = answer.json().await.unwrap();
                    acked
                        .lock()
                        .unwrap()
                        .push(body["id"].as_str().unwrap().to_string());
                }
            }
        }));
    }
    // Kill mid-flood, once a few hundred saves are acknowledged.
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "the flood stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    // The same files without the -wal file, as a lost WAL leaves them.
    let lost = Site::new();
    std::fs::create_dir(lost.data()).unwrap();
    for name in ["hazel.db", MARKER_FILE] {
        std::fs::copy(site.data().join(name), lost.data().join(name)).unwrap();
    }

    site.serve().await.stop();
    let stored = stored_policy_ids(&site.data().join("hazel.db"));
    let missing: Vec<_> = acked.iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged saves lost: {missing:?}",
        missing.len(),
        acked.len()
    );

    let (code, stderr) = serve_refused(lost.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("commits acknowledged after the last checkpoint are missing"),
        "{stderr}"
    );
    assert!(stderr.contains("hazel restore BACKUP"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_serving_and_restore_bring_back_a_lost_database() {
    let site = Site::new();
    let mut child = site.serve().await;
    let token = site.token();
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("{}/api/policies", site.url()))
        .bearer_auth(&token)
        .header("X-Hazel-CSRF", "1")
        .header("content-type", "application/json")
        .body(policy("kept-by-the-backup"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("saved").to_string();

    let out = hazel(&["backup", "--config", "hazel.yaml", "b1.db"], site.path());
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("quick_check ok"));
    // Never over an existing file.
    let again = hazel(&["backup", "--config", "hazel.yaml", "b1.db"], site.path());
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    // Not while the agent runs.
    let out = hazel(&["restore", "--config", "hazel.yaml", "b1.db"], site.path());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by another hazel process"),
        "{out:?}"
    );
    child.stop();

    // The database is lost: serve refuses, restore brings it back.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(site.data().join(format!("hazel.db{suffix}")));
    }
    let (code, stderr) = serve_refused(site.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is missing"), "{stderr}");
    let out = hazel(&["restore", "--config", "hazel.yaml", "b1.db"], site.path());
    assert!(out.status.success(), "{out:?}");
    let restored: i64 = rusqlite::Connection::open(site.data().join("hazel.db"))
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE kind = 'store.restored'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(restored, 1, "the restore is in the audit log");
    let mut child = site.serve().await;
    let listed: serde_json::Value = http
        .get(format!("{}/api/policies/{id}", site.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["name"], "kept-by-the-backup", "{listed}");
    child.stop();
}

#[test]
fn restore_refuses_a_damaged_backup_and_leaves_the_database_alone() {
    let site = Site::new();
    std::fs::write(site.path().join("bad.db"), vec![7u8; 8192]).unwrap();
    let out = hazel(
        &["restore", "--config", "hazel.yaml", "bad.db"],
        site.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is damaged"),
        "{out:?}"
    );
    assert!(!site.data().join("hazel.db").exists());
}

// ---- mounts ----------------------------------------------------------------

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("this test needs `mount` (util-linux) and root: {e}"));
        assert!(
            out.status.success(),
            "this test mounts a tmpfs: run it as root with CAP_SYS_ADMIN (in a container: \
             --cap-add SYS_ADMIN or --privileged): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Checks that `out`, a `hazel restore`, failed and put the database back:
/// exit 1, a message that says so, `db` holding `before` again. Returns
/// the message.
fn assert_put_back(out: &std::process::Output, db: &Path, before: &[u8]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the data directory is as it was before the restore"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(db).unwrap(),
        before,
        "the same database is back"
    );
    stderr
}

/// A restore that fails after it moved the database aside and put the
/// backup in place (here the marker cannot be written: a directory stands
/// where its temporary file goes) removes the copy and moves the database
/// back; a `hazel.db.replaced` kept by an earlier restore survives.
#[tokio::test]
async fn a_restore_that_fails_after_moving_the_database_aside_moves_it_back() {
    let site = Site::new();
    initialise(&site.data()).await;
    let db = site.data().join("hazel.db");
    let before = std::fs::read(&db).unwrap();
    let marker = std::fs::read(site.data().join(MARKER_FILE)).unwrap();
    let out = hazel(&["backup", "--config", "hazel.yaml", "b.db"], site.path());
    assert!(out.status.success(), "{out:?}");
    std::fs::write(
        site.data().join("hazel.db.replaced"),
        "an earlier restore's",
    )
    .unwrap();
    std::fs::create_dir(site.data().join(format!("{MARKER_FILE}.tmp"))).unwrap();

    let out = hazel(&["restore", "--config", "hazel.yaml", "b.db"], site.path());
    assert_put_back(&out, &db, &before);
    assert_eq!(
        std::fs::read(site.data().join(MARKER_FILE)).unwrap(),
        marker,
        "the same marker"
    );
    assert_eq!(
        std::fs::read_to_string(site.data().join("hazel.db.replaced")).unwrap(),
        "an earlier restore's"
    );
    for left in ["hazel.db.restoring", "hazel.db.replacing"] {
        assert!(!site.data().join(left).exists(), "{left} is left behind");
    }
    std::fs::remove_dir(site.data().join(format!("{MARKER_FILE}.tmp"))).unwrap();
    let service = open(&site.data()).await.expect("the agent starts on it");
    service.shutdown().await;
    drop(service);
    wait_unlocked(&site.data());
    // With the obstacle gone the same restore goes through and keeps the
    // replaced database in place of the earlier one.
    let out = hazel(&["restore", "--config", "hazel.yaml", "b.db"], site.path());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read(site.data().join("hazel.db.replaced")).unwrap(),
        before
    );
}

/// A `hazel.db.replacing` left by a restore that was killed half-way may
/// be the only copy of a database: the next restore refuses and touches
/// nothing.
#[tokio::test]
async fn a_restore_refuses_while_an_interrupted_restore_left_the_database_aside() {
    let site = Site::new();
    initialise(&site.data()).await;
    let out = hazel(&["backup", "--config", "hazel.yaml", "b.db"], site.path());
    assert!(out.status.success(), "{out:?}");
    let aside = site.data().join("hazel.db.replacing");
    std::fs::write(&aside, "the only copy").unwrap();
    let out = hazel(&["restore", "--config", "hazel.yaml", "b.db"], site.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&aside).unwrap(), "the only copy");
    assert!(!site.data().join("hazel.db.restoring").exists());
}

/// A restore that fails half-way (the disk fills while the backup is
/// copied in, after the database was moved aside) puts the database back:
/// exit 1, a message that says the directory is as it was, the same bytes
/// in `hazel.db`, and an agent that starts on it.
#[tokio::test]
async fn a_restore_that_fills_the_disk_puts_the_database_back() {
    let fs = Tmpfs::mount("4m");
    initialise(fs.path()).await;
    let site = Site::with_data_dir(fs.path());
    let db = fs.path().join("hazel.db");
    let before = std::fs::read(&db).unwrap();
    // A real backup, grown past the tmpfs with a table of blobs.
    let out = hazel(&["backup", "--config", "hazel.yaml", "big.db"], site.path());
    assert!(out.status.success(), "{out:?}");
    let backup = rusqlite::Connection::open(site.path().join("big.db")).unwrap();
    backup
        .execute_batch(
            "CREATE TABLE ballast (b BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 80)
             INSERT INTO ballast SELECT zeroblob(100000) FROM n;",
        )
        .unwrap();
    drop(backup);

    let out = hazel(
        &["restore", "--config", "hazel.yaml", "big.db"],
        site.path(),
    );
    let stderr = assert_put_back(&out, &db, &before);
    assert!(stderr.contains("the restore failed"), "{stderr}");
    assert!(stderr.contains("cannot copy the backup"), "{stderr}");
    assert!(
        stderr.contains("No space left on device"),
        "the OS's reason: {stderr}"
    );
    for left in ["hazel.db.restoring", "hazel.db.replaced"] {
        assert!(!fs.path().join(left).exists(), "{left} is left behind");
    }
    let service = open(fs.path()).await.expect("the agent starts on it");
    service.shutdown().await;
}

#[tokio::test]
async fn a_read_only_data_dir_is_named_at_start() {
    let fs = Tmpfs::mount("4m");
    initialise(fs.path()).await;
    fs.remount("ro");
    let message = match open(fs.path()).await {
        Ok(_) => panic!("started on a read-only data dir"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("read-only"), "{message}");
    assert!(
        message.contains(&fs.path().display().to_string()),
        "{message}"
    );
}

#[tokio::test]
async fn on_a_full_disk_readyz_fails_and_the_kill_switch_still_pauses() {
    let fs = Tmpfs::mount("1m");
    let service = open(fs.path()).await.expect("opens on the tmpfs");
    wait_ready(&service).await;
    // Fill the disk.
    let filler = fs.path().join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let _ = file.write_all(&[0u8; 1]);
    let _ = file.sync_all();

    pause(&service).await;
    let view = service.kill_switch().await.unwrap();
    assert!(view.paused, "the pause holds in memory");
    assert!(!view.persisted, "the full disk refused the write");
    let not_ready = service
        .readiness()
        .await
        .expect_err("not ready on a full disk");
    assert_eq!(not_ready.code, "store.unwritable");
    assert!(not_ready.message.contains("full"), "{}", not_ready.message);

    drop(file);
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(service.readiness().await.map_err(|e| e.message), Ok(()));
    service.shutdown().await;
}

fn backup_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "db"));
    files.sort();
    files
}

/// Polls (on the paused clock, a millisecond at a time) until `done`.
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never happened");
}

/// A service on `data` backing up into `backups` every hour, keeping two.
async fn with_hourly_backups(data: &Path, backups: &Path) -> Service {
    let mut config = config(data);
    config.backup = Some(agent::service::config::BackupConfig {
        dir: backups.to_path_buf(),
        every: Duration::from_secs(3600),
        keep: 2,
    });
    Service::open(
        config,
        OpenOptions {
            discovery: false,
            ..OpenOptions::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn automatic_backups_run_every_period_and_keep_the_newest() {
    let data = tempfile::tempdir().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let service = with_hourly_backups(data.path(), backups.path()).await;
    assert!(backup_files(backups.path()).is_empty(), "none at start");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    until(|| backup_files(backups.path()).len() == 1).await;
    let first = backup_files(backups.path())[0].clone();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    until(|| backup_files(backups.path()).len() == 2).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    until(|| {
        let files = backup_files(backups.path());
        files.len() == 2 && !files.contains(&first)
    })
    .await;
    for file in backup_files(backups.path()) {
        agent::store::quick_check(&file).expect("a sound backup");
    }
    service.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_automatic_backup_is_counted_in_the_metrics_and_tried_again() {
    let data = tempfile::tempdir().unwrap();
    // The backup directory cannot be made: its parent is a file.
    let blocker = data.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let service = with_hourly_backups(data.path(), &blocker.join("backups")).await;
    let failures = |service: &Service| {
        service
            .render_metrics()
            .lines()
            .find_map(|l| l.strip_prefix("hazel_backup_failures_total "))
            .map(|n| n.trim().parse::<u64>().unwrap())
    };
    assert_eq!(failures(&service), Some(0));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    until(|| failures(&service) == Some(1)).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    until(|| failures(&service) == Some(2)).await;
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_agent_on_a_full_disk_pauses_and_its_readyz_says_the_disk_is_full() {
    let fs = Tmpfs::mount("1m");
    let site = Site::with_data_dir(fs.path());
    let _agent = site.serve().await;
    let token = site.token();
    let filler = fs.path().join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let _ = file.write_all(&[0u8; 1]);

    let http = reqwest::Client::new();
    let answer = http
        .post(format!("{}/api/kill-switch", site.url()))
        .bearer_auth(&token)
        .header("X-Hazel-CSRF", "1")
        .json(&serde_json::json!({"paused": true, "reason": "disk full test"}))
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], true, "{body}");
    assert_eq!(body["persisted"], false, "{body}");
    let answer = http
        .get(format!("{}/readyz", site.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store.unwritable", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("full"),
        "{body}"
    );
}
