//! Resolving path segments to records: each segment may be the numeric id
//! or the name (bigv-api.md §1), and anything the caller cannot see is 404.

use super::access::Caller;
use super::error::ApiError;
use crate::model::{Account, Disc, Group, Model, Target, Vm};

/// The caller's default account: the first visible one (what the 4.0
/// client assumes), used for an empty account segment (`/accounts//…`).
pub fn default_account<'m>(model: &'m Model, caller: &Caller) -> Option<&'m Account> {
    model
        .accounts
        .values()
        .find(|a| caller.can_see(model, Target::Account(a.id)))
}

pub fn account<'m>(model: &'m Model, caller: &Caller, seg: &str) -> Result<&'m Account, ApiError> {
    let found = if seg.is_empty() {
        default_account(model, caller)
    } else {
        match seg.parse::<u64>() {
            Ok(id) => model.accounts.get(&id),
            Err(_) => model.account_named(seg),
        }
    };
    found
        .filter(|a| caller.can_see(model, Target::Account(a.id)))
        .ok_or(ApiError::NotFound)
}

pub fn group<'m>(
    model: &'m Model,
    caller: &Caller,
    account: &Account,
    seg: &str,
) -> Result<&'m Group, ApiError> {
    let found = match seg.parse::<u64>() {
        Ok(id) => model.groups.get(&id).filter(|g| g.account_id == account.id),
        Err(_) => model.group_named(account.id, seg),
    };
    found
        .filter(|g| caller.can_see(model, Target::Group(g.id)))
        .ok_or(ApiError::NotFound)
}

/// A VM in a group; deleted VMs only when `include_deleted`.
pub fn vm<'m>(
    model: &'m Model,
    caller: &Caller,
    group: &Group,
    seg: &str,
    include_deleted: bool,
) -> Result<&'m Vm, ApiError> {
    let in_group = |v: &&Vm| v.group_id == group.id;
    let found = match seg.parse::<u64>() {
        Ok(id) => model.vms.get(&id).filter(in_group),
        // A live VM wins over a deleted one of the same name.
        Err(_) => model
            .vm_named_live(group.id, seg)
            .or_else(|| model.vms_in(group.id).find(|v| v.name == seg)),
    };
    found
        .filter(|v| include_deleted || !v.deleted)
        .filter(|v| caller.can_see(model, Target::Vm(v.id)))
        .ok_or(ApiError::NotFound)
}

/// A VM by id alone (`/virtual_machines/{id}`).
pub fn vm_by_id<'m>(
    model: &'m Model,
    caller: &Caller,
    seg: &str,
    include_deleted: bool,
) -> Result<&'m Vm, ApiError> {
    let id: u64 = seg.parse().map_err(|_| ApiError::NotFound)?;
    model
        .vms
        .get(&id)
        .filter(|v| include_deleted || !v.deleted)
        .filter(|v| caller.can_see(model, Target::Vm(v.id)))
        .ok_or(ApiError::NotFound)
}

/// A disc of a VM, by label or id.
pub fn disc<'m>(model: &'m Model, vm: &Vm, seg: &str) -> Result<&'m Disc, ApiError> {
    let by_id = seg.parse::<u64>().ok();
    model
        .discs_of(vm.id)
        .find(|d| d.label == seg || Some(d.id.0) == by_id)
        .ok_or(ApiError::NotFound)
}

/// A disc by id alone (`/discs/{id}`), visible through its VM.
pub fn disc_by_id<'m>(model: &'m Model, caller: &Caller, seg: &str) -> Result<&'m Disc, ApiError> {
    let id: u64 = seg.parse().map_err(|_| ApiError::NotFound)?;
    model
        .discs
        .get(&id)
        .filter(|d| caller.can_see(model, Target::Vm(d.vm_id)))
        .ok_or(ApiError::NotFound)
}
