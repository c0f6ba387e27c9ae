//! The record the crash writer commits and `tests/store_crash.rs` verifies. Shared by both
//! (the test includes this file with `#[path]`) so they cannot drift apart.

use bigv_brain::store::{Schema, Table};
use serde::{Deserialize, Serialize};

pub const RECORDS: Table<u64, Record> = Table::new("records");
pub const SCHEMA: Schema = Schema::new(&[RECORDS.info()], &[]);

/// Record `n`: its own number, a payload derived from `n` (so records have a realistic size
/// and any misplaced or torn bytes show), and a checksum over both.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub n: u64,
    pub payload: String,
    pub checksum: u64,
}

impl Record {
    pub fn new(n: u64) -> Record {
        let payload: String = (0..32)
            .map(|i| {
                format!(
                    "{:016x}",
                    fnv1a(&[n.to_be_bytes(), u64::to_be_bytes(i)].concat())
                )
            })
            .collect();
        let checksum = Record::checksum(n, &payload);
        Record {
            n,
            payload,
            checksum,
        }
    }

    pub fn checksum(n: u64, payload: &str) -> u64 {
        fnv1a(&[&n.to_be_bytes()[..], payload.as_bytes()].concat())
    }
}

/// FNV-1a, 64-bit.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
