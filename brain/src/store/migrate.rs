//! Schema versions and migrations.
//!
//! The schema version of a store is the number of migrations applied to it, so a [`Schema`]
//! with N migrations is version N. A new store starts at the current version: migrations
//! upgrade data written by older code and never run on a store created by this code.

use super::error::StoreError;
use super::tables::Table;
use super::txn::{Reader, SEQUENCES, WriteTxn};
use super::{Schema, Store};

/// Store-wide metadata, keyed by name.
pub(super) const META: Table<String, u64> = Table::new("meta");
const SCHEMA_VERSION: &str = "schema_version";

/// Tables the store keeps for itself; the schema may not declare tables with these names.
pub(super) const RESERVED: [&str; 2] = [META.name(), SEQUENCES.name()];

/// One step of the schema: a function run inside one write transaction, committed together
/// with the version bump, so it runs exactly once or not at all.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    name: &'static str,
    run: fn(&mut WriteTxn) -> Result<(), StoreError>,
}

impl Migration {
    pub const fn new(name: &'static str, run: fn(&mut WriteTxn) -> Result<(), StoreError>) -> Self {
        Migration { name, run }
    }

    pub const fn name(&self) -> &'static str {
        self.name
    }
}

pub(super) fn stored_version(txn: &impl Reader) -> Result<Option<u64>, StoreError> {
    txn.get(META, SCHEMA_VERSION)
}

pub(super) fn set_version(txn: &mut WriteTxn, version: u64) -> Result<(), StoreError> {
    txn.insert(META, SCHEMA_VERSION, &version)
}

/// Checks the stored schema version at open, stamps a new store, and creates any table the
/// schema declares that the store lacks. Returns the stored version.
pub(super) fn prepare(store: &Store) -> Result<u64, StoreError> {
    let (path, schema) = (store.path(), store.schema());
    let mut txn = store.write()?;
    let version = match stored_version(&txn)? {
        Some(found) if found > schema.version() => {
            return Err(StoreError::NewerSchema {
                path: path.to_owned(),
                found,
                supported: schema.version(),
            });
        }
        Some(found) => found,
        None => {
            tracing::info!(path = %path.display(), version = schema.version(), "initialising new store");
            set_version(&mut txn, schema.version())?;
            schema.version()
        }
    };
    // Opening a table in a write transaction creates it: afterwards every declared table
    // exists, so reads never meet a missing table.
    for table in schema.tables {
        txn.create_table(*table)?;
    }
    txn.create_table(SEQUENCES.info())?;
    txn.commit()?;
    Ok(version)
}

/// Applies migrations `from..` at open, each in its own committed transaction, so a crash
/// part-way resumes at the first migration not yet committed.
pub(super) fn migrate(store: &Store, from: u64) -> Result<(), StoreError> {
    let schema = store.schema();
    for (version, migration) in pending(&schema, from) {
        let mut txn = store.write()?;
        apply(&mut txn, version, migration)?;
        txn.commit()?;
        tracing::info!(path = %store.path().display(), version, migration = migration.name, "applied store migration");
    }
    Ok(())
}

/// Applies migrations `from..` inside the caller's transaction (used by restore, which commits
/// the loaded data and its upgrade together).
pub(super) fn migrate_in(txn: &mut WriteTxn, schema: &Schema, from: u64) -> Result<(), StoreError> {
    for (version, migration) in pending(schema, from) {
        apply(txn, version, migration)?;
    }
    Ok(())
}

/// The migrations still to run on a store at version `from`, each with the version it leads to.
fn pending(schema: &Schema, from: u64) -> impl Iterator<Item = (u64, &Migration)> {
    (1..)
        .zip(schema.migrations)
        .skip_while(move |(version, _)| *version <= from)
}

fn apply(txn: &mut WriteTxn, version: u64, migration: &Migration) -> Result<(), StoreError> {
    (migration.run)(txn).map_err(|source| StoreError::Migration {
        version,
        name: migration.name,
        source: Box::new(source),
    })?;
    set_version(txn, version)
}
