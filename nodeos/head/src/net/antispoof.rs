//! Anti-spoofing: what a VM may send into its VLAN, enforced in the
//! kernel on its tap.
//!
//! The tap gets an `ingress` qdisc and two `cls_bpf` filters holding
//! *classic* BPF programs built here (no eBPF loader, no `tc` binary, no
//! act_gact, which Debian builds as a module and some kernels lack):
//!
//! - preference 1, the verdict: returns non-zero ("match", no actions:
//!   the frame is accepted) for a frame the VM may send, 0 ("no match")
//!   otherwise. A classic program that reads past the end of a short
//!   frame also returns 0, so a truncated frame is never let through.
//! - preference 2, direct-action, `ret TC_ACT_SHOT`: whatever the first
//!   did not match is dropped.
//!
//! Frames a VM sends are the tap's *received* frames, so its ingress
//! hook sees every one of them before the bridge does. The verdict
//! program passes only:
//!
//! - frames without an 802.1Q tag (a VM must not reach other VLANs),
//!   whose Ethernet source is the NIC's MAC, and whose type is
//! - IPv4 from one of the NIC's IPv4 addresses, or from 0.0.0.0 to UDP
//!   port 67 (a DHCP client before it has a lease);
//! - ARP whose sender hardware address is the MAC and whose sender IP is
//!   one of its IPv4 addresses or 0.0.0.0 (an address probe);
//! - RARP with the MAC as sender hardware address and no sender IP (qemu
//!   announces a VM so after a live migration);
//! - IPv6 only if the NIC has IPv6 addresses: from one of them, from the
//!   link-local address derived from the MAC (EUI-64), or from `::` for
//!   ICMPv6 (duplicate address detection). A guest using stable-privacy
//!   or random link-local addresses is not served; a NIC without IPv6
//!   addresses sends no IPv6 at all.
//!
//! Everything else (other EtherTypes, forged MACs or addresses) is
//! dropped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The verdict program's "match": the frame is accepted.
pub const PASS: u32 = 1;
/// The verdict program's "no match": the drop-all filter gets the frame.
pub const NO_MATCH: u32 = 0;
/// What the direct-action drop-all program returns (`pkt_cls.h`).
pub const TC_ACT_SHOT: u32 = 2;

// Classic BPF opcodes (`linux/filter.h`, `linux/bpf_common.h`).
const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_IND: u16 = 0x40;
const BPF_MSH: u16 = 0xa0;
const BPF_JEQ: u16 = 0x10;
const BPF_K: u16 = 0x00;
/// `SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT`: 1 if the frame had a tag
/// (the stack moves it out of the data before the ingress hook).
const VLAN_TAG_PRESENT: u32 = 0xffff_f000 + 48;

/// One `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// What a NIC may send: its MAC and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub mac: [u8; 6],
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
}

impl Allowed {
    pub fn new(mac: [u8; 6], ips: &[IpAddr]) -> Allowed {
        let mut a = Allowed {
            mac,
            ipv4: vec![],
            ipv6: vec![],
        };
        for ip in ips {
            match ip {
                IpAddr::V4(v4) => a.ipv4.push(*v4),
                IpAddr::V6(v6) => a.ipv6.push(*v6),
            }
        }
        a
    }
}

/// The EUI-64 link-local address a MAC gives (RFC 4291 app. A).
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let m = mac;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum To {
    Next,
    Pass,
    Drop,
    Label(usize),
}

enum Op {
    Stmt(u16, u32),
    Jeq(u32, To, To),
    Label(usize),
}

#[derive(Default)]
struct Asm {
    ops: Vec<Op>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels += 1;
        self.labels - 1
    }
    fn ld(&mut self, size: u16, offset: u32) {
        self.ops.push(Op::Stmt(BPF_LD | size | BPF_ABS, offset));
    }
    fn jeq(&mut self, k: u32, t: To, f: To) {
        self.ops.push(Op::Jeq(k, t, f));
    }
    fn at(&mut self, label: usize) {
        self.ops.push(Op::Label(label));
    }

    /// Lays the program out with `ret PASS` and `ret NO_MATCH` at the end.
    fn finish(self) -> Result<Vec<Insn>, TooLong> {
        let mut positions = vec![0usize; self.labels];
        let mut n = 0;
        for op in &self.ops {
            match op {
                Op::Label(l) => positions[*l] = n,
                _ => n += 1,
            }
        }
        let (pass, drop) = (n, n + 1);
        let mut out = Vec::with_capacity(n + 2);
        for op in &self.ops {
            let here = out.len();
            let offset = |t: To| -> Result<u8, TooLong> {
                let target = match t {
                    To::Next => here + 1,
                    To::Pass => pass,
                    To::Drop => drop,
                    To::Label(l) => positions[l],
                };
                u8::try_from(target - here - 1).map_err(|_| TooLong)
            };
            match op {
                Op::Label(_) => {}
                Op::Stmt(code, k) => out.push(Insn {
                    code: *code,
                    jt: 0,
                    jf: 0,
                    k: *k,
                }),
                Op::Jeq(k, t, f) => out.push(Insn {
                    code: BPF_JMP | BPF_JEQ | BPF_K,
                    jt: offset(*t)?,
                    jf: offset(*f)?,
                    k: *k,
                }),
            }
        }
        out.push(Insn {
            code: BPF_RET | BPF_K,
            jt: 0,
            jf: 0,
            k: PASS,
        });
        out.push(Insn {
            code: BPF_RET | BPF_K,
            jt: 0,
            jf: 0,
            k: NO_MATCH,
        });
        Ok(out)
    }
}

/// Too many addresses for classic BPF's 8-bit forward jumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many addresses on one NIC for the anti-spoofing filter")]
pub struct TooLong;

fn mac_hi(mac: [u8; 6]) -> u32 {
    u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]])
}
fn mac_lo(mac: [u8; 6]) -> u32 {
    u32::from(u16::from_be_bytes([mac[4], mac[5]]))
}

/// The drop-all program (preference 2, direct-action).
pub fn drop_all() -> Vec<Insn> {
    vec![Insn {
        code: BPF_RET | BPF_K,
        jt: 0,
        jf: 0,
        k: TC_ACT_SHOT,
    }]
}

/// The verdict program for one NIC (see the module's docs).
pub fn program(a: &Allowed) -> Result<Vec<Insn>, TooLong> {
    let mut p = Asm::default();
    let (ipv4, arp, ipv6, rarp) = (p.label(), p.label(), p.label(), p.label());
    // No 802.1Q tag, in the metadata or as the EtherType (checked below).
    p.ld(BPF_B, VLAN_TAG_PRESENT);
    p.jeq(0, To::Next, To::Drop);
    // Ethernet source = the NIC's MAC.
    p.ld(BPF_W, 6);
    p.jeq(mac_hi(a.mac), To::Next, To::Drop);
    p.ld(BPF_H, 10);
    p.jeq(mac_lo(a.mac), To::Next, To::Drop);
    p.ld(BPF_H, 12);
    p.jeq(0x0800, To::Label(ipv4), To::Next);
    p.jeq(0x0806, To::Label(arp), To::Next);
    p.jeq(0x8035, To::Label(rarp), To::Next);
    if a.ipv6.is_empty() {
        p.jeq(0x86dd, To::Drop, To::Drop);
    } else {
        p.jeq(0x86dd, To::Label(ipv6), To::Drop);
    }

    // IPv4: the source address (14 + 12).
    p.at(ipv4);
    p.ld(BPF_W, 26);
    for ip in &a.ipv4 {
        p.jeq(u32::from(*ip), To::Pass, To::Next);
    }
    p.jeq(0, To::Next, To::Drop);
    // 0.0.0.0 only for UDP to port 67 (DHCP discover/request).
    p.ld(BPF_B, 23);
    p.jeq(17, To::Next, To::Drop);
    p.ops.push(Op::Stmt(BPF_LDX | BPF_B | BPF_MSH, 14));
    p.ops.push(Op::Stmt(BPF_LD | BPF_H | BPF_IND, 14 + 2));
    p.jeq(67, To::Pass, To::Drop);

    // ARP: sender hardware address (14 + 8) and sender IP (14 + 14).
    p.at(arp);
    p.ld(BPF_W, 22);
    p.jeq(mac_hi(a.mac), To::Next, To::Drop);
    p.ld(BPF_H, 26);
    p.jeq(mac_lo(a.mac), To::Next, To::Drop);
    p.ld(BPF_W, 28);
    for ip in &a.ipv4 {
        p.jeq(u32::from(*ip), To::Pass, To::Next);
    }
    p.jeq(0, To::Pass, To::Drop);

    // RARP, as qemu announces a VM after a live migration: the MAC as
    // sender hardware address, no sender IP.
    p.at(rarp);
    p.ld(BPF_W, 22);
    p.jeq(mac_hi(a.mac), To::Next, To::Drop);
    p.ld(BPF_H, 26);
    p.jeq(mac_lo(a.mac), To::Next, To::Drop);
    p.ld(BPF_W, 28);
    p.jeq(0, To::Pass, To::Drop);

    // IPv6: the source address (14 + 8 .. 14 + 24).
    p.at(ipv6);
    if !a.ipv6.is_empty() {
        let mut sources = vec![link_local(a.mac)];
        sources.extend(a.ipv6.iter().copied());
        for src in sources {
            let next = p.label();
            let o = src.octets();
            for (i, chunk) in o.chunks(4).enumerate() {
                let w = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                p.ld(BPF_W, 22 + 4 * i as u32);
                let t = if i == 3 { To::Pass } else { To::Next };
                p.jeq(w, t, To::Label(next));
            }
            p.at(next);
        }
        // `::` (duplicate address detection) only for ICMPv6.
        for i in 0..4 {
            p.ld(BPF_W, 22 + 4 * i);
            p.jeq(0, To::Next, To::Drop);
        }
        p.ld(BPF_B, 20);
        p.jeq(58, To::Pass, To::Drop);
    }
    p.finish()
}

/// The program as `TCA_BPF_OPS` wants it: `struct sock_filter`s in host
/// byte order.
pub fn encode(prog: &[Insn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prog.len() * 8);
    for i in prog {
        out.extend_from_slice(&i.code.to_ne_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic BPF interpreter for what `program` emits, so the
    /// program's logic is tested without a kernel.
    fn run(prog: &[Insn], frame: &[u8], vlan_tag: bool) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let byte = |o: usize| frame.get(o).copied();
        let load = |o: usize, size: u16| -> Option<u32> {
            Some(match size {
                BPF_W => u32::from_be_bytes([byte(o)?, byte(o + 1)?, byte(o + 2)?, byte(o + 3)?]),
                BPF_H => u32::from(u16::from_be_bytes([byte(o)?, byte(o + 1)?])),
                _ => u32::from(byte(o)?),
            })
        };
        loop {
            let i = prog[pc];
            pc += 1;
            let class = i.code & 0x07;
            match class {
                BPF_RET => return i.k,
                BPF_LD if i.code & 0xe0 == BPF_ABS && i.k == VLAN_TAG_PRESENT => {
                    a = u32::from(vlan_tag)
                }
                BPF_LD if i.code & 0xe0 == BPF_ABS => match load(i.k as usize, i.code & 0x18) {
                    Some(v) => a = v,
                    None => return 0, // the kernel ends such a run with 0
                },
                BPF_LD => match load((x + i.k) as usize, i.code & 0x18) {
                    Some(v) => a = v,
                    None => return 0,
                },
                BPF_LDX => x = 4 * u32::from(byte(i.k as usize).unwrap_or(0) & 0xf),
                BPF_JMP => {
                    pc += usize::from(if a == i.k { i.jt } else { i.jf });
                }
                _ => panic!("unexpected opcode {:#x}", i.code),
            }
        }
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const OTHER: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x57];

    fn eth(src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ipv4(src: Ipv4Addr, proto: u8, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, proto, 0, 0];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&[10, 0, 0, 1]);
        p.extend_from_slice(&[0, 68]);
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0, 8, 0, 0]);
        p
    }

    fn arp(sha: [u8; 6], spa: Ipv4Addr) -> Vec<u8> {
        let mut p = vec![0, 1, 8, 0, 6, 4, 0, 1];
        p.extend_from_slice(&sha);
        p.extend_from_slice(&spa.octets());
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(&[10, 0, 0, 1]);
        p
    }

    fn ipv6(src: Ipv6Addr, next: u8) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 8, next, 255];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        p.extend_from_slice(&[0; 8]);
        p
    }

    #[test]
    fn passes_only_the_nics_own_addresses() {
        let me: Ipv4Addr = "10.0.0.5".parse().unwrap();
        let also: Ipv4Addr = "10.0.0.6".parse().unwrap();
        let forged: Ipv4Addr = "10.0.0.7".parse().unwrap();
        let v6: Ipv6Addr = "fd00::5".parse().unwrap();
        let a = Allowed::new(MAC, &[me.into(), also.into(), v6.into()]);
        let p = program(&a).unwrap();
        let verdict = |f: &[u8]| run(&p, f, false);
        let udp = 17;
        assert_eq!(verdict(&eth(MAC, 0x0800, &ipv4(me, udp, 53))), PASS);
        assert_eq!(verdict(&eth(MAC, 0x0800, &ipv4(also, 6, 80))), PASS);
        assert_eq!(verdict(&eth(MAC, 0x0800, &ipv4(forged, udp, 53))), NO_MATCH);
        assert_eq!(verdict(&eth(OTHER, 0x0800, &ipv4(me, udp, 53))), NO_MATCH);
        // A DHCP client without a lease, but nothing else from 0.0.0.0.
        let none = Ipv4Addr::UNSPECIFIED;
        assert_eq!(verdict(&eth(MAC, 0x0800, &ipv4(none, udp, 67))), PASS);
        assert_eq!(verdict(&eth(MAC, 0x0800, &ipv4(none, udp, 68))), NO_MATCH);
        assert_eq!(verdict(&eth(MAC, 0x0800, &ipv4(none, 6, 67))), NO_MATCH);
        // ARP: sender MAC and IP.
        assert_eq!(verdict(&eth(MAC, 0x0806, &arp(MAC, me))), PASS);
        assert_eq!(verdict(&eth(MAC, 0x0806, &arp(MAC, none))), PASS);
        assert_eq!(verdict(&eth(MAC, 0x0806, &arp(MAC, forged))), NO_MATCH);
        assert_eq!(verdict(&eth(MAC, 0x0806, &arp(OTHER, me))), NO_MATCH);
        // RARP: qemu's announcement after a migration, nothing else.
        assert_eq!(verdict(&eth(MAC, 0x8035, &arp(MAC, none))), PASS);
        assert_eq!(verdict(&eth(MAC, 0x8035, &arp(OTHER, none))), NO_MATCH);
        assert_eq!(verdict(&eth(MAC, 0x8035, &arp(MAC, me))), NO_MATCH);
        // IPv6: its own, its link-local, `::` for ICMPv6 only.
        assert_eq!(verdict(&eth(MAC, 0x86dd, &ipv6(v6, 17))), PASS);
        assert_eq!(verdict(&eth(MAC, 0x86dd, &ipv6(link_local(MAC), 58))), PASS);
        assert_eq!(
            verdict(&eth(MAC, 0x86dd, &ipv6(link_local(OTHER), 58))),
            NO_MATCH
        );
        assert_eq!(
            verdict(&eth(MAC, 0x86dd, &ipv6("fd00::6".parse().unwrap(), 17))),
            NO_MATCH
        );
        let unspecified = Ipv6Addr::UNSPECIFIED;
        assert_eq!(verdict(&eth(MAC, 0x86dd, &ipv6(unspecified, 58))), PASS);
        assert_eq!(verdict(&eth(MAC, 0x86dd, &ipv6(unspecified, 17))), NO_MATCH);
        // A frame cut short inside the headers is not matched.
        let whole = eth(MAC, 0x0800, &ipv4(none, udp, 67));
        assert_eq!(verdict(&whole[..37]), NO_MATCH);
        assert_eq!(verdict(&whole[..38]), PASS);
        assert_eq!(verdict(&eth(MAC, 0x0806, &arp(MAC, me)[..12])), NO_MATCH);
        // Tags, in the metadata or the data, and other EtherTypes.
        assert_eq!(
            run(&p, &eth(MAC, 0x0800, &ipv4(me, udp, 53)), true),
            NO_MATCH
        );
        assert_eq!(verdict(&eth(MAC, 0x8100, &[0, 5, 8, 0])), NO_MATCH);
        assert_eq!(verdict(&eth(MAC, 0x88cc, &[0; 40])), NO_MATCH);
    }

    #[test]
    fn no_ipv6_without_ipv6_addresses() {
        let a = Allowed::new(MAC, &["10.0.0.5".parse().unwrap()]);
        let p = program(&a).unwrap();
        assert_eq!(
            run(&p, &eth(MAC, 0x86dd, &ipv6(link_local(MAC), 58)), false),
            NO_MATCH
        );
        // A NIC without addresses still gets DHCP out.
        let bare = program(&Allowed::new(MAC, &[])).unwrap();
        let discover = eth(MAC, 0x0800, &ipv4(Ipv4Addr::UNSPECIFIED, 17, 67));
        assert_eq!(run(&bare, &discover, false), PASS);
        assert_eq!(
            run(
                &bare,
                &eth(MAC, 0x0800, &ipv4("10.0.0.5".parse().unwrap(), 17, 67)),
                false
            ),
            NO_MATCH
        );
    }

    #[test]
    fn link_local_follows_eui64() {
        assert_eq!(
            link_local(MAC),
            "fe80::5054:ff:fe12:3456".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn too_many_addresses_is_an_error_not_a_bad_jump() {
        let many: Vec<IpAddr> = (0..40u8)
            .map(|i| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i))))
            .collect();
        assert_eq!(program(&Allowed::new(MAC, &many)), Err(TooLong));
        let fine: Vec<IpAddr> = many[..8].to_vec();
        assert!(program(&Allowed::new(MAC, &fine)).is_ok());
    }
}
