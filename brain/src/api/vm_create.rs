//! Creating VMs: the transactional `vm_create` (bigv-api.md §5.3) and the
//! bare `POST .../virtual_machines`, which share one path.
//!
//! Everything is checked before anything is written: names, attributes,
//! each disc, the image, requested addresses, then capacity. Errors about
//! one disc go in the per-disc array the clients understand
//! (`{"discs":[{},{"size":["..."]}]}`). A VM asked to run must have a
//! head with room; every disc, running or not, must have a pool with room
//! (a disc is created on a tail whether or not its VM runs).

use std::collections::BTreeMap;
use std::net::IpAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use bigv_spine::SpineServer;
use bigv_spine::resource::ImagerOptions;
use serde_json::{Map, Value};

use super::access::Caller;
use super::addresses::{Allocator, Chosen, Family};
use super::backups::{self, ScheduleIn};
use super::discs::{self, DiscIn};
use super::error::ApiError;
use super::fields::Fields;
use super::power::{self, Planner};
use super::{AppState, lookup, names, views};
use crate::model::{
    Disc, DiscId, GroupId, IpRecord, Level, Model, Nic, NicId, Target, Tx, Vm, VmId,
};

pub const MIN_MEMORY: u64 = 256;
/// 256 GiB: more than any head offers today; heads refuse what they lack.
pub const MAX_MEMORY: u64 = 262_144;
pub const DEFAULT_MEMORY: u64 = 1024;
pub const MIN_CORES: u64 = 1;
pub const MAX_CORES: u64 = 32;
/// Every VM gets exactly one NIC; the API offers no way to add more, so
/// the documented limit of 8 is never reached.
pub const MAX_NICS: usize = 8;

pub fn routes() -> Router<AppState> {
    Router::new().route("/accounts/{acc}/groups/{grp}/vm_create", post(vm_create))
}

/// Field problems, with per-disc ones kept apart for the nested shape.
#[derive(Default)]
pub struct Problems {
    top: BTreeMap<String, Vec<String>>,
    discs: Vec<BTreeMap<String, Vec<String>>>,
}

fn errors_of(f: Fields) -> BTreeMap<String, Vec<String>> {
    match f.finish() {
        Err(ApiError::Invalid(errors)) => errors,
        _ => BTreeMap::new(),
    }
}

impl Problems {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.top
            .entry(field.to_owned())
            .or_default()
            .push(message.into());
    }

    pub fn absorb(&mut self, f: Fields) {
        for (k, v) in errors_of(f) {
            self.top.entry(k).or_default().extend(v);
        }
    }

    fn disc(&mut self, i: usize, field: &str, message: impl Into<String>) {
        if self.discs.len() <= i {
            self.discs.resize_with(i + 1, BTreeMap::new);
        }
        self.discs[i]
            .entry(field.to_owned())
            .or_default()
            .push(message.into());
    }

    fn absorb_disc(&mut self, i: usize, f: Fields) {
        for (k, v) in errors_of(f) {
            for m in v {
                self.disc(i, &k, m);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.top.is_empty() && self.discs.iter().all(BTreeMap::is_empty)
    }

    /// `Ok` when there are none; else the 400 (see [`Problems::into_error`]).
    pub fn check(self, disc_count: usize) -> Result<(), ApiError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.into_error(disc_count))
        }
    }

    /// The 400, nested if a disc is at fault; `disc_count` sizes the
    /// per-disc array.
    pub fn into_error(self, disc_count: usize) -> ApiError {
        if self.discs.iter().all(BTreeMap::is_empty) {
            return ApiError::Invalid(self.top);
        }
        let mut body: Map<String, Value> = self
            .top
            .into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect();
        let mut per_disc = self.discs;
        per_disc.resize_with(disc_count.max(per_disc.len()), BTreeMap::new);
        body.insert(
            "discs".into(),
            Value::Array(
                per_disc
                    .into_iter()
                    .map(|d| Value::Object(d.into_iter().map(|(k, v)| (k, v.into())).collect()))
                    .collect(),
            ),
        );
        ApiError::InvalidShaped(body)
    }
}

/// `cdrom_url`: `Some(None)` ejects (null or ""), `Some(Some(url))` inserts.
pub fn read_cdrom(f: &mut Fields) -> Option<Option<String>> {
    if !f.has("cdrom_url") {
        return None;
    }
    match f.string("cdrom_url").filter(|s| !s.trim().is_empty()) {
        None => Some(None),
        Some(url) => {
            let problems = names::cdrom_url_problems(&url);
            let ok = problems.is_empty();
            for p in problems {
                f.error("cdrom_url", p);
            }
            ok.then_some(Some(url))
        }
    }
}

pub fn read_hardware_profile(f: &mut Fields) -> Option<String> {
    let profile = f.string("hardware_profile").filter(|s| !s.is_empty())?;
    if names::HARDWARE_PROFILES.contains(&profile.as_str()) {
        Some(profile)
    } else {
        f.error(
            "hardware_profile",
            format!(
                "is not one of the hardware profiles: {}",
                names::HARDWARE_PROFILES.join(", ")
            ),
        );
        None
    }
}

/// `keymap`: `Some(None)` clears it.
pub fn read_keymap(f: &mut Fields) -> Option<Option<String>> {
    if !f.has("keymap") {
        return None;
    }
    match f.string("keymap").filter(|s| !s.is_empty()) {
        None => Some(None),
        Some(k) if names::KEYMAPS.contains(&k.as_str()) => Some(Some(k)),
        Some(_) => {
            f.error(
                "keymap",
                format!("is not one of the keymaps: {}", names::KEYMAPS.join(", ")),
            );
            None
        }
    }
}

/// `zone_name`, which must be one of the cluster's zones; "" is none.
pub fn read_zone(f: &mut Fields, zones: &[String]) -> Option<String> {
    let zone = f.string("zone_name").filter(|s| !s.is_empty())?;
    if zones.contains(&zone) {
        Some(zone)
    } else {
        f.error(
            "zone_name",
            format!("is not one of the zones: {}", zones.join(", ")),
        );
        None
    }
}

pub fn read_name(f: &mut Fields) -> Option<String> {
    let name = f.required_string("name")?;
    let problems = names::name_problems(&name, 1);
    let ok = problems.is_empty();
    for p in problems {
        f.error("name", p);
    }
    ok.then_some(name)
}

/// A disc's `backup_schedules` (vm_create, bigv-api.md §5.3), errors
/// named `backup_schedules[N].field` within the disc's.
fn read_disc_schedules(df: &mut Fields, now: u64) -> Vec<ScheduleIn> {
    let mut out = vec![];
    for mut sf in df.objects("backup_schedules").unwrap_or_default() {
        if let Some(s) = backups::read_schedule(&mut sf, now) {
            out.push(s);
        }
        df.absorb(sf);
    }
    out
}

/// What a create request asks for, checked against the model.
struct Plan {
    vm: Vm,
    discs: Vec<DiscIn>,
    /// Each disc's `backup_schedules`.
    schedules: Vec<Vec<ScheduleIn>>,
    /// The image and the imager options (password hashed) to install.
    image: Option<(String, ImagerOptions)>,
    nic_vlan: u32,
    addresses: Vec<Chosen>,
    management: Option<Chosen>,
    mac: String,
}

/// The sub-object `name` of `f` as fields of its own (errors unprefixed,
/// as the clients show them); an absent or null one is empty.
fn sub_object(f: &mut Fields, name: &str) -> Option<Fields> {
    match f.raw(name)? {
        Value::Null => None,
        Value::Object(map) => Some(Fields::new(map.clone())),
        _ => {
            f.error(name, "must be an object of attributes");
            None
        }
    }
}

/// How the request body is laid out.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"virtual_machine":{...},"discs":[...],"reimage":{...},"ips":{...}}`
    VmCreate,
    /// The VM's attributes (optionally under `virtual_machine`), nothing else.
    Bare,
}

fn plan(
    model: &Model,
    group: GroupId,
    mut body: Fields,
    shape: Shape,
    spine: &SpineServer,
    now: u64,
) -> Result<Plan, ApiError> {
    let mut p = Problems::default();
    let mut vmf = match sub_object(&mut body, "virtual_machine") {
        Some(sub) => sub,
        None if shape == Shape::Bare => std::mem::replace(&mut body, Fields::new(Map::new())),
        None => Fields::new(Map::new()),
    };

    let name = read_name(&mut vmf);
    if let Some(n) = &name
        && model.vm_named_live(group, n).is_some()
    {
        vmf.error("name", "has already been taken");
    }
    let cores = vmf.u64_in("cores", MIN_CORES, MAX_CORES).unwrap_or(1);
    let memory = vmf
        .u64_in("memory", MIN_MEMORY, MAX_MEMORY)
        .unwrap_or(DEFAULT_MEMORY);
    let power_on = vmf.bool("power_on");
    let autoreboot_on = vmf.bool("autoreboot_on");
    let cdrom_url = read_cdrom(&mut vmf).flatten();
    let hardware_profile = read_hardware_profile(&mut vmf)
        .unwrap_or_else(|| names::DEFAULT_HARDWARE_PROFILE.to_owned());
    let hardware_profile_locked = vmf.bool("hardware_profile_locked").unwrap_or(false);
    let keymap = read_keymap(&mut vmf).flatten();
    let zone_name = read_zone(&mut vmf, &model.settings.zones);
    p.absorb(vmf);
    // The client sends autoreboot_on (never power_on) for "run it" (§5.3).
    let run = power_on.unwrap_or(false) || autoreboot_on.unwrap_or(false);

    let mut discs_in: Vec<DiscIn> = vec![];
    let mut schedules_in: Vec<Vec<ScheduleIn>> = vec![];
    let mut disc_count = 0;
    if shape == Shape::VmCreate {
        let items = match body.raw("discs") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(items)) => items.clone(),
            Some(_) => {
                p.add("discs", "must be a list of discs");
                vec![]
            }
        };
        disc_count = items.len();
        if items.len() > discs::MAX_DISCS {
            p.add(
                "discs",
                format!(
                    "are too many: a server may have at most {} discs",
                    discs::MAX_DISCS
                ),
            );
        } else {
            let grades = discs::storage_grades(model);
            for (i, item) in items.into_iter().enumerate() {
                let Value::Object(map) = item else {
                    p.disc(i, "disc", "must be an object of attributes");
                    continue;
                };
                let mut df = Fields::new(map);
                let schedules = read_disc_schedules(&mut df, now);
                if let Some(d) = discs::read_new_disc(&mut df, &grades) {
                    let clash = d
                        .label
                        .as_ref()
                        .is_some_and(|l| discs_in.iter().any(|o| o.label.as_ref() == Some(l)));
                    if clash {
                        df.error("label", "is used by another disc of this server");
                    }
                    discs_in.push(d);
                    schedules_in.push(schedules);
                }
                p.absorb_disc(i, df);
            }
            // Unlabelled discs get the next free `disc-N`.
            for i in 0..discs_in.len() {
                if discs_in[i].label.is_none() {
                    let taken: Vec<&str> =
                        discs_in.iter().filter_map(|d| d.label.as_deref()).collect();
                    discs_in[i].label = Some(discs::next_label(&taken));
                }
            }
        }
    }

    let mut image = None;
    if shape == Shape::VmCreate
        && let Some(mut rf) = sub_object(&mut body, "reimage")
    {
        let distribution = rf.required_string("distribution");
        let options = power::imager_fields(&mut rf);
        if let Some(i) = &distribution {
            let first = discs_in.first().map(|d| d.size);
            for problem in power::image_problems(model, i, first) {
                rf.error("distribution", problem);
            }
        }
        image = distribution.map(|d| (d, options));
        p.absorb(rf);
    }

    let mut alloc = Allocator::new(model);
    let mut claimed: Vec<Chosen> = vec![];
    if shape == Shape::VmCreate
        && let Some(mut ipf) = sub_object(&mut body, "ips")
    {
        for (field, family) in [("ipv4", Family::V4), ("ipv6", Family::V6)] {
            let Some(text) = ipf.string(field).filter(|s| !s.is_empty()) else {
                continue;
            };
            match text.parse::<IpAddr>() {
                Ok(addr) if Family::of(&addr) == family => match alloc.claim(addr) {
                    Ok(c) => claimed.push(c),
                    Err(e) => ipf.error(field, e),
                },
                _ => ipf.error(field, format!("is not an {} address", family.name())),
            }
        }
        if let [a, b] = claimed.as_slice()
            && a.vlan_num != b.vlan_num
        {
            ipf.error("ipv6", "is on a different network from the ipv4 address");
        }
        p.absorb(ipf);
    }
    p.absorb(body);
    if !p.is_empty() {
        return Err(p.into_error(disc_count));
    }

    let vm = Vm {
        id: VmId(0),
        group_id: group,
        name: name.unwrap_or_default(),
        cores: cores as u32,
        memory,
        power_on: run,
        autoreboot_on: autoreboot_on.unwrap_or(run),
        cdrom_url,
        hardware_profile,
        hardware_profile_locked,
        keymap,
        zone_name,
        deleted: false,
        deleted_at: None,
        management_address: None,
        head: None,
        generation: 0,
        signal: None,
        anti_affinity_group: None,
        last_imaged_with: None,
        imager_options: None,
        created_at: now,
    };

    let mut planner = Planner::new(model, spine, None);
    if run && let Err(e) = planner.run(model, &vm, None) {
        p.add(e.field, e.reason);
    }
    for (i, d) in discs_in.iter().enumerate() {
        if let Err(e) = planner.place_disc(&d.grade, d.size) {
            p.disc(i, e.field, e.reason);
        }
    }
    p.check(disc_count)?;

    let (nic_vlan, addresses) = match claimed.first() {
        Some(c) => (c.vlan_num, claimed.clone()),
        None => {
            let primary = alloc.primary(vm.zone_name.as_deref());
            (primary.vlan_num, primary.addresses)
        }
    };
    let management = alloc.management(vm.zone_name.as_deref());
    Ok(Plan {
        mac: alloc.mac(),
        vm,
        discs: discs_in,
        schedules: schedules_in,
        image,
        nic_vlan,
        addresses,
        management,
    })
}

/// Checks and writes a new VM with its discs, NIC and addresses; returns
/// the VM as stored.
pub fn create(
    tx: &mut Tx<'_>,
    caller: &Caller,
    (acc, grp): (&str, &str),
    body: Fields,
    shape: Shape,
    spine: &SpineServer,
    now: u64,
) -> Result<Vm, ApiError> {
    let model = tx.model();
    let account = lookup::account(model, caller, acc)?;
    let group = lookup::group(model, caller, account, grp)?;
    caller.require(model, Target::Group(group.id), Level::GroupAdmin)?;
    let plan = plan(model, group.id, body, shape, spine, now)?;

    let mut vm = plan.vm;
    vm.id = VmId(tx.new_id::<Vm>()?);
    let mut schedules = plan.schedules.into_iter();
    for (i, d) in plan.discs.into_iter().enumerate() {
        let disc_id = DiscId(tx.new_id::<Disc>()?);
        for s in schedules.next().unwrap_or_default() {
            backups::add_schedule(tx, disc_id, s)?;
        }
        let disc = Disc {
            id: disc_id,
            vm_id: vm.id,
            label: d.label.unwrap_or_else(|| format!("disc-{}", i + 1)),
            size: d.size,
            storage_grade: d.grade,
            storage_pool: None,
            address: None,
            generation: 0,
            iops_limit: None,
            template: None,
        };
        match (&plan.image, i) {
            (Some((image, options)), 0) => {
                power::order_reimage(tx, &mut vm, disc, image, options.clone(), now)?
            }
            _ => tx.put(disc)?,
        }
    }
    let nic_id = NicId(tx.new_id::<Nic>()?);
    for c in &plan.addresses {
        tx.put(IpRecord {
            address: c.address.to_string(),
            range_id: c.range_id,
            nic_id: Some(nic_id),
            rdns: None,
        })?;
    }
    if let Some(m) = &plan.management {
        tx.put(IpRecord {
            address: m.address.to_string(),
            range_id: m.range_id,
            nic_id: None,
            rdns: None,
        })?;
        vm.management_address = Some(m.address.to_string());
    }
    tx.put(Nic {
        id: nic_id,
        vm_id: vm.id,
        label: None,
        mac: plan.mac,
        vlan_num: plan.nic_vlan,
        ips: plan
            .addresses
            .iter()
            .map(|c| c.address.to_string())
            .collect(),
        extra_ips: BTreeMap::new(),
    })?;
    tx.put(vm.clone())?;
    tracing::info!(vm = %vm.id, name = %vm.name, group = %vm.group_id, by = %caller.username, "created a server");
    Ok(vm)
}

async fn create_handler(
    state: AppState,
    caller: Caller,
    acc: String,
    grp: String,
    headers: HeaderMap,
    body: Bytes,
    shape: Shape,
) -> Result<Response, ApiError> {
    let f = views::body(&headers, &body)?;
    let spine = state.spine.clone();
    let now = state.clock.now();
    let vm = state
        .db
        .write(move |tx| create(tx, &caller, (&acc, &grp), f, shape, &spine, now))
        .await?;
    state.reconcile.notify_one();
    let model = state.db.read();
    Ok((StatusCode::ACCEPTED, Json(views::vm(&model, &vm))).into_response())
}

async fn vm_create(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    create_handler(state, caller, acc, grp, headers, body, Shape::VmCreate).await
}

/// `POST .../virtual_machines`: a VM with no discs (routed by vms.rs).
pub async fn bare_create(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    create_handler(state, caller, acc, grp, headers, body, Shape::Bare).await
}
