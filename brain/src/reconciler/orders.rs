//! Spine orders the plan decides on, and what the reconciler remembers
//! about them between passes: which are in flight (so a pass never orders
//! the same thing twice) and which failed recently (so retries back off
//! instead of spinning).

use std::collections::HashMap;
use std::time::Duration;

use bigv_spine::{ErrorCode, Generation, OrderFailure, Resource, ResourceName};
use tokio::time::Instant;

/// What to do with one resource on one node.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    Create(Resource),
    Update(Resource),
    Remove(ResourceName),
}

#[derive(Debug, Clone)]
pub(crate) struct Order {
    pub node: String,
    pub action: Action,
    pub generation: Generation,
}

impl Order {
    pub fn name(&self) -> &ResourceName {
        match &self.action {
            Action::Create(r) | Action::Update(r) => r.name(),
            Action::Remove(name) => name,
        }
    }

    pub fn verb(&self) -> Verb {
        match self.action {
            Action::Create(_) => Verb::Create,
            Action::Update(_) => Verb::Update,
            Action::Remove(_) => Verb::Remove,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Create,
    Update,
    Remove,
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Remove => "remove",
        })
    }
}

/// How an order ended.
#[derive(Debug)]
pub(crate) struct Done {
    pub node: String,
    pub name: ResourceName,
    pub verb: Verb,
    pub result: Result<(), OrderFailure>,
}

impl Done {
    /// Outcomes that leave the node as the order wanted it.
    pub fn succeeded(&self) -> bool {
        match &self.result {
            Ok(()) => true,
            // Already gone / already there: the next pass reads the table.
            Err(OrderFailure::Refused(e)) => matches!(
                (self.verb, e.code),
                (Verb::Remove, ErrorCode::NotFound) | (Verb::Create, ErrorCode::AlreadyExists)
            ),
            Err(_) => false,
        }
    }
}

/// Retries after a failure wait 1 s, 2 s, 4 s … up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

struct Failures {
    count: u32,
    not_before: Instant,
}

/// Orders in flight and recent failures, per resource and node. Keyed by
/// name first so lookups borrow instead of building keys: a pass over a
/// quiet cluster asks about every resource and finds nothing.
#[derive(Default)]
pub(crate) struct Ledger {
    in_flight: HashMap<ResourceName, Vec<String>>,
    failures: HashMap<ResourceName, HashMap<String, Failures>>,
}

impl Ledger {
    /// Whether an order for `name` on `node` may be sent now.
    pub fn may_order(&self, node: &str, name: &ResourceName, now: Instant) -> bool {
        if self.is_quiet() {
            return true;
        }
        !self.busy_on(node, name)
            && self
                .failures
                .get(name)
                .and_then(|f| f.get(node))
                .is_none_or(|f| f.not_before <= now)
    }

    /// Nothing in flight and nothing failed recently.
    pub fn is_quiet(&self) -> bool {
        self.in_flight.is_empty() && self.failures.is_empty()
    }

    /// Whether any node has an order about `name` in flight.
    pub fn busy(&self, name: &ResourceName) -> bool {
        self.in_flight.contains_key(name)
    }

    pub fn busy_on(&self, node: &str, name: &ResourceName) -> bool {
        self.in_flight
            .get(name)
            .is_some_and(|nodes| nodes.iter().any(|n| n == node))
    }

    pub fn sent(&mut self, node: &str, name: &ResourceName) {
        let nodes = self.in_flight.entry(name.clone()).or_default();
        if !nodes.iter().any(|n| n == node) {
            nodes.push(node.to_owned());
        }
    }

    /// Forgets failures whose backoff ended long ago.
    pub fn prune(&mut self, now: Instant) {
        for by_node in self.failures.values_mut() {
            by_node.retain(|_, f| f.not_before + MAX_BACKOFF > now);
        }
        self.failures.retain(|_, by_node| !by_node.is_empty());
    }

    /// Records the end of an order; a failure postpones the next try.
    pub fn finished(&mut self, node: &str, name: &ResourceName, ok: bool, now: Instant) {
        if let Some(nodes) = self.in_flight.get_mut(name) {
            nodes.retain(|n| n != node);
            if nodes.is_empty() {
                self.in_flight.remove(name);
            }
        }
        if ok {
            if let Some(by_node) = self.failures.get_mut(name) {
                by_node.remove(node);
                if by_node.is_empty() {
                    self.failures.remove(name);
                }
            }
            return;
        }
        let failures = self
            .failures
            .entry(name.clone())
            .or_default()
            .entry(node.to_owned())
            .or_insert(Failures {
                count: 0,
                not_before: now,
            });
        failures.count = failures.count.saturating_add(1);
        let delay = Duration::from_secs(1)
            .saturating_mul(1 << (failures.count - 1).min(5))
            .min(MAX_BACKOFF);
        failures.not_before = now + delay;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_blocks_and_failures_back_off() {
        let mut ledger = Ledger::default();
        let name = ResourceName::vm("7");
        let t0 = Instant::now();
        assert!(ledger.may_order("h1", &name, t0));
        ledger.sent("h1", &name);
        assert!(!ledger.may_order("h1", &name, t0));
        assert!(ledger.busy(&name));
        assert!(ledger.may_order("h2", &name, t0));
        ledger.finished("h1", &name, false, t0);
        assert!(!ledger.busy(&name));
        assert!(!ledger.may_order("h1", &name, t0));
        assert!(ledger.may_order("h1", &name, t0 + Duration::from_secs(1)));
        ledger.sent("h1", &name);
        ledger.finished("h1", &name, false, t0);
        assert!(!ledger.may_order("h1", &name, t0 + Duration::from_secs(1)));
        assert!(ledger.may_order("h1", &name, t0 + Duration::from_secs(2)));
        ledger.sent("h1", &name);
        ledger.finished("h1", &name, true, t0);
        assert!(ledger.may_order("h1", &name, t0));
    }
}
