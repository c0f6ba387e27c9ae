//! Telling the LAN that an address now lives on this machine. Addresses
//! that move between nodes — a disc's address when the disc moves to
//! another tail, a VM's console address when the VM moves to another
//! head — are added without duplicate address detection, and the kernel
//! announces nothing for them. Neighbours that cached the previous node's
//! MAC keep sending there until their cache entry goes stale (tens of
//! seconds; after a disc migration a head's NBD reconnect stalled ~65 s,
//! after a VM migration its SSH console timed out). So the node announces
//! the address itself:
//!
//! - IPv4: a gratuitous ARP (RFC 5227 §3, an ARP request with sender and
//!   target both the address), broadcast on an `AF_PACKET` socket;
//! - IPv6: an unsolicited neighbour advertisement with the override flag
//!   (RFC 4861 §7.2.6) to all nodes, on an ICMPv6 raw socket.
//!
//! Both need `CAP_NET_RAW`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};

/// An unsolicited neighbour advertisement (RFC 4861 4.4, 7.2.6) for
/// `target` at link-layer address `mac`: override flag set, not solicited,
/// not a router, with the target link-layer address option. The checksum
/// is left 0: the kernel fills it in on an ICMPv6 raw socket.
pub fn neighbour_advertisement(target: Ipv6Addr, mac: [u8; 6]) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0] = 136; // type: neighbour advertisement
    p[4] = 0x20; // flags: O (override)
    p[8..24].copy_from_slice(&target.octets());
    p[24] = 2; // option: target link-layer address
    p[25] = 1; // its length, in units of 8 bytes
    p[26..32].copy_from_slice(&mac);
    p
}

/// A gratuitous ARP for `addr` at `mac` as a whole Ethernet frame:
/// broadcast, an ARP request whose sender and target protocol addresses
/// are both `addr` (the form RFC 5227 §3 recommends; neighbours that have
/// an entry for `addr` update it, others ignore it).
pub fn gratuitous_arp(addr: Ipv4Addr, mac: [u8; 6]) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]); // to: broadcast
    f[6..12].copy_from_slice(&mac); // from
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP
    let arp = &mut f[14..];
    arp[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    arp[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    arp[4] = 6;
    arp[5] = 4;
    arp[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    arp[8..14].copy_from_slice(&mac); // sender hardware address
    arp[14..18].copy_from_slice(&addr.octets()); // sender protocol address
    // target hardware address: zero (unknown, as in any request)
    arp[24..28].copy_from_slice(&addr.octets()); // target protocol address
    f
}

/// `52:54:00:8e:02:01` → its 6 bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Announces `addr`, just added to interface `iface` (index `index`), to
/// that interface's LAN: [`gratuitous_arp`] or [`neighbour_advertisement`]
/// from the interface's MAC.
pub fn announce(iface: &str, index: u32, addr: IpAddr) -> std::io::Result<()> {
    let mac = interface_mac(iface)?;
    match addr {
        IpAddr::V4(v4) => send_frame(index, &gratuitous_arp(v4, mac)),
        IpAddr::V6(v6) => send_advertisement(index, v6, mac),
    }
}

/// An interface's MAC (`SIOCGIFHWADDR`), in the calling thread's network
/// namespace (which `/sys/class/net` need not show).
pub fn interface_mac(iface: &str) -> std::io::Result<[u8; 6]> {
    use std::os::fd::AsRawFd;
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{iface:?} is not an interface name"),
        ));
    }
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // SAFETY: an all-zero ifreq is valid; the name is NUL-terminated by
    // the zeroes after it (checked shorter than IFNAMSIZ above).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads the name and writes ifru_hwaddr of the
    // ifreq we own.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel filled in ifru_hwaddr.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data) {
        *m = d as u8;
    }
    Ok(mac)
}

/// Sends a whole Ethernet frame out of interface `index`.
fn send_frame(index: u32, frame: &[u8]) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    const ETH_P_ARP: u16 = 0x0806;
    let sock = Socket::new(
        Domain::PACKET,
        Type::RAW,
        Some(Protocol::from(i32::from(ETH_P_ARP.to_be()))),
    )?;
    // SAFETY: an all-zero sockaddr_ll is valid; the fields set below are
    // what packet(7) needs to send on an interface.
    let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = ETH_P_ARP.to_be();
    ll.sll_ifindex = index as i32;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&frame[0..6]);
    // SAFETY: `ll` is a sockaddr_ll, smaller than sockaddr_storage.
    let to = unsafe {
        SockAddr::try_init(|storage, len| {
            std::ptr::copy_nonoverlapping(
                (&ll as *const libc::sockaddr_ll).cast::<u8>(),
                storage.cast::<u8>(),
                std::mem::size_of::<libc::sockaddr_ll>(),
            );
            *len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            Ok(())
        })
    }?
    .1;
    sock.send_to(frame, &to)?;
    Ok(())
}

/// Sends [`neighbour_advertisement`] for `addr` to all nodes (ff02::1) on
/// interface `index`, from `addr`, hop limit 255.
fn send_advertisement(index: u32, addr: Ipv6Addr, mac: [u8; 6]) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    sock.set_multicast_hops_v6(255)?;
    sock.set_multicast_if_v6(index)?;
    sock.bind(&SockAddr::from(SocketAddrV6::new(addr, 0, 0, 0)))?;
    let all_nodes = SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, index);
    sock.send_to(
        &neighbour_advertisement(addr, mac),
        &SockAddr::from(all_nodes),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_neighbour_advertisement_overrides_and_names_our_mac() {
        let mac = parse_mac("52:54:00:8e:02:01").unwrap();
        assert_eq!(mac, [0x52, 0x54, 0, 0x8e, 2, 1]);
        assert_eq!(parse_mac("52:54:00:8e:02"), None);
        assert_eq!(parse_mac("52:54:00:8e:02:01:07"), None);
        let target: Ipv6Addr = "fd00:5::1".parse().unwrap();
        let p = neighbour_advertisement(target, mac);
        assert_eq!(p[0], 136, "type");
        assert_eq!(p[1], 0, "code");
        assert_eq!(p[4], 0x20, "override only: not a router, not solicited");
        assert_eq!(&p[8..24], &target.octets());
        assert_eq!(&p[24..26], &[2, 1], "target link-layer address, 8 bytes");
        assert_eq!(&p[26..], &mac);
    }

    #[test]
    fn a_gratuitous_arp_is_a_broadcast_request_for_our_own_address() {
        let mac = [0x52, 0x54, 0, 0x8e, 1, 1];
        let addr = Ipv4Addr::new(10, 0, 0, 226);
        let f = gratuitous_arp(addr, mac);
        assert_eq!(&f[0..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06], "ARP");
        assert_eq!(
            &f[14..22],
            &[0, 1, 8, 0, 6, 4, 0, 1],
            "Ethernet/IPv4 request"
        );
        assert_eq!(&f[22..28], &mac, "sender MAC");
        assert_eq!(&f[28..32], &addr.octets(), "sender IP");
        assert_eq!(&f[32..38], &[0; 6], "target MAC unknown");
        assert_eq!(&f[38..42], &addr.octets(), "target IP: the same");
    }
}
