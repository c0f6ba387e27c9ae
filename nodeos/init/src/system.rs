//! The system calls around the pure logic: mounts, console, kernel
//! modules, host name, and the final sync/unmount/reboot.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::modules::ModuleIndex;

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("mounting {fstype} on {target}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Modules(#[from] crate::modules::ModulesError),
}

/// What init mounts, in order. devtmpfs comes right after /proc and /sys
/// and before anything reads randomness: static glibc's getrandom falls
/// back to /dev/urandom (deps.md, the getrandom trap).
const MOUNTS: &[(&str, &str, &str, u32)] = &[
    ("proc", "/proc", "", 0o555),
    ("sysfs", "/sys", "", 0o555),
    ("devtmpfs", "/dev", "mode=0755", 0o755),
    ("devpts", "/dev/pts", "gid=5,mode=620,ptmxmode=000", 0o755),
    ("tmpfs", "/dev/shm", "mode=1777", 0o1777),
    ("tmpfs", "/run", "mode=0755", 0o755),
    ("tmpfs", "/tmp", "mode=1777", 0o1777),
];

pub fn mount_filesystems() -> Result<(), SystemError> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    for &(fstype, target, data, mode) in MOUNTS {
        let _ = std::fs::create_dir_all(target);
        let _ = nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            target,
            nix::sys::stat::Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        );
        let flags = if fstype == "devtmpfs" || fstype == "devpts" {
            MsFlags::MS_NOSUID
        } else {
            flags
        };
        let data = (!data.is_empty()).then_some(data);
        match mount(Some(fstype), target, Some(fstype), flags, data) {
            Ok(()) => {}
            // Already there (a kernel with DEVTMPFS_MOUNT, or a re-exec).
            Err(nix::Error::EBUSY) => {}
            Err(source) => {
                return Err(SystemError::Mount {
                    fstype,
                    target,
                    source,
                });
            }
        }
    }
    // qemu-nbd wants /var/lock; agents keep state under /run/bigv.
    for dir in ["/var/lock", "/var/tmp", "/run/bigv"] {
        let _ = std::fs::create_dir_all(dir);
    }
    Ok(())
}

/// Makes sure fds 0-2 are the console: without /dev/console in the
/// initramfs the kernel starts init with them closed.
pub fn ensure_console() {
    let closed =
        nix::fcntl::fcntl(std::io::stderr().as_fd(), nix::fcntl::FcntlArg::F_GETFD).is_err();
    if !closed {
        return;
    }
    if let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        use std::os::fd::IntoRawFd;
        let fd = console.into_raw_fd();
        for target in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which are closed.
            unsafe { libc::dup2(fd, target) };
        }
        if fd > 2 {
            // SAFETY: fd is ours and no longer needed.
            unsafe { libc::close(fd) };
        }
    }
}

fn read(path: &Path) -> Result<String, SystemError> {
    std::fs::read_to_string(path).map_err(|source| SystemError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The wanted modules: every line of every file in `dir` (sorted by file
/// name), `#` comments and blanks skipped. The image builder writes
/// `base` there, and the head archive adds `head`.
pub fn wanted_modules(dir: &Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap_or_default().lines() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') && !out.iter().any(|m| m == line) {
                out.push(line.to_owned());
            }
        }
    }
    out
}

/// Loads the listed modules and what they need, in dependency order, with
/// `finit_module`. A module that refuses to load is logged and skipped:
/// `kvm_intel` on AMD or `crc32c_intel` without SSE4.2 are expected to.
/// Returns (loaded, failed).
pub fn load_modules(root: &Path, wanted: &[String]) -> Result<(usize, usize), SystemError> {
    let release = read(Path::new("/proc/sys/kernel/osrelease"))?;
    let dir = root.join("lib/modules").join(release.trim());
    let dep = read(&dir.join("modules.dep"))?;
    let softdep = std::fs::read_to_string(dir.join("modules.softdep")).unwrap_or_default();
    let index = ModuleIndex::parse(&dep, &softdep, "")?;
    let mut present = Vec::new();
    for w in wanted {
        if index.get(w).is_some() {
            present.push(w.as_str());
        } else {
            tracing::warn!(module = w, "listed but not in the image");
        }
    }
    let order = index.load_order(&present)?;
    let (mut loaded, mut failed) = (0, 0);
    for m in order {
        let path = dir.join(&m.path);
        let result = File::open(&path)
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            .and_then(|f| nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()));
        match result {
            Ok(()) | Err(nix::Error::EEXIST) => loaded += 1,
            Err(e) => {
                failed += 1;
                tracing::warn!(module = m.name, error = %e, "module not loaded");
            }
        }
    }
    Ok((loaded, failed))
}

pub fn set_hostname(name: &str) {
    if let Err(e) = nix::unistd::sethostname(name) {
        tracing::warn!(name, error = %e, "setting the host name");
    }
}

/// Every mount point, deepest first (from /proc/self/mounts).
fn mount_points() -> Vec<String> {
    let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .filter(|p| p != "/")
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    points
}

/// Syncs and unmounts what can be (lazily, so a busy mount cannot hold
/// the reboot up); remaining filesystems are read-only or virtual.
pub fn sync_and_unmount() {
    nix::unistd::sync();
    for p in mount_points() {
        if ["/proc", "/sys", "/dev"].contains(&p.as_str()) {
            continue;
        }
        let _ = umount2(p.as_str(), MntFlags::MNT_DETACH);
    }
    nix::unistd::sync();
}
