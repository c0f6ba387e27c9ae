//! The brain end of the spine: accepts node connections, keeps each
//! connection's resource table (gone when the connection goes, paper §4),
//! sends tagged orders and resolves their replies, and reports everything
//! as a stream of [`SpineEvent`]s for the reconciler.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::codec::DEFAULT_MAX_FRAME;
use crate::link::{BoxStream, Keepalive, Link, Liveness, SessionError};
use crate::message::{
    Generation, Hello, MIN_PROTOCOL_VERSION, OrderError, Outcome, PROTOCOL_VERSION, PowerAction,
    Role, Tag, ToBrain, ToNode,
};
use crate::resource::{Resource, ResourceName, ResourceValue};

/// Distinguishes successive connections of one node.
pub type ConnId = u64;

#[derive(Clone)]
pub struct ServerConfig {
    pub keepalive: Keepalive,
    pub max_frame: usize,
    /// How long a node may take to say hello after connecting.
    pub hello_timeout: Duration,
    /// How long an order may wait for its reply.
    pub order_timeout: Duration,
    /// Protocol versions this brain speaks.
    pub min_version: u32,
    pub max_version: u32,
    pub brain_version: String,
    /// `None` serves plain TCP (tests and benchmarks only).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            keepalive: Keepalive::default(),
            max_frame: DEFAULT_MAX_FRAME,
            hello_timeout: Duration::from_secs(10),
            order_timeout: Duration::from_secs(60),
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            brain_version: env!("CARGO_PKG_VERSION").to_owned(),
            tls: None,
        }
    }
}

/// What a node declared when it connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: String,
    pub conn: ConnId,
    pub role: Role,
    pub image_version: String,
    pub protocol_version: u32,
    pub addresses: Vec<String>,
    pub peer: SocketAddr,
    /// The fence timeout its `welcome` told it (protocol 3 and later,
    /// and only while the brain set one).
    pub fence_timeout_secs: Option<u64>,
}

impl NodeInfo {
    fn new(hello: Hello, conn: ConnId, peer: SocketAddr) -> Self {
        NodeInfo {
            node_id: hello.node_id,
            conn,
            role: hello.role,
            image_version: hello.image_version,
            protocol_version: hello.protocol_version,
            addresses: hello.addresses,
            peer,
            fence_timeout_secs: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SpineEvent {
    /// A node said hello and was welcomed; its dump follows.
    Connected(NodeInfo),
    /// The node finished its dump and takes orders.
    Ready { node_id: String, conn: ConnId },
    Created {
        node_id: String,
        conn: ConnId,
        resource: Resource,
        generation: Generation,
    },
    Updated {
        node_id: String,
        conn: ConnId,
        resource: Resource,
        generation: Generation,
    },
    Destroyed {
        node_id: String,
        conn: ConnId,
        name: ResourceName,
        generation: Generation,
    },
    /// The connection ended; every resource it declared is gone with it.
    Disconnected {
        node_id: String,
        conn: ConnId,
        reason: String,
    },
    /// A connection was turned away before joining (bad hello, version).
    Rejected { peer: SocketAddr, reason: String },
}

/// One line per event, for logs and the demo.
impl std::fmt::Display for SpineEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpineEvent::Connected(n) => write!(
                f,
                "{}#{} connected: {} image {} protocol {} from {}",
                n.node_id, n.conn, n.role, n.image_version, n.protocol_version, n.peer
            ),
            SpineEvent::Ready { node_id, conn } => write!(f, "{node_id}#{conn} ready"),
            SpineEvent::Created {
                node_id,
                conn,
                resource,
                generation,
            } => write!(
                f,
                "{node_id}#{conn} created {}@{generation}",
                resource.name()
            ),
            SpineEvent::Updated {
                node_id,
                conn,
                resource,
                generation,
            } => write!(
                f,
                "{node_id}#{conn} updated {}@{generation}",
                resource.name()
            ),
            SpineEvent::Destroyed {
                node_id,
                conn,
                name,
                generation,
            } => write!(f, "{node_id}#{conn} destroyed {name}@{generation}"),
            SpineEvent::Disconnected {
                node_id,
                conn,
                reason,
            } => write!(f, "{node_id}#{conn} disconnected: {reason}"),
            SpineEvent::Rejected { peer, reason } => write!(f, "{peer} rejected: {reason}"),
        }
    }
}

/// Why an order did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderFailure {
    #[error("node refused: {0}")]
    Refused(OrderError),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("node disconnected before replying")]
    Disconnected,
    #[error("node has not finished its initial dump")]
    NotReady,
}

/// One live connection.
struct Conn {
    info: NodeInfo,
    out: mpsc::Sender<ToNode>,
    pending: Mutex<HashMap<Tag, oneshot::Sender<Outcome>>>,
    resources: Mutex<BTreeMap<ResourceName, (ResourceValue, Generation)>>,
    ready: std::sync::atomic::AtomicBool,
    next_tag: AtomicU64,
    close: CancellationToken,
    closed_because_replaced: std::sync::atomic::AtomicBool,
}

struct Inner {
    config: ServerConfig,
    nodes: Mutex<HashMap<String, Arc<Conn>>>,
    /// Each node's recent log lines, kept across its reconnects.
    logs: Mutex<HashMap<String, crate::logs::NodeLogs>>,
    events: mpsc::Sender<SpineEvent>,
    next_conn: AtomicU64,
    /// Told to nodes in `welcome`; 0: none.
    fence_timeout_secs: AtomicU64,
    shutdown: CancellationToken,
}

impl Inner {
    async fn emit(&self, event: SpineEvent) {
        // Nobody listening is fine (tests that only look at the table).
        let _ = self.events.send(event).await;
    }
}

/// A running spine listener. Dropping it stops accepting and closes every
/// connection.
pub struct SpineServer {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
}

/// How many events may queue before connections wait for the consumer.
const EVENT_QUEUE: usize = 65536;

impl SpineServer {
    /// Listens on `addr` (port 0 picks one) and starts accepting.
    pub async fn bind(
        addr: SocketAddr,
        config: ServerConfig,
    ) -> std::io::Result<(SpineServer, mpsc::Receiver<SpineEvent>)> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (events, rx) = mpsc::channel(EVENT_QUEUE);
        let inner = Arc::new(Inner {
            config,
            nodes: Mutex::default(),
            logs: Mutex::default(),
            events,
            next_conn: AtomicU64::new(1),
            fence_timeout_secs: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(accept_loop(listener, inner.clone()));
        Ok((SpineServer { inner, local_addr }, rx))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The fence timeout told to nodes that connect from now on (`None`
    /// or 0: none; nodes keep their own). A connected node keeps what its
    /// `welcome` said, [`NodeInfo::fence_timeout_secs`].
    pub fn set_fence_timeout(&self, secs: Option<u64>) {
        self.inner
            .fence_timeout_secs
            .store(secs.unwrap_or(0), Ordering::Release);
    }

    /// The node's current connection, if any.
    pub fn node(&self, node_id: &str) -> Option<NodeHandle> {
        let nodes = self.inner.nodes.lock().expect("node table poisoned");
        nodes.get(node_id).map(|conn| NodeHandle {
            conn: conn.clone(),
            order_timeout: self.inner.config.order_timeout,
        })
    }

    pub fn nodes(&self) -> Vec<NodeInfo> {
        let nodes = self.inner.nodes.lock().expect("node table poisoned");
        let mut list: Vec<NodeInfo> = nodes.values().map(|c| c.info.clone()).collect();
        list.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        list
    }

    /// The node's last `n` log lines, oldest first (empty if it never
    /// sent any since this brain started).
    pub fn logs(&self, node_id: &str, n: usize) -> Vec<crate::logs::LogLine> {
        let logs = self.inner.logs.lock().expect("log table poisoned");
        logs.get(node_id).map_or_else(Vec::new, |l| l.last(n))
    }
}

impl Drop for SpineServer {
    fn drop(&mut self) {
        self.inner.shutdown.cancel();
    }
}

/// Sends orders to one connected node and reads its resource table.
#[derive(Clone)]
pub struct NodeHandle {
    conn: Arc<Conn>,
    order_timeout: Duration,
}

impl NodeHandle {
    pub fn info(&self) -> &NodeInfo {
        &self.conn.info
    }

    pub fn is_ready(&self) -> bool {
        self.conn.ready.load(Ordering::Acquire)
    }

    /// The resources this connection has declared, with their generations.
    pub fn resources(&self) -> BTreeMap<ResourceName, (ResourceValue, Generation)> {
        self.conn
            .resources
            .lock()
            .expect("resource table poisoned")
            .clone()
    }

    /// Reads the resource table in place: `f` runs under the table's lock,
    /// so keep it short. Cheaper than [`NodeHandle::resources`] for a
    /// summary of a large table, which copies every resource.
    pub fn with_resources<R>(
        &self,
        f: impl FnOnce(&BTreeMap<ResourceName, (ResourceValue, Generation)>) -> R,
    ) -> R {
        f(&self.conn.resources.lock().expect("resource table poisoned"))
    }

    pub fn resource(&self, name: &ResourceName) -> Option<(ResourceValue, Generation)> {
        let table = self.conn.resources.lock().expect("resource table poisoned");
        table.get(name).cloned()
    }

    pub async fn create(
        &self,
        resource: Resource,
        generation: Generation,
    ) -> Result<(), OrderFailure> {
        self.order(|tag| ToNode::Create {
            tag,
            resource,
            generation,
        })
        .await
    }

    pub async fn update(
        &self,
        resource: Resource,
        generation: Generation,
    ) -> Result<(), OrderFailure> {
        self.order(|tag| ToNode::Update {
            tag,
            resource,
            generation,
        })
        .await
    }

    pub async fn remove(
        &self,
        name: ResourceName,
        generation: Generation,
    ) -> Result<(), OrderFailure> {
        self.order(|tag| ToNode::Remove {
            tag,
            name,
            generation,
        })
        .await
    }

    /// Orders a reboot or power-off; `Ok` means the node acknowledged it.
    pub async fn power(&self, action: PowerAction) -> Result<(), OrderFailure> {
        self.order(|tag| ToNode::Power { tag, action }).await
    }

    /// Closes this connection from the brain's side.
    pub fn disconnect(&self) {
        self.conn.close.cancel();
    }

    async fn order(&self, frame: impl FnOnce(Tag) -> ToNode) -> Result<(), OrderFailure> {
        if !self.is_ready() {
            return Err(OrderFailure::NotReady);
        }
        let tag = self.conn.next_tag.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending().insert(tag, tx);
        if self.conn.out.send(frame(tag)).await.is_err() {
            self.pending().remove(&tag);
            return Err(OrderFailure::Disconnected);
        }
        match tokio::time::timeout(self.order_timeout, rx).await {
            Ok(Ok(Outcome::Ok)) => Ok(()),
            Ok(Ok(Outcome::Error(e))) => Err(OrderFailure::Refused(e)),
            Ok(Err(_)) => Err(OrderFailure::Disconnected),
            Err(_) => {
                self.pending().remove(&tag);
                Err(OrderFailure::Timeout(self.order_timeout))
            }
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Tag, oneshot::Sender<Outcome>>> {
        self.conn.pending.lock().expect("pending table poisoned")
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = inner.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve_connection(tcp, peer, inner.clone()));
            }
            Err(e) => {
                // Usually fd exhaustion: pause instead of spinning.
                tracing::warn!(error = %e, "spine accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(tcp: TcpStream, peer: SocketAddr, inner: Arc<Inner>) {
    let stream: BoxStream = match &inner.config.tls {
        None => Box::new(tcp),
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
            match tokio::time::timeout(inner.config.hello_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => Box::new(s),
                Ok(Err(e)) => {
                    return reject(&inner, peer, format!("TLS handshake failed: {e}")).await;
                }
                Err(_) => return reject(&inner, peer, "TLS handshake timed out".into()).await,
            }
        }
    };
    let mut link = Link::<ToBrain, ToNode>::new(stream, inner.config.max_frame);
    let hello = match await_hello(&inner.config, &mut link).await {
        Ok(hello) => hello,
        Err((reason, last)) => {
            link.close(last).await;
            return reject(&inner, peer, reason).await;
        }
    };
    let mut info = NodeInfo::new(hello, inner.next_conn.fetch_add(1, Ordering::Relaxed), peer);
    // Older nodes' `welcome` rejects unknown fields: tell only version 3+.
    info.fence_timeout_secs = Some(inner.fence_timeout_secs.load(Ordering::Acquire))
        .filter(|&secs| secs > 0 && info.protocol_version >= 3);
    let conn = Arc::new(Conn {
        info,
        out: link.out.clone(),
        pending: Mutex::default(),
        resources: Mutex::default(),
        ready: false.into(),
        next_tag: AtomicU64::new(1),
        close: inner.shutdown.child_token(),
        closed_because_replaced: false.into(),
    });
    let node_id = conn.info.node_id.clone();
    let previous = inner
        .nodes
        .lock()
        .expect("node table poisoned")
        .insert(node_id.clone(), conn.clone());
    if let Some(old) = previous {
        // Same node again: the old connection is dead even if its socket
        // has not noticed yet.
        old.closed_because_replaced.store(true, Ordering::Release);
        old.close.cancel();
    }
    let _ = link
        .out
        .send(ToNode::Welcome {
            protocol_version: conn.info.protocol_version,
            brain_version: inner.config.brain_version.clone(),
            fence_timeout_secs: conn.info.fence_timeout_secs,
        })
        .await;
    tracing::info!(node = %node_id, conn = conn.info.conn, %peer, role = %conn.info.role, image = %conn.info.image_version, "node joined the spine");
    inner.emit(SpineEvent::Connected(conn.info.clone())).await;

    let result = drive(&inner, &conn, &mut link).await;
    let reason = match &result {
        Err(SessionError::ClosedLocally)
            if conn.closed_because_replaced.load(Ordering::Acquire) =>
        {
            SessionError::Replaced.to_string()
        }
        Err(e) => e.to_string(),
        Ok(()) => "closed".into(),
    };
    let last = match &result {
        Err(SessionError::BadFrame(e)) => Some(ToNode::ProtocolError {
            message: e.to_string(),
        }),
        Err(SessionError::Unexpected(what)) => Some(ToNode::ProtocolError {
            message: format!("unexpected {what}"),
        }),
        _ => None,
    };
    link.close(last).await;
    {
        let mut nodes = inner.nodes.lock().expect("node table poisoned");
        if nodes
            .get(&node_id)
            .is_some_and(|c| c.info.conn == conn.info.conn)
        {
            nodes.remove(&node_id);
        }
    }
    // Dropping the senders fails every order still waiting on this node.
    conn.pending.lock().expect("pending table poisoned").clear();
    tracing::info!(node = %node_id, conn = conn.info.conn, %reason, "node left the spine");
    inner
        .emit(SpineEvent::Disconnected {
            node_id,
            conn: conn.info.conn,
            reason,
        })
        .await;
}

async fn reject(inner: &Inner, peer: SocketAddr, reason: String) {
    tracing::warn!(%peer, %reason, "spine connection rejected");
    inner.emit(SpineEvent::Rejected { peer, reason }).await;
}

/// Waits for the hello; on failure, the reason and the frame to close with.
async fn await_hello(
    config: &ServerConfig,
    link: &mut Link<ToBrain, ToNode>,
) -> Result<Hello, (String, Option<ToNode>)> {
    let protocol_error =
        |message: String| (message.clone(), Some(ToNode::ProtocolError { message }));
    let frame = match tokio::time::timeout(config.hello_timeout, link.next()).await {
        Err(_) => return Err((format!("no hello within {:?}", config.hello_timeout), None)),
        Ok(None) => return Err(("closed before hello".into(), None)),
        Ok(Some(Err(e))) => return Err(protocol_error(format!("bad frame: {e}"))),
        Ok(Some(Ok(frame))) => frame,
    };
    let ToBrain::Hello(hello) = frame else {
        return Err(protocol_error("first frame must be hello".into()));
    };
    if !(config.min_version..=config.max_version).contains(&hello.protocol_version) {
        return Err((
            format!(
                "node {} speaks protocol {}, brain speaks {}..={}",
                hello.node_id, hello.protocol_version, config.min_version, config.max_version
            ),
            Some(ToNode::VersionMismatch {
                node_version: hello.protocol_version,
                brain_min: config.min_version,
                brain_max: config.max_version,
            }),
        ));
    }
    if hello.node_id.is_empty() || hello.node_id.len() > 128 {
        return Err(protocol_error(
            "hello.node_id must be 1 to 128 bytes".into(),
        ));
    }
    Ok(hello)
}

async fn drive(
    inner: &Inner,
    conn: &Conn,
    link: &mut Link<ToBrain, ToNode>,
) -> Result<(), SessionError> {
    let node_id = &conn.info.node_id;
    let id = conn.info.conn;
    let mut liveness = Liveness::new(inner.config.keepalive);
    let mut ticker = liveness.ticker();
    loop {
        let frame = tokio::select! {
            frame = link.next() => frame,
            _ = ticker.tick() => {
                let seq = liveness.tick()?;
                let _ = conn.out.send(ToNode::Ping { seq }).await;
                continue;
            }
            _ = conn.close.cancelled() => return Err(SessionError::ClosedLocally),
        };
        liveness.heard();
        let frame = match frame {
            None => return Err(SessionError::Closed),
            Some(Err(e)) => return Err(SessionError::BadFrame(e)),
            Some(Ok(frame)) => frame,
        };
        let event = match frame {
            ToBrain::Ping { seq } => {
                let _ = conn.out.send(ToNode::Pong { seq }).await;
                continue;
            }
            ToBrain::Pong { .. } => continue,
            ToBrain::Log { lines } => {
                let mut logs = inner.logs.lock().expect("log table poisoned");
                logs.entry(node_id.clone()).or_default().extend(lines);
                continue;
            }
            ToBrain::Reply { tag, outcome } => {
                let waiter = conn
                    .pending
                    .lock()
                    .expect("pending table poisoned")
                    .remove(&tag);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(outcome);
                    }
                    None => {
                        tracing::debug!(node = %node_id, tag, "reply to an order nobody waits for")
                    }
                }
                continue;
            }
            ToBrain::Hello(_) => return Err(SessionError::Unexpected("a second hello")),
            ToBrain::ProtocolError { message } => {
                return Err(SessionError::PeerProtocolError { message });
            }
            ToBrain::Ready => {
                conn.ready.store(true, Ordering::Release);
                SpineEvent::Ready {
                    node_id: node_id.clone(),
                    conn: id,
                }
            }
            ToBrain::Created {
                resource,
                generation,
            } => {
                record(conn, &resource, generation);
                SpineEvent::Created {
                    node_id: node_id.clone(),
                    conn: id,
                    resource,
                    generation,
                }
            }
            ToBrain::Updated {
                resource,
                generation,
            } => {
                record(conn, &resource, generation);
                SpineEvent::Updated {
                    node_id: node_id.clone(),
                    conn: id,
                    resource,
                    generation,
                }
            }
            ToBrain::Destroyed { name, generation } => {
                conn.resources
                    .lock()
                    .expect("resource table poisoned")
                    .remove(&name);
                SpineEvent::Destroyed {
                    node_id: node_id.clone(),
                    conn: id,
                    name,
                    generation,
                }
            }
        };
        inner.emit(event).await;
    }
}

fn record(conn: &Conn, resource: &Resource, generation: Generation) {
    conn.resources
        .lock()
        .expect("resource table poisoned")
        .insert(
            resource.name().clone(),
            (resource.value().clone(), generation),
        );
}
