//! The callback through which the boot services ask the brain what to do.
//!
//! The boot services know nothing of the brain's model. They call a
//! [`BootPolicy`] synchronously on their own task, so every method must
//! answer from memory (a map the brain keeps current) and must never wait on
//! disc, network or a lock that slow work may hold. Anything slow the brain
//! wants to do in response (persist a lease, record a newly seen node) it
//! hands to its own task, e.g. over an unbounded channel.

use std::net::{Ipv4Addr, SocketAddr};

use crate::MacAddr;

/// Who is asking, as far as the DHCP packet tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub mac: MacAddr,
    /// Option 93, client system architecture (0 BIOS, 7/9 x86-64 UEFI).
    pub arch: Option<u16>,
    /// The client is iPXE (option 77 user class "iPXE").
    pub ipxe: bool,
    /// Option 60, vendor class ("PXEClient:Arch:00000:UNDI:002001", …).
    pub vendor_class: Option<String>,
}

/// Whether the DHCP server answers a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A node the brain knows; `address` pins its IPv4 address (it must lie
    /// in the boot subnet), otherwise one comes from the pool.
    Known { address: Option<Ipv4Addr> },
    /// A node the brain has not accepted yet but is willing to enroll: it
    /// gets an address from the pool and boots the image to show up as
    /// pending.
    Enrolling,
    /// Not ours: stay silent (another DHCP server may own it).
    Ignore,
}

/// What one node boots: everything its iPXE script needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBoot {
    /// The node's role as the brain names it (`head`, `tail`, `pending`…).
    pub role: String,
    /// The image version the node must boot; also names the image's folder
    /// on the HTTP server.
    pub image_version: String,
    /// Kernel file name inside the image (`vmlinuz`).
    pub kernel: String,
    /// Initrd file names inside the image, in load order.
    pub initrds: Vec<String>,
    /// The brain's spine address the node connects to.
    pub spine: SocketAddr,
    /// SHA-256 of the brain's certificate (DER), pinned by the node.
    pub cert_sha256: [u8; 32],
    /// More kernel arguments (`quiet`, `bigv.debug=1`…).
    pub extra_args: Vec<String>,
}

/// A lease change the brain may want to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseChange {
    /// A lease was granted or renewed (DHCPACK).
    Bound(crate::dhcp::Lease),
    /// The client gave its lease back (DHCPRELEASE).
    Released(crate::dhcp::Lease),
    /// The client found the address in use (DHCPDECLINE); the server keeps
    /// the address out of the pool for a while.
    Declined { mac: MacAddr, address: Ipv4Addr },
}

/// The brain's side of the boot services. All methods are called on the
/// services' own tasks and must return promptly from in-memory state.
pub trait BootPolicy: Send + Sync + 'static {
    /// Whether to answer this DHCP client at all.
    fn admit(&self, client: &ClientInfo) -> Admission;

    /// The boot parameters for this node's iPXE script, or `None` if it
    /// should get none (the HTTP server answers 404).
    fn node_boot(&self, mac: MacAddr) -> Option<NodeBoot>;

    /// A lease changed; persist it if you like. Must not block.
    fn lease_changed(&self, change: &LeaseChange) {
        let _ = change;
    }
}
