//! Per-disc IOPS and bandwidth limits, measured with a real client
//! (`qemu-img bench`) against our server on loopback: a limited export is
//! held near its rate, an unlimited one is not.

mod common;

use std::time::{Duration, Instant};

use bigv_spine::resource::DiscLimits;
use common::*;

/// Runs `qemu-img bench` (`-w` for writes) and returns its wall time.
async fn bench(url: &str, count: u64, size: u64, write: bool) -> Duration {
    let mut cmd = tokio::process::Command::new("qemu-img");
    cmd.args(["bench", "-f", "raw", "-d", "4"]).args([
        "-c",
        &count.to_string(),
        "-s",
        &size.to_string(),
    ]);
    if write {
        cmd.arg("-w");
    }
    let started = Instant::now();
    let out = cmd.arg(url).output().await.expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img bench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_disc_is_held_near_its_rates_and_an_unlimited_one_is_not() {
    let (_dir, path) = sparse_file(64 * MIB);
    let server = serve(&path, &["127.0.0.1"], false).await;
    let url = url(&server);

    // IOPS: 700 reads of 4 KiB at 200/s, of which 200 come from the burst:
    // (700 - 200) / 200 = 2.5 s.
    server.set_limits(Some(DiscLimits {
        iops: Some(200),
        mib_per_second: None,
    }));
    let limited = bench(&url, 700, 4096, false).await;
    let expected = Duration::from_millis(2500);
    eprintln!("700 reads at 200 IOPS: {limited:?} (expected {expected:?})");
    assert!(
        limited >= expected.mul_f64(0.8),
        "700 reads at 200 IOPS took {limited:?}, expected about {expected:?}"
    );
    assert!(
        limited <= expected * 4,
        "700 reads at 200 IOPS took {limited:?}: held back far more than the limit"
    );

    // Bandwidth: 40 MiB written in 1 MiB requests at 8 MiB/s, 8 MiB of it
    // from the burst: (40 - 8) / 8 = 4 s. The IOPS limit is lifted.
    server.set_limits(Some(DiscLimits {
        iops: None,
        mib_per_second: Some(8),
    }));
    let limited = bench(&url, 40, MIB, true).await;
    let expected = Duration::from_secs(4);
    eprintln!("40 MiB at 8 MiB/s: {limited:?} (expected {expected:?})");
    assert!(
        limited >= expected.mul_f64(0.8),
        "40 MiB at 8 MiB/s took {limited:?}, expected about {expected:?}"
    );
    assert!(
        limited <= expected * 4,
        "40 MiB at 8 MiB/s took {limited:?}"
    );

    // Unlimited, the same runs go much faster than the limits allowed.
    server.set_limits(None);
    let free = bench(&url, 700, 4096, false).await;
    eprintln!("700 reads unlimited: {free:?}");
    assert!(
        free < Duration::from_millis(1500),
        "700 unlimited reads took {free:?}"
    );
    let free = bench(&url, 40, MIB, true).await;
    eprintln!("40 MiB unlimited: {free:?}");
    assert!(
        free < Duration::from_millis(2000),
        "40 MiB unlimited took {free:?}"
    );
    server.stop().await;
}
