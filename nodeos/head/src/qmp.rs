//! A small QMP client of our own: JSON lines over the VM's unix socket.
//!
//! [`parse`] turns one line from qemu into a [`Message`]; it faces a
//! socket, so it never panics and refuses what it does not understand.
//! [`Qmp`] negotiates capabilities, runs commands (matched to replies by
//! `id`) and hands events to the VM's supervisor. When the connection
//! ends, the event channel closes: that is how the supervisor learns
//! qemu has gone.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, LinesCodec};

/// Longest line we accept from qemu (our commands' replies are small).
pub const MAX_LINE: usize = 1 << 20;

/// One message from qemu.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `{"QMP": {"version": …, "capabilities": […]}}`, first on connect.
    Greeting {
        version: Option<(u64, u64, u64)>,
    },
    Return {
        id: Option<u64>,
        value: Value,
    },
    Error {
        id: Option<u64>,
        class: String,
        desc: String,
    },
    Event(Event),
}

/// An asynchronous event, e.g. `SHUTDOWN {"guest": true, "reason": "guest-shutdown"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
    /// `(seconds, microseconds)` as qemu stamps it.
    pub timestamp: Option<(i64, i64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not a QMP message: {0}")]
    Shape(&'static str),
}

/// Parses one line (without its newline) from qemu.
pub fn parse(line: &str) -> Result<Message, ParseError> {
    let v: Value = serde_json::from_str(line).map_err(|e| ParseError::Json(e.to_string()))?;
    let obj = v.as_object().ok_or(ParseError::Shape("not an object"))?;
    let id = obj.get("id").and_then(Value::as_u64);
    if let Some(q) = obj.get("QMP") {
        let ver = q.get("version").and_then(|v| v.get("qemu"));
        let part = |k: &str| ver.and_then(|v| v.get(k)).and_then(Value::as_u64);
        let version = match (part("major"), part("minor"), part("micro")) {
            (Some(a), Some(b), Some(c)) => Some((a, b, c)),
            _ => None,
        };
        return Ok(Message::Greeting { version });
    }
    if let Some(value) = obj.get("return") {
        return Ok(Message::Return {
            id,
            value: value.clone(),
        });
    }
    if let Some(err) = obj.get("error") {
        let text = |k: &str| {
            err.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or(ParseError::Shape("error without class/desc"))
        };
        return Ok(Message::Error {
            id,
            class: text("class")?,
            desc: text("desc")?,
        });
    }
    if let Some(name) = obj.get("event") {
        let name = name
            .as_str()
            .ok_or(ParseError::Shape("event name is not a string"))?
            .to_owned();
        let timestamp = obj.get("timestamp").and_then(|t| {
            Some((
                t.get("seconds")?.as_i64()?,
                t.get("microseconds")?.as_i64()?,
            ))
        });
        return Ok(Message::Event(Event {
            name,
            data: obj.get("data").cloned().unwrap_or(Value::Null),
            timestamp,
        }));
    }
    Err(ParseError::Shape("no QMP, return, error or event member"))
}

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connecting to {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no QMP greeting within {0:?}")]
    GreetingTimeout(Duration),
    #[error("unexpected first message from qemu: {0}")]
    BadGreeting(String),
    #[error("the QMP connection is closed")]
    Closed,
    #[error("writing to QMP")]
    Write(#[source] std::io::Error),
    #[error("{command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("{command}: no reply within {waited:?}")]
    Timeout { command: String, waited: Duration },
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, (String, String)>>>>>;

/// A negotiated QMP connection. Dropping it closes the socket (qemu then
/// accepts the next client: the next agent after a restart).
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
    /// How long a command may take.
    pub command_timeout: Duration,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Qmp {
    /// Connects (retrying until `wait` while qemu creates the socket),
    /// reads the greeting and leaves negotiation mode. Events arrive on
    /// the returned channel, which closes when qemu does.
    pub async fn connect(
        path: &Path,
        wait: Duration,
    ) -> Result<(Qmp, mpsc::UnboundedReceiver<Event>), QmpError> {
        let deadline = tokio::time::Instant::now() + wait;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(source) if tokio::time::Instant::now() >= deadline => {
                    return Err(QmpError::Connect {
                        path: path.display().to_string(),
                        source,
                    });
                }
                // qemu creates the socket some tens of ms after it starts,
                // and a new VM waits paused for this connection: a short
                // poll keeps that wait off its start (tools/bench-head.sh).
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let (read, write) = stream.into_split();
        let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE));
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let wait_greeting = remaining.max(Duration::from_secs(5));
        let first = tokio::time::timeout(wait_greeting, lines.next())
            .await
            .map_err(|_| QmpError::GreetingTimeout(wait_greeting))?;
        match first {
            Some(Ok(line)) => match parse(&line) {
                Ok(Message::Greeting { version }) => {
                    tracing::debug!(?version, path = %path.display(), "QMP greeting")
                }
                _ => return Err(QmpError::BadGreeting(line.chars().take(200).collect())),
            },
            _ => return Err(QmpError::Closed),
        }
        let pending: Pending = Arc::default();
        let (events_tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(lines, pending.clone(), events_tx));
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            reader,
            command_timeout: Duration::from_secs(30),
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok((qmp, events))
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"execute": command, "id": id});
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("pending poisoned")
            .insert(id, tx);
        let mut line = msg.to_string();
        line.push('\n');
        let written = {
            let mut w = self.writer.lock().await;
            w.write_all(line.as_bytes()).await
        };
        if let Err(e) = written {
            self.pending.lock().expect("pending poisoned").remove(&id);
            return Err(QmpError::Write(e));
        }
        let reply = tokio::time::timeout(self.command_timeout, rx).await;
        self.pending.lock().expect("pending poisoned").remove(&id);
        match reply {
            Err(_) => Err(QmpError::Timeout {
                command: command.to_owned(),
                waited: self.command_timeout,
            }),
            Ok(Err(_)) => Err(QmpError::Closed),
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err((class, desc)))) => Err(QmpError::Command {
                command: command.to_owned(),
                class,
                desc,
            }),
        }
    }

    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// ACPI power button.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.execute("system_reset", None).await.map(drop)
    }

    /// Ends qemu at once (the VM is switched off, not shut down).
    pub async fn quit(&self) -> Result<(), QmpError> {
        self.execute("quit", None).await.map(drop)
    }

    /// Presses keys together, e.g. `ctrl-alt-delete`.
    pub async fn send_key(&self, keys: &str) -> Result<(), QmpError> {
        let keys: Vec<Value> = keys
            .split('-')
            .filter(|k| !k.is_empty())
            .map(|k| json!({"type": "qcode", "data": k}))
            .collect();
        self.execute("send-key", Some(json!({"keys": keys})))
            .await
            .map(drop)
    }

    /// Sets the balloon target, MiB.
    pub async fn balloon(&self, mib: u64) -> Result<(), QmpError> {
        self.execute("balloon", Some(json!({"value": mib << 20})))
            .await
            .map(drop)
    }

    /// `query-status`: `(status, running)`, e.g. `("running", true)`.
    pub async fn query_status(&self) -> Result<(String, bool), QmpError> {
        let v = self.execute("query-status", None).await?;
        Ok((
            v.get("status")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned(),
            v.get("running").and_then(Value::as_bool).unwrap_or(false),
        ))
    }

    /// Starts listening for an incoming migration (qemu ran with
    /// `-incoming defer`).
    pub async fn migrate_incoming(&self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate-incoming", Some(json!({"uri": uri})))
            .await
            .map(drop)
    }

    /// Bandwidth cap (bytes/s) and longest switch-over pause (ms) of the
    /// next outgoing migration; `None` leaves qemu's value.
    pub async fn migrate_set_parameters(
        &self,
        max_bandwidth: Option<u64>,
        downtime_limit_ms: Option<u64>,
    ) -> Result<(), QmpError> {
        let mut args = serde_json::Map::new();
        if let Some(b) = max_bandwidth {
            args.insert("max-bandwidth".into(), json!(b));
        }
        if let Some(d) = downtime_limit_ms {
            args.insert("downtime-limit".into(), json!(d));
        }
        if args.is_empty() {
            return Ok(());
        }
        self.execute("migrate-set-parameters", Some(Value::Object(args)))
            .await
            .map(drop)
    }

    /// Starts migrating the running guest to `uri` (e.g. `tcp:host:port`).
    pub async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate", Some(json!({"uri": uri})))
            .await
            .map(drop)
    }

    pub async fn migrate_cancel(&self) -> Result<(), QmpError> {
        self.execute("migrate_cancel", None).await.map(drop)
    }

    /// `query-migrate`, the fields the agent reports.
    pub async fn query_migrate(&self) -> Result<MigrateInfo, QmpError> {
        let v = self.execute("query-migrate", None).await?;
        Ok(MigrateInfo::from_value(&v))
    }

    /// Puts a medium in the CD drive (device id `cd0`), replacing any.
    pub async fn change_cdrom(&self, url: &str) -> Result<(), QmpError> {
        self.execute(
            "blockdev-change-medium",
            Some(json!({
                "id": "cd0", "filename": url, "format": "raw",
                "read-only-mode": "read-only", "force": true,
            })),
        )
        .await
        .map(drop)
    }

    pub async fn eject_cdrom(&self) -> Result<(), QmpError> {
        self.execute("eject", Some(json!({"id": "cd0", "force": true})))
            .await
            .map(drop)
    }

    /// What the CD drive holds (`query-block`), if anything.
    pub async fn cdrom_medium(&self) -> Result<Option<String>, QmpError> {
        let v = self.execute("query-block", None).await?;
        let cd = v.as_array().into_iter().flatten().find(|b| {
            b.get("qdev")
                .and_then(Value::as_str)
                .is_some_and(|q| q == "cd0" || q.ends_with("/cd0"))
        });
        Ok(cd
            .and_then(|b| b.get("inserted"))
            .and_then(|i| i.get("file"))
            .and_then(Value::as_str)
            .map(str::to_owned))
    }
}

async fn read_loop(
    mut lines: FramedRead<tokio::net::unix::OwnedReadHalf, LinesCodec>,
    pending: Pending,
    events: mpsc::UnboundedSender<Event>,
) {
    while let Some(line) = lines.next().await {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "QMP stream broken; dropping the connection");
                break;
            }
        };
        match parse(&line) {
            Ok(Message::Return {
                id: Some(id),
                value,
            }) => {
                if let Some(tx) = pending.lock().expect("pending poisoned").remove(&id) {
                    let _ = tx.send(Ok(value));
                }
            }
            Ok(Message::Error {
                id: Some(id),
                class,
                desc,
            }) => {
                if let Some(tx) = pending.lock().expect("pending poisoned").remove(&id) {
                    let _ = tx.send(Err((class, desc)));
                }
            }
            Ok(Message::Event(ev)) => {
                let _ = events.send(ev);
            }
            Ok(other) => tracing::debug!(?other, "QMP message nobody waits for"),
            Err(e) => tracing::warn!(error = %e, "ignoring a QMP line"),
        }
    }
    // Wake every waiting command: the connection is gone.
    pending.lock().expect("pending poisoned").clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Lines recorded from qemu 7.2 (a python client on a paused VM's
    /// QMP socket: capabilities, query-status, cont, system_reset, eject
    /// of a missing device, system_powerdown, quit).
    const TRANSCRIPT: &[&str] = &[
        r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#,
        r#"{"return": {}, "id": 1}"#,
        r#"{"return": {"status": "prelaunch", "singlestep": false, "running": false}, "id": 2}"#,
        r#"{"timestamp": {"seconds": 1796435559, "microseconds": 991121}, "event": "RESUME"}"#,
        r#"{"return": {}, "id": 3}"#,
        r#"{"timestamp": {"seconds": 1796435560, "microseconds": 292300}, "event": "RESET", "data": {"guest": false, "reason": "host-qmp-system-reset"}}"#,
        r#"{"return": {}, "id": 4}"#,
        r#"{"timestamp": {"seconds": 1796435560, "microseconds": 371208}, "event": "RESET", "data": {"guest": true, "reason": "guest-reset"}}"#,
        r#"{"id": 5, "error": {"class": "DeviceNotFound", "desc": "Device 'cd9' not found"}}"#,
        r#"{"timestamp": {"seconds": 1796435560, "microseconds": 892046}, "event": "POWERDOWN"}"#,
        r#"{"return": {}, "id": 6}"#,
        r#"{"timestamp": {"seconds": 1796435561, "microseconds": 192198}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}"#,
        r#"{"return": {}, "id": 7}"#,
    ];

    #[test]
    fn parses_a_recorded_transcript() {
        let got: Vec<Message> = TRANSCRIPT.iter().map(|l| parse(l).unwrap()).collect();
        assert_eq!(
            got[0],
            Message::Greeting {
                version: Some((7, 2, 22))
            }
        );
        assert_eq!(
            got[1],
            Message::Return {
                id: Some(1),
                value: json!({})
            }
        );
        let Message::Return { value, .. } = &got[2] else {
            panic!()
        };
        assert_eq!(value["status"], "prelaunch");
        let Message::Event(reset) = &got[5] else {
            panic!()
        };
        assert_eq!(reset.name, "RESET");
        assert_eq!(reset.data["reason"], "host-qmp-system-reset");
        assert_eq!(reset.timestamp, Some((1796435560, 292300)));
        assert_eq!(
            got[8],
            Message::Error {
                id: Some(5),
                class: "DeviceNotFound".into(),
                desc: "Device 'cd9' not found".into()
            }
        );
        let Message::Event(shutdown) = &got[11] else {
            panic!()
        };
        assert_eq!(shutdown.name, "SHUTDOWN");
        assert_eq!(shutdown.data["guest"], false);
        assert_eq!(shutdown.data["reason"], "host-qmp-quit");
        assert!(matches!(got[12], Message::Return { id: Some(7), .. }));
    }

    #[test]
    fn refuses_what_is_not_qmp() {
        for bad in [
            "",
            "[]",
            "42",
            "{}",
            r#"{"event": 5}"#,
            r#"{"error": {"class": 1}}"#,
            "{\"return\": ",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_input(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_json_shaped_input(
            key in prop::sample::select(vec!["QMP", "return", "error", "event", "id", "data", "timestamp"]),
            inner in prop::sample::select(vec!["null", "1", "\"x\"", "[]", "{}", "{\"class\":\"C\",\"desc\":\"d\"}", "{\"seconds\":1,\"microseconds\":-1}", "{\"version\":{\"qemu\":{\"major\":1}}}"]),
            extra in prop::sample::select(vec!["", ",\"id\":7", ",\"id\":-1", ",\"data\":{}", ",\"event\":\"X\""]),
        ) {
            let line = format!("{{\"{key}\":{inner}{extra}}}");
            let _ = parse(&line);
        }

        #[test]
        fn events_round_trip(name in "[A-Z_]{1,20}", secs in 0i64..1<<40, us in 0i64..1_000_000, reason in "[a-z-]{0,20}") {
            let line = json!({"event": name, "timestamp": {"seconds": secs, "microseconds": us}, "data": {"reason": reason}}).to_string();
            let Message::Event(ev) = parse(&line).unwrap() else { panic!("not an event") };
            prop_assert_eq!(ev.name, name);
            prop_assert_eq!(ev.timestamp, Some((secs, us)));
            prop_assert_eq!(ev.data["reason"].as_str(), Some(reason.as_str()));
        }
    }
}

/// What `query-migrate` says, on either side of a migration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateInfo {
    /// `none`, `setup`, `active`, `completed`, `failed`, `cancelled`, …
    pub status: String,
    pub ram_transferred: u64,
    pub ram_total: u64,
    /// The switch-over pause, once completed.
    pub downtime_ms: Option<u64>,
    pub error: Option<String>,
    /// Where an incoming migration listens (`host:port`), destination only.
    pub listening: Option<String>,
}

impl MigrateInfo {
    pub fn from_value(v: &Value) -> MigrateInfo {
        let ram = |k: &str| {
            v.get("ram")
                .and_then(|r| r.get(k))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let listening = v
            .get("socket-address")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|a| a.get("type").and_then(Value::as_str) == Some("inet"))
            .and_then(|a| {
                let host = a.get("host")?.as_str()?;
                let port = a.get("port")?.as_str()?;
                Some(if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                })
            });
        MigrateInfo {
            status: v
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("none")
                .to_owned(),
            ram_transferred: ram("transferred"),
            ram_total: ram("total"),
            downtime_ms: v.get("downtime").and_then(Value::as_u64),
            error: v
                .get("error-desc")
                .and_then(Value::as_str)
                .map(str::to_owned),
            listening,
        }
    }
}

#[cfg(test)]
mod migrate_info_tests {
    use super::*;

    #[test]
    fn reads_progress_and_the_listening_address() {
        let v = json!({"status": "completed", "downtime": 12,
            "ram": {"transferred": 300, "total": 1000, "remaining": 0}});
        let i = MigrateInfo::from_value(&v);
        assert_eq!(
            (i.status.as_str(), i.ram_transferred, i.ram_total),
            ("completed", 300, 1000)
        );
        assert_eq!(i.downtime_ms, Some(12));
        let v = json!({"status": "setup", "socket-address": [
            {"type": "inet", "host": "::1", "port": "4444"}]});
        assert_eq!(
            MigrateInfo::from_value(&v).listening.as_deref(),
            Some("[::1]:4444")
        );
        let v = json!({"status": "failed", "error-desc": "Connection refused"});
        let i = MigrateInfo::from_value(&v);
        assert_eq!(i.error.as_deref(), Some("Connection refused"));
        assert_eq!(i.downtime_ms, None);
    }
}
