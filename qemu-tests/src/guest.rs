//! A customer VM running the test guest, as scenarios see it: its serial
//! lines on the head's console (the head agent echoes each VM's console
//! into its log at debug level, `bigv_head::console`, which the brain's
//! `--boot-kernel-arg bigv.log=info,bigv_head::console=debug` turns on),
//! and the operator's and customer's setup through the `bigv` CLI.

use std::path::Path;
use std::time::{Duration, Instant};

use bigv_test_guest::lines;

use crate::brain::{Admin, BrainProcess};
use crate::cli::Bigv;
use crate::timings::Timings;
use crate::vm::Vm;

/// The head agent's target for the guests' console lines.
pub const CONSOLE: &str = "bigv_head::console";
/// The brain argument that puts the guests' console on the head's.
pub const CONSOLE_BOOT_ARGS: [&str; 4] = [
    "--boot-kernel-arg",
    "bigv.log=info,bigv_head::console=debug",
    // VMs' NICs are taps on per-VLAN bridges on the heads' public NIC
    // (`cluster::PUBLIC_NIC`), the VLANs tagged on it: the customer
    // scenario sees its guest's DHCP broadcast leave the head with VLAN 5's
    // tag on the public LAN, and not on the others.
    "--boot-kernel-arg",
    "bigv.trunk=eth2",
];
pub const TEMPLATE: &str = "bigv-test";
/// The customers' VLAN and range; the brain gives the range's first
/// address to the router (DHCP option 3).
pub const PUBLIC_VLAN: &str = "5";
pub const PUBLIC_RANGE: &str = "10.5.0.0/24";
pub const PUBLIC_PREFIX: &str = "10.5.0.";
pub const PUBLIC_ROUTER: &str = "10.5.0.1";
pub const CUSTOMER: &str = "alice";
pub const CUSTOMER_PASSWORD: &str = "alice-secret-password";
pub const ACCOUNT: &str = "acme";
/// The operator's management VLAN and range for VMs' SSH consoles: on
/// the boot LAN (10.0.0.0/24), above the brain's DHCP pool (.100–.200);
/// heads put a VM's address on their boot NIC.
pub const MANAGEMENT_VLAN: &str = "9";
pub const MANAGEMENT_RANGE: &str = "10.0.0.224/27";
/// From `bigv start` to the guest's `DISC OK` on the head's console:
/// template fetch and copy (first time), qemu under nested KVM, the
/// guest's kernel, the disc check over NBD.
pub const GUEST_LIMIT: Duration = Duration::from_secs(300);

/// The guest's lines as the head's console shows them (the head agent's
/// echo), in order.
pub fn guest_lines(head: &Vm) -> Vec<String> {
    head.console()
        .lines()
        .filter(|l| l.contains(CONSOLE))
        .map(str::to_owned)
        .collect()
}

/// One VM's lines among the head's echoes: the agent ends each with
/// `vm=<the VM's id>` (the brain's server id), so scenarios with several
/// VMs on a head tell them apart.
pub fn vm_lines(head: &Vm, vm: u64) -> Vec<String> {
    let tag = format!(" vm={vm}");
    guest_lines(head)
        .into_iter()
        .filter(|l| l.trim_end().ends_with(&tag))
        .collect()
}

/// The `n`th (0-based) boot of the guest on the head's console: its boot
/// line and, once there, its `DISC OK`/`DISC FAIL` line.
pub fn boot(head: &Vm, n: usize) -> Option<(String, Option<String>)> {
    boot_in(&guest_lines(head), n)
}

/// [`boot`] of one VM ([`vm_lines`]).
pub fn boot_of(head: &Vm, vm: u64, n: usize) -> Option<(String, Option<String>)> {
    boot_in(&vm_lines(head, vm), n)
}

fn boot_in(lines: &[String], n: usize) -> Option<(String, Option<String>)> {
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

/// Every boot id the guest printed on this head's console, in order.
pub fn boot_ids(head: &Vm) -> Vec<String> {
    guest_lines(head)
        .iter()
        .filter_map(|l| lines::boot_id(l).map(str::to_owned))
        .collect()
}

/// The guest's last `TICK` on this head's console: `(n, uptime s)`.
pub fn last_tick(head: &Vm) -> Option<(u64, f64)> {
    guest_lines(head).iter().rev().find_map(|l| lines::tick(l))
}

/// The operator registers the test guest `image` as the OS template
/// [`TEMPLATE`] (uploading its bytes), a public VLAN and IP range for
/// customers' addresses ([`PUBLIC_RANGE`]), creates account [`ACCOUNT`] and
/// user [`CUSTOMER`] as its admin; the customer logs in and sees the
/// template.
pub fn operator_and_customer_setup(admin: &Bigv, customer: &Bigv, image: &Path) {
    let size = std::fs::metadata(image).unwrap().len();
    let added = admin.run_all(&[
        "admin",
        "add",
        "image",
        TEMPLATE,
        &format!("{}M", size.div_ceil(1 << 20)),
        "--description",
        "the BigV test guest",
        "--file",
        image.to_str().expect("a UTF-8 path"),
    ]);
    assert!(
        added.contains(&format!("Uploaded {size} bytes of {TEMPLATE}")),
        "{added}"
    );
    // Customers' addresses: VLAN 5, public, tagged on the heads' trunk.
    admin.run(&["admin", "add", "vlan", PUBLIC_VLAN]);
    admin.run(&["admin", "add", "ip", "range", PUBLIC_RANGE, PUBLIC_VLAN]);
    admin.run(&["admin", "add", "account", ACCOUNT]);
    admin.run(&["add", "user", CUSTOMER, "--password", CUSTOMER_PASSWORD]);
    admin.run(&[
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

/// The customer adds server `name` from the test guest's template: 256 MiB,
/// one core, a disc of `disc` (`1G`, `1024M`) and `more` arguments
/// (`bigv add server`, which returns once the server is created).
pub fn add_server(customer: &Bigv, name: &str, disc: &str, more: &[&str]) {
    let mut args = vec![
        "add", "server", name, "--image", TEMPLATE, "--memory", "256M", "--cores", "1", "--disc",
        disc,
    ];
    args.extend_from_slice(more);
    customer.run(&args);
}

/// The operator adds the management VLAN and range ([`MANAGEMENT_RANGE`]):
/// VMs added after it get an SSH console address.
pub fn management_setup(admin: &Bigv) {
    admin.run(&[
        "admin",
        "add",
        "vlan",
        MANAGEMENT_VLAN,
        "--usage-type",
        "management",
    ]);
    admin.run(&[
        "admin",
        "add",
        "ip",
        "range",
        MANAGEMENT_RANGE,
        MANAGEMENT_VLAN,
    ]);
}

/// Logs in to `server`'s SSH console (its management address, from `show
/// server`) as [`CUSTOMER`] with the BigV password, and waits until the
/// scroll-back shows `first`.
pub fn console_session(customer: &Bigv, server: &str, first: &str) -> crate::console::Session {
    let shown: serde_json::Value =
        serde_json::from_str(&customer.run(&["--json", "show", "server", server]))
            .expect("show server --json");
    let address = shown["management_address"]
        .as_str()
        .unwrap_or_else(|| panic!("a management address: {shown}"));
    let mut session = crate::console::Session::login(address, CUSTOMER, CUSTOMER_PASSWORD);
    session.wait_for(first, Duration::from_secs(60));
    session
}

/// Waits for the `n`th boot's `DISC OK` on the head's console; marks the
/// row's columns.
pub async fn wait_boot(
    brain: &mut BrainProcess,
    admin: &Admin,
    head: &Vm,
    n: usize,
    row: &str,
    t: &mut Timings,
) -> (String, String) {
    let deadline = Instant::now() + GUEST_LIMIT;
    loop {
        if admin.get("/admin/heads").await[0]["running_virtual_machines_count"] == 1 {
            t.mark(row, "running");
        }
        if let Some((b, disc)) = boot(head, n) {
            t.mark(row, "guest boot");
            if let Some(d) = disc {
                t.mark(row, "disc ok");
                eprintln!("boot {} on the head's console:\n  {b}\n  {d}", n + 1);
                return (b, d);
            }
        }
        assert!(!brain.exited(), "the brain exited");
        assert!(
            Instant::now() < deadline,
            "boot {} of the guest did not finish its disc check within {GUEST_LIMIT:?}\n{}",
            n + 1,
            t.render()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The guest's `DISC OK`/`DISC FAIL` lines on this head's console, in
/// order (one per disc check: at each boot and for each ctrl-alt-delete).
pub fn disc_lines(head: &Vm) -> Vec<String> {
    guest_lines(head)
        .into_iter()
        .filter(|l| l.contains(lines::DISC_OK) || l.contains(lines::DISC_FAIL))
        .collect()
}

/// Presses ctrl-alt-delete on `server` (`name.group.account`) through the
/// API (a `sendkey` signal): the test guest answers with a disc check,
/// the way to make it do I/O at a chosen moment.
pub async fn disc_check_by_keys(admin: &Admin, server: &str) {
    let mut parts = server.split('.');
    let (Some(vm), Some(group), Some(account), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("{server}: expected name.group.account");
    };
    admin
        .post(
            &format!("/accounts/{account}/groups/{group}/virtual_machines/{vm}/signal"),
            serde_json::json!({"signal": "sendkey", "data": "ctrl-alt-delete"}),
        )
        .await;
}

/// The guest's `TICK` lines on the head's console: `(n, uptime)`.
pub fn ticks(head: &Vm) -> Vec<(u64, f64)> {
    guest_lines(head)
        .iter()
        .filter_map(|l| lines::tick(l))
        .collect()
}

/// [`ticks`] of one VM ([`vm_lines`]).
pub fn ticks_of(head: &Vm, vm: u64) -> Vec<(u64, f64)> {
    vm_lines(head, vm)
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

/// What every customer-VM scenario starts from: its log folder, the test
/// guest's disc image, a temporary folder for the brain's store and the
/// CLI profiles, the cluster (brain started with [`CONSOLE_BOOT_ARGS`], no
/// machine powered on yet) and the `bigv` CLI as the bootstrap operator
/// and as [`CUSTOMER`]. Destructure it in this order so locals drop as the
/// scenario needs: CLIs, cluster, store, logs (kept if it failed).
pub struct CustomerScenario {
    pub logs: crate::logs::Logs,
    pub guest: std::path::PathBuf,
    pub data_dir: tempfile::TempDir,
    pub cluster: crate::cluster::Cluster,
    pub admin_cli: Bigv,
    pub customer: Bigv,
}

impl CustomerScenario {
    /// The opening every customer-VM scenario test shares: `None` (the
    /// test passes, saying it was skipped) unless the slow tier is on;
    /// else the host checked, [`CustomerScenario::start`], this thread in
    /// the namespace (the API listens on its loopback) and a runtime for
    /// the scenario's async steps.
    pub fn begin(
        test: &str,
        scenario: &str,
        tag: &str,
        taps: usize,
    ) -> Option<(CustomerScenario, tokio::runtime::Runtime)> {
        if !crate::slow_tests_enabled(test) {
            return None;
        }
        crate::require_host();
        let s = CustomerScenario::start(scenario, tag, taps);
        s.cluster.ns.enter();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        Some((s, rt))
    }

    /// `scenario` names the log folder, `tag` the namespace; `taps`
    /// machines can be powered on.
    pub fn start(scenario: &str, tag: &str, taps: usize) -> CustomerScenario {
        let mut logs = crate::logs::Logs::new(scenario);
        let guest = crate::guest_image();
        let cli = Bigv::binary();
        // The store, its copy of the image and the template (~170 MB):
        // removed even on failure.
        let data_dir = tempfile::tempdir().expect("a temporary folder");
        let mut cluster = crate::cluster::Cluster::start_with(
            tag,
            taps,
            &data_dir.path().join("brain"),
            &mut logs,
            &CONSOLE_BOOT_ARGS,
        );
        let admin_cli = Bigv::new(
            &cli,
            &cluster.ns,
            &mut cluster.brain,
            &data_dir.path().join("cli-admin"),
            crate::brain::ADMIN,
            crate::brain::PASSWORD,
        );
        let customer = Bigv::new(
            &cli,
            &cluster.ns,
            &mut cluster.brain,
            &data_dir.path().join("cli-alice"),
            CUSTOMER,
            CUSTOMER_PASSWORD,
        );
        CustomerScenario {
            logs,
            guest,
            data_dir,
            cluster,
            admin_cli,
            customer,
        }
    }
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
