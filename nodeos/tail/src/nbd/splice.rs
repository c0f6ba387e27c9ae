//! Large WRITE payloads go from the socket into the disc's file with
//! `splice(2)` (socket → pipe → file), never through our memory: the
//! kernel moves the received pages into a pipe and copies them once, into
//! the page cache, as `cp` does. Reading into a buffer and `pwrite`-ing it
//! costs two copies, both from and to user memory (the slowest kind on the
//! tails' VMs and ours); for a mirror's 4 MiB writes that was the largest
//! cost of a migration (docs/storage.md, "Mirror rate").
//!
//! It runs on a blocking thread (the file side may wait for the disc),
//! on a duplicate of the connection's descriptor; the socket is
//! non-blocking, so the thread waits for data with `poll(2)` and looks at
//! a stop flag every 100 ms.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::export::Export;

/// WRITEs at least this large take the splice path.
pub const SPLICE_MIN: u32 = 256 << 10;
/// The pipe's size, asked for with `F_SETPIPE_SZ` (the default limit for
/// unprivileged processes is 1 MiB).
const PIPE_SIZE: i32 = 1 << 20;
const POLL_MS: i32 = 100;

/// Why a spliced WRITE failed.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// The connection broke or was stopped: close it.
    #[error("receiving a WRITE payload")]
    Socket(#[source] std::io::Error),
    /// Writing the file failed; the whole payload was still consumed,
    /// so the connection carries on and the client gets the error.
    #[error("writing a spliced WRITE payload")]
    File(#[source] std::io::Error),
    /// The disc was handed over meanwhile: nothing more lands here, the
    /// write is not answered (the client resends it to the new server).
    #[error("the disc was handed over")]
    Fenced,
}

/// A connection's pipe, made on first use and dropped after an error
/// (it may hold stray bytes then).
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    pub fn new() -> std::io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        let r = unsafe {
            nix::libc::pipe2(
                fds.as_mut_ptr(),
                nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors we own.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: plain fcntl on a descriptor we own.
        let got =
            unsafe { nix::libc::fcntl(write.as_raw_fd(), nix::libc::F_SETPIPE_SZ, PIPE_SIZE) };
        let size = if got > 0 { got as usize } else { 64 << 10 };
        Ok(Pipe { read, write, size })
    }
}

fn wait_readable(fd: RawFd, stop: &AtomicBool) -> std::io::Result<()> {
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(std::io::Error::other("the connection was closed"));
        }
        let mut pfd = nix::libc::pollfd {
            fd,
            events: nix::libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { nix::libc::poll(&mut pfd, 1, POLL_MS) };
        if r > 0 {
            return Ok(());
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Writes a WRITE payload of `length` bytes at `offset`: `head` (its
/// start, already read from the socket) then the rest straight from
/// `sock`. The caller has checked the range. On a file error the rest of
/// the payload is read and discarded, so the stream stays in step.
///
/// The export's I/O gate is held (shared) around each write into the file
/// and the blocks are marked for a mirror there, not while waiting for
/// the socket: a client slow to send its payload cannot hold up a
/// mirror's pause.
pub fn receive(
    sock: &OwnedFd,
    pipe: &Pipe,
    export: &Arc<Export>,
    offset: u64,
    head: &[u8],
    length: usize,
    stop: &AtomicBool,
) -> Result<(), SpliceError> {
    use std::os::unix::fs::FileExt;
    let sock = sock.as_raw_fd();
    let file = export.file().as_raw_fd();
    // What the connection's reader had already buffered, the ordinary way.
    let mut failed: Option<std::io::Error> = {
        let _gate = export.gate.blocking_read();
        if export.is_fenced() {
            return Err(SpliceError::Fenced);
        }
        let r = export.file().write_all_at(head, offset).err();
        // Marked after the write, as Export::write does: a mirror pass
        // that takes the mark copies the new bytes.
        export.written(offset, head.len() as u64);
        r
    };
    let mut off = (offset + head.len() as u64) as nix::libc::loff_t;
    let mut left = length - head.len();
    let mut in_pipe = 0usize;
    let mut scratch: Vec<u8> = vec![];
    while left > 0 || in_pipe > 0 {
        if left > 0 && in_pipe < pipe.size {
            // SAFETY: valid descriptors; null offsets (socket and pipe).
            let n = unsafe {
                nix::libc::splice(
                    sock,
                    std::ptr::null_mut(),
                    pipe.write.as_raw_fd(),
                    std::ptr::null_mut(),
                    left.min(pipe.size - in_pipe),
                    nix::libc::SPLICE_F_MOVE | nix::libc::SPLICE_F_NONBLOCK,
                )
            };
            if n > 0 {
                left -= n as usize;
                in_pipe += n as usize;
                continue;
            }
            if n == 0 {
                return Err(SpliceError::Socket(
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock if in_pipe == 0 => {
                    wait_readable(sock, stop).map_err(SpliceError::Socket)?;
                    continue;
                }
                std::io::ErrorKind::WouldBlock => {}
                _ => return Err(SpliceError::Socket(e)),
            }
        }
        if failed.is_some() {
            // Discard what the pipe holds.
            scratch.resize(in_pipe, 0);
            // SAFETY: `scratch` is valid for writes of `in_pipe` bytes.
            let n = unsafe {
                nix::libc::read(pipe.read.as_raw_fd(), scratch.as_mut_ptr().cast(), in_pipe)
            };
            if n <= 0 {
                return Err(SpliceError::Socket(std::io::Error::last_os_error()));
            }
            in_pipe -= n as usize;
            continue;
        }
        let gate = export.gate.blocking_read();
        if export.is_fenced() {
            return Err(SpliceError::Fenced);
        }
        let at = off as u64;
        // SAFETY: valid descriptors; `off` is a valid pointer the kernel
        // advances.
        let n = unsafe {
            nix::libc::splice(
                pipe.read.as_raw_fd(),
                std::ptr::null_mut(),
                file,
                &mut off,
                in_pipe,
                nix::libc::SPLICE_F_MOVE,
            )
        };
        export.written(at, in_pipe as u64);
        drop(gate);
        if n > 0 {
            in_pipe -= n as usize;
            continue;
        }
        let e = if n == 0 {
            std::io::ErrorKind::WriteZero.into()
        } else {
            std::io::Error::last_os_error()
        };
        if e.kind() != std::io::ErrorKind::Interrupted {
            failed = Some(e);
        }
    }
    match failed {
        Some(e) => Err(SpliceError::File(e)),
        None => Ok(()),
    }
}
