//! Data discs (tails' pools): mount `/dev/DEV` on `DIR`; format it as
//! ext4 only when the configuration says so *and* the disc is blank.
//!
//! "Blank" is strict: the first 128 KiB are all zeros. Any known
//! signature (ext2/3/4, XFS, btrfs, LUKS, LVM, swap, an MBR or GPT
//! partition table) or any other data means "in use": an existing
//! filesystem is never reformatted, and unknown data is never touched.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};

use crate::cmdline::DiscArg;

/// How much of the disc [`probe`] reads.
pub const PROBE_LEN: usize = 128 * 1024;
const MKE2FS: &str = "/sbin/mke2fs";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The probed area is all zeros.
    Blank,
    Ext,
    /// Something else we know and will not touch.
    Other(&'static str),
    /// Non-zero bytes without a signature we know.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Mount,
    FormatThenMount,
    Refuse(String),
}

fn at(head: &[u8], offset: usize, magic: &[u8]) -> bool {
    head.get(offset..offset + magic.len()) == Some(magic)
}

/// What the first bytes of a disc hold (`head` is up to [`PROBE_LEN`]).
pub fn probe(head: &[u8]) -> Probe {
    if at(head, 1080, &[0x53, 0xef]) {
        return Probe::Ext;
    }
    let known: [(usize, &[u8], &'static str); 7] = [
        (0, b"XFSB", "xfs"),
        (0x10040, b"_BHRfS_M", "btrfs"),
        (0, b"LUKS\xba\xbe", "luks"),
        (512, b"LABELONE", "lvm"),
        (4086, b"SWAPSPACE2", "swap"),
        (512, b"EFI PART", "gpt"),
        (510, &[0x55, 0xaa], "mbr"),
    ];
    for (offset, magic, name) in known {
        if at(head, offset, magic) {
            return Probe::Other(name);
        }
    }
    if head.iter().all(|&b| b == 0) {
        Probe::Blank
    } else {
        Probe::Unknown
    }
}

/// What to do with a disc.
pub fn plan(probe: &Probe, format: bool) -> Plan {
    match (probe, format) {
        (Probe::Ext, _) => Plan::Mount,
        (Probe::Blank, true) => Plan::FormatThenMount,
        (Probe::Blank, false) => {
            Plan::Refuse("it is blank and formatting was not asked for (add :format)".into())
        }
        (Probe::Other(what), _) => Plan::Refuse(format!("it holds {what}, not ext4")),
        (Probe::Unknown, _) => {
            Plan::Refuse("it holds data that is not a filesystem we know".into())
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscError {
    #[error("/dev/{0} did not appear within {1:?}")]
    Missing(String, Duration),
    #[error("reading /dev/{0}")]
    Read(String, #[source] std::io::Error),
    #[error("/dev/{device}: not mounted: {why}")]
    Refused { device: String, why: String },
    #[error("formatting /dev/{0} with {MKE2FS}: {1}")]
    Format(String, String),
    #[error("mounting /dev/{0} on {1}")]
    Mount(String, String, #[source] nix::Error),
}

/// Mounts one configured disc (formatting a blank one if allowed).
pub fn prepare(disc: &DiscArg, wait: Duration) -> Result<(), DiscError> {
    let dev = format!("/dev/{}", disc.device);
    let deadline = Instant::now() + wait;
    while !Path::new(&dev).exists() {
        if Instant::now() > deadline {
            return Err(DiscError::Missing(disc.device.clone(), wait));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut head = Vec::with_capacity(PROBE_LEN);
    std::fs::File::open(&dev)
        .and_then(|f| f.take(PROBE_LEN as u64).read_to_end(&mut head))
        .map_err(|e| DiscError::Read(disc.device.clone(), e))?;
    let found = probe(&head);
    match plan(&found, disc.format) {
        Plan::Refuse(why) => {
            return Err(DiscError::Refused {
                device: disc.device.clone(),
                why,
            });
        }
        Plan::FormatThenMount => {
            tracing::warn!(device = dev, "blank disc: formatting as ext4");
            let out = Command::new(MKE2FS)
                .args(["-t", "ext4", "-q", "-m", "0", "-L", "bigv-pool"])
                .arg(&dev)
                .env_clear()
                .output()
                .map_err(|e| DiscError::Format(disc.device.clone(), e.to_string()))?;
            if !out.status.success() {
                return Err(DiscError::Format(
                    disc.device.clone(),
                    String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                ));
            }
        }
        Plan::Mount => {}
    }
    let _ = std::fs::create_dir_all(&disc.dir);
    mount(
        Some(dev.as_str()),
        disc.dir.as_str(),
        Some("ext4"),
        MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|e| DiscError::Mount(disc.device.clone(), disc.dir.clone(), e))?;
    tracing::info!(
        device = dev,
        dir = disc.dir,
        formatted = (found == Probe::Blank),
        "data disc mounted"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(offset: usize, magic: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; PROBE_LEN];
        v[offset..offset + magic.len()].copy_from_slice(magic);
        v
    }

    #[test]
    fn formats_only_blank_discs_when_asked() {
        let blank = vec![0u8; PROBE_LEN];
        let ext4 = with(1080, &[0x53, 0xef]);
        assert_eq!(probe(&blank), Probe::Blank);
        assert_eq!(probe(&ext4), Probe::Ext);
        assert_eq!(plan(&probe(&blank), true), Plan::FormatThenMount);
        assert!(matches!(plan(&probe(&blank), false), Plan::Refuse(_)));
        // An existing filesystem is mounted, never reformatted.
        assert_eq!(plan(&probe(&ext4), true), Plan::Mount);
        assert_eq!(plan(&probe(&ext4), false), Plan::Mount);
    }

    #[test]
    fn anything_else_is_left_alone() {
        for (disc, what) in [
            (with(0, b"XFSB"), "xfs"),
            (with(0x10040, b"_BHRfS_M"), "btrfs"),
            (with(0, b"LUKS\xba\xbe"), "luks"),
            (with(512, b"LABELONE"), "lvm"),
            (with(4086, b"SWAPSPACE2"), "swap"),
            (with(510, &[0x55, 0xaa]), "mbr"),
        ] {
            assert_eq!(probe(&disc), Probe::Other(what));
            let Plan::Refuse(why) = plan(&probe(&disc), true) else {
                panic!("{what} would be formatted")
            };
            assert!(why.contains(what), "{why}");
        }
        // One stray byte: unknown data, refused even with :format.
        let stray = with(70_000, &[1]);
        assert_eq!(probe(&stray), Probe::Unknown);
        assert!(matches!(plan(&probe(&stray), true), Plan::Refuse(_)));
        // A disc shorter than the probe is judged on what there is.
        assert_eq!(probe(&[0u8; 100]), Probe::Blank);
    }

    proptest::proptest! {
        /// Whatever the disc holds, a non-zero disc is never formatted.
        #[test]
        fn non_zero_discs_are_never_formatted(
            at in 0usize..PROBE_LEN, byte in 1u8..=255, format in proptest::bool::ANY)
        {
            let disc = with(at, &[byte]);
            proptest::prop_assert_ne!(plan(&probe(&disc), format), Plan::FormatThenMount);
        }
    }
}
