//! Test support for `brain/tests/store_crash.rs`, not part of the brain.
//!
//! `store-crash-writer DIR` opens the store in DIR and commits records 1, 2, 3, ... forever,
//! printing `acked N` only once record N's commit has returned (is durable), the same promise
//! the brain makes before answering an API call. It prints `opening` before opening the store
//! and `opened` after, so the test can aim kills at crash recovery.

mod record;

use std::io::Write;
use std::process::ExitCode;

use bigv_brain::store::{Store, StoreError};
use record::{RECORDS, Record, SCHEMA};

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: store-crash-writer DIR");
        return ExitCode::from(2);
    };
    match run(dir.as_ref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut source: Option<&dyn std::error::Error> = Some(&*err);
            while let Some(err) = source {
                eprintln!("store-crash-writer: {err}");
                source = err.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "opening")?;
    out.flush()?;
    let store = Store::open(dir, SCHEMA)?;
    writeln!(out, "opened")?;
    out.flush()?;
    loop {
        let n = commit_next(&store)?;
        writeln!(out, "acked {n}")?;
        out.flush()?;
    }
}

fn commit_next(store: &Store) -> Result<u64, StoreError> {
    let mut txn = store.write()?;
    let n = txn.next_id(RECORDS)?;
    txn.insert(RECORDS, &n, &Record::new(n))?;
    txn.commit()?;
    Ok(n)
}
