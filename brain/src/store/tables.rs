//! Typed table descriptors and the typed reads shared by both kinds of transaction.
//!
//! A table is declared once as a constant, e.g.
//! `pub const VMS: Table<u64, Vm> = Table::new("vms");`, and listed in the
//! [`Schema`](super::Schema). Keys are `u64` ids or strings; values are any serde type, stored
//! as JSON.

use std::borrow::Borrow;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use redb::ReadableTableMetadata;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{StoreError, engine};

/// Values are stored as the JSON bytes of the serde value.
pub(super) type Bytes = &'static [u8];

/// The engine's description of a table with key type `K`.
pub(super) type EngineDef<K> =
    redb::TableDefinition<'static, <K as sealed::EngineKey>::Engine, Bytes>;

/// A key type a table can use: `u64` (ids) or `String` (names). Sealed: the engine must know how
/// to store and order each key type.
pub trait TableKey:
    sealed::EngineKey + Borrow<Self::Borrowed> + Clone + Ord + Debug + Serialize + DeserializeOwned
{
}

impl TableKey for u64 {}
impl TableKey for String {}

pub(super) use sealed::KeyKind;

// Public items in a private module: callers can use `TableKey` but cannot implement it or
// name these.
mod sealed {
    use std::fmt::Debug;

    /// The key type of a table, for code that handles tables without knowing their types
    /// (dump, restore).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum KeyKind {
        U64,
        Str,
    }

    /// How a [`TableKey`](super::TableKey) maps onto the engine's key types.
    pub trait EngineKey: Sized + 'static {
        /// What lookups take: `u64` for ids, `str` for names.
        type Borrowed: ?Sized + Debug;
        type Engine: redb::Key + 'static;
        const KIND: KeyKind;

        fn to_engine(key: &Self::Borrowed) -> <Self::Engine as redb::Value>::SelfType<'_>;
        fn from_engine(key: <Self::Engine as redb::Value>::SelfType<'_>) -> Self;
    }

    impl EngineKey for u64 {
        type Borrowed = u64;
        type Engine = u64;
        const KIND: KeyKind = KeyKind::U64;

        fn to_engine(key: &u64) -> u64 {
            *key
        }
        fn from_engine(key: u64) -> u64 {
            key
        }
    }

    impl EngineKey for String {
        type Borrowed = str;
        type Engine = &'static str;
        const KIND: KeyKind = KeyKind::Str;

        fn to_engine(key: &str) -> &str {
            key
        }
        fn from_engine(key: &str) -> String {
            key.to_owned()
        }
    }
}

/// A typed table: keys of type `K`, values of type `V` stored as JSON.
pub struct Table<K, V> {
    name: &'static str,
    types: PhantomData<fn() -> (K, V)>,
}

// Manual impls: deriving would needlessly require `K: Copy, V: Copy`.
impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Table<K, V> {}

impl<K, V> Debug for Table<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Table").field(&self.name).finish()
    }
}

impl<K, V> Table<K, V> {
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<K: TableKey, V> Table<K, V> {
    pub(super) const fn engine_def(&self) -> EngineDef<K> {
        redb::TableDefinition::new(self.name)
    }
}

impl<K: TableKey, V: Serialize + DeserializeOwned> Table<K, V> {
    pub const fn new(name: &'static str) -> Self {
        Table {
            name,
            types: PhantomData,
        }
    }

    /// This table with its types erased, for listing in a [`Schema`](super::Schema).
    pub const fn info(&self) -> TableInfo {
        TableInfo {
            name: self.name,
            key: K::KIND,
            check_value: decodes_as::<V>,
        }
    }
}

fn decodes_as<V: DeserializeOwned>(value: &serde_json::Value) -> Result<(), serde_json::Error> {
    V::deserialize(value).map(drop)
}

/// A table with its types erased, as listed in a [`Schema`](super::Schema).
#[derive(Clone, Copy, Debug)]
pub struct TableInfo {
    pub(super) name: &'static str,
    pub(super) key: KeyKind,
    /// Checks that a JSON value decodes as the table's value type (used by restore).
    pub(super) check_value: fn(&serde_json::Value) -> Result<(), serde_json::Error>,
}

impl TableInfo {
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

/// Formats a key for error context.
pub(super) fn key_context(key: &(impl Debug + ?Sized)) -> String {
    format!("{key:?}")
}

pub(super) fn get<K: TableKey, V: DeserializeOwned>(
    engine_table: &impl redb::ReadableTable<K::Engine, Bytes>,
    table: Table<K, V>,
    key: &K::Borrowed,
) -> Result<Option<V>, StoreError> {
    let found = engine_table
        .get(K::to_engine(key))
        .map_err(|e| StoreError::Read {
            table: table.name,
            key: key_context(key),
            source: engine(e),
        })?;
    found
        .map(|bytes| decode(table, key, bytes.value()))
        .transpose()
}

pub(super) fn range<K: TableKey, V: DeserializeOwned>(
    engine_table: &impl redb::ReadableTable<K::Engine, Bytes>,
    table: Table<K, V>,
    range: impl RangeBounds<K>,
) -> Result<Vec<(K, V)>, StoreError> {
    let scan_error = |e| StoreError::Scan {
        table: table.name,
        source: engine(e),
    };
    let bounds = (
        engine_bound::<K>(range.start_bound()),
        engine_bound::<K>(range.end_bound()),
    );
    let mut entries = Vec::new();
    for entry in engine_table.range(bounds).map_err(scan_error)? {
        let (key, value) = entry.map_err(scan_error)?;
        let key = K::from_engine(key.value());
        let value = decode(table, key.borrow(), value.value())?;
        entries.push((key, value));
    }
    Ok(entries)
}

pub(super) fn len(
    engine_table: &impl ReadableTableMetadata,
    table: &'static str,
) -> Result<u64, StoreError> {
    engine_table.len().map_err(|e| StoreError::Scan {
        table,
        source: engine(e),
    })
}

fn engine_bound<K: TableKey>(bound: Bound<&K>) -> Bound<<K::Engine as redb::Value>::SelfType<'_>> {
    bound.map(|key| K::to_engine(key.borrow()))
}

fn decode<K: TableKey, V: DeserializeOwned>(
    table: Table<K, V>,
    key: &K::Borrowed,
    bytes: &[u8],
) -> Result<V, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        table: table.name,
        key: key_context(key),
        source,
    })
}

pub(super) fn encode<K: TableKey, V: Serialize>(
    table: Table<K, V>,
    key: &K::Borrowed,
    value: &V,
) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        table: table.name,
        key: key_context(key),
        source,
    })
}
