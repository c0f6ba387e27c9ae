//! `bigv console`: the serial console is `ssh USER@MANAGEMENT_ADDRESS`
//! (the head's console service checks the user's SSH keys and
//! privileges); VNC is reached through an ssh tunnel to the same address.

use std::os::unix::process::CommandExt;
use std::process::Command;

use super::Ctx;
use crate::cli::ConsoleArgs;
use crate::error::{CliError, Exit, Result};
use crate::output::note;

/// The local port the VNC instructions forward.
const VNC_LOCAL_PORT: u16 = 9999;

/// Splits `--ssh-args` on whitespace (no shell quoting: pass one word
/// per option, e.g. "-i /path/key -p 2222").
fn split_args(args: Option<&str>) -> Vec<String> {
    args.map(|a| a.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

pub fn console(ctx: &Ctx, a: ConsoleArgs) -> Result<()> {
    let (r, _, vm) = ctx.vm(&a.server)?;
    if vm.deleted {
        return Err(CliError::usage(format!(
            "{r} is deleted: restore it to reach its console"
        )));
    }
    let address = vm.management_address.clone().ok_or_else(|| {
        CliError::usage(format!(
            "{r} has no console address yet (the brain has not given it one); try again shortly"
        ))
    })?;
    let user = ctx.whoami()?;
    let target = format!("{user}@{address}");
    let extra = split_args(a.ssh_args.as_deref());
    if a.vnc {
        let host = if address.contains(':') {
            format!("[{address}]")
        } else {
            address.clone()
        };
        let mut forward = vec![
            "ssh".to_owned(),
            "-N".into(),
            "-L".into(),
            format!("{VNC_LOCAL_PORT}:{host}:5900"),
        ];
        forward.extend(extra);
        forward.push(target);
        println!("The VNC console of {r} is reached through an ssh tunnel. In one terminal run:");
        println!();
        println!("  {}", forward.join(" "));
        println!();
        println!(
            "then point a VNC viewer at localhost:{VNC_LOCAL_PORT} (vnc://localhost:{VNC_LOCAL_PORT}/)."
        );
        return Ok(());
    }
    let mut args = extra;
    args.push(target);
    if a.no_connect {
        println!("ssh {}", args.join(" "));
        return Ok(());
    }
    note(format!(
        "Connecting to the serial console of {r} ({address}); type ~. to leave."
    ));
    // Only returns if ssh could not be started.
    let e = Command::new("ssh").args(&args).exec();
    Err(CliError::new(
        Exit::Subprocess,
        format!("cannot run ssh: {e} (is OpenSSH installed and on PATH?)"),
    ))
}
