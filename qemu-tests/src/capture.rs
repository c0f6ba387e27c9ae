//! What crosses a tap: `tcpdump` inside the namespace (`-e -n`, one line
//! per frame with its MACs and VLAN tag), from before the scenario acts
//! until dropped. Frames are decoded by tcpdump, so a check reads what an
//! operator would see on that wire.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;

pub struct Capture {
    child: Child,
    out: PathBuf,
    pub iface: String,
}

impl Capture {
    /// Starts capturing on `iface` what matches the pcap `filter` into
    /// `out`; returns once tcpdump says it is listening.
    pub fn start(ns: &Netns, iface: &str, filter: &str, out: &Path) -> Capture {
        let stdout = std::fs::File::create(out).expect("the capture file");
        let err_path = out.with_extension("err");
        let stderr = std::fs::File::create(&err_path).expect("tcpdump's stderr file");
        let child = ns
            .exec("tcpdump")
            .args(["-i", iface, "-l", "-n", "-e", "-p"])
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("tcpdump (tools/setup-host.sh installs it)");
        let mut capture = Capture {
            child,
            out: out.to_owned(),
            iface: iface.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let said = std::fs::read_to_string(&err_path).unwrap_or_default();
            if said.contains("listening on") {
                return capture;
            }
            assert!(
                !matches!(capture.child.try_wait(), Ok(Some(_))) && Instant::now() < deadline,
                "tcpdump on {iface} did not start: {said}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The frames seen so far, a line each.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // `ip netns exec` execs tcpdump: this PID is tcpdump's.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
