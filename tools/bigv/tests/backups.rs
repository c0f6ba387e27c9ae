//! Backups and backup schedules from the command line, against a real
//! brain with simulated nodes: `add server --backup`, `backup disc`,
//! `show backups`, `restore backup`, `delete backup`, `schedule backups`,
//! `unschedule backups`.

mod common;

use common::{Harness, golden, mask_json, normalise};
use serde_json::Value;

const VM: &str = "/accounts/alice/groups/default/virtual_machines";

fn disc(h: &Harness, vm: &str) -> Value {
    h.get(&h.su(), &format!("{VM}/{vm}/discs/disc-1"))
}

#[test]
fn add_server_sends_the_backup_schedule() {
    let h = Harness::customer();
    h.bigv(&[
        "add",
        "server",
        "web1",
        "--image",
        "bookworm",
        "--backup",
        "daily",
        "--root-password",
        "hunter2hunter2",
    ])
    .ok();
    let d = disc(&h, "web1");
    assert_eq!(d["backups_enabled"], true, "{d}");
    let s = &d["backup_schedules"][0];
    assert_eq!(s["interval_seconds"], 86400);
    assert_eq!(s["capacity"], 1);
    let start = s["start_at"].as_str().unwrap();
    assert!(start.ends_with(" 00:00:00 UTC"), "{start}");

    // The default is weekly; never sends none; monthly is refused.
    h.bigv(&["add", "server", "web2", "--no-image", "--stopped"])
        .ok();
    assert_eq!(
        disc(&h, "web2")["backup_schedules"][0]["interval_seconds"],
        604800
    );
    h.bigv(&[
        "add",
        "server",
        "web3",
        "--no-image",
        "--stopped",
        "--backup",
        "never",
    ])
    .ok();
    assert_eq!(disc(&h, "web3")["backups_enabled"], false);
    let run = h
        .bigv(&[
            "add",
            "server",
            "web4",
            "--no-image",
            "--stopped",
            "--backup",
            "monthly",
        ])
        .fails(7);
    assert!(run.stderr.contains("daily, weekly or never"), "{run:?}");
}

#[test]
fn backups_are_taken_shown_restored_and_deleted() {
    let h = Harness::customer();
    h.bigv(&[
        "add",
        "server",
        "web1",
        "--no-image",
        "--stopped",
        "--backup",
        "never",
    ])
    .ok();
    let run = h.bigv(&["show", "backups", "web1", "disc-1"]).ok();
    assert!(run.stdout.contains("has no backups"), "{run:?}");

    // Taken, waiting until the tail has it.
    let run = h.bigv(&["backup", "disc", "web1", "disc-1"]).ok();
    assert!(run.stderr.contains("taken"), "{run:?}");
    let run = h.bigv(&["--json", "backup", "disc", "web1", "disc-1"]).ok();
    let second = run.json();
    assert_eq!(second["state"], "taken");
    assert_eq!(second["manual"], true);

    h.bigv(&["schedule", "backups", "--capacity", "7", "web1", "disc-1"])
        .ok();
    let run = h.bigv(&["show", "backups", "web1", "disc-1"]).ok();
    golden("backups.txt", &normalise(&run.stdout, &h.endpoint));
    let run = h
        .bigv(&["show", "backups", "web1", "disc-1", "--table"])
        .ok();
    golden("backups.table", &normalise(&run.stdout, &h.endpoint));
    let run = h
        .bigv(&["show", "backups", "web1", "disc-1", "--json"])
        .ok();
    golden(
        "backups.json",
        &serde_json::to_string_pretty(&mask_json(
            run.json(),
            &["parent_disc_id", "virtual_machine_id", "created_at"],
        ))
        .unwrap(),
    );

    let run = h.bigv(&["show", "discs", "web1", "--table"]).ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].ends_with("BackupCount"), "{run:?}");
    assert!(lines[1].ends_with(" 2"), "{run:?}");

    // Restore asks first; the brain refuses it while the server runs.
    h.bigv(&["restore", "backup", "web1", "disc-1", "backup-1"])
        .fails(5);
    h.bigv(&["start", "server", "web1"]).ok();
    let run = h
        .bigv(&["restore", "backup", "web1", "disc-1", "backup-1", "--force"])
        .fails(157);
    assert!(run.stderr.contains("powered on"), "{run:?}");
    h.bigv(&["stop", "server", "web1"]).ok();
    let run = h
        .bigv(&["restore", "backup", "web1", "disc-1", "backup-1", "--force"])
        .ok();
    assert!(run.stderr.contains("Restored disc-1"), "{run:?}");
    let list = h.get(&h.su(), &format!("{VM}/web1/discs/disc-1/backups"));
    assert_eq!(list[0]["restore"]["state"], "done");

    // Delete asks first, then goes.
    h.bigv(&["delete", "backup", "web1", "disc-1", "backup-1"])
        .fails(5);
    h.bigv(&["delete", "backup", "web1", "disc-1", "backup-1", "--force"])
        .ok();
    h.bigv(&["delete", "backup", "web1", "disc-1", "backup-1", "--force"])
        .fails(156);
    let list = h.get(&h.su(), &format!("{VM}/web1/discs/disc-1/backups"));
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[test]
fn backups_are_scheduled_and_unscheduled() {
    let h = Harness::customer();
    h.bigv(&[
        "add",
        "server",
        "web1",
        "--no-image",
        "--stopped",
        "--backup",
        "never",
    ])
    .ok();
    let run = h
        .bigv(&[
            "schedule",
            "backups",
            "--start",
            "03:30",
            "--capacity",
            "3",
            "web1",
            "disc-1",
            "7200",
        ])
        .ok();
    assert!(
        run.stdout.starts_with(
            "Scheduled backups of disc-1 of web1.default.alice every 2 hours from 03:30, keeping the newest 3 (schedule "
        ),
        "{run:?}"
    );
    let d = disc(&h, "web1");
    let s = &d["backup_schedules"][0];
    assert_eq!(
        (&s["start_at"], &s["interval_seconds"], &s["capacity"]),
        (&Value::from("03:30"), &Value::from(7200), &Value::from(3))
    );
    let id = s["id"].to_string();
    let run = h
        .bigv(&["schedule", "backups", "--start", "later", "web1", "disc-1"])
        .fails(157);
    assert!(run.stderr.contains("start_at"), "{run:?}");
    let run = h
        .bigv(&["--json", "schedule", "backups", "web1", "disc-1", "86400"])
        .ok();
    assert_eq!(run.json()["start_at"], "00:00");
    assert_eq!(run.json()["capacity"], 0);
    h.bigv(&["unschedule", "backups", "web1", "disc-1", &id])
        .ok();
    h.bigv(&["unschedule", "backups", "web1", "disc-1", &id])
        .fails(156);
    assert_eq!(
        disc(&h, "web1")["backup_schedules"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
