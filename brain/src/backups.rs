//! Disc backups and backup schedules (bigv-api.md §9; docs/storage.md,
//! "Backups").
//!
//! A backup is a record first (state `pending`); the reconciler lists the
//! disc's wanted backups in the disc order's `backups.keep`, the tail takes
//! them, and [`observe`] moves each record on from what the tail reports:
//! `taken`, `failed` (the tail's error; not retried), and a `deleting`
//! one goes once the tail no longer holds it. A restore is an order on
//! the disc (`backups.restore`), made only while the disc's server is off.
//!
//! Schedules are a timer like the purge: each pass, [`run_schedules`]
//! takes a backup for every schedule whose `next_at` has come (time is
//! `state.clock`, so tests move it) and prunes that schedule's backups to
//! its newest `capacity` (0 keeps them all).

use bigv_spine::backup::{DiscBackups, RestoreOrder};

use crate::model::{
    Backup, BackupRestore, BackupSchedule, BackupState, DbError, Disc, DiscId, Model, RestoreState,
    Tx,
};

/// The storage grade of cold-storage pools: a tail with a pool of this
/// grade keeps its discs' backups there.
pub const ICEBERG: &str = "iceberg";

/// The shortest schedule interval accepted, seconds.
pub const MIN_INTERVAL: u64 = 60;

/// A backup's name on the spine.
pub fn spine_id(b: &Backup) -> String {
    format!("b{}", b.id)
}

/// A backup's label in the API (backups are named like discs).
pub fn label(b: &Backup) -> String {
    format!("backup-{}", b.id)
}

/// Backups the API shows and counts: all but those being deleted.
pub fn visible(b: &Backup) -> bool {
    b.state != BackupState::Deleting
}

/// The first time a schedule with `start_at` runs, at or after `now`:
/// a full `YYYY-MM-DD[ HH:MM[:SS]][ UTC]` timestamp (if past, the next
/// interval after it), or a time of day `HH:MM[:SS]` (UTC; its next
/// occurrence). `None` if `start_at` is neither.
pub fn first_run(start_at: &str, interval: u64, now: u64) -> Option<u64> {
    let s = start_at.trim();
    let at = if let Some(t) = crate::api::time::parse_time(s) {
        t
    } else {
        let t = s.strip_suffix(" UTC").unwrap_or(s);
        let mut hms = t.splitn(3, ':');
        let h: u64 = hms.next()?.parse().ok()?;
        let m: u64 = hms.next()?.parse().ok()?;
        let sec: u64 = match hms.next() {
            Some(x) => x.parse().ok()?,
            None => 0,
        };
        if h > 23 || m > 59 || sec > 59 {
            return None;
        }
        let today = now - now % 86_400 + h * 3600 + m * 60 + sec;
        if today >= now { today } else { today + 86_400 }
    };
    Some(next_after(at, interval, now))
}

/// `at`, or the first `at + k·interval` not before `now`.
fn next_after(at: u64, interval: u64, now: u64) -> u64 {
    if at >= now || interval == 0 {
        return at.max(now);
    }
    let k = (now - at).div_ceil(interval);
    at + k * interval
}

/// Orders a new backup of `disc` (state `pending`).
pub fn order(
    tx: &mut Tx<'_>,
    disc: &Disc,
    manual: bool,
    schedule_id: Option<u64>,
    now: u64,
) -> Result<Backup, DbError> {
    let backup = Backup {
        id: tx.new_id::<Backup>()?,
        disc_id: disc.id,
        manual,
        schedule_id,
        size: disc.size,
        created_at: now,
        state: BackupState::Pending,
        storage_pool: None,
        node_id: None,
        allocated: None,
        error: None,
        restore: None,
    };
    tx.put(backup.clone())?;
    Ok(backup)
}

/// Orders a restore of `backup` over its disc.
pub fn order_restore(tx: &mut Tx<'_>, backup: &Backup) -> Result<Backup, DbError> {
    let seq = tx.new_id::<Backup>()?;
    let mut b = backup.clone();
    b.restore = Some(BackupRestore {
        seq,
        state: RestoreState::Pending,
        error: None,
    });
    tx.put(b.clone())?;
    Ok(b)
}

/// Marks a backup for deletion (the tail deletes it; [`observe`] then
/// drops the record). One the tail never took goes at once.
pub fn delete(tx: &mut Tx<'_>, backup: &Backup) -> Result<(), DbError> {
    if backup.state == BackupState::Failed {
        return tx.delete::<Backup>(backup.id);
    }
    let mut b = backup.clone();
    b.state = BackupState::Deleting;
    tx.put(b)
}

/// Forgets every backup and schedule of a disc being purged (its tail
/// deletes the backup files with the disc).
pub fn forget_disc(tx: &mut Tx<'_>, disc: DiscId) -> Result<(), DbError> {
    let model = tx.model();
    let backups: Vec<u64> = model.backups_of(disc).map(|b| b.id).collect();
    let schedules: Vec<u64> = model.schedules_of(disc).map(|s| s.id).collect();
    for id in backups {
        tx.delete::<Backup>(id)?;
    }
    for id in schedules {
        tx.delete::<BackupSchedule>(id)?;
    }
    Ok(())
}

/// The `backups` member of the order for `disc`: `None` when it has no
/// backup records (nothing to keep, delete or restore: the tail leaves
/// whatever it holds alone) or its tail predates backups. `pool` is the
/// tail's iceberg pool, if it has one; no restore is ordered while
/// `hold_restore` (the disc's server runs, or the disc is migrating).
/// `held`: the backup ids the tail reports holding, kept even when
/// recorded on another tail (they came along with a migration).
pub fn wanted(
    model: &Model,
    disc: DiscId,
    tail: &str,
    held: &[String],
    pool: Option<String>,
    hold_restore: bool,
) -> Option<DiscBackups> {
    let mut any = false;
    let mut keep = vec![];
    let mut restore = None;
    for b in model.backups_of(disc) {
        any = true;
        // One taken on another tail is not there to keep (and must not be
        // taken afresh under its id).
        let here = b.node_id.as_deref().is_none_or(|n| n == tail)
            || (b.state == BackupState::Taken && held.contains(&spine_id(b)));
        if here && matches!(b.state, BackupState::Pending | BackupState::Taken) {
            keep.push(spine_id(b));
        }
        if let Some(r) = &b.restore
            && r.state == RestoreState::Pending
            && b.state == BackupState::Taken
            && here
            && !hold_restore
        {
            restore = Some(RestoreOrder {
                seq: r.seq,
                from: spine_id(b),
            });
        }
    }
    any.then_some(DiscBackups {
        keep,
        pool,
        restore,
        ..DiscBackups::default()
    })
}

/// Whether a restore of `disc` is ordered and not yet finished: its
/// server does not start until it is.
pub fn restore_pending(model: &Model, disc: DiscId) -> bool {
    model.backups_of(disc).any(|b| {
        b.restore
            .as_ref()
            .is_some_and(|r| r.state == RestoreState::Pending)
    })
}

/// Whether the tail's report already carries out `wanted` (the order's
/// own fields; what the tail reports beside them does not count).
pub fn same_order(wanted: Option<&DiscBackups>, reported: Option<&DiscBackups>) -> bool {
    match (wanted, reported) {
        (None, _) => true,
        (Some(w), Some(r)) => w.keep == r.keep && w.pool == r.pool && w.restore == r.restore,
        (Some(_), None) => false,
    }
}

/// A disc's report, for [`observe`].
pub struct Reported {
    /// The tail reporting the disc.
    pub node_id: String,
    /// Its `backups` (`None`: it reported none).
    pub backups: Option<DiscBackups>,
    /// Whether that tail can take backups at all (protocol 3).
    pub capable: bool,
}

/// Moves backup records on from what the discs' tails report. `reported`
/// gives a disc's report, `None` while its tail is not connected or does
/// not hold it.
pub fn observe(
    tx: &mut Tx<'_>,
    reported: &dyn Fn(DiscId) -> Option<Reported>,
) -> Result<usize, DbError> {
    let model = tx.model();
    let mut puts = vec![];
    let mut deletes = vec![];
    for b in model.backups.values() {
        if model.disc(b.disc_id).is_none() {
            deletes.push(b.id);
            continue;
        }
        let Some(Reported {
            node_id,
            backups: report,
            capable,
        }) = reported(b.disc_id)
        else {
            continue;
        };
        let id = spine_id(b);
        let mut new = b.clone();
        let moved = b.node_id.as_ref().is_some_and(|n| *n != node_id);
        let arrived = report
            .as_ref()
            .and_then(|r| r.taken.iter().find(|t| t.id == id));
        if moved
            && b.state == BackupState::Taken
            && let Some(t) = arrived
        {
            // Sent along with the disc (`migrate_to.backups`).
            new.node_id = Some(node_id.clone());
            new.storage_pool = Some(t.pool.clone());
            new.allocated = Some(t.allocated);
        } else if moved {
            // Left behind on the tail the disc moved away from.
            if b.state == BackupState::Deleting {
                deletes.push(b.id);
                continue;
            }
            if b.state == BackupState::Taken {
                new.state = BackupState::Failed;
                new.error = Some(format!(
                    "lost: it was kept on tail {} and the disc moved to tail {node_id}",
                    b.node_id.as_deref().unwrap_or("?")
                ));
            }
            if let Some(r) = new.restore.as_mut()
                && r.state == RestoreState::Pending
            {
                r.state = RestoreState::Failed;
                r.error = new.error.clone();
            }
        } else if !capable {
            if b.state == BackupState::Pending {
                new.state = BackupState::Failed;
                new.error = Some("the disc's tail is too old to take backups".into());
            }
        } else if let Some(r) = report {
            let held = r.taken.iter().find(|t| t.id == id);
            let ordered = r.keep.contains(&id);
            match b.state {
                BackupState::Pending => {
                    if let Some(t) = held {
                        new.state = BackupState::Taken;
                        new.node_id = Some(node_id.clone());
                        new.storage_pool = Some(t.pool.clone());
                        new.allocated = Some(t.allocated);
                        new.error = None;
                    } else if ordered && let Some(e) = &r.error {
                        new.state = BackupState::Failed;
                        new.error = Some(e.clone());
                    }
                }
                BackupState::Deleting if held.is_none() && !ordered => {
                    deletes.push(b.id);
                    continue;
                }
                _ => {}
            }
            if let Some(restore) = new.restore.as_mut()
                && restore.state == RestoreState::Pending
            {
                if r.restored_seq.is_some_and(|d| d >= restore.seq) {
                    restore.state = RestoreState::Done;
                } else if r.restore.as_ref().is_some_and(|o| o.seq == restore.seq)
                    && let Some(e) = &r.error
                {
                    restore.state = RestoreState::Failed;
                    restore.error = Some(e.clone());
                }
            }
        }
        if new != *b {
            puts.push(new);
        }
    }
    let n = puts.len() + deletes.len();
    for b in puts {
        tracing::info!(backup = b.id, disc = %b.disc_id, state = ?b.state, restore = ?b.restore.as_ref().map(|r| r.state), "backup changed");
        tx.put(b)?;
    }
    for id in deletes {
        tracing::info!(backup = id, "backup deleted");
        tx.delete::<Backup>(id)?;
    }
    Ok(n)
}

/// Schedules whose next backup is due.
pub fn due(model: &Model, now: u64) -> bool {
    model.backup_schedules.values().any(|s| s.next_at <= now)
}

/// Takes a backup for every due schedule (of a disc whose server is not
/// deleted), moves its `next_at` past `now`, and prunes its backups to
/// `capacity`. Returns how many backups were ordered.
pub fn run_schedules(tx: &mut Tx<'_>, now: u64) -> Result<usize, DbError> {
    let model = tx.model();
    let due: Vec<BackupSchedule> = model
        .backup_schedules
        .values()
        .filter(|s| s.next_at <= now)
        .cloned()
        .collect();
    let mut taken = 0;
    for mut s in due {
        let model = tx.model();
        let Some(disc) = model.disc(s.disc_id).cloned() else {
            tx.delete::<BackupSchedule>(s.id)?;
            continue;
        };
        let live = model.vm(disc.vm_id).is_some_and(|v| !v.deleted);
        let mut old: Vec<Backup> = model
            .backups_of(disc.id)
            .filter(|b| b.schedule_id == Some(s.id) && b.state != BackupState::Deleting)
            .cloned()
            .collect();
        s.next_at = next_after(s.next_at, s.interval_seconds, now + 1);
        tx.put(s.clone())?;
        if !live {
            continue;
        }
        let b = order(tx, &disc, false, Some(s.id), now)?;
        tracing::info!(backup = b.id, disc = %disc.id, schedule = s.id, next_at = s.next_at, "scheduled backup ordered");
        taken += 1;
        old.push(b);
        if s.capacity > 0 && old.len() as u64 > s.capacity {
            let extra = old.len() - s.capacity as usize;
            // One being restored from stays until the restore is over (the
            // next run prunes it).
            let restoring = |b: &Backup| {
                b.restore
                    .as_ref()
                    .is_some_and(|r| r.state == RestoreState::Pending)
            };
            for b in old[..extra].iter().filter(|b| !restoring(b)) {
                tracing::info!(backup = b.id, schedule = s.id, "pruning a scheduled backup");
                delete(tx, b)?;
            }
        }
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_run_of_times_of_day_and_dates() {
        // 2026-12-06 03:00:00 UTC
        let now = crate::api::time::parse_time("2026-12-06 03:00:00").unwrap();
        let day = 86_400;
        assert_eq!(first_run("04:00", day, now), Some(now + 3600));
        assert_eq!(first_run("00:00", day, now), Some(now - 3 * 3600 + day));
        assert_eq!(first_run("03:00:00", day, now), Some(now));
        let at = crate::api::time::parse_time("2026-12-07 00:00:00").unwrap();
        assert_eq!(first_run("2026-12-07 00:00:00 UTC", day, now), Some(at));
        // A start in the past runs at the next interval after it.
        assert_eq!(
            first_run("2026-12-01 12:00:00 UTC", day, now),
            Some(now + 9 * 3600)
        );
        for bad in ["", "tomorrow", "25:00", "12"] {
            assert_eq!(first_run(bad, day, now), None, "{bad:?}");
        }
    }
}
