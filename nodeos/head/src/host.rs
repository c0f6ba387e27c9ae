//! Facts about the head machine: memory for VMs, load, and whether KVM
//! really works (on some machines `/dev/kvm` exists but hangs).

use std::time::Duration;

use crate::argv::Accel;

/// MiB of RAM the machine has (`MemTotal`), 0 if unknown.
pub fn mem_total_mib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    parse_mem_total(&text)
}

fn parse_mem_total(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// 1, 5 and 15 minute load averages from `/proc/loadavg`.
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .map(|w| w.parse::<f64>().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

/// True if `/dev/kvm` answers `KVM_GET_API_VERSION` within a second.
/// The probe runs on its own thread: a hanging device must not hang us.
pub fn kvm_usable() -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            let ok = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .map(|f| {
                    use std::os::fd::AsRawFd;
                    const KVM_GET_API_VERSION: libc::c_ulong = 0xae00;
                    // SAFETY: an argument-less ioctl on an open fd.
                    let v = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION, 0) };
                    v == 12
                })
                .unwrap_or(false);
            let _ = tx.send(ok);
        });
    spawned.is_ok() && rx.recv_timeout(Duration::from_secs(1)).unwrap_or(false)
}

/// The accelerator to use: the configured one, or KVM if usable.
pub fn pick_accel(configured: Option<Accel>) -> Accel {
    match configured {
        Some(a) => a,
        None if kvm_usable() => Accel::Kvm,
        None => {
            tracing::warn!("/dev/kvm is missing or does not answer: VMs run under TCG (slow)");
            Accel::Tcg
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_total() {
        assert_eq!(
            parse_mem_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            24000
        );
        assert_eq!(parse_mem_total("garbage"), 0);
    }
}
