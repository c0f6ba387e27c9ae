//! Disc migration between tails as an operator orders it (`POST
//! /admin/discs/{id}/migrate`): the disc moves to another tail under its
//! running VM, a failed copy leaves it where it was, and a cancelled one
//! leaves no half-made copy behind.

mod common;
mod reconcile_support;

use std::time::Duration;

use bigv_spine::resource::MigrationState;
use common::*;
use reconcile_support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Every simulated tail holding the disc.
fn holders(fleet: &bigv_spine::sim::SimFleet, disc: &bigv_brain::model::Disc) -> Vec<String> {
    let name = bigv_brain::scheduler::disc_resource(disc);
    fleet
        .nodes
        .iter()
        .filter(|n| n.discs().contains_key(&name))
        .map(|n| n.node_id().to_owned())
        .collect()
}

async fn migrate(tb: &TestBrain, disc: u64) -> u64 {
    let su = tb.su().await;
    let (status, op) = tb
        .post(&su, &format!("/admin/discs/{disc}/migrate"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    op["id"].as_u64().expect("an operation id")
}

async fn job_ends(tb: &TestBrain, op: u64, secs: u64) -> Value {
    let su = tb.su().await;
    eventually("the migration to end", secs, || {
        let (tb, su) = (&tb, su.clone());
        async move {
            let (_, job) = tb.get(&su, &format!("/admin/migration_jobs/{op}")).await;
            (job["state"] != "running").then_some(job)
        }
    })
    .await
}

#[tokio::test]
async fn a_disc_moves_to_another_tail_under_its_running_vm() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 1, 2);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    let head = wait_running(&tb, &fleet, id, 10).await;
    let (_, vm_generation) = reported_vm(&tb, &head, id).unwrap();
    let disc = discs(&tb, id).remove(0);
    let (from, before) = disc_on_tails(&fleet, &disc).unwrap();

    let op = migrate(&tb, disc.id.0).await;
    // Once the source has let go, the disc never comes back there (a new
    // blank copy on the old tail would answer on the disc's address).
    let ends = job_ends(&tb, op, 20);
    tokio::pin!(ends);
    let mut let_go = false;
    let job = loop {
        tokio::select! {
            job = &mut ends => break job,
            _ = tokio::time::sleep(Duration::from_millis(5)) => {
                let on_source = holders(&fleet, &disc).contains(&from);
                assert!(
                    !(let_go && on_source),
                    "the disc came back on its old tail after the handover"
                );
                let_go |= !on_source;
            }
        }
    };
    assert!(let_go, "the source let go of the disc");
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["done"], job["total"], "{job}");

    let (to, after) = disc_on_tails(&fleet, &disc).unwrap();
    assert_ne!(to, from, "the disc is on the other tail");
    assert_eq!(holders(&fleet, &disc), [to.as_str()], "one copy only");
    assert_eq!(after.address, before.address, "the address moved with it");
    assert_eq!(after.access_control_list, [node_address(&head)]);
    assert!(after.incoming.is_none());
    let pool = discs(&tb, id).remove(0).storage_pool.unwrap();
    let pool_tail = tb
        .brain
        .db
        .read()
        .pools
        .values()
        .find(|p| p.label == pool)
        .map(|p| p.node_id.clone());
    assert_eq!(pool_tail, Some(to.clone()), "the record follows: {pool}");
    // The VM was never restarted for it.
    assert_eq!(sim_heads_running(&fleet, id), [head.as_str()]);
    assert_eq!(reported_vm(&tb, &head, id).unwrap().1, vm_generation);
    always("the disc stays put", Duration::from_secs(1), || {
        holders(&fleet, &disc) == [to.clone()]
    })
    .await;
}

#[tokio::test]
async fn a_failed_copy_leaves_the_disc_serving_where_it_was() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 1, 2);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    wait_running(&tb, &fleet, id, 10).await;
    let disc = discs(&tb, id).remove(0);
    let (from, _) = disc_on_tails(&fleet, &disc).unwrap();
    sim(&fleet, &from).fail_mirrors(true);

    let op = migrate(&tb, disc.id.0).await;
    let job = job_ends(&tb, op, 20).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("simulated failure"),
        "{job}"
    );
    eventually(
        "the half-made copy to go and the source to drop the order",
        10,
        || {
            let only_source = holders(&fleet, &disc) == [from.clone()];
            let order_gone =
                disc_on_tails(&fleet, &disc).is_some_and(|(_, d)| d.migrate_to.is_none());
            async move { (only_source && order_gone).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        discs(&tb, id).remove(0).storage_pool,
        disc.storage_pool,
        "the record did not move"
    );
}

#[tokio::test]
async fn a_cancelled_migration_leaves_no_copy_behind() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 1, 2);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    wait_running(&tb, &fleet, id, 10).await;
    let disc = discs(&tb, id).remove(0);
    let (from, _) = disc_on_tails(&fleet, &disc).unwrap();
    sim(&fleet, &from).mirror_time(Duration::from_secs(60));

    let op = migrate(&tb, disc.id.0).await;
    let su = tb.su().await;
    eventually("the copy to start", 10, || {
        let copying = disc_on_tails(&fleet, &disc).is_some_and(|(node, d)| {
            node == from
                && d.migration
                    .is_some_and(|m| m.state == MigrationState::Copying)
        });
        async move { copying.then_some(()) }
    })
    .await;
    let (status, body) = tb
        .post(
            &su,
            &format!("/admin/discs/{}/cancel_migration", disc.id.0),
            json!({}),
        )
        .await;
    assert!(status.is_success(), "{status}: {body}");

    eventually("the destination removed and the source alone", 10, || {
        let alone = holders(&fleet, &disc) == [from.clone()];
        let stopped = disc_on_tails(&fleet, &disc).is_some_and(|(_, d)| {
            d.migrate_to.is_none()
                && d.migration
                    .is_some_and(|m| m.state == MigrationState::Failed)
        });
        async move { (alone && stopped).then_some(()) }
    })
    .await;
    let (_, job) = tb.get(&su, &format!("/admin/migration_jobs/{op}")).await;
    assert_eq!(job["state"], "cancelled", "{job}");
}

#[tokio::test]
async fn emptying_a_pool_moves_every_disc_to_another_tail() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 1, 2);
    joined(&tb, &fleet).await;
    let mut ids = vec![];
    for name in ["web1", "web2", "web3"] {
        ids.push(create_vm(&tb, NewVm::running(name)).await);
    }
    for id in &ids {
        wait_running(&tb, &fleet, *id, 10).await;
    }
    let all: Vec<_> = ids.iter().flat_map(|id| discs(&tb, *id)).collect();
    let label = all[0].storage_pool.clone().unwrap();
    let on_it: Vec<_> = all
        .iter()
        .filter(|d| d.storage_pool.as_deref() == Some(&label))
        .collect();
    assert!(!on_it.is_empty());
    let (from, _) = disc_on_tails(&fleet, on_it[0]).unwrap();

    let su = tb.su().await;
    let (status, op) = tb
        .post(
            &su,
            &format!("/admin/storage_pools/{label}/empty"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    let job = job_ends(&tb, op["id"].as_u64().unwrap(), 30).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["done"], on_it.len(), "{job}");

    for disc in &on_it {
        let (now_on, _) = disc_on_tails(&fleet, disc).unwrap();
        assert_ne!(
            now_on, from,
            "disc {} left the emptied pool's tail",
            disc.id.0
        );
        assert_eq!(holders(&fleet, disc).len(), 1);
    }
    let model = tb.brain.db.read();
    assert!(
        model
            .discs
            .values()
            .all(|d| d.storage_pool.as_deref() != Some(&label)),
        "no disc is recorded in {label} any more"
    );
    for id in &ids {
        assert_eq!(sim_heads_running(&fleet, *id).len(), 1, "still running");
    }
}

/// The VM's discs as their tails hold them.
fn acls(
    fleet: &bigv_spine::sim::SimFleet,
    tb: &TestBrain,
    id: bigv_brain::model::VmId,
) -> Vec<Vec<String>> {
    discs(tb, id)
        .iter()
        .filter_map(|d| disc_on_tails(fleet, d).map(|(_, s)| s.access_control_list))
        .collect()
}

async fn migrate_vm(tb: &TestBrain, id: bigv_brain::model::VmId) -> u64 {
    let su = tb.su().await;
    let (status, op) = tb
        .post(&su, &format!("/admin/vms/{}/migrate", id.0), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    op["id"].as_u64().expect("an operation id")
}

#[tokio::test]
async fn a_running_vm_moves_to_another_head_as_the_same_guest() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 2, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    let from = wait_running(&tb, &fleet, id, 10).await;
    let started = sim(&fleet, &from).vms()[&id.0.to_string()].started_at;
    sim(&fleet, &from).mirror_time(Duration::from_secs(2));

    let op = migrate_vm(&tb, id).await;
    // During the handover both heads may open the disc, and no other time.
    eventually("the disc open to both heads", 10, || {
        let both = acls(&fleet, &tb, id).iter().all(|acl| acl.len() == 2);
        async move { both.then_some(()) }
    })
    .await;
    let job = job_ends(&tb, op, 20).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(
        job["downtime_ms"],
        bigv_spine::sim::SIM_DOWNTIME_MS,
        "the source's final downtime, reported as it went: {job}"
    );

    let to = wait_running(&tb, &fleet, id, 10).await;
    assert_ne!(to, from);
    let moved = &sim(&fleet, &to).vms()[&id.0.to_string()];
    assert_eq!(moved.started_at, started, "the same guest, not a new boot");
    assert!(moved.incoming.is_none());
    eventually("the disc closed to the old head", 10, || {
        let only_new = acls(&fleet, &tb, id)
            .iter()
            .all(|acl| *acl == [node_address(&to)]);
        async move { only_new.then_some(()) }
    })
    .await;
    always(
        "it stays on its new head, once",
        Duration::from_secs(1),
        || sim_heads_running(&fleet, id) == [to.as_str()],
    )
    .await;
}

#[tokio::test]
async fn a_failed_vm_migration_leaves_the_guest_running_where_it_was() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 2, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    let from = wait_running(&tb, &fleet, id, 10).await;
    let started = sim(&fleet, &from).vms()[&id.0.to_string()].started_at;
    sim(&fleet, &from).fail_mirrors(true);

    let op = migrate_vm(&tb, id).await;
    let job = job_ends(&tb, op, 20).await;
    assert_eq!(job["state"], "failed", "{job}");
    eventually(
        "the waiting destination removed, the disc closed to it",
        10,
        || {
            let alone = sim_heads_running(&fleet, id) == [from.as_str()];
            let acl_back = acls(&fleet, &tb, id)
                .iter()
                .all(|acl| *acl == [node_address(&from)]);
            async move { (alone && acl_back).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        sim(&fleet, &from).vms()[&id.0.to_string()].started_at,
        started,
        "never restarted"
    );
    assert_eq!(vm(&tb, id).head.as_deref(), Some(from.as_str()));
}

#[tokio::test]
async fn emptying_a_head_migrates_every_vm_off_it() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 2, 1);
    joined(&tb, &fleet).await;
    let mut ids = vec![];
    for name in ["web1", "web2", "web3"] {
        ids.push(create_vm(&tb, NewVm::running(name)).await);
    }
    let mut heads = vec![];
    for id in &ids {
        heads.push(wait_running(&tb, &fleet, *id, 10).await);
    }
    let emptied = heads[0].clone();
    let su = tb.su().await;
    let (status, op) = tb
        .post(&su, &format!("/admin/heads/{emptied}/empty"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    let job = job_ends(&tb, op["id"].as_u64().unwrap(), 30).await;
    assert_eq!(job["state"], "done", "{job}");
    for id in &ids {
        let now = sim_heads_running(&fleet, *id);
        assert_eq!(now.len(), 1);
        assert_ne!(now[0], emptied);
    }
    assert!(sim(&fleet, &emptied).vms().is_empty());
}
