//! The store plus the in-memory model, kept in step.

use std::borrow::Borrow;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use crate::store::{Store, StoreError, WriteTxn};

use super::{Model, Record, SCHEMA, SETTINGS, SETTINGS_KEY, Settings};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("store operation failed")]
    Store(#[source] StoreError),
    #[error("background write task failed")]
    Join(#[source] tokio::task::JoinError),
}

impl From<StoreError> for DbError {
    // Every store failure is fatal to the write in the same way; the
    // StoreError itself names the table, key and path.
    fn from(e: StoreError) -> Self {
        DbError::Store(e)
    }
}

type Apply = Box<dyn FnOnce(&mut Model) + Send>;

pub struct Db {
    store: Store,
    model: RwLock<Model>,
    /// One writer at a time, so each write sees the state it changes.
    writer: Mutex<()>,
}

/// A write in progress: reads see the state before the write; changes are
/// staged in the store transaction and reach the model only on commit.
pub struct Tx<'a> {
    model: &'a Model,
    txn: WriteTxn,
    applies: Vec<Apply>,
}

impl Tx<'_> {
    /// The state as it was when this write began (not including its own
    /// changes).
    pub fn model(&self) -> &Model {
        self.model
    }

    /// A new id for a record of type `R`, never reused.
    pub fn new_id<R: Record<Key = u64>>(&mut self) -> Result<u64, DbError> {
        Ok(self.txn.next_id(R::TABLE)?)
    }

    pub fn put<R: Record>(&mut self, record: R) -> Result<(), DbError> {
        let key = record.key();
        self.txn.insert(R::TABLE, key.borrow(), &record)?;
        self.applies
            .push(Box::new(move |m: &mut Model| m.insert(record)));
        Ok(())
    }

    pub fn delete<R: Record>(&mut self, key: R::Key) -> Result<(), DbError> {
        self.txn.remove(R::TABLE, key.borrow())?;
        self.applies
            .push(Box::new(move |m: &mut Model| m.remove::<R>(&key)));
        Ok(())
    }

    pub fn put_settings(&mut self, settings: Settings) -> Result<(), DbError> {
        self.txn.insert(SETTINGS, SETTINGS_KEY, &settings)?;
        self.applies
            .push(Box::new(move |m: &mut Model| m.settings = settings));
        Ok(())
    }
}

impl Db {
    /// Opens (or creates) the store in `dir` and loads it into memory.
    pub fn open(dir: &Path) -> Result<Db, DbError> {
        let store = Store::open(dir, SCHEMA)?;
        let model = Model::load(&store.read()?)?;
        Ok(Db {
            store,
            model: RwLock::new(model),
            writer: Mutex::new(()),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A consistent view of the whole model. Do not hold it across an
    /// `.await` or a call to [`Db::mutate`].
    pub fn read(&self) -> RwLockReadGuard<'_, Model> {
        self.model.read().expect("model lock poisoned")
    }

    /// Runs `f` as one write: its changes are committed durably, then
    /// applied to the model. If `f` fails, or the commit does, nothing
    /// changes anywhere. Blocks on the disc: call from blocking context
    /// (see [`Db::write`]).
    pub fn mutate<R, E: From<DbError>>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let _writer = self.writer.lock().expect("writer lock poisoned");
        let applies = {
            let model = self.read();
            let txn = self.store.write().map_err(DbError::from)?;
            let mut tx = Tx {
                model: &model,
                txn,
                applies: vec![],
            };
            let result = f(&mut tx)?;
            let Tx { txn, applies, .. } = tx;
            if applies.is_empty() {
                // Dropping the transaction aborts it: nothing to write.
                return Ok(result);
            }
            txn.commit().map_err(DbError::from)?;
            (result, applies)
        };
        let (result, applies) = applies;
        let mut model = self.model.write().expect("model lock poisoned");
        for apply in applies {
            apply(&mut model);
        }
        Ok(result)
    }

    /// [`Db::mutate`] on a blocking thread, for async callers.
    pub async fn write<R, E>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.mutate(f))
            .await
            .map_err(|e| E::from(DbError::Join(e)))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Account, AccountId};

    #[derive(Debug)]
    enum TestError {
        Db,
        Refused,
    }
    impl From<DbError> for TestError {
        fn from(_: DbError) -> Self {
            TestError::Db
        }
    }

    #[test]
    fn committed_writes_survive_reopen_and_failed_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path()).unwrap();
            let id = db
                .mutate(|tx| {
                    let id = AccountId(tx.new_id::<Account>()?);
                    tx.put(Account {
                        id,
                        name: "alice".into(),
                        suspended: false,
                    })?;
                    Ok::<_, TestError>(id)
                })
                .unwrap();
            assert_eq!(db.read().account(id).unwrap().name, "alice");
            let refused = db.mutate(|tx| {
                tx.put(Account {
                    id: AccountId(99),
                    name: "bob".into(),
                    suspended: false,
                })?;
                Err::<(), _>(TestError::Refused)
            });
            assert!(matches!(refused, Err(TestError::Refused)));
            assert!(db.read().account_named("bob").is_none());
        }
        let db = Db::open(dir.path()).unwrap();
        let model = db.read();
        assert!(model.account_named("alice").is_some());
        assert!(model.account_named("bob").is_none());
    }
}
