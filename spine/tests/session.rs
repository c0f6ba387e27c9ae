//! The spine's connection behaviour, end to end over real sockets.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bigv_spine::message::ErrorCode;
use bigv_spine::resource::{DiscSpec, ResourceName, ResourceValue, VmRunState};
use bigv_spine::sim::{SimFleet, SimNode};
use bigv_spine::{
    NodeAgent, NodeHandler, OrderError, OrderFailure, PowerAction, Resource, ServerConfig,
    SessionError, SpineEvent,
};
use common::*;

fn sim(server_addr: &str, id: &str, hw: bigv_spine::sim::SimHardware) -> Arc<SimNode> {
    let mut config = SimNode::config(server_addr, id, "v1");
    config.keepalive = fast_keepalive();
    SimNode::new(config, hw)
}

#[tokio::test]
async fn hello_dump_ready_then_table_matches_node() {
    let (server, mut events) = start_server(server_config()).await;
    let addr = server.local_addr().to_string();
    let node = sim(&addr, "h1", head(4096));
    // A VM the node already runs when it connects (a restarted agent
    // re-adopting qemu, say) must arrive in the dump before `ready`.
    node.reconnect_with_stale_vm("old", vm(512));
    let task = tokio::spawn(node.clone().run());

    let SpineEvent::Connected(info) = wait_for(&mut events, "connected", |e| {
        matches!(e, SpineEvent::Connected(_))
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(info.node_id, "h1");
    assert_eq!(info.image_version, "v1");
    let mut dumped = vec![];
    loop {
        match wait_for(&mut events, "dump", |_| true).await {
            SpineEvent::Created { resource, .. } => dumped.push(resource.name().to_string()),
            SpineEvent::Ready { node_id, .. } => {
                assert_eq!(node_id, "h1");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    dumped.sort();
    assert_eq!(dumped, ["global.load", "global.memory", "vm.old"]);

    let handle = server.node("h1").expect("h1 connected");
    let (ResourceValue::Memory(mem), _) = handle
        .resource(&"global.memory".parse().unwrap())
        .expect("memory reported")
    else {
        panic!("wrong kind")
    };
    assert_eq!((mem.total, mem.free), (4096, 4096 - 512));
    task.abort();
}

#[tokio::test]
async fn resources_vanish_when_the_connection_drops() {
    let (server, mut events) = start_server(server_config()).await;
    let addr = server.local_addr().to_string();
    let node = sim(&addr, "h1", head(4096));
    let task = tokio::spawn(node.clone().run());
    wait_ready(&mut events, "h1").await;

    let handle = server.node("h1").unwrap();
    handle
        .create(Resource::vm("web", vm(1024)), 1)
        .await
        .unwrap();
    assert!(handle.resource(&ResourceName::vm("web")).is_some());

    node.stay_away(Duration::from_secs(30));
    let gone = wait_for(&mut events, "disconnect", |e| {
        matches!(e, SpineEvent::Disconnected { .. })
    })
    .await;
    let SpineEvent::Disconnected { reason, .. } = gone else {
        unreachable!()
    };
    assert!(reason.contains("closed"), "{reason}");
    assert!(
        server.node("h1").is_none(),
        "h1's resources outlived its connection"
    );
    // The old handle can no longer order anything.
    let err = handle.remove(ResourceName::vm("web"), 2).await.unwrap_err();
    assert_eq!(err, OrderFailure::Disconnected);
    task.abort();
}

/// A handler whose replies come back out of order and whose outcome
/// depends on the resource, so a reply matched to the wrong tag shows.
struct Shuffler;

impl NodeHandler for Shuffler {
    async fn snapshot(&self) -> Vec<Resource> {
        vec![]
    }
    async fn create(&self, r: Resource) -> Result<(), OrderError> {
        let delay = rand::random::<u64>() % 30;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        match r.name() {
            ResourceName::Vm(n) if n.ends_with(['1', '3', '5', '7', '9']) => {
                Err(OrderError::new(ErrorCode::Invalid, n.clone()))
            }
            _ => Ok(()),
        }
    }
    async fn update(&self, _: Resource) -> Result<(), OrderError> {
        Ok(())
    }
    async fn remove(&self, _: ResourceName) -> Result<(), OrderError> {
        Ok(())
    }
}

#[tokio::test]
async fn many_concurrent_orders_get_their_own_replies() {
    let (server, mut events) = start_server(server_config()).await;
    let mut config = SimNode::config(&server.local_addr().to_string(), "h1", "v1");
    config.keepalive = fast_keepalive();
    let agent = Arc::new(NodeAgent::new(config, Arc::new(Shuffler)));
    let a = agent.clone();
    let task = tokio::spawn(async move { a.session().await });
    wait_ready(&mut events, "h1").await;
    let handle = server.node("h1").unwrap();

    let orders = (0..300).map(|i| {
        let handle = handle.clone();
        async move {
            let result = handle
                .create(Resource::vm(format!("vm{i}"), vm(1)), 1)
                .await;
            (i, result)
        }
    });
    for (i, result) in futures::future::join_all(orders).await {
        if i % 2 == 1 {
            match result {
                Err(OrderFailure::Refused(e)) => assert_eq!(e.message, format!("vm{i}")),
                other => panic!("vm{i}: expected refusal, got {other:?}"),
            }
        } else {
            assert_eq!(result, Ok(()), "vm{i}");
        }
    }
    task.abort();
}

#[tokio::test]
async fn stale_generations_are_refused_and_repeats_are_harmless() {
    let (server, mut events) = start_server(server_config()).await;
    let node = sim(&server.local_addr().to_string(), "h1", head(8192));
    let task = tokio::spawn(node.clone().run());
    wait_ready(&mut events, "h1").await;
    let handle = server.node("h1").unwrap();

    handle.create(Resource::vm("a", vm(1024)), 5).await.unwrap();
    let stale = handle.update(Resource::vm("a", vm(2048)), 3).await;
    match stale {
        Err(OrderFailure::Refused(e)) => assert_eq!(e.code, ErrorCode::StaleGeneration),
        other => panic!("expected stale refusal, got {other:?}"),
    }
    assert_eq!(node.vms()["a"].memory, 1024, "stale order was applied");

    handle.update(Resource::vm("a", vm(2048)), 6).await.unwrap();
    assert_eq!(node.vms()["a"].memory, 2048);
    // The same order again (a retry after a lost reply) changes nothing.
    handle.update(Resource::vm("a", vm(2048)), 6).await.unwrap();

    let stale_remove = handle.remove(ResourceName::vm("a"), 4).await;
    assert!(
        matches!(stale_remove, Err(OrderFailure::Refused(ref e)) if e.code == ErrorCode::StaleGeneration)
    );
    assert!(node.vms().contains_key("a"));

    // The table carries the generation the node applied.
    let (_, generation) = handle.resource(&ResourceName::vm("a")).unwrap();
    assert_eq!(generation, 6);
    task.abort();
}

#[tokio::test]
async fn version_mismatch_is_explicit_and_closes() {
    let config = ServerConfig {
        min_version: 7,
        max_version: 9,
        ..server_config()
    };
    let (server, mut events) = start_server(config).await;
    let agent_result = {
        let mut config = SimNode::config(&server.local_addr().to_string(), "h1", "v1");
        config.keepalive = fast_keepalive();
        NodeAgent::new(config, Arc::new(Shuffler)).session().await
    };
    match agent_result {
        Err(SessionError::VersionMismatch {
            node_version,
            brain_min,
            brain_max,
        }) => assert_eq!(
            (node_version, brain_min, brain_max),
            (bigv_spine::PROTOCOL_VERSION, 7, 9)
        ),
        other => panic!("expected version mismatch, got {other:?}"),
    }
    let SpineEvent::Rejected { reason, .. } = wait_for(&mut events, "rejection", |e| {
        matches!(e, SpineEvent::Rejected { .. })
    })
    .await
    else {
        unreachable!()
    };
    let speaks = format!("speaks protocol {}", bigv_spine::PROTOCOL_VERSION);
    assert!(reason.contains(&speaks), "{reason}");
    assert!(server.nodes().is_empty());
}

#[tokio::test]
async fn a_node_that_reconnects_replaces_its_old_connection() {
    let (server, mut events) = start_server(server_config()).await;
    let addr = server.local_addr().to_string();
    let first = sim(&addr, "h1", head(1024));
    let t1 = tokio::spawn(first.clone().run());
    wait_ready(&mut events, "h1").await;
    let old_conn = server.node("h1").unwrap().info().conn;

    // A second process claiming the same identity (a rebooted node whose
    // old socket has not timed out yet).
    let second = sim(&addr, "h1", head(1024));
    let t2 = tokio::spawn(second.clone().run());
    let SpineEvent::Disconnected { reason, conn, .. } = wait_for(
        &mut events,
        "old conn closed",
        |e| matches!(e, SpineEvent::Disconnected { conn, .. } if *conn == old_conn),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(conn, old_conn);
    assert!(reason.contains("replaced"), "{reason}");
    t1.abort();
    wait_ready(&mut events, "h1").await;
    assert_ne!(server.node("h1").unwrap().info().conn, old_conn);
    t2.abort();
}

#[tokio::test]
async fn power_orders_reach_the_node_which_reboots_and_rejoins() {
    let (server, mut events) = start_server(server_config()).await;
    let node = sim(&server.local_addr().to_string(), "h1", head(2048));
    let task = tokio::spawn(node.clone().run());
    wait_ready(&mut events, "h1").await;
    let handle = server.node("h1").unwrap();
    handle.create(Resource::vm("a", vm(512)), 1).await.unwrap();

    handle.power(PowerAction::Reboot).await.unwrap();
    wait_for(&mut events, "disconnect", |e| {
        matches!(e, SpineEvent::Disconnected { .. })
    })
    .await;
    wait_ready(&mut events, "h1").await;
    assert!(node.vms().is_empty(), "a rebooted head keeps no VMs");
    assert!(
        server
            .node("h1")
            .unwrap()
            .resource(&ResourceName::vm("a"))
            .is_none()
    );

    server
        .node("h1")
        .unwrap()
        .power(PowerAction::Poweroff)
        .await
        .unwrap();
    wait_for(&mut events, "disconnect", |e| {
        matches!(e, SpineEvent::Disconnected { .. })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(node.is_powered_off());
    assert!(
        server.node("h1").is_none(),
        "a powered-off node came back by itself"
    );
    node.power_on();
    wait_ready(&mut events, "h1").await;
    task.abort();
}

#[tokio::test]
async fn simulated_crashes_and_rogue_vms_reach_the_brain() {
    let (server, mut events) = start_server(server_config()).await;
    let addr = server.local_addr().to_string();
    let node = sim(&addr, "h1", head(4096));
    let task = tokio::spawn(node.clone().run());
    wait_ready(&mut events, "h1").await;
    let handle = server.node("h1").unwrap();
    handle.create(Resource::vm("a", vm(1024)), 1).await.unwrap();
    let (ResourceValue::Vm(spec), _) = handle.resource(&ResourceName::vm("a")).unwrap() else {
        panic!()
    };
    assert_eq!(spec.state, Some(VmRunState::Running));

    assert!(node.crash_vm("a").await);
    wait_for(
        &mut events,
        "destroyed",
        |e| matches!(e, SpineEvent::Destroyed { name, .. } if *name == ResourceName::vm("a")),
    )
    .await;
    assert!(handle.resource(&ResourceName::vm("a")).is_none());

    node.reconnect_with_stale_vm("rogue", vm(256));
    wait_for(&mut events, "rogue declared", |e| {
        matches!(e, SpineEvent::Created { resource, .. } if *resource.name() == ResourceName::vm("rogue"))
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn tails_account_for_discs_and_refuse_what_they_cannot_do() {
    let (server, mut events) = start_server(server_config()).await;
    let addr = server.local_addr().to_string();
    let node = sim(&addr, "t1", tail(100_000));
    let task = tokio::spawn(node.clone().run());
    wait_ready(&mut events, "t1").await;
    let handle = server.node("t1").unwrap();
    let disc = |size, pool: &str| DiscSpec {
        size,
        storage_pool: pool.into(),
        access_control_list: vec!["fd00::1".into()],
        address: "fd00::100".into(),
        ..Default::default()
    };
    handle
        .create(Resource::disc("sata", "1", disc(25_600, "sata1")), 1)
        .await
        .unwrap();
    let (ResourceValue::StoragePools(pools), _) = handle
        .resource(&"global.storage_pools".parse().unwrap())
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(pools["sata1"].allocated, 25_600);

    let no_pool = handle
        .create(Resource::disc("sata", "2", disc(1, "ssd9")), 1)
        .await;
    assert!(
        matches!(no_pool, Err(OrderFailure::Refused(ref e)) if e.code == ErrorCode::Invalid && e.message.contains("ssd9"))
    );
    let vm_on_tail = handle.create(Resource::vm("x", vm(1)), 1).await;
    assert!(
        matches!(vm_on_tail, Err(OrderFailure::Refused(ref e)) if e.code == ErrorCode::Unsupported)
    );
    let shrink = handle
        .update(Resource::disc("sata", "1", disc(100, "sata1")), 2)
        .await;
    assert!(matches!(shrink, Err(OrderFailure::Refused(ref e)) if e.message.contains("shrink")));
    task.abort();
}

#[tokio::test]
async fn thousands_of_simulated_nodes_in_one_process() {
    const HEADS: usize = 1500;
    const TAILS: usize = 500;
    let (server, mut events) = start_server(ServerConfig {
        // Generous: two cores share this test with the whole fleet.
        keepalive: bigv_spine::Keepalive {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(30),
        },
        ..server_config()
    })
    .await;
    let addr = server.local_addr().to_string();
    let fleet = SimFleet::start(&addr, HEADS, TAILS, head(65536), tail(1 << 20), |c| {
        c.handshake_timeout = Duration::from_secs(30);
    });
    let mut ready = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ready < HEADS + TAILS {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(SpineEvent::Ready { .. })) => ready += 1,
            Ok(Some(_)) => {}
            other => panic!("only {ready} nodes ready: {other:?}"),
        }
    }
    assert_eq!(server.nodes().len(), HEADS + TAILS);
    // Every node still takes orders.
    let h = server.node("sim-head-1499").unwrap();
    h.create(Resource::vm("last", vm(1024)), 1).await.unwrap();
    assert!(
        fleet
            .node("sim-head-1499")
            .unwrap()
            .vms()
            .contains_key("last")
    );
}

#[tokio::test]
async fn signals_and_template_copies_are_delivered_once() {
    use bigv_spine::resource::{SignalKind, TemplateCopy, VmSignal};
    let (server, mut events) = start_server(server_config()).await;
    let addr = server.local_addr().to_string();
    let h = sim(&addr, "h1", head(4096));
    let t = sim(&addr, "t1", tail(100_000));
    let tasks = [tokio::spawn(h.clone().run()), tokio::spawn(t.clone().run())];
    wait_ready(&mut events, "h1").await;
    wait_ready(&mut events, "t1").await;
    let head_node = server.node("h1").unwrap();

    let mut spec = vm(512);
    spec.signal = Some(VmSignal {
        seq: 1,
        kind: SignalKind::Powerdown,
        keys: None,
    });
    // A VM created with an old signal does not act on it again...
    let mut created = spec.clone();
    created.signal = None;
    head_node
        .create(Resource::vm("a", created), 1)
        .await
        .unwrap();
    // ...but a new powerdown makes the guest stop, and the brain hears it.
    head_node.update(Resource::vm("a", spec), 2).await.unwrap();
    assert!(h.vms().is_empty());
    wait_for(
        &mut events,
        "powered down",
        |e| matches!(e, SpineEvent::Destroyed { name, .. } if *name == ResourceName::vm("a")),
    )
    .await;

    let mut disc = DiscSpec {
        size: 1024,
        storage_pool: "sata1".into(),
        ..Default::default()
    };
    disc.template = Some(TemplateCopy {
        seq: 3,
        image: "bigv-test".into(),
    });
    let tail_node = server.node("t1").unwrap();
    tail_node
        .create(Resource::disc("sata", "9", disc), 1)
        .await
        .unwrap();
    let (ResourceValue::Disc(reported), _) = tail_node
        .resource(&ResourceName::disc("sata", "9"))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(reported.imaged_seq, Some(3));
    for task in tasks {
        task.abort();
    }
}

#[tokio::test]
async fn a_nodes_log_lines_reach_the_brain_and_survive_its_reconnect() {
    use bigv_spine::logs::{LogBuffer, LogLine};
    let (server, mut events) = start_server(server_config()).await;
    let addr = server.local_addr().to_string();
    let logs = LogBuffer::new();
    let line = |m: &str| LogLine {
        at_ms: 1,
        level: "INFO".into(),
        source: "init".into(),
        message: m.into(),
    };
    // Written before the spine is up: kept until it is.
    logs.push(line("agent started"));
    let mut config = SimNode::config(&addr, "t1", "v1");
    config.keepalive = fast_keepalive();
    config.logs = Some(logs.clone());
    let node = SimNode::new(config, tail(1024));
    let task = tokio::spawn(node.clone().run());
    wait_ready(&mut events, "t1").await;
    logs.push(line("pool sata1 mounted"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.logs("t1", 10).len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            server.logs("t1", 10)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The brain keeps them across the node's reconnect.
    node.drop_connection();
    wait_ready(&mut events, "t1").await;
    logs.push(line("back"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.logs("t1", 10).len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            server.logs("t1", 10)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got: Vec<String> = server
        .logs("t1", 10)
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert_eq!(got, ["agent started", "pool sata1 mounted", "back"]);
    assert_eq!(server.logs("t1", 1).len(), 1);
    assert!(server.logs("nobody", 10).is_empty());
    task.abort();
}
