//! Virtual machines (bigv-api.md §5): list, show, change (PUT behaves
//! like PATCH, including power, rename/move and restore), delete (soft,
//! or `?purge=true` for good).

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
use super::power::{Planner, no_capacity, wants_to_run};
use super::views::{self, Flags};
use super::vm_create::{self, MAX_CORES, MAX_MEMORY, MIN_CORES, MIN_MEMORY};
use super::{AppState, lookup};
use crate::model::{GroupId, Level, Model, Target, Tx, Vm};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/accounts/{acc}/groups/{grp}/virtual_machines",
            get(list).post(vm_create::bare_create),
        )
        .route(
            "/accounts/{acc}/groups/{grp}/virtual_machines/{vm}",
            get(show).put(update).delete(remove),
        )
        .route("/virtual_machines/{id}", get(show_by_id))
}

/// The VM at `/accounts/{acc}/groups/{grp}/virtual_machines/{vm}`.
pub fn find_vm<'m>(
    model: &'m Model,
    caller: &Caller,
    acc: &str,
    grp: &str,
    vm: &str,
    include_deleted: bool,
) -> Result<&'m Vm, ApiError> {
    let account = lookup::account(model, caller, acc)?;
    let group = lookup::group(model, caller, account, grp)?;
    lookup::vm(model, caller, group, vm, include_deleted)
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let flags = Flags::parse(query.as_deref());
    let model = state.db.read();
    let account = lookup::account(&model, &caller, &acc)?;
    let group = lookup::group(&model, &caller, account, &grp)?;
    let vms: Vec<Value> = views::visible_vms(&model, &caller, group, flags.include_deleted)
        .map(|v| views::vm(&model, v))
        .collect();
    Ok(Json(Value::Array(vms)))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp, vm)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let flags = Flags::parse(query.as_deref());
    let model = state.db.read();
    let found = find_vm(&model, &caller, &acc, &grp, &vm, flags.include_deleted)?;
    Ok(Json(views::vm(&model, found)))
}

async fn show_by_id(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let flags = Flags::parse(query.as_deref());
    let model = state.db.read();
    let found = lookup::vm_by_id(&model, &caller, &id, flags.include_deleted)?;
    Ok(Json(views::vm(&model, found)))
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp, vm)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let f = views::body(&headers, &body)?;
    let spine = state.spine.clone();
    let now = state.clock.now();
    let changed = state
        .db
        .write(move |tx| patch(tx, &caller, (&acc, &grp, &vm), f, &spine, now))
        .await?;
    state.reconcile.notify_one();
    let model = state.db.read();
    Ok(Json(views::vm(&model, &changed)).into_response())
}

/// Applies the attributes present in `f` to the VM (§5.4, §5.7).
fn patch(
    tx: &mut Tx<'_>,
    caller: &Caller,
    (acc, grp, vm): (&str, &str, &str),
    mut f: Fields,
    spine: &SpineServer,
    now: u64,
) -> Result<Vm, ApiError> {
    let model = tx.model();
    let cur = find_vm(model, caller, acc, grp, vm, true)?;
    caller.require(model, Target::Vm(cur.id), Level::VmAdmin)?;
    let mut new = cur.clone();

    let restoring = match (cur.deleted, f.bool("deleted")) {
        (true, Some(false)) => {
            new.deleted = false;
            new.deleted_at = None;
            true
        }
        (true, _) => {
            return Err(ApiError::refused(format!(
                "{} is deleted: restore it with {{\"deleted\":false}} before changing it",
                cur.name
            )));
        }
        (false, Some(true)) => {
            return Err(ApiError::refused(
                "to delete a server, send DELETE to it rather than setting deleted",
            ));
        }
        (false, _) => false,
    };

    if let Some(m) = f.u64_in("memory", MIN_MEMORY, MAX_MEMORY) {
        new.memory = m;
    }
    if let Some(c) = f.u64_in("cores", MIN_CORES, MAX_CORES) {
        new.cores = c as u32;
    }
    if let Some(p) = f.bool("power_on") {
        new.power_on = p;
    }
    if let Some(a) = f.bool("autoreboot_on") {
        new.autoreboot_on = a;
    }
    if let Some(c) = vm_create::read_cdrom(&mut f) {
        new.cdrom_url = c;
    }
    if let Some(h) = vm_create::read_hardware_profile(&mut f) {
        new.hardware_profile = h;
    }
    if let Some(l) = f.bool("hardware_profile_locked") {
        new.hardware_profile_locked = l;
    }
    if let Some(k) = vm_create::read_keymap(&mut f) {
        new.keymap = k;
    }
    if let Some(zone) = f.string("zone_name").filter(|z| !z.is_empty())
        && Some(&zone) != cur.zone_name.as_ref()
    {
        f.error("zone_name", "cannot be changed once the server exists");
    }

    // Rename and move: group_admin on the group it ends up in.
    if f.has("group_id")
        && let Some(id) = f.u64("group_id")
    {
        match model
            .group(GroupId(id))
            .filter(|g| caller.can_see(model, Target::Group(g.id)))
        {
            Some(g) => new.group_id = g.id,
            None => f.error("group_id", "does not name a group you can see"),
        }
    }
    if f.has("name")
        && let Some(name) = vm_create::read_name(&mut f)
    {
        new.name = name;
    }
    let moving = new.group_id != cur.group_id;
    let renaming = new.name != cur.name;
    if moving || renaming {
        caller.require(model, Target::Group(new.group_id), Level::GroupAdmin)?;
    }
    let clash = model
        .vms_in(new.group_id)
        .any(|v| v.id != cur.id && !v.deleted && v.name == new.name);
    if (moving || renaming || restoring) && clash {
        f.error("name", "has already been taken");
    }
    if moving {
        let account_of = |g: GroupId| model.group(g).map(|g| g.account_id);
        if account_of(new.group_id) != account_of(cur.group_id) {
            // Anti-affinity groups belong to an account.
            new.anti_affinity_group = None;
        }
    }
    f.finish()?;

    let starting = wants_to_run(&new) && !wants_to_run(cur);
    let growing = wants_to_run(&new) && new.memory > cur.memory;
    if starting || growing {
        let mut planner = Planner::new(model, spine, Some(cur.id));
        planner.run(model, &new, Some(cur)).map_err(no_capacity)?;
        if starting {
            planner.place_unplaced(model, cur.id).map_err(no_capacity)?;
        }
    }
    if new != *cur {
        tracing::info!(vm = %cur.id, by = %caller.username, at = now, "changed a server");
        tx.put(new.clone())?;
    }
    Ok(new)
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp, vm)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let flags = Flags::parse(query.as_deref());
    let now = state.clock.now();
    state
        .db
        .write(move |tx| {
            let model = tx.model();
            let found = find_vm(
                model,
                &caller,
                &acc,
                &grp,
                &vm,
                flags.purge || flags.include_deleted,
            )?;
            caller.require(model, Target::Vm(found.id), Level::VmAdmin)?;
            if flags.purge {
                let id = found.id;
                tracing::info!(vm = %id, name = %found.name, by = %caller.username, "purging a server");
                Ok(crate::purge::purge_vm(tx, id)?)
            } else if found.deleted {
                Err(ApiError::refused(format!(
                    "{} is already deleted; to remove it for good, DELETE it with ?purge=true",
                    found.name
                )))
            } else {
                let mut gone = found.clone();
                gone.deleted = true;
                gone.deleted_at = Some(now);
                gone.power_on = false;
                gone.autoreboot_on = false;
                tracing::info!(vm = %gone.id, by = %caller.username, "deleted a server");
                tx.put(gone)?;
                Ok(())
            }
        })
        .await?;
    state.reconcile.notify_one();
    Ok(StatusCode::NO_CONTENT)
}
