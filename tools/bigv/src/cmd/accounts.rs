//! Accounts and groups (bigv-api.md §4).

use serde_json::{Value, json};

use super::Ctx;
use super::servers::all_accounts;
use crate::error::{CliError, Exit, Result};
use crate::names::seg;
use crate::output::{VM_HEADERS, account_text, note, vm_headline, vm_row};
use crate::types::{Account, Group};

fn read<T: serde::de::DeserializeOwned>(value: &Value, what: &str) -> Result<T> {
    serde_json::from_value(value.clone()).map_err(|e| {
        CliError::new(
            Exit::ApiInternal,
            format!("the brain's description of {what} could not be read: {e}"),
        )
    })
}

fn account_rows(accounts: &[Account]) -> Vec<Vec<String>> {
    accounts
        .iter()
        .map(|a| {
            vec![
                a.id.to_string(),
                a.name.clone(),
                a.suspended.to_string(),
                a.groups.len().to_string(),
                a.groups
                    .iter()
                    .map(|g| g.virtual_machines.len())
                    .sum::<usize>()
                    .to_string(),
            ]
        })
        .collect()
}

const ACCOUNT_HEADERS: &[&str] = &["ID", "Name", "Suspended", "Groups", "Servers"];

pub fn show_account(ctx: &Ctx, name: Option<&str>) -> Result<()> {
    let name = ctx.account_or_default(name)?;
    // Only to say "your default account": not worth failing over.
    let default = ctx.default_account().ok();
    let value = ctx.client()?.get_value(
        &format!(
            "/accounts/{}?view=overview&include_deleted=true",
            seg(&name)
        ),
        &format!("account {name}"),
    )?;
    let account: Account = read(&value, &format!("account {name}"))?;
    let accounts = [account];
    ctx.out.show(
        &value,
        ACCOUNT_HEADERS,
        || account_rows(&accounts),
        || account_text(&accounts[0], Some(&accounts[0].name) == default.as_ref()),
    );
    Ok(())
}

pub fn show_accounts(ctx: &Ctx) -> Result<()> {
    let (value, accounts) = all_accounts(ctx)?;
    ctx.out.show(
        &value,
        ACCOUNT_HEADERS,
        || account_rows(&accounts),
        || {
            if accounts.is_empty() {
                "You can see no accounts.\n".into()
            } else {
                accounts.iter().map(|a| format!("• {}\n", a.name)).collect()
            }
        },
    );
    Ok(())
}

/// Every account with its groups and servers.
pub fn overview(ctx: &Ctx) -> Result<()> {
    let (value, accounts) = all_accounts(ctx)?;
    let default = accounts.first().map(|a| a.name.clone());
    let default = ctx.config.account.value.clone().or(default);
    ctx.out.show(
        &value,
        ACCOUNT_HEADERS,
        || account_rows(&accounts),
        || {
            let user = ctx
                .config
                .user
                .value
                .as_deref()
                .map(|u| format!("Hi {u}! "))
                .unwrap_or_default();
            let mut s = format!(
                "{user}You can see {} account{}.\n\n",
                accounts.len(),
                if accounts.len() == 1 { "" } else { "s" }
            );
            for a in &accounts {
                s.push_str(&account_text(a, Some(&a.name) == default.as_ref()));
                s.push('\n');
            }
            s
        },
    );
    Ok(())
}

fn group_text(g: &Group, account: &str) -> String {
    let mut s = format!(
        "Group {}.{} - {} server{}\n",
        g.name,
        account,
        g.virtual_machines.len(),
        if g.virtual_machines.len() == 1 {
            ""
        } else {
            "s"
        }
    );
    for vm in &g.virtual_machines {
        s.push_str(&format!("  {}\n", vm_headline(vm)));
    }
    s
}

pub fn show_group(ctx: &Ctx, name: Option<&str>) -> Result<()> {
    let g = ctx.resolve_group(name)?;
    let value = ctx.client()?.get_value(
        &format!("{}?view=overview&include_deleted=true", g.path()),
        &format!("group {g}"),
    )?;
    let group: Group = read(&value, &format!("group {g}"))?;
    ctx.out.show(
        &value,
        VM_HEADERS,
        || group.virtual_machines.iter().map(vm_row).collect(),
        || group_text(&group, &g.account),
    );
    Ok(())
}

pub fn show_groups(ctx: &Ctx, account: Option<&str>) -> Result<()> {
    let name = ctx.account_or_default(account)?;
    let value = ctx.client()?.get_value(
        &format!(
            "/accounts/{}?view=overview&include_deleted=true",
            seg(&name)
        ),
        &format!("account {name}"),
    )?;
    let account: Account = read(&value, &format!("account {name}"))?;
    let groups = value["groups"].clone();
    ctx.out.show(
        &groups,
        &["ID", "Name", "Servers"],
        || {
            account
                .groups
                .iter()
                .map(|g| {
                    vec![
                        g.id.to_string(),
                        g.name.clone(),
                        g.virtual_machines.len().to_string(),
                    ]
                })
                .collect()
        },
        || {
            account
                .groups
                .iter()
                .map(|g| group_text(g, &name))
                .collect()
        },
    );
    Ok(())
}

pub fn add_group(ctx: &Ctx, name: &str) -> Result<()> {
    let g = ctx.resolve_group(Some(name))?;
    let reply = ctx.client()?.post(
        &format!("/accounts/{}/groups", seg(&g.account)),
        &json!({"name": g.name}),
        &format!("account {}", g.account),
    )?;
    note(format!("Group {g} was created."));
    if !ctx.out.is_human() {
        ctx.out.show(
            &reply,
            &["ID", "Name"],
            || vec![vec![reply["id"].to_string(), g.name.clone()]],
            String::new,
        );
    }
    Ok(())
}

pub fn delete_group(ctx: &Ctx, name: &str, recursive: bool) -> Result<()> {
    let g = ctx.resolve_group(Some(name))?;
    let client = ctx.client()?;
    let value = client.get_value(
        &format!("{}?view=overview&include_deleted=true", g.path()),
        &format!("group {g}"),
    )?;
    let group: Group = read(&value, &format!("group {g}"))?;
    let servers: Vec<String> = group
        .virtual_machines
        .iter()
        .map(|v| v.name.clone())
        .collect();
    if !servers.is_empty() && !recursive {
        return Err(CliError::new(
            Exit::GroupNotEmpty,
            format!(
                "group {g} still has servers ({}): delete them, or use --recursive to purge them too",
                servers.join(", ")
            ),
        ));
    }
    if servers.is_empty() {
        ctx.confirm(&format!("This will delete group {g}."))?;
    } else {
        ctx.confirm(&format!(
            "This will purge the servers {} for good and delete group {g}.",
            servers.join(", ")
        ))?;
        for s in &servers {
            client.delete(
                &format!("{}/virtual_machines/{}?purge=true", g.path(), seg(s)),
                &format!("server {s}.{g}"),
            )?;
            note(format!("Server {s}.{g} was purged."));
        }
    }
    client.delete(&g.path(), &format!("group {g}"))?;
    note(format!("Group {g} was deleted."));
    Ok(())
}
