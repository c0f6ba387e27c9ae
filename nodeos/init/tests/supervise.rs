//! The supervisor with real processes. The test process makes itself a
//! child subreaper, so orphans come to it exactly as they come to PID 1.
//! One test function: supervisors reap with `waitpid(-1)` and would steal
//! each other's children if they ran in parallel.

use std::path::Path;
use std::time::Duration;

use bigv_init::agent::PowerAction;
use bigv_init::backoff::Backoff;
use bigv_init::supervise::{AgentSpec, supervise};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A shell script standing in for the agent: it counts its starts in
/// `$DIR/count` and behaves by start number.
const AGENT: &str = r#"#!/bin/sh
n=$(cat "$DIR/count" 2>/dev/null || echo 0)
n=$((n + 1))
echo $n > "$DIR/count"
case $n in
  1) sleep 30 & echo $! > "$DIR/orphan"; exit 3 ;;   # crash, leaving a child
  2) kill -KILL $$ ;;                               # killed by a signal
  3) exit 0 ;;                                      # exits unasked
  *) exit 10 ;;                                     # the brain ordered a reboot
esac
"#;

fn spec(dir: &Path, script: &str) -> AgentSpec {
    let path = dir.join("agent.sh");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    AgentSpec {
        path: path.display().to_string(),
        args: vec!["run".into()],
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("DIR".into(), dir.display().to_string()),
        ],
        backoff: Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(400),
            Duration::from_secs(60),
        ),
    }
}

fn read_count(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("count"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn restarts_crashed_agents_keeps_orphans_and_obeys_power_requests() {
    // SAFETY: prctl with integer arguments.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // 1. Crash, kill, clean exit: restarted each time; exit 10 → reboot.
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let action = rt
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(20), supervise(spec(dir.path(), AGENT))).await
        })
        .expect("supervisor returned")
        .unwrap();
    assert_eq!(action, PowerAction::Reboot);
    assert_eq!(
        read_count(dir.path()),
        4,
        "three restarts, then the reboot request"
    );
    // Backoff 100 + 200 + 400 ms between the four starts.
    assert!(
        started.elapsed() >= Duration::from_millis(650),
        "{:?}",
        started.elapsed()
    );

    // The first run's child outlived its agent and every restart: init
    // never kills orphans (a head's qemu processes).
    let orphan: i32 = std::fs::read_to_string(dir.path().join("orphan"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let orphan = Pid::from_raw(orphan);
    assert!(kill(orphan, None).is_ok(), "the orphan was killed");
    kill(orphan, Signal::SIGKILL).unwrap();
    let _ = nix::sys::wait::waitpid(orphan, None);

    // 2. SIGTERM to init: the agent is stopped and the answer is reboot;
    // SIGUSR2 means power off.
    for (signal, want) in [
        (Signal::SIGTERM, PowerAction::Reboot),
        (Signal::SIGUSR2, PowerAction::Poweroff),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let long = "#!/bin/sh\necho 1 > \"$DIR/count\"\nexec sleep 30\n";
        let action = rt
            .block_on(async {
                let sup = supervise(spec(dir.path(), long));
                let poke = async {
                    while read_count(dir.path()) == 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    kill(Pid::this(), signal).unwrap();
                    std::future::pending::<()>().await
                };
                tokio::time::timeout(Duration::from_secs(20), async {
                    tokio::select! {
                        r = sup => r,
                        _ = poke => unreachable!(),
                    }
                })
                .await
            })
            .expect("supervisor returned")
            .unwrap();
        assert_eq!(action, want, "{signal:?}");
    }
    // The stopped agents were sent SIGTERM: they exit and are reaped.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Err(nix::Error::ECHILD) => break,
            _ if std::time::Instant::now() > deadline => panic!("a stopped agent is still running"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
