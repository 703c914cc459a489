//! The command line.

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

/// The idem operator command.
#[derive(Parser, Debug)]
#[command(
    name = "idem",
    version,
    about = "Operate idem's tables: keys, outbox, inbox"
)]
pub struct Cli {
    /// The database idem's tables live in.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Idempotency keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The transactional outbox.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// The inbox of idempotent consumers.
    #[command(subcommand)]
    Inbox(InboxCommand),
    /// Messages the outbox delivered that a consumer's inbox never recorded.
    Reconcile {
        /// The consumer whose inbox is checked.
        #[arg(long)]
        consumer: String,
        /// Delivered since: an RFC 3339 time, or an age such as 30m, 2h, 7d.
        #[arg(long, value_parser = parse_since)]
        since: DateTime<Utc>,
        /// Only messages of this topic.
        #[arg(long)]
        topic: Option<String>,
    },
    /// Deletes expired keys, old delivered outbox messages and old inbox rows now.
    Sweep {
        /// Rows per statement.
        #[arg(long, default_value_t = 1000)]
        batch_size: i64,
    },
    /// Runs idem's migrations.
    Migrate,
    /// Checks an HTTP service, written with idem or not, against the Idempotency-Key
    /// contract (draft-ietf-httpapi-idempotency-key-header-07) and idem's stricter one.
    ///
    /// Sends the route a missing key, a malformed key, a key sent twice, a first
    /// request and its retry, the same key with another body, concurrent duplicates,
    /// and a retry after a first attempt whose client disconnected; prints each check
    /// with pass, fail or not applicable. Every request runs the route for real: probe
    /// a test deployment. Exits 1 when a check fails. Needs no database.
    Probe(ProbeArgs),
    /// Distributes idem's tables by tenant on a Citus coordinator (idempotent).
    ///
    /// Run it after every `migrate`; it lists the tables it distributed. On plain
    /// Postgres it says so and does nothing.
    Distribute {
        /// An application table distributed by its tenant column to co-locate idem's
        /// tables with (as `public.payments`); Citus's default group when omitted.
        #[arg(long)]
        colocate_with: Option<String>,
    },
}

/// Which key.
#[derive(Args, Debug)]
pub struct KeyRef {
    /// The tenant.
    #[arg(long)]
    pub tenant: String,
    /// The key, as the client sent it.
    #[arg(long)]
    pub key: String,
    /// The layer's key secret, as hex, when it protects keys (`Protection::keys`).
    #[arg(long, env = "IDEM_KEY_SECRET_HEX", hide_env_values = true)]
    pub key_secret_hex: Option<String>,
    /// The id of that secret.
    #[arg(long, default_value = "1")]
    pub key_secret_id: String,
    /// The layer's body keys, when it seals bodies (`Protection::bodies`): `ID=HEX`, the
    /// 32-byte key as hex; repeat it, or separate with commas, for rotated keys.
    #[arg(
        long = "body-key",
        env = "IDEM_BODY_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub body_keys: Vec<String>,
}

/// `idem keys ...`
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// A key's status, stored response, replays and mismatches.
    Show(KeyRef),
    /// Deletes a key: its next request runs as new.
    Evict(KeyRef),
    /// Rewrites the keys stored in the clear as `Protection::keys` stores them.
    ///
    /// Run it right before the deploy that turns protection on. An in-progress phased
    /// key keeps its clear key in `binding`.
    Protect(ProtectArgs),
    /// Keys per day and route: count, bytes, replays, mismatches.
    Stats {
        /// How many days back.
        #[arg(long, default_value_t = 7)]
        days: i32,
    },
}

/// `idem keys protect`: the secret the layer will protect keys with.
#[derive(Args, Debug)]
pub struct ProtectArgs {
    /// The layer's key secret, as hex (at least 32 bytes).
    #[arg(long, env = "IDEM_KEY_SECRET_HEX", hide_env_values = true)]
    pub key_secret_hex: String,
    /// The id of that secret, as the layer's `KeyProtection::hmac` is given it.
    #[arg(long, default_value = "1")]
    pub key_secret_id: String,
    /// Only this tenant's keys.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Keys per statement.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: i64,
}

/// `idem outbox ...`
#[derive(Subcommand, Debug)]
pub enum OutboxCommand {
    /// Pending, delivered and dead messages per topic, and the oldest pending's age.
    Status,
    /// Dead-lettered messages, oldest first.
    DeadLetters {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Makes a dead letter pending again.
    Redrive {
        /// The message id.
        id: Uuid,
    },
    /// Deletes a dead letter.
    Purge {
        /// The message id.
        id: Uuid,
    },
}

/// `idem inbox ...`
#[derive(Subcommand, Debug)]
pub enum InboxCommand {
    /// Processed, failing and dead messages per consumer.
    Status,
    /// A consumer's dead letters.
    Dead {
        /// The consumer.
        #[arg(long)]
        consumer: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

/// An RFC 3339 time, or an age (`30s`, `30m`, `2h`, `7d`) before now.
fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let split = text.len().saturating_sub(1);
    let (number, unit) = text.split_at(split);
    let n: i64 = number
        .parse()
        .map_err(|_| format!("`{text}` is neither an RFC 3339 time nor an age like 2h"))?;
    let age = match unit {
        "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => None,
    }
    .ok_or_else(|| format!("`{text}`: the unit is one of s, m, h, d"))?;
    Utc::now()
        .checked_sub_signed(age)
        .ok_or_else(|| format!("`{text}` is too far back"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_an_age() {
        let at = parse_since("2026-11-24T10:00:00Z").expect("time");
        assert_eq!(at.to_rfc3339(), "2026-11-24T10:00:00+00:00");
        let two_hours = parse_since("2h").expect("age");
        let ago = Utc::now() - two_hours;
        assert!((ago.num_seconds() - 7200).abs() <= 5);
        assert!(parse_since("2w").is_err());
        assert!(parse_since("yesterday").is_err());
        assert!(parse_since("").is_err());
    }
}

/// What `idem probe` sends, and where.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// The route's URL (plain HTTP), as `http://127.0.0.1:3000/payments`.
    pub url: String,
    /// The route's method.
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// A body the route accepts and answers with a success.
    #[arg(long, default_value = "{}")]
    pub body: String,
    /// A second body for the changed-body check. By default the sample body with its
    /// first number raised by one (or, without one, `-probe` added to its first
    /// string), when it is a JSON object.
    #[arg(long)]
    pub other_body: Option<String>,
    /// The bodies' content type.
    #[arg(long, default_value = "application/json")]
    pub content_type: String,
    /// A header field every request carries, as `Name: value` (repeatable): the
    /// credentials or tenant the route needs.
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// The header the key travels in.
    #[arg(long, default_value = "Idempotency-Key")]
    pub key_header: String,
    /// How many duplicates the concurrency check sends at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// How long to wait for an answer, and for a request still in flight (seconds).
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}
