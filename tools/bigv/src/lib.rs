//! `bigv`: the BigV command-line client (docs/cli.md).
//!
//! - `cli.rs`: the command line (clap).
//! - `client.rs`: the brain's HTTP API, login and errors.
//! - `config.rs`: profiles, environment and flags.
//! - `tls.rs`: how https endpoints are trusted.
//! - `names.rs`: server/group names, sizes, disc specs.
//! - `types.rs`: the API's objects.
//! - `output.rs`: human, JSON and table output; progress.
//! - `cmd/`: one file per command family.

pub mod cli;
pub mod client;
pub mod cmd;
pub mod config;
pub mod error;
pub mod names;
pub mod output;
pub mod tls;
pub mod types;

use std::ffi::OsString;

use clap::Parser;
use clap::error::ErrorKind;

/// Runs `bigv` with `args` (the program name first) and returns the exit
/// code (bigv-cli.md §6).
pub fn run(args: impl IntoIterator<Item = OsString>) -> i32 {
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => error::Exit::Usage as i32,
            };
            let _ = e.print();
            return code;
        }
    };
    match cmd::dispatch(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bigv: {e}");
            e.code()
        }
    }
}
