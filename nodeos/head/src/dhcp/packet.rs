//! The DHCP logic of one NIC's responder: a DHCP payload in, at most one
//! reply out. No state: a VM has exactly one address, so DISCOVER always
//! gets it offered and REQUEST is acknowledged exactly when it asks for it.

use std::net::Ipv4Addr;

use bigv_pxe::MacAddr;
use bigv_pxe::dhcp::guard;
use dhcproto::Encodable;
use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};

use super::NicLease;

/// BOOTP's minimum message size; some clients drop shorter replies.
const MIN_REPLY_LEN: usize = 300;

/// Where a reply goes (RFC 2131 §4.1, no relay agents on a tap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// IPv4 and Ethernet broadcast: a NAK, or a client that set the
    /// BROADCAST flag and has no address yet.
    Broadcast,
    /// IPv4 unicast to this address, Ethernet unicast to the client's MAC:
    /// its `ciaddr` when it has one, else the address offered.
    Unicast(Ipv4Addr),
}

/// An encoded reply and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message_type: MessageType,
    pub to: Destination,
    /// The DHCP message (UDP payload), at least 300 bytes.
    pub bytes: Vec<u8>,
}

/// Why a packet got no reply. Logged at debug level (a `Declined` at warn).
#[derive(Debug, thiserror::Error)]
pub enum Ignored {
    #[error("malformed DHCP packet")]
    Malformed(#[source] bigv_pxe::dhcp::DhcpError),
    #[error("not an Ethernet BOOTREQUEST (op {op}, htype {htype}, hlen {hlen})")]
    NotEthernetRequest { op: u8, htype: u8, hlen: u8 },
    #[error("from {mac}, not this NIC's MAC")]
    ForeignMac { mac: MacAddr },
    #[error("relayed (giaddr {giaddr}); a tap has no relay agents")]
    Relayed { giaddr: Ipv4Addr },
    #[error("no DHCP message type (option 53)")]
    NoMessageType,
    #[error("message type {0:?} needs no answer")]
    MessageType(MessageType),
    #[error("REQUEST for server {server}, not this one")]
    OtherServer { server: Ipv4Addr },
    #[error(
        "the client declined {}: something else on its network uses it",
        address.map_or_else(|| "its address".to_string(), |a| a.to_string())
    )]
    Declined { address: Option<Ipv4Addr> },
}

fn opt_addr(msg: &Message, code: OptionCode) -> Option<Ipv4Addr> {
    match msg.opts().get(code) {
        Some(DhcpOption::RequestedIpAddress(a) | DhcpOption::ServerIdentifier(a)) => Some(*a),
        _ => None,
    }
}

/// Answers one DHCP message (a UDP payload to port 67) for the NIC whose
/// lease is `lease`:
///
/// - DISCOVER → OFFER of `lease.address`;
/// - REQUEST naming `lease.address` (option 50, or `ciaddr` when renewing)
///   → ACK; naming another address, or none → NAK; naming another server
///   (option 54) → nothing (the client took someone else's offer);
/// - anything from another MAC, malformed (checked by the boot LAN's
///   guard before dhcproto sees it: dhcproto 0.15 panics on some option
///   lengths), relayed, or of another type → nothing.
pub fn answer(request: &[u8], lease: &NicLease) -> Result<Reply, Ignored> {
    let msg = guard::decode(request).map_err(Ignored::Malformed)?;
    if msg.opcode() != Opcode::BootRequest || msg.htype() != HType::Eth || msg.hlen() != 6 {
        return Err(Ignored::NotEthernetRequest {
            op: msg.opcode().into(),
            htype: msg.htype().into(),
            hlen: msg.hlen(),
        });
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&msg.chaddr()[..6]);
    if mac != lease.mac.0 {
        return Err(Ignored::ForeignMac { mac: MacAddr(mac) });
    }
    if !msg.giaddr().is_unspecified() {
        return Err(Ignored::Relayed {
            giaddr: msg.giaddr(),
        });
    }
    match msg.opts().msg_type().ok_or(Ignored::NoMessageType)? {
        MessageType::Discover => Ok(reply(&msg, lease, MessageType::Offer)),
        MessageType::Request => request_reply(&msg, lease),
        MessageType::Decline => Err(Ignored::Declined {
            address: opt_addr(&msg, OptionCode::RequestedIpAddress),
        }),
        other => Err(Ignored::MessageType(other)),
    }
}

fn request_reply(msg: &Message, lease: &NicLease) -> Result<Reply, Ignored> {
    if let Some(server) = opt_addr(msg, OptionCode::ServerIdentifier)
        && server != lease.server_id
    {
        return Err(Ignored::OtherServer { server });
    }
    // SELECTING and INIT-REBOOT name the address in option 50; RENEWING
    // and REBINDING in ciaddr.
    let wanted = opt_addr(msg, OptionCode::RequestedIpAddress)
        .or_else(|| Some(msg.ciaddr()).filter(|a| !a.is_unspecified()));
    match wanted {
        Some(a) if a == lease.address => Ok(reply(msg, lease, MessageType::Ack)),
        Some(a) => Ok(nak(
            msg,
            lease,
            &format!("{a} is not this interface's address"),
        )),
        None => Ok(nak(msg, lease, "the request names no address")),
    }
}

/// The reply's fixed part: BOOTREPLY, the client's xid, flags and chaddr,
/// message type and server identifier.
fn base(req: &Message, lease: &NicLease, ty: MessageType) -> Message {
    let mut m = Message::new_with_id(
        req.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &lease.mac.0,
    );
    m.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_flags(req.flags());
    m.opts_mut().insert(DhcpOption::MessageType(ty));
    m.opts_mut()
        .insert(DhcpOption::ServerIdentifier(lease.server_id));
    m
}

/// OFFER or ACK with the whole lease.
fn reply(req: &Message, lease: &NicLease, ty: MessageType) -> Reply {
    let mut m = base(req, lease, ty);
    if ty == MessageType::Ack {
        m.set_ciaddr(req.ciaddr());
    }
    m.set_yiaddr(lease.address);
    let opts = m.opts_mut();
    opts.insert(DhcpOption::AddressLeaseTime(lease.lease_secs));
    opts.insert(DhcpOption::Renewal(lease.lease_secs / 2));
    opts.insert(DhcpOption::Rebinding(lease.lease_secs / 8 * 7));
    opts.insert(DhcpOption::SubnetMask(lease.network.netmask()));
    opts.insert(DhcpOption::Router(vec![lease.router]));
    opts.insert(DhcpOption::Hostname(lease.hostname.clone()));
    if let Some(domain) = &lease.domain {
        opts.insert(DhcpOption::DomainName(domain.clone()));
    }
    let to = if !req.ciaddr().is_unspecified() {
        Destination::Unicast(req.ciaddr())
    } else if req.flags().broadcast() {
        Destination::Broadcast
    } else {
        // We write Ethernet frames ourselves, so no ARP entry is needed to
        // reach a client that has no address yet.
        Destination::Unicast(lease.address)
    };
    Reply {
        message_type: ty,
        to,
        bytes: encode(&m),
    }
}

fn nak(req: &Message, lease: &NicLease, why: &str) -> Reply {
    let mut m = base(req, lease, MessageType::Nak);
    m.opts_mut().insert(DhcpOption::Message(why.to_string()));
    Reply {
        message_type: MessageType::Nak,
        to: Destination::Broadcast,
        bytes: encode(&m),
    }
}

fn encode(m: &Message) -> Vec<u8> {
    // Every field is checked (NicLease::from_nic) or fixed-size, so
    // encoding cannot fail.
    let mut bytes = m
        .to_vec()
        .expect("encoding a DHCP reply built from a checked lease");
    if bytes.len() < MIN_REPLY_LEN {
        bytes.resize(MIN_REPLY_LEN, 0);
    }
    bytes
}

#[cfg(test)]
pub(crate) mod tests {
    use dhcproto::v4::Flags;
    use dhcproto::{Decodable, Decoder};

    use super::*;
    use crate::dhcp::tests::nic;

    pub(crate) fn lease() -> NicLease {
        NicLease::from_nic(&nic()).unwrap().unwrap()
    }

    /// A client's message of type `ty` from `mac`.
    pub(crate) fn request(mac: [u8; 6], ty: MessageType, opts: &[DhcpOption]) -> Message {
        let mut m = Message::new_with_id(
            0x1234_5678,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        m.opts_mut().insert(DhcpOption::MessageType(ty));
        for o in opts {
            m.opts_mut().insert(o.clone());
        }
        m
    }

    const MAC: [u8; 6] = [0xfe, 0xff, 0, 0, 0, 1];

    fn ask(m: &Message) -> Result<(Reply, Message), Ignored> {
        let r = answer(&m.to_vec().unwrap(), &lease())?;
        let decoded = Message::decode(&mut Decoder::new(&r.bytes)).unwrap();
        Ok((r, decoded))
    }

    fn addr(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// The options an OFFER or ACK must carry, exactly.
    fn assert_lease_options(m: &Message, ty: MessageType) {
        let o = m.opts();
        assert_eq!(o.msg_type(), Some(ty));
        let expected = [
            DhcpOption::ServerIdentifier(addr("198.51.100.1")),
            DhcpOption::AddressLeaseTime(3600),
            DhcpOption::Renewal(1800),
            DhcpOption::Rebinding(3150),
            DhcpOption::SubnetMask(addr("255.255.255.128")),
            DhcpOption::Router(vec![addr("198.51.100.1")]),
            DhcpOption::Hostname("web1".into()),
            DhcpOption::DomainName("default.alice.bigv.test".into()),
        ];
        for e in &expected {
            assert_eq!(o.get(OptionCode::from(e)), Some(e));
        }
        // Those, plus the message type, and nothing else.
        assert_eq!(o.len(), expected.len() + 1, "{o:?}");
        assert_eq!(m.opcode(), Opcode::BootReply);
        assert_eq!(m.xid(), 0x1234_5678);
        assert_eq!(&m.chaddr()[..6], &MAC);
        assert_eq!(m.yiaddr(), addr("198.51.100.20"));
        assert_eq!(m.siaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(m.giaddr(), Ipv4Addr::UNSPECIFIED);
    }

    #[test]
    fn discover_gets_an_offer_of_exactly_the_configured_lease() {
        let (r, m) = ask(&request(MAC, MessageType::Discover, &[])).unwrap();
        assert_eq!(r.message_type, MessageType::Offer);
        assert!(r.bytes.len() >= 300);
        assert_lease_options(&m, MessageType::Offer);
        assert_eq!(m.ciaddr(), Ipv4Addr::UNSPECIFIED);
        // No BROADCAST flag, no ciaddr: unicast to the offered address.
        assert_eq!(r.to, Destination::Unicast(addr("198.51.100.20")));
        // Another requested address does not change the offer.
        let (_, m) = ask(&request(
            MAC,
            MessageType::Discover,
            &[DhcpOption::RequestedIpAddress(addr("198.51.100.99"))],
        ))
        .unwrap();
        assert_eq!(m.yiaddr(), addr("198.51.100.20"));
    }

    #[test]
    fn broadcast_flag_gets_a_broadcast_reply_with_the_flag_echoed() {
        let mut d = request(MAC, MessageType::Discover, &[]);
        d.set_flags(Flags::default().set_broadcast());
        let (r, m) = ask(&d).unwrap();
        assert_eq!(r.to, Destination::Broadcast);
        assert!(m.flags().broadcast());
    }

    #[test]
    fn request_for_the_address_gets_an_ack() {
        // SELECTING: server id and requested address.
        let sel = request(
            MAC,
            MessageType::Request,
            &[
                DhcpOption::ServerIdentifier(addr("198.51.100.1")),
                DhcpOption::RequestedIpAddress(addr("198.51.100.20")),
            ],
        );
        let (r, m) = ask(&sel).unwrap();
        assert_eq!(r.message_type, MessageType::Ack);
        assert_lease_options(&m, MessageType::Ack);
        assert_eq!(r.to, Destination::Unicast(addr("198.51.100.20")));
        // INIT-REBOOT: requested address only.
        let reboot = request(
            MAC,
            MessageType::Request,
            &[DhcpOption::RequestedIpAddress(addr("198.51.100.20"))],
        );
        assert_eq!(ask(&reboot).unwrap().0.message_type, MessageType::Ack);
        // RENEWING: ciaddr, answered to ciaddr and echoed.
        let mut renew = request(MAC, MessageType::Request, &[]);
        renew.set_ciaddr(addr("198.51.100.20"));
        let (r, m) = ask(&renew).unwrap();
        assert_eq!(r.message_type, MessageType::Ack);
        assert_eq!(r.to, Destination::Unicast(addr("198.51.100.20")));
        assert_eq!(m.ciaddr(), addr("198.51.100.20"));
    }

    #[test]
    fn request_for_another_address_gets_a_broadcast_nak() {
        for opts in [
            vec![DhcpOption::RequestedIpAddress(addr("198.51.100.21"))],
            vec![
                DhcpOption::ServerIdentifier(addr("198.51.100.1")),
                DhcpOption::RequestedIpAddress(addr("10.0.0.5")),
            ],
            vec![],
        ] {
            let (r, m) = ask(&request(MAC, MessageType::Request, &opts)).unwrap();
            assert_eq!(r.message_type, MessageType::Nak, "{opts:?}");
            assert_eq!(r.to, Destination::Broadcast);
            assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
            assert_eq!(
                m.opts().get(OptionCode::ServerIdentifier),
                Some(&DhcpOption::ServerIdentifier(addr("198.51.100.1")))
            );
            assert!(m.opts().get(OptionCode::AddressLeaseTime).is_none());
            assert!(m.opts().get(OptionCode::Router).is_none());
        }
        let mut renew = request(MAC, MessageType::Request, &[]);
        renew.set_ciaddr(addr("198.51.100.22"));
        let (r, m) = ask(&renew).unwrap();
        assert_eq!(r.message_type, MessageType::Nak);
        assert_eq!(
            m.opts().get(OptionCode::Message),
            Some(&DhcpOption::Message(
                "198.51.100.22 is not this interface's address".into()
            ))
        );
    }

    #[test]
    fn request_to_another_server_is_not_answered() {
        let r = ask(&request(
            MAC,
            MessageType::Request,
            &[
                DhcpOption::ServerIdentifier(addr("198.51.100.2")),
                DhcpOption::RequestedIpAddress(addr("198.51.100.20")),
            ],
        ));
        assert!(matches!(r, Err(Ignored::OtherServer { .. })), "{r:?}");
    }

    #[test]
    fn another_mac_gets_nothing() {
        for ty in [MessageType::Discover, MessageType::Request] {
            let m = request(
                [0xfe, 0xff, 0, 0, 0, 2],
                ty,
                &[DhcpOption::RequestedIpAddress(addr("198.51.100.20"))],
            );
            let r = ask(&m);
            assert!(matches!(r, Err(Ignored::ForeignMac { .. })), "{r:?}");
        }
    }

    #[test]
    fn other_messages_are_not_answered() {
        for ty in [
            MessageType::Release,
            MessageType::Inform,
            MessageType::Offer,
            MessageType::Ack,
        ] {
            let r = ask(&request(MAC, ty, &[]));
            assert!(
                matches!(r, Err(Ignored::MessageType(t)) if t == ty),
                "{r:?}"
            );
        }
        let r = ask(&request(
            MAC,
            MessageType::Decline,
            &[DhcpOption::RequestedIpAddress(addr("198.51.100.20"))],
        ));
        assert!(
            matches!(r, Err(Ignored::Declined { address: Some(_) })),
            "{r:?}"
        );
        let mut relayed = request(MAC, MessageType::Discover, &[]);
        relayed.set_giaddr(addr("10.1.1.1"));
        assert!(matches!(ask(&relayed), Err(Ignored::Relayed { .. })));
        let mut reply = request(MAC, MessageType::Discover, &[]);
        reply.set_opcode(Opcode::BootReply);
        assert!(matches!(
            ask(&reply),
            Err(Ignored::NotEthernetRequest { op: 2, .. })
        ));
        let mut no_type = request(MAC, MessageType::Discover, &[]);
        no_type.opts_mut().remove(OptionCode::MessageType);
        assert!(matches!(ask(&no_type), Err(Ignored::NoMessageType)));
    }

    #[test]
    fn garbage_is_dropped() {
        let l = lease();
        assert!(matches!(answer(&[], &l), Err(Ignored::Malformed(_))));
        assert!(matches!(answer(&[1; 100], &l), Err(Ignored::Malformed(_))));
        // A DISCOVER from the right MAC with option 94 of length 2: dhcproto
        // 0.15 panics on it unguarded.
        let mut p = request(MAC, MessageType::Discover, &[]).to_vec().unwrap();
        let end = p.iter().rposition(|&b| b == 255).unwrap();
        p.splice(end..end, [94, 2, 1, 2]);
        assert!(matches!(answer(&p, &l), Err(Ignored::Malformed(_))));
    }

    #[test]
    fn a_lease_without_domain_sends_no_option_15() {
        let mut l = lease();
        l.domain = None;
        let r = answer(
            &request(MAC, MessageType::Discover, &[]).to_vec().unwrap(),
            &l,
        )
        .unwrap();
        let m = Message::decode(&mut Decoder::new(&r.bytes)).unwrap();
        assert!(m.opts().get(OptionCode::DomainName).is_none());
        assert!(m.opts().get(OptionCode::Hostname).is_some());
    }
}
