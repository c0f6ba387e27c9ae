use serde::{Deserialize, Serialize};

use super::*;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Vm {
    name: String,
    memory_mib: u64,
}

/// The shape of a VM record before the `vm memory in MiB` migration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OldVm {
    name: String,
    memory_gib: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct User {
    email: String,
}

const VMS: Table<u64, Vm> = Table::new("vms");
const OLD_VMS: Table<u64, OldVm> = Table::new("vms");
const USERS: Table<String, User> = Table::new("users");
const COUNTERS: Table<String, u64> = Table::new("counters");

const V0: Schema = Schema::new(&[OLD_VMS.info(), USERS.info(), COUNTERS.info()], &[]);
const V2: Schema = Schema::new(
    &[VMS.info(), USERS.info(), COUNTERS.info()],
    &[
        Migration::new("count migration runs", count_run),
        Migration::new("vm memory in MiB", memory_to_mib),
    ],
);

fn count_run(txn: &mut WriteTxn) -> Result<(), StoreError> {
    let runs = txn.get(COUNTERS, "migration runs")?.unwrap_or(0);
    txn.insert(COUNTERS, "migration runs", &(runs + 1))
}

fn memory_to_mib(txn: &mut WriteTxn) -> Result<(), StoreError> {
    for (id, old) in txn.iter(OLD_VMS)? {
        let vm = Vm {
            name: old.name,
            memory_mib: old.memory_gib * 1024,
        };
        txn.insert(VMS, &id, &vm)?;
    }
    Ok(())
}

fn failing(_: &mut WriteTxn) -> Result<(), StoreError> {
    Err(StoreError::SequenceExhausted { table: "test" })
}

fn vm(name: &str, memory_mib: u64) -> Vm {
    Vm {
        name: name.to_owned(),
        memory_mib,
    }
}

fn user(email: &str) -> User {
    User {
        email: email.to_owned(),
    }
}

fn dump_string(store: &Store) -> String {
    let mut out = Vec::new();
    store.dump(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// A V2 store with two VMs (one id allocated and then removed) and two users.
fn populated(dir: &std::path::Path) -> Store {
    let store = Store::open(dir, V2).unwrap();
    let mut txn = store.write().unwrap();
    for (name, memory) in [("web1", 1024), ("db1", 4096), ("gone", 512)] {
        let id = txn.next_id(VMS).unwrap();
        txn.insert(VMS, &id, &vm(name, memory)).unwrap();
    }
    txn.remove(VMS, &3).unwrap();
    txn.insert(USERS, "alice", &user("alice@example.com"))
        .unwrap();
    txn.insert(USERS, "bob", &user("bob@example.com")).unwrap();
    txn.commit().unwrap();
    store
}

#[test]
fn typed_get_insert_remove_iterate() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), V2).unwrap();

    let mut txn = store.write().unwrap();
    txn.insert(VMS, &7, &vm("web1", 1024)).unwrap();
    txn.insert(VMS, &3, &vm("db1", 4096)).unwrap();
    txn.insert(VMS, &12, &vm("mail", 2048)).unwrap();
    txn.insert(USERS, "bob", &user("bob@example.com")).unwrap();
    txn.insert(USERS, "alice", &user("alice@example.com"))
        .unwrap();
    // A write transaction reads its own writes.
    assert_eq!(txn.get(VMS, &7).unwrap(), Some(vm("web1", 1024)));
    txn.commit().unwrap();

    let read = store.read().unwrap();
    assert_eq!(read.get(VMS, &3).unwrap(), Some(vm("db1", 4096)));
    assert_eq!(read.get(VMS, &4).unwrap(), None);
    assert_eq!(
        read.get(USERS, "alice").unwrap(),
        Some(user("alice@example.com"))
    );
    assert_eq!(read.len(VMS).unwrap(), 3);
    let ids: Vec<u64> = read
        .iter(VMS)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, [3, 7, 12], "u64 keys iterate in numeric order");
    let names: Vec<String> = read
        .iter(USERS)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    let middle: Vec<u64> = read
        .range(VMS, 4..=12)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(middle, [7, 12]);
    let from_b = read.range(USERS, "b".to_owned()..).unwrap();
    assert_eq!(from_b, [("bob".to_owned(), user("bob@example.com"))]);
    drop(read);

    let mut txn = store.write().unwrap();
    txn.insert(VMS, &7, &vm("web1", 2048)).unwrap();
    assert!(txn.remove(VMS, &3).unwrap());
    assert!(
        !txn.remove(VMS, &3).unwrap(),
        "removing an absent key reports false"
    );
    txn.commit().unwrap();
    let read = store.read().unwrap();
    assert_eq!(read.get(VMS, &7).unwrap(), Some(vm("web1", 2048)));
    assert_eq!(read.get(VMS, &3).unwrap(), None);
    assert_eq!(read.len(VMS).unwrap(), 2);
}

#[test]
fn dropped_write_transaction_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), V2).unwrap();
    let mut txn = store.write().unwrap();
    txn.insert(VMS, &1, &vm("web1", 1024)).unwrap();
    drop(txn);
    assert_eq!(store.read().unwrap().get(VMS, &1).unwrap(), None);
}

#[test]
fn a_snapshot_does_not_see_later_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), V2).unwrap();
    let before = store.read().unwrap();
    let mut txn = store.write().unwrap();
    txn.insert(VMS, &1, &vm("web1", 1024)).unwrap();
    txn.commit().unwrap();
    assert_eq!(before.get(VMS, &1).unwrap(), None);
    assert!(store.read().unwrap().get(VMS, &1).unwrap().is_some());
}

#[test]
fn committed_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    drop(populated(dir.path()));
    let store = Store::open(dir.path(), V2).unwrap();
    let read = store.read().unwrap();
    assert_eq!(read.get(VMS, &2).unwrap(), Some(vm("db1", 4096)));
    assert_eq!(read.len(USERS).unwrap(), 2);
}

#[test]
fn id_sequence_counts_up_per_table_and_never_reuses() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), V2).unwrap();
    const DISCS: Table<u64, String> = Table::new("discs");

    let mut txn = store.write().unwrap();
    assert_eq!(txn.next_id(VMS).unwrap(), 1);
    assert_eq!(txn.next_id(VMS).unwrap(), 2);
    assert_eq!(
        txn.next_id(DISCS).unwrap(),
        1,
        "each table has its own sequence"
    );
    txn.commit().unwrap();

    // An allocation in an aborted transaction is undone with it.
    let mut txn = store.write().unwrap();
    assert_eq!(txn.next_id(VMS).unwrap(), 3);
    drop(txn);

    let mut txn = store.write().unwrap();
    assert_eq!(txn.next_id(VMS).unwrap(), 3);
    txn.commit().unwrap();
    drop(store);

    let store = Store::open(dir.path(), V2).unwrap();
    let mut txn = store.write().unwrap();
    assert_eq!(
        txn.next_id(VMS).unwrap(),
        4,
        "the sequence survives reopening"
    );
}

#[test]
fn a_new_store_starts_at_the_current_version_without_migrating() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), V2).unwrap();
    let read = store.read().unwrap();
    assert_eq!(read.get(COUNTERS, "migration runs").unwrap(), None);
    assert_eq!(migrate::stored_version(&read).unwrap(), Some(2));
}

#[test]
fn migrations_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), V0).unwrap();
    let mut txn = store.write().unwrap();
    let old = OldVm {
        name: "web1".to_owned(),
        memory_gib: 2,
    };
    txn.insert(OLD_VMS, &1, &old).unwrap();
    txn.commit().unwrap();
    drop(store);

    for _ in 0..2 {
        let store = Store::open(dir.path(), V2).unwrap();
        let read = store.read().unwrap();
        assert_eq!(read.get(COUNTERS, "migration runs").unwrap(), Some(1));
        assert_eq!(read.get(VMS, &1).unwrap(), Some(vm("web1", 2048)));
        assert_eq!(migrate::stored_version(&read).unwrap(), Some(2));
    }
}

#[test]
fn a_failed_migration_is_rolled_back_and_reported() {
    const BROKEN: Schema = Schema::new(
        &[VMS.info(), USERS.info(), COUNTERS.info()],
        &[
            Migration::new("count migration runs", count_run),
            Migration::new("broken", failing),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), V0).unwrap());

    let err = Store::open(dir.path(), BROKEN).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Migration {
                version: 2,
                name: "broken",
                ..
            }
        ),
        "{err:?}"
    );
    // The first migration committed; the failed one left no trace, so it runs again next time.
    let store = Store::open(
        dir.path(),
        Schema::new(BROKEN.tables, &BROKEN.migrations[..1]),
    )
    .unwrap();
    let read = store.read().unwrap();
    assert_eq!(migrate::stored_version(&read).unwrap(), Some(1));
    assert_eq!(read.get(COUNTERS, "migration runs").unwrap(), Some(1));
}

#[test]
fn a_store_from_newer_code_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(populated(dir.path()));

    let err = Store::open(dir.path(), V0).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NewerSchema {
                found: 2,
                supported: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("refusing to open"), "{err}");
    // Refusing changed nothing.
    let store = Store::open(dir.path(), V2).unwrap();
    assert_eq!(store.read().unwrap().len(VMS).unwrap(), 2);
}

#[test]
fn invalid_schemas_are_refused() {
    const RESERVED_NAME: Table<String, u64> = Table::new("meta");
    const RESERVED: Schema = Schema::new(&[RESERVED_NAME.info()], &[]);
    const TWICE: Schema = Schema::new(&[VMS.info(), VMS.info()], &[]);
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(dir.path(), RESERVED).unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidSchema { table: "meta", .. }),
        "{err:?}"
    );
    let err = Store::open(dir.path(), TWICE).unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidSchema { table: "vms", .. }),
        "{err:?}"
    );
}

#[test]
fn a_table_reopened_with_another_key_type_is_an_error() {
    const VMS_BY_NAME: Table<String, Vm> = Table::new("vms");
    const RETYPED: Schema = Schema::new(&[VMS_BY_NAME.info()], V2.migrations);
    let dir = tempfile::tempdir().unwrap();
    drop(populated(dir.path()));
    let err = Store::open(dir.path(), RETYPED).unwrap_err();
    assert!(
        matches!(err, StoreError::Table { table: "vms", .. }),
        "{err:?}"
    );
}

#[test]
fn undecodable_values_name_table_and_key() {
    const VMS_AS_NUMBERS: Table<u64, u64> = Table::new("vms");
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path());
    let err = store.read().unwrap().get(VMS_AS_NUMBERS, &2).unwrap_err();
    assert!(
        matches!(&err, StoreError::Decode { table: "vms", key, .. } if key == "2"),
        "{err:?}"
    );
}

#[test]
fn dump_restore_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let original = populated(&dir.path().join("a"));
    let dump = dump_string(&original);
    let parsed: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(parsed["schema_version"], 2);
    assert_eq!(
        parsed["tables"]["vms"][1],
        serde_json::json!([2, {"name": "db1", "memory_mib": 4096}])
    );
    assert_eq!(parsed["tables"]["users"][0][0], "alice");

    let restored = Store::open(dir.path().join("b"), V2).unwrap();
    restored.restore(dump.as_bytes()).unwrap();
    assert_eq!(dump_string(&restored), dump);
    let read = restored.read().unwrap();
    assert_eq!(
        read.iter(VMS).unwrap(),
        original.read().unwrap().iter(VMS).unwrap()
    );
    assert_eq!(
        read.get(USERS, "bob").unwrap(),
        Some(user("bob@example.com"))
    );
    drop(read);
    let mut txn = restored.write().unwrap();
    assert_eq!(
        txn.next_id(VMS).unwrap(),
        4,
        "restored sequences do not reuse ids"
    );
}

#[test]
fn restore_into_a_non_empty_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path());
    let dump = dump_string(&store);
    let err = store.restore(dump.as_bytes()).unwrap_err();
    assert!(matches!(err, StoreError::RestoreNotEmpty { .. }), "{err:?}");
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(
        dump_string(&store),
        dump,
        "the refused restore changed nothing"
    );
}

#[test]
fn restore_migrates_an_older_dump_forward() {
    let dir = tempfile::tempdir().unwrap();
    let old = Store::open(dir.path().join("old"), V0).unwrap();
    let mut txn = old.write().unwrap();
    let web1 = OldVm {
        name: "web1".to_owned(),
        memory_gib: 1,
    };
    txn.insert(OLD_VMS, &1, &web1).unwrap();
    txn.commit().unwrap();

    let new = Store::open(dir.path().join("new"), V2).unwrap();
    new.restore(dump_string(&old).as_bytes()).unwrap();
    let read = new.read().unwrap();
    assert_eq!(read.get(VMS, &1).unwrap(), Some(vm("web1", 1024)));
    assert_eq!(read.get(COUNTERS, "migration runs").unwrap(), Some(1));
    assert_eq!(migrate::stored_version(&read).unwrap(), Some(2));
}

#[test]
fn restore_refuses_bad_dumps_and_leaves_the_store_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), V2).unwrap();
    let empty = dump_string(&store);

    let cases = [
        (r#"{"schema_version":3,"tables":{}}"#, "newer"),
        (
            r#"{"schema_version":2,"tables":{"hats":[]}}"#,
            "unknown table",
        ),
        (
            r#"{"schema_version":2,"tables":{"vms":[["x",{"name":"a","memory_mib":1}]]}}"#,
            "bad key",
        ),
        (
            r#"{"schema_version":2,"tables":{"vms":[[1,{"name":"a"}]]}}"#,
            "bad value",
        ),
        (r#"{"schema_version":2}"#, "not a dump"),
    ];
    for (dump, what) in cases {
        let err = store.restore(dump.as_bytes()).unwrap_err();
        let expected = match what {
            "newer" => matches!(
                err,
                StoreError::DumpNewerSchema {
                    found: 3,
                    supported: 2
                }
            ),
            "unknown table" => {
                matches!(&err, StoreError::DumpUnknownTable { table } if table == "hats")
            }
            "bad key" => {
                matches!(&err, StoreError::DumpBadKey { table: "vms", key, .. } if key == "\"x\"")
            }
            "bad value" => {
                matches!(&err, StoreError::Decode { table: "vms", key, .. } if key == "1")
            }
            _ => matches!(err, StoreError::DumpParse { .. }),
        };
        assert!(expected, "{what}: {err:?}");
        assert_eq!(dump_string(&store), empty, "{what}: nothing was restored");
    }
}

#[test]
fn a_partially_created_file_left_by_a_crash_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    // What a kill during redb's initialisation leaves: a sized file with no header yet.
    std::fs::write(dir.path().join(PARTIAL_FILE_NAME), vec![0; 4096]).unwrap();
    let store = Store::open(dir.path(), V2).unwrap();
    assert!(!dir.path().join(PARTIAL_FILE_NAME).exists());
    assert_eq!(store.path(), dir.path().join(FILE_NAME));
    assert_eq!(store.read().unwrap().len(VMS).unwrap(), 0);
}

#[test]
fn integrity_check_passes_on_a_healthy_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = populated(dir.path());
    assert_eq!(store.check_integrity().unwrap(), Integrity::Clean);
}

/// A table declared by newer code without a migration (as `backups` and
/// `backup_schedules` were) is created when an existing store opens; the
/// data already there is untouched and the schema version stays.
#[test]
fn a_table_added_without_a_migration_is_created_at_open() {
    const NOTES: Table<u64, User> = Table::new("notes");
    const V2_NOTES: Schema = Schema::new(
        &[VMS.info(), USERS.info(), COUNTERS.info(), NOTES.info()],
        &[
            Migration::new("count migration runs", count_run),
            Migration::new("vm memory in MiB", memory_to_mib),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    drop(populated(dir.path()));
    let store = Store::open(dir.path(), V2_NOTES).unwrap();
    let read = store.read().unwrap();
    assert_eq!(read.get(VMS, &1).unwrap(), Some(vm("web1", 1024)));
    assert_eq!(read.len(NOTES).unwrap(), 0);
    drop(read);
    let mut txn = store.write().unwrap();
    let id = txn.next_id(NOTES).unwrap();
    txn.insert(NOTES, &id, &user("a note")).unwrap();
    txn.commit().unwrap();
    assert_eq!(store.read().unwrap().len(NOTES).unwrap(), 1);
}
