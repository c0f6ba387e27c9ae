//! Discs (bigv-api.md §6): list, show, add, grow, relabel, move between
//! servers, delete for good.
//!
//! A new disc has no pool: the reconciler places it, but only after the
//! API has checked that some pool of its grade has room. Changes to a
//! running server's discs reach the guest on its next restart.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use bigv_spine::SpineServer;
use serde_json::Value;

use super::access::Caller;
use super::error::ApiError;
use super::fields::Fields;
use super::power::{Planner, wants_to_run};
use super::views::{self, Flags};
use super::vms::find_vm;
use super::{AppState, lookup, names};
use crate::model::{Disc, DiscId, Level, Model, Target, Tx, Vm, VmId};
use crate::scheduler::NoCapacity;

/// Per server (paper §2).
pub const MAX_DISCS: usize = 8;
/// MiB.
pub const MIN_DISC_SIZE: u64 = 1024;
/// 2 TiB, in MiB.
pub const MAX_DISC_SIZE: u64 = 2 * 1024 * 1024;
/// The grade of a disc that names none (what the Go client assumes).
pub const DEFAULT_GRADE: &str = "sata";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/accounts/{acc}/groups/{grp}/virtual_machines/{vm}/discs",
            get(list).post(create),
        )
        .route(
            "/accounts/{acc}/groups/{grp}/virtual_machines/{vm}/discs/{disc}",
            get(show).put(update).delete(remove),
        )
        .route("/discs/{id}", get(show_by_id).delete(remove_by_id))
}

/// The grades a disc may ask for: those of the cluster's pools, plus the
/// usual two always (as `/definitions` lists them); not `iceberg`, the
/// grade of pools that keep backups.
pub fn storage_grades(model: &Model) -> Vec<String> {
    let mut grades: Vec<String> = model
        .pools
        .values()
        .map(|p| p.grade.clone())
        .chain(
            names::DEFAULT_STORAGE_GRADES
                .iter()
                .map(|g| (*g).to_owned()),
        )
        .collect();
    grades.retain(|g| g != crate::backups::ICEBERG);
    grades.sort();
    grades.dedup();
    grades
}

/// A disc as a request describes it.
#[derive(Debug, Clone)]
pub struct DiscIn {
    pub label: Option<String>,
    pub grade: String,
    pub size: u64,
}

fn read_label(f: &mut Fields) -> Option<String> {
    let label = f.string("label").filter(|l| !l.is_empty())?;
    let problems = names::disc_label_problems(&label);
    let ok = problems.is_empty();
    for p in problems {
        f.error("label", p);
    }
    ok.then_some(label)
}

fn read_size(f: &mut Fields) -> Option<u64> {
    f.u64_in("size", MIN_DISC_SIZE, MAX_DISC_SIZE)
}

/// Reads `label`, `storage_grade` and `size`; `None` if any is bad.
pub fn read_new_disc(f: &mut Fields, grades: &[String]) -> Option<DiscIn> {
    let label = read_label(f);
    let grade = f
        .string("storage_grade")
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| DEFAULT_GRADE.to_owned());
    let grade_ok = grades.contains(&grade);
    if !grade_ok {
        f.error(
            "storage_grade",
            format!("is not one of the storage grades: {}", grades.join(", ")),
        );
    }
    let size = if f.raw("size").is_none_or(Value::is_null) {
        f.error("size", "can't be blank");
        None
    } else {
        read_size(f)
    };
    (f.is_ok() && grade_ok).then_some(DiscIn {
        label,
        grade,
        size: size?,
    })
}

/// The next `disc-N` after the highest in use (or the count, whichever is
/// more), as the Go client numbers them.
pub fn next_label(taken: &[&str]) -> String {
    let highest = taken
        .iter()
        .filter_map(|l| {
            l.strip_prefix("disc-")
                .or_else(|| l.strip_prefix("disk-"))
                .and_then(|n| n.parse::<usize>().ok())
        })
        .max()
        .unwrap_or(0);
    let mut n = highest.max(taken.len()) + 1;
    while taken.contains(&format!("disc-{n}").as_str()) {
        n += 1;
    }
    format!("disc-{n}")
}

fn capacity(field: &'static str, e: NoCapacity) -> ApiError {
    ApiError::field(field, e.reason)
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp, vm)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let flags = Flags::parse(query.as_deref());
    let model = state.db.read();
    let found = find_vm(&model, &caller, &acc, &grp, &vm, flags.include_deleted)?;
    Ok(Json(Value::Array(
        model
            .discs_of(found.id)
            .map(|d| views::disc(&model, d))
            .collect(),
    )))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp, vm, disc)): Path<(String, String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let flags = Flags::parse(query.as_deref());
    let model = state.db.read();
    let found = find_vm(&model, &caller, &acc, &grp, &vm, flags.include_deleted)?;
    Ok(Json(views::disc(
        &model,
        lookup::disc(&model, found, &disc)?,
    )))
}

async fn show_by_id(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let model = state.db.read();
    Ok(Json(views::disc(
        &model,
        lookup::disc_by_id(&model, &caller, &id)?,
    )))
}

/// A server whose discs may change: vm_admin on it, and not deleted.
fn changeable<'m>(model: &Model, caller: &Caller, vm: &'m Vm) -> Result<&'m Vm, ApiError> {
    caller.require(model, Target::Vm(vm.id), Level::VmAdmin)?;
    if vm.deleted {
        return Err(ApiError::refused(format!(
            "{} is deleted: its discs cannot change unless it is restored",
            vm.name
        )));
    }
    Ok(vm)
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp, vm)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut f = views::body(&headers, &body)?;
    let spine = state.spine.clone();
    let disc = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let found = find_vm(model, &caller, &acc, &grp, &vm, true)?;
            let found = changeable(model, &caller, found)?;
            let existing: Vec<&str> = model.discs_of(found.id).map(|d| d.label.as_str()).collect();
            if existing.len() >= MAX_DISCS {
                return Err(ApiError::refused(format!(
                    "{} already has {} discs, the most a server may have",
                    found.name, MAX_DISCS
                )));
            }
            let new = read_new_disc(&mut f, &storage_grades(model));
            if let Some(label) = new.as_ref().and_then(|d| d.label.as_deref())
                && existing.contains(&label)
            {
                f.error(
                    "label",
                    "has already been taken by another disc of this server",
                );
            }
            f.finish()?;
            let Some(new) = new else {
                return Err(ApiError::Internal("disc passed checks unread".into()));
            };
            Planner::new(model, &spine, Some(found.id))
                .place_disc(&new.grade, new.size)
                .map_err(|e| capacity("storage_grade", e))?;
            let label = new.label.unwrap_or_else(|| next_label(&existing));
            let vm_id = found.id;
            let disc = Disc {
                id: DiscId(tx.new_id::<Disc>()?),
                vm_id,
                label,
                size: new.size,
                storage_grade: new.grade,
                storage_pool: None,
                address: None,
                generation: 0,
                iops_limit: None,
                template: None,
            };
            tx.put(disc.clone())?;
            tracing::info!(disc = %disc.id, vm = %vm_id, by = %caller.username, "added a disc");
            Ok::<_, ApiError>(disc)
        })
        .await?;
    state.reconcile.notify_one();
    let body = views::disc(&state.db.read(), &disc);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Applies `size` (grow only), `label`, `virtual_machine_id` (move) and
/// `iops_limit` (cluster admins).
fn patch(
    tx: &mut Tx<'_>,
    caller: &Caller,
    vm: VmId,
    disc: DiscId,
    mut f: Fields,
    spine: &SpineServer,
) -> Result<Disc, ApiError> {
    let model = tx.model();
    let (Some(src), Some(cur)) = (model.vm(vm), model.disc(disc)) else {
        return Err(ApiError::NotFound);
    };
    let src = changeable(model, caller, src)?;
    let mut new = cur.clone();

    if let Some(size) = f.u64("size") {
        if size < cur.size {
            f.error(
                "size",
                format!("cannot be resized to a lower size (it is {} MiB)", cur.size),
            );
        } else if size > MAX_DISC_SIZE {
            f.error(
                "size",
                format!("must be less than or equal to {MAX_DISC_SIZE}"),
            );
        } else {
            new.size = size;
        }
    }
    if let Some(label) = read_label(&mut f) {
        new.label = label;
    }
    if let Some(grade) = f.string("storage_grade")
        && grade != cur.storage_grade
    {
        f.error(
            "storage_grade",
            "cannot be changed here: ask an operator to regrade the disc",
        );
    }
    if f.has("iops_limit") {
        if !caller.is_cluster_admin(model) {
            return Err(ApiError::Forbidden);
        }
        new.iops_limit = if f.is_null("iops_limit") {
            None
        } else {
            f.u64("iops_limit")
        };
    }
    if let Some(to) = f.u64("virtual_machine_id").filter(|to| *to != vm.0) {
        match model
            .vm(VmId(to))
            .filter(|v| caller.can_see(model, Target::Vm(v.id)))
        {
            None => f.error("virtual_machine_id", "does not name a server you can see"),
            Some(dst) => {
                let dst = changeable(model, caller, dst)?;
                if wants_to_run(src) || wants_to_run(dst) {
                    f.error(
                        "virtual_machine_id",
                        "a disc moves only between servers that are both powered off",
                    );
                }
                if model.discs_of(src.id).next().map(|d| d.id) == Some(cur.id) {
                    f.error(
                        "virtual_machine_id",
                        "the first disc of a server (the one it boots from) cannot move",
                    );
                }
                if model.discs_of(dst.id).count() >= MAX_DISCS {
                    f.error(
                        "virtual_machine_id",
                        format!("{} already has {MAX_DISCS} discs", dst.name),
                    );
                }
                new.vm_id = dst.id;
            }
        }
    }
    if model
        .discs_of(new.vm_id)
        .any(|d| d.id != cur.id && d.label == new.label)
    {
        f.error(
            "label",
            "has already been taken by another disc of that server",
        );
    }
    f.finish()?;
    if new.size > cur.size {
        Planner::new(model, spine, Some(cur.vm_id))
            .grow_disc(cur, new.size)
            .map_err(|e| capacity("size", e))?;
    }
    if new != *cur {
        tracing::info!(disc = %cur.id, by = %caller.username, "changed a disc");
        tx.put(new.clone())?;
    }
    Ok(new)
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp, vm, disc)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let f = views::body(&headers, &body)?;
    let spine = state.spine.clone();
    let changed = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let found = find_vm(model, &caller, &acc, &grp, &vm, true)?;
            let disc = lookup::disc(model, found, &disc)?;
            let (vm_id, disc_id) = (found.id, disc.id);
            patch(tx, &caller, vm_id, disc_id, f, &spine)
        })
        .await?;
    state.reconcile.notify_one();
    let body = views::disc(&state.db.read(), &changed);
    Ok(Json(body).into_response())
}

/// Deletes a disc and its data: only with `?purge=true`, and only while
/// its server is off (a running guest would lose a disc under it).
fn purge(tx: &mut Tx<'_>, caller: &Caller, disc: DiscId, flags: Flags) -> Result<(), ApiError> {
    let model = tx.model();
    let cur = model.disc(disc).ok_or(ApiError::NotFound)?;
    let vm = model.vm(cur.vm_id).ok_or(ApiError::NotFound)?;
    let vm = changeable(model, caller, vm)?;
    if !flags.purge {
        return Err(ApiError::refused(format!(
            "deleting disc {} destroys its data and cannot be undone: repeat the request with \
             ?purge=true to confirm",
            cur.label
        )));
    }
    if wants_to_run(vm) {
        return Err(ApiError::refused(format!(
            "{} is running: stop it before removing its disc {}",
            vm.name, cur.label
        )));
    }
    tracing::info!(disc = %disc, vm = %vm.id, by = %caller.username, "purged a disc");
    tx.delete::<Disc>(disc.0)?;
    Ok(())
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp, vm, disc)): Path<(String, String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let flags = Flags::parse(query.as_deref());
    state
        .db
        .write(move |tx| {
            let model = tx.model();
            let found = find_vm(model, &caller, &acc, &grp, &vm, true)?;
            let id = lookup::disc(model, found, &disc)?.id;
            purge(tx, &caller, id, flags)
        })
        .await?;
    state.reconcile.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_by_id(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let flags = Flags::parse(query.as_deref());
    state
        .db
        .write(move |tx| {
            let id = lookup::disc_by_id(tx.model(), &caller, &id)?.id;
            purge(tx, &caller, id, flags)
        })
        .await?;
    state.reconcile.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_the_clients_numbering() {
        assert_eq!(next_label(&[]), "disc-1");
        assert_eq!(next_label(&["disc-1"]), "disc-2");
        assert_eq!(next_label(&["disc-5", "root"]), "disc-6");
        assert_eq!(next_label(&["root", "data"]), "disc-3");
    }
}
