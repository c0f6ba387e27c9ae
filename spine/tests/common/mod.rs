//! Helpers shared by the spine's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bigv_spine::resource::VmSpec;
use bigv_spine::sim::SimHardware;
use bigv_spine::{Keepalive, ServerConfig, SpineEvent, SpineServer};
use tokio::sync::mpsc;

pub const WAIT: Duration = Duration::from_secs(10);

pub fn fast_keepalive() -> Keepalive {
    Keepalive {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(600),
    }
}

pub fn server_config() -> ServerConfig {
    ServerConfig {
        keepalive: fast_keepalive(),
        hello_timeout: Duration::from_secs(2),
        order_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    }
}

pub async fn start_server(config: ServerConfig) -> (SpineServer, mpsc::Receiver<SpineEvent>) {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    SpineServer::bind(addr, config).await.unwrap()
}

/// Waits for the first event matching `pred`, skipping others.
pub async fn wait_for(
    events: &mut mpsc::Receiver<SpineEvent>,
    what: &str,
    pred: impl Fn(&SpineEvent) -> bool,
) -> SpineEvent {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(e) = events.recv().await {
            if pred(&e) {
                return e;
            }
        }
        panic!("event stream ended while waiting for {what}");
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

pub async fn wait_ready(events: &mut mpsc::Receiver<SpineEvent>, node: &str) {
    wait_for(
        events,
        &format!("{node} ready"),
        |e| matches!(e, SpineEvent::Ready { node_id, .. } if node_id == node),
    )
    .await;
}

pub fn head(memory_mib: u64) -> SimHardware {
    SimHardware::Head { memory_mib }
}

pub fn tail(pool_mib: u64) -> SimHardware {
    SimHardware::Tail {
        pools: BTreeMap::from([("sata1".to_string(), ("sata".to_string(), pool_mib))]),
    }
}

pub fn vm(memory: u64) -> VmSpec {
    VmSpec {
        memory,
        cores: 1,
        balloon_on: true,
        cdrom_url: None,
        imager_options: None,
        display_name: "test".into(),
        keymap: "en-gb".into(),
        network_interfaces: vec![],
        discs: vec![],
        management_address: None,
        management_ssh_keys: vec![],
        console_users: vec![],
        user_authentication: BTreeMap::new(),
        ..Default::default()
    }
}
