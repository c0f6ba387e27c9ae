//! The test guest's disc layout (all offsets in 512-byte sectors):
//!
//! | sectors | what |
//! |---|---|
//! | 0 | MBR: syslinux's `mbr.bin` boot code, partition table |
//! | 1 – 2047 | unused (alignment) |
//! | [`BOOT_START`] … +[`BOOT_SECTORS`] | partition 1, active, FAT16 `BIGVGUEST`: `ldlinux.sys`, `ldlinux.c32`, `syslinux.cfg`, `vmlinuz`, `initrd.gz` |
//! | [`data_start`] … end | partition 2, type `0xda` (non-filesystem data): the guest's data pattern |
//!
//! The guest finds the data region from the partition table itself, so
//! a disc grown by the tail keeps working and writing the pattern can
//! never touch the bootloader or the kernel.

pub const SECTOR: u64 = 512;
/// Partition 1 starts at 1 MiB.
pub const BOOT_START: u32 = 2048;
/// 40 MiB of FAT16 for the kernel (~8 MiB) and the initramfs.
pub const BOOT_SECTORS: u32 = 40 * 2048;
/// FAT16 with LBA.
pub const BOOT_TYPE: u8 = 0x0e;
/// "Non-FS data" (as in Linux `fdisk`'s table).
pub const DATA_TYPE: u8 = 0xda;
/// The whole image by default: 64 MiB.
pub const DEFAULT_SIZE: u64 = 64 << 20;

pub fn data_start() -> u32 {
    BOOT_START + BOOT_SECTORS
}

/// One primary partition entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub active: bool,
    pub kind: u8,
    pub start: u32,
    pub sectors: u32,
}

/// Writes the partition table and signature into an MBR sector whose
/// first 440 bytes (boot code) are already in place. CHS fields are
/// set to the "use LBA" marker 0xfe/0xff/0xff, as modern tools do.
pub fn write_partition_table(mbr: &mut [u8; 512], disk_id: u32, parts: &[Partition]) {
    mbr[440..444].copy_from_slice(&disk_id.to_le_bytes());
    mbr[444] = 0;
    mbr[445] = 0;
    for (i, slot) in mbr[446..510].chunks_exact_mut(16).enumerate() {
        slot.fill(0);
        let Some(p) = parts.get(i) else { continue };
        slot[0] = if p.active { 0x80 } else { 0 };
        slot[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
        slot[4] = p.kind;
        slot[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
        slot[8..12].copy_from_slice(&p.start.to_le_bytes());
        slot[12..16].copy_from_slice(&p.sectors.to_le_bytes());
    }
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
}

/// The four primary partitions of an MBR (empty slots skipped), or
/// `None` without the 0x55aa signature.
pub fn read_partition_table(mbr: &[u8]) -> Option<Vec<Partition>> {
    if mbr.len() < 512 || mbr[510] != 0x55 || mbr[511] != 0xaa {
        return None;
    }
    let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    Some(
        mbr[446..510]
            .chunks_exact(16)
            .filter(|s| s[4] != 0)
            .map(|s| Partition {
                active: s[0] == 0x80,
                kind: s[4],
                start: u32_at(&s[8..12]),
                sectors: u32_at(&s[12..16]),
            })
            .collect(),
    )
}

/// The data region `(first byte, length in bytes)` from an MBR.
pub fn data_region(mbr: &[u8]) -> Option<(u64, u64)> {
    read_partition_table(mbr)?
        .into_iter()
        .find(|p| p.kind == DATA_TYPE)
        .map(|p| (p.start as u64 * SECTOR, p.sectors as u64 * SECTOR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trips_and_finds_the_data_region() {
        let mut mbr = [0x11u8; 512];
        let parts = [
            Partition {
                active: true,
                kind: BOOT_TYPE,
                start: BOOT_START,
                sectors: BOOT_SECTORS,
            },
            Partition {
                active: false,
                kind: DATA_TYPE,
                start: data_start(),
                sectors: 1000,
            },
        ];
        write_partition_table(&mut mbr, 0x4249_4756, &parts);
        // Boot code untouched.
        assert!(mbr[..440].iter().all(|&b| b == 0x11));
        assert_eq!(read_partition_table(&mbr).unwrap(), parts);
        assert_eq!(
            data_region(&mbr),
            Some((data_start() as u64 * 512, 1000 * 512))
        );
        mbr[511] = 0;
        assert_eq!(data_region(&mbr), None);
    }
}
