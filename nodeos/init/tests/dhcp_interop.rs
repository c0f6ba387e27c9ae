//! Init's DHCP client against the brain's own DHCP server (`bigv-pxe`),
//! packet for packet in memory: after iPXE, the booted node's init asks
//! the brain's server for its address, so the two must agree.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bigv_init::cmdline::Mac;
use bigv_init::dhcp::{Client, Event};
use bigv_pxe::dhcp::{Destination, DhcpConfig, DhcpServer};
use bigv_pxe::{Admission, BootPolicy, ClientInfo, LeaseChange, MacAddr, NodeBoot};

const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x21];

#[derive(Default)]
struct Policy {
    seen: Mutex<Vec<ClientInfo>>,
    bound: Mutex<Vec<LeaseChange>>,
}

impl BootPolicy for Policy {
    fn admit(&self, c: &ClientInfo) -> Admission {
        self.seen.lock().unwrap().push(c.clone());
        if c.mac == MacAddr(MAC) {
            Admission::Known { address: None }
        } else {
            Admission::Ignore
        }
    }
    fn node_boot(&self, _: MacAddr) -> Option<NodeBoot> {
        None
    }
    fn lease_changed(&self, c: &LeaseChange) {
        self.bound.lock().unwrap().push(c.clone());
    }
}

#[test]
fn init_gets_and_renews_its_address_from_the_brains_server() {
    let mut config = DhcpConfig::new(
        Ipv4Addr::new(10, 0, 0, 1),
        "10.0.0.0/24".parse().unwrap(),
        Ipv4Addr::new(10, 0, 0, 100),
        Ipv4Addr::new(10, 0, 0, 199),
        "http://10.0.0.1:8080".into(),
    );
    config.router = Some(Ipv4Addr::new(10, 0, 0, 1));
    config.lease_time = Duration::from_secs(600);
    let policy = Arc::new(Policy::default());
    let mut server = DhcpServer::new(config, policy.clone(), []).unwrap();
    let now = SystemTime::now();
    let mut client = Client::new(Mac(MAC), 0);

    let discover = client.discover(0x1234_5678);
    let offer = server.handle(&discover, now).unwrap().expect("an OFFER");
    assert_eq!(
        offer.to,
        Destination::Broadcast,
        "we asked for broadcast replies"
    );
    let Event::Request(request) = client.handle(&offer.bytes) else {
        panic!("init did not take the brain's offer")
    };
    let ack = server.handle(&request, now).unwrap().expect("an ACK");
    let Event::Bound(lease) = client.handle(&ack.bytes) else {
        panic!("init did not take the brain's ACK")
    };
    assert!(
        (100..=199).contains(&lease.address.octets()[3]),
        "{lease:?}"
    );
    assert_eq!(lease.prefix_len, 24);
    assert_eq!(lease.router, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(lease.server, Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(lease.lease_secs, 600);
    // A plain client: no PXE architecture, not iPXE, so no boot file.
    let seen = policy.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|c| c.arch.is_none() && !c.ipxe), "{seen:?}");

    // Renewal at T1: unicast to the client, same address.
    let renew = client.renew(0x9abc_def0).unwrap();
    let ack = server
        .handle(&renew, now + Duration::from_secs(300))
        .unwrap()
        .expect("an ACK to the renewal");
    assert_eq!(ack.to, Destination::Unicast(lease.address));
    let Event::Bound(renewed) = client.handle(&ack.bytes) else {
        panic!("renewal not taken")
    };
    assert_eq!(renewed.address, lease.address);
    assert!(
        policy
            .bound
            .lock()
            .unwrap()
            .iter()
            .filter(|c| matches!(c, LeaseChange::Bound(_)))
            .count()
            >= 2,
        "the brain saw the lease bound and renewed"
    );
}
