//! Read and write transactions over typed tables.

use std::ops::RangeBounds;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{StoreError, engine};
use super::tables::{self, KeyKind, Table, TableInfo, TableKey, encode, key_context};

/// Any value, for code that handles tables without knowing their value types.
pub(super) type Json = serde_json::Value;

/// The sequence table: next id handed out per table, keyed by table name.
pub(super) const SEQUENCES: Table<String, u64> = Table::new("sequences");

/// Reads, available in both read and write transactions, so model code can be generic over
/// which one it runs in.
pub trait Reader {
    fn get<K: TableKey, V: DeserializeOwned>(
        &self,
        table: Table<K, V>,
        key: &K::Borrowed,
    ) -> Result<Option<V>, StoreError>;

    /// Entries with keys in `range`, in key order.
    fn range<K: TableKey, V: DeserializeOwned>(
        &self,
        table: Table<K, V>,
        range: impl RangeBounds<K>,
    ) -> Result<Vec<(K, V)>, StoreError>;

    /// Every entry of the table, in key order.
    fn iter<K: TableKey, V: DeserializeOwned>(
        &self,
        table: Table<K, V>,
    ) -> Result<Vec<(K, V)>, StoreError> {
        self.range(table, ..)
    }

    fn len<K: TableKey, V>(&self, table: Table<K, V>) -> Result<u64, StoreError>;
}

/// A consistent snapshot of the store.
pub struct ReadTxn {
    pub(super) txn: redb::ReadTransaction,
}

impl ReadTxn {
    fn open<K: TableKey, V>(
        &self,
        table: Table<K, V>,
    ) -> Result<redb::ReadOnlyTable<K::Engine, tables::Bytes>, StoreError> {
        self.txn
            .open_table(table.engine_def())
            .map_err(|e| table_error(table, e))
    }
}

impl Reader for ReadTxn {
    fn get<K: TableKey, V: DeserializeOwned>(
        &self,
        table: Table<K, V>,
        key: &K::Borrowed,
    ) -> Result<Option<V>, StoreError> {
        tables::get(&self.open(table)?, table, key)
    }

    fn range<K: TableKey, V: DeserializeOwned>(
        &self,
        table: Table<K, V>,
        range: impl RangeBounds<K>,
    ) -> Result<Vec<(K, V)>, StoreError> {
        tables::range(&self.open(table)?, table, range)
    }

    fn len<K: TableKey, V>(&self, table: Table<K, V>) -> Result<u64, StoreError> {
        tables::len(&self.open(table)?, table.name())
    }
}

/// A write transaction. Nothing is visible to others until [`commit`](Self::commit); dropping
/// it without committing discards every change.
pub struct WriteTxn {
    pub(super) txn: redb::WriteTransaction,
}

impl WriteTxn {
    fn open<K: TableKey, V>(
        &self,
        table: Table<K, V>,
    ) -> Result<redb::Table<'_, K::Engine, tables::Bytes>, StoreError> {
        self.txn
            .open_table(table.engine_def())
            .map_err(|e| table_error(table, e))
    }

    /// Creates the table if the store lacks it.
    pub(super) fn create_table(&self, info: TableInfo) -> Result<(), StoreError> {
        match info.key {
            KeyKind::U64 => self.open(Table::<u64, Json>::new(info.name)).map(drop),
            KeyKind::Str => self.open(Table::<String, Json>::new(info.name)).map(drop),
        }
    }

    /// Inserts or replaces the value at `key`.
    pub fn insert<K: TableKey, V: Serialize>(
        &mut self,
        table: Table<K, V>,
        key: &K::Borrowed,
        value: &V,
    ) -> Result<(), StoreError> {
        let bytes = encode(table, key, value)?;
        self.open(table)?
            .insert(K::to_engine(key), bytes.as_slice())
            .map_err(|e| StoreError::Write {
                table: table.name(),
                key: key_context(key),
                source: engine(e),
            })?;
        Ok(())
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove<K: TableKey, V>(
        &mut self,
        table: Table<K, V>,
        key: &K::Borrowed,
    ) -> Result<bool, StoreError> {
        self.open(table)?
            .remove(K::to_engine(key))
            .map(|old| old.is_some())
            .map_err(|e| StoreError::Write {
                table: table.name(),
                key: key_context(key),
                source: engine(e),
            })
    }

    /// Allocates the next id of `table`: 1, 2, 3, ... Ids are never reused, even after the
    /// record is removed, so a stale reference can never name a different record. The
    /// allocation is part of this transaction and is undone with it.
    pub fn next_id<V>(&mut self, table: Table<u64, V>) -> Result<u64, StoreError> {
        let name = table.name();
        let id = self.get(SEQUENCES, name)?.unwrap_or(1);
        let next = id
            .checked_add(1)
            .ok_or(StoreError::SequenceExhausted { table: name })?;
        self.insert(SEQUENCES, name, &next)?;
        Ok(id)
    }

    /// Commits the transaction. When this returns `Ok` the changes are on stable storage
    /// (the engine fsyncs before returning), so it is safe to acknowledge them to a client.
    pub fn commit(self) -> Result<(), StoreError> {
        self.txn
            .commit()
            .map_err(|e| StoreError::Commit { source: engine(e) })
    }
}

impl Reader for WriteTxn {
    fn get<K: TableKey, V: DeserializeOwned>(
        &self,
        table: Table<K, V>,
        key: &K::Borrowed,
    ) -> Result<Option<V>, StoreError> {
        tables::get(&self.open(table)?, table, key)
    }

    fn range<K: TableKey, V: DeserializeOwned>(
        &self,
        table: Table<K, V>,
        range: impl RangeBounds<K>,
    ) -> Result<Vec<(K, V)>, StoreError> {
        tables::range(&self.open(table)?, table, range)
    }

    fn len<K: TableKey, V>(&self, table: Table<K, V>) -> Result<u64, StoreError> {
        tables::len(&self.open(table)?, table.name())
    }
}

fn table_error<K, V>(table: Table<K, V>, err: redb::TableError) -> StoreError {
    StoreError::Table {
        table: table.name(),
        source: engine(err),
    }
}
