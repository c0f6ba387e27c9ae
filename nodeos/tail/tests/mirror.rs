//! Live migration tail → tail while a qemu client keeps writing: the
//! client never sees an error, the destination ends up with exactly what
//! the client last wrote and the same allocation, and a failed migration
//! leaves the source serving.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bigv_spine::resource::{DiscSpec, IncomingMirror, MigrationOrder, MigrationState};
use bigv_spine::{NodeHandle, Resource, SpineServer};
use bigv_tail::nbd::Export;
use common::tail::*;
use common::*;

const DISC: &str = "disc.sata.9";
const SIZE: u64 = 128 * MIB;
const BLOCK: u64 = 64 << 10;
const DISC_ADDR: &str = "127.0.3.1";
const TAIL_A: &str = "127.0.1.1";
const TAIL_B: &str = "127.0.2.1";

fn spec() -> DiscSpec {
    DiscSpec {
        size: SIZE / MIB,
        storage_pool: "sata1".into(),
        access_control_list: vec!["127.0.0.1".into()],
        address: DISC_ADDR.into(),
        ..Default::default()
    }
}

/// What the disc should hold: one pattern byte per 64 KiB block, 0 = hole.
struct Model(Vec<u8>);

impl Model {
    fn apply_write(&mut self, block: u64, pattern: u8) {
        self.0[block as usize] = pattern;
    }

    fn apply_discard(&mut self, block: u64) {
        self.0[block as usize] = 0;
    }

    /// Checks a file byte for byte, and that allocation is exactly the
    /// written blocks.
    fn check(&self, path: &std::path::Path) {
        let data = std::fs::read(path).unwrap();
        assert_eq!(data.len() as u64, SIZE);
        for (b, want) in self.0.iter().enumerate() {
            let got = &data[b * BLOCK as usize..(b + 1) * BLOCK as usize];
            assert!(
                got.iter().all(|x| x == want),
                "block {b}: want {want:#x}, found {:#x}",
                got[0]
            );
        }
        let export = Export::open("check", path, true).unwrap();
        let allocated: Vec<u64> = export
            .data_ranges(0, SIZE)
            .unwrap()
            .into_iter()
            .flat_map(|(off, len)| (off / BLOCK)..((off + len) / BLOCK))
            .collect();
        let expected: Vec<u64> = (0..self.0.len() as u64)
            .filter(|b| self.0[*b as usize] != 0)
            .collect();
        assert_eq!(allocated, expected, "allocation differs");
    }
}

/// qemu-io with reconnection, as a head's qemu would connect.
fn image_opts(port: u16) -> String {
    format!(
        "driver=raw,file.driver=nbd,file.server.type=inet,file.server.host={DISC_ADDR},\
         file.server.port={port},file.export={DISC},file.reconnect-delay=30"
    )
}

async fn qemu_io_opts(port: u16, cmds: &[String]) -> String {
    // qemu reconnects (reconnect-delay) once connected, but its first
    // connection is not retried: a qemu-io started in the moment between
    // the source letting go of the address and the destination serving
    // it is refused before it does anything. A head's qemu is already
    // connected then; the test's writer, starting a qemu-io per round,
    // tries that open again.
    let mut tries = 0;
    let (out, text) = loop {
        let mut cmd = tokio::process::Command::new("qemu-io");
        cmd.args(["--image-opts", &image_opts(port)]);
        for c in cmds {
            cmd.args(["-c", c]);
        }
        let out = cmd.output().await.unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tries += 1;
        if tries < 50 && text.contains("can't open") && text.contains("Connection refused") {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        break (out, text);
    };
    assert!(out.status.success(), "qemu-io failed: {text}");
    assert!(
        !text.contains("failed") && !text.contains("rror"),
        "the client saw an error: {text}"
    );
    text
}

async fn two_tails(
    server: &SpineServer,
    dir: &std::path::Path,
) -> (TestTail, TestTail, NodeHandle, NodeHandle, u16) {
    let port = free_port();
    let addr = server.local_addr().to_string();
    let a = TestTail::start(&addr, "tail-a", dir.join("a"), ip(TAIL_A), port).await;
    let b = TestTail::start(&addr, "tail-b", dir.join("b"), ip(TAIL_B), port).await;
    let ha = handle(server, "tail-a").await;
    let hb = handle(server, "tail-b").await;
    (a, b, ha, hb, port)
}

/// Creates the destination and returns its mirror endpoint.
async fn destination(server: &SpineServer, hb: &NodeHandle, generation: u64) -> String {
    let mut s = spec();
    s.incoming = Some(IncomingMirror {
        from: TAIL_A.into(),
        endpoint: None,
    });
    hb.create(Resource::disc("sata", "9", s), generation)
        .await
        .unwrap();
    let d = wait_disc(server, "tail-b", DISC, "an incoming endpoint", |d| {
        d.is_some_and(|d| d.incoming.as_ref().is_some_and(|i| i.endpoint.is_some()))
    })
    .await
    .unwrap();
    d.incoming.unwrap().endpoint.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_under_writes_hands_over_exact_content_and_allocation() {
    logs();
    let (server, _events) = spine().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b, ha, hb, port) = two_tails(&server, dir.path()).await;
    ha.create(Resource::disc("sata", "9", spec()), 1)
        .await
        .unwrap();

    // Initial content: 48 MiB of data in runs, with holes between.
    let mut model = Model(vec![0; (SIZE / BLOCK) as usize]);
    let mut cmds = vec![];
    for run in 0..12u64 {
        let first = run * 160;
        let pattern = (run + 1) as u8;
        cmds.push(format!("write -P {pattern} {} 4M", first * BLOCK));
        for blk in first..first + 64 {
            model.apply_write(blk, pattern);
        }
    }
    qemu_io_opts(port, &cmds).await;

    // A writer that keeps going through the migration.
    let migrated = Arc::new(AtomicBool::new(false));
    let model = Arc::new(std::sync::Mutex::new(model));
    let writer = {
        let migrated = migrated.clone();
        let model = model.clone();
        tokio::spawn(async move {
            let mut rounds_after = 0;
            let mut round = 0u64;
            while rounds_after < 2 {
                if migrated.load(Ordering::SeqCst) {
                    rounds_after += 1;
                }
                let mut cmds = vec![];
                let mut ops = vec![];
                for i in 0..24u64 {
                    let n = round * 24 + i;
                    let blk = (n * 7919) % (SIZE / BLOCK);
                    if n % 7 == 3 {
                        cmds.push(format!("discard {} 64k", blk * BLOCK));
                        ops.push((blk, 0u8));
                    } else if n % 5 == 1 && blk + 4 <= SIZE / BLOCK {
                        // 256 KiB: the server's splice path.
                        let pattern = (n % 200 + 20) as u8;
                        cmds.push(format!("write -P {pattern} {} 256k", blk * BLOCK));
                        ops.extend((blk..blk + 4).map(|b| (b, pattern)));
                    } else {
                        let pattern = (n % 200 + 20) as u8;
                        cmds.push(format!("write -P {pattern} {} 64k", blk * BLOCK));
                        ops.push((blk, pattern));
                    }
                }
                cmds.push("flush".into());
                qemu_io_opts(port, &cmds).await;
                let mut m = model.lock().unwrap();
                for (blk, p) in ops {
                    if p == 0 {
                        m.apply_discard(blk);
                    } else {
                        m.apply_write(blk, p);
                    }
                }
                round += 1;
            }
            round
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let endpoint = destination(&server, &hb, 1).await;
    let mut order = spec();
    order.migrate_to = Some(MigrationOrder {
        seq: 1,
        to: "tail-b".into(),
        endpoint,
        backups: false,
    });
    ha.update(Resource::disc("sata", "9", order), 2)
        .await
        .unwrap();

    // The source reports progress, then hands over and forgets the disc.
    wait_disc(&server, "tail-a", DISC, "progress or the handover", |d| {
        d.is_none_or(|d| d.migration.is_some())
    })
    .await;
    wait_disc(&server, "tail-a", DISC, "the source to let go", |d| {
        d.is_none()
    })
    .await;
    let d = wait_disc(&server, "tail-b", DISC, "the destination to serve", |d| {
        d.is_some_and(|d| d.incoming.is_none())
    })
    .await
    .unwrap();
    assert_eq!(d.access_control_list, ["127.0.0.1"]);
    assert!(!dir.path().join("a/sata1/9.raw").exists(), "source deleted");
    migrated.store(true, Ordering::SeqCst);
    let rounds = writer.await.unwrap();
    assert!(rounds >= 3, "the writer ran {rounds} rounds");
    assert!(b.agent.serving_at(&DISC.parse().unwrap()).await.is_some());

    // Everything the client wrote, before, during and after, is on B.
    model
        .lock()
        .unwrap()
        .check(&dir.path().join("b/sata1/9.raw"));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_migrations_leave_the_source_serving() {
    logs();
    let (server, _events) = spine().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b, ha, hb, port) = two_tails(&server, dir.path()).await;
    ha.create(Resource::disc("sata", "9", spec()), 1)
        .await
        .unwrap();
    qemu_io_opts(port, &["write -P 7 0 1M".into()]).await;

    // Nobody listens at the endpoint.
    let dead = format!("{TAIL_B}:{}", free_port());
    let mut order = spec();
    order.migrate_to = Some(MigrationOrder {
        seq: 1,
        to: "tail-b".into(),
        endpoint: dead,
        backups: false,
    });
    ha.update(Resource::disc("sata", "9", order.clone()), 2)
        .await
        .unwrap();
    let d = wait_disc(&server, "tail-a", DISC, "a failure", |d| {
        d.is_some_and(|d| {
            d.migration
                .as_ref()
                .is_some_and(|m| m.state == MigrationState::Failed)
        })
    })
    .await
    .unwrap();
    let m = d.migration.unwrap();
    assert_eq!((m.seq, m.to.as_str()), (1, "tail-b"));
    assert!(m.error.unwrap().contains("destination"));
    qemu_io_opts(port, &["read -P 7 0 1M".into(), "write -P 8 1M 1M".into()]).await;

    // The same seq again is not retried; a destination of the wrong size
    // fails the next seq, and the source still serves.
    ha.update(Resource::disc("sata", "9", order.clone()), 3)
        .await
        .unwrap();
    let mut small = spec();
    small.size = 64;
    small.incoming = Some(IncomingMirror {
        from: TAIL_A.into(),
        endpoint: None,
    });
    hb.create(Resource::disc("sata", "9", small), 1)
        .await
        .unwrap();
    let endpoint = wait_disc(&server, "tail-b", DISC, "endpoint", |d| {
        d.is_some_and(|d| d.incoming.as_ref().is_some_and(|i| i.endpoint.is_some()))
    })
    .await
    .unwrap()
    .incoming
    .unwrap()
    .endpoint
    .unwrap();
    order.migrate_to = Some(MigrationOrder {
        seq: 2,
        to: "tail-b".into(),
        endpoint,
        backups: false,
    });
    ha.update(Resource::disc("sata", "9", order), 4)
        .await
        .unwrap();
    let d = wait_disc(&server, "tail-a", DISC, "the second failure", |d| {
        d.is_some_and(|d| {
            d.migration
                .as_ref()
                .is_some_and(|m| m.seq == 2 && m.state == MigrationState::Failed)
        })
    })
    .await
    .unwrap();
    assert!(
        d.migration.unwrap().error.unwrap().contains("bytes"),
        "size mismatch named"
    );
    qemu_io_opts(port, &["read -P 8 1M 1M".into()]).await;
    assert!(
        b.agent.serving_at(&DISC.parse().unwrap()).await.is_none(),
        "the destination never served"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imaged_disc_keeps_its_content_after_moving_and_is_not_imaged_again() {
    logs();
    let (server, _events) = spine().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b, ha, hb, port) = two_tails(&server, dir.path()).await;
    // The same template on both tails, as every tail holds the images.
    for t in ["a", "b"] {
        std::fs::write(
            dir.path().join(t).join("images/tiny.raw"),
            vec![0x11u8; 1 << 20],
        )
        .unwrap();
    }
    let template = Some(bigv_spine::resource::TemplateCopy {
        seq: 1,
        image: "tiny".into(),
    });
    let imaged = DiscSpec {
        template: template.clone(),
        ..spec()
    };
    ha.create(Resource::disc("sata", "9", imaged.clone()), 1)
        .await
        .unwrap();
    wait_disc(&server, "tail-a", DISC, "the template copy", |d| {
        d.is_some_and(|d| d.imaged_seq == Some(1))
    })
    .await;
    // The customer's data over the template.
    qemu_io_opts(port, &["write -P 0x77 0 64k".to_string()]).await;

    // The brain creates the destination with the disc's template order.
    let mut dest = imaged.clone();
    dest.incoming = Some(IncomingMirror {
        from: TAIL_A.into(),
        endpoint: None,
    });
    hb.create(Resource::disc("sata", "9", dest), 1)
        .await
        .unwrap();
    let d = wait_disc(&server, "tail-b", DISC, "an incoming endpoint", |d| {
        d.is_some_and(|d| d.incoming.as_ref().is_some_and(|i| i.endpoint.is_some()))
    })
    .await
    .unwrap();
    let mut order = imaged.clone();
    order.migrate_to = Some(MigrationOrder {
        seq: 1,
        to: "tail-b".into(),
        endpoint: d.incoming.unwrap().endpoint.unwrap(),
        backups: false,
    });
    ha.update(Resource::disc("sata", "9", order), 2)
        .await
        .unwrap();
    let d = wait_disc(&server, "tail-b", DISC, "the destination to serve", |d| {
        d.is_some_and(|d| d.incoming.is_none())
    })
    .await
    .unwrap();
    assert_eq!(
        d.imaged_seq,
        Some(1),
        "the mirror brought the imaged content"
    );

    // The brain's next order carries the same template: nothing is copied.
    hb.update(Resource::disc("sata", "9", imaged), 3)
        .await
        .unwrap();
    let path = dir.path().join("b/sata1/9.raw");
    assert_eq!(read_at(&path, 0, 4), [0x77; 4], "the customer's data");
    assert_eq!(
        read_at(&path, 1 << 16, 4),
        [0x11; 4],
        "the template beneath"
    );
    a.stop().await;
    b.stop().await;
}
