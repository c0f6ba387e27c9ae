//! End to end with a real PXE client and a real brain: the brain runs its
//! boot services (DHCP, TFTP, router advertisements, boot HTTP) on a
//! bridge in a network namespace this test creates, with a node image
//! added by `images::add`. A blank qemu VM (`-boot n`, no disc, TCG,
//! virtio-net with Debian's iPXE ROM) that the brain has never seen:
//!
//! 1. gets an address from the brain's DHCP (enrollment is open) and the
//!    URL of its per-node script;
//! 2. fetches the script, then Debian's kernel and both initrds over
//!    HTTP from the brain's image store, and boots the kernel;
//! 3. our stand-in /init (busybox, from the `initramfs` crate; the real
//!    init comes from `nodeos/`) prints a marker and the kernel command
//!    line on the serial console and powers off;
//!
//! and then the command line must carry the bigv.* arguments the brain
//! promised (role, image version, spine address, certificate pin, the
//! boot NIC's MAC expanded by iPXE), both initrds must have been unpacked,
//! and `/admin/machines` must show the machine as enrolling, with its
//! lease and the image version it was given.
//!
//! Once with SeaBIOS, once with UEFI (OVMF).
//!
//! Slow (kernel boots under TCG: ~12 s BIOS, ~25 s UEFI): only with
//! BIGV_SLOW_TESTS=1. Needs root, `ip`, qemu-system-x86, ipxe-qemu, ovmf,
//! busybox-static and the kernel from tools/fetch-kernel.sh.

mod common;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bigv_brain::boot::{BootServicesConfig, images};
use bigv_brain::model::{Session, Settings};
use bigv_brain::{Brain, BrainConfig};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const MAC: &str = "52:54:00:00:00:11";
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const VERSION: &str = "e2e-1";
const LIMIT: Duration = Duration::from_secs(180);
const MARKER: &str = "BIGV-E2E-INIT";

fn sh(args: &[&str]) {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The namespace with br0 (10.0.0.1/24, fd00::1/64) and tap1 on it;
/// deleted on drop with everything in it.
struct Netns(String);

impl Netns {
    fn create(tag: &str) -> Netns {
        let name = format!("bigv-boot-{tag}-{}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        let n = ns.0.as_str();
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "-n",
            n,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        sh(&["ip", "-n", n, "addr", "add", "10.0.0.1/24", "dev", "br0"]);
        sh(&[
            "ip",
            "-n",
            n,
            "-6",
            "addr",
            "add",
            "fd00::1/64",
            "dev",
            "br0",
            "nodad",
        ]);
        sh(&["ip", "-n", n, "link", "set", "br0", "up"]);
        sh(&[
            "ip", "netns", "exec", n, "ip", "tuntap", "add", "tap1", "mode", "tap",
        ]);
        sh(&["ip", "-n", n, "link", "set", "tap1", "master", "br0", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Kills the qemu we started, by its PID, on drop.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The kernel directory from tools/fetch-kernel.sh.
fn kernel_dir() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/fetch-kernel.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("running tools/fetch-kernel.sh");
    assert!(
        out.status.success(),
        "tools/fetch-kernel.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The node image: Debian's kernel, a base initrd whose /init reports
/// and powers off, and a head initrd holding one marker file.
fn make_image(dir: &Path) {
    let opts = bigv_initramfs::Options::default();
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox missing: apt-get install busybox-static (tools/setup-host.sh does)");
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         /bin/busybox mount -t proc proc /proc\n\
         exec >/dev/ttyS0 2>&1\n\
         echo {MARKER}\n\
         echo \"BIGV-CMDLINE: $(/bin/busybox cat /proc/cmdline)\"\n\
         [ -f /etc/bigv-head ] && echo \"BIGV-HEAD-INITRD: $(/bin/busybox cat /etc/bigv-head)\"\n\
         /bin/busybox poweroff -f\n"
    );
    let mut base = bigv_initramfs::Archive::new();
    base.file("bin/busybox", 0o755, busybox).unwrap();
    base.file("init", 0o755, init).unwrap();
    base.dir("dev", 0o755).unwrap();
    base.dir("proc", 0o755).unwrap();
    let mut head = bigv_initramfs::Archive::new();
    head.file("etc/bigv-head", 0o644, "present").unwrap();

    std::fs::create_dir_all(dir).unwrap();
    let kernel = kernel_dir().join("vmlinuz");
    std::fs::copy(&kernel, dir.join("vmlinuz"))
        .unwrap_or_else(|e| panic!("{}: {e}", kernel.display()));
    std::fs::write(dir.join("initrd"), base.to_gzip(&opts).unwrap()).unwrap();
    std::fs::write(dir.join("initrd-head"), head.to_gzip(&opts).unwrap()).unwrap();
    let mut files = serde_json::Map::new();
    for name in ["vmlinuz", "initrd", "initrd-head"] {
        let data = std::fs::read(dir.join(name)).unwrap();
        files.insert(
            name.into(),
            json!({"sha256": hex::encode(Sha256::digest(&data)), "size": data.len()}),
        );
    }
    let manifest = json!({"version": VERSION, "files": files});
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
}

/// What the brain thread reports back.
struct Outcome {
    serial: Vec<String>,
    marks: Vec<(&'static str, f64)>,
    machines: Value,
    spine_port: u16,
    fingerprint: String,
}

/// Starts the brain inside the namespace (sockets belong to the namespace
/// of the thread that creates them), boots the VM, and reads the admin
/// API once the VM has powered off.
fn run_in_netns(ns: &str, data: PathBuf, firmware: Firmware) -> Outcome {
    let ns = ns.to_string();
    let handle = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // Runtime worker threads are spawned from this thread, so they
        // are in the namespace too.
        rt.block_on(brain_and_vm(ns, data, firmware))
    });
    handle.join().expect("the brain thread panicked")
}

/// What the VM boots with: SeaBIOS, or OVMF (UEFI; Debian's `ovmf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Firmware {
    Bios,
    Uefi,
    /// OVMF's own PXE client (the NIC's iPXE ROM removed): it fetches
    /// `ipxe.efi` over TFTP, which then DHCPs again as iPXE.
    UefiNativePxe,
}

const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

async fn brain_and_vm(ns: String, data: PathBuf, firmware: Firmware) -> Outcome {
    let mut config = BrainConfig::new(&data);
    config.bootstrap = Some(("admin".into(), "correct-horse-battery".into()));
    config.spine_addr = "0.0.0.0:0".parse().unwrap();
    config.initial_settings = Settings::default();
    let mut boot = BootServicesConfig::on_interface("br0", SERVER, "10.0.0.0/24".parse().unwrap());
    boot.lan.as_mut().unwrap().pool = (Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 200));
    boot.lan.as_mut().unwrap().ra_prefix = Some("fd00::/64".parse().unwrap());
    config.boot = Some(boot);
    let brain = Brain::start(config)
        .await
        .expect("the brain starts with boot services");
    let spine_port = brain.spine_addr.port();
    let fingerprint = brain.fingerprint.to_string();

    let t0 = Instant::now();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns, "qemu-system-x86_64"]);
    if firmware != Firmware::Bios {
        cmd.args(["-bios", OVMF]);
    }
    let rom = if firmware == Firmware::UefiNativePxe {
        ",romfile="
    } else {
        ""
    };
    let mut qemu = Qemu(
        cmd.args(["-accel", "tcg", "-m", "512", "-nographic", "-nodefaults"])
            .args(["-serial", "stdio", "-no-reboot", "-boot", "n"])
            .args(["-netdev", "tap,id=n0,ifname=tap1,script=no,downscript=no"])
            .args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={MAC}{rom}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64"),
    );
    let (tx, rx) = mpsc::channel::<String>();
    let out = qemu.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut buf = Vec::new();
        while r
            .read_until(b'\n', &mut buf)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            for part in String::from_utf8_lossy(&buf).split('\r') {
                let line = part.trim();
                if !line.is_empty() && tx.send(line.to_string()).is_err() {
                    return;
                }
            }
            buf.clear();
        }
    });
    let checkpoints: [(&str, &str); 5] = [
        ("dhcp", "net0: 10.0.0.100/255.255.255.0"),
        ("script", "booting image e2e-1 as head"),
        ("init", MARKER),
        ("cmdline", "BIGV-CMDLINE:"),
        ("head initrd", "BIGV-HEAD-INITRD:"),
    ];
    let mut serial = Vec::new();
    let mut marks: Vec<(&'static str, f64)> = Vec::new();
    let reading = tokio::task::spawn_blocking(move || {
        while marks.len() < checkpoints.len() {
            let left = LIMIT.saturating_sub(t0.elapsed());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    for (name, text) in checkpoints {
                        if line.contains(text) && !marks.iter().any(|(n, _)| *n == name) {
                            marks.push((name, t0.elapsed().as_secs_f64()));
                        }
                    }
                    serial.push(format!("[{:6.2}] {line}", t0.elapsed().as_secs_f64()));
                }
                Err(_) => break,
            }
        }
        (serial, marks)
    });
    let (serial, marks) = reading.await.unwrap();
    drop(qemu);

    // The admin API, as an operator sees it.
    let token = bigv_brain::password::new_secret();
    let now = brain.clock.now();
    let session = Session {
        token_sha256: bigv_brain::api::access::secret_hash(&token),
        username: "admin".into(),
        factors: vec!["password".into()],
        expires_at: now + 3600,
        created_at: now,
    };
    brain.db.write(move |tx| tx.put(session)).await.unwrap();
    let url = format!("http://{}/admin/machines", brain.api_addr);
    let mut machines = Value::Null;
    // The lease and script events are persisted by the boot task: give
    // it a moment.
    for _ in 0..50 {
        machines = reqwest::Client::new()
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let m = machines
            .as_array()
            .and_then(|a| a.iter().find(|m| m["mac"] == MAC));
        if m.is_some_and(|m| m["address"].is_string() && m["booted_version"].is_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    brain.shutdown().await;
    Outcome {
        serial,
        marks,
        machines,
        spine_port,
        fingerprint,
    }
}

#[test]
fn a_blank_machine_network_boots_from_the_brain_and_enrolls() {
    boots_and_enrolls(
        "a_blank_machine_network_boots_from_the_brain_and_enrolls",
        Firmware::Bios,
    );
}

/// The same with UEFI firmware: iPXE is an EFI application, the kernel
/// boots through its EFI stub, which finds the initrds by the
/// `initrd=` arguments.
#[test]
fn a_blank_uefi_machine_network_boots_from_the_brain_and_enrolls() {
    boots_and_enrolls(
        "a_blank_uefi_machine_network_boots_from_the_brain_and_enrolls",
        Firmware::Uefi,
    );
}

/// UEFI firmware's own PXE client: DHCP gives it `ipxe.efi` over TFTP
/// (Debian's, from the brain's TFTP server); iPXE then asks again, is
/// recognised by its user class and gets its script over HTTP.
#[test]
fn uefi_pxe_firmware_chains_to_ipxe_over_tftp() {
    boots_and_enrolls(
        "uefi_pxe_firmware_chains_to_ipxe_over_tftp",
        Firmware::UefiNativePxe,
    );
}

fn boots_and_enrolls(name: &str, firmware: Firmware) {
    if std::env::var("BIGV_SLOW_TESTS").as_deref() != Ok("1") {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {name}: the brain's PXE end-to-end test (qemu + network namespace + a kernel boot under TCG) runs only with BIGV_SLOW_TESTS=1"
        );
        return;
    }
    if firmware != Firmware::Bios {
        assert!(
            Path::new(OVMF).exists(),
            "{OVMF} missing: apt-get install ovmf (tools/setup-host.sh does)"
        );
    }
    let rom = "/usr/lib/ipxe/qemu/efi-virtio.rom";
    assert!(
        Path::new(rom).exists(),
        "{rom} missing: apt-get install ipxe-qemu qemu-system-x86 (tools/setup-host.sh does)"
    );
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test creates a network namespace and a tap: run it as root"
    );

    let data = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    make_image(src.path());
    images::add(data.path(), src.path()).expect("the image is added");

    let ns = Netns::create(match firmware {
        Firmware::Bios => "bios",
        Firmware::Uefi => "uefi",
        Firmware::UefiNativePxe => "efipxe",
    });
    let out = run_in_netns(&ns.0, data.path().to_path_buf(), firmware);
    drop(ns);

    println!("serial console:\n{}", out.serial.join("\n"));
    for (name, t) in &out.marks {
        println!("{name:>12} reached at {t:.2} s after qemu start");
    }
    assert_eq!(
        out.marks.len(),
        5,
        "the VM did not get through every stage within {LIMIT:?}; reached {:?}",
        out.marks
    );
    let line = out
        .serial
        .iter()
        .find(|l| l.contains("BIGV-CMDLINE:"))
        .unwrap();
    let cmdline: Vec<&str> = line
        .split("BIGV-CMDLINE:")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    let spine = format!("bigv.spine=10.0.0.1:{}", out.spine_port);
    let pin = format!("bigv.pin={}", out.fingerprint);
    for want in [
        "bigv.role=head",
        "bigv.version=e2e-1",
        spine.as_str(),
        pin.as_str(),
        "bigv.bootif=52:54:00:00:00:11",
        "console=ttyS0,115200",
        "initrd=initrd",
        "initrd=initrd-head",
    ] {
        assert!(cmdline.contains(&want), "{want} missing from {cmdline:?}");
    }
    assert!(
        out.serial
            .iter()
            .any(|l| l.contains("BIGV-HEAD-INITRD: present")),
        "the head initrd was not unpacked"
    );

    let machine = out
        .machines
        .as_array()
        .and_then(|a| a.iter().find(|m| m["mac"] == MAC))
        .unwrap_or_else(|| panic!("{MAC} not in /admin/machines: {}", out.machines));
    assert_eq!(machine["state"], "enrolling", "{machine}");
    assert_eq!(machine["role"], "head", "{machine}");
    assert_eq!(machine["registered"], false, "{machine}");
    assert_eq!(machine["booted_version"], VERSION, "{machine}");
    assert_eq!(machine["address"], "10.0.0.100", "{machine}");
}
