//! Disc backups and backup schedules (bigv-api.md §9, bigv-cli.md §2):
//! `show backups`, `backup disc`, `restore backup`, `delete backup`,
//! `schedule backups`, `unschedule backups`, and the schedule
//! `add server --backup daily|weekly|never` sends.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::Ctx;
use crate::cli::{BackupArgs, ScheduleArgs, UnscheduleArgs};
use crate::error::{CliError, Exit, Result};
use crate::names::{VmRef, human_size, seg};
use crate::output::{self, Progress, note};

const HEADERS: &[&str] = &[
    "ID",
    "Label",
    "Size",
    "Manual",
    "State",
    "Created",
    "StoragePool",
];

/// Seconds per `--backup` word; `never` is `None`. The old client's help
/// also named `monthly`, which its code rejected; so does this one.
pub fn frequency(word: &str) -> Result<Option<u64>> {
    match word {
        "daily" => Ok(Some(86_400)),
        "weekly" => Ok(Some(604_800)),
        "never" => Ok(None),
        other => Err(CliError::usage(format!(
            "--backup {other:?}: say daily, weekly or never"
        ))),
    }
}

/// `YYYY-MM-DD 00:00:00 UTC` of the day after `now` (unix seconds).
pub fn tomorrow_midnight(now: u64) -> String {
    let day = now / 86_400 + 1;
    let text = output::utc_ms(day * 86_400 * 1000);
    format!("{} UTC", &text[..19])
}

/// The `backup_schedules` the first disc of a new server gets: one, from
/// tomorrow at midnight (UTC), keeping the newest backup.
pub fn new_server_schedules(word: &str) -> Result<Option<Value>> {
    let Some(interval) = frequency(word)? else {
        return Ok(None);
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(Some(json!([{
        "start_at": tomorrow_midnight(now),
        "interval_seconds": interval,
        "capacity": 1,
    }])))
}

fn disc_path(r: &VmRef, disc: &str) -> String {
    format!("{}/discs/{}", r.path(), seg(disc))
}

fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn row(b: &Value) -> Vec<String> {
    vec![
        text(b, "id"),
        text(b, "label"),
        text(b, "size"),
        text(b, "manual"),
        text(b, "state"),
        text(b, "created_at"),
        text(b, "storage_pool"),
    ]
}

/// `• backup-7 - 25GiB, taken 2026-12-06 03:00:00 UTC (manual)`
fn line(b: &Value) -> String {
    let size = b["size"].as_u64().map_or("?".into(), human_size);
    let how = if b["manual"] == true {
        "manual"
    } else {
        "scheduled"
    };
    let mut s = format!(
        "• {} - {size}, {} {} ({how})",
        text(b, "label"),
        text(b, "state"),
        text(b, "created_at"),
    );
    if let Some(e) = b["error"].as_str() {
        s.push_str(&format!(": {e}"));
    }
    if let Some(r) = b["restore"]["state"].as_str() {
        s.push_str(&format!(", restore {r}"));
    }
    s.push('\n');
    s
}

pub fn show(ctx: &Ctx, server: &str, disc: &str) -> Result<()> {
    let r = ctx.resolve_vm(server)?;
    let what = format!("disc {disc} of {r}");
    let list = ctx
        .client()?
        .get_value(&format!("{}/backups", disc_path(&r, disc)), &what)?;
    let items = list.as_array().cloned().unwrap_or_default();
    // People also want to know what takes them (and the schedule ids
    // `unschedule backups` needs).
    let schedules = if ctx.out.is_human() {
        let d = ctx.client()?.get_value(&disc_path(&r, disc), &what)?;
        d["backup_schedules"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    } else {
        vec![]
    };
    ctx.out.show(
        &list,
        HEADERS,
        || items.iter().map(row).collect(),
        || {
            let mut out = if items.is_empty() {
                format!("{disc} of {r} has no backups.\n")
            } else {
                items.iter().map(line).collect()
            };
            for s in &schedules {
                out.push_str(&schedule_line(s));
            }
            out
        },
    );
    Ok(())
}

/// `Schedule 3: every week from 00:00, keeping the newest 1 (next …)`
fn schedule_line(s: &Value) -> String {
    let keeping = keeping(s["capacity"].as_u64().unwrap_or(0));
    format!(
        "Schedule {}: {} from {}, {keeping} (next {})\n",
        text(s, "id"),
        every(s["interval_seconds"].as_u64().unwrap_or(0)),
        text(s, "start_at"),
        text(s, "next_at"),
    )
}

fn wait_limit() -> Duration {
    Duration::from_secs(
        std::env::var("BIGV_WAIT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3600),
    )
}

/// Polls the backup until `done` says it is finished (`Some(Ok)`) or
/// failed (`Some(Err(message))`).
fn wait(
    ctx: &Ctx,
    path: &str,
    id: u64,
    message: &str,
    done: impl Fn(&Value) -> Option<std::result::Result<(), String>>,
) -> Result<Value> {
    let progress = Progress::spinner(message);
    let limit = wait_limit();
    let found = output::wait_for(
        limit,
        &format!(
            "{message}: not finished within {} s; `bigv show backups` follows it",
            limit.as_secs()
        ),
        || {
            let list = ctx.client()?.get_value(path, "the disc's backups")?;
            let b = list
                .as_array()
                .and_then(|l| l.iter().find(|b| b["id"].as_u64() == Some(id)).cloned());
            let Some(b) = b else {
                return Err(CliError::new(
                    Exit::Unknown,
                    format!("backup {id} vanished while waiting for it"),
                ));
            };
            Ok(done(&b).map(|r| (r, b)))
        },
    );
    progress.finish();
    let (result, b) = found?;
    result.map_err(|e| CliError::new(Exit::Unknown, e))?;
    Ok(b)
}

pub fn backup(ctx: &Ctx, server: &str, disc: &str) -> Result<()> {
    let r = ctx.resolve_vm(server)?;
    let path = format!("{}/backups", disc_path(&r, disc));
    let mut b = ctx
        .client()?
        .post(&path, &Value::Null, &format!("disc {disc} of {r}"))?;
    let label = text(&b, "label");
    if !ctx.no_wait
        && let Some(id) = b["id"].as_u64()
    {
        b = wait(
            ctx,
            &path,
            id,
            &format!("Taking {label} of {disc}"),
            |b| match b["state"].as_str() {
                Some("taken") => Some(Ok(())),
                Some("failed") => Some(Err(format!(
                    "the backup of {disc} failed: {}",
                    text(b, "error")
                ))),
                _ => None,
            },
        )?;
        note(format!("Backup {label} of {disc} of {r} taken."));
    } else {
        note(format!("Backup {label} of {disc} of {r} ordered."));
    }
    ctx.out.show(&b, HEADERS, || vec![row(&b)], || line(&b));
    Ok(())
}

pub fn restore(ctx: &Ctx, a: BackupArgs) -> Result<()> {
    let r = ctx.resolve_vm(&a.server)?;
    let (disc, backup) = (&a.disc, &a.backup);
    ctx.confirm(&format!(
        "This will replace everything on {disc} of {r} with the content of {backup}."
    ))?;
    let path = format!("{}/backups", disc_path(&r, disc));
    let mut b = ctx.client()?.put(
        &format!("{path}/{}", seg(backup)),
        &json!({"restore": true}),
        &format!("backup {backup} of {disc} of {r}"),
    )?;
    if !ctx.no_wait
        && let Some(id) = b["id"].as_u64()
    {
        b = wait(
            ctx,
            &path,
            id,
            &format!("Restoring {disc} from {backup}"),
            |b| match b["restore"]["state"].as_str() {
                Some("done") => Some(Ok(())),
                Some("failed") => Some(Err(format!(
                    "restoring {disc} from {backup} failed: {}",
                    text(&b["restore"], "error")
                ))),
                _ => None,
            },
        )?;
        note(format!("Restored {disc} of {r} from {backup}."));
    } else {
        note(format!(
            "Restore of {disc} of {r} from {backup} ordered; it runs while {r} is off."
        ));
    }
    if !ctx.out.is_human() {
        ctx.out.show(&b, HEADERS, || vec![row(&b)], String::new);
    }
    Ok(())
}

pub fn delete(ctx: &Ctx, a: BackupArgs) -> Result<()> {
    let r = ctx.resolve_vm(&a.server)?;
    let (disc, backup) = (&a.disc, &a.backup);
    ctx.confirm(&format!(
        "This will delete {backup} of {disc} of {r} for good."
    ))?;
    ctx.client()?.delete(
        &format!("{}/backups/{}?purge=true", disc_path(&r, disc), seg(backup)),
        &format!("backup {backup} of {disc} of {r}"),
    )?;
    note(format!("Deleted {backup} of {disc} of {r}."));
    Ok(())
}

fn keeping(capacity: u64) -> String {
    match capacity {
        0 => "keeping them all".to_owned(),
        1 => "keeping the newest".to_owned(),
        n => format!("keeping the newest {n}"),
    }
}

fn every(seconds: u64) -> String {
    match seconds {
        86_400 => "every day".into(),
        604_800 => "every week".into(),
        s if s % 86_400 == 0 => format!("every {} days", s / 86_400),
        s if s % 3600 == 0 => format!("every {} hours", s / 3600),
        s => format!("every {s} seconds"),
    }
}

pub fn schedule(ctx: &Ctx, a: ScheduleArgs) -> Result<()> {
    let interval = a.interval.unwrap_or(86_400);
    if interval == 0 {
        return Err(CliError::usage("the interval is in seconds and at least 1"));
    }
    let r = ctx.resolve_vm(&a.server)?;
    let s = ctx.client()?.post(
        &format!("{}/backup_schedules", disc_path(&r, &a.disc)),
        &json!({
            "start_at": a.start,
            "interval_seconds": interval,
            "capacity": a.capacity,
        }),
        &format!("disc {} of {r}", a.disc),
    )?;
    let keeping = keeping(a.capacity);
    ctx.out.show(
        &s,
        &["ID", "StartAt", "IntervalSeconds", "Capacity"],
        || {
            vec![vec![
                text(&s, "id"),
                text(&s, "start_at"),
                text(&s, "interval_seconds"),
                text(&s, "capacity"),
            ]]
        },
        || {
            format!(
                "Scheduled backups of {} of {r} {} from {}, {keeping} (schedule {}).\n",
                a.disc,
                every(interval),
                a.start,
                text(&s, "id")
            )
        },
    );
    Ok(())
}

pub fn unschedule(ctx: &Ctx, a: UnscheduleArgs) -> Result<()> {
    let r = ctx.resolve_vm(&a.server)?;
    ctx.client()?.delete(
        &format!("{}/backup_schedules/{}", disc_path(&r, &a.disc), a.schedule),
        &format!("backup schedule {} of {} of {r}", a.schedule, a.disc),
    )?;
    note(format!(
        "Removed backup schedule {} of {} of {r}; its backups stay.",
        a.schedule, a.disc
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_words_and_tomorrow() {
        assert_eq!(frequency("daily").unwrap(), Some(86_400));
        assert_eq!(frequency("weekly").unwrap(), Some(604_800));
        assert_eq!(frequency("never").unwrap(), None);
        assert_eq!(frequency("monthly").unwrap_err().exit, Exit::Usage);
        // 2026-12-06 01:03:45 UTC
        assert_eq!(tomorrow_midnight(1_796_519_025), "2026-12-07 00:00:00 UTC");
    }
}
