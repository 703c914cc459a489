//! `idem probe`: sends a route the requests of each conformance check and reports what
//! `idem_core::conformance` judges of the answers. The requests live in [`send`], the
//! table in [`table`].

mod send;
mod table;

use std::time::Duration;

use idem_core::conformance::{self, Answer, Check, Judgment};
use serde_json::{Value, json};

use super::{Error, Failure};
use crate::args::ProbeArgs;
use send::Target;

pub(crate) use table::print;

/// Runs every check against the route `args` names; the report lists each check's
/// result. A failed check fails the command ([`Failure::Checks`]) with the report.
pub(super) async fn probe(args: &ProbeArgs) -> Result<Value, Failure> {
    let target = Target::new(args)?;
    let results = run_checks(&target, args).await?;
    let failed = results.iter().filter(|(_, o)| o.failed()).count();
    let count = |f: fn(&Judgment) -> bool| results.iter().filter(|(_, o)| f(o)).count();
    let report = json!({
        "url": args.url,
        "checks": results.iter().map(|(check, judged)| row(*check, judged)).collect::<Vec<_>>(),
        "passed": count(|o| *o == Judgment::Pass),
        "failed": failed,
        "not_applicable": count(|o| matches!(o, Judgment::NotApplicable(_))),
    });
    if failed > 0 {
        Err(Failure::Checks(report))
    } else {
        Ok(report)
    }
}

/// One line of the report.
fn row(check: Check, judged: &Judgment) -> Value {
    let (result, detail) = match judged {
        Judgment::Pass => ("pass", None),
        Judgment::Fail(why) => ("fail", Some(why.as_str())),
        Judgment::NotApplicable(why) => ("n/a", Some(why.as_str())),
    };
    json!({
        "check": check.name(),
        "contract": check.contract(),
        "result": result,
        "detail": detail,
    })
}

/// The checks, in order: the key's validation, then the first request and what builds
/// on it. A transport failure (no answer at all) ends the probe with an error.
async fn run_checks(target: &Target, args: &ProbeArgs) -> Result<Vec<(Check, Judgment)>, Failure> {
    let body = args.body.as_bytes();
    let mut results = vec![
        (
            Check::MissingKey,
            conformance::missing_key(&target.send(None, body).await?),
        ),
        (
            Check::MalformedKey,
            conformance::refused_key(&target.send(Some(&["probe key".to_owned()]), body).await?),
        ),
        (
            Check::KeySentTwice,
            conformance::refused_key(
                &target
                    .send(Some(&[send::new_key(), send::new_key()]), body)
                    .await?,
            ),
        ),
    ];
    let key = send::new_key();
    let first = target.send_keyed(&key, body).await?;
    let first_judged = conformance::first_request(&first);
    let succeeded = first_judged == Judgment::Pass;
    results.push((Check::FirstRequest, first_judged));
    if !succeeded {
        let skipped = "the first request did not succeed";
        for check in &Check::ALL[results.len()..] {
            results.push((*check, Judgment::NotApplicable(skipped.into())));
        }
        return Ok(results);
    }
    let retry = target.send_keyed(&key, body).await?;
    results.push((Check::Replay, conformance::replay(&first, &retry)));
    results.push((Check::ReplayMarked, conformance::replay_marked(&retry)));
    results.push((
        Check::ChangedBody,
        changed_body(target, args, &key, &first).await?,
    ));
    let duplicates = target
        .send_concurrently(&send::new_key(), body, args.concurrency)
        .await?;
    results.push((
        Check::ConcurrentDuplicates,
        conformance::concurrent_duplicates(&duplicates),
    ));
    results.push((
        Check::AfterDisconnect,
        after_disconnect(target, body).await?,
    ));
    Ok(results)
}

async fn changed_body(
    target: &Target,
    args: &ProbeArgs,
    key: &str,
    first: &Answer,
) -> Result<Judgment, Failure> {
    let other = match &args.other_body {
        Some(other) => other.clone(),
        None => match send::other_body(&args.body) {
            Some(other) => other,
            None => {
                return Ok(Judgment::NotApplicable(
                    "no second body: the sample is no JSON object with a number or a \
                     string; pass --other-body"
                        .into(),
                ));
            }
        },
    };
    let answer = target.send_keyed(key, other.as_bytes()).await?;
    Ok(conformance::changed_body(first, &answer))
}

async fn after_disconnect(target: &Target, body: &[u8]) -> Result<Judgment, Failure> {
    let key = send::new_key();
    if !target.send_and_hang_up(&key, body).await? {
        return Ok(Judgment::NotApplicable(
            "the URL is not plain HTTP: the probe hangs up on plain HTTP only".into(),
        ));
    }
    let retry = target.send_until_settled(&key, body).await?;
    let again = target.send_keyed(&key, body).await?;
    Ok(conformance::after_disconnect(&retry, &again))
}

impl From<reqwest::Error> for Failure {
    fn from(e: reqwest::Error) -> Self {
        Failure::Error(Error::Invalid(format!("probe: no answer: {e}")))
    }
}

/// How long the probe waits for an answer, and for a request still in flight: the
/// `--timeout`, between a second and an hour.
fn patience(args: &ProbeArgs) -> Duration {
    Duration::from_secs(args.timeout.clamp(1, 3600))
}
