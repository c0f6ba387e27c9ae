//! The DHCP packet handler, driven with packets as PXE firmware, iPXE and a
//! plain client send them.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bigv_pxe::dhcp::{Destination, DhcpConfig, DhcpError, DhcpServer, Lease, Reply};
use bigv_pxe::{Admission, BootPolicy, ClientInfo, LeaseChange, MacAddr, NodeBoot};
use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use proptest::prelude::*;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

#[derive(Default)]
struct Policy {
    known: HashMap<MacAddr, Option<Ipv4Addr>>,
    enroll_unknown: bool,
    changes: Mutex<Vec<LeaseChange>>,
    seen: Mutex<Vec<ClientInfo>>,
}

impl BootPolicy for Policy {
    fn admit(&self, c: &ClientInfo) -> Admission {
        self.seen.lock().unwrap().push(c.clone());
        match self.known.get(&c.mac) {
            Some(address) => Admission::Known { address: *address },
            None if self.enroll_unknown => Admission::Enrolling,
            None => Admission::Ignore,
        }
    }
    fn node_boot(&self, _: MacAddr) -> Option<NodeBoot> {
        None
    }
    fn lease_changed(&self, c: &LeaseChange) {
        self.changes.lock().unwrap().push(c.clone());
    }
}

fn mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, n])
}

fn config() -> DhcpConfig {
    DhcpConfig::new(
        SERVER,
        "10.0.0.0/24".parse().unwrap(),
        Ipv4Addr::new(10, 0, 0, 100),
        Ipv4Addr::new(10, 0, 0, 103),
        "http://10.0.0.1:8080".into(),
    )
}

fn server(policy: Policy) -> (DhcpServer, Arc<Policy>) {
    let p = Arc::new(policy);
    (DhcpServer::new(config(), p.clone(), []).unwrap(), p)
}

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

/// The kinds of client we meet.
#[derive(Clone, Copy)]
enum Client {
    Bios,
    Uefi(u16),
    Ipxe,
    Plain,
}

fn packet(m: MacAddr, ty: MessageType, client: Client, f: impl FnOnce(&mut Message)) -> Vec<u8> {
    let mut msg = Message::new_with_id(
        0x1234_5678,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &m.0,
    );
    msg.set_flags(Flags::default().set_broadcast());
    let o = msg.opts_mut();
    o.insert(DhcpOption::MessageType(ty));
    match client {
        Client::Bios => {
            o.insert(DhcpOption::ClassIdentifier(
                b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
            ));
            o.insert(DhcpOption::ClientSystemArchitecture(Architecture(0)));
            o.insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
        }
        Client::Uefi(a) => {
            o.insert(DhcpOption::ClassIdentifier(
                b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
            ));
            o.insert(DhcpOption::ClientSystemArchitecture(Architecture(a)));
        }
        Client::Ipxe => {
            o.insert(DhcpOption::ClassIdentifier(
                b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
            ));
            o.insert(DhcpOption::ClientSystemArchitecture(Architecture(0)));
            o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        }
        Client::Plain => {}
    }
    f(&mut msg);
    msg.to_vec().unwrap()
}

fn decode(r: &Reply) -> Message {
    assert!(r.bytes.len() >= 300, "reply shorter than BOOTP's 300 bytes");
    Message::decode(&mut Decoder::new(&r.bytes)).unwrap()
}

fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
    m.opts().get(code)
}

/// The BOOTP `file` field up to its NUL.
fn file_field(m: &Message) -> Option<&[u8]> {
    m.fname().map(|f| f.split(|&b| b == 0).next().unwrap())
}

fn bootfile(m: &Message) -> Option<String> {
    match opt(m, OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(b)) => Some(String::from_utf8(b.clone()).unwrap()),
        _ => None,
    }
}

/// DISCOVER → OFFER → REQUEST → ACK; returns (offer, ack).
fn dora(s: &mut DhcpServer, m: MacAddr, client: Client, now: SystemTime) -> (Message, Message) {
    let offer = s
        .handle(&packet(m, MessageType::Discover, client, |_| {}), now)
        .unwrap()
        .expect("an OFFER");
    assert_eq!(offer.message_type, MessageType::Offer);
    assert_eq!(offer.to, Destination::Broadcast);
    let offer = decode(&offer);
    let ack = s
        .handle(
            &packet(m, MessageType::Request, client, |msg| {
                msg.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
                msg.opts_mut()
                    .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
            }),
            now,
        )
        .unwrap()
        .expect("an ACK");
    assert_eq!(ack.message_type, MessageType::Ack);
    (offer, decode(&ack))
}

fn known(macs: &[u8]) -> Policy {
    Policy {
        known: macs.iter().map(|n| (mac(*n), None)).collect(),
        ..Policy::default()
    }
}

#[test]
fn bios_pxe_gets_undionly_over_tftp() {
    let (mut s, p) = server(known(&[1]));
    let (offer, ack) = dora(&mut s, mac(1), Client::Bios, t(0));
    for m in [&offer, &ack] {
        assert_eq!(m.opcode(), Opcode::BootReply);
        assert_eq!(m.xid(), 0x1234_5678);
        assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(m.siaddr(), SERVER, "next-server");
        assert_eq!(file_field(m), Some(&b"undionly.kpxe"[..]));
        assert_eq!(bootfile(m).as_deref(), Some("undionly.kpxe"));
        assert_eq!(
            opt(m, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(
            opt(m, OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            opt(m, OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
        assert!(opt(m, OptionCode::Unknown(175)).is_none());
    }
    let changes = p.changes.lock().unwrap();
    assert_eq!(
        *changes,
        vec![LeaseChange::Bound(Lease {
            mac: mac(1),
            address: Ipv4Addr::new(10, 0, 0, 100),
            expires: 1_800_000_000 + 3600,
        })]
    );
    let seen = p.seen.lock().unwrap();
    assert_eq!(seen[0].arch, Some(0));
    assert!(!seen[0].ipxe);
    assert_eq!(
        seen[0].vendor_class.as_deref(),
        Some("PXEClient:Arch:00000:UNDI:002001")
    );
}

#[test]
fn uefi_pxe_gets_ipxe_efi() {
    for arch in [7, 9] {
        let (mut s, _) = server(known(&[1]));
        let (offer, _) = dora(&mut s, mac(1), Client::Uefi(arch), t(0));
        assert_eq!(bootfile(&offer).as_deref(), Some("ipxe.efi"), "arch {arch}");
    }
    // An architecture we have no binary for gets an address and no file.
    let (mut s, _) = server(known(&[1]));
    let (offer, _) = dora(&mut s, mac(1), Client::Uefi(11), t(0));
    assert_eq!(bootfile(&offer), None);
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 100));
}

#[test]
fn ipxe_gets_its_script_url_and_no_proxydhcp_wait() {
    let (mut s, _) = server(known(&[0x11]));
    let (offer, ack) = dora(&mut s, mac(0x11), Client::Ipxe, t(0));
    for m in [&offer, &ack] {
        let url = "http://10.0.0.1:8080/boot/52-54-00-00-00-11/boot.ipxe";
        assert_eq!(bootfile(m).as_deref(), Some(url));
        assert_eq!(file_field(m), Some(url.as_bytes()));
        match opt(m, OptionCode::Unknown(175)) {
            Some(DhcpOption::Unknown(u)) => assert_eq!(u.data(), &[176, 1, 1]),
            other => panic!("option 175: {other:?}"),
        }
    }
}

#[test]
fn a_plain_client_gets_an_address_only() {
    let (mut s, _) = server(known(&[1]));
    let (offer, ack) = dora(&mut s, mac(1), Client::Plain, t(0));
    assert_eq!(bootfile(&offer), None);
    assert_eq!(ack.yiaddr(), Ipv4Addr::new(10, 0, 0, 100));
}

#[test]
fn only_known_or_enrolling_macs_are_answered() {
    let (mut s, _) = server(known(&[1]));
    let discover = packet(mac(2), MessageType::Discover, Client::Bios, |_| {});
    assert!(s.handle(&discover, t(0)).unwrap().is_none());

    let (mut s, _) = server(Policy {
        enroll_unknown: true,
        ..Policy::default()
    });
    let (offer, _) = dora(&mut s, mac(2), Client::Bios, t(0));
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 100));
}

#[test]
fn fixed_addresses_from_the_policy() {
    let fixed = Ipv4Addr::new(10, 0, 0, 11);
    let (mut s, _) = server(Policy {
        known: [(mac(1), Some(fixed))].into(),
        ..Policy::default()
    });
    let (offer, ack) = dora(&mut s, mac(1), Client::Bios, t(0));
    assert_eq!((offer.yiaddr(), ack.yiaddr()), (fixed, fixed));
    // Asking for another address is refused.
    let nak = s
        .handle(
            &packet(mac(1), MessageType::Request, Client::Plain, |m| {
                m.opts_mut()
                    .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 100)));
            }),
            t(1),
        )
        .unwrap()
        .unwrap();
    assert_eq!(nak.message_type, MessageType::Nak);

    let (mut s, _) = server(Policy {
        known: [(mac(1), Some(Ipv4Addr::new(10, 9, 9, 9)))].into(),
        ..Policy::default()
    });
    let err = s
        .handle(
            &packet(mac(1), MessageType::Discover, Client::Bios, |_| {}),
            t(0),
        )
        .unwrap_err();
    assert!(
        matches!(err, DhcpError::FixedAddressOutsideSubnet { .. }),
        "{err}"
    );
}

#[test]
fn choosing_another_server_withdraws_our_offer() {
    let (mut s, _) = server(known(&[1, 2]));
    let offer = s
        .handle(
            &packet(mac(1), MessageType::Discover, Client::Bios, |_| {}),
            t(0),
        )
        .unwrap()
        .unwrap();
    let a = decode(&offer).yiaddr();
    let other = s
        .handle(
            &packet(mac(1), MessageType::Request, Client::Bios, |m| {
                m.opts_mut()
                    .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 2)));
                m.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
            }),
            t(1),
        )
        .unwrap();
    assert!(other.is_none());
    // The address is free again at once, not after the offer hold.
    let (offer2, _) = dora(&mut s, mac(2), Client::Bios, t(2));
    assert_eq!(offer2.yiaddr(), a);
}

#[test]
fn an_offer_holds_its_address_and_expires() {
    let (mut s, _) = server(known(&[1, 2]));
    let o1 = s
        .handle(
            &packet(mac(1), MessageType::Discover, Client::Bios, |_| {}),
            t(0),
        )
        .unwrap()
        .unwrap();
    let o2 = s
        .handle(
            &packet(mac(2), MessageType::Discover, Client::Bios, |_| {}),
            t(1),
        )
        .unwrap()
        .unwrap();
    assert_ne!(decode(&o1).yiaddr(), decode(&o2).yiaddr());
    // After the 30 s hold, mac 1's offer is gone; mac 2's new DISCOVER
    // still gets its own offered address back.
    let o2b = s
        .handle(
            &packet(mac(2), MessageType::Discover, Client::Bios, |_| {}),
            t(100),
        )
        .unwrap()
        .unwrap();
    assert_eq!(decode(&o2).yiaddr(), decode(&o2b).yiaddr());
}

#[test]
fn renew_release_and_reuse() {
    let (mut s, p) = server(known(&[1, 2]));
    let (_, ack) = dora(&mut s, mac(1), Client::Plain, t(0));
    let a = ack.yiaddr();
    // RENEWING: ciaddr set, no option 50 or 54; the reply is unicast.
    let renew = s
        .handle(
            &packet(mac(1), MessageType::Request, Client::Plain, |m| {
                m.set_ciaddr(a);
                m.set_flags(Flags::default());
            }),
            t(1800),
        )
        .unwrap()
        .unwrap();
    assert_eq!(renew.message_type, MessageType::Ack);
    assert_eq!(renew.to, Destination::Unicast(a));
    assert_eq!(
        s.leases()
            .bound(mac(1), 1_800_000_000 + 1800)
            .unwrap()
            .expires,
        1_800_000_000 + 5400
    );
    // Another MAC asking for that address is refused.
    let nak = s
        .handle(
            &packet(mac(2), MessageType::Request, Client::Plain, |m| {
                m.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
            }),
            t(1801),
        )
        .unwrap()
        .unwrap();
    assert_eq!(nak.message_type, MessageType::Nak);
    assert_eq!(nak.to, Destination::Broadcast);
    // RELEASE frees it.
    s.handle(
        &packet(mac(1), MessageType::Release, Client::Plain, |m| {
            m.set_ciaddr(a);
            m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        }),
        t(1802),
    )
    .unwrap();
    assert!(
        matches!(p.changes.lock().unwrap().last(), Some(LeaseChange::Released(l)) if l.address == a)
    );
    let (offer, _) = dora(&mut s, mac(2), Client::Plain, t(1803));
    assert_eq!(offer.yiaddr(), a);
}

#[test]
fn a_declined_address_leaves_the_pool() {
    let (mut s, p) = server(known(&[1]));
    let (_, ack) = dora(&mut s, mac(1), Client::Plain, t(0));
    let a = ack.yiaddr();
    s.handle(
        &packet(mac(1), MessageType::Decline, Client::Plain, |m| {
            m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
        }),
        t(1),
    )
    .unwrap();
    assert_eq!(
        p.changes.lock().unwrap().last(),
        Some(&LeaseChange::Declined {
            mac: mac(1),
            address: a
        })
    );
    let (offer, _) = dora(&mut s, mac(1), Client::Plain, t(2));
    assert_ne!(offer.yiaddr(), a);
}

#[test]
fn pool_exhaustion_is_an_error_naming_the_mac() {
    let (mut s, _) = server(known(&[1, 2, 3, 4, 5]));
    for n in 1..=4 {
        dora(&mut s, mac(n), Client::Plain, t(0));
    }
    let err = s
        .handle(
            &packet(mac(5), MessageType::Discover, Client::Plain, |_| {}),
            t(0),
        )
        .unwrap_err();
    assert!(
        matches!(err, DhcpError::PoolExhausted { mac: m } if m == mac(5)),
        "{err}"
    );
}

#[test]
fn persisted_leases_are_honoured_after_a_restart() {
    let p = Arc::new(known(&[1, 2]));
    let kept = Lease {
        mac: mac(2),
        address: Ipv4Addr::new(10, 0, 0, 100),
        expires: 1_800_000_000 + 3600,
    };
    let mut s = DhcpServer::new(config(), p, [kept]).unwrap();
    let (o1, _) = dora(&mut s, mac(1), Client::Plain, t(0));
    assert_ne!(o1.yiaddr(), kept.address);
    let (o2, _) = dora(&mut s, mac(2), Client::Plain, t(0));
    assert_eq!(o2.yiaddr(), kept.address);
}

#[test]
fn relayed_requests_are_answered_to_the_relay() {
    let (mut s, _) = server(known(&[1]));
    let relay = Ipv4Addr::new(10, 0, 0, 254);
    let r = s
        .handle(
            &packet(mac(1), MessageType::Discover, Client::Bios, |m| {
                m.set_giaddr(relay);
            }),
            t(0),
        )
        .unwrap()
        .unwrap();
    assert_eq!(r.to, Destination::Relay(relay));
    assert_eq!(decode(&r).giaddr(), relay);
}

#[test]
fn malformed_packets_are_refused_without_panicking() {
    let (mut s, _) = server(known(&[1]));
    // The inputs dhcproto 0.15 panics on: option 94 with len != 3, option
    // 81 with len < 3.
    let base = packet(mac(1), MessageType::Discover, Client::Plain, |_| {});
    for (bad, code) in [
        (&[94u8, 2, 1, 2][..], 94u8),
        (&[94, 4, 1, 2, 3, 4], 94),
        (&[81, 1, 0], 81),
        (&[81, 2, 0, 0], 81),
        (&[153, 2, 0, 0], 153),
    ] {
        let mut p = base.clone();
        // Insert right after the magic cookie, before the message type.
        p.splice(240..240, bad.iter().copied());
        match s.handle(&p, t(0)) {
            Err(DhcpError::BadOptionLength { code: c, .. }) => assert_eq!(c, code),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert!(matches!(
        s.handle(&base[..100], t(0)),
        Err(DhcpError::Truncated { .. })
    ));
    let mut reply = base.clone();
    reply[0] = 2;
    assert!(matches!(
        s.handle(&reply, t(0)),
        Err(DhcpError::NotARequest { op: 2 })
    ));
    let mut no_type = packet(mac(1), MessageType::Discover, Client::Plain, |m| {
        m.opts_mut().remove(OptionCode::MessageType);
    });
    no_type.truncate(240);
    no_type.push(255);
    assert!(matches!(
        s.handle(&no_type, t(0)),
        Err(DhcpError::MissingMessageType)
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The guard stops everything the decoder would panic on: the
    /// catch_unwind behind it never fires.
    #[test]
    fn arbitrary_bytes_never_reach_a_decoder_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let (mut s, _) = server(Policy { enroll_unknown: true, ..Policy::default() });
        let r = s.handle(&bytes, t(0));
        prop_assert!(!matches!(r, Err(DhcpError::DecoderPanicked)));
    }

    #[test]
    fn mutated_discovers_never_reach_a_decoder_panic(
        client in 0..4usize,
        extra in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..8)), 0..6),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
    ) {
        let client = [Client::Bios, Client::Uefi(7), Client::Ipxe, Client::Plain][client];
        let mut p = packet(mac(1), MessageType::Discover, client, |_| {});
        // Options with arbitrary codes and lengths after the cookie.
        let mut opts = Vec::new();
        for (code, data) in extra {
            opts.push(code);
            opts.push(data.len() as u8);
            opts.extend(data);
        }
        p.splice(240..240, opts);
        for (i, b) in flips {
            let i = i.index(p.len());
            p[i] = b;
        }
        let (mut s, _) = server(Policy { enroll_unknown: true, ..Policy::default() });
        let r = s.handle(&p, t(0));
        prop_assert!(!matches!(r, Err(DhcpError::DecoderPanicked)));
    }

    /// Whatever clients do, no address is bound to two MACs at once, every
    /// address handed out is in the pool, and an ACK gives what was asked.
    #[test]
    fn leases_stay_consistent(ops in prop::collection::vec((0u8..6, 0u8..5, 0u8..6, 0u64..200), 1..60)) {
        let (mut s, _) = server(Policy { enroll_unknown: true, ..Policy::default() });
        let mut now = 0;
        for (who, what, addr, dt) in ops {
            now += dt;
            let m = mac(who);
            let a = Ipv4Addr::new(10, 0, 0, 98 + addr);
            let p = match what {
                0 => packet(m, MessageType::Discover, Client::Plain, |_| {}),
                1 => packet(m, MessageType::Request, Client::Plain, |msg| {
                    msg.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
                    msg.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
                }),
                2 => packet(m, MessageType::Request, Client::Plain, |msg| { msg.set_ciaddr(a); }),
                3 => packet(m, MessageType::Release, Client::Plain, |msg| { msg.set_ciaddr(a); }),
                _ => packet(m, MessageType::Decline, Client::Plain, |msg| {
                    msg.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
                }),
            };
            match s.handle(&p, t(now)) {
                Ok(Some(r)) => {
                    let msg = decode(&r);
                    if r.message_type != MessageType::Nak {
                        let y = msg.yiaddr();
                        prop_assert!(y >= Ipv4Addr::new(10, 0, 0, 100) && y <= Ipv4Addr::new(10, 0, 0, 103), "{y}");
                    }
                    if r.message_type == MessageType::Ack {
                        prop_assert_eq!(msg.yiaddr(), a);
                    }
                }
                Ok(None) | Err(DhcpError::PoolExhausted { .. }) => {}
                Err(e) => prop_assert!(false, "{}", e),
            }
            let bound = s.leases().bound_leases(1_800_000_000 + now);
            let addrs: HashSet<_> = bound.iter().map(|l| l.address).collect();
            prop_assert_eq!(addrs.len(), bound.len());
        }
    }
}
