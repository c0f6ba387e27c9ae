//! Ethernet II / IPv4 / UDP around the DHCP logic: the responder reads and
//! writes whole frames on the tap (`AF_PACKET`, `SOCK_RAW`), because the tap
//! has no IP address and the client none yet.

use std::net::Ipv4Addr;

use bigv_pxe::MacAddr;
use dhcproto::v4::MessageType;

use super::NicLease;
use super::packet::{Destination, Ignored, answer};

pub(crate) const ETH_HEADER: usize = 14;
pub(crate) const ETHERTYPE_IPV4: u16 = 0x0800;
const IPV4_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
pub(crate) const SERVER_PORT: u16 = 67;
pub(crate) const CLIENT_PORT: u16 = 68;

/// Why a frame got no reply.
#[derive(Debug, thiserror::Error)]
pub enum FrameIgnored {
    #[error("frame of {len} bytes is too short for Ethernet/IPv4/UDP")]
    Short { len: usize },
    #[error("ethertype {0:#06x} is not IPv4")]
    NotIpv4(u16),
    #[error("bad IPv4 header: {0}")]
    BadIpv4(&'static str),
    #[error("IPv4 protocol {0} is not UDP")]
    NotUdp(u8),
    #[error("UDP to port {0}, not 67")]
    NotToServerPort(u16),
    #[error("bad UDP header: {0}")]
    BadUdp(&'static str),
    #[error("Ethernet source {src} is not this NIC's MAC")]
    ForeignSource { src: MacAddr },
    #[error(transparent)]
    Dhcp(#[from] Ignored),
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The UDP payload of an Ethernet/IPv4/UDP frame to port 67, or why not.
fn udp_payload(frame: &[u8]) -> Result<&[u8], FrameIgnored> {
    let short = FrameIgnored::Short { len: frame.len() };
    if frame.len() < ETH_HEADER + IPV4_HEADER + UDP_HEADER {
        return Err(short);
    }
    let ethertype = be16(frame, 12);
    if ethertype != ETHERTYPE_IPV4 {
        return Err(FrameIgnored::NotIpv4(ethertype));
    }
    let ip = &frame[ETH_HEADER..];
    if ip[0] >> 4 != 4 {
        return Err(FrameIgnored::BadIpv4("version is not 4"));
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(ip, 2));
    if ihl < IPV4_HEADER || total < ihl + UDP_HEADER || total > ip.len() {
        return Err(FrameIgnored::BadIpv4("header or total length out of range"));
    }
    if be16(ip, 6) & 0x3fff != 0 {
        return Err(FrameIgnored::BadIpv4("fragment"));
    }
    if ip[9] != 17 {
        return Err(FrameIgnored::NotUdp(ip[9]));
    }
    let udp = &ip[ihl..total];
    let dport = be16(udp, 2);
    if dport != SERVER_PORT {
        return Err(FrameIgnored::NotToServerPort(dport));
    }
    let len = usize::from(be16(udp, 4));
    if len < UDP_HEADER || len > udp.len() {
        return Err(FrameIgnored::BadUdp("length out of range"));
    }
    Ok(&udp[UDP_HEADER..len])
}

/// The one's-complement sum of `data` as 16-bit words, folded.
fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// An Ethernet/IPv4/UDP frame from `src` (server port) to `dst` (client
/// port) carrying `payload`, with both checksums.
fn build(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = UDP_HEADER + payload.len();
    let ip_len = IPV4_HEADER + udp_len;
    let mut f = Vec::with_capacity(ETH_HEADER + ip_len);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    // IPv4: version 4, IHL 5, no DSCP, id 0, no fragmentation, TTL 64, UDP.
    let ip_at = f.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(ip_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let ip_sum = !(sum16(0, &f[ip_at..ip_at + IPV4_HEADER]) as u16);
    f[ip_at + 10..ip_at + 12].copy_from_slice(&ip_sum.to_be_bytes());
    let udp_at = f.len();
    f.extend_from_slice(&SERVER_PORT.to_be_bytes());
    f.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    // UDP checksum over the pseudo-header (addresses, protocol, length).
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 17;
    pseudo[10..].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let udp_sum = match !(sum16(sum16(0, &pseudo), &f[udp_at..]) as u16) {
        0 => 0xffff, // 0 means "no checksum" in UDP over IPv4
        s => s,
    };
    f[udp_at + 6..udp_at + 8].copy_from_slice(&udp_sum.to_be_bytes());
    f
}

/// A reply frame and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameReply {
    pub message_type: MessageType,
    pub to: Destination,
    /// Ethernet/IPv4/UDP, ready to write on the tap.
    pub frame: Vec<u8>,
}

/// Answers one Ethernet frame received on the tap: the reply frame to write
/// back on it, sent from `server_mac` (the tap's own address), or why none.
/// A frame whose Ethernet source is not the NIC's MAC is ignored even when
/// its `chaddr` is.
pub fn answer_frame(
    frame: &[u8],
    lease: &NicLease,
    server_mac: [u8; 6],
) -> Result<FrameReply, FrameIgnored> {
    let payload = udp_payload(frame)?;
    let mut src = [0u8; 6];
    src.copy_from_slice(&frame[6..12]);
    if src != lease.mac.0 {
        return Err(FrameIgnored::ForeignSource { src: MacAddr(src) });
    }
    let reply = answer(payload, lease)?;
    let (eth_dst, ip_dst) = match reply.to {
        Destination::Broadcast => ([0xff; 6], Ipv4Addr::BROADCAST),
        Destination::Unicast(a) => (lease.mac.0, a),
    };
    Ok(FrameReply {
        message_type: reply.message_type,
        to: reply.to,
        frame: build(eth_dst, server_mac, lease.server_id, ip_dst, &reply.bytes),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use dhcproto::v4::{DhcpOption, Flags, Message};
    use dhcproto::{Decodable, Decoder, Encodable};
    use proptest::prelude::*;

    use super::*;
    use crate::dhcp::packet::tests::{lease, request};

    const MAC: [u8; 6] = [0xfe, 0xff, 0, 0, 0, 1];
    const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];

    /// A client's frame: from 0.0.0.0:68 to 255.255.255.255:67, broadcast.
    pub(crate) fn client_frame(eth_src: [u8; 6], dhcp: &[u8]) -> Vec<u8> {
        let mut f = build(
            [0xff; 6],
            eth_src,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            dhcp,
        );
        // build() writes server→client ports; a client sends 68→67.
        f[34..36].copy_from_slice(&CLIENT_PORT.to_be_bytes());
        f[36..38].copy_from_slice(&SERVER_PORT.to_be_bytes());
        f
    }

    fn checksums_ok(f: &[u8]) -> bool {
        let ip = &f[ETH_HEADER..ETH_HEADER + IPV4_HEADER];
        let udp = &f[ETH_HEADER + IPV4_HEADER..];
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&ip[12..20]);
        pseudo[9] = 17;
        pseudo[10..].copy_from_slice(&(udp.len() as u16).to_be_bytes());
        sum16(0, ip) == 0xffff && sum16(sum16(0, &pseudo), udp) == 0xffff
    }

    #[test]
    fn checksums_match_a_known_header() {
        // The example of the Wikipedia IPv4 checksum article.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(!(sum16(0, &h) as u16), 0xb861);
    }

    #[test]
    fn a_discover_frame_gets_a_unicast_offer_frame() {
        let d = request(MAC, MessageType::Discover, &[]).to_vec().unwrap();
        let reply = answer_frame(&client_frame(MAC, &d), &lease(), SERVER_MAC).unwrap();
        assert_eq!(reply.message_type, MessageType::Offer);
        let r = reply.frame;
        assert_eq!(&r[..6], &MAC, "Ethernet destination: the client");
        assert_eq!(&r[6..12], &SERVER_MAC);
        assert_eq!(be16(&r, 12), ETHERTYPE_IPV4);
        assert_eq!(&r[26..30], &[198, 51, 100, 1], "IPv4 source: the server id");
        assert_eq!(&r[30..34], &[198, 51, 100, 20], "IPv4 destination: yiaddr");
        assert_eq!(be16(&r, 34), 67);
        assert_eq!(be16(&r, 36), 68);
        assert!(checksums_ok(&r));
        let m = Message::decode(&mut Decoder::new(udp_payload_of_reply(&r))).unwrap();
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    }

    fn udp_payload_of_reply(r: &[u8]) -> &[u8] {
        &r[ETH_HEADER + IPV4_HEADER + UDP_HEADER..]
    }

    /// The reply frame to `m` sent from the NIC's MAC.
    fn reply_frame(m: &Message) -> Vec<u8> {
        let f = client_frame(MAC, &m.to_vec().unwrap());
        answer_frame(&f, &lease(), SERVER_MAC).unwrap().frame
    }

    #[test]
    fn broadcast_flag_and_nak_go_to_broadcast() {
        let mut d = request(MAC, MessageType::Discover, &[]);
        d.set_flags(Flags::default().set_broadcast());
        let nak = request(
            MAC,
            MessageType::Request,
            &[DhcpOption::RequestedIpAddress([10, 0, 0, 1].into())],
        );
        for (m, ty) in [(d, MessageType::Offer), (nak, MessageType::Nak)] {
            let r = reply_frame(&m);
            assert_eq!(&r[..6], &[0xff; 6]);
            assert_eq!(&r[30..34], &[255; 4]);
            assert!(checksums_ok(&r));
            let m = Message::decode(&mut Decoder::new(udp_payload_of_reply(&r))).unwrap();
            assert_eq!(m.opts().msg_type(), Some(ty));
        }
    }

    #[test]
    fn a_frame_from_another_source_mac_gets_nothing_even_with_our_chaddr() {
        let d = request(MAC, MessageType::Discover, &[]).to_vec().unwrap();
        let r = answer_frame(
            &client_frame([0xfe, 0xff, 0, 0, 0, 2], &d),
            &lease(),
            SERVER_MAC,
        );
        assert!(
            matches!(r, Err(FrameIgnored::ForeignSource { .. })),
            "{r:?}"
        );
        let other = request([0xfe, 0xff, 0, 0, 0, 2], MessageType::Discover, &[])
            .to_vec()
            .unwrap();
        let r = answer_frame(&client_frame(MAC, &other), &lease(), SERVER_MAC);
        assert!(
            matches!(r, Err(FrameIgnored::Dhcp(Ignored::ForeignMac { .. }))),
            "{r:?}"
        );
    }

    #[test]
    fn broken_frames_are_dropped() {
        let d = request(MAC, MessageType::Discover, &[]).to_vec().unwrap();
        let good = client_frame(MAC, &d);
        let l = lease();
        let mut cases: Vec<(Vec<u8>, &str)> = vec![(good[..40].to_vec(), "truncated")];
        let mut f = good.clone();
        f[12] = 0x86;
        cases.push((f, "ethertype"));
        let mut f = good.clone();
        f[14] = 0x65;
        cases.push((f, "version"));
        let mut f = good.clone();
        f[14] = 0x4f; // IHL 60 bytes
        cases.push((f, "ihl"));
        let mut f = good.clone();
        f[16..18].copy_from_slice(&u16::MAX.to_be_bytes());
        cases.push((f, "total length"));
        let mut f = good.clone();
        f[20] = 0x20; // more fragments
        cases.push((f, "fragment"));
        let mut f = good.clone();
        f[23] = 6;
        cases.push((f, "tcp"));
        let mut f = good.clone();
        f[36..38].copy_from_slice(&68u16.to_be_bytes());
        cases.push((f, "port"));
        let mut f = good.clone();
        f[38..40].copy_from_slice(&4u16.to_be_bytes());
        cases.push((f, "udp length"));
        for (f, what) in cases {
            assert!(answer_frame(&f, &l, SERVER_MAC).is_err(), "{what}");
        }
        assert!(answer_frame(&good, &l, SERVER_MAC).is_ok());
    }

    /// What every reply must satisfy: for the NIC's MAC only, from the
    /// server's MAC and address, to the client's port.
    fn reply_is_for_our_nic(r: &FrameReply, lease: &NicLease) -> Result<(), String> {
        let f = &r.frame;
        if f[..6] != lease.mac.0 && f[..6] != [0xff; 6] {
            return Err(format!("Ethernet destination {:02x?}", &f[..6]));
        }
        if f[6..12] != SERVER_MAC || f[26..30] != lease.server_id.octets() {
            return Err("source".into());
        }
        let m = Message::decode(&mut Decoder::new(udp_payload_of_reply(f)))
            .map_err(|e| e.to_string())?;
        if m.chaddr()[..6] != lease.mac.0 {
            return Err(format!("chaddr {:02x?}", &m.chaddr()[..6]));
        }
        if !checksums_ok(f) {
            return Err("checksums".into());
        }
        Ok(())
    }

    /// A client frame from `eth_src` whose DHCP payload has `chaddr`,
    /// message type `ty` and then `opts` as raw bytes (any code, any
    /// length byte), with `flips` applied to the DHCP payload.
    fn fuzzed_frame(
        eth_src: [u8; 6],
        chaddr: [u8; 6],
        ty: u8,
        opts: &[(u8, u8, Vec<u8>)],
        flips: &[(prop::sample::Index, u8)],
    ) -> Vec<u8> {
        let mut p = request(chaddr, MessageType::Discover, &[])
            .to_vec()
            .unwrap();
        // Options start after the cookie with 53 (message type).
        assert_eq!(&p[240..243], &[53, 1, 1]);
        p[242] = ty;
        let mut raw = Vec::new();
        for (code, len, body) in opts {
            raw.push(*code);
            raw.push(*len);
            raw.extend_from_slice(body);
        }
        p.splice(243..243, raw);
        for (at, byte) in flips {
            let i = at.index(p.len());
            p[i] = *byte;
        }
        client_frame(eth_src, &p)
    }

    fn mac_strategy() -> impl Strategy<Value = [u8; 6]> {
        prop_oneof![
            8 => Just(MAC),
            1 => Just([0xfe, 0xff, 0, 0, 0, 2]),
            1 => any::<[u8; 6]>(),
        ]
    }

    fn option_strategy() -> impl Strategy<Value = (u8, u8, Vec<u8>)> {
        // The codes the answer reads, the ones dhcproto 0.15 panics on, and
        // any other.
        let code = prop_oneof![
            prop::sample::select(vec![0u8, 255, 12, 15, 50, 53, 54, 61, 80, 81, 94, 152, 155]),
            any::<u8>()
        ];
        let any_option =
            (code, prop::collection::vec(any::<u8>(), 0..12)).prop_flat_map(|(code, body)| {
                let n = body.len() as u8;
                // Mostly the right length byte; sometimes a wrong one.
                (
                    Just(code),
                    prop_oneof![3 => Just(n), 1 => any::<u8>()],
                    Just(body),
                )
            });
        prop_oneof![
            4 => any_option,
            // The NIC's address as requested address, so REQUESTs get ACKed.
            1 => Just((50u8, 4u8, vec![198, 51, 100, 20])),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Arbitrary bytes never panic, and an answer is only ever for our
        /// NIC.
        #[test]
        fn arbitrary_frames_never_panic_nor_answer_another_nic(
            frame in prop::collection::vec(any::<u8>(), 0..700),
        ) {
            let l = lease();
            if let Ok(r) = answer_frame(&frame, &l, SERVER_MAC) {
                prop_assert_eq!(&frame[6..12], &MAC);
                reply_is_for_our_nic(&r, &l).map_err(TestCaseError::fail)?;
            }
        }

        /// Well-framed DHCP with fuzzed options, types, MACs and bytes: no
        /// panic, the decoder's own panics are never reached (the guard
        /// stops those packets first), and only the NIC's MAC — as both
        /// Ethernet source and chaddr — is ever answered.
        #[test]
        fn fuzzed_dhcp_never_panics_nor_answers_another_mac(
            eth_src in mac_strategy(),
            chaddr in mac_strategy(),
            ty in prop_oneof![4 => 1u8..=8, 1 => any::<u8>()],
            opts in prop::collection::vec(option_strategy(), 0..6),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let l = lease();
            let frame = fuzzed_frame(eth_src, chaddr, ty, &opts, &flips);
            match answer_frame(&frame, &l, SERVER_MAC) {
                Ok(r) => {
                    prop_assert_eq!(eth_src, MAC);
                    reply_is_for_our_nic(&r, &l).map_err(TestCaseError::fail)?;
                }
                Err(FrameIgnored::Dhcp(Ignored::Malformed(
                    bigv_pxe::dhcp::DhcpError::DecoderPanicked,
                ))) => prop_assert!(false, "the decoder panicked behind the guard"),
                Err(_) => {}
            }
        }
    }

    #[test]
    fn the_fuzzed_frames_do_reach_the_answer() {
        // Without fuzzing, the generator's frame is a DISCOVER that is
        // answered: the properties above test the answering path, not only
        // the early exits.
        let f = fuzzed_frame(MAC, MAC, 1, &[(12, 3, b"abc".to_vec())], &[]);
        let r = answer_frame(&f, &lease(), SERVER_MAC).unwrap();
        assert_eq!(r.message_type, MessageType::Offer);
        let f = fuzzed_frame(MAC, MAC, 1, &[(94, 2, vec![1, 2])], &[]);
        assert!(matches!(
            answer_frame(&f, &lease(), SERVER_MAC),
            Err(FrameIgnored::Dhcp(Ignored::Malformed(_)))
        ));
    }
}
