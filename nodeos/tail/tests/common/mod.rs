//! Helpers shared by the tail's integration tests: temp discs, servers on
//! loopback, and the real qemu clients.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bigv_tail::acl::Acl;
use bigv_tail::nbd::{DiscServer, Export};

pub const MIB: u64 = 1 << 20;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A sparse file of `size` bytes in a fresh temporary directory.
pub fn sparse_file(size: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disc.raw");
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    (dir, path)
}

/// Serves `path` on 127.0.0.1, port chosen by the kernel.
pub async fn serve(path: &Path, allow: &[&str], read_only: bool) -> DiscServer {
    let export = Export::open("disc.sata.1", path, read_only).unwrap();
    let acl = Acl::parse(allow).unwrap();
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    DiscServer::start(Arc::new(export), listen, acl)
        .await
        .unwrap()
}

pub fn url(server: &DiscServer) -> String {
    format!("nbd://{}/disc.sata.1", server.local_addr())
}

/// Runs `qemu-io -f raw URL -c …`; returns (success, stdout+stderr).
pub async fn qemu_io(url: &str, commands: &[String]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new("qemu-io");
    cmd.args(["-f", "raw", url]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd
        .output()
        .await
        .expect("qemu-io runs (install qemu-utils)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = text.contains("failed") || text.contains("error") || text.contains("Error");
    (out.status.success() && !failed, text)
}

/// Runs `qemu-img ARGS…`; returns stdout, panicking on failure.
pub async fn qemu_img(args: &[&str]) -> String {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .expect("qemu-img runs (install qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}
