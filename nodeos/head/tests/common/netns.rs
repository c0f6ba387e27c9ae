//! Network namespaces for the networking tests: never the host's
//! interfaces.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use bigv_head::net::link::Netlink;
use rtnetlink::LinkVeth;

use bigv_testkit::in_fresh_netns;

/// [`in_fresh_netns`] with a veth pair `trunk0` ↔ `outside0`, both up.
pub fn in_netns<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    in_fresh_netns(|| async move {
        let nl = Netlink::connect().unwrap();
        nl.handle()
            .link()
            .add(LinkVeth::new("trunk0", "outside0").build())
            .execute()
            .await
            .unwrap();
        for name in ["trunk0", "outside0"] {
            let i = nl.index(name).await.unwrap().unwrap();
            nl.up(i, name).await.unwrap();
        }
        f().await
    })
}

/// A raw socket on `ifname` that sees every frame arriving there.
pub fn listen(ifname: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket calls with valid arguments.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let name = std::ffi::CString::new(ifname).unwrap();
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        let rc = libc::bind(
            fd.as_raw_fd(),
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        fd
    }
}

/// Every frame the socket gets within `window`.
pub fn frames(fd: &OwnedFd, window: Duration) -> Vec<Vec<u8>> {
    let mut out = vec![];
    let end = Instant::now() + window;
    while Instant::now() < end {
        let mut buf = [0u8; 2048];
        // SAFETY: reads into a buffer of the given size.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            out.push(buf[..n as usize].to_vec());
        }
    }
    out
}
