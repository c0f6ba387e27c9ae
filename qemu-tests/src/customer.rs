//! What the customer scenarios share: the test guest as an OS template, a
//! customer account driven through the real `bigv` CLI, and the guest's
//! serial lines as a head echoes them into its own console.
//!
//! How the guest's console is seen: the head agent echoes each VM's serial
//! console into its log at debug level (`bigv_head::console`), and the
//! brain puts [`BRAIN_ARGS`] on the nodes' kernel command line; the head's
//! log is its serial console, which qemu writes to a file here.

use std::path::Path;

use bigv_test_guest::lines;

use crate::cli::Bigv;
use crate::vm::Vm;

pub const TEMPLATE: &str = "bigv-test";
pub const CUSTOMER: &str = "alice";
pub const CUSTOMER_PASSWORD: &str = "alice-secret-password";
pub const ACCOUNT: &str = "acme";
/// The tracing target of the head's echo of its VMs' consoles.
pub const CONSOLE: &str = "bigv_head::console";
/// Brain arguments that make every head echo its VMs' consoles.
pub const BRAIN_ARGS: [&str; 2] = [
    "--boot-kernel-arg",
    "bigv.log=info,bigv_head::console=debug",
];

/// The operator registers the test guest `guest` as the OS template
/// [`TEMPLATE`] and uploads its bytes, adds the account [`ACCOUNT`] and the
/// user [`CUSTOMER`] as its admin; the customer logs in.
pub fn set_up(admin_cli: &Bigv, customer: &Bigv, guest: &Path) {
    let size = std::fs::metadata(guest).unwrap().len();
    let added = admin_cli.run_all(&[
        "admin",
        "add",
        "image",
        TEMPLATE,
        &format!("{}M", size.div_ceil(1 << 20)),
        "--description",
        "the BigV test guest",
        "--file",
        guest.to_str().expect("a UTF-8 path"),
    ]);
    assert!(
        added.contains(&format!("Uploaded {size} bytes of {TEMPLATE}")),
        "{added}"
    );
    admin_cli.run(&["admin", "add", "account", ACCOUNT]);
    admin_cli.run(&["add", "user", CUSTOMER, "--password", CUSTOMER_PASSWORD]);
    admin_cli.run(&[
        "grant",
        "privilege",
        "account_admin",
        "on",
        ACCOUNT,
        "to",
        CUSTOMER,
    ]);
    customer.run(&["login"]);
    let images = customer.run(&["show", "images"]);
    assert!(images.contains(TEMPLATE), "{images}");
}

/// The guest's lines as the head's console shows them (the head agent's
/// echo), in order.
pub fn guest_lines(head: &Vm) -> Vec<String> {
    head.console()
        .lines()
        .filter(|l| l.contains(CONSOLE))
        .map(str::to_owned)
        .collect()
}

/// The `n`th (0-based) boot of the guest on the head's console: its boot
/// line and, once there, its `DISC OK`/`DISC FAIL` line.
pub fn boot(head: &Vm, n: usize) -> Option<(String, Option<String>)> {
    let lines = guest_lines(head);
    let starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(lines::BOOT))
        .map(|(i, _)| i)
        .collect();
    let at = *starts.get(n)?;
    let end = starts.get(n + 1).copied().unwrap_or(lines.len());
    let disc = lines[at..end]
        .iter()
        .find(|l| l.contains(lines::DISC_OK) || l.contains(lines::DISC_FAIL))
        .cloned();
    Some((lines[at].clone(), disc))
}

/// The guest's `TICK` lines on the head's console: `(n, uptime)`.
pub fn ticks(head: &Vm) -> Vec<(u64, f64)> {
    guest_lines(head)
        .iter()
        .filter_map(|l| lines::tick(l))
        .collect()
}

/// The first line of the log file `path` that contains `needle`, without
/// its terminal colours (the brain's log is coloured).
pub fn log_line(path: &Path, needle: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find(|l| l.contains(needle)).map(strip_colours)
}

/// `line` without ANSI SGR sequences (`ESC [ … m`).
pub fn strip_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn colours_are_stripped() {
        assert_eq!(
            super::strip_colours("\u{1b}[3mdowntime_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m12 x"),
            "downtime_ms=12 x"
        );
    }
}
