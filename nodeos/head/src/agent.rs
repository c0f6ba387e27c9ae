//! The head agent: `bigv_spine::NodeHandler` for `vm.NAME`, plus the
//! `global.memory` and `global.load` reports.
//!
//! Each VM is one qemu process with a supervisor task reading its QMP
//! events. When qemu ends — guest shutdown, crash, `quit`, killed — the
//! supervisor removes the VM and tells the brain it is `destroyed`, with
//! the reason in the log. Notifications are sent only after the VM's
//! lock is released (the spine's dump holds its outbox while it
//! snapshots, which takes those locks).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bigv_spine::message::PowerAction;
use bigv_spine::resource::{
    MemoryFacts, Resource, ResourceName, ResourceValue, SignalKind, VmRunState, VmSpec,
};
use bigv_spine::{ErrorCode, NodeAgent, NodeHandler, Notifier, OrderError};
use russh::keys::PrivateKey;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::argv::{self, NicBackend, QemuSettings, VmPaths};
use crate::console::{self, Console, ConsoleConfig};
use crate::fence::Fence;
use crate::qmp::{Event, Qmp};
use crate::{error_chain, host, migration, net, vm};

/// What the agent needs to know about its host.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub qemu: PathBuf,
    /// Sockets, pidfiles and `spec.json`, one directory per VM. Must
    /// survive an agent restart (a tmpfs like /run is right).
    pub run_dir: PathBuf,
    /// Serial scroll-back logs, one per VM.
    pub log_dir: PathBuf,
    pub settings: QemuSettings,
    /// MiB offered to VMs (`global.memory` total).
    pub vm_memory_mib: u64,
    /// How often memory and load are reported.
    pub report_interval: Duration,
    /// Kill every VM after this long without the brain; `None` never does.
    /// Only until a brain's `welcome` gives its own (`fence.rs`).
    pub fence_timeout: Option<Duration>,
    /// The address incoming live migrations listen on (the storage
    /// network's); `None` refuses `incoming` creates.
    pub migration_address: Option<String>,
    /// The VMs' SSH consoles (`console/`).
    pub console: ConsoleConfig,
    /// The trunk and its VLANs, for `nic_backend = "bridged"`.
    pub net: Option<net::NetConfig>,
}

pub struct HeadAgent {
    pub(crate) me: std::sync::Weak<HeadAgent>,
    config: AgentConfig,
    vms: Mutex<BTreeMap<String, Arc<Vm>>>,
    notifier: OnceLock<Notifier>,
    shutdown: CancellationToken,
    fence: Fence,
    /// The SSH host key every VM's console presents; `None` if it could
    /// not be read or made (then no SSH consoles).
    console_key: Option<PrivateKey>,
}

pub(crate) struct Vm {
    pub(crate) name: String,
    pub(crate) paths: VmPaths,
    pub(crate) pid: i32,
    /// MiB, fixed while qemu runs.
    memory: u64,
    pub(crate) qmp: Qmp,
    /// The resource as reported (running hardware, delivered signal, CD,
    /// migration progress).
    pub(crate) spec: tokio::sync::Mutex<VmSpec>,
    /// Set once the guest runs here (not while an incoming migration
    /// waits).
    console: OnceLock<Console>,
    /// Fired once the VM is gone and reported `destroyed`.
    pub(crate) ended: CancellationToken,
    /// A migration destination: the guest's `started_at` on its source,
    /// if the create carried it (reported once the guest runs here).
    inherited_started_at: Option<u64>,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> OrderError {
    OrderError::new(code, message)
}

pub(crate) fn failed(name: &str, what: &str, e: &(dyn std::error::Error + 'static)) -> OrderError {
    let message = format!("vm.{name}: {what}: {}", error_chain(e));
    tracing::warn!(vm = name, "{message}");
    refuse(ErrorCode::Failed, message)
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl HeadAgent {
    /// Prepares the directories and re-adopts every qemu a previous agent
    /// left running; VMs that ended meanwhile are cleaned up.
    pub async fn start(config: AgentConfig) -> anyhow::Result<Arc<HeadAgent>> {
        for dir in [&config.run_dir, &config.log_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        }
        if let (Some(net), NicBackend::Bridged) = (&config.net, config.settings.nic_backend) {
            match net::probe(net).await {
                Ok(p) => tracing::info!(
                    trunk = %net.trunk,
                    vlans_8021q = p.vlans_8021q,
                    "VM networking ready (taps with anti-spoofing filters work here)"
                ),
                Err(e) => tracing::error!(
                    trunk = %net.trunk,
                    error = %error_chain(&e),
                    "VM networking does not work here: VMs with NICs will not start"
                ),
            }
        }
        let fence = Fence::new(config.fence_timeout, &config.run_dir);
        let key_path = config.console.host_key_path(&config.run_dir);
        let console_key = console::auth::host_key(&key_path)
            .inspect_err(|e| tracing::error!(error = %error_chain(e), "no SSH consoles"))
            .ok();
        let agent = Arc::new_cyclic(|me| HeadAgent {
            me: me.clone(),
            config,
            vms: Mutex::default(),
            notifier: OnceLock::new(),
            shutdown: CancellationToken::new(),
            fence,
            console_key,
        });
        let entries = std::fs::read_dir(&agent.config.run_dir)?;
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file_name.strip_prefix("vm.") else {
                continue;
            };
            if ResourceName::vm(name)
                .to_string()
                .parse::<ResourceName>()
                .is_err()
            {
                continue;
            }
            agent.readopt(name).await;
        }
        tokio::spawn(agent.clone().fence_loop());
        Ok(agent)
    }

    /// Runs spine sessions until the brain orders a power action, like
    /// `NodeAgent::run`, telling the fence when each session ends.
    pub async fn run_spine(&self, node: &NodeAgent<HeadAgent>) -> PowerAction {
        let backoff = node.config().backoff;
        let keepalive = node.config().keepalive.timeout;
        let mut delay = backoff.initial;
        loop {
            let started = tokio::time::Instant::now();
            let result = node.session().await;
            self.fence.disconnected(keepalive);
            match result {
                Ok(action) => return action,
                Err(e) => {
                    tracing::warn!(error = %e, brain = %node.config().brain_addr, "spine session ended")
                }
            }
            // A session that lasted a while was healthy: back off afresh.
            if started.elapsed() > Duration::from_secs(30) {
                delay = backoff.initial;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(backoff.max);
        }
    }

    /// Kills every VM once the brain has been away for the fence timeout.
    async fn fence_loop(self: Arc<Self>) {
        let fence = &self.fence;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            if !fence.is_due() {
                continue;
            }
            let vms: Vec<Arc<Vm>> = self
                .vms
                .lock()
                .expect("vms poisoned")
                .values()
                .cloned()
                .collect();
            if vms.is_empty() {
                continue;
            }
            let silent = fence.silent_for().unwrap_or_default();
            tracing::error!(
                vms = vms.len(),
                silent_secs = silent.as_secs(),
                fence_timeout_secs = fence.timeout().unwrap_or_default().as_secs(),
                "the brain has been away past the fence timeout: killing every VM (it may run them elsewhere now)"
            );
            for vm in &vms {
                vm::kill(vm.pid);
            }
            for vm in &vms {
                let _ = tokio::time::timeout(Duration::from_secs(15), vm.ended.cancelled()).await;
            }
            fence.add_fenced(vms.len());
        }
    }

    async fn readopt(&self, name: &str) {
        let paths = self.paths(name);
        let adopted = match vm::load_spec(&paths) {
            Ok(spec) => vm::adopt(&paths).await.map(|r| (spec, r)),
            Err(e) => Err(e),
        };
        match adopted {
            Ok((spec, running)) => {
                tracing::info!(vm = name, pid = running.pid, "re-adopted a running VM");
                // The taps outlive the agent; this puts back whatever is
                // missing (a filter, a bridge) and is the place per-tap
                // services start again.
                let taps = self.nics_up(name, &spec).await.unwrap_or_else(|e| {
                    tracing::error!(vm = name, error = %error_chain(&e), "setting up a re-adopted VM's NICs");
                    vec![]
                });
                let vm = self.install(name, paths, spec.clone(), running, None);
                self.serve_dhcp(&vm, &taps, &spec);
                if let Some(me) = self.me.upgrade() {
                    migration::resume(me, vm, &spec);
                }
            }
            // Its qemu is alive but its monitor did not answer: keep its
            // directory (spec, sockets) rather than orphan a running guest.
            Err(e @ vm::VmError::Qmp(_)) => {
                tracing::error!(vm = name, error = %error_chain(&e), "a running VM's QMP monitor does not answer; leaving it as it is");
            }
            Err(e) => {
                tracing::warn!(vm = name, error = %error_chain(&e), "a VM in the run directory is no longer running; cleaning up");
                if let Ok(spec) = vm::load_spec(&paths) {
                    self.nics_down(name, spec.network_interfaces.len()).await;
                }
                let _ = std::fs::remove_dir_all(&paths.dir);
            }
        }
    }

    /// Makes the VM's taps before qemu starts (`net::nic_up`); nothing
    /// unless the NICs are bridged. Returns the taps' names.
    async fn nics_up(&self, name: &str, spec: &VmSpec) -> Result<Vec<String>, net::NetError> {
        match &self.config.net {
            Some(config) if self.config.settings.nic_backend == NicBackend::Bridged => {
                net::nic_up(config, name, &spec.network_interfaces).await
            }
            _ => Ok(vec![]),
        }
    }

    /// Starts the DHCP responder of each NIC on its tap (`dhcp::serve`;
    /// nothing for a NIC without a `dhcp` block); each ends with the VM or
    /// when the agent stops watching it (the next agent starts it again).
    fn serve_dhcp(&self, vm: &Arc<Vm>, taps: &[String], spec: &VmSpec) {
        for (tap, nic) in taps.iter().zip(&spec.network_interfaces) {
            let (tap, nic) = (tap.clone(), nic.clone());
            let ended = vm.ended.clone();
            let stopping = self.shutdown.clone();
            let name = vm.name.clone();
            tokio::spawn(async move {
                let cancel = ended.child_token();
                let serving = crate::dhcp::serve(&tap, &nic, cancel.clone());
                let result = tokio::select! {
                    r = serving => r,
                    _ = stopping.cancelled() => Ok(()),
                };
                if let Err(e) = result
                    && !ended.is_cancelled()
                {
                    tracing::error!(vm = %name, %tap, error = %error_chain(&e), "the NIC's DHCP responder stopped");
                }
            });
        }
    }

    /// Removes the VM's taps once its qemu is gone.
    async fn nics_down(&self, name: &str, count: usize) {
        if self.config.settings.nic_backend == NicBackend::Bridged {
            net::nic_down(name, count).await;
        }
    }

    /// Stops watching the VMs and closes their QMP connections, leaving
    /// every qemu running (a restart, or tests that restart the agent).
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let vms: Vec<Arc<Vm>> = std::mem::take(&mut *self.vms.lock().expect("vms poisoned"))
            .into_values()
            .collect();
        drop(vms);
    }

    /// Cancelled when the agent stops watching its VMs.
    pub(crate) fn stopping(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Connects the agent to its spine session's notifier (once).
    pub fn set_notifier(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// Tells the brain how a VM stands now (if a session is up).
    pub(crate) async fn report_vm(&self, name: &str, spec: VmSpec) {
        if let Some(n) = self.notifier.get() {
            n.updated(Resource::vm(name.to_owned(), spec)).await;
        }
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn paths(&self, name: &str) -> VmPaths {
        VmPaths::new(&self.config.run_dir, &self.config.log_dir, name)
    }

    /// The qemu pid of a VM, if it runs here.
    pub fn pid(&self, name: &str) -> Option<i32> {
        self.vm(name).map(|v| v.pid)
    }

    /// What the CD drive of a running VM holds, asked of qemu.
    pub async fn cdrom_medium(&self, name: &str) -> Option<String> {
        let vm = self.vm(name)?;
        vm.qmp.cdrom_medium().await.ok().flatten()
    }

    fn vm(&self, name: &str) -> Option<Arc<Vm>> {
        self.vms.lock().expect("vms poisoned").get(name).cloned()
    }

    fn install(
        &self,
        name: &str,
        paths: VmPaths,
        spec: VmSpec,
        running: vm::Running,
        inherited_started_at: Option<u64>,
    ) -> Arc<Vm> {
        let console_spec = spec.incoming.is_none().then(|| spec.clone());
        let vm = Arc::new(Vm {
            console: OnceLock::new(),
            inherited_started_at,
            name: name.to_owned(),
            paths,
            pid: running.pid,
            memory: spec.memory,
            qmp: running.qmp,
            spec: tokio::sync::Mutex::new(spec),
            ended: CancellationToken::new(),
        });
        self.vms
            .lock()
            .expect("vms poisoned")
            .insert(name.to_owned(), vm.clone());
        let me = self.me.upgrade().expect("agent alive");
        tokio::spawn(me.supervise(vm.clone(), running.events));
        if let Some(spec) = console_spec {
            self.start_console(&vm, &spec);
        }
        if crate::console::enabled() {
            tokio::spawn(crate::console::echo(
                vm.name.clone(),
                vm.paths.serial_log.clone(),
                vm.ended.clone(),
            ));
        }
        vm
    }

    /// Starts the VM's console (once) now that the guest runs here.
    fn start_console(&self, vm: &Vm, spec: &VmSpec) {
        vm.console.get_or_init(|| {
            Console::start(
                &self.config.console,
                self.console_key.as_ref(),
                &vm.name,
                spec,
                &vm.paths,
                &vm.ended,
                &self.shutdown,
            )
        });
    }

    /// Watches one VM's events until qemu ends, then reports it gone.
    async fn supervise(self: Arc<Self>, vm: Arc<Vm>, mut events: mpsc::UnboundedReceiver<Event>) {
        let mut reason: Option<String> = None;
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => {
                        if let Some(r) = self.on_event(&vm, ev).await {
                            reason = Some(r);
                        }
                    }
                    None => break,
                },
                _ = self.shutdown.cancelled() => return,
            }
        }
        // The QMP connection closed: qemu is exiting (or broke its monitor).
        if !vm::wait_gone(vm.pid, Duration::from_secs(10)).await {
            tracing::error!(vm = %vm.name, pid = vm.pid, "QMP closed but qemu lives on; killing it");
            vm::kill(vm.pid);
            vm::wait_gone(vm.pid, Duration::from_secs(5)).await;
            reason.get_or_insert_with(|| "lost its QMP connection; killed".into());
        }
        let reason =
            reason.unwrap_or_else(|| "qemu exited without saying why (crash or killed)".into());
        self.forget(&vm, &reason).await;
    }

    /// Acts on one event; returns why the VM is ending, if it is.
    async fn on_event(&self, vm: &Vm, ev: Event) -> Option<String> {
        let detail = ev.data.get("reason").and_then(|r| r.as_str()).unwrap_or("");
        match ev.name.as_str() {
            "SHUTDOWN" => {
                let who = if ev.data.get("guest").and_then(|g| g.as_bool()) == Some(true) {
                    "the guest shut down"
                } else {
                    "qemu was told to quit"
                };
                Some(format!("{who} ({detail})"))
            }
            "GUEST_PANICKED" => Some("the guest panicked".into()),
            "RESET" => {
                tracing::info!(vm = %vm.name, reason = detail, "VM reset");
                None
            }
            "STOP" | "RESUME" => {
                let state = if ev.name == "STOP" {
                    VmRunState::Paused
                } else {
                    VmRunState::Running
                };
                let spec = {
                    let mut spec = vm.spec.lock().await;
                    if spec.incoming.is_some() && state == VmRunState::Running {
                        // The incoming migration is complete: the guest
                        // runs here now.
                        spec.incoming = None;
                        spec.started_at = Some(vm.inherited_started_at.unwrap_or_else(now_unix));
                        self.start_console(vm, &spec);
                        tracing::info!(vm = %vm.name, "incoming live migration complete: the guest runs here");
                    } else if state == VmRunState::Paused && migration::outgoing(&spec) {
                        // The switch-over pause of an outgoing migration:
                        // the progress report says it; a failure resumes.
                        return None;
                    } else if spec.state == Some(state) {
                        return None;
                    }
                    spec.state = Some(state);
                    let _ = vm::save_spec(&vm.paths, &spec);
                    spec.clone()
                };
                tracing::info!(vm = %vm.name, ?state, "VM run state changed");
                if let Some(n) = self.notifier.get() {
                    n.updated(Resource::vm(vm.name.clone(), spec)).await;
                }
                None
            }
            other => {
                tracing::debug!(vm = %vm.name, event = other, data = %ev.data, "QMP event");
                None
            }
        }
    }

    /// The VM is gone: drop it, clean its run directory, tell the brain.
    async fn forget(&self, vm: &Arc<Vm>, reason: &str) {
        let removed = {
            let mut vms = self.vms.lock().expect("vms poisoned");
            match vms.get(&vm.name) {
                Some(v) if Arc::ptr_eq(v, vm) => vms.remove(&vm.name).is_some(),
                _ => false,
            }
        };
        if removed {
            tracing::warn!(vm = %vm.name, pid = vm.pid, reason, "VM stopped; reporting it destroyed");
            let nics = vm.spec.lock().await.network_interfaces.len();
            self.nics_down(&vm.name, nics).await;
            let _ = std::fs::remove_dir_all(&vm.paths.dir);
            if let Some(n) = self.notifier.get() {
                n.destroyed(ResourceName::vm(vm.name.clone())).await;
                n.updated(self.memory()).await;
            }
        }
        vm.ended.cancel();
    }

    fn memory(&self) -> Resource {
        let used: u64 = self
            .vms
            .lock()
            .expect("vms poisoned")
            .values()
            .map(|v| v.memory)
            .sum();
        Resource::memory(MemoryFacts {
            total: self.config.vm_memory_mib,
            free: self.config.vm_memory_mib.saturating_sub(used),
        })
    }

    /// `global.memory` and `global.load`.
    pub async fn facts(&self) -> Vec<Resource> {
        vec![self.memory(), Resource::load(host::load_average())]
    }

    /// Reports memory and load every `report_interval` until shutdown.
    pub async fn report_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.report_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            self.fence.record_contact();
            let facts = self.facts().await;
            if let Some(n) = self.notifier.get() {
                for r in facts {
                    n.updated(r).await;
                }
            }
        }
    }

    fn parse(resource: Resource) -> Result<(String, VmSpec), OrderError> {
        let (name, value) = resource.into_parts();
        match (name, value) {
            (ResourceName::Vm(name), ResourceValue::Vm(spec)) => Ok((name, *spec)),
            (name, _) => Err(refuse(
                ErrorCode::Unsupported,
                format!("{name}: a head runs VMs only"),
            )),
        }
    }

    async fn create_vm(&self, resource: Resource) -> Result<(), OrderError> {
        let (name, mut spec) = Self::parse(resource)?;
        if self.vm(&name).is_some() {
            return Err(refuse(
                ErrorCode::AlreadyExists,
                format!("vm.{name} runs here"),
            ));
        }
        let free = match self.facts().await.first().map(Resource::value) {
            Some(ResourceValue::Memory(m)) => m.free,
            _ => 0,
        };
        if spec.memory > free {
            return Err(refuse(
                ErrorCode::InsufficientResources,
                format!(
                    "vm.{name}: memory: needs {} MiB, {free} MiB free",
                    spec.memory
                ),
            ));
        }
        let paths = self.paths(&name);
        let incoming = spec.incoming.is_some();
        let listen = match (incoming, &self.config.migration_address) {
            (true, None) => {
                return Err(refuse(
                    ErrorCode::Unsupported,
                    format!("vm.{name}: incoming: this head has no migration address configured"),
                ));
            }
            (true, Some(a)) => Some(a.clone()),
            (false, _) => None,
        };
        let inherited_started_at = spec.started_at.filter(|_| incoming);
        // A signal already in a create order counts as delivered: it was
        // meant for an earlier process.
        if incoming {
            spec.state = Some(VmRunState::Migrating);
            spec.started_at = None;
            spec.migration = None;
            spec.migrate_to = None;
        } else {
            spec.state = Some(VmRunState::Running);
            spec.started_at = Some(now_unix());
        }
        let taps = match self.nics_up(&name, &spec).await {
            Ok(taps) => {
                if !taps.is_empty() {
                    tracing::info!(vm = %name, ?taps, "NICs ready");
                }
                taps
            }
            Err(e @ net::NetError::Invalid { .. }) => {
                return Err(refuse(ErrorCode::Invalid, format!("vm.{name}: {e}")));
            }
            Err(e) => {
                self.nics_down(&name, spec.network_interfaces.len()).await;
                return Err(failed(&name, "setting up its NICs", &e));
            }
        };
        let running = match vm::spawn(
            &self.config.qemu,
            &name,
            &spec,
            &self.config.settings,
            &paths,
        )
        .await
        {
            Ok(r) => r,
            Err(vm::VmError::Args(e)) => {
                self.nics_down(&name, spec.network_interfaces.len()).await;
                let _ = std::fs::remove_dir_all(&paths.dir);
                return Err(refuse(ErrorCode::Invalid, format!("vm.{name}: {e}")));
            }
            Err(e) => {
                self.nics_down(&name, spec.network_interfaces.len()).await;
                let _ = std::fs::remove_dir_all(&paths.dir);
                return Err(failed(&name, "starting qemu", &e));
            }
        };
        // qemu is up and the guest not yet running: its console's
        // scroll-back starts here.
        console::mark_power_on(&paths);
        let vm = self.install(&name, paths, spec.clone(), running, inherited_started_at);
        self.serve_dhcp(&vm, &taps, &spec);
        if let Some(address) = listen {
            match migration::listen(&vm, &address).await {
                Ok(reported) => spec = reported,
                Err(e) => {
                    vm::kill(vm.pid);
                    vm.ended.cancelled().await;
                    return Err(failed(&name, "listening for the incoming migration", &e));
                }
            }
            tracing::info!(vm = %name, pid = vm.pid, endpoint = ?spec.incoming, "VM waiting for its incoming migration");
        } else {
            if let Err(e) = vm.qmp.cont().await {
                vm::kill(vm.pid);
                vm.ended.cancelled().await;
                return Err(failed(&name, "resuming the new VM", &e));
            }
            tracing::info!(vm = %name, pid = vm.pid, "VM started");
        }
        if let Some(n) = self.notifier.get() {
            n.created(Resource::vm(name, spec)).await;
            n.updated(self.memory()).await;
        }
        Ok(())
    }

    async fn update_vm(&self, resource: Resource) -> Result<(), OrderError> {
        let (name, wanted) = Self::parse(resource)?;
        let Some(vm) = self.vm(&name) else {
            return Err(refuse(ErrorCode::NotFound, format!("no vm.{name} here")));
        };
        let reported = {
            let mut spec = vm.spec.lock().await;
            if wanted.cdrom_url != spec.cdrom_url {
                let r = match &wanted.cdrom_url {
                    Some(url) => {
                        argv::cdrom_blockdev(url, self.config.settings.local_cdrom)
                            .map_err(|e| refuse(ErrorCode::Invalid, format!("vm.{name}: {e}")))?;
                        vm.qmp.change_cdrom(url).await
                    }
                    None => vm.qmp.eject_cdrom().await,
                };
                r.map_err(|e| failed(&name, "changing the CD", &e))?;
                tracing::info!(vm = %name, cdrom = ?wanted.cdrom_url, "CD changed");
                spec.cdrom_url = wanted.cdrom_url.clone();
            }
            let delivered = spec.signal.as_ref().map(|s| s.seq);
            if let Some(signal) = wanted.signal.as_ref().filter(|s| Some(s.seq) != delivered) {
                let r = match signal.kind {
                    SignalKind::Powerdown => vm.qmp.system_powerdown().await,
                    SignalKind::Reset => vm.qmp.system_reset().await,
                    SignalKind::Sendkey => {
                        let keys = signal.keys.as_deref().unwrap_or_default();
                        let ok = !keys.is_empty()
                            && keys
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                        if !ok {
                            return Err(refuse(
                                ErrorCode::Invalid,
                                format!(
                                    "vm.{name}: signal.keys: {keys:?} is not a key combination"
                                ),
                            ));
                        }
                        vm.qmp.send_key(keys).await
                    }
                };
                r.map_err(|e| failed(&name, "delivering a signal", &e))?;
                tracing::info!(vm = %name, seq = signal.seq, kind = ?signal.kind, "signal delivered");
                spec.signal = Some(signal.clone());
            }
            if (&wanted.console_users, &wanted.user_authentication)
                != (&spec.console_users, &spec.user_authentication)
            {
                spec.console_users = wanted.console_users.clone();
                spec.user_authentication = wanted.user_authentication.clone();
                if let Some(c) = vm.console.get() {
                    c.set_access(&spec);
                }
                tracing::info!(vm = %name, users = ?spec.console_users, "console users changed");
            }
            if (
                wanted.memory,
                wanted.cores,
                &wanted.discs,
                &wanted.network_interfaces,
            ) != (
                spec.memory,
                spec.cores,
                &spec.discs,
                &spec.network_interfaces,
            ) {
                tracing::info!(vm = %name, "hardware changes apply when the VM is next started");
            }
            if let Some(order) = migration::steer(&vm, &mut spec, wanted.migrate_to.clone()).await {
                let me = self.me.upgrade().expect("agent alive");
                tokio::spawn(migration::run(me, vm.clone(), order));
            }
            let _ = vm::save_spec(&vm.paths, &spec);
            spec.clone()
        };
        if let Some(n) = self.notifier.get() {
            n.updated(Resource::vm(name, reported)).await;
        }
        Ok(())
    }

    async fn remove_vm(&self, name: ResourceName) -> Result<(), OrderError> {
        let ResourceName::Vm(name) = name else {
            return Err(refuse(
                ErrorCode::Unsupported,
                format!("{name}: a head runs VMs only"),
            ));
        };
        let Some(vm) = self.vm(&name) else {
            return Ok(());
        };
        tracing::info!(vm = %name, pid = vm.pid, "stopping VM (ordered)");
        migration::settle(self, &vm).await;
        if let Err(e) = vm.qmp.quit().await {
            tracing::warn!(vm = %name, error = %e, "QMP quit failed; killing qemu");
            vm::kill(vm.pid);
        }
        let ended = tokio::time::timeout(Duration::from_secs(15), vm.ended.cancelled()).await;
        if ended.is_err() {
            vm::kill(vm.pid);
            if tokio::time::timeout(Duration::from_secs(15), vm.ended.cancelled())
                .await
                .is_err()
            {
                return Err(refuse(
                    ErrorCode::Failed,
                    format!("vm.{name}: qemu does not die"),
                ));
            }
        }
        Ok(())
    }
}

impl NodeHandler for HeadAgent {
    fn welcomed(&self, welcome: &bigv_spine::Welcomed) {
        self.fence.told(welcome.fence_timeout);
    }

    async fn snapshot(&self) -> Vec<Resource> {
        // The dump follows `welcome`: the brain is heard again.
        let fenced = self.fence.connected();
        if fenced > 0 {
            tracing::warn!(
                vms = fenced,
                "back on the spine after a fence: {fenced} VM(s) were killed while the brain was away and are not in this dump"
            );
        }
        let mut all = self.facts().await;
        let vms: Vec<Arc<Vm>> = self
            .vms
            .lock()
            .expect("vms poisoned")
            .values()
            .cloned()
            .collect();
        for vm in vms {
            let spec = vm.spec.lock().await.clone();
            all.push(Resource::vm(vm.name.clone(), spec));
        }
        all
    }

    async fn create(&self, resource: Resource) -> Result<(), OrderError> {
        self.create_vm(resource).await
    }

    async fn update(&self, resource: Resource) -> Result<(), OrderError> {
        self.update_vm(resource).await
    }

    async fn remove(&self, name: ResourceName) -> Result<(), OrderError> {
        self.remove_vm(name).await
    }
}
