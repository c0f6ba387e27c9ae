//! The brain's boot side without root: node images added and listed, the
//! boot HTTP server answering per-node scripts from the brain's model
//! (registered machines, enrollment policy, roles), and the image version
//! check keeping a node that booted the wrong image out of service.
//! (DHCP/TFTP/RA with a real PXE client: tests/boot_e2e.rs, slow tier.)

mod common;
mod reconcile_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bigv_brain::boot::BootServicesConfig;
use bigv_brain::boot::images;
use bigv_brain::clock::Clock;
use bigv_brain::model::DbError;
use bigv_spine::sim::{SimHardware, SimNode};
use common::*;
use reconcile_support::*;
use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};

const TAIL_MAC: &str = "52:54:00:00:00:21";
const STRANGER: &str = "52:54:00:00:00:99";

/// A node image folder: the three files and a manifest vouching for them.
fn make_image(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let mut files = serde_json::Map::new();
    for name in ["vmlinuz", "initrd", "initrd-head"] {
        let data = format!("{name} of {version}");
        std::fs::write(dir.join(name), &data).unwrap();
        files.insert(
            name.into(),
            json!({"sha256": hex::encode(Sha256::digest(&data)), "size": data.len()}),
        );
    }
    let m = json!({"version": version, "files": files});
    std::fs::write(dir.join("manifest.json"), m.to_string()).unwrap();
}

fn http_only() -> BootServicesConfig {
    BootServicesConfig {
        lan: None,
        http_listen: "127.0.0.1:0".parse().unwrap(),
        ..BootServicesConfig::on_interface(
            "",
            "127.0.0.1".parse().unwrap(),
            "127.0.0.0/8".parse().unwrap(),
        )
    }
}

/// A brain with the boot HTTP server and image `v1` stored before start.
async fn boot_brain() -> TestBrain {
    let dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    make_image(src.path(), "v1");
    images::add(dir.path(), src.path()).unwrap();
    TestBrain::start_boot(dir, test_settings(), Clock::system(), Some(http_only())).await
}

async fn script(tb: &TestBrain, mac: &str) -> (StatusCode, String) {
    let addr = tb.brain.boot_http_addr.expect("boot HTTP runs");
    let mac = mac.replace(':', "-");
    let r = reqwest::get(format!("http://{addr}/boot/{mac}/boot.ipxe"))
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// Waits for the script of `mac` to answer `status` (the policy's view
/// follows the model within a second).
async fn script_when(tb: &TestBrain, mac: &str, status: StatusCode) -> String {
    eventually(
        &format!("{mac}'s script to answer {status}"),
        10,
        || async {
            let (s, body) = script(tb, mac).await;
            (s == status).then_some(body)
        },
    )
    .await
}

#[tokio::test]
async fn the_first_image_becomes_the_target_and_is_listed() {
    let tb = boot_brain().await;
    let su = tb.su().await;
    eventually("v1 to become the target", 10, || async {
        let s = tb.brain.db.read().settings.node_image_version.clone();
        (s.as_deref() == Some("v1")).then_some(())
    })
    .await;
    let (status, list) = tb.get(&su, "/admin/node_images").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list[0]["version"], "v1");
    assert_eq!(list[0]["target"], true);
    assert_eq!(list[0]["files"]["initrd"]["size"], "initrd of v1".len());

    // The target must be a stored image; the error names the field.
    let (status, body) = tb
        .put(&su, "/admin/settings", json!({"node_image_version": "v9"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("node_image_version"), "{body}");

    // An image added while the brain runs is found and may become the target.
    let src = tempfile::tempdir().unwrap();
    make_image(src.path(), "v2");
    images::add(tb.dir.path(), src.path()).unwrap();
    let (status, body) = tb
        .put(&su, "/admin/settings", json!({"node_image_version": "v2"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["node_image_version"], "v2");
}

#[tokio::test]
async fn scripts_follow_registration_and_the_enrollment_policy() {
    let tb = boot_brain().await;
    let su = tb.su().await;
    let pin = hex::encode(Sha256::digest(
        std::fs::read(tb.dir.path().join("spine-cert.der")).unwrap(),
    ));
    assert_eq!(format!("sha256:{pin}"), tb.brain.fingerprint.to_string());

    // Enrollment is open by default: a stranger boots as a head.
    let body = script_when(&tb, STRANGER, StatusCode::OK).await;
    assert!(body.contains("bigv.role=head"), "{body}");
    assert!(body.contains("/images/v1/initrd-head"), "{body}");

    // An operator registers a tail.
    let (status, m) = tb
        .post(
            &su,
            "/admin/machines",
            json!({"mac": TAIL_MAC, "role": "tail", "boot_address": "10.0.0.21"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{m}");
    assert_eq!(
        (m["state"].as_str(), m["registered"].as_bool()),
        (Some("registered"), Some(true))
    );
    let body = eventually("the tail's script", 10, || async {
        let (s, b) = script(&tb, TAIL_MAC).await;
        (s == StatusCode::OK && b.contains("bigv.role=tail")).then_some(b)
    })
    .await;
    let spine = format!("bigv.spine=127.0.0.1:{}", tb.brain.spine_addr.port());
    for want in [
        "bigv.version=v1",
        spine.as_str(),
        &format!("bigv.pin=sha256:{pin}"),
        "bigv.bootif=${netX/mac}",
        "/images/v1/vmlinuz",
        "/images/v1/initrd ",
    ] {
        assert!(body.contains(want), "{want:?} missing from\n{body}");
    }
    assert!(
        !body.contains("initrd-head"),
        "a tail gets no head initrd:\n{body}"
    );

    // The image files are served from the store.
    let addr = tb.brain.boot_http_addr.unwrap();
    let kernel = reqwest::get(format!("http://{addr}/images/v1/vmlinuz"))
        .await
        .unwrap();
    assert_eq!(kernel.text().await.unwrap(), "vmlinuz of v1");

    // Serving the script recorded the version that machine must run.
    eventually("the booted version recorded", 10, || async {
        let (_, m) = tb.get(&su, &format!("/admin/machines/{TAIL_MAC}")).await;
        (m["booted_version"] == "v1" && m["state"] == "enrolling").then_some(())
    })
    .await;
    let (_, list) = tb.get(&su, "/admin/machines").await;
    let stranger = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == STRANGER)
        .expect("the stranger was recorded as enrolling");
    assert_eq!(
        (stranger["registered"].as_bool(), stranger["role"].as_str()),
        (Some(false), Some("head"))
    );

    // Closing enrollment: strangers get nothing, registered machines still boot.
    let (status, _) = tb
        .put(&su, "/admin/settings", json!({"enrollment": "closed"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    script_when(&tb, "52:54:00:00:00:98", StatusCode::NOT_FOUND).await;
    script_when(&tb, STRANGER, StatusCode::NOT_FOUND).await;
    assert_eq!(script(&tb, TAIL_MAC).await.0, StatusCode::OK);

    // Bad registrations name the field.
    for (body, field) in [
        (json!({"mac": "nope", "role": "tail"}), "mac"),
        (json!({"mac": TAIL_MAC, "role": "brain"}), "role"),
        (
            json!({"mac": STRANGER, "role": "tail", "boot_address": "10.0.0.21"}),
            "boot_address",
        ),
    ] {
        let (status, reply) = tb.post(&su, "/admin/machines", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
        assert!(reply.to_string().contains(field), "{field}: {reply}");
    }
    let (status, _) = tb.delete(&su, &format!("/admin/machines/{TAIL_MAC}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    script_when(&tb, TAIL_MAC, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn a_tails_registered_pools_and_discs_reach_its_command_line() {
    let tb = boot_brain().await;
    let su = tb.su().await;
    let (status, m) = tb
        .post(
            &su,
            "/admin/machines",
            json!({
                "mac": TAIL_MAC,
                "role": "tail",
                "pools": ["sata1:sata:/srv/sata1", "scratch:ram:/run/bigv/pools/scratch"],
                "discs": ["vdb:/srv/sata1:format"],
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{m}");
    assert_eq!(m["discs"], json!(["vdb:/srv/sata1:format"]), "{m}");
    let want = "bigv.pool=sata1:sata:/srv/sata1 bigv.pool=scratch:ram:/run/bigv/pools/scratch bigv.disc=vdb:/srv/sata1:format";
    eventually("the tail's storage on its command line", 10, || async {
        let (s, b) = script(&tb, TAIL_MAC).await;
        (s == StatusCode::OK && b.contains(want)).then_some(())
    })
    .await;

    // Registering again without them keeps them; an empty list clears.
    let (status, m) = tb
        .post(
            &su,
            "/admin/machines",
            json!({"mac": TAIL_MAC, "role": "tail", "boot_address": "10.0.0.21"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(m["pools"].as_array().map(Vec::len), Some(2), "{m}");
    assert_eq!(m["boot_address"], "10.0.0.21", "{m}");
    tb.post(
        &su,
        "/admin/machines",
        json!({"mac": TAIL_MAC, "role": "tail", "discs": [], "boot_address": null}),
    )
    .await;
    eventually("the disc gone from the command line", 10, || async {
        let (s, b) = script(&tb, TAIL_MAC).await;
        (s == StatusCode::OK && b.contains("bigv.pool=sata1") && !b.contains("bigv.disc="))
            .then_some(())
    })
    .await;

    // Mistakes are refused naming the field, and change nothing.
    for (body, field, says) in [
        (
            json!({"mac": TAIL_MAC, "role": "tail", "pools": ["sata1:sata:srv"]}),
            "pools",
            "NAME:GRADE:/DIR",
        ),
        (
            json!({"mac": TAIL_MAC, "role": "tail", "pools": ["a:sata:/srv/a", "a:ssd:/srv/b"]}),
            "pools",
            "used twice",
        ),
        (
            json!({"mac": TAIL_MAC, "role": "tail", "discs": ["vdb:/srv/a:wipe"]}),
            "discs",
            "DEV:/DIR",
        ),
        (
            json!({"mac": TAIL_MAC, "role": "tail", "discs": "vdb:/srv/a"}),
            "discs",
            "list of strings",
        ),
        (
            json!({"mac": STRANGER, "role": "head", "pools": ["a:sata:/srv/a"]}),
            "pools",
            "only tails",
        ),
    ] {
        let (status, reply) = tb.post(&su, "/admin/machines", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
        let msg = reply[field].to_string();
        assert!(msg.contains(says), "{field}: {reply}");
    }
    let (_, m) = tb.get(&su, &format!("/admin/machines/{TAIL_MAC}")).await;
    assert_eq!(m["pools"].as_array().map(Vec::len), Some(2), "{m}");
    assert_eq!(m["discs"], json!([]), "{m}");
    assert_eq!(m["boot_address"], json!(null), "{m}");

    // A head never gets storage arguments, even registered over a tail.
    tb.post(
        &su,
        "/admin/machines",
        json!({"mac": TAIL_MAC, "role": "head"}),
    )
    .await;
    let body = eventually("the machine's head script", 10, || async {
        let (s, b) = script(&tb, TAIL_MAC).await;
        (s == StatusCode::OK && b.contains("bigv.role=head")).then_some(b)
    })
    .await;
    assert!(!body.contains("bigv.pool="), "{body}");
}

#[tokio::test]
async fn a_node_on_another_image_than_it_was_booted_with_is_flagged_and_unused() {
    let tb = TestBrain::start().await;
    let su = tb.su().await;
    // The brain booted this head with v2 (as if it had served its script)…
    tb.brain
        .db
        .write(|tx| {
            tx.put(bigv_brain::model::Machine {
                mac: "52:54:00:00:00:31".into(),
                role: bigv_brain::model::Role::Head,
                boot_address: None,
                registered: true,
                lease: None,
                booted_version: Some("v2".into()),
                first_seen: None,
                last_boot_at: None,
                pools: vec![],
                discs: vec![],
            })
        })
        .await
        .unwrap();
    // …but it says hello with v1.
    let fleet = fleet(&tb, 0, 1);
    let mut config = SimNode::config(&tb.brain.spine_addr.to_string(), "52:54:00:00:00:31", "v1");
    config.tls_pin = Some(tb.brain.fingerprint);
    config.keepalive = fast_keepalive();
    config.hello.addresses = vec!["fd00:1::1:31".into()];
    let node = SimNode::new(
        config,
        SimHardware::Head {
            memory_mib: HEAD_MEMORY,
        },
    );
    let task = tokio::spawn(node.clone().run());
    joined(&tb, &fleet).await;
    eventually("the head to join", 20, || async {
        let ok = tb
            .brain
            .spine
            .node("52:54:00:00:00:31")
            .is_some_and(|h| h.is_ready())
            && tb.brain.db.read().nodes.contains_key("52:54:00:00:00:31");
        ok.then_some(())
    })
    .await;

    let (status, head) = tb.get(&su, "/admin/heads/52:54:00:00:00:31").await;
    assert_eq!(status, StatusCode::OK, "{head}");
    assert_eq!(head["image_version"], "v1");
    assert_eq!(head["image_expected"], "v2");
    assert_eq!(head["image_mismatch"], true);
    let (_, heads) = tb.get(&su, "/admin/heads").await;
    assert_eq!(heads[0]["image_mismatch"], true);

    let id = create_vm(&tb, NewVm::running("web1")).await;
    always(
        "nothing is placed on the mismatched head",
        Duration::from_secs(2),
        || vm(&tb, id).head.is_none(),
    )
    .await;

    // Once the versions agree (it rebooted onto v2), it takes work.
    tb.brain
        .db
        .write(|tx| {
            let mut m = tx.model().machines["52:54:00:00:00:31"].clone();
            m.booted_version = Some("v1".into());
            tx.put(m)?;
            Ok::<_, DbError>(())
        })
        .await
        .unwrap();
    tb.brain.reconcile.notify_one();
    eventually("the VM to run on the head", 15, || async {
        let placed = vm(&tb, id).head.as_deref() == Some("52:54:00:00:00:31");
        (placed && node.vms().contains_key(&id.0.to_string())).then_some(())
    })
    .await;
    let (_, head) = tb.get(&su, "/admin/heads/52:54:00:00:00:31").await;
    assert_eq!(head["image_mismatch"], false);
    task.abort();
}

#[test]
fn image_add_refuses_a_bad_image_with_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    make_image(src.path(), "v1");
    std::fs::write(src.path().join("initrd"), "initrd of v2").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bigv-brain"))
        .args(["--data-dir"])
        .arg(data.path())
        .args(["image", "add"])
        .arg(src.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("initrd has sha256") && stderr.contains("the manifest says"),
        "{stderr}"
    );
    assert!(!data.path().join("node-images/v1").exists());

    std::fs::write(src.path().join("initrd"), "initrd of v1").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bigv-brain"))
        .args(["--data-dir"])
        .arg(data.path())
        .args(["image", "add"])
        .arg(src.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_bigv-brain"))
        .args(["--data-dir"])
        .arg(data.path())
        .args(["image", "list"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("v1\t3 files"));
}

#[tokio::test]
async fn an_enrolling_machine_joins_pending_and_is_accepted_with_the_role_it_booted_as() {
    let dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    make_image(src.path(), "v1");
    images::add(dir.path(), src.path()).unwrap();
    let settings = bigv_brain::model::Settings {
        admission: "manual".into(),
        enrollment_role: bigv_brain::model::Role::Tail,
        ..test_settings()
    };
    let tb = TestBrain::start_boot(dir, settings, Clock::system(), Some(http_only())).await;
    let su = tb.su().await;
    const MAC: &str = "52:54:00:00:00:41";

    // It network-boots: the script makes it a tail running v1.
    let body = script_when(&tb, MAC, StatusCode::OK).await;
    assert!(
        body.contains("bigv.role=tail") && body.contains("bigv.version=v1"),
        "{body}"
    );
    eventually("the machine to show as enrolling", 10, || async {
        let (_, m) = tb.get(&su, &format!("/admin/machines/{MAC}")).await;
        (m["state"] == "enrolling").then_some(())
    })
    .await;

    // Its init joins the spine with what the script said (a simulated
    // tail stands in for it here).
    let mut config = SimNode::config(&tb.brain.spine_addr.to_string(), MAC, "v1");
    config.tls_pin = Some(tb.brain.fingerprint);
    config.keepalive = fast_keepalive();
    let node = SimNode::new(
        config,
        SimHardware::Tail {
            pools: [("sata1".to_string(), ("sata".to_string(), 1 << 20))].into(),
        },
    );
    let task = tokio::spawn(node.clone().run());
    let (_, tail) = eventually("the tail to show as pending", 20, || async {
        let (s, t) = tb.get(&su, &format!("/admin/tails/{MAC}")).await;
        (s == StatusCode::OK && t["online"] == true).then_some((s, t))
    })
    .await;
    assert_eq!(tail["admission"], "pending");
    assert_eq!(tail["image_version"], "v1");
    assert_eq!(tail["image_expected"], "v1");
    assert_eq!(tail["image_mismatch"], false);
    let (_, m) = tb.get(&su, &format!("/admin/machines/{MAC}")).await;
    assert_eq!(
        (m["state"].as_str(), m["label"].as_str()),
        (Some("pending"), Some("tail1"))
    );

    let (status, tail) = tb.post(&su, "/admin/tails/tail1/accept", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{tail}");
    assert_eq!(tail["admission"], "accepted");
    let (_, m) = tb.get(&su, &format!("/admin/machines/{MAC}")).await;
    assert_eq!(m["state"], "accepted");
    // Known now: it boots as its node's role even with enrollment closed.
    tb.put(&su, "/admin/settings", json!({"enrollment": "closed"}))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = script(&tb, MAC).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("bigv.role=tail"), "{body}");
    task.abort();
}

/// OS templates: an operator uploads a registered image's bytes; the boot
/// HTTP server serves them to tails, whose scripts say where.
#[tokio::test]
async fn templates_are_uploaded_and_served_to_tails() {
    let tb = boot_brain().await;
    let su = tb.su().await;
    let (status, body) = tb
        .post(
            &su,
            "/admin/images",
            json!({"name": "bigv-test", "size": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let upload = |name: &str, bytes: Vec<u8>| {
        tb.http
            .put(tb.url(&format!("/admin/images/{name}/content")))
            .bearer_auth(&su)
            .body(bytes)
            .send()
    };
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let r = upload("bigv-test", content.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["bytes"], 300_000, "{body}");

    let addr = tb.brain.boot_http_addr.unwrap();
    let url = format!("http://{addr}/templates/bigv-test.raw");
    let got = reqwest::get(&url).await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), content.as_slice());

    // Larger than the registered size: refused, naming the field; the
    // stored template is untouched.
    let r = upload("bigv-test", vec![1; (1 << 20) + 1]).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["content"][0].as_str().unwrap().contains("larger"),
        "{body}"
    );
    let got = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.len(), 300_000);
    // Unregistered: 404.
    assert_eq!(
        upload("nosuch", vec![0; 10]).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    // Scripts tell nodes where templates are.
    let script = script_when(&tb, TAIL_MAC, StatusCode::OK).await;
    assert!(
        script.contains(&format!(
            "bigv.templates=http://127.0.0.1:{}/templates",
            addr.port()
        )),
        "{script}"
    );

    // Removing the image removes its content.
    assert_eq!(
        tb.delete(&su, "/admin/images/bigv-test").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        reqwest::get(&url).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}
