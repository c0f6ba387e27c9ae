//! Simulated tail → tail disc migration (and the endpoint registry live
//! VM migration shares), with the real tail's protocol
//! (`incoming` on the destination's create, `migrate_to` on the source's
//! update, `migration` progress, handover): the destination registers an
//! endpoint, and the source's "mirror" hands the disc to whichever
//! simulated tail in this process registered it. No data moves.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::resource::{
    DiscSpec, MigrationOrder, MigrationProgress, MigrationState, Resource, ResourceName,
    ResourceValue,
};

use super::SimHandler;

/// How long a simulated copy takes by default, ms (progress halfway).
pub(super) const DEFAULT_COPY_MS: u64 = 300;

/// Mirror destinations by endpoint: the tail listening and its disc.
type Destinations = BTreeMap<String, (Weak<SimHandler>, ResourceName)>;

/// Every destination registered by any simulated tail in the process.
fn destinations() -> &'static Mutex<Destinations> {
    static DESTINATIONS: std::sync::OnceLock<Mutex<Destinations>> = std::sync::OnceLock::new();
    DESTINATIONS.get_or_init(Mutex::default)
}

/// A fresh endpoint for a destination disc, registered to `handler`.
pub(super) fn listen(handler: &Arc<SimHandler>, name: &ResourceName) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let endpoint = format!(
        "[fd00:ffff::{:x}]:10810",
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    destinations()
        .lock()
        .expect("mirror registry poisoned")
        .insert(endpoint.clone(), (Arc::downgrade(handler), name.clone()));
    endpoint
}

/// Who listens at `endpoint`, and for which resource.
pub(super) fn destination(endpoint: &str) -> Option<(Arc<SimHandler>, ResourceName)> {
    destinations()
        .lock()
        .expect("mirror registry poisoned")
        .get(endpoint)
        .and_then(|(handler, name)| Some((handler.upgrade()?, name.clone())))
}

pub(super) fn forget(endpoint: &str) {
    destinations()
        .lock()
        .expect("mirror registry poisoned")
        .remove(endpoint);
}

/// Progress as the source reports it when a mirror starts.
pub(super) fn started(order: &MigrationOrder, size_mib: u64) -> MigrationProgress {
    MigrationProgress {
        to: order.to.clone(),
        bytes_done: 0,
        bytes_total: size_mib << 20,
        bytes_per_second: 0,
        eta_seconds: None,
        seq: order.seq,
        state: MigrationState::Copying,
        error: None,
    }
}

/// The source side: copy (pretend), then hand over to the destination or
/// report why not. Runs as its own task; aborting it is cancelling.
pub(super) async fn run(source: Arc<SimHandler>, name: ResourceName, order: MigrationOrder) {
    let half = Duration::from_millis(source.mirror_ms.load(Ordering::Relaxed) / 2);
    tokio::time::sleep(half).await;
    let fail = source.fail_mirrors.load(Ordering::Relaxed);
    let halfway = source.set_migration(&name, |m| {
        m.bytes_done = m.bytes_total / 2;
        m.bytes_per_second = m.bytes_total;
    });
    if let Some(spec) = halfway {
        source.announce(&name, spec).await;
    }
    tokio::time::sleep(half).await;
    let destination = destination(&order.endpoint);
    let (destination, dest_name) = match destination {
        Some(found) if !fail && found.1 == name => found,
        _ => {
            let why = if fail {
                "simulated failure".to_owned()
            } else {
                format!("nothing listens at {}", order.endpoint)
            };
            let failed = source.set_migration(&name, |m| {
                m.state = MigrationState::Failed;
                m.error = Some(why.clone());
            });
            if let Some(spec) = failed {
                source.announce(&name, spec).await;
            }
            return;
        }
    };
    // Handover: the destination serves, the source lets go.
    let Some((allocated, backups)) = source.state().discs.get(&name).map(|d| {
        let taken = d.backups.as_ref().map(|b| b.taken.clone());
        (d.allocated, taken.unwrap_or_default())
    }) else {
        return;
    };
    let serving = {
        let mut state = destination.state();
        state.discs.get_mut(&dest_name).map(|d| {
            if let Some(endpoint) = d.incoming.take().and_then(|i| i.endpoint) {
                forget(&endpoint);
            }
            d.allocated = allocated;
            // Backups sent along land in the pool the destination keeps
            // backups in.
            if order.backups && !backups.is_empty() {
                let pool = (d.backups.as_ref().and_then(|b| b.pool.clone()))
                    .unwrap_or_else(|| d.storage_pool.clone());
                let held = d.backups.get_or_insert_with(Default::default);
                held.taken = backups
                    .into_iter()
                    .map(|t| crate::backup::BackupFacts {
                        pool: pool.clone(),
                        ..t
                    })
                    .collect();
            }
            d.clone()
        })
    };
    let Some(serving) = serving else { return };
    // As real tails do: the source lets go and says so first; the
    // destination's report that it serves comes a moment later.
    {
        let mut state = source.state();
        state.discs.remove(&name);
        state.mirrors.remove(&name);
    }
    source.notifier().destroyed(name).await;
    source.report(None).await;
    tokio::time::sleep(HANDOVER_GAP).await;
    destination.announce(&dest_name, serving).await;
    destination.report(None).await;
}

/// Between the source's report of a handed-over disc gone and the
/// destination's of it served.
const HANDOVER_GAP: std::time::Duration = std::time::Duration::from_millis(300);

impl SimHandler {
    /// Changes the source's migration progress; the disc as it is now.
    fn set_migration(
        &self,
        name: &ResourceName,
        change: impl FnOnce(&mut MigrationProgress),
    ) -> Option<DiscSpec> {
        let mut state = self.state();
        let disc = state.discs.get_mut(name)?;
        change(disc.migration.as_mut()?);
        Some(disc.clone())
    }

    async fn announce(&self, name: &ResourceName, spec: DiscSpec) {
        if let Ok(resource) = Resource::new(name.clone(), ResourceValue::Disc(spec)) {
            self.notifier().updated(resource).await;
        }
    }
}
