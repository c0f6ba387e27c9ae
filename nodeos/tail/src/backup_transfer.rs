//! A disc's backups travel with it when it migrates to another tail.
//!
//! Before the disc's own copy starts, the source sends every backup it
//! holds of the disc over the mirror connection, as `NBD_CMD_BIGV_BACKUP`
//! pieces (a [`BackupChunk`]: backup id, its size, data at the request's
//! offset; holes are not sent), each backup ending with a `seal` piece
//! once all its pieces are answered. The destination writes them to
//! `<id>.raw.tmp` in its backup folder for the disc and renames that to
//! `<id>.raw` at the seal, so it never holds a half backup under a real
//! id. It then reports them in `backups.taken` like any other, and the
//! brain records that they moved. Backups are never written to once
//! taken, so one pass is enough.
//!
//! Sent only when the brain says the destination understands the command
//! (`migrate_to.backups`); otherwise they stay behind and are lost, as
//! with tails before protocol 4.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bigv_spine::ResourceName;
use bigv_spine::backup::valid_backup_id;

use crate::backups::{Partial, held};
use crate::nbd::protocol::{BackupChunk, Command, NbdErrno};
use crate::nbd::server::BackupSink;
use crate::nbd::{ClientError, NbdClient};
use crate::pools::Pools;

/// Data per piece.
pub const PIECE: u64 = 4 << 20;
/// Pieces in flight.
const WINDOW: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("backup {id}: reading {path}")]
    Read {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("backup {id}: the destination")]
    Destination {
        id: String,
        #[source]
        source: ClientError,
    },
}

/// Sends every backup of `name` this tail holds to the mirror destination
/// behind `client`; returns how many and their bytes of data.
pub async fn send_all(
    pools: &Pools,
    name: &ResourceName,
    client: &mut NbdClient,
) -> Result<(usize, u64), TransferError> {
    let (p, n) = (pools.clone(), name.clone());
    let backups = tokio::task::spawn_blocking(move || held(&p, &n))
        .await
        .expect("listing backups panicked");
    let mut bytes = 0;
    for (_, id, path) in &backups {
        bytes += send_one(id, path, client).await?;
        tracing::info!(disc = %name, backup = %id, "backup sent to the destination");
    }
    Ok((backups.len(), bytes))
}

async fn send_one(id: &str, path: &Path, client: &mut NbdClient) -> Result<u64, TransferError> {
    let read_err = |source| TransferError::Read {
        id: id.to_owned(),
        path: path.to_owned(),
        source,
    };
    let dest_err = |source| TransferError::Destination {
        id: id.to_owned(),
        source,
    };
    let file = std::sync::Arc::new(File::open(path).map_err(read_err)?);
    let size = file.metadata().map_err(read_err)?.len();
    let f = file.clone();
    let ranges =
        tokio::task::spawn_blocking(move || crate::nbd::export::data_ranges(f.as_fd(), 0, size))
            .await
            .expect("listing extents panicked")
            .map_err(read_err)?;
    let mut sent = 0;
    for (start, len) in ranges {
        let mut pos = start;
        while pos < start + len {
            let take = (start + len - pos).min(PIECE);
            let f = file.clone();
            let data = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; take as usize];
                f.read_exact_at(&mut buf, pos).map(|()| buf)
            })
            .await
            .expect("reading panicked")
            .map_err(read_err)?;
            // An allocated block of zeroes need not be allocated there.
            if data.iter().any(|b| *b != 0) {
                if client.in_flight() >= WINDOW {
                    client.complete().await.map_err(dest_err)?;
                }
                let chunk = BackupChunk {
                    id,
                    size,
                    seal: false,
                    data: &data,
                };
                submit(client, pos, &chunk).await.map_err(dest_err)?;
                sent += take;
            }
            pos += take;
        }
    }
    while client.in_flight() > 0 {
        client.complete().await.map_err(dest_err)?;
    }
    let seal = BackupChunk {
        id,
        size,
        seal: true,
        data: &[],
    };
    submit(client, 0, &seal).await.map_err(dest_err)?;
    client.complete().await.map_err(dest_err)?;
    Ok(sent)
}

async fn submit(
    client: &mut NbdClient,
    offset: u64,
    chunk: &BackupChunk<'_>,
) -> Result<u64, ClientError> {
    let payload = chunk.encode();
    let length = u32::try_from(payload.len()).expect("a piece is far below 4 GiB");
    client
        .submit(Command::Backup, 0, offset, length, Some(&payload))
        .await
}

/// The destination's side: backups arriving for one disc, stored in `dir`
/// (its backup folder in the pool the brain ordered for backups).
pub struct IncomingBackups {
    dir: PathBuf,
    open: Mutex<HashMap<String, (u64, Partial)>>,
}

impl IncomingBackups {
    pub fn new(dir: PathBuf) -> IncomingBackups {
        IncomingBackups {
            dir,
            open: Mutex::new(HashMap::new()),
        }
    }
}

impl BackupSink for IncomingBackups {
    fn receive(&self, offset: u64, chunk: &BackupChunk<'_>) -> Result<(), (NbdErrno, String)> {
        let inval = |m: String| (NbdErrno::Inval, m);
        if !valid_backup_id(chunk.id) {
            return Err(inval(format!("backup id {:?} is not a valid id", chunk.id)));
        }
        let io = |e: crate::backups::BackupError| (NbdErrno::Io, crate::error_chain(&e));
        let mut open = self.open.lock().expect("incoming backups poisoned");
        if chunk.seal {
            let Some((_, partial)) = open.remove(chunk.id) else {
                // Sealed already (a resent seal) or an empty backup.
                let path = self.dir.join(format!("{}.raw", chunk.id));
                if path.exists() {
                    return Ok(());
                }
                let partial = Partial::create(&path).map_err(io)?;
                partial.set_len(chunk.size).map_err(io)?;
                return partial.seal().map_err(io);
            };
            return partial.seal().map_err(io);
        }
        let end = offset.checked_add(chunk.data.len() as u64);
        if end.is_none_or(|end| end > chunk.size) {
            return Err(inval(format!(
                "backup {}: {} bytes at {offset} run past its size {}",
                chunk.id,
                chunk.data.len(),
                chunk.size
            )));
        }
        if !open.contains_key(chunk.id) {
            let partial =
                Partial::create(&self.dir.join(format!("{}.raw", chunk.id))).map_err(io)?;
            partial.set_len(chunk.size).map_err(io)?;
            open.insert(chunk.id.to_owned(), (chunk.size, partial));
        }
        let (size, partial) = open.get(chunk.id).expect("inserted");
        if *size != chunk.size {
            return Err(inval(format!(
                "backup {}: size {} after {size}",
                chunk.id, chunk.size
            )));
        }
        partial.write_at(offset, chunk.data).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece<'a>(id: &'a str, size: u64, data: &'a [u8]) -> BackupChunk<'a> {
        BackupChunk {
            id,
            size,
            seal: false,
            data,
        }
    }

    #[test]
    fn a_backup_appears_under_its_id_only_when_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let sink = IncomingBackups::new(dir.path().join("sata.1"));
        sink.receive(4096, &piece("b1", 1 << 20, b"hello")).unwrap();
        let path = dir.path().join("sata.1/b1.raw");
        assert!(!path.exists(), "a half backup must not look whole");
        sink.receive(
            0,
            &BackupChunk {
                seal: true,
                ..piece("b1", 1 << 20, b"")
            },
        )
        .unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), 1 << 20);
        assert_eq!(&got[4096..4101], b"hello");
        assert!(got[..4096].iter().all(|b| *b == 0));
    }

    #[test]
    fn bad_pieces_are_refused_naming_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let sink = IncomingBackups::new(dir.path().to_owned());
        let e = sink.receive(0, &piece("../x", 10, b"a")).unwrap_err();
        assert_eq!(e.0, NbdErrno::Inval);
        assert!(e.1.contains("backup id"), "{}", e.1);
        let e = sink.receive(8, &piece("b2", 10, b"abc")).unwrap_err();
        assert!(e.1.contains("past its size"), "{}", e.1);
        let e = sink
            .receive(u64::MAX, &piece("b2", 10, b"abc"))
            .unwrap_err();
        assert!(e.1.contains("past its size"), "{}", e.1);
        sink.receive(0, &piece("b2", 10, b"abc")).unwrap();
        let e = sink.receive(0, &piece("b2", 20, b"abc")).unwrap_err();
        assert!(e.1.contains("size 20 after 10"), "{}", e.1);
    }

    #[test]
    fn an_empty_backup_arrives_as_a_seal_alone() {
        let dir = tempfile::tempdir().unwrap();
        let sink = IncomingBackups::new(dir.path().to_owned());
        sink.receive(
            0,
            &BackupChunk {
                seal: true,
                ..piece("e", 1 << 20, b"")
            },
        )
        .unwrap();
        let meta = std::fs::metadata(dir.path().join("e.raw")).unwrap();
        assert_eq!(meta.len(), 1 << 20);
    }
}
