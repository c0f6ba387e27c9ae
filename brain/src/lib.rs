//! The BigV brain: the control plane (paper §3, §7, §8). See
//! brain/README.md for what lives here.

pub mod api;
pub mod backups;
pub mod boot;
pub mod clock;
pub mod model;
pub mod password;
pub mod purge;
pub mod reconciler;
pub mod runtime;
pub mod scheduler;
pub mod store;

pub use runtime::{Brain, BrainConfig};
