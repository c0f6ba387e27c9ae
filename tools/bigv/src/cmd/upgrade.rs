//! `bigv admin upgrade`: roll every head and tail onto a node image
//! version (`/admin/upgrades`, docs/architecture.md "Rolling upgrade").
//! `start` starts one and, unless `--no-wait`, follows it like `watch`:
//! a progress bar on a terminal fed by the upgrade's `progress` and
//! `phase`, nothing on stdout otherwise, and the exit code says how it
//! ended (0 done; 49 failed or cancelled, with the brain's reason).

use std::time::Duration;

use serde_json::{Value, json};

use super::Ctx;
use super::admin::read;
use crate::cli::{UpgradeCmd, UpgradeIdArg};
use crate::error::{CliError, Exit, Result};
use crate::output::{self, Progress, note, opt};
use crate::types::{Upgrade, UpgradeNode};

pub fn dispatch(ctx: &Ctx, cmd: UpgradeCmd) -> Result<()> {
    match cmd {
        UpgradeCmd::Start(a) => {
            let mut body = json!({"version": a.version});
            if let Some(t) = a.reboot_timeout {
                body["reboot_timeout"] = json!(t);
            }
            let reply = ctx
                .client()?
                .post("/admin/upgrades", &body, "the upgrades")?;
            let up: Upgrade = read(&reply, "the new upgrade")?;
            if ctx.no_wait {
                note(format!(
                    "Started upgrade {} to {} (follow it with `bigv admin upgrade watch`).",
                    up.id, up.version
                ));
                if !ctx.out.is_human() {
                    show_upgrade(ctx, &reply, &up);
                }
                return Ok(());
            }
            watch(ctx, &up.id.to_string())
        }
        UpgradeCmd::Show(UpgradeIdArg { id }) => {
            let (value, up) = fetch(ctx, &which(id))?;
            show_upgrade(ctx, &value, &up);
            Ok(())
        }
        UpgradeCmd::Watch(UpgradeIdArg { id }) => watch(ctx, &which(id)),
        UpgradeCmd::Cancel(UpgradeIdArg { id }) => {
            let seg = which(id);
            let reply = ctx.client()?.post(
                &format!("/admin/upgrades/{seg}/cancel"),
                &json!({}),
                &upgrade_name(&seg),
            )?;
            let up: Upgrade = read(&reply, "the upgrade")?;
            note(format!("Cancelled upgrade {} to {}.", up.id, up.version));
            for n in up.nodes.iter().filter(|n| n.note.is_some()) {
                if matches!(n.step.as_str(), "evacuating" | "rebooting" | "booting") {
                    note(format!("{}: {}", n.label, opt(&n.note)));
                }
            }
            Ok(())
        }
    }
}

fn which(id: Option<u64>) -> String {
    id.map_or_else(|| "latest".into(), |i| i.to_string())
}

fn upgrade_name(seg: &str) -> String {
    if seg == "latest" {
        "an upgrade".into()
    } else {
        format!("upgrade {seg}")
    }
}

fn fetch(ctx: &Ctx, seg: &str) -> Result<(Value, Upgrade)> {
    let value = ctx
        .client()?
        .get_value(&format!("/admin/upgrades/{seg}"), &upgrade_name(seg))?;
    let up = read(&value, "the upgrade")?;
    Ok((value, up))
}

/// Polls the upgrade until it ends; its end decides the exit code.
fn watch(ctx: &Ctx, seg: &str) -> Result<()> {
    let (_, first) = fetch(ctx, seg)?;
    let seg = first.id.to_string();
    let progress = Progress::percent(&first.description);
    let last = output::wait_for(
        Duration::from_secs(7 * 24 * 3600),
        &format!("upgrade {} is still running", first.id),
        || {
            let (_, now) = fetch(ctx, &seg)?;
            progress.set(now.progress, Some(&bar_message(&now)));
            Ok(now.finished().then_some(now))
        },
    )?;
    progress.finish();
    match last.state.as_str() {
        "done" => {
            note(format!(
                "Done: {} ({} of {} nodes upgraded, the rest skipped).",
                last.description,
                last.nodes.iter().filter(|n| n.step == "done").count(),
                last.nodes_total
            ));
            Ok(())
        }
        "cancelled" => Err(CliError::new(
            Exit::Unknown,
            format!("upgrade {} to {} was cancelled", last.id, last.version),
        )),
        _ => Err(CliError::new(
            Exit::Unknown,
            format!(
                "upgrade {} to {} failed: {}",
                last.id,
                last.version,
                last.error.as_deref().unwrap_or("no reason given")
            ),
        )),
    }
}

fn bar_message(up: &Upgrade) -> String {
    format!(
        "upgrade to {}: {} of {} nodes, {}",
        up.version, up.nodes_done, up.nodes_total, up.phase
    )
}

fn secs(s: Option<u64>) -> String {
    s.map_or_else(|| "-".into(), |s| format!("{s}s"))
}

const HEADERS: &[&str] = &[
    "Node", "Role", "Step", "Evacuate", "Reboot", "Total", "Note",
];

fn row(n: &UpgradeNode) -> Vec<String> {
    vec![
        n.label.clone(),
        n.role.clone(),
        n.step.clone(),
        secs(n.evacuate_secs),
        secs(n.reboot_secs),
        secs(n.total_secs),
        opt(&n.note),
    ]
}

fn line(n: &UpgradeNode) -> String {
    let timing = match n.step.as_str() {
        "done" => format!(
            " in {} (emptying {}, reboot {})",
            secs(n.total_secs),
            secs(n.evacuate_secs),
            secs(n.reboot_secs)
        ),
        _ => String::new(),
    };
    let note = n
        .note
        .as_deref()
        .map(|n| format!(": {n}"))
        .unwrap_or_default();
    format!("  • {} ({}) {}{timing}{note}\n", n.label, n.role, n.step)
}

/// The human layout: a headline, the current node, one line per node.
pub fn upgrade_text(up: &Upgrade) -> String {
    let from = up
        .from_version
        .as_deref()
        .map(|v| format!(" from {v}"))
        .unwrap_or_default();
    let mut s = format!(
        "▸ upgrade {} to {}{from}: {}, {} of {} nodes done ({}%)\n",
        up.id, up.version, up.state, up.nodes_done, up.nodes_total, up.progress
    );
    if up.state == "running" {
        s.push_str(&format!("  now: {}\n", up.phase));
    }
    if let Some(e) = &up.error {
        s.push_str(&format!("  error: {e}\n"));
    }
    s.push('\n');
    for n in &up.nodes {
        if n.note.is_some() && n.note == up.error {
            // Its reason is the error above.
            s.push_str(&format!(
                "  • {} ({}) {}: see the error above\n",
                n.label, n.role, n.step
            ));
        } else {
            s.push_str(&line(n));
        }
    }
    s
}

fn show_upgrade(ctx: &Ctx, value: &Value, up: &Upgrade) {
    ctx.out.show(
        value,
        HEADERS,
        || up.nodes.iter().map(row).collect(),
        || upgrade_text(up),
    );
}
