//! Announcements as a neighbour receives them, in a network namespace of
//! its own: a veth pair, `a0` (the node that now holds an address) and
//! `b0` (a neighbour that cached another MAC for it). After `announce`,
//! `b0`'s kernel maps the address to `a0`'s MAC at once, for IPv4 and
//! IPv6 — what a head's SSH client or NBD reconnect needs after a VM or a
//! disc moved.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An interface's index and MAC (`aa:bb:…`), from netlink: `/sys` shows
/// the namespace it was mounted in, not this test's.
async fn index_and_mac(iface: &str) -> (u32, String) {
    let link = bigv_testkit::link(iface).await.expect("the interface");
    let mac = bigv_testkit::mac_of(&link).expect("a MAC");
    let text: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    (link.header.index, text.join(":"))
}

/// Waits (2 s at most) for `b0`'s neighbour entry for `addr` to name `mac`.
fn neighbour_becomes(addr: &str, mac: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let shown = ip(&["neigh", "show", addr, "dev", "b0"]);
        if shown.contains(mac) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(shown);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_neighbour_that_cached_another_mac_switches_at_once() {
    bigv_testkit::in_fresh_netns(|| async {
        ip(&["link", "add", "a0", "type", "veth", "peer", "name", "b0"]);
        for i in ["a0", "b0"] {
            ip(&["link", "set", i, "up"]);
        }
        ip(&["addr", "add", "10.9.0.1/24", "dev", "b0"]);
        ip(&["addr", "add", "fd09::1/64", "dev", "b0", "nodad"]);
        ip(&["addr", "add", "fd09::5/128", "dev", "a0", "nodad"]);
        let (a0, a0_mac) = index_and_mac("a0").await;
        let stale_mac = "02:00:00:00:00:99";
        for addr in ["10.9.0.5", "fd09::5"] {
            // What b0 learnt before the address moved to a0.
            ip(&[
                "neigh", "replace", addr, "lladdr", stale_mac, "dev", "b0", "nud", "stale",
            ]);
            assert!(ip(&["neigh", "show", addr, "dev", "b0"]).contains(stale_mac));

            let parsed: IpAddr = addr.parse().unwrap();
            bigv_announce::announce("a0", a0, parsed).unwrap();
            if let Err(shown) = neighbour_becomes(addr, &a0_mac) {
                panic!("b0 still maps {addr} to {shown:?}, not a0's {a0_mac}");
            }
        }
    });
}
