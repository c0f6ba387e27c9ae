//! The tail's configuration: a TOML file (or the same fields as flags).
//!
//! ```toml
//! node_id = "52:54:00:12:34:56"
//! spine = "[fd00::1]:4100"
//! pin = "sha256:…"                # the brain's certificate; omit for plain TCP (tests)
//! storage_interface = "eth1"      # where disc addresses are added; omit to manage none
//! storage_address = "fd00:5::10"  # this tail's own storage-LAN address
//! images = "/srv/images"          # templates: <images>/<image>.raw
//! nbd_port = 10809
//! report_interval_secs = 10
//! image_version = "2026.11.1"      # reported to the brain; default: the crate version
//!
//! [[pool]]
//! name = "sata1"
//! grade = "sata"
//! path = "/srv/pools/sata1"
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bigv_spine::tls::Fingerprint;
use bigv_spine::{Hello, NodeConfig, Role};
use serde::Deserialize;

use crate::addresses::Addresses;
use crate::agent::AgentConfig;
use crate::pools::{PoolConfig, Pools};

pub const NBD_PORT: u16 = 10809;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailConfig {
    pub node_id: String,
    /// `host:port` of the brain's spine listener.
    pub spine: String,
    #[serde(default)]
    pub pin: Option<String>,
    #[serde(default)]
    pub storage_interface: Option<String>,
    pub storage_address: IpAddr,
    pub images: PathBuf,
    #[serde(default = "default_port")]
    pub nbd_port: u16,
    #[serde(default = "default_interval")]
    pub report_interval_secs: u64,
    #[serde(rename = "pool", default)]
    pub pools: Vec<PoolConfig>,
    /// The image version reported in `hello` (init passes `bigv.version`);
    /// defaults to this crate's version.
    #[serde(default)]
    pub image_version: Option<String>,
    /// Where templates missing from `images` are fetched from
    /// (`URL/<image>.raw`; see `templates.rs`).
    #[serde(default)]
    pub templates_url: Option<String>,
}

fn default_port() -> u16 {
    NBD_PORT
}

fn default_interval() -> u64 {
    10
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
    #[error("pool: at least one [[pool]] is needed")]
    NoPools,
    #[error("pool {name:?}: the name is used twice")]
    DuplicatePool { name: String },
    #[error("report_interval_secs: must be at least 1")]
    Interval,
}

impl TailConfig {
    pub fn load(path: &Path) -> Result<TailConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: TailConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.check()?;
        Ok(config)
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        if self.pools.is_empty() {
            return Err(ConfigError::NoPools);
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.pools {
            if !seen.insert(&p.name) {
                return Err(ConfigError::DuplicatePool {
                    name: p.name.clone(),
                });
            }
        }
        if self.report_interval_secs == 0 {
            return Err(ConfigError::Interval);
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

    /// The spine connection settings.
    pub fn node_config(&self) -> Result<NodeConfig, ConfigError> {
        let hello = Hello {
            node_id: self.node_id.clone(),
            role: Role::Tail,
            image_version: self
                .image_version
                .clone()
                .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned()),
            protocol_version: bigv_spine::PROTOCOL_VERSION,
            addresses: vec![self.storage_address.to_string()],
        };
        let mut config = NodeConfig::new(self.spine.clone(), hello);
        config.logs = bigv_spine::logs::installed();
        config.tls_pin = self.fingerprint()?;
        Ok(config)
    }

    /// The agent's settings; opens (creates) the pool directories and, if
    /// configured, the storage interface.
    pub async fn agent_config(&self) -> anyhow::Result<AgentConfig> {
        let addresses = match &self.storage_interface {
            Some(iface) => Addresses::on_interface(iface).await?,
            None => Addresses::unmanaged(),
        };
        Ok(AgentConfig {
            pools: Pools::open(self.pools.clone())?,
            images: self.images.clone(),
            nbd_port: self.nbd_port,
            storage_address: self.storage_address,
            addresses,
            report_interval: Duration::from_secs(self.report_interval_secs),
            templates_url: self.templates_url.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_bad_fields() {
        let good = r#"
            node_id = "t1"
            spine = "127.0.0.1:4100"
            storage_address = "fd00:5::10"
            images = "/srv/images"
            [[pool]]
            name = "sata1"
            grade = "sata"
            path = "/srv/sata1"
        "#;
        let c: TailConfig = toml::from_str(good).unwrap();
        c.check().unwrap();
        assert_eq!(c.nbd_port, 10809);
        assert_eq!(c.node_config().unwrap().hello.role, Role::Tail);

        let e = toml::from_str::<TailConfig>(&good.replace("node_id", "nodeid"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nodeid"), "{e}");
        let mut bad = c.clone();
        bad.pin = Some("md5:00".into());
        assert!(bad.check().unwrap_err().to_string().starts_with("pin:"));
        bad = c.clone();
        bad.pools.push(bad.pools[0].clone());
        assert!(matches!(
            bad.check(),
            Err(ConfigError::DuplicatePool { .. })
        ));
    }
}
