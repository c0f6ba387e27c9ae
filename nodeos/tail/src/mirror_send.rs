//! The mirror's sender: WRITE payloads go from the disc's file to the
//! destination's socket with `sendfile(2)`, with no copy through our
//! memory, on a blocking thread of their own; the async side reads the
//! replies meanwhile and returns a credit for each, so at most
//! [`crate::mirror::WINDOW`] requests are in flight.
//!
//! Before this, a reader thread `pread` each chunk into a fresh buffer and
//! the async task wrote it to the socket: two copies more per byte on the
//! source (file → buffer → socket) and a page fault per 4 KiB of every
//! buffer. `bigv-tail bench` shows the difference (docs/storage.md).
//!
//! The sender writes on a duplicate of the connection's descriptor, which
//! is non-blocking (tokio's), so it waits with `poll(2)` and checks a stop
//! flag every 100 ms: a cancelled copy stops sending promptly.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::mirror::MirrorError;
use crate::nbd::protocol::{Command, Request};
use crate::nbd::{ClientError, Export, NbdClient};

/// Cookies of the sender's requests have this bit set, so they never
/// collide with the client's own (which count up from 1).
const COOKIE_BASE: u64 = 1 << 63;
/// How often a waiting sender looks at its stop flag.
const POLL_MS: i32 = 100;

/// One request the sender makes: WRITE from the file, or WRITE_ZEROES.
#[derive(Debug, Clone, Copy)]
struct Job {
    offset: u64,
    length: u32,
    data: bool,
}

enum Event {
    /// A request was written to the socket completely.
    Sent,
    /// Every request was sent, or sending failed.
    Done(Result<(), MirrorError>),
}

/// Sets the stop flag when the copy's future ends or is dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Sends `pieces` (offset, length, is data) to the destination: data as
/// WRITE in requests of at most `chunk` bytes straight from the file,
/// holes as WRITE_ZEROES; waits for every reply. `on_data` is called with
/// the length of each acknowledged WRITE.
pub(crate) async fn send_pieces(
    export: &Arc<Export>,
    client: &mut NbdClient,
    pieces: &[(u64, u64, bool)],
    chunk: u64,
    window: usize,
    mut on_data: impl FnMut(u64),
) -> Result<(), MirrorError> {
    let mut jobs = vec![];
    for &(off, len, data) in pieces {
        let step = if data { chunk } else { 1 << 30 };
        let mut at = off;
        while at < off + len {
            let n = (off + len - at).min(step);
            jobs.push(Job {
                offset: at,
                length: n as u32,
                data,
            });
            at += n;
        }
    }
    if jobs.is_empty() {
        return Ok(());
    }
    client.push().await.map_err(MirrorError::Destination)?;
    let sock = client
        .socket()
        .as_fd()
        .try_clone_to_owned()
        .map_err(MirrorError::Local)?;
    let pending: Arc<Mutex<HashMap<u64, Job>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let _guard = StopOnDrop(stop.clone());
    let (credit_tx, credit_rx) = std_mpsc::channel::<()>();
    let (event_tx, mut events) = mpsc::unbounded_channel();
    {
        let (export, pending, stop) = (export.clone(), pending.clone(), stop.clone());
        tokio::task::spawn_blocking(move || {
            let sender = Sender {
                sock,
                export,
                pending,
                stop,
                credits: credit_rx,
                window,
                events: event_tx.clone(),
            };
            let result = sender.run(jobs);
            let _ = event_tx.send(Event::Done(result));
        });
    }
    let mut outstanding = 0usize;
    let mut finished = false;
    loop {
        if outstanding == 0 {
            if finished {
                return Ok(());
            }
            match events.recv().await {
                Some(Event::Sent) => outstanding += 1,
                Some(Event::Done(r)) => {
                    r?;
                    finished = true;
                }
                None => return Err(MirrorError::Local(std::io::Error::other("sender vanished"))),
            }
            continue;
        }
        let (errno, cookie) = client
            .read_reply_head()
            .await
            .map_err(MirrorError::Destination)?;
        let job = pending.lock().expect("pending poisoned").remove(&cookie);
        let Some(job) = job else {
            return Err(MirrorError::Destination(ClientError::Protocol {
                what: "reply cookie",
            }));
        };
        if errno != 0 {
            return Err(MirrorError::Destination(ClientError::Request {
                command: if job.data { "WRITE" } else { "WRITE_ZEROES" },
                offset: job.offset,
                length: u64::from(job.length),
                errno,
            }));
        }
        if job.data {
            on_data(u64::from(job.length));
        }
        let _ = credit_tx.send(());
        // Count what was sent meanwhile (a reply may even precede its
        // `Sent`: the cookie was registered before the first byte went).
        outstanding -= 1;
        while let Ok(ev) = events.try_recv() {
            match ev {
                Event::Sent => outstanding += 1,
                Event::Done(r) => {
                    r?;
                    finished = true;
                }
            }
        }
    }
}

struct Sender {
    sock: OwnedFd,
    export: Arc<Export>,
    pending: Arc<Mutex<HashMap<u64, Job>>>,
    stop: Arc<AtomicBool>,
    credits: std_mpsc::Receiver<()>,
    window: usize,
    events: mpsc::UnboundedSender<Event>,
}

fn destination(during: &'static str) -> impl FnOnce(std::io::Error) -> MirrorError {
    move |source| MirrorError::Destination(ClientError::Io { during, source })
}

impl Sender {
    fn run(self, jobs: Vec<Job>) -> Result<(), MirrorError> {
        let mut credits = self.window;
        for (i, job) in jobs.into_iter().enumerate() {
            while credits == 0 {
                match self
                    .credits
                    .recv_timeout(Duration::from_millis(POLL_MS as u64))
                {
                    Ok(()) => credits += 1,
                    Err(std_mpsc::RecvTimeoutError::Timeout) => self.check_stop()?,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                        return Err(MirrorError::Cancelled);
                    }
                }
            }
            while self.credits.try_recv().is_ok() {
                credits += 1;
            }
            credits -= 1;
            self.check_stop()?;
            let cookie = COOKIE_BASE | i as u64;
            let req = Request {
                flags: 0,
                command: if job.data {
                    Command::Write
                } else {
                    Command::WriteZeroes
                },
                cookie,
                offset: job.offset,
                length: job.length,
            };
            self.pending
                .lock()
                .expect("pending poisoned")
                .insert(cookie, job);
            let more = if job.data { nix::libc::MSG_MORE } else { 0 };
            self.send_all(&req.encode(), more)
                .map_err(destination("sending a request"))?;
            if job.data {
                self.send_file(job.offset, u64::from(job.length))?;
            }
            if self.events.send(Event::Sent).is_err() {
                return Err(MirrorError::Cancelled);
            }
        }
        Ok(())
    }

    fn check_stop(&self) -> Result<(), MirrorError> {
        if self.stop.load(Ordering::Acquire) {
            Err(MirrorError::Cancelled)
        } else {
            Ok(())
        }
    }

    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Waits until the socket takes more bytes (or the copy is stopped).
    fn wait_writable(&self) -> std::io::Result<()> {
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Err(std::io::Error::other("the copy was stopped"));
            }
            let mut pfd = nix::libc::pollfd {
                fd: self.fd(),
                events: nix::libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the duration of the call.
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

    fn send_all(&self, mut buf: &[u8], flags: i32) -> std::io::Result<()> {
        while !buf.is_empty() {
            // SAFETY: `buf` is valid for reads of its length; the
            // descriptor is ours (a duplicate) for the call.
            let n = unsafe {
                nix::libc::send(
                    self.fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    flags | nix::libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                buf = &buf[n as usize..];
                continue;
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock => self.wait_writable()?,
                std::io::ErrorKind::Interrupted => {}
                _ => return Err(e),
            }
        }
        Ok(())
    }

    /// `length` bytes of the disc from `offset`, file → socket. Past the
    /// end of the file (a disc being resized) the rest is zeroes.
    fn send_file(&self, offset: u64, length: u64) -> Result<(), MirrorError> {
        let file = self.export.file().as_raw_fd();
        let mut off = offset as nix::libc::off_t;
        let end = offset + length;
        while (off as u64) < end {
            let left = (end - off as u64) as usize;
            // SAFETY: both descriptors are open for the call; `off` is a
            // valid pointer the kernel advances.
            let n = unsafe { nix::libc::sendfile(self.fd(), file, &mut off, left) };
            if n > 0 {
                continue;
            }
            if n == 0 {
                let zeroes = vec![0u8; left.min(1 << 20)];
                let mut rest = left;
                while rest > 0 {
                    let k = rest.min(zeroes.len());
                    let more = if rest > k { nix::libc::MSG_MORE } else { 0 };
                    self.send_all(&zeroes[..k], more)
                        .map_err(destination("sending a WRITE payload"))?;
                    rest -= k;
                }
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock => self
                    .wait_writable()
                    .map_err(destination("sending a WRITE payload"))?,
                std::io::ErrorKind::Interrupted => {}
                std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted => {
                    return Err(destination("sending a WRITE payload")(e));
                }
                // Reading our own file failed.
                _ => return Err(MirrorError::Local(e)),
            }
        }
        Ok(())
    }
}
