//! The test guest image boots under qemu (TCG) from a plain disc, as a
//! customer VM would: syslinux → kernel → our /init, boot line, ticks,
//! data pattern, serial commands; then the same disc boots on the
//! compatibility model (IDE) and sees the first boot's pattern.
//! Slow tier: runs only with BIGV_SLOW_TESTS=1.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bigv_test_guest::lines;

const BOOT_WAIT: Duration = Duration::from_secs(120);

struct Vm {
    child: Child,
    stdin: ChildStdin,
    log: Arc<Mutex<Vec<String>>>,
}

impl Vm {
    fn boot(disc: &Path, interface: &str) -> Vm {
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", "256", "-nographic", "-nodefaults"])
            .args(["-serial", "stdio", "-no-reboot"])
            .arg("-drive")
            .arg(format!("file={},format=raw,if={interface}", disc.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64 runs (tools/setup-host.sh installs it)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let line = line.replace('\r', "");
                eprintln!("guest: {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Vm { child, stdin, log }
    }

    fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + BOOT_WAIT;
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| pred(l)) {
                return l.clone();
            }
            assert!(Instant::now() < deadline, "no {what} within {BOOT_WAIT:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn type_line(&mut self, text: &str) {
        self.stdin
            .write_all(format!("{text}\n").as_bytes())
            .unwrap();
        self.stdin.flush().unwrap();
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "qemu did not exit");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn build_image(out: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("build.sh");
    let status = Command::new("bash")
        .arg(script)
        .arg(out)
        .stdout(Stdio::null())
        .status()
        .expect("bash runs");
    assert!(status.success(), "qemu-tests/guest/build.sh failed");
}

#[test]
fn guest_image_boots_from_its_disc_and_keeps_its_data() {
    if std::env::var_os("BIGV_SLOW_TESTS").is_none() {
        eprintln!("skipped: set BIGV_SLOW_TESTS=1 to boot the test guest under qemu");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disc = dir.path().join("guest.raw");
    build_image(&disc);

    // Virtio model: boot line, ticks a second apart, pattern, commands.
    let mut vm = Vm::boot(&disc, "virtio");
    let boot = vm.wait_line("boot line", |l| lines::boot_id(l).is_some());
    let id = lines::boot_id(&boot).unwrap().to_owned();
    let disc_line = vm.wait_line("disc check", |l| {
        l.contains(lines::DISC_OK) || l.contains(lines::DISC_FAIL)
    });
    assert!(disc_line.contains("DISC OK dev=/dev/vda"), "{disc_line}");
    assert!(disc_line.contains("previous=none"), "{disc_line}");
    let t3 = vm.wait_line("tick 3", |l| lines::tick(l).is_some_and(|(n, _)| n == 3));
    let t1 = vm.wait_line("tick 1", |l| lines::tick(l).is_some_and(|(n, _)| n == 1));
    let (u1, u3) = (lines::tick(&t1).unwrap().1, lines::tick(&t3).unwrap().1);
    assert!(
        (1.5..2.5).contains(&(u3 - u1)),
        "ticks a second apart: {u1} {u3}"
    );
    vm.type_line("status");
    let status = vm.wait_line("status answer", |l| l.starts_with(lines::STATUS));
    assert!(status.contains(&format!("boot_id={id}")), "{status}");
    assert!(status.contains("disc=ok:/dev/vda"), "{status}");
    vm.type_line("poweroff");
    assert!(vm.wait_exit().success(), "guest powered qemu off");
    drop(vm);

    // Compatibility model (IDE): the disc still boots and holds the
    // first boot's pattern.
    let vm = Vm::boot(&disc, "ide");
    let boot = vm.wait_line("boot line (ide)", |l| lines::boot_id(l).is_some());
    assert_ne!(lines::boot_id(&boot).unwrap(), id, "a new boot, a new id");
    let disc_line = vm.wait_line("disc check (ide)", |l| {
        l.contains(lines::DISC_OK) || l.contains(lines::DISC_FAIL)
    });
    assert!(disc_line.contains("DISC OK dev=/dev/sda"), "{disc_line}");
    assert!(disc_line.contains(&format!("previous={id}")), "{disc_line}");
}
