//! The spine: the protocol between the BigV brain and its heads and tails
//! (paper §4), defined once and used by both ends.
//!
//! - [`message`] and [`resource`]: every frame and resource shape.
//! - [`codec`]: length-prefixed JSON frames with a hard size limit.
//! - [`node`]: the node end (real agents and the simulator).
//! - [`server`]: the brain end.
//! - [`tls`]: the brain's certificate and the nodes' pinned verifier.
//! - [`logs`]: node log lines on their way to the brain.
//! - [`sim`]: simulated heads and tails that speak the real protocol.
//!
//! The wire format and connection state machine are in `docs/spine.md`.

pub mod backup;
pub mod codec;
pub mod link;
pub mod logs;
pub mod message;
pub mod node;
pub mod resource;
pub mod server;
pub mod sim;
pub mod tls;

pub use link::{Keepalive, SessionError};
pub use message::{
    ErrorCode, Generation, Hello, MIN_PROTOCOL_VERSION, OrderError, Outcome, PROTOCOL_VERSION,
    PowerAction, Role, Tag, ToBrain, ToNode,
};
pub use node::{Backoff, NodeAgent, NodeConfig, NodeHandler, Notifier, Welcomed};
pub use resource::{Resource, ResourceError, ResourceName, ResourceValue};
pub use server::{NodeHandle, NodeInfo, OrderFailure, ServerConfig, SpineEvent, SpineServer};
