//! What a service must answer to keep the Idempotency-Key contract, as pure judgments
//! over the answers it gave: the checks of `idem probe`. Each check is from
//! draft-ietf-httpapi-idempotency-key-header-07 ([`Contract::Draft`]) or from idem's
//! stricter contract ([`Contract::Idem`]); each judgment says pass, fail (with what
//! was wrong) or not applicable (with why). The probe sends the requests; this module
//! only judges, so every rule is tested without a network.
//!
//! ```
//! use idem_core::conformance::{Answer, Judgment, replay};
//!
//! let first = Answer::new(201, [("content-type", "application/json")], br#"{"id":1}"#);
//! let retry = Answer::new(201, [("content-type", "application/json")], br#"{"id":2}"#);
//! assert!(matches!(replay(&first, &retry), Judgment::Fail(_)));
//! assert_eq!(replay(&first, &first.clone()), Judgment::Pass);
//! ```

use serde::Serialize;

/// Whose contract a check holds a service to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Contract {
    /// draft-ietf-httpapi-idempotency-key-header-07.
    Draft,
    /// idem's stricter contract (docs/contract.md).
    Idem,
}

/// The checks, in the order the probe runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A request without a key: 400 where the key is required.
    MissingKey,
    /// A request with a malformed key (not an sf-string of visible ASCII): 400.
    MalformedKey,
    /// A request with a key sent twice (two header fields): 400.
    KeySentTwice,
    /// The first request with a new key succeeds.
    FirstRequest,
    /// Its retry gets the same status, headers and body, byte for byte.
    Replay,
    /// The retry is marked `Idempotent-Replayed: true`.
    ReplayMarked,
    /// The same key with another body is refused (422), not run or replayed.
    ChangedBody,
    /// Concurrent duplicates get identical answers or 409, never two different
    /// successes.
    ConcurrentDuplicates,
    /// After a first attempt whose client hung up before its answer, a retry gets a
    /// success (waiting out 409s while the attempt finishes), and the retry after it
    /// the same answer: the key is never left stuck, and the request runs once.
    AfterDisconnect,
}

impl Check {
    /// Every check, in the order the probe runs them.
    pub const ALL: [Check; 9] = [
        Check::MissingKey,
        Check::MalformedKey,
        Check::KeySentTwice,
        Check::FirstRequest,
        Check::Replay,
        Check::ReplayMarked,
        Check::ChangedBody,
        Check::ConcurrentDuplicates,
        Check::AfterDisconnect,
    ];

    /// The check's name, as the probe prints it.
    pub fn name(self) -> &'static str {
        match self {
            Check::MissingKey => "missing-key",
            Check::MalformedKey => "malformed-key",
            Check::KeySentTwice => "key-sent-twice",
            Check::FirstRequest => "first-request",
            Check::Replay => "replay",
            Check::ReplayMarked => "replay-marked",
            Check::ChangedBody => "changed-body",
            Check::ConcurrentDuplicates => "concurrent-duplicates",
            Check::AfterDisconnect => "after-disconnect",
        }
    }

    /// Whose contract the check holds the service to.
    pub fn contract(self) -> Contract {
        match self {
            Check::MissingKey
            | Check::MalformedKey
            | Check::KeySentTwice
            | Check::FirstRequest
            | Check::Replay
            | Check::ChangedBody
            | Check::ConcurrentDuplicates
            | Check::AfterDisconnect => Contract::Draft,
            Check::ReplayMarked => Contract::Idem,
        }
    }
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgment {
    /// The service kept the contract.
    Pass,
    /// It did not; what was wrong.
    Fail(String),
    /// The check does not apply to this route (or an earlier one failed); why.
    NotApplicable(String),
}

impl Judgment {
    /// Whether the check failed.
    pub fn failed(&self) -> bool {
        matches!(self, Judgment::Fail(_))
    }
}

/// One answer of the service: its status, its header fields (names lower-case, in
/// order) and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The header fields, names lower-case.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// An answer from its parts (header names are lower-cased).
    pub fn new<'a>(
        status: u16,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        body: &[u8],
    ) -> Answer {
        Answer {
            status,
            headers: headers
                .into_iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec()))
                .collect(),
            body: body.to_vec(),
        }
    }

    fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The header fields a replay must repeat: all but those that describe one
    /// transfer or one attempt (date, length, connection, tracing ids, the replay mark).
    fn lasting_headers(&self) -> Vec<&(String, Vec<u8>)> {
        self.headers
            .iter()
            .filter(|(name, _)| !PER_ATTEMPT_HEADERS.contains(&name.as_str()))
            .collect()
    }
}

/// Header fields that belong to one transfer or one attempt, not to the answer (rate
/// limits count the attempts).
const PER_ATTEMPT_HEADERS: [&str; 19] = [
    "date",
    "server",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "age",
    "idempotent-replayed",
    "x-request-id",
    "x-correlation-id",
    "request-id",
    "traceparent",
    "tracestate",
    "ratelimit",
    "ratelimit-policy",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
];

/// A request without a key: the draft's 400 where the key is required; a success
/// means the key is optional on this route (not applicable).
pub fn missing_key(answer: &Answer) -> Judgment {
    match answer.status {
        400 => Judgment::Pass,
        200..=399 => Judgment::NotApplicable(format!(
            "answered {} without a key: the key is optional here",
            answer.status
        )),
        status => Judgment::Fail(format!("expected 400 for a missing key, got {status}")),
    }
}

/// A request with a malformed key, or with the key sent twice: 400, and never run.
pub fn refused_key(answer: &Answer) -> Judgment {
    match answer.status {
        400 => Judgment::Pass,
        200..=399 => Judgment::Fail(format!(
            "the key was accepted and the request ran ({})",
            answer.status
        )),
        status => Judgment::Fail(format!("expected 400, got {status}")),
    }
}

/// The first request with a new key: a success, which the later checks build on.
pub fn first_request(answer: &Answer) -> Judgment {
    if answer.is_success() {
        Judgment::Pass
    } else {
        Judgment::Fail(format!(
            "the sample request answered {}, not a success: check the URL, the body and \
             the headers it needs",
            answer.status
        ))
    }
}

/// The retry of the first request with its key: the same status, lasting headers and
/// body, byte for byte.
pub fn replay(first: &Answer, retry: &Answer) -> Judgment {
    if retry.status != first.status {
        return Judgment::Fail(format!(
            "the retry answered {}, the first request {}",
            retry.status, first.status
        ));
    }
    if retry.body != first.body {
        return Judgment::Fail(
            "the retry's body differs from the first answer's: the request ran again".into(),
        );
    }
    let missing: Vec<&str> = first
        .lasting_headers()
        .into_iter()
        .filter(|(name, value)| retry.header(name) != Some(value.as_slice()))
        .map(|(name, _)| name.as_str())
        .collect();
    if missing.is_empty() {
        Judgment::Pass
    } else {
        Judgment::Fail(format!(
            "the retry lacks or changes header(s) {}",
            missing.join(", ")
        ))
    }
}

/// idem's mark on a replay: `Idempotent-Replayed: true`.
pub fn replay_marked(retry: &Answer) -> Judgment {
    match retry.header("idempotent-replayed") {
        Some(b"true") => Judgment::Pass,
        Some(other) => Judgment::Fail(format!(
            "Idempotent-Replayed is {:?}, not true",
            String::from_utf8_lossy(other)
        )),
        None => Judgment::Fail("the replay carries no Idempotent-Replayed: true".into()),
    }
}

/// The same key with another body: refused with 422 (the draft's answer; 409 is idem's
/// selectable one), never run and never answered with the first request's answer.
pub fn changed_body(first: &Answer, other: &Answer) -> Judgment {
    match other.status {
        422 | 409 => Judgment::Pass,
        _ if other.is_success() && other.body == first.body => Judgment::Fail(
            "the first answer was replayed for a different request: the body is not compared"
                .into(),
        ),
        _ if other.is_success() => {
            Judgment::Fail("the request with another body ran under the same key".into())
        }
        status => Judgment::Fail(format!("expected 422, got {status}")),
    }
}

/// Concurrent requests with one new key: every success identical (status and body),
/// every other answer 409, and at least one success.
pub fn concurrent_duplicates(answers: &[Answer]) -> Judgment {
    let successes: Vec<&Answer> = answers.iter().filter(|a| a.is_success()).collect();
    let Some(first) = successes.first() else {
        let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        return Judgment::Fail(format!("no duplicate succeeded: {statuses:?}"));
    };
    if let Some(other) = successes
        .iter()
        .find(|a| a.status != first.status || a.body != first.body)
    {
        return Judgment::Fail(format!(
            "two different successes ({} and {}): the request ran more than once",
            first.status, other.status
        ));
    }
    match answers.iter().find(|a| !a.is_success() && a.status != 409) {
        Some(odd) => Judgment::Fail(format!(
            "a duplicate answered {}, neither the shared answer nor 409",
            odd.status
        )),
        None => Judgment::Pass,
    }
}

/// The retries after a first attempt whose client hung up before its answer: the
/// first retry (after waiting out 409s while the attempt may still run) gets a success,
/// whether the attempt finished without its client (the retry replays it) or never
/// began (the retry runs it); the next retry gets the same answer. A key left stuck (409
/// for good), a failure, or two different successes fail.
pub fn after_disconnect(retry: &Answer, again: &Answer) -> Judgment {
    if !retry.is_success() {
        return Judgment::Fail(format!(
            "the retry after the hang-up answered {} (a key left held, or a failure)",
            retry.status
        ));
    }
    match replay(retry, again) {
        Judgment::Pass => Judgment::Pass,
        Judgment::Fail(why) => Judgment::Fail(format!("the next retry differs: {why}")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(body: &[u8]) -> Answer {
        Answer::new(
            201,
            [("content-type", "application/json"), ("location", "/p/1")],
            body,
        )
    }

    fn replayed(body: &[u8]) -> Answer {
        let mut answer = created(body);
        answer
            .headers
            .push(("idempotent-replayed".into(), b"true".to_vec()));
        answer.headers.push(("date".into(), b"later".to_vec()));
        answer
    }

    fn status(status: u16) -> Answer {
        Answer::new(status, [], b"")
    }

    #[test]
    fn a_missing_key_is_refused_where_required_and_optional_elsewhere() {
        assert_eq!(missing_key(&status(400)), Judgment::Pass);
        assert!(matches!(
            missing_key(&status(201)),
            Judgment::NotApplicable(_)
        ));
        assert!(missing_key(&status(401)).failed());
    }

    #[test]
    fn a_bad_key_that_runs_fails() {
        assert_eq!(refused_key(&status(400)), Judgment::Pass);
        assert!(refused_key(&status(201)).failed());
        assert!(refused_key(&status(500)).failed());
    }

    #[test]
    fn a_replay_repeats_status_lasting_headers_and_body() {
        let first = created(b"{\"id\":1}");
        assert_eq!(replay(&first, &replayed(b"{\"id\":1}")), Judgment::Pass);
        assert!(
            replay(&first, &replayed(b"{\"id\":2}")).failed(),
            "ran again"
        );
        let mut moved = replayed(b"{\"id\":1}");
        moved.headers.retain(|(n, _)| n != "location");
        assert!(replay(&first, &moved).failed(), "a header lost");
        let mut other_status = replayed(b"{\"id\":1}");
        other_status.status = 200;
        assert!(replay(&first, &other_status).failed());
    }

    #[test]
    fn only_a_marked_replay_is_marked() {
        assert_eq!(replay_marked(&replayed(b"x")), Judgment::Pass);
        assert!(replay_marked(&created(b"x")).failed());
    }

    #[test]
    fn another_body_under_the_key_is_refused_not_run_or_replayed() {
        let first = created(b"{\"id\":1}");
        assert_eq!(changed_body(&first, &status(422)), Judgment::Pass);
        assert_eq!(changed_body(&first, &status(409)), Judgment::Pass);
        let replayed_first = changed_body(&first, &replayed(b"{\"id\":1}"));
        assert!(
            matches!(&replayed_first, Judgment::Fail(why) if why.contains("not compared")),
            "{replayed_first:?}"
        );
        assert!(changed_body(&first, &created(b"{\"id\":2}")).failed());
        assert!(changed_body(&first, &status(400)).failed());
    }

    #[test]
    fn concurrent_duplicates_share_one_answer_or_hear_409() {
        let one = created(b"{\"id\":1}");
        assert_eq!(
            concurrent_duplicates(&[one.clone(), status(409), replayed(b"{\"id\":1}")]),
            Judgment::Pass
        );
        assert!(concurrent_duplicates(&[one.clone(), created(b"{\"id\":2}")]).failed());
        assert!(concurrent_duplicates(&[status(409), status(409)]).failed());
        assert!(concurrent_duplicates(&[one, status(500)]).failed());
    }

    #[test]
    fn after_a_hang_up_the_retries_agree_on_one_success() {
        let answer = replayed(b"{\"id\":1}");
        assert_eq!(after_disconnect(&answer, &answer.clone()), Judgment::Pass);
        // The attempt never began: the retry ran it, and the next one replays it.
        assert_eq!(
            after_disconnect(&created(b"{\"id\":1}"), &answer),
            Judgment::Pass
        );
        assert!(after_disconnect(&answer, &replayed(b"{\"id\":2}")).failed());
        assert!(after_disconnect(&status(409), &answer).failed(), "stuck");
        assert!(after_disconnect(&status(500), &answer).failed());
    }

    #[test]
    fn every_check_has_a_name_and_a_contract() {
        let names: std::collections::HashSet<&str> = Check::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Check::ALL.len());
        assert_eq!(Check::ReplayMarked.contract(), Contract::Idem);
        assert_eq!(Check::ChangedBody.contract(), Contract::Draft);
    }
}
