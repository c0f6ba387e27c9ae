//! A private network namespace holding the boot/spine LAN: bridge `br0`
//! (10.0.0.1/24, fd00::1/64) and one tap per VM. Deleted, with everything
//! in it, on drop.

use std::os::fd::AsRawFd;
use std::process::Command;

pub const BRIDGE: &str = "br0";
pub const BRAIN_ADDRESS: &str = "10.0.0.1";

pub struct Netns {
    pub name: String,
    pub taps: Vec<String>,
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
        let mut ns = Netns { name, taps: vec![] };
        let n = ns.name.clone();
        ip(&["-n", &n, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &n,
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
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
        ip(&["-n", &n, "link", "set", BRIDGE, "up"]);
        for i in 1..=taps {
            let tap = format!("tap{i}");
            ip(&["-n", &n, "tuntap", "add", &tap, "mode", "tap"]);
            ip(&["-n", &n, "link", "set", &tap, "master", BRIDGE, "up"]);
            ns.taps.push(tap);
        }
        ns
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

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
