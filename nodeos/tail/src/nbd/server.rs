//! Serving one disc: a listener on the disc's own address, the access
//! list, the one-client rule, and the transmission phase.
//!
//! - A peer not in the ACL is closed at accept (an empty ACL denies all).
//! - One client at a time: `NBD_OPT_GO` from a second address while the
//!   first is connected is refused with `NBD_REP_ERR_POLICY`; the same
//!   address connecting again replaces the old connection (a head whose
//!   qemu reconnects), after the old one's in-flight requests finished.
//! - Requests are handled concurrently; replies go out through one writer
//!   task. FUA and FLUSH reach the disc (`fdatasync`) before the reply.
//! - A malformed request closes only its connection, with a logged reason.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::export::{Export, ExportError};
use super::handshake::{self, Admission, ExportInfo, HandshakeError, Negotiated, Outcome};
use super::protocol::*;
use crate::acl::Acl;
use crate::error_chain;

/// How long a client may take to negotiate.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a reconnecting client waits for its old connection to drain.
pub const REPLACE_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests one connection may have in flight; more are read when some
/// finish (back-pressure on the client).
pub const MAX_IN_FLIGHT: usize = 64;
/// Data buffers (READ and WRITE) one connection may hold at once, KiB:
/// 64 requests of 32 MiB would otherwise be 2 GiB per client.
pub const BUFFER_BUDGET_KIB: u32 = 128 << 10;
/// Reads (and non-FUA writes) up to this size are first tried against the
/// page cache on the connection's own task, with `RWF_NOWAIT`: no thread
/// hand-off when nothing would block.
pub const CACHED_READ_MAX: u64 = 256 << 10;
/// The most extents one BLOCK_STATUS reply carries.
pub const MAX_EXTENTS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("negotiation")]
    Handshake(#[source] HandshakeError),
    #[error("negotiation took longer than {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
    #[error("malformed request")]
    Protocol(#[source] ProtocolError),
    #[error("{during}")]
    Io {
        during: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A client currently admitted to a disc (at most one per address).
struct Active {
    peer: IpAddr,
    conn: u64,
    cancel: CancellationToken,
    done: watch::Receiver<bool>,
}

/// A request to take a disc over, from a migration source; answered once
/// the destination has committed to serving it.
pub struct HandoverRequest {
    pub reply: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Extra behaviour for a disc's server.
#[derive(Default, Clone)]
pub struct ServeOptions {
    /// Accept `NBD_CMD_BIGV_HANDOVER` and pass it here (a migration
    /// destination's mirror listener). Without it the command is refused.
    pub handover: Option<mpsc::Sender<HandoverRequest>>,
    /// Start writing each large WRITE back to the disc as soon as it is
    /// in (`sync_file_range`), instead of leaving it all to the final
    /// FLUSH: a migration destination, whose FLUSH comes while the
    /// source's clients are paused.
    pub write_behind: bool,
    /// Accept `NBD_CMD_BIGV_BACKUP` and store the pieces here (a migration
    /// destination: the disc's backups travel with it). Without it the
    /// command is refused.
    pub backups: Option<Arc<dyn BackupSink>>,
}

/// Where a mirror's backup pieces go; see [`Command::Backup`].
pub trait BackupSink: Send + Sync {
    /// Stores one piece (blocking I/O: called on a blocking thread). The
    /// error is answered to the source and logged.
    fn receive(&self, offset: u64, chunk: &BackupChunk<'_>) -> Result<(), (NbdErrno, String)>;
}

struct Shared {
    options: ServeOptions,
    export: Arc<Export>,
    acl: Mutex<Acl>,
    /// One entry per admitted address: two only while the ACL lists two
    /// heads (a live migration's handover).
    active: Mutex<Vec<Active>>,
    next_conn: AtomicU64,
    /// The disc's IOPS and bandwidth limits, shared by its connections.
    limiter: crate::limits::Limiter,
}

/// A disc being served. Dropping it without [`DiscServer::stop`] leaves
/// the tasks running until the runtime ends.
pub struct DiscServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl DiscServer {
    /// Binds `listen` and serves `export` to the peers `acl` allows.
    pub async fn start(
        export: Arc<Export>,
        listen: SocketAddr,
        acl: Acl,
    ) -> Result<DiscServer, ServeError> {
        Self::start_with(export, listen, acl, ServeOptions::default()).await
    }

    /// [`DiscServer::start`] with options.
    pub async fn start_with(
        export: Arc<Export>,
        listen: SocketAddr,
        acl: Acl,
        options: ServeOptions,
    ) -> Result<DiscServer, ServeError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            options,
            export,
            acl: Mutex::new(acl),
            active: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(1),
            limiter: crate::limits::Limiter::default(),
        });
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(
            listener,
            shared.clone(),
            stop.clone(),
            tasks.clone(),
        ));
        tracing::info!(disc = shared.export.name(), %local_addr, "serving");
        Ok(DiscServer {
            shared,
            local_addr,
            stop,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn export(&self) -> &Arc<Export> {
        &self.shared.export
    }

    pub fn acl(&self) -> Acl {
        self.shared.acl.lock().expect("acl poisoned").clone()
    }

    /// Replaces the access list; a connected client no longer listed is
    /// disconnected at once.
    pub fn set_acl(&self, acl: Acl) {
        let disc = self.shared.export.name();
        let active = self.shared.active.lock().expect("active poisoned");
        for a in active.iter().filter(|a| !acl.allows(a.peer)) {
            tracing::info!(disc, peer = %a.peer, "peer removed from the access list: disconnecting");
            a.cancel.cancel();
        }
        *self.shared.acl.lock().expect("acl poisoned") = acl;
    }

    /// Sets (or lifts, with `None`) the disc's IOPS and bandwidth limits;
    /// they apply at once to requests not yet admitted.
    pub fn set_limits(&self, limits: Option<bigv_spine::resource::DiscLimits>) {
        if self.shared.limiter.limits() != limits {
            tracing::info!(disc = self.shared.export.name(), ?limits, "I/O limits");
            self.shared.limiter.set(limits);
        }
    }

    /// The address of the connected client admitted last, if any.
    pub fn client(&self) -> Option<IpAddr> {
        self.clients().last().copied()
    }

    /// The addresses of every connected client, oldest first.
    pub fn clients(&self) -> Vec<IpAddr> {
        let active = self.shared.active.lock().expect("active poisoned");
        active
            .iter()
            .filter(|a| !*a.done.borrow())
            .map(|a| a.peer)
            .collect()
    }

    /// Disconnects the current clients (if any) but keeps listening.
    pub fn kick(&self) {
        for a in self.shared.active.lock().expect("active poisoned").iter() {
            a.cancel.cancel();
        }
    }

    /// Stops listening, disconnects every client and waits until their
    /// in-flight requests have finished.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        tracing::info!(disc = self.shared.export.name(), addr = %self.local_addr, "stopped serving");
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let disc = shared.export.name().to_owned();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(disc, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let allowed = shared.acl.lock().expect("acl poisoned").allows(peer.ip());
        if !allowed {
            tracing::warn!(disc, %peer, "refused: peer not in the access list");
            drop(stream);
            continue;
        }
        let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let cancel = stop.child_token();
        tasks.spawn(connection(stream, peer, conn, shared.clone(), cancel));
    }
}

/// Admission for one connection: claims the disc's client slot.
struct Claim {
    shared: Arc<Shared>,
    peer: IpAddr,
    conn: u64,
    cancel: CancellationToken,
}

/// Held while a connection is the disc's client; releases the slot and
/// tells a waiting successor when dropped.
struct Ticket {
    shared: Arc<Shared>,
    conn: u64,
    done: watch::Sender<bool>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut active = self.shared.active.lock().expect("active poisoned");
        active.retain(|a| a.conn != self.conn);
        let _ = self.done.send(true);
    }
}

impl Admission for Claim {
    type Ticket = Ticket;

    async fn admit(&mut self) -> Result<Ticket, String> {
        let disc = self.shared.export.name().to_owned();
        if !self
            .shared
            .acl
            .lock()
            .expect("acl poisoned")
            .allows(self.peer)
        {
            return Err(format!("{} is not in the access list", self.peer));
        }
        let (done_tx, done_rx) = watch::channel(false);
        // One connection per address: a second address is admitted only
        // because the ACL lists it too (the brain lists two heads only
        // during a live migration's handover); the same address
        // reconnecting replaces its old connection.
        let previous = {
            let mut active = self.shared.active.lock().expect("active poisoned");
            active.retain(|a| !*a.done.borrow());
            let previous = match active.iter().position(|a| a.peer == self.peer) {
                Some(i) => {
                    let a = active.remove(i);
                    tracing::info!(disc, peer = %self.peer, old = a.conn, new = self.conn, "same peer reconnected: replacing its old connection");
                    a.cancel.cancel();
                    Some(a.done.clone())
                }
                None => None,
            };
            if let Some(other) = active.first() {
                tracing::info!(disc, peer = %self.peer, other = %other.peer, "a second listed address connected (live migration handover)");
            }
            active.push(Active {
                peer: self.peer,
                conn: self.conn,
                cancel: self.cancel.clone(),
                done: done_rx,
            });
            previous
        };
        let ticket = Ticket {
            shared: self.shared.clone(),
            conn: self.conn,
            done: done_tx,
        };
        if let Some(mut old) = previous {
            // Its in-flight writes must land before ours start.
            let drained = tokio::time::timeout(REPLACE_TIMEOUT, old.wait_for(|d| *d)).await;
            if drained.is_err() {
                return Err("the previous connection from this address is still draining".into());
            }
        }
        Ok(ticket)
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    conn: u64,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let disc = shared.export.name().to_owned();
    let _ = stream.set_nodelay(true);
    let info = ExportInfo {
        name: disc.clone(),
        size: shared.export.size(),
        read_only: shared.export.read_only(),
    };
    let mut claim = Claim {
        shared: shared.clone(),
        peer: peer.ip(),
        conn,
        cancel: cancel.clone(),
    };
    let negotiated = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake::negotiate(&mut stream, &info, &mut claim)) => r,
        _ = cancel.cancelled() => return,
    };
    let result = match negotiated {
        Err(_) => Err(ConnError::HandshakeTimeout),
        Ok(Err(e)) => Err(ConnError::Handshake(e)),
        Ok(Ok(Outcome::Aborted)) => Ok(()),
        Ok(Ok(Outcome::Transmission { negotiated, ticket })) => {
            tracing::info!(disc, %peer, conn, structured = negotiated.structured, "client connected");
            let r = transmission(stream, shared.clone(), negotiated, cancel.clone()).await;
            drop(ticket);
            r
        }
    };
    match result {
        Ok(()) if cancel.is_cancelled() => {
            tracing::info!(disc, %peer, conn, "connection closed by the server")
        }
        Ok(()) => tracing::info!(disc, %peer, conn, "client disconnected"),
        Err(e) => {
            tracing::warn!(disc, %peer, conn, error = %error_chain(&e), "connection closed")
        }
    }
}

/// One reply: a header (and small payload) plus optional bulk data.
struct Reply {
    head: BytesMut,
    data: Option<Vec<u8>>,
    /// The request's share of the buffer budget, returned once written.
    budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

async fn transmission(
    stream: TcpStream,
    shared: Arc<Shared>,
    negotiated: Negotiated,
    cancel: CancellationToken,
) -> Result<(), ConnError> {
    let export = shared.export.clone();
    let (read, write) = stream.into_split();
    let mut read = BufReader::with_capacity(256 << 10, read);
    let (tx, rx) = mpsc::channel::<Reply>(MAX_IN_FLIGHT * 2);
    let writer = tokio::spawn(write_replies(
        BufWriter::with_capacity(256 << 10, write),
        rx,
    ));
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let budget = Arc::new(Semaphore::new(BUFFER_BUDGET_KIB as usize));
    let mut handlers = JoinSet::new();
    let mut pipe: Option<super::splice::Pipe> = None;

    let result = loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = cancel.cancelled() => break Ok(()),
        };
        let mut header = [0u8; REQUEST_LEN];
        let got = tokio::select! {
            r = read.read_exact(&mut header) => r,
            _ = cancel.cancelled() => break Ok(()),
        };
        if let Err(e) = got {
            break if e.kind() == std::io::ErrorKind::UnexpectedEof {
                // A client that vanished without NBD_CMD_DISC.
                Ok(())
            } else {
                Err(ConnError::Io {
                    during: "reading a request",
                    source: e,
                })
            };
        }
        let request = match Request::parse(&header) {
            Ok(r) => r,
            Err(e) => break Err(ConnError::Protocol(e)),
        };
        // The disc's limits: the request waits here, and nothing more is
        // read from this client meanwhile.
        let cost = match request.command {
            Command::Read | Command::Write => Some(u64::from(request.length)),
            Command::Trim | Command::WriteZeroes => Some(0),
            _ => None,
        };
        if let Some(bytes) = cost {
            let wait = shared.limiter.take(bytes);
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => break Ok(()),
                }
            }
        }
        let kib = match request.command {
            Command::Read | Command::Write | Command::Backup => {
                request.length.min(MAX_PAYLOAD).div_ceil(1024).max(1)
            }
            _ => 0,
        };
        let buffers = tokio::select! {
            p = budget.clone().acquire_many_owned(kib) => p.expect("semaphore never closed"),
            _ = cancel.cancelled() => break Ok(()),
        };
        if request.command == Command::Write
            && request.length >= super::splice::SPLICE_MIN
            && export
                .check_write(request.offset, u64::from(request.length))
                .is_ok()
        {
            let behind = shared.options.write_behind;
            match spliced_write(&export, &mut read, &mut pipe, request, behind, &cancel).await {
                Spliced::NotTaken => {}
                Spliced::Stop(r) => break r,
                Spliced::Done(errno) => {
                    let (export, tx) = (export.clone(), tx.clone());
                    handlers.spawn(async move {
                        let fua = request.flags & CMD_FLAG_FUA != 0;
                        let mut errno = errno;
                        if errno == 0 && fua {
                            let e = export.clone();
                            let flushed = tokio::task::spawn_blocking(move || e.flush()).await;
                            errno = match flushed {
                                Ok(Ok(())) => 0,
                                Ok(Err(e)) => errno_of(&e) as u32,
                                Err(_) => NbdErrno::Io as u32,
                            };
                        }
                        let mut head = BytesMut::with_capacity(16);
                        put_simple_reply(&mut head, request.cookie, errno);
                        let _ = tx
                            .send(Reply {
                                head,
                                data: None,
                                budget: Some(buffers),
                            })
                            .await;
                        drop(permit);
                    });
                    while handlers.try_join_next().is_some() {}
                    continue;
                }
            }
        }
        let payload = if request.command.has_payload() {
            let mut data = vec![0u8; request.length as usize];
            let got = tokio::select! {
                r = read.read_exact(&mut data) => r,
                _ = cancel.cancelled() => break Ok(()),
            };
            if let Err(source) = got {
                break Err(ConnError::Io {
                    during: "reading a WRITE payload",
                    source,
                });
            }
            Some(data)
        } else {
            None
        };
        if request.command == Command::Disc {
            break Ok(());
        }
        let (done, tried_cached) = inline(&export, &request, payload.as_deref());
        if let Some(done) = done {
            if let Some(mut reply) = reply_for(&export, request, done, negotiated) {
                reply.budget = Some(buffers);
                if tx.send(reply).await.is_err() {
                    break Ok(());
                }
            }
            drop(permit);
            continue;
        }
        let export = export.clone();
        let tx = tx.clone();
        let handover = shared.options.handover.clone();
        let backups = shared.options.backups.clone();
        handlers.spawn(async move {
            let reply = if request.command == Command::Handover {
                Some(take_over(&export, request, handover).await)
            } else if request.command == Command::Backup {
                Some(receive_backup(&export, request, payload, backups).await)
            } else {
                handle(&export, request, payload, negotiated, tried_cached).await
            };
            if let Some(mut reply) = reply {
                reply.budget = Some(buffers);
                let _ = tx.send(reply).await;
            }
            drop(permit);
        });
        // Reap finished handlers so the set stays small.
        while handlers.try_join_next().is_some() {}
    };
    // In-flight requests finish (and are answered if the client is still
    // there) before the connection counts as gone.
    while handlers.join_next().await.is_some() {}
    drop(tx);
    let _ = writer.await;
    result
}

enum Spliced {
    /// Not done (the disc is fenced): read the payload the ordinary way.
    NotTaken,
    /// Written (0) or failed with this error value; the payload is consumed.
    Done(u32),
    /// End the connection with this.
    Stop(Result<(), ConnError>),
}

/// A large WRITE's payload, socket → file with `splice` (see
/// [`super::splice`], which takes the I/O gate), on a blocking thread. The
/// connection waits for it: a request's payload is the next bytes on the
/// socket anyway.
async fn spliced_write(
    export: &Arc<Export>,
    read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    pipe: &mut Option<super::splice::Pipe>,
    request: Request,
    write_behind: bool,
    cancel: &CancellationToken,
) -> Spliced {
    use std::os::fd::AsFd;
    use tokio::io::AsyncBufRead;
    if export.is_fenced() {
        return Spliced::NotTaken;
    }
    let length = request.length as usize;
    let buffered = read.buffer().len().min(length);
    let head = read.buffer()[..buffered].to_vec();
    std::pin::Pin::new(&mut *read).consume(buffered);
    let the_pipe = match pipe.take() {
        Some(p) => p,
        None => match super::splice::Pipe::new() {
            Ok(p) => p,
            Err(source) => {
                return Spliced::Stop(Err(ConnError::Io {
                    during: "making a pipe",
                    source,
                }));
            }
        },
    };
    let sock = match read.get_ref().as_ref().as_fd().try_clone_to_owned() {
        Ok(s) => s,
        Err(source) => {
            return Spliced::Stop(Err(ConnError::Io {
                during: "duplicating the socket",
                source,
            }));
        }
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (e, flag) = (export.clone(), stop.clone());
    let offset = request.offset;
    let mut job = tokio::task::spawn_blocking(move || {
        let r = super::splice::receive(&sock, &the_pipe, &e, offset, &head, length, &flag);
        if write_behind && r.is_ok() {
            e.write_behind(offset, length as u64);
        }
        (the_pipe, r)
    });
    // Never leave the thread writing after the connection is gone: a
    // replacing connection's writes must not be overtaken.
    let joined = tokio::select! {
        j = &mut job => j,
        _ = cancel.cancelled() => {
            stop.store(true, Ordering::Release);
            (&mut job).await
        }
    };
    match joined {
        Ok((p, Ok(()))) => {
            *pipe = Some(p);
            Spliced::Done(0)
        }
        // Handed over mid-payload: no answer, and this copy is done with.
        Ok((_, Err(super::splice::SpliceError::Fenced))) => Spliced::Stop(Ok(())),
        Ok((p, Err(super::splice::SpliceError::File(source)))) => {
            *pipe = Some(p);
            let err = ExportError::Io {
                op: "write",
                offset,
                length: length as u64,
                path: export.path().to_owned(),
                source,
            };
            tracing::warn!(disc = export.name(), error = %error_chain(&err), "I/O error");
            Spliced::Done(errno_of(&err) as u32)
        }
        Ok((_, Err(super::splice::SpliceError::Socket(source)))) => {
            if cancel.is_cancelled() {
                Spliced::Stop(Ok(()))
            } else {
                Spliced::Stop(Err(ConnError::Io {
                    during: "reading a WRITE payload",
                    source,
                }))
            }
        }
        Err(join) => Spliced::Stop(Err(ConnError::Io {
            during: "a spliced WRITE",
            source: std::io::Error::other(join.to_string()),
        })),
    }
}

async fn write_replies(
    mut out: BufWriter<tokio::net::tcp::OwnedWriteHalf>,
    mut rx: mpsc::Receiver<Reply>,
) -> std::io::Result<()> {
    while let Some(mut reply) = rx.recv().await {
        loop {
            write_reply(&mut out, &reply).await?;
            match rx.try_recv() {
                Ok(next) => reply = next,
                Err(_) => break,
            }
        }
        out.flush().await?;
    }
    let _ = out.shutdown().await;
    Ok(())
}

/// Small replies are batched in the buffer; a large one goes out as one
/// vectored write (header and data together) after what is buffered.
async fn write_reply(
    out: &mut BufWriter<tokio::net::tcp::OwnedWriteHalf>,
    reply: &Reply,
) -> std::io::Result<()> {
    match &reply.data {
        Some(data) if data.len() >= 64 << 10 => {
            out.flush().await?;
            let inner = out.get_mut();
            let (mut head, mut data): (&[u8], &[u8]) = (&reply.head, data);
            while !head.is_empty() || !data.is_empty() {
                let n = inner
                    .write_vectored(&[std::io::IoSlice::new(head), std::io::IoSlice::new(data)])
                    .await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                let h = n.min(head.len());
                head = &head[h..];
                data = &data[n - h..];
            }
            Ok(())
        }
        Some(data) => {
            out.write_all(&reply.head).await?;
            out.write_all(data).await
        }
        None => out.write_all(&reply.head).await,
    }
}

fn errno_of(e: &ExportError) -> NbdErrno {
    match e {
        ExportError::OutOfRange { op, .. } if *op == "write" || *op == "write_zeroes" => {
            NbdErrno::NoSpc
        }
        ExportError::OutOfRange { .. } => NbdErrno::Inval,
        ExportError::ReadOnly { .. } => NbdErrno::Perm,
        ExportError::Io { source, .. } => NbdErrno::from_io(source),
    }
}

enum Done {
    /// The disc was handed over: no reply (see `Export::set_fenced`).
    Dropped,
    Ok,
    Data(Vec<u8>),
    Extents(Vec<Extent>),
    Err(NbdErrno, String),
}

/// A migration source says the copy is complete: flush, let the agent
/// commit to serving, and answer.
async fn take_over(
    export: &Arc<Export>,
    req: Request,
    handover: Option<mpsc::Sender<HandoverRequest>>,
) -> Reply {
    let mut head = BytesMut::with_capacity(16);
    let Some(handover) = handover else {
        tracing::warn!(
            disc = export.name(),
            "BIGV_HANDOVER on a connection that is not a mirror"
        );
        put_simple_reply(&mut head, req.cookie, NbdErrno::Inval as u32);
        return Reply {
            head,
            data: None,
            budget: None,
        };
    };
    let e = export.clone();
    let flushed = tokio::task::spawn_blocking(move || e.flush()).await;
    if !matches!(flushed, Ok(Ok(()))) {
        put_simple_reply(&mut head, req.cookie, NbdErrno::Io as u32);
        return Reply {
            head,
            data: None,
            budget: None,
        };
    }
    let (reply, rx) = tokio::sync::oneshot::channel();
    let committed = match handover.send(HandoverRequest { reply }).await {
        Ok(()) => rx
            .await
            .unwrap_or_else(|_| Err("the agent went away".into())),
        Err(_) => Err("nobody is waiting for a handover".into()),
    };
    let errno = match committed {
        Ok(()) => 0,
        Err(reason) => {
            tracing::warn!(disc = export.name(), reason, "handover refused");
            NbdErrno::Io as u32
        }
    };
    put_simple_reply(&mut head, req.cookie, errno);
    Reply {
        head,
        data: None,
        budget: None,
    }
}

/// A piece of one of the disc's backups, from a migration source.
async fn receive_backup(
    export: &Arc<Export>,
    req: Request,
    payload: Option<Vec<u8>>,
    sink: Option<Arc<dyn BackupSink>>,
) -> Reply {
    let result = match sink {
        None => Err((
            NbdErrno::Inval,
            "BIGV_BACKUP on a connection that is not a mirror".to_owned(),
        )),
        Some(sink) => tokio::task::spawn_blocking(move || {
            let payload = payload.unwrap_or_default();
            let chunk =
                BackupChunk::parse(&payload).map_err(|e| (NbdErrno::Inval, e.to_string()))?;
            sink.receive(req.offset, &chunk)
        })
        .await
        .unwrap_or_else(|join| Err((NbdErrno::Io, format!("backup task failed: {join}")))),
    };
    let errno = match result {
        Ok(()) => 0,
        Err((errno, message)) => {
            tracing::warn!(
                disc = export.name(),
                error = message,
                "a backup piece was refused"
            );
            errno as u32
        }
    };
    let mut head = BytesMut::with_capacity(16);
    put_simple_reply(&mut head, req.cookie, errno);
    Reply {
        head,
        data: None,
        budget: None,
    }
}

async fn handle(
    export: &Arc<Export>,
    req: Request,
    payload: Option<Vec<u8>>,
    negotiated: Negotiated,
    tried_cached: bool,
) -> Option<Reply> {
    let done = run(export, req, payload, negotiated, tried_cached).await;
    reply_for(export, req, done, negotiated)
}

/// The reply to `req` for its outcome; `None` for one dropped unanswered.
fn reply_for(export: &Export, req: Request, done: Done, negotiated: Negotiated) -> Option<Reply> {
    if let Done::Err(errno, msg) = &done {
        tracing::debug!(
            disc = export.name(),
            command = req.command.name(),
            offset = req.offset,
            length = req.length,
            ?errno,
            msg,
            "request failed"
        );
    }
    let mut head = BytesMut::with_capacity(64);
    let structured =
        negotiated.structured && matches!(req.command, Command::Read | Command::BlockStatus);
    match done {
        Done::Dropped => None,
        Done::Err(errno, msg) if structured => {
            put_error_chunk(&mut head, req.cookie, errno, &msg);
            Some(Reply {
                head,
                data: None,
                budget: None,
            })
        }
        Done::Err(errno, _) => {
            put_simple_reply(&mut head, req.cookie, errno as u32);
            Some(Reply {
                head,
                data: None,
                budget: None,
            })
        }
        Done::Data(data) if structured => {
            if data.is_empty() {
                put_chunk_header(&mut head, REPLY_FLAG_DONE, REPLY_TYPE_NONE, req.cookie, 0);
            } else {
                put_chunk_header(
                    &mut head,
                    REPLY_FLAG_DONE,
                    REPLY_TYPE_OFFSET_DATA,
                    req.cookie,
                    8 + data.len() as u32,
                );
                head.put_u64(req.offset);
            }
            Some(Reply {
                head,
                data: Some(data),
                budget: None,
            })
        }
        Done::Data(data) => {
            put_simple_reply(&mut head, req.cookie, 0);
            Some(Reply {
                head,
                data: Some(data),
                budget: None,
            })
        }
        Done::Extents(extents) => {
            put_block_status_chunk(&mut head, req.cookie, BASE_ALLOCATION_ID, &extents);
            Some(Reply {
                head,
                data: None,
                budget: None,
            })
        }
        Done::Ok => {
            put_simple_reply(&mut head, req.cookie, 0);
            Some(Reply {
                head,
                data: None,
                budget: None,
            })
        }
    }
}

/// A small READ or non-FUA WRITE done in the page cache if that needs no
/// waiting (`RWF_NOWAIT`); `None` if it would wait (or is not such a
/// request). The caller holds the I/O gate and has checked the fence.
fn cached(export: &Export, req: &Request, payload: Option<&[u8]>) -> Option<Done> {
    let fua = req.flags & CMD_FLAG_FUA != 0;
    if u64::from(req.length) > CACHED_READ_MAX {
        return None;
    }
    let result = match req.command {
        Command::Write if !fua => export
            .write_cached(req.offset, payload.unwrap_or_default())
            .map(|done| done.then_some(Done::Ok)),
        Command::Read => {
            let mut buf = vec![0u8; req.length as usize];
            export
                .read_cached(req.offset, &mut buf)
                .map(|done| done.then_some(Done::Data(buf)))
        }
        _ => return None,
    };
    result.unwrap_or_else(|e| Some(Done::Err(errno_of(&e), e.to_string())))
}

/// [`cached`] on the connection's own task, when the I/O gate is free at
/// once: no task of its own, so a queue-depth-1 client's request costs no
/// hand-off between tasks. Also says whether the page cache was tried (no
/// use trying it again on the request's own task).
fn inline(export: &Export, req: &Request, payload: Option<&[u8]>) -> (Option<Done>, bool) {
    if !matches!(req.command, Command::Read | Command::Write) || req.length > MAX_PAYLOAD {
        return (None, false);
    }
    let Ok(_gate) = export.gate.try_read() else {
        return (None, false);
    };
    if export.is_fenced() {
        return (None, false);
    }
    (cached(export, req, payload), true)
}

async fn run(
    export: &Arc<Export>,
    req: Request,
    payload: Option<Vec<u8>>,
    negotiated: Negotiated,
    tried_cached: bool,
) -> Done {
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let (offset, length) = (req.offset, u64::from(req.length));
    match req.command {
        Command::Read if req.length > MAX_PAYLOAD => {
            return Done::Err(
                NbdErrno::Inval,
                format!(
                    "READ of {} bytes exceeds the maximum {MAX_PAYLOAD}",
                    req.length
                ),
            );
        }
        Command::BlockStatus if !negotiated.base_allocation => {
            return Done::Err(
                NbdErrno::Inval,
                "BLOCK_STATUS without a negotiated base:allocation context".into(),
            );
        }
        Command::BlockStatus | Command::Trim | Command::WriteZeroes if length == 0 => {
            return Done::Err(
                NbdErrno::Inval,
                format!("{} of zero bytes", req.command.name()),
            );
        }
        _ => {}
    }
    // Held shared for the whole request so a mirror's final pass can pause I/O.
    let _gate = export.gate.read().await;
    if export.is_fenced() {
        return Done::Dropped;
    }
    if !tried_cached && let Some(done) = cached(export, &req, payload.as_deref()) {
        return done;
    }
    let e = export.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<Done, ExportError> {
        Ok(match req.command {
            Command::Read => {
                let mut buf = vec![0u8; length as usize];
                e.read(offset, &mut buf)?;
                Done::Data(buf)
            }
            Command::Write => {
                e.write(offset, payload.as_deref().unwrap_or_default(), fua)?;
                Done::Ok
            }
            Command::Flush => {
                e.flush()?;
                Done::Ok
            }
            Command::Trim => {
                e.trim(offset, length, fua)?;
                Done::Ok
            }
            Command::WriteZeroes => {
                let no_hole = req.flags & CMD_FLAG_NO_HOLE != 0;
                e.write_zeroes(offset, length, no_hole, fua)?;
                Done::Ok
            }
            Command::BlockStatus => {
                let max = if req.flags & CMD_FLAG_REQ_ONE != 0 {
                    1
                } else {
                    MAX_EXTENTS
                };
                Done::Extents(e.extents(offset, length, max)?)
            }
            Command::Disc | Command::Handover | Command::Backup => Done::Ok,
        })
    })
    .await;
    match result {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            let errno = errno_of(&e);
            if matches!(e, ExportError::Io { .. }) {
                tracing::warn!(disc = export.name(), error = %error_chain(&e), "I/O error");
            }
            Done::Err(errno, e.to_string())
        }
        Err(join) => Done::Err(NbdErrno::Io, format!("request task failed: {join}")),
    }
}
