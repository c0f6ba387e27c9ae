//! Live disc migration, tail → tail, by mirroring while serving.
//!
//! Source (ordered with `migrate_to`):
//! 1. start tracking written blocks; connect to the destination's mirror
//!    endpoint (an NBD server admitting only this tail's address);
//! 2. copy the whole disc: allocated extents as WRITE, holes as
//!    WRITE_ZEROES (punching holes there, so allocation is preserved);
//! 3. copy the blocks written meanwhile, pass after pass, until what is
//!    dirty is small (or after [`MAX_PASSES`]);
//! 4. pause I/O (the export's gate), copy the last dirty blocks, FLUSH the
//!    destination, fence the export (queued requests are dropped
//!    unanswered, to be resent by the client after it reconnects), stop
//!    serving and remove the disc's address;
//! 5. send `BIGV_HANDOVER`: the destination records that it owns the disc,
//!    answers, adds the address and serves. The source deletes its copy.
//!
//! Any failure before step 5 resumes service here. A handover whose
//! answer never came is `uncertain`: the source stays silent until the
//! brain decides (see `MigrationState::Uncertain`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bigv_spine::resource::{MigrationOrder, MigrationProgress, MigrationState, ResourceName};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::{Disc, TailAgent};
use crate::error_chain;
use crate::nbd::protocol::Command;
use crate::nbd::server::HandoverRequest;
use crate::nbd::{ClientError, Export, NbdClient};
use crate::pools;

/// Copy unit for data.
pub const CHUNK: u64 = 4 << 20;
/// Requests in flight to the destination.
pub const WINDOW: usize = 8;
/// Dirty data small enough to copy with I/O paused.
pub const SMALL_DIRTY: u64 = 8 << 20;
/// Copy passes over dirty blocks before pausing regardless.
pub const MAX_PASSES: u32 = 10;
/// Pass 0 is copied in segments this large, reporting between them.
pub const SEGMENT: u64 = 1 << 30;
/// How often progress is pushed to the brain while copying.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("migrate_to.endpoint: {endpoint:?} is not an address:port")]
    BadEndpoint { endpoint: String },
    #[error("the destination")]
    Destination(#[source] ClientError),
    #[error("the destination's disc is {dest} bytes, this one {ours}")]
    SizeMismatch { dest: u64, ours: u64 },
    #[error("reading this disc")]
    Local(#[source] std::io::Error),
    #[error("sending the disc's backups")]
    Backups(#[source] crate::backup_transfer::TransferError),
    #[error("stopping service here")]
    Unserve(String),
    #[error("cancelled by a newer order")]
    Cancelled,
}

/// A migration in progress, held in the source disc's state.
pub struct MirrorHandle {
    seq: u64,
    pub(crate) progress: Arc<Mutex<MigrationProgress>>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl MirrorHandle {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn progress(&self) -> MigrationProgress {
        self.progress.lock().expect("progress poisoned").clone()
    }

    /// Stops a copy that has not reached its final pass and waits for it.
    /// Never call while the final pass could be waiting for the disc's
    /// lock *and* this caller holds it: the final pass takes the lock with
    /// cancellation in mind, so it gives up instead.
    pub async fn cancel(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

struct Progress {
    shared: Arc<Mutex<MigrationProgress>>,
    started: Instant,
}

impl Progress {
    fn update(&self, f: impl FnOnce(&mut MigrationProgress)) {
        let mut p = self.shared.lock().expect("progress poisoned");
        f(&mut p);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        p.bytes_per_second = (p.bytes_done as f64 / secs) as u64;
        p.eta_seconds = (p.bytes_per_second > 0)
            .then(|| p.bytes_total.saturating_sub(p.bytes_done) / p.bytes_per_second);
    }

    fn fail(&self, state: MigrationState, e: &(dyn std::error::Error + 'static)) {
        let msg = error_chain(e);
        self.update(|p| {
            p.state = state;
            p.error = Some(msg);
        });
    }
}

/// Starts mirroring `disc` to the destination in `order`.
pub(crate) fn start(
    agent: Arc<TailAgent>,
    disc: Arc<Disc>,
    export: Arc<Export>,
    order: MigrationOrder,
) -> MirrorHandle {
    let shared = Arc::new(Mutex::new(MigrationProgress {
        to: order.to.clone(),
        bytes_done: 0,
        bytes_total: 0,
        bytes_per_second: 0,
        eta_seconds: None,
        seq: order.seq,
        state: MigrationState::Copying,
        error: None,
    }));
    let cancel = CancellationToken::new();
    let progress = Progress {
        shared: shared.clone(),
        started: Instant::now(),
    };
    tracing::info!(disc = %disc.name, to = order.to, endpoint = order.endpoint, seq = order.seq, "migration started");
    let task = tokio::spawn(run(
        agent,
        disc,
        export,
        order.clone(),
        progress,
        cancel.clone(),
    ));
    MirrorHandle {
        seq: order.seq,
        progress: shared,
        cancel,
        task,
    }
}

async fn run(
    agent: Arc<TailAgent>,
    disc: Arc<Disc>,
    export: Arc<Export>,
    order: MigrationOrder,
    progress: Progress,
    cancel: CancellationToken,
) {
    let copied = tokio::select! {
        r = copy_phase(&agent, &disc, &export, &order, &progress) => r,
        _ = cancel.cancelled() => Err(MirrorError::Cancelled),
    };
    let client = match copied {
        Ok(c) => c,
        Err(e) => {
            export.stop_tracking();
            tracing::warn!(disc = %disc.name, error = %error_chain(&e), "migration failed; still serving here");
            progress.fail(MigrationState::Failed, &e);
            if !matches!(e, MirrorError::Cancelled) {
                report(&agent, &disc, &cancel).await;
            }
            return;
        }
    };
    final_phase(&agent, &disc, &export, client, &progress, &cancel).await;
}

/// Pushes the disc's resource (with progress) to the brain, unless the
/// disc is busy with an order that may be cancelling us.
async fn report(agent: &Arc<TailAgent>, disc: &Arc<Disc>, cancel: &CancellationToken) {
    let spec = tokio::select! {
        state = disc.state.lock() => agent.reported(&state).await,
        _ = cancel.cancelled() => return,
    };
    agent.notify_disc(&disc.name, spec).await;
}

fn parse_endpoint(s: &str) -> Result<SocketAddr, MirrorError> {
    s.parse().map_err(|_| MirrorError::BadEndpoint {
        endpoint: s.to_owned(),
    })
}

async fn copy_phase(
    agent: &Arc<TailAgent>,
    disc: &Arc<Disc>,
    export: &Arc<Export>,
    order: &MigrationOrder,
    progress: &Progress,
) -> Result<NbdClient, MirrorError> {
    let endpoint = parse_endpoint(&order.endpoint)?;
    export.start_tracking();
    let from = agent.config().storage_address;
    let mut client = NbdClient::connect(endpoint, Some(from), export.name())
        .await
        .map_err(MirrorError::Destination)?;
    let size = export.size();
    if client.size() != size {
        return Err(MirrorError::SizeMismatch {
            dest: client.size(),
            ours: size,
        });
    }
    if order.backups {
        let pools = agent.config().pools.clone();
        let (n, bytes) = crate::backup_transfer::send_all(&pools, &disc.name, &mut client)
            .await
            .map_err(MirrorError::Backups)?;
        if n > 0 {
            tracing::info!(disc = %disc.name, backups = n, bytes, "backups sent ahead of the disc");
        }
    }
    let allocated = export.allocated_bytes().map_err(MirrorError::Local)?;
    progress.update(|p| p.bytes_total = allocated);
    let mut last_report = Instant::now();
    // Pass 0 in segments, so progress reaches the brain as it goes.
    let mut at = 0;
    while at < size {
        let end = (at + SEGMENT).min(size);
        copy_range(export, &mut client, at, end, progress).await?;
        at = end;
        if last_report.elapsed() > PROGRESS_EVERY {
            last_report = Instant::now();
            agent.notify_progress(disc).await;
        }
    }
    for pass in 1..=MAX_PASSES {
        let dirty = export.dirty_blocks() * crate::nbd::export::DIRTY_BLOCK;
        if dirty <= SMALL_DIRTY {
            break;
        }
        tracing::debug!(disc = %disc.name, pass, dirty, "copying blocks written meanwhile");
        progress.update(|p| p.bytes_total += dirty);
        for (off, len) in export.take_dirty().ranges() {
            copy_range(export, &mut client, off, (off + len).min(size), progress).await?;
        }
        if last_report.elapsed() > PROGRESS_EVERY {
            last_report = Instant::now();
            agent.notify_progress(disc).await;
        }
    }
    Ok(client)
}

/// Makes `[start, end)` on the destination equal to ours: data as WRITE,
/// holes as WRITE_ZEROES without NO_HOLE (punched there too).
async fn copy_range(
    export: &Arc<Export>,
    client: &mut NbdClient,
    start: u64,
    end: u64,
    progress: &Progress,
) -> Result<(), MirrorError> {
    let e = export.clone();
    let data = tokio::task::spawn_blocking(move || e.data_ranges(start, end))
        .await
        .expect("data_ranges panicked")
        .map_err(MirrorError::Local)?;
    let mut pos = start;
    let mut pieces: Vec<(u64, u64, bool)> = vec![];
    for (off, len) in data {
        if off > pos {
            pieces.push((pos, off - pos, false));
        }
        pieces.push((off, len, true));
        pos = off + len;
    }
    if pos < end {
        pieces.push((pos, end - pos, false));
    }
    crate::mirror_send::send_pieces(export, client, &pieces, CHUNK, WINDOW, |n| {
        progress.update(|p| p.bytes_done += n)
    })
    .await
}

/// One full pass of the mirror's copy, from `export` to the NBD server at
/// `dest` (as the migration's pass 0 does it); returns the bytes of data
/// sent. For `bigv-tail bench`, to compare the mirror's rate with `cp`.
pub async fn copy_once(export: &Arc<Export>, dest: SocketAddr) -> Result<u64, MirrorError> {
    let mut client = NbdClient::connect(dest, None, export.name())
        .await
        .map_err(MirrorError::Destination)?;
    let progress = Progress {
        shared: Arc::new(Mutex::new(MigrationProgress {
            to: dest.to_string(),
            bytes_done: 0,
            bytes_total: 0,
            bytes_per_second: 0,
            eta_seconds: None,
            seq: 0,
            state: MigrationState::Copying,
            error: None,
        })),
        started: Instant::now(),
    };
    copy_range(export, &mut client, 0, export.size(), &progress).await?;
    client
        .submit(Command::Flush, 0, 0, 0, None)
        .await
        .map_err(MirrorError::Destination)?;
    client.complete().await.map_err(MirrorError::Destination)?;
    let _ = client.disconnect().await;
    let done = progress
        .shared
        .lock()
        .expect("progress poisoned")
        .bytes_done;
    Ok(done)
}

async fn final_phase(
    agent: &Arc<TailAgent>,
    disc: &Arc<Disc>,
    export: &Arc<Export>,
    mut client: NbdClient,
    progress: &Progress,
    cancel: &CancellationToken,
) {
    let name = &disc.name;
    let mut state = tokio::select! {
        s = disc.state.lock() => s,
        _ = cancel.cancelled() => {
            export.stop_tracking();
            progress.fail(MigrationState::Failed, &MirrorError::Cancelled);
            return;
        }
    };
    progress.update(|p| p.state = MigrationState::Syncing);
    let paused_at = Instant::now();
    let gate = export.gate.write().await;
    let synced = async {
        let dirty = export.take_dirty();
        let size = export.size();
        progress.update(|p| p.bytes_total += dirty.len() * crate::nbd::export::DIRTY_BLOCK);
        for (off, len) in dirty.ranges() {
            copy_range(export, &mut client, off, (off + len).min(size), progress).await?;
        }
        // Everything on the destination's disc before it is asked to serve.
        client
            .submit(Command::Flush, 0, 0, 0, None)
            .await
            .map_err(MirrorError::Destination)?;
        client.complete().await.map_err(MirrorError::Destination)?;
        Ok::<(), MirrorError>(())
    }
    .await;
    export.stop_tracking();
    if let Err(e) = synced {
        drop(gate);
        tracing::warn!(%name, error = %error_chain(&e), "final pass failed; still serving here");
        progress.fail(MigrationState::Failed, &e);
        let spec = agent.reported(&state).await;
        drop(state);
        agent.notify_disc(name, spec).await;
        return;
    }
    // From here no request lands on this copy.
    export.set_fenced(true);
    drop(gate);
    if let Err(e) = agent.unserve(name, &mut state).await {
        export.set_fenced(false);
        let err = MirrorError::Unserve(e.message);
        tracing::warn!(%name, error = %error_chain(&err), "handover aborted; serving here again");
        progress.fail(MigrationState::Failed, &err);
        let _ = agent.serve(name, &mut state).await;
        let spec = agent.reported(&state).await;
        drop(state);
        agent.notify_disc(name, spec).await;
        return;
    }
    match client.handover().await {
        Ok(()) => {
            let paused = paused_at.elapsed();
            let _ = client.disconnect().await;
            let path = disc.path.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || pools::remove_disc(&path))
                .await
                .expect("remove panicked")
            {
                tracing::warn!(%name, error = %error_chain(&e), "handed over, but deleting the old copy failed");
            }
            // The backups were sent ahead (`migrate_to.backups`), or else
            // stay with this tail, which no longer holds the disc: they go
            // either way (in the second case the brain marks them lost).
            let (pools, n) = (agent.config().pools.clone(), name.clone());
            if let Err(e) =
                tokio::task::spawn_blocking(move || crate::backups::delete_all(&pools, &n))
                    .await
                    .expect("remove panicked")
            {
                tracing::warn!(%name, error = %error_chain(&e), "handed over, but deleting its backups failed");
            }
            state.gone = true;
            state.mirror = None;
            drop(state);
            agent.forget(name);
            tracing::info!(%name, paused_ms = paused.as_millis() as u64, "migration handed over; old copy deleted");
            agent.notify_destroyed(name.clone()).await;
        }
        Err(e @ ClientError::Request { .. }) => {
            // The destination answered "no": it does not serve. Resume.
            export.set_fenced(false);
            let err = MirrorError::Destination(e);
            tracing::warn!(%name, error = %error_chain(&err), "handover refused; serving here again");
            progress.fail(MigrationState::Failed, &err);
            if let Err(e) = agent.serve(name, &mut state).await {
                tracing::warn!(%name, error = e.message, "could not resume service");
            }
            let spec = agent.reported(&state).await;
            drop(state);
            agent.notify_disc(name, spec).await;
        }
        Err(e) => {
            let err = MirrorError::Destination(e);
            tracing::error!(%name, error = %error_chain(&err), "handover unconfirmed: not serving until the brain decides");
            progress.fail(MigrationState::Uncertain, &err);
            state.spec.migration = Some(progress.shared.lock().expect("progress poisoned").clone());
            if let Err(e) = agent.persist(&disc.path, name, &state).await {
                tracing::warn!(%name, error = e.message, "could not record the uncertain handover");
            }
            let spec = agent.reported(&state).await;
            drop(state);
            agent.notify_disc(name, spec).await;
        }
    }
}

/// On a migration destination: waits for the source's handover, commits
/// to serving (records that the disc is no longer incoming), answers,
/// then serves on the disc's address.
pub(crate) fn spawn_handover_waiter(
    agent: Arc<TailAgent>,
    name: ResourceName,
    mut rx: mpsc::Receiver<HandoverRequest>,
) {
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let Some(disc) = agent.disc(&name) else {
                let _ = req.reply.send(Err("the disc was removed".into()));
                return;
            };
            let mut state = disc.state.lock().await;
            let Some(incoming) = state.spec.incoming.take() else {
                let _ = req.reply.send(Ok(()));
                continue;
            };
            if let Err(e) = agent.persist(&disc.path, &name, &state).await {
                state.spec.incoming = Some(incoming);
                let _ = req.reply.send(Err(e.message));
                continue;
            }
            let _ = req.reply.send(Ok(()));
            tracing::info!(%name, from = incoming.from, "took the disc over");
            let listener = state.incoming.take();
            if let Err(e) = agent.serve(&name, &mut state).await {
                tracing::error!(%name, error = e.message, "took the disc over but cannot serve it");
            }
            drop(state);
            if let Some(listener) = listener {
                listener.stop().await;
            }
            agent.report_disc(&disc, false).await;
            return;
        }
    });
}
