//! The BigV tail agent: every VM disc is a sparse file in a storage pool,
//! served over NBD on its own address to the one head its access list
//! names, and movable live to another tail by mirroring.
//!
//! The code tour is in `nodeos/tail/README.md`; the design in
//! `docs/storage.md`.

pub mod acl;
pub mod addresses;
pub mod agent;
pub mod backup_transfer;
pub mod backups;
pub mod bench;
pub mod config;
pub mod limits;
pub mod mirror;
mod mirror_send;
pub mod nbd;
pub mod pools;
pub mod templates;

/// Formats an error with its sources: `outer: inner: innermost`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
