//! The TFTP server on loopback against real clients (Debian's tftp-hpa and
//! curl) and a raw client in this file for what those cannot do
//! (windowsize, loss, block-number rollover, refusals by error code).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bigv_pxe::tftp::packet::{self, Mode, Request, RequestKind};
use bigv_pxe::tftp::{TftpConfig, TftpServer, TftpSource};
use bytes::Bytes;
use tokio::net::UdpSocket;

fn pseudo_random(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

struct Fixture {
    addr: SocketAddr,
    root: tempfile::TempDir,
    _outside: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Fixture {
    fn file(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.root.path().join(name)).unwrap()
    }
}

async fn start(source: Option<TftpSource>) -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::write(r.join("undionly.kpxe"), pseudo_random(100_000, 1)).unwrap();
    std::fs::write(r.join("exact"), pseudo_random(512 * 4, 2)).unwrap();
    std::fs::write(r.join("empty"), b"").unwrap();
    std::fs::write(r.join("big"), pseudo_random(8 * 70_000 + 3, 3)).unwrap();
    std::fs::create_dir(r.join("sub")).unwrap();
    std::fs::write(r.join("sub/file"), b"in a subdirectory").unwrap();
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink("undionly.kpxe", r.join("in")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), r.join("out")).unwrap();
    std::os::unix::fs::symlink(outside.path(), r.join("outdir")).unwrap();

    let mut config = TftpConfig::new("127.0.0.1:0".parse().unwrap());
    config.timeout = Duration::from_millis(500);
    let source = source.unwrap_or_else(|| TftpSource::Directory(r.to_path_buf()));
    let server = TftpServer::bind(config, source).unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    Fixture {
        addr,
        root,
        _outside: outside,
        stop: Some(stop),
    }
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("running {cmd:?}: {e} (tftp-hpa and curl: tools/setup-host.sh installs them)")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_fetches_files() {
    let f = start(None).await;
    let out = tempfile::tempdir().unwrap();
    for name in ["undionly.kpxe", "exact", "empty", "sub/file", "in"] {
        let dest = out.path().join(name.replace('/', "_"));
        let (addr, dest2) = (f.addr, dest.clone());
        let name2 = name.to_string();
        let o = tokio::task::spawn_blocking(move || {
            run(Command::new("tftp")
                .args([
                    "-m",
                    "binary",
                    "127.0.0.1",
                    &addr.port().to_string(),
                    "-c",
                    "get",
                ])
                .arg(&name2)
                .arg(&dest2))
        })
        .await
        .unwrap();
        let got = std::fs::read(&dest).unwrap_or_default();
        let want = f.file(name);
        assert_eq!(
            got.len(),
            want.len(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        assert!(got == want, "{name}: contents differ");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_cannot_escape_or_write() {
    let f = start(None).await;
    let out = tempfile::tempdir().unwrap();
    for name in [
        "../secret",
        "/etc/passwd",
        "out",
        "outdir/secret",
        "sub/../../secret",
    ] {
        let (addr, dest) = (f.addr, out.path().join("x"));
        let name2 = name.to_string();
        let o = tokio::task::spawn_blocking(move || {
            run(Command::new("tftp")
                .args([
                    "-m",
                    "binary",
                    "127.0.0.1",
                    &addr.port().to_string(),
                    "-c",
                    "get",
                ])
                .arg(&name2)
                .arg(&dest))
        })
        .await
        .unwrap();
        let text =
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        assert!(text.contains("Error code 2"), "{name}: {text}");
        let got = std::fs::read(out.path().join("x")).unwrap_or_default();
        assert!(got.is_empty(), "{name}: got {} bytes", got.len());
    }
    // put is refused, and nothing appears in the root.
    let src = out.path().join("upload");
    std::fs::write(&src, b"data").unwrap();
    let addr = f.addr;
    let o = tokio::task::spawn_blocking(move || {
        run(Command::new("tftp")
            .args([
                "-m",
                "binary",
                "127.0.0.1",
                &addr.port().to_string(),
                "-c",
                "put",
            ])
            .arg(&src)
            .arg("upload"))
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(text.contains("Error code 2"), "put: {text}");
    assert!(!f.root.path().join("upload").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_with_blksize_and_tsize() {
    let f = start(None).await;
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("ipxe");
    let url = format!("tftp://127.0.0.1:{}/undionly.kpxe", f.addr.port());
    let dest2 = dest.clone();
    let o = tokio::task::spawn_blocking(move || {
        run(Command::new("curl")
            .args(["-sS", "--tftp-blksize", "1432", "-o"])
            .arg(&dest2)
            .arg(&url))
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&dest).unwrap() == f.file("undionly.kpxe"));
    // A missing file is a clean failure.
    let url = format!("tftp://127.0.0.1:{}/missing", f.addr.port());
    let o = tokio::task::spawn_blocking(move || {
        run(Command::new("curl").args(["-sS", "-o", "/dev/null", &url]))
    })
    .await
    .unwrap();
    // Exit code 68 is CURLE_TFTP_NOTFOUND. (curl 7.88's message for it is
    // a garbled "getpeername() failed", so the code is what we check.)
    assert_eq!(
        o.status.code(),
        Some(68),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// What the raw client got.
#[derive(Debug)]
enum Outcome {
    Data {
        bytes: Vec<u8>,
        oack: HashMap<String, String>,
    },
    Error {
        code: u16,
        message: String,
    },
}

/// A minimal RRQ client: acknowledges each window (or each block), and can
/// pretend to lose the first copy of one block.
async fn rrq(server: SocketAddr, req: Request, window: usize, lose_block: Option<u16>) -> Outcome {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&packet::encode_request(&req), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 70_000];
    let mut bytes = Vec::new();
    let mut oack = HashMap::new();
    let mut blksize = 512;
    let mut expected: u16 = 1;
    let mut in_window = 0;
    let mut lost_once = false;
    let mut peer = None;
    loop {
        let r = tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await;
        let Ok(r) = r else {
            // Our own timeout: re-acknowledge the last good block.
            if let Some(p) = peer {
                let mut ack = vec![0, 4];
                ack.extend_from_slice(&expected.wrapping_sub(1).to_be_bytes());
                sock.send_to(&ack, p).await.unwrap();
                in_window = 0;
                continue;
            }
            panic!("no answer from the server");
        };
        let (len, from) = r.unwrap();
        peer = Some(from);
        let p = &buf[..len];
        match u16::from_be_bytes([p[0], p[1]]) {
            packet::ERROR => {
                return Outcome::Error {
                    code: u16::from_be_bytes([p[2], p[3]]),
                    message: String::from_utf8_lossy(&p[4..len - 1]).into_owned(),
                };
            }
            packet::OACK => {
                let parts: Vec<&[u8]> = p[2..len - 1].split(|&b| b == 0).collect();
                for kv in parts.chunks(2) {
                    oack.insert(
                        String::from_utf8_lossy(kv[0]).into_owned(),
                        String::from_utf8_lossy(kv[1]).into_owned(),
                    );
                }
                if let Some(b) = oack.get("blksize") {
                    blksize = b.parse().unwrap();
                }
                sock.send_to(&[0, 4, 0, 0], from).await.unwrap();
            }
            packet::DATA => {
                let block = u16::from_be_bytes([p[2], p[3]]);
                if block != expected {
                    continue;
                }
                if lose_block == Some(block) && !lost_once {
                    lost_once = true;
                    continue;
                }
                let payload = &p[4..];
                bytes.extend_from_slice(payload);
                in_window += 1;
                let last = payload.len() < blksize;
                if in_window == window || last {
                    let mut ack = vec![0, 4];
                    ack.extend_from_slice(&block.to_be_bytes());
                    sock.send_to(&ack, from).await.unwrap();
                    in_window = 0;
                }
                expected = expected.wrapping_add(1);
                if last {
                    return Outcome::Data { bytes, oack };
                }
            }
            op => panic!("unexpected opcode {op}"),
        }
    }
}

fn read(name: &str, options: &[(&str, &str)]) -> Request {
    Request {
        kind: RequestKind::Read,
        filename: name.into(),
        mode: Mode::Octet,
        options: options
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowsize_is_negotiated_and_used() {
    let f = start(None).await;
    let r = rrq(
        f.addr,
        read(
            "undionly.kpxe",
            &[("blksize", "1432"), ("tsize", "0"), ("windowsize", "8")],
        ),
        8,
        None,
    )
    .await;
    let Outcome::Data { bytes, oack } = r else {
        panic!("{r:?}")
    };
    assert!(bytes == f.file("undionly.kpxe"));
    assert_eq!(oack.get("windowsize").map(String::as_str), Some("8"));
    assert_eq!(oack.get("blksize").map(String::as_str), Some("1432"));
    assert_eq!(oack.get("tsize").map(String::as_str), Some("100000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_blocks_are_retransmitted() {
    let f = start(None).await;
    // Window 1: the server's own timeout resends block 3.
    let r = rrq(f.addr, read("exact", &[]), 1, Some(3)).await;
    let Outcome::Data { bytes, .. } = r else {
        panic!("{r:?}")
    };
    assert!(bytes == f.file("exact"));
    // Window 4: the client's re-ACK of block 4 makes the server resend 5…
    let r = rrq(
        f.addr,
        read("undionly.kpxe", &[("windowsize", "4")]),
        4,
        Some(6),
    )
    .await;
    let Outcome::Data { bytes, .. } = r else {
        panic!("{r:?}")
    };
    assert!(bytes == f.file("undionly.kpxe"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_numbers_roll_over() {
    let f = start(None).await;
    // 70,001 blocks of 8 bytes: the block number wraps past 65535.
    let r = rrq(
        f.addr,
        read("big", &[("blksize", "8"), ("windowsize", "64")]),
        64,
        None,
    )
    .await;
    let Outcome::Data { bytes, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(bytes.len(), 8 * 70_000 + 3);
    assert!(bytes == f.file("big"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_the_right_error_code() {
    let f = start(None).await;
    for (name, code) in [
        ("../secret", 2),
        ("/etc/passwd", 2),
        ("out", 2),
        ("outdir/secret", 2),
        ("sub/../undionly.kpxe", 2),
        ("sub", 2),
        ("missing", 1),
    ] {
        match rrq(f.addr, read(name, &[]), 1, None).await {
            Outcome::Error { code: c, message } => assert_eq!(c, code, "{name}: {message}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    let mut wrq = read("upload", &[]);
    wrq.kind = RequestKind::Write;
    assert!(matches!(
        rrq(f.addr, wrq, 1, None).await,
        Outcome::Error { code: 2, .. }
    ));
    let mut ascii = read("undionly.kpxe", &[]);
    ascii.mode = Mode::Netascii;
    assert!(matches!(
        rrq(f.addr, ascii, 1, None).await,
        Outcome::Error { code: 4, .. }
    ));
    // Garbage gets an "illegal operation" error too.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(b"\x00\x09junk", f.addr).await.unwrap();
    let mut buf = [0u8; 512];
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..4], &[0, 5, 0, 4], "{:?}", &buf[..len]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_from_memory() {
    let blob = Bytes::from(pseudo_random(3000, 9));
    let files: HashMap<String, Bytes> = [("ipxe.efi".to_string(), blob.clone())].into();
    let f = start(Some(TftpSource::Memory(Arc::new(files)))).await;
    let Outcome::Data { bytes, .. } = rrq(f.addr, read("ipxe.efi", &[]), 1, None).await else {
        panic!()
    };
    assert_eq!(bytes, blob);
    assert!(matches!(
        rrq(f.addr, read("../ipxe.efi", &[]), 1, None).await,
        Outcome::Error { code: 2, .. }
    ));
}
