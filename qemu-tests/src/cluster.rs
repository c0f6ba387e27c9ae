//! A whole cluster, as scenarios and the demo bring it up: the node image,
//! a real `bigv-brain` in its own namespace with that image as the
//! cluster's target, and blank machines that PXE-boot from it, join the
//! spine, are accepted and become ready.
//!
//! The steps are separate ([`Cluster::power_on`], [`Cluster::wait_joined`],
//! [`Cluster::accept_all`], [`Cluster::wait_ready`]) so a scenario can check
//! what it cares about between them; [`Cluster::bring_up`] runs them all.
//! Dropping a cluster powers the machines off, stops the brain and deletes
//! the namespace, in that order.
//!
//! A node racked with [`NodeSpec::no_reboot`] powers off when it reboots;
//! [`Cluster::power_on_again`] boots it again by PXE or from files the
//! test picks ([`direct_boot`]: any image's kernel and initrds with the
//! command line the brain's script gives the machine).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::brain::{self, Admin, BrainProcess};
use crate::logs::Logs;
use crate::netns::{BRAIN_ADDRESS, Netns};
use crate::timings::Timings;
use crate::vm::{DirectBoot, Vm, VmSpec};

/// The milestones of every node's row in [`Cluster::timings`].
pub const COLUMNS: [&str; 4] = ["dhcp", "spine join", "accepted", "ready"];

/// One boot under TCG on a loaded CI machine (kernel, both initrds over
/// HTTP, modules, DHCP, the agent's TLS join), with several machines
/// booting at once on two cores.
pub const BOOT_LIMIT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Head,
    Tail,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Head => "head",
            Role::Tail => "tail",
        }
    }

    /// The admin list the node appears in.
    pub fn list(self) -> &'static str {
        match self {
            Role::Head => "/admin/heads",
            Role::Tail => "/admin/tails",
        }
    }
}

/// A machine to rack: its role, boot NIC MAC and memory; for a tail, a
/// blank data disc and the storage the brain hands it at boot.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub role: Role,
    pub mac: String,
    pub memory_mib: u32,
    /// A sparse raw file of this size, the machine's disc `vda`.
    pub data_disc_mib: Option<u64>,
    /// Registered with the machine: `NAME:GRADE:/DIR`, `DEV:/DIR[:format]`.
    pub pools: Vec<String>,
    pub discs: Vec<String>,
    /// qemu `-no-reboot`: when the node reboots its qemu exits, and the
    /// test powers it on again ([`Cluster::power_on_again`]). Off (every
    /// constructor's default) it reboots by itself and network-boots.
    pub no_reboot: bool,
}

impl NodeSpec {
    /// Head `n` (from 1): a CPU with SVM so KVM works inside it, and 3 GiB:
    /// the head keeps 2 GiB for itself (`reserve_memory_mib`: the image
    /// lives in RAM) and offers the rest to VMs.
    pub fn head(n: u8) -> NodeSpec {
        NodeSpec {
            role: Role::Head,
            mac: format!("52:54:00:8e:01:{n:02x}"),
            memory_mib: 3072,
            data_disc_mib: None,
            pools: vec![],
            discs: vec![],
            no_reboot: false,
        }
    }

    /// Tail `n` (from 1): no disc and no pools, so it serves the RAM
    /// scratch pool.
    pub fn tail(n: u8) -> NodeSpec {
        NodeSpec {
            role: Role::Tail,
            mac: format!("52:54:00:8e:02:{n:02x}"),
            memory_mib: 768,
            data_disc_mib: None,
            pools: vec![],
            discs: vec![],
            no_reboot: false,
        }
    }

    /// Tail `n` with a blank `mib` data disc that init formats (ext4) and
    /// mounts on /srv/sata1, served as pool `sata1` of grade `sata`.
    pub fn tail_with_sata_disc(n: u8, mib: u64) -> NodeSpec {
        NodeSpec {
            data_disc_mib: Some(mib),
            pools: vec!["sata1:sata:/srv/sata1".into()],
            discs: vec!["vda:/srv/sata1:format".into()],
            ..NodeSpec::tail(n)
        }
    }

    /// The same machine, powering off instead of rebooting.
    pub fn no_reboot(self) -> NodeSpec {
        NodeSpec {
            no_reboot: true,
            ..self
        }
    }

    /// `-cpu` for its machine.
    pub fn cpu(&self) -> Option<&'static str> {
        (self.role == Role::Head).then_some("qemu64,+svm,+npt")
    }

    /// Its NICs after the boot NIC, as (tap, MAC) in machine slot `slot`
    /// (0-based): every node's `eth1` is on the storage LAN, a head's
    /// `eth2` on the public LAN. Their MACs are the boot NIC's with the
    /// fourth byte plus 1 and plus 2.
    pub fn more_nics(&self, ns: &Netns, slot: usize) -> Vec<(String, String)> {
        let mut nics = vec![(ns.storage_taps[slot].clone(), self.other_mac(1))];
        if self.role == Role::Head {
            nics.push((ns.public_taps[slot].clone(), self.other_mac(2)));
        }
        nics
    }

    /// The MAC of its NIC on the storage LAN.
    pub fn storage_mac(&self) -> String {
        self.other_mac(1)
    }

    /// The MAC of its NIC on the public LAN (heads).
    pub fn public_mac(&self) -> String {
        self.other_mac(2)
    }

    fn other_mac(&self, plus: u8) -> String {
        let mut bytes: Vec<u8> = self
            .mac
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).expect("a MAC byte"))
            .collect();
        bytes[3] = bytes[3].wrapping_add(plus);
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// The nodes' NIC on the storage LAN (`--boot-storage-interface`).
pub const STORAGE_NIC: &str = "eth1";
/// Heads' NIC on the public LAN, their VLAN trunk (`bigv.trunk=`).
pub const PUBLIC_NIC: &str = "eth2";

pub struct Node {
    pub spec: NodeSpec,
    pub vm: Vm,
    tap: String,
    disc: Option<PathBuf>,
}

impl Node {
    /// Its row in the timings table: `head 52:54:…`.
    pub fn row(&self) -> String {
        format!("{} {}", self.spec.role.name(), self.spec.mac)
    }
}

/// Field order is drop order: machines, then the brain, then the
/// namespace they all live in.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub brain: BrainProcess,
    pub ns: Netns,
    /// The node image's folder and version (the cluster's target).
    pub image: PathBuf,
    pub version: String,
    pub timings: Timings,
}

impl Cluster {
    /// Builds (or reuses) the node image, stores it in the brain's data
    /// directory `data` and starts the brain in a new namespace `tag` with
    /// `taps` taps for machines. Does not enter the namespace.
    pub fn start(tag: &str, taps: usize, data: &Path, logs: &mut Logs) -> Cluster {
        Self::start_with(tag, taps, data, logs, &[])
    }

    /// [`Cluster::start`] with more arguments for the brain (e.g.
    /// `--boot-kernel-arg …` for every node's command line).
    pub fn start_with(
        tag: &str,
        taps: usize,
        data: &Path,
        logs: &mut Logs,
        brain_args: &[&str],
    ) -> Cluster {
        let (image, version) = crate::image::build_cached();
        let bin = brain::binary();
        brain::add_image(&bin, data, &image);
        let ns = Netns::create(tag, taps);
        // Under TCG on a loaded host the kernel's IO-APIC timer check can
        // fail and panic a node at boot ("IO-APIC + timer doesn't work!",
        // seen on a tail while other agents loaded both cores): skip it.
        let args: Vec<&str> = [
            "--boot-kernel-arg",
            "no_timer_check",
            // Disc traffic on the storage LAN, not the boot LAN.
            "--boot-storage-interface",
            STORAGE_NIC,
        ]
        .into_iter()
        .chain(brain_args.iter().copied())
        .collect();
        let brain = BrainProcess::start_with(&ns, &bin, data, &logs.file("brain.log"), &args);
        eprintln!("brain pid {} in namespace {}", brain.pid(), ns.name);
        Cluster {
            nodes: vec![],
            brain,
            ns,
            image,
            version,
            timings: Timings::new(&COLUMNS),
        }
    }

    /// Waits (bounded) until the brain has made our image the cluster's
    /// target: it picks the first image it finds.
    pub async fn wait_for_target_image(&mut self, admin: &Admin) {
        let version = self.version.clone();
        until(
            "the image to be the cluster's target",
            60,
            &mut self.brain,
            async || {
                (admin.get("/admin/settings").await["node_image_version"] == version.as_str())
                    .then_some(())
            },
        )
        .await;
    }

    /// Powers on a blank machine in the next free slot (its taps on the
    /// three LANs).
    pub fn power_on(&mut self, spec: NodeSpec, logs: &mut Logs) -> &Node {
        let slot = self.nodes.len();
        let tap = self
            .ns
            .taps
            .get(slot)
            .unwrap_or_else(|| panic!("no tap left for {spec:?}"))
            .clone();
        let more_nics = spec.more_nics(&self.ns, slot);
        let name = format!("{}-{}", spec.role.name(), spec.mac.replace(':', ""));
        let disc = spec.data_disc_mib.map(|mib| {
            let path = logs.file(&format!("{name}-disc.raw"));
            let f = std::fs::File::create(&path).expect("the data disc file");
            f.set_len(mib << 20).expect("sizing the data disc");
            path
        });
        let vm = Vm::power_on(
            &self.ns,
            &VmSpec {
                mac: &spec.mac,
                tap: &tap,
                memory_mib: spec.memory_mib,
                cpu: spec.cpu(),
                direct: None,
                data_disc: disc.as_deref(),
                more_nics: &more_nics,
                no_reboot: spec.no_reboot,
            },
            &logs.file(&format!("{name}-serial.log")),
            &logs.file(&format!("{name}-qemu.log")),
        );
        eprintln!("{name} powered on: qemu pid {}", vm.pid());
        let node = Node {
            spec,
            vm,
            tap,
            disc,
        };
        self.timings.row(&node.row(), node.vm.powered_on);
        self.nodes.push(node);
        self.nodes.last().unwrap()
    }

    /// Powers node `i` on again after its qemu exited (a reboot with
    /// [`NodeSpec::no_reboot`]): PXE as it first booted, or `direct`. Its
    /// console goes on in the same file; its timings row is left as is.
    pub fn power_on_again(&mut self, i: usize, direct: Option<&DirectBoot>) {
        let n = &mut self.nodes[i];
        let more_nics = n.spec.more_nics(&self.ns, i);
        let spec = VmSpec {
            mac: &n.spec.mac,
            tap: &n.tap,
            memory_mib: n.spec.memory_mib,
            cpu: n.spec.cpu(),
            direct,
            data_disc: n.disc.as_deref(),
            no_reboot: n.spec.no_reboot,
            more_nics: &more_nics,
        };
        n.vm.power_on_again(&self.ns, &spec);
        eprintln!(
            "{} powered on again ({}): qemu pid {}",
            n.row(),
            if direct.is_some() {
                "direct boot"
            } else {
                "PXE"
            },
            n.vm.pid()
        );
    }

    /// Waits until every machine is online on the spine; returns each
    /// one's entry in its admin list, in power-on order. Marks `dhcp`
    /// (iPXE's lease on its console) and `spine join`.
    pub async fn wait_joined(&mut self, admin: &Admin) -> Vec<Value> {
        let deadline = Instant::now() + BOOT_LIMIT;
        let mut joined: Vec<Option<Value>> = vec![None; self.nodes.len()];
        while joined.iter().any(Option::is_none) {
            for (i, n) in self.nodes.iter_mut().enumerate() {
                if n.vm.saw("net0: 10.0.0.") {
                    self.timings.mark(&n.row(), "dhcp");
                }
                assert!(!n.vm.exited(), "{}: qemu exited", n.row());
                if joined[i].is_none()
                    && let Some(v) = admin.node(n.spec.role.list(), &n.spec.mac).await
                    && v["online"] == true
                {
                    self.timings.mark(&n.row(), "spine join");
                    joined[i] = Some(v);
                }
            }
            assert!(!self.brain.exited(), "the brain exited");
            if Instant::now() > deadline {
                let missing: Vec<_> = self
                    .nodes
                    .iter()
                    .zip(&joined)
                    .filter(|(_, j)| j.is_none())
                    .map(|(n, _)| n.row())
                    .collect();
                panic!(
                    "{missing:?} did not join the spine within {BOOT_LIMIT:?}\n{}",
                    self.timings.render()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        joined.into_iter().map(Option::unwrap).collect()
    }

    /// Accepts every machine, as an operator does (`bigv admin accept`).
    pub async fn accept_all(&mut self, admin: &Admin) {
        for n in &self.nodes {
            admin
                .post(
                    &format!("{}/{}/accept", n.spec.role.list(), n.spec.mac),
                    json!({}),
                )
                .await;
            self.timings.mark(&n.row(), "accepted");
        }
    }

    /// Waits until every machine is accepted and online; returns their
    /// admin entries in power-on order.
    pub async fn wait_ready(&mut self, admin: &Admin) -> Vec<Value> {
        let mut ready = vec![];
        for i in 0..self.nodes.len() {
            let (list, mac, row) = {
                let n = &self.nodes[i];
                (n.spec.role.list(), n.spec.mac.clone(), n.row())
            };
            let v = until(
                &format!("{row} to be ready"),
                60,
                &mut self.brain,
                async || {
                    admin
                        .node(list, &mac)
                        .await
                        .filter(|v| v["admission"] == "accepted" && v["online"] == true)
                },
            )
            .await;
            self.timings.mark(&row, "ready");
            ready.push(v);
        }
        ready
    }

    /// The whole rack-and-power-on path with roles given by MAC
    /// (`POST /admin/machines`) and manual admission: power on all of
    /// `specs` at once, wait for them to join, accept them, wait until
    /// they are ready. Returns their admin entries.
    pub async fn bring_up(
        &mut self,
        admin: &Admin,
        specs: &[NodeSpec],
        logs: &mut Logs,
    ) -> Vec<Value> {
        admin
            .put(
                "/admin/settings",
                json!({"admission": "manual", "enrollment": "closed"}),
            )
            .await;
        for s in specs {
            admin
                .post(
                    "/admin/machines",
                    json!({"mac": s.mac, "role": s.role.name(), "pools": s.pools, "discs": s.discs}),
                )
                .await;
        }
        self.wait_for_target_image(admin).await;
        for s in specs {
            self.power_on(s.clone(), logs);
        }
        self.wait_joined(admin).await;
        self.accept_all(admin).await;
        self.wait_ready(admin).await
    }
}

/// The brain's boot HTTP server: `--boot-address`, port 80 by default.
const BOOT_HTTP_PORT: u16 = 80;

/// What iPXE would load on machine `mac` of `role` now, for qemu to load
/// itself: the command line of the brain's script for it (which the
/// brain records as served, as when iPXE fetches it), with the kernel
/// and initrds of the image in folder `image` — the one the script names,
/// or another to boot a machine on a stale image. The initrds are
/// concatenated into `scratch/initrd-<role>` (overwritten by the next
/// call for that role: qemu reads it when it starts). Call it inside the
/// namespace.
pub async fn direct_boot(mac: &str, role: Role, image: &Path, scratch: &Path) -> DirectBoot {
    let url = format!("http://{BRAIN_ADDRESS}:{BOOT_HTTP_PORT}/boot/{mac}/boot.ipxe");
    let http = reqwest::Client::new();
    // The boot services see a newly registered machine within a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    let script = loop {
        match http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
        {
            Ok(r) => break r.text().await.expect("the iPXE script"),
            Err(e) if Instant::now() > deadline => panic!("GET {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let kernel_line = script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("no kernel line in the script:\n{script}"));
    // `kernel URL ARGS… || goto failed`; iPXE would fill in its NIC's MAC.
    let cmdline = kernel_line
        .split_once(" || ")
        .map_or(kernel_line, |(a, _)| a)
        .split_whitespace()
        .skip(2)
        .collect::<Vec<_>>()
        .join(" ")
        .replace("${netX/mac}", mac);
    let mut initrd = std::fs::read(image.join("initrd")).expect("the image's initrd");
    if role == Role::Head {
        initrd.extend(std::fs::read(image.join("initrd-head")).expect("initrd-head"));
    }
    let initrd_path = scratch.join(format!("initrd-{}", role.name()));
    std::fs::write(&initrd_path, initrd).expect("writing the combined initrd");
    DirectBoot {
        kernel: image.join("vmlinuz"),
        initrd: initrd_path,
        cmdline,
    }
}

/// Polls `f` every half second for `secs`; fails early if the brain died.
pub async fn until<T>(
    what: &str,
    secs: u64,
    brain: &mut BrainProcess,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(!brain.exited(), "the brain exited while waiting for {what}");
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
