//! Unknown is not dead (BRIEF §3 decision 4).
//!
//! A head that lost the spine kills its own VMs once it has heard nothing
//! for the fence timeout. Until the brain is sure that has happened, the
//! head's VMs stay where the model puts them and nothing moves. Only after
//! the timeout plus a margin (and with the disc ACLs moved first, see
//! `discs.rs`) are they started elsewhere.
//!
//! Time is `state.clock` in whole seconds. A node counts as unknown from
//! the first pass that finds it gone (passes run on every spine event, so
//! that is within moments of the disconnect) or, after a brain restart,
//! from the brain's start: later than the truth, never earlier. It is
//! fenced once `now > since + timeout + margin`: with one-second readings
//! that is strictly more than timeout + margin of real time.
//!
//! Heads learn the timeout from the spine's `welcome` (protocol 3). A
//! head keeps what its last welcome said until its next session, so after
//! the setting is lowered the brain waits the longer of the setting and
//! what the node was last told. (A head older than protocol 3, or one
//! told nothing, uses its own `fence_timeout_secs`, which its operator
//! keeps at most the brain's.)

use std::collections::HashMap;

use crate::model::Settings;

use super::snapshot::Snapshot;

/// What the brain knows about a node right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Connected with its dump complete: its table is the truth.
    Ready,
    /// Connected, still dumping: alive, but its table is incomplete.
    Joining,
    /// Gone for less than the fence time: its VMs may still run.
    Unknown,
    /// Gone long enough that it has killed its own VMs.
    Fenced,
}

/// When each node that is not connected was first found gone.
#[derive(Debug, Default)]
pub(crate) struct Absences {
    since: HashMap<String, u64>,
    /// The fence timeout each node's latest `welcome` told it.
    told: HashMap<String, u64>,
}

impl Absences {
    /// Forgets absences of nodes that are connected again: a node that
    /// reconnects has heard the brain and restarted its fence timer.
    pub fn observe(&mut self, snap: &Snapshot) {
        self.since.retain(|node, _| !snap.connected(node));
        for (node, n) in &snap.nodes {
            match n.info.fence_timeout_secs {
                Some(secs) => self.told.insert(node.clone(), secs),
                None => self.told.remove(node),
            };
        }
    }

    /// The node's liveness; the first query for a node that is not
    /// connected starts its absence.
    pub fn liveness(
        &mut self,
        snap: &Snapshot,
        settings: &Settings,
        node: &str,
        now: u64,
    ) -> Liveness {
        match snap.nodes.get(node) {
            Some(n) if n.ready => Liveness::Ready,
            Some(_) => Liveness::Joining,
            None => {
                let since = *self.since.entry(node.to_owned()).or_insert(now);
                let told = self.told.get(node).copied().unwrap_or(0);
                let fence = settings
                    .fence_timeout_secs
                    .max(told)
                    .saturating_add(settings.fence_margin_secs);
                if now > since.saturating_add(fence) {
                    Liveness::Fenced
                } else {
                    Liveness::Unknown
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconciler::snapshot::NodeSnap;
    use bigv_spine::{NodeInfo, Role};

    fn connected(node: &str, ready: bool) -> Snapshot {
        connected_told(node, ready, None)
    }

    fn connected_told(node: &str, ready: bool, told: Option<u64>) -> Snapshot {
        let info = NodeInfo {
            node_id: node.into(),
            conn: 1,
            role: Role::Head,
            image_version: "t".into(),
            protocol_version: 1,
            addresses: vec![],
            peer: "127.0.0.1:1".parse().unwrap(),
            fence_timeout_secs: told,
        };
        let mut snap = Snapshot::default();
        snap.nodes.insert(node.into(), NodeSnap::new(info, ready));
        snap
    }

    #[test]
    fn fenced_only_strictly_after_timeout_plus_margin_and_reset_by_reconnect() {
        let settings = Settings {
            fence_timeout_secs: 3,
            fence_margin_secs: 1,
            ..Settings::default()
        };
        let gone = Snapshot::default();
        let mut a = Absences::default();
        assert_eq!(a.liveness(&gone, &settings, "h", 100), Liveness::Unknown);
        assert_eq!(a.liveness(&gone, &settings, "h", 104), Liveness::Unknown);
        assert_eq!(a.liveness(&gone, &settings, "h", 105), Liveness::Fenced);
        let back = connected("h", false);
        a.observe(&back);
        assert_eq!(a.liveness(&back, &settings, "h", 106), Liveness::Joining);
        assert_eq!(
            a.liveness(&connected("h", true), &settings, "h", 106),
            Liveness::Ready
        );
        // Gone again: the count starts afresh.
        assert_eq!(a.liveness(&gone, &settings, "h", 107), Liveness::Unknown);
        assert_eq!(a.liveness(&gone, &settings, "h", 111), Liveness::Unknown);
        assert_eq!(a.liveness(&gone, &settings, "h", 112), Liveness::Fenced);
    }

    #[test]
    fn a_head_told_a_longer_timeout_than_the_setting_now_says_gets_the_longer() {
        let settings = Settings {
            fence_timeout_secs: 3,
            fence_margin_secs: 1,
            ..Settings::default()
        };
        let mut a = Absences::default();
        // Welcomed while the setting was 10; lowered to 3 since.
        a.observe(&connected_told("h", true, Some(10)));
        let gone = Snapshot::default();
        a.observe(&gone);
        assert_eq!(a.liveness(&gone, &settings, "h", 100), Liveness::Unknown);
        assert_eq!(a.liveness(&gone, &settings, "h", 111), Liveness::Unknown);
        assert_eq!(a.liveness(&gone, &settings, "h", 112), Liveness::Fenced);
        // Its next session told it 3: the setting rules again.
        a.observe(&connected_told("h", true, Some(3)));
        a.observe(&gone);
        assert_eq!(a.liveness(&gone, &settings, "h", 200), Liveness::Unknown);
        assert_eq!(a.liveness(&gone, &settings, "h", 205), Liveness::Fenced);
    }
}
