//! Servers: add, show, list, update, delete, restore, power, reimage and
//! extra IPs (bigv-cli.md §2, bigv-api.md §5, §8).

use std::net::IpAddr;
use std::time::Duration;

use rand::Rng;
use serde_json::{Map, Value, json};

use super::{Ctx, read_file};
use crate::cli::{AddIpsArgs, AddServerArgs, ReimageArgs, UpdateServerArgs};
use crate::client::prompt_line;
use crate::error::{CliError, Exit, Result};
use crate::names::{DiscSpec, GroupRef, SizeSpec, VmName, VmRef, human_size, parse_size};
use crate::output::{self, Format, Progress, VM_HEADERS, note, vm_headline, vm_row, vm_text};
use crate::types::{Account, Group, Vm};

/// The disc a server gets when none is asked for: 25 GiB of sata.
pub const DEFAULT_DISC_MIB: u64 = 25 * 1024;
pub const DEFAULT_GRADE: &str = "sata";

/// How long `shutdown` waits for the guest (`BIGV_WAIT_SECS` overrides).
fn wait_limit() -> Duration {
    Duration::from_secs(
        std::env::var("BIGV_WAIT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    )
}

/// Sixteen random letters, as bytemark-client made them.
pub fn random_password() -> String {
    let mut rng = rand::rng();
    (0..16)
        .map(|_| {
            let n = rng.random_range(0..52u8);
            if n < 26 {
                (b'a' + n) as char
            } else {
                (b'A' + n - 26) as char
            }
        })
        .collect()
}

fn one_of(what: &str, value: &str, allowed: &[String], see: &str) -> Result<()> {
    if allowed.iter().any(|a| a == value) {
        Ok(())
    } else {
        let list = if allowed.is_empty() {
            "(none)".to_owned()
        } else {
            allowed.join(", ")
        };
        Err(CliError::usage(format!(
            "{value:?} is not {what}: the brain offers {list} (see `{see}`; --force skips this check)"
        )))
    }
}

pub fn check_image(ctx: &Ctx, image: &str) -> Result<()> {
    if ctx.force {
        return Ok(());
    }
    let defs = ctx.definitions()?;
    one_of("an image", image, &defs.distributions, "bigv show images")
}

pub fn check_grade(ctx: &Ctx, grade: &str) -> Result<()> {
    if ctx.force {
        return Ok(());
    }
    let defs = ctx.definitions()?;
    one_of(
        "a storage grade",
        grade,
        &defs.storage_grades,
        "bigv show storage",
    )
}

fn text_or_file(
    text: Option<String>,
    file: Option<&std::path::Path>,
    what: &str,
) -> Result<String> {
    match (text, file) {
        (Some(t), _) => Ok(t),
        (None, Some(f)) => read_file(f, what),
        (None, None) => Ok(String::new()),
    }
}

/// The `reimage` part of vm_create, or the body of POST .../reimage.
fn reimage_body(image: &str, root_password: &str, keys: String, script: String) -> Value {
    json!({
        "distribution": image,
        "root_password": root_password,
        "ssh_public_key": keys,
        "firstboot_script": script,
    })
}

fn prints_vm(ctx: &Ctx, value: &Value, vm: &Vm) {
    ctx.out
        .show(value, VM_HEADERS, || vec![vm_row(vm)], || vm_text(vm));
}

/// Prints the root password: on stdout for people (as bytemark-client
/// did), on stderr when stdout carries JSON or a table.
fn print_root_password(ctx: &Ctx, password: &str) {
    if ctx.out.is_human() {
        println!("Root password: {password}");
    } else {
        note(format!("Root password: {password}"));
    }
}

pub fn add(ctx: &Ctx, a: AddServerArgs) -> Result<()> {
    let name = VmName::parse(&a.name)?;
    if name.id().is_some() {
        return Err(CliError::usage(format!(
            "{:?} is not a name for a new server: names need a letter",
            a.name
        )));
    }
    let cores = a.cores.or(a.cores_pos).unwrap_or(1);
    if cores == 0 {
        return Err(CliError::usage("cores must be at least 1"));
    }
    let memory = parse_size(
        a.memory
            .as_deref()
            .or(a.memory_pos.as_deref())
            .unwrap_or("1G"),
    )?;
    let mut disc_texts = a.discs.clone();
    disc_texts.extend(a.disc_pos.clone());
    let specs = if disc_texts.is_empty() {
        vec![DiscSpec {
            label: None,
            grade: None,
            size: DEFAULT_DISC_MIB,
        }]
    } else {
        DiscSpec::parse_list(&disc_texts)?
    };
    let image = match (&a.image, a.no_image, &a.cdrom) {
        (Some(i), _, _) => Some(i.clone()),
        (None, true, _) | (None, false, Some(_)) => None,
        (None, false, None) => {
            return Err(CliError::usage(
                "say what to boot: --image NAME (see `bigv show images`), --cdrom URL, or --no-image",
            ));
        }
    };
    if let Some(image) = &image {
        check_image(ctx, image)?;
    }
    for spec in &specs {
        check_grade(ctx, spec.grade.as_deref().unwrap_or(DEFAULT_GRADE))?;
    }
    if !ctx.force {
        if let Some(p) = &a.hwprofile {
            let defs = ctx.definitions()?;
            one_of(
                "a hardware profile",
                p,
                &defs.hardware_profiles,
                "bigv show hwprofiles",
            )?;
        }
        if let Some(z) = &a.zone {
            let defs = ctx.definitions()?;
            one_of("a zone", z, &defs.zone_names, "bigv show zones")?;
        }
    }

    let run = !a.stopped && (image.is_some() || a.cdrom.is_some());
    let mut vm = Map::new();
    vm.insert("name".into(), json!(name.name));
    vm.insert("cores".into(), json!(cores));
    vm.insert("memory".into(), json!(memory));
    // bytemark-client never sent power_on; the brain is told plainly.
    vm.insert("power_on".into(), json!(run));
    vm.insert("autoreboot_on".into(), json!(run));
    if let Some(z) = &a.zone {
        vm.insert("zone_name".into(), json!(z));
    }
    if let Some(cd) = &a.cdrom {
        vm.insert("cdrom_url".into(), json!(cd));
    }
    if let Some(p) = &a.hwprofile {
        vm.insert("hardware_profile".into(), json!(p));
    }
    if a.hwprofile_locked {
        vm.insert("hardware_profile_locked".into(), json!(true));
    }
    let schedules = super::backups::new_server_schedules(a.backup.as_deref().unwrap_or("weekly"))?;
    let discs: Vec<Value> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut disc = json!({
                "label": s.label.clone().unwrap_or_else(|| format!("disc-{}", i + 1)),
                "storage_grade": s.grade.as_deref().unwrap_or(DEFAULT_GRADE),
                "size": s.size,
            });
            if let (0, Some(schedules)) = (i, &schedules) {
                disc["backup_schedules"] = schedules.clone();
            }
            disc
        })
        .collect();
    let mut body = json!({"virtual_machine": vm, "discs": discs});
    let mut root_password = None;
    if let Some(image) = &image {
        let password = a.root_password.clone().unwrap_or_else(random_password);
        let keys = text_or_file(
            a.authorized_keys.clone(),
            a.authorized_keys_file.as_deref(),
            "the authorized keys",
        )?;
        let script = text_or_file(
            a.firstboot_script.clone(),
            a.firstboot_script_file.as_deref(),
            "the firstboot script",
        )?;
        body["reimage"] = reimage_body(image, &password, keys, script);
        root_password = Some(password);
    }
    if !a.ips.is_empty() {
        let mut ips = Map::new();
        for text in &a.ips {
            let ip: IpAddr = text
                .parse()
                .map_err(|_| CliError::usage(format!("{text:?} is not an IP address")))?;
            let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
            if ips.insert(family.into(), json!(ip.to_string())).is_some() {
                return Err(CliError::usage(format!(
                    "give at most one {family} address with --ip"
                )));
            }
        }
        body["ips"] = Value::Object(ips);
    }

    let group = GroupRef {
        account: match name.account.clone() {
            Some(a) => a,
            None => ctx.default_account()?,
        },
        name: name
            .group
            .clone()
            .unwrap_or_else(|| ctx.config.group().to_owned()),
    };
    let r = VmRef {
        account: group.account.clone(),
        group: group.name.clone(),
        name: name.name.clone(),
    };
    ctx.client()?.post(
        &format!("{}/vm_create", group.path()),
        &body,
        &format!("group {group}"),
    )?;
    let (value, vm) = ctx.fetch_vm(&r)?;
    if ctx.out.is_human() {
        note(format!("Server {r} has been created."));
    }
    prints_vm(ctx, &value, &vm);
    if let Some(p) = root_password {
        print_root_password(ctx, &p);
    }
    Ok(())
}

pub fn show(ctx: &Ctx, server: &str) -> Result<()> {
    let (_, value, vm) = ctx.vm(server)?;
    prints_vm(ctx, &value, &vm);
    Ok(())
}

/// The servers of a group, or of every group of the account.
pub fn list(ctx: &Ctx, group: Option<&str>) -> Result<()> {
    let client = ctx.client()?;
    let vms: Vec<Value> = match group {
        Some(g) => {
            let g = ctx.resolve_group(Some(g))?;
            let value = client.get_value(
                &format!("{}?view=overview&include_deleted=true", g.path()),
                &format!("group {g}"),
            )?;
            value["virtual_machines"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }
        None => {
            let account = ctx.default_account()?;
            let value = client.get_value(
                &format!(
                    "/accounts/{}?view=overview&include_deleted=true",
                    crate::names::seg(&account)
                ),
                &format!("account {account}"),
            )?;
            value["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| {
                    g["virtual_machines"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .collect()
        }
    };
    let typed: Vec<Vm> = vms
        .iter()
        .filter_map(|v| serde_json::from_value(v.clone()).ok())
        .collect();
    ctx.out.show(
        &Value::Array(vms),
        VM_HEADERS,
        || typed.iter().map(vm_row).collect(),
        || {
            if typed.is_empty() {
                "No servers.\n".to_owned()
            } else {
                typed
                    .iter()
                    .map(|v| format!(" {}\n", vm_headline(v)))
                    .collect()
            }
        },
    );
    Ok(())
}

pub fn update(ctx: &Ctx, a: UpdateServerArgs) -> Result<()> {
    let (r, _, cur) = ctx.vm(&a.server)?;
    let client = ctx.client()?;
    let mut body = Map::new();
    let mut needs_restart = vec![];
    if let Some(m) = &a.memory {
        let memory = SizeSpec::parse(m)?.apply(cur.memory);
        body.insert("memory".into(), json!(memory));
        needs_restart.push(format!("{} of memory", human_size(memory)));
    }
    if let Some(c) = a.cores {
        if c == 0 {
            return Err(CliError::usage("cores must be at least 1"));
        }
        body.insert("cores".into(), json!(c));
        needs_restart.push(format!("{c} cores"));
    }
    if let Some(p) = &a.hwprofile {
        if !ctx.force {
            let defs = ctx.definitions()?;
            one_of(
                "a hardware profile",
                p,
                &defs.hardware_profiles,
                "bigv show hwprofiles",
            )?;
        }
        body.insert("hardware_profile".into(), json!(p));
        needs_restart.push(format!("hardware profile {p}"));
    }
    if a.lock_hwprofile {
        body.insert("hardware_profile_locked".into(), json!(true));
    }
    if a.unlock_hwprofile {
        body.insert("hardware_profile_locked".into(), json!(false));
    }
    if let Some(url) = &a.cd_url {
        body.insert("cdrom_url".into(), json!(url));
    }
    if a.remove_cd {
        // An explicit null: bytemark-client sent `{}`, which ejected nothing.
        body.insert("cdrom_url".into(), Value::Null);
    }
    if let Some(new) = &a.new_name {
        let n = VmName::parse(new)?;
        if n.id().is_some() {
            return Err(CliError::usage(format!("{new:?} is not a server name")));
        }
        body.insert("name".into(), json!(n.name));
        if n.group.is_some() || n.account.is_some() {
            // A move: the target group's id, in the server's own account
            // unless another is named.
            let target = GroupRef {
                account: n.account.clone().unwrap_or_else(|| r.account.clone()),
                name: n.group.clone().unwrap_or_else(|| r.group.clone()),
            };
            let group: Group = client.get(&target.path(), &format!("group {target}"))?;
            body.insert("group_id".into(), json!(group.id.0));
        }
    }
    if body.is_empty() && a.swap_ips_with.is_none() {
        return Err(CliError::usage(
            "nothing to change: give --memory, --cores, --hwprofile, --lock-hwprofile, --unlock-hwprofile, \
             --cd-url, --remove-cd, --new-name or --swap-ips-with",
        ));
    }
    let mut result = None;
    if !body.is_empty() {
        let value = client.put(&r.path(), &Value::Object(body), &format!("server {r}"))?;
        result = Some(value);
    }
    if let Some(other) = &a.swap_ips_with {
        let (or, _, other_vm) = ctx.vm(other)?;
        client.post(
            "/ips/swap_virtual_machine_ips",
            &json!({
                "virtual_machine_1_id": cur.id.0,
                "virtual_machine_2_id": other_vm.id.0,
                "move_additional_ips": a.swap_extra_ips,
            }),
            &format!("servers {r} and {or}"),
        )?;
        note(format!("Swapped the IP addresses of {r} and {or}."));
    }
    // After a rename the old name is gone: show what the brain sent back.
    let value = match result {
        Some(v) if v.is_object() => v,
        _ => ctx.fetch_vm(&r)?.0,
    };
    let vm: Vm = serde_json::from_value(value.clone()).unwrap_or(cur.clone());
    if cur.power_on && !needs_restart.is_empty() {
        let now = super::vm_ref_of(&vm).unwrap_or(r);
        note(format!(
            "{} takes effect when {} next restarts (bigv restart server {now}).",
            needs_restart.join(", "),
            vm.name,
        ));
    }
    prints_vm(ctx, &value, &vm);
    Ok(())
}

pub fn delete(ctx: &Ctx, server: &str, purge: bool) -> Result<()> {
    let (r, _, vm) = ctx.vm(server)?;
    if vm.deleted && !purge {
        return Err(CliError::usage(format!(
            "{r} is already deleted: use `bigv delete server --purge {r}` to remove it for good"
        )));
    }
    if purge {
        ctx.confirm(&format!(
            "This will delete {r} and all its discs for good; it cannot be restored."
        ))?;
    } else {
        ctx.confirm(&format!(
            "This will delete {r}; `bigv restore server {r}` brings it back for a while."
        ))?;
    }
    let path = if purge {
        format!("{}?purge=true", r.path())
    } else {
        r.path()
    };
    ctx.client()?.delete(&path, &format!("server {r}"))?;
    note(if purge {
        format!("Server {r} was purged.")
    } else {
        format!("Server {r} was deleted.")
    });
    Ok(())
}

pub fn restore(ctx: &Ctx, server: &str) -> Result<()> {
    let (r, _, vm) = ctx.vm(server)?;
    if !vm.deleted {
        return Err(CliError::usage(format!("{r} is not deleted")));
    }
    ctx.client()?.put(
        &r.path(),
        &json!({"deleted": false}),
        &format!("server {r}"),
    )?;
    note(format!(
        "Server {r} was restored; it is powered off (bigv start server {r})."
    ));
    Ok(())
}

fn power(ctx: &Ctx, r: &VmRef, power_on: bool, autoreboot_on: bool) -> Result<()> {
    ctx.client()?.put(
        &r.path(),
        &json!({"autoreboot_on": autoreboot_on, "power_on": power_on}),
        &format!("server {r}"),
    )?;
    Ok(())
}

pub fn start(ctx: &Ctx, server: &str) -> Result<()> {
    let r = ctx.resolve_vm(server)?;
    power(ctx, &r, true, true)?;
    note(format!("Server {r} was started."));
    Ok(())
}

pub fn stop(ctx: &Ctx, server: &str) -> Result<()> {
    let r = ctx.resolve_vm(server)?;
    power(ctx, &r, false, false)?;
    note(format!("Server {r} was stopped."));
    Ok(())
}

pub fn reset(ctx: &Ctx, server: &str) -> Result<()> {
    let r = ctx.resolve_vm(server)?;
    ctx.client()?.post(
        &format!("{}/signal", r.path()),
        &json!({"signal": "reset"}),
        &format!("server {r}"),
    )?;
    note(format!("Server {r} was reset."));
    Ok(())
}

/// Asks the guest to power down and, unless `--no-wait`, waits until the
/// brain reports it off. `Ok(false)` if it was off already.
fn shut_down(ctx: &Ctx, r: &VmRef, wait: bool) -> Result<bool> {
    let (_, vm) = ctx.fetch_vm(r)?;
    if !vm.power_on {
        return Ok(false);
    }
    let client = ctx.client()?;
    client.put(
        &r.path(),
        &json!({"autoreboot_on": false}),
        &format!("server {r}"),
    )?;
    client.post(
        &format!("{}/signal", r.path()),
        &json!({"signal": "powerdown"}),
        &format!("server {r}"),
    )?;
    if !wait {
        return Ok(true);
    }
    let progress = Progress::spinner(&format!("Waiting for {r} to shut down"));
    let limit = wait_limit();
    output::wait_for(
        limit,
        &format!(
            "{r} did not shut down within {} s; it may ignore ACPI: `bigv stop server {r}` pulls the plug",
            limit.as_secs()
        ),
        || {
            let (_, vm) = ctx.fetch_vm(r)?;
            Ok((!vm.power_on).then_some(()))
        },
    )?;
    progress.finish();
    Ok(true)
}

pub fn shutdown(ctx: &Ctx, server: &str) -> Result<()> {
    let r = ctx.resolve_vm(server)?;
    let wait = !ctx.no_wait;
    if !shut_down(ctx, &r, wait)? {
        note(format!("Server {r} is already powered off."));
    } else if wait {
        note(format!("Server {r} has shut down."));
    } else {
        note(format!("Server {r} was asked to shut down."));
    }
    Ok(())
}

pub fn restart(ctx: &Ctx, server: &str) -> Result<()> {
    let r = ctx.resolve_vm(server)?;
    if ctx.no_wait {
        // "Reboot": the brain sees it go down and starts it again.
        power(ctx, &r, false, true)?;
        note(format!("Server {r} was asked to restart."));
        return Ok(());
    }
    shut_down(ctx, &r, true)?;
    power(ctx, &r, true, true)?;
    note(format!("Server {r} was restarted."));
    Ok(())
}

pub fn reimage(ctx: &Ctx, a: ReimageArgs) -> Result<()> {
    let image = a.image.clone().ok_or_else(|| {
        CliError::usage("say which image to install with --image NAME (see `bigv show images`)")
    })?;
    check_image(ctx, &image)?;
    let (r, _, vm) = ctx.vm(&a.server)?;
    if vm.deleted {
        return Err(CliError::usage(format!(
            "{r} is deleted: restore it before reimaging it"
        )));
    }
    let keys = text_or_file(
        a.authorized_keys.clone(),
        a.authorized_keys_file.as_deref(),
        "the authorized keys",
    )?;
    let script = text_or_file(
        a.firstboot_script.clone(),
        a.firstboot_script_file.as_deref(),
        "the firstboot script",
    )?;
    ctx.confirm(&format!(
        "This will erase the first disc of {r} and install {image} on it."
    ))?;
    let password = a.root_password.clone().unwrap_or_else(random_password);
    ctx.client()?.post(
        &format!("{}/reimage", r.path()),
        &reimage_body(&image, &password, keys, script),
        &format!("server {r}"),
    )?;
    if !ctx.no_wait {
        super::admin::follow_reimage(ctx, vm.id.0)?;
    }
    note(format!("Server {r} is being reimaged with {image}."));
    print_root_password(ctx, &password);
    Ok(())
}

pub fn add_ips(ctx: &Ctx, a: AddIpsArgs) -> Result<()> {
    if !(1..=4).contains(&a.ips) {
        return Err(CliError::usage("--ips must be between 1 and 4"));
    }
    let (r, _, vm) = ctx.vm(&a.server)?;
    let nic = vm.network_interfaces.first().ok_or_else(|| {
        CliError::usage(format!("{r} has no network interface to add addresses to"))
    })?;
    let reason = match &a.reason {
        Some(r) => r.clone(),
        None if output::interactive_output() && !ctx.force => {
            prompt_line("Why do you need the extra addresses? ")?
        }
        None => String::new(),
    };
    let family = if a.ipv6 { "ipv6" } else { "ipv4" };
    let reply = ctx.client()?.post(
        &format!("{}/nics/{}/ip_create", r.path(), nic.id),
        &json!({"addresses": a.ips, "family": family, "reason": reason, "contiguous": false}),
        &format!("server {r}"),
    )?;
    let ips: Vec<String> = reply["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.as_str().map(str::to_owned))
        .collect();
    match ctx.out.format {
        Format::Json => ctx.out.json(&reply),
        Format::Table => ctx
            .out
            .table(&["IP"], ips.iter().map(|i| vec![i.clone()]).collect()),
        Format::Human => {
            note(format!("Added to {r}:"));
            ctx.out
                .text(&ips.iter().map(|i| format!("{i}\n")).collect::<String>());
        }
    }
    Ok(())
}

/// Every server of every account the caller sees (used by overview).
pub fn all_accounts(ctx: &Ctx) -> Result<(Value, Vec<Account>)> {
    let value = ctx.client()?.get_value(
        "/accounts?view=overview&include_deleted=true",
        "the list of accounts",
    )?;
    let accounts = serde_json::from_value(value.clone()).map_err(|e| {
        CliError::new(
            Exit::ApiInternal,
            format!("the brain's list of accounts could not be read: {e}"),
        )
    })?;
    Ok((value, accounts))
}
