//! Placement (paper §8): heads "fill the fullest" keeping some in reserve;
//! tail pools "fill the emptiest" within their overcommit ratio. Pure
//! functions over the model and a snapshot of node facts, so the API can
//! check capacity up front and the reconciler can place with the same
//! rules.

use std::collections::BTreeMap;

use bigv_spine::SpineServer;
use bigv_spine::resource::{GlobalKind, ResourceName, ResourceValue};

use crate::model::{Admission, AffinityPolicy, Disc, Model, Placed, Pool, Role, Vm, VmId};

/// The spine name of a VM's resource: ids, not names, so renames and
/// moves between groups never change it.
pub fn vm_resource(id: VmId) -> ResourceName {
    ResourceName::vm(id.0.to_string())
}

/// The spine name of a disc's resource: `disc.<grade>.<id>`, by id so
/// relabelling never changes it.
pub fn disc_resource(disc: &Disc) -> ResourceName {
    ResourceName::disc(disc.storage_grade.clone(), disc.id.0.to_string())
}

/// The VM id a spine resource name stands for, if it is one of ours.
pub fn vm_of_resource(name: &ResourceName) -> Option<VmId> {
    match name {
        ResourceName::Vm(n) => n.parse().ok().map(VmId),
        _ => None,
    }
}

/// A head as placement sees it.
#[derive(Debug, Clone)]
pub struct HeadFacts {
    pub node_id: String,
    pub label: String,
    /// MiB the head offers VMs in all.
    pub total_memory: u64,
    /// MiB not promised to any VM the model places here or the head runs.
    pub free_memory: u64,
    /// VMs the model places here.
    pub vms: Vec<VmId>,
    /// Accepted, connected, ready, not being emptied and running the
    /// image version it was booted with.
    pub usable: bool,
}

/// A storage pool as placement sees it.
#[derive(Debug, Clone)]
pub struct PoolFacts {
    pub label: String,
    pub node_id: String,
    pub grade: String,
    /// MiB of the pool's filesystem.
    pub size: u64,
    /// MiB of disc sizes the model puts here.
    pub allocated: u64,
    pub overcommit_ratio: f64,
    /// Its tail is connected, ready and on its expected image, and the pool
    /// is not being emptied.
    pub usable: bool,
}

impl PoolFacts {
    /// MiB of disc sizes the pool may still take.
    pub fn room(&self) -> u64 {
        let ceiling = (self.size as f64 * self.overcommit_ratio) as u64;
        ceiling.saturating_sub(self.allocated)
    }
}

/// Why nothing fits; the text is for the customer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct NoCapacity {
    pub field: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub heads: BTreeMap<String, HeadFacts>,
    pub pools: BTreeMap<String, PoolFacts>,
    pub reserve_heads: usize,
}

impl Facts {
    /// Snapshots what the model promises and what the spine reports.
    pub fn gather(model: &Model, spine: &SpineServer) -> Facts {
        let mut facts = Facts {
            reserve_heads: model.settings.reserve_heads,
            ..Facts::default()
        };
        // What the model places where comes from its indexes, kept as
        // records change: every request that may start a VM gathers, and
        // summing every VM and disc per request made vm_create grow with
        // the cluster.
        let no_vms = Placed::default();
        // Pools by tail, grouped once (a scan per tail costs tails × pools).
        let mut pools_of: BTreeMap<&str, Vec<&Pool>> = BTreeMap::new();
        for pool in model.pools.values() {
            pools_of
                .entry(pool.node_id.as_str())
                .or_default()
                .push(pool);
        }
        for node in model.nodes.values() {
            let handle = spine.node(&node.node_id);
            let ready = handle.as_ref().is_some_and(|h| h.is_ready());
            // A node running another image than the one it was booted
            // with is kept out of service (boot/check.rs).
            let usable = ready
                && node.admission == Admission::Accepted
                && node.usage_strategy.as_deref() != Some("empty")
                && !crate::boot::check::image_check(model, node).is_mismatch();
            match node.role {
                Role::Head => {
                    let placed = model.placed_on(&node.node_id).unwrap_or(&no_vms);
                    // Read in place: copying every head's table (every VM
                    // spec in the cluster) made this the API's hot spot.
                    let (total, unplaced) = handle.map_or((0, 0), |h| {
                        h.with_resources(|resources| {
                            let total =
                                match resources.get(&ResourceName::Global(GlobalKind::Memory)) {
                                    Some((ResourceValue::Memory(m), _)) => m.total,
                                    _ => 0,
                                };
                            // VMs the head runs that the model does not place
                            // there (rogues being removed, migrations) still
                            // use memory.
                            let unplaced: u64 = resources
                                .iter()
                                .filter_map(|(name, (value, _))| match value {
                                    ResourceValue::Vm(spec) => {
                                        let ours = vm_of_resource(name)
                                            .is_some_and(|id| placed.vms.contains(&id));
                                        (!ours).then_some(spec.memory)
                                    }
                                    _ => None,
                                })
                                .sum();
                            (total, unplaced)
                        })
                    });
                    let promised: u64 = placed.memory + unplaced;
                    facts.heads.insert(
                        node.node_id.clone(),
                        HeadFacts {
                            node_id: node.node_id.clone(),
                            label: node.label.clone(),
                            total_memory: total,
                            free_memory: total.saturating_sub(promised),
                            vms: placed.vms.iter().copied().collect(),
                            usable,
                        },
                    );
                }
                Role::Tail => {
                    let reported = handle.map_or_else(BTreeMap::new, |h| {
                        h.with_resources(|resources| {
                            match resources.get(&ResourceName::Global(GlobalKind::StoragePools)) {
                                Some((ResourceValue::StoragePools(p), _)) => p.clone(),
                                _ => BTreeMap::new(),
                            }
                        })
                    });
                    for pool in pools_of.get(node.node_id.as_str()).into_iter().flatten() {
                        let allocated = model.allocated_in(&pool.label);
                        let size = reported.get(&pool.name).map_or(0, |p| p.size);
                        facts.pools.insert(
                            pool.label.clone(),
                            PoolFacts {
                                label: pool.label.clone(),
                                node_id: node.node_id.clone(),
                                grade: pool.grade.clone(),
                                size,
                                allocated,
                                overcommit_ratio: pool.overcommit_ratio,
                                usable: usable
                                    && reported.contains_key(&pool.name)
                                    && pool.usage_strategy.as_deref() != Some("empty"),
                            },
                        );
                    }
                }
            }
        }
        facts
    }

    /// Picks a head for `vm` (fill the fullest, keep `reserve_heads` empty
    /// heads, honour anti-affinity), never one in `exclude`.
    pub fn pick_head(
        &self,
        model: &Model,
        vm: &Vm,
        exclude: &[&str],
    ) -> Result<String, NoCapacity> {
        let fits: Vec<&HeadFacts> = self
            .heads
            .values()
            .filter(|h| h.usable && !exclude.contains(&h.node_id.as_str()))
            .filter(|h| h.free_memory >= vm.memory)
            .collect();
        if fits.is_empty() {
            let largest = self
                .heads
                .values()
                .filter(|h| h.usable)
                .map(|h| h.free_memory)
                .max();
            return Err(NoCapacity {
                field: "memory",
                reason: match largest {
                    Some(free) => format!(
                        "no head has {} MiB free for this server (the most free is {free} MiB)",
                        vm.memory
                    ),
                    None => "no head is available to run servers".into(),
                },
            });
        }
        // Anti-affinity: heads already running another member are out, or
        // merely last choice under the "allow" policy.
        let group = vm
            .anti_affinity_group
            .and_then(|g| model.affinity_groups.get(&g.0));
        let clashes = |h: &HeadFacts| {
            group.is_some_and(|g| {
                h.vms.iter().any(|other| {
                    *other != vm.id
                        && model
                            .vm(*other)
                            .is_some_and(|o| o.anti_affinity_group == Some(g.id))
                })
            })
        };
        let (clear, clashing): (Vec<&HeadFacts>, Vec<&HeadFacts>) =
            fits.into_iter().partition(|h| !clashes(h));
        let candidates = match (clear.is_empty(), group.map(|g| g.policy)) {
            (false, _) => clear,
            (true, Some(AffinityPolicy::Allow)) => clashing,
            (true, _) => {
                return Err(NoCapacity {
                    field: "anti_affinity_group",
                    reason: format!(
                        "every head with room already runs a member of anti-affinity group {}",
                        group.map_or("?", |g| g.name.as_str())
                    ),
                });
            }
        };
        // Keep reserve heads: an empty head is used only when more than
        // `reserve_heads` empty ones remain, or nothing else fits.
        let empty_usable = self
            .heads
            .values()
            .filter(|h| h.usable && h.vms.is_empty())
            .count();
        let busy: Vec<&&HeadFacts> = candidates.iter().filter(|h| !h.vms.is_empty()).collect();
        let pool: Vec<&HeadFacts> = if !busy.is_empty() {
            busy.into_iter().copied().collect()
        } else if empty_usable > self.reserve_heads {
            candidates
        } else {
            return Err(NoCapacity {
                field: "memory",
                reason: format!(
                    "only the {} reserve head(s) have room; ask an operator",
                    self.reserve_heads
                ),
            });
        };
        // Fill the fullest: least free memory first; ties by name so the
        // choice is stable.
        pool.into_iter()
            .min_by(|a, b| {
                a.free_memory
                    .cmp(&b.free_memory)
                    .then_with(|| a.node_id.cmp(&b.node_id))
            })
            .map(|h| h.node_id.clone())
            .ok_or_else(|| NoCapacity {
                field: "memory",
                reason: "no head is available to run servers".into(),
            })
    }

    /// Picks a pool of `grade` with room for `size` MiB (fill the
    /// emptiest), never one in `exclude`.
    pub fn pick_pool(
        &self,
        grade: &str,
        size: u64,
        exclude: &[&str],
    ) -> Result<String, NoCapacity> {
        let of_grade: Vec<&PoolFacts> = self
            .pools
            .values()
            .filter(|p| p.grade == grade && p.usable && !exclude.contains(&p.label.as_str()))
            .collect();
        let emptiest = |p: &&PoolFacts| {
            let ceiling = (p.size as f64 * p.overcommit_ratio).max(1.0);
            p.allocated as f64 / ceiling
        };
        of_grade
            .iter()
            .filter(|p| p.room() >= size)
            .min_by(|a, b| {
                emptiest(a)
                    .total_cmp(&emptiest(b))
                    .then_with(|| a.label.cmp(&b.label))
            })
            .map(|p| p.label.clone())
            .ok_or_else(|| NoCapacity {
                field: "storage_grade",
                reason: if of_grade.is_empty() {
                    format!("no {grade} storage is available")
                } else {
                    let most = of_grade.iter().map(|p| p.room()).max().unwrap_or(0);
                    format!("no {grade} pool has room for {size} MiB (the most room is {most} MiB)")
                },
            })
    }

    /// Books `memory` MiB of `head` for a VM placed in this pass.
    pub fn reserve_head(&mut self, head: &str, vm: VmId, memory: u64) {
        if let Some(h) = self.heads.get_mut(head) {
            h.free_memory = h.free_memory.saturating_sub(memory);
            h.vms.push(vm);
        }
    }

    /// Books `size` MiB of `pool` for a disc placed in this pass.
    pub fn reserve_pool(&mut self, pool: &str, size: u64) {
        if let Some(p) = self.pools.get_mut(pool) {
            p.allocated += size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccountId, AffinityGroupId, AntiAffinityGroup, GroupId};

    fn head(id: &str, free: u64, vms: &[u64]) -> HeadFacts {
        HeadFacts {
            node_id: id.into(),
            label: id.into(),
            total_memory: 65536,
            free_memory: free,
            vms: vms.iter().map(|v| VmId(*v)).collect(),
            usable: true,
        }
    }

    fn vm(id: u64, memory: u64) -> Vm {
        Vm {
            id: VmId(id),
            group_id: GroupId(1),
            name: format!("vm{id}"),
            cores: 1,
            memory,
            power_on: true,
            autoreboot_on: true,
            cdrom_url: None,
            hardware_profile: "virtio2013".into(),
            hardware_profile_locked: false,
            keymap: None,
            zone_name: None,
            deleted: false,
            deleted_at: None,
            management_address: None,
            head: None,
            generation: 0,
            signal: None,
            anti_affinity_group: None,
            last_imaged_with: None,
            imager_options: None,
            created_at: 0,
        }
    }

    fn facts(heads: Vec<HeadFacts>, reserve: usize) -> Facts {
        Facts {
            heads: heads.into_iter().map(|h| (h.node_id.clone(), h)).collect(),
            pools: BTreeMap::new(),
            reserve_heads: reserve,
        }
    }

    #[test]
    fn fills_the_fullest_head_that_fits() {
        let model = Model::default();
        let f = facts(
            vec![
                head("a", 8192, &[1]),
                head("b", 2048, &[2]),
                head("c", 1024, &[3]),
            ],
            0,
        );
        assert_eq!(f.pick_head(&model, &vm(9, 2048), &[]).unwrap(), "b");
        assert_eq!(f.pick_head(&model, &vm(9, 4096), &[]).unwrap(), "a");
        assert_eq!(f.pick_head(&model, &vm(9, 2048), &["b"]).unwrap(), "a");
        let err = f.pick_head(&model, &vm(9, 10_000), &[]).unwrap_err();
        assert!(err.reason.contains("most free is 8192 MiB"), "{err}");
    }

    #[test]
    fn keeps_reserve_heads_empty() {
        let model = Model::default();
        let f = facts(vec![head("busy", 1024, &[1]), head("spare", 65536, &[])], 1);
        assert_eq!(f.pick_head(&model, &vm(9, 512), &[]).unwrap(), "busy");
        let err = f.pick_head(&model, &vm(9, 4096), &[]).unwrap_err();
        assert!(err.reason.contains("reserve"), "{err}");
        let f = facts(
            vec![head("spare1", 65536, &[]), head("spare2", 65536, &[])],
            1,
        );
        assert!(f.pick_head(&model, &vm(9, 4096), &[]).is_ok());
    }

    #[test]
    fn anti_affinity_fails_or_allows_by_policy() {
        let mut model = Model::default();
        for policy in [AffinityPolicy::Fail, AffinityPolicy::Allow] {
            model.affinity_groups.insert(
                1,
                AntiAffinityGroup {
                    id: AffinityGroupId(1),
                    account_id: AccountId(1),
                    name: "db".into(),
                    policy,
                },
            );
            let mut member = vm(1, 512);
            member.anti_affinity_group = Some(AffinityGroupId(1));
            model.vms.insert(1, member.clone());
            let mut newcomer = vm(2, 512);
            newcomer.anti_affinity_group = Some(AffinityGroupId(1));
            let two = facts(vec![head("a", 4096, &[1]), head("b", 8192, &[5])], 0);
            assert_eq!(two.pick_head(&model, &newcomer, &[]).unwrap(), "b");
            let one = facts(vec![head("a", 4096, &[1])], 0);
            let picked = one.pick_head(&model, &newcomer, &[]);
            match policy {
                AffinityPolicy::Fail => assert!(picked.unwrap_err().reason.contains("db")),
                AffinityPolicy::Allow => assert_eq!(picked.unwrap(), "a"),
            }
        }
    }

    #[test]
    fn pools_fill_the_emptiest_within_overcommit() {
        let pool = |label: &str, size, allocated, ratio| PoolFacts {
            label: label.into(),
            node_id: "t".into(),
            grade: "sata".into(),
            size,
            allocated,
            overcommit_ratio: ratio,
            usable: true,
        };
        let mut f = Facts::default();
        for p in [
            pool("p1", 1000, 600, 1.0),
            pool("p2", 1000, 300, 1.0),
            pool("p3", 1000, 900, 2.0),
        ] {
            f.pools.insert(p.label.clone(), p);
        }
        assert_eq!(f.pick_pool("sata", 100, &[]).unwrap(), "p2");
        // Only p3's overcommit leaves room for 1000 MiB.
        assert_eq!(f.pick_pool("sata", 1000, &[]).unwrap(), "p3");
        let err = f.pick_pool("sata", 5000, &[]).unwrap_err();
        assert!(err.reason.contains("most room is 1100 MiB"), "{err}");
        assert!(
            f.pick_pool("ssd", 1, &[])
                .unwrap_err()
                .reason
                .contains("no ssd")
        );
    }
}
