//! The tail agent against a real spine server and a real qemu client:
//! create, template copy, resize, ACL changes, remove, pool reports, and
//! a restart that serves the same discs again.

mod common;

use std::os::unix::fs::FileExt;

use bigv_spine::resource::{DiscSpec, ResourceName, ResourceValue, TemplateCopy};
use bigv_spine::{ErrorCode, OrderFailure, Resource};
use bigv_tail::nbd::{ClientError, NbdClient};
use common::tail::*;
use common::*;

const DISC: &str = "disc.sata.7";

fn spec(size: u64, acl: &[&str], address: &str) -> DiscSpec {
    DiscSpec {
        size,
        storage_pool: "sata1".into(),
        access_control_list: acl.iter().map(|s| s.to_string()).collect(),
        address: address.into(),
        ..Default::default()
    }
}

fn order(spec: DiscSpec) -> Resource {
    Resource::disc("sata", "7", spec)
}

fn refused(r: Result<(), OrderFailure>) -> (ErrorCode, String) {
    match r {
        Err(OrderFailure::Refused(e)) => (e.code, e.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_agent_serves_discs_the_brain_orders() {
    logs();
    let (server, _events) = spine().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let port = free_port();
    // A template with data at 1 MiB.
    std::fs::create_dir_all(root.join("images")).unwrap();
    let img = std::fs::File::create(root.join("images/tiny.raw")).unwrap();
    img.set_len(8 * MIB).unwrap();
    img.write_all_at(&[0x42; 65536], MIB).unwrap();

    let t = TestTail::start(
        &server.local_addr().to_string(),
        "tail1",
        root.clone(),
        ip("127.0.0.1"),
        port,
    )
    .await;
    let h = handle(&server, "tail1").await;
    let (pools, _) = h
        .resource(&"global.storage_pools".parse().unwrap())
        .expect("pools reported");
    let ResourceValue::StoragePools(pools) = pools else {
        panic!("wrong kind")
    };
    assert_eq!(pools["sata1"].grade, "sata");
    assert_eq!(pools["sata1"].allocated, 0);
    assert!(pools["sata1"].size > 0);
    assert!(h.resource(&"global.load".parse().unwrap()).is_some());

    // Bad orders are refused, naming the field.
    let mut bad = spec(64, &["127.0.0.1"], "127.0.0.5");
    bad.storage_pool = "ssd9".into();
    let (code, msg) = refused(h.create(order(bad), 1).await);
    assert_eq!(code, ErrorCode::Invalid);
    assert!(msg.contains("storage_pool"), "{msg}");
    let (code, msg) = refused(h.create(order(spec(64, &["head-a"], "127.0.0.5")), 2).await);
    assert_eq!(code, ErrorCode::Invalid);
    assert!(msg.contains("access_control_list[0]"), "{msg}");
    let (_, msg) = refused(h.create(order(spec(64, &[], "nowhere")), 3).await);
    assert!(msg.contains("address"), "{msg}");

    // Create with a template: sparse, imaged, served to the listed head.
    let mut s = spec(64, &["127.0.0.1"], "127.0.0.5");
    s.template = Some(TemplateCopy {
        seq: 1,
        image: "tiny".into(),
    });
    h.create(order(s.clone()), 4).await.unwrap();
    let d = wait_disc(&server, "tail1", DISC, "imaged", |d| {
        d.is_some_and(|d| d.imaged_seq == Some(1))
    })
    .await
    .unwrap();
    assert_eq!(d.allocated, Some(1));
    let file = root.join("sata1/7.raw");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 64 * MIB);
    assert_eq!(allocated_bytes(&file), 65536, "no preallocation");
    let url = format!("nbd://127.0.0.5:{port}/{DISC}");
    let (ok, out) = qemu_io(
        &url,
        &[
            format!("read -P 0x42 {} 65536", MIB),
            "write -P 0x17 0 4096".into(),
        ],
    )
    .await;
    assert!(ok, "{out}");
    let (pools, _) = h
        .resource(&"global.storage_pools".parse().unwrap())
        .unwrap();
    let ResourceValue::StoragePools(pools) = pools else {
        panic!()
    };
    assert_eq!(pools["sata1"].allocated, 64);

    // Grow; shrinking needs allow_shrink.
    s.size = 128;
    h.update(order(s.clone()), 5).await.unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 128 * MIB);
    s.size = 32;
    let (code, msg) = refused(h.update(order(s.clone()), 6).await);
    assert_eq!(code, ErrorCode::Invalid);
    assert!(msg.contains("allow_shrink"), "{msg}");
    s.allow_shrink = true;
    h.update(order(s.clone()), 7).await.unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 32 * MIB);
    assert_eq!(disc_of(&h).size, 32);

    // The same template seq again does not re-image (the write survives).
    let (ok, out) = qemu_io(&url, &["read -P 0x17 0 4096".into()]).await;
    assert!(ok, "{out}");

    // ACL: a connected head no longer listed is cut off; the new one gets in.
    let addr = format!("127.0.0.5:{port}").parse().unwrap();
    let mut head_a = NbdClient::connect(addr, Some(ip("127.0.0.1")), DISC)
        .await
        .unwrap();
    head_a.read(0, 512).await.unwrap();
    s.access_control_list = vec!["127.0.0.2".into()];
    h.update(order(s.clone()), 8).await.unwrap();
    assert!(
        tokio::time::timeout(WAIT, head_a.closed_by_server())
            .await
            .unwrap()
    );
    assert!(matches!(
        NbdClient::connect(addr, Some(ip("127.0.0.1")), DISC).await,
        Err(ClientError::Closed { .. })
    ));
    let mut head_b = NbdClient::connect(addr, Some(ip("127.0.0.2")), DISC)
        .await
        .unwrap();
    assert_eq!(head_b.read(0, 4096).await.unwrap(), vec![0x17; 4096]);
    head_b.disconnect().await.unwrap();

    // A new template seq re-images.
    s.template = Some(TemplateCopy {
        seq: 2,
        image: "tiny".into(),
    });
    h.update(order(s.clone()), 9).await.unwrap();
    assert_eq!(disc_of(&h).imaged_seq, Some(2));
    assert!(read_at(&file, 0, 4096).iter().all(|b| *b == 0));

    // Restart the agent: the disc is served again at once, as last ordered.
    t.stop().await;
    let t = TestTail::start(
        &server.local_addr().to_string(),
        "tail1",
        root.clone(),
        ip("127.0.0.1"),
        port,
    )
    .await;
    let d = wait_disc(&server, "tail1", DISC, "dumped again", |d| d.is_some()).await;
    let d = d.unwrap();
    assert_eq!((d.size, d.imaged_seq), (32, Some(2)));
    assert_eq!(d.access_control_list, ["127.0.0.2"]);
    let mut head_b = NbdClient::connect(addr, Some(ip("127.0.0.2")), DISC)
        .await
        .unwrap();
    assert_eq!(head_b.read(MIB, 4).await.unwrap(), vec![0x42; 4]);
    head_b.disconnect().await.unwrap();

    // Remove: the file goes, the brain's table follows, the pool empties.
    let h = handle(&server, "tail1").await;
    h.remove(ResourceName::disc("sata", "7"), 10).await.unwrap();
    assert!(!file.exists());
    wait_disc(&server, "tail1", DISC, "gone", |d| d.is_none()).await;
    let (pools, _) = h
        .resource(&"global.storage_pools".parse().unwrap())
        .unwrap();
    let ResourceValue::StoragePools(pools) = pools else {
        panic!()
    };
    assert_eq!(pools["sata1"].allocated, 0);
    let (code, _) = refused(h.remove(ResourceName::disc("sata", "7"), 11).await);
    assert_eq!(code, ErrorCode::NotFound);
    t.stop().await;
}

fn disc_of(h: &bigv_spine::NodeHandle) -> DiscSpec {
    disc(h, DISC).expect("disc reported")
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The budget: 100 idle exports in at most 50 MB. Measured on the
/// whole test process (spine server included), so it is an upper bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_idle_discs_stay_small() {
    logs();
    let (server, _events) = spine().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let t = TestTail::start(
        &server.local_addr().to_string(),
        "tail1",
        dir.path().to_owned(),
        ip("127.0.0.1"),
        port,
    )
    .await;
    let h = handle(&server, "tail1").await;
    let before = rss_kib();
    for i in 1..=100u64 {
        let s = spec(10_240, &["127.0.0.1"], &format!("127.0.4.{i}"));
        h.create(Resource::disc("sata", i.to_string(), s), 1)
            .await
            .unwrap();
    }
    // Every one is really served.
    for i in [1u64, 50, 100] {
        let addr = format!("127.0.4.{i}:{port}").parse().unwrap();
        let c = NbdClient::connect(addr, None, "").await.unwrap();
        assert_eq!(c.size(), 10_240 * MIB);
        c.disconnect().await.unwrap();
    }
    let after = rss_kib();
    eprintln!("RSS {before} KiB before, {after} KiB with 100 discs");
    assert!(after < 50 * 1024, "RSS {after} KiB with 100 idle discs");
    t.stop().await;
}
