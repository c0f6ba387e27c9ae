//! What commands print: human layouts (bigv-cli.md §5), `--json` (the
//! brain's objects as it sent them) and `--table` (aligned columns for
//! scripts). Results go to stdout; notes, progress and prompts to stderr.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use comfy_table::{ContentArrangement, Table, presets};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::error::{CliError, Exit, Result};
use crate::names::human_size;
use crate::types::{Account, Vm};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
    Table,
}

#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub format: Format,
}

impl Out {
    pub fn is_human(&self) -> bool {
        self.format == Format::Human
    }

    /// Prints the brain's JSON as it is, pretty.
    pub fn json(&self, value: &Value) {
        let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
        println!("{text}");
    }

    /// A table: a header row and aligned columns, no borders.
    pub fn table(&self, headers: &[&str], rows: Vec<Vec<String>>) {
        println!("{}", table_text(headers, rows));
    }

    /// Human text, printed as it is (it carries its own newlines).
    pub fn text(&self, text: &str) {
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
        let _ = std::io::stdout().flush();
    }

    /// Prints `value` as JSON, a table or human text, as asked.
    pub fn show(
        &self,
        value: &Value,
        headers: &[&str],
        rows: impl FnOnce() -> Vec<Vec<String>>,
        human: impl FnOnce() -> String,
    ) {
        match self.format {
            Format::Json => self.json(value),
            Format::Table => self.table(headers, rows()),
            Format::Human => self.text(&human()),
        }
    }
}

/// A note for the person at the terminal (stderr, so stdout stays clean).
pub fn note(message: impl AsRef<str>) {
    eprintln!("{}", message.as_ref());
}

pub fn table_text(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().map(|h| h.to_string()));
    for row in rows {
        table.add_row(row);
    }
    table
        .to_string()
        .lines()
        .map(|l| l.trim_end().trim_start_matches(' ').to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Unix milliseconds as UTC `YYYY-MM-DD HH:MM:SS.mmm` (proleptic
/// Gregorian, civil-from-days).
pub fn utc_ms(at_ms: u64) -> String {
    let secs = at_ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        at_ms % 1000
    )
}

pub fn opt(v: &Option<impl ToString>) -> String {
    v.as_ref().map_or_else(|| "-".into(), |x| x.to_string())
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// ` ▸ web1.default (powered on) in York`
pub fn vm_headline(vm: &Vm) -> String {
    let zone = match vm.zone_name.as_deref() {
        Some(z) if !z.is_empty() => format!(" in {}", capitalise(z)),
        _ => String::new(),
    };
    format!("▸ {} ({}){zone}", vm.short_name(), vm.state())
}

/// The human layout of one server (bigv-cli.md §5).
pub fn vm_text(vm: &Vm) -> String {
    let mut s = format!(" {}\n", vm_headline(vm));
    let ips = vm.ips();
    let spec = format!(
        "{}, {}, {} on {}",
        plural(vm.cores as usize, "core", "cores"),
        human_size(vm.memory),
        human_size(vm.total_disc_size()),
        plural(vm.discs.len(), "disc", "discs")
    );
    match ips.first() {
        Some(ip) => s.push_str(&format!("   {ip} - {spec}\n")),
        None => s.push_str(&format!("   {spec}\n")),
    }
    if let Some(cd) = vm.cdrom_url.as_deref().filter(|c| !c.is_empty()) {
        s.push_str(&format!("   CD-ROM: {cd}\n"));
    }
    if !vm.discs.is_empty() {
        s.push_str("\n    discs:\n");
        for d in &vm.discs {
            s.push_str(&format!(
                "      • {} - {}, {} grade\n",
                d.label,
                human_size(d.size),
                d.storage_grade
            ));
        }
    }
    if !ips.is_empty() {
        s.push_str("\n    ips:\n");
        for ip in &ips {
            s.push_str(&format!("      • {ip}\n"));
        }
    }
    s
}

pub const VM_HEADERS: &[&str] = &[
    "ID",
    "Hostname",
    "ManagementAddress",
    "Memory",
    "Cores",
    "Autoreboot",
    "PowerOn",
    "Deleted",
];

pub fn vm_row(vm: &Vm) -> Vec<String> {
    vec![
        vm.id.to_string(),
        vm.hostname.clone().unwrap_or_else(|| vm.name.clone()),
        opt(&vm.management_address),
        vm.memory.to_string(),
        vm.cores.to_string(),
        vm.autoreboot_on.to_string(),
        vm.power_on.to_string(),
        vm.deleted.to_string(),
    ]
}

/// The human layout of an account: its groups and their servers.
pub fn account_text(account: &Account, is_default: bool) -> String {
    let mut s = if is_default {
        format!("Your default account ({})\n", account.name)
    } else {
        format!("Account {}\n", account.name)
    };
    if account.suspended {
        s.push_str("  (suspended)\n");
    }
    for g in &account.groups {
        s.push_str(&format!(
            "  • {} - {}\n",
            g.name,
            plural(g.virtual_machines.len(), "server", "servers")
        ));
        for vm in &g.virtual_machines {
            s.push_str(&format!("    {}\n", vm_headline(vm)));
        }
    }
    s
}

/// Whether to draw progress: only for a person watching a terminal.
pub fn interactive_output() -> bool {
    std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// A spinner or bar on stderr, drawn only on a terminal.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn spinner(message: &str) -> Progress {
        let bar = interactive_output().then(|| {
            let b = ProgressBar::new_spinner();
            b.set_message(message.to_owned());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Progress { bar }
    }

    /// A percentage bar.
    pub fn percent(message: &str) -> Progress {
        let bar = interactive_output().then(|| {
            let b = ProgressBar::new(100);
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos:>3}% ({elapsed})")
            {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(message.to_owned());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Progress { bar }
    }

    pub fn set(&self, percent: u64, message: Option<&str>) {
        if let Some(b) = &self.bar {
            b.set_position(percent.min(100));
            if let Some(m) = message {
                b.set_message(m.to_owned());
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// How often long operations poll the brain (`BIGV_POLL_MS` overrides,
/// for tests and slow links).
pub fn poll_interval() -> Duration {
    std::env::var("BIGV_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(1))
}

/// Calls `check` every poll interval until it returns `Some`, or fails
/// after `timeout` with `timeout_message`.
pub fn wait_for<T>(
    timeout: Duration,
    timeout_message: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            return Err(CliError::new(Exit::Unknown, timeout_message));
        }
        std::thread::sleep(poll_interval());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_ms_is_civil_time() {
        assert_eq!(utc_ms(0), "1970-01-01 00:00:00.000");
        assert_eq!(utc_ms(951_782_400_123), "2000-02-29 00:00:00.123");
        assert_eq!(utc_ms(1_796_519_025_007), "2026-12-06 01:03:45.007");
    }
    use serde_json::json;

    #[test]
    fn a_server_reads_as_in_the_old_client() {
        let vm: Vm = serde_json::from_value(json!({
            "id": 1, "name": "web1", "cores": 1, "memory": 1024, "power_on": true,
            "hostname": "web1.default.alice.uk0.bigv.io", "zone_name": "york",
            "discs": [{"label": "disc-1", "size": 25600, "storage_grade": "sata"}],
            "network_interfaces": [{"ips": ["192.0.2.10", "2001:db8::10"]}]
        }))
        .unwrap();
        assert_eq!(
            vm_text(&vm),
            " ▸ web1.default (powered on) in York\n   192.0.2.10 - 1 core, 1GiB, 25GiB on 1 disc\n\n    discs:\n      • disc-1 - 25GiB, sata grade\n\n    ips:\n      • 192.0.2.10\n      • 2001:db8::10\n"
        );
    }

    #[test]
    fn tables_are_aligned_columns() {
        let t = table_text(
            &["ID", "Name"],
            vec![
                vec!["1".into(), "web1".into()],
                vec!["22".into(), "db".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID"));
        assert_eq!(lines[1].find("web1"), lines[0].find("Name"));
    }
}
