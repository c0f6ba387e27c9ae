//! The responder's socket: `AF_PACKET`/`SOCK_RAW` bound to one interface,
//! with a classic BPF filter so the kernel hands it only IPv4 UDP to port
//! 67 (a guest's other traffic never reaches user space), and the loop
//! that answers frames until cancelled.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use bigv_spine::resource::NetworkInterface;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use super::frame::{FrameIgnored, answer_frame};
use super::packet::Ignored;
use super::{DhcpError, NicLease};

/// Largest frame read; DHCP requests are a few hundred bytes.
const RECV_BUF: usize = 2048;
/// How often a responder whose link is down looks whether its interface
/// has been deleted.
const GONE_CHECK: Duration = Duration::from_secs(1);

/// `ip and udp dst port 67 and not a fragment`, over Ethernet frames (what
/// `tcpdump -dd` gives for it, less its IPv6 branch).
const FILTER: [libc::sock_filter; 11] = {
    const fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
        libc::sock_filter { code, jt, jf, k }
    }
    [
        op(0x28, 0, 0, 12),              // ldh [12]            ethertype
        op(0x15, 0, 8, 0x0800),          // jeq IPv4, else drop
        op(0x30, 0, 0, 23),              // ldb [23]            protocol
        op(0x15, 0, 6, 17),              // jeq UDP, else drop
        op(0x28, 0, 0, 20),              // ldh [20]            flags/fragment
        op(0x45, 4, 0, 0x1fff),          // jset offset → drop
        op(0xb1, 0, 0, 14),              // ldxb 4*([14]&0xf)   IP header length
        op(0x48, 0, 0, 16),              // ldh [x+16]          UDP destination port
        op(0x15, 0, 1, 67),              // jeq 67, else drop
        op(0x06, 0, 0, RECV_BUF as u32), // ret: accept
        op(0x06, 0, 0, 0),               // ret 0: drop
    ]
};

fn os_err(ifname: &str, op: &'static str) -> DhcpError {
    DhcpError::Socket {
        ifname: ifname.to_string(),
        op,
        source: io::Error::last_os_error(),
    }
}

fn ifindex(ifname: &str) -> Result<u32, DhcpError> {
    let not_found = |source| DhcpError::NoInterface {
        ifname: ifname.to_string(),
        source,
    };
    let c = CString::new(ifname)
        .map_err(|_| not_found(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(not_found(io::Error::last_os_error())),
        i => Ok(i),
    }
}

/// An `AF_PACKET` socket bound to one interface, and that interface's MAC.
struct PacketSocket {
    fd: AsyncFd<OwnedFd>,
    mac: [u8; 6],
}

impl PacketSocket {
    fn open(ifname: &str) -> Result<PacketSocket, DhcpError> {
        let index = ifindex(ifname)?;
        // Protocol 0: nothing is queued until bind, by which time the filter
        // is in place.
        // SAFETY: plain socket(2).
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(os_err(ifname, "socket(AF_PACKET)"));
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let prog = libc::sock_fprog {
            len: FILTER.len() as u16,
            filter: FILTER.as_ptr().cast_mut(),
        };
        // SAFETY: prog points at FILTER for the call; the kernel copies it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&raw const prog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os_err(ifname, "SO_ATTACH_FILTER"));
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        // ETH_P_ALL, not IPv4: on a bridge port (a VM's tap) the bridge
        // takes every frame before protocol-specific sockets are served;
        // only ETH_P_ALL sockets see them first (the filter keeps just
        // DHCP to the server port).
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = index as i32;
        // SAFETY: sll is a sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os_err(ifname, "bind"));
        }
        let mac = hwaddr(&fd, ifname)?;
        // SAFETY: an OwnedFd keeps its descriptor open until dropped and
        // always returns the same one from as_raw_fd.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| DhcpError::Socket {
            ifname: ifname.to_string(),
            op: "registering with tokio",
            source: e.into_parts().1,
        })?;
        Ok(PacketSocket { fd, mac })
    }

    /// One frame and whether the kernel saw it leave the interface (sent
    /// towards the guest by the bridge, not sent by the guest): an
    /// `ETH_P_ALL` socket is shown both.
    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, bool)> {
        loop {
            // ERROR too: the kernel reports a link going down (ENETDOWN) as
            // a socket error, which epoll signals with EPOLLERR alone.
            let mut guard = self.fd.ready(Interest::READABLE | Interest::ERROR).await?;
            let r = guard.try_io(|fd| {
                // SAFETY: sockaddr_ll is plain data; all-zero is valid.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: buf and from are valid for the lengths given.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&raw mut from).cast(),
                        &mut from_len,
                    )
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok((n as usize, from.sll_pkttype == libc::PACKET_OUTGOING))
            });
            if let Ok(r) = r {
                return r;
            }
        }
    }

    /// Whether the socket is still bound to its interface: the kernel
    /// unbinds it (index -1) when the interface is deleted.
    fn still_bound(&self) -> bool {
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: sll and len are valid for getsockname to fill.
        let rc = unsafe {
            libc::getsockname(
                self.fd.get_ref().as_raw_fd(),
                (&raw mut sll).cast(),
                &mut len,
            )
        };
        rc != 0 || sll.sll_ifindex > 0
    }

    async fn send(&self, frame: &[u8]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            // SAFETY: frame is valid for its length; the socket is bound, so
            // send(2) goes out on its interface.
            let r = guard.try_io(|fd| {
                let n =
                    unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
            if let Ok(r) = r {
                return r;
            }
        }
    }
}

/// The interface's Ethernet address (SIOCGIFHWADDR on the socket, so in the
/// socket's network namespace).
fn hwaddr(fd: &OwnedFd, ifname: &str) -> Result<[u8; 6], DhcpError> {
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: req is an ifreq naming the interface (ifname is shorter than
    // IFNAMSIZ: if_nametoindex found it).
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } != 0 {
        return Err(os_err(ifname, "SIOCGIFHWADDR"));
    }
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data) {
        *m = d as u8;
    }
    Ok(mac)
}

/// Serves DHCP for `nic` on interface `ifname` (the VM's tap) until
/// `cancel` fires. Returns `Ok(())` at once, without opening anything, when
/// the NIC gets no DHCP (no `dhcp` block or no IPv4 address); an error for
/// a `dhcp` block that cannot be served (naming the field), an interface
/// that does not exist or a socket that cannot be opened (needs
/// CAP_NET_RAW), or when the interface is deleted under it. Everything
/// else — malformed packets, other MACs, a send that fails — is logged and
/// the loop goes on.
pub async fn serve(
    ifname: &str,
    nic: &NetworkInterface,
    cancel: CancellationToken,
) -> Result<(), DhcpError> {
    let Some(lease) = NicLease::from_nic(nic)? else {
        tracing::debug!(ifname, mac = %nic.mac, "no DHCP for this NIC (no dhcp block or no IPv4)");
        return Ok(());
    };
    let socket = PacketSocket::open(ifname)?;
    tracing::info!(
        ifname,
        mac = %lease.mac,
        address = %lease.address,
        network = %lease.network,
        router = %lease.router,
        hostname = %lease.hostname,
        "DHCP responder started"
    );
    let mut buf = vec![0u8; RECV_BUF];
    // Set by ENETDOWN: the link went down, or the interface is being
    // deleted (it goes down first, and the kernel reports only that), so
    // look every second whether it is gone until a frame arrives again.
    let mut link_down = false;
    loop {
        let received = tokio::select! {
            r = socket.recv(&mut buf) => r,
            () = tokio::time::sleep(GONE_CHECK), if link_down => {
                if !socket.still_bound() {
                    return Err(DhcpError::InterfaceGone { ifname: ifname.to_string() });
                }
                continue;
            }
            () = cancel.cancelled() => {
                tracing::debug!(ifname, "DHCP responder stopped");
                return Ok(());
            }
        };
        let len = match received {
            Ok((len, outgoing)) => {
                link_down = false;
                if outgoing {
                    continue;
                }
                len
            }
            Err(e) if e.raw_os_error() == Some(libc::ENETDOWN) => {
                if !socket.still_bound() {
                    return Err(DhcpError::InterfaceGone {
                        ifname: ifname.to_string(),
                    });
                }
                // The kernel re-attaches the socket when the link comes up.
                tracing::debug!(ifname, "interface is down");
                link_down = true;
                continue;
            }
            Err(e) => {
                tracing::warn!(ifname, error = %e, "DHCP receive failed");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    () = cancel.cancelled() => return Ok(()),
                }
            }
        };
        let reply = match answer_frame(&buf[..len], &lease, socket.mac) {
            Ok(reply) => reply,
            Err(FrameIgnored::Dhcp(e @ Ignored::Declined { .. })) => {
                tracing::warn!(ifname, mac = %lease.mac, "{e}");
                continue;
            }
            Err(e) => {
                tracing::debug!(ifname, error = %crate::error_chain(&e), "DHCP frame not answered");
                continue;
            }
        };
        let sent = tokio::select! {
            r = socket.send(&reply.frame) => r,
            () = cancel.cancelled() => return Ok(()),
        };
        match sent {
            Ok(()) => tracing::info!(
                ifname,
                mac = %lease.mac,
                address = %lease.address,
                kind = ?reply.message_type,
                to = ?reply.to,
                "DHCP reply sent"
            ),
            Err(e) => tracing::warn!(ifname, error = %e, "DHCP send failed"),
        }
    }
}
