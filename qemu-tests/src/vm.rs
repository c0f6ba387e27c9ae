//! A blank machine: qemu (TCG) with no disc, a virtio NIC on a tap of the
//! namespace's boot bridge (and more on other LANs, without boot ROMs),
//! network boot (`-boot n`, Debian's iPXE ROM) —
//! or, to compare against, the same machine booted directly with
//! `-kernel/-initrd` — its serial console written to a file. Killed by PID
//! on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Instant;

use crate::netns::Netns;

pub struct VmSpec<'a> {
    pub mac: &'a str,
    pub tap: &'a str,
    pub memory_mib: u32,
    /// `-cpu`: heads get `qemu64,+svm,+npt` so KVM works inside them.
    pub cpu: Option<&'a str>,
    /// None: PXE, as real nodes boot. Some: qemu loads the kernel itself.
    pub direct: Option<&'a DirectBoot>,
    /// A raw file attached as the machine's (virtio) data disc: `vda`.
    pub data_disc: Option<&'a Path>,
    /// NICs after the boot one, as (tap, MAC): `eth1`, `eth2`… in the
    /// machine, in this order.
    pub more_nics: &'a [(String, String)],
}

/// What iPXE would have loaded, handed to qemu instead.
pub struct DirectBoot {
    pub kernel: PathBuf,
    /// One file: the kernel unpacks concatenated archives in order, as
    /// it does the several initrds iPXE loads.
    pub initrd: PathBuf,
    pub cmdline: String,
}

pub struct Vm {
    child: Child,
    pub serial: PathBuf,
    /// qemu's QMP socket (next to the serial log): [`Vm::set_link`].
    pub qmp: PathBuf,
    pub powered_on: Instant,
    /// Its NICs' qemu ids, `nic0` (boot) first.
    nics: Vec<String>,
}

impl Vm {
    /// Powers the machine on; `serial` receives its console, `stderr`
    /// qemu's own messages.
    pub fn power_on(ns: &Netns, spec: &VmSpec, serial: &Path, stderr: &Path) -> Vm {
        let mut cmd = ns.exec("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-smp", "1"])
            .args(["-m", &spec.memory_mib.to_string()]);
        if let Some(cpu) = spec.cpu {
            cmd.args(["-cpu", cpu]);
        }
        let err = std::fs::File::create(stderr).expect("qemu's stderr file");
        cmd
            // -nographic (not -display none) is what turns on SeaBIOS's and
            // iPXE's serial console: the DHCP and script lines are there.
            // No -no-reboot: a node reboots as a real one does (a rolling
            // upgrade reboots every node onto the new image).
            .args(["-nographic", "-nodefaults"]);
        match spec.direct {
            None => cmd.args(["-boot", "n"]),
            Some(d) => cmd
                .arg("-kernel")
                .arg(&d.kernel)
                .arg("-initrd")
                .arg(&d.initrd)
                .args(["-append", &d.cmdline]),
        };
        if let Some(disc) = spec.data_disc {
            cmd.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio,cache=unsafe",
                disc.display()
            ));
        }
        let qmp = serial.with_extension("qmp");
        let _ = std::fs::remove_file(&qmp);
        cmd.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        cmd.arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={},script=no,downscript=no", spec.tap),
            ])
            .args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,id=nic0,mac={}", spec.mac),
            ]);
        let mut nics = vec!["nic0".to_owned()];
        for (i, (tap, mac)) in spec.more_nics.iter().enumerate() {
            let i = i + 1;
            cmd.args([
                "-netdev",
                &format!("tap,id=n{i},ifname={tap},script=no,downscript=no"),
            ])
            // No ROM: only the boot NIC network-boots.
            .args([
                "-device",
                &format!("virtio-net-pci,netdev=n{i},id=nic{i},mac={mac},romfile="),
            ]);
            nics.push(format!("nic{i}"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("qemu-system-x86_64 (tools/setup-host.sh installs it)");
        Vm {
            child,
            serial: serial.to_owned(),
            qmp,
            powered_on: Instant::now(),
            nics,
        }
    }

    /// The console so far (lossy UTF-8).
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    pub fn saw(&self, needle: &str) -> bool {
        self.console().contains(needle)
    }

    /// Whether qemu has exited (it never should in these scenarios).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Pulls (`up: false`) or plugs back all the machine's network
    /// cables: QMP `set_link` on each NIC. The guest sees carrier loss.
    pub fn set_link(&self, up: bool) {
        for nic in &self.nics {
            self.qmp(&format!(
                r#"{{"execute":"set_link","arguments":{{"name":"{nic}","up":{up}}}}}"#
            ));
        }
    }

    /// Power-cycles the machine: QMP `system_reset`, the reset button. It
    /// boots again from scratch (network boot), as after a power cut.
    pub fn power_cycle(&self) {
        self.qmp(r#"{"execute":"system_reset"}"#);
    }

    /// Runs one QMP command; panics unless qemu answers `return`.
    fn qmp(&self, command: &str) {
        use std::io::{BufRead, BufReader, Write};
        let sock = std::os::unix::net::UnixStream::connect(&self.qmp)
            .unwrap_or_else(|e| panic!("QMP {}: {e}", self.qmp.display()));
        sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("a read timeout");
        let mut reader = BufReader::new(sock.try_clone().expect("the QMP socket"));
        let mut w = sock;
        // The greeting, then capabilities negotiation, then the command;
        // events may come in between.
        let mut answer = |what: &str| loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("reading QMP");
            assert!(n > 0, "QMP closed waiting for {what}");
            if line.contains("\"return\"") || line.contains("\"QMP\"") {
                return;
            }
            assert!(!line.contains("\"error\""), "QMP {what}: {line}");
        };
        answer("the greeting");
        writeln!(w, r#"{{"execute":"qmp_capabilities"}}"#).expect("writing QMP");
        answer("qmp_capabilities");
        writeln!(w, "{command}").expect("writing QMP");
        answer(command);
    }

    /// Pulls the power: SIGKILLs qemu (no shutdown, no goodbye on the
    /// network) and reaps it.
    pub fn power_off_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // `ip netns exec` execs qemu: this PID is qemu's.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
