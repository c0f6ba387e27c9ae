//! Node logs to the brain (protocol version 2): a node's agent keeps its
//! recent log lines (its own `tracing` events, as filtered for its console,
//! and init's log file) in a
//! bounded [`LogBuffer`] and sends them as `log` frames while a session is
//! up; the brain keeps the last [`BRAIN_LINES`] per node for operators
//! (`/admin/heads/{id}/logs`). The serial console stays the complete
//! record: lines that do not fit, or that were drained into a session that
//! then broke, are lost, and a gap is said so with a `dropped` line.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

/// One log line as it travels and as the brain keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    /// Unix milliseconds on the node's clock.
    pub at_ms: u64,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// Who wrote it: `agent` or `init`.
    pub source: String,
    pub message: String,
}

/// Lines a node keeps while the spine is down.
pub const NODE_LINES: usize = 2000;
/// Lines the brain keeps per node.
pub const BRAIN_LINES: usize = 1000;
/// Lines per `log` frame.
pub const FRAME_LINES: usize = 200;
/// Longest message kept, in bytes (longer ones are cut at a char boundary).
pub const MAX_MESSAGE: usize = 2048;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Cuts `message` to [`MAX_MESSAGE`] bytes.
pub fn clamp(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// A bounded queue of lines waiting for the spine; the oldest go first
/// when it is full, and the next drain reports how many.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    lines: VecDeque<LogLine>,
    dropped: u64,
}

impl std::fmt::Debug for LogBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |i| i.lines.len());
        write!(f, "LogBuffer({n} lines)")
    }
}

impl LogBuffer {
    pub fn new() -> LogBuffer {
        LogBuffer::default()
    }

    pub fn push(&self, line: LogLine) {
        let mut inner = self.0.lock().expect("log buffer poisoned");
        if inner.lines.len() >= NODE_LINES {
            inner.lines.pop_front();
            inner.dropped += 1;
        }
        inner.lines.push_back(LogLine {
            message: clamp(line.message),
            ..line
        });
    }

    /// Up to [`FRAME_LINES`] lines, oldest first, after a line saying how
    /// many were dropped since the last drain (if any were).
    pub fn drain(&self) -> Vec<LogLine> {
        let mut inner = self.0.lock().expect("log buffer poisoned");
        let mut out = Vec::new();
        if inner.dropped > 0 {
            out.push(LogLine {
                at_ms: now_ms(),
                level: "WARN".into(),
                source: "agent".into(),
                message: format!(
                    "{} log lines dropped while the spine was down",
                    inner.dropped
                ),
            });
            inner.dropped = 0;
        }
        let n = inner.lines.len().min(FRAME_LINES - out.len());
        out.extend(inner.lines.drain(..n));
        out
    }

    pub fn is_empty(&self) -> bool {
        let inner = self.0.lock().expect("log buffer poisoned");
        inner.lines.is_empty() && inner.dropped == 0
    }
}

/// A `tracing` layer copying the events the subscriber's filter lets
/// through into a buffer as `source: agent` lines (`message key=value …`).
pub struct BufferLayer {
    buffer: LogBuffer,
}

impl BufferLayer {
    pub fn new(buffer: LogBuffer) -> BufferLayer {
        BufferLayer { buffer }
    }
}

impl<S: tracing::Subscriber> Layer<S> for BufferLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        let mut text = Text::default();
        event.record(&mut text);
        self.buffer.push(LogLine {
            at_ms: now_ms(),
            level: level.to_string(),
            source: "agent".into(),
            message: text.0,
        });
    }
}

#[derive(Default)]
struct Text(String);

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

/// The process's buffer, once [`init_agent_tracing`] installed it.
static INSTALLED: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();

/// The buffer a node agent's spine sessions send from, if installed.
pub fn installed() -> Option<LogBuffer> {
    INSTALLED.get().cloned()
}

/// A node agent's logging: `tracing` to stderr (init puts it on the
/// serial console) and into the buffer its spine sessions send; and, when
/// `BIGV_INIT_LOG` names init's log file, init's lines as well (see
/// [`follow_init_log`]).
pub fn init_agent_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let buffer = INSTALLED.get_or_init(LogBuffer::new).clone();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // One filter for both: the brain gets what the console gets (RUST_LOG,
    // which init sets from `bigv.log=`).
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(BufferLayer::new(buffer.clone()))
        .init();
    if let Some(path) = std::env::var_os("BIGV_INIT_LOG") {
        let path = std::path::PathBuf::from(path);
        std::thread::Builder::new()
            .name("init-log".into())
            .spawn(move || follow_init_log(&path, &buffer))
            .ok();
    }
}

/// Copies init's log file into `buffer` as `source: init` lines, forever,
/// checking every second. How far it got is kept in `<file>.sent` so a
/// restarted agent does not send the same lines again.
pub fn follow_init_log(path: &std::path::Path, buffer: &LogBuffer) {
    let mark = path.with_extension("sent");
    let mut offset: u64 = std::fs::read_to_string(&mark)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    loop {
        offset = copy_new_lines(path, offset, buffer);
        let _ = std::fs::write(&mark, offset.to_string());
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Pushes the complete lines of `path` after `offset`; returns the offset
/// after the last one (a file that shrank starts over).
pub fn copy_new_lines(path: &std::path::Path, offset: u64, buffer: &LogBuffer) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return offset;
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let offset = if len < offset { 0 } else { offset };
    let mut data = Vec::new();
    if f.seek(SeekFrom::Start(offset)).is_err() || f.read_to_end(&mut data).is_err() {
        return offset;
    }
    let Some(end) = data.iter().rposition(|b| *b == b'\n') else {
        return offset;
    };
    for raw in data[..end].split(|b| *b == b'\n') {
        let text = String::from_utf8_lossy(raw).trim().to_string();
        if text.is_empty() {
            continue;
        }
        let level = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
            .into_iter()
            .find(|l| text.contains(&format!(" {l} ")) || text.starts_with(&format!("{l} ")))
            .unwrap_or("INFO");
        buffer.push(LogLine {
            at_ms: now_ms(),
            level: level.into(),
            source: "init".into(),
            message: text,
        });
    }
    offset + end as u64 + 1
}

/// What the brain keeps per node: the last [`BRAIN_LINES`] lines, across
/// reconnects (not across a brain restart).
#[derive(Default)]
pub struct NodeLogs {
    lines: VecDeque<LogLine>,
}

impl NodeLogs {
    pub fn extend(&mut self, lines: impl IntoIterator<Item = LogLine>) {
        for line in lines {
            if self.lines.len() >= BRAIN_LINES {
                self.lines.pop_front();
            }
            self.lines.push_back(LogLine {
                message: clamp(line.message),
                ..line
            });
        }
    }

    /// The last `n` lines, oldest first.
    pub fn last(&self, n: usize) -> Vec<LogLine> {
        let skip = self.lines.len().saturating_sub(n);
        self.lines.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn line(i: usize) -> LogLine {
        LogLine {
            at_ms: i as u64,
            level: "INFO".into(),
            source: "init".into(),
            message: format!("line {i}"),
        }
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_says_so() {
        let b = LogBuffer::new();
        for i in 0..NODE_LINES + 5 {
            b.push(line(i));
        }
        let first = b.drain();
        assert_eq!(first.len(), FRAME_LINES);
        assert_eq!(
            first[0].message,
            "5 log lines dropped while the spine was down"
        );
        assert_eq!(first[1].message, "line 5");
        let mut all = first[1..].to_vec();
        while !b.is_empty() {
            all.extend(b.drain());
        }
        assert_eq!(all.len(), NODE_LINES);
        assert_eq!(
            all.last().unwrap().message,
            format!("line {}", NODE_LINES + 4)
        );
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let m = clamp("é".repeat(MAX_MESSAGE));
        assert!(m.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(m.ends_with('…'));
    }

    #[test]
    fn the_brain_keeps_the_last_lines() {
        let mut logs = NodeLogs::default();
        logs.extend((0..BRAIN_LINES + 10).map(line));
        let last = logs.last(3);
        assert_eq!(
            last.iter().map(|l| l.at_ms).collect::<Vec<_>>(),
            [
                BRAIN_LINES as u64 + 7,
                BRAIN_LINES as u64 + 8,
                BRAIN_LINES as u64 + 9
            ]
        );
        assert_eq!(logs.last(usize::MAX).len(), BRAIN_LINES);
    }

    #[test]
    fn inits_log_file_is_copied_line_by_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init.log");
        std::fs::write(
            &path,
            "   0.1s  INFO modules loaded\n   0.2s  WARN module not lo",
        )
        .unwrap();
        let b = LogBuffer::new();
        let offset = copy_new_lines(&path, 0, &b);
        let lines = b.drain();
        assert_eq!(lines.len(), 1, "a partial line waits: {lines:?}");
        assert_eq!(
            (lines[0].level.as_str(), lines[0].source.as_str()),
            ("INFO", "init")
        );
        assert_eq!(lines[0].message, "0.1s  INFO modules loaded");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"aded\n").unwrap();
        let offset = copy_new_lines(&path, offset, &b);
        let lines = b.drain();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].level, "WARN");
        assert_eq!(lines[0].message, "0.2s  WARN module not loaded");
        assert_eq!(copy_new_lines(&path, offset, &b), offset);
        assert!(b.is_empty());
    }

    #[test]
    fn the_layer_copies_what_the_filter_lets_through_with_fields() {
        let b = LogBuffer::new();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("info"))
            .with(BufferLayer::new(b.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(vm = "web1", "qemu started");
            tracing::debug!("not copied");
            tracing::warn!("disc slow");
        });
        let lines = b.drain();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].message, "qemu started vm=\"web1\"");
        assert_eq!(
            (lines[1].level.as_str(), lines[1].source.as_str()),
            ("WARN", "agent")
        );
    }
}
