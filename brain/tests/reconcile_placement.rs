//! The reconciler turns records into running VMs: nodes are recorded as
//! they join, discs land on tails open only to the VM's head, VMs run on
//! heads with the fully unpacked resource, and what cannot fit waits
//! quietly.

mod common;
mod reconcile_support;

use std::collections::BTreeSet;
use std::time::Duration;

use bigv_brain::clock::Clock;
use bigv_brain::model::{
    Admission, DbError, DiscId, Operation, OperationId, OperationKind, OperationState, Role, VmId,
};
use bigv_spine::resource::{DiscLimits, TemplateCopy};
use common::*;
use reconcile_support::*;

#[tokio::test]
async fn joining_nodes_get_labelled_records_and_their_pools() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 2, 1);
    joined(&tb, &fleet).await;

    let model = tb.brain.db.read();
    let heads: BTreeSet<&str> = model
        .nodes
        .values()
        .filter(|n| n.role == Role::Head)
        .map(|n| n.label.as_str())
        .collect();
    assert_eq!(heads, BTreeSet::from(["head1", "head2"]));
    let tail_record = &model.nodes[&tail(0)];
    assert_eq!(tail_record.label, "tail1");
    assert_eq!(tail_record.role, Role::Tail);
    for node in model.nodes.values() {
        assert_eq!(node.admission, Admission::Accepted, "{node:?}");
        assert_eq!(node.image_version.as_deref(), Some("sim"));
        assert_eq!(node.addresses, [node_address(&node.node_id)]);
    }
    let sata = &model.pools["tail1-sata1"];
    assert_eq!(
        (
            sata.node_id.as_str(),
            sata.name.as_str(),
            sata.grade.as_str()
        ),
        (tail(0).as_str(), "sata1", "sata")
    );
    assert_eq!(
        sata.overcommit_ratio,
        model.settings.default_overcommit_ratio
    );
    assert_eq!(model.pools["tail1-ssd1"].grade, "ssd");
    assert_eq!(model.pools.len(), 2);
}

#[tokio::test]
async fn manual_admission_leaves_new_nodes_pending_and_unused() {
    let settings = bigv_brain::model::Settings {
        admission: "manual".into(),
        ..test_settings()
    };
    let tb = TestBrain::start_with(settings, Clock::system()).await;
    let fleet = fleet(&tb, 1, 1);
    joined(&tb, &fleet).await;
    assert!(
        tb.brain
            .db
            .read()
            .nodes
            .values()
            .all(|n| n.admission == Admission::Pending)
    );
    let id = create_vm(&tb, NewVm::running("web1")).await;
    always(
        "nothing is placed on pending nodes",
        Duration::from_secs(2),
        || {
            let vm = vm(&tb, id);
            vm.head.is_none()
                && discs(&tb, id)[0].storage_pool.is_none()
                && sim_heads_running(&fleet, id).is_empty()
        },
    )
    .await;
}

#[tokio::test]
async fn a_new_vm_gets_its_disc_on_a_tail_then_runs_with_the_unpacked_resource() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 2, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    let head = wait_running(&tb, &fleet, id, 10).await;

    let disc = discs(&tb, id).remove(0);
    let address = format!("fd00:5::{:x}", disc.id.0);
    assert_eq!(disc.storage_pool.as_deref(), Some("tail1-sata1"));
    assert_eq!(disc.address.as_deref(), Some(address.as_str()));
    let (tail_node, on_tail) = disc_on_tails(&fleet, &disc).expect("the disc on a tail");
    assert_eq!(tail_node, tail(0));
    assert_eq!(on_tail.size, 25600);
    assert_eq!(on_tail.storage_pool, "sata1");
    assert_eq!(on_tail.address, address);
    assert_eq!(on_tail.access_control_list, [node_address(&head)]);

    let spec = sim(&fleet, &head).vms()[&id.0.to_string()].clone();
    assert_eq!(spec.memory, 1024);
    assert_eq!(spec.cores, 1);
    assert!(spec.balloon_on);
    assert_eq!(spec.display_name, "web1.default.alice.bigv.test");
    assert_eq!(spec.keymap, "en-gb");
    assert_eq!(spec.discs.len(), 1);
    assert_eq!(spec.discs[0].address, format!("nbd:[{address}]:10809"));
    assert_eq!(spec.discs[0].model, "virtio");
    assert_eq!(spec.discs[0].serial.as_deref(), Some("disc-1"));
    let nic = &spec.network_interfaces[0];
    let ip = format!("192.0.2.{}", 10 + id.0);
    assert_eq!(nic.mac, format!("fe:ff:00:00:00:{:02x}", id.0));
    assert_eq!((nic.vlan_id, nic.model.as_str()), (1, "virtio"));
    assert_eq!(nic.ips, [ip]);
    let dhcp = nic.dhcp.as_ref().expect("DHCP for the primary IPv4");
    assert_eq!(dhcp.network, "192.0.2.0/24");
    assert_eq!(dhcp.router, "192.0.2.1");
    assert_eq!(dhcp.hostname, "web1");
    assert_eq!(dhcp.domain, "default.alice.bigv.test");
    // The bootstrap cluster_su holds a privilege above every VM.
    assert!(spec.console_users.contains(&SU_USER.to_string()));
    // With the argon2 hash of their password, for console logins.
    let su = &spec.user_authentication[SU_USER];
    let hash = su
        .password
        .as_deref()
        .expect("the console user's password hash");
    assert!(hash.starts_with("$argon2"), "{hash}");
    assert!(
        !format!("{su:?}").contains(hash),
        "a password hash stays out of logs: {su:?}"
    );

    // The generation the head holds is the one the model persisted (its
    // report reaches the brain's table a moment after the sim runs it).
    let (_, generation) = eventually("the head's report of the VM", 10, || {
        let r = reported_vm(&tb, &head, id);
        async move { r }
    })
    .await;
    assert_eq!(generation, vm(&tb, id).generation);
    assert!(generation >= 1);
}

#[tokio::test]
async fn a_vm_that_fits_nowhere_stays_off_head_without_retrying() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 1, 1);
    joined(&tb, &fleet).await;
    let huge = create_vm(
        &tb,
        NewVm {
            memory: HEAD_MEMORY * 2,
            ..NewVm::running("huge")
        },
    )
    .await;
    let small = create_vm(&tb, NewVm::running("small")).await;
    wait_running(&tb, &fleet, small, 10).await;
    always(
        "the huge VM stays unplaced and no order is sent for it",
        Duration::from_secs(3),
        || {
            let huge = vm(&tb, huge);
            huge.head.is_none()
                && huge.power_on
                && huge.generation == 0
                && sim_heads_running(&fleet, huge.id).is_empty()
        },
    )
    .await;
    // Once it fits, it runs: the reconciler kept going.
    update_vm(&tb, huge, |vm| vm.memory = 2048).await;
    wait_running(&tb, &fleet, huge, 10).await;
}

#[tokio::test]
async fn a_disc_resize_reaches_its_tail_without_restarting_the_vm() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 1, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    let head = wait_running(&tb, &fleet, id, 10).await;
    let started = sim(&fleet, &head).vms()[&id.0.to_string()].started_at;
    let disc = discs(&tb, id).remove(0);

    update_disc(&tb, disc.id, |d| d.size = 51200).await;
    eventually("the tail to hold the bigger disc", 10, || {
        let size = disc_on_tails(&fleet, &disc).map(|(_, spec)| spec.size);
        async move { (size == Some(51200)).then_some(()) }
    })
    .await;
    let (_, on_tail) = disc_on_tails(&fleet, &disc).unwrap();
    assert_eq!(on_tail.access_control_list, [node_address(&head)]);
    assert_eq!(
        sim(&fleet, &head).vms()[&id.0.to_string()].started_at,
        started
    );
}

#[tokio::test]
async fn discs_are_ordered_with_their_grades_limits_and_an_iops_override_follows() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 1, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    wait_running(&tb, &fleet, id, 10).await;
    let disc = discs(&tb, id).remove(0);
    // The test fleet's pools are sata: the grade's rates.
    let (_, on_tail) = disc_on_tails(&fleet, &disc).unwrap();
    assert_eq!(
        on_tail.limits,
        Some(DiscLimits {
            iops: Some(500),
            mib_per_second: Some(100)
        })
    );
    // An admin's iops_limit on the disc reaches the tail, bandwidth kept.
    update_disc(&tb, disc.id, |d| d.iops_limit = Some(50)).await;
    eventually("the tail to hold the new limit", 10, || {
        let limits = disc_on_tails(&fleet, &disc).and_then(|(_, spec)| spec.limits);
        async move {
            (limits
                == Some(DiscLimits {
                    iops: Some(50),
                    mib_per_second: Some(100),
                }))
            .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn reimage_copies_the_template_then_finishes_and_starts_the_vm() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 1, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::stopped("web1")).await;
    let disc = discs(&tb, id).remove(0);
    eventually(
        "the disc of the stopped VM on its tail, open to nobody",
        10,
        || {
            let acl = disc_on_tails(&fleet, &disc).map(|(_, spec)| spec.access_control_list);
            async move { (acl == Some(vec![])).then_some(()) }
        },
    )
    .await;
    assert!(sim_heads_running(&fleet, id).is_empty());

    let op = order_reimage(&tb, id, disc.id).await;

    let head = wait_running(&tb, &fleet, id, 10).await;
    let (_, on_tail) = disc_on_tails(&fleet, &disc).unwrap();
    assert_eq!(on_tail.imaged_seq, Some(1));
    assert_eq!(
        on_tail.template.map(|t| t.image).as_deref(),
        Some("bigv-test")
    );
    assert_eq!(on_tail.access_control_list, [node_address(&head)]);
    let model = tb.brain.db.read();
    let op = &model.operations[&op.0];
    assert_eq!(op.state, OperationState::Done, "{op:?}");
    assert_eq!(op.done, op.total);
    let vm = model.vm(id).unwrap();
    assert!(vm.power_on);
    assert_eq!(vm.last_imaged_with.as_deref(), Some("bigv-test"));
}

/// What the API's reimage writes: a template copy onto the first disc, a
/// running operation, and the VM powered on to boot once it is done.
async fn order_reimage(tb: &TestBrain, id: VmId, disc: DiscId) -> OperationId {
    let now = tb.clock.now();
    let op = tb
        .brain
        .db
        .write(move |tx| {
            let mut d = tx.model().disc(disc).unwrap().clone();
            d.template = Some(TemplateCopy {
                seq: 1,
                image: "bigv-test".into(),
            });
            tx.put(d)?;
            let mut vm = tx.model().vm(id).unwrap().clone();
            vm.power_on = true;
            tx.put(vm)?;
            let op = OperationId(tx.new_id::<Operation>()?);
            tx.put(Operation {
                id: op,
                kind: OperationKind::Reimage {
                    vm_id: id,
                    distribution: "bigv-test".into(),
                },
                state: OperationState::Running,
                phase: "queued".into(),
                done: 0,
                total: 1,
                error: None,
                created_at: now,
                updated_at: now,
            })?;
            Ok::<_, DbError>(op)
        })
        .await
        .unwrap();
    tb.brain.reconcile.notify_one();
    op
}

#[tokio::test]
async fn a_stop_while_imaging_is_kept_when_the_imaging_finishes() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 1, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::stopped("web1")).await;
    let disc = discs(&tb, id).remove(0);
    eventually("the disc on its tail", 10, || {
        let there = disc_on_tails(&fleet, &disc).is_some();
        async move { there.then_some(()) }
    })
    .await;

    // The tail is away, so the copy cannot finish before the customer
    // changes their mind and stops the server.
    sim(&fleet, &tail(0)).stay_away(Duration::from_secs(2));
    let op = order_reimage(&tb, id, disc.id).await;
    update_vm(&tb, id, |vm| {
        vm.power_on = false;
        vm.autoreboot_on = false;
    })
    .await;

    eventually("the reimage to finish once the tail is back", 20, || {
        let state = tb.brain.db.read().operations[&op.0].state;
        async move { (state == OperationState::Done).then_some(()) }
    })
    .await;
    let (_, on_tail) = disc_on_tails(&fleet, &disc).unwrap();
    assert_eq!(on_tail.imaged_seq, Some(1));
    always("the server stays off", Duration::from_secs(2), || {
        sim_heads_running(&fleet, id).is_empty() && !vm(&tb, id).power_on
    })
    .await;
}

#[tokio::test]
async fn a_compatibility_vm_gets_ide_discs_and_an_e1000_nic() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 1, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::stopped("legacy")).await;
    update_vm(&tb, id, |vm| {
        vm.hardware_profile = "compatibility2011".into();
        vm.power_on = true;
        vm.autoreboot_on = true;
    })
    .await;
    let head = wait_running(&tb, &fleet, id, 10).await;
    let spec = sim(&fleet, &head).vms()[&id.0.to_string()].clone();
    assert_eq!(spec.discs[0].model, "ide");
    assert_eq!(spec.network_interfaces[0].model, "e1000");
}

#[tokio::test]
async fn many_vms_created_together_fill_the_fullest_head_without_overcommitting() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 2, 1);
    joined(&tb, &fleet).await;
    let per_head = (HEAD_MEMORY / 256) as usize;
    let mut ids = vec![];
    for _ in 0..per_head + 20 {
        let new = NewVm {
            memory: 256,
            discs: vec![("sata", 1024)],
            ..NewVm::running("web")
        };
        ids.push(create_vm(&tb, new).await);
    }
    eventually("every VM to run", 30, || {
        let all = ids
            .iter()
            .all(|id| sim_heads_running(&fleet, *id).len() == 1);
        async move { all.then_some(()) }
    })
    .await;
    let mut counts: Vec<usize> = fleet
        .nodes
        .iter()
        .filter(|n| n.node_id().contains("head"))
        .map(|n| n.vms().len())
        .collect();
    counts.sort();
    // Fill the fullest: one head full, the rest on the other.
    assert_eq!(counts, [20, per_head]);
    for id in &ids {
        let vm = vm(&tb, *id);
        assert_eq!(sim_heads_running(&fleet, *id), [vm.head.unwrap()]);
    }
}
