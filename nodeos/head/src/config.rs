//! The head's configuration: a TOML file (or the same fields as flags).
//!
//! ```toml
//! node_id = "52:54:00:12:34:56"
//! spine = "[fd00::1]:4100"
//! pin = "sha256:…"              # the brain's certificate; omit for plain TCP (tests)
//! qemu = "/usr/bin/qemu-system-x86_64"
//! run_dir = "/run/bigv-head"    # sockets, pidfiles: must survive an agent restart
//! log_dir = "/var/log/bigv-head"  # serial scroll-back per VM
//! accel = "tcg"                 # kvm | tcg; omit to use KVM when /dev/kvm answers
//! nic_backend = "bridged"       # none | user | bridged (taps on VLAN bridges)
//! trunk = "eth0"                # bridged: the interface carrying the VLANs, tagged
//! untagged_vlan = 1             # bridged: the one VLAN untagged on the trunk, if any
//! vm_memory_mib = 30000         # omit: MemTotal minus reserve_memory_mib
//! reserve_memory_mib = 2048
//! nbd_reconnect_delay_secs = 300
//! nbd_open_timeout_secs = 30
//! report_interval_secs = 10
//! fence_timeout_secs = 120      # until a brain gives its own: kill every VM after this long without the brain; 0 never
//! migration_address = "10.1.0.5"  # incoming live migrations listen here; omit: the first of `addresses`
//! image_version = "2026.11.1"   # reported to the brain; default: the crate version
//! console_port = 22             # each VM's SSH console, on its management address
//! console_bind = "127.0.0.1"    # listen here instead of management addresses (tests)
//! console_host_key = "/run/bigv-head/ssh_host_ed25519_key"  # the default; made on first use
//! console_interface = "eth0"    # add each VM's management address here while it runs; omit: never
//! ```
//!
//! The brain's `welcome` (spine protocol 3) carries the brain's own fence
//! timeout, which then replaces `fence_timeout_secs` and is kept in
//! `run_dir` for restarted agents (`fence.rs`). Before any brain has said
//! one, or with a brain too old to say, `fence_timeout_secs` applies and
//! must not exceed the brain's setting: the brain restarts the VMs
//! elsewhere after its timeout plus a margin.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bigv_spine::tls::Fingerprint;
use bigv_spine::{Hello, NodeConfig, Role};
use serde::Deserialize;

use crate::agent::AgentConfig;
use crate::argv::{Accel, NicBackend, QemuSettings};
use crate::console::ConsoleConfig;
use crate::host;
use crate::net::NetConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    pub node_id: String,
    /// `host:port` of the brain's spine listener.
    pub spine: String,
    #[serde(default)]
    pub pin: Option<String>,
    #[serde(default = "default_qemu")]
    pub qemu: PathBuf,
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    #[serde(default = "default_log_dir")]
    pub log_dir: PathBuf,
    #[serde(default)]
    pub accel: Option<Accel>,
    #[serde(default)]
    pub nic_backend: NicBackend,
    /// `nic_backend = "bridged"`: the interface the VLANs are on.
    #[serde(default)]
    pub trunk: Option<String>,
    /// `nic_backend = "bridged"`: the VLAN whose frames are untagged on
    /// the trunk (its bridge gets the trunk itself as a port).
    #[serde(default)]
    pub untagged_vlan: Option<u32>,
    #[serde(default)]
    pub vm_memory_mib: Option<u64>,
    #[serde(default = "default_reserve")]
    pub reserve_memory_mib: u64,
    #[serde(default = "default_reconnect")]
    pub nbd_reconnect_delay_secs: u32,
    #[serde(default = "default_open_timeout")]
    pub nbd_open_timeout_secs: u32,
    #[serde(default = "default_interval")]
    pub report_interval_secs: u64,
    #[serde(default = "default_fence")]
    pub fence_timeout_secs: u64,
    /// Addresses announced in `hello`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Where incoming live migrations listen (the storage network);
    /// absent: the first of `addresses`.
    #[serde(default)]
    pub migration_address: Option<String>,
    /// The image version reported in `hello` (init passes the image's
    /// own, `BIGV_IMAGE_VERSION`); default: the crate version.
    #[serde(default)]
    pub image_version: Option<String>,
    /// The SSH port of every VM's console, on its management address.
    #[serde(default = "default_console_port")]
    pub console_port: u16,
    /// Consoles listen here instead of on management addresses (tests).
    #[serde(default)]
    pub console_bind: Option<IpAddr>,
    /// The consoles' SSH host key (made on first use); default
    /// `run_dir/ssh_host_ed25519_key`.
    #[serde(default)]
    pub console_host_key: Option<PathBuf>,
    /// The management interface VMs' management addresses are added to
    /// while they run here; absent: the head adds none.
    #[serde(default)]
    pub console_interface: Option<String>,
}

fn default_qemu() -> PathBuf {
    // In the node image init gives the agent PATH=/bin, and the image
    // keeps qemu where Debian put it.
    let image = Path::new("/usr/bin/qemu-system-x86_64");
    if image.exists() {
        image.to_owned()
    } else {
        "qemu-system-x86_64".into()
    }
}
fn default_run_dir() -> PathBuf {
    "/run/bigv-head".into()
}
fn default_log_dir() -> PathBuf {
    "/var/log/bigv-head".into()
}
fn default_reserve() -> u64 {
    2048
}
fn default_reconnect() -> u32 {
    300
}
fn default_open_timeout() -> u32 {
    30
}
fn default_interval() -> u64 {
    10
}
fn default_fence() -> u64 {
    120
}
fn default_console_port() -> u16 {
    22
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("pin: {0}")]
    Pin(String),
    #[error("report_interval_secs: must be at least 1")]
    Interval,
    #[error("trunk: nic_backend = \"bridged\" needs the trunk interface")]
    NoTrunk,
}

impl HeadConfig {
    /// A config with every default, for flags and tests.
    pub fn new(node_id: impl Into<String>, spine: impl Into<String>) -> HeadConfig {
        HeadConfig {
            node_id: node_id.into(),
            spine: spine.into(),
            pin: None,
            qemu: default_qemu(),
            run_dir: default_run_dir(),
            log_dir: default_log_dir(),
            accel: None,
            nic_backend: NicBackend::None,
            trunk: None,
            untagged_vlan: None,
            vm_memory_mib: None,
            reserve_memory_mib: default_reserve(),
            nbd_reconnect_delay_secs: default_reconnect(),
            nbd_open_timeout_secs: default_open_timeout(),
            report_interval_secs: default_interval(),
            fence_timeout_secs: default_fence(),
            addresses: vec![],
            migration_address: None,
            image_version: None,
            console_port: default_console_port(),
            console_bind: None,
            console_host_key: None,
            console_interface: None,
        }
    }

    pub fn load(path: &Path) -> Result<HeadConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: HeadConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.check()?;
        Ok(config)
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        if self.report_interval_secs == 0 {
            return Err(ConfigError::Interval);
        }
        if self.nic_backend == NicBackend::Bridged && self.trunk.is_none() {
            return Err(ConfigError::NoTrunk);
        }
        self.fingerprint()?;
        Ok(())
    }

    pub fn fingerprint(&self) -> Result<Option<Fingerprint>, ConfigError> {
        self.pin
            .as_deref()
            .map(|p| {
                p.parse()
                    .map_err(|e: <Fingerprint as std::str::FromStr>::Err| {
                        ConfigError::Pin(e.to_string())
                    })
            })
            .transpose()
    }

    pub fn node_config(&self) -> Result<NodeConfig, ConfigError> {
        let hello = Hello {
            node_id: self.node_id.clone(),
            role: Role::Head,
            image_version: self
                .image_version
                .clone()
                .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned()),
            protocol_version: bigv_spine::PROTOCOL_VERSION,
            addresses: self.addresses.clone(),
        };
        let mut config = NodeConfig::new(self.spine.clone(), hello);
        config.logs = bigv_spine::logs::installed();
        config.tls_pin = self.fingerprint()?;
        Ok(config)
    }

    /// The agent's settings; probes KVM if `accel` is not set.
    pub fn agent_config(&self) -> AgentConfig {
        AgentConfig {
            qemu: self.qemu.clone(),
            run_dir: self.run_dir.clone(),
            log_dir: self.log_dir.clone(),
            settings: QemuSettings {
                accel: host::pick_accel(self.accel),
                nic_backend: self.nic_backend,
                nbd_reconnect_delay_secs: self.nbd_reconnect_delay_secs,
                nbd_open_timeout_secs: self.nbd_open_timeout_secs,
                local_cdrom: false,
            },
            vm_memory_mib: self
                .vm_memory_mib
                .unwrap_or_else(|| host::mem_total_mib().saturating_sub(self.reserve_memory_mib)),
            report_interval: Duration::from_secs(self.report_interval_secs),
            fence_timeout: (self.fence_timeout_secs > 0)
                .then(|| Duration::from_secs(self.fence_timeout_secs)),
            migration_address: self
                .migration_address
                .clone()
                .or_else(|| self.addresses.first().cloned()),
            console: ConsoleConfig {
                port: self.console_port,
                bind: self.console_bind,
                host_key: self.console_host_key.clone(),
                interface: self.console_interface.clone(),
            },
            net: self.trunk.clone().map(|trunk| NetConfig {
                trunk,
                untagged_vlan: self.untagged_vlan,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_bad_fields() {
        let good = r#"
            node_id = "h1"
            spine = "127.0.0.1:4100"
            accel = "tcg"
            nic_backend = "user"
            vm_memory_mib = 4096
            console_bind = "127.0.0.1"
            console_interface = "mgmt0"
        "#;
        let c: HeadConfig = toml::from_str(good).unwrap();
        c.check().unwrap();
        assert_eq!(c.node_config().unwrap().hello.role, Role::Head);
        let a = c.agent_config();
        assert_eq!(a.settings.accel, Accel::Tcg);
        assert_eq!(a.settings.nic_backend, NicBackend::User);
        assert_eq!(a.vm_memory_mib, 4096);
        assert_eq!(a.settings.nbd_reconnect_delay_secs, 300);
        assert_eq!(a.fence_timeout, Some(Duration::from_secs(120)));
        assert_eq!(a.migration_address, None);
        assert_eq!(
            a.console,
            ConsoleConfig {
                port: 22,
                bind: Some("127.0.0.1".parse().unwrap()),
                host_key: None,
                interface: Some("mgmt0".into()),
            }
        );
        assert_eq!(
            a.console.host_key_path(&a.run_dir),
            Path::new("/run/bigv-head/ssh_host_ed25519_key")
        );
        let mut with_address = c.clone();
        with_address.addresses = vec!["10.1.0.5".into()];
        assert_eq!(
            with_address.agent_config().migration_address.as_deref(),
            Some("10.1.0.5")
        );
        let e = toml::from_str::<HeadConfig>(&good.replace("accel = \"tcg\"", "accel = \"xen\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("xen"), "{e}");
        let mut bridged = c.clone();
        bridged.nic_backend = NicBackend::Bridged;
        assert!(
            bridged
                .check()
                .unwrap_err()
                .to_string()
                .starts_with("trunk:")
        );
        bridged.trunk = Some("eth0".into());
        bridged.untagged_vlan = Some(1);
        bridged.check().unwrap();
        assert_eq!(
            bridged.agent_config().net,
            Some(NetConfig {
                trunk: "eth0".into(),
                untagged_vlan: Some(1)
            })
        );
        let mut bad = c.clone();
        bad.pin = Some("md5:00".into());
        assert!(bad.check().unwrap_err().to_string().starts_with("pin:"));
    }
}
