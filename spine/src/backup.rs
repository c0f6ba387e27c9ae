//! Disc backups on the spine: the `backups` member of a `disc.*` resource
//! (protocol version 3).
//!
//! The brain lists the backups a disc should have (`keep`); the tail takes
//! each listed id it does not hold yet (a consistent copy of the disc as it
//! is when the order arrives), deletes each one it holds that is no longer
//! listed, and restores the disc from one when a new `restore.seq` asks.
//! It reports what it holds in `taken` and the last restore done in
//! `restored_seq`. An absent `backups` (a brain that predates backups)
//! leaves whatever the tail holds untouched.

use serde::{Deserialize, Serialize};

/// Longest backup id accepted (it is a file name on the tail).
pub const MAX_BACKUP_ID_LEN: usize = 64;

/// Whether `id` can name a backup: lower-case letters, digits, `-`, `_`.
pub fn valid_backup_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_BACKUP_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The backups of one disc: the brain's order and the tail's report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscBackups {
    /// Backup ids that should exist, oldest first. A listed id the tail
    /// does not hold is taken now; a held id not listed is deleted.
    #[serde(default)]
    pub keep: Vec<String>,
    /// The tail pool new backups are stored in (a cold-storage `iceberg`
    /// pool); absent: the disc's own pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreOrder>,
    /// Reported by the tail: the backups it holds, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taken: Vec<BackupFacts>,
    /// Reported by the tail: the last `restore.seq` carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_seq: Option<u64>,
    /// Reported by the tail: why the last backup, restore or delete failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Replace the disc's content with a backup's. Each new `seq` runs once;
/// the disc's clients are disconnected while it runs (the brain orders it
/// only for a disc whose server is off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreOrder {
    pub seq: u64,
    /// The backup id (one the tail holds).
    pub from: String,
}

/// One backup a tail holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupFacts {
    pub id: String,
    /// The pool it is stored in.
    pub pool: String,
    /// The disc's size when it was taken, MiB.
    pub size: u64,
    /// MiB allocated in the backup's sparse file.
    pub allocated: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_file_name_safe() {
        assert!(valid_backup_id("b12"));
        assert!(valid_backup_id("7"));
        for bad in ["", "../x", "A", "a.b", &"x".repeat(65)] {
            assert!(!valid_backup_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn wire_format() {
        let b = DiscBackups {
            keep: vec!["b1".into()],
            restore: Some(RestoreOrder {
                seq: 2,
                from: "b1".into(),
            }),
            ..DiscBackups::default()
        };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"keep":["b1"],"restore":{"seq":2,"from":"b1"}}"#
        );
    }
}
