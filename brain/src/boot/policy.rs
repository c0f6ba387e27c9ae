//! The brain's answer to the boot services ([`bigv_pxe::BootPolicy`]).
//!
//! The services call the policy on their own tasks and it must never wait
//! on slow work, so it answers from a [`BootView`]: a small immutable
//! table built from the model by the boot task ([`super::task`]) and
//! swapped in whole. The only lock on the path guards a pointer clone.
//! Anything to persist (a lease, a machine seen enrolling, the version a
//! script named) goes to the boot task over an unbounded channel.
//!
//! Decisions, by MAC:
//! - a node record (its `node_id` is the boot MAC) or a machine an operator
//!   registered → `Known`, with the registered fixed address if any;
//! - anything else → `Enrolling` if the cluster's `enrollment` is `open`,
//!   else `Ignore` (silence: another DHCP server may own it);
//! - its role: the node record's, else the machine record's, else the
//!   cluster's `enrollment_role`; the image: the cluster's
//!   `node_image_version`, which must be stored.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bigv_pxe::{Admission, BootPolicy, ClientInfo, LeaseChange, MacAddr, NodeBoot};
use tokio::sync::mpsc::UnboundedSender;

use super::images::{HEAD_INITRD, NodeImage};
use crate::model::{Model, Role};

/// What the boot task must persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootEvent {
    Lease(LeaseChange),
    /// An unknown machine was let in to enroll, booting as `role`.
    Enrolling {
        mac: MacAddr,
        role: Role,
    },
    /// A script naming `version` was served to `mac` as `role`.
    ScriptServed {
        mac: MacAddr,
        role: Role,
        version: String,
    },
}

/// One machine's entry in the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub role: Role,
    /// Known (a node or a registered machine) rather than enrolling.
    pub known: bool,
    pub address: Option<Ipv4Addr>,
    /// Its storage (`storage::kernel_args`), for its command line.
    pub storage_args: Vec<String>,
}

/// Where nodes find the brain and what they pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    pub spine: SocketAddr,
    pub cert_sha256: [u8; 32],
    pub extra_args: Vec<String>,
}

/// Everything the policy answers from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootView {
    pub machines: HashMap<MacAddr, Entry>,
    pub enrollment_open: bool,
    pub enrollment_role: Role,
    /// The target image, if it is stored.
    pub image: Option<NodeImage>,
    pub params: BootParams,
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Head => "head",
        Role::Tail => "tail",
    }
}

impl BootView {
    /// The view of `model`, with `image` the stored target image (if any).
    pub fn build(model: &Model, image: Option<NodeImage>, params: BootParams) -> BootView {
        let mut machines = HashMap::new();
        for m in model.machines.values() {
            let Ok(mac) = m.mac.parse::<MacAddr>() else {
                continue;
            };
            machines.insert(
                mac,
                Entry {
                    role: m.role,
                    known: m.registered,
                    address: m.boot_address.as_deref().and_then(|a| a.parse().ok()),
                    storage_args: super::storage::kernel_args(m),
                },
            );
        }
        for n in model.nodes.values() {
            let Ok(mac) = n.node_id.parse::<MacAddr>() else {
                continue;
            };
            let e = machines.entry(mac).or_insert(Entry {
                role: n.role,
                known: true,
                address: None,
                storage_args: vec![],
            });
            e.role = n.role;
            e.known = true;
        }
        BootView {
            machines,
            enrollment_open: model.settings.enrollment == "open",
            enrollment_role: model.settings.enrollment_role,
            image,
            params,
        }
    }

    pub fn admit(&self, mac: MacAddr) -> Admission {
        match self.machines.get(&mac) {
            Some(e) if e.known => Admission::Known { address: e.address },
            _ if self.enrollment_open => Admission::Enrolling,
            _ => Admission::Ignore,
        }
    }

    /// The role `mac` boots as, if it may boot at all.
    pub fn role(&self, mac: MacAddr) -> Option<Role> {
        match self.machines.get(&mac) {
            Some(e) if e.known || self.enrollment_open => Some(e.role),
            Some(_) | None if self.enrollment_open => Some(self.enrollment_role),
            _ => None,
        }
    }

    pub fn node_boot(&self, mac: MacAddr) -> Option<NodeBoot> {
        let role = self.role(mac)?;
        let image = self.image.as_ref()?;
        let mut initrds = vec!["initrd".to_string()];
        if role == Role::Head && image.files.contains_key(HEAD_INITRD) {
            initrds.push(HEAD_INITRD.to_string());
        }
        let mut extra_args = self.params.extra_args.clone();
        if role == Role::Tail
            && let Some(e) = self.machines.get(&mac)
        {
            extra_args.extend(e.storage_args.iter().cloned());
        }
        Some(NodeBoot {
            role: role_name(role).into(),
            image_version: image.version.clone(),
            kernel: "vmlinuz".into(),
            initrds,
            spine: self.params.spine,
            cert_sha256: self.params.cert_sha256,
            extra_args,
        })
    }
}

/// The [`BootPolicy`] the boot services get.
pub struct BrainPolicy {
    view: Mutex<Arc<BootView>>,
    events: UnboundedSender<BootEvent>,
}

impl BrainPolicy {
    pub fn new(view: BootView, events: UnboundedSender<BootEvent>) -> BrainPolicy {
        BrainPolicy {
            view: Mutex::new(Arc::new(view)),
            events,
        }
    }

    pub fn view(&self) -> Arc<BootView> {
        self.view.lock().expect("boot view lock").clone()
    }

    /// Swaps in a new view; returns whether it differed.
    pub fn set_view(&self, view: BootView) -> bool {
        let mut cur = self.view.lock().expect("boot view lock");
        if **cur == view {
            return false;
        }
        *cur = Arc::new(view);
        true
    }

    fn send(&self, e: BootEvent) {
        // The task only stops at shutdown; losing an event then is harmless.
        let _ = self.events.send(e);
    }
}

impl BootPolicy for BrainPolicy {
    fn admit(&self, client: &ClientInfo) -> Admission {
        let view = self.view();
        let a = view.admit(client.mac);
        if a == Admission::Enrolling && !view.machines.contains_key(&client.mac) {
            self.send(BootEvent::Enrolling {
                mac: client.mac,
                role: view.enrollment_role,
            });
        }
        a
    }

    fn node_boot(&self, mac: MacAddr) -> Option<NodeBoot> {
        let view = self.view();
        let Some(boot) = view.node_boot(mac) else {
            if view.role(mac).is_some() && view.image.is_none() {
                tracing::warn!(%mac, "no node image to boot: add one with `bigv-brain image add DIR`");
            }
            return None;
        };
        let role = view.role(mac)?;
        self.send(BootEvent::ScriptServed {
            mac,
            role,
            version: boot.image_version.clone(),
        });
        Some(boot)
    }

    fn lease_changed(&self, change: &LeaseChange) {
        self.send(BootEvent::Lease(change.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::images::ImageFile;
    use crate::model::{Admission as NodeAdmission, Machine, Node};
    use std::collections::BTreeMap;

    fn image() -> NodeImage {
        let f = ImageFile {
            sha256: "00".repeat(32),
            size: 1,
        };
        NodeImage {
            version: "v2".into(),
            kernel_version: None,
            files: BTreeMap::from([
                ("vmlinuz".into(), f.clone()),
                ("initrd".into(), f.clone()),
                ("initrd-head".into(), f),
            ]),
            added_at: 0,
        }
    }

    fn params() -> BootParams {
        BootParams {
            spine: "10.0.0.1:4430".parse().unwrap(),
            cert_sha256: [7; 32],
            extra_args: vec!["quiet".into()],
        }
    }

    const NODE: &str = "52:54:00:00:00:01";
    const REGISTERED: &str = "52:54:00:00:00:02";
    const SEEN: &str = "52:54:00:00:00:03";
    const STRANGER: &str = "52:54:00:00:00:04";

    fn model(enrollment: &str) -> Model {
        let mut m = Model::default();
        m.settings.enrollment = enrollment.into();
        m.settings.enrollment_role = Role::Head;
        m.nodes.insert(
            NODE.into(),
            Node {
                node_id: NODE.into(),
                role: Role::Tail,
                label: "tail1".into(),
                admission: NodeAdmission::Pending,
                zone: None,
                usage_strategy: None,
                image_version: Some("v1".into()),
                addresses: vec![],
                first_seen: 0,
            },
        );
        let machine = |mac: &str, role, registered, address: Option<&str>| Machine {
            mac: mac.into(),
            role,
            boot_address: address.map(str::to_string),
            registered,
            lease: None,
            booted_version: None,
            first_seen: None,
            last_boot_at: None,
            pools: vec![],
            discs: vec![],
        };
        m.machines.insert(
            REGISTERED.into(),
            machine(REGISTERED, Role::Tail, true, Some("10.0.0.12")),
        );
        m.machines
            .insert(SEEN.into(), machine(SEEN, Role::Head, false, None));
        m
    }

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    #[test]
    fn known_enrolling_and_ignored() {
        let open = BootView::build(&model("open"), Some(image()), params());
        assert_eq!(open.admit(mac(NODE)), Admission::Known { address: None });
        assert_eq!(
            open.admit(mac(REGISTERED)),
            Admission::Known {
                address: Some("10.0.0.12".parse().unwrap())
            }
        );
        assert_eq!(open.admit(mac(SEEN)), Admission::Enrolling);
        assert_eq!(open.admit(mac(STRANGER)), Admission::Enrolling);

        let closed = BootView::build(&model("closed"), Some(image()), params());
        assert_eq!(closed.admit(mac(NODE)), Admission::Known { address: None });
        assert!(matches!(
            closed.admit(mac(REGISTERED)),
            Admission::Known { .. }
        ));
        assert_eq!(closed.admit(mac(SEEN)), Admission::Ignore);
        assert_eq!(closed.admit(mac(STRANGER)), Admission::Ignore);
        assert_eq!(closed.node_boot(mac(STRANGER)), None);
        assert_eq!(closed.node_boot(mac(SEEN)), None);
    }

    #[test]
    fn roles_come_from_the_node_then_the_machine_then_the_setting() {
        let v = BootView::build(&model("open"), Some(image()), params());
        let b = v.node_boot(mac(NODE)).unwrap();
        assert_eq!(b.role, "tail");
        assert_eq!(b.initrds, ["initrd"], "tails get no head initrd");
        assert_eq!(b.image_version, "v2");
        assert_eq!(b.spine, params().spine);
        assert_eq!(b.cert_sha256, [7; 32]);
        assert_eq!(b.extra_args, ["quiet"]);
        assert_eq!(v.node_boot(mac(REGISTERED)).unwrap().role, "tail");
        let stranger = v.node_boot(mac(STRANGER)).unwrap();
        assert_eq!(stranger.role, "head");
        assert_eq!(stranger.initrds, ["initrd", "initrd-head"]);
    }

    #[test]
    fn no_image_no_script() {
        let v = BootView::build(&model("open"), None, params());
        assert_eq!(v.node_boot(mac(NODE)), None);
        // DHCP still answers: the node retries its script until there is one.
        assert!(matches!(v.admit(mac(NODE)), Admission::Known { .. }));
    }

    #[test]
    fn the_policy_reports_enrolling_machines_and_served_scripts() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let p = BrainPolicy::new(BootView::build(&model("open"), Some(image()), params()), tx);
        let client = |m: &str| ClientInfo {
            mac: mac(m),
            arch: Some(0),
            ipxe: true,
            vendor_class: None,
        };
        assert_eq!(p.admit(&client(STRANGER)), Admission::Enrolling);
        assert_eq!(
            rx.try_recv().unwrap(),
            BootEvent::Enrolling {
                mac: mac(STRANGER),
                role: Role::Head
            }
        );
        // Already recorded: nothing more to persist.
        p.admit(&client(SEEN));
        p.admit(&client(NODE));
        assert!(rx.try_recv().is_err());
        p.node_boot(mac(NODE)).unwrap();
        assert_eq!(
            rx.try_recv().unwrap(),
            BootEvent::ScriptServed {
                mac: mac(NODE),
                role: Role::Tail,
                version: "v2".into()
            }
        );
    }
}
