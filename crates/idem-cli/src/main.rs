//! `idem`, the operator command: inspect and evict keys, protect keys stored in the
//! clear, watch and repair the outbox and inbox, find messages a consumer never
//! recorded, sweep, migrate, and distribute idem's tables on a Citus coordinator. Every
//! command works on plain Postgres and on a Citus coordinator alike.
//!
//! ```text
//! idem --database-url postgres://... keys show --tenant acme --key order-4711
//! idem --json outbox status
//! idem reconcile --consumer ledger --since 2h
//! idem migrate && idem distribute --colocate-with public.payments
//! ```
//!
//! Every command prints text, or JSON with `--json`. The exit status is 0 on success,
//! 1 on an error (printed to stderr), 2 when `keys show` or `keys evict` found no key.

mod args;
mod commands;
mod render;

use std::process::ExitCode;

use clap::Parser;

use crate::args::Cli;
use crate::commands::{Failure, run};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(report) => {
            render::print(&report, cli.json);
            ExitCode::SUCCESS
        }
        Err(Failure::NotFound(report)) => {
            render::print(&report, cli.json);
            ExitCode::from(2)
        }
        Err(Failure::Error(e)) => {
            eprintln!("idem: {e}");
            ExitCode::FAILURE
        }
    }
}
