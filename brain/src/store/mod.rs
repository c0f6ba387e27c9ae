//! The brain's embedded store: every piece of cluster state the brain keeps.
//!
//! Built on redb (see docs/decisions.md, "Store: redb, not sled"); the engine is used only
//! inside this module, so the rest of the brain sees typed tables and transactions.
//!
//! - [`Table`] declares a typed table in one line; a [`Schema`] lists the tables and the
//!   ordered [`Migration`]s.
//! - [`Store::read`] gives a consistent snapshot, [`Store::write`] a transaction whose
//!   [`WriteTxn::commit`] is durable when it returns.
//! - [`Store::dump`] and [`Store::restore`] move the whole store through one JSON document.

mod dump;
mod error;
mod migrate;
mod tables;
mod txn;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use redb::ReadableDatabase;

pub use error::{EngineError, StoreError};
pub use migrate::Migration;
pub use tables::{Table, TableInfo, TableKey};
pub use txn::{ReadTxn, Reader, WriteTxn};

use error::engine;

/// The database file inside the store directory.
const FILE_NAME: &str = "store.redb";
/// Where a new database file is initialised before it is renamed to [`FILE_NAME`].
const PARTIAL_FILE_NAME: &str = "store.redb.partial";

/// Everything the code knows about the store's layout: the tables it declares and the
/// migrations that bring an older store up to date. The schema version is the number of
/// migrations. Keep declaring a table for as long as any migration reads it.
#[derive(Clone, Copy, Debug)]
pub struct Schema {
    tables: &'static [TableInfo],
    migrations: &'static [Migration],
}

impl Schema {
    pub const fn new(tables: &'static [TableInfo], migrations: &'static [Migration]) -> Self {
        Schema { tables, migrations }
    }

    pub const fn version(&self) -> u64 {
        self.migrations.len() as u64
    }

    fn validate(&self) -> Result<(), StoreError> {
        for (i, table) in self.tables.iter().enumerate() {
            let problem = if migrate::RESERVED.contains(&table.name) {
                "uses a name reserved by the store"
            } else if self.tables[..i].iter().any(|t| t.name == table.name) {
                "is declared twice"
            } else {
                continue;
            };
            return Err(StoreError::InvalidSchema {
                table: table.name,
                problem,
            });
        }
        Ok(())
    }
}

/// The outcome of [`Store::check_integrity`] when the store is usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Integrity {
    /// Every checksum matched.
    Clean,
    /// The check found damage and repaired it; the store is usable but worth investigating.
    Repaired,
}

/// An open store. Dropping it closes the file; the store in a directory can be open in only
/// one process at a time.
pub struct Store {
    db: redb::Database,
    path: PathBuf,
    schema: Schema,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("version", &self.schema.version())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store in directory `dir`, creating it if needed: recovers from any crash,
    /// applies pending migrations and compacts the file. Refuses a store written by newer code.
    pub fn open(dir: impl AsRef<Path>, schema: Schema) -> Result<Store, StoreError> {
        schema.validate()?;
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        if !path.exists() {
            create_file(dir, &path)?;
        }
        // Crash recovery happens here: redb repairs the file if it was not closed cleanly.
        let db = redb::Database::open(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            source: engine(e),
        })?;
        let mut store = Store { db, path, schema };
        let version = migrate::prepare(&store)?;
        migrate::migrate(&store, version)?;
        // Compaction only returns free space to the filesystem; a store that cannot be
        // compacted is still correct, so a failure must not stop the brain from starting.
        let path = store.path.display();
        match store.db.compact() {
            Ok(compacted) => tracing::debug!(path = %path, compacted, "store compaction"),
            Err(err) => tracing::warn!(path = %path, error = %err, "store compaction failed"),
        }
        tracing::info!(path = %path, version = schema.version(), "store open");
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema(&self) -> Schema {
        self.schema
    }

    pub fn read(&self) -> Result<ReadTxn, StoreError> {
        let txn = self.db.begin_read().map_err(|e| StoreError::Begin {
            kind: "read",
            source: engine(e),
        })?;
        Ok(ReadTxn { txn })
    }

    /// Begins a write transaction, waiting for any other write transaction to finish.
    pub fn write(&self) -> Result<WriteTxn, StoreError> {
        let begin_error = |source| StoreError::Begin {
            kind: "write",
            source,
        };
        let mut txn = self.db.begin_write().map_err(|e| begin_error(engine(e)))?;
        // Immediate is redb's default; set it explicitly because the API acknowledges a
        // change as soon as commit returns, which is only safe if commit has fsynced.
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| begin_error(engine(e)))?;
        Ok(WriteTxn { txn })
    }

    /// Verifies every checksum in the file (slow: reads the whole store). Needs exclusive
    /// access: fails if any transaction is open.
    pub fn check_integrity(&mut self) -> Result<Integrity, StoreError> {
        let clean = self
            .db
            .check_integrity()
            .map_err(|e| StoreError::Integrity {
                path: self.path.clone(),
                source: engine(e),
            })?;
        if clean {
            Ok(Integrity::Clean)
        } else {
            tracing::warn!(path = %self.path.display(), "store integrity check repaired damage");
            Ok(Integrity::Repaired)
        }
    }
}

/// Creates an empty database at `path`, atomically. redb initialises a new file in several
/// writes and refuses for ever a non-empty file whose header it never finished (our crash test
/// hit this when a kill landed during the very first open), so the file is initialised under
/// another name and renamed into place only once complete.
fn create_file(dir: &Path, path: &Path) -> Result<(), StoreError> {
    let partial = dir.join(PARTIAL_FILE_NAME);
    let io_error = |source| StoreError::CreateFile {
        path: partial.clone(),
        source,
    };
    match std::fs::remove_file(&partial) {
        Ok(()) => {
            tracing::warn!(path = %partial.display(), "removed a partially created store file")
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_error(err)),
    }
    let open_error = |e| StoreError::Open {
        path: partial.clone(),
        source: engine(e),
    };
    redb::Database::create(&partial)
        .map_err(open_error)?
        .close()
        .map_err(open_error)?;
    std::fs::rename(&partial, path).map_err(io_error)?;
    // The rename is durable only once the directory is synced.
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error)?;
    tracing::info!(path = %path.display(), "created store file");
    Ok(())
}
