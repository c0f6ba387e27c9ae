//! The DHCP socket task on loopback: a client socket sends a DISCOVER and
//! gets the OFFER back through the real serve loop. (The boot-LAN path with
//! SO_BINDTODEVICE and 255.255.255.255 is exercised by the iPXE end-to-end
//! test.)

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use bigv_pxe::dhcp::socket::{self, DhcpSocketConfig};
use bigv_pxe::dhcp::{DhcpConfig, DhcpServer};
use bigv_pxe::{Admission, BootPolicy, ClientInfo, MacAddr, NodeBoot};
use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable};

struct Everyone;

impl BootPolicy for Everyone {
    fn admit(&self, _: &ClientInfo) -> Admission {
        Admission::Enrolling
    }
    fn node_boot(&self, _: MacAddr) -> Option<NodeBoot> {
        None
    }
}

#[tokio::test]
async fn serve_loop_answers_on_loopback() {
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client_port = client.local_addr().unwrap().port();
    let cfg = DhcpSocketConfig {
        interface: None,
        listen: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        client_port,
        // "Broadcast" replies go to the loopback client.
        broadcast: Ipv4Addr::LOCALHOST,
    };
    let sock = socket::bind(&cfg).unwrap();
    let server_addr = sock.local_addr().unwrap();
    let dhcp = DhcpServer::new(
        DhcpConfig::new(
            Ipv4Addr::new(10, 0, 0, 1),
            "10.0.0.0/24".parse().unwrap(),
            Ipv4Addr::new(10, 0, 0, 100),
            Ipv4Addr::new(10, 0, 0, 200),
            "http://10.0.0.1".into(),
        ),
        Arc::new(Everyone),
        [],
    )
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(socket::serve(dhcp, sock, cfg, async {
        let _ = stopped.await;
    }));

    // Garbage first: the loop logs it and carries on.
    client.send_to(&[1, 2, 3], server_addr).await.unwrap();
    let mut discover = Message::new_with_id(
        7,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &[2, 0, 0, 0, 0, 1],
    );
    discover
        .opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    client
        .send_to(&discover.to_vec().unwrap(), server_addr)
        .await
        .unwrap();
    let mut buf = [0u8; 1500];
    let (len, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
        .await
        .expect("an OFFER within 5 s")
        .unwrap();
    assert_eq!(from, server_addr);
    let offer = Message::decode(&mut Decoder::new(&buf[..len])).unwrap();
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.xid(), 7);
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 100));

    stop.send(()).unwrap();
    let dhcp = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    // The task hands its state back on shutdown.
    assert_eq!(
        dhcp.leases().address_of(MacAddr([2, 0, 0, 0, 0, 1])),
        Some(Ipv4Addr::new(10, 0, 0, 100))
    );
}
