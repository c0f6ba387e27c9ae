//! VM networking end to end (slow tier: BIGV_SLOW_TESTS=1): in a network
//! namespace of its own, with a veth pair as the trunk and the outside,
//! a head agent on a real spine starts the test guest (real qemu, TCG)
//! with a NIC on a VLAN. The guest gets its lease from the head's DHCP
//! responder with busybox `udhcpc` at boot (and again after an agent
//! restart), then uses its address with busybox
//! (`sh` on its serial console) and pings and sends UDP to the outside:
//! it arrives. The guest then forges another IP, and separately another
//! MAC: the outside gets nothing of it (after an agent restart, which
//! keeps the tap). Stopping the VM removes its tap.
//!
//! The VLAN is tagged on the trunk when this kernel has 802.1Q (the
//! outside is then `outside0.5`); without it (some CI kernels), the
//! VLAN is the trunk's untagged one.

mod common;

use std::path::Path;
use std::time::Duration;

use bigv_head::agent::{AgentConfig, HeadAgent};
use bigv_head::argv::NicBackend;
use bigv_head::net::{self, NetConfig, link::Netlink};
use bigv_spine::resource::{DhcpConfig, NetworkInterface, ResourceName, VmDisc, VmSpec};
use bigv_spine::{NodeAgent, Resource};
use bigv_test_guest::lines;
use common::netns::in_netns;
use common::*;
use rtnetlink::LinkVlan;

const BOOT_WAIT: Duration = Duration::from_secs(180);
const MAC: &str = "52:54:00:4d:00:05";
const OUTSIDE_IP: [u8; 4] = [10, 77, 0, 1];
/// busybox udhcpc, once, printing the lease it is given (its script gets
/// the lease in the environment).
const UDHCPC: &str = "printf '#!/bin/sh\\n[ \"$1\" = bound ] && echo LEASE ip=$ip subnet=$subnet router=$router hostname=$hostname domain=$domain\\n' > /udhcpc.sh && chmod +x /udhcpc.sh && ip link set eth0 up && udhcpc -i eth0 -n -q -f -t 5 -T 3 -s /udhcpc.sh";

/// Runs `command` with the guest's busybox shell; its status and output.
///
/// Connected only to type: a serial socket whose reader falls behind makes
/// qemu log characters twice (a write that fails with EAGAIN is logged,
/// then retried and logged again; each byte takes a socket buffer entry,
/// so a few hundred bytes of output are enough). With no client, output
/// is logged once. The command waits a second, so its output comes after
/// the test has let go.
async fn sh(serial: &Path, log: &Path, command: &str, limit: Duration) -> (i32, Vec<String>) {
    let line = format!("sleep 1; {command}");
    let mut socket = std::os::unix::net::UnixStream::connect(serial).unwrap();
    std::io::Write::write_all(&mut socket, format!("sh {line}\n").as_bytes()).unwrap();
    let n = wait_for(&format!("the guest to start {command:?}"), WAIT, || {
        serial_lines(log)
            .iter()
            .find_map(|l| lines::sh_started(l, &line))
    })
    .await;
    drop(socket);
    let status = wait_for(&format!("{command:?} to end"), limit, || {
        serial_lines(log).iter().find_map(|l| lines::sh_exit(l, n))
    })
    .await;
    let out = serial_lines(log)
        .iter()
        .filter_map(|l| lines::sh_out(l, n).map(str::to_owned))
        .collect();
    (status, out)
}

/// The datagrams the outside's listener gets within `window`, as
/// (source address, payload).
async fn datagrams(udp: &tokio::net::UdpSocket, window: Duration) -> Vec<(String, String)> {
    let mut got = vec![];
    let end = tokio::time::Instant::now() + window;
    let mut buf = [0u8; 1500];
    while let Ok(Ok((n, from))) = tokio::time::timeout_at(end, udp.recv_from(&mut buf)).await {
        got.push((
            from.ip().to_string(),
            String::from_utf8_lossy(&buf[..n]).into_owned(),
        ));
    }
    got
}

fn names(got: &[(String, String)], marker: &str) -> bool {
    got.iter().any(|(_, payload)| payload.contains(marker))
}

/// A head agent with bridged NICs on `trunk0`, on the spine at `spine`.
async fn start_head(
    root: &Path,
    spine: std::net::SocketAddr,
    untagged_vlan: Option<u32>,
) -> (std::sync::Arc<HeadAgent>, tokio::task::JoinHandle<()>) {
    let mut settings = qemu_settings();
    settings.nic_backend = NicBackend::Bridged;
    let agent = HeadAgent::start(AgentConfig {
        settings,
        net: Some(NetConfig {
            trunk: "trunk0".into(),
            untagged_vlan,
        }),
        ..agent_config(root)
    })
    .await
    .unwrap();
    let node = NodeAgent::new(
        head_node_config(spine, "head1", Duration::from_secs(5)),
        agent.clone(),
    );
    agent.set_notifier(node.notifier());
    let runner = agent.clone();
    let task = tokio::spawn(async move {
        runner.run_spine(&node).await;
    });
    (agent, task)
}

async fn link_mac(nl: &Netlink, name: &str) -> String {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::link::LinkAttribute;
    let link = nl
        .handle()
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
        .unwrap()
        .unwrap();
    let mac = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) => Some(m.clone()),
            _ => None,
        })
        .unwrap();
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn a_guest_reaches_its_vlan_and_its_forgeries_do_not() {
    if !slow() {
        return;
    }
    logs();
    in_netns(scenario);
}

async fn scenario() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let _killer = KillVms(root.join("run"));
    let nl = Netlink::connect().unwrap();

    // The outside: VLAN 5 tagged on the trunk if the kernel can, else
    // the trunk's untagged VLAN 7.
    let outside0 = nl.index("outside0").await.unwrap().unwrap();
    let tagged = nl
        .handle()
        .link()
        .add(LinkVlan::new("outside0.5", outside0, 5).up().build())
        .execute()
        .await
        .is_ok();
    let (vlan, untagged_vlan, outside) = if tagged {
        (5, None, "outside0.5")
    } else {
        eprintln!("no 802.1Q in this kernel: the VM's VLAN is the trunk's untagged one");
        (7, Some(7), "outside0")
    };
    let outside_index = nl.index(outside).await.unwrap().unwrap();
    nl.up(outside_index, outside).await.unwrap();
    nl.handle()
        .address()
        .add(outside_index, OUTSIDE_IP.into(), 24)
        .execute()
        .await
        .unwrap();
    let udp = tokio::net::UdpSocket::bind("10.77.0.1:9999").await.unwrap();
    let outside_mac = link_mac(&nl, outside).await;

    // A head with bridged NICs on trunk0, on a real spine, its disc on
    // our tail — all on this namespace's loopback.
    let (_image, tail) = guest_on_tail(&root, &["127.0.0.1"]).await;
    let server = spine().await;
    let (agent, task) = start_head(&root, server.local_addr(), untagged_vlan).await;
    let h = ready(&server, "head1").await;

    let spec = VmSpec {
        memory: 256,
        cores: 1,
        keymap: "en-gb".into(),
        discs: vec![VmDisc {
            address: format!("nbd:{}", tail.local_addr()),
            model: "virtio".into(),
            serial: Some("guestdisc".into()),
        }],
        network_interfaces: vec![NetworkInterface {
            mac: MAC.into(),
            vlan_id: vlan,
            model: "virtio".into(),
            ips: vec!["10.77.0.5".into()],
            dhcp: Some(DhcpConfig {
                network: "10.77.0.0/24".into(),
                router: "10.77.0.1".into(),
                hostname: "n1".into(),
                domain: "example.test".into(),
            }),
        }],
        ..Default::default()
    };
    h.create(Resource::vm("n1", spec), 1).await.unwrap();
    let tap = net::tap_name("n1", 0);
    assert!(
        nl.index(&tap).await.unwrap().is_some(),
        "the tap exists while the VM runs"
    );
    let log = agent.paths("n1").serial_log;
    wait_for("the guest's boot line", BOOT_WAIT, || {
        serial_lines(&log)
            .iter()
            .find_map(|l| lines::boot_id(l).map(str::to_owned))
    })
    .await;
    let serial = agent.paths("n1").serial;
    let limit = Duration::from_secs(60);

    // Its lease from the head's responder on its tap: the guest's DHCP
    // client at boot (busybox udhcpc) got exactly the configured one.
    let got = wait_for("the guest's DHCP lease at boot", limit, || {
        serial_lines(&log)
            .iter()
            .find_map(|l| lines::net_lease(l).map(str::to_owned))
    })
    .await;
    assert_eq!(
        got,
        "ip=10.77.0.5 mask=24 router=10.77.0.1 hostname=n1 domain=example.test"
    );
    let lease =
        "ip=10.77.0.5 subnet=255.255.255.0 router=10.77.0.1 hostname=n1 domain=example.test";

    // Its own address: ping and UDP (busybox tftp's request, which
    // names the "file") arrive.
    let (status, out) = sh(
        &serial,
        &log,
        "ip addr replace 10.77.0.5/24 dev eth0 && ping -c 3 -W 20 10.77.0.1",
        limit,
    )
    .await;
    assert_eq!(status, 0, "the guest pings the outside: {out:?}");
    let tftp = |name: &str| format!("timeout 3 tftp -g -r {name} 10.77.0.1 9999");
    sh(&serial, &log, &tftp("bigv-good-udp"), limit).await;
    let got = datagrams(&udp, Duration::from_secs(2)).await;
    assert!(names(&got, "bigv-good-udp"), "{got:?}");
    assert!(got.iter().all(|(from, _)| from == "10.77.0.5"), "{got:?}");

    // An agent restart re-adopts the VM and keeps its tap (the same
    // link, not a new one); the filters below are the re-adopted ones.
    let tap_index = nl.index(&tap).await.unwrap();
    task.abort();
    let _ = task.await;
    agent.shutdown().await;
    wait_for("the spine to notice", WAIT, || {
        (!server.node("head1").is_some_and(|h| h.is_ready())).then_some(())
    })
    .await;
    let (agent, task) = start_head(&root, server.local_addr(), untagged_vlan).await;
    let h = ready(&server, "head1").await;
    assert!(vm_in_table(&h, "n1").is_some(), "vm.n1 re-adopted");
    assert_eq!(nl.index(&tap).await.unwrap(), tap_index, "the same tap");
    let (status, out) = sh(&serial, &log, UDHCPC, limit).await;
    assert!(
        status == 0 && out.iter().any(|l| l.ends_with(lease)),
        "the re-adopting agent answers DHCP again: {out:?}"
    );

    // Another IP: nothing reaches the outside. The outside's MAC is a
    // static neighbour, so the datagrams are really sent (no ARP first).
    let arp = format!("arp -s 10.77.0.1 {outside_mac}");
    sh(
        &serial,
        &log,
        &format!(
            "ip addr flush dev eth0 && ip addr add 10.77.0.66/24 dev eth0 && {arp} && {}",
            tftp("bigv-forged-ip")
        ),
        limit,
    )
    .await;
    let got = datagrams(&udp, Duration::from_secs(2)).await;
    assert!(
        got.is_empty(),
        "a forged source address got through: {got:?}"
    );

    // Another MAC, its own IP again: nothing either.
    sh(
        &serial,
        &log,
        &format!(
            "ip addr flush dev eth0 && ip link set eth0 down && ip link set eth0 address 52:54:00:99:99:99 && ip link set eth0 up && ip addr add 10.77.0.5/24 dev eth0 && {arp} && {}",
            tftp("bigv-forged-mac")
        ),
        limit,
    )
    .await;
    let got = datagrams(&udp, Duration::from_secs(2)).await;
    assert!(got.is_empty(), "a forged MAC got through: {got:?}");

    // Its own MAC back: through again (the guest was not simply broken).
    let (status, out) = sh(
        &serial,
        &log,
        &format!(
            "ip link set eth0 down && ip link set eth0 address {MAC} && ip link set eth0 up && ip addr add 10.77.0.5/24 dev eth0; ping -c 3 -W 20 10.77.0.1 && {}",
            tftp("bigv-good-again")
        ),
        limit,
    )
    .await;
    let got = datagrams(&udp, Duration::from_secs(2)).await;
    assert!(names(&got, "bigv-good-again"), "{status} {out:?} {got:?}");

    // Stop: the tap goes with the VM.
    h.remove(ResourceName::vm("n1"), 2).await.unwrap();
    // The removal returns once the VM is reported gone, taps and all.
    assert!(
        nl.index(&tap).await.unwrap().is_none(),
        "the tap is removed with the VM"
    );
    task.abort();
    agent.shutdown().await;
}
