//! Runs the agent, restarts it with backoff when it dies, reaps every
//! child (init inherits orphans: qemu processes whose agent died keep
//! running and are only reaped once they exit by themselves), and turns
//! signals and the agent's power requests into an orderly shutdown.
//!
//! Children are never waited for individually: one `waitpid(-1)` loop on
//! SIGCHLD reaps them all and recognises the agent by its PID.

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use crate::agent::{AgentExit, PowerAction, classify_exit};
use crate::backoff::Backoff;

pub struct AgentSpec {
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub backoff: Backoff,
}

struct Running {
    pid: Pid,
    started: Instant,
}

/// Reaps every exited child; returns (pid, exit code or None if killed).
fn reap() -> Vec<(Pid, Option<i32>)> {
    let mut out = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => out.push((pid, Some(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                tracing::debug!(%pid, ?sig, "child killed");
                out.push((pid, None));
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return out,
            Ok(_) => {}
        }
    }
}

fn spawn(spec: &AgentSpec) -> std::io::Result<Pid> {
    use std::os::unix::process::CommandExt;
    let child = Command::new(&spec.path)
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        // Its own process group: signals meant for it reach neither init
        // nor, later, the qemu processes it starts.
        .process_group(0)
        .spawn()?;
    // The Child handle is dropped without waiting: the reaper owns exits.
    Ok(Pid::from_raw(child.id() as i32))
}

/// Supervises until a power action is decided; returns it. Signals:
/// SIGTERM and SIGINT (ctrl-alt-del) reboot, SIGUSR2 and SIGPWR power off.
pub async fn supervise(spec: AgentSpec) -> std::io::Result<PowerAction> {
    let mut sigchld = signal(SignalKind::child())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigusr2 = signal(SignalKind::user_defined2())?;
    let mut sigpwr = signal(SignalKind::from_raw(libc::SIGPWR))?;

    let mut backoff = spec.backoff.clone();
    let mut agent: Option<Running> = None;
    let mut restart_at = Some(Instant::now());
    loop {
        let start = async {
            match restart_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = start => {
                restart_at = None;
                match spawn(&spec) {
                    Ok(pid) => {
                        tracing::info!(%pid, agent = spec.path, "agent started");
                        agent = Some(Running { pid, started: Instant::now() });
                    }
                    Err(e) => {
                        let delay = backoff.after_exit(Duration::ZERO);
                        tracing::error!(agent = spec.path, error = %e, ?delay, "agent did not start");
                        restart_at = Some(Instant::now() + delay);
                    }
                }
            }
            _ = sigchld.recv() => {
                for (pid, code) in reap() {
                    let Some(running) = agent.as_ref().filter(|a| a.pid == pid) else {
                        tracing::debug!(%pid, ?code, "reaped a child that was not the agent");
                        continue;
                    };
                    let ran = running.started.elapsed();
                    agent = None;
                    match classify_exit(code) {
                        AgentExit::Power(action) => {
                            tracing::info!(?action, "the agent asked for a power action");
                            return Ok(action);
                        }
                        AgentExit::Restart => {
                            let delay = backoff.after_exit(ran);
                            tracing::warn!(?code, ran = ?ran, ?delay, "agent exited; restarting");
                            restart_at = Some(Instant::now() + delay);
                        }
                    }
                }
            }
            _ = sigterm.recv() => return Ok(stop(agent, PowerAction::Reboot).await),
            _ = sigint.recv() => return Ok(stop(agent, PowerAction::Reboot).await),
            _ = sigusr2.recv() => return Ok(stop(agent, PowerAction::Poweroff).await),
            _ = sigpwr.recv() => return Ok(stop(agent, PowerAction::Poweroff).await),
        }
    }
}

async fn stop(agent: Option<Running>, action: PowerAction) -> PowerAction {
    tracing::info!(?action, "signal received");
    if let Some(a) = agent {
        let _ = kill(a.pid, Signal::SIGTERM);
    }
    action
}

/// Ends every other process: SIGTERM, up to `grace` for them to go, then
/// SIGKILL. Only for PID 1 at shutdown (`kill(-1)` means "everyone").
pub async fn end_all_processes(grace: Duration) {
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        reap();
        // ECHILD: no children left.
        if matches!(
            waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)),
            Err(nix::Error::ECHILD)
        ) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    tokio::time::sleep(Duration::from_millis(200)).await;
    reap();
}
