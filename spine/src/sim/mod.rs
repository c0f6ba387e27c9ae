//! Simulated heads and tails that speak the real spine protocol.
//!
//! They keep memory and pool-space accounting and report it as the real
//! agents do, but run no qemu and store no data. Brain tests and the scale
//! benchmark use them; they never stand in for tests of the real agents.
//! One process can run thousands: a node is a few tasks and a socket.

mod live;
pub use live::SIM_DOWNTIME_MS;
mod mirror;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::message::{ErrorCode, Hello, OrderError, PowerAction, Role};
use crate::node::{Backoff, NodeAgent, NodeConfig, NodeHandler, Notifier};
use crate::resource::{
    DiscSpec, MemoryFacts, PoolFacts, Resource, ResourceName, ResourceValue, SignalKind,
    VmRunState, VmSpec,
};

/// What a simulated node has to offer.
#[derive(Debug, Clone)]
pub enum SimHardware {
    Head {
        memory_mib: u64,
    },
    /// Pools by name: (grade, size in MiB).
    Tail {
        pools: BTreeMap<String, (String, u64)>,
    },
}

impl SimHardware {
    fn role(&self) -> Role {
        match self {
            SimHardware::Head { .. } => Role::Head,
            SimHardware::Tail { .. } => Role::Tail,
        }
    }
}

/// What happened to a guest on a simulated head: tests read these to
/// tell a guest that kept running (moved only by live migration) from one
/// that was stopped or started twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEventKind {
    /// A fresh guest started (a create without `incoming`).
    Booted,
    /// The guest arrived by live migration and runs here now.
    MigratedIn,
    /// The guest left by live migration (it runs on the destination).
    MigratedOut,
    /// The guest stopped here: removed, powered down, crashed, or the
    /// node rebooted under it.
    Stopped(&'static str),
}

#[derive(Debug, Clone)]
pub struct GuestEvent {
    pub at: std::time::Instant,
    pub node: String,
    /// The VM's name on the spine (`vm.NAME` without `vm.`).
    pub vm: String,
    pub kind: GuestEventKind,
}

/// One reboot a simulated node carried out.
#[derive(Debug, Clone)]
pub struct SimReboot {
    /// When it acknowledged the order and went down.
    pub down_at: std::time::Instant,
    /// When it started reconnecting (`None` while still down).
    pub up_at: Option<std::time::Instant>,
    /// The image version it came back with.
    pub version: String,
}

#[derive(Default)]
struct SimState {
    /// Every guest start, stop and move on this node, oldest first.
    guests: Vec<GuestEvent>,
    vms: BTreeMap<String, VmSpec>,
    discs: BTreeMap<ResourceName, DiscSpec>,
    /// Mirrors running from this tail: their `migrate_to.seq` and task.
    mirrors: BTreeMap<ResourceName, (u64, tokio::task::AbortHandle)>,
    /// The highest `migrate_to.seq` attempted per disc (each runs once).
    migrate_seq: BTreeMap<ResourceName, u64>,
}

struct SimHandler {
    hardware: SimHardware,
    state: Mutex<SimState>,
    notifier: OnceLock<Notifier>,
    /// Itself, for the tasks its orders start.
    me: OnceLock<Weak<SimHandler>>,
    /// Test knob: mirrors from this tail fail instead of handing over.
    fail_mirrors: AtomicBool,
    /// Test knob: how long a mirror from this tail copies, ms.
    mirror_ms: std::sync::atomic::AtomicU64,
    node_id: OnceLock<String>,
}

/// Backups are instant here: every listed id is held at once (sized as
/// the disc, nothing allocated), a restore of a held one is done at once,
/// of any other fails in `error`. An order without `backups` keeps what
/// was held.
fn sim_backups(
    spec: &DiscSpec,
    old: Option<crate::backup::DiscBackups>,
) -> Option<crate::backup::DiscBackups> {
    use crate::backup::BackupFacts;
    let Some(mut order) = spec.backups.clone() else {
        return old;
    };
    let old = old.unwrap_or_default();
    order.taken = order
        .keep
        .iter()
        .map(|id| {
            old.taken
                .iter()
                .find(|t| &t.id == id)
                .cloned()
                .unwrap_or(BackupFacts {
                    id: id.clone(),
                    pool: order.pool.clone().unwrap_or(spec.storage_pool.clone()),
                    size: spec.size,
                    allocated: 0,
                })
        })
        .collect();
    order.restored_seq = old.restored_seq;
    order.error = None;
    if let Some(r) = &order.restore
        && old.restored_seq.is_none_or(|d| d < r.seq)
    {
        if order.taken.iter().any(|t| t.id == r.from) {
            order.restored_seq = Some(r.seq);
        } else {
            order.error = Some(format!("restore: no backup {:?} of this disc here", r.from));
        }
    }
    Some(order)
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> OrderError {
    OrderError::new(code, message)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl SimHandler {
    fn state(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().expect("sim state poisoned")
    }

    fn node_id(&self) -> String {
        self.node_id.get().cloned().unwrap_or_default()
    }

    /// Notes a guest event in `state`.
    fn guest_event(&self, state: &mut SimState, vm: &str, kind: GuestEventKind) {
        state.guests.push(GuestEvent {
            at: std::time::Instant::now(),
            node: self.node_id(),
            vm: vm.to_owned(),
            kind,
        });
    }

    /// Every guest stops: the node reboots or powers off.
    fn stop_all(&self, why: &'static str) {
        let mut state = self.state();
        let running: Vec<String> = state
            .vms
            .iter()
            .filter(|(_, v)| v.incoming.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        for vm in running {
            self.guest_event(&mut state, &vm, GuestEventKind::Stopped(why));
        }
        state.vms.clear();
    }

    fn notifier(&self) -> &Notifier {
        self.notifier.get().expect("notifier set at construction")
    }

    /// The `global.*` facts for the current state.
    fn facts(&self, state: &SimState) -> Vec<Resource> {
        let load = Resource::load([0.1, 0.1, 0.1]);
        match &self.hardware {
            SimHardware::Head { memory_mib } => {
                let used: u64 = state.vms.values().map(|v| v.memory).sum();
                vec![
                    load,
                    Resource::memory(MemoryFacts {
                        total: *memory_mib,
                        free: memory_mib.saturating_sub(used),
                    }),
                ]
            }
            SimHardware::Tail { pools } => {
                let facts = pools
                    .iter()
                    .map(|(name, (grade, size))| {
                        let discs = state.discs.values().filter(|d| &d.storage_pool == name);
                        let (allocated, used) = discs.fold((0, 0), |(a, u), d| {
                            (a + d.size, u + d.allocated.unwrap_or(0))
                        });
                        let facts = PoolFacts {
                            grade: grade.clone(),
                            size: *size,
                            free: size.saturating_sub(used),
                            allocated,
                        };
                        (name.clone(), facts)
                    })
                    .collect();
                vec![load, Resource::storage_pools(facts)]
            }
        }
    }

    /// Reports a resource an order made or changed, then the facts.
    async fn report(&self, changed: Option<(Resource, bool)>) {
        let facts = self.facts(&self.state());
        let notifier = self.notifier();
        match changed {
            Some((resource, true)) => notifier.created(resource).await,
            Some((resource, false)) => notifier.updated(resource).await,
            None => {}
        }
        for fact in facts {
            notifier.updated(fact).await;
        }
    }

    fn check_head(&self) -> Result<u64, OrderError> {
        match self.hardware {
            SimHardware::Head { memory_mib } => Ok(memory_mib),
            SimHardware::Tail { .. } => Err(refuse(ErrorCode::Unsupported, "a tail runs no VMs")),
        }
    }

    fn check_pool(&self, spec: &DiscSpec) -> Result<(), OrderError> {
        match &self.hardware {
            SimHardware::Tail { pools } if pools.contains_key(&spec.storage_pool) => Ok(()),
            SimHardware::Tail { .. } => Err(refuse(
                ErrorCode::Invalid,
                format!("no storage pool {:?} here", spec.storage_pool),
            )),
            SimHardware::Head { .. } => {
                Err(refuse(ErrorCode::Unsupported, "a head serves no discs"))
            }
        }
    }

    /// Starts or changes a VM; `None` when a delivered signal stopped it.
    fn put_vm(
        &self,
        name: &str,
        mut spec: VmSpec,
        create: bool,
    ) -> Result<Option<Resource>, OrderError> {
        let total = self.check_head()?;
        let mut state = self.state();
        let old = state.vms.get(name);
        match (create, old) {
            (true, Some(_)) => {
                return Err(refuse(
                    ErrorCode::AlreadyExists,
                    format!("vm.{name} runs here"),
                ));
            }
            (false, None) => {
                return Err(refuse(ErrorCode::NotFound, format!("no vm.{name} here")));
            }
            _ => {}
        }
        let used: u64 = state.vms.values().map(|v| v.memory).sum();
        let free = total.saturating_sub(used) + old.map_or(0, |v| v.memory);
        if spec.memory > free {
            return Err(refuse(
                ErrorCode::InsufficientResources,
                format!("vm.{name} needs {} MiB, {free} MiB free", spec.memory),
            ));
        }
        let delivered = old.and_then(|v| v.signal.as_ref()).map(|s| s.seq);
        let new_signal = spec.signal.as_ref().filter(|s| Some(s.seq) != delivered);
        if new_signal.is_some_and(|s| s.kind == SignalKind::Powerdown) {
            // The simulated guest obeys ACPI at once: qemu exits.
            state.vms.remove(name);
            self.guest_event(&mut state, name, GuestEventKind::Stopped("powered down"));
            return Ok(None);
        }
        let resource = ResourceName::vm(name);
        let mut booted = false;
        match old {
            None if spec.incoming.is_some() => {
                // Waiting for the migration stream: no guest runs here yet.
                let me = self.me.get().and_then(Weak::upgrade);
                if let Some(incoming) = spec.incoming.as_mut() {
                    incoming.endpoint = me.map(|me| mirror::listen(&me, &resource));
                }
                spec.state = Some(VmRunState::Migrating);
                spec.started_at = None;
            }
            Some(old) if old.incoming.is_some() => {
                spec.incoming = old.incoming.clone();
                spec.state = old.state;
                spec.started_at = old.started_at;
            }
            _ => {
                booted = old.is_none();
                spec.incoming = None;
                spec.state = Some(VmRunState::Running);
                spec.started_at = Some(old.and_then(|v| v.started_at).unwrap_or_else(now_unix));
                spec.migration = old.and_then(|v| v.migration.clone());
            }
        }
        self.steer_migration(&mut state, name, &mut spec);
        state.vms.insert(name.to_owned(), spec.clone());
        if booted {
            self.guest_event(&mut state, name, GuestEventKind::Booted);
        }
        Ok(Some(Resource::vm(name, spec)))
    }

    fn put_disc(
        &self,
        name: &ResourceName,
        mut spec: DiscSpec,
        create: bool,
    ) -> Result<Resource, OrderError> {
        self.check_pool(&spec)?;
        let mut state = self.state();
        let old = state.discs.get(name);
        match (create, old) {
            (true, Some(_)) => {
                return Err(refuse(
                    ErrorCode::AlreadyExists,
                    format!("{name} exists here"),
                ));
            }
            (false, None) => return Err(refuse(ErrorCode::NotFound, format!("no {name} here"))),
            (false, Some(old)) if spec.size < old.size && !spec.allow_shrink => {
                return Err(refuse(
                    ErrorCode::Invalid,
                    format!("{name}: size: shrinking refused without allow_shrink"),
                ));
            }
            _ => {}
        }
        spec.allocated = Some(old.and_then(|d| d.allocated).unwrap_or(0));
        // Template copies are instant here; the real tail reports when done.
        spec.imaged_seq = match &spec.template {
            Some(t) => Some(t.seq),
            None => old.and_then(|d| d.imaged_seq),
        };
        match old {
            None => {
                if let Some(incoming) = spec.incoming.as_mut() {
                    let me = self.me.get().and_then(Weak::upgrade);
                    incoming.endpoint = me.map(|me| mirror::listen(&me, name));
                }
            }
            Some(old) => {
                if spec.incoming.is_some() != old.incoming.is_some() {
                    return Err(refuse(
                        ErrorCode::Invalid,
                        format!(
                            "{name}: incoming: only a create sets it, only the handover ends it"
                        ),
                    ));
                }
                spec.incoming = old.incoming.clone();
                spec.migration = old.migration.clone();
            }
        }
        let old_backups = old.and_then(|d| d.backups.clone());
        spec.backups = sim_backups(&spec, old_backups);
        self.steer_mirror(&mut state, name, &mut spec);
        state.discs.insert(name.clone(), spec.clone());
        Resource::new(name.clone(), ResourceValue::Disc(spec))
            .map_err(|e| refuse(ErrorCode::Invalid, e.to_string()))
    }

    /// Starts the mirror a new `migrate_to.seq` asks for, or cancels the
    /// running one when the order no longer carries it.
    fn steer_mirror(&self, state: &mut SimState, name: &ResourceName, spec: &mut DiscSpec) {
        let running = state.mirrors.get(name).map(|(seq, _)| *seq);
        let wanted = spec.migrate_to.as_ref().map(|o| o.seq);
        if running.is_some() && running != wanted {
            if let Some((_, task)) = state.mirrors.remove(name) {
                task.abort();
            }
            if let Some(m) = spec.migration.as_mut() {
                m.state = crate::resource::MigrationState::Failed;
                m.error = Some("cancelled".into());
            }
        }
        let Some(order) = spec.migrate_to.clone() else {
            return;
        };
        let last = state.migrate_seq.get(name).copied().unwrap_or(0);
        let Some(me) = self.me.get().and_then(Weak::upgrade) else {
            return;
        };
        if order.seq > last && spec.incoming.is_none() {
            state.migrate_seq.insert(name.clone(), order.seq);
            spec.migration = Some(mirror::started(&order, spec.size));
            let task = tokio::spawn(mirror::run(me, name.clone(), order.clone()));
            state
                .mirrors
                .insert(name.clone(), (order.seq, task.abort_handle()));
        }
    }

    /// Starts the live migration a new `migrate_to.seq` asks for, or
    /// cancels the running one when the order no longer carries it.
    fn steer_migration(&self, state: &mut SimState, vm: &str, spec: &mut VmSpec) {
        let name = ResourceName::vm(vm);
        let running = state.mirrors.get(&name).map(|(seq, _)| *seq);
        let wanted = spec.migrate_to.as_ref().map(|o| o.seq);
        if running.is_some() && running != wanted {
            if let Some((_, task)) = state.mirrors.remove(&name) {
                task.abort();
            }
            if let Some(m) = spec.migration.as_mut() {
                m.state = crate::resource::VmMigrationState::Failed;
                m.error = Some("cancelled".into());
            }
        }
        let Some(order) = spec.migrate_to.clone() else {
            return;
        };
        let last = state.migrate_seq.get(&name).copied().unwrap_or(0);
        let Some(me) = self.me.get().and_then(Weak::upgrade) else {
            return;
        };
        if order.seq > last && spec.incoming.is_none() {
            state.migrate_seq.insert(name.clone(), order.seq);
            spec.migration = Some(live::started(&order, spec.memory));
            let task = tokio::spawn(live::run(me, vm.to_owned(), order.clone()));
            state.mirrors.insert(name, (order.seq, task.abort_handle()));
        }
    }

    async fn put(&self, resource: Resource, create: bool) -> Result<(), OrderError> {
        let (name, value) = resource.into_parts();
        let applied = match (&name, value) {
            (ResourceName::Vm(vm), ResourceValue::Vm(spec)) => {
                let Some(running) = self.put_vm(vm, *spec, create)? else {
                    self.notifier().destroyed(name).await;
                    self.report(None).await;
                    return Ok(());
                };
                running
            }
            (ResourceName::Disc { .. }, ResourceValue::Disc(spec)) => {
                self.put_disc(&name, spec, create)?
            }
            _ => {
                return Err(refuse(
                    ErrorCode::Invalid,
                    format!("{name} is reported by nodes, not ordered"),
                ));
            }
        };
        self.report(Some((applied, create))).await;
        Ok(())
    }
}

impl NodeHandler for SimHandler {
    async fn snapshot(&self) -> Vec<Resource> {
        let state = self.state();
        let mut all = self.facts(&state);
        all.extend(
            state
                .vms
                .iter()
                .map(|(name, spec)| Resource::vm(name, spec.clone())),
        );
        all.extend(state.discs.iter().filter_map(|(name, spec)| {
            Resource::new(name.clone(), ResourceValue::Disc(spec.clone())).ok()
        }));
        all
    }

    async fn create(&self, resource: Resource) -> Result<(), OrderError> {
        self.put(resource, true).await
    }

    async fn update(&self, resource: Resource) -> Result<(), OrderError> {
        self.put(resource, false).await
    }

    async fn remove(&self, name: ResourceName) -> Result<(), OrderError> {
        let existed = {
            let mut state = self.state();
            match &name {
                ResourceName::Vm(vm) => {
                    if let Some((_, task)) = state.mirrors.remove(&name) {
                        task.abort();
                    }
                    let gone = state.vms.remove(vm);
                    if gone.as_ref().is_some_and(|v| v.incoming.is_none()) {
                        self.guest_event(&mut state, vm, GuestEventKind::Stopped("removed"));
                    }
                    if let Some(endpoint) = gone
                        .as_ref()
                        .and_then(|v| v.incoming.as_ref()?.endpoint.clone())
                    {
                        mirror::forget(&endpoint);
                    }
                    gone.is_some()
                }
                ResourceName::Disc { .. } => {
                    if let Some((_, task)) = state.mirrors.remove(&name) {
                        task.abort();
                    }
                    let gone = state.discs.remove(&name);
                    if let Some(endpoint) = gone
                        .as_ref()
                        .and_then(|d| d.incoming.as_ref()?.endpoint.clone())
                    {
                        mirror::forget(&endpoint);
                    }
                    gone.is_some()
                }
                ResourceName::Global(_) => false,
            }
        };
        if !existed {
            return Err(refuse(ErrorCode::NotFound, format!("no {name} here")));
        }
        self.notifier().destroyed(name).await;
        self.report(None).await;
        Ok(())
    }
}

/// One simulated head or tail, with the knobs tests turn.
pub struct SimNode {
    agent: NodeAgent<SimHandler>,
    handler: Arc<SimHandler>,
    away_until: Mutex<Option<Instant>>,
    powered_off: Mutex<bool>,
    power_on: Notify,
    sessions: std::sync::atomic::AtomicU64,
    /// Test knob: how long a reboot keeps the node off the spine.
    reboot_delay: Mutex<Duration>,
    /// Test knob: the image version the node comes back with after a
    /// reboot (`None`: the one it had, as a machine booting the same image).
    boot_version: Mutex<Option<String>>,
    reboots: Mutex<Vec<SimReboot>>,
}

/// How long a simulated reboot keeps a node away unless a test says.
pub const DEFAULT_REBOOT_DELAY: Duration = Duration::from_millis(200);

impl SimNode {
    /// A node that will connect to `brain_addr` once [`SimNode::run`] runs.
    pub fn new(mut config: NodeConfig, hardware: SimHardware) -> Arc<Self> {
        config.hello.role = hardware.role();
        let handler = Arc::new(SimHandler {
            hardware,
            state: Mutex::default(),
            notifier: OnceLock::new(),
            me: OnceLock::new(),
            fail_mirrors: AtomicBool::new(false),
            mirror_ms: mirror::DEFAULT_COPY_MS.into(),
            node_id: OnceLock::from(config.hello.node_id.clone()),
        });
        let _ = handler.me.set(Arc::downgrade(&handler));
        let agent = NodeAgent::new(config, handler.clone());
        let _ = handler.notifier.set(agent.notifier());
        Arc::new(SimNode {
            agent,
            handler,
            away_until: Mutex::new(None),
            powered_off: Mutex::new(false),
            power_on: Notify::new(),
            sessions: 0.into(),
            reboot_delay: Mutex::new(DEFAULT_REBOOT_DELAY),
            boot_version: Mutex::new(None),
            reboots: Mutex::default(),
        })
    }

    /// A node config with short timings, suited to simulation.
    pub fn config(brain_addr: &str, node_id: &str, image_version: &str) -> NodeConfig {
        let hello = Hello {
            node_id: node_id.to_owned(),
            role: Role::Head,
            image_version: image_version.to_owned(),
            protocol_version: crate::PROTOCOL_VERSION,
            addresses: vec![],
        };
        let mut config = NodeConfig::new(brain_addr, hello);
        config.backoff = Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
        };
        config
    }

    pub fn node_id(&self) -> &str {
        &self.agent.config().hello.node_id
    }

    /// How many sessions have started (reconnects show as increments).
    pub fn sessions(&self) -> u64 {
        self.sessions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs sessions until the task is dropped, obeying the knobs below
    /// and simulating reboot/power-off orders.
    pub async fn run(self: Arc<Self>) {
        let backoff = self.agent.config().backoff;
        loop {
            self.wait_until_allowed().await;
            self.sessions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match self.agent.session().await {
                Ok(PowerAction::Reboot) => {
                    // A reboot loses every VM and forgets nothing on discs.
                    self.handler.stop_all("the node rebooted");
                    let down_at = std::time::Instant::now();
                    let delay = *self.reboot_delay.lock().expect("knob poisoned");
                    tokio::time::sleep(delay).await;
                    let version = self.boot_version.lock().expect("knob poisoned").clone();
                    if let Some(v) = version {
                        self.agent.set_image_version(v);
                    }
                    tracing::debug!(node = self.node_id(), version = %self.agent.image_version(), "sim node rebooted");
                    self.reboots
                        .lock()
                        .expect("reboots poisoned")
                        .push(SimReboot {
                            down_at,
                            up_at: Some(std::time::Instant::now()),
                            version: self.agent.image_version(),
                        });
                }
                Ok(PowerAction::Poweroff) => {
                    self.handler.stop_all("the node powered off");
                    *self.powered_off.lock().expect("power poisoned") = true;
                }
                Err(e) => tracing::debug!(node = self.node_id(), error = %e, "sim session ended"),
            }
            tokio::time::sleep(backoff.initial).await;
        }
    }

    async fn wait_until_allowed(&self) {
        loop {
            let notified = self.power_on.notified();
            if *self.powered_off.lock().expect("power poisoned") {
                notified.await;
                continue;
            }
            let away = *self.away_until.lock().expect("away poisoned");
            match away {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }

    /// Makes reboots keep the node off the spine for `delay` (default
    /// [`DEFAULT_REBOOT_DELAY`]); a long one stands for a node that does
    /// not come back.
    pub fn reboot_delay(&self, delay: Duration) {
        *self.reboot_delay.lock().expect("knob poisoned") = delay;
    }

    /// The image version the node declares after its next reboot (as if
    /// it network-booted that image).
    pub fn boot_version(&self, version: &str) {
        *self.boot_version.lock().expect("knob poisoned") = Some(version.to_owned());
    }

    /// The image version its next hello declares.
    pub fn image_version(&self) -> String {
        self.agent.image_version()
    }

    /// The reboots it carried out, oldest first.
    pub fn reboots(&self) -> Vec<SimReboot> {
        self.reboots.lock().expect("reboots poisoned").clone()
    }

    /// Every guest start, stop and move on this node, oldest first.
    pub fn guest_log(&self) -> Vec<GuestEvent> {
        self.handler.state().guests.clone()
    }

    /// The VMs this node runs now.
    pub fn vms(&self) -> BTreeMap<String, VmSpec> {
        self.handler.state().vms.clone()
    }

    pub fn discs(&self) -> BTreeMap<ResourceName, DiscSpec> {
        self.handler.state().discs.clone()
    }

    /// The VM's qemu "dies": the brain hears `destroyed`.
    pub async fn crash_vm(&self, name: &str) -> bool {
        let existed = {
            let mut state = self.handler.state();
            let existed = state.vms.remove(name).is_some();
            if existed {
                self.handler
                    .guest_event(&mut state, name, GuestEventKind::Stopped("crashed"));
            }
            existed
        };
        if existed {
            self.handler
                .notifier()
                .destroyed(ResourceName::vm(name))
                .await;
            self.handler.report(None).await;
        }
        existed
    }

    /// Drops the connection now; the node reconnects after its backoff.
    pub fn drop_connection(&self) {
        self.agent.notifier().disconnect();
    }

    /// Drops the connection and stays away for `period`.
    pub fn stay_away(&self, period: Duration) {
        *self.away_until.lock().expect("away poisoned") = Some(Instant::now() + period);
        self.drop_connection();
    }

    /// Declares a VM the brain never ordered (or has since moved) and
    /// reconnects, so the next dump carries it: the paper's "rogue" case.
    pub fn reconnect_with_stale_vm(&self, name: &str, mut spec: VmSpec) {
        spec.state = Some(VmRunState::Running);
        spec.started_at.get_or_insert_with(now_unix);
        self.handler.state().vms.insert(name.to_owned(), spec);
        self.drop_connection();
    }

    /// Makes disc mirrors from this tail fail (or succeed again).
    pub fn fail_mirrors(&self, fail: bool) {
        self.handler
            .fail_mirrors
            .store(fail, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes disc mirrors from this tail take `copy` (default 300 ms).
    pub fn mirror_time(&self, copy: Duration) {
        self.handler.mirror_ms.store(
            copy.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub fn is_powered_off(&self) -> bool {
        *self.powered_off.lock().expect("power poisoned")
    }

    /// Presses the power button of a node the brain powered off.
    pub fn power_on(&self) {
        *self.powered_off.lock().expect("power poisoned") = false;
        self.power_on.notify_waiters();
    }
}

/// Many simulated nodes against one brain.
pub struct SimFleet {
    pub nodes: Vec<Arc<SimNode>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SimFleet {
    /// Starts `heads` heads and `tails` tails named `sim-head-NNNN` and
    /// `sim-tail-NNNN`; `tweak` adjusts each node's config (TLS pin,
    /// keepalive) before it starts.
    pub fn start(
        brain_addr: &str,
        heads: usize,
        tails: usize,
        head: SimHardware,
        tail: SimHardware,
        tweak: impl Fn(&mut NodeConfig),
    ) -> SimFleet {
        let kinds = (0..heads)
            .map(|i| (format!("sim-head-{i:04}"), head.clone()))
            .chain((0..tails).map(|i| (format!("sim-tail-{i:04}"), tail.clone())));
        let nodes: Vec<Arc<SimNode>> = kinds
            .map(|(id, hardware)| {
                let mut config = SimNode::config(brain_addr, &id, "sim");
                tweak(&mut config);
                SimNode::new(config, hardware)
            })
            .collect();
        let tasks = nodes
            .iter()
            .map(|n| tokio::spawn(n.clone().run()))
            .collect();
        SimFleet { nodes, tasks }
    }

    pub fn node(&self, node_id: &str) -> Option<&Arc<SimNode>> {
        self.nodes.iter().find(|n| n.node_id() == node_id)
    }

    /// Every node's guest events, in the order they happened.
    pub fn guest_log(&self) -> Vec<GuestEvent> {
        let mut all: Vec<GuestEvent> = self.nodes.iter().flat_map(|n| n.guest_log()).collect();
        all.sort_by_key(|e| e.at);
        all
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
