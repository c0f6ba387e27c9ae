//! Our NBD server (and a small client), on tokio.
//!
//! - [`protocol`]: constants and the pure request/option parsers.
//! - [`handshake`]: fixed-newstyle negotiation.
//! - [`export`]: sparse-file I/O behind one disc.
//! - [`server`]: a disc's listener, ACL, one-client rule, transmission.
//! - [`client`]: what the mirror and the tests speak.

pub mod client;
pub mod export;
pub mod handshake;
pub mod protocol;
pub mod server;
pub mod splice;

pub use client::{ClientError, NbdClient};
pub use export::{Export, ExportError};
pub use server::DiscServer;
