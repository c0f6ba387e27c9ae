//! The tail agent: `bigv_spine::NodeHandler` for `disc.GRADE.ID`, plus
//! the `global.storage_pools` and `global.load` reports.
//!
//! Each disc is owned by its own async mutex; the spine already runs
//! orders for one resource one at a time, and the mutex also orders them
//! against the periodic report and the mirror. Notifications are sent
//! only after a disc's lock is released (the spine's dump holds its outbox
//! while it snapshots, which takes those locks).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bigv_spine::resource::{DiscSpec, IncomingMirror, Resource, ResourceName, ResourceValue};
use bigv_spine::{ErrorCode, NodeHandler, Notifier, OrderError};

use crate::acl::Acl;
use crate::addresses::Addresses;
use crate::backup_transfer::IncomingBackups;
use crate::error_chain;
use crate::mirror::{self, MirrorHandle};
use crate::nbd::server::{BackupSink, ServeOptions};
use crate::nbd::{DiscServer, Export};
use crate::pools::{self, DiscRecord, MIB, Pools};

/// What the agent needs to know about its host.
pub struct AgentConfig {
    pub pools: Pools,
    /// Where templates live: `<images>/<image>.raw`.
    pub images: PathBuf,
    /// The port every disc is served on, at its own address (10809).
    pub nbd_port: u16,
    /// This tail's own storage-LAN address: incoming mirrors listen here.
    pub storage_address: IpAddr,
    pub addresses: Addresses,
    /// How often load, pool space and disc allocation are reported.
    pub report_interval: Duration,
    /// Where a template missing from `images` is fetched from.
    pub templates_url: Option<String>,
}

pub struct TailAgent {
    me: std::sync::Weak<TailAgent>,
    config: AgentConfig,
    discs: Mutex<BTreeMap<ResourceName, Arc<Disc>>>,
    notifier: OnceLock<Notifier>,
    template_fetch: tokio::sync::Mutex<()>,
}

pub(crate) struct Disc {
    pub(crate) name: ResourceName,
    pub(crate) pool: String,
    pub(crate) path: PathBuf,
    pub(crate) state: tokio::sync::Mutex<DiscState>,
}

pub(crate) struct DiscState {
    /// The order last applied, with what this tail reports filled in.
    pub(crate) spec: DiscSpec,
    pub(crate) export: Arc<Export>,
    /// Serving the head(s) on the disc's own address.
    pub(crate) server: Option<DiscServer>,
    /// Receiving a mirror (destination of a migration).
    pub(crate) incoming: Option<DiscServer>,
    /// Sending a mirror (source of a migration).
    pub(crate) mirror: Option<MirrorHandle>,
    /// The highest `migrate_to.seq` attempted.
    pub(crate) migrate_seq: u64,
    /// Handed over to another tail and deleted here.
    pub(crate) gone: bool,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> OrderError {
    OrderError::new(code, message)
}

fn failed(name: &ResourceName, what: &str, e: &(dyn std::error::Error + 'static)) -> OrderError {
    let message = format!("{name}: {what}: {}", error_chain(e));
    tracing::warn!(%name, "{message}");
    refuse(ErrorCode::Failed, message)
}

/// Blocking work off the runtime threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

impl TailAgent {
    /// Opens the pools and serves every disc they hold (as last ordered),
    /// so heads reconnect without waiting for the brain.
    pub async fn start(config: AgentConfig) -> anyhow::Result<Arc<TailAgent>> {
        let agent = Arc::new_cyclic(|me| TailAgent {
            me: me.clone(),
            config,
            discs: Mutex::default(),
            notifier: OnceLock::new(),
            template_fetch: tokio::sync::Mutex::new(()),
        });
        let pools = agent.config.pools.clone();
        let records = blocking(move || pools.scan()).await?;
        for (pool, DiscRecord { name, spec }) in records {
            let name: ResourceName = name.parse()?;
            let ResourceName::Disc { id, .. } = &name else {
                anyhow::bail!("{name}: a disc record for something not a disc");
            };
            let path = agent
                .config
                .pools
                .disc_path(&pool, id)
                .expect("scanned pool exists");
            let export = Arc::new(Export::open(name.to_string(), &path, false)?);
            let mut state = DiscState {
                spec,
                export,
                server: None,
                incoming: None,
                mirror: None,
                migrate_seq: 0,
                gone: false,
            };
            // A migration in flight when the agent stopped is over: the
            // source's connection broke. Its progress says so.
            if let Some(m) = state.spec.migration.as_mut() {
                state.migrate_seq = m.seq;
            }
            let started = if state.spec.incoming.is_some() {
                agent.listen_incoming(&name, &mut state).await
            } else if state
                .spec
                .migration
                .as_ref()
                .is_some_and(|m| m.state == bigv_spine::resource::MigrationState::Uncertain)
            {
                Ok(())
            } else {
                agent.serve(&name, &mut state).await
            };
            if let Err(e) = started {
                tracing::warn!(%name, error = %e.message, "could not serve a disc found at startup");
            }
            let disc = Arc::new(Disc {
                name: name.clone(),
                pool,
                path,
                state: tokio::sync::Mutex::new(state),
            });
            agent
                .discs
                .lock()
                .expect("discs poisoned")
                .insert(name, disc);
        }
        Ok(agent)
    }

    /// Stops every mirror and server (for a clean exit, and tests that
    /// restart an agent over the same pools). Files stay as they are.
    pub async fn shutdown(&self) {
        let discs: Vec<Arc<Disc>> = self
            .discs
            .lock()
            .expect("discs poisoned")
            .values()
            .cloned()
            .collect();
        for disc in discs {
            let mut state = disc.state.lock().await;
            if let Some(m) = state.mirror.take() {
                m.cancel().await;
            }
            if let Some(s) = state.incoming.take() {
                s.stop().await;
            }
            if let Some(s) = state.server.take() {
                s.stop().await;
            }
        }
    }

    /// Connects the agent to its spine session's notifier (once).
    pub fn set_notifier(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    pub(crate) fn notifier(&self) -> Option<&Notifier> {
        self.notifier.get()
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The address a disc is served on, if it is being served.
    pub async fn serving_at(&self, name: &ResourceName) -> Option<SocketAddr> {
        let disc = self.disc(name)?;
        let state = disc.state.lock().await;
        state.server.as_ref().map(DiscServer::local_addr)
    }

    pub(crate) fn disc(&self, name: &ResourceName) -> Option<Arc<Disc>> {
        self.discs
            .lock()
            .expect("discs poisoned")
            .get(name)
            .cloned()
    }

    pub(crate) fn forget(&self, name: &ResourceName) {
        self.discs.lock().expect("discs poisoned").remove(name);
    }

    /// Reports load, pool space and each disc's allocation every
    /// `report_interval`, forever.
    pub async fn report_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.report_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: BTreeMap<ResourceName, DiscSpec> = BTreeMap::new();
        loop {
            tick.tick().await;
            let Some(n) = self.notifier().cloned() else {
                continue;
            };
            for r in self.facts().await {
                n.updated(r).await;
            }
            let discs: Vec<Arc<Disc>> = self
                .discs
                .lock()
                .expect("discs poisoned")
                .values()
                .cloned()
                .collect();
            last.retain(|name, _| discs.iter().any(|d| &d.name == name));
            for disc in discs {
                // A disc busy with an order reports when the order ends.
                let Ok(state) = disc.state.try_lock() else {
                    continue;
                };
                // Handed over to another tail: already reported destroyed.
                if state.gone {
                    continue;
                }
                let spec = self.reported(&state).await;
                drop(state);
                if last.get(&disc.name) != Some(&spec) {
                    last.insert(disc.name.clone(), spec.clone());
                    if let Ok(r) = Resource::new(disc.name.clone(), ResourceValue::Disc(spec)) {
                        n.updated(r).await;
                    }
                }
            }
        }
    }

    /// `global.load` and `global.storage_pools`.
    pub async fn facts(&self) -> Vec<Resource> {
        let sizes: Vec<(String, u64)> = {
            let discs: Vec<Arc<Disc>> = self
                .discs
                .lock()
                .expect("discs poisoned")
                .values()
                .cloned()
                .collect();
            let mut v = vec![];
            for d in discs {
                let size = d.state.lock().await.spec.size;
                v.push((d.pool.clone(), size));
            }
            v
        };
        let pools = self.config.pools.clone();
        let facts = blocking(move || pools.facts(&sizes)).await;
        vec![
            Resource::load(load_average()),
            Resource::storage_pools(facts),
        ]
    }

    /// A disc as this tail reports it.
    pub(crate) async fn reported(&self, state: &DiscState) -> DiscSpec {
        let mut spec = state.spec.clone();
        let export = state.export.clone();
        let allocated = blocking(move || export.allocated_bytes())
            .await
            .unwrap_or(0);
        spec.allocated = Some(allocated.div_ceil(MIB));
        if let (Some(incoming), Some(server)) = (spec.incoming.as_mut(), state.incoming.as_ref()) {
            incoming.endpoint = Some(server.local_addr().to_string());
        }
        if let Some(m) = &state.mirror {
            spec.migration = Some(m.progress());
        }
        self.report_backups(state, &mut spec).await;
        spec
    }

    pub(crate) async fn notify_disc(&self, name: &ResourceName, spec: DiscSpec) {
        let Some(n) = self.notifier() else { return };
        if let Ok(r) = Resource::new(name.clone(), ResourceValue::Disc(spec)) {
            n.updated(r).await;
        }
    }

    /// Progress while a mirror copies, if the disc is not busy.
    pub(crate) async fn notify_progress(&self, disc: &Disc) {
        let spec = match disc.state.try_lock() {
            Ok(state) => self.reported(&state).await,
            Err(_) => return,
        };
        self.notify_disc(&disc.name, spec).await;
    }

    pub(crate) async fn notify_destroyed(&self, name: ResourceName) {
        let Some(n) = self.notifier() else { return };
        n.destroyed(name).await;
        for r in self.facts().await {
            n.updated(r).await;
        }
    }

    pub(crate) async fn report_disc(&self, disc: &Disc, created: bool) {
        let spec = {
            let state = disc.state.lock().await;
            // Handed over meanwhile (a small disc's mirror can finish
            // between an order and its report): reported destroyed.
            if state.gone {
                return;
            }
            self.reported(&state).await
        };
        let Some(n) = self.notifier() else { return };
        if let Ok(r) = Resource::new(disc.name.clone(), ResourceValue::Disc(spec)) {
            if created {
                n.created(r).await;
            } else {
                n.updated(r).await;
            }
        }
        for r in self.facts().await {
            n.updated(r).await;
        }
    }

    fn disc_address(name: &ResourceName, spec: &DiscSpec) -> Result<IpAddr, OrderError> {
        let bare = spec.address.trim_start_matches('[').trim_end_matches(']');
        bare.parse().map_err(|_| {
            refuse(
                ErrorCode::Invalid,
                format!("{name}: address: {:?} is not an IP address", spec.address),
            )
        })
    }

    fn acl(name: &ResourceName, spec: &DiscSpec) -> Result<Acl, OrderError> {
        Acl::parse(&spec.access_control_list)
            .map_err(|e| refuse(ErrorCode::Invalid, format!("{name}: {e}")))
    }

    /// Adds the disc's address and serves it there.
    pub(crate) async fn serve(
        &self,
        name: &ResourceName,
        state: &mut DiscState,
    ) -> Result<(), OrderError> {
        if state.server.is_some() {
            return Ok(());
        }
        let ip = Self::disc_address(name, &state.spec)?;
        let acl = Self::acl(name, &state.spec)?;
        self.config
            .addresses
            .add(ip)
            .await
            .map_err(|e| failed(name, "adding its address", &e))?;
        let listen = SocketAddr::new(ip, self.config.nbd_port);
        let server = DiscServer::start(state.export.clone(), listen, acl)
            .await
            .map_err(|e| failed(name, "listening", &e))?;
        server.set_limits(state.spec.limits);
        state.server = Some(server);
        Ok(())
    }

    /// Stops serving and removes the disc's address.
    pub(crate) async fn unserve(
        &self,
        name: &ResourceName,
        state: &mut DiscState,
    ) -> Result<(), OrderError> {
        if let Some(server) = state.server.take() {
            let ip = server.local_addr().ip();
            server.stop().await;
            self.config
                .addresses
                .remove(ip)
                .await
                .map_err(|e| failed(name, "removing its address", &e))?;
        }
        Ok(())
    }

    /// Listens for an incoming mirror from `incoming.from`.
    async fn listen_incoming(
        &self,
        name: &ResourceName,
        state: &mut DiscState,
    ) -> Result<(), OrderError> {
        let Some(IncomingMirror { from, .. }) = state.spec.incoming.clone() else {
            return Ok(());
        };
        let acl = Acl::parse(&[from.as_str()]).map_err(|_| {
            refuse(
                ErrorCode::Invalid,
                format!("{name}: incoming.from: {from:?} is not an IP address"),
            )
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let listen = SocketAddr::new(self.config.storage_address, 0);
        // Backups sent along go where this tail would keep the disc's own.
        let store_in = (state.spec.backups.as_ref())
            .and_then(|b| b.pool.clone())
            .unwrap_or_else(|| state.spec.storage_pool.clone());
        let backups = crate::backups::backup_dir(&self.config.pools, &store_in, name)
            .map(|dir| Arc::new(IncomingBackups::new(dir)) as Arc<dyn BackupSink>);
        let server = DiscServer::start_with(
            state.export.clone(),
            listen,
            acl,
            ServeOptions {
                handover: Some(tx),
                write_behind: true,
                backups,
            },
        )
        .await
        .map_err(|e| failed(name, "listening for the mirror", &e))?;
        state.incoming = Some(server);
        mirror::spawn_handover_waiter(self.self_arc(), name.clone(), rx);
        Ok(())
    }

    fn self_arc(&self) -> Arc<TailAgent> {
        self.me
            .upgrade()
            .expect("the agent outlives its own orders")
    }

    fn parse(resource: Resource) -> Result<(ResourceName, String, String, DiscSpec), OrderError> {
        let (name, value) = resource.into_parts();
        let (grade, id) = match &name {
            ResourceName::Disc { grade, id } => (grade.clone(), id.clone()),
            other => {
                return Err(refuse(
                    ErrorCode::Unsupported,
                    format!("{other}: a tail only holds discs"),
                ));
            }
        };
        let ResourceValue::Disc(spec) = value else {
            return Err(refuse(
                ErrorCode::Invalid,
                format!("{name}: not a disc value"),
            ));
        };
        Ok((name, grade, id, spec))
    }

    /// Fetches `image` into the images folder if it is not there and a
    /// templates URL is configured (one fetch at a time: discs imaged from
    /// the same template wait for the first fetch and then find it).
    async fn fetch_template(&self, image: &str) -> anyhow::Result<()> {
        let Some(url) = &self.config.templates_url else {
            return Ok(());
        };
        let path = pools::image_path(&self.config.images, image)?;
        let _one_at_a_time = self.template_fetch.lock().await;
        if path.exists() {
            return Ok(());
        }
        let t0 = std::time::Instant::now();
        let bytes = crate::templates::fetch(url, image, &path).await?;
        tracing::info!(
            image,
            bytes,
            ms = t0.elapsed().as_millis() as u64,
            "template fetched"
        );
        Ok(())
    }

    /// Copies a template if the order asks for a `seq` not yet done.
    async fn maybe_image(
        &self,
        name: &ResourceName,
        state: &mut DiscState,
    ) -> Result<(), OrderError> {
        let Some(t) = state.spec.template.clone() else {
            return Ok(());
        };
        if state.spec.imaged_seq == Some(t.seq) {
            return Ok(());
        }
        let was_serving = state.server.is_some();
        // Nobody may read a half-copied disc.
        self.unserve(name, state).await?;
        let export = state.export.clone();
        let images = self.config.images.clone();
        let image = t.image.clone();
        if let Err(e) = self.fetch_template(&image).await {
            if was_serving {
                self.serve(name, state).await?;
            }
            return Err(failed(name, "fetching the template", e.as_ref()));
        }
        let result = blocking(move || pools::copy_template(&export, &images, &image)).await;
        let outcome = match result {
            Ok(bytes) => {
                tracing::info!(%name, image = t.image, seq = t.seq, bytes, "template copied");
                state.spec.imaged_seq = Some(t.seq);
                Ok(())
            }
            Err(
                e @ (pools::PoolError::NoImage { .. }
                | pools::PoolError::BadImageName { .. }
                | pools::PoolError::ImageTooBig { .. }),
            ) => Err(refuse(ErrorCode::Invalid, format!("{name}: {e}"))),
            Err(e) => Err(failed(name, "copying the template", &e)),
        };
        if was_serving {
            self.serve(name, state).await?;
        }
        outcome
    }

    pub(crate) async fn persist(
        &self,
        disc_path: &std::path::Path,
        name: &ResourceName,
        state: &DiscState,
    ) -> Result<(), OrderError> {
        let mut spec = state.spec.clone();
        spec.allocated = None;
        if let Some(m) = &state.mirror {
            spec.migration = Some(m.progress());
        }
        let record = DiscRecord {
            name: name.to_string(),
            spec,
        };
        let path = disc_path.to_owned();
        blocking(move || pools::write_record(&path, &record))
            .await
            .map_err(|e| failed(name, "recording the order", &e))
    }

    async fn create_disc(&self, resource: Resource) -> Result<(), OrderError> {
        let (name, grade, id, mut spec) = Self::parse(resource)?;
        let pool = self.config.pools.get(&spec.storage_pool).ok_or_else(|| {
            refuse(
                ErrorCode::Invalid,
                format!(
                    "{name}: storage_pool: no pool {:?} on this tail",
                    spec.storage_pool
                ),
            )
        })?;
        if pool.grade != grade {
            return Err(refuse(
                ErrorCode::Invalid,
                format!(
                    "{name}: storage_pool: pool {:?} is of grade {:?}, not {grade:?}",
                    pool.name, pool.grade
                ),
            ));
        }
        if spec.size == 0 {
            return Err(refuse(
                ErrorCode::Invalid,
                format!("{name}: size: must be at least 1 MiB"),
            ));
        }
        Self::disc_address(&name, &spec)?;
        Self::acl(&name, &spec)?;
        if spec.migrate_to.is_some() && spec.incoming.is_some() {
            return Err(refuse(
                ErrorCode::Invalid,
                format!("{name}: migrate_to and incoming together"),
            ));
        }
        if self.disc(&name).is_some() {
            return Err(refuse(
                ErrorCode::AlreadyExists,
                format!("{name} exists here"),
            ));
        }
        let path = self
            .config
            .pools
            .disc_path(&pool.name, &id)
            .expect("pool exists");
        let size = spec.size * MIB;
        let p = path.clone();
        blocking(move || pools::create_disc(&p, size))
            .await
            .map_err(|e| match &e {
                pools::PoolError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    refuse(
                        ErrorCode::AlreadyExists,
                        format!("{name}: {}", path.display()),
                    )
                }
                _ => failed(&name, "creating its file", &e),
            })?;
        // Reported fields are ours to fill, never the brain's. A mirror
        // destination receives the source's content, template copy
        // included: the template it is created with counts as copied.
        spec.imaged_seq = spec
            .incoming
            .as_ref()
            .and(spec.template.as_ref())
            .map(|t| t.seq);
        spec.allocated = None;
        spec.migration = None;
        let result = async {
            let export = Export::open(name.to_string(), &path, false)
                .map_err(|e| failed(&name, "opening its file", &e))?;
            let mut state = DiscState {
                spec,
                export: Arc::new(export),
                server: None,
                incoming: None,
                mirror: None,
                migrate_seq: 0,
                gone: false,
            };
            let brought_up = async {
                if state.spec.incoming.is_some() {
                    self.listen_incoming(&name, &mut state).await?;
                } else {
                    self.maybe_image(&name, &mut state).await?;
                    self.serve(&name, &mut state).await?;
                }
                self.persist(&path, &name, &state).await
            }
            .await;
            if let Err(e) = brought_up {
                // Nothing may keep serving a file about to be deleted.
                if let Some(s) = state.incoming.take() {
                    s.stop().await;
                }
                let _ = self.unserve(&name, &mut state).await;
                return Err(e);
            }
            Ok(state)
        }
        .await;
        let state = match result {
            Ok(s) => s,
            Err(e) => {
                let p = path.clone();
                let _ = blocking(move || pools::remove_disc(&p)).await;
                return Err(e);
            }
        };
        let disc = Arc::new(Disc {
            name: name.clone(),
            pool: pool.name.clone(),
            path,
            state: tokio::sync::Mutex::new(state),
        });
        self.discs
            .lock()
            .expect("discs poisoned")
            .insert(name.clone(), disc.clone());
        tracing::info!(%name, "disc created");
        if let Some(order) = disc.state.lock().await.spec.migrate_to.clone() {
            tracing::warn!(%name, seq = order.seq, "migrate_to in a create is ignored: a new disc has nothing to move");
        }
        self.report_disc(&disc, true).await;
        Ok(())
    }

    async fn update_disc(&self, resource: Resource) -> Result<(), OrderError> {
        let (name, _, _, new) = Self::parse(resource)?;
        let disc = self
            .disc(&name)
            .ok_or_else(|| refuse(ErrorCode::NotFound, format!("no {name} here")))?;
        {
            let mut state = disc.state.lock().await;
            if state.gone {
                return Err(refuse(
                    ErrorCode::NotFound,
                    format!("{name} was handed over to another tail"),
                ));
            }
            self.apply_update(&disc, &mut state, new).await?;
            self.persist(&disc.path, &name, &state).await?;
        }
        self.report_disc(&disc, false).await;
        Ok(())
    }

    async fn apply_update(
        &self,
        disc: &Arc<Disc>,
        state: &mut DiscState,
        new: DiscSpec,
    ) -> Result<(), OrderError> {
        let name = &disc.name;
        let old = state.spec.clone();
        if new.storage_pool != old.storage_pool {
            return Err(refuse(
                ErrorCode::Invalid,
                format!(
                    "{name}: storage_pool: cannot change from {:?} (migrate instead)",
                    old.storage_pool
                ),
            ));
        }
        if new.incoming.is_some() != old.incoming.is_some() {
            return Err(refuse(
                ErrorCode::Invalid,
                format!(
                    "{name}: incoming: only a create can make a disc a mirror destination, and only the handover ends it"
                ),
            ));
        }
        let uncertain = old
            .migration
            .as_ref()
            .is_some_and(|m| m.state == bigv_spine::resource::MigrationState::Uncertain);
        let new_ip = Self::disc_address(name, &new)?;
        let new_acl = Self::acl(name, &new)?;
        if new.size == 0 {
            return Err(refuse(
                ErrorCode::Invalid,
                format!("{name}: size: must be at least 1 MiB"),
            ));
        }
        if new.size < old.size && !new.allow_shrink {
            return Err(refuse(
                ErrorCode::Invalid,
                format!(
                    "{name}: size: {} MiB is below the current {} MiB; shrinking needs allow_shrink",
                    new.size, old.size
                ),
            ));
        }
        // Cancel a migration the brain no longer wants, before resizing.
        let wants_migration = new.migrate_to.as_ref();
        if let Some(m) = &state.mirror
            && wants_migration.is_none_or(|w| w.seq != m.seq())
        {
            let m = state.mirror.take().expect("checked");
            let progress = m.progress.clone();
            m.cancel().await;
            state.spec.migration = Some(progress.lock().expect("progress poisoned").clone());
        }
        if new.size != old.size && state.mirror.is_some() {
            return Err(refuse(
                ErrorCode::Invalid,
                format!("{name}: size: cannot change while the disc migrates"),
            ));
        }
        if new.size != old.size {
            let export = state.export.clone();
            let bytes = new.size * MIB;
            blocking(move || export.resize(bytes))
                .await
                .map_err(|e| failed(name, "resizing", &e))?;
            tracing::info!(%name, from = old.size, to = new.size, "resized");
        }
        let keep = state.spec.clone();
        state.spec = DiscSpec {
            imaged_seq: keep.imaged_seq,
            migration: keep.migration,
            backups: crate::backups::carry(keep.backups, new.backups.clone()),
            allocated: None,
            incoming: match (new.incoming.clone(), keep.incoming) {
                (Some(n), Some(_)) => Some(n),
                (n, _) => n,
            },
            ..new.clone()
        };
        if old.incoming.is_none() {
            let moved = state
                .server
                .as_ref()
                .is_some_and(|s| s.local_addr().ip() != new_ip);
            if moved {
                self.unserve(name, state).await?;
            }
            self.maybe_image(name, state).await?;
            self.apply_backups(disc, state).await?;
            if uncertain && wants_migration.is_none() {
                tracing::warn!(%name, "resuming service after an unconfirmed handover, as ordered");
                state.spec.migration = None;
            }
            let resumable = !state
                .spec
                .migration
                .as_ref()
                .is_some_and(|m| m.state == bigv_spine::resource::MigrationState::Uncertain);
            if resumable {
                self.serve(name, state).await?;
            }
            if let Some(server) = &state.server {
                server.set_acl(new_acl);
                server.set_limits(new.limits);
            }
            if let Some(order) = new.migrate_to.clone()
                && state.mirror.is_none()
                && order.seq > state.migrate_seq
                && resumable
            {
                state.migrate_seq = order.seq;
                state.spec.migration = None;
                state.mirror = Some(mirror::start(
                    self.self_arc(),
                    disc.clone(),
                    state.export.clone(),
                    order,
                ));
            }
        }
        Ok(())
    }

    async fn remove_disc(&self, name: ResourceName) -> Result<(), OrderError> {
        let disc = self
            .disc(&name)
            .ok_or_else(|| refuse(ErrorCode::NotFound, format!("no {name} here")))?;
        {
            let mut state = disc.state.lock().await;
            if state.gone {
                return Err(refuse(
                    ErrorCode::NotFound,
                    format!("{name} was handed over to another tail"),
                ));
            }
            if let Some(m) = state.mirror.take() {
                m.cancel().await;
            }
            if let Some(incoming) = state.incoming.take() {
                incoming.stop().await;
            }
            self.unserve(&name, &mut state).await?;
            let path = disc.path.clone();
            blocking(move || pools::remove_disc(&path))
                .await
                .map_err(|e| failed(&name, "deleting its file", &e))?;
            let (pools, n) = (self.config.pools.clone(), name.clone());
            blocking(move || crate::backups::delete_all(&pools, &n))
                .await
                .map_err(|e| failed(&name, "deleting its backups", &e))?;
        }
        self.forget(&name);
        tracing::info!(%name, "disc removed");
        if let Some(n) = self.notifier() {
            n.destroyed(name).await;
            for r in self.facts().await {
                n.updated(r).await;
            }
        }
        Ok(())
    }
}

impl NodeHandler for TailAgent {
    async fn snapshot(&self) -> Vec<Resource> {
        let mut all = self.facts().await;
        let discs: Vec<Arc<Disc>> = self
            .discs
            .lock()
            .expect("discs poisoned")
            .values()
            .cloned()
            .collect();
        for disc in discs {
            let state = disc.state.lock().await;
            let spec = self.reported(&state).await;
            if let Ok(r) = Resource::new(disc.name.clone(), ResourceValue::Disc(spec)) {
                all.push(r);
            }
        }
        all
    }

    async fn create(&self, resource: Resource) -> Result<(), OrderError> {
        self.create_disc(resource).await
    }

    async fn update(&self, resource: Resource) -> Result<(), OrderError> {
        self.update_disc(resource).await
    }

    async fn remove(&self, name: ResourceName) -> Result<(), OrderError> {
        self.remove_disc(name).await
    }
}

/// 1, 5 and 15 minute load averages from `/proc/loadavg`.
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|s| s.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}
