//! The whole-system harness (issue 8): a real `bigv-brain` process in a
//! private network namespace with its boot services on a bridge, the node
//! image built from this workspace, and blank qemu VMs (TCG) on taps of
//! that bridge that PXE-boot from it. Nothing leaves the namespace.
//!
//! Pieces, one file each: [`netns`] (namespace, bridge, taps), [`brain`]
//! (the brain process and an admin API client), [`vm`] (a qemu machine
//! with its serial console in a file), [`image`] (the node image, cached
//! by its inputs), [`logs`] (where consoles go; kept on failure),
//! [`capture`] (tcpdump on a tap) and [`timings`] (the table each
//! scenario prints).

pub mod brain;
pub mod capture;
pub mod cli;
pub mod cluster;
pub mod console;
pub mod guest;
pub mod image;
pub mod logs;
pub mod netns;
pub mod timings;
pub mod vm;

use std::path::PathBuf;

/// The slow-tier gate: scenarios boot several kernels under TCG. Returns
/// false (after saying so on stderr) unless `BIGV_SLOW_TESTS=1`.
pub fn slow_tests_enabled(name: &str) -> bool {
    if std::env::var("BIGV_SLOW_TESTS").as_deref() == Ok("1") {
        return true;
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {name}: whole-system scenario (a brain in a network namespace, nodes PXE-booting in qemu under TCG); runs only with BIGV_SLOW_TESTS=1"
    );
    false
}

/// Builds `package`'s binary `bin` (a no-op when current) into the target
/// directory this test was built in and returns its path.
pub fn cargo_binary(package: &str, bin: &str) -> PathBuf {
    let target = target_dir();
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(bigv_image::workspace_root())
            .args(["build", "--locked", "-p", package, "--bin", bin])
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("running cargo");
    assert!(status.success(), "building {bin} failed");
    target.join("debug").join(bin)
}

/// The test guest's bootable disc (`qemu-tests/guest/build.sh`), built
/// into the target directory; the OS template customer VMs are imaged
/// with.
pub fn guest_image() -> PathBuf {
    let out = target_dir().join("bigv-test-guest.raw");
    let script = bigv_image::workspace_root().join("qemu-tests/guest/build.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(&out)
        .env("CARGO_TARGET_DIR", target_dir())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("bash runs");
    assert!(status.success(), "qemu-tests/guest/build.sh failed");
    out
}

/// The cargo target directory this test or binary was built in
/// (`<target>/debug/deps/<test>` or `<target>/debug/<bin>` → `<target>`).
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let in_deps = exe.parent().is_some_and(|p| p.ends_with("deps"));
    exe.ancestors()
        .nth(if in_deps { 3 } else { 2 })
        .map(PathBuf::from)
        .unwrap_or_else(|| bigv_image::workspace_root().join("target"))
}

/// Fails (panics) with what to install when a host tool is missing: with
/// the slow tier on, a missing tool is a failure, never a skip.
pub fn require_host() {
    for (path, pkg) in [
        ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
        ("/usr/lib/ipxe/qemu/efi-virtio.rom", "ipxe-qemu"),
        ("/usr/lib/ipxe/undionly.kpxe", "ipxe"),
        ("/usr/sbin/ip", "iproute2"),
        ("/usr/bin/tcpdump", "tcpdump"),
    ] {
        assert!(
            std::path::Path::new(path).exists(),
            "{path} missing: apt-get install {pkg} (tools/setup-host.sh does)"
        );
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the harness creates a network namespace and taps: run it as root"
    );
}
