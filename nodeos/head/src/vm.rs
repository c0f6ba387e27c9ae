//! One VM's qemu process: start it, find it again after an agent
//! restart, tell whether it still lives, kill it.
//!
//! qemu runs in its own process group so a signal to the agent (^C, a
//! crash of its process group) does not reach the VMs. Everything the
//! next agent needs to take a VM over lives in its run directory:
//! `qemu.pid`, `qmp.sock` and `spec.json` (the resource as reported).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long a qemu whose monitor broke while it started gets to exit
/// (so its log is reported, not the broken connection).
const EXIT_GRACE: Duration = Duration::from_secs(3);

use bigv_spine::resource::VmSpec;
use tokio::sync::mpsc;

use crate::argv::{self, QemuSettings, VmPaths};
use crate::qmp::{Event, Qmp, QmpError};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Args(#[from] argv::ArgError),
    #[error(transparent)]
    Seed(#[from] crate::seed::SeedError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {qemu}")]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu exited at once ({status}): {log}")]
    EarlyExit { status: String, log: String },
    #[error("qemu's QMP")]
    Qmp(#[from] QmpError),
    #[error("no live qemu behind {0}")]
    NotRunning(PathBuf),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
    let path = path.to_owned();
    move |source| VmError::Io { what, path, source }
}

/// A qemu process the agent holds a QMP connection to.
pub struct Running {
    pub pid: i32,
    pub qmp: Qmp,
    pub events: mpsc::UnboundedReceiver<Event>,
}

/// Writes the reported spec where the next agent will find it; readable by
/// root only (it holds password hashes).
pub fn save_spec(paths: &VmPaths, spec: &VmSpec) -> Result<(), VmError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = paths.spec.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(spec).expect("a VmSpec always serialises");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&text))
        .map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, &paths.spec).map_err(io("renaming", &paths.spec))
}

pub fn load_spec(paths: &VmPaths) -> Result<VmSpec, VmError> {
    let text = std::fs::read(&paths.spec).map_err(io("reading", &paths.spec))?;
    serde_json::from_slice(&text).map_err(|e| VmError::Io {
        what: "parsing",
        path: paths.spec.clone(),
        source: std::io::Error::other(e),
    })
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// Starts qemu paused for `vm.NAME`, connects QMP, and returns it still
/// paused (the caller resumes it once it watches the events).
pub async fn spawn(
    qemu: &Path,
    name: &str,
    spec: &VmSpec,
    settings: &QemuSettings,
    paths: &VmPaths,
) -> Result<Running, VmError> {
    let args = argv::command_line(name, spec, settings, paths)?;
    std::fs::create_dir_all(&paths.dir).map_err(io("creating", &paths.dir))?;
    if let Some(parent) = paths.serial_log.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    for stale in [&paths.qmp, &paths.serial, &paths.vnc, &paths.pidfile] {
        let _ = std::fs::remove_file(stale);
    }
    // The seed drive is rebuilt from the resource at every start, so a
    // migration's destination gets the identical bytes.
    if let Some(opts) = &spec.imager_options {
        let hostname = if spec.display_name.is_empty() {
            name
        } else {
            &spec.display_name
        };
        crate::seed::write(&paths.seed, opts, hostname)?;
    }
    save_spec(paths, spec)?;
    let log = std::fs::File::create(&paths.qemu_log).map_err(io("creating", &paths.qemu_log))?;
    let log2 = log.try_clone().map_err(io("opening", &paths.qemu_log))?;
    tracing::info!(vm = name, qemu = %qemu.display(), args = ?args, "starting qemu");
    let mut child = tokio::process::Command::new(qemu)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: the agent's signals are not the VM's.
        .process_group(0)
        .spawn()
        .map_err(|source| VmError::Spawn {
            qemu: qemu.to_owned(),
            source,
        })?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    // Connect while watching for an early exit (bad argument, no disc).
    let connected = tokio::select! {
        status = child.wait() => {
            let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            return Err(VmError::EarlyExit { status, log: log_tail(&paths.qemu_log) });
        }
        c = Qmp::connect(&paths.qmp, Duration::from_secs(60)) => c,
    };
    let (qmp, events) = match connected {
        Ok(c) => c,
        Err(e) => {
            // qemu opens its monitor early and may still die while it
            // sets up devices (a missing ROM or keymap, a disc it cannot
            // open): then its own log, not the broken QMP, says why.
            if let Ok(Ok(status)) = tokio::time::timeout(EXIT_GRACE, child.wait()).await {
                return Err(VmError::EarlyExit {
                    status: status.to_string(),
                    log: log_tail(&paths.qemu_log),
                });
            }
            let _ = child.start_kill();
            return Err(e.into());
        }
    };
    // Reap it whenever it exits, even after this agent lets go of it.
    let vm = name.to_owned();
    tokio::spawn(async move {
        match child.wait().await {
            Ok(status) => tracing::info!(vm, %status, "qemu exited"),
            Err(e) => tracing::warn!(vm, error = %e, "waiting for qemu"),
        }
    });
    Ok(Running { pid, qmp, events })
}

/// Takes over a qemu a previous agent started: its pidfile must name a
/// live process whose command line holds this VM's QMP socket.
pub async fn adopt(paths: &VmPaths) -> Result<Running, VmError> {
    let text = std::fs::read_to_string(&paths.pidfile).map_err(io("reading", &paths.pidfile))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| VmError::NotRunning(paths.pidfile.clone()))?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let needle = paths.qmp.to_string_lossy().replace(',', ",,");
    let ours = String::from_utf8_lossy(&cmdline).contains(&needle);
    if !alive(pid) || !ours {
        return Err(VmError::NotRunning(paths.pidfile.clone()));
    }
    let (qmp, events) = Qmp::connect(&paths.qmp, Duration::from_secs(5)).await?;
    Ok(Running { pid, qmp, events })
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the last ')' (the command name may hold any byte).
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X"))
}

pub fn kill(pid: i32) {
    if pid > 0 {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Waits up to `limit` for `pid` to end.
pub async fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_live_processes_from_dead_ones() {
        assert!(alive(std::process::id() as i32));
        assert!(!alive(0));
        assert!(!alive(i32::MAX));
    }

    #[test]
    fn spec_survives_a_round_trip_on_disc() {
        let dir = tempfile::tempdir().unwrap();
        let paths = VmPaths::new(dir.path(), dir.path(), "t1");
        std::fs::create_dir_all(&paths.dir).unwrap();
        let spec = VmSpec {
            memory: 128,
            cores: 1,
            keymap: "en-gb".into(),
            started_at: Some(42),
            ..Default::default()
        };
        save_spec(&paths, &spec).unwrap();
        assert_eq!(load_spec(&paths).unwrap(), spec);
        // Password hashes in it: root only, also when written again.
        save_spec(&paths, &spec).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&paths.spec).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
