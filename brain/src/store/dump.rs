//! Logical dump and restore: the whole store as one JSON document,
//! `{"schema_version": N, "tables": {"name": [[key, value], ...], ...}}`.
//!
//! A dump is independent of the engine's file format, so it survives engine upgrades and is
//! readable by people and tools; restore runs the migrations on a dump from older code.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};

use serde::Deserialize;

use super::error::StoreError;
use super::migrate;
use super::tables::{KeyKind, Table, TableInfo, TableKey, key_context};
use super::txn::{Json, ReadTxn, Reader, SEQUENCES, WriteTxn};
use super::{Schema, Store};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Dump {
    schema_version: u64,
    tables: BTreeMap<String, Vec<(Json, Json)>>,
}

/// The tables a dump holds: the declared ones and the id sequences (so restored stores never
/// hand out an id again). `meta` is not dumped: its only entry is the schema version, which
/// the dump carries at the top.
fn dumped_tables(schema: &Schema) -> impl Iterator<Item = TableInfo> + '_ {
    std::iter::once(SEQUENCES.info()).chain(schema.tables.iter().copied())
}

impl Store {
    /// Writes every table, from one consistent snapshot, as a JSON document to `out`.
    pub fn dump(&self, out: impl Write) -> Result<(), StoreError> {
        let txn = self.read()?;
        let mut out = BufWriter::new(out);
        let io_error = |source| StoreError::DumpWrite {
            path: self.path().to_owned(),
            source,
        };
        write!(
            out,
            "{{\"schema_version\":{},\"tables\":{{",
            self.schema().version()
        )
        .map_err(io_error)?;
        for (i, info) in dumped_tables(&self.schema).enumerate() {
            let separator = if i == 0 { "" } else { "," };
            writeln!(out, "{separator}").map_err(io_error)?;
            serde_json::to_writer(&mut out, info.name()).map_err(|e| io_error(e.into()))?;
            write!(out, ":[").map_err(io_error)?;
            match info.key {
                KeyKind::U64 => dump_table::<u64>(&txn, info, &mut out, io_error)?,
                KeyKind::Str => dump_table::<String>(&txn, info, &mut out, io_error)?,
            }
            write!(out, "]").map_err(io_error)?;
        }
        writeln!(out, "\n}}}}").map_err(io_error)?;
        out.flush().map_err(io_error)
    }

    /// Loads a document written by [`dump`](Self::dump) into this store, which must be empty
    /// (freshly created). A dump from older code is migrated forward. Everything happens in
    /// one transaction: on any error the store is left empty.
    pub fn restore(&self, input: impl Read) -> Result<(), StoreError> {
        let dump: Dump = serde_json::from_reader(BufReader::new(input))
            .map_err(|source| StoreError::DumpParse { source })?;
        let supported = self.schema().version();
        if dump.schema_version > supported {
            return Err(StoreError::DumpNewerSchema {
                found: dump.schema_version,
                supported,
            });
        }
        let known: Vec<TableInfo> = dumped_tables(&self.schema).collect();
        let mut loads = Vec::new();
        for (name, entries) in dump.tables {
            let Some(info) = known.iter().find(|t| t.name == name) else {
                return Err(StoreError::DumpUnknownTable { table: name });
            };
            loads.push((*info, entries));
        }

        let mut txn = self.write()?;
        for info in &known {
            let len = match info.key {
                KeyKind::U64 => txn.len(Table::<u64, Json>::new(info.name))?,
                KeyKind::Str => txn.len(Table::<String, Json>::new(info.name))?,
            };
            if len > 0 {
                return Err(StoreError::RestoreNotEmpty {
                    path: self.path().to_owned(),
                    table: info.name,
                });
            }
        }
        let mut records = 0;
        for (info, entries) in loads {
            records += entries.len();
            match info.key {
                KeyKind::U64 => load_table::<u64>(&mut txn, info, entries)?,
                KeyKind::Str => load_table::<String>(&mut txn, info, entries)?,
            }
        }
        migrate::set_version(&mut txn, dump.schema_version)?;
        migrate::migrate_in(&mut txn, &self.schema, dump.schema_version)?;
        // Only now, after any migration, must every value have the shape the code expects.
        for info in &known {
            match info.key {
                KeyKind::U64 => check_table::<u64>(&txn, *info)?,
                KeyKind::Str => check_table::<String>(&txn, *info)?,
            }
        }
        txn.commit()?;
        tracing::info!(
            path = %self.path().display(),
            from_version = dump.schema_version,
            records,
            "store restored from dump"
        );
        Ok(())
    }
}

fn dump_table<K: TableKey>(
    txn: &ReadTxn,
    info: TableInfo,
    out: &mut impl Write,
    io_error: impl Fn(std::io::Error) -> StoreError,
) -> Result<(), StoreError> {
    for (i, entry) in txn
        .iter(Table::<K, Json>::new(info.name))?
        .iter()
        .enumerate()
    {
        let separator = if i == 0 { "" } else { "," };
        writeln!(out, "{separator}").map_err(&io_error)?;
        serde_json::to_writer(&mut *out, entry).map_err(|e| io_error(e.into()))?;
    }
    Ok(())
}

fn load_table<K: TableKey>(
    txn: &mut WriteTxn,
    info: TableInfo,
    entries: Vec<(Json, Json)>,
) -> Result<(), StoreError> {
    let table = Table::<K, Json>::new(info.name);
    for (key, value) in entries {
        let key = K::deserialize(&key).map_err(|source| StoreError::DumpBadKey {
            table: info.name,
            key: key.to_string(),
            source,
        })?;
        txn.insert(table, key.borrow(), &value)?;
    }
    Ok(())
}

fn check_table<K: TableKey>(txn: &WriteTxn, info: TableInfo) -> Result<(), StoreError> {
    for (key, value) in txn.iter(Table::<K, Json>::new(info.name))? {
        (info.check_value)(&value).map_err(|source| StoreError::Decode {
            table: info.name,
            key: key_context(&key),
            source,
        })?;
    }
    Ok(())
}
