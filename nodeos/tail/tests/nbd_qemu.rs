//! Our NBD server against the real clients: qemu-io and qemu-img.

mod common;

use common::*;

/// Offsets spread over the disc, some unaligned, including the last bytes.
fn offsets(size: u64) -> Vec<u64> {
    vec![
        0,
        8192 + 512,
        16384 + 17,
        65536,
        MIB - 100,
        3 * MIB + 4095,
        10 * MIB,
        31 * MIB + 1234,
        size - 4096,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_patterns_at_many_offsets_land_in_the_file() {
    let size = 32 * MIB;
    let (_dir, path) = sparse_file(size);
    let server = serve(&path, &["127.0.0.1"], false).await;
    let mut cmds = vec![];
    for (i, off) in offsets(size).into_iter().enumerate() {
        let pattern = 0x11 * (i as u64 % 15 + 1);
        cmds.push(format!("write -P {pattern:#x} {off} 4096"));
    }
    let (ok, out) = qemu_io(&url(&server), &cmds).await;
    assert!(ok, "{out}");
    // What qemu wrote is in the file, byte for byte, and nothing else is.
    for (i, off) in offsets(size).into_iter().enumerate() {
        let pattern = (0x11 * (i as u64 % 15 + 1)) as u8;
        let got = read_at(&path, off, 4096);
        assert!(got.iter().all(|b| *b == pattern), "offset {off}");
    }
    assert!(read_at(&path, 2 * MIB, 4096).iter().all(|b| *b == 0));

    // And what is in the file is what qemu reads, checked by qemu itself.
    let mut cmds = vec![];
    for (i, off) in offsets(size).into_iter().enumerate() {
        let pattern = 0x11 * (i as u64 % 15 + 1);
        cmds.push(format!("read -P {pattern:#x} {off} 4096"));
    }
    cmds.push(format!("read -P 0 {} 4096", 2 * MIB));
    let (ok, out) = qemu_io(&url(&server), &cmds).await;
    assert!(ok, "{out}");
    // A wrong pattern is noticed (so the check above can fail).
    let (ok, out) = qemu_io(&url(&server), &["read -P 0x99 0 4096".into()]).await;
    assert!(!ok && out.contains("Pattern verification failed"), "{out}");

    // Large and FUA writes too.
    let (ok, out) = qemu_io(
        &url(&server),
        &[
            "write -P 0x5a 16M 8M".into(),
            "write -f -P 0x6b 24M 1M".into(),
            "flush".into(),
            "read -P 0x5a 16M 8M".into(),
            "read -P 0x6b 24M 1M".into(),
        ],
    )
    .await;
    assert!(ok, "{out}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_and_write_zeroes_make_the_file_sparse_and_qemu_img_map_sees_holes() {
    let size = 64 * MIB;
    let (_dir, path) = sparse_file(size);
    let server = serve(&path, &["127.0.0.1"], false).await;
    assert_eq!(allocated_bytes(&path), 0);
    let (ok, out) = qemu_io(
        &url(&server),
        &[
            "write -P 0xab 0 4M".into(),
            "write -P 0xcd 8M 4M".into(),
            "write -P 0xef 20M 1M".into(),
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert!(allocated_bytes(&path) >= 9 * MIB);

    let map = qemu_img(&["map", "--output=json", &url(&server)]).await;
    let extents: Vec<serde_json::Value> = serde_json::from_str(&map).unwrap();
    let data: Vec<(u64, u64)> = extents
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        data,
        [(0, 4 * MIB), (8 * MIB, 4 * MIB), (20 * MIB, MIB)],
        "{map}"
    );
    assert!(
        extents
            .iter()
            .any(|e| e["data"] == false && e["zero"] == true),
        "{map}"
    );

    // Discard punches holes; write -z -u (zeroes, may unmap) does too.
    let (ok, out) = qemu_io(
        &url(&server),
        &[
            "discard 0 4M".into(),
            "write -z -u 8M 4M".into(),
            "read -P 0 0 4M".into(),
            "read -P 0 8M 4M".into(),
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert_eq!(allocated_bytes(&path), MIB, "only the 20M extent remains");

    // write -z without -u must keep the range allocated (NO_HOLE).
    let (ok, out) = qemu_io(&url(&server), &["write -z 40M 1M".into()]).await;
    assert!(ok, "{out}");
    assert_eq!(allocated_bytes(&path), 2 * MIB);
    assert!(
        read_at(&path, 40 * MIB, MIB as usize)
            .iter()
            .all(|b| *b == 0)
    );

    let map = qemu_img(&["map", "--output=json", &url(&server)]).await;
    let extents: Vec<serde_json::Value> = serde_json::from_str(&map).unwrap();
    let first = &extents[0];
    assert_eq!(first["data"], false, "{map}");
    assert_eq!(first["length"].as_u64().unwrap(), 20 * MIB, "{map}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_convert_copies_a_disc_out_sparsely() {
    let size = 16 * MIB;
    let (dir, path) = sparse_file(size);
    let server = serve(&path, &["127.0.0.1"], true).await;
    std::process::Command::new("dd")
        .args([
            "if=/dev/urandom",
            &format!("of={}", path.display()),
            "bs=1M",
            "count=2",
            "seek=5",
            "conv=notrunc",
        ])
        .output()
        .unwrap();
    let copy = dir.path().join("copy.raw");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &url(&server),
        copy.to_str().unwrap(),
    ])
    .await;
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&path).unwrap());
    assert!(allocated_bytes(&copy) <= 3 * MIB, "the copy kept the holes");
    // A read-only export refuses writes through qemu.
    let (ok, out) = qemu_io(&url(&server), &["write -P 1 0 4096".into()]).await;
    assert!(!ok, "{out}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_refuses_unlisted_and_empty_lists() {
    let (_dir, path) = sparse_file(MIB);
    let server = serve(&path, &[], false).await;
    let (ok, out) = qemu_io(&url(&server), &["read 0 512".into()]).await;
    assert!(!ok, "empty ACL must deny: {out}");
    server.stop().await;
    let server = serve(&path, &["192.0.2.7"], false).await;
    let (ok, out) = qemu_io(&url(&server), &["read 0 512".into()]).await;
    assert!(!ok, "unlisted peer must be denied: {out}");
    server.stop().await;
}
