//! SIGKILL the server in the middle of a write stream; after a restart,
//! every write acknowledged with FUA, or acknowledged before an
//! acknowledged FLUSH, is there.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bigv_tail::nbd::NbdClient;
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BLOCK: usize = 4096;
const BLOCKS: u64 = 4096; // a 16 MiB disc

async fn start(path: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bigv-tail"))
        .args(["serve", path.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--allow", "127.0.0.1", "--name", "disc.sata.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("server prints its address")
        .unwrap()
        .unwrap();
    let addr = line.strip_prefix("listening on ").unwrap().parse().unwrap();
    (child, addr)
}

/// Block `n`'s content in round `r`: both numbers, repeated.
fn content(n: u64, round: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(BLOCK);
    while v.len() < BLOCK {
        v.extend_from_slice(&n.to_be_bytes());
        v.extend_from_slice(&round.to_be_bytes());
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_durable_writes_survive_sigkill() {
    let (_dir, path) = sparse_file(BLOCKS * BLOCK as u64);
    let (child, addr) = start(&path).await;
    let pid = Pid::from_raw(child.id().unwrap() as i32);

    // The durable promise per block: the last round known to be on disc.
    let mut durable: Vec<Option<u64>> = vec![None; BLOCKS as usize];
    // Writes acknowledged without FUA, waiting for the next FLUSH.
    let mut unflushed: Vec<(u64, u64)> = vec![];
    let mut client = NbdClient::connect(addr, None, "disc.sata.1").await.unwrap();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        kill(pid, Signal::SIGKILL).unwrap();
    });

    let mut i: u64 = 0;
    let mut acked = 0;
    loop {
        // A pseudo-random walk over the disc so blocks get rewritten.
        let n = (i * 2_654_435_761) % BLOCKS;
        let round = i;
        let fua = i.is_multiple_of(3);
        match client
            .write(n * BLOCK as u64, &content(n, round), fua)
            .await
        {
            Ok(()) if fua => durable[n as usize] = Some(round),
            Ok(()) => unflushed.push((n, round)),
            Err(_) => break,
        }
        acked += 1;
        if i % 16 == 15 {
            match client.flush().await {
                Ok(()) => {
                    for (n, round) in unflushed.drain(..) {
                        durable[n as usize] = durable[n as usize].max(Some(round));
                    }
                }
                Err(_) => break,
            }
        }
        i += 1;
    }
    killer.await.unwrap();
    assert!(
        acked > 50,
        "the stream was killed too early ({acked} writes)"
    );

    let (mut child, addr) = start(&path).await;
    let mut client = NbdClient::connect(addr, None, "disc.sata.1").await.unwrap();
    let mut checked = 0;
    for (n, round) in durable.iter().enumerate() {
        let Some(round) = round else { continue };
        let got = client
            .read(n as u64 * BLOCK as u64, BLOCK as u32)
            .await
            .unwrap();
        // A later (unacknowledged or unflushed) write may have landed on
        // top; what may not happen is an older round or garbage.
        let got_round = u64::from_be_bytes(got[8..16].try_into().unwrap());
        assert_eq!(
            got,
            content(n as u64, got_round),
            "block {n} is torn or garbage"
        );
        assert!(
            got_round >= *round,
            "block {n}: durable round {round} lost (found {got_round})"
        );
        checked += 1;
    }
    assert!(checked > 10, "only {checked} durable blocks to check");
    client.disconnect().await.unwrap();
    child.kill().await.unwrap();
}
