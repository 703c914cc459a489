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
//! `idem probe URL` checks any HTTP service against the Idempotency-Key contract and
//! needs no database:
//!
//! ```text
//! idem probe http://127.0.0.1:3000/payments -H 'x-tenant-id: acme' \
//!     --body '{"amount":1250,"currency":"EUR"}'
//! ```
//!
//! Every command prints text, or JSON with `--json`. The exit status is 0 on success,
//! 1 on an error (printed to stderr) or a failed probe check, 2 when `keys show` or
//! `keys evict` found no key.

mod args;
mod commands;
mod render;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::commands::{Failure, print_probe, run};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let probing = matches!(cli.command, Command::Probe(_));
    let print = |report: &serde_json::Value| match (probing, cli.json) {
        (true, false) => print_probe(report),
        _ => render::print(report, cli.json),
    };
    match run(&cli).await {
        Ok(report) => {
            print(&report);
            ExitCode::SUCCESS
        }
        Err(Failure::NotFound(report)) => {
            print(&report);
            ExitCode::from(2)
        }
        Err(Failure::Checks(report)) => {
            print(&report);
            ExitCode::FAILURE
        }
        Err(Failure::Error(e)) => {
            eprintln!("idem: {e}");
            ExitCode::FAILURE
        }
    }
}
