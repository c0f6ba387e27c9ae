//! Per-disc I/O limits: every disc is ordered with its storage grade's
//! rates, which its tail's NBD server enforces (docs/storage.md, "I/O
//! limits"). Seed 002 promised "IOPS and throughput figures for each
//! grade" to stop one customer's I/O storm drowning a pool; it published
//! no numbers, so these are ours, in this one table.
//!
//! An operator can override the IOPS per pool (`iops_limit` on the pool:
//! the default for every disc in it) and per disc (`iops_limit` on the
//! disc, cluster admins), both through the existing admin API.

use bigv_spine::resource::DiscLimits;

use crate::model::{Disc, Pool};

/// Grade → (IOPS, MiB/s) per disc. A grade not listed (e.g. `ram`) is
/// unlimited.
pub const GRADE_LIMITS: &[(&str, u64, u64)] = &[
    ("archive", 100, 50),
    ("iceberg", 100, 50),
    ("sata", 500, 100),
    ("sas", 1000, 150),
    ("ssd", 10_000, 400),
];

/// The spine version that added `disc.limits`: an older tail would refuse
/// an order carrying them (values reject unknown fields), so it gets none.
pub const LIMITS_SINCE: u32 = 3;

/// [`disc_limits`] for a disc on a tail speaking `protocol_version`.
pub fn disc_limits_for(
    protocol_version: u32,
    disc: &Disc,
    pool: Option<&Pool>,
) -> Option<DiscLimits> {
    if protocol_version < LIMITS_SINCE {
        return None;
    }
    disc_limits(disc, pool)
}

/// The limits a disc is served with, in `pool` (its grade's, with the
/// pool's and then the disc's own IOPS override); `None` when unlimited.
pub fn disc_limits(disc: &Disc, pool: Option<&Pool>) -> Option<DiscLimits> {
    let grade = pool.map_or(disc.storage_grade.as_str(), |p| p.grade.as_str());
    let rates = GRADE_LIMITS.iter().find(|(g, ..)| *g == grade);
    let iops = disc
        .iops_limit
        .or(pool.and_then(|p| p.iops_limit))
        .or(rates.map(|r| r.1));
    let mib_per_second = rates.map(|r| r.2);
    (iops.is_some() || mib_per_second.is_some()).then_some(DiscLimits {
        iops,
        mib_per_second,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DiscId, VmId};

    fn disc(grade: &str, iops: Option<u64>) -> Disc {
        Disc {
            id: DiscId(1),
            vm_id: VmId(1),
            label: "vda".into(),
            size: 1024,
            storage_grade: grade.into(),
            storage_pool: None,
            address: None,
            generation: 0,
            iops_limit: iops,
            template: None,
        }
    }

    fn pool(grade: &str, iops: Option<u64>) -> Pool {
        Pool {
            label: "t1-p".into(),
            node_id: "t1".into(),
            name: "p".into(),
            grade: grade.into(),
            overcommit_ratio: 1.0,
            usage_strategy: None,
            migration_concurrency: 1,
            iops_limit: iops,
        }
    }

    #[test]
    fn the_grade_sets_the_rates_and_overrides_take_the_iops() {
        let sata = Some(DiscLimits {
            iops: Some(500),
            mib_per_second: Some(100),
        });
        assert_eq!(disc_limits(&disc("sata", None), None), sata);
        assert_eq!(
            disc_limits(&disc("sata", None), Some(&pool("sata", None))),
            sata
        );
        // The pool's IOPS, then the disc's, win over the grade's.
        assert_eq!(
            disc_limits(&disc("sata", None), Some(&pool("sata", Some(50)))).and_then(|l| l.iops),
            Some(50)
        );
        assert_eq!(
            disc_limits(&disc("sata", Some(7)), Some(&pool("sata", Some(50)))).and_then(|l| l.iops),
            Some(7)
        );
        // A tail that predates limits is not sent any.
        assert_eq!(
            disc_limits_for(2, &disc("sata", None), Some(&pool("sata", None))),
            None
        );
        assert_eq!(
            disc_limits_for(3, &disc("sata", None), Some(&pool("sata", None))),
            sata
        );
        // A grade without figures is unlimited unless an override says so.
        assert_eq!(
            disc_limits(&disc("ram", None), Some(&pool("ram", None))),
            None
        );
        assert_eq!(
            disc_limits(&disc("ram", Some(9)), Some(&pool("ram", None))),
            Some(DiscLimits {
                iops: Some(9),
                mib_per_second: None
            })
        );
    }
}
