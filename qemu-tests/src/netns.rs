//! A private network namespace holding a cluster's three LANs, each a
//! bridge with one tap per machine slot:
//!
//! - the boot/spine LAN, `br0` (10.0.0.1/24, fd00::1/64: the brain's
//!   boot services and spine), taps `tapN`;
//! - the storage LAN, `br1`, taps `storN`: heads' NBD connections to
//!   discs, mirrors between tails and VM migrations between heads (IPv6,
//!   the nodes' own addresses; the brain is not on it);
//! - the public LAN, `br2`, taps `pubN`: what heads' VLAN trunks plug
//!   into (customers' VLANs, tagged).
//!
//! Deleted, with everything in it, on drop.

use std::os::fd::AsRawFd;
use std::process::Command;

pub const BRIDGE: &str = "br0";
pub const STORAGE_BRIDGE: &str = "br1";
pub const PUBLIC_BRIDGE: &str = "br2";
pub const BRAIN_ADDRESS: &str = "10.0.0.1";

/// Slot `i`'s taps are `taps[i]`, `storage_taps[i]` and `public_taps[i]`.
pub struct Netns {
    pub name: String,
    pub taps: Vec<String>,
    pub storage_taps: Vec<String>,
    pub public_taps: Vec<String>,
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

impl Netns {
    /// `bigv-<tag>-<pid>` with the bridge up and `taps` taps on it.
    pub fn create(tag: &str, taps: usize) -> Netns {
        let name = format!("bigv-{tag}-{}", std::process::id());
        ip(&["netns", "add", &name]);
        // From here on, drop deletes it even if a step below fails.
        let mut ns = Netns {
            name,
            taps: vec![],
            storage_taps: vec![],
            public_taps: vec![],
        };
        let n = ns.name.clone();
        ip(&["-n", &n, "link", "set", "lo", "up"]);
        for bridge in [BRIDGE, STORAGE_BRIDGE, PUBLIC_BRIDGE] {
            ip(&[
                "-n",
                &n,
                "link",
                "add",
                bridge,
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
            ]);
            ip(&["-n", &n, "link", "set", bridge, "up"]);
        }
        ip(&["-n", &n, "addr", "add", "10.0.0.1/24", "dev", BRIDGE]);
        ip(&[
            "-n",
            &n,
            "-6",
            "addr",
            "add",
            "fd00::1/64",
            "dev",
            BRIDGE,
            "nodad",
        ]);
        for i in 1..=taps {
            ns.taps.push(tap(&n, &format!("tap{i}"), BRIDGE));
            ns.storage_taps
                .push(tap(&n, &format!("stor{i}"), STORAGE_BRIDGE));
            ns.public_taps
                .push(tap(&n, &format!("pub{i}"), PUBLIC_BRIDGE));
        }
        ns
    }

    /// Bytes a tap has carried, both ways (`/sys/class/net/TAP/statistics`
    /// inside the namespace).
    pub fn tap_bytes(&self, tap: &str) -> u64 {
        let out = self
            .exec("cat")
            .arg(format!("/sys/class/net/{tap}/statistics/rx_bytes"))
            .arg(format!("/sys/class/net/{tap}/statistics/tx_bytes"))
            .output()
            .expect("cat runs");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|n| n.parse::<u64>().ok())
            .sum()
    }

    /// Moves the calling thread into the namespace (sockets it or the
    /// threads it spawns open afterwards belong to it).
    pub fn enter(&self) {
        let f = std::fs::File::open(format!("/var/run/netns/{}", self.name))
            .expect("the namespace file");
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }

    /// `ip netns exec <ns>`, to prefix a program run inside.
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

/// A tap on `bridge`, up.
fn tap(ns: &str, name: &str, bridge: &str) -> String {
    ip(&["-n", ns, "tuntap", "add", name, "mode", "tap"]);
    ip(&["-n", ns, "link", "set", name, "master", bridge, "up"]);
    name.to_owned()
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
