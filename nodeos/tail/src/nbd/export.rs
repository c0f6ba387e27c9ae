//! One disc as the NBD server sees it: a sparse file, read and written
//! with positional I/O, holes punched with `fallocate`, allocation found
//! with `SEEK_DATA`/`SEEK_HOLE`.
//!
//! Every method here blocks; the server calls them from
//! `spawn_blocking`. The export also carries what a live mirror needs: a
//! dirty map of blocks written since tracking began, and an I/O gate the
//! mirror closes for its final pass.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};
use nix::unistd::{Whence, lseek};

use super::protocol::{Extent, STATE_HOLE, STATE_ZERO};

/// Why an I/O request on an export failed; the server maps each to an
/// NBD error value.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{op} at {offset}+{length} is beyond the end of the disc ({size} bytes)")]
    OutOfRange {
        op: &'static str,
        offset: u64,
        length: u64,
        size: u64,
    },
    #[error("{op} refused: the export is read-only")]
    ReadOnly { op: &'static str },
    #[error("{op} at {offset}+{length} on {path}")]
    Io {
        op: &'static str,
        offset: u64,
        length: u64,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Dirty-block granularity for mirroring.
pub const DIRTY_BLOCK: u64 = 64 << 10;

/// Blocks written since tracking began, one bit per [`DIRTY_BLOCK`].
#[derive(Debug, Default)]
pub struct DirtyMap {
    words: Vec<u64>,
    count: u64,
}

impl DirtyMap {
    pub fn new(size: u64) -> Self {
        let blocks = size.div_ceil(DIRTY_BLOCK);
        DirtyMap {
            words: vec![0; blocks.div_ceil(64) as usize],
            count: 0,
        }
    }

    pub fn mark(&mut self, offset: u64, length: u64) {
        if length == 0 {
            return;
        }
        let first = offset / DIRTY_BLOCK;
        let last = (offset + length - 1) / DIRTY_BLOCK;
        for block in first..=last {
            let (w, b) = ((block / 64) as usize, block % 64);
            if w >= self.words.len() {
                self.words.resize(w + 1, 0);
            }
            if self.words[w] & (1 << b) == 0 {
                self.words[w] |= 1 << b;
                self.count += 1;
            }
        }
    }

    /// How many blocks are dirty.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Dirty ranges as (offset, length), adjacent blocks merged.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = vec![];
        for (w, word) in self.words.iter().enumerate() {
            if *word == 0 {
                continue;
            }
            for b in 0..64 {
                if word & (1 << b) != 0 {
                    let off = (w as u64 * 64 + b) * DIRTY_BLOCK;
                    match out.last_mut() {
                        Some((o, l)) if *o + *l == off => *l += DIRTY_BLOCK,
                        _ => out.push((off, DIRTY_BLOCK)),
                    }
                }
            }
        }
        out
    }
}

/// An exported disc.
#[derive(Debug)]
pub struct Export {
    name: String,
    path: PathBuf,
    file: File,
    size: AtomicU64,
    read_only: bool,
    dirty: Mutex<Option<DirtyMap>>,
    /// Set when the disc has been handed to another tail: requests still
    /// queued are dropped unanswered (the client resends them to the new
    /// server after reconnecting) instead of landing here.
    fenced: std::sync::atomic::AtomicBool,
    /// Cleared the first time the filesystem refuses `RWF_NOWAIT` writes
    /// (ext4 does, for buffered writes), so they are not tried again.
    nowait_writes: std::sync::atomic::AtomicBool,
    /// Requests hold it shared; the mirror holds it exclusively to pause
    /// I/O for its final pass.
    pub(crate) gate: tokio::sync::RwLock<()>,
}

impl Export {
    /// Opens an existing file; its length is the disc size.
    pub fn open(name: impl Into<String>, path: &Path, read_only: bool) -> std::io::Result<Export> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let size = file.metadata()?.len();
        Ok(Export {
            name: name.into(),
            path: path.to_owned(),
            file,
            size: AtomicU64::new(size),
            read_only,
            dirty: Mutex::new(None),
            fenced: std::sync::atomic::AtomicBool::new(false),
            nowait_writes: std::sync::atomic::AtomicBool::new(true),
            gate: tokio::sync::RwLock::new(()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Changes the disc's size (the file's length). Clients see the new
    /// size when they next connect.
    pub fn resize(&self, size: u64) -> std::io::Result<()> {
        self.file.set_len(size)?;
        self.file.sync_all()?;
        self.size.store(size, Ordering::Release);
        Ok(())
    }

    fn check(&self, op: &'static str, offset: u64, length: u64) -> Result<(), ExportError> {
        let size = self.size();
        match offset.checked_add(length) {
            Some(end) if end <= size => Ok(()),
            _ => Err(ExportError::OutOfRange {
                op,
                offset,
                length,
                size,
            }),
        }
    }

    fn check_writable(&self, op: &'static str) -> Result<(), ExportError> {
        if self.read_only {
            Err(ExportError::ReadOnly { op })
        } else {
            Ok(())
        }
    }

    fn io_err(
        &self,
        op: &'static str,
        offset: u64,
        length: u64,
        source: std::io::Error,
    ) -> ExportError {
        ExportError::Io {
            op,
            offset,
            length,
            path: self.path.clone(),
            source,
        }
    }

    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExportError> {
        let len = buf.len() as u64;
        self.check("read", offset, len)?;
        // The file may be shorter than the disc only transiently (resize);
        // read_exact_at would fail there, so read what exists and zero the rest.
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err("read", offset, len, e)),
            }
        }
        Ok(())
    }

    /// Reads only what the page cache already holds, without blocking
    /// (`preadv2` with `RWF_NOWAIT`): `Ok(true)` if `buf` was filled. The
    /// server tries this on its own thread first and hands the read to a
    /// blocking thread only when it would wait for the disc.
    pub fn read_cached(&self, offset: u64, buf: &mut [u8]) -> Result<bool, ExportError> {
        use std::os::fd::AsRawFd;
        self.check("read", offset, buf.len() as u64)?;
        let Ok(off) = i64::try_from(offset) else {
            return Ok(false);
        };
        let iov = nix::libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: `iov` describes `buf`, which is valid for writes of its
        // whole length and outlives the call; the descriptor is owned by
        // `self.file` and open for the duration.
        let n = unsafe {
            nix::libc::preadv2(self.file.as_raw_fd(), &iov, 1, off, nix::libc::RWF_NOWAIT)
        };
        // Short, EAGAIN (not cached), EOPNOTSUPP (old kernel or fs): the
        // caller reads the blocking way.
        Ok(n >= 0 && n as usize == buf.len())
    }

    /// Writes into the page cache only if that needs no waiting
    /// (`pwritev2` with `RWF_NOWAIT`): `Ok(true)` if all of `data` was
    /// written (and marked dirty for a mirror). Otherwise the caller does
    /// a blocking [`Export::write`] of the whole range (rewriting any part
    /// written here with the same bytes).
    pub fn write_cached(&self, offset: u64, data: &[u8]) -> Result<bool, ExportError> {
        use std::os::fd::AsRawFd;
        self.check_writable("write")?;
        self.check("write", offset, data.len() as u64)?;
        let Ok(off) = i64::try_from(offset) else {
            return Ok(false);
        };
        if !self.nowait_writes.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let iov = nix::libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        };
        // SAFETY: `iov` describes `data`, valid for reads of its whole
        // length for the call (the kernel only reads from it); the
        // descriptor is owned by `self.file`.
        let n = unsafe {
            nix::libc::pwritev2(self.file.as_raw_fd(), &iov, 1, off, nix::libc::RWF_NOWAIT)
        };
        if n >= 0 && n as usize == data.len() {
            self.mark_dirty(offset, data.len() as u64);
            return Ok(true);
        }
        if n < 0 && Errno::last() == Errno::EOPNOTSUPP {
            self.nowait_writes.store(false, Ordering::Relaxed);
        }
        Ok(false)
    }

    /// Whether a WRITE of `[offset, offset+length)` may go ahead (for a
    /// payload written by other means than [`Export::write`], which then
    /// calls [`Export::written`]).
    pub fn check_write(&self, offset: u64, length: u64) -> Result<(), ExportError> {
        self.check_writable("write")?;
        self.check("write", offset, length)
    }

    /// Records a write done by other means (for a mirror's dirty map).
    pub fn written(&self, offset: u64, length: u64) {
        self.mark_dirty(offset, length);
    }

    pub fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ExportError> {
        let len = data.len() as u64;
        self.check_writable("write")?;
        self.check("write", offset, len)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| self.io_err("write", offset, len, e))?;
        if fua {
            self.flush()?;
        }
        self.mark_dirty(offset, len);
        Ok(())
    }

    /// Starts writeback of `[offset, offset+length)` without waiting for
    /// it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so a later FLUSH
    /// has less left to do. Best effort: errors surface at the FLUSH.
    pub fn write_behind(&self, offset: u64, length: u64) {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on a descriptor we own.
        unsafe {
            nix::libc::sync_file_range(
                self.file.as_raw_fd(),
                offset as i64,
                length as i64,
                nix::libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }

    /// Makes every completed write durable.
    pub fn flush(&self) -> Result<(), ExportError> {
        if self.read_only {
            return Ok(());
        }
        nix::unistd::fdatasync(self.file.as_fd()).map_err(|e| self.io_err("flush", 0, 0, e.into()))
    }

    /// Deallocates a range (NBD TRIM); it then reads as zeroes.
    pub fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<(), ExportError> {
        self.check_writable("trim")?;
        self.check("trim", offset, length)?;
        self.punch(offset, length)
            .map_err(|e| self.io_err("trim", offset, length, e))?;
        if fua {
            self.flush()?;
        }
        self.mark_dirty(offset, length);
        Ok(())
    }

    /// Zeroes a range; a hole unless `no_hole` asks for allocated zeroes.
    pub fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        no_hole: bool,
        fua: bool,
    ) -> Result<(), ExportError> {
        self.check_writable("write_zeroes")?;
        self.check("write_zeroes", offset, length)?;
        let result = if no_hole {
            self.zero_allocated(offset, length)
        } else {
            self.punch(offset, length)
        };
        result.map_err(|e| self.io_err("write_zeroes", offset, length, e))?;
        if fua {
            self.flush()?;
        }
        self.mark_dirty(offset, length);
        Ok(())
    }

    fn punch(&self, offset: u64, length: u64) -> std::io::Result<()> {
        if length == 0 || !self.has_data(offset, offset + length)? {
            // Already a hole: punching would take the inode's lock and a
            // journal transaction for nothing (a mirror's first pass sends
            // a WRITE_ZEROES for every hole of the source).
            return Ok(());
        }
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(self.file.as_fd(), flags, offset as i64, length as i64) {
            Ok(()) => Ok(()),
            // A filesystem without hole punching still has to read zeroes.
            Err(Errno::EOPNOTSUPP) => self.write_zero_bytes(offset, length),
            Err(e) => Err(e.into()),
        }
    }

    fn zero_allocated(&self, offset: u64, length: u64) -> std::io::Result<()> {
        if length == 0 {
            return Ok(());
        }
        let flags = FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(self.file.as_fd(), flags, offset as i64, length as i64) {
            Ok(()) => Ok(()),
            Err(Errno::EOPNOTSUPP) => self.write_zero_bytes(offset, length),
            Err(e) => Err(e.into()),
        }
    }

    fn write_zero_bytes(&self, offset: u64, length: u64) -> std::io::Result<()> {
        let zeroes = vec![0u8; length.min(1 << 20) as usize];
        let mut done = 0;
        while done < length {
            let n = (length - done).min(zeroes.len() as u64);
            self.file
                .write_all_at(&zeroes[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }

    /// `base:allocation` for `[offset, offset+length)`: at most
    /// `max_extents` extents, covering at least some of the range.
    pub fn extents(
        &self,
        offset: u64,
        length: u64,
        max_extents: usize,
    ) -> Result<Vec<Extent>, ExportError> {
        self.check("block_status", offset, length)?;
        let end = offset + length;
        let mut out = vec![];
        let mut pos = offset;
        while pos < end && out.len() < max_extents {
            let (data, next) = self
                .next_boundary(pos, end)
                .map_err(|e| self.io_err("block_status", offset, length, e))?;
            // An extent length is 32 bits; split longer runs.
            let len = (next - pos).min(u64::from(u32::MAX) & !4095);
            let flags = if data { 0 } else { STATE_HOLE | STATE_ZERO };
            match out.last_mut() {
                Some(Extent { length, flags: f })
                    if *f == flags && u64::from(*length) + len <= u64::from(u32::MAX) =>
                {
                    *length += len as u32
                }
                _ => out.push(Extent {
                    length: len as u32,
                    flags,
                }),
            }
            pos += len;
        }
        Ok(out)
    }

    /// Allocated ranges within `[offset, end)` as (offset, length).
    pub fn data_ranges(&self, offset: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
        data_ranges(self.file.as_fd(), offset, end)
    }

    /// Whether any of `[offset, end)` is data (`SEEK_DATA`; unwritten
    /// extents, which read as zeroes, count as holes).
    fn has_data(&self, offset: u64, end: u64) -> std::io::Result<bool> {
        match lseek(self.file.as_fd(), offset as i64, Whence::SeekData) {
            Ok(d) => Ok((d as u64) < end),
            Err(Errno::ENXIO) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `pos` is in data, and where that run ends (capped at `end`).
    fn next_boundary(&self, pos: u64, end: u64) -> std::io::Result<(bool, u64)> {
        next_boundary(self.file.as_fd(), pos, end)
    }

    /// See the `fenced` field; only while the I/O gate is held exclusively.
    pub fn set_fenced(&self, fenced: bool) {
        self.fenced.store(fenced, Ordering::Release);
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// Starts recording written blocks (for a mirror).
    pub fn start_tracking(&self) {
        *self.dirty.lock().expect("dirty map poisoned") = Some(DirtyMap::new(self.size()));
    }

    /// Takes the blocks written since the last call, leaving tracking on.
    pub fn take_dirty(&self) -> DirtyMap {
        let mut dirty = self.dirty.lock().expect("dirty map poisoned");
        match dirty.as_mut() {
            Some(map) => std::mem::replace(map, DirtyMap::new(self.size())),
            None => DirtyMap::default(),
        }
    }

    /// How many blocks are dirty now (0 when not tracking).
    pub fn dirty_blocks(&self) -> u64 {
        self.dirty
            .lock()
            .expect("dirty map poisoned")
            .as_ref()
            .map_or(0, DirtyMap::len)
    }

    pub fn stop_tracking(&self) {
        *self.dirty.lock().expect("dirty map poisoned") = None;
    }

    fn mark_dirty(&self, offset: u64, length: u64) {
        if let Some(map) = self.dirty.lock().expect("dirty map poisoned").as_mut() {
            map.mark(offset, length);
        }
    }

    /// Bytes allocated on disc (`st_blocks` × 512).
    pub fn allocated_bytes(&self) -> std::io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks() * 512)
    }
}

/// Allocated ranges of the file `fd` within `[offset, end)` as (offset,
/// length).
pub fn data_ranges(fd: BorrowedFd<'_>, offset: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = vec![];
    let mut pos = offset;
    while pos < end {
        let (data, next) = next_boundary(fd, pos, end)?;
        if data {
            out.push((pos, next - pos));
        }
        pos = next;
    }
    Ok(out)
}

/// Whether `pos` is in data in the file `fd`, and where that run ends
/// (capped at `end`).
fn next_boundary(fd: BorrowedFd<'_>, pos: u64, end: u64) -> std::io::Result<(bool, u64)> {
    match lseek(fd, pos as i64, Whence::SeekData) {
        Ok(d) if d as u64 == pos => {
            let hole = match lseek(fd, pos as i64, Whence::SeekHole) {
                Ok(h) => h as u64,
                Err(Errno::ENXIO) => end,
                Err(e) => return Err(e.into()),
            };
            Ok((true, hole.clamp(pos + 1, end)))
        }
        Ok(d) => Ok((false, (d as u64).min(end))),
        // No data after pos: a hole to the end of the file, and the part
        // past the end of the file (a transient resize) reads zeroes.
        Err(Errno::ENXIO) => Ok((false, end)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(size: u64) -> (tempfile::TempDir, Export) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        File::create(&path).unwrap().set_len(size).unwrap();
        let e = Export::open("d", &path, false).unwrap();
        (dir, e)
    }

    #[test]
    fn write_read_trim_and_extents() {
        let (_d, e) = export(4 << 20);
        assert_eq!(
            e.extents(0, 4 << 20, 16).unwrap(),
            [Extent {
                length: 4 << 20,
                flags: 3
            }]
        );
        e.write(1 << 20, &[0xab; 65536], true).unwrap();
        let mut buf = vec![0; 65536];
        e.read(1 << 20, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0xab));
        let ext = e.extents(0, 4 << 20, 16).unwrap();
        assert_eq!(ext.len(), 3, "{ext:?}");
        assert_eq!(ext[1].flags, 0);
        assert_eq!(e.data_ranges(0, 4 << 20).unwrap(), [(1 << 20, 65536)]);
        e.trim(1 << 20, 65536, false).unwrap();
        assert_eq!(e.allocated_bytes().unwrap(), 0);
        e.read(1 << 20, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
        e.write_zeroes(0, 65536, true, false).unwrap();
        assert!(e.allocated_bytes().unwrap() >= 65536);
    }

    #[test]
    fn cached_reads_see_what_was_written() {
        let (_d, e) = export(1 << 20);
        e.write(8192, &[0x5c; 4096], false).unwrap();
        let mut buf = vec![0u8; 4096];
        // Just written, so in the page cache.
        assert!(e.read_cached(8192, &mut buf).unwrap());
        assert!(buf.iter().all(|b| *b == 0x5c));
        assert!(
            e.read_cached(1 << 20, &mut buf).is_err(),
            "range is checked"
        );
    }

    #[test]
    fn out_of_range_and_read_only_are_refused() {
        let (d, e) = export(1 << 20);
        let err = e.write((1 << 20) - 1, &[1, 2], false).unwrap_err();
        assert!(
            matches!(err, ExportError::OutOfRange { op: "write", .. }),
            "{err}"
        );
        assert!(e.read(u64::MAX, &mut [0]).is_err());
        let ro = Export::open("d", &d.path().join("d"), true).unwrap();
        assert!(matches!(
            ro.write(0, &[1], false),
            Err(ExportError::ReadOnly { op: "write" })
        ));
        assert!(matches!(
            ro.trim(0, 1, false),
            Err(ExportError::ReadOnly { .. })
        ));
    }

    #[test]
    fn dirty_map_merges_and_resets() {
        let (_d, e) = export(1 << 20);
        e.write(0, &[1], false).unwrap();
        e.start_tracking();
        e.write(10, &[1], false).unwrap();
        e.write(DIRTY_BLOCK + 1, &[1; 10], false).unwrap();
        e.trim(5 * DIRTY_BLOCK, 10, false).unwrap();
        let d = e.take_dirty();
        assert_eq!(d.len(), 3);
        assert_eq!(
            d.ranges(),
            [(0, 2 * DIRTY_BLOCK), (5 * DIRTY_BLOCK, DIRTY_BLOCK)]
        );
        assert!(e.take_dirty().is_empty());
        e.stop_tracking();
        e.write(0, &[1], false).unwrap();
        assert!(e.take_dirty().is_empty());
    }
}
