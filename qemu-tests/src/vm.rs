//! A blank machine: qemu (TCG) with no disc, a virtio NIC on a tap of the
//! namespace's boot bridge (and more on other LANs, without boot ROMs),
//! network boot (`-boot n`, Debian's iPXE ROM) —
//! or, to compare against, the same machine booted directly with
//! `-kernel/-initrd` — its serial console written to a file. Killed by PID
//! on drop.
//!
//! A machine with [`VmSpec::no_reboot`] powers off instead of rebooting
//! (qemu exits); [`Vm::power_on_again`] starts it anew, by PXE or
//! directly, the console appended to the same file so the whole history
//! stays readable in one place.

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
    /// `-no-reboot`: a guest reboot makes qemu exit, and the harness
    /// decides how the machine boots next ([`Vm::power_on_again`]), as
    /// with a machine whose boot source the test controls. Off: a node
    /// reboots as a real one does, onto whatever the network gives it.
    pub no_reboot: bool,
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
    /// The console of every power-on, in order.
    pub serial: PathBuf,
    stderr: PathBuf,
    /// The latest power-on.
    pub powered_on: Instant,
    /// Its NICs' qemu ids, `nic0` (boot) first.
    nics: Vec<String>,
}

impl Vm {
    /// Powers the machine on; `serial` receives its console, `stderr`
    /// qemu's own messages (both started afresh).
    pub fn power_on(ns: &Netns, spec: &VmSpec, serial: &Path, stderr: &Path) -> Vm {
        let _ = std::fs::remove_file(serial);
        let _ = std::fs::remove_file(stderr);
        Vm {
            child: launch(ns, spec, serial, stderr),
            serial: serial.to_owned(),
            stderr: stderr.to_owned(),
            powered_on: Instant::now(),
            nics: nic_ids(spec),
        }
    }

    /// Powers the machine on again after its qemu exited (a guest reboot
    /// with [`VmSpec::no_reboot`]), as `spec` says this time: its console
    /// and qemu's messages go on in the same files. Panics if qemu still
    /// runs.
    pub fn power_on_again(&mut self, ns: &Netns, spec: &VmSpec) {
        assert!(
            self.exited(),
            "{}: powering on a machine whose qemu (pid {}) still runs",
            spec.mac,
            self.pid()
        );
        self.child = launch(ns, spec, &self.serial, &self.stderr);
        self.powered_on = Instant::now();
        self.nics = nic_ids(spec);
    }

    /// The console so far (lossy UTF-8).
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    pub fn saw(&self, needle: &str) -> bool {
        self.console().contains(needle)
    }

    /// Whether qemu has exited: the machine powered off, crashed, or (with
    /// [`VmSpec::no_reboot`]) rebooted.
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
        let path = qmp_socket(&self.serial);
        let sock = std::os::unix::net::UnixStream::connect(&path)
            .unwrap_or_else(|e| panic!("QMP {}: {e}", path.display()));
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

/// Its NICs' qemu ids: `nic0` (boot), then one per [`VmSpec::more_nics`].
fn nic_ids(spec: &VmSpec) -> Vec<String> {
    (0..=spec.more_nics.len())
        .map(|i| format!("nic{i}"))
        .collect()
}

/// qemu's QMP socket, next to the serial log: [`Vm::set_link`].
fn qmp_socket(serial: &Path) -> PathBuf {
    serial.with_extension("qmp")
}

/// Starts qemu for `spec`, appending to `serial` and `stderr`.
fn launch(ns: &Netns, spec: &VmSpec, serial: &Path, stderr: &Path) -> Child {
    let mut cmd = ns.exec("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-smp", "1"])
        .args(["-m", &spec.memory_mib.to_string()]);
    if let Some(cpu) = spec.cpu {
        cmd.args(["-cpu", cpu]);
    }
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr)
        .expect("qemu's stderr file");
    // -nographic (not -display none) is what turns on SeaBIOS's and
    // iPXE's serial console: the DHCP and script lines are there.
    cmd.args(["-nographic", "-nodefaults"]);
    if spec.no_reboot {
        cmd.arg("-no-reboot");
    }
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
    let qmp = qmp_socket(serial);
    let _ = std::fs::remove_file(&qmp);
    cmd.arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
    // Appended, so a machine powered on again keeps its earlier boots'
    // console in the same file (scenarios read the whole history).
    cmd.args([
        "-chardev",
        // (qemu's option syntax: a comma in a value is written twice)
        &format!(
            "file,id=serial0,path={},append=on",
            serial.display().to_string().replace(',', ",,")
        ),
        "-serial",
        "chardev:serial0",
    ]);
    cmd.args([
        "-netdev",
        &format!("tap,id=n0,ifname={},script=no,downscript=no", spec.tap),
    ])
    .args([
        "-device",
        &format!("virtio-net-pci,netdev=n0,id=nic0,mac={}", spec.mac),
    ]);
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
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("qemu-system-x86_64 (tools/setup-host.sh installs it)")
}

impl Drop for Vm {
    fn drop(&mut self) {
        // `ip netns exec` execs qemu: this PID is qemu's.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
