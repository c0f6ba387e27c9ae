//! Builds the guest's bootable disc image (see [`crate::layout`]):
//! the initramfs with our cpio writer, a FAT16 filesystem made by
//! `mkfs.fat`, filled by `mcopy`, made bootable by `syslinux --install`
//! (all on the image file, no mounting), and syslinux's MBR.
//!
//! Deterministic: fixed volume id and label, `mkfs.fat --invariant`,
//! every file time and mtools' clock pinned to [`EPOCH`].

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::layout::{self, Partition};
use crate::modules;

/// 2020-01-01T00:00:00Z: the time of every file (FAT cannot say 1970).
pub const EPOCH: u64 = 1_577_836_800;
pub const MBR_BIN: &str = "/usr/lib/syslinux/mbr/mbr.bin";
const DISK_ID: u32 = 0x4249_4756; // "BIGV"

pub const SYSLINUX_CFG: &str = "\
SERIAL 0 115200
DEFAULT guest
PROMPT 0
TIMEOUT 0
LABEL guest
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0,115200 quiet panic=-1
";

pub struct ImageConfig {
    /// The static `/init` binary.
    pub init: PathBuf,
    /// `tools/fetch-kernel.sh`'s directory.
    pub kernel_dir: PathBuf,
    pub out: PathBuf,
    /// Bytes; at least the boot partition plus 2 MiB of data region.
    pub size: u64,
}

/// Debian's static busybox (package busybox-static, which
/// tools/setup-host.sh installs): the guest's `/bin/busybox`, which its
/// `sh` serial command runs.
pub const BUSYBOX: &str = "/bin/busybox";

/// The initramfs: `/init`, the modules and `/etc/modules` (their load
/// order), and `/bin/busybox`.
pub fn initramfs(init: &Path, kernel_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let version = std::fs::read_to_string(kernel_dir.join("version"))
        .context("reading the kernel's version file")?;
    let moddir = kernel_dir.join("lib/modules").join(version.trim());
    let dep = std::fs::read_to_string(moddir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", moddir.display()))?;
    let order = modules::load_order(&dep, modules::WANTED)?;
    let mut a = bigv_initramfs::Archive::new();
    let init_bytes = std::fs::read(init).with_context(|| format!("reading {}", init.display()))?;
    a.file("init", 0o755, init_bytes)?;
    for d in ["proc", "sys", "dev", "tmp", "etc", "lib/modules", "bin"] {
        a.dir(d, 0o755)?;
    }
    let busybox = std::fs::read(BUSYBOX).with_context(|| {
        format!("reading {BUSYBOX} (install busybox-static: tools/setup-host.sh)")
    })?;
    a.file("bin/busybox", 0o755, busybox)?;
    let mut list = String::new();
    for path in &order {
        let name = modules::module_name(path);
        let data =
            std::fs::read(moddir.join(path)).with_context(|| format!("reading module {path}"))?;
        a.file(&format!("lib/modules/{name}.ko"), 0o644, data)?;
        list.push_str(&format!("/lib/modules/{name}.ko\n"));
    }
    a.file("etc/modules", 0o644, list)?;
    let opts = bigv_initramfs::Options {
        mtime: EPOCH as u32,
        ..Default::default()
    };
    Ok(a.to_gzip(&opts)?)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
        // mtools refuses images whose geometry looks odd without this.
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .with_context(|| format!("running {cmd:?} (tools/setup-host.sh installs it)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn pinned_file(dir: &Path, name: &str, data: &[u8]) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path)?;
    f.write_all(data)?;
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(EPOCH))?;
    Ok(path)
}

/// Builds the image at `config.out`.
pub fn build(config: &ImageConfig) -> anyhow::Result<()> {
    let boot_bytes = layout::BOOT_SECTORS as u64 * layout::SECTOR;
    let data_start = layout::data_start() as u64 * layout::SECTOR;
    if config.size < data_start + (2 << 20) || !config.size.is_multiple_of(layout::SECTOR) {
        bail!(
            "image size {} is too small or not whole sectors",
            config.size
        );
    }
    let work = tempdir_near(&config.out)?;
    let result = build_in(config, &work, boot_bytes, data_start);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn tempdir_near(out: &Path) -> anyhow::Result<PathBuf> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = parent.join(format!(".bigv-guest-build.{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn build_in(
    config: &ImageConfig,
    work: &Path,
    boot_bytes: u64,
    data_start: u64,
) -> anyhow::Result<()> {
    let initrd = initramfs(&config.init, &config.kernel_dir)?;
    let vmlinuz = std::fs::read(config.kernel_dir.join("vmlinuz")).context("reading vmlinuz")?;
    let files = [
        pinned_file(work, "vmlinuz", &vmlinuz)?,
        pinned_file(work, "initrd.gz", &initrd)?,
        pinned_file(work, "syslinux.cfg", SYSLINUX_CFG.as_bytes())?,
    ];

    // The filesystem alone first; "hidden sectors" = its place on the disc,
    // which syslinux's boot sector adds to every sector it loads.
    let fs = work.join("boot.fat");
    std::fs::File::create(&fs)?.set_len(boot_bytes)?;
    run(Command::new("mkfs.fat")
        .args([
            "-F",
            "16",
            "-n",
            "BIGVGUEST",
            "-i",
            &format!("{DISK_ID:08x}"),
        ])
        .args(["-h", &layout::BOOT_START.to_string(), "--invariant"])
        .arg(&fs))?;
    run(Command::new("mcopy")
        .args(["-m", "-o", "-i"])
        .arg(&fs)
        .args(&files)
        .arg("::/"))?;
    run(Command::new("syslinux").arg("--install").arg(&fs))?;

    let mut mbr = [0u8; 512];
    let code = std::fs::read(MBR_BIN)
        .with_context(|| format!("reading {MBR_BIN} (package syslinux-common)"))?;
    if code.len() > 440 {
        bail!("{MBR_BIN} is {} bytes, more than 440", code.len());
    }
    mbr[..code.len()].copy_from_slice(&code);
    let total_sectors = config.size / layout::SECTOR;
    layout::write_partition_table(
        &mut mbr,
        DISK_ID,
        &[
            Partition {
                active: true,
                kind: layout::BOOT_TYPE,
                start: layout::BOOT_START,
                sectors: layout::BOOT_SECTORS,
            },
            Partition {
                active: false,
                kind: layout::DATA_TYPE,
                start: layout::data_start(),
                sectors: u32::try_from(total_sectors - layout::data_start() as u64)
                    .context("image too large for an MBR")?,
            },
        ],
    );

    let tmp_out = work.join("disc.raw");
    let out = std::fs::File::create(&tmp_out)?;
    out.set_len(config.size)?;
    out.write_all_at(&mbr, 0)?;
    let fs_data = std::fs::read(&fs)?;
    out.write_all_at(&fs_data, layout::BOOT_START as u64 * layout::SECTOR)?;
    debug_assert!(layout::BOOT_START as u64 * layout::SECTOR + fs_data.len() as u64 <= data_start);
    out.sync_all()?;
    drop(out);
    std::fs::rename(&tmp_out, &config.out)
        .with_context(|| format!("moving the image to {}", config.out.display()))?;
    Ok(())
}
