//! DHCPv4 for the boot LAN: a pure packet handler ([`DhcpServer::handle`])
//! and, separately, the socket task that feeds it ([`socket`]).
//!
//! The handler answers DISCOVER with OFFER, REQUEST with ACK or NAK, and
//! takes RELEASE, DECLINE and INFORM; only for clients the [`BootPolicy`]
//! admits. It picks the boot file:
//!
//! - iPXE (option 77 user class `iPXE`) gets the HTTP URL of its per-node
//!   script, which breaks the chain-load loop, plus option 175/176 = 1 so it
//!   does not wait for ProxyDHCP;
//! - other PXE firmware gets an iPXE binary over TFTP by option 93:
//!   0 (BIOS) → `undionly.kpxe`, 7 or 9 (x86-64 UEFI) → `ipxe.efi`;
//! - a client that is neither (the node's own OS) gets just an address.
//!
//! There is no ping before an OFFER and nothing slow on the path: the policy
//! callback answers from memory, and lease changes are reported to it for
//! persisting elsewhere.

pub mod guard;
mod leases;
pub mod socket;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dhcproto::Encodable;
use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode, UnknownOption};
use ipnet::Ipv4Net;

pub use leases::{Lease, LeaseTable};

use crate::{Admission, BootPolicy, ClientInfo, LeaseChange, MacAddr};

/// BOOTP's minimum message size; some PXE ROMs drop shorter replies.
const MIN_REPLY_LEN: usize = 300;
/// iPXE's encapsulated options (175) and its "no ProxyDHCP" setting (176).
const IPXE_ENCAP: u8 = 175;
const IPXE_NO_PXEDHCP: u8 = 176;

/// Why a packet was not answered normally.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("packet of {len} bytes is shorter than a DHCP header (240)")]
    Truncated { len: usize },
    #[error("bad DHCP magic cookie {found:?}")]
    BadMagicCookie { found: [u8; 4] },
    #[error("option {code} has length {len}, must be {expected}")]
    BadOptionLength {
        code: u8,
        len: usize,
        expected: &'static str,
    },
    #[error("option {code} at byte {offset} runs past the end of the packet")]
    OptionOverrun { code: u8, offset: usize },
    #[error("decoding the DHCP message")]
    Decode(#[source] dhcproto::error::DecodeError),
    #[error("the DHCP decoder panicked on this packet")]
    DecoderPanicked,
    #[error("op field is {op}, not BOOTREQUEST (1)")]
    NotARequest { op: u8 },
    #[error("hardware type {htype} / length {hlen} is not Ethernet (1/6)")]
    UnsupportedHardware { htype: u8, hlen: u8 },
    #[error("no DHCP message type (option 53)")]
    MissingMessageType,
    #[error("no free address in the pool for {mac}")]
    PoolExhausted { mac: MacAddr },
    #[error("fixed address {address} of {mac} is held by {holder}")]
    FixedAddressTaken {
        mac: MacAddr,
        address: Ipv4Addr,
        holder: MacAddr,
    },
    #[error("fixed address {address} of {mac} is outside the boot subnet")]
    FixedAddressOutsideSubnet { mac: MacAddr, address: Ipv4Addr },
    #[error("encoding the DHCP reply")]
    Encode(#[source] dhcproto::error::EncodeError),
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("server address {server} is not in subnet {subnet}")]
    ServerOutsideSubnet { server: Ipv4Addr, subnet: Ipv4Net },
    #[error("pool {start}–{end} is empty or not inside subnet {subnet}")]
    BadPool {
        start: Ipv4Addr,
        end: Ipv4Addr,
        subnet: Ipv4Net,
    },
    #[error("lease time must be between 60 s and 2^31 s, not {secs} s")]
    BadLeaseTime { secs: u64 },
    #[error("boot file name {name:?} must be 1–127 bytes of printable ASCII")]
    BadBootFile { name: String },
    #[error("HTTP base URL {url:?} must start with http:// and not end with /")]
    BadHttpBase { url: String },
}

/// Boot files and where iPXE finds its script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// TFTP name for BIOS PXE (option 93 = 0).
    pub bios: String,
    /// TFTP name for x86-64 UEFI PXE (option 93 = 7 or 9).
    pub uefi: String,
    /// Base URL of the HTTP boot server, e.g. `http://10.0.0.1:8080`.
    pub http_base: String,
}

/// The DHCP server's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// Our address on the boot LAN: server identifier and next-server.
    pub server: Ipv4Addr,
    pub subnet: Ipv4Net,
    /// The dynamic pool, inclusive.
    pub pool_start: Ipv4Addr,
    pub pool_end: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_time: Duration,
    /// How long an OFFER reserves its address.
    pub offer_hold: Duration,
    /// How long a declined address stays out of the pool.
    pub decline_hold: Duration,
    pub boot: BootFiles,
}

impl DhcpConfig {
    /// A config with defaults for everything but the network.
    pub fn new(
        server: Ipv4Addr,
        subnet: Ipv4Net,
        pool_start: Ipv4Addr,
        pool_end: Ipv4Addr,
        http_base: String,
    ) -> DhcpConfig {
        DhcpConfig {
            server,
            subnet,
            pool_start,
            pool_end,
            router: None,
            dns: Vec::new(),
            lease_time: Duration::from_secs(3600),
            offer_hold: Duration::from_secs(30),
            decline_hold: Duration::from_secs(600),
            boot: BootFiles {
                bios: "undionly.kpxe".into(),
                uefi: "ipxe.efi".into(),
                http_base,
            },
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.subnet.contains(&self.server) {
            return Err(ConfigError::ServerOutsideSubnet {
                server: self.server,
                subnet: self.subnet,
            });
        }
        if self.pool_start > self.pool_end
            || !self.subnet.contains(&self.pool_start)
            || !self.subnet.contains(&self.pool_end)
        {
            return Err(ConfigError::BadPool {
                start: self.pool_start,
                end: self.pool_end,
                subnet: self.subnet,
            });
        }
        let secs = self.lease_time.as_secs();
        if !(60..=(1 << 31)).contains(&secs) {
            return Err(ConfigError::BadLeaseTime { secs });
        }
        for name in [&self.boot.bios, &self.boot.uefi] {
            if name.is_empty() || name.len() > 127 || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::BadBootFile { name: name.clone() });
            }
        }
        let url = &self.boot.http_base;
        if !url.starts_with("http://") || url.ends_with('/') || url.contains(char::is_whitespace) {
            return Err(ConfigError::BadHttpBase { url: url.clone() });
        }
        Ok(())
    }
}

/// Where a reply goes (RFC 2131 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255:68 on the boot interface: the client has no address yet.
    Broadcast,
    /// The client's own address (it is renewing), port 68.
    Unicast(Ipv4Addr),
    /// A relay agent (giaddr), port 67.
    Relay(Ipv4Addr),
}

/// An encoded reply and where to send it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub message_type: MessageType,
    pub to: Destination,
    pub bytes: Vec<u8>,
}

/// What the boot file decision came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootFile {
    /// iPXE: its script over HTTP.
    IpxeScript(String),
    /// PXE firmware: an iPXE binary over TFTP.
    Tftp(String),
    /// PXE firmware of an architecture we have no binary for.
    UnsupportedArch(u16),
    /// Not a network-boot client.
    None,
}

/// The boot file for a client (see the module docs).
pub fn boot_file(client: &ClientInfo, files: &BootFiles) -> BootFile {
    if client.ipxe {
        return BootFile::IpxeScript(crate::ipxe::script_url(&files.http_base, client.mac));
    }
    match client.arch {
        Some(0) => BootFile::Tftp(files.bios.clone()),
        Some(7 | 9) => BootFile::Tftp(files.uefi.clone()),
        Some(a) => BootFile::UnsupportedArch(a),
        None => BootFile::None,
    }
}

/// Whether an option 77 payload names iPXE. iPXE sends the bare string;
/// RFC 3004 says length-prefixed strings, so accept both.
fn user_class_is_ipxe(data: &[u8]) -> bool {
    if data == b"iPXE" {
        return true;
    }
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if len == 0 || len > tail.len() {
            return false;
        }
        if &tail[..len] == b"iPXE" {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

fn client_info(msg: &Message, mac: MacAddr) -> ClientInfo {
    let opts = msg.opts();
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(a.0),
        _ => None,
    };
    let ipxe = matches!(opts.get(OptionCode::UserClass), Some(DhcpOption::UserClass(d)) if user_class_is_ipxe(d));
    let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(d)) => Some(String::from_utf8_lossy(d).into_owned()),
        _ => None,
    };
    ClientInfo {
        mac,
        arch,
        ipxe,
        vendor_class,
    }
}

fn opt_addr(msg: &Message, code: OptionCode) -> Option<Ipv4Addr> {
    match msg.opts().get(code) {
        Some(DhcpOption::RequestedIpAddress(a)) | Some(DhcpOption::ServerIdentifier(a)) => Some(*a),
        _ => None,
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The DHCP server state: config, leases and the policy. Owned by one task.
pub struct DhcpServer {
    config: DhcpConfig,
    leases: LeaseTable,
    policy: Arc<dyn BootPolicy>,
}

impl DhcpServer {
    /// `bound` are the leases the brain persisted earlier.
    pub fn new(
        config: DhcpConfig,
        policy: Arc<dyn BootPolicy>,
        bound: impl IntoIterator<Item = Lease>,
    ) -> Result<DhcpServer, ConfigError> {
        config.validate()?;
        Ok(DhcpServer {
            config,
            leases: LeaseTable::new(bound),
            policy,
        })
    }

    pub fn config(&self) -> &DhcpConfig {
        &self.config
    }

    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// Handles one packet received on the boot LAN at time `now`.
    /// `Ok(None)` means: deliberately silent (not ours, not for us).
    pub fn handle(&mut self, packet: &[u8], now: SystemTime) -> Result<Option<Reply>, DhcpError> {
        let msg = guard::decode(packet)?;
        if msg.opcode() != Opcode::BootRequest {
            return Err(DhcpError::NotARequest {
                op: msg.opcode().into(),
            });
        }
        if msg.htype() != HType::Eth || msg.hlen() != 6 {
            return Err(DhcpError::UnsupportedHardware {
                htype: msg.htype().into(),
                hlen: msg.hlen(),
            });
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&msg.chaddr()[..6]);
        let mac = MacAddr(mac);
        let ty = msg.opts().msg_type().ok_or(DhcpError::MissingMessageType)?;
        let now = unix_secs(now);
        let client = client_info(&msg, mac);

        match ty {
            MessageType::Release => return Ok(self.release(&msg, mac)),
            MessageType::Decline => return Ok(self.decline(&msg, mac, now)),
            MessageType::Discover | MessageType::Request | MessageType::Inform => {}
            other => {
                tracing::debug!(%mac, ?other, "ignoring DHCP message type");
                return Ok(None);
            }
        }
        let admission = self.policy.admit(&client);
        if admission == Admission::Ignore {
            tracing::debug!(%mac, ?ty, "not answering: policy ignores this MAC");
            return Ok(None);
        }
        match ty {
            MessageType::Discover => self.discover(&msg, &client, admission, now).map(Some),
            MessageType::Request => self.request(&msg, &client, admission, now),
            _ => self.inform(&msg, &client).map(Some),
        }
    }

    fn in_pool(&self, a: Ipv4Addr) -> bool {
        a >= self.config.pool_start && a <= self.config.pool_end && a != self.config.server
    }

    /// The address a DISCOVER should be offered.
    fn choose(
        &self,
        mac: MacAddr,
        admission: Admission,
        requested: Option<Ipv4Addr>,
        now: u64,
    ) -> Result<Ipv4Addr, DhcpError> {
        if let Admission::Known {
            address: Some(fixed),
        } = admission
        {
            if !self.config.subnet.contains(&fixed) {
                return Err(DhcpError::FixedAddressOutsideSubnet {
                    mac,
                    address: fixed,
                });
            }
            return match self.leases.holder(fixed, now) {
                Some(holder) if holder != mac => Err(DhcpError::FixedAddressTaken {
                    mac,
                    address: fixed,
                    holder,
                }),
                _ => Ok(fixed),
            };
        }
        let usable = |a: Ipv4Addr| self.in_pool(a) && self.leases.available(a, mac, now);
        if let Some(a) = self.leases.address_of(mac).filter(|a| usable(*a)) {
            return Ok(a);
        }
        if let Some(a) = requested.filter(|a| usable(*a)) {
            return Ok(a);
        }
        let (start, end) = (
            u32::from(self.config.pool_start),
            u32::from(self.config.pool_end),
        );
        (start..=end)
            .map(Ipv4Addr::from)
            .find(|a| usable(*a))
            .ok_or(DhcpError::PoolExhausted { mac })
    }

    fn discover(
        &mut self,
        req: &Message,
        client: &ClientInfo,
        admission: Admission,
        now: u64,
    ) -> Result<Reply, DhcpError> {
        let address = self.choose(
            client.mac,
            admission,
            opt_addr(req, OptionCode::RequestedIpAddress),
            now,
        )?;
        self.leases.offer(
            client.mac,
            address,
            now + self.config.offer_hold.as_secs(),
            now,
        );
        tracing::info!(mac = %client.mac, %address, ?admission, ipxe = client.ipxe, arch = ?client.arch, "DHCPOFFER");
        self.reply(req, client, MessageType::Offer, Some(address))
    }

    fn request(
        &mut self,
        req: &Message,
        client: &ClientInfo,
        admission: Admission,
        now: u64,
    ) -> Result<Option<Reply>, DhcpError> {
        let mac = client.mac;
        let requested = opt_addr(req, OptionCode::RequestedIpAddress);
        let ciaddr = req.ciaddr();
        let address = match opt_addr(req, OptionCode::ServerIdentifier) {
            // SELECTING, but the client chose another server's offer.
            Some(sid) if sid != self.config.server => {
                self.leases.withdraw_offer(mac);
                tracing::debug!(%mac, server = %sid, "client chose another DHCP server");
                return Ok(None);
            }
            // SELECTING our offer, or INIT-REBOOT.
            _ if requested.is_some() => requested,
            // RENEWING / REBINDING.
            _ if !ciaddr.is_unspecified() => Some(ciaddr),
            _ => None,
        };
        let Some(address) = address else {
            return self.nak(req, mac, "REQUEST names no address (option 50 or ciaddr)");
        };
        if !self.config.subnet.contains(&address) {
            return self.nak(req, mac, "address is not on this network");
        }
        match admission {
            Admission::Known {
                address: Some(fixed),
            } if fixed != address => {
                return self.nak(req, mac, "this client has a fixed address");
            }
            Admission::Known { address: Some(_) } => {}
            _ => {
                let own = self.leases.address_of(mac) == Some(address);
                if !own && !self.in_pool(address) {
                    return self.nak(req, mac, "address is not in the pool");
                }
            }
        }
        if !self.leases.available(address, mac, now) {
            return self.nak(req, mac, "address is in use");
        }
        let lease = self
            .leases
            .bind(mac, address, now + self.config.lease_time.as_secs());
        tracing::info!(%mac, %address, ipxe = client.ipxe, "DHCPACK");
        self.policy.lease_changed(&LeaseChange::Bound(lease));
        self.reply(req, client, MessageType::Ack, Some(address))
            .map(Some)
    }

    fn inform(&self, req: &Message, client: &ClientInfo) -> Result<Reply, DhcpError> {
        tracing::debug!(mac = %client.mac, "DHCPINFORM");
        self.reply(req, client, MessageType::Ack, None)
    }

    fn release(&mut self, req: &Message, mac: MacAddr) -> Option<Reply> {
        if opt_addr(req, OptionCode::ServerIdentifier).is_some_and(|s| s != self.config.server) {
            return None;
        }
        if self.leases.address_of(mac) == Some(req.ciaddr())
            && let Some(lease) = self.leases.release(mac)
        {
            tracing::info!(%mac, address = %lease.address, "DHCPRELEASE");
            self.policy.lease_changed(&LeaseChange::Released(lease));
        }
        None
    }

    fn decline(&mut self, req: &Message, mac: MacAddr, now: u64) -> Option<Reply> {
        if opt_addr(req, OptionCode::ServerIdentifier).is_some_and(|s| s != self.config.server) {
            return None;
        }
        let address = opt_addr(req, OptionCode::RequestedIpAddress)?;
        if !self.in_pool(address) {
            return None;
        }
        tracing::warn!(%mac, %address, "DHCPDECLINE: address in use on the LAN");
        self.leases
            .decline(mac, address, now + self.config.decline_hold.as_secs());
        self.policy
            .lease_changed(&LeaseChange::Declined { mac, address });
        None
    }

    fn nak(&self, req: &Message, mac: MacAddr, why: &str) -> Result<Option<Reply>, DhcpError> {
        tracing::info!(%mac, reason = why, "DHCPNAK");
        let mut m = self.base(req, MessageType::Nak);
        m.opts_mut().insert(DhcpOption::Message(why.to_string()));
        let to = if req.giaddr().is_unspecified() {
            Destination::Broadcast
        } else {
            Destination::Relay(req.giaddr())
        };
        Ok(Some(Reply {
            message_type: MessageType::Nak,
            to,
            bytes: encode(&m)?,
        }))
    }

    fn base(&self, req: &Message, ty: MessageType) -> Message {
        let mut m = Message::new_with_id(
            req.xid(),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            req.giaddr(),
            &req.chaddr()[..6],
        );
        m.set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_flags(req.flags());
        m.opts_mut().insert(DhcpOption::MessageType(ty));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(self.config.server));
        m
    }

    /// OFFER or ACK: network settings, lease times, boot file.
    fn reply(
        &self,
        req: &Message,
        client: &ClientInfo,
        ty: MessageType,
        yiaddr: Option<Ipv4Addr>,
    ) -> Result<Reply, DhcpError> {
        let c = &self.config;
        let mut m = self.base(req, ty);
        m.set_ciaddr(req.ciaddr()).set_siaddr(c.server);
        let opts = m.opts_mut();
        opts.insert(DhcpOption::SubnetMask(c.subnet.netmask()));
        if let Some(r) = c.router {
            opts.insert(DhcpOption::Router(vec![r]));
        }
        if !c.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(c.dns.clone()));
        }
        if let Some(a) = yiaddr {
            let secs = c.lease_time.as_secs() as u32;
            opts.insert(DhcpOption::AddressLeaseTime(secs));
            opts.insert(DhcpOption::Renewal(secs / 2));
            opts.insert(DhcpOption::Rebinding(secs / 8 * 7));
            m.set_yiaddr(a);
        }
        match boot_file(client, &c.boot) {
            BootFile::IpxeScript(url) => {
                self.set_file(&mut m, &url);
                m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
                    OptionCode::from(IPXE_ENCAP),
                    vec![IPXE_NO_PXEDHCP, 1, 1],
                )));
            }
            BootFile::Tftp(name) => self.set_file(&mut m, &name),
            BootFile::UnsupportedArch(arch) => {
                tracing::warn!(mac = %client.mac, arch, "PXE client architecture has no iPXE binary; address only");
            }
            BootFile::None => {}
        }
        let to = if !req.giaddr().is_unspecified() {
            Destination::Relay(req.giaddr())
        } else if !req.ciaddr().is_unspecified() {
            Destination::Unicast(req.ciaddr())
        } else {
            // Unicast to yiaddr would need an ARP entry we cannot add from
            // here; clients accept broadcast replies.
            Destination::Broadcast
        };
        Ok(Reply {
            message_type: ty,
            to,
            bytes: encode(&m)?,
        })
    }

    /// Boot file in option 67 and, when it fits, the BOOTP `file` field
    /// (older PXE ROMs read only that).
    fn set_file(&self, m: &mut Message, name: &str) {
        if name.len() < 128 {
            m.set_fname(name.as_bytes());
        }
        m.opts_mut()
            .insert(DhcpOption::BootfileName(name.as_bytes().to_vec()));
    }
}

fn encode(m: &Message) -> Result<Vec<u8>, DhcpError> {
    let mut bytes = m.to_vec().map_err(DhcpError::Encode)?;
    if bytes.len() < MIN_REPLY_LEN {
        bytes.resize(MIN_REPLY_LEN, 0);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_file_by_client() {
        let files = BootFiles {
            bios: "undionly.kpxe".into(),
            uefi: "ipxe.efi".into(),
            http_base: "http://10.0.0.1:8080".into(),
        };
        let mac = MacAddr([0x52, 0x54, 0, 0, 0, 0x11]);
        let c = |arch, ipxe| ClientInfo {
            mac,
            arch,
            ipxe,
            vendor_class: None,
        };
        assert_eq!(
            boot_file(&c(Some(0), false), &files),
            BootFile::Tftp("undionly.kpxe".into())
        );
        assert_eq!(
            boot_file(&c(Some(7), false), &files),
            BootFile::Tftp("ipxe.efi".into())
        );
        assert_eq!(
            boot_file(&c(Some(9), false), &files),
            BootFile::Tftp("ipxe.efi".into())
        );
        assert_eq!(
            boot_file(&c(Some(11), false), &files),
            BootFile::UnsupportedArch(11)
        );
        assert_eq!(boot_file(&c(None, false), &files), BootFile::None);
        assert_eq!(
            boot_file(&c(Some(0), true), &files),
            BootFile::IpxeScript("http://10.0.0.1:8080/boot/52-54-00-00-00-11/boot.ipxe".into())
        );
    }

    #[test]
    fn user_class_forms() {
        assert!(user_class_is_ipxe(b"iPXE"));
        assert!(user_class_is_ipxe(b"\x04iPXE"));
        assert!(user_class_is_ipxe(b"\x03abc\x04iPXE"));
        assert!(!user_class_is_ipxe(b"iPXE2"));
        assert!(!user_class_is_ipxe(b"\x05iPXE"));
        assert!(!user_class_is_ipxe(b""));
    }

    #[test]
    fn config_is_validated() {
        let base = DhcpConfig::new(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.0/24".parse().unwrap(),
            "10.0.0.100".parse().unwrap(),
            "10.0.0.200".parse().unwrap(),
            "http://10.0.0.1".into(),
        );
        base.validate().unwrap();
        let mut c = base.clone();
        c.server = "10.0.1.1".parse().unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ServerOutsideSubnet { .. })
        ));
        let mut c = base.clone();
        c.pool_end = "10.0.1.5".parse().unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::BadPool { .. })));
        let mut c = base.clone();
        c.boot.http_base = "http://10.0.0.1/".into();
        assert!(matches!(c.validate(), Err(ConfigError::BadHttpBase { .. })));
        let mut c = base;
        c.boot.bios = "a b".into();
        assert!(matches!(c.validate(), Err(ConfigError::BadBootFile { .. })));
    }
}
