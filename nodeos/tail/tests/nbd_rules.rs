//! Who may connect, and how requests outside the rules are answered. Two
//! "heads" are 127.0.0.1 and 127.0.0.2: qemu cannot choose its source
//! address, so these tests speak through our own client, which can.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bigv_tail::acl::Acl;
use bigv_tail::nbd::{ClientError, NbdClient};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HEAD_A: &str = "127.0.0.1";
const HEAD_B: &str = "127.0.0.2";

async fn connect(addr: SocketAddr, from: &str) -> Result<NbdClient, ClientError> {
    NbdClient::connect(addr, Some(ip(from)), "disc.sata.1").await
}

#[tokio::test]
async fn unlisted_peer_is_closed_before_negotiation() {
    let (_dir, path) = sparse_file(MIB);
    let server = serve(&path, &[HEAD_A], false).await;
    let err = connect(server.local_addr(), HEAD_B).await.err().unwrap();
    assert!(matches!(err, ClientError::Closed { .. }), "{err}");
    assert!(connect(server.local_addr(), HEAD_A).await.is_ok());
    server.stop().await;
}

#[tokio::test]
async fn a_second_head_is_refused_unless_the_acl_lists_it_too() {
    let (_dir, path) = sparse_file(MIB);
    let server = serve(&path, &[HEAD_A], false).await;
    let mut a = connect(server.local_addr(), HEAD_A).await.unwrap();
    a.write(0, b"from a", true).await.unwrap();
    let err = connect(server.local_addr(), HEAD_B).await.err().unwrap();
    assert!(matches!(err, ClientError::Closed { .. }), "{err}");
    assert_eq!(server.clients(), vec![ip(HEAD_A)]);
    assert_eq!(a.read(0, 6).await.unwrap(), b"from a");
    server.stop().await;
}

#[tokio::test]
async fn two_listed_heads_share_the_disc_during_a_handover() {
    let (_dir, path) = sparse_file(MIB);
    let server = serve(&path, &[HEAD_A, HEAD_B], false).await;
    let mut a = connect(server.local_addr(), HEAD_A).await.unwrap();
    a.write(0, b"from a", true).await.unwrap();
    // A live migration's destination opens the disc while the source
    // still holds it.
    let mut b = connect(server.local_addr(), HEAD_B).await.unwrap();
    assert_eq!(b.read(0, 6).await.unwrap(), b"from a");
    b.write(0, b"from b", true).await.unwrap();
    assert_eq!(a.read(0, 6).await.unwrap(), b"from b");
    assert_eq!(server.clients(), vec![ip(HEAD_A), ip(HEAD_B)]);
    // The handover ends: the brain lists B only and A is cut off.
    server.set_acl(Acl::parse(&[HEAD_B]).unwrap());
    assert!(
        tokio::time::timeout(Duration::from_secs(5), a.closed_by_server())
            .await
            .unwrap()
    );
    assert_eq!(b.read(0, 6).await.unwrap(), b"from b");
    for _ in 0..50 {
        if server.clients() == vec![ip(HEAD_B)] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.clients(), vec![ip(HEAD_B)]);
    assert_eq!(server.client(), Some(ip(HEAD_B)));
    server.stop().await;
}

#[tokio::test]
async fn same_head_reconnecting_replaces_its_old_connection() {
    let (_dir, path) = sparse_file(MIB);
    let server = serve(&path, &[HEAD_A, HEAD_B], false).await;
    let mut old = connect(server.local_addr(), HEAD_A).await.unwrap();
    old.write(0, b"old", false).await.unwrap();
    let mut new = connect(server.local_addr(), HEAD_A).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), old.closed_by_server())
            .await
            .unwrap(),
        "the old connection is closed"
    );
    new.write(0, b"new", true).await.unwrap();
    assert_eq!(new.read(0, 3).await.unwrap(), b"new");
    // One connection per address: A holds one, not two.
    assert_eq!(server.clients(), vec![ip(HEAD_A)]);
    server.stop().await;
}

#[tokio::test]
async fn acl_change_disconnects_a_client_no_longer_listed() {
    let (_dir, path) = sparse_file(MIB);
    let server = serve(&path, &[HEAD_A], false).await;
    let mut a = connect(server.local_addr(), HEAD_A).await.unwrap();
    a.write(0, b"x", false).await.unwrap();
    // Adding B leaves A alone.
    server.set_acl(Acl::parse(&[HEAD_A, HEAD_B]).unwrap());
    a.write(0, b"y", false).await.unwrap();
    // Moving the disc to B (the VM moved to another head) cuts A off.
    server.set_acl(Acl::parse(&[HEAD_B]).unwrap());
    assert!(
        tokio::time::timeout(Duration::from_secs(5), a.closed_by_server())
            .await
            .unwrap()
    );
    let err = connect(server.local_addr(), HEAD_A).await.err().unwrap();
    assert!(matches!(err, ClientError::Closed { .. }), "{err}");
    let mut b = None;
    for _ in 0..50 {
        if let Ok(c) = connect(server.local_addr(), HEAD_B).await {
            b = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.unwrap().read(0, 1).await.unwrap(), b"y");
    server.stop().await;
}

#[tokio::test]
async fn out_of_range_and_read_only_get_the_right_errors() {
    let (_dir, path) = sparse_file(MIB);
    let server = serve(&path, &[HEAD_A], false).await;
    let mut c = connect(server.local_addr(), HEAD_A).await.unwrap();
    assert_eq!(c.size(), MIB);
    let errno = |e: ClientError| match e {
        ClientError::Request { errno, .. } => errno,
        other => panic!("expected an error reply, got {other}"),
    };
    assert_eq!(errno(c.read(MIB - 1, 2).await.unwrap_err()), 22); // EINVAL
    assert_eq!(errno(c.write(MIB, b"z", false).await.unwrap_err()), 28); // ENOSPC
    assert_eq!(errno(c.trim(MIB - 512, 1024).await.unwrap_err()), 22);
    assert_eq!(
        errno(c.write_zeroes(u64::MAX - 10, 100, false).await.unwrap_err()),
        28
    );
    // The connection survives error replies.
    c.write(MIB - 1, b"z", false).await.unwrap();
    assert_eq!(c.read(MIB - 1, 1).await.unwrap(), b"z");
    c.disconnect().await.unwrap();
    server.stop().await;

    let server = serve(&path, &[HEAD_A], true).await;
    let mut c = connect(server.local_addr(), HEAD_A).await.unwrap();
    assert!(c.read_only());
    assert_eq!(errno(c.write(0, b"z", false).await.unwrap_err()), 1); // EPERM
    assert_eq!(errno(c.trim(0, 512).await.unwrap_err()), 1);
    assert_eq!(errno(c.write_zeroes(0, 512, true).await.unwrap_err()), 1);
    assert_eq!(c.read(MIB - 1, 1).await.unwrap(), b"z");
    c.flush().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_malformed_request_closes_only_its_connection() {
    let (_dir, path) = sparse_file(MIB);
    let (_dir2, path2) = sparse_file(MIB);
    let server = serve(&path, &[HEAD_A], false).await;
    let other = serve(&path2, &[HEAD_A], false).await;
    let mut healthy = connect(other.local_addr(), HEAD_A).await.unwrap();
    healthy.write(0, b"ok", false).await.unwrap();

    // Negotiate by hand, then send a request with a bad magic.
    let mut raw = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let mut greeting = [0u8; 18];
    raw.read_exact(&mut greeting).await.unwrap();
    raw.write_all(&3u32.to_be_bytes()).await.unwrap();
    let mut go = vec![];
    go.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
    go.extend_from_slice(&7u32.to_be_bytes());
    go.extend_from_slice(&6u32.to_be_bytes());
    go.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    raw.write_all(&go).await.unwrap();
    let mut replies = vec![0u8; 2 * 20 + 12];
    raw.read_exact(&mut replies).await.unwrap();
    raw.write_all(&[0xde; 28]).await.unwrap();
    let mut rest = vec![];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "closed without a reply");

    // The other disc's client and a fresh client of this disc are fine.
    assert_eq!(healthy.read(0, 2).await.unwrap(), b"ok");
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = connect(server.local_addr(), HEAD_A).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    again.unwrap().write(0, b"fine", true).await.unwrap();
    server.stop().await;
    other.stop().await;
}

#[tokio::test]
async fn handover_is_only_accepted_where_a_mirror_is_expected() {
    use bigv_tail::nbd::server::{HandoverRequest, ServeOptions};
    use std::sync::Arc;

    let (_dir, path) = sparse_file(MIB);
    // A normal disc refuses the private command.
    let server = serve(&path, &[HEAD_A], false).await;
    let mut c = connect(server.local_addr(), HEAD_A).await.unwrap();
    match c.handover().await {
        Err(ClientError::Request { errno, .. }) => assert_eq!(errno, 22),
        other => panic!("expected EINVAL, got {other:?}"),
    }
    c.write(0, b"still fine", true).await.unwrap();
    c.disconnect().await.unwrap();
    server.stop().await;

    // A mirror destination passes it to the agent, which may refuse...
    let export = Arc::new(bigv_tail::nbd::Export::open("disc.sata.1", &path, false).unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<HandoverRequest>(1);
    let server = bigv_tail::nbd::DiscServer::start_with(
        export,
        "127.0.0.1:0".parse().unwrap(),
        Acl::parse(&[HEAD_A]).unwrap(),
        ServeOptions {
            handover: Some(tx),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let agent = tokio::spawn(async move {
        let first = rx.recv().await.unwrap();
        first.reply.send(Err("not ready".into())).unwrap();
        let second = rx.recv().await.unwrap();
        second.reply.send(Ok(())).unwrap();
    });
    let mut c = connect(server.local_addr(), HEAD_A).await.unwrap();
    match c.handover().await {
        Err(ClientError::Request { errno, .. }) => assert_eq!(errno, 5),
        other => panic!("expected EIO, got {other:?}"),
    }
    // ...or commit.
    c.handover().await.unwrap();
    agent.await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pipelining_large_writes_past_the_buffer_budget_completes() {
    use bigv_tail::nbd::protocol::Command;
    // 8 × 32 MiB in flight is twice the per-connection buffer budget: the
    // server must slow the client down, not stall or fail.
    let (_dir, path) = sparse_file(256 * MIB);
    let server = serve(&path, &[HEAD_A], false).await;
    let mut c = connect(server.local_addr(), HEAD_A).await.unwrap();
    let chunk = vec![0x3cu8; 32 << 20];
    for i in 0..8u64 {
        c.submit(Command::Write, 0, i * (32 << 20), 32 << 20, Some(&chunk))
            .await
            .unwrap();
    }
    for _ in 0..8 {
        c.complete().await.unwrap();
    }
    assert_eq!(c.read(255 * MIB, 4).await.unwrap(), [0x3c; 4]);
    c.disconnect().await.unwrap();
    server.stop().await;
}
