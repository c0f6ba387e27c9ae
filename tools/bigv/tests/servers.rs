//! Servers, discs, groups, IPs, power, console and object privileges:
//! the customer commands against a real brain with simulated nodes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use bigv_brain::model::VmId;
use common::{Harness, golden, mask_json, normalise};
use reqwest::Method;
use serde_json::Value;

const VM: &str = "/accounts/alice/groups/default/virtual_machines";

fn vm(h: &Harness, name: &str) -> Value {
    h.get(&h.su(), &format!("{VM}/{name}?include_deleted=true"))
}

/// The simulated node running alice's `name`, once it runs.
fn running_on(h: &Harness, name: &str) -> std::sync::Arc<bigv_spine::sim::SimNode> {
    let id = VmId(vm(h, name)["id"].as_u64().unwrap());
    h.running_on(id)
}

fn create_web1(h: &Harness) {
    h.bigv(&[
        "add",
        "server",
        "web1",
        "--image",
        "bookworm",
        "--memory",
        "2G",
        "--disc",
        "ssd:30G",
        "--root-password",
        "hunter2hunter2",
    ])
    .ok();
    // Imaging done and running: the reconciler powers a server on when
    // its image is in place, which would undo a `stop` sent before then.
    running_on(h, "web1");
}

#[test]
fn a_server_is_created_with_power_on_and_shown() {
    let h = Harness::customer();
    let run = h
        .bigv(&[
            "--show-requests",
            "add",
            "server",
            "web1",
            "--image",
            "bookworm",
            "--memory",
            "2G",
            "--disc",
            "ssd:30G",
            "--root-password",
            "hunter2hunter2",
        ])
        .ok();
    assert!(
        run.stdout.ends_with("Root password: hunter2hunter2\n"),
        "{run:?}"
    );
    // The account was resolved before any URL was built.
    assert!(!run.stderr.contains("/accounts//"), "{run:?}");
    assert!(!run.stderr.contains("//groups"), "{run:?}");
    assert!(
        run.stderr.contains("POST http://")
            && run
                .stderr
                .contains("/accounts/alice/groups/default/vm_create"),
        "{run:?}"
    );
    let v = vm(&h, "web1");
    assert_eq!(v["memory"], 2048);
    assert_eq!(v["cores"], 1);
    assert_eq!(v["power_on"], true);
    assert_eq!(v["autoreboot_on"], true);
    assert_eq!(v["discs"][0]["label"], "disc-1");
    assert_eq!(v["discs"][0]["storage_grade"], "ssd");
    assert_eq!(v["discs"][0]["size"], 30720);
    assert_eq!(v["last_imaged_with"], "bookworm");
    // Once the reconciler has placed it, the output stays put.
    running_on(&h, "web1");

    let run = h.bigv(&["show", "server", "web1"]).ok();
    golden("server.txt", &normalise(&run.stdout, &h.endpoint));
    let run = h.bigv(&["show", "server", "web1", "--json"]).ok();
    assert_eq!(run.json(), vm(&h, "web1"));
    golden(
        "server.json",
        &serde_json::to_string_pretty(&mask_json(
            run.json(),
            &[
                "id",
                "group_id",
                "virtual_machine_id",
                "mac",
                "head",
                "management_address",
                // The backup schedule `add server` sends starts tomorrow.
                "start_at",
                "next_at",
            ],
        ))
        .unwrap(),
    );
    // By id, and by full name, and in the 2011 grammar.
    let id = v["id"].to_string();
    assert_eq!(h.bigv(&["show", "server", &id]).ok().stdout, run_human(&h));
    assert_eq!(
        h.bigv(&["vm", "show", "web1.default.alice.bigv.test"])
            .ok()
            .stdout,
        run_human(&h)
    );

    // A server with no image and --stopped is created off, explicitly.
    h.bigv(&["add", "server", "web2", "--no-image", "--stopped"])
        .ok();
    let v2 = vm(&h, "web2");
    assert_eq!(v2["power_on"], false);
    assert_eq!(v2["discs"][0]["size"], 25600);
    let run = h.bigv(&["show", "servers"]).ok();
    assert_eq!(
        run.stdout,
        " ▸ web1.default (powered on)\n ▸ web2.default (powered off)\n"
    );
    assert_eq!(h.bigv(&["vm", "list"]).ok().stdout, run.stdout);
    let run = h.bigv(&["show", "servers", "--table"]).ok();
    golden("servers.table", &normalise(&run.stdout, &h.endpoint));
    let run = h.bigv(&["show", "account"]).ok();
    golden("account.txt", &run.stdout);
}

fn run_human(h: &Harness) -> String {
    h.bigv(&["show", "server", "web1"]).ok().stdout
}

#[test]
fn bad_input_gets_one_line_naming_what_was_wrong() {
    let h = Harness::customer();
    let run = h
        .bigv(&["add", "server", "web3", "--image", "nosuch"])
        .fails(7);
    assert!(run.stderr.contains("\"nosuch\" is not an image"), "{run:?}");
    let run = h
        .bigv(&[
            "add", "server", "web3", "--image", "bookworm", "--disc", "gold:10G",
        ])
        .fails(7);
    assert!(
        run.stderr.contains("\"gold\" is not a storage grade"),
        "{run:?}"
    );
    let run = h
        .bigv(&[
            "add", "server", "web3", "--image", "bookworm", "--memory", "lots",
        ])
        .fails(7);
    assert!(run.stderr.contains("\"lots\" is not a size"), "{run:?}");
    let run = h.bigv(&["add", "server", "web3"]).fails(7);
    assert!(run.stderr.contains("--image"), "{run:?}");
    // The brain's own field message, with its exit code.
    let run = h
        .bigv(&[
            "add", "server", "web3", "--image", "bookworm", "--memory", "100M",
        ])
        .fails(157);
    assert!(
        run.stderr
            .contains("memory: must be greater than or equal to"),
        "{run:?}"
    );
    let run = h.bigv(&["show", "server", "nosuch"]).fails(156);
    assert_eq!(
        run.stderr.trim(),
        "bigv: server nosuch.default.alice was not found"
    );
    h.bigv(&["show", "server", "web1.nogroup"]).fails(156);
}

#[test]
fn servers_are_updated_and_the_cd_is_really_ejected() {
    let h = Harness::customer();
    create_web1(&h);
    h.bigv(&[
        "update", "server", "web1", "--memory", "+1G", "--cores", "2",
    ])
    .ok();
    let v = vm(&h, "web1");
    assert_eq!(
        (v["memory"].as_u64(), v["cores"].as_u64()),
        (Some(3072), Some(2))
    );
    h.bigv(&[
        "update",
        "server",
        "web1",
        "--cd-url",
        "http://example.invalid/x.iso",
    ])
    .ok();
    assert_eq!(vm(&h, "web1")["cdrom_url"], "http://example.invalid/x.iso");
    h.bigv(&["update", "server", "web1", "--remove-cd"]).ok();
    assert_eq!(vm(&h, "web1")["cdrom_url"], Value::Null);
    h.bigv(&["update", "server", "web1", "--lock-hwprofile"])
        .ok();
    assert_eq!(vm(&h, "web1")["hardware_profile_locked"], true);
    h.bigv(&["update", "server", "web1", "--new-name", "web9"])
        .ok();
    vm(&h, "web9");
    h.bigv(&["update", "server", "web9"]).fails(7);
}

#[test]
fn discs_are_added_grown_moved_and_deleted() {
    let h = Harness::customer();
    create_web1(&h);
    h.bigv(&["add", "discs", "web1", "sata:10G"]).ok();
    let v = vm(&h, "web1");
    assert_eq!(v["discs"][1]["label"], "disc-2");
    assert_eq!(v["discs"][1]["size"], 10240);
    h.bigv(&["update", "disc", "web1", "disc-2", "+5G"]).ok();
    assert_eq!(vm(&h, "web1")["discs"][1]["size"], 15360);
    h.bigv(&["disc", "resize", "web1", "disc-2", "20G"]).ok();
    assert_eq!(vm(&h, "web1")["discs"][1]["size"], 20480);
    let run = h
        .bigv(&["update", "disc", "web1", "disc-2", "10G"])
        .fails(7);
    assert!(run.stderr.contains("only grow"), "{run:?}");
    let run = h.bigv(&["show", "discs", "web1"]).ok();
    assert_eq!(
        run.stdout,
        "• disc-1 - 30GiB, ssd grade\n• disc-2 - 20GiB, sata grade\n"
    );
    h.bigv(&["show", "disc", "web1", "disc-9"]).fails(156);
    h.bigv(&["delete", "disc", "web1", "disc-2"]).fails(5);
    // The brain keeps the discs of a running server.
    let run = h
        .bigv(&["delete", "disc", "web1", "disc-2", "--force"])
        .fails(157);
    assert!(run.stderr.contains("stop it"), "{run:?}");
    h.bigv(&["stop", "server", "web1"]).ok();
    // Move it to another server (both off), then delete it there.
    h.bigv(&["add", "server", "web2", "--no-image", "--stopped"])
        .ok();
    h.bigv(&["update", "disc", "web1", "disc-2", "--new-server", "web2"])
        .ok();
    assert_eq!(vm(&h, "web1")["discs"].as_array().unwrap().len(), 1);
    let moved = vm(&h, "web2")["discs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["label"] == "disc-2" && d["size"] == 20480);
    assert!(moved, "{}", vm(&h, "web2"));
    h.bigv(&["delete", "disc", "web2", "disc-2", "--force"])
        .ok();
    assert_eq!(vm(&h, "web2")["discs"].as_array().unwrap().len(), 1);
}

#[test]
fn servers_are_deleted_restored_and_purged() {
    let h = Harness::customer();
    create_web1(&h);
    h.bigv_stdin(&["delete", "server", "web1"], "no\n").fails(5);
    assert_eq!(vm(&h, "web1")["deleted"], false);
    h.bigv_stdin(&["delete", "server", "web1"], "y\n").ok();
    assert_eq!(vm(&h, "web1")["deleted"], true);
    let run = h.bigv(&["delete", "server", "web1", "--force"]).fails(7);
    assert!(run.stderr.contains("--purge"), "{run:?}");
    h.bigv(&["vm", "undelete", "web1"]).ok();
    assert_eq!(vm(&h, "web1")["deleted"], false);
    h.bigv(&["restore", "server", "web1"]).fails(7);
    h.bigv(&["vm", "purge", "web1", "--force"]).ok();
    let (status, _) = h.api(
        Method::GET,
        &h.su(),
        &format!("{VM}/web1?include_deleted=true"),
        None,
    );
    assert_eq!(status, 404);
}

#[test]
fn power_commands_set_what_the_brain_should_do() {
    let h = Harness::customer();
    create_web1(&h);
    h.bigv(&["stop", "server", "web1"]).ok();
    let v = vm(&h, "web1");
    assert_eq!(
        (v["power_on"].as_bool(), v["autoreboot_on"].as_bool()),
        (Some(false), Some(false))
    );
    h.bigv(&["vm", "start", "web1"]).ok();
    let v = vm(&h, "web1");
    assert_eq!(
        (v["power_on"].as_bool(), v["autoreboot_on"].as_bool()),
        (Some(true), Some(true))
    );
    // Once it runs again, a reset reaches its head.
    let head = running_on(&h, "web1");
    h.bigv(&["reset", "server", "web1"]).ok();
    let id = v["id"].as_u64().unwrap().to_string();
    h.eventually("the head to get the reset", 20, || {
        let vms = head.vms();
        let spec = vms.get(&id).or_else(|| vms.get(&format!("vm.{id}")))?;
        let kind = spec.signal.as_ref()?.kind;
        (format!("{kind:?}") == "Reset").then_some(())
    });
}

#[test]
fn shutdown_waits_until_the_simulated_server_stops() {
    let h = Harness::customer();
    create_web1(&h);
    let head = running_on(&h, "web1");
    let run = h.bigv(&["shutdown", "server", "web1"]).ok();
    assert!(
        run.stderr
            .contains("Server web1.default.alice has shut down."),
        "{run:?}"
    );
    // The brain says it is off because the head stopped it.
    let v = vm(&h, "web1");
    assert_eq!(
        (v["power_on"].as_bool(), v["autoreboot_on"].as_bool()),
        (Some(false), Some(false))
    );
    assert!(head.vms().is_empty(), "still running: {:?}", head.vms());
    let run = h.bigv(&["shutdown", "server", "web1"]).ok();
    assert!(run.stderr.contains("already powered off"), "{run:?}");

    // restart = shutdown (already off) + start: it runs again.
    h.bigv(&["restart", "server", "web1"]).ok();
    running_on(&h, "web1");
}

#[test]
fn shutdown_gives_up_on_a_server_that_does_not_stop() {
    let h = Harness::customer();
    create_web1(&h);
    let head = running_on(&h, "web1");
    // Its head is out of reach, so the powerdown cannot arrive.
    head.stay_away(Duration::from_secs(30));
    let run = h
        .bigv_env(&["shutdown", "server", "web1"], &[("BIGV_WAIT_SECS", "2")])
        .fails(49);
    assert!(
        run.stderr.contains("did not shut down within 2 s")
            && run.stderr.contains("bigv stop server"),
        "{run:?}"
    );
    // --no-wait returns at once either way.
    let run = h.bigv(&["--no-wait", "shutdown", "server", "web1"]).ok();
    assert!(run.stderr.contains("was asked to shut down"), "{run:?}");
}

#[test]
fn the_console_execs_ssh_to_the_management_address() {
    let h = Harness::customer();
    create_web1(&h);
    let address = vm(&h, "web1")["management_address"]
        .as_str()
        .expect("a console address from the management VLAN")
        .to_owned();
    assert!(address.starts_with("198.51.100."), "{address}");
    // A fake ssh that records its arguments.
    let bin = tempfile::tempdir().unwrap();
    let record = bin.path().join("args");
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\nexit 3\n",
        record.display()
    );
    let ssh = bin.path().join("ssh");
    std::fs::write(&ssh, script).unwrap();
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    let run = h.bigv_env(
        &["console", "web1", "--ssh-args", "-i /tmp/key"],
        &[("PATH", &path)],
    );
    // bigv became ssh: its exit code is ssh's.
    assert_eq!(run.code, 3, "{run:?}");
    let args = std::fs::read_to_string(&record).unwrap();
    assert_eq!(args, format!("-i\n/tmp/key\nalice@{address}\n"));

    let run = h.bigv(&["console", "web1", "--vnc"]).ok();
    assert!(
        run.stdout
            .contains(&format!("ssh -N -L 9999:{address}:5900 alice@{address}")),
        "{run:?}"
    );
    let run = h.bigv(&["console", "web1", "--no-connect"]).ok();
    assert_eq!(run.stdout, format!("ssh alice@{address}\n"));
    // No ssh at all: exit 8.
    let empty = tempfile::tempdir().unwrap();
    h.bigv_env(
        &["console", "web1"],
        &[("PATH", empty.path().to_str().unwrap())],
    )
    .fails(8);
}

#[test]
fn groups_are_added_and_deleted_only_when_empty() {
    let h = Harness::customer();
    h.bigv(&["add", "group", "prod"]).ok();
    h.get(&h.su(), "/accounts/alice/groups/prod");
    h.bigv(&["add", "server", "db1.prod", "--no-image", "--stopped"])
        .ok();
    let run = h.bigv(&["delete", "group", "prod", "--force"]).fails(6);
    assert!(run.stderr.contains("db1"), "{run:?}");
    h.bigv(&["delete", "group", "prod", "--recursive", "--force"])
        .ok();
    let (status, _) = h.api(Method::GET, &h.su(), "/accounts/alice/groups/prod", None);
    assert_eq!(status, 404);
    h.bigv(&["group", "new", "staging"]).ok();
    h.bigv(&["group", "delete", "staging", "--force"]).ok();
}

#[test]
fn object_privileges_and_403() {
    let h = Harness::customer();
    create_web1(&h);
    h.plain_user("bob", "bobs-password");
    h.bigv(&[
        "grant",
        "privilege",
        "vm_console",
        "on",
        "web1",
        "to",
        "bob",
    ])
    .ok();
    let privs = h.get(&h.su(), "/users/bob/privileges");
    let on_web1 = privs
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["virtual_machine_name"] == "web1")
        .cloned()
        .expect("granted on web1");
    assert_eq!(on_web1["level"], "vm_console");
    // bob sees web1 but may not stop it: 403.
    let bob = h.token_for("bob");
    let run = h
        .bigv_env(
            &["stop", "server", "web1.default.alice"],
            &[("BIGV_TOKEN", &bob)],
        )
        .fails(155);
    assert!(run.stderr.contains("permission denied"), "{run:?}");
    h.bigv(&[
        "revoke",
        "privilege",
        "vm_console",
        "on",
        "web1",
        "from",
        "bob",
    ])
    .ok();
    let privs = h.get(&h.su(), "/users/bob/privileges");
    assert!(
        !privs
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["virtual_machine_name"] == "web1"),
        "{privs}"
    );
}

#[test]
fn extra_ips_are_added() {
    let h = Harness::customer();
    create_web1(&h);
    let run = h
        .bigv(&["add", "ips", "web1", "--ips", "2", "--reason", "tls sites"])
        .ok();
    let ips: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(ips.len(), 2, "{run:?}");
    let v = vm(&h, "web1");
    let extra = v["network_interfaces"][0]["extra_ips"].as_object().unwrap();
    for ip in ips {
        assert!(extra.contains_key(ip), "{ip} not in {extra:?}");
    }
    h.bigv(&["add", "ips", "web1", "--ips", "9"]).fails(7);
}

/// The brain records migrations; no engine carries them out yet, so this
/// starts one without waiting, sees it listed, and cancels it.
#[test]
fn operators_start_list_and_cancel_a_migration() {
    let h = Harness::customer();
    create_web1(&h);
    let from = running_on(&h, "web1");
    let target = if from.node_id() == "sim-head-0000" {
        "head2"
    } else {
        "head1"
    };
    let ops = ["--profile", "ops", "--no-wait", "admin"];
    let with = |more: &[&str]| -> Vec<String> {
        ops.iter().chain(more).map(|s| (*s).to_owned()).collect()
    };
    let args = with(&["migrate", "server", "web1.default.alice", target]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = h.bigv(&args).ok();
    assert!(run.stderr.contains("Started operation"), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("migrate web1.default.alice to {target}")),
        "{run:?}"
    );
    let args = with(&["show", "migrations"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = h.bigv(&args).ok();
    assert!(run.stdout.contains("running"), "{run:?}");
    // A second one is refused while the first runs.
    let args = with(&["migrate", "server", "web1.default.alice"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = h.bigv(&args).fails(157);
    assert!(run.stderr.contains("already has operation"), "{run:?}");
    let args = with(&["cancel", "migration", "server", "web1.default.alice"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = h.bigv(&args).ok();
    assert!(run.stderr.contains("Cancelled operation"), "{run:?}");
    let jobs = h.get(&h.su(), "/admin/migration_jobs");
    let migration = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == "migrate_vm")
        .cloned()
        .expect("the migration is listed");
    assert_eq!(migration["state"], "cancelled");
    // Nothing left to cancel; and customers cannot migrate at all.
    h.bigv(&args).fails(157);
    h.bigv(&["admin", "migrate", "server", "web1", "head1"])
        .fails(156);
}

#[test]
fn reimaging_asks_first_and_operators_follow_it() {
    let h = Harness::customer();
    create_web1(&h);
    running_on(&h, "web1");
    // It must be off first: the brain says so.
    let run = h
        .bigv(&[
            "reimage", "server", "web1", "--image", "bookworm", "--force",
        ])
        .fails(157);
    assert!(run.stderr.contains("powered off"), "{run:?}");
    h.bigv(&["stop", "server", "web1"]).ok();
    h.bigv(&["reimage", "server", "web1", "--image", "bookworm"])
        .fails(5);
    h.bigv(&["reimage", "server", "web1"]).fails(7);
    let run = h
        .bigv(&[
            "--profile",
            "ops",
            "reimage",
            "server",
            "web1.default.alice",
            "--image",
            "bookworm",
            "--root-password",
            "another-password",
            "--force",
        ])
        .ok();
    assert!(
        run.stderr
            .contains("Done: reimage web1.default.alice with bookworm"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("Root password: another-password"),
        "{run:?}"
    );
    assert_eq!(vm(&h, "web1")["power_on"], true);
}

#[test]
fn servers_move_between_groups_and_swap_addresses() {
    let h = Harness::customer();
    create_web1(&h);
    h.bigv(&[
        "add",
        "server",
        "db1",
        "--no-image",
        "--stopped",
        "--zone",
        "york",
    ])
    .ok();
    // The zone shows in the human layout, capitalised.
    let run = h.bigv(&["show", "server", "db1"]).ok();
    assert!(
        run.stdout
            .starts_with(" ▸ db1.default (powered off) in York\n"),
        "{run:?}"
    );
    let ip1 = vm(&h, "web1")["network_interfaces"][0]["ips"][0].clone();
    let ip2 = vm(&h, "db1")["network_interfaces"][0]["ips"][0].clone();
    h.bigv(&["update", "server", "web1", "--swap-ips-with", "db1"])
        .ok();
    assert_eq!(vm(&h, "web1")["network_interfaces"][0]["ips"][0], ip2);
    assert_eq!(vm(&h, "db1")["network_interfaces"][0]["ips"][0], ip1);

    h.bigv(&["add", "group", "prod"]).ok();
    h.bigv(&["update", "server", "db1", "--new-name", "db2.prod"])
        .ok();
    h.get(&h.su(), "/accounts/alice/groups/prod/virtual_machines/db2");
    let run = h.bigv(&["show", "group", "prod"]).ok();
    assert_eq!(
        run.stdout,
        "Group prod.alice - 1 server\n  ▸ db2.prod (powered off) in York\n"
    );
    let run = h.bigv(&["show", "groups", "--table"]).ok();
    assert!(run.stdout.contains("prod"), "{run:?}");
    let run = h.bigv(&["show", "overview"]).ok();
    assert!(run.stdout.contains("You can see 1 account."), "{run:?}");
    assert!(
        run.stdout.contains("▸ db2.prod (powered off) in York"),
        "{run:?}"
    );
    let run = h
        .bigv(&["show", "privileges", "--on-account", "alice"])
        .ok();
    assert_eq!(run.stdout, "• alice: account_admin on alice\n");
}

#[test]
fn debug_sends_raw_requests() {
    let h = Harness::customer();
    let run = h.bigv(&["debug", "GET", "/definitions", "--no-auth"]).ok();
    assert!(run.json().is_array(), "{run:?}");
    let run = h.bigv(&["debug", "GET", "/accounts/alice"]).ok();
    assert_eq!(run.json()["name"], "alice");
    h.bigv(&["debug", "GET", "/accounts/nobody"]).fails(156);
    h.bigv(&["debug", "PUT", "/accounts/alice", "{not json"])
        .fails(7);
    h.bigv(&["debug", "FETCH", "/"]).fails(7);
}

#[test]
fn operators_move_discs_and_empty_heads_without_waiting() {
    let h = Harness::customer();
    create_web1(&h);
    running_on(&h, "web1");
    let ops = |args: &[&str]| {
        let mut all = vec!["--profile", "ops", "--no-wait"];
        all.extend_from_slice(args);
        h.bigv(&all)
    };
    // Only one ssd pool: there is nowhere to move disc-1 to.
    let run = ops(&["admin", "migrate", "disc", "web1.default.alice", "disc-1"]).fails(157);
    assert!(
        run.stderr.contains("new_pool_spec: no other pool"),
        "{run:?}"
    );
    h.bigv(&["add", "discs", "web1", "data:sata:10G"]).ok();
    let disc = h.eventually("the new disc to be placed", 20, || {
        let v = vm(&h, "web1");
        let d = v["discs"]
            .as_array()?
            .iter()
            .find(|d| d["label"] == "data")?
            .clone();
        (!d["storage_pool"].is_null()).then_some(d)
    });
    assert_eq!(disc["storage_pool"], "tail1-sata1");
    let run = ops(&[
        "admin",
        "migrate",
        "disc",
        "web1.default.alice",
        "data",
        "tail1-ssd1",
    ])
    .fails(157);
    assert!(
        run.stderr.contains("a migration keeps the grade"),
        "{run:?}"
    );
    let run = ops(&["admin", "empty", "head", "head1"]).ok();
    assert!(run.stderr.contains("empty head1"), "{run:?}");
    assert_eq!(
        h.get(&h.su(), "/admin/heads/head1")["usage_strategy"],
        "empty"
    );
    // Back to normal use cancels the evacuation.
    ops(&[
        "admin",
        "update",
        "head",
        "head1",
        "--usage-strategy",
        "default",
    ])
    .ok();
    let jobs = h.get(&h.su(), "/admin/migration_jobs");
    let empty = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == "empty_head")
        .cloned()
        .unwrap();
    assert_eq!(empty["state"], "cancelled");
}

#[test]
fn a_finished_vm_migration_shows_its_downtime() {
    let h = Harness::customer();
    create_web1(&h);
    let from = running_on(&h, "web1");
    let target = if from.node_id() == "sim-head-0000" {
        "head2"
    } else {
        "head1"
    };
    // A quick copy this time: the CLI waits for the end.
    for node in &h.fleet.as_ref().expect("the simulated nodes").nodes {
        node.mirror_time(std::time::Duration::from_millis(500));
    }
    let downtime = format!("downtime {} ms", bigv_spine::sim::SIM_DOWNTIME_MS);
    let run = h
        .bigv(&[
            "--profile",
            "ops",
            "admin",
            "migrate",
            "server",
            "web1.default.alice",
            target,
        ])
        .ok();
    assert!(
        run.stderr.contains(&format!(
            "Done: migrate web1.default.alice to {target}, {downtime}."
        )),
        "{run:?}"
    );
    let run = h
        .bigv(&["--profile", "ops", "admin", "show", "migrations", "--all"])
        .ok();
    assert!(run.stdout.contains(&downtime), "{run:?}");
}
