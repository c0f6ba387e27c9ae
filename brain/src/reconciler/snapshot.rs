//! What the spine reports, copied once per pass so the plan reads a
//! consistent picture without holding any spine lock.

use std::collections::{BTreeMap, HashMap, HashSet};

use bigv_spine::resource::{DiscSpec, GlobalKind, PoolFacts, ResourceName, ResourceValue, VmSpec};
use bigv_spine::{Generation, NodeInfo, SpineServer};

use crate::model::{DiscId, VmId};
use crate::scheduler::vm_of_resource;

/// A disc as a tail reports it.
#[derive(Debug, Clone)]
pub(crate) struct ReportedDisc {
    pub name: ResourceName,
    pub grade: String,
    pub spec: DiscSpec,
    pub generation: Generation,
}

/// One connected node's table.
#[derive(Debug, Clone)]
pub(crate) struct NodeSnap {
    pub info: NodeInfo,
    /// The dump is complete: what it does not report, it does not hold.
    pub ready: bool,
    /// VMs whose names are ours (`vm.<id>`).
    pub vms: HashMap<VmId, (VmSpec, Generation)>,
    /// `vm.*` resources that are not ours at all.
    pub foreign_vms: Vec<(ResourceName, Generation)>,
    /// Discs whose names are ours (`disc.<grade>.<id>`), by id.
    pub discs: HashMap<DiscId, ReportedDisc>,
    /// `disc.*` resources whose id is not a number.
    pub foreign_discs: Vec<(ResourceName, Generation)>,
    pub pools: BTreeMap<String, PoolFacts>,
}

impl Snapshot {
    /// A disc's reported `backups` (see `crate::backups::observe`): from
    /// the ready tail that serves it (not a migration's destination still
    /// receiving it), with whether that tail takes backups.
    pub(crate) fn reported_backups(&self, disc: DiscId) -> Option<crate::backups::Reported> {
        self.nodes.values().filter(|n| n.ready).find_map(|n| {
            let r = n.discs.get(&disc).filter(|r| r.spec.incoming.is_none())?;
            Some(crate::backups::Reported {
                node_id: n.info.node_id.clone(),
                backups: r.spec.backups.clone(),
                capable: n.info.protocol_version >= BACKUPS_PROTOCOL,
            })
        })
    }
}

/// The spine protocol version that added disc backups.
pub(crate) const BACKUPS_PROTOCOL: u32 = 3;
/// The spine protocol version with which a disc's backups migrate with it
/// (`migrate_to.backups`).
pub(crate) const MOVING_BACKUPS_PROTOCOL: u32 = 4;

impl NodeSnap {
    pub fn new(info: NodeInfo, ready: bool) -> Self {
        NodeSnap {
            info,
            ready,
            vms: HashMap::new(),
            foreign_vms: vec![],
            discs: HashMap::new(),
            foreign_discs: vec![],
            pools: BTreeMap::new(),
        }
    }

    /// Files one reported resource.
    pub fn add(&mut self, name: ResourceName, value: ResourceValue, generation: Generation) {
        match value {
            ResourceValue::Vm(spec) => match vm_of_resource(&name) {
                Some(id) => {
                    self.vms.insert(id, (*spec, generation));
                }
                None => self.foreign_vms.push((name, generation)),
            },
            ResourceValue::Disc(spec) => match &name {
                ResourceName::Disc { grade, id } => match id.parse() {
                    Ok(id) => {
                        let grade = grade.clone();
                        self.discs.insert(
                            DiscId(id),
                            ReportedDisc {
                                name,
                                grade,
                                spec,
                                generation,
                            },
                        );
                    }
                    Err(_) => self.foreign_discs.push((name, generation)),
                },
                _ => self.foreign_discs.push((name, generation)),
            },
            ResourceValue::StoragePools(pools)
                if name == ResourceName::Global(GlobalKind::StoragePools) =>
            {
                self.pools = pools;
            }
            _ => {}
        }
    }
}

/// Every connected node, by node id.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub nodes: HashMap<String, NodeSnap>,
}

impl Snapshot {
    /// Brings the copy up to date: nodes that connected, left, finished
    /// their dump or reconnected, and those in `changed` (nodes that sent
    /// events since the last refresh), are copied afresh; `None` copies
    /// every node. Copying a table clones every VM and disc in it, so a
    /// quiet node is not copied again: its events are what would change it,
    /// and a periodic full copy covers even an event that went missing.
    pub fn refresh(&mut self, spine: &SpineServer, changed: Option<&HashSet<String>>) {
        let listed = spine.nodes();
        let connected: HashSet<&str> = listed.iter().map(|i| i.node_id.as_str()).collect();
        self.nodes.retain(|id, _| connected.contains(id.as_str()));
        for info in &listed {
            // It may have gone between the listing and now: then it is
            // simply not connected in this pass.
            let Some(handle) = spine.node(&info.node_id) else {
                self.nodes.remove(&info.node_id);
                continue;
            };
            let ready = handle.is_ready();
            let fresh = self.nodes.get(&info.node_id).is_some_and(|cached| {
                cached.info.conn == handle.info().conn
                    && cached.ready == ready
                    && changed.is_some_and(|c| !c.contains(&info.node_id))
            });
            if fresh {
                continue;
            }
            let mut snap = NodeSnap::new(handle.info().clone(), ready);
            for (name, (value, generation)) in handle.resources() {
                snap.add(name, value, generation);
            }
            self.nodes.insert(info.node_id.clone(), snap);
        }
    }

    /// The node's table if its dump is complete.
    pub fn ready(&self, node: &str) -> Option<&NodeSnap> {
        self.nodes.get(node).filter(|n| n.ready)
    }

    pub fn connected(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }
}
