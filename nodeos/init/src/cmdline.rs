//! The kernel command line the brain's iPXE script writes (docs/boot.md):
//!
//! ```text
//! console=ttyS0,115200 bigv.role=tail bigv.version=2026.11.1
//! bigv.spine=10.0.0.1:4433 bigv.pin=sha256:<64 hex> bigv.bootif=52:54:00:00:00:11
//! ```
//!
//! Optional, for tails: `bigv.pool=NAME:GRADE:DIR` (repeatable) names the
//! storage pools the tail agent serves, and `bigv.disc=DEV:DIR[:format]`
//! (repeatable) mounts the data disc `/dev/DEV` on `DIR` before the agent
//! starts, formatting it as ext4 only if it is blank and `:format` is
//! given (see `disc.rs`). `bigv.templates=URL` (the brain adds it) is
//! where a tail fetches OS templates it has no copy of;
//! `bigv.log=FILTER` is the agent's log filter (`RUST_LOG`, default
//! `info`). For heads, `bigv.trunk=IFNAME` names the interface carrying
//! the VMs' VLANs (tagged): the head then gives VMs bridged taps
//! (docs/head.md, "Networking"); without it VMs get no NICs.
//! `bigv.storage=IFNAME bigv.storage_prefix=PREFIX/64` (the brain adds
//! both with `--boot-storage-interface`) put the node on a storage LAN of
//! its own: init gives that NIC the node's storage address (see
//! [`StorageLan::address`]). Unknown `bigv.*` arguments are
//! refused (a typo must not silently change behaviour); arguments without
//! the `bigv.` prefix belong to the kernel and are ignored.

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Head,
    Tail,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Head => "head",
            Role::Tail => "tail",
        }
    }

    /// The agent binary init runs for this role.
    pub fn agent_path(self) -> &'static str {
        match self {
            Role::Head => "/bin/bigv-head",
            Role::Tail => "/bin/bigv-tail",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let mut out = [0u8; 6];
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
        }
        for (slot, part) in out.iter_mut().zip(&parts) {
            if part.len() != 2 {
                return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
            }
            *slot = u8::from_str_radix(part, 16)
                .map_err(|_| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A storage pool for the tail agent, `NAME:GRADE:DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolArg {
    pub name: String,
    pub grade: String,
    pub dir: String,
}

impl fmt::Display for PoolArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.name, self.grade, self.dir)
    }
}

/// A data disc to mount, `DEV:DIR[:format]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscArg {
    /// A kernel block device name: `vdb`, `sdb`, `nvme0n1`.
    pub device: String,
    pub dir: String,
    /// Format it (ext4) if, and only if, it is blank.
    pub format: bool,
}

/// What init needs from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub role: Role,
    /// The image version the brain expects this node to run.
    pub version: String,
    /// The brain's spine listener.
    pub spine: SocketAddr,
    /// `sha256:<64 hex>`, the brain certificate's fingerprint.
    pub pin: String,
    /// The NIC iPXE booted from; `None` means "the first non-loopback".
    pub bootif: Option<Mac>,
    pub pools: Vec<PoolArg>,
    pub discs: Vec<DiscArg>,
    /// `http://…/templates`: where OS templates are fetched from (tails).
    pub templates: Option<String>,
    /// The agent's `RUST_LOG`.
    pub log: Option<String>,
    /// Heads: the interface carrying the VMs' VLANs.
    pub trunk: Option<String>,
    /// The NIC on a storage LAN of its own, and that LAN's prefix.
    pub storage: Option<StorageLan>,
}

/// A storage LAN separate from the boot LAN (`bigv.storage`,
/// `bigv.storage_prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageLan {
    pub interface: String,
    /// A /64: discs' own addresses are `PREFIX::<disc id>` (the brain's),
    /// nodes' are [`StorageLan::address`].
    pub prefix: Ipv6Addr,
}

impl StorageLan {
    /// This node's storage address: `PREFIX::fffe:<the storage NIC's
    /// MAC>`, e.g. `fd00:5::fffe:5254:8f:101`. Stable across reboots and
    /// unique per NIC without asking anyone; the `fffe` keeps it clear of
    /// the discs' addresses, which count up from `PREFIX::1`.
    pub fn address(&self, mac: Mac) -> Ipv6Addr {
        let mac48 = mac.0.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
        let iid = (0xfffe_u64 << 48) | mac48;
        let net = u128::from(self.prefix) & !u128::from(u64::MAX);
        Ipv6Addr::from(net | u128::from(iid))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error("kernel command line: {arg} is missing")]
    Missing { arg: &'static str },
    #[error("kernel command line: {arg}={value:?}: {why}")]
    Invalid {
        arg: String,
        value: String,
        why: String,
    },
    #[error("kernel command line: {arg} is given twice")]
    Duplicate { arg: String },
    #[error("kernel command line: unknown argument {arg} (a typo?)")]
    Unknown { arg: String },
}

fn invalid(arg: &str, value: &str, why: impl Into<String>) -> CmdlineError {
    CmdlineError::Invalid {
        arg: arg.into(),
        value: value.into(),
        why: why.into(),
    }
}

/// Parses `/proc/cmdline`'s contents.
pub fn parse(cmdline: &str) -> Result<BootConfig, CmdlineError> {
    let mut role = None;
    let mut version = None;
    let mut spine = None;
    let mut pin = None;
    let mut bootif = None;
    let mut pools = Vec::new();
    let mut discs: Vec<DiscArg> = Vec::new();
    let mut templates = None;
    let mut log = None;
    let mut trunk = None;
    let mut storage = None;
    let mut storage_prefix = None;
    for word in cmdline.split_ascii_whitespace() {
        let Some(rest) = word.strip_prefix("bigv.") else {
            continue;
        };
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        let arg = format!("bigv.{key}");
        fn once<T>(slot: &mut Option<T>, arg: &str, v: T) -> Result<(), CmdlineError> {
            if slot.is_some() {
                return Err(CmdlineError::Duplicate { arg: arg.into() });
            }
            *slot = Some(v);
            Ok(())
        }
        match key {
            "role" => {
                let r = match value {
                    "head" => Role::Head,
                    "tail" => Role::Tail,
                    _ => return Err(invalid(&arg, value, "expected head or tail")),
                };
                once(&mut role, &arg, r)?;
            }
            "version" => {
                let ok = !value.is_empty()
                    && value.len() <= 64
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
                if !ok {
                    return Err(invalid(
                        &arg,
                        value,
                        "expected 1-64 of letters, digits, '.', '_', '+', '-'",
                    ));
                }
                once(&mut version, &arg, value.to_owned())?;
            }
            "spine" => {
                let addr: SocketAddr = value
                    .parse()
                    .map_err(|_| invalid(&arg, value, "expected ip:port"))?;
                if addr.port() == 0 {
                    return Err(invalid(&arg, value, "port 0"));
                }
                once(&mut spine, &arg, addr)?;
            }
            "pin" => {
                let hex = value
                    .strip_prefix("sha256:")
                    .ok_or_else(|| invalid(&arg, value, "expected sha256:<64 hex digits>"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(&arg, value, "expected sha256:<64 hex digits>"));
                }
                once(
                    &mut pin,
                    &arg,
                    format!("sha256:{}", hex.to_ascii_lowercase()),
                )?;
            }
            "bootif" => {
                let mac: Mac = value.parse().map_err(|e: String| invalid(&arg, value, e))?;
                once(&mut bootif, &arg, mac)?;
            }
            "pool" => {
                let mut parts = value.splitn(3, ':');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(name), Some(grade), Some(dir))
                        if !name.is_empty() && !grade.is_empty() && dir.starts_with('/') =>
                    {
                        pools.push(PoolArg {
                            name: name.into(),
                            grade: grade.into(),
                            dir: dir.into(),
                        })
                    }
                    _ => return Err(invalid(&arg, value, "expected NAME:GRADE:/DIR")),
                }
            }
            "disc" => {
                let mut parts = value.split(':');
                let (dev, dir, flag) = (parts.next(), parts.next(), parts.next());
                let dev_ok = |d: &str| {
                    !d.is_empty() && d.len() <= 32 && d.bytes().all(|b| b.is_ascii_alphanumeric())
                };
                let disc = match (dev, dir, flag, parts.next()) {
                    (Some(dev), Some(dir), flag, None)
                        if dev_ok(dev)
                            && dir.starts_with('/')
                            && dir.len() > 1
                            && matches!(flag, None | Some("format")) =>
                    {
                        DiscArg {
                            device: dev.into(),
                            dir: dir.into(),
                            format: flag.is_some(),
                        }
                    }
                    _ => return Err(invalid(&arg, value, "expected DEV:/DIR[:format]")),
                };
                if discs
                    .iter()
                    .any(|d| d.device == disc.device || d.dir == disc.dir)
                {
                    return Err(invalid(&arg, value, "device or directory used twice"));
                }
                discs.push(disc);
            }
            "templates" => {
                let ok = value.starts_with("http://")
                    && value.len() > 7
                    && value.bytes().all(|b| b.is_ascii_graphic());
                if !ok {
                    return Err(invalid(&arg, value, "expected an http:// URL"));
                }
                once(&mut templates, &arg, value.trim_end_matches('/').to_owned())?;
            }
            "log" => {
                let ok = !value.is_empty()
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_:=,.-".contains(&b));
                if !ok {
                    return Err(invalid(
                        &arg,
                        value,
                        "expected a log filter such as info,bigv_head=debug",
                    ));
                }
                once(&mut log, &arg, value.to_owned())?;
            }
            "trunk" => once(&mut trunk, &arg, interface(&arg, value)?)?,
            "storage" => once(&mut storage, &arg, interface(&arg, value)?)?,
            "storage_prefix" => {
                let prefix = value
                    .strip_suffix("/64")
                    .and_then(|a| a.parse::<Ipv6Addr>().ok())
                    .ok_or_else(|| {
                        invalid(&arg, value, "expected an IPv6 /64, e.g. fd00:5::/64")
                    })?;
                once(&mut storage_prefix, &arg, prefix)?;
            }
            _ => return Err(CmdlineError::Unknown { arg }),
        }
    }
    let storage = match (storage, storage_prefix) {
        (Some(interface), Some(prefix)) => Some(StorageLan { interface, prefix }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(CmdlineError::Missing {
                arg: "bigv.storage_prefix (bigv.storage needs it)",
            });
        }
        (None, Some(_)) => {
            return Err(CmdlineError::Missing {
                arg: "bigv.storage (bigv.storage_prefix needs it)",
            });
        }
    };
    Ok(BootConfig {
        role: role.ok_or(CmdlineError::Missing { arg: "bigv.role" })?,
        version: version.ok_or(CmdlineError::Missing {
            arg: "bigv.version",
        })?,
        spine: spine.ok_or(CmdlineError::Missing { arg: "bigv.spine" })?,
        pin: pin.ok_or(CmdlineError::Missing { arg: "bigv.pin" })?,
        bootif,
        pools,
        discs,
        templates,
        log,
        trunk,
        storage,
    })
}

/// An interface name as the kernel allows it (and nothing a shell or a
/// netlink attribute would choke on).
fn interface(arg: &str, value: &str) -> Result<String, CmdlineError> {
    let ok = (1..16).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !ok {
        return Err(invalid(arg, value, "expected an interface name"));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";

    fn good() -> String {
        format!(
            "BOOT_IMAGE=vmlinuz initrd=initrd console=ttyS0,115200 bigv.role=tail \
             bigv.version=2026.11.1 bigv.spine=10.0.0.1:4433 bigv.pin={PIN} \
             bigv.bootif=52:54:00:AB:cd:11 quiet"
        )
    }

    #[test]
    fn parses_the_ipxe_scripts_line() {
        let c = parse(&good()).unwrap();
        assert_eq!(c.role, Role::Tail);
        assert_eq!(c.version, "2026.11.1");
        assert_eq!(c.spine, "10.0.0.1:4433".parse().unwrap());
        assert_eq!(c.pin, PIN.to_ascii_lowercase());
        assert_eq!(c.bootif, Some(Mac([0x52, 0x54, 0, 0xab, 0xcd, 0x11])));
        assert_eq!(c.bootif.unwrap().to_string(), "52:54:00:ab:cd:11");
        assert!(c.pools.is_empty());
        assert_eq!(c.role.agent_path(), "/bin/bigv-tail");
        assert_eq!(c.templates, None);
        assert_eq!(c.log, None);
    }

    #[test]
    fn templates_and_log_filter() {
        let c = parse(&format!(
            "{} bigv.templates=http://10.0.0.1:80/templates/ bigv.log=info,bigv_head::console=debug",
            good()
        ))
        .unwrap();
        assert_eq!(c.templates.as_deref(), Some("http://10.0.0.1:80/templates"));
        assert_eq!(c.log.as_deref(), Some("info,bigv_head::console=debug"));
        let c = parse(&format!("{} bigv.trunk=enp1s0.100", good())).unwrap();
        assert_eq!(c.trunk.as_deref(), Some("enp1s0.100"));
        assert_eq!(c.storage, None);
        for bad in [
            "bigv.templates=ftp://x",
            "bigv.templates=",
            "bigv.log=",
            "bigv.log=a;b",
            "bigv.trunk=",
            "bigv.trunk=a-very-long-interface",
            "bigv.trunk=eth0;x",
            "bigv.storage=eth1 bigv.storage_prefix=fd00:5::",
            "bigv.storage=eth1 bigv.storage_prefix=fd00:5::/48",
            "bigv.storage=eth1 bigv.storage_prefix=10.0.0.0/64",
            "bigv.storage=eth1/x bigv.storage_prefix=fd00:5::/64",
        ] {
            assert!(
                matches!(
                    parse(&format!("{} {bad}", good())),
                    Err(CmdlineError::Invalid { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_storage_lan_names_its_nic_and_prefix_and_gives_each_node_an_address() {
        let c = parse(&format!(
            "{} bigv.storage=eth1 bigv.storage_prefix=fd00:5::/64",
            good()
        ))
        .unwrap();
        let lan = c.storage.expect("a storage LAN");
        assert_eq!(lan.interface, "eth1");
        let mac = Mac([0x52, 0x54, 0x00, 0x8f, 0x01, 0x01]);
        assert_eq!(
            lan.address(mac),
            "fd00:5::fffe:5254:8f:101".parse::<Ipv6Addr>().unwrap()
        );
        // Host bits in the prefix are ignored; another MAC, another address.
        let sloppy = StorageLan {
            prefix: "fd00:5::1:2".parse().unwrap(),
            ..lan.clone()
        };
        assert_eq!(sloppy.address(mac), lan.address(mac));
        assert_ne!(
            lan.address(Mac([0x52, 0x54, 0, 0x8f, 0x01, 0x02])),
            lan.address(mac)
        );

        // One without the other is a mistake, said as such.
        for half in ["bigv.storage=eth1", "bigv.storage_prefix=fd00:5::/64"] {
            let e = parse(&format!("{} {half}", good())).unwrap_err();
            assert!(matches!(e, CmdlineError::Missing { .. }), "{half}: {e}");
            assert!(e.to_string().contains("needs it"), "{e}");
        }
    }

    #[test]
    fn bootif_and_pools_are_optional_and_ipv6_spines_parse() {
        let line = format!(
            "bigv.role=head bigv.version=v1 bigv.spine=[fd00::1]:4433 bigv.pin={PIN} \
             bigv.pool=sata1:sata:/srv/sata1 bigv.pool=scratch:ram:/run/pool \
             bigv.disc=vdb:/srv/sata1:format bigv.disc=nvme0n1:/srv/ssd"
        );
        let c = parse(&line).unwrap();
        assert_eq!(c.role, Role::Head);
        assert_eq!(c.bootif, None);
        assert_eq!(c.pools.len(), 2);
        assert_eq!(c.pools[1].to_string(), "scratch:ram:/run/pool");
        assert_eq!(
            c.discs,
            [
                DiscArg {
                    device: "vdb".into(),
                    dir: "/srv/sata1".into(),
                    format: true
                },
                DiscArg {
                    device: "nvme0n1".into(),
                    dir: "/srv/ssd".into(),
                    format: false
                },
            ]
        );
    }

    #[test]
    fn errors_name_the_bad_argument() {
        let cases = [
            (good().replace("bigv.role=tail", ""), "bigv.role is missing"),
            (
                good().replace("bigv.role=tail", "bigv.role=brain"),
                "bigv.role=\"brain\"",
            ),
            (
                good().replace("10.0.0.1:4433", "brain.example:4433"),
                "bigv.spine=\"brain.example:4433\": expected ip:port",
            ),
            (good().replace("sha256:", "md5:"), "bigv.pin="),
            (good().replace("AABB", "AAB"), "bigv.pin="),
            (
                good().replace("52:54:00:AB:cd:11", "52:54:00:ab:cd"),
                "bigv.bootif=",
            ),
            (
                good().replace("2026.11.1", "2026 11"),
                // "2026" is kept, "11" is a kernel word: the version is fine;
                // an empty one is not.
                "",
            ),
            (good().replace("2026.11.1", ""), "bigv.version=\"\""),
            (good().replace("2026.11.1", "$(reboot)"), "bigv.version="),
            (
                format!("{} bigv.role=head", good()),
                "bigv.role is given twice",
            ),
            (
                format!("{} bigv.spin=1.2.3.4:5", good()),
                "unknown argument bigv.spin",
            ),
            (
                format!("{} bigv.pool=sata1:sata:relative", good()),
                "bigv.pool=",
            ),
            (
                format!("{} bigv.disc=../sda:/srv", good()),
                "bigv.disc=\"../sda:/srv\"",
            ),
            (
                format!("{} bigv.disc=vdb:/srv/a:wipe", good()),
                "bigv.disc=",
            ),
            (
                format!("{} bigv.disc=vdb:/srv/a bigv.disc=vdb:/srv/b", good()),
                "used twice",
            ),
        ];
        for (line, want) in cases {
            match parse(&line) {
                Ok(_) if want.is_empty() => {}
                Ok(c) => panic!("{line:?} parsed as {c:?}, wanted an error with {want:?}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(!want.is_empty(), "{line:?}: unexpected {msg}");
                    assert!(msg.contains(want), "{line:?}: {msg:?} lacks {want:?}");
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(line in "\\PC{0,200}") {
            let _ = parse(&line);
        }

        #[test]
        fn never_panics_on_bigv_words(words in proptest::collection::vec(
            ("(role|version|spine|pin|bootif|pool|disc|x)", "[ -~]{0,40}"), 0..8))
        {
            let line: Vec<String> = words.iter().map(|(k, v)| format!("bigv.{k}={v}")).collect();
            let _ = parse(&line.join(" "));
        }
    }
}
