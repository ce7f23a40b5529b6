//! `fhirbulk`: FHIR Bulk Data `$export` from the command line, on top of the `fhirbulk` engine.
//!
//! `fhirbulk export --out DIR ...` writes one NDJSON file per manifest file, the manifest and an
//! event log, checkpoints as it goes (kill it, run the same command again: it resumes), and can
//! keep the last `transactionTime` for incremental exports (`--since auto`).
//! `fhirbulk cancel --out DIR` deletes an unfinished export's server job; `fhirbulk sandbox`
//! runs the local test server (built with the `sandbox` feature only: the installed command
//! carries no test server).

mod cancel;
mod cli;
mod config;
mod eventlog;
mod export;
mod output;
mod parquet;
mod progress;
#[cfg(feature = "sandbox")]
mod sandbox;
mod state;
mod util;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // clap prints help/version with exit 0 and usage errors with exit 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { util::EXIT_USAGE } else { 0 });
        }
    };
    let code = match args.command {
        cli::Command::Export(a) => export::run(*a),
        cli::Command::Cancel(a) => cancel::run(*a),
        #[cfg(feature = "sandbox")]
        cli::Command::Sandbox(a) => sandbox::run(*a),
    };
    ExitCode::from(code)
}
