//! How init starts the node agent: `/bin/bigv-<role> run` with its
//! settings in the environment (the same variables for heads and tails;
//! each agent reads what it needs), and what its exit status means.
//!
//! | variable | value |
//! |---|---|
//! | `BIGV_ROLE` | `head` / `tail` |
//! | `BIGV_NODE_ID` | the boot NIC's MAC, `aa:bb:cc:dd:ee:ff` (stable across reboots) |
//! | `BIGV_SPINE` | the brain's spine listener, `ip:port` |
//! | `BIGV_PIN` | `sha256:<hex>` of the brain's certificate |
//! | `BIGV_IMAGE_VERSION` | the version of the image actually running (`/etc/bigv/version`, else `bigv.version`), reported in `hello` so the brain can flag a node on the wrong image |
//! | `BIGV_BOOT_INTERFACE` | the boot NIC's name, e.g. `eth0` |
//! | `BIGV_ADDRESS` | the address DHCP gave the boot NIC |
//! | `BIGV_INIT_LOG` | init's log file, which the agent sends on to the brain |
//! | `BIGV_STORAGE_ADDRESS` | with a storage LAN of its own (`bigv.storage=`), the node's address there (heads and tails). Else tails: the address mirrors reach (the DHCP one); heads: the boot NIC's global IPv6 address, if it got one (SLAAC). A head's NBD connections to the discs' IPv6 addresses come from it, so the head announces it first and the brain puts it in disc ACLs |
//! | `BIGV_STORAGE_INTERFACE` | tails: where discs' own addresses are added (the storage NIC, else the boot NIC) |
//! | `BIGV_TEMPLATES_URL` | tails: `bigv.templates=`, where OS templates are fetched |
//! | `BIGV_NIC_BACKEND`, `BIGV_TRUNK` | heads with `bigv.trunk=IF`: `bridged` and `IF` (VMs' taps on per-VLAN bridges) |
//! | `BIGV_CONSOLE_INTERFACE` | heads: the boot NIC, where each VM's management address (its SSH console) goes while the VM runs here (the boot LAN is the management LAN) |
//! | `BIGV_POOLS` | tails: `NAME:GRADE:DIR,…` (pools on a data disc that failed to mount are left out) |
//!
//! Exit status 10 asks init to reboot the node, 11 to power it off (the
//! brain's spine `power` order: the agent replies, then exits). Any other
//! exit is a crash: init restarts the agent with backoff.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::cmdline::{BootConfig, PoolArg, Role};
use crate::net::Nic;

pub const EXIT_REBOOT: i32 = 10;
pub const EXIT_POWEROFF: i32 = 11;

/// A tail with no `bigv.pool=` serves from a tmpfs pool: enough to join
/// the spine and be tried out, not for real discs (see docs/boot.md).
/// Init's own log lines (also on the console), which the agent sends on
/// to the brain (spine `log` frames).
pub const INIT_LOG: &str = "/run/bigv/init.log";

pub const DEFAULT_TAIL_POOL: &str = "scratch:ram:/run/bigv/pools/scratch";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    Poweroff,
}

/// What an agent's exit means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentExit {
    Power(PowerAction),
    /// Crashed or exited unasked: restart it.
    Restart,
}

pub fn classify_exit(status: Option<i32>) -> AgentExit {
    match status {
        Some(EXIT_REBOOT) => AgentExit::Power(PowerAction::Reboot),
        Some(EXIT_POWEROFF) => AgentExit::Power(PowerAction::Poweroff),
        _ => AgentExit::Restart,
    }
}

/// Where the node is on the storage LAN.
#[derive(Debug, Clone)]
pub enum Storage {
    /// The boot LAN is the storage LAN: tails serve discs on the boot NIC
    /// (mirrors reach them at their DHCP address); heads connect from the
    /// boot NIC's global IPv6 address, if it got one.
    BootLan { ipv6: Option<Ipv6Addr> },
    /// A storage LAN of its own (`bigv.storage=`): its NIC and the node's
    /// address there, for both roles.
    Own { nic: Nic, address: Ipv6Addr },
}

/// The agent's environment.
pub fn agent_env(
    config: &BootConfig,
    image_version: &str,
    nic: &Nic,
    address: Ipv4Addr,
    storage: &Storage,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH", "/bin".to_owned()),
        (
            "RUST_LOG",
            config.log.clone().unwrap_or_else(|| "info".to_owned()),
        ),
        // The console is a serial line, not a terminal: no colour codes.
        ("NO_COLOR", "1".to_owned()),
        ("BIGV_ROLE", config.role.as_str().to_owned()),
        ("BIGV_NODE_ID", nic.mac.to_string()),
        ("BIGV_SPINE", config.spine.to_string()),
        ("BIGV_PIN", config.pin.clone()),
        ("BIGV_IMAGE_VERSION", image_version.to_owned()),
        ("BIGV_BOOT_INTERFACE", nic.name.clone()),
        ("BIGV_ADDRESS", address.to_string()),
        ("BIGV_INIT_LOG", INIT_LOG.to_owned()),
    ];
    let (storage_address, storage_nic) = match storage {
        Storage::BootLan { ipv6 } => match config.role {
            Role::Tail => (Some(IpAddr::V4(address)), nic),
            Role::Head => (ipv6.map(IpAddr::V6), nic),
        },
        Storage::Own { nic, address } => (Some(IpAddr::V6(*address)), nic),
    };
    if let Some(a) = storage_address {
        env.push(("BIGV_STORAGE_ADDRESS", a.to_string()));
    }
    match config.role {
        Role::Tail => {
            env.push(("BIGV_STORAGE_INTERFACE", storage_nic.name.clone()));
            env.push(("BIGV_POOLS", pools(&config.pools, !config.discs.is_empty())));
            if let Some(url) = &config.templates {
                env.push(("BIGV_TEMPLATES_URL", url.clone()));
            }
        }
        Role::Head => {
            env.push(("BIGV_CONSOLE_INTERFACE", nic.name.clone()));
            if let Some(trunk) = &config.trunk {
                env.push(("BIGV_NIC_BACKEND", "bridged".to_owned()));
                env.push(("BIGV_TRUNK", trunk.clone()));
            }
        }
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn pools(pools: &[PoolArg], any_discs: bool) -> String {
    // With data discs configured, no pools means none worked out: the
    // agent must fail visibly rather than serve discs from memory.
    if pools.is_empty() && !any_discs {
        return DEFAULT_TAIL_POOL.to_owned();
    }
    pools
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The host name: the one DHCP gave, else `bigv-<role>-<mac hex>`.
pub fn hostname(role: Role, nic: &Nic, from_dhcp: Option<&str>) -> String {
    match from_dhcp {
        Some(h) => h.to_owned(),
        None => {
            let hex: String = nic.mac.0.iter().map(|b| format!("{b:02x}")).collect();
            format!("bigv-{role}-{hex}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::{Mac, parse};

    fn nic() -> Nic {
        Nic {
            index: 2,
            name: "eth0".into(),
            mac: Mac([0x52, 0x54, 0, 0, 0, 0x11]),
        }
    }

    fn boot_lan(ipv6: Option<Ipv6Addr>) -> Storage {
        Storage::BootLan { ipv6 }
    }

    /// The environment for `cmdline` running image `version`, the boot
    /// NIC `nic()` leased 10.0.2.15, as a map.
    fn env_of(
        cmdline: &str,
        version: &str,
        storage: &Storage,
    ) -> std::collections::BTreeMap<String, String> {
        let pin = format!("sha256:{}", "ab".repeat(32));
        let c = parse(&format!(
            "bigv.version=7 bigv.spine=10.0.2.2:4433 bigv.pin={pin} {cmdline}"
        ))
        .unwrap();
        agent_env(&c, version, &nic(), Ipv4Addr::new(10, 0, 2, 15), storage)
            .into_iter()
            .collect()
    }

    #[test]
    fn a_storage_lan_of_its_own_gives_both_roles_its_nic_and_address() {
        let own = Storage::Own {
            nic: Nic {
                index: 3,
                name: "eth1".into(),
                mac: Mac([0x52, 0x54, 0, 0x8f, 0x01, 0x01]),
            },
            address: "fd00:5::fffe:5254:8f:101".parse().unwrap(),
        };
        for role in ["head", "tail"] {
            let env = env_of(&format!("bigv.role={role}"), "7", &own);
            assert_eq!(
                env["BIGV_STORAGE_ADDRESS"], "fd00:5::fffe:5254:8f:101",
                "{role}"
            );
            // Spine and consoles stay on the boot NIC.
            assert_eq!(env["BIGV_BOOT_INTERFACE"], "eth0", "{role}");
            assert_eq!(env["BIGV_ADDRESS"], "10.0.2.15", "{role}");
            if role == "tail" {
                assert_eq!(env["BIGV_STORAGE_INTERFACE"], "eth1");
            } else {
                assert_eq!(env["BIGV_CONSOLE_INTERFACE"], "eth0");
                assert!(!env.contains_key("BIGV_STORAGE_INTERFACE"));
            }
        }
    }

    #[test]
    fn env_carries_what_the_tail_agent_needs() {
        let env = env_of("bigv.role=tail", "8", &boot_lan(None));
        assert_eq!(env["BIGV_NODE_ID"], "52:54:00:00:00:11");
        assert_eq!(env["BIGV_SPINE"], "10.0.2.2:4433");
        assert_eq!(env["BIGV_PIN"], format!("sha256:{}", "ab".repeat(32)));
        // The running image's version, not the one the brain expects.
        assert_eq!(env["BIGV_IMAGE_VERSION"], "8");
        assert_eq!(env["BIGV_STORAGE_ADDRESS"], "10.0.2.15");
        assert_eq!(env["BIGV_POOLS"], DEFAULT_TAIL_POOL);
        assert_eq!(env["BIGV_STORAGE_INTERFACE"], "eth0");
        assert_eq!(env["RUST_LOG"], "info");
        assert!(!env.contains_key("BIGV_TEMPLATES_URL"));

        let head = env_of("bigv.role=head", "7", &boot_lan(None));
        assert!(!head.contains_key("BIGV_POOLS"));
        assert!(!head.contains_key("BIGV_STORAGE_ADDRESS"));
        assert!(!head.contains_key("BIGV_NIC_BACKEND"));
        // A head with a global IPv6 address announces it as its storage
        // address; the log filter comes from bigv.log=.
        let v6: Ipv6Addr = "fd00::5054:ff:fe00:11".parse().unwrap();
        let head = env_of(
            "bigv.role=head bigv.log=debug bigv.trunk=eth1",
            "7",
            &boot_lan(Some(v6)),
        );
        assert_eq!(head["BIGV_STORAGE_ADDRESS"], "fd00::5054:ff:fe00:11");
        assert_eq!(head["RUST_LOG"], "debug");
        assert!(!head.contains_key("BIGV_STORAGE_INTERFACE"));
        // bigv.trunk= gives VMs bridged taps on that interface.
        assert_eq!(head["BIGV_NIC_BACKEND"], "bridged");
        assert_eq!(head["BIGV_TRUNK"], "eth1");
        // Consoles' management addresses go on the boot NIC.
        assert_eq!(head["BIGV_CONSOLE_INTERFACE"], nic().name);
        // Tails get the templates URL.
        let tail = env_of(
            "bigv.role=tail bigv.templates=http://10.0.0.1/templates",
            "7",
            &boot_lan(Some(v6)),
        );
        assert_eq!(tail["BIGV_TEMPLATES_URL"], "http://10.0.0.1/templates");
        assert_eq!(tail["BIGV_STORAGE_ADDRESS"], "10.0.2.15");
    }

    #[test]
    fn exit_codes_match_the_spine_contract() {
        use bigv_spine::PowerAction as P;
        assert_eq!(P::Reboot.agent_exit_code(), EXIT_REBOOT);
        assert_eq!(P::Poweroff.agent_exit_code(), EXIT_POWEROFF);
        assert_eq!(
            classify_exit(Some(10)),
            AgentExit::Power(PowerAction::Reboot)
        );
        assert_eq!(
            classify_exit(Some(11)),
            AgentExit::Power(PowerAction::Poweroff)
        );
        assert_eq!(classify_exit(Some(0)), AgentExit::Restart);
        assert_eq!(classify_exit(None), AgentExit::Restart);
    }

    #[test]
    fn hostnames() {
        assert_eq!(hostname(Role::Tail, &nic(), None), "bigv-tail-525400000011");
        assert_eq!(hostname(Role::Head, &nic(), Some("h1")), "h1");
    }
}
