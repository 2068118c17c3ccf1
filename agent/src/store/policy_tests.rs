//! Tests of the SQLite [`PolicyStore`]: policies, transcripts, hosts with
//! encrypted secrets, inventory snapshots, atomicity and reopening.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::super::sqlite::{migration_versions, rerun_migration};
use super::super::{SqliteConfig, Synchronous};
use super::*;
use crate::engine::store::conformance::t;
use crate::engine::store::{AuditQuery, EngineStore, RunStatus, Write};

use crate::store::SecretKey;

const PLAINTEXT: &str = "hunter2-correct-horse-battery-staple";

fn temp_path() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hazel.db");
    (dir, path)
}

fn open(path: &Path) -> SqliteStore {
    let config = SqliteConfig {
        synchronous: Synchronous::Normal,
        ..SqliteConfig::default()
    };
    SqliteStore::open_with(path, &config).expect("open store")
}

fn policy(n: u128) -> PolicyRecord {
    PolicyRecord {
        id: Uuid::from_u128(n),
        name: format!("policy-{n}"),
        spec: json!({"version": 1, "name": format!("policy-{n}"), "enabled": true}),
        version_int: 1,
        hash: format!("sha256:{n:064x}"),
        compiled_ir: json!({"ir": n as u64}),
        enabled_intent: true,
        status: PolicyStatus::Enabled,
        last_validation: Some(ValidationRecord {
            ts: t(1),
            ok: true,
            issues: json!([]),
        }),
        last_dry_run: None,
        created_at: t(1),
        updated_at: t(1),
    }
}

fn audit(kind: &str, policy_id: Option<Uuid>) -> AuditRecord {
    AuditRecord {
        ts: t(10),
        correlation_id: Uuid::from_u128(77),
        kind: kind.into(),
        policy_id,
        details: json!({}),
    }
}

fn audit_kinds(store: &SqliteStore) -> Vec<String> {
    store
        .audit(&AuditQuery::default())
        .expect("audit")
        .into_iter()
        .rev()
        .map(|entry| entry.record.kind)
        .collect()
}

fn transcript(n: u128, policy_id: Option<Uuid>) -> TranscriptRecord {
    TranscriptRecord {
        id: Uuid::from_u128(n),
        policy_id,
        created_at: t(i64::try_from(n).unwrap_or(0)),
        severity: Severity::Warn,
        body: json!({"steps": [n as u64]}),
    }
}

fn host(id: &str, secrets: &[(&str, &str)]) -> HostRecord {
    let mut connection = Map::new();
    connection.insert("url".into(), json!(format!("https://{id}.lan:8006")));
    connection.insert("user".into(), json!("root@pam"));
    HostRecord {
        id: id.into(),
        plugin: "proxmox.ve".into(),
        connection,
        secrets: secrets
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Secret::new(*v)))
            .collect(),
        source: HostSource::Api,
        created_at: t(1),
        updated_at: t(2),
    }
}

fn keyed(path: &Path, key: &SecretKey) -> SqliteStore {
    let store = open(path);
    store.set_secret_key(key.clone());
    store
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn policies_are_inserted_read_and_listed_in_keyset_pages() {
    let (_dir, path) = temp_path();
    let store = open(&path);
    for n in [3, 1, 5, 2, 4] {
        store
            .insert_policy(
                &policy(n),
                &audit("policy.created", Some(Uuid::from_u128(n))),
            )
            .expect("insert");
    }
    assert_eq!(store.policy(Uuid::from_u128(3)).unwrap(), Some(policy(3)));
    assert_eq!(store.policy(Uuid::from_u128(9)).unwrap(), None);
    assert_eq!(store.count_policies().unwrap(), 5);
    let page = |after: Option<u128>, limit| -> Vec<u128> {
        store
            .policies(after.map(Uuid::from_u128), limit)
            .unwrap()
            .iter()
            .map(|p| p.id.as_u128())
            .collect()
    };
    assert_eq!(page(None, 2), vec![1, 2]);
    assert_eq!(page(Some(2), 2), vec![3, 4]);
    assert_eq!(page(Some(4), 2), vec![5]);
    assert_eq!(page(Some(5), 2), Vec::<u128>::new());
    assert_eq!(
        store.policy_by_hash(&policy(4).hash).unwrap(),
        Some(Uuid::from_u128(4))
    );
    assert_eq!(store.policy_by_hash("sha256:none").unwrap(), None);
    assert_eq!(audit_kinds(&store).len(), 5);
}

#[test]
fn insert_ignores_the_version_passed_in_and_refuses_an_existing_id() {
    let (_dir, path) = temp_path();
    let store = open(&path);
    let mut record = policy(1);
    record.version_int = 42;
    store
        .insert_policy(&record, &audit("policy.created", None))
        .unwrap();
    assert_eq!(store.policy(record.id).unwrap().unwrap().version_int, 1);
    let mut same_id = policy(1);
    same_id.hash = "sha256:other".into();
    let err = store
        .insert_policy(&same_id, &audit("policy.created", None))
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(audit_kinds(&store).len(), 1);
}

#[test]
fn a_duplicate_hash_names_the_existing_policy_on_insert_and_update() {
    let (_dir, path) = temp_path();
    let store = open(&path);
    store
        .insert_policy(&policy(1), &audit("policy.created", None))
        .unwrap();
    store
        .insert_policy(&policy(2), &audit("policy.created", None))
        .unwrap();

    let mut twin = policy(3);
    twin.hash = policy(1).hash;
    let err = store
        .insert_policy(&twin, &audit("policy.created", None))
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateHash { existing_id } if existing_id == Uuid::from_u128(1)),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(err.to_string().contains(&Uuid::from_u128(1).to_string()));

    let mut update = policy(2);
    update.hash = policy(1).hash;
    let err = store
        .update_policy(&update, None, &audit("policy.updated", None))
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateHash { existing_id } if existing_id == Uuid::from_u128(1)),
        "{err:?}"
    );
    // Updating a policy to its own hash is no duplicate.
    assert_eq!(
        store
            .update_policy(&policy(2), None, &audit("policy.updated", None))
            .unwrap(),
        2
    );
    assert_eq!(store.count_policies().unwrap(), 2);
    assert_eq!(audit_kinds(&store).len(), 3);
}

#[test]
fn updates_bump_the_version_and_a_stale_expected_version_conflicts() {
    let (_dir, path) = temp_path();
    let store = open(&path);
    let mut record = policy(1);
    record.last_dry_run = Some(DryRunRecord {
        ts: t(3),
        severity: Severity::Info,
        transcript_id: Uuid::from_u128(500),
    });
    store
        .insert_policy(&record, &audit("policy.created", None))
        .unwrap();

    record.name = "renamed".into();
    record.hash = "sha256:v2".into();
    record.spec = json!({"version": 1, "name": "renamed"});
    record.updated_at = t(20);
    record.created_at = t(999);
    record.last_dry_run = None;
    assert_eq!(
        store
            .update_policy(&record, Some(1), &audit("policy.updated", None))
            .unwrap(),
        2
    );
    record.hash = "sha256:v3".into();
    assert_eq!(
        store
            .update_policy(&record, None, &audit("policy.updated", None))
            .unwrap(),
        3
    );
    let err = store
        .update_policy(&record, Some(2), &audit("policy.updated", None))
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");

    let stored = store.policy(record.id).unwrap().unwrap();
    assert_eq!(stored.version_int, 3);
    assert_eq!(stored.name, "renamed");
    assert_eq!(stored.hash, "sha256:v3");
    assert_eq!(stored.updated_at, t(20));
    assert_eq!(stored.created_at, t(1), "created_at is kept");
    assert_eq!(
        stored.last_dry_run.map(|d| d.transcript_id),
        Some(Uuid::from_u128(500)),
        "last_dry_run is kept"
    );
    assert_eq!(
        audit_kinds(&store),
        vec!["policy.created", "policy.updated", "policy.updated"]
    );

    let err = store
        .update_policy(&policy(9), None, &audit("policy.updated", None))
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
}

#[test]
fn a_write_that_fails_after_its_first_statement_leaves_no_policy_and_no_audit() {
    let (_dir, path) = temp_path();
    {
        let store = open(&path);
        store
            .insert_policy(&policy(1), &audit("policy.created", None))
            .unwrap();
        // Make the audit insert (the last statement of every mutation) fail.
        store
            .lock()
            .execute_batch(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit
                 BEGIN SELECT RAISE(ABORT, 'audit refused'); END;",
            )
            .unwrap();
        store
            .insert_policy(&policy(2), &audit("policy.created", None))
            .unwrap_err();
        let mut update = policy(1);
        update.hash = "sha256:changed".into();
        store
            .update_policy(&update, None, &audit("policy.updated", None))
            .unwrap_err();
        store
            .set_policy_status(
                policy(1).id,
                PolicyStatus::Disabled,
                false,
                &audit("x", None),
            )
            .unwrap_err();
        store
            .delete_policy(policy(1).id, &audit("x", None))
            .unwrap_err();
        store
            .upsert_host(&host("pve1", &[]), &audit("x", None))
            .unwrap_err();
    }
    let store = open(&path);
    assert_eq!(store.policy(policy(2).id).unwrap(), None);
    assert_eq!(store.policy(policy(1).id).unwrap(), Some(policy(1)));
    assert_eq!(store.host("pve1").unwrap(), None);
    assert_eq!(audit_kinds(&store), vec!["policy.created"]);
}

#[test]
fn status_changes_keep_the_version_and_are_audited() {
    let (_dir, path) = temp_path();
    let store = open(&path);
    store
        .insert_policy(&policy(1), &audit("policy.created", None))
        .unwrap();
    let mut disable = audit("policy.disabled", Some(policy(1).id));
    disable.ts = t(30);
    store
        .set_policy_status(policy(1).id, PolicyStatus::Disabled, false, &disable)
        .unwrap();
    let stored = store.policy(policy(1).id).unwrap().unwrap();
    assert_eq!(stored.status, PolicyStatus::Disabled);
    assert!(!stored.enabled_intent);
    assert_eq!(stored.version_int, 1);
    assert_eq!(stored.updated_at, t(30));
    store
        .set_policy_status(
            policy(1).id,
            PolicyStatus::Invalid,
            true,
            &audit("policy.invalid", None),
        )
        .unwrap();
    let stored = store.policy(policy(1).id).unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.enabled_intent),
        (PolicyStatus::Invalid, true)
    );
    let err = store
        .set_policy_status(
            Uuid::from_u128(9),
            PolicyStatus::Enabled,
            true,
            &audit("x", None),
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert_eq!(
        audit_kinds(&store),
        vec!["policy.created", "policy.disabled", "policy.invalid"]
    );
}

#[test]
fn policy_status_round_trips_through_its_name() {
    for status in [
        PolicyStatus::Enabled,
        PolicyStatus::Disabled,
        PolicyStatus::Invalid,
    ] {
        assert_eq!(PolicyStatus::parse(status.as_str()), Some(status));
        assert_eq!(
            serde_json::to_value(status).unwrap(),
            json!(status.as_str())
        );
    }
    assert_eq!(PolicyStatus::parse("on"), None);
    for source in [HostSource::Config, HostSource::Api] {
        assert_eq!(HostSource::parse(source.as_str()), Some(source));
    }
}

#[test]
fn a_dry_run_stores_its_transcript_and_becomes_the_last_dry_run() {
    let (_dir, path) = temp_path();
    let store = open(&path);
    store
        .insert_policy(&policy(1), &audit("policy.created", None))
        .unwrap();
    let record = transcript(100, Some(policy(1).id));
    let dry_run = DryRunRecord {
        ts: t(40),
        severity: Severity::Warn,
        transcript_id: record.id,
    };
    store
        .record_dry_run(policy(1).id, &dry_run, &record)
        .unwrap();
    let stored = store.policy(policy(1).id).unwrap().unwrap();
    assert_eq!(stored.last_dry_run, Some(dry_run.clone()));
    assert_eq!(stored.version_int, 1);
    assert_eq!(store.transcript(record.id).unwrap(), Some(record.clone()));

    // Unknown policy: nothing stored, not even the transcript.
    let orphan = transcript(101, None);
    let err = store
        .record_dry_run(Uuid::from_u128(9), &dry_run, &orphan)
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert_eq!(store.transcript(orphan.id).unwrap(), None);

    // A duplicate transcript id rolls back the last_dry_run change too.
    let again = DryRunRecord {
        ts: t(50),
        ..dry_run.clone()
    };
    let err = store
        .record_dry_run(policy(1).id, &again, &record)
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(
        store.policy(policy(1).id).unwrap().unwrap().last_dry_run,
        Some(dry_run)
    );
}

#[test]
fn transcripts_keep_the_newest_and_the_ones_a_last_dry_run_names() {
    let (_dir, path) = temp_path();
    let store = open(&path);
    store
        .insert_policy(&policy(1), &audit("policy.created", None))
        .unwrap();
    let pinned = transcript(1, Some(policy(1).id));
    store
        .record_dry_run(
            policy(1).id,
            &DryRunRecord {
                ts: t(1),
                severity: Severity::Info,
                transcript_id: pinned.id,
            },
            &pinned,
        )
        .unwrap();
    let total = TRANSCRIPTS_KEPT as u128 + 5;
    for n in 2..=total {
        store.put_transcript(&transcript(n, None)).unwrap();
    }
    let kept: i64 = store
        .lock()
        .query_row("SELECT COUNT(*) FROM transcripts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        kept,
        TRANSCRIPTS_KEPT as i64 + 1,
        "the newest N and the pinned one"
    );
    assert_eq!(store.transcript(pinned.id).unwrap(), Some(pinned));
    assert_eq!(store.transcript(Uuid::from_u128(2)).unwrap(), None);
    assert_eq!(store.transcript(Uuid::from_u128(5)).unwrap(), None);
    assert!(store.transcript(Uuid::from_u128(6)).unwrap().is_some());
    assert_eq!(
        store.transcript(Uuid::from_u128(total)).unwrap(),
        Some(transcript(total, None))
    );
    let err = store.put_transcript(&transcript(total, None)).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
}

#[test]
fn deleting_a_policy_keeps_its_history_and_drops_its_runtime_state() {
    let (_dir, path) = temp_path();
    let store = open(&path);
    let id = policy(1).id;
    store
        .insert_policy(&policy(1), &audit("policy.created", Some(id)))
        .unwrap();
    store.put_transcript(&transcript(5, Some(id))).unwrap();
    store
        .append_run(&crate::engine::store::conformance::run(
            id,
            1,
            5,
            RunStatus::Ok,
        ))
        .unwrap();
    store.record_fire(id, t(5)).unwrap();
    store
        .set_trigger_state(id, &json!({"last": "on_battery"}))
        .unwrap();
    store.set_timer_checked(id, 0, t(5)).unwrap();

    assert!(store
        .delete_policy(id, &audit("policy.deleted", Some(id)))
        .unwrap());
    assert!(!store
        .delete_policy(id, &audit("policy.deleted", Some(id)))
        .unwrap());
    assert_eq!(store.policy(id).unwrap(), None);
    assert_eq!(store.policy_by_hash(&policy(1).hash).unwrap(), None);
    assert_eq!(store.runs(id, 30).unwrap().len(), 1, "ledger kept");
    assert_eq!(
        store
            .transcript(Uuid::from_u128(5))
            .unwrap()
            .unwrap()
            .policy_id,
        Some(id),
        "transcript kept"
    );
    assert_eq!(
        audit_kinds(&store),
        vec!["policy.created", "policy.deleted"]
    );
    assert!(store.trigger_states().unwrap().is_empty());
    assert!(store.timer_checks().unwrap().is_empty());
    assert_eq!(store.window_state(id).unwrap().last_fired_at, None);
    // The hash is free again.
    store
        .insert_policy(&policy(1), &audit("policy.created", Some(id)))
        .unwrap();
}

#[test]
fn hosts_round_trip_with_their_secrets_under_the_key() {
    let (_dir, path) = temp_path();
    let key = SecretKey::generate();
    let store = keyed(&path, &key);
    let pve1 = host("pve1", &[("token_secret", PLAINTEXT), ("password", "pw")]);
    let nas = host("nas", &[]);
    store
        .upsert_host(&pve1, &audit("host.created", None))
        .unwrap();
    store
        .upsert_host(&nas, &audit("host.created", None))
        .unwrap();
    assert_eq!(store.host("pve1").unwrap(), Some(pve1.clone()));
    assert_eq!(
        store.host("pve1").unwrap().unwrap().secrets["token_secret"].expose(),
        PLAINTEXT
    );
    assert_eq!(store.hosts().unwrap(), vec![nas.clone(), pve1.clone()]);
    assert_eq!(store.host("absent").unwrap(), None);
    // A record prints its secrets masked.
    assert!(!format!("{pve1:?}").contains(PLAINTEXT));
    assert!(!serde_json::to_string(&pve1).unwrap().contains(PLAINTEXT));

    // Replacing keeps created_at and may drop the secrets.
    let mut replaced = host("pve1", &[]);
    replaced.created_at = t(100);
    replaced.updated_at = t(101);
    replaced.source = HostSource::Config;
    store
        .upsert_host(&replaced, &audit("host.updated", None))
        .unwrap();
    let stored = store.host("pve1").unwrap().unwrap();
    assert!(stored.secrets.is_empty());
    assert_eq!(stored.created_at, t(1));
    assert_eq!(stored.updated_at, t(101));
    assert_eq!(stored.source, HostSource::Config);

    assert!(store
        .delete_host("nas", &audit("host.deleted", None))
        .unwrap());
    assert!(!store
        .delete_host("nas", &audit("host.deleted", None))
        .unwrap());
    assert_eq!(store.host("nas").unwrap(), None);
    assert_eq!(
        audit_kinds(&store),
        vec![
            "host.created",
            "host.created",
            "host.updated",
            "host.deleted"
        ]
    );
}

#[test]
fn host_secrets_need_a_key_to_write_and_the_right_key_to_read() {
    let (_dir, path) = temp_path();
    let unkeyed = open(&path);
    assert!(!unkeyed.has_secret_key());
    let err = unkeyed
        .upsert_host(&host("pve1", &[("password", PLAINTEXT)]), &audit("x", None))
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::SecretKeyMissing { host } if host == "pve1"),
        "{err:?}"
    );
    assert!(err.to_string().contains("HAZEL_SECRET_KEY"), "{err}");
    assert!(audit_kinds(&unkeyed).is_empty());
    // A host without secrets needs no key.
    unkeyed
        .upsert_host(&host("nas", &[]), &audit("x", None))
        .unwrap();
    drop(unkeyed);

    let key = SecretKey::generate();
    let store = keyed(&path, &key);
    store
        .upsert_host(&host("pve1", &[("password", PLAINTEXT)]), &audit("x", None))
        .unwrap();
    drop(store);

    let wrong = keyed(&path, &SecretKey::generate());
    let err = wrong.host("pve1").unwrap_err();
    assert!(
        matches!(&err, StoreError::SecretUndecryptable { host } if host == "pve1"),
        "{err:?}"
    );
    assert!(!format!("{err:?} {err}").contains(PLAINTEXT));
    assert!(wrong.hosts().is_err());
    assert_eq!(wrong.host("nas").unwrap().unwrap().id, "nas");

    let err = open(&path).host("pve1").unwrap_err();
    assert!(
        matches!(err, StoreError::SecretKeyMissing { .. }),
        "{err:?}"
    );

    // A blob moved onto another host's row does not decrypt there.
    let right = keyed(&path, &key);
    right
        .lock()
        .execute(
            "UPDATE hosts SET secrets = (SELECT secrets FROM hosts WHERE id = 'pve1')
             WHERE id = 'nas'",
            [],
        )
        .unwrap();
    assert!(matches!(
        right.host("nas").unwrap_err(),
        StoreError::SecretUndecryptable { .. }
    ));
    assert_eq!(
        right.host("pve1").unwrap().unwrap().secrets["password"].expose(),
        PLAINTEXT
    );
}

#[test]
fn secret_plaintext_appears_nowhere_in_the_database_files() {
    let (dir, path) = temp_path();
    let key = SecretKey::generate();
    {
        let store = keyed(&path, &key);
        store
            .upsert_host(
                &host("pve1", &[("token_secret", PLAINTEXT)]),
                &audit("host.created", None),
            )
            .unwrap();
        // Read before any checkpoint: the row is still in the WAL.
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let wal = std::fs::read(&wal).expect("wal file exists while open");
        assert!(contains(&wal, b"proxmox.ve"), "the WAL holds the host row");
        assert!(!contains(&wal, PLAINTEXT.as_bytes()));
        assert_eq!(
            store.host("pve1").unwrap().unwrap().secrets["token_secret"].expose(),
            PLAINTEXT
        );
    }
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let file = entry.unwrap().path();
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !contains(&bytes, PLAINTEXT.as_bytes()),
            "plaintext found in {}",
            file.display()
        );
    }
    let db = std::fs::read(&path).unwrap();
    assert!(
        contains(&db, b"proxmox.ve"),
        "checkpointed into the main file"
    );
}

#[test]
fn inventory_snapshots_keep_the_latest_per_host() {
    let (_dir, path) = temp_path();
    let store = open(&path);
    assert_eq!(store.inventory_snapshot("pve1").unwrap(), None);
    store
        .put_inventory_snapshot("pve1", &json!({"children": [1]}), t(1))
        .unwrap();
    store
        .put_inventory_snapshot("pve1", &json!({"children": [1, 2]}), t(2))
        .unwrap();
    store
        .put_inventory_snapshot("nas", &json!({"children": []}), t(3))
        .unwrap();
    assert_eq!(
        store.inventory_snapshot("pve1").unwrap(),
        Some((t(2), json!({"children": [1, 2]})))
    );
    // Deleting a host drops its snapshot.
    store
        .upsert_host(&host("pve1", &[]), &audit("x", None))
        .unwrap();
    store.delete_host("pve1", &audit("x", None)).unwrap();
    assert_eq!(store.inventory_snapshot("pve1").unwrap(), None);
    assert!(store.inventory_snapshot("nas").unwrap().is_some());
}

#[test]
fn reopening_the_file_keeps_policies_hosts_transcripts_and_snapshots() {
    let (_dir, path) = temp_path();
    let key = SecretKey::generate();
    let pve1 = host("pve1", &[("password", PLAINTEXT)]);
    {
        let store = keyed(&path, &key);
        store
            .insert_policy(&policy(1), &audit("policy.created", None))
            .unwrap();
        store
            .update_policy(&policy(1), None, &audit("policy.updated", None))
            .unwrap();
        store
            .put_transcript(&transcript(9, Some(policy(1).id)))
            .unwrap();
        store
            .upsert_host(&pve1, &audit("host.created", None))
            .unwrap();
        store
            .put_inventory_snapshot("pve1", &json!({"children": ["101"]}), t(4))
            .unwrap();
    }
    let store = keyed(&path, &key);
    let mut expected = policy(1);
    expected.version_int = 2;
    assert_eq!(store.policy(policy(1).id).unwrap(), Some(expected));
    assert_eq!(
        store.transcript(Uuid::from_u128(9)).unwrap(),
        Some(transcript(9, Some(policy(1).id)))
    );
    assert_eq!(store.host("pve1").unwrap(), Some(pve1));
    assert_eq!(
        store.inventory_snapshot("pve1").unwrap(),
        Some((t(4), json!({"children": ["101"]})))
    );
    assert_eq!(
        audit_kinds(&store),
        vec!["policy.created", "policy.updated", "host.created"]
    );
}

#[test]
fn a_database_of_the_first_schema_is_migrated_and_keeps_its_data() {
    let (_dir, path) = temp_path();
    // Build a file as the engine-only agent left it: schema version 1.
    {
        let store = open(&path);
        store
            .lock()
            .execute_batch(
                "DELETE FROM schema_migrations WHERE version > 1;
                 DROP TABLE policies; DROP TABLE transcripts; DROP TABLE hosts;
                 DROP TABLE inventory_snapshots; DROP TABLE trigger_states;
                 DROP TABLE subject_states; DROP TABLE restore_set;
                 DROP TABLE waiting_retries; DROP TABLE follow_ups; DROP TABLE console_users;
                 DROP TABLE store_identity;",
            )
            .unwrap();
        assert_eq!(store.schema_version().unwrap(), 1);
        store.record_fire(Uuid::from_u128(1), t(1)).unwrap();
    }
    let versions = migration_versions();
    let latest = *versions.last().unwrap();
    assert!(latest >= 3);
    let store = open(&path);
    assert_eq!(store.schema_version().unwrap(), latest);
    assert_eq!(
        store
            .window_state(Uuid::from_u128(1))
            .unwrap()
            .last_fired_at,
        Some(t(1))
    );
    store
        .insert_policy(&policy(1), &audit("policy.created", None))
        .unwrap();
    store.set_trigger_state(policy(1).id, &json!(1)).unwrap();
    drop(store);
    // Opening again applies nothing twice.
    let store = open(&path);
    assert_eq!(store.schema_version().unwrap(), latest);
    let rows: i64 = store
        .lock()
        .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, versions.len() as i64);
    assert_eq!(store.count_policies().unwrap(), 1);
    assert_eq!(store.trigger_states().unwrap().len(), 1);
}

#[test]
fn the_key_migration_prefixes_each_old_key_with_its_policys_host_and_drops_the_rest() {
    let (_dir, path) = temp_path();
    let store = open(&path);
    let on_host = |n: u128, host: &str| PolicyRecord {
        compiled_ir: json!({"targets": {"host_id": host, "target_type": "vm"}}),
        ..policy(n)
    };
    store
        .insert_policy(&on_host(1, "pve-01"), &audit("policy.created", None))
        .unwrap();
    store
        .insert_policy(&on_host(2, "sw-a"), &audit("policy.created", None))
        .unwrap();
    // An invalid policy stores no compiled IR worth a host.
    store
        .insert_policy(&policy(3), &audit("policy.created", None))
        .unwrap();
    // Keys as the agent before version 5 wrote them: no host.
    let old = [
        ("proxmox.vm:shutdown:vm:104", 1u128, t(1)),
        ("aoss.poe.port:set:poe-port:1/A10:state=off", 2, t(2)),
        ("proxmox.vm:shutdown:vm:105", 3, t(3)),
        ("proxmox.vm:start:vm:106", 9, t(4)),
    ];
    for (key, policy_id, at) in &old {
        store
            .write(&[Write::RecordKey {
                policy_id: Uuid::from_u128(*policy_id),
                key: key.to_string(),
                at: *at,
            }])
            .unwrap();
    }

    rerun_migration(&store, 5).expect("the key migration applies");

    assert_eq!(
        store
            .key_ran_at("pve-01/proxmox.vm:shutdown:vm:104")
            .unwrap(),
        Some(t(1)),
        "the window of a key of a known policy survives under its host"
    );
    assert_eq!(
        store
            .key_ran_at("sw-a/aoss.poe.port:set:poe-port:1/A10:state=off")
            .unwrap(),
        Some(t(2))
    );
    for (key, _, _) in &old {
        assert_eq!(store.key_ran_at(key).unwrap(), None, "{key} is gone");
    }
    let left: i64 = store
        .lock()
        .query_row("SELECT COUNT(*) FROM idempotency_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 2, "the keys of no known host are dropped");
    let records = store
        .audit(&AuditQuery {
            kind: Some("store.keys_migrated".into()),
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(records.len(), 1);
    let details = &records[0].record.details;
    assert_eq!(details["rewritten"], json!(2));
    assert_eq!(details["dropped"], json!(2));
    assert!(details["reason"]
        .as_str()
        .unwrap()
        .contains("policy is gone or names no host"));
}

#[test]
fn the_key_migration_of_an_empty_key_table_records_nothing() {
    let (_dir, path) = temp_path();
    let store = open(&path);
    rerun_migration(&store, 5).expect("the key migration applies");
    let records = store
        .audit(&AuditQuery {
            kind: Some("store.keys_migrated".into()),
            ..AuditQuery::default()
        })
        .unwrap();
    assert!(records.is_empty());
}
