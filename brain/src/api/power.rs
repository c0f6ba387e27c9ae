//! Capacity checks before a VM is asked to run, and the two VM actions
//! that are not plain attribute changes: signal (§5.5) and reimage (§5.6).
//!
//! The API never leaves a VM that cannot run: whenever a request would
//! make a VM want to run (create, start, reimage, more memory) it first
//! plays the reconciler's placement forward with the scheduler's own
//! rules, and answers 400 naming the field if nothing fits.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use bigv_spine::SpineServer;
use bigv_spine::resource::{
    ImagerOptions, ResourceValue, SignalKind, TemplateCopy, VmRunState, VmSignal,
};
use serde_json::json;

use super::access::Caller;
use super::error::ApiError;
use super::fields::Fields;
use super::names;
use super::vms::find_vm;
use super::{AppState, views};
use crate::model::{
    Disc, Level, Model, Operation, OperationId, OperationKind, OperationState, Target, Vm, VmId,
};
use crate::scheduler::{Facts, NoCapacity, vm_resource};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/accounts/{acc}/groups/{grp}/virtual_machines/{vm}/signal",
            post(signal),
        )
        .route(
            "/accounts/{acc}/groups/{grp}/virtual_machines/{vm}/reimage",
            post(reimage),
        )
}

/// Whether the reconciler will try to run it (`power_on=false` with
/// autoreboot means "reboot", so it too wants to run).
pub fn wants_to_run(vm: &Vm) -> bool {
    !vm.deleted && (vm.power_on || vm.autoreboot_on)
}

/// Placement played forward: what the scheduler knows now, plus the VMs
/// and discs the reconciler has yet to place, booked where it would put
/// them. Requests that book room in turn see each other's bookings.
pub struct Planner {
    facts: Facts,
}

impl Planner {
    /// `subject` is the VM the request is about: its own pending
    /// placements are left for the request to book.
    pub fn new(model: &Model, spine: &SpineServer, subject: Option<VmId>) -> Planner {
        let mut facts = Facts::gather(model, spine);
        // The model's indexes list what is not placed yet, so this costs
        // what is pending, not the size of the cluster.
        for v in model.unplaced_vms() {
            if Some(v.id) != subject
                && let Ok(head) = facts.pick_head(model, v, &[])
            {
                facts.reserve_head(&head, v.id, v.memory);
            }
        }
        for d in model.unplaced_discs() {
            if Some(d.vm_id) != subject
                && let Ok(pool) = facts.pick_pool(&d.storage_grade, d.size, &[])
            {
                facts.reserve_pool(&pool, d.size);
            }
        }
        Planner { facts }
    }

    /// Books a head for `vm` to run on. `current` is the VM as it is now:
    /// whatever it holds on its head is given back first, since the new
    /// spec replaces it.
    pub fn run(&mut self, model: &Model, vm: &Vm, current: Option<&Vm>) -> Result<(), NoCapacity> {
        if let Some(cur) = current.filter(|c| wants_to_run(c))
            && let Some(h) = cur
                .head
                .as_deref()
                .and_then(|h| self.facts.heads.get_mut(h))
        {
            h.free_memory += cur.memory;
            h.vms.retain(|v| *v != cur.id);
        }
        let head = self.facts.pick_head(model, vm, &[])?;
        self.facts.reserve_head(&head, vm.id, vm.memory);
        Ok(())
    }

    /// Books room for a new disc.
    pub fn place_disc(&mut self, grade: &str, size: u64) -> Result<(), NoCapacity> {
        let pool = self.facts.pick_pool(grade, size, &[])?;
        self.facts.reserve_pool(&pool, size);
        Ok(())
    }

    /// Books room for the VM's discs that have no pool yet.
    pub fn place_unplaced(&mut self, model: &Model, vm: VmId) -> Result<(), NoCapacity> {
        for d in model.discs_of(vm).filter(|d| d.storage_pool.is_none()) {
            self.place_disc(&d.storage_grade, d.size)
                .map_err(|e| NoCapacity {
                    field: e.field,
                    reason: format!("disc {}: {}", d.label, e.reason),
                })?;
        }
        Ok(())
    }

    /// Books room for `disc` to grow to `size` MiB where it lives.
    pub fn grow_disc(&mut self, disc: &Disc, size: u64) -> Result<(), NoCapacity> {
        let extra = size.saturating_sub(disc.size);
        match disc.storage_pool.as_deref() {
            None => self.place_disc(&disc.storage_grade, size),
            Some(label) => match self.facts.pools.get(label) {
                Some(p) if p.room() >= extra => {
                    self.facts.reserve_pool(label, extra);
                    Ok(())
                }
                Some(p) => Err(NoCapacity {
                    field: "size",
                    reason: format!(
                        "its storage pool has room for {} MiB more, not {extra} MiB",
                        p.room()
                    ),
                }),
                None => Err(NoCapacity {
                    field: "size",
                    reason: "its storage pool is not available to grow it now".into(),
                }),
            },
        }
    }
}

/// The 400 for a capacity refusal.
pub fn no_capacity(e: NoCapacity) -> ApiError {
    ApiError::field(e.field, e.reason)
}

async fn signal(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp, vm)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut f = views::body(&headers, &body)?;
    let (kind, data) = {
        let model = state.db.read();
        let found = find_vm(&model, &caller, &acc, &grp, &vm, false)?;
        caller.require(&model, Target::Vm(found.id), Level::VmAdmin)?;
        let kind = match f.required_string("signal").as_deref() {
            Some("powerdown") => Some(SignalKind::Powerdown),
            Some("reset") => Some(SignalKind::Reset),
            Some("sendkey") => Some(SignalKind::Sendkey),
            Some(other) => {
                f.error(
                    "signal",
                    format!("{other:?} is not one of the signals: powerdown, reset, sendkey"),
                );
                None
            }
            None => None,
        };
        let data = f.string("data");
        if kind == Some(SignalKind::Sendkey) {
            for p in names::sendkey_problems(data.as_deref().unwrap_or("")) {
                f.error("data", p);
            }
        }
        f.finish()?;
        let kind = kind.ok_or_else(|| ApiError::Internal("signal passed checks unnamed".into()))?;
        (kind, data)
    };
    let keys = (kind == SignalKind::Sendkey)
        .then(|| data.clone())
        .flatten();
    let echo_kind = kind;
    let spine = state.spine.clone();
    state
        .db
        .write(move |tx| {
            let model = tx.model();
            let found = find_vm(model, &caller, &acc, &grp, &vm, false)?;
            caller.require(model, Target::Vm(found.id), Level::VmAdmin)?;
            if !found.power_on {
                return Err(ApiError::refused(format!(
                    "{} is powered off: signals can only be sent to a running server",
                    found.name
                )));
            }
            // §5.5: "only valid on a running VM". One that is still being
            // placed, imaged or started has no process to take the signal,
            // and a start clears any signal recorded before it (a signal is
            // for the process it was sent to), so accepting it would drop
            // it silently. A VM on a head out of reach may still run: its
            // signal is recorded and goes out when the head is back.
            if guest(&spine, found) == Guest::NotRunning {
                return Err(ApiError::refused(format!(
                    "{} is not running yet: signals can only be sent to a running server; \
                     try again once it has started",
                    found.name
                )));
            }
            let mut changed = found.clone();
            let seq = found.signal.as_ref().map_or(0, |s| s.seq) + 1;
            changed.signal = Some(VmSignal { seq, kind, keys });
            tx.put(changed)?;
            Ok::<_, ApiError>(())
        })
        .await?;
    state.reconcile.notify_one();
    let name = match echo_kind {
        SignalKind::Powerdown => "powerdown",
        SignalKind::Reset => "reset",
        SignalKind::Sendkey => "sendkey",
    };
    let mut echo = json!({"signal": name});
    if echo_kind == SignalKind::Sendkey {
        echo["data"] = json!(data);
    }
    Ok(Json(echo).into_response())
}

/// What the brain knows about a VM's guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guest {
    /// Its head reports it running (or paused, or migrating away): a qemu
    /// process that can take a signal.
    Running,
    /// Not placed, or its connected head does not report it running: not
    /// started yet (being placed, imaged or started) or stopped.
    NotRunning,
    /// Its head is not connected (or has not finished its dump): unknown,
    /// not dead (BRIEF decision 4); it may well still run.
    Unknown,
}

pub fn guest(spine: &SpineServer, vm: &Vm) -> Guest {
    let Some(head) = vm.head.as_deref() else {
        return Guest::NotRunning;
    };
    let Some(handle) = spine.node(head).filter(|h| h.is_ready()) else {
        return Guest::Unknown;
    };
    match handle.resource(&vm_resource(vm.id)) {
        Some((ResourceValue::Vm(spec), _))
            if matches!(
                spec.state,
                Some(VmRunState::Running | VmRunState::Paused | VmRunState::Migrating)
            ) =>
        {
            Guest::Running
        }
        _ => Guest::NotRunning,
    }
}

/// Longest `ssh_public_key` / `firstboot_script` accepted: they reach
/// the guest on a small seed drive through one spine message.
pub const MAX_IMAGER_TEXT: usize = 64 * 1024;
/// Longest root password accepted.
pub const MAX_ROOT_PASSWORD: usize = 1024;

/// Reads the imager's fields of a reimage request (bigv-api.md §5.3,
/// §5.6), reporting a wrong type or an oversize value on its field, and
/// hashes the root password (SHA-512 crypt): the plaintext is never
/// stored. The instance id is filled in by [`order_reimage`].
pub fn imager_fields(f: &mut Fields) -> ImagerOptions {
    let text = |f: &mut Fields, name: &str, max: usize| {
        let value = f.string(name).unwrap_or_default();
        if value.len() > max {
            f.error(name, format!("is too long (at most {max} bytes)"));
        }
        value
    };
    let password = text(f, "root_password", MAX_ROOT_PASSWORD);
    let ssh_public_key = text(f, "ssh_public_key", MAX_IMAGER_TEXT);
    let firstboot_script = text(f, "firstboot_script", MAX_IMAGER_TEXT);
    let root_password_hash = (!password.is_empty() && password.len() <= MAX_ROOT_PASSWORD)
        .then(|| crate::password::crypt_sha512(&password));
    ImagerOptions {
        instance_id: String::new(),
        root_password_hash,
        ssh_public_key,
        firstboot_script,
    }
}

/// Orders `image` copied onto `disc` (its next template `seq`), records
/// `last_imaged_with` and the imager options under a fresh instance id
/// (the guest runs its first-boot steps once per imaging), and an
/// operation to follow it by.
pub fn order_reimage(
    tx: &mut crate::model::Tx<'_>,
    vm: &mut Vm,
    mut disc: Disc,
    image: &str,
    options: ImagerOptions,
    now: u64,
) -> Result<(), ApiError> {
    let seq = disc.template.as_ref().map_or(0, |t| t.seq) + 1;
    disc.template = Some(TemplateCopy {
        seq,
        image: image.to_owned(),
    });
    tx.put(disc)?;
    vm.last_imaged_with = Some(image.to_owned());
    let id = OperationId(tx.new_id::<Operation>()?);
    vm.imager_options = Some(ImagerOptions {
        instance_id: format!("bigv-vm{}-op{}", vm.id.0, id.0),
        ..options
    });
    tx.put(Operation {
        id,
        kind: OperationKind::Reimage {
            vm_id: vm.id,
            distribution: image.to_owned(),
        },
        state: OperationState::Running,
        phase: "queued".into(),
        done: 0,
        total: 1,
        error: None,
        created_at: now,
        updated_at: now,
    })?;
    Ok(())
}

/// "is not one of the available images: a, b" for an unknown image, and a
/// size complaint if the first disc is too small for it.
pub fn image_problems(model: &Model, image: &str, first_disc_size: Option<u64>) -> Vec<String> {
    let Some(found) = model.images.get(image) else {
        let names: Vec<&str> = model.images.keys().map(String::as_str).collect();
        let list = if names.is_empty() {
            "(none yet)".to_owned()
        } else {
            names.join(", ")
        };
        return vec![format!("is not one of the available images: {list}")];
    };
    match first_disc_size {
        None => vec!["needs a disc to install onto, and this server has none".into()],
        Some(size) if size < found.size => vec![format!(
            "needs a first disc of at least {} MiB; it is {size} MiB",
            found.size
        )],
        Some(_) => vec![],
    }
}

async fn reimage(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp, vm)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut f = views::body(&headers, &body)?;
    let now = state.clock.now();
    let spine = state.spine.clone();
    let distribution = f.required_string("distribution");
    let root_password = f.string("root_password");
    let imager = imager_fields(&mut f);
    let echo_distribution = distribution.clone();
    state
        .db
        .write(move |tx| {
            let model = tx.model();
            let found = find_vm(model, &caller, &acc, &grp, &vm, false)?;
            caller.require(model, Target::Vm(found.id), Level::VmAdmin)?;
            if wants_to_run(found) {
                return Err(ApiError::refused(format!(
                    "{} must be powered off before it is reimaged: stop it first",
                    found.name
                )));
            }
            let first = model.discs_of(found.id).next();
            if let Some(image) = distribution.as_deref() {
                for p in image_problems(model, image, first.map(|d| d.size)) {
                    f.error("distribution", p);
                }
            }
            f.finish()?;
            let (Some(image), Some(first)) = (distribution, first) else {
                return Err(ApiError::Internal(
                    "reimage passed checks without an image or a disc".into(),
                ));
            };
            let mut changed = found.clone();
            // After a reimage the VM boots once; autoreboot stays off (§5.6).
            changed.power_on = true;
            changed.autoreboot_on = false;
            let mut planner = Planner::new(model, &spine, Some(found.id));
            planner
                .run(model, &changed, Some(found))
                .and_then(|()| planner.place_unplaced(model, found.id))
                .map_err(no_capacity)?;
            let first = first.clone();
            order_reimage(tx, &mut changed, first, &image, imager, now)?;
            tx.put(changed)?;
            Ok::<_, ApiError>(())
        })
        .await?;
    state.reconcile.notify_one();
    Ok(Json(json!({
        "distribution": echo_distribution,
        "root_password": root_password,
    }))
    .into_response())
}
