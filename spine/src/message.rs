//! The spine's messages, defined once for brain and nodes.
//!
//! Bump [`PROTOCOL_VERSION`] whenever any message or resource shape changes
//! (resources reject unknown fields, so even an added field is a change),
//! and widen the brain's supported range so mixed versions keep working
//! during a rolling upgrade.

use serde::{Deserialize, Serialize};

use crate::resource::{Resource, ResourceName};

/// The protocol version this build speaks. 2 added `log` frames; 3 the
/// disc's `backups` and `limits` members and `welcome.fence_timeout_secs`
/// (each sent only to nodes speaking 3: older ones reject unknown fields);
/// 4 `migrate_to.backups` (a disc's backups travel with it).
pub const PROTOCOL_VERSION: u32 = 4;
/// The oldest version this build's brain still accepts (a version 1 node
/// simply never sends `log` frames; nodes below 3 are not told the fence
/// timeout, because their `welcome` rejects unknown fields).
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// An order's tag, chosen by the brain, echoed in the node's reply.
pub type Tag = u64;

/// Per-resource order counter chosen by the brain; nodes refuse older ones.
pub type Generation = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Head,
    Tail,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Head => "head",
            Role::Tail => "tail",
        })
    }
}

/// Identity a node declares first thing on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Stable across reboots: the boot NIC's MAC or the DMI serial.
    pub node_id: String,
    pub role: Role,
    pub image_version: String,
    pub protocol_version: u32,
    /// Addresses the node holds (spine, storage, management LANs).
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// The closed set of reasons a node refuses an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The order's generation is older than the one already applied.
    StaleGeneration,
    NotFound,
    AlreadyExists,
    /// The value makes no sense to this node (wrong role, bad field).
    Invalid,
    /// Not enough memory, disc space or addresses.
    InsufficientResources,
    /// The node tried and failed; the message says how.
    Failed,
    /// This node does not do that (e.g. a tail asked to run a VM).
    Unsupported,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
#[serde(deny_unknown_fields)]
pub struct OrderError {
    pub code: ErrorCode,
    pub message: String,
}

impl OrderError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OrderError {
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    Ok,
    Error(OrderError),
}

impl From<Result<(), OrderError>> for Outcome {
    fn from(r: Result<(), OrderError>) -> Self {
        match r {
            Ok(()) => Outcome::Ok,
            Err(e) => Outcome::Error(e),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    Reboot,
    Poweroff,
}

impl PowerAction {
    /// The status a node agent exits with after acknowledging this
    /// order, so the node's init (PID 1) carries it out (docs/boot.md,
    /// "Init"). Any other exit status is a crash and gets a restart.
    pub const fn agent_exit_code(self) -> i32 {
        match self {
            PowerAction::Reboot => 10,
            PowerAction::Poweroff => 11,
        }
    }
}

/// Frames a node sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToBrain {
    Hello(Hello),
    Created {
        resource: Resource,
        generation: Generation,
    },
    Updated {
        resource: Resource,
        generation: Generation,
    },
    Destroyed {
        name: ResourceName,
        generation: Generation,
    },
    /// The initial dump is complete; the node is ready for orders.
    Ready,
    Reply {
        tag: Tag,
        outcome: Outcome,
    },
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// The node could not understand the brain; it closes after sending.
    ProtocolError {
        message: String,
    },
    /// Recent log lines (version 2; see `logs.rs`).
    Log {
        lines: Vec<crate::logs::LogLine>,
    },
}

/// Frames the brain sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToNode {
    /// The hello was accepted; `protocol_version` is what both will speak.
    Welcome {
        protocol_version: u32,
        brain_version: String,
        /// Version 3: how long a head may go without hearing the brain
        /// before it must kill every VM (the brain restarts them elsewhere
        /// after this plus a margin). Absent: the node keeps its own
        /// setting.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence_timeout_secs: Option<u64>,
    },
    /// The node's protocol version is outside what the brain speaks; the
    /// brain closes after sending.
    VersionMismatch {
        node_version: u32,
        brain_min: u32,
        brain_max: u32,
    },
    Create {
        tag: Tag,
        resource: Resource,
        generation: Generation,
    },
    Update {
        tag: Tag,
        resource: Resource,
        generation: Generation,
    },
    Remove {
        tag: Tag,
        name: ResourceName,
        generation: Generation,
    },
    Power {
        tag: Tag,
        action: PowerAction,
    },
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    ProtocolError {
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{MemoryFacts, Resource, ResourceName};

    /// The exact bytes other implementations (and docs/spine.md) rely on.
    #[test]
    fn wire_format_is_stable() {
        let cases: Vec<(String, &str)> = vec![
            (
                serde_json::to_string(&ToBrain::Hello(Hello {
                    node_id: "52:54:00:12:34:56".into(),
                    role: Role::Head,
                    image_version: "2026.11.1".into(),
                    protocol_version: 1,
                    addresses: vec!["fd00:1::10".into()],
                }))
                .unwrap(),
                r#"{"type":"hello","node_id":"52:54:00:12:34:56","role":"head","image_version":"2026.11.1","protocol_version":1,"addresses":["fd00:1::10"]}"#,
            ),
            (
                serde_json::to_string(&ToBrain::Created {
                    resource: Resource::memory(MemoryFacts {
                        total: 65536,
                        free: 61440,
                    }),
                    generation: 0,
                })
                .unwrap(),
                r#"{"type":"created","resource":{"name":"global.memory","value":{"free":61440,"total":65536}},"generation":0}"#,
            ),
            (
                serde_json::to_string(&ToBrain::Reply {
                    tag: 8,
                    outcome: Outcome::Error(OrderError::new(
                        ErrorCode::StaleGeneration,
                        "vm.web1: order generation 3 is older than applied 4",
                    )),
                })
                .unwrap(),
                r#"{"type":"reply","tag":8,"outcome":{"error":{"code":"stale_generation","message":"vm.web1: order generation 3 is older than applied 4"}}}"#,
            ),
            (
                serde_json::to_string(&ToBrain::Reply {
                    tag: 7,
                    outcome: Outcome::Ok,
                })
                .unwrap(),
                r#"{"type":"reply","tag":7,"outcome":"ok"}"#,
            ),
            (
                serde_json::to_string(&ToNode::Remove {
                    tag: 9,
                    name: ResourceName::vm("web1"),
                    generation: 5,
                })
                .unwrap(),
                r#"{"type":"remove","tag":9,"name":"vm.web1","generation":5}"#,
            ),
            (
                serde_json::to_string(&ToNode::VersionMismatch {
                    node_version: 2,
                    brain_min: 1,
                    brain_max: 1,
                })
                .unwrap(),
                r#"{"type":"version_mismatch","node_version":2,"brain_min":1,"brain_max":1}"#,
            ),
            (
                serde_json::to_string(&ToNode::Power {
                    tag: 10,
                    action: PowerAction::Reboot,
                })
                .unwrap(),
                r#"{"type":"power","tag":10,"action":"reboot"}"#,
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}
