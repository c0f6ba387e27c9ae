//! The node end of the spine, used by the real head and tail agents and by
//! the simulator alike.
//!
//! A session is: connect → `hello` → `welcome` → dump every resource as
//! `created` → `ready` → serve orders and push notifications until the
//! connection ends. [`NodeAgent::run`] repeats sessions with backoff.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::codec::DEFAULT_MAX_FRAME;
use crate::link::{BoxStream, Keepalive, Link, Liveness, SessionError};
use crate::message::{
    ErrorCode, Generation, Hello, OrderError, Outcome, PowerAction, ToBrain, ToNode,
};
use crate::resource::{Resource, ResourceName};
use crate::tls::{Fingerprint, brain_server_name, pinned_client_config};

/// What a node does with the brain's orders. Orders for different
/// resources may run concurrently; orders for one resource never do.
///
/// After applying an order, report the resulting resource through the
/// [`Notifier`] (`created`/`updated`/`destroyed`) before returning: the
/// brain's table then holds the node's actual state when the reply lands.
pub trait NodeHandler: Send + Sync + 'static {
    /// The brain welcomed this session (called before `snapshot`).
    fn welcomed(&self, welcome: &Welcomed) {
        let _ = welcome;
    }
    /// Every resource the node holds now; dumped as `created` on connect.
    fn snapshot(&self) -> impl Future<Output = Vec<Resource>> + Send;
    fn create(&self, resource: Resource) -> impl Future<Output = Result<(), OrderError>> + Send;
    fn update(&self, resource: Resource) -> impl Future<Output = Result<(), OrderError>> + Send;
    fn remove(&self, name: ResourceName) -> impl Future<Output = Result<(), OrderError>> + Send;
}

/// What the brain said in its `welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcomed {
    pub protocol_version: u32,
    pub brain_version: String,
    /// The brain's fence timeout (protocol 3); `None` from older brains.
    pub fence_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `host:port` of the brain's spine listener.
    pub brain_addr: String,
    pub hello: Hello,
    /// The brain certificate's fingerprint; `None` speaks plain TCP
    /// (tests and the simulator only).
    pub tls_pin: Option<Fingerprint>,
    pub keepalive: Keepalive,
    pub max_frame: usize,
    /// Limit on connecting and on waiting for `welcome`.
    pub handshake_timeout: Duration,
    pub backoff: Backoff,
    /// Log lines to send while a session is up (real agents; `None` sends
    /// none).
    pub logs: Option<crate::logs::LogBuffer>,
}

impl NodeConfig {
    pub fn new(brain_addr: impl Into<String>, hello: Hello) -> Self {
        NodeConfig {
            brain_addr: brain_addr.into(),
            hello,
            tls_pin: None,
            keepalive: Keepalive::default(),
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            logs: None,
        }
    }
}

/// State that outlives sessions: applied generations and the current
/// session's outbox for notifications.
struct Shared {
    generations: Mutex<HashMap<ResourceName, Generation>>,
    order_locks: Mutex<HashMap<ResourceName, Arc<tokio::sync::Mutex<()>>>>,
    /// Held across the initial dump so a notification can never be
    /// overtaken by an older snapshot.
    outbox: tokio::sync::Mutex<Option<mpsc::Sender<ToBrain>>>,
    session: Mutex<CancellationToken>,
    /// Replaces the config's `hello.image_version` from the next session
    /// on (the simulator's reboot onto another image).
    image_version: Mutex<Option<String>>,
}

impl Shared {
    fn generation(&self, name: &ResourceName) -> Generation {
        let table = self.generations.lock().expect("generation table poisoned");
        table.get(name).copied().unwrap_or(0)
    }

    fn order_lock(&self, name: &ResourceName) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.order_locks.lock().expect("order locks poisoned");
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(name.clone()).or_default().clone()
    }
}

/// Pushes changes (a VM crashed, a pool filled, an order applied) to the
/// brain. Without a live session a notification is dropped: the next
/// session's dump carries the current state anyway. Never await one while
/// holding a lock that [`NodeHandler::snapshot`] takes: the dump holds the
/// outbox while it snapshots.
#[derive(Clone)]
pub struct Notifier(Arc<Shared>);

impl Notifier {
    pub async fn created(&self, resource: Resource) {
        let generation = self.0.generation(resource.name());
        self.send(ToBrain::Created {
            resource,
            generation,
        })
        .await
    }

    pub async fn updated(&self, resource: Resource) {
        let generation = self.0.generation(resource.name());
        self.send(ToBrain::Updated {
            resource,
            generation,
        })
        .await
    }

    pub async fn destroyed(&self, name: ResourceName) {
        let generation = self.0.generation(&name);
        self.send(ToBrain::Destroyed { name, generation }).await
    }

    /// Ends the current session, as a pulled cable would.
    pub fn disconnect(&self) {
        self.0.session.lock().expect("session poisoned").cancel();
    }

    async fn send(&self, frame: ToBrain) {
        let outbox = self.0.outbox.lock().await;
        if let Some(tx) = outbox.as_ref() {
            let _ = tx.send(frame).await;
        }
    }
}

/// How often buffered log lines go to the brain.
const LOG_EVERY: Duration = Duration::from_secs(1);

pub struct NodeAgent<H> {
    config: NodeConfig,
    handler: Arc<H>,
    shared: Arc<Shared>,
}

impl<H: NodeHandler> NodeAgent<H> {
    pub fn new(config: NodeConfig, handler: Arc<H>) -> Self {
        NodeAgent {
            config,
            handler,
            shared: Arc::new(Shared {
                generations: Mutex::default(),
                order_locks: Mutex::default(),
                outbox: tokio::sync::Mutex::new(None),
                session: Mutex::new(CancellationToken::new()),
                image_version: Mutex::new(None),
            }),
        }
    }

    pub fn notifier(&self) -> Notifier {
        Notifier(self.shared.clone())
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Declares `version` as the image version in every later hello (a
    /// node that rebooted onto another image; the simulator uses it).
    pub fn set_image_version(&self, version: impl Into<String>) {
        *self
            .shared
            .image_version
            .lock()
            .expect("image version poisoned") = Some(version.into());
    }

    /// The image version the next hello declares.
    pub fn image_version(&self) -> String {
        self.shared
            .image_version
            .lock()
            .expect("image version poisoned")
            .clone()
            .unwrap_or_else(|| self.config.hello.image_version.clone())
    }

    /// Runs sessions forever, backing off between them, until the brain
    /// orders a reboot or power-off; the caller then carries it out.
    pub async fn run(&self) -> PowerAction {
        let backoff = self.config.backoff;
        let mut delay = backoff.initial;
        loop {
            let started = Instant::now();
            match self.session().await {
                Ok(action) => return action,
                Err(e) => {
                    tracing::warn!(error = %e, brain = %self.config.brain_addr, "spine session ended")
                }
            }
            // A session that lasted a while was healthy: start backoff afresh.
            if started.elapsed() > Duration::from_secs(30) {
                delay = backoff.initial;
            }
            let jitter = rand::rng().random_range(0.5..1.0);
            tokio::time::sleep(delay.mul_f64(jitter)).await;
            delay = (delay * 2).min(backoff.max);
        }
    }

    /// One connection to the brain, from connect to its end. Returns the
    /// power action the brain ordered, or why the session ended.
    pub async fn session(&self) -> Result<PowerAction, SessionError> {
        let cancel = CancellationToken::new();
        *self.shared.session.lock().expect("session poisoned") = cancel.clone();
        let stream = self.connect().await?;
        let mut link = Link::<ToNode, ToBrain>::new(stream, self.config.max_frame);
        let result = self.drive(&mut link, &cancel).await;
        {
            let mut outbox = self.shared.outbox.lock().await;
            if outbox.as_ref().is_some_and(|tx| tx.same_channel(&link.out)) {
                *outbox = None;
            }
        }
        let last = match &result {
            Err(SessionError::BadFrame(e)) => Some(ToBrain::ProtocolError {
                message: e.to_string(),
            }),
            Err(SessionError::Unexpected(what)) => Some(ToBrain::ProtocolError {
                message: format!("unexpected {what}"),
            }),
            _ => None,
        };
        link.close(last).await;
        result
    }

    async fn connect(&self) -> Result<BoxStream, SessionError> {
        let addr = &self.config.brain_addr;
        let timeout = self.config.handshake_timeout;
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| SessionError::HandshakeTimeout {
                expected: "TCP connection",
                waited: timeout,
            })?
            .map_err(|source| SessionError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let Some(pin) = self.config.tls_pin else {
            return Ok(Box::new(tcp));
        };
        let tls_config =
            pinned_client_config(pin).map_err(|e| SessionError::Tls(std::io::Error::other(e)))?;
        let connector = tokio_rustls::TlsConnector::from(tls_config);
        let tls = tokio::time::timeout(timeout, connector.connect(brain_server_name(), tcp))
            .await
            .map_err(|_| SessionError::HandshakeTimeout {
                expected: "TLS handshake",
                waited: timeout,
            })?
            .map_err(SessionError::Tls)?;
        Ok(Box::new(tls))
    }

    async fn drive(
        &self,
        link: &mut Link<ToNode, ToBrain>,
        cancel: &CancellationToken,
    ) -> Result<PowerAction, SessionError> {
        // The configured protocol version is this build's, except in
        // simulations of an older build's nodes.
        let mut hello = self.config.hello.clone();
        hello.image_version = self.image_version();
        send(&link.out, ToBrain::Hello(hello)).await?;
        self.await_welcome(link).await?;

        // Dump, then announce ready, with notifications held back so none
        // can be overtaken by the (older) snapshot.
        {
            let mut outbox = self.shared.outbox.lock().await;
            for resource in self.handler.snapshot().await {
                let generation = self.shared.generation(resource.name());
                send(
                    &link.out,
                    ToBrain::Created {
                        resource,
                        generation,
                    },
                )
                .await?;
            }
            send(&link.out, ToBrain::Ready).await?;
            *outbox = Some(link.out.clone());
        }

        let mut liveness = Liveness::new(self.config.keepalive);
        let mut ticker = liveness.ticker();
        let mut log_ticker = tokio::time::interval(LOG_EVERY);
        loop {
            tokio::select! {
                _ = log_ticker.tick(), if self.config.logs.is_some() => {
                    if let Some(logs) = &self.config.logs {
                        while !logs.is_empty() {
                            send(&link.out, ToBrain::Log { lines: logs.drain() }).await?;
                        }
                    }
                }
                frame = link.next() => {
                    liveness.heard();
                    match frame {
                        None => return Err(SessionError::Closed),
                        Some(Err(e)) => return Err(SessionError::BadFrame(e)),
                        Some(Ok(frame)) => {
                            if let Some(action) = self.handle(frame, &link.out).await? {
                                return Ok(action);
                            }
                        }
                    }
                }
                _ = ticker.tick() => {
                    let seq = liveness.tick()?;
                    send(&link.out, ToBrain::Ping { seq }).await?;
                }
                _ = cancel.cancelled() => return Err(SessionError::ClosedLocally),
            }
        }
    }

    async fn await_welcome(&self, link: &mut Link<ToNode, ToBrain>) -> Result<(), SessionError> {
        let waited = self.config.handshake_timeout;
        let frame = tokio::time::timeout(waited, link.next())
            .await
            .map_err(|_| SessionError::HandshakeTimeout {
                expected: "welcome",
                waited,
            })?;
        match frame {
            None => Err(SessionError::Closed),
            Some(Err(e)) => Err(SessionError::BadFrame(e)),
            Some(Ok(ToNode::Welcome {
                protocol_version,
                brain_version,
                fence_timeout_secs,
            })) => {
                tracing::info!(protocol_version, %brain_version, ?fence_timeout_secs, "joined the spine");
                self.handler.welcomed(&Welcomed {
                    protocol_version,
                    brain_version,
                    fence_timeout: fence_timeout_secs.map(Duration::from_secs),
                });
                Ok(())
            }
            Some(Ok(ToNode::VersionMismatch {
                node_version,
                brain_min,
                brain_max,
            })) => Err(SessionError::VersionMismatch {
                node_version,
                brain_min,
                brain_max,
            }),
            Some(Ok(ToNode::ProtocolError { message })) => {
                Err(SessionError::PeerProtocolError { message })
            }
            Some(Ok(_)) => Err(SessionError::Unexpected("an order before welcome")),
        }
    }

    /// Handles one frame after the handshake; `Some` ends the session.
    async fn handle(
        &self,
        frame: ToNode,
        out: &mpsc::Sender<ToBrain>,
    ) -> Result<Option<PowerAction>, SessionError> {
        let (tag, order) = match frame {
            ToNode::Ping { seq } => {
                send(out, ToBrain::Pong { seq }).await?;
                return Ok(None);
            }
            ToNode::Pong { .. } => return Ok(None),
            ToNode::Power { tag, action } => {
                // Reply first: once the node goes down nobody can.
                send(
                    out,
                    ToBrain::Reply {
                        tag,
                        outcome: Outcome::Ok,
                    },
                )
                .await?;
                return Ok(Some(action));
            }
            ToNode::ProtocolError { message } => {
                return Err(SessionError::PeerProtocolError { message });
            }
            ToNode::Welcome { .. } => return Err(SessionError::Unexpected("a second welcome")),
            ToNode::VersionMismatch { .. } => {
                return Err(SessionError::Unexpected("version_mismatch after welcome"));
            }
            ToNode::Create {
                tag,
                resource,
                generation,
            } => (tag, Order::Create(resource, generation)),
            ToNode::Update {
                tag,
                resource,
                generation,
            } => (tag, Order::Update(resource, generation)),
            ToNode::Remove {
                tag,
                name,
                generation,
            } => (tag, Order::Remove(name, generation)),
        };
        let shared = self.shared.clone();
        let handler = self.handler.clone();
        let out = out.clone();
        tokio::spawn(async move {
            let outcome = apply(&shared, handler.as_ref(), order).await.into();
            let _ = out.send(ToBrain::Reply { tag, outcome }).await;
        });
        Ok(None)
    }
}

enum Order {
    Create(Resource, Generation),
    Update(Resource, Generation),
    Remove(ResourceName, Generation),
}

/// Applies one order under its resource's lock, refusing stale generations.
async fn apply<H: NodeHandler>(
    shared: &Shared,
    handler: &H,
    order: Order,
) -> Result<(), OrderError> {
    let (name, generation) = match &order {
        Order::Create(r, g) | Order::Update(r, g) => (r.name().clone(), *g),
        Order::Remove(n, g) => (n.clone(), *g),
    };
    let lock = shared.order_lock(&name);
    let _guard = lock.lock().await;
    let applied = shared.generation(&name);
    if generation < applied {
        return Err(OrderError::new(
            ErrorCode::StaleGeneration,
            format!("{name}: order generation {generation} is older than applied {applied}"),
        ));
    }
    if generation == applied && applied != 0 {
        // A repeat of the order already applied: nothing to do.
        return Ok(());
    }
    // Recorded before the handler runs so its notifications carry the new
    // generation; put back if the order fails.
    set_generation(shared, &name, generation);
    let result = match order {
        Order::Create(r, _) => handler.create(r).await,
        Order::Update(r, _) => handler.update(r).await,
        Order::Remove(n, _) => handler.remove(n).await,
    };
    if result.is_err() {
        set_generation(shared, &name, applied);
    }
    result
}

fn set_generation(shared: &Shared, name: &ResourceName, generation: Generation) {
    let mut table = shared
        .generations
        .lock()
        .expect("generation table poisoned");
    table.insert(name.clone(), generation);
}

async fn send(out: &mpsc::Sender<ToBrain>, frame: ToBrain) -> Result<(), SessionError> {
    out.send(frame).await.map_err(|_| SessionError::Closed)
}
