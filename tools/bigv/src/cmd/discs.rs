//! Discs: add, show, resize (absolute or `+SIZE`), move, delete
//! (bigv-api.md §6).

use serde_json::{Value, json};

use super::Ctx;
use super::servers::{DEFAULT_GRADE, check_grade};
use crate::cli::AddDiscsArgs;
use crate::error::{CliError, Exit, Result};
use crate::names::{DiscSpec, SizeSpec, VmRef, human_size, seg};
use crate::output::{note, opt};
use crate::types::Disc;

const DISC_HEADERS: &[&str] = &[
    "ID",
    "Label",
    "StorageGrade",
    "Size",
    "StoragePool",
    "BackupCount",
];

fn disc_row(d: &Disc) -> Vec<String> {
    vec![
        d.id.to_string(),
        d.label.clone(),
        d.storage_grade.clone(),
        d.size.to_string(),
        opt(&d.storage_pool),
        d.backup_count.to_string(),
    ]
}

fn disc_line(d: &Disc) -> String {
    format!(
        "• {} - {}, {} grade\n",
        d.label,
        human_size(d.size),
        d.storage_grade
    )
}

/// The next free `disc-N` label, as bytemark-client numbered them:
/// one past the larger of the highest `disc-N` and the number of discs.
pub fn next_label(existing: &[String]) -> String {
    let highest = existing
        .iter()
        .filter_map(|l| l.strip_prefix("disc-")?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    format!("disc-{}", highest.max(existing.len() as u64) + 1)
}

fn disc_path(r: &VmRef, label: &str) -> String {
    format!("{}/discs/{}", r.path(), seg(label))
}

pub fn add(ctx: &Ctx, a: AddDiscsArgs) -> Result<()> {
    let mut texts = a.specs.clone();
    texts.extend(a.discs.iter().cloned());
    if texts.is_empty() {
        return Err(CliError::usage(
            "say which discs to add: [label:][grade:]size, e.g. `bigv add discs web1 ssd:50G`",
        ));
    }
    let specs = DiscSpec::parse_list(&texts)?;
    for s in &specs {
        check_grade(ctx, s.grade.as_deref().unwrap_or(DEFAULT_GRADE))?;
    }
    let (r, _, vm) = ctx.vm(&a.server)?;
    let mut labels: Vec<String> = vm.discs.iter().map(|d| d.label.clone()).collect();
    let mut added = vec![];
    for s in specs {
        let label = s.label.clone().unwrap_or_else(|| next_label(&labels));
        let body = json!({
            "label": label,
            "storage_grade": s.grade.as_deref().unwrap_or(DEFAULT_GRADE),
            "size": s.size,
        });
        let reply = ctx.client()?.post(
            &format!("{}/discs", r.path()),
            &body,
            &format!("server {r}"),
        )?;
        note(format!(
            "Added {label} ({}, {}) to {r}.",
            human_size(s.size),
            s.grade.as_deref().unwrap_or(DEFAULT_GRADE)
        ));
        labels.push(label);
        added.push(reply);
    }
    if !ctx.out.is_human() {
        let typed: Vec<Disc> = added
            .iter()
            .filter_map(|v| serde_json::from_value(v.clone()).ok())
            .collect();
        ctx.out.show(
            &Value::Array(added),
            DISC_HEADERS,
            || typed.iter().map(disc_row).collect(),
            String::new,
        );
    }
    if vm.power_on {
        note(format!(
            "{} sees new discs after its next restart.",
            vm.name
        ));
    }
    Ok(())
}

pub fn list(ctx: &Ctx, server: &str) -> Result<()> {
    let (r, value, vm) = ctx.vm(server)?;
    let discs = value["discs"].clone();
    ctx.out.show(
        &discs,
        DISC_HEADERS,
        || vm.discs.iter().map(disc_row).collect(),
        || {
            if vm.discs.is_empty() {
                format!("{r} has no discs.\n")
            } else {
                vm.discs.iter().map(disc_line).collect()
            }
        },
    );
    Ok(())
}

fn fetch_disc(ctx: &Ctx, r: &VmRef, label: &str) -> Result<(Value, Disc)> {
    let value = ctx
        .client()?
        .get_value(&disc_path(r, label), &format!("disc {label} of {r}"))?;
    let disc = serde_json::from_value(value.clone()).map_err(|e| {
        CliError::new(
            Exit::ApiInternal,
            format!("the brain's description of disc {label} could not be read: {e}"),
        )
    })?;
    Ok((value, disc))
}

pub fn show(ctx: &Ctx, server: &str, label: &str) -> Result<()> {
    let r = ctx.resolve_vm(server)?;
    let (value, disc) = fetch_disc(ctx, &r, label)?;
    ctx.out.show(
        &value,
        DISC_HEADERS,
        || vec![disc_row(&disc)],
        || {
            format!(
                "{}  in pool {}\n",
                disc_line(&disc).trim_end(),
                opt(&disc.storage_pool)
            )
        },
    );
    Ok(())
}

pub fn update(
    ctx: &Ctx,
    server: &str,
    label: &str,
    size: Option<&str>,
    new_server: Option<&str>,
) -> Result<()> {
    if size.is_none() && new_server.is_none() {
        return Err(CliError::usage(
            "nothing to change: give a new size (e.g. 50G or +10G) or --new-server",
        ));
    }
    let size = size.map(SizeSpec::parse).transpose()?;
    let r = ctx.resolve_vm(server)?;
    let (_, disc) = fetch_disc(ctx, &r, label)?;
    let client = ctx.client()?;
    if let Some(spec) = size {
        let new = spec.apply(disc.size);
        if new < disc.size {
            return Err(CliError::usage(format!(
                "{label} of {r} is {} and discs can only grow, not shrink to {}",
                human_size(disc.size),
                human_size(new)
            )));
        }
        if new == disc.size {
            note(format!("{label} of {r} is already {}.", human_size(new)));
        } else {
            client.put(
                &disc_path(&r, label),
                &json!({"size": new}),
                &format!("disc {label} of {r}"),
            )?;
            note(format!(
                "Resized {label} of {r} from {} to {}.",
                human_size(disc.size),
                human_size(new)
            ));
        }
    }
    if let Some(target) = new_server {
        let (tr, _, target_vm) = ctx.vm(target)?;
        client.put(
            &disc_path(&r, label),
            &json!({"virtual_machine_id": target_vm.id.0}),
            &format!("disc {label} of {r}"),
        )?;
        note(format!("Moved {label} from {r} to {tr}."));
    }
    Ok(())
}

pub fn delete(ctx: &Ctx, server: &str, label: &str) -> Result<()> {
    let r = ctx.resolve_vm(server)?;
    let (_, disc) = fetch_disc(ctx, &r, label)?;
    ctx.confirm(&format!(
        "This will delete {label} ({}) of {r} and everything on it, for good.",
        human_size(disc.size)
    ))?;
    ctx.client()?.delete(
        &format!("{}?purge=true", disc_path(&r, label)),
        &format!("disc {label} of {r}"),
    )?;
    note(format!("Deleted {label} of {r}."));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_labels_follow_the_old_client() {
        assert_eq!(next_label(&[]), "disc-1");
        assert_eq!(next_label(&["disc-1".into()]), "disc-2");
        assert_eq!(next_label(&["disc-1".into(), "data".into()]), "disc-3");
        assert_eq!(next_label(&["disc-7".into()]), "disc-8");
    }
}
