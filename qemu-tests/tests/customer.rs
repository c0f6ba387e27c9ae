//! Scenario 2 of issue 8, "customer flow through the `bigv` CLI": a real
//! brain, a head and a tail that PXE-boot the node image from it and are
//! accepted, the test guest registered as an OS template, and then, with
//! the real `bigv` binary as a customer:
//!
//! 1. `bigv add server` with that image and a disc → the VM boots on the
//!    head under KVM (nested in TCG), its disc served over NBD by the tail
//!    on the disc's own storage address; the guest's boot line and its
//!    `DISC OK` (pattern written and read back) show on the head's console;
//! 2. `bigv stop` / `bigv start` → a new boot whose `DISC OK` names the
//!    first boot as the writer of the pattern it found (the data survived);
//! 3. `bigv update server --memory` and `bigv update disc` (while off),
//!    `bigv start` → the guest sees more memory and the larger disc, and
//!    its pattern is still there;
//!    Its SSH console, on its management address, takes the customer's
//!    BigV password and shows the guest's serial console (OpenSSH).
//!    Its NIC is a tap on the head's bridge for the operator's VLAN 5
//!    (tagged on the head's public NIC), and the guest's DHCP client gets
//!    exactly its allocated address, router and name from the head's
//!    responder on that tap;
//! 4. `bigv update server --cd-url http://…` / `--remove-cd` on the
//!    running VM → the head's qemu opens the URL and reports the CD
//!    inserted, then ejected (the test guest has no CD driver: qemu is
//!    what sees it).
//!
//! The three LANs are checked on the wire (tcpdump on the head's taps):
//! the guest's DHCP broadcast leaves the head on the public LAN tagged
//! with VLAN 5, and no tagged frame ever crosses the boot or the storage
//! LAN; the disc's traffic crosses the storage LAN (the head's storage
//! tap carries the guest's reads and writes), and the head announces its
//! storage address, which init derived from its storage NIC.
//!
//! How the guest's console is seen: the head agent echoes each VM's serial
//! console into its own log at debug level (`bigv_head::console`), and the
//! brain puts `bigv.log=info,bigv_head::console=debug` on the nodes'
//! kernel command line (`--boot-kernel-arg`); the head's log is its serial
//! console, which qemu writes to a file here.
//!
//! Slow: builds the image and the test guest, boots two nodes and a nested
//! guest three times under TCG; runs only with BIGV_SLOW_TESTS=1. Needs
//! root, iproute2, qemu-system-x86, ipxe-qemu, ipxe, the kernel from
//! tools/fetch-kernel.sh, and syslinux/mtools/dosfstools for the guest.

use std::path::Path;
use std::time::Instant;

use bigv_qemu_tests::brain::Admin;
use bigv_qemu_tests::capture::Capture;
use bigv_qemu_tests::cli::Bigv;
use bigv_qemu_tests::cluster::{Cluster, NodeSpec, until};
use bigv_qemu_tests::guest::{self, CustomerScenario, TEMPLATE, wait_boot};
use bigv_qemu_tests::logs::Logs;
use bigv_qemu_tests::netns::BRAIN_ADDRESS;
use bigv_qemu_tests::timings::Timings;
use bigv_test_guest::lines;
use serde_json::Value;

const SERVER: &str = "web1.default.acme";

#[test]
fn customer_flow_through_the_cli() {
    let Some((
        CustomerScenario {
            mut logs,
            guest,
            data_dir,
            mut cluster,
            admin_cli,
            customer,
        },
        rt,
    )) = CustomerScenario::begin("customer_flow_through_the_cli", "customer", "cust", 2)
    else {
        return;
    };
    let ctx = Ctx {
        admin_cli: &admin_cli,
        customer: &customer,
        guest: &guest,
    };
    let vm = rt.block_on(scenario(&ctx, &mut cluster, &mut logs));
    println!(
        "customer flow, image {}:\n{}\n{}",
        cluster.version,
        cluster.timings.render(),
        vm.render()
    );
    // Teardown, in order: VMs, brain, namespace.
    drop(cluster);
    drop(data_dir);
}

struct Ctx<'a> {
    admin_cli: &'a Bigv,
    customer: &'a Bigv,
    guest: &'a Path,
}

async fn scenario(ctx: &Ctx<'_>, cluster: &mut Cluster, logs: &mut Logs) -> Timings {
    let admin = Admin::login(&mut cluster.brain).await;
    // A head with SVM (KVM inside) and 3 GiB; a tail with a blank 4 GiB
    // data disc that init formats and serves as pool `sata1` (grade
    // `sata`: what customers get by default), registered with its machine.
    cluster
        .bring_up(
            &admin,
            &[NodeSpec::head(1), NodeSpec::tail_with_sata_disc(1, 4096)],
            logs,
        )
        .await;
    let brain = &mut cluster.brain;
    let head = &cluster.nodes[0].vm;
    // The head announced its storage address first (discs' ACLs name it):
    // the one init derived from its storage NIC's MAC.
    let head_node = admin
        .node("/admin/heads", &cluster.nodes[0].spec.mac)
        .await
        .expect("the head's entry");
    eprintln!("head: {head_node}");
    let storage_address = storage_address(&cluster.nodes[0].spec.storage_mac());
    assert!(
        head_node.to_string().contains(&storage_address),
        "the head does not announce {storage_address}: {head_node}"
    );
    // The tail's pool on its data disc, as the brain sees it.
    let pool = until("the tail's pool", 60, brain, async || {
        admin
            .get("/admin/storage_pools")
            .await
            .as_array()
            .and_then(|a| a.first().cloned())
    })
    .await;
    eprintln!("pool: {pool}");
    assert_eq!(pool["grade"], "sata", "{pool}");

    // The operator registers the test guest as an OS template and uploads
    // its bytes (`--file`: PUT /admin/images/NAME/content); a customer
    // account and user.
    guest::operator_and_customer_setup(ctx.admin_cli, ctx.customer, ctx.guest);
    // Consoles' addresses: a management range on the boot LAN, above the
    // brain's DHCP pool; heads put a VM's address on their boot NIC.
    guest::management_setup(ctx.admin_cli);

    // What crosses the head's three taps: VM traffic (tagged) belongs on
    // the public LAN only.
    let slot = 0;
    let mut tagged = |lan: &str, tap: &str| {
        Capture::start(
            &cluster.ns,
            tap,
            "vlan",
            &logs.file(&format!("{lan}-{tap}-tagged.txt")),
        )
    };
    let public = tagged("public", &cluster.ns.public_taps[slot]);
    let boot_lan = tagged("boot", &cluster.ns.taps[slot]);
    let storage_lan = tagged("storage", &cluster.ns.storage_taps[slot]);
    let storage_bytes_before = cluster.ns.tap_bytes(&cluster.ns.storage_taps[slot]);

    // 1. The customer adds a server.
    let mut guest = Timings::titled(
        "guest (s after the command)",
        &["running", "guest boot", "disc ok"],
    );
    let c = ctx.customer;
    guest.row("add server", Instant::now());
    guest::add_server(
        c,
        SERVER,
        "1G",
        &[
            "--authorized-keys",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBigVTestKey alice@laptop",
        ],
    );
    let first = wait_boot(brain, &admin, head, 0, "add server", &mut guest).await;
    // The install options reached the guest on its seed drive: the root
    // password `add server` generated (as a hash) and the one key.
    let seed = until("the guest's cidata line", 60, brain, async || {
        guest::guest_lines(head)
            .into_iter()
            .find(|l| l.contains(lines::CIDATA))
    })
    .await;
    assert!(
        seed.contains("password=set") && seed.contains("keys=1"),
        "{seed}"
    );
    let id1 = lines::boot_id(&first.0).unwrap().to_owned();
    let disc1 = first.1.clone();
    assert!(disc1.contains(lines::DISC_OK), "{disc1}");
    assert_eq!(
        lines::field(&disc1, lines::DISC_OK, "disc_bytes"),
        Some("1073741824"),
        "{disc1}"
    );
    let mem1: u64 = lines::field(&first.0, lines::BOOT, "mem_mib")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no mem_mib in {:?}", first.0));
    // Where it runs: the head; its disc on the tail, served on its own
    // address.
    let shown: Value = serde_json::from_str(&c.run(&["--json", "show", "server", SERVER]))
        .expect("show server --json");
    eprintln!("server: {shown}");
    // Its NIC: a tap on the head's bridge for VLAN 5 (tagged on the
    // head's public NIC, eth2), where the head's DHCP responder gave the
    // guest's DHCP client exactly the address the brain allocated from the
    // operator's range, its router and its name.
    let ip = shown["network_interfaces"][0]["ips"][0]
        .as_str()
        .unwrap_or_else(|| panic!("an address for the server: {shown}"))
        .to_owned();
    assert!(ip.starts_with(guest::PUBLIC_PREFIX), "{ip}");
    let lease = until("the guest's DHCP lease", 60, brain, async || {
        guest::guest_lines(head)
            .iter()
            .find_map(|l| lines::net_lease(l).map(str::to_owned))
    })
    .await;
    assert!(
        lease.starts_with(&format!(
            "ip={ip} mask=24 router={} hostname=web1 ",
            guest::PUBLIC_ROUTER
        )),
        "{lease}"
    );
    let heads = admin.get("/admin/heads").await;
    assert_eq!(heads[0]["running_virtual_machines_count"], 1, "{heads}");
    // On the wire: the guest's DHCP broadcast left the head tagged with
    // VLAN 5 on the public LAN; nothing tagged crossed the other two.
    let mac = shown["network_interfaces"][0]["mac"]
        .as_str()
        .unwrap_or_else(|| panic!("the NIC's MAC: {shown}"))
        .to_ascii_lowercase();
    let from_guest: Vec<String> = public
        .lines()
        .into_iter()
        .filter(|l| l.contains(&mac))
        .collect();
    assert!(
        from_guest
            .iter()
            .any(|l| l.contains(&format!("vlan {}", guest::PUBLIC_VLAN)) && l.contains("DHCP")),
        "no DHCP from the guest ({mac}) tagged VLAN {} on the public LAN ({}): {:#?}",
        guest::PUBLIC_VLAN,
        public.iface,
        public.lines()
    );
    for lan in [&boot_lan, &storage_lan] {
        assert!(
            lan.lines().is_empty(),
            "tagged frames on {}: {:#?}",
            lan.iface,
            lan.lines()
        );
    }
    // The disc's traffic took the storage LAN: the guest's boot read its
    // kernel and initrd from the disc and wrote its 1 MiB pattern.
    let storage_bytes = cluster.ns.tap_bytes(&cluster.ns.storage_taps[slot]) - storage_bytes_before;
    eprintln!("the head's storage tap carried {storage_bytes} bytes for the guest's boot");
    assert!(
        storage_bytes > 4 << 20,
        "the head's storage tap carried only {storage_bytes} bytes while its guest booted from its disc"
    );

    // Its SSH console on its management address: the customer logs in with
    // their BigV password (the brain sends its hash to the head), sees the
    // guest's boot in the scroll-back and gets its answer to `status`.
    let mgmt = shown["management_address"]
        .as_str()
        .unwrap_or_else(|| panic!("a management address: {shown}"))
        .to_owned();
    let seen = bigv_qemu_tests::console::login_and_type(
        &mgmt,
        guest::CUSTOMER,
        guest::CUSTOMER_PASSWORD,
        &id1,
        "status",
        lines::STATUS,
        std::time::Duration::from_secs(60),
    );
    assert!(seen.contains(lines::BOOT), "{seen}");

    // 2. Stop and start: the pattern written by boot 1 is found by boot 2.
    c.run(&["stop", "server", SERVER]);
    until("the head to report the VM gone", 120, brain, async || {
        (admin.get("/admin/heads").await[0]["running_virtual_machines_count"] == 0).then_some(())
    })
    .await;
    guest.row("stop, start", Instant::now());
    c.run(&["start", "server", SERVER]);
    let second = wait_boot(brain, &admin, head, 1, "stop, start", &mut guest).await;
    let id2 = lines::boot_id(&second.0).unwrap().to_owned();
    assert_ne!(id1, id2, "a new boot");
    assert_eq!(
        lines::field(&second.1, lines::DISC_OK, "previous"),
        Some(id1.as_str()),
        "boot 2 must find boot 1's pattern: {}",
        second.1
    );

    // 3. Resize memory and disc while off; the next boot sees both.
    c.run(&["stop", "server", SERVER]);
    until("the head to report the VM gone", 120, brain, async || {
        (admin.get("/admin/heads").await[0]["running_virtual_machines_count"] == 0).then_some(())
    })
    .await;
    c.run(&["update", "server", SERVER, "--memory", "384M"]);
    c.run(&["update", "disc", SERVER, "disc-1", "2G"]);
    guest.row("resize, start", Instant::now());
    c.run(&["start", "server", SERVER]);
    let third = wait_boot(brain, &admin, head, 2, "resize, start", &mut guest).await;
    let mem3: u64 = lines::field(&third.0, lines::BOOT, "mem_mib")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no mem_mib in {:?}", third.0));
    assert!(
        mem3 >= mem1 + 100,
        "the guest sees {mem3} MiB after the resize (before: {mem1} MiB)"
    );
    assert_eq!(
        lines::field(&third.1, lines::DISC_OK, "disc_bytes"),
        Some("2147483648"),
        "the guest sees the grown disc: {}",
        third.1
    );
    assert_eq!(
        lines::field(&third.1, lines::DISC_OK, "previous"),
        Some(id2.as_str()),
        "{}",
        third.1
    );

    // 4. A CD-ROM inserted into the running VM and ejected: the head's
    // qemu opens the http URL (its curl block driver, shipped in the
    // image) and reports the change. The medium is the template file the
    // brain's boot HTTP server already serves; the test guest has no CD
    // driver, so qemu, not the guest, is what sees it.
    let cd = format!("http://{BRAIN_ADDRESS}:80/templates/{TEMPLATE}.raw");
    c.run(&["update", "server", SERVER, "--cd-url", &cd]);
    let inserted = format!("cdrom=Some({cd:?})");
    until("the head to insert the CD", 120, brain, async || {
        let console = head.console();
        assert!(
            !console.contains("changing the CD"),
            "the head failed to change the CD:\n{}",
            console
                .lines()
                .filter(|l| l.contains("changing the CD"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        console
            .lines()
            .find(|l| l.contains("CD changed") && l.contains(&inserted))
            .map(str::to_owned)
    })
    .await;
    c.run(&["update", "server", SERVER, "--remove-cd"]);
    until("the head to eject the CD", 120, brain, async || {
        head.console()
            .lines()
            .find(|l| l.contains("CD changed") && l.contains("cdrom=None"))
            .map(str::to_owned)
    })
    .await;
    guest
}

/// The storage address init gives a node: the storage prefix,
/// `fffe`, then its storage NIC's MAC (`nodeos/init/src/cmdline.rs`).
fn storage_address(mac: &str) -> String {
    let b: Vec<u16> = mac
        .split(':')
        .map(|x| u16::from_str_radix(x, 16).expect("a MAC byte"))
        .collect();
    std::net::Ipv6Addr::new(
        0xfd00,
        5,
        0,
        0,
        0xfffe,
        b[0] << 8 | b[1],
        b[2] << 8 | b[3],
        b[4] << 8 | b[5],
    )
    .to_string()
}
