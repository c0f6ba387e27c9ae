//! The BigV head agent: every `vm.NAME` resource is one qemu process,
//! started from nothing but the resource (paper §6), watched over QMP,
//! and re-adopted — not killed — when the agent itself restarts.
//!
//! The code tour is in `nodeos/head/README.md`; the design in
//! `docs/head.md`.

pub mod agent;
pub mod argv;
pub mod config;
pub mod console;
pub mod dhcp;
pub mod fence;
pub mod host;
pub mod migration;
pub mod net;
pub mod qmp;
pub mod seed;
pub mod vm;

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
