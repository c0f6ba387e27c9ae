//! The reconciler: desired state in the store, actual state from the
//! spine, and this task between them (paper §3, BRIEF §3 decision 1).
//!
//! One task owns it. It runs a full pass on every spine event, every
//! `state.reconcile` notification, every finished order and at least
//! every second (whatever queued up meanwhile is covered by one pass, and
//! passes are paced so the API's writes get the store in between). A pass
//! brings its copy of the spine tables up to date, then, inside one store
//! write, compares them with the model, persists what it decides
//! (placements, raised generations, truthful power state) and returns the
//! orders to send; they go out concurrently as tasks, a bounded number on
//! the wire at a time. Level-triggered: nothing is remembered about orders
//! beyond which are in flight or recently failed, so a lost event, a
//! failed order or a brain restart only delays convergence, and a
//! restarted brain that finds everything where the model wants it sends
//! nothing.
//!
//! - `snapshot.rs`: the spine tables, copied per node as they change.
//! - `pass.rs`: one pass over the model (the steps below, in order).
//! - `nodes.rs`: Node and Pool records for what joins.
//! - `fencing.rs`: unknown heads, and when their VMs may move.
//! - `discs.rs`: pools, storage addresses, ACLs, resizes, strays.
//! - `vms.rs`: placement, start/stop/reboot, rogues, the VM resource.
//! - `operations.rs`: finishing reimages; emptying, shared by the
//!   emptying of heads and pools and by upgrades.
//! - `vm_migrations.rs`, `disc_migrations.rs`: live migrations, emptying.
//! - `upgrades.rs`: rolling upgrades, node by node.
//! - `orders.rs`: orders, in-flight tracking and retry backoff.
//! - `scale.rs` (tests): passes at benchmark size.

mod disc_limits;
mod disc_migrations;
mod discs;
mod fencing;
mod nodes;
mod operations;
mod orders;
mod pass;
#[cfg(test)]
mod scale;
mod snapshot;
mod upgrades;
mod vm_migrations;
mod vms;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bigv_spine::{OrderFailure, PowerAction, ResourceName, SpineEvent, SpineServer};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::api::error::error_chain;
use crate::clock::Clock;
use crate::model::{Db, DbError};
use crate::purge;
use crate::scheduler::{Facts, vm_of_resource};

pub use discs::{NBD_PORT, nbd_url, storage_address, storage_prefix};

use orders::{Action, Done, Order, Verb};
use pass::{Pass, Recall};
use snapshot::Snapshot;

/// The longest the reconciler sleeps without a pass.
const PERIOD: Duration = Duration::from_secs(1);

/// Orders on the wire at once, over all nodes.
const MAX_ORDERS_IN_FLIGHT: usize = 512;

/// The least time between two passes.
const MIN_GAP: Duration = Duration::from_millis(10);

/// Even with no events, the spine tables are copied afresh this often.
const FULL_COPY: Duration = Duration::from_secs(10);

/// A pass that changed the model is followed at once by another (it may
/// have unblocked more work), but not forever.
const MAX_BACK_TO_BACK: u32 = 8;

pub struct Reconciler {
    db: Arc<Db>,
    spine: Arc<SpineServer>,
    clock: Clock,
    wake: Arc<Notify>,
    events: mpsc::Receiver<SpineEvent>,
    shutdown: CancellationToken,
    recall: Arc<Mutex<Recall>>,
    running: JoinSet<Done>,
    running_keys: HashMap<tokio::task::Id, (String, ResourceName, Verb)>,
    permits: Arc<Semaphore>,
    /// The spine tables as of the last pass, and the nodes that have sent
    /// events since (see `Snapshot::refresh`).
    snapshot: Option<Snapshot>,
    changed: HashSet<String>,
    last_full_copy: Instant,
}

/// The node an event is about.
fn node_of(event: &SpineEvent) -> Option<&str> {
    match event {
        SpineEvent::Connected(info) => Some(&info.node_id),
        SpineEvent::Ready { node_id, .. }
        | SpineEvent::Created { node_id, .. }
        | SpineEvent::Updated { node_id, .. }
        | SpineEvent::Destroyed { node_id, .. }
        | SpineEvent::Disconnected { node_id, .. } => Some(node_id),
        SpineEvent::Rejected { .. } => None,
    }
}

impl Reconciler {
    pub fn new(
        db: Arc<Db>,
        spine: Arc<SpineServer>,
        clock: Clock,
        wake: Arc<Notify>,
        events: mpsc::Receiver<SpineEvent>,
        shutdown: CancellationToken,
    ) -> Self {
        Reconciler {
            db,
            spine,
            clock,
            wake,
            events,
            shutdown,
            recall: Arc::default(),
            running: JoinSet::new(),
            running_keys: HashMap::new(),
            permits: Arc::new(Semaphore::new(MAX_ORDERS_IN_FLIGHT)),
            snapshot: None,
            changed: HashSet::new(),
            last_full_copy: Instant::now(),
        }
    }

    /// Runs until `shutdown` is cancelled; orders still in flight are
    /// abandoned (the next brain recomputes them).
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(mut self) {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut events_open = true;
        let mut back_to_back = 0;
        let mut again = true;
        let mut last_end = Instant::now();
        let mut last_took = Duration::ZERO;
        loop {
            if !again {
                back_to_back = 0;
                tokio::select! {
                    _ = self.shutdown.cancelled() => break,
                    Some(joined) = self.running.join_next_with_id(), if !self.running.is_empty() => {
                        self.finished(joined);
                    }
                    event = self.events.recv(), if events_open => match event {
                        Some(event) => self.noted(&event),
                        None => events_open = false,
                    },
                    _ = self.wake.notified() => {}
                    _ = tick.tick() => {}
                }
            }
            // A pass holds the store's writer for its length: leave the API
            // at least twice that between passes.
            let not_before = last_end + (last_took * 2).max(MIN_GAP);
            if Instant::now() < not_before {
                tokio::select! {
                    _ = self.shutdown.cancelled() => break,
                    _ = tokio::time::sleep_until(not_before) => {}
                }
            }
            // Everything that queued up is covered by one pass.
            while let Ok(event) = self.events.try_recv() {
                self.noted(&event);
            }
            while let Some(joined) = self.running.try_join_next_with_id() {
                self.finished(joined);
            }
            if self.shutdown.is_cancelled() {
                break;
            }
            let began = Instant::now();
            let wrote = self.pass().await;
            last_end = Instant::now();
            last_took = last_end - began;
            back_to_back += 1;
            again = wrote && back_to_back < MAX_BACK_TO_BACK;
        }
        self.running.shutdown().await;
        tracing::info!("reconciler stopped");
    }

    fn noted(&mut self, event: &SpineEvent) {
        tracing::trace!(%event, "spine event");
        // A migration's final downtime comes in the source's last report,
        // which the next pass may no longer see (the VM goes right after).
        if let SpineEvent::Updated { resource, .. } | SpineEvent::Created { resource, .. } = event
            && let bigv_spine::ResourceValue::Vm(spec) = resource.value()
            && let Some(m) = &spec.migration
            && let Some(ms) = m.downtime_ms
            && let Some(vm) = vm_of_resource(resource.name())
        {
            self.recall
                .lock()
                .expect("reconciler memory poisoned")
                .migration_downtimes
                .insert((vm, m.seq), ms);
        }
        if let Some(node) = node_of(event)
            && !self.changed.contains(node)
        {
            self.changed.insert(node.to_owned());
        }
    }

    /// One pass; true if it changed the model.
    async fn pass(&mut self) -> bool {
        let began = std::time::Instant::now();
        let now = self.clock.now();
        let mut wrote = false;
        let due = purge::due(&self.db.read(), now);
        if !due.is_empty() {
            match self.db.write(move |tx| purge::purge(tx, &due, now)).await {
                Ok(purged) => wrote |= purged > 0,
                Err(e) => tracing::error!(error = %error_chain(&e), "purging deleted VMs failed"),
            }
        }
        if crate::backups::due(&self.db.read(), now) {
            match self
                .db
                .write(move |tx| crate::backups::run_schedules(tx, now))
                .await
            {
                Ok(n) => wrote |= n > 0,
                Err(e) => tracing::error!(error = %error_chain(&e), "scheduled backups failed"),
            }
        }
        let mut snap = self.snapshot.take().unwrap_or_default();
        let full = snap.nodes.is_empty() || self.last_full_copy.elapsed() >= FULL_COPY;
        snap.refresh(&self.spine, (!full).then_some(&self.changed));
        if full {
            self.last_full_copy = Instant::now();
        }
        self.changed.clear();
        let spine = self.spine.clone();
        let recall = self.recall.clone();
        let instant = Instant::now();
        let planned = self
            .db
            .write(move |tx| {
                let mut recall = recall.lock().expect("reconciler memory poisoned");
                let changes = {
                    let model = tx.model();
                    let mut gather = || Facts::gather(model, &spine);
                    let mut pass = Pass::new(model, &snap, &mut recall, now, instant, &mut gather);
                    pass.run();
                    pass.finish()
                };
                changes.apply(tx)?;
                let observed = crate::backups::observe(tx, &|id| snap.reported_backups(id))?;
                Ok::<_, DbError>((changes, snap, observed))
            })
            .await;
        let changes = match planned {
            Ok((changes, snap, observed)) => {
                self.snapshot = Some(snap);
                wrote |= observed > 0;
                changes
            }
            Err(e) => {
                // Nothing was sent; the next pass tries again.
                tracing::error!(error = %error_chain(&e), "reconcile pass could not persist its decisions");
                return wrote;
            }
        };
        let writes = changes.writes();
        let orders = changes.orders.len();
        self.dispatch(changes.orders);
        self.power(changes.power_orders);
        tracing::debug!(
            elapsed_us = began.elapsed().as_micros() as u64,
            writes,
            orders,
            in_flight = self.running.len(),
            "reconcile pass"
        );
        wrote || writes > 0
    }

    /// Sends reboot and power-off orders, each as its own task. Nothing
    /// waits for them: the node's disconnect (or not) is what the next
    /// passes look at, and the order's outcome is only logged.
    fn power(&self, orders: Vec<(String, PowerAction)>) {
        for (node, action) in orders {
            let Some(handle) = self.spine.node(&node) else {
                tracing::debug!(%node, "node left before its power order went out");
                continue;
            };
            let wake = self.wake.clone();
            tokio::spawn(async move {
                match handle.power(action).await {
                    Ok(()) => tracing::info!(%node, ?action, "node acknowledged its power order"),
                    Err(e) => {
                        tracing::warn!(%node, ?action, error = %e, "power order failed; a later pass may repeat it")
                    }
                }
                wake.notify_one();
            });
        }
    }

    /// Sends each order as its own task, at most `MAX_ORDERS_IN_FLIGHT`
    /// on the wire at once.
    fn dispatch(&mut self, orders: Vec<Order>) {
        if orders.is_empty() {
            return;
        }
        let mut recall = self.recall.lock().expect("reconciler memory poisoned");
        for order in orders {
            let Some(handle) = self.spine.node(&order.node) else {
                tracing::debug!(node = %order.node, resource = %order.name(), "node left before its order went out");
                continue;
            };
            let key = (order.node.clone(), order.name().clone(), order.verb());
            recall.ledger.sent(&order.node, order.name());
            let permits = self.permits.clone();
            let task = self.running.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let verb = order.verb();
                let name = order.name().clone();
                let Order {
                    node,
                    action,
                    generation,
                } = order;
                let result = match action {
                    Action::Create(resource) => handle.create(resource, generation).await,
                    Action::Update(resource) => handle.update(resource, generation).await,
                    Action::Remove(name) => handle.remove(name, generation).await,
                };
                Done {
                    node,
                    name,
                    verb,
                    result,
                }
            });
            self.running_keys.insert(task.id(), key);
        }
    }

    fn finished(&mut self, joined: Result<(tokio::task::Id, Done), JoinError>) {
        let done = match joined {
            Ok((id, done)) => {
                self.running_keys.remove(&id);
                done
            }
            Err(e) => {
                let Some((node, name, verb)) = self.running_keys.remove(&e.id()) else {
                    return;
                };
                tracing::error!(error = %e, %node, resource = %name, "order task failed");
                Done {
                    node,
                    name,
                    verb,
                    result: Err(OrderFailure::Disconnected),
                }
            }
        };
        let ok = done.succeeded();
        let mut recall = self.recall.lock().expect("reconciler memory poisoned");
        recall
            .ledger
            .finished(&done.node, &done.name, ok, Instant::now());
        // A head that acknowledged a start runs the VM from now on, even if
        // it stops again before any pass sees it: that stop is then still
        // told apart from "never started" (autoreboot decides, not a retry).
        if let (Verb::Create, Ok(()), Some(vm)) =
            (done.verb, &done.result, vm_of_resource(&done.name))
        {
            recall.seen_running.insert(vm, done.node.clone());
            recall.refused.remove(&vm);
        }
        if let Err(e) = &done.result {
            if ok {
                tracing::debug!(node = %done.node, resource = %done.name, verb = %done.verb, error = %e, "order was already satisfied");
                return;
            }
            tracing::warn!(node = %done.node, resource = %done.name, verb = %done.verb, error = %e, "spine order failed; a later pass retries");
            // A head that refuses to start a VM (no room after all, a bad
            // value) gets another chance only after placement is redone.
            if let (Verb::Create, OrderFailure::Refused(_), Some(vm)) =
                (done.verb, e, vm_of_resource(&done.name))
            {
                recall.refused.insert(vm, done.node.clone());
            }
        }
    }
}
