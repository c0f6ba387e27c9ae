//! The spine against misbehaving peers, spoken to byte by byte: bad
//! frames, silence, wrong certificates.

mod common;

use std::sync::Arc;

use bigv_spine::codec::encode_frame;
use bigv_spine::sim::SimNode;
use bigv_spine::tls::{BrainIdentity, Fingerprint};
use bigv_spine::{
    Hello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Role, ServerConfig, SessionError, SpineEvent,
    ToBrain, ToNode,
};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn hello(node_id: &str, protocol_version: u32) -> ToBrain {
    ToBrain::Hello(Hello {
        node_id: node_id.into(),
        role: Role::Head,
        image_version: "v1".into(),
        protocol_version,
        addresses: vec!["fd00::5".into()],
    })
}

/// Reads one frame from a raw socket; `None` at end of stream.
async fn read_frame<T: serde::de::DeserializeOwned>(sock: &mut TcpStream) -> Option<T> {
    let mut len = [0u8; 4];
    sock.read_exact(&mut len).await.ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    sock.read_exact(&mut body).await.ok()?;
    Some(serde_json::from_slice(&body).expect("peer sent valid JSON"))
}

/// Reads frames until the peer closes; returns them all.
async fn read_until_closed(sock: &mut TcpStream) -> Vec<ToNode> {
    let mut frames = vec![];
    let all = tokio::time::timeout(WAIT, async {
        while let Some(f) = read_frame(sock).await {
            frames.push(f);
        }
    })
    .await;
    assert!(all.is_ok(), "peer did not close; got {frames:?}");
    frames
}

async fn bad_bytes_after_hello(bytes: &[u8]) -> (String, String) {
    let (server, mut events) = start_server(server_config()).await;
    let mut sock = TcpStream::connect(server.local_addr()).await.unwrap();
    sock.write_all(&encode_frame(&hello("h1", PROTOCOL_VERSION)).unwrap())
        .await
        .unwrap();
    sock.write_all(bytes).await.unwrap();
    let frames = read_until_closed(&mut sock).await;
    let Some(ToNode::ProtocolError { message }) = frames.last() else {
        panic!("expected a protocol error last, got {frames:?}");
    };
    let SpineEvent::Disconnected { reason, .. } = wait_for(&mut events, "disconnect", |e| {
        matches!(e, SpineEvent::Disconnected { .. })
    })
    .await
    else {
        unreachable!()
    };
    // The brain still serves everyone else.
    let mut other = TcpStream::connect(server.local_addr()).await.unwrap();
    other
        .write_all(&encode_frame(&hello("h2", PROTOCOL_VERSION)).unwrap())
        .await
        .unwrap();
    let welcome: ToNode = read_frame(&mut other).await.unwrap();
    assert!(matches!(welcome, ToNode::Welcome { .. }), "{welcome:?}");
    (message.clone(), reason)
}

#[tokio::test]
async fn malformed_json_gets_a_clear_error_and_a_close() {
    let mut frame = 9u32.to_be_bytes().to_vec();
    frame.extend_from_slice(b"{\"type\":[");
    let (message, reason) = bad_bytes_after_hello(&frame).await;
    assert!(message.contains("malformed frame"), "{message}");
    assert!(reason.contains("malformed frame"), "{reason}");
}

#[tokio::test]
async fn oversized_frames_are_refused_before_buffering() {
    // Only the header is sent: the limit must trip on the length alone.
    let (message, _) = bad_bytes_after_hello(&(64u32 << 20).to_be_bytes()).await;
    assert!(
        message.contains("exceeds the 1048576-byte limit"),
        "{message}"
    );
}

#[tokio::test]
async fn unknown_frame_types_are_named() {
    let frame = encode_frame(&serde_json::json!({"type": "launch", "tag": 1})).unwrap();
    let (message, _) = bad_bytes_after_hello(&frame).await;
    assert!(message.contains("unknown variant `launch`"), "{message}");
}

#[tokio::test]
async fn a_bad_resource_name_is_named() {
    let frame = encode_frame(&serde_json::json!({
        "type": "created", "generation": 1,
        "resource": {"name": "vm.Bad Name", "value": {}},
    }))
    .unwrap();
    let (message, _) = bad_bytes_after_hello(&frame).await;
    assert!(message.contains("vm.Bad Name"), "{message}");
}

#[tokio::test]
async fn the_first_frame_must_be_hello() {
    let (server, mut events) = start_server(server_config()).await;
    let mut sock = TcpStream::connect(server.local_addr()).await.unwrap();
    sock.write_all(&encode_frame(&ToBrain::Ready).unwrap())
        .await
        .unwrap();
    let frames = read_until_closed(&mut sock).await;
    assert!(
        matches!(frames.as_slice(), [ToNode::ProtocolError { message }] if message.contains("hello"))
    );
    wait_for(&mut events, "rejection", |e| {
        matches!(e, SpineEvent::Rejected { .. })
    })
    .await;
}

#[tokio::test]
async fn a_version_mismatch_frame_precedes_the_close() {
    let (server, _events) = start_server(server_config()).await;
    let mut sock = TcpStream::connect(server.local_addr()).await.unwrap();
    sock.write_all(&encode_frame(&hello("h1", 99)).unwrap())
        .await
        .unwrap();
    let frames = read_until_closed(&mut sock).await;
    assert_eq!(
        frames,
        [ToNode::VersionMismatch {
            node_version: 99,
            brain_min: MIN_PROTOCOL_VERSION,
            brain_max: PROTOCOL_VERSION,
        }]
    );
}

#[tokio::test]
async fn the_brain_drops_a_silent_node() {
    let (server, mut events) = start_server(server_config()).await;
    let mut sock = TcpStream::connect(server.local_addr()).await.unwrap();
    sock.write_all(&encode_frame(&hello("mute", PROTOCOL_VERSION)).unwrap())
        .await
        .unwrap();
    // The node answers no pings from here on.
    let SpineEvent::Disconnected { reason, .. } = wait_for(&mut events, "keepalive", |e| {
        matches!(e, SpineEvent::Disconnected { .. })
    })
    .await
    else {
        unreachable!()
    };
    assert!(reason.contains("keepalive timeout"), "{reason}");
    assert!(server.node("mute").is_none());
    // It was pinged before being given up on.
    let frames = read_until_closed(&mut sock).await;
    assert!(frames.iter().any(|f| matches!(f, ToNode::Ping { .. })));
}

#[tokio::test]
async fn a_node_gives_up_on_a_silent_brain() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake_brain = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let _hello: ToBrain = read_frame(&mut sock).await.unwrap();
        let welcome = ToNode::Welcome {
            protocol_version: PROTOCOL_VERSION,
            brain_version: "fake".into(),
            fence_timeout_secs: None,
        };
        sock.write_all(&encode_frame(&welcome).unwrap())
            .await
            .unwrap();
        // Swallow everything, answer nothing.
        let mut sink = vec![0u8; 4096];
        while sock.read(&mut sink).await.unwrap_or(0) > 0 {}
    });
    let mut config = SimNode::config(&addr, "h1", "v1");
    config.keepalive = fast_keepalive();
    let started = std::time::Instant::now();
    let agent = bigv_spine::NodeAgent::new(config, Arc::new(NoOrders));
    let result = tokio::time::timeout(WAIT, agent.session()).await.unwrap();
    assert!(
        matches!(result, Err(SessionError::KeepaliveTimeout { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() >= fast_keepalive().timeout);
    fake_brain.abort();
}

struct NoOrders;

impl bigv_spine::NodeHandler for NoOrders {
    async fn snapshot(&self) -> Vec<bigv_spine::Resource> {
        vec![]
    }
    async fn create(&self, _: bigv_spine::Resource) -> Result<(), bigv_spine::OrderError> {
        unreachable!("no orders in this test")
    }
    async fn update(&self, _: bigv_spine::Resource) -> Result<(), bigv_spine::OrderError> {
        unreachable!("no orders in this test")
    }
    async fn remove(&self, _: bigv_spine::ResourceName) -> Result<(), bigv_spine::OrderError> {
        unreachable!("no orders in this test")
    }
}

async fn tls_server() -> (
    bigv_spine::SpineServer,
    tokio::sync::mpsc::Receiver<SpineEvent>,
    Fingerprint,
) {
    let identity = BrainIdentity::generate(&["brain.test"]).unwrap();
    let config = ServerConfig {
        tls: Some(identity.server_config().unwrap()),
        ..server_config()
    };
    let (server, events) = start_server(config).await;
    (server, events, identity.fingerprint())
}

#[tokio::test]
async fn tls_with_the_pinned_fingerprint_joins() {
    let (server, mut events, pin) = tls_server().await;
    let mut config = SimNode::config(&server.local_addr().to_string(), "h1", "v1");
    config.tls_pin = Some(pin);
    config.keepalive = fast_keepalive();
    let node = SimNode::new(config, head(1024));
    let task = tokio::spawn(node.clone().run());
    wait_ready(&mut events, "h1").await;
    let handle = server.node("h1").unwrap();
    handle
        .create(bigv_spine::Resource::vm("a", vm(100)), 1)
        .await
        .unwrap();
    assert!(node.vms().contains_key("a"));
    task.abort();
}

#[tokio::test]
async fn a_wrong_fingerprint_refuses_to_connect() {
    let (server, mut events, _) = tls_server().await;
    let impostor_pin = BrainIdentity::generate(&["other"]).unwrap().fingerprint();
    let mut config = SimNode::config(&server.local_addr().to_string(), "h1", "v1");
    config.tls_pin = Some(impostor_pin);
    let agent = bigv_spine::NodeAgent::new(config, Arc::new(NoOrders));
    let result = agent.session().await;
    let Err(SessionError::Tls(e)) = result else {
        panic!("expected a TLS refusal, got {result:?}");
    };
    assert!(e.to_string().contains("certificate"), "{e}");
    let SpineEvent::Rejected { reason, .. } = wait_for(&mut events, "rejection", |e| {
        matches!(e, SpineEvent::Rejected { .. })
    })
    .await
    else {
        unreachable!()
    };
    assert!(reason.contains("TLS"), "{reason}");
    assert!(server.nodes().is_empty());
}

#[tokio::test]
async fn plain_tcp_cannot_talk_to_a_tls_brain() {
    let (server, mut events, _) = tls_server().await;
    let config = SimNode::config(&server.local_addr().to_string(), "h1", "v1");
    let agent = bigv_spine::NodeAgent::new(config, Arc::new(NoOrders));
    assert!(agent.session().await.is_err());
    wait_for(&mut events, "rejection", |e| {
        matches!(e, SpineEvent::Rejected { .. })
    })
    .await;
    assert!(server.nodes().is_empty());
}

/// Reads one frame's raw JSON.
async fn read_raw(sock: &mut TcpStream) -> serde_json::Value {
    let mut len = [0u8; 4];
    sock.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    sock.read_exact(&mut body).await.unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn welcome_tells_version_3_nodes_the_fence_timeout_and_older_ones_nothing() {
    let (server, _events) = start_server(server_config()).await;
    server.set_fence_timeout(Some(25));
    let mut new = TcpStream::connect(server.local_addr()).await.unwrap();
    new.write_all(&encode_frame(&hello("h3", 3)).unwrap())
        .await
        .unwrap();
    let welcome = read_raw(&mut new).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["fence_timeout_secs"], 25, "{welcome}");
    let info = server.node("h3").expect("connected").info().clone();
    assert_eq!(info.fence_timeout_secs, Some(25));

    // A version 2 node's welcome rejects unknown fields: not a word.
    let mut old = TcpStream::connect(server.local_addr()).await.unwrap();
    old.write_all(&encode_frame(&hello("h2", 2)).unwrap())
        .await
        .unwrap();
    let welcome = read_raw(&mut old).await;
    assert_eq!(
        welcome,
        serde_json::json!({"type": "welcome", "protocol_version": 2, "brain_version": env!("CARGO_PKG_VERSION")})
    );

    // Unset: version 3 nodes hear nothing either, and a welcome without
    // the field still decodes.
    server.set_fence_timeout(None);
    let mut unset = TcpStream::connect(server.local_addr()).await.unwrap();
    unset
        .write_all(&encode_frame(&hello("h4", 3)).unwrap())
        .await
        .unwrap();
    let welcome: ToNode = read_frame(&mut unset).await.unwrap();
    assert!(
        matches!(
            welcome,
            ToNode::Welcome {
                fence_timeout_secs: None,
                ..
            }
        ),
        "{welcome:?}"
    );
}

/// Records what the brain's welcome said; holds nothing.
#[derive(Default)]
struct Listener {
    welcomed: std::sync::Mutex<Vec<bigv_spine::Welcomed>>,
}

impl bigv_spine::NodeHandler for Listener {
    fn welcomed(&self, welcome: &bigv_spine::Welcomed) {
        self.welcomed.lock().unwrap().push(welcome.clone());
    }
    async fn snapshot(&self) -> Vec<bigv_spine::Resource> {
        vec![]
    }
    async fn create(&self, _: bigv_spine::Resource) -> Result<(), bigv_spine::OrderError> {
        unreachable!("no orders in this test")
    }
    async fn update(&self, _: bigv_spine::Resource) -> Result<(), bigv_spine::OrderError> {
        unreachable!("no orders in this test")
    }
    async fn remove(&self, _: bigv_spine::ResourceName) -> Result<(), bigv_spine::OrderError> {
        unreachable!("no orders in this test")
    }
}

#[tokio::test]
async fn the_node_hands_the_welcome_to_its_handler() {
    let (server, mut events) = start_server(server_config()).await;
    server.set_fence_timeout(Some(42));
    let handler = Arc::new(Listener::default());
    let agent = bigv_spine::NodeAgent::new(
        SimNode::config(&server.local_addr().to_string(), "h1", "v1"),
        handler.clone(),
    );
    let session = tokio::spawn(async move { agent.session().await });
    wait_ready(&mut events, "h1").await;
    assert_eq!(
        *handler.welcomed.lock().unwrap(),
        [bigv_spine::Welcomed {
            protocol_version: PROTOCOL_VERSION,
            brain_version: env!("CARGO_PKG_VERSION").into(),
            fence_timeout: Some(std::time::Duration::from_secs(42)),
        }]
    );
    session.abort();
}
