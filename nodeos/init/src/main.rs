//! `bigv-init`: PID 1 of a BigV head or tail. See docs/boot.md, "Init".

use std::path::Path;
use std::time::{Duration, Instant};

use bigv_init::agent::{self, PowerAction};
use bigv_init::cmdline::{self, BootConfig};
use bigv_init::dhcp::Client;
use bigv_init::net::{self, Net};
use bigv_init::supervise::{self, AgentSpec};
use bigv_init::{disc, fatal, system};

/// How long the boot NIC may take to appear after its driver loads, and
/// DHCP to answer, before init gives up and reboots.
const NIC_WAIT: Duration = Duration::from_secs(20);
const DHCP_WAIT: Duration = Duration::from_secs(120);
/// How long a data disc may take to appear after virtio_blk/ahci/nvme load.
const DISC_WAIT: Duration = Duration::from_secs(10);
/// How long a head waits for SLAAC to give its boot NIC a global IPv6
/// address (its storage address: discs are served on IPv6 addresses).
const IPV6_WAIT: Duration = Duration::from_secs(15);

fn main() {
    fatal::install_panic_hook();
    if std::process::id() != 1 {
        eprintln!("bigv-init: must run as PID 1 (the kernel's init)");
        std::process::exit(2);
    }
    // Before anything that could read randomness or write to the console.
    let mounted = system::mount_filesystems();
    system::ensure_console();
    let logs = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_env_filter(tracing_subscriber::EnvFilter::try_new("info").unwrap_or_default());
    // The console, and a file the agent sends on to the brain.
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(agent::INIT_LOG)
    {
        Ok(f) => {
            use tracing_subscriber::fmt::writer::MakeWriterExt;
            logs.with_writer(std::io::stderr.and(std::sync::Mutex::new(f)))
                .init()
        }
        Err(_) => logs.with_writer(std::io::stderr).init(),
    }
    if let Err(e) = mounted {
        fatal::fatal(&Chain(&e));
    }
    let action = match run() {
        Ok(action) => action,
        Err(e) => fatal::fatal(&Chain(e.as_ref())),
    };
    shutdown(action);
}

/// An error with its sources, on one line.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

fn run() -> Result<PowerAction, BoxError> {
    let t0 = Instant::now();
    let line = std::fs::read_to_string("/proc/cmdline")?;
    let config = cmdline::parse(&line)?;
    tracing::info!(
        role = %config.role, version = config.version, spine = %config.spine,
        bootif = ?config.bootif.map(|m| m.to_string()),
        "BigV init starting"
    );

    let wanted = system::wanted_modules(Path::new("/etc/bigv/modules.d"));
    let (loaded, failed) = system::load_modules(Path::new("/"), &wanted)?;
    tracing::info!(
        loaded,
        failed,
        ms = t0.elapsed().as_millis() as u64,
        "kernel modules loaded"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async_main(config, t0))
}

/// Mounts the configured data discs; a pool on a disc that failed is
/// dropped (its directory would otherwise be in memory).
fn prepare_discs(config: &mut BootConfig) {
    for d in config.discs.clone() {
        if let Err(e) = disc::prepare(&d, DISC_WAIT) {
            tracing::error!(error = %e, "data disc left out; its pools are not served");
            config
                .pools
                .retain(|p| Path::new(&p.dir).strip_prefix(&d.dir).is_err());
        }
    }
}

async fn async_main(mut config: BootConfig, t0: Instant) -> Result<PowerAction, BoxError> {
    let net = Net::connect()?;
    net.loopback_up().await?;
    let nic = net.find_boot_nic(config.bootif, NIC_WAIT).await?;
    net.up(nic.index).await?;
    tracing::info!(iface = nic.name, mac = %nic.mac, "boot NIC up");

    let sock = net::dhcp_socket(&nic.name)?;
    let mut client = Client::new(nic.mac, 0);
    let lease = net::obtain_lease(&sock, &mut client, &nic.name, DHCP_WAIT).await?;
    net.apply(&nic, &lease).await?;
    tracing::info!(
        address = %lease.address, prefix = lease.prefix_len, router = ?lease.router,
        server = %lease.server, ms = t0.elapsed().as_millis() as u64,
        "DHCP lease applied"
    );
    // Blocking, on purpose: nothing else needs this thread yet.
    prepare_discs(&mut config);
    let hostname = agent::hostname(config.role, &nic, lease.hostname.as_deref());
    system::set_hostname(&hostname);

    // The version this image was built as; the brain compares it with the
    // one it expected (bigv.version) and flags a mismatch.
    let image_version = std::fs::read_to_string("/etc/bigv/version")
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| config.version.clone());
    if image_version != config.version {
        tracing::warn!(
            running = image_version,
            expected = config.version,
            "this image is not the version the brain expects"
        );
    }
    let storage = match (&config.storage, config.role) {
        (Some(lan), _) => {
            let (storage_nic, address) = net.storage_up(lan, NIC_WAIT).await?;
            tracing::info!(iface = storage_nic.name, %address, "storage NIC up");
            agent::Storage::Own {
                nic: storage_nic,
                address,
            }
        }
        (None, cmdline::Role::Head) => {
            let found = net::wait_global_ipv6(&nic.name, IPV6_WAIT).await;
            match found {
                Some(a) => tracing::info!(address = %a, "global IPv6 address (storage)"),
                None => tracing::warn!(
                    secs = IPV6_WAIT.as_secs(),
                    "no global IPv6 address on the boot NIC: discs (IPv6) will be out of reach"
                ),
            }
            agent::Storage::BootLan { ipv6: found }
        }
        (None, cmdline::Role::Tail) => agent::Storage::BootLan { ipv6: None },
    };
    let env = agent::agent_env(&config, &image_version, &nic, lease.address, &storage);
    for (k, v) in &env {
        if k == "BIGV_POOLS" {
            for pool in v.split(',') {
                if let Some(dir) = pool.splitn(3, ':').nth(2) {
                    let _ = std::fs::create_dir_all(dir);
                }
            }
        }
    }
    let renew = tokio::spawn(net::keep_lease(net, nic, sock, client));

    let spec = AgentSpec {
        path: config.role.agent_path().to_owned(),
        args: vec!["run".to_owned()],
        env,
        backoff: Default::default(),
    };
    let action = supervise::supervise(spec).await?;
    renew.abort();
    tracing::info!(?action, "stopping every process");
    supervise::end_all_processes(Duration::from_secs(10)).await;
    Ok(action)
}

fn shutdown(action: PowerAction) -> ! {
    system::sync_and_unmount();
    let mode = match action {
        PowerAction::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
        PowerAction::Poweroff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
    };
    eprintln!("bigv-init: {action:?}");
    let err = nix::sys::reboot::reboot(mode);
    fatal::fatal(&format!("reboot(2) failed: {err:?}"))
}
