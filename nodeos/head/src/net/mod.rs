//! VM networking on a head: a bridge per VLAN on the trunk, a tap per
//! VM NIC on its VLAN's bridge, anti-spoofing on every tap.
//!
//! ```text
//!  trunk (eth0) ──┬── eth0.5 (802.1Q, VLAN 5) ── bv5 ──┬── tap t…n0 ── VM a, NIC 0
//!                 │                                   └── tap t…n0 ── VM b, NIC 0
//!                 └── eth0.7 (VLAN 7) ────────────── bv7 ──── tap t…n1 ── VM a, NIC 1
//! ```
//!
//! Every VLAN is tagged on the trunk, except the one named
//! `untagged_vlan` in the config, whose bridge gets the trunk itself as
//! its port (the trunk must then carry no address of the head's own: a
//! bridge port's addresses are dead). VLAN ids are 1 to 4094.
//!
//! Taps are created before qemu starts ([`nic_up`]), qemu opens them by
//! name, and they are removed when the VM ends ([`nic_down`]); an agent
//! restart leaves them alone. Bridges and VLAN sub-interfaces are shared
//! and kept. Everything is idempotent: what exists is reused.
//!
//! All of it is rtnetlink except the taps (`tap.rs`: netlink cannot
//! create them), in the calling thread's network namespace.

pub mod antispoof;
pub mod link;
pub mod tap;

use std::net::IpAddr;

use bigv_spine::resource::NetworkInterface;

pub use antispoof::Allowed;

/// The head's networking settings (`nic_backend = "bridged"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The interface carrying the VMs' VLANs, tagged.
    pub trunk: String,
    /// The VLAN that is untagged on the trunk, if any.
    pub untagged_vlan: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("opening a netlink socket")]
    Connect(#[source] std::io::Error),
    #[error("the trunk interface {0:?} does not exist")]
    NoTrunk(String),
    #[error("this kernel cannot make 802.1Q VLAN interfaces (module 8021q)")]
    NoVlanSupport,
    #[error("{what} {name}")]
    Netlink {
        what: &'static str,
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("creating the tap {name}")]
    Tap {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

fn invalid(field: String, reason: impl Into<String>) -> NetError {
    NetError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// A 64-bit FNV-1a: stable across builds (the tap names of a running VM
/// must come out the same after an agent upgrade).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The tap of NIC `index` of `vm.NAME`: `t`, 40 bits of a hash of the
/// name, `n`, the index — at most 15 characters (IFNAMSIZ − 1) for up to
/// 1000 NICs, and the same on every agent.
pub fn tap_name(vm: &str, index: usize) -> String {
    format!("t{:010x}n{index}", fnv1a(vm.as_bytes()) >> 24)
}

/// The bridge of a VLAN.
pub fn bridge_name(vlan: u32) -> String {
    format!("bv{vlan}")
}

/// The 802.1Q sub-interface of the trunk for a VLAN: `TRUNK.VLAN`, or
/// `bvt.VLAN` when that would be longer than 15 characters.
pub fn vlan_if_name(trunk: &str, vlan: u32) -> String {
    let name = format!("{trunk}.{vlan}");
    if name.len() < libc::IFNAMSIZ {
        name
    } else {
        format!("bvt.{vlan}")
    }
}

/// One NIC as the head sets it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicPlan {
    pub tap: String,
    pub vlan: u32,
    pub allowed: Allowed,
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Checks the NICs and names their taps; no side effects.
pub fn plan(vm: &str, nics: &[NetworkInterface]) -> Result<Vec<NicPlan>, NetError> {
    nics.iter()
        .enumerate()
        .map(|(i, nic)| {
            let field = format!("network_interfaces[{i}]");
            let mac = parse_mac(&nic.mac).ok_or_else(|| {
                invalid(
                    format!("{field}.mac"),
                    format!("{:?} is not a MAC", nic.mac),
                )
            })?;
            if mac[0] & 1 == 1 {
                return Err(invalid(format!("{field}.mac"), "a multicast MAC"));
            }
            if !(1..=4094).contains(&nic.vlan_id) {
                return Err(invalid(
                    format!("{field}.vlan_id"),
                    format!("{} is not a VLAN id (1 to 4094)", nic.vlan_id),
                ));
            }
            let ips = nic
                .ips
                .iter()
                .enumerate()
                .map(|(j, ip)| {
                    // An address, or an address with its prefix length.
                    let addr = ip.split('/').next().unwrap_or_default();
                    addr.parse::<IpAddr>().map_err(|_| {
                        invalid(
                            format!("{field}.ips[{j}]"),
                            format!("{ip:?} is not an address"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let allowed = Allowed::new(mac, &ips);
            antispoof::program(&allowed)
                .map_err(|e| invalid(format!("{field}.ips"), e.to_string()))?;
            Ok(NicPlan {
                tap: tap_name(vm, i),
                vlan: nic.vlan_id,
                allowed,
            })
        })
        .collect()
}

/// Sets up every NIC of `vm.NAME` before qemu starts (or is re-adopted):
/// the VLAN's bridge and uplink, the tap on it, up, with its
/// anti-spoofing filter. Returns the taps' names in NIC order — the place
/// where a per-tap service (the DHCP responder) starts.
pub async fn nic_up(
    config: &NetConfig,
    vm: &str,
    nics: &[NetworkInterface],
) -> Result<Vec<String>, NetError> {
    let plans = plan(vm, nics)?;
    if plans.is_empty() {
        return Ok(vec![]);
    }
    let nl = link::Netlink::connect()?;
    let trunk = nl
        .index(&config.trunk)
        .await?
        .ok_or_else(|| NetError::NoTrunk(config.trunk.clone()))?;
    nl.up(trunk, &config.trunk).await?;
    let mut taps = Vec::with_capacity(plans.len());
    for p in &plans {
        let bridge_name = bridge_name(p.vlan);
        let bridge = nl.ensure_bridge(&bridge_name).await?;
        if config.untagged_vlan == Some(p.vlan) {
            nl.enslave(trunk, &config.trunk, bridge).await?;
        } else {
            let name = vlan_if_name(&config.trunk, p.vlan);
            let vlan = nl.ensure_vlan(&name, trunk, p.vlan).await?;
            nl.enslave(vlan, &name, bridge).await?;
        }
        tap::create_persistent(&p.tap).map_err(|source| NetError::Tap {
            name: p.tap.clone(),
            source,
        })?;
        let tap = nl.index(&p.tap).await?.ok_or_else(|| NetError::Tap {
            name: p.tap.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        nl.antispoof(tap, &p.tap, &p.allowed).await?;
        nl.enslave(tap, &p.tap, bridge).await?;
        nl.lock_port(tap, &p.tap, p.allowed.mac).await?;
        tracing::info!(vm, tap = %p.tap, vlan = p.vlan, bridge = %bridge_name, "NIC up");
        taps.push(p.tap.clone());
    }
    Ok(taps)
}

/// What [`probe`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The kernel made an 802.1Q sub-interface (tagged VLANs work).
    pub vlans_8021q: bool,
}

/// The probe's links (not a VM's: those start with `t` and a hash, and
/// VLAN bridges are `bv` and digits).
const PROBE_TRUNK: &str = "bvprobe0";
const PROBE_BRIDGE: &str = "bvprobe1";
const PROBE_TAP: &str = "bvprobe";

/// Checks at agent start that this host can do what [`nic_up`] does,
/// without touching the trunk: it must exist; then a dry run on links of
/// its own — a bridge standing in for the trunk, an 802.1Q sub-interface
/// of it on a second bridge, a tap with its anti-spoofing filters and
/// locked port on that — all removed again. 802.1Q is reported, not
/// required (only tagged VLANs need it).
pub async fn probe(config: &NetConfig) -> Result<Probe, NetError> {
    let nl = link::Netlink::connect()?;
    nl.index(&config.trunk)
        .await?
        .ok_or_else(|| NetError::NoTrunk(config.trunk.clone()))?;
    let result = dry_run(&nl).await;
    for name in [
        PROBE_TAP,
        &format!("{PROBE_TRUNK}.9"),
        PROBE_BRIDGE,
        PROBE_TRUNK,
    ] {
        nl.delete(name).await?;
    }
    result
}

async fn dry_run(nl: &link::Netlink) -> Result<Probe, NetError> {
    let trunk = nl.ensure_bridge(PROBE_TRUNK).await?;
    let bridge = nl.ensure_bridge(PROBE_BRIDGE).await?;
    let vlan_name = format!("{PROBE_TRUNK}.9");
    let vlans_8021q = match nl.ensure_vlan(&vlan_name, trunk, 9).await {
        Ok(vlan) => {
            nl.enslave(vlan, &vlan_name, bridge).await?;
            true
        }
        Err(NetError::NoVlanSupport) => false,
        Err(e) => return Err(e),
    };
    tap::create_persistent(PROBE_TAP).map_err(|source| NetError::Tap {
        name: PROBE_TAP.into(),
        source,
    })?;
    let tap = nl.index(PROBE_TAP).await?.ok_or_else(|| NetError::Tap {
        name: PROBE_TAP.into(),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    let mac = [0x02, 0, 0, 0, 0, 1];
    nl.antispoof(tap, PROBE_TAP, &Allowed::new(mac, &[]))
        .await?;
    nl.enslave(tap, PROBE_TAP, bridge).await?;
    nl.lock_port(tap, PROBE_TAP, mac).await?;
    Ok(Probe { vlans_8021q })
}

/// Removes the taps of `vm.NAME`'s first `count` NICs (those that
/// exist); the bridges stay for other VMs.
pub async fn nic_down(vm: &str, count: usize) {
    if count == 0 {
        return;
    }
    let nl = match link::Netlink::connect() {
        Ok(nl) => nl,
        Err(e) => {
            tracing::warn!(vm, error = %crate::error_chain(&e), "removing the VM's taps");
            return;
        }
    };
    for i in 0..count {
        let name = tap_name(vm, i);
        match nl.delete(&name).await {
            Ok(true) => tracing::info!(vm, tap = %name, "tap removed"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(vm, tap = %name, error = %crate::error_chain(&e), "removing a tap")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_are_stable() {
        let t = tap_name("a-rather-long-vm-name.with.an.account.and.group", 999);
        assert!(t.len() <= 15, "{t}");
        assert_eq!(tap_name("web1", 0), tap_name("web1", 0));
        assert_ne!(tap_name("web1", 0), tap_name("web2", 0));
        assert_ne!(tap_name("web1", 0), tap_name("web1", 1));
        // Pinned: an agent upgrade must find a running VM's taps again.
        assert_eq!(
            tap_name("web1", 0),
            format!("t{:010x}n0", fnv1a(b"web1") >> 24)
        );
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(bridge_name(4094), "bv4094");
        assert_eq!(vlan_if_name("eth0", 5), "eth0.5");
        assert_eq!(vlan_if_name("enp129s0f1np1", 4094), "bvt.4094");
    }

    #[test]
    fn plans_check_the_nics() {
        let nic = NetworkInterface {
            mac: "52:54:00:12:34:56".into(),
            vlan_id: 5,
            model: "virtio".into(),
            ips: vec!["10.0.0.5".into(), "fd00::5/64".into()],
            dhcp: None,
        };
        let p = plan("web1", std::slice::from_ref(&nic)).unwrap();
        assert_eq!(p[0].tap, tap_name("web1", 0));
        assert_eq!(
            p[0].allowed.ipv4,
            ["10.0.0.5".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        assert_eq!(p[0].allowed.ipv6.len(), 1);
        let bad = |f: &dyn Fn(&mut NetworkInterface), field: &str| {
            let mut n = nic.clone();
            f(&mut n);
            let e = plan("web1", &[nic.clone(), n]).unwrap_err().to_string();
            assert!(e.starts_with(field), "{e}");
        };
        bad(&|n| n.vlan_id = 0, "network_interfaces[1].vlan_id");
        bad(&|n| n.vlan_id = 4095, "network_interfaces[1].vlan_id");
        bad(
            &|n| n.mac = "52:54:00:12:34".into(),
            "network_interfaces[1].mac",
        );
        bad(
            &|n| n.mac = "01:00:5e:00:00:01".into(),
            "network_interfaces[1].mac",
        );
        bad(
            &|n| n.ips.push("10.0.0.300".into()),
            "network_interfaces[1].ips[2]",
        );
    }
}
