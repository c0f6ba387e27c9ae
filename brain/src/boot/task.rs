//! The boot task: the one owner of the boot services' slow work. It
//! persists what the policy reports (leases, machines seen enrolling, the
//! image version each script named), keeps the policy's [`BootView`]
//! current, rescans the node image folder, and makes the first node image
//! the cluster's target when none is set.

use std::sync::Arc;
use std::time::Duration;

use bigv_pxe::dhcp::Lease;
use bigv_pxe::{LeaseChange, MacAddr};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::images::NodeImageStore;
use super::policy::{BootEvent, BootParams, BootView, BrainPolicy};
use crate::clock::Clock;
use crate::model::{BootLease, Db, DbError, Machine, Model, Role, Tx};

/// How often the view is rebuilt from the model (registrations and
/// settings reach DHCP within this long).
const REFRESH: Duration = Duration::from_secs(1);
/// How often the image folder is rescanned.
const RESCAN_EVERY: u32 = 5;

/// The machine record for `mac`, or a new unregistered one.
fn machine_or_new(model: &Model, mac: MacAddr, role: Role, now: u64) -> Machine {
    let key = mac.to_string();
    if let Some(m) = model.machines.get(&key) {
        return m.clone();
    }
    let role = model.nodes.get(&key).map_or(role, |n| n.role);
    Machine {
        mac: key,
        role,
        boot_address: None,
        registered: false,
        lease: None,
        booted_version: None,
        first_seen: Some(now),
        last_boot_at: None,
        pools: vec![],
        discs: vec![],
    }
}

/// Records one event.
pub fn apply_event(tx: &mut Tx<'_>, e: BootEvent, now: u64) -> Result<(), DbError> {
    let model = tx.model();
    let role = model.settings.enrollment_role;
    let updated = match e {
        BootEvent::Lease(LeaseChange::Bound(l)) => {
            let mut m = machine_or_new(model, l.mac, role, now);
            m.lease = Some(BootLease {
                address: l.address.to_string(),
                expires: l.expires,
            });
            m
        }
        BootEvent::Lease(LeaseChange::Released(l)) => {
            let Some(m) = model.machines.get(&l.mac.to_string()) else {
                return Ok(());
            };
            Machine {
                lease: None,
                ..m.clone()
            }
        }
        BootEvent::Lease(LeaseChange::Declined { mac, address }) => {
            tracing::warn!(%mac, %address, "boot LAN address declined: something else uses it");
            return Ok(());
        }
        BootEvent::Enrolling { mac, role } => {
            let key = mac.to_string();
            if model.machines.contains_key(&key) || model.nodes.contains_key(&key) {
                return Ok(());
            }
            tracing::info!(%mac, role = super::policy::role_name(role), "new machine on the boot LAN: enrolling");
            machine_or_new(model, mac, role, now)
        }
        BootEvent::ScriptServed { mac, role, version } => {
            let mut m = machine_or_new(model, mac, role, now);
            m.booted_version = Some(version);
            m.last_boot_at = Some(now);
            m
        }
    };
    if model.machines.get(&updated.mac) != Some(&updated) {
        tx.put(updated)?;
    }
    Ok(())
}

/// The bound leases to hand the DHCP server at start-up.
pub fn stored_leases(model: &Model) -> Vec<Lease> {
    model
        .machines
        .values()
        .filter_map(|m| {
            let l = m.lease.as_ref()?;
            Some(Lease {
                mac: m.mac.parse().ok()?,
                address: l.address.parse().ok()?,
                expires: l.expires,
            })
        })
        .collect()
}

/// The view of the current model and images.
pub fn current_view(db: &Db, images: &NodeImageStore, params: &BootParams) -> BootView {
    let model = db.read();
    let image = model
        .settings
        .node_image_version
        .as_deref()
        .and_then(|v| images.get(v));
    BootView::build(&model, image, params.clone())
}

pub struct BootTask {
    pub db: Arc<Db>,
    pub images: Arc<NodeImageStore>,
    pub clock: Clock,
    pub shutdown: CancellationToken,
    /// The running services' policy, its events and boot parameters.
    pub services: Option<(Arc<BrainPolicy>, UnboundedReceiver<BootEvent>, BootParams)>,
}

impl BootTask {
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn rescan(&self) {
        let images = self.images.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || images.rescan()).await {
            tracing::error!(error = %e, "node image scan failed");
        }
        let newest = self.images.list().pop();
        let unset = self.db.read().settings.node_image_version.is_none();
        if let (true, Some(image)) = (unset, newest) {
            let version = image.version.clone();
            let r = self
                .db
                .write(move |tx| {
                    let mut s = tx.model().settings.clone();
                    if s.node_image_version.is_none() {
                        s.node_image_version = Some(version.clone());
                        tx.put_settings(s)?;
                        tracing::info!(%version, "first node image: now the cluster's target");
                    }
                    Ok::<_, DbError>(())
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %bigv_pxe::ErrorChain(&e), "setting the target node image");
            }
        }
    }

    async fn run(mut self) {
        let mut services = self.services.take();
        let mut tick = tokio::time::interval(REFRESH);
        let mut n: u32 = 0;
        loop {
            let event = tokio::select! {
                _ = tick.tick() => None,
                e = async {
                    match services.as_mut() {
                        Some((_, rx, _)) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => match e {
                    Some(e) => Some(e),
                    None => return,
                },
                () = self.shutdown.cancelled() => return,
            };
            match event {
                None => {
                    if n.is_multiple_of(RESCAN_EVERY) {
                        self.rescan().await;
                    }
                    n = n.wrapping_add(1);
                }
                Some(e) => {
                    let now = self.clock.now();
                    let r = self.db.write(move |tx| apply_event(tx, e, now)).await;
                    if let Err(e) = r {
                        tracing::error!(error = %bigv_pxe::ErrorChain(&e), "recording a boot event");
                    }
                }
            }
            if let Some((policy, _, params)) = &services
                && policy.set_view(current_view(&self.db, &self.images, params))
            {
                tracing::debug!("boot view updated");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn record(db: &Db, e: BootEvent, now: u64) {
        db.mutate(|tx| apply_event(tx, e, now)).unwrap();
    }

    #[test]
    fn events_are_persisted_and_leases_come_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path()).unwrap();
            let a = mac("52:54:00:00:00:01");
            record(
                &db,
                BootEvent::Enrolling {
                    mac: a,
                    role: Role::Tail,
                },
                10,
            );
            let lease = Lease {
                mac: a,
                address: "10.0.0.100".parse().unwrap(),
                expires: 5000,
            };
            record(&db, BootEvent::Lease(LeaseChange::Bound(lease)), 11);
            record(
                &db,
                BootEvent::ScriptServed {
                    mac: a,
                    role: Role::Tail,
                    version: "v1".into(),
                },
                12,
            );
            // A release on one machine, a decline, and a second enrolment
            // of the same machine change nothing else.
            let b = mac("52:54:00:00:00:02");
            let other = Lease {
                mac: b,
                address: "10.0.0.101".parse().unwrap(),
                expires: 6000,
            };
            record(&db, BootEvent::Lease(LeaseChange::Bound(other)), 13);
            record(&db, BootEvent::Lease(LeaseChange::Released(other)), 14);
            record(
                &db,
                BootEvent::Lease(LeaseChange::Declined {
                    mac: b,
                    address: "10.0.0.102".parse().unwrap(),
                }),
                15,
            );
            record(
                &db,
                BootEvent::Enrolling {
                    mac: a,
                    role: Role::Head,
                },
                16,
            );
        }
        let db = Db::open(dir.path()).unwrap();
        let model = db.read();
        let m = &model.machines["52:54:00:00:00:01"];
        assert_eq!(m.role, Role::Tail);
        assert!(!m.registered);
        assert_eq!(m.first_seen, Some(10));
        assert_eq!(m.booted_version.as_deref(), Some("v1"));
        assert_eq!(m.last_boot_at, Some(12));
        assert!(model.machines["52:54:00:00:00:02"].lease.is_none());
        assert_eq!(
            stored_leases(&model),
            [Lease {
                mac: mac("52:54:00:00:00:01"),
                address: "10.0.0.100".parse().unwrap(),
                expires: 5000,
            }]
        );
    }
}
