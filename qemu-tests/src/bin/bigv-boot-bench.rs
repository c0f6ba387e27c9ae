//! Issue 7's boot benchmark: power-on → spine-ready (the node is online on
//! the brain's spine) for the same image and the same machine, booted
//! over PXE as real nodes are (iPXE ROM: DHCP, the brain's script, kernel
//! and initrds over HTTP) versus loaded directly by qemu
//! (`-kernel/-initrd`, the kernel command line the brain's script gives).
//! Both roles: a tail loads `initrd`, a head `initrd` + `initrd-head`.
//! Prints the medians, the ratio (target ≤ 1.25) and the image sizes.
//!
//! Runs as root (namespace, taps); `tools/bench-boot.sh` builds and runs
//! it. Each boot gets a new MAC, so a node the brain still counts online
//! from an earlier boot cannot be mistaken for the next one.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bigv_qemu_tests::brain::Admin;
use bigv_qemu_tests::cluster::{Cluster, NodeSpec, Role, direct_boot};
use bigv_qemu_tests::logs::Logs;
use bigv_qemu_tests::vm::{DirectBoot, Vm, VmSpec};
use clap::Parser;
use serde_json::json;

#[derive(Parser)]
#[command(about = "Power-on to spine-ready: PXE boot versus qemu -kernel/-initrd")]
struct Args {
    /// Boots per role and method (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: u8,
}

/// One boot under TCG; far above the ~20 s seen here.
const LIMIT: Duration = Duration::from_secs(300);

fn main() -> ExitCode {
    let args = Args::parse();
    bigv_qemu_tests::require_host();
    let mut logs = Logs::new("boot-bench");
    let data = tempfile::tempdir().expect("a temporary folder");
    let mut cluster = Cluster::start("bootbench", 1, &data.path().join("brain"), &mut logs);
    cluster.ns.enter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let rows = rt.block_on(bench(&mut cluster, &mut logs, args.runs, data.path()));
    println!(
        "power-on → spine-ready, image {} ({} runs each, median; TCG, 1 vCPU):",
        cluster.version, args.runs
    );
    println!(
        "{:<6} {:>8} {:>8} {:>7}",
        "role", "PXE s", "direct s", "ratio"
    );
    let mut ok = true;
    for (role, pxe, direct) in &rows {
        let ratio = pxe / direct;
        ok &= ratio <= 1.25;
        println!("{role:<6} {pxe:>8.1} {direct:>8.1} {ratio:>7.2}");
    }
    println!(
        "target: ratio ≤ 1.25 — {}",
        if ok { "met" } else { "NOT met" }
    );
    println!("image files:");
    for f in ["vmlinuz", "initrd", "initrd-head"] {
        let size = std::fs::metadata(cluster.image.join(f)).map_or(0, |m| m.len());
        println!("  {f:<12} {:>6.1} MiB", size as f64 / (1024.0 * 1024.0));
    }
    drop(cluster);
    ExitCode::SUCCESS
}

/// (role, median PXE seconds, median direct seconds) per role.
async fn bench(
    cluster: &mut Cluster,
    logs: &mut Logs,
    runs: u8,
    scratch: &Path,
) -> Vec<(&'static str, f64, f64)> {
    let admin = Admin::login(&mut cluster.brain).await;
    admin
        .put(
            "/admin/settings",
            json!({"admission": "manual", "enrollment": "closed"}),
        )
        .await;
    cluster.wait_for_target_image(&admin).await;
    let mut rows = vec![];
    let mut n = 0u32;
    for role in [Role::Tail, Role::Head] {
        let mut pxe = vec![];
        let mut direct = vec![];
        for _ in 0..runs {
            // Alternate, so a slow spell on the machine hits both.
            for by_pxe in [true, false] {
                n += 1;
                let mut spec = match role {
                    Role::Head => NodeSpec::head(1),
                    Role::Tail => NodeSpec::tail(1),
                };
                spec.mac = format!("52:54:00:8e:{:02x}:{:02x}", 0x10 + n / 256, n % 256);
                admin
                    .post(
                        "/admin/machines",
                        json!({"mac": spec.mac, "role": role.name()}),
                    )
                    .await;
                let boot = if by_pxe {
                    None
                } else {
                    Some(direct_boot(&spec.mac, role, &cluster.image, scratch).await)
                };
                let secs = boot_once(cluster, &admin, logs, &spec, boot.as_ref()).await;
                eprintln!(
                    "{} {} by {}: {secs:.1} s",
                    role.name(),
                    spec.mac,
                    if by_pxe { "PXE" } else { "-kernel" }
                );
                if by_pxe { &mut pxe } else { &mut direct }.push(secs);
            }
        }
        rows.push((role.name(), median(&mut pxe), median(&mut direct)));
    }
    rows
}

/// Powers the machine on, waits until it is online on the spine, powers
/// it off; returns the seconds in between.
async fn boot_once(
    cluster: &mut Cluster,
    admin: &Admin,
    logs: &mut Logs,
    spec: &NodeSpec,
    direct: Option<&DirectBoot>,
) -> f64 {
    let name = spec.mac.replace(':', "");
    let more_nics = spec.more_nics(&cluster.ns, 0);
    let mut vm = Vm::power_on(
        &cluster.ns,
        &VmSpec {
            mac: &spec.mac,
            tap: &cluster.ns.taps[0],
            memory_mib: spec.memory_mib,
            cpu: spec.cpu(),
            direct,
            data_disc: None,
            more_nics: &more_nics,
            no_reboot: false,
        },
        &logs.file(&format!("{name}-serial.log")),
        &logs.file(&format!("{name}-qemu.log")),
    );
    loop {
        if let Some(node) = admin.node(spec.role.list(), &spec.mac).await
            && node["online"] == true
        {
            return vm.powered_on.elapsed().as_secs_f64();
        }
        assert!(!vm.exited(), "{}: qemu exited", spec.mac);
        assert!(!cluster.brain.exited(), "the brain exited");
        assert!(
            vm.powered_on.elapsed() < LIMIT,
            "{} not on the spine after {LIMIT:?}",
            spec.mac
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
