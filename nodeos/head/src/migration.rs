//! Live migration of a VM between heads, over qemu's own migration
//! stream (TCP on the storage network).
//!
//! Destination: the brain creates the VM with `incoming`; qemu starts
//! with `-incoming defer`, [`listen`] opens the listener and reports its
//! `host:port` as `incoming.endpoint` (state `migrating`). qemu resumes
//! the guest itself once the stream is complete; the supervisor sees
//! `RESUME` and reports the VM running without `incoming`.
//!
//! Source: an update with a new `migrate_to.seq` starts [`run`], which
//! polls `query-migrate` and reports `migration` progress. On success
//! the source qemu (paused, `postmigrate`) is ended and the supervisor
//! reports the VM `destroyed`; on failure or cancellation the progress
//! says `failed` and the guest keeps running here.

use std::sync::Arc;
use std::time::Duration;

use bigv_spine::resource::{VmMigrationOrder, VmMigrationProgress, VmMigrationState, VmSpec};

use crate::agent::{HeadAgent, Vm};
use crate::qmp::QmpError;
use crate::{error_chain, vm};

/// How often a running migration is polled (and progress reported).
const POLL: Duration = Duration::from_millis(250);

/// True while an outgoing migration is under way (its progress `active`).
pub(crate) fn outgoing(spec: &VmSpec) -> bool {
    spec.migration
        .as_ref()
        .is_some_and(|m| m.state == VmMigrationState::Active)
}

/// `tcp:` URI host part: IPv6 in brackets.
fn uri_host(address: &str) -> String {
    let bare = address.trim_start_matches('[').trim_end_matches(']');
    if bare.contains(':') {
        format!("[{bare}]")
    } else {
        bare.to_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("qemu")]
    Qmp(#[from] QmpError),
    #[error("qemu did not say where it listens")]
    NoAddress,
}

/// Opens the incoming listener on `address` (a free port chosen by the
/// kernel) and records the endpoint in the VM's reported spec.
pub(crate) async fn listen(vm: &Vm, address: &str) -> Result<VmSpec, ListenError> {
    let uri = format!("tcp:{}:0", uri_host(address));
    vm.qmp.migrate_incoming(&uri).await?;
    let info = vm.qmp.query_migrate().await?;
    let endpoint = info.listening.ok_or(ListenError::NoAddress)?;
    let mut spec = vm.spec.lock().await;
    if let Some(incoming) = spec.incoming.as_mut() {
        incoming.endpoint = Some(endpoint);
    }
    let _ = vm::save_spec(&vm.paths, &spec);
    Ok(spec.clone())
}

/// Applies an update's `migrate_to` to the reported spec: a new `seq`
/// (each is attempted once) returns the order to start; an order without
/// `migrate_to` cancels a migration under way.
pub(crate) async fn steer(
    vm: &Vm,
    spec: &mut VmSpec,
    wanted: Option<VmMigrationOrder>,
) -> Option<VmMigrationOrder> {
    let last = spec.migration.as_ref().map_or(0, |m| m.seq);
    match wanted {
        Some(order) if order.seq > last && spec.incoming.is_none() => {
            tracing::info!(vm = %vm.name, seq = order.seq, to = %order.to, endpoint = %order.endpoint, "live migration ordered");
            spec.migration = Some(VmMigrationProgress {
                seq: order.seq,
                to: order.to.clone(),
                state: VmMigrationState::Active,
                ram_done: 0,
                ram_total: spec.memory << 20,
                downtime_ms: None,
                error: None,
            });
            spec.migrate_to = Some(order.clone());
            Some(order)
        }
        Some(order) => {
            spec.migrate_to = Some(order);
            None
        }
        None => {
            if outgoing(spec) {
                tracing::info!(vm = %vm.name, "live migration cancelled by the brain");
                if let Err(e) = vm.qmp.migrate_cancel().await {
                    tracing::warn!(vm = %vm.name, error = %error_chain(&e), "migrate_cancel failed");
                }
                if let Some(m) = spec.migration.as_mut() {
                    m.state = VmMigrationState::Failed;
                    m.error = Some("cancelled".into());
                }
            }
            spec.migrate_to = None;
            None
        }
    }
}

/// Changes the progress of migration `seq` (if it is still the one
/// reported) and returns the spec to report.
async fn set_progress(
    vm: &Vm,
    seq: u64,
    change: impl FnOnce(&mut VmMigrationProgress) -> bool,
) -> Option<VmSpec> {
    let mut spec = vm.spec.lock().await;
    let m = spec.migration.as_mut().filter(|m| m.seq == seq)?;
    if !change(m) {
        return None;
    }
    let _ = vm::save_spec(&vm.paths, &spec);
    Some(spec.clone())
}

async fn fail(agent: &HeadAgent, vm: &Vm, seq: u64, why: String) {
    tracing::warn!(vm = %vm.name, seq, error = %why, "live migration failed; the guest runs on here");
    let failed = set_progress(vm, seq, |m| {
        let changed = m.state != VmMigrationState::Failed;
        m.state = VmMigrationState::Failed;
        m.error.get_or_insert(why);
        changed
    })
    .await;
    if let Some(spec) = failed {
        agent.report_vm(&vm.name, spec).await;
    }
}

/// The source side of one migration, from `migrate` to its end.
pub(crate) async fn run(agent: Arc<HeadAgent>, vm: Arc<Vm>, order: VmMigrationOrder) {
    let seq = order.seq;
    let started = async {
        vm.qmp
            .migrate_set_parameters(order.max_bandwidth, order.max_downtime_ms)
            .await?;
        vm.qmp.migrate(&format!("tcp:{}", order.endpoint)).await
    };
    if let Err(e) = started.await {
        fail(&agent, &vm, seq, error_chain(&e)).await;
        return;
    }
    watch(agent, vm, order).await
}

/// After an agent restart: a re-adopted VM whose saved spec says an
/// outgoing migration was under way is watched again (qemu kept
/// migrating while no agent was there), so its progress and end still
/// reach the brain and the source qemu still ends once it completes.
pub(crate) fn resume(agent: Arc<HeadAgent>, vm: Arc<Vm>, spec: &VmSpec) {
    let Some(order) = spec.migrate_to.clone() else {
        return;
    };
    if !outgoing(spec) || spec.migration.as_ref().map(|m| m.seq) != Some(order.seq) {
        return;
    }
    tracing::info!(vm = %vm.name, seq = order.seq, to = %order.to, "re-adopted during a live migration: watching it again");
    tokio::spawn(watch(agent, vm, order));
}

/// Reports migration `seq` completed: the RAM moved and qemu's final
/// downtime (once; later calls report nothing).
async fn completed(agent: &HeadAgent, vm: &Vm, seq: u64, info: &crate::qmp::MigrateInfo) {
    let done = set_progress(vm, seq, |m| {
        let changed = m.downtime_ms.is_none() || m.ram_done != info.ram_transferred;
        m.ram_done = info.ram_transferred;
        m.ram_total = info.ram_total.max(m.ram_total);
        m.downtime_ms = info.downtime_ms.or(m.downtime_ms);
        changed
    })
    .await;
    if let Some(spec) = done {
        tracing::info!(vm = %vm.name, seq, downtime_ms = ?info.downtime_ms, ram = info.ram_transferred, "live migration complete");
        agent.report_vm(&vm.name, spec).await;
    }
}

/// Before an ordered stop of a VM migrating out: the brain stops the
/// source as soon as the destination runs, which can be before the
/// watcher's next poll; a migration qemu has completed is reported now
/// (with its downtime), before the stop ends the source qemu and with it
/// the last chance to ask.
pub(crate) async fn settle(agent: &HeadAgent, vm: &Vm) {
    let seq = {
        let spec = vm.spec.lock().await;
        if !outgoing(&spec) {
            return;
        }
        spec.migration.as_ref().map(|m| m.seq)
    };
    let Some(seq) = seq else { return };
    match vm.qmp.query_migrate().await {
        Ok(info) if info.status == "completed" => completed(agent, vm, seq, &info).await,
        Ok(info) => {
            tracing::debug!(vm = %vm.name, status = %info.status, "stopped during an outgoing migration")
        }
        Err(e) => {
            tracing::warn!(vm = %vm.name, error = %error_chain(&e), "query-migrate before the stop failed: the migration's downtime is not known")
        }
    }
}

/// Polls qemu's migration until it ends, reporting progress; on success
/// ends the source qemu.
async fn watch(agent: Arc<HeadAgent>, vm: Arc<Vm>, order: VmMigrationOrder) {
    let seq = order.seq;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = vm.ended.cancelled() => return,
            // The agent is stopping: qemu migrates on, and the next
            // agent watches it (`resume`).
            _ = agent.stopping().cancelled() => return,
        }
        let info = match vm.qmp.query_migrate().await {
            Ok(i) => i,
            Err(e) => {
                // qemu is ending (the supervisor reports it) or its
                // monitor broke: nothing more to learn here.
                tracing::warn!(vm = %vm.name, error = %error_chain(&e), "query-migrate failed; no more progress reports");
                return;
            }
        };
        match info.status.as_str() {
            "completed" => {
                completed(&agent, &vm, seq, &info).await;
                tracing::info!(vm = %vm.name, seq, to = %order.to, "ending the source qemu");
                // Paused (`postmigrate`); the supervisor reports it
                // destroyed once it is gone.
                if let Err(e) = vm.qmp.quit().await {
                    tracing::warn!(vm = %vm.name, error = %e, "QMP quit failed; killing the source qemu");
                    vm::kill(vm.pid);
                }
                return;
            }
            // `none`: qemu has no migration (the agent died before it
            // issued `migrate`): this one is over.
            "failed" | "cancelled" | "none" => {
                let why = info.error.unwrap_or_else(|| info.status.clone());
                fail(&agent, &vm, seq, why).await;
                return;
            }
            _ => {
                let moved = set_progress(&vm, seq, |m| {
                    let changed = m.state == VmMigrationState::Active
                        && (m.ram_done, m.ram_total) != (info.ram_transferred, info.ram_total)
                        && info.ram_total > 0;
                    if changed {
                        m.ram_done = info.ram_transferred;
                        m.ram_total = info.ram_total;
                    }
                    changed
                })
                .await;
                if let Some(spec) = moved {
                    agent.report_vm(&vm.name, spec).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_bracketed_in_uris() {
        assert_eq!(uri_host("10.0.0.5"), "10.0.0.5");
        assert_eq!(uri_host("fd00::5"), "[fd00::5]");
        assert_eq!(uri_host("[fd00::5]"), "[fd00::5]");
    }
}
