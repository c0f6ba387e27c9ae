//! What the spine reports, copied once per pass so the plan reads a
//! consistent picture without holding any spine lock.

use std::collections::{BTreeMap, HashMap};

use bigv_spine::resource::{DiscSpec, GlobalKind, PoolFacts, ResourceName, ResourceValue, VmSpec};
use bigv_spine::{Generation, NodeInfo, SpineServer};

use crate::model::VmId;
use crate::scheduler::vm_of_resource;

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
    pub discs: HashMap<ResourceName, (DiscSpec, Generation)>,
    pub pools: BTreeMap<String, PoolFacts>,
}

impl NodeSnap {
    pub fn new(info: NodeInfo, ready: bool) -> Self {
        NodeSnap {
            info,
            ready,
            vms: HashMap::new(),
            foreign_vms: vec![],
            discs: HashMap::new(),
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
            ResourceValue::Disc(spec) => {
                self.discs.insert(name, (spec, generation));
            }
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
    pub fn take(spine: &SpineServer) -> Snapshot {
        let mut nodes = HashMap::new();
        for info in spine.nodes() {
            // It may have gone between the listing and now: then it is
            // simply not connected in this pass.
            let Some(handle) = spine.node(&info.node_id) else {
                continue;
            };
            let info = handle.info().clone();
            let mut snap = NodeSnap::new(info, handle.is_ready());
            for (name, (value, generation)) in handle.resources() {
                snap.add(name, value, generation);
            }
            nodes.insert(snap.info.node_id.clone(), snap);
        }
        Snapshot { nodes }
    }

    /// The node's table if its dump is complete.
    pub fn ready(&self, node: &str) -> Option<&NodeSnap> {
        self.nodes.get(node).filter(|n| n.ready)
    }

    pub fn connected(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }
}
