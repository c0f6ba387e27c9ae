//! An echo of each VM's serial console into the agent's own log, for
//! operators and whole-system tests: every complete line the guest writes
//! is logged at debug level under the target `bigv_head::console`, with
//! the VM's name. Off unless that target is enabled (on the appliance:
//! `bigv.log=info,bigv_head::console=debug` on the kernel command line,
//! which the brain adds with `--boot-kernel-arg`); the node's log is its
//! serial console, so this is how a VM's boot shows on the head's own
//! console (customers use the SSH console, [`super::ssh`]).
//!
//! It reads qemu's scroll-back file (the serial chardev's `logfile`), so
//! it never holds the console socket: a slow reader cannot stall the
//! guest (see docs/head.md, "A console client must keep reading").

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// At most this much is read per poll; longer lines are cut.
const CHUNK: usize = 64 * 1024;

/// Whether the echo is on.
pub fn enabled() -> bool {
    tracing::enabled!(target: "bigv_head::console", tracing::Level::DEBUG)
}

/// Appends `new` to `partial` and returns the complete lines (without
/// `\r\n`, lossy UTF-8, empty ones dropped); a line longer than
/// [`CHUNK`] is returned in pieces.
pub fn take_lines(partial: &mut Vec<u8>, new: &[u8]) -> Vec<String> {
    partial.extend_from_slice(new);
    let mut lines = vec![];
    while let Some(i) = partial.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = partial.drain(..=i).collect();
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if !text.is_empty() {
            lines.push(text.to_owned());
        }
    }
    if partial.len() >= CHUNK {
        lines.push(String::from_utf8_lossy(partial).into_owned());
        partial.clear();
    }
    lines
}

/// Follows `log` from its current end until `ended`, logging each line.
pub async fn echo(vm: String, log: PathBuf, ended: CancellationToken) {
    let mut offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let mut partial = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let stop = tokio::select! {
            _ = ended.cancelled() => true,
            _ = tokio::time::sleep(Duration::from_millis(250)) => false,
        };
        loop {
            let n = std::fs::File::open(&log)
                .and_then(|mut f| {
                    f.seek(SeekFrom::Start(offset))?;
                    f.read(&mut buf)
                })
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            offset += n as u64;
            for line in take_lines(&mut partial, &buf[..n]) {
                tracing::debug!(target: "bigv_head::console", vm = %vm, "{line}");
            }
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_reads() {
        let mut p = vec![];
        assert!(take_lines(&mut p, b"BIGV-GUEST BO").is_empty());
        assert_eq!(
            take_lines(&mut p, b"OT id=1\r\n\r\nTICK 1\nTI"),
            ["BIGV-GUEST BOOT id=1", "TICK 1"]
        );
        assert_eq!(take_lines(&mut p, b"CK 2\n"), ["TICK 2"]);
        assert!(p.is_empty());
        let long = vec![b'x'; CHUNK + 1];
        assert_eq!(take_lines(&mut p, &long).len(), 1);
        assert!(p.is_empty());
    }
}
