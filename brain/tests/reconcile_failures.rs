//! Unknown is not dead (BRIEF §3 decision 4): a head that drops off the
//! spine keeps its VMs until the fence time has passed; after it, the
//! discs' ACLs move first and the VM starts elsewhere, never running twice;
//! rogue copies are removed; and a restarted brain reconverges without
//! touching what already runs.

mod common;
mod reconcile_support;

use std::collections::BTreeMap;
use std::time::Duration;

use bigv_brain::model::VmId;
use common::*;
use reconcile_support::*;
use tokio::time::Instant;

/// The VM's head in the model, plus the other head of a two-head fleet.
fn other(head: &str) -> String {
    if head == self::head(0) {
        self::head(1)
    } else {
        self::head(0)
    }
}

#[tokio::test]
async fn a_head_away_for_less_than_the_fence_time_keeps_its_vms() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 2, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    let head = wait_running(&tb, &fleet, id, 10).await;
    let before = vm(&tb, id);
    let started = sim(&fleet, &head).vms()[&id.0.to_string()].started_at;

    sim(&fleet, &head).stay_away(Duration::from_secs(2));
    always(
        "nothing moves while the head is unknown",
        Duration::from_secs(5),
        || {
            let vm = vm(&tb, id);
            vm.head.as_deref() == Some(head.as_str())
                && vm.generation == before.generation
                && spine_heads_reporting(&tb, &fleet, id)
                    .iter()
                    .all(|h| *h == head)
        },
    )
    .await;
    eventually("the head to be back, declaring its VM", 10, || {
        let back = spine_heads_reporting(&tb, &fleet, id) == [head.clone()];
        async move { back.then_some(()) }
    })
    .await;
    assert_eq!(
        sim(&fleet, &head).vms()[&id.0.to_string()].started_at,
        started
    );
    assert_eq!(vm(&tb, id).generation, before.generation);
}

#[tokio::test]
async fn past_the_fence_time_the_vm_restarts_elsewhere_acl_first_never_twice() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 2, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    let old = wait_running(&tb, &fleet, id, 10).await;
    let new = other(&old);
    let disc = discs(&tb, id).remove(0);
    let settings = tb.brain.db.read().settings.clone();
    let fence = Duration::from_secs(settings.fence_timeout_secs + settings.fence_margin_secs);

    // The tail is away too, for less time: the VM must wait for it, as
    // its disc cannot be closed to the old head until then.
    let left = Instant::now();
    let tail_back = Duration::from_secs(6);
    sim(&fleet, &old).stay_away(Duration::from_secs(12));
    sim(&fleet, &tail(0)).stay_away(tail_back);
    // Poll both heads and the tail until the new head runs it.
    let deadline = left + Duration::from_secs(11);
    loop {
        let reporting = spine_heads_reporting(&tb, &fleet, id);
        assert!(
            reporting.len() <= 1,
            "two heads report the VM: {reporting:?}"
        );
        if !sim_heads_running(&fleet, id).contains(&new) {
            assert!(Instant::now() < deadline, "the VM did not move");
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let elapsed = left.elapsed();
        assert!(
            elapsed >= fence,
            "moved after {elapsed:?}, before the fence time"
        );
        assert!(
            elapsed >= tail_back,
            "moved after {elapsed:?}, while its tail was away"
        );
        let (_, on_tail) = disc_on_tails(&fleet, &disc).unwrap();
        assert_eq!(
            on_tail.access_control_list,
            [node_address(&new)],
            "the ACL moves to the new head, and only to it, before the VM starts"
        );
        break;
    }
    assert_eq!(vm(&tb, id).head.as_deref(), Some(new.as_str()));
    assert!(vm(&tb, id).power_on);

    // The old head comes back still holding its copy (this simulator does
    // not fence itself): the brain removes that rogue.
    eventually("the old head's rogue copy to be removed", 15, || {
        let done = sim(&fleet, &old).sessions() > 1
            && tb.brain.spine.node(&old).is_some_and(|h| h.is_ready())
            && sim_heads_running(&fleet, id) == [new.clone()];
        async move { done.then_some(()) }
    })
    .await;
    assert_eq!(vm(&tb, id).head.as_deref(), Some(new.as_str()));
}

#[tokio::test]
async fn a_head_reconnecting_with_vms_it_should_not_run_has_them_removed() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 2, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    let head = wait_running(&tb, &fleet, id, 10).await;
    let rogue = other(&head);
    let spec = sim(&fleet, &head).vms()[&id.0.to_string()].clone();
    let started = spec.started_at;

    // A copy of a VM that runs elsewhere, and one the brain never heard of.
    sim(&fleet, &rogue).reconnect_with_stale_vm(&id.0.to_string(), spec.clone());
    sim(&fleet, &rogue).reconnect_with_stale_vm("stranger", spec);
    eventually("both rogues to be removed", 10, || {
        let vms = sim(&fleet, &rogue).vms();
        let gone = sim(&fleet, &rogue).sessions() > 1 && vms.is_empty();
        async move { gone.then_some(()) }
    })
    .await;
    assert_eq!(sim_heads_running(&fleet, id), [head.as_str()]);
    assert_eq!(
        sim(&fleet, &head).vms()[&id.0.to_string()].started_at,
        started
    );
    assert_eq!(vm(&tb, id).head.as_deref(), Some(head.as_str()));
}

#[tokio::test]
async fn a_restarted_brain_reconverges_without_creating_or_removing_anything() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 2, 1);
    joined(&tb, &fleet).await;
    let mut ids: Vec<VmId> = vec![];
    for name in ["web1", "web2", "web3"] {
        ids.push(create_vm(&tb, NewVm::running(name)).await);
    }
    let stopped = create_vm(&tb, NewVm::stopped("cold")).await;
    for id in &ids {
        wait_running(&tb, &fleet, *id, 10).await;
    }
    let cold_disc = discs(&tb, stopped).remove(0);
    eventually("the stopped VM's disc on its tail", 10, || {
        let there = disc_on_tails(&fleet, &cold_disc).is_some();
        async move { there.then_some(()) }
    })
    .await;
    // Let the last orders' replies land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = |tb: &TestBrain| {
        let model = tb.brain.db.read();
        let vms: BTreeMap<u64, (Option<String>, u64, bool)> = model
            .vms
            .values()
            .map(|v| (v.id.0, (v.head.clone(), v.generation, v.power_on)))
            .collect();
        let discs: BTreeMap<u64, (Option<String>, u64)> = model
            .discs
            .values()
            .map(|d| (d.id.0, (d.storage_pool.clone(), d.generation)))
            .collect();
        (vms, discs)
    };
    let running = |fleet: &bigv_spine::sim::SimFleet| {
        fleet
            .nodes
            .iter()
            .flat_map(|n| {
                n.vms()
                    .into_iter()
                    .map(|(name, spec)| (name, (n.node_id().to_owned(), spec.started_at)))
            })
            .collect::<BTreeMap<_, _>>()
    };
    let before = records(&tb);
    let vms_before = running(&fleet);
    let discs_before: Vec<_> = fleet.nodes.iter().map(|n| n.discs()).collect();
    let sessions: Vec<u64> = fleet.nodes.iter().map(|n| n.sessions()).collect();

    let tb = restart_same_spine(tb).await;
    eventually("every node to reconnect to the new brain", 20, || {
        let back = fleet.nodes.iter().zip(&sessions).all(|(n, s)| {
            n.sessions() > *s
                && tb
                    .brain
                    .spine
                    .node(n.node_id())
                    .is_some_and(|h| h.is_ready())
        });
        async move { back.then_some(()) }
    })
    .await;
    // Passes run every second and on every event: give it several.
    always(
        "no order touches what already runs where the model wants it",
        Duration::from_secs(3),
        || records(&tb) == before && running(&fleet) == vms_before,
    )
    .await;
    let discs_after: Vec<_> = fleet.nodes.iter().map(|n| n.discs()).collect();
    assert_eq!(discs_after, discs_before);
    assert_eq!(vms_before.len(), 3);
}

#[tokio::test]
async fn heads_are_welcomed_with_the_fence_timeout_and_a_change_reaches_their_next_session() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 1, 0);
    joined(&tb, &fleet).await;
    let h = head(0);
    let told = |tb: &TestBrain| {
        tb.brain
            .spine
            .node(&h)
            .map(|n| (n.info().conn, n.info().fence_timeout_secs))
    };
    let (conn, secs) = told(&tb).expect("connected");
    assert_eq!(secs, Some(tb.brain.db.read().settings.fence_timeout_secs));

    let su = tb.su().await;
    let (status, body) = tb
        .put(
            &su,
            "/admin/settings",
            serde_json::json!({"fence_timeout_secs": 7}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(told(&tb), Some((conn, secs)), "a session keeps its welcome");

    sim(&fleet, &h).drop_connection();
    eventually("the head's next session to be told 7 s", 10, || {
        let now = told(&tb);
        async move { now.filter(|&(c, s)| c != conn && s == Some(7)) }
    })
    .await;
}
