//! A running brain: store, spine listener, HTTP API and background tasks,
//! started together and stopped together. `bigv-brain serve` and the
//! integration tests both start it through [`Brain::start`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bigv_spine::tls::{BrainIdentity, Fingerprint};
use bigv_spine::{Keepalive, ServerConfig, SpineServer};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use sha2::{Digest, Sha256};

use crate::api::tls::{ApiTls, TlsListener};
use crate::api::{self, AppState};
use crate::boot::images::NodeImageStore;
use crate::boot::policy::BootParams;
use crate::boot::task::BootTask;
use crate::boot::{self, BootServicesConfig};
use crate::clock::Clock;
use crate::model::{Db, Level, Privilege, PrivilegeId, Settings, Target, User, UserId};
use crate::reconciler::Reconciler;

#[derive(Clone)]
pub struct BrainConfig {
    pub data_dir: PathBuf,
    pub api_addr: SocketAddr,
    pub spine_addr: SocketAddr,
    /// Credentials for the first `cluster_su`, used only while the store
    /// has no users at all.
    pub bootstrap: Option<(String, String)>,
    /// Settings for a brand-new store (later changes go through the API).
    pub initial_settings: Settings,
    pub keepalive: Keepalive,
    pub clock: Clock,
    /// DHCP, TFTP, RA and boot HTTP for the boot LAN; `None` runs none.
    pub boot: Option<BootServicesConfig>,
    /// Serve the API over HTTPS with this certificate; `None` is plain HTTP.
    pub api_tls: Option<ApiTls>,
}

impl BrainConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        BrainConfig {
            data_dir: data_dir.into(),
            api_addr: "127.0.0.1:0".parse().expect("literal address"),
            spine_addr: "127.0.0.1:0".parse().expect("literal address"),
            bootstrap: None,
            initial_settings: Settings::default(),
            keepalive: Keepalive::default(),
            clock: Clock::system(),
            boot: None,
            api_tls: None,
        }
    }
}

pub struct Brain {
    pub db: Arc<Db>,
    pub spine: Arc<SpineServer>,
    pub api_addr: SocketAddr,
    pub spine_addr: SocketAddr,
    /// What nodes must pin to trust this brain's spine certificate.
    pub fingerprint: Fingerprint,
    pub clock: Clock,
    pub reconcile: Arc<Notify>,
    pub node_images: Arc<NodeImageStore>,
    /// The boot HTTP server's address, when the boot services run.
    pub boot_http_addr: Option<SocketAddr>,
    /// Whether the API is served over HTTPS.
    pub api_https: bool,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Brain {
    pub async fn start(config: BrainConfig) -> anyhow::Result<Brain> {
        let dir = config.data_dir.clone();
        let db = tokio::task::spawn_blocking(move || Db::open(&dir))
            .await?
            .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
        let db = Arc::new(db);
        first_start(&db, &config).await?;

        let identity = spine_identity(&config.data_dir)?;
        let fingerprint = identity.fingerprint();
        // Before anything starts, so bad certificate files stop the brain here.
        let api_tls = match &config.api_tls {
            Some(tls) => Some(
                tls.server_config(&identity)
                    .context("setting up HTTPS for the API")?,
            ),
            None => None,
        };
        let spine_config = ServerConfig {
            keepalive: config.keepalive,
            tls: Some(identity.server_config()?),
            ..ServerConfig::default()
        };
        let (spine, events) = SpineServer::bind(config.spine_addr, spine_config)
            .await
            .with_context(|| format!("listening for the spine on {}", config.spine_addr))?;
        let spine = Arc::new(spine);
        // Heads learn the fence timeout from `welcome` (settings changes
        // reach them at their next session: `reconciler/fencing.rs`).
        spine.set_fence_timeout(Some(db.read().settings.fence_timeout_secs));
        let spine_addr = spine.local_addr();

        let shutdown = CancellationToken::new();
        let node_images = Arc::new(NodeImageStore::new(&config.data_dir));
        {
            let images = node_images.clone();
            tokio::task::spawn_blocking(move || images.rescan()).await?;
        }
        // OS templates (customer disc images), served to tails over the
        // boot HTTP server and uploaded through /admin/images/{name}/content.
        let templates = config.data_dir.join(crate::api::admin::TEMPLATES_DIR);
        std::fs::create_dir_all(&templates)
            .with_context(|| format!("creating {}", templates.display()))?;
        let mut tasks = vec![];
        let mut boot_http_addr = None;
        let boot_services = match &config.boot {
            Some(boot) => {
                let params = BootParams {
                    spine: boot
                        .spine
                        .unwrap_or(SocketAddr::new(boot.address.into(), spine_addr.port())),
                    cert_sha256: Sha256::digest(&identity.cert_der).into(),
                    extra_args: boot.extra_args.clone(),
                };
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let services = boot::start(
                    boot,
                    &db,
                    &node_images,
                    params,
                    templates.clone(),
                    &shutdown,
                    tx,
                )
                .await?;
                boot_http_addr = Some(services.http_addr);
                tasks.extend(services.tasks);
                Some((services.policy, rx, services.params))
            }
            None => None,
        };
        tasks.push(
            BootTask {
                db: db.clone(),
                images: node_images.clone(),
                clock: config.clock.clone(),
                shutdown: shutdown.child_token(),
                services: boot_services,
            }
            .spawn(),
        );

        let reconcile = Arc::new(Notify::new());
        let state = AppState {
            db: db.clone(),
            clock: config.clock.clone(),
            spine: spine.clone(),
            reconcile: reconcile.clone(),
            node_images: node_images.clone(),
            templates: Arc::new(templates),
        };
        let listener = tokio::net::TcpListener::bind(config.api_addr)
            .await
            .with_context(|| format!("listening for the API on {}", config.api_addr))?;
        let api_addr = listener.local_addr()?;
        let reconciler = Reconciler::new(
            db.clone(),
            spine.clone(),
            config.clock.clone(),
            reconcile.clone(),
            events,
            shutdown.child_token(),
        )
        .spawn();
        let stop = shutdown.clone();
        let router = api::router(state);
        let http = match api_tls {
            None => tokio::spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "API server failed");
                }
            }),
            Some(tls) => {
                let listener = TlsListener::new(listener, tls)?;
                tokio::spawn(async move {
                    let served = axum::serve(listener, router)
                        .with_graceful_shutdown(stop.cancelled_owned())
                        .await;
                    if let Err(e) = served {
                        tracing::error!(error = %e, "API server failed");
                    }
                })
            }
        };
        tracing::info!(%api_addr, %spine_addr, %fingerprint, "brain started");
        Ok(Brain {
            db,
            spine,
            api_addr,
            spine_addr,
            fingerprint,
            clock: config.clock,
            reconcile,
            node_images,
            boot_http_addr,
            api_https: config.api_tls.is_some(),
            shutdown,
            tasks: {
                tasks.extend([http, reconciler]);
                tasks
            },
        })
    }

    /// Stops serving and waits for the background tasks. Nodes lose the
    /// spine; VMs keep running (heads fence only after their timeout).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        tracing::info!("brain stopped");
    }
}

/// On a store with no users, creates the bootstrap `cluster_su`; on a new
/// store, writes the initial settings.
async fn first_start(db: &Arc<Db>, config: &BrainConfig) -> anyhow::Result<()> {
    let bootstrap = config.bootstrap.clone();
    let settings = config.initial_settings.clone();
    db.write(move |tx| {
        let model = tx.model();
        if model.users.is_empty() && model.accounts.is_empty() && model.nodes.is_empty() {
            tx.put_settings(settings)?;
        }
        if let (Some((username, password)), true) = (bootstrap, tx.model().users.is_empty()) {
            let user_id = UserId(tx.new_id::<User>()?);
            tx.put(User {
                id: user_id,
                username: username.clone(),
                email: None,
                authorized_keys: String::new(),
                password_hash: Some(crate::password::hash(&password)),
            })?;
            let privilege_id = PrivilegeId(tx.new_id::<Privilege>()?);
            tx.put(Privilege {
                id: privilege_id,
                user_id,
                level: Level::ClusterSu,
                target: Target::Cluster,
                api_key_id: None,
                password_required: false,
                yubikey_required: false,
                yubikey_otp_max_age: None,
                ip_restrictions: None,
                creating_username: None,
            })?;
            tracing::info!(%username, "created the bootstrap cluster_su user");
        }
        Ok::<_, crate::model::DbError>(())
    })
    .await?;
    Ok(())
}

/// The spine certificate, minted on first start and kept in the data dir
/// so nodes' pinned fingerprints stay valid across brain restarts.
fn spine_identity(dir: &Path) -> anyhow::Result<BrainIdentity> {
    let cert = dir.join("spine-cert.der");
    let key = dir.join("spine-key.der");
    if cert.exists() && key.exists() {
        return Ok(BrainIdentity {
            cert_der: std::fs::read(&cert)
                .with_context(|| format!("reading {}", cert.display()))?,
            key_pkcs8_der: std::fs::read(&key)
                .with_context(|| format!("reading {}", key.display()))?,
        });
    }
    let identity = BrainIdentity::generate(&["bigv-brain"])?;
    write_private(&key, &identity.key_pkcs8_der)?;
    std::fs::write(&cert, &identity.cert_der)
        .with_context(|| format!("writing {}", cert.display()))?;
    Ok(identity)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
