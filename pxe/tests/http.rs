//! The boot HTTP server on loopback: scripts through reqwest, image files
//! through curl with `--range`.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use bigv_pxe::{Admission, BootPolicy, ClientInfo, MacAddr, NodeBoot, ipxe};

struct OneNode(MacAddr, NodeBoot);

impl BootPolicy for OneNode {
    fn admit(&self, _: &ClientInfo) -> Admission {
        Admission::Ignore
    }
    fn node_boot(&self, mac: MacAddr) -> Option<NodeBoot> {
        (mac == self.0).then(|| self.1.clone())
    }
}

fn boot() -> NodeBoot {
    NodeBoot {
        role: "tail".into(),
        image_version: "2026.11.1".into(),
        kernel: "vmlinuz".into(),
        initrds: vec!["initrd".into()],
        spine: "10.0.0.1:4433".parse().unwrap(),
        cert_sha256: [7; 32],
        extra_args: vec![],
    }
}

fn blob() -> Vec<u8> {
    (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

async fn start() -> (SocketAddr, String, tempfile::TempDir, tempfile::TempDir) {
    let images = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let v = images.path().join("2026.11.1");
    std::fs::create_dir(&v).unwrap();
    std::fs::write(v.join("vmlinuz"), blob()).unwrap();
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), v.join("escape")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let mac: MacAddr = "52:54:00:00:00:11".parse().unwrap();
    let app = bigv_pxe::http::router(
        Arc::new(OneNode(mac, boot())),
        &base,
        images.path().to_path_buf(),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, base, images, outside)
}

fn curl(args: &[&str]) -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("h");
    let body = dir.path().join("b");
    let o = Command::new("curl")
        .args(["-sS", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(args)
        .output()
        .expect("curl");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (
        std::fs::read_to_string(&headers).unwrap(),
        std::fs::read(&body).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_node_script() {
    let (_, base, _i, _o) = start().await;
    let mac: MacAddr = "52:54:00:00:00:11".parse().unwrap();
    let url = ipxe::script_url(&base, mac);
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        ipxe::render(&base, mac, &boot()).unwrap()
    );
    let r = reqwest::get(format!("{base}/boot/52-54-00-00-00-12/boot.ipxe"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = reqwest::get(format!("{base}/boot/not-a-mac/boot.ipxe"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_image_files_with_ranges() {
    let (_, base, _i, _o) = start().await;
    let url = format!("{base}/images/2026.11.1/vmlinuz");
    let u = url.clone();
    let (full, part, tail, beyond, head) = tokio::task::spawn_blocking(move || {
        (
            curl(&[&u]),
            curl(&["--range", "100-199", &u]),
            curl(&["--range", "-10", &u]),
            curl(&["--range", "60000-", &u]),
            curl(&["-I", &u]),
        )
    })
    .await
    .unwrap();
    let data = blob();
    assert!(full.0.starts_with("HTTP/1.1 200"), "{}", full.0);
    assert!(full.0.to_ascii_lowercase().contains("accept-ranges: bytes"));
    assert!(full.1 == data);

    assert!(part.0.starts_with("HTTP/1.1 206"), "{}", part.0);
    assert!(
        part.0
            .to_ascii_lowercase()
            .contains("content-range: bytes 100-199/50000"),
        "{}",
        part.0
    );
    assert_eq!(part.1, &data[100..200]);

    assert!(tail.0.starts_with("HTTP/1.1 206"));
    assert_eq!(tail.1, &data[49_990..]);

    assert!(beyond.0.starts_with("HTTP/1.1 416"), "{}", beyond.0);
    assert!(
        beyond
            .0
            .to_ascii_lowercase()
            .contains("content-range: bytes */50000")
    );

    assert!(head.0.starts_with("HTTP/1.1 200"));
    assert!(
        head.0
            .to_ascii_lowercase()
            .contains("content-length: 50000")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_paths_cannot_escape() {
    let (_, base, _i, _o) = start().await;
    for (path, status) in [
        ("/images/2026.11.1/escape", 403),
        ("/images/2026.11.1/missing", 404),
        ("/images/2026.11.1/..%2F..%2Fetc%2Fpasswd", 400),
        ("/images/..%2F2026.11.1/vmlinuz", 400),
        ("/images/.hidden/vmlinuz", 400),
        ("/images/2026.11.1", 404),
    ] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status(), status, "{path}");
    }
}
