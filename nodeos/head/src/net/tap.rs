//! Persistent taps through `/dev/net/tun` (rtnetlink cannot create
//! them: the kernel answers `EOPNOTSUPP`, `drivers/net/tun.c`).
//!
//! A tap is created with `TUNSETIFF` (`IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`) and made persistent with `TUNSETPERSIST`, then the
//! creating fd is closed: the device outlives it, so it exists before
//! qemu opens it by name (`-netdev tap,ifname=…`) and stays while qemu
//! runs, across agent restarts. It is removed with an RTM_DELLINK
//! (`bridge::delete`).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags in
/// the union (40 bytes in all on 64-bit Linux).
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str, flags: libc::c_short) -> std::io::Result<IfReq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name"),
        ));
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn open_tun() -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
}

/// Attaches to the tap `name` (creating it if it does not exist): the
/// returned file reads and writes whole Ethernet frames (with a
/// `virtio_net_hdr` first when `vnet_hdr`).
pub fn attach(name: &str, vnet_hdr: bool) -> std::io::Result<File> {
    let file = open_tun()?;
    let mut flags = IFF_TAP | IFF_NO_PI;
    if vnet_hdr {
        flags |= IFF_VNET_HDR;
    }
    let req = ifreq(name, flags)?;
    // SAFETY: TUNSETIFF reads a `struct ifreq`, which `IfReq` lays out;
    // the pointer is valid for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &req as *const IfReq) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Creates the persistent tap `name`, or does nothing if a tap of that
/// name exists (attaching to an existing persistent tap is allowed even
/// while qemu holds it open: taps are multi-attach only with
/// IFF_MULTI_QUEUE, so an attached one answers EBUSY, which means it
/// exists too).
pub fn create_persistent(name: &str) -> std::io::Result<()> {
    let file = match attach(name, true) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
        Err(e) => return Err(e),
    };
    // SAFETY: TUNSETPERSIST takes an int by value.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
