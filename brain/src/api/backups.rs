//! Backups and backup schedules of a disc (bigv-api.md §9). Listing needs
//! sight of the server; taking, restoring and deleting backups and
//! changing schedules need `vm_admin` on it, and a server that is not
//! deleted. A restore needs the server powered off. The work itself is
//! the reconciler's and the tail's (`crate::backups`); the records show
//! its progress (`state`, `restore.state`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{delete, get, put};
use serde_json::Value;

use super::access::Caller;
use super::error::ApiError;
use super::fields::Fields;
use super::power::wants_to_run;
use super::views::{self, Flags};
use super::vms::find_vm;
use super::{AppState, lookup};
use crate::backups::{self, MIN_INTERVAL};
use crate::model::{
    Backup, BackupSchedule, BackupState, Disc, Level, Model, RestoreState, Target, Vm,
};

const DISC: &str = "/accounts/{acc}/groups/{grp}/virtual_machines/{vm}/discs/{disc}";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(&format!("{DISC}/backups"), get(list).post(create))
        .route(
            &format!("{DISC}/backups/{{backup}}"),
            put(restore).delete(remove),
        )
        .route(
            &format!("{DISC}/backup_schedules"),
            get(schedules).post(schedule),
        )
        .route(
            &format!("{DISC}/backup_schedules/{{id}}"),
            delete(unschedule),
        )
}

type DiscPath = (String, String, String, String);

/// The server and disc a path names, as the caller may see them.
fn find<'m>(
    model: &'m Model,
    caller: &Caller,
    (acc, grp, vm, disc): &DiscPath,
) -> Result<(&'m Vm, &'m Disc), ApiError> {
    let vm = find_vm(model, caller, acc, grp, vm, true)?;
    let disc = lookup::disc(model, vm, disc)?;
    Ok((vm, disc))
}

/// The same, for a change: `vm_admin`, and the server not deleted.
fn find_changeable<'m>(
    model: &'m Model,
    caller: &Caller,
    path: &DiscPath,
) -> Result<(&'m Vm, &'m Disc), ApiError> {
    let (vm, disc) = find(model, caller, path)?;
    caller.require(model, Target::Vm(vm.id), Level::VmAdmin)?;
    if vm.deleted {
        return Err(ApiError::refused(format!(
            "{} is deleted: its discs' backups cannot change unless it is restored",
            vm.name
        )));
    }
    Ok((vm, disc))
}

/// A backup of `disc` by id or label (`backup-N`); ones being deleted
/// are gone already as far as the API is concerned.
fn find_backup<'m>(model: &'m Model, disc: &Disc, seg: &str) -> Result<&'m Backup, ApiError> {
    let id = seg
        .strip_prefix("backup-")
        .unwrap_or(seg)
        .parse::<u64>()
        .map_err(|_| ApiError::NotFound)?;
    model
        .backups
        .get(&id)
        .filter(|b| b.disc_id == disc.id && backups::visible(b))
        .ok_or(ApiError::NotFound)
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<DiscPath>,
) -> Result<Json<Value>, ApiError> {
    let model = state.db.read();
    let (_, disc) = find(&model, &caller, &path)?;
    Ok(Json(Value::Array(
        model
            .backups_of(disc.id)
            .filter(|b| backups::visible(b))
            .map(|b| views::backup(&model, b))
            .collect(),
    )))
}

/// `POST .../backups`: no body; 202 with the backup, `state: pending`
/// until the tail has taken it.
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<DiscPath>,
) -> Result<Response, ApiError> {
    let now = state.clock.now();
    let backup = state
        .db
        .write(move |tx| {
            let (_, disc) = find_changeable(tx.model(), &caller, &path)?;
            let disc = disc.clone();
            let b = backups::order(tx, &disc, true, None, now)?;
            tracing::info!(backup = b.id, disc = %disc.id, by = %caller.username, "backup ordered");
            Ok::<_, ApiError>(b)
        })
        .await?;
    state.reconcile.notify_one();
    let body = views::backup(&state.db.read(), &backup);
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `PUT .../backups/{b}` `{"restore":true}`: replaces the disc's content
/// with the backup's, once the server is off (refused while it runs).
async fn restore(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp, vm, disc, backup)): Path<(String, String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut f = views::body(&headers, &body)?;
    let path = (acc, grp, vm, disc);
    let restored = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let (vm, disc) = find_changeable(model, &caller, &path)?;
            let b = find_backup(model, disc, &backup)?;
            match f.bool("restore") {
                Some(true) => {}
                Some(false) => f.error("restore", "must be true (the only change a backup takes)"),
                None if f.is_ok() => f.error("restore", "can't be blank"),
                None => {}
            }
            f.finish()?;
            if wants_to_run(vm) {
                return Err(ApiError::refused(format!(
                    "{} is powered on: stop it before restoring a backup over its disc {}",
                    vm.name, disc.label
                )));
            }
            if b.state != BackupState::Taken {
                return Err(ApiError::refused(format!(
                    "{} is {:?}, not taken yet: only a taken backup can be restored",
                    backups::label(b),
                    b.state
                )));
            }
            let busy = model.backups_of(disc.id).any(|o| {
                o.restore
                    .as_ref()
                    .is_some_and(|r| r.state == RestoreState::Pending)
            });
            if busy {
                return Err(ApiError::refused(format!(
                    "a restore of disc {} is already under way",
                    disc.label
                )));
            }
            let b = b.clone();
            let b = backups::order_restore(tx, &b)?;
            tracing::info!(backup = b.id, by = %caller.username, "restore ordered");
            Ok::<_, ApiError>(b)
        })
        .await?;
    state.reconcile.notify_one();
    let body = views::backup(&state.db.read(), &restored);
    Ok(Json(body).into_response())
}

/// `DELETE .../backups/{b}?purge=true`.
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp, vm, disc, backup)): Path<(String, String, String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let flags = Flags::parse(query.as_deref());
    let path = (acc, grp, vm, disc);
    state
        .db
        .write(move |tx| {
            let model = tx.model();
            let (_, disc) = find_changeable(model, &caller, &path)?;
            let b = find_backup(model, disc, &backup)?.clone();
            if !flags.purge {
                return Err(ApiError::refused(format!(
                    "deleting {} cannot be undone: repeat the request with ?purge=true to confirm",
                    backups::label(&b)
                )));
            }
            if b.restore
                .as_ref()
                .is_some_and(|r| r.state == RestoreState::Pending)
            {
                return Err(ApiError::refused(format!(
                    "{} is being restored: wait for the restore to finish",
                    backups::label(&b)
                )));
            }
            tracing::info!(backup = b.id, by = %caller.username, "backup deleted");
            backups::delete(tx, &b)?;
            Ok::<_, ApiError>(())
        })
        .await?;
    state.reconcile.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

async fn schedules(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<DiscPath>,
) -> Result<Json<Value>, ApiError> {
    let model = state.db.read();
    let (_, disc) = find(&model, &caller, &path)?;
    Ok(Json(Value::Array(
        model
            .schedules_of(disc.id)
            .map(views::backup_schedule)
            .collect(),
    )))
}

/// A schedule as a request describes it (`start_at`, `interval_seconds`,
/// `capacity`); errors name the fields.
pub struct ScheduleIn {
    pub start_at: String,
    pub interval_seconds: u64,
    pub capacity: u64,
    pub next_at: u64,
}

pub fn read_schedule(f: &mut Fields, now: u64) -> Option<ScheduleIn> {
    let start_at = f.required_string("start_at");
    let interval = match f.raw("interval_seconds") {
        None | Some(Value::Null) => {
            f.error("interval_seconds", "can't be blank");
            None
        }
        Some(_) => f.u64_in("interval_seconds", MIN_INTERVAL, 366 * 86_400),
    };
    let capacity = if f.raw("capacity").is_none_or(Value::is_null) {
        Some(1)
    } else {
        f.u64_in("capacity", 0, 1000)
    };
    let next_at = match (&start_at, interval) {
        (Some(s), Some(i)) => {
            let next = backups::first_run(s, i, now);
            if next.is_none() {
                f.error(
                    "start_at",
                    "is not a time: give 'YYYY-MM-DD HH:MM:SS UTC' or a time of day 'HH:MM'",
                );
            }
            next
        }
        _ => None,
    };
    Some(ScheduleIn {
        start_at: start_at?,
        interval_seconds: interval?,
        capacity: capacity?,
        next_at: next_at?,
    })
}

/// Stores a schedule for `disc`.
pub fn add_schedule(
    tx: &mut crate::model::Tx<'_>,
    disc: crate::model::DiscId,
    s: ScheduleIn,
) -> Result<BackupSchedule, crate::model::DbError> {
    let schedule = BackupSchedule {
        id: tx.new_id::<BackupSchedule>()?,
        disc_id: disc,
        start_at: s.start_at,
        interval_seconds: s.interval_seconds,
        capacity: s.capacity,
        next_at: s.next_at,
    };
    tx.put(schedule.clone())?;
    Ok(schedule)
}

async fn schedule(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<DiscPath>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut f = views::body(&headers, &body)?;
    let now = state.clock.now();
    let schedule = state
        .db
        .write(move |tx| {
            let (_, disc) = find_changeable(tx.model(), &caller, &path)?;
            let disc = disc.id;
            let new = read_schedule(&mut f, now);
            f.finish()?;
            let new = new.ok_or_else(|| ApiError::Internal("schedule passed checks unread".into()))?;
            let s = add_schedule(tx, disc, new)?;
            tracing::info!(schedule = s.id, disc = %disc, by = %caller.username, "backup schedule added");
            Ok::<_, ApiError>(s)
        })
        .await?;
    state.reconcile.notify_one();
    Ok((StatusCode::CREATED, Json(views::backup_schedule(&schedule))).into_response())
}

/// `DELETE .../backup_schedules/{id}`: the schedule stops; the backups
/// it took stay until deleted.
async fn unschedule(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp, vm, disc, id)): Path<(String, String, String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let path = (acc, grp, vm, disc);
    state
        .db
        .write(move |tx| {
            let model = tx.model();
            let (_, disc) = find_changeable(model, &caller, &path)?;
            let id = id.parse::<u64>().map_err(|_| ApiError::NotFound)?;
            model
                .backup_schedules
                .get(&id)
                .filter(|s| s.disc_id == disc.id)
                .ok_or(ApiError::NotFound)?;
            tracing::info!(schedule = id, by = %caller.username, "backup schedule deleted");
            tx.delete::<BackupSchedule>(id)?;
            Ok::<_, ApiError>(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
