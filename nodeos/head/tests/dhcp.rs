//! The per-VM DHCP responder against a real client: busybox `udhcpc` in a
//! network namespace of its own, across a veth pair whose other end (in a
//! second namespace, standing in for the VM's tap) the responder serves.
//! Both namespaces are the test's own and are deleted, with the veths in
//! them, when it ends (even on failure); no host interface is touched.
//! Needs root (namespaces, AF_PACKET) and busybox (tools/setup-host.sh).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bigv_head::dhcp::{DhcpError, serve};
use bigv_spine::resource::{DhcpConfig, NetworkInterface};
use dhcproto::Encodable;
use dhcproto::v4::{DhcpOption, Message, MessageType};
use tokio_util::sync::CancellationToken;

const MAC: &str = "fe:ff:00:00:00:01";
const OTHER_MAC: &str = "fe:ff:00:00:00:02";
/// The responder's end (the "tap") and the client's end (the "guest").
const SERVER_IF: &str = "s0";
const CLIENT_IF: &str = "c0";

fn nic() -> NetworkInterface {
    NetworkInterface {
        mac: MAC.into(),
        vlan_id: 1,
        model: "virtio".into(),
        ips: vec!["2001:db8::10".into(), "198.51.100.20".into()],
        dhcp: Some(DhcpConfig {
            network: "198.51.100.0/25".into(),
            router: "198.51.100.1".into(),
            hostname: "web1".into(),
            domain: "default.alice.bigv.test".into(),
        }),
    }
}

/// What udhcpc's script is given for `nic()`, exactly.
fn expected_lease() -> BTreeMap<String, String> {
    [
        ("ip", "198.51.100.20"),
        ("subnet", "255.255.255.128"),
        ("mask", "25"),
        ("router", "198.51.100.1"),
        ("hostname", "web1"),
        ("domain", "default.alice.bigv.test"),
        ("serverid", "198.51.100.1"),
        ("lease", "3600"),
        ("dns", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn ip(args: &[&str]) {
    let o = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Moves the calling thread into namespace `ns`.
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("the namespace file");
    // SAFETY: setns on a valid namespace fd; affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Two namespaces joined by a veth pair: `s0` in the server's, `c0` (with
/// the NIC's MAC) in the client's. Dropping it deletes both.
struct Link {
    server_ns: String,
    client_ns: String,
    dir: tempfile::TempDir,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Link {
    fn new() -> Link {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("bigv-dhcp-{}-{n}", std::process::id());
        let link = Link {
            server_ns: format!("{base}-s"),
            client_ns: format!("{base}-c"),
            dir: tempfile::tempdir().unwrap(),
        };
        // From the first `add` on, drop deletes whatever exists.
        ip(&["netns", "add", &link.server_ns]);
        ip(&["netns", "add", &link.client_ns]);
        ip(&[
            "-n",
            &link.server_ns,
            "link",
            "add",
            SERVER_IF,
            "type",
            "veth",
            "peer",
            "name",
            CLIENT_IF,
            "netns",
            &link.client_ns,
        ]);
        ip(&["-n", &link.server_ns, "link", "set", SERVER_IF, "up"]);
        link.set_client_mac(MAC);
        ip(&["-n", &link.client_ns, "link", "set", CLIENT_IF, "up"]);
        link
    }

    fn set_client_mac(&self, mac: &str) {
        ip(&[
            "-n",
            &self.client_ns,
            "link",
            "set",
            CLIENT_IF,
            "address",
            mac,
        ]);
    }

    /// Runs `serve` on `s0` on a thread of its own inside the server's
    /// namespace.
    fn serve(&self, nic: NetworkInterface) -> Responder {
        self.serve_on(SERVER_IF, nic)
    }

    fn serve_on(&self, ifname: &'static str, nic: NetworkInterface) -> Responder {
        let cancel = CancellationToken::new();
        let ns = self.server_ns.clone();
        let c = cancel.clone();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(serve(ifname, &nic, c))
        });
        Responder { cancel, thread }
    }

    /// Runs busybox udhcpc on `c0` (`-n`: give up after `tries` discovers a
    /// second apart); the lease its script was given, or `None` with its
    /// output.
    fn udhcpc(&self, tries: u32, extra: &[&str]) -> Result<BTreeMap<String, String>, String> {
        let script = self.dir.path().join("script");
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nfor v in ip subnet mask router hostname domain serverid lease dns; do\n  eval \"echo LEASE $v=\\$$v\"\ndone\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tries = tries.to_string();
        let o = Command::new("timeout")
            .args(["30", "ip", "netns", "exec", &self.client_ns])
            .args(["busybox", "udhcpc", "-f", "-q", "-n", "-i", CLIENT_IF])
            .args(["-t", &tries, "-T", "1", "-A", "1", "-s"])
            .arg(&script)
            .args(extra)
            .output()
            .expect("busybox (tools/setup-host.sh installs busybox-static)");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let lease: BTreeMap<String, String> = out
            .lines()
            .filter_map(|l| l.strip_prefix("LEASE "))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let all = format!("{out}{}", String::from_utf8_lossy(&o.stderr));
        if o.status.success() && !lease.is_empty() {
            Ok(lease)
        } else {
            Err(all)
        }
    }

    /// Waits until the responder answers a DISCOVER from the client (it
    /// has bound its socket), so that what a test sends next reaches it.
    fn wait_served(&self) {
        let mac = mac_bytes(MAC);
        let frame = frame_to_server(mac, &message(mac, 1, MessageType::Discover, &[]));
        let start = Instant::now();
        loop {
            let cap = capture(&self.client_ns, CLIENT_IF, Duration::from_millis(200));
            self.send_frames(vec![frame.clone()]);
            if !dhcp_replies(cap.join().unwrap()).is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the responder never answered"
            );
        }
    }

    /// Writes raw Ethernet frames out of `c0`, as the guest would.
    fn send_frames(&self, frames: Vec<Vec<u8>>) {
        send_frames(&self.client_ns, CLIENT_IF, frames);
    }
}

/// A raw packet socket on `ifname` in the calling thread's namespace,
/// receiving every protocol, and the interface's index.
fn packet_socket(ifname: &str) -> (OwnedFd, i32) {
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "{ifname}");
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = all;
    sll.sll_ifindex = index as i32;
    // SAFETY: sll is a sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    (fd, index as i32)
}

/// Writes raw Ethernet frames out of `ifname` in namespace `ns`.
fn send_frames(ns: &str, ifname: &str, frames: Vec<Vec<u8>>) {
    let (ns, ifname) = (ns.to_string(), ifname.to_string());
    std::thread::spawn(move || {
        enter(&ns);
        let (fd, _) = packet_socket(&ifname);
        for f in frames {
            // SAFETY: f is valid for its length; the socket is bound.
            let n = unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            assert_eq!(n, f.len() as isize, "{}", std::io::Error::last_os_error());
        }
    })
    .join()
    .unwrap();
}

/// The frames `ifname` in namespace `ns` receives from the wire during
/// `window`, capture starting before this returns.
fn capture(ns: &str, ifname: &str, window: Duration) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let (ns, ifname) = (ns.to_string(), ifname.to_string());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        enter(&ns);
        let (fd, _) = packet_socket(&ifname);
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: a timeval of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        ready_tx.send(()).unwrap();
        let end = Instant::now() + window;
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            // SAFETY: plain data; all-zero is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut len,
                )
            };
            if n > 0 && from.sll_pkttype != libc::PACKET_OUTGOING {
                got.push(buf[..n as usize].to_vec());
            }
        }
        got
    });
    ready_rx.recv().unwrap();
    h
}

/// Whether `f` is IPv4 UDP from port 67 (a DHCP server's reply).
fn is_dhcp_reply(f: &[u8]) -> bool {
    f.len() > 42 && f[12..14] == [8, 0] && f[23] == 17 && f[34..36] == 67u16.to_be_bytes()
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

struct Responder {
    cancel: CancellationToken,
    thread: std::thread::JoinHandle<Result<(), DhcpError>>,
}

impl Responder {
    fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }

    fn stop(self) -> Result<(), DhcpError> {
        self.cancel.cancel();
        self.thread.join().unwrap()
    }

    /// The result once `serve` returns by itself, within `limit`.
    fn wait(self, limit: Duration) -> Result<(), DhcpError> {
        let start = Instant::now();
        while !self.thread.is_finished() {
            assert!(
                start.elapsed() < limit,
                "serve still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.thread.join().unwrap()
    }
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let v: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// A client's Ethernet/IPv4/UDP frame 0.0.0.0:68 → 255.255.255.255:67 with
/// `payload` (checksums left zero: nothing on the path checks them).
fn frame_to_server(src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_len = (20 + 8 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]);
    f.extend_from_slice(&68u16.to_be_bytes());
    f.extend_from_slice(&67u16.to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A client's DHCP message of type `ty` from `mac`, transaction `xid`.
fn message(mac: [u8; 6], xid: u32, ty: MessageType, opts: &[DhcpOption]) -> Vec<u8> {
    let mut m = Message::new_with_id(
        xid,
        [0; 4].into(),
        [0; 4].into(),
        [0; 4].into(),
        [0; 4].into(),
        &mac,
    );
    m.opts_mut().insert(DhcpOption::MessageType(ty));
    for o in opts {
        m.opts_mut().insert(o.clone());
    }
    m.to_vec().unwrap()
}

/// The DHCP replies among `frames`, with their decoded messages.
fn dhcp_replies(frames: Vec<Vec<u8>>) -> Vec<(Vec<u8>, Message)> {
    frames
        .into_iter()
        .filter(|f| is_dhcp_reply(f))
        .map(|f| {
            let m = <Message as dhcproto::Decodable>::decode(&mut dhcproto::Decoder::new(&f[42..]))
                .unwrap();
            (f, m)
        })
        .collect()
}

/// Sends `frame` from the client and returns the DHCP replies it receives
/// within a second.
fn replies_to(link: &Link, frame: Vec<u8>) -> Vec<(Vec<u8>, Message)> {
    let cap = capture(&link.client_ns, CLIENT_IF, Duration::from_secs(1));
    link.send_frames(vec![frame]);
    dhcp_replies(cap.join().unwrap())
}

#[test]
fn a_real_client_gets_exactly_the_configured_lease() {
    let link = Link::new();
    let responder = link.serve(nic());
    // Default udhcpc: no BROADCAST flag, so the replies are unicast frames
    // to the client's MAC and the offered address.
    let lease = link
        .udhcpc(3, &[])
        .unwrap_or_else(|out| panic!("no lease:\n{out}"));
    assert_eq!(lease, expected_lease());
    // -B sets the BROADCAST flag: broadcast replies, the same lease.
    let lease = link
        .udhcpc(3, &["-B"])
        .unwrap_or_else(|out| panic!("no lease with -B:\n{out}"));
    assert_eq!(lease, expected_lease());
    // Asking for another address in the DISCOVER still gets the NIC's.
    let lease = link
        .udhcpc(3, &["-r", "198.51.100.99"])
        .unwrap_or_else(|out| panic!("no lease with -r:\n{out}"));
    assert_eq!(lease["ip"], "198.51.100.20");
    assert!(responder.is_running());
    responder.stop().unwrap();
}

#[test]
fn another_mac_gets_no_lease() {
    let link = Link::new();
    let responder = link.serve(nic());
    link.wait_served();
    link.set_client_mac(OTHER_MAC);
    let start = Instant::now();
    let r = link.udhcpc(2, &[]);
    assert!(r.is_err(), "a foreign MAC got a lease: {r:?}");
    assert!(start.elapsed() < Duration::from_secs(15));
    // The same client with the NIC's MAC is answered: the silence was
    // the MAC's, not a dead responder.
    link.set_client_mac(MAC);
    assert_eq!(
        link.udhcpc(3, &[])
            .unwrap_or_else(|out| panic!("no lease:\n{out}")),
        expected_lease()
    );
    responder.stop().unwrap();
}

#[test]
fn malformed_frames_do_not_stop_the_responder() {
    let link = Link::new();
    let responder = link.serve(nic());
    link.wait_served();
    let mac = mac_bytes(MAC);
    let discover = message(mac, 7, MessageType::Discover, &[]);
    // Option `code` with a bad length inserted before End: dhcproto 0.15
    // panics on these unguarded (options 94, 81, 152, 80).
    let with_option = |opt: &[u8]| {
        let mut p = discover.clone();
        let end = p.iter().rposition(|&b| b == 255).unwrap();
        p.splice(end..end, opt.iter().copied());
        p
    };
    let mut frames = vec![
        frame_to_server(mac, &with_option(&[94, 2, 1, 2])),
        frame_to_server(mac, &with_option(&[81, 0])),
        frame_to_server(mac, &with_option(&[152, 3, 0, 0, 0])),
        frame_to_server(mac, &with_option(&[80, 1, 0])),
        frame_to_server(mac, &with_option(&[12, 200, b'x'])),
        frame_to_server(mac, &discover[..100]),
        frame_to_server(mac, &[]),
        frame_to_server(mac, &[0xff; 1400]),
    ];
    // And plain noise of every length up to a full frame, from our MAC.
    let mut x: u32 = 0x2545_f491;
    for len in (14..1514).step_by(37) {
        let mut f: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        f[6..12].copy_from_slice(&mac);
        frames.push(f.clone());
        // The same noise as a UDP payload to port 67.
        frames.push(frame_to_server(mac, &f[..len.min(1400)]));
    }
    let sent = frames.len();
    link.send_frames(frames);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        responder.is_running(),
        "{sent} malformed frames ended serve"
    );
    assert_eq!(
        link.udhcpc(3, &[])
            .unwrap_or_else(|out| panic!("no lease after malformed frames:\n{out}")),
        expected_lease()
    );
    responder.stop().unwrap();
}

#[test]
fn a_deleted_interface_ends_the_responder_with_an_error() {
    let link = Link::new();
    let responder = link.serve(nic());
    link.wait_served();
    assert!(responder.is_running());
    ip(&["-n", &link.server_ns, "link", "del", SERVER_IF]);
    let start = Instant::now();
    match responder.wait(Duration::from_secs(10)) {
        Err(DhcpError::InterfaceGone { ifname }) => assert_eq!(ifname, SERVER_IF),
        other => panic!("{other:?}"),
    }
    eprintln!("serve noticed the deletion after {:?}", start.elapsed());
}

#[test]
fn a_link_down_and_up_again_is_served_again() {
    let link = Link::new();
    let responder = link.serve(nic());
    link.wait_served();
    ip(&["-n", &link.server_ns, "link", "set", SERVER_IF, "down"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(responder.is_running());
    ip(&["-n", &link.server_ns, "link", "set", SERVER_IF, "up"]);
    assert_eq!(
        link.udhcpc(5, &[])
            .unwrap_or_else(|out| panic!("no lease after down/up:\n{out}")),
        expected_lease()
    );
    responder.stop().unwrap();
}

#[test]
fn serve_without_dhcp_returns_at_once_and_bad_input_is_an_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cancel = CancellationToken::new();
    // No dhcp block, or no IPv4: nothing is opened (the interface need not
    // exist), Ok at once.
    let mut no_dhcp = nic();
    no_dhcp.dhcp = None;
    rt.block_on(serve("does-not-exist", &no_dhcp, cancel.clone()))
        .unwrap();
    let mut v6_only = nic();
    v6_only.ips.truncate(1);
    rt.block_on(serve("does-not-exist", &v6_only, cancel.clone()))
        .unwrap();
    // A bad dhcp block names the field.
    let mut bad = nic();
    bad.dhcp.as_mut().unwrap().network = "198.51.100.0/33".into();
    let e = rt
        .block_on(serve("does-not-exist", &bad, cancel.clone()))
        .unwrap_err();
    assert!(e.to_string().starts_with("dhcp.network: "), "{e}");
    // A missing interface.
    let e = rt
        .block_on(serve("does-not-exist", &nic(), cancel))
        .unwrap_err();
    assert!(
        matches!(&e, DhcpError::NoInterface { ifname, .. } if ifname == "does-not-exist"),
        "{e:?}"
    );
}

#[test]
fn only_frames_from_the_guest_are_answered() {
    let link = Link::new();
    let responder = link.serve(nic());
    link.wait_served();
    let frame = frame_to_server(
        mac_bytes(MAC),
        &message(mac_bytes(MAC), 9, MessageType::Discover, &[]),
    );
    // Sent out of s0 towards the guest, as a bridge forwards another VM's
    // broadcast to a tap (even one with this NIC's MAC): not answered.
    let cap = capture(&link.client_ns, CLIENT_IF, Duration::from_secs(1));
    send_frames(&link.server_ns, SERVER_IF, vec![frame.clone()]);
    let got = cap.join().unwrap();
    assert!(got.contains(&frame), "the DISCOVER did not cross the veth");
    assert!(
        !got.iter().any(|f| is_dhcp_reply(f)),
        "a frame travelling towards the guest was answered"
    );
    // The same frame from the guest's side is: one OFFER, to the client.
    let replies = replies_to(&link, frame);
    assert_eq!(replies.len(), 1, "{replies:02x?}");
    let (f, m) = &replies[0];
    assert_eq!(&f[..6], &mac_bytes(MAC));
    assert_eq!(m.xid(), 9);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(m.yiaddr(), std::net::Ipv4Addr::new(198, 51, 100, 20));
    responder.stop().unwrap();
}

#[test]
fn a_request_for_another_address_gets_a_broadcast_nak() {
    let link = Link::new();
    let responder = link.serve(nic());
    link.wait_served();
    // INIT-REBOOT for an address this NIC does not have (udhcpc never
    // sends one, so the frame is made by hand).
    let mac = mac_bytes(MAC);
    let request = message(
        mac,
        11,
        MessageType::Request,
        &[DhcpOption::RequestedIpAddress([198, 51, 100, 21].into())],
    );
    let replies = replies_to(&link, frame_to_server(mac, &request));
    assert_eq!(replies.len(), 1, "{replies:02x?}");
    let (f, m) = &replies[0];
    assert_eq!(&f[..6], &[0xff; 6], "Ethernet broadcast");
    assert_eq!(&f[30..34], &[255; 4], "IPv4 broadcast");
    assert_eq!(m.xid(), 11);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(m.yiaddr(), std::net::Ipv4Addr::UNSPECIFIED);
    responder.stop().unwrap();
}

/// A tap `name` in namespace `ns`, as qemu holds it: the descriptor is the
/// guest's side (writes are frames from the guest, reads frames to it).
fn tap(ns: &str, name: &str) -> std::fs::File {
    let (ns, name) = (ns.to_string(), name.to_string());
    std::thread::spawn(move || {
        enter(&ns);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        // SAFETY: ifreq is plain data; all-zero is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF with an ifreq naming the tap.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        f
    })
    .join()
    .unwrap()
}

/// Frames the guest side of a tap reads within `window`.
fn read_tap(f: &std::fs::File, window: Duration) -> Vec<Vec<u8>> {
    let end = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) } <= 0 {
            continue;
        }
        let n = std::io::Read::read(&mut &*f, &mut buf).unwrap();
        got.push(buf[..n].to_vec());
    }
    got
}

#[test]
fn a_guest_on_a_tap_gets_its_lease() {
    let link = Link::new();
    let guest = tap(&link.server_ns, "tap0");
    // A port of its VLAN's bridge, as on a head: the bridge takes the
    // guest's frames before any protocol-bound socket would see them.
    ip(&[
        "-n",
        &link.server_ns,
        "link",
        "add",
        "br0",
        "type",
        "bridge",
    ]);
    ip(&[
        "-n",
        &link.server_ns,
        "link",
        "set",
        "tap0",
        "master",
        "br0",
    ]);
    ip(&["-n", &link.server_ns, "link", "set", "br0", "up"]);
    // Started while the tap is still down, brought up afterwards.
    let responder = link.serve_on("tap0", nic());
    std::thread::sleep(Duration::from_millis(200));
    assert!(responder.is_running());
    ip(&["-n", &link.server_ns, "link", "set", "tap0", "up"]);
    let mac = mac_bytes(MAC);
    let exchange = |frame: Vec<u8>| -> Vec<(Vec<u8>, Message)> {
        std::io::Write::write_all(&mut &guest, &frame).unwrap();
        dhcp_replies(read_tap(&guest, Duration::from_secs(1)))
    };
    // Repeated until the responder has bound its socket.
    let discover = frame_to_server(mac, &message(mac, 21, MessageType::Discover, &[]));
    let start = Instant::now();
    let offer = loop {
        let replies = exchange(discover.clone());
        if !replies.is_empty() || start.elapsed() > Duration::from_secs(10) {
            break replies;
        }
    };
    assert_eq!(offer.len(), 1, "{offer:02x?}");
    let (f, m) = &offer[0];
    assert_eq!(&f[..6], &mac, "unicast to the guest");
    assert_eq!(&f[30..34], &[198, 51, 100, 20]);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(m.yiaddr(), std::net::Ipv4Addr::new(198, 51, 100, 20));
    let ack = exchange(frame_to_server(
        mac,
        &message(
            mac,
            22,
            MessageType::Request,
            &[
                DhcpOption::ServerIdentifier([198, 51, 100, 1].into()),
                DhcpOption::RequestedIpAddress([198, 51, 100, 20].into()),
            ],
        ),
    ));
    assert_eq!(ack.len(), 1, "{ack:02x?}");
    let m = &ack[0].1;
    assert_eq!((m.xid(), m.opts().msg_type()), (22, Some(MessageType::Ack)));
    assert_eq!(
        m.opts().get(dhcproto::v4::OptionCode::Hostname),
        Some(&DhcpOption::Hostname("web1".into()))
    );
    responder.stop().unwrap();
}
