//! Disc backups on a real tail agent with qemu-io as the disc's client:
//! backup, more writes, restore → the content is the backup point's, holes
//! stay holes; backups survive an agent restart; delete; a removed disc
//! takes its backups with it.

mod common;

use bigv_spine::backup::{DiscBackups, RestoreOrder};
use bigv_spine::resource::{DiscSpec, ResourceName};
use bigv_spine::{ErrorCode, NodeHandle, OrderFailure, Resource, SpineEvent, SpineServer};
use common::tail::*;
use common::*;

const DISC: &str = "disc.sata.7";
const MIB: u64 = 1 << 20;

fn spec(backups: Option<DiscBackups>) -> DiscSpec {
    DiscSpec {
        size: 64,
        storage_pool: "sata1".into(),
        access_control_list: vec!["127.0.0.1".into()],
        address: "127.0.0.9".into(),
        backups,
        ..Default::default()
    }
}

fn keep(ids: &[&str], restore: Option<(u64, &str)>) -> Option<DiscBackups> {
    Some(DiscBackups {
        keep: ids.iter().map(|s| s.to_string()).collect(),
        restore: restore.map(|(seq, from)| RestoreOrder {
            seq,
            from: from.into(),
        }),
        ..Default::default()
    })
}

fn order(spec: DiscSpec) -> Resource {
    Resource::disc("sata", "7", spec)
}

async fn io(url: &str, cmds: &[&str]) {
    let cmds: Vec<String> = cmds.iter().map(|s| s.to_string()).collect();
    let (ok, out) = qemu_io(url, &cmds).await;
    assert!(ok, "qemu-io {cmds:?}: {out}");
}

/// A tail agent `tail1` on a spine of its own, its pools under a root
/// folder, holding [`DISC`] (no backups yet), served at `url`.
struct OneTail {
    server: SpineServer,
    _events: tokio::sync::mpsc::Receiver<SpineEvent>,
    port: u16,
    t: TestTail,
    h: NodeHandle,
    url: String,
}

async fn one_tail(root: &std::path::Path) -> OneTail {
    let (server, _events) = spine().await;
    let port = free_port();
    let t = TestTail::start(
        &server.local_addr().to_string(),
        "tail1",
        root.to_owned(),
        ip("127.0.0.1"),
        port,
    )
    .await;
    let h = handle(&server, "tail1").await;
    h.create(order(spec(None)), 1).await.unwrap();
    let url = format!("nbd://127.0.0.9:{port}/{DISC}");
    OneTail {
        server,
        _events,
        port,
        t,
        h,
        url,
    }
}

/// Orders restore 1 of disc 7 from `b1` (generation 3) and waits until
/// the tail reports it done without an error.
async fn restore_b1(h: &NodeHandle, server: &SpineServer) {
    h.update(order(spec(keep(&["b1"], Some((1, "b1"))))), 3)
        .await
        .unwrap();
    let d = wait_disc(server, "tail1", DISC, "restored", |d| {
        d.is_some_and(|d| d.backups.as_ref().and_then(|b| b.restored_seq) == Some(1))
    })
    .await
    .unwrap();
    assert_eq!(d.backups.unwrap().error, None);
}

fn taken(d: &DiscSpec) -> Vec<String> {
    d.backups
        .as_ref()
        .map(|b| b.taken.iter().map(|t| t.id.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_then_writes_then_restore_gives_the_backup_point() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let OneTail {
        server,
        _events,
        port,
        t,
        h,
        url,
    } = one_tail(&root).await;
    let disc_file = root.join("sata1/7.raw");

    // The backup point: data at 0 and at 32 MiB, a hole between.
    io(
        &url,
        &["write -P 0xaa 0 4096", "write -P 0xbb 33554432 65536"],
    )
    .await;
    h.update(order(spec(keep(&["b1"], None))), 2).await.unwrap();
    let backup = root.join("sata1/backups/sata.7/b1.raw");
    assert_eq!(std::fs::metadata(&backup).unwrap().len(), 64 * MIB);
    assert!(
        allocated_bytes(&backup) <= 256 * 1024,
        "holes preserved in the backup: {} bytes allocated",
        allocated_bytes(&backup)
    );
    assert_eq!(read_at(&backup, 0, 4096), vec![0xaa; 4096]);
    assert_eq!(read_at(&backup, 32 * MIB, 65536), vec![0xbb; 65536]);
    let d = wait_disc(&server, "tail1", DISC, "b1 reported", |d| {
        d.is_some_and(|d| taken(d) == ["b1"])
    })
    .await
    .unwrap();
    let facts = &d.backups.as_ref().unwrap().taken[0];
    assert_eq!((facts.pool.as_str(), facts.size), ("sata1", 64));

    // More writes after the backup, including into the hole.
    io(
        &url,
        &[
            "write -P 0xcc 0 4096",
            "write -P 0xdd 16777216 1048576",
            "write -P 0xee 33554432 4096",
        ],
    )
    .await;

    // Restore: the content is the backup point's, holes are holes again.
    restore_b1(&h, &server).await;
    io(
        &url,
        &[
            "read -P 0xaa 0 4096",
            "read -P 0 16777216 1048576",
            "read -P 0xbb 33554432 65536",
        ],
    )
    .await;
    assert!(
        allocated_bytes(&disc_file) <= 256 * 1024,
        "the hole at 16 MiB is a hole again: {} bytes allocated",
        allocated_bytes(&disc_file)
    );

    // The same restore seq again is not carried out again.
    io(&url, &["write -P 0x11 0 4096"]).await;
    h.update(order(spec(keep(&["b1"], Some((1, "b1"))))), 4)
        .await
        .unwrap();
    io(&url, &["read -P 0x11 0 4096"]).await;

    // A bad id is refused, naming it; restoring a backup not held fails
    // in the report.
    let err = h
        .update(order(spec(keep(&["../x"], None))), 5)
        .await
        .unwrap_err();
    let OrderFailure::Refused(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!(e.code, ErrorCode::Invalid);
    assert!(e.message.contains("../x"), "{}", e.message);
    h.update(order(spec(keep(&["b1"], Some((2, "zz"))))), 6)
        .await
        .unwrap();
    let d = wait_disc(&server, "tail1", DISC, "restore error", |d| {
        d.is_some_and(|d| d.backups.as_ref().is_some_and(|b| b.error.is_some()))
    })
    .await
    .unwrap();
    assert!(d.backups.unwrap().error.unwrap().contains("zz"));

    // A second backup; the agent restarts and still reports both.
    h.update(order(spec(keep(&["b1", "b2"], Some((2, "zz"))))), 7)
        .await
        .unwrap();
    let old_conn = h.info().conn;
    t.stop().await;
    let t = TestTail::start(
        &server.local_addr().to_string(),
        "tail1",
        root.clone(),
        ip("127.0.0.1"),
        port,
    )
    .await;
    // The new connection, not the old one before the spine saw it close.
    let deadline = tokio::time::Instant::now() + WAIT;
    let h = loop {
        let h = handle(&server, "tail1").await;
        if h.info().conn != old_conn {
            break h;
        }
        assert!(tokio::time::Instant::now() < deadline, "no new connection");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    wait_disc(&server, "tail1", DISC, "both after restart", |d| {
        d.is_some_and(|d| taken(d) == ["b1", "b2"])
    })
    .await;
    // b2 holds the 0x11 written after the restore.
    let b2 = root.join("sata1/backups/sata.7/b2.raw");
    assert_eq!(read_at(&b2, 0, 4096), vec![0x11; 4096]);

    // Delete: unlisted backups go.
    h.update(order(spec(keep(&["b2"], None))), 8).await.unwrap();
    assert!(!backup.exists());
    wait_disc(&server, "tail1", DISC, "b1 gone", |d| {
        d.is_some_and(|d| taken(d) == ["b2"])
    })
    .await;

    // An order without `backups` (an older brain) leaves them alone.
    h.update(order(spec(None)), 9).await.unwrap();
    assert!(b2.exists());

    // Removing the disc removes its backups.
    h.remove(ResourceName::disc("sata", "7"), 10).await.unwrap();
    assert!(!b2.exists());
    assert!(!root.join("sata1/backups/sata.7").exists());
    t.stop().await;
}

/// A tail with a cold-storage pool keeps backups there when the order
/// names it; a pool it does not have is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_go_to_the_iceberg_pool_the_order_names() {
    use bigv_spine::{Hello, NodeAgent, NodeConfig, Role};
    use bigv_tail::addresses::Addresses;
    use bigv_tail::agent::{AgentConfig, TailAgent};
    use bigv_tail::pools::{PoolConfig, Pools};

    logs();
    let (server, _events) = spine().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let port = free_port();
    let pool = |name: &str, grade: &str| PoolConfig {
        name: name.into(),
        grade: grade.into(),
        path: root.join(name),
    };
    let agent = TailAgent::start(AgentConfig {
        pools: Pools::open(vec![pool("sata1", "sata"), pool("iceberg1", "iceberg")]).unwrap(),
        images: root.join("images"),
        nbd_port: port,
        storage_address: ip("127.0.0.1"),
        addresses: Addresses::unmanaged(),
        report_interval: std::time::Duration::from_millis(300),
        templates_url: None,
    })
    .await
    .unwrap();
    let hello = Hello {
        node_id: "tail2".into(),
        role: Role::Tail,
        image_version: "test".into(),
        protocol_version: bigv_spine::PROTOCOL_VERSION,
        addresses: vec!["127.0.0.1".into()],
    };
    let node = NodeAgent::new(
        NodeConfig::new(server.local_addr().to_string(), hello),
        agent.clone(),
    );
    agent.set_notifier(node.notifier());
    let task = tokio::spawn(async move { node.run().await });
    let h = handle(&server, "tail2").await;
    h.create(order(spec(None)), 1).await.unwrap();
    let url = format!("nbd://127.0.0.9:{port}/{DISC}");
    io(&url, &["write -P 0x5a 1048576 8192"]).await;

    let mut cold = keep(&["b1"], None);
    cold.as_mut().unwrap().pool = Some("nowhere".into());
    let err = h.update(order(spec(cold.clone())), 2).await.unwrap_err();
    let OrderFailure::Refused(e) = err else {
        panic!("{err:?}")
    };
    assert!(e.message.contains("backups.pool"), "{}", e.message);

    cold.as_mut().unwrap().pool = Some("iceberg1".into());
    h.update(order(spec(cold)), 3).await.unwrap();
    let file = root.join("iceberg1/backups/sata.7/b1.raw");
    assert_eq!(read_at(&file, MIB, 8192), vec![0x5a; 8192]);
    assert!(!root.join("sata1/backups").exists());
    let d = wait_disc(&server, "tail2", DISC, "b1 reported", |d| {
        d.is_some_and(|d| taken(d) == ["b1"])
    })
    .await
    .unwrap();
    assert_eq!(d.backups.unwrap().taken[0].pool, "iceberg1");
    // The disc's removal takes the backup in the other pool with it.
    h.remove(ResourceName::disc("sata", "7"), 4).await.unwrap();
    assert!(!file.exists());
    task.abort();
    agent.shutdown().await;
}

/// A backup taken while a client writes is the disc at one moment: the
/// client's writes (each acknowledged before the next is sent) are in it
/// up to some write and not after, none half. The writes alternate
/// between the start of the disc and its far end, so a copy that missed
/// the blocks written during its first pass (which runs from the start to
/// the end) would hold later writes at the end without earlier ones at
/// the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_writes_is_the_disc_at_one_moment() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let OneTail {
        server: _server,
        _events,
        port: _,
        t,
        h,
        url,
    } = one_tail(&root).await;
    // Data for the first copy to take a while over.
    io(&url, &["write -P 0x01 0 67108864"]).await;

    const PAIRS: u64 = 192;
    const BLOCK: u64 = 65536;
    const FAR: u64 = 48 * MIB;
    // Write s (in the order sent): even ones near the start, odd ones far.
    let offset = |s: u64| {
        if s.is_multiple_of(2) {
            s / 2 * BLOCK
        } else {
            FAR + s / 2 * BLOCK
        }
    };
    let pattern = |s: u64| 2 + (s % 250) as u8;
    let cmds: Vec<String> = (0..2 * PAIRS)
        .map(|s| format!("write -P {} {} {BLOCK}", pattern(s), offset(s)))
        .collect();
    let writer = {
        let url = url.clone();
        tokio::spawn(async move { qemu_io(&url, &cmds).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    h.update(order(spec(keep(&["b1"], None))), 2).await.unwrap();
    let (ok, out) = writer.await.unwrap();
    assert!(ok, "{out}");

    let backup = root.join("sata1/backups/sata.7/b1.raw");
    let mut written = vec![];
    for s in 0..2 * PAIRS {
        let block = read_at(&backup, offset(s), BLOCK as usize);
        if block.iter().all(|b| *b == pattern(s)) {
            written.push(true);
        } else {
            assert!(
                block.iter().all(|b| *b == 0x01),
                "write {s} is neither in the backup nor not: torn"
            );
            written.push(false);
        }
    }
    let moment = written.iter().take_while(|w| **w).count();
    let later: Vec<usize> = (moment..written.len()).filter(|s| written[*s]).collect();
    assert!(
        later.is_empty(),
        "writes sent after write {moment}, missing from the backup, are in it: {later:?}"
    );
    eprintln!(
        "the backup holds the first {moment} of {} writes",
        2 * PAIRS
    );
    assert_eq!(read_at(&backup, 40 * MIB, 4096), vec![0x01; 4096]);
    // The disc has every write.
    let last = 2 * PAIRS - 1;
    io(
        &url,
        &[&format!(
            "read -P {} {} {BLOCK}",
            pattern(last),
            offset(last)
        )],
    )
    .await;
    t.stop().await;
}

/// Two tails on one spine, the disc on tail-a (address 127.0.7.1) with
/// backup `b1` of 64 KiB of 0x33 and then 0x44 written over it, and an
/// incoming copy created on tail-b; migrates it, `send_backups` as the
/// order says, and waits until tail-b serves it.
async fn migrate_a_backed_up_disc(send_backups: bool) -> (tempfile::TempDir, Vec<DiscSpec>) {
    use bigv_spine::resource::{IncomingMirror, MigrationOrder};

    let (server, _events) = spine().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = server.local_addr().to_string();
    let a = TestTail::start(&addr, "tail-a", dir.path().join("a"), ip("127.0.5.1"), port).await;
    let b = TestTail::start(&addr, "tail-b", dir.path().join("b"), ip("127.0.6.1"), port).await;
    let ha = handle(&server, "tail-a").await;
    let hb = handle(&server, "tail-b").await;
    let mut s = spec(keep(&["b1"], None));
    s.address = "127.0.7.1".into();
    let url = format!("nbd://127.0.7.1:{port}/{DISC}");
    let bare = DiscSpec {
        backups: None,
        ..s.clone()
    };
    ha.create(order(bare.clone()), 1).await.unwrap();
    io(&url, &["write -P 0x33 0 65536"]).await;
    ha.update(order(s.clone()), 2).await.unwrap();
    let backup = dir.path().join("a/sata1/backups/sata.7/b1.raw");
    assert!(backup.exists());
    io(&url, &["write -P 0x44 0 65536"]).await;

    let mut dest = bare.clone();
    dest.incoming = Some(IncomingMirror {
        from: "127.0.5.1".into(),
        endpoint: None,
    });
    hb.create(order(dest), 1).await.unwrap();
    let endpoint = wait_disc(&server, "tail-b", DISC, "an incoming endpoint", |d| {
        d.is_some_and(|d| d.incoming.as_ref().is_some_and(|i| i.endpoint.is_some()))
    })
    .await
    .unwrap()
    .incoming
    .unwrap()
    .endpoint
    .unwrap();
    s.migrate_to = Some(MigrationOrder {
        seq: 1,
        to: "tail-b".into(),
        endpoint,
        backups: send_backups,
    });
    ha.update(order(s), 3).await.unwrap();
    wait_disc(&server, "tail-a", DISC, "handed over", |d| d.is_none()).await;
    let served = wait_disc(&server, "tail-b", DISC, "served", |d| {
        d.is_some_and(|d| d.incoming.is_none())
    })
    .await
    .unwrap();
    assert!(
        !backup.exists(),
        "the old copy's backups are gone from tail-a"
    );
    // The brain's next order: keep what tail-b reports holding, restore b1.
    let mut next = bare.clone();
    let held = taken(&served);
    next.backups = keep(
        &held.iter().map(String::as_str).collect::<Vec<_>>(),
        Some((1, "b1")),
    );
    hb.update(order(next), 2).await.unwrap();
    let restored = wait_disc(&server, "tail-b", DISC, "restore done or failed", |d| {
        d.is_some_and(|d| {
            d.backups
                .as_ref()
                .is_some_and(|b| b.restored_seq.is_some() || b.error.is_some())
        })
    })
    .await
    .unwrap();
    if send_backups {
        io(&url, &["read -P 0x33 0 65536"]).await;
    } else {
        io(&url, &["read -P 0x44 0 65536"]).await;
    }
    a.stop().await;
    b.stop().await;
    (dir, vec![served, restored])
}

/// A disc's backups move with it to the tail it migrates to: they arrive
/// whole, are reported there, and restore there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disc_migrated_to_another_tail_takes_its_backups_along() {
    logs();
    let (dir, reports) = migrate_a_backed_up_disc(true).await;
    assert_eq!(taken(&reports[0]), ["b1"], "tail-b reports the backup");
    let arrived = dir.path().join("b/sata1/backups/sata.7/b1.raw");
    let meta = std::fs::metadata(&arrived).unwrap();
    assert_eq!(meta.len(), 64 * MIB, "the backup keeps the disc's size");
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 4 * MIB,
        "holes stay holes on the way"
    );
    let restored = reports[1].backups.as_ref().unwrap();
    assert_eq!(
        (restored.restored_seq, restored.error.as_deref()),
        (Some(1), None)
    );
}

/// Without `migrate_to.backups` (a destination too old for them) the
/// backups stay with the tail that took them, which deletes them at the
/// handover (the brain marks them lost); a restore then fails cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_not_sent_along_are_dropped_at_the_handover() {
    logs();
    let (dir, reports) = migrate_a_backed_up_disc(false).await;
    assert!(taken(&reports[0]).is_empty());
    assert!(!dir.path().join("b/sata1/backups/sata.7/b1.raw").exists());
    let error = reports[1].backups.as_ref().unwrap().error.clone().unwrap();
    assert!(error.contains("no backup \"b1\""), "{error}");
}

/// A disc grown since its backup keeps its new size when restored: the
/// backup's content, then zeroes (holes) to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_keeps_the_discs_grown_size() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let OneTail {
        server: _server,
        _events,
        port: _,
        t,
        h,
        url,
    } = one_tail(&root).await;
    io(
        &url,
        &["write -P 0x21 0 4096", "write -P 0x22 62914560 4096"],
    )
    .await;
    h.update(order(spec(keep(&["b1"], None))), 2).await.unwrap();
    let mut grown = spec(keep(&["b1"], None));
    grown.size = 96;
    h.update(order(grown.clone()), 3).await.unwrap();
    io(
        &url,
        &["write -P 0x23 83886080 4096", "write -P 0x24 0 4096"],
    )
    .await;
    grown.backups = keep(&["b1"], Some((1, "b1")));
    h.update(order(grown), 4).await.unwrap();
    let file = root.join("sata1/7.raw");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 96 * MIB);
    io(
        &url,
        &[
            "read -P 0x21 0 4096",
            "read -P 0x22 62914560 4096",
            "read -P 0 83886080 4096",
        ],
    )
    .await;
    assert!(
        allocated_bytes(&file) <= 64 * 1024,
        "only the backup's data is allocated"
    );
    t.stop().await;
}

/// An XFS filesystem (it shares extents: `FICLONE` works) on a loop
/// device, mounted under a temporary folder; unmounted when dropped.
struct XfsMount {
    mnt: std::path::PathBuf,
}

impl XfsMount {
    fn new(under: &std::path::Path, mib: u64) -> XfsMount {
        let image = under.join("xfs.img");
        let mnt = under.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib * MIB)
            .unwrap();
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
            assert!(
                out.status.success(),
                "{cmd:?} (this test needs xfsprogs and loop devices: tools/setup-host.sh): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(std::process::Command::new("mkfs.xfs").arg("-q").arg(&image));
        run(std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt));
        XfsMount { mnt }
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
    }
}

fn free_bytes(path: &std::path::Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    st.blocks_available() as u64 * st.fragment_size() as u64
}

/// Where the filesystem shares extents (XFS here), a backup and a restore
/// are clones: a backup takes no room, and the disc's later writes do not
/// reach it (copy on write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_xfs_backups_and_restores_are_clones() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let xfs = XfsMount::new(dir.path(), 512);
    let root = xfs.mnt.join("tail");
    let OneTail {
        server,
        _events,
        t,
        h,
        url,
        ..
    } = one_tail(&root).await;
    io(&url, &["write -P 0xaa 0 48M"]).await;
    let free_before = free_bytes(&xfs.mnt);

    h.update(order(spec(keep(&["b1"], None))), 2).await.unwrap();
    wait_disc(&server, "tail1", DISC, "b1 reported", |d| {
        d.is_some_and(|d| taken(d) == ["b1"])
    })
    .await;
    let used = free_before.saturating_sub(free_bytes(&xfs.mnt));
    assert!(
        used < 4 * MIB,
        "a cloned backup shares the disc's 48 MiB: {used} bytes used"
    );
    let backup = root.join("sata1/backups/sata.7/b1.raw");
    io(&url, &["write -P 0xcc 0 48M"]).await;
    assert_eq!(read_at(&backup, 0, 4096), vec![0xaa; 4096]);
    assert_eq!(read_at(&backup, 47 * MIB, 4096), vec![0xaa; 4096]);

    let free_before = free_bytes(&xfs.mnt);
    restore_b1(&h, &server).await;
    io(&url, &["read -P 0xaa 0 48M"]).await;
    // The restore dropped the disc's own 48 MiB and shares the backup's.
    assert!(
        free_bytes(&xfs.mnt) + 4 * MIB > free_before + 40 * MIB,
        "a cloned restore frees the overwritten data"
    );
    t.stop().await;
}
