//! One VM's serial console shared by any number of clients.
//!
//! A task per VM owns the console. Output comes from qemu's scroll-back
//! file (the serial chardev's `logfile`), which holds exactly the bytes
//! the guest wrote, so a client attaching gets the scroll-back since
//! power-on and then the live output as one stream, with no gap and no
//! repeat. While at least one client is attached the task holds qemu's
//! serial socket: it reads it all the time and throws the bytes away (a
//! console client that stops reading stalls the guest; docs/head.md), and
//! writes every client's keystrokes to it. With nobody attached it lets
//! go of the socket, so an operator (or a test) can still use the socket
//! directly.
//!
//! Output goes to clients through a `broadcast` channel: a client too slow
//! to keep up loses the oldest chunks ([`Output::Lost`]) and never holds
//! up the guest or the other clients.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How often the scroll-back file is read while clients are attached.
pub const POLL: Duration = Duration::from_millis(20);
/// At most this much scroll-back is replayed to a new client (the end of
/// it): a guest up for months may have written gigabytes.
pub const SCROLLBACK_MAX: u64 = 1 << 20;
/// Chunks a client may fall behind before it loses output.
const LAG_CHUNKS: usize = 1024;
/// At most this much is read from the file per chunk.
const CHUNK: usize = 16 * 1024;

/// What one VM's console task needs.
#[derive(Debug, Clone)]
pub struct SerialPaths {
    /// qemu's serial chardev socket.
    pub socket: PathBuf,
    /// qemu's serial `logfile`.
    pub log: PathBuf,
    /// Where this power-on's output starts in `log` (the log is appended
    /// to across starts).
    pub start: u64,
}

/// A handle on a VM's console task; cheap to clone.
#[derive(Clone)]
pub struct Serial {
    attach: mpsc::Sender<oneshot::Sender<Attached>>,
}

/// One client's view of the console.
pub struct Attached {
    /// The output since power-on (at most [`SCROLLBACK_MAX`], the end).
    pub scrollback: Vec<u8>,
    output: broadcast::Receiver<Bytes>,
    input: mpsc::Sender<Bytes>,
}

/// The next thing a client sees.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    Data(Bytes),
    /// The client fell behind and this many chunks were skipped.
    Lost(u64),
    /// The console is gone (the VM stopped).
    Closed,
}

impl Attached {
    pub async fn next(&mut self) -> Output {
        match self.output.recv().await {
            Ok(b) => Output::Data(b),
            Err(broadcast::error::RecvError::Lagged(n)) => Output::Lost(n),
            Err(broadcast::error::RecvError::Closed) => Output::Closed,
        }
    }

    /// Sends keystrokes to the guest; false once the console is gone.
    /// Waits while the guest is not reading its console.
    pub async fn send(&self, bytes: Bytes) -> bool {
        self.input.send(bytes).await.is_ok()
    }
}

impl Serial {
    /// Starts the console task; it ends when `stop` is cancelled.
    pub fn start(vm: String, paths: SerialPaths, stop: CancellationToken) -> Serial {
        let (attach, requests) = mpsc::channel(16);
        tokio::spawn(run(vm, paths, requests, stop));
        Serial { attach }
    }

    /// A console that is already gone (for tests).
    #[cfg(test)]
    pub(crate) fn detached() -> Serial {
        let (attach, _) = mpsc::channel(1);
        Serial { attach }
    }

    /// Attaches a client; `None` once the console is gone.
    pub async fn attach(&self) -> Option<Attached> {
        let (tx, rx) = oneshot::channel();
        self.attach.send(tx).await.ok()?;
        rx.await.ok()
    }
}

/// Reads `log` from `from` to its end (what is there now).
fn read_from(log: &std::path::Path, from: u64, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(mut f) = std::fs::File::open(log)
        && f.seek(SeekFrom::Start(from)).is_ok()
    {
        let _ = f.take(max as u64).read_to_end(&mut out);
    }
    out
}

fn log_len(log: &std::path::Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

struct Task {
    vm: String,
    paths: SerialPaths,
    output: broadcast::Sender<Bytes>,
    /// How far the log has been broadcast (while clients are attached).
    offset: u64,
}

impl Task {
    /// Broadcasts whatever the log gained since the last poll.
    fn poll(&mut self) {
        loop {
            let new = read_from(&self.paths.log, self.offset, CHUNK);
            if new.is_empty() {
                return;
            }
            self.offset += new.len() as u64;
            let _ = self.output.send(Bytes::from(new));
        }
    }

    /// Subscribes a client after bringing the broadcast up to date, so its
    /// scroll-back ends exactly where its live output starts.
    fn attach(&mut self, reply: oneshot::Sender<Attached>, input: &mpsc::Sender<Bytes>) {
        self.poll();
        let from = self
            .paths
            .start
            .max(self.offset.saturating_sub(SCROLLBACK_MAX));
        let scrollback = read_from(&self.paths.log, from, (self.offset - from) as usize);
        let _ = reply.send(Attached {
            scrollback,
            output: self.output.subscribe(),
            input: input.clone(),
        });
    }
}

async fn run(
    vm: String,
    paths: SerialPaths,
    mut requests: mpsc::Receiver<oneshot::Sender<Attached>>,
    stop: CancellationToken,
) {
    let (output, _) = broadcast::channel(LAG_CHUNKS);
    let (input, mut keys) = mpsc::channel::<Bytes>(64);
    let mut task = Task {
        vm,
        paths,
        output,
        offset: 0,
    };
    loop {
        // Idle: nobody attached, the socket is free.
        let reply = tokio::select! {
            r = requests.recv() => match r {
                Some(r) => r,
                None => return,
            },
            _ = stop.cancelled() => return,
        };
        task.offset = log_len(&task.paths.log).max(task.paths.start);
        let socket = match UnixStream::connect(&task.paths.socket).await {
            Ok(s) => Some(s),
            Err(error) => {
                // Output still flows from the log; keystrokes are dropped.
                tracing::warn!(vm = %task.vm, %error, socket = %task.paths.socket.display(), "connecting to the serial console");
                None
            }
        };
        task.attach(reply, &input);
        tracing::debug!(vm = %task.vm, "serial console attached");
        if !serve_attached(&mut task, socket, &mut requests, &input, &mut keys, &stop).await {
            return;
        }
        // Keystrokes typed as the last client left are not for the next.
        while keys.try_recv().is_ok() {}
        tracing::debug!(vm = %task.vm, "serial console idle: last client detached");
    }
}

/// Serves attached clients with the socket held, until the last one
/// leaves (true) or the console ends (false).
async fn serve_attached(
    task: &mut Task,
    socket: Option<UnixStream>,
    requests: &mut mpsc::Receiver<oneshot::Sender<Attached>>,
    input: &mpsc::Sender<Bytes>,
    keys: &mut mpsc::Receiver<Bytes>,
    stop: &CancellationToken,
) -> bool {
    let (mut from_guest, mut to_guest) = match socket {
        Some(s) => {
            let (r, w) = s.into_split();
            (Some(r), Some(w))
        }
        None => (None, None),
    };
    // Reads and discards the socket until qemu closes it.
    let drain = async {
        let mut sink = vec![0u8; CHUNK];
        match from_guest.as_mut() {
            Some(r) => while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {},
            None => std::future::pending::<()>().await,
        }
    };
    // Writes keystrokes until the socket breaks; then drops them.
    // Never ends (`input` outlives it).
    let feed = async {
        while let Some(bytes) = keys.recv().await {
            if let Some(w) = to_guest.as_mut()
                && w.write_all(&bytes).await.is_err()
            {
                to_guest = None;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::pin!(drain, feed);
    let mut drained = false;
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = &mut drain, if !drained => drained = true,
            _ = &mut feed => {}
            r = requests.recv() => match r {
                Some(reply) => task.attach(reply, input),
                None => return false,
            },
            _ = tick.tick() => {
                task.poll();
                if task.output.receiver_count() == 0 {
                    return true;
                }
            }
            _ = stop.cancelled() => {
                task.poll();
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    async fn next_data(a: &mut Attached) -> Vec<u8> {
        match tokio::time::timeout(Duration::from_secs(5), a.next()).await {
            Ok(Output::Data(b)) => b.to_vec(),
            other => panic!("expected data, got {other:?}"),
        }
    }

    /// Reads `a` until `want` has been seen, returning all it read.
    async fn read_until(a: &mut Attached, want: &[u8]) -> Vec<u8> {
        let mut all = vec![];
        while !all.windows(want.len()).any(|w| w == want) {
            all.extend(next_data(a).await);
        }
        all
    }

    #[tokio::test]
    async fn clients_share_scrollback_live_output_and_input() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let sock = dir.path().join("serial.sock");
        // The previous power-on's output stays out of the scroll-back.
        std::fs::write(&log, b"old boot\n").unwrap();
        let start = log_len(&log);
        std::fs::write(&log, b"old boot\nBOOT 1\n").unwrap();
        let listener = UnixListener::bind(&sock).unwrap();
        let stop = CancellationToken::new();
        let serial = Serial::start(
            "t".into(),
            SerialPaths {
                socket: sock.clone(),
                log: log.clone(),
                start,
            },
            stop.clone(),
        );
        let mut a = serial.attach().await.unwrap();
        assert_eq!(a.scrollback, b"BOOT 1\n");
        let (mut guest, _) = listener.accept().await.unwrap();

        let append = |b: &[u8]| {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(&log)
                .unwrap()
                .write_all(b)
                .unwrap();
        };
        append(b"TICK 1\n");
        assert_eq!(read_until(&mut a, b"TICK 1\n").await, b"TICK 1\n");
        let mut b = serial.attach().await.unwrap();
        assert_eq!(b.scrollback, b"BOOT 1\nTICK 1\n");
        append(b"TICK 2\n");
        assert_eq!(read_until(&mut a, b"TICK 2\n").await, b"TICK 2\n");
        assert_eq!(read_until(&mut b, b"TICK 2\n").await, b"TICK 2\n");

        // Both type; the guest gets both.
        assert!(a.send(Bytes::from_static(b"sta")).await);
        assert!(b.send(Bytes::from_static(b"tus\n")).await);
        let mut got = vec![0u8; 7];
        tokio::time::timeout(Duration::from_secs(5), guest.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"status\n");

        // The last client gone, the socket is let go of.
        drop(a);
        drop(b);
        let mut rest = vec![];
        let n = tokio::time::timeout(Duration::from_secs(5), guest.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
        // And taken again for the next client, who sees it all.
        let c = serial.attach().await.unwrap();
        assert_eq!(c.scrollback, b"BOOT 1\nTICK 1\nTICK 2\n");
        let _guest = listener.accept().await.unwrap();
        stop.cancel();
        let mut c = c;
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), c.next())
                .await
                .unwrap(),
            Output::Closed
        );
    }

    #[tokio::test]
    async fn the_socket_is_drained_whatever_clients_do() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let sock = dir.path().join("serial.sock");
        std::fs::write(&log, b"").unwrap();
        let listener = UnixListener::bind(&sock).unwrap();
        let stop = CancellationToken::new();
        let serial = Serial::start(
            "t".into(),
            SerialPaths {
                socket: sock,
                log: log.clone(),
                start: 0,
            },
            stop.clone(),
        );
        // A client that never reads.
        let _idle = serial.attach().await.unwrap();
        let (mut guest, _) = listener.accept().await.unwrap();
        // The "guest" writes far more than any socket buffer holds: it
        // must never block.
        let block = vec![b'x'; 64 * 1024];
        tokio::time::timeout(Duration::from_secs(10), async {
            for _ in 0..256 {
                guest.write_all(&block).await.unwrap();
            }
        })
        .await
        .expect("the console task stopped reading the guest");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_slow_client_loses_output_not_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        std::fs::write(&log, b"").unwrap();
        let stop = CancellationToken::new();
        let serial = Serial::start(
            "t".into(),
            SerialPaths {
                socket: dir.path().join("absent.sock"),
                log: log.clone(),
                start: 0,
            },
            stop.clone(),
        );
        let mut slow = serial.attach().await.unwrap();
        let mut fast = serial.attach().await.unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        // Bursts of 100 chunks, the fast client keeping up with each.
        let bursts = LAG_CHUNKS / 100 + 2;
        let mut seen = 0usize;
        for i in 0..bursts {
            use std::io::Write;
            f.write_all(&vec![b'a' + i as u8; 100 * CHUNK]).unwrap();
            while seen < (i + 1) * 100 * CHUNK {
                match tokio::time::timeout(Duration::from_secs(5), fast.next()).await {
                    Ok(Output::Data(b)) => seen += b.len(),
                    other => panic!("{other:?}"),
                }
            }
        }
        let total = bursts * 100 * CHUNK;
        assert_eq!(seen, total);
        assert!(matches!(slow.next().await, Output::Lost(n) if n > 0));
        assert!(matches!(slow.next().await, Output::Data(_)));
        stop.cancel();
    }
}
