//! A small DHCPv4 client (RFC 2131) as a state machine without I/O:
//! DISCOVER → OFFER → REQUEST → ACK, then renewals. `net.rs` moves its
//! packets over a socket.
//!
//! Packets from the wire are untrusted. dhcproto 0.15 `debug_assert!`s
//! some option lengths and subtracts from others unchecked
//! (../shared/docs/deps.md §2), so nothing reaches its decoder unfiltered:
//! [`sanitise`] rebuilds the packet with only the options a client reads,
//! each length-checked, and the decode itself runs under `catch_unwind`
//! as a second line of defence.

use std::net::Ipv4Addr;
use std::panic::{AssertUnwindSafe, catch_unwind};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use crate::cmdline::Mac;

pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;
const HEADER_LEN: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// What the client got from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub server: Ipv4Addr,
    /// Seconds; `u32::MAX` is "infinite".
    pub lease_secs: u32,
    pub dns: Vec<Ipv4Addr>,
    pub hostname: Option<String>,
}

impl Lease {
    /// When to renew (T1, half the lease; RFC 2131 §4.4.5), in seconds.
    pub fn renew_after_secs(&self) -> u64 {
        u64::from(self.lease_secs / 2).max(10)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Selecting,
    Requesting { offered: Lease },
    Bound(Lease),
    Renewing(Lease),
}

/// The outcome of one received packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Not for us, malformed, or not expected now; keep waiting.
    Ignored(String),
    /// An offer was taken; send this REQUEST.
    Request(Vec<u8>),
    /// The server acknowledged: configure the address.
    Bound(Lease),
    /// The server refused; start over with a DISCOVER.
    Nak,
}

#[derive(Debug, Clone)]
pub struct Client {
    mac: Mac,
    xid: u32,
    state: State,
}

#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("{len} bytes is too short for DHCP")]
    Short { len: usize },
    #[error("no DHCP magic cookie")]
    NoCookie,
    #[error("option {code} runs past the end of the packet")]
    Overrun { code: u8 },
    #[error("option {code} has a bad length {len}")]
    BadLength { code: u8, len: usize },
    #[error("option {code} appears twice")]
    Duplicate { code: u8 },
    #[error("dhcproto: {0}")]
    Decode(String),
    #[error("dhcproto panicked on a sanitised packet")]
    DecoderPanicked,
}

/// The options a client reads, with their allowed lengths.
fn allowed(code: u8, len: usize) -> Option<bool> {
    Some(match code {
        1 | 50 | 51 | 54 | 58 | 59 => len == 4, // mask, addresses, times
        3 | 6 => len >= 4 && len.is_multiple_of(4), // routers, DNS servers
        12 => (1..=63).contains(&len),          // host name
        53 => len == 1,                         // message type
        _ => return None,
    })
}

/// Rebuilds a received packet with only the options in [`allowed`], each
/// length-checked; anything else is dropped, so dhcproto never sees an
/// option it could trip over.
pub fn sanitise(packet: &[u8]) -> Result<Vec<u8>, PacketError> {
    if packet.len() < HEADER_LEN + MAGIC.len() {
        return Err(PacketError::Short { len: packet.len() });
    }
    if packet[HEADER_LEN..HEADER_LEN + 4] != MAGIC {
        return Err(PacketError::NoCookie);
    }
    let mut out = packet[..HEADER_LEN + 4].to_vec();
    let mut seen = [false; 256];
    let mut at = HEADER_LEN + 4;
    while let Some(&code) = packet.get(at) {
        match code {
            0 => {
                at += 1;
                continue;
            }
            255 => break,
            _ => {}
        }
        let len = usize::from(*packet.get(at + 1).ok_or(PacketError::Overrun { code })?);
        let body = packet
            .get(at + 2..at + 2 + len)
            .ok_or(PacketError::Overrun { code })?;
        at += 2 + len;
        match allowed(code, len) {
            None => continue,
            Some(false) => return Err(PacketError::BadLength { code, len }),
            Some(true) => {}
        }
        if std::mem::replace(&mut seen[usize::from(code)], true) {
            // A split long option (RFC 3396): none of ours are long.
            return Err(PacketError::Duplicate { code });
        }
        out.push(code);
        out.push(len as u8);
        out.extend_from_slice(body);
    }
    out.push(255);
    Ok(out)
}

/// Sanitises, then decodes with any decoder panic contained.
pub fn decode(packet: &[u8]) -> Result<Message, PacketError> {
    let clean = sanitise(packet)?;
    crate::fatal::quiet_panics(|| {
        catch_unwind(AssertUnwindSafe(|| {
            Message::decode(&mut Decoder::new(&clean))
        }))
    })
    .map_err(|_| PacketError::DecoderPanicked)?
    .map_err(|e| PacketError::Decode(e.to_string()))
}

fn encode(msg: &Message) -> Vec<u8> {
    let mut buf = Vec::with_capacity(300);
    // Encoding our own well-formed message into a Vec cannot fail.
    let _ = msg.encode(&mut Encoder::new(&mut buf));
    // Some servers ignore BOOTP-sized packets below 300 bytes.
    if buf.len() < 300 {
        buf.resize(300, 0);
    }
    buf
}

fn prefix_len(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    // A valid mask is ones then zeros.
    (bits.leading_ones() + bits.trailing_zeros() == 32).then(|| bits.leading_ones() as u8)
}

/// The default mask of an address's class, for servers that send none.
fn classful_prefix(addr: Ipv4Addr) -> u8 {
    match addr.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

impl Client {
    pub fn new(mac: Mac, xid: u32) -> Client {
        Client {
            mac,
            xid,
            state: State::Selecting,
        }
    }

    pub fn xid(&self) -> u32 {
        self.xid
    }

    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound(l) | State::Renewing(l) => Some(l),
            _ => None,
        }
    }

    fn base(&self, kind: MessageType, ciaddr: Ipv4Addr) -> Message {
        let any = Ipv4Addr::UNSPECIFIED;
        let mut msg = Message::new_with_id(self.xid, ciaddr, any, any, any, &self.mac.0);
        msg.set_opcode(Opcode::BootRequest);
        // Ask for broadcast replies: we have no address to receive
        // unicast on until the ACK is applied.
        if ciaddr.is_unspecified() {
            msg.set_flags(Flags::default().set_broadcast());
        }
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        let mut id = vec![1u8];
        id.extend_from_slice(&self.mac.0);
        opts.insert(DhcpOption::ClientIdentifier(id));
        opts.insert(DhcpOption::MaxMessageSize(1500));
        opts.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::Hostname,
            OptionCode::AddressLeaseTime,
        ]));
        msg
    }

    /// Starts (or restarts) from scratch: a DISCOVER with a new `xid`.
    pub fn discover(&mut self, xid: u32) -> Vec<u8> {
        self.xid = xid;
        self.state = State::Selecting;
        encode(&self.base(MessageType::Discover, Ipv4Addr::UNSPECIFIED))
    }

    fn request_for(&self, offered: &Lease) -> Vec<u8> {
        let mut msg = self.base(MessageType::Request, Ipv4Addr::UNSPECIFIED);
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::RequestedIpAddress(offered.address));
        opts.insert(DhcpOption::ServerIdentifier(offered.server));
        encode(&msg)
    }

    /// The REQUEST to send again while waiting for the ACK.
    pub fn pending_request(&self) -> Option<Vec<u8>> {
        match &self.state {
            State::Requesting { offered } => Some(self.request_for(offered)),
            _ => None,
        }
    }

    /// A renewal REQUEST (RENEWING: ciaddr set, no server id), to be
    /// sent to the server or broadcast; `None` unless bound.
    pub fn renew(&mut self, xid: u32) -> Option<Vec<u8>> {
        let lease = match &self.state {
            State::Bound(l) | State::Renewing(l) => l.clone(),
            _ => return None,
        };
        self.xid = xid;
        let msg = self.base(MessageType::Request, lease.address);
        self.state = State::Renewing(lease);
        Some(encode(&msg))
    }

    /// Feeds one received UDP payload to the state machine.
    pub fn handle(&mut self, packet: &[u8]) -> Event {
        let msg = match decode(packet) {
            Ok(m) => m,
            Err(e) => return Event::Ignored(e.to_string()),
        };
        if msg.opcode() != Opcode::BootReply {
            return Event::Ignored("not a reply".into());
        }
        if msg.xid() != self.xid {
            return Event::Ignored(format!("xid {:#x} is not ours", msg.xid()));
        }
        if msg.chaddr().get(..6) != Some(&self.mac.0[..]) {
            return Event::Ignored("for another MAC".into());
        }
        let Some(kind) = msg.opts().msg_type() else {
            return Event::Ignored("no message type".into());
        };
        match (&self.state, kind) {
            (State::Selecting, MessageType::Offer) => match lease_of(&msg) {
                Ok(offered) => {
                    let req = self.request_for(&offered);
                    self.state = State::Requesting { offered };
                    Event::Request(req)
                }
                Err(why) => Event::Ignored(why),
            },
            (State::Requesting { offered }, MessageType::Ack) => match lease_of(&msg) {
                Ok(lease) if lease.address == offered.address => {
                    self.state = State::Bound(lease.clone());
                    Event::Bound(lease)
                }
                Ok(lease) => Event::Ignored(format!(
                    "ACK for {} after an offer of {}",
                    lease.address, offered.address
                )),
                Err(why) => Event::Ignored(why),
            },
            (State::Renewing(old), MessageType::Ack) => match lease_of(&msg) {
                Ok(lease) if lease.address == old.address => {
                    self.state = State::Bound(lease.clone());
                    Event::Bound(lease)
                }
                Ok(_) | Err(_) => {
                    // A different address mid-life: safer to start over.
                    self.state = State::Selecting;
                    Event::Nak
                }
            },
            (State::Requesting { offered }, MessageType::Nak)
                if server_of(&msg).is_none_or(|s| s == offered.server) =>
            {
                self.state = State::Selecting;
                Event::Nak
            }
            (State::Renewing(_), MessageType::Nak) => {
                self.state = State::Selecting;
                Event::Nak
            }
            (_, kind) => Event::Ignored(format!("{kind:?} not expected now")),
        }
    }
}

fn server_of(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
        _ => None,
    }
}

fn lease_of(msg: &Message) -> Result<Lease, String> {
    let address = msg.yiaddr();
    if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
        return Err(format!("offered address {address} is unusable"));
    }
    let server = server_of(msg)
        .or_else(|| Some(msg.siaddr()).filter(|s| !s.is_unspecified()))
        .ok_or("no server identifier")?;
    let opts = msg.opts();
    let prefix_len = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => {
            prefix_len(*m).ok_or_else(|| format!("subnet mask {m} is not contiguous"))?
        }
        _ => classful_prefix(address),
    };
    let router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied().filter(|r| !r.is_unspecified()),
        _ => None,
    };
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => *t,
        _ => 3600,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    let hostname = match opts.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) if is_hostname(h) => Some(h.clone()),
        _ => None,
    };
    Ok(Lease {
        address,
        prefix_len,
        router,
        server,
        lease_secs,
        dns,
        hostname,
    })
}

/// A single DNS label: what we accept as a host name from the server.
pub fn is_hostname(h: &str) -> bool {
    (1..=63).contains(&h.len())
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const MINE: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    /// What a server (slirp, or our brain) would send back.
    fn reply(req: &[u8], kind: MessageType, yiaddr: Ipv4Addr, extra: &[DhcpOption]) -> Vec<u8> {
        let req = Message::decode(&mut Decoder::new(req)).unwrap();
        let any = Ipv4Addr::UNSPECIFIED;
        let mut msg = Message::new_with_id(req.xid(), any, yiaddr, SERVER, any, req.chaddr());
        msg.set_opcode(Opcode::BootReply);
        let o = msg.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(SERVER));
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        o.insert(DhcpOption::Router(vec![SERVER]));
        o.insert(DhcpOption::AddressLeaseTime(86400));
        o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            10, 0, 2, 3,
        )]));
        for e in extra {
            o.insert(e.clone());
        }
        let mut buf = Vec::new();
        msg.encode(&mut Encoder::new(&mut buf)).unwrap();
        buf
    }

    fn decoded(p: &[u8]) -> Message {
        Message::decode(&mut Decoder::new(p)).unwrap()
    }

    #[test]
    fn discover_offer_request_ack() {
        let mut c = Client::new(MAC, 1);
        let discover = c.discover(0xdead_beef);
        let d = decoded(&discover);
        assert_eq!(d.opts().msg_type(), Some(MessageType::Discover));
        assert!(
            d.flags().broadcast(),
            "no address yet: replies must be broadcast"
        );
        assert_eq!(&d.chaddr()[..6], &MAC.0);
        assert!(discover.len() >= 300);

        let offer = reply(&discover, MessageType::Offer, MINE, &[]);
        let Event::Request(req) = c.handle(&offer) else {
            panic!("offer not taken")
        };
        let r = decoded(&req);
        assert_eq!(r.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(r.xid(), 0xdead_beef);
        assert!(matches!(
            r.opts().get(OptionCode::RequestedIpAddress),
            Some(DhcpOption::RequestedIpAddress(a)) if *a == MINE
        ));
        assert!(matches!(
            r.opts().get(OptionCode::ServerIdentifier),
            Some(DhcpOption::ServerIdentifier(a)) if *a == SERVER
        ));
        assert_eq!(c.pending_request(), Some(req.clone()));

        // A second offer (another server) while requesting is ignored.
        assert!(matches!(c.handle(&offer), Event::Ignored(_)));

        let ack = reply(
            &req,
            MessageType::Ack,
            MINE,
            &[DhcpOption::Hostname("tail-7".into())],
        );
        let Event::Bound(lease) = c.handle(&ack) else {
            panic!("ack not taken")
        };
        assert_eq!(
            lease,
            Lease {
                address: MINE,
                prefix_len: 24,
                router: Some(SERVER),
                server: SERVER,
                lease_secs: 86400,
                dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
                hostname: Some("tail-7".into()),
            }
        );
        assert_eq!(lease.renew_after_secs(), 43200);
        assert_eq!(c.lease(), Some(&lease));

        // Renewal: ciaddr set, same address back.
        let renew = c.renew(7).unwrap();
        let rn = decoded(&renew);
        assert_eq!(rn.ciaddr(), MINE);
        assert!(rn.opts().get(OptionCode::ServerIdentifier).is_none());
        let ack2 = reply(&renew, MessageType::Ack, MINE, &[]);
        assert!(matches!(c.handle(&ack2), Event::Bound(_)));
    }

    #[test]
    fn nak_starts_over_and_strangers_are_ignored() {
        let mut c = Client::new(MAC, 1);
        let discover = c.discover(42);
        // Wrong xid, wrong MAC, a request echoed back, an ACK before any offer.
        let mut other = reply(&discover, MessageType::Offer, MINE, &[]);
        other[4] ^= 1;
        assert!(matches!(c.handle(&other), Event::Ignored(_)));
        let mut other_mac = reply(&discover, MessageType::Offer, MINE, &[]);
        other_mac[28] ^= 1;
        assert!(matches!(c.handle(&other_mac), Event::Ignored(_)));
        assert!(matches!(c.handle(&discover), Event::Ignored(_)));
        let early_ack = reply(&discover, MessageType::Ack, MINE, &[]);
        assert!(matches!(c.handle(&early_ack), Event::Ignored(_)));
        // An offer of 0.0.0.0 is not an offer.
        let zero = reply(&discover, MessageType::Offer, Ipv4Addr::UNSPECIFIED, &[]);
        assert!(matches!(c.handle(&zero), Event::Ignored(_)));

        let offer = reply(&discover, MessageType::Offer, MINE, &[]);
        let Event::Request(req) = c.handle(&offer) else {
            panic!()
        };
        let nak = reply(&req, MessageType::Nak, Ipv4Addr::UNSPECIFIED, &[]);
        assert_eq!(c.handle(&nak), Event::Nak);
        assert_eq!(c.pending_request(), None);
        assert_eq!(c.lease(), None);
    }

    #[test]
    fn dangerous_options_never_reach_the_decoder() {
        let mut c = Client::new(MAC, 1);
        let discover = c.discover(9);
        let offer = reply(&discover, MessageType::Offer, MINE, &[]);
        let end = offer.iter().rposition(|&b| b == 255).unwrap();
        // Options dhcproto would assert on (94 len 0, 81 len 1, 151 len 0,
        // 152 len 1), inserted before End: dropped, the offer still works.
        for evil in [
            &[94u8, 0][..],
            &[81, 1, 0],
            &[151, 0],
            &[152, 1, 0],
            &[80, 2, 0, 0],
        ] {
            let mut p = offer[..end].to_vec();
            p.extend_from_slice(evil);
            p.push(255);
            let clean = sanitise(&p).unwrap();
            assert!(clean.len() < p.len(), "{evil:?} was kept");
            let mut c2 = c.clone();
            assert!(matches!(c2.handle(&p), Event::Request(_)), "{evil:?}");
        }
        // A known option with a bad length refuses the packet.
        let mut p = offer[..end].to_vec();
        p.extend_from_slice(&[53, 2, 2, 2, 255]);
        assert!(matches!(
            sanitise(&p),
            Err(PacketError::BadLength { code: 53, .. })
        ));
        // An option running off the end.
        let mut p = offer[..end].to_vec();
        p.extend_from_slice(&[12, 40, b'x']);
        assert!(matches!(
            sanitise(&p),
            Err(PacketError::Overrun { code: 12 })
        ));
        assert!(matches!(
            sanitise(&offer[..100]),
            Err(PacketError::Short { .. })
        ));
    }

    #[test]
    fn masks_and_hostnames() {
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 254, 0)), Some(23));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(prefix_len(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert!(is_hostname("tail-01"));
        assert!(!is_hostname("a.b"));
        assert!(!is_hostname("-x"));
        assert!(!is_hostname(""));
    }

    proptest::proptest! {
        /// Whatever arrives, the client neither panics nor binds to a
        /// packet that is not a reply to its own request.
        #[test]
        fn arbitrary_packets_are_harmless(body in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut c = Client::new(MAC, 1);
            c.discover(5);
            let mut p = vec![0u8; 236];
            p.extend_from_slice(&MAGIC);
            p.extend_from_slice(&body);
            let _ = c.handle(&p);
            let _ = c.handle(&body);
            proptest::prop_assert!(c.lease().is_none());
        }

        /// A real offer with arbitrary options appended is either taken or
        /// ignored, never a panic.
        #[test]
        fn offers_with_random_options(extra in proptest::collection::vec(proptest::num::u8::ANY, 0..120)) {
            let mut c = Client::new(MAC, 1);
            let discover = c.discover(77);
            let offer = reply(&discover, MessageType::Offer, MINE, &[]);
            let end = offer.iter().rposition(|&b| b == 255).unwrap();
            let mut p = offer[..end].to_vec();
            p.extend_from_slice(&extra);
            p.push(255);
            let _ = c.handle(&p);
        }
    }
}
