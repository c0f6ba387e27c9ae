//! A soft-deleted VM stops at once, stays restorable for the purge period,
//! then is purged: records gone, IPs free, its disc removed from its tail.

mod common;
mod reconcile_support;

use std::time::Duration;

use bigv_brain::clock::Clock;
use bigv_brain::model::Settings;
use common::*;
use reconcile_support::*;

#[tokio::test]
async fn a_deleted_vm_stops_then_is_purged_after_the_period() {
    let settings = Settings {
        purge_after_secs: 3600,
        ..test_settings()
    };
    let tb = TestBrain::start_with(settings, Clock::manual(1_800_000_000)).await;
    let fleet = fleet(&tb, 1, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    let keep = create_vm(&tb, NewVm::running("web2")).await;
    wait_running(&tb, &fleet, id, 10).await;
    wait_running(&tb, &fleet, keep, 10).await;
    let disc = discs(&tb, id).remove(0);
    let ip = format!("192.0.2.{}", 10 + id.0);

    let now = tb.clock.now();
    update_vm(&tb, id, move |vm| {
        vm.deleted = true;
        vm.deleted_at = Some(now);
    })
    .await;
    eventually("the deleted VM to stop and its disc to close", 10, || {
        let vm = vm(&tb, id);
        let acl = disc_on_tails(&fleet, &disc).map(|(_, d)| d.access_control_list);
        let done =
            sim_heads_running(&fleet, id).is_empty() && vm.head.is_none() && acl == Some(vec![]);
        async move { done.then_some(()) }
    })
    .await;

    tb.clock.advance(3599);
    always(
        "a deleted VM is kept, restorable, until the period ends",
        Duration::from_millis(1500),
        || {
            let model = tb.brain.db.read();
            model.vm(id).is_some()
                && model.disc(disc.id).is_some()
                && model.ips.contains_key(&ip)
                && disc_on_tails(&fleet, &disc).is_some()
        },
    )
    .await;

    tb.clock.advance(1);
    eventually("the VM to be purged and its disc removed", 10, || {
        let model = tb.brain.db.read();
        let gone = model.vm(id).is_none()
            && model.disc(disc.id).is_none()
            && model.nics_of(id).next().is_none()
            && !model.ips.contains_key(&ip)
            && disc_on_tails(&fleet, &disc).is_none();
        async move { gone.then_some(()) }
    })
    .await;
    // The other VM is untouched.
    let model = tb.brain.db.read();
    assert!(model.vm(keep).is_some_and(|v| v.power_on && !v.deleted));
    drop(model);
    assert_eq!(sim_heads_running(&fleet, keep).len(), 1);
}
