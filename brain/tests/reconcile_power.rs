//! Power as the model says it: crashes restart or are recorded, reboots
//! stop then start afresh, power-off closes the discs, and the CD and
//! signals reach a running VM without restarting it.

mod common;
mod reconcile_support;

use std::time::Duration;

use bigv_spine::resource::{SignalKind, VmRunState, VmSignal};
use common::*;
use reconcile_support::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_crashed_vm_with_autoreboot_on_is_started_again() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 2, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    let head = wait_running(&tb, &fleet, id, 10).await;
    let (_, before) = reported_vm(&tb, &head, id).unwrap();

    assert!(sim(&fleet, &head).crash_vm(&id.0.to_string()).await);
    let again = eventually("the VM to be started again", 10, || {
        let running = sim_heads_running(&fleet, id);
        let restarted = match running.as_slice() {
            [one] => reported_vm(&tb, one, id)
                .filter(|(_, generation)| *generation > before)
                .map(|_| one.clone()),
            _ => None,
        };
        async move { restarted }
    })
    .await;
    let vm = vm(&tb, id);
    assert!(vm.power_on);
    assert_eq!(vm.head.as_deref(), Some(again.as_str()));
}

#[tokio::test]
async fn a_crashed_vm_with_autoreboot_off_is_recorded_as_off() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 2, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(
        &tb,
        NewVm {
            autoreboot_on: false,
            ..NewVm::running("web1")
        },
    )
    .await;
    let head = wait_running(&tb, &fleet, id, 10).await;
    let disc = discs(&tb, id).remove(0);

    assert!(sim(&fleet, &head).crash_vm(&id.0.to_string()).await);
    eventually("power_on to become false", 10, || {
        let vm = vm(&tb, id);
        async move { (!vm.power_on && vm.head.is_none()).then_some(()) }
    })
    .await;
    eventually("its disc to be closed to every head", 10, || {
        let acl = disc_on_tails(&fleet, &disc).map(|(_, d)| d.access_control_list);
        async move { (acl == Some(vec![])).then_some(()) }
    })
    .await;
    always("it stays off", Duration::from_secs(2), || {
        sim_heads_running(&fleet, id).is_empty() && !vm(&tb, id).power_on
    })
    .await;
}

#[tokio::test]
async fn reboot_stops_the_vm_then_starts_it_afresh() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 1, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    let head = wait_running(&tb, &fleet, id, 10).await;
    let (_, before) = reported_vm(&tb, &head, id).unwrap();

    // bigv-api.md §5.4: power_on=false with autoreboot_on=true.
    update_vm(&tb, id, |vm| vm.power_on = false).await;
    eventually("the VM to be back on, in a new process", 10, || {
        let vm = vm(&tb, id);
        // Stopped (one order), then created (another).
        let fresh = reported_vm(&tb, &head, id).is_some_and(|(_, g)| g >= before + 2);
        async move { (vm.power_on && fresh).then_some(()) }
    })
    .await;
    assert_eq!(sim_heads_running(&fleet, id), [head]);
}

#[tokio::test]
async fn power_off_stops_the_vm_and_closes_its_discs_and_power_on_starts_it() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 1, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    wait_running(&tb, &fleet, id, 10).await;
    let disc = discs(&tb, id).remove(0);

    update_vm(&tb, id, |vm| {
        vm.power_on = false;
        vm.autoreboot_on = false;
    })
    .await;
    eventually("the VM stopped, unplaced, its disc closed", 10, || {
        let vm = vm(&tb, id);
        let acl = disc_on_tails(&fleet, &disc).map(|(_, d)| d.access_control_list);
        let done = sim_heads_running(&fleet, id).is_empty()
            && vm.head.is_none()
            && !vm.power_on
            && acl == Some(vec![]);
        async move { done.then_some(()) }
    })
    .await;

    update_vm(&tb, id, |vm| {
        vm.power_on = true;
        vm.autoreboot_on = true;
    })
    .await;
    let head = wait_running(&tb, &fleet, id, 10).await;
    let (_, on_tail) = disc_on_tails(&fleet, &disc).unwrap();
    assert_eq!(on_tail.access_control_list, [node_address(&head)]);
}

#[tokio::test]
async fn the_cd_and_signals_reach_a_running_vm_without_a_restart() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 1, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(&tb, NewVm::running("web1")).await;
    let head = wait_running(&tb, &fleet, id, 10).await;
    let name = id.0.to_string();
    let started = sim(&fleet, &head).vms()[&name].started_at;

    let iso = "http://mirror.example/debian.iso";
    update_vm(&tb, id, move |vm| vm.cdrom_url = Some(iso.into())).await;
    eventually("the head to have the CD", 10, || {
        let cd = sim(&fleet, &head)
            .vms()
            .get(&name)
            .and_then(|v| v.cdrom_url.clone());
        async move { (cd.as_deref() == Some(iso)).then_some(()) }
    })
    .await;
    assert_eq!(sim(&fleet, &head).vms()[&name].started_at, started);

    // The 4.0 client's shutdown: autoreboot off, then ACPI powerdown, then
    // poll until power_on is false.
    update_vm(&tb, id, |vm| {
        vm.autoreboot_on = false;
        let seq = vm.signal.as_ref().map_or(0, |s| s.seq) + 1;
        vm.signal = Some(VmSignal {
            seq,
            kind: SignalKind::Powerdown,
            keys: None,
        });
    })
    .await;
    eventually("the guest to power down and be recorded off", 10, || {
        let vm = vm(&tb, id);
        async move { (!vm.power_on && vm.head.is_none()).then_some(()) }
    })
    .await;
    assert!(sim_heads_running(&fleet, id).is_empty());

    // Started again, the old signal is not delivered a second time.
    update_vm(&tb, id, |vm| {
        vm.power_on = true;
        vm.autoreboot_on = true;
    })
    .await;
    wait_running(&tb, &fleet, id, 10).await;
    always(
        "the restarted VM keeps running",
        Duration::from_secs(2),
        || sim_heads_running(&fleet, id).len() == 1 && vm(&tb, id).power_on,
    )
    .await;
}

/// bigv-api.md §5.5: a signal is "only valid on a running VM". One that
/// wants to run but has not started (here: too big for any head, so it
/// waits unplaced) is refused with a 400 naming the reason, and nothing is
/// recorded that a later start would silently drop; once it runs, the same
/// signal is accepted and reaches its head.
#[tokio::test]
async fn a_signal_to_a_vm_that_has_not_started_is_refused_until_it_runs() {
    let tb = TestBrain::start().await;
    let fleet = fleet(&tb, 1, 1);
    joined(&tb, &fleet).await;
    let id = create_vm(
        &tb,
        NewVm {
            memory: 2 * HEAD_MEMORY,
            ..NewVm::running("web1")
        },
    )
    .await;
    let su = tb.su().await;
    let signal = "/accounts/alice/groups/default/virtual_machines/web1/signal";
    // Give the reconciler passes to try (and fail) to place it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = vm(&tb, id);
    assert!(waiting.power_on && waiting.head.is_none(), "{waiting:?}");
    for body in [
        json!({"signal": "reset"}),
        json!({"signal": "powerdown"}),
        json!({"signal": "sendkey", "data": "ctrl-alt-delete"}),
    ] {
        let (status, e) = tb.post(&su, signal, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
        let text = e.as_str().expect("a plain-text refusal");
        assert!(text.contains("web1 is not running yet"), "{text}");
    }
    assert_eq!(vm(&tb, id).signal, None, "a refused signal is not recorded");

    update_vm(&tb, id, |vm| vm.memory = 1024).await;
    let head = wait_running(&tb, &fleet, id, 10).await;
    eventually("the brain to see the VM running", 10, || {
        let seen = reported_vm(&tb, &head, id)
            .is_some_and(|(spec, _)| spec.state == Some(VmRunState::Running));
        async move { seen.then_some(()) }
    })
    .await;
    let (status, echo) = tb.post(&su, signal, json!({"signal": "reset"})).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    let name = id.0.to_string();
    let delivered = eventually("the reset to reach the head", 10, || {
        let got = sim(&fleet, &head)
            .vms()
            .get(&name)
            .and_then(|v| v.signal.clone());
        async move { got }
    })
    .await;
    assert_eq!(delivered.kind, SignalKind::Reset);
    assert_eq!(delivered.seq, 1);
    assert_eq!(sim_heads_running(&fleet, id), [head]);
}
