//! The data pattern the guest writes on its disc each boot: blocks that
//! name the boot that wrote them, so a later boot (or a test reading the
//! disc file) can tell whose data it sees and whether it is intact.

pub const BLOCK: usize = 4096;
/// Blocks written per boot (1 MiB).
pub const BLOCKS: u64 = 256;
const MAGIC: &[u8; 16] = b"BIGV-PATTERN-v1 ";
/// Magic, 36-byte boot id, space, block number (u64 LE).
const HEADER: usize = 16 + 36 + 1 + 8;

/// Block `index` of the pattern written by `boot_id` (a 36-char uuid;
/// other lengths are cut or padded).
pub fn block(boot_id: &str, index: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    b[..16].copy_from_slice(MAGIC);
    let mut id = [b' '; 36];
    let n = boot_id.len().min(36);
    id[..n].copy_from_slice(&boot_id.as_bytes()[..n]);
    b[16..52].copy_from_slice(&id);
    b[52] = b' ';
    b[53..61].copy_from_slice(&index.to_le_bytes());
    // The body depends on the boot and the index, so a block written by
    // another boot or at another place never matches.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ index.wrapping_mul(0x1000_0000_01b3);
    for &c in &id {
        x = (x ^ c as u64).wrapping_mul(0x1000_0000_01b3);
    }
    for chunk in b[HEADER..].chunks_mut(8) {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    b
}

/// Who wrote a block: `(boot id, index)` if it is a pattern block.
pub fn header(block: &[u8]) -> Option<(String, u64)> {
    if block.len() < HEADER || &block[..16] != MAGIC {
        return None;
    }
    let id = std::str::from_utf8(&block[16..52])
        .ok()?
        .trim_end()
        .to_owned();
    let mut idx = [0u8; 8];
    idx.copy_from_slice(&block[53..61]);
    Some((id, u64::from_le_bytes(idx)))
}

/// True if `data` holds exactly the blocks `first..` of `boot_id`'s pattern.
pub fn verify(boot_id: &str, first: u64, data: &[u8]) -> bool {
    data.len().is_multiple_of(BLOCK)
        && data
            .chunks(BLOCK)
            .enumerate()
            .all(|(i, b)| b == block(boot_id, first + i as u64).as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    const B: &str = "2c5f39cb-2fa1-11d2-883f-0016d3cca427";

    #[test]
    fn blocks_name_their_writer_and_differ_by_boot_and_place() {
        let b0 = block(A, 0);
        assert_eq!(header(&b0), Some((A.to_owned(), 0)));
        assert_ne!(b0, block(A, 1));
        assert_ne!(b0[100..], block(B, 0)[100..]);
        let mut two = block(A, 5);
        two.extend(block(A, 6));
        assert!(verify(A, 5, &two));
        assert!(!verify(A, 4, &two));
        two[5000] ^= 1;
        assert!(!verify(A, 5, &two), "one flipped bit is noticed");
        assert_eq!(header(&[0u8; BLOCK]), None);
    }
}
