//! BigV boot services for the boot LAN: DHCPv4 for PXE and iPXE
//! ([`dhcp`]), a read-only TFTP server for the iPXE binaries ([`tftp`]),
//! per-node iPXE scripts ([`ipxe`]), the HTTP server for scripts and
//! image files ([`http`]) and IPv6 router advertisements ([`ra`]) so that
//! iPXE does not wait for IPv6 autoconfiguration.
//!
//! The crate knows nothing of the brain's model: it asks a [`BootPolicy`]
//! whom to answer and what each node boots, and tells it about lease
//! changes. Each service is a pure handler (unit- and property-tested)
//! plus a thin socket task that owns it.

pub mod dhcp;
pub mod fsroot;
pub mod http;
pub mod ipxe;
mod mac;
mod policy;
pub mod ra;
pub mod tftp;

pub use mac::{MacAddr, ParseMacError};
pub use policy::{Admission, BootPolicy, ClientInfo, LeaseChange, NodeBoot};

/// Displays an error with its sources: `outer: inner: innermost`.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}
