//! Creates payments through idem-client, the retrying client: each payment gets a
//! UUIDv7 `Idempotency-Key` (or `--key`), reused by every retry, and the output tells
//! how many attempts it took and whether the answer was a replay.
//!
//! `cargo run -p payments --bin pay-client -- --amount 1250 --count 3` against the
//! service on 127.0.0.1:3000 (`--url` for another).

use std::error::Error;
use std::time::Duration;

use clap::Parser;
use idem_client::{Attempts, IdempotentRetry, OperationKey, RetryError};
use reqwest_middleware::ClientBuilder;

#[derive(Parser, Debug)]
#[command(about = "Creates payments through the retrying idem client")]
struct Args {
    /// The payments service.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// The tenant (sent as X-Tenant-Id).
    #[arg(long, default_value = "acme")]
    tenant: String,
    /// The amount in minor units.
    #[arg(long, default_value_t = 1250)]
    amount: i64,
    /// The currency.
    #[arg(long, default_value = "EUR")]
    currency: String,
    /// How many payments to create.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// The idempotency key of one logical payment (kept across runs); a fresh UUIDv7
    /// per payment without it.
    #[arg(long)]
    key: Option<String>,
    /// Attempts per payment, the first included.
    #[arg(long, default_value_t = 5)]
    attempts: u32,
    /// Milliseconds one attempt may take.
    #[arg(long, default_value_t = 2_000)]
    attempt_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let args = Args::parse();
    let client = ClientBuilder::new(reqwest::Client::builder().no_proxy().build()?)
        .with(
            IdempotentRetry::new()
                .max_attempts(args.attempts)
                .attempt_timeout(Duration::from_millis(args.attempt_timeout_ms)),
        )
        .build();
    let url = format!("{}/payments", args.url.trim_end_matches('/'));
    let body = serde_json::json!({ "amount": args.amount, "currency": args.currency }).to_string();
    for _ in 0..args.count {
        let mut request = client
            .post(&url)
            .header("x-tenant-id", &args.tenant)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(key) = &args.key {
            request = request.with_extension(OperationKey(key.clone()));
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let attempts = response.extensions().get::<Attempts>().cloned();
                let body = response.text().await?;
                match attempts {
                    Some(a) => println!(
                        "{status} key={} attempts={} replayed={} {body}",
                        a.key.as_deref().unwrap_or("-"),
                        a.attempts,
                        a.replayed
                    ),
                    None => println!("{status} {body}"),
                }
            }
            Err(e) => match RetryError::of(&e) {
                Some(stopped) => {
                    eprintln!(
                        "gave up after {} attempt(s) ({}), key={}: {}",
                        stopped.attempts,
                        stopped.reason,
                        stopped.key.as_deref().unwrap_or("-"),
                        stopped.source
                    );
                    std::process::exit(1);
                }
                None => return Err(e.into()),
            },
        }
    }
    Ok(())
}
