//! One reconcile pass: the model and a spine snapshot in, record changes
//! and spine orders out. Pure computation (no I/O), run inside the store
//! write that persists its decisions, so API writes cannot interleave with
//! it and a pass over the whole cluster is one transaction.

use std::collections::{BTreeMap, HashMap, HashSet};

use bigv_spine::resource::MigrationOrder;
use bigv_spine::{PowerAction, ResourceName};

use tokio::time::Instant;

use crate::model::{
    DbError, Disc, DiscId, Model, NicId, Node, Operation, OperationId, OperationKind,
    OperationState, Pool, Target, Tx, UserId, Vm, VmId,
};
use crate::scheduler::Facts;

use super::fencing::{Absences, Liveness};
use super::orders::{Action, Ledger, Order};
use super::snapshot::Snapshot;
use super::{disc_migrations, discs, nodes, operations, upgrades, vm_migrations, vms};

/// What the reconciler remembers between passes. None of it is needed for
/// safety after a restart: it only avoids repeating orders, spinning on
/// failures and logging the same thing twice.
#[derive(Default)]
pub(crate) struct Recall {
    pub ledger: Ledger,
    pub absences: Absences,
    /// VMs seen running on the head the model places them on: if one then
    /// vanishes from that head, it stopped (crash, shutdown).
    pub seen_running: HashMap<VmId, String>,
    /// qemu's downtime for a VM's live migration (its `seq`, the
    /// operation's id), from the source head's last report.
    pub migration_downtimes: HashMap<(VmId, u64), u64>,
    /// A head refused to start the VM: place it afresh, elsewhere if can be.
    pub refused: HashMap<VmId, String>,
    /// The last reason logged for a VM or disc that could not be placed.
    pub unplaced_vms: HashMap<VmId, String>,
    pub unplaced_discs: HashMap<DiscId, String>,
    /// Reboots ordered by an upgrade: the node's connection when it was
    /// ordered, and when. A different connection (or none) means it went
    /// down; the same one after a while means the order got lost.
    pub reboots: HashMap<String, (u64, Instant)>,
    /// When (clock seconds) entries about vanished records were last
    /// dropped.
    last_prune: u64,
}

/// How often (clock seconds) `Recall` forgets what no longer exists.
const PRUNE_EVERY: u64 = 60;

impl Recall {
    /// Forgets VMs and discs the model no longer has, and failures long
    /// past their backoff (the resource was dealt with another way).
    fn prune(&mut self, model: &Model, now: Instant) {
        self.seen_running.retain(|id, _| model.vm(*id).is_some());
        self.migration_downtimes.retain(|(id, seq), _| {
            model.vm(*id).is_some()
                && model
                    .operations
                    .get(seq)
                    .is_some_and(|op| op.state == OperationState::Running)
        });
        self.refused.retain(|id, _| model.vm(*id).is_some());
        self.unplaced_vms.retain(|id, _| model.vm(*id).is_some());
        self.unplaced_discs
            .retain(|id, _| model.disc(*id).is_some());
        self.ledger.prune(now);
    }
}

/// The nodes that report a VM: one, or more than one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reporters<'a> {
    pub first: &'a str,
    pub more: bool,
}

impl Reporters<'_> {
    /// Whether any node but `node` reports it.
    pub fn beyond(&self, node: &str) -> bool {
        self.more || self.first != node
    }
}

/// Privilege targets, hashable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TargetKey {
    Cluster,
    Account(u64),
    Group(u64),
    Vm(u64),
}

impl From<Target> for TargetKey {
    fn from(t: Target) -> Self {
        match t {
            Target::Cluster => TargetKey::Cluster,
            Target::Account(a) => TargetKey::Account(a.0),
            Target::Group(g) => TargetKey::Group(g.0),
            Target::Vm(v) => TargetKey::Vm(v.0),
        }
    }
}

pub(crate) struct Pass<'a> {
    pub model: &'a Model,
    pub snap: &'a Snapshot,
    pub recall: &'a mut Recall,
    /// `state.clock`, unix seconds.
    pub now: u64,
    /// For order backoff.
    pub instant: Instant,
    gather: &'a mut dyn FnMut() -> Facts,
    facts: Option<Facts>,
    /// Records changed by this pass (whole records, copied on first change).
    vms: BTreeMap<u64, Vm>,
    discs: BTreeMap<u64, Disc>,
    pub nodes: Vec<Node>,
    pub pools: Vec<Pool>,
    pub operations: Vec<Operation>,
    /// Operations to create (their ids are given when they are stored).
    pub new_operations: Vec<Operation>,
    pub orders: Vec<Order>,
    /// Reboot and power-off orders (not about a resource).
    pub power_orders: Vec<(String, PowerAction)>,
    /// Nodes each resource was ordered to by this pass: never twice in one.
    ordered: HashMap<ResourceName, Vec<String>>,
    /// (VM, disc) pairs, sorted: a VM's discs in creation order.
    discs_by_vm: Vec<(VmId, DiscId)>,
    /// Which connected nodes report each VM.
    pub reported_on: HashMap<VmId, Reporters<'a>>,
    /// Pool records by label.
    pools_by_label: HashMap<&'a str, &'a Pool>,
    /// Each node's storage address (see `node_address`).
    addresses: HashMap<&'a str, String>,
    nics_by_vm: Option<HashMap<VmId, Vec<NicId>>>,
    /// Discs migrating between tails: the `migrate_to` their source's
    /// orders carry (see `disc_migrations`).
    pub disc_moves: HashMap<DiscId, MigrationOrder>,
    /// VMs in a live migration's handover, and their destination head:
    /// their discs open to both heads (see `vm_migrations`).
    pub vm_handover: HashMap<VmId, String>,
    /// VMs a running migration operation moves: the ordinary VM plan
    /// leaves them to it.
    pub migrating_vms: HashSet<VmId>,
    users_by_target: Option<HashMap<TargetKey, Vec<UserId>>>,
}

/// What a pass decided, ready to persist.
#[derive(Default)]
pub(crate) struct Changes {
    pub vms: Vec<Vm>,
    pub discs: Vec<Disc>,
    pub nodes: Vec<Node>,
    pub pools: Vec<Pool>,
    pub operations: Vec<Operation>,
    pub new_operations: Vec<Operation>,
    pub orders: Vec<Order>,
    pub power_orders: Vec<(String, PowerAction)>,
}

impl Changes {
    pub fn writes(&self) -> usize {
        self.vms.len()
            + self.discs.len()
            + self.nodes.len()
            + self.pools.len()
            + self.operations.len()
            + self.new_operations.len()
    }

    /// Stages every changed record in the store write.
    pub fn apply(&self, tx: &mut Tx<'_>) -> Result<(), DbError> {
        for vm in &self.vms {
            tx.put(vm.clone())?;
        }
        for disc in &self.discs {
            tx.put(disc.clone())?;
        }
        for node in &self.nodes {
            tx.put(node.clone())?;
        }
        for pool in &self.pools {
            tx.put(pool.clone())?;
        }
        for op in &self.operations {
            tx.put(op.clone())?;
        }
        for op in &self.new_operations {
            let id = OperationId(tx.new_id::<Operation>()?);
            tx.put(Operation { id, ..op.clone() })?;
        }
        Ok(())
    }
}

impl<'a> Pass<'a> {
    pub fn new(
        model: &'a Model,
        snap: &'a Snapshot,
        recall: &'a mut Recall,
        now: u64,
        instant: Instant,
        gather: &'a mut dyn FnMut() -> Facts,
    ) -> Self {
        let mut discs_by_vm: Vec<(VmId, DiscId)> =
            model.discs.values().map(|d| (d.vm_id, d.id)).collect();
        discs_by_vm.sort_unstable();
        let mut reported_on: HashMap<VmId, Reporters<'a>> = HashMap::new();
        for node in snap.nodes.values() {
            for id in node.vms.keys() {
                reported_on
                    .entry(*id)
                    .and_modify(|r| r.more = true)
                    .or_insert(Reporters {
                        first: node.info.node_id.as_str(),
                        more: false,
                    });
            }
        }
        // Only while the guest runs where the model places it: one that has
        // not started yet, or has stopped, is the ordinary plan's.
        let migrating_vms = model
            .operations
            .values()
            .filter(|op| op.state == OperationState::Running)
            .filter_map(|op| match op.kind {
                OperationKind::MigrateVm { vm_id, .. } => Some(vm_id),
                _ => None,
            })
            .filter(|id| {
                model
                    .vm(*id)
                    .and_then(|vm| snap.nodes.get(vm.head.as_deref()?))
                    .is_some_and(|node| node.vms.contains_key(id))
            })
            .collect();
        let pools_by_label = model
            .pools
            .values()
            .map(|p| (p.label.as_str(), p))
            .collect();
        // The first address a node declared, else the one it connects to
        // the spine from (known only while it is connected).
        let mut addresses: HashMap<&'a str, String> = model
            .nodes
            .values()
            .filter_map(|n| Some((n.node_id.as_str(), n.addresses.first()?.clone())))
            .collect();
        for node in snap.nodes.values() {
            let address = node
                .info
                .addresses
                .first()
                .cloned()
                .unwrap_or_else(|| node.info.peer.ip().to_string());
            addresses.insert(node.info.node_id.as_str(), address);
        }
        Pass {
            model,
            snap,
            recall,
            now,
            instant,
            gather,
            facts: None,
            vms: BTreeMap::new(),
            discs: BTreeMap::new(),
            nodes: vec![],
            pools: vec![],
            operations: vec![],
            new_operations: vec![],
            orders: vec![],
            power_orders: vec![],
            ordered: HashMap::new(),
            discs_by_vm,
            reported_on,
            pools_by_label,
            addresses,
            nics_by_vm: None,
            disc_moves: HashMap::new(),
            vm_handover: HashMap::new(),
            migrating_vms,
            users_by_target: None,
        }
    }

    /// Runs every step. Order matters: discs get pools before VMs are
    /// placed, and disc ACLs follow the placements made in this pass.
    pub fn run(&mut self) {
        if self.now >= self.recall.last_prune.saturating_add(PRUNE_EVERY) {
            self.recall.prune(self.model, self.instant);
            self.recall.last_prune = self.now;
        }
        self.recall.absences.observe(self.snap);
        nodes::sync(self);
        discs::place(self);
        vms::plan(self);
        vm_migrations::plan(self);
        disc_migrations::plan(self);
        upgrades::plan(self);
        discs::plan(self);
        vms::remove_rogues(self);
        discs::remove_strays(self);
        operations::plan(self);
    }

    pub fn finish(self) -> Changes {
        Changes {
            vms: self.vms.into_values().collect(),
            discs: self.discs.into_values().collect(),
            nodes: self.nodes,
            pools: self.pools,
            operations: self.operations,
            new_operations: self.new_operations,
            orders: self.orders,
            power_orders: self.power_orders,
        }
    }

    /// The VM as this pass sees it (its own changes included).
    pub fn vm(&self, id: VmId) -> Option<&Vm> {
        self.vms.get(&id.0).or_else(|| self.model.vm(id))
    }

    /// The VM, to change. Panics on an id the model lacks: callers only
    /// pass ids they read from the model.
    pub fn vm_mut(&mut self, id: VmId) -> &mut Vm {
        let model = self.model;
        self.vms
            .entry(id.0)
            .or_insert_with(|| model.vm(id).expect("VM id from the model").clone())
    }

    /// The node record as this pass sees it (its own changes included).
    pub fn node(&self, node_id: &str) -> Option<&Node> {
        self.nodes
            .iter()
            .rev()
            .find(|n| n.node_id == node_id)
            .or_else(|| self.model.nodes.get(node_id))
    }

    /// The node record, to change; `None` for a node the model lacks.
    /// Changes by earlier steps of this pass are kept.
    pub fn node_mut(&mut self, node_id: &str) -> Option<&mut Node> {
        let i = match self.nodes.iter().rposition(|n| n.node_id == node_id) {
            Some(i) => i,
            None => {
                let node = self.model.nodes.get(node_id)?.clone();
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.nodes.get_mut(i)
    }

    pub fn disc(&self, id: DiscId) -> Option<&Disc> {
        self.discs.get(&id.0).or_else(|| self.model.disc(id))
    }

    pub fn disc_mut(&mut self, id: DiscId) -> &mut Disc {
        let model = self.model;
        self.discs
            .entry(id.0)
            .or_insert_with(|| model.disc(id).expect("disc id from the model").clone())
    }

    /// The VM's discs, in creation order (the first is the boot disc).
    pub fn discs_of(&self, vm: VmId) -> impl Iterator<Item = DiscId> + '_ {
        let start = self.discs_by_vm.partition_point(|(v, _)| *v < vm);
        self.discs_by_vm[start..]
            .iter()
            .take_while(move |(v, _)| *v == vm)
            .map(|(_, d)| *d)
    }

    pub fn nics_of(&mut self, vm: VmId) -> Vec<NicId> {
        let model = self.model;
        let index = self.nics_by_vm.get_or_insert_with(|| {
            let mut index: HashMap<VmId, Vec<NicId>> = HashMap::new();
            for nic in model.nics.values() {
                index.entry(nic.vm_id).or_default().push(nic.id);
            }
            index
        });
        index.get(&vm).cloned().unwrap_or_default()
    }

    /// Users holding any privilege on `target` itself (not via a key).
    pub fn users_on(&mut self, target: Target) -> Vec<UserId> {
        let model = self.model;
        let index = self.users_by_target.get_or_insert_with(|| {
            let mut index: HashMap<TargetKey, Vec<UserId>> = HashMap::new();
            for p in model.privileges.values().filter(|p| p.api_key_id.is_none()) {
                index.entry(p.target.into()).or_default().push(p.user_id);
            }
            index
        });
        index.get(&target.into()).cloned().unwrap_or_default()
    }

    /// Placement facts, gathered the first time this pass needs them and
    /// then booked as it places.
    pub fn facts(&mut self) -> &mut Facts {
        self.facts.get_or_insert_with(&mut *self.gather)
    }

    pub fn liveness(&mut self, node: &str) -> Liveness {
        self.recall
            .absences
            .liveness(self.snap, &self.model.settings, node, self.now)
    }

    /// The pool record for a label.
    pub fn pool(&self, label: &str) -> Option<&'a Pool> {
        self.pools_by_label.get(label).copied()
    }

    /// The address a node is known by on the storage LAN: the first it
    /// declared, else the one it connects to the spine from.
    pub fn node_address(&self, node: &str) -> Option<&str> {
        self.addresses.get(node).map(String::as_str)
    }

    /// Queues an order (sent once the pass's decisions are persisted).
    pub fn order(&mut self, node: &str, action: Action, generation: u64) {
        let order = Order {
            node: node.to_owned(),
            action,
            generation,
        };
        self.ordered
            .entry(order.name().clone())
            .or_default()
            .push(node.to_owned());
        self.orders.push(order);
    }

    /// Whether an order about `name` to `node` may go now: none in flight
    /// or already queued, and no recent failure still backing off.
    pub fn may_order(&self, node: &str, name: &ResourceName) -> bool {
        self.recall.ledger.may_order(node, name, self.instant)
            && !self
                .ordered
                .get(name)
                .is_some_and(|nodes| nodes.iter().any(|n| n == node))
    }

    /// Whether any order about `name` is in flight or queued anywhere.
    pub fn busy(&self, name: &ResourceName) -> bool {
        self.recall.ledger.busy(name) || self.ordered.contains_key(name)
    }
}
