//! Helpers shared by the head's slow tests: real qemu (TCG), the test
//! guest, a real spine server.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::time::Duration;

use bigv_spine::NodeHandle;
use bigv_spine::resource::{ResourceName, ResourceValue, VmSpec};

pub fn slow() -> bool {
    if std::env::var_os("BIGV_SLOW_TESTS").is_none() {
        eprintln!("skipped: set BIGV_SLOW_TESTS=1 to run VMs under qemu");
        return false;
    }
    true
}

pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "bigv_head=debug,info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The VM as the head reports it on the spine.
pub fn vm_in_table(h: &NodeHandle, name: &str) -> Option<VmSpec> {
    match h.resource(&ResourceName::vm(name)) {
        Some((ResourceValue::Vm(spec), _)) => Some(*spec),
        _ => None,
    }
}

/// Polls `f` until it returns `Some`, failing after `limit`.
pub async fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn serial_lines(log: &Path) -> Vec<String> {
    let bytes = std::fs::read(log).unwrap_or_default();
    let mut lines: Vec<String> = String::from_utf8_lossy(&bytes)
        .split('\n')
        .map(|l| l.replace('\r', ""))
        .collect();
    lines.pop();
    lines
}

/// Builds the test guest's bootable disc into `out`.
pub fn build_guest(out: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../qemu-tests/guest/build.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("bash runs");
    assert!(status.success(), "qemu-tests/guest/build.sh failed");
}

/// Kills every qemu whose pidfile is under a run directory, on drop.
pub struct KillVms(pub PathBuf);

impl Drop for KillVms {
    fn drop(&mut self) {
        let Ok(dirs) = std::fs::read_dir(&self.0) else {
            return;
        };
        for d in dirs.flatten() {
            if let Ok(pid) = std::fs::read_to_string(d.path().join("qemu.pid"))
                && let Ok(pid) = pid.trim().parse::<i32>()
            {
                bigv_head::vm::kill(pid);
            }
        }
    }
}
