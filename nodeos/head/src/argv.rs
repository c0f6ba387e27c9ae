//! `vm.NAME` resource → qemu command line. A pure function of the
//! resource, the head's settings and the VM's paths, so it is tested
//! without qemu.
//!
//! Values that land inside qemu's `key=value,…` option strings are
//! either checked (MACs, keymaps, models) or escaped (`,` → `,,`, paths
//! and URLs); discs and the CD go through `-blockdev` JSON, which needs
//! no escaping at all.

use std::path::{Path, PathBuf};

use bigv_spine::resource::{VmDisc, VmSpec};
use serde_json::json;

/// The port a tail serves discs on when an address names none.
pub const NBD_PORT: u16 = 10809;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    Kvm,
    Tcg,
}

/// What backs the VMs' NICs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NicBackend {
    /// No NICs are given to the VM (logged).
    #[default]
    None,
    /// qemu user-mode networking, `restrict=on`: the guest reaches
    /// nothing outside qemu (tests).
    User,
    /// A tap per NIC on its VLAN's bridge (`crate::net`; the trunk is
    /// in the head's config). The taps exist before qemu starts.
    Bridged,
}

/// The head's settings that shape every command line.
#[derive(Debug, Clone)]
pub struct QemuSettings {
    pub accel: Accel,
    pub nic_backend: NicBackend,
    /// How long a disc waits for its tail to come back before I/O fails.
    pub nbd_reconnect_delay_secs: u32,
    /// How long qemu keeps trying the first NBD connection at start.
    pub nbd_open_timeout_secs: u32,
    /// Accept a CD that is a file on the head (an absolute path). Off in
    /// production: a customer must not read the head's files; tests use it.
    pub local_cdrom: bool,
}

/// Where one VM's sockets and files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    pub dir: PathBuf,
    pub qmp: PathBuf,
    pub serial: PathBuf,
    pub vnc: PathBuf,
    pub pidfile: PathBuf,
    pub spec: PathBuf,
    /// qemu's own stderr.
    pub qemu_log: PathBuf,
    /// Serial scroll-back since power-on (qemu's chardev `logfile`).
    pub serial_log: PathBuf,
    /// The cloud-init seed drive's image (see [`crate::seed`]).
    pub seed: PathBuf,
}

impl VmPaths {
    /// `run_dir/vm.NAME/…` for sockets; the serial log in `log_dir`.
    pub fn new(run_dir: &Path, log_dir: &Path, name: &str) -> VmPaths {
        let dir = run_dir.join(format!("vm.{name}"));
        VmPaths {
            qmp: dir.join("qmp.sock"),
            serial: dir.join("serial.sock"),
            vnc: dir.join("vnc.sock"),
            pidfile: dir.join("qemu.pid"),
            spec: dir.join("spec.json"),
            qemu_log: dir.join("qemu.log"),
            seed: dir.join("seed.img"),
            serial_log: log_dir.join(format!("vm.{name}.serial.log")),
            dir,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ArgError {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> ArgError {
    ArgError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The two hardware profiles the brain offers. The resource carries
/// per-device models; the profile follows from them: any `e1000` NIC or
/// `ide` disc means the compatibility profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Virtio,
    Compatibility,
}

pub fn profile(spec: &VmSpec) -> Profile {
    let compat = spec.network_interfaces.iter().any(|n| n.model == "e1000")
        || spec.discs.iter().any(|d| d.model == "ide");
    if compat {
        Profile::Compatibility
    } else {
        Profile::Virtio
    }
}

/// An NBD disc address: `nbd:HOST:PORT`, `nbd:[V6]:PORT` (what the brain
/// sends), optionally `:exportname=NAME`, or `nbd://HOST[:PORT][/NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdAddress {
    pub host: String,
    pub port: u16,
    pub export: Option<String>,
}

pub fn parse_nbd(address: &str) -> Result<NbdAddress, String> {
    let (hostport, export) = if let Some(rest) = address.strip_prefix("nbd://") {
        match rest.split_once('/') {
            Some((hp, e)) if !e.is_empty() => (hp, Some(e.to_owned())),
            Some((hp, _)) => (hp, None),
            None => (rest, None),
        }
    } else if let Some(rest) = address.strip_prefix("nbd:") {
        match rest.split_once(":exportname=") {
            Some((hp, e)) => (hp, Some(e.to_owned())),
            None => (rest, None),
        }
    } else {
        return Err(format!("{address:?} is not an nbd: address"));
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, rest) = v6
            .split_once(']')
            .ok_or_else(|| format!("{address:?}: unclosed '['"))?;
        match rest {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("{address:?}: junk after ']'"))?,
                ),
            ),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        None => NBD_PORT,
        Some(p) => p
            .parse()
            .map_err(|_| format!("{address:?}: bad port {p:?}"))?,
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'%'));
    if !host_ok {
        return Err(format!("{address:?}: bad host {host:?}"));
    }
    if export.as_ref().is_some_and(|e| e.len() > 4096) {
        return Err(format!("{address:?}: export name too long"));
    }
    Ok(NbdAddress {
        host: host.to_owned(),
        port,
        export,
    })
}

/// qemu's escape for a comma inside an option value.
fn esc(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

fn check_mac(field: &str, mac: &str) -> Result<(), ArgError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(bad(field, format!("{mac:?} is not a MAC address")))
    }
}

fn check_word(field: &str, value: &str) -> Result<(), ArgError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(bad(field, format!("{value:?} is not a plain name")))
    }
}

/// The qemu block driver for a CD URL: http/https through qemu's curl
/// driver, or (only with `local`) an absolute path on the head.
pub fn cdrom_blockdev(url: &str, local: bool) -> Result<serde_json::Value, ArgError> {
    let (driver, key) = if url.starts_with("https://") {
        ("https", "url")
    } else if url.starts_with("http://") {
        ("http", "url")
    } else if local && url.starts_with('/') {
        ("file", "filename")
    } else {
        return Err(bad(
            "cdrom_url",
            format!("{url:?}: expected an http:// or https:// URL"),
        ));
    };
    Ok(json!({
        "driver": driver,
        key: url,
        "node-name": "cd0-media",
        "read-only": true,
    }))
}

fn disc_args(
    args: &mut Vec<String>,
    i: usize,
    disc: &VmDisc,
    settings: &QemuSettings,
) -> Result<(), ArgError> {
    let field = format!("discs[{i}]");
    let addr = parse_nbd(&disc.address).map_err(|e| bad(format!("{field}.address"), e))?;
    let node = format!("disc{i}");
    let mut nbd = json!({
        "driver": "nbd",
        "node-name": node,
        "server": {"type": "inet", "host": addr.host, "port": addr.port.to_string()},
        "reconnect-delay": settings.nbd_reconnect_delay_secs,
        "open-timeout": settings.nbd_open_timeout_secs,
        "cache": {"direct": true, "no-flush": false},
        "discard": "unmap",
    });
    if let Some(export) = &addr.export {
        nbd["export"] = json!(export);
    }
    args.push("-blockdev".into());
    args.push(nbd.to_string());
    let device = match disc.model.as_str() {
        "virtio" => "virtio-blk-pci",
        "ide" => "ide-hd",
        other => {
            return Err(bad(
                format!("{field}.model"),
                format!("{other:?}: expected virtio or ide"),
            ));
        }
    };
    let mut dev = format!("{device},id={node}-dev,drive={node},bootindex={i}");
    if let Some(serial) = &disc.serial {
        check_word(&format!("{field}.serial"), serial)?;
        dev.push_str(&format!(",serial={serial}"));
    }
    args.push("-device".into());
    args.push(dev);
    Ok(())
}

/// Devices one IDE channel of the `pc` machine takes: master and slave.
const IDE_UNITS_PER_CHANNEL: usize = 2;

/// The cloud-init seed drive, read-only, after the customer's discs and
/// never bootable: virtio-blk on the virtio profile; on the
/// compatibility profile an IDE CD drive (IDE discs cannot be read-only;
/// the image's 2048-byte sectors suit a CD). qemu 7.2 puts IDE devices
/// without a bus on the *second* channel (`ide.1`), so the discs and the
/// CD drive fill that and the seed takes `ide.0` unit 0; when they need
/// more than one channel the seed falls back to virtio-blk.
fn seed_args(args: &mut Vec<String>, spec: &VmSpec, paths: &VmPaths) {
    let node = json!({
        "driver": "file",
        "node-name": "seed0",
        "filename": paths.seed,
        "read-only": true,
    });
    args.push("-blockdev".into());
    args.push(node.to_string());
    let ide_used = spec.discs.iter().filter(|d| d.model == "ide").count() + 1;
    let device = if profile(spec) == Profile::Compatibility && ide_used <= IDE_UNITS_PER_CHANNEL {
        "ide-cd,id=seed0-dev,drive=seed0,bus=ide.0,unit=0"
    } else {
        "virtio-blk-pci,id=seed0-dev,drive=seed0"
    };
    args.push("-device".into());
    args.push(device.into());
}

/// The full argv after the binary name. `name` is the `NAME` of `vm.NAME`.
pub fn command_line(
    name: &str,
    spec: &VmSpec,
    settings: &QemuSettings,
    paths: &VmPaths,
) -> Result<Vec<String>, ArgError> {
    if spec.memory < 16 {
        return Err(bad("memory", "at least 16 MiB"));
    }
    if spec.cores == 0 || spec.cores > 255 {
        return Err(bad("cores", "1 to 255"));
    }
    check_word("keymap", &spec.keymap)?;
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(&["-name", &format!("vm.{name},process=bigv-vm.{name}")]);
    push(&["-nodefaults", "-no-user-config"]);
    if spec.incoming.is_some() {
        // A live migration's destination: nothing runs until the agent
        // opens the listener (`migrate-incoming`); qemu resumes the guest
        // itself when the stream is complete.
        push(&["-incoming", "defer"]);
    } else {
        // Paused until the agent has QMP: no event can be missed.
        push(&["-S"]);
    }
    match settings.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", "tcg"]),
    }
    push(&["-machine", "pc"]);
    push(&["-m", &spec.memory.to_string()]);
    push(&["-smp", &spec.cores.to_string()]);
    push(&["-pidfile", &paths.pidfile.to_string_lossy()]);
    push(&[
        "-chardev",
        &format!("socket,id=qmp,path={},server=on,wait=off", esc(&paths.qmp)),
        "-mon",
        "chardev=qmp,mode=control",
    ]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
            esc(&paths.serial),
            esc(&paths.serial_log)
        ),
        "-serial",
        "chardev:serial0",
    ]);
    push(&["-vga", "std"]);
    push(&["-vnc", &format!("unix:{}", esc(&paths.vnc))]);
    push(&["-k", &spec.keymap]);
    if spec.balloon_on {
        push(&["-device", "virtio-balloon-pci,id=balloon0"]);
    }
    for (i, disc) in spec.discs.iter().enumerate() {
        disc_args(&mut a, i, disc, settings)?;
    }
    // The CD boots after the discs (an empty disc falls through to it).
    let cd_boot = spec.discs.len();
    if let Some(url) = &spec.cdrom_url {
        a.push("-blockdev".into());
        a.push(cdrom_blockdev(url, settings.local_cdrom)?.to_string());
        a.push("-device".into());
        a.push(format!("ide-cd,id=cd0,drive=cd0-media,bootindex={cd_boot}"));
    } else {
        a.push("-device".into());
        a.push(format!("ide-cd,id=cd0,bootindex={cd_boot}"));
    }
    if spec.imager_options.is_some() {
        seed_args(&mut a, spec, paths);
    }
    if settings.nic_backend != NicBackend::None {
        for (i, nic) in spec.network_interfaces.iter().enumerate() {
            let field = format!("network_interfaces[{i}]");
            check_mac(&format!("{field}.mac"), &nic.mac)?;
            let device = match nic.model.as_str() {
                "virtio" => "virtio-net-pci",
                "e1000" => "e1000",
                other => {
                    return Err(bad(
                        format!("{field}.model"),
                        format!("{other:?}: expected virtio or e1000"),
                    ));
                }
            };
            a.push("-netdev".into());
            a.push(match settings.nic_backend {
                NicBackend::Bridged => format!(
                    "tap,id=net{i},ifname={},script=no,downscript=no",
                    crate::net::tap_name(name, i)
                ),
                _ => format!("user,id=net{i},restrict=on"),
            });
            a.push("-device".into());
            // romfile= empty: no iPXE ROM, VMs boot from their discs.
            a.push(format!("{device},netdev=net{i},mac={},romfile=", nic.mac));
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bigv_spine::resource::NetworkInterface;

    fn settings() -> QemuSettings {
        QemuSettings {
            accel: Accel::Tcg,
            nic_backend: NicBackend::User,
            nbd_reconnect_delay_secs: 300,
            nbd_open_timeout_secs: 30,
            local_cdrom: false,
        }
    }

    fn spec() -> VmSpec {
        VmSpec {
            memory: 512,
            cores: 2,
            balloon_on: true,
            keymap: "en-gb".into(),
            display_name: "web1.default.alice.bigv.test".into(),
            discs: vec![VmDisc {
                address: "nbd:[fd00::12]:10809".into(),
                model: "virtio".into(),
                serial: Some("vda".into()),
            }],
            network_interfaces: vec![NetworkInterface {
                mac: "52:54:00:12:34:56".into(),
                vlan_id: 1,
                model: "virtio".into(),
                ips: vec![],
                dhcp: None,
            }],
            ..Default::default()
        }
    }

    fn paths() -> VmPaths {
        VmPaths::new(
            Path::new("/run/bigv,head"),
            Path::new("/var/log/bigv"),
            "web1",
        )
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn parses_the_disc_addresses_the_brain_sends() {
        assert_eq!(
            parse_nbd("nbd:[fd00::12]:10809").unwrap(),
            NbdAddress {
                host: "fd00::12".into(),
                port: 10809,
                export: None
            }
        );
        assert_eq!(
            parse_nbd("nbd:10.0.0.5:1234:exportname=disc.sata.7").unwrap(),
            NbdAddress {
                host: "10.0.0.5".into(),
                port: 1234,
                export: Some("disc.sata.7".into())
            }
        );
        assert_eq!(parse_nbd("nbd://[::1]/d").unwrap().port, 10809);
        assert_eq!(parse_nbd("nbd://tail1:99").unwrap().host, "tail1");
        for bad in [
            "http://x",
            "nbd:[::1",
            "nbd:[::1]x",
            "nbd:host:port",
            "nbd:a,b:1",
            "nbd::1",
        ] {
            assert!(parse_nbd(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn virtio_vm_maps_to_qemu_arguments() {
        let a = command_line("web1", &spec(), &settings(), &paths()).unwrap();
        assert_eq!(after(&a, "-m"), ["512"]);
        assert_eq!(after(&a, "-smp"), ["2"]);
        assert_eq!(after(&a, "-accel"), ["tcg"]);
        assert_eq!(after(&a, "-k"), ["en-gb"]);
        assert!(a.contains(&"-S".to_string()), "starts paused");
        assert!(!a.contains(&"-incoming".to_string()));
        // A migration's destination waits for the stream instead.
        let mut incoming = spec();
        incoming.incoming = Some(bigv_spine::resource::VmIncoming {
            from: "head1".into(),
            endpoint: None,
        });
        let b = command_line("web1", &incoming, &settings(), &paths()).unwrap();
        assert_eq!(after(&b, "-incoming"), ["defer"]);
        assert!(!b.contains(&"-S".to_string()));
        // Commas in paths are doubled so they cannot start a new option.
        assert_eq!(
            after(&a, "-chardev")[0],
            "socket,id=qmp,path=/run/bigv,,head/vm.web1/qmp.sock,server=on,wait=off"
        );
        assert!(after(&a, "-chardev")[1].contains("logfile=/var/log/bigv/vm.web1.serial.log"));
        assert_eq!(after(&a, "-vnc"), ["unix:/run/bigv,,head/vm.web1/vnc.sock"]);
        let bd: serde_json::Value = serde_json::from_str(after(&a, "-blockdev")[0]).unwrap();
        assert_eq!(bd["driver"], "nbd");
        assert_eq!(bd["server"]["host"], "fd00::12");
        assert_eq!(bd["server"]["port"], "10809");
        assert_eq!(bd["reconnect-delay"], 300);
        let devices = after(&a, "-device");
        assert!(devices.contains(&"virtio-balloon-pci,id=balloon0"));
        assert!(
            devices.contains(&"virtio-blk-pci,id=disc0-dev,drive=disc0,bootindex=0,serial=vda")
        );
        assert!(
            devices.contains(&"ide-cd,id=cd0,bootindex=1"),
            "{devices:?}"
        );
        assert!(devices.contains(&"virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,romfile="));
        assert_eq!(after(&a, "-netdev"), ["user,id=net0,restrict=on"]);
    }

    #[test]
    fn compatibility_profile_kvm_and_cd() {
        let mut s = spec();
        s.discs[0].model = "ide".into();
        s.network_interfaces[0].model = "e1000".into();
        s.balloon_on = false;
        s.cdrom_url = Some("https://mirror.example/debian.iso".into());
        assert_eq!(profile(&s), Profile::Compatibility);
        assert_eq!(profile(&spec()), Profile::Virtio);
        let mut st = settings();
        st.accel = Accel::Kvm;
        let a = command_line("web1", &s, &st, &paths()).unwrap();
        assert_eq!(after(&a, "-cpu"), ["host"]);
        let devices = after(&a, "-device");
        assert!(devices.iter().any(|d| d.starts_with("ide-hd,")));
        assert!(devices.iter().any(|d| d.starts_with("e1000,")));
        assert!(!devices.iter().any(|d| d.contains("balloon")));
        assert!(devices.contains(&"ide-cd,id=cd0,drive=cd0-media,bootindex=1"));
        let cd: serde_json::Value = serde_json::from_str(after(&a, "-blockdev")[1]).unwrap();
        assert_eq!(cd["driver"], "https");
        assert_eq!(cd["url"], "https://mirror.example/debian.iso");
    }

    #[test]
    fn imager_options_attach_the_seed_drive_read_only_after_the_discs() {
        let a = command_line("web1", &spec(), &settings(), &paths()).unwrap();
        assert!(!a.iter().any(|x| x.contains("seed")), "no options, no seed");
        let mut s = spec();
        s.imager_options = Some(bigv_spine::resource::ImagerOptions {
            instance_id: "i-1".into(),
            ..Default::default()
        });
        let a = command_line("web1", &s, &settings(), &paths()).unwrap();
        let blockdevs = after(&a, "-blockdev");
        let seed: serde_json::Value = serde_json::from_str(blockdevs[1]).unwrap();
        assert_eq!(seed["driver"], "file");
        assert_eq!(seed["read-only"], true);
        assert_eq!(seed["filename"], "/run/bigv,head/vm.web1/seed.img");
        let devices = after(&a, "-device");
        let disc = devices
            .iter()
            .position(|d| d.starts_with("virtio-blk-pci,id=disc0"));
        let seed = devices
            .iter()
            .position(|d| *d == "virtio-blk-pci,id=seed0-dev,drive=seed0");
        assert!(disc.unwrap() < seed.unwrap(), "{devices:?}");
        // The compatibility profile puts it on an IDE CD drive on the first
        // channel; virtio-blk when the discs and the CD need both.
        s.discs[0].model = "ide".into();
        let a = command_line("web1", &s, &settings(), &paths()).unwrap();
        assert!(after(&a, "-device").contains(&"ide-cd,id=seed0-dev,drive=seed0,bus=ide.0,unit=0"));
        s.discs = vec![s.discs[0].clone(); 2];
        let a = command_line("web1", &s, &settings(), &paths()).unwrap();
        assert!(after(&a, "-device").contains(&"virtio-blk-pci,id=seed0-dev,drive=seed0"));
    }

    #[test]
    fn bridged_nics_use_their_taps() {
        let mut st = settings();
        st.nic_backend = NicBackend::Bridged;
        let a = command_line("web1", &spec(), &st, &paths()).unwrap();
        let tap = crate::net::tap_name("web1", 0);
        assert_eq!(
            after(&a, "-netdev"),
            [format!("tap,id=net0,ifname={tap},script=no,downscript=no")]
        );
        assert!(
            after(&a, "-device")
                .contains(&"virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,romfile=")
        );
    }

    #[test]
    fn nics_are_left_out_without_a_backend() {
        let mut st = settings();
        st.nic_backend = NicBackend::None;
        let a = command_line("web1", &spec(), &st, &paths()).unwrap();
        assert!(after(&a, "-netdev").is_empty());
    }

    #[test]
    fn bad_fields_are_named() {
        type Change = Box<dyn Fn(&mut VmSpec)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.memory = 0), "memory"),
            (Box::new(|s| s.cores = 0), "cores"),
            (Box::new(|s| s.keymap = "en,gb".into()), "keymap"),
            (
                Box::new(|s| s.discs[0].address = "iscsi://x".into()),
                "discs[0].address",
            ),
            (
                Box::new(|s| s.discs[0].model = "scsi".into()),
                "discs[0].model",
            ),
            (
                Box::new(|s| s.discs[0].serial = Some("a,b".into())),
                "discs[0].serial",
            ),
            (
                Box::new(|s| s.network_interfaces[0].mac = "52:54:00:12:34".into()),
                "network_interfaces[0].mac",
            ),
            (
                Box::new(|s| s.network_interfaces[0].model = "rtl8139".into()),
                "network_interfaces[0].model",
            ),
            (
                Box::new(|s| s.cdrom_url = Some("ftp://x".into())),
                "cdrom_url",
            ),
        ];
        for (change, field) in cases {
            let mut s = spec();
            change(&mut s);
            let e = command_line("web1", &s, &settings(), &paths()).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }
}
