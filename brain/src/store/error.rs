//! The store's error type. Every variant names what was being touched (table, key, path) so a
//! log line is enough to find the record; engine errors are carried boxed as the `source`, which
//! keeps the storage engine out of the public API.

use std::path::PathBuf;

/// An error from the storage engine, kept opaque so callers do not depend on the engine.
pub type EngineError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Turns any engine error into an [`EngineError`]; used with `map_err` next to the context.
pub(super) fn engine(err: impl std::error::Error + Send + Sync + 'static) -> EngineError {
    Box::new(err)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store schema: table {table:?} {problem}")]
    InvalidSchema {
        table: &'static str,
        problem: &'static str,
    },

    #[error("cannot create store directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot create store file {}", path.display())]
    CreateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot open store {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: EngineError,
    },

    #[error(
        "store {} has schema version {found}, newer than version {supported} known to this \
         build; refusing to open it (run a newer brain, or restore a dump)",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: u64,
        supported: u64,
    },

    #[error("migration to schema version {version} ({name}) failed")]
    Migration {
        version: u64,
        name: &'static str,
        #[source]
        source: Box<StoreError>,
    },

    #[error("cannot begin a {kind} transaction")]
    Begin {
        kind: &'static str,
        #[source]
        source: EngineError,
    },

    #[error("cannot commit transaction")]
    Commit {
        #[source]
        source: EngineError,
    },

    #[error("cannot open table {table:?}")]
    Table {
        table: &'static str,
        #[source]
        source: EngineError,
    },

    #[error("cannot read key {key} from table {table:?}")]
    Read {
        table: &'static str,
        key: String,
        #[source]
        source: EngineError,
    },

    #[error("cannot scan table {table:?}")]
    Scan {
        table: &'static str,
        #[source]
        source: EngineError,
    },

    #[error("cannot write key {key} in table {table:?}")]
    Write {
        table: &'static str,
        key: String,
        #[source]
        source: EngineError,
    },

    #[error("cannot encode the value for key {key} in table {table:?}")]
    Encode {
        table: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("cannot decode the value of key {key} in table {table:?}")]
    Decode {
        table: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("the id sequence of table {table:?} is exhausted")]
    SequenceExhausted { table: &'static str },

    #[error("integrity check of store {} failed", path.display())]
    Integrity {
        path: PathBuf,
        #[source]
        source: EngineError,
    },

    #[error("cannot write the dump of store {}", path.display())]
    DumpWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot parse the dump being restored")]
    DumpParse {
        #[source]
        source: serde_json::Error,
    },

    #[error("dump has schema version {found}, newer than version {supported} known to this build")]
    DumpNewerSchema { found: u64, supported: u64 },

    #[error("dump contains table {table:?}, which this build does not know")]
    DumpUnknownTable { table: String },

    #[error("dump table {table:?} has key {key}, which is not a valid key for that table")]
    DumpBadKey {
        table: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "refusing to restore into store {}: table {table:?} is not empty (restore needs a new, \
         empty store)",
        path.display()
    )]
    RestoreNotEmpty { path: PathBuf, table: &'static str },
}
