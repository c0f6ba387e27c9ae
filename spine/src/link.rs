//! What both ends of a spine connection share: the byte stream (plain TCP
//! or TLS), a writer task fed by a channel, and keepalive bookkeeping.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::codec::{CodecError, FrameCodec};

/// Any byte stream a spine connection can run over.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ByteStream for T {}

pub type BoxStream = Box<dyn ByteStream>;

/// Both sides ping every `interval` and give up on a peer that has sent
/// nothing at all for `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(20),
        }
    }
}

/// How one session ended, seen from the end that reports it.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("could not connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake failed")]
    Tls(#[source] std::io::Error),
    #[error("no {expected} within {waited:?}")]
    HandshakeTimeout {
        expected: &'static str,
        waited: Duration,
    },
    #[error(
        "protocol version mismatch: node speaks {node_version}, brain speaks {brain_min}..={brain_max}"
    )]
    VersionMismatch {
        node_version: u32,
        brain_min: u32,
        brain_max: u32,
    },
    #[error("peer silent for {silent_for:?} (keepalive timeout)")]
    KeepaliveTimeout { silent_for: Duration },
    #[error("peer sent a bad frame: {0}")]
    BadFrame(#[source] CodecError),
    #[error("peer sent {0} at the wrong time")]
    Unexpected(&'static str),
    #[error("peer reported a protocol error: {message}")]
    PeerProtocolError { message: String },
    #[error("peer closed the connection")]
    Closed,
    #[error("closed locally")]
    ClosedLocally,
    #[error("replaced by a newer connection from the same node")]
    Replaced,
}

/// Wraps a byte stream in the frame codec and starts its writer task.
pub(crate) struct Link<In, Out> {
    pub frames: futures::stream::SplitStream<Framed<BoxStream, FrameCodec<In, Out>>>,
    pub out: mpsc::Sender<Out>,
    stop_writer: CancellationToken,
    writer: JoinHandle<()>,
}

/// How many frames may wait for the writer before senders wait too.
const OUTBOX: usize = 1024;

impl<In, Out> Link<In, Out>
where
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
{
    pub fn new(stream: BoxStream, max_frame: usize) -> Self {
        let (sink, frames) = Framed::new(stream, FrameCodec::<In, Out>::new(max_frame)).split();
        let (out, rx) = mpsc::channel(OUTBOX);
        let stop_writer = CancellationToken::new();
        let writer = tokio::spawn(write_loop(sink, rx, stop_writer.clone()));
        Link {
            frames,
            out,
            stop_writer,
            writer,
        }
    }

    /// Next frame; `None` when the peer closed cleanly.
    pub async fn next(&mut self) -> Option<Result<In, CodecError>> {
        self.frames.next().await
    }

    /// Sends `last` (if any) and whatever is queued, then closes the stream.
    pub async fn close(self, last: Option<Out>) {
        if let Some(frame) = last {
            // A full outbox means a dead peer; don't wait for it.
            let _ = self.out.try_send(frame);
        }
        self.stop_writer.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.writer).await;
    }
}

async fn write_loop<Out: Serialize>(
    mut sink: futures::stream::SplitSink<
        Framed<BoxStream, FrameCodec<impl DeserializeOwned, Out>>,
        Out,
    >,
    mut rx: mpsc::Receiver<Out>,
    stop: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            frame = rx.recv() => frame,
            _ = stop.cancelled() => None,
        };
        let Some(frame) = frame else { break };
        if let Err(e) = sink.feed(frame).await {
            tracing::debug!(error = %e, "spine write failed");
            return;
        }
        // Batch whatever else is queued into one flush.
        while let Ok(frame) = rx.try_recv() {
            if sink.feed(frame).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    // Stopping: drain what is already queued (e.g. a final error frame).
    while let Ok(frame) = rx.try_recv() {
        if sink.feed(frame).await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

/// Tracks when we last heard from the peer and numbers our pings.
pub(crate) struct Liveness {
    config: Keepalive,
    last_heard: Instant,
    seq: u64,
}

impl Liveness {
    pub fn new(config: Keepalive) -> Self {
        Liveness {
            config,
            last_heard: Instant::now(),
            seq: 0,
        }
    }

    pub fn ticker(&self) -> tokio::time::Interval {
        let mut t =
            tokio::time::interval_at(Instant::now() + self.config.interval, self.config.interval);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    }

    pub fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    /// On each tick: the sequence number to ping with, or the timeout.
    pub fn tick(&mut self) -> Result<u64, SessionError> {
        let silent_for = self.last_heard.elapsed();
        if silent_for > self.config.timeout {
            return Err(SessionError::KeepaliveTimeout { silent_for });
        }
        self.seq += 1;
        Ok(self.seq)
    }
}
