//! Disc backups: consistent copies of a disc, each its own sparse file,
//! restorable over the disc and deletable (the `backups` member of a
//! `disc.*` order; see `bigv_spine::backup`).
//!
//! A backup of disc `disc.GRADE.ID` with id `B` is
//! `<pool>/backups/GRADE.ID/B.raw`, in the order's `backups.pool` (a
//! cold-storage `iceberg` pool) or else the disc's own pool. The files
//! are the record: a restarted agent finds them by listing the folders.
//!
//! Taking one: new requests on the disc wait (its export's I/O gate is
//! held exclusively) while the file is cloned with `FICLONE` where the
//! filesystem shares extents (btrfs, XFS: instant). Elsewhere it is copied
//! extent by extent (SEEK_DATA/SEEK_HOLE, so holes stay holes) while the
//! disc stays in use with its writes tracked, and then, under the gate,
//! just the blocks written meanwhile are copied again: writes pause for
//! that last pass only. See docs/storage.md, "Backups".
//!
//! Restoring: the disc's clients are disconnected (its server stops and
//! its address goes), the disc's content is replaced by the backup's
//! (same way: clone, else sparse copy after punching the whole file), the
//! disc keeps its current size (past the backup's end it reads zeroes),
//! and the server starts again.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bigv_spine::ResourceName;
use bigv_spine::backup::{BackupFacts, DiscBackups, valid_backup_id};
use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};

use crate::agent::{Disc, DiscState, TailAgent};
use crate::nbd::Export;
use crate::pools::{MIB, Pools};

/// How much a sparse copy moves per read/write.
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup id {0:?}: lower-case letters, digits, '-' or '_', at most 64")]
    BadId(String),
    #[error("backups.pool: no pool {0:?} on this tail")]
    NoPool(String),
    #[error("restore: no backup {0:?} of this disc here")]
    NoBackup(String),
    #[error("restore: the disc is being migrated to another tail")]
    Migrating,
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.to_owned();
    move |source| BackupError::Io { op, path, source }
}

/// `GRADE.ID`, the folder a disc's backups live in.
fn folder_name(name: &ResourceName) -> String {
    match name {
        ResourceName::Disc { grade, id } => format!("{grade}.{id}"),
        other => other.to_string(),
    }
}

/// The folder for `name`'s backups in `pool`.
pub fn backup_dir(pools: &Pools, pool: &str, name: &ResourceName) -> Option<PathBuf> {
    pools
        .get(pool)
        .map(|p| p.path.join("backups").join(folder_name(name)))
}

/// Every backup of `name` this tail holds: (pool, id, path).
pub fn held(pools: &Pools, name: &ResourceName) -> Vec<(String, String, PathBuf)> {
    let mut out = vec![];
    for pool in pools.names() {
        let Some(dir) = backup_dir(pools, pool, name) else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "raw")
                && let Some(id) = path.file_stem().and_then(|s| s.to_str())
            {
                out.push((pool.to_owned(), id.to_owned(), path));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// What the tail reports: held backups in the order's `keep` order, then
/// any others (about to be deleted) by id.
pub fn facts(pools: &Pools, name: &ResourceName, keep: &[String]) -> Vec<BackupFacts> {
    let mut held = held(pools, name);
    held.sort_by_key(|(_, id, _)| keep.iter().position(|k| k == id).unwrap_or(usize::MAX));
    held.into_iter()
        .filter_map(|(pool, id, path)| {
            let meta = std::fs::metadata(&path).ok()?;
            Some(BackupFacts {
                id,
                pool,
                size: meta.len() / MIB,
                allocated: (meta.blocks() * 512).div_ceil(MIB),
            })
        })
        .collect()
}

/// Clones `src` over `dst` (`FICLONE`): `Ok(false)` where the filesystem
/// cannot share extents.
fn reflink(src: &File, dst: &File) -> std::io::Result<bool> {
    // SAFETY: both descriptors are open files owned by the callers for the
    // call; FICLONE reads nothing from user memory.
    let r = unsafe { nix::libc::ioctl(dst.as_raw_fd(), nix::libc::FICLONE, src.as_raw_fd()) };
    if r == 0 {
        return Ok(true);
    }
    match Errno::last() {
        Errno::EOPNOTSUPP | Errno::EXDEV | Errno::EINVAL | Errno::ENOTTY | Errno::EPERM => {
            Ok(false)
        }
        e => Err(e.into()),
    }
}

/// Copies the allocated extents of `src` (of `len` bytes) into `dst`,
/// which must read as zeroes (a new or punched file) and be `len` long.
fn sparse_copy(src: &Export, dst: &File, len: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut copied = 0;
    for (off, n) in src.data_ranges(0, len)? {
        let mut pos = off;
        let end = off + n;
        while pos < end {
            let take = ((end - pos) as usize).min(CHUNK);
            let chunk = &mut buf[..take];
            src.file().read_exact_at(chunk, pos)?;
            // An allocated block of zeroes need not be allocated again.
            if chunk.iter().any(|b| *b != 0) {
                dst.write_all_at(chunk, pos)?;
            }
            pos += take as u64;
            copied += take as u64;
        }
    }
    Ok(copied)
}

/// A backup being written: `<id>.raw.tmp`, renamed to `<id>.raw` by
/// [`Partial::seal`] once complete, so a crash never leaves a half backup
/// under a real id.
pub struct Partial {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
}

impl Partial {
    /// Creates the temporary file for the backup at `path`.
    pub fn create(path: &Path) -> Result<Partial, BackupError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        let tmp = path.with_extension("raw.tmp");
        let _ = std::fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        Ok(Partial {
            file,
            tmp,
            path: path.to_owned(),
        })
    }

    /// Sizes the backup (a sparse file: it reads as zeroes).
    pub fn set_len(&self, len: u64) -> Result<(), BackupError> {
        self.file.set_len(len).map_err(io("sizing", &self.tmp))
    }

    /// Writes `data` at `pos` (a backup arriving from another tail).
    pub fn write_at(&self, pos: u64, data: &[u8]) -> Result<(), BackupError> {
        self.file
            .write_all_at(data, pos)
            .map_err(io("writing", &self.tmp))
    }

    /// Clones the whole disc (`FICLONE`): `Ok(false)` where the filesystem
    /// cannot. The caller holds the I/O gate.
    pub fn clone_disc(&self, export: &Export) -> Result<bool, BackupError> {
        reflink(export.file(), &self.file).map_err(io("cloning into", &self.tmp))
    }

    /// Copies every allocated extent of the disc (holes stay holes).
    pub fn copy_disc(&self, export: &Export) -> Result<(), BackupError> {
        let len = export.size();
        self.set_len(len)?;
        sparse_copy(export, &self.file, len).map_err(io("copying into", &self.tmp))?;
        Ok(())
    }

    /// Copies `ranges` of the disc again (blocks written during the first
    /// copy): data as data, zeroes as holes. The caller holds the I/O gate.
    pub fn recopy(&self, export: &Export, ranges: &[(u64, u64)]) -> Result<u64, BackupError> {
        let size = export.size();
        let mut buf = vec![0u8; CHUNK];
        let mut copied = 0;
        for &(off, len) in ranges {
            let end = (off + len).min(size);
            let mut pos = off;
            while pos < end {
                let take = ((end - pos) as usize).min(CHUNK);
                let chunk = &mut buf[..take];
                export.read(pos, chunk).map_err(|e| {
                    io("reading", export.path())(std::io::Error::other(e.to_string()))
                })?;
                if chunk.iter().any(|b| *b != 0) {
                    self.file
                        .write_all_at(chunk, pos)
                        .map_err(io("writing", &self.tmp))?;
                } else {
                    fallocate(
                        &self.file,
                        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                        pos as i64,
                        take as i64,
                    )
                    .map_err(|e| io("punching", &self.tmp)(e.into()))?;
                }
                pos += take as u64;
                copied += take as u64;
            }
        }
        Ok(copied)
    }

    /// Makes the backup durable and gives it its real name.
    pub fn seal(self) -> Result<(), BackupError> {
        self.file.sync_all().map_err(io("syncing", &self.tmp))?;
        std::fs::rename(&self.tmp, &self.path).map_err(io("renaming", &self.tmp))?;
        sync_dir(&self.path)
    }

    /// Removes the temporary file after a failure.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Replaces `export`'s content with the backup at `path`, keeping the
/// export's size. The caller holds the I/O gate and has stopped serving.
pub fn restore(export: &Export, path: &Path) -> Result<&'static str, BackupError> {
    let src = File::open(path).map_err(io("opening", path))?;
    let backup_len = src.metadata().map_err(io("reading", path))?.len();
    let size = export.size();
    let disc = export.path().to_owned();
    let dst = export.file();
    let cloned = backup_len <= size && reflink(&src, dst).map_err(io("cloning over", &disc))?;
    let how = if cloned {
        // FICLONE gives the disc the backup's length; grow it back.
        dst.set_len(size).map_err(io("sizing", &disc))?;
        "reflink"
    } else {
        // Everything becomes a hole, then the backup's data lands.
        fallocate(
            dst,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            0,
            size as i64,
        )
        .map_err(|e| io("punching", &disc)(e.into()))?;
        let backup = Export::open("backup", path, true).map_err(io("opening", path))?;
        let mut buf = vec![0u8; CHUNK];
        for (off, n) in backup
            .data_ranges(0, backup_len.min(size))
            .map_err(io("reading", path))?
        {
            let mut pos = off;
            while pos < off + n {
                let take = ((off + n - pos) as usize).min(CHUNK);
                let chunk = &mut buf[..take];
                src.read_exact_at(chunk, pos).map_err(io("reading", path))?;
                if chunk.iter().any(|b| *b != 0) {
                    dst.write_all_at(chunk, pos).map_err(io("writing", &disc))?;
                }
                pos += take as u64;
            }
        }
        "sparse copy"
    };
    dst.sync_all().map_err(io("syncing", &disc))?;
    Ok(how)
}

fn sync_dir(path: &Path) -> Result<(), BackupError> {
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", dir))?;
    }
    Ok(())
}

/// Deletes one backup file.
pub fn delete(path: &Path) -> Result<(), BackupError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing", path)(e)),
    }
    sync_dir(path)
}

/// Deletes every backup of a disc (when the disc itself is removed).
pub fn delete_all(pools: &Pools, name: &ResourceName) -> Result<(), BackupError> {
    for (_, _, path) in held(pools, name) {
        delete(&path)?;
    }
    for pool in pools.names() {
        if let Some(dir) = backup_dir(pools, pool, name) {
            let _ = std::fs::remove_dir(dir);
        }
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

/// Takes a backup of `export` into `path` with its writes paused as
/// briefly as can be: a clone under the I/O gate where the filesystem
/// shares extents; else (when `tracked`: nothing else tracks the export's
/// writes) a first sparse copy while the disc stays in use, its writes
/// tracked, then under the gate a copy of just the blocks written
/// meanwhile; else the whole sparse copy under the gate. Returns how, and
/// how long writes were paused.
async fn take_paused_briefly(
    export: Arc<Export>,
    path: PathBuf,
    tracked: bool,
) -> Result<(&'static str, std::time::Duration), BackupError> {
    let partial = Arc::new(blocking(move || Partial::create(&path)).await?);
    let result = async {
        let gate = export.gate.write().await;
        let t0 = std::time::Instant::now();
        let (p, e) = (partial.clone(), export.clone());
        if blocking(move || p.clone_disc(&e)).await? {
            return Ok(("reflink", t0.elapsed()));
        }
        if !tracked {
            let (p, e) = (partial.clone(), export.clone());
            blocking(move || p.copy_disc(&e)).await?;
            return Ok(("sparse copy", t0.elapsed()));
        }
        export.start_tracking();
        drop(gate);
        let (p, e) = (partial.clone(), export.clone());
        let first = blocking(move || p.copy_disc(&e)).await;
        let gate = export.gate.write().await;
        let t1 = std::time::Instant::now();
        let dirty = export.take_dirty();
        export.stop_tracking();
        first?;
        let (p, e) = (partial.clone(), export.clone());
        let ranges = dirty.ranges();
        blocking(move || p.recopy(&e, &ranges)).await?;
        drop(gate);
        Ok((
            "sparse copy, then the blocks written meanwhile",
            t1.elapsed(),
        ))
    }
    .await;
    let partial = Arc::into_inner(partial).expect("no copy outlives its task");
    match result {
        Ok(r) => {
            blocking(move || partial.seal()).await?;
            Ok(r)
        }
        Err(e) => {
            blocking(move || partial.discard()).await;
            Err(e)
        }
    }
}

/// The `backups` of an update: the brain's new order, with the restore
/// already carried out remembered (so it is never carried out twice).
pub(crate) fn carry(old: Option<DiscBackups>, new: Option<DiscBackups>) -> Option<DiscBackups> {
    let restored_seq = old.and_then(|o| o.restored_seq);
    new.map(|n| DiscBackups {
        restored_seq,
        taken: vec![],
        error: None,
        ..n
    })
}

impl TailAgent {
    /// Fills `taken` in a report (and reports backups held even when the
    /// brain's order named none).
    pub(crate) async fn report_backups(
        &self,
        state: &DiscState,
        spec: &mut bigv_spine::resource::DiscSpec,
    ) {
        let Ok(name) = state.export.name().parse::<ResourceName>() else {
            return;
        };
        let pools = self.config().pools.clone();
        let keep = spec
            .backups
            .as_ref()
            .map(|b| b.keep.clone())
            .unwrap_or_default();
        let taken = blocking(move || facts(&pools, &name, &keep)).await;
        match spec.backups.as_mut() {
            Some(b) => b.taken = taken,
            None if !taken.is_empty() => {
                spec.backups = Some(DiscBackups {
                    taken,
                    ..DiscBackups::default()
                })
            }
            None => {}
        }
    }

    /// Carries out a disc order's `backups`: takes new ones, deletes
    /// unlisted ones, restores. A failure is reported in `backups.error`
    /// (the rest of the order stands); only a malformed order is refused.
    pub(crate) async fn apply_backups(
        &self,
        disc: &Arc<Disc>,
        state: &mut DiscState,
    ) -> Result<(), bigv_spine::OrderError> {
        let name = &disc.name;
        let Some(mut order) = state.spec.backups.clone() else {
            return Ok(());
        };
        let invalid = |m: String| {
            bigv_spine::OrderError::new(bigv_spine::ErrorCode::Invalid, format!("{name}: {m}"))
        };
        for id in order
            .keep
            .iter()
            .chain(order.restore.as_ref().map(|r| &r.from))
        {
            if !valid_backup_id(id) {
                return Err(invalid(BackupError::BadId(id.clone()).to_string()));
            }
        }
        let pools = self.config().pools.clone();
        let store_in = order.pool.clone().unwrap_or_else(|| disc.pool.clone());
        if pools.get(&store_in).is_none() {
            return Err(invalid(BackupError::NoPool(store_in).to_string()));
        }
        let result = self.backups_work(disc, state, &order, &store_in).await;
        order.error = result.err().map(|e| {
            let message = crate::error_chain(&e);
            tracing::warn!(%name, error = %message, "backup order failed");
            message
        });
        let restored = state.spec.backups.as_ref().and_then(|b| b.restored_seq);
        order.restored_seq = restored;
        order.taken = vec![];
        state.spec.backups = Some(order);
        Ok(())
    }

    async fn backups_work(
        &self,
        disc: &Arc<Disc>,
        state: &mut DiscState,
        order: &DiscBackups,
        store_in: &str,
    ) -> Result<(), BackupError> {
        let name = disc.name.clone();
        let pools = self.config().pools.clone();
        let p = pools.clone();
        let n = name.clone();
        let have = blocking(move || held(&p, &n)).await;
        // Deletions first: they free space for what is taken next.
        for (_, id, path) in &have {
            if !order.keep.contains(id) {
                let path = path.clone();
                blocking(move || delete(&path)).await?;
                tracing::info!(%name, backup = %id, "backup deleted");
            }
        }
        for id in &order.keep {
            if have.iter().any(|(_, h, _)| h == id) {
                continue;
            }
            let dir = backup_dir(&pools, store_in, &name).expect("pool checked");
            let path = dir.join(format!("{id}.raw"));
            // A running mirror owns the export's write tracking.
            let tracked = state.mirror.is_none();
            let (how, paused) = take_paused_briefly(state.export.clone(), path, tracked).await?;
            tracing::info!(%name, backup = %id, pool = store_in, how, paused_ms = paused.as_millis() as u64, "backup taken");
        }
        let done = state.spec.backups.as_ref().and_then(|b| b.restored_seq);
        if let Some(r) = &order.restore
            && done.is_none_or(|d| d < r.seq)
        {
            let p = pools.clone();
            let n = name.clone();
            let from = r.from.clone();
            let found = blocking(move || held(&p, &n))
                .await
                .into_iter()
                .find(|(_, id, _)| *id == from);
            let Some((_, _, path)) = found else {
                return Err(BackupError::NoBackup(r.from.clone()));
            };
            // The mirror would not see the restored blocks.
            if state.mirror.is_some() {
                return Err(BackupError::Migrating);
            }
            let was_serving = state.server.is_some();
            // Nobody may use a disc while its content is replaced.
            if let Err(e) = self.unserve(&name, state).await {
                tracing::warn!(%name, error = %e.message, "restore: could not stop serving");
            }
            let export = state.export.clone();
            let gate = export.gate.write().await;
            let e = export.clone();
            let result = blocking(move || restore(&e, &path)).await;
            drop(gate);
            if was_serving && let Err(e) = self.serve(&name, state).await {
                tracing::warn!(%name, error = %e.message, "restore: could not serve again");
            }
            let how = result?;
            tracing::info!(%name, backup = %r.from, seq = r.seq, how, "disc restored from backup");
            if let Some(b) = state.spec.backups.as_mut() {
                b.restored_seq = Some(r.seq);
            } else {
                state.spec.backups = Some(DiscBackups {
                    restored_seq: Some(r.seq),
                    ..DiscBackups::default()
                });
            }
        }
        Ok(())
    }
}
