//! The image version check: a node must run the image version its last
//! boot script named (the brain records it when it serves the script).
//! One that reports another version in its spine hello booted something
//! the brain did not give it (a stale or foreign image); it is flagged and
//! kept out of service until it reboots onto the right one. A node the
//! brain never booted (no script served to its MAC) is not checked.

use bigv_pxe::MacAddr;

use crate::model::{Model, Node};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageCheck {
    /// The brain never served this node a boot script.
    NotChecked,
    Ok,
    Mismatch {
        expected: String,
        running: Option<String>,
    },
}

impl ImageCheck {
    pub fn is_mismatch(&self) -> bool {
        matches!(self, ImageCheck::Mismatch { .. })
    }
}

/// The version the brain expects `node` to run, if it booted it.
pub fn expected_version<'m>(model: &'m Model, node: &Node) -> Option<&'m str> {
    let mac: MacAddr = node.node_id.parse().ok()?;
    model
        .machines
        .get(&mac.to_string())?
        .booted_version
        .as_deref()
}

pub fn image_check(model: &Model, node: &Node) -> ImageCheck {
    match expected_version(model, node) {
        None => ImageCheck::NotChecked,
        Some(v) if node.image_version.as_deref() == Some(v) => ImageCheck::Ok,
        Some(v) => ImageCheck::Mismatch {
            expected: v.to_string(),
            running: node.image_version.clone(),
        },
    }
}
