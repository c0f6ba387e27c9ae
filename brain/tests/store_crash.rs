//! Crash consistency of the store under SIGKILL.
//!
//! A writer process (`store-crash-writer`) commits records and acknowledges each one after its
//! commit returns; we SIGKILL it at random moments, some of them aimed at its open (crash
//! recovery and compaction of the store the previous kill left behind). After every kill we
//! open a byte-for-byte copy of the store and check that it opens, that every acknowledged
//! record is there and intact, and that the integrity check passes. Checking a copy leaves the
//! original exactly as the kill left it, so the next writer has to recover it itself. A second
//! test kills writers while they create a new store.
//!
//! This guards the engine choice (docs/decisions.md, "Store: redb, not sled"): a store that
//! cannot be reopened after a crash, or loses an acknowledged write, fails here.

#[path = "../src/bin/store-crash-writer/record.rs"]
mod record;

use std::io::{BufRead, BufReader};
use std::ops::RangeInclusive;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use bigv_brain::store::{Integrity, Reader, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use record::{RECORDS, Record, SCHEMA};

const WRITER: &str = env!("CARGO_BIN_EXE_store-crash-writer");
/// Each store starts fresh, so its first kill (aimed at the open) may land while the file is
/// being created; later kills hit a store that the previous kill left unrecovered.
const STORES: usize = 3;
const KILLS_PER_STORE: usize = 12;
/// Every third kill is aimed at the writer's open.
const OPEN_KILL_EVERY: usize = 3;
/// Kills of a writer creating a new store; creation takes about 2 ms, so aim within 3 ms.
const CREATION_KILLS: usize = 16;
const CREATION_WINDOW: Duration = Duration::from_millis(3);
const SIGKILL: i32 = 9;

/// Random delays, repeatable through `BIGV_STORE_CRASH_SEED`.
fn rng() -> StdRng {
    let seed = std::env::var("BIGV_STORE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("store crash test seed {seed} (set BIGV_STORE_CRASH_SEED to repeat the delays)");
    StdRng::seed_from_u64(seed)
}

#[test]
fn acknowledged_writes_survive_sigkill_and_the_store_always_reopens() {
    let mut rng = rng();

    let work = tempfile::tempdir().unwrap();
    let check_dir = work.path().join("check");
    let started = Instant::now();
    let mut acked = 0;
    let mut kills_during_open = 0;
    // How long the writer's open takes; refined from what we observe.
    let mut open_time = Duration::from_millis(5);

    for store in 0..STORES {
        let store_dir = work.path().join(format!("store{store}"));
        // Records in the store after the previous kill, acknowledged or not.
        let mut stored = 0;
        for kill in 0..KILLS_PER_STORE {
            let when = format!("store {store}, kill {kill}");
            let mut writer = Writer::spawn(&store_dir);
            if kill % OPEN_KILL_EVERY == 0 {
                writer.wait_for("opening");
                thread::sleep(rng.random_range(Duration::ZERO..=open_time));
            } else {
                let delay = Duration::from_millis(3)..=Duration::from_millis(300);
                thread::sleep(rng.random_range(delay));
            }
            let run = writer.kill();
            if let Some(took) = run.open_time {
                open_time = open_time.max(took);
            }
            if !run.opened {
                kills_during_open += 1;
            }
            if let Some(&first) = run.acked.first() {
                assert_eq!(
                    first,
                    stored + 1,
                    "{when}: the writer must continue after the last record"
                );
            }
            acked += run.acked.len();
            // Everything acknowledged or already seen must be there, plus at most the one
            // commit that was in flight when the writer died.
            let floor = run.acked.last().copied().unwrap_or(stored);
            copy_store(&store_dir, &check_dir);
            stored = verify(&check_dir, floor..=floor + 1, &when);
        }
        verify(
            &store_dir,
            stored..=stored,
            &format!("store {store}, final reopen"),
        );
    }

    eprintln!(
        "{} kills ({kills_during_open} before the writer's open finished), {acked} \
         acknowledged records, all intact; took {:?}",
        STORES * KILLS_PER_STORE,
        started.elapsed()
    );
    assert!(acked > 0, "the writer never acknowledged a record");
    assert!(
        kills_during_open > 0,
        "no kill landed during the writer's open (open takes about {open_time:?})"
    );
}

/// redb initialises a new file in several writes; a kill in between must not leave a store
/// that can never be opened.
#[test]
fn a_store_killed_while_being_created_reopens() {
    let mut rng = rng();
    let work = tempfile::tempdir().unwrap();
    let mut kills_during_open = 0;
    for kill in 0..CREATION_KILLS {
        let store_dir = work.path().join(format!("store{kill}"));
        let mut writer = Writer::spawn(&store_dir);
        writer.wait_for("opening");
        thread::sleep(rng.random_range(Duration::ZERO..=CREATION_WINDOW));
        let run = writer.kill();
        if !run.opened {
            kills_during_open += 1;
        }
        let floor = run.acked.last().copied().unwrap_or(0);
        verify(
            &store_dir,
            floor..=floor + 1,
            &format!("creation kill {kill}"),
        );
    }
    eprintln!(
        "{CREATION_KILLS} kills of a new store, {kills_during_open} before its open finished"
    );
}

/// Opens the store in `dir` and checks that it holds exactly records 1..=M, intact, with M in
/// `expected`. Returns M.
fn verify(dir: &Path, expected: RangeInclusive<u64>, when: &str) -> u64 {
    let mut store = Store::open(dir, SCHEMA)
        .unwrap_or_else(|err| panic!("{when}: store does not reopen: {}", chain(&err)));
    let records = store.read().unwrap().iter(RECORDS).unwrap();
    let stored = records.len() as u64;
    assert!(
        expected.contains(&stored),
        "{when}: {stored} records stored, expected {expected:?}"
    );
    for (i, (key, record)) in (1..).zip(&records) {
        assert_eq!(*key, i, "{when}: records are not contiguous");
        assert_eq!(
            record.checksum,
            Record::checksum(record.n, &record.payload),
            "{when}: record {key} fails its checksum"
        );
        assert_eq!(*record, Record::new(*key), "{when}: record {key} is wrong");
    }
    let mut txn = store.write().unwrap();
    assert_eq!(
        txn.next_id(RECORDS).unwrap(),
        stored + 1,
        "{when}: id sequence out of step"
    );
    drop(txn);
    assert_eq!(
        store
            .check_integrity()
            .unwrap_or_else(|err| panic!("{when}: {}", chain(&err))),
        Integrity::Clean,
        "{when}: integrity check had to repair the store"
    );
    stored
}

fn copy_store(from: &Path, to: &Path) {
    if to.exists() {
        std::fs::remove_dir_all(to).unwrap();
    }
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        text += &format!(": {err}");
        source = err.source();
    }
    text
}

/// A running writer. Dropping it kills the process, so a failing test leaves nothing behind.
struct Writer {
    child: Child,
    lines: Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
}

/// What a writer did before it was killed.
struct Run {
    opened: bool,
    open_time: Option<Duration>,
    acked: Vec<u64>,
}

impl Writer {
    fn spawn(dir: &Path) -> Writer {
        let mut child = Command::new(WRITER)
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start store-crash-writer");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        // Reads until the pipe closes, which is when the killed writer is gone.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Writer {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn wait_for(&mut self, expected: &str) {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("writer did not print {expected:?}"));
            let done = line.1 == expected;
            self.seen.push(line);
            if done {
                return;
            }
        }
    }

    /// SIGKILLs the writer (only this process, by its own handle) and collects its output.
    fn kill(mut self) -> Run {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(SIGKILL),
            "the writer exited by itself ({status}) instead of being killed: see its stderr"
        );
        let mut seen = std::mem::take(&mut self.seen);
        seen.extend(self.lines.iter());

        let at = |wanted: &str| {
            seen.iter()
                .find(|(_, line)| line == wanted)
                .map(|(at, _)| *at)
        };
        let open_time = at("opening")
            .zip(at("opened"))
            .map(|(start, end)| end - start);
        let acked = seen
            .iter()
            .filter_map(|(_, line)| line.strip_prefix("acked "))
            .map(|n| n.parse().expect("acked line carries a number"))
            .collect();
        Run {
            opened: at("opened").is_some(),
            open_time,
            acked,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Already reaped after `kill`; otherwise a panic got us here and the writer still runs.
        if self.child.try_wait().is_ok_and(|status| status.is_none()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
