//! The README's first command: `tools/demo.sh` brings up the demo cluster
//! in qemu and leaves `bigv` logged in to it, a customer server boots on
//! it; `tools/demo.sh down` removes everything it started. Run as the README says, with its state, API
//! port and CLI config moved somewhere private.
//!
//! Slow: three PXE boots under TCG; runs only with BIGV_SLOW_TESTS=1.
//! Needs root and the host tools of tools/setup-host.sh.

use std::path::Path;
use std::process::Command;

use bigv_test_guest::lines;
use serde_json::Value;

#[test]
fn demo_up_and_down() {
    if !bigv_qemu_tests::slow_tests_enabled("demo_up_and_down") {
        return;
    }
    bigv_qemu_tests::require_host();
    let root = bigv_image::workspace_root();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("demo");
    let config = tmp.path().join("bigv-config");
    let api = free_loopback_port();
    let script = |arg: &str| {
        Command::new("bash")
            .arg(root.join("tools/demo.sh"))
            .arg(arg)
            .env("BIGV_DEMO_DIR", &state)
            .env("BIGV_DEMO_API", &api)
            .env("BIGV_CONFIG_DIR", &config)
            .env("CARGO_TARGET_DIR", bigv_qemu_tests::target_dir())
            .output()
            .expect("running tools/demo.sh")
    };

    let up = script("up");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    let mut processes = std::fs::read_to_string(state.join("processes")).unwrap_or_default();
    if let Ok(pid) = std::fs::read_to_string(state.join("pid")) {
        processes.push_str(&format!("pid {}", pid.trim()));
    }
    // Whatever happens below, end what the demo started.
    let guard = Down(&script);
    assert!(up.status.success(), "tools/demo.sh failed:\n{said}");
    assert!(said.contains("The demo cluster is up"), "{said}");

    // bigv, as the script left it (logged in, profile default), sees the
    // cluster: two accepted heads and a tail, online.
    let bigv = |args: &[&str]| -> Value {
        let o = Command::new(bigv_qemu_tests::target_dir().join("debug/bigv"))
            .args(args)
            .arg("--json")
            .env("BIGV_CONFIG_DIR", &config)
            .env_remove("BIGV_USER")
            .env_remove("BIGV_PASS")
            .output()
            .unwrap();
        assert!(o.status.success(), "bigv {args:?}: {o:?}");
        serde_json::from_slice(&o.stdout).unwrap()
    };
    for (list, n) in [("heads", 2), ("tails", 1)] {
        let v = bigv(&["admin", "show", list]);
        let ready = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["online"] == true && n["admission"] == "accepted")
            .count();
        assert_eq!(ready, n, "{list}: {v:#}");
    }
    // The tail's blank data disc was formatted and mounted by init, as the
    // brain's command line said, and is served as a sata pool.
    let pools = bigv(&["admin", "show", "storage", "pools"]);
    let sata = pools
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["grade"] == "sata")
        .unwrap_or_else(|| panic!("no sata pool: {pools:#}"));
    let size_mib = sata["size"].as_u64().unwrap();
    assert!(
        (15 * 1024..=20 * 1024).contains(&size_mib),
        "the 20 GiB disc's pool: {sata:#}"
    );

    // What the demo is for: a customer server from the test guest template
    // boots on a qemu head with its disc on the qemu tail; the head echoes
    // the guest's console, which reaches the brain's log view.
    let o = Command::new(bigv_qemu_tests::target_dir().join("debug/bigv"))
        .args([
            "add",
            "server",
            "web1.default.demo",
            "--image",
            "bigv-test",
            "--memory",
            "256M",
            "--disc",
            "1G",
            "--no-wait",
        ])
        .env("BIGV_CONFIG_DIR", &config)
        .output()
        .unwrap();
    assert!(o.status.success(), "bigv add server: {o:?}");
    // It boots from its disc on the tail and gets its address by DHCP on
    // the demo's VLAN 1 (the heads' public NIC is their VLAN trunk).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    'booted: loop {
        for head in ["head1", "head2"] {
            let lines = bigv(&["admin", "show", "logs", "head", head, "--lines", "1000"]);
            let said = |what: &str| {
                lines
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|l| l["message"].as_str().is_some_and(|m| m.contains(what)))
            };
            if said(lines::DISC_OK) && said(&format!("{}lease ip=192.0.2.", lines::NET)) {
                break 'booted;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo server's guest never reported DISC OK and its DHCP lease: {:#}",
            bigv(&["show", "server", "web1.default.demo"])
        );
        std::thread::sleep(std::time::Duration::from_secs(2));
    }

    drop(guard);
    assert!(!state.exists(), "demo.sh down left {}", state.display());
    for line in processes.lines() {
        match line.split_once(' ') {
            Some(("pid", pid)) => assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "process {pid} still runs after demo.sh down"
            ),
            Some(("netns", ns)) => assert!(
                !Path::new(&format!("/var/run/netns/{ns}")).exists(),
                "namespace {ns} still exists after demo.sh down"
            ),
            _ => {}
        }
    }
}

/// Runs `tools/demo.sh down` on drop (also when an assertion failed).
struct Down<'a, F: Fn(&str) -> std::process::Output>(&'a F);

impl<F: Fn(&str) -> std::process::Output> Drop for Down<'_, F> {
    fn drop(&mut self) {
        let o = (self.0)("down");
        assert!(
            o.status.success() || std::thread::panicking(),
            "tools/demo.sh down: {o:?}"
        );
    }
}

fn free_loopback_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}
