//! The BigV brain: the control plane. For now it holds the embedded store; see
//! brain/README.md for what lives here and what is coming.

pub mod store;
